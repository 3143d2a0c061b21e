//! Zone transfers, primary side: per-zone serials and journal (`journal`), AXFR and IXFR answered over TCP to the
//! peers a zone's `transfer` policy allows with the TSIG it asks for (`out` packs the messages), NOTIFY sent to its
//! `notify` peers (`notify`). `tcp` serves the requests with these parts. Knows transfers; must not know proto/tonic,
//! the config file, listeners, or how other queries are answered.

pub(crate) mod journal;
pub(crate) mod notify;
pub(crate) mod out;
pub(crate) mod policy;

use hickory_proto::rr::Name;

use crate::metrics::XfrMetrics;
use crate::store::StoreError;
use crate::zones::ZoneSet;

/// The primary side's state: serials and journals, and the NOTIFYs in flight.
pub(crate) struct Primary {
    pub journal: journal::Journal,
    pub notifier: notify::Notifier,
}

impl Primary {
    pub(crate) fn open(state_dir: &std::path::Path) -> Result<Primary, StoreError> {
        Ok(Primary { journal: journal::Journal::open(state_dir)?, notifier: notify::Notifier::default() })
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
        changed
    }
}
