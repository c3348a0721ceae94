//! API keys: a project key publishes to and manages its own project; an admin key may do all.
//!
//! Keys are held as SHA-256 digests: a presented key is hashed and looked up by its digest, so
//! the table never holds the keys the admin API created (only their digests are stored) and a
//! lookup's timing says nothing about any key.

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
    keys: HashMap<Digest, Scope>,
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
                keys.insert(digest(k), Scope::Project(p.id.clone()));
            }
        }
        for k in admin_keys {
            keys.insert(digest(k), Scope::Admin);
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

    /// Adds keys known by their digests only (created through the admin API), each of a
    /// project.
    pub fn with_digests(mut self, digests: impl IntoIterator<Item = (String, Digest)>) -> Self {
        for (project, d) in digests {
            self.keys.entry(d).or_insert(Scope::Project(project));
        }
        self
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

    /// The scope of the key with this digest, if it is one.
    pub fn scope_of(&self, d: &Digest) -> Option<Scope> {
        self.keys.get(d).cloned()
    }

    /// The scope of the key in `authorization: Bearer <key>`.
    pub fn authenticate(&self, md: &MetadataMap) -> Result<Scope, ApiError> {
        self.caller(md).map(|(scope, _)| scope)
    }

    /// The scope of the key in `authorization: Bearer <key>` and the key's fingerprint (the
    /// first 12 hex digits of its SHA-256), which names the caller in the audit log.
    pub fn caller(&self, md: &MetadataMap) -> Result<(Scope, String), ApiError> {
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
        let d = digest(key.trim());
        let scope = self
            .keys
            .get(&d)
            .cloned()
            .ok_or(ApiError::Unauthenticated("unknown API key"))?;
        Ok((scope, fingerprint(&d)))
    }
}

/// The SHA-256 digest of an API key.
pub type Digest = [u8; 32];

/// The SHA-256 digest of `key`.
pub fn digest(key: &str) -> Digest {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of lower-case or upper-case hex text, or `None`.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A key's public name: the first 12 hex digits of its digest.
pub fn fingerprint(d: &Digest) -> String {
    hex(&d[..6])
}
