//! `scandium ctl`: cluster inspection and operations through the placement API.

use clap::{Args, Subcommand};
use scandium_protocol::pdpb::{self, pd_client::PdClient};
use scandium_types::codec::decode_bytes;
use serde_json::json;
use tonic::transport::Channel;

#[derive(Args)]
pub struct CtlArgs {
    /// Address of any node.
    #[arg(long, default_value = "127.0.0.1:2379", global = true)]
    pd: String,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Subcommand)]
enum CtlCommand {
    /// Lists Regions as JSON.
    Regions,
    /// Lists stores as JSON.
    Stores,
    /// Lists the cluster's members (every node) and the placement leader as JSON.
    Members,
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
    /// Splits the Region containing KEY so that a Region starts at KEY.
    Split {
        /// The split key, as text; with --hex, as hexadecimal bytes.
        key: String,
        #[arg(long)]
        hex: bool,
    },
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

fn show_key(encoded: &[u8]) -> String {
    let key = if encoded.is_empty() {
        Vec::new()
    } else {
        decode_bytes(encoded).unwrap_or_else(|_| encoded.to_vec())
    };
    key.escape_ascii().to_string()
}

fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    if !text.len().is_multiple_of(2) {
        return Err("hex key needs an even number of digits".into());
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).map_err(|e| format!("bad hex key: {e}")))
        .collect()
}

pub async fn run(args: CtlArgs) -> Result<(), String> {
    let endpoint = format!("http://{}", args.pd.trim_start_matches("http://"));
    let channel = Channel::from_shared(endpoint)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", args.pd))?;
    let mut pd = PdClient::new(channel);
    let members = pd
        .get_members(pdpb::GetMembersRequest::default())
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    let cluster_id = members.header.map(|h| h.cluster_id).unwrap_or_default();
    let output = match args.command {
        CtlCommand::Regions => {
            let request =
                pdpb::ScanRegionsRequest { header: header(cluster_id), ..Default::default() };
            let response = pd.scan_regions(request).await.map_err(|e| e.to_string())?.into_inner();
            check(response.header)?;
            let regions: Vec<_> = response
                .regions
                .iter()
                .filter_map(|r| r.region.as_ref().map(|region| (region, r.leader.as_ref())))
                .map(|(region, leader)| {
                    let epoch = region.region_epoch.clone().unwrap_or_default();
                    json!({
                        "id": region.id,
                        "start_key": show_key(&region.start_key),
                        "end_key": show_key(&region.end_key),
                        "epoch": { "conf_ver": epoch.conf_ver, "version": epoch.version },
                        "peers": region.peers.iter().map(|p| json!({ "id": p.id, "store_id": p.store_id })).collect::<Vec<_>>(),
                        "leader": leader.map(|p| p.id),
                    })
                })
                .collect();
            json!({ "count": regions.len(), "regions": regions })
        }
        CtlCommand::Stores => {
            let request = pdpb::GetAllStoresRequest {
                header: header(cluster_id),
                exclude_tombstone_stores: false,
            };
            let response =
                pd.get_all_stores(request).await.map_err(|e| e.to_string())?.into_inner();
            check(response.header)?;
            let stores: Vec<_> = response
                .stores
                .iter()
                .map(|s| {
                    let state = match s.state {
                        0 => "Up",
                        1 => "Offline",
                        _ => "Tombstone",
                    };
                    json!({ "id": s.id, "address": s.address, "state": state, "version": s.version })
                })
                .collect();
            json!({ "count": stores.len(), "stores": stores })
        }
        CtlCommand::Members => {
            let list: Vec<_> = members
                .members
                .iter()
                .map(|m| json!({ "id": m.member_id, "name": m.name, "client_urls": m.client_urls }))
                .collect();
            json!({ "members": list, "leader": members.leader.as_ref().map(|l| l.member_id) })
        }
        CtlCommand::TransferLeader { region, store } => {
            let (region, address) = if region == "placement" {
                let leader = members.leader.as_ref().and_then(|l| l.client_urls.first().cloned());
                let leader = leader.ok_or("no placement leader is known")?;
                (u64::MAX, leader.trim_start_matches("http://").to_string())
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
            json!({ "region": region, "to_store": store, "requested": true })
        }
        CtlCommand::Store { command: StoreCommand::Remove { id } } => {
            use prost::Message as _;
            use scandium_placement::{Command, Kind, StoreStateChange};
            let change = StoreStateChange {
                store_id: id,
                state: scandium_types::StoreState::Offline as i32,
            };
            let leader = members.leader.as_ref().and_then(|l| l.client_urls.first().cloned());
            let leader = leader.ok_or("no placement leader is known")?;
            let mut cluster = cluster_client(leader.trim_start_matches("http://")).await?;
            let request = scandium_protocol::scandium::ProposeMetaRequest {
                cluster_id,
                command: Command::new(Kind::SetStoreState(change)).encode_to_vec(),
            };
            let reply =
                cluster.propose_meta(request).await.map_err(|e| e.to_string())?.into_inner();
            if !reply.error.is_empty() {
                return Err(reply.error);
            }
            json!({ "store": id, "state": "Offline", "note": "its replicas move to other stores, then it becomes a Tombstone" })
        }
        CtlCommand::Split { key, hex } => {
            let key = if hex { parse_hex(&key)? } else { key.into_bytes() };
            let request = pdpb::SplitRegionsRequest {
                header: header(cluster_id),
                split_keys: vec![key],
                retry_limit: 0,
            };
            let response = pd.split_regions(request).await.map_err(|e| e.to_string())?.into_inner();
            check(response.header)?;
            json!({ "regions_id": response.regions_id })
        }
    };
    println!("{}", serde_json::to_string_pretty(&output).map_err(|e| e.to_string())?);
    Ok(())
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
    let channel = Channel::from_shared(format!("http://{address}"))
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {address}: {e}"))?;
    Ok(scandium_protocol::scandium::cluster_client::ClusterClient::new(channel))
}
