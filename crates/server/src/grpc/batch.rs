//! `Tikv.BatchCommands`: many commands multiplexed over one bidirectional stream, the way
//! client-go talks to TiKV. Each command runs as its own task through the same handler as
//! its unary RPC, so the answers are identical; finished answers are sent back in whatever
//! order they complete, packed into as few messages as the stream allows. The gain is in
//! the transport: one HTTP/2 message, one set of frames and one syscall carry many commands
//! instead of one each.

use crate::authz::Caller;
use crate::tasks::Tasks;
use futures::{Stream, StreamExt};
use scandium_protocol::tikvpb::batch_commands_request::request::Cmd as Req;
use scandium_protocol::tikvpb::batch_commands_response::response::Cmd as Resp;
use scandium_protocol::tikvpb::tikv_server::Tikv;
use scandium_protocol::tikvpb::{
    batch_commands_response, BatchCommandsEmptyResponse, BatchCommandsRequest,
    BatchCommandsResponse,
};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use tonic::{Request, Status, Streaming};

/// Commands of one stream executing at once. Past it the stream stops reading, so HTTP/2
/// flow control pushes back on the client instead of tasks piling up here.
pub const MAX_IN_FLIGHT: usize = 1024;

/// Batched commands executing at once on a node, over all its streams: a client opening
/// stream after stream would otherwise have `MAX_IN_FLIGHT` tasks running for each. Past
/// it every stream waits for a command to finish before reading on. (A command whose
/// stream ends still runs to its end, its effects standing, and holds its place until
/// then.) `PessimisticLock`, which may spend its time waiting for another transaction,
/// is bounded per stream only.
pub const MAX_IN_FLIGHT_PER_NODE: usize = 4 * MAX_IN_FLIGHT;

/// Most answers packed into one response message.
pub const MAX_RESPONSES_PER_MESSAGE: usize = 256;

/// Most bytes of answers packed into one response message, beyond its first answer:
/// three large scans finishing together made a message over the encoding limit, which
/// ended the stream and failed every command on it.
pub const MAX_BYTES_PER_MESSAGE: usize = 4 << 20;

/// Longest delay an `Empty` test command may ask for.
pub const MAX_EMPTY_DELAY: Duration = Duration::from_secs(10);

/// The response stream of `BatchCommands`.
pub type BatchCommandsStream =
    Pin<Box<dyn Stream<Item = Result<BatchCommandsResponse, Status>> + Send>>;

type Answer = Result<(u64, batch_commands_response::Response), Status>;

/// Serves one `BatchCommands` stream. A malformed message or a command this server does
/// not serve ends the stream with that status; commands already running still finish
/// (their effects stand) but their answers are not sent.
/// `node_permits` bounds the commands running on the node ([`MAX_IN_FLIGHT_PER_NODE`]).
pub fn serve<S: Tikv + Clone>(
    service: S,
    tasks: &Tasks,
    node_permits: &Arc<Semaphore>,
    caller: Option<Caller>,
    inbound: Streaming<BatchCommandsRequest>,
) -> BatchCommandsStream {
    let (answers, received) = mpsc::channel::<Answer>(MAX_IN_FLIGHT);
    let permits =
        Permits { stream: Arc::new(Semaphore::new(MAX_IN_FLIGHT)), node: node_permits.clone() };
    tasks.spawn(read_commands(service, tasks.clone(), permits, caller, inbound, answers));
    let outbound = Outbound { received, held: None, failed: false };
    Box::pin(futures::stream::unfold(outbound, Outbound::next))
}

/// A node-wide place taken, counted in `scandium_batch_commands_running` while held.
struct Running {
    _place: tokio::sync::OwnedSemaphorePermit,
}

impl Running {
    fn new(place: tokio::sync::OwnedSemaphorePermit) -> Running {
        crate::metrics::METRICS.batch_commands_running.inc();
        Running { _place: place }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        crate::metrics::METRICS.batch_commands_running.dec();
    }
}

/// The places a batched command takes: one of its stream's, one of its node's.
struct Permits {
    stream: Arc<Semaphore>,
    node: Arc<Semaphore>,
}

async fn read_commands<S: Tikv + Clone>(
    service: S,
    tasks: Tasks,
    permits: Permits,
    caller: Option<Caller>,
    mut inbound: Streaming<BatchCommandsRequest>,
    answers: mpsc::Sender<Answer>,
) {
    while let Some(Ok(batch)) = inbound.next().await {
        if batch.requests.len() != batch.request_ids.len() {
            let status = Status::invalid_argument(format!(
                "BatchCommands message has {} requests but {} request ids",
                batch.requests.len(),
                batch.request_ids.len()
            ));
            let _ = answers.send(Err(status)).await;
            return;
        }
        for (request, id) in batch.requests.into_iter().zip(batch.request_ids) {
            let Ok(permit) = permits.stream.clone().acquire_owned().await else { return };
            // A pessimistic lock may spend its time waiting for another transaction's
            // lock: it holds no node-wide place, or a hot key's waiters could fill them
            // all and the holder's commit queue behind its own waiters.
            let waits = matches!(&request.cmd, Some(Req::PessimisticLock(_)));
            let node_permit = match waits {
                true => None,
                false => match permits.node.clone().acquire_owned().await {
                    Ok(node_permit) => Some(Running::new(node_permit)),
                    Err(_) => return,
                },
            };
            if answers.is_closed() {
                return;
            }
            let (service, answers, caller) = (service.clone(), answers.clone(), caller.clone());
            tasks.spawn(async move {
                // A command that fails, or that this node does not serve, gets an empty
                // answer of its own (as TiKV answers an unknown command): ending the
                // stream would fail every other command on it (client-go fails them all).
                let cmd = match execute(&service, &caller, request.cmd).await {
                    Ok(cmd) => Some(cmd),
                    Err(status) => {
                        tracing::debug!(id, %status, "a batched command failed");
                        None
                    }
                };
                // Done with the node's work: a client slow to read its answers holds up
                // its own stream only.
                drop(node_permit);
                let answer = Ok((id, batch_commands_response::Response { cmd }));
                let _ = answers.send(answer).await;
                drop(permit);
            });
        }
    }
}

/// The sending half: waits for one answer, then packs every other answer already
/// finished into the same message.
struct Outbound {
    received: mpsc::Receiver<Answer>,
    /// An answer that did not fit in the last message: the next one starts with it.
    held: Option<Answer>,
    failed: bool,
}

impl Outbound {
    async fn next(mut self) -> Option<(Result<BatchCommandsResponse, Status>, Outbound)> {
        if self.failed {
            return None;
        }
        let mut message = BatchCommandsResponse::default();
        let mut answer = match self.held.take() {
            Some(answer) => answer,
            None => self.received.recv().await?,
        };
        let mut bytes = 0;
        loop {
            match answer {
                Ok((id, response)) => {
                    let size = prost::Message::encoded_len(&response);
                    if !message.responses.is_empty() && bytes + size > MAX_BYTES_PER_MESSAGE {
                        self.held = Some(Ok((id, response)));
                        break;
                    }
                    bytes += size;
                    message.request_ids.push(id);
                    message.responses.push(response);
                }
                Err(status) => {
                    self.failed = true;
                    // Answers gathered so far are dropped with the stream: the client
                    // sees the status and fails every pending command of it.
                    return Some((Err(status), self));
                }
            }
            if message.responses.len() >= MAX_RESPONSES_PER_MESSAGE {
                break;
            }
            match self.received.try_recv() {
                Ok(next) => answer = next,
                Err(_) => break,
            }
        }
        Some((Ok(message), self))
    }
}

/// Runs one command through the handler of its unary RPC.
/// The stream's caller (with TLS) goes with each command, whose handler checks its
/// grants as for the unary call.
async fn execute<S: Tikv>(
    service: &S,
    caller: &Option<Caller>,
    cmd: Option<Req>,
) -> Result<Resp, Status> {
    fn request<T>(caller: &Option<Caller>, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(caller) = caller {
            caller.attach(&mut request);
        }
        request
    }
    macro_rules! route {
        ($cmd:expr, $($variant:ident => $method:ident),* $(,)?) => {
            match $cmd {
                $(Some(Req::$variant(r)) => {
                    Ok(Resp::$variant(service.$method(request(caller, *r)).await?.into_inner()))
                })*
                Some(Req::Empty(r)) => {
                    tokio::time::sleep(Duration::from_millis(r.delay_time).min(MAX_EMPTY_DELAY)).await;
                    Ok(Resp::Empty(BatchCommandsEmptyResponse { test_id: r.test_id }))
                }
                None => Err(Status::unimplemented(
                    "BatchCommands: a request carries no command, or one this server does not serve",
                )),
            }
        };
    }
    route!(cmd,
        Get => kv_get,
        Scan => kv_scan,
        Prewrite => kv_prewrite,
        Commit => kv_commit,
        Cleanup => kv_cleanup,
        BatchGet => kv_batch_get,
        BatchRollback => kv_batch_rollback,
        ScanLock => kv_scan_lock,
        ResolveLock => kv_resolve_lock,
        Gc => kv_gc,
        DeleteRange => kv_delete_range,
        RawGet => raw_get,
        RawBatchGet => raw_batch_get,
        RawPut => raw_put,
        RawBatchPut => raw_batch_put,
        RawDelete => raw_delete,
        RawBatchDelete => raw_batch_delete,
        RawScan => raw_scan,
        RawDeleteRange => raw_delete_range,
        RawBatchScan => raw_batch_scan,
        PessimisticLock => kv_pessimistic_lock,
        PessimisticRollback => kv_pessimistic_rollback,
        CheckTxnStatus => kv_check_txn_status,
        TxnHeartBeat => kv_txn_heart_beat,
        CheckSecondaryLocks => kv_check_secondary_locks,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use scandium_protocol::kvrpcpb::{KvPair, RawScanResponse};

    #[allow(clippy::result_large_err)] // `Answer` is the channel's item, as in the server
    fn scan_answer(id: u64, bytes: usize) -> Answer {
        let kvs = vec![KvPair { key: b"k".to_vec(), value: vec![0; bytes], error: None }];
        let cmd = Some(Resp::RawScan(RawScanResponse { kvs, ..Default::default() }));
        Ok((id, batch_commands_response::Response { cmd }))
    }

    #[tokio::test]
    async fn answers_waiting_together_are_packed_within_the_byte_bound() {
        let (sender, received) = mpsc::channel(16);
        for id in 0..4 {
            sender.send(scan_answer(id, 3 << 20)).await.unwrap();
        }
        drop(sender);
        let mut outbound = Outbound { received, held: None, failed: false };
        let mut ids = Vec::new();
        while let Some((message, next)) = outbound.next().await {
            let message = message.unwrap();
            let size = prost::Message::encoded_len(&message);
            // Within the default encoding limit (`max_grpc_message_bytes`, 10 MiB).
            assert!(size < 10 << 20, "{size} bytes");
            ids.extend(message.request_ids);
            outbound = next;
        }
        assert_eq!(ids, [0, 1, 2, 3], "each answer once, in order");
    }
}
