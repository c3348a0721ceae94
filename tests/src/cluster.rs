//! The cluster sandbox: real `redis-server` (single or a 3-master Redis Cluster) and a 3-node
//! `nats-server` cluster on free loopback ports, and Herald nodes wired to them.
//!
//! ```ignore
//! let backends = Backends::start().await;
//! let e1 = herald().clustered(&backends).role("edge").edge("id", "e1").start().await;
//! let r1 = herald().clustered(&backends).role("router").start().await;
//! ```
//!
//! A missing `redis-server`, `redis-cli` or `nats-server` fails the test with a message naming
//! it; nothing is ever skipped.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::HeraldBuilder;

/// Finds a server binary in `PATH` or the usual Debian places; fails naming it.
pub fn server_bin(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/bin", "/usr/sbin", "/usr/local/bin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} not found in PATH, /usr/bin or /usr/sbin: the cluster tests need it \
                 (Debian: apt-get install {}; .ci/run installs it)",
                if name.starts_with("redis") {
                    "redis-server redis-tools"
                } else {
                    "nats-server"
                }
            )
        })
}

/// A free loopback port above the ephemeral range (61000-65000), so a kernel-chosen client port
/// cannot take it between the check and the server's bind. Processes start at different points.
pub fn free_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    if NEXT.load(Ordering::Relaxed) == 0 {
        let seed = (std::process::id() as u64 * 7919
            + std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos() as u64))
            % 3_800;
        let _ = NEXT.compare_exchange(
            0,
            61_000 + seed as u16,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
    for _ in 0..4_000 {
        let mut p = NEXT.fetch_add(1, Ordering::Relaxed);
        if p >= 65_000 {
            NEXT.store(61_000, Ordering::Relaxed);
            p = 61_000;
        }
        if TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
    panic!("no free loopback port in 61000-65000");
}

/// One `redis-server` process.
pub struct RedisServer {
    /// Its port.
    pub port: u16,
    child: Option<Child>,
    dir: PathBuf,
    cluster: bool,
    bus_port: Option<u16>,
}

/// Asks the server on loopback `port` who it is: sends `request` and returns what it answers
/// until `done` says the answer is whole (`None` when nothing listens or it answers nothing).
/// This tells a test's own server from another test's that won a race for the same free port,
/// without reading the kernel's whole socket table (seconds when a load test holds 100,000).
async fn ask(port: u16, request: &[u8], done: impl Fn(&str) -> bool) -> Option<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        s.write_all(request).await.ok()?;
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).await.ok()?;
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
            if done(&String::from_utf8_lossy(&answer)) {
                break;
            }
        }
        Some(String::from_utf8_lossy(&answer).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()
        .flatten()
}

/// Whether the Redis on `port` is the process `pid` (its `INFO server` names its process id).
async fn redis_is(port: u16, pid: u32) -> bool {
    let want = format!("process_id:{pid}\r\n");
    ask(port, b"INFO server\r\n", |a| {
        a.contains("process_id:") && a.contains("tcp_port:")
    })
    .await
    .is_some_and(|a| a.contains(&want))
}

/// Whether the NATS server on `port` is the one named `name` (its INFO line names it).
async fn nats_is(port: u16, name: &str) -> bool {
    let want = format!("\"server_name\":\"{name}\"");
    ask(port, b"", |a| a.contains('\n'))
        .await
        .is_some_and(|a| a.starts_with("INFO ") && a.contains(&want))
}

impl RedisServer {
    /// Starts `redis-server` on `port` without persistence (a restart comes back empty). When
    /// another process took the port meanwhile, it starts again on another free port.
    pub async fn start(port: u16, dir: &Path, cluster: bool) -> Self {
        let mut port = port;
        for _ in 0..5 {
            let dir = dir.join(format!("redis-{port}"));
            std::fs::create_dir_all(&dir).expect("redis dir");
            let mut s = Self {
                port,
                child: None,
                dir,
                cluster,
                bus_port: None,
            };
            s.spawn();
            if s.wait_listening().await {
                return s;
            }
            s.kill().await;
            port = free_port();
        }
        panic!("redis-server could not listen on a free port (5 tries)");
    }

    /// Waits until this server listens; false when it exited (its port was taken).
    async fn wait_listening(&mut self) -> bool {
        let until = Instant::now() + crate::WAIT;
        loop {
            let Some(child) = self.child.as_mut() else {
                return false;
            };
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            if let Some(pid) = child.id()
                && redis_is(self.port, pid).await
            {
                return true;
            }
            assert!(
                Instant::now() < until,
                "redis-server did not listen on port {}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(server_bin("redis-server"));
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir);
        if self.cluster {
            // The bus port would default to port + 10000, past 65535 up here.
            let bus_port = self.bus_port.get_or_insert_with(free_port).to_string();
            cmd.args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
                .args([
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-port",
                    &bus_port,
                ]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
    }

    /// Kills the server (its data is gone).
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
            let _ = c.wait().await;
        }
    }

    /// Starts it again on the same port, empty.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn();
        assert!(
            self.wait_listening().await,
            "redis-server could not listen again on port {}",
            self.port
        );
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

/// One `nats-server` process of the NATS cluster.
pub struct NatsServer {
    /// Client port.
    pub port: u16,
    /// Monitoring (HTTP) port.
    pub monitor: u16,
    child: Option<Child>,
}

impl NatsServer {
    /// Kills the server.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
            let _ = c.wait().await;
        }
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

/// Redis (single or Cluster) and a 3-node NATS cluster.
pub struct Backends {
    /// The Redis servers: one, or the three masters of a Redis Cluster.
    pub redis: Vec<RedisServer>,
    /// Whether `redis` is a Redis Cluster.
    pub redis_cluster: bool,
    /// The NATS servers.
    pub nats: Vec<NatsServer>,
    /// Key and subject prefix, unique per sandbox.
    pub prefix: String,
    dir: tempfile::TempDir,
}

impl Backends {
    /// A single Redis and a 3-node NATS cluster.
    pub async fn start() -> Self {
        Self::start_with(false, 3).await
    }

    /// Redis (`redis_cluster`: a 3-master Redis Cluster) and `nats_nodes` NATS servers
    /// (0 for none).
    pub async fn start_with(redis_cluster: bool, nats_nodes: usize) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let redis = if redis_cluster {
            start_redis_cluster(dir.path()).await
        } else {
            vec![RedisServer::start(free_port(), dir.path(), false).await]
        };
        let nats = if nats_nodes == 0 {
            Vec::new()
        } else {
            start_nats_cluster(dir.path(), nats_nodes).await
        };
        Self {
            redis,
            redis_cluster,
            nats,
            prefix: format!("t{}", std::process::id()),
            dir,
        }
    }

    /// The Redis URLs.
    pub fn redis_urls(&self) -> Vec<String> {
        self.redis.iter().map(RedisServer::url).collect()
    }

    /// The NATS URLs.
    pub fn nats_urls(&self) -> Vec<String> {
        self.nats.iter().map(NatsServer::url).collect()
    }

    /// A scratch directory that lives as long as the backends.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

async fn start_redis_cluster(dir: &Path) -> Vec<RedisServer> {
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(RedisServer::start(free_port(), dir, true).await);
    }
    let addrs: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let out = Command::new(server_bin("redis-cli"))
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .await
        .expect("run redis-cli --cluster create");
    assert!(
        out.status.success(),
        "redis-cli --cluster create failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Every node must agree that all slots are served before the cluster is usable.
    let until = Instant::now() + crate::WAIT;
    for n in &nodes {
        loop {
            let info = Command::new(server_bin("redis-cli"))
                .args(["-p", &n.port.to_string(), "cluster", "info"])
                .output()
                .await
                .expect("redis-cli cluster info");
            if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                break;
            }
            assert!(Instant::now() < until, "redis cluster did not become ok");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    nodes
}

async fn start_nats_cluster(dir: &Path, n: usize) -> Vec<NatsServer> {
    let ports: Vec<(u16, u16, u16)> = (0..n)
        .map(|_| (free_port(), free_port(), free_port()))
        .collect();
    let routes: Vec<String> = ports
        .iter()
        .map(|(_, c, _)| format!("nats://127.0.0.1:{c}"))
        .collect();
    let mut servers = Vec::new();
    // Names unique on the machine, so each test knows its own servers by their INFO line.
    let name = |i: usize, port: u16| format!("n{i}-{}-{port}", std::process::id());
    for (i, (port, cluster_port, monitor)) in ports.iter().enumerate() {
        let mut cmd = Command::new(server_bin("nats-server"));
        cmd.args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(["-m", &monitor.to_string(), "-n", &name(i, *port)]);
        if n > 1 {
            cmd.args(["--cluster_name", "herald-test"])
                .args(["--cluster", &format!("nats://127.0.0.1:{cluster_port}")])
                .args(["--routes", &routes.join(",")]);
        }
        let child = cmd
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn nats-server");
        servers.push(NatsServer {
            port: *port,
            monitor: *monitor,
            child: Some(child),
        });
    }
    for (i, (s, (port, _, monitor))) in servers.iter_mut().zip(&ports).enumerate() {
        // Our own process must be the one listening (another test may race for a free port).
        let until = Instant::now() + crate::WAIT;
        loop {
            if nats_is(*port, &name(i, *port)).await {
                break;
            }
            let child = s.child.as_mut().expect("nats-server child");
            assert!(
                !matches!(child.try_wait(), Ok(Some(_))),
                "nats-server exited: one of ports {port}/{monitor} was taken by another process"
            );
            assert!(
                Instant::now() < until,
                "nats-server did not listen on port {port}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if n > 1 {
            wait_routes(*monitor, n - 1).await;
        }
    }
    servers
}

/// Waits until a NATS server reports `want` routes on its monitoring port.
async fn wait_routes(monitor: u16, want: usize) {
    let until = Instant::now() + crate::WAIT;
    let addr = SocketAddr::from(([127, 0, 0, 1], monitor));
    loop {
        let (status, body) = crate::http_get(addr, "/routez").await;
        let routes = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["num_routes"].as_u64())
            .unwrap_or(0);
        if status == 200 && routes as usize >= want {
            return;
        }
        assert!(Instant::now() < until, "nats cluster did not form");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl HeraldBuilder {
    /// Makes this node part of a cluster over `backends` (edge TTL 3 s unless set otherwise).
    pub fn clustered(mut self, backends: &Backends) -> Self {
        let c = self.section("cluster");
        c.insert("registry".into(), "redis".into());
        c.insert("bus".into(), "nats".into());
        c.insert(
            "redis_urls".into(),
            toml::Value::Array(backends.redis_urls().into_iter().map(Into::into).collect()),
        );
        c.insert("redis_cluster".into(), backends.redis_cluster.into());
        c.insert(
            "nats_urls".into(),
            toml::Value::Array(backends.nats_urls().into_iter().map(Into::into).collect()),
        );
        c.insert("prefix".into(), backends.prefix.clone().into());
        c.insert("redis_timeout_ms".into(), 1_000.into());
        c.entry("edge_ttl_secs").or_insert(3.into());
        self
    }

    /// Sets `[cluster] key = value`.
    pub fn cluster(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.section("cluster").insert(key.into(), value.into());
        self
    }

    /// Sets what the node runs: `edge`, `router` or `all`.
    pub fn role(self, role: &str) -> Self {
        self.cluster("role", role)
    }
}
