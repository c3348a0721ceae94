//! The admin API over HTTP/JSON (`/v1/admin/...` on `router.http_listen`, docs/api.md "Admin
//! API"): projects, their token keys and API keys, and the audit log, run by the
//! [`ProjectStore`]. Calls are `POST` with a JSON body, as the rest of the HTTP API; errors are
//! the same `{code, message}` bodies with the statuses of their gRPC codes.

use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::post;
use herald_core::projects::{JwksConfig, KeyConfig, ProjectLimits};
use serde::{Deserialize, Serialize};
use tonic::metadata::MetadataMap;

use crate::admin::{
    AdminError, AuditEntry, BanView, Caller, ProjectChange, ProjectStore, ProjectView,
};
use crate::http::{Refusal, finish, http_status, prepare};
use crate::keys::ApiKeys;
use crate::service::RouterService;

/// Largest body of an admin call.
const MAX_BODY: usize = 256 << 10;
/// Most audit entries in one answer.
pub const MAX_AUDIT_PAGE: usize = 1_000;

/// What the admin routes need.
#[derive(Clone)]
pub struct AdminApi {
    /// The router's service (authentication and body reading, as every HTTP call).
    pub service: RouterService,
    /// The keys, for the caller's fingerprint.
    pub keys: Arc<ArcSwap<ApiKeys>>,
    /// The store.
    pub store: Arc<ProjectStore>,
}

impl From<AdminError> for Refusal {
    fn from(e: AdminError) -> Self {
        Self {
            status: http_status(e.code()),
            code: e.code(),
            message: e.to_string(),
        }
    }
}

/// The admin routes.
pub fn routes(api: AdminApi) -> axum::Router {
    axum::Router::new()
        .route("/v1/admin/projects/create", post(create))
        .route("/v1/admin/projects/get", post(get))
        .route("/v1/admin/projects/list", post(list))
        .route("/v1/admin/projects/update", post(update))
        .route("/v1/admin/projects/delete", post(delete))
        .route("/v1/admin/jwt_keys/add", post(add_jwt_key))
        .route("/v1/admin/jwt_keys/retire", post(retire_jwt_key))
        .route("/v1/admin/api_keys/create", post(create_api_key))
        .route("/v1/admin/api_keys/delete", post(delete_api_key))
        .route("/v1/admin/audit/list", post(audit))
        .route("/v1/admin/bans/add", post(ban_add))
        .route("/v1/admin/bans/lift", post(ban_lift))
        .route("/v1/admin/bans/list", post(ban_list))
        .with_state(api)
}

/// Authenticates, names the caller, reads the body.
async fn read<T: serde::de::DeserializeOwned>(
    api: &AdminApi,
    headers: HeaderMap,
    body: Body,
) -> Result<(Caller, T), Refusal> {
    let md = MetadataMap::from_headers(headers.clone());
    let (_, request) = prepare::<T>(&api.service, headers, body, MAX_BODY).await?;
    let (scope, fingerprint) = match crate::console::session_caller() {
        Some(caller) => caller,
        None => api.keys.load().caller(&md)?,
    };
    Ok((caller_of(scope, fingerprint), request))
}

fn caller_of(scope: crate::keys::Scope, fingerprint: String) -> Caller {
    Caller { scope, fingerprint }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateJson {
    #[serde(default)]
    project: String,
    #[serde(default)]
    jwt_keys: Vec<KeyConfig>,
    disabled: Option<bool>,
    limits: Option<ProjectLimits>,
    jwks: Option<JwksConfig>,
    permessage_deflate: Option<bool>,
}

#[derive(Serialize)]
struct ProjectReply {
    project: ProjectView,
}

async fn create(State(api): State<AdminApi>, headers: HeaderMap, body: Body) -> Response {
    let outcome = async {
        let (caller, r) = read::<CreateJson>(&api, headers, body).await?;
        let change = ProjectChange {
            disabled: r.disabled,
            limits: r.limits,
            jwks: r.jwks,
            permessage_deflate: r.permessage_deflate,
            ..ProjectChange::default()
        };
        let project = api
            .store
            .create(&caller, &r.project, r.jwt_keys, change)
            .await?;
        Ok(ProjectReply { project })
    };
    finish("admin_project_create", outcome.await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectJson {
    #[serde(default)]
    project: String,
}

async fn get(State(api): State<AdminApi>, headers: HeaderMap, body: Body) -> Response {
    let outcome = async {
        let (caller, r) = read::<ProjectJson>(&api, headers, body).await?;
        let project = api.store.get(&caller, &r.project).await?;
        Ok(ProjectReply { project })
    };
    finish("admin_project_get", outcome.await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Nothing {}

#[derive(Serialize)]
struct ListReply {
    projects: Vec<ProjectView>,
}

async fn list(State(api): State<AdminApi>, headers: HeaderMap, body: Body) -> Response {
    let outcome = async {
        let (caller, Nothing {}) = read::<Nothing>(&api, headers, body).await?;
        Ok::<_, Refusal>(ListReply {
            projects: api.store.list(&caller).await,
        })
    };
    finish("admin_project_list", outcome.await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateJson {
    #[serde(default)]
    project: String,
    disabled: Option<bool>,
    limits: Option<ProjectLimits>,
    jwks: Option<JwksConfig>,
    presence_events: Option<bool>,
    webhook: Option<herald_core::projects::WebhookConfig>,
    #[serde(default)]
    remove_webhook: bool,
    permessage_deflate: Option<bool>,
}

async fn update(State(api): State<AdminApi>, headers: HeaderMap, body: Body) -> Response {
    let outcome = async {
        let (caller, r) = read::<UpdateJson>(&api, headers, body).await?;
        let change = ProjectChange {
            disabled: r.disabled,
            limits: r.limits,
            jwks: r.jwks,
            presence_events: r.presence_events,
            webhook: r.webhook,
            remove_webhook: r.remove_webhook,
            permessage_deflate: r.permessage_deflate,
        };
        let project = api.store.update(&caller, &r.project, change).await?;
        Ok(ProjectReply { project })
    };
    finish("admin_project_update", outcome.await)
}

#[derive(Serialize)]
struct DeletedReply {
    project: String,
    deleted: bool,
}

async fn delete(State(api): State<AdminApi>, headers: HeaderMap, body: Body) -> Response {
    let outcome = async {
        let (caller, r) = read::<ProjectJson>(&api, headers, body).await?;
        api.store.delete(&caller, &r.project).await?;
        Ok(DeletedReply {
            project: r.project,
            deleted: true,
        })
    };
    finish("admin_project_delete", outcome.await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddKeyJson {
    #[serde(default)]
    project: String,
    key: KeyConfig,
}

async fn add_jwt_key(State(api): State<AdminApi>, headers: HeaderMap, body: Body) -> Response {
    let outcome = async {
        let (caller, r) = read::<AddKeyJson>(&api, headers, body).await?;
        let project = api.store.add_jwt_key(&caller, &r.project, r.key).await?;
        Ok(ProjectReply { project })
    };
    finish("admin_jwt_key_add", outcome.await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetireJson {
    #[serde(default)]
    project: String,
    #[serde(default)]
    kid: String,
}

async fn retire_jwt_key(State(api): State<AdminApi>, headers: HeaderMap, body: Body) -> Response {
    let outcome = async {
        let (caller, r) = read::<RetireJson>(&api, headers, body).await?;
        let project = api
            .store
            .retire_jwt_key(&caller, &r.project, &r.kid)
            .await?;
        Ok(ProjectReply { project })
    };
    finish("admin_jwt_key_retire", outcome.await)
}

async fn create_api_key(State(api): State<AdminApi>, headers: HeaderMap, body: Body) -> Response {
    let outcome = async {
        let (caller, r) = read::<ProjectJson>(&api, headers, body).await?;
        Ok::<_, Refusal>(api.store.create_api_key(&caller, &r.project).await?)
    };
    finish("admin_api_key_create", outcome.await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteKeyJson {
    #[serde(default)]
    project: String,
    #[serde(default)]
    id: String,
}

async fn delete_api_key(State(api): State<AdminApi>, headers: HeaderMap, body: Body) -> Response {
    let outcome = async {
        let (caller, r) = read::<DeleteKeyJson>(&api, headers, body).await?;
        let project = api.store.delete_api_key(&caller, &r.project, &r.id).await?;
        Ok(ProjectReply { project })
    };
    finish("admin_api_key_delete", outcome.await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditJson {
    project: Option<String>,
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
}

#[derive(Serialize)]
struct AuditReply {
    entries: Vec<AuditEntry>,
}

async fn audit(State(api): State<AdminApi>, headers: HeaderMap, body: Body) -> Response {
    let outcome = async {
        let (caller, r) = read::<AuditJson>(&api, headers, body).await?;
        let limit = r.limit.unwrap_or(MAX_AUDIT_PAGE).clamp(1, MAX_AUDIT_PAGE);
        let entries = api
            .store
            .audit(&caller, r.project.as_deref(), r.after, limit)
            .await?;
        Ok::<_, Refusal>(AuditReply { entries })
    };
    finish("admin_audit_list", outcome.await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BanJson {
    #[serde(default)]
    project: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    duration_secs: u64,
    #[serde(default)]
    reason: String,
}

#[derive(Serialize)]
struct BanReply {
    ban: BanView,
}

async fn ban_add(State(api): State<AdminApi>, headers: HeaderMap, body: Body) -> Response {
    let outcome = async {
        let (caller, r) = read::<BanJson>(&api, headers, body).await?;
        let ban = api
            .store
            .ban(&caller, &r.project, &r.user, r.duration_secs, &r.reason)
            .await?;
        Ok::<_, Refusal>(BanReply { ban })
    };
    finish("admin_ban_add", outcome.await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnbanJson {
    #[serde(default)]
    project: String,
    #[serde(default)]
    user: String,
}

#[derive(Serialize)]
struct UnbanReply {
    project: String,
    user: String,
    lifted: bool,
}

async fn ban_lift(State(api): State<AdminApi>, headers: HeaderMap, body: Body) -> Response {
    let outcome = async {
        let (caller, r) = read::<UnbanJson>(&api, headers, body).await?;
        api.store.unban(&caller, &r.project, &r.user).await?;
        Ok::<_, Refusal>(UnbanReply {
            project: r.project,
            user: r.user,
            lifted: true,
        })
    };
    finish("admin_ban_lift", outcome.await)
}

#[derive(Serialize)]
struct BansReply {
    bans: Vec<BanView>,
}

async fn ban_list(State(api): State<AdminApi>, headers: HeaderMap, body: Body) -> Response {
    let outcome = async {
        let (caller, r) = read::<ProjectJson>(&api, headers, body).await?;
        let bans = api.store.bans(&caller, &r.project).await?;
        Ok::<_, Refusal>(BansReply { bans })
    };
    finish("admin_ban_list", outcome.await)
}
