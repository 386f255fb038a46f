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
//! store holding more than others (by weight: size, and at least [`REGION_WEIGHT_FLOOR`]
//! for each Region) moves to the lightest; a hot Region's leadership moves to the voter
//! whose store leads the least traffic; a cold one's to the voter whose store leads the
//! fewest Regions. The placement leader limits how many such moves run at once, and how
//! many each store takes part in a minute.
//!
//! Data Regions want `replicas` voters (fewer while the cluster has fewer stores). The
//! placement group wants 3 voters once the cluster has 3 stores (5 at 5 with
//! `meta_voters = 5`), 1 before, and a learner on every other store, so that every node
//! holds the placement state. Only stores leaving the cluster (drained or retired) lower
//! these counts: a Down store's replicas are replaced where a new one can go, never
//! removed without a replacement (as PD does).

use crate::command::RegionReport;
use crate::operator::{Operator, OperatorKind};
use crate::state::PlacementState;
use crate::SchedulerSettings;
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
    /// Balancing moves under way at once at most, of replicas and of leaders each; 0
    /// turns balancing off.
    pub balance_limit: usize,
    /// The isolation levels, outermost first (`zone`, `host`): the store labels a
    /// Region's replicas are spread over, distinct zones first, then distinct hosts.
    pub location_labels: Vec<String>,
    /// Replica moves each store may take part in (as source or target) in any minute;
    /// 0: no limit. Repair is not limited.
    pub store_limit_per_min: usize,
    /// Stores with a limit of their own in place of `store_limit_per_min` (0: no moves).
    pub store_limits: BTreeMap<StoreId, usize>,
    /// Bytes a second read and written past which a Region is hot: its leadership is
    /// balanced by traffic, not by count, and its replicas are not moved for counts.
    pub hot_region_bytes_per_sec: u64,
    /// How small Regions merge (see the `merge` module).
    pub merge: MergeConfig,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            meta_voters: 3,
            disconnect_ms: 5_000,
            down_ms: 30 * 60_000,
            balance_limit: 4,
            location_labels: Vec::new(),
            store_limit_per_min: 20,
            store_limits: BTreeMap::new(),
            hot_region_bytes_per_sec: 128 << 10,
            merge: MergeConfig::default(),
        }
    }
}

impl SchedulerConfig {
    /// This node's settings overridden by the cluster's (`scandium ctl scheduler`) where
    /// the cluster has one: what the placement leader schedules by, so that a change of
    /// leader changes nothing but who decides.
    pub fn under(&self, cluster: &SchedulerSettings) -> SchedulerConfig {
        let or_own = |cluster: u32, own: usize| match cluster {
            0 => own,
            cluster => cluster as usize,
        };
        SchedulerConfig {
            balance_limit: or_own(cluster.balance_limit, self.balance_limit),
            store_limit_per_min: or_own(cluster.store_limit, self.store_limit_per_min),
            store_limits: (cluster.store_limits.iter())
                .map(|l| (l.store_id, l.moves_per_minute as usize))
                .collect(),
            location_labels: match &cluster.location_labels {
                Some(labels) => labels.levels.clone(),
                None => self.location_labels.clone(),
            },
            merge: self.merge.under(cluster),
            ..self.clone()
        }
    }

    /// The replica moves `store` may take part in a minute (`None`: no limit).
    pub fn store_limit(&self, store: StoreId) -> Option<usize> {
        match self.store_limits.get(&store) {
            Some(&own) => Some(own),
            None => (self.store_limit_per_min > 0).then_some(self.store_limit_per_min),
        }
    }
}

/// How small Regions merge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergeConfig {
    /// Bytes a Region may hold, at most, to merge; 0 turns merges off.
    pub max_size: u64,
    /// User records a Region may hold, at most, to merge.
    pub max_keys: u64,
    /// How long a Region's shape must stand before it merges (milliseconds).
    pub split_merge_interval_ms: u64,
    /// Merges under way at once, at most (PD: 8).
    pub limit: usize,
    /// No merge starts (the cluster's setting).
    pub paused: bool,
}

impl Default for MergeConfig {
    fn default() -> Self {
        // Half the default split size (64 MiB) and its records: two such Regions merged
        // stay below the split size.
        MergeConfig {
            max_size: 32 << 20,
            max_keys: 320_000,
            split_merge_interval_ms: 5 * 60_000,
            limit: 8,
            paused: false,
        }
    }
}

impl MergeConfig {
    /// This node's settings overridden by the cluster's where it has one.
    pub fn under(&self, cluster: &SchedulerSettings) -> MergeConfig {
        let or_own = |cluster: u64, own: u64| if cluster == 0 { own } else { cluster };
        MergeConfig {
            max_size: or_own(cluster.merge_max_size, self.max_size),
            max_keys: or_own(cluster.merge_max_keys, self.max_keys),
            split_merge_interval_ms: or_own(
                cluster.split_merge_interval_ms,
                self.split_merge_interval_ms,
            ),
            limit: self.limit,
            paused: cluster.merges_paused,
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
    /// Those of `pending` behind for longer than a step may take: a learner among them
    /// (its store cannot install the snapshot, or cannot reach the Region's peers while it
    /// beats) is removed, and a learner is then added where the scheduler likes best.
    pub stuck: Vec<PeerId>,
}

/// One step of a Region's membership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Add a replica on this store: a learner, promoted once caught up (the caller
    /// allocates its peer id).
    AddLearner(StoreId),
    /// Add a learner on this store that stays one: the placement group's copy on a store
    /// beyond its voters.
    AddExtraLearner(StoreId),
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
    /// Merge: move this replica to the store, beside neighbour `target`'s.
    Colocate {
        /// The replica that goes.
        from: Peer,
        /// Where it goes.
        to: StoreId,
        /// The neighbour the Region will merge into.
        target: RegionId,
    },
    /// Balance: hand leadership to this voter.
    MoveLeader(Peer),
    /// Merge the Region into this neighbour (see the `merge` module).
    Merge(Region),
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
    // 2. Add a learner where one is missing; a learner stuck behind goes first, to make
    // room (kept while another was added, each replacement stuck in turn, as when the
    // leader cannot send a snapshot at all, added a learner on every store).
    if let Some(stuck) = good_learners.iter().find(|p| health.stuck.contains(&p.id)) {
        return Some(Decision::Remove((*stuck).clone()));
    }
    let placed = good_voters.len() + good_learners.len();
    let meta_missing = is_meta && usable.iter().any(|s| region.peer_on_store(s.id).is_none());
    if placed < target || meta_missing {
        let placed: Vec<StoreId> =
            good_voters.iter().chain(&good_learners).map(|p| p.store_id).collect();
        if let Some(store) = pick_store(state, config, &usable, region, &placed) {
            // Promoted, a learner the placement group does not need as a voter made one
            // voter too many, which step 4 removed, leaving a store without a copy, which
            // got a learner, promoted in turn: the group changed membership for ever
            // (found measuring 3 -> 5 nodes: 600 changes, one snapshot each, in minutes).
            return Some(match placed.len() < target {
                true => Decision::AddLearner(store),
                false => Decision::AddExtraLearner(store),
            });
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
            (overlap(&mine, &others), state.replica_count(p.store_id), p.store_id)
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

/// A Region's size and traffic as its leader last reported them (PD's approximate size
/// and keys, and bytes and keys written and read). Kept in memory by the placement leader
/// only: a new leader has them again within one heartbeat interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegionLoad {
    /// Bytes of the Region's records.
    pub approximate_size: u64,
    /// The Region's user records (raw keys, versions of transactional keys).
    pub approximate_keys: u64,
    /// Bytes written over the last `interval_ms`.
    pub written_bytes: u64,
    /// User records written over the last `interval_ms`.
    pub written_keys: u64,
    /// Bytes read over the last `interval_ms`.
    pub read_bytes: u64,
    /// Records read over the last `interval_ms`.
    pub read_keys: u64,
    /// How long the traffic figures cover, in milliseconds (0: none yet).
    pub interval_ms: u64,
}

impl RegionLoad {
    /// Bytes a second read and written (0 before the first interval).
    pub fn bytes_per_sec(&self) -> u64 {
        self.per_sec(self.read_bytes.saturating_add(self.written_bytes))
    }

    /// Bytes a second written (0 before the first interval): what every replica applies,
    /// where reads cost only the leader.
    pub fn written_bytes_per_sec(&self) -> u64 {
        self.per_sec(self.written_bytes)
    }

    /// Whether anything was read or written over the interval.
    pub fn has_traffic(&self) -> bool {
        self.written_bytes > 0 || self.written_keys > 0 || self.read_bytes > 0 || self.read_keys > 0
    }

    /// An interval measured without traffic.
    pub fn is_quiet(&self) -> bool {
        self.interval_ms > 0 && !self.has_traffic()
    }

    fn per_sec(&self, bytes: u64) -> u64 {
        match self.interval_ms {
            0 => 0,
            ms => bytes.saturating_mul(1_000) / ms,
        }
    }
}

/// The least a Region weighs in replica balance, whatever its size: an empty Region
/// still costs its store a Raft group, and Regions of unknown size (no report yet, a new
/// placement leader) weigh this much, so balancing by weight is balancing by count while
/// the Regions are small.
pub const REGION_WEIGHT_FLOOR: u64 = 1 << 20;

/// What a Region weighs in replica balance: its size, at least [`REGION_WEIGHT_FLOOR`].
pub fn region_weight(load: Option<&RegionLoad>) -> u64 {
    load.map_or(0, |l| l.approximate_size).max(REGION_WEIGHT_FLOOR)
}

/// What each store that can take more holds and leads (replicas, their weight, leaders,
/// their traffic), for balancing; counted once per batch of heartbeats (one pass over
/// the Regions), and kept up to date as the batch starts moves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Balance {
    /// Replicas per `Up` store.
    pub replicas: BTreeMap<StoreId, usize>,
    /// The weight of the replicas per `Up` store ([`region_weight`]).
    pub weights: BTreeMap<StoreId, u64>,
    /// Leaders per `Up` store.
    pub leaders: BTreeMap<StoreId, usize>,
    /// Bytes a second read and written in the Regions each `Up` store leads.
    pub traffic: BTreeMap<StoreId, u64>,
    /// Bytes a second written in the Regions each `Up` store holds a replica of.
    pub writes: BTreeMap<StoreId, u64>,
    /// Where each store is, at the isolation levels (every store's; empty without
    /// `location_labels`).
    pub locations: BTreeMap<StoreId, Location>,
    /// Traffic past which a Region is hot (`hot_region_bytes_per_sec`; 0: none is).
    pub hot_threshold: u64,
    /// Weight by which stores may differ without a replica moving between them (a
    /// twentieth of the mean store's, [`BALANCE_TOLERANCE_DIVISOR`]): without it, small
    /// Regions moved back and forth for ever to even out what the large ones leave, and
    /// what the load adds.
    pub tolerance: u64,
}

/// Stores' weights within the mean's share `1 / BALANCE_TOLERANCE_DIVISOR` of each other
/// are even enough (see [`Balance::tolerance`]).
pub const BALANCE_TOLERANCE_DIVISOR: u64 = 20;

/// Replica counts further apart than this are evened out: a move takes one from the
/// fuller store and gives one to the emptier, so with a gap of 2 or more it never makes
/// the pair uneven the other way, and the stores never trade a replica back and forth.
pub const BALANCE_GAP: usize = 2;

impl Balance {
    /// The counts of the stores that are `Up` now, with every balancing move in `running`
    /// counted as done: a move started by an earlier batch of heartbeats has not reached
    /// the recorded state yet, and counted as not done it would make every batch start
    /// the same move again (the simulator saw batches from different stores overshoot
    /// together, then move the replicas back, for as long as it ran). For the same reason
    /// a Region's latest report to this placement leader (`reported`) stands for it where
    /// it is no older than the record: a move that finished has not always reached the
    /// record either, and counted where it was, leaders of a 3 -> 5 cluster went back and
    /// forth between stores every few seconds.
    pub fn of<'a>(
        state: &PlacementState,
        live: &Liveness,
        config: &SchedulerConfig,
        running: impl IntoIterator<Item = &'a Operator>,
        loads: &BTreeMap<RegionId, RegionLoad>,
        reported: &BTreeMap<RegionId, RegionReport>,
    ) -> Balance {
        let up: Vec<StoreId> = state
            .stores()
            .filter(|s| store_status(s, live, config) == StoreStatus::Up)
            .map(|s| s.id)
            .collect();
        let mut balance = Balance {
            replicas: up.iter().map(|&s| (s, 0)).collect(),
            weights: up.iter().map(|&s| (s, 0)).collect(),
            leaders: up.iter().map(|&s| (s, 0)).collect(),
            traffic: up.iter().map(|&s| (s, 0)).collect(),
            writes: up.iter().map(|&s| (s, 0)).collect(),
            locations: state.stores().map(|s| (s.id, location(s, config))).collect(),
            hot_threshold: config.hot_region_bytes_per_sec,
            tolerance: 0,
        };
        let moves: BTreeMap<RegionId, &OperatorKind> =
            running.into_iter().map(|o| (o.region_id(), o.kind())).collect();
        for recorded in state.regions() {
            let epoch = |r: &Region| (r.version, r.conf_ver);
            let report = reported.get(&recorded.id).filter(|report| {
                report.region.as_ref().is_some_and(|r| epoch(r) >= epoch(recorded))
            });
            let (region, mut leader) = match report.and_then(|r| Some((r.region.as_ref()?, r))) {
                Some((region, report)) => {
                    (region, region.peer(report.leader_peer_id).map(|p| p.store_id))
                }
                None => (recorded, state.leader_of(recorded.id).map(|p| p.store_id)),
            };
            let mut stores: BTreeSet<StoreId> = region.peers.iter().map(|p| p.store_id).collect();
            match moves.get(&region.id) {
                Some(OperatorKind::TransferLeader(to)) => leader = Some(to.store_id),
                Some(kind) => {
                    if let Some((from, to)) = kind.moves() {
                        stores.remove(&from.store_id);
                        stores.insert(to);
                    }
                }
                None => {}
            }
            let load = loads.get(&region.id);
            let (weight, traffic) = (region_weight(load), load.map_or(0, |l| l.bytes_per_sec()));
            let written = load.map_or(0, |l| l.written_bytes_per_sec());
            for store in stores {
                add(&mut balance.replicas, store, 1);
                add(&mut balance.weights, store, weight);
                add(&mut balance.writes, store, written);
            }
            if let Some(leader) = leader {
                add(&mut balance.leaders, leader, 1);
                add(&mut balance.traffic, leader, traffic);
            }
        }
        balance.tolerance = mean_of(&balance.weights) / BALANCE_TOLERANCE_DIVISOR;
        balance
    }

    /// Counts a decision taken for a Region with `load`: a replica or a leader moves.
    pub fn record(
        &mut self,
        decision: &Decision,
        leader_store: StoreId,
        load: Option<&RegionLoad>,
    ) {
        let shift = |counts: &mut BTreeMap<StoreId, u64>, from: StoreId, to: StoreId, by: u64| {
            if let Some(count) = counts.get_mut(&from) {
                *count = count.saturating_sub(by);
            }
            add(counts, to, by);
        };
        match decision {
            Decision::MoveReplica { from, to } | Decision::Colocate { from, to, .. } => {
                let (from, to) = (from.store_id, *to);
                if let Some(count) = self.replicas.get_mut(&from) {
                    *count = count.saturating_sub(1);
                }
                add(&mut self.replicas, to, 1);
                shift(&mut self.weights, from, to, region_weight(load));
                let written = load.map_or(0, |l| l.written_bytes_per_sec());
                shift(&mut self.writes, from, to, written);
            }
            Decision::MoveLeader(to) => {
                if let Some(count) = self.leaders.get_mut(&leader_store) {
                    *count = count.saturating_sub(1);
                }
                add(&mut self.leaders, to.store_id, 1);
                let traffic = load.map_or(0, |l| l.bytes_per_sec());
                shift(&mut self.traffic, leader_store, to.store_id, traffic);
            }
            _ => {}
        }
    }

    /// Whether a Region with `load` is hot.
    fn is_hot(&self, load: Option<&RegionLoad>) -> bool {
        self.hot_threshold > 0 && load.is_some_and(|l| l.bytes_per_sec() >= self.hot_threshold)
    }

    /// Whether a Region with `load` is hot by its writes alone.
    fn is_write_hot(&self, load: Option<&RegionLoad>) -> bool {
        self.hot_threshold > 0
            && load.is_some_and(|l| l.written_bytes_per_sec() >= self.hot_threshold)
    }
}

/// Stores within this share of the mean traffic (or writes), a tenth, above or below
/// it, are even enough for traffic balancing: with only a Region's traffic as the band,
/// three stores under a uniform load over 36 hot Regions moved 100 to 190 leaders a
/// minute, as each Region's measured rate swung.
pub const TRAFFIC_BAND_DIVISOR: u64 = 10;

/// The mean of the figures (0 for none).
fn mean_of(figures: &BTreeMap<StoreId, u64>) -> u64 {
    figures.values().sum::<u64>() / (figures.len() as u64).max(1)
}

/// Whether a move from a store at `from` to one at `to` is worth making for traffic: the
/// first above the mean's band and the second below it.
fn outside_band(from: u64, to: u64, mean: u64) -> bool {
    let band = mean / TRAFFIC_BAND_DIVISOR;
    from > mean.saturating_add(band) && to < mean.saturating_sub(band)
}

/// Adds `by` to `store`'s figure, if the store is counted (`Up`).
fn add<T: std::ops::AddAssign>(figures: &mut BTreeMap<StoreId, T>, store: StoreId, by: T) {
    if let Some(figure) = figures.get_mut(&store) {
        *figure += by;
    }
}

/// Which balancing moves may be made (`scandium ctl scheduler` pauses each kind).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allowed {
    /// Replica moves.
    pub replicas: bool,
    /// Leader moves for counts.
    pub leaders: bool,
    /// Moves of hot Regions' leaders and write-hot Regions' replicas, for traffic.
    pub hot: bool,
    /// Stores that took part in as many replica moves in the last minute as they may:
    /// no replica moves to or from them.
    pub saturated: BTreeSet<StoreId>,
    /// Whether another leader move may start (fewer than `balance_limit` under way: they
    /// have a limit of their own, so that they do not wait behind replica moves, each of
    /// which may copy a Region).
    pub leader_slots: bool,
}

impl Allowed {
    /// Every move.
    pub const ALL: Allowed = Allowed {
        replicas: true,
        leaders: true,
        hot: true,
        saturated: BTreeSet::new(),
        leader_slots: true,
    };
}

/// The move that evens out replicas or leaders, if `region` may take part: a healthy data
/// Region (every peer on an `Up` store, none lagging, no learner, not changing).
///
/// 1. Isolation: a replica sharing a location with another of the Region's moves to a
///    store that shares less, whatever the counts.
/// 2. Weight (cold Regions only: moving a hot one would cost more than it gives): its
///    replica on the heaviest of its stores goes to the lightest `Up` store without one,
///    if they are at least twice the Region's weight apart (so the move never makes the
///    pair uneven the other way, and stores never trade a replica back and forth), and
///    more than the [tolerance](Balance::tolerance) apart; a Region of a quarter of the
///    tolerance or less moves for counts only.
///    Then counts: its replica on the store holding the most replicas goes to the `Up`
///    store without one holding the fewest, if at least [`BALANCE_GAP`] fewer and the
///    move leaves the two within half the tolerance by weight (so rule 2 never moves it
///    back): among Regions of a size, weight is count; a few small Regions settle where
///    they even out the counts.
/// 3. Writes: every replica applies a write-hot Region's writes, so its replica on the
///    store writing the most (over all the replicas it holds) goes to the `Up` store
///    writing the least, as well isolated, if the first writes more than a tenth above
///    the stores' mean and the second more than a tenth below it
///    ([`TRAFFIC_BAND_DIVISOR`]) and the two are at least twice the Region's
///    writes apart (PD's hot-write peer moves), so that the target never ends writing
///    more than the source did: with 1¼, a write load spread over a few Regions moved
///    their replicas back and forth every few seconds, as each Region's rate swung.
/// 4. A hot Region's leadership goes to the voter whose store leads the least traffic,
///    if its store leads more than a tenth above the stores' mean and the other more
///    than a tenth below it, and the two are at least 1¼ times the Region's apart (the quarter
///    keeps changing traffic from moving it back and forth); a store that leads one
///    Region of nearly all the traffic keeps it, as moving it would only move the load.
/// 5. A cold Region's leadership goes to the voter whose store leads the fewest Regions,
///    if at least [`BALANCE_GAP`] fewer than the leader's store.
pub fn rebalance(
    region: &Region,
    health: &RegionHealth,
    load: Option<&RegionLoad>,
    balance: &Balance,
    allowed: &Allowed,
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
    let hot = balance.is_hot(load);
    let count = |store: StoreId| balance.replicas.get(&store).copied().unwrap_or(0);
    let weight = |store: StoreId| balance.weights.get(&store).copied().unwrap_or(0);
    let nowhere = Location::new();
    let located = |store: StoreId| balance.locations.get(&store).unwrap_or(&nowhere);
    // How `store` would overlap the Region's other replicas if it took `from`'s place.
    let overlap_without = |from: &Peer, store: StoreId| {
        let others: Vec<&Location> =
            region.peers.iter().filter(|p| p.id != from.id).map(|p| located(p.store_id)).collect();
        overlap(located(store), &others)
    };
    let free = || {
        balance
            .replicas
            .keys()
            .copied()
            .filter(|&s| region.peer_on_store(s).is_none() && !allowed.saturated.contains(&s))
    };
    let movable: Vec<&Peer> = match allowed.replicas {
        true => region.peers.iter().filter(|p| !allowed.saturated.contains(&p.store_id)).collect(),
        false => Vec::new(),
    };
    // 1. Isolation: a replica sharing a location with another goes to a store that
    //    shares less, whatever the counts (the cluster gained a zone or a host).
    for &from in &movable {
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
    // 2. Weight: the replica on the heaviest of its stores that can go anywhere as well
    //    isolated from the others goes to the lightest such store.
    let cold = if hot { Vec::new() } else { movable };
    let moved = region_weight(load);
    // A small Region (a quarter of the tolerance at most) moves for counts only: moved
    // for weight, it cannot even out what large Regions leave, and the stores' weights
    // change under load for ever (five stores kept moving their few small Regions).
    let small = moved <= balance.tolerance / 4;
    let mut by_weight = if small { Vec::new() } else { cold.clone() };
    by_weight.sort_by_key(|p| std::cmp::Reverse((weight(p.store_id), p.store_id)));
    let gap = moved.saturating_mul(2).max(balance.tolerance.saturating_add(1));
    for from in by_weight {
        let here = overlap_without(from, from.store_id);
        let lightest =
            free().filter(|&s| overlap_without(from, s) <= here).min_by_key(|&s| (weight(s), s));
        if let Some(to) = lightest {
            if weight(from.store_id) >= weight(to).saturating_add(gap) {
                return Some(Decision::MoveReplica { from: from.clone(), to });
            }
        }
    }
    //    Then counts, within the tolerance by weight.
    let mut by_count = cold;
    by_count.sort_by_key(|p| std::cmp::Reverse((count(p.store_id), p.store_id)));
    for from in by_count {
        let here = overlap_without(from, from.store_id);
        let fewest =
            free().filter(|&s| overlap_without(from, s) <= here).min_by_key(|&s| (count(s), s));
        if let Some(to) = fewest {
            let evens = count(from.store_id) >= count(to) + BALANCE_GAP;
            let after = weight(to).saturating_add(moved.saturating_mul(2));
            if evens && after <= weight(from.store_id).saturating_add(balance.tolerance / 2) {
                return Some(Decision::MoveReplica { from: from.clone(), to });
            }
        }
    }
    // 3. Writes.
    if allowed.hot && balance.is_write_hot(load) {
        let written = load.map_or(0, |l| l.written_bytes_per_sec());
        let writes = |store: StoreId| balance.writes.get(&store).copied().unwrap_or(0);
        let mut by_writes: Vec<&Peer> =
            region.peers.iter().filter(|p| !allowed.saturated.contains(&p.store_id)).collect();
        by_writes.sort_by_key(|p| std::cmp::Reverse((writes(p.store_id), p.store_id)));
        let mean = mean_of(&balance.writes);
        for from in by_writes {
            let here = overlap_without(from, from.store_id);
            let coldest = free()
                .filter(|&s| overlap_without(from, s) <= here)
                .min_by_key(|&s| (writes(s), s));
            let apart = |to: StoreId| writes(from.store_id).saturating_sub(writes(to));
            let uneven = |to: StoreId| outside_band(writes(from.store_id), writes(to), mean);
            if let Some(to) =
                coldest.filter(|&to| apart(to) >= written.saturating_mul(2) && uneven(to))
            {
                return Some(Decision::MoveReplica { from: from.clone(), to });
            }
        }
    }
    let others = || region.voters().filter(|p| p.id != leader.id);
    if hot {
        // 4. Traffic.
        let traffic = |store: StoreId| balance.traffic.get(&store).copied().unwrap_or(0);
        let successor = others().min_by_key(|p| (traffic(p.store_id), p.store_id))?;
        let moved = load.map_or(0, |l| l.bytes_per_sec());
        let apart = traffic(leader.store_id).saturating_sub(traffic(successor.store_id));
        let uneven = outside_band(
            traffic(leader.store_id),
            traffic(successor.store_id),
            mean_of(&balance.traffic),
        );
        return (allowed.hot
            && allowed.leader_slots
            && uneven
            && apart >= moved.saturating_add(moved / 4))
        .then(|| Decision::MoveLeader(successor.clone()));
    }
    // 5. Counts.
    if !allowed.leaders || !allowed.leader_slots {
        return None;
    }
    let leaders = |store: StoreId| balance.leaders.get(&store).copied().unwrap_or(0);
    let successor = others().min_by_key(|p| (leaders(p.store_id), p.store_id))?;
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
        .min_by_key(|s| (overlap(&location(s, config), &others), state.replica_count(s.id), s.id))
        .map(|s| s.id)
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
        let health =
            RegionHealth { leader: r.peers[0].id, pending: pending.to_vec(), stuck: vec![] };
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
        let health = RegionHealth { leader: 1, ..RegionHealth::default() };
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
        let led_by_3 = RegionHealth { leader: 3, ..RegionHealth::default() };
        let decision = decide(&state, &live, &SchedulerConfig::default(), &four, &led_by_3, false);
        assert_eq!(decision, Some(Decision::TransferLeader(Peer::new(1, 1))));
    }

    #[test]
    fn the_placement_group_has_three_voters_and_learners_elsewhere() {
        let meta = region(vec![Peer::new(1, 1)]);
        let state = cluster(4, meta.clone());
        let live = alive(&[1, 2, 3, 4]);
        let decide_meta = |r: &Region, pending: &[u64]| {
            let health = RegionHealth { leader: 1, pending: pending.to_vec(), stuck: vec![] };
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
        let missing = region(vec![Peer::new(1, 1), Peer::new(2, 2), Peer::new(3, 3)]);
        assert_eq!(decide_meta(&missing, &[]), Some(Decision::AddExtraLearner(4)), "not a voter");
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

    /// Stores holding `replicas` (Regions of [`REGION_WEIGHT_FLOOR`] each) and leading
    /// `leaders`, with no traffic.
    fn counts(replicas: &[(u64, usize)], leaders: &[(u64, usize)]) -> Balance {
        let weight = |n: usize| n as u64 * REGION_WEIGHT_FLOOR;
        Balance {
            replicas: replicas.iter().copied().collect(),
            weights: replicas.iter().map(|&(s, n)| (s, weight(n))).collect(),
            leaders: leaders.iter().copied().collect(),
            traffic: leaders.iter().map(|&(s, _)| (s, 0)).collect(),
            writes: replicas.iter().map(|&(s, _)| (s, 0)).collect(),
            locations: BTreeMap::new(),
            hot_threshold: SchedulerConfig::default().hot_region_bytes_per_sec,
            tolerance: 0,
        }
    }

    fn led(leader: u64, pending: &[u64]) -> RegionHealth {
        RegionHealth { leader, pending: pending.to_vec(), stuck: vec![] }
    }

    #[test]
    fn a_replica_moves_from_the_fullest_store_to_the_emptiest() {
        let r = region(vec![Peer::new(1, 1), Peer::new(2, 2), Peer::new(3, 3)]);
        let balance = counts(&[(1, 10), (2, 10), (3, 9), (4, 0)], &[(1, 3), (2, 3), (3, 3)]);
        let decision = rebalance(&r, &led(1, &[]), None, &balance, &Allowed::ALL);
        let expected = Decision::MoveReplica { from: Peer::new(2, 2), to: 4 };
        assert_eq!(decision, Some(expected.clone()), "ties go to the higher store id");
        // Counted as it is decided, so the next Region of the batch sees it.
        let mut balance = balance;
        balance.record(&expected, 1, None);
        assert_eq!((balance.replicas[&2], balance.replicas[&4]), (9, 1));
        assert_eq!(balance.weights[&4], REGION_WEIGHT_FLOOR);
    }

    #[test]
    fn leadership_moves_to_the_voter_leading_fewest() {
        let r = region(vec![Peer::new(1, 1), Peer::new(2, 2), Peer::new(3, 3)]);
        let balance = counts(&[(1, 5), (2, 5), (3, 5)], &[(1, 4), (2, 2), (3, 1)]);
        let decision = rebalance(&r, &led(1, &[]), None, &balance, &Allowed::ALL);
        assert_eq!(decision, Some(Decision::MoveLeader(Peer::new(3, 3))));
        let mut balance = balance;
        balance.record(&Decision::MoveLeader(Peer::new(3, 3)), 1, None);
        assert_eq!((balance.leaders[&1], balance.leaders[&3]), (3, 2));
    }

    /// A Region's latest report to the placement leader stands for it until it is
    /// recorded (a move that finished has not always reached the record); an older one
    /// does not.
    #[test]
    fn a_region_counts_as_last_reported_unless_the_record_is_newer() {
        let recorded = Region { conf_ver: 2, ..region(vec![Peer::new(1, 1), Peer::new(2, 2)]) };
        let state = cluster(3, recorded.clone());
        let live = alive(&[1, 2, 3]);
        let config = SchedulerConfig::default();
        let moved = Region { conf_ver: 4, ..region(vec![Peer::new(1, 1), Peer::new(5, 3)]) };
        let report = |region: &Region, leader| RegionReport {
            region: Some(region.clone()),
            leader_peer_id: leader,
            term: 7,
        };
        let reported = BTreeMap::from([(10, report(&moved, 5))]);
        let balance = Balance::of(&state, &live, &config, [], &BTreeMap::new(), &reported);
        assert_eq!(balance.replicas, BTreeMap::from([(1, 1), (2, 0), (3, 1)]));
        assert_eq!(balance.leaders, BTreeMap::from([(1, 0), (2, 0), (3, 1)]));
        let stale = Region { conf_ver: 1, ..region(vec![Peer::new(1, 1), Peer::new(5, 3)]) };
        let reported = BTreeMap::from([(10, report(&stale, 5))]);
        let balance = Balance::of(&state, &live, &config, [], &BTreeMap::new(), &reported);
        assert_eq!(balance.replicas, BTreeMap::from([(1, 1), (2, 1), (3, 0)]), "the record");
    }

    /// Stores within the tolerance by weight keep their replicas, and small Regions do
    /// not move for weight at all (they moved for ever to even out what large ones
    /// left); within it, counts two apart are evened out.
    #[test]
    fn small_regions_move_for_counts_not_for_weight_within_the_tolerance() {
        let r = region(vec![Peer::new(1, 1), Peer::new(2, 2), Peer::new(3, 3)]);
        let small = load(0, 0);
        let mut balance = counts(&[(1, 10), (2, 10), (3, 10), (4, 10)], &[(1, 1)]);
        for (store, mib) in [(1, 700), (2, 690), (3, 690), (4, 670)] {
            balance.weights.insert(store, mib * MIB);
        }
        balance.tolerance = 34 * MIB; // a twentieth of 690 MiB
        let decision = rebalance(&r, &led(2, &[]), Some(&small), &balance, &Allowed::ALL);
        assert_eq!(decision, None, "30 MiB apart, within the tolerance");
        balance.weights.insert(4, 650 * MIB);
        let decision = rebalance(&r, &led(2, &[]), Some(&small), &balance, &Allowed::ALL);
        assert_eq!(decision, None, "50 MiB apart, but a small Region cannot even that out");
        let medium = load(16 * MIB, 0);
        let decision = rebalance(&r, &led(2, &[]), Some(&medium), &balance, &Allowed::ALL);
        assert_eq!(decision, Some(Decision::MoveReplica { from: Peer::new(1, 1), to: 4 }));
        // Even by weight, two replicas apart by count: the small Region evens them out,
        // unless it would leave the stores more than half the tolerance apart by weight.
        let mut balance = counts(&[(1, 12), (2, 11), (3, 11), (4, 10)], &[(1, 1)]);
        balance.tolerance = 34 * MIB;
        let decision = rebalance(&r, &led(2, &[]), Some(&small), &balance, &Allowed::ALL);
        assert_eq!(decision, Some(Decision::MoveReplica { from: Peer::new(1, 1), to: 4 }));
        balance.weights.insert(4, balance.weights[&1] + 16 * MIB);
        let decision = rebalance(&r, &led(2, &[]), Some(&small), &balance, &Allowed::ALL);
        assert_eq!(decision, None, "store 4 would end 18 MiB heavier");
    }

    /// Leader moves have slots of their own: they go on while replica moves are full.
    #[test]
    fn leaders_move_while_replica_moves_are_full_and_not_once_their_own_are() {
        let r = region(vec![Peer::new(1, 1), Peer::new(2, 2), Peer::new(3, 3)]);
        let balance = counts(&[(1, 5), (2, 5), (3, 5), (4, 0)], &[(1, 4), (2, 2), (3, 1)]);
        let full = Allowed { saturated: [1, 2, 3, 4].into(), ..Allowed::ALL };
        let decision = rebalance(&r, &led(1, &[]), None, &balance, &full);
        assert_eq!(decision, Some(Decision::MoveLeader(Peer::new(3, 3))));
        let no_slot = Allowed { leader_slots: false, ..full };
        assert_eq!(rebalance(&r, &led(1, &[]), None, &balance, &no_slot), None);
    }

    #[test]
    fn nothing_moves_within_the_gap_or_while_a_region_is_unsettled() {
        let r = region(vec![Peer::new(1, 1), Peer::new(2, 2), Peer::new(3, 3)]);
        let even = counts(&[(1, 5), (2, 5), (3, 5), (4, 4)], &[(1, 2), (2, 1), (3, 1)]);
        assert_eq!(rebalance(&r, &led(1, &[]), None, &even, &Allowed::ALL), None, "gaps of 1 stay");
        let uneven = counts(&[(1, 5), (2, 5), (3, 5), (4, 0)], &[(1, 5), (2, 0), (3, 0)]);
        assert_eq!(rebalance(&r, &led(1, &[2]), None, &uneven, &Allowed::ALL), None, "a peer lags");
        let with_learner =
            region(vec![Peer::new(1, 1), Peer::new(2, 2), Peer::new(3, 3), Peer::learner(4, 4)]);
        assert_eq!(rebalance(&with_learner, &led(1, &[]), None, &uneven, &Allowed::ALL), None);
        let on_a_store_not_up = counts(&[(1, 5), (2, 5), (4, 0)], &[(1, 5), (2, 0)]);
        assert_eq!(
            rebalance(&r, &led(1, &[]), None, &on_a_store_not_up, &Allowed::ALL),
            None,
            "store 3 is not up"
        );
    }

    const MIB: u64 = 1 << 20;

    /// Traffic of `bytes_per_sec` over the last second, on a Region of `size` bytes.
    fn load(size: u64, bytes_per_sec: u64) -> RegionLoad {
        RegionLoad {
            approximate_size: size,
            read_bytes: bytes_per_sec,
            interval_ms: 1_000,
            ..Default::default()
        }
    }

    #[test]
    fn replicas_are_balanced_by_size_not_only_by_count() {
        let r = region(vec![Peer::new(1, 1), Peer::new(2, 2), Peer::new(3, 3)]);
        // Store 1 holds three large Regions, the others twenty small ones each: by count
        // store 1 is the emptiest, by size the fullest.
        let mut balance = counts(&[(1, 3), (2, 20), (3, 20), (4, 20)], &[(1, 1), (2, 1), (3, 1)]);
        balance.weights.insert(1, 300 * MIB);
        let decision =
            rebalance(&r, &led(2, &[]), Some(&load(64 * MIB, 0)), &balance, &Allowed::ALL);
        assert_eq!(decision, Some(Decision::MoveReplica { from: Peer::new(1, 1), to: 4 }));
        let mut after = balance.clone();
        after.record(&decision.unwrap(), 2, Some(&load(64 * MIB, 0)));
        assert_eq!((after.weights[&1], after.weights[&4]), (236 * MIB, 84 * MIB));
        // A Region too large for the gap would only make store 4 the fullest.
        let decision =
            rebalance(&r, &led(2, &[]), Some(&load(200 * MIB, 0)), &balance, &Allowed::ALL);
        assert_eq!(decision, None);
    }

    #[test]
    fn a_hot_region_s_leadership_goes_where_it_evens_out_traffic() {
        let r = region(vec![Peer::new(1, 1), Peer::new(2, 2), Peer::new(3, 3)]);
        let hot = load(MIB, MIB);
        let mut balance = counts(&[(1, 5), (2, 5), (3, 5)], &[(1, 2), (2, 2), (3, 2)]);
        balance.traffic = [(1, 3 * MIB), (2, 2 * MIB), (3, MIB / 2)].into();
        let decision = rebalance(&r, &led(1, &[]), Some(&hot), &balance, &Allowed::ALL);
        assert_eq!(decision, Some(Decision::MoveLeader(Peer::new(3, 3))), "to the least traffic");
        let mut after = balance.clone();
        after.record(&decision.unwrap(), 1, Some(&hot));
        assert_eq!((after.traffic[&1], after.traffic[&3]), (2 * MIB, MIB * 3 / 2));
        let paused = Allowed { hot: false, ..Allowed::ALL };
        assert_eq!(rebalance(&r, &led(1, &[]), Some(&hot), &balance, &paused), None, "paused");
        // A store whose traffic is nearly all this Region's keeps it: moving it would
        // only move the load (and back again, at the next change).
        balance.traffic = [(1, MIB + MIB / 8), (2, 0), (3, 0)].into();
        assert_eq!(rebalance(&r, &led(1, &[]), Some(&hot), &balance, &Allowed::ALL), None);
        // Stores within a tenth of the mean are even enough, however far apart by this
        // Region's traffic: many hot Regions' swings moved leaders for ever.
        balance.traffic = [(1, 21 * MIB), (2, 20 * MIB), (3, 19 * MIB)].into();
        assert_eq!(rebalance(&r, &led(1, &[]), Some(&hot), &balance, &Allowed::ALL), None);
        balance.traffic = [(1, 23 * MIB), (2, 20 * MIB), (3, 17 * MIB)].into();
        let decision = rebalance(&r, &led(1, &[]), Some(&hot), &balance, &Allowed::ALL);
        assert_eq!(decision, Some(Decision::MoveLeader(Peer::new(3, 3))), "past the band");
        // Nor is a hot Region's leadership or replica moved for counts.
        let mut uneven = counts(&[(1, 9), (2, 9), (3, 9), (4, 0)], &[(1, 9), (2, 0), (3, 0)]);
        uneven.traffic = [(1, MIB), (2, MIB), (3, MIB), (4, 0)].into();
        assert_eq!(rebalance(&r, &led(1, &[]), Some(&hot), &uneven, &Allowed::ALL), None);
        let cold = load(MIB, 1024);
        let decision = rebalance(&r, &led(1, &[]), Some(&cold), &uneven, &Allowed::ALL);
        assert!(matches!(decision, Some(Decision::MoveReplica { to: 4, .. })), "{decision:?}");
    }

    #[test]
    fn a_store_at_its_limit_neither_gives_nor_takes_a_replica() {
        let r = region(vec![Peer::new(1, 1), Peer::new(2, 2), Peer::new(3, 3)]);
        let balance =
            counts(&[(1, 10), (2, 10), (3, 9), (4, 0), (5, 1)], &[(1, 3), (2, 3), (3, 3)]);
        let limited = |stores: &[u64]| Allowed {
            saturated: stores.iter().copied().collect(),
            ..Allowed::ALL
        };
        let decision = rebalance(&r, &led(1, &[]), None, &balance, &limited(&[4]));
        assert_eq!(decision, Some(Decision::MoveReplica { from: Peer::new(2, 2), to: 5 }));
        let decision = rebalance(&r, &led(1, &[]), None, &balance, &limited(&[2, 4]));
        assert_eq!(decision, Some(Decision::MoveReplica { from: Peer::new(1, 1), to: 5 }));
    }

    /// Every replica applies a Region's writes: a write-hot Region's replica on the store
    /// writing the most goes to the one writing the least, once they are far enough apart
    /// that the move does not invite one back.
    #[test]
    fn a_write_hot_region_s_replica_goes_to_the_store_writing_least() {
        let r = region(vec![Peer::new(1, 1), Peer::new(2, 2), Peer::new(3, 3)]);
        let hot = RegionLoad { written_bytes: MIB, ..load(MIB, 0) };
        let mut balance =
            counts(&[(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)], &[(1, 1), (2, 1), (3, 1)]);
        balance.writes = [(1, 4 * MIB), (2, MIB), (3, MIB), (4, 0), (5, MIB / 2)].into();
        let decision = rebalance(&r, &led(2, &[]), Some(&hot), &balance, &Allowed::ALL);
        assert_eq!(decision, Some(Decision::MoveReplica { from: Peer::new(1, 1), to: 4 }));
        let mut after = balance.clone();
        after.record(&decision.unwrap(), 2, Some(&hot));
        assert_eq!((after.writes[&1], after.writes[&4]), (3 * MIB, MIB));
        // Store 4 at its limit: store 5, the next coldest.
        let limited = Allowed { saturated: [4].into(), ..Allowed::ALL };
        let decision = rebalance(&r, &led(2, &[]), Some(&hot), &balance, &limited);
        assert_eq!(decision, Some(Decision::MoveReplica { from: Peer::new(1, 1), to: 5 }));
        // Hot balancing paused, or the stores within 1¼ times the Region's writes: stays.
        let paused = Allowed { hot: false, ..Allowed::ALL };
        assert_eq!(rebalance(&r, &led(2, &[]), Some(&hot), &balance, &paused), None);
        balance.writes = [(1, 2 * MIB), (2, MIB), (3, MIB), (4, MIB), (5, MIB)].into();
        assert_eq!(rebalance(&r, &led(2, &[]), Some(&hot), &balance, &Allowed::ALL), None);
        // Read traffic costs only the leader: a read-hot Region's replicas stay.
        balance.writes = [(1, 4 * MIB), (2, MIB), (3, MIB), (4, 0), (5, 0)].into();
        let read_hot = load(MIB, MIB);
        assert_eq!(rebalance(&r, &led(2, &[]), Some(&read_hot), &balance, &Allowed::ALL), None);
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
        let health = RegionHealth { leader: 1, ..RegionHealth::default() };
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
        let balance = Balance::of(&state, &live, &config, [], &BTreeMap::new(), &BTreeMap::new());
        let decision = rebalance(&r, &led(1, &[]), None, &balance, &Allowed::ALL);
        assert_eq!(decision, Some(Decision::MoveReplica { from: Peer::new(1, 1), to: 4 }));
        // Spread over a, b, c: however uneven the counts, a replica does not move to a
        // store sharing a zone with another of its replicas.
        let spread = region(vec![Peer::new(1, 1), Peer::new(2, 3), Peer::new(3, 4)]);
        let mut balance = Balance::of(
            &zoned_cluster(spread.clone()),
            &live,
            &config,
            [],
            &BTreeMap::new(),
            &BTreeMap::new(),
        );
        for store in [1, 3, 4] {
            balance.replicas.insert(store, 50);
            balance.weights.insert(store, 50 * REGION_WEIGHT_FLOOR);
        }
        let decision = rebalance(&spread, &led(1, &[]), None, &balance, &Allowed::ALL);
        assert_eq!(
            decision,
            Some(Decision::MoveReplica { from: Peer::new(1, 1), to: 2 }),
            "only within zone a, to its emptier store"
        );
    }
}
