//! Zone transfers, primary side: the per-zone transfer policy. Knows transfers; must not know proto/tonic or how
//! queries other than transfers are answered.

pub(crate) mod policy;
