use super::*;
use crate::command::{Kind, Regions};
use scandium_storage::MemoryEngine;
use scandium_types::Peer;
use std::sync::Arc;

fn region(id: u64, start: &[u8], end: &[u8], version: u64) -> Region {
    Region {
        id,
        start_key: start.to_vec(),
        end_key: end.to_vec(),
        conf_ver: 1,
        version,
        peers: vec![Peer::new(id + 100, 1)],
    }
}

fn store() -> Store {
    Store { id: 1, address: "127.0.0.1:2379".into(), ..Default::default() }
}

fn bootstrapped() -> PlacementState {
    PlacementState::bootstrap(
        7,
        10,
        store(),
        vec![region(1, b"", b"m", 1), region(2, b"m", b"", 1)],
        vec![KeyspaceMeta { id: 0, name: "DEFAULT".into(), state: 0, created_at: 0 }],
    )
    .0
}

fn apply(state: &mut PlacementState, kind: Kind) -> Response {
    state.apply(&prost::Message::encode_to_vec(&Command::new(kind)), &mut WriteBatch::new())
}

#[test]
fn lookups_by_key() {
    let state = bootstrapped();
    assert_eq!(state.region_by_key(b"").unwrap().id, 1);
    assert_eq!(state.region_by_key(b"l\xff").unwrap().id, 1);
    assert_eq!(state.region_by_key(b"m").unwrap().id, 2);
    assert_eq!(state.prev_region(b"z").unwrap().id, 1);
    assert!(state.prev_region(b"a").is_none());
    let ids = |rs: Vec<&Region>| rs.iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(ids(state.scan_regions(b"c", b"", 0)), vec![1, 2]);
    assert_eq!(ids(state.scan_regions(b"c", b"m", 0)), vec![1]);
    assert_eq!(ids(state.scan_regions(b"", b"", 1)), vec![1]);
    assert_eq!(state.keyspace_by_name("DEFAULT").unwrap().id, 0);
}

#[test]
fn split_reports_replace_the_old_region_and_stale_reports_are_ignored() {
    let mut state = bootstrapped();
    // Region 2 [m, "") splits at t: 2 becomes [m, t), 3 is [t, "").
    assert_eq!(apply(&mut state, Kind::PutRegion(region(3, b"t", b"", 2))), Response::Done);
    assert_eq!(apply(&mut state, Kind::PutRegion(region(2, b"m", b"t", 2))), Response::Done);
    assert_eq!(state.region_by_key(b"u").unwrap().id, 3);
    assert_eq!(state.region_by_key(b"n").unwrap().id, 2);
    assert_eq!(apply(&mut state, Kind::PutRegion(region(2, b"m", b"", 1))), Response::StaleRegion);
    assert_eq!(state.regions().count(), 3);
}

#[test]
fn new_region_reported_before_its_parent_evicts_the_parent() {
    let mut state = bootstrapped();
    assert_eq!(apply(&mut state, Kind::PutRegion(region(3, b"t", b"", 2))), Response::Done);
    assert!(state.region(2).is_none(), "the stale parent overlapped and was removed");
    assert_eq!(state.region_by_key(b"z").unwrap().id, 3);
}

#[test]
fn both_halves_of_a_split_are_recorded_at_once() {
    let mut state = bootstrapped();
    let halves = Regions { regions: vec![region(3, b"t", b"", 2), region(2, b"m", b"t", 2)] };
    assert_eq!(apply(&mut state, Kind::PutRegions(halves)), Response::Done);
    assert_eq!(state.region_by_key(b"n").unwrap().id, 2, "no gap on the left half");
    assert_eq!(state.region_by_key(b"u").unwrap().id, 3);
    assert_eq!(state.regions().count(), 3);
    let stale = Regions { regions: vec![region(2, b"m", b"", 1)] };
    assert_eq!(apply(&mut state, Kind::PutRegions(stale)), Response::StaleRegion);
}

#[test]
fn ids_timestamps_and_safe_points_only_move_forward() {
    let mut state = bootstrapped();
    assert_eq!(apply(&mut state, Kind::AllocIds(3)), Response::Ids { first: 10 });
    assert_eq!(apply(&mut state, Kind::AllocIds(1)), Response::Ids { first: 13 });
    assert_eq!(apply(&mut state, Kind::RaiseTsoLimit(500)), Response::TsoLimit(500));
    assert_eq!(apply(&mut state, Kind::RaiseTsoLimit(100)), Response::TsoLimit(500));
    assert_eq!(apply(&mut state, Kind::UpdateGcSafePoint(9)), Response::GcSafePoint(9));
    assert_eq!(apply(&mut state, Kind::UpdateGcSafePoint(3)), Response::GcSafePoint(9));
    assert!(matches!(state.apply(b"\xff\xff", &mut WriteBatch::new()), Response::Invalid(_)));
}

#[test]
fn state_round_trips_through_the_engine() {
    let engine: scandium_storage::EngineRef = Arc::new(MemoryEngine::new());
    assert!(PlacementState::load(&engine).unwrap().is_none());
    let (mut state, batch) = PlacementState::bootstrap(
        7,
        10,
        store(),
        vec![region(1, b"", b"m", 1), region(2, b"m", b"", 1)],
        vec![],
    );
    engine.write(batch).unwrap();
    let mut batch = WriteBatch::new();
    let split = Command::new(Kind::PutRegion(region(3, b"t", b"", 2)));
    state.apply(&prost::Message::encode_to_vec(&split), &mut batch);
    let ids = Command::new(Kind::AllocIds(5));
    state.apply(&prost::Message::encode_to_vec(&ids), &mut batch);
    engine.write(batch).unwrap();
    let loaded = PlacementState::load(&engine).unwrap().unwrap();
    assert_eq!(loaded.cluster_id(), 7);
    assert_eq!(loaded.regions().map(|r| r.id).collect::<Vec<_>>(), vec![1, 3]);
    assert_eq!(loaded.store(1).unwrap().address, "127.0.0.1:2379");
    let mut loaded = loaded;
    assert_eq!(apply(&mut loaded, Kind::AllocIds(1)), Response::Ids { first: 15 });
}

#[test]
fn joining_stores_get_fresh_ids_and_retired_ones_stay_retired() {
    use crate::command::StoreStateChange;
    use scandium_types::StoreState;
    let mut state = bootstrapped();
    let joined = apply(
        &mut state,
        Kind::JoinStore(Store { address: "127.0.0.1:2380".into(), ..Default::default() }),
    );
    assert_eq!(joined, Response::Ids { first: 10 });
    assert_eq!(state.store(10).unwrap().address, "127.0.0.1:2380");
    assert_eq!(
        apply(&mut state, Kind::AllocIds(1)),
        Response::Ids { first: 11 },
        "ids never reused"
    );
    let offline = StoreStateChange { store_id: 10, state: StoreState::Offline as i32 };
    assert_eq!(apply(&mut state, Kind::SetStoreState(offline)), Response::Done);
    // A draining store that restarts keeps draining.
    let restarted = Store { id: 10, address: "127.0.0.1:2380".into(), ..Default::default() };
    apply(&mut state, Kind::PutStore(restarted.clone()));
    assert_eq!(state.store(10).unwrap().state(), StoreState::Offline);
    let gone = StoreStateChange { store_id: 10, state: StoreState::Tombstone as i32 };
    assert_eq!(apply(&mut state, Kind::SetStoreState(gone)), Response::Done);
    assert!(matches!(apply(&mut state, Kind::PutStore(restarted)), Response::Invalid(_)));
    let revive = StoreStateChange { store_id: 10, state: StoreState::Up as i32 };
    assert!(matches!(apply(&mut state, Kind::SetStoreState(revive)), Response::Invalid(_)));
}

#[test]
fn reported_leaders_follow_the_newest_term_and_survive_a_reload() {
    use crate::command::{RegionReport, Reports};
    let engine: scandium_storage::EngineRef = Arc::new(MemoryEngine::new());
    let (mut state, batch) = PlacementState::bootstrap(
        7,
        10,
        store(),
        vec![region(1, b"", b"m", 1), region(2, b"m", b"", 1)],
        vec![],
    );
    engine.write(batch).unwrap();
    let report = |term, leader| RegionReport {
        region: Some(region(1, b"", b"m", 1)),
        leader_peer_id: leader,
        term,
    };
    let mut batch = WriteBatch::new();
    let command = |reports| {
        prost::Message::encode_to_vec(&Command::new(Kind::ReportRegions(Reports { reports })))
    };
    state.apply(&command(vec![report(6, 101)]), &mut batch);
    state.apply(&command(vec![report(5, 999)]), &mut batch);
    engine.write(batch).unwrap();
    assert_eq!(state.leader_of(1).map(|p| p.id), Some(101), "the older term is ignored");
    let reloaded = PlacementState::load(&engine).unwrap().unwrap();
    assert_eq!(reloaded.leader_record(1).map(|l| (l.peer_id, l.term)), Some((101, 6)));
    assert_eq!(reloaded.leader_of(2), None);
}

#[test]
fn scheduler_settings_are_checked_before_they_are_recorded() {
    let mut state = bootstrapped();
    let levels = |levels: &[&str]| {
        Some(crate::LocationLabels { levels: levels.iter().map(|l| l.to_string()).collect() })
    };
    let limit = |store_id, moves_per_minute| crate::StoreLimit { store_id, moves_per_minute };
    let refused = [
        SchedulerSettings { balance_limit: 1025, ..Default::default() },
        SchedulerSettings { store_limit: 100_001, ..Default::default() },
        SchedulerSettings { location_labels: levels(&["zone", "zone"]), ..Default::default() },
        SchedulerSettings { location_labels: levels(&["zone", ""]), ..Default::default() },
        SchedulerSettings { location_labels: levels(&["a b"]), ..Default::default() },
        SchedulerSettings { location_labels: levels(&["l"; 9]), ..Default::default() },
        SchedulerSettings { store_limits: vec![limit(99, 1)], ..Default::default() },
        SchedulerSettings { store_limits: vec![limit(1, 100_001)], ..Default::default() },
        SchedulerSettings { store_limits: vec![limit(1, 1), limit(1, 2)], ..Default::default() },
    ];
    for settings in refused {
        let response = apply(&mut state, Kind::SetScheduler(settings.clone()));
        assert!(matches!(response, Response::Invalid(_)), "{settings:?}: {response:?}");
        assert_eq!(state.scheduler_settings(), &SchedulerSettings::default(), "unchanged");
    }
    let good = SchedulerSettings {
        location_labels: levels(&["zone", "rack", "host"]),
        store_limits: vec![limit(1, 0)],
        ..Default::default()
    };
    assert_eq!(apply(&mut state, Kind::SetScheduler(good.clone())), Response::Done);
    assert_eq!(state.scheduler_settings(), &good);
}

#[test]
fn grants_are_checked_recorded_removed_and_survive_a_reload() {
    use crate::command::{Access, Grant, KeyspaceAccess};
    let engine: scandium_storage::EngineRef = Arc::new(MemoryEngine::new());
    let (mut state, batch) = PlacementState::bootstrap(
        7,
        10,
        store(),
        vec![region(1, b"", b"", 1)],
        vec![KeyspaceMeta { id: 0, name: "DEFAULT".into(), state: 0, created_at: 0 }],
    );
    engine.write(batch).unwrap();
    let keyspace = |id, access: Access| KeyspaceAccess { keyspace_id: id, access: access as i32 };
    let alice = Grant {
        name: "alice".into(),
        raw_v1: Access::Read as i32,
        keyspaces: vec![keyspace(0, Access::ReadWrite)],
        ..Default::default()
    };
    let mut batch = WriteBatch::new();
    let mut run = |state: &mut PlacementState, kind| {
        state.apply(&prost::Message::encode_to_vec(&Command::new(kind)), &mut batch)
    };
    let refused = [
        Grant { name: String::new(), admin: true, ..Default::default() },
        Grant { name: "a\u{0}b".into(), admin: true, ..Default::default() },
        Grant { name: "x".repeat(65), admin: true, ..Default::default() },
        Grant { name: "bob".into(), raw_v1: 7, ..Default::default() },
        Grant {
            name: "bob".into(),
            keyspaces: vec![keyspace(9, Access::Read)],
            ..Default::default()
        },
        Grant {
            name: "bob".into(),
            keyspaces: vec![keyspace(0, Access::Read), keyspace(0, Access::ReadWrite)],
            ..Default::default()
        },
    ];
    for grant in refused {
        let response = run(&mut state, Kind::SetGrant(grant.clone()));
        assert!(matches!(response, Response::Invalid(_)), "{grant:?} gave {response:?}");
    }
    assert!(state.grants().is_empty());
    assert_eq!(state.authorization_changes(), 0, "a refused grant changes nothing");

    assert_eq!(run(&mut state, Kind::SetGrant(alice.clone())), Response::Done);
    assert_eq!(run(&mut state, Kind::SetAuthorization(true)), Response::Done);
    let admin = Grant { name: "ops".into(), admin: true, ..Default::default() };
    assert_eq!(run(&mut state, Kind::SetGrant(admin.clone())), Response::Done);
    assert_eq!(state.grants().get("alice"), Some(&alice));
    assert_eq!(state.grants()["alice"].keyspace(0), Access::ReadWrite);
    assert!(state.authorization());
    assert_eq!(state.authorization_changes(), 3);
    // A grant of nothing removes the identity.
    let nothing = Grant { name: "ops".into(), ..Default::default() };
    assert_eq!(run(&mut state, Kind::SetGrant(nothing)), Response::Done);
    assert!(!state.grants().contains_key("ops"));
    engine.write(batch).unwrap();

    let reloaded = PlacementState::load(&engine).unwrap().unwrap();
    assert!(reloaded.authorization());
    assert_eq!(reloaded.grants().len(), 1);
    assert_eq!(reloaded.grants().get("alice"), Some(&alice));
}

proptest::proptest! {
    /// The start-key lookup of overlapping Regions finds what a scan of every Region
    /// finds, through splits reported child first, parent first, together, and stale;
    /// and so do the replica counts per store.
    #[test]
    fn overlaps_are_found_by_start_key_as_by_a_scan(
        ops in proptest::collection::vec((0u8..4, 0u8..=255, 0usize..64), 1..80),
        probes in proptest::collection::vec((0u8..=255, 0u8..=255, 0u64..40), 8),
    ) {
        let mut state = PlacementState::bootstrap(7, 10, store(), vec![region(1, b"", b"", 1)], vec![]).0;
        let mut history: Vec<Region> = Vec::new();
        let mut next_id = 2;
        for (kind, key, pick) in ops {
            let regions: Vec<Region> = state.regions().cloned().collect();
            let parent = regions[pick % regions.len()].clone();
            let cut = vec![key];
            let inside = cut > parent.start_key && (parent.end_key.is_empty() || cut < parent.end_key);
            let command = match kind {
                // A stale report of an earlier shape.
                3 if !history.is_empty() => Kind::PutRegion(history[pick % history.len()].clone()),
                _ if inside => {
                    let version = parent.version + 1;
                    let left = Region { end_key: cut.clone(), version, ..parent.clone() };
                    // On stores that vary, so that the replica counts are put to the test.
                    let peers = (0..2).map(|i| Peer::new(next_id * 10 + i, 1 + (next_id + i) % 4));
                    let right = Region {
                        peers: peers.collect(),
                        ..region(next_id, &cut, &parent.end_key, version)
                    };
                    next_id += 1;
                    history.push(parent.clone());
                    match kind {
                        0 => Kind::PutRegions(Regions { regions: vec![left, right] }),
                        1 => Kind::PutRegion(right),
                        _ => Kind::PutRegion(left),
                    }
                }
                _ => continue,
            };
            apply(&mut state, command);
            for store in 1..=5 {
                let scanned = state.regions().filter(|r| r.peer_on_store(store).is_some()).count();
                proptest::prop_assert_eq!(state.replica_count(store), scanned, "store {}", store);
            }
            for (a, b, id) in &probes {
                let (start, end) = (vec![*a.min(b)], if a == b { Vec::new() } else { vec![*a.max(b)] });
                let probe = region(*id, &start, &end, 1);
                let mut found = state.overlapping(&probe);
                let mut scanned: Vec<RegionId> = state
                    .regions
                    .values()
                    .filter(|r| r.id != probe.id && overlaps(r, &probe))
                    .map(|r| r.id)
                    .collect();
                found.sort();
                scanned.sort();
                proptest::prop_assert_eq!(found, scanned);
            }
        }
    }
}
