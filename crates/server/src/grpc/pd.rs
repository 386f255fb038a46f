//! `pdpb.PD`: the placement API, answered by this node itself. Every response carries a
//! header with the cluster id; failures go into the header's error (clients unwrap the
//! header and would crash without one).

use crate::authz::{self, Caller, Need, Space};
use crate::convert::{decode_client_key, peer_to_meta, region_to_meta_as, store_to_meta};
use crate::error::RequestError;
use crate::identity::Identity;
use crate::network::Clients;
use crate::placement::Placement;
use crate::split::Splitter;
use crate::tasks::Tasks;
use futures::Stream;
use scandium_protocol::pdpb::{self, pd_server::Pd};
use scandium_raftstore::Registry;
use scandium_types::Region;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::StreamExt as _;
use tonic::{Request, Response, Status, Streaming};

/// The placement service of one node.
#[derive(Clone)]
pub struct PdService {
    identity: Identity,
    placement: Arc<Placement>,
    registry: Registry,
    clients: Arc<Clients>,
    tasks: Tasks,
    splitter: Arc<Splitter>,
}

/// What [`PdService`] is built from.
pub struct PdParts {
    /// Who this node is (it answers as a PD member).
    pub identity: Identity,
    /// The placement group, which answers most calls.
    pub placement: Arc<Placement>,
    /// Regions with a replica here (their leaders as this node sees them).
    pub registry: Registry,
    /// Channels to the placement leader, for forwarded calls.
    pub clients: Arc<Clients>,
    /// Where timestamp streams run.
    pub tasks: Tasks,
    /// `SplitRegions`.
    pub splitter: Arc<Splitter>,
}

impl PdService {
    /// Serves placement requests with these parts.
    pub fn new(parts: PdParts) -> PdService {
        let PdParts { identity, placement, registry, clients, tasks, splitter } = parts;
        PdService { identity, placement, registry, clients, tasks, splitter }
    }

    /// The placement group served.
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    fn cluster_id(&self) -> u64 {
        self.placement.read().cluster_id()
    }

    /// A header for a successful response.
    pub fn ok_header(&self) -> Option<pdpb::ResponseHeader> {
        Some(pdpb::ResponseHeader { cluster_id: self.cluster_id(), error: None })
    }

    /// A header carrying an error.
    pub fn error_header(
        &self,
        kind: pdpb::ErrorType,
        message: impl Into<String>,
    ) -> Option<pdpb::ResponseHeader> {
        let error = pdpb::Error { r#type: kind as i32, message: message.into() };
        Some(pdpb::ResponseHeader { cluster_id: self.cluster_id(), error: Some(error) })
    }

    /// Refuses requests meant for another cluster (a zero id means "not known yet").
    fn check_header(
        &self,
        header: Option<&pdpb::RequestHeader>,
    ) -> Result<(), Option<pdpb::ResponseHeader>> {
        let ours = self.cluster_id();
        match header {
            Some(h) if h.cluster_id != 0 && h.cluster_id != ours => Err(self.error_header(
                pdpb::ErrorType::Unknown,
                format!("request for cluster {} reached cluster {ours}", h.cluster_id),
            )),
            _ => Ok(()),
        }
    }

    fn region_response(&self, region: Option<Region>, encoded: bool) -> pdpb::GetRegionResponse {
        match region {
            Some(region) => pdpb::GetRegionResponse {
                header: self.ok_header(),
                leader: self.leader_of(&region),
                region: Some(region_to_meta_as(&region, encoded)),
                ..Default::default()
            },
            None => pdpb::GetRegionResponse {
                header: self.error_header(pdpb::ErrorType::RegionNotFound, "region not found"),
                ..Default::default()
            },
        }
    }

    /// The leader peer of a Region: as its leader last reported to placement, else as the
    /// local replica sees it; none while unknown (the client then backs off and asks
    /// again, where a wrong guess could send it to a dead store).
    fn leader_of(&self, region: &Region) -> Option<scandium_protocol::metapb::Peer> {
        let leader = match self.registry.get(region.id) {
            // A local replica knows best: the leader it hears from now, or none while it
            // hears none (an election: better no answer than a dead store).
            Some(local) if local.leader_alive => local.leader,
            Some(_) => None,
            None => self.placement.read().leader_of(region.id).cloned(),
        };
        leader.map(|p| peer_to_meta(&p))
    }
}

/// A store as a PD member: every node serves the PD API.
fn member(identity: &Identity, id: u64, address: &str) -> pdpb::Member {
    let url = identity.url_of(address);
    pdpb::Member {
        name: format!("scandium-{id}"),
        member_id: id,
        peer_urls: vec![url.clone()],
        client_urls: vec![url],
        binary_version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    }
}

type TsoStream = Pin<Box<dyn Stream<Item = Result<pdpb::TsoResponse, Status>> + Send>>;

/// A timestamp stream this node serves by forwarding is ended (looked at every
/// [`REDIRECT_AFTER`]) once another node leads the placement group and answers, so that
/// its client, which opens a new stream to the leader `GetMembers` names, stops paying a
/// second hop per batch. tikv-client opens streams only on errors, and a node named while
/// the old leader was gone (see `get_members`) would otherwise keep its clients for good.
/// The wait matters too: tikv-client reconnects at most once a second, and its requests
/// fail if the stream ends sooner after the last reconnect.
const REDIRECT_AFTER: std::time::Duration = std::time::Duration::from_secs(3);

/// The store a timestamp stream on `store` should go to instead.
async fn redirect_to(
    placement: &Placement,
    store: scandium_types::StoreId,
) -> Option<scandium_types::StoreId> {
    let leader = placement.live_leader_store().filter(|&leader| leader != store)?;
    placement.answers(leader).await.then_some(leader)
}

impl PdService {
    /// On a node holding no replica of the placement group (being drained, or joined a
    /// moment ago), whose state is not kept up to date, a placement read is answered by
    /// the placement leader instead; `None` if this node answers itself (it has a
    /// replica, or the leader cannot be reached: a lookup must not fail).
    async fn forwarded<T, F, Fut>(&self, call: F) -> Option<Response<T>>
    where
        F: FnOnce(pdpb::pd_client::PdClient<tonic::transport::Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<T>, Status>>,
    {
        if self.registry.meta().status.is_some() {
            return None;
        }
        let address = self.placement.wait_leader().await.ok()?;
        if address == self.identity.address {
            return None;
        }
        let channel = self.clients.channel(&address).ok()?;
        let call = call(pdpb::pd_client::PdClient::new(channel));
        tokio::time::timeout(std::time::Duration::from_secs(2), call).await.ok()?.ok()
    }
}

#[tonic::async_trait]
impl Pd for PdService {
    async fn get_members(
        &self,
        _request: Request<pdpb::GetMembersRequest>,
    ) -> Result<Response<pdpb::GetMembersResponse>, Status> {
        let mut members: Vec<pdpb::Member> = self
            .placement
            .read()
            .stores()
            .filter(|s| s.state() != scandium_types::StoreState::Tombstone)
            .map(|s| member(&self.identity, s.id, &s.address))
            .collect();
        let own = member(&self.identity, self.identity.store_id, &self.identity.address);
        if !members.iter().any(|m| m.member_id == self.identity.store_id) {
            members.push(own.clone());
        }
        // The placement leader if this node hears it; otherwise this node, which forwards
        // every call to the leader once there is one (a header error would make
        // tikv-client sleep a second per retry) -- unless this node has been cut off from
        // the placement group for a while: then a header error sends the client to
        // another member.
        // A leader heard lately whose node does not answer now (killed: this node notices
        // only an election timeout later) is not named either: this node is, and
        // forwards to the next leader once there is one.
        let leader = match self.placement.live_leader_store() {
            Some(id) if id == self.identity.store_id => own,
            Some(id) if self.placement.answers(id).await => {
                members.iter().find(|m| m.member_id == id).cloned().unwrap_or(own)
            }
            Some(_) => own,
            None if self.placement.cut_off() => {
                return Ok(Response::new(pdpb::GetMembersResponse {
                    header: self.error_header(
                        pdpb::ErrorType::Unknown,
                        "this node hears no placement leader; ask another member",
                    ),
                    members,
                    ..Default::default()
                }));
            }
            None => own,
        };
        Ok(Response::new(pdpb::GetMembersResponse {
            header: self.ok_header(),
            members,
            etcd_leader: Some(leader.clone()),
            leader: Some(leader),
            ..Default::default()
        }))
    }

    async fn tso(
        &self,
        request: Request<Streaming<pdpb::TsoRequest>>,
    ) -> Result<Response<TsoStream>, Status> {
        let mut requests = request.into_inner();
        let placement = self.placement.clone();
        let cluster_id = self.cluster_id();
        let (sender, receiver) = tokio::sync::mpsc::channel(16);
        let store = self.identity.store_id;
        let mut next_check = std::time::Instant::now() + REDIRECT_AFTER;
        self.tasks.spawn(async move {
            // One request at a time, in order: the client matches responses to requests FIFO.
            while let Some(Ok(request)) = requests.next().await {
                if std::time::Instant::now() >= next_check {
                    next_check = std::time::Instant::now() + REDIRECT_AFTER;
                    if let Some(leader) = redirect_to(&placement, store).await {
                        let message = format!("the placement leader is store {leader}: ask it");
                        let _ = sender.send(Err(Status::unavailable(message))).await;
                        break;
                    }
                }
                let response = match placement.timestamp(request.count).await {
                    Ok(ts) => Ok(pdpb::TsoResponse {
                        header: Some(pdpb::ResponseHeader { cluster_id, error: None }),
                        count: request.count,
                        timestamp: Some(pdpb::Timestamp {
                            physical: ts.physical() as i64,
                            logical: ts.logical() as i64,
                            suffix_bits: 0,
                        }),
                    }),
                    // A bad count will fail again; anything else may pass on a retry.
                    Err(e @ RequestError::Invalid(_)) => {
                        Err(Status::invalid_argument(e.to_string()))
                    }
                    Err(e) => Err(Status::unavailable(e.to_string())),
                };
                let failed = response.is_err();
                if sender.send(response).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))))
    }

    async fn is_bootstrapped(
        &self,
        _request: Request<pdpb::IsBootstrappedRequest>,
    ) -> Result<Response<pdpb::IsBootstrappedResponse>, Status> {
        Ok(Response::new(pdpb::IsBootstrappedResponse {
            header: self.ok_header(),
            bootstrapped: true,
        }))
    }

    async fn alloc_id(
        &self,
        request: Request<pdpb::AllocIdRequest>,
    ) -> Result<Response<pdpb::AllocIdResponse>, Status> {
        if let Err(header) = self.check_header(request.get_ref().header.as_ref()) {
            return Ok(Response::new(pdpb::AllocIdResponse { header, id: 0 }));
        }
        let response = match self.placement.alloc_ids(1).await {
            Ok(id) => pdpb::AllocIdResponse { header: self.ok_header(), id },
            Err(e) => pdpb::AllocIdResponse {
                header: self.error_header(pdpb::ErrorType::Unknown, e.to_string()),
                id: 0,
            },
        };
        Ok(Response::new(response))
    }

    async fn get_store(
        &self,
        request: Request<pdpb::GetStoreRequest>,
    ) -> Result<Response<pdpb::GetStoreResponse>, Status> {
        let forwarded = request.get_ref().clone();
        if let Some(answer) =
            self.forwarded(|mut pd| async move { pd.get_store(forwarded).await }).await
        {
            return Ok(answer);
        }
        let req = request.into_inner();
        if let Err(header) = self.check_header(req.header.as_ref()) {
            return Ok(Response::new(pdpb::GetStoreResponse { header, store: None }));
        }
        let store = self.placement.read().store(req.store_id).map(store_to_meta);
        let header = match store {
            Some(_) => self.ok_header(),
            None => self.error_header(
                pdpb::ErrorType::Unknown,
                format!("store {} not found", req.store_id),
            ),
        };
        Ok(Response::new(pdpb::GetStoreResponse { header, store }))
    }

    async fn get_all_stores(
        &self,
        request: Request<pdpb::GetAllStoresRequest>,
    ) -> Result<Response<pdpb::GetAllStoresResponse>, Status> {
        let forwarded = request.get_ref().clone();
        if let Some(answer) =
            self.forwarded(|mut pd| async move { pd.get_all_stores(forwarded).await }).await
        {
            return Ok(answer);
        }
        let exclude_tombstones = request.get_ref().exclude_tombstone_stores;
        let stores = self
            .placement
            .read()
            .stores()
            .map(store_to_meta)
            .filter(|s| {
                !(exclude_tombstones
                    && s.state == scandium_protocol::metapb::StoreState::Tombstone as i32)
            })
            .collect();
        Ok(Response::new(pdpb::GetAllStoresResponse { header: self.ok_header(), stores }))
    }

    async fn get_region(
        &self,
        request: Request<pdpb::GetRegionRequest>,
    ) -> Result<Response<pdpb::GetRegionResponse>, Status> {
        let caller = Caller::of(&request);
        let forwarded = request.get_ref().clone();
        if let Some(answer) =
            self.forwarded(|mut pd| async move { pd.get_region(forwarded).await }).await
        {
            return shown_to(&caller, "GetRegion", answer).map_err(|e| *e);
        }
        let key = decode_client_key(&request.get_ref().region_key);
        let region = self.placement.read().region_by_key(&key.key).cloned();
        shown_to(&caller, "GetRegion", Response::new(self.region_response(region, key.encoded)))
            .map_err(|e| *e)
    }

    async fn get_prev_region(
        &self,
        request: Request<pdpb::GetRegionRequest>,
    ) -> Result<Response<pdpb::GetRegionResponse>, Status> {
        let caller = Caller::of(&request);
        let forwarded = request.get_ref().clone();
        if let Some(answer) =
            self.forwarded(|mut pd| async move { pd.get_prev_region(forwarded).await }).await
        {
            return shown_to(&caller, "GetPrevRegion", answer).map_err(|e| *e);
        }
        let key = decode_client_key(&request.get_ref().region_key);
        let region = self.placement.read().prev_region(&key.key).cloned();
        let response = Response::new(self.region_response(region, key.encoded));
        shown_to(&caller, "GetPrevRegion", response).map_err(|e| *e)
    }

    async fn get_region_by_id(
        &self,
        request: Request<pdpb::GetRegionByIdRequest>,
    ) -> Result<Response<pdpb::GetRegionResponse>, Status> {
        let caller = Caller::of(&request);
        let forwarded = request.get_ref().clone();
        if let Some(answer) =
            self.forwarded(|mut pd| async move { pd.get_region_by_id(forwarded).await }).await
        {
            return shown_to(&caller, "GetRegionByID", answer).map_err(|e| *e);
        }
        // No key tells how this client reads boundaries; encoding clients are the ones that
        // look Regions up by id (API V1 raw clients only on a cache miss during scans).
        let region = self.placement.read().region(request.get_ref().region_id).cloned();
        shown_to(&caller, "GetRegionByID", Response::new(self.region_response(region, true)))
            .map_err(|e| *e)
    }

    async fn scan_regions(
        &self,
        request: Request<pdpb::ScanRegionsRequest>,
    ) -> Result<Response<pdpb::ScanRegionsResponse>, Status> {
        let caller = Caller::of(&request);
        let forwarded = request.get_ref().clone();
        if let Some(answer) =
            self.forwarded(|mut pd| async move { pd.scan_regions(forwarded).await }).await
        {
            return regions_shown_to(&caller, answer).map_err(|e| *e);
        }
        let req = request.into_inner();
        let start = decode_client_key(&req.start_key);
        let end = decode_client_key(&req.end_key);
        let encoded = start.encoded || end.encoded;
        let limit = usize::try_from(req.limit.max(0)).unwrap_or(0);
        let found: Vec<Region> = self
            .placement
            .read()
            .scan_regions(&start.key, &end.key, limit)
            .into_iter()
            .cloned()
            .collect();
        let mut response =
            pdpb::ScanRegionsResponse { header: self.ok_header(), ..Default::default() };
        for region in &found {
            let meta = region_to_meta_as(region, encoded);
            let leader = self.leader_of(region);
            response.region_metas.push(meta.clone());
            response.leaders.push(leader.clone().unwrap_or_default());
            response.regions.push(pdpb::Region {
                region: Some(meta),
                leader,
                ..Default::default()
            });
        }
        regions_shown_to(&caller, Response::new(response)).map_err(|e| *e)
    }

    async fn get_gc_safe_point(
        &self,
        request: Request<pdpb::GetGcSafePointRequest>,
    ) -> Result<Response<pdpb::GetGcSafePointResponse>, Status> {
        let forwarded = request.get_ref().clone();
        if let Some(answer) =
            self.forwarded(|mut pd| async move { pd.get_gc_safe_point(forwarded).await }).await
        {
            return Ok(answer);
        }
        let safe_point = self.placement.read().gc_safe_point();
        Ok(Response::new(pdpb::GetGcSafePointResponse { header: self.ok_header(), safe_point }))
    }

    async fn update_gc_safe_point(
        &self,
        request: Request<pdpb::UpdateGcSafePointRequest>,
    ) -> Result<Response<pdpb::UpdateGcSafePointResponse>, Status> {
        authz::check_status(&Caller::of(&request), "UpdateGCSafePoint", &Need::Admin)
            .map_err(|e| *e)?;
        let req = request.into_inner();
        if let Err(header) = self.check_header(req.header.as_ref()) {
            return Ok(Response::new(pdpb::UpdateGcSafePointResponse {
                header,
                new_safe_point: 0,
            }));
        }
        let response = match self.placement.update_gc_safe_point(req.safe_point).await {
            Ok(new_safe_point) => {
                pdpb::UpdateGcSafePointResponse { header: self.ok_header(), new_safe_point }
            }
            Err(e) => pdpb::UpdateGcSafePointResponse {
                header: self.error_header(pdpb::ErrorType::Unknown, e.to_string()),
                new_safe_point: 0,
            },
        };
        Ok(Response::new(response))
    }

    async fn split_regions(
        &self,
        request: Request<pdpb::SplitRegionsRequest>,
    ) -> Result<Response<pdpb::SplitRegionsResponse>, Status> {
        authz::check_status(&Caller::of(&request), "SplitRegions", &Need::Admin).map_err(|e| *e)?;
        let req = request.into_inner();
        if let Err(header) = self.check_header(req.header.as_ref()) {
            return Ok(Response::new(pdpb::SplitRegionsResponse { header, ..Default::default() }));
        }
        let keys = req.split_keys.iter().map(|k| decode_client_key(k).key).collect();
        let response = match self.splitter.split_at_keys(keys).await {
            Ok(regions) => pdpb::SplitRegionsResponse {
                header: self.ok_header(),
                finished_percentage: 100,
                regions_id: regions.iter().map(|r| r.id).collect(),
            },
            Err(e) => pdpb::SplitRegionsResponse {
                header: self.error_header(error_type(&e), e.to_string()),
                ..Default::default()
            },
        };
        Ok(Response::new(response))
    }
}

/// A Region lookup's answer, if the caller may read the whole range of the Region it
/// shows: boundaries are user keys, and Regions sit at keyspace edges, so a client sees
/// the Regions of its own keyspaces and no other.
fn shown_to(
    caller: &Option<Caller>,
    operation: &str,
    response: Response<pdpb::GetRegionResponse>,
) -> Result<Response<pdpb::GetRegionResponse>, Box<Status>> {
    if let Some(region) = &response.get_ref().region {
        may_see(caller, operation, region)?;
    }
    Ok(response)
}

/// `ScanRegions`' answer, if the caller may see every Region in it (else refused whole).
fn regions_shown_to(
    caller: &Option<Caller>,
    response: Response<pdpb::ScanRegionsResponse>,
) -> Result<Response<pdpb::ScanRegionsResponse>, Box<Status>> {
    let answer = response.get_ref();
    let regions = answer.regions.iter().filter_map(|r| r.region.as_ref());
    for region in answer.region_metas.iter().chain(regions) {
        may_see(caller, "ScanRegions", region)?;
    }
    Ok(response)
}

fn may_see(
    caller: &Option<Caller>,
    operation: &str,
    region: &scandium_protocol::metapb::Region,
) -> Result<(), Box<Status>> {
    if caller.is_none() {
        return Ok(());
    }
    let start = decode_client_key(&region.start_key).key;
    let end = decode_client_key(&region.end_key).key;
    authz::check_status(caller, operation, &Need::range(Space::Any, false, &start, &end))
}

fn error_type(error: &RequestError) -> pdpb::ErrorType {
    match error {
        RequestError::Invalid(_) => pdpb::ErrorType::InvalidValue,
        _ => pdpb::ErrorType::Unknown,
    }
}
