//! How kam-cdr-bridge and cdr-worker authenticate to NATS: nothing, a `.creds` file (JWT and NKey
//! seed), or a user and password. Secrets are never printed, not even by `Debug`.

use std::path::PathBuf;

use async_nats::ConnectOptions;

/// Credentials for NATS.
#[derive(Clone, Default)]
pub enum NatsAuth {
    /// No credentials.
    #[default]
    None,
    /// A `.creds` file (JWT + nkey seed).
    CredsFile(PathBuf),
    /// User and password.
    UserPassword {
        /// The user name.
        user: String,
        /// The password; never logged.
        password: String,
    },
}

/// The credentials file cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read NATS credentials file {path}")]
pub struct CredentialsError {
    /// The file.
    pub path: PathBuf,
    /// The I/O error.
    #[source]
    pub source: std::io::Error,
}

impl NatsAuth {
    /// `options` with these credentials added.
    pub async fn apply(&self, options: ConnectOptions) -> Result<ConnectOptions, CredentialsError> {
        match self {
            Self::None => Ok(options),
            Self::CredsFile(path) => {
                options
                    .credentials_file(path)
                    .await
                    .map_err(|source| CredentialsError {
                        path: path.clone(),
                        source,
                    })
            }
            Self::UserPassword { user, password } => {
                Ok(options.user_and_password(user.clone(), password.clone()))
            }
        }
    }
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::CredsFile(path) => write!(f, "CredsFile({})", path.display()),
            Self::UserPassword { user, .. } => write!(f, "UserPassword({user}, <redacted>)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_password() {
        let auth = NatsAuth::UserPassword {
            user: "cdr".into(),
            password: "s3cret".into(),
        };
        let printed = format!("{auth:?}");
        assert!(
            printed.contains("cdr") && !printed.contains("s3cret"),
            "{printed}"
        );
    }

    #[tokio::test]
    async fn unreadable_creds_file_names_the_file() {
        let auth = NatsAuth::CredsFile("/nonexistent/x.creds".into());
        let err = auth.apply(ConnectOptions::new()).await.err().unwrap();
        assert!(err.to_string().contains("/nonexistent/x.creds"));
    }
}
