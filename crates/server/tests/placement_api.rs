//! The placement API: members, timestamps (ordered across restarts), Region lookups with
//! memcomparable keys, stores, GC safe point, keyspaces, and the PD HTTP subset.

mod common;

use common::{pd_grpc, start_node};
use scandium_protocol::keyspacepb::{keyspace_client::KeyspaceClient, LoadKeyspaceRequest};
use scandium_protocol::pdpb::{self, pd_client::PdClient};
use scandium_types::codec::{decode_bytes, encode_bytes};
use tonic::transport::Channel;

async fn timestamps(pd: &mut PdClient<Channel>, counts: &[u32]) -> Vec<u64> {
    let requests: Vec<pdpb::TsoRequest> = counts
        .iter()
        .map(|&count| pdpb::TsoRequest { header: None, count, dc_location: String::new() })
        .collect();
    let mut stream = pd.tso(tokio_stream::iter(requests)).await.unwrap().into_inner();
    let mut out = Vec::new();
    for &count in counts {
        let resp = stream.message().await.unwrap().expect("one response per request");
        assert_eq!(resp.count, count, "count echoes the request");
        let ts = resp.timestamp.unwrap();
        assert!(
            ts.logical >= i64::from(count) - 1,
            "the whole batch fits below the returned logical"
        );
        out.push(((ts.physical as u64) << 18) | ts.logical as u64);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamps_increase_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut last = 0;
    for _ in 0..3 {
        let node = start_node(dir.path()).await;
        let mut pd = pd_grpc(&node).await;
        let batch = timestamps(&mut pd, &[1, 10, 64, 1, 3]).await;
        for (ts, count) in batch.iter().zip([1u64, 10, 64, 1, 3]) {
            assert!(ts - (count - 1) > last, "timestamps strictly increase");
            last = *ts;
        }
        let now_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
                as u64;
        assert!((last >> 18).abs_diff(now_ms) < 10_000, "physical part is wall-clock milliseconds");
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_reads_and_writes() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let mut pd = pd_grpc(&node).await;

    let members = pd.get_members(pdpb::GetMembersRequest::default()).await.unwrap().into_inner();
    let cluster_id = members.header.as_ref().unwrap().cluster_id;
    assert_ne!(cluster_id, 0);
    let leader = members.leader.expect("this node leads");
    assert_eq!(leader.client_urls, vec![format!("http://{}", node.advertise_addr())]);
    let header = Some(pdpb::RequestHeader { cluster_id, sender_id: 0 });

    // Region lookup by memcomparable key: boundaries come back encoded, at keyspace edges.
    let request = pdpb::GetRegionRequest {
        header: header.clone(),
        region_key: encode_bytes(b"r\0\0\0abc"),
        need_buckets: false,
    };
    let resp = pd.get_region(request).await.unwrap().into_inner();
    let region = resp.region.expect("region");
    assert_eq!(decode_bytes(&region.start_key).unwrap(), b"r\0\0\0");
    assert_eq!(decode_bytes(&region.end_key).unwrap(), b"r\0\0\x01");
    assert!(region.region_epoch.is_some() && resp.leader.is_some() && resp.header.is_some());
    let by_id = pd.get_region_by_id(pdpb::GetRegionByIdRequest {
        header: header.clone(),
        region_id: region.id,
        need_buckets: false,
    });
    assert_eq!(by_id.await.unwrap().into_inner().region.unwrap().id, region.id);
    let prev = pd.get_prev_region(pdpb::GetRegionRequest {
        header: header.clone(),
        region_key: encode_bytes(b"r\0\0\0abc"),
        need_buckets: false,
    });
    assert!(prev.await.unwrap().into_inner().region.unwrap().end_key == region.start_key);
    let scan = pd
        .scan_regions(pdpb::ScanRegionsRequest { header: header.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(scan.regions.len(), 5, "one Region per DEFAULT keyspace edge interval");
    assert_eq!(scan.region_metas.len(), 5);

    let stores = pd.get_all_stores(pdpb::GetAllStoresRequest {
        header: header.clone(),
        exclude_tombstone_stores: true,
    });
    let stores = stores.await.unwrap().into_inner().stores;
    assert_eq!(stores.len(), 1);
    assert_eq!(stores[0].address, node.advertise_addr());
    let store = pd
        .get_store(pdpb::GetStoreRequest { header: header.clone(), store_id: stores[0].id })
        .await
        .unwrap();
    assert_eq!(store.into_inner().store.unwrap().id, stores[0].id);

    // GC safe point only moves forward.
    let update = |sp| pdpb::UpdateGcSafePointRequest { header: header.clone(), safe_point: sp };
    assert_eq!(
        pd.update_gc_safe_point(update(100)).await.unwrap().into_inner().new_safe_point,
        100
    );
    assert_eq!(pd.update_gc_safe_point(update(50)).await.unwrap().into_inner().new_safe_point, 100);
    let get =
        pd.get_gc_safe_point(pdpb::GetGcSafePointRequest { header: header.clone() }).await.unwrap();
    assert_eq!(get.into_inner().safe_point, 100);
    let alloc =
        pd.alloc_id(pdpb::AllocIdRequest { header: header.clone() }).await.unwrap().into_inner();
    assert!(alloc.id > 0);

    // Keyspaces: DEFAULT is id 0; unknown names are a header error.
    let mut keyspaces = KeyspaceClient::new(common::channel(&node).await);
    let resp = keyspaces
        .load_keyspace(LoadKeyspaceRequest { header: header.clone(), name: "DEFAULT".into() })
        .await
        .unwrap();
    assert_eq!(resp.into_inner().keyspace.unwrap().id, 0);
    let resp = keyspaces
        .load_keyspace(LoadKeyspaceRequest { header, name: "nope".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(resp.keyspace.is_none() && resp.header.unwrap().error.is_some());

    // The HTTP face on the same port.
    let regions = http_get(&node, "/pd/api/v1/regions").await;
    assert_eq!(regions["count"], 5);
    assert_eq!(regions["regions"].as_array().unwrap().len(), 5);
    assert!(regions.get("next_key").is_none(), "one page holds them all");
    // Two at a time: each page says where the next starts, and the pages cover every
    // Region once, in key order.
    let (mut key, mut paged) = (String::new(), Vec::new());
    loop {
        let page = http_get(&node, &format!("/pd/api/v1/regions?limit=2&key={key}")).await;
        assert_eq!(page["total"], 5);
        assert!(page["count"].as_u64().unwrap() <= 2);
        paged.extend(page["regions"].as_array().unwrap().iter().map(|r| r["id"].clone()));
        match page["next_key"].as_str() {
            Some(next) => key = next.to_string(),
            None => break,
        }
    }
    let all: Vec<_> =
        regions["regions"].as_array().unwrap().iter().map(|r| r["id"].clone()).collect();
    assert_eq!(paged, all);
    for bad in ["/pd/api/v1/regions?key=abc", "/pd/api/v1/regions?key=zz"] {
        let uri: hyper::Uri = format!("http://{}{bad}", node.advertise_addr()).parse().unwrap();
        let response = hyper::Client::new().get(uri).await.unwrap();
        assert_eq!(response.status(), 400, "{bad}");
    }
    let stores = http_get(&node, "/pd/api/v1/stores").await;
    assert_eq!(stores["count"], 1);
    assert_eq!(stores["stores"][0]["store"]["state_name"], "Up");
    let health = http_get(&node, "/health").await;
    assert_eq!(health["status"], "ok");
    node.stop().await;
}

async fn http_get(node: &scandium_server::Node, path: &str) -> serde_json::Value {
    let uri: hyper::Uri = format!("http://{}{path}", node.advertise_addr()).parse().unwrap();
    let response = hyper::Client::new().get(uri).await.unwrap();
    assert!(response.status().is_success(), "{path}: {}", response.status());
    let body = hyper::body::to_bytes(response.into_body()).await.unwrap();
    serde_json::from_slice(&body).unwrap()
}
