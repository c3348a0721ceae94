//! `herald serve`: edge, router and admin endpoint in one process with the in-process registry
//! and bus (embedded, the default), or one node of a cluster over Redis and NATS running the
//! edge, the router or both (`[cluster]`, `--role`); signals for reload (SIGHUP) and graceful
//! shutdown (SIGTERM, SIGINT).

use herald_core::history::{History, MemoryHistory};
use herald_core::sessions::{MemorySessions, Sessions};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use herald_cluster::{NatsBus, NatsConfig, RedisConfig, RedisHistory, RedisRegistry};
use herald_core::bus::{Bus, MemoryBus};
use herald_core::projects::{KeyAlgorithm, KeyConfig, ProjectConfig};
use herald_core::registry::Registry;
use herald_edge::jwks::JwksSources;
use herald_edge::{AuthKeys, Edge};
use herald_router::admin::ProjectStore;
use herald_router::{ApiKeys, Router};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminState};
use crate::cli::ServeOpts;
use crate::config::{self, Config, ConfigErrors, Overrides};
use crate::state::EdgeApply;

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

fn dev_project() -> ProjectConfig {
    ProjectConfig {
        id: "demo".into(),
        api_keys: vec![format!("dev-{}", random_hex(16))],
        limits: Default::default(),
        keys: vec![KeyConfig {
            kid: Some("dev".into()),
            alg: KeyAlgorithm::HS256,
            secret: Some(random_hex(32)),
            public_key_file: None,
            public_key_pem: None,
        }],
        client_certificates: None,
        history: None,
        permessage_deflate: false,
        jwks: None,
        presence_events: false,
        webhook: None,
    }
}

/// Loads the keys of both halves (JWK Sets from `jwks`); every problem is reported.
fn load_keys(cfg: &Config, jwks: &JwksSources) -> Result<(AuthKeys, ApiKeys), ConfigErrors> {
    let auth = AuthKeys::load_with(&cfg.projects, cfg.edge.token_leeway_secs, jwks)
        .map_err(ConfigErrors)?;
    let api = ApiKeys::new(&cfg.projects, &cfg.router.admin_api_keys);
    Ok((auth, api))
}

/// Runs a node (embedded, or one node of a cluster) until SIGTERM or SIGINT.
pub async fn run(opts: ServeOpts) -> anyhow::Result<()> {
    let file = opts.config.clone();
    let overrides = Overrides {
        ws_listen: opts.ws_listen,
        grpc_listen: opts.grpc_listen,
        http_listen: opts.http_listen,
        admin_listen: opts.admin_listen,
        role: opts.role,
    };
    let mut cfg = config::load(file.as_deref(), &overrides)?;
    if opts.dev && cfg.projects.is_empty() {
        cfg.projects.push(dev_project());
    }
    crate::logs::init(&cfg.log);
    for name in config::foreign_env_vars() {
        tracing::warn!(
            variable = %name,
            "not a setting (HERALD_<SECTION>__<FIELD>) nor the CLI's: ignored"
        );
    }
    // The process's one crypto provider (aws-lc-rs), installed before anything uses rustls.
    herald_edge::tls::provider();
    let metrics = crate::telemetry::install_metrics()?;
    let node = if cfg.cluster.role.edge() {
        cfg.edge.id.clone()
    } else {
        "router".to_string()
    };
    let tracing_export = crate::telemetry::install_tracing(&cfg.telemetry, &node)?;
    // JWK Sets are fetched where an edge verifies tokens; a router-only node checks settings.
    let jwks = Arc::new(JwksSources::new(
        !cfg.cluster.clustered() || cfg.cluster.role.edge(),
    ));
    let (auth, api) = load_keys(&cfg, &jwks)?;
    let auth = Arc::new(ArcSwap::from_pointee(auth));
    let api = Arc::new(ArcSwap::from_pointee(api));

    let mut nodes = build_nodes(&cfg, &auth, &api).await?;
    // The file's projects and the admin API's (from `router.state_dir`), installed together.
    let (store, apply) =
        crate::state::open(&cfg, auth, jwks, api.clone(), nodes.edge.as_ref()).await?;
    tokio::spawn(crate::state::follow(store.clone(), cfg.cluster.clustered()));
    nodes.router = nodes.router.map(|r| r.with_admin(api, store.clone()));
    let admin_listener = tokio::net::TcpListener::bind(cfg.admin.listen)
        .await
        .with_context(|| format!("cannot listen on {} (admin.listen)", cfg.admin.listen))?;

    let ws = nodes.edge.as_ref().map(Edge::local_addr).transpose()?;
    let listeners = nodes.edge.as_ref().map(Edge::local_addrs).transpose()?;
    let grpc = nodes.router.as_ref().map(Router::local_addr).transpose()?;
    let http = match &nodes.router {
        Some(r) => r.http_addr()?,
        None => None,
    };
    let admin_addr = admin_listener.local_addr()?;
    // One machine-readable line for scripts and tests, then the human guide in dev mode.
    let mut line = String::from("herald ready");
    if let Some(ws) = ws {
        line.push_str(&format!(" ws={ws}"));
    }
    if let Some(l) = &listeners {
        let l: Vec<String> = l.iter().map(ToString::to_string).collect();
        line.push_str(&format!(" listeners={}", l.join(",")));
    }
    if let Some(grpc) = grpc {
        line.push_str(&format!(" grpc={grpc}"));
    }
    if let Some(http) = http {
        line.push_str(&format!(" http={http}"));
    }
    println!("{line} admin={admin_addr}");
    let listeners = listeners.map(|l| {
        let l: Vec<String> = l.iter().map(ToString::to_string).collect();
        l.join(",")
    });
    tracing::info!(
        ws = ws.map(tracing::field::display),
        listeners = listeners.as_deref().map(tracing::field::display),
        grpc = grpc.map(tracing::field::display),
        http = http.map(tracing::field::display),
        admin = %admin_addr,
        role = %cfg.cluster.role.as_str(),
        clustered = cfg.cluster.clustered(),
        projects = cfg.projects.len(),
        "herald ready"
    );
    if opts.dev
        && let (Some(ws), Some(grpc)) = (ws, grpc)
    {
        print_dev_guide(&cfg, ws, grpc, http);
    }

    let cancel = CancellationToken::new();
    if let Some(tls) = nodes.edge.as_ref().map(Edge::tls_reload) {
        tokio::spawn(reload_tls_on_hup(tls));
    }
    let ready = Arc::new(AtomicBool::new(true));
    tokio::spawn(signals(
        cancel.clone(),
        ready.clone(),
        file,
        overrides,
        store,
        apply,
    ));

    // The admin endpoint outlives the drain, so probes see `/readyz` answer 503 "draining".
    let admin_stop = CancellationToken::new();
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        AdminState {
            ready,
            metrics,
            registry: nodes.registry.clone(),
            bus: nodes.bus.clone(),
            history: nodes.history.clone(),
        },
        admin_stop.clone(),
    ));
    let probe_task = tokio::spawn(probe_history(nodes.history.clone()));
    let router_task = nodes.router.map(|r| tokio::spawn(r.run(cancel.clone())));
    let grace = Duration::from_secs(cfg.admin.shutdown_grace_secs);
    match nodes.edge {
        Some(edge) => edge.run(cancel.clone(), grace).await,
        None => cancel.cancelled().await,
    }
    if let Some(t) = router_task {
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }
    admin_stop.cancel();
    probe_task.abort();
    let _ = tokio::time::timeout(Duration::from_secs(1), admin_task).await;
    tracing_export.shutdown().await;
    tracing::info!("herald stopped");
    Ok(())
}

/// What this process runs, bound and ready.
struct Nodes {
    edge: Option<Edge>,
    router: Option<Router>,
    registry: Arc<dyn Registry>,
    bus: Arc<dyn Bus>,
    history: Arc<dyn History>,
}

/// How often the history store is probed for readiness.
const HISTORY_PROBE: Duration = Duration::from_secs(2);

/// Probes the history store every [`HISTORY_PROBE`], so `/readyz` says it is degraded (or back)
/// even on a node that neither publishes nor reads history meanwhile.
async fn probe_history(history: Arc<dyn History>) {
    let mut tick = tokio::time::interval(HISTORY_PROBE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = history.probe().await {
            tracing::debug!(error = %e, "history probe failed");
        }
    }
}

/// Builds the registry and bus the configuration names, then the edge and the router its role
/// asks for.
async fn build_nodes(
    cfg: &Config,
    auth: &Arc<ArcSwap<AuthKeys>>,
    api: &Arc<ArcSwap<ApiKeys>>,
) -> anyhow::Result<Nodes> {
    if !cfg.cluster.clustered() {
        // One edge in this process: its hub answers the router's lookups, nothing is kept twice.
        let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());
        // History lives as long as this process: a restart is a new epoch for every stream.
        let history: Arc<dyn History> = Arc::new(MemoryHistory::new());
        // Sessions (devices' and MQTT clients' acknowledged positions) likewise.
        let sessions: Arc<dyn Sessions> = Arc::new(MemorySessions::new());
        let edge = Edge::bind_single(
            cfg.edge.clone(),
            auth.clone(),
            bus.clone(),
            history.clone(),
            sessions,
        )
        .await?;
        let registry = edge.registry();
        let router = Router::bind(
            cfg.router.clone(),
            api.clone(),
            registry.clone(),
            bus.clone(),
            history.clone(),
        )
        .await?;
        return Ok(Nodes {
            edge: Some(edge),
            router: Some(router),
            registry,
            bus,
            history,
        });
    }
    let c = &cfg.cluster;
    let role = c.role;
    // History in Redis: the registry's, or one of its own (`history_redis_urls`).
    let (history_urls, history_cluster) = if c.history_redis_urls.is_empty() {
        (c.redis_urls.clone(), c.redis_cluster)
    } else {
        (c.history_redis_urls.clone(), c.history_redis_cluster)
    };
    let redis_history = RedisHistory::new(&RedisConfig {
        urls: history_urls,
        cluster: history_cluster,
        key_prefix: c.prefix.clone(),
        edge_ttl: Duration::from_secs(c.edge_ttl_secs),
        timeout: Duration::from_millis(c.redis_timeout_ms),
    })?;
    // Sessions beside the streams their positions point into, on the same connection.
    let sessions: Arc<dyn Sessions> = Arc::new(redis_history.clone());
    let history: Arc<dyn History> = Arc::new(redis_history);
    let registry: Arc<dyn Registry> = Arc::new(RedisRegistry::new(&RedisConfig {
        urls: c.redis_urls.clone(),
        cluster: c.redis_cluster,
        key_prefix: c.prefix.clone(),
        edge_ttl: Duration::from_secs(c.edge_ttl_secs),
        timeout: Duration::from_millis(c.redis_timeout_ms),
    })?);
    let name = if role.edge() {
        cfg.edge.id.clone()
    } else {
        "router".to_string()
    };
    let bus: Arc<dyn Bus> = Arc::new(
        NatsBus::connect(&NatsConfig {
            urls: c.nats_urls.clone(),
            subject_prefix: c.prefix.clone(),
            name,
            ..NatsConfig::default()
        })
        .await?,
    );
    let edge = if role.edge() {
        Some(
            Edge::bind(
                cfg.edge.clone(),
                auth.clone(),
                registry.clone(),
                bus.clone(),
                history.clone(),
                sessions,
            )
            .await?,
        )
    } else {
        None
    };
    if !role.edge() {
        // A router cleans up dead edges too: their members' leaves are announced from here.
        let keys = auth.clone();
        let enabled: herald_core::presence::PresenceEnabled =
            Arc::new(move |p: &str| keys.load().presence_events(p));
        let webhooks = herald_edge::webhook::Webhooks::new(auth.clone(), "router");
        let tap: herald_core::presence::PresenceTap =
            Arc::new(move |e: &herald_core::presence::PresenceEvent| webhooks.presence(e));
        registry.set_presence_sink(herald_core::presence::Announcer::start(
            registry.clone(),
            bus.clone(),
            enabled,
            Some(tap),
        ));
    }
    let router = if role.router() {
        Some(
            Router::bind(
                cfg.router.clone(),
                api.clone(),
                registry.clone(),
                bus.clone(),
                history.clone(),
            )
            .await?,
        )
    } else {
        None
    };
    Ok(Nodes {
        edge,
        router,
        registry,
        bus,
        history,
    })
}

async fn signals(
    cancel: CancellationToken,
    ready: Arc<AtomicBool>,
    file: Option<PathBuf>,
    overrides: Overrides,
    store: Arc<ProjectStore>,
    apply: Arc<EdgeApply>,
) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => reload(file.as_deref(), &overrides, &store, &apply).await,
        }
    }
    // Stop first, log after: a closed stderr must not keep the process from shutting down.
    ready.store(false, Ordering::Relaxed);
    cancel.cancel();
    tracing::info!("shutting down");
    Ok(())
}

/// SIGHUP also reloads the TLS listeners' certificates (each listener logs its outcome).
async fn reload_tls_on_hup(tls: herald_edge::TlsReload) -> std::io::Result<()> {
    let mut hup = signal(SignalKind::hangup())?;
    while hup.recv().await.is_some() {
        tls.reload();
    }
    Ok(())
}

/// Re-reads projects and keys, and the defences' lists and limits; a bad file is reported and
/// the running ones stay. Projects created through the admin API stay as they are.
async fn reload(
    file: Option<&std::path::Path>,
    overrides: &Overrides,
    store: &ProjectStore,
    apply: &EdgeApply,
) {
    let Some(path) = file else {
        tracing::warn!("SIGHUP: no config file to reload");
        return;
    };
    let loaded = match config::load(Some(path), overrides) {
        Ok(cfg) => crate::state::reload(store, apply, &cfg).await.map(|()| cfg),
        Err(e) => Err(e),
    };
    match loaded {
        Ok(cfg) => {
            tracing::info!(projects = cfg.projects.len(), "reloaded projects and keys");
            println!("herald reloaded projects={}", cfg.projects.len());
        }
        Err(e) => tracing::error!(error = %e, "reload refused; keeping the running keys"),
    }
}

fn print_dev_guide(
    cfg: &Config,
    ws: std::net::SocketAddr,
    grpc: std::net::SocketAddr,
    http: Option<std::net::SocketAddr>,
) {
    let Some(p) = cfg.projects.first() else {
        return;
    };
    let secret = p
        .keys
        .first()
        .and_then(|k| k.secret.clone())
        .unwrap_or_default();
    let api_key = p.api_keys.first().cloned().unwrap_or_default();
    let now = jsonwebtoken::get_current_timestamp();
    let claims = serde_json::json!({
        "sub": "alice", "aud": p.id, "exp": now + 86_400, "groups": ["news"], "channels": ["*"],
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("dev".into());
    let token = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap_or_default();
    let host = if ws.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        ws.ip().to_string()
    };
    let grpc_host = if grpc.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        grpc.ip().to_string()
    };
    println!(
        r#"
Development project "{project}" (keys are new at every start; do not use in production).

Connect a WebSocket client as user "alice" (in group "news"), e.g. with websocat:
  websocat 'ws://{host}:{port}/ws/{project}?token={token}'

Publish with the CLI (another terminal):
  export HERALD_ROUTER=http://{grpc_host}:{grpc_port} HERALD_API_KEY={api_key}
  {herald} publish -p {project} --broadcast '{{"hello":"everyone"}}'
  {herald} publish -p {project} --group news '{{"headline":"hi"}}'
  {herald} publish -p {project} --user alice '{{"note":"just for you"}}'
  {herald} list -p {project} --user alice

Tokens for other users:
  {herald} token --secret {secret} --kid dev -p {project} --sub bob --groups news
"#,
        project = p.id,
        herald = own_command(),
        port = ws.port(),
        grpc_port = grpc.port(),
    );
    if let Some(http) = http {
        let http_host = if http.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            http.ip().to_string()
        };
        println!(
            r#"Or over HTTP/JSON:
  curl -sS http://{http_host}:{http_port}/v1/publish -H 'authorization: Bearer {api_key}' \
    -d '{{"project":"{project}","target":{{"user":"alice"}},"data":{{"note":"over HTTP"}}}}'
"#,
            project = p.id,
            http_port = http.port(),
        );
    }
}

/// How to run this very binary again from a shell: its path, quoted when it needs quotes.
fn own_command() -> String {
    let path = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "herald".into());
    let plain = path
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+:@%,".contains(c));
    if plain {
        path
    } else {
        format!("'{}'", path.replace('\'', r"'\''"))
    }
}
