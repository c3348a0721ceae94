//! MQTT over WebSocket with the clients people use (mqtt.js 5, Paho for Python) through the real
//! binary: the three targets published over gRPC, auth refusals, subscription refusals, client
//! publishes refused, the session taken over by client id with QoS 1 redelivery, and malformed
//! input from a raw WebSocket client.

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use herald_tests::mqtt::{Lib, MqttClient};
use herald_tests::*;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

fn mqtt_token(sub: &str, channels: &[&str]) -> String {
    hs256(
        ALPHA_SECRET,
        None,
        &json!({"sub": sub, "aud": "alpha", "exp": jsonwebtoken::get_current_timestamp() + 600,
                "channels": channels}),
    )
}

fn ws_url(herald: &Herald, path: &str) -> String {
    format!("ws://{}{path}", herald.ws)
}

#[tokio::test]
async fn mqttjs_and_paho_receive_group_user_and_broadcast_messages() {
    let herald = herald().start().await;
    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    // (library, protocol level, path, user name, offers a sub-protocol)
    let cases = [
        (Lib::MqttJs, 4, "/mqtt", Some("alpha"), true),
        // mqtt.js sends no password without a user name: any name will do on a project's path.
        (Lib::MqttJs, 5, "/mqtt/alpha", Some("any"), true),
        (Lib::MqttJs, 4, "/ws/alpha", Some("any"), true),
        // Like a WeChat mini program: no Sec-WebSocket-Protocol, and none may come back.
        (Lib::MqttJs, 4, "/mqtt", Some("alpha"), false),
        (Lib::Paho, 4, "/mqtt", Some("alpha"), true),
        (Lib::Paho, 5, "/mqtt/alpha", Some("any"), true),
    ];
    let mut clients = Vec::new();
    for (i, (lib, version, path, username, subprotocol)) in cases.into_iter().enumerate() {
        let user = format!("u{i}");
        let mut c = MqttClient::start(
            lib,
            json!({"url": ws_url(&herald, path), "username": username, "version": version,
                   "password": mqtt_token(&user, &["news"]), "clientId": format!("c{i}"),
                   "subprotocol": subprotocol}),
        )
        .await;
        let connack = c.expect("connect").await;
        assert_eq!(connack["code"], 0, "{i}: {connack}");
        assert_eq!(connack["sessionPresent"], false);
        let topics = json!({"news": 1, format!("user/{user}"): 2, "$broadcast": 0});
        // Granted in the order the topics are sent (the map's own order): QoS 2 as 1.
        let granted: Vec<u8> = topics
            .as_object()
            .map(|o| o.values().map(|q| if q == 0 { 0 } else { 1 }).collect())
            .unwrap_or_default();
        let suback = c.subscribe(topics).await;
        assert_eq!(
            suback["codes"],
            json!(granted),
            "{i}: QoS 2 is granted as 1"
        );
        clients.push((user, c));
    }
    let mut upgrades = Vec::new();
    for (_, c) in &clients {
        upgrades.push(
            c.seen
                .iter()
                .find(|e| e["event"] == "upgrade")
                .map(|e| e["protocol"].clone()),
        );
    }
    // mqtt.js reports the answered sub-protocol: echoed when offered, absent otherwise.
    assert_eq!(upgrades[0], Some(json!("mqtt")));
    assert_eq!(upgrades[3], Some(Value::Null));

    send(&mut grpc, publish("alpha", To::Group("news"), r#"{"n":1}"#)).await;
    send(&mut grpc, publish("alpha", To::Broadcast, "to all")).await;
    for (user, _) in &clients {
        let payload = format!("for {user}");
        send(&mut grpc, publish("alpha", To::User(user), &payload)).await;
    }
    for (i, (user, c)) in clients.iter_mut().enumerate() {
        let m = c.message().await;
        assert_eq!(
            (&m["topic"], &m["payload"], &m["qos"], &m["retain"]),
            (
                &json!("news"),
                &json!(r#"{"n":1}"#),
                &json!(1),
                &json!(false)
            ),
            "{i}"
        );
        let m = c.message().await;
        assert_eq!(
            (&m["topic"], &m["payload"], &m["qos"]),
            (&json!("$broadcast"), &json!("to all"), &json!(0)),
            "{i}"
        );
        let m = c.message().await;
        assert_eq!(m["topic"], format!("user/{user}"), "{i}");
        assert_eq!(m["payload"], format!("for {user}"));
        assert_eq!(m["qos"], 1);
    }
    herald
        .wait_metric(
            r#"herald_edge_connects_total{result="ok",protocol="mqtt"}"#,
            6.0,
        )
        .await;
    herald
        .wait_metric(r#"herald_edge_connections{protocol="mqtt"}"#, 6.0)
        .await;
    herald
        .wait_metric(r#"herald_edge_deliveries_total{protocol="mqtt"}"#, 18.0)
        .await;
    for (_, c) in clients {
        c.end().await;
    }
    herald
        .wait_metric(r#"herald_edge_connections{protocol="mqtt"}"#, 0.0)
        .await;
}

#[tokio::test]
async fn refused_connects_get_their_connack_code_then_the_close_code() {
    let herald = herald().start().await;
    let expired = hs256(
        ALPHA_SECRET,
        None,
        &json!({"sub": "x", "aud": "alpha", "exp": jsonwebtoken::get_current_timestamp() - 60}),
    );
    // (user name, password, 3.1.1 return code, 5.0 reason code, close code)
    let cases = [
        (Some("alpha"), None, 4, 0x86, 4001),
        (Some("alpha"), Some("not-a-jwt".to_string()), 4, 0x86, 4002),
        (Some("alpha"), Some(expired), 4, 0x86, 4005),
        (Some("alpha"), Some(token("beta", "x")), 4, 0x86, 4002),
        (Some("nope"), Some(mqtt_token("x", &[])), 4, 0x86, 4004),
    ];
    for (i, (username, password, v3, v5, close)) in cases.into_iter().enumerate() {
        for (version, want) in [(4, v3), (5, v5)] {
            let mut c = MqttClient::start(
                Lib::MqttJs,
                json!({"url": ws_url(&herald, "/mqtt"), "username": username,
                       "password": password, "version": version}),
            )
            .await;
            let err = c.expect("error").await;
            assert_eq!(err["code"], want, "{i} v{version}: {err}");
            let closed = c.expect("ws_close").await;
            assert_eq!(closed["code"], close, "{i} v{version}: {:#?}", c.seen);
        }
    }
    // A token of another project whose key verifies (same secret) is refused by its `aud`.
    let other = hs256(
        ALPHA_SECRET,
        None,
        &json!({"sub": "x", "aud": "beta", "exp": jsonwebtoken::get_current_timestamp() + 60}),
    );
    for (version, want) in [(4, 5), (5, 0x87)] {
        let mut c = MqttClient::start(
            Lib::Paho,
            json!({"url": ws_url(&herald, "/mqtt/alpha"), "username": "alpha", "password": other,
                   "version": version}),
        )
        .await;
        let connack = c.expect("connect").await;
        // Paho reports 3.1.1's return code 5 as reason 0x87 too.
        assert_eq!(connack["code"], 0x87, "v{version} ({want}): {connack}");
    }
    herald
        .wait_metric(
            r#"herald_edge_connects_total{result="invalid_token",protocol="mqtt"}"#,
            4.0,
        )
        .await;
}

#[tokio::test]
async fn subscriptions_outside_the_token_wildcards_and_shared_are_refused() {
    let herald = herald().start().await;
    for (version, lib) in [(4, Lib::MqttJs), (5, Lib::MqttJs), (5, Lib::Paho)] {
        let mut c = MqttClient::start(
            lib,
            json!({"url": ws_url(&herald, "/mqtt/alpha"), "version": version, "username": "alpha",
                   "password": mqtt_token("alice", &["sport/*"])}),
        )
        .await;
        c.expect("connect").await;
        // (filter, 5.0 reason)
        let cases = [
            ("sport/#", 0xA2, "Wildcard"),
            ("sport/+/x", 0xA2, "Wildcard"),
            ("$share/g/sport/f1", 0x9E, "Shared"),
            ("user/bob", 0x87, "Not authorized"),
            ("weather", 0x87, "Not authorized"),
            ("sport//x", 0x8F, "Topic"),
        ];
        for (filter, reason, text) in cases {
            let s = c.subscribe(json!({ filter: 1 })).await;
            match lib {
                Lib::Paho => assert_eq!(s["codes"], json!([reason]), "{filter}"),
                Lib::MqttJs if version == 5 => {
                    assert!(
                        s["error"].as_str().is_some_and(|e| e.contains(text)),
                        "{filter}: {s}"
                    )
                }
                Lib::MqttJs => assert!(s["error"].is_string(), "{filter}: 0x80 in 3.1.1: {s}"),
            }
        }
        let s = c.subscribe(json!({"sport/f1": 0, "user/alice": 1})).await;
        assert_eq!(s["codes"], json!([0, 1]), "v{version}");
    }
    herald
        .wait_metric(
            r#"herald_edge_mqtt_subscribes_refused_total{reason="wildcard"}"#,
            6.0,
        )
        .await;
}

#[tokio::test]
async fn client_publishes_are_refused() {
    let herald = herald().start().await;
    let url = ws_url(&herald, "/mqtt/alpha");
    // 5.0 QoS 1: PUBACK 0x87, the connection stays.
    let mut c = MqttClient::start(
        Lib::MqttJs,
        json!({"url": url, "version": 5, "username": "alpha", "password": mqtt_token("a", &[])}),
    )
    .await;
    c.expect("connect").await;
    c.send(json!({"publish": {"topic": "news", "payload": "x", "qos": 1}}))
        .await;
    assert_eq!(c.expect("puback").await["code"], 0x87);
    assert_eq!(
        c.subscribe(json!({"$broadcast": 0})).await["codes"],
        json!([0])
    );
    // 3.1.1: no way to refuse but closing: 4013.
    let mut c = MqttClient::start(
        Lib::MqttJs,
        json!({"url": url, "version": 4, "username": "alpha", "password": mqtt_token("a", &[])}),
    )
    .await;
    c.expect("connect").await;
    c.send(json!({"publish": {"topic": "news", "payload": "x", "qos": 0}}))
        .await;
    assert_eq!(c.expect("ws_close").await["code"], 4013);
}

/// A first client receives QoS 1 messages and never acknowledges them; a second with the same
/// client id takes the session over: the first is closed (4012, 5.0 DISCONNECT 0x8E) and the
/// second gets them again with DUP and their packet identifiers, then new ones without
/// subscribing again.
#[tokio::test]
async fn a_takeover_resends_unacknowledged_messages_with_dup() {
    let herald = herald().start().await;
    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    for (lib, version, id) in [(Lib::MqttJs, 5, "phone-1"), (Lib::Paho, 4, "phone-2")] {
        let opts = |no_ack: bool| {
            json!({"url": ws_url(&herald, "/mqtt/alpha"), "version": version, "clientId": id,
                   "username": "alpha",
                   "clean": false, "noAck": no_ack, "password": mqtt_token(id, &["news"])})
        };
        let mut first = MqttClient::start(lib, opts(true)).await;
        first.expect("connect").await;
        assert_eq!(
            first.subscribe(json!({"news": 1})).await["codes"],
            json!([1])
        );
        for n in 1..=2 {
            send(
                &mut grpc,
                publish("alpha", To::Group("news"), &format!("m{n}")),
            )
            .await;
        }
        let mut ids = Vec::new();
        for n in 1..=2 {
            let m = first.message().await;
            assert_eq!(m["payload"], format!("m{n}"));
            assert_eq!(m["dup"], false);
            ids.push(m["messageId"].clone());
        }

        let mut second = MqttClient::start(lib, opts(false)).await;
        let connack = second.expect("connect").await;
        assert_eq!(connack["sessionPresent"], true, "{lib:?}: {connack}");
        // mqtt.js may report the resent messages before its `connect` event.
        let mut resent: Vec<Value> = second
            .seen
            .iter()
            .filter(|e| e["event"] == "message")
            .cloned()
            .collect();
        while resent.len() < ids.len() {
            resent.push(second.message().await);
        }
        for (n, (id, m)) in ids.iter().zip(&resent).enumerate() {
            assert_eq!(m["payload"], format!("m{}", n + 1), "{lib:?}");
            assert_eq!(m["dup"], true, "{lib:?}: {m}");
            assert_eq!(&m["messageId"], id);
        }
        if lib == Lib::Paho {
            // Paho shows neither the WebSocket close code nor a 3.1.1 reason: the connection ends.
            first.expect("close").await;
        } else {
            let closed = first.expect("ws_close").await;
            assert_eq!(closed["code"], 4012, "{lib:?}: {:#?}", first.seen);
            assert!(
                first
                    .seen
                    .iter()
                    .any(|e| e["event"] == "disconnect" && e["code"] == 0x8E)
            );
        }
        // The session's subscription moved with it.
        send(&mut grpc, publish("alpha", To::Group("news"), "m3")).await;
        let m = second.message().await;
        assert_eq!((&m["payload"], &m["dup"]), (&json!("m3"), &json!(false)));
        second.end().await;
    }
    herald
        .wait_metric(r#"herald_edge_mqtt_takeovers_total{resumed="true"}"#, 2.0)
        .await;
    // A clean start takes over the connection but not its session.
    let opts = |clean: bool| {
        json!({"url": ws_url(&herald, "/mqtt/alpha"), "version": 4, "clientId": "tablet",
               "username": "alpha",
               "clean": clean, "password": mqtt_token("t", &["news"])})
    };
    let mut first = MqttClient::start(Lib::MqttJs, opts(false)).await;
    first.expect("connect").await;
    first.subscribe(json!({"news": 1})).await;
    let mut second = MqttClient::start(Lib::MqttJs, opts(true)).await;
    assert_eq!(second.expect("connect").await["sessionPresent"], false);
    assert_eq!(first.expect("ws_close").await["code"], 4012);
    let r = send(&mut grpc, publish("alpha", To::Group("news"), "m4")).await;
    assert_eq!(
        r.resolution(),
        herald_core::proto::v1::Resolution::NoRecipients
    );
}

/// An MQTT packet: `first` byte, remaining length, `body`.
fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut n = body.len();
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

fn string(s: &[u8]) -> Vec<u8> {
    let mut out = (s.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(s);
    out
}

/// A CONNECT of `level` (4 or 5) with the token as password and `keep_alive` seconds.
fn connect(level: u8, token: &str, keep_alive: u16) -> Vec<u8> {
    let mut body = string(b"MQTT");
    body.extend([level, 0x02 | 0x80 | 0x40]);
    body.extend(keep_alive.to_be_bytes());
    if level == 5 {
        body.push(0);
    }
    body.extend(string(b"raw"));
    body.extend(string(b"alpha"));
    body.extend(string(token.as_bytes()));
    packet(0x10, &body)
}

/// A raw WebSocket client on `/mqtt/alpha` offering `mqtt`.
async fn raw(herald: &Herald) -> Client {
    let (ws, resp) = herald
        .open(
            &ws_url(herald, "/mqtt/alpha"),
            &[("sec-websocket-protocol", "mqtt")],
        )
        .await
        .expect("upgrade");
    assert_eq!(resp.headers()["sec-websocket-protocol"], "mqtt");
    Client { ws }
}

async fn send_bin(c: &mut Client, b: Vec<u8>) {
    c.ws.send(Message::Binary(b.into())).await.expect("send");
}

/// The binary frames received until the close, and the close code.
async fn until_close(c: &mut Client) -> (Vec<Vec<u8>>, Option<u16>) {
    let mut got = Vec::new();
    let r = tokio::time::timeout(WAIT, async {
        while let Some(m) = c.ws.next().await {
            match m {
                Ok(Message::Binary(b)) => got.push(b.to_vec()),
                Ok(Message::Close(f)) => return f.map(|f| u16::from(f.code)),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    })
    .await
    .expect("closed in time");
    (got, r)
}

async fn next_bin(c: &mut Client) -> Vec<u8> {
    loop {
        match tokio::time::timeout(WAIT, c.ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => return b.to_vec(),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            other => panic!("expected a binary frame: {other:?}"),
        }
    }
}

#[tokio::test]
async fn malformed_input_closes_with_clear_codes() {
    let herald = herald().start().await;
    let tok = mqtt_token("raw", &["news"]);

    // Not CONNECT first: the close alone (no CONNACK may answer it).
    let mut c = raw(&herald).await;
    send_bin(&mut c, vec![0xc0, 0]).await;
    assert_eq!(until_close(&mut c).await, (vec![], Some(1002)));

    // A protocol level Herald does not speak: CONNACK return code 1.
    let mut c = raw(&herald).await;
    send_bin(&mut c, connect(6, &tok, 60)).await;
    assert_eq!(
        until_close(&mut c).await,
        (vec![vec![0x20, 2, 0, 1]], Some(1002))
    );

    // (after a 5.0 CONNECT: bytes, the DISCONNECT reason, the close code)
    let mut bad_utf8 = 1u16.to_be_bytes().to_vec();
    bad_utf8.push(0);
    bad_utf8.extend(string(b"\xff\xfe"));
    bad_utf8.push(1);
    let cases: Vec<(Vec<u8>, u8, u16)> = vec![
        (vec![0x30, 0xff, 0xff, 0xff, 0xff, 0x01], 0x81, 1002),
        (packet(0x82, &bad_utf8), 0x81, 1002),
        (packet(0x82, &[0, 1, 0, 0, 0, 1]), 0x82, 1002),
        (packet(0x82, &[0, 1, 0]), 0x82, 1002),
        (packet(0x80, &[0, 1, 0, 0, 1, b'a', 0]), 0x81, 1002),
        (packet(0x82, &[0, 1]), 0x81, 1002),
        (connect(5, &tok, 60), 0x82, 1002),
        (vec![0x30, 0x80, 0x80, 0x10], 0x95, 1009),
    ];
    for (i, (bytes, reason, close)) in cases.into_iter().enumerate() {
        let mut c = raw(&herald).await;
        send_bin(&mut c, connect(5, &tok, 60)).await;
        let ack = next_bin(&mut c).await;
        assert_eq!((ack[0], ack[2], ack[3]), (0x20, 0, 0), "CONNACK success");
        send_bin(&mut c, bytes).await;
        let (got, code) = until_close(&mut c).await;
        let disconnect = got.last().cloned().unwrap_or_default();
        assert_eq!(disconnect.first(), Some(&0xe0), "{i}: {got:02x?}");
        assert_eq!(disconnect.get(2), Some(&reason), "{i}: {got:02x?}");
        assert_eq!(code, Some(close), "{i}");
    }

    // A text frame.
    let mut c = raw(&herald).await;
    send_bin(&mut c, connect(4, &tok, 60)).await;
    assert_eq!(next_bin(&mut c).await, [0x20, 2, 0, 0]);
    c.ws.send(Message::Text("hello".into()))
        .await
        .expect("send");
    assert_eq!(until_close(&mut c).await.1, Some(1002));

    herald
        .wait_metric(
            r#"herald_edge_mqtt_malformed_total{reason="remaining_length"}"#,
            1.0,
        )
        .await;
    herald
        .wait_metric(
            r#"herald_edge_mqtt_malformed_total{reason="not_connect_first"}"#,
            1.0,
        )
        .await;
}

#[tokio::test]
async fn keep_alive_pings_are_answered_and_silence_closes() {
    let herald = herald().start().await;
    let tok = mqtt_token("raw", &[]);
    let mut c = raw(&herald).await;
    // A CONNECT split over three WebSocket messages, as mqtt.js under Node sends it.
    let mut bytes = connect(4, &tok, 2);
    let tail = bytes.split_off(7);
    let mid = bytes.split_off(1);
    for part in [bytes, mid, tail] {
        send_bin(&mut c, part).await;
    }
    assert_eq!(next_bin(&mut c).await, [0x20, 2, 0, 0]);
    send_bin(&mut c, vec![0xc0, 0]).await;
    assert_eq!(next_bin(&mut c).await, [0xd0, 0]);
    // Then silence: closed after 1.5 times the keep alive (3 s), within the hub's tick.
    let started = tokio::time::Instant::now();
    assert_eq!(until_close(&mut c).await.1, Some(4006));
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}
