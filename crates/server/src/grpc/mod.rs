//! The gRPC services: `tikvpb.Tikv`, `pdpb.PD` and `keyspacepb.Keyspace`.

pub mod batch;
pub mod keyspace;
pub mod pd;
pub mod tikv;
