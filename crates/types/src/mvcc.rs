//! Keys of the transactional column families.
//!
//! * Lock CF: the user key itself.
//! * Write and Default CFs: `encode_bytes(user_key) ++ (u64::MAX - ts)` big-endian. The
//!   memcomparable encoding makes the user-key part self-delimiting and order-preserving,
//!   and the inverted timestamp sorts a key's versions newest first, so "the latest version
//!   at or below `ts`" is the first key at or after `versioned_key(key, ts)`.
//!
//! The user key is the key as the client sends it (API V2 keys keep their `x` + keyspace
//! prefix), so Region membership of any transactional record is decided by its user key.

use crate::codec::{decode_bytes, encode_bytes};
use crate::TimeStamp;

const TS_LEN: usize = 8;

/// The key of `user_key`'s record at `ts` in the Write or Default CF.
pub fn versioned_key(user_key: &[u8], ts: TimeStamp) -> Vec<u8> {
    let mut key = encode_bytes(user_key);
    key.extend_from_slice(&(u64::MAX - ts.0).to_be_bytes());
    key
}

/// Splits a versioned key into the user key and the timestamp.
pub fn split_versioned_key(key: &[u8]) -> Option<(Vec<u8>, TimeStamp)> {
    let split = key.len().checked_sub(TS_LEN)?;
    let (encoded, ts) = key.split_at(split);
    let user_key = decode_bytes(encoded).ok()?;
    let ts = u64::MAX - u64::from_be_bytes(ts.try_into().ok()?);
    Some((user_key, TimeStamp(ts)))
}

/// The range `[start, end)` holding every version of `user_key`, newest first.
pub fn versions_range(user_key: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let start = encode_bytes(user_key);
    let mut end = start.clone();
    // The last byte of an encoding is a marker of at most 0xFE, so this cannot overflow.
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    (start, end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn versions_sort_newest_first_and_stay_in_their_range() {
        let newer = versioned_key(b"k", TimeStamp(20));
        let older = versioned_key(b"k", TimeStamp(10));
        assert!(newer < older);
        let (start, end) = versions_range(b"k");
        assert!(start <= newer && older < end);
        assert!(versioned_key(b"k\0", TimeStamp(u64::MAX)) >= end, "a longer key is outside");
        assert_eq!(split_versioned_key(&older), Some((b"k".to_vec(), TimeStamp(10))));
        assert_eq!(split_versioned_key(b"short"), None);
    }

    proptest! {
        #[test]
        fn order_is_user_key_then_newest_first(
            a in proptest::collection::vec(any::<u8>(), 0..12), ta in any::<u64>(),
            b in proptest::collection::vec(any::<u8>(), 0..12), tb in any::<u64>(),
        ) {
            let ka = versioned_key(&a, TimeStamp(ta));
            let kb = versioned_key(&b, TimeStamp(tb));
            let expected = a.cmp(&b).then(tb.cmp(&ta));
            prop_assert_eq!(ka.cmp(&kb), expected);
            prop_assert_eq!(split_versioned_key(&ka), Some((a, TimeStamp(ta))));
        }
    }
}
