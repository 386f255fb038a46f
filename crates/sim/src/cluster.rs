//! The simulated cluster: real [`Store`]s on [`FaultEngine`]s, a network of delayed,
//! dropped, duplicated and partitioned messages, and one event queue ordered by simulated
//! time. Nothing here reads a wall clock or spawns a thread; every random choice comes from
//! the one generator the caller passes in, so a seed replays a run exactly.
//!
//! A node is driven as the server's Raft thread drives it: ticks every `tick_ms`, messages
//! stepped in as they arrive, and after each event rounds of `handle_ready_sending` until
//! nothing is left, its messages leaving as the round hands them out. A round that fails
//! (a failed fsync, a full disk) stops the node, as `raft_driver` exits the process.

use crate::flows::{self, InFlight, Sync};
use rand::rngs::StdRng;
use rand::Rng;
use scandium_placement::{
    Command, ControlPlane, HeartbeatFilter, Kind, LeaderTso, PlacementState, Response,
};
use scandium_raftstore::snapshot::{for_each_chunk, SnapshotChunk, SnapshotHeader};
use scandium_raftstore::META_GROUP_ID;
use scandium_raftstore::{
    ApplyObserver, ApplyOutput, MetaStateMachine, PeerChange, PeerMessage, RaftCommand, RaftConfig,
    RaftstoreError, ReadCallback, Registry, Store,
};
use scandium_storage::{Engine, EngineRef, FaultEngine, Faults, WriteBatch};
use scandium_txn::command::RemoteCall;
use scandium_txn::mvcc::{LockType, MvccReader};
use scandium_txn::wake::Recorded;
use scandium_txn::{
    Breakages, IndexFollower, LockIndex, NewestCache, NodeSettings, TxnError, TxnNode,
};
use scandium_types::{Peer, Region, StoreState, TimeStamp};
use std::any::Any;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::sync::RwLock;
use std::sync::{Arc, Mutex};

/// The one data Region of the simulated cluster.
pub const REGION: u64 = 1;
/// Simulated milliseconds per Raft tick.
pub const TICK_MS: u64 = 10;
/// Election timeout in ticks shared by every node (leases and vote refusal follow it);
/// each node's actual timeout is fixed a few ticks above it, from the seed.
pub const ELECTION_TICKS: usize = 10;

/// The placement group's state machine, as the server's `MetaApplier` runs it.
struct SimMeta {
    state: Arc<RwLock<PlacementState>>,
}

impl MetaStateMachine for SimMeta {
    fn apply(&mut self, _: u64, command: &[u8], batch: &mut WriteBatch) -> Box<dyn Any + Send> {
        Box::new(self.state.write().unwrap_or_else(|e| e.into_inner()).apply(command, batch))
    }
    fn restore(&mut self, engine: &EngineRef) {
        if let Ok(Some(loaded)) = PlacementState::load(engine) {
            *self.state.write().unwrap_or_else(|e| e.into_inner()) = loaded;
        }
    }
}

/// Each node's newest-record cache: large enough that nothing is evicted, so that which
/// keys it holds depends on nothing but the run.
const NEWEST_CACHE_BYTES: u64 = 64 << 20;

/// Follows replicated commands into a node's lock index and newest-record cache, as the
/// server's `ReplicaObserver` does.
struct SimObserver {
    engine: EngineRef,
    follower: IndexFollower,
}

impl ApplyObserver for SimObserver {
    fn on_applied(&mut self, _: &Region, command: &RaftCommand) {
        self.follower.applied(command.data_writes()).expect("the simulator writes valid locks");
    }
    fn on_replaced(&mut self, region: &Region) {
        let snapshot = self.engine.snapshot();
        let reloaded = self.follower.replaced(&*snapshot, &region.start_key, &region.end_key);
        reloaded.expect("memory engines read");
    }
}

/// A node's transactional state on `engine`, as the server builds it (its lock index
/// loaded from the disk, an empty cache), broken as `breakages` says.
fn new_txn_node(engine: &EngineRef, breakages: Breakages, woken: &Arc<Recorded>) -> Arc<TxnNode> {
    let engine = engine.clone();
    let lock_index = Arc::new(LockIndex::load(&engine).expect("memory engines read"));
    let newest = Arc::new(NewestCache::new(NEWEST_CACHE_BYTES));
    let settings = NodeSettings { breakages, ..NodeSettings::default() };
    Arc::new(TxnNode::new(engine, lock_index, newest, settings, woken.clone()))
}

/// Where every node's wall clock starts, in milliseconds.
const WALL_EPOCH_MS: u64 = 1_000_000;

/// Network behaviour, fixed for a run.
#[derive(Clone, Debug)]
pub struct NetworkConfig {
    /// One-way delay of a message, uniformly in this range of milliseconds.
    pub delay_ms: (u64, u64),
    /// Probability that a message is lost.
    pub drop: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
}

/// What the simulation learns of what it asked a node: a command's answer, or a
/// timestamp. Collected from the nodes' callbacks (which must be `Send`, hence the mutex)
/// and handed to the caller of [`Cluster::next`].
pub enum Answer {
    /// A command finished (see [`Cluster::submit`]).
    Done {
        /// The operation that submitted it.
        op: u64,
        /// Its output, or why it has none.
        result: Result<flows::Output, flows::Failure>,
    },
    /// A timestamp request finished: the timestamp, or `None` if it failed.
    Timestamp {
        /// The operation that asked.
        op: u64,
        /// What it got.
        ts: Option<TimeStamp>,
    },
}

/// What stores' callbacks leave: answers for the caller, and the steps of timestamp
/// requests and of commands, which the cluster takes itself.
pub(crate) enum Reply {
    Answer(Answer),
    TsoConfirmed {
        op: u64,
        node: u64,
        term: u64,
        result: Result<(), RaftstoreError>,
    },
    TsoRaised {
        op: Option<u64>,
        node: u64,
        term: u64,
        tries: u32,
        result: Result<ApplyOutput, RaftstoreError>,
    },
    /// A command's ReadIndex round finished.
    Gated {
        node: u64,
        incarnation: u64,
        cid: u64,
        result: Result<(), RaftstoreError>,
    },
    /// A command's proposal was applied or failed.
    Applied {
        node: u64,
        incarnation: u64,
        cid: u64,
        result: Result<ApplyOutput, RaftstoreError>,
    },
    /// A placement proposal of the simulation was applied or failed.
    Placement {
        purpose: flows::Purpose,
        result: Result<ApplyOutput, RaftstoreError>,
    },
    /// A split was applied or failed.
    Split {
        split: u64,
        result: Result<ApplyOutput, RaftstoreError>,
    },
}

type Answers = Arc<Mutex<Vec<Reply>>>;

pub(crate) struct Node {
    pub(crate) store: Option<Store>,
    engine: FaultEngine,
    pub(crate) registry: Registry,
    config: RaftConfig,
    /// Added to the simulated time to give this node's monotonic clock: forward jumps
    /// model a suspended machine whose clock ran on.
    clock_offset_ms: u64,
    /// Until when the node is paused (SIGSTOP): events for it wait until then.
    paused_until: u64,
    /// How long each round's fsync takes, in milliseconds (a slow disk).
    disk_ms: u64,
    pub(crate) crashes: u64,
    /// Groups its stores before the last crash put to sleep.
    slept_before: u64,
    /// The placement state this node has applied.
    pub(crate) placement: Arc<RwLock<PlacementState>>,
    /// The timestamp allocator of its current placement-leader term.
    tso: LeaderTso,
    /// Whether a background raise of the timestamp mark is in flight.
    raising: bool,
    /// Added to the simulated time to give the wall clock (it may jump back).
    wall_offset_ms: i64,
    /// The node's transactional state (latches, `max_ts`, the lock index, the newest-
    /// record cache, lock waits): the server's own, new on every start, its indexes
    /// rebuilt from the disk and kept by the node's commands and by [`SimObserver`].
    pub(crate) txn: Arc<TxnNode>,
    /// Commands whose waits ended, for the cluster to resume.
    pub(crate) woken: Arc<Recorded>,
    /// Commands in progress, by id.
    pub(crate) commands: BTreeMap<u64, InFlight>,
    /// The control plane, running while the node leads placement (memory: new on every
    /// start).
    pub(crate) control: ControlPlane,
    /// Which Regions the node's next heartbeat reports, and to which placement leader it
    /// sent the last (memory: forgotten on every start, but for the beats' numbering).
    pub(crate) reporting: (HeartbeatFilter, u64),
}

/// Something scheduled to happen at a simulated time.
pub(crate) enum Event {
    Tick(u64),
    Deliver {
        from: u64,
        message: Box<PeerMessage>,
        snapshot: Option<Arc<Vec<SnapshotChunk>>>,
    },
    /// Hands the event to the caller of [`Cluster::next`] (client and fault events).
    External(u64),
    /// Something for a command in progress on `node` (see `commands.rs`).
    Command {
        node: u64,
        incarnation: u64,
        cid: u64,
        step: flows::Step,
    },
    /// A remote call arrives at the node leading its key's Region.
    RemoteCall {
        node: u64,
        call: RemoteCall,
        target: flows::Target,
        parent: flows::Parent,
    },
    /// A node's heartbeat is due.
    Heartbeat(u64),
    /// A heartbeat reaches the node its sender believes leads placement.
    HeartbeatArrives {
        to: u64,
        from: u64,
        heartbeats: scandium_placement::Selection,
    },
    /// The answer to heartbeat `seq` reaches its sender: operator steps for the Regions it
    /// leads, and what the placement leader wants in its next heartbeat.
    Steps {
        to: u64,
        steps: Vec<scandium_placement::OperatorStep>,
        seq: u64,
        wants: scandium_placement::Wants,
    },
    /// Asks again for the timestamp a new leader raises `max_ts` to.
    SyncMaxTs {
        node: u64,
        incarnation: u64,
        region: u64,
        term: u64,
        attempt: u32,
    },
}

/// The simulated cluster and its event queue.
pub struct Cluster {
    pub(crate) nodes: Vec<Node>,
    now: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    /// By sequence number; only looked up, never iterated, so a hash map keeps runs
    /// deterministic (a B-tree moved the large events around on every removal).
    events: HashMap<u64, Event>, // lookups only
    next_seq: u64,
    /// Links `(from, to)` that lose every message.
    pub(crate) blocked: BTreeSet<(u64, u64)>,
    pub(crate) network: NetworkConfig,
    pub(crate) answers: Answers,
    /// A deliberately broken read path, to prove the checks catch one: any node that
    /// believes it leads serves reads from its state, with no lease and no ReadIndex.
    pub unsafe_reads: bool,
    /// A deliberately broken timestamp oracle: a new placement leader starts from its own
    /// wall clock instead of the persisted mark.
    pub unsafe_tso: bool,
    /// Deliberate breakages of the nodes' transactional state (see [`Breakages`]).
    breakages: Breakages,
    /// `max_ts` synchronisations waiting for their timestamps, by operation.
    pub(crate) syncs: BTreeMap<u64, Sync>,
    /// Numbers the `max_ts` synchronisations.
    pub(crate) next_sync: u64,
    /// A deliberately broken control plane (see `ControlPlane::forgetting_liveness`): a
    /// new placement leader forgets when stores were last heard from.
    pub unsafe_liveness: bool,
    /// Splits in progress, by number.
    pub(crate) splits: BTreeMap<u64, flows::SplitFlow>,
    pub(crate) next_split: u64,
    /// Splits applied.
    pub splits_done: u64,
    /// Regions absorbed by a merge.
    pub merged: BTreeSet<u64>,
    /// Merges whose prepare the control plane proposed since the run last took them
    /// (source, target), for faults aimed at them.
    pub prepares: Vec<(u64, u64)>,
    /// Operators the control planes of crashed nodes had finished.
    operators_lost: u64,
    /// Messages handed to the network and delivered, for the run's statistics.
    pub sent: u64,
    /// Messages delivered.
    pub delivered: u64,
    /// The nodes' directories for snapshots staged in files (deleted with the cluster).
    _snapshots: tempfile::TempDir,
}

impl Cluster {
    /// `n` nodes, the first `replicas` of them with a replica of [`REGION`] (every key),
    /// each with its own fixed election timeout drawn from `rng`. Peer ids of the first
    /// replicas are their store ids. The nodes' transactional state is broken as
    /// `breakages` says (nothing, for a real run).
    pub fn new(
        n: u64,
        replicas: u64,
        network: NetworkConfig,
        breakages: Breakages,
        rng: &mut StdRng,
    ) -> Cluster {
        let region = Region {
            id: REGION,
            peers: (1..=replicas.min(n)).map(|id| Peer::new(id, id)).collect(),
            ..Default::default()
        };
        // The placement group on the same replicas, peer ids 100 + store id, its state
        // bootstrapped as a one-store cluster holding the data Region.
        let meta = Region {
            id: META_GROUP_ID,
            peers: region.peers.iter().map(|p| Peer::new(100 + p.store_id, p.store_id)).collect(),
            ..Default::default()
        };
        let store = scandium_types::Store {
            id: 1,
            address: "sim".into(),
            state: StoreState::Up as i32,
            ..Default::default()
        };
        let (mut state, mut placement) =
            PlacementState::bootstrap(1, 10_000, store, vec![region.clone()], Vec::new());
        // Every node's store registered, as each server does on its first start.
        for id in 2..=n {
            use prost::Message as _;
            let store = scandium_types::Store { id, address: "sim".into(), ..Default::default() };
            let command = Command::new(Kind::PutStore(store)).encode_to_vec();
            state.apply(&command, &mut placement);
        }
        // Three runs in four hibernate idle groups (after somewhat more than a lease).
        let hibernate_after =
            if rng.gen_bool(0.75) { ELECTION_TICKS + rng.gen_range(1..=10) } else { 0 };
        let mut timeouts: Vec<usize> = (0..n as usize).map(|i| ELECTION_TICKS + 2 * i).collect();
        for i in (1..timeouts.len()).rev() {
            timeouts.swap(i, rng.gen_range(0..=i));
        }
        // About half the nodes stage received snapshots in files and ingest them, as a
        // server does; the others in the engine, as a node of an earlier version did, or
        // one on an in-memory engine does. A node keeps its choice across restarts.
        let snapshots = tempfile::Builder::new()
            .prefix("scandium-sim-")
            .tempdir()
            .expect("the simulator needs a temporary directory for staged snapshots");
        let in_files: Vec<bool> = (0..n).map(|_| rng.gen_bool(0.5)).collect();
        let nodes = (1..=n)
            .map(|id| {
                let snapshot_dir =
                    in_files[id as usize - 1].then(|| snapshots.path().join(format!("node-{id}")));
                let engine = FaultEngine::new();
                if region.peer_on_store(id).is_some() {
                    let mut batch = WriteBatch::new();
                    scandium_raftstore::bootstrap::write_initial_group(&mut batch, &region);
                    scandium_raftstore::bootstrap::write_initial_group(&mut batch, &meta);
                    batch.extend(placement.clone());
                    engine.write(batch).expect("a fresh engine accepts the bootstrap");
                    engine.sync().expect("a fresh engine syncs");
                }
                let timeout = timeouts[id as usize - 1];
                let txn_engine: EngineRef = Arc::new(engine.clone());
                Node {
                    store: None,
                    engine,
                    registry: Registry::new(),
                    config: RaftConfig {
                        tick_ms: TICK_MS,
                        election_ticks: ELECTION_TICKS,
                        min_election_ticks: timeout,
                        max_election_ticks: timeout + 1,
                        heartbeat_ticks: 2,
                        log_gc_threshold: 16,
                        max_log_entries: 64,
                        snapshot_dir,
                        ingest_inline: true,
                        check_invariants: true,
                        hibernate_after_ticks: hibernate_after,
                        ..RaftConfig::default()
                    },
                    clock_offset_ms: 0,
                    paused_until: 0,
                    disk_ms: 0,
                    crashes: 0,
                    slept_before: 0,
                    placement: Arc::default(),
                    tso: LeaderTso::default(),
                    raising: false,
                    wall_offset_ms: 0,
                    // Replaced by `start`.
                    txn: new_txn_node(&txn_engine, breakages, &Arc::default()),
                    woken: Arc::default(),
                    commands: BTreeMap::new(),
                    control: flows::new_control(false),
                    reporting: Default::default(),
                }
            })
            .collect();
        let mut cluster = Cluster {
            nodes,
            now: 0,
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            next_seq: 0,
            blocked: BTreeSet::new(),
            network,
            answers: Arc::default(),
            unsafe_reads: false,
            unsafe_tso: false,
            breakages,
            syncs: BTreeMap::new(),
            next_sync: 0,
            unsafe_liveness: false,
            splits: BTreeMap::new(),
            next_split: 0,
            splits_done: 0,
            merged: BTreeSet::new(),
            prepares: Vec::new(),
            operators_lost: 0,
            sent: 0,
            delivered: 0,
            _snapshots: snapshots,
        };
        for id in 1..=n {
            cluster.start(id);
            // Ticks of different nodes are out of phase, as their timers would be.
            let phase = rng.gen_range(0..TICK_MS);
            cluster.schedule(phase, Event::Tick(id));
            let phase = rng.gen_range(0..flows::HEARTBEAT_MS);
            cluster.schedule(phase, Event::Heartbeat(id));
        }
        cluster
    }

    /// The simulated time, in milliseconds.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Node ids, 1-based.
    pub fn ids(&self) -> std::ops::RangeInclusive<u64> {
        1..=self.nodes.len() as u64
    }

    pub(crate) fn node(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[id as usize - 1]
    }

    pub(crate) fn clock(&self, id: u64) -> u64 {
        self.now + self.nodes[id as usize - 1].clock_offset_ms
    }

    /// Whether the node's process is running (it may be paused).
    pub fn is_up(&self, id: u64) -> bool {
        self.nodes[id as usize - 1].store.is_some()
    }

    /// How often the node crashed (or stopped on a storage failure).
    pub fn crashes(&self, id: u64) -> u64 {
        self.nodes[id as usize - 1].crashes
    }

    pub(crate) fn schedule(&mut self, delay: u64, event: Event) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.events.insert(seq, event);
        self.queue.push(Reverse((self.now + delay, seq)));
    }

    /// Schedules external event `token` (a client's or a fault's) after `delay` ms.
    pub fn schedule_external(&mut self, delay: u64, token: u64) {
        self.schedule(delay, Event::External(token));
    }

    /// Runs internal events until the next external one, which it returns with the
    /// answers stores gave meanwhile; `None` when the queue is empty or `until` is reached.
    pub fn next(&mut self, until: u64, rng: &mut StdRng) -> (Option<u64>, Vec<Answer>) {
        // Answers given while the caller acted (a command refused at once) come first.
        let answers = self.take_answers_with(rng);
        if !answers.is_empty() {
            return (None, answers);
        }
        loop {
            let Some(&Reverse((time, seq))) = self.queue.peek() else {
                return (None, self.take_answers_with(rng));
            };
            if time > until {
                self.now = until;
                return (None, self.take_answers_with(rng));
            }
            self.queue.pop();
            self.now = self.now.max(time);
            let event = self.events.remove(&seq).expect("queued events are kept");
            match event {
                Event::External(token) => return (Some(token), self.take_answers_with(rng)),
                Event::Tick(id) => {
                    self.schedule(TICK_MS, Event::Tick(id));
                    if !self.is_serving(id) {
                        // A paused process misses its timer; it ticks again on the first
                        // period after it resumes, as the Raft thread's timer would.
                        continue;
                    }
                    let now = self.clock(id);
                    if let Some(store) = self.node(id).store.as_mut() {
                        store.tick(now);
                    }
                    self.pump(id, rng);
                }
                Event::Deliver { from, message, snapshot } => {
                    let to = message.to.store_id;
                    if self.nodes[to as usize - 1].paused_until > self.now {
                        // Held in the socket's buffers until the process resumes, and then
                        // worked through over a few milliseconds: requests that waited as
                        // well may be served first.
                        let delay = self.nodes[to as usize - 1].paused_until - self.now
                            + rng.gen_range(0..10);
                        self.schedule(delay, Event::Deliver { from, message, snapshot });
                        continue;
                    }
                    self.deliver(from, *message, snapshot);
                    self.pump(to, rng);
                }
                Event::Command { node, incarnation, cid, step } => {
                    if let Some(delay) = self.held_by_pause(node) {
                        let event = Event::Command { node, incarnation, cid, step };
                        self.schedule(delay + rng.gen_range(0..10), event);
                        continue;
                    }
                    if self.nodes[node as usize - 1].crashes == incarnation {
                        self.on_step(node, cid, step, rng);
                    }
                }
                Event::RemoteCall { node, call, target, parent } => {
                    if let Some(delay) = self.held_by_pause(node) {
                        let event = Event::RemoteCall { node, call, target, parent };
                        self.schedule(delay + rng.gen_range(0..10), event);
                        continue;
                    }
                    self.serve_remote(node, call, target, parent, rng);
                }
                Event::Heartbeat(id) => self.heartbeat(id, rng),
                Event::HeartbeatArrives { to, from, heartbeats } => {
                    if let Some(delay) = self.held_by_pause(to) {
                        let event = Event::HeartbeatArrives { to, from, heartbeats };
                        self.schedule(delay + rng.gen_range(0..10), event);
                        continue;
                    }
                    self.take_heartbeat(to, from, heartbeats, rng);
                }
                Event::Steps { to, steps, seq, wants } => {
                    if let Some(delay) = self.held_by_pause(to) {
                        let event = Event::Steps { to, steps, seq, wants };
                        self.schedule(delay + rng.gen_range(0..10), event);
                        continue;
                    }
                    self.take_answer(to, steps, seq, wants, rng);
                }
                Event::SyncMaxTs { node, incarnation, region, term, attempt } => {
                    if self.nodes[node as usize - 1].crashes == incarnation && self.is_up(node) {
                        self.sync_max_ts(node, region, term, attempt, rng);
                    }
                }
            }
            let answers = self.take_answers_with(rng);
            if !answers.is_empty() {
                return (None, answers);
            }
        }
    }

    /// How much longer node `id` is paused, if it is: what arrives for it waits.
    fn held_by_pause(&self, id: u64) -> Option<u64> {
        let until = self.nodes[id as usize - 1].paused_until;
        (until > self.now).then(|| until - self.now)
    }

    /// The answers for the caller; the steps of timestamp requests and of commands are
    /// taken here, and may produce further answers.
    fn take_answers_with(&mut self, rng: &mut StdRng) -> Vec<Answer> {
        let mut answers = self.take_replies(rng);
        answers.retain(|answer| match answer {
            Answer::Timestamp { op, ts } if self.syncs.contains_key(op) => {
                self.on_sync_timestamp(*op, *ts);
                false
            }
            _ => true,
        });
        answers
    }

    /// The stores' replies and the commands' wake-ups, until none is left: answers for
    /// the caller, the rest taken here.
    fn take_replies(&mut self, rng: &mut StdRng) -> Vec<Answer> {
        let mut out = Vec::new();
        loop {
            let answers = std::mem::take(&mut *lock(&self.answers));
            let woken: Vec<(u64, u64)> = self
                .ids()
                .flat_map(|id| {
                    self.nodes[id as usize - 1].woken.take().into_iter().map(move |c| (id, c))
                })
                .collect();
            if answers.is_empty() && woken.is_empty() {
                return out;
            }
            for answer in answers {
                match answer {
                    Reply::TsoConfirmed { op, node, term, result } => match result {
                        Ok(()) => self.allocate(node, op, term, 0, rng),
                        Err(_) => out.push(Answer::Timestamp { op, ts: None }),
                    },
                    Reply::TsoRaised { op, node, term, tries, result } => {
                        let persisted = match &result {
                            Ok(ApplyOutput::Meta(any)) => match any.downcast_ref::<Response>() {
                                Some(Response::TsoLimit(limit)) => Some(*limit),
                                _ => None,
                            },
                            _ => None,
                        };
                        let n = self.node(node);
                        if let (Some(limit), true) = (persisted, n.store.is_some()) {
                            n.tso.set_limit(term, limit);
                        }
                        match op {
                            None => n.raising = false,
                            Some(op) if persisted.is_some() && n.store.is_some() => {
                                self.allocate(node, op, term, tries + 1, rng)
                            }
                            Some(op) => out.push(Answer::Timestamp { op, ts: None }),
                        }
                    }
                    Reply::Gated { node, incarnation, cid, result } => {
                        if self.nodes[node as usize - 1].crashes == incarnation {
                            self.on_gated(node, cid, result, rng);
                        }
                    }
                    Reply::Applied { node, incarnation, cid, result } => {
                        if self.nodes[node as usize - 1].crashes == incarnation {
                            self.on_applied(node, cid, result, rng);
                        }
                    }
                    Reply::Placement { purpose, result } => self.on_placement(purpose, result, rng),
                    Reply::Split { split, result } => self.on_split(split, result, rng),
                    Reply::Answer(answer) => out.push(answer),
                }
            }
            for (node, cid) in woken {
                self.on_woken(node, cid, rng);
            }
        }
    }

    /// The node's wall clock.
    pub(crate) fn wall(&self, id: u64) -> u64 {
        (self.now + WALL_EPOCH_MS).saturating_add_signed(self.nodes[id as usize - 1].wall_offset_ms)
    }

    /// Moves the node's wall clock by `ms`, either way (the TSO must not follow it back).
    pub fn jump_wall_clock(&mut self, id: u64, ms: i64) {
        self.node(id).wall_offset_ms += ms;
    }

    /// Asks node `id` for a timestamp as the server's `timestamp_local` serves one: only
    /// the placement leader, under its lease or after a ReadIndex round; a new term
    /// starts at the persisted mark; the mark is raised through the group when reached.
    /// The answer comes back as [`Answer::Timestamp`]; `false` if the node cannot serve
    /// (down, paused, not the leader).
    pub fn timestamp(&mut self, id: u64, op: u64, rng: &mut StdRng) -> bool {
        if !self.is_serving(id) {
            return false;
        }
        let now = self.clock(id);
        let Some(status) = self.node(id).registry.meta().status.filter(|s| s.ready_for_reads)
        else {
            return false;
        };
        let term = status.term;
        if status.lease_valid(now) {
            self.allocate(id, op, term, 0, rng);
            return true;
        }
        let answers = self.answers.clone();
        let callback: ReadCallback = Box::new(move |result| {
            lock(&answers).push(Reply::TsoConfirmed { op, node: id, term, result })
        });
        self.node(id).store.as_mut().expect("checked up").read_index(META_GROUP_ID, callback);
        self.pump(id, rng);
        true
    }

    fn allocate(&mut self, id: u64, op: u64, term: u64, tries: u32, rng: &mut StdRng) {
        let wall = self.wall(id);
        let answers = self.answers.clone();
        let node = self.node(id);
        if node.store.is_none() {
            return lock(&answers).push(Reply::Answer(Answer::Timestamp { op, ts: None }));
        }
        let placement = node.placement.clone();
        let unsafe_tso = self.unsafe_tso;
        let persisted = move || match unsafe_tso {
            true => 0,
            false => placement.read().unwrap_or_else(|e| e.into_inner()).tso_limit_ms(),
        };
        let node = &mut self.nodes[id as usize - 1];
        let allocation = node.tso.allocate(term, persisted, wall, 1);
        match allocation.result {
            Ok(ts) => {
                lock(&answers).push(Reply::Answer(Answer::Timestamp { op, ts: Some(ts) }));
                if let (Some(limit), false) = (allocation.wanted_limit, node.raising) {
                    node.raising = true;
                    self.raise(id, None, term, tries, limit, rng);
                }
            }
            Err(scandium_placement::TsoError::LimitReached(limit)) if tries < 3 => {
                self.raise(id, Some(op), term, tries, limit, rng)
            }
            Err(_) => lock(&answers).push(Reply::Answer(Answer::Timestamp { op, ts: None })),
        }
    }

    fn raise(
        &mut self,
        id: u64,
        op: Option<u64>,
        term: u64,
        tries: u32,
        limit: u64,
        rng: &mut StdRng,
    ) {
        use prost::Message as _;
        let command = Command::new(Kind::RaiseTsoLimit(limit)).encode_to_vec();
        let answers = self.answers.clone();
        let callback: scandium_raftstore::Callback = Box::new(move |result| {
            lock(&answers).push(Reply::TsoRaised { op, node: id, term, tries, result })
        });
        if let Some(store) = self.node(id).store.as_mut() {
            store.propose(META_GROUP_ID, command, callback);
        }
        self.pump(id, rng);
    }

    fn start(&mut self, id: u64) {
        let now = self.clock(id);
        let (breakages, unsafe_liveness) = (self.breakages, self.unsafe_liveness);
        let node = self.node(id);
        let engine: EngineRef = Arc::new(node.engine.clone());
        let loaded = PlacementState::load(&engine).expect("memory engines read");
        node.placement = Arc::new(RwLock::new(loaded.unwrap_or_default()));
        node.tso = LeaderTso::default();
        node.raising = false;
        node.woken = Arc::default();
        node.txn = new_txn_node(&engine, breakages, &node.woken);
        node.commands.clear();
        node.control = flows::new_control(unsafe_liveness);
        // What the node reported is forgotten; its beats' numbering goes on, so that an
        // answer to a beat from before the crash is never taken for one to a new beat.
        node.reporting.0.reset();
        node.reporting.1 = 0;
        let meta = Box::new(SimMeta { state: node.placement.clone() });
        // Stores beat each other; each start is a new incarnation.
        let config = RaftConfig { incarnation: node.crashes + 1, ..node.config.clone() };
        let mut store = Store::open(id, engine.clone(), config, meta, node.registry.clone())
            .expect("a simulated node's disk always opens");
        let txn = &node.txn;
        let follower = IndexFollower::new(txn.lock_index.clone(), txn.newest.clone());
        store.set_observer(Box::new(SimObserver { engine: engine.clone(), follower }));
        store.set_time(now);
        node.store = Some(store);
    }

    /// Kills the node's process: unsynced writes are lost, except a random prefix of
    /// whole batches. Its pending callbacks are dropped unanswered, as a client's calls to
    /// a dead node time out.
    pub fn crash(&mut self, id: u64, rng: &mut StdRng) {
        let node = self.node(id);
        let Some(store) = node.store.take() else { return };
        node.slept_before += store.groups_slept();
        node.crashes += 1;
        let kept = rng.gen_range(0..=node.engine.unsynced_batches());
        node.engine = node.engine.crash(kept);
        node.registry = Registry::new();
        node.paused_until = 0;
        // Its commands die with it, unanswered (their clients time out).
        node.commands.clear();
        let finished = node.control.counts().finished;
        self.operators_lost += finished;
    }

    /// How many times a leader put its group to sleep, over the run and every node.
    pub fn groups_slept(&self) -> u64 {
        let running = self.nodes.iter().filter_map(|n| n.store.as_ref()).map(Store::groups_slept);
        self.nodes.iter().map(|n| n.slept_before).sum::<u64>() + running.sum::<u64>()
    }

    /// Operators finished by every control plane of the run.
    pub fn operators_finished(&self) -> u64 {
        let running: u64 = self.nodes.iter().map(|n| n.control.counts().finished).sum();
        self.operators_lost + running
    }

    /// Starts a crashed node again on what its disk kept.
    pub fn restart(&mut self, id: u64) {
        if !self.is_up(id) {
            self.start(id);
        }
    }

    /// Pauses the node (SIGSTOP) for `ms`: it handles nothing meanwhile, its clock runs on.
    pub fn pause(&mut self, id: u64, ms: u64) {
        let until = self.now + ms;
        let node = self.node(id);
        node.paused_until = node.paused_until.max(until);
    }

    /// Moves the node's monotonic clock forward by `ms` (a machine suspended and resumed).
    pub fn jump_clock(&mut self, id: u64, ms: u64) {
        self.node(id).clock_offset_ms += ms;
    }

    /// Sets how long each of the node's rounds spends in fsync.
    pub fn set_disk_latency(&mut self, id: u64, ms: u64) {
        self.node(id).disk_ms = ms;
    }

    /// Clears every disk fault set on the node (a replaced disk, at the end of a run).
    pub fn clear_disk_faults(&mut self, id: u64) {
        let node = self.node(id);
        node.engine.set_faults(Faults::default());
        node.disk_ms = 0;
    }

    /// Makes the node's next sync fail: it stops, as a node must after a failed fsync.
    pub fn fail_next_sync(&mut self, id: u64) {
        let node = self.node(id);
        node.engine.set_faults(Faults { fail_syncs: 1, ..Faults::default() });
    }

    /// Fills the node's disk: its next write fails and it stops, as a node must when it
    /// cannot persist Raft's own records (the server refuses client writes well before,
    /// at its reserve; this is the disk filled by something else).
    pub fn fill_disk(&mut self, id: u64) {
        let node = self.node(id);
        node.engine.set_faults(Faults { disk_full: true, ..Faults::default() });
    }

    /// Loses every message from `from` to `to` until healed.
    pub fn block(&mut self, from: u64, to: u64) {
        self.blocked.insert((from, to));
    }

    /// Cuts the cluster in two: no message crosses between `side` and the rest.
    pub fn partition(&mut self, side: &[u64]) {
        for a in self.ids() {
            for b in self.ids() {
                if side.contains(&a) != side.contains(&b) {
                    self.blocked.insert((a, b));
                }
            }
        }
    }

    /// Every link works again.
    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    /// The running node that leads the Region holding `key` and may serve it (what a
    /// client's placement lookup would name, when placement is up to date).
    pub fn leader_of(&self, key: &[u8]) -> Option<u64> {
        self.ids().find(|&id| {
            self.is_serving(id)
                && self.nodes[id as usize - 1]
                    .registry
                    .find_by_key(key)
                    .is_some_and(|s| s.ready_for_reads)
        })
    }

    /// What each running node's replica of the Region holding `key` knows of it (for
    /// reading a failure): its Region, the leader it hears, its term.
    pub fn views_of(&self, key: &[u8]) -> Vec<(u64, String)> {
        self.ids()
            .filter(|&id| self.is_up(id))
            .filter_map(|id| {
                let status = self.nodes[id as usize - 1].registry.find_by_key(key)?;
                let view = format!(
                    "region {} {:?} v{} c{} leader {:?} term {}",
                    status.region.id,
                    status
                        .region
                        .peers
                        .iter()
                        .map(|p| (p.id, p.store_id, p.is_learner()))
                        .collect::<Vec<_>>(),
                    status.region.version,
                    status.region.conf_ver,
                    status.leader.map(|l| l.id),
                    status.term
                );
                Some((id, view))
            })
            .collect()
    }

    /// The running node whose replica of group `id` leads it (in the highest term, if
    /// several think so), with the Region as that replica sees it: frozen or not.
    pub fn group_leader(&self, id: u64) -> Option<(u64, Region)> {
        (self.ids().filter(|&node| self.is_serving(node)))
            .filter_map(|node| {
                let status = self.nodes[node as usize - 1].registry.get(id)?;
                let leads = status.leader.as_ref().is_some_and(|l| l.id == status.peer.id);
                leads.then_some((status.term, node, status.region))
            })
            .max_by_key(|(term, ..)| *term)
            .map(|(_, node, region)| (node, region))
    }

    /// Every data Region some running node leads, as its leader sees it, with that
    /// leader; in key order.
    pub fn led_regions(&self) -> Vec<(u64, Region)> {
        let mut led: BTreeMap<Vec<u8>, (u64, Region)> = BTreeMap::new();
        for id in self.ids().filter(|&id| self.is_serving(id)) {
            for status in self.nodes[id as usize - 1].registry.all() {
                if status.ready_for_reads {
                    let start = status.region.start_key.clone();
                    let newer = led.get(&start).is_none_or(|(_, r)| {
                        r.epoch() != status.region.epoch() && r.version <= status.region.version
                    });
                    if newer {
                        led.insert(start, (id, status.region));
                    }
                }
            }
        }
        led.into_values().collect()
    }

    /// The newest value of `key` on node `id` with every transaction's fate settled as a
    /// reader resolving its lock would settle it: committed if its primary committed, or
    /// if it is an async-commit transaction whose every key is prewritten (or any key
    /// committed); rolled back otherwise (for the final check, after the run; `None` if
    /// the node is down). The primary's and the secondaries' state is read on the leaders
    /// of their own Regions, as a resolving reader asks them: node `id` may hold no
    /// replica of those Regions, or an old one.
    pub fn txn_final_value(&self, id: u64, key: &[u8]) -> Option<Option<Vec<u8>>> {
        use scandium_txn::mvcc::{Write, WriteType};
        let store = self.nodes[id as usize - 1].store.as_ref()?;
        let snapshot = store.engine_snapshot();
        let reader = MvccReader::new(&*snapshot);
        let read = || -> Result<Option<Vec<u8>>, TxnError> {
            if let Some(lock) = reader.load_lock(key)? {
                if lock.kind() == LockType::Put && self.lock_committed(&lock)? {
                    let write = Write::new(WriteType::Put, lock.ts(), lock.short_value.clone());
                    return reader.load_data(key, write).map(Some);
                }
            }
            reader.get_value(key, TimeStamp::MAX)
        };
        Some(read().expect("memory engines read"))
    }

    /// Whether the transaction holding `lock` committed, or would be found committed by a
    /// reader resolving it: asked of the leaders of its primary's (and, for async commit,
    /// its secondaries') Regions.
    fn lock_committed(&self, lock: &scandium_txn::mvcc::Lock) -> Result<bool, TxnError> {
        use scandium_txn::mvcc::TxnCommitRecord;
        let on_leader = |key: &[u8]| {
            let leader = self.leader_of(key).expect("a settled Region has a leader");
            let store = self.nodes[leader as usize - 1].store.as_ref();
            store.expect("a leader is up").engine_snapshot()
        };
        let committed = |key: &[u8]| -> Result<bool, TxnError> {
            let snapshot = on_leader(key);
            let record = MvccReader::new(&*snapshot).get_txn_commit_record(key, lock.ts())?;
            Ok(matches!(record, TxnCommitRecord::Committed(..)))
        };
        let ours = |l: &scandium_txn::mvcc::Lock| l.start_ts == lock.start_ts;
        let snapshot = on_leader(&lock.primary);
        match MvccReader::new(&*snapshot).load_lock(&lock.primary)?.filter(ours) {
            Some(primary) if primary.use_async_commit => {
                for secondary in &primary.secondaries {
                    let snapshot = on_leader(secondary);
                    let held = MvccReader::new(&*snapshot).load_lock(secondary)?;
                    if !held.is_some_and(|l| ours(&l) && l.kind() != LockType::Pessimistic) {
                        return committed(secondary);
                    }
                }
                Ok(true)
            }
            Some(_) => Ok(false),
            None => committed(&lock.primary),
        }
    }

    /// Node `id`'s transactional state, which its commands run against.
    pub fn txn_node(&self, id: u64) -> Arc<TxnNode> {
        self.nodes[id as usize - 1].txn.clone()
    }

    /// The Region holding `key` as placement knows it, and the store it names as its
    /// leader, asked of the first running node that holds the placement state (as a
    /// client asks its PD endpoint).
    pub fn lookup_region(&self, key: &[u8]) -> Option<(Region, Option<u64>)> {
        self.ids().filter(|&id| self.is_serving(id)).find_map(|id| {
            let placement = self.nodes[id as usize - 1].placement.read();
            let placement = placement.unwrap_or_else(|e| e.into_inner());
            let region = placement.region_by_key(key)?.clone();
            let leader = placement.leader_of(region.id).map(|p| p.store_id);
            Some((region, leader))
        })
    }

    /// Breaks merges on purpose (see `RaftConfig::unsafe_frozen_reads`). Called before
    /// the run begins: the stores are opened again with it.
    pub fn set_unsafe_frozen_reads(&mut self) {
        for id in self.ids() {
            let node = self.node(id);
            node.config.unsafe_frozen_reads = true;
            if node.store.take().is_some() {
                self.start(id);
            }
        }
    }

    /// Breaks hibernation on purpose (see `RaftConfig::unsafe_sleeping_lease`); a run
    /// that drew no hibernation hibernates. Called before the run begins: the stores are
    /// opened again with it.
    pub fn set_unsafe_sleeping_lease(&mut self) {
        for id in self.ids() {
            let node = self.node(id);
            node.config.unsafe_sleeping_lease = true;
            if node.config.hibernate_after_ticks == 0 {
                node.config.hibernate_after_ticks = ELECTION_TICKS + 1;
            }
            if node.store.take().is_some() {
                self.start(id);
            }
        }
    }

    /// Breaks the control plane on purpose from now on (see `unsafe_liveness`).
    pub fn set_unsafe_liveness(&mut self, unsafe_liveness: bool) {
        self.unsafe_liveness = unsafe_liveness;
        for node in &mut self.nodes {
            node.control = flows::new_control(unsafe_liveness);
        }
    }

    /// Until when node `id` is paused (a time in the past if it is not).
    pub fn paused_until(&self, id: u64) -> u64 {
        self.nodes[id as usize - 1].paused_until
    }

    /// Whether node `id` can take requests now (up and not paused).
    pub fn is_serving(&self, id: u64) -> bool {
        self.is_up(id) && self.nodes[id as usize - 1].paused_until <= self.now
    }

    /// Proposes a membership change of `region` through its leader `id`; the answer is
    /// ignored (the next change looks at the Region as it then is).
    pub fn change_peers(
        &mut self,
        id: u64,
        region: u64,
        changes: Vec<PeerChange>,
        rng: &mut StdRng,
    ) {
        if !self.is_serving(id) {
            return;
        }
        if let Some(store) = self.node(id).store.as_mut() {
            store.propose_conf_change(region, changes, None, Box::new(|_| {}));
        }
        self.pump(id, rng);
    }

    /// Asks the leader `id` of `region` to hand leadership to peer `to`.
    pub fn transfer_leader(&mut self, id: u64, region: u64, to: u64, rng: &mut StdRng) {
        if !self.is_serving(id) {
            return;
        }
        if let Some(store) = self.node(id).store.as_mut() {
            let _ = store.transfer_leader(region, to);
        }
        self.pump(id, rng);
    }

    /// For each replica in the leader's view of `region`: its node, and its applied index
    /// and data digests (one per column family) if it runs one. Replicas removed from the
    /// Region are not listed.
    pub fn replica_states(&self, region: &Region) -> Vec<(u64, Option<ReplicaState>)> {
        region
            .peers
            .iter()
            .map(|peer| {
                let id = peer.store_id;
                let state = self.nodes[id as usize - 1].store.as_ref().and_then(|store| {
                    let local = store.status(region.id)?.region;
                    let applied = store.applied_index(region.id)?;
                    let digests =
                        scandium_raftstore::snapshot::digests(&local, &*store.engine_snapshot())
                            .expect("memory engines read");
                    Some((applied, digests))
                });
                (id, state)
            })
            .collect()
    }

    /// What each node holding a replica of `region` has of it, and of the Regions that
    /// overlap it there (`Store::describe`), for failure reports.
    pub fn describe(&self, region: &Region) -> Vec<NodeView> {
        (region.peers.iter())
            .map(|peer| {
                let id = peer.store_id;
                let store = self.nodes[id as usize - 1].store.as_ref();
                let own = store.and_then(|s| s.describe(region.id));
                let overlapping = store.map(|s| s.describe_overlapping(region)).unwrap_or_default();
                (id, own, overlapping)
            })
            .collect()
    }

    /// The stores placement's leader holds as drained and retired, if a node leads it.
    pub fn store_state(&self, store: u64) -> Option<StoreState> {
        let leader = self.placement_leader()?;
        let placement = self.nodes[leader as usize - 1].placement.read();
        placement.unwrap_or_else(|e| e.into_inner()).store(store).map(|s| s.state())
    }

    /// What keeps a drained store from being retired, as the placement leader sees it: the
    /// Regions its records place a replica on the store, and the placement group's members
    /// there.
    pub(crate) fn holding(&self, store: u64) -> String {
        let Some(leader) = self.placement_leader() else { return "no placement leader".into() };
        let node = &self.nodes[leader as usize - 1];
        let placement = node.placement.read().unwrap_or_else(|e| e.into_inner());
        let regions: Vec<String> = placement
            .regions()
            .filter(|r| r.peer_on_store(store).is_some())
            .map(|r| format!("{} {:?} (v{} c{})", r.id, r.peers, r.version, r.conf_ver))
            .collect();
        let meta = node.registry.meta().status.map(|s| s.region.peers).unwrap_or_default();
        format!("placement leader {leader}; regions there {regions:?}; placement group {meta:?}")
    }

    /// Rounds on node `id` until it has nothing left; its messages go to the network.
    pub(crate) fn pump(&mut self, id: u64, rng: &mut StdRng) {
        let mut outgoing = Vec::new();
        let mut events = Vec::new();
        let mut failed = false;
        if let Some(store) = self.node(id).store.as_mut() {
            while store.has_ready() {
                match store.handle_ready_sending(&mut |mut m| outgoing.append(&mut m)) {
                    Ok(mut output) => {
                        outgoing.append(&mut output.messages);
                        events.append(&mut output.events);
                    }
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
        }
        let disk_ms = self.nodes[id as usize - 1].disk_ms;
        for message in outgoing {
            self.send(id, message, disk_ms, rng);
        }
        self.on_store_events(id, events, rng);
        if failed {
            // As the server's Raft thread exits the process on a storage failure.
            self.crash(id, rng);
        }
    }

    fn send(&mut self, from: u64, message: PeerMessage, extra_ms: u64, rng: &mut StdRng) {
        self.sent += 1;
        let snapshot =
            if message.is_snapshot() { self.take_snapshot(from, &message) } else { None };
        if message.is_snapshot() && snapshot.is_none() {
            // As the server's transport reports a snapshot whose engine snapshot expired:
            // unreported, raft-rs would wait for this one for ever and send no other.
            self.report_snapshot(from, &message, false);
            return;
        }
        if rng.gen_bool(self.network.drop) {
            if message.is_snapshot() {
                self.report_snapshot(from, &message, false);
            }
            return;
        }
        let copies = if rng.gen_bool(self.network.duplicate) { 2 } else { 1 };
        for _ in 0..copies {
            let (low, high) = self.network.delay_ms;
            let delay = extra_ms + rng.gen_range(low..=high);
            self.schedule(
                delay,
                Event::Deliver {
                    from,
                    message: Box::new(message.clone()),
                    snapshot: snapshot.clone(),
                },
            );
        }
    }

    /// The data of an outgoing snapshot, read out of the sender's engine snapshot at once
    /// (the real transport streams it in chunks; the receiver stages the same chunks).
    fn take_snapshot(
        &mut self,
        from: u64,
        message: &PeerMessage,
    ) -> Option<Arc<Vec<SnapshotChunk>>> {
        use prost::Message as _;
        let data = message.message.snapshot.as_ref()?.data.as_ref();
        let header = SnapshotHeader::decode(data).ok()?;
        let store = self.node(from).store.as_ref()?;
        let (region, engine_snapshot) = store.snapshot_sources().take(header.token)?;
        let mut chunks = Vec::new();
        for_each_chunk(&region, &*engine_snapshot, 4096, |chunk| {
            chunks.push(chunk);
            true
        })
        .ok()?;
        Some(Arc::new(chunks))
    }

    fn report_snapshot(&mut self, from: u64, message: &PeerMessage, delivered: bool) {
        if let Some(store) = self.node(from).store.as_mut() {
            store.report_snapshot(message.region_id, message.to.id, delivered);
        }
    }

    fn deliver(
        &mut self,
        from: u64,
        message: PeerMessage,
        snapshot: Option<Arc<Vec<SnapshotChunk>>>,
    ) {
        let to = message.to.store_id;
        if self.blocked.contains(&(from, to)) || !self.is_up(to) {
            if let Some(store) = self.node(from).store.as_mut() {
                if message.is_snapshot() {
                    store.report_snapshot(message.region_id, message.to.id, false);
                }
                store.report_unreachable(message.region_id, message.to.id);
            }
            return;
        }
        self.delivered += 1;
        let is_snapshot = message.is_snapshot();
        let report = (message.region_id, message.to.id);
        let store = self.node(to).store.as_mut().expect("checked up");
        let data = match snapshot {
            Some(chunks) => {
                // Staged as the server's transport stages what it receives.
                let mut staging = store.snapshot_stager().begin();
                let records = chunks.iter().map(|c| c.entries.len() as u64).sum();
                let staged = chunks.iter().all(|chunk| staging.push(chunk.clone()).is_ok());
                match staged.then(|| staging.finish(Some(records))) {
                    Some(Ok(data)) => Some(data),
                    // The receiver's disk failed: as a transfer that did not arrive.
                    _ => {
                        if let Some(sender) = self.node(from).store.as_mut() {
                            sender.report_snapshot(report.0, report.1, false);
                        }
                        return;
                    }
                }
            }
            None => None,
        };
        let store = self.node(to).store.as_mut().expect("checked up");
        let accepted = store.step(message, data).is_ok();
        if is_snapshot {
            if let Some(store) = self.node(from).store.as_mut() {
                store.report_snapshot(report.0, report.1, accepted);
            }
        }
    }
}

/// A replica's applied index and data digests (one per column family).
pub type ReplicaState = (u64, Vec<u64>);

fn lock(answers: &Answers) -> std::sync::MutexGuard<'_, Vec<Reply>> {
    answers.lock().unwrap_or_else(|e| e.into_inner())
}

/// A node's replica of a Region and the Regions overlapping it there, described
/// (`Store::describe`): the node, its replica's line, and the overlapping ones' lines.
pub type NodeView = (u64, Option<String>, Vec<(u64, String)>);
