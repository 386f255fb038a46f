//! Commands driven by the simplest driver there is: one node that leads one Region, whose
//! proposals apply at once. What the server's and the simulator's drivers add (Raft,
//! networks, clocks) is tested with them; here, the commands' own sequencing.

use super::*;
use crate::actions::prewrite::{Mutation, MutationOp, PessimisticAction, TxnProps};
use crate::command::txn::{PessimisticLock, Prewrite};
use crate::node::NodeSettings;
use crate::{LockIndex, NewestCache};
use scandium_storage::{Cf, EngineRef, MemoryEngine};
use scandium_types::keyspace::ApiVersion;
use std::collections::BTreeSet;

const V1: ApiVersion = ApiVersion::V1;

struct Driver {
    node: Arc<TxnNode>,
    engine: EngineRef,
    woken: Arc<Recorded>,
    now: Clock,
}

/// Where a command stopped.
enum Stopped<T> {
    Done(CommandResult<T>),
    Waiting(Command<T>),
}

impl Driver {
    fn new() -> Driver {
        let engine: EngineRef = Arc::new(MemoryEngine::new());
        let woken = Arc::new(Recorded::default());
        let node = Arc::new(TxnNode::new(
            engine.clone(),
            Arc::new(LockIndex::default()),
            Arc::new(NewestCache::new(1 << 20)),
            NodeSettings::default(),
            woken.clone(),
        ));
        Driver { node, engine, woken, now: Clock { monotonic_ms: 1_000, wall_ms: 1_000_000 } }
    }

    /// Runs `command` until it is done or waits.
    fn run<T: Send + 'static>(&self, mut command: Command<T>) -> Stopped<T> {
        let next = command.start(self.now);
        self.carry_on(command, next)
    }

    fn resume<T: Send + 'static>(&self, mut command: Command<T>) -> Stopped<T> {
        let next = command.resume(Input::Woken, self.now);
        self.carry_on(command, next)
    }

    fn carry_on<T: Send + 'static>(
        &self,
        mut command: Command<T>,
        mut next: Next<T>,
    ) -> Stopped<T> {
        loop {
            let input = match next {
                Next::Done(result) => return Stopped::Done(result),
                Next::Effect(Effect::Wait { .. }) => return Stopped::Waiting(command),
                Next::Effect(Effect::Gate(_)) => {
                    Input::Gated(Scope { region: Region::default(), term: 1 })
                }
                Next::Effect(Effect::Propose(proposal)) => {
                    self.engine.write(proposal.batch).unwrap();
                    proposal.completion.applied();
                    Input::Applied
                }
                Next::Effect(Effect::Remote(call)) => {
                    let reply = self.done(super::local::local_call(&self.node, call));
                    Input::Remote(reply.unwrap())
                }
            };
            next = command.resume(input, self.now);
        }
    }

    fn done<T: Send + 'static>(&self, command: Command<T>) -> CommandResult<T> {
        match self.run(command) {
            Stopped::Done(result) => result,
            Stopped::Waiting(_) => panic!("the command waits"),
        }
    }

    fn woken(&self) -> BTreeSet<u64> {
        self.woken.take().into_iter().collect()
    }
}

fn raw_default() -> raw::RawTarget {
    raw::RawTarget { api: V1, cf: Cf::Raw }
}

#[test]
fn raw_writes_and_reads() {
    let d = Driver::new();
    let put = raw::put(&d.node, raw_default(), vec![(b"k".to_vec(), b"v".to_vec(), 0)]);
    d.done(put).unwrap();
    let got = d.done(raw::get(&d.node, raw_default(), b"k".to_vec())).unwrap();
    assert_eq!(got, Some(b"v".to_vec()));
    let swap = raw::compare_and_swap(
        &d.node,
        raw_default(),
        b"k".to_vec(),
        Some(b"other".to_vec()),
        b"w".to_vec(),
        0,
    );
    let outcome = d.done(swap).unwrap();
    assert!(!outcome.succeeded, "the value was not the expected one");
    let bad = raw::put(&d.node, raw_default(), vec![(Vec::new(), b"v".to_vec(), 0)]);
    assert!(matches!(d.done(bad), Err(CommandError::Invalid(_))), "an empty key is refused");
}

#[test]
fn a_clock_to_read_is_read_only_when_a_step_asks_and_once_per_step() {
    use std::sync::atomic::{AtomicU64, Ordering};
    static READS: AtomicU64 = AtomicU64::new(0);
    fn read() -> Clock {
        READS.fetch_add(1, Ordering::SeqCst);
        Clock { monotonic_ms: 5, wall_ms: 7_000 }
    }
    let d = Driver::new();
    let mut put = raw::put(&d.node, raw_default(), vec![(b"k".to_vec(), b"v".to_vec(), 60)]);
    let Next::Effect(Effect::Gate(_)) = put.start(Now::Read(read)) else { panic!("gate first") };
    assert_eq!(READS.load(Ordering::SeqCst), 0, "passing the gate reads no clock");
    let scope = Scope { region: Region::default(), term: 1 };
    let Next::Effect(Effect::Propose(proposal)) = put.resume(Input::Gated(scope), Now::Read(read))
    else {
        panic!("then the proposal")
    };
    assert_eq!(READS.load(Ordering::SeqCst), 1, "the TTL's time is read once");
    d.engine.write(proposal.batch).unwrap();
    proposal.completion.applied();
    let Next::Done(result) = put.resume(Input::Applied, Now::Read(read)) else { panic!("done") };
    result.unwrap();
    assert_eq!(READS.load(Ordering::SeqCst), 1, "answering reads no clock");
    // The value expires 60 s after the time read: alive at 66 s, gone at 67 s.
    let at = |secs: u64| Clock { monotonic_ms: 0, wall_ms: secs * 1_000 };
    let mut get = raw::get_key_ttl(&d.node, raw_default(), b"k".to_vec());
    let _ = get.start(at(66));
    let Next::Done(ttl) =
        get.resume(Input::Gated(Scope { region: Region::default(), term: 1 }), at(66))
    else {
        panic!("a read answers at once")
    };
    assert_eq!(ttl.unwrap(), Some(1));
}

#[test]
fn a_write_waits_for_the_latch_of_a_write_in_flight_and_a_dropped_one_passes_it_on() {
    let d = Driver::new();
    // A write whose proposal is outstanding holds its latch.
    let mut first = raw::put(&d.node, raw_default(), vec![(b"k".to_vec(), b"1".to_vec(), 0)]);
    let Next::Effect(Effect::Gate(_)) = first.start(d.now) else { panic!("gate first") };
    let scope = Scope { region: Region::default(), term: 1 };
    let Next::Effect(Effect::Propose(proposal)) = first.resume(Input::Gated(scope), d.now) else {
        panic!("then the proposal")
    };
    let second = raw::put(&d.node, raw_default(), vec![(b"k".to_vec(), b"2".to_vec(), 0)]);
    let Stopped::Waiting(second) = d.run(second) else { panic!("the second waits") };
    let third = raw::put(&d.node, raw_default(), vec![(b"k".to_vec(), b"3".to_vec(), 0)]);
    let Stopped::Waiting(third) = d.run(third) else { panic!("so does the third") };
    // The first applies: the second is woken, but is dropped (its client went away)
    // before it looked again; its turn passes to the third.
    d.engine.write(proposal.batch).unwrap();
    proposal.completion.applied();
    assert_eq!(d.woken(), BTreeSet::from([second.cid()]));
    drop(second);
    assert_eq!(d.woken(), BTreeSet::from([third.cid()]));
    let Stopped::Done(result) = d.resume(third) else { panic!("the third finishes") };
    result.unwrap();
    let got = d.done(raw::get(&d.node, raw_default(), b"k".to_vec())).unwrap();
    assert_eq!(got, Some(b"3".to_vec()));
}

/// A command that waited for a latch passes its gate again before it reads: the node may
/// have stopped leading, or lost the Region's data, while it waited (the simulator found
/// a compare-and-swap answering from a removed replica's emptied range).
#[test]
fn a_command_that_waited_for_a_latch_passes_its_gate_again() {
    let d = Driver::new();
    let mut put = raw::put(&d.node, raw_default(), vec![(b"k".to_vec(), b"1".to_vec(), 0)]);
    let Next::Effect(Effect::Gate(_)) = put.start(d.now) else { panic!("gate first") };
    let scope = Scope { region: Region::default(), term: 1 };
    let Next::Effect(Effect::Propose(proposal)) = put.resume(Input::Gated(scope), d.now) else {
        panic!("then the proposal")
    };
    let cas = raw::compare_and_swap(&d.node, raw_default(), b"k".to_vec(), None, b"2".to_vec(), 0);
    let Stopped::Waiting(mut cas) = d.run(cas) else { panic!("the swap waits for the latch") };
    d.engine.write(proposal.batch).unwrap();
    proposal.completion.applied();
    assert_eq!(d.woken(), BTreeSet::from([cas.cid()]));
    let Next::Effect(Effect::Gate(gate)) = cas.resume(Input::Woken, d.now) else {
        panic!("the swap passes its gate again before it reads")
    };
    assert!(gate.linearizable);
    // A driver whose gate fails drops the command: the latch goes with it.
    drop(cas);
    let again = raw::put(&d.node, raw_default(), vec![(b"k".to_vec(), b"3".to_vec(), 0)]);
    d.done(again).unwrap();
    // Without a wait, a command passes its gate once.
    let cas = raw::compare_and_swap(
        &d.node,
        raw_default(),
        b"k".to_vec(),
        Some(b"3".to_vec()),
        b"4".to_vec(),
        0,
    );
    let outcome = d.done(cas).unwrap();
    assert!(outcome.succeeded, "{outcome:?}");
}

fn put_mutation(key: &[u8], value: &[u8]) -> (Mutation, PessimisticAction) {
    let mutation = Mutation { op: MutationOp::Put, key: key.to_vec(), value: value.to_vec() };
    (mutation, PessimisticAction::SkipPessimisticCheck)
}

/// Prewrites `puts` as transaction `start` with `primary`, which must succeed.
fn prewrite_puts(d: &Driver, start: u64, primary: &[u8], puts: &[(&[u8], &[u8])]) {
    let props = TxnProps {
        start_ts: TimeStamp(start),
        primary: primary.to_vec(),
        lock_ttl: 3000,
        ..TxnProps::default()
    };
    let mutations = puts.iter().map(|(key, value)| put_mutation(key, value)).collect();
    let request = Prewrite { props, mutations, try_one_pc: false, max_commit_ts: 0 };
    assert!(d.done(txn::prewrite(&d.node, V1, request)).unwrap().errors.is_empty());
}

#[test]
fn a_transaction_commits_and_a_reader_sees_it() {
    let d = Driver::new();
    let props = TxnProps {
        start_ts: TimeStamp(10),
        primary: b"a".to_vec(),
        lock_ttl: 3000,
        ..TxnProps::default()
    };
    let request = Prewrite {
        props,
        mutations: vec![put_mutation(b"a", b"1"), put_mutation(b"b", b"2")],
        try_one_pc: false,
        max_commit_ts: 0,
    };
    let prewritten = d.done(txn::prewrite(&d.node, V1, request)).unwrap();
    assert!(prewritten.errors.is_empty());
    let locked = d.done(txn::get(&d.node, V1, b"a".to_vec(), TimeStamp(30)));
    assert!(matches!(locked, Err(CommandError::Txn(TxnError::KeyIsLocked { .. }))));
    let keys = vec![b"a".to_vec(), b"b".to_vec()];
    d.done(txn::commit(&d.node, V1, keys, TimeStamp(10), TimeStamp(20))).unwrap();
    let got = d.done(txn::get(&d.node, V1, b"b".to_vec(), TimeStamp(30))).unwrap();
    assert_eq!(got, Some(b"2".to_vec()));
    assert!(d.node.lock_index.is_empty(), "the index follows the commit");
}

#[test]
fn a_scan_lock_page_is_full_while_locks_remain_past_stale_index_entries() {
    let d = Driver::new();
    prewrite_puts(&d, 10, b"b", &[(b"b", b"1"), (b"d", b"2")]);
    // Locks whose proposals never applied: the index names them, storage has none.
    d.node.lock_index.add_proposed(&[(b"a".to_vec(), Some(10)), (b"c".to_vec(), Some(10))]);
    let scan = |limit| txn::ScanLock { start: Vec::new(), end: Vec::new(), limit, max_version: 10 };
    let page = d.done(txn::scan_lock(&d.node, V1, scan(2))).unwrap();
    let keys: Vec<&[u8]> = page.iter().map(|(key, _)| key.as_slice()).collect();
    assert_eq!(keys, [b"b".as_slice(), b"d"], "two locks exist: a page of two has both");
    let page = d.done(txn::scan_lock(&d.node, V1, scan(1))).unwrap();
    assert_eq!(page.len(), 1);
}

#[test]
fn an_inverted_range_holds_nothing_while_locks_are_held() {
    let d = Driver::new();
    prewrite_puts(&d, 10, b"b", &[(b"b", b"1")]);
    // Forward from "c" to "a", and reverse from below "a" down to "c": both inverted.
    for (start, end, reverse) in [(b"c", b"a", false), (b"a", b"c", true)] {
        let scan = txn::Scan {
            start: start.to_vec(),
            end: end.to_vec(),
            limit: 10,
            ts: TimeStamp(20),
            key_only: false,
            reverse,
        };
        assert_eq!(d.done(txn::scan(&d.node, V1, scan)).unwrap().len(), 0);
    }
    let scan =
        txn::ScanLock { start: b"c".to_vec(), end: b"a".to_vec(), limit: 0, max_version: 20 };
    assert!(d.done(txn::scan_lock(&d.node, V1, scan)).unwrap().is_empty());
}

#[test]
fn an_async_commit_prewrite_waits_for_max_ts_and_answers_not_ready_after() {
    let d = Driver::new();
    let props = TxnProps {
        start_ts: TimeStamp(10),
        primary: b"a".to_vec(),
        lock_ttl: 3000,
        use_async_commit: true,
        ..TxnProps::default()
    };
    let request = Prewrite {
        props,
        mutations: vec![put_mutation(b"a", b"1")],
        try_one_pc: false,
        max_commit_ts: 0,
    };
    let Stopped::Waiting(waiting) = d.run(txn::prewrite(&d.node, V1, request.clone())) else {
        panic!("no max_ts yet: it waits")
    };
    d.node.max_ts_synced(0, 1, TimeStamp(50));
    assert_eq!(d.woken(), BTreeSet::from([waiting.cid()]));
    let Stopped::Done(prewritten) = d.resume(waiting) else { panic!("done once synced") };
    assert_eq!(prewritten.unwrap().min_commit_ts, 51, "above max_ts");
    d.node.leadership_lost(0);
    let mut late = Driver::new();
    late.node = d.node.clone();
    let Stopped::Waiting(waiting) = late.run(txn::prewrite(&d.node, V1, request)) else {
        panic!("leadership lost: waits again")
    };
    late.now.monotonic_ms += 2_000;
    let Stopped::Done(result) = late.resume(waiting) else { panic!("the deadline passed") };
    assert!(matches!(result, Err(CommandError::NotReady)));
}

#[test]
fn a_pessimistic_lock_waits_for_the_holder_and_a_cycle_is_a_deadlock() {
    let d = Driver::new();
    let lock = |start: u64, key: &[u8], wait: i64| PessimisticLock {
        keys: vec![(key.to_vec(), false)],
        primary: key.to_vec(),
        start_ts: TimeStamp(start),
        lock_ttl: 3000,
        for_update_ts: TimeStamp(start),
        wait_timeout_ms: wait,
        ..PessimisticLock::default()
    };
    d.done(txn::pessimistic_lock(&d.node, V1, lock(10, b"a", 0))).unwrap();
    d.done(txn::pessimistic_lock(&d.node, V1, lock(20, b"b", 0))).unwrap();
    // 20 waits for 10's lock on a...
    let Stopped::Waiting(waiting) = d.run(txn::pessimistic_lock(&d.node, V1, lock(20, b"a", 1000)))
    else {
        panic!("waits for the holder")
    };
    assert!(d.node.lock_waits.is_waiting(TimeStamp(20)));
    // ...so 10 waiting for 20's lock on b would close a cycle.
    let deadlock = d.done(txn::pessimistic_lock(&d.node, V1, lock(10, b"b", 1000)));
    assert!(matches!(deadlock, Err(CommandError::Txn(TxnError::Deadlock { .. }))));
    // 10 rolls back: its lock on a goes, and the waiter is woken and takes it.
    let keys = vec![b"a".to_vec()];
    d.done(txn::pessimistic_rollback(&d.node, V1, keys, TimeStamp(10), TimeStamp(10))).unwrap();
    assert_eq!(d.woken(), BTreeSet::from([waiting.cid()]));
    let Stopped::Done(result) = d.resume(waiting) else { panic!("locks after the wake") };
    assert_eq!(result.unwrap(), vec![None]);
}

#[test]
fn an_expired_async_commit_primary_is_decided_from_its_secondaries() {
    let d = Driver::new();
    let props = TxnProps {
        start_ts: TimeStamp::compose(1_000, 0),
        primary: b"a".to_vec(),
        lock_ttl: 10,
        use_async_commit: true,
        secondaries: vec![b"b".to_vec()],
        ..TxnProps::default()
    };
    d.node.max_ts_synced(0, 1, TimeStamp::compose(1_000, 0));
    let request = Prewrite {
        props,
        mutations: vec![put_mutation(b"a", b"1"), put_mutation(b"b", b"2")],
        try_one_pc: false,
        max_commit_ts: 0,
    };
    let min_commit_ts = d.done(txn::prewrite(&d.node, V1, request)).unwrap().min_commit_ts;
    let status = crate::actions::cleanup::CheckTxnStatus {
        primary: b"a".to_vec(),
        lock_ts: TimeStamp::compose(1_000, 0),
        current_ts: TimeStamp::compose(5_000, 0),
        ..Default::default()
    };
    let (status, _) = d.done(txn::check_txn_status(&d.node, V1, status)).unwrap();
    assert_eq!(status, TxnStatus::Committed(TimeStamp(min_commit_ts)), "every key was locked");
    let got = d.done(txn::get(&d.node, V1, b"b".to_vec(), TimeStamp::MAX)).unwrap();
    assert_eq!(got, Some(b"2".to_vec()), "and every key is resolved");
}
