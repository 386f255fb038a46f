//! Raft messages to other nodes, on the node's one port (`scandium.Cluster`).
//!
//! One connection per destination store: a task that batches whatever is queued for it
//! into one `RaftBatch` (up to a count and a size) on a long-lived client stream, and
//! reconnects with backoff when the stream breaks. Queues are bounded; a full one drops
//! the message (Raft retransmits) and tells raft-rs the peer is unreachable, so a dead
//! node costs memory for at most one queue. Snapshots travel apart, each on its own
//! stream of bounded chunks read from the engine snapshot the store registered, and their
//! outcome is reported back to raft-rs.

use crate::network::{Clients, Directory, Links};
use crate::raft_driver::{Outbox, RaftHandle};
use crate::tasks::Tasks;
use prost::Message as _;
use scandium_protocol::scandium::{RaftBatch, SnapshotChunk};
use scandium_raftstore::snapshot::{for_each_chunk, SnapshotHeader};
use scandium_raftstore::{PeerMessage, SnapshotSources};
use scandium_types::StoreId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio_stream::wrappers::ReceiverStream;

/// Messages queued per destination store at most.
const QUEUE_CAPACITY: usize = 4096;
/// Messages per batch at most.
const BATCH_MESSAGES: usize = 512;
/// Bytes per batch, about, at most.
const BATCH_BYTES: usize = 4 << 20;
/// Bytes of records per snapshot chunk, about.
const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// What a receiver with every snapshot slot taken answers (see the `snapshot` handler in
/// `grpc/cluster.rs`).
pub(crate) const RECEIVER_BUSY: &str = "the receiver is busy with other snapshots";

/// How long a sender waits, after a busy receiver, before it tells raft-rs the snapshot
/// failed (which makes it try again at its next chance): a slot frees in seconds.
const BUSY_BACKOFF: Duration = Duration::from_millis(500);

/// Longest a snapshot transfer may take.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(600);
/// A transfer whose receiver takes no chunk for this long is given up (its permits go to
/// the transfers waiting), rather than hold out to [`SNAPSHOT_TIMEOUT`]. A receiver
/// pauses only while its memtables wait to be flushed: seconds.
const SNAPSHOT_STALL: Duration = Duration::from_secs(60);

/// How long a receiver takes a snapshot transfer for at most: the sender gives up at
/// [`SNAPSHOT_TIMEOUT`], and a sender trickling chunks just inside [`SNAPSHOT_STALL`]
/// would otherwise hold one of the receiver's few slots for as long as it liked. Or what
/// a test sets with the `snapshot_receive_deadline_ms` failpoint.
pub(crate) fn snapshot_receive_deadline() -> Duration {
    fail::fail_point!("snapshot_receive_deadline_ms", |ms| {
        Duration::from_millis(ms.and_then(|ms| ms.parse().ok()).unwrap_or(0))
    });
    SNAPSHOT_TIMEOUT
}

/// [`SNAPSHOT_STALL`], or what a test sets with the `snapshot_stall_ms` failpoint.
pub(crate) fn snapshot_stall() -> Duration {
    fail::fail_point!("snapshot_stall_ms", |ms| {
        Duration::from_millis(ms.and_then(|ms| ms.parse().ok()).unwrap_or(0))
    });
    SNAPSHOT_STALL
}
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Counters of what the transport did, for tests and metrics.
#[derive(Debug, Default)]
pub struct TransportStats {
    /// Messages handed to a connection.
    pub sent: AtomicU64,
    /// Messages dropped: queue full, no address, link cut.
    pub dropped: AtomicU64,
    /// Snapshots delivered.
    pub snapshots_sent: AtomicU64,
    /// Snapshots that failed.
    pub snapshots_failed: AtomicU64,
}

struct Inner {
    cluster_id: u64,
    store_id: StoreId,
    address: String,
    directory: Arc<Directory>,
    clients: Arc<Clients>,
    links: Arc<Links>,
    sources: SnapshotSources,
    raft: OnceLock<RaftHandle>,
    tasks: Tasks,
    queues: Mutex<HashMap<StoreId, mpsc::Sender<PeerMessage>>>,
    snapshots: Arc<Semaphore>,
    pacer: Arc<Pacer>,
    stats: TransportStats,
}

/// Sends this node's Raft messages. Cheap to clone.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

/// What the transport needs to know about this node.
pub struct TransportConfig {
    /// The cluster's id, stamped on every batch.
    pub cluster_id: u64,
    /// This store.
    pub store_id: StoreId,
    /// Where this node is reached.
    pub address: String,
    /// Snapshots sent at once at most.
    pub max_concurrent_snapshots: usize,
    /// Bytes per second of snapshots sent, all together, at most (0: no limit).
    pub snapshot_bytes_per_sec: u64,
}

/// Paces the snapshots a node sends to a rate shared by all of them: each chunk reserves
/// its share of time after those before it, and its sender sleeps until its turn.
struct Pacer {
    bytes_per_sec: u64,
    next: Mutex<std::time::Instant>,
}

impl Pacer {
    /// Waits (blocking: called on the snapshot reader's thread) for `bytes` to be sent.
    fn pace(&self, bytes: usize) {
        if self.bytes_per_sec == 0 {
            return;
        }
        let share = Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
        let wait = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let now = std::time::Instant::now();
            let start = (*next).max(now);
            *next = start + share;
            start - now
        };
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

impl Transport {
    /// A transport sending from this node; call [`Transport::set_raft`] once the Raft
    /// thread runs. Must be created inside the node's tokio runtime.
    pub fn new(
        config: TransportConfig,
        directory: Arc<Directory>,
        clients: Arc<Clients>,
        links: Arc<Links>,
        sources: SnapshotSources,
        tasks: Tasks,
    ) -> Transport {
        Transport {
            inner: Arc::new(Inner {
                cluster_id: config.cluster_id,
                store_id: config.store_id,
                address: config.address,
                directory,
                clients,
                links,
                sources,
                raft: OnceLock::new(),
                tasks,
                queues: Mutex::default(),
                snapshots: Arc::new(Semaphore::new(config.max_concurrent_snapshots)),
                pacer: Arc::new(Pacer {
                    bytes_per_sec: config.snapshot_bytes_per_sec,
                    next: Mutex::new(std::time::Instant::now()),
                }),
                stats: TransportStats::default(),
            }),
        }
    }

    /// Connects the transport to the Raft thread it reports to.
    pub fn set_raft(&self, raft: RaftHandle) {
        let _ = self.inner.raft.set(raft);
    }

    /// What the transport has done so far.
    pub fn stats(&self) -> &TransportStats {
        &self.inner.stats
    }

    /// Queues messages for their stores; never blocks (called from the Raft thread).
    pub fn send(&self, messages: Vec<PeerMessage>) {
        for message in messages {
            let to = message.to.store_id;
            if !self.inner.links.allows(to) {
                self.dropped(&message);
                continue;
            }
            if message.is_snapshot() {
                self.send_snapshot(message);
                continue;
            }
            let queue = self.queue(to);
            match queue.try_send(message) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(message))
                | Err(mpsc::error::TrySendError::Closed(message)) => self.dropped(&message),
            }
        }
    }

    /// Tells each of `stores` (id, address) that this node is up, with an empty batch on
    /// the Raft stream: their connections to it, backed off while it was down (up to
    /// [`MAX_BACKOFF`]), try again at once (`Directory::wake_of`), rather than leave a
    /// restarted node without word from its leaders, the placement leader's among them,
    /// until their backoffs run out.
    pub fn announce(&self, stores: Vec<(StoreId, String)>) {
        for (store, address) in stores {
            let inner = self.inner.clone();
            drop(self.inner.tasks.spawn(async move {
                let Ok(mut client) = inner.clients.cluster(&address) else { return };
                let hello = RaftBatch {
                    cluster_id: inner.cluster_id,
                    from_store: inner.store_id,
                    from_address: inner.address.clone(),
                    messages: Vec::new(),
                };
                let call = client.raft(tokio_stream::iter([hello]));
                match tokio::time::timeout(MAX_BACKOFF, call).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(status)) => tracing::debug!(store, %status, "store not told we are up"),
                    Err(_) => tracing::debug!(store, "store not told we are up in time"),
                }
            }));
        }
    }

    fn dropped(&self, message: &PeerMessage) {
        self.inner.stats.dropped.fetch_add(1, Ordering::Relaxed);
        if let Some(raft) = self.inner.raft.get() {
            raft.report_unreachable(message.region_id, message.to.id);
            if message.is_snapshot() {
                let (raft, region, peer) = (raft.clone(), message.region_id, message.to.id);
                drop(
                    self.inner
                        .tasks
                        .spawn(async move { raft.report_snapshot(region, peer, false).await }),
                );
            }
        }
    }

    fn queue(&self, store: StoreId) -> mpsc::Sender<PeerMessage> {
        let mut queues = self.inner.queues.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(queue) = queues.get(&store).filter(|q| !q.is_closed()) {
            return queue.clone();
        }
        let (sender, receiver) = mpsc::channel(QUEUE_CAPACITY);
        queues.insert(store, sender.clone());
        let inner = self.inner.clone();
        drop(self.inner.tasks.spawn(connection(inner, store, receiver)));
        sender
    }

    fn send_snapshot(&self, message: PeerMessage) {
        let inner = self.inner.clone();
        drop(self.inner.tasks.spawn(async move {
            let (region, peer) = (message.region_id, message.to.id);
            let result = match inner.snapshots.clone().acquire_owned().await {
                Ok(_permit) => {
                    tokio::time::timeout(SNAPSHOT_TIMEOUT, transfer_snapshot(&inner, message))
                        .await
                        .unwrap_or_else(|_| Err("timed out".into()))
                }
                Err(_) => Err("the node is stopping".into()),
            };
            let delivered = result.is_ok();
            match result {
                Ok(()) => {
                    inner.stats.snapshots_sent.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(region, peer, "sent a snapshot");
                }
                Err(error) if error == RECEIVER_BUSY => {
                    tracing::debug!(region, peer, "the receiver is busy; the snapshot waits");
                    tokio::time::sleep(BUSY_BACKOFF).await;
                }
                Err(error) => {
                    inner.stats.snapshots_failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(region, peer, %error, "could not send a snapshot; raft will retry");
                }
            }
            if let Some(raft) = inner.raft.get() {
                raft.report_snapshot(region, peer, delivered).await;
            }
        }));
    }
}

impl Outbox for Transport {
    fn send(&self, messages: Vec<PeerMessage>) {
        Transport::send(self, messages);
    }
}

/// The connection to one store: batches its queue onto a client stream, reconnecting
/// with backoff.
async fn connection(inner: Arc<Inner>, store: StoreId, mut queue: mpsc::Receiver<PeerMessage>) {
    let wake = inner.directory.wake_of(store);
    let mut backoff = MIN_BACKOFF;
    let mut pending: Option<PeerMessage> = None;
    loop {
        let first = match pending.take() {
            Some(message) => message,
            None => match queue.recv().await {
                Some(message) => message,
                None => return,
            },
        };
        let Some(address) = inner.directory.address(store) else {
            tracing::debug!(store, "no address known for store; dropping a raft message");
            inner.stats.dropped.fetch_add(1, Ordering::Relaxed);
            backoff = back_off(&wake, backoff).await;
            continue;
        };
        let mut client = match inner.clients.cluster(&address) {
            Ok(client) => client,
            Err(error) => {
                tracing::warn!(store, %error, "cannot reach store");
                tokio::time::sleep(MAX_BACKOFF).await;
                continue;
            }
        };
        let (batches, receiver) = mpsc::channel::<RaftBatch>(8);
        let call =
            inner.tasks.spawn(async move { client.raft(ReceiverStream::new(receiver)).await });
        let connected_at = Instant::now();
        let mut next = Some(first);
        loop {
            let message = match next.take() {
                Some(message) => message,
                None => match queue.recv().await {
                    Some(message) => message,
                    None => return,
                },
            };
            if !inner.links.allows(store) {
                inner.stats.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let mut bytes = message.approximate_size();
            let mut encoded = vec![message.encode()];
            while encoded.len() < BATCH_MESSAGES && bytes < BATCH_BYTES {
                match queue.try_recv() {
                    Ok(more) => {
                        bytes += more.approximate_size();
                        encoded.push(more.encode());
                    }
                    Err(_) => break,
                }
            }
            let count = encoded.len() as u64;
            let batch = RaftBatch {
                cluster_id: inner.cluster_id,
                from_store: inner.store_id,
                from_address: inner.address.clone(),
                messages: encoded,
            };
            if batches.send(batch).await.is_err() || call.is_finished() {
                inner.stats.dropped.fetch_add(count, Ordering::Relaxed);
                break;
            }
            inner.stats.sent.fetch_add(count, Ordering::Relaxed);
        }
        drop(batches);
        if let Ok(Err(status)) = call.await {
            tracing::debug!(store, %status, "raft stream to store ended");
        }
        if connected_at.elapsed() > Duration::from_secs(1) {
            backoff = MIN_BACKOFF;
        }
        backoff = back_off(&wake, backoff).await;
        // Messages queued while disconnected are stale by now; Raft will resend what
        // matters.
        while let Ok(stale) = queue.try_recv() {
            inner.stats.dropped.fetch_add(1, Ordering::Relaxed);
            pending = Some(stale);
        }
    }
}

/// Waits out `backoff` before a connection tries again, or only [`MIN_BACKOFF`] once the
/// store is heard from (`wake`): it is up. Returns the next backoff.
async fn back_off(wake: &Notify, backoff: Duration) -> Duration {
    tokio::select! {
        () = tokio::time::sleep(backoff) => (backoff * 2).min(MAX_BACKOFF),
        () = async {
            wake.notified().await;
            tokio::time::sleep(MIN_BACKOFF).await;
        } => MIN_BACKOFF,
    }
}

async fn transfer_snapshot(inner: &Arc<Inner>, message: PeerMessage) -> Result<(), String> {
    let snapshot = message.message.snapshot.as_ref().ok_or("no snapshot in the message")?;
    let header = SnapshotHeader::decode(snapshot.data.as_ref()).map_err(|e| e.to_string())?;
    let (region, engine_snapshot) = inner
        .sources
        .take(header.token)
        .ok_or("the snapshot's engine snapshot expired before it was sent")?;
    let store = message.to.store_id;
    let address = inner.directory.address(store).ok_or(format!("no address for store {store}"))?;
    let mut client = inner.clients.snapshots(&address)?;
    let (chunks, receiver) = mpsc::channel::<SnapshotChunk>(4);
    let first = SnapshotChunk {
        cluster_id: inner.cluster_id,
        from_store: inner.store_id,
        from_address: inner.address.clone(),
        message: message.encode(),
        ..Default::default()
    };
    chunks.send(first).await.map_err(|_| "stream closed")?;
    let pacer = inner.pacer.clone();
    let runtime = tokio::runtime::Handle::current();
    let stall = snapshot_stall();
    let reader = tokio::task::spawn_blocking(move || {
        // Whether the receiver took `chunk` within `stall`.
        let send = |chunk: SnapshotChunk| {
            let taken = runtime.block_on(tokio::time::timeout(stall, chunks.send(chunk)));
            if taken.is_err() {
                tracing::warn!(store, ?stall, "a snapshot's receiver stopped taking chunks");
            }
            matches!(taken, Ok(Ok(())))
        };
        let mut records = 0u64;
        let complete = for_each_chunk(&region, &*engine_snapshot, SNAPSHOT_CHUNK_BYTES, |chunk| {
            // Tests cut a transfer short after its first chunk, as a failed read would.
            fail::fail_point!("snapshot_cut_after_first_chunk", records > 0, |_| false);
            // And stall it there (`sleep(ms)`), as a sender starved of CPU or disk would.
            if records > 0 {
                fail::fail_point!("snapshot_sender_stalls");
            }
            records += chunk.entries.len() as u64;
            let chunk = SnapshotChunk { data: chunk.encode_to_vec(), ..Default::default() };
            pacer.pace(chunk.data.len());
            send(chunk)
        })?;
        // Without this marker the receiver refuses what it got: a stream that simply
        // stops looks, to it, like one that ended.
        let end = SnapshotChunk { end: true, records, ..Default::default() };
        Ok::<_, scandium_storage::StorageError>(complete && send(end))
    });
    let response = client.snapshot(ReceiverStream::new(receiver)).await;
    let read = reader.await.map_err(|e| e.to_string())?;
    let done = response.map_err(|status| status.message().to_string())?.into_inner();
    if done.error == RECEIVER_BUSY {
        // It answered without reading, so the reader found the stream closed.
        return Err(done.error);
    }
    match read {
        Err(error) => Err(format!("reading the snapshot failed: {error}")),
        Ok(false) => Err("the receiver stopped reading".into()),
        Ok(true) if done.error.is_empty() => Ok(()),
        Ok(true) => Err(done.error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_store_heard_from_cuts_the_backoff_short() {
        let wake = Arc::new(Notify::new());
        let waiting = tokio::spawn({
            let wake = wake.clone();
            async move {
                let begun = Instant::now();
                (back_off(&wake, MAX_BACKOFF).await, begun.elapsed())
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        wake.notify_one();
        let (next, waited) = waiting.await.unwrap();
        assert_eq!(next, MIN_BACKOFF, "the backoff starts over");
        assert!(waited < MAX_BACKOFF / 4, "woken after {waited:?}");
        // Not heard from: the backoff runs out and doubles.
        let quiet = Notify::new();
        assert_eq!(back_off(&quiet, MIN_BACKOFF).await, 2 * MIN_BACKOFF);
    }
}
