//! Vocabulary shared by every Scandium crate: keys and their encodings, timestamps,
//! identifiers and the metadata records (Regions, peers, stores) that the placement
//! group and the raftstore both persist.
//!
//! Nothing here does I/O. Metadata records derive `prost::Message`, so what is on disk
//! is protobuf and can grow new fields without a migration.

pub mod codec;
pub mod keyspace;
pub mod meta;
pub mod mvcc;
pub mod timestamp;

pub use meta::{Peer, PeerRole, Region, RegionEpoch, Store, StoreLabel, StoreState};
pub use timestamp::TimeStamp;

/// Identifies a Region: a contiguous key range and the Raft group that replicates it.
pub type RegionId = u64;
/// Identifies one replica of a Region (a Raft peer). Never zero: raft-rs reserves 0.
pub type PeerId = u64;
/// Identifies a node's storage (one per `scandium server` process).
pub type StoreId = u64;

/// Largest key a client may write, in bytes; TiKV's `max_key_size` default.
pub const MAX_KEY_SIZE: usize = 8 * 1024;
