//! nginx in front (deploy/nginx/herald.conf, run for real on loopback with a certificate made
//! now): a WeChat-like client (wss, a domain name by SNI, no `Sec-WebSocket-Protocol`) through
//! nginx and directly, a full edge's 503 retried on the next edge, and the client address taken
//! from X-Forwarded-For with a spoofed leftmost entry ignored.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use herald_core::proto::v1::{ListConnectionsRequest, list_connections_request};
use herald_tests::nginx::*;
use herald_tests::tls::*;
use herald_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A stand-in for a full edge: answers every request 503 with Retry-After, counting them.
async fn full_edge() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(
                        b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\n\
                          content-length: 0\r\nconnection: close\r\n\r\n",
                    )
                    .await;
            });
        }
    });
    (addr, hits)
}

#[tokio::test]
async fn wechat_like_client_through_nginx_and_directly() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::root("test root");
    let (crt, key) =
        ca.server(&[DOMAIN], &rcgen::PKCS_ECDSA_P256_SHA256)
            .write(dir.path(), "site", &[]);

    // The edge: a plain listener for nginx (trusting its forwarded headers) and a wss one.
    let mut behind = toml::Table::new();
    behind.insert("addr".into(), "127.0.0.1:0".into());
    behind.insert(
        "forwarded_from".into(),
        toml::Value::Array(vec!["127.0.0.2/32".into()]),
    );
    let mut tls = toml::Table::new();
    tls.insert("cert_file".into(), crt.display().to_string().into());
    tls.insert("key_file".into(), key.display().to_string().into());
    let mut direct = toml::Table::new();
    direct.insert("addr".into(), "127.0.0.1:0".into());
    direct.insert("tls".into(), tls.into());
    let herald = herald().listener(behind).listener(direct).start().await;
    let [edge_ws, edge_wss] = herald.listeners[..] else {
        panic!("two listeners");
    };

    let (full, full_hits) = full_edge().await;
    let port = free_port();
    let conf = nginx_config(
        dir.path(),
        &NginxConf {
            tls_port: port,
            plain_port: None,
            cert: &crt,
            key: &key,
            edges: &[full, edge_ws],
        },
    );
    let nginx = Nginx::start(dir.path(), &conf, port).await;
    let front = SocketAddr::from(([127, 0, 0, 1], port));

    // Like a WeChat mini program: wss to a domain name (SNI), no sub-protocol, token in the URL.
    let cfg = client_config(ClientOpts {
        roots: &[&ca],
        versions: &[],
        identity: None,
        alpn: &[],
    });
    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    let mut clients = Vec::new();
    for (i, (addr, path)) in [(front, "herald"), (edge_wss, "ws")]
        .into_iter()
        .cycle()
        .take(6)
        .enumerate()
    {
        let url = format!(
            "wss://{DOMAIN}:{}/{path}/alpha?token={}",
            addr.port(),
            token("alpha", "wx")
        );
        // A client-written X-Forwarded-For is ignored: nginx appends the real address.
        let (mut c, resp) = open_wss(&cfg, addr, &url, &[("x-forwarded-for", "6.6.6.6")])
            .await
            .unwrap_or_else(|e| panic!("client {i} via {addr}: {e}\nnginx: {}", nginx.error_log()));
        assert_eq!(resp.status(), 101);
        assert!(
            resp.headers().get("sec-websocket-protocol").is_none(),
            "no sub-protocol offered, none answered: {resp:?}"
        );
        assert_eq!(c.next_json().await["type"], "welcome");
        clients.push(c);
    }
    // Through nginx, a first attempt met the full edge and was retried on the next one.
    assert!(
        full_hits.load(Ordering::SeqCst) >= 1,
        "the 503 edge was never tried"
    );

    send(&mut grpc, publish("alpha", To::User("wx"), r#""hi""#)).await;
    for c in &mut clients {
        assert_eq!(c.next_msg().await["data"], "hi");
    }

    // The edge knows the clients behind nginx by their own address, not the spoofed one.
    let mut admin = herald.grpc(Some(ADMIN_KEY)).await;
    let list = admin
        .list_connections(ListConnectionsRequest {
            project: "alpha".into(),
            of: Some(list_connections_request::Of::User("wx".into())),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    let remotes: Vec<&str> = list
        .connections
        .iter()
        .map(|c| c.remote_addr.as_str())
        .collect();
    assert_eq!(remotes.len(), 6, "{remotes:?}");
    assert_eq!(
        remotes.iter().filter(|r| **r == "127.0.0.1:0").count(),
        3,
        "behind nginx: the forwarded client address: {remotes:?}"
    );
    assert!(
        remotes.iter().all(|r| !r.starts_with("6.6.6.6")),
        "{remotes:?}"
    );

    // A client that offers the sub-protocol gets it echoed through nginx.
    let url = format!(
        "wss://{DOMAIN}:{port}/herald/alpha?token={}",
        token("alpha", "native")
    );
    let (_, resp) = open_wss(
        &cfg,
        front,
        &url,
        &[("sec-websocket-protocol", "herald.v1")],
    )
    .await
    .expect("upgrade");
    assert_eq!(resp.headers()["sec-websocket-protocol"], "herald.v1");

    // nginx logs a WebSocket request when it ends: each one through it, without its query.
    drop(clients);
    let access = dir.path().join("access.log");
    let deadline = tokio::time::Instant::now() + WAIT;
    let log = loop {
        let log = std::fs::read_to_string(&access).unwrap_or_default();
        if log.matches("\"GET /herald/alpha HTTP/1.1\" 101").count() >= 4 {
            break log;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "4 upgrades through nginx, logged: {log}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(!log.contains("token"), "a query in the access log: {log}");
    for sub in ["wx", "native"] {
        let t = token("alpha", sub);
        let signature = t.rsplit('.').next().expect("signature");
        assert!(!log.contains(signature), "a token in the access log: {log}");
    }
}

/// The shipped configuration logs no query (`?token=`): every access log uses a format of its
/// own, and no format names a variable that holds the query.
#[test]
fn the_shipped_nginx_config_logs_no_query() {
    let conf = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nginx/herald.conf"),
    )
    .expect("deploy/nginx/herald.conf");
    // Directives, comments left out.
    let code: String = conf
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    let directives: Vec<&str> = code.split([';', '{', '}']).map(str::trim).collect();
    let formats: Vec<&str> = directives
        .iter()
        .filter_map(|d| d.strip_prefix("log_format"))
        .filter_map(|d| d.split_whitespace().next())
        .collect();
    let access_logs: Vec<&str> = directives
        .iter()
        .filter(|d| d.starts_with("access_log"))
        .copied()
        .collect();
    assert!(
        !access_logs.is_empty(),
        "no access_log: nginx's default logs the query"
    );
    for a in access_logs {
        let words: Vec<&str> = a.split_whitespace().collect();
        let ok = words.get(1) == Some(&"off") || words.get(2).is_some_and(|f| formats.contains(f));
        assert!(
            ok,
            "{a:?}: the default format (combined) logs $request, the query included"
        );
    }
    // Variables that carry the query: `$request` (but not `$request_method`), `$request_uri`,
    // `$args`, `$arg_<name>`, `$query_string`.
    let leaks = |var: &str| {
        var == "request"
            || var == "request_uri"
            || var == "args"
            || var == "query_string"
            || var.starts_with("arg_")
    };
    for d in directives.iter().filter(|d| d.starts_with("log_format")) {
        for var in d.split('$').skip(1) {
            let name: String = var
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(!leaks(&name), "log_format names ${name}: {d}");
        }
    }
}
