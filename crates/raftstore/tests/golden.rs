//! Golden test of the raftstore's on-disk layout: after bootstrap, two writes and a split,
//! every record the store wrote is dumped (key, value bytes, and what the value means) and
//! compared with `tests/golden/store_layout.txt`. A change to a key layout or a record
//! format shows up as a diff to review. Regenerate with `UPDATE_GOLDENFILES=1`.

use prost::Message as _;
use protobuf::Message as _;
use scandium_raftstore::bootstrap::write_initial_group;
use scandium_raftstore::state::{ApplyState, RaftLocalState, RegionLocalState};
use scandium_raftstore::{
    keys, ApplyOutput, MetaStateMachine, RaftCommand, RaftConfig, Registry, SplitRequest, Store,
    META_GROUP_ID,
};
use scandium_storage::{Cf, EngineRef, MemoryEngine, WriteBatch};
use scandium_types::{Peer, Region};
use std::any::Any;
use std::fmt::Write as _;
use std::sync::Arc;

struct NoMeta;

impl MetaStateMachine for NoMeta {
    fn apply(&mut self, _: u64, _: &[u8], _: &mut WriteBatch) -> Box<dyn Any + Send> {
        Box::new(())
    }
    fn restore(&mut self, _: &EngineRef) {}
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn describe(cf: Cf, key: &[u8], value: &[u8]) -> String {
    match (cf, key.first()) {
        (Cf::RaftLog, _) => {
            let entry = raft::prelude::Entry::parse_from_bytes(value).unwrap();
            let command = RaftCommand::decode(entry.data.as_ref())
                .map(|c| format!("{c:?}"))
                .unwrap_or_default();
            let (group, index) = keys::decode_log_key(key).unwrap();
            format!("group={group} index={index} term={} {command}", entry.term)
        }
        (Cf::RaftState, Some(b'h')) => format!("{:?}", RaftLocalState::decode(value).unwrap()),
        (Cf::RaftState, Some(b'a')) => format!("{:?}", ApplyState::decode(value).unwrap()),
        (Cf::RaftState, Some(b'r')) => format!("{:?}", RegionLocalState::decode(value).unwrap()),
        _ => String::new(),
    }
}

#[test]
fn store_layout() {
    let engine: EngineRef = Arc::new(MemoryEngine::new());
    let mut batch = WriteBatch::new();
    let region = Region {
        id: 1,
        conf_ver: 1,
        version: 1,
        peers: vec![Peer::new(2, 1)],
        ..Default::default()
    };
    write_initial_group(&mut batch, &region);
    let meta = Region { id: META_GROUP_ID, peers: vec![Peer::new(3, 1)], ..Default::default() };
    write_initial_group(&mut batch, &meta);
    engine.write(batch).unwrap();

    let mut store =
        Store::open(1, engine.clone(), RaftConfig::default(), Box::new(NoMeta), Registry::new())
            .unwrap();
    while store.has_ready() {
        store.handle_ready().unwrap();
    }
    let mut writes = WriteBatch::new();
    writes.put(Cf::Raw, b"a".to_vec(), b"1".to_vec());
    writes.delete(Cf::Raw, b"z".to_vec());
    store.propose(
        1,
        RaftCommand::write(&region, writes).encode_to_vec(),
        Box::new(|r| assert!(r.is_ok())),
    );
    let split =
        SplitRequest { split_key: b"m".to_vec(), new_region_id: 10, new_peer_ids: vec![11] };
    store.propose(
        1,
        RaftCommand::split(&region, vec![split]).encode_to_vec(),
        Box::new(|r| assert!(matches!(r, Ok(ApplyOutput::Split { .. })))),
    );
    while store.has_ready() {
        store.handle_ready().unwrap();
    }

    let mut dump = String::new();
    let snapshot = engine.snapshot();
    for cf in [Cf::RaftLog, Cf::RaftState, Cf::Raw] {
        for item in snapshot.scan(cf, b"", b"", false) {
            let (key, value) = item.unwrap();
            writeln!(dump, "{cf:?} {} = {}", key.escape_ascii(), hex(&value)).unwrap();
            let meaning = describe(cf, &key, &value);
            if !meaning.is_empty() {
                writeln!(dump, "    {meaning}").unwrap();
            }
        }
    }
    check_golden("tests/golden/store_layout.txt", &dump);
}

fn check_golden(path: &str, actual: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    if std::env::var_os("UPDATE_GOLDENFILES").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        expected == actual,
        "{} differs from the golden file; if the change is intended, rerun with UPDATE_GOLDENFILES=1 \
         and review the diff.\n--- actual ---\n{actual}",
        path.display()
    );
}
