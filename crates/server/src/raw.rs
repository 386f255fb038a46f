//! The raw key-value API on this node: each request decoded into its command
//! (`scandium_txn::command::raw`), which [`Storage::run`] carries out.

use crate::commands::{request_context, Storage, Target};
use crate::error::RequestError;
use scandium_protocol::kvrpcpb;
use scandium_storage::{Cf, KvPair};
use scandium_txn::command::raw::{self, KeyRange, RawTarget, ScanOptions};
use scandium_txn::raw::{CasOutcome, Checksum};
use scandium_types::keyspace::ApiVersion;

/// The most ranges one `RawChecksum` may name.
pub const MAX_CHECKSUM_RANGES: usize = 64;

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

/// A raw request's context, and the namespace it addresses.
fn raw_target<'a>(
    context: Option<&'a kvrpcpb::Context>,
    cf: &str,
) -> Result<(Target<'a>, RawTarget), RequestError> {
    let (context, api) = request_context(context)?;
    Ok((Target::Request(context), RawTarget { api, cf: raw_cf(cf, api)? }))
}

/// Pairs read, as [`Storage::count_read`] counts them.
fn read_pairs(pairs: &[KvPair]) -> impl Iterator<Item = (&[u8], &[u8])> {
    pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))
}

impl Storage {
    /// `RawGet`.
    pub async fn raw_get(
        &self,
        req: &kvrpcpb::RawGetRequest,
    ) -> Result<Option<Vec<u8>>, RequestError> {
        let (target, raw) = raw_target(req.context.as_ref(), &req.cf)?;
        self.sample_load(req.context.as_ref(), [req.key.as_slice()]);
        let value = self.run(target, raw::get(self.txn(), raw, req.key.clone())).await?;
        let pair = value.as_ref().map(|v| (req.key.as_slice(), v.as_slice()));
        self.count_read(req.context.as_ref(), pair);
        Ok(value)
    }

    /// `RawBatchGet`: found pairs in request order; missing keys are omitted.
    pub async fn raw_batch_get(
        &self,
        req: &kvrpcpb::RawBatchGetRequest,
    ) -> Result<Vec<KvPair>, RequestError> {
        let (target, raw) = raw_target(req.context.as_ref(), &req.cf)?;
        self.sample_load(req.context.as_ref(), req.keys.iter().map(Vec::as_slice));
        let pairs = self.run(target, raw::batch_get(self.txn(), raw, req.keys.clone())).await?;
        self.count_read(req.context.as_ref(), read_pairs(&pairs));
        Ok(pairs)
    }

    /// `RawGetKeyTTL`: remaining seconds (0 = no TTL), `None` if absent.
    pub async fn raw_get_key_ttl(
        &self,
        req: &kvrpcpb::RawGetKeyTtlRequest,
    ) -> Result<Option<u64>, RequestError> {
        let (target, raw) = raw_target(req.context.as_ref(), &req.cf)?;
        Ok(self.run(target, raw::get_key_ttl(self.txn(), raw, req.key.clone())).await?)
    }

    /// `RawPut`.
    pub async fn raw_put(&self, req: kvrpcpb::RawPutRequest) -> Result<(), RequestError> {
        let (target, raw) = raw_target(req.context.as_ref(), &req.cf)?;
        self.sample_load(req.context.as_ref(), [req.key.as_slice()]);
        let pairs = vec![(req.key, req.value, req.ttl)];
        Ok(self.run(target, raw::put(self.txn(), raw, pairs)).await?)
    }

    /// `RawBatchPut`. `ttls` holds one TTL per pair, or one for every pair (as the Python
    /// clients send it, and TiKV accepts), or none (then the request's `ttl`).
    pub async fn raw_batch_put(
        &self,
        req: kvrpcpb::RawBatchPutRequest,
    ) -> Result<(), RequestError> {
        let (target, raw) = raw_target(req.context.as_ref(), &req.cf)?;
        let ttl_of = |i: usize| match req.ttls.len() {
            0 => Ok(req.ttl),
            1 => Ok(req.ttls[0]),
            n if n == req.pairs.len() => Ok(req.ttls[i]),
            n => Err(RequestError::invalid(format!(
                "{n} TTLs given for {} pairs; give none, one for every pair, or one per pair",
                req.pairs.len()
            ))),
        };
        ttl_of(0)?;
        self.sample_load(req.context.as_ref(), req.pairs.iter().map(|p| p.key.as_slice()));
        let mut pairs = Vec::with_capacity(req.pairs.len());
        for (i, pair) in req.pairs.iter().enumerate() {
            pairs.push((pair.key.clone(), pair.value.clone(), ttl_of(i)?));
        }
        Ok(self.run(target, raw::put(self.txn(), raw, pairs)).await?)
    }

    /// `RawDelete`.
    pub async fn raw_delete(&self, req: kvrpcpb::RawDeleteRequest) -> Result<(), RequestError> {
        let (target, raw) = raw_target(req.context.as_ref(), &req.cf)?;
        self.sample_load(req.context.as_ref(), [req.key.as_slice()]);
        Ok(self.run(target, raw::delete(self.txn(), raw, vec![req.key])).await?)
    }

    /// `RawBatchDelete`.
    pub async fn raw_batch_delete(
        &self,
        req: kvrpcpb::RawBatchDeleteRequest,
    ) -> Result<(), RequestError> {
        let (target, raw) = raw_target(req.context.as_ref(), &req.cf)?;
        Ok(self.run(target, raw::delete(self.txn(), raw, req.keys)).await?)
    }

    /// `RawScan`.
    pub async fn raw_scan(
        &self,
        req: &kvrpcpb::RawScanRequest,
    ) -> Result<Vec<KvPair>, RequestError> {
        let (target, raw) = raw_target(req.context.as_ref(), &req.cf)?;
        let range = KeyRange { start: req.start_key.clone(), end: req.end_key.clone() };
        let options =
            ScanOptions { limit: req.limit, key_only: req.key_only, reverse: req.reverse };
        self.sample_load(req.context.as_ref(), [req.start_key.as_slice()]);
        let pairs = self.run(target, raw::scan(self.txn(), raw, range, options)).await?;
        self.count_read(req.context.as_ref(), read_pairs(&pairs));
        Ok(pairs)
    }

    /// `RawBatchScan`.
    pub async fn raw_batch_scan(
        &self,
        req: &kvrpcpb::RawBatchScanRequest,
    ) -> Result<Vec<KvPair>, RequestError> {
        let (target, raw) = raw_target(req.context.as_ref(), &req.cf)?;
        let ranges = req
            .ranges
            .iter()
            .map(|r| KeyRange { start: r.start_key.clone(), end: r.end_key.clone() })
            .collect();
        let options =
            ScanOptions { limit: req.each_limit, key_only: req.key_only, reverse: req.reverse };
        let pairs = self.run(target, raw::batch_scan(self.txn(), raw, ranges, options)).await?;
        self.count_read(req.context.as_ref(), read_pairs(&pairs));
        Ok(pairs)
    }

    /// `RawDeleteRange`.
    pub async fn raw_delete_range(
        &self,
        req: &kvrpcpb::RawDeleteRangeRequest,
    ) -> Result<(), RequestError> {
        let (target, raw) = raw_target(req.context.as_ref(), &req.cf)?;
        let range = KeyRange { start: req.start_key.clone(), end: req.end_key.clone() };
        Ok(self.run(target, raw::delete_range(self.txn(), raw, range)).await?)
    }

    /// `RawCompareAndSwap`.
    pub async fn raw_compare_and_swap(
        &self,
        req: kvrpcpb::RawCasRequest,
    ) -> Result<CasOutcome, RequestError> {
        let (target, raw) = raw_target(req.context.as_ref(), &req.cf)?;
        self.sample_load(req.context.as_ref(), [req.key.as_slice()]);
        let expected = (!req.previous_not_exist).then_some(req.previous_value);
        let command = raw::compare_and_swap(self.txn(), raw, req.key, expected, req.value, req.ttl);
        Ok(self.run(target, command).await?)
    }

    /// `RawChecksum` over the given ranges, each clamped to the Region (at most
    /// [`MAX_CHECKSUM_RANGES`]: each is a scan of up to the whole Region on a shared
    /// worker, and millions of them held the node for hours).
    pub async fn raw_checksum(
        &self,
        req: &kvrpcpb::RawChecksumRequest,
    ) -> Result<Checksum, RequestError> {
        if req.ranges.len() > MAX_CHECKSUM_RANGES {
            let count = req.ranges.len();
            let why = format!("RawChecksum names {count} ranges; at most {MAX_CHECKSUM_RANGES}");
            return Err(RequestError::invalid(why));
        }
        let (context, api) = request_context(req.context.as_ref())?;
        let ranges = req
            .ranges
            .iter()
            .map(|r| KeyRange { start: r.start_key.clone(), end: r.end_key.clone() })
            .collect();
        Ok(self.run(Target::Request(context), raw::checksum(self.txn(), api, ranges)).await?)
    }
}
