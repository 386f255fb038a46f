//! Raft snapshots of a Region: how they are taken, carried and installed.
//!
//! raft-rs asks for a snapshot ([`raft::Storage::snapshot`]) when a follower needs entries
//! the leader's log no longer holds. The snapshot raft-rs carries is small: its metadata
//! (index, term, configuration) and a [`SnapshotHeader`] naming the Region as of that
//! index and a token. The data itself stays behind, as one consistent engine snapshot taken
//! at that moment (the engine then holds exactly the applied state), registered in
//! [`SnapshotSources`] under the token. The transport takes it from there and streams the
//! Region's records in bounded [`SnapshotChunk`]s ([`for_each_chunk`]); the receiver
//! assembles them ([`SnapshotAssembler`]) and hands them to its store with the Raft
//! message, and the store installs data, log position, configuration and Region in one
//! write batch, so a crash leaves the replica either as it was or fully installed.

use crate::command::{cf_code, cf_from_code};
use scandium_storage::{Cf, Snapshot, StorageError, WriteBatch};
use scandium_types::codec::encode_bytes;
use scandium_types::Region;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// What a Raft snapshot's `data` holds.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapshotHeader {
    /// The Region as of the snapshot's index.
    #[prost(message, optional, tag = "1")]
    pub region: Option<Region>,
    /// Key of the engine snapshot in the sender's [`SnapshotSources`].
    #[prost(uint64, tag = "2")]
    pub token: u64,
}

/// One record of a snapshot.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapshotEntry {
    /// Column family, as [`cf_code`] encodes it (placement records use code 100).
    #[prost(uint32, tag = "1")]
    pub cf: u32,
    /// Key.
    #[prost(bytes = "vec", tag = "2")]
    pub key: Vec<u8>,
    /// Value.
    #[prost(bytes = "vec", tag = "3")]
    pub value: Vec<u8>,
}

/// A bounded piece of a snapshot's records, as the transport sends it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapshotChunk {
    /// Records, in column family and key order.
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<SnapshotEntry>,
}

/// Wire code of the placement column family in snapshots of the placement group (it is
/// never written by data commands, so it has no [`cf_code`]).
const PLACEMENT_CODE: u32 = 100;

fn snapshot_cf_code(cf: Cf) -> u32 {
    if cf == Cf::Placement {
        PLACEMENT_CODE
    } else {
        cf_code(cf)
    }
}

fn snapshot_cf(code: u32) -> Option<Cf> {
    if code == PLACEMENT_CODE {
        Some(Cf::Placement)
    } else {
        cf_from_code(code)
    }
}

/// The key ranges, per column family, that hold a Region's records: the data column
/// families over its range (versioned column families over the encoded range), or for the
/// placement group the whole placement column family.
pub fn data_ranges(region: &Region) -> Vec<(Cf, Vec<u8>, Vec<u8>)> {
    if region.id == crate::META_GROUP_ID {
        return vec![(Cf::Placement, Vec::new(), Vec::new())];
    }
    Cf::DATA
        .iter()
        .map(|&cf| match cf {
            Cf::Write | Cf::Default => {
                let end = if region.end_key.is_empty() {
                    Vec::new()
                } else {
                    encode_bytes(&region.end_key)
                };
                (cf, encode_bytes(&region.start_key), end)
            }
            _ => (cf, region.start_key.clone(), region.end_key.clone()),
        })
        .collect()
}

/// Reads `region`'s records from `snapshot` in chunks of about `max_chunk_bytes`, handing
/// each to `send`; stops early (returning `Ok(false)`) when `send` returns `false`.
pub fn for_each_chunk(
    region: &Region,
    snapshot: &dyn Snapshot,
    max_chunk_bytes: usize,
    mut send: impl FnMut(SnapshotChunk) -> bool,
) -> Result<bool, StorageError> {
    let mut chunk = SnapshotChunk::default();
    let mut bytes = 0;
    for (cf, start, end) in data_ranges(region) {
        for item in snapshot.scan(cf, &start, &end, false) {
            let (key, value) = item?;
            bytes += key.len() + value.len() + 8;
            chunk.entries.push(SnapshotEntry { cf: snapshot_cf_code(cf), key, value });
            if bytes >= max_chunk_bytes {
                if !send(std::mem::take(&mut chunk)) {
                    return Ok(false);
                }
                bytes = 0;
            }
        }
    }
    Ok(send(chunk))
}

/// A snapshot's records as received, ready to install.
#[derive(Debug, Default)]
pub struct SnapshotData {
    /// Records, in the order they were sent.
    pub entries: Vec<(Cf, Vec<u8>, Vec<u8>)>,
}

/// Why a received snapshot was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    /// The snapshot is larger than the receiver accepts.
    #[error("snapshot exceeds {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// A record names a column family that snapshots do not carry.
    #[error("snapshot record in unknown column family {0}")]
    UnknownCf(u32),
    /// The stream ended before its end marker, or with fewer records than the marker
    /// announced: the transfer was cut short, and installing it would lose the rest.
    #[error("snapshot cut short: {received} records received, {}", match .announced {
        Some(n) => format!("{n} announced"),
        None => "and no end marker".to_string(),
    })]
    Incomplete {
        /// Records that arrived.
        received: usize,
        /// Records the sender's end marker announced, if one came.
        announced: Option<u64>,
    },
}

/// Collects chunks into [`SnapshotData`], refusing more than `limit` bytes in all.
pub struct SnapshotAssembler {
    data: SnapshotData,
    bytes: usize,
    limit: usize,
}

impl SnapshotAssembler {
    /// An empty assembly accepting up to `limit` bytes.
    pub fn new(limit: usize) -> SnapshotAssembler {
        SnapshotAssembler { data: SnapshotData::default(), bytes: 0, limit }
    }

    /// Adds a chunk.
    pub fn push(&mut self, chunk: SnapshotChunk) -> Result<(), SnapshotError> {
        for entry in chunk.entries {
            let cf = snapshot_cf(entry.cf).ok_or(SnapshotError::UnknownCf(entry.cf))?;
            self.bytes += entry.key.len() + entry.value.len();
            if self.bytes > self.limit {
                return Err(SnapshotError::TooLarge { limit: self.limit });
            }
            self.data.entries.push((cf, entry.key, entry.value));
        }
        Ok(())
    }

    /// The assembled records.
    pub fn finish(self) -> SnapshotData {
        self.data
    }

    /// The assembled records, if they are all the sender announced in its end marker
    /// (`None` when no marker came).
    pub fn finish_complete(self, announced: Option<u64>) -> Result<SnapshotData, SnapshotError> {
        let received = self.data.entries.len();
        match announced {
            Some(n) if n == received as u64 => Ok(self.data),
            _ => Err(SnapshotError::Incomplete { received, announced }),
        }
    }
}

/// Adds to `batch` what replaces the records of `old` (if it is initialized) and `new`'s
/// range in `local` with `data`: deletes of every record there, then the snapshot's
/// records.
pub fn install(
    local: &dyn Snapshot,
    old: Option<&Region>,
    new: &Region,
    data: SnapshotData,
    batch: &mut WriteBatch,
) -> Result<(), StorageError> {
    let mut ranges = data_ranges(new);
    if let Some(old) = old {
        ranges.extend(data_ranges(old));
    }
    for (cf, start, end) in ranges {
        for item in local.scan(cf, &start, &end, false) {
            batch.delete(cf, item?.0);
        }
    }
    for (cf, key, value) in data.entries {
        batch.put(cf, key, value);
    }
    Ok(())
}

/// Adds to `batch` the deletes of every record of `region` in `local` (a destroyed replica).
pub fn clear(
    local: &dyn Snapshot,
    region: &Region,
    batch: &mut WriteBatch,
) -> Result<(), StorageError> {
    for (cf, start, end) in data_ranges(region) {
        for item in local.scan(cf, &start, &end, false) {
            batch.delete(cf, item?.0);
        }
    }
    Ok(())
}

/// A digest of each of `region`'s column families (in [`data_ranges`] order) in
/// `snapshot`: replicas of a Region that have applied the same index must agree. FNV-1a
/// over every key and value in order, which is stable across builds and machines.
pub fn digests(region: &Region, snapshot: &dyn Snapshot) -> Result<Vec<u64>, StorageError> {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;
    let mix = |mut hash: u64, bytes: &[u8]| {
        for &b in (bytes.len() as u64).to_le_bytes().iter().chain(bytes) {
            hash = (hash ^ u64::from(b)).wrapping_mul(PRIME);
        }
        hash
    };
    let mut out = Vec::new();
    for (cf, start, end) in data_ranges(region) {
        let mut hash = OFFSET;
        for item in snapshot.scan(cf, &start, &end, false) {
            let (key, value) = item?;
            hash = mix(mix(hash, &key), &value);
        }
        out.push(hash);
    }
    Ok(out)
}

/// A replica's applied index and [`digests`], read from one engine snapshot: the apply
/// state is written in the batch of the data it covers, so the two always agree, and two
/// replicas at the same index must have the same digests (`scandium ctl
/// check-consistency` compares them).
pub fn replica_digest(
    region: &Region,
    snapshot: &dyn Snapshot,
) -> Result<(u64, Vec<u64>), StorageError> {
    use prost::Message as _;
    let applied = match snapshot.get(Cf::RaftState, &crate::keys::apply_state_key(region.id))? {
        Some(bytes) => {
            crate::state::ApplyState::decode(bytes.as_slice())
                .map_err(|e| StorageError::Corrupted { cf: Cf::RaftState, reason: e.to_string() })?
                .applied_index
        }
        None => 0,
    };
    Ok((applied, digests(region, snapshot)?))
}

/// How long an engine snapshot waits for the transport to take it.
const SOURCE_TTL_MS: u64 = 60_000;
/// Engine snapshots kept waiting at most; the oldest goes first.
const MAX_SOURCES: usize = 64;

struct Source {
    region: Region,
    snapshot: Box<dyn Snapshot>,
    created_ms: u64,
}

#[derive(Default)]
struct Sources {
    next_token: u64,
    by_token: HashMap<u64, Source>, // lookups only
}

/// Engine snapshots taken for outgoing Raft snapshots, until the transport streams them.
/// Shared between the store (which registers them) and the transport (which takes them).
#[derive(Clone, Default)]
pub struct SnapshotSources {
    inner: Arc<Mutex<Sources>>,
}

impl SnapshotSources {
    /// Registers an engine snapshot of `region` taken at `now_ms`; returns its token.
    pub fn register(&self, region: Region, snapshot: Box<dyn Snapshot>, now_ms: u64) -> u64 {
        let mut inner = self.lock();
        inner.by_token.retain(|_, s| s.created_ms + SOURCE_TTL_MS > now_ms);
        if inner.by_token.len() >= MAX_SOURCES {
            let oldest = inner.by_token.iter().min_by_key(|(_, s)| s.created_ms).map(|(t, _)| *t);
            if let Some(token) = oldest {
                inner.by_token.remove(&token);
            }
        }
        inner.next_token += 1;
        let token = inner.next_token;
        inner.by_token.insert(token, Source { region, snapshot, created_ms: now_ms });
        token
    }

    /// Takes the engine snapshot registered under `token`, with its Region.
    pub fn take(&self, token: u64) -> Option<(Region, Box<dyn Snapshot>)> {
        self.lock().by_token.remove(&token).map(|s| (s.region, s.snapshot))
    }

    /// How many are waiting.
    pub fn len(&self) -> usize {
        self.lock().by_token.len()
    }

    /// Whether none is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sources> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scandium_storage::{Engine, MemoryEngine};
    use scandium_types::mvcc::versioned_key;
    use scandium_types::TimeStamp;

    fn region(start: &[u8], end: &[u8]) -> Region {
        Region { id: 7, start_key: start.to_vec(), end_key: end.to_vec(), ..Default::default() }
    }

    fn engine_with(keys: &[(Cf, Vec<u8>)]) -> MemoryEngine {
        let engine = MemoryEngine::new();
        let mut batch = WriteBatch::new();
        for (cf, key) in keys {
            batch.put(*cf, key.clone(), b"v".to_vec());
        }
        engine.write(batch).unwrap();
        engine
    }

    #[test]
    fn a_transfer_cut_short_is_refused() {
        let keys: Vec<(Cf, Vec<u8>)> =
            (0..10).map(|i| (Cf::Raw, format!("k{i}").into_bytes())).collect();
        let engine = engine_with(&keys);
        let region = region(b"", b"");
        let mut chunks = Vec::new();
        for_each_chunk(&region, &*engine.snapshot(), 1, |chunk| {
            chunks.push(chunk);
            true
        })
        .unwrap();
        let sent: usize = chunks.iter().map(|c| c.entries.len()).sum();
        assert_eq!(sent, 10);
        let assemble = |chunks: &[SnapshotChunk]| {
            let mut assembler = SnapshotAssembler::new(1 << 20);
            for chunk in chunks {
                assembler.push(chunk.clone()).unwrap();
            }
            assembler
        };
        assert_eq!(assemble(&chunks).finish_complete(Some(10)).unwrap().entries.len(), 10);
        // No end marker: the stream stopped, whatever arrived.
        let error = assemble(&chunks).finish_complete(None).unwrap_err();
        assert_eq!(error, SnapshotError::Incomplete { received: 10, announced: None });
        assert!(error.to_string().contains("no end marker"), "{error}");
        let error = assemble(&chunks[..3]).finish_complete(Some(10)).unwrap_err();
        assert!(error.to_string().contains("3 records received, 10 announced"), "{error}");
    }

    #[test]
    fn chunks_carry_exactly_the_region_and_reassemble() {
        let inside = [
            (Cf::Raw, b"c".to_vec()),
            (Cf::RawLock, b"d".to_vec()),
            (Cf::Lock, b"c1".to_vec()),
            (Cf::Write, versioned_key(b"c2", TimeStamp(5))),
            (Cf::Default, versioned_key(b"dz", TimeStamp(9))),
            (Cf::Latest, b"c2".to_vec()),
        ];
        let outside = [
            (Cf::Raw, b"a".to_vec()),
            (Cf::Raw, b"e".to_vec()),
            (Cf::Write, versioned_key(b"e", TimeStamp(5))),
            (Cf::Write, versioned_key(b"b", TimeStamp(5))),
            (Cf::Placement, b"c".to_vec()),
        ];
        let engine = engine_with(&[&inside[..], &outside[..]].concat());
        let region = region(b"c", b"e");
        let mut assembler = SnapshotAssembler::new(1 << 20);
        let mut chunks = 0;
        let done = for_each_chunk(&region, &*engine.snapshot(), 16, |chunk| {
            chunks += 1;
            assembler.push(chunk).is_ok()
        })
        .unwrap();
        assert!(done);
        assert!(chunks > 1, "small chunks");
        let mut got: Vec<(Cf, Vec<u8>)> =
            assembler.finish().entries.into_iter().map(|(cf, k, _)| (cf, k)).collect();
        got.sort();
        let mut want = inside.to_vec();
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn install_replaces_what_the_range_held() {
        let engine = engine_with(&[(Cf::Raw, b"c".to_vec()), (Cf::Raw, b"x".to_vec())]);
        let data = SnapshotData { entries: vec![(Cf::Raw, b"d".to_vec(), b"new".to_vec())] };
        let mut batch = WriteBatch::new();
        install(&*engine.snapshot(), None, &region(b"c", b"e"), data, &mut batch).unwrap();
        engine.write(batch).unwrap();
        assert_eq!(engine.get(Cf::Raw, b"c").unwrap(), None);
        assert_eq!(engine.get(Cf::Raw, b"d").unwrap(), Some(b"new".to_vec()));
        assert_eq!(engine.get(Cf::Raw, b"x").unwrap(), Some(b"v".to_vec()), "outside the range");
    }

    #[test]
    fn assembly_is_bounded() {
        let mut assembler = SnapshotAssembler::new(10);
        let chunk = SnapshotChunk {
            entries: vec![SnapshotEntry {
                cf: cf_code(Cf::Raw),
                key: vec![1; 8],
                value: vec![2; 8],
            }],
        };
        assert_eq!(assembler.push(chunk), Err(SnapshotError::TooLarge { limit: 10 }));
        let bad = SnapshotChunk { entries: vec![SnapshotEntry { cf: 42, ..Default::default() }] };
        assert_eq!(SnapshotAssembler::new(10).push(bad), Err(SnapshotError::UnknownCf(42)));
    }

    #[test]
    fn sources_are_taken_once() {
        let sources = SnapshotSources::default();
        let engine = MemoryEngine::new();
        let token = sources.register(region(b"", b""), engine.snapshot(), 0);
        assert!(sources.take(token).is_some());
        assert!(sources.take(token).is_none());
        let old = sources.register(region(b"", b""), engine.snapshot(), 0);
        sources.register(region(b"", b""), engine.snapshot(), SOURCE_TTL_MS + 1);
        assert!(sources.take(old).is_none(), "expired");
    }
}
