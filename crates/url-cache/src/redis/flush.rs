//! The access flush: what [`AccessBuffer`] added up, written to Redis in batches.
//!
//! Per chunk of keys read since the last flush, `EVALSHA` of [`ADD_ACCESSES`] on the
//! entries' hashes (count and last access, only to an entry still there): one for the
//! whole chunk on a standalone server or under Sentinel, one per hash slot on a Cluster
//! (a script's keys must share a slot). Per policy shard, one command for all of a
//! chunk's keys in that shard (LRU: one `ZADD XX GT` with every member; LFU: one
//! `EVALSHA` of [`ADD_FREQUENCIES`], since `ZADD INCR` takes one member). Every command
//! touches one slot, so all of it runs on a Cluster.
//!
//! Measured on the Zipf trace of `benches/load/redis.sh`, the four commands per key of
//! the first version (`HINCRBY`, `HSET`, `EXPIRE NX`, `ZADD`) cost about a fifth of a
//! Redis + L1 replica's CPU: a busy second reads tens of thousands of distinct keys. One
//! script per key still cost the replica about 10 000 instructions per key (building,
//! sending and reading each command) and Redis a script call per key.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fred::prelude::{ClientLike, Error as FredError, Pool, SortedSetsInterface, Value};
use fred::types::scripts::Script;
use fred::types::SetOptions;
use fred::types::{ClusterHash, CustomCommand};

use super::access::{AccessBuffer, Pending};
use super::{map_error, Layout};
use crate::policy::Kind;
use crate::{CacheError, Result};

/// Adds entries' accesses: to the entry `KEYS[i]`, `ARGV[2i - 1]` more to its count and
/// `ARGV[2i]` its last access. Only to an entry that is there: an entry deleted since its
/// read stays deleted (a plain `HINCRBY` would create a hash). How many were there.
const ADD_ACCESSES: &str = r#"
local found = 0
for i, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then
    redis.call('HINCRBY', key, 'access_count', ARGV[2 * i - 1])
    redis.call('HSET', key, 'last_accessed', ARGV[2 * i])
    found = found + 1
  end
end
return found
"#;

/// LFU: adds accesses to the scores of the members of one policy shard (`KEYS[1]`);
/// `ARGV` is count, member, count, member… `XX`: a member no longer indexed (its entry
/// gone) is not indexed again.
const ADD_FREQUENCIES: &str = r#"
for i = 1, #ARGV, 2 do
  redis.call('ZADD', KEYS[1], 'XX', 'INCR', ARGV[i], ARGV[i + 1])
end
return 0
"#;

/// The flush's scripts, called by their SHA-1 (`EVALSHA`): loaded before this process's
/// first flush, and again whenever Redis answers that it does not have them.
pub(super) struct FlushScripts {
    add_accesses: Script,
    add_frequencies: Script,
    /// Loaded once by this process (Redis may have forgotten them since).
    loaded: AtomicBool,
}

impl FlushScripts {
    pub fn new() -> Self {
        FlushScripts {
            add_accesses: Script::from_lua(ADD_ACCESSES),
            add_frequencies: Script::from_lua(ADD_FREQUENCIES),
            loaded: AtomicBool::new(false),
        }
    }

    /// Loads both scripts (on every primary of a Cluster).
    async fn load(&self, pool: &Pool) -> Result<(), FredError> {
        let client = pool.next_connected();
        self.add_accesses.load(client).await?;
        self.add_frequencies.load(client).await?;
        self.loaded.store(true, Ordering::Relaxed);
        Ok(())
    }
}

/// Keys per pipeline of an access flush.
///
/// A flush after a busy second holds tens of thousands of keys. Sent as one pipeline it
/// sat in front of every lookup that shared its connection until Redis had worked
/// through all of it (a 63 ms p99 on the L1 row of `benches/load/redis.sh`); in chunks
/// on rotating connections, a lookup waits for at most one chunk.
const FLUSH_CHUNK_KEYS: usize = 256;

/// One command of a flush.
enum Write<'a> {
    /// [`ADD_ACCESSES`] on entries of one slot (any entries, off a Cluster).
    Accesses {
        slot: u16,
        members: Vec<(String, Pending)>,
    },
    /// LRU: `ZADD {shard} XX GT` with each member's last access.
    Recency {
        shard: usize,
        members: Vec<(f64, &'a str)>,
    },
    /// LFU: [`ADD_FREQUENCIES`] on one shard.
    Frequencies {
        shard: usize,
        members: Vec<(u64, &'a str)>,
    },
}

/// The commands that write `chunk`'s accesses under `kind`: one script for the entries
/// (on a Cluster, one per slot), then one command per policy shard the chunk touches
/// (none under FIFO, whose order accesses do not change).
fn writes<'a>(
    layout: &Layout,
    kind: Kind,
    clustered: bool,
    chunk: &'a [(String, Pending)],
) -> Vec<Write<'a>> {
    let mut by_slot: Vec<(u16, Vec<(String, Pending)>)> = Vec::new();
    for (key, pending) in chunk {
        let entry_key = layout.entry_key(key);
        let slot = if clustered {
            fred::util::redis_keyslot(entry_key.as_bytes())
        } else {
            0
        };
        match by_slot.iter_mut().find(|(s, _)| *s == slot) {
            Some((_, members)) => members.push((entry_key, *pending)),
            None => by_slot.push((slot, vec![(entry_key, *pending)])),
        }
    }
    let mut writes: Vec<Write<'a>> = by_slot
        .into_iter()
        .map(|(slot, members)| Write::Accesses { slot, members })
        .collect();
    if kind == Kind::Fifo {
        return writes;
    }
    let mut shards: Vec<Vec<(&'a str, Pending)>> = vec![Vec::new(); layout.shards];
    for (key, pending) in chunk {
        shards[layout.shard_of(key)].push((key, *pending));
    }
    for (shard, members) in shards.into_iter().enumerate() {
        if members.is_empty() {
            continue;
        }
        writes.push(match kind {
            Kind::Lfu => Write::Frequencies {
                shard,
                members: members.iter().map(|(key, p)| (p.count, *key)).collect(),
            },
            Kind::Lru | Kind::Fifo => Write::Recency {
                shard,
                members: members.iter().map(|(key, p)| (p.last, *key)).collect(),
            },
        });
    }
    writes
}

/// Queues `write` on `pipe`.
async fn queue(
    pipe: &fred::clients::Pipeline<fred::clients::Client>,
    layout: &Layout,
    scripts: &FlushScripts,
    write: &Write<'_>,
) -> Result<(), FredError> {
    match write {
        Write::Accesses { slot, members } => {
            let command = CustomCommand::new_static("EVALSHA", ClusterHash::Custom(*slot), false);
            let mut args = Vec::with_capacity(2 + members.len() * 3);
            args.push(Value::from(scripts.add_accesses.sha1().clone()));
            args.push(Value::from(members.len() as i64));
            for (entry_key, _) in members {
                args.push(Value::from(entry_key.as_str()));
            }
            for (_, pending) in members {
                args.push(Value::from(pending.count as i64));
                args.push(Value::from(pending.last));
            }
            pipe.custom::<(), _>(command, args).await
        }
        Write::Recency { shard, members } => {
            pipe.zadd::<(), _, _>(
                layout.policy(*shard),
                Some(SetOptions::XX),
                Some(fred::types::sorted_sets::Ordering::GreaterThan),
                false,
                false,
                members.clone(),
            )
            .await
        }
        Write::Frequencies { shard, members } => {
            let policy = layout.policy(*shard);
            let command = evalsha(&policy);
            let mut args = Vec::with_capacity(3 + members.len() * 2);
            args.push(Value::from(scripts.add_frequencies.sha1().clone()));
            args.push(Value::from(1));
            args.push(Value::from(policy));
            for (count, key) in members {
                args.push(Value::from(*count as i64));
                args.push(Value::from(*key));
            }
            pipe.custom::<(), _>(command, args).await
        }
    }
}

/// `EVALSHA` of a script on `key` alone, sent to the node of `key`'s slot. (fred's
/// pipelines have no `evalsha` of their own, and a custom command is routed by its
/// first string argument, here the SHA-1, unless given its slot.)
fn evalsha(key: &str) -> CustomCommand {
    let slot = fred::util::redis_keyslot(key.as_bytes());
    CustomCommand::new_static("EVALSHA", ClusterHash::Custom(slot), false)
}

/// Whether Redis answered that it does not have the script.
fn is_no_script(err: &FredError) -> bool {
    err.details().starts_with("NOSCRIPT")
}

/// Sends `writes` in one pipeline. Writes that Redis refused for want of their script
/// (it restarted, failed over, or was told `SCRIPT FLUSH`) did nothing: the scripts are
/// loaded and those writes sent once more.
async fn send(
    pool: &Pool,
    layout: &Layout,
    scripts: &FlushScripts,
    mut writes: Vec<Write<'_>>,
) -> Result<(), FredError> {
    for attempt in 0..2 {
        let pipe = pool.next_connected().pipeline();
        for write in &writes {
            queue(&pipe, layout, scripts, write).await?;
        }
        let replies = pipe.try_all::<Value>().await;
        let mut again = Vec::new();
        for (write, reply) in writes.into_iter().zip(replies) {
            match reply {
                Ok(_) => {}
                Err(err) if is_no_script(&err) && attempt == 0 => again.push(write),
                Err(err) => return Err(err),
            }
        }
        if again.is_empty() {
            return Ok(());
        }
        scripts.load(pool).await?;
        writes = again;
    }
    Err(FredError::new(
        fred::error::ErrorKind::Unknown,
        "NOSCRIPT after loading the flush's scripts",
    ))
}

/// Writes `access`'s pending accesses, [`FLUSH_CHUNK_KEYS`] keys per pipeline, one
/// pipeline after the other (see the module's documentation for the commands).
/// Accesses whose writes Redis has not confirmed — a chunk that fails, the chunks after
/// it, or all unconfirmed when the flush is dropped — are dropped and counted: they are
/// statistics, not data. `timeout` bounds each chunk.
pub(super) async fn flush(
    pool: &Pool,
    layout: &Layout,
    kind: Kind,
    scripts: &FlushScripts,
    access: &AccessBuffer,
    timeout: Duration,
) -> Result<usize> {
    let pending: Vec<(String, Pending)> = access.take();
    if pending.is_empty() {
        return Ok(0);
    }
    // Counts what is still unwritten as lost if this future ends or is dropped early.
    let mut unwritten = Unwritten {
        access,
        accesses: pending.iter().map(|(_, p)| p.count).sum(),
    };
    for chunk in pending.chunks(FLUSH_CHUNK_KEYS) {
        let op = async {
            if !scripts.loaded.load(Ordering::Relaxed) {
                scripts.load(pool).await?;
            }
            let clustered = pool.next().is_clustered();
            send(
                pool,
                layout,
                scripts,
                writes(layout, kind, clustered, chunk),
            )
            .await
        };
        match tokio::time::timeout(timeout, op).await {
            Ok(Ok(())) => unwritten.accesses -= chunk.iter().map(|(_, p)| p.count).sum::<u64>(),
            Ok(Err(err)) => return Err(map_error(&err, timeout)),
            Err(_) => return Err(CacheError::Timeout(timeout)),
        }
    }
    Ok(pending.len())
}

/// The accesses of a flush not written yet; counted as lost when dropped.
struct Unwritten<'a> {
    access: &'a AccessBuffer,
    accesses: u64,
}

impl Drop for Unwritten<'_> {
    fn drop(&mut self) {
        if self.accesses > 0 {
            self.access.lost(self.accesses);
        }
    }
}

/// Flushes every `every` until the cache is dropped (its tasks are aborted).
pub(super) async fn flush_loop(
    pool: Pool,
    layout: std::sync::Arc<Layout>,
    kind: Kind,
    scripts: std::sync::Arc<FlushScripts>,
    access: std::sync::Arc<AccessBuffer>,
    every: Duration,
    timeout: Duration,
) {
    let every = every.max(Duration::from_millis(1));
    // The first flush one interval from now, not at once: nothing is pending yet, and a
    // flush at whatever moment this task first runs would land in the middle of the first
    // lookups (a read overlapping a flush of its key can miss the accesses in flight).
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if let Err(err) = flush(&pool, &layout, kind, &scripts, &access, timeout).await {
            tracing::debug!(error = %err, "access flush failed; those accesses are dropped");
        }
    }
}
