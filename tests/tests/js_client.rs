//! The TypeScript client (`clients/js`) against the real binary, through real sockets: under Node
//! (its global WebSocket), as a WeChat mini program (the CommonJS bundle over `wxSocket` and a
//! `wx` that behaves as the mini program documentation says), and in headless Chromium. Group,
//! user and broadcast messages; a server-side disconnect followed by a resume with nothing lost
//! and nothing twice; token refresh before expiry and a fresh token after 4005; close codes typed
//! and acted on; the bundle's size and codes checked against the server's.
//!
//! Each client runs `clients/js/test/node.mjs` or `test/browser.mjs`: options as one JSON
//! argument, commands as JSON lines on stdin, events as JSON lines on stdout
//! (`clients/js/test/harness.mjs`). Needs `npm ci && npm run build` in `clients/js`, Node, and
//! for the browser test Debian's chromium.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use herald_core::proto::v1::{DisconnectRequest, disconnect_request};
use herald_tests::*;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// A project that keeps history of `news`, `chat/*`, its users' and its broadcasts.
const HISTORY: &str = r#"
[[projects]]
id = "alpha"
api_keys = ["alpha-api-key-0123456789"]
[[projects.keys]]
alg = "HS256"
secret = "alpha-secret-0123456789abcdef0123456789"
[projects.history]
groups = ["news", "chat/*"]
users = true
broadcast = true
size = 1000
ttl_secs = 600
"#;

fn js_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../clients/js")
}

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Fails unless `clients/js` is installed and built from its current sources, naming the
/// command that fixes it.
fn check_built() -> PathBuf {
    let dir = js_dir();
    assert!(
        dir.join("node_modules/esbuild").is_dir(),
        "clients/js is not installed: run `npm ci` in {}",
        dir.display()
    );
    let built = modified(&dir.join("dist/herald.mjs")).unwrap_or_else(|| {
        panic!(
            "clients/js is not built: run `npm run build` in {}",
            dir.display()
        )
    });
    for e in std::fs::read_dir(dir.join("src")).expect("clients/js/src") {
        let p = e.expect("entry").path();
        assert!(
            modified(&p) <= Some(built),
            "clients/js/dist is older than {}: run `npm run build` in {}",
            p.display(),
            dir.display()
        );
    }
    dir
}

/// `node`, with the flag that gives Node 20 and 21 their WebSocket (global from 22 on).
async fn node() -> Command {
    let v = Command::new("node")
        .arg("--version")
        .output()
        .await
        .expect("node is needed for the TypeScript client tests (apt-get install nodejs npm)");
    let version = String::from_utf8_lossy(&v.stdout);
    let major: u32 = version
        .trim()
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("node --version said {version:?}"));
    assert!(major >= 20, "node {version} is too old: 20 or later");
    let mut c = Command::new("node");
    if major < 22 {
        c.arg("--experimental-websocket");
    }
    c
}

/// One client process: events read as they come, kept until a test asks for them.
struct Js {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    /// Events read and not yet taken, in order.
    queued: VecDeque<Value>,
    /// Every event read so far (for failure messages).
    seen: Vec<Value>,
}

impl Js {
    /// A client under Node (`opts["wx"]`: as a WeChat mini program).
    async fn node(opts: Value) -> Js {
        let dir = check_built();
        let mut cmd = node().await;
        cmd.arg(dir.join("test/node.mjs"));
        Js::spawn(cmd, &dir, opts).await
    }

    /// A client in a page of headless Chromium.
    async fn chromium(opts: Value) -> Js {
        let dir = check_built();
        let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
        assert!(
            Path::new(&chromium).is_file(),
            "chromium is needed for the browser test: apt-get install chromium chromium-driver \
             (or set CHROMIUM)"
        );
        assert!(
            dir.join("node_modules/puppeteer-core").is_dir(),
            "puppeteer-core is not installed: run `npm ci` in {}",
            dir.display()
        );
        let mut cmd = node().await;
        cmd.arg(dir.join("test/browser.mjs"))
            .env("CHROMIUM", chromium);
        Js::spawn(cmd, &dir, opts).await
    }

    async fn spawn(mut cmd: Command, dir: &Path, opts: Value) -> Js {
        let mut child = cmd
            .arg(opts.to_string())
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start node");
        let stdin = child.stdin.take().expect("stdin");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut js = Js {
            child,
            stdin,
            lines,
            queued: VecDeque::new(),
            seen: Vec::new(),
        };
        js.next("ready").await;
        js
    }

    /// Takes the first event named `event`, reading more until one comes.
    async fn next(&mut self, event: &str) -> Value {
        self.next_where(event, |_| true).await
    }

    /// Takes the first event named `event` for which `pred` holds.
    async fn next_where(&mut self, event: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(i) = self
                .queued
                .iter()
                .position(|v| v["event"] == event && pred(v))
            {
                return self.queued.remove(i).expect("queued");
            }
            let line = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("no {event} within {WAIT:?}; seen {:#?}", self.seen))
                .expect("read stdout")
                .unwrap_or_else(|| panic!("client exited before {event}; seen {:#?}", self.seen));
            let v: Value = serde_json::from_str(&line).expect("JSON line");
            // Console errors are only recorded: Chromium logs every failed WebSocket there.
            assert!(v["event"] != "page_error", "the page failed: {v}");
            self.seen.push(v.clone());
            self.queued.push_back(v);
        }
    }

    /// The next `n` messages.
    async fn messages(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::new();
        while out.len() < n {
            out.push(self.next("message").await);
        }
        out
    }

    /// Asserts that no event named `event` was read so far.
    fn none_yet(&self, event: &str) {
        assert!(
            !self.seen.iter().any(|v| v["event"] == event),
            "unexpected {event}: {:#?}",
            self.seen
        );
    }

    async fn send(&mut self, cmd: Value) {
        self.stdin
            .write_all(format!("{cmd}\n").as_bytes())
            .await
            .expect("write to the client");
    }

    async fn subscribe(&mut self, group: &str) {
        self.send(json!({ "subscribe": group })).await;
        self.next_where("subscribed", |v| v["group"] == group).await;
    }
}

impl Drop for Js {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn alpha_token(sub: &str, extra: Value) -> String {
    let mut c = claims("alpha", sub);
    if let (Some(o), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    hs256(ALPHA_SECRET, None, &c)
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

async fn publish_event(grpc: &mut Grpc, to: To<'_>, payload: &str, event: &str) {
    let mut req = publish("alpha", to, payload);
    req.event = event.into();
    send(grpc, req).await;
}

/// Publishes one of each kind (group `group`, user `user`, broadcast) and checks the client gets
/// the three, in order, as typed messages; a non-JSON payload arrives as `b64` and decodes.
async fn gets_one_of_each(js: &mut Js, grpc: &mut Grpc, group: &str, user: &str) {
    publish_event(grpc, To::Group(group), r#"{"lap":1}"#, "race.start").await;
    send(grpc, publish("alpha", To::User(user), "\u{1}not json")).await;
    send(grpc, publish("alpha", To::Broadcast, r#""hello all""#)).await;
    let m = js.messages(3).await;
    assert_eq!(
        (&m[0]["kind"], &m[0]["group"], &m[0]["name"], &m[0]["data"]),
        (
            &json!("group"),
            &json!(group),
            &json!("race.start"),
            &json!({"lap": 1})
        ),
        "{m:?}"
    );
    assert_eq!(
        (&m[1]["kind"], &m[1]["user"], &m[1]["bytes"]),
        (
            &json!("user"),
            &json!(user),
            &json!(b"\x01not json".to_vec())
        ),
        "{m:?}"
    );
    assert_eq!(
        (&m[2]["kind"], &m[2]["data"]),
        (&json!("broadcast"), &json!("hello all")),
        "{m:?}"
    );
}

/// Disconnects every connection of `user` with a reconnect hint.
async fn kick(grpc: &mut Grpc, user: &str, reconnect_after_ms: u32) {
    let r = grpc
        .disconnect(DisconnectRequest {
            project: "alpha".into(),
            who: Some(disconnect_request::Who::User(user.into())),
            reconnect_after_ms,
        })
        .await
        .expect("disconnect")
        .into_inner();
    assert!(r.disconnected >= 1, "{r:?}");
}

/// The same checks in every runtime: the welcome, one message of each kind (the token's group
/// and one joined with `subscribe`), a typed event, a refused subscription, an unsubscribe, and
/// a reconnect after an operator's disconnect honouring its hint.
async fn receives_everything(herald: &Herald, mut js: Js) {
    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    let open = js.next("open").await;
    assert_eq!(
        (&open["user"], &open["groups"]),
        (&json!("alice"), &json!(["news"]))
    );
    js.subscribe("sport-f1").await;
    gets_one_of_each(&mut js, &mut grpc, "news", "alice").await;
    gets_one_of_each(&mut js, &mut grpc, "sport-f1", "alice").await;
    let typed = js.next("typed").await;
    assert_eq!(
        (&typed["name"], &typed["data"]),
        (&json!("race.start"), &json!({"lap": 1}))
    );

    js.send(json!({"subscribe": "secret"})).await;
    let refused = js.next("subscribe_failed").await;
    assert_eq!(
        refused["code"], 4403,
        "the channels claim does not allow it"
    );
    js.send(json!({"unsubscribe": "sport-f1"})).await;
    js.next("unsubscribed").await;
    send(
        &mut grpc,
        publish("alpha", To::Group("sport-f1"), r#""gone""#),
    )
    .await;
    send(
        &mut grpc,
        publish("alpha", To::User("alice"), r#""marker""#),
    )
    .await;
    let m = js.next("message").await;
    assert_eq!(m["data"], "marker", "nothing of a group left: {m}");

    kick(&mut grpc, "alice", 700).await;
    let close = js.next("close").await;
    assert_eq!(
        (
            &close["code"],
            &close["name"],
            &close["reconnectIn"],
            &close["known"]
        ),
        (
            &json!(4009),
            &json!("DisconnectedByOperator"),
            &json!(700),
            &json!(true)
        ),
        "{close}"
    );
    let again = js.next("open").await;
    let waited = again["at"].as_u64().unwrap_or(0) - close["at"].as_u64().unwrap_or(0);
    assert!(
        waited >= 700,
        "reconnected {waited} ms after the close, before the hint"
    );
    // Groups joined with `subscribe` are joined again; the one left is not.
    js.subscribe("sport-f2").await;
    gets_one_of_each(&mut js, &mut grpc, "sport-f2", "alice").await;
    gets_one_of_each(&mut js, &mut grpc, "news", "alice").await;
    js.send(json!({"close": true})).await;
    let close = js.next("close").await;
    assert_eq!(
        (&close["code"], &close["state"]),
        (&json!(1000), &json!("closed"))
    );
    assert!(close.get("reconnectIn").is_none(), "{close}");
}

fn alice_options(herald: &Herald) -> Value {
    let token = alpha_token(
        "alice",
        json!({"groups": ["news"], "channels": ["sport-*"]}),
    );
    json!({
        "client": {"url": herald.url("alpha", ""), "token": token, "backoff": {"min": 100, "max": 1000}},
        "events": ["race.start"],
    })
}

#[tokio::test]
async fn node_client_receives_group_user_and_broadcast_messages() {
    let herald = herald().start().await;
    let js = Js::node(alice_options(&herald)).await;
    receives_everything(&herald, js).await;
}

#[tokio::test]
async fn wechat_mini_program_client_over_a_wx_shim_receives_everything() {
    let herald = herald().start().await;
    let mut opts = alice_options(&herald);
    opts["wx"] = json!(true);
    let mut js = Js::node(opts).await;
    let connect = js.next("wx_connect").await;
    assert_eq!(
        connect["protocols"],
        Value::Null,
        "a mini program offers no sub-protocol: {connect}"
    );
    receives_everything(&herald, js).await;
}

#[tokio::test]
async fn chromium_client_receives_group_user_and_broadcast_messages() {
    let herald = herald().start().await;
    let js = Js::chromium(alice_options(&herald)).await;
    let ready = js
        .seen
        .iter()
        .find(|v| v["event"] == "ready")
        .cloned()
        .unwrap_or_default();
    assert!(
        ready["browser"].as_str().unwrap_or("").contains("Chrom"),
        "{ready}"
    );
    receives_everything(&herald, js).await;
}

/// Per stream, the offsets of the messages received.
fn offsets_by_stream(msgs: &[Value]) -> BTreeMap<String, Vec<u64>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for m in msgs {
        let key = match m["kind"].as_str() {
            Some("group") => format!("group:{}", m["group"].as_str().unwrap_or("")),
            Some(k) => k.to_owned(),
            None => panic!("a message without kind: {m}"),
        };
        out.entry(key)
            .or_default()
            .push(m["offset"].as_u64().expect("an offset"));
    }
    out
}

#[tokio::test]
async fn a_server_side_disconnect_is_resumed_with_nothing_lost_and_nothing_twice() {
    let herald = herald().projects(HISTORY).start().await;
    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    let token = alpha_token("alice", json!({"groups": ["news"], "channels": ["chat/*"]}));
    let mut js = Js::node(json!({"client": {
        "url": herald.url("alpha", ""), "token": token, "device": "phone-1",
        "ackIntervalMs": 100, "backoff": {"min": 100, "max": 1000},
    }}))
    .await;
    js.next("open").await;
    js.subscribe("chat/room").await;
    let streams = [
        To::Group("news"),
        To::Group("chat/room"),
        To::User("alice"),
        To::Broadcast,
    ];
    let mut all = Vec::new();
    for n in 1..=5 {
        for to in streams {
            send(&mut grpc, publish("alpha", to, &format!(r#"{{"n":{n}}}"#))).await;
        }
    }
    all.extend(js.messages(20).await);

    // Told to stay away 1.5 s: everything published meanwhile comes back from history.
    kick(&mut grpc, "alice", 1500).await;
    for n in 6..=10 {
        for to in streams {
            send(&mut grpc, publish("alpha", to, &format!(r#"{{"n":{n}}}"#))).await;
        }
    }
    let close = js.next("close").await;
    assert_eq!(
        (&close["code"], &close["reconnectIn"]),
        (&json!(4009), &json!(1500))
    );
    js.next("open").await;
    for stream in ["group:news", "group:chat/room", "user", "broadcast"] {
        let r = js.next_where("resumed", |v| v["stream"] == stream).await;
        assert_eq!(r["recovered"], true, "{r}");
    }
    all.extend(js.messages(20).await);
    let want: Vec<u64> = (1..=10).collect();
    let got = offsets_by_stream(&all);
    for stream in ["group:news", "group:chat/room", "user", "broadcast"] {
        assert_eq!(got.get(stream), Some(&want), "{stream}: {got:?}");
    }
    for m in &all {
        let n = m["data"]["n"].as_u64();
        assert_eq!(n, m["offset"].as_u64(), "payloads in offset order: {m}");
    }

    // The device acknowledged its user stream: a new process of the same device (no positions
    // kept) gets only what came after, once.
    js.next_where("acked", |v| v["offset"] == 10).await;
    drop(js);
    for n in 11..=12 {
        send(
            &mut grpc,
            publish("alpha", To::User("alice"), &format!(r#"{{"n":{n}}}"#)),
        )
        .await;
    }
    let mut js = Js::node(json!({"client": {
        "url": herald.url("alpha", ""), "token": token, "device": "phone-1",
    }}))
    .await;
    js.next("open").await;
    let m = js.messages(2).await;
    assert_eq!(
        (&m[0]["offset"], &m[1]["offset"]),
        (&json!(11), &json!(12)),
        "{m:?}"
    );
    js.send(json!({"positions": true})).await;
    let p = js.next("positions").await;
    assert_eq!(p["positions"]["user"]["offset"], 12, "{p}");
    // Given back as `positions`, a new process resumes every stream from there.
    send(&mut grpc, publish("alpha", To::Broadcast, r#"{"n":11}"#)).await;
    drop(js);
    let last = all
        .iter()
        .find(|m| m["kind"] == "broadcast" && m["offset"] == 10)
        .expect("broadcast 10");
    let mut js = Js::node(json!({"client": {
        "url": herald.url("alpha", ""), "token": token,
        "positions": {"broadcast": {"offset": 10, "epoch": last["epoch"]}},
    }}))
    .await;
    js.next("open").await;
    let m = js.next("message").await;
    assert_eq!(
        (&m["kind"], &m["offset"]),
        (&json!("broadcast"), &json!(11)),
        "{m}"
    );
    js.next_where("resumed", |v| v["stream"] == "broadcast")
        .await;
}

#[tokio::test]
async fn a_token_is_refreshed_before_it_expires() {
    let herald = herald().start().await;
    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    let mut js = Js::node(json!({
        "client": {"url": herald.url("alpha", ""), "refreshBeforeSecs": 3},
        "askToken": true,
    }))
    .await;
    let t = js.next("token").await;
    assert_eq!(t["reason"], "connect");
    let exp = now() + 4;
    js.send(json!({"token": alpha_token("alice", json!({"exp": exp}))}))
        .await;
    js.next("open").await;
    let t = js.next("token").await;
    assert_eq!(t["reason"], "refresh", "asked before expiry: {t}");
    js.send(json!({"token": alpha_token("alice", json!({}))}))
        .await;
    // Past the first token's expiry and the server's leeway (5 s): still the same connection.
    while now() <= exp + 6 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    send(
        &mut grpc,
        publish("alpha", To::User("alice"), r#""still here""#),
    )
    .await;
    assert_eq!(js.next("message").await["data"], "still here");
    js.none_yet("close");
    assert_eq!(js.seen.iter().filter(|v| v["event"] == "open").count(), 1);
}

#[tokio::test]
async fn an_expired_token_is_replaced_and_the_client_reconnects() {
    let herald = herald().start().await;
    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    let mut js = Js::node(json!({
        "client": {"url": herald.url("alpha", ""), "refreshBeforeSecs": 1, "backoff": {"min": 100}},
        "askToken": true,
    }))
    .await;
    js.next("token").await;
    js.send(json!({"token": alpha_token("alice", json!({"exp": now() + 2}))}))
        .await;
    js.next("open").await;
    // The refresh is refused (4402): the connection goes on until the server closes it 4005.
    js.next_where("token", |v| v["reason"] == "refresh").await;
    js.send(json!({"token": "not-a-token"})).await;
    assert_eq!(js.next("error").await["code"], 4402);
    let close = js.next("close").await;
    assert_eq!(
        (&close["code"], &close["name"]),
        (&json!(4005), &json!("TokenExpired")),
        "{close}"
    );
    assert!(
        close["reconnectIn"].is_number(),
        "a fresh token is asked for: {close}"
    );
    let t = js.next("token").await;
    assert_eq!(
        (&t["reason"], &t["code"]),
        (&json!("rejected"), &json!(4005))
    );
    js.send(json!({"token": alpha_token("alice", json!({}))}))
        .await;
    js.next("open").await;
    send(&mut grpc, publish("alpha", To::User("alice"), r#""back""#)).await;
    assert_eq!(js.next("message").await["data"], "back");
}

#[tokio::test]
async fn close_codes_are_typed_and_decide_whether_to_reconnect() {
    let mut herald = herald().edge("reconnect_jitter_ms", 4000).start().await;
    let url = herald.url("alpha", "");
    let expired = alpha_token("alice", json!({"exp": now() - 60}));
    // Codes after which the same token cannot help: the client stops.
    for (url, token, code, name) in [
        (
            herald.url("nope", ""),
            token("alpha", "alice"),
            4004,
            "UnknownProject",
        ),
        (url.clone(), "not-a-token".to_owned(), 4002, "InvalidToken"),
        (url.clone(), expired, 4005, "TokenExpired"),
        (
            url.clone(),
            hs256(ALPHA_SECRET, None, &claims("beta", "alice")),
            4003,
            "Forbidden",
        ),
    ] {
        let mut js = Js::node(json!({"client": {"url": url, "token": token}})).await;
        let close = js.next("close").await;
        assert_eq!(
            (&close["code"], &close["name"], &close["state"]),
            (&json!(code), &json!(name), &json!("closed")),
            "{close}"
        );
        assert!(
            close.get("reconnectIn").is_none(),
            "stopped after {code}: {close}"
        );
    }
    // With a token function, a refused token is replaced.
    let mut js =
        Js::node(json!({"client": {"url": url, "backoff": {"min": 100}}, "askToken": true})).await;
    js.next("token").await;
    js.send(json!({"token": "not-a-token"})).await;
    let close = js.next("close").await;
    assert_eq!(
        (&close["code"], &close["name"]),
        (&json!(4002), &json!("InvalidToken"))
    );
    let t = js.next("token").await;
    assert_eq!(
        (&t["reason"], &t["code"]),
        (&json!("rejected"), &json!(4002))
    );
    js.send(json!({"token": token("alpha", "alice")})).await;
    js.next("open").await;

    // Shutdown: 1001 after a `disconnect` frame whose hint (1,000-4,000 ms here) is honoured
    // rather than the backoff (50-100 ms for a first attempt).
    herald.signal("TERM");
    let close = js.next("close").await;
    assert_eq!(
        (&close["code"], &close["name"]),
        (&json!(1001), &json!("GoingAway"))
    );
    let hint = close["reconnectIn"].as_f64().unwrap_or(0.0);
    assert!((1000.0..=4000.0).contains(&hint), "{close}");
    herald.wait_exit().await;
}

#[tokio::test]
async fn the_bundle_fits_8_kib_gzipped_and_its_codes_are_the_servers() {
    let dir = check_built();
    let out = node()
        .await
        .arg(dir.join("scripts/check.mjs"))
        .current_dir(&dir)
        .output()
        .await
        .expect("run scripts/check.mjs");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(
        out.stdout
            .split(|b| *b == b'\n')
            .next()
            .expect("a report line"),
    )
    .expect("JSON report");
    let gz = report["sizes"]["herald.mjs"]["gzipped"]
        .as_u64()
        .unwrap_or(u64::MAX);
    assert!(gz <= 8192, "{report}");
}

/// The client's own unit tests (`clients/js/test/unit.test.mjs`: session logic over in-memory
/// sockets), so that `cargo nextest run` runs them too.
#[tokio::test]
async fn the_clients_unit_tests_pass() {
    let dir = check_built();
    let out = node()
        .await
        .args(["--test", "test/unit.test.mjs"])
        .current_dir(&dir)
        .output()
        .await
        .expect("run node --test");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// WebSocket blocked: the client's `url` leads to a server that never upgrades (the admin
/// endpoint answers 404), so after two failed attempts it falls back to SSE on the edge, and
/// does there what it did over WebSocket: messages of every kind, a group joined (the stream
/// reopened), a refused group told, a server-side disconnect honoured and resumed by event id
/// with nothing lost and nothing twice.
async fn falls_back_to_sse(herald: &Herald, mut js: Js) {
    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    for _ in 0..2 {
        let c = js.next("close").await;
        assert_eq!(c["code"], 1006, "the WebSocket never opened: {c}");
    }
    let open = js.next("open").await;
    assert_eq!(
        (&open["transport"], &open["groups"]),
        (&json!("sse"), &json!(["news"]))
    );
    js.subscribe("chat/room").await;
    let reopened = js.next("open").await;
    assert_eq!(reopened["groups"], json!(["news", "chat/room"]));
    js.send(json!({"subscribe": "secret"})).await;
    assert_eq!(js.next("subscribe_failed").await["code"], 4403);

    let streams = [
        To::Group("news"),
        To::Group("chat/room"),
        To::User("alice"),
        To::Broadcast,
    ];
    let mut all = Vec::new();
    for n in 1..=3 {
        for to in streams {
            send(&mut grpc, publish("alpha", to, &format!(r#"{{"n":{n}}}"#))).await;
        }
    }
    all.extend(js.messages(12).await);
    kick(&mut grpc, "alice", 700).await;
    for n in 4..=6 {
        for to in streams {
            send(&mut grpc, publish("alpha", to, &format!(r#"{{"n":{n}}}"#))).await;
        }
    }
    let close = js.next("close").await;
    assert_eq!(
        (&close["code"], &close["name"], &close["reconnectIn"]),
        (&json!(4009), &json!("DisconnectedByOperator"), &json!(700)),
        "{close}"
    );
    let again = js.next("open").await;
    assert_eq!(again["transport"], "sse");
    for stream in ["group:news", "group:chat/room", "user", "broadcast"] {
        let r = js.next_where("resumed", |v| v["stream"] == stream).await;
        assert_eq!(r["recovered"], true, "{r}");
    }
    all.extend(js.messages(12).await);
    let want: Vec<u64> = (1..=6).collect();
    let got = offsets_by_stream(&all);
    for stream in ["group:news", "group:chat/room", "user", "broadcast"] {
        assert_eq!(got.get(stream), Some(&want), "{stream}: {got:?}");
    }
}

fn sse_options(herald: &Herald) -> Value {
    let token = alpha_token("alice", json!({"groups": ["news"], "channels": ["chat/*"]}));
    json!({"client": {
        "url": format!("ws://{}/ws/alpha", herald.admin),
        "sse": format!("http://{}/sse/alpha", herald.ws),
        "token": token,
        "backoff": {"min": 100, "max": 1000},
    }})
}

#[tokio::test]
async fn node_client_falls_back_to_sse_and_resumes_there() {
    let herald = herald().projects(HISTORY).start().await;
    let js = Js::node(sse_options(&herald)).await;
    falls_back_to_sse(&herald, js).await;
}

#[tokio::test]
async fn chromium_client_falls_back_to_sse_and_resumes_there() {
    let herald = herald().projects(HISTORY).start().await;
    let js = Js::chromium(sse_options(&herald)).await;
    falls_back_to_sse(&herald, js).await;
}
