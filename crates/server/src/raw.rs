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
use scandium_storage::{KvPair, Snapshot, WriteBatch};
use scandium_txn::raw;
use scandium_types::Region;

/// Most keys one delete-range proposal deletes; larger ranges take several proposals.
const DELETE_RANGE_CHUNK: usize = 1024;

/// Raw requests accept only the default column family (or none named).
fn check_cf(cf: &str) -> Result<(), RequestError> {
    match cf {
        "" | "default" => Ok(()),
        other => Err(RequestError::invalid(format!(
            "column family {other:?} is not available to raw requests; use \"default\""
        ))),
    }
}

/// Bytes a response holds so far, against the configured limit.
struct ResponseBudget {
    used: usize,
    limit: usize,
}

impl ResponseBudget {
    fn charge(&mut self, pair: &KvPair) -> Result<(), RequestError> {
        self.used += pair.0.len() + pair.1.len() + 8;
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
    fn budget(&self) -> ResponseBudget {
        ResponseBudget { used: 0, limit: self.config.max_response_bytes }
    }

    fn check_limit(&self, limit: u32) -> Result<usize, RequestError> {
        if limit == 0 || limit > self.config.max_scan_limit {
            return Err(RequestError::invalid(format!(
                "scan limit must be between 1 and {}, not {limit}",
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

    /// `RawGet`.
    pub async fn raw_get(
        &self,
        req: &kvrpcpb::RawGetRequest,
    ) -> Result<Option<Vec<u8>>, RequestError> {
        check_cf(&req.cf)?;
        let checked = self.check_context(req.context.as_ref())?;
        self.check_key(&checked, KeyMode::Raw, &req.key)?;
        Ok(raw::get(&*self.engine.snapshot(), &req.key, now_secs())?)
    }

    /// `RawBatchGet`: found pairs in request order; missing keys are omitted.
    pub async fn raw_batch_get(
        &self,
        req: &kvrpcpb::RawBatchGetRequest,
    ) -> Result<Vec<KvPair>, RequestError> {
        check_cf(&req.cf)?;
        let checked = self.check_context(req.context.as_ref())?;
        for key in &req.keys {
            self.check_key(&checked, KeyMode::Raw, key)?;
        }
        let snapshot = self.engine.snapshot();
        let now = now_secs();
        let mut budget = self.budget();
        let mut pairs = Vec::new();
        for key in &req.keys {
            if let Some(value) = raw::get(&*snapshot, key, now)? {
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
        check_cf(&req.cf)?;
        let checked = self.check_context(req.context.as_ref())?;
        self.check_key(&checked, KeyMode::Raw, &req.key)?;
        Ok(raw::get_ttl(&*self.engine.snapshot(), &req.key, now_secs())?)
    }

    /// `RawPut`.
    pub async fn raw_put(&self, req: kvrpcpb::RawPutRequest) -> Result<(), RequestError> {
        check_cf(&req.cf)?;
        let checked = self.check_context(req.context.as_ref())?;
        self.check_key(&checked, KeyMode::Raw, &req.key)?;
        let keys = [req.key.clone()];
        self.write_with(&checked.region, &keys, |_, batch| {
            raw::put(batch, req.key, &req.value, req.ttl, now_secs());
            Ok(())
        })
        .await
    }

    /// `RawBatchPut`: `ttls` is empty (no TTL), or one per pair.
    pub async fn raw_batch_put(
        &self,
        req: kvrpcpb::RawBatchPutRequest,
    ) -> Result<(), RequestError> {
        check_cf(&req.cf)?;
        let checked = self.check_context(req.context.as_ref())?;
        if !req.ttls.is_empty() && req.ttls.len() != req.pairs.len() {
            return Err(RequestError::invalid(format!(
                "{} TTLs given for {} pairs; give none or one per pair",
                req.ttls.len(),
                req.pairs.len()
            )));
        }
        for pair in &req.pairs {
            self.check_key(&checked, KeyMode::Raw, &pair.key)?;
        }
        let keys: Vec<Vec<u8>> = req.pairs.iter().map(|p| p.key.clone()).collect();
        self.write_with(&checked.region, &keys, |_, batch| {
            let now = now_secs();
            for (i, pair) in req.pairs.into_iter().enumerate() {
                let ttl = req.ttls.get(i).copied().unwrap_or(req.ttl);
                raw::put(batch, pair.key, &pair.value, ttl, now);
            }
            Ok(())
        })
        .await
    }

    /// `RawDelete`.
    pub async fn raw_delete(&self, req: kvrpcpb::RawDeleteRequest) -> Result<(), RequestError> {
        check_cf(&req.cf)?;
        let checked = self.check_context(req.context.as_ref())?;
        self.check_key(&checked, KeyMode::Raw, &req.key)?;
        let keys = [req.key.clone()];
        self.write_with(&checked.region, &keys, |_, batch| {
            raw::delete(batch, req.key);
            Ok(())
        })
        .await
    }

    /// `RawBatchDelete`.
    pub async fn raw_batch_delete(
        &self,
        req: kvrpcpb::RawBatchDeleteRequest,
    ) -> Result<(), RequestError> {
        check_cf(&req.cf)?;
        let checked = self.check_context(req.context.as_ref())?;
        for key in &req.keys {
            self.check_key(&checked, KeyMode::Raw, key)?;
        }
        let keys = req.keys;
        self.write_with(&checked.region, &keys.clone(), |_, batch| {
            for key in keys {
                raw::delete(batch, key);
            }
            Ok(())
        })
        .await
    }

    /// `RawScan`. For reverse scans the client sends the exclusive upper bound as
    /// `start_key` and the inclusive lower bound as `end_key`.
    pub async fn raw_scan(
        &self,
        req: &kvrpcpb::RawScanRequest,
    ) -> Result<Vec<KvPair>, RequestError> {
        check_cf(&req.cf)?;
        let checked = self.check_context(req.context.as_ref())?;
        let limit = self.check_limit(req.limit)?;
        let (lower, upper) = if req.reverse {
            (&req.end_key, &req.start_key)
        } else {
            (&req.start_key, &req.end_key)
        };
        let (start, end) = self.clamp_range(&checked, KeyMode::Raw, lower, upper)?;
        let pairs = raw::scan(
            &*self.engine.snapshot(),
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

    /// `RawBatchScan`: up to `each_limit` pairs per range, ranges in request order.
    pub async fn raw_batch_scan(
        &self,
        req: &kvrpcpb::RawBatchScanRequest,
    ) -> Result<Vec<KvPair>, RequestError> {
        check_cf(&req.cf)?;
        let checked = self.check_context(req.context.as_ref())?;
        let limit = self.check_limit(req.each_limit)?;
        let snapshot = self.engine.snapshot();
        let now = now_secs();
        let mut budget = self.budget();
        let mut pairs = Vec::new();
        for range in &req.ranges {
            let (lower, upper) = if req.reverse {
                (&range.end_key, &range.start_key)
            } else {
                (&range.start_key, &range.end_key)
            };
            let (start, end) = self.clamp_range(&checked, KeyMode::Raw, lower, upper)?;
            for pair in raw::scan(&*snapshot, &start, &end, limit, req.key_only, req.reverse, now)?
            {
                budget.charge(&pair)?;
                pairs.push(pair);
            }
        }
        Ok(pairs)
    }

    /// `RawDeleteRange`: deletes every key in `[start, end) ∩ Region`. Atomic for up to
    /// [`DELETE_RANGE_CHUNK`] keys; larger ranges are deleted in several steps.
    pub async fn raw_delete_range(
        &self,
        req: &kvrpcpb::RawDeleteRangeRequest,
    ) -> Result<(), RequestError> {
        check_cf(&req.cf)?;
        let checked = self.check_context(req.context.as_ref())?;
        if !req.end_key.is_empty() && req.start_key >= req.end_key {
            return Err(RequestError::invalid("delete range needs start key < end key"));
        }
        let (mut start, end) =
            self.clamp_range(&checked, KeyMode::Raw, &req.start_key, &req.end_key)?;
        loop {
            let raw::KeyPage { keys, resume_from } =
                raw::keys_in_range(&*self.engine.snapshot(), &start, &end, DELETE_RANGE_CHUNK)?;
            if !keys.is_empty() {
                self.write_with(&checked.region, &keys.clone(), |_, batch| {
                    keys.into_iter().for_each(|key| raw::delete(batch, key));
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

    /// `RawCompareAndSwap`.
    pub async fn raw_compare_and_swap(
        &self,
        req: kvrpcpb::RawCasRequest,
    ) -> Result<raw::CasOutcome, RequestError> {
        check_cf(&req.cf)?;
        let checked = self.check_context(req.context.as_ref())?;
        self.check_key(&checked, KeyMode::Raw, &req.key)?;
        let expected = (!req.previous_not_exist).then_some(req.previous_value.as_slice());
        let keys = [req.key.clone()];
        self.write_with(&checked.region, &keys, |snapshot, batch| {
            Ok(raw::compare_and_swap(
                snapshot,
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
        let checked = self.check_context(req.context.as_ref())?;
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
