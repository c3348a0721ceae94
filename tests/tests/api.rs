//! The gRPC API and the operator surfaces: API-key scopes, request validation, idempotency,
//! streaming publish, connection counts, lists and disconnects, the health service, the CLI and
//! the admin HTTP endpoint.

use std::process::Output;

use herald_core::proto::v1::{
    CountConnectionsRequest, DisconnectRequest, ListConnectionsRequest, PublishRequest,
    PublishStreamRequest, Resolution, Target, disconnect_request, list_connections_request,
};
use herald_tests::*;
use serde_json::json;
use tokio::io::AsyncReadExt as _;
use tonic::Code;
use tonic::transport::Channel;

/// A token of the default sandbox with a `groups` claim (and a `channels` claim).
fn member(project: &str, sub: &str, groups: &[&str], channels: &[&str]) -> String {
    let secret = if project == "beta" {
        BETA_SECRET
    } else {
        ALPHA_SECRET
    };
    let claims = json!({
        "sub": sub, "aud": project, "exp": jsonwebtoken::get_current_timestamp() + 600,
        "groups": groups, "channels": channels,
    });
    hs256(secret, None, &claims)
}

/// Connects and returns the client with its connection id (from the welcome frame).
async fn connect_with_id(herald: &Herald, project: &str, tok: &str) -> (Client, String) {
    let (ws, _) = herald
        .open(&herald.url(project, &format!("token={tok}")), &[])
        .await
        .expect("websocket upgrade");
    let mut c = Client { ws };
    let w = c.next_json().await;
    assert_eq!(w["type"], "welcome", "{w}");
    let id = w["connection"].as_str().expect("connection id").to_string();
    (c, id)
}

/// The client's own address, as the server sees it.
fn local_addr(c: &Client) -> String {
    c.ws.get_ref()
        .local_addr()
        .expect("local address")
        .to_string()
}

/// Asserts the connection still answers: an application ping gets its pong.
async fn still_open(c: &mut Client, id: u64) {
    c.send_json(json!({"type":"ping","id":id})).await;
    assert_eq!(c.next_json().await, json!({"type":"pong","id":id}));
}

fn code_of<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> Code {
    r.expect_err("the call must fail").code()
}

#[tokio::test]
async fn api_keys_authenticate_and_scope_every_call() {
    let herald = herald().start().await;
    let mut a = herald.connect("alpha", &token("alpha", "al")).await;
    let mut b = herald.connect("beta", &token("beta", "be")).await;

    let mut none = herald.grpc(None).await;
    let mut unknown = herald.grpc(Some("no-such-key-0123456789")).await;
    let mut beta = herald.grpc(Some(BETA_KEY)).await;
    let mut alpha = herald.grpc(Some(ALPHA_KEY)).await;
    let mut admin = herald.grpc(Some(ADMIN_KEY)).await;
    let msg = || publish("alpha", To::Broadcast, "1");

    assert_eq!(code_of(none.publish(msg()).await), Code::Unauthenticated);
    assert_eq!(code_of(unknown.publish(msg()).await), Code::Unauthenticated);
    let count = || CountConnectionsRequest {
        project: String::new(),
    };
    assert_eq!(
        code_of(none.count_connections(count()).await),
        Code::Unauthenticated
    );
    assert_eq!(
        code_of(unknown.count_connections(count()).await),
        Code::Unauthenticated
    );

    // A project key never acts on another project.
    assert_eq!(code_of(beta.publish(msg()).await), Code::PermissionDenied);
    let list = ListConnectionsRequest {
        project: "alpha".into(),
        of: Some(list_connections_request::Of::User("al".into())),
        ..Default::default()
    };
    assert_eq!(
        code_of(beta.list_connections(list.clone()).await),
        Code::PermissionDenied
    );
    let kick = DisconnectRequest {
        project: "alpha".into(),
        who: Some(disconnect_request::Who::User("al".into())),
        reconnect_after_ms: 0,
    };
    assert_eq!(code_of(beta.disconnect(kick).await), Code::PermissionDenied);
    let count_alpha = CountConnectionsRequest {
        project: "alpha".into(),
    };
    assert_eq!(
        code_of(beta.count_connections(count_alpha).await),
        Code::PermissionDenied
    );
    expect_nothing_before_marker(&mut a, &mut alpha, "alpha", "al").await;

    // An unknown project: not found for the admin; a project key learns nothing about it.
    let gamma = publish("gamma", To::Broadcast, "1");
    assert_eq!(code_of(admin.publish(gamma.clone()).await), Code::NotFound);
    assert_eq!(code_of(alpha.publish(gamma).await), Code::PermissionDenied);

    // The admin key acts on both projects; each project key on its own.
    let r = send(&mut admin, publish("alpha", To::Broadcast, r#""admin-a""#)).await;
    assert_eq!(r.resolution(), Resolution::Delivered);
    let r = send(&mut admin, publish("beta", To::User("be"), r#""admin-b""#)).await;
    assert_eq!((r.resolution(), r.edges), (Resolution::Delivered, 1));
    assert_eq!(a.next_msg().await["data"], "admin-a");
    assert_eq!(b.next_msg().await["data"], "admin-b");
    send(&mut alpha, publish("alpha", To::User("al"), r#""own-a""#)).await;
    send(&mut beta, publish("beta", To::Broadcast, r#""own-b""#)).await;
    assert_eq!(a.next_msg().await["data"], "own-a");
    assert_eq!(b.next_msg().await["data"], "own-b");
    let n = admin
        .list_connections(list)
        .await
        .expect("admin lists alpha")
        .into_inner();
    assert_eq!(n.connections.len(), 1);
    expect_nothing_before_marker(&mut a, &mut alpha, "alpha", "al").await;
    expect_nothing_before_marker(&mut b, &mut beta, "beta", "be").await;
}

#[tokio::test]
async fn publish_requests_are_validated() {
    let herald = herald().router("max_payload_bytes", 1024).start().await;
    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    let mut c = herald
        .connect("alpha", &member("alpha", "val", &["g"], &[]))
        .await;

    let invalid = |r: Result<tonic::Response<_>, tonic::Status>, what: &str| {
        let s = r.expect_err(what);
        assert_eq!(s.code(), Code::InvalidArgument, "{what}: {s:?}");
        assert!(!s.message().is_empty(), "{what}: a reason");
    };
    let mut no_target = publish("alpha", To::Group("g"), "1");
    no_target.target = None;
    invalid(grpc.publish(no_target.clone()).await, "no target");
    let empty_target = PublishRequest {
        target: Some(Target { kind: None }),
        ..no_target
    };
    invalid(grpc.publish(empty_target).await, "a target without a kind");

    let fits = format!("\"{}\"", "x".repeat(1022));
    let too_big = format!("\"{}\"", "x".repeat(1023));
    assert_eq!((fits.len(), too_big.len()), (1024, 1025));
    invalid(
        grpc.publish(publish("alpha", To::Group("g"), &too_big))
            .await,
        "payload over the limit",
    );

    for event in ["bad event", "no/slash", "é", &"e".repeat(65)] {
        let mut r = publish("alpha", To::Group("g"), "1");
        r.event = event.to_string();
        invalid(grpc.publish(r).await, &format!("event {event:?}"));
    }
    let mut r = publish("alpha", To::Group("g"), "1");
    r.idempotency_key = "k".repeat(129);
    invalid(grpc.publish(r).await, "idempotency key over 128 bytes");
    invalid(
        grpc.publish(publish("Alpha", To::Broadcast, "1")).await,
        "project outside the alphabet",
    );
    invalid(
        grpc.publish(publish("alpha", To::User(""), "1")).await,
        "empty user",
    );

    // Nothing refused was delivered; what is valid at the limits is.
    let r = send(&mut grpc, publish("alpha", To::Group("g"), &fits)).await;
    assert_eq!(r.resolution(), Resolution::Delivered);
    let mut r = publish("alpha", To::Group("g"), r#"{"ok":true}"#);
    r.event = format!("order.created:v1-x_{}", "e".repeat(45));
    assert_eq!(r.event.len(), 64);
    let event = r.event.clone();
    send(&mut grpc, r).await;
    let m = c.next_msg().await;
    assert_eq!(
        m["data"].as_str().map(str::len),
        Some(1022),
        "the 1024-byte payload first"
    );
    let m = c.next_msg().await;
    assert_eq!(
        (m["event"].as_str(), m["data"].clone()),
        (Some(event.as_str()), json!({"ok":true}))
    );
    expect_nothing_before_marker(&mut c, &mut grpc, "alpha", "val").await;
}

#[tokio::test]
async fn idempotency_keys_deliver_once_per_project() {
    let herald = herald().start().await;
    let mut admin = herald.grpc(Some(ADMIN_KEY)).await;
    let mut a = herald.connect("alpha", &token("alpha", "ida")).await;
    let mut b = herald.connect("beta", &token("beta", "idb")).await;
    let keyed = |project: &str, user: &str, key: &str, payload: &str| {
        let mut r = publish(project, To::User(user), payload);
        r.idempotency_key = key.into();
        r
    };

    let first = send(&mut admin, keyed("alpha", "ida", "order-42", "1")).await;
    assert_eq!(first.resolution(), Resolution::Delivered);
    let second = send(&mut admin, keyed("alpha", "ida", "order-42", "2")).await;
    assert_eq!(
        (second.resolution(), second.edges),
        (Resolution::Duplicate, 0)
    );
    let third = send(&mut admin, publish("alpha", To::Broadcast, "3")).await;
    assert_eq!(
        third.resolution(),
        Resolution::Delivered,
        "no key, no deduplication"
    );
    // The key belongs to the project, whatever the target.
    let fourth = send(&mut admin, {
        let mut r = publish("alpha", To::Broadcast, "4");
        r.idempotency_key = "order-42".into();
        r
    })
    .await;
    assert_eq!(fourth.resolution(), Resolution::Duplicate);

    let beta = send(&mut admin, keyed("beta", "idb", "order-42", "5")).await;
    assert_eq!(
        beta.resolution(),
        Resolution::Delivered,
        "the same key in beta is independent"
    );
    let beta_again = send(&mut admin, keyed("beta", "idb", "order-42", "6")).await;
    assert_eq!(beta_again.resolution(), Resolution::Duplicate);

    // A refused request does not use up its key.
    let mut bad = keyed("alpha", "ida", "order-43", "7");
    bad.event = "bad event".into();
    assert_eq!(code_of(admin.publish(bad).await), Code::InvalidArgument);
    let ok = send(&mut admin, keyed("alpha", "ida", "order-43", "8")).await;
    assert_eq!(ok.resolution(), Resolution::Delivered);

    for want in [1, 3, 8] {
        assert_eq!(a.next_msg().await["data"], want);
    }
    assert_eq!(b.next_msg().await["data"], 5);
    expect_nothing_before_marker(&mut a, &mut admin, "alpha", "ida").await;
    expect_nothing_before_marker(&mut b, &mut admin, "beta", "idb").await;
}

#[tokio::test]
async fn publish_stream_acks_every_message_in_order() {
    let herald = herald().start().await;
    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    let mut c = herald
        .connect("alpha", &member("alpha", "streamer", &["feed"], &[]))
        .await;

    let requests: Vec<PublishStreamRequest> = (1..=500u64)
        .map(|i| PublishStreamRequest {
            request_id: i,
            message: Some(publish(
                "alpha",
                To::Group(if i == 250 { "a.*" } else { "feed" }),
                &i.to_string(),
            )),
        })
        .collect();
    let mut replies = grpc
        .publish_stream(tokio_stream::iter(requests))
        .await
        .expect("stream accepted")
        .into_inner();
    let mut acks = Vec::new();
    while let Some(batch) = tokio::time::timeout(WAIT, replies.message())
        .await
        .expect("acks in time")
        .expect("no stream error")
    {
        assert!(!batch.acks.is_empty(), "no empty batch");
        acks.extend(batch.acks);
    }
    assert_eq!(acks.len(), 500, "one ack per message");
    for (ack, want) in acks.iter().zip(1..=500u64) {
        assert_eq!(ack.request_id, want, "acks in stream order");
        if want == 250 {
            assert_eq!(ack.error_code, Code::InvalidArgument as i32, "{ack:?}");
            assert!(ack.error_message.contains("target.group"), "{ack:?}");
            assert!(ack.reply.is_none(), "{ack:?}");
        } else {
            assert_eq!(ack.error_code, 0, "{ack:?}");
            let reply = ack.reply.as_ref().expect("a reply");
            assert_eq!(reply.resolution(), Resolution::Delivered, "{ack:?}");
            assert!(!reply.message_id.is_empty());
        }
    }
    let mut ids: Vec<&str> = acks
        .iter()
        .filter_map(|a| a.reply.as_ref())
        .map(|r| r.message_id.as_str())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 499, "message ids are unique");

    for want in (1..=500u64).filter(|i| *i != 250) {
        assert_eq!(c.next_msg().await["data"], want, "in publish order");
    }
    expect_nothing_before_marker(&mut c, &mut grpc, "alpha", "streamer").await;
}

#[tokio::test]
async fn publish_stream_checks_keys_and_messages() {
    let herald = herald().start().await;
    let mut c = herald.connect("alpha", &token("alpha", "sk")).await;
    let one = |i: u64, project: &str| PublishStreamRequest {
        request_id: i,
        message: Some(publish(project, To::User("sk"), &i.to_string())),
    };

    let mut none = herald.grpc(None).await;
    let e = none
        .publish_stream(tokio_stream::iter(vec![one(1, "alpha")]))
        .await;
    assert_eq!(code_of(e), Code::Unauthenticated);

    let mut beta = herald.grpc(Some(BETA_KEY)).await;
    let reqs = vec![
        one(10, "alpha"),
        PublishStreamRequest {
            request_id: 11,
            message: None,
        },
        one(12, "beta"),
    ];
    let mut replies = beta
        .publish_stream(tokio_stream::iter(reqs))
        .await
        .expect("stream")
        .into_inner();
    let mut acks = Vec::new();
    while let Some(batch) = tokio::time::timeout(WAIT, replies.message())
        .await
        .expect("in time")
        .expect("reply")
    {
        acks.extend(batch.acks);
    }
    let got: Vec<(u64, i32)> = acks.iter().map(|a| (a.request_id, a.error_code)).collect();
    assert_eq!(
        got,
        vec![
            (10, Code::PermissionDenied as i32),
            (11, Code::InvalidArgument as i32),
            (12, 0)
        ],
        "{acks:?}"
    );
    assert_eq!(
        acks[2].reply.as_ref().map(|r| r.resolution()),
        Some(Resolution::NoRecipients)
    );
    let mut alpha = herald.grpc(Some(ALPHA_KEY)).await;
    expect_nothing_before_marker(&mut c, &mut alpha, "alpha", "sk").await;
}

#[tokio::test]
async fn count_and_list_connections() {
    let herald = herald().start().await;
    let mut admin = herald.grpc(Some(ADMIN_KEY)).await;
    let mut alpha = herald.grpc(Some(ALPHA_KEY)).await;
    let mut beta = herald.grpc(Some(BETA_KEY)).await;

    let (phone, phone_id) = connect_with_id(
        &herald,
        "alpha",
        &member("alpha", "alice", &["news", "sport"], &[]),
    )
    .await;
    let (laptop, laptop_id) =
        connect_with_id(&herald, "alpha", &member("alpha", "alice", &["news"], &[])).await;
    let (bob, bob_id) =
        connect_with_id(&herald, "alpha", &member("alpha", "bob", &["sport"], &[])).await;
    let (mut carol, carol_id) =
        connect_with_id(&herald, "alpha", &member("alpha", "carol", &[], &["sport"])).await;
    let _beta_alice = herald
        .connect("beta", &member("beta", "alice", &["sport"], &[]))
        .await;
    assert_eq!(
        carol.subscribe(1, "sport").await,
        json!({"type":"ack","id":1})
    );

    let counts = admin
        .count_connections(CountConnectionsRequest::default())
        .await
        .expect("count")
        .into_inner();
    let want: std::collections::HashMap<String, u64> =
        [("alpha".to_string(), 4), ("beta".to_string(), 1)].into();
    assert_eq!(counts.connections, want);
    assert!(counts.missing_edges.is_empty());
    let counts = alpha
        .count_connections(CountConnectionsRequest::default())
        .await
        .expect("count")
        .into_inner();
    assert_eq!(counts.connections, [("alpha".to_string(), 4)].into());
    let counts = beta
        .count_connections(CountConnectionsRequest::default())
        .await
        .expect("count")
        .into_inner();
    assert_eq!(counts.connections, [("beta".to_string(), 1)].into());
    let counts = admin
        .count_connections(CountConnectionsRequest {
            project: "beta".into(),
        })
        .await
        .expect("count")
        .into_inner();
    assert_eq!(counts.connections, [("beta".to_string(), 1)].into());

    let list = |of| ListConnectionsRequest {
        project: "alpha".into(),
        of: Some(of),
        ..Default::default()
    };
    let of_alice = alpha
        .list_connections(list(list_connections_request::Of::User("alice".into())))
        .await
        .expect("list")
        .into_inner()
        .connections;
    assert_eq!(of_alice.len(), 2, "{of_alice:?}");
    let mut by_id: Vec<_> = of_alice.iter().map(|c| c.id.clone()).collect();
    by_id.sort();
    let mut want_ids = vec![phone_id.clone(), laptop_id.clone()];
    want_ids.sort();
    assert_eq!(by_id, want_ids);
    let now_ms = jsonwebtoken::get_current_timestamp() as i64 * 1000;
    for c in &of_alice {
        let (client, groups) = if c.id == phone_id {
            (&phone, vec!["news", "sport"])
        } else {
            (&laptop, vec!["news"])
        };
        assert_eq!(c.user, "alice");
        assert_eq!(c.edge, "edge-1");
        assert_eq!(c.remote_addr, local_addr(client), "{c:?}");
        assert!(c.remote_addr.starts_with("127.0.0.1:"), "{c:?}");
        let mut got = c.groups.clone();
        got.sort();
        assert_eq!(got, groups, "{c:?}");
        assert!(
            (now_ms - 60_000..=now_ms + 2_000).contains(&c.connected_since_unix_ms),
            "{c:?}"
        );
    }

    let of_sport = alpha
        .list_connections(list(list_connections_request::Of::Group("sport".into())))
        .await
        .expect("list")
        .into_inner()
        .connections;
    let mut ids: Vec<_> = of_sport.iter().map(|c| c.id.as_str()).collect();
    ids.sort_unstable();
    let mut want: Vec<&str> = vec![&phone_id, &bob_id, &carol_id];
    want.sort_unstable();
    assert_eq!(
        ids, want,
        "the group's members in alpha only, subscribed ones included"
    );
    let bob_info = of_sport
        .iter()
        .find(|c| c.id == bob_id)
        .expect("bob is listed");
    assert_eq!(
        (bob_info.user.as_str(), bob_info.remote_addr.clone()),
        ("bob", local_addr(&bob))
    );

    let empty = alpha
        .list_connections(list(list_connections_request::Of::User("nobody".into())))
        .await
        .expect("list")
        .into_inner();
    assert!(empty.connections.is_empty());
    let e = alpha
        .list_connections(ListConnectionsRequest {
            project: "alpha".into(),
            of: None,
            ..Default::default()
        })
        .await;
    assert_eq!(code_of(e), Code::InvalidArgument);
    let e = alpha
        .list_connections(list(list_connections_request::Of::Group("a.*".into())))
        .await;
    assert_eq!(code_of(e), Code::InvalidArgument);
}

#[tokio::test]
async fn disconnect_by_connection_or_by_user() {
    let herald = herald().start().await;
    let mut alpha = herald.grpc(Some(ALPHA_KEY)).await;
    let (mut phone, phone_id) = connect_with_id(&herald, "alpha", &token("alpha", "alice")).await;
    let (mut laptop, _) = connect_with_id(&herald, "alpha", &token("alpha", "alice")).await;
    let (mut tablet, _) = connect_with_id(&herald, "alpha", &token("alpha", "alice")).await;
    let (mut bob, _) = connect_with_id(&herald, "alpha", &token("alpha", "bob")).await;
    let (mut other, other_id) = connect_with_id(&herald, "beta", &token("beta", "alice")).await;
    let kick = |who, reconnect_after_ms| DisconnectRequest {
        project: "alpha".into(),
        who: Some(who),
        reconnect_after_ms,
    };

    // By id: only that device, and only within the caller's project.
    let r = alpha
        .disconnect(kick(
            disconnect_request::Who::ConnectionId(phone_id.clone()),
            0,
        ))
        .await
        .expect("disconnect")
        .into_inner();
    assert_eq!(r.disconnected, 1);
    let (code, reason, frames) = phone.expect_close().await;
    assert_eq!((code, reason.as_str()), (4009, "disconnected by operator"));
    assert!(frames.is_empty(), "no hint was asked for: {frames:?}");
    for (id, what) in [
        (other_id.as_str(), "beta's connection"),
        ("edge-1-999999", "no such connection"),
        ("nonsense", "not an id"),
    ] {
        let r = alpha
            .disconnect(kick(disconnect_request::Who::ConnectionId(id.into()), 0))
            .await
            .expect("disconnect")
            .into_inner();
        assert_eq!(r.disconnected, 0, "{what}");
    }
    let e = alpha
        .disconnect(kick(
            disconnect_request::Who::ConnectionId(String::new()),
            0,
        ))
        .await;
    assert_eq!(code_of(e), Code::InvalidArgument);
    let e = alpha
        .disconnect(DisconnectRequest {
            project: "alpha".into(),
            who: None,
            reconnect_after_ms: 0,
        })
        .await;
    assert_eq!(code_of(e), Code::InvalidArgument);
    still_open(&mut laptop, 1).await;
    still_open(&mut other, 1).await;

    // By user: every device, each told when to come back.
    let r = alpha
        .disconnect(kick(disconnect_request::Who::User("alice".into()), 1500))
        .await
        .expect("disconnect")
        .into_inner();
    assert_eq!(r.disconnected, 2);
    for dev in [&mut laptop, &mut tablet] {
        let (code, _, frames) = dev.expect_close().await;
        assert_eq!(code, 4009);
        assert_eq!(
            frames,
            vec![
                json!({"type":"disconnect","code":4009,"reason":"disconnected by operator","reconnect_after_ms":1500})
            ]
        );
    }
    still_open(&mut bob, 2).await;
    still_open(&mut other, 2).await;
    // Only bob is left, once the kicked connections have ended.
    eventually(WAIT, async || {
        let counts = alpha
            .count_connections(CountConnectionsRequest::default())
            .await
            .expect("count")
            .into_inner();
        match counts.connections.get("alpha") {
            Some(1) => Ok(()),
            other => Err(format!("alpha's count: {other:?}")),
        }
    })
    .await;
}

#[tokio::test]
async fn grpc_health_service_reports_serving() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let herald = herald().start().await;
    let channel = Channel::from_shared(format!("http://{}", herald.grpc))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel);
    for service in ["", "herald.v1.Herald"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("check")
            .into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "service {service:?}");
    }
    let e = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await;
    assert_eq!(code_of(e), Code::NotFound);
}

/// Runs the real `herald` binary with `args`.
async fn cli(args: &[&str]) -> Output {
    let run = tokio::process::Command::new(herald_bin())
        .args(args)
        .env_remove("HERALD_API_KEY")
        .env_remove("HERALD_ROUTER")
        .output();
    tokio::time::timeout(WAIT, run)
        .await
        .expect("cli in time")
        .expect("run herald")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs an operator command of the CLI against the sandbox's router with `key`.
async fn operator(herald: &Herald, key: &str, command: &str, rest: &[&str]) -> Output {
    let router = format!("http://{}", herald.grpc);
    let mut args = vec![command, "--router", &router, "--api-key", key];
    args.extend_from_slice(rest);
    cli(&args).await
}

#[tokio::test]
async fn cli_publishes_lists_counts_and_disconnects() {
    let herald = herald().start().await;
    let (mut alice, alice_id) =
        connect_with_id(&herald, "alpha", &member("alpha", "alice", &["news"], &[])).await;

    let publish_args = [
        "-p",
        "alpha",
        "--group",
        "news",
        "--event",
        "tick",
        r#"{"x":1}"#,
    ];
    let out = operator(&herald, ALPHA_KEY, "publish", &publish_args).await;
    assert!(out.status.success(), "publish: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("message ") && stdout.ends_with(" RESOLUTION_DELIVERED (edges: 1)\n"),
        "{stdout}"
    );
    let m = alice.next_msg().await;
    assert_eq!(
        (m["group"].as_str(), m["event"].as_str(), m["data"].clone()),
        (Some("news"), Some("tick"), json!({"x":1}))
    );

    let out = operator(
        &herald,
        ALPHA_KEY,
        "list",
        &["-p", "alpha", "--user", "alice"],
    )
    .await;
    assert!(out.status.success(), "list: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let rows: Vec<Vec<&str>> = stdout.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows.len(), 2, "a header and one connection: {stdout}");
    assert_eq!(rows[0], ["id", "user", "remote", "since_unix_ms", "groups"]);
    let addr = local_addr(&alice);
    assert_eq!(
        (rows[1][0], rows[1][1], rows[1][2], rows[1][4]),
        (alice_id.as_str(), "alice", addr.as_str(), "news")
    );

    let out = operator(&herald, ALPHA_KEY, "count", &[]).await;
    assert!(out.status.success(), "count: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "alpha\t1\n");
    let out = operator(&herald, ADMIN_KEY, "count", &[]).await;
    assert!(out.status.success(), "count: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "alpha\t1\nbeta\t0\n");

    let broadcast = ["-p", "alpha", "--broadcast", "1"];
    let out = operator(&herald, "wrong-key-0123456789", "publish", &broadcast).await;
    assert!(!out.status.success(), "a wrong key must fail");
    assert!(
        text(&out.stderr).contains("Unauthenticated"),
        "stderr: {}",
        text(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "stdout: {}", text(&out.stdout));
    let out = operator(&herald, BETA_KEY, "publish", &broadcast).await;
    assert!(!out.status.success(), "beta's key must fail on alpha");
    assert!(
        text(&out.stderr).contains("PermissionDenied"),
        "stderr: {}",
        text(&out.stderr)
    );
    let mut alpha = herald.grpc(Some(ALPHA_KEY)).await;
    expect_nothing_before_marker(&mut alice, &mut alpha, "alpha", "alice").await;

    let kick = [
        "-p",
        "alpha",
        "--user",
        "alice",
        "--reconnect-after-ms",
        "250",
    ];
    let out = operator(&herald, ALPHA_KEY, "disconnect", &kick).await;
    assert!(out.status.success(), "disconnect: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "disconnected 1\n");
    let (code, _, frames) = alice.expect_close().await;
    assert_eq!(code, 4009);
    assert_eq!(
        frames.first().map(|f| f["reconnect_after_ms"].clone()),
        Some(json!(250))
    );
}

#[tokio::test]
async fn cli_token_signs_tokens_the_server_accepts() {
    let herald = herald().start().await;
    let out = tokio::process::Command::new(herald_bin())
        .args([
            "token",
            "-p",
            "alpha",
            "--sub",
            "minted",
            "--groups",
            "news,sport",
            "--ttl",
            "120",
        ])
        .env("HERALD_TOKEN_SECRET", ALPHA_SECRET)
        .output();
    let out = tokio::time::timeout(WAIT, out)
        .await
        .expect("cli in time")
        .expect("run herald");
    assert!(out.status.success(), "token: {}", text(&out.stderr));
    let tok = text(&out.stdout).trim().to_string();
    let (ws, _) = herald
        .open(&herald.url("alpha", &format!("token={tok}")), &[])
        .await
        .expect("upgrade");
    let w = Client { ws }.next_json().await;
    assert_eq!(
        (w["type"].as_str(), w["user"].as_str()),
        (Some("welcome"), Some("minted")),
        "{w}"
    );
    assert_eq!(w["groups"], json!(["news", "sport"]));
    let ttl = w["expires"].as_u64().expect("expires") - jsonwebtoken::get_current_timestamp();
    assert!((110..=120).contains(&ttl), "ttl {ttl}");
}

#[tokio::test]
async fn serve_starts_with_the_token_commands_secret_in_the_environment() {
    // An operator who exported HERALD_TOKEN_SECRET for `herald token` starts a server in the same
    // shell: the variable belongs to the CLI, not to the configuration.
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("herald.toml");
    std::fs::write(
        &config,
        format!(
            "[[projects]]\nid = \"alpha\"\n[[projects.keys]]\nalg = \"HS256\"\nsecret = \"{ALPHA_SECRET}\"\n"
        ),
    )
    .expect("write config");
    let mut child = tokio::process::Command::new(herald_bin())
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .args([
            "--ws-listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .env("HERALD_TOKEN_SECRET", ALPHA_SECRET)
        .env("RUST_LOG", "warn")
        .env_remove("HERALD_BIN")
        .env_remove("HERALD_TEST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn herald");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut first = String::new();
    let mut byte = [0u8; 1];
    let read_line = async {
        while stdout.read(&mut byte).await.expect("read") == 1 && byte[0] != b'\n' {
            first.push(char::from(byte[0]));
        }
    };
    tokio::time::timeout(WAIT, read_line)
        .await
        .expect("a line in time");
    if !first.starts_with("herald ready ") {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = tokio::time::timeout(WAIT, e.read_to_string(&mut err)).await;
        }
        panic!("herald did not start: {first:?}\n{err}");
    }
}

#[tokio::test]
async fn admin_endpoint_reports_health_readiness_and_metrics() {
    let herald = herald().start().await;
    assert_eq!(
        herald.admin_get("/healthz").await,
        (200, "ok\n".to_string())
    );
    herald.wait_ready().await;
    assert_eq!(herald.admin_get("/nope").await.0, 404);

    let _c = herald.connect("alpha", &token("alpha", "metered")).await;
    // Metrics are updated beside the connection's work: awaited, not read at an instant.
    eventually(WAIT, async || {
        let (status, body) = herald.admin_get("/metrics").await;
        assert_eq!(status, 200);
        let gauge: Vec<&str> = body
            .lines()
            .filter(|l| l.starts_with("herald_edge_connections"))
            .collect();
        let connects = body
            .lines()
            .find_map(|l| {
                l.strip_prefix(r#"herald_edge_connects_total{result="ok",protocol="native"} "#)
            })
            .and_then(|v| v.trim().parse::<f64>().ok());
        if gauge == [r#"herald_edge_connections{protocol="native"} 1"#] && connects == Some(1.0) {
            Ok(())
        } else {
            Err(format!("metrics:\n{body}"))
        }
    })
    .await;
}

#[tokio::test]
async fn large_listings_are_not_cut_by_the_request_size_limit() {
    // Requests are limited to the payload limit plus an allowance; replies are not.
    let herald = herald().router("max_payload_bytes", 1024).start().await;
    let groups: Vec<String> = (0..20)
        .map(|i| format!("{i:02}{}", "g".repeat(58)))
        .collect();
    let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
    let tok = member("alpha", "big", &groups, &[]);
    let mut clients = Vec::new();
    for _ in 0..80 {
        clients.push(connect_with_id(&herald, "alpha", &tok).await.0);
    }
    let mut admin = herald.grpc(Some(ADMIN_KEY)).await;
    let list = admin
        .list_connections(ListConnectionsRequest {
            project: "alpha".into(),
            of: Some(list_connections_request::Of::User("big".into())),
            ..Default::default()
        })
        .await
        .expect("a listing larger than the request limit")
        .into_inner();
    assert_eq!(list.connections.len(), 80);
    assert!(list.connections.iter().all(|c| c.groups.len() == 20));
    let size: usize = list
        .connections
        .iter()
        .flat_map(|c| c.groups.iter().map(String::len))
        .sum();
    assert!(size > 1024 + 65_536, "the listing is only {size} bytes");
}

#[tokio::test]
async fn publish_stream_broken_by_an_oversized_message_ends_with_an_error() {
    let herald = herald().router("max_payload_bytes", 1024).start().await;
    let mut c = herald.connect("alpha", &token("alpha", "ov")).await;
    let mut alpha = herald.grpc(Some(ALPHA_KEY)).await;
    let big = format!("\"{}\"", "x".repeat(200_000));
    let reqs = vec![
        PublishStreamRequest {
            request_id: 1,
            message: Some(publish("alpha", To::User("ov"), "1")),
        },
        PublishStreamRequest {
            request_id: 2,
            message: Some(publish("alpha", To::User("ov"), &big)),
        },
    ];
    let mut replies = alpha
        .publish_stream(tokio_stream::iter(reqs))
        .await
        .expect("stream")
        .into_inner();
    let mut acks = Vec::new();
    let end = loop {
        match tokio::time::timeout(WAIT, replies.message())
            .await
            .expect("in time")
        {
            Ok(Some(batch)) => acks.extend(batch.acks),
            Ok(None) => break None,
            Err(status) => break Some(status),
        }
    };
    let status = end.expect("the call ends with an error status, not OK");
    assert!(
        matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{status:?}"
    );
    let ids: Vec<u64> = acks.iter().map(|a| a.request_id).collect();
    assert_eq!(ids, vec![1]);
    assert_eq!(c.next_msg().await["data"], json!(1));
}

/// Every page of a listing through gRPC, from the first: the ids of each page.
async fn pages(
    grpc: &mut Grpc,
    of: list_connections_request::Of,
    page_size: u32,
) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let r = grpc
            .list_connections(ListConnectionsRequest {
                project: "alpha".into(),
                of: Some(of.clone()),
                page_size,
                page_token,
            })
            .await
            .expect("a page")
            .into_inner();
        assert!(r.missing_edges.is_empty(), "{:?}", r.missing_edges);
        out.push(r.connections.into_iter().map(|c| c.id).collect());
        if r.next_page_token.is_empty() {
            return out;
        }
        page_token = r.next_page_token;
    }
}

/// The order of a listing: by edge id, then connection number.
fn id_order(id: &str) -> (String, u64) {
    let (edge, n) = id.rsplit_once('-').expect("<edge>-<number>");
    (edge.to_string(), n.parse().expect("number"))
}

#[tokio::test]
async fn listings_of_more_than_a_page_come_in_pages_through_grpc_and_the_cli() {
    const N: usize = 2_500;
    let herald = herald()
        .edge(
            "limits",
            toml::Value::Table(toml::toml! { per_ip_connect_rate = 0 }),
        )
        .start()
        .await;
    let tok = member("alpha", "crowd", &["many"], &[]);
    let mut clients = Vec::with_capacity(N);
    let mut ids = Vec::with_capacity(N);
    while clients.len() < N {
        let batch = futures_util::future::join_all(
            (0..100).map(|_| connect_with_id(&herald, "alpha", &tok)),
        )
        .await;
        for (c, id) in batch {
            clients.push(c);
            ids.push(id);
        }
    }
    ids.sort_by_key(|id| id_order(id));
    let mut admin = herald.grpc(Some(ADMIN_KEY)).await;

    // The default page is 1,000; pages follow the id order and cover every connection once.
    let by_user = pages(
        &mut admin,
        list_connections_request::Of::User("crowd".into()),
        0,
    )
    .await;
    let sizes: Vec<usize> = by_user.iter().map(Vec::len).collect();
    assert_eq!(sizes, [1_000, 1_000, 500]);
    assert_eq!(by_user.concat(), ids);
    let by_group = pages(
        &mut admin,
        list_connections_request::Of::Group("many".into()),
        700,
    )
    .await;
    let sizes: Vec<usize> = by_group.iter().map(Vec::len).collect();
    assert_eq!(sizes, [700, 700, 700, 400]);
    assert_eq!(by_group.concat(), ids);
    // Larger than the most (5,000) is taken as the most: one page.
    let all = pages(
        &mut admin,
        list_connections_request::Of::Group("many".into()),
        1 << 30,
    )
    .await;
    assert_eq!(all, [ids.clone()]);

    // A token that no reply gave is refused.
    let bad = admin
        .list_connections(ListConnectionsRequest {
            project: "alpha".into(),
            of: Some(list_connections_request::Of::User("crowd".into())),
            page_token: "not a token".into(),
            ..Default::default()
        })
        .await;
    let s = bad.expect_err("a bad token");
    assert_eq!(
        (s.code(), s.message()),
        (Code::InvalidArgument, "page_token: not a next_page_token")
    );

    // The CLI fetches every page by default...
    let out = operator(
        &herald,
        ALPHA_KEY,
        "list",
        &["-p", "alpha", "--user", "crowd"],
    )
    .await;
    assert!(out.status.success(), "list: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let listed: Vec<&str> = stdout
        .lines()
        .skip(1)
        .map(|l| l.split('\t').next().expect("id"))
        .collect();
    assert_eq!(listed, ids);
    // ... or one page from a token, naming the next one.
    let out = operator(
        &herald,
        ALPHA_KEY,
        "list",
        &[
            "-p",
            "alpha",
            "--group",
            "many",
            "--page-size",
            "3",
            "--page-token",
            &ids[1],
        ],
    )
    .await;
    assert!(out.status.success(), "list: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let listed: Vec<&str> = stdout
        .lines()
        .skip(1)
        .map(|l| l.split('\t').next().expect("id"))
        .collect();
    assert_eq!(listed, ids[2..5]);
    assert_eq!(
        text(&out.stderr),
        format!("next page: --page-token {}\n", ids[4])
    );
    drop(clients);
}

/// A reply of several HTTP/2 frames (a listing of 400 connections, ~30 KB) goes out as soon as it
/// is written: the gRPC listener's connections have `TCP_NODELAY`. Without it, every such reply
/// waited for the client's delayed ACK (at least 40 ms on Linux) after its first frame, on every
/// call once the connection left its quick-ACK start.
#[tokio::test]
async fn a_large_reply_does_not_wait_for_a_delayed_ack() {
    use prost::Message as _;
    let herald = herald()
        .edge(
            "limits",
            toml::Value::Table(toml::toml! { per_ip_connect_rate = 0 per_ip_max_connections = 0 }),
        )
        .start()
        .await;
    let mut clients = Vec::new();
    for i in 0..400 {
        let mut c = claims("alpha", &format!("user-{i:04}"));
        c["groups"] = json!(["g"]);
        clients.push(
            herald
                .connect("alpha", &hs256(ALPHA_SECRET, None, &c))
                .await,
        );
    }
    let mut g = herald.grpc(Some(ALPHA_KEY)).await;
    let list = ListConnectionsRequest {
        project: "alpha".into(),
        of: Some(list_connections_request::Of::Group("g".into())),
        page_size: 1_000,
        page_token: String::new(),
    };
    let mut took = Vec::new();
    for i in 0..30 {
        let t = std::time::Instant::now();
        let r = g
            .list_connections(list.clone())
            .await
            .expect("list")
            .into_inner();
        let d = t.elapsed();
        assert_eq!(r.connections.len(), 400);
        // More than one HTTP/2 frame (16 KiB each by default).
        assert!(r.encoded_len() > 16_384, "{} bytes", r.encoded_len());
        // The first calls may meet the connection's quick ACKs: not counted.
        if i >= 10 {
            took.push(d);
        }
    }
    took.sort();
    let median = took[took.len() / 2];
    assert!(
        median < std::time::Duration::from_millis(30),
        "median {median:?} of {took:?}: replies wait for delayed ACKs"
    );
}
