//! A Scandium node: the one place that owns threads, sockets and the wall clock.
//!
//! [`Node::start`] opens the engine, bootstraps a single-node cluster on first start, runs
//! the Raft thread over every Region and the placement group, and serves three gRPC
//! services (`tikvpb.Tikv`, `pdpb.PD`, `keyspacepb.Keyspace`) and an HTTP/1.1 API on one
//! port. Request handlers validate against the Region registry, take latches, read a
//! snapshot, and propose write batches to Raft.

pub mod authz;
pub mod clock;
pub mod commands;
pub mod config;
pub mod convert;
pub mod disk;
pub mod error;
pub mod flow;
pub mod gc_worker;
pub mod grpc;
pub mod heartbeat;
pub mod http;
pub mod identity;
pub mod idle_flush;
pub mod load_split;
pub mod metrics;
pub mod network;
pub mod node;
pub mod placement;
pub mod process;
pub mod raft_driver;
pub mod raw;
pub mod redact;
pub mod remote;
pub mod replica;
pub mod split;
pub mod split_check;
pub mod tasks;
pub mod tls;
pub mod transport;
pub mod ttl;
pub mod txn;
pub mod txn_error;

pub use config::Config;
pub use node::{Node, NodeError};
