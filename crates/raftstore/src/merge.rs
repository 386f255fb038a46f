//! Region merge, in TiKV's three steps: the *source* Region is frozen in its own log
//! ([`PrepareMerge`]), then absorbed by its neighbour, the *target*, in the target's log
//! ([`CommitMerge`]), or thawed again in its own log if the target changed meanwhile
//! ([`RollbackMerge`]).
//!
//! - **Prepare** (source leader, [`check_prepare`]). Both Regions have replicas on the same
//!   stores, every source follower holds the log up to `min_index` (its matched index), and
//!   the entries after it are few, small, and hold no split, merge or membership change: a
//!   lagging replica is caught up from them. Applying it records a [`MergeState`] (target
//!   as then, `min_index`, and its own index, `commit`), bumps both the version and the
//!   `conf_ver` (every request addressed to the Region before is refused), and freezes the
//!   Region: it takes no write, read, split or membership change any more, and every write
//!   after it in its log is refused at apply.
//! - **Commit** (target leader). Each replica of a frozen source looks at the replica of
//!   the target on its own store; where that one leads, it proposes a [`CommitMerge`]
//!   carrying the frozen source and its log from `min_index` to `commit`. Every target
//!   replica applies it only at the target epoch the source recorded; first its store's
//!   source replica is brought to `commit` (from its own log up to `min_index`, from the
//!   carried entries after), then, in the same batch, the target takes the union of the
//!   two ranges with version max(source, target) + 1 and the source replica becomes a
//!   tombstone whose data the target now owns. A replica whose source is not ready yet
//!   (installing a snapshot, or missing entries) holds its apply until it is.
//! - **Rollback** (source leader). If the target replica on the source leader's store
//!   shows an epoch newer than the one recorded, the target's log holds a change before
//!   any commit of this merge, so every such commit is refused at apply, on every
//!   replica: the merge can never happen, and the leader proposes [`RollbackMerge`],
//!   which thaws the source and bumps its version. (A local target that applied the
//!   commit would have destroyed the local source in the same batch: a source replica
//!   still here never sees its own merge as a newer target epoch.)
//!
//! A target replica that receives a snapshot covering a frozen source replica on its
//! store (the merge committed, and the target's log moved past it) destroys that source
//! in the batch that installs the snapshot's Raft state.

use crate::command::RaftCommand;
pub use crate::command::{CommitMerge, MergeEntry, PrepareMerge, RollbackMerge};
use crate::error::RaftstoreError;
use raft::prelude::{Entry, EntryType};
use scandium_types::{Region, RegionEpoch};

/// Entries a source follower may lack, at most, for the leader to prepare a merge: they
/// travel in the commit (TiKV allows 10 from the last index). At most half the log-GC
/// threshold as well, so that no follower's log is truncated past them.
pub const MERGE_MAX_LAG: u64 = 64;

/// Ticks between a frozen source replica's looks at its target (TiKV: every 2 s).
pub const MERGE_CHECK_TICKS: u64 = 5;

/// Milliseconds a commit proposed for one source is left to apply before it is proposed
/// again.
pub const COMMIT_RESEND_MS: u64 = 2_000;

/// The first byte of an entry's context marking a commit of a merge: the next eight are
/// the source's id. Apply reads it without decoding the entry, to take the source
/// replica aside before the target's entries are applied.
const COMMIT_CONTEXT: u8 = b'M';

/// A merge a Region applied as the target: kept in its Region state and carried in its
/// snapshots, so that a replica of the target, however it got its state, knows which
/// sources it has absorbed. A frozen source whose target moved on rolls back only if its
/// target's record lacks it (otherwise the merge committed, and a rollback would lose
/// writes the target took since); a source replica that slept through its merge is
/// obsolete once the target's replica here has it (TiKV's raftstore-v2 merged records).
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct AbsorbedSource {
    /// The source's id.
    #[prost(uint64, tag = "1")]
    pub source_id: u64,
    /// The index of the source's prepare.
    #[prost(uint64, tag = "2")]
    pub commit: u64,
}

/// Merges a Region records, at most (the oldest go first): a frozen source is committed
/// or rolled back within seconds, long before this many more merges into its target.
pub const MAX_ABSORBED: usize = 128;

/// `absorbed` with `source` added (and the oldest dropped past [`MAX_ABSORBED`]).
pub(crate) fn record_absorbed(absorbed: &mut Vec<AbsorbedSource>, source: AbsorbedSource) {
    absorbed.push(source);
    if absorbed.len() > MAX_ABSORBED {
        absorbed.remove(0);
    }
}

/// What a source replica records when it applies a prepare, with its Region state.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MergeState {
    /// The target, as the prepare recorded it.
    #[prost(message, optional, tag = "1")]
    pub target: Option<Region>,
    /// See [`PrepareMerge::min_index`].
    #[prost(uint64, tag = "2")]
    pub min_index: u64,
    /// The index of the prepare.
    #[prost(uint64, tag = "3")]
    pub commit: u64,
}

impl MergeState {
    /// The target's id.
    pub fn target_id(&self) -> u64 {
        self.target.as_ref().map_or(0, |t| t.id)
    }

    /// The target's epoch as recorded.
    pub fn target_epoch(&self) -> RegionEpoch {
        self.target.as_ref().map(Region::epoch).unwrap_or_default()
    }
}

/// The first byte of an entry's context marking a prepare: the next eight are its
/// `min_index`, below which no replica truncates its log until the prepare is applied
/// (the commit carries the entries after it).
const PREPARE_CONTEXT: u8 = b'P';

/// The context of a prepare entry.
pub(crate) fn prepare_context(min_index: u64) -> Vec<u8> {
    let mut context = vec![PREPARE_CONTEXT];
    context.extend_from_slice(&min_index.to_be_bytes());
    context
}

/// The `min_index` of a prepare entry, from its context alone.
pub(crate) fn prepare_min_index(entry: &Entry) -> Option<u64> {
    match entry.context.as_ref() {
        [PREPARE_CONTEXT, index @ ..] => Some(u64::from_be_bytes(index.try_into().ok()?)),
        _ => None,
    }
}

/// The context of a commit entry absorbing `source_id`.
pub(crate) fn commit_context(source_id: u64) -> Vec<u8> {
    let mut context = vec![COMMIT_CONTEXT];
    context.extend_from_slice(&source_id.to_be_bytes());
    context
}

/// The source a commit entry absorbs, from its context alone.
pub(crate) fn commit_source(entry: &Entry) -> Option<u64> {
    match entry.context.as_ref() {
        [COMMIT_CONTEXT, id @ ..] => Some(u64::from_be_bytes(id.try_into().ok()?)),
        _ => None,
    }
}

/// Whether two Regions are neighbours (one ends where the other starts).
pub fn adjacent(a: &Region, b: &Region) -> bool {
    (!a.end_key.is_empty() && a.end_key == b.start_key)
        || (!b.end_key.is_empty() && b.end_key == a.start_key)
}

/// Whether `epoch` is newer than `recorded` in either part.
pub(crate) fn moved_on(epoch: RegionEpoch, recorded: RegionEpoch) -> bool {
    epoch.version > recorded.version || epoch.conf_ver > recorded.conf_ver
}

fn stores(region: &Region) -> Vec<u64> {
    let mut stores: Vec<u64> = region.peers.iter().map(|p| p.store_id).collect();
    stores.sort_unstable();
    stores
}

/// Whether `source` may be frozen to merge into `target` as the two are now: neighbours,
/// both without learners or a membership change under way, with replicas on the same
/// stores. Checked by the leader before it proposes, and by every replica as it applies.
pub fn check_shapes(source: &Region, target: &Region) -> Result<(), String> {
    if source.id == target.id {
        return Err("a Region cannot merge into itself".into());
    }
    if !adjacent(source, target) {
        return Err(format!("regions {} and {} are not neighbours", source.id, target.id));
    }
    let voters_only =
        |r: &Region| r.peers.iter().all(|p| p.role() == scandium_types::PeerRole::Voter);
    if !voters_only(source) || !voters_only(target) {
        return Err("both Regions must have voters only (no learners, no change under way)".into());
    }
    if stores(source) != stores(target) {
        return Err(format!(
            "regions {} and {} have replicas on different stores ({:?}, {:?})",
            source.id,
            target.id,
            stores(source),
            stores(target)
        ));
    }
    Ok(())
}

/// The source Region once its prepare is applied: both parts of its epoch bumped.
pub(crate) fn apply_prepare(
    region: &Region,
    command: &RaftCommand,
    prepare: &PrepareMerge,
    index: u64,
) -> Result<(Region, MergeState), RaftstoreError> {
    if command.version != region.version || command.conf_ver != region.conf_ver {
        return Err(RaftstoreError::EpochNotMatch { current: vec![region.clone()] });
    }
    let target = prepare.target.clone().unwrap_or_default();
    check_shapes(region, &target).map_err(RaftstoreError::ChangeRefused)?;
    let mut frozen = region.clone();
    frozen.version += 1;
    frozen.conf_ver += 1;
    let state = MergeState { target: Some(target), min_index: prepare.min_index, commit: index };
    Ok((frozen, state))
}

/// The target Region once it has absorbed `source`: the union of their ranges, at a
/// version above both.
pub(crate) fn merged(target: &Region, source: &Region) -> Region {
    let mut region = target.clone();
    // (An empty end is the end of the key space, an empty start its start: a source that
    // ends at the target's start is on its left only if that end is a key.)
    if !source.end_key.is_empty() && source.end_key == target.start_key {
        region.start_key = source.start_key.clone();
    } else {
        region.end_key = source.end_key.clone();
    }
    region.version = target.version.max(source.version) + 1;
    region
}

/// Checks a commit against the target replica applying it (`target`, at the command's
/// epoch) before the source replica is looked at.
pub(crate) fn check_commit(
    target: &Region,
    command: &RaftCommand,
    commit: &CommitMerge,
) -> Result<Region, RaftstoreError> {
    if command.version != target.version || command.conf_ver != target.conf_ver {
        return Err(RaftstoreError::EpochNotMatch { current: vec![target.clone()] });
    }
    let source = commit.source.clone().unwrap_or_default();
    if !adjacent(&source, target) || source.id == target.id {
        return Err(RaftstoreError::InvalidCommand(format!(
            "region {} cannot absorb region {}: not neighbours",
            target.id, source.id
        )));
    }
    Ok(source)
}

/// The entries a source replica applied up to `applied` needs to reach the prepare at
/// `state.commit`: from its own log (`own`, for indexes it holds) or the carried ones.
/// Membership changes are among them: the prepare was proposed at the epoch they made
/// (simulator seed 1498: a crash lost a replica's apply of a promotion, and its group was
/// absorbed before anyone told it the commit again). `None` if one is missing, or is a
/// split or a merge step other than the prepare itself, which the replica must apply on
/// its own.
pub(crate) fn catch_up_entries(
    applied: u64,
    commit: &CommitMerge,
    own: impl Fn(u64) -> Option<Entry>,
) -> Option<Vec<Entry>> {
    let mut entries = Vec::new();
    for index in applied + 1..=commit.commit {
        let carried = commit.entries.iter().find(|e| e.index == index).map(|e| Entry {
            index: e.index,
            term: e.term,
            data: e.data.clone().into(),
            ..Default::default()
        });
        let entry = carried.or_else(|| own(index))?;
        if entry.get_entry_type() != EntryType::EntryNormal {
            entries.push(entry);
            continue;
        }
        if !entry.data.is_empty() {
            let command: RaftCommand = prost::Message::decode(entry.data.as_ref()).ok()?;
            let last = index == commit.commit;
            if command.is_admin() && !(last && command.prepare_merge.is_some()) {
                return None;
            }
        }
        entries.push(entry);
    }
    Some(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use scandium_types::Peer;

    fn region(id: u64, start: &[u8], end: &[u8], stores: &[u64]) -> Region {
        Region {
            id,
            start_key: start.to_vec(),
            end_key: end.to_vec(),
            conf_ver: 2,
            version: 3,
            peers: stores.iter().map(|&s| Peer::new(id * 10 + s, s)).collect(),
        }
    }

    #[test]
    fn only_neighbours_on_the_same_stores_merge() {
        let left = region(1, b"", b"m", &[1, 2, 3]);
        let right = region(2, b"m", b"", &[3, 2, 1]);
        assert!(check_shapes(&left, &right).is_ok());
        assert!(check_shapes(&right, &left).is_ok());
        assert!(check_shapes(&left, &left).is_err());
        let far = region(3, b"x", b"", &[1, 2, 3]);
        assert!(check_shapes(&left, &far).is_err());
        let elsewhere = region(2, b"m", b"", &[1, 2, 4]);
        assert!(check_shapes(&left, &elsewhere).is_err());
        let mut learner = right.clone();
        learner.peers[0] = Peer::learner(23, 3);
        assert!(check_shapes(&left, &learner).is_err());
    }

    #[test]
    fn the_union_is_newer_than_both() {
        let mut left = region(1, b"a", b"m", &[1]);
        let right = region(2, b"m", b"z", &[1]);
        left.version = 9;
        let into_right = merged(&right, &left);
        assert_eq!(
            (into_right.start_key.as_slice(), into_right.end_key.as_slice()),
            (&b"a"[..], &b"z"[..])
        );
        assert_eq!((into_right.id, into_right.version, into_right.conf_ver), (2, 10, 2));
        let into_left = merged(&left, &right);
        assert_eq!(
            (into_left.start_key.as_slice(), into_left.end_key.as_slice()),
            (&b"a"[..], &b"z"[..])
        );
        assert_eq!(into_left.version, 10);
        // The key space's two ends are both empty.
        let (first, last) = (region(1, b"", b"m", &[1]), region(2, b"m", b"", &[1]));
        for (target, source) in [(&first, &last), (&last, &first)] {
            let all = merged(target, source);
            assert!(all.start_key.is_empty() && all.end_key.is_empty(), "{all:?}");
        }
    }

    #[test]
    fn a_prepare_bumps_both_parts_of_the_epoch_and_needs_the_current_one() {
        let source = region(1, b"", b"m", &[1, 2]);
        let target = region(2, b"m", b"", &[1, 2]);
        let prepare = PrepareMerge { target: Some(target.clone()), min_index: 7 };
        let command = RaftCommand {
            region_id: 1,
            conf_ver: source.conf_ver,
            version: source.version,
            prepare_merge: Some(Box::new(prepare.clone())),
            ..Default::default()
        };
        let (frozen, state) = apply_prepare(&source, &command, &prepare, 9).expect("prepares");
        assert_eq!((frozen.version, frozen.conf_ver), (4, 3));
        assert_eq!((state.target_id(), state.min_index, state.commit), (2, 7, 9));
        let stale = apply_prepare(&frozen, &command, &prepare, 10);
        assert!(matches!(stale, Err(RaftstoreError::EpochNotMatch { .. })));
    }

    #[test]
    fn the_context_names_the_source() {
        let mut entry = Entry { context: commit_context(77).into(), ..Default::default() };
        assert_eq!(commit_source(&entry), Some(77));
        entry.context = b"other".to_vec().into();
        assert_eq!(commit_source(&entry), None);
        entry.context = prepare_context(12).into();
        assert_eq!((prepare_min_index(&entry), commit_source(&entry)), (Some(12), None));
        assert_eq!(commit_source(&Entry::default()), None);
    }

    #[test]
    fn catching_up_takes_carried_entries_and_membership_changes_and_refuses_gaps_and_splits() {
        let write = |key: &[u8]| {
            let mut batch = scandium_storage::WriteBatch::new();
            batch.put(scandium_storage::Cf::Raw, key.to_vec(), b"v".to_vec());
            prost::Message::encode_to_vec(&RaftCommand::write(&region(1, b"", b"m", &[1]), batch))
        };
        let prepare = prost::Message::encode_to_vec(&RaftCommand {
            region_id: 1,
            prepare_merge: Some(Box::default()),
            ..Default::default()
        });
        let carried = |index, data: Vec<u8>| MergeEntry { index, term: 6, data };
        let commit = CommitMerge {
            source: None,
            commit: 8,
            entries: vec![carried(7, write(b"b")), carried(8, prepare)],
        };
        let own = |index: u64| {
            (index <= 6).then(|| Entry { index, data: write(b"a").into(), ..Default::default() })
        };
        let entries = catch_up_entries(4, &commit, own).expect("every entry is at hand");
        assert_eq!(entries.iter().map(|e| e.index).collect::<Vec<_>>(), [5, 6, 7, 8]);
        // Entry 5 is neither in the log nor carried.
        assert!(catch_up_entries(4, &commit, |i| own(i).filter(|_| i != 5)).is_none());
        // A split before the prepare must be applied by the source replica itself.
        let split = prost::Message::encode_to_vec(&RaftCommand::split(
            &region(1, b"", b"m", &[1]),
            vec![crate::command::SplitRequest { split_key: b"c".to_vec(), ..Default::default() }],
        ));
        let with_split = CommitMerge { entries: vec![carried(7, split)], ..commit.clone() };
        assert!(catch_up_entries(6, &with_split, own).is_none());
        // A membership change is applied on the way: the prepare was proposed at the epoch
        // it made.
        let promotion = |index: u64| Entry {
            index,
            entry_type: EntryType::EntryConfChangeV2,
            ..Default::default()
        };
        let own_with_promotion =
            |index: u64| if index == 6 { Some(promotion(6)) } else { own(index) };
        let entries = catch_up_entries(4, &commit, own_with_promotion).expect("at hand");
        assert_eq!(entries[1].get_entry_type(), EntryType::EntryConfChangeV2);
        assert!(catch_up_entries(8, &commit, own).is_some_and(|e| e.is_empty()));
    }
}
