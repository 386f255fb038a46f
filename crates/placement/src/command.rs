//! Commands of the placement group's log and their responses.

use scandium_types::{Region, Store};

/// A Region as its leader reports it: its shape and who leads it, at which term.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RegionReport {
    /// The Region.
    #[prost(message, optional, tag = "1")]
    pub region: Option<Region>,
    /// Peer id of the leader.
    #[prost(uint64, tag = "2")]
    pub leader_peer_id: u64,
    /// The leader's term; a report of an older term does not replace a newer one.
    #[prost(uint64, tag = "3")]
    pub term: u64,
}

impl RegionReport {
    /// The store of the reporting leader (0 if it is not among the Region's peers).
    pub fn leader_store(&self) -> scandium_types::StoreId {
        let leader = self.region.as_ref().and_then(|r| r.peer(self.leader_peer_id));
        leader.map_or(0, |p| p.store_id)
    }
}

/// Regions' shapes and leaders, reported together.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Reports {
    /// The reports.
    #[prost(message, repeated, tag = "1")]
    pub reports: Vec<RegionReport>,
}

/// A change of a store's lifecycle state.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoreStateChange {
    /// The store.
    #[prost(uint64, tag = "1")]
    pub store_id: u64,
    /// The new `StoreState`.
    #[prost(enumeration = "scandium_types::StoreState", tag = "2")]
    pub state: i32,
}

/// A change to the placement state. Encoded with protobuf into the placement group's log.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Command {
    /// The change.
    #[prost(oneof = "Kind", tags = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14")]
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
    /// Records Regions' shapes as `PutRegions` does, and their leaders (a report of an
    /// older term is ignored for the leader).
    #[prost(message, tag = "7")]
    ReportRegions(Reports),
    /// Admits a new store: allocates its id and records it with the given address.
    #[prost(message, tag = "8")]
    JoinStore(Store),
    /// Changes a store's state (`Offline` drains it; `Tombstone` retires it for good).
    #[prost(message, tag = "9")]
    SetStoreState(StoreStateChange),
    /// Sets how many voters every data Region should have.
    #[prost(uint64, tag = "10")]
    SetReplicas(u64),
    /// Records when stores were last heard from (never moving a time back).
    #[prost(message, tag = "11")]
    StoresSeen(StoresSeen),
    /// Sets the scheduler's settings for the whole cluster (`scandium ctl scheduler`).
    #[prost(message, tag = "12")]
    SetScheduler(SchedulerSettings),
    /// Replaces what one client identity may do (`scandium ctl grant`); a grant of
    /// nothing removes the identity's entry.
    #[prost(message, tag = "13")]
    SetGrant(Grant),
    /// Turns authorisation by grants on or off for the whole cluster.
    #[prost(bool, tag = "14")]
    SetAuthorization(bool),
}

/// What a client may do with one key space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, prost::Enumeration)]
#[repr(i32)]
pub enum Access {
    /// Nothing: requests touching the space are refused.
    None = 0,
    /// Reads only.
    Read = 1,
    /// Reads and writes.
    ReadWrite = 2,
}

impl Access {
    /// Whether this access allows a request that reads (`write` false) or writes.
    pub fn allows(self, write: bool) -> bool {
        match self {
            Access::None => false,
            Access::Read => !write,
            Access::ReadWrite => true,
        }
    }

    /// The name `scandium ctl` shows and takes.
    pub fn name(self) -> &'static str {
        match self {
            Access::None => "none",
            Access::Read => "read",
            Access::ReadWrite => "write",
        }
    }
}

/// What one client identity (a certificate's common name) may do once authorisation is
/// on. Kept in the placement state, so every node checks the same grants, and a change
/// is a command of the placement group's log like any other.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Grant {
    /// The identity: a client certificate's common name, compared exactly.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Cluster operations (splits, leader transfers, store states, the GC safe point,
    /// scheduler settings, grants) and every key space.
    #[prost(bool, tag = "2")]
    pub admin: bool,
    /// The API V1 raw key space: raw keys outside every keyspace's range.
    #[prost(enumeration = "Access", tag = "3")]
    pub raw_v1: i32,
    /// The API V1 transactional key space: transactional keys outside every keyspace's
    /// range.
    #[prost(enumeration = "Access", tag = "4")]
    pub txn_v1: i32,
    /// Keyspaces (API V2), each with both its raw and its transactional keys.
    #[prost(message, repeated, tag = "5")]
    pub keyspaces: Vec<KeyspaceAccess>,
}

impl Grant {
    /// The most identities with a grant.
    pub const MAX_GRANTS: usize = 4096;
    /// The most keyspaces one grant names.
    pub const MAX_KEYSPACES: usize = 1024;
    /// The longest identity name.
    pub const MAX_NAME_LEN: usize = 64;

    /// Whether the grant allows nothing at all (setting it removes the identity's entry).
    pub fn is_empty(&self) -> bool {
        !self.admin
            && self.raw_v1() == Access::None
            && self.txn_v1() == Access::None
            && self.keyspaces.iter().all(|k| k.access() == Access::None)
    }

    /// What it allows on keyspace `id`.
    pub fn keyspace(&self, id: u32) -> Access {
        self.keyspaces.iter().find(|k| k.keyspace_id == id).map_or(Access::None, |k| k.access())
    }
}

/// A grant's access to one keyspace.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct KeyspaceAccess {
    /// The keyspace's id.
    #[prost(uint32, tag = "1")]
    pub keyspace_id: u32,
    /// What the grant allows there.
    #[prost(enumeration = "Access", tag = "2")]
    pub access: i32,
}

/// The scheduler's settings for the whole cluster, changed at runtime: each placement
/// leader schedules by the ones in the log, so they survive a change of leader.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct SchedulerSettings {
    /// Replicas are not moved to even out the stores (repair goes on).
    #[prost(bool, tag = "1")]
    pub replicas_paused: bool,
    /// Leaders are not moved to even out the stores.
    #[prost(bool, tag = "2")]
    pub leaders_paused: bool,
    /// Balancing moves under way at once at most, of replicas and of leaders each; 0: the
    /// placement leader's own `balance_limit` setting.
    #[prost(uint32, tag = "3")]
    pub balance_limit: u32,
    /// Hot Regions' leaders are not moved to even out the stores' traffic.
    #[prost(bool, tag = "4")]
    pub hot_paused: bool,
    /// Replica moves each store may take part in a minute; 0: the placement leader's own
    /// `store_limit_per_minute` setting.
    #[prost(uint32, tag = "5")]
    pub store_limit: u32,
    /// The isolation levels, outermost first; unset: the placement leader's own
    /// `location_labels`. One list for the cluster, so that a change of placement leader
    /// never changes where replicas belong.
    #[prost(message, optional, tag = "6")]
    pub location_labels: Option<LocationLabels>,
    /// Stores with a limit of their own on replica moves a minute, in place of
    /// `store_limit` (PD's `store limit STORE RATE`): a slow or busy store takes fewer.
    #[prost(message, repeated, tag = "7")]
    pub store_limits: Vec<StoreLimit>,
    /// Regions no larger than this (bytes) merge with a neighbour as small; 0: the
    /// placement leader's own `merge_max_size`.
    #[prost(uint64, tag = "8")]
    pub merge_max_size: u64,
    /// Regions with no more user records than this merge; 0: the placement leader's own
    /// `merge_max_keys`.
    #[prost(uint64, tag = "9")]
    pub merge_max_keys: u64,
    /// Milliseconds a Region's shape must stand (after a split, say) before it merges;
    /// 0: the placement leader's own `split_merge_interval`.
    #[prost(uint64, tag = "10")]
    pub split_merge_interval_ms: u64,
    /// No merge starts.
    #[prost(bool, tag = "11")]
    pub merges_paused: bool,
}

impl SchedulerSettings {
    /// The most stores with a limit of their own.
    pub const MAX_STORE_LIMITS: usize = 1024;

    /// The limit `store` has of its own, if it has one.
    pub fn limit_of(&self, store: u64) -> Option<u32> {
        self.store_limits.iter().find(|l| l.store_id == store).map(|l| l.moves_per_minute)
    }
}

/// The isolation levels of the whole cluster (`zone`, `host`).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct LocationLabels {
    /// Label names, outermost first; empty: replicas are placed without regard to labels.
    #[prost(string, repeated, tag = "1")]
    pub levels: Vec<String>,
}

/// One store's own limit on balancing replica moves.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct StoreLimit {
    /// The store.
    #[prost(uint64, tag = "1")]
    pub store_id: u64,
    /// Replica moves it may take part in (as source or target) a minute; 0: none, so
    /// balancing leaves the store alone (repair does not).
    #[prost(uint32, tag = "2")]
    pub moves_per_minute: u32,
}

/// When stores were last heard from, by the placement leader's wall clock.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoresSeen {
    /// One per store heard from since the last record.
    #[prost(message, repeated, tag = "1")]
    pub seen: Vec<StoreSeen>,
}

/// When one store was last heard from.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoreSeen {
    /// The store.
    #[prost(uint64, tag = "1")]
    pub store_id: u64,
    /// Wall-clock milliseconds of its last heartbeat.
    #[prost(uint64, tag = "2")]
    pub wall_ms: u64,
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
    /// The command could not be decoded, or is refused; nothing changed.
    Invalid(String),
}

/// [`Response`] on the wire, for commands forwarded to the placement leader.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ResponseRecord {
    /// What the response is.
    #[prost(uint32, tag = "1")]
    pub kind: u32,
    /// Its number, if any.
    #[prost(uint64, tag = "2")]
    pub value: u64,
    /// Its message, if any.
    #[prost(string, tag = "3")]
    pub message: String,
}

impl From<&Response> for ResponseRecord {
    fn from(response: &Response) -> ResponseRecord {
        let (kind, value, message) = match response {
            Response::Done => (0, 0, String::new()),
            Response::Ids { first } => (1, *first, String::new()),
            Response::TsoLimit(limit) => (2, *limit, String::new()),
            Response::GcSafePoint(ts) => (3, *ts, String::new()),
            Response::StaleRegion => (4, 0, String::new()),
            Response::Invalid(reason) => (5, 0, reason.clone()),
        };
        ResponseRecord { kind, value, message }
    }
}

impl From<ResponseRecord> for Response {
    fn from(record: ResponseRecord) -> Response {
        match record.kind {
            0 => Response::Done,
            1 => Response::Ids { first: record.value },
            2 => Response::TsoLimit(record.value),
            3 => Response::GcSafePoint(record.value),
            4 => Response::StaleRegion,
            _ => Response::Invalid(record.message),
        }
    }
}
