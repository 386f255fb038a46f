//! The HTTP/1.1 face of the node, on the same port as gRPC: the subset of PD's HTTP API
//! that tools use, and a health check.

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
        .route("/health", get(health))
        .with_state(node);
    router.merge(http)
}

/// Keys as PD's HTTP API shows them: upper-case hex of the encoded key.
fn hex(key: &[u8]) -> String {
    encode_boundary(key).iter().map(|b| format!("{b:02X}")).collect()
}

fn region_json(node: &NodeContext, region: &Region) -> Value {
    let leader = node.registry.get(region.id).and_then(|s| s.leader);
    json!({
        "id": region.id,
        "start_key": hex(&region.start_key),
        "end_key": hex(&region.end_key),
        "epoch": { "conf_ver": region.conf_ver, "version": region.version },
        "peers": region.peers.iter().map(|p| json!({ "id": p.id, "store_id": p.store_id })).collect::<Vec<_>>(),
        "leader": leader.map(|p| json!({ "id": p.id, "store_id": p.store_id })),
    })
}

async fn regions(State(node): State<Arc<NodeContext>>) -> Json<Value> {
    let regions: Vec<Region> = node.placement.read().regions().cloned().collect();
    let list: Vec<Value> = regions.iter().map(|r| region_json(&node, r)).collect();
    Json(json!({ "count": list.len(), "regions": list }))
}

async fn stores(State(node): State<Arc<NodeContext>>) -> Json<Value> {
    let placement = node.placement.read();
    let list: Vec<Value> = placement
        .stores()
        .map(|store| {
            let regions =
                placement.regions().filter(|r| r.peer_on_store(store.id).is_some()).count();
            let state = match store.state {
                0 => "Up",
                1 => "Offline",
                _ => "Tombstone",
            };
            json!({
                "store": {
                    "id": store.id,
                    "address": store.address,
                    "state_name": state,
                    "version": store.version,
                    "start_timestamp": store.start_timestamp,
                },
                "status": { "region_count": regions, "leader_count": regions },
            })
        })
        .collect();
    Json(json!({ "count": list.len(), "stores": list }))
}

async fn members_health(State(node): State<Arc<NodeContext>>) -> Json<Value> {
    let url = format!("http://{}", node.advertise_addr);
    Json(json!([{
        "name": format!("scandium-{}", node.store_id),
        "member_id": node.store_id,
        "client_urls": [url],
        "health": node.placement.is_serving(),
    }]))
}

async fn health(State(node): State<Arc<NodeContext>>) -> Json<Value> {
    let regions = node.registry.all();
    let serving = regions.iter().filter(|s| s.ready_for_reads).count();
    Json(json!({
        "status": if serving == regions.len() && node.placement.is_serving() { "ok" } else { "degraded" },
        "store_id": node.store_id,
        "regions": regions.len(),
        "regions_serving": serving,
        "placement_leader": node.placement.is_serving(),
        "disk_bytes": node.engine.disk_size(),
        "process": crate::process::read(None).map(|p| json!({
            "cpu_seconds": p.cpu_seconds,
            "rss_bytes": p.rss_bytes,
        })),
    }))
}
