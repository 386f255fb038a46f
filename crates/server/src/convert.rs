//! Conversions between Scandium's metadata records and kvproto messages.
//!
//! Region boundaries are stored unencoded. Clients come in two kinds:
//!
//! * transactional clients and API V2 raw clients encode every key they send to the
//!   placement API (memcomparable encoding) and decode every boundary they receive;
//! * API V1 raw clients send and expect plain keys.
//!
//! The placement API cannot ask which kind is calling, but the key tells: a key that is a
//! valid memcomparable encoding came from an encoding client (a plain key is one only by
//! accident: its length must be a multiple of 9 with valid marker bytes). So lookups by key
//! answer in the encoding the question came in ([`ClientKey`]). Lookups without a key
//! (`GetRegionByID`) and Region errors answer encoded, which is what every client but a V1
//! raw client expects (see docs/architecture/server.md).

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

/// A key a client sent to the placement API, and whether that client encodes keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientKey {
    /// The unencoded key.
    pub key: Vec<u8>,
    /// The client sent it memcomparable-encoded and expects encoded boundaries back.
    pub encoded: bool,
}

/// Interprets a key a client sent to the placement API.
pub fn decode_client_key(key: &[u8]) -> ClientKey {
    match decode_bytes(key) {
        Ok(decoded) => ClientKey { key: decoded, encoded: true },
        Err(_) => ClientKey { key: key.to_vec(), encoded: false },
    }
}

/// A peer as kvproto describes it (every Scandium peer is a voter).
pub fn peer_to_meta(peer: &Peer) -> metapb::Peer {
    metapb::Peer { id: peer.id, store_id: peer.store_id, role: peer.role, is_witness: false }
}

/// A Region as kvproto describes it, with encoded boundaries.
pub fn region_to_meta(region: &Region) -> metapb::Region {
    region_to_meta_as(region, true)
}

/// A Region as kvproto describes it, with boundaries encoded or not.
pub fn region_to_meta_as(region: &Region, encoded: bool) -> metapb::Region {
    let boundary = |key: &[u8]| if encoded { encode_boundary(key) } else { key.to_vec() };
    metapb::Region {
        id: region.id,
        start_key: boundary(&region.start_key),
        end_key: boundary(&region.end_key),
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
        labels: store
            .labels
            .iter()
            .map(|l| metapb::StoreLabel { key: l.key.clone(), value: l.value.clone() })
            .collect(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_keys_decode_only_when_encoded() {
        let encoded = decode_client_key(&encode_bytes(b"r\0\0\0k"));
        assert_eq!(encoded, ClientKey { key: b"r\0\0\0k".to_vec(), encoded: true });
        let plain = decode_client_key(b"plain-key");
        assert_eq!(plain, ClientKey { key: b"plain-key".to_vec(), encoded: false });
        assert_eq!(decode_client_key(b""), ClientKey { key: Vec::new(), encoded: false });
        assert_eq!(encode_boundary(b""), b"");
    }

    #[test]
    fn boundaries_follow_the_question() {
        let region = Region {
            id: 1,
            start_key: b"a".to_vec(),
            end_key: b"m".to_vec(),
            ..Default::default()
        };
        assert_eq!(region_to_meta_as(&region, false).end_key, b"m");
        assert_eq!(region_to_meta_as(&region, true).end_key, encode_bytes(b"m"));
    }
}
