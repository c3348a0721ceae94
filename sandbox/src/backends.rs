//! Redis and NATS for a Herald cluster, and the `[cluster]` settings that point at them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::nats::{self, NatsOptions, NatsServer};
use crate::redis::{self, RedisOptions, RedisServer};
use crate::{Error, Result};

/// Redis (one server, or the three masters of a Redis Cluster) and NATS servers.
#[derive(Debug)]
pub struct Backends {
    /// The Redis servers: one, or the three masters of a Redis Cluster.
    pub redis: Vec<RedisServer>,
    /// Whether `redis` is a Redis Cluster.
    pub redis_cluster: bool,
    /// The NATS servers (none, one, or a cluster).
    pub nats: Vec<NatsServer>,
    /// Key and subject prefix of the nodes using them.
    pub prefix: String,
    dir: Dir,
}

#[derive(Debug)]
enum Dir {
    Temp(tempfile::TempDir),
    Given(PathBuf),
}

/// How [`Backends`] are started.
#[derive(Debug, Clone)]
pub struct BackendsBuilder {
    redis_cluster: bool,
    nats_nodes: usize,
    redis_args: Vec<String>,
    dir: Option<PathBuf>,
    logs: bool,
    own_group: bool,
    prefix: Option<String>,
    wait: Duration,
}

impl Backends {
    /// A single Redis and one NATS server in a temporary directory, waited for up to 10 s each;
    /// see the builder's methods for the rest.
    pub fn builder() -> BackendsBuilder {
        BackendsBuilder {
            redis_cluster: false,
            nats_nodes: 1,
            redis_args: Vec::new(),
            dir: None,
            logs: false,
            own_group: false,
            prefix: None,
            wait: Duration::from_secs(10),
        }
    }

    /// The Redis URLs.
    pub fn redis_urls(&self) -> Vec<String> {
        self.redis.iter().map(RedisServer::url).collect()
    }

    /// The NATS URLs.
    pub fn nats_urls(&self) -> Vec<String> {
        self.nats.iter().map(NatsServer::url).collect()
    }

    /// The directory the servers work in (and, with logs, write them to); lives as long as the
    /// backends when it is a temporary one.
    pub fn dir(&self) -> &Path {
        match &self.dir {
            Dir::Temp(t) => t.path(),
            Dir::Given(p) => p,
        }
    }

    /// The pids of every running server.
    pub fn pids(&self) -> Vec<u32> {
        self.redis
            .iter()
            .filter_map(RedisServer::pid)
            .chain(self.nats.iter().filter_map(NatsServer::pid))
            .collect()
    }

    /// The body of a `[cluster]` table for nodes using these backends: `registry`, `bus`, their
    /// URLs, `redis_cluster` and `prefix` (TOML lines; a node adds its own `role`, timeouts).
    pub fn cluster_toml(&self) -> String {
        let list = |v: Vec<String>| {
            v.iter()
                .map(|u| format!("{u:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "registry = \"redis\"\nredis_urls = [{}]\nredis_cluster = {}\nbus = \"nats\"\n\
             nats_urls = [{}]\nprefix = {:?}\n",
            list(self.redis_urls()),
            self.redis_cluster,
            list(self.nats_urls()),
            self.prefix
        )
    }
}

impl BackendsBuilder {
    /// A 3-master Redis Cluster instead of one server.
    pub fn redis_cluster(mut self, yes: bool) -> Self {
        self.redis_cluster = yes;
        self
    }

    /// NATS servers: 0 for none, 1 (the default), or more for a cluster.
    pub fn nats_nodes(mut self, n: usize) -> Self {
        self.nats_nodes = n;
        self
    }

    /// More `redis-server` arguments (`["--maxclients", "4096"]`).
    pub fn redis_args<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.redis_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Work in `dir` (kept afterwards) instead of a temporary directory.
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// Write each server's stderr to `<dir>/redis-<port>.log`, `<dir>/nats-<i>.log`.
    pub fn logs(mut self, yes: bool) -> Self {
        self.logs = yes;
        self
    }

    /// Start every server in a process group of its own (see [`crate::Process::spawn`]).
    pub fn own_process_groups(mut self, yes: bool) -> Self {
        self.own_group = yes;
        self
    }

    /// Key and subject prefix (default: `t<pid>`, unique per process).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// How long each wait (a server listening, a cluster forming) may take.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Starts Redis, then NATS.
    pub async fn start(self) -> Result<Backends> {
        let dir = match self.dir {
            Some(d) => {
                std::fs::create_dir_all(&d)
                    .map_err(Error::io(format!("create {}", d.display())))?;
                Dir::Given(d)
            }
            None => Dir::Temp(tempfile::tempdir().map_err(Error::io("temporary directory"))?),
        };
        let path = match &dir {
            Dir::Temp(t) => t.path().to_path_buf(),
            Dir::Given(p) => p.clone(),
        };
        let options = RedisOptions {
            cluster: self.redis_cluster,
            args: self.redis_args,
            log_dir: self.logs.then(|| path.clone()),
            own_group: self.own_group,
            wait: self.wait,
        };
        let redis = if self.redis_cluster {
            redis::start_cluster(&path, options).await?
        } else {
            vec![RedisServer::start(&path, options).await?]
        };
        let nats = if self.nats_nodes == 0 {
            Vec::new()
        } else {
            let options = NatsOptions {
                log_dir: self.logs.then(|| path.clone()),
                own_group: self.own_group,
                wait: self.wait,
            };
            nats::start(&path, self.nats_nodes, &options).await?
        };
        Ok(Backends {
            redis,
            redis_cluster: self.redis_cluster,
            nats,
            prefix: self
                .prefix
                .unwrap_or_else(|| format!("t{}", std::process::id())),
            dir,
        })
    }
}
