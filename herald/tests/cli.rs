//! The binary as a newcomer meets it: bad configuration refused with every problem named (the
//! setting, or the variable that set it), `herald dev`'s guide and log, the help text.

use std::io::{BufRead as _, BufReader, Read as _};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn herald() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_herald"));
    // The tests' own environment must not steer the binary.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().to_string();
        if k.to_ascii_uppercase().starts_with("HERALD_") || k == "RUST_LOG" || k == "NO_COLOR" {
            c.env_remove(k);
        }
    }
    c
}

/// What `herald dev` (on ports the kernel picks) printed by the end of its guide: stdout, and
/// stderr (a pipe, not a terminal) up to then.
fn dev_session(env: &[(&str, &str)]) -> (String, String) {
    let mut child = herald()
        .args(["dev", "--ws-listen", "127.0.0.1:0"])
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run herald dev");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut out = String::new();
    // The guide's last line signs a token for another user.
    while !out.contains(" token --secret ") {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                out.push_str(&line);
                out.push('\n');
            }
            Err(_) => {
                let _ = child.kill();
                let mut err = String::new();
                let _ = child.stderr.take().map(|mut e| e.read_to_string(&mut err));
                panic!("no dev guide in time; stdout: {out}\nstderr: {err}");
            }
        }
    }
    child.kill().expect("kill");
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read stderr");
    let _ = child.wait();
    (out, err)
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

#[test]
fn config_file_errors_name_the_setting_without_a_prefix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("h.toml");
    std::fs::write(&cfg, "[edge]\nlisten_port = 1\n").expect("write");
    let out = herald()
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("  - edge.listen_port: unknown setting"),
        "{err}"
    );
    assert!(!err.contains("default."), "{err}");
}

#[test]
fn environment_errors_name_the_variable_set() {
    let run = |k: &str, v: &str| {
        let out = herald().arg("serve").env(k, v).output().expect("run");
        assert_eq!(out.status.code(), Some(64), "{k}={v}");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    // A misspelt section: the variable is configuration (it has `__`), and unknown.
    let err = run("HERALD_EGDE__PING_INTERVAL_SECS", "3");
    assert!(
        err.contains("  - HERALD_EGDE__PING_INTERVAL_SECS: unknown setting `egde`"),
        "{err}"
    );
    let err = run("HERALD_EDGE__PING_INTERVAL_SECS", "soon");
    assert!(
        err.contains("  - HERALD_EDGE__PING_INTERVAL_SECS: invalid type"),
        "{err}"
    );
    assert!(!err.contains("EDGE.PING_INTERVAL_SECS"), "{err}");
    // A key given where a list is expected is named by its variable, never echoed.
    let err = run("HERALD_ROUTER__ADMIN_API_KEYS", "admin-key-echo-0123456789");
    assert!(
        err.contains("  - HERALD_ROUTER__ADMIN_API_KEYS: invalid type: found a string"),
        "{err}"
    );
    assert!(!err.contains("admin-key-echo-0123456789"), "{err}");
    // A value read but refused by validation names the setting and the variable.
    let err = run("HERALD_EDGE__PING_INTERVAL_SECS", "0");
    assert!(
        err.contains(
            "edge.ping_interval_secs: must be greater than 0 \
             (set by HERALD_EDGE__PING_INTERVAL_SECS)"
        ),
        "{err}"
    );
}

#[test]
fn other_herald_variables_are_warned_about_and_ignored() {
    let (out, err) = dev_session(&[
        ("HERALD_BIN", "/opt/herald/bin/herald"),
        ("HERALD_API_KEY", "the-cli-key-0123456789"),
    ]);
    assert!(out.starts_with("herald ready "), "{out}");
    let warning = err
        .lines()
        .find(|l| l.contains("WARN") && l.contains("HERALD_BIN"))
        .unwrap_or_else(|| panic!("no warning naming HERALD_BIN: {err}"));
    assert!(warning.contains("ignored"), "{warning}");
    // The CLI's own variables are neither configuration nor worth a warning.
    assert!(!err.contains("HERALD_API_KEY"), "{err}");
}

#[test]
fn the_config_file_may_come_from_herald_config() {
    let out = herald()
        .arg("serve")
        .env("HERALD_CONFIG", "/nonexistent/from-env.toml")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/from-env.toml"), "{err}");
}

#[test]
fn the_dev_guide_runs_this_binary_not_cargo() {
    let (out, _) = dev_session(&[]);
    let exe = std::fs::canonicalize(env!("CARGO_BIN_EXE_herald")).expect("binary path");
    let exe = exe.display().to_string();
    for cmd in [
        "publish -p demo --group news",
        "list -p demo --user alice",
        "token --secret",
    ] {
        assert!(out.contains(&format!("  {exe} {cmd}")), "{cmd}: {out}");
    }
    assert!(!out.contains("cargo run"), "{out}");
}

#[test]
fn logs_off_a_terminal_have_no_colour_and_plain_addresses() {
    let (out, err) = dev_session(&[]);
    assert!(
        !err.contains("\x1b["),
        "escape codes in a piped log: {err:?}"
    );
    let ready = err
        .lines()
        .find(|l| l.contains("herald ready"))
        .unwrap_or_else(|| panic!("no ready line in the log: {err}"));
    assert!(!ready.contains("Some("), "{ready}");
    // The same addresses as the machine-readable line on stdout.
    let first = out.lines().next().expect("ready line");
    for name in ["ws", "grpc", "admin"] {
        let addr = first
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .expect("address");
        assert!(ready.contains(&format!("{name}={addr}")), "{name}: {ready}");
    }
    assert!(ready.contains("role=all"), "{ready}");
}

#[test]
fn json_logs_stay_json() {
    let (_, err) = dev_session(&[("HERALD_LOG__FORMAT", "json")]);
    let mut ready = None;
    for line in err.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
        if v["fields"]["message"] == "herald ready" {
            ready = Some(v);
        }
    }
    let ready = ready.unwrap_or_else(|| panic!("no ready line: {err}"));
    let ws = ready["fields"]["ws"].as_str().expect("ws as a string");
    assert!(ws.parse::<std::net::SocketAddr>().is_ok(), "{ready}");
}

#[test]
fn serve_help_covers_the_cluster_node_and_herald_config() {
    let out = herald().args(["serve", "--help"]).output().expect("run");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("one node of a cluster"), "{help}");
    assert!(help.contains("--role"), "{help}");
    assert!(help.contains("[env: HERALD_CONFIG"), "{help}");
    assert!(help.contains("HERALD_<SECTION>__<FIELD>"), "{help}");
    assert!(!help.contains("single-node Herald"), "{help}");
    let out = herald().arg("--help").output().expect("run");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(!help.contains("single-node push fabric"), "{help}");
}

#[test]
fn docs_say_what_the_binary_does() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let config = std::fs::read_to_string(root.join("docs/configuration.md")).expect("docs");
    // Duplicate API keys are refused (an_api_key_used_twice_is_refused_without_echoing_it).
    assert!(
        !config.contains("are not reported"),
        "docs/configuration.md"
    );
    assert!(
        config.contains("is refused at start and on reload"),
        "docs/configuration.md"
    );
    // A `HERALD_*` name without `__` is warned about, not an error.
    assert!(!config.contains("(e.g. `HERALD_FOO`) is an error"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    assert!(
        !readme.contains("cargo run -q -p herald -- publish"),
        "README.md"
    );
}
