//! A small table of values worked out from shared texts, for one thread to keep.
//!
//! A hot cache entry hands out the same URL text (the same `Arc<str>`) hit after hit, so
//! what a caller works out from it (a parse, a header value) can be kept and reused
//! rather than worked out again per request. [`TextTable`] finds a text by its address:
//! a kept text holds its `Arc`, so no other text can take that address while it is kept,
//! and equal pointers mean equal text. A text gets a place the second time in a row it
//! is seen there, so texts met once cost no allocation.
//!
//! The table is not `Sync`: keep one per thread, in a `thread_local!`.
//!
//! ```
//! use std::sync::Arc;
//! use url_cache::by_text::TextTable;
//!
//! let mut lengths: TextTable<(), usize, 8> = TextTable::new();
//! let url: Arc<str> = "https://b.example/a.jpg".into();
//! for _ in 0..2 {
//!     assert_eq!(lengths.get(&url, |_| true), None);
//!     lengths.seen(&url, || (), &url.len());
//! }
//! assert_eq!(lengths.get(&url, |_| true), Some(url.len()));
//! ```

use std::sync::Arc;

/// Values worked out from texts, `N` places found by the text's address, each value
/// kept with a key of the caller's (what else it was worked out for).
pub struct TextTable<K, V, const N: usize> {
    places: [Place<K, V>; N],
}

struct Place<K, V> {
    kept: Option<(Arc<str>, K, V)>,
    /// The address of the text seen last here and not kept.
    candidate: usize,
}

impl<K, V: Clone, const N: usize> TextTable<K, V, N> {
    /// An empty table.
    pub fn new() -> Self {
        TextTable {
            places: std::array::from_fn(|_| Place {
                kept: None,
                candidate: 0,
            }),
        }
    }

    fn place_of(text: &Arc<str>) -> (usize, usize) {
        let address = Arc::as_ptr(text).cast::<u8>() as usize;
        // An `Arc<str>`'s allocation is at least 8-byte aligned: its lowest bits say
        // little.
        (address, (address >> 4) % N.max(1))
    }

    /// The value kept for this very `text` (the same `Arc`) with a key `is_key` accepts.
    pub fn get(&self, text: &Arc<str>, is_key: impl FnOnce(&K) -> bool) -> Option<V> {
        let (_, index) = Self::place_of(text);
        match &self.places.get(index)?.kept {
            Some((kept, key, value)) if Arc::ptr_eq(kept, text) && is_key(key) => {
                Some(value.clone())
            }
            _ => None,
        }
    }

    /// Tells the table that `value` was just worked out from `text` for `key`: kept the
    /// second time in a row `text` is seen at its place, replacing what was kept there.
    pub fn seen(&mut self, text: &Arc<str>, key: impl FnOnce() -> K, value: &V) {
        let (address, index) = Self::place_of(text);
        let Some(place) = self.places.get_mut(index) else {
            return;
        };
        if place.candidate == address {
            place.kept = Some((Arc::clone(text), key(), value.clone()));
            place.candidate = 0;
        } else {
            place.candidate = address;
        }
    }
}

impl<K, V: Clone, const N: usize> Default for TextTable<K, V, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K, V, const N: usize> std::fmt::Debug for TextTable<K, V, N> {
    // The texts are signed URLs: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kept = self.places.iter().filter(|p| p.kept.is_some()).count();
        f.debug_struct("TextTable").field("kept", &kept).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_is_kept_the_second_time_in_a_row_and_only_for_itself() {
        let mut table: TextTable<u32, &'static str, 4> = TextTable::new();
        let text: Arc<str> = "https://b.example/a.jpg".into();
        table.seen(&text, || 1, &"first");
        assert_eq!(table.get(&text, |_| true), None, "seen once");
        table.seen(&text, || 1, &"second");
        assert_eq!(table.get(&text, |&key| key == 1), Some("second"));
        assert_eq!(table.get(&text, |&key| key == 2), None, "another key");
        let copy: Arc<str> = Arc::from(&*text);
        assert_eq!(table.get(&copy, |_| true), None, "equal text, another Arc");
        assert_eq!(Arc::strong_count(&text), 2, "the kept text holds its Arc");
    }
}
