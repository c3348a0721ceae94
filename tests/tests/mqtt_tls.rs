//! MQTT over `wss` with mqtt.js 5 and Paho: on the edge's own TLS listener, and through nginx
//! in front (the shipped deploy/nginx/herald.conf, its `/mqtt` location) over `wss` and `ws`,
//! including a WeChat-like client that offers no `Sec-WebSocket-Protocol` through a stock nginx.
//! Every client receives a group, a user and a broadcast message published over gRPC.

use herald_tests::mqtt::{Lib, MqttClient};
use herald_tests::nginx::*;
use herald_tests::tls::*;
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

#[tokio::test]
async fn mqttjs_and_paho_over_wss_and_through_nginx() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::root("test root");
    // Clients connect to 127.0.0.1 (no resolver for a test domain in Node or Python).
    let (crt, key) = ca
        .server(&[DOMAIN, "127.0.0.1"], &rcgen::PKCS_ECDSA_P256_SHA256)
        .write(dir.path(), "site", &[]);
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("write ca");

    // The edge: a plain listener for nginx (trusting its forwarded headers) and a wss one.
    let mut behind = toml::Table::new();
    behind.insert("addr".into(), "127.0.0.1:0".into());
    behind.insert(
        "forwarded_from".into(),
        toml::Value::Array(vec!["127.0.0.2/32".into()]),
    );
    let mut tls = toml::Table::new();
    tls.insert("cert_file".into(), crt.display().to_string().into());
    tls.insert("key_file".into(), key.display().to_string().into());
    let mut direct = toml::Table::new();
    direct.insert("addr".into(), "127.0.0.1:0".into());
    direct.insert("tls".into(), tls.into());
    let herald = herald().listener(behind).listener(direct).start().await;
    let [edge_ws, edge_wss] = herald.listeners[..] else {
        panic!("two listeners");
    };

    let (tls_port, plain_port) = (free_port(), free_port());
    let conf = nginx_config(
        dir.path(),
        &NginxConf {
            tls_port,
            plain_port: Some(plain_port),
            cert: &crt,
            key: &key,
            edges: &[edge_ws],
        },
    );
    let nginx = Nginx::start(dir.path(), &conf, tls_port).await;

    let direct = format!("wss://127.0.0.1:{}", edge_wss.port());
    let front_tls = format!("wss://127.0.0.1:{tls_port}");
    let front_plain = format!("ws://127.0.0.1:{plain_port}");
    // (library, protocol level, base, path, user name, offers the `mqtt` sub-protocol)
    let cases = [
        (Lib::MqttJs, 4, &direct, "/mqtt", "alpha", true),
        (Lib::MqttJs, 5, &direct, "/mqtt/alpha", "any", false),
        (Lib::Paho, 4, &direct, "/mqtt", "alpha", true),
        (Lib::Paho, 5, &direct, "/mqtt/alpha", "any", true),
        // Seed 000's WeChat mini program: wss through nginx, no sub-protocol, none answered.
        (Lib::MqttJs, 4, &front_tls, "/mqtt", "alpha", false),
        (Lib::MqttJs, 5, &front_tls, "/mqtt/alpha", "any", true),
        (Lib::Paho, 4, &front_tls, "/mqtt", "alpha", true),
        (Lib::MqttJs, 4, &front_plain, "/mqtt", "alpha", false),
        (Lib::Paho, 5, &front_plain, "/mqtt/alpha", "any", true),
    ];
    let mut clients = Vec::new();
    for (i, (lib, version, base, path, username, subprotocol)) in cases.into_iter().enumerate() {
        let user = format!("u{i}");
        let url = format!("{base}{path}");
        let mut c = MqttClient::start(
            lib,
            json!({"url": url, "username": username, "version": version,
                   "password": mqtt_token(&user, &["news"]), "clientId": format!("c{i}"),
                   "subprotocol": subprotocol, "ca": ca_file}),
        )
        .await;
        let connack = c.expect("connect").await;
        assert_eq!(
            connack["code"],
            0,
            "{i} {url}: {connack}\nnginx: {}",
            nginx.error_log()
        );
        // In the order of the keys, sorted or not.
        let suback = c
            .subscribe(json!({"$broadcast": 0, "news": 1, format!("user/{user}"): 1}))
            .await;
        assert_eq!(suback["codes"], json!([0, 1, 1]), "{i} {url}");
        if lib == Lib::MqttJs {
            // The answered sub-protocol: echoed when offered (through nginx too), else none.
            let answered = c
                .seen
                .iter()
                .find(|e| e["event"] == "upgrade")
                .map(|e| e["protocol"].clone());
            let want = if subprotocol {
                json!("mqtt")
            } else {
                Value::Null
            };
            assert_eq!(answered, Some(want), "{i} {url}");
        }
        clients.push((user, url, c));
    }
    herald
        .wait_metric(r#"herald_edge_connections{protocol="mqtt"}"#, 9.0)
        .await;

    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    send(
        &mut grpc,
        publish("alpha", To::Group("news"), "to the group"),
    )
    .await;
    send(&mut grpc, publish("alpha", To::Broadcast, "to all")).await;
    for (user, _, _) in &clients {
        send(
            &mut grpc,
            publish("alpha", To::User(user), &format!("for {user}")),
        )
        .await;
    }
    for (user, url, c) in &mut clients {
        let got: Vec<(Value, Value, Value)> =
            [c.message().await, c.message().await, c.message().await]
                .into_iter()
                .map(|m| (m["topic"].clone(), m["payload"].clone(), m["qos"].clone()))
                .collect();
        assert_eq!(
            got,
            [
                (json!("news"), json!("to the group"), json!(1)),
                (json!("$broadcast"), json!("to all"), json!(0)),
                (
                    json!(format!("user/{user}")),
                    json!(format!("for {user}")),
                    json!(1)
                ),
            ],
            "{url}"
        );
    }
    for (_, _, c) in clients {
        c.end().await;
    }
    herald
        .wait_metric(r#"herald_edge_connections{protocol="mqtt"}"#, 0.0)
        .await;
}
