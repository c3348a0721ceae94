//! `herald admin ...`: the admin API from the command line against a running router: projects
//! created, shown, updated (origins and address lists changed one at a time, the others kept),
//! disabled and deleted; token keys added and retired; API keys created (shown once) and revoked;
//! the audit log; refusals with the API's code and message.

use std::process::Output;

use herald_tests::*;

const S1: &str = "gamma-secret-one-0123456789abcdef012345";
const S2: &str = "gamma-secret-two-0123456789abcdef012345";

/// Runs `herald admin <args>` against `herald`'s router with `key`.
async fn admin(herald: &Herald, key: &str, args: &[&str]) -> Output {
    let mut c = tokio::process::Command::new(herald_bin());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy()
            .to_ascii_uppercase()
            .starts_with("HERALD_")
        {
            c.env_remove(k);
        }
    }
    let out = c
        .arg("admin")
        .args(args)
        .env("HERALD_ROUTER", format!("http://{}", herald.grpc))
        .env("HERALD_API_KEY", key)
        .output();
    tokio::time::timeout(WAIT, out)
        .await
        .expect("the CLI answers in time")
        .expect("run herald admin")
}

/// Runs a command that must succeed; returns its stdout.
async fn ok(herald: &Herald, key: &str, args: &[&str]) -> String {
    let out = admin(herald, key, args).await;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "herald admin {args:?}: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs a command that must fail; returns its stderr.
async fn fails(herald: &Herald, key: &str, args: &[&str]) -> String {
    let out = admin(herald, key, args).await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "herald admin {args:?} must fail"
    );
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// The value of `name` in `get`'s `name<TAB>value` lines (the first one).
fn field<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix('\t'))
        .unwrap_or_else(|| panic!("no {name} in {out}"))
}

#[tokio::test]
async fn projects_keys_origins_and_address_lists_are_managed_from_the_command_line() {
    let herald = herald().start().await;
    let h = &herald;

    let list = ok(h, ADMIN_KEY, &["projects", "list"]).await;
    assert_eq!(
        list,
        "project\tsource\tstate\tjwt_keys\tapi_keys\nalpha\tconfig\tenabled\t\t1\nbeta\tconfig\tenabled\t\t1\n"
    );

    // Created with its first key, origins and an address list.
    let created = ok(
        h,
        ADMIN_KEY,
        &[
            "projects",
            "create",
            "gamma",
            "--kid",
            "k1",
            "--secret",
            S1,
            "--origins",
            "https://app.example.com,https://*.example.org",
            "--deny-ips",
            "10.9.0.0/16",
            "--permessage-deflate",
        ],
    )
    .await;
    assert_eq!(field(&created, "source"), "api");
    assert_eq!(field(&created, "permessage_deflate"), "true");
    assert_eq!(field(&created, "jwt_key"), "k1\tHS256");
    assert_eq!(
        field(&created, "origins"),
        "https://app.example.com,https://*.example.org"
    );
    assert_eq!(field(&created, "deny_ips"), "10.9.0.0/16");
    assert!(!created.contains(S1), "no secret is shown");
    let t1 = hs256(S1, Some("k1"), &claims("gamma", "gus"));
    let _gus = herald.connect("gamma", &t1).await;

    // An API key, shown once on stdout; it manages its project only.
    let out = admin(h, ADMIN_KEY, &["api-keys", "create", "gamma"]).await;
    assert!(out.status.success());
    let key = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(key.starts_with("hk_") && key.len() == 51, "{key}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("shown once"), "{stderr}");
    let own = ok(h, &key, &["projects", "list"]).await;
    assert_eq!(own.lines().skip(1).count(), 1, "{own}");
    assert!(own.contains("\ngamma\tapi\tenabled\tk1\t1\n"), "{own}");
    let e = fails(h, &key, &["projects", "get", "alpha"]).await;
    assert!(
        e.contains("PermissionDenied: this API key does not belong to that project"),
        "{e}"
    );

    // One limit changed, the others kept; a list emptied with "".
    let updated = ok(
        h,
        &key,
        &[
            "projects",
            "update",
            "gamma",
            "--allow-ips",
            "127.0.0.0/8,10.0.0.0/8",
        ],
    )
    .await;
    assert_eq!(field(&updated, "allow_ips"), "127.0.0.0/8,10.0.0.0/8");
    assert_eq!(field(&updated, "deny_ips"), "10.9.0.0/16");
    assert_eq!(
        field(&updated, "origins"),
        "https://app.example.com,https://*.example.org"
    );
    let updated = ok(
        h,
        ADMIN_KEY,
        &[
            "projects",
            "update",
            "gamma",
            "--deny-ips",
            "",
            "--require-origin",
            "false",
            "--max-connections-per-user",
            "3",
        ],
    )
    .await;
    assert_eq!(field(&updated, "deny_ips"), "");
    assert_eq!(field(&updated, "require_origin"), "false");
    // Not named: kept.
    assert_eq!(field(&updated, "permessage_deflate"), "true");
    let updated = ok(
        h,
        ADMIN_KEY,
        &[
            "projects",
            "update",
            "gamma",
            "--permessage-deflate",
            "false",
        ],
    )
    .await;
    assert_eq!(field(&updated, "permessage_deflate"), "false");
    assert_eq!(field(&updated, "max_connections_per_user"), "3");
    assert_eq!(field(&updated, "max_connections_per_user"), "3");
    assert_eq!(field(&updated, "allow_ips"), "127.0.0.0/8,10.0.0.0/8");
    let e = fails(h, ADMIN_KEY, &["projects", "update", "gamma"]).await;
    assert!(e.contains("nothing to change"), "{e}");
    let e = fails(
        h,
        ADMIN_KEY,
        &["projects", "update", "gamma", "--deny-ips", "nope"],
    )
    .await;
    assert!(e.contains("InvalidArgument"), "{e}");

    // Rotation: add k2, retire k1.
    let keys = ok(
        h,
        &key,
        &["keys", "add", "gamma", "--kid", "k2", "--secret", S2],
    )
    .await;
    let kids: Vec<&str> = keys
        .lines()
        .filter_map(|l| l.strip_prefix("jwt_key\t"))
        .collect();
    assert_eq!(kids, ["k1\tHS256", "k2\tHS256"]);
    let e = fails(
        h,
        &key,
        &["keys", "add", "gamma", "--kid", "k2", "--secret", S2],
    )
    .await;
    assert!(e.contains("AlreadyExists"), "{e}");
    ok(h, &key, &["keys", "retire", "gamma", "--kid", "k1"]).await;
    let t2 = hs256(S2, Some("k2"), &claims("gamma", "gus"));
    let _gus2 = herald.connect("gamma", &t2).await;
    let got = ok(h, ADMIN_KEY, &["projects", "get", "gamma"]).await;
    assert_eq!(field(&got, "jwt_key"), "k2\tHS256");

    // Disabled and enabled; refusals carry the API's code and message.
    assert_eq!(
        ok(h, ADMIN_KEY, &["projects", "disable", "gamma"]).await,
        "disabled gamma\n"
    );
    assert_eq!(
        field(
            &ok(h, ADMIN_KEY, &["projects", "get", "gamma"]).await,
            "state"
        ),
        "disabled"
    );
    ok(h, ADMIN_KEY, &["projects", "enable", "gamma"]).await;
    let e = fails(h, ALPHA_KEY, &["projects", "create", "zeta"]).await;
    assert!(e.contains("PermissionDenied"), "{e}");
    let e = fails(h, ALPHA_KEY, &["projects", "disable", "alpha"]).await;
    assert!(
        e.contains("FailedPrecondition") && e.contains("configuration file"),
        "{e}"
    );

    // The API key revoked: it no longer works.
    let id = field(
        &ok(h, ADMIN_KEY, &["projects", "get", "gamma"]).await,
        "api_key",
    )
    .split('\t')
    .next()
    .expect("an id")
    .to_string();
    assert_eq!(
        ok(h, ADMIN_KEY, &["api-keys", "revoke", "gamma", "--id", &id]).await,
        "revoked; 0 API keys left in gamma\n"
    );
    let e = fails(h, &key, &["projects", "list"]).await;
    assert!(e.contains("Unauthenticated"), "{e}");

    // The audit log, as the API has it.
    let audit = ok(h, ADMIN_KEY, &["audit", "-p", "gamma"]).await;
    let actions: Vec<(&str, &str)> = audit
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            Some((*f.get(2)?, *f.get(3)?))
        })
        .map(|(actor, action)| (actor.split(':').next().unwrap_or_default(), action))
        .collect();
    assert_eq!(
        actions,
        [
            ("admin", "project.create"),
            ("admin", "api_key.create"),
            ("project", "project.update"),
            ("admin", "project.update"),
            ("admin", "project.update"),
            ("project", "jwt_key.add"),
            ("project", "jwt_key.retire"),
            ("admin", "project.update"),
            ("admin", "project.update"),
            ("admin", "api_key.delete"),
        ],
        "{audit}"
    );
    let one = ok(h, ADMIN_KEY, &["audit", "-p", "gamma", "--limit", "2"]).await;
    assert_eq!(one.lines().count(), 3, "a header and two entries: {one}");

    assert_eq!(
        ok(h, ADMIN_KEY, &["projects", "delete", "gamma"]).await,
        "deleted gamma\n"
    );
    let (ws, _) = herald
        .open(&herald.url("gamma", &format!("token={t2}")), &[])
        .await
        .expect("upgrade");
    let (code, _, _) = Client { ws }.expect_close().await;
    assert_eq!(code, 4004, "a deleted project is unknown");
}
