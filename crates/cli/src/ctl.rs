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
    /// Splits the Region containing KEY so that a Region starts at KEY.
    Split {
        /// The split key, as text; with --hex, as hexadecimal bytes.
        key: String,
        #[arg(long)]
        hex: bool,
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
                .map(|s| json!({ "id": s.id, "address": s.address, "state": s.state, "version": s.version }))
                .collect();
            json!({ "count": stores.len(), "stores": stores })
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
