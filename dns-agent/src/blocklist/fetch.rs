//! Fetching sources for one refresh: files read and URLs downloaded (capped, with timeouts), a failed source falling
//! back to its raw cached copy, the cached copies written and pruned, the per-source status. Must not know when
//! refreshes happen or how the live set is swapped; never DNS messages.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, UNIX_EPOCH};

use super::config::{redact_userinfo, BlocklistConfig, Source};
use super::hash::hash_bytes;
use super::set::{big_capacity, Blocklist, Builder};

/// Largest source accepted (file or download); a larger one is an error and its cached copy is used.
pub(crate) const MAX_SOURCE_BYTES: u64 = 128 * 1024 * 1024;
/// Whole-download timeout (connect, headers and body) for a URL source.
pub(crate) const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// Connect timeout for a URL source.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Mode of cached copies of sources.
const CACHE_MODE: u32 = 0o600;

/// Why a source could not be read.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("cannot read blocklist file: {0}")]
    Read(std::io::Error),
    #[error("blocklist is larger than {MAX_SOURCE_BYTES} bytes")]
    TooLarge,
    #[error("blocklist download failed: {0}")]
    Download(String),
    #[error("blocklist download has no usable line ({0} unreadable lines)")]
    Unusable(u64),
}

/// Per-source outcome of a refresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceStatus {
    /// The path or URL (without credentials).
    pub source: String,
    pub entries: u64,
    pub skipped_lines: u64,
    /// The last failure (the cached copy was used if there was one).
    pub error: Option<String>,
    /// When the data in use was read (Unix seconds); 0 if nothing was ever read.
    pub loaded_unix: i64,
    /// What this refresh did with the source itself: `Some(true)` read it, `Some(false)` failed to (its cached copy,
    /// if any, is in use), `None` did not try (the cached-copies-only load at startup).
    pub fresh: Option<bool>,
}

/// One reason per source whose data was never read (no download, no cached copy): blocking from it is not
/// happening. A source that failed but still serves an older copy is not in the list.
pub(crate) fn never_loaded(statuses: &[SourceStatus]) -> Vec<String> {
    statuses
        .iter()
        .filter(|s| s.loaded_unix == 0)
        .map(|s| format!("blocklist {}: never loaded: {}", s.source, s.error.as_deref().unwrap_or("no data")))
        .collect()
}

/// Capacity of a buffer for `expected` bytes. Large buffers get at least [`BIG_BUFFER`] so that, on glibc, they are
/// always mmapped and handed back to the kernel when freed: freeing a mmapped block of up to 32 MiB raises glibc's
/// dynamic mmap threshold, after which the next refreshes' buffers and lists would come from the heap and stay
/// resident (measured: +32 MB RSS from the second refresh on). Capacity that is never written costs no RSS.
fn buffer_capacity(expected: u64) -> usize {
    big_capacity(expected.min(MAX_SOURCE_BYTES) + 1) as usize
}

/// Reads at most [`MAX_SOURCE_BYTES`] from `r` into a buffer sized for `expected` bytes.
fn read_capped(r: impl Read, expected: u64) -> Result<Vec<u8>, std::io::Error> {
    let mut buf = Vec::with_capacity(buffer_capacity(expected));
    r.take(MAX_SOURCE_BYTES + 1).read_to_end(&mut buf)?;
    Ok(buf)
}

fn read_file_capped(path: &Path) -> Result<Vec<u8>, FetchError> {
    let f = std::fs::File::open(path).map_err(FetchError::Read)?;
    let len = f.metadata().map_err(FetchError::Read)?.len();
    if len > MAX_SOURCE_BYTES {
        return Err(FetchError::TooLarge);
    }
    let buf = read_capped(f, len).map_err(FetchError::Read)?;
    if buf.len() as u64 > MAX_SOURCE_BYTES {
        return Err(FetchError::TooLarge);
    }
    Ok(buf)
}

fn download(agent: &ureq::Agent, url: &str) -> Result<Vec<u8>, FetchError> {
    let failed = |e: &dyn std::fmt::Display| FetchError::Download(redact_userinfo(&e.to_string()));
    let mut resp = agent.get(url).call().map_err(|e| failed(&e))?;
    // Unknown length: assume a big list (the buffer is only virtual until written).
    let expected = resp.body().content_length().unwrap_or(MAX_SOURCE_BYTES);
    if expected > MAX_SOURCE_BYTES {
        return Err(FetchError::TooLarge);
    }
    let reader = resp.body_mut().with_config().limit(MAX_SOURCE_BYTES).reader();
    read_capped(reader, expected).map_err(|e| match e.get_ref().and_then(|i| i.downcast_ref::<ureq::Error>()) {
        Some(ureq::Error::BodyExceedsLimit(_)) => FetchError::TooLarge,
        _ => failed(&e),
    })
}

fn http_agent() -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .timeout_global(Some(DOWNLOAD_TIMEOUT))
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .user_agent(concat!("strata-dns-agent/", env!("CARGO_PKG_VERSION")))
        .build();
    ureq::Agent::new_with_config(config)
}

fn mtime_unix(path: &Path) -> i64 {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs() as i64)
}

/// A source read successfully whose cached copy is out of date.
pub(super) struct PendingCache {
    source: String,
    cache_name: String,
    content: u64,
    bytes: Vec<u8>,
}

/// Where a refresh spent its time (logged with "blocklist loaded").
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Phases {
    pub(super) read: Duration,
    pub(super) parse: Duration,
    pub(super) index: Duration,
}

/// Reads every source into one new list. Blocking: runs in `spawn_blocking`. With `cached_only`, URLs are not
/// fetched (the fast first load at startup). `written` is which content each cache file holds, as last seen (a
/// write still under way may make it stale: [`CacheWrites::write`] checks again).
pub(super) fn build_all(
    cfg: &BlocklistConfig,
    cache_dir: &Path,
    cached_only: bool,
    written: &HashMap<String, u64>,
) -> (Blocklist, Vec<SourceStatus>, Vec<PendingCache>, Phases) {
    let mut phases = Phases::default();
    let mut builder = Builder::default();
    let mut pending = Vec::new();
    let mut statuses = Vec::with_capacity(cfg.sources.len());
    let agent = (!cached_only && cfg.sources.iter().any(|s| matches!(s, Source::Url(_)))).then(http_agent);
    for source in &cfg.sources {
        let cache_name = source.cache_file_name();
        let cache_path = cache_dir.join(&cache_name);
        let mut status = SourceStatus {
            source: source.display(),
            entries: 0,
            skipped_lines: 0,
            error: None,
            loaded_unix: 0,
            fresh: None,
        };
        let t = Instant::now();
        let fetched = match (source, &agent) {
            (Source::File(p), _) => Some(read_file_capped(p)),
            (Source::Url(u), Some(agent)) => Some(download(agent, u)),
            (Source::Url(_), None) => None,
        };
        phases.read += t.elapsed();
        builder.begin_source(status.source.clone());
        let mark = builder.hashes.len();
        let mut use_cache = true;
        if let Some(result) = fetched {
            let accepted = result.and_then(|bytes| {
                let t = Instant::now();
                let p = builder.add_text(&bytes);
                phases.parse += t.elapsed();
                if p.entries == 0 && p.skipped_lines > 0 && matches!(source, Source::Url(_)) {
                    builder.truncate(mark);
                    return Err(FetchError::Unusable(p.skipped_lines));
                }
                Ok((p, bytes))
            });
            match accepted {
                Ok((p, bytes)) => {
                    use_cache = false;
                    status.fresh = Some(true);
                    status.entries = p.entries;
                    status.skipped_lines = p.skipped_lines;
                    status.loaded_unix = agent_core::clock::now_unix();
                    let content = hash_bytes(&bytes);
                    if written.get(&cache_name) != Some(&content) {
                        pending.push(PendingCache { source: status.source.clone(), cache_name, content, bytes });
                    }
                }
                Err(e) => {
                    status.error = Some(e.to_string());
                    status.fresh = Some(false);
                }
            }
        }
        if use_cache {
            let t = Instant::now();
            let cached = read_file_capped(&cache_path);
            phases.read += t.elapsed();
            match cached {
                Ok(bytes) => {
                    let t = Instant::now();
                    let p = builder.add_text(&bytes);
                    phases.parse += t.elapsed();
                    status.entries = p.entries;
                    status.skipped_lines = p.skipped_lines;
                    status.loaded_unix = mtime_unix(&cache_path);
                }
                Err(FetchError::Read(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                    if status.error.is_none() {
                        status.error = Some("blocklist not downloaded yet".into());
                    }
                }
                Err(e) => {
                    let first = status.error.take().map(|f| format!("{f}; ")).unwrap_or_default();
                    status.error = Some(format!("{first}cached copy unusable: {e}"));
                }
            }
        }
        if let Some(e) = &status.error {
            if !cached_only {
                tracing::warn!(source = %status.source, error = %e, entries = status.entries, "blocklist source failed");
            }
        }
        statuses.push(status);
    }
    if !cached_only {
        remove_stale_cache(cache_dir, cfg);
    }
    let t = Instant::now();
    let list = builder.finish(&cfg.allow);
    phases.index = t.elapsed();
    (list, statuses, pending, phases)
}

/// Which content each cache file holds, and which refresh (by sequence number) wrote it.
type Written = HashMap<String, (u64, u64)>;

/// The cache files' bookkeeping, shared by overlapping refreshes (the next one may read and parse while this one
/// writes its cached copies).
#[derive(Debug, Default)]
pub(super) struct CacheWrites {
    /// Held for the whole of a refresh's writing: one writer at a time.
    writing: std::sync::Mutex<()>,
    /// Locked only briefly: a refresh starting reads it while another writes.
    written: std::sync::Mutex<Written>,
    /// Refreshes with copies still to write: while there are any, what `written` says may be about to change, so a
    /// refresh starting then treats every copy as out of date (and [`CacheWrites::write`] sorts it out).
    pub(super) queued: AtomicU64,
}

impl CacheWrites {
    /// Cache file → the content it holds, as far as known now; nothing while another refresh's copies are queued.
    pub(super) fn seen(&self) -> HashMap<String, u64> {
        if self.queued.load(Ordering::Acquire) > 0 {
            return HashMap::new();
        }
        let w = self.written.lock().unwrap_or_else(|p| p.into_inner());
        w.iter().map(|(name, &(_, content))| (name.clone(), content)).collect()
    }

    /// Writes the cached copies that changed (after the new list is in use: a fsync must not delay blocking); a copy
    /// that a later refresh already wrote, or that holds this content already, is left as it is.
    pub(super) fn write(&self, cache_dir: &Path, pending: Vec<PendingCache>, seq: u64) {
        let _one_writer = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        for p in pending {
            let skip = match self.written.lock().unwrap_or_else(|p| p.into_inner()).get(&p.cache_name) {
                Some(&(by, content)) => by > seq || content == p.content,
                None => false,
            };
            if skip {
                continue;
            }
            let saved = agent_core::state::ensure_dir(cache_dir)
                .and_then(|()| agent_core::state::write_atomic(&cache_dir.join(&p.cache_name), &p.bytes, CACHE_MODE));
            match saved {
                Ok(()) => {
                    self.written.lock().unwrap_or_else(|p| p.into_inner()).insert(p.cache_name, (seq, p.content));
                }
                Err(e) => tracing::warn!(source = %p.source, error = %e, "cannot cache blocklist"),
            }
        }
    }
}

/// Deletes cached copies of sources that are no longer configured (only files named like ours).
fn remove_stale_cache(cache_dir: &Path, cfg: &BlocklistConfig) {
    let Ok(entries) = std::fs::read_dir(cache_dir) else { return };
    let keep: Vec<String> = cfg.sources.iter().map(Source::cache_file_name).collect();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let ours = name.len() == 20
            && name.ends_with(".txt")
            && name[..16].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if ours && !keep.iter().any(|k| k == name) {
            if let Err(e) = std::fs::remove_file(entry.path()) {
                tracing::warn!(file = %entry.path().display(), error = %e, "cannot remove stale blocklist cache");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_cache_writes_keep_the_newest_copy() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CacheWrites::default();
        let pending = |text: &str| {
            let bytes = text.as_bytes().to_vec();
            vec![PendingCache {
                source: "s".into(),
                cache_name: "0123456789abcdef.txt".into(),
                content: hash_bytes(&bytes),
                bytes,
            }]
        };
        let file = dir.path().join("0123456789abcdef.txt");
        // Refresh 2 writes before refresh 1 (they overlap): 1's older copy must not replace 2's.
        cache.write(dir.path(), pending("b.example\n"), 2);
        cache.write(dir.path(), pending("a.example\n"), 1);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "b.example\n");
        assert_eq!(cache.seen()["0123456789abcdef.txt"], hash_bytes(b"b.example\n"));
        // The same content again is not rewritten; a newer one is.
        std::fs::write(&file, "marker\n").unwrap();
        cache.write(dir.path(), pending("b.example\n"), 3);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "marker\n");
        cache.write(dir.path(), pending("c.example\n"), 4);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "c.example\n");
    }
}
