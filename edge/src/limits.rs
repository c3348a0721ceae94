//! The edge's defences: address allow/deny lists, `Origin` allow-lists, per-address connect rate
//! and connection caps, per-project caps, the global connection cap with load shedding, and the
//! per-connection inbound message rate.
//!
//! The policy (lists, origins, per-address and per-project limits) is one immutable value behind
//! an [`ArcSwap`], replaced whole on reload. Per-address state lives in a sharded map whose entry
//! is removed as soon as the address has no connection left and its connect bucket is full again
//! (a sweep each second removes the rest), so idle addresses cost nothing. A connection itself
//! carries only its address and an 8-byte message bucket.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;
use herald_core::projects::{ProjectConfig, ProjectLimits, check_origin_pattern};
use ipnet::IpNet;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// The address limits, logs and listings use for a connection.
///
/// Today the socket's peer (IPv4-mapped IPv6 addresses folded to IPv4); when PROXY protocol or
/// trusted `X-Forwarded-For` are in use, the address they carry.
pub fn client_ip(peer: SocketAddr) -> IpAddr {
    peer.ip().to_canonical()
}

/// `[edge.limits]`: the edge's defences. Lists and per-address limits reload on SIGHUP;
/// `max_connections`, `fd_reserve` and the message rate are read at start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Client networks (CIDR) allowed to connect; empty allows every address not denied.
    pub allow_ips: Vec<IpNet>,
    /// Client networks refused at accept (HTTP 403); a deny wins over an allow.
    pub deny_ips: Vec<IpNet>,
    /// Browser origins allowed (`https://app.example.com`, `https://*.example.com`, `*`);
    /// empty allows any. A project's own list replaces this one.
    pub origins: Vec<String>,
    /// Refuse upgrade requests without an `Origin` header (native apps and WeChat mini programs
    /// send none). Default false.
    pub require_origin: bool,
    /// Most open client connections on this edge; beyond it new ones get HTTP 503 with
    /// `Retry-After`. 0 derives it from the open-file limit: `RLIMIT_NOFILE - fd_reserve`.
    pub max_connections: usize,
    /// File descriptors kept for everything else when `max_connections` is derived (at most half
    /// the limit). Default 256.
    pub fd_reserve: usize,
    /// `Retry-After` of a 503 or 429, in seconds. Default 5.
    pub retry_after_secs: u32,
    /// Most concurrent connections from one client address (HTTP 429 beyond); 0: no cap.
    /// Default 10,000 (a carrier NAT puts thousands of phones behind one address).
    pub per_ip_max_connections: u32,
    /// New connections per second one address may open, sustained (HTTP 429 beyond); may be
    /// fractional; 0: no limit. Default 200.
    pub per_ip_connect_rate: f64,
    /// Connections one address may open at once above the sustained rate. Default 1,000.
    pub per_ip_connect_burst: u32,
    /// Frames per second one connection may send, sustained (close 4029 beyond); 0: no limit.
    /// Default 50.
    pub message_rate: u32,
    /// Frames one connection may send at once above the sustained rate. Default 200.
    pub message_burst: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            allow_ips: Vec::new(),
            deny_ips: Vec::new(),
            origins: Vec::new(),
            require_origin: false,
            max_connections: 0,
            fd_reserve: 256,
            retry_after_secs: 5,
            per_ip_max_connections: 10_000,
            per_ip_connect_rate: 200.0,
            per_ip_connect_burst: 1_000,
            message_rate: 50,
            message_burst: 200,
        }
    }
}

impl LimitsConfig {
    /// Every problem, each naming its setting.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        for (i, o) in self.origins.iter().enumerate() {
            if let Err(e) = check_origin_pattern(o) {
                p.push(format!("edge.limits.origins[{i}]: {e}"));
            }
        }
        if !(self.per_ip_connect_rate >= 0.0 && self.per_ip_connect_rate.is_finite()) {
            p.push("edge.limits.per_ip_connect_rate: must be 0 or more".into());
        }
        if self.per_ip_connect_rate > 0.0 && self.per_ip_connect_burst == 0 {
            p.push("edge.limits.per_ip_connect_burst: must be greater than 0".into());
        }
        if self.message_rate > 0 && self.message_burst == 0 {
            p.push("edge.limits.message_burst: must be greater than 0".into());
        }
        p
    }

    /// The connection cap: `max_connections`, or the open-file limit minus the reserve.
    pub fn effective_max_connections(&self) -> usize {
        if self.max_connections > 0 {
            return self.max_connections;
        }
        let soft = rlimit::Resource::NOFILE
            .get()
            .map_or(1024, |(soft, _)| soft)
            .min(usize::MAX as u64) as usize;
        soft - self.fd_reserve.min(soft / 2)
    }
}

/// Why a client was refused before the upgrade; each is counted in
/// `herald_edge_refused_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The address is denied or not allowed (edge or project lists): 403.
    IpDenied,
    /// The `Origin` is not allowed (or missing where required): 403.
    Origin,
    /// The address opens connections too fast: 429.
    IpRate,
    /// The address holds too many connections: 429.
    IpConnections,
    /// The project holds its maximum of connections on this edge: 503.
    ProjectConnections,
    /// The edge holds its maximum of connections: 503.
    Overloaded,
}

impl Refusal {
    /// The HTTP status answering it.
    pub fn status(self) -> http::StatusCode {
        match self {
            Refusal::IpDenied | Refusal::Origin => http::StatusCode::FORBIDDEN,
            Refusal::IpRate | Refusal::IpConnections => http::StatusCode::TOO_MANY_REQUESTS,
            Refusal::ProjectConnections | Refusal::Overloaded => {
                http::StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// Whether the answer carries `Retry-After`.
    pub fn retry(self) -> bool {
        !matches!(self, Refusal::IpDenied | Refusal::Origin)
    }

    /// The metric label and the answer's body.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::IpDenied => "ip_denied",
            Refusal::Origin => "origin",
            Refusal::IpRate => "ip_rate",
            Refusal::IpConnections => "ip_connections",
            Refusal::ProjectConnections => "project_connections",
            Refusal::Overloaded => "overloaded",
        }
    }

    /// Counts it.
    pub fn count(self) {
        metrics::counter!("herald_edge_refused_total", "reason" => self.label()).increment(1);
    }
}

/// An address list check: denied if in `deny`, or if `allow` is not empty and it is not in it.
fn listed_out(ip: IpAddr, allow: &[IpNet], deny: &[IpNet]) -> bool {
    deny.iter().any(|n| n.contains(&ip))
        || (!allow.is_empty() && !allow.iter().any(|n| n.contains(&ip)))
}

/// Whether `origin` matches an allow-list entry (ASCII case-insensitive).
fn origin_matches(pattern: &str, origin: &str) -> bool {
    if pattern == "*" || pattern.eq_ignore_ascii_case(origin) {
        return true;
    }
    let (Some((ps, ph)), Some((os, oh))) = (pattern.split_once("://"), origin.split_once("://"))
    else {
        return false;
    };
    let Some(suffix) = ph.strip_prefix("*.") else {
        return false;
    };
    ps.eq_ignore_ascii_case(os)
        && oh.len() > suffix.len() + 1
        && oh.as_bytes()[oh.len() - suffix.len() - 1] == b'.'
        && oh[oh.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
}

/// The reloadable part: the edge's settings and every project's own.
pub struct Policy {
    edge: LimitsConfig,
    projects: HashMap<String, ProjectLimits>,
}

impl Policy {
    /// Builds the policy from the edge's settings and the projects.
    pub fn new(edge: &LimitsConfig, projects: &[ProjectConfig]) -> Self {
        Self {
            edge: edge.clone(),
            projects: projects
                .iter()
                .map(|p| (p.id.clone(), p.limits.clone()))
                .collect(),
        }
    }

    /// The project's checks once the request is read: its address lists and the `Origin`.
    pub fn check_request(
        &self,
        project: &str,
        ip: IpAddr,
        origin: Option<&str>,
    ) -> Result<(), Refusal> {
        let p = self.projects.get(project);
        if let Some(p) = p
            && listed_out(ip, &p.allow_ips, &p.deny_ips)
        {
            return Err(Refusal::IpDenied);
        }
        let origins = match p {
            Some(p) if !p.origins.is_empty() => &p.origins,
            _ => &self.edge.origins,
        };
        let required = p
            .and_then(|p| p.require_origin)
            .unwrap_or(self.edge.require_origin);
        match origin {
            None if required => Err(Refusal::Origin),
            None => Ok(()),
            Some(o) if origins.is_empty() || origins.iter().any(|p| origin_matches(p, o)) => Ok(()),
            Some(_) => Err(Refusal::Origin),
        }
    }

    /// The project's limits, if it has any.
    pub fn project(&self, project: &str) -> Option<&ProjectLimits> {
        self.projects.get(project)
    }
}

/// What an address holds: open connections and a connect token bucket.
struct IpState {
    conns: u32,
    tokens: f32,
    /// Milliseconds since the edge started, at the last refill.
    at_ms: u32,
}

const IP_SHARDS: usize = 64;

/// The running defences of one edge.
pub struct Limits {
    policy: ArcSwap<Policy>,
    max_connections: usize,
    open: AtomicUsize,
    ips: Box<[Mutex<HashMap<IpAddr, IpState>>]>,
    projects: Mutex<HashMap<Box<str>, u32>>,
    started: Instant,
    message_rate: f32,
    message_burst: f32,
}

/// A per-connection token bucket for inbound frames: 8 bytes.
#[derive(Debug, Clone, Copy)]
pub struct MessageBucket {
    tokens: f32,
    at_ms: u32,
}

impl Limits {
    /// The defences of an edge, with its settings and no project rules yet.
    pub fn new(cfg: &LimitsConfig) -> Self {
        Self {
            policy: ArcSwap::from_pointee(Policy::new(cfg, &[])),
            max_connections: cfg.effective_max_connections(),
            open: AtomicUsize::new(0),
            ips: (0..IP_SHARDS).map(|_| Mutex::default()).collect(),
            projects: Mutex::default(),
            started: Instant::now(),
            message_rate: cfg.message_rate as f32,
            message_burst: cfg.message_burst as f32,
        }
    }

    /// Replaces the policy (lists, origins, per-address and per-project limits).
    pub fn reload(&self, edge: &LimitsConfig, projects: &[ProjectConfig]) {
        self.policy.store(Arc::new(Policy::new(edge, projects)));
    }

    /// The current policy.
    pub fn policy(&self) -> arc_swap::Guard<Arc<Policy>> {
        self.policy.load()
    }

    /// The global connection cap in force.
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// Open client connections admitted.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn now_ms(&self) -> u32 {
        self.started.elapsed().as_millis() as u32
    }

    fn shard(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, IpState>> {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        ip.hash(&mut h);
        &self.ips[(h.finish() as usize) % self.ips.len()]
    }

    /// The check at accept: the global cap. On success the socket counts until
    /// [`Limits::release_socket`].
    pub fn admit_socket(&self) -> Result<(), Refusal> {
        if self.open.fetch_add(1, Ordering::Relaxed) >= self.max_connections {
            self.open.fetch_sub(1, Ordering::Relaxed);
            return Err(Refusal::Overloaded);
        }
        Ok(())
    }

    /// Ends a socket admitted by [`Limits::admit_socket`].
    pub fn release_socket(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// The checks once the client address is known: the edge's address lists, the address's
    /// connect rate and connection cap. On success the connection counts against the address
    /// until [`Limits::release_ip`].
    pub fn admit_ip(&self, ip: IpAddr) -> Result<(), Refusal> {
        let policy = self.policy.load();
        let cfg = &policy.edge;
        if listed_out(ip, &cfg.allow_ips, &cfg.deny_ips) {
            return Err(Refusal::IpDenied);
        }
        let now = self.now_ms();
        let mut shard = self.shard(&ip).lock();
        let burst = cfg.per_ip_connect_burst as f32;
        let st = shard.entry(ip).or_insert_with(|| {
            metrics::gauge!("herald_edge_tracked_ips").increment(1.0);
            IpState {
                conns: 0,
                tokens: burst,
                at_ms: now,
            }
        });
        let refused = if cfg.per_ip_max_connections > 0 && st.conns >= cfg.per_ip_max_connections {
            Some(Refusal::IpConnections)
        } else if cfg.per_ip_connect_rate > 0.0 {
            let rate = cfg.per_ip_connect_rate as f32;
            st.tokens = (st.tokens + now.wrapping_sub(st.at_ms) as f32 * rate / 1000.0).min(burst);
            st.at_ms = now;
            if st.tokens >= 1.0 {
                st.tokens -= 1.0;
                None
            } else {
                Some(Refusal::IpRate)
            }
        } else {
            None
        };
        match refused {
            Some(r) => {
                if st.conns == 0 && cfg.per_ip_connect_rate <= 0.0 {
                    shard.remove(&ip);
                    metrics::gauge!("herald_edge_tracked_ips").decrement(1.0);
                }
                Err(r)
            }
            None => {
                st.conns += 1;
                Ok(())
            }
        }
    }

    /// Ends a connection admitted by [`Limits::admit_ip`]. The address's entry goes once it
    /// holds no connection and its bucket is full again.
    pub fn release_ip(&self, ip: IpAddr) {
        let policy = self.policy.load();
        let now = self.now_ms();
        let mut shard = self.shard(&ip).lock();
        if let Some(st) = shard.get_mut(&ip) {
            st.conns = st.conns.saturating_sub(1);
            if st.conns == 0 && refilled(st, &policy.edge, now) {
                shard.remove(&ip);
                metrics::gauge!("herald_edge_tracked_ips").decrement(1.0);
            }
        }
    }

    /// Removes the entries of addresses with no connection whose bucket has refilled.
    pub fn sweep(&self) {
        let policy = self.policy.load();
        let now = self.now_ms();
        for shard in self.ips.iter() {
            let mut shard = shard.lock();
            let before = shard.len();
            shard.retain(|_, st| st.conns > 0 || !refilled(st, &policy.edge, now));
            let gone = before - shard.len();
            if gone > 0 {
                metrics::gauge!("herald_edge_tracked_ips").decrement(gone as f64);
            }
        }
    }

    /// Addresses with state (connections or a bucket not yet refilled).
    pub fn tracked_ips(&self) -> usize {
        self.ips.iter().map(|s| s.lock().len()).sum()
    }

    /// Counts a connection of `project` against its cap; `false` when the cap is reached.
    pub fn enter_project(&self, project: &str) -> bool {
        let cap = self
            .policy
            .load()
            .project(project)
            .map_or(0, |p| p.max_connections);
        let mut counts = self.projects.lock();
        let n = counts.get(project).copied().unwrap_or(0);
        if cap > 0 && n >= cap {
            return false;
        }
        match counts.get_mut(project) {
            Some(n) => *n += 1,
            None => {
                counts.insert(project.into(), 1);
            }
        }
        true
    }

    /// Ends a connection counted by [`Limits::enter_project`].
    pub fn leave_project(&self, project: &str) {
        let mut counts = self.projects.lock();
        if let Some(n) = counts.get_mut(project) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(project);
            }
        }
    }

    /// A full message bucket for a new connection.
    pub fn message_bucket(&self) -> MessageBucket {
        MessageBucket {
            tokens: self.message_burst,
            at_ms: self.now_ms(),
        }
    }

    /// Takes one frame from a connection's bucket; `false` when it is empty.
    pub fn take_message(&self, b: &mut MessageBucket) -> bool {
        self.take_message_inner(b)
    }

    /// Gives back the frame just taken: it only acknowledged a message the server had sent (an
    /// MQTT `PUBACK` or STOMP `ACK` of a message in flight), which the client's own rate must not
    /// pay for, or a client receiving faster than `message_rate` would be closed by its
    /// acknowledgements.
    pub fn refund_message(&self, b: &mut MessageBucket) {
        if self.message_rate > 0.0 {
            b.tokens = (b.tokens + 1.0).min(self.message_burst);
        }
    }

    fn take_message_inner(&self, b: &mut MessageBucket) -> bool {
        if self.message_rate <= 0.0 {
            return true;
        }
        let now = self.now_ms();
        b.tokens = (b.tokens + now.wrapping_sub(b.at_ms) as f32 * self.message_rate / 1000.0)
            .min(self.message_burst);
        b.at_ms = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Whether an address's connect bucket is full again (nothing left to remember).
fn refilled(st: &IpState, cfg: &LimitsConfig, now: u32) -> bool {
    if cfg.per_ip_connect_rate <= 0.0 {
        return true;
    }
    let tokens =
        st.tokens + now.wrapping_sub(st.at_ms) as f32 * cfg.per_ip_connect_rate as f32 / 1000.0;
    tokens >= cfg.per_ip_connect_burst as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("cidr")
    }

    #[test]
    fn lists_match_v4_v6_and_mapped_addresses() {
        let allow = [net("10.0.0.0/8"), net("2001:db8::/32")];
        let deny = [net("10.1.0.0/16")];
        let ip = |s: &str| client_ip(SocketAddr::new(s.parse().expect("ip"), 1));
        assert!(!listed_out(ip("10.2.3.4"), &allow, &deny));
        assert!(listed_out(ip("10.1.3.4"), &allow, &deny));
        assert!(listed_out(ip("192.168.1.1"), &allow, &deny));
        assert!(!listed_out(ip("2001:db8::5"), &allow, &deny));
        assert!(listed_out(ip("2001:db9::5"), &allow, &deny));
        // An IPv4 client on a dual-stack socket is matched as IPv4.
        assert!(!listed_out(ip("::ffff:10.2.3.4"), &allow, &deny));
        assert!(listed_out(ip("::ffff:10.1.3.4"), &allow, &deny));
        assert!(!listed_out(ip("8.8.8.8"), &[], &[]));
    }

    #[test]
    fn origins_match_exactly_or_by_subdomain_wildcard() {
        assert!(origin_matches(
            "https://app.example.com",
            "https://APP.example.com"
        ));
        assert!(!origin_matches(
            "https://app.example.com",
            "http://app.example.com"
        ));
        assert!(origin_matches(
            "https://*.example.com",
            "https://a.b.example.com"
        ));
        assert!(!origin_matches(
            "https://*.example.com",
            "https://example.com"
        ));
        assert!(!origin_matches(
            "https://*.example.com",
            "https://evilexample.com"
        ));
        assert!(!origin_matches(
            "https://*.example.com",
            "http://a.example.com"
        ));
        assert!(origin_matches("*", "null"));
    }

    #[test]
    fn per_ip_state_is_dropped_when_the_last_connection_ends() {
        let limits = Limits::new(&LimitsConfig {
            max_connections: 3,
            per_ip_connect_rate: 0.0,
            per_ip_max_connections: 2,
            ..Default::default()
        });
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        assert_eq!(limits.admit_ip(a), Ok(()));
        assert_eq!(limits.admit_ip(a), Ok(()));
        assert_eq!(limits.admit_ip(a), Err(Refusal::IpConnections));
        assert_eq!(limits.admit_ip(b), Ok(()));
        assert_eq!(limits.tracked_ips(), 2);
        limits.release_ip(a);
        limits.release_ip(a);
        limits.release_ip(b);
        assert_eq!(limits.tracked_ips(), 0);
        for _ in 0..3 {
            assert_eq!(limits.admit_socket(), Ok(()));
        }
        assert_eq!(limits.admit_socket(), Err(Refusal::Overloaded));
        limits.release_socket();
        assert_eq!(limits.admit_socket(), Ok(()));
        assert_eq!(limits.open(), 3);
    }

    #[test]
    fn connect_rate_refills_over_time() {
        use std::time::{Duration, Instant};
        // One token per 500 ms: a loaded machine's pause between two calls stays far below it,
        // so the third is refused; the waits below poll instead of guessing a sleep.
        let limits = Limits::new(&LimitsConfig {
            max_connections: 100,
            per_ip_connect_rate: 2.0,
            per_ip_connect_burst: 2,
            ..Default::default()
        });
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let start = Instant::now();
        assert_eq!(limits.admit_ip(a), Ok(()));
        assert_eq!(limits.admit_ip(a), Ok(()));
        assert_eq!(limits.admit_ip(a), Err(Refusal::IpRate));
        // A refusal takes no token; one comes back after 500 ms.
        while limits.admit_ip(a) != Ok(()) {
            assert!(start.elapsed() < Duration::from_secs(10), "never refilled");
            std::thread::sleep(Duration::from_millis(10));
        }
        let refilled = start.elapsed();
        assert!(
            refilled >= Duration::from_millis(450),
            "refilled after {refilled:?}"
        );
        for _ in 0..3 {
            limits.release_ip(a);
        }
        // The entry goes once the bucket is full again (a second later).
        loop {
            limits.sweep();
            if limits.tracked_ips() == 0 {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "never swept");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn project(id: &str, limits: ProjectLimits) -> ProjectConfig {
        ProjectConfig {
            id: id.into(),
            api_keys: Vec::new(),
            keys: Vec::new(),
            limits,
            client_certificates: None,
            history: None,
            permessage_deflate: false,
            jwks: None,
            presence_events: false,
            webhook: None,
        }
    }

    #[test]
    fn project_rules_origins_and_caps_follow_reloads() {
        let limits = Limits::new(&LimitsConfig {
            origins: vec!["https://app.example.com".into()],
            ..Default::default()
        });
        let ip: IpAddr = "198.51.100.7".parse().expect("ip");
        let policy = limits.policy();
        // No project rules yet: the edge's origins; no Origin is fine.
        assert_eq!(policy.check_request("p", ip, None), Ok(()));
        assert_eq!(
            policy.check_request("p", ip, Some("https://app.example.com")),
            Ok(())
        );
        assert_eq!(
            policy.check_request("p", ip, Some("https://other.example")),
            Err(Refusal::Origin)
        );
        drop(policy);
        limits.reload(
            &LimitsConfig::default(),
            &[project(
                "p",
                ProjectLimits {
                    deny_ips: vec!["198.51.100.0/24".parse().expect("net")],
                    require_origin: Some(true),
                    max_connections: 1,
                    ..Default::default()
                },
            )],
        );
        let policy = limits.policy();
        assert_eq!(policy.check_request("p", ip, None), Err(Refusal::IpDenied));
        let other: IpAddr = "203.0.113.1".parse().expect("ip");
        assert_eq!(policy.check_request("p", other, None), Err(Refusal::Origin));
        assert_eq!(policy.check_request("p", other, Some("https://x")), Ok(()));
        assert!(limits.enter_project("p"));
        assert!(!limits.enter_project("p"));
        assert!(
            limits.enter_project("q"),
            "another project has its own count"
        );
        limits.leave_project("p");
        assert!(limits.enter_project("p"));
        limits.leave_project("p");
        limits.leave_project("q");
        assert!(
            limits.projects.lock().is_empty(),
            "counts go with their last connection"
        );
    }

    #[test]
    fn derived_cap_keeps_a_reserve() {
        let cfg = LimitsConfig::default();
        let (soft, _) = rlimit::Resource::NOFILE.get().expect("getrlimit");
        let cap = cfg.effective_max_connections() as u64;
        assert!(cap < soft && cap >= soft / 2, "cap {cap} of {soft}");
    }
}
