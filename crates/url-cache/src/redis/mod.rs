//! The Redis backend (fred): a standalone server, a Cluster or a Sentinel-managed master.
//!
//! Data layout (see `docs/redis-layout.md`):
//!
//! - `{prefix}{key}` — a hash with the entry's fields (`url`, `expires_at`,
//!   `access_count`, `created_at`, `last_accessed`, `image_key`, `mime_type`), expiring
//!   with the URL (`PEXPIREAT`).
//! - `{{index}:N}:expiry`, N = 0..shards — sorted sets, member = key, score = `expires_at`:
//!   "expiring within" and cleanup are `ZRANGEBYSCORE` ranges over every shard, merged;
//!   never a keyspace scan.
//! - `{{index}:N}:policy` — sorted sets, member = key, score = the eviction order (LRU: last
//!   access time, FIFO: insertion time, LFU: access count). When the shards together hold
//!   more than the capacity after a put, the lowest scores across the shards go.
//!
//! A key's index members live in shard `fnv1a(key) % shards` (default 16), so no single
//! sorted set (in a Cluster, no single slot) takes every write. Both sets of a shard share
//! a hash tag, so they sit in one slot. `{index}` is the prefix without its trailing `:`
//! plus `-index` (`image:url-index`), so no object key can collide with an index.
//!
//! A hit is one command, `HMGET` of the entry's fields ([`hash`]). The access bookkeeping
//! (count, last access, the policy index) is added up in the process ([`access`]) and
//! written in batches ([`mod@flush`]). No command spans two keys atomically, so the layout
//! works on a Cluster; each script (a lease, an entry's accesses, one policy shard's)
//! touches one key.

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
use fred::types::SetOptions;
use tokio::task::JoinHandle;

use crate::clock::from_unix_secs;

mod access;
mod flush;
mod hash;
mod held;
mod l1;
use access::AccessBuffer;
use flush::{flush, flush_loop, FlushScripts};
use fred::interfaces::PubsubInterface;
use hash::{field_keys, parse_entry, EntryFields, Fields};
use held::HeldCount;
use l1::{Held, L1};

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

/// Invalidation messages the subscriber holds until the L1 applies them (fred's default
/// is 32). When more arrive before the L1's task runs, the oldest are lost, and since it
/// cannot know which keys they named the L1 must empty itself whole. Every replica
/// receives every put's message, its own included (ignored by id), so a burst of misses
/// on a busy process overflowed 32: measured on the Zipf load of `benches/load/redis.sh`,
/// the L1 emptied several times a second, and the surge of lookups to Redis that followed
/// timed out and opened the service's breaker. Preallocated by fred, for each of the
/// subscriber's nine event channels: about 3 MB with an L1, nothing without.
const INVALIDATION_BUFFER: usize = 4096;

thread_local! {
    /// Per-thread clients of the lookup path, by cache id. They live as long as their
    /// thread (an actix worker lives as long as the server); a cache dropped earlier
    /// leaves its client to the thread's end, whose runtime then ends its connection.
    #[allow(clippy::type_complexity)]
    static THREAD_CLIENTS: std::cell::RefCell<
        HashMap<u64, (fred::clients::Client, std::sync::Weak<()>)>,
    > = std::cell::RefCell::new(HashMap::new());
}

/// FNV-1a, 64 bits: which index shard (and which access-buffer lock) a key belongs to.
/// Fixed forever: changing it would move every key to another shard.
pub(crate) fn fnv1a(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Connection and layout settings for [`RedisCache`].
#[derive(Clone)]
#[non_exhaustive]
pub struct RedisConfig {
    /// Where Redis is, in fred's URL forms: `redis://[user:password@]host:port[/db]`
    /// (`rediss://` with TLS), a Cluster as
    /// `redis-cluster://host:port[?node=host:port&node=…]` (one node is enough, the rest
    /// are discovered), or a master behind Sentinel as
    /// `redis-sentinel://host:port[/db]?sentinelServiceName=NAME[&node=host:port…]`
    /// (the sentinels' addresses).
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
    /// Index shards (default 16, 1..=1024): the expiry and policy indexes are split into
    /// this many sorted sets. Keep it fixed for a namespace: after a change, index
    /// members in shards that are no longer read are left until their entries expire.
    pub index_shards: usize,
    /// How often the accesses recorded in the process are written (default 1 s).
    pub access_flush_interval: Duration,
    /// Most distinct keys whose accesses wait for the next flush (default 65 536);
    /// beyond, accesses of new keys are dropped (and counted), never blocking a read.
    pub access_buffer_keys: usize,
    /// Entries kept in the process in front of Redis (an L1), so that a hot key costs no
    /// round trip; 0 (the default) turns the L1 off. Kept coherent across replicas by
    /// invalidations over Redis pub/sub.
    pub l1_max_entries: usize,
    /// Longest time an entry stays in the L1 (default 60 s), whatever the invalidations.
    pub l1_ttl: Duration,
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
            index_shards: 16,
            access_flush_interval: Duration::from_secs(1),
            access_buffer_keys: 65_536,
            l1_max_entries: 0,
            l1_ttl: Duration::from_secs(60),
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
            .field("index_shards", &self.index_shards)
            .field("access_flush_interval", &self.access_flush_interval)
            .field("l1_max_entries", &self.l1_max_entries)
            .field("l1_ttl", &self.l1_ttl)
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
    /// Builds the per-thread clients of the lookup path ([`RedisCache::lookup_client`]):
    /// the pool's configuration without fred's own command deadline (every lookup runs
    /// under [`RedisCache::run`]'s).
    builder: Builder,
    /// This cache among the per-thread clients of a thread.
    id: u64,
    clock: Arc<dyn Clock>,
    stats: StatsCounters,
    healthy: Arc<AtomicBool>,
    command_timeout: Duration,
    layout: Arc<Layout>,
    /// With a namespace and migration on: where entries without namespace live.
    unnamespaced: Option<Layout>,
    /// Accesses not yet written to Redis.
    access: Arc<AccessBuffer>,
    /// The access flush's scripts.
    scripts: Arc<FlushScripts>,
    /// The in-process cache in front of Redis, when on.
    l1: Option<Arc<L1>>,
    /// The L1's subscription to invalidations.
    subscriber: Option<fred::clients::SubscriberClient>,
    policy: EvictionPolicy,
    max_entries: usize,
    /// The entries held, as far as puts need to know ([`held`]).
    held: HeldCount,
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
        let subscriber = self.subscriber.take();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = pool.quit().await;
                if let Some(subscriber) = subscriber {
                    let _ = subscriber.quit().await;
                }
            });
        }
    }
}

impl fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCache")
            .field("prefix", &self.inner.layout.prefix)
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
        const SCHEMES: [&str; 6] = [
            "redis://",
            "rediss://",
            "redis-cluster://",
            "rediss-cluster://",
            "redis-sentinel://",
            "rediss-sentinel://",
        ];
        if !SCHEMES.iter().any(|scheme| config.url.starts_with(scheme)) {
            return Err(CacheError::InvalidInput(format!(
                "invalid Redis URL {}: expected redis://host:port, redis-cluster://host:port or redis-sentinel://host:port?sentinelServiceName=NAME",
                redact_url(&config.url)
            )));
        }
        if !(1..=1024).contains(&config.index_shards) {
            return Err(CacheError::InvalidInput(format!(
                "index_shards must be 1..=1024, not {}",
                config.index_shards
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
        let mut builder = Builder::from_config(fred_config);
        builder
            .with_connection_config(|c| {
                c.connection_timeout = config.connect_timeout;
                c.internal_command_timeout = config.command_timeout;
                c.max_command_buffer_len = config.command_buffer;
            })
            .with_performance_config(|p| {
                p.default_command_timeout = config.command_timeout;
            })
            .set_policy(reconnect);
        let pool = builder
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
        let shards = config.index_shards;
        if config.key_prefix.contains(['{', '}']) {
            return Err(CacheError::InvalidInput(
                "the Redis key prefix contains { or } (the index shards' hash tags)".into(),
            ));
        }
        let base = Layout::new(&config.key_prefix, shards);
        let (layout, unnamespaced) = match &config.namespace {
            Some(namespace) if !namespace.is_empty() => {
                if namespace
                    .chars()
                    .any(|c| c.is_control() || c.is_whitespace() || c == '{' || c == '}')
                {
                    return Err(CacheError::InvalidInput(
                        "the Redis namespace contains whitespace, a control character, { or }"
                            .into(),
                    ));
                }
                let layout = Layout::new(&format!("{}{namespace}:", config.key_prefix), shards);
                (layout, config.migrate_unnamespaced.then_some(base))
            }
            _ => (base, None),
        };
        let layout = Arc::new(layout);
        let access = Arc::new(AccessBuffer::new(config.access_buffer_keys));
        let scripts = Arc::new(FlushScripts::new());
        tasks.push(tokio::spawn(flush_loop(
            pool.clone(),
            layout.clone(),
            config.policy.kind(),
            scripts.clone(),
            access.clone(),
            config.access_flush_interval,
            config.command_timeout,
        )));
        tasks.push(tokio::spawn(migrate_unsharded(
            pool.clone(),
            layout.clone(),
            config.command_timeout,
        )));
        let (l1, subscriber) = if config.l1_max_entries > 0 {
            let l1 = Arc::new(L1::new(
                config.l1_max_entries,
                config.l1_ttl,
                format!("{}:invalidate", layout.index),
            ));
            // The pool's builder: the same server, timeouts and reconnection policy; a
            // buffer of received messages big enough for a burst.
            let mut builder = builder.clone();
            builder.with_performance_config(|performance| {
                performance.broadcast_channel_capacity = INVALIDATION_BUFFER;
            });
            let subscriber = builder.build_subscriber_client().map_err(|e| {
                CacheError::InvalidInput(format!("Redis subscriber: {}", e.details()))
            })?;
            tasks.push(tokio::spawn(invalidations(subscriber.clone(), l1.clone())));
            // The L1 is off until subscribed: with Redis up, wait for that here, so that a
            // replica is whole when `connect` returns.
            if connected {
                let _ = tokio::time::timeout(config.connect_timeout, l1.wait_live()).await;
            }
            (Some(l1), Some(subscriber))
        } else {
            (None, None)
        };
        // The per-thread lookup clients carry no deadline of their own: their only
        // commands are lookups, each already under `run`'s deadline (and the service's,
        // far shorter). fred's default would arm a second timer on every hit.
        let mut lookup_builder = builder.clone();
        lookup_builder.with_performance_config(|performance| {
            performance.default_command_timeout = Duration::ZERO;
        });
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Ok(RedisCache {
            inner: Arc::new(Inner {
                pool,
                builder: lookup_builder,
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                clock,
                stats: StatsCounters::default(),
                healthy,
                command_timeout: config.command_timeout,
                layout,
                unnamespaced,
                access,
                scripts,
                l1,
                subscriber,
                policy: config.policy,
                max_entries: config.max_entries.max(1),
                held: HeldCount::new(config.max_entries.max(1)),
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
        self.inner.layout.entry_key(key)
    }

    /// The client a lookup sends its read with. On a current-thread runtime (an actix-web
    /// worker: each has its own) it is a client of this thread, created on first use,
    /// whose connection task runs on the same runtime: the read and its reply then never
    /// cross to another thread. Measured, the crossing to the pool's connection tasks on
    /// the main runtime was most of a Redis-backed request's CPU (two thread wake-ups per
    /// command). Anywhere else, the shared pool.
    fn lookup_client(&self) -> fred::clients::Client {
        use tokio::runtime::{Handle, RuntimeFlavor};
        let current_thread = Handle::try_current()
            .is_ok_and(|handle| handle.runtime_flavor() == RuntimeFlavor::CurrentThread);
        if !current_thread {
            return self.inner.pool.next_connected().clone();
        }
        THREAD_CLIENTS.with(|clients| {
            let mut clients = clients.borrow_mut();
            // A client whose runtime has ended (a thread can run one runtime after
            // another) has lost its connection task: build another.
            if let Some((client, alive)) = clients.get(&self.inner.id) {
                if alive.upgrade().is_some() {
                    // Until it has connected (the first calls on a thread, or during a
                    // reconnection), the shared pool answers: a new client's first
                    // command would wait for its connection (and, on a Cluster, for the
                    // slot map) past the service's deadline.
                    return if client.is_connected() {
                        client.clone()
                    } else {
                        self.inner.pool.next_connected().clone()
                    };
                }
            }
            match self.inner.builder.build() {
                Ok(client) => {
                    // The connection task joins this thread's runtime and reconnects on
                    // its own, like the pool's. A task that only holds `runtime` says
                    // whether that runtime still runs: it is dropped with it.
                    let _connection = client.connect();
                    let runtime = Arc::new(());
                    let alive = Arc::downgrade(&runtime);
                    tokio::spawn(async move {
                        let _runtime = runtime;
                        std::future::pending::<()>().await
                    });
                    clients.insert(self.inner.id, (client, alive));
                    self.inner.pool.next_connected().clone()
                }
                Err(_) => self.inner.pool.next_connected().clone(),
            }
        })
    }

    /// Writes the accesses recorded in this process now (the background task does it
    /// every `access_flush_interval`); how many keys' accesses were written.
    pub async fn flush_access(&self) -> Result<usize> {
        let inner = &self.inner;
        flush(
            &inner.pool,
            &inner.layout,
            inner.policy.kind(),
            &inner.scripts,
            &inner.access,
            inner.command_timeout,
        )
        .await
    }

    /// Accesses never written: dropped while the buffer was full, or lost with a flush
    /// that failed.
    pub fn access_updates_dropped(&self) -> u64 {
        self.inner.access.dropped()
    }

    /// Runs `op` under the command deadline, mapping and counting failures.
    ///
    /// A combinator, not an `async fn`: an `async fn` keeps its argument and the timeout
    /// built from it side by side in its state, and fred's command futures are about 5 KB
    /// each, so every lookup's future held one twice (and is copied whole).
    fn run<'a, T, F>(&'a self, op: F) -> impl std::future::Future<Output = Result<T>> + 'a
    where
        F: std::future::Future<Output = Result<T, FredError>> + 'a,
    {
        use futures_util::FutureExt;
        tokio::time::timeout(self.inner.command_timeout, op).map(move |outcome| match outcome {
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
        })
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
        let fields = match hash {
            Some(Ok(value)) => match Fields::from_reply(value) {
                Ok(fields) => fields,
                Err(reason) => return Box::pin(self.drop_corrupt(key, reason)).await,
            },
            Some(Err(err)) if is_wrong_type(&err) => {
                // The original system's JSON string (or garbage) under the entry key.
                return Box::pin(self.adopt(&self.entry_key(key), None, key, now, false)).await;
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
        if !fields.has_url() {
            // Absent, or a stub without a URL (an earlier version's access flush could
            // leave one); perhaps still where the layout without namespace kept it.
            if let Some(old) = self.inner.unnamespaced.as_ref().filter(|_| migrate) {
                let old_key = format!("{}{key}", old.prefix);
                return Box::pin(self.adopt(&old_key, Some(old), key, now, true)).await;
            }
            self.inner.stats.miss(1);
            return Ok(None);
        }
        let mut entry = match parse_entry(key, &fields) {
            Ok(entry) => entry,
            Err(err) => return Box::pin(self.drop_corrupt(key, &err.to_string())).await,
        };
        if now >= entry.expires_at_unix() {
            self.inner.stats.expired(1);
            // Redis expires the hash on its own clock; ours said it is gone, so drop it.
            Box::pin(self.delete_or_log(key)).await;
            return Ok(None);
        }
        // The access is recorded here and written with the next flush; the entry shows
        // the stored count plus this process's pending ones, this access included.
        // Under the entry's own key, shared, when it is the key looked up (it always is,
        // but for a hash some other writer left).
        let pending = if *entry.image_key == *key {
            self.inner.access.record(&entry.image_key, now)
        } else {
            self.inner.access.record(&Arc::from(key), now)
        };
        entry.access_count += pending.map_or(1, |p| p.count);
        entry.last_accessed = from_unix_secs(now);
        // With the count as answered: the L1's hits count on from it.
        if let Some(l1) = &self.inner.l1 {
            l1.insert(&entry, now);
        }
        self.inner.stats.hit(1);
        Ok(Some(entry))
    }

    /// An entry the L1 held, as a lookup answers it: counted (a hit, and an L1 hit), its
    /// access recorded for the next flush.
    /// The L1's entry for `key` if it is live at `now`; an expired one is dropped from
    /// the L1. `None` without an L1.
    fn live_in_l1(&self, key: &str, now: f64) -> Option<Arc<Held>> {
        let l1 = self.inner.l1.as_ref()?;
        let held = l1.get(key, now)?;
        if now < held.entry().expires_at_unix() {
            return Some(held);
        }
        l1.invalidate(&[key]);
        None
    }

    fn served_from_l1(&self, held: &Held, now: f64) -> CacheEntry {
        if let Some(l1) = &self.inner.l1 {
            l1.hit();
        }
        self.inner.stats.hit(1);
        // Recorded for the next flush (Redis's count); the answer counts from the L1's
        // own figure, which no flush changes.
        // The L1 holds the entry under its key: recorded under that, shared.
        self.inner.access.record(&held.entry().image_key, now);
        let mut entry = held.serve();
        entry.last_accessed = from_unix_secs(now);
        entry
    }

    /// With an L1: drops `keys` from it and queues their invalidation on `pipe` for the
    /// other replicas' L1s.
    async fn queue_invalidation<S: AsRef<str>>(
        &self,
        pipe: &fred::clients::Pipeline<fred::clients::Client>,
        keys: &[S],
    ) -> Result<(), FredError> {
        if let Some(l1) = &self.inner.l1 {
            if keys.is_empty() {
                return Ok(());
            }
            l1.invalidate(keys);
            let _: () = pipe.publish(&l1.channel, l1.message(keys)).await?;
        }
        Ok(())
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
                for index in [
                    old.legacy_expiry(),
                    old.legacy_policy(),
                    old.expiry_of(key),
                    old.policy_of(key),
                ] {
                    let _: () = pipe.zrem(index, key).await?;
                }
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
                entry.image_key = key.into();
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
        format!("{}:lease:{name}", self.inner.layout.index)
    }

    async fn delete_quietly(&self, key: &str) -> Result<bool> {
        self.inner.access.forget(key);
        let pipe = self.inner.pool.next_connected().pipeline();
        let entry_key = self.entry_key(key);
        let layout = &self.inner.layout;
        let op = async {
            let _: () = pipe.del(&entry_key).await?;
            let _: () = pipe.zrem(layout.expiry_of(key), key).await?;
            let _: () = pipe.zrem(layout.policy_of(key), key).await?;
            self.queue_invalidation(&pipe, &[key]).await?;
            let replies: Vec<i64> = pipe.all().await?;
            Ok(replies.first().is_some_and(|&deleted| deleted > 0))
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
        let now = self.inner.clock.now_unix();
        let count = self.inner.held.must_count(1, now);
        let op = async {
            self.queue_store(&pipe, entry).await?;
            self.queue_published(&pipe, &[&key]).await?;
            if count {
                self.queue_count(&pipe).await?;
            }
            let replies: Vec<Value> = pipe.all().await?;
            Ok(self.held_after_put(count.then_some(&replies[..]), 1, now))
        };
        let held = self.run(op).await?;
        self.enforce_capacity(held, &key).await
    }

    /// The entries held after a put of `new` entries, counted from the put's `ZCARD`
    /// replies when it sent them. Without them, `None`: the estimate grows, and only an
    /// exact count may evict (concurrent puts can each add to an estimate that none of
    /// them saw near the capacity).
    fn held_after_put(&self, replies: Option<&[Value]>, new: usize, now: f64) -> Option<u64> {
        match replies {
            Some(replies) => {
                let held = self.counted(replies);
                self.inner.held.counted(held, now);
                Some(held)
            }
            None => {
                self.inner.held.added(new);
                None
            }
        }
    }

    /// With an L1: queues the message that drops `keys` from the other replicas' L1s
    /// (this one's holds what was just written).
    async fn queue_published(
        &self,
        pipe: &fred::clients::Pipeline<fred::clients::Client>,
        keys: &[&str],
    ) -> Result<(), FredError> {
        if let Some(l1) = &self.inner.l1 {
            let _: () = pipe.publish(&l1.channel, l1.message(keys)).await?;
        }
        Ok(())
    }

    /// Queues a `ZCARD` of every policy shard on `pipe`: the entries held, summed by
    /// [`RedisCache::counted`] from the pipeline's last replies.
    async fn queue_count(
        &self,
        pipe: &fred::clients::Pipeline<fred::clients::Client>,
    ) -> Result<(), FredError> {
        for shard in 0..self.inner.layout.shards {
            let _: () = pipe.zcard(self.inner.layout.policy(shard)).await?;
        }
        Ok(())
    }

    /// The sum of the `ZCARD` replies [`RedisCache::queue_count`] queued last.
    fn counted(&self, replies: &[Value]) -> u64 {
        replies
            .iter()
            .rev()
            .take(self.inner.layout.shards)
            .filter_map(Value::as_u64)
            .sum()
    }

    /// Queues the commands that write `entry` and index it on `pipe`.
    async fn queue_store(
        &self,
        pipe: &fred::clients::Pipeline<fred::clients::Client>,
        entry: CacheEntry,
    ) -> Result<(), FredError> {
        // The entry carries its bookkeeping whole: accesses pending for it are its
        // writer's to count, not the next flush's.
        self.inner.access.forget(&entry.image_key);
        if let Some(l1) = &self.inner.l1 {
            l1.insert(&entry, self.inner.clock.now_unix());
        }
        let entry_key = self.entry_key(&entry.image_key);
        let layout = &self.inner.layout;
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
            ("url", entry.url.to_string()),
            ("image_key", entry.image_key.to_string()),
        ];
        let has_mime = entry.mime_type.is_some();
        if let Some(mime) = entry.mime_type {
            fields.push(("mime_type", mime.to_string()));
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
                layout.expiry_of(&key),
                None,
                None,
                false,
                false,
                (expires_unix, &*key),
            )
            .await?;
        let _: () = pipe
            .zadd(
                layout.policy_of(&key),
                None,
                None,
                false,
                false,
                (order_score, &*key),
            )
            .await?;
        Ok(())
    }

    async fn enforce_capacity(&self, held: Option<u64>, just_written: &str) -> Result<()> {
        let Some(held) = held else {
            return Ok(());
        };
        if held as usize > self.inner.max_entries {
            self.evict(held as usize - self.inner.max_entries, just_written)
                .await?;
        }
        Ok(())
    }

    /// Removes `surplus` entries from the bottom of the policy order, never `just_written`
    /// (under LFU a new entry starts at the bottom). This process's pending accesses are
    /// written first, so that its own reads count. The lowest `surplus + 1` of every shard
    /// are read, merged, and the lowest overall removed; only the `ZREM`s that removed a
    /// member count, so two replicas evicting at once never count one victim twice (they
    /// may evict a few more than needed, never fewer).
    async fn evict(&self, surplus: usize, just_written: &str) -> Result<()> {
        if let Err(err) = self.flush_access().await {
            tracing::debug!(error = %err, "access flush before eviction failed");
        }
        let layout = &self.inner.layout;
        let pipe = self.inner.pool.next_connected().pipeline();
        let op = async {
            for shard in 0..layout.shards {
                let _: () = pipe
                    .zrange(
                        layout.policy(shard),
                        0,
                        surplus as i64,
                        None,
                        false,
                        None,
                        true,
                    )
                    .await?;
            }
            pipe.all::<Vec<Vec<(String, f64)>>>().await
        };
        let lowest = self.run(op).await?;
        let mut candidates: Vec<(f64, String)> = lowest
            .into_iter()
            .flatten()
            .filter(|(k, _)| k != just_written)
            .map(|(k, score)| (score, k))
            .collect();
        // Lowest score first; ties by name, as one sorted set orders them.
        candidates.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        candidates.truncate(surplus);
        if candidates.is_empty() {
            return Ok(());
        }
        let pipe = self.inner.pool.next_connected().pipeline();
        let op = async {
            for (_, key) in &candidates {
                let _: () = pipe.zrem(layout.policy_of(key), key.as_str()).await?;
                let _: () = pipe.del(self.entry_key(key)).await?;
                let _: () = pipe.zrem(layout.expiry_of(key), key.as_str()).await?;
            }
            let victims: Vec<&str> = candidates.iter().map(|(_, k)| k.as_str()).collect();
            self.queue_invalidation(&pipe, &victims).await?;
            pipe.all::<Vec<i64>>().await
        };
        let replies = self.run(op).await?;
        let evicted = replies
            .chunks(3)
            .take(candidates.len())
            .filter(|r| r[0] > 0)
            .count();
        for (_, key) in &candidates {
            self.inner.access.forget(key);
        }
        self.inner.stats.evicted(evicted as u64);
        Ok(())
    }
}

/// Where a layout keeps its entries and indexes.
struct Layout {
    prefix: String,
    /// The index prefix: the entry prefix without its trailing `:` plus `-index`, so no
    /// object key can collide with an index.
    index: String,
    shards: usize,
}

impl Layout {
    fn new(prefix: &str, shards: usize) -> Self {
        Layout {
            prefix: prefix.to_owned(),
            index: format!("{}-index", prefix.trim_end_matches(':')),
            shards: shards.max(1),
        }
    }

    fn entry_key(&self, key: &str) -> String {
        // Not `format!`: on the lookup path its machinery cost more than the copy.
        let mut entry_key = String::with_capacity(self.prefix.len() + key.len());
        entry_key.push_str(&self.prefix);
        entry_key.push_str(key);
        entry_key
    }

    fn shard_of(&self, key: &str) -> usize {
        (fnv1a(key) % self.shards as u64) as usize
    }

    /// Expiry shard `shard`; its hash tag puts it in the slot of the same policy shard.
    fn expiry(&self, shard: usize) -> String {
        format!("{{{}:{shard}}}:expiry", self.index)
    }

    fn policy(&self, shard: usize) -> String {
        format!("{{{}:{shard}}}:policy", self.index)
    }

    fn expiry_of(&self, key: &str) -> String {
        self.expiry(self.shard_of(key))
    }

    fn policy_of(&self, key: &str) -> String {
        self.policy(self.shard_of(key))
    }

    /// The single expiry index of the layout before shards.
    fn legacy_expiry(&self) -> String {
        format!("{}:expiry", self.index)
    }

    /// The single policy index of the layout before shards.
    fn legacy_policy(&self) -> String {
        format!("{}:policy", self.index)
    }
}

/// The L1's subscription: applies other replicas' invalidations. The L1 is used only
/// while the subscription is up: a connection error suspends it (invalidations published
/// meanwhile would be lost), and it resumes, empty, once subscribed again. fred
/// reconnects on its own after an error, a Sentinel failover or a Cluster change; the
/// channel is subscribed again here before the L1 resumes.
async fn invalidations(subscriber: fred::clients::SubscriberClient, l1: Arc<L1>) {
    use tokio::sync::broadcast::error::RecvError;
    let mut messages = subscriber.message_rx();
    let mut reconnects = subscriber.reconnect_rx();
    let mut errors = subscriber.error_rx();
    let _resubscribe = subscriber.manage_subscriptions();
    let _connection = subscriber.connect();
    let subscribe = || async {
        loop {
            if subscriber.wait_for_connect().await.is_ok()
                && subscriber.subscribe(l1.channel.as_str()).await.is_ok()
            {
                return;
            }
            // Not up (Redis down): fred keeps reconnecting; ask again later.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    subscribe().await;
    l1.resume();
    let resync = || async {
        l1.suspend();
        subscribe().await;
        l1.resume();
    };
    loop {
        tokio::select! {
            message = messages.recv() => match message {
                Ok(message) => {
                    if let Some(text) = message.value.as_str() {
                        l1.receive(&text);
                    }
                }
                // Messages were lost: what the L1 holds may be stale.
                Err(RecvError::Lagged(lost)) => {
                    tracing::warn!(
                        lost,
                        "L1 emptied: the subscriber fell behind and invalidations were lost"
                    );
                    l1.clear();
                }
                Err(RecvError::Closed) => break,
            },
            // A connection error, or a reconnection (after which fred subscribes again
            // by itself): either way the L1 waits, empty, until a SUBSCRIBE of ours has
            // gone through on a live connection (twice is harmless). Resuming only then,
            // whichever event comes first, never leaves it on without a subscription.
            event = errors.recv() => match event {
                Err(RecvError::Closed) => break,
                Ok(_) | Err(RecvError::Lagged(_)) => resync().await,
            },
            event = reconnects.recv() => match event {
                Err(RecvError::Closed) => break,
                Ok(_) | Err(RecvError::Lagged(_)) => resync().await,
            },
        }
    }
}

/// Moves the members of the unsharded indexes of earlier versions (`{index}:expiry`,
/// `{index}:policy`) into the shards, 1000 at a time, once, at start. Idempotent: two
/// replicas starting together move the same members to the same shards.
async fn migrate_unsharded(pool: Pool, layout: Arc<Layout>, timeout: Duration) {
    for (legacy, shard_of) in [
        (
            layout.legacy_expiry(),
            Layout::expiry as fn(&Layout, usize) -> String,
        ),
        (layout.legacy_policy(), Layout::policy),
    ] {
        loop {
            let client = pool.next_connected();
            let batch: Result<Vec<(String, f64)>, _> = tokio::time::timeout(
                timeout,
                client.zrange(legacy.as_str(), 0, 999, None, false, None, true),
            )
            .await
            .map_err(|_| ())
            .and_then(|r| r.map_err(|_| ()));
            let Ok(batch) = batch else {
                tracing::debug!(index = %legacy, "could not read an unsharded index; left for the next start");
                break;
            };
            if batch.is_empty() {
                break;
            }
            let pipe = pool.next_connected().pipeline();
            let op = async {
                for (key, score) in &batch {
                    let shard = shard_of(&layout, layout.shard_of(key));
                    let _: () = pipe
                        .zadd(
                            shard,
                            Some(SetOptions::NX),
                            None,
                            false,
                            false,
                            (*score, key.as_str()),
                        )
                        .await?;
                }
                let members: Vec<&str> = batch.iter().map(|(k, _)| k.as_str()).collect();
                let _: () = pipe.zrem(legacy.as_str(), members).await?;
                pipe.all::<Vec<Value>>().await
            };
            if !matches!(tokio::time::timeout(timeout, op).await, Ok(Ok(_))) {
                break;
            }
            tracing::info!(index = %legacy, moved = batch.len(), "unsharded index members moved into the shards");
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

/// `keys` grouped by index shard.
fn by_shard<'k>(layout: &Layout, keys: &[&'k str]) -> Vec<(usize, Vec<&'k str>)> {
    let mut shards: std::collections::BTreeMap<usize, Vec<&str>> = Default::default();
    for key in keys {
        shards.entry(layout.shard_of(key)).or_default().push(key);
    }
    shards.into_iter().collect()
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

#[async_trait]
impl UrlCache for RedisCache {
    fn get_ready(&self, key: &str) -> Option<Result<Option<CacheEntry>>> {
        // Only a live entry in the L1 is answered at once; everything else is a round trip.
        self.inner.l1.as_ref()?;
        if let Err(err) = validate_key(key) {
            return Some(Err(err));
        }
        let now = self.inner.clock.now_unix();
        let held = self.live_in_l1(key, now)?;
        Some(Ok(Some(self.served_from_l1(&held, now))))
    }

    async fn get(&self, key: &str) -> Result<Option<CacheEntry>> {
        // A live entry in the L1 is the hot path: answered at once, without the batch's
        // vectors. Anything else (absent, expired, no L1) goes the batch's way.
        if let Some(answer) = self.get_ready(key) {
            return answer;
        }
        // One read, on this thread's client: no pipeline to build and collect. The reply
        // goes the batch's way from here.
        validate_key(key)?;
        let now = self.inner.clock.now_unix();
        let client = self.lookup_client();
        let entry_key = self.entry_key(key);
        let reply = self
            .run(async { Ok(client.hmget::<Value, _, _>(entry_key, field_keys()).await) })
            .await?;
        self.finish_lookup(key, &mut vec![reply].into_iter(), now, true)
            .await
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
        // With this process's accesses not written yet, as the next flush will leave it.
        let pending = self.inner.access.pending(key);
        Ok(parse_entry(key, &fields)
            .ok()
            .filter(|entry| now < entry.expires_at_unix())
            .map(|mut entry| {
                if let Some(p) = pending {
                    entry.access_count += p.count;
                    entry.last_accessed = entry.last_accessed.max(from_unix_secs(p.last));
                }
                entry
            }))
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
        // The L1 first: a live entry there costs no round trip.
        let from_l1: Vec<Option<Arc<Held>>> =
            keys.iter().map(|key| self.live_in_l1(key, now)).collect();
        let remote: Vec<&str> = keys
            .iter()
            .zip(&from_l1)
            .filter(|(_, hit)| hit.is_none())
            .map(|(key, _)| *key)
            .collect();
        if remote.is_empty() {
            return Ok(from_l1
                .into_iter()
                .map(|held| held.map(|held| self.served_from_l1(&held, now)))
                .collect());
        }
        let migrate = migrate && remote.len() == 1;
        let keys = remote.as_slice();
        // One read per key, nothing written: the accesses go to the buffer.
        let pipe = self.lookup_client().pipeline();
        for key in keys {
            let _: () = pipe
                .hmget(self.entry_key(key), field_keys())
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
        let mut fetched = Vec::with_capacity(keys.len());
        for key in keys {
            fetched.push(self.finish_lookup(key, &mut replies, now, migrate).await?);
        }
        // Back in the order asked, L1 hits in their places.
        let mut fetched = fetched.into_iter();
        let mut found = Vec::with_capacity(from_l1.len());
        for in_l1 in from_l1 {
            found.push(match in_l1 {
                Some(held) => Some(self.served_from_l1(&held, now)),
                None => fetched.next().flatten(),
            });
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
            let keys: Vec<&str> = expired.iter().map(|e| &*e.image_key).collect();
            self.delete_many(&keys).await?;
        }
        let Some(last) = live.last().map(|e| e.image_key.clone()) else {
            return Ok(());
        };
        let pipe = self.inner.pool.next_connected().pipeline();
        let count = self.inner.held.must_count(live.len(), now);
        let op = async {
            for entry in live.iter().cloned() {
                self.queue_store(&pipe, entry).await?;
            }
            let written: Vec<&str> = live.iter().map(|e| &*e.image_key).collect();
            self.queue_published(&pipe, &written).await?;
            if count {
                self.queue_count(&pipe).await?;
            }
            let replies: Vec<Value> = pipe.all().await?;
            Ok(self.held_after_put(count.then_some(&replies[..]), live.len(), now))
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
        // One DEL per key (in a Cluster the keys are in different slots), and the index
        // members per shard.
        let layout = &self.inner.layout;
        let pipe = self.inner.pool.next_connected().pipeline();
        let op = async {
            for key in keys {
                self.inner.access.forget(key);
                let _: () = pipe.del(self.entry_key(key)).await?;
            }
            for (shard, members) in by_shard(layout, keys) {
                let _: () = pipe.zrem(layout.expiry(shard), members.clone()).await?;
                let _: () = pipe.zrem(layout.policy(shard), members).await?;
            }
            self.queue_invalidation(&pipe, keys).await?;
            let replies: Vec<i64> = pipe.all().await?;
            Ok(replies[..keys.len()].iter().filter(|&&d| d > 0).count())
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
        let layout = &self.inner.layout;
        // The first `limit` of every shard, merged: the first `limit` overall.
        let pipe = self.inner.pool.next_connected().pipeline();
        let op = async {
            for shard in 0..layout.shards {
                let _: () = pipe
                    .zrangebyscore(
                        layout.expiry(shard),
                        now,
                        until,
                        true,
                        Some((0, limit as i64)),
                    )
                    .await?;
            }
            pipe.all::<Vec<Vec<(String, f64)>>>().await
        };
        let mut due: Vec<(f64, String)> = self
            .run(op)
            .await?
            .into_iter()
            .flatten()
            .map(|(key, score)| (score, key))
            .collect();
        due.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        due.truncate(limit);
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let pipe = self.inner.pool.next_connected().pipeline();
        let op = async {
            for (_, key) in &due {
                let _: () = pipe.hgetall(self.entry_key(key)).await?;
            }
            pipe.all::<Vec<HashMap<String, String>>>().await
        };
        let hashes = self.run(op).await?;
        let mut found: Vec<CacheEntry> = due
            .iter()
            .zip(hashes)
            .filter(|(_, fields)| fields.contains_key("url"))
            .filter_map(|((_, key), fields)| parse_entry(key, &fields).ok())
            .filter(|e| now < e.expires_at_unix() && e.expires_at_unix() <= until)
            .collect();
        found.sort_by_key(|e| e.expires_at);
        Ok(found)
    }

    async fn remove_expired(&self, batch_size: usize) -> Result<usize> {
        let batch_size = batch_size.max(1);
        let layout = &self.inner.layout;
        let mut total = 0;
        for shard in 0..layout.shards {
            loop {
                let now = self.inner.clock.now_unix();
                let client = self.inner.pool.next_connected();
                let keys: Vec<String> = self
                    .run(client.zrangebyscore(
                        layout.expiry(shard),
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
                    let _: () = pipe.zrem(layout.expiry(shard), members.clone()).await?;
                    let _: () = pipe.zrem(layout.policy(shard), members).await?;
                    for key in &keys {
                        let _: () = pipe.del(self.entry_key(key)).await?;
                    }
                    self.queue_invalidation(&pipe, &keys).await?;
                    pipe.all::<Vec<Value>>().await
                };
                self.run(op).await?;
                for key in &keys {
                    self.inner.access.forget(key);
                }
                total += keys.len();
                if keys.len() < batch_size {
                    break;
                }
            }
        }
        Ok(total)
    }

    async fn len(&self) -> Result<usize> {
        let layout = &self.inner.layout;
        let pipe = self.inner.pool.next_connected().pipeline();
        let op = async {
            for shard in 0..layout.shards {
                let _: () = pipe.zcard(layout.expiry(shard)).await?;
            }
            pipe.all::<Vec<u64>>().await
        };
        Ok(self.run(op).await?.into_iter().sum::<u64>() as usize)
    }

    async fn health_check(&self) -> Result<()> {
        let client = self.inner.pool.next_connected();
        let result = self.run(client.ping::<String>(None)).await;
        self.inner.healthy.store(result.is_ok(), Ordering::Relaxed);
        result.map(|_| ())
    }

    fn stats(&self) -> CacheStats {
        let mut stats = self.inner.stats.snapshot();
        stats.l1_hits = self.inner.l1.as_ref().map_or(0, |l1| l1.hits());
        stats
    }

    async fn flush(&self) -> Result<()> {
        self.flush_access().await.map(|_| ())
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
