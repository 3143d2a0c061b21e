//! Aligned text tables for labctl's read commands, with errors kept to one line per cell (the full text below the
//! table with `-v`), and the cell formats read commands share (UTC times, binary sizes, uptimes). Knows layout and
//! those formats only, nothing about what the cells mean.

use std::fmt;

/// An uptime or age in whole seconds, roughly: `3d4h`, `5m`, `12s`; `-` for none.
pub fn human(secs: u64) -> String {
    match secs {
        0 => "-".to_string(),
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

/// Unix seconds as an RFC 3339 UTC date-time; `-` for none.
pub fn utc(unix: i64) -> String {
    if unix <= 0 {
        return "-".into();
    }
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

/// Bytes in binary units: `512 B`, `1.2 MiB`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// Columns padded to their widest cell, two spaces apart; the last column is not padded.
pub struct Table {
    rows: Vec<Vec<String>>,
    /// Errors shortened in a cell: the row's key and the full text.
    notes: Vec<(String, String)>,
}

/// The longest error cell, in characters (the rest is cut, ending in `…`).
pub const CELL_MAX: usize = 80;

impl Table {
    pub fn new<const N: usize>(header: [&str; N]) -> Table {
        Table { rows: vec![header.iter().map(|h| h.to_string()).collect()], notes: Vec::new() }
    }

    /// An error as one cell: its first non-empty line, trimmed, at most [`CELL_MAX`] characters. When that is not
    /// the whole text, the full text is kept under `key` for [`Table::render`] with `verbose`.
    pub fn error_cell(&mut self, key: &str, text: &str) -> String {
        let first = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
        let mut cell: String = first.chars().take(CELL_MAX).collect();
        let cut = first.chars().count() > CELL_MAX;
        if cut {
            cell.pop();
        }
        if cut || first != text.trim() {
            cell.push('…');
            self.notes.push((key.to_string(), text.trim().to_string()));
        }
        cell
    }

    /// The table; then, for errors shortened in cells, their full text (`verbose`) or a line saying `-v` shows it.
    pub fn render(&self, verbose: bool) -> String {
        let mut out = self.to_string();
        if self.notes.is_empty() {
            return out;
        }
        if !verbose {
            out.push_str("(errors cut to one line: -v prints them in full)\n");
            return out;
        }
        for (key, text) in &self.notes {
            out.push_str(&format!("\n{key}:\n"));
            for line in text.lines() {
                out.push_str(&format!("  {line}\n").replace("  \n", "\n"));
            }
        }
        out
    }

    pub fn row<const N: usize>(&mut self, cells: [String; N]) {
        self.rows.push(cells.into());
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..cols)
            .map(|i| self.rows.iter().filter_map(|r| r.get(i)).map(|c| c.chars().count()).max().unwrap_or(0))
            .collect();
        for row in &self.rows {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
                }
            }
            writeln!(f, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{Table, CELL_MAX};

    #[test]
    fn pads_columns_but_not_the_last() {
        let mut t = Table::new(["A", "LONGER", "C"]);
        t.row(["wide cell".to_string(), "x".to_string(), "last".to_string()]);
        assert_eq!(t.to_string(), "A          LONGER  C\nwide cell  x       last\n");
    }

    /// Issue 18: a 20-line traceback in a cell broke `labctl services ls`; now it is one line, in full with -v.
    #[test]
    fn error_cells_are_one_bounded_line_and_verbose_prints_them_whole() {
        let traceback = "\n  Traceback (most recent call last):\n    File \"compose\", line 3\nValueError: bad\n";
        let mut t = Table::new(["NAME", "ERROR"]);
        let cell = t.error_cell("photos", traceback);
        assert_eq!(cell, "Traceback (most recent call last):…");
        t.row(["photos".to_string(), cell]);
        let long = "x".repeat(200);
        let cell = t.error_cell("wiki", &long);
        assert_eq!(cell.chars().count(), CELL_MAX);
        assert!(cell.ends_with('…'));
        t.row(["wiki".to_string(), cell]);
        let ok = t.error_cell("fine", "stack fine: invalid compose file");
        assert_eq!(ok, "stack fine: invalid compose file");
        t.row(["fine".to_string(), ok]);

        let short = t.render(false);
        assert_eq!(short.lines().count(), 5, "{short}");
        assert!(short.ends_with("(errors cut to one line: -v prints them in full)\n"), "{short}");
        let full = t.render(true);
        assert!(
            full.contains(
                "\nphotos:\n  Traceback (most recent call last):\n      File \"compose\", line 3\n  ValueError: bad\n"
            ),
            "{full}"
        );
        assert!(full.contains(&format!("\nwiki:\n  {long}\n")), "{full}");
        assert!(!full.contains("\nfine:\n"), "{full}");
    }
}
