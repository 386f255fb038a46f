//! The simulated cluster: real [`Store`]s on [`FaultEngine`]s, a network of delayed,
//! dropped, duplicated and partitioned messages, and one event queue ordered by simulated
//! time. Nothing here reads a wall clock or spawns a thread; every random choice comes from
//! the one generator the caller passes in, so a seed replays a run exactly.
//!
//! A node is driven as the server's Raft thread drives it: ticks every `tick_ms`, messages
//! stepped in as they arrive, and after each event rounds of `handle_ready_sending` until
//! nothing is left, its messages leaving as the round hands them out. A round that fails
//! (a failed fsync, a full disk) stops the node, as `raft_driver` exits the process.

use rand::rngs::StdRng;
use rand::Rng;
use scandium_placement::{Command, Kind, LeaderTso, PlacementState, Response};
use scandium_raftstore::snapshot::{for_each_chunk, SnapshotAssembler, SnapshotHeader};
use scandium_raftstore::META_GROUP_ID;
use scandium_raftstore::{
    ApplyObserver, ApplyOutput, EncodedCommand, MetaStateMachine, PeerChange, PeerMessage,
    RaftCommand, RaftConfig, RaftstoreError, ReadCallback, Registry, SnapshotData, Store,
};
use scandium_storage::{Cf, Engine, EngineRef, FaultEngine, Faults, Snapshot, WriteBatch};
use scandium_txn::actions::prewrite::{self, PrewriteRequest};
use scandium_txn::concurrency::MemoryLockGuard;
use scandium_txn::mvcc::{LockType, MvccReader, MvccTxn, Newest};
use scandium_txn::{ConcurrencyManager, IndexFollower, LockHint, LockIndex, NewestCache, TxnError};
use scandium_types::{Peer, Region, StoreState, TimeStamp};
use std::any::Any;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
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

/// What a write command built: its output, its batch, the in-memory locks it holds until
/// answered, and its changes to the node's indexes (see [`IndexChanges`]).
type Built<T> = (T, WriteBatch, Option<MemoryLockGuard>, IndexChanges);

/// A transactional command's changes to the lock index and the newest-record cache, as
/// the server's `Sealed` carries them: locks added before proposing, the rest applied
/// once the proposal is.
#[derive(Default)]
struct IndexChanges {
    locks: Vec<(Vec<u8>, Option<u64>)>,
    newest: Vec<(Vec<u8>, Newest)>,
}

/// Marks the timestamp requests a node makes to synchronise `max_ts` after it gains
/// leadership of the data Region (see [`Cluster::txn_prewrite`]).
const SYNC_OP: u64 = 1 << 34;
/// How long a node waits for its `max_ts` timestamp before it asks again.
const SYNC_TIMEOUT_MS: u64 = 1_000;

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

/// An answer a store gave to something the simulation asked of it, collected from the
/// store's callbacks (which must be `Send`, hence the mutex) and handled after the call.
pub enum Answer {
    /// A proposal was applied or refused.
    Proposed {
        /// The operation that proposed it.
        op: u64,
        /// The store's answer.
        result: Result<ApplyOutput, RaftstoreError>,
    },
    /// A ReadIndex round finished on `node`.
    ReadReady {
        /// The operation that asked.
        op: u64,
        /// The node that served it.
        node: u64,
        /// Whether the read may go ahead.
        result: Result<(), RaftstoreError>,
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
/// requests, which the cluster takes itself.
enum Reply {
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
}

type Answers = Arc<Mutex<Vec<Reply>>>;

struct Node {
    store: Option<Store>,
    engine: FaultEngine,
    registry: Registry,
    config: RaftConfig,
    /// Added to the simulated time to give this node's monotonic clock: forward jumps
    /// model a suspended machine whose clock ran on.
    clock_offset_ms: u64,
    /// Until when the node is paused (SIGSTOP): events for it wait until then.
    paused_until: u64,
    /// How long each round's fsync takes, in milliseconds (a slow disk).
    disk_ms: u64,
    crashes: u64,
    /// The placement state this node has applied.
    placement: Arc<RwLock<PlacementState>>,
    /// The timestamp allocator of its current placement-leader term.
    tso: LeaderTso,
    /// Whether a background raise of the timestamp mark is in flight.
    raising: bool,
    /// Added to the simulated time to give the wall clock (it may jump back).
    wall_offset_ms: i64,
    /// Latches of transactional commands in flight: key to the operation that holds it
    /// until its proposal is answered (the server's latches, held until applied).
    latches: BTreeMap<Vec<u8>, u64>,
    /// `max_ts` and the in-memory locks of async-commit and 1PC prewrites; a process's
    /// memory, new on every start.
    concurrency: Arc<ConcurrencyManager>,
    /// The server's lock index and newest-record cache: rebuilt from the disk and empty
    /// on every start, kept by the node's own commands and by [`SimObserver`].
    lock_index: Arc<LockIndex>,
    newest: Arc<NewestCache>,
    /// In-memory locks of prewrites in flight, by operation, until their proposals are
    /// answered (held with the latches, as the server holds them).
    memory_locks: BTreeMap<u64, MemoryLockGuard>,
    /// The data Region's term in which this node last raised `max_ts` to a fresh
    /// timestamp: async commit and 1PC are served only in that term.
    max_ts_synced: Option<u64>,
    /// A synchronisation in flight: its operation, its term and when it was asked.
    max_ts_syncing: Option<(u64, u64, u64)>,
}

/// Something scheduled to happen at a simulated time.
enum Event {
    Tick(u64),
    Deliver {
        from: u64,
        message: Box<PeerMessage>,
        snapshot: Option<Arc<SnapshotData>>,
    },
    /// Hands the event to the caller of [`Cluster::next`] (client and fault events).
    External(u64),
}

/// The simulated cluster and its event queue.
pub struct Cluster {
    nodes: Vec<Node>,
    now: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: BTreeMap<u64, Event>,
    next_seq: u64,
    /// Links `(from, to)` that lose every message.
    blocked: BTreeSet<(u64, u64)>,
    network: NetworkConfig,
    answers: Answers,
    /// A deliberately broken read path, to prove the checks catch one: any node that
    /// believes it leads serves reads from its state, with no lease and no ReadIndex.
    pub unsafe_reads: bool,
    /// A deliberately broken timestamp oracle: a new placement leader starts from its own
    /// wall clock instead of the persisted mark.
    pub unsafe_tso: bool,
    /// A deliberately broken transaction layer: commands take no latches, so two of them
    /// may both decide on the same state before either is applied.
    pub unsafe_latches: bool,
    /// A deliberately broken async commit: a new leader serves async-commit and 1PC
    /// prewrites without first raising `max_ts` to a fresh timestamp.
    pub unsafe_max_ts: bool,
    /// Numbers the `max_ts` synchronisations.
    next_sync: u64,
    /// Messages handed to the network and delivered, for the run's statistics.
    pub sent: u64,
    /// Messages delivered.
    pub delivered: u64,
}

impl Cluster {
    /// `n` nodes, the first `replicas` of them with a replica of [`REGION`] (every key),
    /// each with its own fixed election timeout drawn from `rng`. Peer ids of the first
    /// replicas are their store ids.
    pub fn new(n: u64, replicas: u64, network: NetworkConfig, rng: &mut StdRng) -> Cluster {
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
        let (_, placement) =
            PlacementState::bootstrap(1, 10_000, store, vec![region.clone()], Vec::new());
        let mut timeouts: Vec<usize> = (0..n as usize).map(|i| ELECTION_TICKS + 2 * i).collect();
        for i in (1..timeouts.len()).rev() {
            timeouts.swap(i, rng.gen_range(0..=i));
        }
        let nodes = (1..=n)
            .map(|id| {
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
                        ..RaftConfig::default()
                    },
                    clock_offset_ms: 0,
                    paused_until: 0,
                    disk_ms: 0,
                    crashes: 0,
                    placement: Arc::default(),
                    tso: LeaderTso::default(),
                    raising: false,
                    wall_offset_ms: 0,
                    latches: BTreeMap::new(),
                    concurrency: Arc::default(),
                    lock_index: Arc::default(),
                    newest: Arc::new(NewestCache::new(NEWEST_CACHE_BYTES)),
                    memory_locks: BTreeMap::new(),
                    max_ts_synced: None,
                    max_ts_syncing: None,
                }
            })
            .collect();
        let mut cluster = Cluster {
            nodes,
            now: 0,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            next_seq: 0,
            blocked: BTreeSet::new(),
            network,
            answers: Arc::default(),
            unsafe_reads: false,
            unsafe_tso: false,
            unsafe_latches: false,
            unsafe_max_ts: false,
            next_sync: 0,
            sent: 0,
            delivered: 0,
        };
        for id in 1..=n {
            cluster.start(id);
            // Ticks of different nodes are out of phase, as their timers would be.
            let phase = rng.gen_range(0..TICK_MS);
            cluster.schedule(phase, Event::Tick(id));
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

    fn node(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[id as usize - 1]
    }

    fn clock(&self, id: u64) -> u64 {
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

    fn schedule(&mut self, delay: u64, event: Event) {
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
            }
            let answers = self.take_answers_with(rng);
            if !answers.is_empty() {
                return (None, answers);
            }
        }
    }

    /// The answers for the caller; the steps of timestamp requests are taken here, and
    /// may produce further answers.
    fn take_answers_with(&mut self, rng: &mut StdRng) -> Vec<Answer> {
        let mut answers = self.take_replies(rng);
        answers.retain(|answer| match answer {
            Answer::Timestamp { op, ts } if op & SYNC_OP != 0 => {
                self.on_max_ts_timestamp(*op, *ts);
                false
            }
            _ => true,
        });
        answers
    }

    /// A `max_ts` synchronisation's timestamp arrived: the node may serve async commit and
    /// 1PC in the term it asked for.
    fn on_max_ts_timestamp(&mut self, op: u64, ts: Option<TimeStamp>) {
        for node in &mut self.nodes {
            if let Some((_, term, _)) = node.max_ts_syncing.filter(|s| s.0 == op) {
                node.max_ts_syncing = None;
                if let (Some(ts), Some(_)) = (ts, node.store.as_ref()) {
                    node.concurrency.update_max_ts(ts);
                    node.max_ts_synced = Some(term);
                }
            }
        }
    }

    /// The stores' replies: answers for the caller, timestamp steps taken here.
    fn take_replies(&mut self, rng: &mut StdRng) -> Vec<Answer> {
        let mut out = Vec::new();
        loop {
            let answers = std::mem::take(&mut *lock(&self.answers));
            if answers.is_empty() {
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
                    Reply::Answer(answer) => {
                        if let Answer::Proposed { op, .. } = &answer {
                            for node in &mut self.nodes {
                                node.latches.retain(|_, holder| holder != op);
                                node.memory_locks.remove(op);
                            }
                        }
                        out.push(answer)
                    }
                }
            }
        }
    }

    /// The node's wall clock.
    fn wall(&self, id: u64) -> u64 {
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
        let node = self.node(id);
        let engine: EngineRef = Arc::new(node.engine.clone());
        let loaded = PlacementState::load(&engine).expect("memory engines read");
        node.placement = Arc::new(RwLock::new(loaded.unwrap_or_default()));
        node.tso = LeaderTso::default();
        node.raising = false;
        node.concurrency = Arc::default();
        node.lock_index = Arc::new(LockIndex::load(&engine).expect("memory engines read"));
        node.newest = Arc::new(NewestCache::new(NEWEST_CACHE_BYTES));
        node.max_ts_synced = None;
        node.max_ts_syncing = None;
        let meta = Box::new(SimMeta { state: node.placement.clone() });
        let mut store =
            Store::open(id, engine.clone(), node.config.clone(), meta, node.registry.clone())
                .expect("a simulated node's disk always opens");
        let follower = IndexFollower::new(node.lock_index.clone(), node.newest.clone());
        store.set_observer(Box::new(SimObserver { engine: engine.clone(), follower }));
        store.set_time(now);
        node.store = Some(store);
    }

    /// Kills the node's process: unsynced writes are lost, except a random prefix of
    /// whole batches. Its pending callbacks are dropped unanswered, as a client's calls to
    /// a dead node time out.
    pub fn crash(&mut self, id: u64, rng: &mut StdRng) {
        let node = self.node(id);
        if node.store.take().is_none() {
            return;
        }
        node.crashes += 1;
        let kept = rng.gen_range(0..=node.engine.unsynced_batches());
        node.engine = node.engine.crash(kept);
        node.registry = Registry::new();
        node.paused_until = 0;
        node.latches.clear();
        node.memory_locks.clear();
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

    /// The first running node that believes it leads the Region and may serve reads.
    pub fn leader(&self) -> Option<u64> {
        self.ids().find(|&id| {
            self.is_serving(id)
                && self.nodes[id as usize - 1]
                    .registry
                    .get(REGION)
                    .is_some_and(|s| s.ready_for_reads)
        })
    }

    /// Proposes a write of `batch` to `region` through node `id`; the answer comes back
    /// tagged `op`. `false` if nothing entered the log (the store refused it at once).
    /// Errors that come later are not proof that the write was not applied.
    fn propose_on(
        &mut self,
        id: u64,
        op: u64,
        region: &Region,
        batch: WriteBatch,
        applied: impl FnOnce() + Send + 'static,
        rng: &mut StdRng,
    ) -> bool {
        let answers = self.answers.clone();
        let Some(store) = self.node(id).store.as_mut() else { return false };
        let command = EncodedCommand::new(RaftCommand::write(region, batch));
        store.propose_command(
            REGION,
            command,
            // As the server's `propose_holding`: on the Raft thread, in log order.
            Box::new(move |result| {
                if result.is_ok() {
                    applied();
                }
                lock(&answers).push(Reply::Answer(Answer::Proposed { op, result }))
            }),
        );
        if self.take_answer_of(op) {
            return false;
        }
        self.pump(id, rng);
        true
    }

    /// Runs a transactional write command on node `id` as the server's `txn_write` does:
    /// only on a leader that has applied its earlier terms, under latches on `keys` held
    /// until the proposal is answered, `action` reading a snapshot of the node's state
    /// (and given its `max_ts`, which status checks raise) and its changes proposed as
    /// one Raft command.
    pub fn txn_write<T>(
        &mut self,
        id: u64,
        op: u64,
        keys: &[Vec<u8>],
        action: impl FnOnce(&MvccReader<'_>, &mut MvccTxn, &ConcurrencyManager) -> Result<T, TxnError>,
        rng: &mut StdRng,
    ) -> TxnStart<T> {
        self.txn_command(
            id,
            op,
            keys,
            |reader, txn, concurrency| Ok((action(reader, txn, concurrency)?, None)),
            rng,
        )
    }

    /// A prewrite on node `id`, as the server's `kv_prewrite` runs it: an async-commit or
    /// 1PC one only once the node has raised `max_ts` to a timestamp taken since it gained
    /// leadership (until then it is busy, and asks the placement leader for one). The
    /// output is the `min_commit_ts` of async commit and the commit timestamp of 1PC.
    pub fn txn_prewrite(
        &mut self,
        id: u64,
        op: u64,
        request: PrewriteRequest<'_>,
        rng: &mut StdRng,
    ) -> TxnStart<(u64, u64)> {
        let keys: Vec<Vec<u8>> = request.mutations.iter().map(|(m, _)| m.key.clone()).collect();
        let needs_max_ts = request.props.use_async_commit || request.try_one_pc;
        if needs_max_ts && !self.unsafe_max_ts && !self.max_ts_synced(id, rng) {
            return TxnStart::Busy;
        }
        self.txn_command(
            id,
            op,
            &keys,
            |reader, txn, concurrency| {
                let mut done = prewrite::prewrite(reader, txn, concurrency, request)?;
                if let Some(error) = done.errors.drain(..).next() {
                    return Err(error);
                }
                let output = (done.min_commit_ts, done.one_pc_commit_ts);
                Ok((output, done.memory_locks.take()))
            },
            rng,
        )
    }

    /// Whether node `id` raised `max_ts` in its current term as the data Region's leader;
    /// if not, it asks the placement leader for a timestamp (once at a time).
    fn max_ts_synced(&mut self, id: u64, rng: &mut StdRng) -> bool {
        let Some(term) = self.node(id).registry.get(REGION).map(|s| s.term) else {
            return false;
        };
        let now = self.now;
        let node = self.node(id);
        if node.max_ts_synced == Some(term) {
            return true;
        }
        let asking =
            node.max_ts_syncing.is_some_and(|(_, t, at)| t == term && now < at + SYNC_TIMEOUT_MS);
        if asking {
            return false;
        }
        let Some(placement_leader) = self.ids().find(|&p| {
            self.is_serving(p)
                && self.nodes[p as usize - 1]
                    .registry
                    .meta()
                    .status
                    .is_some_and(|s| s.ready_for_reads)
        }) else {
            return false;
        };
        let op = SYNC_OP | self.next_sync;
        self.next_sync += 1;
        self.node(id).max_ts_syncing = Some((op, term, now));
        self.timestamp(placement_leader, op, rng);
        false
    }

    /// The body of [`Cluster::txn_write`] and [`Cluster::txn_prewrite`]: `action` may
    /// also hand back in-memory locks, held until the proposal is answered.
    fn txn_command<T>(
        &mut self,
        id: u64,
        op: u64,
        keys: &[Vec<u8>],
        action: impl FnOnce(
            &MvccReader<'_>,
            &mut MvccTxn,
            &Arc<ConcurrencyManager>,
        ) -> Result<(T, Option<MemoryLockGuard>), TxnError>,
        rng: &mut StdRng,
    ) -> TxnStart<T> {
        self.latched_command(
            id,
            op,
            keys,
            |snapshot, hint, concurrency| {
                let reader = MvccReader::with_hint(snapshot, hint);
                let mut txn = MvccTxn::new();
                let (output, memory_locks) = action(&reader, &mut txn, concurrency)?;
                let mut changes =
                    IndexChanges { locks: txn.lock_changes().to_vec(), newest: Vec::new() };
                let batch = if txn.is_empty() {
                    WriteBatch::new()
                } else {
                    let (batch, newest) = txn.seal(&reader)?;
                    changes.newest = newest;
                    batch
                };
                Ok((output, batch, memory_locks, changes))
            },
            rng,
        )
    }

    /// A raw write on node `id` as the server's `write_with` runs it: under the latch of
    /// `key`, held until the proposal is answered, `build` reading the node's applied
    /// state (a compare-and-swap does) and filling the batch. An empty batch proposes
    /// nothing, and the output stands at once (a swap that failed).
    pub fn raw_write<T>(
        &mut self,
        id: u64,
        op: u64,
        key: &[u8],
        build: impl FnOnce(&dyn Snapshot, &mut WriteBatch) -> T,
        rng: &mut StdRng,
    ) -> TxnStart<T> {
        self.latched_command(
            id,
            op,
            &[key.to_vec()],
            |snapshot, _, _| {
                let mut batch = WriteBatch::new();
                let output = build(snapshot, &mut batch);
                Ok((output, batch, None, IndexChanges::default()))
            },
            rng,
        )
    }

    /// What every write command does around its body: only on a leader that has applied
    /// its earlier terms (the server's `check_context`), busy while a command in flight
    /// holds a latch on one of `keys`, `build` run on a snapshot of the node's state with
    /// the lock index's hint taken before it, its batch proposed as one Raft command, the
    /// lock index and newest-record cache kept as the server's `propose_txn` keeps them,
    /// and the latches (and any in-memory locks) held until the proposal is answered.
    fn latched_command<T>(
        &mut self,
        id: u64,
        op: u64,
        keys: &[Vec<u8>],
        build: impl FnOnce(
            &dyn Snapshot,
            LockHint,
            &Arc<ConcurrencyManager>,
        ) -> Result<Built<T>, TxnError>,
        rng: &mut StdRng,
    ) -> TxnStart<T> {
        if !self.is_serving(id) {
            return TxnStart::Unavailable;
        }
        let latched = !self.unsafe_latches;
        let node = self.node(id);
        let Some(status) = node.registry.get(REGION).filter(|s| s.ready_for_reads) else {
            return TxnStart::Unavailable;
        };
        if latched && keys.iter().any(|key| node.latches.contains_key(key)) {
            return TxnStart::Busy;
        }
        let concurrency = node.concurrency.clone();
        let (lock_index, newest) = (node.lock_index.clone(), node.newest.clone());
        let hint = lock_index.hint_for_write(keys, &newest);
        let Some(store) = node.store.as_ref() else { return TxnStart::Unavailable };
        let snapshot = store.engine_snapshot();
        let (output, batch, memory_locks, changes) = match build(&*snapshot, hint, &concurrency) {
            Ok(built) => built,
            Err(e) => return TxnStart::Failed(e),
        };
        drop(snapshot);
        if batch.is_empty() {
            return TxnStart::Done(output);
        }
        lock_index.add_proposed(&changes.locks);
        newest.forget(&changes.newest);
        let applied = move || {
            lock_index.apply(&changes.locks);
            newest.record(changes.newest);
        };
        if !self.propose_on(id, op, &status.region, batch, applied, rng) {
            return TxnStart::Unavailable;
        }
        let node = self.node(id);
        for key in keys {
            node.latches.insert(key.clone(), op);
        }
        if let Some(guard) = memory_locks {
            node.memory_locks.insert(op, guard);
        }
        TxnStart::Proposed(output)
    }

    /// A snapshot read of `key` at `ts` from node `id`'s applied state, once
    /// [`Cluster::read_gate`] allowed it; `None` if the node is down. A lock that may
    /// commit at or below `ts` comes back as `KeyIsLocked`.
    pub fn txn_get_local(
        &self,
        id: u64,
        key: &[u8],
        ts: TimeStamp,
    ) -> Option<Result<Option<Vec<u8>>, TxnError>> {
        let node = &self.nodes[id as usize - 1];
        let store = node.store.as_ref()?;
        // As the server reads: max_ts and in-memory locks, the lock index, the snapshot.
        if let Err(e) = node.concurrency.read_key_check(key, ts) {
            return Some(Err(e));
        }
        let hint = node.lock_index.hint_for_read([&key.to_vec()], &node.newest);
        let snapshot = store.engine_snapshot();
        let reader = MvccReader::with_hint(&*snapshot, hint);
        Some(scandium_txn::actions::read::point_get(&reader, key, ts))
    }

    /// The newest value of `key` on node `id` with every transaction's fate settled as a
    /// reader resolving its lock would settle it: committed if its primary committed, or
    /// if it is an async-commit transaction whose every key is prewritten (or any key
    /// committed); rolled back otherwise (for the final check, after the run; `None` if
    /// the node is down).
    pub fn txn_final_value(&self, id: u64, key: &[u8]) -> Option<Option<Vec<u8>>> {
        use scandium_txn::mvcc::{Write, WriteType};
        let store = self.nodes[id as usize - 1].store.as_ref()?;
        let snapshot = store.engine_snapshot();
        let reader = MvccReader::new(&*snapshot);
        let read = || -> Result<Option<Vec<u8>>, TxnError> {
            if let Some(lock) = reader.load_lock(key)? {
                if lock.kind() == LockType::Put && lock_committed(&reader, &lock)? {
                    let write = Write::new(WriteType::Put, lock.ts(), lock.short_value.clone());
                    return reader.load_data(key, write).map(Some);
                }
            }
            reader.get_value(key, TimeStamp::MAX)
        };
        Some(read().expect("memory engines read"))
    }

    /// Removes the answer to `op` if the store gave it at once (a refusal).
    fn take_answer_of(&mut self, op: u64) -> bool {
        let mut answers = lock(&self.answers);
        let position = answers.iter().position(|answer| match answer {
            Reply::Answer(Answer::Proposed { op: o, .. } | Answer::ReadReady { op: o, .. }) => {
                *o == op
            }
            _ => false,
        });
        position.map(|i| answers.remove(i)).is_some()
    }

    /// Serves a read on node `id` as the server does: from the leader's state under its
    /// lease, else after a ReadIndex round. `Some(value)` when the read was served at
    /// once; otherwise the answer comes back as [`Answer::ReadReady`] and the caller reads
    /// with [`Cluster::read_local`]. `None` as well when the node is down.
    pub fn read(&mut self, id: u64, op: u64, key: &[u8], rng: &mut StdRng) -> ReadStart {
        match self.read_gate(id, op, rng) {
            Gate::Open => ReadStart::Served(self.read_local(id, key)),
            Gate::Waiting => ReadStart::Waiting,
            Gate::Closed => ReadStart::Unavailable,
        }
    }

    /// Whether node `id` may serve a read now: open under the leader's lease; otherwise a
    /// ReadIndex round starts and its answer comes back as [`Answer::ReadReady`].
    pub fn read_gate(&mut self, id: u64, op: u64, rng: &mut StdRng) -> Gate {
        if !self.is_serving(id) {
            return Gate::Closed;
        }
        let now = self.clock(id);
        let status = self.node(id).registry.get(REGION);
        let trusted = |s: &scandium_raftstore::RegionStatus| {
            s.lease_valid(now) || (self.unsafe_reads && s.ready_for_reads)
        };
        if status.as_ref().is_some_and(trusted) {
            return Gate::Open;
        }
        let answers = self.answers.clone();
        let callback: ReadCallback = Box::new(move |result| {
            lock(&answers).push(Reply::Answer(Answer::ReadReady { op, node: id, result }))
        });
        let store = self.node(id).store.as_mut().expect("checked up");
        store.read_index(REGION, callback);
        if self.take_answer_of(op) {
            return Gate::Closed;
        }
        self.pump(id, rng);
        Gate::Waiting
    }

    /// Reads `key` from node `id`'s applied state; `None` if the node is down.
    pub fn read_local(&self, id: u64, key: &[u8]) -> Option<Option<Vec<u8>>> {
        let store = self.nodes[id as usize - 1].store.as_ref()?;
        let snapshot = store.engine_snapshot();
        Some(scandium_txn::raw::get(&*snapshot, Cf::Raw, key, 0).expect("memory engines read"))
    }

    /// Until when node `id` is paused (a time in the past if it is not).
    pub fn paused_until(&self, id: u64) -> u64 {
        self.nodes[id as usize - 1].paused_until
    }

    /// Whether node `id` can take requests now (up and not paused).
    pub fn is_serving(&self, id: u64) -> bool {
        self.is_up(id) && self.nodes[id as usize - 1].paused_until <= self.now
    }

    /// The Region as its leader sees it, if a running node leads it.
    pub fn leader_region(&self) -> Option<Region> {
        let leader = self.leader()?;
        self.nodes[leader as usize - 1].registry.get(REGION).map(|s| s.region)
    }

    /// Proposes a membership change through the leader `id`; the answer is ignored (the
    /// next change looks at the Region as it then is).
    pub fn change_peers(&mut self, id: u64, changes: Vec<PeerChange>, rng: &mut StdRng) {
        if !self.is_serving(id) {
            return;
        }
        if let Some(store) = self.node(id).store.as_mut() {
            store.propose_conf_change(REGION, changes, Box::new(|_| {}));
        }
        self.pump(id, rng);
    }

    /// Asks the leader `id` to hand leadership to peer `to`.
    pub fn transfer_leader(&mut self, id: u64, to: u64, rng: &mut StdRng) {
        if !self.is_serving(id) {
            return;
        }
        if let Some(store) = self.node(id).store.as_mut() {
            let _ = store.transfer_leader(REGION, to);
        }
        self.pump(id, rng);
    }

    /// For each replica in the leader's view of the Region: its node, whether it runs a
    /// replica, its applied index and its data digests (one per column family).
    /// Replicas removed from the Region are not listed.
    pub fn replica_states(&self) -> Vec<(u64, Option<ReplicaState>)> {
        let Some(region) = self.leader_region() else { return Vec::new() };
        region
            .peers
            .iter()
            .map(|peer| {
                let id = peer.store_id;
                let state = self.nodes[id as usize - 1].store.as_ref().and_then(|store| {
                    let local = store.status(REGION)?.region;
                    let applied = store.applied_index(REGION)?;
                    let digests =
                        scandium_raftstore::snapshot::digests(&local, &*store.engine_snapshot())
                            .expect("memory engines read");
                    Some((applied, digests))
                });
                (id, state)
            })
            .collect()
    }

    /// Rounds on node `id` until it has nothing left; its messages go to the network.
    fn pump(&mut self, id: u64, rng: &mut StdRng) {
        let mut outgoing = Vec::new();
        let mut failed = false;
        if let Some(store) = self.node(id).store.as_mut() {
            while store.has_ready() {
                match store.handle_ready_sending(&mut |mut m| outgoing.append(&mut m)) {
                    Ok(mut output) => outgoing.append(&mut output.messages),
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

    /// The data of an outgoing snapshot, streamed out of the sender's engine snapshot at
    /// once (the real transport streams it in chunks; the receiver sees the same data).
    fn take_snapshot(&mut self, from: u64, message: &PeerMessage) -> Option<Arc<SnapshotData>> {
        use prost::Message as _;
        let data = message.message.snapshot.as_ref()?.data.as_ref();
        let header = SnapshotHeader::decode(data).ok()?;
        let store = self.node(from).store.as_ref()?;
        let (region, engine_snapshot) = store.snapshot_sources().take(header.token)?;
        let mut assembler = SnapshotAssembler::new(64 << 20);
        for_each_chunk(&region, &*engine_snapshot, 4096, |chunk| assembler.push(chunk).is_ok())
            .ok()?;
        Some(Arc::new(assembler.finish()))
    }

    fn report_snapshot(&mut self, from: u64, message: &PeerMessage, delivered: bool) {
        if let Some(store) = self.node(from).store.as_mut() {
            store.report_snapshot(message.region_id, message.to.id, delivered);
        }
    }

    fn deliver(&mut self, from: u64, message: PeerMessage, snapshot: Option<Arc<SnapshotData>>) {
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
        let data = snapshot.map(|s| SnapshotData { entries: s.entries.clone() });
        let report = (message.region_id, message.to.id);
        let accepted =
            self.node(to).store.as_mut().expect("checked up").step(message, data).is_ok();
        if is_snapshot {
            if let Some(store) = self.node(from).store.as_mut() {
                store.report_snapshot(report.0, report.1, accepted);
            }
        }
    }
}

/// Whether the transaction holding `lock` committed (see [`Cluster::txn_final_value`]).
fn lock_committed(
    reader: &MvccReader<'_>,
    lock: &scandium_txn::mvcc::Lock,
) -> Result<bool, TxnError> {
    use scandium_txn::mvcc::TxnCommitRecord;
    let committed = |key: &[u8]| -> Result<bool, TxnError> {
        let record = reader.get_txn_commit_record(key, lock.ts())?;
        Ok(matches!(record, TxnCommitRecord::Committed(..)))
    };
    let ours = |l: &scandium_txn::mvcc::Lock| l.start_ts == lock.start_ts;
    match reader.load_lock(&lock.primary)?.filter(ours) {
        Some(primary) if primary.use_async_commit => {
            for secondary in &primary.secondaries {
                let held = reader.load_lock(secondary)?;
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

/// A replica's applied index and data digests (one per column family).
pub type ReplicaState = (u64, Vec<u64>);

/// How a transactional write command started; see [`Cluster::txn_write`].
pub enum TxnStart<T> {
    /// Proposed; the answer comes back as [`Answer::Proposed`]. The action's output is
    /// good only if that answer is a success.
    Proposed(T),
    /// The action changed nothing: its output stands now.
    Done(T),
    /// The action refused (a conflict, a lock in the way); nothing was proposed.
    Failed(TxnError),
    /// A command in flight holds a latch on one of the keys: try again shortly.
    Busy,
    /// Down, paused, or not a leader ready to serve: nothing was done.
    Unavailable,
}

impl<T> TxnStart<T> {
    /// The same start with the output mapped.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> TxnStart<U> {
        match self {
            TxnStart::Proposed(output) => TxnStart::Proposed(f(output)),
            TxnStart::Done(output) => TxnStart::Done(f(output)),
            TxnStart::Failed(e) => TxnStart::Failed(e),
            TxnStart::Busy => TxnStart::Busy,
            TxnStart::Unavailable => TxnStart::Unavailable,
        }
    }
}

/// Whether a read may go ahead; see [`Cluster::read_gate`].
pub enum Gate {
    /// Now, from the node's state.
    Open,
    /// After a ReadIndex round, answered as [`Answer::ReadReady`].
    Waiting,
    /// Not on this node: down, paused or not the leader.
    Closed,
}

/// How a read started; see [`Cluster::read`].
pub enum ReadStart {
    /// Served at once from the lease: the value (the outer `Option` is always `Some`).
    Served(Option<Option<Vec<u8>>>),
    /// A ReadIndex round is under way.
    Waiting,
    /// The node is down, paused or not the leader: nothing was read.
    Unavailable,
}

fn lock(answers: &Answers) -> std::sync::MutexGuard<'_, Vec<Reply>> {
    answers.lock().unwrap_or_else(|e| e.into_inner())
}
