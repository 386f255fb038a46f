//! The raw key-value API's semantics: values with an optional expiry, reads that hide
//! expired values, compare-and-swap, checksums.
//!
//! Raw data lives in [`Cf::Raw`], apart from transactional data, keyed by the key exactly as
//! the client sends it (API V2 keys keep their keyspace prefix). API V1 clients may name
//! TiKV's other column families, `lock` and `write`, which are separate raw namespaces
//! ([`Cf::RawLock`], [`Cf::RawWrite`]); every function here takes the one to use. A stored
//! value is the client's value followed by a small trailer:
//!
//! ```text
//! value bytes | [expire_at: u64 BE, unix seconds, only if flags & TTL] | flags: u8
//! ```
//!
//! An expired value is invisible to every read; the server's TTL sweeper later deletes it
//! through Raft like any other write.

use scandium_storage::{Cf, KvPair, Snapshot, StorageError, WriteBatch};
use thiserror::Error;

const FLAG_TTL: u8 = 1;
const EXPIRY_LEN: usize = 8;

/// Failures of raw commands.
#[derive(Debug, Error)]
pub enum RawError {
    /// The engine failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A stored value has no valid trailer.
    #[error("corrupted raw value under key {key:?}")]
    Corrupted {
        /// The key whose value is corrupted.
        key: Vec<u8>,
    },
}

/// Result of raw commands.
pub type Result<T> = std::result::Result<T, RawError>;

/// A decoded stored value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawValue<'a> {
    /// The client's value.
    pub value: &'a [u8],
    /// Unix seconds after which the value is gone; `None` = never.
    pub expire_at_secs: Option<u64>,
}

impl RawValue<'_> {
    /// Whether the value has expired at `now_secs`.
    pub fn is_expired(&self, now_secs: u64) -> bool {
        self.expire_at_secs.is_some_and(|at| at <= now_secs)
    }

    /// Remaining lifetime in seconds, 0 if the value never expires.
    pub fn remaining_ttl(&self, now_secs: u64) -> u64 {
        self.expire_at_secs.map_or(0, |at| at.saturating_sub(now_secs))
    }
}

/// The expiry for a TTL of `ttl_secs` (0 = none) written at `now_secs`.
pub fn expire_at(ttl_secs: u64, now_secs: u64) -> Option<u64> {
    (ttl_secs > 0).then(|| now_secs.saturating_add(ttl_secs))
}

/// Encodes a value for storage.
pub fn encode_value(value: &[u8], expire_at_secs: Option<u64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + EXPIRY_LEN + 1);
    out.extend_from_slice(value);
    match expire_at_secs {
        Some(at) => {
            out.extend_from_slice(&at.to_be_bytes());
            out.push(FLAG_TTL);
        }
        None => out.push(0),
    }
    out
}

/// Decodes a stored value; `None` if the trailer is malformed.
pub fn decode_value(stored: &[u8]) -> Option<RawValue<'_>> {
    let (&flags, rest) = stored.split_last()?;
    match flags {
        0 => Some(RawValue { value: rest, expire_at_secs: None }),
        FLAG_TTL => {
            let split = rest.len().checked_sub(EXPIRY_LEN)?;
            let (value, expiry) = rest.split_at(split);
            let at = u64::from_be_bytes(expiry.try_into().ok()?);
            Some(RawValue { value, expire_at_secs: Some(at) })
        }
        _ => None,
    }
}

fn live<'a>(key: &[u8], stored: &'a [u8], now_secs: u64) -> Result<Option<RawValue<'a>>> {
    let value = decode_value(stored).ok_or_else(|| RawError::Corrupted { key: key.to_vec() })?;
    Ok((!value.is_expired(now_secs)).then_some(value))
}

/// Reads the live value of `key`.
pub fn get(snapshot: &dyn Snapshot, cf: Cf, key: &[u8], now_secs: u64) -> Result<Option<Vec<u8>>> {
    let Some(stored) = snapshot.get(cf, key)? else { return Ok(None) };
    Ok(live(key, &stored, now_secs)?.map(|v| v.value.to_vec()))
}

/// Remaining TTL of `key` in seconds (0 = no TTL), or `None` if there is no live value.
pub fn get_ttl(snapshot: &dyn Snapshot, cf: Cf, key: &[u8], now_secs: u64) -> Result<Option<u64>> {
    let Some(stored) = snapshot.get(cf, key)? else { return Ok(None) };
    Ok(live(key, &stored, now_secs)?.map(|v| v.remaining_ttl(now_secs)))
}

/// Up to `limit` live pairs in `[start, end)` (empty `end` = unbounded), ascending, or
/// descending when `reverse`. With `key_only`, values are empty. Reading stops once the
/// pairs take more than `max_bytes` (counted as a response counts them): the caller,
/// which refuses such an answer, then holds one pair more than that, not a Region.
#[allow(clippy::too_many_arguments)]
pub fn scan(
    snapshot: &dyn Snapshot,
    cf: Cf,
    start: &[u8],
    end: &[u8],
    limit: usize,
    key_only: bool,
    reverse: bool,
    now_secs: u64,
    max_bytes: usize,
) -> Result<Vec<KvPair>> {
    let mut pairs = Vec::new();
    if limit == 0 {
        return Ok(pairs);
    }
    let mut bytes = 0;
    for item in snapshot.scan(cf, start, end, reverse) {
        let (key, stored) = item?;
        let Some(value) = live(&key, &stored, now_secs)? else { continue };
        let value = if key_only { Vec::new() } else { value.value.to_vec() };
        bytes += key.len() + value.len() + 8;
        pairs.push((key, value));
        if pairs.len() >= limit || bytes > max_bytes {
            break;
        }
    }
    Ok(pairs)
}

/// Adds a put of `value` with a TTL of `ttl_secs` (0 = none) to `batch`.
pub fn put(
    batch: &mut WriteBatch,
    cf: Cf,
    key: Vec<u8>,
    value: &[u8],
    ttl_secs: u64,
    now_secs: u64,
) {
    batch.put(cf, key, encode_value(value, expire_at(ttl_secs, now_secs)));
}

/// Adds a delete of `key` to `batch`.
pub fn delete(batch: &mut WriteBatch, cf: Cf, key: Vec<u8>) {
    batch.delete(cf, key);
}

/// What a compare-and-swap found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CasOutcome {
    /// Whether the new value was written.
    pub succeeded: bool,
    /// The live value before the command, if any.
    pub previous: Option<Vec<u8>>,
}

/// Sets `key` to `new_value` if its live value equals `expected` (`None` = must not exist).
/// The caller must hold the key's latch from this read until the batch is applied.
#[allow(clippy::too_many_arguments)]
pub fn compare_and_swap(
    snapshot: &dyn Snapshot,
    cf: Cf,
    key: &[u8],
    expected: Option<&[u8]>,
    new_value: &[u8],
    ttl_secs: u64,
    now_secs: u64,
    batch: &mut WriteBatch,
) -> Result<CasOutcome> {
    let previous = get(snapshot, cf, key, now_secs)?;
    let succeeded = previous.as_deref() == expected;
    if succeeded {
        put(batch, cf, key.to_vec(), new_value, ttl_secs, now_secs);
    }
    Ok(CasOutcome { succeeded, previous })
}

/// XOR of CRC-64/XZ digests of every live key and value, with counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checksum {
    /// XOR of per-pair digests; independent of iteration order.
    pub crc64_xor: u64,
    /// Live pairs seen.
    pub total_kvs: u64,
    /// Sum of key and value lengths.
    pub total_bytes: u64,
}

/// Checksums the live pairs of each `[start, end)` range.
pub fn checksum(
    snapshot: &dyn Snapshot,
    ranges: &[(Vec<u8>, Vec<u8>)],
    now_secs: u64,
) -> Result<Checksum> {
    const CRC: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_XZ);
    let mut sum = Checksum::default();
    for (start, end) in ranges {
        for item in snapshot.scan(Cf::Raw, start, end, false) {
            let (key, stored) = item?;
            let Some(value) = live(&key, &stored, now_secs)? else { continue };
            let mut digest = CRC.digest();
            digest.update(&key);
            digest.update(value.value);
            sum.crc64_xor ^= digest.finalize();
            sum.total_kvs += 1;
            sum.total_bytes += (key.len() + value.value.len()) as u64;
        }
    }
    Ok(sum)
}

/// One page of a key listing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyPage {
    /// Keys found, ascending.
    pub keys: Vec<Vec<u8>>,
    /// Where the next page starts; `None` when the range is exhausted.
    pub resume_from: Option<Vec<u8>>,
}

/// Up to `limit` stored keys in `[start, end)` (expired or not) that satisfy `keep`.
fn list_keys(
    snapshot: &dyn Snapshot,
    cf: Cf,
    start: &[u8],
    end: &[u8],
    limit: usize,
    keep: impl Fn(&[u8]) -> bool,
) -> Result<KeyPage> {
    let mut page = KeyPage::default();
    for item in snapshot.scan(cf, start, end, false) {
        let (key, stored) = item?;
        if page.keys.len() >= limit {
            page.resume_from = Some(key);
            break;
        }
        if keep(&stored) {
            page.keys.push(key);
        }
    }
    Ok(page)
}

/// Up to `limit` keys in `[start, end)` whose values have expired at `now_secs`.
pub fn expired_keys(
    snapshot: &dyn Snapshot,
    cf: Cf,
    start: &[u8],
    end: &[u8],
    limit: usize,
    now_secs: u64,
) -> Result<KeyPage> {
    list_keys(snapshot, cf, start, end, limit, |stored| {
        decode_value(stored).is_some_and(|v| v.is_expired(now_secs))
    })
}

/// Up to `limit` stored keys in `[start, end)`, expired or not.
pub fn keys_in_range(
    snapshot: &dyn Snapshot,
    cf: Cf,
    start: &[u8],
    end: &[u8],
    limit: usize,
) -> Result<KeyPage> {
    list_keys(snapshot, cf, start, end, limit, |_| true)
}

#[cfg(test)]
mod tests;
