//! An in-process cluster of real nodes (each a `Node` with its own data directory and
//! port) with short Raft ticks, whose links can be cut: TiKV's `SimulateTransport`
//! filters, at the transport boundary.

#![allow(dead_code)]

use scandium_raftstore::META_GROUP_ID;
use scandium_server::{Config, Node};
use scandium_types::PeerRole;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tikv_client::{RawClient, TransactionClient};

/// Milliseconds per Raft tick in these tests (elections in 100–160 ms).
pub const TICK_MS: u64 = 10;

/// One cluster at a time: several at once on a 2-core machine starve each other's Raft
/// ticks into spurious elections.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub struct Cluster {
    pub nodes: Vec<Option<Node>>,
    pub dirs: Vec<tempfile::TempDir>,
    pub addrs: Vec<String>,
    /// Applied to every node's settings, at start and restart.
    adjust: Arc<dyn Fn(&mut Config) + Send + Sync>,
    /// Held while the cluster exists (see [`ONE_AT_A_TIME`]); the last field, so it is
    /// dropped after the nodes.
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

pub fn config(dir: PathBuf, addr: &str, join: Vec<String>) -> Config {
    Config {
        data_dir: dir,
        addr: addr.to_string(),
        join,
        raft_tick_ms: TICK_MS,
        election_ticks: 10,
        max_election_ticks: 16,
        heartbeat_interval_ms: 100,
        gc_interval_secs: 3600,
        // Tests that name a Region's leader keep it: balancing is on where a test says so.
        balance_limit: 0,
        ..Config::default()
    }
}

fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

impl Cluster {
    /// Starts `n` nodes: the first bootstraps, the others join through it; returns once
    /// every Region and the placement group have `min(n, 3)` voters.
    pub async fn start(n: usize) -> Cluster {
        Cluster::start_with(n, |_| {}).await
    }

    /// [`Cluster::start`] with every node's settings adjusted by `adjust`.
    pub async fn start_with(
        n: usize,
        adjust: impl Fn(&mut Config) + Send + Sync + 'static,
    ) -> Cluster {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let turn = ONE_AT_A_TIME.lock().await;
        let mut cluster = Cluster {
            nodes: Vec::new(),
            dirs: Vec::new(),
            addrs: Vec::new(),
            adjust: Arc::new(adjust),
            _turn: turn,
        };
        for i in 0..n {
            let dir = tempfile::tempdir().unwrap();
            let addr = free_addr();
            let join = if i == 0 { Vec::new() } else { vec![cluster.addrs[0].clone()] };
            let mut settings = config(dir.path().to_path_buf(), &addr, join);
            (cluster.adjust)(&mut settings);
            let node = Node::start(settings).await.expect("node starts");
            cluster.nodes.push(Some(node));
            cluster.dirs.push(dir);
            cluster.addrs.push(addr);
        }
        cluster.wait_replicated(n.min(3), Duration::from_secs(30)).await;
        cluster
    }

    /// Starts one more node, joining through the first.
    pub async fn add_node(&mut self) -> usize {
        let dir = tempfile::tempdir().unwrap();
        let addr = free_addr();
        let mut settings = config(dir.path().to_path_buf(), &addr, vec![self.addrs[0].clone()]);
        (self.adjust)(&mut settings);
        let node = Node::start(settings).await.expect("node starts");
        self.nodes.push(Some(node));
        self.dirs.push(dir);
        self.addrs.push(addr);
        self.nodes.len() - 1
    }

    pub fn node(&self, i: usize) -> &Node {
        self.nodes[i].as_ref().expect("node is running")
    }

    pub fn running(&self) -> impl Iterator<Item = (usize, &Node)> {
        self.nodes.iter().enumerate().filter_map(|(i, n)| n.as_ref().map(|n| (i, n)))
    }

    /// Waits until every Region placement knows, and the placement group, have `voters`
    /// voters and no learner, on every running node's view.
    pub async fn wait_replicated(&self, voters: usize, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.replicated(voters) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not replicated in time: {}",
                self.describe()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn replicated(&self, voters: usize) -> bool {
        let (_, any) = self.running().next().unwrap();
        let placement = any.placement().read();
        let regions: Vec<_> = placement.regions().cloned().collect();
        drop(placement);
        let full = |peers: &[scandium_types::Peer]| {
            peers.len() >= voters
                && peers.iter().filter(|p| p.role() == PeerRole::Voter).count() == voters
        };
        let meta_ok = self.running().any(|(_, n)| {
            n.registry().meta().status.is_some_and(|s| s.ready_for_reads && full(&s.region.peers))
        });
        meta_ok
            && regions.iter().all(|region| {
                full(&region.peers)
                    && self.running().any(|(_, n)| {
                        n.registry()
                            .get(region.id)
                            .is_some_and(|s| s.ready_for_reads && full(&s.region.peers))
                    })
            })
    }

    pub fn describe(&self) -> String {
        let mut out = String::new();
        for (i, node) in self.running() {
            out.push_str(&format!(
                "\nnode {i} (store {}): meta {:?}",
                node.store_id(),
                node.registry().meta().status.map(|s| (s.ready_for_reads, s.region.peers))
            ));
            for s in node.registry().all() {
                out.push_str(&format!(
                    "\n  region {} leader={} peers={:?}",
                    s.region.id, s.ready_for_reads, s.region.peers
                ));
            }
        }
        out
    }

    /// The index of the node leading the placement group.
    pub fn meta_leader(&self) -> Option<usize> {
        self.running().find(|(_, n)| n.registry().meta().ready_for_reads).map(|(i, _)| i)
    }

    /// The index of the node leading Region `id`.
    pub fn leader_of(&self, id: u64) -> Option<usize> {
        if id == META_GROUP_ID {
            return self.meta_leader();
        }
        self.running()
            .find(|(_, n)| n.registry().get(id).is_some_and(|s| s.ready_for_reads))
            .map(|(i, _)| i)
    }

    /// The id of the Region holding `key` (unencoded).
    pub fn region_of(&self, key: &[u8]) -> u64 {
        let (_, node) = self.running().next().unwrap();
        node.placement().read().region_by_key(key).unwrap().id
    }

    pub async fn wait_leader(&self, id: u64, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(i) = self.leader_of(id) {
                return i;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no leader of {id}: {}",
                self.describe()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops node `i` at once (as a crash would, but flushing storage).
    pub async fn stop(&mut self, i: usize) {
        if let Some(node) = self.nodes[i].take() {
            node.stop().await;
        }
    }

    /// Restarts node `i` on its data directory and address.
    pub async fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].is_none());
        let others: Vec<String> = self
            .addrs
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, a)| a.clone())
            .collect();
        let mut config = config(self.dirs[i].path().to_path_buf(), &self.addrs[i], others);
        (self.adjust)(&mut config);
        let mut last = None;
        for _ in 0..50 {
            match Node::start(config.clone()).await {
                Ok(node) => {
                    self.nodes[i] = Some(node);
                    return;
                }
                // The previous instance's port or storage may take a moment to be released.
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("node {i} did not restart: {last:?}");
    }

    /// Moves leadership of Region `id` to node `to`, and waits until it leads.
    pub async fn transfer_leader(&self, id: u64, to: usize) {
        let target = self.node(to).store_id();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.leader_of(id) != Some(to) {
            if let Some(from) = self.leader_of(id) {
                let _ = self.node(from).transfer_leader(id, target).await;
            }
            assert!(tokio::time::Instant::now() < deadline, "leadership of {id} did not move");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A connection to node `i`'s one port.
    pub async fn channel(&self, i: usize) -> tonic::transport::Channel {
        tonic::transport::Channel::from_shared(format!("http://{}", self.addrs[i]))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// A gRPC client of node `i`'s storage service.
    pub async fn tikv(
        &self,
        i: usize,
    ) -> scandium_protocol::tikvpb::tikv_client::TikvClient<tonic::transport::Channel> {
        scandium_protocol::tikvpb::tikv_client::TikvClient::new(self.channel(i).await)
    }

    /// A gRPC client of node `i`'s placement service, as PD clients call it.
    pub async fn pd(
        &self,
        i: usize,
    ) -> scandium_protocol::pdpb::pd_client::PdClient<tonic::transport::Channel> {
        scandium_protocol::pdpb::pd_client::PdClient::new(self.channel(i).await)
    }

    /// The request context node `i` would accept for Region `id` (its local view).
    pub fn context(&self, i: usize, id: u64) -> scandium_protocol::kvrpcpb::Context {
        let status = self.node(i).registry().get(id).expect("a replica here");
        scandium_protocol::kvrpcpb::Context {
            region_id: id,
            region_epoch: Some(scandium_protocol::metapb::RegionEpoch {
                conf_ver: status.region.conf_ver,
                version: status.region.version,
            }),
            peer: Some(scandium_protocol::metapb::Peer {
                id: status.peer.id,
                store_id: status.peer.store_id,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Cuts node `i` off from every other node, both ways.
    pub fn isolate(&self, i: usize) {
        let others: Vec<usize> = (0..self.nodes.len()).filter(|j| *j != i).collect();
        self.partition(&[i], &others);
    }

    /// Cuts every link between the two groups, both ways.
    pub fn partition(&self, a: &[usize], b: &[usize]) {
        let target = |group: &[usize]| -> Vec<(u64, String)> {
            group
                .iter()
                .filter_map(|&j| {
                    self.nodes[j].as_ref().map(|n| (n.store_id(), self.addrs[j].clone()))
                })
                .collect()
        };
        let (to_b, to_a) = (target(b), target(a));
        for &i in a {
            if let Some(node) = &self.nodes[i] {
                node.links().block(&to_b);
            }
        }
        for &j in b {
            if let Some(node) = &self.nodes[j] {
                node.links().block(&to_a);
            }
        }
    }

    pub fn heal(&self) {
        for (_, node) in self.running() {
            node.links().heal();
        }
    }

    /// A raw client given every node as PD endpoint.
    pub async fn raw_client(&self) -> RawClient {
        let config = tikv_client::Config::default().with_timeout(Duration::from_secs(2));
        let endpoints: Vec<String> = self.running().map(|(i, _)| self.addrs[i].clone()).collect();
        RawClient::new_with_config(endpoints, config).await.expect("client connects")
    }

    /// A transactional client given every node as PD endpoint.
    pub async fn txn_client(&self) -> TransactionClient {
        let config = tikv_client::Config::default().with_timeout(Duration::from_secs(2));
        let endpoints: Vec<String> = self.running().map(|(i, _)| self.addrs[i].clone()).collect();
        TransactionClient::new_with_config(endpoints, config).await.expect("client connects")
    }

    /// Snapshots every running node's transport has sent.
    pub fn snapshots_sent(&self) -> u64 {
        let stats = self.running().map(|(_, n)| n.transport_stats());
        stats.map(|s| s.snapshots_sent.load(std::sync::atomic::Ordering::Relaxed)).sum()
    }

    /// Snapshot transfers every running node's transport saw fail.
    pub fn snapshots_failed(&self) -> u64 {
        let stats = self.running().map(|(_, n)| n.transport_stats());
        stats.map(|s| s.snapshots_failed.load(std::sync::atomic::Ordering::Relaxed)).sum()
    }

    pub async fn shutdown(mut self) {
        for i in 0..self.nodes.len() {
            self.stop(i).await;
        }
    }
}

/// Every replica of every Region holds the same data (at the same applied index).
pub async fn assert_replicas_agree(cluster: &Cluster) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut by_region: HashMap<u64, Vec<(u64, Vec<u64>)>> = HashMap::new();
        for (_, node) in cluster.running() {
            for digest in node.region_digests().await.unwrap() {
                by_region
                    .entry(digest.region_id)
                    .or_default()
                    .push((digest.applied_index, digest.digests));
            }
        }
        let agree = by_region.values().all(|replicas| replicas.windows(2).all(|w| w[0] == w[1]));
        if agree {
            return;
        }
        assert!(Instant::now() < deadline, "replicas disagree: {by_region:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
