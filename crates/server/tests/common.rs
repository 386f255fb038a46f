//! Helpers shared by the in-process node tests.

#![allow(dead_code)]

use scandium_server::{Config, Node};
use std::path::Path;
use std::time::Duration;
use tikv_client::RawClient;

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
