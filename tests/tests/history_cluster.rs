//! Nothing lost in a cluster: numbered messages to recoverable targets through real
//! `redis-server` (history and registry) and a 3-node `nats-server` cluster, with faults in the
//! middle. Every client checks every offset: 0 missing, 0 duplicates. More faults, with what
//! plain targets lose beside: tests/tests/history_chaos.rs.

use std::time::Duration;

use herald_tests::cluster::Backends;
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
groups = ["news"]
users = true
size = 10000
ttl_secs = 600
"#;

/// Messages published in each test.
const N: u64 = 300;

/// A node running edge and router, its edge checking stream positions every second.
async fn node(b: &Backends, id: &str, nats: Option<usize>) -> Herald {
    node_with(b, id, nats, None).await
}

/// [`node`], with history in the Redis at `history` instead of the registry's.
async fn node_with(b: &Backends, id: &str, nats: Option<usize>, history: Option<String>) -> Herald {
    let mut h = herald()
        .clustered(b)
        .projects(PROJECTS)
        .edge("id", id)
        .edge("history_check_secs", 1)
        .router("control_timeout_ms", 700);
    if let Some(i) = nats {
        h = h.cluster(
            "nats_urls",
            toml::Value::Array(vec![b.nats[i].url().into()]),
        );
    }
    if let Some(url) = history {
        h = h.cluster("history_redis_urls", toml::Value::Array(vec![url.into()]));
    }
    h.start().await
}

fn token_for(sub: &str, groups: &[&str]) -> String {
    let mut c = claims("alpha", sub);
    c["groups"] = json!(groups);
    hs256(ALPHA_SECRET, None, &c)
}

/// Publishes `1..=N` (the payload is the number) to `to`, a few milliseconds apart; each reply
/// must be a stored message whose offset is its number.
fn publisher(mut grpc: Grpc, to: To<'static>) -> tokio::task::JoinHandle<u32> {
    tokio::spawn(async move {
        let mut epoch = 0;
        for n in 1..=N {
            let r = send(&mut grpc, publish("alpha", to, &n.to_string())).await;
            assert_eq!(r.offset, n, "stored under its number");
            epoch = r.epoch;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        epoch
    })
}

/// Offsets of the `msg` frames in `frames`, each checked against its payload.
fn check(frames: &[Value]) -> Vec<u64> {
    frames
        .iter()
        .filter(|f| f["type"] == "msg")
        .map(|m| {
            let o = m["offset"].as_u64().expect("offset");
            assert_eq!(m["data"].as_u64(), Some(o), "{m}");
            o
        })
        .collect()
}

/// Reads messages until offset `N`; the frames read.
async fn read_to_end(c: &mut Client, mut frames: Vec<Value>) -> Vec<Value> {
    while check(&frames).last() != Some(&N) {
        frames.push(c.next_json().await);
    }
    frames
}

#[tokio::test]
async fn an_edge_killed_its_clients_resume_on_the_other_edge_and_miss_nothing() {
    let b = Backends::start().await;
    let n1 = node(&b, "e1", None).await;
    let mut n2 = node(&b, "e2", None).await;
    let token = token_for("alice", &["news"]);
    let mut c = n2.connect_auth("alpha", &token, json!({})).await;
    let live = publisher(n1.grpc(Some(ALPHA_KEY)).await, To::Group("news"));
    // Some messages on e2, then e2 dies under the client.
    let mut before = Vec::new();
    while check(&before).len() < 30 {
        before.push(c.next_json().await);
    }
    n2.signal("KILL");
    let _ = n2.wait_exit().await;
    drop(c);
    let got = check(&before);
    let last = *got.last().expect("a message");
    let epoch = before
        .iter()
        .rev()
        .find_map(|f| f["epoch"].as_u64())
        .expect("epoch");
    // Back on e1, from the last offset handled.
    let mut c = n1
        .connect_auth(
            "alpha",
            &token,
            json!({"resume": [{"group": "news", "offset": last, "epoch": epoch}]}),
        )
        .await;
    let after = read_to_end(&mut c, Vec::new()).await;
    live.await.expect("publisher");
    let resumed = after
        .iter()
        .find(|f| f["type"] == "resumed")
        .expect("resumed");
    assert_eq!(resumed["recovered"], true, "{resumed}");
    let mut all = got;
    all.extend(check(&after));
    assert_eq!(all, (1..=N).collect::<Vec<_>>(), "0 missing, 0 duplicates");
    c.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_registry_flushed_mid_stream_loses_nothing_of_a_recoverable_group() {
    let b = Backends::start().await;
    // History in a Redis of its own: a FLUSHALL of the registry's leaves it whole.
    let store = Backends::start_with(false, 0).await;
    let history = store.redis_urls().remove(0);
    let n1 = node_with(&b, "e1", None, Some(history.clone())).await;
    let n2 = node_with(&b, "e2", None, Some(history)).await;
    let token = token_for("alice", &["news"]);
    let mut c1 = n1.connect_auth("alpha", &token, json!({})).await;
    let mut c2 = n2.connect_auth("alpha", &token, json!({})).await;
    let live = publisher(n1.grpc(Some(ALPHA_KEY)).await, To::Group("news"));
    let (mut f1, mut f2) = (Vec::new(), Vec::new());
    while check(&f1).len() < 30 {
        f1.push(c1.next_json().await);
    }
    // The registry's Redis loses everything: the router resolves the group from a registry the
    // edges are rebuilding; what does not reach an edge is read back from history.
    let out = std::process::Command::new("redis-cli")
        .args(["-u", &b.redis_urls()[0], "FLUSHALL"])
        .output()
        .expect("redis-cli (Debian package redis-tools) runs");
    assert!(out.status.success(), "FLUSHALL: {out:?}");
    let f1 = read_to_end(&mut c1, f1).await;
    let f2 = read_to_end(&mut c2, std::mem::take(&mut f2)).await;
    live.await.expect("publisher");
    for (edge, frames) in [("e1", &f1), ("e2", &f2)] {
        assert_eq!(
            check(frames),
            (1..=N).collect::<Vec<_>>(),
            "{edge}: 0 missing, 0 duplicates"
        );
    }
    eprintln!(
        "registry flushed: {} + {} messages repaired from history",
        n1.metric("herald_edge_stream_repaired_total").await,
        n2.metric("herald_edge_stream_repaired_total").await
    );
}

/// Sessions follow their clients across edges, kept in the history's Redis: a native device
/// acknowledges on one edge and comes back on the other to exactly what it had not
/// acknowledged; an MQTT persistent session subscribed at QoS 1 on one edge comes back on the
/// other to exactly what it missed, in order, then live messages.
#[tokio::test]
async fn device_and_mqtt_sessions_follow_their_clients_across_edges() {
    use herald_tests::mqtt::{Lib, MqttClient};
    let b = Backends::start().await;
    let n1 = node(&b, "e1", None).await;
    let n2 = node(&b, "e2", None).await;
    let mut grpc = n2.grpc(Some(ALPHA_KEY)).await;

    // A native device: 1..=4 received on e1, 2 acknowledged; 5..=6 while away; back on e2.
    let token = token_for("dev", &[]);
    let mut c = n1
        .connect_auth("alpha", &token, json!({"device": "phone"}))
        .await;
    let resumed = c.next_json().await;
    assert_eq!(resumed["type"], "resumed", "{resumed}");
    let mut epoch = 0;
    for n in 1..=4u64 {
        let r = send(&mut grpc, publish("alpha", To::User("dev"), &n.to_string())).await;
        assert_eq!(r.offset, n);
        epoch = r.epoch;
    }
    let got: Vec<u64> = {
        let mut v = Vec::new();
        while v.len() < 4 {
            v.push(c.next_msg().await["offset"].as_u64().expect("offset"));
        }
        v
    };
    assert_eq!(got, [1, 2, 3, 4]);
    c.send_json(json!({"type":"ack","id":1,"stream":"user","offset":2,"epoch":epoch}))
        .await;
    assert_eq!(c.next_json().await, json!({"type":"ack","id":1}));
    drop(c);
    for n in 5..=6u64 {
        send(&mut grpc, publish("alpha", To::User("dev"), &n.to_string())).await;
    }
    let mut c = n2
        .connect_auth("alpha", &token, json!({"device": "phone"}))
        .await;
    let mut replayed = Vec::new();
    loop {
        let f = c.next_json().await;
        match f["type"].as_str() {
            Some("msg") => replayed.push(f["offset"].as_u64().expect("offset")),
            Some("resumed") => break,
            _ => panic!("unexpected {f}"),
        }
    }
    assert_eq!(
        replayed,
        [3, 4, 5, 6],
        "from the acknowledged offset, on the other edge"
    );

    // MQTT 3.1.1, clean false: subscribed at QoS 1 on e1, back on e2.
    let mq_token = {
        let mut c = claims("alpha", "mq");
        c["channels"] = json!(["news"]);
        hs256(ALPHA_SECRET, None, &c)
    };
    let opts = |edge: &Herald| {
        json!({"url": format!("ws://{}/mqtt/alpha", edge.ws), "version": 4,
               "clientId": "roaming", "username": "alpha", "clean": false,
               "password": mq_token})
    };
    let mut m = MqttClient::start(Lib::MqttJs, opts(&n1)).await;
    assert_eq!(m.expect("connect").await["sessionPresent"], false);
    assert_eq!(m.subscribe(json!({"news": 1})).await["codes"], json!([1]));
    send(&mut grpc, publish("alpha", To::Group("news"), "before")).await;
    assert_eq!(m.message().await["payload"], "before");
    m.end().await;
    for n in 1..=20 {
        send(
            &mut grpc,
            publish("alpha", To::Group("news"), &format!("m{n}")),
        )
        .await;
    }
    let mut m = MqttClient::start(Lib::MqttJs, opts(&n2)).await;
    // Events are all kept in `seen`: mqtt.js may report the replayed messages before the
    // CONNACK.
    let connack = m.expect("connect").await;
    assert_eq!(connack["sessionPresent"], true, "{connack}");
    send(&mut grpc, publish("alpha", To::Group("news"), "live")).await;
    if !m.seen.iter().any(|e| e["payload"] == "live") {
        while m.message().await["payload"] != "live" {}
    }
    let payloads: Vec<String> = m
        .seen
        .iter()
        .filter(|e| e["event"] == "message")
        .map(|e| e["payload"].as_str().unwrap_or_default().to_owned())
        .collect();
    let want: Vec<String> = (1..=20)
        .map(|n| format!("m{n}"))
        .chain(["live".to_owned()])
        .collect();
    assert_eq!(
        payloads, want,
        "exactly the missed ones, in order, then live"
    );
    m.end().await;
}
