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
}
