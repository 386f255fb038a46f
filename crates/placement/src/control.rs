//! The control plane: what the placement leader makes of heartbeats.
//!
//! Every node reports, about once a second, that its store is alive and how each Region
//! it leads is doing (shape, leader, term, lagging peers). The placement leader's
//! [`ControlPlane`]:
//!
//! * notes when each store was last heard from (its *liveness*), and says which Region
//!   reports changed what placement records (the driver records them in the placement
//!   group's log);
//! * keeps at most one [`Operator`] per Region: when a Region has none, asks the
//!   scheduler (`scheduler::decide`) what it should become next and starts one; every
//!   heartbeat of the Region then advances it, and what it wants sent goes back to the
//!   Region's leader with the heartbeat's answer;
//! * on its own clock ([`ControlPlane::tick`]): records the stores' last heartbeats in
//!   the log every few seconds, and retires drained stores that hold no replica any more.
//!
//! Liveness survives a change of placement leader: a new leader starts from the times the
//! log holds (at most a few seconds old), never from "everyone is alive", so a store that
//! died before the change is still marked down once `down_ms` has passed since it was
//! last heard, and one that is alive is heard again within a heartbeat interval.
//!
//! Sans-I/O, like every core: the driver (the server's heartbeat service, or the
//! simulator's event queue) hands it heartbeats and the time, and carries out what it
//! returns: records to propose, steps to send, ids to allocate.

use crate::operator::{Ended, Operator, OperatorKind, OperatorStep, OperatorTimeouts, Progress};
pub use crate::scheduler::RegionLoad;
use crate::scheduler::{self, Balance, Decision, Liveness, RegionHealth, SchedulerConfig};
use crate::{Kind, PlacementState, RegionReport, StoreSeen, StoreStateChange, StoresSeen};
use scandium_types::{PeerId, Region, RegionId, StoreId, StoreState};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// How the control plane judges and acts.
#[derive(Clone, Debug)]
pub struct ControlConfig {
    /// How stores are judged and how many replicas are wanted.
    pub scheduler: SchedulerConfig,
    /// How long operators' steps may take.
    pub timeouts: OperatorTimeouts,
    /// How often the stores' last heartbeats are recorded in the log.
    pub record_liveness_ms: u64,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            scheduler: SchedulerConfig::default(),
            timeouts: OperatorTimeouts::default(),
            record_liveness_ms: 10_000,
        }
    }
}

/// The two clocks of the placement leader.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Now {
    /// Monotonic milliseconds: liveness and timeouts are measured on it.
    pub monotonic_ms: u64,
    /// Wall-clock milliseconds: what is recorded for the next leader.
    pub wall_ms: u64,
}

/// A Region's leader's report.
#[derive(Clone, Debug, PartialEq)]
pub struct RegionHeartbeat {
    /// The Region's shape, leader and term.
    pub report: RegionReport,
    /// Peers that are behind (learners not caught up, lagging voters).
    pub pending: Vec<PeerId>,
    /// The Region's size and traffic.
    pub load: RegionLoad,
}

/// What the driver must do with a batch of Region heartbeats.
#[derive(Debug, Default, PartialEq)]
pub struct Intake {
    /// Reports whose shape or leader placement does not record yet: propose them.
    pub changed: Vec<RegionReport>,
    /// Steps for the reporting store (the Regions' leader) to carry out.
    pub steps: Vec<OperatorStep>,
    /// Regions that need a new replica, and so a peer id allocated now (not earlier):
    /// allocate one each and hand it over with [`ControlPlane::supply_id`].
    pub need_ids: Vec<RegionId>,
}

/// What the placement leader wants in a store's next heartbeat
/// (the sender's `HeartbeatFilter`, in `filter.rs`, picks the Regions by it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Wants {
    /// Every Region the store leads: the leader has not had them all since it took over
    /// or since the stores or the settings changed. (Not while it schedules: it finds its
    /// next move in its own record: `ControlPlane::patrol`.)
    pub all: bool,
    /// Regions to report at every beat: those with an operator in progress, those whose
    /// last report is not in placement's record yet (its proposal may be lost), and those
    /// waiting for a peer id for a new replica.
    pub watch: Vec<RegionId>,
}

/// The longest the stores' counts for balancing ([`Balance`]) are kept without a count
/// over every Region: the traffic figures in them drift.
pub const BALANCE_REFRESH_MS: u64 = 3_000;

/// The shortest time between two counts over every Region for balancing, however much
/// changed: moves decided in between are counted into the kept figures
/// ([`Balance::record`]), and what else changed (an election, a split) waits at most this
/// long. Counted after every changed report, a balancing run at 10,000 Regions counted
/// over all of them at every heartbeat.
pub const BALANCE_RECOUNT_MS: u64 = 1_000;

/// How many of the Regions a store leads `ControlPlane::patrol` looks at per heartbeat
/// of that store, from where it left off.
pub const PATROL_BATCH: usize = 64;

/// What about the stores and settings, changed, makes the placement leader want every
/// Region again: a store joined, went down, came back, was drained or relabelled, or the
/// scheduler's settings changed.
#[derive(Clone, Debug, PartialEq)]
struct Outlook {
    stores: Vec<(StoreId, scheduler::StoreStatus, Vec<scandium_types::StoreLabel>)>,
    settings: crate::SchedulerSettings,
    replicas: u64,
}

/// Operators started and ended since the leader took over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OperatorCounts {
    /// Started.
    pub started: u64,
    /// Every step took effect.
    pub finished: u64,
    /// A step took too long.
    pub timed_out: u64,
    /// The Region was split or merged meanwhile.
    pub cancelled: u64,
}

/// The placement leader's control plane (see the module docs). On other nodes it is idle.
#[derive(Debug)]
pub struct ControlPlane {
    config: ControlConfig,
    /// `config.scheduler` under the cluster's settings, as of the batch of heartbeats
    /// being handled.
    effective: SchedulerConfig,
    /// The placement term this node leads in, if it does.
    term: Option<u64>,
    /// Each store's last heartbeat, monotonic milliseconds.
    heard: BTreeMap<StoreId, u64>,
    /// Each store's last heartbeat, wall-clock milliseconds, not yet recorded.
    unrecorded: BTreeMap<StoreId, u64>,
    recorded_ms: u64,
    operators: BTreeMap<RegionId, Operator>,
    /// The placement group's own operator.
    meta_operator: Option<Operator>,
    /// Peer ids allocated for the Regions that need a new replica, not used yet.
    ids: BTreeMap<RegionId, u64>,
    counts: OperatorCounts,
    /// The placement group's own operator waits for an id.
    meta_needs_id: bool,
    /// The Regions' size and traffic, as their leaders last reported them.
    loads: BTreeMap<RegionId, RegionLoad>,
    /// The same with their traffic smoothed over the heartbeats ([`smoothed`]): what
    /// balancing goes by, so that a second's burst or lull does not move a replica.
    rates: BTreeMap<RegionId, RegionLoad>,
    /// The Regions' shape and leader as their leaders last reported them, where placement's
    /// record does not say the same yet: newer than the record until the report is
    /// applied, for balancing ([`Balance::of`]), and followed ([`Wants::watch`]) so that a
    /// lost proposal is made again. Pruned once the record has them: a second copy of
    /// every Region cost the placement leader 300 bytes a Region.
    reported: BTreeMap<RegionId, RegionReport>,
    /// The stores' replica and leader counts, for balancing: counted when first needed,
    /// then kept up to date with the moves started, across batches of heartbeats until
    /// something they were counted from changes (see `region_heartbeats`).
    balance: Option<Balance>,
    /// When each store last took part in balancing replica moves (as source or target),
    /// within the last minute, oldest first: the store limit.
    replica_moves: BTreeMap<StoreId, VecDeque<u64>>,
    /// When `balance` was counted (monotonic milliseconds).
    balance_at_ms: u64,
    /// `balance` counts a decision that started no operator (it waits for an id).
    balance_tentative: bool,
    /// Something `balance` was counted from changed since (a report, an operator's end).
    balance_stale: bool,
    /// The Regions each store leads, as last reported (or recorded, at takeover): where
    /// `ControlPlane::patrol` looks for moves. A Region that changed leader stays in its
    /// old store's set until the patrol there finds it led elsewhere.
    led: BTreeMap<StoreId, BTreeSet<RegionId>>,
    /// Where the patrol of each store's Regions left off.
    patrolled: BTreeMap<StoreId, RegionId>,
    /// The lagging peers of each Region whose last report named some, each with the time
    /// (monotonic ms) since when its reports have named it.
    pending: BTreeMap<RegionId, Vec<(PeerId, u64)>>,
    /// Regions whose next move waits for a peer id: followed until it starts.
    wanting_id: BTreeSet<RegionId>,
    /// The stores and settings as of the last heartbeat, and how many times they changed.
    outlook: Option<Outlook>,
    outlook_changes: u64,
    /// For each store, `outlook_changes` as of its last heartbeat with every Region it
    /// leads.
    full_at: BTreeMap<StoreId, u64>,
    /// Each Region's version as last reported, and since when (monotonic ms): a Region
    /// merges only once its shape has stood `split_merge_interval_ms` (see
    /// [`crate::merge`]). Empty after a change of leader, so nothing merges in the
    /// interval after one (as PD after it starts).
    /// A merge's target keeps its time (a new version with a wider range than the record's):
    /// a split keeps a Region from merging for the interval (as PD's
    /// `split-merge-interval`), a merge does not, so that a run of small Regions merges
    /// pair by pair without waiting the interval at every step.
    shapes: BTreeMap<RegionId, (u64, u64)>,
    /// Regions a neighbour moves its replicas towards to merge into them, and until when
    /// (monotonic ms) no balancing move takes theirs elsewhere: the balancer undid each
    /// step of a colocation as it was made, and neither merge nor balance got anywhere
    /// (simulator seed 621 of 60 s registers-only runs with `--unsafe-frozen-reads`).
    joined: BTreeMap<RegionId, u64>,
    /// Regions moving replicas towards a neighbour to merge into it, and until when
    /// (monotonic ms) no balancing move takes theirs elsewhere between those moves (the
    /// balancer moved a replica back off the store a colocation had just brought it to).
    colocating: BTreeMap<RegionId, u64>,
    /// When [`ControlPlane::sweep`] last ran (monotonic ms).
    swept_ms: u64,
    /// Deliberately broken (the simulator proves its checks catch it): a new leader
    /// forgets the recorded heartbeats and counts stores it has not heard from as never
    /// seen, so a store that died before the change is never marked down.
    forget_liveness: bool,
}

/// How long a Region that a neighbour moves replicas towards, to merge into it, is left
/// out of balancing after the neighbour's last such move: a few moves' time.
pub const JOINED_HOLD_MS: u64 = 60_000;

/// The key [`ControlPlane::supply_id`] takes the placement group's id under (the group
/// has no Region id of its own here).
pub const META_ID: RegionId = RegionId::MAX;

/// Whether `region`, as some report shows it, is gone from placement's record and a newer
/// recorded Region covers its start: it merged away (a late report of it planned moves
/// for a Region that is no more).
fn superseded(state: &PlacementState, region: &Region) -> bool {
    state.region(region.id).is_none()
        && state.region_by_key(&region.start_key).is_some_and(|r| r.version > region.version)
}

/// Whether every store holding `region` and, for a move, the store it moves to, is up.
fn involves_only_up_stores(
    state: &PlacementState,
    live: &Liveness,
    config: &SchedulerConfig,
    region: &Region,
    operator: &Operator,
) -> bool {
    let up = |store: u64| is_up(state, live, config, store);
    let target_up = operator.kind().moves().is_none_or(|(_, to)| up(to));
    target_up && region.peers.iter().all(|p| up(p.store_id))
}

/// Whether `store` is known and up.
fn is_up(
    state: &PlacementState,
    live: &Liveness,
    config: &SchedulerConfig,
    store: StoreId,
) -> bool {
    state
        .store(store)
        .is_some_and(|s| scheduler::store_status(s, live, config) == scheduler::StoreStatus::Up)
}

/// `now`'s figures with its traffic blended into `before`'s, a quarter of the way: an
/// average over about the last four heartbeats, in which a Region's traffic as measured
/// in one interval swung between a quarter and the whole of it under a steady load.
fn smoothed(before: &RegionLoad, now: &RegionLoad) -> RegionLoad {
    if now.interval_ms == 0 {
        // No traffic figures this time (a new leader's first report): the average stands.
        let RegionLoad { approximate_size, approximate_keys, .. } = *now;
        return RegionLoad { approximate_size, approximate_keys, ..*before };
    }
    let per_sec = |bytes: u64, ms: u64| bytes.saturating_mul(1_000) / ms.max(1);
    let mix = |old: u64, new: u64| {
        let old = per_sec(old, before.interval_ms);
        let new = per_sec(new, now.interval_ms);
        match before.interval_ms {
            0 => new,
            _ => old.saturating_mul(3).saturating_add(new) / 4,
        }
    };
    RegionLoad {
        written_bytes: mix(before.written_bytes, now.written_bytes),
        written_keys: mix(before.written_keys, now.written_keys),
        read_bytes: mix(before.read_bytes, now.read_bytes),
        read_keys: mix(before.read_keys, now.read_keys),
        interval_ms: 1_000,
        ..*now
    }
}

/// Whether `now` covers more than `before` and all of it (a merge's target).
fn widened(before: &Region, now: &Region) -> bool {
    let starts_before = now.start_key <= before.start_key;
    let ends_after =
        now.end_key.is_empty() || (!before.end_key.is_empty() && now.end_key >= before.end_key);
    let same = now.start_key == before.start_key && now.end_key == before.end_key;
    starts_before && ends_after && !same
}

/// Whether placement's record has `report`'s shape and leader.
fn is_recorded(state: &PlacementState, report: &RegionReport) -> bool {
    let Some(region) = report.region.as_ref() else { return true };
    let known = state.region(region.id).map(|r| r.epoch());
    let leader = state.leader_record(region.id).map(|l| (l.peer_id, l.term));
    known == Some(region.epoch()) && leader == Some((report.leader_peer_id, report.term))
}

/// What advancing a Region's operator came to.
#[derive(Debug)]
enum Advance {
    /// Send this step.
    Send(OperatorStep),
    /// A new replica is wanted, and an id for it.
    NeedsId,
    /// Nothing to send.
    Nothing,
}

impl ControlPlane {
    /// An idle control plane.
    pub fn new(config: ControlConfig) -> ControlPlane {
        ControlPlane {
            effective: config.scheduler.clone(),
            config,
            term: None,
            heard: BTreeMap::new(),
            unrecorded: BTreeMap::new(),
            recorded_ms: 0,
            operators: BTreeMap::new(),
            meta_operator: None,
            ids: BTreeMap::new(),
            counts: OperatorCounts::default(),
            meta_needs_id: false,
            loads: BTreeMap::new(),
            rates: BTreeMap::new(),
            reported: BTreeMap::new(),
            balance: None,
            balance_at_ms: 0,
            balance_tentative: false,
            balance_stale: false,
            led: BTreeMap::new(),
            patrolled: BTreeMap::new(),
            pending: BTreeMap::new(),
            wanting_id: BTreeSet::new(),
            outlook: None,
            outlook_changes: 0,
            full_at: BTreeMap::new(),
            replica_moves: BTreeMap::new(),
            shapes: BTreeMap::new(),
            joined: BTreeMap::new(),
            colocating: BTreeMap::new(),
            swept_ms: 0,
            forget_liveness: false,
        }
    }

    /// The same, deliberately broken: see `forget_liveness`.
    pub fn forgetting_liveness(config: ControlConfig) -> ControlPlane {
        ControlPlane { forget_liveness: true, ..ControlPlane::new(config) }
    }

    /// How it judges.
    pub fn config(&self) -> &ControlConfig {
        &self.config
    }

    /// Whether this node leads the placement group in `term` (and runs the control plane).
    pub fn leads(&self, term: u64) -> bool {
        self.term == Some(term)
    }

    /// This node became placement leader in `term`: stores are judged from the
    /// heartbeats the log records (each as if heard then, mapped onto this node's
    /// monotonic clock), operators start afresh.
    pub fn take_over(&mut self, term: u64, state: &PlacementState, now: Now) {
        self.term = Some(term);
        self.shapes.clear();
        self.joined.clear();
        self.colocating.clear();
        self.loads.clear();
        self.rates.clear();
        self.reported.clear();
        self.replica_moves.clear();
        self.operators.clear();
        self.meta_operator = None;
        self.forget_ids();
        self.forget_reports();
        self.unrecorded.clear();
        self.recorded_ms = now.monotonic_ms;
        for region in state.regions() {
            if let Some(leader) = state.leader_of(region.id) {
                self.led.entry(leader.store_id).or_default().insert(region.id);
            }
        }
        self.heard = state
            .stores()
            .filter(|_| !self.forget_liveness)
            .map(|store| {
                // Never recorded (a store from before this record existed): as if heard
                // now, so that it still comes to count as down if it is gone.
                let age = match store.last_heartbeat_ms {
                    0 => 0,
                    at => now.wall_ms.saturating_sub(at),
                };
                (store.id, now.monotonic_ms.saturating_sub(age))
            })
            .collect();
    }

    /// This node no longer leads the placement group.
    pub fn step_down(&mut self) {
        self.term = None;
        self.operators.clear();
        self.meta_operator = None;
        self.forget_ids();
        self.heard.clear();
        self.unrecorded.clear();
        self.shapes.clear();
        self.joined.clear();
        self.colocating.clear();
        self.loads.clear();
        self.rates.clear();
        self.reported.clear();
        self.forget_reports();
    }

    /// What this leader knew of the stores' reports goes with its term: the next leader
    /// wants every Region from every store again.
    fn forget_reports(&mut self) {
        self.balance = None;
        self.outlook = None;
        self.full_at.clear();
        self.led.clear();
        self.patrolled.clear();
        self.pending.clear();
        self.wanting_id.clear();
    }

    /// Ids supplied in an earlier term are not used in a later one: another leader may
    /// have given a store a higher id of the same Region meanwhile (see
    /// [`ControlPlane::supply_id`]).
    fn forget_ids(&mut self) {
        self.ids.clear();
        self.meta_needs_id = false;
    }

    /// The placement term this node leads in, if it does: what [`ControlPlane::supply_id`]
    /// wants to know the ids were asked for in.
    pub fn term(&self) -> Option<u64> {
        self.term
    }

    /// The stores' liveness as of `now`.
    pub fn liveness(&self, now: Now) -> Liveness {
        Liveness { last_heartbeat_ms: self.heard.clone(), now_ms: now.monotonic_ms }
    }

    /// The Regions' size and traffic, as their leaders last reported them to this
    /// placement leader (none unless it leads). A Region that split or merged since may
    /// linger until its next heartbeat: look up the Regions placement records.
    pub fn loads(&self) -> &BTreeMap<RegionId, RegionLoad> {
        &self.loads
    }

    /// Operators started and ended under this leader.
    pub fn counts(&self) -> OperatorCounts {
        self.counts
    }

    /// Operators in progress.
    pub fn operators(&self) -> impl Iterator<Item = &Operator> {
        self.operators.values().chain(self.meta_operator.as_ref())
    }

    /// A peer id allocated for Region `region_id`'s new replica, after the scheduler
    /// asked for it ([`Intake::need_ids`]); its operator starts at the Region's next
    /// heartbeat.
    ///
    /// Why not a pool of ids reserved ahead: a store refuses a peer of a Region with a
    /// lower id than one it once held and removed (how a stale message is told from a
    /// new replica, as in TiKV). An id allocated before a split gave that store a peer of
    /// the new Region with a higher id would be refused there for ever; one allocated
    /// after the decision is above every id the Region's replicas ever had. So an id asked
    /// for in another `term` than the one this node leads in now is dropped: another
    /// leader may have used higher ones in between (the simulator found a placement
    /// group whose new learner was refused for ever, with an id its leader had been
    /// holding since an earlier term).
    pub fn supply_id(&mut self, region_id: RegionId, id: u64, term: u64) {
        if self.term == Some(term) {
            self.ids.insert(region_id, id);
        }
    }

    /// A heartbeat from `store`.
    pub fn store_heartbeat(&mut self, store: StoreId, now: Now) {
        self.heard.insert(store, now.monotonic_ms);
        self.unrecorded.insert(store, now.wall_ms);
    }

    /// A store's heartbeat, as the server and the simulator take it: the store is alive,
    /// the Regions it carried are taken in ([`ControlPlane::region_heartbeats`]), the
    /// Regions it leads are patrolled for moves (`ControlPlane::patrol`), and what the
    /// placement leader wants in its next heartbeat is said ([`ControlPlane::wants`]);
    /// `full` if the heartbeat carried every Region the store leads.
    pub fn heartbeat(
        &mut self,
        state: &PlacementState,
        store: StoreId,
        heartbeats: &[RegionHeartbeat],
        full: bool,
        now: Now,
    ) -> (Intake, Wants) {
        self.store_heartbeat(store, now);
        let mut intake = self.take_reports(state, heartbeats, now);
        self.patrol(state, store, now, &mut intake);
        self.end_batch();
        let wants = self.wants(state, store, full, now);
        (intake, wants)
    }

    /// The Regions a store leads, as it reports them: what placement must record, and the
    /// steps of their operators for the store to carry out. (The reports of a heartbeat
    /// alone, without the patrol: [`ControlPlane::heartbeat`] is the whole of it.)
    pub fn region_heartbeats(
        &mut self,
        state: &PlacementState,
        heartbeats: &[RegionHeartbeat],
        now: Now,
    ) -> Intake {
        let intake = self.take_reports(state, heartbeats, now);
        self.end_batch();
        intake
    }

    /// The counts for balancing took decisions that started no operator (they wait for
    /// an id) as made, so that the rest of the heartbeat starts no second move for the
    /// same imbalance: they stand no longer.
    fn end_batch(&mut self) {
        if std::mem::take(&mut self.balance_tentative) {
            self.balance = None;
        }
    }

    fn take_reports(
        &mut self,
        state: &PlacementState,
        heartbeats: &[RegionHeartbeat],
        now: Now,
    ) -> Intake {
        let mut intake = Intake::default();
        let live = self.liveness(now);
        self.effective = self.config.scheduler.under(state.scheduler_settings());
        self.look_out(state, &live);
        // The stores' counts stand while nothing they were counted from changed (no
        // report in this batch differs from the last, no operator ended), or for
        // `BALANCE_RECOUNT_MS` if something did; never longer than `BALANCE_REFRESH_MS`;
        // and a change of the stores or settings counts them again at once (`look_out`).
        let changed = heartbeats.iter().any(|h| {
            let id = h.report.region.as_ref().map_or(0, |r| r.id);
            match self.reported.get(&id) {
                Some(report) => *report != h.report,
                None => !is_recorded(state, &h.report),
            }
        });
        self.balance_stale |= changed;
        self.end_merges(state);
        self.end_timed_out(now);
        self.expire_balance(now);
        for heartbeat in heartbeats {
            let Some(region) = heartbeat.report.region.as_ref() else { continue };
            // A report older than the record (a former leader's, delayed) says nothing
            // new, and planned from, it would undo or repeat steps that took effect.
            if state.region(region.id).is_some_and(|r| region.epoch().is_stale_against(&r.epoch()))
                || superseded(state, region)
            {
                continue;
            }
            match self.shapes.get(&region.id) {
                Some(&(version, _)) if version == region.version => {}
                Some(&(_, since))
                    if state.region(region.id).is_some_and(|r| widened(r, region)) =>
                {
                    self.shapes.insert(region.id, (region.version, since));
                }
                _ => {
                    self.shapes.insert(region.id, (region.version, now.monotonic_ms));
                }
            }
            let report = &heartbeat.report;
            if let Some(leader) = region.peer(report.leader_peer_id) {
                self.led.entry(leader.store_id).or_default().insert(region.id);
            }
            let health =
                self.note_pending(region.id, report.leader_peer_id, &heartbeat.pending, now);
            self.wanting_id.remove(&region.id);
            if is_recorded(state, report) {
                self.reported.remove(&region.id);
            } else {
                intake.changed.push(report.clone());
                self.reported.insert(region.id, report.clone());
            }
            let load = heartbeat.load;
            let before = self.loads.insert(region.id, load);
            let rate = match self.rates.get(&region.id) {
                // A second quiet interval in a row: the Region went quiet, and its
                // leader stops reporting it (the filter's `QUIET_REPORTS`); what traffic it
                // had must not stay counted.
                Some(_) if load.is_quiet() && before.is_some_and(|b| b.is_quiet()) => load,
                Some(before) => smoothed(before, &load),
                None => load,
            };
            self.rates.insert(region.id, rate);
            let operator = self.operators.remove(&region.id);
            let advance = self.advance(state, &live, region, &health, operator, false, now);
            self.take(region.id, advance, &mut intake);
        }
        intake
    }

    /// Looks for moves among the Regions `store` leads, after the store's heartbeat
    /// (`intake`, which the steps join): [`PATROL_BATCH`] of them a beat, round and
    /// round, each as placement last knew it (its latest report, or the record). So the
    /// next move of a balancing or merging run is found without a report of every Region
    /// at every beat, as PD's checkers patrol its Region cache. A Region with a move
    /// decided this way is then followed ([`Wants::watch`]): its report at the store's
    /// next beat carries the operator on.
    fn patrol(&mut self, state: &PlacementState, store: StoreId, now: Now, intake: &mut Intake) {
        let live = self.liveness(now);
        self.effective = self.config.scheduler.under(state.scheduler_settings());
        self.look_out(state, &live);
        self.expire_balance(now);
        let Some(led) = self.led.get(&store) else { return };
        let from = self.patrolled.get(&store).copied().unwrap_or(0);
        let after = led.range(from.saturating_add(1)..);
        let ids: Vec<RegionId> =
            after.chain(led.range(..=from)).take(PATROL_BATCH).copied().collect();
        let mut elsewhere = Vec::new();
        for &id in &ids {
            // One with an operator, or waiting for the id its move asked for (in this
            // heartbeat, maybe), is carried on by its reports.
            let waiting = self.wanting_id.contains(&id) && !self.ids.contains_key(&id);
            if self.operators.contains_key(&id) || waiting {
                continue;
            }
            let Some((region, leader)) = self.known(state, id) else {
                self.pending.remove(&id);
                elsewhere.push(id);
                continue;
            };
            if region.peer(leader).map(|p| p.store_id) != Some(store) {
                elsewhere.push(id);
                continue;
            }
            let health = self.health_at(id, leader, now);
            let advance = self.advance(state, &live, &region, &health, None, false, now);
            self.take(id, advance, intake);
        }
        if let Some(&last) = ids.last() {
            self.patrolled.insert(store, last);
        }
        if let Some(led) = self.led.get_mut(&store) {
            for id in elsewhere {
                led.remove(&id);
            }
        }
    }

    /// Drops what this leader keeps of Regions that split or merged away: their reports
    /// stop, and without a sweep their loads, rates, shapes and lagging peers stayed
    /// until the next change of leader. A Region is kept while recorded, or while its
    /// report is not recorded yet (a new Region from a split); such a report goes once a
    /// newer recorded Region covers its start (it merged away).
    fn sweep(&mut self, state: &PlacementState, now: Now) {
        self.reported
            .retain(|_, report| report.region.as_ref().is_some_and(|r| !superseded(state, r)));
        let (reported, alive) = (&self.reported, |id: &RegionId| state.region(*id).is_some());
        let keep = |id: &RegionId| alive(id) || reported.contains_key(id);
        self.loads.retain(|id, _| keep(id));
        self.rates.retain(|id, _| keep(id));
        self.shapes.retain(|id, _| keep(id));
        self.pending.retain(|id, _| keep(id));
        self.joined.retain(|id, until| keep(id) && now.monotonic_ms < *until);
        self.colocating.retain(|id, until| keep(id) && now.monotonic_ms < *until);
    }

    /// Notes the lagging peers a report of Region `id` names, and what that makes of its
    /// health.
    fn note_pending(
        &mut self,
        id: RegionId,
        leader: PeerId,
        pending: &[PeerId],
        now: Now,
    ) -> RegionHealth {
        if pending.is_empty() {
            self.pending.remove(&id);
        } else {
            let before = self.pending.get(&id);
            let since = |peer: PeerId| {
                let known = before.and_then(|b| b.iter().find(|(p, _)| *p == peer));
                known.map_or(now.monotonic_ms, |&(_, since)| since)
            };
            let lagging = pending.iter().map(|&p| (p, since(p))).collect();
            self.pending.insert(id, lagging);
        }
        self.health_at(id, leader, now)
    }

    /// Region `id`'s health as its reports have told it, led by `leader`.
    fn health_at(&self, id: RegionId, leader: PeerId, now: Now) -> RegionHealth {
        let lagging = self.pending.get(&id).map_or(&[][..], Vec::as_slice);
        let step_ms = self.config.timeouts.step_ms;
        let stuck =
            lagging.iter().filter(|(_, since)| now.monotonic_ms.saturating_sub(*since) > step_ms);
        RegionHealth {
            leader,
            pending: lagging.iter().map(|&(p, _)| p).collect(),
            stuck: stuck.map(|&(p, _)| p).collect(),
        }
    }

    /// Region `id` as placement last knew it, and its leader's peer id: its latest report
    /// where no older than the record (see [`Balance::of`]), or the record.
    fn known(&self, state: &PlacementState, id: RegionId) -> Option<(Region, PeerId)> {
        let recorded = state.region(id)?;
        let epoch = |r: &Region| (r.version, r.conf_ver);
        let report = self.reported.get(&id).and_then(|r| Some((r.region.as_ref()?, r)));
        match report.filter(|(region, _)| epoch(region) >= epoch(recorded)) {
            Some((region, report)) => Some((region.clone(), report.leader_peer_id)),
            None => Some((recorded.clone(), state.leader_of(id)?.id)),
        }
    }

    /// Hands what advancing Region `id` came to over to the driver.
    fn take(&mut self, id: RegionId, advance: Advance, intake: &mut Intake) {
        match advance {
            Advance::Send(step) => intake.steps.push(step),
            Advance::NeedsId => {
                self.wanting_id.insert(id);
                intake.need_ids.push(id);
            }
            Advance::Nothing => {}
        }
    }

    /// Drops the stores' counts for balancing once they are due a recount (see
    /// `region_heartbeats`).
    fn expire_balance(&mut self, now: Now) {
        let age = now.monotonic_ms.saturating_sub(self.balance_at_ms);
        if age >= BALANCE_REFRESH_MS || (self.balance_stale && age >= BALANCE_RECOUNT_MS) {
            self.balance = None;
        }
    }

    /// What the placement leader wants in `store`'s next heartbeat, this one having
    /// carried every Region the store leads if `full` (see [`Wants`]).
    pub fn wants(&mut self, state: &PlacementState, store: StoreId, full: bool, now: Now) -> Wants {
        let live = self.liveness(now);
        self.look_out(state, &live);
        if full {
            self.full_at.insert(store, self.outlook_changes);
        }
        let all = self.full_at.get(&store) != Some(&self.outlook_changes);
        self.reported.retain(|_, report| !is_recorded(state, report));
        let leader_store = |id: &RegionId| match self.reported.get(id) {
            Some(report) => report.leader_store(),
            None => state.leader_of(*id).map_or(0, |p| p.store_id),
        };
        let operated = self.operators.keys().filter(|id| leader_store(id) == store);
        let unrecorded = self.reported.iter().filter(|(_, r)| r.leader_store() == store);
        let unrecorded = unrecorded.map(|(id, _)| id);
        let waiting = self.wanting_id.iter().filter(|id| leader_store(id) == store);
        let mut watch: Vec<RegionId> = operated.chain(unrecorded).chain(waiting).copied().collect();
        watch.sort_unstable();
        watch.dedup();
        Wants { all, watch }
    }

    /// Notes a change of the stores or the settings ([`Outlook`]): every store is asked
    /// for every Region again, and the stores' counts are counted again.
    fn look_out(&mut self, state: &PlacementState, live: &Liveness) {
        let stores = state.stores().map(|s| {
            let status = scheduler::store_status(s, live, &self.effective);
            (s.id, status, s.labels.clone())
        });
        let outlook = Outlook {
            stores: stores.collect(),
            settings: state.scheduler_settings().clone(),
            replicas: state.replicas(),
        };
        if self.outlook.as_ref() != Some(&outlook) {
            self.outlook = Some(outlook);
            self.outlook_changes += 1;
            self.balance = None;
        }
    }

    /// The placement group as its leader (this node) sees it: the step its own operator
    /// wants carried out, if any.
    pub fn meta_heartbeat(
        &mut self,
        state: &PlacementState,
        heartbeat: &RegionHeartbeat,
        now: Now,
    ) -> Option<OperatorStep> {
        let region = heartbeat.report.region.as_ref()?;
        let live = self.liveness(now);
        self.effective = self.config.scheduler.under(state.scheduler_settings());
        let leader = heartbeat.report.leader_peer_id;
        let pending = heartbeat.pending.clone();
        let health = RegionHealth { leader, pending, stuck: Vec::new() };
        let operator = self.meta_operator.take();
        match self.advance(state, &live, region, &health, operator, true, now) {
            Advance::Send(step) => Some(step),
            Advance::NeedsId => {
                self.meta_needs_id = true;
                None
            }
            Advance::Nothing => None,
        }
    }

    /// Whether the placement group's own operator waits for an id ([`supply_id`] it
    /// under [`META_ID`]).
    ///
    /// [`supply_id`]: ControlPlane::supply_id
    pub fn meta_needs_id(&mut self) -> bool {
        std::mem::take(&mut self.meta_needs_id)
    }

    /// Advances the Region's operator (or starts one), keeping it if it goes on. One that
    /// ends makes way at once for the next, if the scheduler wants one.
    #[allow(clippy::too_many_arguments)]
    fn advance(
        &mut self,
        state: &PlacementState,
        live: &Liveness,
        region: &Region,
        health: &RegionHealth,
        operator: Option<Operator>,
        is_meta: bool,
        now: Now,
    ) -> Advance {
        let (mut operator, fresh) = match operator {
            // A balancing move gives way once a store it involves is not up: the Region
            // may need repair, which it would otherwise hold up.
            Some(operator)
                if operator.kind().balances()
                    && !involves_only_up_stores(
                        state,
                        live,
                        &self.effective,
                        region,
                        &operator,
                    ) =>
            {
                self.counts.cancelled += 1;
                return self.advance(state, live, region, health, None, is_meta, now);
            }
            Some(operator)
                if (operator.kind().merge_target())
                    .and_then(|target| self.known(state, target))
                    .is_some_and(|(target, _)| operator.merge_target_moved(region, &target)) =>
            {
                self.counts.cancelled += 1;
                return self.advance(state, live, region, health, None, is_meta, now);
            }
            Some(operator) => (operator, false),
            None => {
                let config = &self.effective;
                let decision = scheduler::decide(state, live, config, region, health, is_meta);
                // The target of a merge under way only gets repaired: a change of its
                // shape would roll the merge back.
                let free = !is_meta && !self.merge_targets().any(|t| t == region.id);
                // A merge comes before balancing (as PD's merge checker runs before its
                // schedulers), and a Region that a neighbour is joining is not balanced:
                // otherwise the balancer takes back each replica the merge brings over.
                let joined = self.is_joined(region.id, now)
                    || self.colocating.get(&region.id).is_some_and(|&t| now.monotonic_ms < t);
                let decision = match decision {
                    Some(decision) => Some(decision),
                    None if free => match self.merge(state, live, region, health, now) {
                        Some(decision) => Some(decision),
                        None if joined => None,
                        None => self.rebalance(state, live, region, health, now),
                    },
                    None => None,
                };
                let Some(decision) = decision else {
                    return Advance::Nothing;
                };
                match self.operator_for(region, health, decision, is_meta, now) {
                    Ok(operator) => (operator, true),
                    Err(advance) => {
                        // The stores' counts took the decision as made: they stand for
                        // the rest of this batch (the batch starts no second move for
                        // the same imbalance), not beyond.
                        self.balance_tentative = true;
                        return advance;
                    }
                }
            }
        };
        // Voters on stores not up are passed over as lagging ones are, for leadership
        // handed on before a leader's removal (an idle dead voter does not show as lagging).
        let mut pending = health.pending.clone();
        let config = &self.effective;
        let down = region.voters().filter(|p| !is_up(state, live, config, p.store_id));
        pending.extend(down.map(|p| p.id).filter(|id| !health.pending.contains(id)));
        let (leader, timeouts) = (health.leader, self.config.timeouts);
        let progress = operator.observe(region, leader, &pending, now.monotonic_ms, timeouts);
        let step = match progress {
            Progress::Send(step) => Advance::Send(step),
            Progress::Wait => Advance::Nothing,
            Progress::Ended(ended) => {
                // Where the operator went is news for the stores' counts.
                self.balance_stale = true;
                match ended {
                    Ended::Finished => self.counts.finished += 1,
                    Ended::TimedOut => self.counts.timed_out += 1,
                    Ended::Cancelled => self.counts.cancelled += 1,
                }
                return match fresh {
                    true => Advance::Nothing,
                    false => self.advance(state, live, region, health, None, is_meta, now),
                };
            }
        };
        match is_meta {
            true => self.meta_operator = Some(operator),
            false => {
                self.operators.insert(region.id, operator);
            }
        }
        step
    }

    /// A move that evens out the stores, if `region` may make one, fewer than
    /// `balance_limit` are under way, and the stores it involves are within their limit.
    fn rebalance(
        &mut self,
        state: &PlacementState,
        live: &Liveness,
        region: &Region,
        health: &RegionHealth,
        now: Now,
    ) -> Option<Decision> {
        let config = &self.effective;
        let settings = state.scheduler_settings();
        if config.balance_limit == 0 {
            return None;
        }
        let balancing = self.operators.values().filter(|o| o.kind().balances());
        let leader_moves =
            balancing.clone().filter(|o| matches!(o.kind(), OperatorKind::TransferLeader(_)));
        let leader_moves = leader_moves.count();
        let replica_moves = balancing.count() - leader_moves;
        let (operators, loads, reported) = (&self.operators, &self.rates, &self.reported);
        if self.balance.is_none() {
            self.balance_at_ms = now.monotonic_ms;
            self.balance_stale = false;
        }
        let balance = self.balance.get_or_insert_with(|| {
            Balance::of(state, live, config, operators.values(), loads, reported)
        });
        let minute_ago = now.monotonic_ms.saturating_sub(60_000);
        for moves in self.replica_moves.values_mut() {
            while moves.front().is_some_and(|&at| at <= minute_ago) {
                moves.pop_front();
            }
        }
        let moved = |store: &StoreId| self.replica_moves.get(store).map_or(0, VecDeque::len);
        // Replica moves and leader moves have `balance_limit` each.
        let full = replica_moves >= config.balance_limit;
        let saturated = (balance.replicas.keys())
            .filter(|store| {
                full || config.store_limit(**store).is_some_and(|limit| moved(store) >= limit)
            })
            .copied()
            .collect();
        let allowed = scheduler::Allowed {
            replicas: !settings.replicas_paused,
            leaders: !settings.leaders_paused,
            hot: !settings.hot_paused,
            saturated,
            leader_slots: leader_moves < config.balance_limit,
        };
        let load = loads.get(&region.id);
        let decision = scheduler::rebalance(region, health, load, balance, &allowed)?;
        let leader_store = region.peer(health.leader).map_or(0, |p| p.store_id);
        // What the decision was taken on, to tell afterwards which rule moved what.
        let (from, to) = match &decision {
            Decision::MoveReplica { from, to } => (from.store_id, *to),
            Decision::MoveLeader(to) => (leader_store, to.store_id),
            _ => (0, 0),
        };
        let figures = |store: StoreId| {
            let get = |m: &BTreeMap<StoreId, u64>| m.get(&store).copied().unwrap_or(0);
            let replicas = balance.replicas.get(&store).copied().unwrap_or(0);
            let leaders = balance.leaders.get(&store).copied().unwrap_or(0);
            let (mib, writes, traffic) =
                (get(&balance.weights) >> 20, get(&balance.writes), get(&balance.traffic));
            format!("{replicas} replicas {mib} MiB {leaders} leaders {traffic} B/s led {writes} B/s written")
        };
        tracing::info!(
            region = region.id,
            ?decision,
            size_mib = load.map_or(0, |l| l.approximate_size >> 20),
            bytes_per_sec = load.map_or(0, |l| l.bytes_per_sec()),
            written_per_sec = load.map_or(0, |l| l.written_bytes_per_sec()),
            from = %figures(from),
            to = %figures(to),
            tolerance_mib = balance.tolerance >> 20,
            "balancing move"
        );
        balance.record(&decision, leader_store, load);
        Some(decision)
    }

    /// Whether a neighbour moved a replica towards Region `id` to merge into it within
    /// the last [`JOINED_HOLD_MS`].
    fn is_joined(&self, id: RegionId, now: Now) -> bool {
        self.joined.get(&id).is_some_and(|&until| now.monotonic_ms < until)
    }

    /// The targets of the merges under way.
    /// The neighbours Regions merge into, or move replicas beside to merge into: each
    /// counts against the merge limit, and only gets repaired meanwhile (a colocation's
    /// target balanced away while the move ran took the point out of it).
    fn merge_targets(&self) -> impl Iterator<Item = RegionId> + '_ {
        self.operators.values().filter_map(|o| o.kind().merge_target())
    }

    /// Merges whose source is gone from placement's record (the target absorbed it, and
    /// its report is recorded) are done: the source sends no more heartbeats to end them.
    fn end_merges(&mut self, state: &PlacementState) {
        let done: Vec<RegionId> = (self.operators.iter())
            .filter(|(id, o)| {
                matches!(o.kind(), OperatorKind::Merge(_)) && state.region(**id).is_none()
            })
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            self.operators.remove(&id);
            self.shapes.remove(&id);
            self.pending.remove(&id);
            self.counts.finished += 1;
            self.balance_stale = true;
        }
    }

    /// Operators whose step has run past its time, whether their Region reports or not:
    /// one whose Region no longer does (merged away while a move on it waited, say) would
    /// otherwise stay for the term, counted against the balancing limits.
    fn end_timed_out(&mut self, now: Now) {
        let timeouts = self.config.timeouts;
        let before = self.operators.len();
        self.operators.retain(|_, operator| !operator.timed_out(now.monotonic_ms, timeouts));
        let ended = (before - self.operators.len()) as u64;
        if ended > 0 {
            self.counts.timed_out += ended;
            self.balance_stale = true;
        }
    }

    /// A merge of `region` into a neighbour, or a move of one of its replicas towards it,
    /// if it may make one (see [`crate::merge`]) and fewer than the limit are under way.
    fn merge(
        &mut self,
        state: &PlacementState,
        live: &Liveness,
        region: &Region,
        health: &RegionHealth,
        now: Now,
    ) -> Option<Decision> {
        let config = &self.effective;
        let targets: Vec<RegionId> = self.merge_targets().collect();
        if config.merge.max_size == 0 || targets.len() >= config.merge.limit {
            return None;
        }
        // A Region a neighbour is moving replicas towards waits for it: moving its own
        // towards the neighbour meanwhile would swap their stores, again and again.
        if self.is_joined(region.id, now) {
            return None;
        }
        let busy = |id: RegionId| self.operators.contains_key(&id) || targets.contains(&id);
        let interval = config.merge.split_merge_interval_ms;
        let settled = |id: RegionId| {
            let version = state.region(id).map(|r| r.version);
            self.shapes.get(&id).is_some_and(|&(v, since)| {
                Some(v) == version && now.monotonic_ms.saturating_sub(since) >= interval
            })
        };
        let up = |store: StoreId| is_up(state, live, config, store);
        let view = crate::merge::MergeView {
            state,
            config,
            loads: &self.rates,
            busy: &busy,
            settled: &settled,
            up: &up,
        };
        let decision = crate::merge::merge_decision(&view, region, health.leader, &health.pending)?;
        tracing::info!(region = region.id, ?decision, "merge");
        Some(match decision {
            crate::merge::MergeDecision::Merge(target) => Decision::Merge(target),
            crate::merge::MergeDecision::Colocate { from, to, target } => {
                let until = now.monotonic_ms.saturating_add(JOINED_HOLD_MS);
                self.joined.retain(|_, &mut t| t > now.monotonic_ms);
                self.joined.insert(target, until);
                self.colocating.retain(|_, &mut t| t > now.monotonic_ms);
                self.colocating.insert(region.id, until);
                let decision = Decision::Colocate { from, to, target };
                // Counted into the kept figures as a balancing move is, or the next batch
                // balances against counts that miss it.
                if let Some(balance) = self.balance.as_mut() {
                    let leader_store = region.peer(health.leader).map_or(0, |p| p.store_id);
                    balance.record(&decision, leader_store, self.rates.get(&region.id));
                }
                decision
            }
        })
    }

    /// The operator that carries out `decision`, or why there is none yet.
    fn operator_for(
        &mut self,
        region: &Region,
        health: &RegionHealth,
        decision: Decision,
        is_meta: bool,
        now: Now,
    ) -> Result<Operator, Advance> {
        let at = now.monotonic_ms;
        let key = if is_meta { META_ID } else { region.id };
        let operator = match decision {
            Decision::AddLearner(store) => {
                let id = self.ids.remove(&key).ok_or(Advance::NeedsId)?;
                Operator::add_replica(region, store, id, at)
            }
            Decision::AddExtraLearner(store) => {
                let id = self.ids.remove(&key).ok_or(Advance::NeedsId)?;
                Operator::add_learner(region, store, id, at)
            }
            Decision::Promote(peers) => Operator::new(
                region,
                OperatorKind::PromoteLearners,
                vec![crate::operator::StepAction::Promote(peers)],
                at,
            ),
            Decision::Remove(peer) => Operator::remove_replica(region, peer, None, at),
            Decision::MoveReplica { from, to } => {
                let id = self.ids.remove(&key).ok_or(Advance::NeedsId)?;
                for store in [from.store_id, to] {
                    self.replica_moves.entry(store).or_default().push_back(at);
                }
                Operator::move_replica(region, from, to, id, at)
            }
            Decision::Colocate { from, to, target } => {
                let id = self.ids.remove(&key).ok_or(Advance::NeedsId)?;
                for store in [from.store_id, to] {
                    self.replica_moves.entry(store).or_default().push_back(at);
                }
                Operator::colocate(region, from, to, target, id, at)
            }
            Decision::MoveLeader(to) => Operator::transfer_leader(region, to, at),
            Decision::Merge(target) => Operator::merge(region, &target, at),
            // The leader's own replica must go: leadership moves first.
            Decision::TransferLeader(successor) => {
                let victim = region.peer(health.leader).ok_or(Advance::Nothing)?.clone();
                Operator::remove_replica(region, victim, Some(successor), at)
            }
        };
        // An id supplied for another decision is not kept: the next one gets a fresh one.
        self.ids.remove(&key);
        self.counts.started += 1;
        Ok(operator)
    }

    /// Work on the leader's own clock: the placement commands to propose now (the stores'
    /// last heartbeats every `record_liveness_ms`; drained stores that hold no replica any
    /// more, not even of the placement group (`meta_peers`), retired).
    pub fn tick(
        &mut self,
        state: &PlacementState,
        meta_peers: &[scandium_types::Peer],
        now: Now,
    ) -> Vec<Kind> {
        let mut proposals = Vec::new();
        if now.monotonic_ms.saturating_sub(self.swept_ms) >= self.config.record_liveness_ms {
            self.swept_ms = now.monotonic_ms;
            self.sweep(state, now);
        }
        let since = now.monotonic_ms.saturating_sub(self.recorded_ms);
        let due = since >= self.config.record_liveness_ms;
        if due && !self.unrecorded.is_empty() {
            self.recorded_ms = now.monotonic_ms;
            let seen = std::mem::take(&mut self.unrecorded)
                .into_iter()
                .map(|(store_id, wall_ms)| StoreSeen { store_id, wall_ms })
                .collect();
            proposals.push(Kind::StoresSeen(StoresSeen { seen }));
        }
        for store in state.stores().filter(|s| s.state() == StoreState::Offline) {
            // Nor while an operator is putting a replica there, or a report not yet
            // recorded shows one: the record alone lags both.
            let holds = state.replica_count(store.id) > 0
                || meta_peers.iter().any(|p| p.store_id == store.id)
                || self.operators.values().any(|o| o.adds_to(store.id))
                || self.meta_operator.as_ref().is_some_and(|o| o.adds_to(store.id))
                || (self.reported.values()).any(|r| {
                    // Of a Region still recorded: the last report of one merged away
                    // stays until the next leader change, and held a drained store for
                    // good (simulator seed 116004084).
                    r.region.as_ref().is_some_and(|r| {
                        r.peer_on_store(store.id).is_some() && state.region(r.id).is_some()
                    })
                });
            if !holds {
                let tombstone = StoreState::Tombstone as i32;
                let change = StoreStateChange { store_id: store.id, state: tombstone };
                proposals.push(Kind::SetStoreState(change));
            }
        }
        proposals
    }
}

#[cfg(test)]
mod tests;
