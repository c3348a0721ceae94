//! Presence (who is in a group) through the real binary: on a single node and on a cluster of
//! two edges (real `redis-server` and `nats-server`), with an edge SIGKILLed and Redis flushed
//! or restarted, through gRPC and the CLI.

use std::process::Output;
use std::time::{Duration, Instant};

use herald_core::proto::v1::{PresenceReply, PresenceRequest};
use herald_tests::cluster::{Backends, server_bin};
use herald_tests::*;
use serde_json::json;

fn member(project: &str, sub: &str, groups: &[&str]) -> String {
    let mut c = claims(project, sub);
    c["groups"] = json!(groups);
    hs256(ALPHA_SECRET, None, &c)
}

fn ask(group: &str, page_size: u32, page_token: &str) -> PresenceRequest {
    PresenceRequest {
        project: "alpha".into(),
        group: group.into(),
        page_size,
        page_token: page_token.into(),
    }
}

async fn presence(g: &mut Grpc, group: &str) -> PresenceReply {
    g.presence(ask(group, 0, ""))
        .await
        .expect("presence")
        .into_inner()
}

/// The users of a reply with their connection counts.
fn users(r: &PresenceReply) -> Vec<(String, u32)> {
    r.users
        .iter()
        .map(|u| (u.user.clone(), u.connections))
        .collect()
}

fn want(users: &[(&str, u32)]) -> Vec<(String, u32)> {
    users.iter().map(|(u, n)| (u.to_string(), *n)).collect()
}

/// Asks until the answer has these users (and no edge missing), or fails after `within`. An
/// error (the registry unreachable: no list of live edges to name the missing) is asked again.
async fn presence_until(g: &mut Grpc, group: &str, expected: &[(&str, u32)], within: Duration) {
    let until = Instant::now() + within;
    loop {
        let r = g.presence(ask(group, 0, "")).await.map(|r| r.into_inner());
        if let Ok(r) = &r
            && users(r) == want(expected)
            && r.missing_edges.is_empty()
        {
            return;
        }
        assert!(
            Instant::now() < until,
            "presence never became {expected:?}: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until a publish to the group `news` resolves to both edges: the router then knows both
/// alive, and an operator call waits for both answers.
async fn both_edges_known(g: &mut Grpc) {
    eventually(WAIT, async || {
        let r = send(g, publish("alpha", To::Group("news"), "0")).await;
        if r.edges == 2 && !r.fallback {
            Ok(())
        } else {
            Err(format!("{r:?}"))
        }
    })
    .await;
}

/// A node of the cluster running edge and router, with this edge TTL.
async fn node(b: &Backends, id: &str, ttl_secs: i64) -> Herald {
    herald()
        .clustered(b)
        .cluster("edge_ttl_secs", ttl_secs)
        .role("all")
        .edge("id", id)
        .router("control_timeout_ms", 700)
        .start()
        .await
}

/// Runs the real `herald` CLI's `presence` against `router` with the alpha key.
async fn cli_presence(router: &Herald, rest: &[&str]) -> Output {
    let addr = format!("http://{}", router.grpc);
    let mut args = vec!["presence", "--router", &addr, "--api-key", ALPHA_KEY];
    args.extend_from_slice(rest);
    let run = tokio::process::Command::new(herald_bin())
        .args(&args)
        .env_remove("HERALD_API_KEY")
        .env_remove("HERALD_ROUTER")
        .output();
    tokio::time::timeout(WAIT, run)
        .await
        .expect("cli in time")
        .expect("run herald")
}

#[tokio::test]
async fn presence_names_each_user_once_with_its_connections_on_every_edge() {
    let b = Backends::start().await;
    let (n1, n2) = (node(&b, "e1", 15).await, node(&b, "e2", 15).await);
    let news: &[&str] = &["news"];
    let mut held = Vec::new();
    // alice: two devices on e1, one on e2; bob on e1; carol on e2; dave not in the group; an
    // alice of another project is not this project's.
    for (n, sub, groups) in [
        (&n1, "alice", news),
        (&n1, "alice", news),
        (&n2, "alice", news),
        (&n1, "bob", news),
        (&n2, "carol", news),
        (&n2, "dave", &["sport"]),
    ] {
        held.push(n.connect("alpha", &member("alpha", sub, groups)).await);
    }
    let mut beta = claims("beta", "alice");
    beta["groups"] = json!(news);
    held.push(n1.connect("beta", &hs256(BETA_SECRET, None, &beta)).await);
    // A group joined by subscribing counts as well.
    let mut erin_claims = claims("alpha", "erin");
    erin_claims["channels"] = json!(["news"]);
    let mut erin = n2
        .connect("alpha", &hs256(ALPHA_SECRET, None, &erin_claims))
        .await;
    erin.send_json(json!({"type": "subscribe", "group": "news", "id": 1}))
        .await;
    assert_eq!(erin.next_json().await["type"], "ack");

    let mut g = n1.grpc(Some(ALPHA_KEY)).await;
    // The router waits for the edges it knows alive (its view is up to 1 s old): a publish
    // resolved to both edges shows it knows e2.
    both_edges_known(&mut g).await;
    let everyone = [("alice", 3), ("bob", 1), ("carol", 1), ("erin", 1)];
    presence_until(&mut g, "news", &everyone, WAIT).await;
    let r = presence(&mut g, "news").await;
    assert_eq!(
        users(&r),
        want(&[("alice", 3), ("bob", 1), ("carol", 1), ("erin", 1)])
    );
    assert_eq!((r.connections, r.users_total, r.users_exact), (6, 4, true));
    assert!(r.missing_edges.is_empty() && r.next_page_token.is_empty());

    // Pages of one user: each user once, in order; past the first page the total is a bound
    // (alice counts once per edge) and says so.
    let (mut token, mut seen) = (String::new(), Vec::new());
    loop {
        let r = g
            .presence(ask("news", 1, &token))
            .await
            .expect("page")
            .into_inner();
        assert!(r.users.len() <= 1, "{r:?}");
        assert_eq!(r.connections, 6, "{r:?}");
        if !r.users_exact {
            assert_eq!(r.users_total, 5);
        }
        seen.extend(users(&r));
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    assert_eq!(
        seen,
        want(&[("alice", 3), ("bob", 1), ("carol", 1), ("erin", 1)])
    );

    // The CLI pages through and counts each user once.
    let out = cli_presence(&n2, &["-p", "alpha", "-g", "news", "--page-size", "2"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout,
        "user\tconnections\nalice\t3\nbob\t1\ncarol\t1\nerin\t1\ntotal\t4 users, 6 connections\n"
    );

    // A connection that leaves is no longer counted; the last one takes its user with it.
    drop(held.remove(2));
    presence_until(
        &mut g,
        "news",
        &[("alice", 2), ("bob", 1), ("carol", 1), ("erin", 1)],
        WAIT,
    )
    .await;
    erin.send_json(json!({"type": "unsubscribe", "group": "news", "id": 2}))
        .await;
    presence_until(
        &mut g,
        "news",
        &[("alice", 2), ("bob", 1), ("carol", 1)],
        WAIT,
    )
    .await;
    let r = presence(&mut g, "nobody").await;
    assert_eq!((r.users.len(), r.connections, r.users_total), (0, 0, 0));
    let e = g.presence(ask("a.*", 0, "")).await.expect_err("bad group");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
}

/// soketi#735's class of bug: a killed server's members must not stay present. Presence is
/// gathered live from the edges, so a SIGKILLed edge's users are gone from the first answer
/// after the kill (its id is in `missing_edges` until its TTL runs out, then not even that).
#[tokio::test]
async fn an_edge_sigkilled_leaves_no_ghost() {
    let b = Backends::start().await;
    let ttl = Duration::from_secs(6);
    let (n1, mut n2) = (
        node(&b, "e1", ttl.as_secs() as i64).await,
        node(&b, "e2", ttl.as_secs() as i64).await,
    );
    let _a1 = n1
        .connect("alpha", &member("alpha", "alice", &["news"]))
        .await;
    let _a2 = n2
        .connect("alpha", &member("alpha", "alice", &["news"]))
        .await;
    let _c2 = n2
        .connect("alpha", &member("alpha", "carol", &["news"]))
        .await;
    let mut g = n1.grpc(Some(ALPHA_KEY)).await;
    presence_until(&mut g, "news", &[("alice", 2), ("carol", 1)], WAIT).await;
    // The router knows e2 alive: it will wait for e2's answer.
    both_edges_known(&mut g).await;

    n2.signal("KILL");
    let killed = Instant::now();
    let _ = n2.wait_exit().await;
    let r = presence(&mut g, "news").await;
    assert_eq!(users(&r), want(&[("alice", 1)]), "{r:?}");
    assert_eq!(r.connections, 1);
    // Known alive until its TTL runs out: named, so the caller knows the answer may be short.
    if killed.elapsed() < ttl / 2 {
        assert_eq!(r.missing_edges, ["e2"], "{r:?} {:?}", killed.elapsed());
    }
    presence_until(&mut g, "news", &[("alice", 1)], ttl + WAIT).await;
    let gone = killed.elapsed();
    assert!(
        gone < ttl + Duration::from_secs(3),
        "e2 still named {gone:?} after the kill with a TTL of {ttl:?}"
    );
}

/// Presence needs nothing from Redis but the list of live edges (to name the missing ones):
/// right at once after a FLUSHALL, and after Redis restarts empty, without a client reconnecting.
#[tokio::test]
async fn presence_stays_right_through_a_redis_flush_and_restart() {
    let mut b = Backends::start_with(false, 1).await;
    // Heartbeats every 2 s.
    let (n1, n2) = (node(&b, "e1", 6).await, node(&b, "e2", 6).await);
    let mut alice = n1
        .connect("alpha", &member("alpha", "alice", &["news"]))
        .await;
    let mut bob = n2
        .connect("alpha", &member("alpha", "bob", &["news"]))
        .await;
    let mut g = n2.grpc(Some(ALPHA_KEY)).await;
    let both = [("alice", 1), ("bob", 1)];
    both_edges_known(&mut g).await;
    presence_until(&mut g, "news", &both, WAIT).await;

    let out = tokio::process::Command::new(server_bin("redis-cli"))
        .args(["-u", &b.redis_urls()[0], "FLUSHALL"])
        .output()
        .await
        .expect("redis-cli");
    assert!(out.status.success(), "FLUSHALL: {out:?}");
    let r = presence(&mut g, "news").await;
    assert_eq!(users(&r), want(&both), "right after the flush: {r:?}");
    assert_eq!((r.connections, r.users_total), (2, 2));
    // Within two heartbeats the edges are registered again and nothing is missing.
    presence_until(&mut g, "news", &both, Duration::from_secs(4) + WAIT / 4).await;

    b.redis[0].kill().await;
    b.redis[0].restart().await.expect("redis-server restarts");
    presence_until(&mut g, "news", &both, WAIT).await;
    // The same sockets all along, still served: nobody had to reconnect.
    both_edges_known(&mut g).await;
    send(&mut g, publish("alpha", To::Group("news"), "\"end\"")).await;
    for c in [&mut alice, &mut bob] {
        while c.next_msg().await["data"] != json!("end") {}
    }
    let mut g1 = n1.grpc(Some(ALPHA_KEY)).await;
    presence_until(&mut g1, "news", &both, WAIT).await;
}
