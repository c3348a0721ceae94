//! Server-side subscribe and unsubscribe (`Subscribe`/`Unsubscribe` over gRPC,
//! `/v1/connections/subscribe` and `/unsubscribe` over HTTP): one connection or every
//! connection of a user joins or leaves a group at once, native clients are told, MQTT clients
//! receive the group on its topic, STOMP clients may subscribe to it without `channels`; the
//! registry holds the membership before the call answers, on one node and across edges.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;

use herald_core::proto::v1::{
    ListConnectionsRequest, SubscribeRequest, list_connections_request, subscribe_request,
};
use herald_tests::mqtt::{Lib, MqttClient};
use herald_tests::*;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::Command;

/// POSTs `body` to `path` with `key`; returns the status and the JSON body.
async fn post(addr: SocketAddr, key: &str, path: &str, body: Value) -> (u16, Value) {
    let auth = format!("Bearer {key}");
    let r = http_request(
        addr,
        "POST",
        path,
        &[
            ("content-type", "application/json"),
            ("authorization", &auth),
        ],
        body.to_string().as_bytes(),
    )
    .await;
    let v = serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body));
    (r.status, v)
}

/// Connects to `alpha` as `sub`; returns the client and its connection id.
async fn connect(node: &Herald, sub: &str) -> (Client, String) {
    let (ws, _) = node
        .open(
            &node.url("alpha", &format!("token={}", token("alpha", sub))),
            &[],
        )
        .await
        .expect("websocket upgrade");
    let mut c = Client { ws };
    let welcome = c.next_json().await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    let id = welcome["connection"].as_str().expect("id").to_string();
    (c, id)
}

fn by_user(user: &str, group: &str) -> SubscribeRequest {
    SubscribeRequest {
        project: "alpha".into(),
        who: Some(subscribe_request::Who::User(user.into())),
        group: group.into(),
    }
}

/// A stompjs client (tests/clients/stomp.mjs) connected as `sub`.
struct Stomp {
    _child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Stomp {
    async fn connect(node: &Herald, sub: &str) -> Self {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients");
        assert!(
            dir.join("node_modules/@stomp/stompjs").is_dir(),
            "@stomp/stompjs is not installed: run `npm ci` in {}",
            dir.display()
        );
        let opts = json!({"url": node.url("alpha", ""),
            "connectHeaders": {"Authorization": format!("Bearer {}", token("alpha", sub))}});
        let mut child = Command::new("node")
            .arg(dir.join("stomp.mjs"))
            .arg(opts.to_string())
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node is needed for the STOMP client (apt-get install nodejs npm)");
        let stdin = child.stdin.take().expect("stdin");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut s = Self {
            _child: child,
            stdin,
            lines,
        };
        s.next("connect").await;
        s
    }

    async fn next(&mut self, event: &str) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("no {event} in time"))
                .expect("read")
                .unwrap_or_else(|| panic!("stomp client exited before {event}"));
            let v: Value = serde_json::from_str(&line).expect("json line");
            if v["event"] == event || v["event"] == "stomp_error" {
                return v;
            }
        }
    }

    async fn send(&mut self, cmd: Value) {
        self.stdin
            .write_all(format!("{cmd}\n").as_bytes())
            .await
            .expect("write");
    }
}

#[tokio::test]
async fn the_server_subscribes_a_user_or_a_connection_on_every_protocol() {
    let herald = herald()
        .router("http_listen", "127.0.0.1:0")
        .edge("max_groups_per_connection", 2)
        .start()
        .await;
    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    let (mut phone, _) = connect(&herald, "alice").await;
    let (mut laptop, _) = connect(&herald, "alice").await;
    let (mut bob, bob_id) = connect(&herald, "bob").await;
    let mut mqtt = MqttClient::start(
        Lib::MqttJs,
        json!({"url": format!("ws://{}/mqtt/alpha", herald.ws), "username": "alpha",
               "password": token("alpha", "alice"), "version": 4}),
    )
    .await;
    mqtt.expect("connect").await;
    let mut stomp = Stomp::connect(&herald, "alice").await;

    // Every connection of alice joins `promo` (no channels claim needed): natives are told.
    let r = grpc
        .subscribe(by_user("alice", "promo"))
        .await
        .expect("subscribe")
        .into_inner();
    assert_eq!((r.changed, r.unchanged, r.refused), (4, 0, 0), "{r:?}");
    for c in [&mut phone, &mut laptop] {
        assert_eq!(
            c.next_json().await,
            json!({"type": "subscribed", "group": "promo"})
        );
    }
    // The registry lists them as members.
    let listed = grpc
        .list_connections(ListConnectionsRequest {
            project: "alpha".into(),
            of: Some(list_connections_request::Of::Group("promo".into())),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.connections.len(), 4, "{listed:?}");

    // A STOMP client may subscribe to a group it is a member of.
    stomp
        .send(json!({"subscribe": {"destination": "/topic/alpha/promo", "id": "s1", "receipt": "r1"}}))
        .await;
    assert_eq!(stomp.next("receipt").await["id"], "r1");

    send(
        &mut grpc,
        publish("alpha", To::Group("promo"), r#"{"sale":1}"#),
    )
    .await;
    for c in [&mut phone, &mut laptop] {
        let m = c.next_msg().await;
        assert_eq!(
            (&m["group"], &m["data"]),
            (&json!("promo"), &json!({"sale": 1}))
        );
    }
    let m = mqtt.message().await;
    assert_eq!(m["topic"], "promo", "{m}");
    let m = stomp.next("message").await;
    assert_eq!(m["destination"], "/topic/alpha/promo", "{m}");
    expect_nothing_before_marker(&mut bob, &mut grpc, "alpha", "bob").await;

    // Again: nothing changes; one connection over HTTP, by id.
    let r = grpc
        .subscribe(by_user("alice", "promo"))
        .await
        .expect("subscribe")
        .into_inner();
    assert_eq!((r.changed, r.unchanged), (0, 4));
    let (s, v) = post(
        herald.http,
        ALPHA_KEY,
        "/v1/connections/subscribe",
        json!({"project": "alpha", "connection_id": bob_id, "group": "vip"}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v,
        json!({"changed": 1, "unchanged": 0, "refused": 0, "missing_edges": []})
    );
    assert_eq!(
        bob.next_json().await,
        json!({"type": "subscribed", "group": "vip"})
    );
    send(
        &mut grpc,
        publish("alpha", To::Group("vip"), r#""for bob""#),
    )
    .await;
    assert_eq!(bob.next_msg().await["data"], "for bob");

    // At its maximum of groups (2 here) a connection is left out and counted.
    let r = grpc
        .subscribe(by_user("alice", "second"))
        .await
        .expect("subscribe")
        .into_inner();
    assert_eq!(r.changed, 4);
    let r = grpc
        .subscribe(by_user("alice", "third"))
        .await
        .expect("subscribe")
        .into_inner();
    assert_eq!((r.changed, r.refused), (0, 4), "{r:?}");
    for c in [&mut phone, &mut laptop] {
        assert_eq!(c.next_json().await["group"], "second");
    }

    // Unsubscribed over HTTP: told, and the group's messages stop.
    let (s, v) = post(
        herald.http,
        ALPHA_KEY,
        "/v1/connections/unsubscribe",
        json!({"project": "alpha", "user": "alice", "group": "promo"}),
    )
    .await;
    assert_eq!((s, &v["changed"]), (200, &json!(4)), "{v}");
    for c in [&mut phone, &mut laptop] {
        assert_eq!(
            c.next_json().await,
            json!({"type": "unsubscribed", "group": "promo"})
        );
    }
    send(&mut grpc, publish("alpha", To::Group("promo"), r#""gone""#)).await;
    expect_nothing_before_marker(&mut phone, &mut grpc, "alpha", "alice").await;

    // Refusals: another project's key, a bad group, no target.
    let mut beta = herald.grpc(Some(BETA_KEY)).await;
    let e = beta
        .subscribe(by_user("alice", "promo"))
        .await
        .expect_err("another project");
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    let e = grpc
        .subscribe(by_user("alice", "a b"))
        .await
        .expect_err("bad group");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let (s, _) = post(
        herald.http,
        ALPHA_KEY,
        "/v1/connections/subscribe",
        json!({"project": "alpha", "group": "promo"}),
    )
    .await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn across_edges_the_router_reaches_the_edge_holding_the_connection() {
    use herald_tests::cluster::Backends;
    let b = Backends::start_with(false, 1).await;
    let router = herald()
        .clustered(&b)
        .role("router")
        .edge("id", "r1")
        .router("http_listen", "127.0.0.1:0")
        .start()
        .await;
    let edge = |id: &'static str| herald().clustered(&b).role("edge").edge("id", id).start();
    let (e1, e2) = (edge("e1").await, edge("e2").await);
    for n in [&router, &e1, &e2] {
        n.wait_ready().await;
    }
    let mut grpc = router.grpc(Some(ALPHA_KEY)).await;
    let (mut a1, _) = connect(&e1, "alice").await;
    let (mut a2, a2_id) = connect(&e2, "alice").await;

    let r = grpc
        .subscribe(by_user("alice", "promo"))
        .await
        .expect("subscribe")
        .into_inner();
    assert_eq!((r.changed, r.missing_edges.len()), (2, 0), "{r:?}");
    for c in [&mut a1, &mut a2] {
        assert_eq!(c.next_json().await["type"], "subscribed");
    }
    // Answered once the registry holds both edges' membership: a publish now reaches both.
    let reply = send(&mut grpc, publish("alpha", To::Group("promo"), r#""both""#)).await;
    assert_eq!(reply.edges, 2, "{reply:?}");
    for c in [&mut a1, &mut a2] {
        assert_eq!(c.next_msg().await["data"], "both");
    }

    // One connection, on the other edge, by id over HTTP.
    let (s, v) = post(
        router.http,
        ALPHA_KEY,
        "/v1/connections/unsubscribe",
        json!({"project": "alpha", "connection_id": a2_id, "group": "promo"}),
    )
    .await;
    assert_eq!((s, &v["changed"]), (200, &json!(1)), "{v}");
    assert_eq!(
        a2.next_json().await,
        json!({"type": "unsubscribed", "group": "promo"})
    );
    send(
        &mut grpc,
        publish("alpha", To::Group("promo"), r#""e1 only""#),
    )
    .await;
    assert_eq!(a1.next_msg().await["data"], "e1 only");
    expect_nothing_before_marker(&mut a2, &mut grpc, "alpha", "alice").await;
}
