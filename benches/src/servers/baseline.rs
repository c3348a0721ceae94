//! The bare tokio-tungstenite baseline: just enough of herald.v1 for the `idle` scenario, one
//! task per connection, run as this binary's `baseline-server` subcommand.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// A running baseline server.
pub struct Baseline {
    _child: Child,
    /// Its pid.
    pub pid: u32,
    /// WebSocket address.
    pub ws: SocketAddr,
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

/// Starts the bare tokio-tungstenite baseline (this binary's `baseline-server`).
pub async fn start_baseline(read_buffer: usize, ping_after_ms: u64) -> anyhow::Result<Baseline> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args(["baseline-server", "--read-buffer", &read_buffer.to_string()])
        .args(["--ping-after-ms", &ping_after_ms.to_string()])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let line = ready_line(&mut child, "baseline ready").await?;
    Ok(Baseline {
        pid: child.id().context("pid")?,
        _child: child,
        ws: addr_in(&line, "ws")?,
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
