//! Bad input gets a clear error and leaves the node serving: oversized keys, values,
//! batches and messages; scan limits over the maximum; inverted batch-scan and delete
//! ranges; unknown column families; keys without their API V2 prefix; malformed requests.
//! (Requests TiKV serves, such as zero limits and inverted scans, are in `compat.rs`.)

mod common;

use common::{context_for, pd_grpc, raw_client, start_node, tikv_grpc};
use scandium_protocol::kvrpcpb::{
    self, KeyRange, KvPair, RawBatchPutRequest, RawBatchScanRequest, RawDeleteRangeRequest,
    RawGetRequest, RawPutRequest, RawScanRequest,
};
use scandium_protocol::pdpb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors_and_the_node_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let mut tikv = tikv_grpc(&node).await;
    let context = Some(context_for(&node, b"k"));
    let put = |key: Vec<u8>, value: Vec<u8>| RawPutRequest {
        context: context.clone(),
        key,
        value,
        ..Default::default()
    };

    // Empty key (the storage engine cannot hold it).
    let resp = tikv.raw_put(put(Vec::new(), b"v".to_vec())).await.unwrap().into_inner();
    assert!(resp.error.contains("must not be empty"), "{resp:?}");

    // Key over 8 KiB.
    let resp =
        tikv.raw_put(put(vec![b'k'; 8 * 1024 + 1], b"v".to_vec())).await.unwrap().into_inner();
    assert!(resp.error.contains("key is too large"), "{resp:?}");
    // Reading one is no error: it cannot be stored, so it is not found (as in TiKV).
    let get = RawGetRequest { context: context.clone(), key: vec![b'k'; 9000], cf: String::new() };
    let resp = tikv.raw_get(get).await.unwrap().into_inner();
    assert!(resp.not_found && resp.error.is_empty() && resp.region_error.is_none(), "{resp:?}");

    // Value over the Raft entry limit (8 MiB) but under the gRPC limit (10 MiB).
    let resp = tikv.raw_put(put(b"k".to_vec(), vec![0; 9 << 20])).await.unwrap().into_inner();
    let too_large =
        resp.region_error.expect("region error").raft_entry_too_large.expect("entry too large");
    assert!(too_large.entry_size > 8 << 20);

    // A batch over the Raft entry limit.
    let pairs = (0..10u8)
        .map(|i| KvPair { key: vec![b'k', i], value: vec![0; 900 << 10], error: None })
        .collect();
    let request = RawBatchPutRequest { context: context.clone(), pairs, ..Default::default() };
    let resp = tikv.raw_batch_put(request).await.unwrap().into_inner();
    assert!(resp.region_error.unwrap().raft_entry_too_large.is_some());

    // A message over the gRPC limit.
    let status = tikv.raw_put(put(b"k".to_vec(), vec![0; 11 << 20])).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");

    // Limits over the maximum; inverted batch-scan and delete ranges (TiKV refuses both).
    let scan = |start: &[u8], end: &[u8], limit: u32| RawScanRequest {
        context: context.clone(),
        start_key: start.to_vec(),
        end_key: end.to_vec(),
        limit,
        ..Default::default()
    };
    let status = tikv.raw_scan(scan(b"k1", b"k9", 1_000_000)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("scan limit must be at most 10240"), "{status:?}");
    let request = RawBatchScanRequest {
        context: context.clone(),
        ranges: vec![KeyRange { start_key: b"k5".to_vec(), end_key: b"k2".to_vec() }],
        each_limit: 10,
        ..Default::default()
    };
    let status = tikv.raw_batch_scan(request).await.unwrap_err();
    assert!(status.message().contains("invalid range 0"), "{status:?}");
    let request = RawDeleteRangeRequest {
        context: context.clone(),
        start_key: b"k".to_vec(),
        end_key: b"k".to_vec(),
        cf: String::new(),
    };
    assert!(tikv
        .raw_delete_range(request)
        .await
        .unwrap()
        .into_inner()
        .error
        .contains("start key < end key"));

    // Unknown column family, TTL count mismatch, API V2 key without prefix, unknown API version.
    let mut request = put(b"k".to_vec(), b"v".to_vec());
    request.cf = "lock2".into();
    let resp = tikv.raw_put(request).await.unwrap().into_inner();
    assert!(resp.error.contains("column family \"lock2\" does not exist"), "{resp:?}");
    let pairs = vec![KvPair { key: b"k1".to_vec(), value: b"v".to_vec(), error: None }];
    let request = RawBatchPutRequest {
        context: context.clone(),
        pairs,
        ttls: vec![1, 2],
        ..Default::default()
    };
    let resp = tikv.raw_batch_put(request).await.unwrap().into_inner();
    assert!(resp.error.contains("2 TTLs given for 1 pairs"), "{resp:?}");
    let mut v2 = context.clone().unwrap();
    v2.api_version = kvrpcpb::ApiVersion::V2 as i32;
    let request = RawPutRequest {
        context: Some(v2.clone()),
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    };
    assert!(tikv.raw_put(request).await.unwrap().into_inner().error.contains("keyspace prefix"));
    v2.api_version = 7;
    let request = RawGetRequest { context: Some(v2), key: b"k".to_vec(), cf: String::new() };
    assert!(tikv
        .raw_get(request)
        .await
        .unwrap()
        .into_inner()
        .error
        .contains("unknown API version"));

    // A pessimistic prewrite with fewer actions than mutations (more are allowed: tikv-client
    // sends every Region's shard the whole list).
    let prewrite = |actions: Vec<i32>| kvrpcpb::PrewriteRequest {
        context: context.clone(),
        mutations: ["p1", "p2"]
            .map(|key| kvrpcpb::Mutation {
                op: kvrpcpb::Op::Put as i32,
                key: key.as_bytes().to_vec(),
                value: b"v".to_vec(),
                ..Default::default()
            })
            .to_vec(),
        primary_lock: b"p1".to_vec(),
        start_version: 10,
        for_update_ts: 10,
        lock_ttl: 1000,
        pessimistic_actions: actions,
        ..Default::default()
    };
    let skip = kvrpcpb::prewrite_request::PessimisticAction::SkipPessimisticCheck as i32;
    let resp = tikv.kv_prewrite(prewrite(vec![skip])).await.unwrap().into_inner();
    assert!(resp.errors[0].abort.contains("1 pessimistic actions for 2 mutations"), "{resp:?}");
    let resp = tikv.kv_prewrite(prewrite(vec![skip; 3])).await.unwrap().into_inner();
    assert!(resp.errors.is_empty() && resp.region_error.is_none(), "{resp:?}");
    // A lock naming an empty primary: readers that met it could not resolve it.
    let no_primary = kvrpcpb::PrewriteRequest {
        primary_lock: Vec::new(),
        start_version: 20,
        ..prewrite(vec![skip; 2])
    };
    let resp = tikv.kv_prewrite(no_primary).await.unwrap().into_inner();
    assert!(resp.errors[0].abort.contains("must not be empty"), "{resp:?}");
    // A version near the end of time would make every later write of its keys conflict.
    let far = kvrpcpb::PrewriteRequest { start_version: u64::MAX - 1, ..prewrite(vec![skip; 2]) };
    let resp = tikv.kv_prewrite(far).await.unwrap().into_inner();
    assert!(resp.errors[0].abort.contains("past this node's clock"), "{resp:?}");

    // Missing context.
    let request = RawGetRequest { context: None, key: b"k".to_vec(), cf: String::new() };
    assert!(tikv.raw_get(request).await.unwrap().into_inner().error.contains("no context"));

    // Unknown store and Region at the placement API: header errors, never a missing header.
    let mut pd = pd_grpc(&node).await;
    let resp = pd
        .get_store(pdpb::GetStoreRequest { header: None, store_id: 77 })
        .await
        .unwrap()
        .into_inner();
    assert!(resp.store.is_none());
    assert!(resp.header.unwrap().error.unwrap().message.contains("store 77"));
    let resp = pd
        .get_region_by_id(pdpb::GetRegionByIdRequest { region_id: 12345, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(resp.header.unwrap().error.is_some());
    let header = Some(pdpb::RequestHeader { cluster_id: 1, sender_id: 0 });
    let resp = pd
        .split_regions(pdpb::SplitRegionsRequest {
            header,
            split_keys: vec![b"x".to_vec()],
            retry_limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(resp.header.unwrap().error.unwrap().message.contains("cluster"));

    // Malformed protobuf: bytes that are no RawGetRequest.
    let status = malformed_call(&node).await;
    assert_ne!(status, 0, "garbage is refused with a gRPC error");

    // Still serving.
    let client = raw_client(&node, false).await;
    client.put(b"after".to_vec(), b"ok".to_vec()).await.unwrap();
    assert_eq!(client.get(b"after".to_vec()).await.unwrap(), Some(b"ok".to_vec()));
    node.stop().await;
}

/// Sends a gRPC frame whose body is not a valid message and returns the grpc-status code.
async fn malformed_call(node: &scandium_server::Node) -> i32 {
    use hyper::body::HttpBody as _;
    let garbage: &[u8] = &[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01];
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(garbage.len() as u32).to_be_bytes());
    frame.extend_from_slice(garbage);
    let client = hyper::Client::builder().http2_only(true).build_http::<hyper::Body>();
    let request =
        hyper::Request::post(format!("http://{}/tikvpb.Tikv/RawGet", node.advertise_addr()))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(hyper::Body::from(frame))
            .unwrap();
    let mut response = client.request(request).await.unwrap();
    let headers = response.headers().clone();
    while response.body_mut().data().await.is_some() {}
    let trailers = response.body_mut().trailers().await.unwrap().unwrap_or_default();
    let status =
        trailers.get("grpc-status").or_else(|| headers.get("grpc-status")).expect("grpc-status");
    status.to_str().unwrap().parse().unwrap()
}
