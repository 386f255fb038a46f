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

#[cfg(test)]
mod tests {
    /// A BatchCommands request's commands are boxed: a command decodes into a pointer's
    /// worth, whatever its kind, so a request of millions of empty commands (two bytes each
    /// on the wire) decodes into tens of megabytes, not gigabytes.
    #[test]
    fn a_batched_command_is_a_pointer_wide() {
        use super::tikvpb::batch_commands_request::Request;
        assert!(std::mem::size_of::<Request>() <= 16, "{}", std::mem::size_of::<Request>());
    }
}
