//! `scandium server`.

use clap::Args;
use scandium_server::{Config, Node};
use std::path::PathBuf;

#[derive(Args)]
pub struct ServerArgs {
    /// Directory holding the node's data [default: ./scandium-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address to listen on and advertise, HOST:PORT [default: 127.0.0.1:2379].
    #[arg(long)]
    addr: Option<String>,
    /// Nodes of an existing cluster to join through, HOST:PORT[,HOST:PORT...]; needed only
    /// the first time (a node that belongs to a cluster resumes it).
    #[arg(long, value_delimiter = ',')]
    join: Vec<String>,
    /// TOML file with settings; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
}

pub async fn run(args: ServerArgs) -> Result<(), String> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if let Some(addr) = args.addr {
        config.addr = addr;
    }
    if !args.join.is_empty() {
        config.join = args.join;
    }
    let node = Node::start(config).await.map_err(|e| e.to_string())?;
    eprintln!("scandium serving on {} (PD endpoint and store address)", node.advertise_addr());
    wait_for_signal().await;
    eprintln!("shutting down");
    // Leadership moves to other nodes first, so clients see no election.
    node.stop_gracefully().await;
    Ok(())
}

/// Waits for Ctrl-C or SIGTERM.
pub async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
