//! A process the sandbox started: its name, pid and where its log goes; killed when dropped.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::{Error, Result};

/// Where a process's stderr (its log) goes.
#[derive(Debug, Clone, Default)]
pub enum Stderr {
    /// Nowhere.
    #[default]
    Null,
    /// The parent's stderr (a test's captured output).
    Inherit,
    /// A file, created (truncated) at start.
    File(PathBuf),
}

impl Stderr {
    fn stdio(&self) -> Result<Stdio> {
        Ok(match self {
            Stderr::Null => Stdio::null(),
            Stderr::Inherit => Stdio::inherit(),
            Stderr::File(p) => std::fs::File::create(p)
                .map_err(Error::io(format!("create {}", p.display())))?
                .into(),
        })
    }

    /// ` (log: FILE)` for error messages, when the log is a file.
    pub fn hint(&self) -> String {
        match self {
            Stderr::File(p) => format!(" (log: {})", p.display()),
            _ => String::new(),
        }
    }
}

/// A running process: killed (SIGKILL) when dropped, unless it was stopped before.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    pid: u32,
    log: Stderr,
}

impl Process {
    /// Starts `cmd` as `name` with its stderr going to `log`; `own_group` puts it in a process
    /// group of its own, so a Ctrl-C at the terminal reaches only the parent, which then stops
    /// it in order. stdin is null unless `cmd` says otherwise.
    pub fn spawn(name: &str, cmd: &mut Command, log: Stderr, own_group: bool) -> Result<Self> {
        cmd.stderr(log.stdio()?).kill_on_drop(true);
        if own_group {
            cmd.process_group(0);
        }
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            what: name.into(),
            source,
        })?;
        let pid = child.id().ok_or_else(|| Error::Exited {
            what: name.into(),
            detail: " (no pid)".into(),
        })?;
        Ok(Self {
            name: name.into(),
            child,
            pid,
            log,
        })
    }

    /// Its name (`redis-server`, `e3`, `worker-0`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Where its stderr goes.
    pub fn log(&self) -> &Stderr {
        &self.log
    }

    /// The child, for its pipes.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// How it ended, if it has.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends signal `sig` (`TERM`, `HUP`, `INT`, ...) with `kill(1)`.
    pub fn signal(&self, sig: &str) -> Result<()> {
        let pid = self.pid.to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .stderr(Stdio::null())
            .status()
            .map_err(Error::io("run kill"))?;
        if status.success() {
            Ok(())
        } else {
            Err(Error::Setup(format!("kill -{sig} {pid} failed ({status})")))
        }
    }

    /// Waits until it exits.
    pub async fn wait(&mut self) -> Result<ExitStatus> {
        self.child
            .wait()
            .await
            .map_err(Error::io(format!("wait for {}", self.name)))
    }

    /// Kills it (SIGKILL) and reaps it.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
        let _ = self.child.wait().await;
    }
}

/// Stops `procs` together: SIGTERM to those still running, then SIGKILL to any that has not
/// exited after `grace`. Returns the names of those killed.
pub async fn stop_all(procs: &mut [&mut Process], grace: Duration) -> Vec<String> {
    let pids: Vec<String> = procs
        .iter_mut()
        .filter_map(|p| p.exited().is_none().then(|| p.pid.to_string()))
        .collect();
    if !pids.is_empty() {
        let _ = Command::new("kill")
            .arg("-TERM")
            .args(&pids)
            .stderr(Stdio::null())
            .status()
            .await;
    }
    let until = tokio::time::Instant::now() + grace;
    let mut killed = Vec::new();
    for p in procs.iter_mut() {
        if tokio::time::timeout_at(until, p.child.wait())
            .await
            .is_err()
        {
            killed.push(p.name.clone());
            p.kill().await;
        }
    }
    killed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_all_terminates_and_kills_what_ignores_sigterm() {
        let mut polite = Process::spawn(
            "sleep",
            Command::new("sleep").arg("30"),
            Stderr::Null,
            false,
        )
        .expect("sleep");
        // A program that ignores SIGTERM (an ignored signal stays ignored across exec), and
        // says so once it does.
        let mut stubborn = Process::spawn(
            "stubborn",
            Command::new("sh")
                .args(["-c", "trap '' TERM; echo ignoring; exec sleep 30"])
                .stdout(Stdio::piped()),
            Stderr::Null,
            false,
        )
        .expect("sh");
        let out = stubborn.child_mut().stdout.take().expect("stdout");
        let mut line = String::new();
        let mut out = tokio::io::BufReader::new(out);
        let read = tokio::io::AsyncBufReadExt::read_line(&mut out, &mut line);
        tokio::time::timeout(Duration::from_secs(30), read)
            .await
            .expect("the shell starts in time")
            .expect("read");
        assert_eq!(line, "ignoring\n");
        let killed = stop_all(
            &mut [&mut polite, &mut stubborn],
            Duration::from_millis(500),
        )
        .await;
        assert_eq!(killed, ["stubborn"]);
        assert!(polite.exited().is_some());
        assert!(stubborn.exited().is_some());
    }

    #[tokio::test]
    async fn a_missing_program_is_an_error_naming_it() {
        let e = Process::spawn(
            "nothing",
            &mut Command::new("/nonexistent/program"),
            Stderr::Null,
            false,
        )
        .expect_err("missing");
        assert!(e.to_string().starts_with("start nothing:"), "{e}");
    }
}
