//! What a simulated client knows of the Regions: as `tikv-client`'s Region cache, filled
//! from placement (any node's replica of it, as a client asks its PD endpoint) and
//! corrected by the Region errors its requests meet.

use crate::cluster::Cluster;
use crate::commands::Failure;
use scandium_raftstore::RaftstoreError;
use scandium_txn::CommandError;
use scandium_types::Region;
use std::collections::BTreeMap;

/// A client's Regions, by start key.
#[derive(Default)]
pub struct RegionCache {
    regions: BTreeMap<Vec<u8>, Region>,
}

impl RegionCache {
    /// The Region holding `key`, as cached or as placement says; `None` if no node can say.
    pub fn locate(&mut self, cluster: &Cluster, key: &[u8]) -> Option<Region> {
        if let Some((_, region)) = self.regions.range(..=key.to_vec()).next_back() {
            if region.contains(key) {
                return Some(region.clone());
            }
        }
        let region = cluster.lookup_region(key)?;
        self.insert(region.clone());
        Some(region)
    }

    /// Learns from a failed request: the Regions an `EpochNotMatch` names replace what was
    /// cached; a Region that is gone, or does not hold the key, is forgotten.
    pub fn on_failure(&mut self, failure: &Failure) {
        match failure {
            Failure::Refused(RaftstoreError::EpochNotMatch { current }) => {
                current.iter().for_each(|region| self.insert(region.clone()));
            }
            Failure::Refused(RaftstoreError::RegionNotFound(id)) => self.forget(*id),
            Failure::Command(CommandError::KeyNotInRegion { region, .. }) => {
                self.insert((**region).clone())
            }
            _ => {}
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
    }
}

fn overlaps(a: &Region, b: &Region) -> bool {
    let before = |x: &Region, y: &Region| !x.end_key.is_empty() && x.end_key <= y.start_key;
    !before(a, b) && !before(b, a)
}
