//! A whole local cluster in one call: the backends, one router and N edges, every node started
//! from the same configuration file (edge `i` is `e<i>` by `HERALD_EDGE__ID`).
//!
//! Tests compose their own topologies from [`Backends`] and [`Node`]; the harness's scenarios
//! (two edges for `cluster`, fifty for `million`) use this.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{Backends, BackendsBuilder, Error, Node, Result, stop_all};

/// How a [`Cluster`] is started.
#[derive(Debug)]
pub struct ClusterBuilder {
    bin: PathBuf,
    config: String,
    cluster: String,
    edges: usize,
    backends: BackendsBuilder,
    dir: Option<PathBuf>,
    logs: bool,
    own_groups: bool,
    ready_within: Duration,
}

/// A running cluster; every process is killed when it is dropped ([`Cluster::stop`] ends them
/// gracefully).
#[derive(Debug)]
pub struct Cluster {
    /// Redis and NATS.
    pub backends: Backends,
    /// The router (the gRPC API).
    pub router: Node,
    /// The edges, `e0`, `e1`, ...
    pub edges: Vec<Node>,
    _dir: Option<tempfile::TempDir>,
}

impl Cluster {
    /// A cluster of `herald` binary `bin` with `config` (everything but the `[cluster]` table),
    /// two edges, one Redis and one NATS server, node logs on this process's stderr.
    pub fn builder(bin: impl Into<PathBuf>, config: impl Into<String>) -> ClusterBuilder {
        ClusterBuilder {
            bin: bin.into(),
            config: config.into(),
            cluster: String::new(),
            edges: 2,
            backends: Backends::builder(),
            dir: None,
            logs: false,
            own_groups: false,
            ready_within: Duration::from_secs(10),
        }
    }

    /// The router's gRPC address.
    pub fn grpc(&self) -> Result<SocketAddr> {
        self.router.ready.grpc.ok_or_else(|| Error::ReadyLine {
            line: self.router.ready.line.clone(),
            detail: "no grpc= address".into(),
        })
    }

    /// The edges' WebSocket addresses (their first listener).
    pub fn edge_addrs(&self) -> Result<Vec<SocketAddr>> {
        self.edges
            .iter()
            .map(|e| {
                e.ready.ws.ok_or_else(|| Error::ReadyLine {
                    line: e.ready.line.clone(),
                    detail: "no ws= address".into(),
                })
            })
            .collect()
    }

    /// Every process: edges, router, then Redis and NATS.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.edges.iter().map(Node::pid).collect();
        pids.push(self.router.pid());
        pids.extend(self.backends.pids());
        pids
    }

    /// Stops the edges and the router together (SIGTERM; SIGKILL after `grace`), then Redis
    /// and NATS the same way. Returns the names of those that had to be killed.
    pub async fn stop(&mut self, grace: Duration) -> Vec<String> {
        let mut nodes: Vec<_> = self
            .edges
            .iter_mut()
            .chain(std::iter::once(&mut self.router))
            .map(Node::process_mut)
            .collect();
        let mut killed = stop_all(&mut nodes, grace).await;
        let b = &mut self.backends;
        let mut backends: Vec<_> = b
            .nats
            .iter_mut()
            .filter_map(|n| n.process())
            .chain(b.redis.iter_mut().filter_map(|r| r.process()))
            .collect();
        killed.extend(stop_all(&mut backends, grace).await);
        killed
    }
}

impl ClusterBuilder {
    /// Edges to start (default 2).
    pub fn edges(mut self, n: usize) -> Self {
        self.edges = n;
        self
    }

    /// More lines of the `[cluster]` table (`edge_ttl_secs = 15`), after those naming the
    /// backends.
    pub fn cluster_settings(mut self, toml_lines: impl Into<String>) -> Self {
        self.cluster = toml_lines.into();
        self
    }

    /// How the backends are started (one Redis and one NATS server by default). Its directory,
    /// logs and process groups follow this builder's.
    pub fn backends(mut self, b: BackendsBuilder) -> Self {
        self.backends = b;
        self
    }

    /// Work in `dir` (configuration, logs; kept afterwards) instead of a temporary directory.
    pub fn dir(mut self, dir: &Path) -> Self {
        self.dir = Some(dir.to_path_buf());
        self
    }

    /// Every process writes its log into the directory (`router.log`, `e0.log`, `redis-*.log`,
    /// `nats-0.log`) instead of this process's stderr.
    pub fn logs(mut self, yes: bool) -> Self {
        self.logs = yes;
        self
    }

    /// Every process in a process group of its own (see [`crate::Process::spawn`]).
    pub fn own_process_groups(mut self, yes: bool) -> Self {
        self.own_groups = yes;
        self
    }

    /// How long each node may take to be ready (default 10 s; they start in parallel).
    pub fn ready_within(mut self, within: Duration) -> Self {
        self.ready_within = within;
        self
    }

    /// Starts the backends, the router, then the edges in parallel; writes `herald.toml` into
    /// the directory.
    pub async fn start(self) -> Result<Cluster> {
        let (dir, temp) = match &self.dir {
            Some(d) => (d.clone(), None),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("herald-cluster-")
                    .tempdir()
                    .map_err(Error::io("temporary directory"))?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let backends = self
            .backends
            .dir(&dir)
            .logs(self.logs)
            .own_process_groups(self.own_groups)
            .start()
            .await?;
        let cfg = dir.join("herald.toml");
        let text = format!(
            "{}\n[cluster]\n{}{}\n",
            self.config,
            backends.cluster_toml(),
            self.cluster
        );
        std::fs::write(&cfg, text).map_err(Error::io(format!("write {}", cfg.display())))?;
        let node = |name: String, args: [&str; 6]| {
            let mut b = Node::builder(&self.bin, &cfg)
                .name(name)
                .args(args)
                // The `[log]` table decides, not this process's environment.
                .env_remove("RUST_LOG")
                .ready_within(self.ready_within);
            if self.logs {
                b = b.log_dir(&dir);
            }
            if self.own_groups {
                b = b.own_process_group();
            }
            b
        };
        let router = node(
            "router".into(),
            [
                "--role",
                "router",
                "--grpc-listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ],
        )
        .start()
        .await?;
        let starting: Vec<_> = (0..self.edges)
            .map(|i| {
                let name = format!("e{i}");
                let b = node(
                    name.clone(),
                    [
                        "--role",
                        "edge",
                        "--ws-listen",
                        "127.0.0.1:0",
                        "--admin-listen",
                        "127.0.0.1:0",
                    ],
                )
                .env("HERALD_EDGE__ID", name);
                tokio::spawn(b.start())
            })
            .collect();
        let mut edges = Vec::with_capacity(self.edges);
        for s in starting {
            edges.push(
                s.await
                    .map_err(|e| Error::Setup(format!("edge start task: {e}")))??,
            );
        }
        Ok(Cluster {
            backends,
            router,
            edges,
            _dir: temp,
        })
    }
}
