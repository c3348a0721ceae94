//! The admin API's projects shared by every node of a cluster: one JSON document in Redis and a
//! version number beside it (`{<prefix>:admin}:state`, `{<prefix>:admin}:version`, one hash slot
//! so a Redis Cluster runs the compare-and-set script). A change is written only over the version
//! it was made on; every node polls the version (one `GET`) and reloads the document when it
//! moved (docs/cluster.md "Projects at runtime").

use redis::AsyncCommands as _;

use crate::ClusterError;
use crate::redis_conn::Conn;
use crate::redis_registry::RedisConfig;

/// Sets the state if the version is still the one read; answers the new version, or -1.
const CAS: &str = r"
local v = tonumber(redis.call('GET', KEYS[1]) or '0')
if v ~= tonumber(ARGV[1]) then return -1 end
redis.call('SET', KEYS[2], ARGV[2])
return redis.call('INCR', KEYS[1])
";

/// The shared document and its version.
#[derive(Clone)]
pub struct RedisProjects {
    conn: Conn,
    version_key: String,
    state_key: String,
    cas: redis::Script,
}

impl RedisProjects {
    /// Checks the settings and builds the (lazy) connection. Must be called inside a tokio
    /// runtime.
    pub fn new(cfg: &RedisConfig) -> Result<Self, ClusterError> {
        Ok(Self {
            conn: Conn::new(cfg)?,
            version_key: format!("{{{}:admin}}:version", cfg.key_prefix),
            state_key: format!("{{{}:admin}}:state", cfg.key_prefix),
            cas: redis::Script::new(CAS),
        })
    }

    /// The version now (0: never written).
    pub async fn version(&self) -> Result<u64, ClusterError> {
        let mut c = self.conn.clone();
        let v: Option<u64> = c
            .get(&self.version_key)
            .await
            .map_err(|e| ClusterError::Redis(e.to_string()))?;
        Ok(v.unwrap_or(0))
    }

    /// The version and the document (`None` before the first write).
    pub async fn load(&self) -> Result<(u64, Option<Vec<u8>>), ClusterError> {
        let mut c = self.conn.clone();
        let (v, state): (Option<u64>, Option<Vec<u8>>) = redis::pipe()
            .get(&self.version_key)
            .get(&self.state_key)
            .query_async(&mut c)
            .await
            .map_err(|e| ClusterError::Redis(e.to_string()))?;
        Ok((v.unwrap_or(0), state))
    }

    /// Writes `state` if the version is still `expected`; the new version, or `None` when
    /// another node wrote first.
    pub async fn save(&self, expected: u64, state: &[u8]) -> Result<Option<u64>, ClusterError> {
        let mut c = self.conn.clone();
        let v: i64 = self
            .cas
            .key(&self.version_key)
            .key(&self.state_key)
            .arg(expected)
            .arg(state)
            .invoke_async(&mut c)
            .await
            .map_err(|e| ClusterError::Redis(e.to_string()))?;
        Ok(u64::try_from(v).ok())
    }
}
