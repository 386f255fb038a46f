//! The Raft thread: the only thread that touches the [`Store`].
//!
//! Requests reach it through a bounded channel. Each loop iteration takes every message
//! waiting (up to a bound), ticks when a tick is due, and runs one round of Ready handling,
//! so all proposals that queued up during the previous round's fsync share the next one.
//! A full channel makes proposers wait: that is the node's write backpressure. Messages
//! from other nodes never wait: when the channel is full they are dropped, as a lossy
//! network would (Raft retransmits).
//!
//! A round's Raft messages go to an [`Outbox`] (the node's transport); its events
//! (leadership and Region changes) to the node's event handler.

use scandium_raftstore::{
    ApplyOutput, Callback, EncodedCommand, Event, PeerChange, PeerMessage, RaftCommand,
    RaftstoreError, ReadCallback, SnapshotData, StepError, Store,
};
use scandium_types::RegionEpoch;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Messages queued for the Raft thread at most.
const CHANNEL_CAPACITY: usize = 8192;
/// Messages handled before a round runs, at most.
const MAX_MESSAGES_PER_ROUND: usize = 4096;

type StoreTask = Box<dyn FnOnce(&mut Store) + Send>;

enum RaftMessage {
    Propose {
        group_id: u64,
        data: Vec<u8>,
        callback: Callback,
    },
    ProposeCommand {
        group_id: u64,
        command: EncodedCommand,
        callback: Callback,
    },
    ConfChange {
        group_id: u64,
        changes: Vec<PeerChange>,
        planned: Option<RegionEpoch>,
        callback: Callback,
    },
    ReadIndex {
        group_id: u64,
        callback: ReadCallback,
    },
    Step {
        message: Box<PeerMessage>,
        snapshot: Option<SnapshotData>,
        reply: Option<oneshot::Sender<Result<(), StepError>>>,
    },
    Unreachable {
        group_id: u64,
        peer_id: u64,
    },
    SnapshotSent {
        group_id: u64,
        peer_id: u64,
        delivered: bool,
    },
    WithStore(StoreTask),
    Stop,
}

/// Cloneable handle for talking to the Raft thread.
#[derive(Clone)]
pub struct RaftHandle {
    sender: flume::Sender<RaftMessage>,
}

impl RaftHandle {
    /// Proposes `data` to group `group_id` and waits until it is applied (or refused).
    pub async fn propose(
        &self,
        group_id: u64,
        data: Vec<u8>,
    ) -> Result<ApplyOutput, RaftstoreError> {
        self.send(group_id, |callback| RaftMessage::Propose { group_id, data, callback }).await
    }

    /// Proposes a data command to Region `region_id` and waits until it is applied (or
    /// refused). It is encoded here, on the caller's thread, not on the Raft thread.
    pub async fn propose_command(
        &self,
        region_id: u64,
        command: RaftCommand,
    ) -> Result<ApplyOutput, RaftstoreError> {
        let command = EncodedCommand::new(command);
        self.send(region_id, |callback| RaftMessage::ProposeCommand {
            group_id: region_id,
            command,
            callback,
        })
        .await
    }

    /// [`RaftHandle::propose_command`] for a command's write: once it is applied,
    /// `applied` runs on the Raft thread right after the applied data is written, in log
    /// order with everything else applied there (so the in-memory indexes it updates never
    /// fall out of order with what other replicas' commands do to the same keys); if the
    /// write fails, `applied` is dropped there instead. It owns what the command holds
    /// until then (its latches, a prewrite's in-memory locks): a caller that is dropped
    /// (its client went away) can neither release them before the write lands nor skip
    /// the index updates.
    pub async fn propose_completing(
        &self,
        region_id: u64,
        command: RaftCommand,
        applied: impl FnOnce() + Send + 'static,
    ) -> Result<(), RaftstoreError> {
        let (sender, receiver) = oneshot::channel();
        let callback: Callback = Box::new(move |result| {
            match result.is_ok() {
                true => applied(),
                false => drop(applied),
            }
            let _ = sender.send(result.map(|_| ()));
        });
        let command = EncodedCommand::new(command);
        let message = RaftMessage::ProposeCommand { group_id: region_id, command, callback };
        if self.sender.send_async(message).await.is_err() {
            return Err(RaftstoreError::StaleCommand);
        }
        receiver.await.unwrap_or(Err(RaftstoreError::OutcomeUnknown { region_id }))
    }

    /// Proposes a membership change planned against the group's epoch `planned`, and
    /// waits until it is applied (or refused: the group is at another epoch meanwhile).
    pub async fn change_peers(
        &self,
        group_id: u64,
        changes: Vec<PeerChange>,
        planned: RegionEpoch,
    ) -> Result<ApplyOutput, RaftstoreError> {
        let planned = Some(planned);
        self.send(group_id, |callback| RaftMessage::ConfChange {
            group_id,
            changes,
            planned,
            callback,
        })
        .await
    }

    /// Waits until the local leader of `group_id` has confirmed with a quorum that it
    /// still leads and has applied everything committed before now.
    pub async fn read_index(&self, group_id: u64) -> Result<(), RaftstoreError> {
        let (sender, receiver) = oneshot::channel();
        let callback: ReadCallback = Box::new(move |result| {
            let _ = sender.send(result);
        });
        if self.sender.send_async(RaftMessage::ReadIndex { group_id, callback }).await.is_err() {
            return Err(RaftstoreError::StaleCommand);
        }
        receiver.await.unwrap_or(Err(RaftstoreError::StaleCommand))
    }

    /// Delivers a message from another node; dropped if the Raft thread is saturated.
    /// Returns whether it was queued.
    pub fn step(&self, message: PeerMessage) -> bool {
        let message = RaftMessage::Step { message: Box::new(message), snapshot: None, reply: None };
        self.sender.try_send(message).is_ok()
    }

    /// Delivers a message carrying a snapshot, with its data, and waits for the store's
    /// verdict.
    pub async fn step_snapshot(
        &self,
        message: PeerMessage,
        data: SnapshotData,
    ) -> Result<(), String> {
        let (reply, receiver) = oneshot::channel();
        let message = RaftMessage::Step {
            message: Box::new(message),
            snapshot: Some(data),
            reply: Some(reply),
        };
        self.sender.send_async(message).await.map_err(|_| "the node is stopping".to_string())?;
        match receiver.await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err("the node is stopping".into()),
        }
    }

    /// Tells raft-rs a message to `peer_id` could not be sent.
    pub fn report_unreachable(&self, group_id: u64, peer_id: u64) {
        let _ = self.sender.try_send(RaftMessage::Unreachable { group_id, peer_id });
    }

    /// Tells raft-rs how sending a snapshot to `peer_id` ended. Waits for room in the
    /// channel: a lost report would leave the follower paused.
    pub async fn report_snapshot(&self, group_id: u64, peer_id: u64, delivered: bool) {
        let message = RaftMessage::SnapshotSent { group_id, peer_id, delivered };
        let _ = self.sender.send_async(message).await;
    }

    /// Runs `task` on the Raft thread with the store, and returns its result.
    pub async fn with_store<T: Send + 'static>(
        &self,
        task: impl FnOnce(&mut Store) -> T + Send + 'static,
    ) -> Result<T, RaftstoreError> {
        let (sender, receiver) = oneshot::channel();
        let task: StoreTask = Box::new(move |store| {
            let _ = sender.send(task(store));
        });
        if self.sender.send_async(RaftMessage::WithStore(task)).await.is_err() {
            return Err(RaftstoreError::StaleCommand);
        }
        receiver.await.map_err(|_| RaftstoreError::StaleCommand)
    }

    /// Sends a proposal to group `group_id` and waits for its answer. One that the Raft
    /// thread dropped unanswered (it stopped) may have entered the log: unknown outcome.
    async fn send(
        &self,
        group_id: u64,
        message: impl FnOnce(Callback) -> RaftMessage,
    ) -> Result<ApplyOutput, RaftstoreError> {
        let (sender, receiver) = oneshot::channel();
        let callback: Callback = Box::new(move |result| {
            let _ = sender.send(result);
        });
        if self.sender.send_async(message(callback)).await.is_err() {
            return Err(RaftstoreError::StaleCommand);
        }
        receiver.await.unwrap_or(Err(RaftstoreError::OutcomeUnknown { region_id: group_id }))
    }
}

/// The running Raft thread.
pub struct RaftDriver {
    thread: Option<JoinHandle<()>>,
}

/// Where Raft messages for other nodes go. Called on the Raft thread: must not block.
pub trait Outbox: Send + 'static {
    /// Queues `messages` for their stores.
    fn send(&self, messages: Vec<PeerMessage>);
}

/// Where a round's output goes.
pub struct Outputs {
    /// Raft messages for other nodes.
    pub outbox: Box<dyn Outbox>,
    /// Leadership and Region changes, for the node's event handler.
    pub events: mpsc::UnboundedSender<Vec<Event>>,
}

impl RaftDriver {
    /// Starts the thread that drives `store`, ticking every `tick`.
    pub fn start(
        store: Store,
        tick: Duration,
        outputs: Outputs,
    ) -> std::io::Result<(RaftDriver, RaftHandle)> {
        let (sender, receiver) = flume::bounded(CHANNEL_CAPACITY);
        let thread = std::thread::Builder::new()
            .name("raft".into())
            .spawn(move || run(store, receiver, tick, outputs))?;
        Ok((RaftDriver { thread: Some(thread) }, RaftHandle { sender }))
    }

    /// Asks the thread to stop after the messages already queued.
    pub fn stop(&self, handle: &RaftHandle) {
        let _ = handle.sender.send(RaftMessage::Stop);
    }

    /// Waits for the thread to finish.
    pub fn join(mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(mut store: Store, receiver: flume::Receiver<RaftMessage>, tick: Duration, outputs: Outputs) {
    let mut next_tick = Instant::now() + tick;
    let mut ticks = 0u64;
    store.set_time(crate::clock::monotonic_ms());
    loop {
        // Work already waiting (a sole voter's election at start, a round that left more)
        // is done now, not after the next message or tick.
        let wait = match store.has_ready() {
            true => Duration::ZERO,
            false => next_tick.saturating_duration_since(Instant::now()),
        };
        match receiver.recv_timeout(wait) {
            Ok(message) => {
                store.set_time(crate::clock::monotonic_ms());
                let mut stop = handle(&mut store, message);
                for message in receiver.try_iter().take(MAX_MESSAGES_PER_ROUND) {
                    stop |= handle(&mut store, message);
                }
                if stop {
                    // Finish what was proposed, then drop the store (failing anything left;
                    // a snapshot's data still going in resumes after the restart).
                    while store.has_raft_work() {
                        match round(&mut store, &outputs) {
                            Ok(output) => deliver(&outputs, output),
                            Err(_) => break,
                        }
                    }
                    break;
                }
            }
            Err(flume::RecvTimeoutError::Timeout) => {}
            Err(flume::RecvTimeoutError::Disconnected) => break,
        }
        if Instant::now() >= next_tick {
            store.tick(crate::clock::monotonic_ms());
            next_tick = Instant::now() + tick;
            ticks += 1;
            if ticks.is_multiple_of(COUNT_GROUPS_EVERY_TICKS) {
                let (groups, asleep) = store.count_hibernating();
                let gauge = &crate::metrics::METRICS.raft_groups;
                gauge.with_label_values(&["awake"]).set((groups - asleep) as i64);
                gauge.with_label_values(&["hibernating"]).set(asleep as i64);
            }
        }
        if store.has_ready() {
            match round(&mut store, &outputs) {
                Ok(output) => deliver(&outputs, output),
                Err(error) => {
                    // The log or the state machine could not be written: the node can no
                    // longer promise durability. Crash rather than diverge; a restart
                    // recovers from the last durable state.
                    tracing::error!(%error, "raft storage failed; stopping the node");
                    std::process::exit(70);
                }
            }
        }
    }
    tracing::debug!("raft thread stopped");
}

/// Ticks between counts of the groups that hibernate, for the `scandium_raft_groups`
/// gauge (a look at every replica).
const COUNT_GROUPS_EVERY_TICKS: u64 = 20;

/// One round, its messages leaving as soon as the store lets them (see
/// `Store::handle_ready_sending`).
fn round(
    store: &mut Store,
    outputs: &Outputs,
) -> Result<scandium_raftstore::RoundOutput, scandium_raftstore::RaftstoreError> {
    let started = Instant::now();
    let output = store.handle_ready_sending(&mut |messages| outputs.outbox.send(messages));
    let metrics = &crate::metrics::METRICS;
    metrics.raft_round_seconds.observe(started.elapsed().as_secs_f64());
    if let Ok(output) = &output {
        let timings = output.timings;
        for (histogram, took) in [
            (&metrics.raft_append_seconds, timings.append),
            (&metrics.raft_sync_seconds, timings.sync),
            (&metrics.raft_apply_seconds, timings.apply),
        ] {
            if let Some(took) = took {
                histogram.observe(took.as_secs_f64());
            }
        }
    }
    output
}

fn deliver(outputs: &Outputs, output: scandium_raftstore::RoundOutput) {
    if !output.messages.is_empty() {
        outputs.outbox.send(output.messages);
    }
    if !output.events.is_empty() {
        let _ = outputs.events.send(output.events);
    }
}

/// Handles one message; returns whether the thread should stop.
fn handle(store: &mut Store, message: RaftMessage) -> bool {
    match message {
        RaftMessage::Propose { group_id, data, callback } => {
            crate::metrics::METRICS.raft_proposals.inc();
            store.propose(group_id, data, callback)
        }
        RaftMessage::ProposeCommand { group_id, command, callback } => {
            crate::metrics::METRICS.raft_proposals.inc();
            store.propose_command(group_id, command, callback)
        }
        RaftMessage::ConfChange { group_id, changes, planned, callback } => {
            store.propose_conf_change(group_id, changes, planned, callback)
        }
        RaftMessage::ReadIndex { group_id, callback } => store.read_index(group_id, callback),
        RaftMessage::Step { message, snapshot, reply } => {
            let result = store.step(*message, snapshot);
            if let Err(error) = &result {
                tracing::debug!(%error, "raft message not delivered");
            }
            if let Some(reply) = reply {
                let _ = reply.send(result);
            }
        }
        RaftMessage::Unreachable { group_id, peer_id } => {
            store.report_unreachable(group_id, peer_id)
        }
        RaftMessage::SnapshotSent { group_id, peer_id, delivered } => {
            store.report_snapshot(group_id, peer_id, delivered)
        }
        RaftMessage::WithStore(task) => task(store),
        RaftMessage::Stop => return true,
    }
    false
}
