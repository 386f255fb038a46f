//! Replicated clusters of real nodes in one process: joining, replication, failover,
//! partitions, lagging replicas, membership changes, and transactions across leader
//! changes, through the real `tikv-client` with every node given as the PD endpoint.

mod harness;

use harness::Cluster;
use std::collections::HashMap;
use std::time::{Duration, Instant};

fn k(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

/// Every replica of every Region holds the same data (at the same applied index).
async fn assert_replicas_agree(cluster: &Cluster) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut by_region: HashMap<u64, Vec<(u64, Vec<u64>)>> = HashMap::new();
        for (_, node) in cluster.running() {
            for digest in node.context().region_digests().await.unwrap() {
                by_region
                    .entry(digest.region_id)
                    .or_default()
                    .push((digest.applied_index, digest.digests));
            }
        }
        let agree = by_region.values().all(|replicas| replicas.windows(2).all(|w| w[0] == w[1]));
        if agree {
            return;
        }
        assert!(Instant::now() < deadline, "replicas disagree: {by_region:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_join_and_replicate_every_region() {
    let cluster = Cluster::start(3).await;
    let raw = cluster.raw_client().await;
    for i in 0..50 {
        raw.put(format!("raw{i:03}").into_bytes(), vec![i as u8; 100]).await.unwrap();
    }
    let txns = cluster.txn_client().await;
    let mut txn = txns.begin_optimistic().await.unwrap();
    txn.put(k("txn-a"), k("1")).await.unwrap();
    txn.put(k("txn-b"), k("2")).await.unwrap();
    txn.commit().await.unwrap();
    assert_eq!(raw.get(k("raw007")).await.unwrap(), Some(vec![7; 100]));
    let mut snapshot = txns.snapshot(txns.current_timestamp().await.unwrap(), Default::default());
    assert_eq!(snapshot.get(k("txn-b")).await.unwrap(), Some(k("2")));
    assert_replicas_agree(&cluster).await;
    // Every node answers placement: the members, one leader, every store.
    for (i, _) in cluster.running() {
        let channel =
            tonic::transport::Channel::from_shared(format!("http://{}", cluster.addrs[i]))
                .unwrap()
                .connect()
                .await
                .unwrap();
        let mut pd = scandium_protocol::pdpb::pd_client::PdClient::new(channel);
        let request = scandium_protocol::pdpb::GetMembersRequest::default();
        let members = pd.get_members(request).await.unwrap().into_inner();
        assert_eq!(members.members.len(), 3, "node {i}");
        let leader = members.leader.expect("a leader").member_id;
        assert_eq!(Some(leader), cluster.meta_leader().map(|j| cluster.node(j).context().store_id));
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_resume_after_the_leader_dies_and_nothing_acknowledged_is_lost() {
    let mut cluster = Cluster::start(3).await;
    let raw = cluster.raw_client().await;
    let region = cluster.region_of(b"k");
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let key = format!("k{i:03}").into_bytes();
        raw.put(key.clone(), k("v")).await.unwrap();
        acknowledged.push(key);
    }
    let leader = cluster.wait_leader(region, Duration::from_secs(5)).await;
    // tikv-client 0.4 reconnects to PD at most once a second; a PD leader lost within a
    // second of connecting burns all its retries at once. Clients live longer than that.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    cluster.stop(leader).await;
    let killed = Instant::now();
    // Writes go on through the client's own retries.
    let key = k("after-failover");
    raw.put(key.clone(), k("v")).await.expect("the client's retries cover the failover");
    let resumed = killed.elapsed();
    assert!(resumed < Duration::from_secs(5), "writes resumed after {resumed:?}");
    for key in &acknowledged {
        assert_eq!(raw.get(key.clone()).await.unwrap(), Some(k("v")));
    }
    cluster.restart(leader).await;
    cluster.wait_replicated(3, Duration::from_secs(30)).await;
    assert_replicas_agree(&cluster).await;
    cluster.shutdown().await;
}

/// A leader cut off from the others serves nothing once the others can have moved on: no
/// stale read, no acknowledged write; the majority elects a leader and goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_serves_nothing_while_the_majority_goes_on() {
    use scandium_raftstore::META_GROUP_ID;
    let cluster = Cluster::start(3).await;
    let region = cluster.region_of(b"k");
    let old = cluster.wait_leader(region, Duration::from_secs(5)).await;
    // The client's placement connection is on the majority side: tikv-client 0.4 moves it
    // only when a placement call fails, and a cut-off node keeps answering lookups from
    // what it knows (failing them would let the client report unsent commits as done).
    let other = (0..3).find(|&i| i != old).unwrap();
    cluster.transfer_leader(META_GROUP_ID, other).await;
    let raw = cluster.raw_client().await;
    raw.put(k("k"), k("v1")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    cluster.isolate(old);
    if let Err(e) = raw.put(k("k"), k("v2")).await {
        panic!("the majority takes the write: {e:?}\n{}", cluster.describe());
    }
    let new = cluster.wait_leader(region, Duration::from_secs(5)).await;
    assert_ne!(new, old);
    // Asked directly, the isolated node answers neither the old value nor a write.
    let mut isolated = cluster.tikv(old).await;
    let read = scandium_protocol::kvrpcpb::RawGetRequest {
        context: Some(cluster.context(old, region)),
        key: k("k"),
        ..Default::default()
    };
    let resp = isolated.raw_get(read.clone()).await.unwrap().into_inner();
    assert!(resp.region_error.is_some(), "an isolated node must not answer reads: {resp:?}");
    let write = scandium_protocol::kvrpcpb::RawPutRequest {
        context: Some(cluster.context(old, region)),
        key: k("k"),
        value: k("lost"),
        ..Default::default()
    };
    let resp = isolated.raw_put(write).await.unwrap().into_inner();
    assert!(resp.region_error.is_some(), "nor acknowledge writes: {resp:?}");
    cluster.heal();
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster
        .node(old)
        .context()
        .engine
        .get(scandium_storage::Cf::Raw, b"k")
        .unwrap()
        .is_none_or(|v| !v.starts_with(b"v2"))
    {
        assert!(Instant::now() < deadline, "the old leader did not catch up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(raw.get(k("k")).await.unwrap(), Some(k("v2")));
    assert_replicas_agree(&cluster).await;
    cluster.shutdown().await;
}

/// TinyKV 2C: a follower that missed more than the leader keeps in its log is caught up
/// by a snapshot, and ends up with the same data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_follower_is_caught_up_by_snapshot() {
    let cluster = Cluster::start_with(3, |c| c.raft_log_max_entries = 32).await;
    let raw = cluster.raw_client().await;
    let region = cluster.region_of(b"lag");
    let leader = cluster.wait_leader(region, Duration::from_secs(5)).await;
    let lagging = (0..3)
        .find(|&i| i != leader && Some(i) != cluster.meta_leader())
        .unwrap_or((leader + 1) % 3);
    let sent_before = cluster.snapshots_sent();
    cluster.isolate(lagging);
    for i in 0..100 {
        raw.put(format!("lag{i:03}").into_bytes(), vec![i as u8; 64]).await.unwrap();
    }
    cluster.heal();
    let deadline = Instant::now() + Duration::from_secs(15);
    while cluster
        .node(lagging)
        .context()
        .engine
        .get(scandium_storage::Cf::Raw, b"lag099")
        .unwrap()
        .is_none()
    {
        assert!(Instant::now() < deadline, "the follower did not catch up: {}", cluster.describe());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(cluster.snapshots_sent() > sent_before, "caught up by a snapshot, not the log");
    assert_replicas_agree(&cluster).await;
    cluster.shutdown().await;
}

/// Timestamps strictly increase across kills of the placement leader, and are served
/// again soon after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamps_increase_across_placement_leader_kills() {
    let mut cluster = Cluster::start(3).await;
    let mut last = 0u64;
    for _ in 0..2 {
        let leader = cluster.meta_leader().unwrap();
        let survivor = (0..3).find(|&i| i != leader && cluster.nodes[i].is_some()).unwrap();
        let placement = cluster.node(survivor).context().placement.clone();
        let ts = placement.timestamp(10).await.unwrap().0;
        assert!(ts > last);
        last = ts;
        cluster.stop(leader).await;
        let killed = Instant::now();
        let ts = loop {
            match placement.timestamp(1).await {
                Ok(ts) => break ts.0,
                Err(_) => assert!(killed.elapsed() < Duration::from_secs(10), "no timestamps"),
            }
        };
        assert!(ts > last, "{ts} after {last}: time went back across the failover");
        last = ts;
        cluster.restart(leader).await;
        cluster.wait_replicated(3, Duration::from_secs(30)).await;
    }
    cluster.shutdown().await;
}
