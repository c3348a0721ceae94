//! TLS for the sandbox: a test PKI made with rcgen at test time (root, intermediate, server and
//! client certificates, ECDSA and RSA), rustls client configurations, and `wss` clients.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SignatureAlgorithm,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::{self, handshake::client::Response};

use crate::Client;

/// A `wss` client.
pub type TlsClient = Client<TlsStream<TcpStream>>;

/// The crypto provider the tests use (aws-lc-rs, as the server).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A certificate authority that issues certificates.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    /// A self-signed root CA.
    pub fn root(name: &str) -> Self {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("ca key");
        Self {
            issuer: CertifiedIssuer::self_signed(ca_params(name), key).expect("root ca"),
        }
    }

    /// An intermediate CA signed by this one.
    pub fn intermediate(&self, name: &str) -> Self {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("ca key");
        Self {
            issuer: CertifiedIssuer::signed_by(ca_params(name), key, &self.issuer)
                .expect("intermediate ca"),
        }
    }

    /// This CA's certificate in PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// This CA's certificate in DER.
    pub fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn server(&self, names: &[&str], alg: &'static SignatureAlgorithm) -> Leaf {
        let key = KeyPair::generate_for(alg).expect("server key");
        let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("params");
        p.distinguished_name = dn(names.first().copied().unwrap_or("server"));
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = p.signed_by(&key, &self.issuer).expect("server cert");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A client certificate with subject CN `cn`; `expired` puts its validity in the past.
    pub fn client(&self, cn: &str, expired: bool) -> Leaf {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("client key");
        let mut p = CertificateParams::default();
        p.distinguished_name = dn(cn);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = p.signed_by(&key, &self.issuer).expect("client cert");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

fn dn(cn: &str) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    d.push(DnType::CommonName, cn);
    d
}

fn ca_params(name: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

/// A leaf certificate and its key, in PEM.
#[derive(Clone)]
pub struct Leaf {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: String,
}

impl Leaf {
    /// The certificate in DER.
    pub fn der(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).expect("cert pem")
    }

    /// Writes `<name>.crt` (this certificate, then `chain`) and `<name>.key` into `dir`.
    pub fn write(&self, dir: &Path, name: &str, chain: &[&Ca]) -> (PathBuf, PathBuf) {
        let mut pem = self.cert_pem.clone();
        for c in chain {
            pem.push_str(&c.pem());
        }
        let crt = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&crt, pem).expect("write cert");
        std::fs::write(&key, &self.key_pem).expect("write key");
        (crt, key)
    }

    /// The certificate chain (this, then `chain`) and key, for a rustls client.
    pub fn identity(
        &self,
        chain: &[&Ca],
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let mut certs = vec![self.der()];
        certs.extend(chain.iter().map(|c| c.der()));
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("key pem");
        (certs, key)
    }
}

/// Options of a test TLS client.
pub struct ClientOpts<'a> {
    /// CAs the client trusts.
    pub roots: &'a [&'a Ca],
    /// Only these versions (TLS 1.3 and 1.2 when empty).
    pub versions: &'a [&'static rustls::SupportedProtocolVersion],
    /// A client certificate to present: leaf, then the CAs sent with it.
    pub identity: Option<(&'a Leaf, &'a [&'a Ca])>,
    /// ALPN protocols to offer.
    pub alpn: &'a [&'a str],
}

/// A rustls client configuration; resumption is on (in memory), so reuse it to resume.
pub fn client_config(o: ClientOpts<'_>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in o.roots {
        roots.add(c.der()).expect("root");
    }
    let versions: &[&'static rustls::SupportedProtocolVersion] = if o.versions.is_empty() {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        o.versions
    };
    let b = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots);
    let mut c = match o.identity {
        Some((leaf, chain)) => {
            let (certs, key) = leaf.identity(chain);
            b.with_client_auth_cert(certs, key).expect("client cert")
        }
        None => b.with_no_client_auth(),
    };
    c.alpn_protocols = o.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(c)
}

/// A TLS connection to `addr` presenting `server_name` (SNI and verification).
pub async fn tls_connect(
    config: &Arc<ClientConfig>,
    addr: SocketAddr,
    server_name: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await
}

/// Opens a `wss` WebSocket on `addr` for `url` (whose host is the SNI name) with extra headers.
pub async fn open_wss(
    config: &Arc<ClientConfig>,
    addr: SocketAddr,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<(TlsClient, Response), tungstenite::Error> {
    let mut req = url.into_client_request()?;
    for (k, v) in headers {
        req.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
            v.parse().expect("header value"),
        );
    }
    let host = req.uri().host().unwrap_or("localhost").to_string();
    let tls = tls_connect(config, addr, &host)
        .await
        .map_err(tungstenite::Error::Io)?;
    let (ws, resp) = tokio_tungstenite::client_async(req, tls).await?;
    Ok((Client { ws }, resp))
}

/// Opens a `wss` WebSocket and waits for the welcome frame; returns the client and the welcome.
pub async fn connect_wss(
    config: &Arc<ClientConfig>,
    addr: SocketAddr,
    url: &str,
) -> (TlsClient, serde_json::Value) {
    let (mut c, _) = open_wss(config, addr, url, &[]).await.expect("wss upgrade");
    let welcome = c.next_json().await;
    assert_eq!(welcome["type"], "welcome", "first frame: {welcome}");
    (c, welcome)
}
