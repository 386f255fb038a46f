//! The HTTP/1.1 face of the node, on the same port as gRPC: the subset of PD's HTTP API
//! that tools use, a health check, and the replicas' digests that `scandium ctl
//! check-consistency` compares.

use crate::context::NodeContext;
use crate::convert::encode_boundary;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use scandium_types::Region;
use serde_json::{json, Value};
use std::sync::Arc;

/// Adds the HTTP routes to `router`.
pub fn routes(router: Router, node: Arc<NodeContext>) -> Router {
    let http = Router::new()
        .route("/pd/api/v1/regions", get(regions))
        .route("/pd/api/v1/stores", get(stores))
        .route("/pd/api/v1/health", get(members_health))
        .route("/pd/api/v1/members", get(members))
        .route("/pd/api/v1/leader", get(leader))
        .route("/", get(status_page))
        .route("/api/v1/regions", get(regions_page))
        .route("/health", get(health))
        .route("/debug/digests", get(digests))
        .route("/metrics", get(metrics))
        .with_state(node);
    router.merge(http)
}

/// Keys as PD's HTTP API shows them: upper-case hex of the encoded key.
fn hex(key: &[u8]) -> String {
    encode_boundary(key).iter().map(|b| format!("{b:02X}")).collect()
}

fn region_json(node: &NodeContext, region: &Region) -> Value {
    let leader = node
        .registry
        .get(region.id)
        .filter(|s| s.leader_alive)
        .and_then(|s| s.leader)
        .or_else(|| node.placement.read().leader_of(region.id).cloned());
    json!({
        "id": region.id,
        "start_key": hex(&region.start_key),
        "end_key": hex(&region.end_key),
        "epoch": { "conf_ver": region.conf_ver, "version": region.version },
        "peers": region.peers.iter().map(|p| json!({
            "id": p.id,
            "store_id": p.store_id,
            "role_name": format!("{:?}", p.role()),
        })).collect::<Vec<_>>(),
        "leader": leader.map(|p| json!({ "id": p.id, "store_id": p.store_id })),
    })
}

async fn regions(State(node): State<Arc<NodeContext>>) -> Json<Value> {
    let regions: Vec<Region> = node.placement.read().regions().cloned().collect();
    let list: Vec<Value> = regions.iter().map(|r| region_json(&node, r)).collect();
    Json(json!({ "count": list.len(), "regions": list }))
}

async fn stores(State(node): State<Arc<NodeContext>>) -> Json<Value> {
    let liveness = liveness(&node).await;
    let placement = node.placement.read();
    let list: Vec<Value> = placement
        .stores()
        .map(|store| {
            let regions =
                placement.regions().filter(|r| r.peer_on_store(store.id).is_some()).count();
            let leaders = placement
                .regions()
                .filter(|r| placement.leader_of(r.id).is_some_and(|l| l.store_id == store.id))
                .count();
            let live = liveness.iter().find(|l| l.store_id == store.id);
            let state = match (store.state, live) {
                (1, _) => "Offline".to_string(),
                (2, _) => "Tombstone".to_string(),
                (_, Some(live)) => live.status.clone(),
                (_, None) => "Up".to_string(),
            };
            json!({
                "store": {
                    "id": store.id,
                    "address": store.address,
                    "state_name": state,
                    "version": store.version,
                    "start_timestamp": store.start_timestamp,
                },
                "status": {
                    "region_count": regions,
                    "leader_count": leaders,
                    "last_heartbeat_ms_ago": live.map(|l| l.last_heartbeat_ms_ago),
                },
            })
        })
        .collect();
    Json(json!({ "count": list.len(), "stores": list }))
}

/// What the placement leader knows of stores' heartbeats (asked of it when it is another
/// node; nothing if it cannot be reached).
async fn liveness(node: &NodeContext) -> Vec<scandium_protocol::scandium::StoreLiveness> {
    if node.placement.is_serving() {
        return node.store_liveness();
    }
    let Some(address) = node.placement.leader_address() else { return Vec::new() };
    let Ok(mut client) = node.clients.cluster(&address) else { return Vec::new() };
    let request = scandium_protocol::scandium::InfoRequest {};
    match tokio::time::timeout(std::time::Duration::from_secs(2), client.info(request)).await {
        Ok(Ok(info)) => info.into_inner().liveness,
        _ => Vec::new(),
    }
}

fn member_json(id: u64, address: &str) -> Value {
    let url = format!("http://{address}");
    json!({
        "name": format!("scandium-{id}"),
        "member_id": id,
        "peer_urls": [url.clone()],
        "client_urls": [url],
    })
}

/// `GET /pd/api/v1/members`, as PD answers it.
async fn members(State(node): State<Arc<NodeContext>>) -> Json<Value> {
    let placement = node.placement.read();
    let members: Vec<Value> = placement
        .stores()
        .filter(|s| s.state() != scandium_types::StoreState::Tombstone)
        .map(|s| member_json(s.id, &s.address))
        .collect();
    let leader = node
        .placement
        .live_leader_store()
        .and_then(|id| placement.store(id).map(|s| member_json(s.id, &s.address)));
    Json(json!({ "members": members, "leader": leader, "etcd_leader": leader }))
}

/// `GET /pd/api/v1/leader`: the placement leader, as PD answers it.
async fn leader(
    State(node): State<Arc<NodeContext>>,
) -> Result<Json<Value>, axum::http::StatusCode> {
    let placement = node.placement.read();
    node.placement
        .live_leader_store()
        .and_then(|id| placement.store(id).map(|s| Json(member_json(s.id, &s.address))))
        .ok_or(axum::http::StatusCode::SERVICE_UNAVAILABLE)
}

async fn members_health(State(node): State<Arc<NodeContext>>) -> Json<Value> {
    let placement = node.placement.read();
    let leader = node.placement.live_leader_store();
    let list: Vec<Value> = placement
        .stores()
        .filter(|s| s.state() != scandium_types::StoreState::Tombstone)
        .map(|s| {
            let mut member = member_json(s.id, &s.address);
            member["health"] = json!(Some(s.id) == leader || s.id == node.store_id);
            member
        })
        .collect();
    Json(json!(list))
}

/// `GET /`: the status page, one file embedded in the binary; everything it shows comes
/// from the JSON endpoints on the same port (docs/status-page.md).
async fn status_page() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("status/index.html"))
}

/// Paging and search of `GET /api/v1/regions`.
#[derive(serde::Deserialize)]
struct RegionsQuery {
    /// Only the Region holding this key (as text).
    key: Option<String>,
    #[serde(default)]
    offset: usize,
    limit: Option<usize>,
}

/// The most Regions one page holds.
const MAX_PAGE: usize = 1000;

/// `GET /api/v1/regions?offset=N&limit=M[&key=K]`: Regions in key order as placement knows
/// them, a page at a time, or the one holding key K. Keys are shown as text, bytes that
/// are not printable escaped.
async fn regions_page(
    State(node): State<Arc<NodeContext>>,
    axum::extract::Query(query): axum::extract::Query<RegionsQuery>,
) -> Json<Value> {
    let placement = node.placement.read();
    let mut regions: Vec<&Region> = placement.regions().collect();
    regions.sort_by(|a, b| a.start_key.cmp(&b.start_key));
    if let Some(key) = &query.key {
        let key = key.as_bytes();
        regions.retain(|r| {
            key >= r.start_key.as_slice() && (r.end_key.is_empty() || key < r.end_key.as_slice())
        });
    }
    let total = regions.len();
    let limit = query.limit.unwrap_or(50).clamp(1, MAX_PAGE);
    let page: Vec<Value> = regions
        .iter()
        .skip(query.offset)
        .take(limit)
        .map(|region| {
            let leader = placement.leader_of(region.id);
            json!({
                "id": region.id,
                "start_key": region.start_key.escape_ascii().to_string(),
                "end_key": region.end_key.escape_ascii().to_string(),
                "epoch": { "conf_ver": region.conf_ver, "version": region.version },
                "leader_store": leader.map(|p| p.store_id),
                "peers": region.peers.iter().map(|p| json!({
                    "id": p.id,
                    "store_id": p.store_id,
                    "role": format!("{:?}", p.role()),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Json(json!({ "total": total, "offset": query.offset, "regions": page }))
}

async fn health(
    State(node): State<Arc<NodeContext>>,
) -> ([(axum::http::HeaderName, &'static str); 1], Json<Value>) {
    // The status page of any node reads every node's /health.
    let cors = [(axum::http::header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")];
    (cors, health_json(&node))
}

fn health_json(node: &NodeContext) -> Json<Value> {
    let regions = node.registry.all();
    let serving = regions.iter().filter(|s| s.ready_for_reads).count();
    Json(json!({
        "status": if serving == regions.len() && node.placement.is_serving() { "ok" } else { "degraded" },
        "store_id": node.store_id,
        "regions": regions.len(),
        "regions_serving": serving,
        "placement_leader": node.placement.is_serving(),
        "disk_bytes": node.engine.disk_size(),
        "disk_free_bytes": Some(node.disk.free()).filter(|&free| free != u64::MAX),
        "disk_full": node.disk.is_full(),
        "process": crate::process::read(None).map(|p| json!({
            "cpu_seconds": p.cpu_seconds,
            "rss_bytes": p.rss_bytes,
        })),
    }))
}

/// `GET /metrics`: Prometheus' text format (see `metrics.rs`).
async fn metrics(State(node): State<Arc<NodeContext>>) -> impl axum::response::IntoResponse {
    let text = crate::metrics::render(&node);
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// Every local replica's applied index and per-column-family digests, from one engine
/// snapshot. Reads all of each Region's data: a tool's request, not a monitoring one.
async fn digests(State(node): State<Arc<NodeContext>>) -> Json<Value> {
    let engine = node.engine.clone();
    let regions: Vec<Region> = node.registry.all().into_iter().map(|s| s.region).collect();
    let store_id = node.store_id;
    let computed = tokio::task::spawn_blocking(move || {
        let snapshot = engine.snapshot();
        regions
            .iter()
            .map(|region| match scandium_raftstore::snapshot::replica_digest(region, &*snapshot) {
                Ok((applied, digests)) => json!({
                    "region_id": region.id,
                    "applied_index": applied,
                    "digests": digests,
                }),
                Err(error) => json!({ "region_id": region.id, "error": error.to_string() }),
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    Json(json!({ "store_id": store_id, "replicas": computed }))
}
