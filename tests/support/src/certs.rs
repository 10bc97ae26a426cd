//! Certificates of a local control plane: a CA, the apiserver's serving certificate (for
//! 127.0.0.1 and localhost, plus the addresses pods reach it by when the cluster has real nodes),
//! an admin client certificate in group `system:masters`, and the service-account signing key;
//! more client and serving certificates (kubelets, kube-proxy) are issued by the same CA.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

/// Failure to make or write certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot generate a certificate")]
    Generate(#[from] rcgen::Error),
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// PEM files of a control plane, written to a directory.
#[derive(Debug, Clone)]
pub struct ControlPlaneCerts {
    ca: Arc<CertifiedIssuer<'static, KeyPair>>,
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
    pub service_account_key: PathBuf,
    pub service_account_public_key: PathBuf,
    pub ca_pem: String,
    pub admin_cert_pem: String,
    pub admin_key_pem: String,
}

impl ControlPlaneCerts {
    /// Generates everything into `dir`; the apiserver serves 127.0.0.1 and 10.0.0.1.
    pub fn generate(dir: &Path) -> Result<Self, CertError> {
        Self::generate_for(dir, &[Ipv4Addr::new(10, 0, 0, 1)])
    }

    /// Generates everything into `dir`; the apiserver's certificate also names `api_ips` (its
    /// non-loopback address and the `kubernetes` Service IP when pods must reach it).
    pub fn generate_for(dir: &Path, api_ips: &[Ipv4Addr]) -> Result<Self, CertError> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.distinguished_name = name("nats-cdr local control plane CA", None);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

        let server_key = KeyPair::generate()?;
        let mut server_params = CertificateParams::new(vec![
            "localhost".to_owned(),
            "kubernetes".to_owned(),
            "kubernetes.default".to_owned(),
            "kubernetes.default.svc".to_owned(),
        ])?;
        server_params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        for ip in api_ips {
            server_params
                .subject_alt_names
                .push(SanType::IpAddress((*ip).into()));
        }
        server_params.distinguished_name = name("kube-apiserver", None);
        server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = server_params.signed_by(&server_key, &ca)?;

        let admin_key = KeyPair::generate()?;
        let mut admin_params = CertificateParams::new(Vec::<String>::new())?;
        admin_params.distinguished_name = name("nats-cdr-admin", Some("system:masters"));
        admin_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let admin_cert = admin_params.signed_by(&admin_key, &ca)?;

        let service_account_key = KeyPair::generate()?;

        let write = |file: &str, text: &str| -> Result<PathBuf, CertError> {
            let path = dir.join(file);
            std::fs::write(&path, text).map_err(|source| CertError::Write {
                path: path.clone(),
                source,
            })?;
            Ok(path)
        };
        Ok(Self {
            ca_cert: write("ca.crt", &ca.pem())?,
            ca_key: write("ca.key", &ca.key().serialize_pem())?,
            server_cert: write("apiserver.crt", &server_cert.pem())?,
            server_key: write("apiserver.key", &server_key.serialize_pem())?,
            admin_cert: write("admin.crt", &admin_cert.pem())?,
            admin_key: write("admin.key", &admin_key.serialize_pem())?,
            service_account_key: write("sa.key", &service_account_key.serialize_pem())?,
            service_account_public_key: write("sa.pub", &service_account_key.public_key_pem())?,
            ca_pem: ca.pem(),
            admin_cert_pem: admin_cert.pem(),
            admin_key_pem: admin_key.serialize_pem(),
            ca: Arc::new(ca),
        })
    }

    /// A client certificate for `common_name` in group `organization`, written to
    /// `<dir>/<stem>.crt` and `.key`.
    pub fn issue_client(
        &self,
        dir: &Path,
        stem: &str,
        common_name: &str,
        organization: Option<&str>,
    ) -> Result<IssuedCert, CertError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = name(common_name, organization);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.ca)?;
        IssuedCert::write(dir, stem, &cert.pem(), &key.serialize_pem())
    }

    /// A serving certificate for `common_name` valid for `ips` and `dns_names`.
    pub fn issue_serving(
        &self,
        dir: &Path,
        stem: &str,
        common_name: &str,
        ips: &[Ipv4Addr],
        dns_names: &[String],
    ) -> Result<IssuedCert, CertError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(dns_names.to_vec())?;
        for ip in ips {
            params
                .subject_alt_names
                .push(SanType::IpAddress((*ip).into()));
        }
        params.distinguished_name = name(common_name, None);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.ca)?;
        IssuedCert::write(dir, stem, &cert.pem(), &key.serialize_pem())
    }
}

/// A certificate and its key, as files and as PEM text.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub cert_pem: String,
    pub key_pem: String,
}

impl IssuedCert {
    fn write(dir: &Path, stem: &str, cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let write = |path: PathBuf, text: &str| -> Result<PathBuf, CertError> {
            std::fs::write(&path, text).map_err(|source| CertError::Write {
                path: path.clone(),
                source,
            })?;
            Ok(path)
        };
        Ok(Self {
            cert: write(dir.join(format!("{stem}.crt")), cert_pem)?,
            key: write(dir.join(format!("{stem}.key")), key_pem)?,
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
        })
    }
}

fn name(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    if let Some(org) = organization {
        dn.push(DnType::OrganizationName, org);
    }
    dn
}
