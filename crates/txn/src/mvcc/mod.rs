//! Multi-version storage for transactions, as in Percolator and TiKV.
//!
//! ```text
//!  Lock CF     user_key                 -> Lock   (a transaction's claim on the key)
//!  Write CF    user_key ++ !commit_ts   -> Write  (commit or rollback record, value inline
//!                                                  when short)
//!  Default CF  user_key ++ !start_ts    -> value  (values longer than SHORT_VALUE_MAX_LEN)
//!  Latest CF   user_key                 -> commit_ts ++ Write  (the key's newest record;
//!                                                  an index of the Write CF, see [`latest`])
//! ```
//!
//! (`++ !ts` is [`scandium_types::mvcc::versioned_key`]: versions sort newest first.)
//!
//! A read at timestamp `ts` sees the newest Put or Delete whose commit timestamp is at most
//! `ts`, unless a lock from a transaction that might commit at or below `ts` blocks it.

pub mod latest;
mod reader;
mod records;
mod txn;

pub use reader::{MvccReader, Newest, TxnCommitRecord};
pub use records::{Lock, LockType, Write, WriteType, SHORT_VALUE_MAX_LEN};
pub use txn::MvccTxn;
