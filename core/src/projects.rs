//! Project (tenant) configuration: who may connect (JWT keys) and who may publish (API keys).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::ids::ProjectId;

/// A JWT signature algorithm. The algorithm is pinned per key; a token's header never chooses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyAlgorithm {
    /// HMAC with SHA-256 and a shared secret. For development.
    HS256,
    /// RSA PKCS#1 v1.5 with SHA-256.
    RS256,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// Ed25519.
    EdDSA,
}

/// One key that verifies client tokens of a project.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Key id, matched against the token header's `kid`. May be omitted when the project has a
    /// single key; a project with several keys requires tokens to name theirs.
    #[serde(default)]
    pub kid: Option<String>,
    /// The algorithm this key verifies.
    pub alg: KeyAlgorithm,
    /// The shared secret, for HS256 only.
    #[serde(default)]
    pub secret: Option<String>,
    /// A PEM file holding the public key (RS256, ES256, EdDSA).
    #[serde(default)]
    pub public_key_file: Option<PathBuf>,
    /// The public key as inline PEM text, instead of a file.
    #[serde(default)]
    pub public_key_pem: Option<String>,
}

/// One project (tenant).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectConfig {
    /// The project id (`[a-z0-9_-]{1,64}`), as used in client URLs and API calls.
    pub id: String,
    /// API keys that may publish to and manage this project (`authorization: Bearer <key>`).
    #[serde(default)]
    pub api_keys: Vec<String>,
    /// Keys that verify client tokens.
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    /// This project's defences (`[projects.limits]`): address lists, origins and caps.
    #[serde(default)]
    pub limits: ProjectLimits,
    /// Accept clients by their verified TLS client certificate, without a token
    /// (`[projects.client_certificates]`). Default absent: a token is required.
    #[serde(default)]
    pub client_certificates: Option<ClientCertAuth>,
    /// What this project keeps for clients to recover (`[projects.history]`). Default absent:
    /// nothing is kept, messages carry no offset.
    #[serde(default)]
    pub history: Option<crate::history::HistoryConfig>,
    /// Accept the `permessage-deflate` WebSocket extension when a client offers it (always with
    /// `server_no_context_takeover` and `client_no_context_takeover`). Default `false`: declined.
    #[serde(default)]
    pub permessage_deflate: bool,
    /// A JWK Set URL whose keys verify client tokens too (`[projects.jwks]`), instead of or
    /// beside `keys`. Default absent.
    #[serde(default)]
    pub jwks: Option<JwksConfig>,
    /// Send presence events (`join`, `leave`) to a group's native-protocol members when a
    /// user's first connection in the group arrives or its last one leaves, cluster-wide.
    /// Default false.
    #[serde(default)]
    pub presence_events: bool,
    /// Post connection, subscription and presence events to the back end
    /// (`[projects.webhook]`). Default absent: none are posted.
    #[serde(default)]
    pub webhook: Option<WebhookConfig>,
}

/// Where a project's issuer publishes its public keys (a JWK Set over HTTPS), and how they are
/// cached (docs/configuration.md `[projects.jwks]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwksConfig {
    /// The `https://` URL of the JWK Set.
    pub url: String,
    /// A PEM file of the CA certificates that verify the URL's server (a private issuer).
    /// Default absent: the system's trusted roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The same CA certificates as inline PEM text (the admin API's form: a path would not exist
    /// on every node).
    #[serde(default)]
    pub ca_pem: Option<String>,
    /// A token naming an unknown `kid` fetches the set again at most once per this many seconds;
    /// also the shortest time a fetched set is kept. Default 10.
    #[serde(default = "JwksConfig::default_min_refresh_secs")]
    pub min_refresh_secs: u64,
    /// How long a set is kept when its response has no `Cache-Control: max-age`. Default 300.
    #[serde(default = "JwksConfig::default_default_max_age_secs")]
    pub default_max_age_secs: u64,
    /// The longest a set is kept, whatever its `max-age` says. Default 86400.
    #[serde(default = "JwksConfig::default_max_age_cap_secs")]
    pub max_age_cap_secs: u64,
    /// Deadline of one fetch (connect, TLS, answer), in milliseconds; the longest a client's
    /// handshake waits for a refresh on an unknown `kid`. Default 2000.
    #[serde(default = "JwksConfig::default_timeout_ms")]
    pub timeout_ms: u64,
}

impl JwksConfig {
    fn default_min_refresh_secs() -> u64 {
        10
    }
    fn default_default_max_age_secs() -> u64 {
        300
    }
    fn default_max_age_cap_secs() -> u64 {
        86_400
    }
    fn default_timeout_ms() -> u64 {
        2_000
    }

    /// A source of `url` with the default settings.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ca_file: None,
            ca_pem: None,
            min_refresh_secs: Self::default_min_refresh_secs(),
            default_max_age_secs: Self::default_default_max_age_secs(),
            max_age_cap_secs: Self::default_max_age_cap_secs(),
            timeout_ms: Self::default_timeout_ms(),
        }
    }

    /// Every problem of these settings, each naming the field under `at`.
    pub fn problems(&self, at: &str) -> Vec<String> {
        let mut problems = Vec::new();
        match self.url.strip_prefix("https://") {
            None => problems.push(format!("{at}.url: must be an https:// URL")),
            Some(rest) => {
                let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
                if host.is_empty() || host.contains('@') || self.url.len() > 2048 {
                    problems.push(format!(
                        "{at}.url: not https://host[:port]/path (no user info, at most 2048 bytes)"
                    ));
                }
            }
        }
        if self.ca_file.is_some() && self.ca_pem.is_some() {
            problems.push(format!("{at}: give ca_file or ca_pem, not both"));
        }
        if let Some(f) = &self.ca_file
            && !f.is_file()
        {
            problems.push(format!("{at}.ca_file: cannot read {}", f.display()));
        }
        if !(1..=3_600).contains(&self.min_refresh_secs) {
            problems.push(format!("{at}.min_refresh_secs: 1 to 3600"));
        }
        if self.max_age_cap_secs < self.min_refresh_secs {
            problems.push(format!("{at}.max_age_cap_secs: at least min_refresh_secs"));
        }
        if !(100..=30_000).contains(&self.timeout_ms) {
            problems.push(format!("{at}.timeout_ms: 100 to 30000"));
        }
        problems
    }
}

/// Which events a webhook posts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookEvent {
    /// A client connected (after authentication).
    Connect,
    /// A client's connection ended.
    Disconnect,
    /// A client subscribed to a group itself (not the token's groups).
    Subscribe,
    /// A user's first connection in a group arrived (presence).
    Join,
    /// A user's last connection in a group left (presence).
    Leave,
}

impl WebhookEvent {
    /// Every event, in a fixed order.
    pub const ALL: [WebhookEvent; 5] = [
        WebhookEvent::Connect,
        WebhookEvent::Disconnect,
        WebhookEvent::Subscribe,
        WebhookEvent::Join,
        WebhookEvent::Leave,
    ];

    /// Its name on the wire (`connect`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookEvent::Connect => "connect",
            WebhookEvent::Disconnect => "disconnect",
            WebhookEvent::Subscribe => "subscribe",
            WebhookEvent::Join => "join",
            WebhookEvent::Leave => "leave",
        }
    }
}

fn all_webhook_events() -> Vec<WebhookEvent> {
    WebhookEvent::ALL.to_vec()
}

/// Where and how a project's events are posted (`[projects.webhook]`). Each node (the edge that
/// saw the event; any node for the leaves of a dead edge) posts its own events in batches,
/// signed with `secret` (docs/api.md "Webhooks").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The endpoint: `https://...` (`http://` only for loopback addresses, for tests).
    pub url: String,
    /// The HMAC-SHA256 key of the `herald-signature` header (at least 16 characters).
    pub secret: String,
    /// Which events are posted. Default: all of `connect`, `disconnect`, `subscribe`, `join`,
    /// `leave` (`join` and `leave` need `presence_events`).
    #[serde(default = "all_webhook_events")]
    pub events: Vec<WebhookEvent>,
    /// Most events in one post. Default 100.
    #[serde(default = "default_webhook_batch")]
    pub max_batch: usize,
    /// How long the first event of a batch waits for others, in milliseconds. Default 200.
    #[serde(default = "default_webhook_linger")]
    pub batch_ms: u64,
    /// Most events waiting on one node (being retried included); beyond, new events are dropped
    /// and counted (`herald_webhook_events_dropped_total`). Default 10,000.
    #[serde(default = "default_webhook_queue")]
    pub max_queue: usize,
    /// Deadline of one post, in milliseconds. Default 5,000.
    #[serde(default = "default_webhook_timeout")]
    pub timeout_ms: u64,
    /// A PEM file of CA certificates trusted for the endpoint besides the system's. Default
    /// absent.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The same CA certificates as inline PEM text (the admin API's form: a path would not exist
    /// on every node). Default absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
}

fn default_webhook_batch() -> usize {
    100
}
fn default_webhook_linger() -> u64 {
    200
}
fn default_webhook_queue() -> usize {
    10_000
}
fn default_webhook_timeout() -> u64 {
    5_000
}

impl WebhookConfig {
    /// Every problem of this webhook, each naming the setting under `at`.
    pub fn problems(&self, at: &str) -> Vec<String> {
        let mut out = Vec::new();
        let loopback = ["http://127.0.0.1", "http://[::1]", "http://localhost"];
        if !self.url.starts_with("https://") && !loopback.iter().any(|p| self.url.starts_with(p)) {
            out.push(format!(
                "{at}.url: must be https:// (http:// only on loopback)"
            ));
        }
        if self.secret.len() < 16 {
            out.push(format!("{at}.secret: shorter than 16 characters"));
        }
        if self.max_batch == 0 {
            out.push(format!("{at}.max_batch: must be at least 1"));
        }
        if self.max_queue < self.max_batch {
            out.push(format!("{at}.max_queue: must be at least max_batch"));
        }
        if self.timeout_ms == 0 {
            out.push(format!("{at}.timeout_ms: must be at least 1"));
        }
        if self.ca_file.is_some() && self.ca_pem.is_some() {
            out.push(format!("{at}: give ca_file or ca_pem, not both"));
        }
        out
    }
}

/// A project's own defences, applied on top of the edge's (`[projects.limits]`). Reloaded with
/// the projects (SIGHUP).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProjectLimits {
    /// Client networks (CIDR, IPv4 or IPv6) allowed to connect to this project; empty allows
    /// every address not denied.
    pub allow_ips: Vec<ipnet::IpNet>,
    /// Client networks refused (HTTP 403); a deny wins over an allow.
    pub deny_ips: Vec<ipnet::IpNet>,
    /// Browser origins allowed (`https://app.example.com`, `https://*.example.com`); empty
    /// falls back to the edge's `origins`.
    pub origins: Vec<String>,
    /// Refuse requests without an `Origin` header; unset falls back to the edge's setting.
    pub require_origin: Option<bool>,
    /// Most connections of this project on one edge (HTTP 503 beyond); 0: no cap.
    pub max_connections: u32,
    /// Most groups per connection, below the edge's `max_groups_per_connection`; 0: the edge's.
    pub max_subscriptions_per_connection: u32,
    /// Most connections (devices) of one user on one edge (close 4011 beyond); 0: no cap.
    pub max_connections_per_user: u32,
}

/// How a project accepts devices by TLS client certificate (mutual TLS on a listener): `sub` is
/// the certificate's subject Common Name (or its first DNS subjectAltName when it has no CN), the
/// connection expires with the certificate. A token, when one is presented, takes precedence.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCertAuth {
    /// Groups such a client joins at connect. Default empty.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Patterns of groups such a client may join itself, as the `channels` claim. Default empty.
    #[serde(default)]
    pub channels: Vec<String>,
}

impl ProjectConfig {
    /// The validated project id.
    pub fn project_id(&self) -> Result<ProjectId, crate::ids::IdError> {
        ProjectId::new(&self.id)
    }
}

/// Checks a list of projects and returns every problem found, each naming the setting.
pub fn validate_projects(projects: &[ProjectConfig]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, p) in projects.iter().enumerate() {
        let at = format!("projects[{i}] ({})", p.id);
        if let Err(e) = ProjectId::validate(&p.id) {
            problems.push(format!("{at}.id: {e}"));
        }
        if !seen.insert(p.id.as_str()) {
            problems.push(format!("{at}.id: duplicate project id"));
        }
        for (j, k) in p.api_keys.iter().enumerate() {
            if k.len() < 16 {
                problems.push(format!("{at}.api_keys[{j}]: shorter than 16 characters"));
            }
        }
        if let Some(h) = &p.history {
            problems.extend(h.problems(&format!("{at}.history")));
        }
        if let Some(j) = &p.jwks {
            problems.extend(j.problems(&format!("{at}.jwks")));
        }
        if let Some(w) = &p.webhook {
            problems.extend(w.problems(&format!("{at}.webhook")));
        }
        for (j, o) in p.limits.origins.iter().enumerate() {
            if let Err(e) = check_origin_pattern(o) {
                problems.push(format!("{at}.limits.origins[{j}]: {e}"));
            }
        }
        let mut kids = std::collections::HashSet::new();
        for (j, k) in p.keys.iter().enumerate() {
            let at = format!("{at}.keys[{j}]");
            if p.keys.len() > 1 && k.kid.is_none() {
                problems.push(format!(
                    "{at}.kid: required when a project has several keys"
                ));
            }
            if let Some(kid) = &k.kid
                && !kids.insert(kid.as_str())
            {
                problems.push(format!("{at}.kid: duplicate kid {kid:?}"));
            }
            match k.alg {
                KeyAlgorithm::HS256 => {
                    match &k.secret {
                        None => problems.push(format!("{at}.secret: required for HS256")),
                        Some(s) if s.len() < 32 => {
                            problems.push(format!("{at}.secret: shorter than 32 bytes"))
                        }
                        Some(_) => {}
                    }
                    if k.public_key_file.is_some() || k.public_key_pem.is_some() {
                        problems.push(format!("{at}: HS256 takes a secret, not a public key"));
                    }
                }
                _ => {
                    if k.secret.is_some() {
                        problems.push(format!("{at}.secret: only HS256 takes a secret"));
                    }
                    match (&k.public_key_file, &k.public_key_pem) {
                        (None, None) => problems.push(format!(
                            "{at}: public_key_file or public_key_pem is required for {:?}",
                            k.alg
                        )),
                        (Some(_), Some(_)) => problems.push(format!(
                            "{at}: give public_key_file or public_key_pem, not both"
                        )),
                        (Some(f), None) if !f.is_file() => problems
                            .push(format!("{at}.public_key_file: cannot read {}", f.display())),
                        _ => {}
                    }
                }
            }
        }
    }
    problems
}

/// Checks an `Origin` allow-list entry: `scheme://host[:port]`, the host may start with `*.`;
/// `*` alone allows every origin.
pub fn check_origin_pattern(o: &str) -> Result<(), &'static str> {
    if o == "*" {
        return Ok(());
    }
    let Some((scheme, host)) = o.split_once("://") else {
        return Err("not scheme://host[:port] (e.g. https://app.example.com)");
    };
    if scheme.is_empty() || host.is_empty() || host.contains('/') {
        return Err("not scheme://host[:port] (e.g. https://app.example.com)");
    }
    if host.trim_start_matches("*.").contains('*') {
        return Err("a wildcard may only open the host (https://*.example.com)");
    }
    Ok(())
}
