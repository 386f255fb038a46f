//! `scandium kv`: raw reads and writes through `tikv-client`, exactly as an application
//! would make them.

use clap::{Args, Subcommand};
use tikv_client::{Config, RawClient};

#[derive(Args)]
pub struct KvArgs {
    /// Address of any node (the PD endpoint).
    #[arg(long, default_value = "127.0.0.1:2379", global = true)]
    pd: String,
    /// Use API V2 with this keyspace (e.g. DEFAULT); without it, API V1.
    #[arg(long, global = true)]
    keyspace: Option<String>,
    #[command(subcommand)]
    command: KvCommand,
}

#[derive(Subcommand)]
enum KvCommand {
    /// Writes a value.
    Put {
        key: String,
        value: String,
        /// Seconds until the value expires (0 = never).
        #[arg(long, default_value_t = 0)]
        ttl: u64,
    },
    /// Prints a value.
    Get { key: String },
    /// Deletes a key.
    Delete { key: String },
    /// Prints keys and values in [START, END).
    Scan {
        #[arg(default_value = "")]
        start: String,
        #[arg(default_value = "")]
        end: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

pub async fn connect(pd: &str, keyspace: Option<&str>) -> Result<RawClient, String> {
    let mut config = Config::default();
    if let Some(keyspace) = keyspace {
        config = config.with_keyspace(keyspace);
    }
    RawClient::new_with_config(vec![pd.to_string()], config)
        .await
        .map_err(|e| format!("cannot connect to {pd}: {e}"))
}

pub async fn run(args: KvArgs) -> Result<(), String> {
    let client = connect(&args.pd, args.keyspace.as_deref()).await?;
    let fail = |e: tikv_client::Error| e.to_string();
    match args.command {
        KvCommand::Put { key, value, ttl } => {
            client.put_with_ttl(key.into_bytes(), value.into_bytes(), ttl).await.map_err(fail)?;
            println!("OK");
        }
        KvCommand::Get { key } => match client.get(key.into_bytes()).await.map_err(fail)? {
            Some(value) => println!("{}", String::from_utf8_lossy(&value)),
            None => return Err("not found".into()),
        },
        KvCommand::Delete { key } => {
            client.delete(key.into_bytes()).await.map_err(fail)?;
            println!("OK");
        }
        KvCommand::Scan { start, end, limit } => {
            let range = if end.is_empty() {
                tikv_client::BoundRange::from(start.into_bytes()..)
            } else {
                tikv_client::BoundRange::from(start.into_bytes()..end.into_bytes())
            };
            for pair in client.scan(range, limit).await.map_err(fail)? {
                let key: Vec<u8> = pair.0.into();
                println!("{}\t{}", String::from_utf8_lossy(&key), String::from_utf8_lossy(&pair.1));
            }
        }
    }
    Ok(())
}
