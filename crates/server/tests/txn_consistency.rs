//! Consistency under concurrency: a bank whose total never changes, lock waits with
//! deadlock detection, and GC that stops an overwritten key's versions from piling up.

mod common;

use common::{context_for, start_with, tikv_grpc, wait_for};
use scandium_protocol::kvrpcpb;
use scandium_server::Node;
use scandium_storage::Cf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tikv_client::{TransactionClient, TransactionOptions};

const ACCOUNTS: usize = 8;
const INITIAL: u64 = 1000;

async fn client(node: &Node) -> TransactionClient {
    let config = tikv_client::Config::default().with_timeout(Duration::from_secs(5));
    TransactionClient::new_with_config(vec![node.advertise_addr().to_string()], config)
        .await
        .unwrap()
}

fn account(i: usize) -> Vec<u8> {
    format!("acct{i}").into_bytes()
}

fn amount(value: Option<Vec<u8>>) -> u64 {
    u64::from_be_bytes(value.expect("account exists").try_into().expect("8 bytes"))
}

/// Moves money between random accounts from several clients at once, half of them
/// optimistic and half pessimistic (with async commit and 1PC in the mix), while readers
/// check that every snapshot sees the same total. Failed transfers (conflicts) are
/// rolled back and retried with new random accounts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_total_never_changes() {
    bank(false).await;
}

/// The same bank while the accounts' Region is split again and again under the
/// transfers: reads and commits racing a split are refused with a Region error and
/// retried by the client, never applied outside their Region.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_total_survives_splits_under_load() {
    bank(true).await;
}

async fn bank(split_while_running: bool) {
    let dir = tempfile::tempdir().unwrap();
    let node = start_with(dir.path(), |_| {}).await;
    let client = client(&node).await;
    let mut setup = client.begin_optimistic().await.unwrap();
    for i in 0..ACCOUNTS {
        setup.put(account(i), INITIAL.to_be_bytes().to_vec()).await.unwrap();
    }
    setup.commit().await.unwrap();

    // BANK_SEED=<seed> replays a run's choices (thread timing still varies).
    let seed: u64 = match std::env::var("BANK_SEED") {
        Ok(seed) => seed.parse().expect("BANK_SEED is a number"),
        Err(_) => rand::random(),
    };
    eprintln!("bank seed {seed} (replay with BANK_SEED={seed})");
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for worker in 0..6u64 {
        let (client, stop, committed) = (client.clone(), stop.clone(), committed.clone());
        tasks.push(tokio::spawn(async move {
            use rand::{Rng, SeedableRng};
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed + worker);
            let options = match worker % 4 {
                0 => TransactionOptions::new_optimistic(),
                1 => TransactionOptions::new_pessimistic(),
                2 => TransactionOptions::new_optimistic().use_async_commit(),
                _ => TransactionOptions::new_pessimistic().try_one_pc(),
            };
            while !stop.load(Ordering::Relaxed) {
                let (from, to) = (rng.gen_range(0..ACCOUNTS), rng.gen_range(0..ACCOUNTS));
                if from == to {
                    continue;
                }
                let mut txn = client.begin_with_options(options.clone()).await.unwrap();
                let result = async {
                    let a = amount(txn.get_for_update(account(from)).await?);
                    let b = amount(txn.get_for_update(account(to)).await?);
                    let moved = rng.gen_range(0..=a.min(50));
                    txn.put(account(from), (a - moved).to_be_bytes().to_vec()).await?;
                    txn.put(account(to), (b + moved).to_be_bytes().to_vec()).await?;
                    txn.commit().await
                }
                .await;
                match result {
                    Ok(_) => {
                        committed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        let _ = txn.rollback().await;
                    }
                }
            }
        }));
    }
    let splitter = split_while_running.then(|| {
        let (splitter, committed) = (node.splitter().clone(), committed.clone());
        tokio::spawn(async move {
            // Each split waits for ten more transfers, so every split lands among them.
            for (n, i) in [4, 2, 6, 1, 3, 5, 7].into_iter().enumerate() {
                let after = 10 * (n + 1);
                wait_for("transfers between splits", Duration::from_secs(60), || {
                    committed.load(Ordering::Relaxed) >= after
                })
                .await;
                splitter.split_at(account(i)).await.expect("split");
            }
        })
    });
    // Readers check snapshots until the transfers have made progress and the splits are
    // done. The run is bounded by progress, not by a fixed window: tikv-client 0.4 never
    // waits for a lock on the server (wait_timeout 0), so two transactions that each hold
    // a key the other wants (pessimistic locks, or an optimistic prewrite split by Region)
    // both back off until the client gives up, about 4 s, before either moves again.
    const TRANSFERS: usize = 100;
    const SNAPSHOTS: usize = 50;
    let (mut snapshots, mut unresolved) = (0, 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let splits_done = splitter.as_ref().is_none_or(|s| s.is_finished());
        let done = committed.load(Ordering::Relaxed);
        if splits_done && done >= TRANSFERS && snapshots >= SNAPSHOTS {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no progress (seed {seed}): {done} transfers committed, {snapshots} snapshots \
             checked, {unresolved} reads gave up on a lock, splits done: {splits_done}"
        );
        let ts = client.current_timestamp().await.unwrap();
        let mut snapshot = client.snapshot(ts, TransactionOptions::new_optimistic());
        let keys: Vec<Vec<u8>> = (0..ACCOUNTS).map(account).collect();
        let pairs: Vec<_> = match snapshot.batch_get(keys).await {
            Ok(pairs) => pairs.collect(),
            // A reader can give up on a lock held through such a standoff (the client
            // resolves for about 1.5 s); that is an error to the reader, never a wrong
            // answer.
            Err(tikv_client::Error::ResolveLockError(_)) => {
                unresolved += 1;
                continue;
            }
            Err(e) => panic!("snapshot read failed: {e}"),
        };
        assert_eq!(pairs.len(), ACCOUNTS);
        let total: u64 = pairs.into_iter().map(|p| amount(Some(p.1))).sum();
        assert_eq!(
            total,
            INITIAL * ACCOUNTS as u64,
            "snapshot {snapshots} sees a consistent total (seed {seed})"
        );
        snapshots += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    if let Some(splitter) = splitter {
        splitter.await.unwrap();
        let regions = node.registry().overlapping(&account(0), &account(ACCOUNTS));
        assert_eq!(regions.len(), ACCOUNTS, "every account ended up in its own Region");
    }
    let done = committed.load(Ordering::Relaxed);
    assert!(
        unresolved <= snapshots,
        "most reads succeed: {unresolved} gave up, {snapshots} checked"
    );
    eprintln!("{done} transfers committed, {snapshots} snapshots checked, {unresolved} reads gave up on a lock");
    node.stop().await;
}

fn lock_request(
    node: &Node,
    key: &[u8],
    start: u64,
    wait_ms: i64,
) -> kvrpcpb::PessimisticLockRequest {
    kvrpcpb::PessimisticLockRequest {
        context: Some(context_for(node, key)),
        mutations: vec![kvrpcpb::Mutation {
            op: kvrpcpb::Op::PessimisticLock as i32,
            key: key.to_vec(),
            ..Default::default()
        }],
        primary_lock: key.to_vec(),
        start_version: start,
        lock_ttl: 20_000,
        for_update_ts: start,
        wait_timeout: wait_ms,
        ..Default::default()
    }
}

/// A lock request with a positive wait_timeout waits for the holder to finish; one that
/// would close a cycle of waiters gets a deadlock error; with wait_timeout 0 it fails at
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_waits_and_deadlocks() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_with(dir.path(), |_| {}).await;
    let mut tikv = tikv_grpc(&node).await;
    let ok = |resp: kvrpcpb::PessimisticLockResponse| {
        resp.errors.is_empty() && resp.region_error.is_none()
    };
    assert!(ok(tikv
        .kv_pessimistic_lock(lock_request(&node, b"ka", 10, 0))
        .await
        .unwrap()
        .into_inner()));
    assert!(ok(tikv
        .kv_pessimistic_lock(lock_request(&node, b"kb", 20, 0))
        .await
        .unwrap()
        .into_inner()));

    // Immediate failure without waiting.
    let resp =
        tikv.kv_pessimistic_lock(lock_request(&node, b"ka", 20, 0)).await.unwrap().into_inner();
    assert!(resp.errors[0].locked.is_some());

    // 20 waits for 10 on ka...
    let mut waiter = tikv.clone();
    let request = lock_request(&node, b"ka", 20, 1000);
    let waiting =
        tokio::spawn(
            async move { waiter.kv_pessimistic_lock(request).await.unwrap().into_inner() },
        );
    let waits = node.storage().txn().lock_waits.clone();
    wait_for("20 to wait for ka", Duration::from_secs(5), || {
        waits.is_waiting(scandium_types::TimeStamp(20))
    })
    .await;
    // ...so 10 waiting for 20 on kb would deadlock.
    let resp =
        tikv.kv_pessimistic_lock(lock_request(&node, b"kb", 10, 1000)).await.unwrap().into_inner();
    assert!(resp.errors[0].deadlock.is_some(), "{resp:?}");
    // 10 rolls back; 20's wait ends with the lock.
    let rollback = kvrpcpb::PessimisticRollbackRequest {
        context: Some(context_for(&node, b"ka")),
        start_version: 10,
        for_update_ts: 10,
        keys: vec![b"ka".to_vec()],
    };
    tikv.kv_pessimistic_rollback(rollback).await.unwrap();
    let resp = waiting.await.unwrap();
    assert!(ok(resp.clone()), "the waiter got the lock: {resp:?}");
    node.stop().await;
}

/// After the safe point passes, an overwritten key keeps one version; a lock left below
/// the safe point by a vanished client is resolved first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_stops_versions_from_piling_up() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_with(dir.path(), |c| c.gc_interval_secs = 1).await;
    let client = client(&node).await;
    for i in 0..50u32 {
        let mut txn = client.begin_optimistic().await.unwrap();
        txn.put(b"hot".to_vec(), i.to_be_bytes().to_vec()).await.unwrap();
        txn.commit().await.unwrap();
    }
    // An orphan lock of an expired transaction.
    let mut tikv = tikv_grpc(&node).await;
    let start = client.current_timestamp().await.unwrap();
    let prewrite = kvrpcpb::PrewriteRequest {
        context: Some(context_for(&node, b"orphan")),
        mutations: vec![kvrpcpb::Mutation {
            op: kvrpcpb::Op::Put as i32,
            key: b"orphan".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        }],
        primary_lock: b"orphan".to_vec(),
        start_version: tikv_client::TimestampExt::version(&start),
        lock_ttl: 1,
        ..Default::default()
    };
    assert!(tikv.kv_prewrite(prewrite).await.unwrap().into_inner().errors.is_empty());
    let versions = |engine: &scandium_storage::EngineRef| {
        let (from, to) = scandium_types::mvcc::versions_range(b"hot");
        engine.snapshot().scan(Cf::Write, &from, &to, false).count()
    };
    let engine = node.engine().clone();
    assert_eq!(versions(&engine), 50);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(client.gc(client.current_timestamp().await.unwrap()).await.unwrap());
    wait_for("GC to remove old versions and the orphan lock", Duration::from_secs(15), || {
        versions(&engine) == 1 && engine.get(Cf::Lock, b"orphan").unwrap().is_none()
    })
    .await;
    let mut txn = client.begin_optimistic().await.unwrap();
    assert_eq!(txn.get(b"hot".to_vec()).await.unwrap(), Some(49u32.to_be_bytes().to_vec()));
    txn.rollback().await.unwrap();
    node.stop().await;
}

/// Requests cancelled at any point (their client went away) leave the in-memory indexes
/// true: every lock storage holds is in the lock index, every cached newest record equals
/// the Latest CF's, and the Latest CF matches the Write CF. A cancelled request's change
/// still completes under its latches, so the next command on its keys sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_requests_leave_the_indexes_true() {
    async fn turns(n: usize) {
        for _ in 0..n {
            tokio::task::yield_now().await;
        }
    }
    use rand::{Rng, SeedableRng};
    let dir = tempfile::tempdir().unwrap();
    let node = start_with(dir.path(), |_| {}).await;
    let storage = node.storage().clone();
    let engine = node.engine().clone();
    let seed: u64 = match std::env::var("CANCEL_SEED") {
        Ok(seed) => seed.parse().expect("CANCEL_SEED is a number"),
        Err(_) => rand::random(),
    };
    eprintln!("cancellation seed {seed} (replay with CANCEL_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // A key per round: a commit cancelled before it was proposed leaves its lock behind.
    let keys: Vec<Vec<u8>> = (0..300).map(|i| format!("cancel{i:03}").into_bytes()).collect();
    let mut cancelled = 0;
    for (round, key) in (0u64..).zip(keys.iter().cloned()) {
        let start = 1_000 + round * 10;
        let prewrite = kvrpcpb::PrewriteRequest {
            context: Some(context_for(&node, &key)),
            mutations: vec![kvrpcpb::Mutation {
                op: kvrpcpb::Op::Put as i32,
                key: key.clone(),
                value: round.to_be_bytes().to_vec(),
                ..Default::default()
            }],
            primary_lock: key.clone(),
            start_version: start,
            lock_ttl: 1,
            ..Default::default()
        };
        let commit = kvrpcpb::CommitRequest {
            context: Some(context_for(&node, &key)),
            start_version: start,
            keys: vec![key.clone()],
            commit_version: start + 5,
            ..Default::default()
        };
        // Half the requests are dropped after a random number of scheduler turns, if
        // unfinished.
        let patience = |rng: &mut rand::rngs::StdRng| {
            if rng.gen_bool(0.5) {
                rng.gen_range(0..8)
            } else {
                usize::MAX
            }
        };
        tokio::select! {
            biased;
            _ = storage.kv_prewrite(prewrite) => {}
            _ = turns(patience(&mut rng)) => cancelled += 1,
        }
        tokio::select! {
            biased;
            _ = storage.kv_commit(commit) => {}
            _ = turns(patience(&mut rng)) => cancelled += 1,
        }
        // A rollback record below the commit: written from a snapshot that missed a
        // cancelled commit, it would become the key's newest record in the Latest CF.
        let rollback = kvrpcpb::BatchRollbackRequest {
            context: Some(context_for(&node, &key)),
            start_version: start + 2,
            keys: vec![key.clone()],
            ..Default::default()
        };
        storage.kv_batch_rollback(rollback).await.expect("rollback");
    }
    eprintln!("{cancelled} of 600 prewrites and commits cancelled");
    assert!(cancelled > 0, "the test cancels some requests (seed {seed})");
    let indexes_true = || {
        let snapshot = engine.snapshot();
        let stored_locks: Vec<Vec<u8>> =
            snapshot.scan(Cf::Lock, b"", b"", false).map(|item| item.unwrap().0).collect();
        let indexed = storage.txn().lock_index.keys(b"", b"", usize::MAX, |_| true);
        let reader = scandium_txn::mvcc::MvccReader::new(&*snapshot);
        stored_locks.iter().all(|key| indexed.contains(key))
            && keys.iter().all(|key| {
                storage.txn().newest.get(key).is_none_or(|cached| {
                    cached == reader.newest_write(key).expect("stored newest record")
                })
            })
            && scandium_txn::mvcc::latest::verify(&*snapshot).is_ok()
    };
    wait_for("the indexes to agree with storage", Duration::from_secs(10), indexes_true).await;
    node.stop().await;
}

/// An async-commit or 1PC prewrite dropped once its proposal is under way keeps its
/// in-memory locks until it is applied: a read at a newer timestamp right after it either
/// meets the lock or sees the 1PC write, never the value from before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_async_prewrites_are_never_read_past() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_with(dir.path(), |_| {}).await;
    let (storage, placement) = (node.storage().clone(), node.placement().clone());
    for round in 0..40u64 {
        let key = format!("async-cancel{round:02}").into_bytes();
        let one_pc = round % 2 == 1;
        let start = placement.timestamp(1).await.unwrap();
        let prewrite = kvrpcpb::PrewriteRequest {
            context: Some(context_for(&node, &key)),
            mutations: vec![kvrpcpb::Mutation {
                op: kvrpcpb::Op::Put as i32,
                key: key.clone(),
                value: b"new".to_vec(),
                ..Default::default()
            }],
            primary_lock: key.clone(),
            start_version: start.0,
            lock_ttl: 20_000,
            use_async_commit: !one_pc,
            try_one_pc: one_pc,
            ..Default::default()
        };
        // Polled once (latches, memory locks, proposal), then dropped.
        tokio::select! {
            biased;
            _ = storage.kv_prewrite(prewrite) => {}
            _ = std::future::ready(()) => {}
        }
        let read_ts = placement.timestamp(1).await.unwrap();
        let get = kvrpcpb::GetRequest {
            context: Some(context_for(&node, &key)),
            key: key.clone(),
            version: read_ts.0,
        };
        match storage.kv_get(&get).await {
            Err(scandium_server::txn_error::Failure::Key(e)) if e.locked.is_some() => {}
            Ok(Some(value)) if one_pc => assert_eq!(value, b"new"),
            other => panic!("round {round} (1PC: {one_pc}): read past the prewrite: {other:?}"),
        }
    }
    node.stop().await;
}
