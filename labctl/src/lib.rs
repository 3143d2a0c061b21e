//! Library of labctl: PKI, inventory, agent clients and rendering; the binary is glue.
//! The gRPC edges are `client` (status) and one module per agent's commands (`dns`, `services`, `vm`).

pub mod cli;
pub mod client;
pub mod dns;
mod files;
pub mod inventory;
pub mod output;
pub mod pki;
pub mod progress;
pub mod services;
pub mod status;
pub mod table;
pub mod vm;
