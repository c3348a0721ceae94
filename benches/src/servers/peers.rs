//! Peer servers measured beside Herald in the same run: mosquitto (websockets listener),
//! nats-server (websocket listener) and a Node `ws` broadcast server. `benches/peers.sh` installs
//! them; nothing of theirs is committed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::process::{Child, Command};

/// A running peer.
pub struct Peer {
    /// The process.
    pub _child: Child,
    /// Its pid.
    pub pid: u32,
    /// Where subscribers connect (WebSocket).
    pub ws: SocketAddr,
    /// Where the publisher connects (TCP for MQTT and NATS; the WebSocket for `ws`).
    pub publish: SocketAddr,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(name: &str) -> anyhow::Result<TempDir> {
    let d = std::env::temp_dir().join(format!("herald-bench-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(TempDir(d))
}

/// A free loopback port (above the ephemeral range, as the sandbox hands them out).
fn free_port() -> anyhow::Result<u16> {
    Ok(herald_sandbox::free_port()?)
}

fn find_bin(names: &[&str]) -> anyhow::Result<PathBuf> {
    for n in names {
        for dir in ["/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"] {
            let p = PathBuf::from(dir).join(n);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    bail!(
        "{} not found: run benches/peers.sh to install the peers",
        names.join(" or ")
    )
}

async fn wait_listening(addr: SocketAddr) -> anyhow::Result<()> {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("nothing listens on {addr} after 5 s")
}

fn spawn(bin: &PathBuf, args: &[&str]) -> anyhow::Result<Child> {
    Command::new(bin)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start {}", bin.display()))
}

/// mosquitto with a websockets listener for subscribers and an MQTT listener for the publisher.
/// `socket_domain ipv4`: its libwebsockets otherwise fails to create the listener where IPv6 is
/// unavailable.
pub async fn mosquitto() -> anyhow::Result<Peer> {
    let bin = find_bin(&["mosquitto"])?;
    let dir = temp_dir("mosquitto")?;
    let (ws, tcp) = (free_port()?, free_port()?);
    let conf = dir.0.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {ws} 127.0.0.1\nsocket_domain ipv4\nprotocol websockets\nlistener {tcp} 127.0.0.1\nprotocol mqtt\nallow_anonymous true\nmax_queued_messages 0\nmax_queued_bytes 0\n"
        ),
    )?;
    let child = spawn(&bin, &["-c", conf.to_str().context("path")?])?;
    let (ws, tcp) = (
        SocketAddr::from(([127, 0, 0, 1], ws)),
        SocketAddr::from(([127, 0, 0, 1], tcp)),
    );
    wait_listening(ws).await?;
    wait_listening(tcp).await?;
    Ok(Peer {
        pid: child.id().context("pid")?,
        _child: child,
        ws,
        publish: tcp,
        _dir: dir,
    })
}

/// nats-server with a websocket listener for subscribers and its TCP port for the publisher.
pub async fn nats() -> anyhow::Result<Peer> {
    let bin = find_bin(&["nats-server"])?;
    let dir = temp_dir("nats")?;
    let (ws, tcp) = (free_port()?, free_port()?);
    let conf = dir.0.join("nats.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: \"127.0.0.1:{tcp}\"\nmax_pending: 268435456\nwebsocket {{\n  listen: \"127.0.0.1:{ws}\"\n  no_tls: true\n}}\n"
        ),
    )?;
    let child = spawn(&bin, &["-c", conf.to_str().context("path")?])?;
    let (ws, tcp) = (
        SocketAddr::from(([127, 0, 0, 1], ws)),
        SocketAddr::from(([127, 0, 0, 1], tcp)),
    );
    wait_listening(ws).await?;
    wait_listening(tcp).await?;
    Ok(Peer {
        pid: child.id().context("pid")?,
        _child: child,
        ws,
        publish: tcp,
        _dir: dir,
    })
}

/// The Node `ws` reference server: every message a client sends goes to every other client.
const NODE_WS: &str = r#"
const { WebSocketServer } = require('ws');
const wss = new WebSocketServer({ host: '127.0.0.1', port: Number(process.argv[2]) });
wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => {
    for (const c of wss.clients) if (c !== ws && c.readyState === 1) c.send(data, { binary: isBinary });
  });
});
"#;

/// The Node `ws` broadcast server (needs `ws` installed under `benches/.peers` by peers.sh).
pub async fn node_ws() -> anyhow::Result<Peer> {
    let node = find_bin(&["node", "nodejs"])?;
    let modules = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".peers/node_modules");
    if !modules.join("ws").is_dir() {
        bail!("{} has no `ws`: run benches/peers.sh", modules.display());
    }
    let dir = temp_dir("node")?;
    let script = dir.0.join("broadcast.js");
    std::fs::write(&script, NODE_WS)?;
    let port = free_port()?;
    let child = Command::new(node)
        .arg(&script)
        .arg(port.to_string())
        .env("NODE_PATH", &modules)
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let ws = SocketAddr::from(([127, 0, 0, 1], port));
    wait_listening(ws).await?;
    Ok(Peer {
        pid: child.id().context("pid")?,
        _child: child,
        ws,
        publish: ws,
        _dir: dir,
    })
}
