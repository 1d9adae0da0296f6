//! Eviction policies.

use std::fmt;

/// Which entry goes when the cache is full. Opaque; pick one with a named constructor.
///
/// - [`EvictionPolicy::lru`] — least recently used goes first. The default, and right for
///   most image traffic, where what was shown recently is shown again.
/// - [`EvictionPolicy::lfu`] — least frequently used goes first (ties: least recently
///   used). Pick it when a stable set of popular images (logos, avatars) must survive
///   bursts of one-off keys, such as a crawler walking the catalogue.
/// - [`EvictionPolicy::fifo`] — oldest insertion goes first, reads do not matter. Cheapest
///   bookkeeping (a read changes no order), and predictable when entries are refreshed on
///   a schedule anyway.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct EvictionPolicy(Kind);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub(crate) enum Kind {
    #[default]
    Lru,
    Lfu,
    Fifo,
}

impl EvictionPolicy {
    /// Least recently used.
    pub const fn lru() -> Self {
        EvictionPolicy(Kind::Lru)
    }
    /// Least frequently used, ties broken by recency.
    pub const fn lfu() -> Self {
        EvictionPolicy(Kind::Lfu)
    }
    /// First in, first out.
    pub const fn fifo() -> Self {
        EvictionPolicy(Kind::Fifo)
    }
    pub(crate) fn kind(self) -> Kind {
        self.0
    }
    /// `"lru"`, `"lfu"` or `"fifo"`.
    pub fn name(self) -> &'static str {
        match self.0 {
            Kind::Lru => "lru",
            Kind::Lfu => "lfu",
            Kind::Fifo => "fifo",
        }
    }
}

impl fmt::Debug for EvictionPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for EvictionPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for EvictionPolicy {
    type Err = crate::CacheError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "lru" => Ok(Self::lru()),
            "lfu" => Ok(Self::lfu()),
            "fifo" => Ok(Self::fifo()),
            _ => Err(crate::CacheError::InvalidInput(format!(
                "unknown eviction policy {s:?}: expected lru, lfu or fifo"
            ))),
        }
    }
}
