//! The control plane's own bearer tokens: one for the administrator (the CLI
//! and the local default), one for the gateway's key sync. Created at first
//! start in the data directory, readable by the owner only, and kept in
//! memory as digests.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::apikey;

#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("cannot write {0}: {1}")]
    Write(PathBuf, std::io::Error),
    #[error("{0} is empty")]
    Empty(PathBuf),
    #[error("cannot create a token: {0}")]
    Random(#[from] apikey::KeyError),
}

/// The token in `dir/name`, created (random, mode 0600) if absent. The bool
/// says whether it was created now, so the caller prints it once.
pub fn load_or_create(
    dir: &Path,
    name: &str,
    prefix: &str,
) -> Result<(String, bool), TokenFileError> {
    let path = dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let token = text.trim().to_string();
            if token.is_empty() {
                return Err(TokenFileError::Empty(path));
            }
            Ok((token, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = format!(
                "{prefix}{}",
                apikey::mint()?.plaintext.trim_start_matches(apikey::PREFIX)
            );
            std::fs::create_dir_all(dir)
                .map_err(|e| TokenFileError::Write(dir.to_path_buf(), e))?;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options
                .open(&path)
                .map_err(|e| TokenFileError::Write(path.clone(), e))?;
            writeln!(file, "{token}").map_err(|e| TokenFileError::Write(path.clone(), e))?;
            Ok((token, true))
        }
        Err(e) => Err(TokenFileError::Read(path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_created_once_private_and_then_reused() {
        let dir = std::env::temp_dir().join(format!("maas-tokens-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (first, created) = load_or_create(&dir, "admin-token", "maas-admin-").unwrap();
        assert!(created && first.starts_with("maas-admin-") && first.len() > 40);
        let (again, created) = load_or_create(&dir, "admin-token", "maas-admin-").unwrap();
        assert!(!created);
        assert_eq!(again, first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join("admin-token"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
