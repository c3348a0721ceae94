//! Smoke runs of every scenario with small numbers, so the harness cannot rot. The full runs
//! are not part of the test suite (see benches/README.md).

use std::process::Command;

fn bench(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_herald-bench"))
        .arg("--quiet")
        .args(args)
        .output()
        .expect("run herald-bench");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "herald-bench {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn json_head(stdout: &str) -> serde_json::Value {
    let end = stdout.find("\n}").expect("a JSON object") + 2;
    serde_json::from_str(&stdout[..end]).expect("json")
}

#[test]
fn idle_reports_memory_per_connection_from_several_workers() {
    // 50 connections at most 20 per worker: three worker processes, results merged.
    let v = json_head(&bench(&[
        "idle",
        "--connections",
        "50",
        "--rate",
        "500",
        "--per-worker",
        "20",
    ]));
    assert_eq!(v["connections"], 50);
    assert_eq!(v["connected"], 50, "{v}");
    assert_eq!(v["failed"], 0);
    assert_eq!(v["received"], 50, "{v}");
    assert_eq!(v["pinged"], 50, "{v}");
    assert_eq!(v["workers"], 3, "{v}");
    assert!(v["kib_per_connection"].as_f64().is_some());
}

#[test]
fn idle_against_a_peer() {
    let v = json_head(&bench(&[
        "idle",
        "--server",
        "nats",
        "--connections",
        "30",
        "--rate",
        "500",
    ]));
    assert_eq!(v["connected"], 30, "{v}");
    assert_eq!(v["received"], 30, "{v}");
}

#[test]
fn fanout_against_herald_and_peers_delivers_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().to_str().expect("utf8 path");
    bench(&[
        "fanout",
        "--subscribers",
        "20",
        "--rate",
        "20",
        "--seconds",
        "1",
        "--servers",
        "herald,nats,mosquitto",
        "--per-worker",
        "8",
        "--out",
        out,
    ]);
    let results: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("fanout-20x20.json")).expect("json result"),
    )
    .expect("json");
    let results = results.as_array().expect("one result per server");
    assert_eq!(results.len(), 3);
    for r in results {
        assert_eq!(r["expected"], 400, "{r}");
        assert_eq!(r["missing"], 0, "{r}");
        assert!(
            r["latency_ms"][2].as_f64().is_some_and(|p99| p99 > 0.0),
            "{r}"
        );
    }
    assert!(dir.path().join("fanout-20x20.svg").is_file());
    assert!(dir.path().join("fanout-20x20.md").is_file());
}

#[test]
fn unicast_reaches_each_user() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().to_str().expect("utf8 path");
    bench(&[
        "fanout",
        "--unicast",
        "--subscribers",
        "10",
        "--rate",
        "50",
        "--seconds",
        "1",
        "--out",
        out,
    ]);
    let results: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("unicast-10x50.json")).expect("json result"),
    )
    .expect("json");
    assert_eq!(results[0]["expected"], 50);
    assert_eq!(results[0]["missing"], 0);
}

#[test]
fn storm_connects_everyone() {
    let v = json_head(&bench(&[
        "storm",
        "--connections",
        "100",
        "--concurrency",
        "16",
    ]));
    assert_eq!(v["connected"], 100);
    assert_eq!(v["failed"], 0);
}
