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
fn idle_with_mqtt_and_stomp_clients_beside_native_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("idle.json");
    let stdout = bench(&[
        "idle",
        "--server",
        "herald,herald-mqtt,herald-stomp",
        "--connections",
        "30",
        "--rate",
        "500",
        "--json",
        json.to_str().expect("utf8 path"),
    ]);
    assert!(stdout.contains("herald-mqtt vs herald: "), "{stdout}");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json result")).expect("json");
    let runs = v.as_array().expect("one result per server");
    assert_eq!(runs.len(), 3, "{v}");
    for (r, server) in runs.iter().zip(["herald", "herald-mqtt", "herald-stomp"]) {
        assert_eq!(r["server"], server, "{r}");
        assert_eq!(r["connected"], 30, "{r}");
        assert_eq!(r["received"], 30, "{r}");
    }
    assert_eq!(runs[0]["pinged"], 30, "{v}");
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
        "herald,herald-mqtt,herald-stomp,nats,mosquitto",
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
    assert_eq!(results.len(), 5);
    assert_eq!(results[1]["server"], "herald-mqtt");
    assert_eq!(results[2]["server"], "herald-stomp");
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
    // The client-side floor is reported beside the server's figures (in 10 ms ticks, so a run
    // this short may read 0).
    for k in [
        "publisher_cpu_us_per_message",
        "clients_cpu_us_per_delivery",
    ] {
        let v = results[0][k].as_f64();
        assert!(
            v.is_some_and(|v| v.is_finite() && v >= 0.0),
            "{k}: {results}"
        );
    }
}

/// Every JSON object at the start of `stdout`, one after the other.
fn json_objects(stdout: &str) -> Vec<serde_json::Value> {
    serde_json::Deserializer::from_str(stdout)
        .into_iter::<serde_json::Value>()
        .map_while(Result::ok)
        .collect()
}

#[test]
fn storm_connects_everyone_over_ws_and_wss() {
    let runs = json_objects(&bench(&[
        "storm",
        "--connections",
        "60",
        "--concurrency",
        "16",
        "--per-worker",
        "25",
    ]));
    assert_eq!(runs.len(), 2, "{runs:?}");
    for (v, tls) in runs.iter().zip([false, true]) {
        assert_eq!(v["tls"], tls, "{v}");
        assert_eq!(v["connected"], 60, "{v}");
        assert_eq!(v["failed"], 0, "{v}");
        assert_eq!(v["workers"], 3, "{v}");
        assert!(
            v["connects_per_sec"].as_f64().is_some_and(|r| r > 0.0),
            "{v}"
        );
    }
}

#[test]
fn fanout_over_wss() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().to_str().expect("utf8 path");
    bench(&[
        "fanout",
        "--tls",
        "--server-name",
        "herald.test",
        "--subscribers",
        "10",
        "--rate",
        "20",
        "--seconds",
        "1",
        "--out",
        out,
    ]);
    let results: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("fanout-wss-10x20.json")).expect("json result"),
    )
    .expect("json");
    assert_eq!(results[0]["tls"], true);
    assert_eq!(results[0]["expected"], 200);
    assert_eq!(results[0]["missing"], 0, "{results}");
}

#[test]
fn wss_trusts_the_given_ca_for_the_given_name_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_str().expect("utf8 path");
    bench(&["pki", "--dir", d, "--name", "herald.test"]);
    let (ca, cert, key) = (
        format!("{d}/ca.pem"),
        format!("{d}/server.pem"),
        format!("{d}/server.key"),
    );
    let storm = |name: &str| {
        json_objects(&bench(&[
            "storm",
            "--modes",
            "wss",
            "--connections",
            "5",
            "--ca",
            &ca,
            "--cert",
            &cert,
            "--key",
            &key,
            "--server-name",
            name,
        ]))
        .remove(0)
    };
    let ok = storm("herald.test");
    assert_eq!(
        (ok["connected"].as_u64(), ok["failed"].as_u64()),
        (Some(5), Some(0)),
        "{ok}"
    );
    // The certificate does not name other.test: every handshake fails, and the run says so.
    let refused = storm("other.test");
    assert_eq!(
        (refused["connected"].as_u64(), refused["failed"].as_u64()),
        (Some(0), Some(5)),
        "{refused}"
    );
}

#[test]
fn cluster_delivers_through_two_edges_a_router_redis_and_nats() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().to_str().expect("utf8 path");
    bench(&[
        "cluster",
        "--subscribers",
        "10",
        "--rate",
        "20",
        "--seconds",
        "1",
        "--out",
        out,
    ]);
    bench(&[
        "cluster",
        "--unicast",
        "--subscribers",
        "10",
        "--rate",
        "20",
        "--seconds",
        "1",
        "--out",
        out,
    ]);
    for (file, expected) in [("cluster-fanout-10x20", 200), ("cluster-unicast-10x20", 20)] {
        let r: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.path().join(format!("{file}.json"))).expect("json result"),
        )
        .expect("json");
        assert_eq!(r[0]["server"], "cluster", "{r}");
        assert_eq!(r[0]["expected"], expected, "{r}");
        assert_eq!(r[0]["missing"], 0, "{r}");
        assert_eq!(r[0]["client_errors"], 0, "{r}");
    }
}

#[test]
fn history_appends_in_one_round_trip_and_reports_memory() {
    let v = json_head(&bench(&[
        "history",
        "--appends",
        "40",
        "--concurrency",
        "1,4",
        "--size",
        "10",
        "--streams",
        "2",
    ]));
    let runs = v["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 4, "{v}");
    for r in runs {
        assert_eq!(r["round_trips_per_call"], 1.0, "{v}");
        assert!(r["p99_us"].as_u64().is_some_and(|p| p > 0), "{v}");
    }
    // A 100-byte message costs its bytes and more, in Redis.
    assert!(
        v["redis_bytes_per_message_memory_usage"]
            .as_f64()
            .is_some_and(|b| b > 100.0),
        "{v}"
    );
    assert!(v["memory_history_bytes_per_message_rss"].as_f64().is_some());
}
