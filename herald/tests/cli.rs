//! The binary's start-up checks: bad configuration is refused with every problem named.

use std::process::Command;

fn herald() -> Command {
    Command::new(env!("CARGO_BIN_EXE_herald"))
}

#[test]
fn missing_key_file_exits_non_zero_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("h.toml");
    std::fs::write(
        &cfg,
        r#"
[edge]
ping_interval_secs = 0
[[projects]]
id = "Bad Id"
[[projects.keys]]
alg = "ES256"
public_key_file = "/nonexistent/es256.pem"
"#,
    )
    .expect("write");
    let out = herald()
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/es256.pem"), "{err}");
    assert!(err.contains("edge.ping_interval_secs"), "{err}");
    assert!(err.contains("projects[0]"), "{err}");
}

#[test]
fn missing_config_file_and_unknown_settings_are_named() {
    let out = herald()
        .args(["serve", "--config", "/nonexistent/herald.toml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/herald.toml"));

    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("h.toml");
    std::fs::write(&cfg, "[edge]\nlisten_port = 1\n").expect("write");
    let out = herald()
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("listen_port"));
}

#[test]
fn token_command_signs_a_verifiable_token() {
    let out = herald()
        .args([
            "token",
            "--secret",
            "0123456789abcdef0123456789abcdef",
            "-p",
            "demo",
            "--sub",
            "alice",
            "--groups",
            "a,b",
        ])
        .output()
        .expect("run");
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).expect("utf8");
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    v.set_audience(&["demo"]);
    let data = jsonwebtoken::decode::<serde_json::Value>(
        token.trim(),
        &jsonwebtoken::DecodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
        &v,
    )
    .expect("valid token");
    assert_eq!(data.claims["groups"], serde_json::json!(["a", "b"]));
}

#[test]
fn an_api_key_used_twice_is_refused_without_echoing_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("h.toml");
    let text = r#"
[router]
admin_api_keys = ["shared-secret-key-0001"]

[[projects]]
id = "a"
api_keys = ["shared-secret-key-0001"]
[[projects.keys]]
alg = "HS256"
secret = "0123456789abcdef0123456789abcdef"

[[projects]]
id = "b"
api_keys = ["project-b-key-000001", "project-b-key-000001"]
[[projects.keys]]
alg = "HS256"
secret = "0123456789abcdef0123456789abcdef"
"#;
    std::fs::write(&cfg, text).expect("write");
    let out = herald()
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("projects[0] (a).api_keys[0]: the same key as router.admin_api_keys[0]"),
        "{err}"
    );
    assert!(
        err.contains("projects[1] (b).api_keys[1]: the same key as projects[1] (b).api_keys[0]"),
        "{err}"
    );
    assert!(!err.contains("shared-secret-key-0001"), "{err}");
}
