//! `tikvpb.Tikv`: the storage service. Raw methods are served here; transactional methods
//! answer UNIMPLEMENTED until the transaction layer lands.

use crate::context::NodeContext;
use crate::convert::region_to_meta;
use crate::error::RequestError;
use scandium_protocol::kvrpcpb::{self, KvPair};
use scandium_protocol::tikvpb::tikv_server::Tikv;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The storage service of one node.
pub struct TikvService {
    node: Arc<NodeContext>,
}

impl TikvService {
    /// Serves requests against `node`.
    pub fn new(node: Arc<NodeContext>) -> TikvService {
        TikvService { node }
    }
}

fn pairs(pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<KvPair> {
    pairs.into_iter().map(|(key, value)| KvPair { key, value, error: None }).collect()
}

/// Builds a response: `fill` sets the success fields; a failure goes to the response's
/// `region_error` / `error` fields, never to the gRPC status.
macro_rules! respond {
    ($response:ty, $result:expr, |$resp:ident, $value:ident| $fill:expr) => {{
        let mut $resp = <$response>::default();
        match $result {
            Ok($value) => $fill,
            Err(e) => RequestError::fill(e, &mut $resp.region_error, &mut $resp.error),
        }
        Ok(Response::new($resp))
    }};
}

#[tonic::async_trait]
impl Tikv for TikvService {
    async fn raw_get(
        &self,
        request: Request<kvrpcpb::RawGetRequest>,
    ) -> Result<Response<kvrpcpb::RawGetResponse>, Status> {
        let result = self.node.raw_get(request.get_ref()).await;
        respond!(kvrpcpb::RawGetResponse, result, |resp, value| match value {
            Some(value) => resp.value = value,
            None => resp.not_found = true,
        })
    }

    async fn raw_batch_get(
        &self,
        request: Request<kvrpcpb::RawBatchGetRequest>,
    ) -> Result<Response<kvrpcpb::RawBatchGetResponse>, Status> {
        let result = self.node.raw_batch_get(request.get_ref()).await;
        let mut resp = kvrpcpb::RawBatchGetResponse::default();
        match result {
            Ok(found) => resp.pairs = pairs(found),
            Err(RequestError::Region(e)) => resp.region_error = Some(*e),
            // The response has no error field; a pair carrying an error but no key would
            // crash API V2 clients, which strip a prefix from every key.
            Err(e) => return Err(Status::invalid_argument(e.to_string())),
        }
        Ok(Response::new(resp))
    }

    async fn raw_put(
        &self,
        request: Request<kvrpcpb::RawPutRequest>,
    ) -> Result<Response<kvrpcpb::RawPutResponse>, Status> {
        let result = self.node.raw_put(request.into_inner()).await;
        respond!(kvrpcpb::RawPutResponse, result, |_resp, _unit| ())
    }

    async fn raw_batch_put(
        &self,
        request: Request<kvrpcpb::RawBatchPutRequest>,
    ) -> Result<Response<kvrpcpb::RawBatchPutResponse>, Status> {
        let result = self.node.raw_batch_put(request.into_inner()).await;
        respond!(kvrpcpb::RawBatchPutResponse, result, |_resp, _unit| ())
    }

    async fn raw_delete(
        &self,
        request: Request<kvrpcpb::RawDeleteRequest>,
    ) -> Result<Response<kvrpcpb::RawDeleteResponse>, Status> {
        let result = self.node.raw_delete(request.into_inner()).await;
        respond!(kvrpcpb::RawDeleteResponse, result, |_resp, _unit| ())
    }

    async fn raw_batch_delete(
        &self,
        request: Request<kvrpcpb::RawBatchDeleteRequest>,
    ) -> Result<Response<kvrpcpb::RawBatchDeleteResponse>, Status> {
        let result = self.node.raw_batch_delete(request.into_inner()).await;
        respond!(kvrpcpb::RawBatchDeleteResponse, result, |_resp, _unit| ())
    }

    async fn raw_scan(
        &self,
        request: Request<kvrpcpb::RawScanRequest>,
    ) -> Result<Response<kvrpcpb::RawScanResponse>, Status> {
        let result = self.node.raw_scan(request.get_ref()).await;
        let mut resp = kvrpcpb::RawScanResponse::default();
        match result {
            Ok(found) => resp.kvs = pairs(found),
            Err(RequestError::Region(e)) => resp.region_error = Some(*e),
            Err(e) => return Err(Status::invalid_argument(e.to_string())),
        }
        Ok(Response::new(resp))
    }

    async fn raw_batch_scan(
        &self,
        request: Request<kvrpcpb::RawBatchScanRequest>,
    ) -> Result<Response<kvrpcpb::RawBatchScanResponse>, Status> {
        let result = self.node.raw_batch_scan(request.get_ref()).await;
        let mut resp = kvrpcpb::RawBatchScanResponse::default();
        match result {
            Ok(found) => resp.kvs = pairs(found),
            Err(RequestError::Region(e)) => resp.region_error = Some(*e),
            Err(e) => return Err(Status::invalid_argument(e.to_string())),
        }
        Ok(Response::new(resp))
    }

    async fn raw_delete_range(
        &self,
        request: Request<kvrpcpb::RawDeleteRangeRequest>,
    ) -> Result<Response<kvrpcpb::RawDeleteRangeResponse>, Status> {
        let result = self.node.raw_delete_range(request.get_ref()).await;
        respond!(kvrpcpb::RawDeleteRangeResponse, result, |_resp, _unit| ())
    }

    async fn raw_get_key_ttl(
        &self,
        request: Request<kvrpcpb::RawGetKeyTtlRequest>,
    ) -> Result<Response<kvrpcpb::RawGetKeyTtlResponse>, Status> {
        let result = self.node.raw_get_key_ttl(request.get_ref()).await;
        respond!(kvrpcpb::RawGetKeyTtlResponse, result, |resp, ttl| match ttl {
            Some(ttl) => resp.ttl = ttl,
            None => resp.not_found = true,
        })
    }

    async fn raw_compare_and_swap(
        &self,
        request: Request<kvrpcpb::RawCasRequest>,
    ) -> Result<Response<kvrpcpb::RawCasResponse>, Status> {
        let result = self.node.raw_compare_and_swap(request.into_inner()).await;
        respond!(kvrpcpb::RawCasResponse, result, |resp, outcome| {
            resp.succeed = outcome.succeeded;
            match outcome.previous {
                Some(previous) => resp.previous_value = previous,
                None => resp.previous_not_exist = true,
            }
        })
    }

    async fn raw_checksum(
        &self,
        request: Request<kvrpcpb::RawChecksumRequest>,
    ) -> Result<Response<kvrpcpb::RawChecksumResponse>, Status> {
        let result = self.node.raw_checksum(request.get_ref()).await;
        respond!(kvrpcpb::RawChecksumResponse, result, |resp, sum| {
            resp.checksum = sum.crc64_xor;
            resp.total_kvs = sum.total_kvs;
            resp.total_bytes = sum.total_bytes;
        })
    }

    async fn split_region(
        &self,
        request: Request<kvrpcpb::SplitRegionRequest>,
    ) -> Result<Response<kvrpcpb::SplitRegionResponse>, Status> {
        let req = request.into_inner();
        let mut keys = req.split_keys;
        if !req.split_key.is_empty() {
            keys.push(req.split_key);
        }
        let mut resp = kvrpcpb::SplitRegionResponse::default();
        match crate::split::split_at_keys(&self.node, keys).await {
            Ok(regions) => resp.regions = regions.iter().map(region_to_meta).collect(),
            Err(RequestError::Region(e)) => resp.region_error = Some(*e),
            Err(e) => return Err(Status::invalid_argument(e.to_string())),
        }
        Ok(Response::new(resp))
    }
}
