//! Golden test of the placement state's on-disk records: bootstrap plus one of each command,
//! dumped (key, value bytes, meaning) and compared with `tests/golden/placement_records.txt`.
//! Regenerate with `UPDATE_GOLDENFILES=1` and review the diff.

use prost::Message as _;
use scandium_placement::{
    Command, KeyspaceMeta, Kind, LocationLabels, PlacementState, Response, SchedulerSettings,
    StoreLimit, StoreSeen, StoresSeen,
};
use scandium_storage::{Cf, EngineRef, MemoryEngine, WriteBatch};
use scandium_types::{Peer, Region, Store};
use std::fmt::Write as _;
use std::sync::Arc;

fn region(id: u64, start: &[u8], end: &[u8], version: u64) -> Region {
    Region {
        id,
        start_key: start.to_vec(),
        end_key: end.to_vec(),
        conf_ver: 1,
        version,
        peers: vec![Peer::new(id + 1, 1)],
    }
}

#[test]
fn placement_records() {
    let engine: EngineRef = Arc::new(MemoryEngine::new());
    let store = Store {
        id: 1,
        address: "127.0.0.1:2379".into(),
        version: "0.1.0".into(),
        ..Default::default()
    };
    let keyspace =
        KeyspaceMeta { id: 0, name: "DEFAULT".into(), state: 0, created_at: 1_700_000_000 };
    let (mut state, batch) = PlacementState::bootstrap(
        42,
        10,
        store,
        vec![region(1, b"", b"r", 1), region(3, b"r", b"", 1)],
        vec![keyspace],
    );
    engine.write(batch).unwrap();
    let mut batch = WriteBatch::new();
    let mut responses = Vec::new();
    for kind in [
        Kind::AllocIds(2),
        Kind::PutRegion(region(10, b"t", b"", 2)),
        Kind::PutRegion(region(3, b"r", b"t", 2)),
        Kind::RaiseTsoLimit(1_700_000_003_000),
        Kind::UpdateGcSafePoint(7),
        Kind::StoresSeen(StoresSeen {
            seen: vec![StoreSeen { store_id: 1, wall_ms: 1_700_000_004_000 }],
        }),
        Kind::SetScheduler(SchedulerSettings {
            replicas_paused: true,
            leaders_paused: false,
            balance_limit: 2,
            hot_paused: true,
            store_limit: 9,
            location_labels: Some(LocationLabels { levels: vec!["zone".into(), "host".into()] }),
            store_limits: vec![StoreLimit { store_id: 1, moves_per_minute: 3 }],
            merge_max_size: 1 << 20,
            merge_max_keys: 10_000,
            split_merge_interval_ms: 60_000,
            merges_paused: true,
        }),
    ] {
        responses.push(state.apply(&Command::new(kind).encode_to_vec(), &mut batch));
    }
    engine.write(batch).unwrap();
    assert_eq!(responses[0], Response::Ids { first: 10 });

    let mut dump = String::new();
    for item in engine.snapshot().scan(Cf::Placement, b"", b"", false) {
        let (key, value) = item.unwrap();
        let meaning = match key.first() {
            Some(b's') => format!("{:?}", Store::decode(value.as_slice()).unwrap()),
            Some(b'g') => format!("{:?}", Region::decode(value.as_slice()).unwrap()),
            Some(b'k') => format!("{:?}", KeyspaceMeta::decode(value.as_slice()).unwrap()),
            _ => String::from("cluster record"),
        };
        let hex: String = value.iter().map(|b| format!("{b:02x}")).collect();
        writeln!(dump, "{} = {hex}\n    {meaning}", key.escape_ascii()).unwrap();
    }
    let loaded = PlacementState::load(&engine).unwrap().unwrap();
    writeln!(
        dump,
        "loaded: cluster {} tso_limit {} gc {} scheduler {:?}",
        loaded.cluster_id(),
        loaded.tso_limit_ms(),
        loaded.gc_safe_point(),
        loaded.scheduler_settings()
    )
    .unwrap();

    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/placement_records.txt");
    if std::env::var_os("UPDATE_GOLDENFILES").is_some() {
        std::fs::write(&path, &dump).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        expected == dump,
        "differs from {}; rerun with UPDATE_GOLDENFILES=1 and review.\n{dump}",
        path.display()
    );
}
