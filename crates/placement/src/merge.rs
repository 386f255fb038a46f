//! Which small Regions merge into which neighbour (the raftstore carries merges out: see
//! `scandium_raftstore::merge`).
//!
//! A Region is a candidate, as PD's merge checker has it, when it is small (no larger
//! than [`MergeConfig::max_size`] and holding no more than [`MergeConfig::max_keys`]
//! records, as its leader last reported), not hot, healthy (a leader, no lagging peer,
//! voters only, as many as placement wants), and its shape has stood for
//! [`MergeConfig::split_merge_interval_ms`] (a Region split a moment ago, by size or by
//! hand, is not merged back at once; a merge's target does not wait again, so a run of
//! small Regions merges pair by pair). Its neighbour qualifies by the same rules; of the
//! two neighbours, the one with replicas on more of its stores goes first (fewer moves;
//! and once a replica moved towards one, that one stays the choice), then the smaller,
//! then the next one. If the neighbour so chosen has an operator of its own (or is
//! another's target), the Region waits for it rather than turn to the other, unless the
//! other is on as many of its stores: a source that turned each time its choice was busy
//! would move its replicas one way and back. The union is then below twice the limit,
//! under the split size with the defaults, so it is not split again.
//!
//! Never across a keyspace's edge (`scandium_types::keyspace::is_keyspace_edge`): the
//! Rust client's scans end only at a Region boundary there.
//!
//! Both must have replicas on the same stores: otherwise the source's replicas move to the
//! target's stores first, one move at a time (a balancing move), and the merge follows
//! at a later heartbeat.

pub use crate::scheduler::MergeConfig;
use crate::scheduler::{RegionLoad, SchedulerConfig};
use crate::PlacementState;
use scandium_types::{Peer, PeerRole, Region, RegionId, StoreId};
use std::collections::BTreeMap;

/// What the scheduler wants of a small Region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MergeDecision {
    /// Merge it into this neighbour, whose replicas are on the same stores.
    Merge(Region),
    /// First move this replica of it to this store, where the neighbour has one.
    Colocate {
        /// The replica that moves.
        from: Peer,
        /// Where it goes.
        to: StoreId,
        /// The neighbour it is to merge into.
        target: RegionId,
    },
}

/// What the control plane knows that the merge checker asks about.
pub struct MergeView<'a> {
    /// Placement's record.
    pub state: &'a PlacementState,
    /// How it schedules.
    pub config: &'a SchedulerConfig,
    /// Each Region's size and traffic, smoothed, as last reported.
    pub loads: &'a BTreeMap<RegionId, RegionLoad>,
    /// Whether a Region has an operator, or is the target of another Region's merge.
    pub busy: &'a dyn Fn(RegionId) -> bool,
    /// Whether a Region's shape has stood for the interval.
    pub settled: &'a dyn Fn(RegionId) -> bool,
    /// Whether a store is up.
    pub up: &'a dyn Fn(StoreId) -> bool,
}

impl MergeView<'_> {
    /// Whether `region` is small, cool, settled and healthy enough to take part.
    fn fits(&self, region: &Region) -> bool {
        let merge = &self.config.merge;
        let Some(load) = self.loads.get(&region.id) else { return false };
        let voters_only = region.peers.iter().all(|p| p.role() == PeerRole::Voter);
        load.approximate_size <= merge.max_size
            && load.approximate_keys <= merge.max_keys
            && load.bytes_per_sec() < self.config.hot_region_bytes_per_sec
            && voters_only
            && region.peers.len() as u64 == self.state.replicas()
            && region.peers.iter().all(|p| (self.up)(p.store_id))
            && (self.settled)(region.id)
    }
}

fn stores(region: &Region) -> Vec<StoreId> {
    let mut stores: Vec<StoreId> = region.peers.iter().map(|p| p.store_id).collect();
    stores.sort_unstable();
    stores
}

/// What `region` (led by `leader`, with `pending` peers behind) should do about merging,
/// if anything.
pub fn merge_decision(
    view: &MergeView,
    region: &Region,
    leader: u64,
    pending: &[u64],
) -> Option<MergeDecision> {
    let merge = &view.config.merge;
    if merge.max_size == 0 || merge.paused || leader == 0 || !pending.is_empty() {
        return None;
    }
    if (view.busy)(region.id) || !view.fits(region) {
        return None;
    }
    let next =
        (!region.end_key.is_empty()).then(|| view.state.region_by_key(&region.end_key)).flatten();
    let prev = view.state.prev_region(&region.start_key);
    let candidate = |target: &&Region| {
        let boundary =
            if target.start_key == region.end_key { &target.start_key } else { &region.start_key };
        target.id != region.id
            && !scandium_types::keyspace::is_keyspace_edge(boundary)
            && view.state.leader_of(target.id).is_some()
            && target.peers.len() == region.peers.len()
            && view.fits(target)
    };
    let mine = stores(region);
    let shared = |r: &Region| r.peers.iter().filter(|p| mine.contains(&p.store_id)).count();
    let size = |r: &Region| view.loads.get(&r.id).map_or(u64::MAX, |l| l.approximate_size);
    // Next before previous on a tie: `min_by_key` keeps the first of equals.
    let neighbours: Vec<&Region> = [next, prev].into_iter().flatten().filter(candidate).collect();
    let most_shared = neighbours.iter().map(|r| shared(r)).max()?;
    let target = (neighbours.into_iter())
        .filter(|r| shared(r) == most_shared && !(view.busy)(r.id))
        .min_by_key(|r| size(r))?;
    let theirs = stores(target);
    if mine == theirs {
        return Some(MergeDecision::Merge(target.clone()));
    }
    // Moved one at a time: a replica of the source on a store the target is not on (not
    // the leader's, if there is another), to one of the target's stores it lacks.
    let to = theirs.iter().find(|s| !mine.contains(s) && (view.up)(**s))?;
    let strays = region.peers.iter().filter(|p| !theirs.contains(&p.store_id));
    let mut strays: Vec<&Peer> = strays.collect();
    strays.sort_by_key(|p| p.id == leader);
    let from = strays.first()?;
    Some(MergeDecision::Colocate { from: (*from).clone(), to: *to, target: target.id })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Kind;
    use scandium_types::Store;

    fn state(regions: &[Region]) -> PlacementState {
        let store = |id| Store { id, address: format!("s{id}"), ..Default::default() };
        let (mut state, _) = PlacementState::bootstrap(1, 100, store(1), regions.to_vec(), vec![]);
        let apply = |state: &mut PlacementState, kind| {
            let command = prost::Message::encode_to_vec(&crate::Command::new(kind));
            state.apply(&command, &mut scandium_storage::WriteBatch::new());
        };
        for id in 2..=4 {
            apply(&mut state, Kind::PutStore(store(id)));
        }
        let reports = regions.iter().map(|r| crate::RegionReport {
            region: Some(r.clone()),
            leader_peer_id: r.peers[0].id,
            term: 1,
        });
        apply(&mut state, Kind::ReportRegions(crate::Reports { reports: reports.collect() }));
        apply(&mut state, Kind::SetReplicas(3));
        state
    }

    fn region(id: u64, start: &[u8], end: &[u8], stores: [u64; 3]) -> Region {
        Region {
            id,
            start_key: start.to_vec(),
            end_key: end.to_vec(),
            conf_ver: 1,
            version: 1,
            peers: stores.iter().map(|&s| Peer::new(id * 10 + s, s)).collect(),
        }
    }

    fn load(size: u64) -> RegionLoad {
        RegionLoad { approximate_size: size, approximate_keys: size / 100, ..Default::default() }
    }

    fn decide(
        regions: &[Region],
        sizes: &[(u64, u64)],
        busy: &[u64],
        source: &Region,
    ) -> Option<MergeDecision> {
        let state = state(regions);
        let config = SchedulerConfig::default();
        let loads = sizes.iter().map(|&(id, size)| (id, load(size))).collect();
        let view = MergeView {
            state: &state,
            config: &config,
            loads: &loads,
            busy: &|id| busy.contains(&id),
            settled: &|_| true,
            up: &|_| true,
        };
        merge_decision(&view, source, source.peers[0].id, &[])
    }

    /// Regions 1, 2 and 3 in a row, the first two on stores 1, 2 and 3, the last on
    /// `last`.
    fn three(last: [u64; 3]) -> [Region; 3] {
        [
            region(1, b"", b"g", [1, 2, 3]),
            region(2, b"g", b"p", [1, 2, 3]),
            region(3, b"p", b"", last),
        ]
    }

    #[test]
    fn a_small_region_merges_into_its_smaller_small_neighbour() {
        let all = three([1, 2, 3]);
        let [a, b, c] = all.clone();
        let small = [(1, 2 << 20), (2, 1 << 20), (3, 1 << 20)];
        assert_eq!(decide(&all, &small, &[], &b), Some(MergeDecision::Merge(c.clone())));
        let smaller_before = [(1, 1 << 10), (2, 1 << 20), (3, 1 << 20)];
        assert_eq!(decide(&all, &smaller_before, &[], &b), Some(MergeDecision::Merge(a.clone())));
        // A big neighbour, a busy one, or a big source: no merge there.
        let big_next = [(1, 1 << 20), (2, 1 << 20), (3, 1 << 30)];
        assert_eq!(decide(&all, &big_next, &[], &b), Some(MergeDecision::Merge(a.clone())));
        assert_eq!(decide(&all, &small, &[1, 3], &b), None);
        assert_eq!(decide(&all, &[(1, 1 << 20), (2, 1 << 30), (3, 1 << 20)], &[], &b), None);
        // Unknown figures: no merge.
        assert_eq!(decide(&all, &[(2, 1 << 20)], &[], &b), None);
    }

    #[test]
    fn no_merge_across_a_keyspace_edge() {
        let a = region(1, b"", b"r\0\0\0", [1, 2, 3]);
        let b = region(2, b"r\0\0\0", b"r\0\0\x01", [1, 2, 3]);
        let c = region(3, b"r\0\0\x01", b"", [1, 2, 3]);
        let all = [a.clone(), b.clone(), c.clone()];
        let small = [(1, 1 << 20), (2, 1 << 20), (3, 1 << 20)];
        for source in [&a, &b, &c] {
            assert_eq!(decide(&all, &small, &[], source), None, "{}", source.id);
        }
    }

    /// Of two small neighbours, the one already on the source's stores is chosen over a
    /// smaller one elsewhere, and waited for while it is busy (turning to the other would
    /// move a replica that would later move back).
    #[test]
    fn the_neighbour_on_more_of_its_stores_is_chosen_and_waited_for() {
        let all = three([1, 2, 4]);
        let [a, b, _] = all.clone();
        let sizes = [(1, 2 << 20), (2, 1 << 20), (3, 1 << 10)];
        assert_eq!(decide(&all, &sizes, &[], &b), Some(MergeDecision::Merge(a.clone())));
        assert_eq!(decide(&all, &sizes, &[1], &b), None, "waits for its neighbour");
        // The other neighbour on as many of its stores: no reason to wait.
        let all = three([1, 2, 3]);
        let c = all[2].clone();
        assert_eq!(decide(&all, &sizes, &[1], &b), Some(MergeDecision::Merge(c.clone())));
    }

    #[test]
    fn replicas_on_other_stores_move_first() {
        let a = region(1, b"", b"g", [1, 2, 3]);
        let b = region(2, b"g", b"", [1, 2, 4]);
        let sizes = [(1, 1 << 20), (2, 1 << 20)];
        let decision = decide(&[a.clone(), b.clone()], &sizes, &[], &a);
        let colocate = MergeDecision::Colocate { from: a.peers[2].clone(), to: 4, target: 2 };
        assert_eq!(decision, Some(colocate));
    }
}
