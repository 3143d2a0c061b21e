//! One page of a backup's file list as labctl shows it (`labctl services files`, `labctl vm files`): a table, or
//! the page as JSON, and on stderr the command that shows the next page. Must not know how the page was fetched.

use anyhow::Result;
use serde::Serialize;

use crate::output;
use crate::table::{size, utc, Table};

/// One page (`--json`: this object, with `source`/`place` named for what was listed).
#[derive(Debug, Serialize)]
pub(crate) struct Page {
    /// The archive or backup listed.
    pub source: String,
    /// Its repository or target (label).
    pub place: String,
    /// Entries in all pages.
    pub total: u64,
    /// Empty on the last page.
    pub next_page_token: String,
    pub entries: Vec<Row>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Row {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub mode: String,
    pub size: u64,
    pub mtime_unix: i64,
    pub link_target: String,
}

/// The page as a table headed by what was listed (`source_word` `place_word`: "archive", "repository"), or as
/// JSON; then, when there is more, `next` plus `--page-token TOKEN` on stderr.
pub(crate) fn show(p: &Page, source_word: &str, place_word: &str, json: bool, next: &str) -> Result<()> {
    if json {
        output::json(p)?;
    } else {
        print!("{source_word} {} in {place_word} {}\n{}", p.source, p.place, render(p));
    }
    if !p.next_page_token.is_empty() {
        eprintln!(
            "{} of {} entries shown; next page: {next} --page-token {}",
            p.entries.len(),
            p.total,
            agent_core::runner::shell_quote(&p.next_page_token)
        );
    }
    Ok(())
}

fn render(p: &Page) -> String {
    let mut t = Table::new(["MODE", "SIZE", "MODIFIED", "PATH"]);
    for e in &p.entries {
        let path = if e.link_target.is_empty() { e.path.clone() } else { format!("{} -> {}", e.path, e.link_target) };
        let size = if e.kind == "dir" { "-".to_string() } else { size(e.size) };
        t.row([e.mode.clone(), size, utc(e.mtime_unix), path]);
    }
    t.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_renders_sizes_times_and_links() {
        let row = |path: &str, kind: &str, size, link: &str| Row {
            path: path.into(),
            kind: kind.into(),
            mode: "-rw-r--r--".into(),
            size,
            mtime_unix: 1_796_482_994,
            link_target: link.into(),
        };
        let p = Page {
            source: "photos-1".into(),
            place: "local".into(),
            total: 3,
            next_page_token: String::new(),
            entries: vec![row("lib", "dir", 0, ""), row("lib/a.jpg", "file", 2048, ""), row("l", "symlink", 5, "a")],
        };
        let out = render(&p);
        assert!(out.contains("MODIFIED"), "{out}");
        assert!(out.lines().any(|l| l.ends_with("lib") && l.contains(" - ")), "{out}");
        assert!(out.contains("l -> a"), "{out}");
        assert!(out.contains("2026-12-05"), "{out}");
    }
}
