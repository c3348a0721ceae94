//! Behind load balancers and proxies: PROXY protocol v1 and v2 (plain and under TLS), garbage
//! instead of a header, a header from an untrusted source, and `X-Forwarded-For` / `X-Real-IP`
//! believed only from trusted proxies. The address found is the one listings and limits use.

use std::net::SocketAddr;

use herald_core::proto::v1::{ListConnectionsRequest, list_connections_request};
use herald_tests::tls::*;
use herald_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

fn listener(entries: &[(&str, toml::Value)]) -> toml::Table {
    let mut l = toml::Table::new();
    l.insert("addr".into(), "127.0.0.1:0".into());
    for (k, v) in entries {
        l.insert((*k).into(), v.clone());
    }
    l
}

fn nets(n: &[&str]) -> toml::Value {
    toml::Value::Array(n.iter().map(|s| toml::Value::from(*s)).collect())
}

/// A v2 PROXY header for a TCP connection from `src` to `dst`.
fn v2_header(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x21); // version 2, PROXY
    let mut addrs = Vec::new();
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            h.push(0x11); // TCP over IPv4
            addrs.extend_from_slice(&s.ip().octets());
            addrs.extend_from_slice(&d.ip().octets());
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            h.push(0x21); // TCP over IPv6
            addrs.extend_from_slice(&s.ip().octets());
            addrs.extend_from_slice(&d.ip().octets());
        }
        _ => panic!("one family"),
    }
    addrs.extend_from_slice(&src.port().to_be_bytes());
    addrs.extend_from_slice(&dst.port().to_be_bytes());
    // A TLV the edge must skip (PP2_TYPE_NOOP).
    addrs.extend_from_slice(&[0x04, 0x00, 0x02, 0xAB, 0xCD]);
    h.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
    h.extend_from_slice(&addrs);
    h
}

/// Opens a WebSocket on `addr` after writing `prefix` (a PROXY header) on the socket.
async fn ws_after(addr: SocketAddr, prefix: &[u8], user: &str, headers: &[(&str, &str)]) -> Client {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(prefix).await.expect("write header");
    let url = format!("ws://{addr}/ws/alpha?token={}", token("alpha", user));
    let mut req = url.into_client_request().expect("request");
    for (k, v) in headers {
        req.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            v.parse().expect("value"),
        );
    }
    let (ws, _) = tokio_tungstenite::client_async(req, tcp)
        .await
        .expect("upgrade");
    let mut c = Client { ws };
    assert_eq!(c.next_json().await["type"], "welcome");
    c
}

/// The remote address ListConnections reports for `user`.
async fn listed_remote(herald: &Herald, user: &str) -> String {
    let mut admin = herald.grpc(Some(ADMIN_KEY)).await;
    let list = admin
        .list_connections(ListConnectionsRequest {
            project: "alpha".into(),
            of: Some(list_connections_request::Of::User(user.into())),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(list.connections.len(), 1, "{list:?}");
    list.connections[0].remote_addr.clone()
}

/// Writes `bytes` and expects the edge to close without answering.
async fn closed_without_answer(addr: SocketAddr, bytes: &[u8]) {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(bytes).await.expect("write");
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(WAIT, tcp.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(
        matches!(r, Ok(0) | Err(_)),
        "expected a close, got {:?}",
        r.map(|n| String::from_utf8_lossy(&buf[..n]).to_string())
    );
}

fn metric(text: &str, name: &str, label: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test]
async fn proxy_protocol_v1_v2_garbage_and_untrusted_sources() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::root("test root");
    let (crt, key) = ca
        .server(&["localhost"], &rcgen::PKCS_ECDSA_P256_SHA256)
        .write(dir.path(), "srv", &[]);
    let mut tls = toml::Table::new();
    tls.insert("cert_file".into(), crt.display().to_string().into());
    tls.insert("key_file".into(), key.display().to_string().into());
    let mut limits = toml::Table::new();
    limits.insert("deny_ips".into(), nets(&["192.0.2.0/24"]));
    let herald = herald()
        .edge("limits", limits)
        .listener(listener(&[
            ("proxy_protocol", "any".into()),
            ("proxy_protocol_from", nets(&["127.0.0.0/8", "::1/128"])),
        ]))
        .listener(listener(&[
            ("proxy_protocol", "v2".into()),
            ("proxy_protocol_from", nets(&["127.0.0.1/32"])),
            ("tls", tls.into()),
        ]))
        .listener(listener(&[
            ("proxy_protocol", "v1".into()),
            ("proxy_protocol_from", nets(&["10.0.0.0/8"])),
        ]))
        .start()
        .await;
    let [any, wss_v2, untrusted] = herald.listeners[..] else {
        panic!("three listeners");
    };
    let dst: SocketAddr = "10.0.0.1:443".parse().expect("addr");

    // v1 and v2 (IPv6, with a TLV): the header's source is the client everywhere.
    let _v1 = ws_after(
        any,
        b"PROXY TCP4 203.0.113.9 10.0.0.1 5555 443\r\n",
        "v1",
        &[],
    )
    .await;
    assert_eq!(listed_remote(&herald, "v1").await, "203.0.113.9:5555");
    let src6: SocketAddr = "[2001:db8::7]:4444".parse().expect("addr");
    let dst6: SocketAddr = "[2001:db8::1]:443".parse().expect("addr");
    let _v2 = ws_after(any, &v2_header(src6, dst6), "v2", &[]).await;
    assert_eq!(listed_remote(&herald, "v2").await, "[2001:db8::7]:4444");

    // v2 before the TLS handshake (an L4 balancer passing TLS through).
    let mut tcp = TcpStream::connect(wss_v2).await.expect("connect");
    tcp.write_all(&v2_header("198.51.100.20:6000".parse().expect("addr"), dst))
        .await
        .expect("header");
    let cfg = client_config(ClientOpts {
        roots: &[&ca],
        versions: &[],
        identity: None,
        alpn: &["http/1.1"],
    });
    let tls_stream = tokio_rustls::TlsConnector::from(cfg)
        .connect("localhost".try_into().expect("name"), tcp)
        .await
        .expect("tls after the header");
    let url = format!("wss://localhost/ws/alpha?token={}", token("alpha", "lb"));
    let (ws, _) = tokio_tungstenite::client_async(url, tls_stream)
        .await
        .expect("upgrade");
    let mut over_tls = Client { ws };
    assert_eq!(over_tls.next_json().await["type"], "welcome");
    assert_eq!(listed_remote(&herald, "lb").await, "198.51.100.20:6000");

    // The limits see the header's address: a denied client behind the balancer is refused.
    let mut tcp = TcpStream::connect(any).await.expect("connect");
    tcp.write_all(b"PROXY TCP4 192.0.2.5 10.0.0.1 1234 443\r\n")
        .await
        .expect("header");
    let url = format!("ws://{any}/ws/alpha?token={}", token("alpha", "denied"));
    let err = tokio_tungstenite::client_async(url, tcp)
        .await
        .expect_err("denied address");
    assert!(err.to_string().contains("403"), "{err}");

    // Garbage instead of a header, a v1 header on a v2 listener, a header from an untrusted
    // source: closed without an answer, and counted.
    closed_without_answer(any, b"GET /ws/alpha HTTP/1.1\r\nHost: x\r\n\r\n").await;
    closed_without_answer(any, b"PROXY TCP4 not-an-address 10.0.0.1 1 2\r\n").await;
    closed_without_answer(wss_v2, b"PROXY TCP4 203.0.113.9 10.0.0.1 5555 443\r\n").await;
    closed_without_answer(untrusted, b"PROXY TCP4 203.0.113.9 10.0.0.1 5555 443\r\n").await;
    let name = "herald_edge_proxy_protocol_refused_total";
    eventually(WAIT, async || {
        let (_, m) = herald.admin_get("/metrics").await;
        let counts = (
            metric(&m, name, "reason=\"invalid\""),
            metric(&m, name, "reason=\"untrusted\""),
        );
        if counts == (3, 1) {
            Ok(())
        } else {
            Err(format!(
                "(invalid, untrusted) = {counts:?}, want (3, 1):\n{m}"
            ))
        }
    })
    .await;

    // Clients behind the balancer are unaffected by the refusals.
    over_tls
        .send_json(serde_json::json!({"type":"ping","id":7}))
        .await;
    assert_eq!(over_tls.next_json().await["type"], "pong");
}

#[tokio::test]
async fn forwarded_headers_only_from_trusted_proxies() {
    let mut limits = toml::Table::new();
    limits.insert("deny_ips".into(), nets(&["192.0.2.0/24"]));
    let herald = herald()
        .edge("limits", limits)
        .listener(listener(&[(
            "forwarded_from",
            nets(&["127.0.0.1/32", "10.0.0.0/8"]),
        )]))
        .listener(listener(&[("forwarded_from", nets(&["10.0.0.0/8"]))]))
        .start()
        .await;
    let [trusting, untrusting] = herald.listeners[..] else {
        panic!("two listeners");
    };
    // The rightmost address not in the trusted set is the client; the leftmost (written by the
    // client) is ignored.
    let _a = ws_after(
        trusting,
        b"",
        "xff",
        &[("x-forwarded-for", "6.6.6.6, 198.51.100.4, 10.1.1.1")],
    )
    .await;
    assert_eq!(listed_remote(&herald, "xff").await, "198.51.100.4:0");
    let _b = ws_after(trusting, b"", "real", &[("x-real-ip", "198.51.100.5")]).await;
    assert_eq!(listed_remote(&herald, "real").await, "198.51.100.5:0");

    // From an untrusted peer the headers are spoofing and change nothing.
    let _c = ws_after(
        untrusting,
        b"",
        "spoof",
        &[
            ("x-forwarded-for", "198.51.100.6"),
            ("x-real-ip", "198.51.100.6"),
        ],
    )
    .await;
    let remote = listed_remote(&herald, "spoof").await;
    assert!(remote.starts_with("127.0.0.1:"), "{remote}");
    // ... not even to get a client refused: the address list sees the peer,
    let _d = ws_after(
        untrusting,
        b"",
        "evade",
        &[("x-forwarded-for", "192.0.2.9")],
    )
    .await;
    assert!(
        listed_remote(&herald, "evade")
            .await
            .starts_with("127.0.0.1:")
    );
    // while a denied client behind a trusted proxy is refused by its forwarded address.
    let url = format!(
        "ws://{trusting}/ws/alpha?token={}",
        token("alpha", "denied")
    );
    let mut req = url.into_client_request().expect("request");
    req.headers_mut()
        .insert("x-forwarded-for", "192.0.2.9".parse().expect("value"));
    let tcp = TcpStream::connect(trusting).await.expect("connect");
    let err = tokio_tungstenite::client_async(req, tcp)
        .await
        .expect_err("denied by its forwarded address");
    assert!(err.to_string().contains("403"), "{err}");
}
