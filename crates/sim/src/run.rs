//! One simulated run: a seed, a cluster, clients of a few registers (get, put, delete,
//! compare-and-swap), faults, then healing and the checks.
//!
//! Clients run closed loops: each sends one operation, waits for its answer (or gives up
//! after a timeout), thinks a little and sends the next. A write that was refused at once
//! is left out of the check (it cannot have taken effect), and so is one that failed
//! later with an error that says it did not take effect (a stale command, a lost
//! leadership): clients retry on those, so a value written by one must never be read.
//! A write whose answer never came, or came as an unknown outcome, is indeterminate: the
//! checker may place it anywhere after its start, or nowhere. Reads that failed are left
//! out.
//!
//! Faults come from the seed too: crashes (losing unsynced writes) and restarts, pauses
//! longer than the election timeout, partitions (halves, an isolated node, one-way
//! links), clock jumps, slow disks, failed fsyncs and full disks, leadership transfers
//! (some to a node that stalls before it hears of them); message loss, duplication and
//! delay run throughout. At the end the network heals, every node is restarted, and the run
//! waits until every replica has applied the same log; the replicas' data must then be
//! equal, and the history linearizable.

use crate::check::bank;
use crate::check::elle::{self, MicroOp, Outcome};
use crate::check::history::Timing;
use crate::check::linearizable::{self, Op, Verdict};
use crate::check::timestamps::{self, TsObservation};
use crate::cluster::{Answer, Cluster, NetworkConfig, ELECTION_TICKS, TICK_MS};
use crate::flows::{Failure, Output, Target};
use crate::routing::RegionCache;
use crate::txn::{account_key, decode_balance, decode_list, list_key, TxnClients, Wake};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use scandium_raftstore::PeerChange;
use scandium_storage::Cf;
use scandium_txn::command::raw::{self, RawTarget};
use scandium_txn::{Breakages, Command};
use scandium_types::keyspace::ApiVersion;
use scandium_types::{Peer, Region};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The shape of a run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Nodes in the cluster.
    pub nodes: u64,
    /// Replicas of the Region (the other nodes start empty; moves bring them in).
    pub replicas: u64,
    /// Concurrent clients of the registers.
    pub clients: u64,
    /// Concurrent clients asking for timestamps.
    pub tso_clients: u64,
    /// Registers (keys) they share.
    pub keys: u64,
    /// Concurrent clients running list-append transactions.
    pub txn_clients: u64,
    /// Lists the transactions share.
    pub lists: u64,
    /// Concurrent clients of the bank: transfers between accounts, and audits of every
    /// account in one snapshot.
    pub bank_clients: u64,
    /// Bank accounts.
    pub accounts: u64,
    /// Simulated milliseconds of load with faults, before healing.
    pub duration_ms: u64,
    /// Whether faults are injected (message loss and delay always are).
    pub faults: bool,
    /// Breaks the read path on purpose (see [`Cluster::unsafe_reads`]): the checks must
    /// then find stale reads.
    pub unsafe_reads: bool,
    /// Breaks the timestamp oracle on purpose (see [`Cluster::unsafe_tso`]).
    pub unsafe_tso: bool,
    /// Breaks the transaction layer on purpose (see [`Cluster::unsafe_latches`]).
    pub unsafe_latches: bool,
    /// Breaks async commit on purpose (see [`Cluster::unsafe_max_ts`]).
    pub unsafe_max_ts: bool,
    /// Compare-and-swap without a linearizable read first, as the server did before
    /// 2026-12-03: a deposed leader answers a failed swap from its old state.
    pub unsafe_cas: bool,
    /// A new placement leader forgets when stores were last heard from (see
    /// `ControlPlane::forgetting_liveness`): a node lost before the change is never
    /// replaced.
    pub unsafe_liveness: bool,
    /// Breaks hibernation on purpose (see `RaftConfig::unsafe_sleeping_lease`); every run
    /// then hibernates.
    pub unsafe_sleeping_lease: bool,
    /// Breaks merges on purpose (see `RaftConfig::unsafe_frozen_reads`): a frozen source
    /// goes on serving reads.
    pub unsafe_frozen_reads: bool,
    /// Whether Regions are split during the run (at random points, every 1–2.5 s).
    pub splits: bool,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            nodes: 4,
            replicas: 3,
            clients: 5,
            tso_clients: 2,
            keys: 3,
            txn_clients: 3,
            lists: 4,
            bank_clients: 2,
            accounts: 6,
            duration_ms: 20_000,
            faults: true,
            unsafe_reads: false,
            unsafe_tso: false,
            unsafe_latches: false,
            unsafe_max_ts: false,
            unsafe_cas: false,
            unsafe_liveness: false,
            unsafe_sleeping_lease: false,
            unsafe_frozen_reads: false,
            splits: true,
        }
    }
}

/// What one operation did, as the client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// The client that ran it.
    pub client: u64,
    /// The node it was sent to.
    pub node: u64,
    /// The register.
    pub key: u64,
    /// What the client asked for.
    pub request: Request,
    /// For a get that completed: the value it returned; for a compare-and-swap, the
    /// value the store found (it swapped if that was the expected one).
    pub read: Option<Option<Vec<u8>>>,
    /// When it was sent (simulated ms).
    pub invoke: u64,
    /// When its answer came; `None` if it is indeterminate.
    pub complete: Option<u64>,
    /// A write the store answered with an error promising it did not take effect.
    pub refused: bool,
}

/// An operation on a register, as the raw API has them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// A get.
    Get,
    /// A put of a value no other operation writes.
    Put(Vec<u8>),
    /// A delete.
    Delete,
    /// A compare-and-swap (`RawCompareAndSwap`): `new` if the key holds `expected`
    /// (`None`: absent).
    Cas {
        /// What the key must hold.
        expected: Option<Vec<u8>>,
        /// A value no other operation writes.
        new: Vec<u8>,
    },
}

impl Operation {
    /// The value a put wrote.
    pub fn put_value(&self) -> Option<&Vec<u8>> {
        match &self.request {
            Request::Put(value) => Some(value),
            _ => None,
        }
    }
}

/// Everything a run produced.
#[derive(Debug)]
pub struct RunReport {
    /// The seed that replays it.
    pub seed: u64,
    /// Operations, in the order they were sent.
    pub history: Vec<Operation>,
    /// Timestamp requests: when sent, and when answered with which timestamp.
    pub timestamps: Vec<(u64, Option<(u64, u64)>)>,
    /// The list-append transactions, in the order they began, and last a read of every
    /// list after healing (with every transaction's fate settled).
    pub transactions: Vec<elle::Txn>,
    /// What went wrong: empty when every check passed.
    pub anomalies: Vec<String>,
    /// What the run injected, in order, for reading a failure.
    pub faults: Vec<String>,
    /// Simulated milliseconds, healing included.
    pub simulated_ms: u64,
    /// Messages sent over the simulated network.
    pub messages: u64,
    /// Data Regions at the end of the run.
    pub regions: usize,
    /// Splits applied.
    pub splits: u64,
    /// Merges applied (Regions absorbed).
    pub merges: u64,
    /// Operators of the control plane that finished.
    pub operators: u64,
    /// How many times a group went to sleep (see `scandium_raftstore::hibernate`).
    pub slept: u64,
}

impl RunReport {
    /// The history as text, one operation per line: two runs of a seed must give the same
    /// bytes.
    pub fn history_text(&self) -> String {
        let mut text = String::new();
        for op in &self.history {
            let _ = writeln!(text, "{op:?}");
        }
        for (invoke, answer) in &self.timestamps {
            let _ = writeln!(text, "timestamp sent {invoke}: {answer:?}");
        }
        for txn in &self.transactions {
            let _ = writeln!(text, "{txn:?}");
        }
        text
    }
}

/// How long a client waits for an answer before it gives up on an operation.
const CLIENT_TIMEOUT_MS: u64 = 1_000;
/// Simulated time allowed for the cluster to converge after healing.
const HEAL_MS: u64 = 30_000;

/// External events, as tokens through the cluster's queue.
const CLIENT: u64 = 1 << 40;
const TIMEOUT: u64 = 2 << 40;
const FAULT: u64 = 3 << 40;
const TSO_CLIENT: u64 = 4 << 40;
const TSO_TIMEOUT: u64 = 5 << 40;
const TXN_CLIENT: u64 = 6 << 40;
const TXN_TIMEOUT: u64 = 7 << 40;
const SPLIT: u64 = 8 << 40;
/// A fault aimed at a merge under way: the low bits index the run's `aims`.
const MERGE_FAULT: u64 = 9 << 40;
/// Marks the op ids of timestamp requests in the cluster's answers.
const TSO_OP: u64 = 1 << 32;
const KIND: u64 = 0xff << 40;

struct Client {
    pending: Option<usize>,
    /// The node it sends to.
    node: u64,
    written: u64,
    /// What it last saw each register hold: what it expects in a compare-and-swap.
    seen: BTreeMap<u64, Option<Vec<u8>>>,
    /// When the client sent a request that sits in a paused node's socket buffer.
    sent_at: Option<u64>,
    /// The Regions it knows of.
    regions: RegionCache,
    /// The Region its pending operation went to.
    region: u64,
}

/// Runs the simulation of `seed`.
pub fn run(seed: u64, config: &RunConfig) -> RunReport {
    let mut rng = StdRng::seed_from_u64(seed);
    let network = if config.faults {
        NetworkConfig { delay_ms: (1, 20), drop: 0.02, duplicate: 0.01 }
    } else {
        NetworkConfig { delay_ms: (1, 5), drop: 0.0, duplicate: 0.0 }
    };
    let breakages = Breakages {
        unsafe_latches: config.unsafe_latches,
        unsafe_max_ts: config.unsafe_max_ts,
        unsafe_cas: config.unsafe_cas,
    };
    let mut cluster = Cluster::new(config.nodes, config.replicas, network, breakages, &mut rng);
    cluster.unsafe_reads = config.unsafe_reads;
    cluster.unsafe_tso = config.unsafe_tso;
    cluster.set_unsafe_liveness(config.unsafe_liveness);
    if config.unsafe_sleeping_lease {
        cluster.set_unsafe_sleeping_lease();
    }
    if config.unsafe_frozen_reads {
        cluster.set_unsafe_frozen_reads();
    }
    let mut clients: Vec<Client> = (0..config.clients)
        .map(|_| Client {
            pending: None,
            node: rng.gen_range(1..=config.nodes),
            written: 0,
            seen: BTreeMap::new(),
            sent_at: None,
            regions: RegionCache::default(),
            region: 0,
        })
        .collect();
    for c in 0..config.clients {
        cluster.schedule_external(rng.gen_range(0..50), CLIENT | c);
    }
    let mut tso = Tso {
        clients: (0..config.tso_clients)
            .map(|_| TsoClient { pending: None, node: rng.gen_range(1..=config.nodes) })
            .collect(),
        requests: Vec::new(),
    };
    for c in 0..config.tso_clients {
        cluster.schedule_external(rng.gen_range(0..50), TSO_CLIENT | c);
    }
    let mut txns = TxnClients::new(
        config.txn_clients,
        config.lists,
        config.bank_clients,
        config.accounts,
        config.nodes,
        &mut rng,
    );
    for c in 0..txns.len() as u64 {
        cluster.schedule_external(rng.gen_range(0..50), TXN_CLIENT | c);
    }
    if config.faults {
        cluster.schedule_external(rng.gen_range(500..3_000), FAULT);
    }
    if config.splits {
        cluster.schedule_external(rng.gen_range(200..1_500), SPLIT);
    }
    // Quiet spells: every client holds its next request, so that groups go idle and
    // hibernate, and the faults of the spell meet sleeping groups.
    let quiet: Vec<(u64, u64)> = (0..rng.gen_range(1..=3))
        .map(|_| {
            let start = rng.gen_range(1_000..config.duration_ms.max(2_001) - 1_000);
            (start, start + rng.gen_range(500..3_000))
        })
        .collect();
    let mut history: Vec<Operation> = Vec::new();
    let mut faults = Vec::new();
    let mut recovery: Vec<Recovery> = Vec::new();
    // A node lost for good, or a store removed: at most one per run.
    let mut departed: Option<Departure> = None;
    // Merges proposed: half of them meet a fault aimed at one of their Regions within
    // 40 ms, while the source is frozen or the commit on its way.
    let mut aims: Vec<(u64, u64)> = Vec::new();
    let end = config.duration_ms;
    loop {
        let (token, answers) = cluster.next(end, &mut rng);
        for merge in std::mem::take(&mut cluster.prepares) {
            if config.faults && rng.gen_bool(0.5) {
                cluster.schedule_external(rng.gen_range(0..40), MERGE_FAULT | aims.len() as u64);
                aims.push(merge);
            }
        }
        let mut wake = Wake::default();
        for answer in answers {
            let Some(answer) = txns.on_answer(&mut cluster, answer, &mut rng, &mut wake) else {
                continue;
            };
            if !tso.on_answer(&mut cluster, &answer, &mut rng) {
                on_answer(&mut cluster, &mut clients, &mut history, answer, config, &mut rng);
            }
        }
        let Some(token) = token else {
            schedule_wake(&mut cluster, wake);
            if cluster.now() >= end {
                break;
            }
            continue;
        };
        let now = cluster.now();
        if let Some(&(_, until)) = (quiet.iter())
            .find(|(from, until)| (*from..*until).contains(&now))
            .filter(|_| matches!(token & KIND, CLIENT | TSO_CLIENT | TXN_CLIENT))
        {
            cluster.schedule_external(until - now + rng.gen_range(0..50), token);
            schedule_wake(&mut cluster, wake);
            continue;
        }
        match token & KIND {
            CLIENT => {
                let c = token & !KIND;
                send_next(&mut cluster, &mut clients, c, &mut history, config, &mut rng);
            }
            TIMEOUT => {
                let op = (token & !KIND) as usize;
                let client = history[op].client as usize;
                if clients[client].pending == Some(op) {
                    give_up(&mut cluster, &mut clients[client], &history, op, config, &mut rng);
                }
            }
            TSO_CLIENT => tso.send(&mut cluster, token & !KIND, config, &mut rng),
            TXN_CLIENT => txns.act(&mut cluster, (token & !KIND) as usize, &mut rng, &mut wake),
            TXN_TIMEOUT => txns.on_timeout(token & !KIND, &mut rng, &mut wake),
            TSO_TIMEOUT => {
                let request = (token & !KIND) as usize;
                tso.give_up(&mut cluster, request, config, &mut rng);
            }
            // A split at a random point (as `scandium ctl split`), then every node's
            // split check by size and records (as the server's, with tiny Regions: see
            // `SIZE_SPLITS`).
            SPLIT => {
                let key = SPLIT_KEYS[rng.gen_range(0..SPLIT_KEYS.len())];
                if cluster.split(key.as_bytes(), &mut rng) {
                    faults.push(format!("{} ms: split at {key}", cluster.now()));
                }
                for id in 1..=config.nodes {
                    for key in cluster.check_split(id, &SIZE_SPLITS, &mut rng) {
                        let (now, key) = (cluster.now(), String::from_utf8_lossy(&key));
                        faults.push(format!("{now} ms: node {id} split by size at {key}"));
                    }
                }
                cluster.schedule_external(rng.gen_range(1_000..2_500), SPLIT);
            }
            FAULT => {
                insist_on_removal(&mut cluster, departed, &mut rng);
                let recovered = recovery.iter().position(|r| r.at <= cluster.now());
                if let Some(i) = recovered {
                    let r = recovery.remove(i);
                    faults.push(format!("{} ms: {}", cluster.now(), r.describe()));
                    r.apply(&mut cluster, departed);
                } else {
                    let (what, undo) = inject(&mut cluster, &mut departed, None, &mut rng);
                    faults.push(format!("{} ms: {what}", cluster.now()));
                    expect_recovery(&mut cluster, &mut recovery, undo);
                    cluster.schedule_external(rng.gen_range(1_000..4_000), FAULT);
                }
            }
            MERGE_FAULT => {
                let (source, target) = aims[(token & !KIND) as usize];
                let (what, undo) =
                    aim_at_merge(&mut cluster, &mut departed, source, target, &mut rng);
                faults.push(format!("{now} ms: merge of region {source} into {target}: {what}"));
                expect_recovery(&mut cluster, &mut recovery, undo);
            }
            _ => unreachable!("only the run schedules external events"),
        }
        schedule_wake(&mut cluster, wake);
    }

    // Heal: every link back, every node up (but one lost for good), no more load; wait for
    // every Region's replicas to agree, and for the control plane to have given every
    // Region its replicas on the stores that remain.
    cluster.heal();
    for id in cluster.ids() {
        cluster.clear_disk_faults(id);
        if departed != Some(Departure::Lost(id)) {
            cluster.restart(id);
        }
    }
    faults.push(format!("{} ms: healed; every node restarted", cluster.now()));
    for c in &mut clients {
        c.pending = None;
    }
    let mut anomalies = Vec::new();
    let deadline = cluster.now() + HEAL_MS;
    let settled = loop {
        let unsettled = unsettled(&cluster, config, departed);
        if unsettled.is_none() {
            break None;
        }
        if cluster.now() >= deadline {
            break unsettled;
        }
        insist_on_removal(&mut cluster, departed, &mut rng);
        let until = cluster.now() + 100;
        while cluster.now() < until {
            let (token, answers) = cluster.next(until, &mut rng);
            // No more load: the clients' next turns are not scheduled.
            let mut wake = Wake::default();
            for answer in answers {
                let Some(answer) = txns.on_answer(&mut cluster, answer, &mut rng, &mut wake) else {
                    continue;
                };
                if !tso.on_answer(&mut cluster, &answer, &mut rng) {
                    on_answer(&mut cluster, &mut clients, &mut history, answer, config, &mut rng);
                }
            }
            if token.is_none() && cluster.now() >= until {
                break;
            }
        }
    };
    let converged = settled.is_none();
    if let Some(why) = settled {
        anomalies.push(format!("the cluster did not settle within {HEAL_MS} ms of healing: {why}"));
    }
    // Writes still pending never got an answer: they stay indeterminate.
    anomalies.extend(check_history(&history));
    anomalies.extend(check_timestamps(&tso.requests));
    txns.finish();
    let mut transactions = std::mem::take(&mut txns.history);
    if converged {
        let ops = (0..config.lists.max(2))
            .map(|key| {
                let leader =
                    cluster.leader_of(&list_key(key)).expect("a settled Region has a leader");
                let value = cluster.txn_final_value(leader, &list_key(key));
                let value = value.expect("the leader is up");
                MicroOp::Read { key, list: decode_list(value.as_deref()) }
            })
            .collect();
        transactions.push(elle::Txn { ops, outcome: Outcome::Committed });
        anomalies.extend(check_transactions(&transactions));
        // The bank's final balances, every transfer's fate settled, must add up too.
        let final_read: bank::Snapshot = (0..config.accounts)
            .map(|account| {
                let key = account_key(account);
                let leader = cluster.leader_of(&key).expect("a settled Region has a leader");
                let value = cluster.txn_final_value(leader, &key).expect("the leader is up");
                (account, decode_balance(value.as_deref()))
            })
            .collect();
        txns.audits.push(final_read);
    }
    anomalies.extend(check_bank(config.accounts, &txns.audits));
    RunReport {
        seed,
        history,
        timestamps: tso.requests,
        transactions,
        anomalies,
        faults,
        simulated_ms: cluster.now(),
        messages: cluster.sent,
        regions: cluster.led_regions().len(),
        splits: cluster.splits_done,
        merges: cluster.merged.len() as u64,
        operators: cluster.operators_finished(),
        slept: cluster.groups_slept(),
    }
}

/// The split policy of the simulated split checks: Regions of a few KiB, so that the
/// runs' registers, accounts and lists (whose versions pile up) are split by size and
/// record count as a server's Regions are at 96 MiB.
const SIZE_SPLITS: scandium_raftstore::SplitPolicy = scandium_raftstore::SplitPolicy {
    split_size: 2 << 10,
    max_size: 4 << 10,
    split_keys: 48,
    max_keys: 96,
    max_split_keys: 4,
};

/// Keys the run splits at, drawn at random: between and among the registers (`k0`..),
/// the lists (`list0`..) and elsewhere, so that requests and transactions span Regions.
const SPLIT_KEYS: [&str; 16] = [
    "a", "acct2", "acct5", "f", "k", "k1", "k2", "l", "list1", "list2", "list3", "m", "r", "s",
    "t", "x",
];

/// A node gone from the cluster for the rest of the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Departure {
    /// Crashed, its disk lost: never restarted.
    Lost(u64),
    /// Removed by the operator (`scandium ctl store remove`): drained, then retired.
    Removed(u64),
}

/// A store removal whose proposal was lost (the placement leader changed before it
/// committed) is asked for again, as an operator would run `ctl store remove` again.
fn insist_on_removal(cluster: &mut Cluster, departed: Option<Departure>, rng: &mut StdRng) {
    let Some(Departure::Removed(store)) = departed else { return };
    if cluster.store_state(store) == Some(scandium_types::StoreState::Up) {
        cluster.remove_store(store, rng);
    }
}

/// Why the cluster has not settled yet after healing, if it has not: a Region whose
/// replicas disagree, or that does not have the replicas it should (all voters, on the
/// stores that remain), or a removed store not yet retired.
fn unsettled(cluster: &Cluster, config: &RunConfig, departed: Option<Departure>) -> Option<String> {
    let gone = |store: u64| matches!(departed, Some(Departure::Lost(s) | Departure::Removed(s)) if s == store);
    let remaining = cluster.ids().filter(|&id| !gone(id)).count() as u64;
    let wanted = config.replicas.min(remaining) as usize;
    let regions = cluster.led_regions();
    // Led Regions must tile the key space: a gap is keys no one serves.
    let mut next_start: &[u8] = b"";
    for (_, region) in &regions {
        if region.start_key != next_start {
            let from = next_start.escape_ascii().to_string();
            let views = cluster.views_of(next_start);
            return Some(format!("no Region is led from {from:?}: replicas {views:?}"));
        }
        next_start = &region.end_key;
        if next_start.is_empty() {
            break;
        }
    }
    if regions.is_empty() || !next_start.is_empty() {
        let from = next_start.escape_ascii().to_string();
        let views = cluster.views_of(next_start);
        return Some(format!("no Region is led from {from:?} to the end: replicas {views:?}"));
    }
    for (_, region) in &regions {
        let states = cluster.replica_states(region);
        let first = states.first().and_then(|(_, state)| state.clone());
        if first.is_none() || states.iter().any(|(_, state)| *state != first) {
            let locals = cluster.describe(region);
            return Some(format!(
                "region {} ({:?})'s replicas disagree: (node, (applied index, digests)) \
                 {states:?}; as each node holds it and what overlaps it: {locals:?}",
                region.id, region.peers
            ));
        }
        let voters = region.voters().filter(|p| !gone(p.store_id)).count();
        if voters != wanted || region.peers.len() != wanted {
            return Some(format!(
                "region {} has {:?}, not {wanted} voters on the stores that remain",
                region.id, region.peers
            ));
        }
    }
    if let Some(Departure::Removed(store)) = departed {
        let state = cluster.store_state(store);
        if state != Some(scandium_types::StoreState::Tombstone) {
            let holding = cluster.holding(store);
            return Some(format!("removed store {store} is {state:?}, not retired: {holding}"));
        }
    }
    None
}

fn key_of(k: u64) -> Vec<u8> {
    format!("k{k}").into_bytes()
}

fn send_next(
    cluster: &mut Cluster,
    clients: &mut [Client],
    c: u64,
    history: &mut Vec<Operation>,
    config: &RunConfig,
    rng: &mut StdRng,
) {
    let client = &mut clients[c as usize];
    if client.pending.is_some() {
        return;
    }
    let key = rng.gen_range(0..config.keys);
    let Some((region, leader)) = client.regions.locate(cluster, &key_of(key)) else {
        return retry_elsewhere(cluster, client, c, key, config, rng);
    };
    // To the store believed to lead the key's Region, as tikv-client routes a request
    // (the same node again when it waited for a paused one).
    if let (Some(leader), None) = (leader, client.sent_at) {
        client.node = leader;
    }
    let node = client.node;
    let paused_until = cluster.paused_until(node);
    if cluster.is_up(node) && paused_until > cluster.now() {
        // The request waits in the paused node's socket until it resumes, and may then be
        // served before the Raft messages queued behind it: the moment a deposed leader
        // would answer from its old state if its lease did not stop it. Some clients wait
        // that long; the others give up and go elsewhere, so the rest of the cluster has
        // load meanwhile.
        let sent = *client.sent_at.get_or_insert(cluster.now());
        let patience = rng.gen_range(0..2 * CLIENT_TIMEOUT_MS);
        if paused_until <= sent + patience {
            cluster.schedule_external(paused_until - cluster.now(), CLIENT | c);
        } else {
            client.sent_at = None;
            let waited = (sent + patience).saturating_sub(cluster.now());
            client.node = rng.gen_range(1..=config.nodes);
            cluster.schedule_external(waited.max(1), CLIENT | c);
        }
        return;
    }
    let op = history.len();
    let now = client.sent_at.take().unwrap_or(cluster.now());
    let request = match rng.gen_range(0..20) {
        0..=9 => Request::Get,
        10..=14 => Request::Put(client.next_value(c)),
        15..=16 => Request::Delete,
        _ => Request::Cas {
            expected: client.seen.get(&key).cloned().flatten(),
            new: client.next_value(c),
        },
    };
    let sent = Operation {
        client: c,
        node,
        key,
        request,
        read: None,
        invoke: now,
        complete: None,
        refused: false,
    };
    // The server's own raw commands, without TTLs (so the time does not matter).
    let txn = cluster.txn_node(node);
    let target = RawTarget { api: ApiVersion::V1, cf: Cf::Raw };
    let command: Command<Output> = match &sent.request {
        Request::Get => raw::get(&txn, target, key_of(key)).map(Output::Value),
        Request::Put(value) => {
            raw::put(&txn, target, vec![(key_of(key), value.clone(), 0)]).map(|()| Output::Done)
        }
        Request::Delete => raw::delete(&txn, target, vec![key_of(key)]).map(|()| Output::Done),
        Request::Cas { expected, new } => {
            let (expected, new) = (expected.clone(), new.clone());
            raw::compare_and_swap(&txn, target, key_of(key), expected, new, 0).map(Output::Swapped)
        }
    };
    history.push(sent);
    client.pending = Some(op);
    client.region = region.id;
    let region = Target::Request { region_id: region.id, epoch: region.epoch() };
    cluster.submit(node, op as u64, region, command, rng);
    cluster.schedule_external(CLIENT_TIMEOUT_MS, TIMEOUT | op as u64);
}

impl Client {
    /// A value no other write of the run writes.
    fn next_value(&mut self, c: u64) -> Vec<u8> {
        self.written += 1;
        format!("c{c}.{}", self.written).into_bytes()
    }
}

/// The node refused or is gone: try another one soon, as a client does when its cached
/// leader fails it: the node leading register `key`'s Region (as placement would name
/// it), or any.
fn retry_elsewhere(
    cluster: &mut Cluster,
    client: &mut Client,
    c: u64,
    key: u64,
    config: &RunConfig,
    rng: &mut StdRng,
) {
    let failed = client.node;
    client.node = match cluster.leader_of(&key_of(key)) {
        Some(leader) if leader != failed && rng.gen_bool(0.8) => leader,
        _ => rng.gen_range(1..=config.nodes),
    };
    cluster.schedule_external(rng.gen_range(5..30), CLIENT | c);
}

/// The client stops waiting: a write stays in the history as indeterminate; a read that
/// never answered says nothing and is left out by the checker (it has no result).
fn give_up(
    cluster: &mut Cluster,
    client: &mut Client,
    history: &[Operation],
    op: usize,
    config: &RunConfig,
    rng: &mut StdRng,
) {
    client.pending = None;
    retry_elsewhere(cluster, client, history[op].client, history[op].key, config, rng);
}

fn on_answer(
    cluster: &mut Cluster,
    clients: &mut [Client],
    history: &mut [Operation],
    answer: Answer,
    config: &RunConfig,
    rng: &mut StdRng,
) {
    let now = cluster.now();
    // Timestamps are taken by `Tso::on_answer` before this is called.
    let Answer::Done { op, result } = answer else { return };
    let op = op as usize;
    let Some(c) = take_pending(clients, history, op) else { return };
    let client = &mut clients[c as usize];
    let key = history[op].key;
    match result {
        Ok(output) => {
            history[op].complete = Some(now);
            let seen = match (&history[op].request, output) {
                (Request::Get, Output::Value(value)) => {
                    history[op].read = Some(value.clone());
                    value
                }
                (Request::Put(value), _) => Some(value.clone()),
                (Request::Delete, _) => None,
                // The store says what it found; the swap happened if that was expected.
                (Request::Cas { new, .. }, Output::Swapped(outcome)) => {
                    history[op].read = Some(outcome.previous.clone());
                    if outcome.succeeded {
                        Some(new.clone())
                    } else {
                        outcome.previous
                    }
                }
                (request, output) => unreachable!("{request:?} answered {output:?}"),
            };
            client.seen.insert(key, seen);
            cluster.schedule_external(rng.gen_range(1..10), CLIENT | c);
        }
        // A write that may still take effect stays indeterminate; a read says nothing.
        Err(failure) if !failure.is_definite() => {
            cluster.schedule_external(rng.gen_range(1..10), CLIENT | c);
        }
        // Nothing happened: left out of the check, and the client goes elsewhere.
        Err(failure) => {
            history[op].refused = history[op].request != Request::Get;
            client.regions.on_failure(client.region, history[op].node, &failure);
            if matches!(failure, Failure::Proposal(_)) {
                cluster.schedule_external(rng.gen_range(1..10), CLIENT | c);
            } else {
                retry_elsewhere(cluster, client, c, key, config, rng);
            }
        }
    }
}

/// The client waiting for `op`, which stops waiting; `None` if it gave up on it already
/// (a late answer changes nothing: the operation stays indeterminate).
fn take_pending(clients: &mut [Client], history: &[Operation], op: usize) -> Option<u64> {
    let c = history[op].client;
    let client = &mut clients[c as usize];
    (client.pending == Some(op)).then(|| {
        client.pending = None;
        c
    })
}

/// The clients asking for timestamps, and what they got.
struct Tso {
    clients: Vec<TsoClient>,
    requests: Vec<(u64, Option<(u64, u64)>)>,
}

struct TsoClient {
    pending: Option<usize>,
    node: u64,
}

impl Tso {
    fn send(&mut self, cluster: &mut Cluster, c: u64, config: &RunConfig, rng: &mut StdRng) {
        let client = &mut self.clients[c as usize];
        if client.pending.is_some() {
            return;
        }
        let request = self.requests.len();
        if cluster.timestamp(client.node, TSO_OP | request as u64, rng) {
            self.requests.push((cluster.now(), None));
            client.pending = Some(request);
            cluster.schedule_external(CLIENT_TIMEOUT_MS, TSO_TIMEOUT | request as u64);
        } else {
            // Not the placement leader, or down: ask another node soon.
            client.node = rng.gen_range(1..=config.nodes);
            cluster.schedule_external(rng.gen_range(5..30), TSO_CLIENT | c);
        }
    }

    fn give_up(
        &mut self,
        cluster: &mut Cluster,
        request: usize,
        config: &RunConfig,
        rng: &mut StdRng,
    ) {
        if let Some(c) = self.clients.iter().position(|c| c.pending == Some(request)) {
            self.clients[c].pending = None;
            self.clients[c].node = rng.gen_range(1..=config.nodes);
            cluster.schedule_external(rng.gen_range(5..30), TSO_CLIENT | c as u64);
        }
    }

    /// Takes the answer if it is to a timestamp request.
    fn on_answer(&mut self, cluster: &mut Cluster, answer: &Answer, rng: &mut StdRng) -> bool {
        let Answer::Timestamp { op, ts } = answer else { return false };
        let request = (op & !TSO_OP) as usize;
        let Some(c) = self.clients.iter().position(|c| c.pending == Some(request)) else {
            return true;
        };
        self.clients[c].pending = None;
        if let Some(ts) = ts {
            self.requests[request].1 = Some((cluster.now(), ts.0));
        }
        cluster.schedule_external(rng.gen_range(1..20), TSO_CLIENT | c as u64);
        true
    }
}

fn schedule_wake(cluster: &mut Cluster, wake: Wake) {
    for (delay, c) in wake.turns {
        cluster.schedule_external(delay.max(1), TXN_CLIENT | c as u64);
    }
    for (delay, op) in wake.timeouts {
        cluster.schedule_external(delay, TXN_TIMEOUT | op);
    }
}

/// Snapshot isolation of the transactions (the last of which is the final read of
/// every list), and every committed append in the final lists.
pub fn check_transactions(transactions: &[elle::Txn]) -> Vec<String> {
    let mut anomalies = Vec::new();
    let report = elle::check(transactions);
    for anomaly in report.anomalies.iter().filter(|a| !a.kind.allowed_under_si()).take(5) {
        anomalies.push(format!("transactions: {anomaly}"));
    }
    let Some((last, earlier)) = transactions.split_last() else { return anomalies };
    let finals: Vec<(u64, &Vec<u64>)> = last
        .ops
        .iter()
        .filter_map(|op| match op {
            MicroOp::Read { key, list } => Some((*key, list)),
            _ => None,
        })
        .collect();
    for (i, txn) in earlier.iter().enumerate() {
        if txn.outcome != Outcome::Committed {
            continue;
        }
        for op in &txn.ops {
            let MicroOp::Append { key, value } = op else { continue };
            let kept = finals.iter().any(|(k, list)| k == key && list.contains(value));
            if !kept && anomalies.len() < 10 {
                anomalies.push(format!(
                    "transactions: committed transaction {i}'s append of {value} to list {key} is not in the final list"
                ));
            }
        }
    }
    anomalies
}

/// Every audit of the bank (the last one, the balances after healing) adds up to the
/// money the accounts started with, and no balance is negative.
fn check_bank(accounts: u64, audits: &[bank::Snapshot]) -> Vec<String> {
    let names: Vec<u64> = (0..accounts).collect();
    let total = crate::txn::INITIAL_BALANCE * accounts as i64;
    let report = bank::check(&names, total, audits);
    report.anomalies.iter().take(5).map(|a| format!("bank: {a}")).collect()
}

/// Timestamps unique and increasing in real time.
fn check_timestamps(requests: &[(u64, Option<(u64, u64)>)]) -> Vec<String> {
    let observations: Vec<TsObservation> = requests
        .iter()
        .filter_map(|&(invoke, answer)| {
            answer.map(|(complete, ts)| TsObservation { invoke, complete, ts })
        })
        .collect();
    let report = timestamps::check(&observations);
    if report.is_valid() {
        return Vec::new();
    }
    let text = report.to_string();
    let lines: Vec<&str> = text.lines().collect();
    let more = lines.len().saturating_sub(5);
    let mut summary = format!("timestamps: {}", lines[..lines.len().min(5)].join("; "));
    if more > 0 {
        summary.push_str(&format!("; and {more} more"));
    }
    vec![summary]
}

/// Keeps a fault's undoing, if it has one, and wakes the fault flow when it is due.
fn expect_recovery(cluster: &mut Cluster, recovery: &mut Vec<Recovery>, undo: Option<Recovery>) {
    if let Some(undo) = undo {
        cluster.schedule_external(undo.at - cluster.now(), FAULT);
        recovery.push(undo);
    }
}

/// Undoing a fault, due at a time.
struct Recovery {
    at: u64,
    action: Undo,
}

#[derive(Clone, Copy)]
enum Undo {
    Restart(u64),
    Heal,
    DiskBack(u64),
    FreeSpace(u64),
}

impl Recovery {
    fn describe(&self) -> String {
        match self.action {
            Undo::Restart(id) => format!("restart node {id}"),
            Undo::Heal => "heal the network".into(),
            Undo::DiskBack(id) => format!("node {id}'s disk is fast again"),
            Undo::FreeSpace(id) => format!("free node {id}'s disk and restart it"),
        }
    }

    fn apply(&self, cluster: &mut Cluster, departed: Option<Departure>) {
        if let (Undo::Restart(id) | Undo::FreeSpace(id), Some(Departure::Lost(lost))) =
            (self.action, departed)
        {
            if id == lost {
                return;
            }
        }
        match self.action {
            Undo::Restart(id) => cluster.restart(id),
            Undo::Heal => cluster.heal(),
            Undo::DiskBack(id) => cluster.set_disk_latency(id, 0),
            Undo::FreeSpace(id) => {
                cluster.clear_disk_faults(id);
                cluster.restart(id);
            }
        }
    }
}

/// A fault aimed at the merge of `source` into `target`, proposed a moment ago: one in
/// five times the target is split (the commit, if it comes after, finds the target
/// changed, and the source rolls back), else one of [`inject`]'s faults aimed at the
/// leader of either Region, the source's even while frozen.
fn aim_at_merge(
    cluster: &mut Cluster,
    departed: &mut Option<Departure>,
    source: u64,
    target: u64,
    rng: &mut StdRng,
) -> (String, Option<Recovery>) {
    if rng.gen_bool(0.2) {
        let Some((_, region)) = cluster.group_leader(target) else {
            return ("no leader of the target to split".into(), None);
        };
        let inside =
            |key: &&str| region.contains(key.as_bytes()) && region.start_key != key.as_bytes();
        let keys: Vec<&str> = SPLIT_KEYS.iter().copied().filter(inside).collect();
        if keys.is_empty() {
            return ("no key to split the target at".into(), None);
        }
        let key = keys[rng.gen_range(0..keys.len())];
        if !cluster.split(key.as_bytes(), rng) {
            return ("the target could not be split".into(), None);
        }
        return (format!("split the target at {key}"), None);
    }
    let group = if rng.gen_bool(0.5) { source } else { target };
    match cluster.group_leader(group) {
        Some(aim) => inject(cluster, departed, Some(aim), rng),
        None => (format!("no leader of region {group}"), None),
    }
}

/// Injects one fault chosen by the seed, mostly aimed at `aim` (a leader and its Region)
/// if given, else at a led Region drawn at random; returns what it was and how it ends.
/// Besides failures, the "faults" include what a scheduler does under load: moving a
/// replica to the node without one (a learner first, then one joint change promoting it
/// and removing a voter) and transferring leadership.
fn inject(
    cluster: &mut Cluster,
    departed: &mut Option<Departure>,
    aim: Option<(u64, Region)>,
    rng: &mut StdRng,
) -> (String, Option<Recovery>) {
    let n = cluster.ids().count() as u64;
    let now = cluster.now();
    let led = aim.or_else(|| {
        let regions = cluster.led_regions();
        (!regions.is_empty()).then(|| regions[rng.gen_range(0..regions.len())].clone())
    });
    let lost = match departed {
        Some(Departure::Lost(id)) => Some(*id),
        _ => None,
    };
    let target = match (rng.gen_bool(0.6), &led) {
        (true, Some((leader, _))) => *leader,
        _ => rng.gen_range(1..=n),
    };
    if Some(target) == lost {
        return (format!("node {target} is gone"), None);
    }
    let later = |rng: &mut StdRng, low: u64, high: u64| now + rng.gen_range(low..high);
    match rng.gen_range(0..11) {
        10 if departed.is_none() && n >= 4 && now >= 3_000 => {
            if rng.gen_bool(0.5) {
                cluster.crash(target, rng);
                *departed = Some(Departure::Lost(target));
                return (format!("node {target} is lost for good"), None);
            }
            if !cluster.remove_store(target, rng) {
                return ("no placement leader to remove a store".into(), None);
            }
            *departed = Some(Departure::Removed(target));
            (format!("store {target} is removed"), None)
        }
        10 => ("no departure this time".into(), None),
        9 => {
            let ms = rng.gen_range(100..5_000) * if rng.gen_bool(0.5) { 1 } else { -1 };
            cluster.jump_wall_clock(target, ms);
            (format!("node {target}'s wall clock jumps {ms} ms"), None)
        }
        7 => {
            let Some((leader, region)) = led else {
                return ("no leader to move a replica".into(), None);
            };
            if let Some(learner) = region.peers.iter().find(|p| p.is_learner()).cloned() {
                let voters: Vec<Peer> =
                    region.voters().filter(|p| p.store_id != leader).cloned().collect();
                let victim = voters[rng.gen_range(0..voters.len())].clone();
                let what = format!(
                    "promote peer {} on node {} and remove peer {} on node {}",
                    learner.id, learner.store_id, victim.id, victim.store_id
                );
                let promote = Peer::new(learner.id, learner.store_id);
                let changes = vec![PeerChange::AddVoter(promote), PeerChange::Remove(victim)];
                cluster.change_peers(leader, region.id, changes, rng);
                return (format!("region {}: {what}", region.id), None);
            }
            let free = |id: u64| region.peer_on_store(id).is_none() && Some(id) != lost;
            let Some(store) = cluster.ids().find(|&id| free(id)) else {
                return ("no node free for a replica".into(), None);
            };
            // Its id from placement's allocator, as every peer's: a store refuses a peer
            // below one it once held.
            cluster.add_learner(leader, region.id, store, rng);
            (format!("region {}: add a learner on node {store}", region.id), None)
        }
        8 => {
            let Some((leader, region)) = led else {
                return ("no leader to transfer from".into(), None);
            };
            let others: Vec<Peer> =
                region.voters().filter(|p| p.store_id != leader).cloned().collect();
            if others.is_empty() {
                return ("no voter to transfer to".into(), None);
            }
            let to = others[rng.gen_range(0..others.len())].clone();
            cluster.transfer_leader(leader, region.id, to.id, rng);
            let what = format!(
                "region {}: transfer leadership from node {leader} to node {}",
                region.id, to.store_id
            );
            if rng.gen_bool(0.3) {
                // The transferee stalls before it hears the leader's TimeoutNow, for about
                // as long as the leader waits for the transfer: the leader gives up and
                // carries on, and the late message then starts an election that voters
                // may not refuse, won if it comes before the leader's next write.
                let wait = ELECTION_TICKS as u64 * TICK_MS;
                let ms = rng.gen_range(wait - 20..wait + 60);
                cluster.pause(to.store_id, ms);
                return (format!("{what}, which stalls for {ms} ms"), None);
            }
            (what, None)
        }
        0 => {
            cluster.crash(target, rng);
            let at = later(rng, 200, 3_000);
            (format!("crash node {target}"), Some(Recovery { at, action: Undo::Restart(target) }))
        }
        1 => {
            let ms = rng.gen_range(200..3_000);
            cluster.pause(target, ms);
            (format!("pause node {target} for {ms} ms"), None)
        }
        2 => {
            cluster.partition(&[target]);
            let at = later(rng, 500, 4_000);
            (format!("isolate node {target}"), Some(Recovery { at, action: Undo::Heal }))
        }
        3 => {
            let other = (target % n) + 1;
            cluster.block(target, other);
            let at = later(rng, 500, 4_000);
            (
                format!("lose messages from node {target} to node {other}"),
                Some(Recovery { at, action: Undo::Heal }),
            )
        }
        4 => {
            let ms = rng.gen_range(100..5_000);
            cluster.jump_clock(target, ms);
            (format!("node {target}'s clock jumps {ms} ms forward"), None)
        }
        5 => {
            let ms = rng.gen_range(20..300);
            cluster.set_disk_latency(target, ms);
            let at = later(rng, 500, 3_000);
            (
                format!("node {target}'s fsyncs take {ms} ms"),
                Some(Recovery { at, action: Undo::DiskBack(target) }),
            )
        }
        _ if rng.gen_bool(0.5) => {
            cluster.fill_disk(target);
            let at = later(rng, 200, 3_000);
            (
                format!("node {target}'s disk fills up"),
                Some(Recovery { at, action: Undo::FreeSpace(target) }),
            )
        }
        _ => {
            cluster.fail_next_sync(target);
            let at = later(rng, 200, 3_000);
            (
                format!("node {target}'s next fsync fails"),
                Some(Recovery { at, action: Undo::Restart(target) }),
            )
        }
    }
}

/// Linearizability of every register of a run's history: one line per violation. A
/// compare-and-swap that failed is checked as a read of the value the store found
/// (reported as a `Get`), which says more than "the key did not hold the expected value".
pub fn check_history(history: &[Operation]) -> Vec<String> {
    let ops: Vec<linearizable::Operation> = history
        .iter()
        .filter(|op| !op.refused)
        .filter_map(|op| {
            let timing = Timing { invoke: op.invoke, complete: op.complete };
            let checked = match (&op.request, &op.read) {
                (Request::Put(value), _) => Op::Put(value.clone()),
                (Request::Delete, _) => Op::Delete,
                (Request::Get, Some(read)) => Op::Get(read.clone()),
                // A read that never answered says nothing.
                (Request::Get, None) => return None,
                // A swap that failed read what it found, and did nothing else.
                (Request::Cas { expected, .. }, Some(found))
                    if op.complete.is_some() && found != expected =>
                {
                    Op::Get(found.clone())
                }
                (Request::Cas { expected, new }, _) => {
                    Op::Cas { expected: expected.clone(), new: Some(new.clone()), succeeded: true }
                }
            };
            Some(linearizable::Operation { key: key_of(op.key), op: checked, timing })
        })
        .collect();
    match linearizable::check(&ops) {
        Verdict::Ok => Vec::new(),
        Verdict::Violation { key, message, .. } => {
            vec![format!("register {}: {message}", String::from_utf8_lossy(&key))]
        }
        Verdict::Unknown { key } => vec![format!(
            "register {}: the linearizability search ran out of budget",
            String::from_utf8_lossy(&key)
        )],
    }
}
