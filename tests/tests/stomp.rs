//! STOMP over WebSocket with the client people use: @stomp/stompjs 7 under Node
//! (`tests/clients/stomp.mjs`), through real sockets to the real binary, over `ws` and `wss`,
//! directly and through nginx in front (the shipped configuration, the push center's URL);
//! what stompjs never sends (a silent client, a garbled `CONNECT`) by a hand-written client.

use futures_util::{SinkExt, StreamExt};
use herald_tests::stomp::Stomp;
use herald_tests::tls::*;
use herald_tests::*;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

fn bearer(t: &str) -> Value {
    json!({"connectHeaders": {"Authorization": format!("Bearer {t}")}})
}

fn with_claims(project: &str, sub: &str, extra: Value) -> String {
    let mut c = claims(project, sub);
    if let (Some(o), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    hs256(
        if project == "beta" {
            BETA_SECRET
        } else {
            ALPHA_SECRET
        },
        None,
        &c,
    )
}

/// A STOMP client written by hand over a WebSocket offering `v12.stomp`: for what stompjs never
/// does (stay silent after promising heart-beats, send a garbled `CONNECT`).
struct Raw {
    ws: Ws,
}

impl Raw {
    /// Opens `/ws/{project}` offering `v12.stomp`; checks the echoed sub-protocol.
    async fn open(herald: &Herald, project: &str) -> Raw {
        let (ws, resp) = herald
            .open(
                &herald.url(project, ""),
                &[("sec-websocket-protocol", "v12.stomp")],
            )
            .await
            .expect("websocket upgrade");
        assert_eq!(
            resp.headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok()),
            Some("v12.stomp")
        );
        Raw { ws }
    }

    async fn send(&mut self, frame: &str) {
        self.ws
            .send(Message::text(frame.to_owned()))
            .await
            .expect("send");
    }

    /// The next data message as text (a heart-beat is `"\n"`); fails on a close.
    async fn next(&mut self) -> String {
        let m = tokio::time::timeout(WAIT, self.ws.next())
            .await
            .expect("a frame in time")
            .expect("stream open")
            .expect("a frame");
        match m {
            Message::Text(t) => t.to_string(),
            Message::Binary(b) => String::from_utf8_lossy(&b).into_owned(),
            Message::Close(c) => panic!("closed while waiting for a frame: {c:?}"),
            _ => Box::pin(self.next()).await,
        }
    }

    /// Reads until the close frame: its code and the data messages before it.
    async fn expect_close(&mut self) -> (u16, Vec<String>) {
        let mut before = Vec::new();
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no close within {WAIT:?}; got {before:?}"));
            match m {
                Some(Ok(Message::Close(Some(f)))) => return (u16::from(f.code), before),
                Some(Ok(Message::Text(t))) => before.push(t.to_string()),
                Some(Ok(Message::Binary(b))) => {
                    before.push(String::from_utf8_lossy(&b).into_owned())
                }
                Some(Ok(_)) => continue,
                other => panic!("no close frame: {other:?}; got {before:?}"),
            }
        }
    }
}

#[tokio::test]
async fn stompjs_receives_group_user_and_broadcast_messages() {
    let herald = herald().start().await;
    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    let t = with_claims(
        "alpha",
        "alice",
        json!({"channels": ["news", "sport-*", "greetings/*"]}),
    );
    let mut c = Stomp::connect(&herald, "alpha", "", bearer(&t)).await;
    assert_eq!(c.next("upgrade").await["protocol"], "v12.stomp");
    let connected = c.next("connect").await;
    assert_eq!(connected["headers"]["version"], "1.2");
    assert_eq!(connected["headers"]["user-name"], "alice");
    c.subscribe("/topic/alpha/news", "g", "auto").await;
    c.subscribe("/topic/alpha/greetings/group1", "g2", "auto")
        .await;
    c.subscribe("/user/queue/orders", "u", "auto").await;
    c.subscribe("/topic/alpha", "b", "auto").await;
    herald
        .wait_metric(r#"herald_edge_connections{protocol="stomp"}"#, 1.0)
        .await;

    send(
        &mut grpc,
        publish("alpha", To::Group("news"), r#"{"headline":"rain"}"#),
    )
    .await;
    let m = c.next("message").await;
    assert_eq!(
        (&m["subscription"], &m["destination"], &m["contentType"]),
        (
            &json!("g"),
            &json!("/topic/alpha/news"),
            &json!("application/json")
        )
    );
    assert_eq!(
        serde_json::from_str::<Value>(m["body"].as_str().unwrap_or_default()).ok(),
        Some(json!({"headline":"rain"}))
    );

    // A group with levels, as the push center's `/topic/{projectId}/greetings/group1`.
    send(
        &mut grpc,
        publish("alpha", To::Group("greetings/group1"), "hi group1"),
    )
    .await;
    let m = c.next("message").await;
    assert_eq!(
        (&m["subscription"], &m["destination"], &m["body"]),
        (
            &json!("g2"),
            &json!("/topic/alpha/greetings/group1"),
            &json!("hi group1")
        )
    );

    let mut to_alice = publish("alpha", To::User("alice"), "plain text");
    to_alice.event = "orders".into();
    send(&mut grpc, to_alice).await;
    let m = c.next("message").await;
    assert_eq!(
        (
            &m["subscription"],
            &m["destination"],
            &m["body"],
            &m["eventName"]
        ),
        (
            &json!("u"),
            &json!("/user/queue/orders"),
            &json!("plain text"),
            &json!("orders")
        )
    );

    send(&mut grpc, publish("alpha", To::Broadcast, "[1,2]")).await;
    let m = c.next("message").await;
    assert_eq!(
        (&m["subscription"], &m["body"]),
        (&json!("b"), &json!("[1,2]"))
    );

    // Bytes that are not UTF-8 travel raw (in a binary WebSocket frame).
    let mut bin = publish("alpha", To::Group("news"), "");
    bin.payload = vec![0xff, 0, 1];
    send(&mut grpc, bin).await;
    let m = c.next("message").await;
    assert_eq!(
        (&m["contentType"], &m["body"]),
        (&json!("application/octet-stream"), &json!("/wAB"))
    );

    // A native client of the same project gets the same broadcast.
    let mut native = herald.connect("alpha", &token("alpha", "bob")).await;
    send(&mut grpc, publish("alpha", To::Broadcast, r#"{"n":2}"#)).await;
    assert_eq!(native.next_msg().await["data"], json!({"n":2}));
    assert_eq!(c.next("message").await["body"], r#"{"n":2}"#);

    // Per-protocol metrics: six deliveries to the STOMP client, one to the native one.
    herald
        .wait_metric(r#"herald_edge_deliveries_total{protocol="stomp"}"#, 6.0)
        .await;
    herald
        .wait_metric(r#"herald_edge_deliveries_total{protocol="native"}"#, 1.0)
        .await;
    herald
        .wait_metric(
            r#"herald_edge_connects_total{result="ok",protocol="stomp"}"#,
            1.0,
        )
        .await;
    herald
        .wait_metric(r#"herald_edge_connections{protocol="native"}"#, 1.0)
        .await;

    // stompjs's deactivate(): DISCONNECT with its own receipt, awaited, then the close.
    c.send(json!({"disconnect": true})).await;
    assert_eq!(c.next("ws_close").await["code"], 1000);
    c.next("deactivated").await;
    herald
        .wait_metric(r#"herald_edge_connections{protocol="stomp"}"#, 0.0)
        .await;
}

#[tokio::test]
async fn the_token_may_come_as_passcode_token_header_or_query() {
    let herald = herald().start().await;
    let t = token("alpha", "alice");
    for (query, headers) in [
        ("", json!({"passcode": t, "login": "alice"})),
        ("", json!({"token": t})),
        (format!("token={t}").as_str(), json!({})),
    ] {
        let mut c =
            Stomp::connect(&herald, "alpha", query, json!({"connectHeaders": headers})).await;
        assert_eq!(c.next("connect").await["headers"]["user-name"], "alice");
    }
    // The older versions, each chosen by its own sub-protocol.
    for (version, protocol) in [("1.1", "v11.stomp"), ("1.0", "v10.stomp")] {
        let mut c = Stomp::connect(
            &herald,
            "alpha",
            "",
            json!({"connectHeaders": {"token": t}, "versions": [version]}),
        )
        .await;
        assert_eq!(c.next("upgrade").await["protocol"], protocol);
        assert_eq!(c.next("connect").await["headers"]["version"], version);
    }
    herald
        .wait_metric(
            r#"herald_edge_connects_total{result="ok",protocol="stomp"}"#,
            5.0,
        )
        .await;
}

#[tokio::test]
async fn refusals_are_error_frames_then_the_native_close_codes() {
    let herald = herald().start().await;
    let expired = hs256(
        ALPHA_SECRET,
        None,
        &json!({"sub":"alice","aud":"alpha","exp":1_000_000}),
    );
    for (project, headers, want, result) in [
        (
            "alpha",
            json!({}),
            ("authentication required", 4001),
            "auth_required",
        ),
        (
            "alpha",
            json!({"Authorization": "Bearer not.a.jwt"}),
            ("invalid token", 4002),
            "invalid_token",
        ),
        (
            "alpha",
            json!({"token": hs256(ALPHA_SECRET, None, &claims("beta", "bob"))}),
            ("forbidden", 4003),
            "forbidden",
        ),
        (
            "nowhere",
            bearer(&token("alpha", "a"))["connectHeaders"].clone(),
            ("unknown project", 4004),
            "unknown_project",
        ),
        (
            "alpha",
            json!({"passcode": expired}),
            ("token expired", 4005),
            "token_expired",
        ),
    ] {
        let mut c = Stomp::connect(&herald, project, "", json!({"connectHeaders": headers})).await;
        let (message, code) = c.refused().await;
        assert_eq!((message.as_str(), code), want, "{project} {headers}");
        herald
            .wait_metric(
                &format!(r#"herald_edge_connects_total{{result="{result}",protocol="stomp"}}"#),
                1.0,
            )
            .await;
    }
}

#[tokio::test]
async fn a_token_expiring_during_the_connection_closes_it_4005() {
    let herald = herald().edge("token_leeway_secs", 0).start().await;
    let short = hs256(
        ALPHA_SECRET,
        None,
        &json!({"sub":"shorty","aud":"alpha","exp":jsonwebtoken::get_current_timestamp() + 3}),
    );
    let started = std::time::Instant::now();
    let mut c = Stomp::connect(&herald, "alpha", "", bearer(&short)).await;
    c.next("connect").await;
    // STOMP has no refresh: the ERROR names the reason, then 4005.
    let (message, code) = c.refused().await;
    assert_eq!((message.as_str(), code), ("token expired", 4005));
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(1900),
        "closed {:?} after connecting with a token valid for about 3 s",
        started.elapsed()
    );
}

#[tokio::test]
async fn subscriptions_outside_the_token_are_refused() {
    let herald = herald().start().await;
    let t = with_claims("alpha", "alice", json!({"channels": ["news"]}));
    for (dest, want) in [
        (
            "/topic/alpha/secret",
            ("the token's channels claim does not allow this group", 4003),
        ),
        (
            "/topic/beta/news",
            ("destination names another project", 4003),
        ),
        (
            "/queue/orders",
            (
                "unknown destination (use /topic/{project}, /topic/{project}/{group} or /user/queue/{name})",
                1002,
            ),
        ),
    ] {
        let mut c = Stomp::connect(&herald, "alpha", "", bearer(&t)).await;
        c.next("connect").await;
        c.send(json!({"subscribe": {"destination": dest, "id": "s"}}))
            .await;
        let (message, code) = c.refused().await;
        assert_eq!((message.as_str(), code), want, "{dest}");
    }
    for reason in ["not_allowed", "other_project", "destination"] {
        herald
            .wait_metric(
                &format!(r#"herald_edge_stomp_subscribes_refused_total{{reason="{reason}"}}"#),
                1.0,
            )
            .await;
    }
}

#[tokio::test]
async fn unsubscribe_stops_delivery_after_its_receipt() {
    let herald = herald().start().await;
    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    let t = with_claims("alpha", "alice", json!({"channels": ["news"]}));
    let mut c = Stomp::connect(&herald, "alpha", "", bearer(&t)).await;
    c.next("connect").await;
    c.subscribe("/topic/alpha/news", "g", "auto").await;
    c.subscribe("/user/queue/marks", "u", "auto").await;
    send(&mut grpc, publish("alpha", To::Group("news"), "before")).await;
    assert_eq!(c.next("message").await["body"], "before");

    c.send(json!({"unsubscribe": {"id": "g", "receipt": "unsub-g"}}))
        .await;
    assert_eq!(c.next("receipt").await["id"], "unsub-g");
    // Messages of one publisher arrive in order: had the group's reached the client, it would
    // come before the marker.
    send(&mut grpc, publish("alpha", To::Group("news"), "after")).await;
    send(&mut grpc, publish("alpha", To::User("alice"), "marker")).await;
    let m = c.next("message").await;
    assert_eq!(
        (&m["subscription"], &m["body"]),
        (&json!("u"), &json!("marker")),
        "nothing of the group after UNSUBSCRIBE"
    );
    // Subscribing again joins again.
    c.subscribe("/topic/alpha/news", "g3", "auto").await;
    send(&mut grpc, publish("alpha", To::Group("news"), "again")).await;
    let m = c.next("message").await;
    assert_eq!(
        (&m["subscription"], &m["body"]),
        (&json!("g3"), &json!("again"))
    );
}

#[tokio::test]
async fn client_individual_acks_bound_what_is_in_flight() {
    let herald = herald().start().await;
    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    let mut c = Stomp::connect(&herald, "alpha", "", bearer(&token("alpha", "alice"))).await;
    c.next("connect").await;
    c.subscribe("/user/queue/jobs", "s", "client-individual")
        .await;
    for i in 0..66 {
        send(
            &mut grpc,
            publish("alpha", To::User("alice"), &i.to_string()),
        )
        .await;
    }
    let mut acks = Vec::new();
    for i in 0..64 {
        let m = c.next("message").await;
        assert_eq!(m["body"], i.to_string());
        acks.push(m["ack"].as_str().expect("an ack header").to_owned());
    }
    // The window is full: the 65th waits until one is acknowledged (a marker on an auto
    // subscription shows the connection is live meanwhile).
    c.subscribe("/topic/alpha", "b", "auto").await;
    send(&mut grpc, publish("alpha", To::Broadcast, "marker")).await;
    let m = c.next("message").await;
    assert_eq!(m["body"], "marker", "the 65th must wait for an ACK");
    c.send(json!({"ack": acks[10]})).await;
    assert_eq!(c.next("message").await["body"], "64");
    c.send(json!({"nack": acks[11]})).await;
    assert_eq!(c.next("message").await["body"], "65");
}

#[tokio::test]
async fn auto_acknowledged_messages_carry_no_ack_header() {
    let herald = herald().start().await;
    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    let mut c = Stomp::connect(&herald, "alpha", "", bearer(&token("alpha", "alice"))).await;
    c.next("connect").await;
    c.subscribe("/user/queue/jobs", "s", "auto").await;
    // More than the window of client acknowledgement modes, none acknowledged: all arrive.
    for i in 0..80 {
        send(
            &mut grpc,
            publish("alpha", To::User("alice"), &i.to_string()),
        )
        .await;
    }
    for i in 0..80 {
        let m = c.next("message").await;
        assert_eq!(
            (&m["body"], &m["ack"]),
            (&json!(i.to_string()), &Value::Null)
        );
    }
}

#[tokio::test]
async fn disconnect_answers_its_receipt_then_closes_1000() {
    let herald = herald().start().await;
    let mut c = Stomp::connect(&herald, "alpha", "", bearer(&token("alpha", "alice"))).await;
    c.next("connect").await;
    // Sent as is, so the close comes from the server (stompjs would close after the receipt).
    c.send(json!({"raw": "DISCONNECT\nreceipt:bye\n\n\u{0}"}))
        .await;
    assert_eq!(c.next("receipt").await["id"], "bye");
    assert_eq!(c.next("ws_close").await["code"], 1000);
    herald
        .wait_metric(
            r#"herald_edge_closes_total{code="normal",protocol="stomp"}"#,
            1.0,
        )
        .await;
}

#[tokio::test]
async fn malformed_input_and_send_close_after_an_error_and_are_counted() {
    let herald = herald().start().await;
    let t = token("alpha", "alice");
    let too_big = format!(
        "SUBSCRIBE\nid:0\ndestination:/topic/alpha\nx:{}\n\n\u{0}",
        "y".repeat(70_000)
    );
    for (raw, want) in [
        ("FOO\n\n\u{0}", ("unknown command", 1002)),
        (
            "SUBSCRIBE\nid:a\\t\ndestination:/topic/alpha\n\n\u{0}",
            ("undefined escape sequence in a header", 1002),
        ),
        (
            "SUBSCRIBE\nno colon here\n\n\u{0}",
            ("header line without a colon", 1002),
        ),
        (
            "SEND\ndestination:/topic/alpha/news\n\nhello\u{0}",
            ("SEND is not allowed", 4013),
        ),
        (
            "BEGIN\ntransaction:t\n\n\u{0}",
            ("transactions are not supported", 1002),
        ),
        (
            "CONNECT\naccept-version:1.2\n\n\u{0}",
            ("already connected", 1002),
        ),
        // Larger than edge.max_message_bytes: refused by the WebSocket layer, in STOMP's terms.
        (too_big.as_str(), ("message too big", 1009)),
    ] {
        let mut c = Stomp::connect(&herald, "alpha", "", bearer(&t)).await;
        c.next("connect").await;
        c.send(json!({ "raw": raw })).await;
        let (message, code) = c.refused().await;
        assert_eq!((message.as_str(), code), want, "{raw:?}");
    }
    // A garbled CONNECT, and a first message that is no frame at all.
    for (first, want) in [
        (
            "CONNECT\naccept-version:2.0\n\n\u{0}",
            "message:Supported protocol versions are 1.0,1.1,1.2\n",
        ),
        ("\u{1}\u{2}garbage\n\n\u{0}", "message:unknown command\n"),
    ] {
        let mut raw = Raw::open(&herald, "alpha").await;
        raw.send(first).await;
        let (code, before) = raw.expect_close().await;
        assert_eq!(code, 1002, "{first:?}");
        assert!(
            before.len() == 1 && before[0].starts_with("ERROR\n") && before[0].contains(want),
            "{first:?}: {before:?}"
        );
    }
    for series in [
        r#"herald_edge_stomp_malformed_total{reason="unknown_command"}"#,
        r#"herald_edge_stomp_malformed_total{reason="escape"}"#,
        r#"herald_edge_stomp_malformed_total{reason="header"}"#,
        r#"herald_edge_stomp_malformed_total{reason="connect"}"#,
        r#"herald_edge_closes_total{code="publish_not_allowed",protocol="stomp"}"#,
        r#"herald_edge_closes_total{code="message_too_big",protocol="stomp"}"#,
    ] {
        eventually(WAIT, async || {
            let got = herald.metric(series).await;
            if got >= 1.0 {
                Ok(())
            } else {
                Err(format!("{series} is {got}"))
            }
        })
        .await;
    }
    // The edge still serves.
    let mut c = Stomp::connect(&herald, "alpha", "", bearer(&t)).await;
    assert_eq!(c.next("connect").await["headers"]["user-name"], "alice");
}

#[tokio::test]
async fn heart_beats_are_negotiated_and_a_silent_client_is_closed_4006() {
    // The edge's ping interval is its STOMP heart-beat: 1 s here.
    let herald = herald().edge("ping_interval_secs", 1).start().await;
    // stompjs asking for the server's heart-beats every second, sending none.
    let mut c = Stomp::connect(
        &herald,
        "alpha",
        "",
        json!({
            "connectHeaders": {"token": token("alpha", "alice")},
            "heartbeat": [0, 1000],
            "debug": true,
        }),
    )
    .await;
    assert_eq!(
        c.next("connect").await["headers"]["heart-beat"],
        "1000,1000"
    );
    // Three heart-beats from the server (stompjs logs each as `<<< PONG`).
    for _ in 0..3 {
        loop {
            if c.next("debug").await["text"] == "<<< PONG" {
                break;
            }
        }
    }

    // A client that promised heart-beats every second and sends nothing: an ERROR, then 4006
    // after 1.5 times the interval.
    let mut raw = Raw::open(&herald, "alpha").await;
    raw.send(&format!(
        "CONNECT\naccept-version:1.2\nheart-beat:1000,0\npasscode:{}\n\n\u{0}",
        token("alpha", "silent")
    ))
    .await;
    let connected = raw.next().await;
    assert!(
        connected.starts_with("CONNECTED\nversion:1.2\nheart-beat:1000,1000\n"),
        "{connected}"
    );
    let (code, before) = raw.expect_close().await;
    assert_eq!(code, 4006, "{before:?}");
    assert!(
        before
            .last()
            .is_some_and(|e| e.starts_with("ERROR\nmessage:ping timeout\n")),
        "{before:?}"
    );

    // One that keeps its promise stays: EOLs every 300 ms for 3 s, then a DISCONNECT.
    let mut raw = Raw::open(&herald, "alpha").await;
    raw.send(&format!(
        "CONNECT\naccept-version:1.2\nheart-beat:1000,0\npasscode:{}\nreceipt:c\n\n\u{0}",
        token("alpha", "beating")
    ))
    .await;
    assert!(raw.next().await.starts_with("CONNECTED\n"));
    assert_eq!(raw.next().await, "RECEIPT\nreceipt-id:c\n\n\u{0}");
    for _ in 0..10 {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        raw.send("\n").await;
    }
    raw.send("DISCONNECT\nreceipt:d\n\n\u{0}").await;
    let (code, before) = raw.expect_close().await;
    assert_eq!(
        (code, before),
        (1000, vec!["RECEIPT\nreceipt-id:d\n\n\u{0}".to_owned()])
    );
}

#[tokio::test]
async fn stompjs_over_wss() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::root("test root");
    let (crt, key) = ca
        .server(&["localhost"], &rcgen::PKCS_ECDSA_P256_SHA256)
        .write(dir.path(), "srv", &[]);
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("write ca");
    let mut tls = toml::Table::new();
    tls.insert("cert_file".into(), crt.display().to_string().into());
    tls.insert("key_file".into(), key.display().to_string().into());
    let mut listener = toml::Table::new();
    listener.insert("addr".into(), "127.0.0.1:0".into());
    listener.insert("tls".into(), tls.into());
    let herald = herald().listener(listener).start().await;
    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    let port = herald.listeners[0].port();

    let t = with_claims("alpha", "alice", json!({"channels": ["news"]}));
    let mut c = Stomp::start(json!({
        "url": format!("wss://localhost:{port}/ws/alpha"),
        "ca": ca_file,
        "connectHeaders": {"Authorization": format!("Bearer {t}")},
    }))
    .await;
    assert_eq!(c.next("upgrade").await["protocol"], "v12.stomp");
    c.next("connect").await;
    c.subscribe("/topic/alpha/news", "g", "client-individual")
        .await;
    c.subscribe("/user/queue/q", "u", "auto").await;
    send(&mut grpc, publish("alpha", To::Group("news"), "over tls")).await;
    let m = c.next("message").await;
    assert_eq!(
        (&m["subscription"], &m["body"]),
        (&json!("g"), &json!("over tls"))
    );
    c.send(json!({"ack": m["ack"]})).await;
    send(&mut grpc, publish("alpha", To::User("alice"), "to alice")).await;
    assert_eq!(c.next("message").await["body"], "to alice");
    // A refusal over TLS is the same ERROR and close.
    let mut refused = Stomp::start(json!({
        "url": format!("wss://localhost:{port}/ws/alpha"),
        "ca": ca_file,
        "connectHeaders": {"token": "not.a.jwt"},
    }))
    .await;
    assert_eq!(refused.refused().await, ("invalid token".to_owned(), 4002));
}

#[tokio::test]
async fn one_publish_reaches_native_mqtt_and_stomp_clients_alike() {
    use herald_tests::mqtt::{Lib, MqttClient};
    let herald = herald().start().await;
    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    let t = with_claims("alpha", "alice", json!({"channels": ["news"]}));

    let mut native = herald.connect("alpha", &t).await;
    assert_eq!(native.subscribe(1, "news").await["type"], "ack");
    let mut mqtt = MqttClient::start(
        Lib::MqttJs,
        json!({"url": herald.url("alpha", ""), "username": "any", "version": 4,
               "password": t, "clientId": "alice-mqtt"}),
    )
    .await;
    assert_eq!(mqtt.expect("connect").await["code"], 0);
    mqtt.subscribe(json!({"news": 0, "user/alice": 0, "$broadcast": 0}))
        .await;
    let mut stomp = Stomp::connect(&herald, "alpha", "", bearer(&t)).await;
    stomp.next("connect").await;
    stomp.subscribe("/topic/alpha/news", "g", "auto").await;
    stomp.subscribe("/user/queue/inbox", "u", "auto").await;
    stomp.subscribe("/topic/alpha", "b", "auto").await;

    for (to, payload) in [
        (To::Group("news"), json!({"to": "the group"})),
        (To::User("alice"), json!({"to": "alice"})),
        (To::Broadcast, json!({"to": "all"})),
    ] {
        let r = send(&mut grpc, publish("alpha", to, &payload.to_string())).await;
        assert!(r.edges >= 1, "{r:?}");
        // The same JSON, framed three ways.
        assert_eq!(native.next_msg().await["data"], payload);
        let m = mqtt.message().await;
        assert_eq!(
            serde_json::from_str::<Value>(m["payload"].as_str().unwrap_or_default()).ok(),
            Some(payload.clone())
        );
        let m = stomp.next("message").await;
        assert_eq!(
            serde_json::from_str::<Value>(m["body"].as_str().unwrap_or_default()).ok(),
            Some(payload.clone())
        );
    }
    for protocol in ["native", "mqtt", "stomp"] {
        herald
            .wait_metric(
                &format!(r#"herald_edge_deliveries_total{{protocol="{protocol}"}}"#),
                3.0,
            )
            .await;
    }
}

#[tokio::test]
async fn stompjs_through_nginx_as_the_push_center_had_it() {
    use herald_tests::nginx::*;
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::root("test root");
    // Clients connect to 127.0.0.1 (no resolver for a test domain in Node).
    let (crt, key) = ca
        .server(&[DOMAIN, "127.0.0.1"], &rcgen::PKCS_ECDSA_P256_SHA256)
        .write(dir.path(), "nginx", &[]);
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("write ca");
    let herald = herald().start().await;
    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    let (tls_port, plain_port) = (free_port(), free_port());
    let conf = nginx_config(
        dir.path(),
        &NginxConf {
            tls_port,
            plain_port: Some(plain_port),
            cert: &crt,
            key: &key,
            edges: &[herald.ws],
        },
    );
    let nginx = Nginx::start(dir.path(), &conf, tls_port).await;

    let t = with_claims("alpha", "alice", json!({"channels": ["shanghai"]}));
    // The push center's own URL (seed 004: `/msg-center/websocket?token=..&projectId=..`), the
    // shipped `/herald/{project}` with the token in CONNECT, over wss and ws.
    let urls = [
        format!("wss://127.0.0.1:{tls_port}/msg-center/websocket?token={t}&projectId=alpha"),
        format!("wss://127.0.0.1:{tls_port}/herald/alpha"),
        format!("ws://127.0.0.1:{plain_port}/msg-center/websocket?projectId=alpha&token={t}"),
    ];
    let mut clients = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        let mut c = Stomp::start(json!({
            "url": url,
            "ca": ca_file,
            "connectHeaders": if i == 1 { json!({"Authorization": format!("Bearer {t}")}) } else { json!({}) },
        }))
        .await;
        assert_eq!(
            c.next("upgrade").await["protocol"],
            "v12.stomp",
            "{url}\nnginx: {}",
            nginx.error_log()
        );
        assert_eq!(c.next("connect").await["headers"]["user-name"], "alice");
        c.subscribe("/topic/alpha/shanghai", "g", "client-individual")
            .await;
        c.subscribe("/user/queue/notice", "u", "auto").await;
        c.subscribe("/topic/alpha", "b", "auto").await;
        clients.push(c);
    }
    send(
        &mut grpc,
        publish("alpha", To::Group("shanghai"), r#"{"city":"shanghai"}"#),
    )
    .await;
    send(&mut grpc, publish("alpha", To::User("alice"), "for alice")).await;
    send(&mut grpc, publish("alpha", To::Broadcast, "for all")).await;
    for c in &mut clients {
        let m = c.next("message").await;
        assert_eq!(
            (&m["subscription"], &m["body"]),
            (&json!("g"), &json!(r#"{"city":"shanghai"}"#))
        );
        c.send(json!({"ack": m["ack"]})).await;
        let m = c.next("message").await;
        assert_eq!(
            (&m["subscription"], &m["body"]),
            (&json!("u"), &json!("for alice"))
        );
        let m = c.next("message").await;
        assert_eq!(
            (&m["subscription"], &m["body"]),
            (&json!("b"), &json!("for all"))
        );
    }

    // Refusals come through nginx unchanged: a bad token, a project outside the alphabet (400
    // from nginx itself, before any upgrade).
    let mut refused = Stomp::start(json!({
        "url": format!("wss://127.0.0.1:{tls_port}/msg-center/websocket?projectId=alpha"),
        "ca": ca_file,
        "connectHeaders": {"passcode": "not.a.jwt"},
    }))
    .await;
    assert_eq!(refused.refused().await, ("invalid token".to_owned(), 4002));
    let mut bad = Stomp::start(json!({
        "url": format!("wss://127.0.0.1:{tls_port}/msg-center/websocket?projectId=../admin&token={t}"),
        "ca": ca_file,
    }))
    .await;
    let e = bad.next("ws_error").await;
    assert!(
        e["message"].as_str().is_some_and(|m| m.contains("400")),
        "{e}"
    );
    // The access log holds no token (nginx logs the path without its query).
    let log = std::fs::read_to_string(dir.path().join("access.log")).unwrap_or_default();
    assert!(log.contains("/msg-center/websocket"), "{log}");
    assert!(!log.contains(&t), "a token in nginx's access log");
}

/// A STOMP client resumes a recoverable group: its `MESSAGE` frames carry `offset` and `epoch`;
/// it leaves, messages are published, and a `SUBSCRIBE` with the last `offset` and `epoch` it
/// handled gets exactly the missed ones, in order, then the `RECEIPT` (with the stream's
/// position and `recovered`), then live ones. A lost epoch is told in the receipt; a destination
/// without history is refused.
#[tokio::test]
async fn stompjs_resumes_a_group_from_its_last_offset() {
    let herald = herald()
        .projects(&format!(
            "[[projects]]\nid = \"alpha\"\napi_keys = [\"{ALPHA_KEY}\"]\n\
             [[projects.keys]]\nalg = \"HS256\"\nsecret = \"{ALPHA_SECRET}\"\n\
             [projects.history]\ngroups = [\"news\"]\nusers = true\n"
        ))
        .start()
        .await;
    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    let t = with_claims("alpha", "sam", json!({"channels": ["news", "plain"]}));
    let mut c = Stomp::connect(&herald, "alpha", "", bearer(&t)).await;
    c.next("connect").await;
    c.subscribe("/topic/alpha/news", "g", "auto").await;
    for n in 1..=3 {
        send(
            &mut grpc,
            publish("alpha", To::Group("news"), &format!("n{n}")),
        )
        .await;
    }
    let mut last = json!(null);
    for n in 1..=3 {
        last = c.next("message").await;
        assert_eq!(last["body"], format!("n{n}"));
        assert_eq!(last["offset"], n.to_string(), "{last}");
    }
    let epoch = last["epoch"].as_str().expect("epoch").to_owned();
    drop(c);

    for n in 4..=8 {
        send(
            &mut grpc,
            publish("alpha", To::Group("news"), &format!("n{n}")),
        )
        .await;
    }
    let mut c = Stomp::connect(&herald, "alpha", "", bearer(&t)).await;
    c.next("connect").await;
    c.send(
        json!({"subscribe": {"destination": "/topic/alpha/news", "id": "g", "receipt": "r1",
                                "headers": {"offset": "3", "epoch": epoch}}}),
    )
    .await;
    let receipt = c.next("receipt").await;
    assert_eq!(receipt["id"], "r1");
    assert_eq!(
        (
            &receipt["headers"]["recovered"],
            &receipt["headers"]["offset"],
            &receipt["headers"]["epoch"]
        ),
        (&json!("true"), &json!("8"), &json!(epoch)),
        "{receipt}"
    );
    let replayed: Vec<Value> = c
        .seen
        .iter()
        .filter(|e| e["event"] == "message")
        .map(|m| m["body"].clone())
        .collect();
    assert_eq!(
        replayed,
        ["n4", "n5", "n6", "n7", "n8"],
        "the missed ones before the receipt, in order"
    );
    send(&mut grpc, publish("alpha", To::Group("news"), "n9")).await;
    let m = c.next("message").await;
    assert_eq!((&m["body"], &m["offset"]), (&json!("n9"), &json!("9")));

    // A lost epoch: nothing replayed, told in the receipt.
    let mut c = Stomp::connect(&herald, "alpha", "", bearer(&t)).await;
    c.next("connect").await;
    c.send(
        json!({"subscribe": {"destination": "/topic/alpha/news", "id": "g", "receipt": "r2",
                                "headers": {"offset": "3", "epoch": "1"}}}),
    )
    .await;
    let receipt = c.next("receipt").await;
    assert_eq!(
        (
            &receipt["headers"]["recovered"],
            &receipt["headers"]["epoch"]
        ),
        (&json!("false"), &json!(epoch)),
        "{receipt}"
    );
    assert!(!c.seen.iter().any(|e| e["event"] == "message"));

    // A destination without history: refused.
    let mut c = Stomp::connect(&herald, "alpha", "", bearer(&t)).await;
    c.next("connect").await;
    c.send(
        json!({"subscribe": {"destination": "/topic/alpha/plain", "id": "p",
                                "headers": {"offset": "0", "epoch": "1"}}}),
    )
    .await;
    let (message, code) = c.refused().await;
    assert!(message.contains("keeps no history"), "{message}");
    assert_eq!(code, 4003);
}

/// `ACK`s of messages in flight answer the server's own traffic: a client-individual subscriber
/// acknowledging 300 messages at once (beyond `message_rate` 50/s and its burst of 200) is not
/// closed 4029.
#[tokio::test]
async fn acknowledgements_do_not_count_against_the_frame_rate() {
    let herald = herald().start().await;
    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    let mut c = Stomp::connect(&herald, "alpha", "", bearer(&token("alpha", "acker"))).await;
    c.next("connect").await;
    c.subscribe("/user/queue/jobs", "s", "client-individual")
        .await;
    for i in 0..300 {
        send(
            &mut grpc,
            publish("alpha", To::User("acker"), &i.to_string()),
        )
        .await;
    }
    for i in 0..300 {
        let m = c.next("message").await;
        assert_eq!(m["body"], i.to_string());
        c.send(json!({"ack": m["ack"]})).await;
    }
    c.subscribe("/topic/alpha", "b", "auto").await;
    send(&mut grpc, publish("alpha", To::Broadcast, "still here")).await;
    assert_eq!(c.next("message").await["body"], "still here");
    assert_eq!(
        herald
            .metric(r#"herald_edge_closes_total{code="rate_limited",protocol="stomp"}"#)
            .await,
        0.0
    );
}
