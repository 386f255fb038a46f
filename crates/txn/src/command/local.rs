//! The commands that answer a remote call ([`RemoteCall`]) on the Region's leader, for a
//! driver that finds the Region led where it runs.

use super::txn as commands;
use super::{Command, KeyState, RemoteCall, RemoteReply, SecondaryFate};
use crate::actions::cleanup::SecondaryStatus;
use crate::node::TxnNode;
use scandium_types::keyspace::ApiVersion;
use std::sync::Arc;

/// The command that answers `call` on the key's Region's leader, for a driver that finds
/// the Region led where it runs (the server's storage service runs the same commands for
/// calls that come over the network).
pub fn local_call(node: &Arc<TxnNode>, call: RemoteCall) -> Command<RemoteReply> {
    // Keys reach here already encoded as stored: no API V2 prefix rules apply.
    let api = ApiVersion::V1;
    match call {
        RemoteCall::CheckSecondary { key, start_ts } => {
            commands::check_secondary_locks(node, api, vec![key], start_ts).map(|status| {
                RemoteReply::Secondary(match status {
                    SecondaryStatus::Locked(locks) => SecondaryFate::Locked(
                        locks.iter().map(|(_, l)| l.min_commit_ts).max().unwrap_or(0),
                    ),
                    SecondaryStatus::Committed(ts) => SecondaryFate::Committed(ts),
                    SecondaryStatus::RolledBack => SecondaryFate::RolledBack,
                })
            })
        }
        RemoteCall::ReadTxnKey { key, start_ts } => {
            commands::read_txn_keys(node, vec![key], start_ts).map(|states| {
                RemoteReply::KeyState(states.first().copied().unwrap_or(KeyState::None))
            })
        }
        RemoteCall::ResolveKey { key, start_ts, commit_ts } => {
            commands::resolve_lock(node, api, vec![(start_ts.0, commit_ts.0)], vec![key])
                .map(|()| RemoteReply::Resolved)
        }
        RemoteCall::CheckTxnStatus(status) => commands::check_txn_status(node, api, status)
            .map(|(status, _)| RemoteReply::Status(status)),
    }
}
