//! The access flush: what [`AccessBuffer`] added up, written to Redis in batches.
//!
//! Per chunk of keys read since the last flush, `EVALSHA` of [`ADD_ACCESSES`] on the
//! entries' hashes (count and last access, only to an entry still there): one for the
//! whole chunk on a standalone server or under Sentinel, one per hash slot on a Cluster
//! (a script's keys must share a slot). Per policy shard, one `EVALSHA` for all of a
//! chunk's keys in that shard (LRU: [`ADD_RECENCIES`], one `ZADD XX GT` with every member;
//! LFU: [`ADD_FREQUENCIES`], one `ZADD XX INCR` per member, since `INCR` takes one).
//! Every command touches one slot, so all of it runs on a Cluster. The numbers travel
//! packed in one argument of lines, times as integers to the millisecond.
//!
//! Measured on the Zipf trace of `benches/load/redis.sh`, where a busy second reads tens
//! of thousands of distinct keys: the four commands per key of the first version
//! (`HINCRBY`, `HSET`, `EXPIRE NX`, `ZADD`) cost about a fifth of a Redis + L1 replica's
//! CPU. By callgrind (`benches/load/l1-instructions.sh`), per key written: one script per
//! key, about 30 900 instructions in the replica; one per chunk with two arguments per
//! key, 14 800; packed, 4 200–5 500.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::{ClientLike, Error as FredError, Pool, Value};
use fred::types::scripts::Script;
use fred::types::{ClusterHash, CustomCommand};

use super::access::{AccessBuffer, Pending};
use super::{map_error, Layout};
use crate::policy::Kind;
use crate::{CacheError, Result};

/// Adds entries' accesses: `ARGV[1]` holds one line `<count> <last access>` per entry of
/// `KEYS`, in order; the count is added to the entry's and the last access replaces its
/// own. Only to an entry that is there: an entry deleted since its read stays deleted (a
/// plain `HINCRBY` would create a hash). How many were there.
///
/// The numbers travel packed in one argument rather than two arguments per key: every
/// argument is a value the replica allocates, encodes and frees, and those were most of
/// a flush's cost per key.
const ADD_ACCESSES: &str = r#"
local found, i = 0, 0
for count, last in string.gmatch(ARGV[1], '(%d+) ([^\n]+)\n') do
  i = i + 1
  local key = KEYS[i]
  if redis.call('EXISTS', key) == 1 then
    redis.call('HINCRBY', key, 'access_count', count)
    redis.call('HSET', key, 'last_accessed', last)
    found = found + 1
  end
end
return found
"#;

/// LRU: moves members of one policy shard (`KEYS[1]`) later, one `ZADD XX GT` for all;
/// `ARGV[1]` holds one line `<last access> <member>` per member (a key has no control
/// character). `XX`: a member no longer indexed (its entry gone) is not indexed again;
/// `GT`: a later access already written is not moved back.
const ADD_RECENCIES: &str = r#"
local args = {}
for last, member in string.gmatch(ARGV[1], '([^ ]+) ([^\n]*)\n') do
  args[#args + 1] = last
  args[#args + 1] = member
end
if #args > 0 then
  redis.call('ZADD', KEYS[1], 'XX', 'GT', unpack(args))
end
return #args / 2
"#;

/// LFU: adds accesses to the scores of the members of one policy shard (`KEYS[1]`);
/// `ARGV[1]` holds one line `<count> <member>` per member. One `ZADD XX INCR` per member,
/// since `INCR` takes one; `XX` as above.
const ADD_FREQUENCIES: &str = r#"
local n = 0
for count, member in string.gmatch(ARGV[1], '([^ ]+) ([^\n]*)\n') do
  redis.call('ZADD', KEYS[1], 'XX', 'INCR', count, member)
  n = n + 1
end
return n
"#;

/// The flush's scripts, called by their SHA-1 (`EVALSHA`): loaded before this process's
/// first flush, and again whenever Redis answers that it does not have them.
pub(super) struct FlushScripts {
    add_accesses: Script,
    add_recencies: Script,
    add_frequencies: Script,
    /// Loaded once by this process (Redis may have forgotten them since).
    loaded: AtomicBool,
}

impl FlushScripts {
    pub fn new() -> Self {
        FlushScripts {
            add_accesses: Script::from_lua(ADD_ACCESSES),
            add_recencies: Script::from_lua(ADD_RECENCIES),
            add_frequencies: Script::from_lua(ADD_FREQUENCIES),
            loaded: AtomicBool::new(false),
        }
    }

    /// Loads the scripts (on every primary of a Cluster).
    async fn load(&self, pool: &Pool) -> Result<(), FredError> {
        let client = pool.next_connected();
        self.add_accesses.load(client).await?;
        self.add_recencies.load(client).await?;
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

/// One command of a flush: `EVALSHA` of one of the scripts, its numbers packed in one
/// argument of lines.
enum Write {
    /// [`ADD_ACCESSES`] on entries of one slot (any entries, off a Cluster).
    /// The keys and lines are kept as the `Value`s sent (moved in, not copied), so that
    /// sending them again after a `NOSCRIPT` only bumps reference counts.
    Accesses {
        slot: u16,
        entry_keys: Vec<Value>,
        lines: Value,
    },
    /// [`ADD_RECENCIES`] (LRU) or [`ADD_FREQUENCIES`] (LFU) on one policy shard.
    Order { shard: usize, lines: Value },
}

/// Appends `unix_secs` to `line`, to the millisecond. Integers only: the shortest decimal
/// form of an `f64` was a tenth of a flush's cost per key.
fn push_time(line: &mut String, unix_secs: f64) {
    let millis = (unix_secs.max(0.0) * 1000.0).round() as u64;
    let mut digits = itoa::Buffer::new();
    line.push_str(digits.format(millis / 1000));
    line.push('.');
    let fraction = millis % 1000;
    if fraction < 100 {
        line.push('0');
    }
    if fraction < 10 {
        line.push('0');
    }
    line.push_str(digits.format(fraction));
}

/// Appends `<n> ` to `line`.
fn push_count(line: &mut String, n: u64) {
    line.push_str(itoa::Buffer::new().format(n));
    line.push(' ');
}

/// The commands that write `chunk`'s accesses under `kind`: one script for the entries
/// (on a Cluster, one per slot), then one script per policy shard the chunk touches
/// (none under FIFO, whose order accesses do not change).
fn writes(
    layout: &Layout,
    kind: Kind,
    clustered: bool,
    chunk: &[(Arc<str>, Pending)],
) -> Vec<Write> {
    let mut entries: Vec<(u16, String, Pending)> = chunk
        .iter()
        .map(|(key, pending)| {
            let entry_key = layout.entry_key(key);
            let slot = if clustered {
                fred::util::redis_keyslot(entry_key.as_bytes())
            } else {
                0
            };
            (slot, entry_key, *pending)
        })
        .collect();
    entries.sort_by_key(|(slot, ..)| *slot);
    // (slot, entry keys, lines) per slot, in slot order.
    let mut groups: Vec<(u16, Vec<Value>, String)> = Vec::new();
    for (slot, entry_key, pending) in entries {
        if groups.last().is_none_or(|group| group.0 != slot) {
            groups.push((slot, Vec::new(), String::new()));
        }
        if let Some((_, entry_keys, lines)) = groups.last_mut() {
            entry_keys.push(Value::from(entry_key));
            push_count(lines, pending.count);
            push_time(lines, pending.last);
            lines.push('\n');
        }
    }
    let mut writes: Vec<Write> = groups
        .into_iter()
        .map(|(slot, entry_keys, lines)| Write::Accesses {
            slot,
            entry_keys,
            lines: Value::from(lines),
        })
        .collect();
    if kind == Kind::Fifo {
        return writes;
    }
    let mut shards: Vec<String> = vec![String::new(); layout.shards];
    for (key, pending) in chunk {
        let lines = &mut shards[layout.shard_of(key)];
        match kind {
            Kind::Lfu => {
                push_count(lines, pending.count);
            }
            Kind::Lru | Kind::Fifo => {
                push_time(lines, pending.last);
                lines.push(' ');
            }
        }
        lines.push_str(key);
        lines.push('\n');
    }
    for (shard, lines) in shards.into_iter().enumerate() {
        if !lines.is_empty() {
            writes.push(Write::Order {
                shard,
                lines: Value::from(lines),
            });
        }
    }
    writes
}

/// Queues `write` on `pipe`.
async fn queue(
    pipe: &fred::clients::Pipeline<fred::clients::Client>,
    layout: &Layout,
    kind: Kind,
    scripts: &FlushScripts,
    write: &Write,
) -> Result<(), FredError> {
    match write {
        Write::Accesses {
            slot,
            entry_keys,
            lines,
        } => {
            let command = CustomCommand::new_static("EVALSHA", ClusterHash::Custom(*slot), false);
            let mut args = Vec::with_capacity(3 + entry_keys.len());
            args.push(Value::from(scripts.add_accesses.sha1().clone()));
            args.push(Value::from(entry_keys.len() as i64));
            args.extend(entry_keys.iter().cloned());
            args.push(lines.clone());
            pipe.custom::<(), _>(command, args).await
        }
        Write::Order { shard, lines } => {
            let policy = layout.policy(*shard);
            let script = match kind {
                Kind::Lfu => &scripts.add_frequencies,
                Kind::Lru | Kind::Fifo => &scripts.add_recencies,
            };
            let args = vec![
                Value::from(script.sha1().clone()),
                Value::from(1),
                Value::from(policy.as_str()),
                lines.clone(),
            ];
            pipe.custom::<(), _>(evalsha(&policy), args).await
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
    kind: Kind,
    mut writes: Vec<Write>,
) -> Result<(), FredError> {
    for attempt in 0..2 {
        let pipe = pool.next_connected().pipeline();
        for write in &writes {
            queue(&pipe, layout, kind, scripts, write).await?;
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
    let pending: Vec<(Arc<str>, Pending)> = access.take();
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
                kind,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_written_to_the_millisecond() {
        for (secs, text) in [
            (1_700_000_000.25, "1700000000.250"),
            (1_700_000_000.000_5, "1700000000.001"),
            (5.07, "5.070"),
            (12.0, "12.000"),
            (0.009, "0.009"),
            (-3.0, "0.000"),
        ] {
            let mut line = String::new();
            push_time(&mut line, secs);
            assert_eq!(line, text, "{secs}");
        }
    }

    /// A chunk's lines name every key once, in the order of the script's keys, and a
    /// key with spaces stays whole (the scripts split a line at its first space).
    #[test]
    fn a_chunk_packs_one_line_per_key() {
        let layout = Layout::new("image:url:", 16);
        let chunk: Vec<(Arc<str>, Pending)> = ["a.jpg", "with space.jpg", "b.jpg"]
            .iter()
            .enumerate()
            .map(|(i, key)| {
                let pending = Pending {
                    count: i as u64 + 1,
                    last: 10.5 + i as f64,
                };
                (Arc::from(*key), pending)
            })
            .collect();
        let writes = writes(&layout, Kind::Lru, false, &chunk);
        let Write::Accesses {
            entry_keys, lines, ..
        } = &writes[0]
        else {
            panic!("the entries' script comes first");
        };
        assert_eq!(entry_keys.len(), 3);
        assert_eq!(lines.as_str().unwrap(), "1 10.500\n2 11.500\n3 12.500\n");
        let orders: Vec<String> = writes[1..]
            .iter()
            .map(|write| match write {
                Write::Order { lines, .. } => lines.as_string().unwrap(),
                Write::Accesses { .. } => panic!("one entries' script off a Cluster"),
            })
            .collect();
        let mut all: Vec<&str> = orders.iter().flat_map(|l| l.lines()).collect();
        all.sort();
        assert_eq!(
            all,
            ["10.500 a.jpg", "11.500 with space.jpg", "12.500 b.jpg"]
        );
    }
}
