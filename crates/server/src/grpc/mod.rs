//! The gRPC services: `tikvpb.Tikv`, `pdpb.PD` and `keyspacepb.Keyspace`.

pub mod keyspace;
pub mod pd;
pub mod tikv;
