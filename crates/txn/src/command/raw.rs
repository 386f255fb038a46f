//! The raw key-value API's commands: reads from a snapshot once the gate shows the node's
//! state current, writes under the latches of their keys.
//!
//! Every write takes the latches of its keys, reads a snapshot if it needs one (compare-and-
//! swap, delete range, the TTL sweep), computes its batch, proposes it and releases the
//! latches once it is applied. Taking latches for plain puts too is what makes `for_cas`
//! ("atomic mode") writes atomic with respect to compare-and-swap.

use super::checks::{
    batch_range_end, check_key, check_read_key, clamp_range, scan_bounds, KeyMode,
};
use super::{Command, CommandError, CommandResult, Cx, Gate, ResponseBudget, Scope};
use crate::node::TxnNode;
use crate::raw::{self, CasOutcome, Checksum, KeyPage};
use scandium_storage::{Cf, KvPair, Snapshot, WriteBatch};
use scandium_types::keyspace::ApiVersion;
use std::sync::Arc;

/// Most keys one delete-range proposal deletes; larger ranges take several proposals.
const DELETE_RANGE_CHUNK: usize = 1024;
/// Keys the TTL sweep examines per proposal.
const SWEEP_CHUNK: usize = 256;

/// Reads: the node's state must be current.
const READ: Gate = Gate { linearizable: true, needs_space: false };
/// Puts: a leader suffices (the proposal commits through a quorum or fails).
const PUT: Gate = Gate { linearizable: false, needs_space: true };
/// Deletes free space: never refused for want of it.
const DELETE: Gate = Gate { linearizable: false, needs_space: false };

/// The key space and column family a raw request addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawTarget {
    /// The API version the client speaks.
    pub api: ApiVersion,
    /// The raw namespace (`default`, `lock` or `write` in API V1).
    pub cf: Cf,
}

/// A range of a raw batch scan, before the empty-end rule is applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRange {
    /// First key (reverse scans: the exclusive upper bound, as the client sends it).
    pub start: Vec<u8>,
    /// End (reverse scans: the inclusive lower bound); empty: see [`batch_scan`].
    pub end: Vec<u8>,
}

/// A scan's shape.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanOptions {
    /// Most pairs to return (per range for a batch scan).
    pub limit: u32,
    /// Keys only, no values.
    pub key_only: bool,
    /// Descending order; the client sends the bounds swapped.
    pub reverse: bool,
}

/// `RawGet`. A key longer than any stored key is simply not found, as in TiKV.
pub fn get(node: &Arc<TxnNode>, target: RawTarget, key: Vec<u8>) -> Command<Option<Vec<u8>>> {
    Command::new(node, move |cx| async move {
        let scope = cx.gate(READ).await?;
        if !check_read_key(&scope, target.api, KeyMode::Raw, &key)? {
            return Ok(None);
        }
        let snapshot = cx.node.engine.snapshot();
        Ok(raw::get(&*snapshot, target.cf, &key, cx.now().wall_secs())?)
    })
}

/// `RawBatchGet`: found pairs in request order; missing keys are omitted.
pub fn batch_get(
    node: &Arc<TxnNode>,
    target: RawTarget,
    keys: Vec<Vec<u8>>,
) -> Command<Vec<KvPair>> {
    Command::new(node, move |cx| async move {
        let scope = cx.gate(READ).await?;
        let mut storable = Vec::with_capacity(keys.len());
        for key in &keys {
            storable.push(check_read_key(&scope, target.api, KeyMode::Raw, key)?);
        }
        let snapshot = cx.node.engine.snapshot();
        let now = cx.now().wall_secs();
        let mut budget = budget(&cx);
        let mut pairs = Vec::new();
        for (key, _) in keys.into_iter().zip(storable).filter(|(_, storable)| *storable) {
            if let Some(value) = raw::get(&*snapshot, target.cf, &key, now)? {
                budget.charge_pair(&key, &value)?;
                pairs.push((key, value));
            }
        }
        Ok(pairs)
    })
}

/// `RawGetKeyTTL`: remaining seconds (0 = no TTL), `None` if absent.
pub fn get_key_ttl(node: &Arc<TxnNode>, target: RawTarget, key: Vec<u8>) -> Command<Option<u64>> {
    Command::new(node, move |cx| async move {
        let scope = cx.gate(READ).await?;
        if !check_read_key(&scope, target.api, KeyMode::Raw, &key)? {
            return Ok(None);
        }
        let snapshot = cx.node.engine.snapshot();
        Ok(raw::get_ttl(&*snapshot, target.cf, &key, cx.now().wall_secs())?)
    })
}

/// `RawPut` and `RawBatchPut`: each pair with its TTL in seconds (0 = none).
pub fn put(
    node: &Arc<TxnNode>,
    target: RawTarget,
    pairs: Vec<(Vec<u8>, Vec<u8>, u64)>,
) -> Command<()> {
    Command::new(node, move |cx| async move {
        let scope = cx.gate(PUT).await?;
        for (key, _, _) in &pairs {
            check_key(&scope, target.api, KeyMode::Raw, key)?;
        }
        let latches = cx.latch(pairs.iter().map(|(key, _, _)| key)).await?;
        let now = cx.now().wall_secs();
        let mut batch = WriteBatch::new();
        for (key, value, ttl) in pairs {
            raw::put(&mut batch, target.cf, key, &value, ttl, now);
        }
        cx.propose_raw(&scope, batch, latches).await
    })
}

/// `RawDelete` and `RawBatchDelete`.
pub fn delete(node: &Arc<TxnNode>, target: RawTarget, keys: Vec<Vec<u8>>) -> Command<()> {
    Command::new(node, move |cx| async move {
        let scope = cx.gate(DELETE).await?;
        for key in &keys {
            check_key(&scope, target.api, KeyMode::Raw, key)?;
        }
        let latches = cx.latch(&keys).await?;
        let mut batch = WriteBatch::new();
        for key in keys {
            raw::delete(&mut batch, target.cf, key);
        }
        cx.propose_raw(&scope, batch, latches).await
    })
}

/// `RawScan`. For reverse scans the client sends the exclusive upper bound as `start` and
/// the inclusive lower bound as `end`. An inverted range or a zero limit finds nothing, as
/// in TiKV; a limit over `max_scan_limit` is refused (`tikv-client` itself never asks for
/// more than 10240).
pub fn scan(
    node: &Arc<TxnNode>,
    target: RawTarget,
    range: KeyRange,
    options: ScanOptions,
) -> Command<Vec<KvPair>> {
    Command::new(node, move |cx| async move {
        let scope = cx.gate(READ).await?;
        let limit = check_limit(&cx, options.limit)?;
        let (lower, upper) = scan_bounds(&range.start, &range.end, options.reverse);
        let (start, end) = clamp_range(&scope, target.api, KeyMode::Raw, lower, upper)?;
        let snapshot = cx.node.engine.snapshot();
        let now = cx.now().wall_secs();
        let (key_only, reverse) = (options.key_only, options.reverse);
        let max = cx.node.settings().max_response_bytes;
        let pairs =
            raw::scan(&*snapshot, target.cf, &start, &end, limit, key_only, reverse, now, max)?;
        let mut budget = budget(&cx);
        pairs.iter().try_for_each(|(key, value)| budget.charge_pair(key, value))?;
        Ok(pairs)
    })
}

/// `RawBatchScan`: up to `limit` pairs per range, ranges in request order. As in TiKV, a
/// range with an empty end key ends where the next range starts (the last one is
/// unbounded), a zero limit finds nothing, and an inverted range is refused.
pub fn batch_scan(
    node: &Arc<TxnNode>,
    target: RawTarget,
    ranges: Vec<KeyRange>,
    options: ScanOptions,
) -> Command<Vec<KvPair>> {
    Command::new(node, move |cx| async move {
        let scope = cx.gate(READ).await?;
        let limit = check_limit(&cx, options.limit)?;
        let snapshot = cx.node.engine.snapshot();
        let now = cx.now().wall_secs();
        let mut budget = budget(&cx);
        let mut pairs = Vec::new();
        for (i, range) in ranges.iter().enumerate() {
            let next_start = ranges.get(i + 1).map(|next| next.start.as_slice());
            let end_key = batch_range_end(&range.end, next_start);
            let (lower, upper) = scan_bounds(&range.start, end_key, options.reverse);
            if !upper.is_empty() && lower > upper {
                return Err(CommandError::invalid(format!(
                    "invalid range {i}: its lower bound {lower:?} is above its upper bound {upper:?}"
                )));
            }
            let (start, end) = clamp_range(&scope, target.api, KeyMode::Raw, lower, upper)?;
            let (key_only, reverse) = (options.key_only, options.reverse);
            let max = cx.node.settings().max_response_bytes;
            for (key, value) in
                raw::scan(&*snapshot, target.cf, &start, &end, limit, key_only, reverse, now, max)?
            {
                budget.charge_pair(&key, &value)?;
                pairs.push((key, value));
            }
        }
        Ok(pairs)
    })
}

/// `RawDeleteRange`: deletes every key in `[start, end) ∩ Region`. Atomic for up to
/// [`DELETE_RANGE_CHUNK`] keys; larger ranges are deleted in several steps. An empty or
/// inverted range is refused, as TiKV does. The keys are listed from this node's state,
/// so the gate makes it a linearizable read: a deposed leader that found nothing to delete
/// would otherwise answer "done" over keys the new leader holds.
pub fn delete_range(node: &Arc<TxnNode>, target: RawTarget, range: KeyRange) -> Command<()> {
    Command::new(node, move |cx| async move {
        let scope = cx.gate(Gate { linearizable: true, needs_space: false }).await?;
        if !range.end.is_empty() && range.start >= range.end {
            return Err(CommandError::invalid("delete range needs start key < end key"));
        }
        let (mut start, end) =
            clamp_range(&scope, target.api, KeyMode::Raw, &range.start, &range.end)?;
        loop {
            let snapshot = cx.node.engine.snapshot();
            let KeyPage { keys, resume_from } =
                raw::keys_in_range(&*snapshot, target.cf, &start, &end, DELETE_RANGE_CHUNK)?;
            drop(snapshot);
            if !keys.is_empty() {
                let latches = cx.latch(&keys).await?;
                let mut batch = WriteBatch::new();
                keys.into_iter().for_each(|key| raw::delete(&mut batch, target.cf, key));
                cx.propose_raw(&scope, batch, latches).await?;
            }
            match resume_from {
                Some(next) => start = next,
                None => return Ok(()),
            }
        }
    })
}

/// `RawCompareAndSwap`: `value` (with `ttl`) if the key's live value is `expected`
/// (`None`: absent). The comparison reads this node's state, so the gate makes it a
/// linearizable read first (then the latch, which passes the gate again if it had to
/// wait): a swap that fails proposes nothing, and a deposed leader would otherwise answer
/// it from stale state ("not swapped, the value is still the old one"). A swap that
/// succeeds is proposed and takes effect only if this node still leads.
pub fn compare_and_swap(
    node: &Arc<TxnNode>,
    target: RawTarget,
    key: Vec<u8>,
    expected: Option<Vec<u8>>,
    value: Vec<u8>,
    ttl: u64,
) -> Command<CasOutcome> {
    Command::new(node, move |cx| async move {
        let linearizable = !cx.node.settings().breakages.unsafe_cas;
        let scope = cx.gate(Gate { linearizable, needs_space: true }).await?;
        check_key(&scope, target.api, KeyMode::Raw, &key)?;
        let latches = cx.latch([&key]).await?;
        let mut batch = WriteBatch::new();
        let snapshot = cx.node.engine.snapshot();
        let now = cx.now().wall_secs();
        let outcome = raw::compare_and_swap(
            &*snapshot,
            target.cf,
            &key,
            expected.as_deref(),
            &value,
            ttl,
            now,
            &mut batch,
        )?;
        drop(snapshot);
        cx.propose_raw(&scope, batch, latches).await?;
        Ok(outcome)
    })
}

/// `RawChecksum` over the given ranges, each clamped to the Region.
pub fn checksum(node: &Arc<TxnNode>, api: ApiVersion, ranges: Vec<KeyRange>) -> Command<Checksum> {
    Command::new(node, move |cx| async move {
        let scope = cx.gate(READ).await?;
        let mut clamped = Vec::with_capacity(ranges.len());
        for range in &ranges {
            clamped.push(clamp_range(&scope, api, KeyMode::Raw, &range.start, &range.end)?);
        }
        let snapshot = cx.node.engine.snapshot();
        Ok(raw::checksum(&*snapshot, &clamped, cx.now().wall_secs())?)
    })
}

/// The TTL sweep of one Region's raw namespace: deletes expired values (already invisible
/// to reads) to reclaim their space, re-checking under each key's latch that it is still
/// expired (a client may have written a new value since the scan). Returns how many.
pub fn sweep_expired(node: &Arc<TxnNode>, cf: Cf) -> Command<usize> {
    Command::new(node, move |cx| async move {
        let scope = cx.gate(DELETE).await?;
        let mut deleted = 0;
        let mut start = scope.region.start_key.clone();
        loop {
            let now = cx.now().wall_secs();
            let snapshot = cx.node.engine.snapshot();
            let end = &scope.region.end_key;
            let KeyPage { keys, resume_from } =
                raw::expired_keys(&*snapshot, cf, &start, end, SWEEP_CHUNK, now)?;
            drop(snapshot);
            if !keys.is_empty() {
                deleted += delete_expired(&cx, &scope, cf, &keys, now).await?;
            }
            match resume_from {
                Some(next) => start = next,
                None => return Ok(deleted),
            }
        }
    })
}

async fn delete_expired(
    cx: &Cx,
    scope: &Scope,
    cf: Cf,
    keys: &[Vec<u8>],
    now: u64,
) -> CommandResult<usize> {
    let latches = cx.latch(keys).await?;
    let (batch, count) = expired_batch(&*cx.node.engine.snapshot(), cf, keys, now)?;
    cx.propose_raw(scope, batch, latches).await?;
    Ok(count)
}

fn expired_batch(
    snapshot: &dyn Snapshot,
    cf: Cf,
    keys: &[Vec<u8>],
    now: u64,
) -> CommandResult<(WriteBatch, usize)> {
    let mut batch = WriteBatch::new();
    let mut count = 0;
    for key in keys {
        let stored = snapshot.get(cf, key)?;
        let expired =
            stored.as_deref().and_then(raw::decode_value).is_some_and(|v| v.is_expired(now));
        if expired {
            raw::delete(&mut batch, cf, key.clone());
            count += 1;
        }
    }
    Ok((batch, count))
}

fn budget(cx: &Cx) -> ResponseBudget {
    ResponseBudget::new(cx.node.settings().max_response_bytes)
}

fn check_limit(cx: &Cx, limit: u32) -> CommandResult<usize> {
    let max = cx.node.settings().max_scan_limit;
    if limit > max {
        return Err(CommandError::invalid(format!(
            "scan limit must be at most {max}, not {limit}"
        )));
    }
    Ok(limit as usize)
}
