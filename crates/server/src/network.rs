//! Reaching other nodes: where each store is ([`Directory`]), one cached gRPC channel per
//! address ([`Clients`]), and the links a test may cut ([`Links`]).

use scandium_placement::PlacementState;
use scandium_protocol::scandium::cluster_client::ClusterClient;
use scandium_protocol::tikvpb::tikv_client::TikvClient;
use scandium_types::StoreId;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::Notify;
use tonic::transport::{Channel, Endpoint};

/// How long a connection attempt to another node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Largest message exchanged between nodes (a batch of Raft messages, a snapshot chunk).
pub const MAX_NODE_MESSAGE_BYTES: usize = 64 << 20;

/// Which stores this node may talk to: all of them, unless a test cut some links
/// (partitions, isolation, random loss). Checked on every message this node sends and
/// receives, so cutting both ends' links partitions two nodes completely.
#[derive(Default)]
pub struct Links {
    active: AtomicBool,
    blocked: RwLock<HashSet<StoreId>>,
    /// The same stores' addresses, for calls other than Raft messages.
    blocked_addresses: RwLock<HashSet<String>>,
    /// Per cent of Raft messages dropped on links that are not blocked.
    drop_percent: AtomicU32,
}

impl Links {
    /// Whether a message to or from `store` may pass.
    pub fn allows(&self, store: StoreId) -> bool {
        if !self.active.load(Ordering::Relaxed) {
            return true;
        }
        if self.blocked.read().unwrap_or_else(|e| e.into_inner()).contains(&store) {
            return false;
        }
        let drop = self.drop_percent.load(Ordering::Relaxed);
        drop == 0 || rand::random::<u32>() % 100 >= drop
    }

    /// Whether a call to the node at `address` may pass.
    pub fn allows_address(&self, address: &str) -> bool {
        !self.active.load(Ordering::Relaxed)
            || !self.blocked_addresses.read().unwrap_or_else(|e| e.into_inner()).contains(address)
    }

    /// Cuts the links to `stores`, reached at `addresses`.
    pub fn block(&self, stores: &[(StoreId, String)]) {
        let mut blocked = self.blocked.write().unwrap_or_else(|e| e.into_inner());
        let mut addresses = self.blocked_addresses.write().unwrap_or_else(|e| e.into_inner());
        for (store, address) in stores {
            blocked.insert(*store);
            addresses.insert(address.clone());
        }
        self.active.store(true, Ordering::Relaxed);
    }

    /// Drops `percent` of messages on every link.
    pub fn drop_messages(&self, percent: u32) {
        self.drop_percent.store(percent.min(100), Ordering::Relaxed);
        self.active.store(true, Ordering::Relaxed);
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.blocked.write().unwrap_or_else(|e| e.into_inner()).clear();
        self.blocked_addresses.write().unwrap_or_else(|e| e.into_inner()).clear();
        self.drop_percent.store(0, Ordering::Relaxed);
        self.active.store(false, Ordering::Relaxed);
    }
}

/// Most stores the placement state does not know that a [`Directory`] keeps the
/// addresses of: nodes that joined since this node's placement state was last applied.
pub const MAX_UNKNOWN_STORES: usize = 1024;

/// Where each store is reached: the placement state's store table, and what other
/// nodes said of themselves when they sent us messages (a node that just joined has no
/// placement state yet, and answers its first messages from that).
pub struct Directory {
    placement: Arc<RwLock<PlacementState>>,
    heard: Mutex<HashMap<StoreId, String>>,
    /// Per store, what wakes a connection to it waiting out a backoff.
    wakes: Mutex<HashMap<StoreId, Arc<Notify>>>,
}

impl Directory {
    /// A directory over the shared placement state.
    pub fn new(placement: Arc<RwLock<PlacementState>>) -> Directory {
        Directory { placement, heard: Mutex::default(), wakes: Mutex::default() }
    }

    /// Notes that `store` says it is at `address`. It is up, so a connection to it
    /// waiting out a backoff tries again now ([`Directory::wake_of`]). Only stores the
    /// placement state does not know yet are kept (its record is what
    /// [`Directory::address`] answers for the others), at most [`MAX_UNKNOWN_STORES`]:
    /// a sender naming a new store id in every batch grew the table without bound.
    pub fn heard_from(&self, store: StoreId, address: &str) {
        if store == 0 || address.is_empty() {
            return;
        }
        let placement = self.placement.read().unwrap_or_else(|e| e.into_inner());
        let mut heard = self.heard.lock().unwrap_or_else(|e| e.into_inner());
        if placement.store(store).is_some() {
            heard.remove(&store);
        } else if heard.get(&store).is_none_or(|known| known != address) {
            if heard.len() >= MAX_UNKNOWN_STORES && !heard.contains_key(&store) {
                heard.retain(|id, _| placement.store(*id).is_none());
            }
            if heard.len() < MAX_UNKNOWN_STORES || heard.contains_key(&store) {
                heard.insert(store, address.to_string());
            }
        }
        drop((heard, placement));
        if let Some(wake) = self.wakes.lock().unwrap_or_else(|e| e.into_inner()).get(&store) {
            wake.notify_one();
        }
    }

    /// What is notified when `store` is heard from: a node back from a restart should
    /// not wait out a backoff its peers grew while it was down (up to seconds) before
    /// they talk to it again.
    pub fn wake_of(&self, store: StoreId) -> Arc<Notify> {
        let mut wakes = self.wakes.lock().unwrap_or_else(|e| e.into_inner());
        wakes.entry(store).or_default().clone()
    }

    /// The address of `store`, if known.
    pub fn address(&self, store: StoreId) -> Option<String> {
        let placement = self.placement.read().unwrap_or_else(|e| e.into_inner());
        if let Some(store) = placement.store(store) {
            return Some(store.address.clone());
        }
        drop(placement);
        self.heard.lock().unwrap_or_else(|e| e.into_inner()).get(&store).cloned()
    }
}

/// One lazily connected channel per address, shared by every call to that node, and one
/// more for the snapshots sent to it.
pub struct Clients {
    channels: Mutex<HashMap<String, Channel>>,
    /// Snapshots go on connections of their own: a Region's megabytes in flight on the
    /// connection that carries Raft messages hold up heartbeats and appends behind them
    /// (TCP and HTTP/2 flow control are per connection), and leaders lose their quorum.
    snapshot_channels: Mutex<HashMap<String, Channel>>,
    links: Arc<Links>,
    /// With TLS on, other nodes are dialled over it, with this node's certificate.
    tls: Option<Arc<crate::tls::Reloadable>>,
}

impl Clients {
    /// Clients whose calls pass only where `links` allow, over TLS if `tls` is given.
    pub fn new(links: Arc<Links>, tls: Option<Arc<crate::tls::Reloadable>>) -> Clients {
        Clients { channels: Mutex::default(), snapshot_channels: Mutex::default(), links, tls }
    }

    /// The channel to `address` (connected on first use, reconnected by tonic as needed).
    pub fn channel(&self, address: &str) -> Result<Channel, String> {
        self.channel_in(&self.channels, address)
    }

    fn channel_in(
        &self,
        channels: &Mutex<HashMap<String, Channel>>,
        address: &str,
    ) -> Result<Channel, String> {
        if !self.links.allows_address(address) {
            return Err(format!("the link to {address} is cut"));
        }
        let mut channels = channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
            .map_err(|e| format!("bad address {address}: {e}"))?;
        if let Some(tls) = &self.tls {
            endpoint = endpoint
                .tls_config(tls.current().client_config())
                .map_err(|e| format!("TLS to {address}: {e}"))?;
        }
        let endpoint = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        let channel = endpoint.connect_lazy();
        channels.insert(address.to_string(), channel.clone());
        Ok(channel)
    }

    /// Forgets every connection, so that the next call to each node connects anew
    /// (after a reload of the TLS material: calls under way finish on the old ones).
    pub fn forget_connections(&self) {
        self.channels.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.snapshot_channels.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// A client of the node-to-node service at `address`.
    pub fn cluster(&self, address: &str) -> Result<ClusterClient<Channel>, String> {
        Ok(ClusterClient::new(self.channel(address)?)
            .max_decoding_message_size(MAX_NODE_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_NODE_MESSAGE_BYTES))
    }

    /// A client of the node-to-node service at `address` for sending snapshots, on a
    /// connection of its own.
    pub fn snapshots(&self, address: &str) -> Result<ClusterClient<Channel>, String> {
        Ok(ClusterClient::new(self.channel_in(&self.snapshot_channels, address)?)
            .max_decoding_message_size(MAX_NODE_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_NODE_MESSAGE_BYTES))
    }

    /// A client of the storage service at `address`.
    pub fn tikv(&self, address: &str) -> Result<TikvClient<Channel>, String> {
        Ok(TikvClient::new(self.channel(address)?)
            .max_decoding_message_size(MAX_NODE_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_NODE_MESSAGE_BYTES))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_directory_keeps_a_bounded_number_of_stores_placement_does_not_know() {
        let placement = Arc::new(RwLock::new(PlacementState::empty(1)));
        let directory = Directory::new(placement);
        for store in 1..=(MAX_UNKNOWN_STORES as u64 + 10) {
            directory.heard_from(store, &format!("10.0.0.1:{store}"));
        }
        assert_eq!(directory.address(1).as_deref(), Some("10.0.0.1:1"));
        let last = MAX_UNKNOWN_STORES as u64 + 10;
        assert_eq!(directory.address(last), None, "past the bound");
        assert_eq!(directory.heard.lock().unwrap().len(), MAX_UNKNOWN_STORES);
        directory.heard_from(1, "10.0.0.2:1");
        assert_eq!(directory.address(1).as_deref(), Some("10.0.0.2:1"), "a known one moves");
    }
}
