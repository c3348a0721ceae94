//! Server-Sent Events through the real binary (docs/protocol.md section 14): a raw HTTP client
//! reading the stream as a browser's `EventSource` does receives group, user and broadcast
//! messages (beside a WebSocket client of the same groups); every refusal is its documented
//! HTTP status; `Last-Event-ID` resumes every stream without loss or duplicate; heartbeats and
//! the `close` event; the same through nginx (`deploy/nginx/herald.conf`), unbuffered.

use std::collections::BTreeMap;

use herald_core::proto::v1::{DisconnectRequest, disconnect_request};
use herald_tests::nginx::*;
use herald_tests::sse::*;
use herald_tests::tls::*;
use herald_tests::*;
use serde_json::{Value, json};

/// `alpha` keeps the history of `news`, of its users and of its broadcasts; `beta` keeps none
/// and lets a user hold two connections.
const PROJECTS: &str = r#"
[[projects]]
id = "alpha"
api_keys = ["alpha-api-key-0123456789"]
[[projects.keys]]
alg = "HS256"
secret = "alpha-secret-0123456789abcdef0123456789"
[projects.history]
groups = ["news"]
users = true
broadcast = true
size = 5000
ttl_secs = 600

[[projects]]
id = "beta"
api_keys = ["beta-api-key-0123456789"]
[[projects.keys]]
alg = "HS256"
secret = "beta-secret-0123456789abcdef0123456789ab"
[projects.limits]
max_connections_per_user = 2
"#;

/// A token of `project` for `sub` with `groups` and `channels` claims.
fn token_with(project: &str, sub: &str, groups: &[&str], channels: &[&str]) -> String {
    let mut c = claims(project, sub);
    c["groups"] = json!(groups);
    c["channels"] = json!(channels);
    let secret = if project == "beta" {
        BETA_SECRET
    } else {
        ALPHA_SECRET
    };
    hs256(secret, None, &c)
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

#[tokio::test]
async fn group_user_and_broadcast_messages_reach_an_sse_client() {
    let herald = herald().projects(PROJECTS).start().await;
    let mut grpc = herald.grpc(Some(BETA_KEY)).await;
    let t = token_with("beta", "alice", &["news"], &["extra-*"]);
    let mut s = SseClient::open(
        herald.ws,
        "/sse/beta?groups=extra-1",
        &[
            ("authorization", &bearer(&t)),
            ("origin", "https://app.example"),
        ],
    )
    .await
    .expect("the stream opens");
    assert_eq!(
        s.header("content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    assert_eq!(s.header("cache-control"), Some("no-cache, no-store"));
    assert_eq!(s.header("x-accel-buffering"), Some("no"));
    assert_eq!(
        s.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    let welcome = s.next_json().await;
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["user"], "alice");
    assert_eq!(welcome["groups"], json!(["news", "extra-1"]));
    // The token in the query, as a browser's EventSource sends it.
    let t2 = token_with("beta", "bob", &["news"], &[]);
    let mut q = SseClient::open(herald.ws, &format!("/sse/beta?token={t2}"), &[])
        .await
        .expect("the stream opens");
    assert_eq!(q.next_json().await["user"], "bob");
    // A WebSocket client of the same group gets the same text.
    let mut ws = herald
        .connect("beta", &token_with("beta", "carol", &["news"], &[]))
        .await;
    herald
        .wait_metric("herald_edge_connections{protocol=\"sse\"}", 2.0)
        .await;
    herald
        .wait_metric("herald_edge_connections{protocol=\"native\"}", 1.0)
        .await;

    send(
        &mut grpc,
        publish("beta", To::Group("news"), r#"{"headline":"rain"}"#),
    )
    .await;
    let over_sse = s.next_msg().await;
    assert_eq!(
        over_sse,
        json!({"type":"msg","kind":"group","group":"news","data":{"headline":"rain"}})
    );
    assert_eq!(q.next_msg().await, over_sse);
    assert_eq!(ws.next_msg().await, over_sse);

    send(&mut grpc, publish("beta", To::Group("extra-1"), "\"x\"")).await;
    assert_eq!(s.next_msg().await["group"], "extra-1");
    send(
        &mut grpc,
        publish("beta", To::User("alice"), "{\"to\":\n\"me\"}"),
    )
    .await;
    let m = s.next_msg().await;
    assert_eq!(
        (m["kind"].as_str(), m["user"].as_str()),
        (Some("user"), Some("alice"))
    );
    assert_eq!(
        m["data"],
        json!({"to": "me"}),
        "a payload with a line break"
    );
    send(&mut grpc, publish("beta", To::Broadcast, "[1,2]")).await;
    assert_eq!(s.next_msg().await["data"], json!([1, 2]));
    assert_eq!(q.next_msg().await["data"], json!([1, 2]));
    assert_eq!(ws.next_msg().await["data"], json!([1, 2]));
    // Bob got neither alice's group nor her user message: the broadcast came right after news.
    herald
        .wait_metric("herald_edge_deliveries_total{protocol=\"sse\"}", 6.0)
        .await;

    // A client that goes away is gone from the hub.
    drop(s);
    drop(q);
    herald
        .wait_metric("herald_edge_connections{protocol=\"sse\"}", 0.0)
        .await;
    herald
        .wait_metric(
            "herald_edge_closes_total{code=\"peer\",protocol=\"sse\"}",
            2.0,
        )
        .await;
}

#[tokio::test]
async fn refusals_are_documented_http_statuses() {
    let herald = herald()
        .projects(PROJECTS)
        .edge("max_groups_per_connection", 3)
        .start()
        .await;
    let good = token_with("beta", "alice", &["news"], &["extra-*"]);
    let mut expired = claims("beta", "alice");
    expired["exp"] = json!(jsonwebtoken::get_current_timestamp() - 600);
    let expired = hs256(BETA_SECRET, None, &expired);
    // Signed with beta's key, for another audience.
    let other_aud = hs256(BETA_SECRET, None, &claims("alpha", "alice"));
    let cases: Vec<(&str, String, Option<String>, u16, &str)> = vec![
        (
            "no token",
            "/sse/beta".into(),
            None,
            401,
            "authentication required\n",
        ),
        (
            "malformed token",
            "/sse/beta".into(),
            Some(bearer("not.a.jwt")),
            401,
            "invalid token\n",
        ),
        (
            "expired token",
            "/sse/beta".into(),
            Some(bearer(&expired)),
            401,
            "token expired\n",
        ),
        (
            "a token for another audience",
            "/sse/beta".into(),
            Some(bearer(&other_aud)),
            403,
            "forbidden\n",
        ),
        (
            "a group the channels do not allow",
            "/sse/beta?groups=extra-1,secret".into(),
            Some(bearer(&good)),
            403,
            "forbidden\n",
        ),
        (
            "a bad group name",
            "/sse/beta?groups=a%20b".into(),
            Some(bearer(&good)),
            400,
            "",
        ),
        (
            "too many groups",
            "/sse/beta?groups=extra-1&groups=extra-2,extra-3".into(),
            Some(bearer(&good)),
            400,
            "bad request: groups: too many groups on this connection\n",
        ),
        (
            "a Last-Event-ID not issued by Herald",
            "/sse/beta?last_event_id=42".into(),
            Some(bearer(&good)),
            400,
            "bad request: Last-Event-ID is not an id issued by this server\n",
        ),
        (
            "an unknown project",
            "/sse/nope".into(),
            Some(bearer(&good)),
            404,
            "unknown project\n",
        ),
        (
            "another path",
            "/sse/beta/x".into(),
            Some(bearer(&good)),
            404,
            "",
        ),
    ];
    for (what, path, auth, status, body) in cases {
        let head: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let r = SseClient::open(herald.ws, &path, &head)
            .await
            .err()
            .unwrap_or_else(|| panic!("{what}: the stream opened"));
        assert_eq!(r.status, status, "{what}: {r:?}");
        if !body.is_empty() {
            assert_eq!(r.body, body, "{what}");
        }
        assert_eq!(r.header("content-type"), Some("text/plain"), "{what}");
    }
    let r = http_request(herald.ws, "POST", "/sse/beta", &[], b"").await;
    assert_eq!(r.status, 405, "{r:?}");
    assert_eq!(
        herald
            .metric("herald_edge_connects_total{result=\"invalid_token\",protocol=\"sse\"}")
            .await,
        1.0
    );

    // The project's cap of connections per user: the third one is refused before it starts.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = SseClient::open(herald.ws, "/sse/beta", &[("authorization", &bearer(&good))])
            .await
            .expect("under the cap");
        assert_eq!(s.next_json().await["type"], "welcome");
        held.push(s);
    }
    let r = SseClient::open(herald.ws, "/sse/beta", &[("authorization", &bearer(&good))])
        .await
        .err()
        .expect("over the cap");
    assert_eq!(
        (r.status, r.body.as_str()),
        (429, "too many connections for this user\n")
    );
}

/// Collects what a resumed stream sends until `streams` `resumed` frames and `total` messages
/// came; returns the messages' offsets by stream kind.
async fn until_resumed(
    s: &mut SseClient,
    streams: usize,
    total: usize,
) -> BTreeMap<String, Vec<u64>> {
    let mut by_stream: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut resumed = 0;
    let mut msgs = 0;
    while resumed < streams || msgs < total {
        let v = s.next_json().await;
        match v["type"].as_str() {
            Some("msg") => {
                msgs += 1;
                by_stream
                    .entry(v["kind"].as_str().expect("kind").to_string())
                    .or_default()
                    .push(v["offset"].as_u64().expect("offset"));
            }
            Some("resumed") => {
                assert_eq!(v["recovered"], true, "{v}");
                resumed += 1;
            }
            _ => panic!("unexpected frame while resuming: {v}"),
        }
    }
    by_stream
}

#[tokio::test]
async fn last_event_id_resumes_every_stream_without_loss() {
    let herald = herald().projects(PROJECTS).start().await;
    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    let t = token_with("alpha", "carol", &["news"], &[]);
    let auth = bearer(&t);
    let targets = [To::Group("news"), To::User("carol"), To::Broadcast];
    let mut s = SseClient::open(herald.ws, "/sse/alpha", &[("authorization", &auth)])
        .await
        .expect("open");
    assert_eq!(s.next_json().await["type"], "welcome");
    assert_eq!(s.last_id, None, "no id before a recoverable message");
    for round in 1..=2 {
        for to in targets {
            send(&mut grpc, publish("alpha", to, &format!("{round}"))).await;
            let m = s.next_msg().await;
            assert_eq!(m["offset"], round, "{m}");
        }
    }
    let id = s.last_id.clone().expect("an id");
    assert!(
        id.contains("g:news:") && id.contains(".u:") && id.contains(".b:"),
        "the id carries every stream: {id}"
    );
    drop(s);
    herald
        .wait_metric("herald_edge_connections{protocol=\"sse\"}", 0.0)
        .await;
    // Missed: offsets 3..=5 of each stream, interleaved.
    for n in 3..=5 {
        for to in targets {
            send(&mut grpc, publish("alpha", to, &format!("{n}"))).await;
        }
    }
    // As a browser reconnects: the same URL, the last id in the header.
    let mut s = SseClient::open(
        herald.ws,
        "/sse/alpha",
        &[("authorization", &auth), ("last-event-id", &id)],
    )
    .await
    .expect("reopen");
    assert_eq!(s.next_json().await["type"], "welcome");
    // Live ones published while the replays run: offset 6 of each.
    for to in targets {
        send(&mut grpc, publish("alpha", to, "6")).await;
    }
    let got = until_resumed(&mut s, 3, 12).await;
    for (stream, offsets) in &got {
        assert_eq!(
            offsets,
            &vec![3, 4, 5, 6],
            "{stream}: nothing lost, nothing twice"
        );
    }
    assert_eq!(got.len(), 3);

    // Again, the id passed in the query (a client opening a new stream itself).
    let id = s.last_id.clone().expect("an id");
    drop(s);
    herald
        .wait_metric("herald_edge_connections{protocol=\"sse\"}", 0.0)
        .await;
    for to in targets {
        send(&mut grpc, publish("alpha", to, "7")).await;
    }
    let mut s = SseClient::open(
        herald.ws,
        &format!("/sse/alpha?last_event_id={}", percent_encode(&id)),
        &[("authorization", &auth)],
    )
    .await
    .expect("reopen");
    assert_eq!(s.next_json().await["type"], "welcome");
    let got = until_resumed(&mut s, 3, 3).await;
    for (stream, offsets) in &got {
        assert_eq!(offsets, &vec![7], "{stream}");
    }
    herald
        .wait_metric("herald_edge_resumes_total{result=\"recovered\"}", 6.0)
        .await;
}

#[tokio::test]
async fn heartbeats_and_the_close_event() {
    let herald = herald()
        .projects(PROJECTS)
        .edge("ping_interval_secs", 1)
        .edge("pong_timeout_secs", 1)
        .start()
        .await;
    let t = token_with("beta", "dave", &[], &[]);
    let mut s = SseClient::open(herald.ws, "/sse/beta", &[("authorization", &bearer(&t))])
        .await
        .expect("open");
    let welcome = s.next_json().await;
    assert_eq!(welcome["ping_interval"], 1);
    // Several heartbeats: no pong is expected, the stream stays (a pong timeout of 1 s would
    // have closed a WebSocket that did not answer).
    for _ in 0..3 {
        let ev = s.next_event().await.expect("a heartbeat");
        assert_eq!(ev.comment.as_deref(), Some(""), "{ev:?}");
    }
    let mut grpc = herald.grpc(Some(BETA_KEY)).await;
    grpc.disconnect(DisconnectRequest {
        project: "beta".into(),
        who: Some(disconnect_request::Who::User("dave".into())),
        reconnect_after_ms: 1500,
    })
    .await
    .expect("disconnect");
    let (close, before) = s.expect_close().await;
    assert_eq!(close.retry, Some(1500), "the hint is the reconnection time");
    let data: Value = serde_json::from_str(&close.data).expect("json");
    assert_eq!(
        data,
        json!({"code": 4009, "reason": "disconnected by operator", "reconnect_after_ms": 1500})
    );
    assert_eq!(
        before.last().map(|v| v["type"].clone()),
        Some(json!("disconnect")),
        "the disconnect frame as on a WebSocket: {before:?}"
    );
    s.expect_end().await;
    herald
        .wait_metric(
            "herald_edge_closes_total{code=\"operator\",protocol=\"sse\"}",
            1.0,
        )
        .await;
}

#[tokio::test]
async fn through_nginx_unbuffered_and_resumed() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::root("test root");
    let (crt, key) =
        ca.server(&[DOMAIN], &rcgen::PKCS_ECDSA_P256_SHA256)
            .write(dir.path(), "site", &[]);
    let herald = herald()
        .projects(PROJECTS)
        .edge("ping_interval_secs", 1)
        .start()
        .await;
    let (tls_port, plain_port) = (free_port(), free_port());
    let conf = nginx_config(
        dir.path(),
        &NginxConf {
            tls_port,
            plain_port: Some(plain_port),
            cert: &crt,
            key: &key,
            edges: &[herald.ws],
        },
    );
    let nginx = Nginx::start(dir.path(), &conf, tls_port).await;
    let front = std::net::SocketAddr::from(([127, 0, 0, 1], plain_port));
    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    let t = token_with("alpha", "erin", &[], &["news"]);
    let path = format!("/herald-sse/alpha?token={t}&groups=news");
    let mut s = SseClient::open(front, &path, &[])
        .await
        .unwrap_or_else(|r| panic!("through nginx: {r:?}\n{}", nginx.error_log()));
    assert_eq!(s.next_json().await["groups"], json!(["news"]));
    // Each message arrives on its own: nothing waits in a buffer for more to come.
    for n in 1..=3 {
        send(
            &mut grpc,
            publish("alpha", To::Group("news"), &format!("{n}")),
        )
        .await;
        assert_eq!(s.next_msg().await["data"], n);
    }
    // Heartbeats pass too.
    let ev = s.next_event().await.expect("a heartbeat");
    assert!(ev.comment.is_some(), "{ev:?}");
    let id = s.last_id.clone().expect("an id");
    drop(s);
    herald
        .wait_metric("herald_edge_connections{protocol=\"sse\"}", 0.0)
        .await;
    for n in 4..=5 {
        send(
            &mut grpc,
            publish("alpha", To::Group("news"), &format!("{n}")),
        )
        .await;
    }
    let mut s = SseClient::open(front, &path, &[("last-event-id", &id)])
        .await
        .expect("reopen through nginx");
    assert_eq!(s.next_json().await["type"], "welcome");
    let got = until_resumed(&mut s, 1, 2).await;
    assert_eq!(got.get("group"), Some(&vec![4, 5]));
    // Refusals pass through as they are.
    let r = SseClient::open(front, "/herald-sse/alpha", &[])
        .await
        .err()
        .expect("refused");
    assert_eq!(r.status, 401);
}
