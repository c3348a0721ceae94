//! The history conformance suite (`herald_core::history::conformance`) on the Redis store, on a
//! real `redis-server`, single and as a 3-master Redis Cluster (where a cross-slot script fails,
//! so it fails here and not in production). Then what only Redis has: a flush is a new epoch,
//! expiry by age and by key TTL, binary data, a lost script cache, round trips, Redis down.

use std::time::Duration;

use bytes::Bytes;
use herald_cluster::{RedisConfig, RedisHistory};
use herald_core::history::{
    History, HistoryError, Retention, StreamKey, StreamTarget, conformance,
};
use herald_core::ids::{GroupId, ProjectId, UserId};
use herald_tests::cluster::{Backends, server_bin};
use herald_tests::{WAIT, eventually};

fn store(b: &Backends) -> RedisHistory {
    RedisHistory::new(&RedisConfig {
        urls: b.redis_urls(),
        cluster: b.redis_cluster,
        key_prefix: b.prefix.clone(),
        // Generous: three cluster nodes share two loaded cores with everything else.
        timeout: Duration::from_secs(10),
        ..RedisConfig::default()
    })
    .expect("history store")
}

fn group(p: &str, g: &str) -> StreamKey {
    StreamKey {
        project: ProjectId::new(p).expect("project"),
        target: StreamTarget::Group(GroupId::new(g).expect("group")),
    }
}

fn keep(size: u32, ttl: Duration) -> Retention {
    Retention { size, ttl }
}

/// `redis-cli` on every node of `b` (`-c`: following a cluster's redirections); the replies.
async fn cli(b: &Backends, args: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for r in &b.redis {
        let o = tokio::process::Command::new(server_bin("redis-cli"))
            .args(["-p", &r.port.to_string(), "-c"])
            .args(args)
            .output()
            .await
            .expect("redis-cli");
        assert!(o.status.success(), "redis-cli {args:?} failed");
        out.push(String::from_utf8_lossy(&o.stdout).trim().to_string());
    }
    out
}

/// `redis-cli` on the first node (following redirections to the key's node).
async fn cli1(b: &Backends, args: &[&str]) -> String {
    let o = tokio::process::Command::new(server_bin("redis-cli"))
        .args(["-p", &b.redis[0].port.to_string(), "-c"])
        .args(args)
        .output()
        .await
        .expect("redis-cli");
    // Without a terminal redis-cli prints no redirection notes; dropped should one appear.
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| !l.starts_with("-> Redirected"))
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_string()
}

/// The suite, then what only Redis has, on the Redis of `b`; each part with its own prefix.
async fn on_redis(b: &mut Backends) {
    let prefix = b.prefix.clone();
    b.prefix = format!("{prefix}c");
    let h = store(b);
    conformance(&h, "alpha").await;
    // Sessions live in the same store, under the same contract as the in-process ones.
    herald_core::sessions::conformance(&h, "alpha").await;
    // A group name with `/` and every id character, and a user of the same name, are their own
    // streams; the same name in another project too.
    let odd = group("alpha", "a/b-c_d@e=f/G9");
    let user = StreamKey {
        project: ProjectId::new("alpha").expect("project"),
        target: StreamTarget::User(UserId::new("a-b_c@e=f").expect("user")),
    };
    let minute = keep(10, Duration::from_secs(60));
    assert_eq!(
        h.append(&odd, minute, Bytes::from("x"))
            .await
            .expect("append")
            .offset,
        1
    );
    assert_eq!(
        h.append(&odd, minute, Bytes::from("y"))
            .await
            .expect("append")
            .offset,
        2
    );
    assert_eq!(
        h.append(&user, minute, Bytes::from("z"))
            .await
            .expect("append")
            .offset,
        1
    );
    let page = h.read(&odd, 1, 10).await.expect("read");
    assert_eq!(page.messages, vec![(2, Bytes::from("y"))]);

    b.prefix = format!("{prefix}r");
    round_trips_and_binary_data(b).await;
    b.prefix = format!("{prefix}f");
    flush_is_a_new_epoch(b).await;
    b.prefix = format!("{prefix}a");
    expiry_by_age_and_ttl(b).await;
}

/// An append and a read are one round trip each; positions of 1,000 streams one (two when
/// their epochs are created); a lost script cache costs one more, once. Bytes come back as sent.
async fn round_trips_and_binary_data(b: &Backends) {
    let h = store(b);
    let k = group("p", "bin");
    let minute = keep(100, Duration::from_secs(60));
    let all: Vec<u8> = (0..=255u8).rev().collect();
    let bytes = [
        Bytes::from(all),
        Bytes::from_static(b"\xff\xfe\x00\r\n$-1\r\n*3"),
        Bytes::new(),
    ];
    let before = h.round_trips();
    for (i, d) in bytes.iter().enumerate() {
        let pos = h.append(&k, minute, d.clone()).await.expect("append");
        assert_eq!(pos.offset, i as u64 + 1);
    }
    assert_eq!(h.round_trips() - before, 3, "one round trip per append");
    let before = h.round_trips();
    let page = h.read(&k, 0, 10).await.expect("read");
    assert_eq!(h.round_trips() - before, 1, "one round trip per read");
    let want: Vec<(u64, Bytes)> = (1..).zip(bytes.iter().cloned()).collect();
    assert_eq!(page.messages, want);

    // The entry ids are `<offset>-<ms>`, with Redis's clock.
    let (_, stream) = h.keys_of(&k);
    let ids = cli1(b, &["XRANGE", &stream, "-", "+", "COUNT", "1"]).await;
    let id = ids.lines().next().unwrap_or_default();
    let (offset, ms) = id.split_once('-').unwrap_or_default();
    assert_eq!(offset, "1", "first entry id {id}");
    assert!(
        ms.parse::<u64>().is_ok_and(|ms| ms > 1_600_000_000_000),
        "first entry id {id}"
    );

    let streams: Vec<StreamKey> = (0..1_000).map(|i| group("p", &format!("g{i}"))).collect();
    let before = h.round_trips();
    let first = h.positions(&streams).await.expect("positions");
    assert_eq!(h.round_trips() - before, 2, "positions of new streams");
    assert!(first.iter().all(|p| p.offset == 0 && p.epoch != 0));
    h.append(&streams[500], minute, Bytes::from("m"))
        .await
        .expect("append");
    let before = h.round_trips();
    let again = h.positions(&streams).await.expect("positions");
    assert_eq!(h.round_trips() - before, 1, "positions of known streams");
    assert_eq!(again[500].offset, 1);
    assert_eq!(again[500].epoch, first[500].epoch);
    assert_eq!(again[..500], first[..500]);

    // Redis forgets its scripts: the next call sends the script whole, once.
    assert!(cli(b, &["SCRIPT", "FLUSH"]).await.iter().all(|r| r == "OK"));
    let before = h.round_trips();
    let pos = h
        .append(&k, minute, Bytes::from("after"))
        .await
        .expect("append");
    assert_eq!(pos.offset, 4);
    assert_eq!(h.round_trips() - before, 2, "EVALSHA refused, then EVAL");
    let before = h.round_trips();
    h.append(&k, minute, Bytes::from("again"))
        .await
        .expect("append");
    assert_eq!(h.round_trips() - before, 1);
    assert!(h.degraded().is_none());
}

/// FLUSHALL loses the store: the next use is a new epoch, offsets start over, nothing is kept.
async fn flush_is_a_new_epoch(b: &Backends) {
    let h = store(b);
    let k = group("p", "news");
    let minute = keep(100, Duration::from_secs(60));
    for _ in 0..3 {
        h.append(&k, minute, Bytes::from("m"))
            .await
            .expect("append");
    }
    let before = h.read(&k, 0, 10).await.expect("read");
    assert_eq!(before.position.offset, 3);
    assert!(cli(b, &["FLUSHALL"]).await.iter().all(|r| r == "OK"));
    let after = h.read(&k, 0, 10).await.expect("read");
    assert_eq!(after.position.offset, 0);
    assert_ne!(
        after.position.epoch, before.position.epoch,
        "a flush is a new epoch"
    );
    assert!(after.messages.is_empty());
    let pos = h
        .append(&k, minute, Bytes::from("new"))
        .await
        .expect("append");
    assert_eq!(pos.offset, 1);
    assert_eq!(pos.epoch, after.position.epoch);
    // Appends alone see it too.
    let other = group("p", "other");
    let old = h
        .append(&other, minute, Bytes::from("m"))
        .await
        .expect("append");
    assert!(cli(b, &["FLUSHALL"]).await.iter().all(|r| r == "OK"));
    let new = h
        .append(&other, minute, Bytes::from("m"))
        .await
        .expect("append");
    assert_eq!(new.offset, 1);
    assert_ne!(new.epoch, old.epoch);
    // The meta alone lost (evicted, expired): the stream's stale entries go with the epoch.
    let (meta, _) = h.keys_of(&other);
    assert_eq!(cli1(b, &["DEL", &meta]).await, "1");
    let page = h.read(&other, 0, 10).await.expect("read");
    assert_eq!(page.position.offset, 0);
    assert!(page.messages.is_empty(), "{:?}", page.messages);
    assert_eq!(
        h.append(&other, minute, Bytes::from("m"))
            .await
            .expect("append")
            .offset,
        1
    );
}

/// Messages older than the retention age are not served, and are trimmed by later appends; the
/// stream key expires with its last message, the meta a grace later (a new epoch after that).
async fn expiry_by_age_and_ttl(b: &Backends) {
    let grace = Duration::from_secs(2);
    let h = store(b).with_meta_grace(grace);
    let k = group("p", "short");
    let ttl = Duration::from_secs(2);
    let short = keep(100, ttl);
    let first = h
        .append(&k, short, Bytes::from("old"))
        .await
        .expect("append");
    // Appends keep coming; the first message ages out of reads and out of Redis.
    let page = eventually(WAIT, async || {
        h.append(&k, short, Bytes::from("new"))
            .await
            .expect("append");
        let page = h.read(&k, 0, 1_000).await.expect("read");
        if page.first > 1 {
            Ok(page)
        } else {
            Err(format!("first still {}", page.first))
        }
    })
    .await;
    assert_eq!(page.position.epoch, first.epoch);
    assert!(
        page.messages
            .iter()
            .all(|(o, d)| *o >= page.first && d == "new")
    );
    // The next append finds it aged and trims it from Redis.
    let last = h
        .append(&k, short, Bytes::from("new"))
        .await
        .expect("append");
    let (meta, stream) = h.keys_of(&k);
    let head = cli1(b, &["XRANGE", &stream, "-", "+", "COUNT", "1"]).await;
    assert!(
        !head.starts_with("1-"),
        "the aged entry is still in Redis: {head}"
    );
    // Both expiries were set by the last append: the stream's at its message's age, the meta's
    // a grace later (absolute times, so no pause of this machine moves them).
    let at = async |key: &str| -> i64 {
        cli1(b, &["PEXPIRETIME", key])
            .await
            .parse()
            .expect("pexpiretime")
    };
    let (stream_at, meta_at) = (at(&stream).await, at(&meta).await);
    let last_ms: i64 = cli1(b, &["XREVRANGE", &stream, "+", "-", "COUNT", "1"])
        .await
        .lines()
        .next()
        .and_then(|id| id.split_once('-'))
        .and_then(|(_, ms)| ms.parse().ok())
        .expect("last entry id");
    assert!(
        (stream_at - last_ms - 2_000).abs() <= 50,
        "stream expires at {stream_at}, last message at {last_ms}"
    );
    assert!(
        (meta_at - stream_at - 2_000).abs() <= 50,
        "meta expires at {meta_at}, stream at {stream_at}"
    );

    // No more appends: the messages age out, the offset stays, then the stream key goes.
    let page = eventually(WAIT, async || {
        let page = h.read(&k, 0, 1_000).await.expect("read");
        if page.messages.is_empty() {
            Ok(page)
        } else {
            Err(format!("{} messages still served", page.messages.len()))
        }
    })
    .await;
    if page.position.epoch == last.epoch {
        assert_eq!(page.position.offset, last.offset);
        assert_eq!(page.first, last.offset + 1);
    }
    eventually(WAIT, async || {
        match cli1(b, &["EXISTS", &stream]).await.as_str() {
            "0" => Ok(()),
            other => Err(format!("stream key exists: {other}")),
        }
    })
    .await;
    // Then the meta: the stream starts over under a new epoch.
    eventually(WAIT, async || {
        match cli1(b, &["EXISTS", &meta]).await.as_str() {
            "0" => Ok(()),
            other => Err(format!("meta exists: {other}")),
        }
    })
    .await;
    let page = h.read(&k, 0, 10).await.expect("read");
    assert_eq!(page.position.offset, 0);
    assert_ne!(page.position.epoch, first.epoch);
}

#[tokio::test]
async fn history_on_a_single_redis() {
    let mut b = Backends::start_with(false, 0).await;
    on_redis(&mut b).await;
}

#[tokio::test]
async fn history_on_a_redis_cluster() {
    let mut b = Backends::start_with(true, 0).await;
    // The sandbox is a real cluster: a cross-slot command is refused.
    let out = cli1(&b, &["mget", "a", "b"]).await;
    assert!(out.contains("CROSSSLOT"), "not a cluster: {out}");
    on_redis(&mut b).await;
}

#[tokio::test]
async fn redis_down_is_unavailable_then_a_new_epoch() {
    let mut b = Backends::start_with(false, 0).await;
    let h = store(&b);
    let k = group("p", "news");
    let minute = keep(10, Duration::from_secs(60));
    let before = h
        .append(&k, minute, Bytes::from("m"))
        .await
        .expect("append");
    b.redis[0].kill().await;
    let err = h.append(&k, minute, Bytes::from("lost")).await;
    assert!(matches!(err, Err(HistoryError::Unavailable(_))), "{err:?}");
    assert!(h.degraded().is_some_and(|d| d.contains("redis")));
    b.redis[0].restart().await.expect("redis-server restarts");
    // The connection comes back; the restarted (empty) Redis is a new epoch.
    let pos = eventually(WAIT, async || h.append(&k, minute, Bytes::from("m")).await).await;
    assert_eq!(pos.offset, 1);
    assert_ne!(pos.epoch, before.epoch);
    assert!(h.degraded().is_none());
}
