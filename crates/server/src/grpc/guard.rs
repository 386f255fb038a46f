//! What each storage request needs of the caller's grants ([`crate::authz`]), and how a
//! refusal is answered.
//!
//! A refusal goes where each response carries its errors (the raw `error` text, the key
//! error, the pairs' errors), as `PERMISSION_DENIED: ...`: tikv-client 0.4 retries a gRPC
//! status ten times with backoff, invalidating its caches each time, but returns a key
//! error to the application at once; tikv-python raises both at once.

use crate::authz::{Need, Space};
use scandium_protocol::kvrpcpb::{self, KeyError, KvPair};
use scandium_txn::command::{batch_range_end, scan_bounds};

/// A request whose keys the grants are checked against.
pub trait Guarded {
    /// The keys and ranges it touches, and whether it writes.
    fn need(&self) -> Need<'_>;
}

/// A response that can carry a refusal.
pub trait Refusal: Default {
    /// Fills in the refusal; `key` is a key of the request, for responses whose only
    /// error fields are their pairs' (API V2 clients strip a prefix from every pair's key).
    fn refuse(&mut self, message: String, key: Vec<u8>);
}

fn ranges<'a>(space: Space, write: bool, ranges: Vec<(&'a [u8], &'a [u8])>) -> Need<'a> {
    Need::Keys { space, write, keys: Vec::new(), ranges }
}

macro_rules! keys {
    ($($request:ident: $space:ident $write:literal |$r:ident| $keys:expr;)*) => {$(
        impl Guarded for kvrpcpb::$request {
            fn need(&self) -> Need<'_> {
                let $r = self;
                Need::keys(Space::$space, $write, $keys)
            }
        }
    )*};
}

keys! {
    RawGetRequest: Raw false |r| [r.key.as_slice()];
    RawBatchGetRequest: Raw false |r| r.keys.iter().map(Vec::as_slice);
    RawPutRequest: Raw true |r| [r.key.as_slice()];
    RawBatchPutRequest: Raw true |r| r.pairs.iter().map(|p| p.key.as_slice());
    RawDeleteRequest: Raw true |r| [r.key.as_slice()];
    RawBatchDeleteRequest: Raw true |r| r.keys.iter().map(Vec::as_slice);
    RawGetKeyTtlRequest: Raw false |r| [r.key.as_slice()];
    RawCasRequest: Raw true |r| [r.key.as_slice()];
    GetRequest: Txn false |r| [r.key.as_slice()];
    BatchGetRequest: Txn false |r| r.keys.iter().map(Vec::as_slice);
    CommitRequest: Txn true |r| r.keys.iter().map(Vec::as_slice);
    BatchRollbackRequest: Txn true |r| r.keys.iter().map(Vec::as_slice);
    // Lock resolution: a reader that meets another transaction's lock must settle it
    // (roll it back once expired, or finish its commit) to read at all, so read access
    // suffices, with the outcome checked against the primary for a reader (see
    // `Storage::kv_resolve_lock` and `kv_check_txn_status`). `Cleanup` rolls a key's lock
    // back without asking its primary (tikv-client 0.4 never sends it): writers only.
    CleanupRequest: Txn true |r| [r.key.as_slice()];
    CheckTxnStatusRequest: Txn false |r| [r.primary_key.as_slice()];
    CheckSecondaryLocksRequest: Txn false |r| r.keys.iter().map(Vec::as_slice);
    TxnHeartBeatRequest: Txn true |r| [r.primary_lock.as_slice()];
    PessimisticRollbackRequest: Txn true |r| r.keys.iter().map(Vec::as_slice);
    PrewriteRequest: Txn true |r| r.mutations.iter().map(|m| m.key.as_slice())
        .chain([r.primary_lock.as_slice()])
        .chain(r.secondaries.iter().map(Vec::as_slice));
    PessimisticLockRequest: Txn true |r| r.mutations.iter().map(|m| m.key.as_slice())
        .chain([r.primary_lock.as_slice()]);
}

impl Guarded for kvrpcpb::RawScanRequest {
    fn need(&self) -> Need<'_> {
        let (lower, upper) = scan_bounds(&self.start_key, &self.end_key, self.reverse);
        Need::range(Space::Raw, false, lower, upper)
    }
}

impl Guarded for kvrpcpb::RawBatchScanRequest {
    fn need(&self) -> Need<'_> {
        // As the scan reads them: an empty end is the next range's start.
        let each = self.ranges.iter().enumerate().map(|(i, r)| {
            let next_start = self.ranges.get(i + 1).map(|next| next.start_key.as_slice());
            let end = batch_range_end(&r.end_key, next_start);
            scan_bounds(&r.start_key, end, self.reverse)
        });
        ranges(Space::Raw, false, each.collect())
    }
}

impl Guarded for kvrpcpb::RawChecksumRequest {
    fn need(&self) -> Need<'_> {
        let each = self.ranges.iter().map(|r| (r.start_key.as_slice(), r.end_key.as_slice()));
        ranges(Space::Raw, false, each.collect())
    }
}

impl Guarded for kvrpcpb::RawDeleteRangeRequest {
    fn need(&self) -> Need<'_> {
        Need::range(Space::Raw, true, &self.start_key, &self.end_key)
    }
}

impl Guarded for kvrpcpb::ScanRequest {
    fn need(&self) -> Need<'_> {
        let (lower, upper) = scan_bounds(&self.start_key, &self.end_key, self.reverse);
        Need::range(Space::Txn, false, lower, upper)
    }
}

impl Guarded for kvrpcpb::DeleteRangeRequest {
    fn need(&self) -> Need<'_> {
        Need::range(Space::Txn, true, &self.start_key, &self.end_key)
    }
}

impl Guarded for kvrpcpb::ScanLockRequest {
    fn need(&self) -> Need<'_> {
        match self.end_key.is_empty() {
            // To the end of the Region the request names.
            true => Need::Region { space: Space::Txn, write: false, from: &self.start_key },
            false => Need::range(Space::Txn, false, &self.start_key, &self.end_key),
        }
    }
}

/// Lock resolution needs read access only (see `CleanupRequest` above).
impl Guarded for kvrpcpb::ResolveLockRequest {
    fn need(&self) -> Need<'_> {
        match self.keys.is_empty() {
            // Every lock of the transactions in the Region the request names.
            true => Need::Region { space: Space::Txn, write: false, from: b"" },
            false => Need::keys(Space::Txn, false, self.keys.iter().map(Vec::as_slice)),
        }
    }
}

impl Guarded for kvrpcpb::GcRequest {
    fn need(&self) -> Need<'_> {
        Need::Admin
    }
}

impl Guarded for kvrpcpb::UnsafeDestroyRangeRequest {
    fn need(&self) -> Need<'_> {
        Need::Admin
    }
}

fn abort(message: String) -> KeyError {
    KeyError { abort: message, ..Default::default() }
}

macro_rules! text_error {
    ($($response:ident),* $(,)?) => {$(
        impl Refusal for kvrpcpb::$response {
            fn refuse(&mut self, message: String, _key: Vec<u8>) {
                self.error = message;
            }
        }
    )*};
}

text_error!(
    RawGetResponse,
    RawPutResponse,
    RawBatchPutResponse,
    RawDeleteResponse,
    RawBatchDeleteResponse,
    RawDeleteRangeResponse,
    RawGetKeyTtlResponse,
    RawCasResponse,
    RawChecksumResponse,
    DeleteRangeResponse,
    UnsafeDestroyRangeResponse,
);

macro_rules! key_error {
    ($($response:ident),* $(,)?) => {$(
        impl Refusal for kvrpcpb::$response {
            fn refuse(&mut self, message: String, _key: Vec<u8>) {
                self.error = Some(abort(message));
            }
        }
    )*};
}

key_error!(
    GetResponse,
    CommitResponse,
    BatchRollbackResponse,
    CleanupResponse,
    CheckTxnStatusResponse,
    CheckSecondaryLocksResponse,
    TxnHeartBeatResponse,
    ResolveLockResponse,
    ScanLockResponse,
    GcResponse,
);

macro_rules! key_errors {
    ($($response:ident),* $(,)?) => {$(
        impl Refusal for kvrpcpb::$response {
            fn refuse(&mut self, message: String, _key: Vec<u8>) {
                self.errors = vec![abort(message)];
            }
        }
    )*};
}

key_errors!(PrewriteResponse, PessimisticLockResponse, PessimisticRollbackResponse);

fn carrying(message: String, key: Vec<u8>) -> Vec<KvPair> {
    vec![KvPair { key, value: Vec::new(), error: Some(abort(message)) }]
}

impl Refusal for kvrpcpb::RawBatchGetResponse {
    fn refuse(&mut self, message: String, key: Vec<u8>) {
        self.pairs = carrying(message, key);
    }
}

impl Refusal for kvrpcpb::RawScanResponse {
    fn refuse(&mut self, message: String, key: Vec<u8>) {
        self.kvs = carrying(message, key);
    }
}

impl Refusal for kvrpcpb::RawBatchScanResponse {
    fn refuse(&mut self, message: String, key: Vec<u8>) {
        self.kvs = carrying(message, key);
    }
}

/// Scans and batch gets: tikv-client 0.4 reads only the pairs' errors of these, and
/// other clients the response's own.
macro_rules! pairs_and_error {
    ($($response:ident),* $(,)?) => {$(
        impl Refusal for kvrpcpb::$response {
            fn refuse(&mut self, message: String, key: Vec<u8>) {
                self.pairs = carrying(message.clone(), key);
                self.error = Some(abort(message));
            }
        }
    )*};
}

pairs_and_error!(ScanResponse, BatchGetResponse);

/// The first key a need names, for [`Refusal::refuse`].
pub fn first_key(need: &Need) -> Vec<u8> {
    match need {
        Need::Keys { keys, ranges, .. } => keys
            .first()
            .or(ranges.first().map(|(start, _)| start))
            .map_or(Vec::new(), |k| k.to_vec()),
        Need::Region { from, .. } => from.to_vec(),
        Need::Admin => Vec::new(),
    }
}
