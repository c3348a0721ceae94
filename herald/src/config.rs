//! The all-in-one configuration: TOML file, then `HERALD_*` environment variables, then flags;
//! validated before anything starts, with every bad setting named at once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format as _, Serialized, Toml};
use herald_core::projects::{ProjectConfig, validate_projects};
use herald_edge::EdgeConfig;
use herald_router::RouterConfig;
use serde::{Deserialize, Serialize};

/// Everything `herald serve` reads.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The WebSocket edge.
    pub edge: EdgeConfig,
    /// The gRPC router.
    pub router: RouterConfig,
    /// The admin HTTP endpoint.
    pub admin: AdminConfig,
    /// Logging.
    pub log: LogConfig,
    /// The projects (tenants).
    pub projects: Vec<ProjectConfig>,
}

/// The admin endpoint (`/healthz`, `/readyz`, `/metrics`) and shutdown.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin HTTP listener. Default `127.0.0.1:9090`.
    pub listen: SocketAddr,
    /// How long a shutdown may take to close every client, in seconds. Default 10.
    pub shutdown_grace_secs: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            shutdown_grace_secs: 10,
        }
    }
}

/// Log settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `herald_edge=debug`; `RUST_LOG` wins. Default `info`.
    pub level: String,
    /// `text` or `json`. Default `text`.
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

/// Every problem found in the configuration.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<String>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "invalid configuration:")?;
        for p in &self.0 {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Command-line settings laid over the file and environment.
#[derive(Debug, Default, Serialize)]
pub struct Overrides {
    /// `edge.listen`.
    pub ws_listen: Option<SocketAddr>,
    /// `router.listen`.
    pub grpc_listen: Option<SocketAddr>,
    /// `admin.listen`.
    pub admin_listen: Option<SocketAddr>,
}

/// Reads the file (if any), the environment and the overrides; validates.
pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigErrors> {
    let mut fig = Figment::from(Serialized::defaults(Config::default()));
    if let Some(path) = file {
        if !path.is_file() {
            return Err(ConfigErrors(vec![format!(
                "config file {}: not found or not a file",
                path.display()
            )]));
        }
        fig = fig.merge(Toml::file_exact(path));
    }
    // `HERALD_CONFIG`, `HERALD_API_KEY`, `HERALD_ROUTER` and `HERALD_TOKEN_SECRET` are the CLI's.
    fig = fig.merge(Env::prefixed("HERALD_").split("__").ignore(&[
        "config",
        "api_key",
        "router",
        "token_secret",
    ]));
    if let Some(a) = overrides.ws_listen {
        fig = fig.merge(Serialized::default("edge.listen", a));
    }
    if let Some(a) = overrides.grpc_listen {
        fig = fig.merge(Serialized::default("router.listen", a));
    }
    if let Some(a) = overrides.admin_listen {
        fig = fig.merge(Serialized::default("admin.listen", a));
    }
    let config: Config = fig
        .extract()
        .map_err(|e| ConfigErrors(e.into_iter().map(|e| e.to_string()).collect()))?;
    let problems = config.validate();
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(problems))
    }
}

impl Config {
    /// Every problem, each naming its setting.
    pub fn validate(&self) -> Vec<String> {
        let mut p = self.edge.validate();
        p.extend(self.router.validate());
        p.extend(validate_projects(&self.projects));
        if !matches!(self.log.format.as_str(), "text" | "json") {
            p.push("log.format: must be \"text\" or \"json\"".into());
        }
        p
    }
}

/// The config file named by `--config` or `HERALD_CONFIG`.
pub fn file_from(arg: Option<PathBuf>) -> Option<PathBuf> {
    arg.or_else(|| std::env::var_os("HERALD_CONFIG").map(PathBuf::from))
}
