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
