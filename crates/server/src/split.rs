//! Splitting Regions on request (`scandium ctl split`, PD `SplitRegions`, Tikv
//! `SplitRegion`).
//!
//! A split allocates the new Region's ids from placement, proposes the split to the Region's
//! Raft group, and reports both halves to placement in one command before answering, so
//! that a client asking placement right after sees the new layout, and one asking during
//! the report sees the old or the new layout, never a gap.
//!
//! The new Region is led at once: this node's replica of it campaigns as the split
//! applies (the raftstore's `start_split_peer`), and the report waits (boundedly) for it to
//! lead, so that placement names both halves' leaders from the start. Otherwise a request
//! for the new Region (a client's, or the next split of it asked of another node) would
//! find no leader until the next heartbeat.

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

/// Split keys one request may name: each is a Raft round and a placement record.
pub const MAX_SPLIT_KEYS: usize = 10_000;

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

    /// Splits at each key in turn; returns the Regions that now start at the keys. A key
    /// that already is a Region boundary is left as it is.
    pub async fn split_at_keys(&self, mut keys: Vec<Vec<u8>>) -> Result<Vec<Region>, RequestError> {
        if keys.len() > MAX_SPLIT_KEYS {
            return Err(RequestError::invalid(format!(
                "{} split keys in one request; at most {MAX_SPLIT_KEYS}",
                keys.len()
            )));
        }
        keys.sort();
        keys.dedup();
        let mut regions = Vec::with_capacity(keys.len());
        for key in keys {
            regions.push(self.split_at(key).await?);
        }
        Ok(regions)
    }

    /// Splits the Region containing `key` so that a Region starts at `key`: here if this
    /// node leads it, else by asking its leader. A Region error on the way (its leadership
    /// moved, by an election or a transfer, or a concurrent split changed it) means "look
    /// again", as does a Region with no leader yet (an election under way): the split is
    /// tried again for up to [`RETRY_WAIT`], proposed here at most [`ATTEMPTS`] times.
    pub async fn split_at(&self, key: Vec<u8>) -> Result<Region, RequestError> {
        if key.is_empty() {
            return Err(RequestError::invalid("cannot split at the empty key"));
        }
        if key.len() > scandium_types::MAX_KEY_SIZE {
            return Err(RequestError::invalid("split key is longer than the key size limit"));
        }
        let deadline = std::time::Instant::now() + RETRY_WAIT;
        let mut proposals = 0;
        loop {
            let outcome = match self.registry.find_by_key(&key) {
                Some(status) if status.ready_for_reads => {
                    if proposals == ATTEMPTS {
                        return Err(RequestError::Internal(format!(
                            "region of {key:?} kept changing; split not done"
                        )));
                    }
                    proposals += 1;
                    self.split_here(status.region, &key).await
                }
                // The Region is led elsewhere: its leader splits it.
                Some(status)
                    if status
                        .leader
                        .as_ref()
                        .is_some_and(|l| l.store_id != self.identity.store_id) =>
                {
                    self.split_elsewhere(&key).await
                }
                None if self.placement.read().region_by_key(&key).is_some() => {
                    self.split_elsewhere(&key).await
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
                    tracing::debug!(%error, key = ?key, "split tried again");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                result => return result,
            }
        }
    }

    /// Splits `region`, led here, at `key`, and records both halves in placement.
    async fn split_here(&self, region: Region, key: &[u8]) -> Result<Region, RequestError> {
        if region.start_key == key {
            return Ok(region);
        }
        let first_id = self.placement.alloc_ids(1 + region.peers.len() as u64).await?;
        let request = SplitRequest {
            split_key: key.to_vec(),
            new_region_id: first_id,
            new_peer_ids: (1..=region.peers.len() as u64).map(|i| first_id + i).collect(),
        };
        let command = RaftCommand::split(&region, request);
        match self.raft.propose_command(region.id, command).await? {
            ApplyOutput::Split { left, right } => {
                let shape = RegionReport { region: Some(right.clone()), ..Default::default() };
                let reports = vec![shape, self.report(&left)];
                self.placement.report_regions(reports).await?;
                self.record_leader(&right).await;
                tracing::info!(region = right.id, key = ?key, "split region");
                Ok(right)
            }
            other => Err(RequestError::Internal(format!("unexpected split result {other:?}"))),
        }
    }

    /// What placement records of a half of a split: its shape, and its leader if this node
    /// leads it.
    fn report(&self, half: &Region) -> RegionReport {
        let led = self.registry.get(half.id).filter(|s| s.ready_for_reads);
        let (leader_peer_id, term) = led.map_or((0, 0), |s| (s.peer.id, s.term));
        RegionReport { region: Some(half.clone()), leader_peer_id, term }
    }

    /// Waits (up to [`LEADER_WAIT`]) for this node's replica of the new Region to win the
    /// election it started as the split applied, and records it as the leader unless a
    /// heartbeat already did. Best effort: the split is done either way, and the leader's
    /// heartbeats name it later.
    async fn record_leader(&self, new: &Region) {
        let deadline = std::time::Instant::now() + LEADER_WAIT;
        let status = loop {
            match self.registry.get(new.id) {
                Some(status) if status.ready_for_reads => break status,
                _ if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                }
                _ => return,
            }
        };
        let known = self.placement.read().leader_record(new.id);
        if known.is_some_and(|l| l.term >= status.term) {
            return;
        }
        let report = RegionReport {
            region: Some(status.region.clone()),
            leader_peer_id: status.peer.id,
            term: status.term,
        };
        if let Err(e) = self.placement.report_regions(vec![report]).await {
            tracing::debug!(region = new.id, error = %e, "new region's leader not recorded");
        }
    }

    /// Asks the node leading the Region of `key` to split it there.
    async fn split_elsewhere(&self, key: &[u8]) -> Result<Region, RequestError> {
        let deadline = std::time::Instant::now() + LEADER_WAIT;
        let leader = loop {
            let (region, leader) = {
                let placement = self.placement.read();
                let region = placement.region_by_key(key).cloned();
                let leader = region.as_ref().and_then(|r| placement.leader_of(r.id).cloned());
                (region, leader)
            };
            if let Some(region) = region.as_ref().filter(|r| r.start_key == key) {
                return Ok(region.clone());
            }
            match (region, leader.filter(|l| l.store_id != self.identity.store_id)) {
                (Some(_), Some(leader)) => break leader,
                // A split's halves or a new Region's leader are not recorded yet.
                _ if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                (None, _) => {
                    return Err(RequestError::Internal(format!("no region holds {key:?}")))
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
            // Encoded, so the leader reads it back as exactly this key.
            split_keys: vec![scandium_types::codec::encode_bytes(key)],
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
        let id = reply.regions_id.first().copied().unwrap_or(0);
        let placement = self.placement.read();
        Ok(placement.region(id).cloned().unwrap_or_else(|| Region {
            id,
            start_key: key.to_vec(),
            ..Default::default()
        }))
    }
}
