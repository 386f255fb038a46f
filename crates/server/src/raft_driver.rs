//! The Raft thread: the only thread that touches the [`Store`].
//!
//! Requests reach it through a bounded channel. Each loop iteration takes every message
//! waiting (up to a bound), ticks when a tick is due, and runs one round of Ready handling,
//! so all proposals that queued up during the previous round's fsync share the next one.
//! A full channel makes proposers wait: that is the node's write backpressure.

use scandium_raftstore::{
    ApplyOutput, Callback, EncodedCommand, RaftCommand, RaftstoreError, Store,
};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Messages queued for the Raft thread at most.
const CHANNEL_CAPACITY: usize = 8192;
/// Messages handled before a round runs, at most.
const MAX_MESSAGES_PER_ROUND: usize = 4096;

enum RaftMessage {
    Propose { group_id: u64, data: Vec<u8>, callback: Callback },
    ProposeCommand { group_id: u64, command: EncodedCommand, callback: Callback },
    Stop,
}

/// Cloneable handle for proposing to the Raft thread.
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
        self.send(|callback| RaftMessage::Propose { group_id, data, callback }).await
    }

    /// Proposes a data command to Region `region_id` and waits until it is applied (or
    /// refused). It is encoded here, on the caller's thread, not on the Raft thread.
    pub async fn propose_command(
        &self,
        region_id: u64,
        command: RaftCommand,
    ) -> Result<ApplyOutput, RaftstoreError> {
        let command = EncodedCommand::new(command);
        self.send(|callback| RaftMessage::ProposeCommand { group_id: region_id, command, callback })
            .await
    }

    /// [`RaftHandle::propose_command`] for a write made under `held` (its latches, and
    /// anything else it must hold until applied): runs `applied` once the command is
    /// applied, then releases `held`. Both happen in a task of their own, so a caller that
    /// is dropped (its client went away) cannot release `held` before the write lands, nor
    /// skip `applied`.
    pub async fn propose_holding<H: Send + 'static>(
        &self,
        region_id: u64,
        command: RaftCommand,
        held: H,
        applied: impl FnOnce() + Send + 'static,
    ) -> Result<(), RaftstoreError> {
        let raft = self.clone();
        let task = tokio::spawn(async move {
            raft.propose_command(region_id, command).await?;
            applied();
            drop(held);
            Ok(())
        });
        // The task only fails to finish if the runtime is shutting down.
        task.await.unwrap_or(Err(RaftstoreError::StaleCommand))
    }

    async fn send(
        &self,
        message: impl FnOnce(Callback) -> RaftMessage,
    ) -> Result<ApplyOutput, RaftstoreError> {
        let (sender, receiver) = oneshot::channel();
        let callback: Callback = Box::new(move |result| {
            let _ = sender.send(result);
        });
        if self.sender.send_async(message(callback)).await.is_err() {
            return Err(RaftstoreError::StaleCommand);
        }
        receiver.await.unwrap_or(Err(RaftstoreError::StaleCommand))
    }
}

/// The running Raft thread.
pub struct RaftDriver {
    thread: Option<JoinHandle<()>>,
}

impl RaftDriver {
    /// Starts the thread that drives `store`, ticking every `tick`.
    pub fn start(store: Store, tick: Duration) -> std::io::Result<(RaftDriver, RaftHandle)> {
        let (sender, receiver) = flume::bounded(CHANNEL_CAPACITY);
        let thread = std::thread::Builder::new()
            .name("raft".into())
            .spawn(move || run(store, receiver, tick))?;
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

fn run(mut store: Store, receiver: flume::Receiver<RaftMessage>, tick: Duration) {
    let mut next_tick = Instant::now() + tick;
    loop {
        let wait = next_tick.saturating_duration_since(Instant::now());
        match receiver.recv_timeout(wait) {
            Ok(message) => {
                store.set_time(crate::clock::monotonic_ms());
                let mut stop = handle(&mut store, message);
                for message in receiver.try_iter().take(MAX_MESSAGES_PER_ROUND) {
                    stop |= handle(&mut store, message);
                }
                if stop {
                    // Finish what was proposed, then drop the store (failing anything left).
                    while store.has_ready() && store.handle_ready().is_ok() {}
                    break;
                }
            }
            Err(flume::RecvTimeoutError::Timeout) => {}
            Err(flume::RecvTimeoutError::Disconnected) => break,
        }
        if Instant::now() >= next_tick {
            store.tick(crate::clock::monotonic_ms());
            next_tick = Instant::now() + tick;
        }
        if store.has_ready() {
            if let Err(error) = store.handle_ready() {
                // The log or the state machine could not be written: the node can no longer
                // promise durability. Crash rather than diverge; a restart recovers from the
                // last durable state.
                tracing::error!(%error, "raft storage failed; stopping the node");
                std::process::exit(70);
            }
        }
    }
    tracing::info!("raft thread stopped");
}

/// Handles one message; returns whether the thread should stop.
fn handle(store: &mut Store, message: RaftMessage) -> bool {
    match message {
        RaftMessage::Propose { group_id, data, callback } => {
            store.propose(group_id, data, callback);
            false
        }
        RaftMessage::ProposeCommand { group_id, command, callback } => {
            store.propose_command(group_id, command, callback);
            false
        }
        RaftMessage::Stop => true,
    }
}
