//! Blocklists: the `[blocklist]` config section, the line parser (plain, hosts and adblock formats), the compact
//! hashed name set consulted on every query, and the live set that is refreshed from files and URLs and swapped
//! atomically. Must not know DNS messages, the resolver, gRPC types or metrics: callers ask `is_blocked(name)` and
//! `response()` and build the answer themselves.
//!
//! Memory: a [`Blocklist`] is sorted `Vec<u64>`s of name hashes plus a small bucket index (≈ 8.1 bytes per entry;
//! the big buffers of a refresh are allocated so that memory does not creep up across refreshes). The hash is a fixed,
//! seeded 64-bit hash (deterministic across runs and machines). Two different names share a hash with probability
//! ≈ 2⁻⁶⁴, so with a million listed names a query label collides with some entry with probability ≈ n / 2⁶⁴ ≈ 5·10⁻¹⁴:
//! a false block is negligible (and an `allow` entry fixes it). Name hashes never reach the disk, so that function may
//! change; cache file names do use [`hash_bytes`], which must stay stable (a test pins it).
//!
//! Sources: every source is read in full (capped at [`MAX_SOURCE_BYTES`]); URLs are fetched with ureq inside
//! `spawn_blocking`, with timeouts. A source read successfully is cached raw in `cache_dir/<hash-of-source>.txt`
//! (written with `agent_core::state::write_atomic`); a source that fails falls back to its cached copy and reports
//! the error. A download that yields no domain at all but has unreadable lines (a captive portal, an HTML error page)
//! counts as a failure. One new [`Blocklist`] is built per refresh and swapped in; the old one is freed when its last
//! reader lets go.
//!
//! Layout (each submodule uses only those listed after it): `live` (the swappable set and refreshes) → `fetch`
//! (reading sources, the cache) → `set` (the compact set and its builder) → `config`, `parse`, `hash`; `config` uses
//! `parse` and `hash`. This file only declares them and re-exports the public API.

mod config;
mod fetch;
mod hash;
mod live;
mod parse;
mod set;

pub(crate) use config::{BlockResponse, BlocklistConfig, RawBlocklist, DEFAULT_REFRESH};
pub(crate) use fetch::{never_loaded, SourceStatus};
pub(crate) use live::Blocklists;
pub(crate) use parse::{parse_line, Line};
pub(crate) use set::Blocklist;

/// Helpers shared by the submodules' tests.
#[cfg(test)]
mod test_support {
    use super::hash::fmix;

    pub(super) fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// Deterministic domain generator (splitmix64); the benchmark needs the same one.
    pub(super) fn generate_domains(n: usize, seed: u64) -> Vec<String> {
        let mut state = seed;
        let mut next = || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            fmix(state)
        };
        const TLDS: [&str; 6] = ["com", "net", "org", "io", "example", "co.uk"];
        (0..n)
            .map(|i| {
                let r = next();
                format!("{}{:x}-{i:x}.{}", ["ads", "track", "pixel", "cdn"][(r & 3) as usize], r >> 40, TLDS[i % 6])
            })
            .collect()
    }
}
