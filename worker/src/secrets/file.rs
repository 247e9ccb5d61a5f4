//! Credentials from files (`file:///path`), including systemd credentials.
//!
//! An absolute path is read as is. A relative one is looked up in
//! `$CREDENTIALS_DIRECTORY`, where systemd's `LoadCredential=` puts
//! credentials for a service. The file is read on every load, so replacing
//! it rotates the credential without a restart. One trailing newline is
//! removed (editors add one). The file's content is never logged.

use std::path::PathBuf;

use super::{SecretError, SecretFuture, SecretRef, SecretSource, SecretValue};

/// Reads `file://` references.
#[derive(Debug, Clone, Default)]
pub struct FileSource {
    credentials_directory: Option<PathBuf>,
}

impl FileSource {
    /// A source that resolves relative paths in `$CREDENTIALS_DIRECTORY`
    /// when systemd set it.
    pub fn from_environment() -> Self {
        FileSource {
            credentials_directory: std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from),
        }
    }
}

impl FileSource {
    /// The file a `file://` reference names: absolute as is, relative in
    /// `$CREDENTIALS_DIRECTORY`.
    fn path_of(&self, reference: &SecretRef) -> Result<PathBuf, SecretError> {
        let unreadable = |cause: String| SecretError::FileUnreadable {
            reference: reference.clone(),
            cause,
        };
        let SecretRef::File(path) = reference else {
            return Err(SecretError::Unsupported {
                reference: reference.clone(),
                reason: "not a file:// reference",
            });
        };
        if path.is_absolute() {
            return Ok(path.clone());
        }
        let dir = self.credentials_directory.as_ref().ok_or_else(|| {
            unreadable(
                "relative path, and $CREDENTIALS_DIRECTORY is not set (use file:///absolute/path)"
                    .into(),
            )
        })?;
        Ok(dir.join(path))
    }

    /// Reads the file now, blocking (start-up only; tasks use
    /// [`SecretSource::load`]).
    ///
    /// # Errors
    /// [`SecretError::FileUnreadable`] naming the reference and the I/O
    /// error kind.
    pub fn load_now(&self, reference: &SecretRef) -> Result<SecretValue, SecretError> {
        let full = self.path_of(reference)?;
        let text = std::fs::read_to_string(&full).map_err(|e| SecretError::FileUnreadable {
            reference: reference.clone(),
            cause: e.kind().to_string(),
        })?;
        Ok(without_trailing_newline(text))
    }
}

/// One trailing `\n` (or `\r\n`) removed, in place, so no copy is left.
fn without_trailing_newline(mut text: String) -> SecretValue {
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    SecretValue::new(text)
}

impl SecretSource for FileSource {
    fn load<'a>(&'a self, reference: &'a SecretRef) -> SecretFuture<'a> {
        Box::pin(async move {
            let full = self.path_of(reference)?;
            let text = tokio::fs::read_to_string(&full).await.map_err(|e| {
                SecretError::FileUnreadable {
                    reference: reference.clone(),
                    cause: e.kind().to_string(),
                }
            })?;
            Ok(without_trailing_newline(text))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_secret_loses_its_trailing_newline_and_is_reread_each_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first\n").unwrap();
        let source = FileSource::default();
        let reference = SecretRef::File(path.clone());
        assert_eq!(source.load(&reference).await.unwrap().expose(), "first");
        std::fs::write(&path, "second").unwrap();
        assert_eq!(source.load(&reference).await.unwrap().expose(), "second");
    }

    #[tokio::test]
    async fn a_relative_file_is_found_in_the_credentials_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("crm"), "tok").unwrap();
        let source = FileSource {
            credentials_directory: Some(dir.path().to_path_buf()),
        };
        let value = source.load(&SecretRef::File("crm".into())).await.unwrap();
        assert_eq!(value.expose(), "tok");
        let missing = source
            .load(&SecretRef::File("nope".into()))
            .await
            .unwrap_err();
        assert!(
            missing.to_string().starts_with("file://nope: "),
            "{missing}"
        );
    }
}
