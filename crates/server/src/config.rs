//! Node configuration: defaults that make `scandium server` work with no flags, a TOML file
//! for the same settings, and command-line overrides.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// Settings of one node. Every field has a default; a TOML file may set any subset.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the node keeps its data.
    pub data_dir: PathBuf,
    /// `HOST:PORT` the node listens on and advertises to clients. Port 0 picks a free port
    /// (the advertised address then carries the chosen port).
    pub addr: String,
    /// Milliseconds per Raft tick.
    pub raft_tick_ms: u64,
    /// Largest Raft entry (one write command), in bytes.
    pub max_raft_entry_bytes: u64,
    /// Largest gRPC message accepted or sent, in bytes.
    pub max_grpc_message_bytes: usize,
    /// Largest response a read may produce, in bytes (tikv-client decodes at most 4 MiB).
    pub max_response_bytes: usize,
    /// Most keys a raw scan may ask for.
    pub max_scan_limit: u32,
    /// Seconds between sweeps that delete expired raw keys.
    pub ttl_sweep_interval_secs: u64,
    /// Seconds between checks of the GC safe point.
    pub gc_interval_secs: u64,
    /// Block cache of the storage engine, in bytes.
    pub cache_size_bytes: u64,
    /// Memtable size per column family, in bytes.
    pub memtable_size_bytes: u64,
    /// Number of latch slots serialising writes to the same keys.
    pub latch_slots: usize,
    /// Memory for recently written keys' newest records, in bytes (0 disables the cache).
    pub newest_cache_bytes: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("scandium-data"),
            addr: "127.0.0.1:2379".into(),
            raft_tick_ms: 100,
            max_raft_entry_bytes: 8 << 20,
            max_grpc_message_bytes: 10 << 20,
            max_response_bytes: 4 << 20,
            max_scan_limit: 10_240,
            ttl_sweep_interval_secs: 60,
            gc_interval_secs: 10,
            cache_size_bytes: 64 << 20,
            memtable_size_bytes: 16 << 20,
            latch_slots: 4096,
            newest_cache_bytes: 32 << 20,
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for [`Config`].
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: toml::de::Error,
    },
    /// A value is out of range.
    #[error("invalid setting {name}: {reason}")]
    Invalid {
        /// The setting.
        name: &'static str,
        /// Why.
        reason: String,
    },
}

impl Config {
    /// Reads a TOML file; unset fields keep their defaults.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.to_owned(), source })
    }

    /// Checks the settings against each other and their limits.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid =
            |name, reason: &str| Err(ConfigError::Invalid { name, reason: reason.into() });
        if self.raft_tick_ms == 0 {
            return invalid("raft_tick_ms", "must be positive");
        }
        if self.max_raft_entry_bytes < 1 << 20 {
            return invalid("max_raft_entry_bytes", "must be at least 1 MiB");
        }
        if (self.max_grpc_message_bytes as u64) < self.max_raft_entry_bytes {
            return invalid("max_grpc_message_bytes", "must be at least max_raft_entry_bytes");
        }
        if self.max_response_bytes < 64 << 10 || self.max_scan_limit == 0 {
            return invalid(
                "max_response_bytes",
                "must be at least 64 KiB, with a positive scan limit",
            );
        }
        if self.latch_slots == 0 || self.ttl_sweep_interval_secs == 0 {
            return invalid(
                "latch_slots",
                "latch_slots and ttl_sweep_interval_secs must be positive",
            );
        }
        Ok(())
    }

    /// Duration of one Raft tick.
    pub fn raft_tick(&self) -> Duration {
        Duration::from_millis(self.raft_tick_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_overrides_only_what_it_sets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scandium.toml");
        std::fs::write(&path, "addr = \"127.0.0.1:3000\"\ndata_dir = \"/tmp/x\"\n").unwrap();
        let config = Config::from_file(&path).unwrap();
        assert_eq!(config.addr, "127.0.0.1:3000");
        assert_eq!(config.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(config.raft_tick_ms, 100);
        config.validate().unwrap();
    }

    #[test]
    fn unknown_and_invalid_settings_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "adress = \"x\"\n").unwrap();
        assert!(matches!(Config::from_file(&path), Err(ConfigError::Parse { .. })));
        let config = Config { raft_tick_ms: 0, ..Config::default() };
        assert!(config.validate().is_err());
    }
}
