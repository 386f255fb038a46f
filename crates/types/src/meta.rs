//! Cluster metadata records: stores, Regions, their peers and epochs.
//!
//! These are persisted by the raftstore (each peer's own view of its Region) and by the
//! placement group (the cluster-wide view). They derive `prost::Message` so the on-disk
//! format is protobuf. Region boundaries here are unencoded keys; the placement API
//! encodes them for clients that expect memcomparable keys.

use crate::{PeerId, RegionId, StoreId};
use std::cmp::Ordering;

/// Versions of a Region's shape. `version` grows on every split or merge, `conf_ver` on every
/// membership change; a request made against an older epoch is refused with
/// `EpochNotMatch`, which is how clients learn that their cached Region is stale.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RegionEpoch {
    /// Grows on membership changes.
    pub conf_ver: u64,
    /// Grows on splits and merges.
    pub version: u64,
}

impl RegionEpoch {
    /// Whether `self` is older than `other` in either component, the condition under which
    /// a heartbeat or request carrying `self` is stale.
    pub fn is_stale_against(&self, other: &RegionEpoch) -> bool {
        self.conf_ver < other.conf_ver || self.version < other.version
    }
}

/// What a replica does in its Raft group, with kvproto's `PeerRole` numbering. Records
/// written before roles existed decode as voters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, prost::Enumeration)]
#[repr(i32)]
pub enum PeerRole {
    /// Votes and counts towards the quorum.
    Voter = 0,
    /// Receives the log but neither votes nor counts: how a new replica catches up before
    /// it is promoted.
    Learner = 1,
    /// A voter of the incoming configuration only, while a joint change is in progress.
    IncomingVoter = 2,
    /// A voter of the outgoing configuration only, while a joint change is in progress.
    DemotingVoter = 3,
}

/// One replica of a Region, living on a store.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct Peer {
    /// Raft id of this replica; unique in the cluster.
    #[prost(uint64, tag = "1")]
    pub id: PeerId,
    /// Store the replica lives on.
    #[prost(uint64, tag = "2")]
    pub store_id: StoreId,
    /// See [`PeerRole`].
    #[prost(enumeration = "PeerRole", tag = "3")]
    pub role: i32,
}

impl Peer {
    /// A voter `id` on `store_id`.
    pub fn new(id: PeerId, store_id: StoreId) -> Peer {
        Peer { id, store_id, role: PeerRole::Voter as i32 }
    }

    /// A learner `id` on `store_id`.
    pub fn learner(id: PeerId, store_id: StoreId) -> Peer {
        Peer { id, store_id, role: PeerRole::Learner as i32 }
    }

    /// Whether the replica is a learner (receives the log, does not vote).
    pub fn is_learner(&self) -> bool {
        self.role() == PeerRole::Learner
    }
}

/// A contiguous key range `[start_key, end_key)` and the Raft group replicating it. An empty
/// `end_key` means "to the end of the key space".
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Region {
    /// Cluster-unique id; also the Raft group id.
    #[prost(uint64, tag = "1")]
    pub id: RegionId,
    /// Inclusive start key (unencoded).
    #[prost(bytes = "vec", tag = "2")]
    pub start_key: Vec<u8>,
    /// Exclusive end key (unencoded); empty means unbounded.
    #[prost(bytes = "vec", tag = "3")]
    pub end_key: Vec<u8>,
    /// See [`RegionEpoch::conf_ver`].
    #[prost(uint64, tag = "4")]
    pub conf_ver: u64,
    /// See [`RegionEpoch::version`].
    #[prost(uint64, tag = "5")]
    pub version: u64,
    /// Replicas of this Region.
    #[prost(message, repeated, tag = "6")]
    pub peers: Vec<Peer>,
}

impl Region {
    /// The Region's epoch.
    pub fn epoch(&self) -> RegionEpoch {
        RegionEpoch { conf_ver: self.conf_ver, version: self.version }
    }

    /// Whether `key` lies in `[start_key, end_key)`.
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start_key.as_slice()
            && (self.end_key.is_empty() || key < self.end_key.as_slice())
    }

    /// Compares `key` with the range: `Less` if before it, `Greater` if at or after its end.
    pub fn position_of(&self, key: &[u8]) -> Ordering {
        if key < self.start_key.as_slice() {
            Ordering::Less
        } else if !self.end_key.is_empty() && key >= self.end_key.as_slice() {
            Ordering::Greater
        } else {
            Ordering::Equal
        }
    }

    /// The peer of this Region on `store_id`, if any.
    pub fn peer_on_store(&self, store_id: StoreId) -> Option<&Peer> {
        self.peers.iter().find(|p| p.store_id == store_id)
    }

    /// The peer with Raft id `id`, if it is a member.
    pub fn peer(&self, id: PeerId) -> Option<&Peer> {
        self.peers.iter().find(|p| p.id == id)
    }

    /// The members that vote (in either half of a joint configuration).
    pub fn voters(&self) -> impl Iterator<Item = &Peer> {
        self.peers.iter().filter(|p| !p.is_learner())
    }
}

/// Lifecycle of a store, with kvproto's `StoreState` numbering.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, prost::Enumeration)]
#[repr(i32)]
pub enum StoreState {
    /// Serving.
    Up = 0,
    /// Being drained before removal.
    Offline = 1,
    /// Removed; never comes back.
    Tombstone = 2,
}

/// A node's storage as the cluster knows it.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Store {
    /// Cluster-unique id.
    #[prost(uint64, tag = "1")]
    pub id: StoreId,
    /// Address clients and peers use: gRPC and HTTP on one port.
    #[prost(string, tag = "2")]
    pub address: String,
    /// See [`StoreState`].
    #[prost(enumeration = "StoreState", tag = "3")]
    pub state: i32,
    /// Version of the `scandium` binary that last started the store.
    #[prost(string, tag = "4")]
    pub version: String,
    /// Unix seconds when the store last started.
    #[prost(int64, tag = "5")]
    pub start_timestamp: i64,
    /// Wall-clock milliseconds of the store's last heartbeat, as a placement leader last
    /// recorded it (every few seconds): what a new placement leader judges a store it has
    /// not heard from yet by, so that a store that died before the leader changed still
    /// comes to count as down.
    #[prost(uint64, tag = "6")]
    pub last_heartbeat_ms: u64,
    /// Where the store is (`zone`, `rack`, `host`...), as its node was started with
    /// (`--labels`): placement spreads a Region's replicas over distinct values.
    #[prost(message, repeated, tag = "7")]
    pub labels: Vec<StoreLabel>,
}

/// One label of a store.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct StoreLabel {
    /// The label's name (`zone`).
    #[prost(string, tag = "1")]
    pub key: String,
    /// Its value for this store (`z1`).
    #[prost(string, tag = "2")]
    pub value: String,
}

impl Store {
    /// The value of label `key` (empty if the store has none).
    pub fn label(&self, key: &str) -> &str {
        self.labels.iter().find(|l| l.key == key).map_or("", |l| l.value.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(start: &[u8], end: &[u8]) -> Region {
        Region { id: 1, start_key: start.to_vec(), end_key: end.to_vec(), ..Default::default() }
    }

    #[test]
    fn containment() {
        let r = region(b"b", b"d");
        assert!(!r.contains(b"a"));
        assert!(r.contains(b"b"));
        assert!(r.contains(b"c\xff"));
        assert!(!r.contains(b"d"));
        let open = region(b"b", b"");
        assert!(open.contains(b"zzz"));
        assert_eq!(open.position_of(b"a"), Ordering::Less);
    }

    #[test]
    fn stale_epochs() {
        let cur = RegionEpoch { conf_ver: 2, version: 5 };
        assert!(RegionEpoch { conf_ver: 2, version: 4 }.is_stale_against(&cur));
        assert!(RegionEpoch { conf_ver: 1, version: 5 }.is_stale_against(&cur));
        assert!(!cur.is_stale_against(&cur));
    }
}
