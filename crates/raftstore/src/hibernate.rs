//! Hibernation: a group with nothing to do stops ticking and heartbeating on every
//! replica, so that thousands of idle Regions cost next to nothing. The design, with the
//! reasons for each rule, is `docs/design/hibernation.md`; in short:
//!
//! - A leader idle for [`RaftConfig::hibernate_after_ticks`] ticks (nothing proposed,
//!   read or changed; every entry committed and applied; every follower on a store not
//!   suspect caught up; its lease run out) asks those followers to sleep
//!   ([`Hibernate::Request`]) and stops ticking. A follower caught up to the same entry
//!   under the same leader and term sleeps and acknowledges; any other answers no. With
//!   every acknowledgement the leader sleeps; with a refusal, or none in time, it wakes
//!   and heartbeats, which wakes whoever slept.
//! - Asleep, a replica does not tick: no heartbeats, no election timer, no check-quorum.
//!   Anything that needs the group wakes it: a proposal, a read needing a ReadIndex
//!   round, a conf change or transfer, a Raft message, and a change in the liveness of a
//!   store holding one of its replicas ([`crate::liveness`]). A follower that wakes tells
//!   its leader ([`Hibernate::Wake`]); a leader that wakes heartbeats.
//! - A sleeping leader holds no lease (it slept only once its lease ran out, and nothing
//!   renews it while asleep), so every read of a sleeping Region goes through a ReadIndex
//!   round, which wakes it: reads stay linearizable.
//! - A sleeping group's leader dying is noticed through store liveness: its store turns
//!   suspect an election timeout after its last beat, which wakes every group with a
//!   replica there; their followers then elect as usual.
//!
//! Not persisted: a restarted replica starts awake.

use crate::liveness::StoreLiveness;
pub use crate::message::Hibernate;
use crate::peer::{Peer, RaftConfig, Sleep};
use crate::META_GROUP_ID;
use raft::ProgressState;

impl Peer {
    /// Whether the replica has nothing of its own under way: no proposal, read, snapshot
    /// or conf change, and its log all committed and applied.
    fn is_quiet(&self) -> bool {
        let last = self.raw.raft.raft_log.last_index();
        self.initialized
            && self.region.id != META_GROUP_ID
            && self.lingering.is_none()
            && self.installing.is_none()
            && self.pending_snapshot.is_none()
            && self.deferred.is_empty()
            && self.held_answers.is_empty()
            && self.proposals.is_empty()
            && self.read_batch.is_empty()
            && self.reads.is_empty()
            && !self.raw.has_ready()
            && !self.raw.raft.has_pending_conf()
            && self.raw.store().conf_state().voters_outgoing.is_empty()
            && self.raw.raft.raft_log.committed == last
            && self.raw.store().apply_state().applied_index == last
    }

    /// The followers (and learners) a leader asks to sleep: those on stores not suspect.
    /// `None` if the leader may not sleep: a follower there behind or taking a snapshot, or
    /// too few voters there to make a quorum with the leader.
    pub(crate) fn followers_to_ask(
        &self,
        liveness: &StoreLiveness,
        now_ms: u64,
    ) -> Option<Vec<u64>> {
        if !self.is_quiet()
            || !self.is_leader()
            || !self.ready_for_reads()
            || self.deposed_ms.is_some()
            || self.raw.raft.lead_transferee.is_some()
            || !self.broadcast_commit_done()
        {
            return None;
        }
        let last = self.raw.raft.raft_log.last_index();
        let me = self.meta.id;
        let mut asked = Vec::new();
        let mut here = Vec::new();
        for (&id, pr) in self.raw.raft.prs().iter() {
            if id != me {
                let store = self.peer_by_id(id).map(|p| p.store_id);
                if store.is_some_and(|s| liveness.is_suspect(s) == Some(true)) {
                    continue;
                }
                // Probing is as good as replicating here: raft-rs leaves a caught-up
                // follower probing for ever once a send to it failed, as nothing is
                // left to append, and a probe's first append goes at once as well.
                if pr.state == ProgressState::Snapshot || pr.matched != last {
                    return None;
                }
                asked.push(id);
            }
            here.push(id);
        }
        let prs = self.raw.raft.prs();
        // A sole voter's lease never ends, and it may sleep holding it: no other replica
        // can be elected.
        if !prs.has_quorum(&here.into_iter().collect())
            || (!prs.is_singleton() && self.lease_until_ms > now_ms)
        {
            return None;
        }
        Some(asked)
    }

    /// Whether a follower may sleep at a leader's request (from replica `leader`, at
    /// `term`, with the leader's last index `index`): it is caught up to exactly that
    /// under that leader, with nothing of its own under way.
    pub(crate) fn may_sleep_for(&self, leader: u64, term: u64, index: u64) -> bool {
        self.is_quiet()
            && !self.is_leader()
            && self.raw.raft.leader_id == leader
            && self.raw.raft.term == term
            && self.raw.raft.raft_log.last_index() == index
    }
}

/// Ticks a leader waits for every follower's answer after asking them to sleep: two
/// heartbeat periods. It sends no heartbeat meanwhile, so this must end (with a
/// heartbeat) well before an awake follower's election timeout; nothing checks that,
/// and with the default 2-tick heartbeat and 10-tick election it is 4 of 10.
pub(crate) fn ask_ticks(config: &RaftConfig) -> usize {
    2 * config.heartbeat_ticks.max(1)
}

impl Peer {
    /// Puts the replica to sleep, giving back what it holds only to be quick while
    /// awake: its entry cache, raft-rs's windows of appends in flight, and the room kept
    /// in queues that are empty now (raft-rs's unpersisted entries, the proposals).
    pub(crate) fn fall_asleep(&mut self) {
        self.sleep = Sleep::Asleep;
        self.raw.mut_store().release_cache();
        self.raw.raft.maybe_free_inflight_buffers();
        let unstable = &mut self.raw.raft.raft_log.unstable.entries;
        if unstable.is_empty() {
            *unstable = Vec::new();
        }
        if self.proposals.is_empty() {
            self.proposals = Default::default();
        }
    }

    /// Wakes the replica if it sleeps (or, a leader, asks to): it ticks again; a leader
    /// heartbeats, which wakes its followers, and restarts its check-quorum window; a
    /// follower that `tells_leader` has a message for its leader, to wake it too. An
    /// awake replica starts counting its idleness again.
    ///
    /// A woken leader counts the followers that slept with it (`slept_with`), on stores
    /// heard within an election timeout (`liveness`), as heard from now: they were caught
    /// up when they slept, and any change in their stores' liveness since would have
    /// woken the group. Without it, a conf change asked of a sleeping leader was refused
    /// for want of recent answers. Only those: a follower left out of the sleep (its store
    /// was suspect then) may be far behind, and vouched for, it made a removal of a
    /// caught-up voter look safe (found by review).
    pub(crate) fn wake(
        &mut self,
        tells_leader: bool,
        liveness: &StoreLiveness,
        now_ms: u64,
    ) -> Option<crate::PeerMessage> {
        if self.sleep.is_awake() {
            self.sleep = Sleep::default();
            return None;
        }
        self.sleep = Sleep::default();
        // Frozen while asleep; a leader would otherwise judge its quorum on answers it
        // never asked for.
        self.raw.raft.election_elapsed = 0;
        let slept_with = std::mem::take(&mut self.slept_with);
        if self.is_leader() {
            for id in slept_with {
                let store = self.region.peer(id).map(|p| p.store_id);
                if store.is_some_and(|store| liveness.is_suspect(store) == Some(false)) {
                    self.heard_ms.insert(id, now_ms);
                }
            }
            self.raw.ping();
            return None;
        }
        let leader = self.raw.raft.leader_id;
        let to = self.peer_by_id(leader).filter(|_| tells_leader && leader != 0)?;
        Some(self.envelope(to, Hibernate::Wake))
    }

    /// A hibernation message from this replica to `to`.
    pub(crate) fn envelope(&self, to: scandium_types::Peer, what: Hibernate) -> crate::PeerMessage {
        crate::PeerMessage {
            region_id: self.region.id,
            from: self.meta.clone(),
            to,
            epoch: self.region.epoch(),
            hibernate: Some(what),
            ..crate::PeerMessage::default()
        }
    }
}
