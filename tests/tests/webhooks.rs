//! Webhooks through the real binary, against a local HTTPS receiver whose certificate comes from a
//! test CA the project trusts (`ca_file`): events are signed, batched, retried while the receiver
//! refuses connections and answers 5xx, none lost within the queue bound, the excess dropped and
//! counted.

use herald_tests::tls::Ca;
use herald_tests::webhook::Receiver;
use herald_tests::*;
use serde_json::{Value, json};

const SECRET: &str = "whsec-0123456789abcdef";

fn member(sub: &str, groups: &[&str]) -> String {
    let mut c = claims("alpha", sub);
    c["groups"] = json!(groups);
    hs256(ALPHA_SECRET, None, &c)
}

/// A receiver with a certificate for 127.0.0.1 from a fresh CA, and that CA in a file.
async fn receiver(dir: &tempfile::TempDir) -> (Receiver, std::path::PathBuf) {
    let ca = Ca::root("webhook test ca");
    let leaf = ca.server(&["127.0.0.1"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("write ca");
    (Receiver::start(leaf, SECRET).await, ca_file)
}

fn webhook(r: &Receiver, ca_file: &std::path::Path, max_queue: i64) -> toml::Value {
    let mut t = toml::Table::new();
    t.insert("url".into(), format!("https://{}/hook", r.addr).into());
    t.insert("secret".into(), SECRET.into());
    t.insert("ca_file".into(), ca_file.display().to_string().into());
    t.insert("max_queue".into(), max_queue.into());
    t.insert("max_batch".into(), max_queue.min(20).into());
    t.insert("batch_ms".into(), 50.into());
    t.insert("timeout_ms".into(), 2000.into());
    toml::Value::Table(t)
}

/// (type, user, group) of each event.
fn summary(events: &[Value]) -> Vec<(String, String, String)> {
    events
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (s("type"), s("user"), s("group"))
        })
        .collect()
}

fn ev(kind: &str, user: &str, group: &str) -> (String, String, String) {
    (kind.into(), user.into(), group.into())
}

#[tokio::test]
async fn events_survive_a_receiver_that_refuses_then_fails_then_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut r, ca_file) = receiver(&dir).await;
    let h = herald()
        .project_set("alpha", "presence_events", true)
        .project_set("alpha", "webhook", webhook(&r, &ca_file, 1000))
        .start()
        .await;

    // Up: the first events arrive, signed, in one or more batches.
    let alice = h.connect("alpha", &member("alice", &["news"])).await;
    eventually_eq(
        WAIT,
        vec![ev("connect", "alice", ""), ev("join", "alice", "news")],
        async || {
            let mut s = summary(&r.events());
            s.sort();
            s
        },
    )
    .await;

    // Down (connection refused): events queue up.
    r.stop().await;
    let mut c = claims("alpha", "bob");
    c["channels"] = json!(["news"]);
    let mut bob = h.connect("alpha", &hs256(ALPHA_SECRET, None, &c)).await;
    assert_eq!(bob.subscribe(1, "news").await["type"], "ack");
    drop(alice);
    let mut many = Vec::new();
    for i in 0..30 {
        many.push(h.connect("alpha", &member(&format!("u{i:02}"), &[])).await);
    }
    drop(many);
    eventually(WAIT, async || {
        let failed = h
            .metric("herald_webhook_posts_total{result=\"failed\"}")
            .await;
        if failed >= 1.0 {
            Ok(())
        } else {
            Err("no refused post yet")
        }
    })
    .await;
    // Up again but failing with 503 three times, then well.
    r.fail_next(3);
    r.resume().await;

    let mut want = vec![
        ev("connect", "alice", ""),
        ev("join", "alice", "news"),
        ev("connect", "bob", ""),
        ev("subscribe", "bob", "news"),
        ev("join", "bob", "news"),
        ev("disconnect", "alice", ""),
        ev("leave", "alice", "news"),
    ];
    for i in 0..30 {
        want.push(ev("connect", &format!("u{i:02}"), ""));
        want.push(ev("disconnect", &format!("u{i:02}"), ""));
    }
    want.sort();
    eventually_eq(WAIT, want, async || {
        let mut s = summary(&r.events());
        s.sort();
        s
    })
    .await;
    assert_eq!(r.failed(), 3, "three posts answered 503 were retried");
    let posts = r.posts();
    assert!(
        posts.iter().all(|p| p.signed),
        "every post signed: {posts:?}"
    );
    assert!(
        posts
            .iter()
            .all(|p| p.body["events"].as_array().map_or(0, Vec::len) <= 20),
        "batches of at most max_batch"
    );
    // Connections' own events keep their order: alice's connect before her disconnect.
    let s = summary(&r.events());
    let at = |e: &(String, String, String)| s.iter().position(|x| x == e).expect("present");
    assert!(at(&ev("connect", "alice", "")) < at(&ev("disconnect", "alice", "")));
    assert_eq!(
        h.metric("herald_webhook_events_dropped_total{project=\"alpha\"}")
            .await,
        0.0
    );
    drop(bob);
}

#[tokio::test]
async fn events_beyond_the_queue_bound_are_dropped_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut r, ca_file) = receiver(&dir).await;
    r.stop().await;
    let h = herald()
        .project_set("alpha", "webhook", webhook(&r, &ca_file, 10))
        .start()
        .await;
    // 15 connects while the receiver is down: 10 wait, 5 are dropped.
    let mut held = Vec::new();
    for i in 0..15 {
        held.push(h.connect("alpha", &member(&format!("u{i:02}"), &[])).await);
    }
    h.wait_metric(
        "herald_webhook_events_dropped_total{project=\"alpha\"}",
        5.0,
    )
    .await;
    r.resume().await;
    let want: Vec<_> = (0..10)
        .map(|i| ev("connect", &format!("u{i:02}"), ""))
        .collect();
    eventually_eq(WAIT, want.clone(), async || summary(&r.events())).await;
    // The queue has room again: later events are posted.
    drop(held.remove(0));
    let mut want = want;
    want.push(ev("disconnect", "u00", ""));
    eventually_eq(WAIT, want, async || summary(&r.events())).await;
    assert!(r.posts().iter().all(|p| p.signed));
}

/// POSTs `body` to the admin API at `path`; the status and the JSON answer.
async fn admin_post(h: &Herald, path: &str, body: Value) -> (u16, Value) {
    let auth = format!("Bearer {ADMIN_KEY}");
    let head = [
        ("content-type", "application/json"),
        ("authorization", auth.as_str()),
    ];
    let r = http_request(h.http, "POST", path, &head, body.to_string().as_bytes()).await;
    let v = serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body));
    (r.status, v)
}

#[tokio::test]
async fn a_project_of_the_admin_api_trusts_its_receiver_by_ca_pem() {
    let ca = Ca::root("webhook api ca");
    let r = Receiver::start(
        ca.server(&["127.0.0.1"], &rcgen::PKCS_ECDSA_P256_SHA256),
        SECRET,
    )
    .await;
    let h = herald().router("http_listen", "127.0.0.1:0").start().await;
    let key = "gamma-secret-0123456789abcdef0123456789";
    let create = json!({"project": "gamma",
        "jwt_keys": [{"kid": "k1", "alg": "HS256", "secret": key}]});
    let (s, v) = admin_post(&h, "/v1/admin/projects/create", create).await;
    assert_eq!(s, 200, "{v}");
    let hook = |ca: Value| {
        json!({"project": "gamma", "webhook": {"url": format!("https://{}/hook", r.addr),
            "secret": SECRET, "events": ["connect"], "batch_ms": 20, "ca_pem": ca}})
    };
    // A path is refused through the API (it would not exist on every node); PEM text is taken.
    let mut by_file = hook(Value::Null);
    by_file["webhook"]["ca_file"] = json!("/etc/herald/ca.pem");
    let (s, v) = admin_post(&h, "/v1/admin/projects/update", by_file).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (400, Some("INVALID_ARGUMENT")),
        "{v}"
    );
    assert!(
        v["message"]
            .as_str()
            .unwrap_or_default()
            .contains("webhook.ca_file"),
        "{v}"
    );
    let (s, v) = admin_post(&h, "/v1/admin/projects/update", hook(json!(ca.pem()))).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["project"]["webhook"]["custom_ca"], true, "{v}");

    // The receiver's certificate chains to that CA only: events arrive, signed.
    let _gus = h
        .connect("gamma", &hs256(key, Some("k1"), &claims("gamma", "gus")))
        .await;
    eventually_eq(WAIT, vec![ev("connect", "gus", "")], async || {
        summary(&r.events())
    })
    .await;
}
