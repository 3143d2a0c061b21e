//! The services-agent config file: raw serde structs (unknown keys refused) validated into `Config`.
//! Knows the file format; must not know how the agent acts on it.

use std::path::{Path, PathBuf};

use agent_core::config::{self, CommonConfig, ConfigError, GrpcSection, MetricsSection};
use serde::Deserialize;

/// Port of `[metrics] listen` when only an address is given.
pub const DEFAULT_METRICS_PORT: u16 = 9443;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    state_dir: PathBuf,
    grpc: GrpcSection,
    metrics: Option<MetricsSection>,
}

/// A validated config.
#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = config::load(path)?;
        let common = CommonConfig::validate(path, raw.state_dir, raw.grpc, raw.metrics, DEFAULT_METRICS_PORT)?;
        Ok(Config { common })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/services-agent.toml");
        let cfg = Config::load(&path).unwrap();
        assert_eq!(cfg.common.grpc.listen.port(), 7443);
        assert_eq!(cfg.common.metrics_listen.port(), 9443);
    }
}
