//! Approver keys: the Ed25519 key pair whose private half signs approvals
//! (held by the approver, never by the orchestrator that dispatches) and
//! whose public half workers and the orchestrator trust.
//!
//! What it does not do: sign or verify approvals (`private_worker_proto::approval`
//! does), or store keys anywhere but the files it is told to write.

use std::path::{Path, PathBuf};

use crate::CertError;
use crate::files::{write_private_key, write_public};

/// A new approver key pair, PEM-encoded.
pub struct ApproverKey {
    /// PKCS#8 `PRIVATE KEY`: give it to the approver only.
    pub key_pem: String,
    /// `PUBLIC KEY` (Ed25519 SubjectPublicKeyInfo): give it to workers and
    /// the orchestrator.
    pub public_pem: String,
}

impl std::fmt::Debug for ApproverKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApproverKey")
            .field("public_pem", &self.public_pem)
            .finish_non_exhaustive()
    }
}

/// Makes a new Ed25519 approver key pair.
///
/// # Errors
/// [`CertError`] when the system cannot generate a key.
pub fn create_approver_key() -> Result<ApproverKey, CertError> {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(CertError::Generation)?;
    Ok(ApproverKey {
        key_pem: pair.serialize_pem(),
        public_pem: pair.public_key_pem(),
    })
}

/// Writes a new approver key pair as `<out_dir>/<key_id>.key` (mode 0600)
/// and `<out_dir>/<key_id>.pub`; returns both paths. Refuses to replace an
/// existing private key: losing it would invalidate every approval still
/// to run, so the operator removes it deliberately.
///
/// # Errors
/// [`CertError::Io`] when the directory or a file cannot be written, or the
/// key file already exists.
pub fn write_approver_key(out_dir: &Path, key_id: &str) -> Result<(PathBuf, PathBuf), CertError> {
    let key_path = out_dir.join(format!("{key_id}.key"));
    let pub_path = out_dir.join(format!("{key_id}.pub"));
    if key_path.exists() {
        return Err(CertError::Io {
            path: key_path,
            action: "create (it already exists; remove it first if you mean to replace this key)",
            source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
        });
    }
    std::fs::create_dir_all(out_dir).map_err(|source| CertError::Io {
        path: out_dir.to_path_buf(),
        action: "create directory",
        source,
    })?;
    let key = create_approver_key()?;
    // Claimed with create_new first, so two runs cannot both write it.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&key_path)
        .map_err(|source| CertError::Io {
            path: key_path.clone(),
            action: "create (it already exists; remove it first if you mean to replace this key)",
            source,
        })?;
    write_private_key(&key_path, &key.key_pem)?;
    write_public(&pub_path, &key.public_pem)?;
    Ok((key_path, pub_path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use private_worker_proto::approval::{
        Audiences, KeyFileSigner, PublicKey, Subject, Task, Verifier, canonical_inputs, sign,
    };
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn a_written_pair_signs_and_verifies_and_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let (key_path, pub_path) = write_approver_key(dir.path(), "approvals-1").unwrap();
        let signer =
            KeyFileSigner::from_pem("approvals-1", &std::fs::read(&key_path).unwrap()).unwrap();
        let public =
            PublicKey::from_pem("approvals-1", &std::fs::read(&pub_path).unwrap()).unwrap();
        let inputs = serde_json::json!({"q": "x"});
        let task = Task {
            task_id: "t",
            plan_id: "p",
            task_name: "n",
            task_version: "1",
            inputs: &inputs,
        };
        let approval = sign(&signer, task, "pool:a", 100, 200).unwrap();
        let text = canonical_inputs(&inputs).unwrap();
        let verifier = Verifier::new(
            [public],
            Audiences::Any,
            Duration::from_secs(3600),
            Duration::ZERO,
        );
        let subject = Subject {
            task_id: "t",
            plan_id: "p",
            task_name: "n",
            task_version: "1",
            inputs_json: &text,
        };
        verifier
            .verify(
                subject,
                Some(&approval),
                UNIX_EPOCH + Duration::from_secs(150),
            )
            .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let before = std::fs::read(&key_path).unwrap();
        assert!(write_approver_key(dir.path(), "approvals-1").is_err());
        assert_eq!(std::fs::read(&key_path).unwrap(), before, "the key is kept");
    }
}
