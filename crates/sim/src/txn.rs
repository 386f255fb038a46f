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
use crate::cluster::{Answer, Cluster};
use crate::commands::{Failure, Output, Target};
use crate::routing::RegionCache;
use rand::rngs::StdRng;
use rand::Rng;
use scandium_txn::actions::cleanup::{CheckTxnStatus, SecondaryStatus, TxnStatus};
use scandium_txn::actions::prewrite::{Mutation, MutationOp, PessimisticAction, TxnProps};
use scandium_txn::command::txn::{self as commands, PessimisticLock, Prewrite};
use scandium_txn::mvcc::Lock;
use scandium_txn::{Command, CommandError, TxnError};
use scandium_types::keyspace::ApiVersion;
use scandium_types::TimeStamp;

/// The simulated clients speak API V1.
const V1: ApiVersion = ApiVersion::V1;

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

/// What a client waits for.
enum Pending {
    Timestamp,
    /// A command's answer.
    Command,
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
    /// The Regions it knows of.
    regions: RegionCache,
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
                    regions: RegionCache::default(),
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
        let step = self.clients[c].txn.as_ref().expect("begun above").step.clone();
        if matches!(step, Step::StartTs | Step::ForUpdateTs(_) | Step::CommitTs) {
            let client = &mut self.clients[c];
            if cluster.timestamp(client.tso_node, op, rng) {
                client.waiting = Some((op, Pending::Timestamp));
                wake.timeout(REQUEST_TIMEOUT_MS, op);
            } else {
                client.tso_node = rng.gen_range(1..=self.nodes);
                wake.at(rng.gen_range(5..30), c);
            }
            return;
        }
        let command = self.command(c, &step, cluster, rng);
        let client = &mut self.clients[c];
        let key = match &step {
            Step::CheckStatus { lock, .. } => lock.primary.clone(),
            Step::CheckSecondaries { primary, .. } => primary.secondaries[0].clone(),
            Step::Resolve { key, .. } => key.clone(),
            _ => {
                let txn = client.txn.as_ref().expect("in a transaction");
                let i = match step {
                    Step::Read(i) | Step::Lock(i) => i,
                    Step::CommitSecondary => 1,
                    _ => 0,
                };
                list_key(txn.keys[i])
            }
        };
        let Some(region) = client.regions.locate(cluster, &key) else {
            return wake.at(rng.gen_range(5..30), c);
        };
        let target = Target::Request { region_id: region.id, epoch: region.epoch() };
        cluster.submit(client.node, op, target, command, rng);
        client.waiting = Some((op, Pending::Command));
        wake.timeout(REQUEST_TIMEOUT_MS, op);
    }

    /// The command of a transaction's step: what tikv-client sends for it.
    fn command(
        &self,
        c: usize,
        step: &Step,
        cluster: &Cluster,
        rng: &mut StdRng,
    ) -> Command<Output> {
        let txn = self.clients[c].txn.as_ref().expect("in a transaction");
        let node = cluster.txn_node(self.clients[c].node);
        let (a, b) = (list_key(txn.keys[0]), list_key(txn.keys[1]));
        let (start_ts, commit_ts, for_update_ts) = (txn.start_ts, txn.commit_ts, txn.for_update_ts);
        match step {
            Step::Read(i) => {
                let key = if *i == 0 { a } else { b };
                commands::get(&node, V1, key, start_ts).map(Output::Value)
            }
            Step::Lock(i) => {
                let key = if *i == 0 { a.clone() } else { b };
                // Half the locks wait a little for a lock in the way (the server's lock
                // waiting queue); the others fail at once and the client resolves it.
                let wait_timeout_ms = if rng.gen_bool(0.5) { rng.gen_range(50..300) } else { 0 };
                let request = PessimisticLock {
                    keys: vec![(key, false)],
                    primary: a,
                    start_ts,
                    lock_ttl: LOCK_TTL_MS,
                    for_update_ts,
                    wait_timeout_ms,
                    ..PessimisticLock::default()
                };
                commands::pessimistic_lock(&node, V1, request).map(Output::Values)
            }
            Step::CheckStatus { lock, .. } => {
                let request = CheckTxnStatus {
                    primary: lock.primary.clone(),
                    lock_ts: lock.ts(),
                    caller_start_ts: start_ts,
                    current_ts: start_ts,
                    rollback_if_not_exist: true,
                    ..CheckTxnStatus::default()
                };
                commands::check_txn_status(&node, V1, request).map(|(s, _)| Output::Status(s))
            }
            Step::CheckSecondaries { primary, .. } => {
                let keys = primary.secondaries.clone();
                commands::check_secondary_locks(&node, V1, keys, primary.ts())
                    .map(Output::Secondaries)
            }
            Step::Resolve { key, lock, commit_ts: fate, .. } => {
                let fates = vec![(lock.start_ts, fate.0)];
                commands::resolve_lock(&node, V1, fates, vec![key.clone()]).map(|()| Output::Done)
            }
            Step::Prewrite => {
                let request = self.prewrite(c, a, b);
                commands::prewrite(&node, V1, request).map(|p| Output::Prewritten {
                    errors: p.errors,
                    min_commit_ts: p.min_commit_ts,
                    one_pc_commit_ts: p.one_pc_commit_ts,
                })
            }
            Step::CommitPrimary | Step::CommitSecondary => {
                let key = if matches!(step, Step::CommitPrimary) { a } else { b };
                commands::commit(&node, V1, vec![key], start_ts, commit_ts).map(Output::Committed)
            }
            Step::StartTs | Step::ForUpdateTs(_) | Step::CommitTs => {
                unreachable!("timestamps are not commands")
            }
        }
    }

    /// The prewrite of client `c`'s transaction: both lists with its element appended.
    fn prewrite(&self, c: usize, a: Vec<u8>, b: Vec<u8>) -> Prewrite {
        let txn = self.clients[c].txn.as_ref().expect("in a transaction");
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
            start_ts: txn.start_ts,
            primary: a.clone(),
            lock_ttl: LOCK_TTL_MS,
            txn_size: 2,
            for_update_ts: txn.for_update_ts,
            use_async_commit: commit == Commit::Async,
            secondaries: if commit == Commit::Async { vec![b.clone()] } else { Vec::new() },
            ..TxnProps::default()
        };
        let action = if txn.for_update_ts > TimeStamp::ZERO {
            PessimisticAction::DoPessimisticCheck
        } else {
            PessimisticAction::SkipPessimisticCheck
        };
        let mutations = [a, b]
            .into_iter()
            .zip(&lists)
            .map(|(key, list)| {
                let mut list = list.clone();
                list.push(element);
                let value = encode_list(&list);
                (Mutation { op: MutationOp::Put, key, value }, action)
            })
            .collect();
        Prewrite { props, mutations, try_one_pc: commit == Commit::OnePc, max_commit_ts: 0 }
    }

    /// Takes the answer if it is to a transactional request; returns whether it was.
    pub fn on_answer(
        &mut self,
        cluster: &mut Cluster,
        answer: Answer,
        rng: &mut StdRng,
        wake: &mut Wake,
    ) -> Option<Answer> {
        let op = match &answer {
            Answer::Done { op, .. } | Answer::Timestamp { op, .. } => *op,
        };
        if op & TXN_OP == 0 {
            return Some(answer);
        }
        let Some(c) =
            self.clients.iter().position(|c| c.waiting.as_ref().is_some_and(|w| w.0 == op))
        else {
            return None; // late: the client gave up on it
        };
        let (_, pending) = self.clients[c].waiting.take().expect("found waiting");
        match (answer, pending) {
            (Answer::Timestamp { ts: Some(ts), .. }, Pending::Timestamp) => {
                let txn = self.clients[c].txn.as_mut().expect("waiting in a transaction");
                match txn.step {
                    Step::StartTs => txn.start_ts = ts,
                    Step::ForUpdateTs(_) => txn.for_update_ts = ts,
                    _ => txn.commit_ts = ts,
                }
                self.on_success(c, None, rng);
            }
            (Answer::Done { result, .. }, Pending::Command) => {
                let reading =
                    matches!(self.clients[c].txn.as_ref().map(|t| &t.step), Some(Step::Read(_)));
                match result {
                    Ok(Output::Value(value)) if reading => self.on_read(c, Ok(value)),
                    Ok(Output::Prewritten { mut errors, .. }) if !errors.is_empty() => {
                        self.on_refused(c, errors.swap_remove(0))
                    }
                    Ok(output) => self.on_success(c, Some(output), rng),
                    Err(Failure::Command(CommandError::Txn(e))) if reading => {
                        self.on_read(c, Err(e))
                    }
                    Err(Failure::Command(CommandError::Txn(e))) => self.on_refused(c, e),
                    // Nothing happened (the node is down, or not the Region's leader, or
                    // the client's Region is stale): another node, as a client would.
                    Err(failure)
                        if failure.is_region_error()
                            && !matches!(failure, Failure::Proposal(_)) =>
                    {
                        let client = &mut self.clients[c];
                        client.regions.on_failure(&failure);
                        client.node = match cluster.leader() {
                            Some(leader) if leader != client.node && rng.gen_bool(0.8) => leader,
                            _ => rng.gen_range(1..=self.nodes),
                        };
                        wake.at(rng.gen_range(5..30), c);
                        return None;
                    }
                    Err(_) => self.on_lost(c, rng),
                }
            }
            _ => self.on_lost(c, rng),
        }
        let delay = self.backoff(c).unwrap_or_else(|| rng.gen_range(1..10));
        wake.at(delay, c);
        None
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
                        && matches!(waiting, Some((_, Pending::Command))) =>
                {
                    Outcome::Indeterminate
                }
                Step::CommitPrimary
                    if txn.commit_tries > 0 || matches!(waiting, Some((_, Pending::Command))) =>
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
                let Some(Output::Values(mut values)) = output else {
                    unreachable!("a pessimistic lock answers with the key's value")
                };
                let value = values.pop().flatten();
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
                    let Some(Output::Prewritten { min_commit_ts, .. }) = output else {
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
