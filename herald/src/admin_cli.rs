//! `herald admin ...`: the admin API (`herald.admin.v1.Admin`, docs/api.md "Admin API") from the
//! command line: projects, their token keys and API keys, origins, address lists and caps, and
//! the audit log. Each subcommand is one gRPC call (an update of some limits reads the project
//! first and sends its limits back with those changed), so what the API refuses is refused here
//! with the API's message, and every change is in the audit log under the key used.

use anyhow::{Context as _, bail};
use clap::{Args as ClapArgs, Subcommand};
use herald_core::proto::admin as pb;
use herald_core::proto::admin::admin_client::AdminClient;
use tonic::transport::Channel;

use crate::cli::{Auth, Conn, connect_channel, status};

/// `herald admin`: what to manage.
#[derive(Debug, ClapArgs)]
pub struct AdminOpts {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    what: What,
}

/// The admin subcommands.
#[derive(Debug, Subcommand)]
enum What {
    /// Projects: list, show, create, update, disable, enable, delete.
    #[command(subcommand)]
    Projects(Projects),
    /// Token keys of a project: add one, retire one (rotation: add the new, then retire the old
    /// once its tokens have expired).
    #[command(subcommand)]
    Keys(Keys),
    /// API keys of a project: create one (shown once), revoke one.
    #[command(name = "api-keys", subcommand)]
    ApiKeys(ApiKeys),
    /// The audit log: who changed what, when (oldest first).
    Audit(AuditOpts),
    /// Bans of a project's users: add one (for a time or until lifted), lift one, list them.
    #[command(subcommand)]
    Bans(Bans),
}

#[derive(Debug, Subcommand)]
enum Bans {
    /// Ban a user: its connections close (4014) on every edge, it cannot connect until the ban
    /// ends or is lifted.
    Add {
        /// Project id.
        project: String,
        /// The user to ban.
        #[arg(long)]
        user: String,
        /// How long, in seconds; 0: until lifted.
        #[arg(long, default_value_t = 0)]
        duration_secs: u64,
        /// Why (kept with the ban and in the audit log).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Lift a user's ban.
    Lift {
        /// Project id.
        project: String,
        /// The user whose ban to lift.
        #[arg(long)]
        user: String,
    },
    /// The bans in force: user, until when (Unix ms, or `until-lifted`), reason.
    List {
        /// Project id.
        project: String,
    },
}

/// Prints a ban: `user<TAB>until (Unix ms, or until-lifted)<TAB>reason`.
fn print_ban(b: &pb::Ban) {
    let until = match b.until_ms {
        0 => "until-lifted".to_string(),
        t => t.to_string(),
    };
    println!("{}\t{until}\t{}", b.user, b.reason);
}

#[derive(Debug, Subcommand)]
enum Projects {
    /// Every project the key may see: id, source, state, token keys, API keys.
    List,
    /// One project in full (no secret is ever shown).
    Get {
        /// Project id.
        project: String,
    },
    /// Create a project (an admin key only), with its first token key and limits.
    Create {
        /// Project id.
        project: String,
        #[command(flatten)]
        key: KeyOpts,
        /// Create it disabled.
        #[arg(long)]
        disabled: bool,
        /// Accept the WebSocket extension permessage-deflate from clients that offer it.
        #[arg(long)]
        permessage_deflate: bool,
        #[command(flatten)]
        limits: LimitOpts,
    },
    /// Change a project's origins, address lists or caps (the others stay), or its state.
    Update {
        /// Project id.
        project: String,
        /// Disable the project (clients refused, publishes refused).
        #[arg(long, conflicts_with = "enable")]
        disable: bool,
        /// Enable the project again.
        #[arg(long)]
        enable: bool,
        /// Accept (`true`) or decline (`false`) permessage-deflate on new connections.
        #[arg(long)]
        permessage_deflate: Option<bool>,
        #[command(flatten)]
        limits: LimitOpts,
    },
    /// Disable a project: its clients can no longer connect, its keys no longer publish.
    Disable {
        /// Project id.
        project: String,
    },
    /// Enable a disabled project.
    Enable {
        /// Project id.
        project: String,
    },
    /// Delete a project created through the API.
    Delete {
        /// Project id.
        project: String,
    },
}

/// A token key.
#[derive(Debug, ClapArgs)]
struct KeyOpts {
    /// The key's id (tokens name it in their `kid` header).
    #[arg(long)]
    kid: Option<String>,
    /// Its algorithm: HS256, RS256, ES256 or EdDSA.
    #[arg(long, default_value = "HS256")]
    alg: String,
    /// The HS256 secret (32 bytes at least).
    #[arg(
        long,
        env = "HERALD_KEY_SECRET",
        hide_env_values = true,
        conflicts_with = "public_key_file"
    )]
    secret: Option<String>,
    /// A PEM file holding the public key (RS256, ES256, EdDSA); its text is sent.
    #[arg(long)]
    public_key_file: Option<std::path::PathBuf>,
}

impl KeyOpts {
    fn to_pb(&self) -> anyhow::Result<pb::JwtKey> {
        let Some(kid) = self.kid.clone() else {
            bail!("--kid is required with a key");
        };
        let public_key_pem = match &self.public_key_file {
            Some(f) => std::fs::read_to_string(f)
                .with_context(|| format!("cannot read {}", f.display()))?,
            None => String::new(),
        };
        if self.secret.is_none() && public_key_pem.is_empty() {
            bail!("give --secret (HS256) or --public-key-file (RS256, ES256, EdDSA)");
        }
        Ok(pb::JwtKey {
            kid,
            alg: self.alg.clone(),
            secret: self.secret.clone().unwrap_or_default(),
            public_key_pem,
        })
    }
}

/// Origins, address lists and caps; each given one replaces that setting as a whole.
#[derive(Debug, ClapArgs, Default)]
struct LimitOpts {
    /// Browser origins allowed (comma-separated; `https://*.example.com` allowed; "" for none:
    /// the edge's `origins` then).
    #[arg(long, value_delimiter = ',', num_args = 0..)]
    origins: Option<Vec<String>>,
    /// Client networks allowed (CIDR, comma-separated; "" for none: every address not denied).
    #[arg(long, value_delimiter = ',', num_args = 0..)]
    allow_ips: Option<Vec<String>>,
    /// Client networks refused (CIDR, comma-separated; "" for none).
    #[arg(long, value_delimiter = ',', num_args = 0..)]
    deny_ips: Option<Vec<String>>,
    /// Refuse requests without an `Origin` header (true or false).
    #[arg(long)]
    require_origin: Option<bool>,
    /// Most connections of the project on one edge (0: no cap).
    #[arg(long)]
    max_connections: Option<u32>,
    /// Most groups per connection (0: the edge's cap).
    #[arg(long)]
    max_subscriptions_per_connection: Option<u32>,
    /// Most connections of one user on one edge (0: no cap).
    #[arg(long)]
    max_connections_per_user: Option<u32>,
}

/// The entries of a list option: `--origins ""` (or `--origins` alone) is the empty list.
fn entries(v: Vec<String>) -> Vec<String> {
    v.into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

impl LimitOpts {
    fn any(&self) -> bool {
        self.origins.is_some()
            || self.allow_ips.is_some()
            || self.deny_ips.is_some()
            || self.require_origin.is_some()
            || self.max_connections.is_some()
            || self.max_subscriptions_per_connection.is_some()
            || self.max_connections_per_user.is_some()
    }

    /// `base` with the given settings replaced.
    fn apply(self, mut base: pb::Limits) -> pb::Limits {
        if let Some(v) = self.origins {
            base.origins = entries(v);
        }
        if let Some(v) = self.allow_ips {
            base.allow_ips = entries(v);
        }
        if let Some(v) = self.deny_ips {
            base.deny_ips = entries(v);
        }
        if let Some(v) = self.require_origin {
            base.require_origin = Some(v);
        }
        if let Some(v) = self.max_connections {
            base.max_connections = v;
        }
        if let Some(v) = self.max_subscriptions_per_connection {
            base.max_subscriptions_per_connection = v;
        }
        if let Some(v) = self.max_connections_per_user {
            base.max_connections_per_user = v;
        }
        base
    }
}

#[derive(Debug, Subcommand)]
enum Keys {
    /// Add a token key to a project (its `kid` must be new in the project).
    Add {
        /// Project id.
        project: String,
        #[command(flatten)]
        key: KeyOpts,
    },
    /// Retire a token key: tokens it signed are refused from then on.
    Retire {
        /// Project id.
        project: String,
        /// The key's id.
        #[arg(long)]
        kid: String,
    },
}

#[derive(Debug, Subcommand)]
enum ApiKeys {
    /// Create an API key of a project; the key is printed once (only its digest is kept).
    Create {
        /// Project id.
        project: String,
    },
    /// Revoke (delete) an API key by its id (`herald admin projects get` lists them).
    Revoke {
        /// Project id.
        project: String,
        /// The key's id (the first 12 hex digits of its SHA-256).
        #[arg(long)]
        id: String,
    },
}

/// Options of `herald admin audit`.
#[derive(Debug, ClapArgs)]
struct AuditOpts {
    /// Only this project's entries.
    #[arg(long, short, default_value = "")]
    project: String,
    /// Only entries after this sequence number.
    #[arg(long, default_value_t = 0)]
    after: u64,
    /// At most this many entries (at most 1,000 a call; more are fetched page by page).
    #[arg(long, default_value_t = 1_000)]
    limit: u32,
}

type Client = AdminClient<tonic::service::interceptor::InterceptedService<Channel, Auth>>;

fn print_project(p: &pb::Project) {
    let state = if p.disabled { "disabled" } else { "enabled" };
    println!("project\t{}", p.project);
    println!("source\t{}", p.source);
    println!("state\t{state}");
    for k in &p.jwt_keys {
        println!("jwt_key\t{}\t{}", k.kid, k.alg);
    }
    for k in &p.api_keys {
        println!("api_key\t{}\t{}", k.id, k.created_at);
    }
    let l = p.limits.clone().unwrap_or_default();
    println!("origins\t{}", l.origins.join(","));
    println!(
        "require_origin\t{}",
        l.require_origin
            .map_or("default".to_string(), |b| b.to_string())
    );
    println!("allow_ips\t{}", l.allow_ips.join(","));
    println!("deny_ips\t{}", l.deny_ips.join(","));
    println!("max_connections\t{}", l.max_connections);
    println!(
        "max_subscriptions_per_connection\t{}",
        l.max_subscriptions_per_connection
    );
    println!("max_connections_per_user\t{}", l.max_connections_per_user);
    println!("permessage_deflate\t{}", p.permessage_deflate);
}

fn project_of(reply: pb::ProjectReply) -> anyhow::Result<pb::Project> {
    reply.project.context("the router answered no project")
}

async fn get(client: &mut Client, project: &str) -> anyhow::Result<pb::Project> {
    project_of(
        client
            .get_project(pb::ProjectRequest {
                project: project.to_string(),
            })
            .await
            .map_err(status)?
            .into_inner(),
    )
}

/// What `projects update` (and `disable`, `enable`) changes; absent fields stay.
#[derive(Default)]
struct Change {
    disabled: Option<bool>,
    permessage_deflate: Option<bool>,
    limits: LimitOpts,
}

async fn update(client: &mut Client, project: String, c: Change) -> anyhow::Result<pb::Project> {
    let Change {
        disabled,
        permessage_deflate,
        limits,
    } = c;
    let limits = if limits.any() {
        let base = get(client, &project).await?.limits.unwrap_or_default();
        Some(limits.apply(base))
    } else {
        None
    };
    if disabled.is_none() && permessage_deflate.is_none() && limits.is_none() {
        bail!(
            "nothing to change: give --disable, --enable, --permessage-deflate, or a limit (see --help)"
        );
    }
    project_of(
        client
            .update_project(pb::UpdateProjectRequest {
                project,
                disabled,
                limits,
                jwks: None,
                permessage_deflate,
                ..Default::default()
            })
            .await
            .map_err(status)?
            .into_inner(),
    )
}

/// Runs `herald admin ...`.
pub async fn run(o: AdminOpts) -> anyhow::Result<()> {
    let (channel, auth) = connect_channel(&o.conn).await?;
    let mut client = AdminClient::with_interceptor(channel, auth);
    match o.what {
        What::Bans(Bans::Add {
            project,
            user,
            duration_secs,
            reason,
        }) => {
            let reply = client
                .ban_user(pb::BanUserRequest {
                    project,
                    user,
                    duration_secs,
                    reason,
                })
                .await
                .map_err(status)?
                .into_inner();
            if let Some(b) = reply.ban {
                print_ban(&b);
            }
        }
        What::Bans(Bans::Lift { project, user }) => {
            client
                .unban_user(pb::UnbanUserRequest {
                    project,
                    user: user.clone(),
                })
                .await
                .map_err(status)?;
            println!("lifted {user}");
        }
        What::Bans(Bans::List { project }) => {
            let reply = client
                .list_bans(pb::ProjectRequest { project })
                .await
                .map_err(status)?
                .into_inner();
            for b in &reply.bans {
                print_ban(b);
            }
        }
        What::Projects(Projects::List) => {
            let reply = client
                .list_projects(pb::ListProjectsRequest {})
                .await
                .map_err(status)?
                .into_inner();
            println!("project\tsource\tstate\tjwt_keys\tapi_keys");
            for p in reply.projects {
                let kids: Vec<&str> = p.jwt_keys.iter().map(|k| k.kid.as_str()).collect();
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    p.project,
                    p.source,
                    if p.disabled { "disabled" } else { "enabled" },
                    kids.join(","),
                    p.api_keys.len()
                );
            }
        }
        What::Projects(Projects::Get { project }) => {
            print_project(&get(&mut client, &project).await?);
        }
        What::Projects(Projects::Create {
            project,
            key,
            disabled,
            permessage_deflate,
            limits,
        }) => {
            // Without --kid, a project without token keys (add them later).
            let jwt_keys = match key.kid {
                Some(_) => vec![key.to_pb()?],
                None => Vec::new(),
            };
            let limits = limits.any().then(|| limits.apply(pb::Limits::default()));
            let reply = client
                .create_project(pb::CreateProjectRequest {
                    project,
                    jwt_keys,
                    disabled,
                    limits,
                    jwks: None,
                    permessage_deflate,
                })
                .await
                .map_err(status)?
                .into_inner();
            print_project(&project_of(reply)?);
        }
        What::Projects(Projects::Update {
            project,
            disable,
            enable,
            permessage_deflate,
            limits,
        }) => {
            let disabled = match (disable, enable) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            };
            let change = Change {
                disabled,
                permessage_deflate,
                limits,
            };
            print_project(&update(&mut client, project, change).await?);
        }
        What::Projects(Projects::Disable { project }) => {
            let change = Change {
                disabled: Some(true),
                ..Change::default()
            };
            let p = update(&mut client, project, change).await?;
            println!("disabled {}", p.project);
        }
        What::Projects(Projects::Enable { project }) => {
            let change = Change {
                disabled: Some(false),
                ..Change::default()
            };
            let p = update(&mut client, project, change).await?;
            println!("enabled {}", p.project);
        }
        What::Projects(Projects::Delete { project }) => {
            let reply = client
                .delete_project(pb::ProjectRequest { project })
                .await
                .map_err(status)?
                .into_inner();
            println!("deleted {}", reply.project);
        }
        What::Keys(Keys::Add { project, key }) => {
            let reply = client
                .add_jwt_key(pb::AddJwtKeyRequest {
                    project,
                    key: Some(key.to_pb()?),
                })
                .await
                .map_err(status)?
                .into_inner();
            print_project(&project_of(reply)?);
        }
        What::Keys(Keys::Retire { project, kid }) => {
            let reply = client
                .retire_jwt_key(pb::RetireJwtKeyRequest { project, kid })
                .await
                .map_err(status)?
                .into_inner();
            print_project(&project_of(reply)?);
        }
        What::ApiKeys(ApiKeys::Create { project }) => {
            let reply = client
                .create_api_key(pb::ProjectRequest { project })
                .await
                .map_err(status)?
                .into_inner();
            eprintln!(
                "API key {} of {}: shown once, only its digest is kept",
                reply.id, reply.project
            );
            println!("{}", reply.key);
        }
        What::ApiKeys(ApiKeys::Revoke { project, id }) => {
            let reply = client
                .delete_api_key(pb::DeleteApiKeyRequest { project, id })
                .await
                .map_err(status)?
                .into_inner();
            let p = project_of(reply)?;
            println!(
                "revoked; {} API keys left in {}",
                p.api_keys.len(),
                p.project
            );
        }
        What::Audit(a) => {
            let mut after = a.after;
            let mut left = a.limit;
            println!("seq\tat_ms\tactor\taction\tproject\tdetail");
            while left > 0 {
                let page = left.min(1_000);
                let reply = client
                    .list_audit(pb::ListAuditRequest {
                        project: a.project.clone(),
                        after,
                        limit: page,
                    })
                    .await
                    .map_err(status)?
                    .into_inner();
                let n = reply.entries.len() as u32;
                for e in reply.entries {
                    println!(
                        "{}\t{}\t{}\t{}\t{}\t{}",
                        e.seq, e.at_ms, e.actor, e.action, e.project, e.detail
                    );
                    after = e.seq;
                }
                if n < page {
                    break;
                }
                left -= n;
            }
        }
    }
    Ok(())
}
