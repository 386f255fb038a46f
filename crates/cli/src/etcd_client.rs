//! The etcd v3 calls `scandium bench --client etcd` makes, so that the yardstick
//! (etcd 3.4 as a 3-member cluster) is measured by the same harness, on the same machine,
//! in the same run as Scandium: same concurrency, keys, values and latency histogram.
//!
//! Only `KV/Put` and `KV/Range` (linearizable: `serializable` left false) are spoken. The
//! messages are declared here with the field numbers of etcd's public API and decode only
//! what the benchmark reads; everything else in a response is skipped as unknown fields.

use tonic::codec::ProstCodec;
use tonic::transport::Channel;

#[derive(Clone, PartialEq, prost::Message)]
struct PutRequest {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PutResponse {}

#[derive(Clone, PartialEq, prost::Message)]
struct RangeRequest {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RangeResponse {
    #[prost(message, repeated, tag = "2")]
    kvs: Vec<KeyValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct KeyValue {
    #[prost(bytes = "vec", tag = "5")]
    value: Vec<u8>,
}

/// One HTTP/2 connection to an etcd member, shared by every benchmark client (as
/// `tikv-client` shares one connection per node).
#[derive(Clone)]
pub struct EtcdClient {
    grpc: tonic::client::Grpc<Channel>,
}

impl EtcdClient {
    pub async fn connect(endpoint: &str) -> Result<Self, String> {
        let url = if endpoint.contains("://") {
            endpoint.to_string()
        } else {
            format!("http://{endpoint}")
        };
        let channel = Channel::from_shared(url)
            .map_err(|e| format!("bad etcd endpoint {endpoint}: {e}"))?
            .connect()
            .await
            .map_err(|e| format!("cannot connect to etcd at {endpoint}: {e}"))?;
        Ok(EtcdClient { grpc: tonic::client::Grpc::new(channel) })
    }

    pub async fn put(&self, key: Vec<u8>, value: Vec<u8>) -> Result<(), String> {
        let _: PutResponse = self.call("/etcdserverpb.KV/Put", PutRequest { key, value }).await?;
        Ok(())
    }

    pub async fn get(&self, key: Vec<u8>) -> Result<Option<Vec<u8>>, String> {
        let response: RangeResponse =
            self.call("/etcdserverpb.KV/Range", RangeRequest { key }).await?;
        Ok(response.kvs.into_iter().next().map(|kv| kv.value))
    }

    async fn call<Q, R>(&self, path: &'static str, request: Q) -> Result<R, String>
    where
        Q: prost::Message + Send + Sync + 'static,
        R: prost::Message + Default + Send + Sync + 'static,
    {
        let mut grpc = self.grpc.clone();
        grpc.ready().await.map_err(|e| format!("etcd connection: {e}"))?;
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
        grpc.unary(tonic::Request::new(request), path, ProstCodec::<Q, R>::default())
            .await
            .map(|response| response.into_inner())
            .map_err(|status| format!("etcd: {}", status.message()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn requests_carry_etcds_field_numbers() {
        let put = PutRequest { key: b"k".to_vec(), value: b"v".to_vec() }.encode_to_vec();
        assert_eq!(put, [0x0a, 1, b'k', 0x12, 1, b'v']);
        let range = RangeRequest { key: b"k".to_vec() }.encode_to_vec();
        assert_eq!(range, [0x0a, 1, b'k']);
    }

    #[test]
    fn a_range_response_yields_its_value_and_skips_the_rest() {
        // header {cluster_id: 7}, kvs [{key: "k", create_revision: 2, value: "v"}], count: 1
        let wire = [0x0a, 2, 0x08, 7, 0x12, 8, 0x0a, 1, b'k', 0x10, 2, 0x2a, 1, b'v', 0x20, 1];
        let response = RangeResponse::decode(&wire[..]).unwrap();
        assert_eq!(response.kvs, [KeyValue { value: b"v".to_vec() }]);
    }
}
