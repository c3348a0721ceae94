//! The reduced `million` run: 50,000 connections over 3 edges, 3 worker processes, a router,
//! redis-server and nats-server, so the scenario cannot rot. The full run is not part of the test
//! suite (see benches/README.md).

use std::process::Command;

/// A finished run: its JSON result, its error output and the directory holding its files.
struct Finished {
    r: serde_json::Value,
    stderr: String,
    dir: tempfile::TempDir,
}

/// Runs `herald-bench million` with `args` (each a group of arguments; `--out` is added),
/// asserts it succeeded and reads its JSON result.
fn million(args: &[&[&str]]) -> Finished {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().to_str().expect("utf8 path");
    let run = Command::new(env!("CARGO_BIN_EXE_herald-bench"))
        .arg("million")
        .args(args.iter().flat_map(|a| a.iter()))
        .args(["--out", out])
        .output()
        .expect("run herald-bench million");
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(
        run.status.success(),
        "herald-bench million {args:?} failed:\n{}\n{stderr}",
        String::from_utf8_lossy(&run.stdout)
    );
    let n = args
        .iter()
        .flat_map(|a| a.iter())
        .skip_while(|a| **a != "--connections")
        .nth(1)
        .expect("--connections");
    let r = serde_json::from_slice(
        &std::fs::read(dir.path().join(format!("million-{n}.json"))).expect("json result"),
    )
    .expect("json");
    Finished { r, stderr, dir }
}

#[test]
fn million_reduced_connects_everyone_and_delivers_everything() {
    let Finished { r, stderr, dir } = million(&[
        &["--connections", "50000", "--edges", "3"],
        &["--rate", "4000", "--user-sample", "500"],
        // Deadlines for a hung run, not for speed: under CPU load a debug build connects a few
        // hundred per second (352/s beside stress-ng --cpu 2, where --max-secs 150 failed), and
        // 2,000 handshakes in flight overflow the edges' backlogs into SYN retries past 30 s
        // (37 of 50,000 failed so). 500 in flight keep up with what the edges accept.
        &["--max-secs", "600", "--deliver-timeout-secs", "120"],
        &["--inflight", "500", "--connect-timeout-secs", "120"],
    ]);
    assert_eq!(r["connected"], 50_000, "{stderr}");
    assert_eq!(r["not_connected"], 0);
    assert_eq!(r["workers"], 3);
    assert!(r["limit_hit"].is_null(), "{}", r["limit_hit"]);
    let per_edge = r["per_edge"].as_array().expect("per edge");
    assert_eq!(per_edge.len(), 3);
    for e in per_edge {
        assert!(
            (16_600..=16_700).contains(&e["open"].as_u64().expect("open")),
            "{e}"
        );
        assert!(e["rss_kib"].as_u64().expect("rss") > e["rss_kib_before"].as_u64().expect("rss"));
    }
    // PSS counts the binary's shared pages once over the three edges: below their summed RSS.
    let (pss, rss) = (
        r["edges_pss_mib"].as_f64().expect("pss"),
        r["edges_rss_mib"].as_f64().expect("rss"),
    );
    assert!(pss > 0.0 && pss < rss, "PSS {pss} MiB, RSS {rss} MiB");
    // Every kind of message reached every connected receiver, and only them.
    for kind in ["broadcast", "group", "user"] {
        let d = &r[kind];
        assert_eq!(d["missing"], 0, "{kind}: {d}");
        assert!(d["expected"].as_u64().expect("expected") > 0, "{kind}: {d}");
        assert_eq!(d["received"], d["expected"], "{kind}: {d}");
    }
    assert_eq!(r["broadcast"]["expected"], 50_000);
    assert_eq!(r["group"]["expected"], 500);
    assert_eq!(r["duplicates"], 0);
    // CPU by role in each phase: the edges and the client ends worked while connecting and
    // while the broadcast went out.
    let phases = r["phases"].as_array().expect("phases");
    let names: Vec<&str> = phases.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(
        names,
        ["connect", "broadcast", "group g0", "user"],
        "{phases:?}"
    );
    assert_eq!(phases[0]["events"], 50_000);
    assert_eq!(phases[1]["events"], 50_000);
    for p in &phases[..2] {
        let cpu = p["cpu_secs"].as_array().expect("cpu");
        assert!(cpu[0].as_f64().expect("edges") > 0.0, "{p}");
        assert!(cpu[1].as_f64().expect("clients") > 0.0, "{p}");
        assert!(p["machine_busy_secs"].as_f64().expect("busy") > 0.0, "{p}");
    }
    assert!(
        r["sampled_users_with_two_devices"]
            .as_u64()
            .expect("sample")
            > 0
    );
    assert!(
        r["broadcast"]["seconds_to_all"]
            .as_f64()
            .expect("time to all")
            > 0.0
    );
    assert!(r["redis_keys"].as_u64().expect("keys") > 40_000);
    assert!(r["edges_kib_per_connection"].as_f64().expect("edge memory") > 0.0);
    assert!(
        r["kernel_after"]["sockstat"]["tcp_inuse"]
            .as_u64()
            .expect("sockstat")
            >= 40_000
    );
    // The run reported while it ran, and stopped everything it started.
    assert!(stderr.contains("open"), "{stderr}");
    assert!(stderr.contains("stopping workers"), "{stderr}");
    assert!(
        stderr.contains("redis-server and nats-server at nice -10"),
        "{stderr}"
    );
    assert!(dir.path().join("million-50000.md").is_file());
    assert!(dir.path().join("million-50000.svg").is_file());
    for pid in r["pids"].as_array().expect("pids") {
        let pid = pid.as_u64().expect("pid");
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} still runs"
        );
    }
    assert!(r["pids"].as_array().expect("pids").len() >= 3 + 1 + 2 + 2);
    let log_dir = stderr
        .lines()
        .find_map(|l| l.split("logs in ").nth(1))
        .map(|s| s.trim_end_matches(')').to_string())
        .expect("log dir in the output");
    assert!(
        !std::path::Path::new(&log_dir).exists(),
        "a successful run removes its state directory"
    );
}

/// `--presence`: one group of every connection (`--groups 1`, no second devices) over 2 edges;
/// presence and the listing peer each see every member, with their bytes and CPU, and Redis
/// memory per member is reported.
#[test]
fn million_presence_reports_a_whole_group() {
    let Finished { r, stderr, dir } = million(&[
        &["--connections", "3000", "--edges", "2"],
        &["--groups", "1", "--second-devices-percent", "0"],
        &["--rate", "2000", "--user-sample", "10", "--no-sysctl"],
        &["--presence", "--presence-repeats", "2"],
        // Held idle 4 s with a ping every second: the keepalive's cost is reported.
        &["--hold-secs", "4", "--ping-interval-secs", "1"],
        &["--max-secs", "300", "--deliver-timeout-secs", "60"],
        &["--inflight", "200", "--connect-timeout-secs", "60"],
    ]);
    assert_eq!(r["connected"], 3_000, "{stderr}");
    let p = &r["presence"];
    assert_eq!(p["members"], 3_000, "{p}");
    assert_eq!(
        (&p["connections"], &p["users_total"], &p["users_exact"]),
        (
            &serde_json::json!(3_000),
            &serde_json::json!(3_000),
            &serde_json::json!(true)
        ),
        "{p}"
    );
    let rows = p["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 4, "{p}");
    // Full presence in pages of 5,000, a first page of 1,000, full in pages of 1,000, the listing.
    let entries: Vec<u64> = rows
        .iter()
        .map(|r| r["entries"].as_u64().expect("entries"))
        .collect();
    assert_eq!(entries, [3_000, 1_000, 3_000, 3_000], "{p}");
    let pages: Vec<u64> = rows
        .iter()
        .map(|r| r["pages"].as_u64().expect("pages"))
        .collect();
    assert_eq!(pages, [1, 1, 3, 1], "{p}");
    for row in rows {
        assert!(
            row["reply_bytes"].as_u64().expect("bytes") > 10_000,
            "{row}"
        );
        assert!(row["wall_ms"][0].as_f64().expect("wall") > 0.0, "{row}");
    }
    // A user is smaller than a connection on the wire.
    assert!(
        rows[0]["reply_bytes"].as_u64() < rows[3]["reply_bytes"].as_u64(),
        "{p}"
    );
    // The registry keeps each user's interest: Redis grew.
    assert!(
        p["redis_bytes_per_member"].as_f64().expect("redis") > 10.0,
        "{p}"
    );
    assert!(
        std::fs::read_to_string(dir.path().join("million-3000.md"))
            .expect("md")
            .contains("Presence of `g0`")
    );
    // The idle hold: about 3,000 pings a second for 4 s, answered, none closed; the edges spent
    // CPU on them.
    let hold = r["phases"]
        .as_array()
        .expect("phases")
        .iter()
        .find(|p| p["name"] == "idle hold")
        .expect("hold phase")
        .clone();
    assert!(
        (11_000..=14_000).contains(&hold["events"].as_u64().expect("pings")),
        "{hold}"
    );
    assert!(hold["cpu_secs"][0].as_f64().expect("edges") > 0.0, "{hold}");
    assert_eq!(r["closed_while_held"], serde_json::json!({}), "{hold}");
}

/// `--netns`: the run inside a network namespace made for it, with a TCP hash table of its own
/// sized for the run; everything connects and arrives, and the namespace is gone afterwards.
#[test]
fn million_in_a_network_namespace_of_its_own() {
    let Finished {
        r,
        stderr,
        dir: _dir,
    } = million(&[
        &["--netns", "--connections", "2000", "--edges", "2"],
        &["--rate", "2000", "--user-sample", "10"],
        &["--max-secs", "300", "--deliver-timeout-secs", "60"],
        &["--inflight", "200", "--connect-timeout-secs", "60"],
    ]);
    // 2,000 connections: 4,000 sockets, a table of 4,096 buckets at least (65,536: the floor).
    let ns = stderr
        .lines()
        .find_map(|l| l.split("network namespace ").nth(1))
        .and_then(|l| l.split_whitespace().next())
        .expect("the namespace is named in the output")
        .to_string();
    assert!(
        stderr.contains("TCP hash table of 65536 buckets"),
        "{stderr}"
    );
    assert_eq!(r["connected"], 2_000, "{stderr}");
    for kind in ["broadcast", "group", "user"] {
        assert_eq!(r[kind]["missing"], 0, "{kind}: {}", r[kind]);
        assert_eq!(r[kind]["received"], r[kind]["expected"], "{kind}");
    }
    let list = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains(&ns),
        "namespace {ns} still exists"
    );
}

/// `--alg es256`: the client ends sign with a P-256 key made for the run and the edges verify
/// with its public key; everyone connects and every message arrives.
#[test]
fn million_with_es256_tokens() {
    let Finished {
        r,
        stderr,
        dir: _dir,
    } = million(&[
        &["--alg", "es256", "--connections", "2000"],
        &["--edges", "2", "--rate", "2000", "--user-sample", "10"],
        &[
            "--no-sysctl",
            "--max-secs",
            "300",
            "--deliver-timeout-secs",
            "60",
        ],
        &["--inflight", "200", "--connect-timeout-secs", "60"],
    ]);
    assert_eq!(r["connected"], 2_000, "{stderr}");
    assert!(r["command"].as_str().expect("command").contains("es256"));
    for kind in ["broadcast", "group", "user"] {
        assert_eq!(r[kind]["missing"], 0, "{kind}: {}", r[kind]);
        assert_eq!(r[kind]["received"], r[kind]["expected"], "{kind}");
    }
}
