//! Node assembly: open storage, bootstrap a new cluster on first start, start the Raft
//! thread, wait until every group can serve, then serve gRPC and HTTP on one port.

use crate::clock::now_ms;
use crate::commands::{Storage, StorageParts, Wakers};
use crate::config::{Config, ConfigError};
use crate::error::RequestError;
use crate::flow::ReadFlow;
use crate::grpc::cluster::{ClusterParts, ClusterService};
use crate::grpc::pd::{PdParts, PdService};
use crate::grpc::{keyspace::KeyspaceService, tikv::TikvService};
use crate::heartbeat::{Control, ControlParts};
use crate::http::HttpState;
use crate::identity::Identity;
use crate::load_split::{LoadSamples, LoadSplitConfig};
use crate::network::{Clients, Directory, Links};
use crate::placement::{MetaApplier, Placement, PlacementNetwork};
use crate::raft_driver::{Outputs, RaftDriver, RaftHandle};
use crate::replica::{ReplicaObserver, Replicas};
use crate::split::Splitter;
use crate::split_check::SplitChecker;
use crate::tasks::Tasks;
use crate::transport::{Transport, TransportConfig, TransportStats};
use prost::Message as _;
use scandium_placement::scheduler::SchedulerConfig;
use scandium_placement::Kind;
use scandium_placement::{ControlConfig, ControlPlane};
use scandium_placement::{KeyspaceMeta, PlacementState};
use scandium_protocol::keyspacepb::keyspace_server::KeyspaceServer;
use scandium_protocol::pdpb::pd_server::PdServer;
use scandium_protocol::scandium::cluster_server::ClusterServer;
use scandium_protocol::scandium::{InfoRequest, JoinRequest, RegionDigest};
use scandium_protocol::tikvpb::tikv_server::TikvServer;
use scandium_raftstore::bootstrap::write_initial_group;
use scandium_raftstore::{RaftConfig, Registry, Store, META_GROUP_ID};
use scandium_storage::{Cf, EngineRef, FjallEngine, FjallOptions, WriteBatch};
use scandium_txn::{Breakages, NodeSettings, TxnNode};
use scandium_types::keyspace::{keyspace_edges, DEFAULT_KEYSPACE_ID, DEFAULT_KEYSPACE_NAME};
use scandium_types::{Peer, Region, Store as StoreMeta, StoreId, StoreLabel, StoreState};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::{oneshot, Notify};
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
    /// The TLS material cannot be used.
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// A running node: its parts, each shared with the services and tasks that use it.
pub struct Node {
    identity: Identity,
    engine: EngineRef,
    registry: Registry,
    raft: RaftHandle,
    placement: Arc<Placement>,
    storage: Arc<Storage>,
    splitter: Arc<Splitter>,
    control: Arc<Control>,
    links: Arc<Links>,
    transport: Transport,
    refused: Arc<AtomicU64>,
    /// Every task the node runs, ended when it stops.
    tasks: Tasks,
    local_addr: SocketAddr,
    driver: Option<RaftDriver>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
    /// The TTL sweeper and the GC worker.
    background: Vec<JoinHandle<()>>,
    start_timings: StartTimings,
}

/// Where a start's time went, milliseconds from the call: a restart after a crash spends
/// it replaying the storage journal and catching up with the cluster, and operators
/// (and `scripts/failover.sh`) want to know which.
#[derive(Clone, Copy, Debug, Default)]
pub struct StartTimings {
    /// The storage engine opened (its journal replayed).
    pub storage_ms: u64,
    /// In touch with placement (its state loaded and a leader known), from the storage
    /// being open.
    pub ready_ms: u64,
    /// Holding a timestamp from the oracle, from the storage being open.
    pub timestamp_ms: u64,
    /// The store's address and labels recorded, from the storage being open.
    pub registered_ms: u64,
}

impl Node {
    /// Starts a node: bootstraps a new cluster, joins one (`config.join`), or resumes the
    /// one its data directory belongs to. Returns once it serves requests.
    pub async fn start(config: Config) -> Result<Node, NodeError> {
        config.validate()?;
        let opening = Instant::now();
        let engine = open_engine(&config)?;
        let storage_ms = opening.elapsed().as_millis() as u64;
        let snapshots = Some(config.data_dir.join("snapshots"));
        let mut node = Node::start_with(config, engine, snapshots).await?;
        node.start_timings.storage_ms = storage_ms;
        Ok(node)
    }

    /// [`Node::start`] on `engine` instead of the fjall engine in `config.data_dir`: for
    /// an in-process test node on an in-memory engine (`scandium::testing`), which starts
    /// without a single fsync.
    pub async fn start_on(config: Config, engine: EngineRef) -> Result<Node, NodeError> {
        Node::start_with(config, engine, None).await
    }

    /// Starts a node on `engine`, staging received snapshots in files in `snapshot_dir`
    /// if given, else in the engine.
    async fn start_with(
        config: Config,
        engine: EngineRef,
        snapshot_dir: Option<std::path::PathBuf>,
    ) -> Result<Node, NodeError> {
        config.validate()?;
        crate::redact::set(config.security.redact_info_log);
        let tls = crate::tls::Reloadable::load(&config.security)?;
        let started = Instant::now();
        let listener = listen(&config.addr)
            .map_err(|source| NodeError::Listen { addr: config.addr.clone(), source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| NodeError::Listen { addr: config.addr.clone(), source })?;
        let advertise_addr = advertised(&config.addr, local_addr);
        if tls.is_none() && !local_addr.ip().is_loopback() {
            tracing::warn!(
                addr = %local_addr,
                "serving plaintext on a non-loopback address: anyone who reaches it can read \
                 and change every key and join the cluster; set ca-path, cert-path and \
                 key-path (--ca, --cert, --key) for TLS"
            );
        }
        let links = Arc::new(Links::default());
        let clients = Arc::new(Clients::new(links.clone(), tls.clone()));
        let ident = match load_ident(&engine, &config)? {
            Some(ident) => {
                if !config.join.is_empty() {
                    check_same_cluster(&config, &clients, ident.cluster_id).await?;
                }
                ident
            }
            None if config.join.is_empty() => bootstrap(&engine, &config, &advertise_addr)?,
            None => join(&engine, &config, &clients, &advertise_addr).await?,
        };
        let state = match PlacementState::load(&engine).map_err(|e| data_dir_error(&config, e))? {
            Some(state) if state.cluster_id() != ident.cluster_id => {
                return Err(data_dir_error(
                    &config,
                    "store and placement belong to different clusters",
                ))
            }
            Some(state) => state,
            // Joined, and the placement group's snapshot has not arrived yet.
            None => PlacementState::empty(ident.cluster_id),
        };
        let authz = Arc::new(crate::authz::Authz::new(config.security.admin_cn.clone()));
        authz.republish(&state);
        let state = Arc::new(RwLock::new(state));
        let registry = Registry::new();
        // Before the Raft thread applies anything: the index then follows every apply.
        let lock_index = Arc::new(
            scandium_txn::LockIndex::load(&engine).map_err(|e| data_dir_error(&config, e))?,
        );
        let newest = Arc::new(scandium_txn::NewestCache::new(config.newest_cache_bytes));
        let raft_config = RaftConfig {
            tick_ms: config.raft_tick_ms,
            election_ticks: config.election_ticks,
            max_election_ticks: config.max_election_ticks,
            max_entry_bytes: config.max_raft_entry_bytes,
            max_log_entries: config.raft_log_max_entries,
            log_gc_threshold: (config.raft_log_max_entries / 4).clamp(4, 256),
            snapshot_dir,
            // Stores beat each other (see `scandium_raftstore::liveness`); a restart is a
            // new incarnation. Never 0, which would turn beats off.
            incarnation: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_millis() as u64)
                .max(1),
            hibernate_after_ticks: if config.hibernate_regions {
                2 * config.election_ticks
            } else {
                0
            },
            ..RaftConfig::default()
        };
        let mut store = Store::open(
            ident.store_id,
            engine.clone(),
            raft_config,
            Box::new(MetaApplier::new(state.clone(), authz.clone())),
            registry.clone(),
        )
        .map_err(|e| data_dir_error(&config, e))?;
        let wakers = Arc::new(Wakers::default());
        let settings = NodeSettings {
            latch_slots: config.latch_slots,
            max_response_bytes: config.max_response_bytes,
            max_scan_limit: config.max_scan_limit,
            breakages: Breakages::default(),
        };
        let txn =
            Arc::new(TxnNode::new(engine.clone(), lock_index, newest, settings, wakers.clone()));
        store.set_observer(Box::new(ReplicaObserver::new(engine.clone(), txn.clone())));
        let directory = Arc::new(Directory::new(state.clone()));
        let tasks = crate::tasks::Tasks::new();
        let identity = Identity {
            cluster_id: ident.cluster_id,
            store_id: ident.store_id,
            address: advertise_addr.clone(),
            scheme: if tls.is_some() { "https" } else { "http" },
        };
        let stager = store.snapshot_stager();
        let transport = Transport::new(
            TransportConfig {
                cluster_id: ident.cluster_id,
                store_id: ident.store_id,
                address: advertise_addr.clone(),
                max_concurrent_snapshots: config.snapshot_max_concurrent as usize,
                snapshot_bytes_per_sec: config.snapshot_max_bytes_per_sec,
            },
            directory.clone(),
            clients.clone(),
            links.clone(),
            store.snapshot_sources(),
            tasks.clone(),
        );
        let (events, event_receiver) = tokio::sync::mpsc::unbounded_channel();
        let outputs = Outputs { outbox: Box::new(transport.clone()), events };
        let (driver, raft) = RaftDriver::start(store, config.raft_tick(), outputs)
            .map_err(|e| NodeError::NotReady(format!("cannot start the raft thread: {e}")))?;
        transport.set_raft(raft.clone());
        let network = PlacementNetwork {
            store_id: ident.store_id,
            address: advertise_addr.clone(),
            directory: directory.clone(),
            clients: clients.clone(),
            seeds: config.join.clone(),
            tasks: tasks.clone(),
            clock_offset_ms: config.wall_clock_offset_ms,
        };
        let placement = Arc::new(Placement::new(state, raft.clone(), registry.clone(), network));
        let scheduler = SchedulerConfig {
            meta_voters: config.meta_voters,
            disconnect_ms: (5 * config.heartbeat_interval_ms).max(2_000),
            down_ms: config.store_down_secs * 1000,
            balance_limit: config.balance_limit,
            location_labels: config.location_labels.clone(),
            store_limit_per_min: config.store_limit_per_minute as usize,
            store_limits: Default::default(),
            hot_region_bytes_per_sec: config.hot_region_bytes_per_sec,
            merge: scandium_placement::merge::MergeConfig {
                // Two merged Regions stay below the split size: a smaller split size (a
                // test's, say) lowers the defaults with it.
                max_size: config.merge_max_size.min(config.region_split_size / 2),
                max_keys: config.merge_max_keys.min(config.region_split_keys / 2),
                split_merge_interval_ms: config.split_merge_interval_ms,
                limit: config.merge_limit,
                paused: false,
            },
        };
        let control_config = ControlConfig {
            scheduler,
            // The stores' last heartbeats go into the log every ten beats.
            record_liveness_ms: 10 * config.heartbeat_interval_ms,
            ..ControlConfig::default()
        };
        let disk =
            Arc::new(crate::disk::DiskSpace::new(&config.data_dir, config.reserve_space_bytes));
        tasks.spawn(crate::disk::run(disk.clone()));
        let reads = Arc::new(ReadFlow::default());
        let load = Arc::new(LoadSamples::default());
        let storage = Arc::new(Storage::new(StorageParts {
            identity: identity.clone(),
            txn: txn.clone(),
            wakers,
            registry: registry.clone(),
            raft: raft.clone(),
            disk: disk.clone(),
            placement: placement.clone(),
            directory: directory.clone(),
            clients: clients.clone(),
            reads: reads.clone(),
            load: load.clone(),
        }));
        let beat_now = Arc::new(Notify::new());
        let control = Arc::new(Control::new(
            ControlPlane::new(control_config),
            ControlParts {
                identity: identity.clone(),
                placement: placement.clone(),
                registry: registry.clone(),
                raft: raft.clone(),
                clients: clients.clone(),
                tasks: tasks.clone(),
                beat_now: beat_now.clone(),
                reads,
            },
        ));
        let splitter = Arc::new(Splitter::new(
            identity.clone(),
            registry.clone(),
            placement.clone(),
            raft.clone(),
            directory.clone(),
            clients.clone(),
        ));
        let refused = Arc::new(AtomicU64::new(0));
        let services = Services {
            tikv: TikvService::new(storage.clone(), splitter.clone(), tasks.clone()),
            pd: PdService::new(PdParts {
                identity: identity.clone(),
                placement: placement.clone(),
                registry: registry.clone(),
                clients: clients.clone(),
                tasks: tasks.clone(),
                splitter: splitter.clone(),
            }),
            cluster: ClusterService::new(ClusterParts {
                identity: identity.clone(),
                placement: placement.clone(),
                raft: raft.clone(),
                registry: registry.clone(),
                directory,
                links: links.clone(),
                refused: refused.clone(),
                control: control.clone(),
                storage: storage.clone(),
                max_snapshot_bytes: config.max_snapshot_bytes,
                stager: stager.clone(),
                max_concurrent_snapshots: config.snapshot_max_concurrent as usize,
            }),
            http: Arc::new(HttpState {
                identity: identity.clone(),
                engine: engine.clone(),
                registry: registry.clone(),
                placement: placement.clone(),
                control: control.clone(),
                clients: clients.clone(),
                disk,
                transport: transport.clone(),
                refused: refused.clone(),
                txn: txn.clone(),
            }),
            authz,
        };
        // Serve at once: other nodes' Raft messages (the placement group's snapshot for a
        // node that just joined) are what makes this one ready.
        if let Some(tls) = &tls {
            watch_tls_files(tls.clone(), clients.clone(), &tasks);
        }
        let (shutdown, server) = serve(services, &tasks, &config, listener, tls)?;
        let others = (placement.read().stores())
            .filter(|s| s.id != identity.store_id && s.state() != StoreState::Tombstone)
            .map(|s| (s.id, s.address.clone()))
            .collect();
        transport.announce(others);
        let replicas = Replicas {
            txn: txn.clone(),
            registry: registry.clone(),
            placement: placement.clone(),
            tasks: tasks.clone(),
            beat_now,
        };
        let events = tasks.spawn(Arc::new(replicas).run(event_receiver));
        let heartbeat_interval = Duration::from_millis(config.heartbeat_interval_ms);
        let heartbeats = tasks.spawn(control.clone().run(heartbeat_interval));
        let mut node = Node {
            identity,
            engine,
            registry,
            raft,
            placement,
            storage,
            splitter,
            control,
            links,
            transport,
            refused,
            tasks,
            local_addr,
            driver: Some(driver),
            shutdown: Some(shutdown),
            server: Some(server),
            background: vec![events, heartbeats],
            start_timings: StartTimings::default(),
        };
        if let Err(error) = node.wait_until_ready().await {
            node.shutdown_now().await;
            return Err(error);
        }
        let ready_ms = started.elapsed().as_millis() as u64;
        ensure_latest_index(&node.engine, &config)?;
        // Reads before a restart used timestamps below the oracle's current value; starting
        // max_ts there keeps async-commit transactions above them (each Region led here
        // also takes one when it gains leadership).
        if let Ok(Ok(now)) =
            tokio::time::timeout(Duration::from_secs(5), node.placement.timestamp(1)).await
        {
            txn.concurrency.update_max_ts(now);
        }
        let timestamp_ms = started.elapsed().as_millis() as u64;
        // Record this node's (possibly new) address before serving, if the placement leader
        // answers soon; otherwise keep trying in the background.
        let (registered, done) = oneshot::channel();
        let (identity, placement, registry) =
            (node.identity.clone(), node.placement.clone(), node.registry.clone());
        let labels = config.labels.clone();
        node.background.push(node.tasks.spawn(async move {
            register(&identity, &labels, &placement, &registry).await;
            let _ = registered.send(());
        }));
        let _ = tokio::time::timeout(Duration::from_secs(5), done).await;
        let registered_ms = started.elapsed().as_millis() as u64;
        let interval = Duration::from_secs(config.ttl_sweep_interval_secs);
        node.background.push(node.tasks.spawn(crate::ttl::run(node.storage.clone(), interval)));
        let flush = crate::idle_flush::run(node.engine.clone(), crate::idle_flush::CHECK_EVERY);
        node.background.push(node.tasks.spawn(flush));
        let gc_interval = Duration::from_secs(config.gc_interval_secs);
        let gc = crate::gc_worker::run(node.storage.clone(), node.placement.clone(), gc_interval);
        node.background.push(node.tasks.spawn(gc));
        let checker =
            SplitChecker::new(node.raft.clone(), node.splitter.clone(), config.split_policy());
        let interval = Duration::from_millis(config.split_check_interval_ms);
        node.background.push(node.tasks.spawn(Arc::new(checker).run(interval)));
        let hot = LoadSplitConfig { qps: config.load_split_qps, secs: config.load_split_secs };
        let load_split = crate::load_split::run(load, node.splitter.clone(), hot);
        node.background.push(node.tasks.spawn(load_split));
        node.start_timings = StartTimings { storage_ms: 0, ready_ms, timestamp_ms, registered_ms };
        // `scandium server` announces it at info, in its own words.
        tracing::debug!(
            addr = %node.identity.address,
            store_id = node.identity.store_id,
            timings = ?node.start_timings,
            "scandium node serving"
        );
        Ok(node)
    }

    /// Where the start's time went.
    pub fn start_timings(&self) -> StartTimings {
        self.start_timings
    }

    /// The address the node listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address the node advertises to clients.
    pub fn advertise_addr(&self) -> &str {
        &self.identity.address
    }

    /// This node's store.
    pub fn store_id(&self) -> StoreId {
        self.identity.store_id
    }

    /// The cluster this node belongs to.
    pub fn cluster_id(&self) -> u64 {
        self.identity.cluster_id
    }

    /// The node's storage engine (for tests and tools in the same process).
    pub fn engine(&self) -> &EngineRef {
        &self.engine
    }

    /// The Regions with a replica here.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The placement group as this node holds it.
    pub fn placement(&self) -> &Arc<Placement> {
        &self.placement
    }

    /// The storage layer: the raw and transactional API without gRPC (for tests and tools
    /// in the same process).
    pub fn storage(&self) -> &Arc<Storage> {
        &self.storage
    }

    /// Splits Regions on request.
    pub fn splitter(&self) -> &Arc<Splitter> {
        &self.splitter
    }

    /// This node's side of the control plane (heartbeats; Region sizes and traffic as the
    /// placement leader knows them).
    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }

    /// The links to other nodes (tests cut them).
    pub fn links(&self) -> &Links {
        &self.links
    }

    /// What the Raft transport has done so far.
    pub fn transport_stats(&self) -> &TransportStats {
        self.transport.stats()
    }

    /// Messages and requests refused so far: from another cluster, for another store,
    /// malformed, or dropped because the Raft thread was saturated.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Hands leadership of a Region led here to its replica on `to_store`.
    pub async fn transfer_leader(&self, region_id: u64, to_store: u64) -> Result<(), RequestError> {
        crate::grpc::cluster::transfer_leader(&self.registry, &self.raft, region_id, to_store).await
    }

    /// A digest of every data column family of each Region held here, with the index it
    /// was taken at (replicas of a Region at the same index must agree).
    pub async fn region_digests(&self) -> Result<Vec<RegionDigest>, RequestError> {
        crate::grpc::cluster::region_digests(&self.raft).await
    }

    /// Stops serving, stops the Raft thread and closes storage.
    pub async fn stop(mut self) {
        self.shutdown_now().await;
    }

    /// Stops the node like [`Node::stop`], but first hands leadership of every group it
    /// leads to another voter (bounded: a few seconds), so clients see no election.
    pub async fn stop_gracefully(mut self) {
        self.transfer_leaders_away(Duration::from_secs(3)).await;
        self.shutdown_now().await;
    }

    async fn transfer_leaders_away(&self, within: Duration) {
        let mut led: Vec<scandium_raftstore::RegionStatus> =
            self.registry.all().into_iter().filter(|s| s.ready_for_reads).collect();
        led.extend(self.registry.meta().status.filter(|s| s.ready_for_reads));
        let mut moving = Vec::new();
        for status in led {
            let store_id = self.identity.store_id;
            let region = status.region.id;
            // The first voter elsewhere that is caught up enough to take over.
            for target in status.region.voters().filter(|p| p.store_id != store_id) {
                let peer = target.id;
                let moved =
                    self.raft.with_store(move |store| store.transfer_leader(region, peer)).await;
                if matches!(moved, Ok(Ok(()))) {
                    moving.push(region);
                    break;
                }
            }
        }
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let still = moving.iter().any(|&id| {
                if id == META_GROUP_ID {
                    self.registry.meta().is_leader
                } else {
                    self.registry.get(id).is_some_and(|s| s.ready_for_reads)
                }
            });
            if !still {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if !moving.is_empty() {
            tracing::info!(groups = moving.len(), "handed leadership away before stopping");
        }
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
        // Connections, their streams, transport connections, background work: all of it
        // holds the node's state, storage included.
        self.tasks.abort_all();
        if let Some(driver) = self.driver.take() {
            driver.stop(&self.raft);
            let _ = tokio::task::spawn_blocking(move || driver.join()).await;
        }
    }
}

/// A node dropped without [`Node::stop`] (a panicking test, say) still stops: its tasks
/// end and its Raft thread is told to stop (without waiting for it).
impl Drop for Node {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.tasks.abort_all();
        if let Some(driver) = self.driver.take() {
            driver.stop(&self.raft);
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
        max_journal_bytes: config.journal_max_bytes,
    };
    let engine = FjallEngine::open(&config.data_dir.join("db"), &options)
        .map_err(|e| data_dir_error(config, e))?;
    Ok(Arc::new(engine))
}

/// The node's identity, if its data directory belongs to a cluster.
fn load_ident(engine: &EngineRef, config: &Config) -> Result<Option<StoreIdent>, NodeError> {
    let Some(bytes) =
        engine.get(Cf::RaftState, IDENT_KEY).map_err(|e| data_dir_error(config, e))?
    else {
        return Ok(None);
    };
    StoreIdent::decode(bytes.as_slice()).map(Some).map_err(|e| data_dir_error(config, e))
}

/// Writes the node's identity (and, the directory being new, the marker that its Latest CF
/// is complete), synced.
fn write_ident(
    engine: &EngineRef,
    config: &Config,
    ident: &StoreIdent,
    mut batch: WriteBatch,
) -> Result<(), NodeError> {
    batch.put(Cf::RaftState, IDENT_KEY.to_vec(), ident.encode_to_vec());
    batch.put(Cf::RaftState, LATEST_INDEX_KEY.to_vec(), vec![1]);
    engine.write(batch).and_then(|()| engine.sync()).map_err(|e| data_dir_error(config, e))
}

/// Creates a new single-node cluster: the placement state, the placement group and one
/// Region per keyspace edge, written in one synced batch.
fn bootstrap(engine: &EngineRef, config: &Config, address: &str) -> Result<StoreIdent, NodeError> {
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
        address: address.to_string(),
        state: StoreState::Up as i32,
        ..Default::default()
    };
    let keyspace = KeyspaceMeta {
        id: DEFAULT_KEYSPACE_ID,
        name: DEFAULT_KEYSPACE_NAME.into(),
        state: 0,
        created_at: (now_ms() / 1000) as i64,
    };
    let (mut state, mut batch) =
        PlacementState::bootstrap(cluster_id, next_id, store, regions.clone(), vec![keyspace]);
    state.set_replicas(config.replicas, &mut batch);
    write_initial_group(&mut batch, &meta);
    for region in &regions {
        write_initial_group(&mut batch, region);
    }
    write_ident(engine, config, &ident, batch)?;
    tracing::info!(cluster_id, regions = regions.len(), "bootstrapped a new cluster");
    Ok(ident)
}

/// Joins the cluster of one of `config.join`'s nodes: gets a store id from its placement
/// leader and records it. Retries with backoff, saying so, until one answers.
async fn join(
    engine: &EngineRef,
    config: &Config,
    clients: &Clients,
    address: &str,
) -> Result<StoreIdent, NodeError> {
    let mut backoff = Duration::from_millis(200);
    loop {
        let mut failures = Vec::new();
        for seed in &config.join {
            let request = JoinRequest {
                cluster_id: 0,
                address: address.to_string(),
                version: env!("CARGO_PKG_VERSION").into(),
            };
            let answer = match clients.cluster(seed) {
                Ok(mut client) => {
                    match tokio::time::timeout(Duration::from_secs(5), client.join(request)).await {
                        Ok(Ok(answer)) => Ok(answer.into_inner()),
                        Ok(Err(status)) => Err(status.message().to_string()),
                        Err(_) => Err("timed out".to_string()),
                    }
                }
                Err(error) => Err(error),
            };
            match answer {
                Ok(answer) if answer.error.is_empty() && answer.store_id != 0 => {
                    let ident =
                        StoreIdent { cluster_id: answer.cluster_id, store_id: answer.store_id };
                    write_ident(engine, config, &ident, WriteBatch::new())?;
                    tracing::info!(
                        cluster_id = ident.cluster_id,
                        store_id = ident.store_id,
                        through = %seed,
                        "joined the cluster"
                    );
                    return Ok(ident);
                }
                Ok(answer) => failures.push(format!("{seed}: {}", answer.error)),
                Err(error) => failures.push(format!("{seed}: {error}")),
            }
        }
        tracing::warn!(
            "cannot join the cluster yet ({}); retrying in {} ms",
            failures.join("; "),
            backoff.as_millis()
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// A node that belongs to a cluster was pointed at `config.join`: refuse to start if those
/// nodes belong to another cluster (best effort: unreachable nodes prove nothing).
async fn check_same_cluster(
    config: &Config,
    clients: &Clients,
    ours: u64,
) -> Result<(), NodeError> {
    for seed in &config.join {
        let Ok(mut client) = clients.cluster(seed) else { continue };
        let info = tokio::time::timeout(Duration::from_secs(2), client.info(InfoRequest {})).await;
        if let Ok(Ok(info)) = info {
            let theirs = info.into_inner().cluster_id;
            if theirs != ours && theirs != 0 {
                return Err(data_dir_error(
                    config,
                    format!(
                        "this data directory belongs to cluster {ours}, but {seed} belongs to \
                         cluster {theirs}; use an empty data directory to join that cluster"
                    ),
                ));
            }
            return Ok(());
        }
    }
    Ok(())
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
        tracing::debug!(keys, "built the index of newest versions");
    }
    Ok(())
}

/// Waits until the node can serve: a single-node cluster once every group here leads; a
/// node of a larger cluster once it holds the placement state and knows a placement
/// leader. A node whose peers are down still starts after `READY_TIMEOUT` (it serves what
/// it can, and says so).
impl Node {
    async fn wait_until_ready(&self) -> Result<(), NodeError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut warned = false;
        loop {
            let meta = self.registry.meta();
            // This node is the cluster's only voter: it serves once it leads everything here.
            let sole = meta.status.as_ref().is_some_and(|s| {
                s.region.voters().map(|p| p.store_id).eq(std::iter::once(self.identity.store_id))
            });
            if sole {
                let regions = self.registry.all();
                if meta.ready_for_reads && regions.iter().all(|s| s.ready_for_reads) {
                    return Ok(());
                }
            } else if self.placement.has_state() && self.placement.leader_address().is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                if !self.placement.has_state() {
                    if !warned {
                        tracing::warn!(
                            "still waiting for the placement group's data from the cluster; \
                         is its placement leader reachable?"
                        );
                        warned = true;
                    }
                } else if sole {
                    return Err(NodeError::NotReady(
                        "raft groups did not elect a leader in time".into(),
                    ));
                } else {
                    tracing::warn!(
                        "no placement leader after {}s: serving what this node can (a majority of \
                     the placement group may be down)",
                        READY_TIMEOUT.as_secs()
                    );
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Records this store's address and version, and makes placement's view of the Regions
/// led here at least as new as the Regions themselves (a crash may have come between a
/// split and its report). Retries until the placement leader answers.
async fn register(
    identity: &Identity,
    labels: &std::collections::BTreeMap<String, String>,
    placement: &Placement,
    registry: &Registry,
) {
    let labels = labels
        .iter()
        .map(|(key, value)| StoreLabel { key: key.clone(), value: value.clone() })
        .collect();
    let store = StoreMeta {
        id: identity.store_id,
        address: identity.address.clone(),
        state: StoreState::Up as i32,
        version: env!("CARGO_PKG_VERSION").into(),
        start_timestamp: (now_ms() / 1000) as i64,
        // Placement keeps what it recorded.
        last_heartbeat_ms: 0,
        labels,
    };
    let mut backoff = Duration::from_millis(100);
    loop {
        match placement.propose(Kind::PutStore(store.clone())).await {
            Ok(_) => break,
            Err(error) if error.to_string().contains("removed from the cluster") => {
                tracing::error!(
                    store_id = identity.store_id,
                    "this store was removed from the cluster (tombstone); it serves nothing. \
                     Start a node with an empty data directory to add capacity."
                );
                return;
            }
            Err(error) => {
                tracing::debug!(%error, "cannot record this store yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
    let unknown: Vec<_> = {
        let state = placement.read();
        registry
            .all()
            .into_iter()
            .filter(|status| status.ready_for_reads)
            .map(|status| status.region)
            .filter(|region| state.region(region.id).map(|r| r.epoch()) != Some(region.epoch()))
            .collect()
    };
    if !unknown.is_empty() {
        if let Err(error) = placement.put_regions(unknown).await {
            tracing::warn!(%error, "could not report this node's Regions");
        }
    }
}

type ServeResult = Result<(oneshot::Sender<()>, JoinHandle<()>), NodeError>;

/// Connections the kernel holds for the node before it accepts them. The standard
/// library's 128 fills in a few milliseconds of a burst (clients reconnecting after a
/// restart, or many opened at once) whenever the accept loop is busy for a moment, and
/// a connection refused so waits a second for its SYN to be sent again.
const LISTEN_BACKLOG: u32 = 1024;

/// A listener on `addr` (`HOST:PORT`, the first address the host resolves to that can be
/// bound), with [`LISTEN_BACKLOG`].
fn listen(addr: &str) -> std::io::Result<std::net::TcpListener> {
    use std::net::ToSocketAddrs as _;
    let mut last = std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address to bind");
    for address in addr.to_socket_addrs()? {
        let socket = match address {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        // As the standard library's `bind` does: a restarted node takes its port back at
        // once, past connections still in TIME_WAIT.
        socket.set_reuseaddr(true)?;
        match socket.bind(address).and_then(|()| socket.listen(LISTEN_BACKLOG)) {
            Ok(listener) => return listener.into_std(),
            Err(error) => last = error,
        }
    }
    Err(last)
}

/// `app` for one TLS connection from `identity`: every request is checked
/// ([`crate::tls::check_call`]) before it reaches a handler, which finds the identity
/// among the request's extensions (the inter-node service checks who sends what). One
/// router per connection, as hyper's own server keeps (a router cloned per request
/// cost TLS a tenth of its throughput).
#[derive(Clone)]
struct Checked {
    app: axum::Router,
    identity: Arc<crate::tls::PeerIdentity>,
    tls: Arc<crate::tls::Reloadable>,
    authz: Arc<crate::authz::Authz>,
}

impl tower::Service<hyper::Request<hyper::Body>> for Checked {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = futures::future::Either<
        std::future::Ready<Result<axum::response::Response, std::convert::Infallible>>,
        axum::routing::future::RouteFuture<hyper::Body, std::convert::Infallible>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        tower::Service::<hyper::Request<hyper::Body>>::poll_ready(&mut self.app, cx)
    }

    fn call(&mut self, mut request: hyper::Request<hyper::Body>) -> Self::Future {
        let path = request.uri().path();
        let admin = || self.authz.is_admin(&self.identity);
        if let Err(status) = crate::tls::check_call(self.tls.config(), &self.identity, admin, path)
        {
            crate::metrics::METRICS.refused_calls.inc();
            tracing::debug!(%status, path, "refused a call");
            let grpc = (request.headers().get(hyper::header::CONTENT_TYPE))
                .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"));
            let response = match grpc {
                true => (*status).to_http().map(axum::body::boxed),
                false => {
                    let code = match status.code() {
                        tonic::Code::Unauthenticated => hyper::StatusCode::UNAUTHORIZED,
                        _ => hyper::StatusCode::FORBIDDEN,
                    };
                    let body = status.message().to_string();
                    axum::response::IntoResponse::into_response((code, body))
                }
            };
            return futures::future::Either::Left(std::future::ready(Ok(response)));
        }
        request.extensions_mut().insert(self.identity.clone());
        request.extensions_mut().insert(self.authz.clone());
        futures::future::Either::Right(tower::Service::call(&mut self.app, request))
    }
}

/// Looks at the TLS files every `reload-interval-ms` and, once new material is in use,
/// has the next call to every node connect anew with it.
fn watch_tls_files(tls: Arc<crate::tls::Reloadable>, clients: Arc<Clients>, tasks: &Tasks) {
    let Some(interval) = tls.interval() else { return };
    drop(tasks.spawn(async move {
        loop {
            tokio::time::sleep(interval).await;
            let tls = tls.clone();
            let reload = tokio::task::spawn_blocking(move || tls.reload()).await;
            if let Ok(crate::tls::Reload::Reloaded) = reload {
                clients.forget_connections();
            }
        }
    }));
}

/// Serves `app` over TLS: each connection's handshake in a task of its own, under
/// `handshake-timeout-ms` (a client that never finishes one holds up no one
/// else), then HTTP/2 or HTTP/1.1 as ALPN chose.
fn serve_tls(
    app: axum::Router,
    tasks: &Tasks,
    listener: tokio::net::TcpListener,
    tls: Arc<crate::tls::Reloadable>,
    authz: Arc<crate::authz::Authz>,
) -> (oneshot::Sender<()>, JoinHandle<()>) {
    let (shutdown, mut shutdown_signal) = oneshot::channel::<()>();
    let connections = tasks.clone();
    let handle = tasks.spawn(async move {
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        // Out of file descriptors, most likely: wait rather than spin.
                        tracing::warn!(%error, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = &mut shutdown_signal => return,
            };
            let _ = stream.set_nodelay(true);
            // The material in use now: a reload changes what the next connection gets.
            let acceptor = tls.current().acceptor();
            let (app, executor, tls) = (app.clone(), connections.clone(), tls.clone());
            let authz = authz.clone();
            drop(connections.spawn(async move {
                let handshake =
                    tokio::time::timeout(tls.handshake_timeout(), acceptor.accept(stream));
                let accepted = match handshake.await {
                    Ok(Ok(stream)) => {
                        let certs = stream.get_ref().1.peer_certificates();
                        crate::tls::PeerIdentity::of(certs, tls.config()).map(|id| (stream, id))
                    }
                    Ok(Err(error)) => Err(format!("the handshake failed: {error}")),
                    Err(_) => Err("the handshake timed out".to_string()),
                };
                let (stream, identity) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        crate::metrics::METRICS.tls_handshakes_failed.inc();
                        tracing::debug!(%error, "refused a TLS connection");
                        return;
                    }
                };
                let identity = Arc::new(identity);
                let service = Checked { app, identity, tls: tls.clone(), authz };
                let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                let mut http = hyper::server::conn::Http::new().with_executor(executor);
                http.http2_only(h2).http1_only(!h2).http2_max_concurrent_streams(1024);
                if let Err(error) = http.serve_connection(stream, service).await {
                    tracing::debug!(%error, "a TLS connection ended");
                }
            }));
        }
    });
    (shutdown, handle)
}

/// The services a node serves on its one port.
struct Services {
    tikv: TikvService,
    pd: PdService,
    cluster: ClusterService,
    http: Arc<HttpState>,
    /// The grants, as the placement applier publishes them.
    authz: Arc<crate::authz::Authz>,
}

fn serve(
    services: Services,
    tasks: &Tasks,
    config: &Config,
    listener: std::net::TcpListener,
    tls: Option<Arc<crate::tls::Reloadable>>,
) -> ServeResult {
    let Services { tikv, pd, cluster, http, authz } = services;
    let limit = config.max_grpc_message_bytes;
    let keyspace = KeyspaceServer::new(KeyspaceService::new(pd.clone()));
    let tikv =
        TikvServer::new(tikv).max_decoding_message_size(limit).max_encoding_message_size(limit);
    let pd = PdServer::new(pd).max_decoding_message_size(limit).max_encoding_message_size(limit);
    let cluster = ClusterServer::new(cluster)
        .max_decoding_message_size(crate::network::MAX_NODE_MESSAGE_BYTES)
        .max_encoding_message_size(crate::network::MAX_NODE_MESSAGE_BYTES);
    let grpc = tonic::transport::server::Routes::new(tikv)
        .add_service(pd)
        .add_service(keyspace)
        .add_service(cluster)
        .into_router();
    let app = crate::http::routes(grpc, http);

    let addr = listener.local_addr().ok();
    let listen_error = |source| NodeError::Listen { addr: format!("{addr:?}"), source };
    listener.set_nonblocking(true).map_err(listen_error)?;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(listen_error)?;
    if let Some(tls) = tls {
        return Ok(serve_tls(app, tasks, listener, tls, authz));
    }
    let mut incoming = hyper::server::conn::AddrIncoming::from_listener(listener).map_err(|e| {
        NodeError::Listen { addr: format!("{addr:?}"), source: std::io::Error::other(e) }
    })?;
    incoming.set_nodelay(true);
    let (shutdown, shutdown_signal) = oneshot::channel::<()>();
    let server = hyper::Server::builder(incoming)
        .http2_max_concurrent_streams(1024)
        .executor(tasks.clone())
        .serve(app.into_make_service())
        .with_graceful_shutdown(async {
            let _ = shutdown_signal.await;
        });
    let handle = tasks.spawn(async move {
        if let Err(error) = server.await {
            tracing::error!(%error, "server failed");
        }
    });
    Ok((shutdown, handle))
}
