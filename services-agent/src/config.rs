//! The services-agent config file: raw serde structs (unknown keys refused) validated into `Config`.
//! Knows the file format; must not know how the agent acts on it.

use std::path::Path;

use agent_core::config::{self, CommonConfig, ConfigError};

/// Port of `[metrics] listen` when only an address is given.
pub const DEFAULT_METRICS_PORT: u16 = 9443;

/// A validated config. The agent's own sections arrive with its domain issue; until then any other key is refused.
#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Ok(Config { common: config::load_common(path, DEFAULT_METRICS_PORT)? })
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
