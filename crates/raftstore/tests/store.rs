//! The store's lifecycle on an in-memory engine: bootstrap, election, proposals, group
//! commit, split, restart.

use prost::Message as _;
use scandium_raftstore::bootstrap::write_initial_group;
use scandium_raftstore::{
    ApplyOutput, MetaStateMachine, RaftCommand, RaftConfig, RaftstoreError, Registry, SplitRequest,
    Store, META_GROUP_ID,
};
use scandium_storage::{Cf, Engine, EngineRef, MemoryEngine, WriteBatch};
use scandium_types::{Peer, Region};
use std::any::Any;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Counts applied placement commands, persisting the count.
struct CountingMeta;

impl MetaStateMachine for CountingMeta {
    fn apply(&mut self, index: u64, command: &[u8], batch: &mut WriteBatch) -> Box<dyn Any + Send> {
        batch.put(Cf::Placement, b"last".to_vec(), command.to_vec());
        Box::new(index)
    }
    fn restore(&mut self, _: &EngineRef) {}
}

/// An engine that counts fsyncs.
struct CountingEngine {
    inner: MemoryEngine,
    syncs: AtomicUsize,
}

impl Engine for CountingEngine {
    fn write(&self, batch: WriteBatch) -> scandium_storage::Result<()> {
        self.inner.write(batch)
    }
    fn sync(&self) -> scandium_storage::Result<()> {
        self.syncs.fetch_add(1, Ordering::SeqCst);
        self.inner.sync()
    }
    fn get(&self, cf: Cf, key: &[u8]) -> scandium_storage::Result<Option<Vec<u8>>> {
        self.inner.get(cf, key)
    }
    fn snapshot(&self) -> Box<dyn scandium_storage::Snapshot> {
        self.inner.snapshot()
    }
    fn disk_size(&self) -> u64 {
        0
    }
}

fn bootstrap(engine: &EngineRef) {
    let mut batch = WriteBatch::new();
    let region = Region { id: 1, peers: vec![Peer::new(2, 1)], ..Default::default() };
    write_initial_group(&mut batch, &region);
    let meta = Region { id: META_GROUP_ID, peers: vec![Peer::new(3, 1)], ..Default::default() };
    write_initial_group(&mut batch, &meta);
    engine.write(batch).unwrap();
}

fn open(engine: &EngineRef, registry: &Registry) -> Store {
    let mut store = Store::open(
        1,
        engine.clone(),
        RaftConfig::default(),
        Box::new(CountingMeta),
        registry.clone(),
    )
    .unwrap();
    drive(&mut store);
    store
}

fn drive(store: &mut Store) {
    for _ in 0..10 {
        if !store.has_ready() {
            return;
        }
        store.handle_ready().unwrap();
    }
    panic!("store did not settle");
}

type Results = Arc<Mutex<Vec<Result<ApplyOutput, RaftstoreError>>>>;

fn propose(store: &mut Store, group: u64, data: Vec<u8>, results: &Results) {
    let results = results.clone();
    store.propose(group, data, Box::new(move |r| results.lock().unwrap().push(r)));
}

fn put_command(region: &Region, key: &[u8]) -> Vec<u8> {
    let mut batch = WriteBatch::new();
    batch.put(Cf::Raw, key.to_vec(), b"value".to_vec());
    RaftCommand::write(region, batch).encode_to_vec()
}

#[test]
fn single_voter_groups_elect_themselves_and_apply_in_one_round() {
    let engine: EngineRef = Arc::new(MemoryEngine::new());
    bootstrap(&engine);
    let registry = Registry::new();
    let mut store = open(&engine, &registry);
    let status = registry.get(1).expect("region 1 is published");
    assert!(status.ready_for_reads, "leader has applied its own-term entry");
    assert!(registry.meta().is_leader);

    let results = Results::default();
    for i in 0..50u8 {
        propose(&mut store, 1, put_command(&status.region, &[b'k', i]), &results);
    }
    propose(&mut store, META_GROUP_ID, b"hello".to_vec(), &results);
    store.handle_ready().unwrap();
    let results = results.lock().unwrap();
    assert_eq!(results.len(), 51, "one round persists and applies every pending proposal");
    // Groups are handled in no particular order; count the outcomes by kind.
    assert_eq!(results.iter().filter(|r| matches!(r, Ok(ApplyOutput::Written))).count(), 50);
    assert_eq!(results.iter().filter(|r| matches!(r, Ok(ApplyOutput::Meta(_)))).count(), 1);
    assert_eq!(engine.get(Cf::Raw, b"k\x31").unwrap(), Some(b"value".to_vec()));
    assert_eq!(engine.get(Cf::Placement, b"last").unwrap(), Some(b"hello".to_vec()));
}

/// Group commit: however many proposals are waiting, across however many groups, a round
/// persists them with one fsync.
#[test]
fn one_round_syncs_once_for_all_waiting_proposals() {
    let counting =
        Arc::new(CountingEngine { inner: MemoryEngine::new(), syncs: AtomicUsize::new(0) });
    let engine: EngineRef = counting.clone();
    bootstrap(&engine);
    let registry = Registry::new();
    let mut store = open(&engine, &registry);
    let region = registry.get(1).unwrap().region;
    let results = Results::default();
    let before = counting.syncs.load(Ordering::SeqCst);
    for i in 0..200u32 {
        propose(&mut store, 1, put_command(&region, &i.to_be_bytes()), &results);
    }
    propose(&mut store, META_GROUP_ID, b"x".to_vec(), &results);
    store.handle_ready().unwrap();
    assert_eq!(results.lock().unwrap().len(), 201);
    assert_eq!(
        counting.syncs.load(Ordering::SeqCst) - before,
        1,
        "one fsync for 201 writes in two groups"
    );
}

#[test]
fn a_split_at_two_keys_creates_two_serving_regions_that_survive_restart() {
    let engine: EngineRef = Arc::new(MemoryEngine::new());
    bootstrap(&engine);
    let registry = Registry::new();
    let mut store = open(&engine, &registry);
    let region = registry.get(1).unwrap().region;
    let results = Results::default();
    let cuts = vec![
        SplitRequest { split_key: b"m".to_vec(), new_region_id: 10, new_peer_ids: vec![11] },
        SplitRequest { split_key: b"t".to_vec(), new_region_id: 12, new_peer_ids: vec![13] },
    ];
    propose(&mut store, 1, RaftCommand::split(&region, cuts).encode_to_vec(), &results);
    // A write proposed under the old epoch for a key that moves to a new Region.
    propose(&mut store, 1, put_command(&region, b"x"), &results);
    drive(&mut store);
    {
        let results = results.lock().unwrap();
        assert!(matches!(&results[0], Ok(ApplyOutput::Split { left, new })
            if left.end_key == b"m" && new.len() == 2
                && (new[0].id, &new[0].start_key[..], &new[0].end_key[..]) == (10, b"m", b"t")
                && (new[1].id, &new[1].start_key[..]) == (12, b"t")));
        assert!(matches!(&results[1], Err(RaftstoreError::EpochNotMatch { .. })));
    }
    assert_eq!(engine.get(Cf::Raw, b"x").unwrap(), None, "refused write left no trace");
    let middle = registry.get(10).expect("new region published");
    assert!(middle.ready_for_reads);
    let right = registry.get(12).expect("new region published");
    assert!(right.ready_for_reads);
    assert_eq!(registry.find_by_key(b"z").unwrap().region.id, 12);
    assert_eq!(registry.find_by_key(b"p").unwrap().region.id, 10);
    assert_eq!(registry.find_by_key(b"a").unwrap().region.id, 1);

    let results = Results::default();
    propose(&mut store, 12, put_command(&right.region, b"x"), &results);
    drive(&mut store);
    assert!(matches!(results.lock().unwrap()[0], Ok(ApplyOutput::Written)));
    drop(store);

    let registry = Registry::new();
    let _store = open(&engine, &registry);
    assert_eq!(registry.all().len(), 3);
    assert_eq!(registry.get(1).unwrap().region.version, 2, "one version per new region");
    assert!(registry.get(10).unwrap().ready_for_reads);
    assert!(registry.get(12).unwrap().ready_for_reads);
    assert_eq!(engine.get(Cf::Raw, b"x").unwrap(), Some(b"value".to_vec()));
}

#[test]
fn unknown_groups_and_oversized_entries_are_refused() {
    let engine: EngineRef = Arc::new(MemoryEngine::new());
    bootstrap(&engine);
    let registry = Registry::new();
    let mut store = open(&engine, &registry);
    let results = Results::default();
    propose(&mut store, 99, vec![1], &results);
    propose(&mut store, 1, vec![0; 9 << 20], &results);
    let results = results.lock().unwrap();
    assert!(matches!(results[0], Err(RaftstoreError::RegionNotFound(99))));
    assert!(matches!(results[1], Err(RaftstoreError::EntryTooLarge { .. })));
}

#[test]
fn log_is_truncated_after_apply() {
    let engine: EngineRef = Arc::new(MemoryEngine::new());
    bootstrap(&engine);
    let registry = Registry::new();
    let mut store = open(&engine, &registry);
    let region = registry.get(1).unwrap().region;
    let results = Results::default();
    for i in 0..1000u32 {
        propose(&mut store, 1, put_command(&region, &i.to_be_bytes()), &results);
        store.handle_ready().unwrap();
    }
    let log_entries = engine.snapshot().scan(Cf::RaftLog, b"", b"", false).count();
    assert!(log_entries <= 300, "log holds {log_entries} entries");
    assert_eq!(results.lock().unwrap().len(), 1000);
}

/// A command proposed with its encoding is applied as proposed, and the log holds its
/// encoding, so a replay after restart (which decodes the entry) applies the same writes.
#[test]
fn encoded_commands_apply_and_their_log_entries_decode_to_them() {
    let engine: EngineRef = Arc::new(MemoryEngine::new());
    bootstrap(&engine);
    let registry = Registry::new();
    let mut store = open(&engine, &registry);
    let region = registry.get(1).unwrap().region;
    let mut batch = WriteBatch::new();
    batch.put(Cf::Raw, b"encoded".to_vec(), b"v".to_vec());
    let command = RaftCommand::write(&region, batch);
    let results = Results::default();
    let sink = results.clone();
    store.propose_command(
        1,
        scandium_raftstore::EncodedCommand::new(command.clone()),
        Box::new(move |r| sink.lock().unwrap().push(r)),
    );
    drive(&mut store);
    assert!(matches!(results.lock().unwrap()[..], [Ok(ApplyOutput::Written)]));
    assert_eq!(engine.get(Cf::Raw, b"encoded").unwrap(), Some(b"v".to_vec()));
    let (start, end) = (1u64.to_be_bytes(), 2u64.to_be_bytes());
    let (_, last) =
        engine.snapshot().scan(Cf::RaftLog, &start, &end, true).next().unwrap().unwrap();
    let entry = <raft::prelude::Entry as protobuf::Message>::parse_from_bytes(&last).unwrap();
    assert_eq!(RaftCommand::decode(entry.data.as_ref()).unwrap(), command);
}
