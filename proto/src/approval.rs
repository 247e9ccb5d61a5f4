//! Signed approvals: what an approver signs for one task, and the check a
//! worker (and the orchestrator, before it stores one) makes of it.
//!
//! An approval binds one task to exactly what was approved: the task id,
//! the plan id, the task name and version, the SHA-256 of the inputs in
//! canonical JSON, the audience (the worker identity or pool that may run
//! it), a validity window in whole seconds and a single-use nonce. The
//! approver signs the canonical JSON of that [`Statement`] with Ed25519;
//! the signature travels in `Assignment.approval`, beside inputs sent as
//! exactly their canonical JSON text, so a worker checks the signature over
//! the bytes it received *before* it parses them, then confirms the text is
//! canonical (which also refuses duplicate keys and integers beyond 2^53,
//! the two ways one JSON text can mean two things).
//!
//! Signing goes through the [`Signer`] trait so that the key can live in a
//! file held by the approver ([`KeyFileSigner`]), and later in an HSM or a
//! separate approver service, never in the process that dispatches tasks.
//!
//! What it does not do: remember nonces (the worker's journal does, so a
//! replay is refused across restarts), decide which tasks need an approval
//! (the worker's config does), or hold any key material beyond what a
//! caller hands it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, UnparsedPublicKey};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Digest;

use crate::v1 as pb;

/// The only signature algorithm accepted.
pub const ALGORITHM: &str = "ed25519";
/// The statement's `type` member: which statement this is, and its version.
pub const STATEMENT_TYPE: &str = "private-worker.approval.v1";
/// Length of an Ed25519 signature.
pub const SIGNATURE_BYTES: usize = 64;
/// Shortest accepted nonce, in bytes (16 random bytes in hex are 32).
pub const MIN_NONCE_BYTES: usize = 16;
/// Longest accepted nonce, in bytes.
pub const MAX_NONCE_BYTES: usize = 128;
/// Longest accepted audience, in bytes.
pub const MAX_AUDIENCE_BYTES: usize = 512;
/// Latest accepted window end, 9999-12-31T23:59:59Z (Unix seconds): well
/// inside what canonical JSON writes exactly.
const MAX_TIMESTAMP: i64 = 253_402_300_799;

/// The DER prefix of an Ed25519 `SubjectPublicKeyInfo` (RFC 8410): what
/// precedes the 32 key bytes in every such public key.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// What an approver signs for one task. Its canonical JSON (with `type`
/// and `algorithm` added) is the signed message: see
/// [`Statement::signing_bytes`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    /// The task id (stable across attempts).
    pub task_id: String,
    /// The plan the task belongs to.
    pub plan_id: String,
    /// Registered task name.
    pub task_name: String,
    /// Registered task version.
    pub task_version: String,
    /// Lower-case hex SHA-256 of the inputs' canonical JSON text.
    pub inputs_sha256: String,
    /// Who may run it: a worker identity (`spiffe://...`) or a pool name
    /// that workers are configured to accept.
    pub audience: String,
    /// Which approver key signs.
    pub key_id: String,
    /// Single-use value; a worker refuses a nonce it has already used.
    pub nonce: String,
    /// Not valid before this instant (Unix seconds).
    pub not_before: i64,
    /// Not valid after this instant (Unix seconds).
    pub not_after: i64,
}

impl Statement {
    /// The bytes that are signed: RFC 8785 canonical JSON of the statement
    /// with `"type": "private-worker.approval.v1"` and
    /// `"algorithm": "ed25519"` added.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut value = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Value::Object(map) = &mut value {
            map.insert("type".into(), STATEMENT_TYPE.into());
            map.insert("algorithm".into(), ALGORITHM.into());
        }
        crate::canonical_json(&value).into_bytes()
    }
}

/// An approval as the worker keeps it (in its journal, beside the
/// assignment): the wire `Approval` with the signature in hex and the
/// window in whole seconds (`None` when absent or not whole seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// Which approver key signed.
    pub key_id: String,
    /// Signature algorithm as sent.
    pub algorithm: String,
    /// The signature, lower-case hex.
    pub signature: String,
    /// Start of the validity window (Unix seconds).
    pub not_before: Option<i64>,
    /// End of the validity window (Unix seconds).
    pub not_after: Option<i64>,
    /// Single-use value.
    pub nonce: String,
    /// Who may run the task.
    pub audience: String,
}

fn whole_seconds(t: Option<&prost_types::Timestamp>) -> Option<i64> {
    t.filter(|t| t.nanos == 0).map(|t| t.seconds)
}

impl From<&pb::Approval> for Approval {
    /// A signature of any length but [`SIGNATURE_BYTES`] is kept as an
    /// empty one (refused as malformed either way), so a hostile 4 MiB
    /// signature is not copied into the journal.
    fn from(wire: &pb::Approval) -> Self {
        Approval {
            key_id: wire.key_id.clone(),
            algorithm: wire.algorithm.clone(),
            signature: if wire.signature.len() == SIGNATURE_BYTES {
                hex::encode(&wire.signature)
            } else {
                String::new()
            },
            not_before: whole_seconds(wire.not_before.as_ref()),
            not_after: whole_seconds(wire.not_after.as_ref()),
            nonce: wire.nonce.clone(),
            audience: wire.audience.clone(),
        }
    }
}

impl From<&Approval> for pb::Approval {
    fn from(kept: &Approval) -> Self {
        let at = |seconds: Option<i64>| {
            seconds.map(|seconds| prost_types::Timestamp { seconds, nanos: 0 })
        };
        pb::Approval {
            key_id: kept.key_id.clone(),
            algorithm: kept.algorithm.clone(),
            signature: hex::decode(&kept.signature).unwrap_or_default(),
            not_before: at(kept.not_before),
            not_after: at(kept.not_after),
            nonce: kept.nonce.clone(),
            audience: kept.audience.clone(),
        }
    }
}

/// The task an approval is checked against, as the checker received or
/// holds it.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// Task id.
    pub task_id: &'a str,
    /// Plan id.
    pub plan_id: &'a str,
    /// Task name.
    pub task_name: &'a str,
    /// Task version.
    pub task_version: &'a str,
    /// The inputs exactly as sent (must be their canonical JSON).
    pub inputs_json: &'a str,
}

/// Why an approval was refused. [`Refusal::code`] is the error code a
/// worker reports (outcome REJECTED).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The task needs an approval and none came.
    #[error(
        "this task needs a signed approval on this worker and the assignment carries none; nothing ran"
    )]
    Missing,
    /// Not a well-formed approval (algorithm, lengths, window shape).
    #[error("the approval is malformed: {0}; nothing ran")]
    Malformed(String),
    /// Signed by a key this worker does not trust.
    #[error(
        "the approval is signed with key {0}, which this worker does not trust (see [approvals] keys); nothing ran"
    )]
    UnknownKey(String),
    /// For another worker or pool.
    #[error(
        "the approval is for audience {0}, which is neither this worker's identity nor one of its [approvals] audiences; nothing ran"
    )]
    WrongAudience(String),
    /// The signature does not match the task as received.
    #[error(
        "the approval's signature does not match this assignment (its task, plan, version, inputs, audience, window or nonce differ from what was approved); nothing ran"
    )]
    BadSignature,
    /// Its window has not started.
    #[error(
        "the approval is not valid before {0} (Unix seconds; allowing this worker's clock skew); nothing ran"
    )]
    NotYetValid(i64),
    /// Its window has ended.
    #[error(
        "the approval expired at {0} (Unix seconds; allowing this worker's clock skew); ask for a new approval; nothing ran"
    )]
    Expired(i64),
    /// The signature matches, but the inputs text is not canonical JSON, so
    /// what would run could differ from what was approved.
    #[error("the inputs of an approved task must be their canonical JSON text: {0}; nothing ran")]
    InputsNotCanonical(String),
    /// Signed by a trusted key that this worker trusts only for other
    /// tasks (its `[approvals] keys` entry lists `tasks`), such as an
    /// orchestrator's auto-approver key used for a task that changes
    /// something.
    #[error(
        "the approval is signed with key {key_id}, which this worker trusts only for other tasks (its [approvals] keys entry lists the tasks), not for {task}; nothing ran"
    )]
    KeyNotForTask {
        /// The key id, as [`Refusal::UnknownKey`] shows one.
        key_id: String,
        /// The task name, shown the same way.
        task: String,
    },
    /// The nonce was used before (by a task id this worker no longer
    /// remembers, or by another task id).
    #[error(
        "the approval (key {key_id}, nonce {nonce}) was already used on this worker; an approval runs its task once per worker (again only to finish an idempotent start whose outcome is unknown); nothing ran"
    )]
    Replayed {
        /// Key id of the approval.
        key_id: String,
        /// Its nonce.
        nonce: String,
    },
}

impl Refusal {
    /// The error code for this refusal.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Missing => "approval_missing",
            Refusal::Malformed(_) | Refusal::BadSignature | Refusal::InputsNotCanonical(_) => {
                "approval_invalid"
            }
            Refusal::UnknownKey(_) => "approval_unknown_key",
            Refusal::KeyNotForTask { .. } => "approval_key_not_for_task",
            Refusal::WrongAudience(_) => "approval_wrong_audience",
            Refusal::NotYetValid(_) => "approval_not_yet_valid",
            Refusal::Expired(_) => "approval_expired",
            Refusal::Replayed { .. } => "approval_replayed",
        }
    }
}

/// Every error code a [`Refusal`] can carry.
pub const ERROR_CODES: [&str; 8] = [
    "approval_missing",
    "approval_invalid",
    "approval_unknown_key",
    "approval_key_not_for_task",
    "approval_wrong_audience",
    "approval_not_yet_valid",
    "approval_expired",
    "approval_replayed",
];

/// `value` in backticks when it follows the id rule, else a description:
/// a refusal message never repeats bytes that could forge a log line.
fn named(value: &str) -> String {
    match crate::check_id(value) {
        Ok(()) => format!("`{value}`"),
        Err(rule) => format!("(a value that {rule})"),
    }
}

/// Whether `value` is a well-formed audience: 1 to [`MAX_AUDIENCE_BYTES`]
/// bytes of printable ASCII (no space, no control character). The one
/// rule for approvals on the wire and for audiences in a worker's config.
pub fn is_audience(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_AUDIENCE_BYTES
        && value.bytes().all(|b| b.is_ascii_graphic())
}

fn shown_audience(value: &str) -> String {
    if is_audience(value) {
        format!("`{value}`")
    } else {
        "(empty, too long or with characters other than printable ASCII)".into()
    }
}

/// A trusted approver public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    key_id: String,
    raw: [u8; 32],
    /// `Some`: the only task names this key may approve.
    tasks: Option<BTreeSet<String>>,
}

impl PublicKey {
    /// Reads a PEM `PUBLIC KEY` (Ed25519 `SubjectPublicKeyInfo`, as
    /// `certs-tool approver-key` writes it) for `key_id`.
    ///
    /// # Errors
    /// The text is not such a key (the message says what it is instead).
    pub fn from_pem(key_id: &str, pem: &[u8]) -> Result<PublicKey, String> {
        crate::check_id(key_id).map_err(|rule| format!("key id {rule}"))?;
        let der = SubjectPublicKeyInfoDer::from_pem_slice(pem)
            .map_err(|e| format!("not a PEM PUBLIC KEY: {e}"))?;
        let bytes = der.as_ref();
        let raw = bytes
            .strip_prefix(&ED25519_SPKI_PREFIX[..])
            .and_then(|rest| <[u8; 32]>::try_from(rest).ok())
            .ok_or("not an Ed25519 public key (RFC 8410 SubjectPublicKeyInfo)")?;
        Ok(PublicKey {
            key_id: key_id.to_string(),
            raw,
            tasks: None,
        })
    }

    /// The same key, trusted only for approvals of these task names (any
    /// version): an approval it signed for another task is refused with
    /// [`Refusal::KeyNotForTask`]. How a worker bounds a key it trusts
    /// less, such as an orchestrator's auto-approver for read-only tasks.
    pub fn restricted_to(mut self, tasks: impl IntoIterator<Item = String>) -> PublicKey {
        self.tasks = Some(tasks.into_iter().collect());
        self
    }

    /// The key's id.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }
}

/// Which audiences a [`Verifier`] accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audiences {
    /// Only these (a worker: its identity and its configured pools).
    Only(BTreeSet<String>),
    /// Any well-formed audience (the orchestrator, which checks an approval
    /// before it knows which worker will run the task).
    Any,
}

/// What a verified approval consumes: the worker records it so the same
/// approval never runs twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Key id of the approval.
    pub key_id: String,
    /// Its nonce.
    pub nonce: String,
    /// End of its window (Unix seconds): the nonce need not be remembered
    /// after this, plus the clock skew, since the approval is refused as
    /// expired from then on.
    pub not_after: i64,
}

/// Checks approvals against trusted keys, accepted audiences and a clock.
#[derive(Debug, Clone)]
pub struct Verifier {
    keys: BTreeMap<String, ([u8; 32], Option<BTreeSet<String>>)>,
    audiences: Audiences,
    max_validity: Duration,
    clock_skew: Duration,
}

impl Verifier {
    /// A verifier trusting `keys`, accepting `audiences`, refusing windows
    /// longer than `max_validity`, and allowing `clock_skew` at both ends of
    /// a window.
    pub fn new(
        keys: impl IntoIterator<Item = PublicKey>,
        audiences: Audiences,
        max_validity: Duration,
        clock_skew: Duration,
    ) -> Verifier {
        Verifier {
            keys: keys
                .into_iter()
                .map(|k| (k.key_id, (k.raw, k.tasks)))
                .collect(),
            audiences,
            max_validity,
            clock_skew,
        }
    }

    /// The clock skew allowed at both ends of a window.
    pub fn clock_skew(&self) -> Duration {
        self.clock_skew
    }

    /// Whether any key is trusted.
    pub fn has_keys(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The trusted key ids.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// Checks `approval` for `subject` at `now`: its shape, its key, its
    /// audience, its signature over the inputs *as received* (nothing is
    /// parsed before the signature holds), its window, and last that the
    /// inputs text is canonical JSON. Replay is the caller's check.
    ///
    /// # Errors
    /// The first [`Refusal`] found, in that order.
    pub fn verify(
        &self,
        subject: Subject<'_>,
        approval: Option<&Approval>,
        now: SystemTime,
    ) -> Result<Verified, Refusal> {
        let approval = approval.ok_or(Refusal::Missing)?;
        let (not_before, not_after) = self.check_shape(approval)?;
        let (key, tasks) = self
            .keys
            .get(&approval.key_id)
            .ok_or_else(|| Refusal::UnknownKey(named(&approval.key_id)))?;
        if let Audiences::Only(accepted) = &self.audiences
            && !accepted.contains(&approval.audience)
        {
            return Err(Refusal::WrongAudience(shown_audience(&approval.audience)));
        }
        let statement = Statement {
            task_id: subject.task_id.to_string(),
            plan_id: subject.plan_id.to_string(),
            task_name: subject.task_name.to_string(),
            task_version: subject.task_version.to_string(),
            inputs_sha256: sha256_hex(subject.inputs_json),
            audience: approval.audience.clone(),
            key_id: approval.key_id.clone(),
            nonce: approval.nonce.clone(),
            not_before,
            not_after,
        };
        let signature = hex::decode(&approval.signature).unwrap_or_default();
        UnparsedPublicKey::new(&ED25519, key)
            .verify(&statement.signing_bytes(), &signature)
            .map_err(|_| Refusal::BadSignature)?;
        // Checked once the signature holds: a forgery is reported as one,
        // and an authentic approval outside the key's tasks as this.
        if let Some(tasks) = tasks
            && !tasks.contains(subject.task_name)
        {
            return Err(Refusal::KeyNotForTask {
                key_id: named(&approval.key_id),
                task: named(subject.task_name),
            });
        }
        let now = unix_seconds(now);
        let skew = i64::try_from(self.clock_skew.as_secs()).unwrap_or(i64::MAX);
        if now.saturating_add(skew) < not_before {
            return Err(Refusal::NotYetValid(not_before));
        }
        if now.saturating_sub(skew) > not_after {
            return Err(Refusal::Expired(not_after));
        }
        let parsed: Value = serde_json::from_str(subject.inputs_json)
            .map_err(|e| Refusal::InputsNotCanonical(format!("they are not valid JSON ({e})")))?;
        let canonical = canonical_inputs(&parsed).map_err(Refusal::InputsNotCanonical)?;
        if canonical != subject.inputs_json {
            return Err(Refusal::InputsNotCanonical(
                "the text differs from its canonical form (member order, spacing, number or \
                 string form, or a repeated member)"
                    .into(),
            ));
        }
        Ok(Verified {
            key_id: approval.key_id.clone(),
            nonce: approval.nonce.clone(),
            not_after,
        })
    }

    /// Everything checkable without a key: returns the window.
    fn check_shape(&self, approval: &Approval) -> Result<(i64, i64), Refusal> {
        let malformed = |m: String| Err(Refusal::Malformed(m));
        if approval.algorithm != ALGORITHM {
            return malformed(format!(
                "algorithm {} is not accepted (only `{ALGORITHM}`)",
                named(&approval.algorithm)
            ));
        }
        if let Err(rule) = crate::check_id(&approval.key_id) {
            return malformed(format!("its key id {rule}"));
        }
        let nonce = &approval.nonce;
        if !(MIN_NONCE_BYTES..=MAX_NONCE_BYTES).contains(&nonce.len())
            || crate::check_id(nonce).is_err()
        {
            return malformed(format!(
                "its nonce must be {MIN_NONCE_BYTES} to {MAX_NONCE_BYTES} bytes of A-Z a-z 0-9 . _ - :"
            ));
        }
        if !is_audience(&approval.audience) {
            return malformed(format!(
                "its audience must be 1 to {MAX_AUDIENCE_BYTES} bytes of printable ASCII"
            ));
        }
        if approval.signature.len() != 2 * SIGNATURE_BYTES {
            return malformed(format!(
                "its signature is not the {SIGNATURE_BYTES} bytes of an Ed25519 signature"
            ));
        }
        let (Some(not_before), Some(not_after)) = (approval.not_before, approval.not_after) else {
            return malformed("not_before and not_after must both be set, in whole seconds".into());
        };
        if not_after <= not_before {
            return malformed("not_after is not later than not_before".into());
        }
        if !(0..=MAX_TIMESTAMP).contains(&not_before) || !(0..=MAX_TIMESTAMP).contains(&not_after) {
            return malformed("its window lies outside the years 1970 to 9999".into());
        }
        let window = u64::try_from(not_after.saturating_sub(not_before)).unwrap_or(u64::MAX);
        if window > self.max_validity.as_secs() {
            return malformed(format!(
                "its window of {window} s is longer than the {} s this checker accepts (max_validity)",
                self.max_validity.as_secs()
            ));
        }
        Ok((not_before, not_after))
    }
}

/// Signs statements. Implemented by [`KeyFileSigner`]; an HSM or a remote
/// approver service can implement it too.
pub trait Signer {
    /// The id of the key this signer holds.
    fn key_id(&self) -> &str;
    /// An Ed25519 signature over `message`.
    ///
    /// # Errors
    /// The signer could not sign (a message for the operator).
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String>;
}

/// A signer holding an Ed25519 private key read from a PKCS#8 PEM file.
pub struct KeyFileSigner {
    key_id: String,
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for KeyFileSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyFileSigner")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl KeyFileSigner {
    /// Reads a PEM `PRIVATE KEY` (PKCS#8 Ed25519) for `key_id`.
    ///
    /// # Errors
    /// The text is not such a key; the message never includes key bytes.
    pub fn from_pem(key_id: &str, pem: &[u8]) -> Result<KeyFileSigner, String> {
        crate::check_id(key_id).map_err(|rule| format!("key id {rule}"))?;
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem)
            .map_err(|_| "not a PEM PRIVATE KEY (PKCS#8)".to_string())?;
        let pair = Ed25519KeyPair::from_pkcs8(der.secret_pkcs8_der())
            .map_err(|_| "not an Ed25519 private key".to_string())?;
        Ok(KeyFileSigner {
            key_id: key_id.to_string(),
            pair,
        })
    }
}

impl Signer for KeyFileSigner {
    fn key_id(&self) -> &str {
        &self.key_id
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        Ok(self.pair.sign(message).as_ref().to_vec())
    }
}

/// One task to approve, as the approver sees it.
#[derive(Debug, Clone, Copy)]
pub struct Task<'a> {
    /// Task id.
    pub task_id: &'a str,
    /// Plan id.
    pub plan_id: &'a str,
    /// Task name.
    pub task_name: &'a str,
    /// Task version.
    pub task_version: &'a str,
    /// The inputs.
    pub inputs: &'a Value,
}

/// Signs `task` for `audience`, valid from `not_before` to `not_after`
/// (Unix seconds), with a fresh random nonce.
///
/// # Errors
/// The inputs cannot be signed exactly (see [`canonical_inputs`]), or the
/// signer failed.
pub fn sign(
    signer: &dyn Signer,
    task: Task<'_>,
    audience: &str,
    not_before: i64,
    not_after: i64,
) -> Result<Approval, String> {
    let canonical = canonical_inputs(task.inputs)?;
    let mut nonce = [0u8; 16];
    aws_lc_rs::rand::fill(&mut nonce).map_err(|_| "no randomness for the nonce".to_string())?;
    let statement = Statement {
        task_id: task.task_id.to_string(),
        plan_id: task.plan_id.to_string(),
        task_name: task.task_name.to_string(),
        task_version: task.task_version.to_string(),
        inputs_sha256: sha256_hex(&canonical),
        audience: audience.to_string(),
        key_id: signer.key_id().to_string(),
        nonce: hex::encode(nonce),
        not_before,
        not_after,
    };
    let signature = signer.sign(&statement.signing_bytes())?;
    Ok(Approval {
        key_id: statement.key_id,
        algorithm: ALGORITHM.into(),
        signature: hex::encode(signature),
        not_before: Some(not_before),
        not_after: Some(not_after),
        nonce: statement.nonce,
        audience: statement.audience,
    })
}

/// The canonical JSON text of `inputs`, the form approved inputs travel in.
///
/// # Errors
/// An integer beyond 2^53 in magnitude (canonical JSON writes numbers as
/// IEEE doubles, so it would be changed): the message names where it is
/// and says to send it as a string.
pub fn canonical_inputs(inputs: &Value) -> Result<String, String> {
    if let Some(path) = inexact_number(inputs, String::new()) {
        return Err(format!(
            "the number at `{}` is beyond 2^53, which canonical JSON (RFC 8785) cannot hold exactly; send it as a string",
            if path.is_empty() { "/" } else { &path }
        ));
    }
    Ok(crate::canonical_json(inputs))
}

/// The JSON pointer of the first integer canonical JSON would change.
fn inexact_number(value: &Value, path: String) -> Option<String> {
    match value {
        Value::Number(n) => {
            // Canonical JSON writes every number as the double nearest to
            // it: an integer survives only if that double is itself.
            #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
            let exact = n
                .as_u64()
                .map(|u| (u as f64) as u64 == u && (u as f64) < 18_446_744_073_709_551_616.0)
                .or_else(|| n.as_i64().map(|i| (i as f64) as i64 == i && i != i64::MIN))
                .unwrap_or(true);
            (!exact).then_some(path)
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| inexact_number(v, format!("{path}/{i}"))),
        Value::Object(members) => members.iter().find_map(|(k, v)| {
            let escaped = k.replace('~', "~0").replace('/', "~1");
            inexact_number(v, format!("{path}/{escaped}"))
        }),
        _ => None,
    }
}

/// Lower-case hex SHA-256 of `text`.
pub fn sha256_hex(text: &str) -> String {
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// `at` in whole Unix seconds (0 before 1970).
pub fn unix_seconds(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed test key (PKCS#8 v1, from RFC 8410 section 10.3).
    const TEST_KEY: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";
    /// Its public key (RFC 8410 section 10.1).
    const TEST_PUB: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";

    fn verifier() -> Verifier {
        Verifier::new(
            [PublicKey::from_pem("k1", TEST_PUB.as_bytes()).unwrap()],
            Audiences::Only(["spiffe://example.org/worker/w1".to_string()].into()),
            Duration::from_secs(3600),
            Duration::from_secs(60),
        )
    }

    fn signed(inputs: &Value) -> (Approval, String) {
        let signer = KeyFileSigner::from_pem("k1", TEST_KEY.as_bytes()).unwrap();
        let task = Task {
            task_id: "t1",
            plan_id: "p1",
            task_name: "crm.lookup",
            task_version: "1",
            inputs,
        };
        let approval = sign(
            &signer,
            task,
            "spiffe://example.org/worker/w1",
            1_000,
            2_000,
        )
        .unwrap();
        (approval, canonical_inputs(inputs).unwrap())
    }

    fn subject(inputs_json: &str) -> Subject<'_> {
        Subject {
            task_id: "t1",
            plan_id: "p1",
            task_name: "crm.lookup",
            task_version: "1",
            inputs_json,
        }
    }

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    #[test]
    fn the_rfc_8410_key_pair_signs_and_its_public_key_verifies() {
        let inputs = serde_json::json!({"b": 1, "a": "x"});
        let (approval, text) = signed(&inputs);
        assert_eq!(text, r#"{"a":"x","b":1}"#);
        let ok = verifier()
            .verify(subject(&text), Some(&approval), at(1_500))
            .unwrap();
        assert_eq!(ok.nonce.len(), 32);
        assert_eq!(ok.not_after, 2_000);
    }

    #[test]
    fn a_key_restricted_to_some_tasks_approves_only_those() {
        let inputs = serde_json::json!({"id": 7});
        let (approval, text) = signed(&inputs);
        let restricted = |tasks: &[&str]| {
            Verifier::new(
                [PublicKey::from_pem("k1", TEST_PUB.as_bytes())
                    .unwrap()
                    .restricted_to(tasks.iter().map(|t| (*t).to_string()))],
                Audiences::Only(["spiffe://example.org/worker/w1".to_string()].into()),
                Duration::from_secs(3600),
                Duration::from_secs(60),
            )
        };
        assert!(
            restricted(&["crm.lookup", "crm.list"])
                .verify(subject(&text), Some(&approval), at(1_500))
                .is_ok()
        );
        let refusal = restricted(&["crm.list"])
            .verify(subject(&text), Some(&approval), at(1_500))
            .unwrap_err();
        assert_eq!(refusal.code(), "approval_key_not_for_task");
        assert!(refusal.to_string().contains("`crm.lookup`"), "{refusal}");
        // A forgery under the restricted key is still reported as one.
        let mut forged = approval.clone();
        forged.signature = "00".repeat(SIGNATURE_BYTES);
        assert_eq!(
            restricted(&["crm.list"]).verify(subject(&text), Some(&forged), at(1_500)),
            Err(Refusal::BadSignature)
        );
        assert!(ERROR_CODES.contains(&refusal.code()));
    }

    #[test]
    fn each_change_to_what_was_approved_breaks_the_signature() {
        let inputs = serde_json::json!({"id": 7});
        let (approval, text) = signed(&inputs);
        let v = verifier();
        let other_inputs = r#"{"id":8}"#;
        for s in [
            Subject {
                task_id: "t2",
                ..subject(&text)
            },
            Subject {
                plan_id: "p2",
                ..subject(&text)
            },
            Subject {
                task_name: "crm.delete",
                ..subject(&text)
            },
            Subject {
                task_version: "2",
                ..subject(&text)
            },
            subject(other_inputs),
        ] {
            assert_eq!(
                v.verify(s, Some(&approval), at(1_500)),
                Err(Refusal::BadSignature)
            );
        }
        let mut longer = approval.clone();
        longer.not_after = Some(2_001);
        let mut nonce = approval.clone();
        nonce.nonce = "0".repeat(32);
        for a in [longer, nonce] {
            assert_eq!(
                v.verify(subject(&text), Some(&a), at(1_500)),
                Err(Refusal::BadSignature)
            );
        }
    }

    #[test]
    fn window_key_audience_and_shape_each_have_their_refusal() {
        let inputs = serde_json::json!({});
        let (approval, text) = signed(&inputs);
        let v = verifier();
        let s = subject(&text);
        assert_eq!(v.verify(s, None, at(1_500)), Err(Refusal::Missing));
        assert_eq!(
            v.verify(s, Some(&approval), at(939)),
            Err(Refusal::NotYetValid(1_000))
        );
        assert!(
            v.verify(s, Some(&approval), at(940)).is_ok(),
            "skew allowed"
        );
        assert_eq!(
            v.verify(s, Some(&approval), at(2_061)),
            Err(Refusal::Expired(2_000))
        );
        let mut key = approval.clone();
        key.key_id = "k2".into();
        assert_eq!(
            v.verify(s, Some(&key), at(1_500)).unwrap_err().code(),
            "approval_unknown_key"
        );
        let mut audience = approval.clone();
        audience.audience = "spiffe://example.org/worker/w2".into();
        assert_eq!(
            v.verify(s, Some(&audience), at(1_500)).unwrap_err().code(),
            "approval_wrong_audience"
        );
        let mut none = approval.clone();
        none.algorithm = "none".into();
        let mut huge = approval.clone();
        huge.signature = "ab".repeat(1024 * 1024);
        let mut unbounded = approval.clone();
        unbounded.not_after = Some(1_000 + 3_601);
        for a in [none, huge, unbounded] {
            assert_eq!(
                v.verify(s, Some(&a), at(1_500)).unwrap_err().code(),
                "approval_invalid"
            );
        }
    }

    #[test]
    fn inputs_must_arrive_in_canonical_form_and_big_integers_cannot_be_signed() {
        let inputs = serde_json::json!({"a": 1});
        let (approval, _) = signed(&inputs);
        let spaced = r#"{"a": 1}"#;
        // Signed over other bytes: the signature already fails.
        assert_eq!(
            verifier().verify(subject(spaced), Some(&approval), at(1_500)),
            Err(Refusal::BadSignature)
        );
        let big = serde_json::json!({"n": [1, 9_007_199_254_740_993_u64]});
        let err = canonical_inputs(&big).unwrap_err();
        assert!(err.contains("/n/1"), "{err}");
        assert!(canonical_inputs(&serde_json::json!({"n": 9_007_199_254_740_992_u64})).is_ok());
        // A large float that is an integer is written (and read back) exactly.
        let float = serde_json::json!({"f": 1e16, "g": -1e300});
        let text = canonical_inputs(&float).unwrap();
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(canonical_inputs(&back).unwrap(), text, "{text}");
        assert!(canonical_inputs(&serde_json::json!({"i": -9_007_199_254_740_993_i64})).is_err());
    }

    #[test]
    fn a_non_canonical_text_with_a_valid_signature_is_still_refused() {
        // An approver that signed a non-canonical text (a broken signer):
        // the worker refuses it rather than run something ambiguous.
        let signer = KeyFileSigner::from_pem("k1", TEST_KEY.as_bytes()).unwrap();
        let text = r#"{"a":1,"a":2}"#;
        let statement = Statement {
            task_id: "t1".into(),
            plan_id: "p1".into(),
            task_name: "crm.lookup".into(),
            task_version: "1".into(),
            inputs_sha256: sha256_hex(text),
            audience: "spiffe://example.org/worker/w1".into(),
            key_id: "k1".into(),
            nonce: "n".repeat(32),
            not_before: 1_000,
            not_after: 2_000,
        };
        let approval = Approval {
            key_id: "k1".into(),
            algorithm: ALGORITHM.into(),
            signature: hex::encode(signer.sign(&statement.signing_bytes()).unwrap()),
            not_before: Some(1_000),
            not_after: Some(2_000),
            nonce: statement.nonce.clone(),
            audience: statement.audience.clone(),
        };
        let refusal = verifier()
            .verify(subject(text), Some(&approval), at(1_500))
            .unwrap_err();
        assert!(
            matches!(refusal, Refusal::InputsNotCanonical(_)),
            "{refusal}"
        );
    }

    #[test]
    fn the_wire_form_round_trips_and_fractional_seconds_are_malformed() {
        let (approval, text) = signed(&serde_json::json!({}));
        let wire = pb::Approval::from(&approval);
        assert_eq!(Approval::from(&wire), approval);
        let mut fractional = wire.clone();
        fractional.not_before = Some(prost_types::Timestamp {
            seconds: 1_000,
            nanos: 5,
        });
        let kept = Approval::from(&fractional);
        assert_eq!(kept.not_before, None);
        assert_eq!(
            verifier()
                .verify(subject(&text), Some(&kept), at(1_500))
                .unwrap_err()
                .code(),
            "approval_invalid"
        );
    }

    #[test]
    fn refusal_messages_never_repeat_control_characters() {
        let (mut approval, text) = signed(&serde_json::json!({}));
        approval.key_id = "k\u{1b}[2J\nFAKE".into();
        let message = verifier()
            .verify(subject(&text), Some(&approval), at(1_500))
            .unwrap_err()
            .to_string();
        assert!(
            !message.contains('\u{1b}') && !message.contains('\n'),
            "{message}"
        );
    }
}
