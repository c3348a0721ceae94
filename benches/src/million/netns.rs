//! `--netns`: runs the scenario again, inside a network namespace made for the run. The
//! namespace gets its own TCP established-connection hash table, sized for the run's sockets
//! when the namespace is made (`net.ipv4.tcp_child_ehash_entries`, Linux 6.1 and later): the
//! host's table is sized at boot (262,144 buckets on this machine), so a million loopback
//! connections (two million sockets) make chains of about eight that every packet walks. The
//! settings a namespace cannot change (`tcp_mem`, the conntrack maximum) are raised on the host
//! by the caller before and restored after.

use std::process::Stdio;

use anyhow::{Context as _, bail};
use tokio::process::Command;

use super::kernel::{read_sysctl, sysctl_path};

const CHILD_EHASH: &str = "net.ipv4.tcp_child_ehash_entries";

/// Makes the namespace, runs this command line again inside it (without `--netns`, without
/// touching kernel settings), deletes the namespace and returns the inner run's outcome.
pub(super) async fn run_inside(connections: u64) -> anyhow::Result<()> {
    let name = format!("herald-million-{}", std::process::id());
    let buckets = (2 * connections)
        .next_power_of_two()
        .clamp(1 << 16, 1 << 24);
    let before = read_sysctl(CHILD_EHASH)
        .with_context(|| format!("--netns needs {CHILD_EHASH} (Linux 6.1 or later)"))?;
    std::fs::write(sysctl_path(CHILD_EHASH), buckets.to_string())
        .with_context(|| format!("set {CHILD_EHASH} (root needed)"))?;
    let made = ip(&["netns", "add", &name]).await;
    // Only namespaces made while it is set get a table of their own: put it back at once.
    let _ = std::fs::write(sysctl_path(CHILD_EHASH), &before);
    made?;
    eprintln!(
        "million: network namespace {name} with a TCP hash table of {buckets} buckets \
         (the host's: {})",
        read_sysctl("net.ipv4.tcp_ehash_entries").unwrap_or_default()
    );
    let outcome = async {
        ip(&["netns", "exec", &name, "ip", "link", "set", "lo", "up"]).await?;
        let mut args: Vec<String> = std::env::args()
            .skip(1)
            .filter(|a| a != "--netns")
            .collect();
        args.push("--no-sysctl".into());
        let status = Command::new("ip")
            .args(["netns", "exec", &name])
            .arg(std::env::current_exe()?)
            .args(&args)
            .stdin(Stdio::null())
            .status()
            .await
            .context("run ip netns exec")?;
        if !status.success() {
            bail!("the run inside {name} failed ({status})");
        }
        Ok(())
    }
    .await;
    if let Err(e) = ip(&["netns", "delete", &name]).await {
        eprintln!("million: could not delete network namespace {name}: {e:#}");
    }
    outcome
}

/// Runs `ip` with `args`; fails with its error output.
async fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .await
        .context("run ip (Debian: iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
