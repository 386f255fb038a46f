//! Several stores in one test, on in-memory engines, exchanging messages through a router
//! that can cut any link: membership changes (learner, joint promotion, removal), leader
//! failure and election, a minority that must serve nothing, a lagging replica caught up
//! by snapshot after log truncation, removed replicas destroyed, leader transfer, restart,
//! and a split of a replicated Region. The TinyKV 2B/2C/3B scenarios, at the raftstore
//! level (the server-level ones drive whole nodes).

mod common;

use common::*;

use prost::Message as _;
use scandium_raftstore::liveness::Transition;
use scandium_raftstore::snapshot::SnapshotHeader;
use scandium_raftstore::{
    ApplyOutput, Event, PeerChange, PeerMessage, RaftCommand, RaftConfig, RaftstoreError, Registry,
    SplitRequest, Store,
};
use scandium_storage::{Cf, EngineRef, MemoryEngine, WriteBatch};
use scandium_types::{Peer, Region};
use std::sync::Arc;

#[test]
fn learners_catch_up_by_snapshot_and_are_promoted_jointly() {
    let mut cluster = Cluster::new(3);
    assert_eq!(cluster.wait_leader(), 1);
    cluster.put(b"before", b"1").unwrap();
    cluster.replicate(3);
    let region = cluster.region(1).unwrap();
    assert_eq!(region.conf_ver, 2 + 1 + 1, "two learners, one joint entry, one leave");
    for store in 1..=3 {
        assert_eq!(cluster.value(store, b"before"), Some(b"1".to_vec()), "store {store}");
    }
    assert_eq!(&cluster.snapshots[2..], &[1, 1], "each learner started from a snapshot");
    cluster.put(b"after", b"2").unwrap();
    cluster.tick(5);
    for store in 1..=3 {
        assert_eq!(cluster.value(store, b"after"), Some(b"2".to_vec()), "store {store}");
    }
}

#[test]
fn a_dead_leader_is_replaced_and_no_acknowledged_write_is_lost() {
    let mut cluster = Cluster::new(3);
    cluster.replicate(3);
    for i in 0..10u8 {
        cluster.put(&[b'k', i], b"v").unwrap();
    }
    let old = cluster.wait_leader();
    cluster.stop(old);
    let started = cluster.now;
    let new = cluster.wait_leader();
    assert_ne!(new, old);
    let elapsed_ticks = (cluster.now - started) / TICK_MS;
    assert!(elapsed_ticks <= 2 * 10 + 10, "elected after {elapsed_ticks} ticks");
    cluster.put(b"k-new", b"v").unwrap();
    for i in 0..10u8 {
        assert_eq!(cluster.value(new, &[b'k', i]), Some(b"v".to_vec()));
    }
    // The old leader comes back as a follower and catches up.
    cluster.start(old);
    cluster.tick_until(300, "old leader caught up", |c| c.value(old, b"k-new").is_some());
}

/// An isolated leader steps down and serves nothing. Its proposal may have reached a
/// follower and be committed by the next leader, and it cannot learn whether: after the
/// wait it answers with an unknown outcome, never with an error that invites a retry.
#[test]
fn an_isolated_leader_stops_serving_and_its_proposal_outcome_is_unknown() {
    let mut cluster = Cluster::new(3);
    cluster.replicate(3);
    let old = cluster.wait_leader();
    cluster.isolate(old);
    let region = cluster.region(old).unwrap();
    let mut batch = WriteBatch::new();
    batch.put(Cf::Raw, b"lost".to_vec(), b"v".to_vec());
    let result = cluster.propose_on(old, RaftCommand::write(&region, batch));
    assert!(matches!(result, Err(RaftstoreError::OutcomeUnknown { .. })), "{result:?}");
    assert!(!result.unwrap_err().is_definite());
    let status = cluster.node(old).registry.get(REGION).unwrap();
    assert!(!status.ready_for_reads && !status.lease_valid(cluster.now), "{status:?}");
    // The majority elected a leader of its own and goes on.
    let new = cluster.wait_leader_besides(old);
    let region = cluster.region(new).unwrap();
    let mut batch = WriteBatch::new();
    batch.put(Cf::Raw, b"majority".to_vec(), b"v".to_vec());
    cluster.propose_on(new, RaftCommand::write(&region, batch)).unwrap();
    assert_eq!(cluster.value(old, b"lost"), None);
    cluster.heal();
    cluster.tick_until(300, "old leader caught up", |c| c.value(old, b"majority").is_some());
    assert_eq!(cluster.value(old, b"lost"), None, "the unacknowledged write never applied");
}

/// A leader cut off with a proposal only it holds learns, once it hears the new leader,
/// that the entry was replaced: a definite "not applied", which a client may retry.
#[test]
fn a_deposed_leader_learns_that_its_proposal_was_replaced() {
    let mut cluster = Cluster::new(3);
    cluster.replicate(3);
    let old = cluster.wait_leader();
    cluster.isolate(old);
    let answer = cluster.propose_later(old, b"lost", b"v");
    cluster.run();
    let new = cluster.wait_leader_besides(old);
    cluster.put_on(new, b"majority", b"v").unwrap();
    assert!(answer.lock().unwrap().is_none(), "answered before the outcome was known");
    cluster.heal();
    cluster.tick_until(50, "the old leader's answer", |_| answer.lock().unwrap().is_some());
    let result = answer.lock().unwrap().take().unwrap();
    assert!(matches!(result, Err(RaftstoreError::StaleCommand)), "{result:?}");
    assert_eq!(cluster.value(new, b"lost"), None);
    assert_eq!(cluster.value(old, b"lost"), None);
}

/// The failure the chaos suite found, as tikv-client met it: a leader's entry reaches the
/// followers, the leader stalls (SIGSTOP) before it hears their acknowledgements, and the
/// next leader commits the entry. The old leader, deposed when it resumes, must answer
/// "applied": an error would make the client send the write again and apply it twice.
#[test]
fn a_deposed_leader_answers_its_proposal_once_the_next_leader_commits_it() {
    let mut cluster = Cluster::new(3);
    cluster.replicate(3);
    let (old, answer) = cluster.propose_unacknowledged(b"k", b"once");
    for f in (1..=3).filter(|&s| s != old) {
        assert!(cluster.node(f).store.as_ref().unwrap().applied_index(REGION).is_some());
    }
    cluster.pause(old);
    let new = cluster.wait_leader_besides(old);
    assert_eq!(cluster.value(new, b"k"), Some(b"once".to_vec()), "the new leader committed it");
    assert!(answer.lock().unwrap().is_none());
    cluster.heal();
    cluster.resume(old);
    cluster.tick_until(50, "the old leader's answer", |_| answer.lock().unwrap().is_some());
    let result = answer.lock().unwrap().take().unwrap();
    assert!(result.is_ok(), "the committed write was answered {result:?}");
    assert_ne!(cluster.leader(), Some(old));
}

/// As above, but the next leader truncates its log past the old leader's, which catches
/// up by snapshot: whether its entry is in the snapshot cannot be told, so the outcome is
/// unknown.
#[test]
fn a_deposed_leader_caught_up_by_snapshot_reports_an_unknown_outcome() {
    let mut cluster = Cluster::new(3);
    cluster.replicate(3);
    let (old, answer) = cluster.propose_unacknowledged(b"k", b"once");
    cluster.pause(old);
    cluster.isolate(old);
    let new = cluster.wait_leader_besides(old);
    // More than `max_log_entries` (20): the new leader truncates past the old one's log.
    for i in 0..60u8 {
        cluster.put_on(new, &[b'g', i], &[i]).unwrap();
    }
    let snapshots = cluster.snapshots[old as usize];
    cluster.heal();
    cluster.resume(old);
    cluster.tick_until(100, "the old leader's answer", |_| answer.lock().unwrap().is_some());
    let result = answer.lock().unwrap().take().unwrap();
    assert!(matches!(result, Err(RaftstoreError::OutcomeUnknown { .. })), "{result:?}");
    assert_eq!(cluster.snapshots[old as usize], snapshots + 1, "caught up by a snapshot");
    assert_eq!(cluster.value(old, b"k"), Some(b"once".to_vec()));
}

/// Three replicas, one of them (returned) cut off while `g0`..`g59` are written with
/// `value(i)`: more than `max_log_entries` (20), so the leader truncates past what the
/// cut-off follower has.
fn a_follower_behind_the_log(value: impl Fn(u8) -> Vec<u8>) -> (Cluster, u64) {
    let mut cluster = Cluster::new(3);
    cluster.replicate(3);
    let leader = cluster.wait_leader();
    let lagging = (1..=3).find(|&s| s != leader).unwrap();
    cluster.isolate(lagging);
    for i in 0..60u8 {
        cluster.put(&[b'g', i], &value(i)).unwrap();
    }
    (cluster, lagging)
}

#[test]
fn a_lagging_follower_is_caught_up_by_snapshot_after_log_truncation() {
    let (mut cluster, lagging) = a_follower_behind_the_log(|i| vec![i]);
    let before = cluster.snapshots[lagging as usize];
    cluster.heal();
    cluster.tick_until(300, "follower caught up", |c| c.value(lagging, &[b'g', 59]).is_some());
    for i in 0..60u8 {
        assert_eq!(cluster.value(lagging, &[b'g', i]), Some(vec![i]));
    }
    assert_eq!(cluster.snapshots[lagging as usize], before + 1, "caught up by a snapshot");
    // Its figures are the snapshot's records, not nothing: it may lead next, and
    // placement balances by what leaders report.
    let leader = cluster.wait_leader();
    let figures = |c: &mut Cluster, s: u64| {
        let stats = c.store(s).status(REGION).expect("a replica").stats;
        (stats.approximate_size, stats.approximate_keys)
    };
    let (size, keys) = figures(&mut cluster, lagging);
    assert!(size > 0 && keys >= 60, "the snapshot's figures: {size} bytes, {keys} keys");
    assert_eq!((size, keys), figures(&mut cluster, leader), "as the leader counts them");
}

/// A follower that is being sent a snapshot answers nothing until it has installed it:
/// the leader keeps the log from the snapshot on, though it does not hear from the
/// follower, so that one snapshot catches it up (before, the leader truncated past it
/// meanwhile and had to send another: a node restarted under load took three in a row).
#[test]
fn a_follower_taking_a_snapshot_needs_only_one() {
    let (mut cluster, lagging) = a_follower_behind_the_log(|i| vec![i]);
    let before = cluster.snapshots[lagging as usize];
    // The follower is slow to install it (paused once it has it): the leader has not
    // heard from it for longer than an election when it writes again, its log past the
    // truncation threshold (8) but within the cap.
    cluster.heal();
    let delivered = cluster.tick_until_it_happens(100, Until::SnapshotDelivered(lagging));
    assert!(delivered, "the leader sent a snapshot");
    cluster.pause(lagging);
    cluster.tick(30);
    for i in 60..62u8 {
        cluster.put(&[b'g', i], &[i]).unwrap();
    }
    cluster.resume(lagging);
    cluster.tick_until(300, "follower caught up", |c| c.value(lagging, &[b'g', 61]).is_some());
    assert_eq!(cluster.snapshots[lagging as usize], before + 1, "one snapshot");
}

/// An engine whose memtables hold 32 MiB (past what an install waits for) until it is
/// asked to flush them.
struct FullMemtables {
    inner: EngineRef,
    full: std::sync::atomic::AtomicBool,
    flushes: std::sync::atomic::AtomicUsize,
}

impl scandium_storage::Engine for FullMemtables {
    fn write(&self, batch: WriteBatch) -> scandium_storage::Result<()> {
        self.inner.write(batch)
    }
    fn sync(&self) -> scandium_storage::Result<()> {
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
    fn write_buffer_bytes(&self) -> u64 {
        if self.full.load(std::sync::atomic::Ordering::SeqCst) {
            32 << 20
        } else {
            0
        }
    }
    fn flush_memtables(&self) -> scandium_storage::Result<()> {
        self.flushes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.full.store(false, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

/// An install waits while the engine's memtables are full, and asks for them to be
/// flushed: memtables below their own size limit are flushed only when the journal grows
/// long, so a node with a little of each column family in memory would otherwise hold
/// every install up until its clients wrote enough.
#[test]
fn an_install_held_up_by_memtables_asks_for_them_to_be_flushed() {
    let (mut cluster, lagging) = a_follower_behind_the_log(|i| vec![i]);
    cluster.stop(lagging);
    let engine = Arc::new(FullMemtables {
        inner: cluster.nodes[lagging as usize - 1].engine.clone(),
        full: true.into(),
        flushes: 0.into(),
    });
    cluster.nodes[lagging as usize - 1].engine = engine.clone();
    cluster.start(lagging);
    cluster.heal();
    cluster.tick_until(300, "follower caught up", |c| c.value(lagging, &[b'g', 59]).is_some());
    assert_eq!(engine.flushes.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[test]
fn a_snapshot_goes_in_over_several_rounds_and_a_crash_midway_starts_it_over() {
    // 6 MiB: a snapshot of several 1 MiB install steps.
    let value = vec![7u8; 100 << 10];
    let (mut cluster, lagging) = a_follower_behind_the_log(|_| value.clone());
    let before = cluster.snapshots[lagging as usize];
    cluster.heal();
    let crashed = cluster.tick_until_it_happens(300, Until::Installing(lagging));
    assert!(crashed, "the lagging store began installing a snapshot");
    assert_eq!(cluster.snapshots[lagging as usize], before + 1);
    assert!(cluster.nodes[lagging as usize - 1]
        .engine
        .get(Cf::Raw, &[b'g', 59])
        .unwrap()
        .is_none());
    // At restart the install starts over from its record and finishes.
    cluster.start(lagging);
    assert!(cluster.store(lagging).is_installing(REGION), "the record survived the crash");
    cluster.run();
    assert!(!cluster.store(lagging).is_installing(REGION));
    for i in 0..60u8 {
        assert_eq!(cluster.value(lagging, &[b'g', i]).as_deref(), Some(&value[..]), "key {i}");
    }
    let staged = cluster.nodes[lagging as usize - 1].engine.snapshot();
    assert_eq!(staged.scan(Cf::Staging, &[], &[], false).count(), 0, "nothing left staged");
    cluster.put(b"after", b"v").unwrap();
    cluster.tick_until(300, "serving again", |c| c.value(lagging, b"after").is_some());
}

/// The same with snapshots staged in files: the file outlives the crash, the install
/// starts over from it, and it goes once the install is in.
#[test]
fn a_snapshot_staged_in_a_file_survives_a_crash_midway_and_goes_once_installed() {
    let value = vec![7u8; 100 << 10];
    let (mut cluster, lagging) = a_follower_behind_the_log(|_| value.clone());
    let dir = tempfile::tempdir().unwrap();
    let files = || std::fs::read_dir(dir.path()).unwrap().count();
    cluster.stop(lagging);
    cluster.node(lagging).snapshot_dir = Some(dir.path().to_path_buf());
    cluster.start(lagging);
    cluster.heal();
    let crashed = cluster.tick_until_it_happens(300, Until::Installing(lagging));
    assert!(crashed, "the lagging store began installing a snapshot");
    assert_eq!(files(), 1, "staged in a file");
    let engine = cluster.node(lagging).engine.clone();
    assert_eq!(engine.snapshot().scan(Cf::Staging, &[], &[], false).count(), 0);
    cluster.start(lagging);
    assert!(cluster.store(lagging).is_installing(REGION), "the record survived the crash");
    assert_eq!(files(), 1, "and so did the file it installs from");
    // Its records go in on a thread of their own, which the store looks in on as time
    // passes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while cluster.store(lagging).is_installing(REGION) {
        assert!(std::time::Instant::now() < deadline, "not installed within 30 s");
        cluster.tick(1);
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    for i in 0..60u8 {
        assert_eq!(cluster.value(lagging, &[b'g', i]).as_deref(), Some(&value[..]), "key {i}");
    }
    assert_eq!(files(), 0, "the file goes once the install is in");
}

#[test]
fn a_removed_replica_is_destroyed_and_its_data_deleted() {
    let mut cluster = Cluster::new(3);
    cluster.replicate(3);
    cluster.put(b"k", b"v").unwrap();
    let leader = cluster.wait_leader();
    let victim = (1..=3).find(|&s| s != leader).unwrap();
    let region = cluster.change(vec![PeerChange::Remove(Peer::new(victim, victim))]).unwrap();
    assert!(region.peer_on_store(victim).is_none());
    cluster
        .tick_until(100, "replica destroyed", |c| !c.store(victim).group_ids().contains(&REGION));
    assert!(cluster.region(victim).is_none());
    assert_eq!(cluster.value(victim, b"k"), None, "its data is gone");
    assert!(cluster
        .events
        .iter()
        .any(|(s, e)| *s == victim && matches!(e, Event::Destroyed(REGION))));
    // The two remaining voters go on.
    cluster.put(b"k2", b"v").unwrap();
    // Removing the leader is refused: leadership must move first.
    let leader = cluster.wait_leader();
    let result = cluster.change(vec![PeerChange::Remove(Peer::new(leader, leader))]);
    assert!(matches!(result, Err(RaftstoreError::ChangeRefused(_))), "{result:?}");
}

/// A removed voter keeps voting until every voter that stays has applied its removal
/// (simulator seeds 7007776 and 7010532). Four voters; the removal of one commits with the
/// acknowledgements of the leader, the victim and one more, which never hears that it
/// committed; the fourth never sees it; the victim applies it, then the leader dies. The
/// two that stay are still in the four-voter configuration (neither applied the removal)
/// and need three votes: the victim's is the third. Destroyed at once, it left them
/// without a leader for good.
#[test]
fn a_removed_voter_votes_on_until_the_voters_that_stay_have_applied_its_removal() {
    let mut cluster = Cluster::new(4);
    cluster.replicate(4);
    cluster.put(b"k", b"v").unwrap();
    let leader = cluster.wait_leader();
    let others: Vec<u64> = (1..=4).filter(|&s| s != leader).collect();
    let (victim, knows, never) = (others[0], others[1], others[2]);
    cluster.pause(never);
    let slot: Slot<Result<ApplyOutput>> = Arc::default();
    let answer = slot.clone();
    let removal = vec![PeerChange::Remove(Peer::new(victim, victim))];
    let callback = Box::new(move |r| *answer.lock().unwrap() = Some(r));
    cluster.store(leader).propose_conf_change(REGION, removal, None, callback);
    // `knows` gets the entry, but not the news that it is committed.
    let appends = cluster.store(leader).handle_ready().unwrap().messages;
    for append in appends.into_iter().filter(|m| m.to.store_id != never) {
        cluster.deliver(leader, append);
    }
    cluster.cut.insert((leader, knows));
    cluster.run_until_answered(&slot).unwrap();
    cluster.tick_until(300, "the victim gone", |c| c.region(victim).is_none());
    assert!(cluster.store(victim).group_ids().contains(&REGION), "it lingers");
    assert_eq!(cluster.value(victim, b"k"), None, "its data is gone at once");
    // What it waits for survives a restart.
    cluster.stop(victim);
    cluster.start(victim);
    assert!(cluster.store(victim).group_ids().contains(&REGION));
    assert!(cluster.region(victim).is_none(), "it serves nothing");

    cluster.stop(leader);
    cluster.held.clear();
    cluster.resume(never);
    cluster.heal();
    let next = cluster.wait_leader_besides(leader);
    assert_ne!(next, victim);
    cluster.put_on(next, b"k2", b"v").unwrap();
    // The leader said it had applied the removal before it died; once the two that stay
    // have applied it too, the victim goes.
    cluster.tick_until(300, "the victim destroyed", |c| {
        !c.store(victim).group_ids().contains(&REGION)
    });
    assert!(cluster
        .events
        .iter()
        .any(|(s, e)| *s == victim && matches!(e, Event::Destroyed(REGION))));
}

/// A lingering replica whose Region moved on without it, so that a voter it waits for was
/// removed and destroyed before answering, hears from that voter's store that it is gone
/// (it will never count votes again) and goes; before, it asked for ever.
#[test]
fn a_lingering_replica_goes_when_a_voter_it_waits_for_is_gone() {
    let mut cluster = Cluster::new(4);
    cluster.replicate(3);
    cluster.remove_3_unseen_and_add_4();
    // Store 2 hears nothing for a while: 3, told of its removal by 1 or 4, waits for 2.
    let leader = cluster.wait_leader();
    if leader == 2 {
        cluster.store(2).transfer_leader(REGION, 1).unwrap();
        cluster.tick_until(100, "store 1 leads", |c| c.leader() == Some(1));
    }
    cluster.pause(2);
    cluster.heal();
    cluster.tick_until(300, "3 lingers", |c| {
        c.region(3).is_none() && c.store(3).group_ids().contains(&REGION)
    });
    // 2 goes while 3 cannot reach it: removed, and destroyed once it hears of it.
    let leader = cluster.wait_leader();
    cluster.change_on(leader, vec![PeerChange::Remove(Peer::new(2, 2))]).unwrap();
    cluster.isolate(3);
    cluster.held.clear();
    cluster.resume(2);
    cluster.tick_until(1_000, "2 destroyed", |c| !c.store(2).group_ids().contains(&REGION));
    assert!(cluster.store(3).group_ids().contains(&REGION), "3 still waits for 2");
    cluster.heal();
    cluster.tick_until(1_000, "3 destroyed", |c| !c.store(3).group_ids().contains(&REGION));
}

/// A lingering replica waiting for a voter that is dead for good learns the configuration
/// that replaced it from the others' answers, and goes: it asks every voter each time,
/// not only those still to answer.
#[test]
fn a_lingering_replica_learns_the_configuration_that_replaced_a_dead_voter() {
    let mut cluster = Cluster::new(4);
    cluster.replicate(3);
    let leader = cluster.wait_leader();
    if leader == 3 {
        cluster.store(3).transfer_leader(REGION, 1).unwrap();
        cluster.tick_until(100, "store 1 leads", |c| c.leader() == Some(1));
    }
    let dead = if cluster.wait_leader() == 1 { 2 } else { 1 };
    cluster.remove_3_unseen_and_add_4();
    cluster.stop(dead);
    cluster.heal();
    cluster.tick_until(300, "3 lingers", |c| {
        c.region(3).is_none() && c.store(3).group_ids().contains(&REGION)
    });
    cluster.tick(100);
    assert!(cluster.store(3).group_ids().contains(&REGION), "3 waits for the dead voter");
    let leader = cluster.wait_leader();
    cluster.change_on(leader, vec![PeerChange::Remove(Peer::new(dead, dead))]).unwrap();
    cluster.tick_until(300, "3 destroyed", |c| !c.store(3).group_ids().contains(&REGION));
}

#[test]
fn a_replica_that_missed_its_removal_learns_it_from_the_leader() {
    let mut cluster = Cluster::new(3);
    cluster.replicate(3);
    let leader = cluster.wait_leader();
    let victim = (1..=3).find(|&s| s != leader).unwrap();
    cluster.isolate(victim);
    cluster.change(vec![PeerChange::Remove(Peer::new(victim, victim))]).unwrap();
    assert!(cluster.region(victim).is_some(), "it does not know yet");
    cluster.heal();
    // Its pre-votes reach the leader, whose answer tells it it is gone.
    cluster.tick_until(300, "stale replica destroyed", |c| c.region(victim).is_none());
}

/// A replica removed while partitioned, whose Region is led by a member it never knew,
/// learns of its removal from a follower: its pre-votes reach only the members of its old
/// configuration (the simulator, seed 21237: such a replica lived on, and its stale range
/// kept the Regions split from it from installing their snapshots there, for ever).
/// A learner that has acknowledged nothing is pending however young its group: with a
/// commit index under the lag a follower may have, it counted as caught up, and the
/// scheduler promoted a learner that had no data (simulator seed 300896).
#[test]
fn a_learner_without_data_is_pending_even_in_a_young_group() {
    let mut cluster = Cluster::new(4);
    cluster.replicate(3);
    let leader = cluster.wait_leader();
    cluster.pause(4);
    cluster.change(vec![PeerChange::AddLearner(Peer::learner(4, 4))]).unwrap();
    let status = cluster.node(leader).registry.get(REGION).unwrap();
    assert!(status.pending_peers.iter().any(|p| p.id == 4), "{:?}", status.pending_peers);
    cluster.resume(4);
    cluster.tick_until(200, "the learner catches up", |c| {
        c.node(leader).registry.get(REGION).is_some_and(|s| s.pending_peers.is_empty())
    });
}

/// A learner acknowledges its snapshot only once the data is in: acknowledged when its
/// Raft state was persisted, it counted as caught up while it wrote the data, answering
/// nothing, and was promoted; with one more member slow, the leader lost its quorum
/// (`scripts/scale-out.sh`, a removal's drain: installs of 7.5 s, client errors).
#[test]
fn a_learner_writing_its_snapshot_s_data_is_pending() {
    let mut cluster = Cluster::new(4);
    cluster.replicate(3);
    let value = vec![7u8; 100 << 10];
    for i in 0..30u8 {
        cluster.put(&[b'g', i], &value).unwrap();
    }
    let leader = cluster.wait_leader();
    let learner = vec![PeerChange::AddLearner(Peer::learner(4, 4))];
    cluster.store(leader).propose_conf_change(REGION, learner, None, Box::new(|_| {}));
    assert!(cluster.run_until(Until::SnapshotDelivered(4)));
    let answers = cluster.store(4).handle_ready().unwrap().messages;
    assert!(cluster.store(4).is_installing(REGION), "3 MiB go in over several rounds");
    for answer in answers {
        cluster.deliver(4, answer);
    }
    let pending = |c: &mut Cluster| c.store(leader).status(REGION).unwrap().pending_peers;
    assert!(pending(&mut cluster).iter().any(|p| p.id == 4), "caught up before its data is in");
    cluster.run();
    assert!(!cluster.store(4).is_installing(REGION));
    cluster.tick_until(50, "the learner caught up", |c| pending(c).is_empty());
}

/// A learner removed while cut off never campaigns, so no member heard from it to tell
/// it; it kept its old range for ever, and its store refused every snapshot of a Region
/// split from that range since (simulator seed 300896). After a few election timeouts
/// without a leader it asks the members, which answer that it was removed.
#[test]
fn a_learner_removed_while_cut_off_learns_it_and_goes() {
    let mut cluster = Cluster::new(4);
    cluster.replicate(3);
    cluster.change(vec![PeerChange::AddLearner(Peer::learner(4, 4))]).unwrap();
    cluster.tick_until(200, "learner caught up", |c| c.region(4).is_some());
    cluster.isolate(4);
    cluster.change(vec![PeerChange::Remove(Peer::learner(4, 4))]).unwrap();
    cluster.heal();
    // The leader no longer sends it anything: only its own question reaches the members.
    cluster.tick_until(1_000, "the removed learner destroyed", |c| c.region(4).is_none());
}

#[test]
fn a_removed_replica_learns_it_from_a_follower_when_the_leader_is_new() {
    let mut cluster = Cluster::new(4);
    cluster.replicate(3);
    let leader = cluster.wait_leader();
    let victim = (1..=3).find(|&s| s != leader).unwrap();
    cluster.isolate(victim);
    cluster.change(vec![PeerChange::AddLearner(Peer::learner(4, 4))]).unwrap();
    cluster.tick_until(200, "learner caught up", |c| c.region(4).is_some());
    cluster.change(vec![PeerChange::AddVoter(Peer::new(4, 4))]).unwrap();
    cluster.change(vec![PeerChange::Remove(Peer::new(victim, victim))]).unwrap();
    let leader = cluster.wait_leader();
    cluster.store(leader).transfer_leader(REGION, 4).unwrap();
    cluster.tick_until(100, "store 4 leads", |c| c.leader() == Some(4));
    assert!(cluster.region(victim).is_some(), "it does not know yet");
    cluster.heal();
    cluster.tick_until(300, "stale replica destroyed", |c| c.region(victim).is_none());
}

#[test]
fn leadership_moves_on_request_and_the_old_leader_drops_its_lease_at_once() {
    let mut cluster = Cluster::new(3);
    cluster.replicate(3);
    let leader = cluster.wait_leader();
    cluster.put(b"k", b"v").unwrap();
    let target = (1..=3).find(|&s| s != leader).unwrap();
    cluster.store(leader).transfer_leader(REGION, target).unwrap();
    assert!(!cluster.store(leader).status(REGION).unwrap().lease_valid(cluster.now));
    cluster.tick_until(100, "transfer", |c| c.leader() == Some(target));
    cluster.put(b"k2", b"v").unwrap();
}

/// raft-rs drops proposals while it hands leadership over, until the transferee takes
/// over or an election timeout passes. Leadership goes only to a follower whose log is
/// nearly whole (so writes stop for a round trip, not an election timeout), and a dropped
/// proposal is answered NotLeader without naming the leader itself: tikv-client follows
/// a hint at once, without sleeping, and spent all its attempts in milliseconds.
#[test]
fn leadership_goes_only_to_a_follower_nearly_caught_up_and_writes_meanwhile_get_no_hint() {
    let mut cluster = Cluster::new(3);
    cluster.replicate(3);
    let leader = cluster.wait_leader();
    let target = (1..=3).find(|&s| s != leader).unwrap();
    cluster.isolate(target);
    for i in 0..200 {
        cluster.put_on(leader, format!("k{i}").as_bytes(), b"v").unwrap();
    }
    let refused = cluster.store(leader).transfer_leader(REGION, target);
    assert!(matches!(refused, Err(RaftstoreError::ChangeRefused(_))), "{refused:?}");
    cluster.heal();
    cluster.tick_until(100, "the follower catches up", |c| {
        c.node(target).engine.get(Cf::Raw, b"k199").unwrap().is_some()
    });
    cluster.tick(2);
    cluster.pause(target);
    cluster.store(leader).transfer_leader(REGION, target).unwrap();
    let region = cluster.region(leader).unwrap();
    let mut batch = WriteBatch::new();
    batch.put(Cf::Raw, b"during".to_vec(), b"v".to_vec());
    let dropped = cluster.propose_on(leader, RaftCommand::write(&region, batch));
    assert!(matches!(dropped, Err(RaftstoreError::NotLeader { leader: None, .. })), "{dropped:?}");
    cluster.resume(target);
    cluster.tick_until(100, "the transfer", |c| c.leader() == Some(target));
}

/// raft-rs hands leadership over with a TimeoutNow message, which lets its receiver win
/// an election at once: voters grant it even though they hear from the leader. If the
/// message arrives late (the transferee was stopped), the leader has meanwhile given up
/// the transfer and carried on; the late election must not find it serving reads from a
/// lease, or it answers with what the new leader has overwritten.
#[test]
fn a_late_transfer_message_finds_the_old_leader_without_a_lease() {
    let mut cluster = Cluster::new(3);
    cluster.replicate(3);
    let leader = cluster.wait_leader();
    cluster.put(b"k", b"v1").unwrap();
    let target = (1..=3).find(|&s| s != leader).unwrap();
    cluster.pause(target);
    cluster.store(leader).transfer_leader(REGION, target).unwrap();
    cluster.run();
    // The transfer times out after an election timeout; the leader goes on serving
    // reads, renewing its lease with a ReadIndex round (a write would not do: the
    // transferee's log would then be behind and nobody would vote for it).
    cluster.tick(15);
    assert_eq!(cluster.leader(), Some(leader));
    cluster.read_index(leader).unwrap();
    // The transferee resumes, takes the held TimeoutNow and is elected; the old leader
    // does not hear of it yet.
    cluster.cut.insert((target, leader));
    cluster.resume(target);
    cluster.tick_until(20, "the transferee elected", |c| {
        c.node(target).registry.get(REGION).is_some_and(|s| s.ready_for_reads)
    });
    let region = cluster.region(target).unwrap();
    let mut batch = WriteBatch::new();
    batch.put(Cf::Raw, b"k".to_vec(), b"v3".to_vec());
    cluster.propose_on(target, RaftCommand::write(&region, batch)).unwrap();
    let old = cluster.node(leader).registry.get(REGION).unwrap();
    assert!(
        !old.lease_valid(cluster.now),
        "the old leader (store {leader}) still holds a lease after store {target} was elected"
    );
}

#[test]
fn reads_need_a_lease_or_a_quorum() {
    let mut cluster = Cluster::new(3);
    cluster.replicate(3);
    let leader = cluster.wait_leader();
    cluster.put(b"k", b"v").unwrap();
    let status = cluster.node(leader).registry.get(REGION).unwrap();
    assert!(status.lease_valid(cluster.now), "a commit just renewed the lease");
    // Idle past the lease: a ReadIndex round confirms leadership and renews it.
    cluster.tick(12);
    assert!(!cluster.node(leader).registry.get(REGION).unwrap().lease_valid(cluster.now));
    cluster.read_index(leader).unwrap();
    cluster.tick(0);
    assert!(cluster.store(leader).status(REGION).unwrap().lease_valid(cluster.now));
    // An isolated leader's ReadIndex never succeeds.
    cluster.isolate(leader);
    cluster.tick(12);
    let slot: Slot<Result<()>> = Arc::default();
    let answer = slot.clone();
    cluster.store(leader).read_index(REGION, Box::new(move |r| *answer.lock().unwrap() = Some(r)));
    assert!(cluster.run_until_answered(&slot).is_err());
}

#[test]
fn a_restarted_store_rejoins_with_its_data() {
    let mut cluster = Cluster::new(3);
    cluster.replicate(3);
    cluster.put(b"k", b"v").unwrap();
    let leader = cluster.wait_leader();
    let follower = (1..=3).find(|&s| s != leader).unwrap();
    cluster.stop(follower);
    cluster.put(b"while-down", b"v").unwrap();
    cluster.start(follower);
    cluster.tick_until(300, "caught up", |c| c.value(follower, b"while-down").is_some());
    // All three restart at once: the group elects again and keeps everything.
    for s in 1..=3 {
        cluster.stop(s);
    }
    for s in 1..=3 {
        cluster.start(s);
    }
    cluster.put(b"after-restart", b"v").unwrap();
    for s in 1..=3 {
        assert_eq!(cluster.value(s, b"k"), Some(b"v".to_vec()));
    }
}

#[test]
fn a_replicated_region_splits_on_every_store() {
    let mut cluster = Cluster::new(3);
    cluster.replicate(3);
    cluster.put(b"a", b"1").unwrap();
    cluster.put(b"x", b"2").unwrap();
    let leader = cluster.wait_leader();
    let output = cluster.split_at_m(leader);
    let ApplyOutput::Split { new, .. } = output else { panic!("{output:?}") };
    let [right] = new.as_slice() else { panic!("one new region: {new:?}") };
    assert_eq!(right.peers.len(), 3);
    cluster.tick_until(300, "the new Region has a leader", |c| {
        (1..=3).any(|s| c.node(s).registry.get(100).is_some_and(|st| st.ready_for_reads))
    });
    for s in 1..=3 {
        let status = cluster.node(s).registry.get(100).expect("every store has the new Region");
        assert_eq!(status.region.start_key, b"m");
    }
}

/// TinyKV's OneSplit: a store partitioned during the split learns of the new Region from
/// its leader before it applies the split itself; the snapshot that would overlap its old
/// Region is refused, and the split, once applied, creates the replica.
#[test]
fn a_store_partitioned_during_a_split_catches_up() {
    let mut cluster = Cluster::new(3);
    cluster.replicate(3);
    cluster.put(b"a", b"1").unwrap();
    cluster.put(b"x", b"2").unwrap();
    let leader = cluster.wait_leader();
    let lagging = (1..=3).find(|&s| s != leader).unwrap();
    cluster.isolate(lagging);
    cluster.split_at_m(leader);
    cluster.tick_until(300, "the new Region has a leader", |c| {
        (1..=3).any(|s| {
            s != lagging && c.node(s).registry.get(100).is_some_and(|st| st.ready_for_reads)
        })
    });
    cluster.heal();
    cluster.tick_until(300, "the lagging store has both Regions", |c| {
        c.node(lagging).registry.get(100).is_some()
            && c.region(lagging).is_some_and(|r| r.end_key == b"m")
    });
    assert_eq!(cluster.value(lagging, b"x"), Some(b"2".to_vec()));
}

/// Three stores holding `a` and `n`, Region 1 split at `m` while one store, returned
/// with the store that leads the new Region 100, hears nothing of Region 1 (it has not
/// applied the split, and goes on losing Region 1's messages).
fn split_behind_one_store(cluster: &mut Cluster) -> (u64, u64) {
    cluster.replicate(3);
    cluster.put(b"a", b"1").unwrap();
    cluster.put(b"n", b"1").unwrap();
    let leader = cluster.wait_leader();
    let lagging = (1..=3).find(|&s| s != leader).unwrap();
    cluster.lost_groups.insert((lagging, REGION));
    cluster.split_at_m(leader);
    cluster.tick_until(300, "the new Region has a leader", |c| (1..=3).any(|s| c_leads(c, s, 100)));
    (lagging, (1..=3).find(|&s| c_leads(cluster, s, 100)).unwrap())
}

/// A replica that votes in a new Region's first election before it has applied the split
/// creating the Region (its candidate's request created it, uninitialized) keeps that vote
/// once the split applies: the split's fresh Raft state must not let it vote again in the
/// same term for another candidate.
#[test]
fn a_vote_cast_before_the_split_applied_is_kept() {
    use scandium_raftstore::state::RaftLocalState;
    let mut cluster = Cluster::new(3);
    let (lagging, _) = split_behind_one_store(&mut cluster);
    let raft_state = |c: &mut Cluster| {
        let key = scandium_raftstore::keys::raft_state_key(100);
        let bytes = c.node(lagging).engine.get(Cf::RaftState, &key).unwrap().unwrap();
        RaftLocalState::decode(bytes.as_slice()).unwrap()
    };
    let voted = raft_state(&mut cluster);
    assert_ne!(voted.vote, 0, "the lagging store voted through an uninitialized replica");
    cluster.lost_groups.clear();
    cluster.tick_until(300, "the lagging store applies the split", |c| {
        c.node(lagging).registry.get(100).is_some_and(|st| st.region.start_key == b"m")
    });
    cluster.tick(20);
    let now = raft_state(&mut cluster);
    assert!(now.term >= voted.term, "{now:?} after {voted:?}");
    if now.term == voted.term {
        assert_eq!(now.vote, voted.vote, "the vote of term {} is kept", now.term);
    }
}

/// A request for store 2's vote in group 7 at `term`, from peer `from` on store `from`.
#[allow(clippy::field_reassign_with_default)]
fn vote_request(from: u64, term: u64) -> PeerMessage {
    use raft::prelude::{Message, MessageType};
    let mut message = Message::default();
    message.set_msg_type(MessageType::MsgRequestVote);
    (message.from, message.to, message.term) = (from, 2, term);
    let region = Region { id: 7, ..Default::default() };
    PeerMessage::raft(&region, Peer::new(from, from), Peer::new(2, 2), message)
}

/// A replica with no data, created here by a candidate's request, votes, and the store
/// restarts: the replica is not started again (it has no Region state), but the vote it
/// persisted is kept when another candidate's request of the same term creates it anew.
/// Forgotten, the second candidate would get a second vote in one term, and a group of
/// three could elect two leaders of that term.
#[test]
fn a_vote_cast_by_a_replica_without_data_survives_a_restart() {
    use scandium_raftstore::state::RaftLocalState;
    let mut cluster = Cluster::new(3);
    let vote_of = |c: &mut Cluster| {
        let key = scandium_raftstore::keys::raft_state_key(7);
        let bytes = c.node(2).engine.get(Cf::RaftState, &key).unwrap().unwrap();
        let state = RaftLocalState::decode(bytes.as_slice()).unwrap();
        (state.term, state.vote)
    };
    cluster.deliver(1, vote_request(1, 9));
    cluster.run();
    assert_eq!(vote_of(&mut cluster), (9, 1), "store 2 voted for peer 1 in term 9");
    cluster.stop(2);
    cluster.start(2);
    assert!(cluster.node(2).registry.get(7).is_none(), "a replica with no data is not started");
    // Past the election timeout in which a restarted store's replicas refuse every vote.
    cluster.tick(40);
    cluster.deliver(3, vote_request(3, 9));
    cluster.run();
    assert_eq!(vote_of(&mut cluster), (9, 1), "no second vote in term 9");
}

/// The new Region's replica on a store that has not applied the split yet is removed,
/// and destroyed there (a tombstone); the split then applies there. It must leave the
/// tombstone as it is: written over with the new Region's first state, as it was, the
/// replica came back at the next restart.
#[test]
fn a_split_applied_after_the_new_regions_replica_went_does_not_bring_it_back() {
    let mut cluster = Cluster::new(3);
    let (lagging, new_leader) = split_behind_one_store(&mut cluster);
    let removal = vec![PeerChange::Remove(Peer::new(100 + lagging, lagging))];
    let region = cluster.change_group_on(new_leader, 100, removal).unwrap();
    // The replica there, created by the new Region's messages, has no data and no
    // configuration: it asks no one, and learns of its removal when a member tells it.
    assert!(cluster.store(lagging).describe(100).is_some(), "a replica with no data there");
    let told = PeerMessage {
        region_id: 100,
        from: Peer::new(100 + new_leader, new_leader),
        to: Peer::new(100 + lagging, lagging),
        epoch: region.epoch(),
        is_tombstone: true,
        members: region.peers.clone(),
        ..PeerMessage::default()
    };
    cluster.deliver(new_leader, told);
    assert!(cluster.store(lagging).describe(100).is_none(), "destroyed: a tombstone");
    cluster.lost_groups.clear();
    cluster.tick_until(300, "the lagging store applies the split", |c| {
        c.node(lagging).registry.get(REGION).is_some_and(|st| st.region.end_key == b"m")
    });
    assert!(cluster.store(lagging).describe(100).is_none(), "not started by the split");
    cluster.stop(lagging);
    cluster.start(lagging);
    cluster.tick(5);
    assert!(cluster.store(lagging).describe(100).is_none(), "nor by a restart");
}

/// The new Region's replica on a store that has not applied the split yet is replaced by
/// a newer one (removed, then added again), which waits there for a snapshot the
/// parent's range refuses; the split then applies there. It leaves the newer replica as
/// it is (before, it put the split's older one in its place, which had to be destroyed
/// again), and that one then takes its snapshot.
#[test]
fn a_split_applied_after_the_new_regions_replica_was_replaced_keeps_the_newer_one() {
    let mut cluster = Cluster::new(3);
    let (lagging, new_leader) = split_behind_one_store(&mut cluster);
    let (old, newer) = (100 + lagging, 200 + lagging);
    let removal = vec![PeerChange::Remove(Peer::new(old, lagging))];
    cluster.change_group_on(new_leader, 100, removal).unwrap();
    let addition = vec![PeerChange::AddLearner(Peer::learner(newer, lagging))];
    cluster.change_group_on(new_leader, 100, addition).unwrap();
    let peer_there = |c: &mut Cluster| {
        let described = c.store(lagging).describe(100).unwrap_or_default();
        described.split(' ').nth(1).and_then(|id| id.parse::<u64>().ok())
    };
    cluster.tick_until(100, "the newer replica is there", |c| peer_there(c) == Some(newer));
    cluster.lost_groups.clear();
    cluster.tick_until(300, "the lagging store applies the split", |c| {
        c.node(lagging).registry.get(REGION).is_some_and(|st| st.region.end_key == b"m")
    });
    assert_eq!(peer_there(&mut cluster), Some(newer), "the split left the newer replica");
    cluster.tick_until(300, "the newer replica took its snapshot", |c| {
        c.node(lagging).registry.get(100).is_some_and(|st| st.region.peer(newer).is_some())
            && c.value(lagging, b"n").is_some()
    });
}

fn c_leads(cluster: &mut Cluster, store: u64, group: u64) -> bool {
    cluster.node(store).registry.get(group).is_some_and(|st| st.ready_for_reads)
}

/// A leader hands its appends to the transport before writing them itself, so followers
/// persist alongside it; the followers' acknowledgements leave once they have persisted.
#[test]
fn a_leader_sends_its_appends_before_persisting_them() {
    use raft::prelude::MessageType;
    let mut cluster = Cluster::new(3);
    cluster.replicate(3);
    let leader = cluster.wait_leader();
    let region = cluster.region(leader).unwrap();
    let mut batch = WriteBatch::new();
    batch.put(Cf::Raw, b"early".to_vec(), b"v".to_vec());
    let slot: Slot<Result<ApplyOutput>> = Arc::default();
    let answer = slot.clone();
    cluster.store(leader).propose_command(
        REGION,
        scandium_raftstore::EncodedCommand::new(RaftCommand::write(&region, batch)),
        Box::new(move |r| *answer.lock().unwrap() = Some(r)),
    );

    let engine = cluster.node(leader).engine.clone();
    let mut sent_before_write = Vec::new();
    let mut sent_early = Vec::new();
    let output = cluster
        .store(leader)
        .handle_ready_sending(&mut |messages| {
            for m in &messages {
                if let Some(entry) = m.message.entries.last() {
                    let logged = engine
                        .get(Cf::RaftLog, &scandium_raftstore::keys::log_key(REGION, entry.index))
                        .unwrap();
                    sent_before_write.push(logged.is_none());
                }
            }
            sent_early.extend(messages);
        })
        .unwrap();
    let appends = |ms: &[PeerMessage]| {
        ms.iter()
            .filter(|m| m.message.get_msg_type() == MessageType::MsgAppend)
            .filter(|m| !m.message.entries.is_empty())
            .count()
    };
    assert_eq!(appends(&sent_early), 2, "one append per follower, sent early");
    assert_eq!(appends(&output.messages), 0);
    assert!(sent_before_write.iter().all(|&b| b), "appends left before the leader's write");

    // A follower's acknowledgement leaves through the early path too, once it is durable.
    let follower = (1..=3).find(|&s| s != leader).unwrap();
    let to_follower = sent_early.iter().find(|m| m.to.store_id == follower).unwrap().clone();
    cluster.store(follower).step(to_follower, None).unwrap();
    let mut acks = Vec::new();
    let output = cluster
        .store(follower)
        .handle_ready_sending(&mut |messages| acks.extend(messages))
        .unwrap();
    assert!(acks.iter().any(|m| m.message.get_msg_type() == MessageType::MsgAppendResponse));
    assert!(output
        .messages
        .iter()
        .all(|m| m.message.get_msg_type() != MessageType::MsgAppendResponse));

    // The rest of the cluster finishes the write as usual.
    for message in sent_early.into_iter().chain(output.messages) {
        if message.to.store_id != follower {
            cluster.deliver(leader, message);
        }
    }
    for message in acks {
        cluster.deliver(follower, message);
    }
    cluster.run_until_answered(&slot).unwrap();
    assert_eq!(cluster.value(leader, b"early"), Some(b"v".to_vec()));
}

/// A follower's refusal of an append at or below what it has acknowledged since (an
/// answer overtaken by later ones) changes nothing. raft-rs 0.7 alone took one in probe
/// state, moved the follower's next index below its match, and with the log truncated
/// there sent it a snapshot it did not need (simulator seed 95007903, where the snapshot
/// cost a merge's source replica the entries its commit was to carry).
#[test]
fn a_stale_refusal_of_an_append_sends_no_snapshot() {
    let mut cluster = Cluster::new(3);
    cluster.replicate(3);
    for i in 0..30u8 {
        cluster.put(&[b'k', i], b"v").unwrap();
    }
    cluster.tick(5);
    let leader = cluster.wait_leader();
    let follower = (1..=3).find(|&s| s != leader).unwrap();
    let status = cluster.node(leader).registry.get(REGION).unwrap();
    let (progress, last) = cluster.store(leader).progress(REGION).unwrap();
    let matched = progress.iter().find(|(id, _)| *id == follower).unwrap().1;
    assert_eq!(matched, last, "the follower is caught up");
    let before = cluster.snapshots[follower as usize];
    // A refusal above the match, as after a lost append, puts the follower in probe; then
    // one at the match, from before it (a hint of 0: the whole log, truncated long since).
    for (index, hint) in [(matched + 1, matched), (matched, 0)] {
        let refusal = append_refusal(&status.region, follower, leader, status.term, index, hint);
        cluster.deliver(follower, refusal);
    }
    cluster.put(b"after", b"v").unwrap();
    cluster.tick(10);
    assert_eq!(cluster.snapshots[follower as usize], before, "no snapshot sent");
    assert_eq!(cluster.value(follower, b"after"), Some(b"v".to_vec()));
}

/// A refusal from peer `from` (on store `from`) of an append after `index`, with the
/// follower's last index as `hint`, to the leader `to` of Region 1.
#[allow(clippy::field_reassign_with_default)]
fn append_refusal(
    region: &Region,
    from: u64,
    to: u64,
    term: u64,
    index: u64,
    hint: u64,
) -> PeerMessage {
    use raft::prelude::{Message, MessageType};
    let mut message = Message::default();
    message.set_msg_type(MessageType::MsgAppendResponse);
    (message.from, message.to, message.term) = (from, to, term);
    (message.index, message.reject, message.reject_hint) = (index, true, hint);
    message.log_term = term;
    PeerMessage::raft(region, Peer::new(from, from), Peer::new(to, to), message)
}

/// Builds a snapshot message from store 1 to a new replica (peer 2) on store 2 of
/// Region 7, at `index`. (raft-rs's rust-protobuf messages are built field by field.)
#[allow(clippy::field_reassign_with_default)]
fn snapshot_message(index: u64) -> PeerMessage {
    use raft::prelude::{ConfState, Message, MessageType, Snapshot, SnapshotMetadata};
    let region = Region {
        id: 7,
        peers: vec![Peer::new(1, 1), Peer::new(2, 2)],
        conf_ver: 2,
        version: 1,
        ..Default::default()
    };
    let header =
        SnapshotHeader { region: Some(region.clone()), token: index, absorbed: Vec::new() };
    let mut conf_state = ConfState::default();
    conf_state.voters = vec![1, 2];
    let mut metadata = SnapshotMetadata::default();
    metadata.index = index;
    metadata.term = 3;
    metadata.set_conf_state(conf_state);
    let mut snapshot = Snapshot::default();
    snapshot.data = header.encode_to_vec().into();
    snapshot.set_metadata(metadata);
    let mut message = Message::default();
    message.set_msg_type(MessageType::MsgSnapshot);
    message.to = 2;
    message.from = 1;
    message.term = 3;
    message.set_snapshot(snapshot);
    PeerMessage::raft(&region, Peer::new(1, 1), Peer::new(2, 2), message)
}

/// Two snapshots for one replica before its round: raft-rs takes the newer and refuses
/// the older; the data installed is the one of the snapshot it took, whatever the order
/// they came in (the older one's data must not replace the newer's).
#[test]
fn an_older_snapshot_refused_by_raft_does_not_replace_the_data_of_the_one_taken() {
    use scandium_raftstore::snapshot::{SnapshotChunk, SnapshotEntry};
    let engine: EngineRef = Arc::new(MemoryEngine::new());
    let mut store =
        Store::open(2, engine.clone(), config(2), Box::new(NoMeta), Registry::new()).unwrap();
    store.set_time(1_000);
    let stage = |store: &Store, value: &[u8]| {
        let mut staging = store.snapshot_stager().begin();
        let entry = SnapshotEntry { cf: 1, key: b"a".to_vec(), value: value.to_vec() };
        staging.push(SnapshotChunk { entries: vec![entry] }).unwrap();
        staging.finish(Some(1)).unwrap()
    };
    let newer = stage(&store, b"newer");
    store.step(snapshot_message(10), Some(newer)).unwrap();
    let older = stage(&store, b"older");
    store.step(snapshot_message(5), Some(older)).unwrap();
    while store.has_ready() {
        store.handle_ready().unwrap();
    }
    assert_eq!(engine.get(Cf::Raw, b"a").unwrap().as_deref(), Some(&b"newer"[..]));
    let staged = engine.snapshot().scan(Cf::Staging, &[], &[], false).count();
    assert_eq!(staged, 0, "the refused snapshot's data was deleted");
}

/// Rounds look only at groups with work. With 1,000 settled Regions on three stores no
/// store has work, and one write's rounds visit the one Region written, on every store
/// (before, every round and every question whether one was due walked every replica,
/// which is most of what thousands of idle Regions cost).
#[test]
fn a_round_visits_only_the_groups_with_work() {
    const REGIONS: u64 = 1_000;
    let mut cluster = Cluster::new(3);
    cluster.replicate(3);
    let leader = cluster.wait_leader();
    let region = cluster.region(leader).unwrap();
    let splits = (1..REGIONS)
        .map(|i| SplitRequest {
            split_key: format!("k{i:05}").into_bytes(),
            new_region_id: 1_000 + i,
            new_peer_ids: (1..=3).map(|s| (1_000 + i) * 10 + s).collect(),
        })
        .collect();
    cluster.propose_on(leader, RaftCommand::split(&region, splits)).unwrap();
    let led = |c: &mut Cluster, id: u64| {
        (1..=3).find(|&s| c.node(s).registry.get(id).is_some_and(|st| st.ready_for_reads))
    };
    cluster.tick_until(300, "every new Region has a leader", |c| {
        (1..REGIONS).all(|i| led(c, 1_000 + i).is_some())
    });
    for s in 1..=3 {
        assert_eq!(cluster.store(s).group_ids().len() as u64, REGIONS);
        assert!(!cluster.store(s).has_ready(), "store {s} has work while nothing happens");
    }

    let target = 1_000 + REGIONS / 2;
    let on = led(&mut cluster, target).unwrap();
    let region = cluster.node(on).registry.get(target).unwrap().region.clone();
    let mut batch = WriteBatch::new();
    batch.put(Cf::Raw, region.start_key.clone(), b"v".to_vec());
    let slot: Slot<Result<ApplyOutput>> = Arc::default();
    let answer = slot.clone();
    cluster.store(on).propose_command(
        target,
        scandium_raftstore::EncodedCommand::new(RaftCommand::write(&region, batch)),
        Box::new(move |r| *answer.lock().unwrap() = Some(r)),
    );
    let mut visited = Vec::new();
    for _ in 0..10 {
        let mut outbox = Vec::new();
        for s in 1..=3 {
            let store = cluster.store(s);
            while store.has_ready() {
                let out = store.handle_ready().unwrap();
                visited.push((s, out.visited));
                outbox.extend(out.messages.into_iter().map(|m| (s, m)));
            }
        }
        if outbox.is_empty() {
            break;
        }
        for (from, message) in outbox {
            assert_eq!(message.region_id, target, "only the written Region speaks");
            cluster.deliver(from, message);
        }
    }
    assert!(slot.lock().unwrap().take().is_some_and(|r| r.is_ok()), "the write was applied");
    assert!(visited.iter().all(|&(_, n)| n == 1), "rounds visited other groups: {visited:?}");
    assert!((1..=3).all(|s| visited.iter().any(|&(v, _)| v == s)), "every store: {visited:?}");
    assert_eq!(cluster.value(on, &region.start_key), Some(b"v".to_vec()));
    // The followers learn of the commit from the next heartbeat.
    cluster.tick_until(10, "the write applied on every store", |c| {
        (1..=3).all(|s| c.value(s, &region.start_key).is_some())
    });
}

/// The liveness events store `at` reported about store `about`.
fn liveness_events(cluster: &Cluster, at: u64, about: u64) -> Vec<Transition> {
    let about_it = |t: &Transition| match *t {
        Transition::Suspect(s) | Transition::Alive(s) | Transition::Restarted(s) => s == about,
    };
    (cluster.events.iter())
        .filter(|(store, _)| *store == at)
        .filter_map(|(_, event)| match event {
            Event::Store(transition) if about_it(transition) => Some(*transition),
            _ => None,
        })
        .collect()
}

/// Stores beat each other; one silent for an election timeout, counted in ticks, is
/// suspect on every other store, and alive again once heard. Whatever the groups do:
/// the count is of the store.
#[test]
fn an_isolated_store_is_suspect_after_an_election_timeout_and_alive_once_heard() {
    let mut cluster = Cluster::new(3);
    cluster.replicate(3);
    cluster.tick(4);
    for (at, about) in [(1, 2), (1, 3), (2, 1), (3, 1), (3, 2)] {
        assert_eq!(cluster.store(at).is_store_suspect(about), Some(false), "{at} on {about}");
    }
    cluster.events.clear();
    cluster.isolate(3);
    let mut ticks = 0;
    while cluster.store(1).is_store_suspect(3) != Some(true) {
        cluster.tick(1);
        ticks += 1;
        assert!(ticks <= 20, "store 3 never suspect");
    }
    // An election timeout (10 ticks) after it was last heard: at most a beat's interval
    // (2 ticks) before the cut.
    assert!((9..=10).contains(&ticks), "suspect after {ticks} ticks");
    assert_eq!(cluster.store(2).is_store_suspect(3), Some(true));
    assert_eq!(cluster.store(3).is_store_suspect(1), Some(true), "the cut-off store, too");
    assert_eq!(cluster.store(1).is_store_suspect(2), Some(false));
    assert_eq!(liveness_events(&cluster, 1, 3), vec![Transition::Suspect(3)]);
    cluster.heal();
    cluster.tick(2);
    assert_eq!(cluster.store(1).is_store_suspect(3), Some(false));
    assert_eq!(liveness_events(&cluster, 1, 3), [Transition::Suspect(3), Transition::Alive(3)]);
    assert!(liveness_events(&cluster, 1, 2).is_empty(), "store 2 was heard throughout");
}

/// A store that restarts beats with a new incarnation, which the others report.
#[test]
fn a_restarted_store_is_a_new_incarnation() {
    let mut cluster = Cluster::new(3);
    cluster.replicate(3);
    cluster.tick(4);
    cluster.events.clear();
    cluster.stop(2);
    cluster.tick(3);
    cluster.start(2);
    cluster.tick(3);
    assert_eq!(liveness_events(&cluster, 1, 2), vec![Transition::Restarted(2)]);
    assert_eq!(liveness_events(&cluster, 3, 2), vec![Transition::Restarted(2)]);
    assert_eq!(cluster.store(1).is_store_suspect(2), Some(false));
}

/// A store that no longer holds a replica of any group here stops being judged (and
/// beaten): the configuration change that took its replica away makes the next recount
/// of the stores to beat.
#[test]
fn a_store_left_by_every_group_is_forgotten() {
    let mut cluster = Cluster::new(3);
    cluster.replicate(3);
    cluster.tick(4);
    assert_eq!(cluster.store(1).is_store_suspect(3), Some(false));
    cluster.isolate(3);
    cluster.change(vec![PeerChange::Remove(Peer::new(3, 3))]).unwrap();
    cluster.tick_until(60, "store 3 forgotten", |c| {
        (1..=2).all(|s| c.store(s).is_store_suspect(3).is_none())
    });
    cluster.tick(30);
    assert_eq!(cluster.store(1).is_store_suspect(3), None, "judged again");
    assert_eq!(cluster.store(1).is_store_suspect(2), Some(false), "a member is still judged");
    // Nor is the removed peer kept among those the replicas heard from.
    for s in 1..=2 {
        let described = cluster.store(s).describe(REGION).unwrap();
        assert!(described.ends_with("heard=1"), "store {s}: {described}");
    }
}

/// The same with the removed replica's store reachable: its replica may linger, and
/// beat, after the others recounted; a beat from a store that holds none of a store's
/// groups does not take it back into that store's judgement (it would be judged suspect
/// for ever once silent).
#[test]
fn a_store_left_by_every_group_is_forgotten_though_it_beats() {
    let mut cluster = Cluster::new(3);
    cluster.replicate(3);
    cluster.tick(4);
    cluster.change(vec![PeerChange::Remove(Peer::new(3, 3))]).unwrap();
    cluster.tick_until(200, "store 3's replica gone", |c| c.store(3).status(REGION).is_none());
    cluster.tick_until(60, "store 3 forgotten", |c| {
        (1..=2).all(|s| c.store(s).is_store_suspect(3).is_none())
    });
    cluster.deliver(3, PeerMessage::beat(3, 1, 7));
    cluster.tick(100);
    assert_eq!(cluster.store(1).is_store_suspect(3), None, "judged again");
    assert_eq!(cluster.store(2).is_store_suspect(3), None, "judged again");
}

/// A store that does not beat (a node of an older version) is never judged, however
/// long it is silent.
#[test]
fn a_store_that_never_beats_is_never_judged() {
    let mut cluster = Cluster::new(3);
    cluster.replicate(3);
    cluster.stop(3);
    let engine_3 = cluster.node(3).engine.clone();
    let store = Store::open(
        3,
        engine_3,
        RaftConfig { incarnation: 0, ..config(3) },
        Box::new(NoMeta),
        cluster.node(3).registry.clone(),
    )
    .unwrap();
    cluster.node(3).store = Some(store);
    cluster.tick(4);
    assert_eq!(cluster.store(1).is_store_suspect(3), None);
    assert_eq!(cluster.store(3).is_store_suspect(1), Some(false), "it hears the others' beats");
    cluster.isolate(3);
    cluster.tick(30);
    assert_eq!(cluster.store(1).is_store_suspect(3), None);
    assert!(liveness_events(&cluster, 1, 3).is_empty());
}

/// Idle ticks before a group hibernates in these tests: past the lease (8 ticks).
const SLEEP_AFTER: usize = 12;

/// Three stores with Region 1 replicated and written, then idle until it hibernates on
/// every replica; the store that leads it.
fn sleeping_cluster() -> (Cluster, u64) {
    sleeping_cluster_of(3)
}

/// [`sleeping_cluster`] with `stores` stores, of which 1, 2 and 3 hold the group.
fn sleeping_cluster_of(stores: u64) -> (Cluster, u64) {
    let mut cluster = Cluster::with_hibernation(stores, SLEEP_AFTER);
    cluster.replicate(3);
    cluster.put(b"a", b"1").unwrap();
    cluster.tick_until(100, "the group asleep on every store", |c| {
        (1..=3).all(|s| c.store(s).is_hibernating(REGION))
    });
    let leader = cluster.leader().expect("the leader that went to sleep");
    (cluster, leader)
}

/// Ticks every store once and runs by hand: every message is delivered, but those
/// `aside` picks, which it keeps.
fn tick_by_hand(
    cluster: &mut Cluster,
    mut aside: impl FnMut(&PeerMessage) -> bool,
) -> Vec<(u64, PeerMessage)> {
    cluster.now += TICK_MS;
    let now = cluster.now;
    for id in 1..=3 {
        cluster.store(id).tick(now);
    }
    let mut kept = Vec::new();
    loop {
        let mut sent = Vec::new();
        for id in 1..=3 {
            while cluster.store(id).has_ready() {
                let out = cluster.store(id).handle_ready().unwrap();
                sent.extend(out.messages.into_iter().map(|m| (id, m)));
            }
        }
        if sent.is_empty() {
            return kept;
        }
        for (from, message) in sent {
            match aside(&message) {
                true => kept.push((from, message)),
                false => cluster.deliver(from, message),
            }
        }
    }
}

/// An acknowledgement of an earlier request to sleep, delayed on the way, does not count
/// for a later request at the same term and index: its sender may be awake by then, and
/// a leader asleep beside an awake follower is woken by that follower's election.
#[test]
fn an_old_acknowledgement_does_not_put_the_leader_to_sleep() {
    use scandium_raftstore::hibernate::Hibernate;
    let mut cluster = Cluster::with_hibernation(3, SLEEP_AFTER);
    cluster.replicate(3);
    cluster.put(b"a", b"1").unwrap();
    let leader = cluster.leader().unwrap();
    let follower = (1..=3).find(|&s| s != leader).unwrap();
    let is_ack = |m: &PeerMessage| matches!(m.hibernate, Some(Hibernate::Ack { .. }));
    let from_follower = |m: &PeerMessage| m.from.store_id == follower;
    // The first round: the follower's acknowledgement is held back.
    let mut old_ack = Vec::new();
    for _ in 0..100 {
        old_ack = tick_by_hand(&mut cluster, |m| is_ack(m) && from_follower(m));
        if !old_ack.is_empty() {
            break;
        }
    }
    assert_eq!(old_ack.len(), 1, "the follower acknowledged the first request");
    let slept = cluster.store(leader).groups_slept();
    // Unanswered, the leader wakes and heartbeats, which wakes the follower; idle again,
    // it asks again at the same term and index. The request to the follower is lost.
    let is_request = |m: &PeerMessage| matches!(m.hibernate, Some(Hibernate::Request { .. }));
    let mut asked_again = false;
    for _ in 0..100 {
        let lost = tick_by_hand(&mut cluster, |m| is_request(m) && m.to.store_id == follower);
        if !lost.is_empty() {
            asked_again = true;
            break;
        }
    }
    assert!(asked_again, "the leader asked again");
    assert!(!cluster.store(follower).is_hibernating(REGION), "the follower is awake");
    let (from, ack) = old_ack.pop().unwrap();
    cluster.deliver(from, ack);
    cluster.run();
    assert_eq!(cluster.store(leader).groups_slept(), slept, "the leader slept on an old ack");
}

/// An idle group sleeps on every replica, and then no message of it is sent at all
/// (stores still beat), however long it sleeps.
#[test]
fn an_idle_group_sleeps_on_every_replica_and_sends_nothing() {
    let (mut cluster, _) = sleeping_cluster();
    let before = cluster.delivered;
    cluster.tick(200);
    assert_eq!(cluster.delivered, before, "a sleeping group sent messages");
    assert!((1..=3).all(|s| cluster.store(s).is_hibernating(REGION)));
    for s in 1..=3 {
        assert_eq!(cluster.value(s, b"a"), Some(b"1".to_vec()));
    }
}

/// A write wakes a sleeping group and commits in the rounds of an awake one: no tick.
#[test]
fn a_write_wakes_a_sleeping_group_and_commits_without_a_tick() {
    let (mut cluster, leader) = sleeping_cluster();
    let answer = cluster.propose_later(leader, b"b", b"2");
    cluster.run();
    let answer = answer.lock().unwrap().take();
    assert!(answer.is_some_and(|a| a.is_ok()), "committed with no tick");
    assert!((1..=3).all(|s| !cluster.store(s).is_hibernating(REGION)), "every replica woke");
    cluster.tick_until(100, "asleep again", |c| (1..=3).all(|s| c.store(s).is_hibernating(REGION)));
    for s in 1..=3 {
        assert_eq!(cluster.value(s, b"b"), Some(b"2".to_vec()));
    }
}

/// A sleeping leader holds no lease: a read takes a ReadIndex round, which wakes the
/// group and completes in its rounds, with no tick.
#[test]
fn a_read_of_a_sleeping_group_takes_a_read_index_round_without_a_tick() {
    let (mut cluster, leader) = sleeping_cluster();
    let now = cluster.now;
    let status = cluster.node(leader).registry.get(REGION).unwrap();
    assert!(!status.lease_valid(now), "a sleeping leader holds no lease");
    let slot: Slot<Result<()>> = Arc::default();
    let answer = slot.clone();
    cluster.store(leader).read_index(REGION, Box::new(move |r| *answer.lock().unwrap() = Some(r)));
    cluster.run();
    assert!(slot.lock().unwrap().take().is_some_and(|r| r.is_ok()), "read with no tick");
}

/// The leader of a sleeping group dies: its store falls silent, which wakes the
/// followers, and they elect one of them within an election timeout of noticing.
#[test]
fn a_sleeping_group_whose_leader_dies_elects_another() {
    let (mut cluster, leader) = sleeping_cluster();
    cluster.stop(leader);
    let mut ticks = 0;
    while cluster.leader().is_none() {
        cluster.tick(1);
        ticks += 1;
        assert!(ticks <= 60, "no new leader in 60 ticks");
    }
    // Silent for an election timeout (10 ticks), then the longest election timeout of
    // the stores left (14), and the vote: the bound docs/design/hibernation.md gives.
    assert!(ticks <= 10 + 14 + 4, "a new leader after {ticks} ticks");
    let survivor = cluster.leader().unwrap();
    cluster.put_on(survivor, b"c", b"3").unwrap();
    for s in (1..=3).filter(|&s| s != leader) {
        assert_eq!(cluster.value(s, b"a"), Some(b"1".to_vec()));
    }
}

/// A follower cut off wakes the group (its store falls silent), which then sleeps again
/// without it; once heard again, it wakes the group, catches up, and all sleep.
#[test]
fn a_follower_cut_off_does_not_keep_the_group_awake() {
    let (mut cluster, leader) = sleeping_cluster();
    let cut = (1..=3).find(|&s| s != leader).unwrap();
    let other = (1..=3).find(|&s| s != leader && s != cut).unwrap();
    cluster.isolate(cut);
    cluster.tick(12);
    assert!(cluster.store(leader).is_store_suspect(cut) == Some(true));
    cluster.tick_until(60, "asleep without the cut-off follower", |c| {
        c.store(leader).is_hibernating(REGION) && c.store(other).is_hibernating(REGION)
    });
    cluster.heal();
    cluster.tick_until(100, "all asleep again, the follower caught up", |c| {
        (1..=3).all(|s| c.store(s).is_hibernating(REGION))
    });
    assert_eq!(cluster.leader(), Some(leader), "nobody was deposed");
    assert_eq!(cluster.value(cut, b"a"), Some(b"1".to_vec()));
}

/// A restarted follower (a new incarnation) wakes its groups on the other stores; they
/// catch it up and sleep again, with no election.
#[test]
fn a_restarted_follower_wakes_its_groups_and_all_sleep_again() {
    let (mut cluster, leader) = sleeping_cluster();
    let follower = (1..=3).find(|&s| s != leader).unwrap();
    cluster.stop(follower);
    cluster.tick(3);
    cluster.start(follower);
    cluster.tick_until(10, "the leader awake", |c| !c.store(leader).is_hibernating(REGION));
    cluster.tick_until(100, "all asleep again", |c| {
        (1..=3).all(|s| c.store(s).is_hibernating(REGION))
    });
    assert_eq!(cluster.leader(), Some(leader), "nobody was deposed");
}

/// A membership change asked of a sleeping leader is judged on its followers as they
/// were when they slept (caught up, on stores still heard), not refused for want of
/// recent answers, which a sleeping group never gets.
#[test]
fn a_conf_change_asked_of_a_sleeping_leader_is_not_refused() {
    let (mut cluster, leader) = sleeping_cluster_of(4);
    cluster.tick(50);
    let region = cluster.change_on(leader, vec![PeerChange::AddLearner(Peer::learner(4, 4))]);
    assert!(region.is_ok_and(|r| r.peers.len() == 4), "refused after a sleep");
    cluster.tick_until(200, "the learner caught up", |c| c.value(4, b"a").is_some());
}

/// A split of a sleeping Region wakes it (a proposal); the new Region elects, and both
/// sleep again.
#[test]
fn a_split_wakes_a_sleeping_region_and_both_halves_sleep_again() {
    let (mut cluster, leader) = sleeping_cluster();
    cluster.split_at_m(leader);
    cluster.tick_until(200, "both halves asleep on every store", |c| {
        (1..=3).all(|s| c.store(s).is_hibernating(REGION) && c.store(s).is_hibernating(100))
    });
}

/// A learner is promoted only once it takes the log as it comes: one cut off before its
/// snapshot would count towards every quorum with nothing to give (placement may ask
/// so after a change of its leader forgot which learners lag).
#[test]
fn a_learner_is_promoted_only_once_caught_up() {
    let mut cluster = Cluster::new(4);
    cluster.replicate(3);
    cluster.put(b"k", b"v").unwrap();
    cluster.isolate(4);
    cluster.change(vec![PeerChange::AddLearner(Peer::learner(4, 4))]).unwrap();
    let refused = cluster.change(vec![PeerChange::AddVoter(Peer::new(4, 4))]);
    assert!(
        matches!(&refused, Err(RaftstoreError::ChangeRefused(why)) if why.contains("caught up")),
        "{refused:?}"
    );
    cluster.heal();
    cluster.tick_until(200, "the learner caught up", |c| c.value(4, b"k").is_some());
    cluster.tick(5);
    cluster.change(vec![PeerChange::AddVoter(Peer::new(4, 4))]).unwrap();
}

/// A membership step planned against one configuration is refused once the group has
/// another: two steps planned at one epoch (by an old and a new placement leader, or one
/// step sent twice) cannot both apply.
#[test]
fn a_change_planned_against_an_older_epoch_is_refused() {
    let mut cluster = Cluster::new(4);
    cluster.replicate(3);
    let leader = cluster.wait_leader();
    let planned = cluster.region(leader).unwrap().epoch();
    let victim = if leader == 3 { 2 } else { 3 };
    let removal = vec![PeerChange::Remove(Peer::new(victim, victim))];
    let region = cluster.change_planned(planned, removal).unwrap();
    assert_eq!(region.conf_ver, planned.conf_ver + 1);
    let learner = vec![PeerChange::AddLearner(Peer::learner(4, 4))];
    let refused = cluster.change_planned(planned, learner.clone());
    assert!(
        matches!(&refused, Err(RaftstoreError::ChangeRefused(why)) if why.contains("planned")),
        "{refused:?}"
    );
    cluster.change_planned(region.epoch(), learner).unwrap();
}
