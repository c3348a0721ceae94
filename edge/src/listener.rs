//! The edge's listeners: each with its own address, TLS, PROXY protocol and trusted proxies
//! (`[[edge.listeners]]`), the client address a connection is known by, and the stream (plain
//! TCP or TLS) a connection reads and writes.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// One listener (`[[edge.listeners]]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Address to listen on, e.g. `"0.0.0.0:443"`. Required.
    pub addr: SocketAddr,
    /// TLS (`wss`) on this listener; absent: plain `ws`. Default absent.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// PROXY protocol expected before anything else on a connection: `"off"`, `"v1"`, `"v2"` or
    /// `"any"` (v1 or v2). Default `"off"`.
    #[serde(default)]
    pub proxy_protocol: ProxyProtocol,
    /// Source ranges (CIDR) allowed to send a PROXY header; connections from elsewhere are closed.
    /// Required when `proxy_protocol` is not `"off"`. Default empty.
    #[serde(default)]
    pub proxy_protocol_from: Vec<IpNet>,
    /// Proxies (CIDR) whose `X-Forwarded-For` / `X-Real-IP` headers are believed: the client is
    /// the rightmost forwarded address not in this set. Default empty (headers ignored).
    #[serde(default)]
    pub forwarded_from: Vec<IpNet>,
}

impl ListenerConfig {
    /// A plain `ws` listener on `addr` with default settings.
    pub fn plain(addr: SocketAddr) -> Self {
        Self {
            addr,
            tls: None,
            proxy_protocol: ProxyProtocol::Off,
            proxy_protocol_from: Vec::new(),
            forwarded_from: Vec::new(),
        }
    }

    /// Every problem with this listener's settings, each naming its field under `at`.
    pub fn validate(&self, at: &str) -> Vec<String> {
        let mut p = Vec::new();
        if self.proxy_protocol != ProxyProtocol::Off && self.proxy_protocol_from.is_empty() {
            p.push(format!(
                "{at}.proxy_protocol_from: required when proxy_protocol is on (the load \
                 balancers' source ranges)"
            ));
        }
        if let Some(tls) = &self.tls {
            p.extend(tls.validate(&format!("{at}.tls")));
        }
        p
    }

    /// Whether the client's address comes from a proxy (a PROXY header or forwarded headers),
    /// so it is known only after the accept.
    pub fn client_behind_proxy(&self) -> bool {
        self.proxy_protocol != ProxyProtocol::Off || !self.forwarded_from.is_empty()
    }

    /// Whether `ip` may send this listener a PROXY header.
    pub fn proxy_trusted(&self, ip: IpAddr) -> bool {
        contains(&self.proxy_protocol_from, ip)
    }
}

/// Whether any range in `nets` holds `ip` (an IPv4-mapped IPv6 address counts as IPv4).
pub fn contains(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    nets.iter().any(|n| n.contains(&ip))
}

/// Which PROXY protocol versions a listener expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    /// No PROXY header: the TCP peer is the client.
    #[default]
    Off,
    /// The text header (`PROXY TCP4 ...\r\n`).
    V1,
    /// The binary header.
    V2,
    /// Either.
    Any,
}

/// TLS settings of a listener (`[edge.listeners.tls]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the certificate chain, leaf first (ECDSA or RSA). Required.
    pub cert_file: PathBuf,
    /// PEM file with the private key (PKCS#8, SEC1 or PKCS#1). Required.
    pub key_file: PathBuf,
    /// Client certificates: `"off"`, `"optional"` or `"required"`. Default `"off"`.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// PEM file with the CAs that sign client certificates (a root and its intermediate, or the
    /// intermediate alone). Required unless `client_auth` is `"off"`.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// How often the certificate, key and client CA files are checked for changes, in ms;
    /// 0 disables watching (SIGHUP still reloads). Default 1,000.
    #[serde(default = "default_watch_ms")]
    pub watch_interval_ms: u64,
    /// Most TLS 1.2 sessions kept for resumption by session id. Default 4,096.
    #[serde(default = "default_session_cache")]
    pub session_cache_entries: usize,
}

fn default_watch_ms() -> u64 {
    1000
}

fn default_session_cache() -> usize {
    4096
}

impl TlsConfig {
    fn validate(&self, at: &str) -> Vec<String> {
        let mut p = Vec::new();
        if self.client_auth != ClientAuth::Off && self.client_ca_file.is_none() {
            p.push(format!(
                "{at}.client_ca_file: required when client_auth is {:?}",
                self.client_auth
            ));
        }
        p
    }
}

/// Whether a TLS listener asks for client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No client certificates.
    #[default]
    Off,
    /// Asked for; a client without one still connects (a presented certificate must verify).
    Optional,
    /// The handshake fails without a certificate that verifies.
    Required,
}

/// Where a connection's client address came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrSource {
    /// The TCP peer itself.
    Peer,
    /// A PROXY protocol header from a trusted load balancer.
    ProxyProtocol,
    /// `X-Forwarded-For` or `X-Real-IP` from a trusted proxy.
    Forwarded,
}

/// The address a connection is known by: limits, logs and listings use [`ClientAddr::client`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr {
    /// The TCP peer of the socket (a load balancer or proxy when one is in front).
    pub peer: SocketAddr,
    /// The client: from a trusted PROXY header, then a trusted forwarded header, else the peer.
    /// The port is 0 when a forwarded header gave only an address.
    pub client: SocketAddr,
    /// Where `client` came from.
    pub source: AddrSource,
}

impl ClientAddr {
    /// A client connected directly.
    pub fn direct(peer: SocketAddr) -> Self {
        Self {
            peer,
            client: peer,
            source: AddrSource::Peer,
        }
    }

    /// The client's IP address (IPv4-mapped IPv6 addresses as IPv4).
    pub fn ip(&self) -> IpAddr {
        self.client.ip().to_canonical()
    }
}

/// A connection's byte stream: plain TCP, or TLS over TCP (boxed: a rustls connection is large
/// and only `wss` connections pay for it).
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<crate::tls_stream::TlsStream>),
}

impl Stream {
    /// Ready once a read may give something (bytes, the end, an error); a read may still find
    /// nothing, and registers the waker as usual.
    pub(crate) fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Plain(s) => s.poll_read_ready(cx),
            Stream::Tls(s) => s.poll_read_ready(cx),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_addresses_match_ipv4_ranges() {
        let nets: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        assert!(contains(&nets, "::ffff:10.1.2.3".parse().expect("ip")));
        assert!(!contains(&nets, "11.0.0.1".parse().expect("ip")));
    }

    #[test]
    fn proxy_protocol_needs_sources() {
        let mut l = ListenerConfig::plain("127.0.0.1:0".parse().expect("addr"));
        l.proxy_protocol = ProxyProtocol::Any;
        assert_eq!(l.validate("edge.listeners[0]").len(), 1);
        l.proxy_protocol_from = vec!["10.0.0.0/8".parse().expect("net")];
        assert!(l.validate("edge.listeners[0]").is_empty());
    }
}
