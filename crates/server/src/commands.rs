//! Running commands (`scandium_txn::command`) on this node: the server's driver of the
//! sans-I/O command layer.
//!
//! A command asks for effects one at a time; this module carries each out with the
//! node's real parts and resumes the command with the outcome:
//!
//! * a gate: the Region checks of [`NodeContext::check_context`] (or, for the node's own
//!   work on a Region, that it is led here), then a ReadIndex round when the command needs
//!   a linearizable state and the lease does not cover it, then the disk's reserve;
//! * a wait: until [`Wakers`] hears the command's id (a latch or lock released, `max_ts`
//!   synchronised) or its deadline passes;
//! * a proposal: to the Raft thread, whose callback runs the proposal's completion where
//!   the write is applied;
//! * a remote call: on the key's Region's leader, here or over the network (`remote.rs`).
//!
//! A failed effect answers the request with the effect's error and drops the command,
//! whose guards release whatever it held.

use crate::context::NodeContext;
use crate::error::RequestError;
use crate::txn_error::Failure;
use scandium_protocol::kvrpcpb;
use scandium_raftstore::{Led, RaftCommand, RaftstoreError};
use scandium_txn::command::{Clock, Gate, Proposal, RemoteCall, RemoteReply, Scope};
use scandium_txn::{Command, CommandError, Effect, Input, Next, Wake};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use tokio::sync::oneshot;

/// Where a command runs.
#[derive(Clone, Copy, Debug)]
pub enum Target<'a> {
    /// The Region a client's request names, with its epoch and peer.
    Request(&'a kvrpcpb::Context),
    /// A Region led here, as it is now (the node's own work: GC, TTL sweeps, lock
    /// resolution on behalf of another Region).
    Region(u64),
}

/// Why a command did not answer: its own failure, or its driver's.
#[derive(Debug)]
pub enum RunError {
    /// The command failed.
    Command(CommandError),
    /// An effect failed (the Region moved, the proposal failed, ...).
    Request(RequestError),
    /// A call on another Region's leader failed.
    Remote(Failure),
}

impl From<RequestError> for RunError {
    fn from(e: RequestError) -> RunError {
        RunError::Request(e)
    }
}

impl From<RaftstoreError> for RunError {
    fn from(e: RaftstoreError) -> RunError {
        RunError::Request(e.into())
    }
}

/// A command's failure as the raw API answers it.
impl From<CommandError> for RequestError {
    fn from(e: CommandError) -> RequestError {
        match e {
            CommandError::KeyNotInRegion { key, region } => {
                RaftstoreError::KeyNotInRegion { key, region }.into()
            }
            CommandError::NotReady => RaftstoreError::StaleCommand.into(),
            CommandError::Invalid(message) => RequestError::Invalid(message),
            CommandError::Txn(e) => RequestError::Internal(e.to_string()),
            CommandError::Raw(e) => RequestError::Internal(e.to_string()),
            CommandError::Storage(e) => RequestError::Internal(e.to_string()),
            CommandError::Internal(message) => RequestError::Internal(message),
        }
    }
}

impl From<RunError> for RequestError {
    fn from(e: RunError) -> RequestError {
        match e {
            RunError::Command(e) => e.into(),
            RunError::Request(e) => e,
            RunError::Remote(Failure::Region(e)) => RequestError::Region(e),
            RunError::Remote(Failure::Key(e)) => RequestError::Internal(e.abort),
        }
    }
}

/// A command's failure as the transactional API answers it.
impl From<CommandError> for Failure {
    fn from(e: CommandError) -> Failure {
        match e {
            CommandError::Txn(e) => e.into(),
            other => RequestError::from(other).into(),
        }
    }
}

impl From<RunError> for Failure {
    fn from(e: RunError) -> Failure {
        match e {
            RunError::Command(e) => e.into(),
            RunError::Request(e) => e.into(),
            RunError::Remote(e) => e,
        }
    }
}

/// Waits of this node's commands, and the wake-ups that end them.
#[derive(Default)]
pub struct Wakers {
    waits: Mutex<HashMap<u64, Waiter>>,
}

enum Waiter {
    /// The command waits.
    Waiting(oneshot::Sender<()>),
    /// Woken before it began to wait (between queueing itself and its driver's wait).
    Woken,
}

impl Wake for Wakers {
    fn wake(&self, cid: u64) {
        let mut waits = self.lock();
        match waits.remove(&cid) {
            Some(Waiter::Waiting(sender)) => {
                let _ = sender.send(());
            }
            _ => {
                waits.insert(cid, Waiter::Woken);
            }
        }
    }
}

impl Wakers {
    /// Waits until command `cid` is woken, or until `deadline_ms` (monotonic) passes.
    async fn wait(&self, cid: u64, deadline_ms: Option<u64>) {
        let receiver = {
            let mut waits = self.lock();
            if let Some(Waiter::Woken) = waits.remove(&cid) {
                return;
            }
            let (sender, receiver) = oneshot::channel();
            waits.insert(cid, Waiter::Waiting(sender));
            receiver
        };
        match deadline_ms {
            Some(deadline) => {
                let left = deadline.saturating_sub(crate::clock::monotonic_ms());
                let timeout = std::time::Duration::from_millis(left);
                let _ = tokio::time::timeout(timeout, receiver).await;
            }
            None => {
                let _ = receiver.await;
            }
        }
    }

    /// Forgets command `cid` (it is done): a late wake-up would otherwise stay.
    fn forget(&self, cid: u64) {
        self.lock().remove(&cid);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Waiter>> {
        self.waits.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Forgets a command's wake-ups when it ends, however it ends (its request may be
/// dropped mid-wait).
struct Forget<'a> {
    wakers: &'a Wakers,
    cid: u64,
    waited: bool,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        if self.waited {
            self.wakers.forget(self.cid);
        }
    }
}

/// The clocks a command reads.
pub fn clock() -> Clock {
    Clock { monotonic_ms: crate::clock::monotonic_ms(), wall_ms: crate::clock::now_ms() }
}

impl NodeContext {
    /// Runs `command` against `target` to its answer.
    pub async fn run<T: Send + 'static>(
        &self,
        target: Target<'_>,
        mut command: Command<T>,
    ) -> Result<T, RunError> {
        let mut forget = Forget { wakers: &self.wakers, cid: command.cid(), waited: false };
        let mut next = command.start(clock());
        loop {
            let input = match next {
                Next::Done(result) => return result.map_err(RunError::Command),
                Next::Effect(Effect::Gate(gate)) => Input::Gated(self.gate(target, gate).await?),
                Next::Effect(Effect::Wait { cid, deadline_ms }) => {
                    forget.waited = true;
                    self.wakers.wait(cid, deadline_ms).await;
                    Input::Woken
                }
                Next::Effect(Effect::Propose(proposal)) => {
                    self.propose(proposal).await?;
                    Input::Applied
                }
                Next::Effect(Effect::Remote(call)) => {
                    Input::Remote(self.remote(call).await.map_err(RunError::Remote)?)
                }
            };
            next = command.resume(input, clock());
        }
    }

    /// Carries out a gate: the Region here, current and led here; then, if asked, a
    /// linearizable state and room on the disk.
    async fn gate(&self, target: Target<'_>, gate: Gate) -> Result<Scope, RequestError> {
        let checked = match target {
            Target::Request(context) => self.check_context(context)?,
            Target::Region(region_id) => self.check_led(region_id)?,
        };
        let Led { region, term, lease_valid } = checked;
        if gate.linearizable && !lease_valid {
            self.raft.read_index(region.id).await?;
        }
        if gate.needs_space {
            self.disk.check_write(self.store_id)?;
        }
        Ok(Scope { region, term })
    }

    async fn propose(&self, proposal: Box<Proposal>) -> Result<(), RaftstoreError> {
        let Proposal { region, batch, completion } = *proposal;
        let command = RaftCommand::write(&region, batch);
        self.raft.propose_completing(region.id, command, move || completion.applied()).await
    }

    /// Carries out `call` on the leader of its key's Region: here, through the same
    /// command the storage service runs for it, or on another node (`remote.rs`).
    pub fn remote(
        &self,
        call: RemoteCall,
    ) -> Pin<Box<dyn Future<Output = Result<RemoteReply, Failure>> + Send + '_>> {
        Box::pin(self.remote_call(call))
    }
}
