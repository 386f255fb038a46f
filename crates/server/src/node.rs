//! Node assembly: open storage, bootstrap a new cluster on first start, start the Raft
//! thread, wait until every group can serve, then serve gRPC and HTTP on one port.

use crate::clock::now_ms;
use crate::config::{Config, ConfigError};
use crate::context::NodeContext;
use crate::grpc::{keyspace::KeyspaceService, pd::PdService, tikv::TikvService};
use crate::placement::{MetaApplier, Placement};
use crate::raft_driver::RaftDriver;
use prost::Message as _;
use scandium_placement::Kind;
use scandium_placement::{KeyspaceMeta, PlacementState};
use scandium_protocol::keyspacepb::keyspace_server::KeyspaceServer;
use scandium_protocol::pdpb::pd_server::PdServer;
use scandium_protocol::tikvpb::tikv_server::TikvServer;
use scandium_raftstore::bootstrap::write_initial_group;
use scandium_raftstore::{RaftConfig, Registry, Store, META_GROUP_ID};
use scandium_storage::{Cf, EngineRef, FjallEngine, FjallOptions, WriteBatch};
use scandium_txn::{ConcurrencyManager, Latches};
use scandium_types::keyspace::{keyspace_edges, DEFAULT_KEYSPACE_ID, DEFAULT_KEYSPACE_NAME};
use scandium_types::{Peer, Region, Store as StoreMeta, StoreState};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long a starting node waits for its Raft groups to elect and catch up.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const IDENT_KEY: &[u8] = b"ident";
/// Present once the Latest CF indexes every key of the Write CF (see
/// [`ensure_latest_index`]).
const LATEST_INDEX_KEY: &[u8] = b"latest_index";
/// How long a stopping node lets in-flight requests finish.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

/// Who this node is, written once at bootstrap.
#[derive(Clone, PartialEq, prost::Message)]
struct StoreIdent {
    #[prost(uint64, tag = "1")]
    cluster_id: u64,
    #[prost(uint64, tag = "2")]
    store_id: u64,
}

/// Why a node could not start.
#[derive(Debug, Error)]
pub enum NodeError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The listening address cannot be used.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The data directory cannot be used.
    #[error("cannot use data directory {path}: {reason}")]
    DataDir {
        /// The directory.
        path: String,
        /// Why.
        reason: String,
    },
    /// The Raft groups did not become ready.
    #[error("node did not become ready: {0}")]
    NotReady(String),
}

/// A running node.
pub struct Node {
    context: Arc<NodeContext>,
    local_addr: SocketAddr,
    driver: Option<RaftDriver>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
    /// The TTL sweeper and the GC worker.
    background: Vec<JoinHandle<()>>,
}

impl Node {
    /// Starts a node. Returns once it serves requests.
    pub async fn start(config: Config) -> Result<Node, NodeError> {
        config.validate()?;
        let started = Instant::now();
        let listener = std::net::TcpListener::bind(&config.addr)
            .map_err(|source| NodeError::Listen { addr: config.addr.clone(), source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| NodeError::Listen { addr: config.addr.clone(), source })?;
        let advertise_addr = advertised(&config.addr, local_addr);
        let engine = open_engine(&config)?;
        let ident = load_or_bootstrap(&engine, &config)?;
        let state = PlacementState::load(&engine)
            .map_err(|e| data_dir_error(&config, e))?
            .ok_or_else(|| data_dir_error(&config, "placement state is missing"))?;
        if state.cluster_id() != ident.cluster_id {
            return Err(data_dir_error(
                &config,
                "store and placement belong to different clusters",
            ));
        }
        let state = Arc::new(RwLock::new(state));
        let registry = Registry::new();
        let raft_config =
            RaftConfig { max_entry_bytes: config.max_raft_entry_bytes, ..RaftConfig::default() };
        let store = Store::open(
            ident.store_id,
            engine.clone(),
            raft_config,
            Box::new(MetaApplier::new(state.clone())),
            registry.clone(),
        )
        .map_err(|e| data_dir_error(&config, e))?;
        let (driver, raft) = RaftDriver::start(store, config.raft_tick())
            .map_err(|e| NodeError::NotReady(format!("cannot start the raft thread: {e}")))?;
        wait_until_ready(&registry).await?;
        ensure_latest_index(&engine, &config)?;

        let placement = Arc::new(Placement::new(state, raft.clone(), registry.clone()));
        // Reads before a restart used timestamps below the oracle's current value; starting
        // max_ts there keeps async-commit transactions above them.
        let now = placement.timestamp(1).await.map_err(|e| NodeError::NotReady(e.to_string()))?;
        let context = Arc::new(NodeContext {
            latches: Latches::new(config.latch_slots),
            concurrency: Arc::new(ConcurrencyManager::new(now)),
            lock_waits: crate::lock_wait::LockWaits::default(),
            lock_index: Arc::new(
                scandium_txn::LockIndex::load(&engine).map_err(|e| data_dir_error(&config, e))?,
            ),
            newest: Arc::new(scandium_txn::NewestCache::new(config.newest_cache_bytes)),
            config,
            store_id: ident.store_id,
            advertise_addr,
            engine,
            registry,
            raft,
            placement,
        });
        register(&context).await?;
        let (shutdown, server) = serve(context.clone(), listener)?;
        let interval = Duration::from_secs(context.config.ttl_sweep_interval_secs);
        let sweeper = tokio::spawn(crate::ttl::run(context.clone(), interval));
        let gc_interval = Duration::from_secs(context.config.gc_interval_secs);
        let gc_worker = tokio::spawn(crate::gc_worker::run(context.clone(), gc_interval));
        tracing::info!(
            addr = %context.advertise_addr,
            store_id = context.store_id,
            cluster_id = ident.cluster_id,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "scandium node serving"
        );
        Ok(Node {
            context,
            local_addr,
            driver: Some(driver),
            shutdown: Some(shutdown),
            server: Some(server),
            background: vec![sweeper, gc_worker],
        })
    }

    /// The address the node listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address the node advertises to clients.
    pub fn advertise_addr(&self) -> &str {
        &self.context.advertise_addr
    }

    /// The shared request context (for tests and tools in the same process).
    pub fn context(&self) -> &Arc<NodeContext> {
        &self.context
    }

    /// Stops serving, stops the Raft thread and closes storage.
    pub async fn stop(mut self) {
        self.shutdown_now().await;
    }

    async fn shutdown_now(&mut self) {
        for task in &self.background {
            task.abort();
        }
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(mut server) = self.server.take() {
            // Long-lived streams (a client's TSO stream) never finish on their own; give
            // in-flight requests a moment, then close every connection.
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await.is_err() {
                server.abort();
            }
        }
        if let Some(driver) = self.driver.take() {
            driver.stop(&self.context.raft);
            let _ = tokio::task::spawn_blocking(move || driver.join()).await;
        }
    }
}

fn advertised(configured: &str, local: SocketAddr) -> String {
    if local.ip().is_unspecified() {
        // Clients cannot connect to 0.0.0.0; advertise loopback with the real port.
        return format!("127.0.0.1:{}", local.port());
    }
    if configured.ends_with(":0") {
        return local.to_string();
    }
    configured.to_string()
}

fn data_dir_error(config: &Config, reason: impl std::fmt::Display) -> NodeError {
    NodeError::DataDir { path: config.data_dir.display().to_string(), reason: reason.to_string() }
}

fn open_engine(config: &Config) -> Result<EngineRef, NodeError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| data_dir_error(config, e))?;
    let options = FjallOptions {
        cache_size_bytes: config.cache_size_bytes,
        memtable_size_bytes: config.memtable_size_bytes,
    };
    let engine = FjallEngine::open(&config.data_dir.join("db"), &options)
        .map_err(|e| data_dir_error(config, e))?;
    Ok(Arc::new(engine))
}

/// Loads the node's identity, or creates a new single-node cluster: the placement state,
/// the placement group and one Region per keyspace edge, written in one synced batch.
fn load_or_bootstrap(engine: &EngineRef, config: &Config) -> Result<StoreIdent, NodeError> {
    if let Some(bytes) =
        engine.get(Cf::RaftState, IDENT_KEY).map_err(|e| data_dir_error(config, e))?
    {
        return StoreIdent::decode(bytes.as_slice()).map_err(|e| data_dir_error(config, e));
    }
    let cluster_id = loop {
        let id: u64 = rand::random();
        if id != 0 {
            break id;
        }
    };
    let ident = StoreIdent { cluster_id, store_id: 1 };
    let mut next_id = 2;
    let mut alloc = || {
        next_id += 1;
        next_id - 1
    };
    let meta =
        Region { id: META_GROUP_ID, peers: vec![Peer::new(alloc(), 1)], ..Default::default() };
    let mut bounds = vec![Vec::new()];
    bounds.extend(keyspace_edges(DEFAULT_KEYSPACE_ID));
    bounds.push(Vec::new());
    let regions: Vec<Region> = bounds
        .windows(2)
        .map(|w| Region {
            id: alloc(),
            start_key: w[0].clone(),
            end_key: w[1].clone(),
            conf_ver: 1,
            version: 1,
            peers: vec![Peer::new(alloc(), 1)],
        })
        .collect();
    let store = StoreMeta {
        id: 1,
        address: config.addr.clone(),
        state: StoreState::Up as i32,
        ..Default::default()
    };
    let keyspace = KeyspaceMeta {
        id: DEFAULT_KEYSPACE_ID,
        name: DEFAULT_KEYSPACE_NAME.into(),
        state: 0,
        created_at: (now_ms() / 1000) as i64,
    };
    let (_, mut batch) =
        PlacementState::bootstrap(cluster_id, next_id, store, regions.clone(), vec![keyspace]);
    write_initial_group(&mut batch, &meta);
    for region in &regions {
        write_initial_group(&mut batch, region);
    }
    let mut ident_batch = WriteBatch::new();
    ident_batch.put(Cf::RaftState, IDENT_KEY.to_vec(), ident.encode_to_vec());
    batch.extend(ident_batch);
    engine.write(batch).and_then(|()| engine.sync()).map_err(|e| data_dir_error(config, e))?;
    tracing::info!(cluster_id, regions = regions.len(), "bootstrapped a new cluster");
    Ok(ident)
}

/// Builds the Latest CF from the Write CF if this data directory predates it. Runs once
/// every committed entry is applied and before anything is served, so nothing else writes
/// the transactional column families meanwhile; the marker is written only after the
/// whole index, so a crash midway rebuilds again.
fn ensure_latest_index(engine: &EngineRef, config: &Config) -> Result<(), NodeError> {
    if engine.get(Cf::RaftState, LATEST_INDEX_KEY).map_err(|e| data_dir_error(config, e))?.is_some()
    {
        return Ok(());
    }
    let keys = scandium_txn::mvcc::latest::rebuild(engine.as_ref())
        .map_err(|e| data_dir_error(config, e))?;
    let mut batch = WriteBatch::new();
    batch.put(Cf::RaftState, LATEST_INDEX_KEY.to_vec(), vec![1]);
    engine.write(batch).and_then(|()| engine.sync()).map_err(|e| data_dir_error(config, e))?;
    if keys > 0 {
        tracing::info!(keys, "built the index of newest versions");
    }
    Ok(())
}

async fn wait_until_ready(registry: &Registry) -> Result<(), NodeError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let regions = registry.all();
        if registry.meta().ready_for_reads
            && !regions.is_empty()
            && regions.iter().all(|s| s.ready_for_reads)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(NodeError::NotReady("raft groups did not elect a leader in time".into()));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Records this store's address and version, and makes placement's view of the local
/// Regions at least as new as the Regions themselves (a crash may have come between a
/// split and its report).
async fn register(node: &NodeContext) -> Result<(), NodeError> {
    let store = StoreMeta {
        id: node.store_id,
        address: node.advertise_addr.clone(),
        state: StoreState::Up as i32,
        version: env!("CARGO_PKG_VERSION").into(),
        start_timestamp: (now_ms() / 1000) as i64,
    };
    let not_ready = |e: crate::error::RequestError| NodeError::NotReady(e.to_string());
    node.placement.propose(Kind::PutStore(store)).await.map_err(not_ready)?;
    let unknown: Vec<_> = {
        let placement = node.placement.read();
        node.registry
            .all()
            .into_iter()
            .map(|status| status.region)
            .filter(|region| placement.region(region.id).map(|r| r.epoch()) != Some(region.epoch()))
            .collect()
    };
    if !unknown.is_empty() {
        node.placement.put_regions(unknown).await.map_err(not_ready)?;
    }
    Ok(())
}

type ServeResult = Result<(oneshot::Sender<()>, JoinHandle<()>), NodeError>;

fn serve(node: Arc<NodeContext>, listener: std::net::TcpListener) -> ServeResult {
    let limit = node.config.max_grpc_message_bytes;
    let tikv = TikvServer::new(TikvService::new(node.clone()))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let pd = PdServer::new(PdService::new(node.clone()))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let keyspace = KeyspaceServer::new(KeyspaceService::new(PdService::new(node.clone())));
    let grpc = tonic::transport::server::Routes::new(tikv)
        .add_service(pd)
        .add_service(keyspace)
        .into_router();
    let app = crate::http::routes(grpc, node.clone());

    let addr = listener.local_addr().ok();
    let listen_error = |source| NodeError::Listen { addr: format!("{addr:?}"), source };
    listener.set_nonblocking(true).map_err(listen_error)?;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(listen_error)?;
    let mut incoming = hyper::server::conn::AddrIncoming::from_listener(listener).map_err(|e| {
        NodeError::Listen { addr: format!("{addr:?}"), source: std::io::Error::other(e) }
    })?;
    incoming.set_nodelay(true);
    let (shutdown, shutdown_signal) = oneshot::channel::<()>();
    let server = hyper::Server::builder(incoming)
        .http2_max_concurrent_streams(1024)
        .serve(app.into_make_service())
        .with_graceful_shutdown(async {
            let _ = shutdown_signal.await;
        });
    let handle = tokio::spawn(async move {
        if let Err(error) = server.await {
            tracing::error!(%error, "server failed");
        }
    });
    Ok((shutdown, handle))
}
