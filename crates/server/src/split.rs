//! Splitting Regions on request (`scandium ctl split`, PD `SplitRegions`, Tikv
//! `SplitRegion`, and the automatic splits by size and by load).
//!
//! The keys a Region holds are cut in one step: the split allocates the new Regions' ids
//! from placement, proposes one Raft command that cuts the Region at every key (at most
//! [`MAX_CUTS_PER_COMMAND`]), and reports every piece to placement in one command before
//! answering, so that a client asking placement right after sees the new layout, and one
//! asking during the report sees the old or the new layout, never a gap.
//!
//! The new Regions are led at once: this node's replicas of them campaign as the split
//! applies (the raftstore's `start_split_peer`), and the report waits (boundedly) for them
//! to lead, so that placement names every piece's leader from the start. Otherwise a
//! request for a new Region (a client's, or the next split of it asked of another node)
//! would find no leader until the next heartbeat.

use crate::error::RequestError;
use crate::identity::Identity;
use crate::network::{Clients, Directory};
use crate::placement::Placement;
use crate::raft_driver::RaftHandle;
use scandium_placement::RegionReport;
use scandium_raftstore::{ApplyOutput, RaftCommand, Registry, SplitRequest};
use scandium_types::Region;
use std::sync::Arc;

/// Proposals per key when concurrent splits change the Region under us.
const ATTEMPTS: usize = 5;

/// Split keys one request may name: each is a new Region, a Raft group on every replica's
/// store.
pub const MAX_SPLIT_KEYS: usize = 10_000;

/// Cuts one Raft command makes at most: each is a record in the command and, as it
/// applies, a new Raft group on every replica's store, all in one round; more keys take
/// more commands.
pub const MAX_CUTS_PER_COMMAND: usize = 1_000;

/// How long a split waits for its new Region's leader before reporting the new Region
/// without one (its first heartbeat names it then), and how long a split asked of a node
/// that does not lead the Region waits for placement to learn who does. An election on a
/// healthy group takes one round trip; this covers an election timeout.
const LEADER_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// How long a split is tried again after Region errors, or waits while its Region has no
/// leader (a leader moving, or an election, is done within an election timeout).
const RETRY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether a split that failed so may succeed if tried again: a Region error, here or as
/// another node answered it (whose error comes back as text).
fn retryable(error: &RequestError) -> bool {
    match error {
        RequestError::Region(_) => true,
        RequestError::Internal(message) => message.starts_with("region error:"),
        RequestError::Invalid(_) => false,
    }
}

/// Splits Regions on request: on this node for the Regions it leads, by asking the leader
/// for the others.
pub struct Splitter {
    identity: Identity,
    registry: Registry,
    placement: Arc<Placement>,
    raft: RaftHandle,
    directory: Arc<Directory>,
    clients: Arc<Clients>,
}

impl Splitter {
    /// A splitter proposing to `raft`, taking ids from and reporting to `placement`.
    pub fn new(
        identity: Identity,
        registry: Registry,
        placement: Arc<Placement>,
        raft: RaftHandle,
        directory: Arc<Directory>,
        clients: Arc<Clients>,
    ) -> Splitter {
        Splitter { identity, registry, placement, raft, directory, clients }
    }

    /// Splits so that a Region starts at each of `keys`; returns those Regions, in key
    /// order. A key that already is a Region boundary is left as it is. The keys a Region
    /// holds are cut in one Raft command (up to [`MAX_CUTS_PER_COMMAND`] at a time).
    pub async fn split_at_keys(&self, mut keys: Vec<Vec<u8>>) -> Result<Vec<Region>, RequestError> {
        if keys.len() > MAX_SPLIT_KEYS {
            return Err(RequestError::invalid(format!(
                "{} split keys in one request; at most {MAX_SPLIT_KEYS}",
                keys.len()
            )));
        }
        for key in &keys {
            if key.is_empty() {
                return Err(RequestError::invalid("cannot split at the empty key"));
            }
            if key.len() > scandium_types::MAX_KEY_SIZE {
                return Err(RequestError::invalid("split key is longer than the key size limit"));
            }
        }
        keys.sort();
        keys.dedup();
        let mut regions = Vec::with_capacity(keys.len());
        let mut rest = keys.as_slice();
        while !rest.is_empty() {
            let done = self.split_group(rest).await?;
            rest = &rest[done.len()..];
            regions.extend(done);
        }
        Ok(regions)
    }

    /// Splits so that a Region starts at `key` (see [`Splitter::split_at_keys`]).
    pub async fn split_at(&self, key: Vec<u8>) -> Result<Region, RequestError> {
        let mut regions = self.split_at_keys(vec![key]).await?;
        regions.pop().ok_or_else(|| RequestError::Internal("a split answered no region".into()))
    }

    /// Splits the Region containing `keys[0]` at it and at the keys after it that the
    /// same Region holds (`keys` sorted and distinct): here if this node leads it, else
    /// by asking its leader. Returns the Regions that now start at those keys (one at
    /// least, a prefix of `keys`). A Region error on the way (its leadership moved, by
    /// an election or a transfer, or a concurrent split changed it) means "look again",
    /// as does a Region with no leader yet (an election under way): the split is tried
    /// again for up to [`RETRY_WAIT`], proposed here at most [`ATTEMPTS`] times.
    async fn split_group(&self, keys: &[Vec<u8>]) -> Result<Vec<Region>, RequestError> {
        let key = &keys[0];
        let deadline = std::time::Instant::now() + RETRY_WAIT;
        let mut proposals = 0;
        loop {
            let outcome = match self.registry.find_by_key(key) {
                Some(status) if status.ready_for_reads => {
                    if proposals == ATTEMPTS {
                        return Err(RequestError::Internal(format!(
                            "region of {key:?} kept changing; split not done"
                        )));
                    }
                    proposals += 1;
                    let group = &keys[..held_by(&status.region, keys)];
                    self.split_here(status.region, group).await
                }
                // The Region is led elsewhere: its leader splits it.
                Some(status)
                    if status
                        .leader
                        .as_ref()
                        .is_some_and(|l| l.store_id != self.identity.store_id) =>
                {
                    self.split_elsewhere(keys).await
                }
                None if self.placement.read().region_by_key(key).is_some() => {
                    self.split_elsewhere(keys).await
                }
                // An election is under way here (a Region just split off): wait for it.
                _ if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
                _ => {
                    return Err(RequestError::Internal(format!(
                        "the region of {key:?} has no leader"
                    )))
                }
            };
            match outcome {
                Err(error) if retryable(&error) && std::time::Instant::now() < deadline => {
                    tracing::debug!(%error, key = %crate::redact::key(key), "split tried again");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                result => return result,
            }
        }
    }

    /// Cuts `region`, led here, at `keys` (all inside it) in one Raft command, and records
    /// every piece in placement.
    async fn split_here(
        &self,
        region: Region,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Region>, RequestError> {
        // Only the first key can be the Region's start: the Region itself starts there.
        let at_start = keys[0] == region.start_key;
        let cuts = &keys[usize::from(at_start)..];
        if cuts.is_empty() {
            return Ok(vec![region]);
        }
        let peers = region.peers.len();
        let first_id =
            self.placement.alloc_ids(SplitRequest::ids_needed(cuts.len(), peers)).await?;
        let requests = SplitRequest::cuts(cuts, peers, first_id);
        let command = RaftCommand::split(&region, requests);
        match self.raft.propose_command(region.id, command).await? {
            ApplyOutput::Split { left, new } => {
                let shapes = new
                    .iter()
                    .map(|r| RegionReport { region: Some(r.clone()), ..Default::default() });
                let reports = shapes.chain([self.report(&left)]).collect();
                self.placement.report_regions(reports).await?;
                self.record_leaders(&new).await;
                tracing::info!(region = left.id, pieces = new.len() + 1, first = %crate::redact::key(&cuts[0]), "split region");
                Ok(at_start.then_some(left).into_iter().chain(new).collect())
            }
            other => Err(RequestError::Internal(format!("unexpected split result {other:?}"))),
        }
    }

    /// What placement records of a piece of a split: its shape, and its leader if this
    /// node leads it.
    fn report(&self, half: &Region) -> RegionReport {
        let led = self.registry.get(half.id).filter(|s| s.ready_for_reads);
        let (leader_peer_id, term) = led.map_or((0, 0), |s| (s.peer.id, s.term));
        RegionReport { region: Some(half.clone()), leader_peer_id, term }
    }

    /// Waits (up to [`LEADER_WAIT`]) for this node's replicas of the new Regions to win
    /// the elections they started as the split applied, and records them as the leaders
    /// unless heartbeats already did. Best effort: the split is done either way, and the
    /// leaders' heartbeats name them later.
    async fn record_leaders(&self, new: &[Region]) {
        let deadline = std::time::Instant::now() + LEADER_WAIT;
        let led = loop {
            let led: Vec<_> = (new.iter())
                .filter_map(|r| self.registry.get(r.id).filter(|s| s.ready_for_reads))
                .collect();
            if led.len() == new.len() || std::time::Instant::now() >= deadline {
                break led;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        };
        let reports: Vec<_> = {
            let placement = self.placement.read();
            led.into_iter()
                .filter(|s| placement.leader_record(s.region.id).is_none_or(|l| l.term < s.term))
                .map(|s| RegionReport {
                    region: Some(s.region),
                    leader_peer_id: s.peer.id,
                    term: s.term,
                })
                .collect()
        };
        if reports.is_empty() {
            return;
        }
        if let Err(e) = self.placement.report_regions(reports).await {
            tracing::debug!(first = new[0].id, error = %e, "new regions' leaders not recorded");
        }
    }

    /// Asks the node leading the Region of `keys[0]` to split it there and at the keys
    /// after it that the Region holds, as placement knows the Region.
    async fn split_elsewhere(&self, keys: &[Vec<u8>]) -> Result<Vec<Region>, RequestError> {
        let key = &keys[0];
        let deadline = std::time::Instant::now() + LEADER_WAIT;
        let (group, leader) = loop {
            let (region, leader) = {
                let placement = self.placement.read();
                let region = placement.region_by_key(key).cloned();
                let leader = region.as_ref().and_then(|r| placement.leader_of(r.id).cloned());
                (region, leader)
            };
            if let Some(region) = region.as_ref().filter(|r| r.start_key == *key) {
                return Ok(vec![region.clone()]);
            }
            match (region, leader.filter(|l| l.store_id != self.identity.store_id)) {
                (Some(region), Some(leader)) => break (&keys[..held_by(&region, keys)], leader),
                // A split's halves or a new Region's leader are not recorded yet.
                _ if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                (None, _) => {
                    return Err(RequestError::Internal(format!(
                        "no region holds {}",
                        crate::redact::key(key)
                    )))
                }
                (Some(region), None) => {
                    return Err(RequestError::Internal(format!(
                        "region {} has no known leader",
                        region.id
                    )))
                }
            }
        };
        let address = self.directory.address(leader.store_id).ok_or_else(|| {
            RequestError::Internal(format!("no address for store {}", leader.store_id))
        })?;
        let channel = self.clients.channel(&address).map_err(RequestError::Internal)?;
        let mut pd = scandium_protocol::pdpb::pd_client::PdClient::new(channel);
        let request = scandium_protocol::pdpb::SplitRegionsRequest {
            header: Some(scandium_protocol::pdpb::RequestHeader {
                cluster_id: self.identity.cluster_id,
                sender_id: 0,
            }),
            // Encoded, so the leader reads them back as exactly these keys.
            split_keys: group.iter().map(|k| scandium_types::codec::encode_bytes(k)).collect(),
            retry_limit: 0,
        };
        let reply = pd
            .split_regions(request)
            .await
            .map_err(|s| RequestError::Internal(s.message().to_string()))?
            .into_inner();
        if let Some(error) = reply.header.and_then(|h| h.error) {
            return Err(RequestError::Internal(error.message));
        }
        if reply.regions_id.len() != group.len() {
            return Err(RequestError::Internal(format!(
                "store {} answered {} regions for {} split keys",
                leader.store_id,
                reply.regions_id.len(),
                group.len()
            )));
        }
        let placement = self.placement.read();
        let regions = (reply.regions_id.iter().zip(group))
            .map(|(&id, key)| {
                placement.region(id).cloned().unwrap_or_else(|| Region {
                    id,
                    start_key: key.clone(),
                    ..Default::default()
                })
            })
            .collect();
        Ok(regions)
    }
}

/// How many of `keys` (sorted, the first inside `region`) one split of `region` cuts at:
/// those inside it, up to [`MAX_CUTS_PER_COMMAND`].
fn held_by(region: &Region, keys: &[Vec<u8>]) -> usize {
    keys.iter().take(MAX_CUTS_PER_COMMAND).take_while(|k| region.contains(k)).count().max(1)
}
