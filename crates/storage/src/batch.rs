//! Atomic write batches.

use crate::Cf;

/// One change in a [`WriteBatch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// Sets `key` to `value`.
    Put {
        /// Column family written.
        cf: Cf,
        /// Key written.
        key: Vec<u8>,
        /// New value.
        value: Vec<u8>,
    },
    /// Removes `key`.
    Delete {
        /// Column family written.
        cf: Cf,
        /// Key removed.
        key: Vec<u8>,
    },
}

/// Changes applied atomically across column families, in order (a later change to the same
/// key wins).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    mutations: Vec<Mutation>,
    size_bytes: usize,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> WriteBatch {
        WriteBatch::default()
    }

    /// Adds a put.
    pub fn put(&mut self, cf: Cf, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        let (key, value) = (key.into(), value.into());
        self.size_bytes += key.len() + value.len();
        self.mutations.push(Mutation::Put { cf, key, value });
    }

    /// Adds a delete.
    pub fn delete(&mut self, cf: Cf, key: impl Into<Vec<u8>>) {
        let key = key.into();
        self.size_bytes += key.len();
        self.mutations.push(Mutation::Delete { cf, key });
    }

    /// Appends every change of `other` after the changes already here.
    pub fn extend(&mut self, other: WriteBatch) {
        self.size_bytes += other.size_bytes;
        self.mutations.extend(other.mutations);
    }

    /// Whether the batch holds no change.
    pub fn is_empty(&self) -> bool {
        self.mutations.is_empty()
    }

    /// Number of changes.
    pub fn len(&self) -> usize {
        self.mutations.len()
    }

    /// Sum of key and value lengths.
    pub fn size_bytes(&self) -> usize {
        self.size_bytes
    }

    /// The changes, in order.
    pub fn mutations(&self) -> &[Mutation] {
        &self.mutations
    }

    /// The column family of the first change that names the empty key, if any.
    pub fn empty_key_cf(&self) -> Option<Cf> {
        self.mutations.iter().find_map(|m| match m {
            Mutation::Put { cf, key, .. } | Mutation::Delete { cf, key } => {
                key.is_empty().then_some(*cf)
            }
        })
    }

    /// Takes the changes out.
    pub fn into_mutations(self) -> Vec<Mutation> {
        self.mutations
    }
}
