//! Presence events (`presence_events = true`): a group's members get `join` when a user's first
//! connection in the group arrives and `leave` when its last one goes, per user and cluster-wide,
//! through the real binary: a single node, two edges over real `redis-server` and
//! `nats-server`, an edge SIGKILLed, Redis flushed and restarted.

use std::time::{Duration, Instant};

use herald_tests::cluster::{Backends, server_bin};
use herald_tests::*;
use serde_json::json;

fn member(sub: &str, groups: &[&str]) -> String {
    let mut c = claims("alpha", sub);
    c["groups"] = json!(groups);
    hs256(ALPHA_SECRET, None, &c)
}

fn ev(group: &str, event: &str, user: &str) -> (String, String, String) {
    (group.into(), event.into(), user.into())
}

/// A node of the cluster running edge and router, presence events on for `alpha`.
async fn node(b: &Backends, id: &str, ttl_secs: i64) -> Herald {
    herald()
        .clustered(b)
        .cluster("edge_ttl_secs", ttl_secs)
        .role("all")
        .edge("id", id)
        .project_set("alpha", "presence_events", true)
        .start()
        .await
}

/// The members of `alpha`'s group `news` as Redis holds them: (user, its edges sorted).
async fn members(url: &str, prefix: &str) -> Vec<(String, String)> {
    let key = format!("{prefix}:mem:{{alpha:g:news}}");
    let out = tokio::process::Command::new(server_bin("redis-cli"))
        .args(["-u", url, "HGETALL", &key])
        .output()
        .await
        .expect("redis-cli");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<&str> = text.lines().collect();
    let mut pairs: Vec<(String, String)> = lines
        .chunks(2)
        .filter(|p| p.len() == 2)
        .map(|p| {
            let mut edges: Vec<&str> = p[1].split(',').collect();
            edges.sort();
            (p[0].to_string(), edges.join(","))
        })
        .collect();
    pairs.sort();
    pairs
}

#[tokio::test]
async fn a_single_node_announces_each_users_first_and_last_connection_in_a_group() {
    let h = herald()
        .project_set("alpha", "presence_events", true)
        .start()
        .await;
    let mut wendy = h.connect("alpha", &member("wendy", &["news"])).await;
    assert_eq!(wendy.next_presence().await, ev("news", "join", "wendy"));

    let bob1 = h.connect("alpha", &member("bob", &["news", "sport"])).await;
    assert_eq!(wendy.next_presence().await, ev("news", "join", "bob"));
    // A second connection of bob, then the first one leaving: no event (per user).
    let bob2 = h.connect("alpha", &member("bob", &["news"])).await;
    drop(bob1);
    // carol is the marker: her join is the next event, nothing about bob came before it.
    let carol = h.connect("alpha", &member("carol", &["news"])).await;
    assert_eq!(wendy.next_presence().await, ev("news", "join", "carol"));
    drop(bob2);
    assert_eq!(wendy.next_presence().await, ev("news", "leave", "bob"));

    // Subscribing and unsubscribing count like the token's groups.
    let mut c = claims("alpha", "erin");
    c["channels"] = json!(["news"]);
    let mut erin = h.connect("alpha", &hs256(ALPHA_SECRET, None, &c)).await;
    assert_eq!(erin.subscribe(1, "news").await["type"], "ack");
    assert_eq!(wendy.next_presence().await, ev("news", "join", "erin"));
    erin.send_json(json!({"type": "unsubscribe", "group": "news", "id": 2}))
        .await;
    assert_eq!(wendy.next_presence().await, ev("news", "leave", "erin"));
    drop(carol);
    assert_eq!(wendy.next_presence().await, ev("news", "leave", "carol"));

    // A project that does not ask for them gets none: beta's members see only messages.
    let mut b = claims("beta", "x");
    b["groups"] = json!(["news"]);
    let mut x = h.connect("beta", &hs256(BETA_SECRET, None, &b)).await;
    let mut y = claims("beta", "y");
    y["groups"] = json!(["news"]);
    let _y = h.connect("beta", &hs256(BETA_SECRET, None, &y)).await;
    let mut g = h.grpc(Some(BETA_KEY)).await;
    send(&mut g, publish("beta", To::Group("news"), "\"end\"")).await;
    let first = x.next_json().await;
    assert_eq!(first["type"], "msg", "{first}");
}

/// A user on two edges: one edge's connection going is no leave; a SIGKILLed edge's users
/// leave once its liveness runs out (soketi#735: no ghost).
#[tokio::test]
async fn a_user_on_two_edges_leaves_once_and_a_killed_edges_users_leave() {
    let b = Backends::start().await;
    let ttl = Duration::from_secs(6);
    let (n1, mut n2) = (
        node(&b, "e1", ttl.as_secs() as i64).await,
        node(&b, "e2", ttl.as_secs() as i64).await,
    );
    let mut wendy = n1.connect("alpha", &member("wendy", &["news"])).await;
    assert_eq!(wendy.next_presence().await, ev("news", "join", "wendy"));
    let alice1 = n1.connect("alpha", &member("alice", &["news"])).await;
    assert_eq!(wendy.next_presence().await, ev("news", "join", "alice"));
    let _alice2 = n2.connect("alpha", &member("alice", &["news"])).await;
    // alice on e1 goes: she is still on e2, no leave.
    drop(alice1);
    let _bob = n2.connect("alpha", &member("bob", &["news"])).await;
    assert_eq!(wendy.next_presence().await, ev("news", "join", "bob"));

    n2.signal("KILL");
    let killed = Instant::now();
    let _ = n2.wait_exit().await;
    let mut left = vec![wendy.next_presence().await, wendy.next_presence().await];
    let took = killed.elapsed();
    left.sort();
    assert_eq!(
        left,
        [ev("news", "leave", "alice"), ev("news", "leave", "bob")]
    );
    // Cleaned up by the first node that sees the liveness gone: e1's heartbeat every TTL/3.
    assert!(
        took < ttl + ttl / 3 + Duration::from_secs(3),
        "leaves {took:?} after the kill with a TTL of {ttl:?}"
    );
}

/// After a FLUSHALL and a Redis restart the edges write their members again without
/// announcing anything, and within two heartbeats the events are right again: no client
/// reconnects.
#[tokio::test]
async fn presence_events_converge_after_a_redis_flush_and_restart() {
    let mut b = Backends::start_with(false, 1).await;
    // Heartbeats every 2 s.
    let (n1, n2) = (node(&b, "e1", 6).await, node(&b, "e2", 6).await);
    let mut wendy = n1.connect("alpha", &member("wendy", &["news"])).await;
    assert_eq!(wendy.next_presence().await, ev("news", "join", "wendy"));
    let alice1 = n1.connect("alpha", &member("alice", &["news"])).await;
    assert_eq!(wendy.next_presence().await, ev("news", "join", "alice"));
    let alice2 = n2.connect("alpha", &member("alice", &["news"])).await;
    let bob = n2.connect("alpha", &member("bob", &["news"])).await;
    assert_eq!(wendy.next_presence().await, ev("news", "join", "bob"));

    let out = tokio::process::Command::new(server_bin("redis-cli"))
        .args(["-u", &b.redis_urls()[0], "FLUSHALL"])
        .output()
        .await
        .expect("redis-cli");
    assert!(out.status.success(), "FLUSHALL: {out:?}");
    // Two heartbeats: both edges have written their members again (silently).
    let url = b.redis_urls()[0].clone();
    let prefix = b.prefix.clone();
    let want = vec![
        ("alice".to_string(), "e1,e2".to_string()),
        ("bob".to_string(), "e2".to_string()),
        ("wendy".to_string(), "e1".to_string()),
    ];
    let flushed = Instant::now();
    eventually_eq(Duration::from_secs(4) + WAIT / 4, want, async || {
        members(&url, &prefix).await
    })
    .await;
    let took = flushed.elapsed();
    // Each edge confirms the new epoch right after writing; the registry is whole once both
    // did and one TTL passed: from then on a transition is announced again.
    n1.wait_metric("herald_registry_whole", 1.0).await;
    n2.wait_metric("herald_registry_whole", 1.0).await;
    // Nothing was announced for the rewrite: the next event is carol's join.
    let carol = n2.connect("alpha", &member("carol", &["news"])).await;
    assert_eq!(wendy.next_presence().await, ev("news", "join", "carol"));
    // alice on e2 goes: she is on e1 still, as the rebuilt members know.
    drop(alice2);
    drop(carol);
    assert_eq!(wendy.next_presence().await, ev("news", "leave", "carol"));
    // Two heartbeats (2 s each), with room for a loaded machine.
    assert!(took < Duration::from_secs(6), "rebuilt after {took:?}");

    b.redis[0].kill().await;
    b.redis[0].restart().await.expect("redis-server restarts");
    let want = vec![
        ("alice".to_string(), "e1".to_string()),
        ("bob".to_string(), "e2".to_string()),
        ("wendy".to_string(), "e1".to_string()),
    ];
    eventually_eq(WAIT, want, async || members(&url, &prefix).await).await;
    n1.wait_metric("herald_registry_whole", 1.0).await;
    n2.wait_metric("herald_registry_whole", 1.0).await;
    drop(alice1);
    assert_eq!(wendy.next_presence().await, ev("news", "leave", "alice"));
    drop(bob);
    assert_eq!(wendy.next_presence().await, ev("news", "leave", "bob"));
}
