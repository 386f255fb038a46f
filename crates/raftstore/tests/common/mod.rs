//! The cluster of stores the multi-store tests run on: in-memory engines, a router that
//! can cut, lose or hold any message, ticks, and helpers to propose, read and change.

#![allow(dead_code)] // each test binary uses a part

use prost::Message as _;
use scandium_raftstore::bootstrap::write_initial_group;
use scandium_raftstore::snapshot::{for_each_chunk, SnapshotHeader};
use scandium_raftstore::{
    ApplyOutput, Event, MetaStateMachine, PeerChange, PeerMessage, RaftCommand, RaftConfig,
    RaftstoreError, Registry, SplitRequest, Store,
};
use scandium_storage::{Cf, EngineRef, MemoryEngine, WriteBatch};
use scandium_types::{Peer, PeerRole, Region, RegionEpoch};
use std::any::Any;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

pub struct NoMeta;

impl MetaStateMachine for NoMeta {
    fn apply(&mut self, _: u64, _: &[u8], _: &mut WriteBatch) -> Box<dyn Any + Send> {
        Box::new(())
    }
    fn restore(&mut self, _: &EngineRef) {}
}

pub const TICK_MS: u64 = 10;
pub const REGION: u64 = 1;

/// Store `id`'s settings. Each store's election timeout is fixed and its own (10, 12,
/// 14, … ticks): raft-rs draws randomised timeouts from a thread-local generator, and two
/// stores drawing close ones could split the vote and, now and then, push an election
/// past the failover bound the tests assert.
pub fn config(id: u64) -> RaftConfig {
    let timeout = 10 + 2 * (id as usize - 1);
    RaftConfig {
        tick_ms: TICK_MS,
        log_gc_threshold: 8,
        max_log_entries: 20,
        min_election_ticks: timeout,
        max_election_ticks: timeout + 1,
        ..RaftConfig::default()
    }
}

pub struct Node {
    pub store: Option<Store>,
    pub engine: EngineRef,
    pub registry: Registry,
    /// Where the store stages received snapshots, if in files.
    pub snapshot_dir: Option<std::path::PathBuf>,
}

pub type Result<T> = std::result::Result<T, RaftstoreError>;
pub type Slot<T> = Arc<Mutex<Option<T>>>;

/// A cluster of stores 1..=n; store 1 starts with the only replica (peer 1) of Region 1,
/// covering every key.
/// Where [`Cluster::run_until`] stops early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Until {
    /// Nowhere: it runs until nothing moves.
    Settled,
    /// Once this store has begun installing a snapshot (it is stopped, as by a crash).
    Installing(u64),
    /// Once a snapshot was delivered to this store (stepped in, not yet installed).
    SnapshotDelivered(u64),
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    pub now: u64,
    /// Links `(from, to)` that drop everything.
    pub cut: HashSet<(u64, u64)>,
    /// Stores stopped (`SIGSTOP`): they do not tick, and what is sent to them waits.
    pub paused: HashSet<u64>,
    /// Messages waiting for a paused store, in the order they were sent.
    pub held: Vec<(u64, PeerMessage)>,
    pub events: Vec<(u64, Event)>,
    /// Snapshots delivered to each store.
    pub snapshots: Vec<usize>,
    /// `(store, group)`: the group's messages to the store are lost.
    pub lost_groups: HashSet<(u64, u64)>,
    /// `RaftConfig::hibernate_after_ticks` of every store (0: no hibernation).
    pub hibernate_after: usize,
    /// Messages delivered, beats aside.
    pub delivered: usize,
}

impl Cluster {
    pub fn new(n: u64) -> Cluster {
        Cluster::with_hibernation(n, 0)
    }

    /// Groups hibernate after `after` idle ticks.
    pub fn with_hibernation(n: u64, after: usize) -> Cluster {
        let mut nodes = Vec::new();
        for id in 1..=n {
            let engine: EngineRef = Arc::new(MemoryEngine::new());
            if id == 1 {
                let mut batch = WriteBatch::new();
                let region =
                    Region { id: REGION, peers: vec![Peer::new(1, 1)], ..Default::default() };
                write_initial_group(&mut batch, &region);
                engine.write(batch).unwrap();
            }
            nodes.push(Node { store: None, engine, registry: Registry::new(), snapshot_dir: None });
        }
        let mut cluster = Cluster {
            nodes,
            now: 0,
            cut: HashSet::new(),
            paused: HashSet::new(),
            held: Vec::new(),
            events: Vec::new(),
            snapshots: vec![0; n as usize + 1],
            lost_groups: HashSet::new(),
            hibernate_after: after,
            delivered: 0,
        };
        for id in 1..=n {
            cluster.start(id);
        }
        cluster.run();
        cluster
    }

    pub fn node(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[id as usize - 1]
    }

    pub fn store(&mut self, id: u64) -> &mut Store {
        self.node(id).store.as_mut().expect("store is running")
    }

    pub fn start(&mut self, id: u64) {
        let (now, hibernate_after) = (self.now, self.hibernate_after);
        let node = self.node(id);
        let mut store = Store::open(
            id,
            node.engine.clone(),
            // A restart is a new incarnation: it starts at a later time.
            RaftConfig {
                snapshot_dir: node.snapshot_dir.clone(),
                incarnation: now + 1,
                hibernate_after_ticks: hibernate_after,
                ..config(id)
            },
            Box::new(NoMeta),
            node.registry.clone(),
        )
        .unwrap();
        store.set_time(now);
        node.store = Some(store);
    }

    pub fn stop(&mut self, id: u64) {
        self.node(id).store = None;
    }

    pub fn isolate(&mut self, id: u64) {
        for other in 1..=self.nodes.len() as u64 {
            self.cut.insert((id, other));
            self.cut.insert((other, id));
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Stops store `id` as `SIGSTOP` does: no ticks, messages to it wait in its socket.
    pub fn pause(&mut self, id: u64) {
        self.paused.insert(id);
    }

    /// Lets store `id` go on: it works through what waited for it.
    pub fn resume(&mut self, id: u64) {
        self.paused.remove(&id);
        let (waiting, held): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.held).into_iter().partition(|(_, m)| m.to.store_id == id);
        self.held = held;
        for (from, message) in waiting {
            self.deliver(from, message);
        }
        self.run();
    }

    /// Runs rounds and delivers messages until nothing moves.
    pub fn run(&mut self) {
        self.run_until(Until::Settled);
    }

    /// Ticks every store and runs, at most `ticks` times, until `until` happens: whether
    /// it did.
    pub fn tick_until_it_happens(&mut self, ticks: usize, until: Until) -> bool {
        for _ in 0..ticks {
            self.now += TICK_MS;
            let now = self.now;
            for node in self.nodes.iter_mut() {
                if let Some(store) = node.store.as_mut() {
                    store.tick(now);
                }
            }
            if self.run_until(until) {
                return true;
            }
        }
        false
    }

    /// Runs rounds and delivers messages until nothing moves or `until` happens: whether
    /// it did.
    pub fn run_until(&mut self, until: Until) -> bool {
        let crash_at = match until {
            Until::Installing(id) => Some(id),
            _ => None,
        };
        for _ in 0..1000 {
            let mut moved = false;
            let mut outbox: Vec<(u64, PeerMessage)> = Vec::new();
            for i in 0..self.nodes.len() {
                let id = i as u64 + 1;
                if self.paused.contains(&id) {
                    continue;
                }
                let Some(store) = self.nodes[i].store.as_mut() else { continue };
                while store.has_ready() {
                    moved = true;
                    let out = store.handle_ready().unwrap();
                    outbox.extend(out.messages.into_iter().map(|m| (id, m)));
                    self.events.extend(out.events.into_iter().map(|e| (id, e)));
                    if crash_at == Some(id) && store.is_installing(REGION) {
                        self.nodes[i].store = None;
                        return true;
                    }
                }
            }
            for (from, message) in outbox {
                moved = true;
                let to = message.to.store_id;
                if self.paused.contains(&to) {
                    self.held.push((from, message));
                } else {
                    let snapshot = message.is_snapshot();
                    self.deliver(from, message);
                    if snapshot && until == Until::SnapshotDelivered(to) {
                        return true;
                    }
                }
            }
            if !moved {
                return false;
            }
        }
        panic!("the cluster never settled");
    }

    /// Sends `message` to its store now.
    pub fn deliver(&mut self, from: u64, message: PeerMessage) {
        let to = message.to.store_id;
        self.delivered += usize::from(message.store_beat == 0);
        let (region, peer) = (message.region_id, message.to.id);
        if self.lost_groups.contains(&(to, region)) {
            return;
        }
        if self.cut.contains(&(from, to)) || self.node(to).store.is_none() {
            if let Some(sender) = self.node(from).store.as_mut() {
                if message.is_snapshot() {
                    sender.report_snapshot(region, peer, false);
                }
                sender.report_unreachable(region, peer);
            }
            return;
        }
        let snapshot = if message.is_snapshot() {
            let header =
                SnapshotHeader::decode(message.message.snapshot.as_ref().unwrap().data.as_ref())
                    .unwrap();
            let sender = self.store(from);
            let (region, engine_snapshot) =
                sender.snapshot_sources().take(header.token).expect("snapshot registered");
            let mut staging = self.store(to).snapshot_stager().begin();
            let mut records = 0;
            for_each_chunk(&region, &*engine_snapshot, 1024, |c| {
                records += c.entries.len() as u64;
                staging.push(c).is_ok()
            })
            .unwrap();
            Some(staging.finish(Some(records)).expect("every record staged"))
        } else {
            None
        };
        let was_snapshot = snapshot.is_some();
        let delivered = self.store(to).step(message, snapshot).is_ok();
        if was_snapshot {
            self.store(from).report_snapshot(region, peer, delivered);
            self.snapshots[to as usize] += usize::from(delivered);
        }
    }

    pub fn tick(&mut self, ticks: usize) {
        for _ in 0..ticks {
            self.now += TICK_MS;
            let now = self.now;
            for (i, node) in self.nodes.iter_mut().enumerate() {
                if self.paused.contains(&(i as u64 + 1)) {
                    continue;
                }
                if let Some(store) = node.store.as_mut() {
                    store.tick(now);
                }
            }
            self.run();
        }
    }

    /// Ticks until `condition` holds, at most `ticks` times.
    pub fn tick_until(
        &mut self,
        ticks: usize,
        what: &str,
        mut condition: impl FnMut(&mut Cluster) -> bool,
    ) {
        for _ in 0..ticks {
            if condition(self) {
                return;
            }
            self.tick(1);
        }
        assert!(condition(self), "timed out waiting for {what}");
    }

    pub fn leader(&mut self) -> Option<u64> {
        (1..=self.nodes.len() as u64).find(|&id| {
            let node = self.node(id);
            node.store.is_some() && node.registry.get(REGION).is_some_and(|s| s.ready_for_reads)
        })
    }

    pub fn wait_leader(&mut self) -> u64 {
        self.tick_until(500, "a leader", |c| c.leader().is_some());
        self.leader().unwrap()
    }

    pub fn region(&mut self, store: u64) -> Option<Region> {
        self.node(store).registry.get(REGION).map(|s| s.region)
    }

    /// Proposes through `store` and runs until the proposal is answered.
    pub fn propose_on(&mut self, store: u64, command: RaftCommand) -> Result<ApplyOutput> {
        let slot: Slot<Result<ApplyOutput>> = Arc::default();
        let answer = slot.clone();
        let encoded = scandium_raftstore::EncodedCommand::new(command);
        self.store(store).propose_command(
            REGION,
            encoded,
            Box::new(move |r| *answer.lock().unwrap() = Some(r)),
        );
        self.run_until_answered(&slot)
    }

    /// Proposes a write of `key` through `store` without waiting: the answer lands in
    /// the slot whenever it comes.
    pub fn propose_later(&mut self, store: u64, key: &[u8], value: &[u8]) -> Slot<Result<()>> {
        let region = self.region(store).unwrap();
        let mut batch = WriteBatch::new();
        batch.put(Cf::Raw, key.to_vec(), value.to_vec());
        let slot: Slot<Result<()>> = Arc::default();
        let answer = slot.clone();
        let encoded = scandium_raftstore::EncodedCommand::new(RaftCommand::write(&region, batch));
        self.store(store).propose_command(
            REGION,
            encoded,
            Box::new(move |r| *answer.lock().unwrap() = Some(r.map(|_| ()))),
        );
        slot
    }

    /// Has the leader propose `key = value` with the followers' acknowledgements cut, so
    /// the entry reaches every follower but the leader never learns it is committed.
    /// Returns the leader and the slot its answer lands in.
    pub fn propose_unacknowledged(&mut self, key: &[u8], value: &[u8]) -> (u64, Slot<Result<()>>) {
        let leader = self.wait_leader();
        for f in (1..=self.nodes.len() as u64).filter(|&s| s != leader) {
            self.cut.insert((f, leader));
        }
        let answer = self.propose_later(leader, key, value);
        self.run();
        (leader, answer)
    }

    /// A leader elected among the stores other than `old`, once there is one.
    pub fn wait_leader_besides(&mut self, old: u64) -> u64 {
        let other_leader = |c: &mut Cluster| {
            (1..=c.nodes.len() as u64).find(|&s| {
                s != old && c.node(s).registry.get(REGION).is_some_and(|st| st.ready_for_reads)
            })
        };
        self.tick_until(300, "another leader", |c| other_leader(c).is_some());
        other_leader(self).unwrap()
    }

    pub fn run_until_answered<T>(&mut self, slot: &Slot<T>) -> T {
        for _ in 0..500 {
            self.run();
            if let Some(result) = slot.lock().unwrap().take() {
                return result;
            }
            self.tick(1);
        }
        panic!("no answer");
    }

    /// A ReadIndex round on `store`, run until it is answered.
    pub fn read_index(&mut self, store: u64) -> Result<()> {
        let slot: Slot<Result<()>> = Arc::default();
        let answer = slot.clone();
        self.store(store).read_index(REGION, Box::new(move |r| *answer.lock().unwrap() = Some(r)));
        self.run_until_answered(&slot)
    }

    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let leader = self.wait_leader();
        self.put_on(leader, key, value)
    }

    pub fn put_on(&mut self, leader: u64, key: &[u8], value: &[u8]) -> Result<()> {
        let region = self.region(leader).unwrap();
        let mut batch = WriteBatch::new();
        batch.put(Cf::Raw, key.to_vec(), value.to_vec());
        self.propose_on(leader, RaftCommand::write(&region, batch)).map(|_| ())
    }

    /// Splits Region 1 through its leader on `store` at `m`; the right half is Region
    /// 100 with peers 101–103 on stores 1–3.
    pub fn split_at_m(&mut self, store: u64) -> ApplyOutput {
        let region = self.region(store).unwrap();
        let split = SplitRequest {
            split_key: b"m".to_vec(),
            new_region_id: 100,
            new_peer_ids: vec![101, 102, 103],
        };
        self.propose_on(store, RaftCommand::split(&region, vec![split])).unwrap()
    }

    pub fn change(&mut self, changes: Vec<PeerChange>) -> Result<Region> {
        let leader = self.wait_leader();
        self.change_on(leader, changes)
    }

    pub fn change_on(&mut self, leader: u64, changes: Vec<PeerChange>) -> Result<Region> {
        self.change_group_on(leader, REGION, changes)
    }

    /// [`Cluster::change`] planned against the Region's epoch `planned`.
    pub fn change_planned(
        &mut self,
        planned: RegionEpoch,
        changes: Vec<PeerChange>,
    ) -> Result<Region> {
        let leader = self.wait_leader();
        self.change_with(leader, REGION, changes, Some(planned))
    }

    /// Changes the membership of `group` through its leader on store `leader`, and runs
    /// until that is applied there: the Region as it then is.
    pub fn change_group_on(
        &mut self,
        leader: u64,
        group: u64,
        changes: Vec<PeerChange>,
    ) -> Result<Region> {
        self.change_with(leader, group, changes, None)
    }

    fn change_with(
        &mut self,
        leader: u64,
        group: u64,
        changes: Vec<PeerChange>,
        planned: Option<RegionEpoch>,
    ) -> Result<Region> {
        let slot: Slot<Result<ApplyOutput>> = Arc::default();
        let answer = slot.clone();
        self.store(leader).propose_conf_change(
            group,
            changes,
            planned,
            Box::new(move |r| *answer.lock().unwrap() = Some(r)),
        );
        match self.run_until_answered(&slot)? {
            ApplyOutput::ConfChanged(region) => Ok(region),
            other => panic!("unexpected output {other:?}"),
        }
    }

    pub fn value(&mut self, store: u64, key: &[u8]) -> Option<Vec<u8>> {
        self.node(store).engine.get(Cf::Raw, key).unwrap()
    }

    /// Removes store 3's replica while it is cut off (it does not know), then adds a
    /// voter on store 4: the Region ends on 1, 2 and 4.
    pub fn remove_3_unseen_and_add_4(&mut self) {
        self.isolate(3);
        self.change(vec![PeerChange::Remove(Peer::new(3, 3))]).unwrap();
        self.change(vec![PeerChange::AddLearner(Peer::learner(4, 4))]).unwrap();
        self.tick_until(200, "learner caught up", |c| c.region(4).is_some());
        self.change(vec![PeerChange::AddVoter(Peer::new(4, 4))]).unwrap();
    }

    /// Grows Region 1 to voters on stores 1..=n (learners first, one joint promotion).
    pub fn replicate(&mut self, n: u64) {
        for id in 2..=n {
            self.change(vec![PeerChange::AddLearner(Peer::learner(id, id))]).unwrap();
        }
        for id in 2..=n {
            self.tick_until(200, "learner caught up", |c| c.region(id).is_some());
        }
        let promotions = (2..=n).map(|id| PeerChange::AddVoter(Peer::new(id, id))).collect();
        self.change(promotions).unwrap();
        self.tick_until(200, "joint configuration left", |c| {
            (1..=n).all(|s| {
                c.region(s).is_some_and(|r| {
                    r.peers.len() == n as usize
                        && r.peers.iter().all(|p| p.role() == PeerRole::Voter)
                })
            })
        });
    }
}
