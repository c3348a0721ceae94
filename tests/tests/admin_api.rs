//! The admin API (`/v1/admin/...`): projects and keys created at runtime, used by clients and
//! publishers at once, rotated, persisted under `router.state_dir` across a restart, kept by a
//! SIGHUP, scoped by key, and written to the audit log.

use std::net::SocketAddr;

use herald_tests::*;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite;

const S1: &str = "gamma-secret-one-0123456789abcdef012345";
const S2: &str = "gamma-secret-two-0123456789abcdef012345";

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

/// Asserts `post` answers `status` with gRPC code name `code`.
async fn refused(addr: SocketAddr, key: &str, path: &str, body: Value, status: u16, code: &str) {
    let (s, v) = post(addr, key, path, body.clone()).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (status, Some(code)),
        "{path} {body}: {v}"
    );
}

fn gamma_token(secret: &str, kid: &str, sub: &str) -> String {
    hs256(secret, Some(kid), &claims("gamma", sub))
}

/// Connects and returns the close code of a refused token.
async fn refused_token(herald: &Herald, token: &str) -> u16 {
    let (ws, _) = herald
        .open(&herald.url("gamma", &format!("token={token}")), &[])
        .await
        .expect("websocket upgrade");
    let (code, _, frames) = Client { ws }.expect_close().await;
    assert!(frames.is_empty(), "no frame before a refusal: {frames:?}");
    code
}

/// Publishes to `user` of gamma over HTTP with `key`; returns the status.
async fn publish_to(herald: &Herald, key: &str, user: &str, n: u64) -> u16 {
    let body = json!({"project": "gamma", "target": {"user": user}, "data": {"n": n}});
    post(herald.http, key, "/v1/publish", body).await.0
}

fn node(state_dir: &std::path::Path) -> HeraldBuilder {
    herald()
        .router("http_listen", "127.0.0.1:0")
        .router("state_dir", state_dir.display().to_string())
        .capture_stderr()
}

#[tokio::test]
async fn projects_and_keys_made_at_runtime_work_at_once_survive_a_restart_and_a_sighup() {
    let state = tempfile::tempdir().expect("state dir");
    let mut herald = node(state.path()).start().await;
    let h = herald.http;

    // Only an admin key creates projects; the file's ids are taken.
    let create =
        json!({"project": "gamma", "jwt_keys": [{"kid": "k1", "alg": "HS256", "secret": S1}]});
    refused(
        h,
        ALPHA_KEY,
        "/v1/admin/projects/create",
        create.clone(),
        403,
        "PERMISSION_DENIED",
    )
    .await;
    refused(
        h,
        ADMIN_KEY,
        "/v1/admin/projects/create",
        json!({"project": "alpha"}),
        409,
        "ALREADY_EXISTS",
    )
    .await;
    refused(
        h,
        ADMIN_KEY,
        "/v1/admin/projects/create",
        json!({"project": "gamma", "jwt_keys": [{"kid": "k1", "alg": "HS256", "secret": "short"}]}),
        400,
        "INVALID_ARGUMENT",
    )
    .await;
    let (s, v) = post(h, ADMIN_KEY, "/v1/admin/projects/create", create.clone()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["project"]["source"], "api");
    assert_eq!(
        v["project"]["jwt_keys"],
        json!([{"kid": "k1", "alg": "HS256"}])
    );
    assert!(!v.to_string().contains(S1), "no secret is shown: {v}");
    refused(
        h,
        ADMIN_KEY,
        "/v1/admin/projects/create",
        create,
        409,
        "ALREADY_EXISTS",
    )
    .await;

    // An API key, shown once.
    let (s, v) = post(
        h,
        ADMIN_KEY,
        "/v1/admin/api_keys/create",
        json!({"project": "gamma"}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let gamma_key = v["key"].as_str().expect("key").to_string();
    let gamma_key_id = v["id"].as_str().expect("id").to_string();
    let (_, v) = post(
        h,
        &gamma_key,
        "/v1/admin/projects/get",
        json!({"project": "gamma"}),
    )
    .await;
    assert_eq!(v["project"]["api_keys"][0]["id"], gamma_key_id.as_str());
    assert!(
        !v.to_string().contains(&gamma_key),
        "the key is never shown again: {v}"
    );

    // A client of the new key's token, reached by a publish with the new API key.
    let mut carol = herald
        .connect("gamma", &gamma_token(S1, "k1", "carol"))
        .await;
    assert_eq!(publish_to(&herald, &gamma_key, "carol", 1).await, 200);
    assert_eq!(carol.next_msg().await["data"], json!({"n": 1}));

    // A project's key touches its project only; the file's projects are read-only.
    let to_alpha = json!({"project": "alpha", "target": {"user": "x"}, "data": 1});
    refused(
        h,
        &gamma_key,
        "/v1/publish",
        to_alpha,
        403,
        "PERMISSION_DENIED",
    )
    .await;
    refused(
        h,
        &gamma_key,
        "/v1/admin/projects/get",
        json!({"project": "alpha"}),
        403,
        "PERMISSION_DENIED",
    )
    .await;
    refused(
        h,
        &gamma_key,
        "/v1/admin/api_keys/create",
        json!({"project": "beta"}),
        403,
        "PERMISSION_DENIED",
    )
    .await;
    refused(
        h,
        ALPHA_KEY,
        "/v1/admin/projects/delete",
        json!({"project": "gamma"}),
        403,
        "PERMISSION_DENIED",
    )
    .await;
    refused(
        h,
        ALPHA_KEY,
        "/v1/admin/audit/list",
        json!({"project": "gamma"}),
        403,
        "PERMISSION_DENIED",
    )
    .await;
    refused(
        h,
        ADMIN_KEY,
        "/v1/admin/projects/update",
        json!({"project": "alpha", "disabled": true}),
        400,
        "FAILED_PRECONDITION",
    )
    .await;
    let (_, v) = post(h, &gamma_key, "/v1/admin/projects/list", json!({})).await;
    let ids: Vec<&str> = v["projects"]
        .as_array()
        .expect("projects")
        .iter()
        .filter_map(|p| p["project"].as_str())
        .collect();
    assert_eq!(ids, ["gamma"], "a project key sees its project only");
    let (_, v) = post(h, ADMIN_KEY, "/v1/admin/projects/list", json!({})).await;
    let ids: Vec<&str> = v["projects"]
        .as_array()
        .expect("projects")
        .iter()
        .filter_map(|p| p["project"].as_str())
        .collect();
    assert_eq!(ids, ["alpha", "beta", "gamma"]);

    // The project's own key changes its limits: origins and address lists.
    let limits = json!({"origins": ["https://app.example.com"], "deny_ips": ["10.9.0.0/16"]});
    let (s, v) = post(
        h,
        &gamma_key,
        "/v1/admin/projects/update",
        json!({"project": "gamma", "limits": limits}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["project"]["limits"]["origins"],
        json!(["https://app.example.com"])
    );
    let (status, _) = herald
        .open(
            &herald.url("gamma", &format!("token={}", gamma_token(S1, "k1", "o"))),
            &[("origin", "https://evil.example.com")],
        )
        .await
        .map_or_else(
            |e| match e {
                tungstenite::Error::Http(r) => (r.status().as_u16(), ()),
                e => panic!("{e}"),
            },
            |(_, r)| (r.status().as_u16(), ()),
        );
    assert_eq!(status, 403, "the new origins apply at once");

    // Rotation: a second key overlaps the first, then the first is retired.
    let add = json!({"project": "gamma", "key": {"kid": "k2", "alg": "HS256", "secret": S2}});
    let (s, v) = post(h, &gamma_key, "/v1/admin/jwt_keys/add", add).await;
    assert_eq!(s, 200, "{v}");
    herald
        .connect("gamma", &gamma_token(S1, "k1", "old-during-overlap"))
        .await;
    herald
        .connect("gamma", &gamma_token(S2, "k2", "new-during-overlap"))
        .await;
    let (s, v) = post(
        h,
        ADMIN_KEY,
        "/v1/admin/jwt_keys/retire",
        json!({"project": "gamma", "kid": "k1"}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        refused_token(&herald, &gamma_token(S1, "k1", "old-after")).await,
        4002,
        "a retired key's token is refused"
    );
    let mut dave = herald
        .connect("gamma", &gamma_token(S2, "k2", "dave"))
        .await;
    assert_eq!(publish_to(&herald, &gamma_key, "carol", 2).await, 200);
    assert_eq!(
        carol.next_msg().await["data"],
        json!({"n": 2}),
        "a connection from before the rotation stays"
    );

    // SIGHUP keeps the API's project; a file that now claims its id is refused as a whole.
    herald.signal("HUP");
    herald.wait_line("herald reloaded").await;
    assert_eq!(publish_to(&herald, &gamma_key, "dave", 3).await, 200);
    assert_eq!(dave.next_msg().await["data"], json!({"n": 3}));
    let text = std::fs::read_to_string(&herald.config_path).expect("config");
    let clash = format!(
        "{text}\n[[projects]]\nid = \"gamma\"\napi_keys = [\"gamma-file-key-0123456789\"]\n[[projects.keys]]\nalg = \"HS256\"\nsecret = \"{S1}\"\n"
    );
    std::fs::write(&herald.config_path, clash).expect("write config");
    herald.signal("HUP");
    eventually(WAIT, async || {
        let log = herald.stderr();
        if log.contains("the admin API created this project") {
            Ok(())
        } else {
            Err(format!("no refused reload in the log:\n{log}"))
        }
    })
    .await;
    assert_eq!(
        refused_token(&herald, &gamma_token(S1, "k1", "file-key")).await,
        4002
    );
    std::fs::write(&herald.config_path, text).expect("restore config");

    // The audit log: every change, who and what, oldest first.
    let (s, v) = post(h, ADMIN_KEY, "/v1/admin/audit/list", json!({})).await;
    assert_eq!(s, 200, "{v}");
    let entries = v["entries"].as_array().expect("entries");
    let actions: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        [
            "project.create",
            "api_key.create",
            "project.update",
            "jwt_key.add",
            "jwt_key.retire"
        ]
    );
    assert!(
        entries[0]["actor"]
            .as_str()
            .expect("actor")
            .starts_with("admin:"),
        "{v}"
    );
    assert_eq!(
        entries[2]["actor"],
        format!("project:gamma:{gamma_key_id}").as_str()
    );
    assert!(
        entries
            .iter()
            .all(|e| e["project"] == "gamma" && e["at_ms"].as_u64() > Some(0)),
        "{v}"
    );
    let (_, v) = post(h, &gamma_key, "/v1/admin/audit/list", json!({"after": 3})).await;
    let seqs: Vec<u64> = v["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .collect();
    assert_eq!(seqs, [4, 5]);

    // A restart keeps all of it.
    herald.signal("TERM");
    herald.wait_exit().await;
    drop(herald);
    let herald = node(state.path()).start().await;
    let h = herald.http;
    let (s, v) = post(
        h,
        &gamma_key,
        "/v1/admin/projects/get",
        json!({"project": "gamma"}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["project"]["jwt_keys"],
        json!([{"kid": "k2", "alg": "HS256"}])
    );
    let mut erin = herald
        .connect("gamma", &gamma_token(S2, "k2", "erin"))
        .await;
    assert_eq!(
        refused_token(&herald, &gamma_token(S1, "k1", "old")).await,
        4002
    );
    assert_eq!(publish_to(&herald, &gamma_key, "erin", 4).await, 200);
    assert_eq!(erin.next_msg().await["data"], json!({"n": 4}));
    let (_, v) = post(
        h,
        ADMIN_KEY,
        "/v1/admin/audit/list",
        json!({"project": "gamma"}),
    )
    .await;
    assert_eq!(v["entries"].as_array().map(Vec::len), Some(5));

    // Disabled: no publish; deleted: gone, its key with it.
    let (s, _) = post(
        h,
        ADMIN_KEY,
        "/v1/admin/projects/update",
        json!({"project": "gamma", "disabled": true}),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        publish_to(&herald, &gamma_key, "erin", 5).await,
        401,
        "a disabled project's keys are not accepted"
    );
    assert_eq!(publish_to(&herald, ADMIN_KEY, "erin", 5).await, 404);
    let (s, v) = post(
        h,
        ADMIN_KEY,
        "/v1/admin/projects/delete",
        json!({"project": "gamma"}),
    )
    .await;
    assert_eq!((s, &v["deleted"]), (200, &json!(true)), "{v}");
    refused(
        h,
        ADMIN_KEY,
        "/v1/admin/projects/get",
        json!({"project": "gamma"}),
        404,
        "NOT_FOUND",
    )
    .await;
    let stored = std::fs::read_to_string(state.path().join("projects.json")).expect("state file");
    assert!(!stored.contains(&gamma_key), "only digests are written");
}

#[tokio::test]
async fn the_same_calls_over_grpc() {
    use herald_core::proto::admin::admin_client::AdminClient;
    use herald_core::proto::admin::{
        AddJwtKeyRequest, CreateProjectRequest, JwtKey, Limits, ListAuditRequest, ProjectRequest,
        RetireJwtKeyRequest, UpdateProjectRequest,
    };
    use tonic::Code;

    let herald = herald().router("http_listen", "127.0.0.1:0").start().await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", herald.grpc))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let with_key = |key: &str| {
        let auth: tonic::metadata::MetadataValue<_> =
            format!("Bearer {key}").parse().expect("header");
        AdminClient::with_interceptor(channel.clone(), move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", auth.clone());
            Ok(r)
        })
    };
    let mut admin = with_key(ADMIN_KEY);
    let hs = |kid: &str, secret: &str| JwtKey {
        kid: kid.into(),
        alg: "HS256".into(),
        secret: secret.into(),
        public_key_pem: String::new(),
    };

    let e = with_key(ALPHA_KEY)
        .create_project(CreateProjectRequest {
            project: "gamma".into(),
            ..Default::default()
        })
        .await
        .expect_err("a project key creates nothing");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let p = admin
        .create_project(CreateProjectRequest {
            project: "gamma".into(),
            jwt_keys: vec![hs("k1", S1)],
            disabled: false,
            limits: Some(Limits {
                deny_ips: vec!["10.9.0.0/16".into()],
                ..Default::default()
            }),
            jwks: None,
            permessage_deflate: false,
        })
        .await
        .expect("create")
        .into_inner()
        .project
        .expect("project");
    assert_eq!(
        (p.source.as_str(), p.jwt_keys[0].secret.as_str()),
        ("api", "")
    );
    assert_eq!(p.limits.expect("limits").deny_ips, ["10.9.0.0/16"]);
    let key = admin
        .create_api_key(ProjectRequest {
            project: "gamma".into(),
        })
        .await
        .expect("api key")
        .into_inner()
        .key;

    // The key made over gRPC publishes over HTTP to a client of the token key made over gRPC.
    let mut carol = herald
        .connect("gamma", &gamma_token(S1, "k1", "carol"))
        .await;
    assert_eq!(publish_to(&herald, &key, "carol", 1).await, 200);
    assert_eq!(carol.next_msg().await["data"], json!({"n": 1}));

    let mut own = with_key(&key);
    own.add_jwt_key(AddJwtKeyRequest {
        project: "gamma".into(),
        key: Some(hs("k2", S2)),
    })
    .await
    .expect("add");
    own.retire_jwt_key(RetireJwtKeyRequest {
        project: "gamma".into(),
        kid: "k1".into(),
    })
    .await
    .expect("retire");
    assert_eq!(
        refused_token(&herald, &gamma_token(S1, "k1", "old")).await,
        4002
    );
    herald.connect("gamma", &gamma_token(S2, "k2", "new")).await;
    // A JWK Set source is checked as the file's: https only.
    let e = own
        .update_project(UpdateProjectRequest {
            project: "gamma".into(),
            jwks: Some(herald_core::proto::admin::Jwks {
                url: "http://login.example.com/jwks.json".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect_err("not https");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("jwks.url"), "{e:?}");
    let e = own
        .update_project(UpdateProjectRequest {
            project: "beta".into(),
            disabled: Some(true),
            limits: None,
            jwks: None,
            ..Default::default()
        })
        .await
        .expect_err("another project");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = admin
        .update_project(UpdateProjectRequest {
            project: "beta".into(),
            disabled: Some(true),
            limits: None,
            jwks: None,
            ..Default::default()
        })
        .await
        .expect_err("a file project");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");

    let audit = own
        .list_audit(ListAuditRequest::default())
        .await
        .expect("audit")
        .into_inner()
        .entries;
    let actions: Vec<&str> = audit.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "project.create",
            "api_key.create",
            "jwt_key.add",
            "jwt_key.retire"
        ]
    );
    assert!(audit[2].actor.starts_with("project:gamma:"), "{audit:?}");

    // Presence events and a webhook, set by the project's own key: shown without the secret,
    // audited without it; a short secret is refused.
    let hook = |secret: &str| herald_core::proto::admin::Webhook {
        url: "https://hooks.example.com/herald".into(),
        secret: secret.into(),
        events: vec!["connect".into(), "join".into()],
        ..Default::default()
    };
    let v = own
        .update_project(UpdateProjectRequest {
            project: "gamma".into(),
            presence_events: Some(true),
            webhook: Some(hook("whsec-0123456789abcdef")),
            ..Default::default()
        })
        .await
        .expect("webhook set")
        .into_inner()
        .project
        .expect("project");
    assert!(v.presence_events);
    let w = v.webhook.expect("webhook shown");
    assert_eq!(
        (
            w.url.as_str(),
            w.secret.as_str(),
            w.events.len(),
            w.max_queue
        ),
        ("https://hooks.example.com/herald", "", 2, 10_000)
    );
    let e = own
        .update_project(UpdateProjectRequest {
            project: "gamma".into(),
            webhook: Some(hook("short")),
            ..Default::default()
        })
        .await
        .expect_err("a short secret");
    assert!(e.message().contains("webhook.secret"), "{e:?}");
    let audit = own
        .list_audit(ListAuditRequest::default())
        .await
        .expect("audit")
        .into_inner()
        .entries;
    let last = audit.last().expect("an entry");
    assert_eq!(last.action, "project.update");
    assert!(
        last.detail.contains("presence_events=true") && !last.detail.contains("whsec"),
        "{last:?}"
    );
}

/// Connects with `token`: the welcomed client, or why not (refused upgrade, close frame).
async fn try_connect(node: &Herald, project: &str, token: &str) -> Result<Client, String> {
    use futures_util::StreamExt as _;
    let (ws, _) = node
        .open(&node.url(project, &format!("token={token}")), &[])
        .await
        .map_err(|e| e.to_string())?;
    let mut c = Client { ws };
    loop {
        match c.ws.next().await {
            Some(Ok(tungstenite::Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).map_err(|e| e.to_string())?;
                return if v["type"] == "welcome" {
                    Ok(c)
                } else {
                    Err(v.to_string())
                };
            }
            Some(Ok(tungstenite::Message::Close(f))) => return Err(format!("{f:?}")),
            Some(Ok(_)) => continue,
            other => return Err(format!("{other:?}")),
        }
    }
}

/// How long a change made on one router may take to reach every node: the design bound is one
/// poll (250 ms) and one load; the rest is room for a loaded machine.
const SPREAD: std::time::Duration = std::time::Duration::from_secs(2);

#[tokio::test]
async fn in_a_cluster_a_change_on_one_router_reaches_every_edge_and_router_without_a_restart() {
    use herald_tests::cluster::Backends;
    let b = Backends::start_with(false, 1).await;
    let router = |id: &'static str| {
        herald()
            .clustered(&b)
            .role("router")
            .edge("id", id)
            .router("http_listen", "127.0.0.1:0")
            .start()
    };
    let edge = |id: &'static str| herald().clustered(&b).role("edge").edge("id", id).start();
    let (r1, r2) = (router("r1").await, router("r2").await);
    let (e1, e2) = (edge("e1").await, edge("e2").await);
    for n in [&r1, &r2, &e1, &e2] {
        n.wait_ready().await;
    }
    // A connection from before: no change drops it.
    let mut before = e1.connect("alpha", &token("alpha", "before")).await;

    let create =
        json!({"project": "gamma", "jwt_keys": [{"kid": "k1", "alg": "HS256", "secret": S1}]});
    let (s, v) = post(r1.http, ADMIN_KEY, "/v1/admin/projects/create", create).await;
    assert_eq!(s, 200, "{v}");
    let created = std::time::Instant::now();
    let (s, v) = post(
        r1.http,
        ADMIN_KEY,
        "/v1/admin/api_keys/create",
        json!({"project": "gamma"}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let key = v["key"].as_str().expect("key").to_string();

    // Usable on the other edge, with the new API key through the other router.
    let mut carol = eventually(SPREAD, async || {
        try_connect(&e2, "gamma", &gamma_token(S1, "k1", "carol")).await
    })
    .await;
    let took = created.elapsed();
    eventually(SPREAD, async || {
        match publish_to(&r2, &key, "carol", 1).await {
            200 => Ok(()),
            s => Err(format!("publish through r2: {s}")),
        }
    })
    .await;
    assert_eq!(carol.next_msg().await["data"], json!({"n": 1}));
    eprintln!("project usable on another edge {took:?} after its creation on a router");

    // A rotation through the other router reaches the first edge.
    let add = json!({"project": "gamma", "key": {"kid": "k2", "alg": "HS256", "secret": S2}});
    assert_eq!(
        post(r2.http, &key, "/v1/admin/jwt_keys/add", add).await.0,
        200
    );
    let (s, v) = post(
        r2.http,
        &key,
        "/v1/admin/jwt_keys/retire",
        json!({"project": "gamma", "kid": "k1"}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    eventually(SPREAD, async || {
        match try_connect(&e1, "gamma", &gamma_token(S1, "k1", "old")).await {
            Err(why) => Ok(why),
            Ok(_) => Err("a retired key's token is still accepted on e1"),
        }
    })
    .await;
    eventually(SPREAD, async || {
        try_connect(&e1, "gamma", &gamma_token(S2, "k2", "new"))
            .await
            .map(|_| ())
    })
    .await;

    // Both routers wrote to one audit log (r1 reads it once its poll has seen r2's changes, as
    // e1 did above); no connection was dropped.
    eventually(SPREAD, async || {
        let (_, v) = post(r1.http, ADMIN_KEY, "/v1/admin/audit/list", json!({})).await;
        let actions: Vec<String> = v["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .filter_map(|e| Some(e["action"].as_str()?.to_string()))
            .collect();
        match actions
            == [
                "project.create",
                "api_key.create",
                "jwt_key.add",
                "jwt_key.retire",
            ] {
            true => Ok(()),
            false => Err(format!("{actions:?}")),
        }
    })
    .await;
    let to_before = json!({"project": "alpha", "target": {"user": "before"}, "data": "still here"});
    assert_eq!(
        post(r1.http, ALPHA_KEY, "/v1/publish", to_before).await.0,
        200
    );
    assert_eq!(before.next_msg().await["data"], "still here");
    assert_eq!(publish_to(&r1, &key, "carol", 2).await, 200);
    assert_eq!(carol.next_msg().await["data"], json!({"n": 2}));

    // A restarted edge reads the projects from Redis.
    drop(e2);
    let e3 = edge("e3").await;
    e3.wait_ready().await;
    try_connect(&e3, "gamma", &gamma_token(S2, "k2", "after-restart"))
        .await
        .expect("gamma on a new edge");
}
