//! The checks every key of a request passes once its Region is known: size, API V2
//! prefix, inside the Region; and the bound on an answer's size.

use super::{CommandError, CommandResult, Scope};
use scandium_types::keyspace::{self, ApiVersion, PREFIX_LEN};
use scandium_types::{Region, MAX_KEY_SIZE};

/// The key space a request addresses; API V2 keys must carry its mode byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyMode {
    /// Raw requests: V2 keys start with `r`.
    Raw,
    /// Transactional requests: V2 keys start with `x` (or TiDB's `m`/`t`).
    Txn,
}

/// Key size limit and API V2 prefix rules.
pub fn check_key_shape(api: ApiVersion, mode: KeyMode, key: &[u8]) -> CommandResult<()> {
    if key.is_empty() {
        return Err(CommandError::invalid("key must not be empty"));
    }
    if key.len() > MAX_KEY_SIZE {
        return Err(CommandError::invalid(format!(
            "key is too large: {} bytes, the limit is {MAX_KEY_SIZE}",
            key.len()
        )));
    }
    check_key_prefix(api, mode, key)
}

/// API V2 keys must carry the keyspace prefix of their mode.
fn check_key_prefix(api: ApiVersion, mode: KeyMode, key: &[u8]) -> CommandResult<()> {
    if api == ApiVersion::V2 {
        let prefix_ok = match mode {
            KeyMode::Raw => key.first() == Some(&keyspace::RAW_MODE),
            KeyMode::Txn => key
                .first()
                .is_some_and(|m| *m == keyspace::TXN_MODE || keyspace::TIDB_MODES.contains(m)),
        };
        if !prefix_ok || key.len() < PREFIX_LEN {
            return Err(CommandError::invalid(format!(
                "API V2 {mode:?} key {key:?} does not carry a keyspace prefix"
            )));
        }
    }
    Ok(())
}

fn not_in_region(key: &[u8], region: &Region) -> CommandError {
    CommandError::KeyNotInRegion { key: key.to_vec(), region: Box::new(region.clone()) }
}

/// Checks one key a request writes or locks: size, API V2 prefix, inside the Region.
pub(crate) fn check_key(
    scope: &Scope,
    api: ApiVersion,
    mode: KeyMode,
    key: &[u8],
) -> CommandResult<()> {
    check_key_shape(api, mode, key)?;
    if !scope.region.contains(key) {
        return Err(not_in_region(key, &scope.region));
    }
    Ok(())
}

/// [`check_key`] for every key.
pub(crate) fn check_keys<'k>(
    scope: &Scope,
    api: ApiVersion,
    mode: KeyMode,
    keys: impl IntoIterator<Item = &'k Vec<u8>>,
) -> CommandResult<()> {
    keys.into_iter().try_for_each(|key| check_key(scope, api, mode, key))
}

/// Checks a key a read looks up: as [`check_key`], except that a key over the size limit
/// is no error (TiKV limits only what is written): it cannot be stored, so the answer is
/// `false` and the read finds nothing without asking storage.
pub(crate) fn check_read_key(
    scope: &Scope,
    api: ApiVersion,
    mode: KeyMode,
    key: &[u8],
) -> CommandResult<bool> {
    if key.len() > MAX_KEY_SIZE {
        check_key_prefix(api, mode, key)?;
        if !scope.region.contains(key) {
            return Err(not_in_region(key, &scope.region));
        }
        return Ok(false);
    }
    check_key(scope, api, mode, key)?;
    Ok(true)
}

/// The lower and upper bound of a scan's range as the client sent it: a reverse scan
/// sends its exclusive upper bound as the start and its inclusive lower bound as the end.
pub fn scan_bounds<'a>(start: &'a [u8], end: &'a [u8], reverse: bool) -> (&'a [u8], &'a [u8]) {
    if reverse {
        (end, start)
    } else {
        (start, end)
    }
}

/// Where a range of a batch scan ends: as in TiKV, a range with an empty end key ends
/// where the next range starts (the last one is unbounded).
pub fn batch_range_end<'a>(end: &'a [u8], next_start: Option<&'a [u8]>) -> &'a [u8] {
    match next_start {
        Some(next) if end.is_empty() => next,
        _ => end,
    }
}

/// Checks the starting key of a range request and clamps `[start, end)` (empty `end` =
/// unbounded) to the Region. An inverted range is no error: as in TiKV, it holds nothing,
/// and the clamped range is inverted or empty too.
pub(crate) fn clamp_range(
    scope: &Scope,
    api: ApiVersion,
    mode: KeyMode,
    start: &[u8],
    end: &[u8],
) -> CommandResult<(Vec<u8>, Vec<u8>)> {
    if start.is_empty() && api != ApiVersion::V2 {
        // The unbounded start: only the first Region holds it.
        if !scope.region.start_key.is_empty() {
            return Err(not_in_region(&[], &scope.region));
        }
    } else {
        check_key(scope, api, mode, start)?;
    }
    Ok(clamp_to_region(&scope.region, start, end))
}

/// `[start, end) ∩ region` (empty `end` = unbounded on either side).
pub fn clamp_to_region(region: &Region, start: &[u8], end: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let start = start.max(region.start_key.as_slice()).to_vec();
    let end = match (end.is_empty(), region.end_key.is_empty()) {
        (true, _) => region.end_key.clone(),
        (false, true) => end.to_vec(),
        (false, false) => end.min(region.end_key.as_slice()).to_vec(),
    };
    (start, end)
}

/// Bytes an answer holds so far, against the node's limit.
pub struct ResponseBudget {
    used: usize,
    limit: usize,
}

impl ResponseBudget {
    /// An empty answer allowed `limit` bytes.
    pub fn new(limit: usize) -> ResponseBudget {
        ResponseBudget { used: 0, limit }
    }

    /// Counts a pair.
    pub fn charge_pair(&mut self, key: &[u8], value: &[u8]) -> CommandResult<()> {
        self.charge(key.len() + value.len() + 8)
    }

    /// Counts `bytes` more; refuses the request once the answer would exceed the limit.
    pub fn charge(&mut self, bytes: usize) -> CommandResult<()> {
        self.used += bytes;
        if self.used > self.limit {
            return Err(CommandError::invalid(format!(
                "response would exceed {} bytes; ask for fewer keys",
                self.limit
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamping() {
        let region =
            Region { start_key: b"b".to_vec(), end_key: b"m".to_vec(), ..Default::default() };
        assert_eq!(clamp_to_region(&region, b"a", b""), (b"b".to_vec(), b"m".to_vec()));
        assert_eq!(clamp_to_region(&region, b"c", b"d"), (b"c".to_vec(), b"d".to_vec()));
        let open = Region { start_key: b"b".to_vec(), ..Default::default() };
        assert_eq!(clamp_to_region(&open, b"c", b""), (b"c".to_vec(), b"".to_vec()));
        assert_eq!(clamp_to_region(&open, b"c", b"z"), (b"c".to_vec(), b"z".to_vec()));
    }

    #[test]
    fn v2_raw_keys_need_their_prefix() {
        assert!(check_key_shape(ApiVersion::V2, KeyMode::Raw, b"r\0\0\0k").is_ok());
        assert!(check_key_shape(ApiVersion::V2, KeyMode::Raw, b"x\0\0\0k").is_err());
        assert!(check_key_shape(ApiVersion::V2, KeyMode::Raw, b"r\0").is_err());
        assert!(check_key_shape(ApiVersion::V1, KeyMode::Raw, b"anything").is_ok());
        assert!(check_key_shape(ApiVersion::V1, KeyMode::Raw, b"").is_err());
        assert!(check_key_shape(ApiVersion::V1, KeyMode::Raw, &vec![0; MAX_KEY_SIZE + 1]).is_err());
    }
}
