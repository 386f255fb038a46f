//! Resolving async-commit transactions whose client vanished.
//!
//! An async-commit transaction is committed as soon as every one of its locks is written,
//! so its primary alone cannot tell whether it committed, and `CheckTxnStatus` never rolls
//! such a primary back. Once the primary's TTL has run out, the node decides the fate
//! itself, exactly as client-go does: it asks every secondary (`check_secondary_locks`,
//! which also writes a rollback record on a secondary that has no lock yet, so a late
//! prewrite cannot revive the transaction). If every secondary holds its lock, the
//! transaction committed at the largest `min_commit_ts`; otherwise it is rolled back. Then
//! every key is resolved accordingly.
//!
//! `tikv-client` 0.4 relies on this: its readers only resolve locks whose transaction
//! `CheckTxnStatus` reports as finished.

use crate::context::NodeContext;
use crate::remote::SecondaryFate;
use crate::txn::TxnResult;
use crate::txn_error::Failure;
use scandium_txn::mvcc::Lock;
use scandium_types::{Region, TimeStamp};

impl NodeContext {
    /// Decides and carries out the fate of the async-commit transaction whose (expired)
    /// primary lock is `primary`: returns its commit timestamp, or zero if rolled back.
    /// Each secondary is asked on its Region's leader, wherever that is.
    pub async fn resolve_async_commit(
        &self,
        primary_key: &[u8],
        primary: &Lock,
    ) -> TxnResult<TimeStamp> {
        let start_ts = primary.ts();
        let mut commit_ts = TimeStamp(primary.min_commit_ts);
        for key in &primary.secondaries {
            match self.check_secondary_anywhere(key, start_ts).await? {
                SecondaryFate::Locked(min_commit_ts) => {
                    commit_ts = commit_ts.max(TimeStamp(min_commit_ts));
                }
                SecondaryFate::Committed(ts) => {
                    commit_ts = ts;
                    break;
                }
                SecondaryFate::RolledBack => {
                    commit_ts = TimeStamp::ZERO;
                    break;
                }
            }
        }
        self.resolve_everywhere(primary_key, primary, commit_ts).await?;
        tracing::info!(
            start_ts = start_ts.0,
            commit_ts = commit_ts.0,
            "resolved an abandoned async-commit transaction"
        );
        Ok(commit_ts)
    }

    /// For an async-commit transaction that is still within its TTL: if every secondary
    /// already holds its prewrite lock (or was committed), the transaction is committed (at
    /// the largest `min_commit_ts`), so commit every key now rather than make readers wait
    /// for the client's background commit. Returns the commit timestamp, or `None` if some
    /// secondary is not prewritten yet (nothing is changed then). Secondaries are read on
    /// their Regions' leaders.
    pub async fn commit_async_if_complete(
        &self,
        primary_key: &[u8],
        primary: &Lock,
    ) -> TxnResult<Option<TimeStamp>> {
        let start_ts = primary.ts();
        let mut commit_ts = TimeStamp(primary.min_commit_ts);
        for key in &primary.secondaries {
            let state = self.read_txn_key_anywhere(key, start_ts).await?;
            match state.state {
                PREWRITTEN => commit_ts = commit_ts.max(TimeStamp(state.min_commit_ts)),
                COMMITTED => {
                    commit_ts = TimeStamp(state.commit_ts);
                    break;
                }
                _ => return Ok(None),
            }
        }
        self.resolve_everywhere(primary_key, primary, commit_ts).await?;
        Ok(Some(commit_ts))
    }

    async fn resolve_everywhere(
        &self,
        primary_key: &[u8],
        primary: &Lock,
        commit_ts: TimeStamp,
    ) -> TxnResult<()> {
        let start_ts = primary.ts();
        for key in std::iter::once(primary_key).chain(primary.secondaries.iter().map(Vec::as_slice))
        {
            self.resolve_key_anywhere(key, start_ts, commit_ts).await?;
        }
        Ok(())
    }

    /// The Region on this node holding `key`.
    pub fn region_of(&self, key: &[u8]) -> TxnResult<Region> {
        self.registry.find_by_key(key).map(|status| status.region).ok_or_else(|| {
            Failure::from(crate::error::RequestError::Internal(format!(
                "no region holds {}",
                key.escape_ascii()
            )))
        })
    }
}

/// `TxnKeyState.state` of a key holding the transaction's prewrite lock.
const PREWRITTEN: u32 = 1;
/// `TxnKeyState.state` of a key the transaction committed.
const COMMITTED: u32 = 3;
