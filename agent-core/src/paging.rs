//! The one paging scheme of listings too long for one answer (an archive's or a VM backup's files): a page is
//! `limit` entries from `offset`, and the token of the next page is `OFFSET:SOURCE`, naming what it pages through
//! (an archive is immutable, so an offset into it stays valid; a token never moves to a newer archive).
//! Must not know proto/tonic or what is listed.

/// Entries per page when the caller gives no limit, and the most one page may hold.
pub const DEFAULT_LIMIT: usize = 500;
pub const MAX_LIMIT: usize = 5000;

/// Where a page starts, and in what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub offset: usize,
    pub source: String,
}

/// The token of the page starting at `offset` in `source`.
pub fn token(offset: usize, source: &str) -> String {
    format!("{offset}:{source}")
}

/// A token [`token`] made; the error says why it is not one.
pub fn parse_token(t: &str) -> Result<Cursor, String> {
    let (o, s) = t.split_once(':').ok_or("not a page token (OFFSET:SOURCE)")?;
    let offset = o.parse().map_err(|_| format!("`{o}` is not an offset (OFFSET:SOURCE)"))?;
    if s.is_empty() || s.chars().any(char::is_control) || s.len() > 255 {
        return Err("not a page token (OFFSET:SOURCE)".into());
    }
    Ok(Cursor { offset, source: s.to_string() })
}

/// A requested page size: 0 is [`DEFAULT_LIMIT`]; more than [`MAX_LIMIT`] is an error saying so.
pub fn limit(requested: u32) -> Result<usize, String> {
    match requested as usize {
        0 => Ok(DEFAULT_LIMIT),
        l if l > MAX_LIMIT => Err(format!("{l} is more than {MAX_LIMIT} entries per page")),
        l => Ok(l),
    }
}

/// Where a requested page starts: `source` as asked (`None`: the newest), the request's `page_token` (empty: the first
/// page) and `limit` (0: [`DEFAULT_LIMIT`]). A token names its source, which must be the one asked for when one is
/// (`what` names a source in the error: `archive`, `backup`). Returns the source, the offset and the limit; an error
/// names the request's field (`page_token: …`, `limit: …`).
pub fn start(
    source: Option<String>,
    page_token: &str,
    limit: u32,
    what: &str,
) -> Result<(Option<String>, usize, usize), String> {
    let (mut source, mut offset) = (source, 0);
    if !page_token.is_empty() {
        let c = parse_token(page_token).map_err(|e| format!("page_token: {e}"))?;
        if let Some(asked) = source.as_deref().filter(|s| *s != c.source) {
            return Err(format!("page_token: pages {what} {}, not {asked}", c.source));
        }
        offset = c.offset;
        source = Some(c.source);
    }
    let limit = self::limit(limit).map_err(|e| format!("limit: {e}"))?;
    Ok((source, offset, limit))
}

/// The page of `all` from `offset` (at most `limit` entries), and the offset of the next page (`None` on the last).
pub fn page<T>(all: Vec<T>, offset: usize, limit: usize) -> (Vec<T>, Option<usize>) {
    let total = all.len();
    let entries: Vec<T> = all.into_iter().skip(offset).take(limit.max(1)).collect();
    let end = offset.saturating_add(entries.len());
    (entries, (end < total).then_some(end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_cover_everything_once() {
        let all: Vec<u32> = (0..7).collect();
        let mut seen = Vec::new();
        let mut offset = 0;
        let mut pages = 0;
        loop {
            let (p, next) = page(all.clone(), offset, 3);
            assert!(p.len() <= 3);
            seen.extend(p);
            pages += 1;
            match next {
                Some(n) => offset = parse_token(&token(n, "a-1")).unwrap().offset,
                None => break,
            }
        }
        assert_eq!((seen, pages), (all, 3));
        assert_eq!(page(vec![1], 5, 3), (vec![], None));
    }

    #[test]
    fn tokens_and_limits_are_checked() {
        assert_eq!(parse_token("500:photos-1:x").unwrap(), Cursor { offset: 500, source: "photos-1:x".into() });
        for bad in ["", "500", "x:photos", "5:", "-1:a", "5:a\nb"] {
            assert!(parse_token(bad).is_err(), "{bad:?}");
        }
        assert_eq!(limit(0), Ok(DEFAULT_LIMIT));
        assert_eq!(limit(7), Ok(7));
        assert_eq!(limit(5001).unwrap_err(), "5001 is more than 5000 entries per page");
    }

    #[test]
    fn a_page_starts_where_its_token_says_and_only_in_the_source_asked_for() {
        assert_eq!(start(None, "", 0, "archive"), Ok((None, 0, DEFAULT_LIMIT)));
        assert_eq!(start(None, "500:p-1", 9, "archive"), Ok((Some("p-1".into()), 500, 9)));
        assert_eq!(start(Some("p-1".into()), "500:p-1", 0, "archive"), Ok((Some("p-1".into()), 500, DEFAULT_LIMIT)));
        assert_eq!(
            start(Some("p-2".into()), "500:p-1", 0, "backup").unwrap_err(),
            "page_token: pages backup p-1, not p-2"
        );
        assert!(start(None, "x", 0, "archive").unwrap_err().starts_with("page_token: "));
        assert!(start(None, "", 5001, "archive").unwrap_err().starts_with("limit: "));
    }
}
