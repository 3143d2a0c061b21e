//! The pure part of being a secondary: RFC 1982 serial arithmetic, assembling an AXFR or IXFR answer stream
//! record by record (RFC 5936, RFC 1995), applying IXFR differences to a copy, checking a whole zone before it is
//! used, and the SOA refresh/retry/expire timers. No I/O, no clock: callers pass the time.
//! Knows DNS records and transfer shapes; must not know sockets, files, metrics or the query path.

use std::collections::HashMap;

use hickory_proto::rr::rdata::SOA;
use hickory_proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};

/// Why a transfer (or its result) was refused. Messages are lowercase and name what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum XfrError {
    #[error("the first record is not the zone's SOA")]
    FirstNotSoa,
    #[error("the closing SOA has serial {closing}, the opening one {opening}")]
    ClosingSerial { opening: u32, closing: u32 },
    #[error("records after the closing SOA")]
    Trailing,
    #[error("truncated: the stream ended before the closing SOA")]
    Truncated,
    #[error("record {name} {rtype} is outside zone {zone}")]
    OutOfZone { name: String, rtype: String, zone: String },
    #[error("record {name} {rtype} has class {class}, not IN")]
    Class { name: String, rtype: String, class: String },
    #[error("record {name} {rtype} may not appear in a zone")]
    MetaType { name: String, rtype: String },
    #[error("a second SOA at {0}")]
    SecondSoa(String),
    #[error("the zone holds only its SOA: refusing to shrink the copy to nothing")]
    OnlySoa,
    #[error("serial went backwards: the copy has {ours}, the primary sent {theirs}")]
    Backwards { ours: u32, theirs: u32 },
    #[error("the IXFR differences do not chain: {0}")]
    Chain(String),
    #[error("the IXFR deletes {0}, which the copy does not hold")]
    MissingDelete(String),
    #[error("more than {0} records")]
    TooManyRecords(usize),
}

// ---- RFC 1982 serial number arithmetic ----

/// Whether serial `a` is newer than `b` (RFC 1982 section 3.2; the undefined half-way case is "not newer").
pub(crate) fn serial_gt(a: u32, b: u32) -> bool {
    a != b && ((a > b && a - b < 1 << 31) || (a < b && b - a > 1 << 31))
}

/// The SOA data of a record, if it is one.
pub(crate) fn soa_of(r: &Record) -> Option<&SOA> {
    match &r.data {
        RData::SOA(s) => Some(s),
        _ => None,
    }
}

// ---- Assembling a transfer stream ----

/// What was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Asked {
    Axfr,
    /// IXFR from the copy's serial.
    Ixfr {
        ours: u32,
    },
}

/// One IXFR difference sequence: from one serial to the next.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Diff {
    pub from: u32,
    pub to: u32,
    pub removed: Vec<Record>,
    pub added: Vec<Record>,
    pub to_soa: Record,
}

/// A complete transfer answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Transfer {
    /// An IXFR answered with the single SOA of a serial not newer than ours.
    UpToDate { serial: u32 },
    /// A whole zone (AXFR, or an IXFR answered with the whole zone): the SOA first, then every other record.
    Full { records: Vec<Record> },
    /// IXFR differences, in order.
    Incremental { soa: Box<Record>, diffs: Vec<Diff> },
}

#[derive(Debug)]
enum State {
    Start,
    AfterFirst,
    Full,
    Deleting,
    Adding,
    Done,
}

/// Reads a transfer answer one record at a time (records may span many messages) and says when it is complete.
#[derive(Debug)]
pub(crate) struct Assembler {
    asked: Asked,
    max_records: usize,
    state: State,
    first: Option<Record>,
    serial: u32,
    records: Vec<Record>,
    diffs: Vec<Diff>,
    seen: usize,
}

impl Assembler {
    pub(crate) fn new(asked: Asked, max_records: usize) -> Self {
        Assembler {
            asked,
            max_records,
            state: State::Start,
            first: None,
            serial: 0,
            records: Vec::new(),
            diffs: Vec::new(),
            seen: 0,
        }
    }

    /// Takes the next record of the stream.
    pub(crate) fn feed(&mut self, r: Record) -> Result<(), XfrError> {
        self.seen += 1;
        if self.seen > self.max_records {
            return Err(XfrError::TooManyRecords(self.max_records));
        }
        let soa_serial = soa_of(&r).map(|s| s.serial);
        match (&self.state, soa_serial) {
            (State::Start, Some(serial)) => {
                self.serial = serial;
                self.first = Some(r);
                self.state = State::AfterFirst;
            }
            (State::Start, None) => return Err(XfrError::FirstNotSoa),
            (State::AfterFirst, Some(s)) => match self.asked {
                Asked::Ixfr { .. } if s != self.serial => {
                    self.diffs.push(Diff { from: s, to: 0, removed: Vec::new(), added: Vec::new(), to_soa: r });
                    self.state = State::Deleting;
                }
                // SOA, SOA: a whole zone that holds nothing else.
                _ => self.state = State::Done,
            },
            (State::AfterFirst, None) | (State::Full, None) => {
                self.records.push(r);
                self.state = State::Full;
            }
            (State::Full, Some(s)) => {
                if s != self.serial {
                    return Err(XfrError::ClosingSerial { opening: self.serial, closing: s });
                }
                self.state = State::Done;
            }
            (State::Deleting, None) => self.last_diff().removed.push(r),
            (State::Deleting, Some(s)) => {
                let d = self.last_diff();
                d.to = s;
                d.to_soa = r;
                self.state = State::Adding;
            }
            (State::Adding, None) => self.last_diff().added.push(r),
            (State::Adding, Some(s)) => {
                if s == self.serial {
                    self.state = State::Done;
                } else {
                    self.diffs.push(Diff { from: s, to: 0, removed: Vec::new(), added: Vec::new(), to_soa: r });
                    self.state = State::Deleting;
                }
            }
            (State::Done, _) => return Err(XfrError::Trailing),
        }
        Ok(())
    }

    fn last_diff(&mut self) -> &mut Diff {
        // Deleting and Adding are entered only after a push.
        let n = self.diffs.len();
        &mut self.diffs[n.saturating_sub(1)]
    }

    /// Whether the stream is complete. At the end of a message, an IXFR answer that is a single SOA not newer
    /// than ours is complete too (`end_of_message`).
    pub(crate) fn complete(&self, end_of_message: bool) -> bool {
        match (&self.state, self.asked) {
            (State::Done, _) => true,
            (State::AfterFirst, Asked::Ixfr { ours }) => end_of_message && !serial_gt(self.serial, ours),
            _ => false,
        }
    }

    /// The assembled transfer; `Truncated` when the stream is not complete.
    pub(crate) fn finish(self) -> Result<Transfer, XfrError> {
        let Some(first) = self.first else { return Err(XfrError::Truncated) };
        match self.state {
            State::AfterFirst if matches!(self.asked, Asked::Ixfr { ours } if !serial_gt(self.serial, ours)) => {
                Ok(Transfer::UpToDate { serial: self.serial })
            }
            State::Done if !self.diffs.is_empty() => {
                Ok(Transfer::Incremental { soa: Box::new(first), diffs: self.diffs })
            }
            State::Done => {
                let mut records = Vec::with_capacity(self.records.len() + 1);
                records.push(first);
                records.extend(self.records);
                Ok(Transfer::Full { records })
            }
            _ => Err(XfrError::Truncated),
        }
    }
}

// ---- Applying and checking ----

fn describe(r: &Record) -> String {
    format!("{} {} {}", r.name, r.record_type(), r.data)
}

/// Applies IXFR `diffs` to `copy` (SOA first) and returns the new zone (new SOA first). The differences must start
/// at the copy's serial and chain up to `soa`'s; every deleted record must exist.
pub(crate) fn apply(copy: &[Record], soa: &Record, diffs: &[Diff]) -> Result<Vec<Record>, XfrError> {
    let ours = copy.first().and_then(soa_of).map(|s| s.serial).ok_or(XfrError::FirstNotSoa)?;
    let target = soa_of(soa).map(|s| s.serial).ok_or(XfrError::FirstNotSoa)?;
    let mut at = ours;
    for d in diffs {
        if d.from != at {
            return Err(XfrError::Chain(format!("a difference starts at serial {}, the copy is at {at}", d.from)));
        }
        at = d.to;
    }
    if at != target {
        return Err(XfrError::Chain(format!("the differences end at serial {at}, the zone's SOA has {target}")));
    }
    // Records keyed by (name, data) — TTL aside, as RFC 2136 compares them — in their original order.
    let mut slots: Vec<Option<Record>> = copy.iter().skip(1).cloned().map(Some).collect();
    let mut index: HashMap<(LowerName, RData), usize> = slots
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.as_ref().map(|r| ((LowerName::new(&r.name), r.data.clone()), i)))
        .collect();
    for d in diffs {
        for r in d.removed.iter().filter(|r| soa_of(r).is_none()) {
            let key = (LowerName::new(&r.name), r.data.clone());
            let i = index.remove(&key).ok_or_else(|| XfrError::MissingDelete(describe(r)))?;
            slots[i] = None;
        }
        for r in d.added.iter().filter(|r| soa_of(r).is_none()) {
            let key = (LowerName::new(&r.name), r.data.clone());
            match index.get(&key) {
                Some(&i) => slots[i] = Some(r.clone()),
                None => {
                    index.insert(key, slots.len());
                    slots.push(Some(r.clone()));
                }
            }
        }
    }
    let mut out = Vec::with_capacity(index.len() + 1);
    out.push(soa.clone());
    out.extend(slots.into_iter().flatten());
    Ok(out)
}

/// Checks a whole zone (SOA first) before it replaces the copy: the SOA at the apex, every record inside the zone
/// and of class IN, no second SOA, no meta type, more than the SOA, and a serial not older than `previous`'s.
pub(crate) fn check_zone(origin: &Name, records: &[Record], previous: Option<u32>) -> Result<u32, XfrError> {
    let first = records.first().ok_or(XfrError::Truncated)?;
    let serial = soa_of(first).map(|s| s.serial).ok_or(XfrError::FirstNotSoa)?;
    if LowerName::new(&first.name) != LowerName::new(origin) {
        return Err(XfrError::FirstNotSoa);
    }
    for r in records {
        let rtype = r.record_type();
        if !origin.zone_of(&r.name) {
            return Err(XfrError::OutOfZone {
                name: r.name.to_string(),
                rtype: rtype.to_string(),
                zone: origin.to_string(),
            });
        }
        if r.dns_class != DNSClass::IN {
            return Err(XfrError::Class {
                name: r.name.to_string(),
                rtype: rtype.to_string(),
                class: r.dns_class.to_string(),
            });
        }
        if matches!(rtype, RecordType::OPT | RecordType::TSIG | RecordType::AXFR | RecordType::IXFR | RecordType::ANY) {
            return Err(XfrError::MetaType { name: r.name.to_string(), rtype: rtype.to_string() });
        }
    }
    if let Some(second) = records.iter().skip(1).find(|r| r.record_type() == RecordType::SOA) {
        return Err(XfrError::SecondSoa(second.name.to_string()));
    }
    if records.len() < 2 {
        return Err(XfrError::OnlySoa);
    }
    if let Some(ours) = previous {
        if serial_gt(ours, serial) {
            return Err(XfrError::Backwards { ours, theirs: serial });
        }
    }
    Ok(serial)
}

// ---- Timers ----

/// Shortest refresh or retry interval followed, whatever the SOA says (no hot loop on a zero timer).
pub(crate) const MIN_TIMER: i64 = 1;
/// How often a zone without any copy is tried.
pub(crate) const NO_COPY_RETRY: i64 = 10;

/// The SOA timers of a copy, in seconds (negative values in the SOA count as the minimum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timers {
    pub refresh: i64,
    pub retry: i64,
    pub expire: i64,
}

impl Timers {
    pub(crate) fn of(soa: &SOA) -> Timers {
        let t = |v: i32| i64::from(v).max(MIN_TIMER);
        Timers { refresh: t(soa.refresh), retry: t(soa.retry), expire: t(soa.expire) }
    }
}

/// What the timers say about a zone at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Schedule {
    /// When to check the primaries next (Unix seconds).
    pub next_check: i64,
    /// When the copy stops being served, if it has one.
    pub expires: Option<i64>,
    /// Whether the copy is served now.
    pub serving: bool,
}

/// The schedule of a zone: `timers` of its copy (none without a copy), the last time the copy was confirmed
/// current (`last_ok`, a transfer or an up-to-date check), and the last failed attempt after it, if any.
pub(crate) fn schedule(timers: Option<Timers>, last_ok: Option<i64>, last_failure: Option<i64>, now: i64) -> Schedule {
    let Some(t) = timers else {
        let next_check = last_failure.map_or(now, |f| f + NO_COPY_RETRY);
        return Schedule { next_check, expires: None, serving: false };
    };
    let ok = last_ok.unwrap_or(i64::MIN / 4);
    let expires = ok.saturating_add(t.expire);
    let next = match last_failure.filter(|f| *f >= ok) {
        Some(f) => f + t.retry,
        None => ok.saturating_add(t.refresh),
    };
    // Wake at the expiry too, to stop serving on time.
    let next_check = if now < expires { next.min(expires) } else { next };
    Schedule { next_check, expires: Some(expires), serving: now < expires }
}

#[cfg(test)]
mod tests;
