//! Helpers shared by the in-process node tests.

#![allow(dead_code)]

use scandium_server::{Config, Node};
use std::path::Path;
use std::time::Duration;
use tikv_client::{RawClient, TransactionClient};

/// Starts a node on a free port with its data in `dir`.
pub async fn start_node(dir: &Path) -> Node {
    start_with(dir, |_| {}).await
}

/// Starts a node with settings adjusted by `adjust`.
pub async fn start_with(dir: &Path, adjust: impl FnOnce(&mut Config)) -> Node {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut config =
        Config { data_dir: dir.to_path_buf(), addr: "127.0.0.1:0".into(), ..Config::default() };
    adjust(&mut config);
    Node::start(config).await.expect("node starts")
}

/// A raw client in API V1 (no keyspace) or V2 (keyspace DEFAULT).
pub async fn raw_client(node: &Node, v2: bool) -> RawClient {
    let mut config = tikv_client::Config::default().with_timeout(Duration::from_secs(5));
    if v2 {
        config = config.with_default_keyspace();
    }
    RawClient::new_with_config(vec![node.advertise_addr().to_string()], config)
        .await
        .expect("client connects")
}

/// A transactional client in API V1 (no keyspace) or V2 (keyspace DEFAULT).
pub async fn txn_client(node: &Node, v2: bool) -> TransactionClient {
    let mut config = tikv_client::Config::default().with_timeout(Duration::from_secs(5));
    if v2 {
        config = config.with_default_keyspace();
    }
    TransactionClient::new_with_config(vec![node.advertise_addr().to_string()], config)
        .await
        .expect("client connects")
}

/// A gRPC channel to the node.
pub async fn channel(node: &Node) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{}", node.advertise_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A raw gRPC client of the storage service, for requests `tikv-client` would never send.
pub async fn tikv_grpc(
    node: &Node,
) -> scandium_protocol::tikvpb::tikv_client::TikvClient<tonic::transport::Channel> {
    scandium_protocol::tikvpb::tikv_client::TikvClient::new(channel(node).await)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

/// A raw gRPC client of the placement service.
pub async fn pd_grpc(
    node: &Node,
) -> scandium_protocol::pdpb::pd_client::PdClient<tonic::transport::Channel> {
    scandium_protocol::pdpb::pd_client::PdClient::new(channel(node).await)
}

/// The request context `tikv-client` would send for the Region holding `key`.
pub fn context_for(node: &Node, key: &[u8]) -> scandium_protocol::kvrpcpb::Context {
    let status = node.registry().find_by_key(key).expect("a region holds every key");
    scandium_protocol::kvrpcpb::Context {
        region_id: status.region.id,
        region_epoch: Some(scandium_protocol::metapb::RegionEpoch {
            conf_ver: status.region.conf_ver,
            version: status.region.version,
        }),
        peer: Some(scandium_protocol::metapb::Peer {
            id: status.peer.id,
            store_id: status.peer.store_id,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Polls `condition` every 10 ms until it holds, failing after `timeout`.
pub async fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
