//! What a simulated client knows of the Regions: as `tikv-client`'s Region cache, filled
//! from placement (any node's replica of it, as a client asks its PD endpoint) and
//! corrected by the Region errors its requests meet.

use crate::cluster::Cluster;
use crate::flows::Failure;
use scandium_raftstore::RaftstoreError;
use scandium_txn::CommandError;
use scandium_types::Region;
use std::collections::BTreeMap;

/// A client's Regions, by start key, and the stores it believes lead them.
#[derive(Default)]
pub struct RegionCache {
    regions: BTreeMap<Vec<u8>, Region>,
    leaders: BTreeMap<u64, u64>,
}

impl RegionCache {
    /// The Region holding `key`, as cached or as placement says, and the store believed
    /// to lead it; `None` if no node can say.
    pub fn locate(&mut self, cluster: &Cluster, key: &[u8]) -> Option<(Region, Option<u64>)> {
        if let Some((_, region)) = self.regions.range(..=key.to_vec()).next_back() {
            if region.contains(key) {
                return Some((region.clone(), self.leaders.get(&region.id).copied()));
            }
        }
        let (region, leader) = cluster.lookup_region(key)?;
        self.insert(region.clone());
        if let Some(leader) = leader {
            self.leaders.insert(region.id, leader);
        }
        Some((region, leader))
    }

    /// Learns from a failed request to `region_id` on store `store`: the Regions an
    /// `EpochNotMatch` names replace what was cached; a Region that is gone, or does not
    /// hold the key, is forgotten; a `NotLeader` names the leader, or the store is not it.
    pub fn on_failure(&mut self, region_id: u64, store: u64, failure: &Failure) {
        match failure {
            Failure::Refused(RaftstoreError::EpochNotMatch { current }) => {
                current.iter().for_each(|region| self.insert(region.clone()));
            }
            Failure::Refused(RaftstoreError::RegionNotFound(id)) => self.forget(*id),
            Failure::Command(CommandError::KeyNotInRegion { region, .. }) => {
                self.insert((**region).clone())
            }
            Failure::Refused(RaftstoreError::NotLeader { leader: Some(leader), .. })
                if leader.store_id != store =>
            {
                self.leaders.insert(region_id, leader.store_id);
                return;
            }
            _ => {}
        }
        if self.leaders.get(&region_id) == Some(&store) {
            self.leaders.remove(&region_id);
        }
    }

    fn insert(&mut self, region: Region) {
        let overlapping: Vec<Vec<u8>> = self
            .regions
            .iter()
            .filter(|(_, cached)| overlaps(cached, &region))
            .map(|(start, _)| start.clone())
            .collect();
        for start in overlapping {
            self.regions.remove(&start);
        }
        self.regions.insert(region.start_key.clone(), region);
    }

    fn forget(&mut self, id: u64) {
        self.regions.retain(|_, region| region.id != id);
        self.leaders.remove(&id);
    }
}

fn overlaps(a: &Region, b: &Region) -> bool {
    let before = |x: &Region, y: &Region| !x.end_key.is_empty() && x.end_key <= y.start_key;
    !before(a, b) && !before(b, a)
}
