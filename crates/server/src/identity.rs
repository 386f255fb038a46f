//! [`Identity`]: who this node is. Fixed once the node has started, so every part keeps
//! its own copy instead of asking a shared context.

use scandium_types::StoreId;

/// This node's cluster, store and address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The cluster this node belongs to; requests naming another are refused.
    pub cluster_id: u64,
    /// This node's store.
    pub store_id: StoreId,
    /// The address clients and other nodes reach this node at.
    pub address: String,
    /// `https` if the node serves TLS, else `http`: the scheme of the URLs it gives
    /// (PD members' `client_urls`; Go clients prefer `https` ones).
    pub scheme: &'static str,
}

impl Identity {
    /// The URL a node at `address` is reached at, with this node's scheme (every node of
    /// a cluster serves TLS or none does).
    pub fn url_of(&self, address: &str) -> String {
        format!("{}://{address}", self.scheme)
    }
}
