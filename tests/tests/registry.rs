//! The registry conformance suite, run against each implementation: the in-process one
//! (`MemoryRegistry`), and the Redis one on a real `redis-server`, single and as a 3-master Redis
//! Cluster (where a cross-slot command fails, so it fails here and not in production). What only
//! Redis has (liveness expiry, cleanup of dead edges, fencing, round trips) is tested after.
//!
//! (`LocalRegistry`, the single node's, is a view of its hub, not a store: it is tested with the
//! hub, in `edge/`.)

use std::time::{Duration, Instant};

use herald_cluster::{RedisConfig, RedisRegistry};
use herald_core::ids::{EdgeId, GroupId, ProjectId, UserId};
use herald_core::registry::{
    InterestChange, InterestKey, Liveness, MemoryRegistry, Registry, Route,
};
use herald_tests::cluster::{Backends, server_bin};
use herald_tests::{WAIT, eventually, eventually_eq};

fn edge(s: &str) -> EdgeId {
    EdgeId::new(s).expect("valid edge id")
}

fn user(p: &str, u: &str) -> InterestKey {
    InterestKey::User(
        ProjectId::new(p).expect("project"),
        UserId::new(u).expect("user"),
    )
}

fn group(p: &str, g: &str) -> InterestKey {
    InterestKey::Group(
        ProjectId::new(p).expect("project"),
        GroupId::new(g).expect("group"),
    )
}

fn registry(b: &Backends, ttl: Duration) -> RedisRegistry {
    RedisRegistry::new(&RedisConfig {
        urls: b.redis_urls(),
        cluster: b.redis_cluster,
        key_prefix: b.prefix.clone(),
        edge_ttl: ttl,
        // A deadline per Redis call: generous, since a batch of thousands of keys on three
        // cluster nodes shares two loaded cores with everything else; the round-trip count, not
        // the time, is what the suite checks of batching.
        timeout: Duration::from_secs(10),
    })
    .expect("registry")
}

async fn sorted(r: &dyn Registry, k: &InterestKey) -> Vec<EdgeId> {
    let mut v = r.edges_for(k).await.expect("edges_for");
    v.sort();
    v
}

async fn live(r: &dyn Registry) -> Vec<EdgeId> {
    let mut v = r.live_edges().await.expect("live_edges");
    v.sort();
    v
}

/// Heartbeats `edges`, so that a registry with liveness expiry keeps serving them however slow
/// the machine is between two checks.
async fn alive(r: &dyn Registry, edges: &[&EdgeId]) {
    for e in edges {
        assert_ne!(r.heartbeat(e).await.expect("hb"), Liveness::Fenced);
    }
}

/// What every registry promises, whatever holds it. `r` and `other` are two clients of the same
/// registry (two routers, or an edge and a router).
async fn conformance(r: &dyn Registry, other: &dyn Registry) {
    let (e1, e2) = (edge("e1"), edge("e2"));

    // Idempotency keys are claimed once per window, per project, by whichever client. The window
    // is long enough that the claims meant to fall inside it do, however slow the machine.
    let p = ProjectId::new("a").expect("project");
    let q = ProjectId::new("b").expect("project");
    let w = Duration::from_secs(2);
    assert!(
        r.claim_idempotency_key(&p, "k{1}.*", w)
            .await
            .expect("claim")
    );
    assert!(
        !other
            .claim_idempotency_key(&p, "k{1}.*", w)
            .await
            .expect("claim")
    );
    assert!(
        other
            .claim_idempotency_key(&q, "k{1}.*", w)
            .await
            .expect("claim")
    );
    other
        .release_idempotency_key(&p, "k{1}.*")
        .await
        .expect("release");
    let claimed = Instant::now();
    assert!(
        r.claim_idempotency_key(&p, "k{1}.*", w)
            .await
            .expect("claim")
    );
    assert!(
        !r.claim_idempotency_key(&p, "k{1}.*", w)
            .await
            .expect("claim")
    );
    // Claimable again once the window has passed, not before.
    let again = eventually(WAIT, async || {
        if r.claim_idempotency_key(&p, "k{1}.*", w)
            .await
            .expect("claim")
        {
            Ok(claimed.elapsed())
        } else {
            Err("the key was never claimable again")
        }
    })
    .await;
    assert!(again >= w, "claimable again after {again:?}, within {w:?}");

    // An edge registers, writes its whole interest, then renews.
    assert!(live(r).await.is_empty());
    assert_eq!(r.heartbeat(&e1).await.expect("hb"), Liveness::Registered);
    r.resync(&e1, &[]).await.expect("resync");
    assert_eq!(r.heartbeat(&e1).await.expect("hb"), Liveness::Renewed);
    assert_eq!(
        other.heartbeat(&e2).await.expect("hb"),
        Liveness::Registered
    );
    assert_eq!(live(other).await, vec![e1.clone(), e2.clone()]);

    // Equal user and group names are different keys; projects never mix; the last change of a
    // key in a batch wins.
    let (alice, news, alice_g) = (user("a", "alice"), group("a", "news"), group("a", "alice"));
    let sport = group("a", "sport");
    r.update(
        &e1,
        &[
            InterestChange::Add(alice.clone()),
            InterestChange::Add(news.clone()),
            InterestChange::Remove(news.clone()),
            InterestChange::Add(news.clone()),
            InterestChange::Add(sport.clone()),
            InterestChange::Remove(sport.clone()),
        ],
    )
    .await
    .expect("update");
    other
        .update(&e2, &[InterestChange::Add(alice.clone())])
        .await
        .expect("update");
    alive(r, &[&e1, &e2]).await;
    assert_eq!(sorted(r, &alice).await, vec![e1.clone(), e2.clone()]);
    assert_eq!(sorted(other, &news).await, vec![e1.clone()]);
    assert!(sorted(r, &sport).await.is_empty());
    assert!(sorted(r, &alice_g).await.is_empty());
    assert!(sorted(r, &user("b", "alice")).await.is_empty());
    assert!(sorted(r, &group("b", "news")).await.is_empty());

    // Removing what an edge does not hold changes nothing; one edge's removal leaves the other's.
    r.update(
        &e1,
        &[
            InterestChange::Remove(user("a", "nobody")),
            InterestChange::Remove(alice.clone()),
        ],
    )
    .await
    .expect("update");
    alive(r, &[&e1, &e2]).await;
    assert_eq!(sorted(r, &alice).await, vec![e2.clone()]);
    r.update(&e1, &[InterestChange::Add(alice.clone())])
        .await
        .expect("update");

    // A batch of thousands of keys is one call.
    let keys: Vec<InterestKey> = (0..5_000).map(|i| user("a", &format!("u{i}"))).collect();
    let changes: Vec<InterestChange> = keys.iter().cloned().map(InterestChange::Add).collect();
    r.update(&e1, &changes).await.expect("big update");
    alive(r, &[&e1, &e2]).await;
    assert_eq!(sorted(r, &keys[4_321]).await, vec![e1.clone()]);
    assert_eq!(sorted(r, &keys[0]).await, vec![e1.clone()]);

    // A resync replaces the edge's whole interest: stale keys go, the rest stays, other edges'
    // entries are untouched.
    r.resync(&e1, &[alice.clone(), keys[1].clone(), group("a", "new")])
        .await
        .expect("resync");
    alive(r, &[&e1, &e2]).await;
    assert!(sorted(r, &news).await.is_empty());
    assert!(sorted(r, &keys[4_321]).await.is_empty());
    assert_eq!(sorted(r, &keys[1]).await, vec![e1.clone()]);
    assert_eq!(sorted(r, &group("a", "new")).await, vec![e1.clone()]);
    assert_eq!(sorted(r, &alice).await, vec![e1.clone(), e2.clone()]);
    // An empty resync forgets everything of the edge.
    other.resync(&e2, &[]).await.expect("resync");
    alive(r, &[&e1, &e2]).await;
    assert_eq!(sorted(r, &alice).await, vec![e1.clone()]);
    other
        .resync(&e2, std::slice::from_ref(&alice))
        .await
        .expect("resync");

    // A deregistered edge is gone at once, with its entries; it registers anew afterwards.
    other.deregister(&e2).await.expect("deregister");
    alive(r, &[&e1]).await;
    assert_eq!(sorted(r, &alice).await, vec![e1.clone()]);
    // Another client may have read liveness a moment before (routers cache it up to a second).
    eventually_eq(WAIT, vec![e1.clone()], async || live(r).await).await;
    assert_eq!(
        other.heartbeat(&e2).await.expect("hb"),
        Liveness::Registered
    );
    alive(r, &[&e1, &e2]).await;
    assert_eq!(
        sorted(r, &alice).await,
        vec![e1.clone()],
        "entries came back without a resync"
    );
    r.deregister(&e1).await.expect("deregister");
    other.deregister(&e2).await.expect("deregister");
    eventually_eq(WAIT, Vec::new(), async || live(r).await).await;
    assert!(r.degraded().is_none());
    assert!(other.degraded().is_none());
}

/// What only the Redis registry has: liveness that runs out, cleanup of a dead edge by whoever
/// notices, fencing while it runs, and batches that cost a handful of round trips.
async fn redis_liveness(b: &Backends) {
    // e1 heartbeats through `r` and lives a minute past it: on a loaded machine a batch of
    // thousands of keys can outlast a short TTL. e2 heartbeats through `short` (4 s), which the
    // test lets run out; it heartbeats e2 just before each check that needs e2 alive.
    let r = registry(b, Duration::from_secs(60));
    let ttl = Duration::from_secs(4);
    let short = registry(b, ttl);
    let other = registry(b, ttl);
    let (e1, e2) = (edge("e1"), edge("e2"));
    let alice = user("a", "alice");
    assert_eq!(r.heartbeat(&e1).await.expect("hb"), Liveness::Registered);
    assert_eq!(
        short.heartbeat(&e2).await.expect("hb"),
        Liveness::Registered
    );

    // A batch of thousands of keys costs a handful of round trips.
    let keys: Vec<InterestKey> = (0..5_000).map(|i| user("a", &format!("u{i}"))).collect();
    let changes: Vec<InterestChange> = keys.iter().cloned().map(InterestChange::Add).collect();
    let before = r.round_trips();
    r.update(&e1, &changes).await.expect("big update");
    let trips = r.round_trips() - before;
    assert!(trips <= 6, "5,000 adds took {trips} round trips");
    r.update(&e1, &[InterestChange::Add(alice.clone())])
        .await
        .expect("update");
    r.update(&e2, &[InterestChange::Add(alice.clone())])
        .await
        .expect("update");
    // Before a read, which would notice e2 dead and clean it up had the batch outlasted its TTL.
    short.heartbeat(&e2).await.expect("hb");
    assert_eq!(sorted(&r, &alice).await, vec![e1.clone(), e2.clone()]);

    // e2 stops heartbeating: within the TTL it is no longer served, then it is cleaned up by
    // whoever notices first, and when it comes back it registers anew.
    let started = Instant::now();
    loop {
        r.heartbeat(&e1).await.expect("hb");
        if sorted(&r, &alice).await == vec![e1.clone()] {
            break;
        }
        assert!(
            started.elapsed() < ttl + Duration::from_secs(3),
            "dead edge still served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(live(&r).await, vec![e1.clone()]);
    other.forget_live_edges();
    other.reap_dead().await.expect("reap");
    r.heartbeat(&e1).await.expect("hb");
    // While a cleanup runs the edge is fenced; then it registers anew.
    let liveness = eventually(WAIT, async || {
        match short.heartbeat(&e2).await.expect("hb") {
            Liveness::Fenced => Err("still fenced"),
            l => Ok(l),
        }
    })
    .await;
    assert_eq!(liveness, Liveness::Registered);
    // Its old entries are gone: it must resync to be found again.
    assert_eq!(sorted(&r, &alice).await, vec![e1.clone()]);
    r.resync(&e2, std::slice::from_ref(&alice))
        .await
        .expect("resync");
    r.forget_live_edges();
    assert_eq!(sorted(&r, &alice).await, vec![e1.clone(), e2.clone()]);
    assert!(r.degraded().is_none());
}

/// `FLUSHALL` on every node of `b`.
async fn flushall(b: &Backends) {
    for r in &b.redis {
        let out = tokio::process::Command::new(server_bin("redis-cli"))
            .args(["-p", &r.port.to_string(), "FLUSHALL"])
            .output()
            .await
            .expect("redis-cli");
        assert!(out.status.success(), "FLUSHALL: {out:?}");
    }
}

/// An edge's heartbeat and, when it is told to, the rewrite of its whole interest.
async fn beat(r: &RedisRegistry, e: &EdgeId, keys: &[InterestKey]) -> Liveness {
    let l = r.heartbeat(e).await.expect("hb");
    if l == Liveness::Registered {
        r.resync(e, keys).await.expect("resync");
    }
    l
}

/// The registry knows when it is not whole: from a flush until every live edge has written its
/// interest again and, after a loss, one edge TTL has passed; targets then resolve to
/// `Route::Incomplete`, never to a half-rebuilt set of edges.
#[tokio::test]
async fn the_redis_registry_says_when_it_is_not_whole() {
    let b = Backends::start_with(false, 0).await;
    let ttl = Duration::from_secs(4);
    let (edge1, edge2, router) = (registry(&b, ttl), registry(&b, ttl), registry(&b, ttl));
    let (e1, e2) = (edge("e1"), edge("e2"));
    let alice = user("a", "alice");
    let whole = Route::Edges(vec![e1.clone()]);
    let resolve = async || router.resolve(&alice).await.expect("resolve");

    // A fresh registry is whole once its edges have written their interest: no wait.
    assert_eq!(
        beat(&edge1, &e1, std::slice::from_ref(&alice)).await,
        Liveness::Registered
    );
    assert_eq!(beat(&edge2, &e2, &[]).await, Liveness::Registered);
    eventually_eq(WAIT, whole.clone(), async || {
        beat(&edge1, &e1, std::slice::from_ref(&alice)).await;
        beat(&edge2, &e2, &[]).await;
        resolve().await
    })
    .await;
    assert_eq!(beat(&edge1, &e1, &[]).await, Liveness::Renewed);

    // Flushed: incomplete at once, and still within a TTL of the loss even with every edge
    // written again; whole after it.
    let flushed = Instant::now();
    flushall(&b).await;
    assert!(matches!(resolve().await, Route::Incomplete(_)));
    assert_eq!(
        beat(&edge1, &e1, std::slice::from_ref(&alice)).await,
        Liveness::Registered
    );
    assert_eq!(beat(&edge2, &e2, &[]).await, Liveness::Registered);
    let got = resolve().await;
    if flushed.elapsed() < ttl {
        assert!(matches!(got, Route::Incomplete(_)), "{got:?}");
    }
    eventually_eq(WAIT, whole.clone(), async || {
        beat(&edge1, &e1, std::slice::from_ref(&alice)).await;
        beat(&edge2, &e2, &[]).await;
        resolve().await
    })
    .await;

    // An edge alive but not yet written again keeps it incomplete past the TTL.
    flushall(&b).await;
    beat(&edge1, &e1, std::slice::from_ref(&alice)).await;
    assert_eq!(
        edge2.heartbeat(&e2).await.expect("hb"),
        Liveness::Registered
    );
    tokio::time::sleep(ttl).await;
    edge2.heartbeat(&e2).await.expect("hb");
    beat(&edge1, &e1, std::slice::from_ref(&alice)).await;
    router.forget_live_edges();
    let got = resolve().await;
    assert!(matches!(got, Route::Incomplete(_)), "{got:?}");
    edge2.resync(&e2, &[]).await.expect("resync");
    router.forget_live_edges();
    assert_eq!(resolve().await, whole);

    // A restarted edge that knows nothing of earlier epochs creates the next one: the router,
    // which saw the earlier one, still waits a TTL.
    let flushed = Instant::now();
    flushall(&b).await;
    let restarted = registry(&b, ttl);
    assert_eq!(
        beat(&restarted, &e1, std::slice::from_ref(&alice)).await,
        Liveness::Registered
    );
    beat(&edge2, &e2, &[]).await;
    router.forget_live_edges();
    let got = resolve().await;
    if flushed.elapsed() < ttl {
        assert!(matches!(got, Route::Incomplete(_)), "{got:?}");
    }
    eventually_eq(WAIT, whole, async || {
        beat(&restarted, &e1, std::slice::from_ref(&alice)).await;
        beat(&edge2, &e2, &[]).await;
        resolve().await
    })
    .await;
}

#[tokio::test]
async fn registry_in_process() {
    let r = MemoryRegistry::new();
    conformance(&r, &r).await;
}

/// The conformance suite on the Redis of `b`, two clients, then what only Redis has. Each part
/// uses its own key prefix. Edges live a minute past a heartbeat in the conformance part, which
/// tests no expiry: a loaded machine's pauses never expire one early.
async fn on_redis(b: &mut Backends) {
    let ttl = Duration::from_secs(60);
    let prefix = b.prefix.clone();
    b.prefix = format!("{prefix}c");
    conformance(&registry(b, ttl), &registry(b, ttl)).await;
    b.prefix = format!("{prefix}l");
    redis_liveness(b).await;
}

#[tokio::test]
async fn registry_on_a_single_redis() {
    let mut b = Backends::start_with(false, 0).await;
    on_redis(&mut b).await;
}

#[tokio::test]
async fn registry_on_a_redis_cluster() {
    let mut b = Backends::start_with(true, 0).await;
    // The sandbox is a real cluster: a cross-slot command is refused.
    let out = tokio::process::Command::new(server_bin("redis-cli"))
        .args(["-p", &b.redis[0].port.to_string(), "-c", "mget", "a", "b"])
        .output()
        .await
        .expect("redis-cli");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("CROSSSLOT"),
        "not a cluster: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    on_redis(&mut b).await;
}

#[tokio::test]
async fn redis_down_is_an_error_then_recovers_and_reports_registration_lost() {
    let mut b = Backends::start_with(false, 0).await;
    let r = registry(&b, Duration::from_secs(5));
    let e = edge("e1");
    assert_eq!(r.heartbeat(&e).await.expect("hb"), Liveness::Registered);
    r.update(&e, &[InterestChange::Add(user("a", "bob"))])
        .await
        .expect("update");
    b.redis[0].kill().await;
    assert!(r.heartbeat(&e).await.is_err());
    assert!(r.degraded().is_some_and(|d| d.contains("redis")));
    // While it is down, calls fail at once: one tries Redis again every 200 ms at most.
    let (trips, since) = (r.round_trips(), Instant::now());
    for _ in 0..200 {
        assert!(r.resolve(&user("a", "bob")).await.is_err());
    }
    let probes = r.round_trips() - trips;
    let due = since.elapsed().as_millis() as u64 / 200 + 1;
    assert!(
        probes <= due,
        "{probes} calls reached Redis in {:?}",
        since.elapsed()
    );
    b.redis[0].restart().await.expect("redis-server restarts");
    // The manager reconnects; the restarted (empty) Redis no longer knows the edge.
    let until = Instant::now() + WAIT;
    let liveness = loop {
        match r.heartbeat(&e).await {
            Ok(l) => break l,
            Err(_) => {
                assert!(Instant::now() < until, "no reconnection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(liveness, Liveness::Registered);
    assert!(r.degraded().is_none());
}
