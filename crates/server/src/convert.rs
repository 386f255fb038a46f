//! Conversions between Scandium's metadata records and kvproto messages.
//!
//! Region boundaries are stored unencoded. Transactional clients and API V2 clients expect
//! them memcomparable-encoded (they decode every boundary they receive), so boundaries sent
//! to clients are encoded, and keys clients send to the placement API are decoded when
//! they are valid encodings. An API V1 raw client sends plain keys, which are almost never
//! valid encodings and are then used as they are (see docs/architecture/server.md).

use scandium_protocol::metapb;
use scandium_types::codec::{decode_bytes, encode_bytes};
use scandium_types::{Peer, Region, Store, StoreState};

/// Encodes a Region boundary for clients; the empty (unbounded) boundary stays empty.
pub fn encode_boundary(key: &[u8]) -> Vec<u8> {
    if key.is_empty() {
        Vec::new()
    } else {
        encode_bytes(key)
    }
}

/// Interprets a key a client sent to the placement API.
pub fn decode_client_key(key: &[u8]) -> Vec<u8> {
    if key.is_empty() {
        return Vec::new();
    }
    decode_bytes(key).unwrap_or_else(|_| key.to_vec())
}

/// A peer as kvproto describes it (every Scandium peer is a voter).
pub fn peer_to_meta(peer: &Peer) -> metapb::Peer {
    metapb::Peer {
        id: peer.id,
        store_id: peer.store_id,
        role: metapb::PeerRole::Voter as i32,
        is_witness: false,
    }
}

/// A Region as kvproto describes it, with encoded boundaries.
pub fn region_to_meta(region: &Region) -> metapb::Region {
    metapb::Region {
        id: region.id,
        start_key: encode_boundary(&region.start_key),
        end_key: encode_boundary(&region.end_key),
        region_epoch: Some(metapb::RegionEpoch {
            conf_ver: region.conf_ver,
            version: region.version,
        }),
        peers: region.peers.iter().map(peer_to_meta).collect(),
        ..Default::default()
    }
}

/// A store as kvproto describes it.
pub fn store_to_meta(store: &Store) -> metapb::Store {
    let state = match StoreState::try_from(store.state).unwrap_or(StoreState::Up) {
        StoreState::Up => metapb::StoreState::Up,
        StoreState::Offline => metapb::StoreState::Offline,
        StoreState::Tombstone => metapb::StoreState::Tombstone,
    };
    metapb::Store {
        id: store.id,
        address: store.address.clone(),
        state: state as i32,
        version: store.version.clone(),
        status_address: store.address.clone(),
        start_timestamp: store.start_timestamp,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_keys_decode_only_when_encoded() {
        assert_eq!(decode_client_key(&encode_bytes(b"r\0\0\0k")), b"r\0\0\0k");
        assert_eq!(decode_client_key(b"plain-key"), b"plain-key");
        assert_eq!(decode_client_key(b""), b"");
        assert_eq!(encode_boundary(b""), b"");
    }
}
