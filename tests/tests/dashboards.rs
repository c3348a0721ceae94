//! The Grafana dashboard (`deploy/grafana/`) and the Prometheus alert rules
//! (`deploy/prometheus/`) name only metrics Herald records, with labels they carry: every metric
//! name in their PromQL is looked up in the one list the exporter describes
//! (`herald_core::telemetry::METRICS`). And that list is whole: a cluster scenario touching the
//! edge, the router, the registry and the bus records nothing missing from it, each metric of
//! the kind the list says (histograms with buckets).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use herald_core::telemetry::{self, Kind, Metric};
use herald_tests::cluster::Backends;
use herald_tests::*;

/// Series Prometheus makes itself, which rules may name.
const PROMETHEUS_OWN: &[&str] = &["up"];

/// Labels every series has once scraped, or a histogram's buckets have.
const SCRAPE_LABELS: &[&str] = &["instance", "job", "le"];

/// PromQL's keywords and aggregation operators (which may stand before `by (...)` rather than
/// their parenthesis).
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "group",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "limitk",
    "limit_ratio",
];

/// A metric named in an expression, with the labels its own matchers name.
#[derive(Debug, Default)]
struct Use {
    labels: BTreeSet<String>,
}

/// The metric names of a PromQL expression (an identifier that is no function, keyword, label
/// or Grafana variable), each with the label names of its `{...}` matchers. Label lists of
/// `by`, `without`, `on` and `ignoring` are checked too: each must be a label of some metric of
/// the expression.
fn metric_names(expr: &str) -> Result<BTreeMap<String, Use>, String> {
    let b = expr.as_bytes();
    let mut names: BTreeMap<String, Use> = BTreeMap::new();
    let mut grouping: BTreeSet<String> = BTreeSet::new();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let skip_ws = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    // The label names in a `{...}` block starting at `i` (after `{`); returns them and the end.
    let matchers = |mut i: usize| -> Result<(BTreeSet<String>, usize), String> {
        let mut labels = BTreeSet::new();
        loop {
            i = skip_ws(i);
            match b.get(i) {
                None => return Err(format!("unclosed {{ in {expr}")),
                Some(b'}') => return Ok((labels, i + 1)),
                Some(b',') => i += 1,
                Some(c) if c.is_ascii_alphabetic() || *c == b'_' => {
                    let start = i;
                    while i < b.len() && ident(b[i]) {
                        i += 1;
                    }
                    labels.insert(expr[start..i].to_string());
                    i = skip_ws(i);
                    while i < b.len() && matches!(b[i], b'=' | b'!' | b'~') {
                        i += 1;
                    }
                    i = skip_ws(i);
                    let quote = *b.get(i).ok_or("matcher without a value")?;
                    if quote != b'"' && quote != b'\'' {
                        return Err(format!("matcher value not quoted in {expr}"));
                    }
                    i += 1;
                    while i < b.len() && b[i] != quote {
                        i += if b[i] == b'\\' { 2 } else { 1 };
                    }
                    i += 1;
                }
                Some(_) => return Err(format!("unexpected matcher text in {expr}")),
            }
        }
    };
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'"' || c == b'\'' {
            i += 1;
            while i < b.len() && b[i] != c {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == b'[' {
            while i < b.len() && b[i] != b']' {
                i += 1;
            }
            i += 1;
        } else if c == b'{' {
            // Matchers without a metric name ({__name__=...}) are not used here.
            let (_, end) = matchers(i + 1)?;
            i = end;
        } else if c == b'$' {
            i += 1;
            while i < b.len() && ident(b[i]) {
                i += 1;
            }
        } else if c.is_ascii_digit() || c == b'.' {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len() && ident(b[i]) {
                i += 1;
            }
            let word = &expr[start..i];
            let next = skip_ws(i);
            let lower = word.to_ascii_lowercase();
            if matches!(lower.as_str(), "by" | "without" | "on" | "ignoring")
                || (matches!(lower.as_str(), "group_left" | "group_right")
                    && b.get(next) == Some(&b'('))
            {
                // A label list: (a, b, c).
                if b.get(next) == Some(&b'(') {
                    let close = expr[next..]
                        .find(')')
                        .map(|o| next + o)
                        .ok_or_else(|| format!("unclosed label list in {expr}"))?;
                    for l in expr[next + 1..close].split(',') {
                        let l = l.trim();
                        if !l.is_empty() {
                            grouping.insert(l.to_string());
                        }
                    }
                    i = close + 1;
                }
            } else if KEYWORDS.contains(&lower.as_str()) || b.get(next) == Some(&b'(') {
                // A keyword or a function.
            } else {
                let entry = names.entry(word.to_string()).or_default();
                if b.get(next) == Some(&b'{') {
                    let (labels, end) = matchers(next + 1)?;
                    entry.labels.extend(labels);
                    i = end;
                }
            }
        } else {
            i += 1;
        }
    }
    // Each grouping label is a label of one of the expression's metrics.
    let known: BTreeSet<&str> = names
        .keys()
        .filter_map(|n| telemetry::family(n))
        .flat_map(|m| m.labels.iter().copied())
        .chain(SCRAPE_LABELS.iter().copied())
        .collect();
    for l in &grouping {
        if !known.contains(l.as_str()) {
            return Err(format!(
                "label {l:?} is not a label of any metric of {expr}"
            ));
        }
    }
    Ok(names)
}

/// Checks every metric of `expr`: a Herald metric (or Prometheus' own), with labels it has.
fn check(expr: &str, at: &str, problems: &mut Vec<String>, seen: &mut BTreeSet<String>) {
    let names = match metric_names(expr) {
        Ok(n) => n,
        Err(e) => {
            problems.push(format!("{at}: {e}"));
            return;
        }
    };
    if names.is_empty() {
        problems.push(format!("{at}: no metric in {expr:?}"));
    }
    for (name, used) in names {
        if PROMETHEUS_OWN.contains(&name.as_str()) {
            continue;
        }
        let Some(m) = telemetry::family(&name) else {
            problems.push(format!("{at}: unknown metric {name}"));
            continue;
        };
        seen.insert(m.name.to_string());
        for l in &used.labels {
            let histogram_le = l == "le" && matches!(m.kind, Kind::Histogram(_));
            if !m.labels.contains(&l.as_str()) && !histogram_le && !SCRAPE_LABELS.contains(&&**l) {
                problems.push(format!("{at}: {name} has no label {l}"));
            }
        }
    }
}

/// A token of alpha's `sub`, a member of `news`.
fn in_news(sub: &str) -> String {
    let mut c = claims("alpha", sub);
    c["groups"] = serde_json::json!(["news"]);
    hs256("alpha-secret-0123456789abcdef0123456789", None, &c)
}

fn deploy(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

/// Every string under an `expr` key of the dashboard, and the metric of each
/// `label_values(metric, label)` variable query.
fn dashboard_exprs(v: &serde_json::Value, at: String, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::Object(o) => {
            for (k, v) in o {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push((at.clone(), e.clone())),
                    ("query" | "definition", serde_json::Value::String(q))
                        if q.starts_with("label_values(") =>
                    {
                        let inner = &q["label_values(".len()..q.len() - 1];
                        let metric = inner.split(',').next().unwrap_or_default().trim();
                        out.push((format!("{at}.{k}"), metric.to_string()));
                    }
                    _ => dashboard_exprs(v, format!("{at}.{k}"), out),
                }
            }
        }
        serde_json::Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                dashboard_exprs(v, format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// The `expr:` values of a rules file: on the line itself, or a `|` / `>` block below it.
fn rule_exprs(text: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        let Some(value) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let indent = line.len() - line.trim_start().len();
        let value = value.trim();
        let expr = if value.starts_with('|') || value.starts_with('>') {
            lines[n + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
                .map(|l| l.trim())
                .collect::<Vec<_>>()
                .join(" ")
        } else {
            value.trim_matches(|c| c == '"' || c == '\'').to_string()
        };
        out.push((format!("line {}", n + 1), expr));
    }
    out
}

#[test]
fn the_parser_finds_names_and_labels() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (le, op) (rate(herald_bus_call_duration_seconds_bucket{op=~"a|b", instance=~"$instance"}[$__rate_interval]))) > 0.1 and on (instance) up == 1"#,
    )
    .expect("parsed");
    let got: Vec<&str> = names.keys().map(String::as_str).collect();
    assert_eq!(got, ["herald_bus_call_duration_seconds_bucket", "up"]);
    let labels = &names["herald_bus_call_duration_seconds_bucket"].labels;
    assert_eq!(
        labels.iter().map(String::as_str).collect::<Vec<_>>(),
        ["instance", "op"]
    );
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    check(
        "rate(herald_edge_conects_total[5m])",
        "t",
        &mut problems,
        &mut seen,
    );
    check(
        r#"herald_edge_connections{reason="x"}"#,
        "t",
        &mut problems,
        &mut seen,
    );
    check(
        "sum by (shard) (herald_edge_connections)",
        "t",
        &mut problems,
        &mut seen,
    );
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert!(problems[0].contains("unknown metric herald_edge_conects_total"));
    assert!(problems[1].contains("has no label reason"));
    assert!(problems[2].contains("\"shard\""));
}

#[test]
fn dashboard_and_alert_rules_name_only_metrics_herald_records() {
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    let mut files = 0;
    for entry in std::fs::read_dir(deploy("grafana")).expect("deploy/grafana") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        files += 1;
        let text = std::fs::read_to_string(&path).expect("read dashboard");
        let v: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
        let mut exprs = Vec::new();
        dashboard_exprs(&v, String::new(), &mut exprs);
        assert!(
            exprs.len() > 20,
            "{}: {} expressions",
            path.display(),
            exprs.len()
        );
        for (at, e) in exprs {
            check(
                &e,
                &format!("{}{at}", path.display()),
                &mut problems,
                &mut seen,
            );
        }
    }
    for entry in std::fs::read_dir(deploy("prometheus")).expect("deploy/prometheus") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "yml" && e != "yaml") {
            continue;
        }
        files += 1;
        let text = std::fs::read_to_string(&path).expect("read rules");
        let exprs = rule_exprs(&text);
        let alerts = text.matches("- alert:").count();
        assert_eq!(exprs.len(), alerts, "{}: one expr per rule", path.display());
        for (at, e) in exprs {
            check(
                &e,
                &format!("{} {at}", path.display()),
                &mut problems,
                &mut seen,
            );
        }
    }
    assert!(files >= 2, "a dashboard and a rules file");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The latency histograms are on the dashboard.
    for m in telemetry::METRICS {
        if matches!(m.kind, Kind::Histogram(_)) {
            assert!(seen.contains(m.name), "{} is on no panel", m.name);
        }
    }
}

/// The metric families of a `/metrics` page: name to the `# TYPE` given.
fn families(page: &str) -> BTreeMap<String, String> {
    page.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let (name, kind) = l.split_once(' ')?;
            Some((name.to_string(), kind.trim().to_string()))
        })
        .collect()
}

fn kind_name(m: &Metric) -> &'static str {
    match m.kind {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
        Kind::Histogram(_) => "histogram",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_records_only_listed_metrics_of_their_listed_kind() {
    let backends = Backends::start().await;
    let edge = herald()
        .clustered(&backends)
        .role("edge")
        .edge("id", "e1")
        .start()
        .await;
    let router = herald().clustered(&backends).role("router").start().await;
    edge.wait_ready().await;
    router.wait_ready().await;

    // The edge: a handshake and a token verified, a token refused.
    let mut alice = edge.connect("alpha", &in_news("alice")).await;
    let (ws, _) = edge
        .open(&edge.url("alpha", "token=not-a-token"), &[])
        .await
        .expect("upgrade");
    let (code, _, _) = Client { ws }.expect_close().await;
    assert_eq!(code, 4002, "an invalid token is closed 4002");

    // The router: publishes through the registry and the bus; an operator call.
    let mut grpc = router.grpc(Some("alpha-api-key-0123456789")).await;
    for to in [To::Group("news"), To::User("alice"), To::Broadcast] {
        eventually(WAIT, async || {
            let reply = send(&mut grpc, publish("alpha", to, r#"{"n":1}"#)).await;
            if reply.edges == 1 {
                Ok(())
            } else {
                Err(format!("{to:?} reached {} edges", reply.edges))
            }
        })
        .await;
        let msg = alice.next_msg().await;
        assert_eq!(msg["data"]["n"], 1, "{msg}");
    }
    let listed = grpc
        .list_connections(herald_core::proto::v1::ListConnectionsRequest {
            project: "alpha".into(),
            of: Some(herald_core::proto::v1::list_connections_request::Of::User(
                "alice".into(),
            )),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.connections.len(), 1);

    // Each node's page: only listed metrics, of their listed kind; the latency histograms of
    // what each node did are there, with buckets.
    let expect = [
        (
            &edge,
            vec![
                telemetry::EDGE_HANDSHAKE_SECONDS,
                telemetry::EDGE_AUTH_SECONDS,
                telemetry::EDGE_DELIVERY_SECONDS,
                telemetry::REGISTRY_CALL_SECONDS,
            ],
        ),
        (
            &router,
            vec![
                telemetry::ROUTER_PUBLISH_SECONDS,
                telemetry::REGISTRY_CALL_SECONDS,
                telemetry::BUS_CALL_SECONDS,
            ],
        ),
    ];
    for (node, histograms) in expect {
        let page = eventually(WAIT, async || {
            let (status, page) = node.admin_get("/metrics").await;
            assert_eq!(status, 200);
            let missing: Vec<&&str> = histograms
                .iter()
                .filter(|h| !page.contains(&format!("{h}_bucket{{")))
                .collect();
            if missing.is_empty() {
                Ok(page)
            } else {
                Err(format!("no buckets of {missing:?} yet"))
            }
        })
        .await;
        let fams = families(&page);
        assert!(fams.len() > 5, "{page}");
        for (name, kind) in &fams {
            if !name.starts_with("herald_") {
                continue;
            }
            let m = telemetry::find(name)
                .unwrap_or_else(|| panic!("{name} is recorded but not in telemetry::METRICS"));
            assert_eq!(kind, kind_name(m), "{name}'s type");
        }
        assert!(page.contains("# HELP herald_"), "described: {page}");
    }
}
