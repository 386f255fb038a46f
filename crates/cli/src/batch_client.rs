//! A lean TiKV-protocol client for `scandium bench --client batch`: commands go over one
//! `BatchCommands` stream and timestamps over one PD `Tso` stream, both batched, the way
//! client-go (and so go-ycsb, TiKV's usual benchmark) talks to a cluster. It exists to
//! measure the server with a client that does not itself eat most of a 2-core machine;
//! `tikv-client` 0.4 sends one unary RPC per command and spends more CPU per transaction
//! than Scandium does.
//!
//! It runs the same transactions as the `tikv-client` driver, in the same sequence of
//! requests (read or lock each key, prewrite, commit primary, secondaries in the
//! background), but it only knows what a benchmark needs: it asks the node given as `--pd`
//! where each Region is led, keeps one stream to each node that leads any, backs off
//! briefly on a lock instead of resolving it, and on any other failure rolls back what it
//! may have written and reports an abort.

use futures::StreamExt;
use scandium_protocol::kvrpcpb::{self, Context};
use scandium_protocol::pdpb::{self, pd_client::PdClient};
use scandium_protocol::tikvpb::batch_commands_request::{self, request::Cmd as Req};
use scandium_protocol::tikvpb::batch_commands_response::response::Cmd as Resp;
use scandium_protocol::tikvpb::tikv_client::TikvClient;
use scandium_protocol::tikvpb::BatchCommandsRequest;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// Most commands (or timestamps) packed into one message.
const MAX_BATCH: usize = 256;
/// How long one command may take before the benchmark counts it as failed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// Lock TTL of the benchmark's transactions, as `tikv-client` uses.
const LOCK_TTL_MS: u64 = 3000;
/// Reads that meet a lock retry this often, 1 ms apart, before giving up.
const LOCKED_RETRIES: usize = 200;

type Reply<T> = oneshot::Sender<Result<T, String>>;

/// How a read-modify-write transaction commits.
#[derive(Clone, Copy, Debug)]
pub struct TxnMode {
    pub pessimistic: bool,
    pub async_commit: bool,
    pub one_pc: bool,
}

#[derive(Clone)]
struct Region {
    start: Vec<u8>,
    end: Vec<u8>,
    context: Context,
}

/// Commands to one node's `BatchCommands` stream.
type Commands = mpsc::Sender<(Req, Reply<Resp>)>;

/// A connection to a cluster: a `Tso` stream and a Region cache from the node it was
/// given, and a `BatchCommands` stream to each node that leads a Region it used.
pub struct BatchClient {
    /// By store id; a stream that failed is opened again on the next command.
    commands: tokio::sync::Mutex<HashMap<u64, Commands>>,
    timestamps: mpsc::Sender<Reply<u64>>,
    pd: PdClient<Channel>,
    header: pdpb::RequestHeader,
    /// Region cache by start key, in the encoding Region boundaries use for our keys.
    regions: Mutex<BTreeMap<Vec<u8>, Region>>,
    /// Transactional keys are looked up memcomparable-encoded (API V1 txn); raw keys as is.
    encode_keys: bool,
}

impl BatchClient {
    /// Connects to the node at `addr` (host:port).
    pub async fn connect(addr: &str, encode_keys: bool) -> Result<Arc<BatchClient>, String> {
        let channel = crate::tls::channel(addr).await?;
        let mut pd = PdClient::new(channel.clone());
        let members = pd
            .get_members(pdpb::GetMembersRequest::default())
            .await
            .map_err(|e| format!("GetMembers: {e}"))?
            .into_inner();
        let cluster_id = members.header.map(|h| h.cluster_id).unwrap_or_default();
        let header = pdpb::RequestHeader { cluster_id, ..Default::default() };

        let (timestamps, waiting) = mpsc::channel(4 * MAX_BATCH);
        start_oracle(pd.clone(), header.clone(), waiting).await?;
        Ok(Arc::new(BatchClient {
            commands: Default::default(),
            timestamps,
            pd,
            header,
            regions: Mutex::new(BTreeMap::new()),
            encode_keys,
        }))
    }

    /// A fresh timestamp from the oracle.
    pub async fn timestamp(&self) -> Result<u64, String> {
        let (reply, answer) = oneshot::channel();
        self.timestamps.send(reply).await.map_err(|_| "the Tso stream is closed".to_string())?;
        answer.await.map_err(|_| "the Tso stream is closed".to_string())?
    }

    /// The stream to `store`'s node, opened if there is none or it was closed.
    async fn commands(&self, store: u64) -> Result<Commands, String> {
        let mut streams = self.commands.lock().await;
        if let Some(commands) = streams.get(&store).filter(|c| !c.is_closed()) {
            return Ok(commands.clone());
        }
        let request = pdpb::GetStoreRequest { header: Some(self.header.clone()), store_id: store };
        let answer = self.pd.clone().get_store(request).await;
        let answer = answer.map_err(|e| format!("GetStore {store}: {e}"))?.into_inner();
        let address = answer.store.map(|s| s.address).unwrap_or_default();
        if address.is_empty() {
            return Err(format!("GetStore {store}: no address"));
        }
        let tikv = TikvClient::new(crate::tls::channel(&address).await?)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        let (commands, queue) = mpsc::channel(4 * MAX_BATCH);
        start_command_stream(tikv, queue).await?;
        streams.insert(store, commands.clone());
        Ok(commands)
    }

    /// Sends `cmd` to `store`'s node and waits for its answer.
    async fn call(&self, store: u64, cmd: Req) -> Result<Resp, String> {
        let (reply, answer) = oneshot::channel();
        self.commands(store)
            .await?
            .send((cmd, reply))
            .await
            .map_err(|_| "the BatchCommands stream is closed".to_string())?;
        match tokio::time::timeout(COMMAND_TIMEOUT, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err("the BatchCommands stream is closed".into()),
            Err(_) => Err(format!("no answer within {COMMAND_TIMEOUT:?}")),
        }
    }

    fn lookup_key(&self, key: &[u8]) -> Vec<u8> {
        if self.encode_keys {
            scandium_types::codec::encode_bytes(key)
        } else {
            key.to_vec()
        }
    }

    async fn region(&self, key: &[u8]) -> Result<Region, String> {
        let lookup = self.lookup_key(key);
        {
            let regions = self.regions.lock().expect("region cache lock");
            if let Some((_, region)) = regions.range(..=lookup.clone()).next_back() {
                if region.end.is_empty() || lookup < region.end {
                    return Ok(region.clone());
                }
            }
        }
        let response = self
            .pd
            .clone()
            .get_region(pdpb::GetRegionRequest {
                header: Some(self.header.clone()),
                region_key: lookup,
                need_buckets: false,
            })
            .await
            .map_err(|e| format!("GetRegion: {e}"))?
            .into_inner();
        let (Some(meta), Some(leader)) = (response.region, response.leader) else {
            return Err("GetRegion answered without a Region or leader".into());
        };
        let region = Region {
            start: meta.start_key.clone(),
            end: meta.end_key.clone(),
            context: Context {
                region_id: meta.id,
                region_epoch: meta.region_epoch,
                peer: Some(leader),
                ..Default::default()
            },
        };
        self.regions
            .lock()
            .expect("region cache lock")
            .insert(region.start.clone(), region.clone());
        Ok(region)
    }

    fn forget(&self, region: &Region) {
        self.regions.lock().expect("region cache lock").remove(&region.start);
    }

    /// Sends `request` to the Region of `key`, refreshing the Region and retrying on a
    /// Region error.
    async fn call_region<R: BatchCommand>(
        &self,
        key: &[u8],
        request: R,
    ) -> Result<R::Answer, String> {
        let mut last = String::new();
        // A split (by size or load) or a leader move answers with a Region error until
        // the new layout is learnt and led: a few tries, a little apart.
        for attempt in 0..5u64 {
            if attempt > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(5 * attempt)).await;
            }
            let region = self.region(key).await?;
            let store = region.context.peer.as_ref().map_or(0, |p| p.store_id);
            let answer = self.call(store, request.clone().into_cmd(region.context.clone())).await?;
            let answer = R::answer(answer).ok_or("an answer of another kind")?;
            match R::region_error(&answer) {
                Some(error) => {
                    last = error.message.clone();
                    self.forget(&region);
                }
                None => return Ok(answer),
            }
        }
        Err(format!("Region error: {last}"))
    }

    /// Keys grouped by Region; the group holding `keys[0]` first.
    async fn by_region(&self, keys: &[Vec<u8>]) -> Result<Vec<Vec<Vec<u8>>>, String> {
        let mut groups: Vec<(Vec<u8>, Vec<Vec<u8>>)> = Vec::new();
        for key in keys {
            let start = self.region(key).await?.start;
            match groups.iter_mut().find(|(s, _)| *s == start) {
                Some((_, group)) => group.push(key.clone()),
                None => groups.push((start, vec![key.clone()])),
            }
        }
        Ok(groups.into_iter().map(|(_, group)| group).collect())
    }

    /// Raw put of one key.
    pub async fn raw_put(&self, key: Vec<u8>, value: Vec<u8>) -> Result<(), String> {
        let answer = self
            .call_region(
                &key,
                kvrpcpb::RawPutRequest { key: key.clone(), value, ..Default::default() },
            )
            .await?;
        if answer.error.is_empty() {
            Ok(())
        } else {
            Err(answer.error)
        }
    }

    /// Raw get of one key.
    pub async fn raw_get(&self, key: Vec<u8>) -> Result<Option<Vec<u8>>, String> {
        let answer = self
            .call_region(&key, kvrpcpb::RawGetRequest { key: key.clone(), ..Default::default() })
            .await?;
        if !answer.error.is_empty() {
            return Err(answer.error);
        }
        Ok((!answer.not_found).then_some(answer.value))
    }

    /// Snapshot read of `key` at `ts`; a lock makes it wait briefly and retry.
    async fn txn_get(&self, key: &[u8], ts: u64) -> Result<Option<Vec<u8>>, String> {
        for _ in 0..LOCKED_RETRIES {
            let answer = self
                .call_region(
                    key,
                    kvrpcpb::GetRequest { key: key.to_vec(), version: ts, context: None },
                )
                .await?;
            match answer.error {
                Some(error) if error.locked.is_some() => {
                    tokio::time::sleep(Duration::from_millis(1)).await
                }
                Some(error) => return Err(format!("{error:?}")),
                None => return Ok((!answer.not_found).then_some(answer.value)),
            }
        }
        Err(format!("{key:?} stayed locked"))
    }

    /// One read-modify-write transaction over `keys` (the first is the primary): reads
    /// (or, pessimistic, locks) each key, changes its value, and commits as `mode` says.
    /// On failure everything it wrote is rolled back and the error returned.
    pub async fn read_modify_write(
        self: &Arc<Self>,
        keys: &[Vec<u8>],
        value_len: usize,
        mode: TxnMode,
    ) -> Result<(), String> {
        let start_ts = self.timestamp().await?;
        let mut for_update_ts = 0;
        let mut mutations = Vec::with_capacity(keys.len());
        // Reads write nothing; a pessimistic lock or a prewrite may have, even if it failed.
        let mut may_have_written = false;
        let result = async {
            for key in keys {
                let current = if mode.pessimistic {
                    for_update_ts = self.timestamp().await?;
                    may_have_written = true;
                    self.lock_for_update(key, &keys[0], start_ts, for_update_ts).await?
                } else {
                    self.txn_get(key, start_ts).await?
                };
                let mut value = current.unwrap_or_default();
                value.resize(value_len.max(1), 0);
                value[0] = value[0].wrapping_add(1);
                mutations.push(kvrpcpb::Mutation {
                    op: kvrpcpb::Op::Put as i32,
                    key: key.clone(),
                    value,
                    ..Default::default()
                });
            }
            may_have_written = true;
            self.commit(mutations, start_ts, for_update_ts, mode).await
        }
        .await;
        if result.is_err() && may_have_written {
            self.rollback(keys, start_ts).await;
        }
        result
    }

    async fn lock_for_update(
        &self,
        key: &[u8],
        primary: &[u8],
        start_ts: u64,
        for_update_ts: u64,
    ) -> Result<Option<Vec<u8>>, String> {
        let answer = self
            .call_region(
                key,
                kvrpcpb::PessimisticLockRequest {
                    mutations: vec![kvrpcpb::Mutation {
                        op: kvrpcpb::Op::PessimisticLock as i32,
                        key: key.to_vec(),
                        ..Default::default()
                    }],
                    primary_lock: primary.to_vec(),
                    start_version: start_ts,
                    lock_ttl: LOCK_TTL_MS,
                    for_update_ts,
                    return_values: true,
                    ..Default::default()
                },
            )
            .await?;
        if let Some(error) = answer.errors.first() {
            return Err(format!("{error:?}"));
        }
        let found = !answer.not_founds.first().copied().unwrap_or(false);
        Ok(found.then(|| answer.values.into_iter().next().unwrap_or_default()))
    }

    async fn commit(
        self: &Arc<Self>,
        mutations: Vec<kvrpcpb::Mutation>,
        start_ts: u64,
        for_update_ts: u64,
        mode: TxnMode,
    ) -> Result<(), String> {
        let keys: Vec<Vec<u8>> = mutations.iter().map(|m| m.key.clone()).collect();
        let primary = keys[0].clone();
        let groups = self.by_region(&keys).await?;
        let one_pc = mode.one_pc && groups.len() == 1;
        let prewrites = groups.iter().map(|group| {
            let mutations: Vec<_> =
                mutations.iter().filter(|m| group.contains(&m.key)).cloned().collect();
            let actions = if mode.pessimistic {
                vec![
                    kvrpcpb::prewrite_request::PessimisticAction::DoPessimisticCheck as i32;
                    mutations.len()
                ]
            } else {
                Vec::new()
            };
            let secondaries = if mode.async_commit { keys[1..].to_vec() } else { Vec::new() };
            let request = kvrpcpb::PrewriteRequest {
                mutations,
                primary_lock: primary.clone(),
                start_version: start_ts,
                lock_ttl: LOCK_TTL_MS,
                pessimistic_actions: actions,
                txn_size: keys.len() as u64,
                for_update_ts,
                use_async_commit: mode.async_commit,
                secondaries,
                try_one_pc: one_pc,
                ..Default::default()
            };
            let first = group[0].clone();
            async move { self.call_region(&first, request).await }
        });
        let mut min_commit_ts = 0;
        for answer in futures::future::join_all(prewrites).await {
            let answer = answer?;
            if let Some(error) = answer.errors.first() {
                return Err(format!("{error:?}"));
            }
            if one_pc && answer.one_pc_commit_ts != 0 {
                return Ok(());
            }
            min_commit_ts = min_commit_ts.max(answer.min_commit_ts);
        }
        if mode.async_commit && min_commit_ts != 0 {
            // Committed once every lock is written; the commits only clean up.
            let client = self.clone();
            tokio::spawn(async move { client.commit_keys(groups, start_ts, min_commit_ts).await });
            return Ok(());
        }
        let commit_ts = self.timestamp().await?;
        self.commit_keys(vec![vec![primary.clone()]], start_ts, commit_ts).await?;
        let secondaries: Vec<Vec<Vec<u8>>> = groups
            .into_iter()
            .map(|group| group.into_iter().filter(|k| *k != primary).collect::<Vec<_>>())
            .filter(|group| !group.is_empty())
            .collect();
        if !secondaries.is_empty() {
            let client = self.clone();
            tokio::spawn(async move { client.commit_keys(secondaries, start_ts, commit_ts).await });
        }
        Ok(())
    }

    async fn commit_keys(
        &self,
        groups: Vec<Vec<Vec<u8>>>,
        start_ts: u64,
        commit_ts: u64,
    ) -> Result<(), String> {
        for group in groups {
            let answer = self
                .call_region(
                    &group[0],
                    kvrpcpb::CommitRequest {
                        start_version: start_ts,
                        keys: group.clone(),
                        commit_version: commit_ts,
                        ..Default::default()
                    },
                )
                .await?;
            if let Some(error) = answer.error {
                return Err(format!("{error:?}"));
            }
        }
        Ok(())
    }

    /// Best effort: removes the transaction's locks and keeps late prewrites out.
    async fn rollback(&self, keys: &[Vec<u8>], start_ts: u64) {
        let Ok(groups) = self.by_region(keys).await else { return };
        for group in groups {
            let _ = self
                .call_region(
                    &group[0],
                    kvrpcpb::BatchRollbackRequest {
                        start_version: start_ts,
                        keys: group.clone(),
                        ..Default::default()
                    },
                )
                .await;
        }
    }
}

/// A request this client sends, tied to its `BatchCommands` variant and answer.
trait BatchCommand: Clone {
    type Answer;
    /// The command, addressed to the Region of `context`.
    fn into_cmd(self, context: Context) -> Req;
    /// This request's answer, if `resp` is one.
    fn answer(resp: Resp) -> Option<Self::Answer>;
    /// The answer's Region error.
    fn region_error(answer: &Self::Answer) -> Option<&scandium_protocol::errorpb::Error>;
}

macro_rules! batch_commands {
    ($($variant:ident: $request:ty => $answer:ty),* $(,)?) => {
        $(impl BatchCommand for $request {
            type Answer = $answer;
            fn into_cmd(mut self, context: Context) -> Req {
                self.context = Some(context);
                Req::$variant(Box::new(self))
            }
            fn answer(resp: Resp) -> Option<$answer> {
                match resp {
                    Resp::$variant(answer) => Some(answer),
                    _ => None,
                }
            }
            fn region_error(answer: &$answer) -> Option<&scandium_protocol::errorpb::Error> {
                answer.region_error.as_ref()
            }
        })*
    };
}

batch_commands!(
    RawPut: kvrpcpb::RawPutRequest => kvrpcpb::RawPutResponse,
    RawGet: kvrpcpb::RawGetRequest => kvrpcpb::RawGetResponse,
    Get: kvrpcpb::GetRequest => kvrpcpb::GetResponse,
    PessimisticLock: kvrpcpb::PessimisticLockRequest => kvrpcpb::PessimisticLockResponse,
    Prewrite: kvrpcpb::PrewriteRequest => kvrpcpb::PrewriteResponse,
    Commit: kvrpcpb::CommitRequest => kvrpcpb::CommitResponse,
    BatchRollback: kvrpcpb::BatchRollbackRequest => kvrpcpb::BatchRollbackResponse,
);

/// Waiting callers by request id; `None` once the stream has ended.
type Waiting = Arc<Mutex<Option<HashMap<u64, Reply<Resp>>>>>;

/// Opens the `BatchCommands` stream and starts its writer and reader tasks.
async fn start_command_stream(
    mut tikv: TikvClient<Channel>,
    mut queue: mpsc::Receiver<(Req, Reply<Resp>)>,
) -> Result<(), String> {
    let (outbound, messages) = mpsc::channel::<BatchCommandsRequest>(64);
    let mut inbound = tikv
        .batch_commands(ReceiverStream::new(messages))
        .await
        .map_err(|e| format!("BatchCommands: {e}"))?
        .into_inner();
    let waiting: Waiting = Arc::new(Mutex::new(Some(HashMap::new())));
    let reader_waiting = waiting.clone();
    tokio::spawn(async move {
        let error = loop {
            match inbound.next().await {
                Some(Ok(message)) => {
                    let mut waiting = reader_waiting.lock().expect("waiting lock");
                    let Some(waiting) = waiting.as_mut() else { return };
                    for (id, response) in message.request_ids.into_iter().zip(message.responses) {
                        if let Some(reply) = waiting.remove(&id) {
                            let _ =
                                reply.send(response.cmd.ok_or_else(|| "an empty answer".into()));
                        }
                    }
                }
                Some(Err(status)) => break format!("BatchCommands stream failed: {status}"),
                None => break "BatchCommands stream ended".to_string(),
            }
        };
        let callers = reader_waiting.lock().expect("waiting lock").take();
        for (_, reply) in callers.into_iter().flatten() {
            let _ = reply.send(Err(error.clone()));
        }
    });
    tokio::spawn(async move {
        let mut next_id = 0u64;
        while let Some(first) = queue.recv().await {
            let mut message = BatchCommandsRequest::default();
            let mut next = Some(first);
            while let Some((cmd, reply)) = next.take() {
                {
                    let mut waiting = waiting.lock().expect("waiting lock");
                    match waiting.as_mut() {
                        Some(waiting) => {
                            waiting.insert(next_id, reply);
                        }
                        None => {
                            let _ = reply.send(Err("the BatchCommands stream is closed".into()));
                            continue;
                        }
                    }
                }
                message.requests.push(batch_commands_request::Request { cmd: Some(cmd) });
                message.request_ids.push(next_id);
                next_id += 1;
                if message.requests.len() < MAX_BATCH {
                    next = queue.try_recv().ok();
                }
            }
            if !message.requests.is_empty() && outbound.send(message).await.is_err() {
                return;
            }
        }
    });
    Ok(())
}

/// Opens the `Tso` stream and starts the task that batches timestamp requests on it:
/// while one request is in flight, callers queue up and share the next one.
async fn start_oracle(
    mut pd: PdClient<Channel>,
    header: pdpb::RequestHeader,
    mut waiting: mpsc::Receiver<Reply<u64>>,
) -> Result<(), String> {
    let (requests, outbound) = mpsc::channel(4);
    let mut responses =
        pd.tso(ReceiverStream::new(outbound)).await.map_err(|e| format!("Tso: {e}"))?.into_inner();
    tokio::spawn(async move {
        while let Some(first) = waiting.recv().await {
            let mut callers = vec![first];
            while callers.len() < MAX_BATCH {
                match waiting.try_recv() {
                    Ok(caller) => callers.push(caller),
                    Err(_) => break,
                }
            }
            let count = callers.len() as u32;
            let request =
                pdpb::TsoRequest { header: Some(header.clone()), count, ..Default::default() };
            let answer = match requests.send(request).await {
                Ok(()) => responses.next().await,
                Err(_) => None,
            };
            let Some(Ok(pdpb::TsoResponse { timestamp: Some(ts), .. })) = answer else {
                for caller in callers {
                    let _ = caller.send(Err("the Tso stream failed".into()));
                }
                return;
            };
            // The answer is the largest of `count` consecutive timestamps.
            let last = (ts.physical as u64) << 18 | ts.logical as u64;
            for (i, caller) in callers.into_iter().enumerate() {
                let _ = caller.send(Ok(last + 1 + i as u64 - count as u64));
            }
        }
    });
    Ok(())
}
