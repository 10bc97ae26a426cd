//! How kam-cdr-bridge and cdr-worker reach NATS: the server URLs and the credentials, nothing, a
//! `.creds` file (JWT and NKey seed), or a user and password. [`NatsArgs`] are the flags both
//! binaries take for it. Secrets are never printed, not even by `Debug`.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::{Client, ConnectOptions};

/// The NATS flags of both binaries (flattened into each one's `Args`).
#[derive(Clone, clap::Args)]
pub struct NatsArgs {
    /// NATS server URL(s), comma separated.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// NATS credentials file (JWT + nkey).
    #[arg(long, env = "NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// NATS user (with NATS_PASSWORD).
    #[arg(long, env = "NATS_USER")]
    pub nats_user: Option<String>,
    /// NATS password; from the environment only, never printed.
    #[arg(long, env = "NATS_PASSWORD", hide_env_values = true, hide = true)]
    pub nats_password: Option<String>,
}

impl std::fmt::Debug for NatsArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsArgs")
            .field("nats_url", &self.nats_url)
            .field("nats_creds", &self.nats_creds)
            .field("nats_user", &self.nats_user)
            .field(
                "nats_password",
                &self.nats_password.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// The NATS flags do not add up to credentials.
#[derive(Debug, thiserror::Error)]
pub enum NatsArgsError {
    /// A user without a password.
    #[error("NATS_USER is set but NATS_PASSWORD is not")]
    UserWithoutPassword,
}

impl NatsArgs {
    /// The credentials the flags name: a creds file wins over a user and password.
    pub fn auth(&self) -> Result<NatsAuth, NatsArgsError> {
        match (&self.nats_creds, &self.nats_user, &self.nats_password) {
            (Some(path), _, _) => Ok(NatsAuth::CredsFile(path.clone())),
            (None, Some(user), Some(password)) => Ok(NatsAuth::UserPassword {
                user: user.clone(),
                password: password.clone(),
            }),
            (None, Some(_), None) => Err(NatsArgsError::UserWithoutPassword),
            (None, None, _) => Ok(NatsAuth::None),
        }
    }
}

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

/// Failure to set up a NATS connection.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The credentials file cannot be read.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// The client could not be set up (a malformed URL).
    #[error("cannot connect to NATS")]
    Connect(#[source] async_nats::ConnectError),
}

impl ConnectError {
    /// Short category for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Credentials(_) => "nats_credentials",
            Self::Connect(_) => "nats_connect",
        }
    }
}

/// The servers of a comma-separated URL list (`nats://a:4222,nats://b:4222`).
pub fn server_urls(urls: &str) -> Vec<&str> {
    urls.split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .collect()
}

/// Connects to the comma-separated `urls` as `name`. The client keeps reconnecting by itself
/// for ever, also when no server is up yet at start, and logs connection changes.
pub async fn connect(urls: &str, auth: &NatsAuth, name: String) -> Result<Client, ConnectError> {
    let options = auth
        .apply(ConnectOptions::new())
        .await?
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("connected to NATS"),
                async_nats::Event::Disconnected => tracing::warn!("disconnected from NATS"),
                other => tracing::info!(event = %other, "NATS event"),
            }
        });
    options
        .connect(server_urls(urls))
        .await
        .map_err(ConnectError::Connect)
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

    #[test]
    fn comma_separated_urls_are_several_servers() {
        assert_eq!(
            server_urls("nats://a:4222, nats://b:4222,,nats://c:4222"),
            ["nats://a:4222", "nats://b:4222", "nats://c:4222"]
        );
        assert_eq!(server_urls("nats://a:4222"), ["nats://a:4222"]);
    }

    #[test]
    fn flags_give_the_credentials() {
        let args = |creds: Option<&str>, user: Option<&str>, password: Option<&str>| NatsArgs {
            nats_url: "nats://127.0.0.1:4222".into(),
            nats_creds: creds.map(PathBuf::from),
            nats_user: user.map(str::to_owned),
            nats_password: password.map(str::to_owned),
        };
        assert!(matches!(args(None, None, None).auth(), Ok(NatsAuth::None)));
        assert!(matches!(
            args(Some("/x.creds"), Some("u"), None).auth(),
            Ok(NatsAuth::CredsFile(path)) if path == std::path::Path::new("/x.creds")
        ));
        assert!(matches!(
            args(None, Some("u"), Some("p")).auth(),
            Ok(NatsAuth::UserPassword { user, .. }) if user == "u"
        ));
        assert!(matches!(
            args(None, Some("u"), None).auth(),
            Err(NatsArgsError::UserWithoutPassword)
        ));
        let printed = format!("{:?}", args(None, Some("u"), Some("s3cret")));
        assert!(!printed.contains("s3cret"), "{printed}");
    }

    #[tokio::test]
    async fn unreadable_creds_file_names_the_file() {
        let auth = NatsAuth::CredsFile("/nonexistent/x.creds".into());
        let err = auth.apply(ConnectOptions::new()).await.err().unwrap();
        assert!(err.to_string().contains("/nonexistent/x.creds"));
    }
}
