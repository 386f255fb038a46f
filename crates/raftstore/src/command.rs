//! What a data Region's Raft log carries: [`RaftCommand`]s, written by the layers above and
//! applied here.
//!
//! A command is either a batch of writes to the data column families, computed by the
//! caller against a snapshot while it held latches on the keys, or an admin command (a
//! split, or one of the three steps of a merge, which the `merge` module carries out).
//! Commands carry the Region epoch they were proposed under; apply re-checks them so a
//! write that raced a split or a merge never lands outside its Region.

use scandium_storage::{Cf, WriteBatch};
use scandium_types::{Region, RegionEpoch};

/// One change to a data column family.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteOp {
    /// Column family, as [`cf_code`] encodes it.
    #[prost(uint32, tag = "1")]
    pub cf: u32,
    /// Delete instead of put.
    #[prost(bool, tag = "2")]
    pub delete: bool,
    /// Key written.
    #[prost(bytes = "vec", tag = "3")]
    pub key: Vec<u8>,
    /// Value (empty for deletes).
    #[prost(bytes = "vec", tag = "4")]
    pub value: Vec<u8>,
}

/// One cut of a split: the Region is cut at `split_key`, and the piece from there to the
/// next cut (or the Region's end) becomes a new Region.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SplitRequest {
    /// First key of the new Region (unencoded).
    #[prost(bytes = "vec", tag = "1")]
    pub split_key: Vec<u8>,
    /// Id of the new Region, allocated by placement beforehand.
    #[prost(uint64, tag = "2")]
    pub new_region_id: u64,
    /// Peer ids of the new Region, one per existing peer, in the order of the peers.
    #[prost(uint64, repeated, tag = "3")]
    pub new_peer_ids: Vec<u64>,
}

impl SplitRequest {
    /// Ids a split of a Region of `peers` replicas at `cuts` keys takes from placement's
    /// allocator: a Region id and one id per replica for each new Region.
    pub fn ids_needed(cuts: usize, peers: usize) -> u64 {
        cuts as u64 * (1 + peers as u64)
    }

    /// The cuts at `keys` of a Region of `peers` replicas, numbered from `first_id` (the
    /// first of [`SplitRequest::ids_needed`] ids placement allocated).
    pub fn cuts(keys: &[Vec<u8>], peers: usize, first_id: u64) -> Vec<SplitRequest> {
        let per_cut = SplitRequest::ids_needed(1, peers);
        (keys.iter().zip(0..))
            .map(|(key, i)| {
                let new_region_id = first_id + i * per_cut;
                SplitRequest {
                    split_key: key.clone(),
                    new_region_id,
                    new_peer_ids: (1..per_cut).map(|p| new_region_id + p).collect(),
                }
            })
            .collect()
    }
}

/// Freezes the source to merge it into `target`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PrepareMerge {
    /// The target as the leader saw it: the commit applies only at this epoch.
    #[prost(message, optional, tag = "1")]
    pub target: Option<Region>,
    /// Every source replica's log holds the entries up to here (the least matched index).
    #[prost(uint64, tag = "2")]
    pub min_index: u64,
}

/// A normal entry of the source's log, carried in a commit for replicas that lack it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MergeEntry {
    /// Its index.
    #[prost(uint64, tag = "1")]
    pub index: u64,
    /// Its term.
    #[prost(uint64, tag = "2")]
    pub term: u64,
    /// Its data (a [`RaftCommand`], or empty).
    #[prost(bytes = "vec", tag = "3")]
    pub data: Vec<u8>,
}

/// Absorbs a frozen source into the target (in the target's log).
#[derive(Clone, PartialEq, prost::Message)]
pub struct CommitMerge {
    /// The source as frozen by its prepare.
    #[prost(message, optional, tag = "1")]
    pub source: Option<Region>,
    /// The index of the source's prepare.
    #[prost(uint64, tag = "2")]
    pub commit: u64,
    /// The source's entries after its `min_index`, up to `commit`.
    #[prost(message, repeated, tag = "3")]
    pub entries: Vec<MergeEntry>,
}

/// Thaws a frozen source (in its own log).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RollbackMerge {
    /// The index of the prepare it undoes.
    #[prost(uint64, tag = "1")]
    pub commit: u64,
}

/// An entry in a data Region's log.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RaftCommand {
    /// Region the command was proposed to.
    #[prost(uint64, tag = "1")]
    pub region_id: u64,
    /// Epoch at proposal (see `RegionEpoch::conf_ver`).
    #[prost(uint64, tag = "2")]
    pub conf_ver: u64,
    /// Epoch at proposal (see `RegionEpoch::version`).
    #[prost(uint64, tag = "3")]
    pub version: u64,
    /// Data writes, applied atomically.
    #[prost(message, repeated, tag = "4")]
    pub writes: Vec<WriteOp>,
    /// Admin command splitting the Region at each cut, in ascending key order, in one
    /// step: the original keeps `[start, first cut)`, each cut starts a new Region. When
    /// set, `writes` is empty. (The field held one optional cut before splits took many;
    /// as a repeated field it reads such entries back as a list of one.)
    #[prost(message, repeated, tag = "5")]
    pub splits: Vec<SplitRequest>,
    /// Admin command freezing the Region (the source) to merge it into a neighbour.
    #[prost(message, optional, boxed, tag = "6")]
    pub prepare_merge: Option<Box<PrepareMerge>>,
    /// Admin command, in the target's log, absorbing a source frozen by its
    /// `prepare_merge`; the command's epoch is the target's.
    #[prost(message, optional, boxed, tag = "7")]
    pub commit_merge: Option<Box<CommitMerge>>,
    /// Admin command, in the source's log, thawing it: the merge cannot commit any more.
    #[prost(message, optional, boxed, tag = "8")]
    pub rollback_merge: Option<Box<RollbackMerge>>,
}

impl RaftCommand {
    /// A command writing `batch` to `region`. The batch may only touch data column families.
    pub fn write(region: &Region, batch: WriteBatch) -> RaftCommand {
        RaftCommand::write_at(region.id, region.epoch(), batch)
    }

    /// A command writing `batch` to Region `region_id`, refused at apply unless the
    /// Region is still at `epoch`.
    pub fn write_at(region_id: u64, epoch: RegionEpoch, batch: WriteBatch) -> RaftCommand {
        let writes = batch
            .into_mutations()
            .into_iter()
            .map(|m| match m {
                scandium_storage::Mutation::Put { cf, key, value } => {
                    WriteOp { cf: cf_code(cf), delete: false, key, value }
                }
                scandium_storage::Mutation::Delete { cf, key } => {
                    WriteOp { cf: cf_code(cf), delete: true, key, value: Vec::new() }
                }
            })
            .collect();
        RaftCommand {
            region_id,
            conf_ver: epoch.conf_ver,
            version: epoch.version,
            writes,
            ..Default::default()
        }
    }

    /// A command splitting `region` at each of `cuts` (in ascending key order).
    pub fn split(region: &Region, cuts: Vec<SplitRequest>) -> RaftCommand {
        RaftCommand {
            region_id: region.id,
            conf_ver: region.conf_ver,
            version: region.version,
            splits: cuts,
            ..Default::default()
        }
    }

    /// Whether this is a split (rather than a write).
    pub fn is_split(&self) -> bool {
        !self.splits.is_empty()
    }

    /// Whether this is an admin command (a split or a merge step) rather than a write.
    pub fn is_admin(&self) -> bool {
        self.is_split()
            || self.prepare_merge.is_some()
            || self.commit_merge.is_some()
            || self.rollback_merge.is_some()
    }

    /// The command's writes as (column family, key, value, delete), for observers of
    /// applied commands; writes to a column family this build does not know (which apply
    /// refuses) are left out.
    pub fn data_writes(&self) -> impl Iterator<Item = (Cf, &[u8], &[u8], bool)> {
        self.writes.iter().filter_map(|op| {
            Some((cf_from_code(op.cf)?, op.key.as_slice(), op.value.as_slice(), op.delete))
        })
    }
}

/// A data command together with its encoding, made once by the proposer: the encoding
/// goes into the Raft log, and when the entry commits on the node that proposed it the
/// command is applied as it is, without decoding the entry back (decoding copies every key
/// and value, and was ~5% of the node's CPU under transactional load).
pub struct EncodedCommand {
    pub(crate) command: RaftCommand,
    pub(crate) data: Vec<u8>,
}

impl EncodedCommand {
    /// Encodes `command`.
    pub fn new(command: RaftCommand) -> EncodedCommand {
        let data = prost::Message::encode_to_vec(&command);
        EncodedCommand { command, data }
    }
}

/// Stable wire code of a data column family. Raft logs outlive binaries, so these numbers
/// never change.
pub fn cf_code(cf: Cf) -> u32 {
    match cf {
        Cf::Raw => 1,
        Cf::Default => 2,
        Cf::Lock => 3,
        Cf::Write => 4,
        Cf::Latest => 5,
        Cf::RawLock => 6,
        Cf::RawWrite => 7,
        Cf::RaftLog | Cf::RaftState | Cf::Placement | Cf::Staging => {
            panic!("{cf:?} is not a data column family and is never written by commands")
        }
    }
}

/// Inverse of [`cf_code`]; `None` for anything that is not a data column family.
pub fn cf_from_code(code: u32) -> Option<Cf> {
    match code {
        1 => Some(Cf::Raw),
        2 => Some(Cf::Default),
        3 => Some(Cf::Lock),
        4 => Some(Cf::Write),
        5 => Some(Cf::Latest),
        6 => Some(Cf::RawLock),
        7 => Some(Cf::RawWrite),
        _ => None,
    }
}
