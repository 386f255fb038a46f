//! Creating groups: the initial persistent state of a new Raft group.

use crate::keys;
use crate::state::{
    ApplyState, ConfStateRecord, PeerState, RaftLocalState, RegionLocalState, INIT_INDEX, INIT_TERM,
};
use prost::Message as _;
use scandium_storage::{Cf, WriteBatch};
use scandium_types::Region;

/// Writes the state of a new group for `region` into `batch`: its log starts truncated at
/// [`INIT_INDEX`], already committed and applied, with the Region's voters and learners as
/// its configuration.
pub fn write_initial_group(batch: &mut WriteBatch, region: &Region) {
    write_split_group(batch, region, INIT_TERM, 0);
}

/// Writes the state of a new group for `region`, as [`write_initial_group`] does, at
/// `term` and `vote` where `term` is past the initial one: a replica of the group may have
/// voted before its split wrote the group here, and that vote stays.
pub fn write_split_group(batch: &mut WriteBatch, region: &Region, term: u64, vote: u64) {
    let (term, vote) = if term > INIT_TERM { (term, vote) } else { (INIT_TERM, 0) };
    let raft_state = RaftLocalState { term, vote, commit: INIT_INDEX, last_index: INIT_INDEX };
    batch.put(Cf::RaftState, keys::raft_state_key(region.id), raft_state.encode_to_vec());
    batch.put(
        Cf::RaftState,
        keys::apply_state_key(region.id),
        ApplyState::initial().encode_to_vec(),
    );
    write_region_state(batch, region, &ConfStateRecord::of_region(region));
}

/// Writes a peer's view of its Region and configuration into `batch`.
pub fn write_region_state(batch: &mut WriteBatch, region: &Region, conf_state: &ConfStateRecord) {
    write_merging_state(batch, region, conf_state, None, &[]);
}

/// Writes a peer's view of its Region, configuration, the merge it is frozen for, if
/// any, and the merges it absorbed (see [`crate::merge`]), into `batch`.
pub fn write_merging_state(
    batch: &mut WriteBatch,
    region: &Region,
    conf_state: &ConfStateRecord,
    merge_state: Option<&crate::merge::MergeState>,
    absorbed: &[crate::merge::AbsorbedSource],
) {
    let state = RegionLocalState {
        region: Some(region.clone()),
        state: PeerState::Normal as i32,
        conf_state: Some(conf_state.clone()),
        removed_peer_id: 0,
        lingering: None,
        merge_state: merge_state.cloned(),
        absorbed: absorbed.to_vec(),
    };
    batch.put(Cf::RaftState, keys::region_state_key(region.id), state.encode_to_vec());
}

/// Writes the tombstone of destroyed replica `peer_id`: it remembers the Region as last
/// known and the replica's id, so that stale messages to it are recognised and dropped.
pub fn write_tombstone(batch: &mut WriteBatch, region: &Region, peer_id: u64) {
    write_absorbed_tombstone(batch, region, peer_id, None);
}

/// Writes the tombstone of replica `peer_id`, with the merge that absorbed its Region
/// (`merge`, if any): the store tells replicas that slept through the merge (see
/// [`crate::merge`]).
pub fn write_absorbed_tombstone(
    batch: &mut WriteBatch,
    region: &Region,
    peer_id: u64,
    merge: Option<&crate::merge::MergeState>,
) {
    let state = RegionLocalState {
        region: Some(region.clone()),
        state: PeerState::Tombstone as i32,
        conf_state: None,
        removed_peer_id: peer_id,
        lingering: None,
        merge_state: merge.cloned(),
        absorbed: Vec::new(),
    };
    batch.put(Cf::RaftState, keys::region_state_key(region.id), state.encode_to_vec());
}

/// Writes the state of lingering replica `peer_id` (see [`crate::linger`]): its Region
/// and configuration as applied, and what it waits for.
pub fn write_lingering(
    batch: &mut WriteBatch,
    region: &Region,
    conf_state: &ConfStateRecord,
    peer_id: u64,
    lingering: &crate::linger::Lingering,
) {
    let state = RegionLocalState {
        region: Some(region.clone()),
        state: PeerState::Lingering as i32,
        conf_state: Some(conf_state.clone()),
        removed_peer_id: peer_id,
        lingering: Some(lingering.clone()),
        merge_state: None,
        absorbed: Vec::new(),
    };
    batch.put(Cf::RaftState, keys::region_state_key(region.id), state.encode_to_vec());
}
