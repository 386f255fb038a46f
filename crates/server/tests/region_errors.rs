//! Requests are checked against the Region they name: unknown Region, stale epoch, key
//! outside the Region, wrong store, and a follower-less node's readiness.

mod common;

use common::{context_for, start_node, tikv_grpc};
use scandium_protocol::kvrpcpb::{RawGetRequest, RawPutRequest, RawScanRequest};
use scandium_protocol::metapb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn region_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let mut tikv = tikv_grpc(&node).await;
    let good = context_for(&node, b"k");

    // Unknown Region.
    let context = Some(scandium_protocol::kvrpcpb::Context { region_id: 999_999, ..good.clone() });
    let resp = tikv
        .raw_get(RawGetRequest { context, key: b"k".to_vec(), cf: String::new() })
        .await
        .unwrap()
        .into_inner();
    let error = resp.region_error.expect("region error");
    assert_eq!(error.region_not_found.unwrap().region_id, 999_999);

    // Stale epoch: the current Region comes back so the client can refresh its cache.
    let mut context = good.clone();
    context.region_epoch = Some(metapb::RegionEpoch { conf_ver: 1, version: 0 });
    let resp = tikv
        .raw_put(RawPutRequest {
            context: Some(context),
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let current = resp
        .region_error
        .expect("region error")
        .epoch_not_match
        .expect("epoch not match")
        .current_regions;
    assert_eq!(current.len(), 1);
    assert_eq!(current[0].id, good.region_id);
    assert!(current[0].region_epoch.is_some(), "clients unwrap the epoch");

    // Missing epoch is stale too.
    let context = Some(scandium_protocol::kvrpcpb::Context { region_epoch: None, ..good.clone() });
    let resp = tikv
        .raw_get(RawGetRequest { context, key: b"k".to_vec(), cf: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert!(resp.region_error.unwrap().epoch_not_match.is_some());

    // Key outside the Region ("k" lives in the first Region, "zzz" in the last).
    let resp = tikv
        .raw_get(RawGetRequest {
            context: Some(good.clone()),
            key: b"zzz".to_vec(),
            cf: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let not_in =
        resp.region_error.expect("region error").key_not_in_region.expect("key not in region");
    assert_eq!(not_in.key, b"zzz");
    assert_eq!(not_in.region_id, good.region_id);

    // A scan starting outside the Region.
    let request = RawScanRequest {
        context: Some(good.clone()),
        start_key: b"zzz".to_vec(),
        limit: 10,
        ..Default::default()
    };
    let resp = tikv.raw_scan(request).await.unwrap().into_inner();
    assert!(resp.region_error.unwrap().key_not_in_region.is_some());

    // A peer on another store.
    let mut context = good.clone();
    context.peer = Some(metapb::Peer { id: 1, store_id: 42, ..Default::default() });
    let resp = tikv
        .raw_get(RawGetRequest { context: Some(context), key: b"k".to_vec(), cf: String::new() })
        .await
        .unwrap()
        .into_inner();
    let mismatch = resp.region_error.unwrap().store_not_match.unwrap();
    assert_eq!((mismatch.request_store_id, mismatch.actual_store_id), (42, 1));

    // The right request still works.
    let resp = tikv
        .raw_put(RawPutRequest {
            context: Some(good.clone()),
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(resp.region_error.is_none() && resp.error.is_empty(), "{resp:?}");
    node.stop().await;
}
