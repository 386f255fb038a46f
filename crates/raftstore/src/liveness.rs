//! Store liveness: which of the stores holding replicas of this store's groups it still
//! hears, judged once per store rather than once per group.
//!
//! Every [`RaftConfig::heartbeat_ticks`](crate::RaftConfig) ticks a store sends each store
//! that holds a replica of one of its groups a *beat*: an envelope for no group, whose
//! [`PeerMessage::store_beat`](crate::PeerMessage) carries the sender's incarnation (a
//! number a restart changes). Any message from a store counts as hearing it. A store
//! silent for `election_ticks` ticks is *suspect*; heard again, it is alive; a beat with
//! another incarnation says it restarted. Hibernating groups (see
//! `docs/design/hibernation.md`) stop their own heartbeats and rely on these transitions:
//! only the groups with a replica on a store that changed need to wake.
//!
//! Silence is counted in ticks, the unit of raft-rs's election timeouts and vote refusal,
//! never in milliseconds: a store's silence is then comparable with what one of its
//! groups would have counted, whatever the clock did. A store that has never sent a beat
//! (a node of an older version) is never judged: groups with a replica there never rely
//! on it.

use std::collections::BTreeMap;

/// What changed about a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// Silent for an election timeout.
    Suspect(u64),
    /// Heard again after being suspect.
    Alive(u64),
    /// Beat with another incarnation: it restarted, and its replicas remember only what
    /// they had persisted.
    Restarted(u64),
}

/// What this store knows of one other store that beats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Heard {
    incarnation: u64,
    silent_ticks: u64,
    suspect: bool,
}

/// The liveness of the stores this one hears beats from.
#[derive(Debug)]
pub struct StoreLiveness {
    beat_every: u64,
    suspect_after: u64,
    ticks: u64,
    stores: BTreeMap<u64, Heard>,
}

impl StoreLiveness {
    /// Beats every `beat_every` ticks; a store silent for `suspect_after` ticks is suspect.
    pub fn new(beat_every: usize, suspect_after: usize) -> StoreLiveness {
        StoreLiveness {
            beat_every: beat_every.max(1) as u64,
            suspect_after: suspect_after.max(1) as u64,
            ticks: 0,
            stores: BTreeMap::new(),
        }
    }

    /// A message from `store` arrived: it is heard.
    pub fn heard(&mut self, store: u64) -> Option<Transition> {
        let heard = self.stores.get_mut(&store)?;
        heard.silent_ticks = 0;
        std::mem::take(&mut heard.suspect).then_some(Transition::Alive(store))
    }

    /// A beat from `store` with its `incarnation` (never 0) arrived.
    pub fn beat(&mut self, store: u64, incarnation: u64) -> Option<Transition> {
        let fresh = Heard { incarnation, silent_ticks: 0, suspect: false };
        match self.stores.insert(store, fresh) {
            Some(before) if before.incarnation != incarnation => Some(Transition::Restarted(store)),
            Some(before) if before.suspect => Some(Transition::Alive(store)),
            _ => None,
        }
    }

    /// One tick passes: the stores that turned suspect with it, and whether beats are
    /// due.
    pub fn tick(&mut self) -> (Vec<Transition>, bool) {
        self.ticks += 1;
        let mut changed = Vec::new();
        for (&store, heard) in &mut self.stores {
            heard.silent_ticks += 1;
            if !heard.suspect && heard.silent_ticks >= self.suspect_after {
                heard.suspect = true;
                changed.push(Transition::Suspect(store));
            }
        }
        (changed, self.ticks.is_multiple_of(self.beat_every))
    }

    /// Whether `store` is suspect; `None` if it never beat (it is not judged).
    pub fn is_suspect(&self, store: u64) -> Option<bool> {
        self.stores.get(&store).map(|h| h.suspect)
    }

    /// Forgets a store that no longer holds a replica of any group here.
    pub fn forget(&mut self, store: u64) {
        self.stores.remove(&store);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_is_judged_only_once_it_beats() {
        let mut liveness = StoreLiveness::new(2, 5);
        assert_eq!(liveness.heard(2), None);
        for _ in 0..20 {
            assert!(liveness.tick().0.is_empty(), "a store that never beat is never suspect");
        }
        assert_eq!(liveness.is_suspect(2), None);
        assert_eq!(liveness.beat(2, 7), None);
        assert_eq!(liveness.is_suspect(2), Some(false));
    }

    #[test]
    fn silence_makes_a_store_suspect_once_and_any_message_clears_it() {
        let mut liveness = StoreLiveness::new(2, 5);
        liveness.beat(2, 7);
        liveness.beat(3, 9);
        for tick in 1..5 {
            let (changed, beat) = liveness.tick();
            assert!(changed.is_empty());
            assert_eq!(beat, tick % 2 == 0);
            liveness.heard(3);
        }
        assert_eq!(liveness.tick().0, vec![Transition::Suspect(2)]);
        assert!(liveness.tick().0.is_empty(), "said once");
        assert_eq!(liveness.is_suspect(2), Some(true));
        assert_eq!(liveness.is_suspect(3), Some(false));
        assert_eq!(liveness.heard(2), Some(Transition::Alive(2)));
        assert_eq!(liveness.heard(2), None);
        assert_eq!(liveness.heard(3), None);
        for _ in 0..4 {
            assert!(liveness.tick().0.is_empty());
        }
        assert_eq!(liveness.tick().0, vec![Transition::Suspect(2), Transition::Suspect(3)]);
        assert_eq!(liveness.beat(2, 7), Some(Transition::Alive(2)));
    }

    #[test]
    fn a_new_incarnation_is_a_restart() {
        let mut liveness = StoreLiveness::new(2, 5);
        liveness.beat(2, 7);
        assert_eq!(liveness.beat(2, 7), None);
        assert_eq!(liveness.beat(2, 8), Some(Transition::Restarted(2)));
        for _ in 0..5 {
            liveness.tick();
        }
        assert_eq!(liveness.beat(2, 9), Some(Transition::Restarted(2)), "even when suspect");
        liveness.forget(2);
        assert_eq!(liveness.is_suspect(2), None);
    }
}
