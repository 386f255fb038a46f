//! `keyspacepb.Keyspace`: keyspace lookup for API V2 clients.

use crate::authz::Caller;
use crate::grpc::pd::PdService;
use scandium_placement::KeyspaceMeta;
use scandium_protocol::keyspacepb::{self, keyspace_server::Keyspace};
use scandium_protocol::pdpb;
use tonic::{Request, Response, Status};

/// The keyspace service; shares headers with the placement service.
pub struct KeyspaceService {
    pd: PdService,
}

impl KeyspaceService {
    /// Serves keyspace requests with `pd`'s view of the cluster.
    pub fn new(pd: PdService) -> KeyspaceService {
        KeyspaceService { pd }
    }
}

fn to_meta(keyspace: &KeyspaceMeta) -> keyspacepb::KeyspaceMeta {
    keyspacepb::KeyspaceMeta {
        id: keyspace.id,
        name: keyspace.name.clone(),
        state: keyspace.state,
        created_at: keyspace.created_at,
        state_changed_at: keyspace.created_at,
        ..Default::default()
    }
}

#[tonic::async_trait]
impl Keyspace for KeyspaceService {
    async fn load_keyspace(
        &self,
        request: Request<keyspacepb::LoadKeyspaceRequest>,
    ) -> Result<Response<keyspacepb::LoadKeyspaceResponse>, Status> {
        let name = &request.get_ref().name;
        let keyspace = self.pd.placement().read().keyspace_by_name(name).map(to_meta);
        if let (Some(Caller { identity, authz }), Some(keyspace)) =
            (Caller::of(&request), &keyspace)
        {
            if !authz.may_see_keyspace(&identity, keyspace.id) {
                crate::metrics::METRICS.refused_calls.inc();
                return Err(Status::permission_denied(format!(
                    "PERMISSION_DENIED: client {:?} may not load keyspace {name:?} (LoadKeyspace): \
                     it has no grant there",
                    identity.name
                )));
            }
        }
        let header = match keyspace {
            Some(_) => self.pd.ok_header(),
            None => self.pd.error_header(
                pdpb::ErrorType::EntryNotFound,
                format!("keyspace {name:?} not found"),
            ),
        };
        Ok(Response::new(keyspacepb::LoadKeyspaceResponse { header, keyspace }))
    }

    async fn get_all_keyspaces(
        &self,
        request: Request<keyspacepb::GetAllKeyspacesRequest>,
    ) -> Result<Response<keyspacepb::GetAllKeyspacesResponse>, Status> {
        let caller = Caller::of(&request);
        let visible =
            |id| caller.as_ref().is_none_or(|c| c.authz.may_see_keyspace(&c.identity, id));
        let req = request.get_ref();
        let limit = if req.limit == 0 { usize::MAX } else { req.limit as usize };
        let keyspaces = self
            .pd
            .placement()
            .read()
            .keyspaces()
            .filter(|k| k.id >= req.start_id && visible(k.id))
            .take(limit)
            .map(to_meta)
            .collect();
        Ok(Response::new(keyspacepb::GetAllKeyspacesResponse {
            header: self.pd.ok_header(),
            keyspaces,
        }))
    }
}
