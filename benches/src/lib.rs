//! Criterion benchmarks live in `benches/benches/`; see `docs/performance.md`.
