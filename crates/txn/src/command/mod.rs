//! Commands: the logic of every raw and transactional RPC, as sans-I/O state machines that
//! the server and the simulator drive alike.
//!
//! A command is given a request and the node's transactional state ([`TxnNode`]: latches,
//! `max_ts`, the lock index, the newest-record cache, lock waits) and decides, one step at
//! a time, what must happen next. It never touches a socket, a thread or a clock itself:
//! it hands its driver an [`Effect`] and is resumed with the outcome.
//!
//! ```text
//!   driver                                   command
//!   ──────                                   ───────
//!   start(now) ─────────────────────────────► checks the request
//!              ◄──── Effect::Gate ─────────── "is this Region led here, current?"
//!   Registry check, lease or ReadIndex
//!   resume(Gated(scope)) ───────────────────► latches, lock-index hint, snapshot,
//!                                             actions, seal
//!              ◄──── Effect::Propose ──────── "replicate this batch"
//!   Raft round(s); on apply, in log order,
//!   the proposal's completion updates the
//!   indexes and releases the latches
//!   resume(Applied) ────────────────────────►
//!              ◄──── Done(answer) ───────────
//! ```
//!
//! Waits (a latch held by another command, a lock held by another transaction, a new
//! leader's `max_ts`) are [`Effect::Wait`]: the command has put its id where the holder
//! will find it, and whoever ends the wait calls the node's [`Wake`]; the driver resumes
//! the command, which looks again. Work on another Region's leader (resolving an abandoned
//! async-commit transaction) is [`Effect::Remote`]. A driver that cannot carry an effect
//! out (the Region moved, the proposal failed) answers the request with its own error and
//! drops the command, whose guards release whatever it held.
//!
//! Commands are written as `async` blocks that await nothing but these effects: Rust turns
//! each into the state machine it would otherwise be written as by hand, and
//! [`Command::resume`] runs it to its next effect with no executor and no waker. So the
//! server's tasks and the simulator's event queue run the very same code.

mod checks;
pub mod local;
pub mod raw;
pub mod resolve;
pub mod txn;

pub use checks::{
    batch_range_end, check_key_shape, clamp_to_region, scan_bounds, KeyMode, ResponseBudget,
};

use crate::actions::cleanup::{CheckTxnStatus, TxnStatus};
use crate::concurrency::MemoryLockGuard;
use crate::latches::{LatchGuard, LatchLock};
use crate::mvcc::Newest;
use crate::mvcc::{MvccReader, MvccTxn};
use crate::node::TxnNode;
use crate::raw::RawError;
use crate::TxnError;
use scandium_storage::WriteBatch;
use scandium_types::{Region, RegionEpoch, TimeStamp};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use thiserror::Error;

#[cfg(test)]
pub(crate) use crate::wake::Recorded;
pub use crate::wake::Wake;

/// The two clocks a command may read, as its driver gives them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Clock {
    /// Monotonic milliseconds: deadlines.
    pub monotonic_ms: u64,
    /// Wall-clock milliseconds since the Unix epoch: raw values' TTLs.
    pub wall_ms: u64,
}

impl Clock {
    /// Wall-clock seconds, as raw TTLs count them.
    pub fn wall_secs(&self) -> u64 {
        self.wall_ms / 1000
    }
}

/// The time a command is resumed with.
#[derive(Clone, Copy, Debug)]
pub enum Now {
    /// These readings (the simulator's clocks, a test's).
    At(Clock),
    /// Read when the command first asks, then kept for the rest of the step (a server's
    /// real clocks): most steps of most commands read no clock, and reading both clocks at
    /// every resumption was a measurable share of a raw put's CPU.
    Read(fn() -> Clock),
}

impl Default for Now {
    fn default() -> Now {
        Now::At(Clock::default())
    }
}

impl From<Clock> for Now {
    fn from(clock: Clock) -> Now {
        Now::At(clock)
    }
}

/// What the driver must check before the command reads or writes the Region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gate {
    /// The node's state must be linearizable now: the leader's lease covers it, or the
    /// leader confirms with a quorum (ReadIndex) first. Every command that reads before it
    /// answers needs it; plain writes only need a leader that has applied its earlier
    /// terms (their proposal commits through a quorum or fails).
    pub linearizable: bool,
    /// The command writes client data: refused while the disk is below its reserve.
    pub needs_space: bool,
}

/// The Region a command works on, as the gate found it.
#[derive(Clone, Debug, PartialEq)]
pub struct Scope {
    /// The Region now (its epoch equals the request's).
    pub region: Region,
    /// The local leader's term.
    pub term: u64,
}

/// What a command needs its driver to do.
pub enum Effect {
    /// Check the request's Region (here, epoch current, led here and caught up) and the
    /// [`Gate`]'s conditions; resume with [`Input::Gated`].
    Gate(Gate),
    /// Wait until the node's [`Wake`] is called with `cid`, or until `deadline_ms`
    /// (monotonic) if given; resume with [`Input::Woken`] either way.
    Wait {
        /// The command's id.
        cid: u64,
        /// Latest end of the wait.
        deadline_ms: Option<u64>,
    },
    /// Replicate the proposal's batch through the Region's Raft group; once applied, call
    /// [`Completion::applied`] on the apply thread in log order (or drop the completion if
    /// it fails), then resume with [`Input::Applied`].
    Propose(Box<Proposal>),
    /// Carry out a call on the leader of another key's Region, wherever it is (locally if
    /// it is led here), retrying as a client would; resume with [`Input::Remote`].
    Remote(RemoteCall),
}

impl std::fmt::Debug for Effect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Effect::Gate(gate) => f.debug_tuple("Gate").field(gate).finish(),
            Effect::Wait { cid, deadline_ms } => {
                f.debug_struct("Wait").field("cid", cid).field("deadline_ms", deadline_ms).finish()
            }
            Effect::Propose(p) => f.debug_tuple("Propose").field(&p.region_id).finish(),
            Effect::Remote(call) => f.debug_tuple("Remote").field(call).finish(),
        }
    }
}

/// The outcome of an [`Effect`].
#[derive(Debug)]
pub enum Input {
    /// The gate passed.
    Gated(Scope),
    /// The wait ended (woken, or its deadline passed).
    Woken,
    /// The proposal was applied.
    Applied,
    /// The remote call's answer.
    Remote(RemoteReply),
}

/// What a command does next.
pub enum Next<T> {
    /// Carry this out and resume the command with its outcome.
    Effect(Effect),
    /// The command is done: its answer.
    Done(Result<T, CommandError>),
}

/// A call on another Region's leader (see [`resolve`]).
#[derive(Clone, Debug)]
pub enum RemoteCall {
    /// `KvCheckSecondaryLocks` of one key: what it holds for transaction `start_ts`, a
    /// rollback record written if it was never prewritten.
    CheckSecondary {
        /// The key.
        key: Vec<u8>,
        /// The transaction.
        start_ts: TimeStamp,
    },
    /// Read, without changing anything, what `key` holds for transaction `start_ts`.
    ReadTxnKey {
        /// The key.
        key: Vec<u8>,
        /// The transaction.
        start_ts: TimeStamp,
    },
    /// `KvResolveLock` of one key: commit transaction `start_ts`'s lock at `commit_ts`,
    /// or roll it back if that is zero.
    ResolveKey {
        /// The key.
        key: Vec<u8>,
        /// The transaction.
        start_ts: TimeStamp,
        /// Its fate.
        commit_ts: TimeStamp,
    },
    /// `KvCheckTxnStatus` at a transaction's primary.
    CheckTxnStatus(CheckTxnStatus),
}

impl RemoteCall {
    /// The key whose Region's leader must answer.
    pub fn key(&self) -> &[u8] {
        match self {
            RemoteCall::CheckSecondary { key, .. }
            | RemoteCall::ReadTxnKey { key, .. }
            | RemoteCall::ResolveKey { key, .. } => key,
            RemoteCall::CheckTxnStatus(status) => &status.primary,
        }
    }
}

/// The answer to a [`RemoteCall`], in the call's order.
#[derive(Clone, Debug, PartialEq)]
pub enum RemoteReply {
    /// To `CheckSecondary`.
    Secondary(SecondaryFate),
    /// To `ReadTxnKey`.
    KeyState(KeyState),
    /// To `ResolveKey`.
    Resolved,
    /// To `CheckTxnStatus`.
    Status(TxnStatus),
}

/// What a secondary of an async-commit transaction holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecondaryFate {
    /// Its prewrite lock, with the lock's `min_commit_ts`.
    Locked(u64),
    /// It was committed at this timestamp.
    Committed(TimeStamp),
    /// It was never prewritten (now rolled back for good) or was rolled back.
    RolledBack,
}

/// What a key holds for one transaction (`ReadTxnKeys`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyState {
    /// Nothing: no lock, no record.
    None,
    /// Its prewrite lock, with the lock's `min_commit_ts`.
    Prewritten(u64),
    /// Its pessimistic lock.
    PessimisticLocked,
    /// Its commit record, at this timestamp.
    Committed(TimeStamp),
    /// Its rollback record.
    RolledBack,
}

/// Why a command failed, as the command sees it (the driver's own failures, such as a
/// Region that moved, never reach the command).
#[derive(Debug, Error)]
pub enum CommandError {
    /// A key of the request is outside the Region: the client must refresh and retry.
    #[error("key is not in region {}", region.id)]
    KeyNotInRegion {
        /// The offending key.
        key: Vec<u8>,
        /// The Region as it is now.
        region: Box<Region>,
    },
    /// The Region's new leader has not synchronised `max_ts` yet: the client backs off and
    /// retries (a stale command).
    #[error("the region's leader is not ready for async commit yet")]
    NotReady,
    /// The request is malformed or exceeds a limit; retrying it unchanged fails again.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A transactional failure for a key, or of the storage under it.
    #[error(transparent)]
    Txn(#[from] TxnError),
    /// A raw value could not be read.
    #[error(transparent)]
    Raw(#[from] RawError),
    /// The engine failed.
    #[error(transparent)]
    Storage(#[from] scandium_storage::StorageError),
    /// The driver answered an effect with an outcome of another effect (a bug).
    #[error("internal error: {0}")]
    Internal(String),
}

impl CommandError {
    /// Shorthand for [`CommandError::Invalid`].
    pub fn invalid(message: impl Into<String>) -> CommandError {
        CommandError::Invalid(message.into())
    }
}

/// Result of a command.
pub type CommandResult<T> = Result<T, CommandError>;

/// A write to replicate, with what it holds until it is applied.
pub struct Proposal {
    /// The Region's id.
    pub region_id: u64,
    /// The epoch the write was computed under: apply refuses the write if the Region
    /// changed meanwhile. (The id and epoch, not the whole Region: a proposal is made on
    /// every write, and the Region's keys and peers are not needed to make it.)
    pub epoch: RegionEpoch,
    /// The data.
    pub batch: WriteBatch,
    /// Runs once the write is applied; dropping it instead (a failed proposal) releases
    /// what the command held.
    pub completion: Completion,
}

/// What a proposed write holds until it is applied, and the in-memory indexes' share of
/// its changes.
///
/// A client that goes away cannot cut this short: the driver owns the completion from the
/// moment the command hands it over, so the latches (and a prewrite's in-memory locks) stay
/// held until the change is applied, and the indexes still learn of it.
pub struct Completion {
    node: Option<Arc<TxnNode>>,
    held: Held,
    /// Lock changes for the lock index (new locks were added before proposing).
    lock_changes: Vec<(Vec<u8>, Option<u64>)>,
    /// Keys whose newest record changes, with that record (forgotten before proposing).
    newest: Vec<(Vec<u8>, Newest)>,
    /// Keys whose locks the command removes: their waiters are woken.
    released: Vec<Vec<u8>>,
}

/// What a command holds from its snapshot until its write is applied. Dropped in the
/// order of its fields: the in-memory locks before the latches, so that the next command
/// on a key, which waits for its latch, finds them gone (dropped after, they could remove
/// that command's own in-memory lock).
#[derive(Debug, Default)]
pub struct Held {
    /// A prewrite's in-memory locks (async commit, 1PC).
    pub memory_locks: Option<MemoryLockGuard>,
    /// Its latches.
    pub latches: Option<LatchGuard>,
}

impl Completion {
    /// Brings the node's indexes up to date with the applied write, wakes waiters of the
    /// locks it removed, and releases what the command held. Call on the apply thread,
    /// right after the write is applied, in log order with every other apply.
    pub fn applied(mut self) {
        if let Some(node) = self.node.take() {
            node.lock_index.apply(&self.lock_changes);
            node.newest.record(std::mem::take(&mut self.newest));
            node.lock_waits.wake(&self.released);
        }
        drop(std::mem::take(&mut self.held));
    }
}

/// A command in progress: see the module docs.
pub struct Command<T> {
    future: Pin<Box<dyn Future<Output = CommandResult<T>> + Send>>,
    io: Arc<Mutex<Io>>,
    cid: u64,
}

/// The exchange between a command's body and its driver.
#[derive(Default)]
struct Io {
    effect: Option<Effect>,
    input: Option<Input>,
    now: Now,
    /// The gate the command last passed, passed again after a latch wait.
    gate: Option<Gate>,
}

impl<T: Send + 'static> Command<T> {
    /// A command running `body` against `node`.
    pub(crate) fn new<F, Fut>(node: &Arc<TxnNode>, body: F) -> Command<T>
    where
        F: FnOnce(Cx) -> Fut,
        Fut: Future<Output = CommandResult<T>> + Send + 'static,
    {
        let io = Arc::new(Mutex::new(Io::default()));
        let cid = node.next_cid();
        let cx = Cx { node: node.clone(), io: io.clone(), cid };
        Command { future: Box::pin(body(cx)), io, cid }
    }

    /// The same command, its answer passed through `f` (a driver that keeps commands of
    /// several kinds keeps them under one answer type).
    pub fn map<U: Send + 'static>(self, f: impl FnOnce(T) -> U + Send + 'static) -> Command<U> {
        let Command { future, io, cid } = self;
        Command { future: Box::pin(async move { future.await.map(f) }), io, cid }
    }

    /// The command's id: what its waits are woken by.
    pub fn cid(&self) -> u64 {
        self.cid
    }

    /// Runs the command to its first effect (or its answer).
    pub fn start(&mut self, now: impl Into<Now>) -> Next<T> {
        self.run(None, now.into())
    }

    /// Gives the command the outcome of its last effect and runs it to its next one.
    pub fn resume(&mut self, input: Input, now: impl Into<Now>) -> Next<T> {
        self.run(Some(input), now.into())
    }

    fn run(&mut self, input: Option<Input>, now: Now) -> Next<T> {
        {
            let mut io = lock(&self.io);
            io.input = input;
            io.now = now;
        }
        let mut context = Context::from_waker(Waker::noop());
        match self.future.as_mut().poll(&mut context) {
            Poll::Ready(result) => Next::Done(result),
            Poll::Pending => match lock(&self.io).effect.take() {
                Some(effect) => Next::Effect(effect),
                // Only this module's effects suspend a command; anything else is a bug.
                None => Next::Done(Err(CommandError::Internal(
                    "a command waited for something other than an effect".into(),
                ))),
            },
        }
    }
}

fn lock(io: &Mutex<Io>) -> std::sync::MutexGuard<'_, Io> {
    io.lock().unwrap_or_else(|e| e.into_inner())
}

/// A command body's handle on its node and its driver.
pub(crate) struct Cx {
    pub(crate) node: Arc<TxnNode>,
    io: Arc<Mutex<Io>>,
    cid: u64,
}

/// Hands an effect to the driver and yields; ready with the driver's input.
struct Perform {
    io: Arc<Mutex<Io>>,
    effect: Option<Effect>,
}

impl Future for Perform {
    type Output = Option<Input>;

    fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Input>> {
        let this = &mut *self;
        let mut io = lock(&this.io);
        if let Some(effect) = this.effect.take() {
            io.effect = Some(effect);
            return Poll::Pending;
        }
        Poll::Ready(io.input.take())
    }
}

impl Cx {
    /// The time as the driver gave it at the last resumption (read then, if it gave a
    /// clock to read).
    pub(crate) fn now(&self) -> Clock {
        let mut io = lock(&self.io);
        match io.now {
            Now::At(clock) => clock,
            Now::Read(read) => {
                let clock = read();
                io.now = Now::At(clock);
                clock
            }
        }
    }

    async fn perform(&self, effect: Effect) -> Option<Input> {
        let effect = Some(effect);
        Perform { io: self.io.clone(), effect }.await
    }

    /// Passes the gate: the Region as it is now, led here.
    pub(crate) async fn gate(&self, gate: Gate) -> CommandResult<Scope> {
        lock(&self.io).gate = Some(gate);
        match self.perform(Effect::Gate(gate)).await {
            Some(Input::Gated(scope)) => Ok(scope),
            other => Err(unexpected("a gate", other)),
        }
    }

    /// Waits until woken, or until `deadline_ms`.
    pub(crate) async fn wait(&self, deadline_ms: Option<u64>) -> CommandResult<()> {
        match self.perform(Effect::Wait { cid: self.cid, deadline_ms }).await {
            Some(Input::Woken) => Ok(()),
            other => Err(unexpected("a wait", other)),
        }
    }

    /// Takes the latches of `keys`, waiting for them as long as it takes. After a wait,
    /// a linearizable gate the command passed before is passed again: meanwhile this node
    /// may have stopped leading, or lost its replica and the replica's data, and what the
    /// command reads next must be as current as a read gated now (the simulator, seed 424
    /// with balancing on: a compare-and-swap queued behind a write on a leader that was
    /// then removed read its emptied range and answered "not swapped, the key is
    /// absent"). The gate checks the request's epoch, so a Region that changed meanwhile
    /// fails it. A command that reads nothing it answers from (a plain write) needs no
    /// second gate: its proposal commits through a quorum or fails.
    pub(crate) async fn latch<K: AsRef<[u8]>>(
        &self,
        keys: impl IntoIterator<Item = K>,
    ) -> CommandResult<LatchGuard> {
        let latches = &self.node.latches;
        let mut lock = latches.lock_for(self.cid, keys);
        let mut waited = false;
        loop {
            match latches.acquire(lock) {
                Ok(guard) => {
                    // Looked up only after a wait: most latches are free at once.
                    let gate = waited.then(|| crate::command::lock(&self.io).gate).flatten();
                    if let Some(gate) = gate.filter(|g| g.linearizable) {
                        // Dropped on failure: the latches go with it.
                        self.gate(gate).await?;
                    }
                    return Ok(guard);
                }
                Err(waiting) => lock = waiting,
            }
            waited = true;
            // Dropped while waiting (the driver gave up on the command): leave the queue.
            let abandon = Abandon { latches: latches.clone(), lock: Some(lock) };
            self.wait(None).await?;
            lock = abandon.disarm();
        }
    }

    /// Proposes `sealed` (if it changed anything), holding `held` until it is applied.
    pub(crate) async fn propose(
        &self,
        scope: &Scope,
        sealed: Sealed,
        held: Held,
    ) -> CommandResult<()> {
        let Some(batch) = sealed.batch else { return Ok(()) };
        let node = &self.node;
        // The lock index learns of new locks before they can be in storage, the cache
        // forgets the keys before their records change (see LockHint and NewestCache).
        node.lock_index.add_proposed(&sealed.lock_changes);
        node.newest.forget(&sealed.newest);
        let completion = Completion {
            node: Some(node.clone()),
            held,
            lock_changes: sealed.lock_changes,
            newest: sealed.newest,
            released: sealed.released,
        };
        self.propose_batch(scope, batch, completion).await
    }

    /// Proposes a raw write holding `latches` until it is applied.
    pub(crate) async fn propose_raw(
        &self,
        scope: &Scope,
        batch: WriteBatch,
        latches: LatchGuard,
    ) -> CommandResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let held = Held { latches: Some(latches), memory_locks: None };
        let completion = Completion {
            node: None,
            held,
            lock_changes: Vec::new(),
            newest: Vec::new(),
            released: Vec::new(),
        };
        self.propose_batch(scope, batch, completion).await
    }

    async fn propose_batch(
        &self,
        scope: &Scope,
        batch: WriteBatch,
        completion: Completion,
    ) -> CommandResult<()> {
        let region = &scope.region;
        let (region_id, epoch) = (region.id, region.epoch());
        let proposal = Box::new(Proposal { region_id, epoch, batch, completion });
        match self.perform(Effect::Propose(proposal)).await {
            Some(Input::Applied) => Ok(()),
            other => Err(unexpected("a proposal", other)),
        }
    }

    /// Carries out `call` on the leader of its key's Region.
    pub(crate) async fn remote(&self, call: RemoteCall) -> CommandResult<RemoteReply> {
        match self.perform(Effect::Remote(call)).await {
            Some(Input::Remote(reply)) => Ok(reply),
            other => Err(unexpected("a remote call", other)),
        }
    }

    /// This command's id.
    pub(crate) fn cid(&self) -> u64 {
        self.cid
    }
}

/// Takes a waiting latch lock out of its queue if the command is dropped mid-wait.
struct Abandon {
    latches: crate::latches::Latches,
    lock: Option<LatchLock>,
}

impl Abandon {
    fn disarm(mut self) -> LatchLock {
        self.lock.take().expect("armed until disarmed")
    }
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if let Some(lock) = self.lock.take() {
            self.latches.abandon(lock);
        }
    }
}

fn unexpected(what: &str, input: Option<Input>) -> CommandError {
    CommandError::Internal(format!("the driver answered {what} with {input:?}"))
}

/// A transactional command's changes, sealed against the snapshot they were computed from
/// (see `MvccTxn::seal`), so the snapshot can be released before the Raft round.
pub(crate) struct Sealed {
    /// What to propose; `None` when the command changed nothing.
    pub(crate) batch: Option<WriteBatch>,
    /// Keys whose locks the command removes.
    pub(crate) released: Vec<Vec<u8>>,
    /// Lock changes for the lock index.
    pub(crate) lock_changes: Vec<(Vec<u8>, Option<u64>)>,
    /// Keys whose newest record changes, with that record, for the newest-record cache.
    pub(crate) newest: Vec<(Vec<u8>, Newest)>,
}

impl Sealed {
    pub(crate) fn new(
        reader: &crate::mvcc::MvccReader<'_>,
        txn: crate::mvcc::MvccTxn,
    ) -> Result<Sealed, TxnError> {
        let released = txn.released_keys().to_vec();
        let lock_changes = txn.lock_changes().to_vec();
        if txn.is_empty() {
            return Ok(Sealed { batch: None, released, lock_changes, newest: Vec::new() });
        }
        let (batch, newest) = txn.seal(reader)?;
        Ok(Sealed { batch: Some(batch), released, lock_changes, newest })
    }
}

/// Runs `action` under the latches of `keys` on a snapshot taken after them, and proposes
/// its changes.
pub(crate) async fn write_keys<T>(
    cx: &Cx,
    scope: &Scope,
    keys: &[Vec<u8>],
    action: impl FnOnce(&MvccReader<'_>, &mut MvccTxn) -> CommandResult<T>,
) -> CommandResult<T> {
    let latches = cx.latch(keys).await?;
    let (output, sealed) = run_action(&cx.node, keys, action)?;
    cx.propose(scope, sealed, Held { latches: Some(latches), memory_locks: None }).await?;
    Ok(output)
}

fn run_action<T>(
    node: &TxnNode,
    keys: &[Vec<u8>],
    action: impl FnOnce(&MvccReader<'_>, &mut MvccTxn) -> CommandResult<T>,
) -> CommandResult<(T, Sealed)> {
    let hint = node.lock_index.hint_for_write(keys, &node.newest);
    let snapshot = node.engine.snapshot();
    let reader = MvccReader::with_hint(&*snapshot, hint);
    let mut txn = MvccTxn::new();
    let output = action(&reader, &mut txn)?;
    Ok((output, Sealed::new(&reader, txn)?))
}

#[cfg(test)]
mod tests;
