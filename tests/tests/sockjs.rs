//! SockJS with the client people use: sockjs-client 1.6 carrying @stomp/stompjs 7 under Node
//! (`tests/clients/stomp.mjs` with `sockjs`), forced onto each transport (`websocket`,
//! `xhr-streaming`, `eventsource`, `xhr-polling`), directly and through nginx in front of two
//! edges (the shipped sticky configuration), and in Chromium (`tests/clients/chromium.mjs`
//! loading a page that bundles both); the protocol's details by a hand-written HTTP client.

use std::net::SocketAddr;

use herald_tests::cluster::Backends;
use herald_tests::nginx::*;
use herald_tests::stomp::Stomp;
use herald_tests::tls::*;
use herald_tests::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// sockjs-client's names of the transports, and the `transport` label of each in the metrics.
const TRANSPORTS: [(&str, &str); 4] = [
    ("websocket", "websocket"),
    ("xhr-streaming", "xhr_streaming"),
    ("eventsource", "eventsource"),
    ("xhr-polling", "xhr_polling"),
];

fn bearer(t: &str) -> Value {
    json!({"Authorization": format!("Bearer {t}")})
}

fn alice_like(user: &str) -> String {
    let mut c = claims("alpha", user);
    c["channels"] = json!(["news"]);
    hs256(ALPHA_SECRET, None, &c)
}

/// A stompjs client through sockjs-client at `base` (`http://host:port/sockjs/alpha`) on one
/// transport, connected as `user` and subscribed to a group, its user queue and the broadcast.
async fn subscribed(base: &str, transport: &str, user: &str) -> Stomp {
    let mut c = Stomp::start(json!({
        "url": base,
        "sockjs": {"transports": [transport]},
        "connectHeaders": bearer(&alice_like(user)),
        "heartbeat": [10_000, 10_000],
    }))
    .await;
    assert_eq!(c.next("open").await["transport"], transport, "{:?}", c.seen);
    let connected = c.next("connect").await;
    assert_eq!(connected["headers"]["user-name"], user);
    c.subscribe("/topic/alpha/news", "g", "auto").await;
    c.subscribe("/user/queue/orders", "u", "auto").await;
    c.subscribe("/topic/alpha", "b", "auto").await;
    c
}

/// Publishes a group, a user (to each of `users`) and a broadcast message; every client gets
/// its three, on the right subscriptions.
async fn three_kinds_reach(grpc: &mut Grpc, clients: &mut [(&str, Stomp)], tag: &str) {
    send(
        grpc,
        publish("alpha", To::Group("news"), &format!(r#"{{"g":"{tag}"}}"#)),
    )
    .await;
    for (user, _) in clients.iter() {
        let mut m = publish("alpha", To::User(user), &format!("to {user} {tag}"));
        m.event = "orders".into();
        send(grpc, m).await;
    }
    send(
        grpc,
        publish("alpha", To::Broadcast, &format!("all {tag} \u{2028}é\"%")),
    )
    .await;
    // In a cluster the three kinds travel by different subjects: their order may differ.
    for (user, c) in clients.iter_mut() {
        let mut by_sub = std::collections::BTreeMap::new();
        for _ in 0..3 {
            let m = c.next("message").await;
            let sub = m["subscription"].as_str().unwrap_or_default().to_owned();
            assert!(
                by_sub.insert(sub, m.clone()).is_none(),
                "{user}: twice: {m}"
            );
        }
        let m = &by_sub["g"];
        assert_eq!(m["destination"], "/topic/alpha/news", "{user}: {m}");
        assert_eq!(
            serde_json::from_str::<Value>(m["body"].as_str().unwrap_or_default()).ok(),
            Some(json!({ "g": tag }))
        );
        let m = &by_sub["u"];
        assert_eq!(
            (&m["body"], &m["destination"]),
            (
                &json!(format!("to {user} {tag}")),
                &json!("/user/queue/orders")
            ),
            "{user}"
        );
        assert_eq!(
            by_sub["b"]["body"],
            json!(format!("all {tag} \u{2028}é\"%")),
            "{user}: characters SockJS escapes arrive intact"
        );
    }
}

#[tokio::test]
async fn stompjs_over_sockjs_client_on_every_transport() {
    let herald = herald().start().await;
    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    let base = format!("http://{}/sockjs/alpha", herald.ws);
    let mut clients = Vec::new();
    for (transport, _) in TRANSPORTS {
        let user = format!("u-{}", transport.replace('-', "_"));
        let c = subscribed(&base, transport, &user).await;
        clients.push((user, c));
    }
    herald
        .wait_metric(r#"herald_edge_connections{protocol="stomp"}"#, 4.0)
        .await;
    let mut named: Vec<(&str, Stomp)> = clients
        .into_iter()
        .map(|(u, c)| (&*Box::leak(u.into_boxed_str()), c))
        .collect();
    three_kinds_reach(&mut grpc, &mut named, "one").await;
    // A second round: polling and streaming sessions go on across their requests.
    three_kinds_reach(&mut grpc, &mut named, "two").await;
    for (_, label) in TRANSPORTS {
        herald
            .wait_metric(
                &format!(r#"herald_edge_sockjs_sessions_total{{transport="{label}"}}"#),
                1.0,
            )
            .await;
    }
    herald
        .wait_metric(r#"herald_edge_deliveries_total{protocol="stomp"}"#, 24.0)
        .await;

    // stompjs's deactivate(): DISCONNECT, its receipt, the close (1000) in a SockJS close frame.
    for (user, c) in named.iter_mut() {
        c.send(json!({"disconnect": true})).await;
        assert_eq!(c.next("ws_close").await["code"], 1000, "{user}");
    }
    herald
        .wait_metric(r#"herald_edge_connections{protocol="stomp"}"#, 0.0)
        .await;
    for (_, label) in &TRANSPORTS[1..] {
        herald
            .wait_metric(
                &format!(r#"herald_edge_sockjs_sessions{{transport="{label}"}}"#),
                0.0,
            )
            .await;
    }
}

/// A refused token: stompjs gets the `ERROR` frame, then the close code in SockJS's close frame.
#[tokio::test]
async fn a_refused_token_is_an_error_frame_then_the_close_code() {
    let herald = herald().start().await;
    let base = format!("http://{}/sockjs/alpha", herald.ws);
    for (transport, _) in [TRANSPORTS[0], TRANSPORTS[3]] {
        let mut c = Stomp::start(json!({
            "url": base,
            "sockjs": {"transports": [transport]},
            "connectHeaders": bearer(&hs256("wrong", None, &claims("alpha", "x"))),
        }))
        .await;
        let (message, code) = c.refused().await;
        assert!(!message.is_empty(), "{transport}: {:?}", c.seen);
        assert_eq!(
            code,
            herald_core::codes::CloseCode::InvalidToken as u64,
            "{transport}"
        );
    }
}

/// An HTTP response read as it comes.
struct Streamed {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Streamed {
    async fn open(addr: SocketAddr, method: &str, path: &str, head: &str) -> Self {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(
            format!("{method} {path} HTTP/1.1\r\nhost: x\r\n{head}content-length: 0\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("write");
        Self { s, buf: Vec::new() }
    }

    /// Reads until the bytes so far contain `what`; returns everything read so far.
    async fn until(&mut self, what: &str) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let text = String::from_utf8_lossy(&self.buf).into_owned();
            if text.contains(what) {
                return text;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, self.s.read(&mut chunk))
                .await
                .unwrap_or_else(|_| panic!("no {what:?} in time; got {text:?}"))
                .expect("read");
            assert!(n > 0, "closed before {what:?}; got {text:?}");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

async fn xhr_send(addr: SocketAddr, session: &str, body: &str) -> HttpReply {
    http_request(
        addr,
        "POST",
        &format!("/sockjs/alpha/000/{session}/xhr_send"),
        &[("content-type", "text/plain")],
        body.as_bytes(),
    )
    .await
}

/// The protocol as sockjs-client relies on it, by hand: `info`, CORS, the `xhr_streaming`
/// prelude, `xhr_send` answers, one receiving request at a time, the STOMP frames inside
/// `a[..]`, polling sessions ending without polls, unknown projects and sessions.
#[tokio::test]
async fn the_protocol_by_hand() {
    let herald = herald()
        .edge("sockjs_disconnect_delay_ms", 1_000)
        .start()
        .await;
    let addr = herald.ws;

    let info = http_request(
        addr,
        "GET",
        "/sockjs/alpha/info",
        &[("origin", "http://app.example")],
        b"",
    )
    .await;
    assert_eq!(info.status, 200);
    let v: Value = serde_json::from_str(&info.body).expect("info JSON");
    assert_eq!(
        (&v["websocket"], &v["cookie_needed"]),
        (&json!(true), &json!(false))
    );
    assert!(v["entropy"].is_u64());
    assert_eq!(
        info.header("access-control-allow-origin"),
        Some("http://app.example")
    );
    assert_eq!(
        info.header("access-control-allow-credentials"),
        Some("true")
    );
    let pre = http_request(
        addr,
        "OPTIONS",
        "/sockjs/alpha/000/s1/xhr_streaming",
        &[
            ("origin", "http://app.example"),
            ("access-control-request-headers", "content-type"),
        ],
        b"",
    )
    .await;
    assert_eq!(pre.status, 204);
    assert_eq!(
        pre.header("access-control-allow-headers"),
        Some("content-type")
    );
    assert_eq!(
        http_request(addr, "GET", "/sockjs/nope/info", &[], b"")
            .await
            .status,
        404
    );
    assert_eq!(xhr_send(addr, "nosuch", r#"["x"]"#).await.status, 404);

    // xhr_streaming: 2 KiB of `h` and a newline, then the open frame.
    let mut stream = Streamed::open(addr, "POST", "/sockjs/alpha/000/s1/xhr_streaming", "").await;
    let text = stream.until("\no\n").await;
    let body = text.split_once("\r\n\r\n").expect("head").1;
    assert_eq!(body, format!("{}\no\n", "h".repeat(2048)));
    // A second receiving request of the session is told another is open.
    let second = http_request(addr, "POST", "/sockjs/alpha/000/s1/xhr_streaming", &[], b"").await;
    assert!(
        second
            .body
            .ends_with("c[2010,\"Another connection still open\"]\n"),
        "{second:?}"
    );
    // xhr_send: broken JSON is 500, an empty array and messages 204.
    assert_eq!(xhr_send(addr, "s1", "[\"x").await.status, 500);
    assert_eq!(xhr_send(addr, "s1", "[]").await.status, 204);
    let connect = format!(
        "CONNECT\naccept-version:1.2\nhost:x\nAuthorization:Bearer {}\n\n\0",
        alice_like("raw")
    );
    let r = xhr_send(addr, "s1", &serde_json::to_string(&[connect]).unwrap()).await;
    assert_eq!(r.status, 204);
    let text = stream.until("\"]\n").await;
    assert!(text.contains("a[\"CONNECTED\\nversion:1.2"), "{text}");
    let sub = "SUBSCRIBE\nid:b\ndestination:/topic/alpha\nreceipt:r\n\n\0";
    xhr_send(addr, "s1", &serde_json::to_string(&[sub]).unwrap()).await;
    stream.until("RECEIPT\\nreceipt-id:r").await;
    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    send(&mut grpc, publish("alpha", To::Broadcast, "50%")).await;
    let text = stream.until("\\n\\n50%\\u0000\"]\n").await;
    assert!(text.contains("a[\"MESSAGE\\nsubscription:b\\n"), "{text}");

    // EventSource: `data:` lines, `%` escaped for decodeURI.
    let mut es = Streamed::open(addr, "GET", "/sockjs/alpha/000/s2/eventsource", "").await;
    let text = es.until("data: o\r\n\r\n").await;
    assert!(text.contains("content-type: text/event-stream"), "{text}");
    let connect = format!(
        "CONNECT\naccept-version:1.2\nhost:x\npasscode:{}\n\n\0",
        alice_like("es")
    );
    xhr_send(addr, "s2", &serde_json::to_string(&[connect]).unwrap()).await;
    xhr_send(addr, "s2", &serde_json::to_string(&[sub]).unwrap()).await;
    es.until("receipt-id:r").await;
    send(&mut grpc, publish("alpha", To::Broadcast, "75%")).await;
    es.until("75%25\\u0000\"]\r\n\r\n").await;

    // Polling: each request answers what is queued, then ends; without polls the session ends.
    let r = http_request(addr, "POST", "/sockjs/alpha/000/s3/xhr", &[], b"").await;
    assert_eq!((r.status, r.body.as_str()), (200, "o\n"));
    herald
        .wait_metric(
            r#"herald_edge_sockjs_sessions{transport="xhr_polling"}"#,
            1.0,
        )
        .await;
    herald
        .wait_metric(
            r#"herald_edge_sockjs_sessions{transport="xhr_polling"}"#,
            0.0,
        )
        .await;
    assert_eq!(xhr_send(addr, "s3", r#"["x"]"#).await.status, 404);

    // A streaming client that goes away ends its session after the delay, and its connection.
    drop(stream);
    drop(es);
    herald
        .wait_metric(r#"herald_edge_connections{protocol="stomp"}"#, 0.0)
        .await;
    herald
        .wait_metric(
            r#"herald_edge_closes_total{code="peer",protocol="stomp"}"#,
            2.0,
        )
        .await;
}

/// Two edges behind nginx with the shipped configuration (`/sockjs/` hashed on the session id):
/// every request of a session reaches its edge, on every transport, and group, user and
/// broadcast messages published on one edge reach clients of both.
#[tokio::test]
async fn through_nginx_in_front_of_two_edges() {
    let b = Backends::start().await;
    let node = |id: &'static str| {
        let mut behind = toml::Table::new();
        behind.insert("addr".into(), "127.0.0.1:0".into());
        behind.insert(
            "forwarded_from".into(),
            toml::Value::Array(vec!["127.0.0.2/32".into()]),
        );
        herald()
            .clustered(&b)
            .role("all")
            .edge("id", id)
            .listener(behind)
            .start()
    };
    let one = node("edge-a").await;
    let two = node("edge-b").await;
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::root("test root");
    let (crt, key) =
        ca.server(&[DOMAIN], &rcgen::PKCS_ECDSA_P256_SHA256)
            .write(dir.path(), "site", &[]);
    let tls_port = free_port();
    let plain = free_port();
    let conf = nginx_config(
        dir.path(),
        &NginxConf {
            tls_port,
            plain_port: Some(plain),
            cert: &crt,
            key: &key,
            edges: &[one.ws, two.ws],
        },
    );
    let nginx = Nginx::start(dir.path(), &conf, tls_port).await;
    let base = format!("http://127.0.0.1:{plain}/sockjs/alpha");

    // Two clients per transport: with sessions hashed over two edges, both edges serve some.
    let mut clients = Vec::new();
    for (transport, _) in TRANSPORTS {
        for i in 0..2 {
            let user = format!("n{i}-{}", transport.replace('-', "_"));
            let c = subscribed(&base, transport, &user).await;
            clients.push((user, c));
        }
    }
    // Sessions hash over both edges. An edge nginx found failing (a 503 of load shedding on a
    // loaded machine) rests for fail_timeout (5 s) and the hash skips it: more sessions then.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let on_one = one
            .metric(r#"herald_edge_connections{protocol="stomp"}"#)
            .await;
        let on_two = two
            .metric(r#"herald_edge_connections{protocol="stomp"}"#)
            .await;
        assert_eq!(
            on_one + on_two,
            clients.len() as f64,
            "nginx: {}",
            nginx.error_log()
        );
        if on_one > 0.0 && on_two > 0.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "one edge took every session: {on_one} / {on_two}; nginx: {}",
            nginx.error_log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let user = format!("n{}-xhr_polling", clients.len());
        let c = subscribed(&base, "xhr-polling", &user).await;
        clients.push((user, c));
    }
    let mut named: Vec<(&str, Stomp)> = clients
        .into_iter()
        .map(|(u, c)| (&*Box::leak(u.into_boxed_str()), c))
        .collect();
    // Every subscription's receipt came once the registry held it.
    let mut grpc = one.grpc(Some(ALPHA_KEY)).await;
    three_kinds_reach(&mut grpc, &mut named, "via nginx").await;
    three_kinds_reach(&mut grpc, &mut named, "again").await;

    // Every request of a session reached one edge (nginx's log: path, then the upstream last).
    let log = std::fs::read_to_string(dir.path().join("access.log")).unwrap_or_default();
    let mut edge_of = std::collections::HashMap::new();
    for line in log.lines() {
        let Some(path) = line
            .split_whitespace()
            .find(|w| w.starts_with("/sockjs/alpha/"))
        else {
            continue;
        };
        let parts: Vec<&str> = path.split('/').collect();
        if parts.len() < 6 {
            continue;
        }
        let upstream = line.rsplit(' ').next().unwrap_or_default().to_owned();
        let session = parts[4].to_owned();
        let first = edge_of
            .entry(session.clone())
            .or_insert_with(|| upstream.clone());
        assert_eq!(*first, upstream, "session {session} moved: {log}");
    }
    // (nginx logs a request once it ends: the xhr_send requests of every session over HTTP.)
    let over_http = named
        .iter()
        .filter(|(u, _)| !u.contains("websocket"))
        .count();
    assert!(
        edge_of.len() >= over_http,
        "{over_http} sessions over HTTP: {log}"
    );
}

/// Serves the page and the two UMD bundles from `tests/clients` (no CDN) on loopback.
async fn page_server() -> SocketAddr {
    let dir = herald_tests::mqtt::clients_dir();
    let files = [
        (
            "/",
            dir.join("sockjs-page.html"),
            "text/html; charset=utf-8",
        ),
        (
            "/sockjs.js",
            dir.join("node_modules/sockjs-client/dist/sockjs.min.js"),
            "application/javascript",
        ),
        (
            "/stomp.js",
            dir.join("node_modules/@stomp/stompjs/bundles/stomp.umd.min.js"),
            "application/javascript",
        ),
    ];
    let files: Vec<(&'static str, Vec<u8>, &'static str)> = files
        .into_iter()
        .map(|(p, f, t)| {
            let body = std::fs::read(&f)
                .unwrap_or_else(|e| panic!("{}: {e} (run `npm ci` in tests/clients)", f.display()));
            (p, body, t)
        })
        .collect();
    let files = std::sync::Arc::new(files);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let files = files.clone();
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 2048];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(n) if n > 0 => req.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                let line = String::from_utf8_lossy(&req);
                let path = line.split_whitespace().nth(1).unwrap_or("/");
                let path = path.split('?').next().unwrap_or("/");
                let reply = match files.iter().find(|(p, _, _)| *p == path) {
                    Some((_, body, ctype)) => {
                        let mut r = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                            body.len()
                        )
                        .into_bytes();
                        r.extend_from_slice(body);
                        r
                    }
                    None => {
                        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                            .to_vec()
                    }
                };
                let _ = s.write_all(&reply).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// Headless Chromium (`tests/clients/chromium.mjs`) on a page served by the test, from another
/// origin than the edge's (CORS as a browser enforces it): sockjs-client and stompjs from their
/// UMD bundles, one client per transport, each receiving group, user and broadcast messages.
#[tokio::test]
async fn chromium_page_with_sockjs_client_and_stompjs_on_every_transport() {
    let herald = herald().start().await;
    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    let page = page_server().await;
    let clients: Vec<Value> = TRANSPORTS
        .iter()
        .map(|(t, _)| {
            json!({
                "transport": t,
                "token": alice_like(&format!("b-{}", t.replace('-', "_"))),
                "subscribe": [
                    {"destination": "/topic/alpha/news", "id": "g"},
                    {"destination": "/user/queue/orders", "id": "u"},
                    {"destination": "/topic/alpha", "id": "b"},
                ],
            })
        })
        .collect();
    let cfg = json!({"base": format!("http://{}/sockjs/alpha", herald.ws), "clients": clients});
    let fragment: String = percent_encode(&cfg.to_string());
    let url = format!("http://{page}/#{fragment}");
    let mut browser = Browser::start(&url).await;
    // Every client subscribed (three receipts each).
    let mut receipts = 0;
    while receipts < 3 * TRANSPORTS.len() {
        let e = browser.next(&["receipt"]).await;
        assert!(
            e["id"].as_str().is_some_and(|r| r.starts_with("sub-")),
            "{e}"
        );
        receipts += 1;
    }
    for (t, _) in TRANSPORTS {
        assert!(
            browser
                .seen
                .iter()
                .any(|e| e["event"] == "open" && e["client"] == t && e["transport"] == t),
            "{t} never opened on its transport: {:?}",
            browser.seen
        );
    }
    send(
        &mut grpc,
        publish("alpha", To::Group("news"), "group hello"),
    )
    .await;
    for (t, _) in TRANSPORTS {
        let mut m = publish(
            "alpha",
            To::User(&format!("b-{}", t.replace('-', "_"))),
            "user hello",
        );
        m.event = "orders".into();
        send(&mut grpc, m).await;
    }
    send(
        &mut grpc,
        publish("alpha", To::Broadcast, "broadcast hello"),
    )
    .await;
    let mut got = std::collections::BTreeSet::new();
    while got.len() < 3 * TRANSPORTS.len() {
        let m = browser.next(&["message"]).await;
        let want = match m["subscription"].as_str() {
            Some("g") => "group hello",
            Some("u") => "user hello",
            _ => "broadcast hello",
        };
        assert_eq!(m["body"], want, "{m}");
        got.insert((
            m["client"].as_str().unwrap_or_default().to_owned(),
            m["subscription"].as_str().unwrap_or_default().to_owned(),
        ));
    }
    browser.end().await;
}

/// The Chromium driver process.
struct Browser {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    seen: Vec<Value>,
}

impl Browser {
    async fn start(url: &str) -> Browser {
        use tokio::io::AsyncBufReadExt;
        let dir = herald_tests::mqtt::clients_dir();
        let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        assert!(
            std::path::Path::new(&chromium).is_file(),
            "chromium is needed for the browser tests (apt-get install chromium; or set CHROMIUM)"
        );
        let mut child = tokio::process::Command::new("node")
            .arg(dir.join("chromium.mjs"))
            .arg(json!({"url": url, "chromium": chromium}).to_string())
            .current_dir(&dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node");
        let stdin = child.stdin.take().expect("stdin");
        let lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut b = Browser {
            child,
            stdin,
            lines,
            seen: Vec::new(),
        };
        b.next(&["ready"]).await;
        b
    }

    /// The next event named one of `events`; a page error fails the test.
    async fn next(&mut self, events: &[&str]) -> Value {
        // A browser on a loaded machine starts slowly.
        let deadline = tokio::time::Instant::now() + WAIT * 3;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("no {events:?} in time; seen {:?}", self.seen))
                .expect("read")
                .unwrap_or_else(|| panic!("driver exited before {events:?}; seen {:?}", self.seen));
            let v: Value = serde_json::from_str(&line).expect("JSON line");
            self.seen.push(v.clone());
            assert!(
                v["event"] != "page_error" && v["event"] != "stomp_error" && v["event"] != "fatal",
                "{v}; seen {:?}",
                self.seen
            );
            if events.iter().any(|e| v["event"] == *e) {
                return v;
            }
        }
    }

    async fn end(mut self) {
        let _ = self.stdin.write_all(b"{\"end\":true}\n").await;
        let _ = tokio::time::timeout(WAIT, self.child.wait()).await;
    }
}
