//! The gRPC services: `tikvpb.Tikv`, `pdpb.PD` and `keyspacepb.Keyspace` for clients, and
//! `scandium.Cluster` between nodes.

pub mod batch;
pub mod cluster;
pub mod guard;
pub mod keyspace;
pub mod pd;
pub mod tikv;
