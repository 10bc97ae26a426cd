//! Credentials of an external NatsCluster, read from the Secrets it names: `UserPassword`
//! (`username`, `password`), `Token` (`token`), `CredsFile` (`creds`), and `ca.crt` of
//! `tlsCaSecretName`. The resourceVersions of those Secrets are part of a connection's
//! fingerprint, so a rotated Secret leads to a new connection. Never logged (no `Debug`).

use std::collections::HashMap;

use async_nats::ConnectOptions;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use nats_cdr_crds::nats_cluster::{CredentialType, ExternalCluster};

use super::Error;

enum Auth {
    UserPassword(String, String),
    Token(String),
    Creds(String),
}

/// What the Secrets of one NatsCluster hold.
pub(super) struct Credentials {
    auth: Option<Auth>,
    ca: Option<String>,
    /// `<secret>@<resourceVersion>` of every Secret read.
    pub(super) versions: Vec<String>,
}

impl Credentials {
    /// Whether the cluster names any Secret (else reading costs nothing and is skipped).
    pub(super) fn needed(external: &ExternalCluster) -> bool {
        external.credentials.is_some() || external.tls_ca_secret_name.is_some()
    }

    /// Reads the Secrets `external` names in `namespace`.
    pub(super) async fn read(
        client: &kube::Client,
        namespace: &str,
        cluster: &str,
        external: &ExternalCluster,
    ) -> Result<Self, Error> {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let mut out = Self {
            auth: None,
            ca: None,
            versions: Vec::new(),
        };
        if let Some(credentials) = &external.credentials {
            let name = &credentials.secret_name;
            let data = out.read_one(&secrets, cluster, name).await?;
            let get = |k: &str| key(&data, cluster, name, k);
            out.auth = Some(match credentials.credential_type {
                CredentialType::UserPassword => {
                    Auth::UserPassword(get("username")?, get("password")?)
                }
                CredentialType::Token => Auth::Token(get("token")?),
                CredentialType::CredsFile => Auth::Creds(get("creds")?),
            });
        }
        if let Some(name) = &external.tls_ca_secret_name {
            let data = out.read_one(&secrets, cluster, name).await?;
            out.ca = Some(key(&data, cluster, name, "ca.crt")?);
        }
        Ok(out)
    }

    async fn read_one(
        &mut self,
        secrets: &Api<Secret>,
        cluster: &str,
        name: &str,
    ) -> Result<HashMap<String, String>, Error> {
        let secret = secrets
            .get_opt(name)
            .await
            .map_err(|source| Error::SecretRead {
                cluster: cluster.to_owned(),
                secret: name.to_owned(),
                source,
            })?
            .ok_or_else(|| invalid(cluster, name, "not found".into()))?;
        let version = secret.metadata.resource_version.clone().unwrap_or_default();
        self.versions.push(format!("{name}@{version}"));
        let mut out = HashMap::new();
        for (k, v) in secret.data.unwrap_or_default() {
            let text = String::from_utf8(v.0)
                .map_err(|_| invalid(cluster, name, format!("key {k:?} is not UTF-8")))?;
            out.insert(k, text);
        }
        out.extend(secret.string_data.unwrap_or_default());
        Ok(out)
    }

    /// `options` with the credentials and the CA (written to a file in the temp dir, named after
    /// the NatsCluster's uid).
    pub(super) async fn apply(
        self,
        mut options: ConnectOptions,
        cluster: &str,
        uid: &str,
    ) -> Result<ConnectOptions, Error> {
        options = match self.auth {
            None => options,
            Some(Auth::UserPassword(user, password)) => options.user_and_password(user, password),
            Some(Auth::Token(token)) => options.token(token),
            Some(Auth::Creds(creds)) => {
                options
                    .credentials(&creds)
                    .map_err(|e| Error::Credentials {
                        cluster: cluster.to_owned(),
                        secret: "credentials".into(),
                        message: format!("key \"creds\" is not a valid .creds file: {e}"),
                    })?
            }
        };
        if let Some(ca) = self.ca {
            let path = std::env::temp_dir().join(format!("nats-cdr-operator-ca-{uid}.crt"));
            tokio::fs::write(&path, ca)
                .await
                .map_err(|source| Error::CaFile {
                    cluster: cluster.to_owned(),
                    path: path.display().to_string(),
                    source,
                })?;
            options = options.add_root_certificates(path).require_tls(true);
        }
        Ok(options)
    }
}

fn invalid(cluster: &str, secret: &str, message: String) -> Error {
    Error::Credentials {
        cluster: cluster.to_owned(),
        secret: secret.to_owned(),
        message,
    }
}

fn key(
    data: &HashMap<String, String>,
    cluster: &str,
    secret: &str,
    k: &str,
) -> Result<String, Error> {
    data.get(k)
        .cloned()
        .ok_or_else(|| invalid(cluster, secret, format!("key {k:?} missing")))
}
