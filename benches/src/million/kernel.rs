//! Kernel settings the run needs: raised (saying why), saved to a file a wrapper can restore
//! from, and restored at the end, on failure, or when dropped.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::Serialize;

/// Kernel settings raised for the run, restored on `restore` or drop.
pub(super) struct Sysctls {
    pub(super) saved: Vec<(PathBuf, String)>,
    pub(super) file: Option<PathBuf>,
    pub(super) changes: Vec<SysctlChange>,
}

/// One kernel setting the run changed (or checked).
#[derive(Debug, Clone, Serialize)]
pub(super) struct SysctlChange {
    pub(super) name: String,
    pub(super) before: String,
    pub(super) during: String,
    pub(super) why: String,
}

pub(super) fn sysctl_path(name: &str) -> PathBuf {
    Path::new("/proc/sys").join(name.replace('.', "/"))
}

pub(super) fn read_sysctl(name: &str) -> Option<String> {
    std::fs::read_to_string(sysctl_path(name))
        .ok()
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
}

impl Sysctls {
    /// Raises what `n` loopback connections need; with `dry` only checks and fails naming it.
    pub(super) fn raise(n: u64, dry: bool, file: Option<PathBuf>) -> anyhow::Result<Self> {
        let mut wanted: Vec<(String, String, String)> = Vec::new();
        // Every loopback connection is one conntrack entry when nf_conntrack is loaded.
        if let Some(cur) = read_sysctl("net.netfilter.nf_conntrack_max") {
            let need = n + n / 2 + 65_536;
            if cur.parse::<u64>().unwrap_or(0) < need {
                wanted.push((
                    "net.netfilter.nf_conntrack_max".into(),
                    need.to_string(),
                    format!("conntrack: {n} loopback connections are tracked (one entry each)"),
                ));
            }
        }
        // TCP buffer memory (pages): two sockets per connection, a broadcast queues on all.
        if let Some(cur) = read_sysctl("net.ipv4.tcp_mem") {
            let v: Vec<u64> = cur.split(' ').filter_map(|x| x.parse().ok()).collect();
            if let [lo, pressure, max] = v[..] {
                let need_max = n * 3 / 2;
                if max < need_max {
                    wanted.push((
                        "net.ipv4.tcp_mem".into(),
                        format!("{lo} {} {need_max}", pressure.max(n)),
                        format!(
                            "memory: {} sockets may each queue a page at once (tcp_mem is in pages)",
                            2 * n
                        ),
                    ));
                }
            }
        }
        let mut s = Self {
            saved: Vec::new(),
            file,
            changes: Vec::new(),
        };
        for (name, value, why) in wanted {
            let before = read_sysctl(&name).unwrap_or_default();
            if dry {
                bail!(
                    "{why}: {name} is {before}, the run needs {value} (run without --no-sysctl, as root)"
                );
            }
            eprintln!("million: raising {name} {before} -> {value} ({why}); restored afterwards");
            std::fs::write(sysctl_path(&name), &value).with_context(|| {
                format!(
                    "cannot raise {name} to {value} ({why}); are /proc/sys writable and we root?"
                )
            })?;
            s.saved.push((sysctl_path(&name), before.clone()));
            s.changes.push(SysctlChange {
                name,
                before,
                during: value,
                why,
            });
            s.save_file()?;
        }
        for name in [
            "net.ipv4.ip_local_port_range",
            "fs.file-max",
            "fs.nr_open",
            "net.core.somaxconn",
        ] {
            if let Some(v) = read_sysctl(name) {
                s.changes.push(SysctlChange {
                    name: name.into(),
                    before: v.clone(),
                    during: v,
                    why: "unchanged".into(),
                });
            }
        }
        Ok(s)
    }

    pub(super) fn save_file(&self) -> anyhow::Result<()> {
        if let Some(f) = &self.file {
            let body: String = self
                .saved
                .iter()
                .map(|(p, v)| format!("{} {v}\n", p.display()))
                .collect();
            std::fs::write(f, body).with_context(|| format!("write {}", f.display()))?;
        }
        Ok(())
    }

    /// Restores every setting. Before lowering the conntrack maximum it waits (at most 60 s)
    /// for the entries of the run to go, so other loopback users are not refused meanwhile.
    pub(super) fn restore(&mut self) {
        for (path, value) in self.saved.drain(..).rev() {
            if path.ends_with("nf_conntrack_max") {
                let max: u64 = value.parse().unwrap_or(0);
                let until = Instant::now() + Duration::from_secs(60);
                while conntrack_count().is_some_and(|c| c > max * 9 / 10) && Instant::now() < until
                {
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
            match std::fs::write(&path, &value) {
                Ok(()) => eprintln!("million: restored {} = {value}", path.display()),
                Err(e) => eprintln!(
                    "million: could not restore {} to {value}: {e} (restore it by hand)",
                    path.display()
                ),
            }
        }
        if let Some(f) = &self.file {
            let _ = std::fs::remove_file(f);
        }
    }
}

impl Drop for Sysctls {
    fn drop(&mut self) {
        self.restore();
    }
}

pub(super) fn conntrack_count() -> Option<u64> {
    read_sysctl("net.netfilter.nf_conntrack_count").and_then(|v| v.parse().ok())
}
