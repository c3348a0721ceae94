//! The client address behind a proxy: the PROXY protocol header (v1 text, v2 binary) a trusted
//! load balancer sends first, and the `X-Forwarded-For` / `X-Real-IP` headers of a trusted HTTP
//! proxy.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::listener::{ProxyProtocol, contains};

/// The v2 header's fixed start.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 header, CRLF included.
const V1_MAX: usize = 107;
/// The longest v2 header accepted (fixed part and addresses with TLVs).
const V2_MAX: usize = 16 + 1024;

/// Why a PROXY header was refused; the connection is closed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The socket failed or closed before a whole header arrived.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Not a PROXY header, or one of a version the listener does not accept.
    #[error("not a valid PROXY header: {0}")]
    Invalid(String),
}

impl ProxyError {
    /// The metric label of this refusal.
    pub fn label(&self) -> &'static str {
        match self {
            ProxyError::Io(_) => "io",
            ProxyError::Invalid(_) => "invalid",
        }
    }
}

/// Reads exactly one PROXY header from `tcp` (no byte after it), and returns the client address
/// it carries; `None` for a `LOCAL` / `UNKNOWN` header (a health check: the peer is the client).
pub async fn read_header(
    tcp: &mut TcpStream,
    accept: ProxyProtocol,
) -> Result<Option<SocketAddr>, ProxyError> {
    // Both versions are at least 16 bytes long; the first 16 tell which one this is.
    let mut buf = Vec::with_capacity(128);
    buf.resize(16, 0);
    tcp.read_exact(&mut buf).await?;
    if buf.starts_with(V2_SIGNATURE) {
        if accept == ProxyProtocol::V1 {
            return Err(ProxyError::Invalid("v2 header on a v1 listener".into()));
        }
        let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
        if 16 + len > V2_MAX {
            return Err(ProxyError::Invalid("v2 header too long".into()));
        }
        buf.resize(16 + len, 0);
        tcp.read_exact(&mut buf[16..]).await?;
        let h =
            ppp::v2::Header::try_from(&buf[..]).map_err(|e| ProxyError::Invalid(e.to_string()))?;
        if h.command == ppp::v2::Command::Local {
            return Ok(None);
        }
        return match h.addresses {
            ppp::v2::Addresses::IPv4(a) => {
                Ok(Some(SocketAddr::from((a.source_address, a.source_port))))
            }
            ppp::v2::Addresses::IPv6(a) => {
                Ok(Some(SocketAddr::from((a.source_address, a.source_port))))
            }
            ppp::v2::Addresses::Unspecified => Ok(None),
            ppp::v2::Addresses::Unix(_) => Err(ProxyError::Invalid(
                "unix addresses are not supported".into(),
            )),
        };
    }
    if !buf.starts_with(b"PROXY ") {
        return Err(ProxyError::Invalid("no PROXY signature".into()));
    }
    if accept == ProxyProtocol::V2 {
        return Err(ProxyError::Invalid("v1 header on a v2 listener".into()));
    }
    // Byte by byte, so nothing after the header is consumed (it belongs to TLS or HTTP).
    while !buf.ends_with(b"\r\n") {
        if buf.len() >= V1_MAX {
            return Err(ProxyError::Invalid("v1 header too long".into()));
        }
        buf.push(tcp.read_u8().await?);
    }
    let h = ppp::v1::Header::try_from(&buf[..]).map_err(|e| ProxyError::Invalid(e.to_string()))?;
    Ok(match h.addresses {
        ppp::v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v1::Addresses::Unknown => None,
    })
}

/// The client behind trusted proxies: `hop` is the address that sent the request (itself
/// trusted, or this is not called); `forwarded_for` the `X-Forwarded-For` values in order;
/// `real_ip` the `X-Real-IP` value, used only without `X-Forwarded-For`.
///
/// The client is the rightmost address of the chain that is not in `trusted` (everything left of
/// it is written by the client and proves nothing). When the chain holds something that is not
/// an address, the client is the last trusted hop before it.
pub fn forwarded_client(
    hop: IpAddr,
    forwarded_for: &[&str],
    real_ip: Option<&str>,
    trusted: &[IpNet],
) -> IpAddr {
    let entries: Vec<&str> = forwarded_for
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    if entries.is_empty() {
        return real_ip.and_then(parse_entry).unwrap_or(hop);
    }
    let mut client = hop;
    for e in entries.iter().rev() {
        match parse_entry(e) {
            Some(ip) => {
                client = ip;
                if !contains(trusted, ip) {
                    break;
                }
            }
            None => break,
        }
    }
    client
}

/// An address as a forwarded header writes it: `1.2.3.4`, `1.2.3.4:5678`, `::1`, `[::1]:80`.
fn parse_entry(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            s.strip_prefix('[')
                .and_then(|r| r.strip_suffix(']'))
                .and_then(|r| r.parse().ok())
        })
        .map(|ip: IpAddr| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|n| n.parse().expect("net")).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn rightmost_untrusted_is_the_client() {
        let trusted = nets(&["10.0.0.0/8", "127.0.0.1/32"]);
        let hop = ip("127.0.0.1");
        // The leftmost entry is whatever the client wrote.
        assert_eq!(
            forwarded_client(hop, &["6.6.6.6, 203.0.113.7, 10.1.1.1"], None, &trusted),
            ip("203.0.113.7")
        );
        assert_eq!(
            forwarded_client(hop, &["6.6.6.6", "203.0.113.7:4567"], None, &trusted),
            ip("203.0.113.7")
        );
        // Everything trusted: the leftmost.
        assert_eq!(
            forwarded_client(hop, &["10.2.2.2, 10.1.1.1"], None, &trusted),
            ip("10.2.2.2")
        );
        // Garbage stops the walk at the last trusted hop.
        assert_eq!(
            forwarded_client(hop, &["6.6.6.6, nonsense, 10.1.1.1"], None, &trusted),
            ip("10.1.1.1")
        );
        assert_eq!(
            forwarded_client(hop, &[], Some("[2001:db8::1]:80"), &trusted),
            ip("2001:db8::1")
        );
        assert_eq!(forwarded_client(hop, &[], Some("junk"), &trusted), hop);
    }
}
