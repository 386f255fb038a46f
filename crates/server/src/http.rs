//! The HTTP/1.1 face of the node, on the same port as gRPC: the subset of PD's HTTP API
//! that tools use, a health check, and the replicas' digests that `scandium ctl
//! check-consistency` compares.

use crate::convert::encode_boundary;
use crate::disk::DiskSpace;
use crate::heartbeat::{Control, MAX_LOADS_ASKED};
use crate::identity::Identity;
use crate::network::Clients;
use crate::placement::Placement;
use crate::transport::Transport;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use prometheus::{IntCounter, IntGauge, Opts};
use scandium_placement::RegionLoad;
use scandium_raftstore::registry::RegionStatus;
use scandium_raftstore::Registry;
use scandium_storage::EngineRef;
use scandium_txn::TxnNode;
use scandium_types::Region;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What the HTTP API reads.
pub struct HttpState {
    /// Who this node is.
    pub identity: Identity,
    /// The node's storage (its size, its statistics, the replicas' digests).
    pub engine: EngineRef,
    /// Regions with a replica here.
    pub registry: Registry,
    /// The placement group's state.
    pub placement: Arc<Placement>,
    /// The control plane (store liveness, when this node leads placement).
    pub control: Arc<Control>,
    /// Channels to the placement leader (store liveness, when another node leads).
    pub clients: Arc<Clients>,
    /// The data directory's free space.
    pub disk: Arc<DiskSpace>,
    /// The Raft transport's counters.
    pub transport: Transport,
    /// Messages and requests refused (see `grpc/cluster.rs`).
    pub refused: Arc<AtomicU64>,
    /// The node's transactional state (lock waits, resolved locks).
    pub txn: Arc<TxnNode>,
}

/// Adds the HTTP routes to `router`.
pub fn routes(router: Router, node: Arc<HttpState>) -> Router {
    let http = Router::new()
        .route("/pd/api/v1/regions", get(regions))
        .route("/pd/api/v1/stores", get(stores))
        .route("/pd/api/v1/operators", get(operators))
        .route("/api/v1/scheduler", get(scheduler))
        .route("/api/v1/grants", get(grants))
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

/// A Region's size and traffic as PD's HTTP API shows them: `approximate_size` in MiB
/// (at least 1 when the Region holds anything, as PD rounds), the rest in bytes and keys
/// over the last heartbeat interval; and, not in PD, the size in bytes.
fn load_json(load: Option<&RegionLoad>) -> Value {
    let load = load.copied().unwrap_or_default();
    let mib = load.approximate_size.div_ceil(1 << 20);
    json!({
        "approximate_size": mib,
        "approximate_size_bytes": load.approximate_size,
        "approximate_keys": load.approximate_keys,
        "written_bytes": load.written_bytes,
        "written_keys": load.written_keys,
        "read_bytes": load.read_bytes,
        "read_keys": load.read_keys,
    })
}

/// Adds the fields of `extra` (an object) to `value` (an object).
fn merge(mut value: Value, extra: Value) -> Value {
    if let (Some(fields), Value::Object(extra)) = (value.as_object_mut(), extra) {
        fields.extend(extra);
    }
    value
}

/// `{"merging_into": N}` if this node's replica (`status`) is frozen for a merge into
/// Region N (it serves nothing until the merge commits or rolls back), else nothing.
fn merging_json(status: Option<&RegionStatus>) -> Value {
    match status.and_then(|s| s.merging_into) {
        Some(target) => json!({ "merging_into": target }),
        None => json!({}),
    }
}

fn region_json(node: &HttpState, region: &Region, load: Option<&RegionLoad>) -> Value {
    let status = node.registry.status(region.id);
    let leader = (status.as_ref())
        .filter(|s| s.leader_alive)
        .and_then(|s| s.leader.clone())
        .or_else(|| node.placement.read().leader_of(region.id).cloned());
    let shape = json!({
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
    });
    merge(merge(shape, load_json(load)), merging_json(status.as_deref()))
}

/// Paging of `GET /pd/api/v1/regions`.
#[derive(serde::Deserialize)]
struct PdRegionsQuery {
    /// Start at the Region holding this key (hex; empty or absent: the first Region).
    #[serde(default)]
    key: String,
    limit: Option<usize>,
}

/// Regions a page of `/pd/api/v1/regions` holds unless `limit` says otherwise.
const PD_PAGE: usize = 1_000;

/// `GET /pd/api/v1/regions[?key=HEX&limit=N]`: a page of Regions in key order, from the
/// one holding `key`: `count` of them (`limit`, 1–10,000, default 1,000), of `total`,
/// and `next_key`, where the next page starts (absent after the last). Without `key` and
/// with no more Regions than the page holds, it is PD's answer (every Region, `count`
/// of them); the page bounds what one call costs with 100,000 Regions.
async fn regions(
    State(node): State<Arc<HttpState>>,
    axum::extract::Query(query): axum::extract::Query<PdRegionsQuery>,
) -> Result<Json<Value>, (axum::http::StatusCode, String)> {
    let bad = |message: String| (axum::http::StatusCode::BAD_REQUEST, message);
    let key =
        scandium_types::codec::decode_hex(&query.key).map_err(|e| bad(format!("key: {e}")))?;
    let limit = query.limit.unwrap_or(PD_PAGE).clamp(1, MAX_LOADS_ASKED);
    let (regions, next_key, total) = {
        let placement = node.placement.read();
        let mut page = placement.scan_regions(&key, b"", limit + 1);
        let next = (page.len() > limit).then(|| page.pop().map(|r| hex(&r.start_key)));
        let page: Vec<Region> = page.into_iter().cloned().collect();
        (page, next.flatten(), placement.region_count())
    };
    let ids: Vec<u64> = regions.iter().map(|r| r.id).collect();
    let loads = node.control.region_loads(Some(&ids)).await;
    let list: Vec<Value> =
        regions.iter().map(|r| region_json(&node, r, loads.get(&r.id))).collect();
    let mut answer = json!({ "count": list.len(), "total": total, "regions": list });
    if let Some(next_key) = next_key {
        answer["next_key"] = json!(next_key);
    }
    Ok(Json(answer))
}

/// The operators the placement leader runs (PD's route; PD's fields differ: ours say in
/// words what each does and which step it is at). 503 if no placement leader answers.
async fn operators(
    State(node): State<Arc<HttpState>>,
) -> Result<Json<Value>, axum::http::StatusCode> {
    let unavailable = axum::http::StatusCode::SERVICE_UNAVAILABLE;
    let operators = node.control.operators().await.ok_or(unavailable)?;
    let list: Vec<Value> = operators
        .iter()
        .map(|o| {
            json!({
                "region_id": o.region_id,
                "kind": o.kind,
                "step": o.step,
                "step_number": o.step_number,
                "steps": o.steps,
                "step_age_ms": o.step_age_ms,
            })
        })
        .collect();
    Ok(Json(json!({ "count": list.len(), "operators": list })))
}

/// The scheduler's settings for the whole cluster, as this node's placement state has
/// them (`balance_limit` and `store_limit` 0, `location_labels` null: each placement
/// leader's own setting).
async fn scheduler(State(node): State<Arc<HttpState>>) -> Json<Value> {
    let settings = node.placement.read().scheduler_settings().clone();
    let store_limits: Vec<Value> = (settings.store_limits.iter())
        .map(|l| json!({ "store_id": l.store_id, "moves_per_minute": l.moves_per_minute }))
        .collect();
    Json(json!({
        "replicas_paused": settings.replicas_paused,
        "leaders_paused": settings.leaders_paused,
        "balance_limit": settings.balance_limit,
        "hot_paused": settings.hot_paused,
        "store_limit": settings.store_limit,
        "store_limits": store_limits,
        "location_labels": settings.location_labels.map(|l| l.levels),
        "merges_paused": settings.merges_paused,
        "merge_max_size": settings.merge_max_size,
        "merge_max_keys": settings.merge_max_keys,
        "split_merge_interval_ms": settings.split_merge_interval_ms,
    }))
}

/// The grants and the authorisation switch, with the keyspaces' names (what `scandium
/// ctl grants` shows and `ctl grant` starts from). For admins only, with TLS on.
async fn grants(State(node): State<Arc<HttpState>>) -> Json<Value> {
    let state = node.placement.read();
    let names: std::collections::BTreeMap<u32, &str> =
        state.keyspaces().map(|k| (k.id, k.name.as_str())).collect();
    let grants: Vec<Value> = (state.grants().values())
        .map(|g| {
            let keyspaces: Vec<Value> = (g.keyspaces.iter())
                .map(|k| {
                    let name = names.get(&k.keyspace_id).copied().unwrap_or("");
                    json!({ "id": k.keyspace_id, "name": name, "access": k.access().name() })
                })
                .collect();
            json!({
                "name": g.name,
                "admin": g.admin,
                "raw_v1": g.raw_v1().name(),
                "txn_v1": g.txn_v1().name(),
                "keyspaces": keyspaces,
            })
        })
        .collect();
    let keyspaces: Vec<Value> =
        names.iter().map(|(id, name)| json!({ "id": id, "name": name })).collect();
    Json(json!({
        "authorization": state.authorization(),
        "grants": grants,
        "keyspaces": keyspaces,
    }))
}

async fn stores(State(node): State<Arc<HttpState>>) -> Json<Value> {
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
                    "labels": store.labels.iter().map(|l| json!({ "key": l.key, "value": l.value })).collect::<Vec<_>>(),
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
async fn liveness(node: &HttpState) -> Vec<scandium_protocol::scandium::StoreLiveness> {
    if node.placement.is_serving() {
        return node.control.store_liveness();
    }
    let Some(address) = node.placement.leader_address() else { return Vec::new() };
    let Ok(mut client) = node.clients.cluster(&address) else { return Vec::new() };
    let request = scandium_protocol::scandium::InfoRequest {};
    match tokio::time::timeout(std::time::Duration::from_secs(2), client.info(request)).await {
        Ok(Ok(info)) => info.into_inner().liveness,
        _ => Vec::new(),
    }
}

fn member_json(identity: &Identity, id: u64, address: &str) -> Value {
    let url = identity.url_of(address);
    json!({
        "name": format!("scandium-{id}"),
        "member_id": id,
        "peer_urls": [url.clone()],
        "client_urls": [url],
    })
}

/// `GET /pd/api/v1/members`, as PD answers it.
async fn members(State(node): State<Arc<HttpState>>) -> Json<Value> {
    let placement = node.placement.read();
    let members: Vec<Value> = placement
        .stores()
        .filter(|s| s.state() != scandium_types::StoreState::Tombstone)
        .map(|s| member_json(&node.identity, s.id, &s.address))
        .collect();
    let leader = node
        .placement
        .live_leader_store()
        .and_then(|id| placement.store(id).map(|s| member_json(&node.identity, s.id, &s.address)));
    Json(json!({ "members": members, "leader": leader, "etcd_leader": leader }))
}

/// `GET /pd/api/v1/leader`: the placement leader, as PD answers it.
async fn leader(State(node): State<Arc<HttpState>>) -> Result<Json<Value>, axum::http::StatusCode> {
    let placement = node.placement.read();
    node.placement
        .live_leader_store()
        .and_then(|id| {
            placement.store(id).map(|s| Json(member_json(&node.identity, s.id, &s.address)))
        })
        .ok_or(axum::http::StatusCode::SERVICE_UNAVAILABLE)
}

async fn members_health(State(node): State<Arc<HttpState>>) -> Json<Value> {
    let placement = node.placement.read();
    let leader = node.placement.live_leader_store();
    let list: Vec<Value> = placement
        .stores()
        .filter(|s| s.state() != scandium_types::StoreState::Tombstone)
        .map(|s| {
            let mut member = member_json(&node.identity, s.id, &s.address);
            member["health"] = json!(Some(s.id) == leader || s.id == node.identity.store_id);
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
    State(node): State<Arc<HttpState>>,
    axum::extract::Query(query): axum::extract::Query<RegionsQuery>,
) -> Json<Value> {
    let limit = query.limit.unwrap_or(50).clamp(1, MAX_PAGE);
    let (regions, total) = {
        let placement = node.placement.read();
        match &query.key {
            Some(key) => {
                let found = placement.region_by_key(key.as_bytes()).cloned();
                let total = usize::from(found.is_some());
                (found.into_iter().skip(query.offset).collect::<Vec<Region>>(), total)
            }
            None => {
                let page = placement.regions().skip(query.offset).take(limit).cloned();
                (page.collect(), placement.region_count())
            }
        }
    };
    let ids: Vec<u64> = regions.iter().map(|r| r.id).collect();
    let loads = node.control.region_loads(Some(&ids)).await;
    let placement = node.placement.read();
    let page: Vec<Value> = regions
        .iter()
        .map(|region| {
            let leader = placement.leader_of(region.id);
            let shape = json!({
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
            });
            let status = node.registry.status(region.id);
            merge(merge(shape, load_json(loads.get(&region.id))), merging_json(status.as_deref()))
        })
        .collect();
    Json(json!({ "total": total, "offset": query.offset, "regions": page }))
}

async fn health(
    State(node): State<Arc<HttpState>>,
) -> ([(axum::http::HeaderName, &'static str); 1], Json<Value>) {
    // The status page of any node reads every node's /health.
    let cors = [(axum::http::header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")];
    (cors, health_json(&node))
}

/// `ok` when every Region with a replica here has a leader this replica hears from (or
/// is it), placement has a leader, and the disk takes writes: what a node can say of the
/// cluster from where it stands. (It said `degraded` unless it led everything itself,
/// which in a cluster is never.)
fn health_json(node: &HttpState) -> Json<Value> {
    let regions = node.registry.all();
    let serving = regions.iter().filter(|s| s.ready_for_reads).count();
    let leaderless = regions.iter().filter(|s| !s.leader_alive).count();
    let placement_led = node.placement.leader_address().is_some();
    let healthy = leaderless == 0 && placement_led && !node.disk.is_full();
    Json(json!({
        "status": if healthy { "ok" } else { "degraded" },
        "store_id": node.identity.store_id,
        "regions": regions.len(),
        "regions_serving": serving,
        "regions_without_leader": leaderless,
        "placement_leader": node.placement.is_serving(),
        "placement_leader_known": placement_led,
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
async fn metrics(State(node): State<Arc<HttpState>>) -> impl axum::response::IntoResponse {
    let text = crate::metrics::render(&node_state(&node));
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// Every local replica's applied index and per-column-family digests, from one engine
/// snapshot. Reads all of each Region's data: a tool's request, not a monitoring one.
async fn digests(State(node): State<Arc<HttpState>>) -> Json<Value> {
    let Ok(_turn) = crate::grpc::cluster::DIGESTS.acquire().await else {
        return Json(json!({ "error": "digests are shut down" }));
    };
    let engine = node.engine.clone();
    let regions: Vec<Region> = node.registry.all().into_iter().map(|s| s.region).collect();
    let store_id = node.identity.store_id;
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

/// The node's state as gauges and counters, read now.
fn node_state(node: &HttpState) -> prometheus::Registry {
    let registry = prometheus::Registry::new();
    let gauge = |name: &str, help: &str, value: i64| {
        let metric = IntGauge::new(name, help).expect("valid metric");
        metric.set(value);
        registry.register(Box::new(metric)).expect("registered once");
    };
    let counter = |name: &str, help: &str, value: u64| {
        let metric = IntCounter::new(name, help).expect("valid metric");
        metric.inc_by(value);
        registry.register(Box::new(metric)).expect("registered once");
    };
    let regions = node.registry.all();
    let leaders = regions.iter().filter(|s| s.ready_for_reads).count();
    let pending: usize = regions.iter().map(|s| s.pending_peers.len()).sum();
    let down: usize = regions.iter().map(|s| s.down_peers.len()).sum();
    gauge("scandium_regions", "Regions with a replica on this node.", regions.len() as i64);
    gauge("scandium_region_leaders", "Regions this node leads and serves.", leaders as i64);
    gauge("scandium_pending_peers", "Lagging peers of Regions led here.", pending as i64);
    gauge("scandium_down_peers", "Unresponsive peers of Regions led here.", down as i64);
    let sum = |led: bool, of: fn(&scandium_raftstore::RegionStats) -> u64| {
        let statuses = regions.iter().filter(|s| !led || s.ready_for_reads);
        statuses.map(|s| of(&s.stats)).sum::<u64>() as i64
    };
    gauge(
        "scandium_region_bytes",
        "Approximate bytes of the Regions with a replica here (keys and values).",
        sum(false, |s| s.approximate_size),
    );
    gauge(
        "scandium_region_keys",
        "Approximate user records of the Regions with a replica here.",
        sum(false, |s| s.approximate_keys),
    );
    gauge(
        "scandium_leader_region_bytes",
        "Approximate bytes of the Regions led here.",
        sum(true, |s| s.approximate_size),
    );
    gauge(
        "scandium_leader_region_keys",
        "Approximate user records of the Regions led here.",
        sum(true, |s| s.approximate_keys),
    );
    let (read_keys, read_bytes) = node.control.reads().totals();
    counter(
        "scandium_read_keys_total",
        "Records read by clients from Regions led here.",
        read_keys,
    );
    counter(
        "scandium_read_bytes_total",
        "Bytes read by clients from Regions led here.",
        read_bytes,
    );
    gauge(
        "scandium_placement_leader",
        "1 if this node leads the placement group.",
        i64::from(node.placement.is_serving()),
    );
    gauge("scandium_store_id", "This node's store id.", node.identity.store_id as i64);
    gauge(
        "scandium_storage_disk_bytes",
        "Bytes the storage engine uses on disk.",
        node.engine.disk_size() as i64,
    );
    let free = node.disk.free();
    if free != u64::MAX {
        gauge(
            "scandium_storage_free_bytes",
            "Free space of the data directory's file system.",
            free as i64,
        );
    }
    gauge(
        "scandium_storage_disk_full",
        "1 while writes are refused for lack of free space.",
        i64::from(node.disk.is_full()),
    );
    let engine = node.engine.stats();
    let cf_bytes = prometheus::IntGaugeVec::new(
        Opts::new("scandium_storage_cf_disk_bytes", "Bytes on disk, per column family."),
        &["cf"],
    )
    .expect("valid metric");
    for (cf, bytes) in &engine.cf_disk_bytes {
        cf_bytes.with_label_values(&[cf.name()]).set(*bytes as i64);
    }
    registry.register(Box::new(cf_bytes)).expect("registered once");
    gauge(
        "scandium_storage_memtable_bytes",
        "Bytes in memtables, active and sealed.",
        engine.memtable_bytes as i64,
    );
    gauge("scandium_storage_cache_bytes", "Bytes in the block cache.", engine.cache_bytes as i64);
    gauge(
        "scandium_storage_cache_capacity_bytes",
        "Capacity of the block cache.",
        engine.cache_capacity_bytes as i64,
    );
    counter(
        "scandium_storage_compactions_total",
        "Compactions finished since the node started.",
        engine.compactions_completed,
    );
    gauge(
        "scandium_storage_active_compactions",
        "Compactions running now.",
        engine.active_compactions as i64,
    );
    gauge(
        "scandium_storage_pending_flushes",
        "Sealed memtables waiting to be flushed.",
        engine.pending_flushes as i64,
    );
    gauge(
        "scandium_storage_journals",
        "Journal files (many: flushes are behind).",
        engine.journals as i64,
    );
    counter(
        "scandium_storage_slow_writes_total",
        "Engine writes that took 50 ms or more (write stalls while flushes catch up, or a slow disk).",
        engine.slow_writes,
    );
    let stats = node.transport.stats();
    let load = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed);
    counter(
        "scandium_raft_messages_sent_total",
        "Raft messages sent to other nodes.",
        load(&stats.sent),
    );
    counter(
        "scandium_raft_messages_dropped_total",
        "Raft messages dropped (queue full, peer unreachable).",
        load(&stats.dropped),
    );
    counter(
        "scandium_raft_snapshots_sent_total",
        "Snapshots sent to other nodes.",
        load(&stats.snapshots_sent),
    );
    counter(
        "scandium_raft_snapshots_failed_total",
        "Snapshot transfers that failed.",
        load(&stats.snapshots_failed),
    );
    counter(
        "scandium_refused_total",
        "Messages and requests refused (other cluster, other store, malformed, saturated).",
        node.refused.load(Ordering::Relaxed),
    );
    counter(
        "scandium_lock_waits_total",
        "Pessimistic lock requests that waited for another transaction.",
        node.txn.lock_waits.waited(),
    );
    counter(
        "scandium_deadlocks_total",
        "Lock waits that found a deadlock.",
        node.txn.lock_waits.deadlocks(),
    );
    counter(
        "scandium_resolved_locks_total",
        "Locks committed or rolled back for their transactions (resolve-lock, GC).",
        node.txn.resolved_locks(),
    );
    gauge(
        "scandium_gc_safe_point",
        "The cluster's GC safe point (a timestamp), as this node's placement replica holds it.",
        node.placement.read().gc_safe_point() as i64,
    );
    registry
}
