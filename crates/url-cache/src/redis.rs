//! The Redis backend (fred).
//!
//! Data layout (see `docs/redis-layout.md`):
//!
//! - `{prefix}{key}` — a hash with the entry's fields (`url`, `expires_at`,
//!   `access_count`, `created_at`, `last_accessed`, `image_key`, `mime_type`), expiring
//!   with the URL (`PEXPIREAT`).
//! - `{index}:expiry` — a sorted set, member = key, score = `expires_at`: "expiring
//!   within" and cleanup are `ZRANGEBYSCORE` ranges, O(log n + k), never a keyspace scan.
//! - `{index}:policy` — a sorted set, member = key, score = the eviction order (LRU: last
//!   access time, FIFO: insertion time, LFU: access count). When `ZCARD` exceeds the
//!   capacity after a put, `ZPOPMIN` removes the surplus, lowest score first.
//!
//! `{index}` is the prefix without its trailing `:` plus `-index` (`image:url-index`), so
//! no object key can collide with an index. No command spans two entry keys atomically,
//! so the layout works on Redis Cluster (the two indexes each live in one slot).
//!
//! One `get` is one pipeline, hence one round trip, including the access update: `HGETALL`,
//! `HINCRBY access_count`, `HSET last_accessed`, `EXPIRE 60 NX` and `ZADD XX` on the policy
//! index. On a miss `HINCRBY` creates a stub hash; `EXPIRE NX` gives it 60 s to live, it
//! has no `url` so it reads as a miss, `ZADD XX` leaves the indexes untouched, and the next
//! `put` replaces it. No Lua, so every command keeps its timeout.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fred::interfaces::LuaInterface;
use fred::prelude::{
    Builder, ClientLike, Config, Error as FredError, ErrorKind, EventInterface, HashesInterface,
    KeysInterface, Pool, ReconnectPolicy, SortedSetsInterface, Value,
};
use fred::types::{ExpireOptions, SetOptions};
use tokio::task::JoinHandle;

use crate::clock::from_unix_secs;

/// Takes the lease (`KEYS[1]`) for `ARGV[1]` for `ARGV[2]` ms if it is free, or extends
/// it if `ARGV[1]` holds it; 1 if `ARGV[1]` holds it afterwards.
const LEASE_ACQUIRE: &str = r#"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"#;

/// Deletes the lease (`KEYS[1]`) only if `ARGV[1]` holds it.
const LEASE_RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;
use crate::policy::Kind;
use crate::{
    validate_entry, validate_key, CacheEntry, CacheError, CacheStats, Clock, EvictionPolicy,
    Result, StatsCounters, SystemClock, UrlCache,
};

/// How long the stub hash a missed lookup creates may live.
const STUB_TTL_SECS: i64 = 60;

/// Connection and layout settings for [`RedisCache`].
#[derive(Clone)]
#[non_exhaustive]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// Connections in the pool (default 20).
    pub pool_size: usize,
    /// Timeout to establish a connection (default 5 s).
    pub connect_timeout: Duration,
    /// Deadline of every cache operation (default 5 s; the service layer applies a far
    /// shorter one of its own).
    pub command_timeout: Duration,
    /// First reconnect delay (default 100 ms), doubled up to `reconnect_max_delay`.
    pub reconnect_min_delay: Duration,
    /// Longest reconnect delay (default 1 s, plus up to 100 ms of jitter so that the
    /// pool's connections do not knock in step). Reconnection never gives up; one attempt
    /// per connection per second does not burden a server that is down, and a server
    /// that comes back is used again within about a second.
    pub reconnect_max_delay: Duration,
    /// Commands buffered per connection while disconnected; beyond, calls fail at once
    /// (default 1024).
    pub command_buffer: usize,
    /// How often a background task sends `PING` (default 30 s).
    pub health_check_interval: Duration,
    /// Prefix of entry keys (default `image:url:`).
    pub key_prefix: String,
    /// What the entries belong to, e.g. the COS endpoint's host: keys become
    /// `{key_prefix}{namespace}:{key}` (and the indexes follow), so two buckets sharing
    /// one Redis never see each other's URLs. `None` (default): `{key_prefix}{key}`.
    pub namespace: Option<String>,
    /// With a namespace: on a single-key miss, read the key where the layout without namespace
    /// keeps it (`{key_prefix}{key}`, a hash or the original system's JSON string), move
    /// it under the namespace and serve it (default true). One extra round trip per
    /// miss; turn off once the old keys have expired.
    pub migrate_unnamespaced: bool,
    /// Capacity, in entries (default 10 000).
    pub max_entries: usize,
    /// Eviction policy (default LRU).
    pub policy: EvictionPolicy,
}

impl RedisConfig {
    /// The defaults, with `url`.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            ..Self::default()
        }
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            pool_size: 20,
            connect_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(5),
            reconnect_min_delay: Duration::from_millis(100),
            reconnect_max_delay: Duration::from_secs(1),
            command_buffer: 1024,
            health_check_interval: Duration::from_secs(30),
            key_prefix: "image:url:".into(),
            namespace: None,
            migrate_unnamespaced: true,
            max_entries: crate::DEFAULT_CAPACITY,
            policy: EvictionPolicy::default(),
        }
    }
}

/// The URL may carry a password: `Debug` shows it without.
impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url))
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("key_prefix", &self.key_prefix)
            .field("namespace", &self.namespace)
            .field("max_entries", &self.max_entries)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://<redacted>@{}", &url[..scheme_end], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// A [`UrlCache`] in Redis, shared by every replica that points at the same server.
///
/// Cheap to clone (an `Arc`). Created with [`RedisCache::connect`], which never fails
/// because Redis is down: the pool keeps reconnecting in the background (exponential
/// backoff), calls meanwhile fail with a retryable error within `command_timeout`, and
/// [`RedisCache::is_healthy`] reports the last health check.
#[derive(Clone)]
pub struct RedisCache {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    clock: Arc<dyn Clock>,
    stats: StatsCounters,
    healthy: Arc<AtomicBool>,
    command_timeout: Duration,
    prefix: String,
    expiry_index: String,
    policy_index: String,
    /// With a namespace and migration on: where entries without namespace live.
    unnamespaced: Option<Layout>,
    policy: EvictionPolicy,
    max_entries: usize,
    /// Connections (re)established, counted from fred's reconnection events.
    reconnects: Arc<AtomicU64>,
    /// The PING task and the reconnection listeners; they hold no reference to `Inner`,
    /// and are aborted when the last clone of the cache is dropped.
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        // Stop the pool's reconnect loops too; nobody can use it any more.
        let pool = self.pool.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = pool.quit().await;
            });
        }
    }
}

impl fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCache")
            .field("prefix", &self.inner.prefix)
            .field("policy", &self.inner.policy)
            .field("max_entries", &self.inner.max_entries)
            .field("healthy", &self.is_healthy())
            .finish_non_exhaustive()
    }
}

impl RedisCache {
    /// Connects with the system clock. See [`RedisCache::connect_with_clock`].
    pub async fn connect(config: RedisConfig) -> Result<Self> {
        Self::connect_with_clock(config, Arc::new(SystemClock)).await
    }

    /// Builds the pool and starts connecting. Fails only on invalid configuration; if
    /// Redis cannot be reached within `connect_timeout` the cache starts unhealthy and
    /// reconnects in the background.
    pub async fn connect_with_clock(config: RedisConfig, clock: Arc<dyn Clock>) -> Result<Self> {
        if !(config.url.starts_with("redis://") || config.url.starts_with("rediss://")) {
            return Err(CacheError::InvalidInput(format!(
                "invalid Redis URL {}: expected redis://host:port",
                redact_url(&config.url)
            )));
        }
        let mut fred_config = Config::from_url(&config.url).map_err(|e| {
            CacheError::InvalidInput(format!(
                "invalid Redis URL {}: {}",
                redact_url(&config.url),
                e.details()
            ))
        })?;
        // Keep reconnecting instead of failing when the first connection fails.
        fred_config.fail_fast = false;
        let mut reconnect = ReconnectPolicy::new_exponential(
            0, // never give up
            config.reconnect_min_delay.as_millis() as u32,
            config.reconnect_max_delay.as_millis() as u32,
            2,
        );
        reconnect.set_jitter(100);
        let pool = Builder::from_config(fred_config)
            .with_connection_config(|c| {
                c.connection_timeout = config.connect_timeout;
                c.internal_command_timeout = config.command_timeout;
                c.max_command_buffer_len = config.command_buffer;
            })
            .with_performance_config(|p| {
                p.default_command_timeout = config.command_timeout;
            })
            .set_policy(reconnect)
            .build_pool(config.pool_size.max(1))
            .map_err(|e| CacheError::InvalidInput(format!("Redis pool: {}", e.details())))?;
        // Every (re)connection of every pooled client, the first included. Subscribed
        // before connecting so that none is missed.
        let reconnects = Arc::new(AtomicU64::new(0));
        let mut tasks: Vec<JoinHandle<()>> = pool
            .clients()
            .iter()
            .map(|client| {
                let mut events = client.reconnect_rx();
                let reconnects = reconnects.clone();
                tokio::spawn(async move {
                    use tokio::sync::broadcast::error::RecvError;
                    // `Lagged` lost events but says some happened; `Closed` ends it.
                    while let Ok(_) | Err(RecvError::Lagged(_)) = events.recv().await {
                        reconnects.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        // Spawns the connection tasks; they reconnect on their own from now on.
        pool.connect_pool();
        let connected = tokio::time::timeout(config.connect_timeout, pool.wait_for_connect())
            .await
            .is_ok_and(|r| r.is_ok());
        if !connected {
            tracing::warn!(
                url = %redact_url(&config.url),
                "Redis not reachable at start; reconnecting in the background"
            );
        }
        let healthy = Arc::new(AtomicBool::new(connected));
        tasks.push(tokio::spawn(health_loop(
            pool.clone(),
            healthy.clone(),
            config.health_check_interval,
            config.command_timeout,
        )));
        let base = Layout::new(&config.key_prefix);
        let (layout, unnamespaced) = match &config.namespace {
            Some(namespace) if !namespace.is_empty() => {
                if namespace
                    .chars()
                    .any(|c| c.is_control() || c.is_whitespace())
                {
                    return Err(CacheError::InvalidInput(
                        "the Redis namespace contains whitespace or a control character".into(),
                    ));
                }
                let layout = Layout::new(&format!("{}{namespace}:", config.key_prefix));
                (layout, config.migrate_unnamespaced.then_some(base))
            }
            _ => (base, None),
        };
        Ok(RedisCache {
            inner: Arc::new(Inner {
                pool,
                clock,
                stats: StatsCounters::default(),
                healthy,
                command_timeout: config.command_timeout,
                expiry_index: layout.expiry_index,
                policy_index: layout.policy_index,
                prefix: layout.prefix,
                unnamespaced,
                policy: config.policy,
                max_entries: config.max_entries.max(1),
                reconnects,
                tasks,
            }),
        })
    }

    /// The result of the last health check (or of the last call's connection state).
    pub fn is_healthy(&self) -> bool {
        self.inner.healthy.load(Ordering::Relaxed)
    }

    fn entry_key(&self, key: &str) -> String {
        format!("{}{key}", self.inner.prefix)
    }

    /// Runs `op` under the command deadline, mapping and counting failures.
    async fn run<T, F>(&self, op: F) -> Result<T>
    where
        F: std::future::Future<Output = Result<T, FredError>>,
    {
        match tokio::time::timeout(self.inner.command_timeout, op).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => {
                let err = map_error(&err, self.inner.command_timeout);
                if err.is_retryable() {
                    self.inner.stats.error();
                }
                Err(err)
            }
            Err(_) => {
                self.inner.stats.error();
                self.inner.healthy.store(false, Ordering::Relaxed);
                Err(CacheError::Timeout(self.inner.command_timeout))
            }
        }
    }

    /// Queues the lookup-and-record-access commands for one key on `pipe`.
    async fn queue_lookup(
        &self,
        pipe: &fred::clients::Pipeline<fred::clients::Client>,
        key: &str,
        now: f64,
    ) -> Result<(), FredError> {
        let entry_key = self.entry_key(key);
        let _: () = pipe.hgetall(&entry_key).await?;
        let _: () = pipe.hincrby(&entry_key, "access_count", 1).await?;
        let _: () = pipe
            .hset(&entry_key, ("last_accessed", now.to_string()))
            .await?;
        let _: () = pipe
            .expire(&entry_key, STUB_TTL_SECS, Some(ExpireOptions::NX))
            .await?;
        // LRU: the score becomes the access time; LFU: it goes up by one (`INCR`); FIFO:
        // reads do not move an entry. `XX`: never add a member for a missing key.
        let (score, increment) = match self.inner.policy.kind() {
            Kind::Lru => (now, false),
            Kind::Lfu => (1.0, true),
            Kind::Fifo => return Ok(()),
        };
        let _: () = pipe
            .zadd(
                &self.inner.policy_index,
                Some(SetOptions::XX),
                None,
                false,
                increment,
                (score, key),
            )
            .await?;
        Ok(())
    }

    fn commands_per_lookup(&self) -> usize {
        match self.inner.policy.kind() {
            Kind::Lru | Kind::Lfu => 5,
            Kind::Fifo => 4,
        }
    }

    /// Turns one key's pipeline replies into the lookup's outcome, counting it. A
    /// corrupt entry is dropped and read as a miss; only backend trouble is an error.
    async fn finish_lookup(
        &self,
        key: &str,
        replies: &mut std::vec::IntoIter<Result<Value, FredError>>,
        now: f64,
        migrate: bool,
    ) -> Result<Option<CacheEntry>> {
        let hash = replies.next();
        let count = replies.next();
        for _ in 2..self.commands_per_lookup() {
            replies.next();
        }
        let fields: HashMap<String, String> = match hash {
            Some(Ok(value)) => match value.convert() {
                Ok(fields) => fields,
                Err(err) => return self.drop_corrupt(key, err.details()).await,
            },
            Some(Err(err)) if is_wrong_type(&err) => {
                // The original system's JSON string (or garbage) under the entry key.
                return self
                    .adopt(&self.entry_key(key), None, key, now, false)
                    .await;
            }
            Some(Err(err)) => {
                self.inner.stats.error();
                return Err(map_error(&err, self.inner.command_timeout));
            }
            None => {
                self.inner.stats.error();
                return Err(CacheError::Unavailable("truncated pipeline reply".into()));
            }
        };
        if !fields.contains_key("url") {
            // Absent, or only the stub a missed lookup leaves; perhaps still where the
            // layout without namespace kept it.
            if let Some(old) = self.inner.unnamespaced.as_ref().filter(|_| migrate) {
                let old_key = format!("{}{key}", old.prefix);
                return self.adopt(&old_key, Some(old), key, now, true).await;
            }
            self.inner.stats.miss(1);
            return Ok(None);
        }
        let mut entry = match parse_entry(key, &fields) {
            Ok(entry) => entry,
            Err(err) => return self.drop_corrupt(key, &err.to_string()).await,
        };
        if now >= entry.expires_at_unix() {
            self.inner.stats.expired(1);
            // Redis expires the hash on its own clock; ours said it is gone, so drop it.
            self.delete_or_log(key).await;
            return Ok(None);
        }
        if let Some(Ok(count)) = count {
            entry.access_count = count.convert::<u64>().unwrap_or(entry.access_count + 1);
        }
        entry.last_accessed = from_unix_secs(now);
        self.inner.stats.hit(1);
        Ok(Some(entry))
    }

    /// Moves an entry kept in an older form into this layout and answers the lookup:
    /// at `raw_key` either a hash of the layout without namespace (whose index members
    /// are in `old_indexes`) or the original system's JSON string (`hash` false: the key
    /// is known not to hold a hash). Whatever is there leaves; a live entry is stored
    /// here and is a hit, an expired one counts `expired`, an unreadable one `corrupt`.
    async fn adopt(
        &self,
        raw_key: &str,
        old_indexes: Option<&Layout>,
        key: &str,
        now: f64,
        hash: bool,
    ) -> Result<Option<CacheEntry>> {
        let client = self.inner.pool.next_connected();
        let fields: Option<Result<HashMap<String, String>>> = if hash {
            Some(self.run(client.hgetall(raw_key)).await)
        } else {
            None
        };
        let (found, entry) = match fields {
            Some(Ok(fields)) => (
                !fields.is_empty(),
                fields
                    .contains_key("url")
                    .then(|| parse_entry(key, &fields).ok())
                    .flatten(),
            ),
            // Not a hash: the original system's JSON string, or garbage.
            None | Some(Err(CacheError::Corrupt { .. })) => {
                let json: Result<Option<String>> = self.run(client.get(raw_key)).await;
                match json {
                    Ok(json) => (
                        json.is_some(),
                        json.and_then(|json| serde_json::from_str::<CacheEntry>(&json).ok()),
                    ),
                    Err(CacheError::Corrupt { .. }) => (true, None),
                    Err(err) => return Err(err),
                }
            }
            Some(Err(err)) => return Err(err),
        };
        if !found {
            self.inner.stats.miss(1);
            return Ok(None);
        }
        let pipe = self.inner.pool.next_connected().pipeline();
        let op = async {
            let _: () = pipe.del(raw_key).await?;
            if let Some(old) = old_indexes {
                let _: () = pipe.zrem(&old.expiry_index, key).await?;
                let _: () = pipe.zrem(&old.policy_index, key).await?;
            }
            let _: Vec<Value> = pipe.all().await?;
            Ok(())
        };
        self.run(op).await?;
        match entry {
            None => {
                self.inner.stats.corrupt();
                self.inner.stats.miss(1);
                tracing::warn!(key, "corrupt cache entry (an older form) dropped");
                Ok(None)
            }
            Some(entry) if (now >= entry.expires_at_unix()) => {
                self.inner.stats.expired(1);
                Ok(None)
            }
            Some(mut entry) => {
                entry.image_key = key.to_owned();
                entry.access_count += 1;
                entry.last_accessed = from_unix_secs(now);
                self.store(entry.clone()).await?;
                self.inner.stats.hit(1);
                Ok(Some(entry))
            }
        }
    }

    /// A lookup found an entry it cannot read: count it, say so once (it is deleted, so
    /// it will not be met again), and answer a miss.
    async fn drop_corrupt(&self, key: &str, reason: &str) -> Result<Option<CacheEntry>> {
        self.inner.stats.corrupt();
        self.inner.stats.miss(1);
        tracing::warn!(key, reason, "corrupt cache entry dropped");
        self.delete_or_log(key).await;
        Ok(None)
    }

    /// Deletes an entry that must go (expired or corrupt). If Redis cannot do it now,
    /// the next `put` overwrites the entry, so the failure is only worth a debug line.
    async fn delete_or_log(&self, key: &str) {
        if let Err(err) = self.delete_quietly(key).await {
            tracing::debug!(key, error = %err, "could not delete a dead cache entry");
        }
    }

    /// The Redis key of lease `name`, beside this cache's indexes.
    fn lease_key(&self, name: &str) -> String {
        format!(
            "{}:lease:{name}",
            self.inner.expiry_index.trim_end_matches(":expiry")
        )
    }

    async fn delete_quietly(&self, key: &str) -> Result<bool> {
        let pipe = self.inner.pool.next_connected().pipeline();
        let entry_key = self.entry_key(key);
        let op = async {
            let _: () = pipe.del(&entry_key).await?;
            let _: () = pipe.zrem(&self.inner.expiry_index, key).await?;
            let _: () = pipe.zrem(&self.inner.policy_index, key).await?;
            let (deleted, _, _): (i64, i64, i64) = pipe.all().await?;
            Ok(deleted > 0)
        };
        self.run(op).await
    }

    /// Writes `entry` (already validated and live) and enforces the capacity. A value of
    /// another type under the key (corrupt) is deleted first, then the write is retried.
    async fn store(&self, entry: CacheEntry) -> Result<()> {
        match self.store_once(entry.clone()).await {
            Err(CacheError::Corrupt { reason, .. }) => {
                self.inner.stats.corrupt();
                tracing::warn!(key = %entry.image_key, reason, "corrupt cache entry overwritten");
                self.delete_quietly(&entry.image_key).await?;
                self.store_once(entry).await
            }
            other => other,
        }
    }

    async fn store_once(&self, entry: CacheEntry) -> Result<()> {
        let key = entry.image_key.clone();
        let pipe = self.inner.pool.next_connected().pipeline();
        let op = async {
            self.queue_store(&pipe, entry).await?;
            let _: () = pipe.zcard(&self.inner.policy_index).await?;
            let replies: Vec<Value> = pipe.all().await?;
            Ok(replies.last().and_then(|v| v.as_u64()).unwrap_or(0))
        };
        let held = self.run(op).await?;
        self.enforce_capacity(held, &key).await
    }

    /// Queues the commands that write `entry` and index it on `pipe`.
    async fn queue_store(
        &self,
        pipe: &fred::clients::Pipeline<fred::clients::Client>,
        entry: CacheEntry,
    ) -> Result<(), FredError> {
        let entry_key = self.entry_key(&entry.image_key);
        // From the entry, not the clock: a refreshed entry (same creation and last use)
        // keeps its place in the eviction order.
        let order_score = match self.inner.policy.kind() {
            Kind::Lru => entry.last_accessed_unix(),
            Kind::Fifo => entry.created_at_unix(),
            Kind::Lfu => entry.access_count as f64,
        };
        let expires_unix = entry.expires_at_unix();
        let expires_ms = (expires_unix * 1000.0).ceil() as i64;
        let key = entry.image_key.clone();
        let mut fields = vec![
            ("expires_at", expires_unix.to_string()),
            ("access_count", entry.access_count.to_string()),
            ("created_at", entry.created_at_unix().to_string()),
            ("last_accessed", entry.last_accessed_unix().to_string()),
            ("url", entry.url),
            ("image_key", entry.image_key),
        ];
        let has_mime = entry.mime_type.is_some();
        if let Some(mime) = entry.mime_type {
            fields.push(("mime_type", mime));
        }
        // Overwrite field by field (no DEL first): a concurrent reader sees the old
        // entry or the new one, never a gap.
        let _: () = pipe.hset(&entry_key, fields).await?;
        if !has_mime {
            let _: () = pipe.hdel(&entry_key, "mime_type").await?;
        }
        let _: () = pipe.pexpire_at(&entry_key, expires_ms, None).await?;
        let _: () = pipe
            .zadd(
                &self.inner.expiry_index,
                None,
                None,
                false,
                false,
                (expires_unix, key.as_str()),
            )
            .await?;
        let _: () = pipe
            .zadd(
                &self.inner.policy_index,
                None,
                None,
                false,
                false,
                (order_score, key.as_str()),
            )
            .await?;
        Ok(())
    }

    async fn enforce_capacity(&self, held: u64, just_written: &str) -> Result<()> {
        if held as usize > self.inner.max_entries {
            self.evict(held as usize - self.inner.max_entries, just_written)
                .await?;
        }
        Ok(())
    }

    /// Removes `surplus` entries from the bottom of the policy order, never `just_written`
    /// (under LFU a new entry starts at the bottom). `ZPOPMIN` is atomic, so concurrent
    /// writers never evict the same entry twice.
    async fn evict(&self, surplus: usize, just_written: &str) -> Result<()> {
        let client = self.inner.pool.next_connected();
        let mut popped: Vec<(String, f64)> = self
            .run(client.zpopmin(&self.inner.policy_index, Some(surplus + 1)))
            .await?;
        // Give back what was popped beyond the surplus: the new entry, or the extra one.
        let mut give_back: Vec<(f64, String)> = Vec::new();
        if let Some(pos) = popped.iter().position(|(k, _)| k == just_written) {
            let (k, score) = popped.remove(pos);
            give_back.push((score, k));
        }
        while popped.len() > surplus {
            if let Some((k, score)) = popped.pop() {
                give_back.push((score, k));
            }
        }
        if !give_back.is_empty() {
            let client = self.inner.pool.next_connected();
            let members: Vec<(f64, &str)> =
                give_back.iter().map(|(s, k)| (*s, k.as_str())).collect();
            let _: i64 = self
                .run(client.zadd(
                    &self.inner.policy_index,
                    Some(SetOptions::NX),
                    None,
                    false,
                    false,
                    members,
                ))
                .await?;
        }
        if popped.is_empty() {
            return Ok(());
        }
        let pipe = self.inner.pool.next_connected().pipeline();
        let op = async {
            for (key, _) in &popped {
                let _: () = pipe.del(self.entry_key(key)).await?;
            }
            let members: Vec<&str> = popped.iter().map(|(k, _)| k.as_str()).collect();
            let _: () = pipe.zrem(&self.inner.expiry_index, members).await?;
            let _: Vec<Value> = pipe.all().await?;
            Ok(())
        };
        self.run(op).await?;
        self.inner.stats.evicted(popped.len() as u64);
        Ok(())
    }
}

/// Where a layout keeps its entries and indexes.
struct Layout {
    prefix: String,
    expiry_index: String,
    policy_index: String,
}

impl Layout {
    /// The index prefix is the entry prefix without its trailing `:` plus `-index`, so no
    /// object key can collide with an index.
    fn new(prefix: &str) -> Self {
        let index = format!("{}-index", prefix.trim_end_matches(':'));
        Layout {
            prefix: prefix.to_owned(),
            expiry_index: format!("{index}:expiry"),
            policy_index: format!("{index}:policy"),
        }
    }
}

async fn health_loop(pool: Pool, healthy: Arc<AtomicBool>, every: Duration, timeout: Duration) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let ok = matches!(
            tokio::time::timeout(timeout, pool.next().ping::<String>(None)).await,
            Ok(Ok(_))
        );
        if healthy.swap(ok, Ordering::Relaxed) != ok {
            if ok {
                tracing::info!("Redis reachable again");
            } else {
                tracing::warn!("Redis health check failed");
            }
        }
    }
}

/// A reply saying the key holds a value of another type than the command expects.
fn is_wrong_type(err: &FredError) -> bool {
    err.details().starts_with("WRONGTYPE")
}

fn map_error(err: &FredError, timeout: Duration) -> CacheError {
    if is_wrong_type(err) {
        // The data is bad, not the backend.
        return CacheError::Corrupt {
            key: String::new(),
            reason: err.details().to_owned(),
        };
    }
    match err.kind() {
        ErrorKind::Timeout => CacheError::Timeout(timeout),
        ErrorKind::Parse => CacheError::Corrupt {
            key: String::new(),
            reason: err.details().to_owned(),
        },
        _ => CacheError::Unavailable(format!("{:?}: {}", err.kind(), err.details())),
    }
}

fn parse_entry(key: &str, fields: &HashMap<String, String>) -> Result<CacheEntry> {
    let corrupt = |field: &str| CacheError::Corrupt {
        key: key.to_owned(),
        reason: format!("field {field} is missing or malformed"),
    };
    let number = |field: &str| -> Result<f64> {
        fields
            .get(field)
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| v.is_finite())
            .ok_or_else(|| corrupt(field))
    };
    Ok(CacheEntry {
        url: fields.get("url").cloned().ok_or_else(|| corrupt("url"))?,
        expires_at: from_unix_secs(number("expires_at")?),
        access_count: fields
            .get("access_count")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        created_at: from_unix_secs(number("created_at")?),
        last_accessed: from_unix_secs(number("last_accessed").unwrap_or(0.0)),
        image_key: fields
            .get("image_key")
            .cloned()
            .unwrap_or_else(|| key.to_owned()),
        mime_type: fields.get("mime_type").cloned(),
    })
}

#[async_trait]
impl UrlCache for RedisCache {
    async fn get(&self, key: &str) -> Result<Option<CacheEntry>> {
        // One key is a batch of one: the same pipeline, the same reply handling.
        Ok(self.get_many(&[key]).await?.pop().flatten())
    }

    async fn peek(&self, key: &str) -> Result<Option<CacheEntry>> {
        validate_key(key)?;
        let now = self.inner.clock.now_unix();
        let client = self.inner.pool.next_connected();
        let fields: Result<HashMap<String, String>> =
            self.run(client.hgetall(self.entry_key(key))).await;
        let fields = match fields {
            Ok(fields) => fields,
            // A legacy JSON string (`get` migrates it) or a corrupt value (`get` drops
            // it): peeking changes nothing and only reports absence.
            Err(CacheError::Corrupt { .. }) => return Ok(None),
            Err(err) => return Err(err),
        };
        if !fields.contains_key("url") {
            return Ok(None);
        }
        Ok(parse_entry(key, &fields)
            .ok()
            .filter(|entry| now < entry.expires_at_unix()))
    }

    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<CacheEntry>>> {
        for key in keys {
            validate_key(key)?;
        }
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let now = self.inner.clock.now_unix();
        // Moving entries from the layout without namespace costs a round trip per miss:
        // worth it for a single lookup, not for a batch, whose misses are signed anew
        // (the old entries then simply expire).
        let migrate = keys.len() == 1;
        let pipe = self.inner.pool.next_connected().pipeline();
        for key in keys {
            self.queue_lookup(&pipe, key, now)
                .await
                .map_err(|e| map_error(&e, self.inner.command_timeout))?;
        }
        let replies = self
            .run(async { Ok(pipe.try_all::<Value>().await) })
            .await?;
        if replies.len() == 1 && keys.len() > 1 {
            // The whole pipeline failed (e.g. disconnected): one error for the batch.
            if let Some(Err(err)) = replies.into_iter().next() {
                self.inner.stats.error();
                return Err(map_error(&err, self.inner.command_timeout));
            }
            return Err(CacheError::Unavailable("truncated pipeline reply".into()));
        }
        let mut replies = replies.into_iter();
        let mut found = Vec::with_capacity(keys.len());
        for key in keys {
            found.push(self.finish_lookup(key, &mut replies, now, migrate).await?);
        }
        Ok(found)
    }

    async fn put(&self, entry: CacheEntry) -> Result<()> {
        validate_entry(&entry)?;
        let now = self.inner.clock.now_unix();
        if now >= entry.expires_at_unix() {
            self.delete_quietly(&entry.image_key).await?;
            return Ok(());
        }
        self.store(entry).await
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        validate_key(key)?;
        self.delete_quietly(key).await
    }

    async fn put_many(&self, entries: Vec<CacheEntry>) -> Result<()> {
        for entry in &entries {
            validate_entry(entry)?;
        }
        let now = self.inner.clock.now_unix();
        let (live, expired): (Vec<_>, Vec<_>) =
            entries.into_iter().partition(|e| now < e.expires_at_unix());
        if !expired.is_empty() {
            let keys: Vec<&str> = expired.iter().map(|e| e.image_key.as_str()).collect();
            self.delete_many(&keys).await?;
        }
        let Some(last) = live.last().map(|e| e.image_key.clone()) else {
            return Ok(());
        };
        let pipe = self.inner.pool.next_connected().pipeline();
        let op = async {
            for entry in live.iter().cloned() {
                self.queue_store(&pipe, entry).await?;
            }
            let _: () = pipe.zcard(&self.inner.policy_index).await?;
            let replies: Vec<Value> = pipe.all().await?;
            Ok(replies.last().and_then(|v| v.as_u64()).unwrap_or(0))
        };
        match self.run(op).await {
            Ok(held) => self.enforce_capacity(held, &last).await,
            // A key of another type in the batch: write one by one, which repairs it.
            Err(CacheError::Corrupt { .. }) => {
                for entry in live {
                    self.store(entry).await?;
                }
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    async fn delete_many(&self, keys: &[&str]) -> Result<usize> {
        for key in keys {
            validate_key(key)?;
        }
        if keys.is_empty() {
            return Ok(0);
        }
        let pipe = self.inner.pool.next_connected().pipeline();
        let op = async {
            let entry_keys: Vec<String> = keys.iter().map(|k| self.entry_key(k)).collect();
            let _: () = pipe.del(entry_keys).await?;
            let members: Vec<&str> = keys.to_vec();
            let _: () = pipe.zrem(&self.inner.expiry_index, members.clone()).await?;
            let _: () = pipe.zrem(&self.inner.policy_index, members).await?;
            let (deleted, _, _): (i64, i64, i64) = pipe.all().await?;
            Ok(deleted.max(0) as usize)
        };
        self.run(op).await
    }

    async fn try_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
        let key = self.lease_key(name);
        let ttl_ms = ttl.as_millis().max(1) as i64;
        let client = self.inner.pool.next_connected();
        // Take it if free (SET NX PX), or extend it if ours, in one atomic step.
        let op = async {
            let held: i64 = client
                .eval(
                    LEASE_ACQUIRE,
                    vec![key.as_str()],
                    vec![holder.to_owned(), ttl_ms.to_string()],
                )
                .await?;
            Ok(held == 1)
        };
        self.run(op).await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        let key = self.lease_key(name);
        let client = self.inner.pool.next_connected();
        // Delete only if the token is still ours: an expired lease taken over by another
        // replica is never released from under it.
        let op = async {
            let _: i64 = client
                .eval(LEASE_RELEASE, vec![key.as_str()], vec![holder.to_owned()])
                .await?;
            Ok(())
        };
        self.run(op).await
    }

    async fn lease_holder(&self, name: &str) -> Result<Option<String>> {
        let key = self.lease_key(name);
        let client = self.inner.pool.next_connected();
        self.run(async { client.get::<Option<String>, _>(key.as_str()).await })
            .await
    }

    async fn expiring_within(&self, within: Duration, limit: usize) -> Result<Vec<CacheEntry>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let now = self.inner.clock.now_unix();
        let until = now + within.as_secs_f64();
        let client = self.inner.pool.next_connected();
        let keys: Vec<String> = self
            .run(client.zrangebyscore(
                &self.inner.expiry_index,
                now,
                until,
                false,
                Some((0, limit as i64)),
            ))
            .await?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let pipe = self.inner.pool.next_connected().pipeline();
        let op = async {
            for key in &keys {
                let _: () = pipe.hgetall(self.entry_key(key)).await?;
            }
            pipe.all::<Vec<HashMap<String, String>>>().await
        };
        let hashes = self.run(op).await?;
        let mut found: Vec<CacheEntry> = keys
            .iter()
            .zip(hashes)
            .filter(|(_, fields)| fields.contains_key("url"))
            .filter_map(|(key, fields)| parse_entry(key, &fields).ok())
            .filter(|e| now < e.expires_at_unix() && e.expires_at_unix() <= until)
            .collect();
        found.sort_by_key(|e| e.expires_at);
        Ok(found)
    }

    async fn remove_expired(&self, batch_size: usize) -> Result<usize> {
        let batch_size = batch_size.max(1);
        let mut total = 0;
        loop {
            let now = self.inner.clock.now_unix();
            let client = self.inner.pool.next_connected();
            let keys: Vec<String> = self
                .run(client.zrangebyscore(
                    &self.inner.expiry_index,
                    f64::NEG_INFINITY,
                    now,
                    false,
                    Some((0, batch_size as i64)),
                ))
                .await?;
            if keys.is_empty() {
                break;
            }
            let pipe = self.inner.pool.next_connected().pipeline();
            let op = async {
                let members: Vec<&str> = keys.iter().map(String::as_str).collect();
                let _: () = pipe.zrem(&self.inner.expiry_index, members.clone()).await?;
                let _: () = pipe.zrem(&self.inner.policy_index, members).await?;
                for key in &keys {
                    let _: () = pipe.del(self.entry_key(key)).await?;
                }
                pipe.all::<Vec<Value>>().await
            };
            self.run(op).await?;
            total += keys.len();
            if keys.len() < batch_size {
                break;
            }
        }
        Ok(total)
    }

    async fn len(&self) -> Result<usize> {
        let client = self.inner.pool.next_connected();
        let n: u64 = self.run(client.zcard(&self.inner.expiry_index)).await?;
        Ok(n as usize)
    }

    async fn health_check(&self) -> Result<()> {
        let client = self.inner.pool.next_connected();
        let result = self.run(client.ping::<String>(None)).await;
        self.inner.healthy.store(result.is_ok(), Ordering::Relaxed);
        result.map(|_| ())
    }

    fn stats(&self) -> CacheStats {
        self.inner.stats.snapshot()
    }

    fn reconnects(&self) -> u64 {
        self.inner.reconnects.load(Ordering::Relaxed)
    }

    fn backend(&self) -> &'static str {
        "redis"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact_url("redis://:pw@h:1/0"), "redis://<redacted>@h:1/0");
        assert_eq!(redact_url("redis://h:1"), "redis://h:1");
        let shown = format!("{:?}", RedisConfig::new("redis://u:secret@h:6379"));
        assert!(!shown.contains("secret"));
    }
}
