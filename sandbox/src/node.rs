//! One `herald serve` process: started with a configuration file, ready once it printed its
//! `herald ready ws=... grpc=... admin=...` line.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

use crate::{Error, Process, Result, Stderr};

/// The addresses a node printed in its `herald ready` line.
#[derive(Debug, Clone)]
pub struct Ready {
    /// The whole line.
    pub line: String,
    /// The first WebSocket listener (an edge).
    pub ws: Option<SocketAddr>,
    /// Every WebSocket listener, in configuration order (an edge).
    pub listeners: Vec<SocketAddr>,
    /// The gRPC listener (a router).
    pub grpc: Option<SocketAddr>,
    /// The HTTP/JSON API listener (a router with `router.http_listen`).
    pub http: Option<SocketAddr>,
    /// The admin listener.
    pub admin: Option<SocketAddr>,
}

impl Ready {
    /// Parses `herald ready key=value ...`; an address that does not parse is an error, a
    /// missing one is `None`.
    pub fn parse(line: &str) -> Result<Self> {
        let value = |key: &str| {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        };
        let bad = |detail: String| Error::ReadyLine {
            line: line.into(),
            detail,
        };
        let addr = |key: &str| -> Result<Option<SocketAddr>> {
            value(key)
                .map(|a| a.parse().map_err(|e| bad(format!("{key}: {e}"))))
                .transpose()
        };
        let listeners = match value("listeners") {
            None => Vec::new(),
            Some(l) => l
                .split(',')
                .map(|a| a.parse().map_err(|e| bad(format!("listeners: {e}"))))
                .collect::<Result<_>>()?,
        };
        Ok(Self {
            line: line.into(),
            ws: addr("ws")?,
            listeners,
            grpc: addr("grpc")?,
            http: addr("http")?,
            admin: addr("admin")?,
        })
    }
}

/// How a node is started; [`NodeBuilder::start`] starts it.
#[derive(Debug)]
pub struct NodeBuilder {
    name: String,
    bin: PathBuf,
    config: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, Option<OsString>)>,
    nofile: Option<u64>,
    log: Stderr,
    own_group: bool,
    ready_within: Duration,
}

/// A running `herald serve` process; killed when dropped.
#[derive(Debug)]
pub struct Node {
    /// What it printed when ready.
    pub ready: Ready,
    process: Process,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Node {
    /// `bin serve --config <config>`, named `herald`, stderr inherited, ready within 10 s.
    pub fn builder(bin: impl Into<PathBuf>, config: impl Into<PathBuf>) -> NodeBuilder {
        NodeBuilder {
            name: "herald".into(),
            bin: bin.into(),
            config: config.into(),
            args: Vec::new(),
            env: Vec::new(),
            nofile: None,
            log: Stderr::Inherit,
            own_group: false,
            ready_within: Duration::from_secs(10),
        }
    }

    /// Its process.
    pub fn process(&self) -> &Process {
        &self.process
    }

    /// Its process, to signal, wait for or kill it.
    pub fn process_mut(&mut self) -> &mut Process {
        &mut self.process
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The next line it printed on stdout after the ready line; `None` once stdout closed.
    pub async fn next_line(&mut self) -> Option<String> {
        self.lines.recv().await
    }
}

impl NodeBuilder {
    /// The name in errors and, with [`NodeBuilder::log_dir`], of the log file.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Appends arguments after `serve --config FILE` (`--role edge`, `--ws-listen ...`).
    pub fn args<S: Into<OsString>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable of the node. Every `HERALD_*` variable of this process is
    /// removed from the node's environment first (the node reads them as configuration), so only
    /// those set here reach it.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), Some(value.into())));
        self
    }

    /// Removes an environment variable (`RUST_LOG`) from the node's environment.
    pub fn env_remove(mut self, key: impl Into<OsString>) -> Self {
        self.env.push((key.into(), None));
        self
    }

    /// Runs the node under `prlimit --nofile=N:N` (the pid stays the node's: prlimit execs it).
    pub fn nofile(mut self, limit: u64) -> Self {
        self.nofile = Some(limit);
        self
    }

    /// Where its stderr (its log) goes (default: inherited).
    pub fn stderr(mut self, to: Stderr) -> Self {
        self.log = to;
        self
    }

    /// Writes its stderr (its log) to `<dir>/<name>.log` instead of inheriting it.
    pub fn log_dir(mut self, dir: &Path) -> Self {
        self.log = Stderr::File(dir.join(format!("{}.log", self.name)));
        self
    }

    /// Starts it in a process group of its own (see [`Process::spawn`]).
    pub fn own_process_group(mut self) -> Self {
        self.own_group = true;
        self
    }

    /// How long it may take to print its ready line (default 10 s).
    pub fn ready_within(mut self, within: Duration) -> Self {
        self.ready_within = within;
        self
    }

    /// Starts the node and waits for its ready line. Its stdout is read to the end in the
    /// background, so it can never block on a full pipe; the lines after the ready line are
    /// kept for [`Node::next_line`].
    pub async fn start(self) -> Result<Node> {
        let mut cmd = match self.nofile {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg("--").arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        cmd.arg("serve")
            .arg("--config")
            .arg(&self.config)
            .args(&self.args);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("HERALD_") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in &self.env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::piped());
        let what = format!("{} ({})", self.name, self.bin.display());
        let mut process = Process::spawn(&self.name, &mut cmd, self.log, self.own_group).map_err(
            |e| match e {
                Error::Spawn { source, .. } => Error::Spawn {
                    what: what.clone(),
                    source,
                },
                other => other,
            },
        )?;
        let stdout = process
            .child_mut()
            .stdout
            .take()
            .ok_or_else(|| Error::Setup(format!("{what}: no stdout")))?;
        let (tx, mut lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut r = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = r.next_line().await {
                // Nobody listening any more: keep reading, so the node never blocks on stdout.
                let _ = tx.send(line);
            }
        });
        let ready = tokio::time::timeout(self.ready_within, async {
            while let Some(l) = lines.recv().await {
                if l.starts_with("herald ready") {
                    return Some(l);
                }
            }
            None
        })
        .await;
        let line = match ready {
            Ok(Some(line)) => line,
            Ok(None) => {
                let status = process
                    .wait()
                    .await
                    .map_or(String::new(), |s| format!(" ({s})"));
                return Err(Error::Exited {
                    what,
                    detail: format!("{status}{}", process.log().hint()),
                });
            }
            Err(_) => {
                return Err(Error::NotReady {
                    what: format!("{what}{}", process.log().hint()),
                    within: self.ready_within,
                });
            }
        };
        Ok(Node {
            ready: Ready::parse(&line)?,
            process,
            lines,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_lines_of_each_role_parse() {
        let all = Ready::parse(
            "herald ready ws=127.0.0.1:8080 listeners=127.0.0.1:8080,127.0.0.1:8443 \
             grpc=127.0.0.1:50051 admin=127.0.0.1:9090",
        )
        .expect("all");
        assert_eq!(all.ws, Some(SocketAddr::from(([127, 0, 0, 1], 8080))));
        assert_eq!(all.listeners.len(), 2);
        assert_eq!(all.grpc, Some(SocketAddr::from(([127, 0, 0, 1], 50051))));
        assert_eq!(all.admin, Some(SocketAddr::from(([127, 0, 0, 1], 9090))));
        let router =
            Ready::parse("herald ready grpc=127.0.0.1:1 http=127.0.0.1:3 admin=127.0.0.1:2")
                .expect("router");
        assert_eq!((router.ws, router.listeners.len()), (None, 0));
        assert_eq!(router.http, Some(SocketAddr::from(([127, 0, 0, 1], 3))));
        assert_eq!(all.http, None);
        assert!(Ready::parse("herald ready ws=nonsense").is_err());
    }

    #[tokio::test]
    async fn a_node_that_exits_early_is_an_error_and_one_that_prints_is_ready() {
        let dir = tempfile::tempdir().expect("dir");
        let script = dir.path().join("fake-herald");
        std::fs::write(
            &script,
            "#!/bin/sh\nif [ -n \"$HERALD_LEAK\" ]; then exit 3; fi\n\
             [ \"$1 $2\" = 'serve --config' ] || exit 2\n\
             echo 'herald ready ws=127.0.0.1:1 admin=127.0.0.1:2'\necho after\nexec sleep 30\n",
        )
        .expect("script");
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let mut node = Node::builder(&script, dir.path().join("cfg.toml"))
            .ready_within(Duration::from_secs(30))
            .start()
            .await
            .expect("ready");
        assert_eq!(node.ready.ws, Some(SocketAddr::from(([127, 0, 0, 1], 1))));
        assert_eq!(node.next_line().await.as_deref(), Some("after"));
        let e = Node::builder(&script, "cfg.toml")
            .env("HERALD_LEAK", "1")
            .ready_within(Duration::from_secs(30))
            .start()
            .await
            .expect_err("exits");
        assert!(matches!(e, Error::Exited { .. }), "{e}");
    }
}
