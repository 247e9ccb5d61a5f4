//! Signed approvals (`private_worker_proto::approval`): `Verifier::verify`
//! over an arbitrary task and approval.
//!
//! Two modes:
//! - **Forged**: key id, algorithm, signature, nonce, audience, window,
//!   clock and inputs all arbitrary (optionally fitted to pass the shape
//!   checks, so the signature check is reached). It must never be `Ok`
//!   (unless the bytes are, by chance, the one true signature, which the
//!   target checks by signing the same statement).
//! - **Signed**: a real approval from `approval::sign` for an arbitrary
//!   task and inputs. Verified as sent, within its window, it must be `Ok`
//!   with its key id, nonce and end; with any one thing changed (an id, the
//!   inputs, the audience, even to another accepted one, the nonce, the key
//!   id, even to another trusted key, either end of the window, one bit of
//!   the signature, the algorithm, or the clock outside the window) it must
//!   be refused.
//!
//! Nothing may panic, and every refusal must format.
//!
//! The two Ed25519 key pairs below were made for this target only
//! (`openssl genpkey -algorithm ed25519`) and are trusted nowhere else.
#![no_main]

use std::collections::BTreeSet;
use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use private_worker_proto::approval::{
    ALGORITHM, Approval, Audiences, KeyFileSigner, PublicKey, Signer, Statement, Subject, Task,
    Verifier, canonical_inputs, sha256_hex, sign,
};

const KEY_A: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIA4WagLWBoZEPV5KW+g3IiK1pBpdnuOxpfFSUc2egcvA
-----END PRIVATE KEY-----
";
const PUB_A: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAelMDVIhu0xQw42MGqCrHeCeIU91aa5wb/S/rSE18K/4=
-----END PUBLIC KEY-----
";
const KEY_B: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIM/002sCXFI0gMU+dt/DM6YaGwmhmuogL9GzaO8HnhES
-----END PRIVATE KEY-----
";
const PUB_B: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEALtUbXwyi+ePIFdxFP8F+nQfkJQg7dwdEzzheuKCCa2Y=
-----END PUBLIC KEY-----
";
const AUDIENCES: [&str; 2] = ["spiffe://example.org/worker/crm-eu-1", "pool-eu"];
const MAX_VALIDITY: u64 = 3600;
const SKEW: u64 = 60;

struct Fixture {
    verifier: Verifier,
    signers: [KeyFileSigner; 2],
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let keys = [
        PublicKey::from_pem("approvals-a", PUB_A.as_bytes()).expect("key a"),
        PublicKey::from_pem("approvals-b", PUB_B.as_bytes()).expect("key b"),
    ];
    Fixture {
        verifier: Verifier::new(
            keys,
            Audiences::Only(
                AUDIENCES
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<BTreeSet<_>>(),
            ),
            Duration::from_secs(MAX_VALIDITY),
            Duration::from_secs(SKEW),
        ),
        signers: [
            KeyFileSigner::from_pem("approvals-a", KEY_A.as_bytes()).expect("signer a"),
            KeyFileSigner::from_pem("approvals-b", KEY_B.as_bytes()).expect("signer b"),
        ],
    }
});

#[derive(Arbitrary, Debug)]
struct Ids<'a> {
    task_id: &'a str,
    plan_id: &'a str,
    task_name: &'a str,
    task_version: &'a str,
}

#[derive(Arbitrary, Debug)]
struct Forged<'a> {
    fit: bool,
    key: u8,
    key_id: &'a str,
    algorithm: &'a str,
    signature: Vec<u8>,
    nonce: &'a str,
    audience: &'a str,
    not_before: Option<i64>,
    not_after: Option<i64>,
    now: i64,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Change {
    None,
    TaskId,
    PlanId,
    TaskName,
    TaskVersion,
    Inputs,
    Audience,
    Nonce,
    KeyId,
    NotBefore,
    NotAfter,
    SignatureBit(u8),
    Algorithm,
    ClockBefore,
    ClockAfter,
}

#[derive(Arbitrary, Debug)]
struct Signed {
    key: bool,
    audience: bool,
    start: u32,
    window: u16,
    offset: u16,
    change: Change,
}

#[derive(Arbitrary, Debug)]
enum Mode<'a> {
    Forged(Forged<'a>),
    Signed(Signed),
}

#[derive(Arbitrary, Debug)]
struct Case<'a> {
    ids: Ids<'a>,
    mode: Mode<'a>,
    inputs_json: &'a str,
}

fuzz_target!(|case: Case| {
    let subject = Subject {
        task_id: case.ids.task_id,
        plan_id: case.ids.plan_id,
        task_name: case.ids.task_name,
        task_version: case.ids.task_version,
        inputs_json: case.inputs_json,
    };
    match case.mode {
        Mode::Forged(forged) => forged_is_refused(subject, forged),
        Mode::Signed(signed) => signed_holds_only_unchanged(subject, signed),
    }
});

fn at(seconds: i64) -> SystemTime {
    if seconds >= 0 {
        UNIX_EPOCH + Duration::from_secs(seconds.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(seconds.unsigned_abs())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn forged_is_refused(subject: Subject<'_>, f: Forged<'_>) {
    let fixture = &*FIXTURE;
    let mut approval = Approval {
        key_id: match f.key % 3 {
            0 => "approvals-a".into(),
            1 => "approvals-b".into(),
            _ => f.key_id.into(),
        },
        algorithm: f.algorithm.into(),
        signature: hex(&f.signature),
        not_before: f.not_before,
        not_after: f.not_after,
        nonce: f.nonce.into(),
        audience: f.audience.into(),
    };
    let mut now = f.now.clamp(-(1 << 40), 1 << 40);
    if f.fit {
        // Pass every shape check, so the signature is what decides.
        approval.algorithm = ALGORITHM.into();
        let mut signature = f.signature.clone();
        signature.resize(64, 0);
        approval.signature = hex(&signature);
        let mut nonce: String = f
            .nonce
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'))
            .take(128)
            .collect();
        while nonce.len() < 16 {
            nonce.push('0');
        }
        approval.nonce = nonce;
        approval.audience = AUDIENCES[usize::from(f.key) % 2].into();
        let not_before = f.not_before.unwrap_or(0).clamp(-(1 << 40), 1 << 40);
        approval.not_before = Some(not_before);
        approval.not_after = Some(not_before + 1 + (f.now.unsigned_abs() % MAX_VALIDITY) as i64);
        now = not_before;
    }
    let result = fixture.verifier.verify(subject, Some(&approval), at(now));
    if let Err(refusal) = &result {
        let _ = (refusal.to_string(), refusal.code());
        return;
    }
    // Ok: only the one true signature may get here.
    let signer = fixture
        .signers
        .iter()
        .find(|s| s.key_id() == approval.key_id)
        .expect("an Ok names a trusted key");
    let statement = Statement {
        task_id: subject.task_id.into(),
        plan_id: subject.plan_id.into(),
        task_name: subject.task_name.into(),
        task_version: subject.task_version.into(),
        inputs_sha256: sha256_hex(subject.inputs_json),
        audience: approval.audience.clone(),
        key_id: approval.key_id.clone(),
        nonce: approval.nonce.clone(),
        not_before: approval.not_before.unwrap_or_default(),
        not_after: approval.not_after.unwrap_or_default(),
    };
    let truth = signer.sign(&statement.signing_bytes()).expect("signs");
    assert_eq!(
        approval.signature,
        hex(&truth),
        "a forged approval verified: {approval:?} for {subject:?}"
    );
}

fn signed_holds_only_unchanged(subject: Subject<'_>, s: Signed) {
    let fixture = &*FIXTURE;
    let Ok(inputs) = serde_json::from_str::<serde_json::Value>(subject.inputs_json) else {
        return;
    };
    let Ok(canonical) = canonical_inputs(&inputs) else {
        return;
    };
    let signer = &fixture.signers[usize::from(s.key)];
    let not_before = 1_700_000_000 + i64::from(s.start);
    let not_after = not_before + 1 + i64::from(s.window) % MAX_VALIDITY as i64;
    let audience = AUDIENCES[usize::from(s.audience)];
    let task = Task {
        task_id: subject.task_id,
        plan_id: subject.plan_id,
        task_name: subject.task_name,
        task_version: subject.task_version,
        inputs: &inputs,
    };
    let approval = sign(signer, task, audience, not_before, not_after).expect("signs");
    let subject = Subject {
        inputs_json: &canonical,
        ..subject
    };
    let now = not_before + i64::from(s.offset) % (not_after - not_before + 1);

    let verified = fixture
        .verifier
        .verify(subject, Some(&approval), at(now))
        .unwrap_or_else(|r| panic!("a good approval was refused: {r} ({approval:?})"));
    assert_eq!(verified.key_id, approval.key_id);
    assert_eq!(verified.nonce, approval.nonce);
    assert_eq!(verified.not_after, not_after);

    let mut approval = approval;
    let mut subject_owned = (
        subject.task_id.to_string(),
        subject.plan_id.to_string(),
        subject.task_name.to_string(),
        subject.task_version.to_string(),
        canonical.clone(),
    );
    let mut now = now;
    match s.change {
        Change::None => return,
        Change::TaskId => subject_owned.0.push('x'),
        Change::PlanId => subject_owned.1.push('x'),
        Change::TaskName => subject_owned.2.push('x'),
        Change::TaskVersion => subject_owned.3.push('x'),
        Change::Inputs => {
            subject_owned.4 = if canonical == r#"{"x":1}"# {
                r#"{"x":2}"#.into()
            } else {
                r#"{"x":1}"#.into()
            }
        }
        Change::Audience => approval.audience = AUDIENCES[usize::from(!s.audience)].into(),
        Change::Nonce => {
            let last = approval.nonce.pop().unwrap_or('0');
            approval.nonce.push(if last == '0' { '1' } else { '0' });
        }
        Change::KeyId => approval.key_id = fixture.signers[usize::from(!s.key)].key_id().into(),
        Change::NotBefore => approval.not_before = Some(not_before - 1),
        Change::NotAfter => approval.not_after = Some(not_after + 1),
        Change::SignatureBit(bit) => {
            let mut bytes: Vec<u8> = (0..approval.signature.len() / 2)
                .map(|i| u8::from_str_radix(&approval.signature[2 * i..2 * i + 2], 16).unwrap())
                .collect();
            let bit = usize::from(bit) % (bytes.len() * 8);
            bytes[bit / 8] ^= 1 << (bit % 8);
            approval.signature = hex(&bytes);
        }
        Change::Algorithm => approval.algorithm = "none".into(),
        Change::ClockBefore => now = not_before - SKEW as i64 - 1,
        Change::ClockAfter => now = not_after + SKEW as i64 + 1,
    }
    let changed = Subject {
        task_id: &subject_owned.0,
        plan_id: &subject_owned.1,
        task_name: &subject_owned.2,
        task_version: &subject_owned.3,
        inputs_json: &subject_owned.4,
    };
    match fixture.verifier.verify(changed, Some(&approval), at(now)) {
        Ok(_) => panic!("an approval changed by {:?} still verified", s.change),
        Err(refusal) => {
            let _ = (refusal.to_string(), refusal.code());
        }
    }
}
