//! Zone transfers, primary side: per-zone serials and journal (`journal`), AXFR and IXFR answered over TCP to the
//! peers a zone's `transfer` policy allows with the TSIG it asks for (`out` packs the messages), NOTIFY sent to its
//! `notify` peers (`notify`). `tcp` serves the requests with these parts. Knows transfers; must not know proto/tonic,
//! the config file, listeners, or how other queries are answered.

pub(crate) mod journal;
pub(crate) mod notify;
pub(crate) mod out;
pub(crate) mod policy;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use hickory_proto::rr::{Name, RecordType};

use crate::metrics::XfrMetrics;
use crate::store::StoreError;
use crate::zones::ZoneSet;

/// A zone's AXFR messages at one serial (encoded with id 0), and the records they hold.
pub(crate) type Encoded = Arc<(Vec<Vec<u8>>, u64)>;

/// The primary side's state: serials and journals, the NOTIFYs in flight, and the last encoded AXFR of each zone.
pub(crate) struct Primary {
    pub journal: journal::Journal,
    pub notifier: notify::Notifier,
    /// By zone and question type (AXFR, or IXFR answered in full): one entry each, replaced when the serial moves.
    encoded: Mutex<HashMap<(Name, RecordType), (u32, Encoded)>>,
}

impl Primary {
    pub(crate) fn open(state_dir: &std::path::Path) -> Result<Primary, StoreError> {
        Ok(Primary {
            journal: journal::Journal::open(state_dir)?,
            notifier: notify::Notifier::default(),
            encoded: Mutex::default(),
        })
    }

    /// The AXFR messages of `zone` at `serial`: kept from an earlier transfer, or made by `encode` now (and kept).
    pub(crate) fn axfr_messages(
        &self,
        zone: &Name,
        qtype: RecordType,
        serial: u32,
        encode: impl FnOnce() -> (Vec<Vec<u8>>, u64),
    ) -> Encoded {
        let key = (zone.clone(), qtype);
        if let Some((s, e)) = self.encoded.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            if *s == serial {
                return e.clone();
            }
        }
        let e = Arc::new(encode());
        let mut cache = self.encoded.lock().unwrap_or_else(|e| e.into_inner());
        cache.insert(key, (serial, e.clone()));
        e
    }

    /// Gives every configured zone of a freshly built `zones` its serial (unchanged content keeps it, changed
    /// content gets the next one, journaled) and returns the zones whose content changed.
    pub(crate) fn version(&self, zones: &mut ZoneSet, metrics: &XfrMetrics) -> Vec<Name> {
        let initial = agent_core::clock::now_unix() as u32;
        let mut serials = std::collections::HashMap::new();
        let mut changed = Vec::new();
        let origins: Vec<Name> = zones.origins().cloned().collect();
        for origin in origins {
            let Some((_, records)) = zones.zone_records(&origin) else { continue };
            let content = journal::content(records);
            let v = self.journal.version(&origin, content, initial);
            if v.changed {
                changed.push(origin.clone());
            }
            metrics.serial(&origin.to_ascii(), "primary", v.serial);
            serials.insert(origin, v.serial);
        }
        zones.set_serials(|o| serials.get(o).copied());
        // Encoded transfers of zones no longer served, or of an older serial, are dropped.
        self.encoded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(z, _), (serial, _)| serials.get(z) == Some(serial));
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encoded transfers are kept per zone, question type and serial: the same serial reuses them, a new serial
    /// encodes again.
    #[test]
    fn encoded_transfers_are_kept_per_serial() {
        let dir = tempfile::tempdir().unwrap();
        let p = Primary::open(dir.path()).unwrap();
        let zone = Name::from_ascii("lab.").unwrap();
        let calls = std::cell::Cell::new(0);
        let enc = |n: u8| {
            calls.set(calls.get() + 1);
            (vec![vec![n]], 1)
        };
        let cases = [
            (RecordType::AXFR, 5, 1, 1u8),
            (RecordType::AXFR, 5, 1, 1),
            (RecordType::IXFR, 5, 2, 2),
            (RecordType::AXFR, 6, 3, 3),
        ];
        for (qtype, serial, want_calls, want_byte) in cases {
            let got = p.axfr_messages(&zone, qtype, serial, || enc(calls.get() as u8 + 1));
            assert_eq!((calls.get(), got.0[0][0]), (want_calls, want_byte), "{qtype} at {serial}");
        }
    }
}
