//! Projects at runtime in this process: the [`ProjectStore`] of the admin API, and how its
//! changes (and a SIGHUP's) reach the edge's token keys and per-project limits.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use herald_core::projects::ProjectConfig;
use herald_edge::AuthKeys;
use herald_edge::limits::{Limits, LimitsConfig};
use herald_router::ApiKeys;
use herald_router::admin::{Apply, ProjectStore};

use crate::config::{Config, ConfigErrors};

/// Installs projects on this process's edge: token keys always (a router-only node checks them
/// too, so a key the edges could not load is refused by the API), limits when an edge runs.
pub struct EdgeApply {
    auth: Arc<ArcSwap<AuthKeys>>,
    limits: Option<Arc<Limits>>,
    /// The edge's own limits and the token leeway, as the last configuration read says.
    settings: Mutex<(LimitsConfig, u64)>,
}

impl EdgeApply {
    fn settings(&self) -> std::sync::MutexGuard<'_, (LimitsConfig, u64)> {
        self.settings.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Apply for EdgeApply {
    fn prepare(&self, projects: &[ProjectConfig]) -> Result<Box<dyn FnOnce() + Send>, Vec<String>> {
        let (edge_limits, leeway) = self.settings().clone();
        let auth = AuthKeys::load(projects, leeway)?;
        let target = self.auth.clone();
        let limits = self.limits.clone();
        let projects = projects.to_vec();
        Ok(Box::new(move || {
            target.store(Arc::new(auth));
            if let Some(l) = limits {
                l.reload(&edge_limits, &projects);
            }
        }))
    }
}

/// Opens the store of `cfg.router.state_dir` and installs the file's and the stored projects.
pub fn open(
    cfg: &Config,
    auth: Arc<ArcSwap<AuthKeys>>,
    api: Arc<ArcSwap<ApiKeys>>,
    limits: Option<Arc<Limits>>,
) -> Result<(Arc<ProjectStore>, Arc<EdgeApply>), ConfigErrors> {
    let apply = Arc::new(EdgeApply {
        auth,
        limits,
        settings: Mutex::new((cfg.edge.limits.clone(), cfg.edge.token_leeway_secs)),
    });
    let store = ProjectStore::open(
        cfg.router.state_dir.as_deref(),
        cfg.projects.clone(),
        cfg.router.admin_api_keys.clone(),
        api,
        Box::new(Shared(apply.clone())),
    )
    .map_err(ConfigErrors)?;
    Ok((Arc::new(store), apply))
}

/// Takes a reloaded configuration: the edge's settings, then the file's projects and admin keys
/// beside the stored ones.
pub fn reload(store: &ProjectStore, apply: &EdgeApply, cfg: &Config) -> Result<(), ConfigErrors> {
    let previous = std::mem::replace(
        &mut *apply.settings(),
        (cfg.edge.limits.clone(), cfg.edge.token_leeway_secs),
    );
    store
        .reload(cfg.projects.clone(), cfg.router.admin_api_keys.clone())
        .map_err(|p| {
            *apply.settings() = previous;
            ConfigErrors(p)
        })
}

/// An [`EdgeApply`] shared with the reload.
struct Shared(Arc<EdgeApply>);

impl Apply for Shared {
    fn prepare(&self, projects: &[ProjectConfig]) -> Result<Box<dyn FnOnce() + Send>, Vec<String>> {
        self.0.prepare(projects)
    }
}
