//! The process's log subscriber: the filter `RUST_LOG` or `[log] level` asks for, with libraries
//! kept at `info` and above whatever it asks, and colour only on a terminal.
//!
//! Libraries log what passes through them at `debug` and `trace`: tungstenite every received
//! frame (an `auth` or `refresh` frame is a token), h2 and hyper headers (`authorization`: an
//! API key), async-nats server addresses with their credentials. Herald never logs a token, a key
//! or a payload, so below `info` only Herald's own crates are heard.

use std::io::IsTerminal as _;

use tracing::{Level, Metadata};
use tracing_subscriber::filter::{EnvFilter, FilterExt as _, filter_fn};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{Layer as _, fmt};

use crate::config::LogConfig;

/// Whether an event or span may be logged at all, whatever the filter asks for: everything at
/// `info` and above, and Herald's own crates (`herald`, `herald_*`) at every level.
pub fn allowed(meta: &Metadata<'_>) -> bool {
    *meta.level() <= Level::INFO || is_herald(meta.target())
}

fn is_herald(target: &str) -> bool {
    let krate = target.split("::").next().unwrap_or_default();
    krate == "herald" || krate.starts_with("herald_")
}

/// Installs the subscriber: `RUST_LOG`, else `[log] level`, else `info`; text or JSON on stderr.
pub fn init(cfg: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let filter = filter.and(filter_fn(allowed));
    let layer = if cfg.format == "json" {
        fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed()
    } else {
        fmt::layer()
            .with_ansi(colour())
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed()
    };
    tracing_subscriber::registry().with(layer).init();
}

/// Colour codes only for a person at a terminal: not in a file, a pipe or a journal, and not
/// when `NO_COLOR` is set (<https://no-color.org>).
fn colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::is_herald;

    #[test]
    fn herald_crates_are_told_from_libraries() {
        for t in [
            "herald",
            "herald::serve",
            "herald_edge",
            "herald_edge::conn",
        ] {
            assert!(is_herald(t), "{t}");
        }
        for t in [
            "tungstenite::protocol",
            "h2",
            "heraldry",
            "hyper_util::client",
            "",
        ] {
            assert!(!is_herald(t), "{t}");
        }
    }
}
