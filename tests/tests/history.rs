//! History and resume on one node, through the real binary: recoverable publishes answered with
//! their offset, a client that comes back getting exactly what it missed (no gap, no duplicate
//! at the seam with live messages published meanwhile), resume at connect, a lost epoch told,
//! a replay far beyond the connection's queue never cut as a slow consumer.

use std::collections::BTreeSet;
use std::time::Duration;

use herald_tests::*;
use serde_json::{Value, json};

const PROJECTS: &str = r#"
[[projects]]
id = "alpha"
api_keys = ["alpha-api-key-0123456789"]
[[projects.keys]]
alg = "HS256"
secret = "alpha-secret-0123456789abcdef0123456789"
[projects.history]
groups = ["news", "chat/*"]
users = true
size = 5000
ttl_secs = 600
"#;

/// A native client of `alpha` allowed the recoverable groups, authenticated by an `auth` frame
/// carrying `extra` fields (`resume`).
async fn connect_with(herald: &Herald, sub: &str, extra: Value) -> Client {
    let mut claims = claims("alpha", sub);
    claims["channels"] = json!(["news", "chat/*", "other"]);
    herald
        .connect_auth("alpha", &hs256(ALPHA_SECRET, None, &claims), extra)
        .await
}

/// Reads frames until `resumed` for the request `id`; returns the messages before it, the
/// `resumed` frame, and the messages that came after it in the same read.
async fn until_resumed(c: &mut Client, id: u64) -> (Vec<Value>, Value) {
    let mut msgs = Vec::new();
    loop {
        let v = c.next_json().await;
        match v["type"].as_str() {
            Some("msg") => msgs.push(v),
            Some("resumed") if v["id"] == id => return (msgs, v),
            Some("ack") | Some("resumed") => {}
            _ => panic!("unexpected frame while resuming: {v}"),
        }
    }
}

fn offsets(msgs: &[Value]) -> Vec<u64> {
    msgs.iter()
        .map(|m| m["offset"].as_u64().expect("offset"))
        .collect()
}

#[tokio::test]
async fn a_client_that_comes_back_gets_exactly_what_it_missed_then_live_messages() {
    let herald = herald().projects(PROJECTS).start().await;
    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    let mut c = connect_with(&herald, "u1", json!({})).await;
    assert_eq!(c.subscribe(1, "news").await["type"], "ack");
    let mut epoch = 0;
    for n in 1..=3 {
        let r = send(
            &mut grpc,
            publish("alpha", To::Group("news"), &format!(r#"{{"n":{n}}}"#)),
        )
        .await;
        assert_eq!(r.offset, n, "the publish reply names the offset");
        epoch = r.epoch;
        let m = c.next_msg().await;
        assert_eq!(
            (m["offset"].as_u64(), m["epoch"].as_u64()),
            (Some(n), Some(u64::from(epoch)))
        );
        assert_eq!(m["data"]["n"], n);
    }
    assert_ne!(epoch, 0);
    drop(c);

    // Away: 4..=10 published.
    for n in 4..=10 {
        send(
            &mut grpc,
            publish("alpha", To::Group("news"), &format!(r#"{{"n":{n}}}"#)),
        )
        .await;
    }
    // Back, while a publisher keeps going: 11..=200 published during the resume.
    let mut c = connect_with(&herald, "u1", json!({})).await;
    let mut publisher = herald.grpc(Some(ALPHA_KEY)).await;
    let live = tokio::spawn(async move {
        for n in 11..=200 {
            send(
                &mut publisher,
                publish("alpha", To::Group("news"), &format!(r#"{{"n":{n}}}"#)),
            )
            .await;
        }
    });
    c.send_json(
        json!({"type":"subscribe","id":7,"group":"news","since":{"offset":3,"epoch":epoch}}),
    )
    .await;
    let (mut got, resumed) = until_resumed(&mut c, 7).await;
    assert_eq!(resumed["recovered"], true, "{resumed}");
    assert_eq!(resumed["group"], "news");
    assert_eq!(resumed["epoch"].as_u64(), Some(u64::from(epoch)));
    let at = resumed["offset"].as_u64().expect("offset");
    assert!(at >= 10, "{resumed}");
    assert_eq!(
        offsets(&got),
        (4..=at).collect::<Vec<_>>(),
        "the replay is in order, whole"
    );
    live.await.expect("publisher");
    while got.last().and_then(|m| m["offset"].as_u64()) != Some(200) {
        got.push(c.next_msg().await);
    }
    assert_eq!(
        offsets(&got),
        (4..=200).collect::<Vec<_>>(),
        "no gap and no duplicate at the seam"
    );
    for m in &got {
        assert_eq!(m["data"]["n"], m["offset"], "{m}");
    }
    c.expect_silence(Duration::from_millis(300)).await;
    herald
        .wait_metric(r#"herald_edge_resumes_total{result="recovered"}"#, 1.0)
        .await;
}

#[tokio::test]
async fn resume_at_connect_a_lost_epoch_and_streams_without_history() {
    let herald = herald().projects(PROJECTS).start().await;
    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    // The user's own stream, while the user is away.
    let mut epoch = 0;
    for n in 1..=3 {
        let r = send(
            &mut grpc,
            publish("alpha", To::User("u2"), &format!("p{n}")),
        )
        .await;
        assert_eq!(
            r.resolution(),
            herald_core::proto::v1::Resolution::NoRecipients
        );
        assert_eq!(r.offset, n, "stored although nobody is connected");
        epoch = r.epoch;
    }
    let mut c = connect_with(
        &herald,
        "u2",
        json!({"resume": [{"user": true, "offset": 1, "epoch": epoch}]}),
    )
    .await;
    let (got, resumed) = until_resumed(&mut c, 0).await;
    assert_eq!(offsets(&got), [2, 3]);
    assert_eq!(got[0]["b64"], "cDI=", "p2, not JSON: base64");
    assert_eq!(
        (resumed["user"].as_bool(), resumed["recovered"].as_bool()),
        (Some(true), Some(true))
    );

    // A wrong epoch: nothing replayed, the client is told and gets the stream's position.
    c.send_json(json!({"type":"subscribe","id":2,"group":"chat/room-1","since":{"offset":5,"epoch":epoch ^ 1}}))
        .await;
    let (before, resumed) = until_resumed(&mut c, 2).await;
    assert!(before.is_empty(), "nothing replayed: {before:?}");
    assert_eq!(resumed["recovered"], false, "{resumed}");
    assert_ne!(resumed["epoch"].as_u64(), Some(u64::from(epoch ^ 1)));
    // Live from then on, under the stream's epoch.
    let r = send(
        &mut grpc,
        publish("alpha", To::Group("chat/room-1"), "first"),
    )
    .await;
    let m = c.next_msg().await;
    assert_eq!(m["offset"].as_u64(), Some(r.offset));
    assert_eq!(m["epoch"], resumed["epoch"]);

    // Streams the project keeps no history of are refused as such; plain targets carry no offset.
    c.send_json(json!({"type":"subscribe","id":3,"group":"other","since":{"offset":0,"epoch":1}}))
        .await;
    let e = c.next_json().await;
    assert_eq!(
        (e["type"].as_str(), e["id"].as_u64(), e["code"].as_u64()),
        (Some("error"), Some(3), Some(4404))
    );
    assert_eq!(c.subscribe(4, "other").await["type"], "ack");
    let r = send(&mut grpc, publish("alpha", To::Group("other"), "plain")).await;
    assert_eq!((r.offset, r.epoch), (0, 0));
    let m = c.next_msg().await;
    assert!(m.get("offset").is_none(), "{m}");
    let bad = connect_with(
        &herald,
        "u3",
        json!({"resume": [{"broadcast": true, "offset": 0, "epoch": 1}]}),
    )
    .await;
    let mut bad = bad;
    let e = bad.next_json().await;
    assert_eq!(e["code"], 4404, "{e}");
}

#[tokio::test]
async fn a_replay_far_beyond_the_queue_is_paced_not_cut() {
    let herald = herald()
        .projects(PROJECTS)
        .edge("max_queued_bytes", 16 * 1024)
        .start()
        .await;
    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    let payload = format!(r#"{{"pad":"{}"}}"#, "x".repeat(200));
    let mut epoch = 0;
    for _ in 0..2000 {
        epoch = send(&mut grpc, publish("alpha", To::Group("news"), &payload))
            .await
            .epoch;
    }
    // About 500 KB to replay through a 16 KiB queue.
    let mut c = connect_with(&herald, "u4", json!({})).await;
    c.send_json(
        json!({"type":"subscribe","id":1,"group":"news","since":{"offset":0,"epoch":epoch}}),
    )
    .await;
    let (got, resumed) = until_resumed(&mut c, 1).await;
    assert_eq!(resumed["recovered"], true);
    let seen: BTreeSet<u64> = offsets(&got).into_iter().collect();
    assert_eq!((seen.len(), got.len()), (2000, 2000));
    assert_eq!(offsets(&got), (1..=2000).collect::<Vec<_>>());
    assert_eq!(herald.metric("herald_edge_slow_consumers_total").await, 0.0);
}
