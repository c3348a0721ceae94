//! Projects at runtime in this process: the [`ProjectStore`] of the admin API, and how its
//! changes (and a SIGHUP's) reach the edge's token keys and per-project limits. In a cluster the
//! API's projects live in Redis ([`RedisProjects`]) and every node, edge or router, polls their
//! version every [`POLL`], so a change made on one router is used everywhere within a second.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use herald_cluster::{RedisConfig, RedisProjects};
use herald_core::bans::BanList;
use herald_core::projects::ProjectConfig;
use herald_edge::AuthKeys;
use herald_edge::hub::Hub;
use herald_edge::jwks::JwksSources;
use herald_edge::limits::{Limits, LimitsConfig};
use herald_router::ApiKeys;
use herald_router::admin::{Apply, ProjectStore, Shared};

use crate::config::{Config, ConfigErrors};

/// Installs projects on this process's edge: token keys always (a router-only node checks them
/// too, so a key the edges could not load is refused by the API), limits and bans when an edge
/// runs (a ban closes the banned user's connections here).
pub struct EdgeApply {
    auth: Arc<ArcSwap<AuthKeys>>,
    jwks: Arc<JwksSources>,
    limits: Option<Arc<Limits>>,
    hub: Option<Arc<Hub>>,
    /// The edge's own limits and the token leeway, as the last configuration read says.
    settings: Mutex<(LimitsConfig, u64)>,
}

impl EdgeApply {
    fn settings(&self) -> std::sync::MutexGuard<'_, (LimitsConfig, u64)> {
        self.settings.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Apply for EdgeApply {
    fn prepare(
        &self,
        projects: &[ProjectConfig],
        bans: &BanList,
    ) -> Result<Box<dyn FnOnce() + Send>, Vec<String>> {
        let (edge_limits, leeway) = self.settings().clone();
        let auth = AuthKeys::load_with(projects, leeway, &self.jwks)?.with_bans(bans.clone());
        let target = self.auth.clone();
        let limits = self.limits.clone();
        let hub = self.hub.clone();
        let projects = projects.to_vec();
        Ok(Box::new(move || {
            target.store(Arc::new(auth));
            if let Some(l) = limits {
                l.reload(&edge_limits, &projects);
            }
            if let Some(hub) = hub {
                let closed = hub.close_banned(target.load().bans());
                if closed > 0 {
                    tracing::info!(connections = closed, "closed banned users' connections");
                }
            }
        }))
    }
}

/// How often a cluster node looks for changes made on other nodes (one Redis `GET`).
pub const POLL: Duration = Duration::from_millis(250);

/// Opens the store (Redis in a cluster, else `cfg.router.state_dir`) and installs the file's and
/// the stored projects.
pub async fn open(
    cfg: &Config,
    auth: Arc<ArcSwap<AuthKeys>>,
    jwks: Arc<JwksSources>,
    api: Arc<ArcSwap<ApiKeys>>,
    edge: Option<&herald_edge::Edge>,
) -> anyhow::Result<(Arc<ProjectStore>, Arc<EdgeApply>)> {
    let apply = Arc::new(EdgeApply {
        auth,
        jwks,
        limits: edge.map(herald_edge::Edge::limits),
        hub: edge.map(|e| e.hub().clone()),
        settings: Mutex::new((cfg.edge.limits.clone(), cfg.edge.token_leeway_secs)),
    });
    let shared: Option<Arc<dyn Shared>> = if cfg.cluster.clustered() {
        let c = &cfg.cluster;
        Some(Arc::new(InRedis(RedisProjects::new(&RedisConfig {
            urls: c.redis_urls.clone(),
            cluster: c.redis_cluster,
            key_prefix: c.prefix.clone(),
            edge_ttl: Duration::from_secs(c.edge_ttl_secs),
            timeout: Duration::from_millis(c.redis_timeout_ms),
        })?)))
    } else {
        None
    };
    let store = ProjectStore::open(
        cfg.router.state_dir.as_deref(),
        shared,
        cfg.projects.clone(),
        cfg.router.admin_api_keys.clone(),
        api,
        Box::new(Both(apply.clone())),
    )
    .await
    .map_err(ConfigErrors)?;
    Ok((Arc::new(store), apply))
}

/// Installs other nodes' changes every [`POLL`] (a cluster node; returns at once otherwise).
pub async fn follow(store: Arc<ProjectStore>, clustered: bool) {
    if !clustered {
        return;
    }
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        match store.refresh().await {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "projects of the admin API not refreshed; retrying");
            }
            Err(_) => {}
        }
    }
}

/// [`RedisProjects`] as the store's [`Shared`].
struct InRedis(RedisProjects);

#[async_trait::async_trait]
impl Shared for InRedis {
    async fn version(&self) -> Result<u64, String> {
        self.0.version().await.map_err(|e| e.to_string())
    }

    async fn load(&self) -> Result<(u64, Option<Vec<u8>>), String> {
        self.0.load().await.map_err(|e| e.to_string())
    }

    async fn save(&self, expected: u64, state: &[u8]) -> Result<Option<u64>, String> {
        self.0
            .save(expected, state)
            .await
            .map_err(|e| e.to_string())
    }
}

/// Takes a reloaded configuration: the edge's settings, then the file's projects and admin keys
/// beside the stored ones.
pub async fn reload(
    store: &ProjectStore,
    apply: &EdgeApply,
    cfg: &Config,
) -> Result<(), ConfigErrors> {
    let previous = std::mem::replace(
        &mut *apply.settings(),
        (cfg.edge.limits.clone(), cfg.edge.token_leeway_secs),
    );
    store
        .reload(cfg.projects.clone(), cfg.router.admin_api_keys.clone())
        .await
        .map_err(|p| {
            *apply.settings() = previous;
            ConfigErrors(p)
        })
}

/// An [`EdgeApply`] shared with the reload.
struct Both(Arc<EdgeApply>);

impl Apply for Both {
    fn prepare(
        &self,
        projects: &[ProjectConfig],
        bans: &BanList,
    ) -> Result<Box<dyn FnOnce() + Send>, Vec<String>> {
        self.0.prepare(projects, bans)
    }
}
