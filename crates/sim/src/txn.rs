//! Simulated transactional clients: list-append transactions over Percolator, as
//! tikv-client runs them, against [`Cluster::txn_write`] and the snapshot read path.
//!
//! A transaction takes a start timestamp from the placement leader, reads two lists at
//! it, prewrites both with an element appended (the first key is the primary), takes a
//! commit timestamp, commits the primary, then the secondary. A lock in the way of a read
//! or a prewrite is resolved as the client does: `check_txn_status` at its primary (rolling
//! back an expired transaction, pushing a live one's `min_commit_ts` past the reader),
//! then the lock itself committed or rolled back by what the primary says. Some clients
//! "crash" mid-transaction: after the prewrite (locks left until their TTL runs out and a
//! reader rolls them back) or after committing the primary (the secondary left for a
//! reader to roll forward).
//!
//! Half the clients run pessimistic transactions, as tikv-client's `get_for_update` does:
//! after the start timestamp, a `for_update_ts` from the placement leader, then a
//! pessimistic lock of each key that returns its latest value (the read the checker
//! sees; a write conflict takes it again at a newer `for_update_ts`), then a prewrite
//! that must find those locks. One in 40 of them is abandoned with
//! its pessimistic locks held, for others to roll back once they expire.
//!
//! Each transaction commits one of three ways, drawn from the seed: two-phase as above;
//! async commit (committed once the prewrite is answered, at its `min_commit_ts`; a reader
//! meeting its lock settles it by `check_secondary_locks`); or one-phase (the prewrite
//! commits).
//!
//! The commands compose the same Percolator actions (`scandium_txn::actions`) as the
//! server's, the prewrite included; what the simulator does not share with the server is
//! the glue around them (its own latches and `max_ts` synchronisation, no lock index or
//! newest-record cache).
//!
//! What a transaction's client learned decides its outcome for the checker: committed
//! once the primary's commit is answered (async commit and 1PC: the prewrite); aborted if
//! it never sent the commit of its primary, or the commit was refused because the
//! transaction was rolled back; indeterminate when that answer never came.

use crate::check::elle::{self, MicroOp, Outcome};
use crate::cluster::{Answer, Cluster, Gate, TxnStart};
use rand::rngs::StdRng;
use rand::Rng;
use scandium_txn::actions::cleanup::{self, CheckTxnStatus, SecondaryStatus, TxnStatus};
use scandium_txn::actions::commit;
use scandium_txn::actions::pessimistic::{self, PessimisticLockRequest};
use scandium_txn::actions::prewrite::TxnProps;
use scandium_txn::actions::prewrite::{Mutation, MutationOp, PessimisticAction, PrewriteRequest};
use scandium_txn::mvcc::Lock;
use scandium_txn::TxnError;
use scandium_types::TimeStamp;

/// Marks the operation ids of transactional requests in the cluster's answers.
pub const TXN_OP: u64 = 1 << 33;
/// A lock's time to live: an abandoned transaction's locks may be rolled back after it
/// (shorter than tikv-client's 3 s, so that abandoned locks block a short run less).
const LOCK_TTL_MS: u64 = 1_000;
/// How long a client waits for one request's answer.
const REQUEST_TIMEOUT_MS: u64 = 1_000;
/// Attempts at committing the primary before the client gives up (indeterminate).
const COMMIT_TRIES: u32 = 8;
/// Times a transaction waits on a live lock before it gives up (aborted: it wrote
/// nothing yet) and starts again with a newer timestamp.
const LOCK_WAITS: u32 = 10;
/// How long a transaction waits before looking again at a live lock, in milliseconds.
const LOCK_BACKOFF_MS: (u64, u64) = (10, 40);
/// One transaction in this many is abandoned after its prewrite, and one in this many
/// after its primary's commit, as by a client that crashed.
const ABANDON_ONE_IN: u32 = 40;

/// How a transaction commits, drawn for each one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Commit {
    /// Two-phase: a commit timestamp from the oracle, then the primary's commit decides.
    TwoPhase,
    /// Async commit: committed once both keys are prewritten, at their `min_commit_ts`,
    /// which the leader chose above every timestamp it served a read at.
    Async,
    /// One-phase: the prewrite commits, at a timestamp chosen as async commit's.
    OnePc,
}

/// Where a transaction is.
#[derive(Clone, Debug)]
enum Step {
    StartTs,
    Read(usize),
    /// Pessimistic transactions: the timestamp their locks are taken at, before locking
    /// key `i` (0 at first; the key that met a write conflict when taken again).
    ForUpdateTs(usize),
    /// Pessimistic transactions: locking key `i` and reading its latest value.
    Lock(usize),
    /// Resolving `lock`, met at `key`, before going back to `resume`.
    CheckStatus {
        key: Vec<u8>,
        lock: Box<Lock>,
        resume: Box<Step>,
    },
    /// `lock`, met at `key`, belongs to an async-commit transaction whose primary lock is
    /// `primary`: its secondaries decide its fate.
    CheckSecondaries {
        key: Vec<u8>,
        lock: Box<Lock>,
        primary: Box<Lock>,
        resume: Box<Step>,
    },
    Resolve {
        key: Vec<u8>,
        lock: Box<Lock>,
        commit_ts: TimeStamp,
        resume: Box<Step>,
    },
    Prewrite,
    CommitTs,
    CommitPrimary,
    CommitSecondary,
}

/// What a request's answer carries for the step that sent it.
enum Pending {
    Timestamp,
    Read,
    /// A ReadIndex round before a write command (see [`Client::confirmed`]).
    Confirm,
    /// A write command; its output counts once the proposal succeeds.
    Write(Output),
}

enum Output {
    Status(TxnStatus),
    Secondaries(SecondaryStatus),
    /// A prewrite's `min_commit_ts` (async commit; 0 otherwise).
    Prewritten(u64),
    /// A pessimistic lock's read of the key's latest value.
    Value(Option<Vec<u8>>),
    Done,
}

struct Current {
    /// Index in the history.
    index: usize,
    keys: [u64; 2],
    start_ts: TimeStamp,
    /// Pessimistic transactions only; zero for optimistic ones.
    for_update_ts: TimeStamp,
    commit_ts: TimeStamp,
    commit: Commit,
    step: Step,
    lock_waits: u32,
    commit_tries: u32,
    /// Set when the next turn should wait (a live lock in the way).
    backoff_ms: u64,
}

struct Client {
    /// The node it sends data requests to, and the one it asks for timestamps.
    node: u64,
    tso_node: u64,
    /// Whether its transactions lock keys as they read them.
    pessimistic: bool,
    /// The request it waits for.
    waiting: Option<(u64, Pending)>,
    /// The node whose ReadIndex round just confirmed it may serve this client's next
    /// write command: the server runs the command right after that round.
    confirmed: Option<u64>,
    txn: Option<Current>,
}

/// The transactional clients of a run, and the history they record.
pub struct TxnClients {
    clients: Vec<Client>,
    /// Every transaction begun, in order, as the checker takes them.
    pub history: Vec<elle::Txn>,
    next_op: u64,
    nodes: u64,
    keys: u64,
}

/// The key of list `k`.
pub fn list_key(k: u64) -> Vec<u8> {
    format!("list{k}").into_bytes()
}

/// A list's stored form: its elements, comma-separated.
pub fn decode_list(value: Option<&[u8]>) -> Vec<u64> {
    let Some(value) = value else { return Vec::new() };
    String::from_utf8_lossy(value).split(',').filter_map(|e| e.parse().ok()).collect()
}

fn encode_list(list: &[u64]) -> Vec<u8> {
    list.iter().map(u64::to_string).collect::<Vec<_>>().join(",").into_bytes()
}

impl TxnClients {
    /// `clients` clients over `keys` lists on a cluster of `nodes`.
    pub fn new(clients: u64, keys: u64, nodes: u64, rng: &mut StdRng) -> TxnClients {
        TxnClients {
            clients: (0..clients)
                .map(|i| Client {
                    node: rng.gen_range(1..=nodes),
                    tso_node: rng.gen_range(1..=nodes),
                    pessimistic: i % 2 == 1,
                    waiting: None,
                    confirmed: None,
                    txn: None,
                })
                .collect(),
            history: Vec::new(),
            next_op: 0,
            nodes,
            keys: keys.max(2),
        }
    }

    /// Client `c`'s turn: it sends its next request (starting a transaction if it has
    /// none). `wake(delay)` schedules its next turn; `timeout(delay, op)` the end of its
    /// wait for `op`.
    pub fn act(&mut self, cluster: &mut Cluster, c: usize, rng: &mut StdRng, wake: &mut Wake) {
        if self.clients[c].waiting.is_some() {
            return;
        }
        if self.clients[c].txn.is_none() {
            self.begin(c, rng);
        }
        let op = TXN_OP | self.next_op;
        self.next_op += 1;
        let client = &mut self.clients[c];
        let txn = client.txn.as_mut().expect("begun above");
        let (a, b) = (list_key(txn.keys[0]), list_key(txn.keys[1]));
        let (start_ts, commit_ts) = (txn.start_ts, txn.commit_ts);
        let for_update_ts = txn.for_update_ts;
        // As the server does, a write command answers only from state a lease or a
        // ReadIndex round shows current: some answer without proposing anything.
        let writes = !matches!(
            txn.step,
            Step::StartTs | Step::ForUpdateTs(_) | Step::CommitTs | Step::Read(_)
        );
        let confirmed = client.confirmed.take() == Some(client.node);
        let gate =
            if writes && !confirmed { cluster.read_gate(client.node, op, rng) } else { Gate::Open };
        let started = match (gate, txn.step.clone()) {
            (Gate::Waiting, _) => Started::Waiting(Pending::Confirm),
            (Gate::Closed, _) => Started::Unavailable,
            (_, Step::StartTs | Step::ForUpdateTs(_) | Step::CommitTs) => {
                if cluster.timestamp(client.tso_node, op, rng) {
                    Started::Waiting(Pending::Timestamp)
                } else {
                    client.tso_node = rng.gen_range(1..=self.nodes);
                    Started::Unavailable
                }
            }
            (_, Step::Read(i)) => {
                let key = if i == 0 { &a } else { &b };
                match cluster.read_gate(client.node, op, rng) {
                    Gate::Open => match cluster.txn_get_local(client.node, key, start_ts) {
                        Some(read) => {
                            self.on_read(c, read);
                            return wake.at(rng.gen_range(0..3), c);
                        }
                        None => Started::Unavailable,
                    },
                    Gate::Waiting => Started::Waiting(Pending::Read),
                    Gate::Closed => Started::Unavailable,
                }
            }
            (_, Step::Lock(i)) => {
                let key = if i == 0 { a.clone() } else { b.clone() };
                let request = PessimisticLockRequest {
                    key: key.clone(),
                    primary: a.clone(),
                    start_ts,
                    lock_ttl: LOCK_TTL_MS,
                    for_update_ts,
                    ..PessimisticLockRequest::default()
                };
                Started::of(cluster.txn_write(
                    client.node,
                    op,
                    &[key],
                    |reader, txn, concurrency| {
                        // As the server does: async commit must stay above this read too.
                        concurrency.update_max_ts(for_update_ts);
                        let value = pessimistic::acquire_pessimistic_lock(reader, txn, &request)?;
                        Ok(Output::Value(value))
                    },
                    rng,
                ))
            }
            (_, Step::CheckStatus { lock, .. }) => {
                let request = CheckTxnStatus {
                    primary: lock.primary.clone(),
                    lock_ts: lock.ts(),
                    caller_start_ts: start_ts,
                    current_ts: start_ts,
                    rollback_if_not_exist: true,
                    ..CheckTxnStatus::default()
                };
                let keys = [lock.primary.clone()];
                Started::of(cluster.txn_write(
                    client.node,
                    op,
                    &keys,
                    |reader, txn, concurrency| {
                        let (status, _) =
                            cleanup::check_txn_status(reader, txn, concurrency, &request)?;
                        Ok(Output::Status(status))
                    },
                    rng,
                ))
            }
            (_, Step::CheckSecondaries { primary, .. }) => {
                let (keys, lock_ts) = (primary.secondaries.clone(), primary.ts());
                Started::of(cluster.txn_write(
                    client.node,
                    op,
                    &keys,
                    |reader, txn, _| {
                        let status = cleanup::check_secondary_locks(reader, txn, &keys, lock_ts)?;
                        Ok(Output::Secondaries(status))
                    },
                    rng,
                ))
            }
            (_, Step::Resolve { key, lock, commit_ts: fate, .. }) => {
                let keys = [key.clone()];
                Started::of(cluster.txn_write(
                    client.node,
                    op,
                    &keys,
                    |reader, txn, _| {
                        match reader.load_lock(&key)? {
                            Some(held) if held.start_ts == lock.start_ts => {
                                cleanup::resolve_lock(reader, txn, &key, held, fate)?
                            }
                            _ => {}
                        }
                        Ok(Output::Done)
                    },
                    rng,
                ))
            }
            (_, Step::Prewrite) => {
                let element = self.history[txn.index].ops.iter().find_map(|op| match op {
                    MicroOp::Append { value, .. } => Some(*value),
                    _ => None,
                });
                let element = element.expect("a transaction appends");
                let lists: Vec<Vec<u64>> = self.history[txn.index]
                    .ops
                    .iter()
                    .filter_map(|op| match op {
                        MicroOp::Read { list, .. } => Some(list.clone()),
                        _ => None,
                    })
                    .collect();
                let commit = txn.commit;
                let props = TxnProps {
                    start_ts,
                    primary: a.clone(),
                    lock_ttl: LOCK_TTL_MS,
                    txn_size: 2,
                    for_update_ts,
                    use_async_commit: commit == Commit::Async,
                    secondaries: if commit == Commit::Async { vec![b.clone()] } else { Vec::new() },
                    ..TxnProps::default()
                };
                let action = if for_update_ts > TimeStamp::ZERO {
                    PessimisticAction::DoPessimisticCheck
                } else {
                    PessimisticAction::SkipPessimisticCheck
                };
                let mutations: Vec<(Mutation, PessimisticAction)> = [a, b]
                    .into_iter()
                    .zip(&lists)
                    .map(|(key, list)| {
                        let mut list = list.clone();
                        list.push(element);
                        let value = encode_list(&list);
                        (Mutation { op: MutationOp::Put, key, value }, action)
                    })
                    .collect();
                let request = PrewriteRequest {
                    props: &props,
                    mutations: &mutations,
                    try_one_pc: commit == Commit::OnePc,
                    max_commit_ts: 0,
                };
                let started = cluster.txn_prewrite(client.node, op, request, rng);
                Started::of(started.map(|(min_commit_ts, _)| Output::Prewritten(min_commit_ts)))
            }
            (_, Step::CommitPrimary | Step::CommitSecondary) => {
                let key = if matches!(txn.step, Step::CommitPrimary) { a } else { b };
                let keys = [key.clone()];
                Started::of(cluster.txn_write(
                    client.node,
                    op,
                    &keys,
                    |reader, txn, _| {
                        commit::commit(reader, txn, &key, start_ts, commit_ts)?;
                        Ok(Output::Done)
                    },
                    rng,
                ))
            }
        };
        match started {
            Started::Waiting(pending) => {
                client.waiting = Some((op, pending));
                wake.timeout(REQUEST_TIMEOUT_MS, op);
            }
            Started::Now(Ok(output)) => {
                self.on_success(c, Some(output), rng);
                let delay = self.backoff(c).unwrap_or_else(|| rng.gen_range(0..3));
                wake.at(delay, c);
            }
            Started::Now(Err(e)) => {
                self.on_refused(c, e);
                wake.at(rng.gen_range(1..5), c);
            }
            Started::Busy => wake.at(rng.gen_range(1..5), c),
            Started::Unavailable => {
                client.node = match cluster.leader() {
                    Some(leader) if leader != client.node && rng.gen_bool(0.8) => leader,
                    _ => rng.gen_range(1..=self.nodes),
                };
                wake.at(rng.gen_range(5..30), c);
            }
        }
    }

    /// Takes the answer if it is to a transactional request; returns whether it was.
    pub fn on_answer(
        &mut self,
        cluster: &mut Cluster,
        answer: &Answer,
        rng: &mut StdRng,
        wake: &mut Wake,
    ) -> bool {
        let op = match answer {
            Answer::Proposed { op, .. }
            | Answer::ReadReady { op, .. }
            | Answer::Timestamp { op, .. } => *op,
        };
        if op & TXN_OP == 0 {
            return false;
        }
        let Some(c) =
            self.clients.iter().position(|c| c.waiting.as_ref().is_some_and(|w| w.0 == op))
        else {
            return true; // late: the client gave up on it
        };
        let (_, pending) = self.clients[c].waiting.take().expect("found waiting");
        match (answer, pending) {
            (Answer::Timestamp { ts: Some(ts), .. }, Pending::Timestamp) => {
                let txn = self.clients[c].txn.as_mut().expect("waiting in a transaction");
                match txn.step {
                    Step::StartTs => txn.start_ts = *ts,
                    Step::ForUpdateTs(_) => txn.for_update_ts = *ts,
                    _ => txn.commit_ts = *ts,
                }
                self.on_success(c, None, rng);
            }
            (Answer::ReadReady { node, result: Ok(()), .. }, Pending::Read) => {
                let key = {
                    let txn = self.clients[c].txn.as_ref().expect("waiting in a transaction");
                    let Step::Read(i) = txn.step else { unreachable!("a read waits in Read") };
                    list_key(txn.keys[i])
                };
                let start_ts = self.clients[c].txn.as_ref().map(|t| t.start_ts).unwrap_or_default();
                match cluster.txn_get_local(*node, &key, start_ts) {
                    Some(read) => self.on_read(c, read),
                    None => self.on_lost(c, rng),
                }
            }
            (Answer::ReadReady { node, result: Ok(()), .. }, Pending::Confirm) => {
                // The write goes out at once, as the server runs it after the round.
                self.clients[c].confirmed = Some(*node);
                wake.at(0, c);
                return true;
            }
            (Answer::Proposed { result: Ok(_), .. }, Pending::Write(output)) => {
                self.on_success(c, Some(output), rng)
            }
            _ => self.on_lost(c, rng),
        }
        let delay = self.backoff(c).unwrap_or_else(|| rng.gen_range(1..10));
        wake.at(delay, c);
        true
    }

    /// The wait a live lock asked for before the client's next turn, if any.
    fn backoff(&mut self, c: usize) -> Option<u64> {
        let txn = self.clients[c].txn.as_mut()?;
        Some(std::mem::take(&mut txn.backoff_ms)).filter(|&ms| ms > 0)
    }

    /// The client stops waiting for `op`, if it still does: as if the answer were lost.
    pub fn on_timeout(&mut self, op: u64, rng: &mut StdRng, wake: &mut Wake) {
        let Some(c) =
            self.clients.iter().position(|c| c.waiting.as_ref().is_some_and(|w| w.0 == op))
        else {
            return;
        };
        self.clients[c].waiting = None;
        self.on_lost(c, rng);
        wake.at(rng.gen_range(5..30), c);
    }

    /// The run is over: a transaction whose primary's commit was sent but not answered
    /// is indeterminate; one that never sent it did not commit.
    pub fn finish(&mut self) {
        for client in &mut self.clients {
            let waiting = client.waiting.take();
            let Some(txn) = client.txn.take() else { continue };
            let outcome = match txn.step {
                Step::CommitSecondary => Outcome::Committed,
                Step::CommitPrimary if txn.commit == Commit::Async => Outcome::Committed,
                Step::Prewrite
                    if txn.commit != Commit::TwoPhase
                        && matches!(waiting, Some((_, Pending::Write(_)))) =>
                {
                    Outcome::Indeterminate
                }
                Step::CommitPrimary
                    if txn.commit_tries > 0 || matches!(waiting, Some((_, Pending::Write(_)))) =>
                {
                    Outcome::Indeterminate
                }
                _ => Outcome::Aborted,
            };
            self.history[txn.index].outcome = outcome;
        }
    }

    fn begin(&mut self, c: usize, rng: &mut StdRng) {
        let first = rng.gen_range(0..self.keys);
        let second = (first + rng.gen_range(1..self.keys)) % self.keys;
        let index = self.history.len();
        let commit = match rng.gen_range(0..3) {
            0 => Commit::TwoPhase,
            1 => Commit::Async,
            _ => Commit::OnePc,
        };
        // Unique per list across the history: the checker names versions by them.
        let element = index as u64 + 1;
        self.history.push(elle::Txn {
            ops: vec![
                MicroOp::Append { key: first, value: element },
                MicroOp::Append { key: second, value: element },
            ],
            outcome: Outcome::Aborted,
        });
        self.clients[c].txn = Some(Current {
            index,
            keys: [first, second],
            start_ts: TimeStamp::ZERO,
            for_update_ts: TimeStamp::ZERO,
            commit_ts: TimeStamp::ZERO,
            commit,
            step: Step::StartTs,
            lock_waits: 0,
            commit_tries: 0,
            backoff_ms: 0,
        });
    }

    fn on_read(&mut self, c: usize, read: Result<Option<Vec<u8>>, TxnError>) {
        let txn = self.clients[c].txn.as_mut().expect("reading in a transaction");
        let Step::Read(i) = txn.step else { unreachable!("read in Read") };
        match read {
            Ok(value) => {
                let key = txn.keys[i];
                let list = decode_list(value.as_deref());
                // Reads go before the appends, in the order they ran.
                self.history[txn.index].ops.insert(i, MicroOp::Read { key, list });
                txn.step = if i == 0 { Step::Read(1) } else { Step::Prewrite };
            }
            Err(e) => self.on_refused(c, e),
        }
    }

    /// A request succeeded: on to the next step.
    fn on_success(&mut self, c: usize, output: Option<Output>, rng: &mut StdRng) {
        let pessimistic = self.clients[c].pessimistic;
        let txn = self.clients[c].txn.as_mut().expect("a step of a transaction");
        txn.step = match std::mem::replace(&mut txn.step, Step::StartTs) {
            Step::StartTs if pessimistic => Step::ForUpdateTs(0),
            Step::StartTs => Step::Read(0),
            Step::Read(i) => Step::Read(i), // reads finish in `on_read`
            Step::ForUpdateTs(i) => Step::Lock(i),
            Step::Lock(i) => {
                let Some(Output::Value(value)) = output else {
                    unreachable!("a pessimistic lock answers with the key's value")
                };
                let key = txn.keys[i];
                let list = decode_list(value.as_deref());
                self.history[txn.index].ops.insert(i, MicroOp::Read { key, list });
                if i == 0 {
                    Step::Lock(1)
                } else if rng.gen_ratio(1, ABANDON_ONE_IN) {
                    // Gone with both keys locked: others wait until the locks expire.
                    return self.end(c, Outcome::Aborted);
                } else {
                    Step::Prewrite
                }
            }
            Step::CheckStatus { key, lock, resume } => match output {
                // Resolved at once, more eagerly than tikv-client (which waits for the
                // lock's TTL): the fate of an async-commit transaction never depends on
                // when it is asked.
                Some(Output::Status(TxnStatus::Locked(primary))) if primary.use_async_commit => {
                    Step::CheckSecondaries { key, lock, primary, resume }
                }
                Some(Output::Status(TxnStatus::Committed(ts))) => {
                    Step::Resolve { key, lock, commit_ts: ts, resume }
                }
                Some(Output::Status(TxnStatus::RolledBack)) => {
                    Step::Resolve { key, lock, commit_ts: TimeStamp::ZERO, resume }
                }
                // Alive (its min_commit_ts now above us, so it no longer hides what we
                // read), or not answered as expected: go back and look again.
                _ => {
                    txn.lock_waits += 1;
                    txn.backoff_ms = rng.gen_range(LOCK_BACKOFF_MS.0..LOCK_BACKOFF_MS.1);
                    if txn.lock_waits > LOCK_WAITS && !matches!(*resume, Step::CommitPrimary) {
                        return self.end(c, Outcome::Aborted);
                    }
                    *resume
                }
            },
            Step::CheckSecondaries { key, lock, primary, resume } => {
                let commit_ts = match output {
                    // Every key still locked: committed at the largest min_commit_ts.
                    Some(Output::Secondaries(SecondaryStatus::Locked(locks))) => locks
                        .iter()
                        .map(|(_, l)| TimeStamp(l.min_commit_ts))
                        .fold(TimeStamp(primary.min_commit_ts), TimeStamp::max),
                    Some(Output::Secondaries(SecondaryStatus::Committed(ts))) => ts,
                    Some(Output::Secondaries(SecondaryStatus::RolledBack)) => TimeStamp::ZERO,
                    _ => unreachable!("a secondary check answers with the secondaries' state"),
                };
                Step::Resolve { key, lock, commit_ts, resume }
            }
            Step::Resolve { resume, .. } => *resume,
            Step::Prewrite => match txn.commit {
                Commit::TwoPhase if rng.gen_ratio(1, ABANDON_ONE_IN) => {
                    return self.end(c, Outcome::Aborted);
                }
                Commit::TwoPhase => Step::CommitTs,
                // Committed: both locks are written, and whoever meets them commits them.
                Commit::Async => {
                    let Some(Output::Prewritten(min_commit_ts)) = output else {
                        unreachable!("a prewrite answers with its min_commit_ts")
                    };
                    self.history[txn.index].outcome = Outcome::Committed;
                    if rng.gen_ratio(1, ABANDON_ONE_IN) {
                        return self.end(c, Outcome::Committed);
                    }
                    txn.commit_ts = TimeStamp(min_commit_ts);
                    Step::CommitPrimary
                }
                Commit::OnePc => return self.end(c, Outcome::Committed),
            },
            Step::CommitTs => Step::CommitPrimary,
            Step::CommitPrimary => {
                self.history[txn.index].outcome = Outcome::Committed;
                if rng.gen_ratio(1, ABANDON_ONE_IN) {
                    return self.end(c, Outcome::Committed);
                }
                Step::CommitSecondary
            }
            Step::CommitSecondary => return self.end(c, Outcome::Committed),
        };
    }

    /// A command refused at once: resolve a lock in the way, or end the transaction.
    fn on_refused(&mut self, c: usize, error: TxnError) {
        let txn = self.clients[c].txn.as_mut().expect("a step of a transaction");
        let step = txn.step.clone();

        match (error, step) {
            // An async-commit transaction committed with its prewrite: its commits only
            // tidy up, whatever they meet.
            (_, Step::CommitPrimary | Step::CommitSecondary) if txn.commit == Commit::Async => {
                self.end(c, Outcome::Committed)
            }
            (TxnError::KeyIsLocked { key, lock }, resume) => {
                txn.step = Step::CheckStatus { key, lock, resume: Box::new(resume) };
            }
            // A pessimistic lock met a write newer than its for_update_ts: taken again at a
            // newer one, as TiDB retries a locking read (the keys locked so far stay
            // locked, so what was read of them still holds).
            (TxnError::WriteConflict { .. }, Step::Lock(i)) if txn.lock_waits < LOCK_WAITS => {
                txn.lock_waits += 1;
                txn.step = Step::ForUpdateTs(i);
            }
            // A reader pushed the primary's min_commit_ts past our commit timestamp.
            (TxnError::CommitTsExpired { .. }, Step::CommitPrimary) => txn.step = Step::CommitTs,
            // The secondary is committed by whoever reads it next, whatever went wrong.
            (_, Step::CommitSecondary) => self.end(c, Outcome::Committed),
            // An earlier attempt's answer was lost: it may have committed, and this refusal
            // (from a node that had not applied it, or from after a reader's roll-forward
            // check) proves nothing. Found by seed 7582: such a transaction was counted
            // as aborted while readers saw its appends.
            (_, Step::CommitPrimary) if txn.commit_tries > 0 => self.end(c, Outcome::Indeterminate),
            // Rolled back by a reader (the commit), a write conflict (the prewrite): in
            // each case the transaction did not commit.
            (_, _) => self.end(c, Outcome::Aborted),
        }
    }

    /// The answer never came or came as a failure.
    fn on_lost(&mut self, c: usize, rng: &mut StdRng) {
        let client = &mut self.clients[c];
        client.node = rng.gen_range(1..=self.nodes);
        client.tso_node = rng.gen_range(1..=self.nodes);
        let txn = client.txn.as_mut().expect("a step of a transaction");
        match txn.step {
            // Its locks, if the prewrite took effect, are left for readers to roll back:
            // it never commits. Unless the prewrite alone commits it.
            Step::Prewrite if txn.commit == Commit::TwoPhase => self.end(c, Outcome::Aborted),
            Step::Prewrite => self.end(c, Outcome::Indeterminate),
            Step::CommitPrimary if txn.commit == Commit::Async => self.end(c, Outcome::Committed),
            Step::CommitPrimary => {
                txn.commit_tries += 1;
                if txn.commit_tries >= COMMIT_TRIES {
                    self.end(c, Outcome::Indeterminate);
                }
            }
            Step::CommitSecondary => self.end(c, Outcome::Committed),
            // Timestamps, reads and lock resolution are simply tried again.
            _ => {}
        }
    }

    fn end(&mut self, c: usize, outcome: Outcome) {
        if let Some(txn) = self.clients[c].txn.take() {
            self.history[txn.index].outcome = outcome;
        }
    }
}

/// How a request started.
enum Started {
    Waiting(Pending),
    Now(Result<Output, TxnError>),
    Busy,
    Unavailable,
}

impl Started {
    fn of(start: TxnStart<Output>) -> Started {
        match start {
            TxnStart::Proposed(output) => Started::Waiting(Pending::Write(output)),
            TxnStart::Done(output) => Started::Now(Ok(output)),
            TxnStart::Failed(e) => Started::Now(Err(e)),
            TxnStart::Busy => Started::Busy,
            TxnStart::Unavailable => Started::Unavailable,
        }
    }
}

/// What the clients ask the run to schedule: their next turns and their timeouts.
#[derive(Default)]
pub struct Wake {
    /// (delay, client) pairs.
    pub turns: Vec<(u64, usize)>,
    /// (delay, op) pairs.
    pub timeouts: Vec<(u64, u64)>,
}

impl Wake {
    fn at(&mut self, delay: u64, c: usize) {
        self.turns.push((delay, c));
    }
    fn timeout(&mut self, delay: u64, op: u64) {
        self.timeouts.push((delay, op));
    }
}
