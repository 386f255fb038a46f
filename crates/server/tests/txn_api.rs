//! Transactions through the real `tikv-client` 0.4 `TransactionClient` against an
//! in-process node: optimistic, pessimistic, async commit and 1PC; conflicts, inserts,
//! scans across Regions, lock resolution after a client vanished, and GC.

mod common;

use common::{start_node, txn_client as client};
use scandium_server::Node;
use std::time::Duration;
use tikv_client::{CheckLevel, Key, TimestampExt as _, TransactionClient, TransactionOptions};

fn k(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

/// A prewrite of one Put, as `tikv-client` would send it, for requests it would never send
/// on its own (late, or with a chosen start timestamp).
fn put_prewrite(
    node: &Node,
    key: &str,
    value: &str,
    primary: &str,
    start_version: u64,
) -> scandium_protocol::kvrpcpb::PrewriteRequest {
    use scandium_protocol::kvrpcpb;
    kvrpcpb::PrewriteRequest {
        context: Some(common::context_for(node, key.as_bytes())),
        mutations: vec![kvrpcpb::Mutation {
            op: kvrpcpb::Op::Put as i32,
            key: k(key),
            value: k(value),
            ..Default::default()
        }],
        primary_lock: k(primary),
        start_version,
        lock_ttl: 1000,
        ..Default::default()
    }
}

fn options() -> [(&'static str, TransactionOptions); 5] {
    [
        ("optimistic", TransactionOptions::new_optimistic()),
        ("pessimistic", TransactionOptions::new_pessimistic()),
        ("async commit", TransactionOptions::new_optimistic().use_async_commit()),
        ("pessimistic async commit", TransactionOptions::new_pessimistic().use_async_commit()),
        ("1PC", TransactionOptions::new_optimistic().try_one_pc()),
    ]
}

async fn read_your_writes_and_commit(client: &TransactionClient) {
    for (name, options) in options() {
        let prefix = name.replace(' ', "_");
        let key = |s: &str| k(&format!("{prefix}/{s}"));
        let mut txn = client.begin_with_options(options.clone()).await.unwrap();
        txn.put(key("a"), k("1")).await.unwrap();
        txn.put(key("b"), k("2")).await.unwrap();
        txn.put(key("c"), vec![7u8; 1000]).await.unwrap();
        assert_eq!(txn.get(key("a")).await.unwrap(), Some(k("1")), "{name}: reads its own write");
        txn.commit().await.unwrap();

        let mut txn = client.begin_with_options(options.clone()).await.unwrap();
        assert_eq!(txn.get(key("a")).await.unwrap(), Some(k("1")), "{name}");
        assert_eq!(txn.get(key("c")).await.unwrap(), Some(vec![7u8; 1000]), "{name}: long value");
        let all = txn.scan(key("")..key("z"), 10).await.unwrap().collect::<Vec<_>>();
        assert_eq!(all.len(), 3, "{name}");
        let reverse =
            txn.scan_reverse(key("")..key("z"), 2).await.unwrap().map(|p| p.0).collect::<Vec<_>>();
        assert_eq!(reverse, vec![Key::from(key("c")), Key::from(key("b"))], "{name}");
        txn.delete(key("b")).await.unwrap();
        txn.commit().await.unwrap();

        let mut txn = client.begin_with_options(options).await.unwrap();
        assert_eq!(txn.get(key("b")).await.unwrap(), None, "{name}: deleted");
        txn.rollback().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_protocol_commits_v1() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    read_your_writes_and_commit(&client(&node, false).await).await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_protocol_commits_v2() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    read_your_writes_and_commit(&client(&node, true).await).await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_and_inserts() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let client = client(&node, false).await;

    // Optimistic: the second writer of a key fails at commit.
    let mut first = client.begin_optimistic().await.unwrap();
    let mut second = client.begin_optimistic().await.unwrap();
    first.put(k("x"), k("first")).await.unwrap();
    second.put(k("x"), k("second")).await.unwrap();
    first.commit().await.unwrap();
    assert!(second.commit().await.is_err(), "write conflict");
    let _ = second.rollback().await;
    let mut check = client.begin_optimistic().await.unwrap();
    assert_eq!(check.get(k("x")).await.unwrap(), Some(k("first")));
    check.rollback().await.unwrap();

    // Insert of an existing key fails, in both modes.
    for options in [TransactionOptions::new_optimistic(), TransactionOptions::new_pessimistic()] {
        let mut txn = client.begin_with_options(options).await.unwrap();
        let inserted = txn.insert(k("x"), k("again")).await;
        let outcome = match inserted {
            Ok(()) => txn.commit().await.map(|_| ()),
            Err(e) => Err(e),
        };
        assert!(outcome.is_err(), "insert over an existing key");
        let _ = txn.rollback().await;
    }

    // Pessimistic: a second locker of the key fails at once (wait_timeout 0).
    let mut holder = client.begin_pessimistic().await.unwrap();
    holder.put(k("p"), k("held")).await.unwrap();
    let mut other = client.begin_pessimistic().await.unwrap();
    assert!(other.put(k("p"), k("nope")).await.is_err(), "locked");
    let _ = other.rollback().await;
    holder.commit().await.unwrap();
    let mut txn = client.begin_pessimistic().await.unwrap();
    assert_eq!(txn.get_for_update(k("p")).await.unwrap(), Some(k("held")));
    txn.commit().await.unwrap();
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scans_cross_regions_and_transactions_span_them() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let client = client(&node, true).await;
    let mut txn = client.begin_optimistic().await.unwrap();
    for i in 0..30 {
        txn.put(k(&format!("k{i:02}")), k(&format!("v{i}"))).await.unwrap();
    }
    txn.commit().await.unwrap();
    for split in ["k10", "k20"] {
        let mut wire = b"x\0\0\0".to_vec();
        wire.extend_from_slice(split.as_bytes());
        node.splitter().split_at(wire).await.unwrap();
    }
    // Transactions of every kind writing into three Regions. A pessimistic prewrite split
    // by Region carries the whole transaction's action list in each shard.
    for (name, options) in options() {
        let mut txn = client.begin_with_options(options).await.unwrap();
        for i in [5, 15, 25] {
            let key = k(&format!("k{i:02}"));
            txn.get_for_update(key.clone()).await.unwrap_or_else(|e| panic!("{name}: {e}"));
            txn.put(key, k(name)).await.unwrap();
        }
        txn.commit().await.unwrap_or_else(|e| panic!("{name} across Regions: {e}"));
        let mut snapshot = client.snapshot(
            client.current_timestamp().await.unwrap(),
            TransactionOptions::new_optimistic(),
        );
        let all: Vec<_> = snapshot.scan(k("k")..k("l"), 100).await.unwrap().collect();
        assert_eq!(all.len(), 30);
        assert_eq!(all.iter().filter(|p| p.1 == k(name)).count(), 3, "{name}");
    }
    let mut snapshot = client
        .snapshot(client.current_timestamp().await.unwrap(), TransactionOptions::new_optimistic());
    let last: Vec<_> =
        snapshot.scan_reverse(k("k")..k("l"), 3).await.unwrap().map(|p| p.0).collect();
    assert_eq!(last[0], Key::from(k("k29")));
    node.stop().await;
}

/// A client prewrites and vanishes before committing; once its locks expire, readers
/// resolve them (roll the transaction back) and proceed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_of_a_vanished_client_are_resolved() {
    use scandium_protocol::kvrpcpb;
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let client = client(&node, false).await;
    let start = client.current_timestamp().await.unwrap().version();
    let mut tikv = common::tikv_grpc(&node).await;
    let mutation = |key: &str| kvrpcpb::Mutation {
        op: kvrpcpb::Op::Put as i32,
        key: k(key),
        value: k("orphan"),
        ..Default::default()
    };
    let request = kvrpcpb::PrewriteRequest {
        context: Some(common::context_for(&node, b"orphan1")),
        mutations: vec![mutation("orphan1"), mutation("orphan2")],
        primary_lock: k("orphan1"),
        start_version: start,
        lock_ttl: 1,
        txn_size: 2,
        ..Default::default()
    };
    let resp = tikv.kv_prewrite(request).await.unwrap().into_inner();
    assert!(resp.errors.is_empty() && resp.region_error.is_none(), "{resp:?}");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut txn = client.begin_optimistic().await.unwrap();
    assert_eq!(txn.get(k("orphan2")).await.unwrap(), None, "the expired lock was resolved");
    txn.put(k("orphan1"), k("mine")).await.unwrap();
    txn.commit().await.unwrap();
    let locks = client
        .scan_locks(&client.current_timestamp().await.unwrap(), Vec::<u8>::new().., 100)
        .await
        .unwrap();
    assert!(locks.is_empty(), "no lock is left: {locks:?}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_safe_point_and_drop_check() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let client = client(&node, false).await;
    let safe_point = client.current_timestamp().await.unwrap();
    assert!(client.gc(safe_point).await.unwrap(), "the new safe point is in force");
    let mut txn = client
        .begin_with_options(TransactionOptions::new_optimistic().drop_check(CheckLevel::None))
        .await
        .unwrap();
    txn.put(k("dropped"), k("v")).await.unwrap();
    drop(txn);
    let mut txn = client.begin_optimistic().await.unwrap();
    assert_eq!(
        txn.get(k("dropped")).await.unwrap(),
        None,
        "an uncommitted transaction leaves nothing"
    );
    txn.rollback().await.unwrap();
    node.stop().await;
}

/// An async-commit transaction whose client vanished after prewriting every key is
/// committed by the first reader that meets it; one that vanished before prewriting every
/// key is rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_async_commit_transactions_are_decided_by_their_secondaries() {
    use scandium_protocol::kvrpcpb;
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let client = client(&node, false).await;
    let mut tikv = common::tikv_grpc(&node).await;
    let prewrite = |start: u64, keys: &[&str], secondaries: &[&str]| {
        let request = kvrpcpb::PrewriteRequest {
            context: Some(common::context_for(&node, keys[0].as_bytes())),
            mutations: keys
                .iter()
                .map(|key| kvrpcpb::Mutation {
                    op: kvrpcpb::Op::Put as i32,
                    key: k(key),
                    value: k("async"),
                    ..Default::default()
                })
                .collect(),
            primary_lock: k(keys[0]),
            start_version: start,
            lock_ttl: 1,
            use_async_commit: true,
            secondaries: secondaries.iter().map(|s| k(s)).collect(),
            ..Default::default()
        };
        let mut tikv = tikv.clone();
        async move { tikv.kv_prewrite(request).await.unwrap().into_inner() }
    };
    // Every key prewritten: committed.
    let start = client.current_timestamp().await.unwrap().version();
    let resp = prewrite(start, &["done-p", "done-s"], &["done-s"]).await;
    assert!(resp.errors.is_empty() && resp.min_commit_ts > start, "{resp:?}");
    // The secondary never prewritten: rolled back.
    let start = client.current_timestamp().await.unwrap().version();
    let resp = prewrite(start, &["half-p"], &["half-s"]).await;
    assert!(resp.errors.is_empty());
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut txn = client.begin_optimistic().await.unwrap();
    assert_eq!(txn.get(k("done-s")).await.unwrap(), Some(k("async")));
    assert_eq!(txn.get(k("done-p")).await.unwrap(), Some(k("async")));
    assert_eq!(txn.get(k("half-p")).await.unwrap(), None);
    txn.rollback().await.unwrap();
    // A late prewrite of the missing secondary is refused.
    let late = kvrpcpb::PrewriteRequest {
        lock_ttl: 1,
        use_async_commit: true,
        ..put_prewrite(&node, "half-s", "late", "half-p", start)
    };
    let resp = tikv.kv_prewrite(late).await.unwrap().into_inner();
    assert!(resp.errors.first().and_then(|e| e.conflict.as_ref()).is_some(), "{resp:?}");
    node.stop().await;
}

/// A data directory written before the Latest CF existed (simulated by removing the index
/// and its marker) is indexed when the node starts: its data reads back, and a write that
/// conflicts with it is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_written_before_the_latest_index_is_indexed_at_start() {
    use common::{tikv_grpc, wait_for};
    use scandium_storage::{Cf, Engine as _, FjallEngine, FjallOptions, WriteBatch};
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let txns = client(&node, false).await;
    for i in 0..3u8 {
        let mut txn = txns.begin_optimistic().await.unwrap();
        txn.put(k("kept"), vec![i]).await.unwrap();
        txn.put(k("deleted"), vec![i]).await.unwrap();
        txn.commit().await.unwrap();
    }
    let mut txn = txns.begin_optimistic().await.unwrap();
    txn.delete(k("deleted")).await.unwrap();
    txn.commit().await.unwrap();
    let stale_ts = txns.current_timestamp().await.unwrap().version();
    let mut newer = txns.begin_optimistic().await.unwrap();
    newer.put(k("kept"), k("newer")).await.unwrap();
    newer.commit().await.unwrap();
    drop((txn, newer, txns));

    node.stop().await;
    // The server's connection tasks end a moment after the client's connections close.
    let path = dir.path().join("db");
    let mut engine = None;
    wait_for("the stopped node to close its storage", Duration::from_secs(10), || {
        engine = FjallEngine::open(&path, &FjallOptions::default()).ok();
        engine.is_some()
    })
    .await;
    let engine = engine.unwrap();
    let mut batch = WriteBatch::new();
    for item in engine.snapshot().scan(Cf::Latest, b"", b"", false) {
        batch.delete(Cf::Latest, item.unwrap().0);
    }
    assert_eq!(batch.len(), 2, "one index entry per key");
    batch.delete(Cf::RaftState, b"latest_index".to_vec());
    engine.write(batch).and_then(|()| engine.sync()).unwrap();
    drop(engine);

    let node = start_node(dir.path()).await;
    scandium_txn::mvcc::latest::verify(&*node.engine().snapshot()).unwrap();
    let txns = client(&node, false).await;
    let mut txn = txns.begin_optimistic().await.unwrap();
    assert_eq!(txn.get(k("kept")).await.unwrap(), Some(k("newer")));
    assert_eq!(txn.get(k("deleted")).await.unwrap(), None);
    let keys = txn.scan(k("")..k("z"), 10).await.unwrap().count();
    assert_eq!(keys, 1, "the deleted key is not scanned");
    txn.rollback().await.unwrap();
    // A transaction that started before `newer` committed conflicts with it.
    let prewrite = put_prewrite(&node, "kept", "stale", "kept", stale_ts);
    let answer = tikv_grpc(&node).await.kv_prewrite(prewrite).await.unwrap().into_inner();
    assert!(
        answer.errors.first().is_some_and(|e| e.conflict.is_some()),
        "the conflict is found through the rebuilt index: {answer:?}"
    );
    node.stop().await;
}
