//! Keys of Raft data in the engine.
//!
//! ```text
//! RaftLog:   group_id (8 bytes BE) | index (8 bytes BE)  -> eraftpb.Entry
//! RaftState: b'h' | group_id                             -> RaftLocalState (hard state, last index)
//!            b'a' | group_id                             -> ApplyState
//!            b'r' | group_id                             -> RegionLocalState
//!            b's' | group_id                             -> PendingInstall (a snapshot
//!                                                           whose data is not all in)
//! ```
//!
//! Big-endian integers make a group's log one contiguous, index-ordered range. A Region's
//! own records lie in the ranges [`data_ranges`] names.

use scandium_storage::Cf;
use scandium_types::codec::encode_bytes;
use scandium_types::Region;

/// Key of log entry `index` of group `group_id`.
pub fn log_key(group_id: u64, index: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(16);
    key.extend_from_slice(&group_id.to_be_bytes());
    key.extend_from_slice(&index.to_be_bytes());
    key
}

/// Splits a log key into `(group_id, index)`.
pub fn decode_log_key(key: &[u8]) -> Option<(u64, u64)> {
    let group = u64::from_be_bytes(key.get(0..8)?.try_into().ok()?);
    let index = u64::from_be_bytes(key.get(8..16)?.try_into().ok()?);
    (key.len() == 16).then_some((group, index))
}

fn state_key(tag: u8, group_id: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(9);
    key.push(tag);
    key.extend_from_slice(&group_id.to_be_bytes());
    key
}

/// Key of a group's [`crate::state::RaftLocalState`].
pub fn raft_state_key(group_id: u64) -> Vec<u8> {
    state_key(b'h', group_id)
}

/// Key of a group's [`crate::state::ApplyState`].
pub fn apply_state_key(group_id: u64) -> Vec<u8> {
    state_key(b'a', group_id)
}

/// Key of a group's [`crate::state::RegionLocalState`].
pub fn region_state_key(group_id: u64) -> Vec<u8> {
    state_key(b'r', group_id)
}

/// Key of a group's pending install record (the snapshot module's `PendingInstall`): a
/// snapshot whose data is not all in yet.
pub fn install_key(group_id: u64) -> Vec<u8> {
    state_key(INSTALL_PREFIX, group_id)
}

/// Prefix of every [`install_key`].
pub const INSTALL_PREFIX: u8 = b's';

/// Prefix of every Region state key, for enumerating the groups on this node.
pub const REGION_STATE_PREFIX: u8 = b'r';

/// Decodes the group id from a Region state key.
pub fn decode_region_state_key(key: &[u8]) -> Option<u64> {
    match key {
        [REGION_STATE_PREFIX, rest @ ..] if rest.len() == 8 => {
            Some(u64::from_be_bytes(rest.try_into().ok()?))
        }
        _ => None,
    }
}

/// The key ranges, per column family, that hold a Region's records: the data column
/// families over its range (versioned column families over the encoded range), or for the
/// placement group the whole placement column family.
pub fn data_ranges(region: &Region) -> Vec<(Cf, Vec<u8>, Vec<u8>)> {
    if region.id == crate::META_GROUP_ID {
        return vec![(Cf::Placement, Vec::new(), Vec::new())];
    }
    Cf::DATA
        .iter()
        .map(|&cf| match cf {
            Cf::Write | Cf::Default => {
                let end = if region.end_key.is_empty() {
                    Vec::new()
                } else {
                    encode_bytes(&region.end_key)
                };
                (cf, encode_bytes(&region.start_key), end)
            }
            _ => (cf, region.start_key.clone(), region.end_key.clone()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_order_by_group_then_index() {
        assert!(log_key(1, 300) < log_key(1, 301));
        assert!(log_key(1, u64::MAX) < log_key(2, 0));
        assert_eq!(decode_log_key(&log_key(7, 9)), Some((7, 9)));
        assert_eq!(decode_region_state_key(&region_state_key(42)), Some(42));
    }
}
