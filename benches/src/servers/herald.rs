//! Herald under test: one node (edge and router in one process), or a local cluster (two edges,
//! a router, redis-server and nats-server), started through `herald-sandbox` as the end-to-end
//! tests start theirs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use herald_sandbox::{Cluster, Node};

use super::{API_KEY, SECRET};

/// The `[[projects]]` table of project `id` with the bench API key and HS256 secret.
pub fn projects_toml(id: &str) -> String {
    format!(
        "[[projects]]\nid = \"{id}\"\napi_keys = [\"{API_KEY}\"]\n[[projects.keys]]\nalg = \"HS256\"\nsecret = \"{SECRET}\"\n"
    )
}

/// A node's configuration: `edge_toml` in `[edge]` (plain keys first, then any
/// `[[edge.listeners]]`), logs at `warn`, and the `bench` project (with `permessage_deflate`
/// where `deflate`).
fn config(edge_toml: &str, deflate: bool) -> String {
    let mut project = projects_toml("bench");
    if deflate {
        project = project.replacen(
            "[[projects.keys]]",
            "permessage_deflate = true\n[[projects.keys]]",
            1,
        );
    }
    format!("[edge]\n{edge_toml}\n[log]\nlevel = \"warn\"\n{project}")
}

/// A running Herald node.
pub struct Server {
    node: Node,
    /// Its pid.
    pub pid: u32,
    /// WebSocket address.
    pub ws: SocketAddr,
    /// gRPC address.
    pub grpc: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Server {
    /// The node.
    #[allow(dead_code)] // for scenarios that signal or watch the node
    pub fn node(&mut self) -> &mut Node {
        &mut self.node
    }
}

/// Starts Herald (`bin`, default: `herald-sandbox`'s choice, i.e. `HERALD_BIN` or the binary
/// next to this one) with the bench project (`deflate`: with `permessage_deflate`) and extra
/// `[edge]` settings.
pub async fn start_herald(
    bin: Option<&Path>,
    edge_toml: &str,
    deflate: bool,
) -> anyhow::Result<Server> {
    let bin = herald_sandbox::herald_bin(bin)?;
    let dir = tempfile::Builder::new().prefix("herald-bench-").tempdir()?;
    let cfg = dir.path().join("herald.toml");
    std::fs::write(&cfg, config(edge_toml, deflate))?;
    let node = Node::builder(bin, &cfg)
        .args(["--ws-listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0"])
        .args(["--admin-listen", "127.0.0.1:0"])
        // The `[log]` table decides, not the harness's environment.
        .env_remove("RUST_LOG")
        .start()
        .await?;
    let ready = &node.ready;
    Ok(Server {
        pid: node.pid(),
        ws: ready.ws.context("no ws= in the ready line")?,
        grpc: ready.grpc.context("no grpc= in the ready line")?,
        node,
        _dir: dir,
    })
}

/// Starts a local cluster: redis-server and nats-server on free loopback ports, a router and
/// two edges (`e0`, `e1`) wired to them, as deploy/cluster.sh does; `edge_toml` goes into the
/// edges' `[edge]`.
pub async fn start_cluster(bin: Option<PathBuf>, edge_toml: &str) -> anyhow::Result<Cluster> {
    let bin = herald_sandbox::herald_bin(bin.as_deref())?;
    Ok(Cluster::builder(bin, config(edge_toml, false))
        .edges(2)
        .cluster_settings("edge_ttl_secs = 15\n")
        .start()
        .await?)
}
