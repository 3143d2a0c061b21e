//! Integration harness: a per-test PKI, the real agent binaries on port 0, and fixtures for the real components.
//! Knows how to start and observe things; asserts nothing itself (tests do).

pub mod backuplab;
pub mod binrun;
pub mod dnslab;
pub mod fixtures;
pub mod harness;
pub mod offsite;
pub mod promql;
pub mod servicejob;
pub mod serviceslab;
pub mod vmlab;
