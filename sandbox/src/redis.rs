//! `redis-server`: one server without persistence, or the three masters of a Redis Cluster.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;
use tokio::time::Instant;

use crate::port::{ask, free_port, wait_ours};
use crate::{Error, Process, Result, Stderr, server_bin};

/// How a `redis-server` is started.
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// A Redis Cluster node (`--cluster-enabled yes`).
    pub cluster: bool,
    /// More arguments (`--maxclients 4096`, ...).
    pub args: Vec<String>,
    /// Where its stderr goes: `Some(dir)` writes `dir/redis-<port>.log`, `None` nowhere.
    pub log_dir: Option<PathBuf>,
    /// In a process group of its own (see [`Process::spawn`]).
    pub own_group: bool,
    /// Deadline for listening.
    pub wait: Duration,
}

/// One `redis-server` process (no persistence: a restart comes back empty).
#[derive(Debug)]
pub struct RedisServer {
    /// Its port.
    pub port: u16,
    process: Option<Process>,
    dir: PathBuf,
    bus_port: Option<u16>,
    options: RedisOptions,
}

impl RedisServer {
    /// Starts `redis-server` on a free port with its working directory under `dir`. When another
    /// process took the port meanwhile, it starts again on another free port (5 tries).
    pub async fn start(dir: &Path, options: RedisOptions) -> Result<Self> {
        server_bin("redis-server")?;
        for _ in 0..5 {
            let port = free_port()?;
            let dir = dir.join(format!("redis-{port}"));
            std::fs::create_dir_all(&dir)
                .map_err(Error::io(format!("create {}", dir.display())))?;
            let mut s = Self {
                port,
                process: None,
                dir,
                bus_port: None,
                options: options.clone(),
            };
            if s.spawn_and_wait().await? {
                return Ok(s);
            }
            s.kill().await;
        }
        Err(Error::Setup(
            "redis-server could not listen on a free port (5 tries)".into(),
        ))
    }

    async fn spawn_and_wait(&mut self) -> Result<bool> {
        let mut cmd = Command::new(server_bin("redis-server")?);
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.options.args);
        if self.options.cluster {
            // The bus port would default to port + 10000, past 65535 up here.
            let bus_port = match self.bus_port {
                Some(p) => p,
                None => *self.bus_port.insert(free_port()?),
            };
            cmd.args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
                .args(["--cluster-config-file", "nodes.conf"])
                .args(["--cluster-port", &bus_port.to_string()]);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        // redis-server logs to stdout, or to its `--logfile`.
        if let Some(d) = &self.options.log_dir {
            cmd.arg("--logfile")
                .arg(d.join(format!("redis-{}.log", self.port)));
        }
        let mut p = Process::spawn(
            "redis-server",
            &mut cmd,
            Stderr::Null,
            self.options.own_group,
        )?;
        let ok = wait_ours(&mut p, self.port, self.options.wait, redis_is).await?;
        self.process = Some(p);
        Ok(ok)
    }

    /// Kills the server (its data is gone).
    pub async fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill().await;
        }
    }

    /// Starts it again on the same port, empty.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill().await;
        if self.spawn_and_wait().await? {
            Ok(())
        } else {
            Err(Error::Setup(format!(
                "redis-server could not listen again on port {}",
                self.port
            )))
        }
    }

    /// The running process, if it runs.
    pub fn process(&mut self) -> Option<&mut Process> {
        self.process.as_mut()
    }

    /// Its pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Process::pid)
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
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

/// Starts three Redis Cluster masters under `dir` and joins them with `redis-cli --cluster
/// create`; returns once every node reports `cluster_state:ok` (within `wait`).
pub async fn start_cluster(dir: &Path, options: RedisOptions) -> Result<Vec<RedisServer>> {
    let cli = server_bin("redis-cli")?;
    let wait = options.wait;
    let options = RedisOptions {
        cluster: true,
        ..options
    };
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(RedisServer::start(dir, options.clone()).await?);
    }
    let addrs: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let out = Command::new(&cli)
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .await
        .map_err(Error::io("run redis-cli --cluster create"))?;
    if !out.status.success() {
        return Err(Error::Setup(format!(
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        )));
    }
    // Every node must agree that all slots are served before the cluster is usable.
    let until = Instant::now() + wait;
    for n in &nodes {
        loop {
            let info = Command::new(&cli)
                .args(["-p", &n.port.to_string(), "cluster", "info"])
                .output()
                .await
                .map_err(Error::io("run redis-cli cluster info"))?;
            if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                break;
            }
            if Instant::now() > until {
                return Err(Error::NotReady {
                    what: "redis cluster (cluster_state:ok)".into(),
                    within: wait,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(nodes)
}
