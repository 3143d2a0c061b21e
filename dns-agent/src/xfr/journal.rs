//! Each served zone's SOA serial and its journal of changes (for IXFR), persisted in the agent's SQLite database
//! (`zone_serials`, `zone_journal`): a zone's serial increases on every change of its content and never goes back
//! across restarts or reloads; the last [`JOURNAL_VERSIONS`] changes are kept. Records are kept as wire bytes.
//! Knows SQLite and serial arithmetic; must not know sockets, TSIG, the query path or how zones are built.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};

use hickory_proto::rr::{Name, Record};
use hickory_proto::serialize::binary::{BinDecodable, BinEncodable};
use rusqlite::params;

use crate::store::StoreError;

/// Versions (changes) kept per zone for IXFR; an older client gets an AXFR.
pub(crate) const JOURNAL_VERSIONS: usize = 100;

/// A zone's content: its records (SOA excluded) as wire bytes, sorted.
pub(crate) type Content = BTreeSet<Vec<u8>>;

/// One change of a zone: from serial `from` to `to`, the records removed and added (wire bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Delta {
    pub from: u32,
    pub to: u32,
    pub removed: Vec<Vec<u8>>,
    pub added: Vec<Vec<u8>>,
}

impl Delta {
    /// The records of one side, decoded (a record that does not decode any more is skipped).
    pub(crate) fn records(side: &[Vec<u8>]) -> Vec<Record> {
        side.iter().filter_map(|b| Record::from_bytes(b).ok()).collect()
    }
}

/// The wire form of records (the zone content a journal compares).
pub(crate) fn content<'a>(records: impl Iterator<Item = &'a Record>) -> Content {
    records.filter_map(|r| r.to_bytes().ok()).collect()
}

/// A digest of a zone's content (hex SHA-256 over the length-prefixed records in order).
pub(crate) fn digest(content: &Content) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for r in content {
        ctx.update(&(r.len() as u32).to_be_bytes());
        ctx.update(r);
    }
    ctx.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The serial after `old` (RFC 1982 arithmetic: one more, wrapping).
pub(crate) fn next_serial(old: u32) -> u32 {
    old.wrapping_add(1)
}

/// Whether serial `a` is older than `b` (RFC 1982).
pub(crate) fn serial_lt(a: u32, b: u32) -> bool {
    a != b && b.wrapping_sub(a) < 0x8000_0000
}

/// The deltas that take a client at `client` to the newest version: `Some(empty)` when it is current, `None`
/// when the journal does not reach back to it (or the client is ahead): answer with a full transfer.
pub(crate) fn deltas_since(deltas: &VecDeque<Arc<Delta>>, current: u32, client: u32) -> Option<Vec<Arc<Delta>>> {
    if client == current {
        return Some(Vec::new());
    }
    let start = deltas.iter().position(|d| d.from == client)?;
    let chain: Vec<Arc<Delta>> = deltas.iter().skip(start).cloned().collect();
    let linked = chain.windows(2).all(|w| w[0].to == w[1].from);
    (linked && chain.last().is_some_and(|d| d.to == current)).then_some(chain)
}

#[derive(Debug, Default)]
struct ZoneState {
    serial: u32,
    digest: String,
    /// The content at `serial`; `None` after a restart until the zone is built once (only the digest is stored).
    content: Option<Content>,
    deltas: VecDeque<Arc<Delta>>,
}

/// What versioning one zone decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Versioned {
    pub serial: u32,
    /// The content changed (or the zone is new here): NOTIFY its secondaries.
    pub changed: bool,
}

/// The serials and journals of every zone served, in memory and in SQLite.
pub(crate) struct Journal {
    conn: Mutex<rusqlite::Connection>,
    zones: Mutex<HashMap<Name, ZoneState>>,
}

fn encode_side(side: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in side {
        out.extend_from_slice(&(r.len() as u32).to_be_bytes());
        out.extend_from_slice(r);
    }
    out
}

fn decode_side(mut b: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let n = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        if b.len() < 4 + n {
            break;
        }
        out.push(b[4..4 + n].to_vec());
        b = &b[4 + n..];
    }
    out
}

impl Journal {
    /// Opens the tables in `STATE_DIR/dns.db` (created if missing; other tables untouched) and loads every zone's
    /// serial, digest and journal.
    pub(crate) fn open(state_dir: &Path) -> Result<Journal, StoreError> {
        let conn = agent_core::state::open_db(state_dir, "dns")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS zone_serials (
                zone TEXT PRIMARY KEY,
                serial INTEGER NOT NULL,
                digest TEXT NOT NULL,
                updated_unix INTEGER NOT NULL
            );
            CREATE TABLE IF NOT EXISTS zone_journal (
                zone TEXT NOT NULL,
                serial_from INTEGER NOT NULL,
                serial_to INTEGER NOT NULL,
                removed BLOB NOT NULL,
                added BLOB NOT NULL,
                PRIMARY KEY (zone, serial_to)
            );",
        )?;
        let mut zones: HashMap<Name, ZoneState> = HashMap::new();
        {
            let mut stmt = conn.prepare("SELECT zone, serial, digest FROM zone_serials")?;
            let rows =
                stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?)))?;
            for row in rows {
                let (zone, serial, digest) = row?;
                if let Ok(name) = Name::from_ascii(&zone) {
                    zones.insert(name, ZoneState { serial: serial as u32, digest, ..ZoneState::default() });
                }
            }
            let mut stmt = conn.prepare(
                "SELECT zone, serial_from, serial_to, removed, added FROM zone_journal ORDER BY zone, rowid",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                    r.get::<_, Vec<u8>>(4)?,
                ))
            })?;
            for row in rows {
                let (zone, from, to, removed, added) = row?;
                let Some(z) = Name::from_ascii(&zone).ok().and_then(|n| zones.get_mut(&n)) else { continue };
                z.deltas.push_back(Arc::new(Delta {
                    from: from as u32,
                    to: to as u32,
                    removed: decode_side(&removed),
                    added: decode_side(&added),
                }));
            }
        }
        Ok(Journal { conn: Mutex::new(conn), zones: Mutex::new(zones) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Name, ZoneState>> {
        self.zones.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives `zone` with `content` its serial: unchanged content keeps it; changed content gets the next serial and
    /// (when the previous content is known) a journal entry; a zone seen for the first time starts at `initial`.
    /// Persisted before it returns; a database error is logged and the serial still moves forward in memory.
    pub(crate) fn version(&self, zone: &Name, content: Content, initial: u32) -> Versioned {
        let digest = digest(&content);
        let mut zones = self.lock();
        let state = zones.get(zone);
        let (serial, delta, clear) = match state {
            Some(s) if s.digest == digest => {
                let serial = s.serial;
                if let Some(z) = zones.get_mut(zone) {
                    z.content = Some(content);
                }
                return Versioned { serial, changed: false };
            }
            Some(s) => {
                let to = next_serial(s.serial);
                match &s.content {
                    Some(old) => {
                        let removed: Vec<Vec<u8>> = old.difference(&content).cloned().collect();
                        let added: Vec<Vec<u8>> = content.difference(old).cloned().collect();
                        (to, Some(Delta { from: s.serial, to, removed, added }), false)
                    }
                    // Changed while the agent was down: the difference is unknown, the journal cannot bridge it.
                    None => (to, None, true),
                }
            }
            None => (initial, None, true),
        };
        if let Err(e) = self.persist(zone, serial, &digest, delta.as_ref(), clear) {
            tracing::error!(zone = %zone, error = %e, "cannot store the zone's serial; it is kept in memory");
        }
        let z = zones.entry(zone.clone()).or_default();
        z.serial = serial;
        z.digest = digest;
        z.content = Some(content);
        if clear {
            z.deltas.clear();
        }
        if let Some(d) = delta {
            z.deltas.push_back(Arc::new(d));
            while z.deltas.len() > JOURNAL_VERSIONS {
                z.deltas.pop_front();
            }
        }
        Versioned { serial, changed: true }
    }

    fn persist(
        &self,
        zone: &Name,
        serial: u32,
        digest: &str,
        delta: Option<&Delta>,
        clear: bool,
    ) -> rusqlite::Result<()> {
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let tx = conn.transaction()?;
        let z = zone.to_ascii();
        tx.execute(
            "INSERT INTO zone_serials (zone, serial, digest, updated_unix) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(zone) DO UPDATE SET serial = ?2, digest = ?3, updated_unix = ?4",
            params![z, i64::from(serial), digest, agent_core::clock::now_unix()],
        )?;
        if clear {
            tx.execute("DELETE FROM zone_journal WHERE zone = ?1", params![z])?;
        }
        if let Some(d) = delta {
            tx.execute(
                "INSERT OR REPLACE INTO zone_journal (zone, serial_from, serial_to, removed, added) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![z, i64::from(d.from), i64::from(d.to), encode_side(&d.removed), encode_side(&d.added)],
            )?;
            tx.execute(
                "DELETE FROM zone_journal WHERE zone = ?1 AND rowid NOT IN
                   (SELECT rowid FROM zone_journal WHERE zone = ?1 ORDER BY rowid DESC LIMIT ?2)",
                params![z, JOURNAL_VERSIONS as i64],
            )?;
        }
        tx.commit()
    }

    /// The changes that take a client at serial `client` to the zone's current serial (see [`deltas_since`]).
    pub(crate) fn since(&self, zone: &Name, client: u32) -> Option<(u32, Vec<Arc<Delta>>)> {
        let zones = self.lock();
        let z = zones.get(zone)?;
        deltas_since(&z.deltas, z.serial, client).map(|d| (z.serial, d))
    }

    /// The zone's current serial, if it was ever versioned.
    #[cfg(test)]
    pub(crate) fn serial(&self, zone: &Name) -> Option<u32> {
        self.lock().get(zone).map(|z| z.serial)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::RData;

    fn rec(name: &str, last: u8) -> Vec<u8> {
        Record::from_rdata(Name::from_ascii(name).unwrap(), 60, RData::A(A::new(10, 0, 0, last))).to_bytes().unwrap()
    }

    fn zone_content(items: &[(&str, u8)]) -> Content {
        items.iter().map(|(n, l)| rec(n, *l)).collect()
    }

    #[test]
    fn serial_arithmetic() {
        let cases = [(1u32, 2u32, true), (2, 1, false), (u32::MAX, 0, true), (0, u32::MAX, false), (5, 5, false)];
        for (a, b, lt) in cases {
            assert_eq!(serial_lt(a, b), lt, "{a} < {b}");
        }
        assert_eq!(next_serial(u32::MAX), 0);
    }

    /// Versions of one zone through changes, no-ops and restarts: the serial only moves forward, the journal holds
    /// exactly the differences and answers each client serial with the chain to the current one.
    #[test]
    fn serials_and_journal_across_changes_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let zone = Name::from_ascii("lab.home.arpa.").unwrap();
        let v1 = zone_content(&[("a.lab.home.arpa.", 1)]);
        let v2 = zone_content(&[("a.lab.home.arpa.", 1), ("b.lab.home.arpa.", 2)]);
        let v3 = zone_content(&[("b.lab.home.arpa.", 2)]);
        {
            let j = Journal::open(dir.path()).unwrap();
            assert_eq!(j.version(&zone, v1.clone(), 1000), Versioned { serial: 1000, changed: true });
            assert_eq!(j.version(&zone, v1.clone(), 5000), Versioned { serial: 1000, changed: false });
            assert_eq!(j.version(&zone, v2.clone(), 5000), Versioned { serial: 1001, changed: true });
            assert_eq!(j.version(&zone, v3.clone(), 5000), Versioned { serial: 1002, changed: true });
            let (cur, d) = j.since(&zone, 1000).unwrap();
            assert_eq!(cur, 1002);
            assert_eq!(d.len(), 2);
            assert_eq!((d[0].removed.len(), d[0].added.clone()), (0, vec![rec("b.lab.home.arpa.", 2)]));
            assert_eq!((d[1].removed.clone(), d[1].added.len()), (vec![rec("a.lab.home.arpa.", 1)], 0));
            assert_eq!(j.since(&zone, 1002).unwrap().1.len(), 0, "a current client gets nothing");
            assert!(j.since(&zone, 999).is_none(), "older than the journal: AXFR");
            assert!(j.since(&zone, 1003).is_none(), "ahead of us: AXFR");
        }
        // Restart: same content keeps the serial and the journal; a change made while down moves the serial on and
        // empties the journal (the difference is unknown).
        {
            let j = Journal::open(dir.path()).unwrap();
            assert_eq!(j.version(&zone, v3.clone(), 1), Versioned { serial: 1002, changed: false });
            assert_eq!(j.since(&zone, 1001).unwrap().1.len(), 1);
        }
        {
            let j = Journal::open(dir.path()).unwrap();
            assert_eq!(j.version(&zone, v1.clone(), 1), Versioned { serial: 1003, changed: true });
            assert!(j.since(&zone, 1002).is_none());
            assert_eq!(j.version(&zone, v2.clone(), 1), Versioned { serial: 1004, changed: true });
            assert_eq!(j.since(&zone, 1003).unwrap().1.len(), 1);
        }
    }

    #[test]
    fn journal_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let zone = Name::from_ascii("z.").unwrap();
        let j = Journal::open(dir.path()).unwrap();
        for i in 0..(JOURNAL_VERSIONS as u32 + 20) {
            j.version(&zone, zone_content(&[("a.z.", (i % 250) as u8), ("b.z.", (i / 250) as u8)]), 1);
        }
        let cur = j.serial(&zone).unwrap();
        assert!(j.since(&zone, cur - JOURNAL_VERSIONS as u32).is_some());
        assert!(j.since(&zone, cur - JOURNAL_VERSIONS as u32 - 1).is_none());
        drop(j);
        let j = Journal::open(dir.path()).unwrap();
        j.version(&zone, zone_content(&[("a.z.", 119), ("b.z.", 0)]), 1);
        assert_eq!(j.since(&zone, cur - JOURNAL_VERSIONS as u32).map(|d| d.1.len()), Some(JOURNAL_VERSIONS));
    }
}
