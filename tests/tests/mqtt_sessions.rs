//! MQTT sessions across reconnects, with mqtt.js 5 and Paho through the real binary: a client
//! whose network drops (the edge still holding its connection) reconnects by itself with the same
//! client id and gets its unacknowledged QoS 1 messages again with DUP; a takeover replaces the
//! connection it takes over under a per-user cap of one, while a second client id stays refused.

use herald_tests::mqtt::{Lib, MqttClient};
use herald_tests::relay::Relay;
use herald_tests::*;
use serde_json::{Value, json};

fn mqtt_token(sub: &str, channels: &[&str]) -> String {
    hs256(
        ALPHA_SECRET,
        None,
        &json!({"sub": sub, "aud": "alpha", "exp": jsonwebtoken::get_current_timestamp() + 600,
                "channels": channels}),
    )
}

/// The network of a phone drops: the client notices (its socket closes), the edge does not (the
/// connection stays open on its side, and the QoS 1 message published meanwhile goes into the
/// void). The client reconnects by itself with the same client id, takes its session over on the
/// same edge and gets both unacknowledged messages again with DUP (the first under its packet
/// id) before new ones.
#[tokio::test]
async fn a_client_that_lost_its_network_reconnects_and_gets_unacknowledged_messages_with_dup() {
    let herald = herald().start().await;
    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    let cases = [
        (Lib::MqttJs, 5),
        (Lib::MqttJs, 4),
        (Lib::Paho, 4),
        (Lib::Paho, 5),
    ];
    for (i, (lib, version)) in cases.into_iter().enumerate() {
        let relay = Relay::start(herald.ws).await;
        let id = format!("roamer-{i}");
        let mut c = MqttClient::start(
            lib,
            json!({"url": format!("ws://{}/mqtt/alpha", relay.addr), "version": version,
                   "clientId": id, "username": "alpha", "clean": false, "noAck": true,
                   "reconnectPeriod": 500, "reconnect": true,
                   "password": mqtt_token(&id, &["news"])}),
        )
        .await;
        assert_eq!(c.expect("connect").await["sessionPresent"], false);
        assert_eq!(c.subscribe(json!({"news": 1})).await["codes"], json!([1]));
        send(&mut grpc, publish("alpha", To::Group("news"), "m1")).await;
        let m1 = c.message().await;
        assert_eq!((&m1["payload"], &m1["dup"]), (&json!("m1"), &json!(false)));

        relay.lose();
        c.expect("close").await;
        send(&mut grpc, publish("alpha", To::Group("news"), "m2")).await;
        // The edge wrote m2 to the connection it still holds.
        eventually(WAIT, async || match relay.lost_bytes() {
            0 => Err("m2 not sent yet"),
            _ => Ok(()),
        })
        .await;
        relay.restore();

        let connack = c.expect("connect").await;
        assert_eq!(
            connack["sessionPresent"], true,
            "{lib:?} v{version}: {connack}"
        );
        // The subscription came with the session: m3 is new, after everything sent again.
        send(&mut grpc, publish("alpha", To::Group("news"), "m3")).await;
        while c.message().await["payload"] != "m3" {}
        // Every message since the connection was lost (mqtt.js may report resent ones before
        // the CONNACK).
        let since: Vec<&Value> = {
            let mut v: Vec<&Value> = c
                .seen
                .iter()
                .rev()
                .take_while(|e| e["event"] != "close")
                .filter(|e| e["event"] == "message")
                .collect();
            v.reverse();
            v
        };
        let (m3, resent) = since.split_last().expect("m3");
        assert_eq!(m3["dup"], false, "{lib:?} v{version}: {m3}");
        let payloads: Vec<&Value> = resent.iter().map(|m| &m["payload"]).collect();
        assert_eq!(payloads, [&json!("m1"), &json!("m2")], "{lib:?} v{version}");
        assert_eq!(
            resent[0]["messageId"], m1["messageId"],
            "{lib:?} v{version}"
        );
        assert!(
            resent.iter().all(|m| m["dup"] == true),
            "{lib:?} v{version}: sent again with DUP: {resent:?}"
        );
        c.end().await;
        herald
            .wait_metric(
                r#"herald_edge_mqtt_takeovers_total{resumed="true"}"#,
                (i + 1) as f64,
            )
            .await;
    }
    herald
        .wait_metric(r#"herald_edge_connections{protocol="mqtt"}"#, 0.0)
        .await;
}

/// With `max_connections_per_user = 1`, a reconnect with the same client id replaces the
/// connection it takes over (it used to be refused with 4011 while the older one still counted);
/// a second client id of the same user is still refused.
#[tokio::test]
async fn a_takeover_replaces_the_connection_under_a_per_user_cap_of_one() {
    let herald = herald()
        .projects(&format!(
            "[[projects]]\nid = \"alpha\"\napi_keys = [\"{ALPHA_KEY}\"]\n\
             [[projects.keys]]\nalg = \"HS256\"\nsecret = \"{ALPHA_SECRET}\"\n\
             [projects.limits]\nmax_connections_per_user = 1\n"
        ))
        .start()
        .await;
    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    // (library, version, CONNACK code of the refused second device as the library reports it)
    let cases = [
        (Lib::MqttJs, 5, 0x97),
        (Lib::MqttJs, 4, 3),
        // Paho reports 3.1.1's return code 3 (server unavailable) as reason 0x88.
        (Lib::Paho, 4, 0x88),
        (Lib::Paho, 5, 0x97),
    ];
    for (i, (lib, version, refused)) in cases.into_iter().enumerate() {
        let user = format!("u{i}");
        let url = format!("ws://{}/mqtt/alpha", herald.ws);
        let opts = |client_id: &str| {
            json!({"url": url, "version": version, "clientId": client_id, "username": "alpha",
                   "clean": false, "password": mqtt_token(&user, &["news"])})
        };
        let mut first = MqttClient::start(lib, opts("phone")).await;
        assert_eq!(first.expect("connect").await["code"], 0);
        assert_eq!(
            first.subscribe(json!({"news": 1})).await["codes"],
            json!([1])
        );

        let mut second = MqttClient::start(lib, opts("phone")).await;
        let connack = second.expect("connect").await;
        assert_eq!(
            (&connack["code"], &connack["sessionPresent"]),
            (&json!(0), &json!(true)),
            "{lib:?} v{version}: the takeover under the cap: {connack}"
        );
        match lib {
            Lib::MqttJs => assert_eq!(first.expect("ws_close").await["code"], 4012),
            Lib::Paho => {
                first.expect("disconnect").await;
            }
        }

        // A second device of the same user: refused, and the takeover's connection stays.
        let mut other = MqttClient::start(lib, opts("tablet")).await;
        match lib {
            Lib::MqttJs => {
                let err = other.expect("error").await;
                assert_eq!(err["code"], refused, "{lib:?} v{version}: {err}");
                assert_eq!(other.expect("ws_close").await["code"], 4011);
            }
            Lib::Paho => {
                let connack = other.expect("connect").await;
                assert_eq!(connack["code"], refused, "{lib:?} v{version}: {connack}");
            }
        }
        send(&mut grpc, publish("alpha", To::Group("news"), &user)).await;
        let m = second.message().await;
        assert_eq!((&m["topic"], &m["payload"]), (&json!("news"), &json!(user)));
        second.end().await;
        herald
            .wait_metric(r#"herald_edge_connections{protocol="mqtt"}"#, 0.0)
            .await;
    }
    herald
        .wait_metric(
            r#"herald_edge_connects_total{result="too_many_connections",protocol="mqtt"}"#,
            4.0,
        )
        .await;
}

/// `alpha` keeping the history of `news` and of its users' own streams.
fn with_history() -> String {
    format!(
        "[[projects]]\nid = \"alpha\"\napi_keys = [\"{ALPHA_KEY}\"]\n\
         [[projects.keys]]\nalg = \"HS256\"\nsecret = \"{ALPHA_SECRET}\"\n\
         [projects.history]\ngroups = [\"news\"]\nusers = true\n"
    )
}

/// Messages received until the one with `payload` `last` on `topic`; their payloads by topic.
async fn until(c: &mut MqttClient, topic: &str, last: &str) -> Vec<(String, String, bool)> {
    let mut got = Vec::new();
    loop {
        let m = c.message().await;
        let entry = (
            m["topic"].as_str().unwrap_or_default().to_owned(),
            m["payload"].as_str().unwrap_or_default().to_owned(),
            m["qos"] == 1,
        );
        let done = entry.0 == topic && entry.1 == last;
        got.push(entry);
        if done {
            return got;
        }
    }
}

/// Every message the client reported: topic, payload, whether at QoS 1.
fn seen_messages(c: &MqttClient) -> Vec<(String, String, bool)> {
    c.seen
        .iter()
        .filter(|e| e["event"] == "message")
        .map(|m| {
            (
                m["topic"].as_str().unwrap_or_default().to_owned(),
                m["payload"].as_str().unwrap_or_default().to_owned(),
                m["qos"] == 1,
            )
        })
        .collect()
}

fn on(got: &[(String, String, bool)], topic: &str) -> Vec<String> {
    got.iter()
        .filter(|(t, _, _)| t == topic)
        .map(|(_, p, _)| p.clone())
        .collect()
}

/// A persistent session (3.1.1 `clean` false, 5.0 Session Expiry > 0) subscribed to a
/// recoverable group and its user stream at QoS 1: the client leaves, N messages are published,
/// it comes back and gets exactly those N, in order, as QoS 1, from history, then live ones;
/// what it had acknowledged before leaving is not sent again. A clean start forgets the session.
#[tokio::test]
async fn a_persistent_session_gets_what_it_missed_from_history() {
    let herald = herald().projects(&with_history()).start().await;
    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    let cases = [
        (Lib::MqttJs, 4, json!(null)),
        (Lib::MqttJs, 5, json!({"sessionExpiryInterval": 600})),
    ];
    for (i, (lib, version, properties)) in cases.into_iter().enumerate() {
        let user = format!("pu{i}");
        let mine = format!("user/{user}");
        let url = format!("ws://{}/mqtt/alpha", herald.ws);
        let opts = |clean: bool| {
            json!({"url": url, "version": version, "clientId": format!("keeper-{i}"),
                   "username": "alpha", "clean": clean, "properties": properties,
                   "password": mqtt_token(&user, &["news"])})
        };
        let mut c = MqttClient::start(lib, opts(false)).await;
        let connack = c.expect("connect").await;
        assert_eq!(connack["sessionPresent"], false, "v{version}: {connack}");
        if version == 5 {
            assert_eq!(
                connack["properties"]["sessionExpiryInterval"], 600,
                "v{version}: the session is kept as asked: {connack}"
            );
        }
        assert_eq!(
            c.subscribe(json!({"news": 1, mine.clone(): 1})).await["codes"],
            json!([1, 1])
        );
        // Received and acknowledged: not sent again.
        send(&mut grpc, publish("alpha", To::Group("news"), "seen")).await;
        assert_eq!(c.message().await["payload"], "seen");
        c.end().await;

        // Away: 5 on the group, 3 to the user.
        for n in 1..=5 {
            send(
                &mut grpc,
                publish("alpha", To::Group("news"), &format!("n{n}")),
            )
            .await;
        }
        for n in 1..=3 {
            send(
                &mut grpc,
                publish("alpha", To::User(&user), &format!("u{n}")),
            )
            .await;
        }

        let mut c = MqttClient::start(lib, opts(false)).await;
        let connack = c.expect("connect").await;
        assert_eq!(connack["sessionPresent"], true, "v{version}: {connack}");
        // The subscriptions came with the session: a live message after the missed ones.
        send(&mut grpc, publish("alpha", To::Group("news"), "live")).await;
        until(&mut c, "news", "live").await;
        if !seen_messages(&c)
            .iter()
            .any(|(t, p, _)| *t == mine && p == "u3")
        {
            until(&mut c, &mine, "u3").await;
        }
        // mqtt.js may report messages that came right behind the CONNACK before it.
        let got = seen_messages(&c);
        assert_eq!(
            on(&got, "news"),
            ["n1", "n2", "n3", "n4", "n5", "live"],
            "v{version}: exactly the missed ones, in order, then live: {got:?}"
        );
        assert_eq!(on(&got, &mine), ["u1", "u2", "u3"], "v{version}: {got:?}");
        assert!(got.iter().all(|(_, _, qos1)| *qos1), "QoS 1: {got:?}");
        c.end().await;

        // A clean start forgets it: nothing present, nothing replayed.
        let mut c = MqttClient::start(lib, opts(true)).await;
        assert_eq!(c.expect("connect").await["sessionPresent"], false);
        c.end().await;
        let mut c = MqttClient::start(lib, opts(false)).await;
        assert_eq!(
            c.expect("connect").await["sessionPresent"],
            false,
            "v{version}: cleared by the clean start"
        );
        c.end().await;
    }
    herald
        .wait_metric("herald_edge_mqtt_sessions_resumed_total", 2.0)
        .await;
}

/// A persistent session far behind, through a small queue: the replay is paced by what the
/// client acknowledges (its QoS 1 window) as well as by the queue, never closed as a slow
/// consumer for it.
#[tokio::test]
async fn a_replay_far_beyond_the_queue_and_the_window_is_paced_not_cut() {
    let herald = herald()
        .projects(&with_history())
        .edge("max_queued_bytes", 16 * 1024)
        .start()
        .await;
    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    let url = format!("ws://{}/mqtt/alpha", herald.ws);
    let opts = json!({"url": url, "version": 4, "clientId": "behind", "username": "alpha",
                      "clean": false, "password": mqtt_token("far", &["news"])});
    let mut c = MqttClient::start(Lib::MqttJs, opts.clone()).await;
    c.expect("connect").await;
    assert_eq!(c.subscribe(json!({"news": 1})).await["codes"], json!([1]));
    c.end().await;
    // About 150 KB to replay through a 16 KiB queue and a window of 32.
    let pad = "x".repeat(300);
    for n in 1..=500 {
        send(
            &mut grpc,
            publish("alpha", To::Group("news"), &format!("{n} {pad}")),
        )
        .await;
    }
    let mut c = MqttClient::start(Lib::MqttJs, opts).await;
    c.expect("connect").await;
    let number = |m: &Value| -> u64 {
        m["payload"]
            .as_str()
            .and_then(|p| p.split(' ').next())
            .and_then(|n| n.parse().ok())
            .expect("numbered")
    };
    // mqtt.js may report messages that came right behind the CONNACK before it.
    let mut got: Vec<u64> = c
        .seen
        .iter()
        .filter(|e| e["event"] == "message")
        .map(number)
        .collect();
    while got.len() < 500 {
        got.push(number(&c.message().await));
    }
    assert_eq!(got, (1..=500).collect::<Vec<_>>());
    assert_eq!(herald.metric("herald_edge_slow_consumers_total").await, 0.0);
    c.end().await;
}
