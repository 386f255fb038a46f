//! [`Registry`]: what request handlers may know about the Regions on this node without
//! talking to the Raft thread.
//!
//! The Raft thread owns the peers; after every round it publishes each changed peer's
//! Region and leadership here. Handlers read it to validate requests (Region exists, epoch
//! current, key in range, this peer leads and has applied everything from earlier terms)
//! and to decide whether a read may be served at once (the leader's lease) or needs a
//! ReadIndex round first.

use crate::RaftstoreError;
use scandium_types::{Peer, Region, RegionEpoch, RegionId};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};

/// A Region as its local peer last saw it.
#[derive(Clone, Debug, Default)]
pub struct RegionStatus {
    /// The Region's range, epoch and peers.
    pub region: Region,
    /// This store's peer of the Region.
    pub peer: Peer,
    /// The leader's peer, if known.
    pub leader: Option<Peer>,
    /// Whether the local peer heard from that leader lately (a few heartbeats): a leader
    /// it has not heard from may be dead, and is better not named to clients.
    pub leader_alive: bool,
    /// The local peer is leader and has applied every entry of earlier terms, so its state
    /// machine reflects every acknowledged write.
    pub ready_for_reads: bool,
    /// The local peer's Raft term.
    pub term: u64,
    /// Until when (the store's clock, milliseconds) the local leader may serve reads
    /// without a ReadIndex round; 0 when it may not.
    pub lease_until_ms: u64,
    /// For a leader: peers that are behind (learners not caught up, lagging voters).
    pub pending_peers: Vec<Peer>,
    /// For a leader: peers it has not heard from within an election timeout.
    pub down_peers: Vec<Peer>,
    /// The Region's size and write traffic as the local replica applied them.
    pub stats: crate::stats::RegionStats,
    /// Whether the local replica hibernates (see [`crate::hibernate`]): published as it
    /// goes to sleep, and with its first round awake.
    pub hibernating: bool,
    /// The Region the local replica is frozen to merge into (see [`crate::merge`]), while
    /// it is: it serves nothing until the merge commits or rolls back, which an operator
    /// looking at a Region refusing requests needs to know.
    pub merging_into: Option<u64>,
}

impl RegionStatus {
    /// Whether the local leader may serve a read at `now_ms` from its state machine.
    pub fn lease_valid(&self, now_ms: u64) -> bool {
        self.ready_for_reads && now_ms < self.lease_until_ms
    }
}

/// A Region led here, as a request's checks found it.
#[derive(Clone, Debug)]
pub struct Led {
    /// The Region as it is now.
    pub region: Region,
    /// The local leader's term.
    pub term: u64,
    /// Whether the leader's lease covers reads at the time of the check.
    pub lease_valid: bool,
    /// Until when (monotonic milliseconds) the lease covers reads: a read served under it
    /// must also have taken its state before then (a pause after the check can outlast
    /// the lease).
    pub lease_until_ms: u64,
}

/// Leadership of the placement group's local peer.
#[derive(Clone, Debug, Default)]
pub struct GroupStatus {
    /// The local peer leads the group.
    pub is_leader: bool,
    /// See [`RegionStatus::ready_for_reads`].
    pub ready_for_reads: bool,
    /// The group as the local peer sees it (members, leader, lease).
    pub status: Option<RegionStatus>,
}

/// Which Regions there are: written only when a Region appears or goes, or its start key
/// changes, so that a status update of one Region does not hold up requests on others.
#[derive(Default)]
struct Index {
    by_id: HashMap<RegionId, Arc<Slot>>, // lookups only
    /// Start key to Region id, for routing by key.
    by_start: BTreeMap<Vec<u8>, RegionId>,
}

impl Index {
    fn slot(&self, id: &RegionId) -> Option<Arc<Slot>> {
        self.by_id.get(id).cloned()
    }
}

/// One Region's latest status, replaced whole at each publication.
struct Slot {
    status: RwLock<Arc<RegionStatus>>,
}

impl Slot {
    fn load(&self) -> Arc<RegionStatus> {
        self.status.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Shared, cheaply cloned view of the Regions on this node. A request's checks take the
/// index's read lock and then its Region's own: the Raft thread's publications of other
/// Regions never make them wait (one lock for all once did, thousands of writes every
/// few hundred milliseconds at rest).
#[derive(Clone, Default)]
pub struct Registry {
    index: Arc<RwLock<Index>>,
    meta: Arc<RwLock<GroupStatus>>,
    /// Regions published or removed since [`Registry::take_changed`] was last called: a
    /// heartbeat looks at those, not at every Region (a sleeping one publishes nothing).
    /// At most one id per Region.
    changed: Arc<Mutex<BTreeSet<RegionId>>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// The status of Region `id`.
    pub fn get(&self, id: RegionId) -> Option<RegionStatus> {
        self.status(id).map(|status| (*status).clone())
    }

    /// The status of Region `id`, shared (no copy of its peers and statistics).
    pub fn status(&self, id: RegionId) -> Option<Arc<RegionStatus>> {
        let slot = self.read().slot(&id)?;
        Some(slot.load())
    }

    /// The checks every request on a Region passes before it touches data: the Region has
    /// a peer here (`RegionNotFound`), at the request's epoch if it names one
    /// (`EpochNotMatch`, with the Region as it is now), and that peer leads and has
    /// applied every entry of earlier terms (`NotLeader`, with the leader if it is known,
    /// alive, and another replica).
    pub fn check_led(
        &self,
        region_id: RegionId,
        epoch: Option<RegionEpoch>,
        now_ms: u64,
    ) -> Result<Led, RaftstoreError> {
        let status = self.status(region_id).ok_or(RaftstoreError::RegionNotFound(region_id))?;
        if epoch.is_some_and(|epoch| epoch != status.region.epoch()) {
            return Err(RaftstoreError::EpochNotMatch { current: vec![status.region.clone()] });
        }
        if !status.ready_for_reads {
            // tikv-client follows a hint at once, without sleeping, but spends one of its
            // ten attempts on each hop. A leader this replica has not heard from lately is
            // likely dead, and a new leader that has not applied its term's first entry
            // yet would only send the client back to itself: a few such hops spent every
            // attempt in milliseconds, before the election or that apply was done (raw
            // puts failed by hundreds in each failover). Without a hint the client backs
            // off and asks placement again.
            let leader =
                (status.leader.clone()).filter(|l| status.leader_alive && l.id != status.peer.id);
            return Err(RaftstoreError::NotLeader { region_id: status.region.id, leader });
        }
        let lease_valid = status.lease_valid(now_ms);
        let lease_until_ms = status.lease_until_ms;
        Ok(Led { region: status.region.clone(), term: status.term, lease_valid, lease_until_ms })
    }

    /// The Region containing `key`.
    pub fn find_by_key(&self, key: &[u8]) -> Option<RegionStatus> {
        let slot = {
            let index = self.read();
            let (_, id) = index.by_start.range(..=key.to_vec()).next_back()?;
            index.slot(id)?
        };
        let status = slot.load();
        status.region.contains(key).then(|| (*status).clone())
    }

    /// Every Region, in key order.
    pub fn all(&self) -> Vec<RegionStatus> {
        self.statuses().iter().map(|status| (**status).clone()).collect()
    }

    /// The Regions published or removed since the last call: the ones the node's
    /// heartbeat must look at again (`scandium_placement::HeartbeatFilter`; there is one
    /// caller).
    pub fn take_changed(&self) -> BTreeSet<RegionId> {
        std::mem::take(&mut *self.changed.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The Regions led here and ready for reads, of `ids` (`None`: of every Region),
    /// shared: what a heartbeat looks through (`scandium_placement::Look::ids`), in the
    /// server and the simulator alike.
    pub fn led(&self, ids: Option<&BTreeSet<RegionId>>) -> Vec<Arc<RegionStatus>> {
        let mut led = match ids {
            Some(ids) => self.load(|index| ids.iter().filter_map(|id| index.slot(id)).collect()),
            None => self.statuses(),
        };
        led.retain(|status| status.ready_for_reads);
        led
    }

    /// Every Region, in key order, shared: without a copy of each Region's peers and keys.
    pub fn statuses(&self) -> Vec<Arc<RegionStatus>> {
        self.load(|index| index.by_start.values().filter_map(|id| index.slot(id)).collect())
    }

    /// The statuses of the slots `pick` finds in the index (its lock is let go of before
    /// any slot's is taken).
    fn load(&self, pick: impl FnOnce(&Index) -> Vec<Arc<Slot>>) -> Vec<Arc<RegionStatus>> {
        let slots = pick(&self.read());
        slots.iter().map(|slot| slot.load()).collect()
    }

    /// Regions overlapping `[start, end)` (empty `end` = unbounded), in key order.
    pub fn overlapping(&self, start: &[u8], end: &[u8]) -> Vec<RegionStatus> {
        self.all()
            .into_iter()
            .filter(|s| {
                (end.is_empty() || s.region.start_key.as_slice() < end)
                    && (s.region.end_key.is_empty() || start < s.region.end_key.as_slice())
            })
            .collect()
    }

    /// Publishes a Region's status, replacing what was known of it. Only a new Region,
    /// or one whose start key moved, takes the index's write lock.
    pub fn publish(&self, status: RegionStatus) {
        let id = status.region.id;
        self.replace(status);
        // Noted once the status is in: noted before, a heartbeat could take the note and
        // read the status this replaces, and then not look at the Region again.
        self.note_changed(id);
    }

    fn replace(&self, status: RegionStatus) {
        let id = status.region.id;
        {
            let index = self.read();
            if let Some(slot) = index.by_id.get(&id) {
                let mut current = slot.status.write().unwrap_or_else(|e| e.into_inner());
                if current.region.start_key == status.region.start_key {
                    *current = Arc::new(status);
                    return;
                }
            }
        }
        let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
        Self::unindex(&mut index, id);
        index.by_start.insert(status.region.start_key.clone(), id);
        let slot = Slot { status: RwLock::new(Arc::new(status)) };
        index.by_id.insert(id, Arc::new(slot));
    }

    /// Forgets a Region whose local replica was destroyed.
    pub fn remove(&self, id: RegionId) {
        {
            let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
            Self::unindex(&mut index, id);
            index.by_id.remove(&id);
        }
        self.note_changed(id);
    }

    fn note_changed(&self, id: RegionId) {
        self.changed.lock().unwrap_or_else(|e| e.into_inner()).insert(id);
    }

    fn unindex(index: &mut Index, id: RegionId) {
        if let Some(old) = index.by_id.get(&id) {
            let old_start = old.load().region.start_key.clone();
            if index.by_start.get(&old_start) == Some(&id) {
                index.by_start.remove(&old_start);
            }
        }
    }

    /// Leadership of the local placement peer.
    pub fn meta(&self) -> GroupStatus {
        self.meta.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Publishes the local placement peer's leadership.
    pub fn publish_meta(&self, status: GroupStatus) {
        *self.meta.write().unwrap_or_else(|e| e.into_inner()) = status;
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scandium_types::Peer;

    #[test]
    fn not_leader_names_only_another_replica_that_leads_and_is_heard_from() {
        let registry = Registry::new();
        let leader = Peer::new(2, 2);
        let mut status = RegionStatus {
            region: Region {
                id: 7,
                peers: vec![Peer::new(1, 1), leader.clone()],
                ..Default::default()
            },
            peer: Peer::new(1, 1),
            leader: Some(leader.clone()),
            leader_alive: true,
            ..Default::default()
        };
        registry.publish(status.clone());
        let hint = |registry: &Registry| match registry.check_led(7, None, 0) {
            Err(RaftstoreError::NotLeader { leader, .. }) => leader,
            other => panic!("a follower must answer NotLeader: {other:?}"),
        };
        assert_eq!(hint(&registry), Some(leader));
        // Silent for a few heartbeats: maybe dead. No hint, so the client backs off and
        // asks placement rather than hurry to a dead store.
        status.leader_alive = false;
        registry.publish(status.clone());
        assert_eq!(hint(&registry), None);
        // Elected but not ready for reads yet (its term's first entry is not applied):
        // not a hint at itself either.
        status.leader = Some(status.peer.clone());
        status.leader_alive = true;
        registry.publish(status);
        assert_eq!(hint(&registry), None);
    }

    #[test]
    fn a_region_is_found_by_its_current_start_and_shared_until_it_changes() {
        let registry = Registry::new();
        let region = |start: &[u8], version| Region {
            id: 7,
            start_key: start.to_vec(),
            version,
            ..Default::default()
        };
        let status = |start: &[u8], version| RegionStatus {
            region: region(start, version),
            ..Default::default()
        };
        registry.publish(status(b"a", 1));
        let first = registry.status(7).unwrap();
        assert!(Arc::ptr_eq(&first, &registry.status(7).unwrap()), "no copy per look");
        // Same start: the slot is replaced, the index kept.
        registry.publish(status(b"a", 2));
        assert_eq!(registry.find_by_key(b"b").unwrap().region.version, 2);
        assert_eq!(first.region.version, 1, "a reader's status stays as it was");
        // The start moved: the index follows.
        registry.publish(status(b"c", 3));
        assert!(registry.find_by_key(b"b").is_none());
        assert_eq!(registry.find_by_key(b"d").unwrap().region.version, 3);
        assert_eq!(registry.all().len(), 1);
        registry.remove(7);
        assert!(registry.status(7).is_none() && registry.find_by_key(b"d").is_none());
    }

    /// What a heartbeat must look at again: each Region published or removed since it
    /// last asked, once however often, and the status it then reads is the published one.
    #[test]
    fn published_and_removed_regions_are_noted_once_until_taken() {
        let registry = Registry::new();
        let status = |id: u64, term: u64| RegionStatus {
            region: Region { id, start_key: vec![id as u8], ..Default::default() },
            term,
            ready_for_reads: true,
            ..Default::default()
        };
        registry.publish(status(1, 1));
        registry.publish(status(2, 1));
        registry.publish(status(1, 2));
        assert_eq!(registry.take_changed().into_iter().collect::<Vec<_>>(), vec![1, 2]);
        assert!(registry.take_changed().is_empty());
        registry.publish(status(2, 3));
        let changed = registry.take_changed();
        let seen = registry.led(Some(&changed));
        assert_eq!(seen.iter().map(|s| (s.region.id, s.term)).collect::<Vec<_>>(), [(2, 3)]);
        registry.remove(1);
        let changed = registry.take_changed();
        assert_eq!(changed.iter().copied().collect::<Vec<_>>(), vec![1]);
        assert!(registry.led(Some(&changed)).is_empty(), "gone: the beat forgets it");
    }
}
