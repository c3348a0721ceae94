//! API keys: a project key publishes to and manages its own project; an admin key may do all.

use std::collections::{HashMap, HashSet};

use herald_core::history::HistoryConfig;
use herald_core::projects::ProjectConfig;
use tonic::metadata::MetadataMap;

use crate::error::ApiError;

/// What a key may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Everything, in every project.
    Admin,
    /// One project.
    Project(String),
}

impl Scope {
    /// Checks that this scope may act on `project`.
    pub fn allow(&self, project: &str) -> Result<(), ApiError> {
        match self {
            Scope::Admin => Ok(()),
            Scope::Project(p) if p == project => Ok(()),
            Scope::Project(_) => Err(ApiError::WrongProject),
        }
    }
}

/// Every API key and the known projects.
#[derive(Debug, Default)]
pub struct ApiKeys {
    keys: HashMap<String, Scope>,
    projects: HashSet<String>,
    /// What each project keeps (only projects with `[projects.history]`).
    history: HashMap<String, HistoryConfig>,
}

impl ApiKeys {
    /// Builds the key table from the projects and the admin keys.
    pub fn new(projects: &[ProjectConfig], admin_keys: &[String]) -> Self {
        let mut keys = HashMap::new();
        for p in projects {
            for k in &p.api_keys {
                keys.insert(k.clone(), Scope::Project(p.id.clone()));
            }
        }
        for k in admin_keys {
            keys.insert(k.clone(), Scope::Admin);
        }
        Self {
            keys,
            projects: projects.iter().map(|p| p.id.clone()).collect(),
            history: projects
                .iter()
                .filter_map(|p| Some((p.id.clone(), p.history.clone()?)))
                .collect(),
        }
    }

    /// What the project keeps for clients to recover, if anything.
    pub fn history(&self, project: &str) -> Option<&HistoryConfig> {
        self.history.get(project)
    }

    /// Whether the project exists.
    pub fn has_project(&self, project: &str) -> bool {
        self.projects.contains(project)
    }

    /// The known projects.
    pub fn projects(&self) -> impl Iterator<Item = &str> {
        self.projects.iter().map(String::as_str)
    }

    /// The scope of the key in `authorization: Bearer <key>`.
    pub fn authenticate(&self, md: &MetadataMap) -> Result<Scope, ApiError> {
        let value = md
            .get("authorization")
            .ok_or(ApiError::Unauthenticated(
                "missing authorization: Bearer <api key>",
            ))?
            .to_str()
            .map_err(|_| ApiError::Unauthenticated("authorization is not text"))?;
        let key = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or(ApiError::Unauthenticated(
                "authorization must be Bearer <api key>",
            ))?;
        self.keys
            .get(key.trim())
            .cloned()
            .ok_or(ApiError::Unauthenticated("unknown API key"))
    }
}
