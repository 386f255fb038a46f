//! Memcomparable byte encoding ("MCE"), as TiKV and its clients use it.
//!
//! A key is cut into groups of 8 bytes; each group is written padded with zeros to 8 bytes
//! and followed by a marker byte `0xFF - padding`. The last group always has padding (a key
//! whose length is a multiple of 8 gets a final all-padding group), so the encoding is
//! self-delimiting and byte order of encodings equals byte order of keys.
//!
//! Transactional clients and API V2 clients send Region lookups and read Region boundaries
//! in this encoding; Scandium keeps boundaries unencoded internally and converts at the
//! placement API.

use thiserror::Error;

const GROUP_SIZE: usize = 8;
const MARKER: u8 = 0xFF;

/// A byte string that is not a valid memcomparable encoding.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid memcomparable encoding: {0}")]
pub struct DecodeError(&'static str);

/// Returns the memcomparable encoding of `key`.
pub fn encode_bytes(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity((key.len() / GROUP_SIZE + 1) * (GROUP_SIZE + 1));
    let mut chunks = key.chunks_exact(GROUP_SIZE);
    for chunk in &mut chunks {
        out.extend_from_slice(chunk);
        out.push(MARKER);
    }
    let rest = chunks.remainder();
    let pad = GROUP_SIZE - rest.len();
    out.extend_from_slice(rest);
    out.resize(out.len() + pad, 0);
    out.push(MARKER - pad as u8);
    out
}

/// Decodes a complete memcomparable encoding. Trailing bytes after the last group are an
/// error, so a successful decode means `encode_bytes(decoded) == input`.
pub fn decode_bytes(encoded: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::with_capacity(encoded.len() / (GROUP_SIZE + 1) * GROUP_SIZE);
    let mut groups = encoded.chunks(GROUP_SIZE + 1);
    loop {
        let group = groups.next().ok_or(DecodeError("missing final group"))?;
        if group.len() != GROUP_SIZE + 1 {
            return Err(DecodeError("truncated group"));
        }
        let (data, marker) = group.split_at(GROUP_SIZE);
        let pad = usize::from(MARKER - marker[0]);
        if pad > GROUP_SIZE {
            return Err(DecodeError("bad marker"));
        }
        let real = GROUP_SIZE - pad;
        out.extend_from_slice(&data[..real]);
        if pad == 0 {
            continue;
        }
        if data[real..].iter().any(|&b| b != 0) {
            return Err(DecodeError("non-zero padding"));
        }
        if groups.next().is_some() {
            return Err(DecodeError("trailing bytes"));
        }
        return Ok(out);
    }
}

/// Bytes written as hexadecimal digits, two a byte (keys given on a command line or in a
/// URL): an error, not a panic, for any other text.
pub fn decode_hex(text: &str) -> Result<Vec<u8>, String> {
    if !text.len().is_multiple_of(2) {
        return Err("hex: an even number of digits is needed".into());
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            let digits = text.get(i..i + 2).ok_or("hex: digits 0-9 and a-f only")?;
            u8::from_str_radix(digits, 16).map_err(|_| "hex: digits 0-9 and a-f only".into())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hex_is_read_or_refused() {
        assert_eq!(decode_hex("00ff7A"), Ok(vec![0, 255, 122]));
        assert_eq!(decode_hex(""), Ok(vec![]));
        for bad in ["abc", "zz", "é1", "1é"] {
            assert!(decode_hex(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn known_encodings() {
        assert_eq!(encode_bytes(b""), vec![0, 0, 0, 0, 0, 0, 0, 0, 0xF7]);
        assert_eq!(encode_bytes(b"r\0\0\0"), b"r\0\0\0\0\0\0\0\xFB".to_vec());
        assert_eq!(encode_bytes(b"12345678"), b"12345678\xFF\0\0\0\0\0\0\0\0\xF7".to_vec());
    }

    #[test]
    fn rejects_malformed() {
        assert!(decode_bytes(b"").is_err());
        assert!(decode_bytes(b"abc").is_err());
        assert!(decode_bytes(b"r\0\0\0\0\0\0\x01\xFB").is_err());
        assert!(decode_bytes(b"r\0\0\0\0\0\0\0\xF0").is_err());
        assert!(decode_bytes(b"r\0\0\0\0\0\0\0\xFBx").is_err());
    }

    proptest! {
        #[test]
        fn round_trip(key in proptest::collection::vec(any::<u8>(), 0..40)) {
            prop_assert_eq!(decode_bytes(&encode_bytes(&key)).unwrap(), key);
        }

        #[test]
        fn preserves_order(
            a in proptest::collection::vec(any::<u8>(), 0..24),
            b in proptest::collection::vec(any::<u8>(), 0..24),
        ) {
            prop_assert_eq!(a.cmp(&b), encode_bytes(&a).cmp(&encode_bytes(&b)));
        }
    }
}
