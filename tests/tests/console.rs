//! The web console (`/console/` on `router.http_listen`, docs/console.md): in a real headless
//! Chromium (Debian's `chromium` and `chromium-driver`, driven by Selenium), an operator logs in,
//! sees a client connect, kicks it (the client gets 4009) and all of a user's, creates a project,
//! edits its origins and address lists and rotates its key (written to the audit log as the
//! key's changes); over plain HTTP,
//! sessions are scoped to their key, need their CSRF token, and end at logout or when their key
//! is deleted.

use std::net::SocketAddr;

use herald_tests::browser::Browser;
use herald_tests::*;
use serde_json::{Value, json};

const DELTA_SECRET: &str = "delta-secret-0123456789abcdef0123456789";
const DELTA_SECRET_2: &str = "delta-secret-two-0123456789abcdef012345";

fn console_node() -> HeraldBuilder {
    herald().router("http_listen", "127.0.0.1:0")
}

/// POSTs JSON with an API key; returns the status and the JSON answer.
async fn api(addr: SocketAddr, key: &str, path: &str, body: Value) -> (u16, Value) {
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

#[tokio::test]
async fn in_chromium_an_operator_logs_in_sees_a_client_kicks_it_and_edits_a_project() {
    let herald = console_node().start().await;
    let console = format!("http://{}/console/", herald.http);
    let mut b = Browser::start().await;

    // The login page; the key goes in the form's body, never in the URL.
    b.run(json!({"cmd": "goto", "url": console})).await;
    b.wait_text("h1", "Herald console").await;
    b.type_into("#key", "not-a-key-0123456789").await;
    b.click("#login").await;
    b.wait_text("#login-error", "Unknown API key").await;
    b.type_into("#key", ADMIN_KEY).await;
    b.click("#login").await;
    b.wait_text("#who", "(admin)").await;
    let url = b.run(json!({"cmd": "url"})).await["url"].to_string();
    assert!(!url.contains(ADMIN_KEY) && !url.contains("key="), "{url}");
    let cookies = b.run(json!({"cmd": "cookies"})).await;
    let session = &cookies["cookies"][0];
    assert_eq!(
        (&session["name"], &session["httpOnly"], &session["sameSite"]),
        (&json!("herald_console"), &json!(true), &json!("Strict")),
        "{cookies}"
    );

    // A client connects: its project's count goes from 0 to 1, on its edge's column too.
    let cell = "tr[data-project=alpha] td.connections";
    b.wait_text(cell, "0").await;
    let mut carol = herald.connect("alpha", &token("alpha", "carol")).await;
    b.wait_text(cell, "1").await;
    let per_edge = b
        .run(json!({"cmd": "texts", "css": "tr[data-project=alpha] td[data-edge]"}))
        .await;
    assert_eq!(per_edge["texts"], json!(["1"]), "one edge, holding carol");

    // Found by user, kicked: the client gets its close code.
    b.run(json!({"cmd": "select", "css": "#find-project", "value": "alpha"}))
        .await;
    b.type_into("#find-id", "carol").await;
    b.click("#find").await;
    b.wait_text("#connections tbody tr td:nth-child(2)", "carol")
        .await;
    b.wait_text("#found", "1 connection").await;
    b.click("#connections button.kick").await;
    let (code, _, _) = carol.expect_close().await;
    assert_eq!(code, 4009, "closed by an operator");
    b.wait_text("#found", "0 connections").await;
    b.wait_text(cell, "0").await;

    // Every connection of a user at once.
    let mut dora = [
        herald.connect("alpha", &token("alpha", "dora")).await,
        herald.connect("alpha", &token("alpha", "dora")).await,
    ];
    b.type_into("#find-id", "dora").await;
    b.click("#find").await;
    b.wait_text("#found", "2 connections").await;
    b.click("#kick-user").await;
    for c in &mut dora {
        assert_eq!(c.expect_close().await.0, 4009);
    }
    b.wait_text("#found", "0 connections").await;

    // A project created, its origins and address lists edited, through the console.
    b.type_into("#create-id", "delta").await;
    b.type_into("#create-kid", "k1").await;
    b.type_into("#create-secret", DELTA_SECRET).await;
    b.click("#create").await;
    b.wait_text("#detail-name", "delta").await;
    b.type_into("#origins", "https://app.example.com").await;
    // Loopback stays allowed: the test's clients come from there.
    b.type_into("#allow-ips", "127.0.0.0/8\n10.0.0.0/8").await;
    b.click("#save-limits").await;
    b.wait_text("#status", "Saved delta").await;
    b.wait_text("#audit tbody tr", "project.update").await;

    // Key rotation: a second key added, the first retired (the confirmation accepted).
    b.type_into("#key-kid", "k2").await;
    b.type_into("#key-secret", DELTA_SECRET_2).await;
    b.click("#add-key").await;
    b.wait_text("#status", "Added key k2").await;
    b.wait_text("#jwt-keys", "k2 HS256").await;
    b.click("#jwt-keys button.retire[data-kid=k1]").await;
    b.wait_text("#status", "Retired key k1").await;
    b.wait_text("#audit tbody tr", "jwt_key.retire").await;

    // The API sees the change, and the audit log names the admin key as the one who made it.
    let (s, v) = api(
        herald.http,
        ADMIN_KEY,
        "/v1/admin/projects/get",
        json!({"project": "delta"}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["project"]["limits"]["origins"],
        json!(["https://app.example.com"])
    );
    assert_eq!(
        v["project"]["limits"]["allow_ips"],
        json!(["127.0.0.0/8", "10.0.0.0/8"])
    );
    assert_eq!(
        v["project"]["jwt_keys"],
        json!([{"kid": "k2", "alg": "HS256"}])
    );
    let (_, v) = api(
        herald.http,
        ADMIN_KEY,
        "/v1/admin/api_keys/create",
        json!({"project": "delta"}),
    )
    .await;
    assert!(v["key"].is_string(), "{v}");
    let (_, audit) = api(herald.http, ADMIN_KEY, "/v1/admin/audit/list", json!({})).await;
    let entries = audit["entries"].as_array().expect("entries");
    let actions: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap_or_default(),
                e["actor"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    let api_actor = actions.last().expect("the API's change").1;
    assert!(api_actor.starts_with("admin:"), "{actions:?}");
    assert_eq!(
        actions,
        [
            ("project.create", api_actor),
            ("project.update", api_actor),
            ("jwt_key.add", api_actor),
            ("jwt_key.retire", api_actor),
            ("api_key.create", api_actor),
        ],
        "the console's changes are the key's, as through the API"
    );

    // The new project's key verifies tokens at once; the retired one's are refused.
    let old = hs256(DELTA_SECRET, Some("k1"), &claims("delta", "dan"));
    let (ws, _) = herald
        .open(&herald.url("delta", &format!("token={old}")), &[])
        .await
        .expect("upgrade");
    assert_eq!(Client { ws }.expect_close().await.0, 4002);
    let t = hs256(DELTA_SECRET_2, Some("k2"), &claims("delta", "dan"));
    let _dan = herald.connect("delta", &t).await;
    b.wait_text("tr[data-project=delta] td.connections", "1")
        .await;

    // Logged out: back to the login page, and the old session is gone.
    b.click("#logout").await;
    b.wait_text("button#login", "Log in").await;
}

/// Logs in with `key`; returns the cookie (`name=value`) and the page's CSRF token.
async fn login(addr: SocketAddr, key: &str) -> (String, String) {
    let form = format!("key={key}");
    let r = http_request(
        addr,
        "POST",
        "/console/login",
        &[("content-type", "application/x-www-form-urlencoded")],
        form.as_bytes(),
    )
    .await;
    assert_eq!(
        (r.status, r.header("location")),
        (303, Some("/console/")),
        "{r:?}"
    );
    let set = r.header("set-cookie").expect("a cookie");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(set.contains(attr), "{set}");
    }
    let cookie = set.split(';').next().expect("name=value").to_string();
    let page = http_request(addr, "GET", "/console/", &[("cookie", &cookie)], b"").await;
    assert_eq!(page.status, 200);
    let csp = page.header("content-security-policy").unwrap_or_default();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let csrf = page
        .body
        .split(r#"<meta name="herald-csrf" content=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the CSRF token in the page")
        .to_string();
    (cookie, csrf)
}

/// A console call with a session; returns the status and the JSON answer.
async fn call(
    addr: SocketAddr,
    cookie: &str,
    csrf: Option<&str>,
    method: &str,
    path: &str,
    body: Value,
) -> (u16, Value) {
    let mut head = vec![("content-type", "application/json"), ("cookie", cookie)];
    if let Some(c) = csrf {
        head.push(("x-herald-csrf", c));
    }
    let body = if method == "GET" {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    let r = http_request(addr, method, path, &head, &body).await;
    let v = if r.body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body))
    };
    (r.status, v)
}

#[tokio::test]
async fn a_session_is_its_key_s_needs_its_csrf_token_and_ends_with_its_key() {
    let herald = console_node().start().await;
    let h = herald.http;

    let r = http_request(
        h,
        "POST",
        "/console/login",
        &[("content-type", "application/x-www-form-urlencoded")],
        b"key=wrong-key-0123456789",
    )
    .await;
    assert_eq!(r.status, 401);
    assert!(r.body.contains("Unknown API key"), "{}", r.body);
    assert!(r.header("set-cookie").is_none());
    let r = http_request(h, "GET", "/console/", &[], b"").await;
    assert!(
        r.body.contains(r#"action="/console/login""#),
        "the login page"
    );

    // alpha's key: its project only, in the lists, the stats and the calls.
    let (cookie, csrf) = login(h, ALPHA_KEY).await;
    let _a = herald.connect("alpha", &token("alpha", "ann")).await;
    let _b = herald.connect("beta", &token("beta", "bob")).await;
    let (s, v) = call(
        h,
        &cookie,
        Some(&csrf),
        "POST",
        "/console/api/v1/admin/projects/list",
        json!({}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let ids: Vec<&str> = v["projects"]
        .as_array()
        .expect("projects")
        .iter()
        .filter_map(|p| p["project"].as_str())
        .collect();
    assert_eq!(ids, ["alpha"]);
    let stats = eventually(WAIT, async || {
        let (s, v) = call(
            h,
            &cookie,
            Some(&csrf),
            "GET",
            "/console/api/stats",
            json!({}),
        )
        .await;
        match v["projects"]["alpha"]["connections"].as_u64() {
            Some(1) if s == 200 => Ok(v),
            _ => Err(format!("{s} {v}")),
        }
    })
    .await;
    assert_eq!(
        stats["projects"].as_object().map(|p| p.len()),
        Some(1),
        "beta's connection is not alpha's to see: {stats}"
    );
    let (s, v) = call(
        h,
        &cookie,
        Some(&csrf),
        "POST",
        "/console/api/v1/connections/list",
        json!({"project": "beta", "user": "bob"}),
    )
    .await;
    assert_eq!((s, v["code"].as_str()), (403, Some("PERMISSION_DENIED")));

    // Without the CSRF token, or with another session's, or without the cookie: refused.
    let (admin_cookie, admin_csrf) = login(h, ADMIN_KEY).await;
    for (cookie, csrf) in [
        (cookie.as_str(), None),
        (cookie.as_str(), Some(admin_csrf.as_str())),
        ("herald_console=forged", Some(csrf.as_str())),
    ] {
        let (s, v) = call(h, cookie, csrf, "GET", "/console/api/stats", json!({})).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (401, Some("UNAUTHENTICATED")),
            "{v}"
        );
    }

    // Logged out: the session is gone.
    let (s, _) = call(
        h,
        &cookie,
        Some(&csrf),
        "POST",
        "/console/api/logout",
        json!({}),
    )
    .await;
    assert_eq!(s, 204);
    let (s, _) = call(
        h,
        &cookie,
        Some(&csrf),
        "GET",
        "/console/api/stats",
        json!({}),
    )
    .await;
    assert_eq!(s, 401);

    // A key created and then deleted through the API ends the sessions it opened.
    let (s, v) = api(
        h,
        ADMIN_KEY,
        "/v1/admin/projects/create",
        json!({"project": "gamma"}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (_, k) = api(
        h,
        ADMIN_KEY,
        "/v1/admin/api_keys/create",
        json!({"project": "gamma"}),
    )
    .await;
    let key = k["key"].as_str().expect("a key");
    let (gamma_cookie, gamma_csrf) = login(h, key).await;
    let (s, _) = call(
        h,
        &gamma_cookie,
        Some(&gamma_csrf),
        "GET",
        "/console/api/stats",
        json!({}),
    )
    .await;
    assert_eq!(s, 200);
    // The console deletes its own key: the admin session does it, as the admin key.
    let (s, v) = call(
        h,
        &admin_cookie,
        Some(&admin_csrf),
        "POST",
        "/console/api/v1/admin/api_keys/delete",
        json!({"project": "gamma", "id": k["id"]}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = call(
        h,
        &gamma_cookie,
        Some(&gamma_csrf),
        "GET",
        "/console/api/stats",
        json!({}),
    )
    .await;
    assert_eq!(s, 401, "the key is gone, and its session with it");
}
