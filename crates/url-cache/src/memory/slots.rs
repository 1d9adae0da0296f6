//! Where a shard keeps its entries: fixed-size chunks with a free list.
//!
//! The shard's hash table holds 4-byte indexes into these chunks instead of the entries
//! themselves. A hash table grows by doubling and runs between 44 % and 88 % full, so
//! entries kept in it waste about a quarter of their size on empty buckets; here the
//! waste is at most one partly used chunk, and a freed place is reused by the next
//! entry. An index stays the same for the entry's whole life, so the policy and expiry
//! indexes can name entries by it.

/// Entries per chunk: small enough that a shard's last, partly used chunk costs little
/// (256 entries of about 100 bytes), large enough that the chunk list stays short.
pub(super) const CHUNK: usize = 256;

/// A chunked arena of `T`, addressed by `u32` indexes.
#[derive(Debug)]
pub(super) struct Slots<T> {
    chunks: Vec<Vec<Option<T>>>,
    /// Freed places, reused last-freed first.
    free: Vec<u32>,
}

impl<T> Slots<T> {
    pub(super) fn new() -> Self {
        Slots {
            chunks: Vec::new(),
            free: Vec::new(),
        }
    }

    /// Entries held: the places handed out, less the freed ones.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.places() - self.free.len()
    }

    /// Places handed out: the entries held and the freed places.
    pub(super) fn places(&self) -> usize {
        self.chunks.len().saturating_sub(1) * CHUNK + self.chunks.last().map_or(0, Vec::len)
    }

    /// Stores `value`; its index.
    ///
    /// # Panics
    /// Past `u32::MAX` entries in one shard (about 400 GiB of entries).
    pub(super) fn insert(&mut self, value: T) -> u32 {
        if let Some(index) = self.free.pop() {
            let place = self.place_mut(index);
            debug_assert!(place.is_none());
            *place = Some(value);
            return index;
        }
        if self.chunks.last().is_none_or(|chunk| chunk.len() == CHUNK) {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        let full_chunks = self.chunks.len() - 1;
        let chunk = self.chunks.last_mut().expect("a chunk was just ensured");
        let index = u32::try_from(full_chunks * CHUNK + chunk.len())
            .expect("a shard holds fewer than 2^32 entries");
        chunk.push(Some(value));
        index
    }

    /// Takes the entry at `index` out.
    ///
    /// # Panics
    /// If `index` holds no entry: indexes come only from [`Slots::insert`] and are
    /// dropped from every index when their entry is removed, so this is a bug.
    pub(super) fn remove(&mut self, index: u32) -> T {
        let value = self
            .place_mut(index)
            .take()
            .expect("a removed index is not used again");
        self.free.push(index);
        value
    }

    /// The entry at `index`.
    ///
    /// # Panics
    /// As [`Slots::remove`].
    pub(super) fn get(&self, index: u32) -> &T {
        let index = index as usize;
        self.chunks[index / CHUNK][index % CHUNK]
            .as_ref()
            .expect("an indexed entry is live")
    }

    /// The entry at `index`, to change it.
    ///
    /// # Panics
    /// As [`Slots::remove`].
    pub(super) fn get_mut(&mut self, index: u32) -> &mut T {
        self.place_mut(index)
            .as_mut()
            .expect("an indexed entry is live")
    }

    fn place_mut(&mut self, index: u32) -> &mut Option<T> {
        let index = index as usize;
        &mut self.chunks[index / CHUNK][index % CHUNK]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_are_stable_and_freed_places_are_reused() {
        let mut slots = Slots::new();
        let indexes: Vec<u32> = (0..600).map(|i| slots.insert(i)).collect();
        assert_eq!(indexes, (0..600).collect::<Vec<u32>>());
        assert_eq!(slots.chunks.len(), 3);
        assert_eq!(slots.remove(300), 300);
        assert_eq!(slots.remove(5), 5);
        assert_eq!(slots.len(), 598);
        assert_eq!(*slots.get(599), 599);
        assert_eq!(slots.insert(1000), 5, "the last freed place first");
        assert_eq!(slots.insert(1001), 300);
        assert_eq!(slots.insert(1002), 600, "then the end");
        *slots.get_mut(600) += 1;
        assert_eq!(*slots.get(600), 1003);
        assert_eq!(slots.chunks.len(), 3);
        assert!(slots.chunks.iter().all(|chunk| chunk.capacity() == CHUNK));
    }
}
