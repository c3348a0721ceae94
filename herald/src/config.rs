//! The all-in-one configuration: TOML file, then `HERALD_*` environment variables, then flags;
//! validated before anything starts, with every bad setting named at once.

use std::net::SocketAddr;
use std::path::Path;

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
    /// Embedded (default) or clustered over Redis and NATS, and which roles this process runs.
    pub cluster: ClusterConfig,
    /// Traces exported over OTLP (off by default).
    pub telemetry: TelemetryConfig,
}

/// Which registry (`[cluster] registry`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistryKind {
    /// In this process (single node).
    Memory,
    /// Redis, single or Cluster.
    Redis,
}

/// Which bus (`[cluster] bus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    /// In this process (single node).
    Memory,
    /// NATS (a server or a cluster).
    Nats,
}

/// What a process runs (`[cluster] role`, or `--role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The WebSocket edge only.
    Edge,
    /// The gRPC router only.
    Router,
    /// Both (the only choice with the in-process registry and bus).
    All,
}

impl Role {
    /// Whether the edge runs.
    pub fn edge(self) -> bool {
        matches!(self, Role::Edge | Role::All)
    }

    /// Whether the router runs.
    pub fn router(self) -> bool {
        matches!(self, Role::Router | Role::All)
    }

    /// The name the configuration and `--role` use.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Edge => "edge",
            Role::Router => "router",
            Role::All => "all",
        }
    }
}

/// The `[cluster]` section: embedded by default; `registry = "redis"` with `bus = "nats"` makes
/// the process one node of a cluster of stateless edges and routers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// `"memory"` or `"redis"`. Default `"memory"`.
    pub registry: RegistryKind,
    /// Redis URLs: one for a single Redis, seed nodes for a Redis Cluster.
    /// Default `["redis://127.0.0.1:6379"]`.
    pub redis_urls: Vec<String>,
    /// Whether `redis_urls` name a Redis Cluster. Default false.
    pub redis_cluster: bool,
    /// Where projects' history is kept (`[projects.history]`): Redis URLs as `redis_urls`.
    /// Default empty: the registry's Redis. A Redis of its own keeps history out of reach of
    /// what only clears the registry (a `FLUSHALL`, a restart without persistence).
    pub history_redis_urls: Vec<String>,
    /// Whether `history_redis_urls` name a Redis Cluster. Default false.
    pub history_redis_cluster: bool,
    /// Prefix of every Redis key and NATS subject (`[a-z0-9_-]`), so clusters can share servers.
    /// Default `"herald"`.
    pub prefix: String,
    /// `"memory"` or `"nats"`. Default `"memory"`.
    pub bus: BusKind,
    /// NATS URLs; several name a NATS cluster. Default `["nats://127.0.0.1:4222"]`.
    pub nats_urls: Vec<String>,
    /// An edge is dead this long after its last heartbeat (it heartbeats every third of it);
    /// routing to a dead edge stops within it. Seconds, at least 2. Default 15.
    pub edge_ttl_secs: u64,
    /// Deadline of one Redis call, in milliseconds. Default 3,000.
    pub redis_timeout_ms: u64,
    /// `"edge"`, `"router"` or `"all"`. Default `"all"`.
    pub role: Role,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            registry: RegistryKind::Memory,
            redis_urls: vec!["redis://127.0.0.1:6379".into()],
            redis_cluster: false,
            history_redis_urls: Vec::new(),
            history_redis_cluster: false,
            prefix: "herald".into(),
            bus: BusKind::Memory,
            nats_urls: vec!["nats://127.0.0.1:4222".into()],
            edge_ttl_secs: 15,
            redis_timeout_ms: 3_000,
            role: Role::All,
        }
    }
}

impl ClusterConfig {
    /// Whether this process is one node of a cluster.
    pub fn clustered(&self) -> bool {
        self.registry == RegistryKind::Redis
    }

    /// Every problem, each naming its setting.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        match (self.registry, self.bus) {
            (RegistryKind::Memory, BusKind::Memory) => {
                if self.role != Role::All {
                    p.push(
                        "cluster.role: an embedded Herald runs edge and router together (\"all\"); \
                         set registry = \"redis\" and bus = \"nats\" to split them"
                            .into(),
                    );
                }
            }
            (RegistryKind::Redis, BusKind::Nats) => {}
            _ => p.push(
                "cluster.registry, cluster.bus: either both in-process (\"memory\") or \
                 Redis and NATS (\"redis\", \"nats\")"
                    .into(),
            ),
        }
        if self.registry == RegistryKind::Redis {
            if self.redis_urls.is_empty() {
                p.push("cluster.redis_urls: at least one URL is needed".into());
            }
            if !self.redis_cluster && self.redis_urls.len() > 1 {
                p.push(
                    "cluster.redis_urls: a single Redis takes one URL (set redis_cluster = true \
                     for a Redis Cluster)"
                        .into(),
                );
            }
            for (i, u) in self.redis_urls.iter().enumerate() {
                if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
                    p.push(format!("cluster.redis_urls[{i}]: not a redis:// URL"));
                }
            }
            if !self.history_redis_cluster && self.history_redis_urls.len() > 1 {
                p.push(
                    "cluster.history_redis_urls: a single Redis takes one URL (set \
                     history_redis_cluster = true for a Redis Cluster)"
                        .into(),
                );
            }
            for (i, u) in self.history_redis_urls.iter().enumerate() {
                if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
                    p.push(format!(
                        "cluster.history_redis_urls[{i}]: not a redis:// URL"
                    ));
                }
            }
        }
        if self.bus == BusKind::Nats {
            if self.nats_urls.is_empty() {
                p.push("cluster.nats_urls: at least one URL is needed".into());
            }
            for (i, u) in self.nats_urls.iter().enumerate() {
                if u.parse::<async_nats::ServerAddr>().is_err() {
                    p.push(format!("cluster.nats_urls[{i}]: not a NATS server address"));
                }
            }
        }
        if herald_core::ids::EdgeId::validate(&self.prefix).is_err() {
            p.push("cluster.prefix: must be [a-z0-9_-], 1 to 64 characters".into());
        }
        if self.edge_ttl_secs < 2 {
            p.push("cluster.edge_ttl_secs: must be at least 2".into());
        }
        if self.redis_timeout_ms == 0 {
            p.push("cluster.redis_timeout_ms: must be greater than 0".into());
        }
        p
    }
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

/// The `[telemetry]` section: OpenTelemetry traces of publishes (router, bus, edges), exported
/// over OTLP/gRPC. Off unless `otlp_endpoint` is set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// The OTLP/gRPC endpoint spans are sent to, plaintext, e.g. `http://127.0.0.1:4317` (an
    /// OpenTelemetry Collector, Jaeger, Tempo: one beside the node, which forwards them on).
    /// Default none: no spans are made.
    pub otlp_endpoint: Option<String>,
    /// The spans' `service.name`. Default `herald`.
    pub service_name: String,
    /// Share of publishes traced when the caller sent no trace context, 0.0 to 1.0 (a caller's
    /// `traceparent` decides for its own publishes). Default 1.0.
    pub sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: "herald".into(),
            sample_ratio: 1.0,
        }
    }
}

impl TelemetryConfig {
    /// Every problem, each naming its setting.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Some(e) = &self.otlp_endpoint
            && !e.starts_with("http://")
        {
            p.push(format!(
                "telemetry.otlp_endpoint: {e:?} is not an http:// URL (a collector beside the node)"
            ));
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            p.push("telemetry.sample_ratio: must be from 0.0 to 1.0".into());
        }
        if self.service_name.is_empty() {
            p.push("telemetry.service_name: must not be empty".into());
        }
        p
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
    /// `router.http_listen`.
    pub http_listen: Option<SocketAddr>,
    /// `admin.listen`.
    pub admin_listen: Option<SocketAddr>,
    /// `cluster.role`.
    pub role: Option<Role>,
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
    // Only `HERALD_<SECTION>__<FIELD>` is configuration; other `HERALD_*` names are the CLI's or
    // someone else's (see `foreign_env_vars`).
    fig = fig.merge(
        Env::prefixed(ENV_PREFIX)
            .filter(|k| k.as_str().contains(ENV_SPLIT))
            .split(ENV_SPLIT),
    );
    if let Some(a) = overrides.ws_listen {
        fig = fig.merge(Serialized::default("edge.listen", a));
    }
    if let Some(a) = overrides.grpc_listen {
        fig = fig.merge(Serialized::default("router.listen", a));
    }
    if let Some(a) = overrides.http_listen {
        fig = fig.merge(Serialized::default("router.http_listen", a));
    }
    if let Some(a) = overrides.admin_listen {
        fig = fig.merge(Serialized::default("admin.listen", a));
    }
    if let Some(r) = overrides.role {
        fig = fig.merge(Serialized::default("cluster.role", r));
    }
    let vars = config_env_vars();
    let config: Config = fig
        .extract()
        .map_err(|e| ConfigErrors(e.into_iter().map(|e| describe(&e, &vars)).collect()))?;
    let problems = config.validate();
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(
            problems.into_iter().map(|p| name_env(p, &vars)).collect(),
        ))
    }
}

const ENV_PREFIX: &str = "HERALD_";
const ENV_SPLIT: &str = "__";

/// `HERALD_*` variables of the CLI (`herald publish` and the others), not configuration.
const CLI_ENV_VARS: [&str; 9] = [
    "HERALD_CONFIG",
    "HERALD_API_KEY",
    "HERALD_ROUTER",
    "HERALD_TOKEN_SECRET",
    "HERALD_KEY_SECRET",
    "HERALD_CA_FILE",
    "HERALD_CLIENT_CERT",
    "HERALD_CLIENT_KEY",
    "HERALD_TLS_SERVER_NAME",
];

/// The `HERALD_*` part of a variable name, if it has one (matched case-insensitively, as the
/// configuration reads it).
fn herald_suffix(name: &str) -> Option<&str> {
    let head = name.get(..ENV_PREFIX.len())?;
    head.eq_ignore_ascii_case(ENV_PREFIX)
        .then(|| &name[ENV_PREFIX.len()..])
}

/// A configuration variable: its name as set and the setting it names
/// (`HERALD_EDGE__PING_INTERVAL_SECS`: `edge`, `ping_interval_secs`).
struct EnvVar {
    name: String,
    key: Vec<String>,
}

/// The `HERALD_<SECTION>__<FIELD>` variables set now.
fn config_env_vars() -> Vec<EnvVar> {
    std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter_map(|name| {
            let rest = herald_suffix(&name)?;
            rest.contains(ENV_SPLIT).then(|| EnvVar {
                key: rest
                    .trim()
                    .to_ascii_lowercase()
                    .split(ENV_SPLIT)
                    .map(String::from)
                    .collect(),
                name: name.clone(),
            })
        })
        .collect()
}

/// `HERALD_*` variables that are neither configuration (no `__`) nor the CLI's, such as a
/// script's `HERALD_BIN`: not read, and worth a warning (a misspelt setting would look alike).
pub fn foreign_env_vars() -> Vec<String> {
    let mut names: Vec<String> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|name| {
            herald_suffix(name).is_some_and(|rest| !rest.contains(ENV_SPLIT))
                && !CLI_ENV_VARS
                    .iter()
                    .any(|cli| cli.eq_ignore_ascii_case(name))
        })
        .collect();
    names.sort();
    names
}

/// The variables that set `key` or a part of it, or that `key` is a part of.
fn vars_for<'a>(key: &[String], vars: &'a [EnvVar]) -> Vec<&'a str> {
    vars.iter()
        .filter(|v| v.key.starts_with(key) || key.starts_with(&v.key))
        .map(|v| v.name.as_str())
        .collect()
}

/// `edge.listeners[0].addr` for the path `["edge", "listeners", "0", "addr"]`.
fn dotted(path: &[String]) -> String {
    let mut out = String::new();
    for p in path {
        if p.parse::<usize>().is_ok() {
            out.push_str(&format!("[{p}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(p);
        }
    }
    out
}

/// One problem found while reading the configuration, named like the validation's: the setting
/// (`edge.listen_port`) or, when the environment gave it, the variable the user set.
fn describe(e: &figment::Error, vars: &[EnvVar]) -> String {
    let what = match &e.kind {
        figment::error::Kind::UnknownField(field, expected) => {
            let expected: Vec<String> = expected.iter().map(|x| format!("`{x}`")).collect();
            format!(
                "unknown setting `{field}`; expected one of {}",
                expected.join(", ")
            )
        }
        // A value in the wrong place may be a key (`admin_api_keys = "..."` for a list): its
        // kind is named, never its text.
        figment::error::Kind::InvalidType(actual, expected) => {
            format!(
                "invalid type: found {}, expected {expected}",
                redacted(actual)
            )
        }
        figment::error::Kind::InvalidValue(actual, expected) => {
            format!(
                "invalid value: found {}, expected {expected}",
                redacted(actual)
            )
        }
        kind => kind.to_string(),
    };
    let md = e.metadata.as_ref();
    if md.is_some_and(|m| m.name.contains("environment variable")) {
        let names = vars_for(&e.path, vars);
        if !names.is_empty() {
            return format!("{}: {what}", names.join(", "));
        }
    }
    let file = md
        .and_then(|m| m.source.as_ref())
        .and_then(|s| s.file_path())
        .map(|p| format!(" (in {})", p.display()))
        .unwrap_or_default();
    match dotted(&e.path) {
        key if key.is_empty() => format!("{what}{file}"),
        key => format!("{key}: {what}{file}"),
    }
}

/// What a value is, without its text when it has one.
fn redacted(actual: &figment::error::Actual) -> String {
    use figment::error::Actual;
    match actual {
        Actual::Str(_) => "a string".into(),
        Actual::Bytes(_) => "bytes".into(),
        Actual::Char(_) => "a character".into(),
        Actual::Other(_) => "another value".into(),
        other => other.to_string(),
    }
}

/// A validation problem (`edge.ping_interval_secs: must be ...`) with the variable that set the
/// setting, when one did.
fn name_env(problem: String, vars: &[EnvVar]) -> String {
    let Some((keys, _)) = problem.split_once(": ") else {
        return problem;
    };
    let mut names: Vec<&str> = Vec::new();
    for key in keys.split(", ") {
        // `cluster.redis_urls[1]` was set by the variable of `cluster.redis_urls`.
        let path: Vec<String> = key
            .split('[')
            .next()
            .unwrap_or_default()
            .split('.')
            .map(String::from)
            .collect();
        for v in vars.iter().filter(|v| path.starts_with(&v.key)) {
            if !names.contains(&v.name.as_str()) {
                names.push(&v.name);
            }
        }
    }
    if names.is_empty() {
        problem
    } else {
        format!("{problem} (set by {})", names.join(", "))
    }
}

impl Config {
    /// Every problem, each naming its setting.
    pub fn validate(&self) -> Vec<String> {
        let mut p = self.edge.validate();
        p.extend(self.router.validate());
        p.extend(validate_projects(&self.projects));
        p.extend(self.cluster.validate());
        p.extend(self.duplicate_api_keys());
        p.extend(self.telemetry.validate());
        if !matches!(self.log.format.as_str(), "text" | "json") {
            p.push("log.format: must be \"text\" or \"json\"".into());
        }
        p
    }
}

impl Config {
    /// An API key used twice would grant one project's caller another's rights (or an admin's):
    /// every key must be unique across projects and admin keys. Keys are never echoed.
    fn duplicate_api_keys(&self) -> Vec<String> {
        let mut owner: std::collections::HashMap<&str, String> = Default::default();
        let mut problems = Vec::new();
        let admin = self
            .router
            .admin_api_keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.as_str(), format!("router.admin_api_keys[{i}]")));
        let projects = self.projects.iter().enumerate().flat_map(|(i, p)| {
            p.api_keys.iter().enumerate().map(move |(j, k)| {
                (
                    k.as_str(),
                    format!("projects[{i}] ({}).api_keys[{j}]", p.id),
                )
            })
        });
        for (key, at) in admin.chain(projects) {
            match owner.get(key) {
                Some(first) => problems.push(format!("{at}: the same key as {first}")),
                None => {
                    owner.insert(key, at);
                }
            }
        }
        problems
    }
}
