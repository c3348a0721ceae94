//! The server under test: Herald (the real binary) or a bare tokio-tungstenite baseline.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// The bench project's HS256 secret.
pub const SECRET: &str = "bench-secret-0123456789abcdef0123456789";
/// The bench project's API key.
pub const API_KEY: &str = "bench-api-key-0123456789";

/// A running server process.
pub struct Server {
    /// The process.
    pub _child: Child,
    /// Its pid.
    pub pid: u32,
    /// WebSocket address.
    pub ws: SocketAddr,
    /// gRPC address (Herald only).
    pub grpc: Option<SocketAddr>,
    _dir: Option<tempfile::TempDir>,
}

/// The binary next to this one (`target/<profile>/<name>`).
pub fn sibling_bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("exe dir")?;
    let dir = if dir.ends_with("deps") {
        dir.parent().context("target dir")?
    } else {
        dir
    };
    let bin = dir.join(name);
    if !bin.is_file() {
        bail!(
            "{} not found: build it with `cargo build --release -p {name}`",
            bin.display()
        );
    }
    Ok(bin)
}

async fn ready_line(child: &mut Child, prefix: &str) -> anyhow::Result<String> {
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(l) = lines.next_line().await? {
            if l.starts_with(prefix) {
                return Ok::<_, anyhow::Error>(l);
            }
        }
        bail!("server exited before it was ready")
    })
    .await
    .context("server not ready within 10 s")??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(line)
}

fn addr_in(line: &str, name: &str) -> anyhow::Result<SocketAddr> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .context("address in ready line")?
        .parse()
        .context("socket address")
}

/// Starts Herald with a bench project (`bench`) and extra `[edge]` settings.
pub async fn start_herald(bin: Option<PathBuf>, edge_toml: &str) -> anyhow::Result<Server> {
    start_herald_as(bin, None, edge_toml, "").await
}

/// Starts Herald in `role` (`edge`, `router`; `None`: both) with a bench project, extra `[edge]`
/// settings (plain keys first, then any `[[edge.listeners]]`) and other top-level tables
/// (`[cluster]`).
pub async fn start_herald_as(
    bin: Option<PathBuf>,
    role: Option<&str>,
    edge_toml: &str,
    more_toml: &str,
) -> anyhow::Result<Server> {
    let bin = match bin {
        Some(b) => b,
        None => sibling_bin("herald")?,
    };
    let dir = tempfile::Builder::new().prefix("herald-bench-").tempdir()?;
    let cfg = dir.path().join("herald.toml");
    std::fs::write(
        &cfg,
        format!(
            "[edge]\n{edge_toml}\n[log]\nlevel = \"warn\"\n{more_toml}\n[[projects]]\nid = \"bench\"\napi_keys = [\"{API_KEY}\"]\n[[projects.keys]]\nalg = \"HS256\"\nsecret = \"{SECRET}\"\n"
        ),
    )?;
    let mut cmd = Command::new(&bin);
    cmd.args(["serve", "--config"]).arg(&cfg).args([
        "--ws-listen",
        "127.0.0.1:0",
        "--grpc-listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    if let Some(r) = role {
        cmd.args(["--role", r]);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    let line = ready_line(&mut child, "herald ready").await?;
    let ws = addr_in(&line, "ws").ok();
    let grpc = addr_in(&line, "grpc").ok();
    Ok(Server {
        pid: child.id().context("pid")?,
        _child: child,
        ws: ws
            .or(grpc)
            .context("neither ws nor grpc address in the ready line")?,
        grpc,
        _dir: Some(dir),
    })
}

/// A local cluster: redis-server, nats-server, two edges and a router.
pub struct Cluster {
    /// The edges' WebSocket addresses.
    pub edges: Vec<SocketAddr>,
    /// The router's gRPC address.
    pub grpc: SocketAddr,
    /// Every process of it (edges, router, redis-server, nats-server).
    pub pids: Vec<u32>,
    _nodes: Vec<Server>,
    _backends: Vec<crate::peers::Backend>,
}

/// Starts redis-server and nats-server on free loopback ports, two edges (`e1`, `e2`) and a
/// router wired to them, as deploy/cluster.sh does. `edge_toml` goes into each edge's `[edge]`.
pub async fn start_cluster(bin: Option<PathBuf>, edge_toml: &str) -> anyhow::Result<Cluster> {
    let redis = crate::peers::redis().await?;
    let nats = crate::peers::nats_bus().await?;
    let cluster = format!(
        "[cluster]\nregistry = \"redis\"\nredis_urls = [\"redis://{}\"]\nbus = \"nats\"\nnats_urls = [\"nats://{}\"]\nedge_ttl_secs = 15\n",
        redis.addr, nats.addr
    );
    let mut nodes = Vec::new();
    for id in ["e1", "e2"] {
        let edge = format!("id = \"{id}\"\n{edge_toml}");
        nodes.push(start_herald_as(bin.clone(), Some("edge"), &edge, &cluster).await?);
    }
    let router = start_herald_as(bin, Some("router"), "", &cluster).await?;
    let grpc = router.grpc.context("router gRPC address")?;
    nodes.push(router);
    let mut pids: Vec<u32> = nodes.iter().map(|n| n.pid).collect();
    pids.extend([redis.pid, nats.pid]);
    Ok(Cluster {
        edges: nodes[..2].iter().map(|n| n.ws).collect(),
        grpc,
        pids,
        _nodes: nodes,
        _backends: vec![redis, nats],
    })
}

/// Starts the bare tokio-tungstenite baseline (this binary's `baseline-server`).
pub async fn start_baseline(read_buffer: usize, ping_after_ms: u64) -> anyhow::Result<Server> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args(["baseline-server", "--read-buffer", &read_buffer.to_string()])
        .args(["--ping-after-ms", &ping_after_ms.to_string()])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let line = ready_line(&mut child, "baseline ready").await?;
    Ok(Server {
        pid: child.id().context("pid")?,
        _child: child,
        ws: addr_in(&line, "ws")?,
        grpc: None,
        _dir: None,
    })
}

/// Options of the baseline server.
#[derive(Debug, clap::Args)]
pub struct BaselineOpts {
    /// tungstenite read buffer size, in bytes.
    #[arg(long, default_value_t = 128)]
    read_buffer: usize,
    /// Send one ping this long after the subscription.
    #[arg(long, default_value_t = 2000)]
    ping_after_ms: u64,
}

/// A bare tokio-tungstenite server speaking just enough of herald.v1 for the idle scenario:
/// `welcome`, an `ack` and one `msg` for a subscribe, then one ping. One task per connection.
pub async fn baseline(o: BaselineOpts) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("baseline ready ws={}", listener.local_addr()?);
    let config = WebSocketConfig::default()
        .read_buffer_size(o.read_buffer)
        .write_buffer_size(0);
    loop {
        let (tcp, _) = listener.accept().await?;
        let ping_after = Duration::from_millis(o.ping_after_ms);
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(tcp, Some(config)).await
            else {
                return;
            };
            if ws
                .send(Message::text(r#"{"type":"welcome"}"#))
                .await
                .is_err()
            {
                return;
            }
            let mut ping = Box::pin(tokio::time::sleep(Duration::from_secs(86_400)));
            loop {
                tokio::select! {
                    m = ws.next() => match m {
                        Some(Ok(Message::Text(_))) => {
                            let _ = ws.send(Message::text(r#"{"type":"ack","id":1}"#)).await;
                            let _ = ws.send(Message::text(r#"{"type":"msg","kind":"broadcast","data":1}"#)).await;
                            ping.as_mut().reset(tokio::time::Instant::now() + ping_after);
                        }
                        Some(Ok(_)) => {}
                        _ => return,
                    },
                    _ = &mut ping => {
                        let _ = ws.send(Message::Ping(Default::default())).await;
                        ping.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(86_400));
                    }
                }
            }
        });
    }
}
