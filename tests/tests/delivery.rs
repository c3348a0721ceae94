//! Delivery by target kind, several devices, and isolation between projects.

use herald_core::proto::v1::Resolution;
use herald_tests::*;
use serde_json::json;

#[tokio::test]
async fn broadcast_group_and_user_reach_exactly_their_recipients() {
    let herald = herald().start().await;
    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    let mut alice = herald
        .connect("alpha", &hs256(ALPHA_SECRET, None, &json!({"sub":"alice","aud":"alpha","exp":jsonwebtoken::get_current_timestamp()+600,"groups":["news"]})))
        .await;
    let mut bob = herald.connect("alpha", &token("alpha", "bob")).await;

    let r = send(&mut grpc, publish("alpha", To::Broadcast, r#"{"n":1}"#)).await;
    assert_eq!(r.resolution(), Resolution::Delivered);
    for c in [&mut alice, &mut bob] {
        let m = c.next_msg().await;
        assert_eq!(m["kind"], "broadcast");
        assert_eq!(m["data"], json!({"n":1}));
    }

    let r = send(
        &mut grpc,
        publish("alpha", To::Group("news"), r#""headline""#),
    )
    .await;
    assert_eq!(r.resolution(), Resolution::Delivered);
    assert_eq!(r.edges, 1);
    let m = alice.next_msg().await;
    assert_eq!(
        (m["kind"].as_str(), m["group"].as_str(), m["data"].as_str()),
        (Some("group"), Some("news"), Some("headline"))
    );

    let r = send(
        &mut grpc,
        publish("alpha", To::User("bob"), "not json \u{1}"),
    )
    .await;
    assert_eq!(r.resolution(), Resolution::Delivered);
    let m = bob.next_msg().await;
    assert_eq!(m["kind"], "user");
    assert_eq!(m["b64"], "bm90IGpzb24gAQ==");

    // Nobody else got the group or user message.
    expect_nothing_before_marker(&mut alice, &mut grpc, "alpha", "alice").await;
    expect_nothing_before_marker(&mut bob, &mut grpc, "alpha", "bob").await;

    let r = send(&mut grpc, publish("alpha", To::User("nobody"), "1")).await;
    assert_eq!(r.resolution(), Resolution::NoRecipients);
    assert_eq!(r.edges, 0);
}

#[tokio::test]
async fn subscribe_joins_a_group_allowed_by_the_channels_claim() {
    let herald = herald().start().await;
    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    let mut c = herald
        .connect("alpha", &hs256(ALPHA_SECRET, None, &json!({"sub":"carol","aud":"alpha","exp":jsonwebtoken::get_current_timestamp()+600,"channels":["sport-*","weather"]})))
        .await;
    assert_eq!(
        c.subscribe(1, "sport-f1").await,
        json!({"type":"ack","id":1})
    );
    assert_eq!(
        c.subscribe(2, "weather").await,
        json!({"type":"ack","id":2})
    );
    let denied = c.subscribe(3, "news").await;
    assert_eq!(
        (
            denied["type"].as_str(),
            denied["code"].as_u64(),
            denied["id"].as_u64()
        ),
        (Some("error"), Some(4403), Some(3))
    );
    for bad in ["a.*", "sport-x/", "/sport-x", "sport-//x", "user/carol"] {
        assert_eq!(c.subscribe(4, bad).await["code"], 4422, "{bad}");
    }
    // `/` separates levels in group names (and MQTT topics); `channels` patterns see it as any
    // other character.
    assert_eq!(
        c.subscribe(6, "sport-moto/gp").await,
        json!({"type":"ack","id":6})
    );
    send(&mut grpc, publish("alpha", To::Group("sport-moto/gp"), "0")).await;
    assert_eq!(c.next_msg().await["group"], "sport-moto/gp");

    send(&mut grpc, publish("alpha", To::Group("sport-f1"), "1")).await;
    assert_eq!(c.next_msg().await["group"], "sport-f1");
    send(&mut grpc, publish("alpha", To::Group("news"), "2")).await;
    expect_nothing_before_marker(&mut c, &mut grpc, "alpha", "carol").await;

    c.send_json(json!({"type":"unsubscribe","id":5,"group":"sport-f1"}))
        .await;
    assert_eq!(c.next_json().await, json!({"type":"ack","id":5}));
    let r = send(&mut grpc, publish("alpha", To::Group("sport-f1"), "3")).await;
    assert_eq!(r.resolution(), Resolution::NoRecipients);

    // A token without a channels claim may not subscribe at all.
    let mut d = herald.connect("alpha", &token("alpha", "dave")).await;
    assert_eq!(d.subscribe(1, "weather").await["code"], 4403);
}

#[tokio::test]
async fn every_device_of_a_user_receives_user_messages() {
    let herald = herald().start().await;
    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    let mut phone = herald.connect("alpha", &token("alpha", "erin")).await;
    let mut laptop = herald.connect("alpha", &token("alpha", "erin")).await;
    let mut other = herald.connect("alpha", &token("alpha", "frank")).await;
    for i in 0..5 {
        send(
            &mut grpc,
            publish("alpha", To::User("erin"), &i.to_string()),
        )
        .await;
    }
    for dev in [&mut phone, &mut laptop] {
        for i in 0..5 {
            assert_eq!(dev.next_msg().await["data"], json!(i), "in publish order");
        }
    }
    expect_nothing_before_marker(&mut other, &mut grpc, "alpha", "frank").await;
}

#[tokio::test]
async fn projects_are_isolated_even_with_equal_names() {
    let herald = herald().start().await;
    let mut ga = herald.grpc(Some(ALPHA_KEY)).await;
    let mut gb = herald.grpc(Some(BETA_KEY)).await;
    let groups = |p: &str| json!({"sub":"same","aud":p,"exp":jsonwebtoken::get_current_timestamp()+600,"groups":["shared"]});
    let mut a = herald
        .connect("alpha", &hs256(ALPHA_SECRET, None, &groups("alpha")))
        .await;
    let mut b = herald
        .connect("beta", &hs256(BETA_SECRET, None, &groups("beta")))
        .await;

    send(&mut ga, publish("alpha", To::Broadcast, r#""a-broadcast""#)).await;
    send(
        &mut ga,
        publish("alpha", To::Group("shared"), r#""a-group""#),
    )
    .await;
    send(&mut ga, publish("alpha", To::User("same"), r#""a-user""#)).await;
    for want in ["a-broadcast", "a-group", "a-user"] {
        assert_eq!(a.next_msg().await["data"], want);
    }
    expect_nothing_before_marker(&mut b, &mut gb, "beta", "same").await;

    send(&mut gb, publish("beta", To::User("same"), r#""b-user""#)).await;
    assert_eq!(b.next_msg().await["data"], "b-user");
    expect_nothing_before_marker(&mut a, &mut ga, "alpha", "same").await;

    // A token of alpha never opens a connection to beta, even where the secrets were shared.
    let (ws, _) = herald
        .open(
            &herald.url("beta", &format!("token={}", token("alpha", "x"))),
            &[],
        )
        .await
        .expect("upgrade");
    let (code, _, _) = Client { ws }.expect_close().await;
    assert_eq!(code, 4002, "alpha's token does not verify with beta's key");

    // Hostile ids are refused by the API, never matched as patterns.
    for bad in [
        "a.*", ">", "*", "sha{red}", "a b", "a/+", "#", "/a", "a//b", "user/bob",
    ] {
        let e = ga
            .publish(publish("alpha", To::Group(bad), "1"))
            .await
            .expect_err(bad);
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}");
        let e = ga
            .publish(publish("alpha", To::User(bad), "1"))
            .await
            .expect_err(bad);
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}");
    }
    let e = ga
        .publish(publish("a.*", To::Broadcast, "1"))
        .await
        .expect_err("bad project");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn shared_keys_still_pin_the_audience() {
    // Both projects trust the same secret: only `aud` keeps them apart.
    let herald = herald()
        .projects(&format!(
            r#"
            [[projects]]
            id = "alpha"
            api_keys = ["{ALPHA_KEY}"]
            [[projects.keys]]
            alg = "HS256"
            secret = "{ALPHA_SECRET}"
            [[projects]]
            id = "beta"
            api_keys = ["{BETA_KEY}"]
            [[projects.keys]]
            alg = "HS256"
            secret = "{ALPHA_SECRET}"
            "#
        ))
        .start()
        .await;
    let (ws, _) = herald
        .open(
            &herald.url("beta", &format!("token={}", token("alpha", "x"))),
            &[],
        )
        .await
        .expect("upgrade");
    let mut c = Client { ws };
    let (code, reason, _) = c.expect_close().await;
    assert_eq!((code, reason.as_str()), (4003, "forbidden"));
    herald
        .connect("beta", &hs256(ALPHA_SECRET, None, &claims("beta", "x")))
        .await;
}
