//! The admin API over gRPC (`herald.admin.v1.Admin`, proto/proto/herald/admin/v1/admin.proto),
//! on the router's gRPC listener beside `herald.v1.Herald`: the same [`ProjectStore`] calls as
//! over HTTP/JSON, the same keys and errors.

use std::sync::Arc;

use arc_swap::ArcSwap;
use herald_core::projects::{JwksConfig, KeyAlgorithm, KeyConfig, ProjectLimits};
use herald_core::proto::admin as pb;
use herald_core::proto::admin::admin_server::Admin;
use serde_json::json;
use tonic::{Request, Response, Status};

use crate::admin::{AdminError, BanView, Caller, ProjectChange, ProjectStore, ProjectView};
use crate::admin_http::MAX_AUDIT_PAGE;
use crate::keys::ApiKeys;

/// The `herald.admin.v1.Admin` service.
#[derive(Clone)]
pub struct AdminService {
    keys: Arc<ArcSwap<ApiKeys>>,
    store: Arc<ProjectStore>,
}

impl AdminService {
    /// A service over `store`, authenticating with `keys`.
    pub fn new(keys: Arc<ArcSwap<ApiKeys>>, store: Arc<ProjectStore>) -> Self {
        Self { keys, store }
    }

    fn caller<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        let (scope, fingerprint) = self.keys.load().caller(req.metadata())?;
        Ok(Caller { scope, fingerprint })
    }
}

fn status(e: AdminError) -> Status {
    Status::new(e.code(), e.to_string())
}

fn invalid(field: &'static str, reason: impl std::fmt::Display) -> Status {
    status(AdminError::Invalid {
        field,
        reason: reason.to_string(),
    })
}

fn key_config(k: pb::JwtKey) -> Result<KeyConfig, Status> {
    let alg: KeyAlgorithm = serde_json::from_value(json!(k.alg))
        .map_err(|_| invalid("alg", "one of HS256, RS256, ES256, EdDSA"))?;
    let some = |s: String| (!s.is_empty()).then_some(s);
    Ok(KeyConfig {
        kid: some(k.kid),
        alg,
        secret: some(k.secret),
        public_key_file: None,
        public_key_pem: some(k.public_key_pem),
    })
}

fn limits(l: pb::Limits) -> Result<ProjectLimits, Status> {
    let v = json!({
        "allow_ips": l.allow_ips,
        "deny_ips": l.deny_ips,
        "origins": l.origins,
        "require_origin": l.require_origin,
        "max_connections": l.max_connections,
        "max_subscriptions_per_connection": l.max_subscriptions_per_connection,
        "max_connections_per_user": l.max_connections_per_user,
    });
    serde_json::from_value(v).map_err(|e| invalid("limits", e))
}

/// A JWK Set source from the wire: 0 in a number is its default.
fn jwks(j: pb::Jwks) -> JwksConfig {
    let d = JwksConfig::new(j.url);
    let or = |v: u64, d: u64| if v == 0 { d } else { v };
    JwksConfig {
        ca_pem: (!j.ca_pem.is_empty()).then_some(j.ca_pem),
        min_refresh_secs: or(j.min_refresh_secs, d.min_refresh_secs),
        default_max_age_secs: or(j.default_max_age_secs, d.default_max_age_secs),
        max_age_cap_secs: or(j.max_age_cap_secs, d.max_age_cap_secs),
        timeout_ms: or(j.timeout_ms, d.timeout_ms),
        ..d
    }
}

fn ban_pb(b: BanView) -> pb::Ban {
    pb::Ban {
        project: b.project,
        user: b.user,
        until_ms: b.until_ms,
        reason: b.reason,
        created_at_ms: b.created_at_ms,
        actor: b.actor,
    }
}

fn webhook(w: pb::Webhook) -> Result<herald_core::projects::WebhookConfig, Status> {
    let mut v = json!({"url": w.url, "secret": w.secret});
    if !w.ca_pem.is_empty() {
        v["ca_pem"] = json!(w.ca_pem);
    }
    if !w.events.is_empty() {
        v["events"] = json!(w.events);
    }
    for (k, n) in [
        ("max_batch", w.max_batch),
        ("batch_ms", w.batch_ms),
        ("max_queue", w.max_queue),
        ("timeout_ms", w.timeout_ms),
    ] {
        if n > 0 {
            v[k] = json!(n);
        }
    }
    serde_json::from_value(v).map_err(|e| invalid("webhook", e))
}

fn limits_pb(l: &ProjectLimits) -> pb::Limits {
    pb::Limits {
        allow_ips: l.allow_ips.iter().map(ToString::to_string).collect(),
        deny_ips: l.deny_ips.iter().map(ToString::to_string).collect(),
        origins: l.origins.clone(),
        require_origin: l.require_origin,
        max_connections: l.max_connections,
        max_subscriptions_per_connection: l.max_subscriptions_per_connection,
        max_connections_per_user: l.max_connections_per_user,
    }
}

fn project_pb(v: ProjectView) -> pb::Project {
    pb::Project {
        project: v.project,
        source: v.source.to_string(),
        disabled: v.disabled,
        jwt_keys: v
            .jwt_keys
            .into_iter()
            .map(|k| pb::JwtKey {
                kid: k.kid,
                alg: format!("{:?}", k.alg),
                secret: String::new(),
                public_key_pem: String::new(),
            })
            .collect(),
        api_keys: v
            .api_keys
            .into_iter()
            .map(|k| pb::ApiKey {
                id: k.id,
                created_at: k.created_at,
            })
            .collect(),
        limits: Some(limits_pb(&v.limits)),
        presence_events: v.presence_events,
        webhook: v.webhook.map(|w| pb::Webhook {
            url: w.url,
            secret: String::new(),
            events: w.events.iter().map(|e| e.as_str().to_string()).collect(),
            max_batch: w.max_batch as u64,
            batch_ms: w.batch_ms,
            max_queue: w.max_queue as u64,
            timeout_ms: w.timeout_ms,
            ca_pem: String::new(),
            custom_ca: w.custom_ca,
        }),
        permessage_deflate: v.permessage_deflate,
        created_at: v.created_at,
        updated_at: v.updated_at,
        jwks: v.jwks.map(|j| pb::Jwks {
            url: j.url,
            ca_pem: String::new(),
            custom_ca: j.custom_ca,
            min_refresh_secs: j.min_refresh_secs,
            default_max_age_secs: j.default_max_age_secs,
            max_age_cap_secs: j.max_age_cap_secs,
            timeout_ms: j.timeout_ms,
        }),
    }
}

fn reply(v: ProjectView) -> Response<pb::ProjectReply> {
    Response::new(pb::ProjectReply {
        project: Some(project_pb(v)),
    })
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_project(
        &self,
        req: Request<pb::CreateProjectRequest>,
    ) -> Result<Response<pb::ProjectReply>, Status> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        let keys = r
            .jwt_keys
            .into_iter()
            .map(key_config)
            .collect::<Result<Vec<_>, _>>()?;
        let change = ProjectChange {
            disabled: Some(r.disabled),
            limits: r.limits.map(limits).transpose()?,
            jwks: r.jwks.map(jwks),
            permessage_deflate: Some(r.permessage_deflate),
            ..ProjectChange::default()
        };
        let v = self
            .store
            .create(&caller, &r.project, keys, change)
            .await
            .map_err(status)?;
        Ok(reply(v))
    }

    async fn get_project(
        &self,
        req: Request<pb::ProjectRequest>,
    ) -> Result<Response<pb::ProjectReply>, Status> {
        let caller = self.caller(&req)?;
        let v = self
            .store
            .get(&caller, &req.into_inner().project)
            .await
            .map_err(status)?;
        Ok(reply(v))
    }

    async fn list_projects(
        &self,
        req: Request<pb::ListProjectsRequest>,
    ) -> Result<Response<pb::ListProjectsReply>, Status> {
        let caller = self.caller(&req)?;
        Ok(Response::new(pb::ListProjectsReply {
            projects: self
                .store
                .list(&caller)
                .await
                .into_iter()
                .map(project_pb)
                .collect(),
        }))
    }

    async fn update_project(
        &self,
        req: Request<pb::UpdateProjectRequest>,
    ) -> Result<Response<pb::ProjectReply>, Status> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        let (webhook, remove_webhook) = match r.webhook {
            Some(w) if w.url.is_empty() => (None, true),
            Some(w) => (Some(webhook(w)?), false),
            None => (None, false),
        };
        let change = ProjectChange {
            disabled: r.disabled,
            limits: r.limits.map(limits).transpose()?,
            jwks: r.jwks.map(jwks),
            presence_events: r.presence_events,
            webhook,
            remove_webhook,
            permessage_deflate: r.permessage_deflate,
        };
        let v = self
            .store
            .update(&caller, &r.project, change)
            .await
            .map_err(status)?;
        Ok(reply(v))
    }

    async fn delete_project(
        &self,
        req: Request<pb::ProjectRequest>,
    ) -> Result<Response<pb::DeleteProjectReply>, Status> {
        let caller = self.caller(&req)?;
        let project = req.into_inner().project;
        self.store.delete(&caller, &project).await.map_err(status)?;
        Ok(Response::new(pb::DeleteProjectReply {
            project,
            deleted: true,
        }))
    }

    async fn add_jwt_key(
        &self,
        req: Request<pb::AddJwtKeyRequest>,
    ) -> Result<Response<pb::ProjectReply>, Status> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        let key = key_config(r.key.ok_or_else(|| invalid("key", "required"))?)?;
        let v = self
            .store
            .add_jwt_key(&caller, &r.project, key)
            .await
            .map_err(status)?;
        Ok(reply(v))
    }

    async fn retire_jwt_key(
        &self,
        req: Request<pb::RetireJwtKeyRequest>,
    ) -> Result<Response<pb::ProjectReply>, Status> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        let v = self
            .store
            .retire_jwt_key(&caller, &r.project, &r.kid)
            .await
            .map_err(status)?;
        Ok(reply(v))
    }

    async fn create_api_key(
        &self,
        req: Request<pb::ProjectRequest>,
    ) -> Result<Response<pb::CreateApiKeyReply>, Status> {
        let caller = self.caller(&req)?;
        let k = self
            .store
            .create_api_key(&caller, &req.into_inner().project)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CreateApiKeyReply {
            project: k.project,
            id: k.id,
            key: k.key,
        }))
    }

    async fn delete_api_key(
        &self,
        req: Request<pb::DeleteApiKeyRequest>,
    ) -> Result<Response<pb::ProjectReply>, Status> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        let v = self
            .store
            .delete_api_key(&caller, &r.project, &r.id)
            .await
            .map_err(status)?;
        Ok(reply(v))
    }

    async fn ban_user(
        &self,
        req: Request<pb::BanUserRequest>,
    ) -> Result<Response<pb::BanReply>, Status> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        let ban = self
            .store
            .ban(&caller, &r.project, &r.user, r.duration_secs, &r.reason)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::BanReply {
            ban: Some(ban_pb(ban)),
        }))
    }

    async fn unban_user(
        &self,
        req: Request<pb::UnbanUserRequest>,
    ) -> Result<Response<pb::UnbanReply>, Status> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        self.store
            .unban(&caller, &r.project, &r.user)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::UnbanReply {
            project: r.project,
            user: r.user,
            lifted: true,
        }))
    }

    async fn list_bans(
        &self,
        req: Request<pb::ProjectRequest>,
    ) -> Result<Response<pb::ListBansReply>, Status> {
        let caller = self.caller(&req)?;
        let bans = self
            .store
            .bans(&caller, &req.into_inner().project)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListBansReply {
            bans: bans.into_iter().map(ban_pb).collect(),
        }))
    }

    async fn list_audit(
        &self,
        req: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditReply>, Status> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        let limit = match r.limit as usize {
            0 => MAX_AUDIT_PAGE,
            n => n.min(MAX_AUDIT_PAGE),
        };
        let project = (!r.project.is_empty()).then_some(r.project.as_str());
        let entries = self
            .store
            .audit(&caller, project, r.after, limit)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListAuditReply {
            entries: entries
                .into_iter()
                .map(|e| pb::AuditEntry {
                    seq: e.seq,
                    at_ms: e.at_ms,
                    actor: e.actor,
                    action: e.action,
                    project: e.project,
                    detail: e.detail,
                })
                .collect(),
        }))
    }
}
