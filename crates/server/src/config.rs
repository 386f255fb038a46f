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
    /// Nodes of an existing cluster to join through (`HOST:PORT`), for a node whose data
    /// directory is empty. Ignored once the node belongs to a cluster (it is checked to be
    /// the same cluster, if reachable).
    pub join: Vec<String>,
    /// Where this node is: labels such as `zone = "z1"`, `host = "h1"` (a `[labels]`
    /// table in the TOML, `--labels zone=z1,host=h1` on the command line), recorded with
    /// its store at every start.
    pub labels: std::collections::BTreeMap<String, String>,
    /// The isolation levels, outermost first (`["zone", "host"]`): a Region's replicas go
    /// to distinct zones, then distinct hosts, whenever enough exist. The placement
    /// leader's setting is the one in force, so give every node the same.
    pub location_labels: Vec<String>,
    /// Voters each data Region should have, recorded when a new cluster is created
    /// (fewer while fewer nodes exist).
    pub replicas: u64,
    /// Voters of the placement group once the cluster has enough nodes: 3 or 5.
    pub meta_voters: usize,
    /// Milliseconds per Raft tick.
    pub raft_tick_ms: u64,
    /// Ticks without a leader before a follower campaigns (the shortest election
    /// timeout); the leader's lease is two ticks shorter.
    pub election_ticks: usize,
    /// Longest randomised election timeout, in ticks (exclusive).
    pub max_election_ticks: usize,
    /// Whether a Region idle for twice `election_ticks` stops ticking and heartbeating
    /// on all its replicas until something needs it (TiKV's `hibernate-regions`): ten
    /// thousand idle Regions then cost next to nothing. A sleeping Region's leader dying
    /// is noticed through the nodes' beats: a new one is elected within about
    /// `election_ticks` + `max_election_ticks` ticks (1.3 s at the defaults, against
    /// 0.5-0.8 s for an awake one). See `docs/design/hibernation.md`.
    pub hibernate_regions: bool,
    /// Milliseconds between a node's heartbeats to the placement leader.
    pub heartbeat_interval_ms: u64,
    /// Seconds without a heartbeat after which a store counts as down and its replicas
    /// are re-created elsewhere.
    pub store_down_secs: u64,
    /// Largest snapshot a node receives, in bytes. It is staged on disk as it arrives
    /// (memory holds a chunk of it at a time), so this guards disk space only; Regions are
    /// kept small by `region_max_size`.
    pub max_snapshot_bytes: u64,
    /// Snapshots a node sends at once at most, and receives at once at most.
    pub snapshot_max_concurrent: u32,
    /// Bytes per second a node sends snapshots at, all together, at most (0: no limit),
    /// so that copying Regions to a new node leaves room for client traffic.
    pub snapshot_max_bytes_per_sec: u64,
    /// Log entries a Region's leader keeps for lagging followers at most; past it (or
    /// past 64 MiB of log), they are caught up by a snapshot instead. 65,536 by default,
    /// near TiKV's 73,728: with 8,192, a Region taking 4,000 one-put entries a second
    /// outran a follower's 2-5 s snapshot install, which then needed another, three in a
    /// row, while the follower answered nothing (`scripts/scale-out.sh`).
    pub raft_log_max_entries: u64,
    /// Milliseconds added to this node's wall clock where it stamps timestamps: a way to
    /// test nodes whose clocks disagree. Leave it 0.
    pub wall_clock_offset_ms: i64,
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
    /// Storage journal kept before every memtable is flushed to let it go, in bytes: a
    /// restart after a crash replays all of it. Below 64 MiB the node keeps the bound
    /// itself (a flush of every memtable each time it is passed); from 64 MiB, fjall
    /// does (docs/performance.md has what each costs).
    pub journal_max_bytes: u64,
    /// Number of latch slots serialising writes to the same keys.
    pub latch_slots: usize,
    /// Memory for recently written keys' newest records, in bytes (0 disables the cache).
    pub newest_cache_bytes: u64,
    /// Free space, in bytes, below which writes that add data are refused, so that Raft's
    /// own writes never meet a full disk (see `disk`); 0 turns the guard off.
    pub reserve_space_bytes: u64,
    /// Bytes of each Region an automatic split leaves (see `docs/architecture/split.md`
    /// for the defaults' reasons).
    pub region_split_size: u64,
    /// Bytes past which a Region is split.
    pub region_max_size: u64,
    /// User records (raw keys, versions of transactional keys) of each Region an
    /// automatic split leaves.
    pub region_split_keys: u64,
    /// User records past which a Region is split.
    pub region_max_keys: u64,
    /// Milliseconds between checks of the Regions led here for a split (a check reads
    /// only Regions written to since their last one).
    pub split_check_interval_ms: u64,
    /// Moves that even out the stores under way at once, of replicas (to a store holding
    /// fewer) and of leaders (to a store leading fewer) each; 0 turns balancing off.
    pub balance_limit: usize,
    /// Replica moves for balance each store may take part in (as source or target) in
    /// any minute; 0: no limit. Repair of missing replicas is not limited.
    pub store_limit_per_minute: u64,
    /// Bytes a second read and written past which a Region counts as hot: its leader is
    /// moved to even out the stores' traffic instead of their leader counts.
    pub hot_region_bytes_per_sec: u64,
    /// Bytes a Region may hold, at most, to merge with a neighbour as small (see
    /// `docs/architecture/placement.md`); 0 turns merges off. Counted as at most half
    /// `region_split_size`, so that two merged Regions are not split again at once.
    /// `ctl scheduler merge` sets the cluster's, which wins.
    pub merge_max_size: u64,
    /// User records a Region may hold, at most, to merge; counted as at most half
    /// `region_split_keys`.
    pub merge_max_keys: u64,
    /// Milliseconds a Region's shape must stand (after a split, say) before it merges.
    pub split_merge_interval_ms: u64,
    /// Merges under way at once, at most.
    pub merge_limit: usize,
    /// Requests a second past which a Region led here counts as hot; a Region hot for
    /// `load_split_secs` in a row is split where its load divides (0 turns it off).
    pub load_split_qps: u64,
    /// Seconds in a row a Region must be hot before it is split by load.
    pub load_split_secs: u64,
    /// TLS: the `[security]` table, with TiKV's names (`ca-path`, `cert-path`,
    /// `key-path`; `cacert-path` as PD spells it). Unset: plaintext.
    pub security: crate::tls::SecurityConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("scandium-data"),
            addr: "127.0.0.1:2379".into(),
            join: Vec::new(),
            labels: Default::default(),
            location_labels: Vec::new(),
            replicas: 3,
            meta_voters: 3,
            raft_tick_ms: 50,
            election_ticks: 10,
            max_election_ticks: 16,
            hibernate_regions: true,
            heartbeat_interval_ms: 1000,
            store_down_secs: 1800,
            max_snapshot_bytes: 1 << 40,
            snapshot_max_concurrent: 2,
            snapshot_max_bytes_per_sec: 100 << 20,
            raft_log_max_entries: 65_536,
            wall_clock_offset_ms: 0,
            max_raft_entry_bytes: 8 << 20,
            max_grpc_message_bytes: 10 << 20,
            max_response_bytes: 4 << 20,
            max_scan_limit: 10_240,
            ttl_sweep_interval_secs: 60,
            gc_interval_secs: 10,
            cache_size_bytes: 64 << 20,
            memtable_size_bytes: 16 << 20,
            journal_max_bytes: 24 << 20,
            latch_slots: 4096,
            newest_cache_bytes: 32 << 20,
            reserve_space_bytes: 100 << 20,
            region_split_size: 64 << 20,
            region_max_size: 96 << 20,
            region_split_keys: 640_000,
            region_max_keys: 960_000,
            split_check_interval_ms: 10_000,
            balance_limit: 4,
            store_limit_per_minute: 20,
            hot_region_bytes_per_sec: 128 << 10,
            merge_max_size: 32 << 20,
            merge_max_keys: 320_000,
            split_merge_interval_ms: 5 * 60_000,
            merge_limit: 8,
            load_split_qps: 3_000,
            load_split_secs: 10,
            security: Default::default(),
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

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const DAY_SECS: u64 = 86_400;

fn invalid(name: &'static str, reason: String) -> ConfigError {
    ConfigError::Invalid { name, reason }
}

/// `Ok` if `min <= value <= max`, else an error naming the setting and its range.
fn in_range(name: &'static str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        return Ok(());
    }
    Err(invalid(name, format!("must be between {min} and {max}, not {value}")))
}

/// Labels and isolation levels: names and values of letters, digits, `-`, `_` and `.`,
/// at most 64 bytes each; 16 labels and 8 levels at most, no level named twice.
fn check_labels(
    labels: &std::collections::BTreeMap<String, String>,
    levels: &[String],
) -> Result<(), ConfigError> {
    let word = |text: &str| {
        !text.is_empty()
            && text.len() <= 64
            && text.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    if labels.len() > 16 {
        return Err(invalid("labels", format!("must be at most 16, not {}", labels.len())));
    }
    if let Some((key, value)) = labels.iter().find(|(k, v)| !word(k) || !word(v)) {
        let why = "names and values must be 1 to 64 letters, digits, '-', '_' or '.'";
        return Err(invalid("labels", format!("{key:?} = {value:?}: {why}")));
    }
    if levels.len() > 8 {
        let count = levels.len();
        return Err(invalid("location_labels", format!("must be at most 8, not {count}")));
    }
    if let Some(bad) = levels.iter().find(|l| !word(l)) {
        return Err(invalid("location_labels", format!("{bad:?}: must be a label name")));
    }
    let distinct: std::collections::BTreeSet<&String> = levels.iter().collect();
    if distinct.len() != levels.len() {
        return Err(invalid("location_labels", "must not name a level twice".to_string()));
    }
    Ok(())
}

/// Parses `--labels zone=z1,host=h1`.
pub fn parse_labels(text: &str) -> Result<std::collections::BTreeMap<String, String>, String> {
    text.split(',')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) => Ok((key.trim().to_string(), value.trim().to_string())),
            None => Err(format!("label {pair:?} is not NAME=VALUE")),
        })
        .collect()
}

impl ConfigError {
    /// Adds why the range is what it is.
    fn because(self, why: &str) -> ConfigError {
        match self {
            ConfigError::Invalid { name, reason } => invalid(name, format!("{reason} ({why})")),
            other => other,
        }
    }
}

impl Config {
    /// Reads a TOML file; unset fields keep their defaults.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.to_owned(), source })
    }

    /// Checks every setting against its allowed range (and the settings that bound each
    /// other), so that a bad value stops the node at start with a message naming it, never
    /// later in a background task.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must name a directory".into()));
        }
        let port = self.addr.rsplit_once(':').map(|(_, port)| port.parse::<u16>());
        if !matches!(port, Some(Ok(_))) {
            return Err(invalid("addr", format!("must be HOST:PORT, not {:?}", self.addr)));
        }
        for address in &self.join {
            let port = address.rsplit_once(':').map(|(_, port)| port.parse::<u16>());
            if !matches!(port, Some(Ok(_))) {
                return Err(invalid(
                    "join",
                    format!("must list HOST:PORT addresses, not {address:?}"),
                ));
            }
        }
        let grpc = self.max_grpc_message_bytes as u64;
        in_range("replicas", self.replicas, 1, 7)?;
        if ![3, 5].contains(&self.meta_voters) {
            return Err(invalid(
                "meta_voters",
                format!("must be 3 or 5, not {}", self.meta_voters),
            ));
        }
        check_labels(&self.labels, &self.location_labels)?;
        in_range("raft_tick_ms", self.raft_tick_ms, 1, 10_000)?;
        in_range("election_ticks", self.election_ticks as u64, 5, 1_000)?;
        in_range(
            "max_election_ticks",
            self.max_election_ticks as u64,
            self.election_ticks as u64 + 1,
            10_000,
        )
        .map_err(|e| e.because("it must exceed election_ticks"))?;
        in_range("heartbeat_interval_ms", self.heartbeat_interval_ms, 10, 60_000)?;
        in_range("store_down_secs", self.store_down_secs, 1, 30 * DAY_SECS)?;
        in_range("max_snapshot_bytes", self.max_snapshot_bytes, MIB, 1 << 50)?;
        in_range("snapshot_max_concurrent", u64::from(self.snapshot_max_concurrent), 1, 64)?;
        if self.snapshot_max_bytes_per_sec != 0 {
            in_range("snapshot_max_bytes_per_sec", self.snapshot_max_bytes_per_sec, MIB, 1 << 40)
                .map_err(|e| e.because("0 means no limit"))?;
        }
        in_range("raft_log_max_entries", self.raft_log_max_entries, 16, 1 << 24)?;
        in_range(
            "wall_clock_offset_ms",
            self.wall_clock_offset_ms.unsigned_abs(),
            0,
            DAY_SECS * 1000,
        )?;
        in_range("max_raft_entry_bytes", self.max_raft_entry_bytes, MIB, 256 * MIB)?;
        in_range("max_grpc_message_bytes", grpc, self.max_raft_entry_bytes, GIB)
            .map_err(|e| e.because("it must hold the largest Raft entry"))?;
        in_range("max_response_bytes", self.max_response_bytes as u64, 64 * KIB, grpc)
            .map_err(|e| e.because("a response must fit in a gRPC message"))?;
        in_range("max_scan_limit", u64::from(self.max_scan_limit), 1, 1_000_000)?;
        in_range("ttl_sweep_interval_secs", self.ttl_sweep_interval_secs, 1, 7 * DAY_SECS)?;
        in_range("gc_interval_secs", self.gc_interval_secs, 1, DAY_SECS)?;
        in_range("cache_size_bytes", self.cache_size_bytes, MIB, 1 << 40)?;
        in_range("memtable_size_bytes", self.memtable_size_bytes, MIB, GIB)?;
        in_range("journal_max_bytes", self.journal_max_bytes, MIB, 4 * GIB)?;
        in_range("latch_slots", self.latch_slots as u64, 1, 1 << 24)?;
        in_range("newest_cache_bytes", self.newest_cache_bytes, 0, 64 * GIB)?;
        in_range("region_split_size", self.region_split_size, 4 * KIB, 64 * GIB)?;
        in_range("region_max_size", self.region_max_size, self.region_split_size, 1 << 50)
            .map_err(|e| e.because("it must be at least region_split_size"))?;
        in_range("region_split_keys", self.region_split_keys, 16, 1 << 40)?;
        in_range("region_max_keys", self.region_max_keys, self.region_split_keys, 1 << 40)
            .map_err(|e| e.because("it must be at least region_split_keys"))?;
        in_range("split_check_interval_ms", self.split_check_interval_ms, 10, 3_600_000)?;
        in_range("balance_limit", self.balance_limit as u64, 0, 1024)?;
        in_range("store_limit_per_minute", self.store_limit_per_minute, 0, 100_000)?;
        in_range("hot_region_bytes_per_sec", self.hot_region_bytes_per_sec, 1024, 1 << 40)?;
        in_range("merge_max_size", self.merge_max_size, 0, 1 << 50)?;
        in_range("merge_max_keys", self.merge_max_keys, 0, 1 << 40)?;
        in_range("split_merge_interval_ms", self.split_merge_interval_ms, 0, 7 * 86_400_000)?;
        in_range("merge_limit", self.merge_limit as u64, 0, 1024)?;
        in_range("load_split_qps", self.load_split_qps, 0, 10_000_000)?;
        in_range("load_split_secs", self.load_split_secs, 1, 600)?;
        self.security.paths().map_err(|reason| invalid("security", reason))?;
        if self.security.reload_interval_ms != 0 {
            in_range("reload-interval-ms", self.security.reload_interval_ms, 10, 3_600_000)
                .map_err(|e| e.because("0 never looks again"))?;
        }
        in_range("handshake-timeout-ms", self.security.handshake_timeout_ms, 100, 600_000)?;
        let security = &self.security;
        let lists = [("node-cn", &security.node_cn), ("admin-cn", &security.admin_cn)];
        for (name, list) in
            lists.into_iter().chain([("cert-allowed-cn", &security.cert_allowed_cn)])
        {
            // A certificate's common name is at most 64 characters (RFC 5280).
            if let Some(bad) = list
                .iter()
                .find(|n| n.is_empty() || n.len() > 64 || n.chars().any(char::is_control))
            {
                return Err(invalid(
                    name,
                    format!("names must be 1 to 64 printable characters, not {bad:?}"),
                ));
            }
        }
        if security.node_cn.is_empty() {
            return Err(invalid("node-cn", "must name at least one node certificate".into()));
        }
        Ok(())
    }

    /// When and where Regions are split by size.
    pub fn split_policy(&self) -> scandium_raftstore::SplitPolicy {
        scandium_raftstore::SplitPolicy {
            split_size: self.region_split_size,
            max_size: self.region_max_size,
            split_keys: self.region_split_keys,
            max_keys: self.region_max_keys,
            max_split_keys: crate::split_check::MAX_SPLIT_KEYS_PER_CHECK,
        }
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
        assert_eq!(config.raft_tick_ms, 50);
        config.validate().unwrap();
    }

    #[test]
    fn unknown_and_invalid_settings_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "adress = \"x\"\n").unwrap();
        assert!(matches!(Config::from_file(&path), Err(ConfigError::Parse { .. })));
    }

    /// Every setting, with a value outside its range: each must be refused by name.
    #[test]
    fn every_setting_is_checked() {
        type Bad = (&'static str, fn(&mut Config));
        let bad: &[Bad] = &[
            ("data_dir", |c| c.data_dir = PathBuf::new()),
            ("addr", |c| c.addr = "localhost".into()),
            ("addr", |c| c.addr = "127.0.0.1:99999".into()),
            ("join", |c| c.join = vec!["nowhere".into()]),
            ("replicas", |c| c.replicas = 0),
            ("meta_voters", |c| c.meta_voters = 4),
            ("election_ticks", |c| c.election_ticks = 2),
            ("max_election_ticks", |c| c.max_election_ticks = 10),
            ("heartbeat_interval_ms", |c| c.heartbeat_interval_ms = 0),
            ("store_down_secs", |c| c.store_down_secs = 0),
            ("max_snapshot_bytes", |c| c.max_snapshot_bytes = 10),
            ("raft_log_max_entries", |c| c.raft_log_max_entries = 1),
            ("raft_tick_ms", |c| c.raft_tick_ms = 0),
            ("raft_tick_ms", |c| c.raft_tick_ms = 10_001),
            ("max_raft_entry_bytes", |c| c.max_raft_entry_bytes = 1000),
            ("max_grpc_message_bytes", |c| c.max_grpc_message_bytes = 2 << 20),
            ("max_response_bytes", |c| c.max_response_bytes = 1024),
            ("max_response_bytes", |c| c.max_response_bytes = 11 << 20),
            ("max_scan_limit", |c| c.max_scan_limit = 0),
            ("ttl_sweep_interval_secs", |c| c.ttl_sweep_interval_secs = 0),
            ("gc_interval_secs", |c| c.gc_interval_secs = 0),
            ("cache_size_bytes", |c| c.cache_size_bytes = 0),
            ("memtable_size_bytes", |c| c.memtable_size_bytes = 10),
            ("journal_max_bytes", |c| c.journal_max_bytes = 0),
            ("latch_slots", |c| c.latch_slots = 0),
            ("newest_cache_bytes", |c| c.newest_cache_bytes = u64::MAX),
            ("region_split_size", |c| c.region_split_size = 1),
            ("region_max_size", |c| c.region_max_size = c.region_split_size - 1),
            ("snapshot_max_concurrent", |c| c.snapshot_max_concurrent = 0),
            ("labels", |c| c.labels = [("zone".into(), String::new())].into()),
            ("labels", |c| c.labels = [("zo ne".into(), "z1".into())].into()),
            ("location_labels", |c| c.location_labels = vec!["zone".into(), "zone".into()]),
            ("location_labels", |c| c.location_labels = vec![String::new()]),
            ("snapshot_max_bytes_per_sec", |c| c.snapshot_max_bytes_per_sec = 1000),
            ("region_split_keys", |c| c.region_split_keys = 0),
            ("region_max_keys", |c| c.region_max_keys = c.region_split_keys - 1),
            ("split_check_interval_ms", |c| c.split_check_interval_ms = 0),
            ("balance_limit", |c| c.balance_limit = 5000),
            ("store_limit_per_minute", |c| c.store_limit_per_minute = 1_000_000),
            ("hot_region_bytes_per_sec", |c| c.hot_region_bytes_per_sec = 0),
            ("merge_max_size", |c| c.merge_max_size = u64::MAX),
            ("merge_max_keys", |c| c.merge_max_keys = u64::MAX),
            ("merge_limit", |c| c.merge_limit = 5000),
            ("load_split_qps", |c| c.load_split_qps = u64::MAX),
            ("load_split_secs", |c| c.load_split_secs = 0),
            ("security", |c| c.security.ca_path = Some("ca.pem".into())),
            ("reload-interval-ms", |c| c.security.reload_interval_ms = 1),
            ("handshake-timeout-ms", |c| c.security.handshake_timeout_ms = 0),
            ("node-cn", |c| c.security.node_cn = Vec::new()),
            ("node-cn", |c| c.security.node_cn = vec!["no\0de".into()]),
            ("admin-cn", |c| c.security.admin_cn = vec![String::new()]),
            ("cert-allowed-cn", |c| c.security.cert_allowed_cn = vec!["x".repeat(65)]),
            ("security", |c| {
                c.security.cert_path = Some("node.pem".into());
                c.security.key_path = Some("node.key".into());
            }),
        ];
        Config::default().validate().expect("the defaults are valid");
        for (name, spoil) in bad {
            let mut config = Config::default();
            spoil(&mut config);
            match config.validate() {
                Err(ConfigError::Invalid { name: reported, reason }) => {
                    assert_eq!(reported, *name, "{reason}");
                    assert!(reason.contains("must"), "{name}: {reason}");
                }
                other => panic!("{name}: expected a refusal, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_zero_gc_interval_in_a_file_is_refused_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gc.toml");
        std::fs::write(&path, "gc_interval_secs = 0\n").unwrap();
        let error = Config::from_file(&path).unwrap().validate().unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid setting gc_interval_secs: must be between 1 and 86400, not 0"
        );
    }

    /// TiKV's `[security]` names, and PD's `cacert-path` for the CA.
    #[test]
    fn tls_settings_take_tikv_s_and_pd_s_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tls.toml");
        for ca in ["ca-path", "cacert-path"] {
            let text = format!(
                "[security]\n{ca} = \"ca.pem\"\ncert-path = \"node.pem\"\nkey-path = \"node.key\"\n"
            );
            std::fs::write(&path, text).unwrap();
            let config = Config::from_file(&path).unwrap();
            config.validate().unwrap();
            assert_eq!(config.security.ca_path, Some(PathBuf::from("ca.pem")), "{ca}");
            assert_eq!(config.security.key_path, Some(PathBuf::from("node.key")));
        }
        std::fs::write(&path, "[security]\nca-path = \"ca.pem\"\n").unwrap();
        let error = Config::from_file(&path).unwrap().validate().unwrap_err().to_string();
        assert!(error.contains("cert-path and key-path missing"), "{error}");
    }

    #[test]
    fn labels_parse_from_the_command_line() {
        let labels = parse_labels("zone=z1,host=h1").unwrap();
        assert_eq!(labels.get("zone").map(String::as_str), Some("z1"));
        assert_eq!(labels.get("host").map(String::as_str), Some("h1"));
        assert!(parse_labels("zone").unwrap_err().contains("NAME=VALUE"));
        let config: Config =
            toml::from_str("location_labels = [\"zone\"]\n[labels]\nzone = \"z2\"\n").unwrap();
        config.validate().unwrap();
        assert_eq!(config.labels.get("zone").map(String::as_str), Some("z2"));
    }
}
