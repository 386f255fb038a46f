//! Proof under faults: a deterministic simulator of a Scandium cluster, and the checkers
//! that judge the histories it (and the chaos suite of real processes) records.
//!
//! The simulator ([`cluster`], [`run`]) drives real [`Store`](scandium_raftstore::Store)s
//! on [`FaultEngine`](scandium_storage::FaultEngine)s from one thread, one simulated
//! clock and one seeded generator, so that a seed is a complete description of a run and
//! replays it byte for byte. Every request runs the server's own command
//! (`scandium_txn::command`), driven by [`commands`] as the server drives it; [`txn`] has
//! the transactional clients and [`routing`] their Region cache. The checkers ([`check`])
//! know nothing of the simulator.

pub mod check;
pub mod cluster;
pub mod commands;
pub mod control;
pub mod flows;
pub mod routing;
pub mod run;
pub mod txn;
