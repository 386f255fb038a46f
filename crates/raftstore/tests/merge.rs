//! Region merge across three stores (see `scandium_raftstore::merge`): the source frozen
//! and absorbed on every store; writes racing the prepare; a replica that missed the
//! source's last writes caught up from the entries the commit carries; a target's
//! snapshot from after the merge replacing a frozen source; a rollback when the target
//! changed first; a restart while frozen.

mod common;

use common::*;
use scandium_raftstore::registry::RegionStatus;
use scandium_raftstore::{ApplyOutput, EncodedCommand, RaftCommand, RaftstoreError, SplitRequest};
use scandium_storage::{Cf, WriteBatch};
use scandium_types::Region;
use std::sync::Arc;

/// The Region split off at `m` by [`Cluster::split_at_m`].
const RIGHT: u64 = 100;

/// Region 1 `[, m)` and Region 100 `[m, )`, each with voters on stores 1–3, holding
/// `a`, `k` (left) and `n`, `x` (right).
fn two_neighbours() -> Cluster {
    let mut cluster = Cluster::new(3);
    cluster.replicate(3);
    for key in [b"a", b"k", b"n", b"x"] {
        cluster.put(key, key).unwrap();
    }
    let leader = cluster.wait_leader();
    cluster.split_at_m(leader);
    cluster.tick_until(300, "the new Region has a leader", |c| leader_of(c, RIGHT).is_some());
    cluster
}

fn status(cluster: &mut Cluster, store: u64, group: u64) -> Option<RegionStatus> {
    cluster.node(store).registry.get(group)
}

fn leader_of(cluster: &mut Cluster, group: u64) -> Option<u64> {
    (1..=3).find(|&s| status(cluster, s, group).is_some_and(|st| st.ready_for_reads))
}

/// Proposes to freeze `source` through its leader on `store`, to merge into `target`
/// (as given), without running: the answer lands in the slot.
fn prepare_later(
    cluster: &mut Cluster,
    store: u64,
    source: u64,
    target: Region,
) -> Slot<Result<ApplyOutput>> {
    let slot: Slot<Result<ApplyOutput>> = Arc::default();
    let answer = slot.clone();
    let callback = Box::new(move |r| *answer.lock().unwrap() = Some(r));
    cluster.store(store).propose_prepare_merge(source, target, callback);
    slot
}

/// Proposes to freeze `source` through its leader on `store`, to merge into `target` as
/// that store holds it, and runs until the proposal is answered.
fn prepare(cluster: &mut Cluster, store: u64, source: u64, target: u64) -> Result<ApplyOutput> {
    let target = status(cluster, store, target).expect("the target is here").region;
    let slot = prepare_later(cluster, store, source, target);
    cluster.run_until_answered(&slot)
}

/// Proposes `key = value` to `group` through `store`, at the epoch the store holds,
/// without running: the answer lands in the slot.
fn write_later(cluster: &mut Cluster, store: u64, group: u64, key: &[u8]) -> Slot<Result<()>> {
    let region = status(cluster, store, group).expect("the Region is here").region;
    let mut batch = WriteBatch::new();
    batch.put(Cf::Raw, key.to_vec(), key.to_vec());
    let slot: Slot<Result<()>> = Arc::default();
    let answer = slot.clone();
    cluster.store(store).propose_command(
        group,
        EncodedCommand::new(RaftCommand::write(&region, batch)),
        Box::new(move |r| *answer.lock().unwrap() = Some(r.map(|_| ()))),
    );
    slot
}

fn write(cluster: &mut Cluster, store: u64, group: u64, key: &[u8]) -> Result<()> {
    let slot = write_later(cluster, store, group, key);
    cluster.run_until_answered(&slot)
}

/// Runs until every store holds Region 1 covering every key, and no Region 100.
fn wait_merged(cluster: &mut Cluster, stores: &[u64]) {
    cluster.tick_until(600, "the merge on every store", |c| {
        stores.iter().all(|&s| {
            status(c, s, RIGHT).is_none()
                && status(c, s, REGION).is_some_and(|st| {
                    st.region.start_key.is_empty() && st.region.end_key.is_empty()
                })
        })
    });
}

fn assert_holds(cluster: &mut Cluster, store: u64, keys: &[&[u8]]) {
    for key in keys {
        assert_eq!(cluster.value(store, key).as_deref(), Some(*key), "{key:?} on store {store}");
    }
}

#[test]
fn a_merge_joins_two_neighbours_on_every_store_and_keeps_their_data() {
    let mut cluster = two_neighbours();
    let left = status(&mut cluster, 1, REGION).unwrap().region;
    let right = status(&mut cluster, 1, RIGHT).unwrap().region;
    let leader = leader_of(&mut cluster, RIGHT).unwrap();
    let Ok(ApplyOutput::Merge(frozen)) = prepare(&mut cluster, leader, RIGHT, REGION) else {
        panic!("the prepare applies")
    };
    assert_eq!((frozen.version, frozen.conf_ver), (right.version + 1, right.conf_ver + 1));
    wait_merged(&mut cluster, &[1, 2, 3]);
    for store in 1..=3 {
        let merged = status(&mut cluster, store, REGION).unwrap().region;
        assert_eq!(merged.version, left.version.max(frozen.version) + 1);
        assert_eq!(merged.conf_ver, left.conf_ver);
        assert_holds(&mut cluster, store, &[b"a", b"k", b"n", b"x"]);
    }
    // The union serves keys of both halves; the source is gone.
    let leader = cluster.wait_leader();
    write(&mut cluster, leader, REGION, b"y").unwrap();
    cluster.tick(5);
    for store in 1..=3 {
        assert_holds(&mut cluster, store, &[b"y"]);
    }
    let mut batch = WriteBatch::new();
    batch.put(Cf::Raw, b"z".to_vec(), b"z".to_vec());
    let slot: Slot<Result<ApplyOutput>> = Arc::default();
    let answer = slot.clone();
    let command = EncodedCommand::new(RaftCommand::write(&frozen, batch));
    let callback = Box::new(move |r| *answer.lock().unwrap() = Some(r));
    cluster.store(leader).propose_command(RIGHT, command, callback);
    let gone = cluster.run_until_answered(&slot);
    assert!(matches!(gone, Err(RaftstoreError::RegionNotFound(RIGHT))), "{gone:?}");
}

#[test]
fn a_write_behind_the_prepare_in_the_log_is_refused_and_one_before_it_kept() {
    let mut cluster = two_neighbours();
    let leader = leader_of(&mut cluster, RIGHT).unwrap();
    let before = write_later(&mut cluster, leader, RIGHT, b"p");
    let target = status(&mut cluster, leader, REGION).unwrap().region;
    let prepared = prepare_later(&mut cluster, leader, RIGHT, target);
    let after = write_later(&mut cluster, leader, RIGHT, b"q");
    assert!(matches!(cluster.run_until_answered(&prepared), Ok(ApplyOutput::Merge(_))));
    assert!(cluster.run_until_answered(&before).is_ok());
    let refused = cluster.run_until_answered(&after);
    assert!(matches!(refused, Err(RaftstoreError::EpochNotMatch { .. })), "{refused:?}");
    wait_merged(&mut cluster, &[1, 2, 3]);
    for store in 1..=3 {
        assert_holds(&mut cluster, store, &[b"p"]);
        assert_eq!(cluster.value(store, b"q"), None);
    }
}

#[test]
fn a_frozen_source_takes_no_write_and_serves_no_read() {
    let mut cluster = two_neighbours();
    let leader = leader_of(&mut cluster, RIGHT).unwrap();
    // The target's messages are lost everywhere: the merge cannot commit.
    for store in 1..=3 {
        cluster.lost_groups.insert((store, REGION));
    }
    let target_leader = leader_of(&mut cluster, REGION).unwrap();
    if target_leader != leader {
        // The commit is proposed where the target leads; lose it there too.
        cluster.lost_groups.insert((target_leader, RIGHT));
    }
    prepare(&mut cluster, leader, RIGHT, REGION).unwrap();
    let status = status(&mut cluster, leader, RIGHT).unwrap();
    assert!(!status.ready_for_reads && status.lease_until_ms == 0);
    let refused = write(&mut cluster, leader, RIGHT, b"z");
    assert!(matches!(refused, Err(RaftstoreError::NotLeader { leader: None, .. })), "{refused:?}");
    let slot: Slot<Result<()>> = Arc::default();
    let answer = slot.clone();
    cluster.store(leader).read_index(RIGHT, Box::new(move |r| *answer.lock().unwrap() = Some(r)));
    assert!(cluster.run_until_answered(&slot).is_err());
}

/// A store cut off while the source took its last writes and was frozen gets the commit
/// through the target's log once it is back: its source replica lacks the writes, and is
/// caught up from the entries the commit carries.
#[test]
fn a_replica_that_missed_the_last_writes_is_caught_up_from_the_commit() {
    let mut cluster = two_neighbours();
    let leader = leader_of(&mut cluster, RIGHT).unwrap();
    let lagging = (1..=3).find(|&s| s != leader && Some(s) != leader_of(&mut cluster, REGION));
    let lagging = lagging.unwrap();
    cluster.isolate(lagging);
    write(&mut cluster, leader, RIGHT, b"o").unwrap();
    write(&mut cluster, leader, RIGHT, b"p").unwrap();
    prepare(&mut cluster, leader, RIGHT, REGION).unwrap();
    let others: Vec<u64> = (1..=3).filter(|&s| s != lagging).collect();
    wait_merged(&mut cluster, &others);
    let snapshots = cluster.snapshots[lagging as usize];
    assert_eq!(cluster.value(lagging, b"o"), None, "cut off before the writes");
    cluster.heal();
    wait_merged(&mut cluster, &[lagging]);
    assert_eq!(cluster.snapshots[lagging as usize], snapshots, "caught up through the log");
    assert_holds(&mut cluster, lagging, &[b"a", b"k", b"n", b"x", b"o", b"p"]);
}

/// A store that froze its source replica but lost the target's messages until the
/// target's log had moved on gets a snapshot of the merged target, which replaces the
/// frozen source.
#[test]
fn a_target_snapshot_from_after_the_merge_replaces_the_frozen_source() {
    let mut cluster = two_neighbours();
    let leader = leader_of(&mut cluster, RIGHT).unwrap();
    let target_leader = leader_of(&mut cluster, REGION).unwrap();
    let lagging = (1..=3).find(|&s| s != leader && s != target_leader).unwrap();
    let right = status(&mut cluster, lagging, RIGHT).unwrap().region;
    cluster.lost_groups.insert((lagging, REGION));
    prepare(&mut cluster, leader, RIGHT, REGION).unwrap();
    cluster.tick_until(100, "the lagging store froze its source", |c| {
        status(c, lagging, RIGHT).is_some_and(|st| st.region.version == right.version + 1)
    });
    cluster.isolate(lagging);
    let others: Vec<u64> = (1..=3).filter(|&s| s != lagging).collect();
    wait_merged(&mut cluster, &others);
    // The merged Region's log moves past what the lagging store has, once the leader
    // counts it as unreachable.
    cluster.tick(30);
    let leader = cluster.wait_leader();
    for i in 0..30u8 {
        write(&mut cluster, leader, REGION, &[b'r', b'0' + i]).unwrap();
    }
    cluster.heal();
    let snapshots = cluster.snapshots[lagging as usize];
    cluster.lost_groups.clear();
    wait_merged(&mut cluster, &[lagging]);
    assert!(cluster.snapshots[lagging as usize] > snapshots, "caught up by a snapshot");
    assert_holds(&mut cluster, lagging, &[b"a", b"n", b"x", b"r0", b"r9"]);
}

/// A store cut off from before the prepare until the merged Region's log has moved on
/// holds the source unfrozen, which overlaps the target's snapshot: a member absorbed by
/// the merge tells it so, and the snapshot replaces it.
#[test]
fn a_replica_that_slept_through_the_merge_is_replaced_by_the_target_snapshot() {
    let mut cluster = two_neighbours();
    let leader = leader_of(&mut cluster, RIGHT).unwrap();
    let target_leader = leader_of(&mut cluster, REGION).unwrap();
    let lagging = (1..=3).find(|&s| s != leader && s != target_leader).unwrap();
    let right = status(&mut cluster, lagging, RIGHT).unwrap().region;
    cluster.isolate(lagging);
    prepare(&mut cluster, leader, RIGHT, REGION).unwrap();
    let others: Vec<u64> = (1..=3).filter(|&s| s != lagging).collect();
    wait_merged(&mut cluster, &others);
    cluster.tick(30);
    let leader = cluster.wait_leader();
    for i in 0..30u8 {
        write(&mut cluster, leader, REGION, &[b'r', b'0' + i]).unwrap();
    }
    assert_eq!(status(&mut cluster, lagging, RIGHT).unwrap().region, right, "slept through");
    let snapshots = cluster.snapshots[lagging as usize];
    cluster.heal();
    wait_merged(&mut cluster, &[lagging]);
    assert!(cluster.snapshots[lagging as usize] > snapshots, "caught up by a snapshot");
    assert_holds(&mut cluster, lagging, &[b"a", b"n", b"x", b"r0", b"r9"]);
}

/// The target splits before it absorbs the source: the commit can never apply, and the
/// source is thawed, and serves again.
#[test]
fn a_merge_rolls_back_when_the_target_changed_first() {
    let mut cluster = two_neighbours();
    let leader = leader_of(&mut cluster, RIGHT).unwrap();
    assert_eq!(leader_of(&mut cluster, REGION), Some(leader), "one store leads both halves");
    let right = status(&mut cluster, leader, RIGHT).unwrap().region;
    let target = status(&mut cluster, leader, REGION).unwrap().region;
    let prepared = prepare_later(&mut cluster, leader, RIGHT, target.clone());
    let split = SplitRequest {
        split_key: b"c".to_vec(),
        new_region_id: 200,
        new_peer_ids: vec![201, 202, 203],
    };
    let split = EncodedCommand::new(RaftCommand::split(&target, vec![split]));
    cluster.store(leader).propose_command(REGION, split, Box::new(|r| assert!(r.is_ok(), "{r:?}")));
    assert!(matches!(cluster.run_until_answered(&prepared), Ok(ApplyOutput::Merge(_))));
    cluster.tick_until(600, "the source thawed on every store", |c| {
        (1..=3)
            .all(|s| status(c, s, RIGHT).is_some_and(|st| st.region.version == right.version + 2))
    });
    let leader =
        (1..=3).find(|&s| status(&mut cluster, s, RIGHT).is_some_and(|st| st.ready_for_reads));
    cluster.tick_until(300, "the source leads again", |c| leader_of(c, RIGHT).is_some());
    let leader = leader.or_else(|| leader_of(&mut cluster, RIGHT)).unwrap();
    write(&mut cluster, leader, RIGHT, b"z").unwrap();
    cluster.tick(5);
    for store in 1..=3 {
        assert_holds(&mut cluster, store, &[b"n", b"x", b"z"]);
        let left = status(&mut cluster, store, REGION).unwrap().region;
        assert_eq!(left.end_key, b"c", "the target split, and absorbed nothing");
    }
}

/// A store restarted while its source replica is frozen comes back frozen, and the
/// merge completes there.
#[test]
fn a_store_restarted_while_frozen_completes_the_merge() {
    let mut cluster = two_neighbours();
    let leader = leader_of(&mut cluster, RIGHT).unwrap();
    let target_leader = leader_of(&mut cluster, REGION).unwrap();
    let restarted = (1..=3).find(|&s| s != leader && s != target_leader).unwrap();
    cluster.lost_groups.insert((restarted, REGION));
    prepare(&mut cluster, leader, RIGHT, REGION).unwrap();
    cluster.tick_until(100, "the source frozen on the store", |c| {
        status(c, restarted, RIGHT).is_some_and(|st| st.region.conf_ver > 1)
    });
    cluster.stop(restarted);
    cluster.start(restarted);
    let frozen = status(&mut cluster, restarted, RIGHT).expect("published at start");
    assert!(frozen.region.conf_ver > 1 && !frozen.ready_for_reads);
    cluster.lost_groups.clear();
    wait_merged(&mut cluster, &[1, 2, 3]);
    assert_holds(&mut cluster, restarted, &[b"a", b"k", b"n", b"x"]);
}

#[test]
fn a_prepare_is_refused_for_regions_that_cannot_merge() {
    let mut cluster = two_neighbours();
    let leader = leader_of(&mut cluster, RIGHT).unwrap();
    // Not at the target's epoch.
    let mut stale = status(&mut cluster, leader, REGION).unwrap().region;
    stale.version -= 1;
    let slot = prepare_later(&mut cluster, leader, RIGHT, stale);
    let refused = cluster.run_until_answered(&slot);
    assert!(matches!(refused, Err(RaftstoreError::ChangeRefused(_))), "{refused:?}");
    // Into itself.
    let refused = prepare(&mut cluster, leader, RIGHT, RIGHT);
    assert!(matches!(refused, Err(RaftstoreError::ChangeRefused(_))), "{refused:?}");
    // A follower far behind.
    let follower = (1..=3).find(|&s| s != leader).unwrap();
    cluster.isolate(follower);
    for i in 0..6u8 {
        write(&mut cluster, leader, RIGHT, &[b'q', i]).unwrap();
    }
    let refused = prepare(&mut cluster, leader, RIGHT, REGION);
    assert!(matches!(refused, Err(RaftstoreError::ChangeRefused(_))), "{refused:?}");
    cluster.heal();
    cluster.tick(30);
    assert!(prepare(&mut cluster, leader, RIGHT, REGION).is_ok());
    wait_merged(&mut cluster, &[1, 2, 3]);
}
