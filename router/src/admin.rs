//! Projects and keys at runtime: the store behind the admin API (`/v1/admin/...`, docs/api.md
//! "Admin API").
//!
//! Projects come from two places. Those of the configuration file are read-only here (a SIGHUP
//! reloads them); those created through the API live in this store, are written to
//! `<router.state_dir>/projects.json` after every change (a temporary file, then a rename, so a
//! crash leaves the old or the new file, never half of one), and are read back at start. The
//! two never share an id: the API refuses an id the file has, and a reload that brings an id the
//! API owns is refused, so neither can undo the other's project.
//!
//! Bans (a user of a project refused at connect and closed where connected, until a time or
//! until lifted) live in the same state, for file and API projects alike, so they travel the same
//! way: the file on one node, the shared document in a cluster (every node polls it).
//!
//! API keys created here are shown once and kept as SHA-256 digests. Every change is written to
//! an audit log (who, what, when), kept in the same file (the last [`AUDIT_KEPT`] entries).
//!
//! What the edge needs (token keys, limits) is prepared by an [`Apply`] before a change is
//! committed: a change the edge cannot take (a public key that does not parse) is refused and
//! nothing is written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::Mutex;

use arc_swap::ArcSwap;
use herald_core::bans::BanList;
use herald_core::ids::{ProjectId, UserId};
use herald_core::projects::{
    JwksConfig, KeyAlgorithm, KeyConfig, ProjectConfig, ProjectLimits, WebhookConfig, WebhookEvent,
};
use serde::{Deserialize, Serialize};
use tonic::Code;

use crate::keys::{ApiKeys, Digest, Scope, digest, fingerprint, hex, unhex};

/// How many audit entries the store keeps (the oldest go first).
pub const AUDIT_KEPT: usize = 10_000;

/// The state file's name under `state_dir`.
pub const STATE_FILE: &str = "projects.json";

/// Why an admin call was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// A field is missing or invalid.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field, as named in the request.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The key may not do this.
    #[error("{0}")]
    Denied(&'static str),
    /// No such project (or key).
    #[error("{0}")]
    NotFound(String),
    /// The project (or key) exists already.
    #[error("{0}")]
    Exists(String),
    /// The project comes from the configuration file.
    #[error("project {0:?} comes from the configuration file: change it there (and SIGHUP)")]
    ReadOnly(String),
    /// The edge refused the resulting projects (e.g. a public key that does not parse).
    #[error("{0}")]
    Refused(String),
    /// Another node changed the projects at the same time: nothing changed, try again.
    #[error("another node changed the projects at the same time; nothing changed, try again")]
    Conflict,
    /// The shared store (Redis) is unreachable: nothing changed.
    #[error("projects store unavailable, nothing changed: {0}")]
    Unavailable(String),
    /// The state could not be written: nothing changed.
    #[error("state not written, nothing changed: {0}")]
    Io(String),
}

impl AdminError {
    /// The gRPC status code of this error.
    pub fn code(&self) -> Code {
        match self {
            AdminError::Invalid { .. } | AdminError::Refused(_) => Code::InvalidArgument,
            AdminError::Denied(_) => Code::PermissionDenied,
            AdminError::NotFound(_) => Code::NotFound,
            AdminError::Exists(_) => Code::AlreadyExists,
            AdminError::ReadOnly(_) => Code::FailedPrecondition,
            AdminError::Conflict => Code::Aborted,
            AdminError::Unavailable(_) => Code::Unavailable,
            AdminError::Io(_) => Code::Internal,
        }
    }

    fn invalid(field: &'static str, reason: impl std::fmt::Display) -> Self {
        AdminError::Invalid {
            field,
            reason: reason.to_string(),
        }
    }
}

/// Installs projects on the edge side (token keys, per-project limits) of this process.
pub trait Apply: Send + Sync {
    /// Checks `projects` (every enabled project, file and API) and prepares them with the bans
    /// in force; the returned function installs them (and closes the banned users' connections).
    /// An `Err` lists every problem; nothing is installed then.
    fn prepare(
        &self,
        projects: &[ProjectConfig],
        bans: &BanList,
    ) -> Result<Box<dyn FnOnce() + Send>, Vec<String>>;
}

/// Where a cluster's nodes share the API's projects (Redis): a document and its version.
#[async_trait::async_trait]
pub trait Shared: Send + Sync {
    /// The version now (0: never written).
    async fn version(&self) -> Result<u64, String>;
    /// The version and the document (`None` before the first write).
    async fn load(&self) -> Result<(u64, Option<Vec<u8>>), String>;
    /// Writes the document if the version is still `expected`: the new version, or `None` when
    /// another node wrote first.
    async fn save(&self, expected: u64, state: &[u8]) -> Result<Option<u64>, String>;
}

/// An API key created through the API: its digest only.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredApiKey {
    /// Its public id (the first 12 hex digits of its digest, as the audit log names callers).
    pub id: String,
    /// SHA-256 of the key, hex.
    pub sha256: String,
    /// When it was created (Unix seconds).
    pub created_at: u64,
}

/// A project created through the API.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredProject {
    /// Disabled: no client connects, no key publishes; the admin key may still manage it.
    #[serde(default)]
    pub disabled: bool,
    /// Keys that verify client tokens, each with a `kid`.
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    /// API keys, by digest.
    #[serde(default)]
    pub api_keys: Vec<StoredApiKey>,
    /// Address lists, origins and caps.
    #[serde(default)]
    pub limits: ProjectLimits,
    /// A JWK Set URL whose keys verify tokens too (its CA as `ca_pem`, never a file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<JwksConfig>,
    /// Presence events to groups' members.
    #[serde(default)]
    pub presence_events: bool,
    /// Where events are posted (its secret is kept, never shown).
    #[serde(default)]
    pub webhook: Option<WebhookConfig>,
    /// Accept the WebSocket extension `permessage-deflate` (as the file's `permessage_deflate`).
    #[serde(default)]
    pub permessage_deflate: bool,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds.
    pub updated_at: u64,
}

impl StoredProject {
    fn config(&self, id: &str) -> ProjectConfig {
        ProjectConfig {
            id: id.to_string(),
            api_keys: Vec::new(),
            keys: self.keys.clone(),
            limits: self.limits.clone(),
            client_certificates: None,
            history: None,
            permessage_deflate: self.permessage_deflate,
            jwks: self.jwks.clone(),
            presence_events: self.presence_events,
            webhook: self.webhook.clone(),
        }
    }
}

/// One audit entry: who did what, when.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditEntry {
    /// Its number, increasing.
    pub seq: u64,
    /// When (Unix milliseconds).
    pub at_ms: u64,
    /// Who: `admin:<key fingerprint>` or `project:<id>:<key fingerprint>`.
    pub actor: String,
    /// The call (`project.create`, `jwt_key.add`, ...).
    pub action: String,
    /// The project it changed.
    pub project: String,
    /// What changed, never a secret.
    pub detail: String,
}

/// A ban of one user of a project.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Ban {
    /// Until when (Unix milliseconds); absent: until lifted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<u64>,
    /// Why, as the caller said (may be empty).
    #[serde(default)]
    pub reason: String,
    /// When it was set (Unix milliseconds).
    pub created_at_ms: u64,
    /// Who set it (as the audit log names callers).
    pub actor: String,
}

/// A ban as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BanView {
    /// The project.
    pub project: String,
    /// The banned user.
    pub user: String,
    /// Until when (Unix milliseconds); 0: until lifted.
    pub until_ms: u64,
    /// Why.
    pub reason: String,
    /// When it was set (Unix milliseconds).
    pub created_at_ms: u64,
    /// Who set it.
    pub actor: String,
}

/// The longest ban with an expiry (longer ones are until lifted): ten years.
pub const MAX_BAN_SECS: u64 = 10 * 365 * 86_400;

/// The state file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    #[serde(default)]
    projects: BTreeMap<String, StoredProject>,
    /// Bans by project, then user.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    bans: BTreeMap<String, BTreeMap<String, Ban>>,
    #[serde(default)]
    audit: Vec<AuditEntry>,
}

/// What the configuration gives: its projects and admin keys.
struct Base {
    projects: Vec<ProjectConfig>,
    admin_keys: Vec<String>,
}

/// A caller of the admin API.
#[derive(Debug, Clone)]
pub struct Caller {
    /// What its key may do.
    pub scope: Scope,
    /// The key's fingerprint.
    pub fingerprint: String,
}

impl Caller {
    fn actor(&self) -> String {
        match &self.scope {
            Scope::Admin => format!("admin:{}", self.fingerprint),
            Scope::Project(p) => format!("project:{p}:{}", self.fingerprint),
        }
    }

    fn admin(&self) -> Result<(), AdminError> {
        match self.scope {
            Scope::Admin => Ok(()),
            Scope::Project(_) => Err(AdminError::Denied("only an admin key may do this")),
        }
    }

    fn allow(&self, project: &str) -> Result<(), AdminError> {
        self.scope
            .allow(project)
            .map_err(|_| AdminError::Denied("this API key does not belong to that project"))
    }
}

/// A project as the API shows it: no secret.
#[derive(Debug, Clone, Serialize)]
pub struct ProjectView {
    /// The id.
    pub project: String,
    /// `"api"` or `"config"` (read-only).
    pub source: &'static str,
    /// Whether it is disabled.
    pub disabled: bool,
    /// Token keys: kid and algorithm.
    pub jwt_keys: Vec<JwtKeyView>,
    /// API keys: id and creation time (config projects: fingerprints).
    pub api_keys: Vec<ApiKeyView>,
    /// Address lists, origins and caps.
    pub limits: ProjectLimits,
    /// The JWK Set the project trusts, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks: Option<JwksView>,
    /// Whether groups' members get presence events.
    pub presence_events: bool,
    /// Where events are posted, without its secret.
    pub webhook: Option<WebhookView>,
    /// Whether clients may negotiate `permessage-deflate`.
    pub permessage_deflate: bool,
    /// Unix seconds (0 for config projects).
    pub created_at: u64,
    /// Unix seconds (0 for config projects).
    pub updated_at: u64,
}

/// A JWK Set source as shown: its settings, and whether a CA is given (not the CA itself).
#[derive(Debug, Clone, Serialize)]
pub struct JwksView {
    /// The URL.
    pub url: String,
    /// Whether a CA (file or PEM) verifies the URL's server instead of the system's roots.
    pub custom_ca: bool,
    /// Unknown-`kid` refreshes at most once per this many seconds.
    pub min_refresh_secs: u64,
    /// Cache lifetime without `max-age`.
    pub default_max_age_secs: u64,
    /// Longest cache lifetime.
    pub max_age_cap_secs: u64,
    /// Fetch deadline.
    pub timeout_ms: u64,
}

impl From<&JwksConfig> for JwksView {
    fn from(j: &JwksConfig) -> Self {
        Self {
            url: j.url.clone(),
            custom_ca: j.ca_file.is_some() || j.ca_pem.is_some(),
            min_refresh_secs: j.min_refresh_secs,
            default_max_age_secs: j.default_max_age_secs,
            max_age_cap_secs: j.max_age_cap_secs,
            timeout_ms: j.timeout_ms,
        }
    }
}

/// A webhook as shown: everything but the secret.
#[derive(Debug, Clone, Serialize)]
pub struct WebhookView {
    /// The endpoint.
    pub url: String,
    /// The events posted.
    pub events: Vec<WebhookEvent>,
    /// Most events per post.
    pub max_batch: usize,
    /// How long a batch gathers, ms.
    pub batch_ms: u64,
    /// Most events waiting per node.
    pub max_queue: usize,
    /// Deadline of a post, ms.
    pub timeout_ms: u64,
    /// Whether a CA of the project's (file or PEM) is trusted besides the system's roots.
    pub custom_ca: bool,
}

fn webhook_view(w: &WebhookConfig) -> WebhookView {
    WebhookView {
        url: w.url.clone(),
        events: w.events.clone(),
        max_batch: w.max_batch,
        batch_ms: w.batch_ms,
        max_queue: w.max_queue,
        timeout_ms: w.timeout_ms,
        custom_ca: w.ca_file.is_some() || w.ca_pem.is_some(),
    }
}

/// A token key as shown.
#[derive(Debug, Clone, Serialize)]
pub struct JwtKeyView {
    /// Its kid (empty when the file gives none).
    pub kid: String,
    /// Its algorithm.
    pub alg: KeyAlgorithm,
}

/// An API key as shown.
#[derive(Debug, Clone, Serialize)]
pub struct ApiKeyView {
    /// Its id (fingerprint).
    pub id: String,
    /// Unix seconds (0 for config projects).
    pub created_at: u64,
}

/// A new API key: the key itself is in this answer only.
#[derive(Debug, Clone, Serialize)]
pub struct NewApiKey {
    /// The project.
    pub project: String,
    /// Its id, for deleting it.
    pub id: String,
    /// The key. Shown once: only its digest is kept.
    pub key: String,
}

/// A change to a project's settings (absent fields stay).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectChange {
    /// Disable or enable.
    pub disabled: Option<bool>,
    /// Replaces the limits (address lists, origins, caps) as a whole.
    pub limits: Option<ProjectLimits>,
    /// Sets the JWK Set source; one with an empty `url` removes it.
    pub jwks: Option<JwksConfig>,
    /// Turns presence events on or off.
    #[serde(default)]
    pub presence_events: Option<bool>,
    /// Sets (replaces) the webhook.
    #[serde(default)]
    pub webhook: Option<WebhookConfig>,
    /// Removes the webhook.
    #[serde(default)]
    pub remove_webhook: bool,
    /// Turns `permessage-deflate` on or off (new connections; open ones keep what they have).
    #[serde(default)]
    pub permessage_deflate: Option<bool>,
}

/// The projects created through the API, the configuration's, and the audit log.
pub struct ProjectStore {
    file: Option<PathBuf>,
    shared: Option<Arc<dyn Shared>>,
    api: Arc<ArcSwap<ApiKeys>>,
    apply: Box<dyn Apply>,
    inner: Mutex<Inner>,
}

/// The state, the configuration's part, and the shared version the state is of.
struct Inner {
    state: State,
    base: Base,
    version: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The problems of a project id beside the configuration's.
fn check_new_id(base: &Base, state: &State, id: &str) -> Result<(), AdminError> {
    ProjectId::validate(id).map_err(|e| AdminError::invalid("project", e))?;
    if base.projects.iter().any(|p| p.id == id) {
        return Err(AdminError::Exists(format!(
            "project {id:?} exists in the configuration file"
        )));
    }
    if state.projects.contains_key(id) {
        return Err(AdminError::Exists(format!("project {id:?} exists")));
    }
    Ok(())
}

impl ProjectStore {
    /// Opens the store: reads the shared document (a cluster: `shared`), or else
    /// `<state_dir>/projects.json` when a `state_dir` is given (else API changes live as long as
    /// the process), and installs the configuration's projects with the stored ones. Stored
    /// projects that clash with the file's are an error.
    pub async fn open(
        state_dir: Option<&Path>,
        shared: Option<Arc<dyn Shared>>,
        projects: Vec<ProjectConfig>,
        admin_keys: Vec<String>,
        api: Arc<ArcSwap<ApiKeys>>,
        apply: Box<dyn Apply>,
    ) -> Result<Self, Vec<String>> {
        let file = match (&shared, state_dir) {
            (Some(_), _) | (None, None) => None,
            (None, Some(dir)) => {
                std::fs::create_dir_all(dir).map_err(|e| {
                    vec![format!(
                        "router.state_dir: cannot create {}: {e}",
                        dir.display()
                    )]
                })?;
                Some(dir.join(STATE_FILE))
            }
        };
        let (version, state) = match (&shared, &file) {
            // Redis down at start: the poll installs the projects once it answers.
            (Some(sh), _) => match sh.load().await {
                Ok((v, bytes)) => (v, parse(bytes.as_deref()).map_err(|e| vec![e])?),
                Err(e) => {
                    tracing::warn!(error = %e, "projects of the admin API not read yet; retrying");
                    (0, State::default())
                }
            },
            (None, Some(f)) if f.exists() => {
                let text = std::fs::read(f)
                    .map_err(|e| vec![format!("{}: cannot read: {e}", f.display())])?;
                let state = serde_json::from_slice::<State>(&text)
                    .map_err(|e| vec![format!("{}: not a Herald state file: {e}", f.display())])?;
                (0, state)
            }
            _ => (0, State::default()),
        };
        let base = Base {
            projects,
            admin_keys,
        };
        let store = Self {
            file,
            shared,
            api,
            apply,
            inner: Mutex::new(Inner {
                state: State::default(),
                base,
                version: 0,
            }),
        };
        {
            let mut inner = store.inner.lock().await;
            let commit = store.prepare(&state, &inner.base)?;
            commit();
            inner.state = state;
            inner.version = version;
        }
        Ok(store)
    }

    /// Takes the configuration's projects and admin keys again (SIGHUP). Refused, and nothing
    /// changed, when the file now has a project the API created.
    pub async fn reload(
        &self,
        projects: Vec<ProjectConfig>,
        admin_keys: Vec<String>,
    ) -> Result<(), Vec<String>> {
        let mut inner = self.inner.lock().await;
        clashes(&projects, &inner.state)?;
        let base = Base {
            projects,
            admin_keys,
        };
        let commit = self.prepare(&inner.state, &base)?;
        commit();
        inner.base = base;
        Ok(())
    }

    /// In a cluster: installs what another node changed, when the shared version moved (one
    /// `GET` when it did not). Nothing to do on one node.
    pub async fn refresh(&self) -> Result<(), AdminError> {
        let mut inner = self.inner.lock().await;
        self.catch_up(&mut inner).await
    }

    async fn catch_up(&self, inner: &mut Inner) -> Result<(), AdminError> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        let v = shared.version().await.map_err(AdminError::Unavailable)?;
        if v == inner.version {
            return Ok(());
        }
        let (v, bytes) = shared.load().await.map_err(AdminError::Unavailable)?;
        let state = parse(bytes.as_deref()).map_err(AdminError::Unavailable)?;
        let commit = self
            .prepare(&state, &inner.base)
            .map_err(|p| AdminError::Refused(p.join("; ")))?;
        commit();
        inner.state = state;
        inner.version = v;
        Ok(())
    }

    /// Prepares the edge's and the router's tables for `state` beside `base`.
    fn prepare(&self, state: &State, base: &Base) -> Result<Box<dyn FnOnce() + Send>, Vec<String>> {
        let mut projects: Vec<ProjectConfig> = base.projects.clone();
        let mut digests = Vec::new();
        for (id, p) in state.projects.iter().filter(|(_, p)| !p.disabled) {
            // The file's project wins on this node (the API cannot create such an id, but another
            // node's file, or this one's while it was stopped, may have it).
            if base.projects.iter().any(|b| &b.id == id) {
                tracing::warn!(project = %id, "a stored project has the id of a file project: not installed");
                continue;
            }
            projects.push(p.config(id));
            for k in &p.api_keys {
                let d: Option<Digest> = unhex(&k.sha256).and_then(|b| b.try_into().ok());
                match d {
                    Some(d) => digests.push((id.clone(), d)),
                    None => {
                        return Err(vec![format!(
                            "project {id:?}: a stored key is not a digest"
                        )]);
                    }
                }
            }
        }
        let now = now_ms();
        let mut bans = BanList::new();
        for (project, users) in &state.bans {
            for (user, ban) in users {
                if ban.until_ms.is_none_or(|t| now < t) {
                    bans.insert(project, user, ban.until_ms);
                }
            }
        }
        let edge = self.apply.prepare(&projects, &bans)?;
        let keys = ApiKeys::new(&projects, &base.admin_keys).with_digests(digests);
        let api = self.api.clone();
        Ok(Box::new(move || {
            edge();
            api.store(Arc::new(keys));
        }))
    }

    /// Writes `state` (a temporary file, then a rename).
    fn persist(&self, state: &State) -> Result<(), AdminError> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let io = |e: std::io::Error| AdminError::Io(format!("{}: {e}", file.display()));
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| AdminError::Io(e.to_string()))?;
        let tmp = file.with_extension("json.tmp");
        {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            // It holds token secrets: readable by this user only.
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io)?;
            f.write_all(&bytes).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, file).map_err(io)?;
        if let Some(dir) = file.parent()
            && let Ok(d) = std::fs::File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Runs `change` on a copy of the state (in a cluster, the latest one); when it succeeds and
    /// the edge takes the result, writes it, installs it and logs it.
    async fn change<T>(
        &self,
        caller: &Caller,
        action: &str,
        project: &str,
        change: impl FnOnce(&Base, &mut State) -> Result<(T, String), AdminError>,
    ) -> Result<T, AdminError> {
        let mut guard = self.inner.lock().await;
        self.catch_up(&mut guard).await?;
        let inner = &mut *guard;
        let mut next = inner.state.clone();
        let (out, detail) = change(&inner.base, &mut next)?;
        let commit = self
            .prepare(&next, &inner.base)
            .map_err(|p| AdminError::Refused(p.join("; ")))?;
        let seq = next.audit.last().map_or(1, |e| e.seq + 1);
        next.audit.push(AuditEntry {
            seq,
            at_ms: now_ms(),
            actor: caller.actor(),
            action: action.to_string(),
            project: project.to_string(),
            detail,
        });
        if next.audit.len() > AUDIT_KEPT {
            let extra = next.audit.len() - AUDIT_KEPT;
            next.audit.drain(..extra);
        }
        match &self.shared {
            Some(shared) => {
                let bytes = serde_json::to_vec(&next).map_err(|e| AdminError::Io(e.to_string()))?;
                match shared
                    .save(inner.version, &bytes)
                    .await
                    .map_err(AdminError::Unavailable)?
                {
                    Some(v) => inner.version = v,
                    None => return Err(AdminError::Conflict),
                }
            }
            None => self.persist(&next)?,
        }
        commit();
        inner.state = next;
        tracing::info!(actor = %caller.actor(), action, project, "admin change");
        Ok(out)
    }

    /// The stored project `id`, for a change: exists, and the caller may touch it; a file
    /// project is read-only.
    fn stored<'s>(
        base: &Base,
        state: &'s mut State,
        caller: &Caller,
        id: &str,
    ) -> Result<&'s mut StoredProject, AdminError> {
        caller.allow(id)?;
        if base.projects.iter().any(|p| p.id == id) {
            return Err(AdminError::ReadOnly(id.to_string()));
        }
        state
            .projects
            .get_mut(id)
            .ok_or_else(|| AdminError::NotFound(format!("unknown project {id:?}")))
    }

    /// Creates a project (admin keys only), with optional token keys and limits.
    pub async fn create(
        &self,
        caller: &Caller,
        id: &str,
        keys: Vec<KeyConfig>,
        change: ProjectChange,
    ) -> Result<ProjectView, AdminError> {
        caller.admin()?;
        self.change(caller, "project.create", id, |base, state| {
            check_new_id(base, state, id)?;
            let now = now_ms() / 1000;
            let p = StoredProject {
                disabled: change.disabled.unwrap_or(false),
                keys: Vec::new(),
                api_keys: Vec::new(),
                limits: change.limits.unwrap_or_default(),
                jwks: jwks_of(change.jwks)?,
                presence_events: change.presence_events.unwrap_or(false),
                webhook: change.webhook.map(webhook_of).transpose()?,
                permessage_deflate: change.permessage_deflate.unwrap_or(false),
                created_at: now,
                updated_at: now,
            };
            state.projects.insert(id.to_string(), p);
            let mut kids = Vec::new();
            for k in keys {
                kids.push(k.kid.clone().unwrap_or_default());
                add_key(state, id, k)?;
            }
            check(state, id)?;
            Ok((
                view_stored(id, &state.projects[id]),
                format!("created; jwt keys {kids:?}"),
            ))
        })
        .await
    }

    /// Changes a project's `disabled` flag or limits.
    pub async fn update(
        &self,
        caller: &Caller,
        id: &str,
        change: ProjectChange,
    ) -> Result<ProjectView, AdminError> {
        self.change(caller, "project.update", id, |base, state| {
            let p = Self::stored(base, state, caller, id)?;
            let mut what = Vec::new();
            if let Some(d) = change.disabled {
                p.disabled = d;
                what.push(format!("disabled={d}"));
            }
            if let Some(l) = change.limits {
                what.push(format!(
                    "limits={}",
                    serde_json::to_string(&l).unwrap_or_default()
                ));
                p.limits = l;
            }
            if let Some(j) = change.jwks {
                let j = jwks_of(Some(j))?;
                what.push(match &j {
                    Some(j) => format!("jwks={}", j.url),
                    None => "jwks removed".into(),
                });
                p.jwks = j;
            }
            if let Some(on) = change.presence_events {
                p.presence_events = on;
                what.push(format!("presence_events={on}"));
            }
            if let Some(on) = change.permessage_deflate {
                p.permessage_deflate = on;
                what.push(format!("permessage_deflate={on}"));
            }
            if change.remove_webhook {
                p.webhook = None;
                what.push("webhook removed".into());
            }
            if let Some(w) = change.webhook.map(webhook_of).transpose()? {
                // Never the secret.
                what.push(format!("webhook url={} events={:?}", w.url, w.events));
                p.webhook = Some(w);
            }
            p.updated_at = now_ms() / 1000;
            check(state, id)?;
            Ok((view_stored(id, &state.projects[id]), what.join(" ")))
        })
        .await
    }

    /// Deletes a project.
    pub async fn delete(&self, caller: &Caller, id: &str) -> Result<(), AdminError> {
        self.change(caller, "project.delete", id, |base, state| {
            Self::stored(base, state, caller, id)?;
            state.projects.remove(id);
            state.bans.remove(id);
            Ok(((), "deleted".into()))
        })
        .await
    }

    /// Adds a token key (a `kid` is required; it may not be in use in the project).
    pub async fn add_jwt_key(
        &self,
        caller: &Caller,
        id: &str,
        key: KeyConfig,
    ) -> Result<ProjectView, AdminError> {
        self.change(caller, "jwt_key.add", id, |base, state| {
            Self::stored(base, state, caller, id)?;
            let detail = format!(
                "kid {:?} {:?}",
                key.kid.clone().unwrap_or_default(),
                key.alg
            );
            add_key(state, id, key)?;
            check(state, id)?;
            Ok((view_stored(id, &state.projects[id]), detail))
        })
        .await
    }

    /// Retires (removes) a token key: tokens it signed are refused from now on.
    pub async fn retire_jwt_key(
        &self,
        caller: &Caller,
        id: &str,
        kid: &str,
    ) -> Result<ProjectView, AdminError> {
        self.change(caller, "jwt_key.retire", id, |base, state| {
            let p = Self::stored(base, state, caller, id)?;
            let before = p.keys.len();
            p.keys.retain(|k| k.kid.as_deref() != Some(kid));
            if p.keys.len() == before {
                return Err(AdminError::NotFound(format!(
                    "project {id:?} has no key {kid:?}"
                )));
            }
            p.updated_at = now_ms() / 1000;
            Ok((view_stored(id, &state.projects[id]), format!("kid {kid:?}")))
        })
        .await
    }

    /// Creates an API key of the project; the key is in the answer only.
    pub async fn create_api_key(&self, caller: &Caller, id: &str) -> Result<NewApiKey, AdminError> {
        self.change(caller, "api_key.create", id, |base, state| {
            let p = Self::stored(base, state, caller, id)?;
            let key = format!("hk_{}", hex(&rand::random::<[u8; 24]>()));
            let d = digest(&key);
            let kid = fingerprint(&d);
            p.api_keys.push(StoredApiKey {
                id: kid.clone(),
                sha256: hex(&d),
                created_at: now_ms() / 1000,
            });
            p.updated_at = now_ms() / 1000;
            Ok((
                NewApiKey {
                    project: id.to_string(),
                    id: kid.clone(),
                    key,
                },
                format!("id {kid}"),
            ))
        })
        .await
    }

    /// Deletes an API key of the project by its id.
    pub async fn delete_api_key(
        &self,
        caller: &Caller,
        id: &str,
        key_id: &str,
    ) -> Result<ProjectView, AdminError> {
        self.change(caller, "api_key.delete", id, |base, state| {
            let p = Self::stored(base, state, caller, id)?;
            let before = p.api_keys.len();
            p.api_keys.retain(|k| k.id != key_id);
            if p.api_keys.len() == before {
                return Err(AdminError::NotFound(format!(
                    "project {id:?} has no API key {key_id:?}"
                )));
            }
            p.updated_at = now_ms() / 1000;
            Ok((view_stored(id, &state.projects[id]), format!("id {key_id}")))
        })
        .await
    }

    /// Bans `user` of `project` for `secs` seconds (0: until lifted), replacing any ban of the
    /// user; the project may be a file or an API project.
    pub async fn ban(
        &self,
        caller: &Caller,
        project: &str,
        user: &str,
        secs: u64,
        reason: &str,
    ) -> Result<BanView, AdminError> {
        caller.allow(project)?;
        UserId::validate(user).map_err(|e| AdminError::invalid("user", e))?;
        if secs > MAX_BAN_SECS {
            return Err(AdminError::invalid(
                "duration_secs",
                format!("at most {MAX_BAN_SECS} (ten years); 0 bans until lifted"),
            ));
        }
        if reason.len() > 512 {
            return Err(AdminError::invalid("reason", "at most 512 bytes"));
        }
        self.change(caller, "ban.add", project, |base, state| {
            exists(base, state, project)?;
            let now = now_ms();
            prune_bans(state, now);
            let ban = Ban {
                until_ms: (secs > 0).then(|| now + secs * 1000),
                reason: reason.to_string(),
                created_at_ms: now,
                actor: caller.actor(),
            };
            let detail = match secs {
                0 => format!("user {user:?} until lifted"),
                s => format!("user {user:?} for {s} s"),
            };
            let detail = if reason.is_empty() {
                detail
            } else {
                format!("{detail}: {reason}")
            };
            let view = ban_view(project, user, &ban);
            state
                .bans
                .entry(project.to_string())
                .or_default()
                .insert(user.to_string(), ban);
            Ok((view, detail))
        })
        .await
    }

    /// Lifts the ban of `user` of `project` (not found when none is in force).
    pub async fn unban(
        &self,
        caller: &Caller,
        project: &str,
        user: &str,
    ) -> Result<(), AdminError> {
        caller.allow(project)?;
        self.change(caller, "ban.lift", project, |base, state| {
            exists(base, state, project)?;
            prune_bans(state, now_ms());
            let lifted = state
                .bans
                .get_mut(project)
                .and_then(|users| users.remove(user))
                .is_some();
            if !lifted {
                return Err(AdminError::NotFound(format!(
                    "user {user:?} of project {project:?} is not banned"
                )));
            }
            if state.bans.get(project).is_some_and(BTreeMap::is_empty) {
                state.bans.remove(project);
            }
            Ok(((), format!("user {user:?}")))
        })
        .await
    }

    /// The bans in force in `project`, by user.
    pub async fn bans(&self, caller: &Caller, project: &str) -> Result<Vec<BanView>, AdminError> {
        caller.allow(project)?;
        let inner = self.inner.lock().await;
        exists(&inner.base, &inner.state, project)?;
        let now = now_ms();
        Ok(inner
            .state
            .bans
            .get(project)
            .into_iter()
            .flatten()
            .filter(|(_, b)| b.until_ms.is_none_or(|t| now < t))
            .map(|(user, b)| ban_view(project, user, b))
            .collect())
    }

    /// One project, as the caller may see it.
    pub async fn get(&self, caller: &Caller, id: &str) -> Result<ProjectView, AdminError> {
        caller.allow(id)?;
        let inner = self.inner.lock().await;
        let (state, base) = (&inner.state, &inner.base);
        if let Some(p) = base.projects.iter().find(|p| p.id == id) {
            return Ok(view_config(p));
        }
        state
            .projects
            .get(id)
            .map(|p| view_stored(id, p))
            .ok_or_else(|| AdminError::NotFound(format!("unknown project {id:?}")))
    }

    /// Every project the caller may see, in id order.
    pub async fn list(&self, caller: &Caller) -> Vec<ProjectView> {
        let inner = self.inner.lock().await;
        let (state, base) = (&inner.state, &inner.base);
        let mut out: Vec<ProjectView> = base
            .projects
            .iter()
            .map(view_config)
            .chain(state.projects.iter().map(|(id, p)| view_stored(id, p)))
            .filter(|v| caller.allow(&v.project).is_ok())
            .collect();
        out.sort_by(|a, b| a.project.cmp(&b.project));
        out
    }

    /// The audit log, oldest first, after entry `after` (0: from the start), at most `limit`
    /// entries; a project key sees its project's entries only.
    pub async fn audit(
        &self,
        caller: &Caller,
        project: Option<&str>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, AdminError> {
        if let Some(p) = project {
            caller.allow(p)?;
        }
        let inner = self.inner.lock().await;
        Ok(inner
            .state
            .audit
            .iter()
            .filter(|e| e.seq > after)
            .filter(|e| project.is_none_or(|p| e.project == p))
            .filter(|e| caller.allow(&e.project).is_ok())
            .take(limit)
            .cloned()
            .collect())
    }
}

/// A stored document (`None`: empty).
fn parse(bytes: Option<&[u8]>) -> Result<State, String> {
    match bytes {
        None => Ok(State::default()),
        Some(b) => serde_json::from_slice(b).map_err(|e| format!("not a Herald state: {e}")),
    }
}

/// The file's projects that the state also has.
fn clashes(projects: &[ProjectConfig], state: &State) -> Result<(), Vec<String>> {
    let problems: Vec<String> = projects
        .iter()
        .enumerate()
        .filter(|(_, p)| state.projects.contains_key(&p.id))
        .map(|(i, p)| {
            format!(
                "projects[{i}] ({}): the admin API created this project; delete it there first",
                p.id
            )
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// Whether project `id` exists (in the file or the API's).
fn exists(base: &Base, state: &State, id: &str) -> Result<(), AdminError> {
    if base.projects.iter().any(|p| p.id == id) || state.projects.contains_key(id) {
        Ok(())
    } else {
        Err(AdminError::NotFound(format!("unknown project {id:?}")))
    }
}

/// Drops the bans that ended before `now`.
fn prune_bans(state: &mut State, now: u64) {
    for users in state.bans.values_mut() {
        users.retain(|_, b| b.until_ms.is_none_or(|t| now < t));
    }
    state.bans.retain(|_, users| !users.is_empty());
}

fn ban_view(project: &str, user: &str, b: &Ban) -> BanView {
    BanView {
        project: project.to_string(),
        user: user.to_string(),
        until_ms: b.until_ms.unwrap_or(0),
        reason: b.reason.clone(),
        created_at_ms: b.created_at_ms,
        actor: b.actor.clone(),
    }
}

/// A JWK Set source as the API takes it: an empty URL removes it; a CA as PEM text only, of
/// certificates the edges can trust (checked as they will use it: a CA they could not load would
/// otherwise be taken here and fail only when the edges fetch the set).
fn jwks_of(j: Option<JwksConfig>) -> Result<Option<JwksConfig>, AdminError> {
    match j {
        Some(j) if j.url.is_empty() => Ok(None),
        Some(j) if j.ca_file.is_some() => Err(AdminError::invalid(
            "jwks.ca_file",
            "not through the API: give ca_pem",
        )),
        Some(j) => {
            if let Some(pem) = &j.ca_pem {
                check_ca(pem).map_err(|e| AdminError::invalid("jwks.ca_pem", e))?;
            }
            Ok(Some(j))
        }
        None => Ok(None),
    }
}

/// A webhook as the API takes it: its CA as PEM text only, of certificates the edges can trust.
fn webhook_of(w: WebhookConfig) -> Result<WebhookConfig, AdminError> {
    if w.ca_file.is_some() {
        return Err(AdminError::invalid(
            "webhook.ca_file",
            "not through the API: give ca_pem",
        ));
    }
    if let Some(pem) = &w.ca_pem {
        check_ca(pem).map_err(|e| AdminError::invalid("webhook.ca_pem", e))?;
    }
    Ok(w)
}

/// Whether `pem` holds certificates a TLS client can trust (what the edges do with it).
fn check_ca(pem: &str) -> Result<(), String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let cert = cert.map_err(|e| format!("not PEM certificates: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("a certificate cannot be used: {e}"))?;
    }
    if roots.is_empty() {
        return Err("no certificate in the PEM".into());
    }
    Ok(())
}

/// Adds a token key to the stored project `id`.
fn add_key(state: &mut State, id: &str, key: KeyConfig) -> Result<(), AdminError> {
    let Some(p) = state.projects.get_mut(id) else {
        return Err(AdminError::NotFound(format!("unknown project {id:?}")));
    };
    let Some(kid) = key.kid.as_deref() else {
        return Err(AdminError::invalid("kid", "required"));
    };
    if kid.is_empty() || kid.len() > 128 {
        return Err(AdminError::invalid("kid", "1 to 128 characters"));
    }
    if key.public_key_file.is_some() {
        return Err(AdminError::invalid(
            "public_key_file",
            "not through the API: give public_key_pem",
        ));
    }
    if p.keys.iter().any(|k| k.kid.as_deref() == Some(kid)) {
        return Err(AdminError::Exists(format!(
            "project {id:?} has a key {kid:?} already"
        )));
    }
    p.keys.push(key);
    p.updated_at = now_ms() / 1000;
    Ok(())
}

/// The configuration's checks on the stored project `id`.
fn check(state: &State, id: &str) -> Result<(), AdminError> {
    let Some(p) = state.projects.get(id) else {
        return Ok(());
    };
    let problems = herald_core::projects::validate_projects(&[p.config(id)]);
    if problems.is_empty() {
        Ok(())
    } else {
        // `projects[0] (id).keys[1].secret: ...` reads as `keys[1].secret: ...`.
        let prefix = format!("projects[0] ({id}).");
        let text: Vec<String> = problems
            .iter()
            .map(|p| p.strip_prefix(&prefix).unwrap_or(p).to_string())
            .collect();
        Err(AdminError::Refused(text.join("; ")))
    }
}

fn view_stored(id: &str, p: &StoredProject) -> ProjectView {
    ProjectView {
        project: id.to_string(),
        source: "api",
        disabled: p.disabled,
        jwt_keys: p.keys.iter().map(key_view).collect(),
        api_keys: p
            .api_keys
            .iter()
            .map(|k| ApiKeyView {
                id: k.id.clone(),
                created_at: k.created_at,
            })
            .collect(),
        limits: p.limits.clone(),
        jwks: p.jwks.as_ref().map(JwksView::from),
        presence_events: p.presence_events,
        webhook: p.webhook.as_ref().map(webhook_view),
        permessage_deflate: p.permessage_deflate,
        created_at: p.created_at,
        updated_at: p.updated_at,
    }
}

fn view_config(p: &ProjectConfig) -> ProjectView {
    ProjectView {
        project: p.id.clone(),
        source: "config",
        disabled: false,
        jwt_keys: p.keys.iter().map(key_view).collect(),
        api_keys: p
            .api_keys
            .iter()
            .map(|k| ApiKeyView {
                id: fingerprint(&digest(k)),
                created_at: 0,
            })
            .collect(),
        limits: p.limits.clone(),
        jwks: p.jwks.as_ref().map(JwksView::from),
        presence_events: p.presence_events,
        webhook: p.webhook.as_ref().map(webhook_view),
        permessage_deflate: p.permessage_deflate,
        created_at: 0,
        updated_at: 0,
    }
}

fn key_view(k: &KeyConfig) -> JwtKeyView {
    JwtKeyView {
        kid: k.kid.clone().unwrap_or_default(),
        alg: k.alg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;

    impl Apply for Nothing {
        fn prepare(
            &self,
            _: &[ProjectConfig],
            _: &BanList,
        ) -> Result<Box<dyn FnOnce() + Send>, Vec<String>> {
            Ok(Box::new(|| {}))
        }
    }

    fn admin() -> Caller {
        Caller {
            scope: Scope::Admin,
            fingerprint: "f".into(),
        }
    }

    fn hs(kid: &str) -> KeyConfig {
        KeyConfig {
            kid: Some(kid.into()),
            alg: KeyAlgorithm::HS256,
            secret: Some("s".repeat(32)),
            public_key_file: None,
            public_key_pem: None,
        }
    }

    async fn open(dir: &Path) -> ProjectStore {
        ProjectStore::open(
            Some(dir),
            None,
            Vec::new(),
            Vec::new(),
            Arc::new(ArcSwap::from_pointee(ApiKeys::default())),
            Box::new(Nothing),
        )
        .await
        .expect("open")
    }

    #[tokio::test]
    async fn changes_survive_a_reopen_and_keys_are_kept_as_digests() {
        let dir = tempfile::tempdir().expect("dir");
        let s = open(dir.path()).await;
        s.create(&admin(), "p1", vec![hs("a")], ProjectChange::default())
            .await
            .expect("create");
        let k = s.create_api_key(&admin(), "p1").await.expect("key");
        let text = std::fs::read_to_string(dir.path().join(STATE_FILE)).expect("file");
        assert!(!text.contains(&k.key), "the key itself is never written");
        assert!(text.contains(&hex(&digest(&k.key))));
        drop(s);
        let s = open(dir.path()).await;
        let v = s.get(&admin(), "p1").await.expect("get");
        assert_eq!(v.api_keys.len(), 1);
        assert_eq!(v.jwt_keys[0].kid, "a");
        let audit = s.audit(&admin(), None, 0, 100).await.expect("audit");
        let actions: Vec<&str> = audit.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(actions, ["project.create", "api_key.create"]);
    }

    #[tokio::test]
    async fn a_refused_change_changes_nothing() {
        let dir = tempfile::tempdir().expect("dir");
        let s = open(dir.path()).await;
        s.create(&admin(), "p1", vec![hs("a")], ProjectChange::default())
            .await
            .expect("create");
        let mut short = hs("b");
        short.secret = Some("short".into());
        let e = s
            .add_jwt_key(&admin(), "p1", short)
            .await
            .expect_err("short secret");
        assert_eq!(e.code(), Code::InvalidArgument, "{e}");
        assert_eq!(s.get(&admin(), "p1").await.expect("get").jwt_keys.len(), 1);
        assert_eq!(
            s.audit(&admin(), None, 0, 100).await.expect("audit").len(),
            1
        );
    }
}
