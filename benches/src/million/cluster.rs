//! Everything the run starts: the cluster (redis-server, nats-server, a router and the edges,
//! through the sandbox the end-to-end tests use too) and the worker processes; and stopping them
//! in order.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use herald_sandbox::{Backends, Cluster, Process, Stderr};
use tokio::process::Command;

use super::fleet::Worker;
use super::layout::Layout;
use super::{MillionOpts, PROJECT};
use crate::{servers, workers};

/// Everything the run started.
#[derive(Default)]
pub(super) struct Run {
    /// Configuration and every process's log.
    pub(super) dir: PathBuf,
    pub(super) cluster: Option<Cluster>,
    pub(super) workers: Vec<Worker>,
    /// `--alg es256`: the private key the workers sign with.
    pub(super) es256_key: Option<PathBuf>,
}

impl Run {
    /// Starts redis-server (`maxclients 4096`, no persistence), nats-server, one router and
    /// `--edges` edges, all on loopback ports, all logging into the run's directory.
    pub(super) async fn start_cluster(&mut self, o: &MillionOpts) -> anyhow::Result<()> {
        let bin = herald_sandbox::herald_bin(o.herald_bin.as_deref())?;
        herald_sandbox::server_bin("redis-cli")?;
        // Herald's own defaults unless an option overrides one.
        let ping = o
            .ping_interval_secs
            .map_or(String::new(), |s| format!("ping_interval_secs = {s}\n"));
        let project = match o.alg {
            super::Alg::Hs256 => servers::herald::projects_toml(PROJECT),
            super::Alg::Es256 => {
                // A key pair for the run: the edges get the public key, the workers the private.
                let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
                let private = self.dir.join("es256.pem");
                std::fs::write(&private, pair.serialize_pem())?;
                self.es256_key = Some(private);
                format!(
                    "[[projects]]\nid = \"{PROJECT}\"\napi_keys = [\"{}\"]\n[[projects.keys]]\nalg = \"ES256\"\npublic_key_pem = \"\"\"\n{}\"\"\"\n",
                    servers::API_KEY,
                    pair.public_key_pem()
                )
            }
        };
        let config = format!(
            "[edge]\n{ping}[router]\ncontrol_timeout_ms = {}\n[log]\nlevel = \"warn\"\n{project}",
            o.control_timeout_ms,
        );
        let mut cluster_settings = String::new();
        if let Some(ms) = o.redis_timeout_ms {
            cluster_settings += &format!("redis_timeout_ms = {ms}\n");
        }
        if let Some(s) = o.edge_ttl_secs {
            cluster_settings += &format!("edge_ttl_secs = {s}\n");
        }
        eprintln!(
            "million: starting redis-server, nats-server, a router and {} edges (logs in {})",
            o.edges,
            self.dir.display()
        );
        let cluster = Cluster::builder(bin, config)
            .edges(o.edges as usize)
            .cluster_settings(cluster_settings)
            .backends(
                Backends::builder()
                    .redis_args(["--maxclients", "4096"])
                    .prefix("million"),
            )
            .dir(&self.dir)
            .logs(true)
            .own_process_groups(true)
            .ready_within(Duration::from_secs(60))
            .start()
            .await?;
        let b = &cluster.backends;
        if o.backend_nice != 0 {
            let pids: Vec<u32> = (b.redis.iter().map(|r| r.pid()))
                .chain(b.nats.iter().map(|n| n.pid()))
                .flatten()
                .collect();
            for pid in pids {
                set_nice(pid, o.backend_nice)?;
            }
            eprintln!(
                "million: redis-server and nats-server at nice {} (they have cores of their own in a deployment; here 104 processes of the run share 2)",
                o.backend_nice
            );
        }
        eprintln!(
            "million: redis-server :{}, nats-server :{}, router {}, {} edges ready",
            b.redis[0].port,
            b.nats[0].port,
            cluster.grpc()?,
            cluster.edges.len()
        );
        self.cluster = Some(cluster);
        Ok(())
    }

    /// Starts ⌈N / per-worker limit⌉ workers, each with an even share of the connections, the
    /// rate and the handshakes in flight (one tokio thread each).
    pub(super) async fn start_workers(
        &mut self,
        o: &MillionOpts,
        layout: Layout,
    ) -> anyhow::Result<()> {
        let exe = std::env::current_exe()?;
        let n = o.connections.div_ceil(workers::per_worker_limit());
        let per = o.connections.div_ceil(n);
        let edges: Vec<String> = self
            .cluster
            .as_ref()
            .context("the cluster runs")?
            .edge_addrs()?
            .iter()
            .map(|a| a.to_string())
            .collect();
        for w in 0..n {
            let first = w * per;
            let count = per.min(o.connections - first);
            let mut cmd = Command::new(&exe);
            cmd.arg("million-worker")
                .args(["--first", &first.to_string(), "--count", &count.to_string()])
                .args(["--edges", &edges.join(",")])
                .args(["--total", &layout.total.to_string()])
                .args(["--edge-count", &layout.edge_count.to_string()])
                .args(["--users", &layout.users.to_string()])
                .args(["--groups", &layout.groups.to_string()])
                .args(["--sample-every", &layout.sample_every.to_string()])
                .args(["--rate", &(o.rate as f64 / n as f64).to_string()])
                .args(["--inflight", &(o.inflight / n).max(8).to_string()])
                .args(["--sockbuf", &o.client_sockbuf.to_string()])
                .args([
                    "--connect-timeout-secs",
                    &o.connect_timeout_secs.to_string(),
                ])
                .args(
                    self.es256_key
                        .iter()
                        .flat_map(|k| [std::ffi::OsStr::new("--es256-key"), k.as_os_str()]),
                )
                .env("TOKIO_WORKER_THREADS", "1")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped());
            let name = format!("worker-{w}");
            let log = Stderr::File(self.dir.join(format!("{name}.log")));
            let proc = Process::spawn(&name, &mut cmd, log, true)?;
            self.workers.push(Worker::new(proc)?);
        }
        Ok(())
    }

    /// Every process the run started, workers first.
    pub(super) fn processes(&mut self) -> Vec<&mut Process> {
        let mut v: Vec<&mut Process> = self.workers.iter_mut().map(|w| &mut w.proc).collect();
        if let Some(c) = &mut self.cluster {
            v.extend(c.edges.iter_mut().map(|e| e.process_mut()));
            v.push(c.router.process_mut());
            let b = &mut c.backends;
            v.extend(b.nats.iter_mut().filter_map(|n| n.process()));
            v.extend(b.redis.iter_mut().filter_map(|r| r.process()));
        }
        v
    }

    /// Stops every process the run started: the workers (their sockets close with RST), then
    /// the edges and the router, then NATS and Redis (SIGTERM, SIGKILL after 20 s).
    pub(super) async fn shutdown(&mut self) {
        for w in &mut self.workers {
            let _ = w.send("stop").await;
        }
        let mut procs: Vec<&mut Process> = self.workers.iter_mut().map(|w| &mut w.proc).collect();
        let mut killed = herald_sandbox::stop_all(&mut procs, Duration::from_secs(10)).await;
        if let Some(c) = &mut self.cluster {
            killed.extend(c.stop(Duration::from_secs(20)).await);
        }
        for name in killed {
            eprintln!("million: {name} did not stop in time; killed it");
        }
    }
}

/// Sets the nice value of every thread of `pid` (Linux keeps it per thread; threads started
/// later inherit it from the thread that starts them).
fn set_nice(pid: u32, nice: i32) -> anyhow::Result<()> {
    let tids: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("threads of {pid}"))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let out = std::process::Command::new("renice")
        .args(["-n", &nice.to_string(), "-p"])
        .args(&tids)
        .output()
        .context("run renice (util-linux)")?;
    anyhow::ensure!(
        out.status.success(),
        "renice {pid}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}
