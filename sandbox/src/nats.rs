//! `nats-server`: one server, or a cluster of them joined by routes.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::process::Command;
use tokio::time::Instant;

use crate::port::{ask, free_port};
use crate::{Error, Process, Result, Stderr, server_bin};

/// How `nats-server`s are started.
#[derive(Debug, Clone, Default)]
pub struct NatsOptions {
    /// Where each server's stderr goes: `Some(dir)` writes `dir/nats-<i>.log`, `None` nowhere.
    pub log_dir: Option<std::path::PathBuf>,
    /// In a process group of its own (see [`Process::spawn`]).
    pub own_group: bool,
    /// Deadline for listening and for the routes of a cluster.
    pub wait: Duration,
}

/// One `nats-server` process.
#[derive(Debug)]
pub struct NatsServer {
    /// Client port.
    pub port: u16,
    /// Monitoring (HTTP) port.
    pub monitor: u16,
    process: Option<Process>,
    /// How it was started, to start it again the same way.
    spawn: Spawn,
}

/// What starts one server: its arguments, working directory, log, name and options.
#[derive(Debug, Clone)]
struct Spawn {
    args: Vec<String>,
    dir: std::path::PathBuf,
    log: Stderr,
    name: String,
    options: NatsOptions,
}

impl Spawn {
    fn run(&self) -> Result<Process> {
        let mut cmd = Command::new(server_bin("nats-server")?);
        cmd.args(&self.args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        Process::spawn(
            "nats-server",
            &mut cmd,
            self.log.clone(),
            self.options.own_group,
        )
    }
}

impl NatsServer {
    /// Kills the server.
    pub async fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill().await;
        }
    }

    /// Starts it again with the same name, ports and routes (after [`Self::kill`], or killing
    /// it first); returns once it serves clients again (within the start's wait). A member of a
    /// cluster rejoins through its routes; the clients it had reconnect by themselves.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill().await;
        let mut p = self.spawn.run()?;
        let until = Instant::now() + self.spawn.options.wait;
        loop {
            if nats_is(self.port, &self.spawn.name).await {
                break;
            }
            if let Some(st) = p.exited() {
                return Err(Error::Exited {
                    what: "nats-server (restarted)".into(),
                    detail: format!(
                        " ({st}): port {} taken meanwhile?{}",
                        self.port,
                        p.log().hint()
                    ),
                });
            }
            if Instant::now() > until {
                return Err(Error::NotReady {
                    what: format!("nats-server listening again on port {}", self.port),
                    within: self.spawn.options.wait,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.process = Some(p);
        Ok(())
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
        format!("nats://127.0.0.1:{}", self.port)
    }
}

/// Starts `n` NATS servers (working directory `dir`); with more than one, joined as a cluster and
/// returned once each reports its routes to all others.
pub async fn start(dir: &Path, n: usize, options: &NatsOptions) -> Result<Vec<NatsServer>> {
    server_bin("nats-server")?;
    let mut ports = Vec::with_capacity(n);
    for _ in 0..n {
        ports.push((free_port()?, free_port()?, free_port()?));
    }
    let routes: Vec<String> = ports
        .iter()
        .map(|(_, c, _)| format!("nats://127.0.0.1:{c}"))
        .collect();
    let mut servers = Vec::new();
    // Names unique on the machine, so each server is known as ours by its INFO line.
    let name = |i: usize, port: u16| format!("n{i}-{}-{port}", std::process::id());
    for (i, (port, cluster_port, monitor)) in ports.iter().enumerate() {
        let mut args: Vec<String> = ["-a", "127.0.0.1", "-p", &port.to_string()]
            .into_iter()
            .chain(["-m", &monitor.to_string(), "-n", &name(i, *port)])
            .map(String::from)
            .collect();
        if n > 1 {
            args.extend(
                ["--cluster_name", "herald-test"]
                    .into_iter()
                    .map(String::from)
                    .chain([
                        "--cluster".into(),
                        format!("nats://127.0.0.1:{cluster_port}"),
                        "--routes".into(),
                        routes.join(","),
                    ]),
            );
        }
        let log = match &options.log_dir {
            Some(d) => Stderr::File(d.join(format!("nats-{i}.log"))),
            None => Stderr::Null,
        };
        let spawn = Spawn {
            args,
            dir: dir.to_path_buf(),
            log,
            name: name(i, *port),
            options: options.clone(),
        };
        let process = spawn.run()?;
        servers.push(NatsServer {
            port: *port,
            monitor: *monitor,
            process: Some(process),
            spawn,
        });
    }
    for s in &mut servers {
        // Our own process must be the one listening (another test may race for a free port).
        let until = Instant::now() + options.wait;
        let (port, monitor) = (s.port, s.monitor);
        let own = s.spawn.name.clone();
        let p = s
            .process
            .as_mut()
            .ok_or_else(|| Error::Setup("nats-server gone".into()))?;
        loop {
            if nats_is(port, &own).await {
                break;
            }
            if let Some(st) = p.exited() {
                return Err(Error::Exited {
                    what: "nats-server".into(),
                    detail: format!(
                        " ({st}): one of ports {port}/{monitor} was taken by another process{}",
                        p.log().hint()
                    ),
                });
            }
            if Instant::now() > until {
                return Err(Error::NotReady {
                    what: format!("nats-server listening on port {port}"),
                    within: options.wait,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if n > 1 {
            wait_routes(monitor, n - 1, options.wait).await?;
        }
    }
    Ok(servers)
}

/// Whether the NATS server on `port` is the one named `name` (its INFO line names it).
async fn nats_is(port: u16, name: &str) -> bool {
    let want = format!("\"server_name\":\"{name}\"");
    ask(port, b"", |a| a.contains('\n'))
        .await
        .is_some_and(|a| a.starts_with("INFO ") && a.contains(&want))
}

/// Waits until a NATS server reports `want` routes on its monitoring port.
async fn wait_routes(monitor: u16, want: usize, within: Duration) -> Result<()> {
    let until = Instant::now() + within;
    let addr = SocketAddr::from(([127, 0, 0, 1], monitor));
    loop {
        let routes = http_get(addr, "/routez")
            .await
            .ok()
            .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).ok())
            .and_then(|v| v["num_routes"].as_u64())
            .unwrap_or(0);
        if routes as usize >= want {
            return Ok(());
        }
        if Instant::now() > until {
            return Err(Error::NotReady {
                what: format!("nats cluster ({routes} of {want} routes on :{monitor})"),
                within,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The body of a `200` answer to a minimal HTTP/1.0 GET.
async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nhost: x\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    match out.split_once("\r\n\r\n") {
        Some((head, body)) if head.split_whitespace().nth(1) == Some("200") => Ok(body.into()),
        _ => Err(std::io::Error::other("not a 200 answer")),
    }
}
