//! The raw key-value API on this node: request checks, latches, snapshot reads, and writes
//! proposed to the Region's Raft group.
//!
//! Every write takes the latches of its keys, reads a snapshot if it needs one (compare-
//! and-swap), computes its write batch, proposes it and releases the latches once it is
//! applied. Taking latches for plain puts too is what makes `for_cas` ("atomic mode")
//! writes atomic with respect to compare-and-swap.

use crate::clock::now_secs;
use crate::context::{KeyMode, NodeContext};
use crate::error::RequestError;
use scandium_protocol::kvrpcpb;
use scandium_raftstore::RaftCommand;
use scandium_storage::{Cf, KvPair, Snapshot, WriteBatch};
use scandium_txn::raw;
use scandium_types::keyspace::ApiVersion;
use scandium_types::Region;

/// Most keys one delete-range proposal deletes; larger ranges take several proposals.
const DELETE_RANGE_CHUNK: usize = 1024;

/// The column family a raw request names. As in TiKV, API V1 has a raw namespace per
/// column family (`tikv-client`'s `with_cf`): none or `default`, `lock` and `write`. API V2
/// has only the default one (TiKV refuses any name there; `default` is accepted here).
fn raw_cf(cf: &str, api_version: ApiVersion) -> Result<Cf, RequestError> {
    let v1 = matches!(api_version, ApiVersion::V1 | ApiVersion::V1Ttl);
    match (cf, v1) {
        ("" | "default", _) => Ok(Cf::Raw),
        ("lock", true) => Ok(Cf::RawLock),
        ("write", true) => Ok(Cf::RawWrite),
        (other, true) => Err(RequestError::invalid(format!(
            "column family {other:?} does not exist; raw requests take \"default\", \"lock\" or \"write\""
        ))),
        (other, false) => Err(RequestError::invalid(format!(
            "column family {other:?} is not available in API V2; name none or \"default\""
        ))),
    }
}

/// Bytes a response holds so far, against the configured limit.
pub(crate) struct ResponseBudget {
    used: usize,
    limit: usize,
}

impl ResponseBudget {
    fn charge(&mut self, pair: &KvPair) -> Result<(), RequestError> {
        self.charge_bytes(pair.0.len() + pair.1.len() + 8)
    }

    /// Counts `bytes` more; refuses the request once the answer would exceed the limit.
    pub(crate) fn charge_bytes(&mut self, bytes: usize) -> Result<(), RequestError> {
        self.used += bytes;
        if self.used > self.limit {
            return Err(RequestError::invalid(format!(
                "response would exceed {} bytes; ask for fewer keys",
                self.limit
            )));
        }
        Ok(())
    }
}

impl NodeContext {
    pub(crate) fn budget(&self) -> ResponseBudget {
        ResponseBudget { used: 0, limit: self.config.max_response_bytes }
    }

    /// A raw scan's limit: 0 asks for nothing (TiKV answers it with no rows, and
    /// `tikv-client`'s own tests rely on that); more than `max_scan_limit` is refused
    /// (`tikv-client` itself never asks for more than 10240).
    fn check_limit(&self, limit: u32) -> Result<usize, RequestError> {
        if limit > self.config.max_scan_limit {
            return Err(RequestError::invalid(format!(
                "scan limit must be at most {}, not {limit}",
                self.config.max_scan_limit
            )));
        }
        Ok(limit as usize)
    }

    /// Runs a write under the latches of `keys`: `build` reads `snapshot` (taken after the
    /// latches) and fills the batch, which is then proposed and applied.
    ///
    /// The latches are held until the write is applied even if the request is cancelled
    /// (see [`RaftHandle::propose_holding`](crate::raft_driver::RaftHandle::propose_holding)):
    /// a compare-and-swap after it must see it.
    pub(crate) async fn write_with<T>(
        &self,
        region: &Region,
        keys: &[Vec<u8>],
        build: impl FnOnce(&dyn Snapshot, &mut WriteBatch) -> Result<T, RequestError>,
    ) -> Result<T, RequestError> {
        let latches = self.latches.acquire(keys.iter()).await;
        let mut batch = WriteBatch::new();
        let output = build(&*self.engine.snapshot(), &mut batch)?;
        if !batch.is_empty() {
            let command = RaftCommand::write(region, batch);
            self.raft.propose_holding(region.id, command, latches, || {}).await?;
        }
        Ok(output)
    }

    /// `RawGet`. A key longer than any stored key is simply not found, as in TiKV.
    pub async fn raw_get(
        &self,
        req: &kvrpcpb::RawGetRequest,
    ) -> Result<Option<Vec<u8>>, RequestError> {
        let checked = self.check_read_context(req.context.as_ref()).await?;
        let cf = raw_cf(&req.cf, checked.api_version)?;
        if !self.check_read_key(&checked, KeyMode::Raw, &req.key)? {
            return Ok(None);
        }
        Ok(raw::get(&*self.engine.snapshot(), cf, &req.key, now_secs())?)
    }

    /// `RawBatchGet`: found pairs in request order; missing keys are omitted.
    pub async fn raw_batch_get(
        &self,
        req: &kvrpcpb::RawBatchGetRequest,
    ) -> Result<Vec<KvPair>, RequestError> {
        let checked = self.check_read_context(req.context.as_ref()).await?;
        let cf = raw_cf(&req.cf, checked.api_version)?;
        let mut storable = Vec::with_capacity(req.keys.len());
        for key in &req.keys {
            storable.push(self.check_read_key(&checked, KeyMode::Raw, key)?);
        }
        let snapshot = self.engine.snapshot();
        let now = now_secs();
        let mut budget = self.budget();
        let mut pairs = Vec::new();
        for (key, _) in req.keys.iter().zip(storable).filter(|(_, storable)| *storable) {
            if let Some(value) = raw::get(&*snapshot, cf, key, now)? {
                let pair = (key.clone(), value);
                budget.charge(&pair)?;
                pairs.push(pair);
            }
        }
        Ok(pairs)
    }

    /// `RawGetKeyTTL`: remaining seconds (0 = no TTL), `None` if absent.
    pub async fn raw_get_key_ttl(
        &self,
        req: &kvrpcpb::RawGetKeyTtlRequest,
    ) -> Result<Option<u64>, RequestError> {
        let checked = self.check_read_context(req.context.as_ref()).await?;
        let cf = raw_cf(&req.cf, checked.api_version)?;
        if !self.check_read_key(&checked, KeyMode::Raw, &req.key)? {
            return Ok(None);
        }
        Ok(raw::get_ttl(&*self.engine.snapshot(), cf, &req.key, now_secs())?)
    }

    /// `RawPut`.
    pub async fn raw_put(&self, req: kvrpcpb::RawPutRequest) -> Result<(), RequestError> {
        let checked = self.check_context(req.context.as_ref())?;
        self.disk.check_write(self.store_id)?;
        let cf = raw_cf(&req.cf, checked.api_version)?;
        self.check_key(&checked, KeyMode::Raw, &req.key)?;
        let keys = [req.key.clone()];
        self.write_with(&checked.region, &keys, |_, batch| {
            raw::put(batch, cf, req.key, &req.value, req.ttl, now_secs());
            Ok(())
        })
        .await
    }

    /// `RawBatchPut`. `ttls` holds one TTL per pair, or one for every pair (as the Python
    /// clients send it, and TiKV accepts), or none (then the request's `ttl`).
    pub async fn raw_batch_put(
        &self,
        req: kvrpcpb::RawBatchPutRequest,
    ) -> Result<(), RequestError> {
        let checked = self.check_context(req.context.as_ref())?;
        self.disk.check_write(self.store_id)?;
        let cf = raw_cf(&req.cf, checked.api_version)?;
        let ttl_of = match req.ttls.len() {
            0 => None,
            1 => Some(req.ttls[0]),
            n if n == req.pairs.len() => None,
            n => {
                return Err(RequestError::invalid(format!(
                    "{n} TTLs given for {} pairs; give none, one for every pair, or one per pair",
                    req.pairs.len()
                )))
            }
        };
        for pair in &req.pairs {
            self.check_key(&checked, KeyMode::Raw, &pair.key)?;
        }
        let keys: Vec<Vec<u8>> = req.pairs.iter().map(|p| p.key.clone()).collect();
        self.write_with(&checked.region, &keys, |_, batch| {
            let now = now_secs();
            for (i, pair) in req.pairs.into_iter().enumerate() {
                let ttl = ttl_of.or_else(|| req.ttls.get(i).copied()).unwrap_or(req.ttl);
                raw::put(batch, cf, pair.key, &pair.value, ttl, now);
            }
            Ok(())
        })
        .await
    }

    /// `RawDelete`.
    pub async fn raw_delete(&self, req: kvrpcpb::RawDeleteRequest) -> Result<(), RequestError> {
        let checked = self.check_context(req.context.as_ref())?;
        let cf = raw_cf(&req.cf, checked.api_version)?;
        self.check_key(&checked, KeyMode::Raw, &req.key)?;
        let keys = [req.key.clone()];
        self.write_with(&checked.region, &keys, |_, batch| {
            raw::delete(batch, cf, req.key);
            Ok(())
        })
        .await
    }

    /// `RawBatchDelete`.
    pub async fn raw_batch_delete(
        &self,
        req: kvrpcpb::RawBatchDeleteRequest,
    ) -> Result<(), RequestError> {
        let checked = self.check_context(req.context.as_ref())?;
        let cf = raw_cf(&req.cf, checked.api_version)?;
        for key in &req.keys {
            self.check_key(&checked, KeyMode::Raw, key)?;
        }
        let keys = req.keys;
        self.write_with(&checked.region, &keys.clone(), |_, batch| {
            for key in keys {
                raw::delete(batch, cf, key);
            }
            Ok(())
        })
        .await
    }

    /// `RawScan`. For reverse scans the client sends the exclusive upper bound as
    /// `start_key` and the inclusive lower bound as `end_key`. An inverted range or a zero
    /// limit finds nothing, as in TiKV.
    pub async fn raw_scan(
        &self,
        req: &kvrpcpb::RawScanRequest,
    ) -> Result<Vec<KvPair>, RequestError> {
        let checked = self.check_read_context(req.context.as_ref()).await?;
        let cf = raw_cf(&req.cf, checked.api_version)?;
        let limit = self.check_limit(req.limit)?;
        let (lower, upper) = if req.reverse {
            (&req.end_key, &req.start_key)
        } else {
            (&req.start_key, &req.end_key)
        };
        let (start, end) = self.clamp_range(&checked, KeyMode::Raw, lower, upper)?;
        let pairs = raw::scan(
            &*self.engine.snapshot(),
            cf,
            &start,
            &end,
            limit,
            req.key_only,
            req.reverse,
            now_secs(),
        )?;
        let mut budget = self.budget();
        pairs.iter().try_for_each(|p| budget.charge(p))?;
        Ok(pairs)
    }

    /// `RawBatchScan`: up to `each_limit` pairs per range, ranges in request order. As in
    /// TiKV, a range with an empty end key ends where the next range starts (the last one
    /// is unbounded), a zero limit finds nothing, and an inverted range is refused.
    pub async fn raw_batch_scan(
        &self,
        req: &kvrpcpb::RawBatchScanRequest,
    ) -> Result<Vec<KvPair>, RequestError> {
        let checked = self.check_read_context(req.context.as_ref()).await?;
        let cf = raw_cf(&req.cf, checked.api_version)?;
        let limit = self.check_limit(req.each_limit)?;
        let snapshot = self.engine.snapshot();
        let now = now_secs();
        let mut budget = self.budget();
        let mut pairs = Vec::new();
        for (i, range) in req.ranges.iter().enumerate() {
            let end_key = match req.ranges.get(i + 1) {
                Some(next) if range.end_key.is_empty() => &next.start_key,
                _ => &range.end_key,
            };
            let (lower, upper) =
                if req.reverse { (end_key, &range.start_key) } else { (&range.start_key, end_key) };
            if !upper.is_empty() && lower > upper {
                return Err(RequestError::invalid(format!(
                    "invalid range {}: its lower bound {lower:?} is above its upper bound {upper:?}",
                    i
                )));
            }
            let (start, end) = self.clamp_range(&checked, KeyMode::Raw, lower, upper)?;
            for pair in
                raw::scan(&*snapshot, cf, &start, &end, limit, req.key_only, req.reverse, now)?
            {
                budget.charge(&pair)?;
                pairs.push(pair);
            }
        }
        Ok(pairs)
    }

    /// `RawDeleteRange`: deletes every key in `[start, end) ∩ Region`. Atomic for up to
    /// [`DELETE_RANGE_CHUNK`] keys; larger ranges are deleted in several steps. An empty or
    /// inverted range is refused, as TiKV does. The keys are listed from this node's
    /// state, so it must be a linearizable read (lease or ReadIndex): a deposed leader
    /// that found nothing to delete would otherwise answer "done" over keys the new
    /// leader holds.
    pub async fn raw_delete_range(
        &self,
        req: &kvrpcpb::RawDeleteRangeRequest,
    ) -> Result<(), RequestError> {
        let checked = self.check_read_context(req.context.as_ref()).await?;
        let cf = raw_cf(&req.cf, checked.api_version)?;
        if !req.end_key.is_empty() && req.start_key >= req.end_key {
            return Err(RequestError::invalid("delete range needs start key < end key"));
        }
        let (mut start, end) =
            self.clamp_range(&checked, KeyMode::Raw, &req.start_key, &req.end_key)?;
        loop {
            let raw::KeyPage { keys, resume_from } =
                raw::keys_in_range(&*self.engine.snapshot(), cf, &start, &end, DELETE_RANGE_CHUNK)?;
            if !keys.is_empty() {
                self.write_with(&checked.region, &keys.clone(), |_, batch| {
                    keys.into_iter().for_each(|key| raw::delete(batch, cf, key));
                    Ok(())
                })
                .await?;
            }
            match resume_from {
                Some(next) => start = next,
                None => return Ok(()),
            }
        }
    }

    /// `RawCompareAndSwap`. The comparison reads this node's state, so it is a
    /// linearizable read first (lease or ReadIndex, then the latch): a swap that fails
    /// proposes nothing, and a deposed leader would otherwise answer it from stale state
    /// ("not swapped, the value is still the old one"). A swap that succeeds is proposed
    /// and takes effect only if this node still leads.
    pub async fn raw_compare_and_swap(
        &self,
        req: kvrpcpb::RawCasRequest,
    ) -> Result<raw::CasOutcome, RequestError> {
        let checked = self.check_read_context(req.context.as_ref()).await?;
        self.disk.check_write(self.store_id)?;
        let cf = raw_cf(&req.cf, checked.api_version)?;
        self.check_key(&checked, KeyMode::Raw, &req.key)?;
        let expected = (!req.previous_not_exist).then_some(req.previous_value.as_slice());
        let keys = [req.key.clone()];
        self.write_with(&checked.region, &keys, |snapshot, batch| {
            Ok(raw::compare_and_swap(
                snapshot,
                cf,
                &req.key,
                expected,
                &req.value,
                req.ttl,
                now_secs(),
                batch,
            )?)
        })
        .await
    }

    /// `RawChecksum` over the given ranges, each clamped to the Region.
    pub async fn raw_checksum(
        &self,
        req: &kvrpcpb::RawChecksumRequest,
    ) -> Result<raw::Checksum, RequestError> {
        let checked = self.check_read_context(req.context.as_ref()).await?;
        let mut ranges = Vec::with_capacity(req.ranges.len());
        for range in &req.ranges {
            ranges.push(self.clamp_range(
                &checked,
                KeyMode::Raw,
                &range.start_key,
                &range.end_key,
            )?);
        }
        Ok(raw::checksum(&*self.engine.snapshot(), &ranges, now_secs())?)
    }
}
