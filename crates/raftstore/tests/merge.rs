//! Region merge across three stores (see `scandium_raftstore::merge`): the source frozen
//! and absorbed on every store; writes racing the prepare; a replica that missed the
//! source's last writes caught up from the entries the commit carries; a target's
//! snapshot from after the merge replacing a frozen source; a rollback when the target
//! changed first; restarts while frozen and after either outcome; leader transfers of
//! both Regions; merges in a row; a source waiting for a target's replica still to come
//! from a split; a source whose target's replica left its store before the commit
//! collected; and the TiKV merge bugs of
//! `research/scale-out.md` §4: a failed merge then a successful one on a slow replica
//! (#6460), a crash as a snapshot replaces a stale source (#7027), two snapshots to one
//! cut-off follower, before the merge and after it (#4198).

mod common;

use common::*;
use scandium_raftstore::registry::RegionStatus;
use scandium_raftstore::{
    ApplyOutput, EncodedCommand, Event, PeerChange, RaftCommand, RaftstoreError, SplitRequest,
};
use scandium_storage::{Cf, WriteBatch};
use scandium_types::{Peer, Region};
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

/// The source's leader, and a store that leads neither Region (the one the scenarios cut
/// off).
fn leader_and_bystander(cluster: &mut Cluster) -> (u64, u64) {
    let leader = leader_of(cluster, RIGHT).unwrap();
    let target_leader = leader_of(cluster, REGION).unwrap();
    (leader, (1..=3).find(|&s| s != leader && s != target_leader).unwrap())
}

fn all_but(store: u64) -> Vec<u64> {
    (1..=3).filter(|&s| s != store).collect()
}

/// Writes `prefix0`..`prefix9` and on, 30 keys, to `group` through `store`.
fn write_30(cluster: &mut Cluster, store: u64, group: u64, prefix: u8) {
    for i in 0..30u8 {
        write(cluster, store, group, &[prefix, b'0' + i]).unwrap();
    }
}

/// Moves the merged Region's log past what a cut-off store holds: once its leader counts
/// the store unreachable, 30 writes (`r0`, `r1`, …).
fn move_merged_log_on(cluster: &mut Cluster) {
    cluster.tick(30);
    let leader = cluster.wait_leader();
    write_30(cluster, leader, REGION, b'r');
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

/// What a store's observer saw of a merge: the union it was told of, and the Region
/// the registry published for the target at that moment.
type SeenMerges = Arc<std::sync::Mutex<Vec<(Region, Region)>>>;

struct MergeWatcher {
    registry: scandium_raftstore::Registry,
    seen: SeenMerges,
}

impl scandium_raftstore::ApplyObserver for MergeWatcher {
    fn on_applied(&mut self, _: &Region, _: &RaftCommand) {}
    fn on_replaced(&mut self, _: &Region) {}
    fn on_merged(&mut self, region: &Region) {
        let published = self.registry.get(region.id).map(|st| st.region).unwrap_or_default();
        self.seen.lock().unwrap().push((region.clone(), published));
    }
}

/// The observer hears of a merge before the union is published: the server forgets
/// there that the target's `max_ts` was synchronised, and a prewrite that saw the union
/// (its new epoch) must find that already done.
#[test]
fn the_observer_hears_of_a_merge_before_the_union_is_published() {
    let mut cluster = two_neighbours();
    let left = status(&mut cluster, 1, REGION).unwrap().region;
    let seen: SeenMerges = Arc::default();
    for store in 1..=3 {
        let registry = cluster.node(store).registry.clone();
        let watcher = MergeWatcher { registry, seen: seen.clone() };
        cluster.store(store).set_observer(Box::new(watcher));
    }
    let leader = leader_of(&mut cluster, RIGHT).unwrap();
    prepare(&mut cluster, leader, RIGHT, REGION).unwrap();
    wait_merged(&mut cluster, &[1, 2, 3]);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3, "once on every store");
    for (union, published) in seen.iter() {
        assert!(union.end_key.is_empty(), "told of the union: {union:?}");
        assert_eq!(published, &left, "the target as it was still published");
    }
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
    for store in 1..=3 {
        let frozen = status(&mut cluster, store, RIGHT).unwrap();
        assert_eq!(frozen.merging_into, Some(REGION), "published as frozen on store {store}");
    }
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
    let (leader, lagging) = leader_and_bystander(&mut cluster);
    cluster.isolate(lagging);
    write(&mut cluster, leader, RIGHT, b"o").unwrap();
    write(&mut cluster, leader, RIGHT, b"p").unwrap();
    prepare(&mut cluster, leader, RIGHT, REGION).unwrap();
    let others = all_but(lagging);
    wait_merged(&mut cluster, &others);
    let snapshots = cluster.snapshots[lagging as usize];
    assert_eq!(cluster.value(lagging, b"o"), None, "cut off before the writes");
    cluster.heal();
    wait_merged(&mut cluster, &[lagging]);
    assert_eq!(cluster.snapshots[lagging as usize], snapshots, "caught up through the log");
    assert_holds(&mut cluster, lagging, &[b"a", b"k", b"n", b"x", b"o", b"p"]);
}

/// Freezes the source on every store, but loses the target's messages to a store that
/// leads neither Region (returned), and runs until the merge has gone through on the
/// other stores.
fn merge_behind_one_target_replica(cluster: &mut Cluster) -> u64 {
    let (leader, lagging) = leader_and_bystander(cluster);
    let right = status(cluster, lagging, RIGHT).unwrap().region;
    cluster.lost_groups.insert((lagging, REGION));
    prepare(cluster, leader, RIGHT, REGION).unwrap();
    cluster.tick_until(100, "the lagging store froze its source", |c| {
        status(c, lagging, RIGHT).is_some_and(|st| st.region.version == right.version + 1)
    });
    wait_merged(cluster, &all_but(lagging));
    lagging
}

/// A store that froze its source replica but lost the target's messages until the
/// target's log had moved on gets a snapshot of the merged target, which replaces the
/// frozen source.
#[test]
fn a_target_snapshot_from_after_the_merge_replaces_the_frozen_source() {
    let mut cluster = two_neighbours();
    let lagging = merge_behind_one_target_replica(&mut cluster);
    cluster.isolate(lagging);
    move_merged_log_on(&mut cluster);
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
    let (leader, lagging) = leader_and_bystander(&mut cluster);
    let right = status(&mut cluster, lagging, RIGHT).unwrap().region;
    cluster.isolate(lagging);
    prepare(&mut cluster, leader, RIGHT, REGION).unwrap();
    let others = all_but(lagging);
    wait_merged(&mut cluster, &others);
    move_merged_log_on(&mut cluster);
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
        assert_eq!(status(&mut cluster, store, RIGHT).unwrap().merging_into, None);
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
    let (leader, restarted) = leader_and_bystander(&mut cluster);
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

/// The left half of [`two_neighbours`] split off at `c`, from `[, m)`: Region 1 keeps
/// `[, c)`, and the new Region is `[c, m)`, with peers 201–203 on stores 1–3.
const MIDDLE: u64 = 200;

/// Proposes to split Region 1 at `c` through its leader on `store`, without running.
fn split_left_later(cluster: &mut Cluster, store: u64) {
    let target = status(cluster, store, REGION).unwrap().region;
    let split = SplitRequest {
        split_key: b"c".to_vec(),
        new_region_id: MIDDLE,
        new_peer_ids: vec![201, 202, 203],
    };
    let split = EncodedCommand::new(RaftCommand::split(&target, vec![split]));
    cluster.store(store).propose_command(REGION, split, Box::new(|r| assert!(r.is_ok(), "{r:?}")));
}

/// Runs until `target` covers `[start, ..)` on each of `stores`, and `source` is gone.
fn wait_absorbed(cluster: &mut Cluster, stores: &[u64], source: u64, target: u64, start: &[u8]) {
    cluster.tick_until(600, "the merge on every store", |c| {
        stores.iter().all(|&s| {
            status(c, s, source).is_none()
                && status(c, s, target)
                    .is_some_and(|st| st.region.start_key == start && st.region.end_key.is_empty())
        })
    });
}

/// TiKV #6460: a failed merge followed by a successful one lost data on a replica slow
/// to apply the first one's rollback. Here the second prepare waits until every replica
/// has applied the rollback; a replica that then misses the second prepare and the write
/// before it is caught up from the entries the commit carries.
#[test]
fn a_failed_merge_then_a_successful_one_loses_nothing_on_a_slow_replica() {
    let mut cluster = two_neighbours();
    let leader = leader_of(&mut cluster, RIGHT).unwrap();
    assert_eq!(leader_of(&mut cluster, REGION), Some(leader), "one store leads both halves");
    let slow = (1..=3).find(|&s| s != leader).unwrap();
    let right = status(&mut cluster, leader, RIGHT).unwrap().region;
    // The first merge fails: its target splits before the commit can apply.
    let target = status(&mut cluster, leader, REGION).unwrap().region;
    let prepared = prepare_later(&mut cluster, leader, RIGHT, target);
    split_left_later(&mut cluster, leader);
    assert!(matches!(cluster.run_until_answered(&prepared), Ok(ApplyOutput::Merge(_))));
    cluster.tick_until(20, "the slow store froze the source", |c| {
        status(c, slow, RIGHT).is_some_and(|st| st.region.version == right.version + 1)
    });
    cluster.lost_groups.insert((slow, RIGHT));
    let others = all_but(slow);
    cluster.tick_until(600, "the source thawed elsewhere", |c| {
        others
            .iter()
            .all(|&s| status(c, s, RIGHT).is_some_and(|st| st.region.version == right.version + 2))
    });
    cluster.tick_until(300, "the source leads again", |c| leader_of(c, RIGHT).is_some());
    cluster.tick_until(300, "the middle Region leads", |c| leader_of(c, MIDDLE).is_some());
    let leader = leader_of(&mut cluster, RIGHT).unwrap();
    let frozen = status(&mut cluster, slow, RIGHT).unwrap().region;
    assert_eq!(frozen.version, right.version + 1, "the slow store is still frozen");
    // The second merge waits for the slow store to apply the rollback.
    let refused = prepare(&mut cluster, leader, RIGHT, MIDDLE);
    assert!(matches!(refused, Err(RaftstoreError::ChangeRefused(_))), "{refused:?}");
    cluster.lost_groups.clear();
    cluster.tick_until(100, "the slow store thawed", |c| {
        status(c, slow, RIGHT).is_some_and(|st| st.region.version == right.version + 2)
    });
    // It misses the last write and the second prepare.
    cluster.tick(5);
    cluster.lost_groups.insert((slow, RIGHT));
    write(&mut cluster, leader, RIGHT, b"o").unwrap();
    prepare(&mut cluster, leader, RIGHT, MIDDLE).unwrap();
    let snapshots = cluster.snapshots[slow as usize];
    wait_absorbed(&mut cluster, &[1, 2, 3], RIGHT, MIDDLE, b"c");
    assert_eq!(cluster.snapshots[slow as usize], snapshots, "caught up through the commit");
    for store in 1..=3 {
        assert_holds(&mut cluster, store, &[b"n", b"x", b"o"]);
    }
    cluster.lost_groups.clear();
    let leader = leader_of(&mut cluster, MIDDLE).unwrap();
    write(&mut cluster, leader, MIDDLE, b"p").unwrap();
    cluster.tick(5);
    for store in 1..=3 {
        assert_holds(&mut cluster, store, &[b"o", b"p"]);
    }
}

/// A leader transfer of the source right behind its prepare, and of the target while
/// the commit is on its way: the merge completes on every store.
#[test]
fn a_merge_completes_across_leader_transfers_of_both_regions() {
    let mut cluster = two_neighbours();
    let leader = leader_of(&mut cluster, RIGHT).unwrap();
    let next = (1..=3).find(|&s| s != leader).unwrap();
    let target = status(&mut cluster, leader, REGION).unwrap().region;
    let prepared = prepare_later(&mut cluster, leader, RIGHT, target);
    cluster.store(leader).transfer_leader(RIGHT, 100 + next).unwrap();
    let outcome = cluster.run_until_answered(&prepared);
    assert!(matches!(outcome, Ok(ApplyOutput::Merge(_))), "{outcome:?}");
    // The target's leadership moves while the stores propose the commit.
    let target_leader = leader_of(&mut cluster, REGION).unwrap();
    let elsewhere = (1..=3).find(|&s| s != target_leader).unwrap();
    cluster.store(target_leader).transfer_leader(REGION, elsewhere).unwrap();
    wait_merged(&mut cluster, &[1, 2, 3]);
    let led = |cluster: &Cluster, store: u64, group: u64| {
        cluster.events.iter().any(|(s, e)| {
            *s == store
                && matches!(e, Event::Role { region_id, is_leader: true, .. } if *region_id == group)
        })
    };
    assert!(led(&cluster, next, RIGHT), "the source's leadership moved");
    assert!(led(&cluster, elsewhere, REGION), "the target's leadership moved");
    let merged_where = |cluster: &Cluster, store: u64| {
        cluster
            .events
            .iter()
            .any(|(s, e)| *s == store && matches!(e, Event::Merged { is_leader: true, .. }))
    };
    assert!(merged_where(&cluster, elsewhere), "the target's new leader committed the merge");
    for store in 1..=3 {
        assert_holds(&mut cluster, store, &[b"a", b"k", b"n", b"x"]);
    }
}

/// Two merges in a row, `[m, )` into `[c, m)` and the union into `[, c)`, with one store
/// cut off through each: the second waits until that store has applied the first, and
/// the store ends with one Region holding every key.
#[test]
fn cascading_merges_reach_a_store_cut_off_through_each() {
    let mut cluster = two_neighbours();
    let leader = leader_of(&mut cluster, REGION).unwrap();
    split_left_later(&mut cluster, leader);
    cluster.tick_until(300, "the middle Region leads", |c| leader_of(c, MIDDLE).is_some());
    let leader = leader_of(&mut cluster, RIGHT).unwrap();
    let away = (1..=3).find(|&s| s != leader && Some(s) != leader_of(&mut cluster, MIDDLE));
    let away = away.unwrap();
    cluster.isolate(away);
    prepare(&mut cluster, leader, RIGHT, MIDDLE).unwrap();
    let others = all_but(away);
    wait_absorbed(&mut cluster, &others, RIGHT, MIDDLE, b"c");
    let leader = leader_of(&mut cluster, MIDDLE).unwrap();
    write(&mut cluster, leader, MIDDLE, b"o").unwrap();
    let refused = prepare(&mut cluster, leader, MIDDLE, REGION);
    assert!(matches!(refused, Err(RaftstoreError::ChangeRefused(_))), "{refused:?}");
    cluster.heal();
    wait_absorbed(&mut cluster, &[away], RIGHT, MIDDLE, b"c");
    cluster.tick(5);
    cluster.isolate(away);
    let leader = leader_of(&mut cluster, MIDDLE).unwrap();
    prepare(&mut cluster, leader, MIDDLE, REGION).unwrap();
    wait_absorbed(&mut cluster, &others, MIDDLE, REGION, b"");
    cluster.heal();
    wait_absorbed(&mut cluster, &[away], MIDDLE, REGION, b"");
    let leader = cluster.wait_leader();
    write(&mut cluster, leader, REGION, b"z").unwrap();
    cluster.tick(5);
    for store in 1..=3 {
        assert_holds(&mut cluster, store, &[b"a", b"k", b"n", b"x", b"o", b"z"]);
    }
}

/// A merge's outcome is in each store's engine: restarted after the commit, a store has
/// the union and no source; restarted after a rollback, the thawed source.
#[test]
fn a_store_restarted_after_the_commit_or_the_rollback_keeps_the_outcome() {
    let mut cluster = two_neighbours();
    let leader = leader_of(&mut cluster, RIGHT).unwrap();
    let right = status(&mut cluster, leader, RIGHT).unwrap().region;
    // A rollback, as in `a_merge_rolls_back_when_the_target_changed_first`.
    let target = status(&mut cluster, leader, REGION).unwrap().region;
    let prepared = prepare_later(&mut cluster, leader, RIGHT, target);
    split_left_later(&mut cluster, leader);
    assert!(matches!(cluster.run_until_answered(&prepared), Ok(ApplyOutput::Merge(_))));
    let thawed = |c: &mut Cluster, s| {
        status(c, s, RIGHT).is_some_and(|st| st.region.version == right.version + 2)
    };
    cluster.tick_until(600, "the source thawed", |c| (1..=3).all(|s| thawed(c, s)));
    let restarted = (1..=3).find(|&s| s != leader).unwrap();
    cluster.stop(restarted);
    cluster.start(restarted);
    assert!(thawed(&mut cluster, restarted), "thawed after the restart");
    cluster.tick_until(300, "the source leads again", |c| leader_of(c, RIGHT).is_some());
    // Then a merge into the middle Region, and a restart after its commit.
    let leader = leader_of(&mut cluster, RIGHT).unwrap();
    cluster.tick_until(300, "the middle Region leads", |c| leader_of(c, MIDDLE).is_some());
    prepare(&mut cluster, leader, RIGHT, MIDDLE).unwrap();
    wait_absorbed(&mut cluster, &[1, 2, 3], RIGHT, MIDDLE, b"c");
    for store in 1..=3 {
        cluster.stop(store);
        cluster.start(store);
        assert!(status(&mut cluster, store, RIGHT).is_none(), "no source on store {store}");
        let merged = status(&mut cluster, store, MIDDLE).expect("the union").region;
        assert_eq!((merged.start_key.as_slice(), merged.end_key.as_slice()), (&b"c"[..], &b""[..]));
    }
    cluster.tick_until(300, "the union leads", |c| leader_of(c, MIDDLE).is_some());
    let leader = leader_of(&mut cluster, MIDDLE).unwrap();
    write(&mut cluster, leader, MIDDLE, b"z").unwrap();
    cluster.tick(5);
    for store in 1..=3 {
        assert_holds(&mut cluster, store, &[b"k", b"n", b"x", b"z"]);
    }
}

/// TiKV #7027: a store that slept through a merge crashes as it begins installing the
/// target's snapshot, which replaces its stale source replica. At restart the install
/// starts over, the source stays gone, and nothing is lost.
#[test]
fn a_crash_while_a_target_snapshot_replaces_the_source_loses_nothing() {
    let mut cluster = two_neighbours();
    let (leader, lagging) = leader_and_bystander(&mut cluster);
    cluster.isolate(lagging);
    prepare(&mut cluster, leader, RIGHT, REGION).unwrap();
    let others = all_but(lagging);
    wait_merged(&mut cluster, &others);
    move_merged_log_on(&mut cluster);
    cluster.heal();
    let crashed = cluster.tick_until_it_happens(600, Until::Installing(lagging));
    assert!(crashed, "the lagging store began installing the target's snapshot");
    cluster.start(lagging);
    assert!(cluster.store(lagging).is_installing(REGION), "the install survived the crash");
    cluster.run();
    wait_merged(&mut cluster, &[lagging]);
    assert_holds(&mut cluster, lagging, &[b"a", b"k", b"n", b"x", b"r0", b"r9"]);
    // Once more, from the top: nothing of the source comes back.
    cluster.stop(lagging);
    cluster.start(lagging);
    assert!(status(&mut cluster, lagging, RIGHT).is_none());
    assert_holds(&mut cluster, lagging, &[b"n", b"x", b"r9"]);
}

/// TiKV #4198: one follower gets two snapshots, one of the source before the merge and
/// one of the target after it, cut off in between.
#[test]
fn a_follower_given_a_snapshot_before_the_merge_and_one_after_it_ends_consistent() {
    let mut cluster = two_neighbours();
    let (leader, lagging) = leader_and_bystander(&mut cluster);
    cluster.isolate(lagging);
    // The source's log moves past what the store has, once its leader counts it as
    // unreachable.
    cluster.tick(30);
    write_30(&mut cluster, leader, RIGHT, b's');
    let before = cluster.snapshots[lagging as usize];
    cluster.heal();
    cluster.tick_until(300, "the source's snapshot went in", |c| {
        c.snapshots[lagging as usize] > before && c.value(lagging, b"s9").is_some()
    });
    cluster.tick(5);
    cluster.isolate(lagging);
    prepare(&mut cluster, leader, RIGHT, REGION).unwrap();
    let others = all_but(lagging);
    wait_merged(&mut cluster, &others);
    move_merged_log_on(&mut cluster);
    let between = cluster.snapshots[lagging as usize];
    cluster.heal();
    wait_merged(&mut cluster, &[lagging]);
    assert!(cluster.snapshots[lagging as usize] > between, "the target's snapshot");
    assert_holds(&mut cluster, lagging, &[b"a", b"n", b"x", b"s0", b"s9", b"r0", b"r9"]);
}

/// A store whose replica of the target's parent has not applied the split that made the
/// target holds the source frozen with no target's replica beside it, and learns from
/// the others that the merge went through. It keeps the source: once the split applies
/// there, the new target's replica applies the commit from its log, which needs it
/// (simulator seed 426 of 60 s runs with registers only and `--unsafe-frozen-reads`: the
/// source went, and the target's replica, the Region's leader, waited for it for ever).
#[test]
fn a_source_waits_for_a_target_replica_still_to_come_from_a_split() {
    let mut cluster = two_neighbours();
    let leader = leader_of(&mut cluster, REGION).unwrap();
    let behind = (1..=3).find(|&s| s != leader && Some(s) != leader_of(&mut cluster, RIGHT));
    let behind = behind.unwrap();
    // The split that makes the target never reaches the store behind.
    cluster.lost_groups.insert((behind, REGION));
    split_left_later(&mut cluster, leader);
    cluster.tick_until(300, "the middle Region leads", |c| leader_of(c, MIDDLE).is_some());
    assert!(status(&mut cluster, behind, MIDDLE).is_none(), "no target's replica there yet");
    // The merge of `[m, )` into `[c, m)` goes through on the other stores.
    let leader = leader_of(&mut cluster, RIGHT).unwrap();
    prepare(&mut cluster, leader, RIGHT, MIDDLE).unwrap();
    wait_absorbed(&mut cluster, &all_but(behind), RIGHT, MIDDLE, b"c");
    cluster.tick_until(300, "the store behind learnt of the merge", |c| {
        c.store(behind)
            .describe(RIGHT)
            .is_some_and(|d| d.contains(&format!("absorbed_by={MIDDLE}")))
    });
    assert!(status(&mut cluster, behind, RIGHT).is_some(), "the source stays");
    // The split applies there at last, and the target's replica absorbs the source.
    cluster.lost_groups.clear();
    wait_absorbed(&mut cluster, &[behind], RIGHT, MIDDLE, b"c");
    assert_holds(&mut cluster, behind, &[b"n", b"x"]);
    cluster.tick_until(300, "the union leads", |c| leader_of(c, MIDDLE).is_some());
    let leader = leader_of(&mut cluster, MIDDLE).unwrap();
    write(&mut cluster, leader, MIDDLE, b"z").unwrap();
    cluster.tick(5);
    assert_holds(&mut cluster, behind, &[b"z"]);
}

/// The target's replica on a store leaves before it applies the commit (removed while
/// the target's messages to that store were lost): the frozen source's replica there,
/// told by its members that the merge committed, can never be absorbed, and goes with
/// its data. Before, it stayed for good.
#[test]
fn a_source_whose_target_replica_left_before_the_commit_goes() {
    let mut cluster = two_neighbours();
    let lagging = merge_behind_one_target_replica(&mut cluster);
    let others = all_but(lagging);
    let target_leader = leader_of(&mut cluster, REGION).unwrap();
    let removal = vec![PeerChange::Remove(Peer::new(lagging, lagging))];
    cluster.change_on(target_leader, removal).unwrap();
    cluster.lost_groups.clear();
    cluster.tick_until(600, "the source's replica on the lagging store went", |c| {
        status(c, lagging, RIGHT).is_none() && status(c, lagging, REGION).is_none()
    });
    for key in [b"n", b"x"] {
        assert_eq!(cluster.value(lagging, key), None, "the source's data went with it");
    }
    let target_leader = leader_of(&mut cluster, REGION).unwrap();
    write(&mut cluster, target_leader, REGION, b"z").unwrap();
    cluster.tick(5);
    for store in others {
        assert_holds(&mut cluster, store, &[b"a", b"n", b"x", b"z"]);
    }
}

/// A snapshot of the target's Region for a replica here with no data yet, over a source
/// frozen here to merge into it, replaces the source only if it is from after the merge
/// (its version above the source's, and its record of absorbed merges naming the
/// source). One from before the source was split off (delayed on the way) is refused:
/// taken, it would bring back the range without the source, whose merge that replica
/// could then never apply from its log. So is a later one that does not name the source:
/// the prepare may have been rolled back while this replica slept, and giving way would
/// record a merge that never happened.
#[test]
fn only_a_target_snapshot_from_after_the_merge_replaces_a_frozen_source() {
    use scandium_raftstore::bootstrap::{write_initial_group, write_merging_state};
    use scandium_raftstore::merge::{AbsorbedSource, MergeState};
    use scandium_raftstore::state::ConfStateRecord;
    use scandium_raftstore::{Registry, StepError, Store};
    use scandium_storage::{EngineRef, MemoryEngine};
    let engine: EngineRef = Arc::new(MemoryEngine::new());
    let peers = peers_of;
    // Region 1 was `[, )` at version 1; its split made `[, m)` and Region 100 `[m, )`
    // at version 2; Region 100 froze to merge into Region 1 (version 3).
    let target = Region {
        id: 1,
        end_key: b"m".to_vec(),
        version: 2,
        conf_ver: 1,
        peers: peers(1),
        ..Default::default()
    };
    let source = right_split_off_at_version_3();
    let mut batch = WriteBatch::new();
    write_initial_group(&mut batch, &source);
    let state = MergeState { target: Some(target.clone()), min_index: 5, commit: 5 };
    write_merging_state(
        &mut batch,
        &source,
        &ConfStateRecord::of_region(&source),
        Some(&state),
        &[],
    );
    batch.put(Cf::Raw, b"n".to_vec(), b"source".to_vec());
    engine.write(batch).unwrap();
    let mut store =
        Store::open(2, engine.clone(), config(2), Box::new(NoMeta), Registry::new()).unwrap();
    store.set_time(1_000);
    let snapshot_of = |store: &Store, version: u64, absorbed: Vec<AbsorbedSource>| {
        let region = Region { id: 1, version, conf_ver: 1, peers: peers(1), ..Default::default() };
        staged_snapshot_to_2(store, &region, absorbed, (b"a", b"t"), 9)
    };
    // From before the split: version 1 covers the source.
    let (message, data) = snapshot_of(&store, 1, Vec::new());
    let refused = store.step(message, Some(data));
    assert!(matches!(refused, Err(StepError::SnapshotRefused(_))), "{refused:?}");
    assert!(store.describe(RIGHT).is_some(), "the frozen source stays");
    // Later, but without the merge of the source.
    let (message, data) = snapshot_of(&store, 4, Vec::new());
    let refused = store.step(message, Some(data));
    assert!(matches!(refused, Err(StepError::SnapshotRefused(_))), "{refused:?}");
    assert!(store.describe(RIGHT).is_some(), "the frozen source stays");
    // From after the merge: version 4, the merge recorded.
    let merged = vec![AbsorbedSource { source_id: RIGHT, commit: 5 }];
    let (message, data) = snapshot_of(&store, 4, merged);
    store.step(message, Some(data)).unwrap();
    while store.has_ready() {
        store.handle_ready().unwrap();
    }
    assert!(store.describe(RIGHT).is_none(), "the source gave way");
}

/// A target's snapshot from before a merge, delayed to a store whose replica of the
/// source is destroyed (it gave way to a later snapshot of another Region over its range:
/// a piece of the union split off since), is refused: its log would reach the commit and
/// wait for that source for ever. One from after the merge, which records it, is taken.
#[test]
fn a_target_snapshot_from_before_a_merge_whose_source_here_is_gone_is_refused() {
    use scandium_raftstore::bootstrap::write_absorbed_tombstone;
    use scandium_raftstore::merge::{AbsorbedSource, MergeState};
    use scandium_raftstore::{Registry, StepError, Store};
    use scandium_storage::{EngineRef, MemoryEngine};
    let engine: EngineRef = Arc::new(MemoryEngine::new());
    let peers = peers_of;
    // Region 100 `[m, )` merged into Region 1 `[, m)`; its replica here is a tombstone
    // that knows it.
    let source = right_split_off_at_version_3();
    let target = Region { id: 1, ..Default::default() };
    let merged = MergeState { target: Some(target), ..Default::default() };
    let mut batch = WriteBatch::new();
    write_absorbed_tombstone(&mut batch, &source, RIGHT * 10 + 2, Some(&merged));
    engine.write(batch).unwrap();
    let mut store =
        Store::open(2, engine.clone(), config(2), Box::new(NoMeta), Registry::new()).unwrap();
    store.set_time(1_000);
    let snapshot_of = |store: &Store, version: u64, absorbed: Vec<AbsorbedSource>| {
        let region = Region {
            id: 1,
            end_key: b"m".to_vec(),
            version,
            conf_ver: 1,
            peers: peers(1),
            ..Default::default()
        };
        staged_snapshot_to_2(store, &region, absorbed, (b"a", b"t"), 9)
    };
    let (message, data) = snapshot_of(&store, 2, Vec::new());
    let refused = store.step(message, Some(data));
    assert!(matches!(refused, Err(StepError::SnapshotRefused(_))), "{refused:?}");
    // After the merge and a split that took the source's range away again.
    let absorbed = vec![AbsorbedSource { source_id: RIGHT, commit: 5 }];
    let (message, data) = snapshot_of(&store, 5, absorbed);
    store.step(message, Some(data)).unwrap();
    while store.has_ready() {
        store.handle_ready().unwrap();
    }
    assert!(store.describe(1).is_some_and(|d| d.contains("initialized=true")), "taken");
}

/// A source frozen here to merge into Region 1, which absorbed it elsewhere and then had
/// a piece split off over the source's range: that piece's snapshot replaces the source,
/// whose tombstone records Region 1 as what absorbed it, not the piece. Recorded as the
/// piece, every later snapshot of the piece (which absorbed nothing) was refused here as
/// one from before a merge into it (simulator seed 131000190: a Region's only other live
/// voter could never be caught up).
#[test]
fn a_source_replaced_by_a_piece_of_its_target_records_the_target() {
    use scandium_raftstore::bootstrap::{write_initial_group, write_merging_state};
    use scandium_raftstore::merge::MergeState;
    use scandium_raftstore::state::ConfStateRecord;
    use scandium_raftstore::{PeerMessage, Registry, Store};
    use scandium_storage::{EngineRef, MemoryEngine};
    let engine: EngineRef = Arc::new(MemoryEngine::new());
    let source = right_split_off_at_version_3();
    let target = Region {
        id: 1,
        end_key: b"m".to_vec(),
        version: 2,
        conf_ver: 1,
        peers: peers_of(1),
        ..Default::default()
    };
    let mut batch = WriteBatch::new();
    write_initial_group(&mut batch, &source);
    let state = MergeState { target: Some(target), min_index: 5, commit: 5 };
    let conf_state = ConfStateRecord::of_region(&source);
    write_merging_state(&mut batch, &source, &conf_state, Some(&state), &[]);
    engine.write(batch).unwrap();
    let mut store =
        Store::open(2, engine.clone(), config(2), Box::new(NoMeta), Registry::new()).unwrap();
    store.set_time(1_000);
    // A member tells the source here that Region 1 absorbed it.
    let told = PeerMessage {
        region_id: RIGHT,
        from: source.peer_on_store(1).unwrap().clone(),
        to: source.peer_on_store(2).unwrap().clone(),
        epoch: source.epoch(),
        is_tombstone: true,
        gone: true,
        merged_into: 1,
        ..PeerMessage::default()
    };
    store.step(told, None).unwrap();
    // Region 200 `[m, )`, split off Region 1 since.
    const PIECE: u64 = 200;
    let piece = Region {
        id: PIECE,
        start_key: b"m".to_vec(),
        version: 6,
        conf_ver: 1,
        peers: peers_of(PIECE),
        ..Default::default()
    };
    let snapshot_at = |store: &mut Store, index: u64| {
        let (message, data) = staged_snapshot_to_2(store, &piece, Vec::new(), (b"n", b"p"), index);
        let taken = store.step(message, Some(data));
        while store.has_ready() {
            store.handle_ready().unwrap();
        }
        taken
    };
    snapshot_at(&mut store, 9).unwrap();
    assert!(store.describe(RIGHT).is_none(), "the source gave way");
    snapshot_at(&mut store, 30).expect("a later snapshot of the piece is taken");
}

/// The replicas of Region `id` on stores 1 to 3 of the hand-built stores below.
fn peers_of(id: u64) -> Vec<Peer> {
    (1..=3).map(|s| Peer::new(id * 10 + s, s)).collect()
}

/// Region 100 `[m, )` as split off Region 1 and frozen to merge back into it.
fn right_split_off_at_version_3() -> Region {
    Region {
        id: RIGHT,
        start_key: b"m".to_vec(),
        version: 3,
        conf_ver: 2,
        peers: peers_of(RIGHT),
        ..Default::default()
    }
}

/// A snapshot of `region` at `index` for its replica on store 2, with one `record` staged
/// in `store` as its data and `absorbed` as its record of merges.
fn staged_snapshot_to_2(
    store: &scandium_raftstore::Store,
    region: &Region,
    absorbed: Vec<scandium_raftstore::merge::AbsorbedSource>,
    record: (&[u8], &[u8]),
    index: u64,
) -> (scandium_raftstore::PeerMessage, scandium_raftstore::SnapshotData) {
    use scandium_raftstore::snapshot::{SnapshotChunk, SnapshotEntry, SnapshotHeader};
    let mut staging = store.snapshot_stager().begin();
    let entry = SnapshotEntry { cf: 1, key: record.0.to_vec(), value: record.1.to_vec() };
    staging.push(SnapshotChunk { entries: vec![entry] }).unwrap();
    let data = staging.finish(Some(1)).unwrap();
    let header = SnapshotHeader { region: Some(region.clone()), token: 1, absorbed };
    (snapshot_to_2(region, header, index), data)
}

/// A snapshot message of `region`'s replica on store 1 to its replica on store 2, at
/// `index`, with `header` as its data.
#[allow(clippy::field_reassign_with_default)]
fn snapshot_to_2(
    region: &Region,
    header: scandium_raftstore::snapshot::SnapshotHeader,
    index: u64,
) -> scandium_raftstore::PeerMessage {
    use prost::Message as _;
    use raft::prelude::{ConfState, Message, MessageType, Snapshot, SnapshotMetadata};
    let mut conf_state = ConfState::default();
    conf_state.voters = region.peers.iter().map(|p| p.id).collect();
    let mut metadata = SnapshotMetadata::default();
    (metadata.index, metadata.term) = (index, 6);
    metadata.set_conf_state(conf_state);
    let mut snapshot = Snapshot::default();
    snapshot.data = header.encode_to_vec().into();
    snapshot.set_metadata(metadata);
    let from = region.peer_on_store(1).unwrap().clone();
    let to = region.peer_on_store(2).unwrap().clone();
    let mut message = Message::default();
    message.set_msg_type(MessageType::MsgSnapshot);
    (message.from, message.to, message.term) = (from.id, to.id, 6);
    message.set_snapshot(snapshot);
    scandium_raftstore::PeerMessage::raft(region, from, to, message)
}

/// The source's replica beside the target's leader lacks entries the commit must carry:
/// it was caught up by a snapshot past the prepare's `min_index`, which a lagging
/// follower held down. Another store, whose source replica holds them, proposes the
/// commit through its follower of the target, which forwards it to the leader
/// (simulator seed 95007903 froze a source for good: only the leader's store proposed).
#[test]
fn a_commit_the_target_leaders_store_cannot_carry_comes_from_another_store() {
    let mut cluster = Cluster::new(5);
    cluster.replicate(5);
    for key in [b"a", b"n"] {
        cluster.put(key, key).unwrap();
    }
    let leader = cluster.wait_leader();
    let region = cluster.region(leader).unwrap();
    let split = SplitRequest {
        split_key: b"m".to_vec(),
        new_region_id: RIGHT,
        new_peer_ids: (101..=105).collect(),
    };
    cluster.propose_on(leader, RaftCommand::split(&region, vec![split])).unwrap();
    let leads = |c: &mut Cluster, group| {
        (1..=5).find(|&s| status(c, s, group).is_some_and(|st| st.ready_for_reads))
    };
    cluster.tick_until(300, "the new Region has a leader", |c| leads(c, RIGHT).is_some());
    let source_leader = leads(&mut cluster, RIGHT).unwrap();
    let others: Vec<u64> = (1..=5).filter(|&s| s != source_leader).collect();
    let (short, lagging) = (others[0], others[1]);
    // `short` misses the source's writes, and is caught up by a snapshot taken after three
    // more, which `lagging` misses.
    cluster.isolate(short);
    cluster.tick(30);
    write_30(&mut cluster, source_leader, RIGHT, b's');
    cluster.pause(lagging);
    for key in [b"t0", b"t1", b"t2"] {
        write(&mut cluster, source_leader, RIGHT, key).unwrap();
    }
    let before = cluster.snapshots[short as usize];
    cluster.heal();
    cluster.tick_until(20, "the source's snapshot went in", |c| {
        c.snapshots[short as usize] > before && c.value(short, b"t2").is_some()
    });
    let target_leader = leads(&mut cluster, REGION).unwrap();
    if target_leader != short {
        cluster.store(target_leader).transfer_leader(REGION, short).unwrap();
    }
    cluster.tick_until(20, "the target led from `short`", |c| leads(c, REGION) == Some(short));
    prepare(&mut cluster, source_leader, RIGHT, REGION).unwrap();
    cluster.resume(lagging);
    let stores: Vec<u64> = (1..=5).collect();
    wait_merged(&mut cluster, &stores);
    for store in stores {
        assert_holds(&mut cluster, store, &[b"a", b"n", b"s0", b"s9", b"t0", b"t2"]);
    }
}
