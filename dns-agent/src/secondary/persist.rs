//! The persisted copy of each secondary zone, so that it is served at start even while its primaries are down and
//! so that `expire` counts across restarts.
//!
//! Why files and not the agent's SQLite DB: a copy is replaced whole on every transfer (an IXFR result too), is
//! read whole at start and never queried by key, so one file per zone written with the agent's one atomic writer
//! (`agent_core::state::write_atomic`: temp file, fsync, rename) gives all-or-nothing replacement without a
//! migration or a 100,000-row transaction. Layout, under `STATE_DIR/secondaries/`:
//! - `ZONE.zone`: a magic line, the transfer time and kind, then every record (SOA first) as a length-prefixed
//!   DNS wire record;
//! - `ZONE.refreshed`: `SERIAL LAST_OK_UNIX`, rewritten when a check finds the copy current (a few bytes instead
//!   of the whole zone). It counts only while its serial is the copy's.
//!
//! Knows the file layout; must not know sockets, timers or the query path.

use std::path::{Path, PathBuf};

use hickory_proto::rr::{Name, Record};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};

use super::xfr::soa_of;

const MAGIC: &[u8] = b"strata-secondary-zone 1\n";
/// Mode of the files (zone data is not secret, but stays the agent's).
const MODE: u32 = 0o600;

#[derive(Debug, thiserror::Error)]
pub(crate) enum PersistError {
    #[error(transparent)]
    State(#[from] agent_core::state::StateError),
    #[error("{path}: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// A copy as stored.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Stored {
    /// SOA first.
    pub records: Vec<Record>,
    pub last_transfer_unix: i64,
    pub last_transfer_kind: String,
    /// When the copy was last confirmed current (a transfer or an up-to-date check).
    pub last_ok_unix: i64,
}

/// The files of one zone.
#[derive(Debug, Clone)]
pub(crate) struct ZoneFiles {
    zone: PathBuf,
    refreshed: PathBuf,
}

impl ZoneFiles {
    pub(crate) fn new(dir: &Path, origin: &Name) -> ZoneFiles {
        let base: String = origin
            .to_lowercase()
            .to_ascii()
            .trim_end_matches('.')
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_' { c } else { '_' })
            .collect();
        let base = if base.is_empty() { "root".to_string() } else { base };
        ZoneFiles { zone: dir.join(format!("{base}.zone")), refreshed: dir.join(format!("{base}.refreshed")) }
    }

    /// Writes a new copy (its refresh time included).
    pub(crate) fn save(&self, s: &Stored) -> Result<(), PersistError> {
        if let Some(dir) = self.zone.parent() {
            agent_core::state::ensure_dir(dir)?;
        }
        let mut out = Vec::with_capacity(64 + s.records.len() * 32);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&s.last_transfer_unix.to_be_bytes());
        let kind = s.last_transfer_kind.as_bytes();
        out.push(u8::try_from(kind.len()).unwrap_or(0));
        out.extend_from_slice(&kind[..usize::from(u8::try_from(kind.len()).unwrap_or(0))]);
        out.extend_from_slice(&u32::try_from(s.records.len()).unwrap_or(u32::MAX).to_be_bytes());
        let mut buf = Vec::with_capacity(512);
        for r in &s.records {
            buf.clear();
            let mut enc = BinEncoder::new(&mut buf);
            r.emit(&mut enc).map_err(|e| self.corrupt(format!("cannot encode {}: {e}", r.name)))?;
            let len = u16::try_from(buf.len()).map_err(|_| self.corrupt(format!("record {} too long", r.name)))?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&buf);
        }
        agent_core::state::write_atomic(&self.zone, &out, MODE)?;
        self.save_refreshed(soa_serial(&s.records), s.last_ok_unix)
    }

    /// Records that the copy with `serial` was confirmed current at `when`.
    pub(crate) fn save_refreshed(&self, serial: u32, when: i64) -> Result<(), PersistError> {
        agent_core::state::write_atomic(&self.refreshed, format!("{serial} {when}\n").as_bytes(), MODE)?;
        Ok(())
    }

    fn corrupt(&self, message: String) -> PersistError {
        PersistError::Corrupt { path: self.zone.clone(), message }
    }

    /// The stored copy; `None` when there is none.
    pub(crate) fn load(&self) -> Result<Option<Stored>, PersistError> {
        let bytes = match std::fs::read(&self.zone) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(PersistError::Io { path: self.zone.clone(), source }),
        };
        let mut rest = bytes.strip_prefix(MAGIC).ok_or_else(|| self.corrupt("not a stored zone".into()))?;
        let mut take = |n: usize| -> Result<&[u8], PersistError> {
            if rest.len() < n {
                return Err(PersistError::Corrupt { path: self.zone.clone(), message: "truncated".into() });
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Ok(head)
        };
        let last_transfer_unix = i64::from_be_bytes(take(8)?.try_into().unwrap_or_default());
        let kind_len = usize::from(take(1)?[0]);
        let last_transfer_kind = String::from_utf8_lossy(take(kind_len)?).into_owned();
        let count = u32::from_be_bytes(take(4)?.try_into().unwrap_or_default()) as usize;
        let mut records = Vec::with_capacity(count.min(1 << 20));
        for _ in 0..count {
            let len = usize::from(u16::from_be_bytes(take(2)?.try_into().unwrap_or_default()));
            let wire = take(len)?;
            let r = Record::read(&mut BinDecoder::new(wire))
                .map_err(|e| PersistError::Corrupt { path: self.zone.clone(), message: e.to_string() })?;
            records.push(r);
        }
        if records.first().and_then(soa_of).is_none() {
            return Err(self.corrupt("the first record is not an SOA".into()));
        }
        let serial = soa_serial(&records);
        // The refresh time counts only for this copy; without it, the transfer time.
        let last_ok_unix = std::fs::read_to_string(&self.refreshed)
            .ok()
            .and_then(|t| {
                let mut it = t.split_whitespace();
                let s: u32 = it.next()?.parse().ok()?;
                let when: i64 = it.next()?.parse().ok()?;
                (s == serial).then_some(when)
            })
            .unwrap_or(last_transfer_unix)
            .max(last_transfer_unix);
        Ok(Some(Stored { records, last_transfer_unix, last_transfer_kind, last_ok_unix }))
    }
}

fn soa_serial(records: &[Record]) -> u32 {
    records.first().and_then(soa_of).map(|s| s.serial).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::{A, SOA, TXT};
    use hickory_proto::rr::RData;

    #[test]
    fn copies_survive_a_round_trip_and_corruption_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let origin = Name::from_ascii("Lab.Home.Arpa.").unwrap();
        let files = ZoneFiles::new(&dir.path().join("secondaries"), &origin);
        assert_eq!(files.load().unwrap(), None);
        let soa = SOA::new(Name::from_ascii("ns.lab.home.arpa.").unwrap(), origin.clone(), 9, 60, 10, 600, 60);
        let records = vec![
            Record::from_rdata(origin.clone(), 60, RData::SOA(soa)),
            Record::from_rdata(Name::from_ascii("a.lab.home.arpa.").unwrap(), 300, RData::A(A::new(10, 0, 0, 1))),
            Record::from_rdata(
                Name::from_ascii("t.lab.home.arpa.").unwrap(),
                300,
                RData::TXT(TXT::new(vec!["x".into()])),
            ),
        ];
        let stored = Stored { records, last_transfer_unix: 100, last_transfer_kind: "AXFR".into(), last_ok_unix: 150 };
        files.save(&stored).unwrap();
        assert_eq!(files.load().unwrap().as_ref(), Some(&stored));
        assert!(dir.path().join("secondaries/lab.home.arpa.zone").exists());
        files.save_refreshed(9, 300).unwrap();
        assert_eq!(files.load().unwrap().unwrap().last_ok_unix, 300);
        files.save_refreshed(8, 400).unwrap(); // another copy's refresh time does not count
        assert_eq!(files.load().unwrap().unwrap().last_ok_unix, 100);

        let bytes = std::fs::read(&files.zone).unwrap();
        std::fs::write(&files.zone, &bytes[..bytes.len() - 3]).unwrap();
        assert!(files.load().unwrap_err().to_string().contains("truncated"));
        std::fs::write(&files.zone, b"junk").unwrap();
        assert!(files.load().unwrap_err().to_string().contains("not a stored zone"));
    }
}
