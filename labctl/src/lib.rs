//! Library of labctl: PKI, inventory, agent clients and rendering; the binary is glue.

pub mod client;
pub mod inventory;
pub mod pki;
pub mod status;
