//! The HTTP/JSON API beside gRPC (`router.http_listen`, docs/api.md "HTTP/JSON API",
//! docs/openapi.json): `POST` publish (one message or a batch), count, list, disconnect,
//! presence, and server-side subscribe and unsubscribe.
//!
//! Each call is a thin translation: the API key is read from the same `authorization` header by
//! the same code, the JSON body becomes the call's protobuf request, and the very service
//! function the gRPC call uses runs it. So validation, idempotency, error messages and
//! semantics are the gRPC API's; only the envelope differs: an error is an HTTP status (mapped
//! from its gRPC code by [`http_status`]) and a body `{"code": "INVALID_ARGUMENT", "message":
//! "<the gRPC message>"}`.

use std::collections::BTreeMap;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use futures_util::StreamExt as _;
use herald_core::proto::v1::{
    Broadcast, ConnectionInfo, CountConnectionsReply, CountConnectionsRequest, DisconnectReply,
    DisconnectRequest, ListConnectionsReply, ListConnectionsRequest, PresenceReply,
    PresenceRequest, PublishAck, PublishReply, PublishRequest, Resolution, SubscribeReply,
    SubscribeRequest, Target, disconnect_request, list_connections_request, subscribe_request,
    target,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use tonic::Code;
use tonic::metadata::MetadataMap;

use crate::error::ApiError;
use crate::keys::Scope;
use crate::service::{RouterService, ack};

/// Most messages in one batch.
pub const MAX_BATCH: usize = 1_000;
/// Largest body of a batch (unless one message's limit is larger).
const MAX_BATCH_BODY: usize = 16 << 20;
/// Largest body of a count, list or disconnect call.
const MAX_SMALL_BODY: usize = 64 << 10;

/// The HTTP status of a gRPC code (the mapping of `google.rpc.Code`).
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        // 499 "client closed request", as the mapping has it.
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The name of a gRPC code as `google.rpc.Code` spells it (`INVALID_ARGUMENT`).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A refused call: its HTTP status, gRPC code and message.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) status: StatusCode,
    pub(crate) code: Code,
    pub(crate) message: String,
}

impl Refusal {
    fn body_too_large(limit: usize) -> Self {
        Self {
            // The one status outside the mapping: HTTP has its own for this.
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: Code::OutOfRange,
            message: format!("body: larger than {limit} bytes"),
        }
    }
}

impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Self {
        Self {
            status: http_status(e.code()),
            code: e.code(),
            message: e.to_string(),
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'static str,
    message: &'a str,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            code: code_name(self.code),
            message: &self.message,
        };
        let mut r = json(self.status, &body);
        if self.code == Code::Unauthenticated {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

/// The response of a call, counted in `herald_router_http_requests_total`.
pub(crate) fn finish<T: Serialize>(call: &'static str, outcome: Result<T, Refusal>) -> Response {
    let r = match outcome {
        Ok(r) => json(StatusCode::OK, &r),
        Err(e) => e.into_response(),
    };
    metrics::counter!(
        "herald_router_http_requests_total",
        "call" => call,
        "status" => r.status().as_str().to_string()
    )
    .increment(1);
    r
}

fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            Bytes::from(bytes),
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "reply not encoded");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// The routes of the HTTP/JSON API, served by `service`.
pub fn app(service: RouterService) -> axum::Router {
    axum::Router::new()
        .route("/v1/publish", post(publish))
        .route("/v1/publish/batch", post(publish_batch))
        .route("/v1/connections/count", post(count))
        .route("/v1/connections/list", post(list))
        .route("/v1/connections/disconnect", post(disconnect))
        .route("/v1/presence", post(presence))
        .route("/v1/connections/subscribe", post(subscribe))
        .route("/v1/connections/unsubscribe", post(unsubscribe))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(service)
}

async fn not_found() -> Response {
    finish::<()>(
        "other",
        Err(Refusal {
            status: StatusCode::NOT_FOUND,
            code: Code::NotFound,
            message: "no such path".into(),
        }),
    )
}

async fn method_not_allowed() -> Response {
    finish::<()>(
        "other",
        Err(Refusal {
            status: StatusCode::METHOD_NOT_ALLOWED,
            code: Code::Unimplemented,
            message: "use POST".into(),
        }),
    )
}

/// Authenticates (first, as every gRPC call does), then reads and decodes the body: an empty
/// body is `{}`.
pub(crate) async fn prepare<T: DeserializeOwned>(
    service: &RouterService,
    headers: HeaderMap,
    body: Body,
    limit: usize,
) -> Result<(Scope, T), Refusal> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    // Run by the console: its session names the caller (crate::console).
    let scope = match crate::console::session_caller() {
        Some((scope, _)) => scope,
        None => service.authenticate_metadata(&MetadataMap::from_headers(headers))?,
    };
    // Refused before a byte is read when the declared length says so; a chunked body is cut
    // at the limit.
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(Refusal::body_too_large(limit));
    }
    let mut bytes = Vec::new();
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| ApiError::invalid("body", format_args!("not read: {e}")))?;
        if bytes.len() + chunk.len() > limit {
            return Err(Refusal::body_too_large(limit));
        }
        bytes.extend_from_slice(&chunk);
    }
    let bytes: &[u8] = match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        None => b"{}",
        // Serde would take an array for a struct: only an object is one.
        Some(b'{') => &bytes,
        Some(_) => return Err(ApiError::invalid("body", "not a JSON object").into()),
    };
    let request =
        serde_json::from_slice(bytes).map_err(|e| ApiError::invalid("body", e.to_string()))?;
    Ok((scope, request))
}

/// Any JSON value kept as written, `null` included (absent is `None`).
fn raw<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

/// The empty object of a broadcast target.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetJson {
    broadcast: Option<Empty>,
    group: Option<String>,
    user: Option<String>,
}

/// `PublishRequest` in JSON: the payload is `data` (any JSON value, sent as written) or `b64`
/// (base64 bytes).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishJson {
    #[serde(default)]
    project: String,
    target: Option<TargetJson>,
    #[serde(default, deserialize_with = "raw")]
    data: Option<Box<RawValue>>,
    b64: Option<String>,
    #[serde(default)]
    event: String,
    #[serde(default)]
    idempotency_key: String,
}

impl TryFrom<PublishJson> for PublishRequest {
    type Error = ApiError;

    fn try_from(p: PublishJson) -> Result<Self, ApiError> {
        let kind = match p.target {
            None => None,
            Some(t) => match (t.broadcast, t.group, t.user) {
                (None, None, None) => None,
                (Some(_), None, None) => Some(target::Kind::Broadcast(Broadcast {})),
                (None, Some(g), None) => Some(target::Kind::Group(g)),
                (None, None, Some(u)) => Some(target::Kind::User(u)),
                _ => {
                    return Err(ApiError::invalid(
                        "target",
                        "exactly one of broadcast, group or user",
                    ));
                }
            },
        };
        let payload = match (p.data, p.b64) {
            (Some(_), Some(_)) => return Err(ApiError::invalid("data", "data or b64, not both")),
            (Some(d), None) => d.get().as_bytes().to_vec(),
            (None, Some(b)) => base64::engine::general_purpose::STANDARD
                .decode(b.as_bytes())
                .map_err(|e| ApiError::invalid("b64", format_args!("not base64: {e}")))?,
            (None, None) => Vec::new(),
        };
        Ok(PublishRequest {
            project: p.project,
            target: kind.map(|kind| Target { kind: Some(kind) }),
            payload,
            event: p.event,
            idempotency_key: p.idempotency_key,
        })
    }
}

#[derive(Serialize)]
struct PublishReplyJson {
    message_id: String,
    resolution: &'static str,
    edges: u32,
    offset: u64,
    epoch: u32,
    fallback: bool,
}

impl From<PublishReply> for PublishReplyJson {
    fn from(r: PublishReply) -> Self {
        Self {
            resolution: Resolution::try_from(r.resolution)
                .unwrap_or(Resolution::Unspecified)
                .as_str_name(),
            message_id: r.message_id,
            edges: r.edges,
            offset: r.offset,
            epoch: r.epoch,
            fallback: r.fallback,
        }
    }
}

/// The body limit of one publish: a payload at the limit, in base64, and room for the rest.
fn publish_limit(service: &RouterService) -> usize {
    service.max_message_bytes() / 3 * 4 + 4
}

async fn publish(State(s): State<RouterService>, headers: HeaderMap, body: Body) -> Response {
    const CALL: &str = "publish";
    let limit = publish_limit(&s);
    let outcome = async {
        let (scope, p) = prepare::<PublishJson>(&s, headers, body, limit).await?;
        let reply = s.publish_one(&scope, p.try_into()?).await?;
        Ok::<_, Refusal>(PublishReplyJson::from(reply))
    };
    finish(CALL, outcome.await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchJson {
    messages: Vec<PublishJson>,
}

#[derive(Serialize)]
struct AckJson {
    request_id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply: Option<PublishReplyJson>,
    #[serde(skip_serializing_if = "is_zero")]
    error_code: i32,
    #[serde(skip_serializing_if = "String::is_empty")]
    error_message: String,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

impl From<PublishAck> for AckJson {
    fn from(a: PublishAck) -> Self {
        Self {
            request_id: a.request_id,
            reply: a.reply.map(Into::into),
            error_code: a.error_code,
            error_message: a.error_message,
        }
    }
}

#[derive(Serialize)]
struct BatchReplyJson {
    acks: Vec<AckJson>,
}

/// Publishes the messages in order, as a `PublishStream` would: each has its ack (`request_id`
/// = its index), a refused one does not stop the others.
async fn publish_batch(State(s): State<RouterService>, headers: HeaderMap, body: Body) -> Response {
    const CALL: &str = "publish_batch";
    let limit = publish_limit(&s).max(MAX_BATCH_BODY);
    let outcome = async {
        let (scope, batch) = prepare::<BatchJson>(&s, headers, body, limit).await?;
        if batch.messages.len() > MAX_BATCH {
            return Err(Refusal::from(ApiError::invalid(
                "messages",
                format_args!("more than {MAX_BATCH}"),
            )));
        }
        let mut acks = Vec::with_capacity(batch.messages.len());
        for (i, m) in batch.messages.into_iter().enumerate() {
            let outcome = match PublishRequest::try_from(m) {
                Ok(req) => s.publish_one(&scope, req).await,
                Err(e) => Err(e),
            };
            acks.push(AckJson::from(ack(i as u64, outcome)));
        }
        Ok(BatchReplyJson { acks })
    };
    finish(CALL, outcome.await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CountJson {
    #[serde(default)]
    project: String,
}

#[derive(Serialize)]
struct CountReplyJson {
    connections: BTreeMap<String, u64>,
    missing_edges: Vec<String>,
}

impl From<CountConnectionsReply> for CountReplyJson {
    fn from(r: CountConnectionsReply) -> Self {
        Self {
            connections: r.connections.into_iter().collect(),
            missing_edges: r.missing_edges,
        }
    }
}

async fn count(State(s): State<RouterService>, headers: HeaderMap, body: Body) -> Response {
    const CALL: &str = "count";
    let outcome = async {
        let (scope, c) = prepare::<CountJson>(&s, headers, body, MAX_SMALL_BODY).await?;
        let reply = s
            .count(&scope, CountConnectionsRequest { project: c.project })
            .await?;
        Ok::<_, Refusal>(CountReplyJson::from(reply))
    };
    finish(CALL, outcome.await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListJson {
    #[serde(default)]
    project: String,
    user: Option<String>,
    group: Option<String>,
    #[serde(default)]
    page_size: u32,
    #[serde(default)]
    page_token: String,
}

#[derive(Serialize)]
struct ConnectionJson {
    id: String,
    user: String,
    remote_addr: String,
    connected_since_unix_ms: i64,
    groups: Vec<String>,
    edge: String,
}

impl From<ConnectionInfo> for ConnectionJson {
    fn from(c: ConnectionInfo) -> Self {
        Self {
            id: c.id,
            user: c.user,
            remote_addr: c.remote_addr,
            connected_since_unix_ms: c.connected_since_unix_ms,
            groups: c.groups,
            edge: c.edge,
        }
    }
}

#[derive(Serialize)]
struct ListReplyJson {
    connections: Vec<ConnectionJson>,
    missing_edges: Vec<String>,
    next_page_token: String,
}

impl From<ListConnectionsReply> for ListReplyJson {
    fn from(r: ListConnectionsReply) -> Self {
        Self {
            connections: r.connections.into_iter().map(Into::into).collect(),
            missing_edges: r.missing_edges,
            next_page_token: r.next_page_token,
        }
    }
}

async fn list(State(s): State<RouterService>, headers: HeaderMap, body: Body) -> Response {
    const CALL: &str = "list";
    let outcome = async {
        let (scope, l) = prepare::<ListJson>(&s, headers, body, MAX_SMALL_BODY).await?;
        let of = match (l.user, l.group) {
            (Some(u), None) => Some(list_connections_request::Of::User(u)),
            (None, Some(g)) => Some(list_connections_request::Of::Group(g)),
            (None, None) => None,
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid("of", "a user or a group, not both").into());
            }
        };
        let reply = s
            .list(
                &scope,
                ListConnectionsRequest {
                    project: l.project,
                    of,
                    page_size: l.page_size,
                    page_token: l.page_token,
                },
            )
            .await?;
        Ok::<_, Refusal>(ListReplyJson::from(reply))
    };
    finish(CALL, outcome.await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PresenceJson {
    #[serde(default)]
    project: String,
    #[serde(default)]
    group: String,
    #[serde(default)]
    page_size: u32,
    #[serde(default)]
    page_token: String,
}

#[derive(Serialize)]
struct PresentUserJson {
    user: String,
    connections: u32,
}

#[derive(Serialize)]
struct PresenceReplyJson {
    users: Vec<PresentUserJson>,
    connections: u64,
    users_total: u64,
    users_exact: bool,
    missing_edges: Vec<String>,
    next_page_token: String,
}

impl From<PresenceReply> for PresenceReplyJson {
    fn from(r: PresenceReply) -> Self {
        Self {
            users: r
                .users
                .into_iter()
                .map(|u| PresentUserJson {
                    user: u.user,
                    connections: u.connections,
                })
                .collect(),
            connections: r.connections,
            users_total: r.users_total,
            users_exact: r.users_exact,
            missing_edges: r.missing_edges,
            next_page_token: r.next_page_token,
        }
    }
}

async fn presence(State(s): State<RouterService>, headers: HeaderMap, body: Body) -> Response {
    const CALL: &str = "presence";
    let outcome = async {
        let (scope, p) = prepare::<PresenceJson>(&s, headers, body, MAX_SMALL_BODY).await?;
        let reply = s
            .presence(
                &scope,
                PresenceRequest {
                    project: p.project,
                    group: p.group,
                    page_size: p.page_size,
                    page_token: p.page_token,
                },
            )
            .await?;
        Ok::<_, Refusal>(PresenceReplyJson::from(reply))
    };
    finish(CALL, outcome.await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectJson {
    #[serde(default)]
    project: String,
    connection_id: Option<String>,
    user: Option<String>,
    #[serde(default)]
    reconnect_after_ms: u32,
}

#[derive(Serialize)]
struct DisconnectReplyJson {
    disconnected: u32,
    missing_edges: Vec<String>,
}

impl From<DisconnectReply> for DisconnectReplyJson {
    fn from(r: DisconnectReply) -> Self {
        Self {
            disconnected: r.disconnected,
            missing_edges: r.missing_edges,
        }
    }
}

async fn disconnect(State(s): State<RouterService>, headers: HeaderMap, body: Body) -> Response {
    const CALL: &str = "disconnect";
    let outcome = async {
        let (scope, d) = prepare::<DisconnectJson>(&s, headers, body, MAX_SMALL_BODY).await?;
        let who = match (d.connection_id, d.user) {
            (Some(c), None) => Some(disconnect_request::Who::ConnectionId(c)),
            (None, Some(u)) => Some(disconnect_request::Who::User(u)),
            (None, None) => None,
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid("who", "a connection_id or a user, not both").into());
            }
        };
        let reply = s
            .kick(
                &scope,
                DisconnectRequest {
                    project: d.project,
                    who,
                    reconnect_after_ms: d.reconnect_after_ms,
                },
            )
            .await?;
        Ok::<_, Refusal>(DisconnectReplyJson::from(reply))
    };
    finish(CALL, outcome.await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscribeJson {
    #[serde(default)]
    project: String,
    connection_id: Option<String>,
    user: Option<String>,
    #[serde(default)]
    group: String,
}

#[derive(Serialize)]
struct SubscribeReplyJson {
    changed: u32,
    unchanged: u32,
    refused: u32,
    missing_edges: Vec<String>,
}

impl From<SubscribeReply> for SubscribeReplyJson {
    fn from(r: SubscribeReply) -> Self {
        Self {
            changed: r.changed,
            unchanged: r.unchanged,
            refused: r.refused,
            missing_edges: r.missing_edges,
        }
    }
}

/// Subscribes or unsubscribes a connection or a user's connections to a group.
async fn membership(
    s: RouterService,
    headers: HeaderMap,
    body: Body,
    subscribe: bool,
) -> Result<SubscribeReplyJson, Refusal> {
    let (scope, d) = prepare::<SubscribeJson>(&s, headers, body, MAX_SMALL_BODY).await?;
    let who = match (d.connection_id, d.user) {
        (Some(c), None) => Some(subscribe_request::Who::ConnectionId(c)),
        (None, Some(u)) => Some(subscribe_request::Who::User(u)),
        (None, None) => None,
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid("who", "a connection_id or a user, not both").into());
        }
    };
    let request = SubscribeRequest {
        project: d.project,
        who,
        group: d.group,
    };
    let reply = s.subscribe_by_server(&scope, request, subscribe).await?;
    Ok(SubscribeReplyJson::from(reply))
}

async fn subscribe(State(s): State<RouterService>, headers: HeaderMap, body: Body) -> Response {
    finish("subscribe", membership(s, headers, body, true).await)
}

async fn unsubscribe(State(s): State<RouterService>, headers: HeaderMap, body: Body) -> Response {
    finish("unsubscribe", membership(s, headers, body, false).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_maps_to_a_status_and_a_name() {
        let cases = [
            (Code::Ok, 200, "OK"),
            (Code::InvalidArgument, 400, "INVALID_ARGUMENT"),
            (Code::OutOfRange, 400, "OUT_OF_RANGE"),
            (Code::FailedPrecondition, 400, "FAILED_PRECONDITION"),
            (Code::Unauthenticated, 401, "UNAUTHENTICATED"),
            (Code::PermissionDenied, 403, "PERMISSION_DENIED"),
            (Code::NotFound, 404, "NOT_FOUND"),
            (Code::AlreadyExists, 409, "ALREADY_EXISTS"),
            (Code::Aborted, 409, "ABORTED"),
            (Code::ResourceExhausted, 429, "RESOURCE_EXHAUSTED"),
            (Code::Cancelled, 499, "CANCELLED"),
            (Code::Unimplemented, 501, "UNIMPLEMENTED"),
            (Code::Unavailable, 503, "UNAVAILABLE"),
            (Code::DeadlineExceeded, 504, "DEADLINE_EXCEEDED"),
            (Code::Internal, 500, "INTERNAL"),
            (Code::Unknown, 500, "UNKNOWN"),
            (Code::DataLoss, 500, "DATA_LOSS"),
        ];
        for (code, status, name) in cases {
            assert_eq!(
                (http_status(code).as_u16(), code_name(code)),
                (status, name)
            );
        }
    }

    fn publish_json(body: &str) -> Result<PublishRequest, String> {
        let p: PublishJson = serde_json::from_str(body).map_err(|e| e.to_string())?;
        PublishRequest::try_from(p).map_err(|e| e.to_string())
    }

    #[test]
    fn payloads_are_sent_as_written_or_decoded_from_base64() {
        let p =
            publish_json(r#"{"target":{"user":"u"},"data":{"b": 1, "a": [null]}}"#).expect("valid");
        assert_eq!(p.payload, br#"{"b": 1, "a": [null]}"#);
        let p = publish_json(r#"{"target":{"broadcast":{}},"data":null}"#).expect("valid");
        assert_eq!(p.payload, b"null");
        let p = publish_json(r#"{"target":{"group":"g"},"b64":"AP8="}"#).expect("valid");
        assert_eq!(p.payload, [0, 255]);
        assert_eq!(publish_json(r#"{}"#).expect("valid").payload, b"");
        assert_eq!(
            publish_json(r#"{"data":1,"b64":"AA=="}"#).expect_err("both"),
            "data: data or b64, not both"
        );
        assert!(
            publish_json(r#"{"b64":"%%"}"#)
                .expect_err("bad base64")
                .starts_with("b64: not base64: ")
        );
        assert_eq!(
            publish_json(r#"{"target":{"group":"g","user":"u"}}"#).expect_err("two targets"),
            "target: exactly one of broadcast, group or user"
        );
        assert!(publish_json(r#"{"payload":"x"}"#).is_err());
        assert!(publish_json(r#"{"target":{"broadcast":true}}"#).is_err());
    }
}
