//! Chaos with history: Redis restarted (the registry's and history's, history's alone with and
//! without persistence, the registry's alone), a single nats-server restarted, one NATS node of
//! three killed, a client offline for 10 s. A publisher sends numbered messages to a recoverable
//! target and, beside each, to a plain group (`plain`, no history) until the fault is over; every
//! client checks every offset of the recoverable stream (0 missing, 0 duplicates, or a new epoch
//! it is told about where the store itself was destroyed) and counts what the plain group lost,
//! printed as `figures:` lines (docs/cluster.md, "What the chaos tests measure").

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use herald_core::proto::v1::Resolution;
use herald_tests::cluster::Backends;
use herald_tests::*;
use serde_json::{Value, json};
use tonic::Code;

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

/// The group without history published beside the recoverable target.
const PLAIN: &str = "plain";
/// The plain group's last message, published once everything else was received.
const MARKER: i64 = -1;
/// Messages a client must receive after a fault before the publisher stops.
const AFTER: usize = 40;

/// A node running edge and router, its edge checking stream positions every second; history in
/// the Redis at `history` instead of the registry's when given.
async fn node(b: &Backends, id: &str, nats: Option<usize>, history: Option<&str>) -> Herald {
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
        h = h.cluster(
            "history_redis_urls",
            toml::Value::Array(vec![url.to_string().into()]),
        );
    }
    h.start().await
}

/// A member of `news` and `plain`.
fn token_for(sub: &str) -> String {
    let mut c = claims("alpha", sub);
    c["groups"] = json!(["news", PLAIN]);
    hs256(ALPHA_SECRET, None, &c)
}

/// What the publisher was answered.
#[derive(Debug, Default)]
struct Published {
    /// Recoverable messages stored: (epoch, offset) → number.
    accepted: BTreeMap<(u32, u64), u64>,
    /// The last stored (epoch, offset), in publish order.
    last: Option<(u32, u64)>,
    /// Recoverable publishes answered `UNAVAILABLE`.
    refused: u64,
    /// Plain publishes answered `DELIVERED`.
    plain_delivered: Vec<u64>,
    /// Plain publishes answered `NO_RECIPIENTS`.
    plain_no_recipients: u64,
    /// Plain publishes answered `UNAVAILABLE`.
    plain_refused: u64,
}

impl Published {
    /// The epochs stored under, in publish order.
    fn epochs(&self) -> Vec<u32> {
        let mut by_first: Vec<(u64, u32)> = Vec::new();
        for ((e, _), n) in &self.accepted {
            match by_first.iter_mut().find(|(_, x)| x == e) {
                Some(f) => f.0 = f.0.min(*n),
                None => by_first.push((*n, *e)),
            }
        }
        by_first.sort();
        by_first.into_iter().map(|(_, e)| e).collect()
    }
}

/// Publishes 1, 2, 3, ... to `to` and the same number to the plain group, a few milliseconds
/// apart, until `stop`. A refusal must be `UNAVAILABLE` (never a false `DELIVERED`); a stored
/// message must carry its offset and epoch.
fn publisher(
    mut grpc: Grpc,
    to: To<'static>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Published> {
    tokio::spawn(async move {
        let mut p = Published::default();
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let r = tokio::time::timeout(WAIT, grpc.publish(publish("alpha", to, &n.to_string())))
                .await
                .expect("publish answered in time");
            match r {
                Ok(r) => {
                    let r = r.into_inner();
                    assert!(r.offset > 0 && r.epoch != 0, "stored: {r:?}");
                    assert_eq!(r.resolution(), Resolution::Delivered, "{r:?}");
                    assert!(p.accepted.insert((r.epoch, r.offset), n).is_none(), "{r:?}");
                    p.last = Some((r.epoch, r.offset));
                }
                Err(s) => {
                    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
                    p.refused += 1;
                }
            }
            let r = tokio::time::timeout(
                WAIT,
                grpc.publish(publish("alpha", To::Group(PLAIN), &n.to_string())),
            )
            .await
            .expect("publish answered in time");
            match r {
                Ok(r) => match r.into_inner().resolution() {
                    Resolution::Delivered => p.plain_delivered.push(n),
                    Resolution::NoRecipients => p.plain_no_recipients += 1,
                    other => panic!("plain publish: {other:?}"),
                },
                Err(s) => {
                    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
                    p.plain_refused += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        p
    })
}

/// What one client received.
#[derive(Debug, Default)]
struct Seen {
    /// Recoverable messages in arrival order: (epoch, offset, number).
    rec: Vec<(u32, u64, u64)>,
    /// Plain messages in arrival order.
    plain: Vec<u64>,
    /// `resumed` frames.
    resumed: Vec<Value>,
    /// The plain group's marker came.
    marker: bool,
}

impl Seen {
    fn take(&mut self, f: Value) {
        match f["type"].as_str() {
            Some("msg") if f["group"] == PLAIN => match f["data"].as_i64() {
                Some(MARKER) => self.marker = true,
                Some(n) if n > 0 => self.plain.push(n as u64),
                _ => panic!("plain message: {f}"),
            },
            Some("msg") => {
                let (Some(e), Some(o), Some(n)) = (
                    f["epoch"].as_u64(),
                    f["offset"].as_u64(),
                    f["data"].as_u64(),
                ) else {
                    panic!("recoverable message without epoch, offset or number: {f}");
                };
                self.rec.push((e as u32, o, n));
            }
            Some("resumed") => self.resumed.push(f),
            _ => panic!("unexpected frame: {f}"),
        }
    }

    /// Reads frames until `done` holds (each frame within [`WAIT`]).
    async fn read_until(&mut self, c: &mut Client, done: impl Fn(&Seen) -> bool) {
        while !done(self) {
            let f = c.next_json().await;
            self.take(f);
        }
    }

    /// Recoverable messages received under `epoch`.
    fn count_in(&self, epoch: u32) -> usize {
        self.rec.iter().filter(|(e, _, _)| *e == epoch).count()
    }

    /// The last recoverable message received.
    fn last(&self) -> (u32, u64) {
        let (e, o, _) = self.rec.last().expect("a recoverable message");
        (*e, *o)
    }
}

/// Reads until the last stored message is in, then publishes the plain marker through `grpc`
/// until it came (an edge that lost its registry entries gets it once it wrote them again):
/// every plain message delivered before it has come too (one router, one subject per edge, in
/// order).
async fn drain(c: &mut Client, seen: &mut Seen, p: &Published, grpc: &mut Grpc) {
    let (le, lo) = p.last.expect("something was stored");
    seen.read_until(c, |s| s.rec.iter().any(|(e, o, _)| *e == le && *o >= lo))
        .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !seen.marker {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the plain marker never came"
        );
        let r = send(
            grpc,
            publish("alpha", To::Group(PLAIN), &MARKER.to_string()),
        )
        .await;
        assert_eq!(r.resolution(), Resolution::Delivered, "marker: {r:?}");
        let _ =
            tokio::time::timeout(Duration::from_secs(2), seen.read_until(c, |s| s.marker)).await;
    }
}

/// Checks `rec`, one client's recoverable messages: each epoch's run of offsets one after
/// another, from `first` in the first run and from 1 in any later one (a new epoch starts at 1),
/// no epoch coming back, each stored message received with its number and, when `complete`,
/// every one stored in those runs received. Returns how many were received that the publisher
/// was told had failed (stored, then refused).
fn verify(who: &str, rec: &[(u32, u64, u64)], p: &Published, first: u64, complete: bool) -> usize {
    let mut runs: Vec<(u32, Vec<(u64, u64)>)> = Vec::new();
    for (e, o, n) in rec {
        match runs.last_mut() {
            Some((re, v)) if re == e => v.push((*o, *n)),
            _ => {
                assert!(
                    runs.iter().all(|(re, _)| re != e),
                    "{who}: epoch {e} came back after another"
                );
                runs.push((*e, vec![(*o, *n)]));
            }
        }
    }
    let mut extra = 0;
    for (i, (e, v)) in runs.iter().enumerate() {
        let start = if i == 0 { first } else { 1 };
        let offsets: Vec<u64> = v.iter().map(|(o, _)| *o).collect();
        let want: Vec<u64> = (start..start + offsets.len() as u64).collect();
        assert_eq!(
            offsets, want,
            "{who}: epoch {e}: 0 missing, 0 duplicates, in order"
        );
        for (o, n) in v {
            match p.accepted.get(&(*e, *o)) {
                Some(want) => assert_eq!(n, want, "{who}: epoch {e} offset {o}"),
                None => extra += 1,
            }
        }
        if !complete {
            continue;
        }
        // Every message stored under this epoch from `start` on was received.
        let last = offsets.last().copied().unwrap_or(0);
        let stored_after = p
            .accepted
            .keys()
            .filter(|(se, so)| se == e && *so >= start && *so > last)
            .count();
        let is_last_epoch = p.last.is_some_and(|(le, _)| le == *e);
        assert!(
            stored_after == 0,
            "{who}: epoch {e} (last epoch: {is_last_epoch}): {stored_after} stored messages after offset {last} never came"
        );
    }
    extra
}

/// What a client lost of the plain group: (missing, duplicates) against the publishes answered
/// `DELIVERED` from `from` on.
fn plain_lost(seen: &Seen, p: &Published, from: u64) -> (usize, usize) {
    let mut count: HashMap<u64, usize> = HashMap::new();
    for n in &seen.plain {
        *count.entry(*n).or_default() += 1;
    }
    let missing = p
        .plain_delivered
        .iter()
        .filter(|n| **n >= from && !count.contains_key(n))
        .count();
    let dups = count.values().map(|c| c - 1).sum();
    (missing, dups)
}

/// Prints the run's figures in one line per client.
fn figures(test: &str, p: &Published, clients: &[(&str, &Seen, usize, (usize, usize))]) {
    eprintln!(
        "figures: {test}: recoverable: {} stored, {} refused (UNAVAILABLE), epochs {}; plain: {} DELIVERED, {} NO_RECIPIENTS, {} refused",
        p.accepted.len(),
        p.refused,
        p.epochs().len(),
        p.plain_delivered.len(),
        p.plain_no_recipients,
        p.plain_refused,
    );
    for (who, seen, extra, (missing, dups)) in clients {
        eprintln!(
            "figures: {test}: {who}: recoverable {} received, 0 missing, 0 duplicates ({extra} stored though refused); plain {} received, {missing} missing, {dups} duplicates",
            seen.rec.len(),
            seen.plain.len(),
        );
    }
}

#[tokio::test]
async fn redis_restarted_under_registry_and_history_every_client_is_told_the_new_epoch() {
    // The default layout: history in the registry's Redis, which has no persistence. A restart
    // destroys both: what was stored before reaches every client, then the stream starts over
    // under a new epoch that every client sees (on its messages, or `resumed` with
    // `recovered: false`), and nothing stored under the new epoch is missed either.
    let mut b = Backends::start_with(false, 1).await;
    let n1 = node(&b, "e1", None, None).await;
    let n2 = node(&b, "e2", None, None).await;
    let mut c1 = n1.connect_auth("alpha", &token_for("c1"), json!({})).await;
    let mut c2 = n2.connect_auth("alpha", &token_for("c2"), json!({})).await;
    let mut x = n2.connect_auth("alpha", &token_for("x"), json!({})).await;
    let stop = Arc::new(AtomicBool::new(false));
    let live = publisher(
        n1.grpc(Some(ALPHA_KEY)).await,
        To::Group("news"),
        stop.clone(),
    );
    let (mut s1, mut s2, mut sx) = (Seen::default(), Seen::default(), Seen::default());
    sx.read_until(&mut x, |s| s.rec.len() >= 20).await;
    drop(x);
    s1.read_until(&mut c1, |s| s.rec.len() >= 30).await;
    let (e1, _) = s1.last();
    b.redis[0].kill().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    b.redis[0].restart().await.expect("redis restarts");
    s1.read_until(&mut c1, |s| {
        s.rec.iter().filter(|r| r.0 != e1).count() >= AFTER
    })
    .await;
    // x comes back with what it had, once e2 reaches Redis again (before, a resume is answered
    // 4503, history unavailable): the epoch it knew is gone, and it is told so.
    n2.wait_ready().await;
    let (xe, xo) = sx.last();
    let mut x = n2
        .connect_auth(
            "alpha",
            &token_for("x"),
            json!({"resume": [{"group": "news", "offset": xo, "epoch": xe}]}),
        )
        .await;
    let mut sx2 = Seen::default();
    sx2.read_until(&mut x, |s| !s.resumed.is_empty()).await;
    let resumed = sx2.resumed[0].clone();
    assert_eq!(resumed["recovered"], false, "{resumed}");
    let e2 = resumed["epoch"].as_u64().expect("epoch") as u32;
    assert_ne!(e2, e1, "{resumed}");
    assert!(
        sx2.rec.is_empty(),
        "nothing replayed from a lost epoch: {sx2:?}"
    );
    sx2.read_until(&mut x, |s| s.rec.len() >= 10).await;
    stop.store(true, Ordering::Relaxed);
    let p = live.await.expect("publisher");
    assert_eq!(p.epochs(), [e1, e2], "one restart, one new epoch");
    let mut grpc = n1.grpc(Some(ALPHA_KEY)).await;
    drain(&mut c1, &mut s1, &p, &mut grpc).await;
    drain(&mut c2, &mut s2, &p, &mut grpc).await;
    drain(&mut x, &mut sx2, &p, &mut grpc).await;
    let x1 = verify("c1", &s1.rec, &p, 1, true);
    let x2 = verify("c2", &s2.rec, &p, 1, true);
    for (who, s) in [("c1", &s1), ("c2", &s2)] {
        assert_eq!(
            s.count_in(e1),
            p.accepted.keys().filter(|(e, _)| *e == e1).count(),
            "{who}"
        );
        assert!(s.count_in(e2) > 0, "{who}: saw the new epoch");
    }
    verify("x before", &sx.rec, &p, 1, false);
    let resumed_at = resumed["offset"].as_u64().expect("offset");
    let xx = verify("x after", &sx2.rec, &p, resumed_at + 1, true);
    assert!(sx2.rec.iter().all(|r| r.0 == e2), "x: only the new epoch");
    figures(
        "redis restarted (registry and history)",
        &p,
        &[
            ("c1 (e1)", &s1, x1, plain_lost(&s1, &p, 1)),
            ("c2 (e2)", &s2, x2, plain_lost(&s2, &p, 1)),
            ("x (offline across it)", &sx2, xx, (0, 0)),
        ],
    );
}

#[tokio::test]
async fn a_persistent_history_redis_restarted_keeps_every_message_and_its_epoch() {
    // History in a Redis of its own with `appendfsync always`: a restart loses nothing that was
    // acknowledged, so the epoch stays and a client offline across it recovers everything.
    let b = Backends::start_with(false, 1).await;
    let mut store = Backends::redis_with(&["--appendonly", "yes", "--appendfsync", "always"]).await;
    let history = store.redis_urls().remove(0);
    let n1 = node(&b, "e1", None, Some(&history)).await;
    let n2 = node(&b, "e2", None, Some(&history)).await;
    let mut c1 = n1.connect_auth("alpha", &token_for("c1"), json!({})).await;
    let mut x = n2.connect_auth("alpha", &token_for("x"), json!({})).await;
    let stop = Arc::new(AtomicBool::new(false));
    let live = publisher(
        n1.grpc(Some(ALPHA_KEY)).await,
        To::Group("news"),
        stop.clone(),
    );
    let (mut s1, mut sx) = (Seen::default(), Seen::default());
    sx.read_until(&mut x, |s| s.rec.len() >= 20).await;
    drop(x);
    s1.read_until(&mut c1, |s| s.rec.len() >= 30).await;
    store.redis[0].kill().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    store.redis[0].restart().await.expect("redis restarts");
    let before = s1.rec.len();
    s1.read_until(&mut c1, |s| s.rec.len() >= before + AFTER)
        .await;
    // Once e2 reaches the store again (before, a resume is answered 4503, history unavailable).
    n2.wait_ready().await;
    let (xe, xo) = sx.last();
    let mut x = n2
        .connect_auth(
            "alpha",
            &token_for("x"),
            json!({"resume": [{"group": "news", "offset": xo, "epoch": xe}]}),
        )
        .await;
    let mut sx2 = Seen::default();
    sx2.read_until(&mut x, |s| !s.resumed.is_empty()).await;
    assert_eq!(sx2.resumed[0]["recovered"], true, "{}", sx2.resumed[0]);
    stop.store(true, Ordering::Relaxed);
    let p = live.await.expect("publisher");
    assert_eq!(p.epochs().len(), 1, "the epoch survived the restart");
    let mut grpc = n1.grpc(Some(ALPHA_KEY)).await;
    drain(&mut c1, &mut s1, &p, &mut grpc).await;
    drain(&mut x, &mut sx2, &p, &mut grpc).await;
    let x1 = verify("c1", &s1.rec, &p, 1, true);
    let mut xall = sx.rec.clone();
    xall.extend(&sx2.rec);
    let xx = verify("x", &xall, &p, 1, true);
    assert_eq!(s1.rec.len(), p.accepted.len() + x1);
    figures(
        "history redis (appendfsync always) restarted",
        &p,
        &[
            ("c1 (e1)", &s1, x1, plain_lost(&s1, &p, 1)),
            ("x (offline across it)", &sx2, xx, (0, 0)),
        ],
    );
}

#[tokio::test]
async fn the_registry_redis_restarted_loses_nothing_of_a_recoverable_group() {
    // History in a Redis of its own; the registry's restarts empty and is rebuilt by the edges.
    let mut b = Backends::start_with(false, 1).await;
    let store = Backends::start_with(false, 0).await;
    let history = store.redis_urls().remove(0);
    let n1 = node(&b, "e1", None, Some(&history)).await;
    let n2 = node(&b, "e2", None, Some(&history)).await;
    let mut c1 = n1.connect_auth("alpha", &token_for("c1"), json!({})).await;
    let mut c2 = n2.connect_auth("alpha", &token_for("c2"), json!({})).await;
    let stop = Arc::new(AtomicBool::new(false));
    let live = publisher(
        n1.grpc(Some(ALPHA_KEY)).await,
        To::Group("news"),
        stop.clone(),
    );
    let (mut s1, mut s2) = (Seen::default(), Seen::default());
    s1.read_until(&mut c1, |s| s.rec.len() >= 30).await;
    b.redis[0].kill().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    b.redis[0].restart().await.expect("redis restarts");
    let before = s1.rec.len();
    s1.read_until(&mut c1, |s| s.rec.len() >= before + AFTER)
        .await;
    stop.store(true, Ordering::Relaxed);
    let p = live.await.expect("publisher");
    assert_eq!(p.epochs().len(), 1, "history untouched");
    let mut grpc = n1.grpc(Some(ALPHA_KEY)).await;
    drain(&mut c1, &mut s1, &p, &mut grpc).await;
    drain(&mut c2, &mut s2, &p, &mut grpc).await;
    let x1 = verify("c1", &s1.rec, &p, 1, true);
    let x2 = verify("c2", &s2.rec, &p, 1, true);
    figures(
        "registry redis restarted",
        &p,
        &[
            ("c1 (e1)", &s1, x1, plain_lost(&s1, &p, 1)),
            ("c2 (e2)", &s2, x2, plain_lost(&s2, &p, 1)),
        ],
    );
}

#[tokio::test]
async fn a_single_nats_server_restarted_loses_nothing_of_a_recoverable_group() {
    let mut b = Backends::start_with(false, 1).await;
    let n1 = node(&b, "e1", None, None).await;
    let n2 = node(&b, "e2", None, None).await;
    let mut c1 = n1.connect_auth("alpha", &token_for("c1"), json!({})).await;
    let mut c2 = n2.connect_auth("alpha", &token_for("c2"), json!({})).await;
    let stop = Arc::new(AtomicBool::new(false));
    let live = publisher(
        n1.grpc(Some(ALPHA_KEY)).await,
        To::Group("news"),
        stop.clone(),
    );
    let (mut s1, mut s2) = (Seen::default(), Seen::default());
    s1.read_until(&mut c1, |s| s.rec.len() >= 30).await;
    b.nats[0].kill().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    b.nats[0].restart().await.expect("nats-server restarts");
    let before = s1.rec.len();
    s1.read_until(&mut c1, |s| s.rec.len() >= before + AFTER)
        .await;
    s2.read_until(&mut c2, |s| s.rec.len() >= before + AFTER)
        .await;
    stop.store(true, Ordering::Relaxed);
    let p = live.await.expect("publisher");
    assert_eq!(p.epochs().len(), 1, "history untouched");
    let mut grpc = n1.grpc(Some(ALPHA_KEY)).await;
    drain(&mut c1, &mut s1, &p, &mut grpc).await;
    drain(&mut c2, &mut s2, &p, &mut grpc).await;
    let x1 = verify("c1", &s1.rec, &p, 1, true);
    let x2 = verify("c2", &s2.rec, &p, 1, true);
    let repaired = n1.metric("herald_edge_stream_repaired_total").await
        + n2.metric("herald_edge_stream_repaired_total").await;
    eprintln!("figures: nats-server restarted: {repaired} messages repaired from history");
    figures(
        "nats-server restarted",
        &p,
        &[
            ("c1 (e1)", &s1, x1, plain_lost(&s1, &p, 1)),
            ("c2 (e2)", &s2, x2, plain_lost(&s2, &p, 1)),
        ],
    );
}

#[tokio::test]
async fn a_nats_node_of_three_killed_under_an_edge_loses_nothing_of_a_user_stream() {
    let mut b = Backends::start().await;
    let n1 = node(&b, "e1", Some(0), None).await;
    let n2 = node(&b, "e2", Some(1), None).await;
    let mut c = n1
        .connect_auth("alpha", &token_for("alice"), json!({}))
        .await;
    let stop = Arc::new(AtomicBool::new(false));
    let live = publisher(
        n2.grpc(Some(ALPHA_KEY)).await,
        To::User("alice"),
        stop.clone(),
    );
    let mut s = Seen::default();
    s.read_until(&mut c, |s| s.rec.len() >= 30).await;
    // e1's NATS node dies: what is published until e1 reconnects to another one is lost on the
    // bus, and the edge repairs it from history.
    b.nats[0].kill().await;
    // Long enough for e1 to notice and reconnect to another node (loopback: at once).
    let before = s.rec.len();
    s.read_until(&mut c, |s| s.rec.len() >= before + AFTER)
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = s.rec.len();
    s.read_until(&mut c, |s| s.rec.len() >= before + AFTER)
        .await;
    stop.store(true, Ordering::Relaxed);
    let p = live.await.expect("publisher");
    let mut grpc = n2.grpc(Some(ALPHA_KEY)).await;
    drain(&mut c, &mut s, &p, &mut grpc).await;
    let x = verify("alice", &s.rec, &p, 1, true);
    eprintln!(
        "figures: nats node killed: {} messages repaired from history, {} gaps",
        n1.metric("herald_edge_stream_repaired_total").await,
        n1.metric("herald_edge_stream_gaps_total").await
    );
    figures(
        "one nats node of three killed",
        &p,
        &[("alice (e1)", &s, x, plain_lost(&s, &p, 1))],
    );
}

#[tokio::test]
async fn a_client_offline_for_ten_seconds_resumes_and_misses_nothing() {
    let b = Backends::start_with(false, 1).await;
    let n1 = node(&b, "e1", None, None).await;
    let n2 = node(&b, "e2", None, None).await;
    let mut c1 = n1.connect_auth("alpha", &token_for("c1"), json!({})).await;
    let mut x = n2.connect_auth("alpha", &token_for("x"), json!({})).await;
    let stop = Arc::new(AtomicBool::new(false));
    let live = publisher(
        n1.grpc(Some(ALPHA_KEY)).await,
        To::Group("news"),
        stop.clone(),
    );
    let (mut s1, mut sx) = (Seen::default(), Seen::default());
    sx.read_until(&mut x, |s| s.rec.len() >= 30).await;
    drop(x);
    let plain_from = sx.plain.last().copied().unwrap_or(0) + 1;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (xe, xo) = sx.last();
    let t = std::time::Instant::now();
    let mut x = n2
        .connect_auth(
            "alpha",
            &token_for("x"),
            json!({"resume": [{"group": "news", "offset": xo, "epoch": xe}]}),
        )
        .await;
    let mut sx2 = Seen::default();
    sx2.read_until(&mut x, |s| !s.resumed.is_empty()).await;
    let caught_up = t.elapsed();
    assert_eq!(sx2.resumed[0]["recovered"], true, "{}", sx2.resumed[0]);
    let replayed = sx2.rec.len();
    sx2.read_until(&mut x, |s| s.rec.len() >= replayed + AFTER)
        .await;
    stop.store(true, Ordering::Relaxed);
    let p = live.await.expect("publisher");
    let mut grpc = n1.grpc(Some(ALPHA_KEY)).await;
    drain(&mut c1, &mut s1, &p, &mut grpc).await;
    drain(&mut x, &mut sx2, &p, &mut grpc).await;
    let x1 = verify("c1", &s1.rec, &p, 1, true);
    let mut xall = sx.rec.clone();
    xall.extend(&sx2.rec);
    let xx = verify("x", &xall, &p, 1, true);
    let seen_plain: HashSet<u64> = sx.plain.iter().chain(&sx2.plain).copied().collect();
    let away = p
        .plain_delivered
        .iter()
        .filter(|n| **n >= plain_from && !seen_plain.contains(n))
        .count();
    eprintln!(
        "figures: client offline 10 s: {replayed} messages replayed on resume, resumed in {caught_up:?}; {away} plain messages published while away, none recoverable"
    );
    let mut all = Seen {
        rec: xall,
        ..Default::default()
    };
    all.plain = sx.plain.iter().chain(&sx2.plain).copied().collect();
    figures(
        "client offline 10 s",
        &p,
        &[
            ("c1 (e1, stayed)", &s1, x1, plain_lost(&s1, &p, 1)),
            ("x (e2, offline 10 s)", &all, xx, plain_lost(&all, &p, 1)),
        ],
    );
}

#[tokio::test]
async fn readiness_says_the_history_store_is_degraded_on_idle_edges_and_routers() {
    // History in a Redis of its own, which goes away and comes back; nothing is published or
    // read meanwhile, so only the nodes' own probes can notice.
    let b = Backends::start_with(false, 1).await;
    let mut store = Backends::start_with(false, 0).await;
    let history = store.redis_urls().remove(0);
    let role = |role: &str| {
        let h = herald()
            .clustered(&b)
            .projects(PROJECTS)
            .role(role)
            .cluster(
                "history_redis_urls",
                toml::Value::Array(vec![history.clone().into()]),
            );
        if role == "edge" {
            h.edge("id", "e1")
        } else {
            h
        }
    };
    let edge = role("edge").start().await;
    let router = role("router").start().await;
    for n in [&edge, &router] {
        n.wait_ready().await;
    }
    store.redis[0].kill().await;
    for (what, n) in [("edge", &edge), ("router", &router)] {
        eventually(WAIT, async || match n.admin_get("/readyz").await {
            (200, body)
                if body.starts_with("ready, degraded: ") && body.contains("redis history") =>
            {
                Ok(())
            }
            other => Err(format!("{what} /readyz: {other:?}")),
        })
        .await;
        n.wait_metric("herald_degraded", 1.0).await;
        assert_eq!(n.metric("herald_history_up").await, 0.0, "{what}");
    }
    store.redis[0].restart().await.expect("redis restarts");
    for n in [&edge, &router] {
        n.wait_ready().await;
        n.wait_metric("herald_degraded", 0.0).await;
        n.wait_metric("herald_history_up", 1.0).await;
    }
}
