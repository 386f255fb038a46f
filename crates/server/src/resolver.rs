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
use crate::txn::TxnResult;
use crate::txn_error::Failure;
use scandium_txn::actions::cleanup::{self, SecondaryStatus};
use scandium_txn::mvcc::{Lock, LockType, MvccReader, TxnCommitRecord};
use scandium_types::{Region, TimeStamp};

impl NodeContext {
    /// Decides and carries out the fate of the async-commit transaction whose (expired)
    /// primary lock is `primary`: returns its commit timestamp, or zero if rolled back.
    pub async fn resolve_async_commit(
        &self,
        primary_key: &[u8],
        primary: &Lock,
    ) -> TxnResult<TimeStamp> {
        let start_ts = primary.ts();
        let mut commit_ts = TimeStamp(primary.min_commit_ts);
        for key in &primary.secondaries {
            let keys = [key.clone()];
            let status = self
                .write_txn_keys(&self.region_of(key)?, &keys, |reader, txn| {
                    Ok(cleanup::check_secondary_locks(reader, txn, &keys, start_ts)?)
                })
                .await?;
            match status {
                SecondaryStatus::Locked(locks) => {
                    for (_, lock) in locks {
                        commit_ts = commit_ts.max(TimeStamp(lock.min_commit_ts));
                    }
                }
                SecondaryStatus::Committed(ts) => {
                    commit_ts = ts;
                    break;
                }
                SecondaryStatus::RolledBack => {
                    commit_ts = TimeStamp::ZERO;
                    break;
                }
            }
        }
        for key in std::iter::once(primary_key).chain(primary.secondaries.iter().map(Vec::as_slice))
        {
            let region = self.region_of(key)?;
            self.resolve_keys_of(&region, &[key.to_vec()], start_ts.0, commit_ts).await?;
        }
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
    /// secondary is not prewritten yet (nothing is changed then).
    pub async fn commit_async_if_complete(
        &self,
        primary_key: &[u8],
        primary: &Lock,
    ) -> TxnResult<Option<TimeStamp>> {
        let start_ts = primary.ts();
        let mut commit_ts = TimeStamp(primary.min_commit_ts);
        {
            let snapshot = self.engine.snapshot();
            let reader = MvccReader::new(&*snapshot);
            for key in &primary.secondaries {
                match reader.load_lock(key).map_err(Failure::from)? {
                    Some(lock)
                        if lock.start_ts == start_ts.0 && lock.kind() != LockType::Pessimistic =>
                    {
                        commit_ts = commit_ts.max(TimeStamp(lock.min_commit_ts));
                    }
                    _ => {
                        match reader.get_txn_commit_record(key, start_ts).map_err(Failure::from)? {
                            TxnCommitRecord::Committed(ts, _) => {
                                commit_ts = ts;
                                break;
                            }
                            _ => return Ok(None),
                        }
                    }
                }
            }
        }
        for key in std::iter::once(primary_key).chain(primary.secondaries.iter().map(Vec::as_slice))
        {
            let region = self.region_of(key)?;
            self.resolve_keys_of(&region, &[key.to_vec()], start_ts.0, commit_ts).await?;
        }
        Ok(Some(commit_ts))
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
