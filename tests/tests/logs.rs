//! What reaches the log: with `[log] level = "trace"` and `RUST_LOG=trace`, a token sent every way
//! a client can send one (header, query, `auth` frame, `refresh` frame, valid or not), the API and
//! admin keys of gRPC calls (accepted or refused) and the signing secrets never appear in it.

use herald_core::proto::v1::{
    CountConnectionsRequest, ListConnectionsRequest, list_connections_request,
};
use herald_tests::*;
use serde_json::json;

/// A token of `alpha` for `sub`, distinct from every other by its expiry.
fn alpha_token(sub: &str, exp_offset: u64) -> String {
    let exp = jsonwebtoken::get_current_timestamp() + 600 + exp_offset;
    hs256(
        ALPHA_SECRET,
        None,
        &json!({"sub": sub, "aud": "alpha", "exp": exp}),
    )
}

#[tokio::test]
async fn no_token_key_or_secret_is_logged_at_trace() {
    let herald = herald()
        .log("level", "trace")
        .env("RUST_LOG", "trace")
        .capture_stderr()
        .start()
        .await;
    let by_header = alpha_token("by-header", 1);
    let by_query = alpha_token("by-query", 2);
    let by_frame = alpha_token("by-frame", 3);
    let refreshed = alpha_token("by-query", 4);
    // Refused tokens travel the error paths: a wrong signature, by query and in a frame.
    let forged = hs256(
        "not-alpha-secret-0123456789abcdef012345",
        None,
        &claims("alpha", "mallory"),
    );
    let forged_frame = hs256(
        "not-alpha-secret-0123456789abcdef012345",
        None,
        &claims("alpha", "mallory-frame"),
    );
    let wrong_key = "wrong-api-key-0123456789";

    let bearer = format!("Bearer {by_header}");
    let (ws, _) = herald
        .open(&herald.url("alpha", ""), &[("authorization", &bearer)])
        .await
        .expect("upgrade");
    let mut header = Client { ws };
    assert_eq!(header.next_json().await["type"], "welcome");

    let mut query = herald.connect("alpha", &by_query).await;
    query
        .send_json(json!({"type":"refresh","id":1,"token":refreshed}))
        .await;
    assert_eq!(query.next_json().await, json!({"type":"ack","id":1}));
    query
        .send_json(json!({"type":"refresh","id":2,"token":forged}))
        .await;
    assert_eq!(query.next_json().await["code"], 4402);

    let (ws, _) = herald
        .open(&herald.url("alpha", ""), &[])
        .await
        .expect("upgrade");
    let mut frame = Client { ws };
    frame
        .send_json(json!({"type":"auth","token":by_frame}))
        .await;
    assert_eq!(frame.next_json().await["type"], "welcome");

    let (ws, _) = herald
        .open(&herald.url("alpha", &format!("token={forged}")), &[])
        .await
        .expect("upgrade");
    assert_eq!(Client { ws }.expect_close().await.0, 4002);
    let (ws, _) = herald
        .open(&herald.url("alpha", ""), &[])
        .await
        .expect("upgrade");
    let mut bad_frame = Client { ws };
    bad_frame
        .send_json(json!({"type":"auth","token":forged_frame}))
        .await;
    assert_eq!(bad_frame.expect_close().await.0, 4002);

    // gRPC: a project key and the admin key, accepted; a wrong key, refused.
    let mut alpha = herald.grpc(Some(ALPHA_KEY)).await;
    send(&mut alpha, publish("alpha", To::User("by-query"), "\"hi\"")).await;
    assert_eq!(query.next_msg().await["data"], "hi");
    let mut admin = herald.grpc(Some(ADMIN_KEY)).await;
    admin
        .list_connections(ListConnectionsRequest {
            project: "alpha".into(),
            of: Some(list_connections_request::Of::User("by-frame".into())),
            ..Default::default()
        })
        .await
        .expect("list");
    admin
        .count_connections(CountConnectionsRequest {
            project: String::new(),
        })
        .await
        .expect("count");
    let mut wrong = herald.grpc(Some(wrong_key)).await;
    let refused = wrong
        .publish(publish("alpha", To::Broadcast, "\"no\""))
        .await
        .expect_err("a wrong key is refused");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    // Every answer above came after the server read what it answered: whatever a library logs
    // on reading is in the file by now. The log is at debug at least (Herald's own refusals).
    let log = eventually(WAIT, async || {
        let log = herald.stderr();
        if log.contains("authentication refused") {
            Ok(log)
        } else {
            Err(format!("no refusal in the log yet:\n{log}"))
        }
    })
    .await;
    let secrets = [
        ("header token", by_header.as_str()),
        ("query token", &by_query),
        ("auth frame token", &by_frame),
        ("refresh token", &refreshed),
        ("forged token (query, refresh)", &forged),
        ("forged token (auth frame)", &forged_frame),
        ("project api key", ALPHA_KEY),
        ("admin key", ADMIN_KEY),
        ("refused api key", wrong_key),
        ("alpha's signing secret", ALPHA_SECRET),
        ("beta's signing secret", BETA_SECRET),
    ];
    for (what, secret) in secrets {
        // A token's signature alone is as good as a leak of the whole.
        let tail = secret.rsplit('.').next().unwrap_or(secret);
        let line = log.lines().find(|l| l.contains(secret) || l.contains(tail));
        assert!(line.is_none(), "the {what} is in the log: {line:?}");
    }
}
