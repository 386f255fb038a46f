//! Membership changes: what the layers above ask for ([`PeerChange`]), how it becomes a
//! raft-rs `ConfChangeV2`, and what applying one does to the Region.
//!
//! New replicas join as learners, catch up, and are then promoted; two voters changing at
//! once go through a joint configuration, which the leader leaves explicitly as soon as it
//! has applied the entry that entered it. raft-rs names peers by id only, so the entry's
//! context carries the stores of the peers it adds.

use crate::state::ConfStateRecord;
use protobuf::Message as _;
use raft::prelude::{ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2};
use scandium_types::{Peer, PeerRole, Region};

/// One change to a Region's membership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerChange {
    /// Adds `Peer` as a learner.
    AddLearner(Peer),
    /// Makes an existing learner (or a new peer) a voter.
    AddVoter(Peer),
    /// Removes the peer.
    Remove(Peer),
}

impl PeerChange {
    /// The peer concerned.
    pub fn peer(&self) -> &Peer {
        match self {
            PeerChange::AddLearner(p) | PeerChange::AddVoter(p) | PeerChange::Remove(p) => p,
        }
    }
}

/// The peers an entry adds, with their stores.
#[derive(Clone, PartialEq, prost::Message)]
struct ChangeContext {
    #[prost(message, repeated, tag = "1")]
    peers: Vec<Peer>,
}

/// The raft-rs change for `changes` (empty: leave the joint configuration). More than one
/// change enters a joint configuration that the leader leaves explicitly.
pub fn to_conf_change(changes: &[PeerChange]) -> ConfChangeV2 {
    let mut cc = ConfChangeV2::default();
    let peers: Vec<Peer> = changes.iter().map(|c| c.peer().clone()).collect();
    cc.changes = changes
        .iter()
        .map(|change| {
            let mut single = ConfChangeSingle { node_id: change.peer().id, ..Default::default() };
            single.set_change_type(match change {
                PeerChange::AddLearner(_) => ConfChangeType::AddLearnerNode,
                PeerChange::AddVoter(_) => ConfChangeType::AddNode,
                PeerChange::Remove(_) => ConfChangeType::RemoveNode,
            });
            single
        })
        .collect::<Vec<_>>()
        .into();
    cc.set_transition(if changes.len() > 1 {
        ConfChangeTransition::Explicit
    } else {
        ConfChangeTransition::Auto
    });
    cc.context = prost::Message::encode_to_vec(&ChangeContext { peers }).into();
    cc
}

/// The raft-rs change that leaves a joint configuration.
pub fn leave_joint() -> ConfChangeV2 {
    to_conf_change(&[])
}

/// Decodes a committed change entry (either kind raft-rs writes).
pub fn decode(entry: &raft::prelude::Entry) -> Result<ConfChangeV2, String> {
    use raft::prelude::{ConfChange, EntryType};
    match entry.get_entry_type() {
        EntryType::EntryConfChangeV2 => {
            ConfChangeV2::parse_from_bytes(&entry.data).map_err(|e| e.to_string())
        }
        EntryType::EntryConfChange => {
            let v1 = ConfChange::parse_from_bytes(&entry.data).map_err(|e| e.to_string())?;
            let mut single = ConfChangeSingle { node_id: v1.node_id, ..Default::default() };
            single.set_change_type(v1.get_change_type());
            Ok(ConfChangeV2 {
                changes: vec![single].into(),
                context: v1.context,
                ..Default::default()
            })
        }
        EntryType::EntryNormal => Err("not a configuration change".into()),
    }
}

/// `region` after a change whose result raft-rs reports as `conf_state`: members and their
/// roles follow the configuration (peers it adds come from the entry's context, keeping
/// stores already known), and `conf_ver` grows by one.
pub fn apply_to_region(region: &Region, cc: &ConfChangeV2, conf_state: &ConfStateRecord) -> Region {
    let added: Vec<Peer> = prost::Message::decode(cc.context.as_ref())
        .map(|c: ChangeContext| c.peers)
        .unwrap_or_default();
    let store_of =
        |id: u64| region.peer(id).or_else(|| added.iter().find(|p| p.id == id)).map(|p| p.store_id);
    let mut next = region.clone();
    next.conf_ver += 1;
    next.peers = Vec::new();
    let mut ids: Vec<u64> = conf_state.members().collect();
    ids.sort_unstable();
    ids.dedup();
    for id in ids {
        let Some(store_id) = store_of(id) else {
            tracing::error!(region = region.id, peer = id, "member without a known store");
            continue;
        };
        let incoming = conf_state.voters.contains(&id);
        let outgoing = conf_state.voters_outgoing.contains(&id);
        let role = match (incoming, outgoing, conf_state.is_joint()) {
            (true, _, false) | (true, true, true) => PeerRole::Voter,
            (true, false, true) => PeerRole::IncomingVoter,
            (false, true, _) => PeerRole::DemotingVoter,
            (false, false, _) => PeerRole::Learner,
        };
        next.peers.push(Peer { id, store_id, role: role as i32 });
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region() -> Region {
        Region { id: 1, conf_ver: 3, peers: vec![Peer::new(1, 1)], ..Default::default() }
    }

    #[test]
    fn learners_join_then_are_promoted_jointly() {
        let cc = to_conf_change(&[PeerChange::AddLearner(Peer::learner(2, 20))]);
        assert_eq!(cc.get_transition(), ConfChangeTransition::Auto);
        let cs = ConfStateRecord { voters: vec![1], learners: vec![2], ..Default::default() };
        let r = apply_to_region(&region(), &cc, &cs);
        assert_eq!(r.conf_ver, 4);
        assert_eq!(r.peers, vec![Peer::new(1, 1), Peer::learner(2, 20)]);

        let cc = to_conf_change(&[
            PeerChange::AddVoter(Peer::new(2, 20)),
            PeerChange::AddVoter(Peer::new(3, 30)),
        ]);
        assert_eq!(cc.get_transition(), ConfChangeTransition::Explicit);
        let joint = ConfStateRecord {
            voters: vec![1, 2, 3],
            voters_outgoing: vec![1],
            ..Default::default()
        };
        let r = apply_to_region(&r, &cc, &joint);
        let roles: Vec<_> = r.peers.iter().map(|p| (p.id, p.store_id, p.role())).collect();
        assert_eq!(
            roles,
            vec![
                (1, 1, PeerRole::Voter),
                (2, 20, PeerRole::IncomingVoter),
                (3, 30, PeerRole::IncomingVoter)
            ]
        );
        let left = ConfStateRecord { voters: vec![1, 2, 3], ..Default::default() };
        let r = apply_to_region(&r, &leave_joint(), &left);
        assert!(r.peers.iter().all(|p| p.role() == PeerRole::Voter));
        assert_eq!(r.conf_ver, 6);
    }

    #[test]
    fn removed_peers_leave_the_region() {
        let mut start = region();
        start.peers.push(Peer::new(2, 20));
        let cc = to_conf_change(&[PeerChange::Remove(Peer::new(2, 20))]);
        let cs = ConfStateRecord { voters: vec![1], ..Default::default() };
        assert_eq!(apply_to_region(&start, &cc, &cs).peers, vec![Peer::new(1, 1)]);
    }
}
