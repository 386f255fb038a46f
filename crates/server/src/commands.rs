//! Running commands (`scandium_txn::command`) on this node: the server's driver of the
//! sans-I/O command layer.
//!
//! A command asks for effects one at a time; this module carries each out with the
//! node's real parts and resumes the command with the outcome:
//!
//! * a gate: the Region checks of [`Storage::check_context`] (or, for the node's own work
//!   on a Region, that it is led here), then a ReadIndex round when the command needs a
//!   linearizable state and the lease does not cover it, then the disk's reserve;
//! * a wait: until [`Wakers`] hears the command's id (a latch or lock released, `max_ts`
//!   synchronised) or its deadline passes;
//! * a proposal: to the Raft thread, whose callback runs the proposal's completion where
//!   the write is applied;
//! * a remote call: on the key's Region's leader: through the same command here when this
//!   node leads it, otherwise over the network (`remote.rs`), retried on Region errors as
//!   a client would.
//!
//! A failed effect answers the request with the effect's error and drops the command,
//! whose guards release whatever it held.

use crate::disk::DiskSpace;
use crate::error::{store_not_match, RequestError};
use crate::flow::ReadFlow;
use crate::identity::Identity;
use crate::load_split::LoadSamples;
use crate::network::{Clients, Directory};
use crate::placement::Placement;
use crate::raft_driver::RaftHandle;
use crate::remote::{self, Route};
use crate::txn_error::{Failure, TxnResult};
use scandium_protocol::kvrpcpb;
use scandium_raftstore::{Led, RaftCommand, RaftstoreError, Registry};
use scandium_txn::command::local::local_call;
use scandium_txn::command::{Clock, Gate, Now, Proposal, RemoteCall, RemoteReply, Scope};
use scandium_txn::{Command, CommandError, Effect, Input, Next, TxnNode, Wake};
use scandium_types::keyspace::ApiVersion;
use scandium_types::RegionEpoch;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// Attempts of a remote call (each may wait out an election).
const REMOTE_ATTEMPTS: u32 = 12;

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

/// The storage layer of this node: runs the commands of requests and of the node's own
/// work (GC, TTL sweeps, lock resolution) against the Regions led here. Holds exactly what
/// carrying out a command's effects takes.
pub struct Storage {
    identity: Identity,
    txn: Arc<TxnNode>,
    wakers: Arc<Wakers>,
    registry: Registry,
    raft: RaftHandle,
    disk: Arc<DiskSpace>,
    placement: Arc<Placement>,
    directory: Arc<Directory>,
    clients: Arc<Clients>,
    reads: Arc<ReadFlow>,
    load: Arc<LoadSamples>,
}

/// What [`Storage`] is built from.
pub struct StorageParts {
    /// Who this node is.
    pub identity: Identity,
    /// The node's transactional state, which every command reads and keeps (latches,
    /// `max_ts`, the lock index, the newest-record cache, lock waits).
    pub txn: Arc<TxnNode>,
    /// The wake-ups of waiting commands (the same [`Wake`] `txn` was built with).
    pub wakers: Arc<Wakers>,
    /// Regions with a replica here.
    pub registry: Registry,
    /// Proposals to the Raft thread.
    pub raft: RaftHandle,
    /// The free space of the data directory, against its reserve.
    pub disk: Arc<DiskSpace>,
    /// The placement group (where other Regions are led, for remote calls).
    pub placement: Arc<Placement>,
    /// Where other stores are.
    pub directory: Arc<Directory>,
    /// Channels to other nodes.
    pub clients: Arc<Clients>,
    /// Reads served, per Region (for heartbeats).
    pub reads: Arc<ReadFlow>,
    /// Requests' keys, per Region (for load-based split).
    pub load: Arc<LoadSamples>,
}

/// A request's context and the API version it speaks: a request without a context, or
/// with a version this node does not know, is refused before anything else.
pub fn request_context(
    context: Option<&kvrpcpb::Context>,
) -> Result<(&kvrpcpb::Context, ApiVersion), RequestError> {
    let context = context.ok_or_else(|| RequestError::invalid("request has no context"))?;
    let api_version = ApiVersion::from_wire(context.api_version).ok_or_else(|| {
        RequestError::invalid(format!("unknown API version {}", context.api_version))
    })?;
    Ok((context, api_version))
}

impl Storage {
    /// Storage over these parts.
    pub fn new(parts: StorageParts) -> Storage {
        let StorageParts {
            identity,
            txn,
            wakers,
            registry,
            raft,
            disk,
            placement,
            directory,
            clients,
            reads,
            load,
        } = parts;
        Storage {
            identity,
            txn,
            wakers,
            registry,
            raft,
            disk,
            placement,
            directory,
            clients,
            reads,
            load,
        }
    }

    /// Counts a request for `keys` of the Region `context` names, for load-based split.
    pub fn sample_load<'a>(
        &self,
        context: Option<&kvrpcpb::Context>,
        keys: impl IntoIterator<Item = &'a [u8]>,
    ) {
        if let Some(context) = context {
            self.load.record(context.region_id, keys);
        }
    }

    /// Counts a read of the Region `context` names, for its traffic in heartbeats.
    pub fn count_read<'a>(
        &self,
        context: Option<&kvrpcpb::Context>,
        pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    ) {
        let Some(context) = context else { return };
        let (mut keys, mut bytes) = (0, 0);
        for (key, value) in pairs {
            keys += 1;
            bytes += (key.len() + value.len()) as u64;
        }
        self.reads.record(context.region_id, keys, bytes);
    }

    /// The range `[start, end)` of the Region `context` names, as placement last
    /// recorded it (authorisation narrows "the whole Region" to it).
    pub fn region_range(&self, context: Option<&kvrpcpb::Context>) -> Option<(Vec<u8>, Vec<u8>)> {
        let id = context?.region_id;
        let state = self.placement.read();
        state.region(id).map(|r| (r.start_key.clone(), r.end_key.clone()))
    }

    /// The node's transactional state.
    pub fn txn(&self) -> &Arc<TxnNode> {
        &self.txn
    }

    /// The Regions with a replica here.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Checks a request's context: the peer it names is on this store, the Region exists
    /// here, the epoch is current, and this peer leads and has caught up.
    pub fn check_context(&self, context: &kvrpcpb::Context) -> Result<Led, RequestError> {
        let store_id = self.identity.store_id;
        if let Some(peer) = &context.peer {
            if peer.store_id != 0 && peer.store_id != store_id {
                return Err(store_not_match(peer.store_id, store_id));
            }
        }
        // A request without an epoch matches none.
        let epoch = context.region_epoch.as_ref().map_or(
            RegionEpoch { conf_ver: u64::MAX, version: u64::MAX },
            |e| RegionEpoch { conf_ver: e.conf_ver, version: e.version },
        );
        let now = crate::clock::monotonic_ms();
        Ok(self.registry.check_led(context.region_id, Some(epoch), now)?)
    }

    /// Checks that Region `region_id` is led here and caught up (the node's own work on
    /// it: the Region is taken as it is now).
    pub fn check_led(&self, region_id: u64) -> Result<Led, RequestError> {
        Ok(self.registry.check_led(region_id, None, crate::clock::monotonic_ms())?)
    }

    /// Runs `command` against `target` to its answer.
    pub async fn run<T: Send + 'static>(
        &self,
        target: Target<'_>,
        mut command: Command<T>,
    ) -> Result<T, RunError> {
        let mut forget = Forget { wakers: &self.wakers, cid: command.cid(), waited: false };
        let mut next = command.start(Now::Read(clock));
        loop {
            // A read under the leader's lease takes its state as the command resumes: it
            // stands only if that was still within the lease (a pause between the check
            // and the read can outlast it, and a new leader may have written meanwhile).
            let mut under_lease = None;
            let input = match next {
                Next::Done(result) => return result.map_err(RunError::Command),
                Next::Effect(Effect::Gate(gate)) => {
                    let (scope, lease_until_ms) = self.gate(target, gate).await?;
                    under_lease = lease_until_ms.map(|until| (scope.region.id, until));
                    Input::Gated(scope)
                }
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
            next = command.resume(input, Now::Read(clock));
            if let Some((region_id, until)) = under_lease {
                if crate::clock::monotonic_ms() >= until {
                    let error = RaftstoreError::NotLeader { region_id, leader: None };
                    return Err(RunError::Request(error.into()));
                }
            }
        }
    }

    /// Carries out a gate: the Region here, current and led here; then, if asked, a
    /// linearizable state and room on the disk. With the end of the lease a linearizable
    /// state relies on, if it does (not after a ReadIndex round).
    async fn gate(
        &self,
        target: Target<'_>,
        gate: Gate,
    ) -> Result<(Scope, Option<u64>), RequestError> {
        let checked = match target {
            Target::Request(context) => self.check_context(context)?,
            Target::Region(region_id) => self.check_led(region_id)?,
        };
        let Led { region, term, lease_valid, lease_until_ms } = checked;
        let mut under_lease = None;
        if gate.linearizable {
            if lease_valid {
                under_lease = Some(lease_until_ms);
            } else {
                self.raft.read_index(region.id).await?;
            }
        }
        if gate.needs_space {
            self.disk.check_write(self.identity.store_id)?;
        }
        Ok((Scope { region, term }, under_lease))
    }

    async fn propose(&self, proposal: Box<Proposal>) -> Result<(), RaftstoreError> {
        let Proposal { region_id, epoch, batch, completion } = *proposal;
        let command = RaftCommand::write_at(region_id, epoch, batch);
        self.raft.propose_completing(region_id, command, move || completion.applied()).await
    }

    /// Carries out `call` on the leader of its key's Region: here, through the same
    /// command the storage service runs for it, or on another node (`remote.rs`).
    fn remote(
        &self,
        call: RemoteCall,
    ) -> Pin<Box<dyn Future<Output = Result<RemoteReply, Failure>> + Send + '_>> {
        // Boxed: a local call runs a command, whose own remote calls recurse.
        Box::pin(self.remote_call(call))
    }

    /// [`Storage::remote`], retrying on Region errors and routing failures with backoff,
    /// as a client would. Never from the local engine of a follower, whose state may lag
    /// the leader's.
    async fn remote_call(&self, call: RemoteCall) -> TxnResult<RemoteReply> {
        let mut last: Option<Failure> = None;
        for attempt in 0..REMOTE_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis((10u64 << attempt.min(5)).min(300))).await;
            }
            let route = remote::route(
                call.key(),
                self.identity.store_id,
                &self.registry,
                &self.placement,
                &self.directory,
            );
            let result = match route {
                Ok(Route::Local(region)) => {
                    let command = local_call(&self.txn, call.clone());
                    self.run(Target::Region(region.id), command).await.map_err(Failure::from)
                }
                Ok(Route::Remote(leader)) => {
                    remote::call_leader(&self.clients, self.identity.cluster_id, &call, &leader)
                        .await
                }
                Err(e) => {
                    last = Some(e.into());
                    continue;
                }
            };
            match result {
                Err(Failure::Region(e)) => last = Some(Failure::Region(e)),
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| RequestError::Internal("no route".into()).into()))
    }
}
