//! Splitting Regions on request (`scandium ctl split`, PD `SplitRegions`, Tikv
//! `SplitRegion`).
//!
//! A split allocates the new Region's ids from placement, proposes the split to the Region's
//! Raft group, and reports both halves to placement in one command before answering, so
//! that a client asking placement right after sees the new layout, and one asking during
//! the report sees the old or the new layout, never a gap.

use crate::context::NodeContext;
use crate::error::RequestError;
use scandium_raftstore::{ApplyOutput, RaftCommand, RaftstoreError, SplitRequest};
use scandium_types::Region;

/// Attempts per key when a concurrent split changes the Region under us.
const ATTEMPTS: usize = 5;

/// Splits at each key in turn; returns the Regions that now start at the keys. A key that
/// already is a Region boundary is left as it is.
pub async fn split_at_keys(
    node: &NodeContext,
    mut keys: Vec<Vec<u8>>,
) -> Result<Vec<Region>, RequestError> {
    keys.sort();
    keys.dedup();
    let mut regions = Vec::with_capacity(keys.len());
    for key in keys {
        regions.push(split_at(node, key).await?);
    }
    Ok(regions)
}

/// Splits the Region containing `key` so that a Region starts at `key`.
pub async fn split_at(node: &NodeContext, key: Vec<u8>) -> Result<Region, RequestError> {
    if key.is_empty() {
        return Err(RequestError::invalid("cannot split at the empty key"));
    }
    if key.len() > scandium_types::MAX_KEY_SIZE {
        return Err(RequestError::invalid("split key is longer than the key size limit"));
    }
    for _ in 0..ATTEMPTS {
        let status = node.registry.find_by_key(&key).ok_or_else(|| {
            RequestError::Internal(format!("no region on this node holds {key:?}"))
        })?;
        if status.region.start_key == key {
            return Ok(status.region);
        }
        let first_id = node.placement.alloc_ids(1 + status.region.peers.len() as u64).await?;
        let request = SplitRequest {
            split_key: key.clone(),
            new_region_id: first_id,
            new_peer_ids: (1..=status.region.peers.len() as u64).map(|i| first_id + i).collect(),
        };
        let command = RaftCommand::split(&status.region, request);
        match node.raft.propose_command(status.region.id, command).await {
            Ok(ApplyOutput::Split { left, right }) => {
                node.placement.put_regions(vec![right.clone(), left]).await?;
                tracing::info!(region = right.id, key = ?key, "split region");
                return Ok(right);
            }
            Ok(other) => {
                return Err(RequestError::Internal(format!("unexpected split result {other:?}")))
            }
            Err(RaftstoreError::EpochNotMatch { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(RequestError::Internal(format!("region of {key:?} kept changing; split not done")))
}
