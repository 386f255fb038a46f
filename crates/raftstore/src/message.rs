//! [`PeerMessage`]: a Raft message between replicas on different stores, with the envelope
//! raft-rs's own message lacks (which Region, which peers on which stores, the sender's
//! epoch), and its wire encoding.

use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use scandium_types::{Peer, Region, RegionEpoch};

/// The wire form of a [`PeerMessage`]. The raft-rs message inside is protobuf-encoded by
/// raft-rs's own codec.
#[derive(Clone, PartialEq, prost::Message)]
struct Envelope {
    #[prost(uint64, tag = "1")]
    region_id: u64,
    #[prost(message, optional, tag = "2")]
    from: Option<Peer>,
    #[prost(message, optional, tag = "3")]
    to: Option<Peer>,
    #[prost(uint64, tag = "4")]
    conf_ver: u64,
    #[prost(uint64, tag = "5")]
    version: u64,
    #[prost(bool, tag = "6")]
    is_tombstone: bool,
    #[prost(bytes = "vec", tag = "7")]
    message: Vec<u8>,
    #[prost(bool, tag = "8")]
    is_stale_check: bool,
    #[prost(message, repeated, tag = "9")]
    members: Vec<Peer>,
    #[prost(bool, tag = "10")]
    gone: bool,
    /// See [`Hibernate`]: 1 request, 2 acknowledgement, 3 refusal, 4 wake; 0 none.
    #[prost(uint32, tag = "11")]
    hibernate: u32,
    #[prost(uint64, tag = "12")]
    hibernate_term: u64,
    #[prost(uint64, tag = "13")]
    hibernate_index: u64,
    #[prost(uint64, tag = "14")]
    store_beat: u64,
    /// See [`PeerMessage::merged_into`].
    #[prost(uint64, tag = "15")]
    merged_into: u64,
    #[prost(uint64, tag = "16")]
    hibernate_round: u64,
}

/// A Raft message for one replica, or a store's beat (see [`PeerMessage::beat`]).
#[derive(Clone, Debug, Default)]
pub struct PeerMessage {
    /// The Raft group (Region id, or [`crate::META_GROUP_ID`]).
    pub region_id: u64,
    /// The sending replica.
    pub from: Peer,
    /// The receiving replica; `to.store_id` names the store to deliver to.
    pub to: Peer,
    /// The sender's Region epoch.
    pub epoch: RegionEpoch,
    /// Set by a leader answering a replica that is no longer a member: the receiver, if
    /// its epoch is older, destroys itself. `message` is then empty.
    pub is_tombstone: bool,
    /// Set by a replica that has not heard from a leader for a long while, to each member
    /// of its configuration: one that is newer and no longer has it answers with a
    /// tombstone. A learner never campaigns, so without this a learner removed while its
    /// node was down kept its old range for ever, and that node refused every snapshot
    /// of a Region split from the range since. `message` is then empty, and not stepped.
    pub is_stale_check: bool,
    /// In a tombstone: the sender's members, so that a removed replica knows whose word it
    /// still waits for before it stops voting (see [`crate::linger`]). Empty otherwise.
    pub members: Vec<Peer>,
    /// With `is_tombstone`: the answer of a store to a stale check for a replica of its
    /// that is destroyed or lingering (`from`), which will never count votes again. A
    /// lingering replica counts it as that voter having applied its removal; any other
    /// replica ignores it (it says nothing of the receiver's own membership).
    pub gone: bool,
    /// With `gone`: the Region that absorbed the sender's Region in a merge (0: none).
    /// The merge committed, so the receiver's replica, which slept through it, is
    /// obsolete: a snapshot of that target replaces it (see [`crate::merge`]).
    pub merged_into: u64,
    /// Not 0: a store's beat (see [`crate::liveness`]), carrying the sender's incarnation;
    /// it is for no group (`region_id` 0, peers 0) and nothing else in it is read. A node
    /// that predates beats steps it as an empty message for an unknown group, and drops it.
    pub store_beat: u64,
    /// A hibernation message (see the `hibernate` module); `message` is then empty and not
    /// stepped. A node that predates hibernation steps that empty message, which raft-rs
    /// refuses as a local one, and never answers: the leader stays awake.
    pub hibernate: Option<Hibernate>,
    /// raft-rs's message.
    pub message: Message,
}

/// A hibernation message between the replicas of a group, carried in the envelope of a
/// [`PeerMessage`] with an empty Raft message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hibernate {
    /// From a leader: sleep, if you are caught up to `index` under me at `term`.
    Request {
        /// The leader's term.
        term: u64,
        /// The leader's last index.
        index: u64,
        /// Which of the leader's requests this is: an acknowledgement of an earlier one at
        /// the same term and index (delayed on the way, from a follower awake since) must
        /// not count.
        round: u64,
    },
    /// A follower's yes to the request for `term`, `index` and `round`: it sleeps now.
    Ack {
        /// The term of the request.
        term: u64,
        /// The index of the request.
        index: u64,
        /// The round of the request.
        round: u64,
    },
    /// A follower's no: the leader stays awake.
    Nack,
    /// A follower woke: its leader wakes too, and heartbeats.
    Wake,
}

/// Why bytes are not a [`PeerMessage`].
#[derive(Debug, thiserror::Error)]
#[error("malformed raft message: {0}")]
pub struct DecodeError(String);

impl PeerMessage {
    /// A beat from store `from` to store `to`, from the incarnation `incarnation` (not 0).
    pub fn beat(from: u64, to: u64, incarnation: u64) -> PeerMessage {
        PeerMessage {
            from: Peer::new(0, from),
            to: Peer::new(0, to),
            store_beat: incarnation,
            ..PeerMessage::default()
        }
    }

    /// raft-rs's `message` between two replicas of `region`, stamped with its epoch.
    pub fn raft(region: &Region, from: Peer, to: Peer, message: Message) -> PeerMessage {
        PeerMessage {
            region_id: region.id,
            from,
            to,
            epoch: region.epoch(),
            message,
            ..PeerMessage::default()
        }
    }

    /// The wire encoding.
    pub fn encode(&self) -> Vec<u8> {
        let (hibernate, hibernate_term, hibernate_index, hibernate_round) = match self.hibernate {
            None => (0, 0, 0, 0),
            Some(Hibernate::Request { term, index, round }) => (1, term, index, round),
            Some(Hibernate::Ack { term, index, round }) => (2, term, index, round),
            Some(Hibernate::Nack) => (3, 0, 0, 0),
            Some(Hibernate::Wake) => (4, 0, 0, 0),
        };
        let envelope = Envelope {
            hibernate,
            hibernate_term,
            hibernate_index,
            hibernate_round,
            region_id: self.region_id,
            from: Some(self.from.clone()),
            to: Some(self.to.clone()),
            conf_ver: self.epoch.conf_ver,
            version: self.epoch.version,
            is_tombstone: self.is_tombstone,
            is_stale_check: self.is_stale_check,
            members: self.members.clone(),
            gone: self.gone,
            merged_into: self.merged_into,
            store_beat: self.store_beat,
            message: self.message.write_to_bytes().expect("encoding a raft message cannot fail"),
        };
        prost::Message::encode_to_vec(&envelope)
    }

    /// Decodes [`PeerMessage::encode`]'s output.
    pub fn decode(bytes: &[u8]) -> Result<PeerMessage, DecodeError> {
        let envelope: Envelope =
            prost::Message::decode(bytes).map_err(|e| DecodeError(e.to_string()))?;
        let (Some(from), Some(to)) = (envelope.from, envelope.to) else {
            return Err(DecodeError("sender or receiver missing".into()));
        };
        let message =
            Message::parse_from_bytes(&envelope.message).map_err(|e| DecodeError(e.to_string()))?;
        let (term, index) = (envelope.hibernate_term, envelope.hibernate_index);
        let round = envelope.hibernate_round;
        let hibernate = match envelope.hibernate {
            0 => None,
            1 => Some(Hibernate::Request { term, index, round }),
            2 => Some(Hibernate::Ack { term, index, round }),
            3 => Some(Hibernate::Nack),
            4 => Some(Hibernate::Wake),
            other => return Err(DecodeError(format!("unknown hibernation message {other}"))),
        };
        Ok(PeerMessage {
            region_id: envelope.region_id,
            from,
            to,
            epoch: RegionEpoch { conf_ver: envelope.conf_ver, version: envelope.version },
            is_tombstone: envelope.is_tombstone,
            is_stale_check: envelope.is_stale_check,
            members: envelope.members,
            gone: envelope.gone,
            merged_into: envelope.merged_into,
            store_beat: envelope.store_beat,
            hibernate,
            message,
        })
    }

    /// Whether this carries a Raft snapshot (whose data the transport sends apart).
    pub fn is_snapshot(&self) -> bool {
        self.message.get_msg_type() == MessageType::MsgSnapshot
    }

    /// Approximate encoded size, for batching.
    pub fn approximate_size(&self) -> usize {
        64 + self.message.entries.iter().map(|e| e.data.len() + 32).sum::<usize>()
            + self.message.snapshot.as_ref().map_or(0, |s| s.data.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::prelude::Entry;

    #[test]
    fn round_trip() {
        let mut message = Message::default();
        message.set_msg_type(MessageType::MsgAppend);
        message.term = 7;
        message.entries =
            vec![Entry { index: 9, term: 7, data: b"x".to_vec().into(), ..Default::default() }]
                .into();
        let original = PeerMessage {
            region_id: 3,
            from: Peer::new(10, 1),
            to: Peer::learner(11, 2),
            epoch: RegionEpoch { conf_ver: 4, version: 5 },
            is_tombstone: false,
            is_stale_check: false,
            members: vec![Peer::new(10, 1)],
            gone: true,
            merged_into: 0,
            store_beat: 0,
            hibernate: Some(Hibernate::Ack { term: 8, index: 12, round: 5 }),
            message,
        };
        let decoded = PeerMessage::decode(&original.encode()).unwrap();
        assert_eq!((decoded.region_id, decoded.from, decoded.to), (3, original.from, original.to));
        assert_eq!(decoded.epoch, original.epoch);
        assert_eq!(decoded.members, original.members);
        assert!(decoded.gone);
        assert_eq!(decoded.message, original.message);
        assert!(PeerMessage::decode(b"\xff\xff").is_err());
        assert!(PeerMessage::decode(&[]).is_err(), "no peers");
        let beat = PeerMessage::decode(&PeerMessage::beat(4, 5, 77).encode()).unwrap();
        assert_eq!((beat.from.store_id, beat.to.store_id, beat.store_beat), (4, 5, 77));
        assert_eq!((beat.region_id, beat.from.id, beat.to.id), (0, 0, 0));
        assert_eq!(decoded.store_beat, 0);
        assert_eq!(decoded.hibernate, Some(Hibernate::Ack { term: 8, index: 12, round: 5 }));
        for hibernate in [None, Some(Hibernate::Request { term: 3, index: 4, round: 6 })]
            .into_iter()
            .chain([Some(Hibernate::Nack), Some(Hibernate::Wake)])
        {
            let message = PeerMessage { hibernate, ..PeerMessage::default() };
            assert_eq!(PeerMessage::decode(&message.encode()).unwrap().hibernate, hibernate);
        }
        let mut unknown = Envelope {
            from: Some(Peer::new(1, 1)),
            to: Some(Peer::new(2, 2)),
            ..Envelope::default()
        };
        unknown.hibernate = 9;
        assert!(PeerMessage::decode(&prost::Message::encode_to_vec(&unknown)).is_err());
    }
}
