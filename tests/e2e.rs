//! End-to-end tests of the real `scandium` binary: started as a process, driven through
//! `tikv-client` and the `scandium` CLI, killed with SIGKILL and restarted.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod support;

use support::{cli, client, Server};

/// Writers put single keys and 3-key batches as fast as they can; the server is killed with
/// SIGKILL mid-stream and restarted. Every acknowledged put must be there, and every batch
/// must be there completely or not at all.
///
/// Batches are checked for atomicity only: `tikv-client` 0.4's `batch_put` reports success
/// even when no server is reachable (it returns `Ok` within milliseconds against a stopped
/// node), so its acknowledgements are no evidence of a write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_write_load_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let server = Server::start(dir.path(), &["--data-dir", data, "--addr", "127.0.0.1:0"]);
    let raw = client(&server.addr).await;

    let acked: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let attempted: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for writer in 0..16u64 {
        let (raw, acked, attempted, stop) =
            (raw.clone(), acked.clone(), attempted.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            for seq in 0.. {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let id = writer << 32 | seq;
                attempted.lock().unwrap().insert(id);
                let keys = batch_keys(id);
                if writer % 2 == 0 {
                    if raw.put(keys[0].clone(), id.to_be_bytes().to_vec()).await.is_err() {
                        return;
                    }
                    acked.lock().unwrap().insert(id);
                } else {
                    let pairs: Vec<_> =
                        keys.iter().map(|k| (k.clone(), id.to_be_bytes().to_vec())).collect();
                    let _ = raw.batch_put(pairs).await;
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < 2000 {
        assert!(Instant::now() < deadline, "writers made too little progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.kill();
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let attempted = attempted.lock().unwrap().clone();

    let server = Server::start(dir.path(), &["--data-dir", data, "--addr", "127.0.0.1:0"]);
    let raw = client(&server.addr).await;
    let (mut lost, mut batches_found) = (0, 0);
    for &id in &attempted {
        let batch = (id >> 32) % 2 == 1;
        let keys = batch_keys(id);
        let expected = if batch { 3 } else { 1 };
        let found = raw.batch_get(keys[..expected].to_vec()).await.unwrap().len();
        assert!(
            found == 0 || found == expected,
            "write {id:x} is half applied: {found} of {expected}"
        );
        batches_found += usize::from(batch && found == expected);
        lost += usize::from(found == 0 && acked.contains(&id));
    }
    assert_eq!(lost, 0, "{lost} of {} acknowledged puts were lost", acked.len());
    assert!(batches_found > 100, "batches were written ({batches_found})");
    server.kill();
}

fn batch_keys(id: u64) -> Vec<Vec<u8>> {
    (0..3).map(|i| format!("w{id:016x}-{i}").into_bytes()).collect()
}

/// Transactions commit from several clients (optimistic, pessimistic, async commit) while
/// the server is killed with SIGKILL; after a restart every transaction is visible
/// completely or not at all, and every acknowledged one completely. Locks the killed
/// transactions left behind are resolved by the reading client once they expire
/// (abandoned async-commit transactions by the server, from their secondaries).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_commit_leaves_transactions_atomic() {
    use tikv_client::{TransactionClient, TransactionOptions};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let server = Server::start(dir.path(), &["--data-dir", data, "--addr", "127.0.0.1:0"]);
    let config = tikv_client::Config::default().with_timeout(Duration::from_secs(5));
    let client = TransactionClient::new_with_config(vec![server.addr.clone()], config.clone())
        .await
        .unwrap();

    let acked: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let attempted: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for writer in 0..9u64 {
        let (client, acked, attempted, stop) =
            (client.clone(), acked.clone(), attempted.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let options = match writer % 3 {
                0 => TransactionOptions::new_optimistic(),
                1 => TransactionOptions::new_pessimistic(),
                _ => TransactionOptions::new_optimistic().use_async_commit(),
            };
            for seq in 0.. {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let id = writer << 32 | seq;
                attempted.lock().unwrap().insert(id);
                let Ok(mut txn) = client
                    .begin_with_options(options.clone().drop_check(tikv_client::CheckLevel::None))
                    .await
                else {
                    return;
                };
                let mut result = Ok(None);
                for key in batch_keys(id) {
                    if let Err(e) = txn.put(key, id.to_be_bytes().to_vec()).await {
                        result = Err(e);
                        break;
                    }
                }
                if result.is_ok() {
                    result = txn.commit().await;
                }
                if result.is_err() {
                    return;
                }
                // tikv-client 0.4's commit can return Ok against a server that is gone (its
                // multi-Region plans treat an unreachable store as an empty result), so a
                // commit counts as acknowledged only once a later read has seen it.
                let Ok(ts) = client.current_timestamp().await else { return };
                let mut snapshot = client.snapshot(ts, TransactionOptions::new_optimistic());
                match snapshot.batch_get(batch_keys(id)).await.map(Iterator::count) {
                    Ok(3) => {
                        acked.lock().unwrap().insert(id);
                    }
                    _ => return,
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < 300 {
        assert!(Instant::now() < deadline, "writers made too little progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.kill();
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        // tikv-client 0.4 can panic inside an async commit whose server died mid-prewrite
        // (it unwraps the largest min_commit_ts of an empty response list); such a writer
        // simply ends, unacknowledged.
        let _ = writer.await;
    }
    let acked = acked.lock().unwrap().clone();
    let attempted = attempted.lock().unwrap().clone();

    let server = Server::start(dir.path(), &["--data-dir", data, "--addr", "127.0.0.1:0"]);
    let client =
        TransactionClient::new_with_config(vec![server.addr.clone()], config).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut visible, mut lost) = (0, 0);
    for &id in &attempted {
        let found = loop {
            // Locks of killed transactions block readers until their TTL runs out.
            let ts = client.current_timestamp().await.unwrap();
            let mut snapshot = client.snapshot(ts, TransactionOptions::new_optimistic());
            match snapshot.batch_get(batch_keys(id)).await {
                Ok(pairs) => break pairs.count(),
                Err(e) => {
                    assert!(Instant::now() < deadline, "reads never succeeded: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        assert!(
            found == 0 || found == 3,
            "transaction {id:x} is partly visible: {found} of 3 keys"
        );
        visible += usize::from(found == 3);
        if found == 0 && acked.contains(&id) {
            lost += 1;
            let (writer, seq) = (id >> 32, id & 0xffff_ffff);
            let last = acked.iter().filter(|a| *a >> 32 == writer).map(|a| a & 0xffff_ffff).max();
            eprintln!(
                "lost: writer {writer} (kind {}) seq {seq}, last acked seq {last:?}",
                writer % 3
            );
        }
    }
    assert_eq!(lost, 0, "{lost} of {} acknowledged transactions were lost", acked.len());
    assert!(visible >= acked.len());
    server.kill();
}

/// `scandium server` with no flags serves on 127.0.0.1:2379 with data in ./scandium-data;
/// the CLI reads, writes, lists and splits through it; SIGTERM stops it cleanly; a restart
/// resumes the same cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_config_server_and_cli() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    assert_eq!(server.addr, "127.0.0.1:2379");
    assert!(dir.path().join("scandium-data").is_dir());

    let (ok, out) = cli(&["kv", "put", "greeting", "hello"]);
    assert!(ok, "{out}");
    let (ok, out) = cli(&["kv", "get", "greeting"]);
    assert!(ok && out.contains("hello"), "{out}");
    let (ok, out) = cli(&["kv", "--keyspace", "DEFAULT", "put", "v2key", "v2value"]);
    assert!(ok, "{out}");
    let (ok, out) = cli(&["kv", "--keyspace", "DEFAULT", "scan"]);
    assert!(ok && out.contains("v2key\tv2value"), "{out}");
    let (ok, out) = cli(&["ctl", "stores"]);
    assert!(ok && out.contains("127.0.0.1:2379") && out.contains("LABELS"), "{out}");
    assert!(out.lines().nth(1).is_some_and(|row| row.contains("Up")), "a table: {out}");
    let (ok, out) = cli(&["ctl", "--json", "stores"]);
    assert!(ok && out.contains("\"state\": \"Up\""), "{out}");
    let (ok, out) = cli(&["ctl", "members"]);
    assert!(ok && out.contains("leader"), "{out}");
    // One node: nothing to repair or balance.
    let (ok, out) = cli(&["ctl", "operators"]);
    assert!(ok && out.contains("0 operator(s)") && out.contains("OPERATOR"), "{out}");
    let (ok, out) = cli(&["ctl", "--json", "operators"]);
    assert!(ok && out.contains("\"count\": 0"), "{out}");
    // The scheduler's settings: shown, changed, and kept in placement's log.
    let (ok, out) = cli(&["ctl", "scheduler"]);
    assert!(ok && out.contains("replica balancing: running"), "{out}");
    let (ok, out) = cli(&["ctl", "scheduler", "pause", "replicas"]);
    assert!(ok && out.contains("replica balancing: paused"), "{out}");
    assert!(out.contains("leader balancing: running"), "{out}");
    let (ok, out) = cli(&["ctl", "scheduler", "limit", "2"]);
    assert!(ok && out.contains("at most: 2") && out.contains("replica balancing: paused"), "{out}");
    let (ok, out) = cli(&["ctl", "--json", "scheduler"]);
    assert!(ok && out.contains("\"replicas_paused\": true"), "read back: {out}");
    let (ok, out) = cli(&["ctl", "scheduler", "resume", "all"]);
    assert!(ok && out.contains("replica balancing: running"), "{out}");
    let (ok, out) = cli(&["ctl", "scheduler", "limit", "5000"]);
    assert!(!ok && out.contains("at most 1024"), "refused: {out}");
    let (ok, out) = cli(&["ctl", "scheduler", "pause", "hot"]);
    assert!(ok && out.contains("hot Region balancing: paused"), "{out}");
    assert!(out.contains("leader balancing: running"), "only hot Regions' leaders: {out}");
    let (ok, out) = cli(&["ctl", "scheduler", "store-limit", "7"]);
    assert!(ok && out.contains("a minute at most: 7"), "{out}");
    let (ok, out) = cli(&["ctl", "--json", "scheduler"]);
    assert!(
        ok && out.contains("\"store_limit\": 7") && out.contains("\"hot_paused\": true"),
        "{out}"
    );
    let (ok, out) = cli(&["ctl", "scheduler", "store-limit", "200000"]);
    assert!(!ok && out.contains("at most 100000"), "refused: {out}");
    // Which Regions merge, and whether merges run.
    let (ok, out) = cli(&["ctl", "scheduler"]);
    assert!(ok && out.contains("merges: running"), "{out}");
    assert!(out.contains("records at most: each node's merge_max_keys"), "{out}");
    let args = ["ctl", "scheduler", "merge", "--max-size", "1048576", "--after-ms", "60000"];
    let (ok, out) = cli(&args);
    assert!(ok && out.contains("bytes at most: 1048576"), "{out}");
    assert!(out.contains("stood for ms: 60000"), "{out}");
    let (ok, out) = cli(&["ctl", "scheduler", "pause", "merges"]);
    assert!(ok && out.contains("merges: paused") && out.contains("leader balancing"), "{out}");
    let (ok, out) = cli(&["ctl", "--json", "scheduler"]);
    assert!(ok && out.contains("\"merges_paused\": true"), "{out}");
    assert!(out.contains("\"merge_max_size\": 1048576"), "{out}");
    let (ok, out) = cli(&["ctl", "scheduler", "resume", "merges"]);
    assert!(ok && out.contains("merges: running"), "{out}");
    // A store's own limit, and the cluster's isolation levels.
    let (ok, out) = cli(&["ctl", "scheduler", "store-limit", "0", "--store", "1"]);
    assert!(ok && out.contains("limit of their own: 1: 0"), "{out}");
    assert!(out.contains("a minute at most: 7"), "the cluster's limit stays: {out}");
    let (ok, out) = cli(&["ctl", "scheduler", "store-limit", "3", "--store", "99"]);
    assert!(!ok && out.contains("store 99 not found"), "refused: {out}");
    let (ok, out) = cli(&["ctl", "scheduler", "location-labels", "zone", "host"]);
    assert!(ok && out.contains("isolation levels: zone, host"), "{out}");
    let (ok, out) = cli(&["ctl", "scheduler", "location-labels", "zone", "zone"]);
    assert!(!ok && out.contains("named twice"), "refused: {out}");
    let (ok, out) = cli(&["ctl", "--json", "scheduler"]);
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    assert!(ok && shown["location_labels"] == serde_json::json!(["zone", "host"]), "{out}");
    let own = serde_json::json!([{ "store_id": 1, "moves_per_minute": 0 }]);
    assert!(shown["store_limits"] == own && shown["store_limit"] == 7, "{out}");
    let (ok, out) = cli(&["ctl", "scheduler", "location-labels", "--default"]);
    assert!(ok && out.contains("isolation levels: each node's location_labels"), "{out}");
    let (ok, out) = cli(&["ctl", "scheduler", "store-limit", "default", "--store", "1"]);
    assert!(ok && out.contains("limit of their own: none"), "{out}");
    let (ok, out) = cli(&["ctl", "scheduler", "resume", "all"]);
    assert!(ok && out.contains("hot Region balancing: running"), "{out}");
    let (ok, out) = cli(&["ctl", "regions"]);
    assert!(ok && out.contains("5 Region(s)"), "{out}");
    let (ok, out) = cli(&["ctl", "--json", "regions"]);
    assert!(ok && out.contains("\"count\": 5"), "{out}");
    let (ok, out) = cli(&["ctl", "split", "greeting"]);
    assert!(ok && out.contains("split: new Region"), "{out}");
    let (ok, out) = cli(&["ctl", "regions"]);
    assert!(ok && out.contains("6 Region(s)"), "{out}");
    let (ok, out) = cli(&["ctl", "regions", "--containing", "greeting"]);
    assert!(ok && out.contains("1 Region(s)") && out.contains("greeting  "), "{out}");
    let (ok, out) = cli(&["ctl", "split", "s1", "s2", "s3"]);
    assert!(ok && out.contains("split: new Region"), "several keys in one call: {out}");
    let (ok, out) = cli(&["ctl", "regions"]);
    assert!(ok && out.contains("9 Region(s)"), "{out}");
    let (ok, out) = cli(&["kv", "get", "greeting"]);
    assert!(ok && out.contains("hello"), "reads work across the split: {out}");
    // The Region's size reaches `ctl regions` with its leader's next heartbeat.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, out) = cli(&["ctl", "--json", "regions", "--containing", "greeting"]);
        assert!(ok, "{out}");
        if out.contains("\"approximate_keys\": 1") {
            break;
        }
        assert!(Instant::now() < deadline, "no size for the Region: {out}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (ok, out) = cli(&["kv", "get", "absent"]);
    assert!(!ok && out.trim() == "error: not found", "one clear line: {out}");

    // The rest of `scandium kv`: TTLs, compare-and-swap, delete-range, batches, and a
    // transaction.
    let (ok, out) = cli(&["kv", "ttl", "greeting"]);
    assert!(ok && out.trim() == "none", "{out}");
    let (ok, out) = cli(&["kv", "put", "--ttl", "600", "brief", "x"]);
    assert!(ok, "{out}");
    let (ok, out) = cli(&["kv", "ttl", "brief"]);
    assert!(ok && out.trim().parse::<u64>().is_ok_and(|s| s > 500 && s <= 600), "{out}");
    let (ok, out) = cli(&["kv", "cas", "greeting", "bye", "--expect", "hello"]);
    assert!(ok && out.contains("it held hello"), "{out}");
    let (ok, out) = cli(&["kv", "cas", "greeting", "again", "--expect", "hello"]);
    assert!(!ok && out.contains("not swapped: the key holds bye"), "{out}");
    let (ok, out) = cli(&["kv", "cas", "--absent", "fresh", "new"]);
    assert!(ok && out.contains("(absent)"), "{out}");
    let batch = dir.path().join("batch.txt");
    std::fs::write(&batch, "# fixtures\nput b1 one\nput b2 two\nput b3 three\ndelete fresh\n")
        .unwrap();
    let (ok, out) = cli(&["kv", "batch", batch.to_str().unwrap()]);
    assert!(ok && out.contains("3 put(s), 1 delete(s)"), "{out}");
    let (ok, out) = cli(&["kv", "delete-range", "b2", "b3"]);
    assert!(ok, "{out}");
    let (ok, out) = cli(&["kv", "scan", "b", "c"]);
    assert!(
        ok && out.contains("b1\tone") && !out.contains("b2") && out.contains("b3\tthree"),
        "{out}"
    );
    let (ok, out) = cli(&["kv", "txn", "get", "t1", "put", "t1", "v1", "put", "t2", "v2"]);
    assert!(ok && out.contains("t1\t(absent)") && out.contains("committed at"), "{out}");
    let (ok, out) = cli(&["kv", "txn", "get", "t1", "get", "t2"]);
    assert!(ok && out.contains("t1\tv1") && out.contains("t2\tv2"), "{out}");
    let (ok, out) = cli(&["kv", "txn", "put", "t1"]);
    assert!(!ok && out.trim() == "error: `put` needs a value after the key", "{out}");
    let (ok, out) = cli(&["kv", "--pd", "127.0.0.1:1", "get", "x"]);
    assert!(!ok && out.trim().starts_with("error: cannot connect to 127.0.0.1:1"), "{out}");
    assert!(out.trim().lines().count() == 1 && !out.contains("panicked"), "{out}");

    let status = server.terminate();
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    let server = Server::start(dir.path(), &[]);
    let (ok, out) = cli(&["kv", "get", "greeting"]);
    assert!(ok && out.contains("bye"), "{out}");
    let (ok, out) = cli(&["ctl", "regions"]);
    assert!(ok && out.contains("9 Region(s)"), "splits survive restart: {out}");
    drop(server);
}

/// `scandium bench` runs every workload with both clients (timestamps and wake-ups with tikv-client
/// only); afterwards every key still reads back through `tikv-client` (so no run left
/// the store unreadable) and holds the value shape the workload writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_runs_every_workload_with_both_clients() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let server = Server::start(dir.path(), &["--data-dir", data, "--addr", "127.0.0.1:0"]);
    let runs: &[&[&str]] = &[
        &["--workload", "put"],
        &["--workload", "get"],
        &["--workload", "txn", "--txn-keys", "2"],
        &["--workload", "txn", "--txn-keys", "1", "--one-pc"],
        &["--workload", "txn", "--txn-keys", "3", "--async-commit"],
        &["--workload", "txn", "--txn-keys", "2", "--pessimistic"],
    ];
    for client in ["batch", "tikv"] {
        for run in runs {
            let mut args = vec!["bench", "--pd", &server.addr, "--client", client];
            args.extend_from_slice(&["--clients", "8", "--duration", "1", "--keys", "300"]);
            args.extend_from_slice(run);
            let (ok, out) = cli(&args);
            assert!(ok, "{args:?}: {out}");
            let count = |name: &str| -> u64 {
                let field = out.split_whitespace().find_map(|w| w.strip_prefix(name));
                field.and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{name} in {out}"))
            };
            if run[1] == "txn" {
                let (commits, aborts) = (count("commits="), count("aborts="));
                assert!(commits > 0 && aborts * 2 < commits, "{args:?}: {out}");
            } else {
                let (ops, errors) = (count("ops="), count("errors="));
                assert!(ops > 0 && errors == 0, "{args:?}: {out}");
            }
        }
    }
    // Timestamps only, through tikv-client (the batch client does not ask for them).
    let args = ["bench", "--pd", &server.addr, "--workload", "tso", "--duration", "1"];
    let (ok, out) = cli(&args);
    let field = |name: &str| out.split_whitespace().find_map(|w| w.strip_prefix(name));
    let ops: u64 = field("ops=").and_then(|n| n.parse().ok()).unwrap_or_default();
    assert!(ok && ops > 0 && field("errors=") == Some("0"), "{out}");
    assert!(field("longest_gap_us=").is_some(), "{out}");
    let (ok, out) = cli(&["bench", "--pd", &server.addr, "--workload", "tso", "--client", "batch"]);
    assert!(!ok && out.contains("--workload tso goes through tikv-client"), "{out}");
    // Writes to sleeping Regions: three rounds over five Regions, each once all sleep.
    let (ok, out) = cli(&["bench", "--pd", &server.addr, "--workload", "wake", "--keys", "5"]);
    assert!(ok && out.contains("first write, Region asleep: n=15 "), "{out}");
    assert!(out.contains("waking costs p50_us="), "{out}");
    let config = tikv_client::Config::default().with_timeout(Duration::from_secs(10));
    let txn_client =
        tikv_client::TransactionClient::new_with_config(vec![server.addr.clone()], config)
            .await
            .unwrap();
    let mut snapshot = txn_client.snapshot(
        txn_client.current_timestamp().await.unwrap(),
        tikv_client::TransactionOptions::new_optimistic(),
    );
    for i in 0..300u64 {
        let key = format!("bench{i:012}").into_bytes();
        let value = snapshot.get(key).await.unwrap().expect("every key was preloaded");
        assert_eq!(value.len(), 100, "key {i}");
    }
    drop(server);
}

/// A bad configuration is refused with a clear message, not a panic.
#[test]
fn bad_configuration_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    for (setting, message) in [
        ("raft_tick_ms = 0", "raft_tick_ms: must be between 1 and 10000, not 0"),
        // Once accepted, and then a panic in the GC task while the node served on.
        ("gc_interval_secs = 0", "gc_interval_secs: must be between 1 and 86400, not 0"),
    ] {
        std::fs::write(&config, format!("{setting}\n")).unwrap();
        let (ok, out) = cli(&["server", "--config", config.to_str().unwrap()]);
        assert!(!ok && out.contains(message), "{setting}: {out}");
        assert!(!out.contains("panicked"), "{out}");
    }
    let (ok, out) =
        cli(&["server", "--addr", "not-an-address", "--data-dir", dir.path().to_str().unwrap()]);
    assert!(!ok && out.contains("invalid setting addr: must be HOST:PORT"), "{out}");
    let (ok, out) =
        cli(&["server", "--addr", "256.0.0.1:1", "--data-dir", dir.path().to_str().unwrap()]);
    assert!(!ok && out.contains("cannot listen"), "{out}");
}

/// A disk below its reserve refuses writes that add data (puts, compare-and-swap,
/// prewrites) with one clear error through `tikv-client`, while reads and deletes go on;
/// with space again, writes are accepted. "Below the reserve" is made by
/// restarting the node with a reserve larger than any disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_and_keeps_serving_reads() {
    use tikv_client::{TransactionClient, TransactionOptions};
    let dir = tempfile::tempdir().unwrap();
    let addr = support::free_addr();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let server = Server::start(dir.path(), &["--addr", &addr, "--data-dir", data]);
    let raw = client(&addr).await;
    raw.put("kept".to_owned(), "v1".to_owned()).await.unwrap();
    raw.put("doomed".to_owned(), "v1".to_owned()).await.unwrap();
    let txns = TransactionClient::new(vec![addr.clone()]).await.unwrap();
    let mut txn = txns.begin_optimistic().await.unwrap();
    txn.put("account".to_owned(), "100".to_owned()).await.unwrap();
    txn.commit().await.unwrap();
    drop(server);

    let full = dir.path().join("full.toml");
    std::fs::write(&full, "reserve_space_bytes = 9000000000000000000\n").unwrap();
    let config = full.to_str().unwrap();
    let server =
        Server::start(dir.path(), &["--addr", &addr, "--data-dir", data, "--config", config]);
    let raw = client(&addr).await;
    let refused =
        raw.put("new".to_owned(), "v".to_owned()).await.expect_err("a full disk refuses a put");
    let message = format!("{refused:?}");
    assert!(message.contains("disk full on store"), "a clear error: {message}");
    assert!(message.contains("writes are refused until space is freed"), "{message}");
    let cas =
        raw.with_atomic_for_cas().compare_and_swap("kept".to_owned(), None, "x".to_owned()).await;
    assert!(cas.is_err(), "compare-and-swap adds data: refused");
    assert_eq!(raw.get("kept".to_owned()).await.unwrap(), Some(b"v1".to_vec()), "reads go on");
    raw.delete("doomed".to_owned()).await.expect("deletes free space: accepted");
    assert_eq!(raw.get("doomed".to_owned()).await.unwrap(), None);
    let txns = TransactionClient::new(vec![addr.clone()]).await.unwrap();
    let mut reader =
        txns.begin_with_options(TransactionOptions::new_optimistic().read_only()).await.unwrap();
    assert_eq!(reader.get("account".to_owned()).await.unwrap(), Some(b"100".to_vec()));
    let mut writer = txns.begin_optimistic().await.unwrap();
    writer.put("account".to_owned(), "50".to_owned()).await.unwrap();
    let refused = writer.commit().await.expect_err("a prewrite adds data: refused");
    assert!(format!("{refused:?}").contains("disk full on store"), "{refused:?}");
    drop(server);

    let server = Server::start(dir.path(), &["--addr", &addr, "--data-dir", data]);
    let raw = client(&addr).await;
    raw.put("new".to_owned(), "v".to_owned()).await.expect("space again: writes accepted");
    let txns = TransactionClient::new(vec![addr.clone()]).await.unwrap();
    let mut reader = txns.begin_optimistic().await.unwrap();
    assert_eq!(
        reader.get("account".to_owned()).await.unwrap(),
        Some(b"100".to_vec()),
        "the refused transaction left nothing"
    );
    reader.rollback().await.unwrap();
    drop(server);
}

/// Runs `scandium server ARGS` with no RUST_LOG until it serves, stops it with SIGTERM,
/// and returns every line it wrote to stderr.
fn server_stderr(dir: &std::path::Path, args: &[&str]) -> Vec<String> {
    use std::io::{BufRead, BufReader};
    let addr = support::free_addr();
    let mut child = std::process::Command::new(support::BINARY)
        .args(["server", "--addr", &addr])
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (sender, lines) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = sender.send(line);
        }
    });
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("scandium serving")) {
        seen.push(lines.recv_timeout(Duration::from_secs(30)).expect("the server says it serves"));
    }
    std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(child.wait().unwrap().success());
    reader.join().unwrap();
    seen.extend(lines.try_iter());
    seen
}

/// A node's log is quiet unless asked: starting, serving and stopping take a line each
/// (the first start also says it bootstrapped a cluster), with no library chatter;
/// `--log-format json` makes every line a JSON object; `--log-level debug` shows more.
#[test]
fn logs_are_quiet_by_default_and_json_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let text = server_stderr(dir.path(), &[]);
    assert!(text.len() <= 4, "a quiet start and stop: {text:#?}");
    assert!(text.iter().any(|l| l.starts_with("scandium serving on 127.0.0.1:")), "{text:#?}");
    assert!(text.iter().any(|l| l.contains("shutting down")), "{text:#?}");
    assert!(!text.iter().any(|l| l.contains("fjall") || l.contains("lsm_tree")), "{text:#?}");

    let json = server_stderr(dir.path(), &["--log-format", "json"]);
    for line in &json {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(value["level"].is_string() && value["fields"]["message"].is_string(), "{line}");
    }
    let serving = json.iter().find(|l| l.contains("scandium serving")).unwrap();
    assert!(serving.contains("\"addr\":\"127.0.0.1:"), "{serving}");

    let debug = server_stderr(dir.path(), &["--log-level", "debug"]);
    assert!(debug.len() > text.len(), "debug shows more: {debug:#?}");
}

/// `scandium cert` makes a CA and node and client certificates; a node started with them
/// serves TLS only: the tools with the same flags and tikv-client with `with_security`
/// work through it, and the tools without them are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_node_serves_the_tools_and_tikv_client_with_certificates_from_scandium_cert() {
    let dir = tempfile::tempdir().unwrap();
    let certs = scandium_certs(dir.path(), &["127.0.0.1", "localhost"], "root");
    let (ok, out) = cli(&["cert", "create-ca", "--dir", &certs]);
    assert!(!ok && out.contains("exists; pass --overwrite"), "a CA is not replaced: {out}");
    let path = |file: &str| format!("{certs}/{file}");
    let (ca, node_cert, node_key) = (path("ca.pem"), path("node.pem"), path("node.key"));
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let tls = ["--ca", &ca, "--cert", &node_cert, "--key", &node_key];
    let args = [&["--data-dir", data, "--addr", "127.0.0.1:0"][..], &tls[..]].concat();
    let server = Server::start(dir.path(), &args);
    let addr = server.addr.as_str();
    let (client_cert, client_key) = (path("client.root.pem"), path("client.root.key"));
    let with_tls = |args: &[&str]| -> (bool, String) {
        let flags = ["--pd", addr, "--ca", &ca, "--cert", &client_cert, "--key", &client_key];
        cli(&[&args[..1], &flags[..], &args[1..]].concat())
    };
    let (ok, out) = with_tls(&["kv", "put", "secret", "value"]);
    assert!(ok, "{out}");
    let (ok, out) = with_tls(&["kv", "get", "secret"]);
    assert!(ok && out.contains("value"), "{out}");
    let (ok, out) = with_tls(&["ctl", "stores"]);
    assert!(ok && out.contains("Up"), "{out}");
    // bench reads the nodes' /health over HTTPS for the server's figures.
    let (ok, out) = with_tls(&["bench", "--duration", "1", "--clients", "2"]);
    assert!(ok && out.contains("errors=0") && out.contains("server cpu="), "{out}");
    let (ok, out) = cli(&["kv", "--pd", addr, "get", "secret"]);
    assert!(!ok, "a plaintext client was served: {out}");
    let config = tikv_client::Config::default()
        .with_security(&ca, &client_cert, &client_key)
        .with_timeout(Duration::from_secs(5));
    let raw =
        tikv_client::RawClient::new_with_config(vec![server.addr.clone()], config).await.unwrap();
    assert_eq!(raw.get(b"secret".to_vec()).await.unwrap(), Some(b"value".to_vec()));
    // By DNS name too: the node certificate names `localhost`.
    let port = server.addr.rsplit_once(':').unwrap().1;
    let config = tikv_client::Config::default()
        .with_security(&ca, &client_cert, &client_key)
        .with_timeout(Duration::from_secs(5));
    let by_name =
        tikv_client::RawClient::new_with_config(vec![format!("localhost:{port}")], config)
            .await
            .unwrap();
    assert_eq!(by_name.get(b"secret".to_vec()).await.unwrap(), Some(b"value".to_vec()));
    let (ok, out) = with_tls(&["ctl", "members"]);
    assert!(ok && out.contains(&format!("https://{addr}")), "members say https: {out}");
    // Grants: the admin lets `app` read V1 raw keys and turns authorisation on; `app`
    // reads, may not write, and may not see the grants; revoked, it may not read.
    let (ok, out) = cli(&["cert", "create-client", "app", "--dir", &certs]);
    assert!(ok, "{out}");
    let (app_cert, app_key) = (path("client.app.pem"), path("client.app.key"));
    let as_app = |args: &[&str]| -> (bool, String) {
        let flags = ["--pd", addr, "--ca", &ca, "--cert", &app_cert, "--key", &app_key];
        cli(&[&args[..1], &flags[..], &args[1..]].concat())
    };
    let (ok, out) = with_tls(&["ctl", "grant", "app", "--raw-v1", "read"]);
    assert!(ok && out.contains("app: V1 raw: read"), "{out}");
    let (ok, out) = with_tls(&["ctl", "grant", "app", "--keyspace", "nope=read"]);
    assert!(!ok && out.contains("keyspace \"nope\" does not exist"), "{out}");
    let (ok, out) = with_tls(&["ctl", "authorization", "on"]);
    assert!(ok, "{out}");
    let (ok, out) = as_app(&["kv", "get", "secret"]);
    assert!(ok && out.contains("value"), "{out}");
    let (ok, out) = as_app(&["kv", "put", "secret", "stolen"]);
    assert!(!ok && out.contains("PERMISSION_DENIED"), "{out}");
    let (ok, out) = as_app(&["ctl", "grants"]);
    assert!(!ok, "a client read the grants: {out}");
    let (ok, out) = with_tls(&["ctl", "grants"]);
    assert!(ok && out.contains("authorization: on") && out.contains("app: V1 raw: read"), "{out}");
    let (ok, out) = with_tls(&["ctl", "revoke", "app"]);
    assert!(ok, "{out}");
    let (ok, out) = as_app(&["kv", "get", "secret"]);
    assert!(!ok && out.contains("no grant"), "{out}");
    let (ok, out) = with_tls(&["kv", "get", "secret"]);
    assert!(ok && out.contains("value"), "the admin reads, and nothing was overwritten: {out}");
    // Given only some of the three, a node refuses to start and says why.
    let (ok, out) = cli(&["server", "--data-dir", data, "--addr", "127.0.0.1:0", "--ca", &ca]);
    assert!(!ok && out.contains("must be set together"), "{out}");
    drop(server);
}

/// A TLS node under hostile connections: plaintext HTTP and plaintext gRPC to its port
/// are closed at once, TLS to a plaintext port fails in bounded time, a handshake that
/// never finishes is cut off after the handshake timeout, and 10,000 connections that
/// never say a word do not stop a new client from being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_node_shrugs_off_plaintext_and_idle_connections() {
    use std::io::{Read as _, Write as _};
    let dir = tempfile::tempdir().unwrap();
    let certs = scandium_certs(dir.path(), &["127.0.0.1"], "app");
    let path = |file: &str| format!("{certs}/{file}");
    let (ca, cert, key) = (path("ca.pem"), path("client.app.pem"), path("client.app.key"));
    // Room for the idle connections (the server, a child, inherits the limit).
    let idle = raise_open_file_limit(10_000);
    let data = dir.path().join("data");
    // A handshake timeout past the time it takes to open the idle connections (seconds,
    // on a busy machine): they must all be waiting while the new client is served.
    let settings = dir.path().join("scandium.toml");
    std::fs::write(&settings, "[security]\nhandshake-timeout-ms = 20000\n").unwrap();
    let settings = settings.to_str().unwrap();
    let args = [
        "--data-dir",
        data.to_str().unwrap(),
        "--addr",
        "127.0.0.1:0",
        "--config",
        settings,
        "--ca",
        &ca,
    ];
    let node = [path("node.pem"), path("node.key")];
    let server =
        Server::start(dir.path(), &[&args[..], &["--cert", &node[0], "--key", &node[1]]].concat());
    let addr = server.addr.clone();
    let closed_within = |mut stream: std::net::TcpStream, limit: Duration| {
        stream.set_read_timeout(Some(limit)).unwrap();
        let mut buffer = [0u8; 1024];
        // Whatever the server sends first (an alert), then the end of the connection.
        loop {
            match stream.read(&mut buffer) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    };
    // Plaintext HTTP/1.1 and the HTTP/2 preface (gRPC without TLS).
    for hello in
        [&b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"[..], b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]
    {
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        stream.write_all(hello).unwrap();
        assert!(closed_within(stream, Duration::from_secs(2)), "plaintext was not cut off");
    }
    let (ok, out) = cli(&["kv", "--pd", &addr, "get", "k"]);
    assert!(!ok, "a plaintext client was served: {out}");
    // TLS to a plaintext port fails, and does not hang.
    let plain_dir = tempfile::tempdir().unwrap();
    let plain_data = plain_dir.path().join("data");
    let plain = Server::start(
        plain_dir.path(),
        &["--data-dir", plain_data.to_str().unwrap(), "--addr", "127.0.0.1:0"],
    );
    let began = Instant::now();
    let (ok, out) =
        cli(&["kv", "--pd", &plain.addr, "--ca", &ca, "--cert", &cert, "--key", &key, "get", "k"]);
    let refused_in = began.elapsed();
    assert!(!ok && refused_in < Duration::from_secs(30), "TLS to a plaintext port: {out}");
    drop(plain);
    // Connections that never start a handshake.
    let opening = Instant::now();
    let silent: Vec<std::net::TcpStream> =
        (0..idle).map(|_| std::net::TcpStream::connect(&addr).unwrap()).collect();
    let opened_in = opening.elapsed();
    // All of them still waiting, or the test below shows nothing.
    assert!(opened_in < Duration::from_secs(15), "{idle} connections took {opened_in:?} to open");
    let began = Instant::now();
    let config = tikv_client::Config::default()
        .with_security(&ca, &cert, &key)
        .with_timeout(Duration::from_secs(5));
    let raw = tikv_client::RawClient::new_with_config(vec![addr.clone()], config).await.unwrap();
    raw.put(b"k".to_vec(), b"v".to_vec()).await.unwrap();
    let served = began.elapsed();
    assert!(
        served < Duration::from_secs(5),
        "a client waited {served:?} behind {idle} idle connections"
    );
    // The server cuts them off once the handshake timeout has passed.
    let first = silent.into_iter().next().unwrap();
    assert!(closed_within(first, Duration::from_secs(30)), "an idle connection was kept");
    eprintln!(
        "TLS to plaintext refused in {refused_in:?}; {idle} idle connections opened in \
         {opened_in:?}; a new client served in {served:?}"
    );
    drop(server);
}

/// A CA, a node certificate for `hosts` and a client certificate `client`, made with
/// `scandium cert` in `dir/certs`, which it returns.
fn scandium_certs(dir: &std::path::Path, hosts: &[&str], client: &str) -> String {
    let certs = dir.join("certs").to_str().unwrap().to_string();
    let node = [&["create-node"][..], hosts].concat();
    for args in [&["create-ca"][..], &node, &["create-client", client]] {
        let (ok, out) = cli(&[&["cert"][..], args, &["--dir", &certs]].concat());
        assert!(ok, "{out}");
    }
    certs
}

/// Raises this process's soft limit on open files to fit `wanted` connections (and the
/// server's, a child that inherits it), up to the hard limit; returns how many fit.
fn raise_open_file_limit(wanted: u64) -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    let hard = limit.maximum.unwrap_or(u64::MAX);
    limit.current = Some(hard.min(wanted + 2_000));
    let _ = setrlimit(Resource::Nofile, limit);
    let current = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    wanted.min(current.saturating_sub(2_000))
}

/// tikv-python (`TLSConfig`) against a 3-node TLS cluster, addressed by IP and by DNS
/// name. Needs
/// Python with `tikv-python` (`.ci/run` installs it); skipped without, unless
/// `SCANDIUM_REQUIRE_TIKV_PYTHON` is set.
#[test]
fn tikv_python_works_over_tls_by_ip_and_by_name() {
    let python_has_tikv = std::process::Command::new("python3")
        .args(["-c", "import tikv"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !python_has_tikv {
        assert!(
            std::env::var_os("SCANDIUM_REQUIRE_TIKV_PYTHON").is_none(),
            "tikv-python is required but python3 cannot import tikv"
        );
        eprintln!("skipped: python3 cannot import tikv (pip install tikv-python)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let certs = scandium_certs(dir.path(), &["127.0.0.1", "localhost"], "py");
    let path = |file: &str| format!("{certs}/{file}");
    let (node_cert, node_key, ca) = (path("node.pem"), path("node.key"), path("ca.pem"));
    let tls = ["--ca", ca.as_str(), "--cert", &node_cert, "--key", &node_key];
    let mut servers: Vec<Server> = Vec::new();
    for i in 0..3 {
        let data = dir.path().join(format!("data{i}"));
        let mut args = vec!["--data-dir", data.to_str().unwrap(), "--addr", "127.0.0.1:0"];
        let first = servers.first().map(|s| s.addr.clone());
        if let Some(first) = &first {
            args.extend(["--join", first.as_str()]);
        }
        servers.push(Server::start(dir.path(), &[&args[..], &tls[..]].concat()));
    }
    let ports: Vec<&str> = servers.iter().map(|s| s.addr.rsplit_once(':').unwrap().1).collect();
    let ports = ports.join(",");
    let script = r#"
import sys, tikv
ca, cert, key, ports = sys.argv[1:5]
ports = ports.split(",")
tls = tikv.TLSConfig(ca=ca, cert=cert, key=key)
for host in ("127.0.0.1", "localhost"):
    with tikv.RawClient([f"{host}:{port}" for port in ports], tls=tls, timeout=10) as client:
        for i in range(20):
            client.put(b"py-%s-%d" % (host.encode(), i), b"over tls")
        for i in range(20):
            assert client.get(b"py-%s-%d" % (host.encode(), i)) == b"over tls", host
# Each node alone, by name: any node answers as the placement endpoint.
for port in ports:
    with tikv.RawClient([f"localhost:{port}"], tls=tls, timeout=10) as client:
        assert client.get(b"py-127.0.0.1-7") == b"over tls", port
try:
    with tikv.RawClient([f"127.0.0.1:{ports[0]}"], timeout=3) as client:
        client.get(b"py-localhost")
    print("PLAINTEXT SERVED")
except Exception:
    print("plaintext refused")
print("ok")
"#;
    let output = std::process::Command::new("python3")
        .args(["-c", script, &ca, &path("client.py.pem"), &path("client.py.key"), &ports])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && text.contains("plaintext refused\nok"), "{text}");
    drop(servers);
}
