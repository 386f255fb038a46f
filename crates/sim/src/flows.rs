//! What the cluster keeps of the flows in progress on its nodes, for the drivers that
//! move them on: commands (`commands.rs`) and the control plane and splits
//! (`control.rs`).
//!
//! The cluster (`cluster.rs`) stores these and routes their events; the drivers
//! extend the cluster with the steps. Keeping the types here, below all three, lets
//! every import point one way: `commands` and `control` use `cluster`, and all of them
//! use `flows`.

use scandium_placement::{ControlConfig, ControlPlane};
use scandium_raftstore::RaftstoreError;
use scandium_txn::actions::cleanup::{SecondaryStatus, TxnStatus};
use scandium_txn::command::{RemoteCall, RemoteReply, Scope};
use scandium_txn::raw::CasOutcome;
use scandium_txn::{Command, CommandError, TxnError};
use scandium_types::{Region, RegionEpoch};

/// Where a command runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The Region a client's request names, at the epoch it knows.
    Request {
        /// The Region.
        region_id: u64,
        /// Its epoch, as the client's cache has it.
        epoch: RegionEpoch,
    },
    /// A Region led here, as it is now (a remote call found it led where it runs).
    Region(u64),
}

/// What a command answered.
#[derive(Debug)]
pub enum Output {
    /// A read of one value (raw or transactional).
    Value(Option<Vec<u8>>),
    /// A compare-and-swap.
    Swapped(CasOutcome),
    /// A write, rollback or resolution that answers nothing more.
    Done,
    /// A prewrite: per-key errors (nothing written if any), else its timestamps.
    Prewritten {
        /// Why keys were refused.
        errors: Vec<TxnError>,
        /// Async commit: the transaction commits at or above this.
        min_commit_ts: u64,
        /// One-phase commit: the commit timestamp (0: not done).
        one_pc_commit_ts: u64,
    },
    /// A commit, at this timestamp.
    Committed(u64),
    /// A transaction's status.
    Status(TxnStatus),
    /// A transaction's secondaries.
    Secondaries(SecondaryStatus),
    /// A pessimistic lock's values, one per key.
    Values(Vec<Option<Vec<u8>>>),
    /// A remote call's answer.
    Remote(RemoteReply),
}

/// Why a command has no output.
#[derive(Debug)]
pub enum Failure {
    /// The node is down: nothing was done.
    Unavailable,
    /// The gate refused it (region not here, stale epoch, not the leader, a ReadIndex
    /// round that failed): nothing was done.
    Refused(RaftstoreError),
    /// The command itself failed.
    Command(CommandError),
    /// Its proposal failed: nothing was done if the error is definite, else it may still
    /// be.
    Proposal(RaftstoreError),
    /// A call on another Region's leader failed.
    Remote(String),
}

impl Failure {
    /// Whether nothing the command would have changed can have taken effect (a client may
    /// send it again without applying it twice).
    pub fn is_definite(&self) -> bool {
        match self {
            Failure::Proposal(e) => e.is_definite(),
            Failure::Unavailable | Failure::Refused(_) => true,
            // A command that failed may have applied earlier steps (a sweep); the
            // clients' commands have one step.
            Failure::Command(_) => true,
            Failure::Remote(_) => false,
        }
    }

    /// Whether a client (or a remote call) should look the Region up again and retry, as
    /// for a Region error.
    pub fn is_region_error(&self) -> bool {
        match self {
            Failure::Unavailable | Failure::Refused(_) | Failure::Proposal(_) => true,
            Failure::Command(CommandError::KeyNotInRegion { .. } | CommandError::NotReady) => true,
            Failure::Command(_) | Failure::Remote(_) => false,
        }
    }
}

/// A command in progress on a node.
pub(crate) struct InFlight {
    pub(crate) command: Command<Output>,
    pub(crate) target: Target,
    pub(crate) waiting: Waiting,
    pub(crate) reply_to: ReplyTo,
    /// Woken while not waiting: its next wait ends at once (the server's `Woken` mark).
    pub(crate) woken_early: bool,
    /// Numbers its waits, so that a deadline of an earlier one is ignored.
    pub(crate) wait_seq: u64,
}

pub(crate) enum Waiting {
    /// Not started: held in a paused node's socket.
    Held,
    /// For its ReadIndex round, with what the gate found.
    Gate(Scope),
    /// For a wake-up or the deadline of wait `seq`.
    Wake(u64),
    /// For its proposal.
    Proposal,
    /// For remote call attempt `attempt`.
    Remote { call: RemoteCall, attempt: u32 },
}

/// Who is told a command's answer.
pub(crate) enum ReplyTo {
    /// The client operation that submitted it.
    Client(u64),
    /// A command on node `parent.node` whose remote call this is, run on node `from`.
    Parent { parent: Parent, from: u64 },
}

/// The command a remote call answers.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Parent {
    pub(crate) node: u64,
    pub(crate) incarnation: u64,
    pub(crate) cid: u64,
    pub(crate) attempt: u32,
}

/// What a command's event brings.
#[derive(Debug)]
pub(crate) enum Step {
    /// A paused node resumed: the command held in its socket starts.
    Start,
    /// Wait `seq` reached its deadline.
    Deadline(u64),
    /// Attempt `attempt` of a remote call is answered.
    RemoteDone { attempt: u32, result: Result<Output, Failure> },
    /// Attempt `attempt` of a remote call got no answer in time.
    RemoteTimeout(u32),
    /// The next attempt of a remote call.
    RemoteRetry(u32),
}

/// A `max_ts` synchronisation waiting for its timestamp.
pub(crate) struct Sync {
    pub(crate) node: u64,
    pub(crate) incarnation: u64,
    pub(crate) region: u64,
    pub(crate) term: u64,
    pub(crate) attempt: u32,
}

/// How often each node heartbeats, in simulated milliseconds.
pub const HEARTBEAT_MS: u64 = 1_000;

/// The control plane's settings in a run: stores are down after 5 s without a
/// heartbeat, so that a node lost for good is replaced within a run, and crashes of a few
/// seconds cost a replica now and then (more operators, more to check).
pub fn control_config(replicas_meta: usize) -> ControlConfig {
    let scheduler = scandium_placement::scheduler::SchedulerConfig {
        meta_voters: replicas_meta,
        disconnect_ms: 2 * HEARTBEAT_MS + 500,
        down_ms: 5_000,
        // As the server's default: replicas and leaders move to even out the stores.
        balance_limit: 4,
        // Stores have no labels here (the scheduler's unit tests cover them).
        location_labels: Vec::new(),
        // Small Regions merge (up to the size at which the simulated checks split,
        // `run::SIZE_SPLITS`, so that a union may be split again), once their shape
        // stood 2 s: split and merged again within a run, racing the splits, moves,
        // transfers and snapshots of every fault.
        merge: scandium_placement::merge::MergeConfig {
            max_size: 2 << 10,
            max_keys: 48,
            split_merge_interval_ms: 2 * HEARTBEAT_MS,
            ..Default::default()
        },
        // As the server's defaults (the simulator reports no traffic: no Region is hot).
        ..Default::default()
    };
    let timeouts =
        scandium_placement::operator::OperatorTimeouts { step_ms: 10_000, resend_ms: 2_000 };
    ControlConfig { scheduler, timeouts, record_liveness_ms: 2 * HEARTBEAT_MS }
}

/// What a placement proposal of the simulation is for.
#[derive(Clone, Debug)]
pub(crate) enum Purpose {
    /// Nothing to do with the answer (records, retirements).
    Record,
    /// Ids for the control plane of `node` (at `incarnation`, leading placement in
    /// `term`), one per Region.
    Ids { node: u64, incarnation: u64, term: u64, regions: Vec<u64> },
    /// Ids for split `split`.
    SplitIds { split: u64 },
    /// An id for a learner of `region` on `store`, added through its leader `node` (a
    /// fault: a replica moved by hand).
    LearnerId { node: u64, region: u64, store: u64 },
}

/// A split in progress.
#[derive(Clone, Debug)]
pub(crate) struct SplitFlow {
    /// Where the Region is cut, in key order, in one command.
    pub(crate) keys: Vec<Vec<u8>>,
    /// The node leading the Region, and the Region when the split began.
    pub(crate) node: u64,
    pub(crate) incarnation: u64,
    pub(crate) region: Region,
}

/// A control plane for a node of a run, broken as the run asks.
pub(crate) fn new_control(forget_liveness: bool) -> ControlPlane {
    match forget_liveness {
        true => ControlPlane::forgetting_liveness(control_config(3)),
        false => ControlPlane::new(control_config(3)),
    }
}
