//! Herald as a cluster: real `redis-server` and a 3-node `nats-server` cluster, several edges and
//! routers as separate `herald` processes.

use std::time::{Duration, Instant};

use herald_core::proto::v1::{
    DisconnectRequest, ListConnectionsRequest, PublishRequest, Resolution, disconnect_request,
    list_connections_request,
};
use herald_tests::cluster::{Backends, server_bin};
use herald_tests::*;
use serde_json::{Value, json};

/// A node of the cluster: `role` is `edge`, `router` or `all`; `id` names its edge.
async fn node(b: &Backends, role: &str, id: &str) -> Herald {
    herald()
        .clustered(b)
        .role(role)
        .edge("id", id)
        .router("control_timeout_ms", 700)
        .start()
        .await
}

fn with_groups(project: &str, sub: &str, groups: &[&str]) -> String {
    let secret = if project == "beta" {
        BETA_SECRET
    } else {
        ALPHA_SECRET
    };
    let mut c = claims(project, sub);
    c["groups"] = json!(groups);
    hs256(secret, None, &c)
}

fn list_user(project: &str, user: &str) -> ListConnectionsRequest {
    ListConnectionsRequest {
        project: project.into(),
        of: Some(list_connections_request::Of::User(user.into())),
        ..Default::default()
    }
}

/// Publishes until a publish is resolved by the registry (not sent to every edge while it
/// is rebuilt) to `edges` edges (the registry converges in the background).
async fn publish_until(grpc: &mut Grpc, req: PublishRequest, edges: u32, within: Duration) {
    let until = Instant::now() + within;
    loop {
        let r = grpc.publish(req.clone()).await;
        if let Ok(r) = &r
            && r.get_ref().edges == edges
            && !r.get_ref().fallback
        {
            return;
        }
        assert!(
            Instant::now() < until,
            "publish never reached {edges} edge(s): {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The next message, skipping repeats of earlier publishes made while converging.
async fn next_data(c: &mut Client) -> Value {
    c.next_msg().await["data"].clone()
}

#[tokio::test]
async fn clients_on_two_edges_get_user_group_and_broadcast_through_either_router() {
    let b = Backends::start().await;
    let (e1, e2) = (node(&b, "edge", "e1").await, node(&b, "edge", "e2").await);
    let (r1, r2) = (
        node(&b, "router", "r1").await,
        node(&b, "router", "r2").await,
    );
    let mut alice = e1
        .connect("alpha", &with_groups("alpha", "alice", &["news"]))
        .await;
    let mut bob = e2
        .connect("alpha", &with_groups("alpha", "bob", &["news"]))
        .await;
    // Project beta has a user and a group with the same names, on both edges.
    let mut beta_alice = e2
        .connect("beta", &with_groups("beta", "alice", &["news"]))
        .await;
    let mut beta_news = e1
        .connect("beta", &with_groups("beta", "carol", &["news"]))
        .await;
    let (mut g1, mut g2) = (
        r1.grpc(Some(ALPHA_KEY)).await,
        r2.grpc(Some(ALPHA_KEY)).await,
    );

    let r = send(&mut g1, publish("alpha", To::User("alice"), "1")).await;
    assert_eq!((r.resolution(), r.edges), (Resolution::Delivered, 1));
    assert_eq!(next_data(&mut alice).await, json!(1));

    let r = send(&mut g2, publish("alpha", To::Group("news"), "2")).await;
    assert_eq!((r.resolution(), r.edges), (Resolution::Delivered, 2));
    assert_eq!(next_data(&mut alice).await, json!(2));
    assert_eq!(next_data(&mut bob).await, json!(2));

    let r = send(&mut g1, publish("alpha", To::Broadcast, "3")).await;
    assert_eq!(r.resolution(), Resolution::Delivered);
    assert_eq!(next_data(&mut alice).await, json!(3));
    assert_eq!(next_data(&mut bob).await, json!(3));

    let r = send(&mut g2, publish("alpha", To::User("bob"), "4")).await;
    assert_eq!(r.edges, 1);
    assert_eq!(next_data(&mut bob).await, json!(4));

    // Hostile ids never reach the bus.
    for bad in [
        "a.*", ">", "*", "news.>", "a b", "{x}", "a/#", "user/bob", "a//b",
    ] {
        for to in [To::User(bad), To::Group(bad)] {
            let e = g1
                .publish(publish("alpha", to, "x"))
                .await
                .expect_err("refused");
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}");
        }
    }
    // Beta only gets beta's messages, on either edge.
    let mut gb = r2.grpc(Some(BETA_KEY)).await;
    let r = send(&mut gb, publish("beta", To::Group("news"), "5")).await;
    assert_eq!(r.edges, 2);
    assert_eq!(next_data(&mut beta_alice).await, json!(5));
    assert_eq!(next_data(&mut beta_news).await, json!(5));
    // Markers from the same router (r2) come after anything it delivered wrongly.
    expect_nothing_before_marker(&mut beta_alice, &mut gb, "beta", "alice").await;
    expect_nothing_before_marker(&mut beta_news, &mut gb, "beta", "carol").await;
    expect_nothing_before_marker(&mut alice, &mut g2, "alpha", "alice").await;
    expect_nothing_before_marker(&mut bob, &mut g2, "alpha", "bob").await;

    // Readiness: ready and not degraded.
    e1.wait_ready().await;
}

#[tokio::test]
async fn a_user_on_two_edges_gets_everything_and_operator_calls_reach_both() {
    let b = Backends::start().await;
    let (n1, n2) = (node(&b, "all", "e1").await, node(&b, "all", "e2").await);
    let mut d1 = n1.connect("alpha", &token("alpha", "dave")).await;
    let mut d2 = n2.connect("alpha", &token("alpha", "dave")).await;
    let (mut g1, mut g2) = (
        n1.grpc(Some(ALPHA_KEY)).await,
        n2.grpc(Some(ALPHA_KEY)).await,
    );

    for (i, g) in [&mut g1, &mut g2].into_iter().enumerate() {
        let r = send(g, publish("alpha", To::User("dave"), &i.to_string())).await;
        assert_eq!(r.edges, 2);
        assert_eq!(next_data(&mut d1).await, json!(i));
        assert_eq!(next_data(&mut d2).await, json!(i));
    }

    for g in [&mut g1, &mut g2] {
        let list = g
            .list_connections(list_user("alpha", "dave"))
            .await
            .expect("list")
            .into_inner();
        let mut edges: Vec<&str> = list.connections.iter().map(|c| c.edge.as_str()).collect();
        edges.sort();
        assert_eq!(edges, ["e1", "e2"]);
        assert!(list.missing_edges.is_empty());
    }

    let r = g2
        .disconnect(DisconnectRequest {
            project: "alpha".into(),
            who: Some(disconnect_request::Who::User("dave".into())),
            reconnect_after_ms: 0,
        })
        .await
        .expect("disconnect")
        .into_inner();
    assert_eq!(r.disconnected, 2);
    assert!(r.missing_edges.is_empty());
    for d in [&mut d1, &mut d2] {
        assert_eq!(d.expect_close().await.0, 4009);
    }
}

#[tokio::test]
async fn an_edge_killed_stops_receiving_within_the_ttl_and_listings_name_it() {
    let b = Backends::start().await;
    // A TTL long enough that a loaded machine still lists e2 as alive but silent right after the
    // kill: it is dead 4-6 s after (heartbeats every TTL / 3).
    let ttl = Duration::from_secs(6);
    let ttl_node = |id: &'static str| {
        herald()
            .clustered(&b)
            .cluster("edge_ttl_secs", ttl.as_secs() as i64)
            .role("all")
            .edge("id", id)
            .router("control_timeout_ms", 700)
            .start()
    };
    let (n1, mut n2) = (ttl_node("e1").await, ttl_node("e2").await);
    let mut a1 = n1.connect("alpha", &token("alpha", "alice")).await;
    let _a2 = n2.connect("alpha", &token("alpha", "alice")).await;
    let mut g1 = n1.grpc(Some(ALPHA_KEY)).await;
    let r = send(&mut g1, publish("alpha", To::User("alice"), "0")).await;
    assert_eq!(r.edges, 2);
    assert_eq!(next_data(&mut a1).await, json!(0));

    n2.signal("KILL");
    let killed = Instant::now();
    let _ = n2.wait_exit().await;
    // Still alive in the registry: the listing says which edge did not answer.
    let list = g1
        .list_connections(list_user("alpha", "alice"))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(list.connections.len(), 1);
    assert_eq!(list.missing_edges, ["e2"]);
    // The remaining edge keeps delivering all along.
    let r = send(&mut g1, publish("alpha", To::User("alice"), "1")).await;
    assert!(r.edges >= 1);
    assert_eq!(next_data(&mut a1).await, json!(1));

    // Within the TTL routing to e2 stops (the slack is for a loaded machine's polling); then it
    // is gone from listings too.
    publish_until(&mut g1, publish("alpha", To::User("alice"), "2"), 1, WAIT).await;
    let stopped = killed.elapsed();
    assert!(
        stopped < ttl + Duration::from_secs(2),
        "took {stopped:?} with a TTL of {ttl:?}"
    );
    let list = g1
        .list_connections(list_user("alpha", "alice"))
        .await
        .expect("list")
        .into_inner();
    assert!(list.missing_edges.is_empty(), "{:?}", list.missing_edges);
    assert_eq!(list.connections.len(), 1);
    loop {
        let d = next_data(&mut a1).await;
        if d == json!(2) {
            break;
        }
    }
}

#[tokio::test]
async fn delivery_continues_when_a_nats_node_dies() {
    let mut b = Backends::start().await;
    // Each node is told one NATS server and learns the others from the cluster.
    let url = |i: usize| toml::Value::Array(vec![b.nats[i].url().into()]);
    let n1 = herald()
        .clustered(&b)
        .cluster("nats_urls", url(0))
        .edge("id", "e1")
        .start()
        .await;
    let n2 = herald()
        .clustered(&b)
        .cluster("nats_urls", url(1))
        .edge("id", "e2")
        .start()
        .await;
    let mut a = n1.connect("alpha", &token("alpha", "alice")).await;
    let mut bob = n2.connect("alpha", &token("alpha", "bob")).await;
    let mut g2 = n2.grpc(Some(ALPHA_KEY)).await;
    let mut g1 = n1.grpc(Some(ALPHA_KEY)).await;
    send(&mut g2, publish("alpha", To::User("alice"), "0")).await;
    assert_eq!(next_data(&mut a).await, json!(0));

    b.nats[0].kill().await;
    // n1 reconnects to a surviving node; messages published meanwhile may be lost (at most
    // once), so publish until one arrives, then every later one must.
    let until = Instant::now() + WAIT;
    let mut n = 1;
    loop {
        send(&mut g2, publish("alpha", To::User("alice"), &n.to_string())).await;
        let got = tokio::time::timeout(Duration::from_millis(300), a.next_msg()).await;
        if got.is_ok() {
            break;
        }
        assert!(
            Instant::now() < until,
            "no delivery after the NATS node died"
        );
        n += 1;
    }
    for i in 100..105 {
        send(&mut g2, publish("alpha", To::User("alice"), &i.to_string())).await;
        send(&mut g1, publish("alpha", To::User("bob"), &i.to_string())).await;
    }
    let mut got = Vec::new();
    while got.len() < 5 {
        let d = next_data(&mut a).await;
        if d.as_i64().is_some_and(|v| v >= 100) {
            got.push(d);
        }
    }
    assert_eq!(got, (100..105).map(|i| json!(i)).collect::<Vec<_>>());
    for i in 100..105 {
        assert_eq!(next_data(&mut bob).await, json!(i));
    }
    // Delivery resumes on the data connection; the control connection reconnects on its own
    // schedule, and readiness says `degraded` until it has.
    n1.wait_ready().await;
}

#[tokio::test]
async fn edges_re_register_after_redis_restarts_empty() {
    let mut b = Backends::start_with(false, 1).await;
    let (n1, n2) = (node(&b, "all", "e1").await, node(&b, "all", "e2").await);
    let mut alice = n1
        .connect("alpha", &with_groups("alpha", "alice", &["news"]))
        .await;
    let mut bob = n2
        .connect("alpha", &with_groups("alpha", "bob", &["news"]))
        .await;
    let mut g2 = n2.grpc(Some(ALPHA_KEY)).await;
    assert_eq!(
        send(&mut g2, publish("alpha", To::Group("news"), "0"))
            .await
            .edges,
        2
    );
    assert_eq!(next_data(&mut alice).await, json!(0));
    assert_eq!(next_data(&mut bob).await, json!(0));

    b.redis[0].kill().await;
    // Degraded, not unready: the edge still serves its clients.
    eventually(WAIT, async || {
        let (status, body) = n1.admin_get("/readyz").await;
        assert_eq!(status, 200, "{body}");
        if body.contains("degraded") && body.contains("redis") {
            Ok(())
        } else {
            Err(format!("readiness never said degraded: {body}"))
        }
    })
    .await;
    // Existing clients keep being served: a broadcast needs no registry lookup, and group and
    // user targets go to every edge, each delivering to its own recipients.
    send(&mut g2, publish("alpha", To::Broadcast, "\"down\"")).await;
    assert_eq!(next_data(&mut alice).await, json!("down"));
    assert_eq!(next_data(&mut bob).await, json!("down"));
    let r = send(&mut g2, publish("alpha", To::Group("news"), "\"group\"")).await;
    assert!(
        r.fallback && r.resolution() == Resolution::Delivered,
        "{r:?}"
    );
    let r = send(&mut g2, publish("alpha", To::User("alice"), "\"user\"")).await;
    assert!(
        r.fallback && r.resolution() == Resolution::Delivered,
        "{r:?}"
    );
    assert_eq!(next_data(&mut alice).await, json!("group"));
    assert_eq!(next_data(&mut alice).await, json!("user"));
    assert_eq!(next_data(&mut bob).await, json!("group"));
    bob.expect_silence(Duration::from_millis(300)).await;
    assert!(
        n2.metric(r#"herald_router_fallback_publishes_total{registry="unreachable"}"#)
            .await
            >= 2.0
    );
    b.redis[0].restart().await.expect("redis-server restarts");

    // No client reconnects: the edges write their whole interest again.
    publish_until(&mut g2, publish("alpha", To::User("alice"), "1"), 1, WAIT).await;
    publish_until(&mut g2, publish("alpha", To::Group("news"), "2"), 2, WAIT).await;
    loop {
        if next_data(&mut alice).await == json!(2) {
            break;
        }
    }
    loop {
        if next_data(&mut bob).await == json!(2) {
            break;
        }
    }
    n1.wait_ready().await;
}

#[tokio::test]
async fn a_registry_that_never_answers_delays_welcome_and_ack_only_up_to_the_deadline() {
    let b = Backends::start_with(false, 1).await;
    let n1 = herald()
        .clustered(&b)
        .role("all")
        .edge("id", "e1")
        .edge("registration_timeout_ms", 500)
        .start()
        .await;
    // Redis hangs (SIGSTOP): its connections stay open, nothing is answered.
    let redis = b.redis[0].pid().expect("redis-server running");
    signal(redis, "STOP");
    let started = Instant::now();
    let mut c = claims("alpha", "alice");
    c["groups"] = json!(["news"]);
    c["channels"] = json!(["sport"]);
    let mut alice = n1.connect("alpha", &hs256(ALPHA_SECRET, None, &c)).await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(500),
        "welcome after {waited:?}: before the registry could hold the connection"
    );
    let started = Instant::now();
    assert_eq!(alice.subscribe(1, "sport").await["type"], "ack");
    assert!(started.elapsed() >= Duration::from_millis(500));
    // Served meanwhile: a broadcast needs no registry.
    let mut grpc = n1.grpc(Some(ALPHA_KEY)).await;
    send(&mut grpc, publish("alpha", To::Broadcast, "\"hung\"")).await;
    assert_eq!(next_data(&mut alice).await, json!("hung"));
    // Once Redis answers, the writes queued meanwhile land: user and group messages arrive.
    signal(redis, "CONT");
    publish_until(&mut grpc, publish("alpha", To::User("alice"), "1"), 1, WAIT).await;
    publish_until(
        &mut grpc,
        publish("alpha", To::Group("sport"), "2"),
        1,
        WAIT,
    )
    .await;
    loop {
        if next_data(&mut alice).await == json!(2) {
            break;
        }
    }
}

/// Sends `sig` to the process `pid`.
fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

/// Plain (not recoverable) targets through a registry flush: the router sees at once that the
/// registry is not whole and sends group and user messages to every edge until the edges have
/// written their interest again, so nothing is lost although no history keeps them.
#[tokio::test]
async fn a_registry_flushed_mid_stream_loses_nothing_of_plain_targets() {
    const N: u64 = 300;
    let b = Backends::start().await;
    let (n1, n2) = (node(&b, "all", "e1").await, node(&b, "all", "e2").await);
    let mut alice = n1
        .connect("alpha", &with_groups("alpha", "alice", &["news"]))
        .await;
    let mut bob = n2
        .connect("alpha", &with_groups("alpha", "bob", &["news"]))
        .await;
    let mut carol = n2
        .connect("alpha", &with_groups("alpha", "carol", &[]))
        .await;
    let mut g = n1.grpc(Some(ALPHA_KEY)).await;
    publish_until(&mut g, publish("alpha", To::Group("news"), "0"), 2, WAIT).await;
    // Numbered group messages, and the same numbers to carol's user stream.
    let publisher = {
        let mut g = n1.grpc(Some(ALPHA_KEY)).await;
        tokio::spawn(async move {
            let mut fallback = 0;
            for n in 1..=N {
                for to in [To::Group("news"), To::User("carol")] {
                    let r = send(&mut g, publish("alpha", to, &n.to_string())).await;
                    assert_eq!(r.resolution(), Resolution::Delivered, "{n}: {r:?}");
                    fallback += u32::from(r.fallback);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            fallback
        })
    };
    let numbers = async |c: &mut Client| {
        let mut got = Vec::new();
        while got.last() != Some(&N) {
            if let Some(n) = next_data(c).await.as_u64().filter(|n| *n > 0) {
                got.push(n);
            }
        }
        got
    };
    let mut first = Vec::new();
    while first.len() < 30 {
        if let Some(n) = next_data(&mut alice).await.as_u64().filter(|n| *n > 0) {
            first.push(n);
        }
    }
    let out = tokio::process::Command::new(server_bin("redis-cli"))
        .args(["-u", &b.redis_urls()[0], "FLUSHALL"])
        .output()
        .await
        .expect("redis-cli");
    assert!(out.status.success(), "FLUSHALL: {out:?}");
    first.extend(numbers(&mut alice).await);
    let all: Vec<u64> = (1..=N).collect();
    assert_eq!(first, all, "alice (e1): 0 missing, 0 duplicates");
    assert_eq!(numbers(&mut bob).await, all, "bob (e2)");
    assert_eq!(numbers(&mut carol).await, all, "carol (e2, user)");
    let fallback = publisher.await.expect("publisher");
    assert!(fallback > 0, "no publish went by the broadcast path");
    eprintln!(
        "registry flushed: {fallback} of {} publishes sent to every edge, 0 lost",
        2 * N
    );
    // Whole again: targets resolve to the edges holding them.
    publish_until(&mut g, publish("alpha", To::User("carol"), "0"), 1, WAIT).await;
}

/// Opens `n` connections of `sub` to `edge` (100 at a time); returns them with their ids.
async fn crowd(edge: &Herald, sub: &str, n: usize) -> (Vec<Client>, Vec<String>) {
    let tok = token("alpha", sub);
    let mut clients = Vec::with_capacity(n);
    let mut ids = Vec::with_capacity(n);
    while clients.len() < n {
        let batch = (n - clients.len()).min(100);
        let opened = futures_util::future::join_all((0..batch).map(|_| async {
            let (ws, _) = edge
                .open(&edge.url("alpha", &format!("token={tok}")), &[])
                .await
                .expect("websocket upgrade");
            let mut c = Client { ws };
            let w = c.next_json().await;
            assert_eq!(w["type"], "welcome", "{w}");
            let id = w["connection"].as_str().expect("connection id").to_string();
            (c, id)
        }))
        .await;
        for (c, id) in opened {
            clients.push(c);
            ids.push(id);
        }
    }
    (clients, ids)
}

#[tokio::test]
async fn listing_pages_gather_both_edges_in_order_and_cover_each_connection_once() {
    let b = Backends::start().await;
    let unlimited = || toml::Value::Table(toml::toml! { per_ip_connect_rate = 0 });
    let e1 = herald()
        .clustered(&b)
        .role("edge")
        .edge("id", "e1")
        .edge("limits", unlimited())
        .start()
        .await;
    let e2 = herald()
        .clustered(&b)
        .role("edge")
        .edge("id", "e2")
        .edge("limits", unlimited())
        .start()
        .await;
    let router = node(&b, "router", "r1").await;
    // Opened on e2 first: the order is the ids', not the connections' age.
    let (_on_e2, ids2) = crowd(&e2, "crowd", 600).await;
    let (_on_e1, ids1) = crowd(&e1, "crowd", 1_100).await;
    let number = |id: &String| -> u64 {
        id.rsplit_once('-')
            .and_then(|(_, n)| n.parse().ok())
            .expect("<edge>-<number>")
    };
    let mut want = Vec::new();
    for mut ids in [ids1, ids2] {
        ids.sort_by_key(number);
        want.extend(ids);
    }
    let mut grpc = router.grpc(Some(ALPHA_KEY)).await;
    // The default page (1,000), then 250: the 7th page holds the last 200.
    let mut by_250 = vec![250; 6];
    by_250.push(200);
    for (page_size, want_sizes) in [(0, vec![1_000, 700]), (250, by_250)] {
        let mut got = Vec::new();
        let mut got_sizes = Vec::new();
        let mut page_token = String::new();
        loop {
            let r = grpc
                .list_connections(ListConnectionsRequest {
                    page_size,
                    page_token,
                    ..list_user("alpha", "crowd")
                })
                .await
                .expect("a page")
                .into_inner();
            assert!(r.missing_edges.is_empty(), "{:?}", r.missing_edges);
            got_sizes.push(r.connections.len());
            got.extend(r.connections.into_iter().map(|c| c.id));
            if r.next_page_token.is_empty() {
                break;
            }
            page_token = r.next_page_token;
        }
        assert_eq!(got_sizes, want_sizes, "page size {page_size}");
        assert_eq!(got, want, "page size {page_size}");
    }
}

/// `n` nodes on `b` (the first with every role, the rest edges `e1`...), with an edge TTL of
/// `ttl_secs` and Redis calls timing out after `redis_timeout_ms`.
async fn edges_on(b: &Backends, n: usize, ttl_secs: i64, redis_timeout_ms: i64) -> Vec<Herald> {
    let starts = (0..n).map(|i| {
        herald()
            .clustered(b)
            .role(if i == 0 { "all" } else { "edge" })
            .edge("id", format!("e{i}"))
            .cluster("edge_ttl_secs", ttl_secs)
            .cluster("redis_timeout_ms", redis_timeout_ms)
            .start()
    });
    futures_util::future::join_all(starts).await
}

/// A Redis that answers, but later than `redis_timeout_ms`, for several edge TTLs (every client
/// paused 400 of each 450 ms) gets no live edge cleaned up as dead: each edge keeps sending its
/// liveness renewal at least once per heartbeat interval, past the breaker that fails its other
/// calls fast, and the slow Redis executes the renewals the edges stopped waiting for. (Before,
/// failed renewals backed off to 5 s, beyond a 3 s TTL, and the breaker held them back: the
/// edges expired, were reaped, and each rewrote its whole interest into the slow Redis.)
#[tokio::test]
async fn a_slow_redis_gets_no_live_edge_reaped() {
    const EDGES: usize = 4;
    let b = Backends::start_with(false, 1).await;
    let nodes = edges_on(&b, EDGES, 3, 150).await;
    let mut clients = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        clients.push(
            n.connect("alpha", &with_groups("alpha", &format!("u{i}"), &["all"]))
                .await,
        );
    }
    let sum = async |name: &str| {
        let mut sum = 0.0;
        for n in &nodes {
            sum += n.metric(name).await;
        }
        sum
    };
    let registered = r#"herald_edge_resyncs_total{why="registered"}"#;
    eventually(WAIT, async || {
        let r = sum(registered).await;
        if r >= EDGES as f64 {
            Ok(())
        } else {
            Err(format!("{r} of {EDGES} edges registered"))
        }
    })
    .await;
    let registered_before = sum(registered).await;
    // Slow for 12 s (four TTLs): every call waits up to 400 ms, past the 150 ms deadline.
    let url = b.redis_urls()[0].clone();
    let slow_until = std::time::Instant::now() + Duration::from_secs(12);
    while std::time::Instant::now() < slow_until {
        let out = tokio::process::Command::new(server_bin("redis-cli"))
            .args(["-u", &url, "CLIENT", "PAUSE", "400", "ALL"])
            .output()
            .await
            .expect("redis-cli");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "OK",
            "CLIENT PAUSE: {out:?}"
        );
        tokio::time::sleep(Duration::from_millis(450)).await;
    }
    // Every edge heard from Redis again: it checks its interest once back (or, cleaned up as
    // dead meanwhile, registered anew).
    eventually(Duration::from_secs(60), async || {
        let r = sum(r#"herald_edge_resyncs_total{why="reconnected"}"#).await
            + sum(registered).await
            - registered_before;
        if r >= EDGES as f64 {
            Ok(())
        } else {
            Err(format!("{r} of {EDGES} edges back"))
        }
    })
    .await;
    // A reap would have come within a TTL of an expiry; wait two, then nothing must have been.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let reaped = sum("herald_registry_edges_reaped_total").await;
    let fenced = sum(registered).await - registered_before;
    assert_eq!(
        (reaped, fenced),
        (0.0, 0.0),
        "edges cleaned up as dead / registered anew during a slow Redis"
    );
    // Routing is whole: the shared group reaches every client.
    let mut g = nodes[0].grpc(Some(ALPHA_KEY)).await;
    publish_until(
        &mut g,
        publish("alpha", To::Group("all"), "\"after\""),
        EDGES as u32,
        WAIT,
    )
    .await;
    for c in &mut clients {
        while next_data(c).await != json!("after") {}
    }
}

/// A Redis that stalls (`CLIENT PAUSE` longer than a heartbeat interval, shorter than the edge
/// TTL) makes every edge's heartbeat fail; when it answers again, the 20 edges check their
/// interest against their index and write only what differs, spread over a heartbeat interval:
/// no edge rewrites its whole interest (which fed a slow Redis more load), and routing is
/// whole afterwards.
#[tokio::test]
async fn a_stalled_redis_makes_no_edge_rewrite_its_interest() {
    const EDGES: usize = 20;
    const PER_EDGE: usize = 10;
    let b = Backends::start_with(false, 1).await;
    let nodes = edges_on(&b, EDGES, 30, 300).await;
    // PER_EDGE users per edge, each in a group of its own and one shared group.
    let mut clients = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        for j in 0..PER_EDGE {
            let user = format!("u{i}x{j}");
            let group = format!("g{i}x{j}");
            clients.push(
                n.connect("alpha", &with_groups("alpha", &user, &[&group, "all"]))
                    .await,
            );
        }
    }
    let written = async || {
        let mut sum = 0.0;
        for n in &nodes {
            sum += n.metric("herald_registry_entries_written_total").await;
        }
        sum
    };
    let reconnected = async || {
        let mut sum = 0.0;
        for n in &nodes {
            sum += n
                .metric(r#"herald_edge_resyncs_total{why="reconnected"}"#)
                .await;
        }
        sum
    };
    let before = written().await;
    // Heartbeats come every 10 s (a third of the TTL): a 12 s stall fails each edge's at least
    // once, and expires none.
    let out = tokio::process::Command::new(server_bin("redis-cli"))
        .args(["-u", &b.redis_urls()[0], "CLIENT", "PAUSE", "12000", "ALL"])
        .output()
        .await
        .expect("redis-cli");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "OK",
        "CLIENT PAUSE: {out:?}"
    );
    eventually(Duration::from_secs(60), async || {
        let r = reconnected().await;
        if r >= EDGES as f64 {
            Ok(())
        } else {
            Err(format!("{r} of {EDGES} edges checked their interest"))
        }
    })
    .await;
    let rewritten = written().await - before;
    eprintln!(
        "redis stalled 12 s under {EDGES} edges: {rewritten} registry entries written after (a full rewrite: {})",
        EDGES * (2 * PER_EDGE + 1)
    );
    assert!(
        rewritten < (2 * PER_EDGE + 1) as f64,
        "{rewritten} entries written: as much as an edge's whole interest"
    );
    // Routing is whole: the shared group reaches every client.
    let mut g = nodes[0].grpc(Some(ALPHA_KEY)).await;
    publish_until(
        &mut g,
        publish("alpha", To::Group("all"), "\"after\""),
        EDGES as u32,
        WAIT,
    )
    .await;
    for c in &mut clients {
        while next_data(c).await != json!("after") {}
    }
}
