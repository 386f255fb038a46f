//! The replica scheduler: what a Region's membership should change next, decided from the
//! placement state, the stores' liveness and what the Region's leader reports.
//!
//! Pure and deterministic: the placement leader calls [`decide`] for every Region a
//! heartbeat reports and hands the answer back to the Region's leader, which carries it
//! out as a Raft membership change. One step at a time, each safe on its own:
//!
//! 1. promote learners that have caught up while the Region has fewer voters than it
//!    should (several at once enter a joint configuration);
//! 2. add a learner on the best store while voters and learners together are too few;
//! 3. once enough healthy voters exist, remove replicas on stores that are down, draining
//!    (`Offline`) or retired, moving leadership away first if the leader is one of them;
//! 4. remove surplus voters, and (data Regions) learners nobody needs.
//!
//! When a Region needs none of these, [`rebalance`] evens out the stores: its replica on a
//! store holding more than others moves to the emptiest, or its leadership to the voter
//! whose store leads the fewest Regions (the placement leader limits how many such moves
//! run at once).
//!
//! Data Regions want `replicas` voters (fewer while the cluster has fewer stores). The
//! placement group wants 3 voters once the cluster has 3 stores (5 at 5 with
//! `meta_voters = 5`), 1 before, and a learner on every other store, so that every node
//! holds the placement state. Only stores leaving the cluster (drained or retired) lower
//! these counts: a Down store's replicas are replaced where a new one can go, never
//! removed without a replacement (as PD does).

use crate::operator::{Operator, OperatorKind};
use crate::state::PlacementState;
use scandium_types::{Peer, PeerId, PeerRole, Region, RegionId, Store, StoreId, StoreState};
use std::collections::{BTreeMap, BTreeSet};

/// How stores' heartbeats are judged, and how many replicas are wanted.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Voters of the placement group once enough stores are up (3 or 5).
    pub meta_voters: usize,
    /// A store not heard from for this long is disconnected: nothing new goes there.
    pub disconnect_ms: u64,
    /// A store not heard from for this long is down: its replicas are replaced.
    pub down_ms: u64,
    /// Balancing moves (of a replica or a leader) under way at once at most; 0 turns
    /// balancing off.
    pub balance_limit: usize,
    /// The isolation levels, outermost first (`zone`, `host`): the store labels a
    /// Region's replicas are spread over, distinct zones first, then distinct hosts.
    pub location_labels: Vec<String>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            meta_voters: 3,
            disconnect_ms: 5_000,
            down_ms: 30 * 60_000,
            balance_limit: 4,
            location_labels: Vec::new(),
        }
    }
}

/// A store's values of the isolation levels, outermost first.
pub type Location = Vec<String>;

fn location(store: &Store, config: &SchedulerConfig) -> Location {
    config.location_labels.iter().map(|key| store.label(key).to_string()).collect()
}

/// How much `location` shares with `others`, level by level: at each depth, how many of
/// them have the same values down to it. Compared as a whole, lower is better isolated
/// (a distinct zone beats a distinct host in a shared zone).
fn overlap(location: &Location, others: &[&Location]) -> Vec<usize> {
    (1..=location.len())
        .map(|depth| others.iter().filter(|o| o[..depth] == location[..depth]).count())
        .collect()
}

/// When each store was last heard from (the placement leader's clock), and the time now.
#[derive(Clone, Debug, Default)]
pub struct Liveness {
    /// Last heartbeat per store, in milliseconds.
    pub last_heartbeat_ms: BTreeMap<StoreId, u64>,
    /// Now, in the same clock.
    pub now_ms: u64,
}

/// What a store is, for placing replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreStatus {
    /// Heartbeating and accepting replicas.
    Up,
    /// Not heard from lately (or never, by this leader): left alone.
    Disconnected,
    /// Not heard from for `down_ms`: its replicas are replaced.
    Down,
    /// Being drained (`scandium ctl store remove`).
    Offline,
    /// Retired.
    Tombstone,
}

impl StoreStatus {
    /// kvproto-style name, as the PD HTTP API shows it.
    pub fn name(self) -> &'static str {
        match self {
            StoreStatus::Up => "Up",
            StoreStatus::Disconnected => "Disconnected",
            StoreStatus::Down => "Down",
            StoreStatus::Offline => "Offline",
            StoreStatus::Tombstone => "Tombstone",
        }
    }
}

/// The status of `store` given its heartbeats.
pub fn store_status(store: &Store, live: &Liveness, config: &SchedulerConfig) -> StoreStatus {
    match store.state() {
        StoreState::Tombstone => return StoreStatus::Tombstone,
        StoreState::Offline => return StoreStatus::Offline,
        StoreState::Up => {}
    }
    match live.last_heartbeat_ms.get(&store.id) {
        Some(&at) if live.now_ms.saturating_sub(at) <= config.disconnect_ms => StoreStatus::Up,
        Some(&at) if live.now_ms.saturating_sub(at) > config.down_ms => StoreStatus::Down,
        _ => StoreStatus::Disconnected,
    }
}

/// What a Region's leader reports about its replication.
#[derive(Clone, Debug, Default)]
pub struct RegionHealth {
    /// The leader's peer id.
    pub leader: PeerId,
    /// Peers that are behind (learners not caught up, lagging voters).
    pub pending: Vec<PeerId>,
}

/// One step of a Region's membership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Add a learner on this store (the caller allocates its peer id).
    AddLearner(StoreId),
    /// Make these learners voters.
    Promote(Vec<Peer>),
    /// Remove this replica.
    Remove(Peer),
    /// Hand leadership to this voter first.
    TransferLeader(Peer),
    /// Balance: move this replica to the store (add a learner there, promote it, remove
    /// this one).
    MoveReplica {
        /// The replica that goes.
        from: Peer,
        /// Where it goes.
        to: StoreId,
    },
    /// Balance: hand leadership to this voter.
    MoveLeader(Peer),
}

/// The next step for `region`, if any. `is_meta` selects the placement group's rules.
pub fn decide(
    state: &PlacementState,
    live: &Liveness,
    config: &SchedulerConfig,
    region: &Region,
    health: &RegionHealth,
    is_meta: bool,
) -> Option<Decision> {
    if region
        .peers
        .iter()
        .any(|p| matches!(p.role(), PeerRole::IncomingVoter | PeerRole::DemotingVoter))
    {
        return None; // a joint change is in progress; its leader leaves it by itself
    }
    let status = |store: StoreId| {
        state.store(store).map_or(StoreStatus::Tombstone, |s| store_status(s, live, config))
    };
    let bad_store = |store: StoreId| {
        matches!(status(store), StoreStatus::Down | StoreStatus::Offline | StoreStatus::Tombstone)
    };
    let bad = |p: &Peer| bad_store(p.store_id);
    // New replicas go only to stores heard from lately; but only stores leaving the
    // cluster (drained or retired) lower the number of voters wanted. A Down store may come
    // back: its replicas are replaced where a new one can go, and kept otherwise, since
    // removing them would leave fewer voters to lose (a 3-voter Region cut to 2 by one Down
    // store dies with the next store for good; with the Down voter kept, it comes back
    // when that store does).
    let usable: Vec<&Store> = state.stores().filter(|s| status(s.id) == StoreStatus::Up).collect();
    let staying = state
        .stores()
        .filter(|s| !matches!(status(s.id), StoreStatus::Offline | StoreStatus::Tombstone))
        .count();
    let target = if is_meta {
        match staying {
            n if n >= 5 && config.meta_voters >= 5 => 5,
            n if n >= 3 => 3,
            _ => 1,
        }
    } else {
        (state.replicas() as usize).min(staying).max(1)
    };
    let good_voters: Vec<&Peer> = region.voters().filter(|p| !bad(p)).collect();
    let good_learners: Vec<&Peer> =
        region.peers.iter().filter(|p| p.is_learner() && !bad(p)).collect();
    let caught_up: Vec<&Peer> = good_learners
        .iter()
        .copied()
        .filter(|p| !health.pending.contains(&p.id) && status(p.store_id) == StoreStatus::Up)
        .collect();

    // 1. Promote learners that have caught up.
    if good_voters.len() < target && !caught_up.is_empty() {
        let wanted = target - good_voters.len();
        let promoted = caught_up.iter().take(wanted).map(|p| Peer::new(p.id, p.store_id)).collect();
        return Some(Decision::Promote(promoted));
    }
    // 2. Add a learner where one is missing.
    let placed = good_voters.len() + good_learners.len();
    let meta_missing = is_meta && usable.iter().any(|s| region.peer_on_store(s.id).is_none());
    if placed < target || meta_missing {
        let placed: Vec<StoreId> =
            good_voters.iter().chain(&good_learners).map(|p| p.store_id).collect();
        if let Some(store) = pick_store(state, config, &usable, region, &placed) {
            return Some(Decision::AddLearner(store));
        }
    }
    // 3. Remove replicas on bad stores once the healthy voters suffice.
    if let Some(victim) = region.peers.iter().find(|p| bad(p)) {
        if victim.is_learner() || good_voters.len() >= target {
            return remove_or_move_leader(region, health, victim, |p| {
                status(p.store_id) == StoreStatus::Up
            });
        }
    }
    // 4. Surplus voters; learners of data Regions that nobody will promote.
    if good_voters.len() > target {
        // The one whose location the others share most goes; then the fullest store's.
        let located = |p: &Peer| state.store(p.store_id).map(|s| location(s, config));
        let victim = good_voters.iter().filter(|p| p.id != health.leader).max_by_key(|p| {
            let mine = located(p).unwrap_or_default();
            let others: Vec<Location> =
                good_voters.iter().filter(|o| o.id != p.id).filter_map(|o| located(o)).collect();
            let others: Vec<&Location> = others.iter().collect();
            (overlap(&mine, &others), replica_count(state, p.store_id), p.store_id)
        })?;
        return Some(Decision::Remove((*victim).clone()));
    }
    if !is_meta && good_voters.len() >= target {
        if let Some(extra) = good_learners.first() {
            return Some(Decision::Remove((*extra).clone()));
        }
    }
    None
}

/// How many replicas and leaders each store that can take more holds, for balancing;
/// counted once per batch of heartbeats (one pass over the Regions), and kept up to date
/// as the batch starts moves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Balance {
    /// Replicas per `Up` store.
    pub replicas: BTreeMap<StoreId, usize>,
    /// Leaders per `Up` store.
    pub leaders: BTreeMap<StoreId, usize>,
    /// Where each store is, at the isolation levels (every store's; empty without
    /// `location_labels`).
    pub locations: BTreeMap<StoreId, Location>,
}

/// Replica counts further apart than this are evened out: a move takes one from the
/// fuller store and gives one to the emptier, so with a gap of 2 or more it never makes
/// the pair uneven the other way, and the stores never trade a replica back and forth.
pub const BALANCE_GAP: usize = 2;

impl Balance {
    /// The counts of the stores that are `Up` now, with every balancing move in `running`
    /// counted as done: a move started by an earlier batch of heartbeats has not reached
    /// the recorded state yet, and counted as not done it would make every batch start
    /// the same move again (the simulator saw batches from different stores overshoot
    /// together, then move the replicas back, for as long as it ran).
    pub fn of<'a>(
        state: &PlacementState,
        live: &Liveness,
        config: &SchedulerConfig,
        running: impl IntoIterator<Item = &'a Operator>,
    ) -> Balance {
        let up: Vec<StoreId> = state
            .stores()
            .filter(|s| store_status(s, live, config) == StoreStatus::Up)
            .map(|s| s.id)
            .collect();
        let mut balance = Balance {
            replicas: up.iter().map(|&s| (s, 0)).collect(),
            leaders: up.iter().map(|&s| (s, 0)).collect(),
            locations: state.stores().map(|s| (s.id, location(s, config))).collect(),
        };
        let moves: BTreeMap<RegionId, &OperatorKind> =
            running.into_iter().map(|o| (o.region_id(), o.kind())).collect();
        for region in state.regions() {
            let mut stores: BTreeSet<StoreId> = region.peers.iter().map(|p| p.store_id).collect();
            let mut leader = state.leader_of(region.id).map(|p| p.store_id);
            match moves.get(&region.id) {
                Some(OperatorKind::MoveReplica { from, to }) => {
                    stores.remove(&from.store_id);
                    stores.insert(*to);
                }
                Some(OperatorKind::TransferLeader(to)) => leader = Some(to.store_id),
                _ => {}
            }
            for store in stores {
                if let Some(count) = balance.replicas.get_mut(&store) {
                    *count += 1;
                }
            }
            if let Some(count) = leader.and_then(|l| balance.leaders.get_mut(&l)) {
                *count += 1;
            }
        }
        balance
    }

    /// Counts a decision taken: a replica or a leader moves.
    pub fn record(&mut self, decision: &Decision, leader_store: StoreId) {
        let shift = |counts: &mut BTreeMap<StoreId, usize>, from: StoreId, to: StoreId| {
            if let Some(count) = counts.get_mut(&from) {
                *count = count.saturating_sub(1);
            }
            if let Some(count) = counts.get_mut(&to) {
                *count += 1;
            }
        };
        match decision {
            Decision::MoveReplica { from, to } => shift(&mut self.replicas, from.store_id, *to),
            Decision::MoveLeader(to) => shift(&mut self.leaders, leader_store, to.store_id),
            _ => {}
        }
    }
}

/// Which kinds of balancing moves may be made (`scandium ctl scheduler` pauses each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allowed {
    /// Replica moves.
    pub replicas: bool,
    /// Leader moves.
    pub leaders: bool,
}

impl Allowed {
    /// Every kind.
    pub const ALL: Allowed = Allowed { replicas: true, leaders: true };
}

/// The move that evens out replicas or leaders, if `region` may take part: a healthy data
/// Region (every peer on an `Up` store, none lagging, no learner, not changing).
///
/// 1. Replicas: its replica on the fullest of its stores goes to the emptiest `Up` store
///    without one, if they are at least [`BALANCE_GAP`] apart.
/// 2. Leaders: leadership goes to the voter whose store leads the fewest Regions, if at
///    least [`BALANCE_GAP`] fewer than the leader's store.
pub fn rebalance(
    region: &Region,
    health: &RegionHealth,
    balance: &Balance,
    allowed: Allowed,
) -> Option<Decision> {
    let healthy = health.pending.is_empty()
        && region
            .peers
            .iter()
            .all(|p| p.role() == PeerRole::Voter && balance.replicas.contains_key(&p.store_id));
    let leader = region.peer(health.leader)?;
    if !healthy {
        return None;
    }
    let count = |store: StoreId| balance.replicas.get(&store).copied().unwrap_or(0);
    let nowhere = Location::new();
    let located = |store: StoreId| balance.locations.get(&store).unwrap_or(&nowhere);
    // How `store` would overlap the Region's other replicas if it took `from`'s place.
    let overlap_without = |from: &Peer, store: StoreId| {
        let others: Vec<&Location> =
            region.peers.iter().filter(|p| p.id != from.id).map(|p| located(p.store_id)).collect();
        overlap(located(store), &others)
    };
    let free = || balance.replicas.keys().copied().filter(|&s| region.peer_on_store(s).is_none());
    let movable: &[Peer] = if allowed.replicas { &region.peers } else { &[] };
    // 1. Isolation: a replica sharing a location with another goes to a store that
    //    shares less, whatever the counts (the cluster gained a zone or a host).
    for from in movable {
        let now = overlap_without(from, from.store_id);
        if now.iter().all(|&n| n == 0) {
            continue;
        }
        let better = free()
            .map(|s| (overlap_without(from, s), count(s), s))
            .filter(|(o, _, _)| *o < now)
            .min();
        if let Some((_, _, to)) = better {
            return Some(Decision::MoveReplica { from: from.clone(), to });
        }
    }
    // 2. Counts: the replica on the fullest of its stores that can go anywhere as well
    //    isolated from the others goes to the emptiest such store.
    let mut by_count: Vec<&Peer> = movable.iter().collect();
    by_count.sort_by_key(|p| std::cmp::Reverse((count(p.store_id), p.store_id)));
    for from in by_count {
        let here = overlap_without(from, from.store_id);
        let emptiest =
            free().filter(|&s| overlap_without(from, s) <= here).min_by_key(|&s| (count(s), s));
        if let Some(to) = emptiest {
            if count(from.store_id) >= count(to) + BALANCE_GAP {
                return Some(Decision::MoveReplica { from: from.clone(), to });
            }
        }
    }
    if !allowed.leaders {
        return None;
    }
    let leaders = |store: StoreId| balance.leaders.get(&store).copied().unwrap_or(0);
    let successor = region
        .voters()
        .filter(|p| p.id != leader.id)
        .min_by_key(|p| (leaders(p.store_id), p.store_id))?;
    (leaders(leader.store_id) >= leaders(successor.store_id) + BALANCE_GAP)
        .then(|| Decision::MoveLeader(successor.clone()))
}

/// Removes `victim`, or, if it leads, first hands leadership to another voter (a leader
/// cannot remove itself): a caught-up one if any; raft-rs brings a lagging one up to date
/// before it hands over.
fn remove_or_move_leader(
    region: &Region,
    health: &RegionHealth,
    victim: &Peer,
    usable: impl Fn(&Peer) -> bool,
) -> Option<Decision> {
    if victim.id != health.leader {
        return Some(Decision::Remove(victim.clone()));
    }
    let others: Vec<&Peer> = region.voters().filter(|p| p.id != victim.id && usable(p)).collect();
    others
        .iter()
        .find(|p| !health.pending.contains(&p.id))
        .or(others.first())
        .map(|p| Decision::TransferLeader((*p).clone()))
}

/// The usable store without a replica of `region` holding the fewest replicas (lowest id
/// on ties).
/// Where a new replica of `region` goes: the usable store without one that is best
/// isolated from the stores in `placed` (the Region's healthy replicas), then the one
/// holding the fewest replicas.
fn pick_store(
    state: &PlacementState,
    config: &SchedulerConfig,
    usable: &[&Store],
    region: &Region,
    placed: &[StoreId],
) -> Option<StoreId> {
    let others: Vec<Location> =
        placed.iter().filter_map(|&id| state.store(id)).map(|s| location(s, config)).collect();
    let others: Vec<&Location> = others.iter().collect();
    usable
        .iter()
        .filter(|s| region.peer_on_store(s.id).is_none())
        .min_by_key(|s| (overlap(&location(s, config), &others), replica_count(state, s.id), s.id))
        .map(|s| s.id)
}

fn replica_count(state: &PlacementState, store: StoreId) -> usize {
    state.regions().filter(|r| r.peer_on_store(store).is_some()).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, Kind};
    use crate::state::KeyspaceMeta;
    use scandium_storage::WriteBatch;

    fn store(id: u64) -> Store {
        Store { id, address: format!("127.0.0.1:{id}"), ..Default::default() }
    }

    fn cluster(stores: u64, region: Region) -> PlacementState {
        let (mut state, _) = PlacementState::bootstrap(
            1,
            100,
            store(1),
            vec![region],
            vec![KeyspaceMeta { id: 0, name: "DEFAULT".into(), state: 0, created_at: 0 }],
        );
        for id in 2..=stores {
            let command = prost::Message::encode_to_vec(&Command::new(Kind::PutStore(store(id))));
            state.apply(&command, &mut WriteBatch::new());
        }
        state
    }

    fn alive(stores: &[u64]) -> Liveness {
        Liveness {
            last_heartbeat_ms: stores.iter().map(|&s| (s, 1_000_000)).collect(),
            now_ms: 1_000_000,
        }
    }

    fn region(peers: Vec<Peer>) -> Region {
        Region { id: 10, peers, ..Default::default() }
    }

    fn run(
        state: &PlacementState,
        live: &Liveness,
        r: &Region,
        pending: &[u64],
    ) -> Option<Decision> {
        let health = RegionHealth { leader: r.peers[0].id, pending: pending.to_vec() };
        decide(state, live, &SchedulerConfig::default(), r, &health, false)
    }

    #[test]
    fn one_replica_grows_to_three_through_learners() {
        let r = region(vec![Peer::new(1, 1)]);
        let state = cluster(3, r.clone());
        let live = alive(&[1, 2, 3]);
        assert_eq!(run(&state, &live, &r, &[]), Some(Decision::AddLearner(2)));
        let r2 = region(vec![Peer::new(1, 1), Peer::learner(2, 2)]);
        // The learner is not caught up yet: a second one is added meanwhile.
        assert_eq!(run(&state, &live, &r2, &[2]), Some(Decision::AddLearner(3)));
        let r3 = region(vec![Peer::new(1, 1), Peer::learner(2, 2), Peer::learner(3, 3)]);
        assert_eq!(run(&state, &live, &r3, &[3]), Some(Decision::Promote(vec![Peer::new(2, 2)])));
        assert_eq!(
            run(&state, &live, &r3, &[]),
            Some(Decision::Promote(vec![Peer::new(2, 2), Peer::new(3, 3)])),
            "both at once: a joint change"
        );
        let full = region(vec![Peer::new(1, 1), Peer::new(2, 2), Peer::new(3, 3)]);
        assert_eq!(run(&state, &live, &full, &[]), None);
    }

    #[test]
    fn fewer_stores_mean_fewer_voters() {
        let r = region(vec![Peer::new(1, 1)]);
        let state = cluster(1, r.clone());
        assert_eq!(run(&state, &alive(&[1]), &r, &[]), None);
        let state = cluster(2, r.clone());
        assert_eq!(run(&state, &alive(&[1, 2]), &r, &[]), Some(Decision::AddLearner(2)));
        // A store that never heartbeat gets nothing.
        assert_eq!(run(&state, &alive(&[1]), &r, &[]), None);
    }

    #[test]
    fn a_store_that_missed_heartbeats_costs_no_voter() {
        let full = region(vec![Peer::new(1, 1), Peer::new(2, 2), Peer::new(3, 3)]);
        let state = cluster(3, full.clone());
        // Store 3 is disconnected (not down): nothing changes.
        assert_eq!(run(&state, &alive(&[1, 2]), &full, &[]), None);
        assert_eq!(
            run(&state, &Liveness::default(), &full, &[]),
            None,
            "a new leader knows nobody"
        );
    }

    #[test]
    fn a_down_store_costs_no_voter_without_a_replacement() {
        // Found by the simulator (seed 637): a Region cut to two voters by one Down store
        // died with the next store lost for good, though the Down one came back.
        let config = SchedulerConfig { down_ms: 10_000, ..Default::default() };
        let now = 1_000_000;
        let heard = |stores: &[u64]| Liveness {
            last_heartbeat_ms: [(1, now), (2, now), (3, now - 20_000), (4, now - 20_000)]
                .into_iter()
                .filter(|(s, _)| stores.contains(s))
                .collect(),
            now_ms: now,
        };
        let full = region(vec![Peer::new(1, 1), Peer::new(2, 2), Peer::new(3, 3)]);
        let health = RegionHealth { leader: 1, pending: vec![] };
        // Three stores, store 3 Down: nowhere to put a replacement, so nothing changes.
        let state = cluster(3, full.clone());
        let live = heard(&[1, 2, 3]);
        assert_eq!(decide(&state, &live, &config, &full, &health, false), None);
        // The placement group keeps its three voters too.
        assert_eq!(decide(&state, &live, &config, &full, &health, true), None);
        // Four stores, 3 and 4 Down: still nowhere.
        let state = cluster(4, full.clone());
        let live = heard(&[1, 2, 3, 4]);
        assert_eq!(decide(&state, &live, &config, &full, &health, false), None);
        // Four stores, only 3 Down: replaced first, then removed.
        let live = heard(&[1, 2, 3]);
        let live = Liveness {
            last_heartbeat_ms: live.last_heartbeat_ms.into_iter().chain([(4, now)]).collect(),
            now_ms: now,
        };
        assert_eq!(
            decide(&state, &live, &config, &full, &health, false),
            Some(Decision::AddLearner(4))
        );
        let four = region(vec![Peer::new(1, 1), Peer::new(2, 2), Peer::new(3, 3), Peer::new(4, 4)]);
        assert_eq!(
            decide(&state, &live, &config, &four, &health, false),
            Some(Decision::Remove(Peer::new(3, 3)))
        );
    }

    #[test]
    fn replicas_of_a_drained_store_are_replaced_then_removed() {
        let full = region(vec![Peer::new(1, 1), Peer::new(2, 2), Peer::new(3, 3)]);
        let mut state = cluster(4, full.clone());
        let command = prost::Message::encode_to_vec(&Command::new(Kind::SetStoreState(
            crate::command::StoreStateChange { store_id: 3, state: StoreState::Offline as i32 },
        )));
        state.apply(&command, &mut WriteBatch::new());
        let live = alive(&[1, 2, 3, 4]);
        assert_eq!(run(&state, &live, &full, &[]), Some(Decision::AddLearner(4)));
        let with_learner =
            region(vec![Peer::new(1, 1), Peer::new(2, 2), Peer::new(3, 3), Peer::learner(4, 4)]);
        assert_eq!(
            run(&state, &live, &with_learner, &[]),
            Some(Decision::Promote(vec![Peer::new(4, 4)]))
        );
        let four = region(vec![Peer::new(1, 1), Peer::new(2, 2), Peer::new(3, 3), Peer::new(4, 4)]);
        assert_eq!(run(&state, &live, &four, &[]), Some(Decision::Remove(Peer::new(3, 3))));
        // If the drained store leads, leadership moves first.
        let led_by_3 = RegionHealth { leader: 3, pending: vec![] };
        let decision = decide(&state, &live, &SchedulerConfig::default(), &four, &led_by_3, false);
        assert_eq!(decision, Some(Decision::TransferLeader(Peer::new(1, 1))));
    }

    #[test]
    fn the_placement_group_has_three_voters_and_learners_elsewhere() {
        let meta = region(vec![Peer::new(1, 1)]);
        let state = cluster(4, meta.clone());
        let live = alive(&[1, 2, 3, 4]);
        let decide_meta = |r: &Region, pending: &[u64]| {
            let health = RegionHealth { leader: 1, pending: pending.to_vec() };
            decide(&state, &live, &SchedulerConfig::default(), r, &health, true)
        };
        assert_eq!(decide_meta(&meta, &[]), Some(Decision::AddLearner(2)));
        let all = region(vec![
            Peer::new(1, 1),
            Peer::learner(2, 2),
            Peer::learner(3, 3),
            Peer::learner(4, 4),
        ]);
        assert_eq!(
            decide_meta(&all, &[]),
            Some(Decision::Promote(vec![Peer::new(2, 2), Peer::new(3, 3)]))
        );
        let three =
            region(vec![Peer::new(1, 1), Peer::new(2, 2), Peer::new(3, 3), Peer::learner(4, 4)]);
        assert_eq!(decide_meta(&three, &[]), None, "the fourth stays a learner");
    }

    #[test]
    fn down_and_disconnected_stores() {
        let config = SchedulerConfig { down_ms: 10_000, ..Default::default() };
        let s = store(2);
        let live = |at| Liveness { last_heartbeat_ms: [(2, at)].into(), now_ms: 20_000 };
        assert_eq!(store_status(&s, &live(19_000), &config), StoreStatus::Up);
        assert_eq!(store_status(&s, &live(12_000), &config), StoreStatus::Disconnected);
        assert_eq!(store_status(&s, &live(5_000), &config), StoreStatus::Down);
        assert_eq!(store_status(&s, &Liveness::default(), &config), StoreStatus::Disconnected);
    }

    fn counts(replicas: &[(u64, usize)], leaders: &[(u64, usize)]) -> Balance {
        Balance {
            replicas: replicas.iter().copied().collect(),
            leaders: leaders.iter().copied().collect(),
            locations: BTreeMap::new(),
        }
    }

    fn led(leader: u64, pending: &[u64]) -> RegionHealth {
        RegionHealth { leader, pending: pending.to_vec() }
    }

    #[test]
    fn a_replica_moves_from_the_fullest_store_to_the_emptiest() {
        let r = region(vec![Peer::new(1, 1), Peer::new(2, 2), Peer::new(3, 3)]);
        let balance = counts(&[(1, 10), (2, 10), (3, 9), (4, 0)], &[(1, 3), (2, 3), (3, 3)]);
        let decision = rebalance(&r, &led(1, &[]), &balance, Allowed::ALL);
        let expected = Decision::MoveReplica { from: Peer::new(2, 2), to: 4 };
        assert_eq!(decision, Some(expected.clone()), "ties go to the higher store id");
        // Counted as it is decided, so the next Region of the batch sees it.
        let mut balance = balance;
        balance.record(&expected, 1);
        assert_eq!(balance.replicas[&2], 9);
        assert_eq!(balance.replicas[&4], 1);
    }

    #[test]
    fn leadership_moves_to_the_voter_leading_fewest() {
        let r = region(vec![Peer::new(1, 1), Peer::new(2, 2), Peer::new(3, 3)]);
        let balance = counts(&[(1, 5), (2, 5), (3, 5)], &[(1, 4), (2, 2), (3, 1)]);
        let decision = rebalance(&r, &led(1, &[]), &balance, Allowed::ALL);
        assert_eq!(decision, Some(Decision::MoveLeader(Peer::new(3, 3))));
        let mut balance = balance;
        balance.record(&Decision::MoveLeader(Peer::new(3, 3)), 1);
        assert_eq!((balance.leaders[&1], balance.leaders[&3]), (3, 2));
    }

    #[test]
    fn nothing_moves_within_the_gap_or_while_a_region_is_unsettled() {
        let r = region(vec![Peer::new(1, 1), Peer::new(2, 2), Peer::new(3, 3)]);
        let even = counts(&[(1, 5), (2, 5), (3, 5), (4, 4)], &[(1, 2), (2, 1), (3, 1)]);
        assert_eq!(rebalance(&r, &led(1, &[]), &even, Allowed::ALL), None, "gaps of 1 stay");
        let uneven = counts(&[(1, 5), (2, 5), (3, 5), (4, 0)], &[(1, 5), (2, 0), (3, 0)]);
        assert_eq!(rebalance(&r, &led(1, &[2]), &uneven, Allowed::ALL), None, "a peer lags");
        let with_learner =
            region(vec![Peer::new(1, 1), Peer::new(2, 2), Peer::new(3, 3), Peer::learner(4, 4)]);
        assert_eq!(rebalance(&with_learner, &led(1, &[]), &uneven, Allowed::ALL), None);
        let on_a_store_not_up = counts(&[(1, 5), (2, 5), (4, 0)], &[(1, 5), (2, 0)]);
        assert_eq!(
            rebalance(&r, &led(1, &[]), &on_a_store_not_up, Allowed::ALL),
            None,
            "store 3 is not up"
        );
    }

    fn zoned(id: u64, zone: &str, host: &str) -> Store {
        let label = |key: &str, value: &str| scandium_types::StoreLabel {
            key: key.into(),
            value: value.into(),
        };
        Store { labels: vec![label("zone", zone), label("host", host)], ..store(id) }
    }

    fn zones_config() -> SchedulerConfig {
        SchedulerConfig {
            location_labels: vec!["zone".into(), "host".into()],
            ..Default::default()
        }
    }

    /// Stores 1..=5: 1 and 2 in zone a (hosts a1, a2), 3 in b, 4 in c, 5 in a (host a1).
    fn zoned_cluster(region: Region) -> PlacementState {
        let mut state = cluster(1, region);
        let stores =
            [(1, "a", "a1"), (2, "a", "a2"), (3, "b", "b1"), (4, "c", "c1"), (5, "a", "a1")];
        for (id, zone, host) in stores {
            let command = Command::new(Kind::PutStore(zoned(id, zone, host)));
            state.apply(&prost::Message::encode_to_vec(&command), &mut WriteBatch::new());
        }
        state
    }

    #[test]
    fn a_new_replica_goes_to_another_zone_then_another_host() {
        let config = zones_config();
        let live =
            Liveness { last_heartbeat_ms: (1..=5).map(|s| (s, 1_000)).collect(), now_ms: 1_000 };
        let r = region(vec![Peer::new(1, 1), Peer::new(2, 3)]);
        let state = zoned_cluster(r.clone());
        let health = RegionHealth { leader: 1, pending: vec![] };
        // Zones a and b hold it: zone c (store 4) before anything in zone a.
        let decision = decide(&state, &live, &config, &r, &health, false);
        assert_eq!(decision, Some(Decision::AddLearner(4)));
        // Without zone c, another host of zone a (store 2) before store 1's host (5).
        let r = region(vec![Peer::new(1, 1), Peer::new(2, 3), Peer::new(3, 4)]);
        let mut state = zoned_cluster(r.clone());
        let command = Command::new(Kind::PutStore(zoned(4, "b", "b2")));
        state.apply(&prost::Message::encode_to_vec(&command), &mut WriteBatch::new());
        let unplaced = region(vec![Peer::new(1, 1), Peer::new(2, 3)]);
        let decision = decide(&state, &live, &config, &unplaced, &health, false);
        assert_eq!(decision, Some(Decision::AddLearner(2)), "host a2, not a1 again");
    }

    #[test]
    fn replicas_move_to_zones_they_are_missing_and_counts_never_undo_it() {
        let config = zones_config();
        let live =
            Liveness { last_heartbeat_ms: (1..=5).map(|s| (s, 1_000)).collect(), now_ms: 1_000 };
        // Three replicas in zones a, a, b: one of zone a goes to zone c.
        let r = region(vec![Peer::new(1, 1), Peer::new(2, 2), Peer::new(3, 3)]);
        let state = zoned_cluster(r.clone());
        let balance = Balance::of(&state, &live, &config, []);
        let decision = rebalance(&r, &led(1, &[]), &balance, Allowed::ALL);
        assert_eq!(decision, Some(Decision::MoveReplica { from: Peer::new(1, 1), to: 4 }));
        // Spread over a, b, c: however uneven the counts, a replica does not move to a
        // store sharing a zone with another of its replicas.
        let spread = region(vec![Peer::new(1, 1), Peer::new(2, 3), Peer::new(3, 4)]);
        let mut balance = Balance::of(&zoned_cluster(spread.clone()), &live, &config, []);
        balance.replicas.insert(3, 50);
        balance.replicas.insert(4, 50);
        balance.replicas.insert(1, 50);
        let decision = rebalance(&spread, &led(1, &[]), &balance, Allowed::ALL);
        assert_eq!(
            decision,
            Some(Decision::MoveReplica { from: Peer::new(1, 1), to: 2 }),
            "only within zone a, to its emptier store"
        );
    }
}
