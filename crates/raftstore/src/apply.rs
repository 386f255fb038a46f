//! Applying data Regions' commands: pure functions from (Region, command) to a write batch.

use crate::command::{cf_from_code, RaftCommand};
use crate::error::RaftstoreError;
use crate::stats::Footprint;
use scandium_storage::{Cf, WriteBatch};
use scandium_types::mvcc::split_versioned_key;
use scandium_types::{Peer, Region};
use std::borrow::Cow;

/// What applying one command did.
pub(crate) enum Applied {
    /// The writes were added to the batch.
    Written(Footprint),
    /// The Region was split; the left part keeps the id.
    Split {
        /// The original Region, now ending at the first cut.
        left: Region,
        /// The new Regions, one starting at each cut, in key order.
        new: Vec<Region>,
    },
}

/// Applies `command` to `region`, adding its writes to `batch`. Deterministic: every replica
/// reaches the same outcome. A rejected command changes nothing.
pub(crate) fn apply_command(
    region: &Region,
    mut command: RaftCommand,
    batch: &mut WriteBatch,
) -> Result<Applied, RaftstoreError> {
    if command.region_id != region.id {
        return Err(RaftstoreError::InvalidCommand(format!(
            "command for region {} in the log of region {}",
            command.region_id, region.id
        )));
    }
    if command.is_split() {
        let cuts = std::mem::take(&mut command.splits);
        return apply_split(region, &command, cuts);
    }
    apply_writes(region, command, batch)
}

fn apply_writes(
    region: &Region,
    command: RaftCommand,
    batch: &mut WriteBatch,
) -> Result<Applied, RaftstoreError> {
    let mut writes = WriteBatch::new();
    let mut footprint = Footprint::default();
    for op in command.writes {
        let cf = cf_from_code(op.cf).ok_or_else(|| {
            RaftstoreError::InvalidCommand(format!("unknown column family {}", op.cf))
        })?;
        // A split may have committed between proposal and apply; keys that moved to another
        // Region are refused, and the client retries against the new layout.
        let user_key = user_key_of(cf, &op.key)?;
        if !region.contains(&user_key) {
            return Err(if command.version != region.version {
                RaftstoreError::EpochNotMatch { current: vec![region.clone()] }
            } else {
                let key = user_key.into_owned();
                RaftstoreError::KeyNotInRegion { key, region: Box::new(region.clone()) }
            });
        }
        if op.delete {
            footprint.delete(cf, &op.key);
            writes.delete(cf, op.key);
        } else {
            footprint.put(cf, &op.key, &op.value);
            writes.put(cf, op.key, op.value);
        }
    }
    batch.extend(writes);
    Ok(Applied::Written(footprint))
}

/// The key that decides which Region a record belongs to: the user key inside a versioned
/// transactional key, the key itself elsewhere.
fn user_key_of(cf: Cf, key: &[u8]) -> Result<Cow<'_, [u8]>, RaftstoreError> {
    match cf {
        Cf::Write | Cf::Default => {
            split_versioned_key(key).map(|(user_key, _)| Cow::Owned(user_key)).ok_or_else(|| {
                RaftstoreError::InvalidCommand(format!("malformed versioned key {key:?}"))
            })
        }
        _ => Ok(Cow::Borrowed(key)),
    }
}

/// Cuts `region` at each of `cuts`. Every piece's version is the original's plus the
/// number of new Regions (as TiKV counts a batch split), so any request addressed to the
/// Region before the split is refused by every piece.
fn apply_split(
    region: &Region,
    command: &RaftCommand,
    cuts: Vec<crate::command::SplitRequest>,
) -> Result<Applied, RaftstoreError> {
    if command.version != region.version || command.conf_ver != region.conf_ver {
        return Err(RaftstoreError::EpochNotMatch { current: vec![region.clone()] });
    }
    let joint = region.peers.iter().any(|p| {
        matches!(
            p.role(),
            scandium_types::PeerRole::IncomingVoter | scandium_types::PeerRole::DemotingVoter
        )
    });
    if joint {
        return Err(RaftstoreError::ChangeRefused(format!(
            "region {} is changing its membership; split it afterwards",
            region.id
        )));
    }
    let mut previous = &region.start_key;
    for cut in &cuts {
        let key = &cut.split_key;
        if key.is_empty() || key <= previous || !region.contains(key) {
            return Err(RaftstoreError::InvalidCommand(format!(
                "split key {key:?} is not strictly inside region {} after the previous cut",
                region.id
            )));
        }
        if cut.new_peer_ids.len() != region.peers.len() {
            return Err(RaftstoreError::InvalidCommand(format!(
                "split of region {} names {} new peers for {} peers",
                region.id,
                cut.new_peer_ids.len(),
                region.peers.len()
            )));
        }
        previous = key;
    }
    let version = region.version + cuts.len() as u64;
    let mut left = region.clone();
    left.end_key = cuts[0].split_key.clone();
    left.version = version;
    let ends = cuts.iter().skip(1).map(|c| c.split_key.clone()).chain([region.end_key.clone()]);
    let new = cuts
        .iter()
        .zip(ends)
        .map(|(cut, end_key)| Region {
            id: cut.new_region_id,
            start_key: cut.split_key.clone(),
            end_key,
            conf_ver: region.conf_ver,
            version,
            peers: region
                .peers
                .iter()
                .zip(&cut.new_peer_ids)
                .map(|(p, &id)| Peer { id, store_id: p.store_id, role: p.role })
                .collect(),
        })
        .collect();
    Ok(Applied::Split { left, new })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::SplitRequest;

    fn region() -> Region {
        Region {
            id: 2,
            start_key: b"b".to_vec(),
            end_key: b"f".to_vec(),
            conf_ver: 1,
            version: 3,
            peers: vec![Peer::new(10, 1)],
        }
    }

    #[test]
    fn writes_inside_the_region_apply() {
        let mut batch = WriteBatch::new();
        batch.put(Cf::Raw, b"c".to_vec(), b"v".to_vec());
        let mut out = WriteBatch::new();
        let applied = apply_command(&region(), RaftCommand::write(&region(), batch), &mut out);
        assert!(matches!(applied, Ok(Applied::Written(_))));
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn writes_that_raced_a_split_are_refused() {
        let mut batch = WriteBatch::new();
        batch.put(Cf::Raw, b"e".to_vec(), b"v".to_vec());
        let mut old = region();
        old.end_key = b"f".to_vec();
        let command = RaftCommand::write(&old, batch);
        let mut split = region();
        split.end_key = b"d".to_vec();
        split.version += 1;
        let mut out = WriteBatch::new();
        let result = apply_command(&split, command, &mut out);
        assert!(matches!(result, Err(RaftstoreError::EpochNotMatch { .. })));
        assert!(out.is_empty());
    }

    #[test]
    fn versioned_keys_are_checked_by_their_user_key() {
        let apply = |cf, key: Vec<u8>| {
            let mut batch = WriteBatch::new();
            batch.put(cf, key, b"w".to_vec());
            apply_command(&region(), RaftCommand::write(&region(), batch), &mut WriteBatch::new())
        };
        let inside = scandium_types::mvcc::versioned_key(b"c", scandium_types::TimeStamp(9));
        assert!(matches!(apply(Cf::Write, inside), Ok(Applied::Written(_))));
        let outside = scandium_types::mvcc::versioned_key(b"x", scandium_types::TimeStamp(9));
        assert!(
            matches!(apply(Cf::Default, outside), Err(RaftstoreError::KeyNotInRegion { key, .. }) if key == b"x")
        );
        assert!(matches!(
            apply(Cf::Write, b"garbage".to_vec()),
            Err(RaftstoreError::InvalidCommand(_))
        ));
    }

    fn cut(key: &[u8], new_region_id: u64) -> SplitRequest {
        SplitRequest {
            split_key: key.to_vec(),
            new_region_id,
            new_peer_ids: vec![new_region_id + 1],
        }
    }

    fn split(cuts: Vec<SplitRequest>) -> Result<Applied, RaftstoreError> {
        apply_command(&region(), RaftCommand::split(&region(), cuts), &mut WriteBatch::new())
    }

    #[test]
    fn split_bumps_both_versions() {
        let Ok(Applied::Split { left, new }) = split(vec![cut(b"d", 7)]) else {
            panic!("split must succeed")
        };
        assert_eq!((left.end_key.as_slice(), left.version), (&b"d"[..], 4));
        let [right] = new.as_slice() else { panic!("one new region: {new:?}") };
        assert_eq!(
            (right.start_key.as_slice(), right.end_key.as_slice(), right.version),
            (&b"d"[..], &b"f"[..], 4)
        );
        assert_eq!(right.peers, vec![Peer::new(8, 1)]);
    }

    #[test]
    fn a_split_at_many_keys_cuts_every_piece_in_one_step() {
        let Ok(Applied::Split { left, new }) =
            split(vec![cut(b"c", 7), cut(b"d", 9), cut(b"e", 11)])
        else {
            panic!("split must succeed")
        };
        assert_eq!((left.start_key.as_slice(), left.end_key.as_slice()), (&b"b"[..], &b"c"[..]));
        let pieces: Vec<_> = new
            .iter()
            .map(|r| (r.id, r.start_key.as_slice(), r.end_key.as_slice(), r.peers[0].id))
            .collect();
        assert_eq!(
            pieces,
            [(7, &b"c"[..], &b"d"[..], 8), (9, b"d", b"e", 10), (11, b"e", b"f", 12)]
        );
        // Every piece is newer than the Region was, by the number of new Regions.
        assert!(new.iter().chain([&left]).all(|r| r.version == 6 && r.conf_ver == 1));
    }

    #[test]
    fn split_at_the_edge_is_refused() {
        for key in [&b"b"[..], b"f", b"a", b""] {
            let result = split(vec![cut(key, 7)]);
            assert!(matches!(result, Err(RaftstoreError::InvalidCommand(_))), "{key:?}");
        }
    }

    #[test]
    fn cuts_out_of_order_or_repeated_are_refused() {
        for keys in [[&b"d"[..], b"c"], [b"c", b"c"], [b"c", b"f"]] {
            let result = split(vec![cut(keys[0], 7), cut(keys[1], 9)]);
            assert!(matches!(result, Err(RaftstoreError::InvalidCommand(_))), "{keys:?}");
        }
        let mut wrong_peers = cut(b"c", 7);
        wrong_peers.new_peer_ids.push(99);
        let result = split(vec![wrong_peers]);
        assert!(matches!(result, Err(RaftstoreError::InvalidCommand(_))));
    }
}
