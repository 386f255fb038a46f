//! Hibernating Regions on real nodes: an idle Region sleeps on every replica, and each
//! trigger wakes it: a write, a read past the lease, a node holding a replica going
//! silent, and that node coming back as a new incarnation. Each time it sleeps again.

use crate::harness::Cluster;
use crate::k;
use std::time::Duration;
use tokio::time::Instant;

/// Waits until `condition` holds, for at most `seconds`.
async fn wait(what: &str, seconds: u64, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether Region `id` hibernates on every running node that has a replica of it, as
/// each node last published it.
fn asleep(cluster: &Cluster, id: u64) -> bool {
    cluster.running().all(|(_, n)| n.registry().get(id).is_none_or(|s| s.hibernating))
}

/// Whether node `i`'s replica of Region `id` is awake, as last published.
fn awake_on(cluster: &Cluster, i: usize, id: u64) -> bool {
    cluster.node(i).registry().get(id).is_some_and(|s| !s.hibernating)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hibernating_region_is_woken_by_each_trigger_and_sleeps_again() {
    let mut cluster = Cluster::start(3).await;
    let client = cluster.raw_client().await;
    client.put(k("hk"), k("v0")).await.expect("first write");
    let id = cluster.region_of(&k("hk"));
    wait("the Region asleep everywhere", 10, || asleep(&cluster, id)).await;
    let leader = cluster.wait_leader(id, Duration::from_secs(5)).await;

    // A write: it wakes the Region and commits.
    client.put(k("hk"), k("v1")).await.expect("a write to a sleeping Region");
    wait("the leader awake after a write", 2, || awake_on(&cluster, leader, id)).await;
    wait("asleep again after the write", 10, || asleep(&cluster, id)).await;

    // A read: a sleeping leader holds no lease, so it takes a ReadIndex round, which
    // wakes the Region.
    let status = cluster.node(leader).registry().get(id).unwrap();
    assert!(status.lease_until_ms == 0 || status.hibernating, "{status:?}");
    assert_eq!(client.get(k("hk")).await.expect("a read"), Some(k("v1")));
    wait("the leader awake after a read", 2, || awake_on(&cluster, leader, id)).await;
    wait("asleep again after the read", 10, || asleep(&cluster, id)).await;

    // A node with a replica stops: its silence wakes the Region, which sleeps again
    // without it, and takes writes meanwhile.
    let follower = (0..3).find(|&i| i != leader).unwrap();
    cluster.stop(follower).await;
    wait("the leader awake once the node is silent", 3, || awake_on(&cluster, leader, id)).await;
    wait("asleep again without the stopped node", 10, || asleep(&cluster, id)).await;
    client.put(k("hk"), k("v2")).await.expect("a write with a node down");
    wait("asleep again after that write", 10, || asleep(&cluster, id)).await;

    // It comes back: a new incarnation wakes the Region, which catches it up.
    cluster.restart(follower).await;
    wait("the Region awake for the returning node", 3, || awake_on(&cluster, leader, id)).await;
    wait("asleep on all three again", 15, || {
        asleep(&cluster, id) && cluster.node(follower).registry().get(id).is_some()
    })
    .await;
    assert_eq!(client.get(k("hk")).await.expect("a read"), Some(k("v2")));
    crate::harness::assert_replicas_agree(&cluster).await;
    cluster.shutdown().await;
}
