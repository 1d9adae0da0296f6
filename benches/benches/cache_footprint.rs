#![allow(unsafe_code)] // a counting global allocator; every call delegates to System
//! Memory footprint of the memory backend: bytes per entry for 100 000 entries with
//! realistic 450-byte URLs, counted by a global allocator wrapper; and what the cache
//! still holds once nine entries in ten are deleted (a past peak's room).
//!
//! Run: `cargo bench -p image-url-benches --bench cache_footprint`

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use futures::FutureExt;
use url_cache::{CacheEntry, EvictionPolicy, MemoryCache, UrlCache};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: delegates every call to the system allocator unchanged; only counts bytes.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn main() {
    const N: usize = 100_000;
    const URL_LEN: usize = 450;
    for policy in [
        EvictionPolicy::lru(),
        EvictionPolicy::lfu(),
        EvictionPolicy::fifo(),
    ] {
        let before = LIVE.load(Ordering::Relaxed);
        let cache = MemoryCache::builder().capacity(N).policy(policy).build();
        let key_of = |i: usize| format!("images/user{}/photo-{i}.jpg", i % 997);
        for i in 0..N {
            let key = key_of(i);
            let mut url = format!(
                "https://examplebucket-1250000000.cos.ap-guangzhou.myqcloud.com/{key}?q-signature="
            );
            url.extend(std::iter::repeat_n('0', URL_LEN - url.len()));
            let entry = CacheEntry::new(
                key,
                url,
                url_cache::from_unix_secs(4_000_000_000.0),
                url_cache::from_unix_secs(1_700_000_000.0),
            )
            .with_mime_type("image/jpeg");
            cache.put(entry).now_or_never().unwrap().unwrap();
        }
        let used = LIVE.load(Ordering::Relaxed) - before;
        let key_len = "images/user123/photo-12345.jpg".len();
        println!(
            "memory backend, {policy}: {N} entries, {} MiB, {} bytes/entry ({URL_LEN}-byte URL, ~{key_len}-byte key, mime 10 bytes; payload {} bytes)",
            used / (1 << 20),
            used / N as isize,
            URL_LEN + 2 * key_len + 10,
        );
        for i in (0..N).filter(|i| i % 10 != 0) {
            assert!(cache.delete(&key_of(i)).now_or_never().unwrap().unwrap());
        }
        let left = LIVE.load(Ordering::Relaxed) - before;
        println!(
            "  after deleting 9 in 10: {} entries, {:.1} MiB, {} bytes per entry left",
            N / 10,
            left as f64 / f64::from(1 << 20),
            left / (N / 10) as isize,
        );
        drop(cache);
    }
}
