//! How big a Region is, kept cheaply, and where to split it.
//!
//! Every replica keeps [`RegionStats`] for its Region from what it applies: each write adds
//! its bytes and keys, so the figures follow the data without reading it. They drift
//! (an overwrite counts twice, a delete does not know the size of what it removed), and a
//! replica that restarted or received a snapshot starts from nothing, so the leader
//! [`measure`]s a Region now and then: one scan of an engine snapshot, in key order over
//! every data column family, which both corrects the figures and picks the keys to split
//! at when the Region has outgrown its [`SplitPolicy`]. A measurement is due only when the
//! figures were never measured or enough was written since the last one (a sixteenth of the
//! split size, as TiKV's `region-split-check-diff`), so an idle Region is never read.

use crate::keys::data_ranges;
use scandium_storage::{Cf, KvIter, Snapshot, StorageError};
use scandium_types::mvcc::split_versioned_key;
use scandium_types::Region;

/// A Region's size and write traffic as one replica keeps them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegionStats {
    /// Bytes of the Region's records (keys and values, every data column family): about
    /// what a snapshot of it carries.
    pub approximate_size: u64,
    /// The Region's user records: raw keys, and versions of transactional keys.
    pub approximate_keys: u64,
    /// Whether the figures rest on a measurement made by this replica (otherwise on what
    /// it applied since it started, or on a share of its parent's after a split).
    pub measured: bool,
    /// Bytes written by applied commands since this replica started (a counter: rates
    /// are differences of it).
    pub written_bytes: u64,
    /// User records written by applied commands since this replica started (a counter).
    pub written_keys: u64,
    /// User records deleted by applied commands since this replica started (a counter).
    pub deleted_keys: u64,
    /// Bytes written or deleted since the last measurement.
    pub unmeasured_bytes: u64,
    /// User records written or deleted since the last measurement: a sixteenth of the
    /// split keys makes a measurement due as well.
    pub unmeasured_keys: u64,
    /// How many times the replica's data was replaced (a snapshot installed): a
    /// measurement taken before a replacement says nothing of the data after it.
    pub replaced: u64,
}

/// What one applied write command changed, for [`RegionStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Bytes of keys and values put.
    pub put_bytes: u64,
    /// User records put.
    pub put_keys: u64,
    /// Bytes of keys deleted.
    pub deleted_bytes: u64,
    /// User records deleted.
    pub deleted_keys: u64,
}

impl Footprint {
    /// Counts a put of `key` and `value` to `cf`.
    pub fn put(&mut self, cf: Cf, key: &[u8], value: &[u8]) {
        self.put_bytes += (key.len() + value.len()) as u64;
        self.put_keys += u64::from(is_user_record(cf));
    }

    /// Counts a delete of `key` from `cf`.
    pub fn delete(&mut self, cf: Cf, key: &[u8]) {
        self.deleted_bytes += key.len() as u64;
        self.deleted_keys += u64::from(is_user_record(cf));
    }
}

/// Whether a record of `cf` is one of the Region's user records (counted as a key), rather
/// than a lock, a large value of a version counted in the write column family, or an index.
fn is_user_record(cf: Cf) -> bool {
    matches!(cf, Cf::Raw | Cf::RawLock | Cf::RawWrite | Cf::Write)
}

impl RegionStats {
    /// Adds what an applied command wrote.
    pub fn apply(&mut self, footprint: &Footprint) {
        // A delete frees about a record's average size (the Region's bytes over its
        // records, as counted): counted by its key's bytes alone, a Region emptied by
        // deletes went on reporting its old size, was not measured again, and never merged.
        let average = self.approximate_size.checked_div(self.approximate_keys).unwrap_or(0);
        let freed = (average.saturating_mul(footprint.deleted_keys)).min(self.approximate_size);
        self.approximate_size = self.approximate_size - freed + footprint.put_bytes;
        self.approximate_keys =
            (self.approximate_keys + footprint.put_keys).saturating_sub(footprint.deleted_keys);
        self.written_bytes += footprint.put_bytes;
        self.written_keys += footprint.put_keys;
        self.deleted_keys += footprint.deleted_keys;
        self.unmeasured_bytes += footprint.put_bytes + freed.max(footprint.deleted_bytes);
        self.unmeasured_keys += footprint.put_keys + footprint.deleted_keys;
    }

    /// The figures of the pieces of a split into the original and `new` new Regions: an
    /// equal share each (the cuts divide the data unevenly in general: every piece is
    /// measured soon). Returns the original's figures, whose traffic counters run on, and
    /// each new Region's, whose counters start at zero.
    pub fn split(&self, new: u64) -> (RegionStats, RegionStats) {
        let pieces = new + 1;
        let share = RegionStats {
            approximate_size: self.approximate_size / pieces,
            approximate_keys: self.approximate_keys / pieces,
            ..RegionStats::default()
        };
        // The original keeps the Region's id, its counters, and what the shares leave over.
        let kept = RegionStats {
            approximate_size: self.approximate_size - new * share.approximate_size,
            approximate_keys: self.approximate_keys - new * share.approximate_keys,
            written_bytes: self.written_bytes,
            written_keys: self.written_keys,
            deleted_keys: self.deleted_keys,
            ..share
        };
        (kept, share)
    }

    /// The figures of a target that absorbed a merged source whose figures were `source`:
    /// both added up, unmeasured (the leader measures the union soon). Traffic counters
    /// run on.
    pub fn absorb(&mut self, source: &RegionStats) {
        self.approximate_size += source.approximate_size;
        self.approximate_keys += source.approximate_keys;
        self.measured = false;
    }

    /// Whether a measurement is due: never measured, or a sixteenth of the split size
    /// written since the last one.
    pub fn wants_measuring(&self, policy: &SplitPolicy) -> bool {
        !self.measured
            || self.unmeasured_bytes >= (policy.split_size / 16).max(1)
            || self.unmeasured_keys >= (policy.split_keys / 16).max(1)
    }

    /// The data was replaced wholesale by a snapshot's records, which add up to `brought`:
    /// the figures are theirs until a measurement (counted as records are applied, and
    /// the leader measures soon). Traffic counters run on.
    pub fn replace(&mut self, brought: &Footprint) {
        self.approximate_size = brought.put_bytes;
        self.approximate_keys = brought.put_keys;
        self.measured = false;
        self.replaced += 1;
    }

    /// Replaces the figures with a measurement taken when the stats were `mark`, plus what
    /// was applied since; ignored if the data was replaced since the mark.
    pub fn correct(&mut self, mark: &RegionStats, size: u64, keys: u64) {
        if self.replaced != mark.replaced {
            return;
        }
        let written_bytes = self.written_bytes.saturating_sub(mark.written_bytes);
        let written_keys = self.written_keys.saturating_sub(mark.written_keys);
        let deleted_keys = self.deleted_keys.saturating_sub(mark.deleted_keys);
        self.approximate_size = size + written_bytes;
        self.approximate_keys = (keys + written_keys).saturating_sub(deleted_keys);
        self.unmeasured_bytes = self.unmeasured_bytes.saturating_sub(mark.unmeasured_bytes);
        self.unmeasured_keys = self.unmeasured_keys.saturating_sub(mark.unmeasured_keys);
        self.measured = true;
    }
}

/// When a Region is split by size, and into what: the settings `region_split_size`,
/// `region_max_size`, `region_split_keys` and `region_max_keys`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitPolicy {
    /// Bytes of each piece a split leaves.
    pub split_size: u64,
    /// Bytes past which a Region is split.
    pub max_size: u64,
    /// User records of each piece a split leaves.
    pub split_keys: u64,
    /// User records past which a Region is split.
    pub max_keys: u64,
    /// Split keys one measurement picks at most (the rest are picked by the next one).
    pub max_split_keys: usize,
}

/// What [`measure`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Measurement {
    /// Bytes of the Region's records.
    pub size: u64,
    /// The Region's user records.
    pub keys: u64,
    /// Keys to split at, ascending, if the Region has outgrown the policy: each ends a
    /// piece of about the split size or split keys (whichever comes first); empty if it has
    /// not, or if no key divides it (one huge key).
    pub split_keys: Vec<Vec<u8>>,
}

/// One column family's records in user-key order.
struct Cursor<'a> {
    cf: Cf,
    iter: KvIter<'a>,
    /// The next record: its user key and bytes.
    head: Option<(Vec<u8>, u64)>,
}

impl Cursor<'_> {
    fn advance(&mut self) -> Result<(), StorageError> {
        self.head = match self.iter.next().transpose()? {
            None => None,
            Some((key, value)) => {
                let bytes = (key.len() + value.len()) as u64;
                let user_key = match self.cf {
                    Cf::Write | Cf::Default => split_versioned_key(&key)
                        .map(|(user_key, _)| user_key)
                        .ok_or_else(|| StorageError::Corrupted {
                            cf: self.cf,
                            reason: format!("malformed versioned key {key:?}"),
                        })?,
                    _ => key,
                };
                Some((user_key, bytes))
            }
        };
        Ok(())
    }
}

/// Reads `region` from `snapshot` once, in user-key order across its column families (so
/// that every version and the lock of a key fall on one side of a split key): its size and
/// user records, and the keys to split it at under `policy`.
pub fn measure(
    region: &Region,
    snapshot: &dyn Snapshot,
    policy: &SplitPolicy,
) -> Result<Measurement, StorageError> {
    let mut cursors = Vec::new();
    for (cf, start, end) in data_ranges(region) {
        let mut cursor = Cursor { cf, iter: snapshot.scan(cf, &start, &end, false), head: None };
        cursor.advance()?;
        cursors.push(cursor);
    }
    let mut found = Measurement::default();
    // Since the last split key: bytes and user records.
    let (mut piece_bytes, mut piece_keys) = (0u64, 0u64);
    let mut current: Option<Vec<u8>> = None;
    loop {
        let next = cursors
            .iter_mut()
            .filter(|c| c.head.is_some())
            .min_by(|a, b| a.head.as_ref().map(|h| &h.0).cmp(&b.head.as_ref().map(|h| &h.0)));
        let Some(cursor) = next else { break };
        let (user_key, bytes) = cursor.head.take().expect("a cursor with a head was chosen");
        let user_record = is_user_record(cursor.cf);
        cursor.advance()?;
        if current.as_ref() != Some(&user_key) {
            let full = piece_bytes >= policy.split_size || piece_keys >= policy.split_keys;
            if full && current.is_some() && found.split_keys.len() < policy.max_split_keys {
                found.split_keys.push(user_key.clone());
                (piece_bytes, piece_keys) = (0, 0);
            }
            current = Some(user_key);
        }
        piece_bytes += bytes;
        piece_keys += u64::from(user_record);
        found.size += bytes;
        found.keys += u64::from(user_record);
    }
    if found.size <= policy.max_size && found.keys <= policy.max_keys {
        found.split_keys.clear();
    } else if found.split_keys.len() > 1
        && piece_bytes < policy.split_size / 2
        && piece_keys < policy.split_keys / 2
    {
        // A small last piece joins the one before it.
        found.split_keys.pop();
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use scandium_storage::{Engine, MemoryEngine, WriteBatch};
    use scandium_types::mvcc::versioned_key;
    use scandium_types::TimeStamp;

    fn region(start: &[u8], end: &[u8]) -> Region {
        Region { id: 7, start_key: start.to_vec(), end_key: end.to_vec(), ..Default::default() }
    }

    fn policy(split_size: u64, max_size: u64) -> SplitPolicy {
        SplitPolicy {
            split_size,
            max_size,
            split_keys: u64::MAX,
            max_keys: u64::MAX,
            max_split_keys: 100,
        }
    }

    /// Raw keys k000.. with 100-byte values.
    fn raw_engine(count: usize) -> MemoryEngine {
        let engine = MemoryEngine::new();
        let mut batch = WriteBatch::new();
        for i in 0..count {
            batch.put(Cf::Raw, format!("k{i:03}").into_bytes(), vec![b'v'; 96]);
        }
        engine.write(batch).unwrap();
        engine
    }

    #[test]
    fn deletes_free_about_their_records_average_size() {
        let mut stats = RegionStats {
            approximate_size: 64 << 20,
            approximate_keys: 16_384,
            ..Default::default()
        };
        let deletes =
            Footprint { deleted_bytes: 17 * 15_000, deleted_keys: 15_000, ..Default::default() };
        stats.apply(&deletes);
        assert_eq!(stats.approximate_keys, 1_384);
        assert_eq!(stats.approximate_size, (64 << 20) - 15_000 * 4_096);
        let policy = SplitPolicy {
            split_size: 64 << 20,
            max_size: 96 << 20,
            split_keys: 640_000,
            max_keys: 960_000,
            max_split_keys: 64,
        };
        stats.measured = true;
        assert!(stats.wants_measuring(&policy), "{} bytes unmeasured", stats.unmeasured_bytes);
        // Deleting more than it counts frees no more than it holds.
        stats.apply(&Footprint { deleted_keys: 99_999, ..Default::default() });
        assert_eq!((stats.approximate_size, stats.approximate_keys), (0, 0));
    }

    #[test]
    fn a_small_region_is_measured_and_not_split() {
        let engine = raw_engine(10);
        let found = measure(&region(b"", b""), &*engine.snapshot(), &policy(2_000, 3_000)).unwrap();
        assert_eq!((found.size, found.keys), (1_000, 10));
        assert!(found.split_keys.is_empty());
    }

    #[test]
    fn a_region_past_its_max_is_cut_into_pieces_of_the_split_size() {
        let engine = raw_engine(100); // 10,000 bytes
        let found = measure(&region(b"", b""), &*engine.snapshot(), &policy(2_000, 3_000)).unwrap();
        assert_eq!(found.size, 10_000);
        let expected: Vec<Vec<u8>> = ["k020", "k040", "k060", "k080"].map(Vec::from).to_vec();
        assert_eq!(found.split_keys, expected);
        // Only the Region's own range is read.
        let found =
            measure(&region(b"k050", b"k060"), &*engine.snapshot(), &policy(200, 300)).unwrap();
        assert_eq!((found.size, found.keys), (1_000, 10));
        let expected: Vec<Vec<u8>> = ["k052", "k054", "k056", "k058"].map(Vec::from).to_vec();
        assert_eq!(found.split_keys, expected);
    }

    #[test]
    fn a_small_last_piece_joins_the_one_before() {
        let engine = raw_engine(45); // pieces of 20, 20 and 5 keys
        let found = measure(&region(b"", b""), &*engine.snapshot(), &policy(2_000, 3_000)).unwrap();
        assert_eq!(found.split_keys, vec![b"k020".to_vec()]);
    }

    #[test]
    fn keys_count_as_well_as_bytes() {
        let engine = raw_engine(100);
        let policy = SplitPolicy { split_keys: 30, max_keys: 50, ..policy(u64::MAX, u64::MAX) };
        let found = measure(&region(b"", b""), &*engine.snapshot(), &policy).unwrap();
        // Pieces of 30, 30 and 40: the last 10 join the third.
        let expected: Vec<Vec<u8>> = ["k030", "k060"].map(Vec::from).to_vec();
        assert_eq!(found.split_keys, expected);
    }

    #[test]
    fn versions_and_locks_of_one_key_stay_together() {
        let engine = MemoryEngine::new();
        let mut batch = WriteBatch::new();
        for i in 0..20u64 {
            let key = format!("t{i:02}").into_bytes();
            // Many versions of each key, and a lock on some: never divided.
            for ts in 1..=5 {
                batch.put(Cf::Write, versioned_key(&key, TimeStamp(ts * 10)), vec![0; 40]);
            }
            if i % 3 == 0 {
                batch.put(Cf::Lock, key.clone(), vec![0; 40]);
            }
        }
        engine.write(batch).unwrap();
        let found = measure(&region(b"", b""), &*engine.snapshot(), &policy(500, 600)).unwrap();
        assert_eq!(found.keys, 100, "each version is a user record, a lock is not");
        assert!(!found.split_keys.is_empty());
        for key in &found.split_keys {
            assert!(key.starts_with(b"t") && key.len() == 3, "a user key, not {key:?}");
        }
        // The range of a transactional Region is compared by user key.
        let half = measure(&region(b"t10", b""), &*engine.snapshot(), &policy(500, 600)).unwrap();
        assert_eq!(half.keys, 50);
    }

    #[test]
    fn one_huge_key_is_not_split() {
        let engine = MemoryEngine::new();
        let mut batch = WriteBatch::new();
        batch.put(Cf::Raw, b"only".to_vec(), vec![0; 10_000]);
        engine.write(batch).unwrap();
        let found = measure(&region(b"", b""), &*engine.snapshot(), &policy(1_000, 2_000)).unwrap();
        assert!(found.size > 10_000);
        assert!(found.split_keys.is_empty());
    }

    #[test]
    fn applied_writes_are_counted_and_a_measurement_corrects_them() {
        let policy = policy(3_200, 5_000);
        let mut stats = RegionStats::default();
        assert!(stats.wants_measuring(&policy), "never measured");
        let mut footprint = Footprint::default();
        footprint.put(Cf::Raw, b"key", &[0; 97]);
        footprint.put(Cf::Lock, b"key", &[0; 7]);
        footprint.delete(Cf::Raw, b"old");
        stats.apply(&footprint);
        assert_eq!((stats.approximate_size, stats.approximate_keys), (110, 0));
        let mark = stats;
        stats.apply(&footprint);
        stats.correct(&mark, 5_000, 40);
        assert_eq!((stats.approximate_size, stats.approximate_keys), (5_110, 40));
        assert!(stats.measured);
        assert!(!stats.wants_measuring(&policy), "113 bytes since: under a sixteenth (200)");
        stats.apply(&footprint);
        assert!(stats.wants_measuring(&policy), "226 bytes since");
        // A snapshot's records stand for the data it replaced, and a measurement from
        // before it is not used.
        let mut replaced = stats;
        let before = replaced;
        replaced.replace(&footprint);
        assert_eq!((replaced.approximate_size, replaced.approximate_keys), (110, 1));
        replaced.correct(&before, 1, 1);
        assert!(!replaced.measured && replaced.approximate_size == 110);
        let (left, right) = stats.split(1);
        assert_eq!(left.approximate_size + right.approximate_size, stats.approximate_size);
        let (kept, share) = stats.split(4);
        assert_eq!(kept.approximate_size + 4 * share.approximate_size, stats.approximate_size);
        assert_eq!(kept.approximate_keys + 4 * share.approximate_keys, stats.approximate_keys);
        assert_eq!(left.written_bytes, stats.written_bytes, "the left half keeps counting");
        assert_eq!(right.written_bytes, 0);
        assert!(!left.measured && !right.measured);
    }
}
