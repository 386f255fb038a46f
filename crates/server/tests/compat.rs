//! Requests TiKV serves that Scandium once refused, found by running clients nobody here
//! wrote (tikv-client's own integration tests, the Python clients): zero scan limits,
//! inverted scan ranges, one TTL for a whole batch, transactional scans over 10240 keys,
//! the raw `lock` and `write` column families of API V1, lock scans without a limit, reads
//! of keys too long to be stored. Each is sent the way a client sends it: through
//! `tikv-client` where it can, through the generated gRPC client where it cannot, in API V1
//! and V2.

mod common;

use common::{context_for, pd_grpc, raw_client, start_node, start_with, tikv_grpc, txn_client};
use scandium_protocol::kvrpcpb::{self, KeyRange, KvPair};
use scandium_protocol::pdpb;
use scandium_server::Node;
use tikv_client::ColumnFamily;

/// The key a client of API `v2` stores for `key` (V2 adds the DEFAULT keyspace's prefix).
fn stored(mode: u8, v2: bool, key: &[u8]) -> Vec<u8> {
    if v2 {
        [&[mode, 0, 0, 0][..], key].concat()
    } else {
        key.to_vec()
    }
}

/// The context of the Region holding `key`, in the API version of the test.
fn context(node: &Node, key: &[u8], v2: bool) -> Option<kvrpcpb::Context> {
    let mut context = context_for(node, key);
    if v2 {
        context.api_version = kvrpcpb::ApiVersion::V2 as i32;
    }
    Some(context)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_limits_and_inverted_ranges_find_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let mut tikv = tikv_grpc(&node).await;
    for v2 in [false, true] {
        let client = raw_client(&node, v2).await;
        let pairs: Vec<(Vec<u8>, Vec<u8>)> =
            (0..5).map(|i| (format!("z{i}").into_bytes(), b"v".to_vec())).collect();
        client.batch_put(pairs).await.unwrap();
        // As tikv-client's `raw_write_million` test asks.
        assert!(client.scan(b"z".to_vec().., 0).await.unwrap().is_empty());
        let ranges = vec![b"z0".to_vec()..b"z3".to_vec(), b"z3".to_vec()..b"z9".to_vec()];
        assert!(client.batch_scan(ranges.clone(), 0).await.unwrap().is_empty(), "v2 {v2}");
        assert_eq!(client.batch_scan(ranges, 2).await.unwrap().len(), 4, "v2 {v2}");

        let key = |k: &str| stored(b'r', v2, k.as_bytes());
        let context = context(&node, &key("z0"), v2);
        let scan =
            |start: Vec<u8>, end: Vec<u8>, limit: u32, reverse: bool| kvrpcpb::RawScanRequest {
                context: context.clone(),
                start_key: start,
                end_key: end,
                limit,
                reverse,
                ..Default::default()
            };
        for (what, request) in [
            ("limit 0", scan(key("z0"), key("z9"), 0, false)),
            ("inverted", scan(key("z4"), key("z1"), 10, false)),
            ("inverted reverse", scan(key("z1"), key("z4"), 10, true)),
        ] {
            let resp = tikv.raw_scan(request).await.unwrap().into_inner();
            assert!(resp.kvs.is_empty() && resp.region_error.is_none(), "{what}: {resp:?}");
        }
        let resp = tikv.raw_scan(scan(key("z0"), key("z9"), 3, false)).await.unwrap().into_inner();
        assert_eq!(resp.kvs.len(), 3, "the scan itself works");

        let resp = tikv
            .raw_batch_scan(kvrpcpb::RawBatchScanRequest {
                context: context.clone(),
                ranges: vec![KeyRange { start_key: key("z0"), end_key: key("z9") }],
                each_limit: 0,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(resp.kvs.is_empty() && resp.region_error.is_none(), "{resp:?}");

        let txn_context = self::context(&node, &stored(b'x', v2, b"z0"), v2);
        let resp = tikv
            .kv_scan(kvrpcpb::ScanRequest {
                context: txn_context,
                start_key: stored(b'x', v2, b"z0"),
                end_key: stored(b'x', v2, b"z9"),
                limit: 0,
                // Now (a timestamp far past the node's clock is refused).
                version: scandium_types::TimeStamp::compose(now_ms(), 0).0,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(resp.pairs.is_empty() && resp.error.is_none(), "{resp:?}");
    }
    node.stop().await;
}

/// A batch range with an empty end key ends where the next range starts, as in TiKV.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_scan_ranges_without_an_end_stop_at_the_next_range() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let client = raw_client(&node, false).await;
    let pairs: Vec<(Vec<u8>, Vec<u8>)> =
        ["a", "b", "c", "d", "e"].iter().map(|k| (k.as_bytes().to_vec(), b"v".to_vec())).collect();
    client.batch_put(pairs).await.unwrap();
    let mut tikv = tikv_grpc(&node).await;
    let resp = tikv
        .raw_batch_scan(kvrpcpb::RawBatchScanRequest {
            context: Some(context_for(&node, b"a")),
            ranges: vec![
                KeyRange { start_key: b"a".to_vec(), end_key: Vec::new() },
                KeyRange { start_key: b"d".to_vec(), end_key: Vec::new() },
            ],
            each_limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let keys: Vec<&[u8]> = resp.kvs.iter().map(|p| p.key.as_slice()).collect();
    assert_eq!(keys, [&b"a"[..], b"b", b"c", b"d", b"e"], "no key twice");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_ttl_applies_to_the_whole_batch() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let mut tikv = tikv_grpc(&node).await;
    for v2 in [false, true] {
        let key = |k: &str| stored(b'r', v2, k.as_bytes());
        let request = |ttls: Vec<u64>| kvrpcpb::RawBatchPutRequest {
            context: context(&node, &key("t1"), v2),
            pairs: ["t1", "t2", "t3"]
                .iter()
                .map(|k| KvPair { key: key(k), value: b"v".to_vec(), error: None })
                .collect(),
            ttls,
            ..Default::default()
        };
        // As the Python clients send it: one TTL for every pair.
        let resp = tikv.raw_batch_put(request(vec![300])).await.unwrap().into_inner();
        assert!(resp.error.is_empty() && resp.region_error.is_none(), "{resp:?}");
        let client = raw_client(&node, v2).await;
        for k in ["t1", "t2", "t3"] {
            let ttl = client.get_key_ttl_secs(k.as_bytes().to_vec()).await.unwrap();
            assert!(ttl.is_some_and(|t| (299..=300).contains(&t)), "{k}: {ttl:?}");
        }
        // One per pair, as tikv-client sends it.
        let resp = tikv.raw_batch_put(request(vec![0, 50, 600])).await.unwrap().into_inner();
        assert!(resp.error.is_empty(), "{resp:?}");
        assert_eq!(client.get_key_ttl_secs(b"t1".to_vec()).await.unwrap(), Some(0));
        let ttl = client.get_key_ttl_secs(b"t3".to_vec()).await.unwrap().unwrap();
        assert!((599..=600).contains(&ttl), "{ttl}");
        // Any other count is refused, and nothing is written.
        let resp = tikv.raw_batch_put(request(vec![7, 7])).await.unwrap().into_inner();
        assert!(resp.error.contains("2 TTLs given for 3 pairs"), "{resp:?}");
        assert_eq!(client.get_key_ttl_secs(b"t1".to_vec()).await.unwrap(), Some(0));
    }
    node.stop().await;
}

/// tikv-client 0.4 does not cap transactional scans (it adds the keys deleted in its
/// buffer to the user's limit), so any limit is served; the answer's size is what is
/// bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_scans_take_any_limit_and_refuse_oversized_answers() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_with(dir.path(), |c| c.max_response_bytes = 64 << 10).await;
    for v2 in [false, true] {
        let client = txn_client(&node, v2).await;
        let mut txn = client.begin_optimistic().await.unwrap();
        for i in 0..200u32 {
            txn.put(format!("s{i:04}").into_bytes(), vec![b'v'; 500]).await.unwrap();
        }
        txn.commit().await.unwrap();
        let mut snapshot =
            client.snapshot(client.current_timestamp().await.unwrap(), Default::default());
        let keys: Vec<_> = snapshot
            .scan_keys(b"s0000".to_vec()..b"s0100".to_vec(), 20_000)
            .await
            .unwrap()
            .collect();
        assert_eq!(keys.len(), 100, "v2 {v2}");
        let keys: Vec<_> =
            snapshot.scan_keys(b"s".to_vec()..b"t".to_vec(), u32::MAX).await.unwrap().collect();
        assert_eq!(keys.len(), 200, "keys only: 200 keys fit in 64 KiB");
        // 200 values of 500 bytes do not.
        let Err(error) = snapshot.scan(b"s".to_vec()..b"t".to_vec(), u32::MAX).await else {
            panic!("a 100 KB answer does not fit in 64 KiB");
        };
        assert!(format!("{error:?}").contains("would exceed 65536 bytes"), "{error:?}");
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_v1_raw_column_families_are_separate_namespaces() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let default = raw_client(&node, false).await;
    let lock = default.with_cf(ColumnFamily::Lock);
    let write = default.with_cf(ColumnFamily::Write);
    default.put(b"k".to_vec(), b"in default".to_vec()).await.unwrap();
    lock.put(b"k".to_vec(), b"in lock".to_vec()).await.unwrap();
    write.batch_put(vec![(b"k".to_vec(), b"in write".to_vec())]).await.unwrap();
    assert_eq!(default.get(b"k".to_vec()).await.unwrap(), Some(b"in default".to_vec()));
    assert_eq!(lock.get(b"k".to_vec()).await.unwrap(), Some(b"in lock".to_vec()));
    assert_eq!(write.get(b"k".to_vec()).await.unwrap(), Some(b"in write".to_vec()));
    assert_eq!(lock.scan(b"".to_vec().., 10).await.unwrap().len(), 1);
    lock.delete_range(b"a".to_vec()..b"z".to_vec()).await.unwrap();
    assert_eq!(lock.get(b"k".to_vec()).await.unwrap(), None);
    assert_eq!(write.get(b"k".to_vec()).await.unwrap(), Some(b"in write".to_vec()));
    assert_eq!(default.get(b"k".to_vec()).await.unwrap(), Some(b"in default".to_vec()));
    lock.put_with_ttl(b"t".to_vec(), b"v".to_vec(), 100).await.unwrap();
    assert!(lock.get_key_ttl_secs(b"t".to_vec()).await.unwrap().is_some_and(|t| t > 90));

    // API V2 has only the default column family (TiKV refuses any other).
    let mut tikv = tikv_grpc(&node).await;
    let resp = tikv
        .raw_put(kvrpcpb::RawPutRequest {
            context: context(&node, b"r\0\0\0k", true),
            key: b"r\0\0\0k".to_vec(),
            value: b"v".to_vec(),
            cf: "lock".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(resp.error.contains("not available in API V2"), "{resp:?}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_of_keys_too_long_to_store_find_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let mut tikv = tikv_grpc(&node).await;
    for v2 in [false, true] {
        let long = |mode| stored(mode, v2, &[b'k'; 9000]);
        let resp = tikv
            .raw_get(kvrpcpb::RawGetRequest {
                context: context(&node, &long(b'r'), v2),
                key: long(b'r'),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(resp.not_found && resp.error.is_empty(), "{resp:?}");
        let resp = tikv
            .kv_get(kvrpcpb::GetRequest {
                context: context(&node, &long(b'x'), v2),
                key: long(b'x'),
                version: 10,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(resp.not_found && resp.error.is_none(), "{resp:?}");
        let resp = tikv
            .kv_batch_get(kvrpcpb::BatchGetRequest {
                context: context(&node, &long(b'x'), v2),
                keys: vec![long(b'x'), stored(b'x', v2, b"short")],
                version: 10,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(resp.pairs.is_empty() && resp.error.is_none(), "{resp:?}");
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_scans_without_a_limit_return_every_lock() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let mut tikv = tikv_grpc(&node).await;
    let keys: Vec<Vec<u8>> = (0..12_000u32).map(|i| format!("l{i:05}").into_bytes()).collect();
    for chunk in keys.chunks(2000) {
        let resp = tikv
            .kv_prewrite(kvrpcpb::PrewriteRequest {
                context: Some(context_for(&node, b"l")),
                mutations: chunk
                    .iter()
                    .map(|key| kvrpcpb::Mutation {
                        op: kvrpcpb::Op::Lock as i32,
                        key: key.clone(),
                        ..Default::default()
                    })
                    .collect(),
                primary_lock: keys[0].clone(),
                start_version: 100,
                lock_ttl: 60_000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(resp.errors.is_empty() && resp.region_error.is_none(), "{resp:?}");
    }
    let scan = |limit| kvrpcpb::ScanLockRequest {
        context: Some(context_for(&node, b"l")),
        max_version: 100,
        start_key: b"l".to_vec(),
        end_key: b"m".to_vec(),
        limit,
    };
    let resp = tikv.kv_scan_lock(scan(0)).await.unwrap().into_inner();
    assert_eq!(resp.locks.len(), 12_000, "more than the old silent cap of 10240");
    assert_eq!(tikv.kv_scan_lock(scan(5)).await.unwrap().into_inner().locks.len(), 5);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_range_and_timestamp_edge_cases() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let mut tikv = tikv_grpc(&node).await;
    let destroy = |start: &[u8], end: &[u8]| kvrpcpb::UnsafeDestroyRangeRequest {
        context: None,
        start_key: start.to_vec(),
        end_key: end.to_vec(),
    };
    // TiKV crashes on an empty key; here it is a clear error.
    let resp = tikv.unsafe_destroy_range(destroy(b"a", b"")).await.unwrap().into_inner();
    assert!(resp.error.contains("both a start and an end key"), "{resp:?}");
    // An inverted range deletes nothing, as in TiKV.
    let resp = tikv.unsafe_destroy_range(destroy(b"m", b"a")).await.unwrap().into_inner();
    assert!(resp.error.is_empty() && resp.region_error.is_none(), "{resp:?}");

    // A timestamp request for zero timestamps will fail the same way again: not Unavailable.
    let mut pd = pd_grpc(&node).await;
    let request = pdpb::TsoRequest { header: None, count: 0, dc_location: String::new() };
    let mut stream = pd.tso(tokio_stream::iter(vec![request])).await.unwrap().into_inner();
    let status = stream.message().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    node.stop().await;
}

/// The wall clock in milliseconds, as a timestamp's physical part.
fn now_ms() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since.unwrap().as_millis() as u64
}
