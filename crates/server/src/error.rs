//! Errors of request handling and their mapping onto kvproto.
//!
//! Every failure a handler can meet ends up as exactly one of:
//! * a Region error (`errorpb.Error` in the response's `region_error`), which tells the
//!   client to refresh its Region cache and retry;
//! * an error string (the response's `error`), for requests that are wrong or that failed
//!   for reasons a retry at another Region would not fix.
//!
//! This module is the one place where that decision is made.

use crate::convert::region_to_meta;
use scandium_protocol::errorpb;
use scandium_raftstore::RaftstoreError;
use scandium_txn::raw::RawError;
use thiserror::Error;

/// Why a request failed.
#[derive(Debug, Error)]
pub enum RequestError {
    /// The client must refresh its Region information and retry.
    #[error("region error: {}", .0.message)]
    Region(Box<errorpb::Error>),
    /// The request is malformed or exceeds a limit; retrying it unchanged fails again.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The node failed to serve a valid request.
    #[error("internal error: {0}")]
    Internal(String),
}

impl RequestError {
    /// Shorthand for [`RequestError::Invalid`].
    pub fn invalid(message: impl Into<String>) -> RequestError {
        RequestError::Invalid(message.into())
    }

    /// How a request answered with this error ended, for its metrics.
    pub fn outcome(&self) -> crate::metrics::Outcome {
        match self {
            RequestError::Region(_) => crate::metrics::Outcome::RegionError,
            _ => crate::metrics::Outcome::Error,
        }
    }

    /// Writes the error into a response's `region_error` and `error` fields.
    pub fn fill(self, region_error: &mut Option<errorpb::Error>, error: &mut String) {
        match self {
            RequestError::Region(e) => {
                crate::metrics::METRICS.region_error(&e);
                *region_error = Some(*e)
            }
            other => *error = other.to_string(),
        }
    }
}

impl From<RaftstoreError> for RequestError {
    fn from(e: RaftstoreError) -> RequestError {
        let message = e.to_string();
        let mut error = errorpb::Error { message, ..Default::default() };
        match e {
            RaftstoreError::RegionNotFound(region_id) => {
                error.region_not_found = Some(errorpb::RegionNotFound { region_id });
            }
            RaftstoreError::NotLeader { region_id, leader } => {
                let leader = leader.map(|p| crate::convert::peer_to_meta(&p));
                error.not_leader = Some(errorpb::NotLeader { region_id, leader });
            }
            RaftstoreError::EpochNotMatch { current } => {
                let current_regions = current.iter().map(region_to_meta).collect();
                error.epoch_not_match = Some(errorpb::EpochNotMatch { current_regions });
            }
            RaftstoreError::KeyNotInRegion { key, region } => {
                error.key_not_in_region = Some(errorpb::KeyNotInRegion {
                    key,
                    region_id: region.id,
                    start_key: region.start_key,
                    end_key: region.end_key,
                });
            }
            RaftstoreError::EntryTooLarge { region_id, size, .. } => {
                error.raft_entry_too_large =
                    Some(errorpb::RaftEntryTooLarge { region_id, entry_size: size });
            }
            RaftstoreError::StaleCommand => error.stale_command = Some(errorpb::StaleCommand {}),
            // The one Region error tikv-client 0.4 hands to the user instead of retrying:
            // sending the command again could apply it twice.
            RaftstoreError::OutcomeUnknown { .. } => {
                error.server_is_busy = Some(errorpb::ServerIsBusy {
                    reason: error.message.clone(),
                    ..Default::default()
                });
            }
            RaftstoreError::InvalidCommand(m) => return RequestError::Invalid(m),
            RaftstoreError::ChangeRefused(m) => return RequestError::Internal(m),
            RaftstoreError::Storage(e) => return RequestError::Internal(e.to_string()),
        }
        RequestError::Region(Box::new(error))
    }
}

impl From<RawError> for RequestError {
    fn from(e: RawError) -> RequestError {
        RequestError::Internal(e.to_string())
    }
}

impl From<scandium_txn::TxnError> for RequestError {
    fn from(e: scandium_txn::TxnError) -> RequestError {
        RequestError::Internal(e.to_string())
    }
}

impl From<scandium_storage::StorageError> for RequestError {
    fn from(e: scandium_storage::StorageError) -> RequestError {
        RequestError::Internal(e.to_string())
    }
}

/// A Region error telling the client this store is not the one it meant.
pub fn store_not_match(requested: u64, actual: u64) -> RequestError {
    RequestError::Region(Box::new(errorpb::Error {
        message: format!("request for store {requested} reached store {actual}"),
        store_not_match: Some(errorpb::StoreNotMatch {
            request_store_id: requested,
            actual_store_id: actual,
        }),
        ..Default::default()
    }))
}
