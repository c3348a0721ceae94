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

/// A node whose connections queue at most 16 KiB, `n` messages of about `pad` bytes stored in
/// group `news`, and a client `sub` that subscribed to it from its start (the replay running).
async fn behind_a_small_queue(n: usize, pad: usize, sub: &str) -> (Herald, Client) {
    let herald = herald()
        .projects(PROJECTS)
        .edge("max_queued_bytes", 16 * 1024)
        .start()
        .await;
    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    let payload = format!(r#"{{"pad":"{}"}}"#, "x".repeat(pad));
    let mut epoch = 0;
    for _ in 0..n {
        epoch = send(&mut grpc, publish("alpha", To::Group("news"), &payload))
            .await
            .epoch;
    }
    let mut c = connect_with(&herald, sub, json!({})).await;
    c.send_json(
        json!({"type":"subscribe","id":1,"group":"news","since":{"offset":0,"epoch":epoch}}),
    )
    .await;
    (herald, c)
}

#[tokio::test]
async fn a_replay_far_beyond_the_queue_is_paced_not_cut() {
    // About 500 KB to replay through a 16 KiB queue.
    let (herald, mut c) = behind_a_small_queue(2000, 200, "u4").await;
    let (got, resumed) = until_resumed(&mut c, 1).await;
    assert_eq!(resumed["recovered"], true);
    let seen: BTreeSet<u64> = offsets(&got).into_iter().collect();
    assert_eq!((seen.len(), got.len()), (2000, 2000));
    assert_eq!(offsets(&got), (1..=2000).collect::<Vec<_>>());
    assert_eq!(herald.metric("herald_edge_slow_consumers_total").await, 0.0);
}

/// Live messages of other targets interleave with a long replay through a small queue: every
/// replayed message arrives in order, every live one arrives, and the client is never cut
/// (4008). (The replay keeps the queue under about half its bound, leaving room for them; a
/// reader this fast never lets the queue fill, so this does not show the bound itself.)
#[tokio::test]
async fn live_messages_beside_a_replay_find_room_in_the_queue() {
    let (herald, mut c) = behind_a_small_queue(600, 1000, "u5").await;
    // Plain broadcasts of 3 KB while the ~600 KB replay runs.
    let live = {
        let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
        let big = format!(r#"{{"live":"{}"}}"#, "y".repeat(3000));
        tokio::spawn(async move {
            for _ in 0..40 {
                send(&mut grpc, publish("alpha", To::Broadcast, &big)).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let (mut replayed, mut broadcasts) = (Vec::new(), 0);
    while replayed.len() < 600 || broadcasts < 40 {
        let v = c.next_json().await;
        match v["type"].as_str() {
            Some("msg") if v["offset"].is_u64() => replayed.push(v["offset"].as_u64().unwrap_or(0)),
            Some("msg") => broadcasts += 1,
            Some("ack") | Some("resumed") => {}
            _ => panic!("unexpected frame during the replay: {v}"),
        }
    }
    live.await.expect("publisher");
    assert_eq!(replayed, (1..=600).collect::<Vec<_>>());
    assert_eq!(herald.metric("herald_edge_slow_consumers_total").await, 0.0);
}

/// What an application on a device does with its user stream: it handles a message once, and
/// drops one whose offset is not above the last it handled under the same epoch (a resend).
#[derive(Default)]
struct DeviceApp {
    epoch: u64,
    handled: u64,
    seen: Vec<u64>,
    dropped: Vec<u64>,
}

impl DeviceApp {
    fn take(&mut self, m: &Value) {
        let (o, e) = (
            m["offset"].as_u64().expect("offset"),
            m["epoch"].as_u64().expect("epoch"),
        );
        if e == self.epoch && o <= self.handled {
            self.dropped.push(o);
            return;
        }
        self.epoch = e;
        self.handled = o;
        self.seen.push(o);
    }
}

/// Publishes `n` numbered messages to user `u` and returns their offsets.
async fn to_user(grpc: &mut herald_tests::Grpc, u: &str, from: u64, to: u64) -> Vec<u64> {
    let mut out = Vec::new();
    for n in from..=to {
        let r = send(
            grpc,
            publish("alpha", To::User(u), &format!(r#"{{"n":{n}}}"#)),
        )
        .await;
        out.push(r.offset);
    }
    out
}

#[tokio::test]
async fn a_device_gets_its_user_stream_at_least_once_across_reconnects() {
    let herald = herald().projects(PROJECTS).start().await;
    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    // A message before the device ever connected is not its business.
    to_user(&mut grpc, "d1", 1, 1).await;

    // First connection of the phone: its user stream starts where the stream stands.
    let mut phone = connect_with(&herald, "d1", json!({"device": "phone"})).await;
    let (before, resumed) = until_resumed(&mut phone, 0).await;
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(
        (resumed["user"].as_bool(), resumed["offset"].as_u64()),
        (Some(true), Some(1)),
        "{resumed}"
    );
    let epoch = resumed["epoch"].as_u64().expect("epoch");
    // A second device of the same user, with its own acknowledgements.
    let mut tablet = connect_with(&herald, "d1", json!({"device": "tablet"})).await;
    until_resumed(&mut tablet, 0).await;

    assert_eq!(to_user(&mut grpc, "d1", 2, 6).await, [2, 3, 4, 5, 6]);
    let mut app = DeviceApp::default();
    for _ in 2..=6 {
        let m = phone.next_msg().await;
        app.take(&m);
    }
    assert_eq!(app.seen, [2, 3, 4, 5, 6]);
    for _ in 2..=6 {
        tablet.next_msg().await;
    }
    // The phone handled up to 4 durably and says so; 5 and 6 it received and did not ack.
    phone
        .send_json(json!({"type":"ack","id":9,"stream":"user","offset":4,"epoch":epoch}))
        .await;
    assert_eq!(phone.next_json().await, json!({"type":"ack","id":9}));
    // An older acknowledgement moves nothing back.
    phone
        .send_json(json!({"type":"ack","id":10,"stream":"user","offset":2,"epoch":epoch}))
        .await;
    assert_eq!(phone.next_json().await, json!({"type":"ack","id":10}));
    tablet
        .send_json(json!({"type":"ack","id":1,"stream":"user","offset":6,"epoch":epoch}))
        .await;
    assert_eq!(tablet.next_json().await["type"], "ack");
    drop(phone);
    drop(tablet);

    // Away: 7 and 8.
    assert_eq!(to_user(&mut grpc, "d1", 7, 8).await, [7, 8]);

    // Back: exactly the unacknowledged ones (5, 6: resent; 7, 8: missed), in order, then live.
    let mut phone = connect_with(&herald, "d1", json!({"device": "phone"})).await;
    let (got, resumed) = until_resumed(&mut phone, 0).await;
    assert_eq!(
        offsets(&got),
        [5, 6, 7, 8],
        "from the last acknowledged offset"
    );
    assert_eq!(resumed["recovered"], true, "{resumed}");
    for m in &got {
        assert_eq!(m["data"]["n"], m["offset"], "{m}");
        app.take(m);
    }
    assert_eq!(to_user(&mut grpc, "d1", 9, 9).await, [9]);
    app.take(&phone.next_msg().await);
    // The duplicate rule: 5 and 6 came twice and were dropped by offset; each handled once.
    assert_eq!(app.dropped, [5, 6]);
    assert_eq!(app.seen, (2..=9).collect::<Vec<_>>());

    // The tablet acknowledged everything: only what came while it was away.
    let mut tablet = connect_with(&herald, "d1", json!({"device": "tablet"})).await;
    let (got, _) = until_resumed(&mut tablet, 0).await;
    assert_eq!(offsets(&got), [7, 8, 9]);

    // An explicit resume of the user stream wins over what the server kept.
    let mut again = connect_with(
        &herald,
        "d1",
        json!({"device": "phone", "resume": [{"user": true, "offset": 8, "epoch": epoch}]}),
    )
    .await;
    let (got, _) = until_resumed(&mut again, 0).await;
    assert_eq!(offsets(&got), [9]);

    // Without a device, an ack is refused; a device of a project without user streams is told.
    let mut plain = connect_with(&herald, "d2", json!({})).await;
    plain
        .send_json(json!({"type":"ack","id":3,"stream":"user","offset":1,"epoch":epoch}))
        .await;
    let e = plain.next_json().await;
    assert_eq!(
        (e["id"].as_u64(), e["code"].as_u64()),
        (Some(3), Some(4400)),
        "{e}"
    );
    let mut bad = connect_with(&herald, "d2", json!({"device": "no.dots"})).await;
    let e = bad.next_json().await;
    assert_eq!(e["code"], 4422, "{e}");
    herald
        .wait_metric("herald_edge_device_acks_total", 3.0)
        .await;
}
