//! Commands of the placement group's log and their responses.

use scandium_types::{Region, Store};

/// A change to the placement state. Encoded with protobuf into the placement group's log.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Command {
    /// The change.
    #[prost(oneof = "Kind", tags = "1, 2, 3, 4, 5, 6")]
    pub kind: Option<Kind>,
}

/// What a [`Command`] does.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Kind {
    /// Records a store (on every start: address and version may change).
    #[prost(message, tag = "1")]
    PutStore(Store),
    /// Records a Region's new shape, as its leader reports it (after a split). Ignored
    /// if placement already knows a newer epoch. The node now sends `PutRegions`; this
    /// stays for logs written before it.
    #[prost(message, tag = "2")]
    PutRegion(Region),
    /// Reserves `count` consecutive ids.
    #[prost(uint64, tag = "3")]
    AllocIds(u64),
    /// Raises the timestamp high-water mark (milliseconds); never lowers it.
    #[prost(uint64, tag = "4")]
    RaiseTsoLimit(u64),
    /// Raises the GC safe point; never lowers it.
    #[prost(uint64, tag = "5")]
    UpdateGcSafePoint(u64),
    /// Records several Regions at once, each as `PutRegion` does: the two halves of a
    /// split, so no lookup ever falls between them (one half alone replaces the old
    /// Region it overlaps and leaves the other half's keys without a Region).
    #[prost(message, tag = "6")]
    PutRegions(Regions),
}

/// Regions reported together.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Regions {
    /// In the order they are recorded.
    #[prost(message, repeated, tag = "1")]
    pub regions: Vec<Region>,
}

impl Command {
    /// Wraps a kind.
    pub fn new(kind: Kind) -> Command {
        Command { kind: Some(kind) }
    }
}

/// What applying a [`Command`] returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// The command was applied (or was a no-op).
    Done,
    /// The first of the reserved ids.
    Ids {
        /// First reserved id; the reservation is `first..first + count`.
        first: u64,
    },
    /// The high-water mark after the command.
    TsoLimit(u64),
    /// The GC safe point after the command.
    GcSafePoint(u64),
    /// The Region report was older than what placement knows, and was ignored.
    StaleRegion,
    /// The command could not be decoded; nothing changed.
    Invalid(String),
}
