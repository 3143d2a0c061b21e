//! What borg's stderr says while it runs with `--log-json`: byte progress for a [`ProgressSink`], the files a
//! `create` read (`--list --filter=AME`: added, modified or errored — unchanged files are not read) and the text
//! lines kept for warnings and errors. One runner line filter built from these; must not know borg's commands or
//! flags beyond the JSON lines they print (`mod.rs` chooses them).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::parse::{parse_log_line, LogLine};
use super::{ProgressSink, Transferred};
use crate::runner::LineFilter;

/// The files a `create` read, as borg listed them: how many, and the first [`FilesRead::KEPT`] paths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilesRead {
    pub count: u64,
    /// Paths as borg names them (relative to the directory it ran in), in its order.
    pub paths: Vec<String>,
}

impl FilesRead {
    /// Paths kept: the count goes on, the list is bounded.
    pub const KEPT: usize = 20;

    fn add(&mut self, path: String) {
        self.count += 1;
        if self.paths.len() < Self::KEPT {
            self.paths.push(path);
        }
    }
}

/// What the filter found, read after the run.
#[derive(Default)]
pub(super) struct Seen {
    /// The total an extract reported last (borg throttles its reports: the last may come before the end).
    pub(super) last_total: AtomicU64,
    pub(super) read: Mutex<FilesRead>,
}

impl Seen {
    pub(super) fn last_total(&self) -> u64 {
        self.last_total.load(Ordering::Relaxed)
    }

    pub(super) fn files_read(&self) -> FilesRead {
        self.read.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The line filter of a run with `--log-json`: progress to `sink` (when given), listed files into `seen`, borg's
/// messages and any other text kept (as borg prints them without `--log-json`).
pub(super) fn filter(sink: Option<ProgressSink>, seen: Arc<Seen>) -> LineFilter {
    Arc::new(move |line: &str| match parse_log_line(line) {
        LogLine::Created { original_size, .. } => {
            if let Some(s) = &sink {
                s(Transferred { done: original_size, total: None });
            }
            None
        }
        LogLine::Extracted { done, total } => {
            seen.last_total.store(total, Ordering::Relaxed);
            if let Some(s) = &sink {
                s(Transferred { done, total: Some(total) });
            }
            None
        }
        LogLine::FileStatus { path, .. } => {
            seen.read.lock().unwrap_or_else(|e| e.into_inner()).add(path);
            None
        }
        LogLine::OtherProgress => None,
        LogLine::Message(text) | LogLine::Text(text) => Some(text),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from `borg create --list --filter=AME --log-json` (borg 1.2.4) of a directory with one file changed.
    const LISTED: &str = r#"{"type": "file_status", "status": "M", "path": "ext1.vmdk"}
{"type": "file_status", "status": "A", "path": "vm.toml"}
{"type": "log_message", "time": 1764954420.1, "message": "x: [Errno 13] Permission denied: 'x'", "levelname": "WARNING", "name": "borg.archiver"}"#;

    #[test]
    fn listed_files_are_counted_and_bounded_and_messages_kept() {
        let seen = Arc::new(Seen::default());
        let f = filter(None, seen.clone());
        let kept: Vec<Option<String>> = LISTED.lines().map(|l| f(l)).collect();
        assert_eq!(kept, [None, None, Some("x: [Errno 13] Permission denied: 'x'".into())]);
        assert_eq!(seen.files_read(), FilesRead { count: 2, paths: vec!["ext1.vmdk".into(), "vm.toml".into()] });
        for i in 0..30 {
            f(&format!(r#"{{"type": "file_status", "status": "A", "path": "f{i}"}}"#));
        }
        let r = seen.files_read();
        assert_eq!((r.count, r.paths.len()), (32, FilesRead::KEPT));
    }
}
