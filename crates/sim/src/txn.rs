//! Simulated transactional clients, running Percolator as tikv-client runs it, each step
//! one of the server's commands, routed to the Region of its keys.
//!
//! Two workloads run side by side:
//!
//! * **list-append**: a transaction reads two lists and appends one element to both (the
//!   histories go to the Elle-style checker);
//! * **bank**: a transfer reads two accounts and moves money from one to the other if it
//!   has the funds; an audit reads every account in one snapshot (the total must never
//!   change, no balance may go negative: the bank checker).
//!
//! A transaction takes a start timestamp from the placement leader, reads its keys at it,
//! prewrites its writes (the first key is the primary; one prewrite per Region its keys
//! are in, as the client splits them), takes a commit timestamp, commits the primary, then
//! the secondary. A lock in the way of a read or a prewrite is resolved as the client does:
//! `check_txn_status` at its primary (rolling back an expired transaction, pushing a live
//! one's `min_commit_ts` past the reader, deciding an async-commit transaction from its
//! secondaries), then the lock itself committed or rolled back by what the primary says.
//! Some clients "crash" mid-transaction: after the prewrite (locks left until their TTL
//! runs out and a reader rolls them back) or after committing the primary (the secondary
//! left for a reader to roll forward).
//!
//! Half the clients run pessimistic transactions, as tikv-client's `get_for_update` does:
//! after the start timestamp, a `for_update_ts` from the placement leader, then a
//! pessimistic lock of each key that returns its latest value (the read the checker
//! sees; a write conflict takes it again at a newer `for_update_ts`; half of them wait in
//! the lock waiting queue for a lock in the way), then a prewrite that must find those
//! locks. One in 40 of them is abandoned with its pessimistic locks held.
//!
//! Each transaction commits one of three ways, drawn from the seed: two-phase as above;
//! async commit (committed once every prewrite is answered, at the largest
//! `min_commit_ts`; a reader meeting its lock settles it by `check_secondary_locks`); or
//! one-phase (the prewrite commits; only when every key is in one Region, as the client
//! does it, else two-phase).
//!
//! What a transaction's client learned decides its outcome for the checker: committed
//! once the primary's commit is answered (async commit and 1PC: the prewrites); aborted if
//! it never sent the commit of its primary, or the commit was refused because the
//! transaction was rolled back; indeterminate when that answer never came.

use crate::check::bank;
use crate::check::elle::{self, MicroOp, Outcome};
use crate::cluster::{Answer, Cluster};
use crate::flows::{Failure, Output, Target};
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
/// Every bank account starts with this much (an account never written holds it).
pub const INITIAL_BALANCE: i64 = 100;
/// One bank transaction in this many is an audit.
const AUDIT_ONE_IN: u32 = 6;

/// How a transaction commits, drawn for each one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Commit {
    /// Two-phase: a commit timestamp from the oracle, then the primary's commit decides.
    TwoPhase,
    /// Async commit: committed once every key is prewritten, at their `min_commit_ts`,
    /// which the leaders chose above every timestamp they served a read at.
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
    /// Prewriting the keys of one Region (the `i`th of the transaction's groups).
    Prewrite(usize),
    CommitTs,
    CommitPrimary,
    CommitSecondary,
}

/// What a client waits for.
enum Pending {
    Timestamp,
    /// A command's answer, from this Region on this node.
    Command {
        region: u64,
        node: u64,
    },
}

/// What a transaction is for.
#[derive(Clone, Copy, Debug)]
enum Purpose {
    /// Appending one element to two lists; its entry in the list-append history.
    Append(usize),
    /// Moving `amount` between two accounts (if the first has it).
    Transfer(i64),
    /// Reading every account in one snapshot.
    Audit,
}

struct Current {
    purpose: Purpose,
    /// The keys, the primary first, and what each is (a list or an account number).
    keys: Vec<Vec<u8>>,
    names: Vec<u64>,
    /// What was read of each key.
    reads: Vec<Option<Vec<u8>>>,
    start_ts: TimeStamp,
    /// Pessimistic transactions only; zero for optimistic ones.
    for_update_ts: TimeStamp,
    commit_ts: TimeStamp,
    commit: Commit,
    step: Step,
    /// The keys to prewrite (indexes into `keys`), grouped by Region, the primary's first.
    groups: Vec<Vec<usize>>,
    /// Async commit: the largest `min_commit_ts` the prewrites answered so far.
    min_commit_ts: u64,
    lock_waits: u32,
    commit_tries: u32,
    /// Set when the next turn should wait (a live lock in the way).
    backoff_ms: u64,
}

/// Which workload a client runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Workload {
    ListAppend,
    Bank,
}

struct Client {
    workload: Workload,
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

/// The transactional clients of a run, and the histories they record.
pub struct TxnClients {
    clients: Vec<Client>,
    /// Every list-append transaction begun, in order, as the checker takes them.
    pub history: Vec<elle::Txn>,
    /// Every audit that read every account.
    pub audits: Vec<bank::Snapshot>,
    next_op: u64,
    nodes: u64,
    lists: u64,
    accounts: u64,
}

/// The key of list `k`.
pub fn list_key(k: u64) -> Vec<u8> {
    format!("list{k}").into_bytes()
}

/// The key of bank account `a`.
pub fn account_key(a: u64) -> Vec<u8> {
    format!("acct{a}").into_bytes()
}

/// A list's stored form: its elements, comma-separated.
pub fn decode_list(value: Option<&[u8]>) -> Vec<u64> {
    let Some(value) = value else { return Vec::new() };
    String::from_utf8_lossy(value).split(',').filter_map(|e| e.parse().ok()).collect()
}

fn encode_list(list: &[u64]) -> Vec<u8> {
    list.iter().map(u64::to_string).collect::<Vec<_>>().join(",").into_bytes()
}

/// A balance's stored form; an account never written holds [`INITIAL_BALANCE`].
pub fn decode_balance(value: Option<&[u8]>) -> i64 {
    value.map_or(INITIAL_BALANCE, |v| String::from_utf8_lossy(v).parse().unwrap_or(i64::MIN))
}

impl TxnClients {
    /// `list_clients` list-append clients over `lists` lists and `bank_clients` bank
    /// clients over `accounts` accounts, on a cluster of `nodes`.
    pub fn new(
        list_clients: u64,
        lists: u64,
        bank_clients: u64,
        accounts: u64,
        nodes: u64,
        rng: &mut StdRng,
    ) -> TxnClients {
        let workloads = (0..list_clients)
            .map(|_| Workload::ListAppend)
            .chain((0..bank_clients).map(|_| Workload::Bank));
        TxnClients {
            clients: workloads
                .enumerate()
                .map(|(i, workload)| Client {
                    workload,
                    node: rng.gen_range(1..=nodes),
                    tso_node: rng.gen_range(1..=nodes),
                    pessimistic: i % 2 == 1,
                    waiting: None,
                    regions: RegionCache::default(),
                    txn: None,
                })
                .collect(),
            history: Vec::new(),
            audits: Vec::new(),
            next_op: 0,
            nodes,
            lists: lists.max(2),
            accounts: accounts.max(2),
        }
    }

    /// How many clients there are.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
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
        if matches!(step, Step::Prewrite(0)) && !self.group(c, cluster) {
            return wake.at(rng.gen_range(5..30), c);
        }
        let key = self.key_of(c, &step);
        let Some((region, leader)) = self.clients[c].regions.locate(cluster, &key) else {
            return wake.at(rng.gen_range(5..30), c);
        };
        let client = &mut self.clients[c];
        if let Some(leader) = leader {
            client.node = leader;
        }
        let node = client.node;
        let command = self.command(c, &step, cluster, rng);
        let target = Target::Request { region_id: region.id, epoch: region.epoch() };
        cluster.submit(node, op, target, command, rng);
        self.clients[c].waiting = Some((op, Pending::Command { region: region.id, node }));
        wake.timeout(REQUEST_TIMEOUT_MS, op);
    }

    /// The key whose Region a step's request goes to.
    fn key_of(&self, c: usize, step: &Step) -> Vec<u8> {
        let txn = self.clients[c].txn.as_ref().expect("in a transaction");
        match step {
            Step::CheckStatus { lock, .. } => lock.primary.clone(),
            Step::CheckSecondaries { primary, .. } => primary.secondaries[0].clone(),
            Step::Resolve { key, .. } => key.clone(),
            Step::Read(i) | Step::Lock(i) => txn.keys[*i].clone(),
            Step::Prewrite(g) => txn.keys[txn.groups[*g][0]].clone(),
            Step::CommitSecondary => txn.keys[1].clone(),
            _ => txn.keys[0].clone(),
        }
    }

    /// Groups the transaction's keys by the Region the client believes holds them, as
    /// tikv-client splits a prewrite; a transaction whose keys span Regions cannot commit
    /// in one phase. `false` if some key's Region is unknown now.
    fn group(&mut self, c: usize, cluster: &Cluster) -> bool {
        let client = &mut self.clients[c];
        let txn = client.txn.as_mut().expect("in a transaction");
        let mut groups: Vec<(u64, Vec<usize>)> = Vec::new();
        for (i, key) in txn.keys.iter().enumerate() {
            let Some((region, _)) = client.regions.locate(cluster, key) else { return false };
            match groups.iter_mut().find(|(id, _)| *id == region.id) {
                Some((_, keys)) => keys.push(i),
                None => groups.push((region.id, vec![i])),
            }
        }
        if groups.len() > 1 && txn.commit == Commit::OnePc {
            txn.commit = Commit::TwoPhase;
        }
        txn.groups = groups.into_iter().map(|(_, keys)| keys).collect();
        txn.min_commit_ts = 0;
        true
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
        let primary = txn.keys[0].clone();
        let (start_ts, commit_ts, for_update_ts) = (txn.start_ts, txn.commit_ts, txn.for_update_ts);
        match step {
            Step::Read(i) => {
                commands::get(&node, V1, txn.keys[*i].clone(), start_ts).map(Output::Value)
            }
            Step::Lock(i) => {
                // Half the locks wait a little for a lock in the way (the server's lock
                // waiting queue); the others fail at once and the client resolves it.
                let wait_timeout_ms = if rng.gen_bool(0.5) { rng.gen_range(50..300) } else { 0 };
                let request = PessimisticLock {
                    keys: vec![(txn.keys[*i].clone(), false)],
                    primary,
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
            Step::Prewrite(g) => {
                let request = self.prewrite(c, &txn.groups[*g]);
                commands::prewrite(&node, V1, request).map(|p| Output::Prewritten {
                    errors: p.errors,
                    min_commit_ts: p.min_commit_ts,
                    one_pc_commit_ts: p.one_pc_commit_ts,
                })
            }
            Step::CommitPrimary | Step::CommitSecondary => {
                let key =
                    if matches!(step, Step::CommitPrimary) { primary } else { txn.keys[1].clone() };
                commands::commit(&node, V1, vec![key], start_ts, commit_ts).map(Output::Committed)
            }
            Step::StartTs | Step::ForUpdateTs(_) | Step::CommitTs => {
                unreachable!("timestamps are not commands")
            }
        }
    }

    /// The prewrite of client `c`'s keys `group` (one Region's).
    fn prewrite(&self, c: usize, group: &[usize]) -> Prewrite {
        let txn = self.clients[c].txn.as_ref().expect("in a transaction");
        let values = self.written(txn);
        let commit = txn.commit;
        let secondaries = txn.keys[1..].to_vec();
        let props = TxnProps {
            start_ts: txn.start_ts,
            primary: txn.keys[0].clone(),
            lock_ttl: LOCK_TTL_MS,
            txn_size: txn.keys.len() as u64,
            for_update_ts: txn.for_update_ts,
            use_async_commit: commit == Commit::Async,
            secondaries: if commit == Commit::Async { secondaries } else { Vec::new() },
            ..TxnProps::default()
        };
        let action = if txn.for_update_ts > TimeStamp::ZERO {
            PessimisticAction::DoPessimisticCheck
        } else {
            PessimisticAction::SkipPessimisticCheck
        };
        let mutations = group
            .iter()
            .map(|&i| {
                let mutation = Mutation {
                    op: MutationOp::Put,
                    key: txn.keys[i].clone(),
                    value: values[i].clone(),
                };
                (mutation, action)
            })
            .collect();
        Prewrite { props, mutations, try_one_pc: commit == Commit::OnePc, max_commit_ts: 0 }
    }

    /// What a writing transaction writes to each of its keys, from what it read.
    fn written(&self, txn: &Current) -> Vec<Vec<u8>> {
        match txn.purpose {
            Purpose::Append(index) => {
                let element = self.history[index].ops.iter().find_map(|op| match op {
                    MicroOp::Append { value, .. } => Some(*value),
                    _ => None,
                });
                let element = element.expect("a transaction appends");
                txn.reads
                    .iter()
                    .map(|read| {
                        let mut list = decode_list(read.as_deref());
                        list.push(element);
                        encode_list(&list)
                    })
                    .collect()
            }
            Purpose::Transfer(amount) => {
                let from = decode_balance(txn.reads[0].as_deref());
                let to = decode_balance(txn.reads[1].as_deref());
                [from - amount, to + amount].iter().map(|b| b.to_string().into_bytes()).collect()
            }
            Purpose::Audit => unreachable!("an audit writes nothing"),
        }
    }

    /// Takes the answer if it is to a transactional request; returns it if it was not.
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
            (Answer::Done { result, .. }, Pending::Command { region, node }) => {
                let reading =
                    matches!(self.clients[c].txn.as_ref().map(|t| &t.step), Some(Step::Read(_)));
                match result {
                    Ok(Output::Value(value)) if reading => self.on_read(c, Ok(value), rng),
                    Ok(Output::Prewritten { mut errors, .. }) if !errors.is_empty() => {
                        self.on_refused(c, errors.swap_remove(0))
                    }
                    Ok(output) => self.on_success(c, Some(output), rng),
                    Err(Failure::Command(CommandError::Txn(e))) if reading => {
                        self.on_read(c, Err(e), rng)
                    }
                    Err(Failure::Command(CommandError::Txn(e))) => self.on_refused(c, e),
                    // Nothing happened (the node is down, or not the Region's leader, or
                    // the client's Region is stale, or the Region changed under the
                    // proposal): another node, as a client would.
                    Err(failure) if failure.is_region_error() && failure.is_definite() => {
                        self.on_region_error(c, cluster, region, node, &failure, rng);
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

    /// A request refused before it did anything: the client learns what it can of the
    /// Regions, goes to another node, and a prewrite groups its keys again (a Region may
    /// have split).
    fn on_region_error(
        &mut self,
        c: usize,
        cluster: &Cluster,
        region: u64,
        node: u64,
        failure: &Failure,
        rng: &mut StdRng,
    ) {
        let step = self.clients[c].txn.as_ref().map(|t| t.step.clone());
        let key = step.as_ref().map(|s| self.key_of(c, s));
        let client = &mut self.clients[c];
        client.regions.on_failure(region, node, failure);
        let leader = key.and_then(|key| cluster.leader_of(&key));
        client.node = match leader {
            Some(leader) if leader != node && rng.gen_bool(0.8) => leader,
            _ => rng.gen_range(1..=self.nodes),
        };
        if let Some(txn) = client.txn.as_mut() {
            if matches!(txn.step, Step::Prewrite(_)) {
                txn.step = Step::Prewrite(0);
            }
        }
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
        for c in 0..self.clients.len() {
            let waiting = self.clients[c].waiting.take();
            let Some(txn) = self.clients[c].txn.take() else { continue };
            let sent = matches!(waiting, Some((_, Pending::Command { .. })));
            let outcome = match txn.step {
                Step::CommitSecondary => Outcome::Committed,
                Step::CommitPrimary if txn.commit == Commit::Async => Outcome::Committed,
                Step::Prewrite(_) if txn.commit != Commit::TwoPhase && sent => {
                    Outcome::Indeterminate
                }
                Step::CommitPrimary if txn.commit_tries > 0 || sent => Outcome::Indeterminate,
                _ => Outcome::Aborted,
            };
            self.record(&txn, outcome);
        }
    }

    fn begin(&mut self, c: usize, rng: &mut StdRng) {
        let commit = match rng.gen_range(0..3) {
            0 => Commit::TwoPhase,
            1 => Commit::Async,
            _ => Commit::OnePc,
        };
        let (purpose, names, keys) = match self.clients[c].workload {
            Workload::ListAppend => {
                let first = rng.gen_range(0..self.lists);
                let second = (first + rng.gen_range(1..self.lists)) % self.lists;
                let index = self.history.len();
                // Unique per list across the history: the checker names versions by them.
                let element = index as u64 + 1;
                self.history.push(elle::Txn {
                    ops: vec![
                        MicroOp::Append { key: first, value: element },
                        MicroOp::Append { key: second, value: element },
                    ],
                    outcome: Outcome::Aborted,
                });
                let names = vec![first, second];
                let keys: Vec<Vec<u8>> = names.iter().map(|&n| list_key(n)).collect();
                (Purpose::Append(index), names, keys)
            }
            Workload::Bank if rng.gen_ratio(1, AUDIT_ONE_IN) => {
                let names: Vec<u64> = (0..self.accounts).collect();
                let keys: Vec<Vec<u8>> = names.iter().map(|&n| account_key(n)).collect();
                (Purpose::Audit, names, keys)
            }
            Workload::Bank => {
                let from = rng.gen_range(0..self.accounts);
                let to = (from + rng.gen_range(1..self.accounts)) % self.accounts;
                let names = vec![from, to];
                let amount = rng.gen_range(1..=INITIAL_BALANCE / 2);
                let keys: Vec<Vec<u8>> = names.iter().map(|&n| account_key(n)).collect();
                (Purpose::Transfer(amount), names, keys)
            }
        };
        let reads = vec![None; keys.len()];
        self.clients[c].txn = Some(Current {
            purpose,
            keys,
            names,
            reads,
            start_ts: TimeStamp::ZERO,
            for_update_ts: TimeStamp::ZERO,
            commit_ts: TimeStamp::ZERO,
            commit,
            step: Step::StartTs,
            groups: Vec::new(),
            min_commit_ts: 0,
            lock_waits: 0,
            commit_tries: 0,
            backoff_ms: 0,
        });
    }

    /// Whether client `c`'s transaction locks its keys as it reads them (a pessimistic
    /// client's, but for an audit, which only reads).
    fn locks(&self, c: usize) -> bool {
        let audit = matches!(self.clients[c].txn.as_ref().map(|t| t.purpose), Some(Purpose::Audit));
        self.clients[c].pessimistic && !audit
    }

    /// Key `i` was read (`value`): recorded, and the transaction moves on.
    fn read_key(
        &mut self,
        c: usize,
        i: usize,
        value: Option<Vec<u8>>,
        rng: &mut StdRng,
    ) -> Option<Step> {
        let pessimistic = self.locks(c);
        let txn = self.clients[c].txn.as_mut().expect("reading in a transaction");
        if let Purpose::Append(index) = txn.purpose {
            let list = decode_list(value.as_deref());
            // Reads go before the appends, in the order they ran.
            self.history[index].ops.insert(i, MicroOp::Read { key: txn.names[i], list });
        }
        txn.reads[i] = value;
        let next = i + 1;
        if next < txn.keys.len() {
            return Some(if pessimistic { Step::Lock(next) } else { Step::Read(next) });
        }
        match txn.purpose {
            Purpose::Audit => {
                let snapshot = txn
                    .names
                    .iter()
                    .zip(&txn.reads)
                    .map(|(&account, read)| (account, decode_balance(read.as_deref())))
                    .collect();
                self.audits.push(snapshot);
                self.end(c, Outcome::Committed);
                None
            }
            // Not enough money: nothing to write.
            Purpose::Transfer(amount) if decode_balance(txn.reads[0].as_deref()) < amount => {
                self.end(c, Outcome::Committed);
                None
            }
            // Gone with every key locked: others wait until the locks expire.
            _ if pessimistic && rng.gen_ratio(1, ABANDON_ONE_IN) => {
                self.end(c, Outcome::Aborted);
                None
            }
            _ => Some(Step::Prewrite(0)),
        }
    }

    fn on_read(&mut self, c: usize, read: Result<Option<Vec<u8>>, TxnError>, rng: &mut StdRng) {
        let txn = self.clients[c].txn.as_ref().expect("reading in a transaction");
        let Step::Read(i) = txn.step else { unreachable!("read in Read") };
        match read {
            Ok(value) => {
                if let Some(step) = self.read_key(c, i, value, rng) {
                    self.clients[c].txn.as_mut().expect("still running").step = step;
                }
            }
            Err(e) => self.on_refused(c, e),
        }
    }

    /// A request succeeded: on to the next step.
    fn on_success(&mut self, c: usize, output: Option<Output>, rng: &mut StdRng) {
        let txn = self.clients[c].txn.as_mut().expect("a step of a transaction");
        let step = std::mem::replace(&mut txn.step, Step::StartTs);
        if let Some(next) = self.next_step(c, step, output, rng) {
            if let Some(txn) = self.clients[c].txn.as_mut() {
                txn.step = next;
            }
        }
    }

    fn txn_mut(&mut self, c: usize) -> &mut Current {
        self.clients[c].txn.as_mut().expect("a step of a transaction")
    }

    /// The step after `step`, which succeeded with `output`; `None` if the transaction
    /// ended.
    fn next_step(
        &mut self,
        c: usize,
        step: Step,
        output: Option<Output>,
        rng: &mut StdRng,
    ) -> Option<Step> {
        let locks = self.locks(c);
        Some(match step {
            Step::StartTs if locks => Step::ForUpdateTs(0),
            Step::StartTs => Step::Read(0),
            Step::Read(i) => Step::Read(i), // reads finish in `on_read`
            Step::ForUpdateTs(i) => Step::Lock(i),
            Step::Lock(i) => {
                let Some(Output::Values(mut values)) = output else {
                    unreachable!("a pessimistic lock answers with the key's value")
                };
                return self.read_key(c, i, values.pop().flatten(), rng);
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
                    let txn = self.txn_mut(c);
                    txn.lock_waits += 1;
                    txn.backoff_ms = rng.gen_range(LOCK_BACKOFF_MS.0..LOCK_BACKOFF_MS.1);
                    if txn.lock_waits > LOCK_WAITS && !matches!(*resume, Step::CommitPrimary) {
                        self.end(c, Outcome::Aborted);
                        return None;
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
            Step::Prewrite(g) => return self.prewritten(c, g, output, rng),
            Step::CommitTs => Step::CommitPrimary,
            Step::CommitPrimary => {
                let purpose = self.txn_mut(c).purpose;
                self.mark_committed(purpose);
                if rng.gen_ratio(1, ABANDON_ONE_IN) {
                    self.end(c, Outcome::Committed);
                    return None;
                }
                Step::CommitSecondary
            }
            Step::CommitSecondary => {
                self.end(c, Outcome::Committed);
                return None;
            }
        })
    }

    /// Group `g`'s prewrite succeeded: the next group's, or the commit.
    fn prewritten(
        &mut self,
        c: usize,
        g: usize,
        output: Option<Output>,
        rng: &mut StdRng,
    ) -> Option<Step> {
        let txn = self.txn_mut(c);
        if let Some(Output::Prewritten { min_commit_ts, .. }) = output {
            txn.min_commit_ts = txn.min_commit_ts.max(min_commit_ts);
        }
        if g + 1 < txn.groups.len() {
            return Some(Step::Prewrite(g + 1));
        }
        match txn.commit {
            Commit::TwoPhase if rng.gen_ratio(1, ABANDON_ONE_IN) => {
                self.end(c, Outcome::Aborted);
                None
            }
            Commit::TwoPhase => Some(Step::CommitTs),
            // Committed: every lock is written, and whoever meets them commits them.
            Commit::Async => {
                txn.commit_ts = TimeStamp(txn.min_commit_ts);
                let purpose = txn.purpose;
                self.mark_committed(purpose);
                if rng.gen_ratio(1, ABANDON_ONE_IN) {
                    self.end(c, Outcome::Committed);
                    return None;
                }
                Some(Step::CommitPrimary)
            }
            Commit::OnePc => {
                self.end(c, Outcome::Committed);
                None
            }
        }
    }

    /// The transaction is known committed (though the client may still be tidying up).
    fn mark_committed(&mut self, purpose: Purpose) {
        if let Purpose::Append(index) = purpose {
            self.history[index].outcome = Outcome::Committed;
        }
    }

    /// A command refused: resolve a lock in the way, or end the transaction.
    fn on_refused(&mut self, c: usize, error: TxnError) {
        let txn = self.clients[c].txn.as_mut().expect("a step of a transaction");
        let step = txn.step.clone();
        match (error, step) {
            // An async-commit transaction committed with its prewrites: its commits only
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
            // Rolled back by a reader (the commit), a write conflict (a prewrite): in each
            // case the transaction did not commit.
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
            // it never commits. Unless the prewrites alone commit it.
            Step::Prewrite(_) if txn.commit == Commit::TwoPhase => self.end(c, Outcome::Aborted),
            Step::Prewrite(_) => self.end(c, Outcome::Indeterminate),
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
            self.record(&txn, outcome);
        }
    }

    fn record(&mut self, txn: &Current, outcome: Outcome) {
        if let Purpose::Append(index) = txn.purpose {
            self.history[index].outcome = outcome;
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
