//! [`NodeContext`]: what every request handler shares, and the checks every storage request
//! goes through before it touches data.

use crate::config::Config;
use crate::error::{store_not_match, RequestError};
use crate::placement::Placement;
use crate::raft_driver::RaftHandle;
use scandium_protocol::kvrpcpb;
use scandium_raftstore::{RaftstoreError, RegionStatus, Registry};
use scandium_storage::EngineRef;
use scandium_txn::{ConcurrencyManager, Latches};
use scandium_types::keyspace::{ApiVersion, PREFIX_LEN};
use scandium_types::{Region, StoreId, MAX_KEY_SIZE};
use std::sync::Arc;

/// Everything a request handler needs, shared by all of them.
pub struct NodeContext {
    /// The node's settings.
    pub config: Config,
    /// This node's store.
    pub store_id: StoreId,
    /// The address clients reach this node at.
    pub advertise_addr: String,
    /// The node's storage.
    pub engine: EngineRef,
    /// Regions with a peer on this node.
    pub registry: Registry,
    /// Proposals to the Raft thread.
    pub raft: RaftHandle,
    /// The placement group.
    pub placement: Arc<Placement>,
    /// Serialises writes to the same keys.
    pub latches: Latches,
    /// The highest read timestamp and in-flight async-commit locks.
    pub concurrency: Arc<ConcurrencyManager>,
    /// Pessimistic lock requests waiting for other transactions' locks.
    pub lock_waits: crate::lock_wait::LockWaits,
    /// Which keys hold transactional locks (kept in memory; see `scandium_txn::LockIndex`).
    pub lock_index: Arc<scandium_txn::LockIndex>,
    /// Recently written keys' newest records (see `scandium_txn::NewestCache`).
    pub newest: Arc<scandium_txn::NewestCache>,
}

/// The key space a request addresses; API V2 keys must carry its mode byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyMode {
    /// Raw requests: V2 keys start with `r`.
    Raw,
    /// Transactional requests: V2 keys start with `x` (or TiDB's `m`/`t`).
    Txn,
}

/// A storage request that passed the Region checks.
pub struct Checked {
    /// The Region as it is now (its epoch equals the request's).
    pub region: Region,
    /// The API version the request was made with.
    pub api_version: ApiVersion,
}

impl NodeContext {
    /// Checks a request's context: the Region exists here, the epoch is current, this peer
    /// leads and has caught up, and the API version is known.
    pub fn check_context(
        &self,
        context: Option<&kvrpcpb::Context>,
    ) -> Result<Checked, RequestError> {
        let context = context.ok_or_else(|| RequestError::invalid("request has no context"))?;
        let api_version = ApiVersion::from_wire(context.api_version).ok_or_else(|| {
            RequestError::invalid(format!("unknown API version {}", context.api_version))
        })?;
        if let Some(peer) = &context.peer {
            if peer.store_id != 0 && peer.store_id != self.store_id {
                return Err(store_not_match(peer.store_id, self.store_id));
            }
        }
        let status = self
            .registry
            .get(context.region_id)
            .ok_or(RaftstoreError::RegionNotFound(context.region_id))?;
        let current = status.region.epoch();
        let matches = context
            .region_epoch
            .as_ref()
            .is_some_and(|e| e.version == current.version && e.conf_ver == current.conf_ver);
        if !matches {
            return Err(RaftstoreError::EpochNotMatch { current: vec![status.region] }.into());
        }
        let RegionStatus { region, leader, ready_for_reads, .. } = status;
        if !ready_for_reads {
            return Err(RaftstoreError::NotLeader { region_id: region.id, leader }.into());
        }
        Ok(Checked { region, api_version })
    }

    /// Checks one key of a request: size, API V2 prefix, and that it lies in the Region.
    pub fn check_key(
        &self,
        checked: &Checked,
        mode: KeyMode,
        key: &[u8],
    ) -> Result<(), RequestError> {
        check_key_shape(checked.api_version, mode, key)?;
        if !checked.region.contains(key) {
            return Err(RaftstoreError::KeyNotInRegion {
                key: key.to_vec(),
                region: Box::new(checked.region.clone()),
            }
            .into());
        }
        Ok(())
    }

    /// Checks a key a read looks up: as [`NodeContext::check_key`], except that a key over
    /// the size limit is no error (TiKV limits only what is written): it cannot be stored,
    /// so the answer is `false` and the read finds nothing without asking storage.
    pub fn check_read_key(
        &self,
        checked: &Checked,
        mode: KeyMode,
        key: &[u8],
    ) -> Result<bool, RequestError> {
        if key.len() > MAX_KEY_SIZE {
            check_key_prefix(checked.api_version, mode, key)?;
            if !checked.region.contains(key) {
                let region = checked.region.clone();
                return Err(RaftstoreError::KeyNotInRegion {
                    key: key.to_vec(),
                    region: Box::new(region),
                }
                .into());
            }
            return Ok(false);
        }
        self.check_key(checked, mode, key)?;
        Ok(true)
    }

    /// Checks the starting key of a range request and clamps `[start, end)` (empty `end` =
    /// unbounded) to the Region. An inverted range is no error: as in TiKV, it holds
    /// nothing, and the clamped range is inverted or empty too.
    pub fn clamp_range(
        &self,
        checked: &Checked,
        mode: KeyMode,
        start: &[u8],
        end: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>), RequestError> {
        if start.is_empty() && checked.api_version != ApiVersion::V2 {
            // The unbounded start: only the first Region holds it.
            if !checked.region.start_key.is_empty() {
                let region = checked.region.clone();
                return Err(RaftstoreError::KeyNotInRegion {
                    key: Vec::new(),
                    region: Box::new(region),
                }
                .into());
            }
        } else {
            self.check_key(checked, mode, start)?;
        }
        Ok(clamp_to_region(&checked.region, start, end))
    }
}

/// Key size limit and API V2 prefix rules.
pub fn check_key_shape(
    api_version: ApiVersion,
    mode: KeyMode,
    key: &[u8],
) -> Result<(), RequestError> {
    if key.is_empty() {
        return Err(RequestError::invalid("key must not be empty"));
    }
    if key.len() > MAX_KEY_SIZE {
        return Err(RequestError::invalid(format!(
            "key is too large: {} bytes, the limit is {MAX_KEY_SIZE}",
            key.len()
        )));
    }
    check_key_prefix(api_version, mode, key)
}

/// API V2 keys must carry the keyspace prefix of their mode.
fn check_key_prefix(
    api_version: ApiVersion,
    mode: KeyMode,
    key: &[u8],
) -> Result<(), RequestError> {
    if api_version == ApiVersion::V2 {
        let prefix_ok = match mode {
            KeyMode::Raw => key.first() == Some(&scandium_types::keyspace::RAW_MODE),
            KeyMode::Txn => key.first().is_some_and(|m| {
                *m == scandium_types::keyspace::TXN_MODE
                    || scandium_types::keyspace::TIDB_MODES.contains(m)
            }),
        };
        if !prefix_ok || key.len() < PREFIX_LEN {
            return Err(RequestError::invalid(format!(
                "API V2 {mode:?} key {key:?} does not carry a keyspace prefix"
            )));
        }
    }
    Ok(())
}

/// `[start, end) ∩ region` (empty `end` = unbounded on either side).
pub fn clamp_to_region(region: &Region, start: &[u8], end: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let start = start.max(region.start_key.as_slice()).to_vec();
    let end = match (end.is_empty(), region.end_key.is_empty()) {
        (true, _) => region.end_key.clone(),
        (false, true) => end.to_vec(),
        (false, false) => end.min(region.end_key.as_slice()).to_vec(),
    };
    (start, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamping() {
        let region =
            Region { start_key: b"b".to_vec(), end_key: b"m".to_vec(), ..Default::default() };
        assert_eq!(clamp_to_region(&region, b"a", b""), (b"b".to_vec(), b"m".to_vec()));
        assert_eq!(clamp_to_region(&region, b"c", b"d"), (b"c".to_vec(), b"d".to_vec()));
        let open = Region { start_key: b"b".to_vec(), ..Default::default() };
        assert_eq!(clamp_to_region(&open, b"c", b""), (b"c".to_vec(), b"".to_vec()));
        assert_eq!(clamp_to_region(&open, b"c", b"z"), (b"c".to_vec(), b"z".to_vec()));
    }

    #[test]
    fn v2_raw_keys_need_their_prefix() {
        assert!(check_key_shape(ApiVersion::V2, KeyMode::Raw, b"r\0\0\0k").is_ok());
        assert!(check_key_shape(ApiVersion::V2, KeyMode::Raw, b"x\0\0\0k").is_err());
        assert!(check_key_shape(ApiVersion::V2, KeyMode::Raw, b"r\0").is_err());
        assert!(check_key_shape(ApiVersion::V1, KeyMode::Raw, b"anything").is_ok());
        assert!(check_key_shape(ApiVersion::V1, KeyMode::Raw, b"").is_err());
        assert!(check_key_shape(ApiVersion::V1, KeyMode::Raw, &vec![0; MAX_KEY_SIZE + 1]).is_err());
    }
}
