//! Interleavings forced with failpoints (the `fail` crate, compiled in for tests only
//! through the `failpoints` feature), on an in-process cluster: a node failing between a
//! transaction's prewrite and its commit, and between its primary's commit and its
//! secondaries'; a follower's apply of a split held while the cluster moves on; a
//! snapshot transfer cut off after its first chunk.
//!
//! Failpoints are global to the process, so every test holds a `FailScenario` (which
//! serialises them and turns every failpoint off at the end) besides the cluster lock.

#[path = "cluster/harness.rs"]
mod harness;

use harness::{assert_replicas_agree, Cluster};
use std::time::{Duration, Instant};
use tikv_client::TransactionClient;

fn k(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

/// Reads `keys` in a fresh snapshot through a new client, retrying while placement
/// elects a new leader or locks are not yet resolvable (a failed transaction's locks wait
/// out their TTL).
async fn read_settled(cluster: &Cluster, keys: &[&str]) -> Vec<Option<Vec<u8>>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let endpoints: Vec<String> = cluster.running().map(|(i, _)| cluster.addrs[i].clone()).collect();
    'retry: loop {
        assert!(Instant::now() < deadline, "reads of {keys:?} did not settle");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let config = tikv_client::Config::default().with_timeout(Duration::from_secs(2));
        let Ok(txns) = TransactionClient::new_with_config(endpoints.clone(), config).await else {
            continue;
        };
        let Ok(ts) = txns.current_timestamp().await else { continue };
        let mut snapshot = txns.snapshot(ts, Default::default());
        let mut values = Vec::new();
        for key in keys {
            match snapshot.get(k(key)).await {
                Ok(value) => values.push(value),
                Err(_) => continue 'retry,
            }
        }
        return values;
    }
}

/// A transaction writing `value` to `fa` and `fb` while `kv_commit` is configured as
/// `failing`; the leader of both keys is stopped once its commit returned, and the keys
/// are read back after. Returns whether the commit succeeded, whether a lock was left on
/// the leader, and what the reads found.
async fn commit_then_lose_the_leader(
    failing: &str,
    value: &str,
) -> (bool, bool, Vec<Option<Vec<u8>>>) {
    let mut cluster = Cluster::start(3).await;
    let txns = cluster.txn_client().await;
    let leader = cluster.wait_leader(cluster.region_of(b"fa"), Duration::from_secs(5)).await;
    fail::cfg("kv_commit", failing).unwrap();
    let mut txn = txns.begin_optimistic().await.unwrap();
    txn.put(k("fa"), k(value)).await.unwrap();
    txn.put(k("fb"), k(value)).await.unwrap();
    let committed = txn.commit().await.is_ok();
    fail::cfg("kv_commit", "off").unwrap();
    let engine = &cluster.node(leader).engine();
    let locked = [b"fa", b"fb"]
        .iter()
        .any(|key| engine.get(scandium_storage::Cf::Lock, *key).unwrap().is_some());
    cluster.stop(leader).await;
    let values = read_settled(&cluster, &["fa", "fb"]).await;
    cluster.restart(leader).await;
    assert_replicas_agree(&cluster).await;
    cluster.shutdown().await;
    (committed, locked, values)
}

/// The node leading both keys fails after the prewrite and before any commit reached
/// Raft: once it is gone, readers roll the transaction back, on every key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_failing_between_prewrite_and_commit_leaves_nothing_of_the_transaction() {
    let scenario = fail::FailScenario::setup();
    let (committed, locked, values) = commit_then_lose_the_leader("return", "1").await;
    assert!(!committed && locked, "prewritten, and no commit got through");
    assert_eq!(values, vec![None, None]);
    scenario.teardown();
}

/// The primary's commit is applied, then every further commit fails and the leader goes
/// away: readers roll the secondary forward, so the transaction is there whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_failing_after_the_primary_commit_leaves_the_whole_transaction() {
    let scenario = fail::FailScenario::setup();
    let (_, locked, values) = commit_then_lose_the_leader("1*off->return", "2").await;
    assert!(locked, "the secondary's commit was held back: its lock is still there");
    assert_eq!(values, vec![Some(k("2")), Some(k("2"))]);
    scenario.teardown();
}

/// One follower's apply of a split is held while the leader splits the Region and writes
/// to both halves; released, it applies the split, creates the new Region's replica from
/// the entries it then receives, and ends up with the same data as the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_held_on_one_follower_is_caught_up_after() {
    let scenario = fail::FailScenario::setup();
    let cluster = Cluster::start(3).await;
    let raw = cluster.raw_client().await;
    let region = cluster.region_of(b"sm");
    let leader = cluster.wait_leader(region, Duration::from_secs(5)).await;
    let follower = (0..3).find(|&i| i != leader && Some(i) != cluster.meta_leader());
    let follower = follower.unwrap_or((leader + 1) % 3);
    let store = cluster.node(follower).store_id();
    for i in 0..20 {
        raw.put(format!("s{i:02}").into_bytes(), k("before")).await.unwrap();
    }

    let failpoint = format!("apply_split_{store}");
    fail::cfg(&failpoint, "pause").unwrap();
    cluster.node(leader).splitter().split_at(k("s10")).await.unwrap();
    let left = cluster.region_of(b"s00");
    let right = cluster.region_of(b"s15");
    assert_ne!(left, right, "split");
    for i in 0..20 {
        raw.put(format!("s{i:02}").into_bytes(), k("after")).await.unwrap();
    }
    // Stored raw values carry a trailing TTL flag byte.
    let value_of = |key: &[u8]| {
        let engine = &cluster.node(follower).engine();
        engine.get(scandium_storage::Cf::Raw, key).unwrap().unwrap_or_default()
    };
    assert!(value_of(b"s15").starts_with(b"before"), "the follower's apply is held");
    fail::cfg(&failpoint, "off").unwrap();

    let deadline = Instant::now() + Duration::from_secs(15);
    while !value_of(b"s15").starts_with(b"after") {
        assert!(Instant::now() < deadline, "the follower did not catch up: {}", cluster.describe());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(cluster.node(follower).registry().get(right).is_some(), "right half here");
    assert_replicas_agree(&cluster).await;
    cluster.shutdown().await;
    scenario.teardown();
}

/// A snapshot transfer to a lagging follower is cut off after its first chunk, as a
/// failed read of the sender's engine would cut it. The follower must refuse what it
/// received (a stream that stops looks like one that ended, so the sender marks the end),
/// and the next transfer catches it up with all the data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_cut_off_mid_transfer_is_refused_and_sent_again() {
    snapshot_fails_once_and_is_sent_again(
        "snap",
        &[("snapshot_cut_after_first_chunk", "1*return->off")],
    )
    .await;
}

/// A snapshot's sender stalls after its first chunk (starved of CPU or disk). The
/// receiver gives the transfer up once no chunk came for the stall bound (60 s; 300 ms
/// here), so that both sides' permits go to other transfers rather than wait out the
/// 600 s timeout, and the next transfer catches the follower up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_transfer_that_stalls_is_given_up_and_sent_again() {
    let failpoints =
        [("snapshot_stall_ms", "return(300)"), ("snapshot_sender_stalls", "1*sleep(2000)->off")];
    snapshot_fails_once_and_is_sent_again("stall", &failpoints).await;
}

/// A snapshot's sender sends each chunk in time but the whole transfer takes too long
/// (600 s; 300 ms here): the receiver gives it up, so that a trickle cannot hold one of
/// its few slots for ever, and the next transfer catches the follower up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_transfer_past_its_deadline_is_given_up_and_sent_again() {
    let failpoints = [
        ("snapshot_receive_deadline_ms", "return(300)"),
        // One stall makes a transfer of two chunks or more outlast the deadline.
        ("snapshot_sender_stalls", "2*sleep(400)->off"),
    ];
    snapshot_fails_once_and_is_sent_again("slow", &failpoints).await;
}

/// A follower falls behind past the log (over 2 MiB under keys starting `prefix`, so the
/// snapshot takes several 1 MiB chunks); `failpoints` spoil the first transfer to it.
/// That transfer must count as failed, and a later one catch the follower up.
async fn snapshot_fails_once_and_is_sent_again(prefix: &str, failpoints: &[(&str, &str)]) {
    let scenario = fail::FailScenario::setup();
    let cluster = Cluster::start_with(3, |c| c.raft_log_max_entries = 16).await;
    let raw = cluster.raw_client().await;
    let region = cluster.region_of(prefix.as_bytes());
    let leader = cluster.wait_leader(region, Duration::from_secs(5)).await;
    let lagging = (0..3).find(|&i| i != leader && Some(i) != cluster.meta_leader());
    let lagging = lagging.unwrap_or((leader + 1) % 3);
    let failed_before = cluster.snapshots_failed();
    cluster.isolate(lagging);
    for i in 0..40 {
        raw.put(format!("{prefix}{i:03}").into_bytes(), vec![i as u8; 64 << 10]).await.unwrap();
    }
    for (name, action) in failpoints {
        fail::cfg(*name, action).unwrap();
    }
    cluster.heal();

    let deadline = Instant::now() + Duration::from_secs(20);
    let engine = cluster.node(lagging).engine().clone();
    let last = format!("{prefix}039").into_bytes();
    while engine.get(scandium_storage::Cf::Raw, &last).unwrap().is_none() {
        assert!(Instant::now() < deadline, "the follower did not catch up: {}", cluster.describe());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(cluster.snapshots_failed() > failed_before, "the spoiled transfer counted as failed");
    assert_replicas_agree(&cluster).await;
    cluster.shutdown().await;
    scenario.teardown();
}
