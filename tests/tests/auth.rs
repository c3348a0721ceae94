//! Authentication through real sockets: every way to present a token, every refusal with its
//! close code (or HTTP status before the upgrade), keys chosen by `kid` with pinned algorithms,
//! key reload on SIGHUP, sub-protocol negotiation, token expiry and refresh.

use std::time::{Duration, Instant};

use futures_util::SinkExt as _;
use herald_tests::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::{self, Message};

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// Alpha and beta trusting the same secret: a token of one verifies for the other, so only `aud`
/// tells them apart.
fn shared_secret_projects() -> String {
    format!(
        r#"
        [[projects]]
        id = "alpha"
        api_keys = ["{ALPHA_KEY}"]
        [[projects.keys]]
        alg = "HS256"
        secret = "{ALPHA_SECRET}"
        [[projects]]
        id = "beta"
        api_keys = ["{BETA_KEY}"]
        [[projects.keys]]
        alg = "HS256"
        secret = "{ALPHA_SECRET}"
        "#
    )
}

/// Opens `url` and expects the welcome frame; returns the client and the welcome.
async fn welcomed(herald: &Herald, url: &str, headers: &[(&str, &str)]) -> (Client, Value) {
    let (ws, _) = herald.open(url, headers).await.expect("websocket upgrade");
    let mut c = Client { ws };
    let w = c.next_json().await;
    assert_eq!(w["type"], "welcome", "first frame: {w}");
    (c, w)
}

/// Opens `url`, expects the upgrade to succeed and the server to close at once (no other frame);
/// returns the close code and reason.
async fn closed(herald: &Herald, url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let (ws, _) = herald.open(url, headers).await.expect("websocket upgrade");
    let (code, reason, frames) = Client { ws }.expect_close().await;
    assert!(frames.is_empty(), "no frame before a refusal: {frames:?}");
    (code, reason)
}

/// Opens `url` and expects a plain HTTP refusal instead of an upgrade; returns the status.
async fn http_refusal(herald: &Herald, url: &str, headers: &[(&str, &str)]) -> u16 {
    match herald.open(url, headers).await {
        Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("expected an HTTP refusal of {url}, got {e}"),
        Ok((_, resp)) => panic!("expected an HTTP refusal of {url}, got {}", resp.status()),
    }
}

/// Asserts the connection still answers: an application ping gets its pong.
async fn still_open(c: &mut Client, id: u64) {
    c.send_json(json!({"type":"ping","id":id})).await;
    assert_eq!(c.next_json().await, json!({"type":"pong","id":id}));
}

#[tokio::test]
async fn token_in_header_query_or_auth_frame_is_welcomed() {
    let herald = herald().start().await;
    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    let exp = now() + 600;
    let tok = |sub: &str| {
        hs256(
            ALPHA_SECRET,
            None,
            &json!({"sub":sub,"aud":"alpha","exp":exp,"groups":["g1"]}),
        )
    };

    let bearer = format!("Bearer {}", tok("by-header"));
    let (mut h, wh) = welcomed(
        &herald,
        &herald.url("alpha", ""),
        &[("authorization", &bearer)],
    )
    .await;
    let (mut q, wq) = welcomed(
        &herald,
        &herald.url("alpha", &format!("token={}", tok("by-query"))),
        &[],
    )
    .await;
    let (ws, _) = herald
        .open(&herald.url("alpha", ""), &[])
        .await
        .expect("upgrade");
    let mut f = Client { ws };
    f.send_json(json!({"type":"auth","token":tok("by-frame")}))
        .await;
    let wf = f.next_json().await;

    let mut ids = Vec::new();
    for (w, user) in [(&wh, "by-header"), (&wq, "by-query"), (&wf, "by-frame")] {
        assert_eq!(w["type"], "welcome", "{w}");
        assert_eq!(w["user"], user, "{w}");
        assert_eq!(w["groups"], json!(["g1"]), "{w}");
        assert_eq!(w["expires"], exp, "{w}");
        let id = w["connection"].as_str().expect("connection id").to_string();
        assert!(id.starts_with("edge-1-"), "{id}");
        ids.push(id);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "connection ids are distinct: {ids:?}");

    // Each one is registered as its own user.
    for (c, user) in [
        (&mut h, "by-header"),
        (&mut q, "by-query"),
        (&mut f, "by-frame"),
    ] {
        let r = send(
            &mut grpc,
            publish("alpha", To::User(user), &format!("\"{user}\"")),
        )
        .await;
        assert_eq!(r.edges, 1);
        let m = c.next_msg().await;
        assert_eq!(
            (m["user"].as_str(), m["data"].as_str()),
            (Some(user), Some(user))
        );
    }

    // The scheme is case-insensitive, and the header wins over the query.
    let lower = format!("bearer {}", tok("lower"));
    let (_, w) = welcomed(
        &herald,
        &herald.url("alpha", "token=garbage"),
        &[("authorization", &lower)],
    )
    .await;
    assert_eq!(w["user"], "lower");
}

/// A client text frame (masked, as clients must send them).
fn masked_text(payload: &str) -> Vec<u8> {
    let p = payload.as_bytes();
    let mut f = vec![0x81u8];
    match u16::try_from(p.len()) {
        Ok(n) if n < 126 => f.push(0x80 | n as u8),
        Ok(n) => {
            f.push(0x80 | 126);
            f.extend_from_slice(&n.to_be_bytes());
        }
        Err(_) => panic!("test frames stay small"),
    }
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    f.extend_from_slice(&mask);
    f.extend(p.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    f
}

#[tokio::test]
async fn frames_sent_together_with_the_auth_frame_are_not_lost() {
    let herald = herald().start().await;

    // The auth frame and the next frame in one write after the upgrade.
    let (ws, _) = herald
        .open(&herald.url("alpha", ""), &[])
        .await
        .expect("upgrade");
    let mut c = Client { ws };
    let auth = json!({"type":"auth","token":token("alpha", "eager")}).to_string();
    c.ws.feed(Message::text(auth)).await.expect("feed");
    c.ws.feed(Message::text(json!({"type":"ping","id":5}).to_string()))
        .await
        .expect("feed");
    c.ws.flush().await.expect("flush");
    assert_eq!(c.next_json().await["user"], "eager");
    assert_eq!(c.next_json().await, json!({"type":"pong","id":5}));

    // The upgrade request, the auth frame and a ping in a single write: the frames arrive with
    // the request's bytes and must still be read.
    let mut tcp = tokio::net::TcpStream::connect(herald.ws)
        .await
        .expect("connect");
    let mut out = b"GET /ws/alpha HTTP/1.1\r\nhost: herald\r\nupgrade: websocket\r\n\
        connection: Upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        sec-websocket-version: 13\r\n\r\n"
        .to_vec();
    out.extend(masked_text(
        &json!({"type":"auth","token":token("alpha", "eager")}).to_string(),
    ));
    out.extend(masked_text(&json!({"type":"ping","id":6}).to_string()));
    tcp.write_all(&out).await.expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let head = loop {
        let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
            .await
            .expect("answer in time")
            .expect("read");
        assert!(
            n > 0,
            "closed during the upgrade: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head_text = String::from_utf8_lossy(&got[..head]).to_string();
    assert!(head_text.starts_with("HTTP/1.1 101 "), "{head_text}");
    assert!(
        head_text.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "the RFC 6455 sample accept key: {head_text}"
    );
    let ws =
        WebSocketStream::from_partially_read(tcp, got[head..].to_vec(), Role::Client, None).await;
    let mut c = Client { ws };
    assert_eq!(c.next_json().await["user"], "eager");
    assert_eq!(c.next_json().await, json!({"type":"pong","id":6}));
}

#[tokio::test]
async fn no_token_in_time_or_a_first_frame_that_is_not_auth_closes_4001() {
    // A deadline far enough above "at once" that a loaded machine still tells them apart.
    let deadline = Duration::from_millis(3000);
    let herald = herald()
        .edge("auth_timeout_ms", deadline.as_millis() as i64)
        .start()
        .await;
    let url = herald.url("alpha", "");

    // Nothing at all: closed once the auth deadline passes, not before.
    let started = Instant::now();
    let (code, reason) = closed(&herald, &url, &[]).await;
    assert_eq!((code, reason.as_str()), (4001, "authentication required"));
    let waited = started.elapsed();
    assert!(
        waited >= deadline - Duration::from_millis(100),
        "closed before the deadline: {waited:?}"
    );

    // A first frame that is not auth: closed at once.
    for first in [
        json!({"type":"ping","id":1}),
        json!({"type":"subscribe","id":1,"group":"news"}),
        json!({"type":"auth"}),
    ] {
        let (ws, _) = herald.open(&url, &[]).await.expect("upgrade");
        let mut c = Client { ws };
        let started = Instant::now();
        c.send_json(first.clone()).await;
        let (code, _, frames) = c.expect_close().await;
        assert_eq!(code, 4001, "after {first}");
        assert!(frames.is_empty(), "after {first}: {frames:?}");
        let waited = started.elapsed();
        assert!(
            waited < deadline - Duration::from_millis(500),
            "after {first}: closed only after {waited:?}"
        );
    }

    // An auth frame with a bad token is judged like any token.
    let (ws, _) = herald.open(&url, &[]).await.expect("upgrade");
    let mut c = Client { ws };
    c.send_json(json!({"type":"auth","token":"garbage"})).await;
    assert_eq!(c.expect_close().await.0, 4002);
}

#[tokio::test]
async fn every_bad_token_gets_its_close_code() {
    let herald = herald().projects(&shared_secret_projects()).start().await;
    let q = |t: &str| herald.url("alpha", &format!("token={t}"));

    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("garbage", "garbage".into(), 4002, "invalid token"),
        ("three garbage parts", "x.y.z".into(), 4002, "invalid token"),
        (
            "bad signature",
            hs256(
                "another-secret-0123456789abcdef01234567",
                None,
                &claims("alpha", "u"),
            ),
            4002,
            "invalid token",
        ),
        (
            "unknown kid",
            hs256(ALPHA_SECRET, Some("zzz"), &claims("alpha", "u")),
            4002,
            "invalid token",
        ),
        (
            "alg none",
            format!(
                "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
                b64url(&claims("alpha", "u").to_string())
            ),
            4002,
            "invalid token",
        ),
        (
            "expired",
            hs256(
                ALPHA_SECRET,
                None,
                &json!({"sub":"u","aud":"alpha","exp":now() - 600}),
            ),
            4005,
            "token expired",
        ),
        (
            "another project's aud",
            hs256(ALPHA_SECRET, None, &claims("beta", "u")),
            4003,
            "forbidden",
        ),
        (
            "invalid sub",
            hs256(ALPHA_SECRET, None, &claims("alpha", "a.*")),
            4003,
            "forbidden",
        ),
        (
            "invalid group",
            hs256(
                ALPHA_SECRET,
                None,
                &json!({"sub":"u","aud":"alpha","exp":now()+600,"groups":["a b"]}),
            ),
            4003,
            "forbidden",
        ),
        (
            "no exp",
            hs256(ALPHA_SECRET, None, &json!({"sub":"u","aud":"alpha"})),
            4003,
            "forbidden",
        ),
        (
            "no sub",
            hs256(ALPHA_SECRET, None, &json!({"aud":"alpha","exp":now()+600})),
            4003,
            "forbidden",
        ),
    ];
    for (what, tok, want, reason) in &cases {
        let (code, got) = closed(&herald, &q(tok), &[]).await;
        assert_eq!((code, got.as_str()), (*want, *reason), "{what}");
    }

    let valid = token("alpha", "u");
    let (code, reason) = closed(&herald, &herald.url("nope", &format!("token={valid}")), &[]).await;
    assert_eq!((code, reason.as_str()), (4004, "unknown project"));

    for path in ["/other", "/ws/", "/ws/alpha/extra", "/"] {
        let url = format!("ws://{}{path}?token={valid}", herald.ws);
        assert_eq!(http_refusal(&herald, &url, &[]).await, 404, "{path}");
    }

    // The same token works where it belongs.
    herald.connect("alpha", &valid).await;
}

/// Base64url without padding, as in a JWT.
fn b64url(s: &str) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &c)| n | (u32::from(c) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(A[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

#[tokio::test]
async fn refuse_before_upgrade_answers_with_http_statuses() {
    let herald = herald()
        .projects(&shared_secret_projects())
        .edge("refuse_before_upgrade", true)
        .start()
        .await;
    let q = |project: &str, t: &str| herald.url(project, &format!("token={t}"));
    let expired = hs256(
        ALPHA_SECRET,
        None,
        &json!({"sub":"u","aud":"alpha","exp":now() - 600}),
    );
    let cases = [
        ("missing token", herald.url("alpha", ""), 401),
        ("garbage token", q("alpha", "garbage"), 401),
        (
            "bad signature",
            q(
                "alpha",
                &hs256(
                    "x-secret-0123456789abcdef0123456789ab",
                    None,
                    &claims("alpha", "u"),
                ),
            ),
            401,
        ),
        ("expired", q("alpha", &expired), 401),
        (
            "wrong aud",
            q("alpha", &hs256(ALPHA_SECRET, None, &claims("beta", "u"))),
            403,
        ),
        (
            "invalid sub",
            q("alpha", &hs256(ALPHA_SECRET, None, &claims("alpha", "a.*"))),
            403,
        ),
        ("unknown project", q("nope", &token("alpha", "u")), 404),
        (
            "unknown path",
            format!("ws://{}/other?token={}", herald.ws, token("alpha", "u")),
            404,
        ),
    ];
    for (what, url, status) in &cases {
        assert_eq!(http_refusal(&herald, url, &[]).await, *status, "{what}");
    }
    let bearer = format!("Bearer {}", token("alpha", "h"));
    let (_, w) = welcomed(
        &herald,
        &herald.url("alpha", ""),
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(w["user"], "h");
    herald
        .connect("beta", &hs256(ALPHA_SECRET, None, &claims("beta", "b")))
        .await;
}

/// Claims for project `alpha` signed with one of the test key pairs, without a `kid`.
fn signed_without_kid(claims: &Value) -> String {
    let pem = std::fs::read(keys_dir().join("es256-private.pem")).expect("key");
    let key = jsonwebtoken::EncodingKey::from_ec_pem(&pem).expect("pem");
    let h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    jsonwebtoken::encode(&h, claims, &key).expect("sign")
}

fn three_key_projects() -> String {
    let k = keys_dir();
    let path = |name: &str| k.join(name).display().to_string();
    format!(
        r#"
        [[projects]]
        id = "alpha"
        api_keys = ["{ALPHA_KEY}"]
        [[projects.keys]]
        kid = "k-es"
        alg = "ES256"
        public_key_file = "{es}"
        [[projects.keys]]
        kid = "k-rs"
        alg = "RS256"
        public_key_file = "{rs}"
        [[projects.keys]]
        kid = "k-ed"
        alg = "EdDSA"
        public_key_file = "{ed}"
        [[projects]]
        id = "beta"
        api_keys = ["{BETA_KEY}"]
        [[projects.keys]]
        alg = "HS256"
        secret = "{BETA_SECRET}"
        "#,
        es = path("es256-public.pem"),
        rs = path("rs256-public.pem"),
        ed = path("eddsa-public.pem"),
    )
}

#[tokio::test]
async fn keys_are_chosen_by_kid_and_each_pins_its_algorithm() {
    let herald = herald().projects(&three_key_projects()).start().await;
    let q = |t: &str| herald.url("alpha", &format!("token={t}"));

    for (alg, kid, user) in [
        ("es256", "k-es", "ec-user"),
        ("rs256", "k-rs", "rsa-user"),
        ("eddsa", "k-ed", "ed-user"),
    ] {
        let (_, w) = welcomed(&herald, &q(&signed(alg, kid, &claims("alpha", user))), &[]).await;
        assert_eq!(w["user"], user, "{alg} with kid {kid}");
    }

    // The header's algorithm never chooses: a key named by kid verifies only with its own.
    let rs_public = std::fs::read(keys_dir().join("rs256-public.pem")).expect("public key");
    let mut confused = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    confused.kid = Some("k-rs".into());
    let hmac_with_public_key = jsonwebtoken::encode(
        &confused,
        &claims("alpha", "mallory"),
        &jsonwebtoken::EncodingKey::from_secret(&rs_public),
    )
    .expect("sign");
    let cases = [
        (
            "ES256 signature under kid k-rs",
            signed("es256", "k-rs", &claims("alpha", "u")),
        ),
        (
            "RS256 signature under kid k-ed",
            signed("rs256", "k-ed", &claims("alpha", "u")),
        ),
        (
            "EdDSA signature under kid k-es",
            signed("eddsa", "k-es", &claims("alpha", "u")),
        ),
        ("HS256 keyed with the RSA public key", hmac_with_public_key),
        (
            "no kid where there are several keys",
            signed_without_kid(&claims("alpha", "u")),
        ),
        (
            "unknown kid",
            signed("es256", "k-zz", &claims("alpha", "u")),
        ),
    ];
    for (what, tok) in &cases {
        let (code, _) = closed(&herald, &q(tok), &[]).await;
        assert_eq!(code, 4002, "{what}");
    }

    // Asymmetric keys pin the audience too.
    let (code, _) = closed(
        &herald,
        &herald.url(
            "beta",
            &format!("token={}", signed("es256", "k-es", &claims("alpha", "u"))),
        ),
        &[],
    )
    .await;
    assert_eq!(code, 4002, "beta has no key k-es");
    let (code, _) = closed(
        &herald,
        &q(&signed("es256", "k-es", &claims("beta", "u"))),
        &[],
    )
    .await;
    assert_eq!(code, 4003, "a token for beta signed with alpha's key");
}

const OLD_SECRET: &str = "old-secret-0123456789abcdef0123456789ab";
const NEW_SECRET: &str = "new-secret-0123456789abcdef0123456789ab";

/// Replaces the `[[projects]]` of the running sandbox's configuration file.
fn rewrite_projects(herald: &Herald, projects_toml: &str) {
    let text = std::fs::read_to_string(&herald.config_path).expect("read config");
    let mut cfg: toml::Table = text.parse().expect("config toml");
    let projects: toml::Table = projects_toml.parse().expect("projects toml");
    cfg.insert("projects".into(), projects["projects"].clone());
    std::fs::write(&herald.config_path, toml::to_string(&cfg).expect("toml"))
        .expect("write config");
}

fn alpha_with_keys(keys: &str) -> String {
    format!(
        r#"
        [[projects]]
        id = "alpha"
        api_keys = ["{ALPHA_KEY}"]
        {keys}
        "#
    )
}

const OLD_KEY: &str = r#"
        [[projects.keys]]
        kid = "old"
        alg = "HS256"
        secret = "old-secret-0123456789abcdef0123456789ab"
"#;
const NEW_KEY: &str = r#"
        [[projects.keys]]
        kid = "new"
        alg = "HS256"
        secret = "new-secret-0123456789abcdef0123456789ab"
"#;

#[tokio::test]
async fn sighup_reloads_keys_and_a_broken_file_keeps_the_running_ones() {
    let mut herald = herald()
        .projects(&alpha_with_keys(OLD_KEY))
        .capture_stderr()
        .start()
        .await;
    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    let new_token = |sub: &str| hs256(NEW_SECRET, Some("new"), &claims("alpha", sub));
    let ws = herald.ws;
    let q = |t: &str| format!("ws://{ws}/ws/alpha?token={t}");

    let mut before = herald
        .connect(
            "alpha",
            &hs256(OLD_SECRET, Some("old"), &claims("alpha", "before")),
        )
        .await;
    let (code, _) = closed(&herald, &q(&new_token("early")), &[]).await;
    assert_eq!(code, 4002, "kid new is not known yet");

    rewrite_projects(&herald, &alpha_with_keys(&format!("{OLD_KEY}{NEW_KEY}")));
    herald.signal("HUP");
    let line = herald.wait_line("herald reloaded").await;
    assert_eq!(line, "herald reloaded projects=1");

    let mut after = herald.connect("alpha", &new_token("after")).await;
    herald
        .connect(
            "alpha",
            &hs256(OLD_SECRET, Some("old"), &claims("alpha", "again")),
        )
        .await;
    send(
        &mut grpc,
        publish("alpha", To::Broadcast, r#""after reload""#),
    )
    .await;
    assert_eq!(
        before.next_msg().await["data"],
        "after reload",
        "a connection from before the reload stays"
    );
    assert_eq!(after.next_msg().await["data"], "after reload");

    // A broken key file: the reload is refused as a whole and the running keys stay, although
    // the new file no longer lists kid "new".
    let broken = herald.config_path.with_file_name("broken.pem");
    std::fs::write(
        &broken,
        "-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n",
    )
    .expect("write pem");
    let broken_key = format!(
        r#"
        [[projects.keys]]
        kid = "bad"
        alg = "ES256"
        public_key_file = "{}"
        "#,
        broken.display()
    );
    rewrite_projects(&herald, &alpha_with_keys(&format!("{OLD_KEY}{broken_key}")));
    herald.signal("HUP");
    // The refusal is awaited (a SIGHUP either reloads and says so on stdout, or logs this); a
    // wait for the absence of "herald reloaded" alone would pass on a machine slow to reload.
    eventually(WAIT, async || {
        let log = herald.stderr();
        if log.contains("reload refused") {
            Ok(())
        } else {
            Err(format!("no refused reload in the log:\n{log}"))
        }
    })
    .await;
    let reloaded = tokio::time::timeout(
        Duration::from_millis(200),
        herald.wait_line("herald reloaded"),
    )
    .await;
    assert!(
        reloaded.is_err(),
        "a broken file must not be reloaded: {reloaded:?}"
    );
    let (_, w) = welcomed(&herald, &q(&new_token("still")), &[]).await;
    assert_eq!(
        w["user"], "still",
        "the running keys stay after a refused reload"
    );
    send(
        &mut grpc,
        publish("alpha", To::Broadcast, r#""after refusal""#),
    )
    .await;
    assert_eq!(before.next_msg().await["data"], "after refusal");

    // Once fixed, the next SIGHUP applies the file: kid "new" is gone.
    rewrite_projects(&herald, &alpha_with_keys(OLD_KEY));
    herald.signal("HUP");
    herald.wait_line("herald reloaded").await;
    let (code, _) = closed(&herald, &q(&new_token("gone")), &[]).await;
    assert_eq!(code, 4002, "kid new was removed");
    herald
        .connect(
            "alpha",
            &hs256(OLD_SECRET, Some("old"), &claims("alpha", "old-still")),
        )
        .await;
}

#[tokio::test]
async fn sub_protocols_are_negotiated() {
    let herald = herald().start().await;
    let url = herald.url("alpha", &format!("token={}", token("alpha", "p")));

    let (ws, resp) = herald
        .open(&url, &[])
        .await
        .expect("upgrade without a sub-protocol");
    assert_eq!(resp.headers().get("sec-websocket-protocol"), None);
    assert_eq!(Client { ws }.next_json().await["type"], "welcome");

    let (ws, resp) = herald
        .open(&url, &[("sec-websocket-protocol", "foo, herald.v1")])
        .await
        .expect("upgrade with herald.v1 offered");
    let chosen = resp
        .headers()
        .get("sec-websocket-protocol")
        .map(|v| v.to_str().expect("ascii"));
    assert_eq!(chosen, Some("herald.v1"));
    assert_eq!(Client { ws }.next_json().await["type"], "welcome");

    assert_eq!(
        http_refusal(&herald, &url, &[("sec-websocket-protocol", "foo")]).await,
        400
    );
    assert_eq!(
        http_refusal(
            &herald,
            &url,
            &[("sec-websocket-protocol", "foo, herald.v2")]
        )
        .await,
        400
    );
}

#[tokio::test]
async fn an_expired_token_closes_4005_unless_refreshed() {
    let herald = herald().edge("token_leeway_secs", 0).start().await;
    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    // `exp` is 3-4 s away: time for a loaded machine to connect both and refresh one first.
    let started = Instant::now();
    let short = hs256(
        ALPHA_SECRET,
        None,
        &json!({"sub":"shorty","aud":"alpha","exp":now() + 4}),
    );
    let mut expiring = herald.connect("alpha", &short).await;
    let mut refreshed = herald.connect("alpha", &short).await;

    refreshed
        .send_json(json!({"type":"refresh","id":1,"token":token("alpha", "shorty")}))
        .await;
    assert_eq!(refreshed.next_json().await, json!({"type":"ack","id":1}));

    let (code, reason, _) = expiring.expect_close().await;
    assert_eq!((code, reason.as_str()), (4005, "token expired"));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(2900) && waited < Duration::from_secs(10),
        "closed {waited:?} after connecting with a token valid for about 4 s"
    );

    let at = started + Duration::from_secs(6);
    tokio::time::sleep_until(at.into()).await;
    send(
        &mut grpc,
        publish("alpha", To::User("shorty"), r#""still here""#),
    )
    .await;
    assert_eq!(refreshed.next_msg().await["data"], "still here");
    still_open(&mut refreshed, 2).await;
}

#[tokio::test]
async fn a_refresh_for_another_user_closes_4010_and_a_bad_refresh_is_an_error_frame() {
    let herald = herald().start().await;
    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    let mut c = herald.connect("alpha", &token("alpha", "rita")).await;

    c.send_json(json!({"type":"refresh","id":7,"token":"garbage"}))
        .await;
    let e = c.next_json().await;
    assert_eq!(
        (e["type"].as_str(), e["id"].as_u64(), e["code"].as_u64()),
        (Some("error"), Some(7), Some(4402)),
        "{e}"
    );
    c.send_json(json!({"type":"refresh","id":8,"token":token("beta", "rita")}))
        .await;
    let e = c.next_json().await;
    assert_eq!(
        (e["id"].as_u64(), e["code"].as_u64()),
        (Some(8), Some(4402)),
        "beta's token: {e}"
    );
    let expired = hs256(
        ALPHA_SECRET,
        None,
        &json!({"sub":"rita","aud":"alpha","exp":now() - 600}),
    );
    c.send_json(json!({"type":"refresh","id":9,"token":expired}))
        .await;
    let e = c.next_json().await;
    assert_eq!(
        (e["id"].as_u64(), e["code"].as_u64()),
        (Some(9), Some(4402)),
        "expired: {e}"
    );
    c.send_json(json!({"type":"refresh","id":10})).await;
    let e = c.next_json().await;
    assert_eq!(
        (e["id"].as_u64(), e["code"].as_u64()),
        (Some(10), Some(4400)),
        "no token: {e}"
    );

    // Still connected and receiving.
    still_open(&mut c, 11).await;
    send(&mut grpc, publish("alpha", To::User("rita"), "1")).await;
    assert_eq!(c.next_msg().await["data"], 1);

    c.send_json(json!({"type":"refresh","id":12,"token":token("alpha", "someone-else")}))
        .await;
    let (code, reason, frames) = c.expect_close().await;
    assert_eq!(
        (code, reason.as_str()),
        (4010, "refreshed token names another user")
    );
    assert!(frames.is_empty(), "no ack before the close: {frames:?}");
}

#[tokio::test]
async fn a_token_accepted_within_the_leeway_is_not_closed_at_once() {
    // A leeway of 30 s (default 5 s, longer here so a loaded machine stays far from the real
    // end). A token whose `exp` passed 2 s ago is accepted at connect...
    let herald = herald().edge("token_leeway_secs", 30).start().await;
    let exp = now() - 2;
    let mut c = herald
        .connect(
            "alpha",
            &hs256(
                ALPHA_SECRET,
                None,
                &json!({"sub":"skewed","aud":"alpha","exp":exp}),
            ),
        )
        .await;
    // ...so it must live until `exp + leeway` (about 28 s from now), not be closed with 4005 by
    // the next ticks of the hub (every second), which compared `exp` without the leeway.
    let r = tokio::time::timeout(Duration::from_millis(2500), c.expect_close()).await;
    assert!(
        r.is_err(),
        "welcomed, then closed {:?} right away: the leeway applies at connect but not to the lifetime",
        r.ok()
    );
    still_open(&mut c, 1).await;
}
