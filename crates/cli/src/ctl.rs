//! `scandium ctl`: cluster inspection and operations through the placement API.

use clap::{Args, Subcommand};
use scandium_protocol::pdpb::{self, pd_client::PdClient};
use scandium_types::codec::decode_bytes;
use serde_json::json;
use std::collections::BTreeMap;
use tonic::transport::Channel;

#[derive(Args)]
pub struct CtlArgs {
    /// Address of any node.
    #[arg(long, default_value = "127.0.0.1:2379", global = true)]
    pd: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Subcommand)]
enum CtlCommand {
    /// Lists Regions: range, leader, replicas.
    Regions {
        /// Only the Region holding this key (as text; with --hex, hexadecimal bytes).
        /// (Not `--key`: that is the TLS key file every command takes.)
        #[arg(long)]
        containing: Option<String>,
        #[arg(long, requires = "containing")]
        hex: bool,
    },
    /// Lists stores: address, state, Regions and leaders on each.
    Stores,
    /// Lists the cluster's members (every node) and which leads placement.
    Members,
    /// Lists the operators the placement leader runs (replicas added, moved and removed,
    /// leaders moved), each with the step it is at.
    Operators,
    /// Shows the scheduler's settings for the whole cluster, or changes one.
    Scheduler {
        #[command(subcommand)]
        command: Option<SchedulerCommand>,
    },
    /// Moves leadership of a Region (or of the placement group) to its replica on STORE.
    TransferLeader {
        /// The Region's id, or `placement` for the placement group.
        region: String,
        /// The store to lead it.
        store: u64,
    },
    /// Operates on stores.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Compares every Region's replicas: those that have applied the same log index must
    /// hold the same data (a digest per column family, as TiKV's consistency check
    /// compares). Exits non-zero if any differ.
    CheckConsistency,
    /// Lists the grants: what each client identity may do once authorisation is on.
    Grants,
    /// Changes what the client identity NAME (a certificate's common name) may do; what
    /// is not named stays as it was. Admin only.
    Grant {
        /// The identity.
        name: String,
        /// Cluster operations and every key (`--admin=false` takes it away).
        #[arg(long, num_args = 0..=1, default_missing_value = "true")]
        admin: Option<bool>,
        /// The API V1 raw key space: `read`, `write` (read-write) or `none`.
        #[arg(long, value_parser = parse_access)]
        raw_v1: Option<Access>,
        /// The API V1 transactional key space: `read`, `write` or `none`.
        #[arg(long, value_parser = parse_access)]
        txn_v1: Option<Access>,
        /// A keyspace and what the identity may do there, as `NAME=read`, `NAME=write`
        /// or `NAME=none`; repeat for more.
        #[arg(long = "keyspace", value_name = "NAME=ACCESS")]
        keyspaces: Vec<String>,
    },
    /// Takes every grant away from the client identity NAME. Admin only.
    Revoke {
        /// The identity.
        name: String,
    },
    /// Turns authorisation by grants on or off for the whole cluster. Off (the default),
    /// every client the certificate settings let in may read and write everything. Admin
    /// only; it needs TLS, since only certificates name clients.
    Authorization {
        #[arg(value_enum)]
        switch: Switch,
    },
    /// Splits Regions so that a Region starts at each KEY (one request for all of them).
    Split {
        /// The split keys, as text; with --hex, as hexadecimal bytes.
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
        #[arg(long)]
        hex: bool,
    },
}

#[derive(Subcommand)]
enum SchedulerCommand {
    /// Stops balancing moves of a kind (repair of missing replicas goes on).
    Pause {
        #[arg(value_enum)]
        what: Balancing,
    },
    /// Lets them go on again.
    Resume {
        #[arg(value_enum)]
        what: Balancing,
    },
    /// Balancing moves under way at once at most, of replicas and of leaders each (0:
    /// each node's `balance_limit`).
    Limit {
        /// The number of moves.
        moves: u32,
    },
    /// Replica moves for balance each store may take part in a minute; with --store,
    /// that store's own limit (0: none at all).
    StoreLimit {
        /// Moves a minute, or `default`: each node's `store_limit_per_minute` for the
        /// cluster, the cluster's limit for a store.
        #[arg(value_parser = parse_limit)]
        moves_per_minute: Limit,
        /// The store with a limit of its own.
        #[arg(long)]
        store: Option<u64>,
    },
    /// Which small Regions merge with a neighbour: no larger than --max-size bytes, with
    /// at most --max-keys records, their shape unchanged for --after-ms (a split, say).
    /// 0 (or leaving one out): each placement leader's own `merge_max_size`,
    /// `merge_max_keys`, `split_merge_interval_ms`.
    Merge {
        /// Bytes, at most.
        #[arg(long)]
        max_size: Option<u64>,
        /// User records, at most.
        #[arg(long)]
        max_keys: Option<u64>,
        /// Milliseconds a Region's shape must stand first.
        #[arg(long)]
        after_ms: Option<u64>,
    },
    /// The isolation levels, outermost first (`zone host`): a Region's replicas go to
    /// distinct values of the first, then of the next. None: labels are not considered.
    LocationLabels {
        /// Label names.
        levels: Vec<String>,
        /// Forget the cluster's levels: each placement leader uses its own
        /// `location_labels` setting.
        #[arg(long, conflicts_with = "levels")]
        default: bool,
    },
}

/// On or off.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Switch {
    /// Requests are checked against the grants.
    On,
    /// Every admitted client may do everything.
    Off,
}

use scandium_placement::Access;

fn parse_access(text: &str) -> Result<Access, String> {
    match text {
        "none" => Ok(Access::None),
        "read" => Ok(Access::Read),
        "write" | "read-write" => Ok(Access::ReadWrite),
        other => Err(format!("{other:?}: expected read, write or none")),
    }
}

/// The grants as `/api/v1/grants` shows them, with the keyspaces' ids by name.
struct Grants {
    json: serde_json::Value,
}

impl Grants {
    async fn fetch(address: &str) -> Result<Grants, String> {
        let json = crate::tls::get_json(address, "/api/v1/grants")
            .await
            .ok_or_else(|| format!("{address}: no answer to /api/v1/grants (admins only)"))?;
        Ok(Grants { json })
    }

    fn keyspace_id(&self, name: &str) -> Result<u32, String> {
        let keyspaces = self.json["keyspaces"].as_array().into_iter().flatten();
        let found = keyspaces.into_iter().find(|k| k["name"].as_str() == Some(name));
        found
            .and_then(|k| k["id"].as_u64())
            .map(|id| id as u32)
            .ok_or_else(|| format!("keyspace {name:?} does not exist"))
    }

    /// The grant of `name` as it stands (nothing, if it has none).
    fn grant(&self, name: &str) -> Result<scandium_placement::Grant, String> {
        let mut grant = scandium_placement::Grant { name: name.to_string(), ..Default::default() };
        let grants = self.json["grants"].as_array().into_iter().flatten();
        let Some(shown) = grants.into_iter().find(|g| g["name"].as_str() == Some(name)) else {
            return Ok(grant);
        };
        let access = |value: &serde_json::Value| parse_access(value.as_str().unwrap_or("none"));
        grant.admin = shown["admin"].as_bool().unwrap_or(false);
        grant.raw_v1 = access(&shown["raw_v1"])? as i32;
        grant.txn_v1 = access(&shown["txn_v1"])? as i32;
        for keyspace in shown["keyspaces"].as_array().into_iter().flatten() {
            grant.keyspaces.push(scandium_placement::KeyspaceAccess {
                keyspace_id: keyspace["id"].as_u64().unwrap_or(0) as u32,
                access: access(&keyspace["access"])? as i32,
            });
        }
        Ok(grant)
    }

    /// `grant` in the shape `/api/v1/grants` shows grants, keyspaces named.
    fn json_of(&self, grant: &scandium_placement::Grant) -> serde_json::Value {
        let keyspaces = self.json["keyspaces"].as_array().into_iter().flatten();
        let name_of = |id: u32| {
            let mut found = keyspaces.clone().filter(|k| k["id"].as_u64() == Some(u64::from(id)));
            found.next().and_then(|k| k["name"].as_str()).unwrap_or("").to_string()
        };
        let keyspaces: Vec<serde_json::Value> = (grant.keyspaces.iter())
            .map(|k| {
                let (id, access) = (k.keyspace_id, k.access().name());
                json!({ "id": id, "name": name_of(id), "access": access })
            })
            .collect();
        json!({
            "name": grant.name,
            "admin": grant.admin,
            "raw_v1": grant.raw_v1().name(),
            "txn_v1": grant.txn_v1().name(),
            "keyspaces": keyspaces,
        })
    }
}

/// One line per grant, as `ctl grants` prints it.
fn grant_line(grant: &serde_json::Value) -> String {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("?").to_string();
    let mut parts = Vec::new();
    if grant["admin"].as_bool() == Some(true) {
        parts.push("admin".to_string());
    }
    for (field, label) in [("raw_v1", "V1 raw"), ("txn_v1", "V1 transactional")] {
        if grant[field].as_str() != Some("none") {
            parts.push(format!("{label}: {}", text(&grant[field])));
        }
    }
    for keyspace in grant["keyspaces"].as_array().into_iter().flatten() {
        parts.push(format!("keyspace {}: {}", text(&keyspace["name"]), text(&keyspace["access"])));
    }
    format!("{}: {}", text(&grant["name"]), parts.join(", "))
}

/// A limit, or none of its own (`default`).
#[derive(Clone, Copy, Debug)]
struct Limit(Option<u32>);

fn parse_limit(text: &str) -> Result<Limit, String> {
    match text {
        "default" => Ok(Limit(None)),
        number => number.parse().map(|n| Limit(Some(n))).map_err(|e| format!("{number:?}: {e}")),
    }
}

/// Kinds of balancing moves.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Balancing {
    /// Replicas moved between stores.
    Replicas,
    /// Leaders moved between replicas, to even out the stores' leader counts.
    Leaders,
    /// Leaders of hot Regions moved, to even out the stores' traffic.
    Hot,
    /// Small neighbouring Regions merged.
    Merges,
    /// All of these.
    All,
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Retires a store: its replicas are re-created on other stores, then it becomes a
    /// tombstone and never serves again.
    Remove {
        /// The store's id.
        id: u64,
    },
}

fn header(cluster_id: u64) -> Option<pdpb::RequestHeader> {
    Some(pdpb::RequestHeader { cluster_id, sender_id: 0 })
}

fn check(header: Option<pdpb::ResponseHeader>) -> Result<(), String> {
    match header.and_then(|h| h.error) {
        Some(error) => Err(error.message),
        None => Ok(()),
    }
}

/// A Region boundary as the user's key: placement keeps them memcomparable-encoded.
fn decode_key(encoded: &[u8]) -> Vec<u8> {
    if encoded.is_empty() {
        Vec::new()
    } else {
        decode_bytes(encoded).unwrap_or_else(|_| encoded.to_vec())
    }
}

/// A key as text, non-printable bytes escaped; `empty` for the unbounded end.
fn show(key: &[u8], empty: &str) -> String {
    if key.is_empty() {
        empty.to_string()
    } else {
        key.escape_ascii().to_string()
    }
}

/// Bytes in the largest unit that keeps them at least 1.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{bytes} B"),
        _ => format!("{value:.1} {}", UNITS[unit]),
    }
}

/// What the node's HTTP API adds to a Region's shape.
struct RegionDetails {
    /// Approximate bytes and keys, as the placement leader last heard them.
    size: Option<(u64, u64)>,
    /// The merge target, while the asked node's replica is frozen for a merge.
    merging_into: Option<u64>,
}

/// Each Region's details as the node's HTTP API shows them (empty if it cannot be asked).
async fn region_details(pd: &str) -> BTreeMap<u64, RegionDetails> {
    let mut details = BTreeMap::new();
    let mut key = String::new();
    // A page at a time (the API's largest), until no page follows.
    loop {
        let path = format!("/pd/api/v1/regions?limit=10000&key={key}");
        let Some(reply) = crate::tls::get_json(pd, &path).await else { return details };
        let regions = reply["regions"].as_array().into_iter().flatten();
        details.extend(regions.filter_map(|r| {
            let size = r["approximate_size_bytes"].as_u64();
            let size = size.zip(r["approximate_keys"].as_u64());
            let merging_into = r["merging_into"].as_u64();
            Some((r["id"].as_u64()?, RegionDetails { size, merging_into }))
        }));
        match reply["next_key"].as_str() {
            Some(next) if !next.is_empty() => key = next.to_string(),
            _ => return details,
        }
    }
}

pub async fn run(args: CtlArgs) -> Result<(), String> {
    let mut pd = PdClient::new(crate::tls::channel(&args.pd).await?);
    let members = pd
        .get_members(pdpb::GetMembersRequest::default())
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    let cluster_id = members.header.as_ref().map(|h| h.cluster_id).unwrap_or_default();
    let output = match args.command {
        CtlCommand::Regions { containing: key, hex } => {
            let wanted = match key {
                Some(key) if hex => Some(scandium_types::codec::decode_hex(&key)?),
                Some(key) => Some(key.into_bytes()),
                None => None,
            };
            let regions: Vec<_> = scan_regions(&mut pd, cluster_id)
                .await?
                .into_iter()
                .filter(|r| wanted.as_deref().is_none_or(|key| r.contains(key)))
                .collect();
            if let (Some(key), true) = (&wanted, regions.is_empty()) {
                return Err(format!("no Region holds key {}", key.escape_ascii()));
            }
            let details = region_details(&args.pd).await;
            let size = |id: u64| details.get(&id).and_then(|d| d.size);
            let merging_into = |id: u64| details.get(&id).and_then(|d| d.merging_into);
            let rows = regions.iter().map(|r| {
                let peers: Vec<String> =
                    r.peers.iter().map(|(id, store)| format!("{id}@{store}")).collect();
                vec![
                    r.id.to_string(),
                    show(&r.start_key, "-inf"),
                    show(&r.end_key, "+inf"),
                    r.leader_store.map_or("none".into(), |s| format!("store {s}")),
                    peers.join(" "),
                    format!("{}/{}", r.conf_ver, r.version),
                    size(r.id).map_or("?".into(), |(bytes, _)| human_bytes(bytes)),
                    size(r.id).map_or("?".into(), |(_, keys)| keys.to_string()),
                ]
            });
            let header =
                ["ID", "START", "END", "LEADER", "PEERS (id@store)", "EPOCH", "SIZE", "KEYS"];
            let mut text = table(&header, rows) + &format!("{} Region(s)\n", regions.len());
            for r in &regions {
                if let Some(target) = merging_into(r.id) {
                    text += &format!(
                        "Region {} is frozen for a merge into Region {target} (on the node asked)\n",
                        r.id
                    );
                }
            }
            let regions: Vec<_> = regions
                .iter()
                .map(|r| {
                    json!({
                        "id": r.id,
                        "start_key": show(&r.start_key, ""),
                        "end_key": show(&r.end_key, ""),
                        "epoch": { "conf_ver": r.conf_ver, "version": r.version },
                        "peers": r.peers.iter().map(|(id, store)| json!({ "id": id, "store_id": store })).collect::<Vec<_>>(),
                        "leader": r.leader_peer,
                        "approximate_size_bytes": size(r.id).map(|s| s.0),
                        "approximate_keys": size(r.id).map(|s| s.1),
                        "merging_into": merging_into(r.id),
                    })
                })
                .collect();
            Output { json: json!({ "count": regions.len(), "regions": regions }), text }
        }
        CtlCommand::Stores => {
            let stores = all_stores(&mut pd, cluster_id, false).await?;
            let regions = scan_regions(&mut pd, cluster_id).await?;
            let count = |id: u64, leaders: bool| {
                regions
                    .iter()
                    .filter(|r| match leaders {
                        true => r.leader_store == Some(id),
                        false => r.peers.iter().any(|(_, store)| *store == id),
                    })
                    .count()
            };
            let state = |s: &scandium_protocol::metapb::Store| match s.state {
                0 => "Up",
                1 => "Offline",
                _ => "Tombstone",
            };
            let labels = |s: &scandium_protocol::metapb::Store| {
                let pairs: Vec<String> =
                    s.labels.iter().map(|l| format!("{}={}", l.key, l.value)).collect();
                pairs.join(",")
            };
            let rows = stores.iter().map(|s| {
                vec![
                    s.id.to_string(),
                    s.address.clone(),
                    state(s).to_string(),
                    count(s.id, false).to_string(),
                    count(s.id, true).to_string(),
                    s.version.clone(),
                    labels(s),
                ]
            });
            let header = ["ID", "ADDRESS", "STATE", "REGIONS", "LEADERS", "VERSION", "LABELS"];
            let text = table(&header, rows);
            let stores: Vec<_> = stores
                .iter()
                .map(|s| {
                    let labels: serde_json::Map<String, serde_json::Value> =
                        s.labels.iter().map(|l| (l.key.clone(), json!(l.value))).collect();
                    json!({ "id": s.id, "address": s.address, "state": state(s), "version": s.version, "regions": count(s.id, false), "leaders": count(s.id, true), "labels": labels })
                })
                .collect();
            Output { json: json!({ "count": stores.len(), "stores": stores }), text }
        }
        CtlCommand::Operators => {
            let operators = placement_operators(&args.pd, cluster_id).await?;
            let rows = operators.iter().map(|o| {
                vec![
                    o.region_id.to_string(),
                    o.kind.clone(),
                    format!("{}/{} {}", o.step_number, o.steps, o.step),
                    format!("{:.1} s", o.step_age_ms as f64 / 1000.0),
                ]
            });
            let text = table(&["REGION", "OPERATOR", "STEP", "FOR"], rows)
                + &format!("{} operator(s)\n", operators.len());
            let list: Vec<_> = operators
                .iter()
                .map(|o| json!({ "region_id": o.region_id, "kind": o.kind, "step": o.step, "step_number": o.step_number, "steps": o.steps, "step_age_ms": o.step_age_ms }))
                .collect();
            Output { json: json!({ "count": list.len(), "operators": list }), text }
        }
        CtlCommand::Scheduler { command } => {
            use scandium_placement::{LocationLabels, SchedulerSettings, StoreLimit};
            let shown = crate::tls::get_json(&args.pd, "/api/v1/scheduler")
                .await
                .ok_or_else(|| format!("{}: no answer to /api/v1/scheduler", args.pd))?;
            let flag = |name: &str| shown[name].as_bool().unwrap_or(false);
            let number = |value: &serde_json::Value| value.as_u64().unwrap_or(0);
            let store_limits = (shown["store_limits"].as_array().into_iter().flatten())
                .map(|l| StoreLimit {
                    store_id: number(&l["store_id"]),
                    moves_per_minute: number(&l["moves_per_minute"]) as u32,
                })
                .collect();
            let location_labels = shown["location_labels"].as_array().map(|levels| {
                let levels = levels.iter().filter_map(|l| l.as_str().map(String::from));
                LocationLabels { levels: levels.collect() }
            });
            let mut settings = SchedulerSettings {
                replicas_paused: flag("replicas_paused"),
                leaders_paused: flag("leaders_paused"),
                balance_limit: number(&shown["balance_limit"]) as u32,
                hot_paused: flag("hot_paused"),
                store_limit: number(&shown["store_limit"]) as u32,
                store_limits,
                location_labels,
                merge_max_size: number(&shown["merge_max_size"]),
                merge_max_keys: number(&shown["merge_max_keys"]),
                split_merge_interval_ms: number(&shown["split_merge_interval_ms"]),
                merges_paused: flag("merges_paused"),
            };
            if let Some(command) = command {
                let set = |settings: &mut SchedulerSettings, what: Balancing, paused: bool| {
                    if matches!(what, Balancing::Replicas | Balancing::All) {
                        settings.replicas_paused = paused;
                    }
                    if matches!(what, Balancing::Leaders | Balancing::All) {
                        settings.leaders_paused = paused;
                    }
                    if matches!(what, Balancing::Hot | Balancing::All) {
                        settings.hot_paused = paused;
                    }
                    if matches!(what, Balancing::Merges | Balancing::All) {
                        settings.merges_paused = paused;
                    }
                };
                match command {
                    SchedulerCommand::Pause { what } => set(&mut settings, what, true),
                    SchedulerCommand::Resume { what } => set(&mut settings, what, false),
                    SchedulerCommand::Limit { moves } => settings.balance_limit = moves,
                    SchedulerCommand::StoreLimit { moves_per_minute, store: None } => {
                        settings.store_limit = moves_per_minute.0.unwrap_or(0)
                    }
                    SchedulerCommand::StoreLimit { moves_per_minute, store: Some(store_id) } => {
                        settings.store_limits.retain(|l| l.store_id != store_id);
                        if let Limit(Some(moves_per_minute)) = moves_per_minute {
                            settings.store_limits.push(StoreLimit { store_id, moves_per_minute });
                        }
                    }
                    SchedulerCommand::Merge { max_size, max_keys, after_ms } => {
                        settings.merge_max_size = max_size.unwrap_or(0);
                        settings.merge_max_keys = max_keys.unwrap_or(0);
                        settings.split_merge_interval_ms = after_ms.unwrap_or(0);
                    }
                    SchedulerCommand::LocationLabels { levels, default } => {
                        settings.location_labels = (!default).then_some(LocationLabels { levels });
                    }
                }
                let kind = scandium_placement::Kind::SetScheduler(settings.clone());
                propose_placement(&members, cluster_id, kind).await?;
            }
            let state = |paused: bool| if paused { "paused" } else { "running" };
            let limit = match settings.balance_limit {
                0 => "each node's balance_limit".to_string(),
                n => n.to_string(),
            };
            let store_limit = match settings.store_limit {
                0 => "each node's store_limit_per_minute".to_string(),
                n => n.to_string(),
            };
            let own_limits = match &settings.store_limits[..] {
                [] => "none".to_string(),
                limits => {
                    let each =
                        limits.iter().map(|l| format!("{}: {}", l.store_id, l.moves_per_minute));
                    each.collect::<Vec<_>>().join(", ")
                }
            };
            let levels = match &settings.location_labels {
                None => "each node's location_labels".to_string(),
                Some(l) if l.levels.is_empty() => "none (labels are not considered)".to_string(),
                Some(l) => l.levels.join(", "),
            };
            let own = |value: u64, setting: &str| match value {
                0 => format!("each node's {setting}"),
                n => n.to_string(),
            };
            let merge_size = own(settings.merge_max_size, "merge_max_size");
            let merge_keys = own(settings.merge_max_keys, "merge_max_keys");
            let merge_after = own(settings.split_merge_interval_ms, "split_merge_interval_ms");
            let text = format!(
                "replica balancing: {}\nleader balancing: {}\nhot Region balancing: {}\nmerges: {}\nmoves at once at most: {limit}\nreplica moves per store a minute at most: {store_limit}\nstores with a limit of their own: {own_limits}\nisolation levels: {levels}\nmerge Regions of bytes at most: {merge_size}\nmerge Regions of records at most: {merge_keys}\nmerge Regions whose shape stood for ms: {merge_after}\n",
                state(settings.replicas_paused),
                state(settings.leaders_paused),
                state(settings.hot_paused),
                state(settings.merges_paused),
            );
            let store_limits: Vec<_> = (settings.store_limits.iter())
                .map(|l| json!({ "store_id": l.store_id, "moves_per_minute": l.moves_per_minute }))
                .collect();
            let json = json!({
                "replicas_paused": settings.replicas_paused,
                "leaders_paused": settings.leaders_paused,
                "hot_paused": settings.hot_paused,
                "balance_limit": settings.balance_limit,
                "store_limit": settings.store_limit,
                "store_limits": store_limits,
                "location_labels": settings.location_labels.as_ref().map(|l| &l.levels),
                "merges_paused": settings.merges_paused,
                "merge_max_size": settings.merge_max_size,
                "merge_max_keys": settings.merge_max_keys,
                "split_merge_interval_ms": settings.split_merge_interval_ms,
            });
            Output { json, text }
        }
        CtlCommand::Members => {
            let leader = members.leader.as_ref().map(|l| l.member_id);
            let rows = members.members.iter().map(|m| {
                vec![
                    m.member_id.to_string(),
                    m.name.clone(),
                    m.client_urls.join(","),
                    if Some(m.member_id) == leader { "leader".into() } else { String::new() },
                ]
            });
            let text = table(&["ID", "NAME", "URL", "PLACEMENT"], rows);
            let list: Vec<_> = members
                .members
                .iter()
                .map(|m| json!({ "id": m.member_id, "name": m.name, "client_urls": m.client_urls }))
                .collect();
            Output { json: json!({ "members": list, "leader": leader }), text }
        }
        CtlCommand::TransferLeader { region, store } => {
            let (region, address) = if region == "placement" {
                let leader = members.leader.as_ref().and_then(|l| l.client_urls.first().cloned());
                let leader = leader.ok_or("no placement leader is known")?;
                (u64::MAX, crate::tls::bare(&leader).to_string())
            } else {
                let region: u64 = region
                    .parse()
                    .map_err(|_| format!("{region:?} is neither a Region id nor `placement`"))?;
                let request = pdpb::GetRegionByIdRequest {
                    header: header(cluster_id),
                    region_id: region,
                    ..Default::default()
                };
                let response =
                    pd.get_region_by_id(request).await.map_err(|e| e.to_string())?.into_inner();
                check(response.header)?;
                let leader =
                    response.leader.ok_or("the Region has no leader now; retry in a moment")?;
                (region, store_address(&mut pd, cluster_id, leader.store_id).await?)
            };
            let mut cluster = cluster_client(&address).await?;
            let request = scandium_protocol::scandium::TransferLeaderRequest {
                cluster_id,
                region_id: region,
                to_store: store,
            };
            let reply =
                cluster.transfer_leader(request).await.map_err(|e| e.to_string())?.into_inner();
            if !reply.error.is_empty() {
                return Err(reply.error);
            }
            let what =
                if region == u64::MAX { "placement".into() } else { format!("Region {region}") };
            Output::new(
                json!({ "region": region, "to_store": store, "requested": true }),
                format!("asked {what} to move its leadership to store {store}"),
            )
        }
        CtlCommand::Store { command: StoreCommand::Remove { id } } => {
            use scandium_placement::{Kind, StoreStateChange};
            let change = StoreStateChange {
                store_id: id,
                state: scandium_types::StoreState::Offline as i32,
            };
            propose_placement(&members, cluster_id, Kind::SetStoreState(change)).await?;
            Output::new(
                json!({ "store": id, "state": "Offline", "note": "its replicas move to other stores, then it becomes a Tombstone" }),
                format!("store {id} is Offline: its replicas move to other stores, then it becomes a Tombstone (see `scandium ctl stores`)"),
            )
        }
        CtlCommand::CheckConsistency => {
            let addresses: Vec<(u64, String)> = all_stores(&mut pd, cluster_id, true)
                .await?
                .into_iter()
                .map(|s| (s.id, s.address))
                .collect();
            let verdicts = check_consistency(&addresses).await;
            let output =
                Output { json: consistency_json(&verdicts), text: consistency_table(&verdicts) };
            let bad =
                verdicts.values().filter(|v| matches!(v, Verdict::Inconsistent { .. })).count();
            if bad > 0 {
                output.print(args.json)?;
                return Err(format!("{bad} Region(s) have replicas that differ"));
            }
            output
        }
        CtlCommand::Grants => {
            let grants = Grants::fetch(&args.pd).await?;
            let on = grants.json["authorization"].as_bool().unwrap_or(false);
            let mut text = format!(
                "authorization: {}\n",
                if on { "on" } else { "off (every admitted client may do everything)" }
            );
            for grant in grants.json["grants"].as_array().into_iter().flatten() {
                text.push_str(&grant_line(grant));
                text.push('\n');
            }
            Output { json: grants.json, text }
        }
        CtlCommand::Grant { name, admin, raw_v1, txn_v1, keyspaces } => {
            let grants = Grants::fetch(&args.pd).await?;
            let mut grant = grants.grant(&name)?;
            if let Some(admin) = admin {
                grant.admin = admin;
            }
            if let Some(access) = raw_v1 {
                grant.raw_v1 = access as i32;
            }
            if let Some(access) = txn_v1 {
                grant.txn_v1 = access as i32;
            }
            for keyspace in keyspaces {
                let (keyspace, access) = keyspace.split_once('=').ok_or_else(|| {
                    format!("--keyspace {keyspace:?}: expected NAME=read, NAME=write or NAME=none")
                })?;
                let id = grants.keyspace_id(keyspace)?;
                grant.keyspaces.retain(|k| k.keyspace_id != id);
                let access = parse_access(access)?;
                if access != Access::None {
                    let entry = scandium_placement::KeyspaceAccess {
                        keyspace_id: id,
                        access: access as i32,
                    };
                    grant.keyspaces.push(entry);
                }
            }
            // What was proposed is what the placement state now holds (a grant it refuses
            // is an error above), whatever the node at --pd has applied yet.
            let shown = grants.json_of(&grant);
            let line = match grant.is_empty() {
                true => format!("{name}: no grant"),
                false => grant_line(&shown),
            };
            propose_placement(&members, cluster_id, scandium_placement::Kind::SetGrant(grant))
                .await?;
            Output::new(shown, line)
        }
        CtlCommand::Revoke { name } => {
            let grant = scandium_placement::Grant { name: name.clone(), ..Default::default() };
            propose_placement(&members, cluster_id, scandium_placement::Kind::SetGrant(grant))
                .await?;
            Output::new(json!({ "name": name, "revoked": true }), format!("{name}: no grant"))
        }
        CtlCommand::Authorization { switch } => {
            let on = switch == Switch::On;
            propose_placement(&members, cluster_id, scandium_placement::Kind::SetAuthorization(on))
                .await?;
            let text = match on {
                true => "authorization: on (clients may do only what their grants say; see `scandium ctl grants`)",
                false => "authorization: off (every admitted client may do everything)",
            };
            Output::new(json!({ "authorization": on }), text.to_string())
        }
        CtlCommand::Split { keys, hex } => {
            let keys = keys
                .into_iter()
                .map(|key| {
                    if hex {
                        scandium_types::codec::decode_hex(&key)
                    } else {
                        Ok(key.into_bytes())
                    }
                })
                .collect::<Result<Vec<_>, _>>()?;
            let request = pdpb::SplitRegionsRequest {
                header: header(cluster_id),
                split_keys: keys,
                retry_limit: 0,
            };
            let response = pd.split_regions(request).await.map_err(|e| e.to_string())?.into_inner();
            check(response.header)?;
            let ids: Vec<String> = response.regions_id.iter().map(u64::to_string).collect();
            Output::new(
                json!({ "regions_id": response.regions_id }),
                format!("split: new Region(s) {}", ids.join(", ")),
            )
        }
    };
    output.print(args.json)
}

/// What a command prints: a table or sentence for people, JSON with `--json`.
struct Output {
    json: serde_json::Value,
    text: String,
}

impl Output {
    fn new(json: serde_json::Value, line: String) -> Output {
        Output { json, text: line + "\n" }
    }

    fn print(&self, json: bool) -> Result<(), String> {
        if json {
            println!("{}", serde_json::to_string_pretty(&self.json).map_err(|e| e.to_string())?);
        } else {
            print!("{}", self.text);
        }
        Ok(())
    }
}

/// Left-aligned columns, two spaces apart, under a header row.
fn table(headers: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let rows: Vec<Vec<String>> =
        std::iter::once(headers.iter().map(|h| h.to_string()).collect()).chain(rows).collect();
    let mut widths = vec![0; headers.len()];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    for row in &rows {
        let cells: Vec<String> =
            row.iter().zip(&widths).map(|(cell, width)| format!("{cell:width$}")).collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    text
}

/// A Region as `ctl` shows it, its keys decoded.
struct RegionRow {
    id: u64,
    start_key: Vec<u8>,
    end_key: Vec<u8>,
    conf_ver: u64,
    version: u64,
    /// (peer id, store id)
    peers: Vec<(u64, u64)>,
    leader_peer: Option<u64>,
    leader_store: Option<u64>,
}

impl RegionRow {
    fn contains(&self, key: &[u8]) -> bool {
        key >= self.start_key.as_slice()
            && (self.end_key.is_empty() || key < self.end_key.as_slice())
    }
}

async fn scan_regions(
    pd: &mut PdClient<Channel>,
    cluster_id: u64,
) -> Result<Vec<RegionRow>, String> {
    let request = pdpb::ScanRegionsRequest { header: header(cluster_id), ..Default::default() };
    let response = pd.scan_regions(request).await.map_err(|e| e.to_string())?.into_inner();
    check(response.header)?;
    Ok(response
        .regions
        .iter()
        .filter_map(|r| {
            let region = r.region.as_ref()?;
            let epoch = region.region_epoch.clone().unwrap_or_default();
            Some(RegionRow {
                id: region.id,
                start_key: decode_key(&region.start_key),
                end_key: decode_key(&region.end_key),
                conf_ver: epoch.conf_ver,
                version: epoch.version,
                peers: region.peers.iter().map(|p| (p.id, p.store_id)).collect(),
                leader_peer: r.leader.as_ref().map(|p| p.id),
                leader_store: r.leader.as_ref().map(|p| p.store_id),
            })
        })
        .collect())
}

fn consistency_table(verdicts: &BTreeMap<u64, Verdict>) -> String {
    let rows = verdicts.iter().map(|(id, verdict)| {
        let (status, applied, replicas) = match verdict {
            Verdict::Consistent { applied, replicas } => {
                ("consistent", applied.to_string(), *replicas)
            }
            Verdict::Inconsistent { applied, replicas } => {
                ("INCONSISTENT", applied.to_string(), replicas.len())
            }
            Verdict::Unsettled { replicas } => {
                ("unsettled (writes kept its replicas apart)", "-".into(), replicas.len())
            }
        };
        vec![id.to_string(), status.to_string(), applied, replicas.to_string()]
    });
    table(&["REGION", "STATUS", "APPLIED", "REPLICAS"], rows)
}

async fn all_stores(
    pd: &mut PdClient<Channel>,
    cluster_id: u64,
    exclude_tombstone_stores: bool,
) -> Result<Vec<scandium_protocol::metapb::Store>, String> {
    let request =
        pdpb::GetAllStoresRequest { header: header(cluster_id), exclude_tombstone_stores };
    let response = pd.get_all_stores(request).await.map_err(|e| e.to_string())?.into_inner();
    check(response.header)?;
    Ok(response.stores)
}

async fn store_address(
    pd: &mut PdClient<Channel>,
    cluster_id: u64,
    store: u64,
) -> Result<String, String> {
    let request = pdpb::GetStoreRequest { header: header(cluster_id), store_id: store };
    let response = pd.get_store(request).await.map_err(|e| e.to_string())?.into_inner();
    check(response.header)?;
    response.store.map(|s| s.address).ok_or_else(|| format!("store {store} not found"))
}

async fn cluster_client(
    address: &str,
) -> Result<scandium_protocol::scandium::cluster_client::ClusterClient<Channel>, String> {
    let channel = crate::tls::channel(address).await?;
    Ok(scandium_protocol::scandium::cluster_client::ClusterClient::new(channel))
}

/// Proposes a placement command through the placement leader `members` names.
async fn propose_placement(
    members: &pdpb::GetMembersResponse,
    cluster_id: u64,
    kind: scandium_placement::Kind,
) -> Result<(), String> {
    use prost::Message as _;
    let leader = members.leader.as_ref().and_then(|l| l.client_urls.first().cloned());
    let leader = leader.ok_or("no placement leader is known")?;
    let mut cluster = cluster_client(&leader).await?;
    let request = scandium_protocol::scandium::ProposeMetaRequest {
        cluster_id,
        command: scandium_placement::Command::new(kind).encode_to_vec(),
    };
    let reply = cluster.propose_meta(request).await.map_err(|e| e.message().to_string())?;
    let reply = reply.into_inner();
    if !reply.error.is_empty() {
        return Err(reply.error);
    }
    let record = scandium_placement::ResponseRecord::decode(reply.response.as_slice())
        .map_err(|e| format!("an answer that cannot be read: {e}"))?;
    match scandium_placement::Response::from(record) {
        scandium_placement::Response::Invalid(reason) => Err(reason),
        _ => Ok(()),
    }
}

/// The operators the placement leader runs: asked of the node at `address`, which
/// names the leader if it is not it.
async fn placement_operators(
    address: &str,
    cluster_id: u64,
) -> Result<Vec<scandium_protocol::scandium::OperatorInfo>, String> {
    let request = scandium_protocol::scandium::OperatorsRequest { cluster_id };
    let mut address = crate::tls::bare(address).to_string();
    for _ in 0..2 {
        let mut client = cluster_client(&address).await?;
        let reply = client.operators(request.clone()).await.map_err(|e| e.message().to_string())?;
        let reply = reply.into_inner();
        if reply.error.is_empty() {
            return Ok(reply.operators);
        }
        if reply.leader_address.is_empty() {
            return Err(format!("{address}: {}", reply.error));
        }
        address = reply.leader_address;
    }
    Err("the placement leader moved while it was asked; try again".into())
}

/// One replica's answer: its store, applied index and digests.
#[derive(Clone, Debug, PartialEq)]
struct ReplicaDigest {
    store: u64,
    applied: u64,
    digests: Vec<u64>,
}

/// What the comparison of one Region's replicas found.
#[derive(Clone, Debug, PartialEq)]
enum Verdict {
    /// Every replica that answered is at `applied` with the same data.
    Consistent { applied: u64, replicas: usize },
    /// Replicas at the same index hold different data.
    Inconsistent { applied: u64, replicas: Vec<ReplicaDigest> },
    /// The replicas never stood at one index while asked (writes kept coming).
    Unsettled { replicas: Vec<ReplicaDigest> },
}

/// Compares the replicas of each Region. Replicas at different indexes prove nothing
/// either way; any two at the same index must agree.
fn compare(answers: &[ReplicaDigest], region_of: &[u64]) -> BTreeMap<u64, Verdict> {
    let mut by_region: BTreeMap<u64, Vec<ReplicaDigest>> = BTreeMap::new();
    for (answer, region) in answers.iter().zip(region_of) {
        by_region.entry(*region).or_default().push(answer.clone());
    }
    by_region
        .into_iter()
        .map(|(region, replicas)| {
            let mut by_index: BTreeMap<u64, Vec<&ReplicaDigest>> = BTreeMap::new();
            for replica in &replicas {
                by_index.entry(replica.applied).or_default().push(replica);
            }
            let differing =
                by_index.iter().find(|(_, at)| at.iter().any(|r| r.digests != at[0].digests));
            let verdict = match differing {
                Some((&applied, at)) => Verdict::Inconsistent {
                    applied,
                    replicas: at.iter().map(|r| (*r).clone()).collect(),
                },
                None if by_index.len() == 1 => {
                    Verdict::Consistent { applied: replicas[0].applied, replicas: replicas.len() }
                }
                None => Verdict::Unsettled { replicas },
            };
            (region, verdict)
        })
        .collect()
}

/// Asks every store for its replicas' digests, again while some Region's replicas stand
/// at different indexes (up to about five seconds).
async fn check_consistency(stores: &[(u64, String)]) -> BTreeMap<u64, Verdict> {
    let mut verdicts = BTreeMap::new();
    for attempt in 0..20 {
        let (mut answers, mut regions) = (Vec::new(), Vec::new());
        for (store, address) in stores {
            let Some(reply) = crate::tls::get_json(address, "/debug/digests").await else {
                continue;
            };
            for replica in reply["replicas"].as_array().into_iter().flatten() {
                let digests: Option<Vec<u64>> = replica["digests"]
                    .as_array()
                    .map(|d| d.iter().filter_map(|x| x.as_u64()).collect());
                let (Some(region), Some(applied), Some(digests)) =
                    (replica["region_id"].as_u64(), replica["applied_index"].as_u64(), digests)
                else {
                    continue;
                };
                answers.push(ReplicaDigest { store: *store, applied, digests });
                regions.push(region);
            }
        }
        verdicts = compare(&answers, &regions);
        let settled = verdicts.values().all(|v| !matches!(v, Verdict::Unsettled { .. }));
        if settled || attempt == 19 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    verdicts
}

fn consistency_json(verdicts: &BTreeMap<u64, Verdict>) -> serde_json::Value {
    let replica_json = |r: &ReplicaDigest| json!({ "store": r.store, "applied_index": r.applied, "digests": r.digests });
    let regions: Vec<_> = verdicts
        .iter()
        .map(|(id, verdict)| match verdict {
            Verdict::Consistent { applied, replicas } => json!({
                "id": id, "status": "consistent", "applied_index": applied, "replicas": replicas,
            }),
            Verdict::Inconsistent { applied, replicas } => json!({
                "id": id, "status": "inconsistent", "applied_index": applied,
                "replicas": replicas.iter().map(replica_json).collect::<Vec<_>>(),
            }),
            Verdict::Unsettled { replicas } => json!({
                "id": id, "status": "unsettled (writes kept the replicas at different indexes)",
                "replicas": replicas.iter().map(replica_json).collect::<Vec<_>>(),
            }),
        })
        .collect();
    json!({ "regions": regions })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(store: u64, applied: u64, digest: u64) -> ReplicaDigest {
        ReplicaDigest { store, applied, digests: vec![digest, 7] }
    }

    #[test]
    fn replicas_at_one_index_with_the_same_data_are_consistent() {
        let verdicts = compare(&[replica(1, 9, 5), replica(2, 9, 5), replica(3, 9, 5)], &[4, 4, 4]);
        assert_eq!(verdicts[&4], Verdict::Consistent { applied: 9, replicas: 3 });
    }

    #[test]
    fn replicas_at_one_index_with_different_data_are_reported() {
        let answers = [replica(1, 9, 5), replica(2, 9, 6), replica(3, 8, 1)];
        let verdicts = compare(&answers, &[4, 4, 4]);
        let Verdict::Inconsistent { applied, replicas } = &verdicts[&4] else {
            panic!("{verdicts:?}");
        };
        assert_eq!((*applied, replicas.len()), (9, 2));
    }

    #[test]
    fn replicas_at_different_indexes_prove_nothing() {
        let verdicts = compare(&[replica(1, 9, 5), replica(2, 8, 6)], &[4, 4]);
        assert!(matches!(verdicts[&4], Verdict::Unsettled { .. }));
        let two = compare(&[replica(1, 3, 1), replica(2, 5, 2)], &[1, 2]);
        assert_eq!(two.len(), 2, "Regions are compared separately");
    }
}
