//! Protobuf messages and gRPC services of Scandium's wire protocol, generated from our own
//! `.proto` subset of kvproto (see `proto/`). Package names are kvproto's, so method paths
//! such as `/tikvpb.Tikv/RawGet` match what TiKV clients call.
//!
//! Generated code only; everything else lives in the crates that use it.

#![allow(missing_docs, clippy::all)]

/// Cluster metadata: stores, Regions, peers.
pub mod metapb {
    tonic::include_proto!("metapb");
}
/// Region errors.
pub mod errorpb {
    tonic::include_proto!("errorpb");
}
/// Storage requests and responses.
pub mod kvrpcpb {
    tonic::include_proto!("kvrpcpb");
}
/// The storage service.
pub mod tikvpb {
    tonic::include_proto!("tikvpb");
}
/// The placement driver service.
pub mod pdpb {
    tonic::include_proto!("pdpb");
}
/// The keyspace service.
pub mod keyspacepb {
    tonic::include_proto!("keyspacepb");
}
/// Scandium's own node-to-node service (Raft transport, joining, forwarding to the
/// placement leader); no TiKV client calls it.
pub mod scandium {
    tonic::include_proto!("scandium");
}
