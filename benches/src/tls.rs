//! `wss` for the scenarios: `--tls` makes a test CA and a server certificate with rcgen (or takes
//! `--ca`, `--cert`, `--key`), starts Herald with a `wss` listener on it, and has the clients
//! (rustls, aws-lc-rs) trust only that CA and send `--server-name` as SNI.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::{Deserialize, Serialize};
use tokio_rustls::TlsConnector;

/// TLS options shared by the Herald scenarios.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsOpts {
    /// Clients connect with `wss` to a Herald `wss` listener (a test CA and certificate are made
    /// for the run unless `--ca`, `--cert` and `--key` are given).
    #[arg(long)]
    pub tls: bool,
    /// PEM file of the CA the clients trust (with `--cert` and `--key` for the server).
    #[arg(long, requires_all = ["cert", "key"])]
    pub ca: Option<PathBuf>,
    /// PEM certificate chain Herald serves (with `--ca`).
    #[arg(long, requires = "ca")]
    pub cert: Option<PathBuf>,
    /// PEM private key of `--cert`.
    #[arg(long, requires = "ca")]
    pub key: Option<PathBuf>,
    /// The name clients send as SNI and check the certificate against.
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
}

/// What a `wss` run needs: the edge's listener settings and the clients' TLS plan.
pub struct TlsSetup {
    /// `[[edge.listeners]]` with TLS, to append to Herald's `[edge]` settings.
    pub edge_toml: String,
    /// The clients' side.
    pub client: TlsPlan,
    _dir: Option<tempfile::TempDir>,
}

impl TlsOpts {
    /// The setup for a `wss` run, or `None` without `--tls`.
    pub fn setup(&self) -> anyhow::Result<Option<TlsSetup>> {
        if !self.tls {
            return Ok(None);
        }
        self.setup_always().map(Some)
    }

    /// The setup for a `wss` run, whether `--tls` was given or not.
    pub fn setup_always(&self) -> anyhow::Result<TlsSetup> {
        let (ca, cert, key, dir) = match (&self.ca, &self.cert, &self.key) {
            (Some(ca), Some(cert), Some(key)) => (ca.clone(), cert.clone(), key.clone(), None),
            (None, None, None) => {
                let dir = tempfile::tempdir()?;
                let (ca, cert, key) = test_pki(dir.path(), &self.server_name)?;
                (ca, cert, key, Some(dir))
            }
            _ => bail!("--ca, --cert and --key go together"),
        };
        let edge_toml = format!(
            "[[edge.listeners]]\naddr = \"127.0.0.1:0\"\n[edge.listeners.tls]\ncert_file = {:?}\nkey_file = {:?}\n",
            cert.to_str().context("certificate path")?,
            key.to_str().context("key path")?
        );
        Ok(TlsSetup {
            edge_toml,
            client: TlsPlan {
                ca: Some(ca),
                server_name: self.server_name.clone(),
            },
            _dir: dir,
        })
    }
}

/// Writes a test CA, and a server certificate for `name` and 127.0.0.1 signed by it, into `dir`
/// (ECDSA P-256): `(ca.pem, server.pem, server.key)`.
pub fn test_pki(dir: &std::path::Path, name: &str) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    let mut ca = CertificateParams::default();
    ca.distinguished_name = dn("herald-bench test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let issuer = CertifiedIssuer::self_signed(ca, ca_key)?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut p = CertificateParams::new(vec![name.to_string(), "127.0.0.1".to_string()])?;
    p.distinguished_name = dn(name);
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = p.signed_by(&key, &issuer)?;
    let paths = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    std::fs::write(&paths.0, issuer.pem())?;
    std::fs::write(&paths.1, cert.pem())?;
    std::fs::write(&paths.2, key.serialize_pem())?;
    Ok(paths)
}

fn dn(cn: &str) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    d.push(DnType::CommonName, cn);
    d
}

/// Options of `pki`.
#[derive(Debug, clap::Args)]
pub struct PkiOpts {
    /// Directory to write into (created if missing).
    #[arg(long)]
    dir: PathBuf,
    /// The server's DNS name (127.0.0.1 is named too).
    #[arg(long, default_value = "localhost")]
    name: String,
}

/// The `pki` subcommand.
pub fn pki(o: PkiOpts) -> anyhow::Result<()> {
    std::fs::create_dir_all(&o.dir)?;
    let (ca, cert, key) = test_pki(&o.dir, &o.name)?;
    println!(
        "ca={} cert={} key={}",
        ca.display(),
        cert.display(),
        key.display()
    );
    Ok(())
}

/// TLS settings of a `wss` client.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TlsPlan {
    /// A PEM file of CA certificates to trust (default: none, so `ca` is needed for a test CA).
    pub ca: Option<PathBuf>,
    /// The name sent as SNI and checked against the certificate.
    pub server_name: String,
}

/// A rustls client (aws-lc-rs) trusting the CAs in `t.ca`, sending `t.server_name` as SNI.
pub fn tls_connector(t: &TlsPlan) -> anyhow::Result<(TlsConnector, ServerName<'static>)> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = &t.ca {
        for cert in CertificateDer::pem_file_iter(ca)
            .with_context(|| format!("read CA file {}", ca.display()))?
        {
            roots
                .add(cert.with_context(|| format!("CA file {}", ca.display()))?)
                .context("CA certificate")?;
        }
        if roots.is_empty() {
            bail!("{}: no certificate in it", ca.display());
        }
    } else {
        bail!("wss needs --ca FILE: the harness trusts only the CAs it is given");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(t.server_name.clone())
        .with_context(|| format!("server name {:?}", t.server_name))?;
    Ok((TlsConnector::from(Arc::new(config)), name))
}
