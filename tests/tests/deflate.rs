//! `permessage-deflate` through real sockets: negotiated where a project enables it (always
//! without context takeover), server messages compressed once (RSV1, the same bytes to every
//! subscriber that negotiated it), client messages inflated, a decompression bomb refused with
//! 1009, declined where the project does not enable it; and Node's `ws` package, which
//! implements the extension as browsers do, against it.

use std::time::Duration;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use herald_tests::*;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;

/// `alpha` enables the extension, `beta` does not.
fn projects() -> &'static str {
    r#"
[[projects]]
id = "alpha"
api_keys = ["alpha-api-key-0123456789"]
permessage_deflate = true
[[projects.keys]]
alg = "HS256"
secret = "alpha-secret-0123456789abcdef0123456789"

[[projects]]
id = "beta"
api_keys = ["beta-api-key-0123456789"]
[[projects.keys]]
alg = "HS256"
secret = "beta-secret-0123456789abcdef0123456789ab"
"#
}

/// A token of `sub` that may join the group `quotes`.
fn quotes_token(project: &str, sub: &str) -> String {
    let secret = if project == "beta" {
        BETA_SECRET
    } else {
        ALPHA_SECRET
    };
    let mut c = claims(project, sub);
    c["channels"] = json!(["quotes"]);
    hs256(secret, None, &c)
}

/// The tail a flushed deflate stream ends with, removed from every message (RFC 7692).
const TAIL: [u8; 4] = [0, 0, 0xff, 0xff];

fn deflate(data: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(data.len() + 64);
    c.compress_vec(data, &mut out, FlushCompress::Sync)
        .expect("compress");
    assert!(out.ends_with(&TAIL));
    out.truncate(out.len() - TAIL.len());
    out
}

fn inflate(data: &[u8]) -> Vec<u8> {
    let mut d = Decompress::new(false);
    let mut out = Vec::with_capacity(data.len() * 20 + 1024);
    d.decompress_vec(&[data, &TAIL].concat(), &mut out, FlushDecompress::Sync)
        .expect("inflate");
    out
}

/// A WebSocket client written with raw frames, to see RSV1 and send what tungstenite cannot.
struct Raw {
    tcp: BufReader<TcpStream>,
    /// The `Sec-WebSocket-Extensions` answer, if any.
    extensions: Option<String>,
}

/// One server frame: its first byte (FIN, RSV1, opcode) and payload.
#[derive(Debug)]
struct Frame {
    first: u8,
    payload: Vec<u8>,
}

impl Frame {
    fn compressed(&self) -> bool {
        self.first & 0x40 != 0
    }

    /// The text, inflated when compressed.
    fn text(&self) -> String {
        let bytes = if self.compressed() {
            inflate(&self.payload)
        } else {
            self.payload.clone()
        };
        String::from_utf8(bytes).expect("utf-8")
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.text()).expect("json")
    }
}

impl Raw {
    /// Upgrades on `/ws/{project}` with a token, offering `extensions` (as Chromium does:
    /// `permessage-deflate; client_max_window_bits`).
    async fn open(herald: &Herald, project: &str, user: &str, extensions: Option<&str>) -> Raw {
        Self::open_with(herald, project, &quotes_token(project, user), extensions).await
    }

    /// [`Raw::open`] with a token of the caller's.
    async fn open_with(
        herald: &Herald,
        project: &str,
        token: &str,
        extensions: Option<&str>,
    ) -> Raw {
        let tcp = TcpStream::connect(herald.ws).await.expect("connect");
        let mut tcp = BufReader::new(tcp);
        let ext = extensions
            .map(|e| format!("Sec-WebSocket-Extensions: {e}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "GET /ws/{project}?token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{ext}\r\n"
        );
        tcp.get_mut()
            .write_all(req.as_bytes())
            .await
            .expect("request");
        let mut status = String::new();
        tcp.read_line(&mut status).await.expect("status line");
        assert!(status.starts_with("HTTP/1.1 101"), "{status}");
        let mut extensions = None;
        loop {
            let mut line = String::new();
            tcp.read_line(&mut line).await.expect("header");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("sec-websocket-extensions")
            {
                extensions = Some(v.trim().to_string());
            }
        }
        Raw { tcp, extensions }
    }

    async fn next_frame(&mut self) -> Frame {
        tokio::time::timeout(WAIT, async {
            let mut h = [0u8; 2];
            self.tcp.read_exact(&mut h).await.expect("frame header");
            assert_eq!(h[1] & 0x80, 0, "server frames are not masked");
            let len = match h[1] & 0x7f {
                126 => u64::from(self.tcp.read_u16().await.expect("len")),
                127 => self.tcp.read_u64().await.expect("len"),
                n => u64::from(n),
            };
            let mut payload = vec![0; len as usize];
            self.tcp.read_exact(&mut payload).await.expect("payload");
            Frame {
                first: h[0],
                payload,
            }
        })
        .await
        .expect("a frame in time")
    }

    /// The next data frame (pings skipped).
    async fn next_data(&mut self) -> Frame {
        loop {
            let f = self.next_frame().await;
            if f.first & 0x0f != 0x9 {
                return f;
            }
        }
    }

    /// The close frame's code, frames before it skipped.
    async fn expect_close(&mut self) -> u16 {
        loop {
            let f = self.next_frame().await;
            if f.first & 0x0f == 0x8 {
                return u16::from_be_bytes([f.payload[0], f.payload[1]]);
            }
        }
    }

    /// Sends one masked frame with `first` (FIN, RSV1, opcode).
    async fn send_frame(&mut self, first: u8, payload: &[u8]) {
        let key = [0x5a, 0x11, 0xc3, 0x07];
        let mut f = vec![first];
        match payload.len() {
            n @ 0..=125 => f.push(0x80 | n as u8),
            n @ 126..=65_535 => {
                f.push(0x80 | 126);
                f.extend((n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend((n as u64).to_be_bytes());
            }
        }
        f.extend(key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        self.tcp.get_mut().write_all(&f).await.expect("send");
    }

    /// Sends a text message compressed, in one frame.
    async fn send_compressed(&mut self, text: &str) {
        self.send_frame(0xC1, &deflate(text.as_bytes())).await;
    }
}

/// A JSON payload of about a kilobyte that compresses well, as real application messages do.
fn big_payload(tag: &str) -> String {
    let items: Vec<Value> = (0..20)
        .map(|i| json!({"id": i, "symbol": format!("SYM{}", i % 5), "price": 100 + i, "tag": tag}))
        .collect();
    json!({ "items": items }).to_string()
}

#[tokio::test]
async fn compressed_both_ways_where_the_project_enables_it() {
    let herald = herald().projects(projects()).start().await;
    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    let offer = Some("permessage-deflate; client_max_window_bits");
    let mut a = Raw::open(&herald, "alpha", "ann", offer).await;
    assert_eq!(a.extensions.as_deref(), Some(ACCEPTED));
    assert_eq!(a.next_data().await.json()["type"], "welcome");
    let mut b = Raw::open(&herald, "alpha", "bob", offer).await;
    assert_eq!(b.next_data().await.json()["type"], "welcome");
    // A client that offers nothing on the same project gets plain frames.
    let mut plain = herald.connect("alpha", &quotes_token("alpha", "pat")).await;

    // Client messages compressed: inflated by the server (a subscribe answered by its ack).
    for c in [&mut a, &mut b] {
        c.send_compressed(r#"{"type":"subscribe","id":7,"group":"quotes"}"#)
            .await;
        let ack = c.next_data().await.json();
        assert_eq!(
            (ack["type"].as_str(), ack["id"].as_u64()),
            (Some("ack"), Some(7))
        );
    }
    plain.subscribe(7, "quotes").await;

    // A group message: compressed once, the same bytes to both, inflating to the plain text.
    let payload = big_payload("group");
    send(&mut grpc, publish("alpha", To::Group("quotes"), &payload)).await;
    let fa = a.next_data().await;
    let fb = b.next_data().await;
    assert!(fa.compressed(), "RSV1 set");
    assert_eq!(fa.first, 0xC1, "a final text frame, RSV1");
    assert_eq!(
        fa.payload, fb.payload,
        "the same compressed bytes to every subscriber"
    );
    let Some(tokio_tungstenite::tungstenite::Message::Text(plain_text)) =
        tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut plain.ws))
            .await
            .expect("plain message in time")
            .map(|m| m.expect("ws"))
    else {
        panic!("a text frame")
    };
    assert_eq!(
        fa.text(),
        plain_text.as_str(),
        "inflated equals the plain text"
    );
    assert!(
        fa.payload.len() * 3 < plain_text.len(),
        "{} compressed bytes for {} plain",
        fa.payload.len(),
        plain_text.len()
    );
    assert_eq!(fa.json()["data"]["items"][3]["tag"], "group");

    // A broadcast, and a compressed message in several frames (a ping in between).
    let payload = big_payload("broadcast");
    send(&mut grpc, publish("alpha", To::Broadcast, &payload)).await;
    let f = a.next_data().await;
    assert!(f.compressed());
    assert_eq!(f.json()["kind"], "broadcast");
    assert_eq!(f.json()["data"]["items"][0]["tag"], "broadcast");
    assert_eq!(b.next_data().await.payload, f.payload);
    let z = deflate(br#"{"type":"ping","id":99}"#);
    a.send_frame(0x41, &z[..2]).await;
    a.send_frame(0x89, b"hi").await;
    a.send_frame(0x80, &z[2..]).await;
    // The control pong and the answer to the compressed ping, in either order.
    let (x, y) = (a.next_frame().await, a.next_frame().await);
    let (pong, answer) = if x.first == 0x8A { (x, y) } else { (y, x) };
    assert_eq!((pong.first, pong.payload.as_slice()), (0x8A, &b"hi"[..]));
    assert_eq!(answer.json(), json!({"type":"pong","id":99}));

    // A short message is not worth compressing: plain, RSV1 clear.
    send(&mut grpc, publish("alpha", To::Group("quotes"), "1")).await;
    let f = b.next_data().await;
    assert!(!f.compressed());
    assert_eq!(f.json()["data"], 1);
}

/// What an edge answers a browser-like offer with when it accepts the extension.
const ACCEPTED: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

#[tokio::test]
async fn a_project_of_the_admin_api_turns_it_on_and_off_at_runtime() {
    use herald_core::proto::admin::admin_client::AdminClient;
    use herald_core::proto::admin::{CreateProjectRequest, JwtKey, ProjectRequest};
    let herald = herald()
        .projects(projects())
        .router("http_listen", "127.0.0.1:0")
        .start()
        .await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", herald.grpc))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let auth: tonic::metadata::MetadataValue<_> =
        format!("Bearer {ADMIN_KEY}").parse().expect("header");
    let mut admin = AdminClient::with_interceptor(channel, move |mut r: tonic::Request<()>| {
        r.metadata_mut().insert("authorization", auth.clone());
        Ok(r)
    });
    let secret = "gamma-secret-0123456789abcdef0123456789";
    let token = |sub: &str| {
        let mut c = claims("gamma", sub);
        c["channels"] = json!(["quotes"]);
        hs256(secret, Some("k1"), &c)
    };
    // Created over gRPC with the extension on.
    let created = admin
        .create_project(CreateProjectRequest {
            project: "gamma".into(),
            jwt_keys: vec![JwtKey {
                kid: "k1".into(),
                alg: "HS256".into(),
                secret: secret.into(),
                public_key_pem: String::new(),
            }],
            permessage_deflate: true,
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner()
        .project
        .expect("project");
    assert!(created.permessage_deflate);
    let offer = Some("permessage-deflate; client_max_window_bits");
    let mut a = Raw::open_with(&herald, "gamma", &token("ann"), offer).await;
    assert_eq!(a.extensions.as_deref(), Some(ACCEPTED));
    assert_eq!(a.next_data().await.json()["type"], "welcome");
    a.send_compressed(r#"{"type":"subscribe","id":1,"group":"quotes"}"#)
        .await;
    assert_eq!(a.next_data().await.json()["type"], "ack");

    // Turned off over HTTP/JSON: new connections are declined, the open one keeps it.
    let auth = format!("Bearer {ADMIN_KEY}");
    let head = [
        ("content-type", "application/json"),
        ("authorization", auth.as_str()),
    ];
    let body = json!({"project": "gamma", "permessage_deflate": false}).to_string();
    let r = http_request(
        herald.http,
        "POST",
        "/v1/admin/projects/update",
        &head,
        body.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).expect("json");
    assert_eq!(v["project"]["permessage_deflate"], false, "{v}");
    let mut b = Raw::open_with(&herald, "gamma", &token("bob"), offer).await;
    assert_eq!(b.extensions, None, "declined once turned off");
    assert_eq!(b.next_data().await.json()["type"], "welcome");
    b.send_frame(0x81, br#"{"type":"subscribe","id":1,"group":"quotes"}"#)
        .await;
    assert_eq!(b.next_data().await.json()["type"], "ack");

    let body = json!({"project": "gamma", "target": {"group": "quotes"},
        "data": serde_json::from_str::<Value>(&big_payload("api")).expect("json")});
    let r = http_request(
        herald.http,
        "POST",
        "/v1/publish",
        &head,
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let fa = a.next_data().await;
    assert!(fa.compressed(), "the open connection keeps the extension");
    assert_eq!(fa.json()["data"]["items"][2]["tag"], "api");
    let fb = b.next_data().await;
    assert!(!fb.compressed());
    assert_eq!(fb.text(), fa.text(), "the same message");

    // On again: negotiated again; the project shows it.
    let body = json!({"project": "gamma", "permessage_deflate": true}).to_string();
    let r = http_request(
        herald.http,
        "POST",
        "/v1/admin/projects/update",
        &head,
        body.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let c = Raw::open_with(&herald, "gamma", &token("cy"), offer).await;
    assert_eq!(c.extensions.as_deref(), Some(ACCEPTED));
    let shown = admin
        .get_project(ProjectRequest {
            project: "gamma".into(),
        })
        .await
        .expect("get")
        .into_inner()
        .project
        .expect("project");
    assert!(shown.permessage_deflate);
}

#[tokio::test]
async fn declined_where_the_project_does_not_enable_it() {
    let herald = herald().projects(projects()).start().await;
    let offer = Some("permessage-deflate; client_max_window_bits");
    let mut c = Raw::open(&herald, "beta", "bea", offer).await;
    assert_eq!(c.extensions, None, "declined");
    assert_eq!(c.next_data().await.json()["type"], "welcome");
    // A compressed frame without the extension breaks the protocol.
    c.send_compressed(r#"{"type":"ping","id":1}"#).await;
    assert_eq!(c.expect_close().await, 1002);

    // An offer asking for a smaller server window than the edge can promise is declined too.
    let mut c = Raw::open(
        &herald,
        "alpha",
        "al",
        Some("permessage-deflate; server_max_window_bits=10"),
    )
    .await;
    assert_eq!(c.extensions, None);
    assert_eq!(c.next_data().await.json()["type"], "welcome");
}

#[tokio::test]
async fn a_decompression_bomb_closes_with_1009_and_others_keep_receiving() {
    let herald = herald()
        .projects(projects())
        .edge("max_message_bytes", 65_536)
        .start()
        .await;
    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    let offer = Some("permessage-deflate");
    let mut bystander = Raw::open(&herald, "alpha", "by", offer).await;
    bystander.next_data().await;
    let mut c = Raw::open(&herald, "alpha", "bomber", offer).await;
    c.next_data().await;
    // 10 MB of spaces inside a JSON string: about 10 KB compressed, well under the limit.
    let bomb = format!(r#"{{"type":"ping","pad":"{}"}}"#, " ".repeat(10_000_000));
    let z = deflate(bomb.as_bytes());
    assert!(z.len() < 65_536);
    c.send_frame(0xC1, &z).await;
    assert_eq!(c.expect_close().await, 1009);
    herald
        .wait_metric(
            r#"herald_edge_closes_total{code="message_too_big",protocol="native"}"#,
            1.0,
        )
        .await;
    // Just under the limit inflates.
    let mut c = Raw::open(&herald, "alpha", "fine", offer).await;
    c.next_data().await;
    let fine = format!(r#"{{"type":"ping","id":5,"pad":"{}"}}"#, " ".repeat(60_000));
    c.send_compressed(&fine).await;
    assert_eq!(c.next_data().await.json(), json!({"type":"pong","id":5}));

    send(
        &mut grpc,
        publish("alpha", To::Broadcast, &big_payload("after")),
    )
    .await;
    assert_eq!(
        bystander.next_data().await.json()["data"]["items"][0]["tag"],
        "after"
    );
}

/// Node's `ws` package negotiates and uses the extension as browsers do: every client message
/// compressed (threshold 0), server messages inflated.
#[tokio::test]
async fn node_ws_client_speaks_it() {
    let dir = herald_tests::mqtt::clients_dir();
    assert!(
        dir.join("node_modules/ws").is_dir(),
        "the `ws` package is missing: run `npm ci` in {}",
        dir.display()
    );
    let herald = herald().projects(projects()).start().await;
    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    let url = format!(
        "ws://{}/ws/alpha?token={}",
        herald.ws,
        quotes_token("alpha", "node")
    );
    let mut child = Command::new("node")
        .arg(dir.join("deflate.mjs"))
        .arg(json!({"url": url}).to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node (Node.js) on PATH");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut next = async || -> Value {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("node event in time")
            .expect("read")
            .expect("node exited");
        serde_json::from_str(&line).expect("json line")
    };
    let up = next().await;
    assert_eq!(up["event"], "open");
    assert_eq!(
        up["extensions"],
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    );
    assert_eq!(next().await["data"]["type"], "welcome");
    let sub = json!({"send": {"type":"subscribe","id":1,"group":"quotes"}}).to_string() + "\n";
    stdin.write_all(sub.as_bytes()).await.expect("stdin");
    assert_eq!(next().await["data"], json!({"type":"ack","id":1}));
    send(
        &mut grpc,
        publish("alpha", To::Group("quotes"), &big_payload("node")),
    )
    .await;
    let m = next().await["data"].clone();
    assert_eq!(m["group"], "quotes");
    assert_eq!(m["data"]["items"][19]["tag"], "node");
    send(
        &mut grpc,
        publish("alpha", To::Broadcast, &big_payload("all")),
    )
    .await;
    assert_eq!(next().await["data"]["data"]["items"][0]["tag"], "all");
    send(
        &mut grpc,
        publish("alpha", To::User("node"), &big_payload("you")),
    )
    .await;
    assert_eq!(next().await["data"]["kind"], "user");
    let end = json!({"end": true}).to_string() + "\n";
    stdin.write_all(end.as_bytes()).await.expect("stdin");
    let closed = next().await;
    assert_eq!(
        (closed["event"].as_str(), closed["code"].as_u64()),
        (Some("close"), Some(1000))
    );
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
}
