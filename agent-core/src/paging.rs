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
}
