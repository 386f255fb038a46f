//! The whole raw API through the real `tikv-client` 0.4 against an in-process node, in API
//! V1 and V2.

mod common;

use common::{raw_client, start_node};
use tikv_client::{BoundRange, Key, KvPair, RawClient};

fn k(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn keys(pairs: &[KvPair]) -> Vec<Vec<u8>> {
    pairs.iter().map(|p| Vec::<u8>::from(p.0.clone())).collect()
}

async fn exercise(client: &RawClient) {
    // Point operations.
    assert_eq!(client.get(k("missing")).await.unwrap(), None);
    client.put(k("k1"), k("v1")).await.unwrap();
    assert_eq!(client.get(k("k1")).await.unwrap(), Some(k("v1")));
    client.put(k("k1"), k("v1b")).await.unwrap();
    assert_eq!(client.get(k("k1")).await.unwrap(), Some(k("v1b")));
    client.delete(k("k1")).await.unwrap();
    assert_eq!(client.get(k("k1")).await.unwrap(), None);

    // Batches: missing keys are omitted.
    let pairs: Vec<(Vec<u8>, Vec<u8>)> =
        (0..20).map(|i| (k(&format!("b{i:02}")), k(&format!("v{i}")))).collect();
    client.batch_put(pairs.clone()).await.unwrap();
    let got = client.batch_get(vec![k("b03"), k("nope"), k("b07")]).await.unwrap();
    let mut got_keys = keys(&got);
    got_keys.sort();
    assert_eq!(got_keys, vec![k("b03"), k("b07")]);
    client.batch_delete(vec![k("b00"), k("b01")]).await.unwrap();
    assert_eq!(client.get(k("b00")).await.unwrap(), None);

    // Scans: forward, limit, keys only, reverse.
    let all = client.scan(k("b")..k("c"), 100).await.unwrap();
    assert_eq!(all.len(), 18);
    assert_eq!(Vec::<u8>::from(all[0].0.clone()), k("b02"));
    let limited = client.scan(k("b")..k("c"), 5).await.unwrap();
    assert_eq!(keys(&limited), (2..7).map(|i| k(&format!("b{i:02}"))).collect::<Vec<_>>());
    let key_only = client.scan_keys(k("b10")..k("b13"), 10).await.unwrap();
    assert_eq!(key_only, vec![Key::from(k("b10")), Key::from(k("b11")), Key::from(k("b12"))]);
    let reverse = client.scan_reverse(k("b")..k("c"), 3).await.unwrap();
    assert_eq!(keys(&reverse), vec![k("b19"), k("b18"), k("b17")]);
    let batch = client.batch_scan(vec![k("b02")..k("b04"), k("b10")..k("b12")], 10).await.unwrap();
    assert_eq!(keys(&batch), vec![k("b02"), k("b03"), k("b10"), k("b11")]);

    // Delete range.
    client.delete_range(k("b05")..k("b15")).await.unwrap();
    assert_eq!(client.scan(k("b")..k("c"), 100).await.unwrap().len(), 8);
    client.delete_range(BoundRange::from(k("b")..k("c"))).await.unwrap();
    assert!(client.scan(k("b")..k("c"), 100).await.unwrap().is_empty());

    // TTL.
    client.put_with_ttl(k("t1"), k("v"), 100).await.unwrap();
    let ttl = client.get_key_ttl_secs(k("t1")).await.unwrap().expect("key exists");
    assert!((99..=100).contains(&ttl), "ttl {ttl}");
    client.put(k("t2"), k("v")).await.unwrap();
    assert_eq!(client.get_key_ttl_secs(k("t2")).await.unwrap(), Some(0));
    assert_eq!(client.get_key_ttl_secs(k("t3")).await.unwrap(), None);
    client
        .batch_put_with_ttl(vec![(k("t4"), k("v")), (k("t5"), k("v"))], vec![50, 0])
        .await
        .unwrap();
    assert!(client.get_key_ttl_secs(k("t4")).await.unwrap().unwrap() > 0);

    // Compare-and-swap in atomic mode.
    let atomic = client.with_atomic_for_cas();
    let (previous, swapped) = atomic.compare_and_swap(k("cas"), None, k("first")).await.unwrap();
    assert_eq!((previous, swapped), (None, true));
    let (previous, swapped) =
        atomic.compare_and_swap(k("cas"), Some(k("wrong")), k("second")).await.unwrap();
    assert_eq!((previous, swapped), (Some(k("first")), false));
    let (_, swapped) =
        atomic.compare_and_swap(k("cas"), Some(k("first")), k("second")).await.unwrap();
    assert!(swapped);
    assert_eq!(atomic.get(k("cas")).await.unwrap(), Some(k("second")));
    atomic.put(k("cas"), k("third")).await.unwrap();
    atomic.delete(k("cas")).await.unwrap();
    assert_eq!(atomic.get(k("cas")).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_api_v1() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let client = raw_client(&node, false).await;
    exercise(&client).await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_api_v2() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let client = raw_client(&node, true).await;
    exercise(&client).await;
    // An unbounded scan covers exactly the keyspace, and terminates.
    client.put(k("zz"), k("last")).await.unwrap();
    let everything = client.scan(.., 1000).await.unwrap();
    assert!(keys(&everything).contains(&k("zz")));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_and_v2_share_a_node() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let v1 = raw_client(&node, false).await;
    let v2 = raw_client(&node, true).await;
    v1.put(k("shared"), k("from v1")).await.unwrap();
    v2.put(k("shared"), k("from v2")).await.unwrap();
    assert_eq!(v1.get(k("shared")).await.unwrap(), Some(k("from v1")));
    assert_eq!(v2.get(k("shared")).await.unwrap(), Some(k("from v2")));
    node.stop().await;
}

/// `RawChecksum` is not reachable from `tikv-client`; call it directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_checksum_over_a_region() {
    use scandium_protocol::kvrpcpb::{KeyRange, RawChecksumRequest};
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let client = raw_client(&node, false).await;
    client.batch_put(vec![(k("c1"), k("aa")), (k("c2"), k("bbb"))]).await.unwrap();
    let mut tikv = common::tikv_grpc(&node).await;
    let request = RawChecksumRequest {
        context: Some(common::context_for(&node, b"c1")),
        ranges: vec![KeyRange { start_key: k("c"), end_key: k("d") }],
        ..Default::default()
    };
    let resp = tikv.raw_checksum(request).await.unwrap().into_inner();
    assert!(resp.error.is_empty() && resp.region_error.is_none(), "{resp:?}");
    assert_eq!((resp.total_kvs, resp.total_bytes), (2, 9));
    assert_ne!(resp.checksum, 0);
    // Each range is a scan of up to the Region: a request naming too many is refused.
    let too_many = scandium_server::raw::MAX_CHECKSUM_RANGES + 1;
    let request = RawChecksumRequest {
        context: Some(common::context_for(&node, b"c1")),
        ranges: vec![KeyRange { start_key: Vec::new(), end_key: Vec::new() }; too_many],
        ..Default::default()
    };
    match tikv.raw_checksum(request).await {
        Err(status) => assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}"),
        Ok(resp) => assert!(!resp.into_inner().error.is_empty(), "refused"),
    }
    node.stop().await;
}

/// A raw put whose request is dropped once its proposal is under way (its client went
/// away) still holds the key's latch until it is applied: a compare-and-swap right after
/// it sees the put's value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_put_is_seen_by_the_next_compare_and_swap() {
    use scandium_protocol::kvrpcpb;
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let storage = node.storage().clone();
    for round in 0..50u32 {
        let key = b"cas-after-cancel".to_vec();
        let value = round.to_be_bytes().to_vec();
        let put = kvrpcpb::RawPutRequest {
            context: Some(common::context_for(&node, &key)),
            key: key.clone(),
            value: value.clone(),
            ..Default::default()
        };
        // Polled once (latch, batch, proposal), then dropped.
        tokio::select! {
            biased;
            _ = storage.raw_put(put) => {}
            _ = std::future::ready(()) => {}
        }
        let cas = kvrpcpb::RawCasRequest {
            context: Some(common::context_for(&node, &key)),
            key: key.clone(),
            value: b"swapped".to_vec(),
            previous_value: value.clone(),
            ..Default::default()
        };
        let outcome = storage.raw_compare_and_swap(cas).await.unwrap();
        assert!(outcome.succeeded, "round {round}: the CAS saw {:?}", outcome.previous);
    }
    node.stop().await;
}
