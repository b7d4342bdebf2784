//! The cluster registry in Redis: who owns each charge point, under which epoch, and
//! which nodes are alive.
//!
//! Keys (`P` is `cluster.key_prefix`; the braces keep a charge point's two keys in one
//! Redis Cluster slot, so that one script can touch both):
//! - `P:cp:{ID}:owner`, a hash: `node`, `incarnation`, `epoch`, `connectedAt` (Unix ms),
//!   `version`. Written by a claim, deleted by its owner's release.
//! - `P:cp:{ID}:epoch`, the last epoch handed out for `ID`, so that epochs only grow
//!   even while no record exists. A claim takes `max(last + 1, Redis TIME in µs)`, so
//!   they keep growing if Redis loses its data too.
//! - `P:node:NODE`, the node's lease: its incarnation and internal URL, with a TTL the
//!   node renews. A record is live only while its node's lease names its incarnation:
//!   idle charge points cost no Redis traffic at all.
//! - `P:nodes`, a set of node ids ever seen (dead ones are dropped when listed).
//! - `P:command:ID`, a Kafka command id being sent (`pending NODE INCARNATION`) or
//!   answered (`done`), with a TTL.
//! - `P:{credentials}`, a hash of charge point id → credential record (one JSON line, as
//!   in the credentials file), and `P:{credentials}:version`, a counter every change
//!   increments, for the credential store shared by the nodes.
//!
//! Every write to a record is compare-and-set on (node, epoch) in a script: a stale owner
//! can neither delete nor overwrite a newer claim.

use std::{future::Future, time::Duration};

use redis::{
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster_async::ClusterConnection,
    Cmd, RedisFuture, Script, Value,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::ClusterConfig;

/// Takes the next epoch and writes the record; with ARGV[6] other than `*`, only when the
/// current record's epoch is ARGV[6] (`-` for no record). Returns the epoch taken (`0`
/// when the condition failed) and the record found before: node, incarnation, epoch.
const CLAIM: &str = r#"
local current = redis.call('HMGET', KEYS[1], 'node', 'incarnation', 'epoch')
if ARGV[6] ~= '*' and (current[3] or '-') ~= ARGV[6] then
  return {'0', current[1] or '', current[2] or '', current[3] or ''}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
local epoch = string.format('%.0f', math.max(last + 1, now))
redis.call('SET', KEYS[2], epoch, 'PX', ARGV[5])
redis.call('HSET', KEYS[1], 'node', ARGV[1], 'incarnation', ARGV[2], 'epoch', epoch,
  'connectedAt', ARGV[3], 'version', ARGV[4])
return {epoch, current[1] or '', current[2] or '', current[3] or ''}
"#;

/// Deletes the record only while it is still (node, epoch).
const RELEASE: &str = r#"
local current = redis.call('HMGET', KEYS[1], 'node', 'epoch')
if current[1] == ARGV[1] and current[2] == ARGV[2] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"#;

/// Replaces one credential record only while it is still what the caller read (ARGV[1],
/// empty for none), writing ARGV[2] (empty: delete), and counts the change.
const SET_CREDENTIAL: &str = r#"
local current = redis.call('HGET', KEYS[1], ARGV[3]) or ''
if current ~= ARGV[1] then
  return 0
end
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[3])
else
  redis.call('HSET', KEYS[1], ARGV[3], ARGV[2])
end
redis.call('INCR', KEYS[2])
return 1
"#;

/// How long an epoch counter outlives its last claim (after that, Redis TIME alone keeps
/// epochs growing).
const EPOCH_COUNTER_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// A registry operation that did not complete.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    /// No answer within `cluster.redis_timeout`.
    #[error("no answer from Redis within {0:?}")]
    Timeout(Duration),
    /// Redis refused or the connection failed.
    #[error("Redis: {0}")]
    Redis(String),
    /// A value in Redis is not what the gateway writes.
    #[error("unexpected value in Redis: {0}")]
    Corrupt(String),
}

/// The owner record of a charge point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerRecord {
    /// The node holding the connection.
    pub node: String,
    /// The node's incarnation when it claimed (a restarted node has a new one).
    pub incarnation: String,
    /// The claim's epoch.
    pub epoch: u64,
    /// When the connection was made (Unix ms).
    pub connected_at_ms: i64,
    /// The negotiated OCPP subprotocol (`ocpp1.6`, ...).
    pub version: String,
}

/// Who held a record before a claim replaced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousOwner {
    /// Its node.
    pub node: String,
    /// Its node's incarnation.
    pub incarnation: String,
    /// Its epoch.
    pub epoch: u64,
}

/// What a claim did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The record is ours under `epoch`; `previous` held it before.
    Taken {
        /// The new epoch.
        epoch: u64,
        /// The record replaced, if there was one.
        previous: Option<PreviousOwner>,
    },
    /// A conditional claim found another record (or none) than expected.
    Changed,
}

/// A node's lease: how others know it is alive and where to call it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeLease {
    /// Changes every time the node starts.
    pub incarnation: String,
    /// The internal API's base URL.
    pub url: String,
}

/// The state of a Kafka command id across nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandMark {
    /// Not seen before: now marked pending by this node.
    First,
    /// Being sent by a node (which may be this one, or gone).
    Pending {
        /// The node.
        node: String,
        /// Its incarnation.
        incarnation: String,
    },
    /// Its result is written.
    Done,
}

/// One connection to Redis or to a Redis Cluster.
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(cmd, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

/// How to reach Redis: a connection manager (which reconnects by itself) for one
/// server; for a cluster, a connection made on first use and again after a failure.
enum Connector {
    Single(ConnectionManager),
    Cluster(Box<ClusterConnector>),
}

/// A Redis Cluster client and its connection once made.
struct ClusterConnector {
    client: redis::cluster::ClusterClient,
    connection: Mutex<Option<ClusterConnection>>,
}

/// The registry: this node's view of the shared records.
pub struct RedisRegistry {
    connector: Connector,
    prefix: String,
    timeout: Duration,
    lease_time: Duration,
    claim: Script,
    release: Script,
    set_credential: Script,
}

impl RedisRegistry {
    /// A registry over `config.redis_urls`. Connects lazily: a node starts (and serves
    /// its charge points) while Redis is down.
    pub fn new(config: &ClusterConfig) -> Result<RedisRegistry, RegistryError> {
        let redis_error = |e: redis::RedisError| RegistryError::Redis(e.to_string());
        let connector = match config.redis_urls.as_slice() {
            [url] => {
                let client = redis::Client::open(url.as_str()).map_err(redis_error)?;
                let manager_config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(config.redis_timeout))
                    .set_response_timeout(Some(config.redis_timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(config.redis_timeout);
                Connector::Single(
                    ConnectionManager::new_lazy_with_config(client, manager_config)
                        .map_err(redis_error)?,
                )
            }
            urls => Connector::Cluster(Box::new(ClusterConnector {
                client: redis::cluster::ClusterClientBuilder::new(urls.to_vec())
                    .connection_timeout(config.redis_timeout)
                    .response_timeout(config.redis_timeout)
                    .build()
                    .map_err(redis_error)?,
                connection: Mutex::new(None),
            })),
        };
        Ok(RedisRegistry {
            connector,
            prefix: config.key_prefix.clone(),
            timeout: config.redis_timeout,
            lease_time: config.lease_time,
            claim: Script::new(CLAIM),
            release: Script::new(RELEASE),
            set_credential: Script::new(SET_CREDENTIAL),
        })
    }

    async fn connection(&self) -> Result<Connection, RegistryError> {
        match &self.connector {
            Connector::Single(manager) => Ok(Connection::Single(manager.clone())),
            Connector::Cluster(cluster) => {
                let ClusterConnector { client, connection } = cluster.as_ref();
                let mut slot = connection.lock().await;
                if let Some(connection) = slot.as_ref() {
                    return Ok(Connection::Cluster(connection.clone()));
                }
                let connection = client
                    .get_async_connection()
                    .await
                    .map_err(|e| RegistryError::Redis(e.to_string()))?;
                *slot = Some(connection.clone());
                Ok(Connection::Cluster(connection))
            }
        }
    }

    /// Runs `operation` on a connection within the timeout.
    async fn run<T, F, Fut>(&self, operation: F) -> Result<T, RegistryError>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let attempt = async {
            let connection = self.connection().await?;
            operation(connection)
                .await
                .map_err(|e| RegistryError::Redis(e.to_string()))
        };
        let result = tokio::time::timeout(self.timeout, attempt)
            .await
            .unwrap_or(Err(RegistryError::Timeout(self.timeout)));
        if result.is_err() {
            // A cluster connection that failed is made again on next use.
            if let Connector::Cluster(cluster) = &self.connector {
                *cluster.connection.lock().await = None;
            }
        }
        result
    }

    fn owner_key(&self, charge_point_id: &str) -> String {
        format!("{}:cp:{{{charge_point_id}}}:owner", self.prefix)
    }

    fn epoch_key(&self, charge_point_id: &str) -> String {
        format!("{}:cp:{{{charge_point_id}}}:epoch", self.prefix)
    }

    fn node_key(&self, node: &str) -> String {
        format!("{}:node:{node}", self.prefix)
    }

    fn nodes_key(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    fn command_key(&self, command_id: &str) -> String {
        format!("{}:command:{command_id}", self.prefix)
    }

    /// Claims `charge_point_id` for `node` (incarnation `incarnation`): unconditionally
    /// with `expected` `None`, else only while the record's epoch is `expected`
    /// (`Some(None)`: while there is no record).
    pub async fn claim(
        &self,
        charge_point_id: &str,
        owner: &Claimant<'_>,
        expected: Option<Option<u64>>,
    ) -> Result<Claim, RegistryError> {
        let condition = match expected {
            None => "*".to_owned(),
            Some(None) => "-".to_owned(),
            Some(Some(epoch)) => epoch.to_string(),
        };
        let reply: Vec<String> = self
            .run(|mut connection| async move {
                self.claim
                    .key(self.owner_key(charge_point_id))
                    .key(self.epoch_key(charge_point_id))
                    .arg(owner.node)
                    .arg(owner.incarnation)
                    .arg(owner.connected_at_ms)
                    .arg(owner.version)
                    .arg(EPOCH_COUNTER_TTL.as_millis() as u64)
                    .arg(condition)
                    .invoke_async(&mut connection)
                    .await
            })
            .await?;
        let [epoch, node, incarnation, previous_epoch] = reply.as_slice() else {
            return Err(RegistryError::Corrupt(format!("claim answered {reply:?}")));
        };
        let epoch = parse_epoch(epoch)?;
        if epoch == 0 {
            return Ok(Claim::Changed);
        }
        let previous = match node.is_empty() {
            true => None,
            false => Some(PreviousOwner {
                node: node.clone(),
                incarnation: incarnation.clone(),
                epoch: parse_epoch(previous_epoch)?,
            }),
        };
        Ok(Claim::Taken { epoch, previous })
    }

    /// Deletes the record of `charge_point_id` if it is still `node`'s under `epoch`;
    /// `false` when a newer claim (or none) is there.
    pub async fn release(
        &self,
        charge_point_id: &str,
        node: &str,
        epoch: u64,
    ) -> Result<bool, RegistryError> {
        let deleted: i64 = self
            .run(|mut connection| async move {
                self.release
                    .key(self.owner_key(charge_point_id))
                    .arg(node)
                    .arg(epoch)
                    .invoke_async(&mut connection)
                    .await
            })
            .await?;
        Ok(deleted == 1)
    }

    /// The owner record of `charge_point_id`, if any (live or not: see [`Self::node`]).
    pub async fn owner(&self, charge_point_id: &str) -> Result<Option<OwnerRecord>, RegistryError> {
        let fields: Vec<Option<String>> = self
            .run(|mut connection| async move {
                redis::cmd("HMGET")
                    .arg(self.owner_key(charge_point_id))
                    .arg(&["node", "incarnation", "epoch", "connectedAt", "version"])
                    .query_async(&mut connection)
                    .await
            })
            .await?;
        match fields.as_slice() {
            [Some(node), Some(incarnation), Some(epoch), connected_at, version] => {
                Ok(Some(OwnerRecord {
                    node: node.clone(),
                    incarnation: incarnation.clone(),
                    epoch: parse_epoch(epoch)?,
                    connected_at_ms: connected_at
                        .as_deref()
                        .and_then(|at| at.parse().ok())
                        .unwrap_or(0),
                    version: version.clone().unwrap_or_default(),
                }))
            }
            _ => Ok(None),
        }
    }

    /// The lease of `node`, while it is alive.
    pub async fn node(&self, node: &str) -> Result<Option<NodeLease>, RegistryError> {
        let value: Option<String> = self
            .run(|mut connection| async move {
                redis::cmd("GET")
                    .arg(self.node_key(node))
                    .query_async(&mut connection)
                    .await
            })
            .await?;
        value
            .map(|value| {
                serde_json::from_str(&value)
                    .map_err(|e| RegistryError::Corrupt(format!("lease of {node}: {e}")))
            })
            .transpose()
    }

    /// Writes or renews `node`'s lease. With `renew_only`, only an existing lease is
    /// renewed: `false` then means it was gone (expired, or Redis lost it).
    pub async fn put_lease(
        &self,
        node: &str,
        lease: &NodeLease,
        renew_only: bool,
    ) -> Result<bool, RegistryError> {
        let value = serde_json::to_string(lease).unwrap_or_default();
        let lease_ms = self.lease_time.as_millis() as u64;
        let written: Option<String> = self
            .run(|mut connection| async move {
                let mut set = redis::cmd("SET");
                set.arg(self.node_key(node))
                    .arg(value)
                    .arg("PX")
                    .arg(lease_ms);
                if renew_only {
                    set.arg("XX");
                }
                set.query_async(&mut connection).await
            })
            .await?;
        if written.is_some() && !renew_only {
            self.run(|mut connection| async move {
                redis::cmd("SADD")
                    .arg(self.nodes_key())
                    .arg(node)
                    .query_async::<i64>(&mut connection)
                    .await
            })
            .await?;
        }
        Ok(written.is_some())
    }

    /// Deletes `node`'s lease if it is still `incarnation`'s (at shutdown, so that
    /// others stop forwarding to it at once).
    pub async fn drop_lease(&self, node: &str, incarnation: &str) -> Result<(), RegistryError> {
        if let Some(lease) = self.node(node).await? {
            if lease.incarnation == incarnation {
                self.run(|mut connection| async move {
                    redis::cmd("DEL")
                        .arg(self.node_key(node))
                        .query_async::<i64>(&mut connection)
                        .await
                })
                .await?;
            }
        }
        Ok(())
    }

    /// Every node alive now, with its lease; dead ones are dropped from the set.
    pub async fn nodes(&self) -> Result<Vec<(String, NodeLease)>, RegistryError> {
        let names: Vec<String> = self
            .run(|mut connection| async move {
                redis::cmd("SMEMBERS")
                    .arg(self.nodes_key())
                    .query_async(&mut connection)
                    .await
            })
            .await?;
        let mut alive = Vec::with_capacity(names.len());
        for name in names {
            match self.node(&name).await? {
                Some(lease) => alive.push((name, lease)),
                None => {
                    let name = &name;
                    self.run(|mut connection| async move {
                        redis::cmd("SREM")
                            .arg(self.nodes_key())
                            .arg(name)
                            .query_async::<i64>(&mut connection)
                            .await
                    })
                    .await?;
                }
            }
        }
        alive.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(alive)
    }

    /// Marks Kafka command `command_id` pending by this node, unless another mark is
    /// there already (then returns it).
    ///
    /// `attempt` names this reading of the record: a retry after a reply that timed out
    /// finds its own mark and gets `First` again, so retrying is safe even when the
    /// first try reached Redis.
    pub async fn mark_command(
        &self,
        command_id: &str,
        node: &str,
        incarnation: &str,
        attempt: &str,
        ttl: Duration,
    ) -> Result<CommandMark, RegistryError> {
        let key = self.command_key(command_id);
        let pending = format!("pending {node} {incarnation} {attempt}");
        let ours = pending.clone();
        let ttl_ms = ttl.as_millis() as u64;
        let (set, existing): (Option<String>, Option<String>) = self
            .run(|mut connection| async move {
                redis::pipe()
                    .cmd("SET")
                    .arg(&key)
                    .arg(pending)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl_ms)
                    .cmd("GET")
                    .arg(&key)
                    .query_async(&mut connection)
                    .await
            })
            .await?;
        if set.is_some() || existing.as_deref() == Some(ours.as_str()) {
            return Ok(CommandMark::First);
        }
        Ok(parse_mark(existing.as_deref().unwrap_or("done")))
    }

    /// The mark of `command_id`, if any.
    pub async fn command_mark(
        &self,
        command_id: &str,
    ) -> Result<Option<CommandMark>, RegistryError> {
        let existing: Option<String> = self
            .run(|mut connection| async move {
                redis::cmd("GET")
                    .arg(self.command_key(command_id))
                    .query_async(&mut connection)
                    .await
            })
            .await?;
        Ok(existing.as_deref().map(parse_mark))
    }

    /// Marks `command_id` answered (its result is written).
    pub async fn command_done(&self, command_id: &str, ttl: Duration) -> Result<(), RegistryError> {
        let ttl_ms = ttl.as_millis() as u64;
        self.run(|mut connection| async move {
            redis::cmd("SET")
                .arg(self.command_key(command_id))
                .arg("done")
                .arg("PX")
                .arg(ttl_ms)
                .query_async::<Option<String>>(&mut connection)
                .await
        })
        .await?;
        Ok(())
    }
}

impl RedisRegistry {
    fn credentials_key(&self) -> String {
        format!("{}:{{credentials}}", self.prefix)
    }

    fn credentials_version_key(&self) -> String {
        format!("{}:{{credentials}}:version", self.prefix)
    }

    /// The version of the shared credentials (0 before the first change).
    pub async fn credentials_version(&self) -> Result<u64, RegistryError> {
        let version: Option<u64> = self
            .run(|mut connection| async move {
                redis::cmd("GET")
                    .arg(self.credentials_version_key())
                    .query_async(&mut connection)
                    .await
            })
            .await?;
        Ok(version.unwrap_or(0))
    }

    /// Every credential record (id → JSON line) and the version they are at.
    pub async fn credentials(&self) -> Result<(u64, Vec<(String, String)>), RegistryError> {
        let (version, records): (Option<u64>, Vec<(String, String)>) = self
            .run(|mut connection| async move {
                redis::pipe()
                    .atomic()
                    .cmd("GET")
                    .arg(self.credentials_version_key())
                    .cmd("HGETALL")
                    .arg(self.credentials_key())
                    .query_async(&mut connection)
                    .await
            })
            .await?;
        Ok((version.unwrap_or(0), records))
    }

    /// One credential record's JSON line, as Redis has it now.
    pub async fn credential(&self, id: &str) -> Result<Option<String>, RegistryError> {
        self.run(|mut connection| async move {
            redis::cmd("HGET")
                .arg(self.credentials_key())
                .arg(id)
                .query_async(&mut connection)
                .await
        })
        .await
    }

    /// Writes (`Some`) or deletes (`None`) the record of `id` if it is still `expected`;
    /// `false` when someone changed it in between.
    pub async fn set_credential(
        &self,
        id: &str,
        expected: Option<&str>,
        record: Option<&str>,
    ) -> Result<bool, RegistryError> {
        let changed: i64 = self
            .run(|mut connection| async move {
                self.set_credential
                    .key(self.credentials_key())
                    .key(self.credentials_version_key())
                    .arg(expected.unwrap_or_default())
                    .arg(record.unwrap_or_default())
                    .arg(id)
                    .invoke_async(&mut connection)
                    .await
            })
            .await?;
        Ok(changed == 1)
    }
}

/// Who claims a record.
pub struct Claimant<'a> {
    /// The node.
    pub node: &'a str,
    /// Its incarnation.
    pub incarnation: &'a str,
    /// When the connection was made (Unix ms).
    pub connected_at_ms: i64,
    /// The OCPP subprotocol.
    pub version: &'a str,
}

fn parse_epoch(text: &str) -> Result<u64, RegistryError> {
    text.parse()
        .map_err(|_| RegistryError::Corrupt(format!("epoch {text:?}")))
}

fn parse_mark(text: &str) -> CommandMark {
    let mut words = text.split(' ');
    match (words.next(), words.next(), words.next()) {
        (Some("pending"), Some(node), Some(incarnation)) => CommandMark::Pending {
            node: node.to_owned(),
            incarnation: incarnation.to_owned(),
        },
        _ => CommandMark::Done,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_marks_round_trip() {
        assert_eq!(
            parse_mark("pending gw-1 abc 7f3a"),
            CommandMark::Pending {
                node: "gw-1".into(),
                incarnation: "abc".into()
            }
        );
        assert_eq!(
            parse_mark("pending gw-1 abc"),
            CommandMark::Pending {
                node: "gw-1".into(),
                incarnation: "abc".into()
            }
        );
        assert_eq!(parse_mark("done"), CommandMark::Done);
    }
}
