//! The compact set: an immutable [`Blocklist`] of sorted name hashes with a bucket index, and the builder that parses
//! list texts into it (on several threads for big texts). Must not know where texts come from (files, URLs, the
//! cache), the config or refreshes.

use super::hash::{fold_label, hash_name, SEED};
use super::parse::{domain_line, may_be_local, parse_line_rest, valid_labels, Line};

/// An immutable set of blocked names and allowed names, as sorted, deduplicated 64-bit hashes. Big sets also have a
/// bucket index on the top bits of the hash (≈ 16 hashes per bucket, ≈ 0.25 byte per entry), so that a lookup touches
/// two or three cache lines instead of ~20 for a plain binary search over a million entries.
#[derive(Default)]
pub(crate) struct Blocklist {
    blocked: Vec<u64>,
    /// Empty, or `2^bits + 1` offsets: bucket `k` (hashes whose top `bits` bits are `k`) is `index[k]..index[k + 1]`.
    index: Vec<u32>,
    /// `64 - bits`.
    shift: u32,
    allowed: Vec<u64>,
    /// Which source listed each entry of `blocked` (the first configured one, when several did), as an index into
    /// `sources`; empty when there is at most one source (then it is source 0). Two bytes per entry.
    origin: Vec<u16>,
    /// The sources' names as status and the query log show them (path, or URL without credentials).
    sources: Vec<String>,
}

impl std::fmt::Debug for Blocklist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blocklist")
            .field("entries", &self.blocked.len())
            .field("allowed", &self.allowed.len())
            .field("heap_bytes", &self.heap_bytes())
            .finish()
    }
}

/// Sets smaller than this are searched without an index.
const INDEX_MIN_ENTRIES: usize = 4096;

impl Blocklist {
    pub(crate) fn empty() -> Self {
        Blocklist::default()
    }

    /// Distinct blocked names.
    pub(crate) fn len(&self) -> usize {
        self.blocked.len()
    }

    /// Heap memory held by the set.
    pub(crate) fn heap_bytes(&self) -> usize {
        (self.blocked.capacity() + self.allowed.capacity()) * std::mem::size_of::<u64>()
            + self.index.capacity() * std::mem::size_of::<u32>()
            + self.origin.capacity() * std::mem::size_of::<u16>()
    }

    fn contains(&self, h: u64) -> bool {
        self.position(h).is_some()
    }

    /// Where `h` is in `blocked`.
    fn position(&self, h: u64) -> Option<usize> {
        let (start, bucket) = if self.index.is_empty() {
            (0, &self.blocked[..])
        } else {
            let k = (h >> self.shift) as usize;
            match (self.index.get(k), self.index.get(k + 1)) {
                (Some(&a), Some(&b)) => (a as usize, self.blocked.get(a as usize..b as usize).unwrap_or(&[])),
                _ => (0, &[][..]),
            }
        };
        bucket.binary_search(&h).ok().map(|p| start + p)
    }

    fn with_index(blocked: Vec<u64>, allowed: Vec<u64>) -> Blocklist {
        let n = blocked.len();
        if n < INDEX_MIN_ENTRIES || n > u32::MAX as usize {
            return Blocklist { blocked, index: Vec::new(), shift: 0, allowed, ..Blocklist::default() };
        }
        let bits = (n / 16).ilog2().clamp(1, 24);
        let shift = 64 - bits;
        let buckets = 1usize << bits;
        let mut index = Vec::with_capacity(buckets + 1);
        let mut pos = 0usize;
        for k in 0..buckets {
            while pos < n && ((blocked[pos] >> shift) as usize) < k {
                pos += 1;
            }
            index.push(pos as u32);
        }
        index.push(n as u32);
        Blocklist { blocked, index, shift, allowed, ..Blocklist::default() }
    }

    /// The name of the source that blocks `name` (the one listing the broadest blocked parent; the first configured
    /// one when several list it), or `None` when `name` is not blocked. Agrees with [`Blocklist::is_blocked`]; a
    /// little slower, so it is only asked for the query log.
    pub(crate) fn blocked_by(&self, name: &str) -> Option<&str> {
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.is_empty() || self.blocked.is_empty() {
            return None;
        }
        let mut h = SEED;
        let mut found = None;
        for label in name.as_bytes().rsplit(|&b| b == b'.') {
            h = fold_label(h, label);
            if !self.allowed.is_empty() && self.allowed.binary_search(&h).is_ok() {
                return None;
            }
            if found.is_none() {
                found = self.position(h);
            }
        }
        let source = usize::from(self.origin.get(found?).copied().unwrap_or(0));
        Some(self.sources.get(source).map_or("blocklist", String::as_str))
    }

    /// `name` lowercase ASCII without trailing dot (uppercase and one trailing dot are tolerated); true if the name or
    /// any parent domain is listed and neither the name nor any parent is allowed. No allocation; O(labels × log n).
    pub(crate) fn is_blocked(&self, name: &str) -> bool {
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.is_empty() || self.blocked.is_empty() {
            return false;
        }
        let mut h = SEED;
        let mut blocked = false;
        for label in name.as_bytes().rsplit(|&b| b == b'.') {
            h = fold_label(h, label);
            if !self.allowed.is_empty() && self.allowed.binary_search(&h).is_ok() {
                return false;
            }
            if !blocked && self.contains(h) {
                if self.allowed.is_empty() {
                    return true;
                }
                blocked = true;
            }
        }
        blocked
    }
}

/// Collects hashes from several sources into one [`Blocklist`].
#[derive(Debug, Default)]
pub(super) struct Builder {
    pub(super) hashes: Vec<u64>,
    /// Where each source's hashes start in `hashes`, and the source's name.
    marks: Vec<(usize, String)>,
}

/// What one source contributed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Parsed {
    pub(super) entries: u64,
    pub(super) skipped_lines: u64,
}

/// Texts at least this big are parsed on several threads.
const PARALLEL_MIN_BYTES: usize = 4 * 1024 * 1024;

impl Parsed {
    fn add(&mut self, o: Parsed) {
        self.entries += o.entries;
        self.skipped_lines += o.skipped_lines;
    }
}

/// The lines that make up nearly all of a big list, `name` and `0.0.0.0 name` / `127.0.0.1 name` (optionally
/// ending in CR), when the name is a valid one that cannot be a local name: the name. Anything else (comments,
/// several names, a trailing dot, `*.`, adblock rules, odd spacing, …) is `None` and goes to [`parse_line_rest`],
/// which gives the same answer for every line this accepts (tested), just slower.
#[inline]
fn fast_name(line: &[u8]) -> Option<&[u8]> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let name = match line.first() {
        Some(b'0') => line.strip_prefix(b"0.0.0.0 ")?,
        Some(b'1') => line.strip_prefix(b"127.0.0.1 ")?,
        _ => line,
    };
    // A trailing dot leaves an empty last label: refused here, handled by the general parser.
    (!may_be_local(name) && valid_labels(name)).then_some(name)
}

/// Parses one line, handing every name hash to `emit`.
#[inline]
fn parse_into(line: &str, p: &mut Parsed, emit: &mut impl FnMut(u64)) {
    if let Some(name) = fast_name(line.as_bytes()) {
        emit(name.rsplit(|&b| b == b'.').fold(SEED, fold_label));
        p.entries += 1;
        return;
    }
    let (first, rest) = parse_line_rest(line);
    match first {
        Line::Domain(d) => {
            emit(hash_name(d));
            p.entries += 1;
        }
        Line::Skip => {}
        Line::Invalid => p.skipped_lines += 1,
    }
    let mut bad_extra = false;
    for extra in rest.split_ascii_whitespace() {
        match domain_line(extra) {
            Line::Domain(d) => {
                emit(hash_name(d));
                p.entries += 1;
            }
            Line::Skip => {}
            Line::Invalid => bad_extra = true,
        }
    }
    if bad_extra && first != Line::Invalid {
        p.skipped_lines += 1;
    }
}

fn count_newlines(b: &[u8]) -> usize {
    b.iter().filter(|&&c| c == b'\n').count()
}

impl Builder {
    /// Parses a list's bytes. Lines that are not UTF-8 count as skipped.
    pub(super) fn add_text(&mut self, text: &[u8]) -> Parsed {
        let lines = count_newlines(text) + 1;
        let needed = self.hashes.len() + lines;
        if needed > self.hashes.capacity() {
            // Big hash vectors start mmapped (see `buffer_capacity`); `finish` shrinks them in place.
            let cap = (big_capacity(needed as u64 * 8) / 8) as usize;
            self.hashes.reserve_exact(cap - self.hashes.len());
        }
        let mut p = Parsed::default();
        match std::str::from_utf8(text) {
            Ok(text) if text.len() >= PARALLEL_MIN_BYTES => p = self.add_parallel(text),
            // memchr-fast line splitting.
            Ok(text) => text.split('\n').for_each(|line| parse_into(line, &mut p, &mut |h| self.hashes.push(h))),
            Err(_) => {
                for raw in text.split(|&b| b == b'\n') {
                    match std::str::from_utf8(raw) {
                        Ok(line) => parse_into(line, &mut p, &mut |h| self.hashes.push(h)),
                        Err(_) => p.skipped_lines += 1,
                    }
                }
            }
        }
        p
    }

    /// Parses a big text on up to 4 threads, each writing into its own part of `hashes` (no extra allocation but
    /// for hosts lines with several names, which may overflow their part).
    fn add_parallel(&mut self, text: &str) -> Parsed {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4);
        let bytes = text.as_bytes();
        let mut chunks: Vec<&str> = Vec::with_capacity(threads);
        let mut start = 0;
        for i in 1..=threads {
            let target = (bytes.len() * i / threads).max(start);
            // Cut after a newline: always a char boundary.
            let end = match bytes[target..].iter().position(|&b| b == b'\n') {
                Some(j) if i < threads => target + j + 1,
                _ => bytes.len(),
            };
            if end > start {
                chunks.push(&text[start..end]);
                start = end;
            }
        }
        let base = self.hashes.len();
        let bounds: Vec<usize> = chunks.iter().map(|c| count_newlines(c.as_bytes()) + 1).collect();
        self.hashes.resize(base + bounds.iter().sum::<usize>(), 0);
        let mut parts: Vec<&mut [u64]> = Vec::with_capacity(chunks.len());
        let mut tail = &mut self.hashes[base..];
        for &n in &bounds {
            let (head, rest) = tail.split_at_mut(n);
            parts.push(head);
            tail = rest;
        }
        let results: Vec<(usize, Parsed, Vec<u64>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = chunks
                .iter()
                .zip(parts)
                .map(|(chunk, out)| {
                    scope.spawn(move || {
                        let (mut n, mut p, mut overflow) = (0usize, Parsed::default(), Vec::new());
                        chunk.split('\n').for_each(|line| {
                            parse_into(line, &mut p, &mut |h| match out.get_mut(n) {
                                Some(slot) => {
                                    *slot = h;
                                    n += 1;
                                }
                                None => overflow.push(h),
                            })
                        });
                        (n, p, overflow)
                    })
                })
                .collect();
            // A parser thread cannot panic on input; should one die anyway, its lines are lost, not the process.
            handles.into_iter().map(|h| h.join().unwrap_or((0, Parsed::default(), Vec::new()))).collect()
        });
        // Close the gaps between the parts, then append what overflowed.
        let mut write = base;
        let mut read = base;
        let mut total = Parsed::default();
        for ((n, p, _), bound) in results.iter().zip(&bounds) {
            self.hashes.copy_within(read..read + n, write);
            write += n;
            read += bound;
            total.add(*p);
        }
        self.hashes.truncate(write);
        for (_, _, overflow) in results {
            self.hashes.extend_from_slice(&overflow);
        }
        total
    }

    /// Forgets everything added after `len` hashes (a source rejected after parsing).
    pub(super) fn truncate(&mut self, len: usize) {
        self.hashes.truncate(len);
    }

    /// What is added from now on comes from the source named `name`.
    pub(super) fn begin_source(&mut self, name: String) {
        self.marks.push((self.hashes.len(), name));
    }

    pub(super) fn finish(self, allow: &[String]) -> Blocklist {
        let Builder { hashes, marks } = self;
        let (mut blocked, origin) = if marks.len() > 1 {
            // Each hash tagged with its source, sorted: the first source listing a name is the one named.
            let mut pairs: Vec<(u64, u16)> = Vec::with_capacity(hashes.len());
            for (k, (start, _)) in marks.iter().enumerate() {
                let end = marks.get(k + 1).map_or(hashes.len(), |m| m.0).min(hashes.len());
                let src = u16::try_from(k).unwrap_or(u16::MAX);
                pairs.extend(hashes.get(*start..end).unwrap_or(&[]).iter().map(|&h| (h, src)));
            }
            drop(hashes);
            pairs.sort_unstable();
            pairs.dedup_by_key(|p| p.0);
            let blocked: Vec<u64> = pairs.iter().map(|p| p.0).collect();
            let mut origin: Vec<u16> = pairs.iter().map(|p| p.1).collect();
            origin.shrink_to_fit();
            (blocked, origin)
        } else {
            let mut blocked = hashes;
            blocked.sort_unstable();
            blocked.dedup();
            (blocked, Vec::new())
        };
        blocked.shrink_to_fit();
        let mut allowed: Vec<u64> = allow.iter().map(|a| hash_name(a)).collect();
        allowed.sort_unstable();
        allowed.dedup();
        allowed.shrink_to_fit();
        let mut list = Blocklist::with_index(blocked, allowed);
        list.origin = origin;
        list.sources = marks.into_iter().map(|m| m.1).collect();
        list
    }
}

impl Blocklist {
    /// Builds a list from in-memory list texts (tests, benchmarks, tools).
    pub(crate) fn from_texts<'a>(texts: impl IntoIterator<Item = &'a [u8]>, allow: &[String]) -> Blocklist {
        let mut b = Builder::default();
        for (i, t) in texts.into_iter().enumerate() {
            b.begin_source(format!("text {i}"));
            b.add_text(t);
        }
        b.finish(allow)
    }
}

/// `bytes`, raised to `BIG_BUFFER` when it is at least 1 MiB: big buffers are always mmapped (the reason is at
/// `fetch::buffer_capacity`).
pub(super) fn big_capacity(bytes: u64) -> u64 {
    const BIG_BUFFER: u64 = 33 * 1024 * 1024;
    const SMALL: u64 = 1024 * 1024;
    if bytes >= SMALL {
        bytes.max(BIG_BUFFER)
    } else {
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocklist::test_support::{generate_domains, names};

    #[test]
    fn subdomains_blocked_and_allow_wins() {
        let list = Blocklist::from_texts(
            [b"example.com\n0.0.0.0 Tracker.NET\n||ads.org^\n".as_slice()],
            &names(&["good.example.com"]),
        );
        assert_eq!(list.len(), 3);
        let cases = [
            ("example.com", true),
            ("ads.example.com", true),
            ("a.b.c.example.com", true),
            ("EXAMPLE.com.", true),
            ("good.example.com", false),
            ("x.good.example.com", false),
            ("notexample.com", false),
            ("com", false),
            ("tracker.net", true),
            ("x.tracker.net", true),
            ("ads.org", true),
            ("www.ads.org", true),
            ("org", false),
            ("", false),
            (".", false),
        ];
        for (name, want) in cases {
            assert_eq!(list.is_blocked(name), want, "{name}");
            assert_eq!(list.blocked_by(name).is_some(), want, "blocked_by agrees with is_blocked: {name}");
        }
        let empty = Blocklist::empty();
        assert!(empty.len() == 0 && !empty.is_blocked("example.com") && empty.blocked_by("example.com").is_none());
    }

    #[test]
    fn blocked_by_names_the_first_source_listing_the_name() {
        let ads = b"ads.example\nshared.example\n".as_slice();
        let trackers = b"tracker.example\nshared.example\n".as_slice();
        for n in [1usize, INDEX_MIN_ENTRIES] {
            // Filler entries so that the indexed lookup is covered too.
            let filler = generate_domains(n, 3).join("\n");
            let list = Blocklist::from_texts([ads, trackers, filler.as_bytes()], &names(&["ok.shared.example"]));
            assert_eq!(list.blocked_by("x.ads.example"), Some("text 0"));
            assert_eq!(list.blocked_by("tracker.example."), Some("text 1"));
            assert_eq!(list.blocked_by("shared.example"), Some("text 0"), "listed twice: the first source");
            assert_eq!(list.blocked_by("ok.shared.example"), None, "allowed");
            assert_eq!(list.blocked_by("example"), None);
            assert_eq!(list.origin.len(), list.len(), "one origin per entry");
        }
        let one = Blocklist::from_texts([ads], &[]);
        assert!(one.origin.is_empty(), "a single source needs no origins");
        assert_eq!(one.blocked_by("ads.example"), Some("text 0"));
    }

    #[test]
    fn indexed_lookup_finds_every_entry() {
        for n in [10, INDEX_MIN_ENTRIES - 1, INDEX_MIN_ENTRIES, 50_000] {
            let domains = generate_domains(n, 7);
            let text = domains.join("\n");
            let list = Blocklist::from_texts([text.as_bytes()], &[]);
            assert_eq!(list.len(), n);
            assert_eq!(list.index.is_empty(), n < INDEX_MIN_ENTRIES, "{n}");
            for d in &domains {
                assert!(list.is_blocked(d), "{n}: {d}");
            }
            assert!(list.is_blocked(&format!("www.{}", domains[n / 2])));
            let others = generate_domains(1000, 8);
            let hits = others.iter().filter(|d| list.is_blocked(d)).count();
            let listed: std::collections::HashSet<&String> = domains.iter().collect();
            assert_eq!(hits, others.iter().filter(|d| listed.contains(d)).count(), "{n}");
        }
    }

    #[test]
    fn parallel_parse_matches_sequential() {
        // Above PARALLEL_MIN_BYTES, with hosts lines of two names (overflowing each thread's part) and bad lines.
        let mut text = String::new();
        let mut i = 0;
        while text.len() < PARALLEL_MIN_BYTES + 1000 {
            text.push_str(&format!("0.0.0.0 a{i}.example.com b{i}.example.net\nbad line {i}\n||c{i}.example.org^\n"));
            i += 1;
        }
        let mut b = Builder::default();
        let p = b.add_text(text.as_bytes());
        assert_eq!(p, Parsed { entries: 3 * i as u64, skipped_lines: i as u64 });
        let list = b.finish(&[]);
        assert_eq!(list.len(), 3 * i);
        for k in [0, i / 2, i - 1] {
            for name in [format!("a{k}.example.com"), format!("b{k}.example.net"), format!("c{k}.example.org")] {
                assert!(list.is_blocked(&name), "{name}");
            }
        }
    }

    /// The general parser's hashes and counts for one line (the fast path bypassed).
    fn slow(line: &str) -> (Vec<u64>, Parsed) {
        let (first, rest) = parse_line_rest(line);
        let mut hashes = Vec::new();
        let mut p = Parsed::default();
        match first {
            Line::Domain(d) => {
                hashes.push(hash_name(d));
                p.entries += 1;
            }
            Line::Skip => {}
            Line::Invalid => p.skipped_lines += 1,
        }
        for extra in rest.split_ascii_whitespace() {
            if let Line::Domain(d) = domain_line(extra) {
                hashes.push(hash_name(d));
                p.entries += 1;
            }
        }
        (hashes, p)
    }

    #[test]
    fn fast_path_agrees_with_the_general_parser() {
        let mut lines: Vec<String> = [
            "ads.example.com",
            "0.0.0.0 ads.example.com",
            "127.0.0.1 Ads.Example.COM",
            "0.0.0.0 ads.example.com\r",
            "0.0.0.0  ads.example.com",
            "0.0.0.0\tads.example.com",
            "0.0.0.0 ads.example.com ",
            "0.0.0.0 ads.example.com.",
            "0.0.0.0 *.ads.example.com",
            "0.0.0.0 localhost",
            "0.0.0.0 local",
            "0.0.0.0 0.0.0.0",
            "0.0.0.0",
            "127.0.0.1",
            "0.0.0.0 ",
            "1.2.3.4 ads.example.com",
            "10.0.0.1",
            "0.0.0.0 ads..example.com",
            "0.0.0.0 .example.com",
            "0.0.0.0 example.123",
            "0.0.0.0 ads.example.com # tracker",
            "0.0.0.0 a.example b.example",
            "0.0.0.0 ex_ample.com",
            "0.0.0.0 -ads.example.com",
            "0.0.0.0 ads.ex ample.com",
            "127.0.0.1 ip6-loopback",
            "ip6-allhosts",
            "imagine-a-long-name.example",
            "broadcasthost",
            "b.co",
            "||ads.example.com^",
            "# comment",
            "",
            "\r",
            "\u{feff}ads.example.com",
            "0.0.0.0 ads.exämple.com",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        lines.push(format!("0.0.0.0 {}.com", "a".repeat(63)));
        lines.push(format!("0.0.0.0 {}.com", "a".repeat(64)));
        lines.push(format!("{}com", "abcdefgh.".repeat(27)));
        lines.push(format!("{}co", "abcdefgh.".repeat(27)));
        let mut fast_taken = 0;
        for line in &lines {
            let mut hashes = Vec::new();
            let mut p = Parsed::default();
            parse_into(line, &mut p, &mut |h| hashes.push(h));
            assert_eq!((hashes, p), slow(line), "line {line:?}");
            fast_taken += usize::from(fast_name(line.as_bytes()).is_some());
        }
        assert_eq!(fast_taken, 10, "the table exercises the fast path");
    }

    #[test]
    fn allow_of_parent_unblocks_listed_child() {
        let list = Blocklist::from_texts([b"ads.example.com\n".as_slice()], &names(&["example.com"]));
        assert!(!list.is_blocked("ads.example.com"));
        assert!(!list.is_blocked("x.ads.example.com"));
    }
}
