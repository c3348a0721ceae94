//! Micro-benchmarks of the hot paths: encoding one message for many recipients, local fan-out,
//! JWT verification per algorithm, envelope decoding, registry lookups, `permessage-deflate`.
//! Run: `cargo bench -p herald-bench --bench micro`.

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt as _;
use herald_core::ids::{EdgeId, GroupId, ProjectId, UserId};
use herald_core::projects::{KeyAlgorithm, KeyConfig, ProjectConfig};
use herald_core::proto::bus::{Envelope, TargetKind};
use herald_core::registry::{InterestChange, InterestKey, MemoryRegistry, Registry};
use herald_edge::frame::message_frame;
use herald_edge::hub::{Hub, HubConfig, NewConn};
use prost::Message as _;

fn envelope(kind: TargetKind, name: &str) -> Envelope {
    Envelope {
        version: 1,
        project: "bench".into(),
        kind: kind as i32,
        name: name.into(),
        payload: format!(r#"{{"t":1234567890123456789,"p":"{}"}}"#, "x".repeat(68)).into_bytes(),
        message_id: "0000-1".into(),
        ..Default::default()
    }
}

fn encode(c: &mut Criterion) {
    let env = envelope(TargetKind::Group, "news");
    c.bench_function("encode/message_frame_100B", |b| {
        b.iter(|| message_frame(black_box(&env)))
    });
    let bytes = env.encode_to_vec();
    c.bench_function("envelope/decode_100B", |b| {
        b.iter(|| Envelope::decode(black_box(bytes.as_slice())))
    });
}

fn fanout(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let edge = EdgeId::new("e1").expect("id");
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let hub = rt.block_on(async {
        let hub = Hub::new(
            edge,
            HubConfig {
                shards: 8,
                max_queued_bytes: 1 << 20,
                ping_interval: Duration::from_secs(25),
                pong_timeout: Duration::from_secs(20),
                token_leeway: Duration::from_secs(5),
                ..HubConfig::default()
            },
            Some(registry),
        );
        let project = ProjectId::new("bench").expect("id");
        let group = GroupId::new("news").expect("id");
        let mut handles = Vec::new();
        for i in 0..1000 {
            handles.push(
                hub.insert(
                    NewConn {
                        project: project.clone(),
                        user: UserId::new(&format!("u{i}")).expect("id"),
                        groups: vec![group.clone()],
                        remote: SocketAddr::from(([127, 0, 0, 1], 1000)),
                        expires_unix: u64::MAX,
                        wire: Default::default(),
                        deflate: false,
                        framing: Default::default(),
                        keep_alive_secs: 0,
                        heart_beat_secs: 0,
                        replaces: None,
                        resume: Vec::new(),
                    },
                    0,
                )
                .await
                .expect("no per-user cap"),
            );
        }
        (hub, handles)
    });
    let (hub, handles) = hub;
    let env = envelope(TargetKind::Group, "news");
    let mut cx = Context::from_waker(Waker::noop());
    let mut taken = std::collections::VecDeque::new();
    c.bench_function("hub/deliver_group_1000_and_take", |b| {
        b.iter(|| {
            hub.deliver(black_box(&env));
            for h in &handles {
                if hub.poll_outgoing(*h, &mut cx, &mut taken, true).is_ready() {
                    taken.clear();
                }
            }
        })
    });
}

/// A broadcast of a small project on an edge holding a large one: it visits the small
/// project's connections only (before the project index, it scanned every connection).
fn broadcast_small_project(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let hub = Hub::new(
        EdgeId::new("e1").expect("id"),
        HubConfig {
            shards: 8,
            ..HubConfig::default()
        },
        None,
    );
    let small = rt.block_on(async {
        let mut small = Vec::new();
        for i in 0..100_010u32 {
            let project = if i % 10_000 == 0 { "bench" } else { "big" };
            let h = hub
                .insert(
                    NewConn {
                        project: ProjectId::new(project).expect("id"),
                        user: UserId::new(&format!("u{i}")).expect("id"),
                        groups: Vec::new(),
                        remote: SocketAddr::from(([127, 0, 0, 1], 1000)),
                        expires_unix: u64::MAX,
                        wire: Default::default(),
                        deflate: false,
                        framing: Default::default(),
                        keep_alive_secs: 0,
                        heart_beat_secs: 0,
                        replaces: None,
                        resume: Vec::new(),
                    },
                    0,
                )
                .await
                .expect("no per-user cap");
            if project == "bench" {
                small.push(h);
            }
        }
        small
    });
    let env = envelope(TargetKind::Broadcast, "");
    let mut cx = Context::from_waker(Waker::noop());
    let mut taken = std::collections::VecDeque::new();
    c.bench_function("hub/broadcast_11_among_100010_and_take", |b| {
        b.iter(|| {
            hub.deliver(black_box(&env));
            for h in &small {
                if hub.poll_outgoing(*h, &mut cx, &mut taken, true).is_ready() {
                    taken.clear();
                }
            }
        })
    });
}

fn jwt(c: &mut Criterion) {
    let keys_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/keys");
    let secret = "bench-secret-0123456789abcdef0123456789";
    let key = |kid: &str, alg, file: Option<&str>| KeyConfig {
        kid: Some(kid.into()),
        alg,
        secret: (alg == KeyAlgorithm::HS256).then(|| secret.to_string()),
        public_key_file: file.map(|f| keys_dir.join(f)),
        public_key_pem: None,
    };
    let project = ProjectConfig {
        id: "bench".into(),
        api_keys: vec![],
        limits: Default::default(),
        keys: vec![
            key("hs", KeyAlgorithm::HS256, None),
            key("es", KeyAlgorithm::ES256, Some("es256-public.pem")),
            key("rs", KeyAlgorithm::RS256, Some("rs256-public.pem")),
            key("ed", KeyAlgorithm::EdDSA, Some("eddsa-public.pem")),
        ],
        client_certificates: None,
        history: None,
        permessage_deflate: false,
        jwks: None,
        presence_events: false,
        webhook: None,
    };
    let keys = herald_edge::AuthKeys::load(&[project], 5).expect("keys");
    let claims = serde_json::json!({"sub":"u1","aud":"bench","exp": jsonwebtoken::get_current_timestamp() + 3600});
    let sign = |kid: &str, alg, enc: jsonwebtoken::EncodingKey| {
        let mut h = jsonwebtoken::Header::new(alg);
        h.kid = Some(kid.into());
        jsonwebtoken::encode(&h, &claims, &enc).expect("sign")
    };
    let pem = |f: &str| std::fs::read(keys_dir.join(f)).expect("key file");
    let tokens = [
        (
            "HS256",
            sign(
                "hs",
                jsonwebtoken::Algorithm::HS256,
                jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
            ),
        ),
        (
            "ES256",
            sign(
                "es",
                jsonwebtoken::Algorithm::ES256,
                jsonwebtoken::EncodingKey::from_ec_pem(&pem("es256-private.pem")).expect("pem"),
            ),
        ),
        (
            "RS256",
            sign(
                "rs",
                jsonwebtoken::Algorithm::RS256,
                jsonwebtoken::EncodingKey::from_rsa_pem(&pem("rs256-private.pem")).expect("pem"),
            ),
        ),
        (
            "EdDSA",
            sign(
                "ed",
                jsonwebtoken::Algorithm::EdDSA,
                jsonwebtoken::EncodingKey::from_ed_pem(&pem("eddsa-private.pem")).expect("pem"),
            ),
        ),
    ];
    for (name, token) in &tokens {
        assert!(keys.verify("bench", token).is_ok(), "{name} verifies");
        c.bench_function(&format!("jwt/verify_{name}"), |b| {
            b.iter(|| keys.verify("bench", black_box(token)))
        });
    }
}

fn registry(c: &mut Criterion) {
    let r = MemoryRegistry::new();
    let edge = EdgeId::new("e1").expect("id");
    let project = ProjectId::new("bench").expect("id");
    let changes: Vec<_> = (0..100_000)
        .map(|i| {
            InterestChange::Add(InterestKey::User(
                project.clone(),
                UserId::new(&format!("u{i}")).expect("id"),
            ))
        })
        .collect();
    r.update(&edge, &changes)
        .now_or_never()
        .expect("ready")
        .expect("ok");
    let key = InterestKey::User(project, UserId::new("u4242").expect("id"));
    c.bench_function("registry/memory_edges_for_100k_users", |b| {
        b.iter(|| r.edges_for(black_box(&key)).now_or_never())
    });
}

/// `permessage-deflate`: compressing one message (once per message, whatever its recipients),
/// for the bench's 100-byte padded payload and for application-like JSON of 1 and 10 KB.
fn deflate(c: &mut Criterion) {
    let quotes = |n: usize| {
        let mut s = String::from(r#"{"q":["#);
        let mut i = 0u64;
        while s.len() < n {
            let x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 20;
            s.push_str(&format!(
                r#"{{"s":"SYM{}","b":{}.{:02},"a":{}.{:02},"v":{}}},"#,
                x % 50,
                100 + x % 900,
                x % 100,
                100 + x % 900,
                (x >> 7) % 100,
                (x >> 3) % 10_000
            ));
            i += 1;
        }
        s.pop();
        s.push_str("]}");
        s
    };
    let pad = message_frame(&envelope(TargetKind::Group, "news"));
    c.bench_function("deflate/frame_100B_padded", |b| {
        b.iter(|| herald_edge::deflate::deflate_frame(black_box(&pad)))
    });
    for n in [1_000, 10_000] {
        let mut env = envelope(TargetKind::Group, "news");
        env.payload = quotes(n).into_bytes();
        let frame = message_frame(&env);
        let z = herald_edge::deflate::deflate_frame(&frame).expect("smaller");
        eprintln!("deflate: {} -> {} bytes", frame.len(), z.len());
        c.bench_function(&format!("deflate/frame_{}KB_quotes", n / 1000), |b| {
            b.iter(|| herald_edge::deflate::deflate_frame(black_box(&frame)))
        });
    }
}

criterion_group!(
    benches,
    encode,
    fanout,
    broadcast_small_project,
    jwt,
    registry,
    deflate
);
criterion_main!(benches);
