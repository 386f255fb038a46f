//! Removed replicas that keep voting until no member can need their vote.
//!
//! raft-rs takes a configuration into use when it applies it, not when it appends it. A
//! replica that applies its own removal knows the removal is committed; the members that
//! stay may not know it yet: some hold the entry uncommitted, some lack it. Until they
//! apply it they count votes in the old configuration, which still has the removed
//! replica. Were it gone at once, one more lost member could leave them unable ever to
//! gather a quorum of the old configuration, and so to commit the removal (the simulator,
//! seed 7007776: four voters during a move, the fourth's removal committed with its own
//! acknowledgement, the leader lost next; the two survivors needed three votes of four).
//! A replica told of its removal by a member (it missed the entry) is in the same place.
//!
//! So a removed replica lingers: its data goes at once and it serves nothing, but its
//! Raft log and state stay and it answers votes and appends as before, never campaigning.
//! It asks every voter of the newest configuration it knows whether they have applied its
//! removal (a stale check: a member past the removal answers with a tombstone that names
//! its own members), and it is destroyed once every one of them has, or is gone itself (a
//! store answers for a replica of its that is destroyed or lingering: it will never count
//! votes again, and it may be all that is left of the configuration the replica knew,
//! if the Region moved on entirely meanwhile). A voter that applied
//! the removal never counts votes in a configuration with the replica again, and a voter
//! added since applied the removal before it could vote.

use scandium_types::{Peer, PeerId, PeerRole};

/// What a lingering replica waits for (persisted with its Region state, so that a restart
/// keeps it voting).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Lingering {
    /// The configuration version of the last configuration that had this replica: its
    /// stale checks carry it, so that members past its removal answer with a tombstone.
    #[prost(uint64, tag = "1")]
    pub member_conf_ver: u64,
    /// The version of the newest configuration known.
    #[prost(uint64, tag = "2")]
    pub newest_conf_ver: u64,
    /// That configuration's voters (of either half of a joint one), this replica aside.
    #[prost(message, repeated, tag = "3")]
    pub voters: Vec<Peer>,
    /// Peers that answered they have applied the removal, or whose stores said they are
    /// gone.
    #[prost(uint64, repeated, tag = "4")]
    pub confirmed: Vec<PeerId>,
}

impl Lingering {
    /// Replica `me`, last a member at configuration version `member_conf_ver`, removed in
    /// the configuration `(conf_ver, members)`.
    pub fn new(me: PeerId, member_conf_ver: u64, conf_ver: u64, members: &[Peer]) -> Lingering {
        Lingering {
            member_conf_ver,
            newest_conf_ver: conf_ver,
            voters: voters_except(members, me),
            confirmed: Vec::new(),
        }
    }

    /// A member's answer to a stale check: `from` holds the configuration `(conf_ver,
    /// members)`. Whether anything to persist changed.
    pub fn on_answer(&mut self, me: PeerId, from: PeerId, conf_ver: u64, members: &[Peer]) -> bool {
        if conf_ver <= self.member_conf_ver {
            // Not past the removal (a tombstone for an older replica of this store).
            return false;
        }
        let mut changed = false;
        if !self.confirmed.contains(&from) {
            self.confirmed.push(from);
            changed = true;
        }
        if conf_ver > self.newest_conf_ver && !members.is_empty() {
            self.newest_conf_ver = conf_ver;
            self.voters = voters_except(members, me);
            changed = true;
        }
        changed
    }

    /// A store's word that voter `from` is destroyed or lingering itself: it will never
    /// count votes again, in a configuration with this replica or any other. Whether
    /// anything to persist changed.
    pub fn on_gone(&mut self, from: PeerId) -> bool {
        if self.confirmed.contains(&from) {
            return false;
        }
        self.confirmed.push(from);
        true
    }

    /// The voters still to confirm.
    pub fn unconfirmed(&self) -> impl Iterator<Item = &Peer> {
        self.voters.iter().filter(|p| !self.confirmed.contains(&p.id))
    }

    /// Whether every voter of the newest configuration known has applied the removal.
    pub fn done(&self) -> bool {
        self.unconfirmed().next().is_none()
    }
}

fn voters_except(members: &[Peer], me: PeerId) -> Vec<Peer> {
    members.iter().filter(|p| p.id != me && p.role() != PeerRole::Learner).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn done_once_every_voter_of_the_newest_configuration_has_answered() {
        let members = [Peer::new(1, 1), Peer::new(3, 3), Peer::learner(5, 5)];
        let mut l = Lingering::new(2, 6, 7, &members);
        assert_eq!(l.voters, vec![Peer::new(1, 1), Peer::new(3, 3)], "learners never vote");
        assert!(!l.on_answer(2, 1, 6, &members), "an answer from before the removal");
        assert!(l.on_answer(2, 1, 7, &members));
        assert!(!l.done());
        assert!(!l.on_answer(2, 1, 7, &members), "the same answer twice");
        // Voter 3 was replaced by 4 meanwhile: 4 must answer, 3 need not.
        let newer = [Peer::new(1, 1), Peer::new(4, 4), Peer::new(5, 5)];
        assert!(l.on_answer(2, 4, 9, &newer));
        assert_eq!(l.unconfirmed().map(|p| p.id).collect::<Vec<_>>(), vec![5]);
        assert!(l.on_answer(2, 5, 9, &[]), "no members named: the answer still counts");
        assert!(l.done());
        // A voter whose store says it is gone counts too.
        let mut l = Lingering::new(2, 6, 7, &members);
        assert!(l.on_gone(3) && !l.on_gone(3));
        assert_eq!(l.unconfirmed().map(|p| p.id).collect::<Vec<_>>(), vec![1]);
    }
}
