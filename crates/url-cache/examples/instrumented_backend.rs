//! A `UrlCache` backend written outside this crate, proving itself with the exported
//! conformance suite: here, a backend that counts the calls made to another one (the
//! kind of decorator an application adds for its own metrics).
//!
//! Run: `cargo run -p url-cache --example instrumented_backend` (exits non-zero, naming
//! the test, if the backend breaks the contract).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use url_cache::testing::{run_all, CacheFactory};
use url_cache::{
    CacheEntry, CacheStats, EvictionPolicy, ManualClock, MemoryCache, Result, UrlCache,
};

/// Counts every call, then hands it to the cache it wraps.
#[derive(Debug)]
struct Counted<C> {
    inner: C,
    calls: AtomicU64,
}

impl<C> Counted<C> {
    fn count(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl<C: UrlCache> UrlCache for Counted<C> {
    async fn get(&self, key: &str) -> Result<Option<CacheEntry>> {
        self.count();
        self.inner.get(key).await
    }
    async fn peek(&self, key: &str) -> Result<Option<CacheEntry>> {
        self.count();
        self.inner.peek(key).await
    }
    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<CacheEntry>>> {
        self.count();
        self.inner.get_many(keys).await
    }
    async fn put(&self, entry: CacheEntry) -> Result<()> {
        self.count();
        self.inner.put(entry).await
    }
    async fn delete(&self, key: &str) -> Result<bool> {
        self.count();
        self.inner.delete(key).await
    }
    async fn expiring_within(&self, within: Duration, limit: usize) -> Result<Vec<CacheEntry>> {
        self.count();
        self.inner.expiring_within(within, limit).await
    }
    async fn remove_expired(&self, batch_size: usize) -> Result<usize> {
        self.count();
        self.inner.remove_expired(batch_size).await
    }
    async fn len(&self) -> Result<usize> {
        self.count();
        self.inner.len().await
    }
    async fn health_check(&self) -> Result<()> {
        self.count();
        self.inner.health_check().await
    }
    async fn flush(&self) -> Result<()> {
        self.inner.flush().await
    }
    fn stats(&self) -> CacheStats {
        self.inner.stats()
    }
    fn backend(&self) -> &'static str {
        "counted-memory"
    }
}

/// How the suite gets a fresh backend for each test.
struct Factory;

#[async_trait]
impl CacheFactory for Factory {
    async fn make(
        &self,
        capacity: usize,
        policy: EvictionPolicy,
        clock: Arc<ManualClock>,
    ) -> Arc<dyn UrlCache> {
        let inner = MemoryCache::builder()
            .capacity(capacity)
            .policy(policy)
            .clock(clock)
            .build();
        Arc::new(Counted {
            inner,
            calls: AtomicU64::new(0),
        })
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    for policy in [
        EvictionPolicy::lru(),
        EvictionPolicy::lfu(),
        EvictionPolicy::fifo(),
    ] {
        run_all(&Factory, policy).await;
    }
    println!("the counted backend passes the url-cache conformance suite");
}
