//! API versions and keyspaces.
//!
//! API V1 keys are whatever the client sends. API V2 keys carry a 4-byte keyspace prefix:
//! a mode byte (`r` for raw, `x` for transactional) and the 3-byte big-endian keyspace id.
//! Keyspace `DEFAULT` is id 0, so its raw keys start with `r\0\0\0`.
//!
//! Clients derive a keyspace's key range as `[prefix(id), prefix(id + 1))`, and the Rust
//! client's scans only terminate when that end is a Region boundary, so every keyspace's
//! edges must be Region boundaries (see [`keyspace_edges`]).

/// The API version a request was made with (kvrpcpb `APIVersion`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ApiVersion {
    /// Keys as the client sends them; the default for clients without a keyspace.
    V1,
    /// V1 with TTL support. Scandium always supports TTL, so it behaves as V1.
    V1Ttl,
    /// Keys carry a keyspace prefix.
    V2,
}

impl ApiVersion {
    /// Decodes the wire value; unknown values are `None` so callers can reject them.
    pub fn from_wire(value: i32) -> Option<ApiVersion> {
        match value {
            0 => Some(ApiVersion::V1),
            1 => Some(ApiVersion::V1Ttl),
            2 => Some(ApiVersion::V2),
            _ => None,
        }
    }
}

/// Mode byte of raw keys in API V2.
pub const RAW_MODE: u8 = b'r';
/// Mode byte of transactional keys in API V2.
pub const TXN_MODE: u8 = b'x';
/// Mode bytes of TiDB's own transactional keys, which API V2 also accepts.
pub const TIDB_MODES: [u8; 2] = [b'm', b't'];
/// Length of an API V2 key prefix.
pub const PREFIX_LEN: usize = 4;
/// Id of the keyspace named [`DEFAULT_KEYSPACE_NAME`].
pub const DEFAULT_KEYSPACE_ID: u32 = 0;
/// Name of the keyspace every cluster has.
pub const DEFAULT_KEYSPACE_NAME: &str = "DEFAULT";
/// Largest keyspace id (24 bits).
pub const MAX_KEYSPACE_ID: u32 = (1 << 24) - 1;

/// Returns the 4-byte key prefix of keyspace `id` in the given mode.
pub fn prefix(mode: u8, id: u32) -> [u8; PREFIX_LEN] {
    debug_assert!(id <= MAX_KEYSPACE_ID);
    let [_, a, b, c] = id.to_be_bytes();
    [mode, a, b, c]
}

/// Returns the exclusive end of keyspace `id` in the given mode: the next keyspace's prefix,
/// or the next mode byte after the last keyspace.
pub fn prefix_end(mode: u8, id: u32) -> Vec<u8> {
    if id == MAX_KEYSPACE_ID {
        vec![mode + 1]
    } else {
        prefix(mode, id + 1).to_vec()
    }
}

/// Whether `key` is an edge of some keyspace (a 4-byte raw or transactional prefix, or
/// the end of either mode's range): a Region boundary there stays, whether or not the
/// keyspace exists yet, so merges never join Regions across one.
pub fn is_keyspace_edge(key: &[u8]) -> bool {
    match key {
        [mode, _, _, _] => *mode == RAW_MODE || *mode == TXN_MODE,
        [mode] => *mode == RAW_MODE + 1 || *mode == TXN_MODE + 1,
        _ => false,
    }
}

/// The Region boundaries a keyspace needs: both ends of its raw and transactional ranges.
pub fn keyspace_edges(id: u32) -> [Vec<u8>; 4] {
    [
        prefix(RAW_MODE, id).to_vec(),
        prefix_end(RAW_MODE, id),
        prefix(TXN_MODE, id).to_vec(),
        prefix_end(TXN_MODE, id),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_keyspace_edge_is_known_as_one() {
        for id in [0, 1, 77, MAX_KEYSPACE_ID] {
            assert!(keyspace_edges(id).iter().all(|edge| is_keyspace_edge(edge)), "{id}");
        }
        for key in [&b""[..], b"r", b"r\0\0", b"r\0\0\0\0", b"k\0\0\0", b"a", b"t"] {
            assert!(!is_keyspace_edge(key), "{key:?}");
        }
    }

    #[test]
    fn default_keyspace_edges() {
        let edges = keyspace_edges(DEFAULT_KEYSPACE_ID);
        assert_eq!(edges[0], b"r\0\0\0");
        assert_eq!(edges[1], b"r\0\0\x01");
        assert_eq!(edges[2], b"x\0\0\0");
        assert_eq!(edges[3], b"x\0\0\x01");
        assert_eq!(prefix_end(RAW_MODE, MAX_KEYSPACE_ID), b"s");
    }
}
