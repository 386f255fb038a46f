//! What placement holds per Region: the state machine with 100,000 Regions, and the
//! placement leader's control plane once every Region has reported, every allocation
//! counted; how long the state takes to load from the engine; and what a balancing run
//! costs the leader: a count of the stores over every Region, and a heartbeat that
//! carries nothing, patrolled (times printed, not judged:
//! `cargo test --release -p scandium-placement --test footprint -- --nocapture`).
//!
//! A binary of its own: the count is of the whole process, so nothing may run beside it.

use prost::Message as _;
use scandium_placement::scheduler::Balance;
use scandium_placement::{
    Command, ControlConfig, ControlPlane, KeyspaceMeta, Kind, Now, PlacementState, RegionHeartbeat,
    RegionLoad, RegionReport, Reports,
};
use scandium_storage::{EngineRef, MemoryEngine, WriteBatch};
use scandium_types::{Peer, Region, Store};
use stats_alloc::{Region as Counted, StatsAlloc, INSTRUMENTED_SYSTEM};
use std::alloc::System;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const REGIONS: u64 = 100_000;

/// Bytes allocated and not freed since `counted` began.
fn held(counted: &Counted<System>) -> i64 {
    let change = counted.change();
    // A realloc counts its growth as allocated and its shrinking as freed.
    change.bytes_allocated as i64 - change.bytes_deallocated as i64
}

/// Region `i` of a table's rows: keys as a TiDB table's record keys are (19 bytes),
/// three replicas on stores 1–3.
fn region(i: u64) -> Region {
    let key = |i: u64| match i {
        0 => Vec::new(),
        i => [b"t\x80\0\0\0\0\0\0\x2a_r".as_slice(), &(i * 1_000).to_be_bytes()].concat(),
    };
    Region {
        id: 1_000 + i,
        start_key: key(i),
        end_key: if i + 1 == REGIONS { Vec::new() } else { key(i + 1) },
        peers: (1..=3).map(|s| Peer::new(1_000_000 + i * 3 + s, s)).collect(),
        conf_ver: 3,
        version: 40,
    }
}

#[test]
fn placement_state_and_control_plane_per_region() {
    let store = |id: u64| Store { id, address: format!("10.0.0.{id}:20160"), ..Default::default() };
    let keyspace = KeyspaceMeta { id: 0, name: "DEFAULT".into(), state: 0, created_at: 0 };
    let regions: Vec<Region> = (0..REGIONS).map(region).collect();
    let counted = Counted::new(GLOBAL);
    let (state, batch) =
        PlacementState::bootstrap(1, 10_000_000, store(1), regions, vec![keyspace]);
    let state_bytes = held(&counted);
    let engine: EngineRef = Arc::new(MemoryEngine::new());
    engine.write(batch).unwrap();
    drop(state);

    let started = Instant::now();
    let counted = Counted::new(GLOBAL);
    let loaded = PlacementState::load(&engine).unwrap().expect("bootstrapped");
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    let loaded_bytes = held(&counted);
    assert_eq!(loaded.regions().count() as u64, REGIONS);

    // The placement leader hears every Region (the stores' full heartbeats), records
    // their leaders, and hears them again: what it holds from then on.
    let mut plane = ControlPlane::new(ControlConfig::default());
    let now = Now { monotonic_ms: 1_000, wall_ms: 1_000 };
    let mut state = loaded;
    for id in 2..=3 {
        let join = Command::new(Kind::PutStore(store(id)));
        state.apply(&join.encode_to_vec(), &mut WriteBatch::new());
    }
    plane.take_over(1, &state, now);
    let beats: Vec<RegionHeartbeat> = state
        .regions()
        .map(|r| RegionHeartbeat {
            report: RegionReport {
                region: Some(r.clone()),
                leader_peer_id: r.peers[0].id,
                term: 7,
            },
            pending: Vec::new(),
            load: RegionLoad {
                approximate_size: 90 << 20,
                approximate_keys: 900_000,
                ..Default::default()
            },
        })
        .collect();
    let counted = Counted::new(GLOBAL);
    for batch in beats.chunks(10_000) {
        let intake = plane.region_heartbeats(&state, batch, now);
        let record = Command::new(Kind::ReportRegions(Reports { reports: intake.changed }));
        state.apply(&record.encode_to_vec(), &mut WriteBatch::new());
    }
    for batch in beats.chunks(10_000) {
        let intake = plane.region_heartbeats(&state, batch, now);
        assert!(intake.changed.is_empty());
        plane.wants(&state, 1, true, now);
    }
    // Every Region has its replicas; leaders, all on store 1, start to move (four at a
    // time).
    assert!(plane.operators().count() <= 4);
    // A count of the stores over every Region, as a balancing run makes at most once a
    // second (`BALANCE_RECOUNT_MS`), and store 1's heartbeat with no Region in it: its
    // patrol looks at 64 of the Regions it leads.
    let started = Instant::now();
    let live = plane.liveness(now);
    let (running, config) = (plane.operators(), &plane.config().scheduler);
    let balance = Balance::of(&state, &live, config, running, &BTreeMap::new(), &BTreeMap::new());
    let count_ms = started.elapsed().as_secs_f64() * 1e3;
    assert_eq!(balance.leaders.values().sum::<usize>() as u64, REGIONS);
    let started = Instant::now();
    for _ in 0..100 {
        plane.heartbeat(&state, 1, &[], false, now);
    }
    let beat_us = started.elapsed().as_secs_f64() * 1e6 / 100.0;
    let with_plane = held(&counted);
    drop(plane);
    let plane_bytes = with_plane - held(&counted);
    let per = |bytes: i64| bytes / REGIONS as i64;
    println!(
        "{REGIONS} Regions: state {} MB ({} B a Region) as built, {} MB loaded in {load_ms:.0} \
         ms; control plane {} MB ({} B a Region), leaders recorded; a count of the stores \
         {count_ms:.1} ms, an empty heartbeat patrolled {beat_us:.0} µs",
        state_bytes >> 20,
        per(state_bytes),
        loaded_bytes >> 20,
        plane_bytes >> 20,
        per(plane_bytes),
    );
    // "A few tens of MB" for 100,000 Regions: 500 B a Region for each.
    assert!(per(state_bytes) < 500 && per(loaded_bytes) < 500, "state: {}", per(loaded_bytes));
    assert!(per(plane_bytes) < 500, "control plane: {}", per(plane_bytes));
}
