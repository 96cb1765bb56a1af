//! Secrets (API tokens, keys) read from a file or an environment variable;
//! errors name where they were looked for, never the secret.

/// A secret (API token, key) that cannot be read; never holds the secret itself.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{what}: cannot read {}: {source}", path.display())]
    Read {
        what: String,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: {} is empty", path.display())]
    Empty {
        what: String,
        path: std::path::PathBuf,
    },
    #[error("{what}: environment variable {var} is not set")]
    EnvUnset { what: String, var: String },
}

/// Reads a secret from a file (trimmed) or an environment variable; `None`
/// when neither is configured.
pub fn read_secret(
    what: &str,
    file: Option<&std::path::Path>,
    env: Option<&str>,
) -> Result<Option<String>, SecretError> {
    if let Some(path) = file {
        let s = std::fs::read_to_string(path).map_err(|source| SecretError::Read {
            what: what.into(),
            path: path.to_owned(),
            source,
        })?;
        let s = s.trim().to_string();
        if s.is_empty() {
            return Err(SecretError::Empty {
                what: what.into(),
                path: path.to_owned(),
            });
        }
        return Ok(Some(s));
    }
    if let Some(var) = env {
        return match std::env::var(var) {
            Ok(s) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
            _ => Err(SecretError::EnvUnset {
                what: what.into(),
                var: var.into(),
            }),
        };
    }
    Ok(None)
}
