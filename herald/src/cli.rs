//! The command line: `serve`, `dev`, and the operator commands that call a router over gRPC
//! (`admin` in [`crate::admin_cli`]).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Args as ClapArgs, Parser, Subcommand};
use herald_core::proto::channel::RouterAddr;
use herald_core::proto::v1::herald_client::HeraldClient;
use herald_core::proto::v1::{
    Broadcast, CountConnectionsRequest, DisconnectRequest, ListConnectionsRequest, PresenceRequest,
    PublishRequest, Resolution, SubscribeRequest, Target, disconnect_request,
    list_connections_request, subscribe_request, target,
};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

/// Herald: a push fabric for WebSocket clients.
#[derive(Debug, Parser)]
#[command(name = "herald", version, about)]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run Herald: a single node, or one node of a cluster (its edge, its router or both).
    ///
    /// Without `[cluster]` in the configuration, one process runs the edge and the router with
    /// the in-process registry and bus. With `[cluster]` (Redis and NATS) it is one node of a
    /// cluster, and `--role` (`cluster.role`) says whether it runs the edge, the router or both.
    Serve(ServeOpts),
    /// Run a single-node Herald with a development project, key and API key, and print how to
    /// connect and publish.
    Dev(ServeOpts),
    /// Publish one message.
    Publish(PublishOpts),
    /// Count connections per project.
    Count(CountOpts),
    /// List the connections of a user or a group.
    List(ListOpts),
    /// Disconnect a connection or every connection of a user.
    Disconnect(DisconnectOpts),
    /// Who is in a group, cluster-wide: its users and their connection counts, then the totals.
    Presence(PresenceOpts),
    /// Subscribe a connection, or every connection of a user, to a group (server-side).
    Subscribe(SubscribeOpts),
    /// Unsubscribe a connection, or every connection of a user, from a group.
    Unsubscribe(SubscribeOpts),
    /// Sign a development (HS256) client token.
    Token(TokenOpts),
    /// Manage projects, their token keys and API keys, origins and address lists, and read the
    /// audit log (the admin API, `herald.admin.v1`).
    Admin(crate::admin_cli::AdminOpts),
}

/// Options of `serve` and `dev`.
#[derive(Debug, ClapArgs, Default)]
pub struct ServeOpts {
    /// TOML configuration file. Settings are also read from `HERALD_<SECTION>__<FIELD>`
    /// variables (e.g. `HERALD_EDGE__PING_INTERVAL_SECS=10`), over the file.
    #[arg(long, short, env = "HERALD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Add a development project `demo` with fresh keys when none is configured.
    #[arg(long)]
    pub dev: bool,
    /// WebSocket listen address (`edge.listen`).
    #[arg(long)]
    pub ws_listen: Option<SocketAddr>,
    /// gRPC listen address (`router.listen`).
    #[arg(long)]
    pub grpc_listen: Option<SocketAddr>,
    /// HTTP/JSON API listen address (`router.http_listen`; off unless set).
    #[arg(long)]
    pub http_listen: Option<SocketAddr>,
    /// Admin HTTP listen address (`admin.listen`).
    #[arg(long)]
    pub admin_listen: Option<SocketAddr>,
    /// What this process runs in a cluster (`cluster.role`): the edge, the router or both.
    #[arg(long, value_enum)]
    pub role: Option<crate::config::Role>,
}

/// How to reach a router.
#[derive(Debug, ClapArgs)]
pub struct Conn {
    /// The router's gRPC address: `http://` plaintext, `https://` over TLS (with `--ca-file`).
    #[arg(long, env = "HERALD_ROUTER", default_value = "http://127.0.0.1:50051")]
    pub router: String,
    /// PEM CA certificates that signed an `https://` router's certificate.
    #[arg(long, env = "HERALD_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for a router that requires one (`router.tls_client_ca`).
    #[arg(long, env = "HERALD_CLIENT_CERT", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `--client-cert`.
    #[arg(long, env = "HERALD_CLIENT_KEY", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// The name the router's certificate must carry, when not the address's host.
    #[arg(long, env = "HERALD_TLS_SERVER_NAME")]
    pub tls_server_name: Option<String>,
    /// An API key of the project, or an admin key.
    #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
    pub api_key: String,
}

/// Options of `publish`.
#[derive(Debug, ClapArgs)]
pub struct PublishOpts {
    #[command(flatten)]
    conn: Conn,
    /// Project id.
    #[arg(long, short)]
    project: String,
    /// Send to every connection of the project.
    #[arg(long, conflicts_with_all = ["group", "user"])]
    broadcast: bool,
    /// Send to the members of a group.
    #[arg(long, conflicts_with = "user")]
    group: Option<String>,
    /// Send to every device of a user.
    #[arg(long)]
    user: Option<String>,
    /// Event name passed to clients.
    #[arg(long, default_value = "")]
    event: String,
    /// Idempotency key: a repeat within the window is not delivered again.
    #[arg(long, default_value = "")]
    idempotency_key: String,
    /// The payload (JSON travels as is, anything else base64).
    data: String,
}

/// Options of `count`.
#[derive(Debug, ClapArgs)]
pub struct CountOpts {
    #[command(flatten)]
    conn: Conn,
    /// Project id (default: every project the key may see).
    #[arg(long, short, default_value = "")]
    project: String,
}

/// Options of `presence`.
#[derive(Debug, ClapArgs)]
pub struct PresenceOpts {
    #[command(flatten)]
    conn: Conn,
    /// Project id.
    #[arg(long, short)]
    project: String,
    /// The group.
    #[arg(long, short)]
    group: String,
    /// Users asked per call (0: the router's default, 1,000; at most 5,000).
    #[arg(long, default_value_t = 0)]
    page_size: u32,
    /// Fetch only the page at this token (a `next_page_token`; empty for the first page) and
    /// print the next page's token on stderr; without it, every page is fetched.
    #[arg(long)]
    page_token: Option<String>,
}

/// Options of `list`.
#[derive(Debug, ClapArgs)]
pub struct ListOpts {
    #[command(flatten)]
    conn: Conn,
    /// Project id.
    #[arg(long, short)]
    project: String,
    /// The user whose connections to list.
    #[arg(long, conflicts_with = "group", required_unless_present = "group")]
    user: Option<String>,
    /// The group whose connections to list.
    #[arg(long)]
    group: Option<String>,
    /// Connections asked per call (0: the router's default, 1,000; at most 5,000).
    #[arg(long, default_value_t = 0)]
    page_size: u32,
    /// Fetch only the page at this token (a `next_page_token`; empty for the first page) and
    /// print the next page's token on stderr; without it, every page is fetched.
    #[arg(long)]
    page_token: Option<String>,
}

/// Options of `disconnect`.
#[derive(Debug, ClapArgs)]
pub struct DisconnectOpts {
    #[command(flatten)]
    conn: Conn,
    /// Project id.
    #[arg(long, short)]
    project: String,
    /// Every connection of this user.
    #[arg(
        long,
        conflicts_with = "connection",
        required_unless_present = "connection"
    )]
    user: Option<String>,
    /// One connection, by id.
    #[arg(long)]
    connection: Option<String>,
    /// Ask clients not to reconnect before this many milliseconds.
    #[arg(long, default_value_t = 0)]
    reconnect_after_ms: u32,
}

/// Options of `subscribe` and `unsubscribe`.
#[derive(Debug, ClapArgs)]
pub struct SubscribeOpts {
    #[command(flatten)]
    conn: Conn,
    /// Project id.
    #[arg(long, short)]
    project: String,
    /// Every connection of this user.
    #[arg(
        long,
        conflicts_with = "connection",
        required_unless_present = "connection"
    )]
    user: Option<String>,
    /// One connection, by id.
    #[arg(long)]
    connection: Option<String>,
    /// The group.
    #[arg(long, short)]
    group: String,
}

/// Options of `token`.
#[derive(Debug, ClapArgs)]
pub struct TokenOpts {
    /// The project's HS256 secret.
    #[arg(long, env = "HERALD_TOKEN_SECRET", hide_env_values = true)]
    secret: String,
    /// The project (the token's `aud`).
    #[arg(long, short)]
    project: String,
    /// The user id (`sub`).
    #[arg(long)]
    sub: String,
    /// Groups joined at connect (comma-separated).
    #[arg(long, value_delimiter = ',')]
    groups: Vec<String>,
    /// Group patterns the client may subscribe to itself (comma-separated, `prefix*` allowed).
    #[arg(long, value_delimiter = ',')]
    channels: Vec<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
    /// Key id to put in the header.
    #[arg(long)]
    kid: Option<String>,
}

type Client = HeraldClient<tonic::service::interceptor::InterceptedService<Channel, Auth>>;

/// Adds `authorization: Bearer <key>` to every call.
#[derive(Clone)]
pub struct Auth(MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

/// A channel to the router (plaintext, or TLS as `conn` says) and the interceptor that sends
/// the API key.
pub(crate) async fn connect_channel(conn: &Conn) -> anyhow::Result<(Channel, Auth)> {
    let addr = RouterAddr {
        url: conn.router.clone(),
        ca_file: conn.ca_file.clone(),
        cert_file: conn.client_cert.clone(),
        key_file: conn.client_key.clone(),
        server_name: conn.tls_server_name.clone(),
    };
    let channel = addr
        .connect()
        .await
        .with_context(|| format!("cannot reach the router at {}", conn.router))?;
    let value = format!("Bearer {}", conn.api_key)
        .parse()
        .context("the API key holds characters not allowed in metadata")?;
    Ok((channel, Auth(value)))
}

async fn connect(conn: &Conn) -> anyhow::Result<Client> {
    let (channel, auth) = connect_channel(conn).await?;
    Ok(HeraldClient::with_interceptor(channel, auth))
}

/// A refused call as the command's error: its code and message.
pub(crate) fn status(e: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", e.code(), e.message())
}

/// Runs an operator command.
pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(_) | Command::Dev(_) => unreachable!("handled by main"),
        Command::Admin(o) => crate::admin_cli::run(o).await?,
        Command::Token(o) => {
            let now = jsonwebtoken::get_current_timestamp();
            let claims = serde_json::json!({
                "sub": o.sub, "aud": o.project, "iat": now, "exp": now + o.ttl,
                "groups": o.groups, "channels": o.channels,
            });
            let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
            header.kid = o.kid;
            let token = jsonwebtoken::encode(
                &header,
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(o.secret.as_bytes()),
            )?;
            println!("{token}");
        }
        Command::Publish(o) => {
            let kind = match (o.broadcast, o.group, o.user) {
                (true, None, None) => target::Kind::Broadcast(Broadcast {}),
                (false, Some(g), None) => target::Kind::Group(g),
                (false, None, Some(u)) => target::Kind::User(u),
                _ => bail!("give exactly one of --broadcast, --group, --user"),
            };
            let mut client = connect(&o.conn).await?;
            let reply = client
                .publish(PublishRequest {
                    project: o.project,
                    target: Some(Target { kind: Some(kind) }),
                    payload: o.data.into_bytes(),
                    event: o.event,
                    idempotency_key: o.idempotency_key,
                })
                .await
                .map_err(status)?
                .into_inner();
            let resolution =
                Resolution::try_from(reply.resolution).map_or("unknown", |r| r.as_str_name());
            println!(
                "message {} {} (edges: {})",
                reply.message_id, resolution, reply.edges
            );
        }
        Command::Count(o) => {
            let mut client = connect(&o.conn).await?;
            let reply = client
                .count_connections(CountConnectionsRequest { project: o.project })
                .await
                .map_err(status)?
                .into_inner();
            let mut rows: Vec<_> = reply.connections.into_iter().collect();
            rows.sort();
            for (p, n) in rows {
                println!("{p}\t{n}");
            }
            warn_missing(&reply.missing_edges);
        }
        Command::List(o) => {
            let of = match (o.user, o.group) {
                (Some(u), _) => list_connections_request::Of::User(u),
                (None, Some(g)) => list_connections_request::Of::Group(g),
                (None, None) => bail!("give --user or --group"),
            };
            let mut client = connect(&o.conn).await?;
            let one_page = o.page_token.is_some();
            let mut page_token = o.page_token.unwrap_or_default();
            let mut missing = std::collections::BTreeSet::new();
            println!("id\tuser\tremote\tsince_unix_ms\tgroups");
            loop {
                let reply = client
                    .list_connections(ListConnectionsRequest {
                        project: o.project.clone(),
                        of: Some(of.clone()),
                        page_size: o.page_size,
                        page_token,
                    })
                    .await
                    .map_err(status)?
                    .into_inner();
                for c in reply.connections {
                    println!(
                        "{}\t{}\t{}\t{}\t{}",
                        c.id,
                        c.user,
                        c.remote_addr,
                        c.connected_since_unix_ms,
                        c.groups.join(",")
                    );
                }
                missing.extend(reply.missing_edges);
                page_token = reply.next_page_token;
                if page_token.is_empty() {
                    break;
                }
                if one_page {
                    eprintln!("next page: --page-token {page_token}");
                    break;
                }
            }
            warn_missing(&missing.into_iter().collect::<Vec<_>>());
        }
        Command::Presence(o) => {
            let mut client = connect(&o.conn).await?;
            let one_page = o.page_token.is_some();
            let mut page_token = o.page_token.unwrap_or_default();
            let mut missing = std::collections::BTreeSet::new();
            let mut users = 0u64;
            println!("user\tconnections");
            let last = loop {
                let reply = client
                    .presence(PresenceRequest {
                        project: o.project.clone(),
                        group: o.group.clone(),
                        page_size: o.page_size,
                        page_token,
                    })
                    .await
                    .map_err(status)?
                    .into_inner();
                for u in &reply.users {
                    println!("{}\t{}", u.user, u.connections);
                }
                users += reply.users.len() as u64;
                missing.extend(reply.missing_edges.iter().cloned());
                page_token = reply.next_page_token.clone();
                if page_token.is_empty() {
                    break reply;
                }
                if one_page {
                    eprintln!("next page: --page-token {page_token}");
                    break reply;
                }
            };
            // Every page seen: each user was named once, so the count is exact.
            let (users, exact) = if one_page {
                (last.users_total, last.users_exact)
            } else {
                (users, true)
            };
            let connections = last.connections;
            let about = if exact { "" } else { "at most " };
            println!("total\t{about}{users} users, {connections} connections");
            warn_missing(&missing.into_iter().collect::<Vec<_>>());
        }
        Command::Disconnect(o) => {
            let who = match (o.user, o.connection) {
                (Some(u), _) => disconnect_request::Who::User(u),
                (None, Some(c)) => disconnect_request::Who::ConnectionId(c),
                (None, None) => bail!("give --user or --connection"),
            };
            let mut client = connect(&o.conn).await?;
            let reply = client
                .disconnect(DisconnectRequest {
                    project: o.project,
                    who: Some(who),
                    reconnect_after_ms: o.reconnect_after_ms,
                })
                .await
                .map_err(status)?
                .into_inner();
            println!("disconnected {}", reply.disconnected);
            warn_missing(&reply.missing_edges);
        }
        Command::Subscribe(o) => membership(o, true).await?,
        Command::Unsubscribe(o) => membership(o, false).await?,
    }
    Ok(())
}

/// `subscribe` (or `unsubscribe`): a connection or a user's connections to a group.
async fn membership(o: SubscribeOpts, subscribe: bool) -> anyhow::Result<()> {
    let who = match (o.user, o.connection) {
        (Some(u), _) => subscribe_request::Who::User(u),
        (None, Some(c)) => subscribe_request::Who::ConnectionId(c),
        (None, None) => bail!("give --user or --connection"),
    };
    let mut client = connect(&o.conn).await?;
    let request = SubscribeRequest {
        project: o.project,
        who: Some(who),
        group: o.group,
    };
    let reply = if subscribe {
        client.subscribe(request).await
    } else {
        client.unsubscribe(request).await
    }
    .map_err(status)?
    .into_inner();
    println!(
        "changed {} unchanged {} refused {}",
        reply.changed, reply.unchanged, reply.refused
    );
    warn_missing(&reply.missing_edges);
    Ok(())
}

fn warn_missing(edges: &[String]) {
    if !edges.is_empty() {
        eprintln!(
            "warning: these edges did not answer in time: {}",
            edges.join(", ")
        );
    }
}
