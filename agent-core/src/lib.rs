//! Shared runtime of every Strata agent: config, mTLS identity, authorization, state, telemetry, service install.
//! Knows no agent's domain (no DNS, Docker, ZFS or VM knowledge lives here).

pub mod authz;
pub mod backups;
pub mod borg;
pub mod cli;
pub mod clock;
pub mod config;
pub mod conn;
pub mod credentials;
pub mod cron;
pub mod duration;
pub mod freshness;
pub mod grpc;
pub mod health;
pub mod identity;
pub mod install;
pub mod jobs;
pub mod notify;
pub mod paging;
pub mod policy;
pub mod repos;
pub mod runner;
pub mod ssh;
pub mod state;
pub mod target;
pub mod telemetry;
pub mod tls;
