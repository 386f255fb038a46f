//! Regions split on demand, and clients with cached Regions keep working across splits.

mod common;

use common::{pd_grpc, raw_client, start_node, tikv_grpc, wait_for};
use scandium_protocol::{kvrpcpb, pdpb};
use scandium_storage::Cf;
use std::time::Duration;

fn key(i: u32) -> Vec<u8> {
    format!("key{i:04}").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_keep_working_across_splits() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    for v2 in [false, true] {
        let client = raw_client(&node, v2).await;
        let pairs: Vec<_> = (0..100).map(|i| (key(i), b"v".to_vec())).collect();
        client.batch_put(pairs).await.unwrap();
        assert_eq!(client.scan(key(0)..key(100), 1000).await.unwrap().len(), 100);

        // Split inside the range the client has cached, twice.
        let prefix: &[u8] = if v2 { b"r\0\0\0" } else { b"" };
        for split_at in [key(50), key(25)] {
            let mut wire = prefix.to_vec();
            wire.extend_from_slice(&split_at);
            node.splitter().split_at(wire).await.unwrap();
        }
        // Old cached Regions now answer EpochNotMatch; the client refreshes and carries on.
        assert_eq!(client.get(key(75)).await.unwrap(), Some(b"v".to_vec()));
        client.put(key(10), b"w".to_vec()).await.unwrap();
        assert_eq!(client.get(key(10)).await.unwrap(), Some(b"w".to_vec()));
        let batch = client.batch_get((0..100).map(key).collect::<Vec<_>>()).await.unwrap();
        assert_eq!(batch.len(), 100);
        if v2 {
            // V2 boundaries are exact for the client, so scans cross Regions correctly.
            assert_eq!(client.scan(key(0)..key(100), 1000).await.unwrap().len(), 100);
            assert_eq!(client.scan(.., 1000).await.unwrap().len(), 100);
        }
        client.delete_range(key(0)..key(100)).await.unwrap();
        assert!(client.batch_get((0..100).map(key).collect::<Vec<_>>()).await.unwrap().is_empty());
    }
    assert_eq!(node.registry().all().len(), 9, "5 initial Regions, 4 splits");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_through_the_placement_and_storage_apis() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let mut pd = pd_grpc(&node).await;
    let before = node.registry().find_by_key(b"m").unwrap().region;
    let resp = pd
        .split_regions(pdpb::SplitRegionsRequest {
            split_keys: vec![b"m".to_vec()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(resp.header.unwrap().error.is_none());
    assert_eq!(resp.finished_percentage, 100);
    let right = node.registry().find_by_key(b"m").unwrap().region;
    assert_eq!(resp.regions_id, vec![right.id]);
    assert_eq!(right.start_key, b"m");
    let left = node.registry().get(before.id).unwrap().region;
    assert_eq!((left.end_key.as_slice(), left.version), (&b"m"[..], before.version + 1));
    assert_eq!(
        node.placement().read().region_by_key(b"m").unwrap().id,
        right.id,
        "placement knows"
    );

    // Splitting at an existing boundary changes nothing.
    let resp = pd.split_regions(pdpb::SplitRegionsRequest {
        split_keys: vec![b"m".to_vec()],
        ..Default::default()
    });
    assert_eq!(resp.await.unwrap().into_inner().regions_id, vec![right.id]);

    let mut tikv = tikv_grpc(&node).await;
    let request = kvrpcpb::SplitRegionRequest {
        split_keys: vec![b"g".to_vec(), b"p".to_vec()],
        ..Default::default()
    };
    let resp = tikv.split_region(request).await.unwrap().into_inner();
    assert_eq!(resp.regions.len(), 2);

    // Many keys in one request, up to a limit; past it, a clear refusal and no split.
    // The keys one Region holds are cut in one Raft command (every piece's version is the
    // parent's plus the number of new Regions), at most `MAX_CUTS_PER_COMMAND` at a time.
    let per_command = scandium_server::split::MAX_CUTS_PER_COMMAND;
    let keys: Vec<Vec<u8>> =
        (0..per_command + 20).map(|i| format!("t{i:05}").into_bytes()).collect();
    let parent = node.registry().find_by_key(&keys[0]).unwrap().region;
    let before = node.registry().all().len();
    let resp = pd.split_regions(pdpb::SplitRegionsRequest {
        split_keys: keys.clone(),
        ..Default::default()
    });
    let resp = resp.await.unwrap().into_inner();
    assert_eq!(resp.regions_id.len(), keys.len(), "{:?}", resp.header);
    assert_eq!(node.registry().all().len(), before + keys.len());
    for (i, key) in keys.iter().enumerate() {
        let region = node.registry().find_by_key(key).unwrap().region;
        assert_eq!(&region.start_key, key);
        let cut_by = if i < per_command - 1 { per_command } else { per_command + 20 };
        assert_eq!(region.version, parent.version + cut_by as u64, "{key:?}");
    }
    let led = {
        let placement = node.placement().read();
        let regions = keys.iter().filter_map(|k| placement.region_by_key(k));
        regions.filter(|r| placement.leader_of(r.id).is_some()).count()
    };
    assert_eq!(led, keys.len(), "placement names every new Region's leader");
    let too_many = scandium_server::split::MAX_SPLIT_KEYS + 1;
    let before = node.registry().all().len();
    let resp = pd.split_regions(pdpb::SplitRegionsRequest {
        split_keys: (0..too_many).map(|i| format!("u{i:06}").into_bytes()).collect(),
        ..Default::default()
    });
    let error = resp.await.unwrap().into_inner().header.unwrap().error.unwrap();
    assert!(error.message.contains("at most"), "{error:?}");
    assert_eq!(node.registry().all().len(), before, "nothing split");

    // Splits survive a restart.
    let regions = node.registry().all().len();
    node.stop().await;
    let node = start_node(dir.path()).await;
    assert_eq!(node.registry().all().len(), regions);
    assert_eq!(node.placement().read().regions().count(), regions);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_values_are_removed_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::start_with(dir.path(), |c| c.ttl_sweep_interval_secs = 1).await;
    let client = raw_client(&node, false).await;
    client.put_with_ttl(b"short".to_vec(), b"v".to_vec(), 1).await.unwrap();
    client.put(b"long".to_vec(), b"v".to_vec()).await.unwrap();
    let engine = node.engine().clone();
    assert!(engine.get(Cf::Raw, b"short").unwrap().is_some());
    wait_for("the sweeper to delete the expired value", Duration::from_secs(10), || {
        engine.get(Cf::Raw, b"short").unwrap().is_none()
    })
    .await;
    assert_eq!(client.get(b"long".to_vec()).await.unwrap(), Some(b"v".to_vec()));
    node.stop().await;
}
