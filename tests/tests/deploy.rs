//! `deploy/cluster.sh`: the local cluster script brings up the whole fabric from Debian packages
//! (redis-server, three nats-server, two edges, two routers) and stops it cleanly.

use std::path::PathBuf;
use std::process::Command;

use herald_tests::*;
use serde_json::json;

/// A base port below the ephemeral range whose 55 ports are free.
fn free_base() -> u16 {
    let seed = std::process::id() as u16;
    (0..200u16)
        .map(|i| 20_000 + (seed.wrapping_add(i * 97) % 9_000))
        .find(|b| (0..55).all(|o| std::net::TcpListener::bind(("127.0.0.1", b + o)).is_ok()))
        .expect("a free range of 55 ports")
}

fn script(arg: &str, base: u16, dir: &std::path::Path) -> std::process::Output {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/cluster.sh");
    Command::new("bash")
        .arg(path)
        .arg(arg)
        .env("HERALD_BIN", herald_bin())
        .env("HERALD_CLUSTER_DIR", dir)
        .env("BASE_PORT", base.to_string())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run deploy/cluster.sh")
}

#[tokio::test]
async fn the_local_cluster_script_starts_the_fabric_and_stops_it() {
    // Fail naming the server, never skip.
    herald_tests::cluster::server_bin("redis-server");
    herald_tests::cluster::server_bin("nats-server");
    let dir = tempfile::tempdir().expect("temp dir");
    let base = free_base();
    let out = script("start", base, dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "start failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let secret = std::fs::read_to_string(dir.path().join("secret")).expect("secret");
    let api_key = std::fs::read_to_string(dir.path().join("api_key")).expect("api key");
    let mut c = claims("demo", "alice");
    c["groups"] = json!(["news"]);
    let token = hs256(secret.trim(), Some("dev"), &c);
    let mut devices = Vec::new();
    for port in [base + 31, base + 32] {
        devices.push(connect_url(&format!("ws://127.0.0.1:{port}/ws/demo?token={token}")).await);
    }
    for (i, port) in [base + 41, base + 42].into_iter().enumerate() {
        let mut g = grpc_at(([127, 0, 0, 1], port).into(), Some(api_key.trim())).await;
        let r = send(&mut g, publish("demo", To::User("alice"), &i.to_string())).await;
        assert_eq!(r.edges, 2);
        let r = send(&mut g, publish("demo", To::Group("news"), "\"g\"")).await;
        assert_eq!(r.edges, 2);
        for d in &mut devices {
            assert_eq!(d.next_msg().await["data"], json!(i));
            assert_eq!(d.next_msg().await["data"], json!("g"));
        }
    }

    let out = script("stop", base, dir.path());
    assert!(out.status.success());
    let status = String::from_utf8_lossy(&script("status", base, dir.path()).stdout).to_string();
    assert_eq!(status.matches(": stopped").count(), 8, "{status}");
    // The edges closed their clients with going-away on the way out.
    for d in &mut devices {
        assert_eq!(d.expect_close().await.0, 1001);
    }
}

/// The Docker build context (the repository root, as deploy/compose.yaml and deploy/Dockerfile
/// say) has a `.dockerignore` that leaves out `target/` and `.git/`, and nothing the build reads.
#[test]
fn the_docker_build_context_leaves_out_the_build_directory() {
    let deploy = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let compose = std::fs::read_to_string(deploy.join("compose.yaml")).expect("compose.yaml");
    assert!(
        compose.contains("context: ..") && compose.contains("dockerfile: deploy/Dockerfile"),
        "deploy/compose.yaml builds from another context: move the .dockerignore there"
    );
    let dockerfile = std::fs::read_to_string(deploy.join("Dockerfile")).expect("Dockerfile");
    assert!(dockerfile.contains("docker build -f deploy/Dockerfile -t herald:dev ."));
    let root = deploy.join("..");
    let ignore = std::fs::read_to_string(root.join(".dockerignore"))
        .expect(".dockerignore at the build context's root (the repository root)");
    let patterns: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_start_matches('/').trim_end_matches('/'))
        .collect();
    for needed in ["target", ".git", "benches/results"] {
        assert!(
            patterns.contains(&needed),
            ".dockerignore does not leave out {needed}/: {patterns:?}"
        );
    }
    assert!(
        patterns.iter().all(|p| !p.starts_with('!')),
        "no exceptions expected: {patterns:?}"
    );
    // What `cargo build --locked -p herald` reads: the workspace manifest and lock, every member's
    // manifest and sources, the proto files.
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("Cargo.toml");
    let members: Vec<String> = manifest
        .lines()
        .find_map(|l| l.strip_prefix("members = "))
        .expect("workspace members")
        .trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .map(|m| m.trim().trim_matches('"').to_string())
        .collect();
    let mut read = vec![
        "Cargo.toml".to_string(),
        "Cargo.lock".into(),
        "proto/proto".into(),
        "proto/build.rs".into(),
    ];
    for m in &members {
        read.extend([m.clone(), format!("{m}/Cargo.toml"), format!("{m}/src")]);
    }
    for p in &patterns {
        assert!(
            !matches!(*p, "*" | "**" | "." | "**/*"),
            ".dockerignore leaves out everything: {p}"
        );
        assert!(
            !read.iter().any(|r| r == p),
            ".dockerignore leaves out {p}, which the build reads"
        );
    }
}
