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
    /// Where this node is, NAME=VALUE[,NAME=VALUE...] (`zone=z1,host=h1`): a Region's
    /// replicas go to distinct values of the cluster's `location_labels`.
    #[arg(long)]
    labels: Option<String>,
    /// TOML file with settings; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
}

pub async fn run(
    args: ServerArgs,
    tls: &crate::tls::TlsArgs,
    log_format: crate::LogFormat,
) -> Result<(), String> {
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
    if let Some(labels) = &args.labels {
        config.labels = scandium_server::config::parse_labels(labels)?;
    }
    // The TLS flags, each over the TOML's setting.
    let flags = tls.security();
    let security = &mut config.security;
    security.ca_path = flags.ca_path.or(security.ca_path.take());
    security.cert_path = flags.cert_path.or(security.cert_path.take());
    security.key_path = flags.key_path.or(security.key_path.take());
    let data_dir = config.data_dir.clone();
    let started = std::time::Instant::now();
    let node = Node::start(config).await.map_err(|e| e.to_string())?;
    let (addr, store_id, cluster_id) = (node.advertise_addr(), node.store_id(), node.cluster_id());
    let elapsed_ms = started.elapsed().as_millis() as u64;
    let timings = node.start_timings();
    let (storage_ms, joined_ms) = (timings.storage_ms, timings.registered_ms);
    let shutdown = shutdown_signal();
    // The node's one line at start; `playground` and the end-to-end tests read the text
    // form's address.
    match log_format {
        crate::LogFormat::Text => eprintln!(
            "scandium serving on {addr} (PD endpoint and store address): store {} of cluster {}, data in {}, started in {elapsed_ms} ms (storage {storage_ms} ms, cluster {joined_ms} ms)",
            store_id,
            cluster_id,
            data_dir.display()
        ),
        crate::LogFormat::Json => tracing::info!(
            addr,
            store_id,
            cluster_id,
            data_dir = %data_dir.display(),
            elapsed_ms,
            storage_ms,
            joined_ms,
            "scandium serving"
        ),
    }
    shutdown.await;
    tracing::info!("shutting down: leadership moves to other nodes first");
    // Leadership moves to other nodes first, so clients see no election.
    node.stop_gracefully().await;
    Ok(())
}

/// Ctrl-C or SIGTERM. Listening starts when this is called, not when the future is first
/// polled: a signal sent right after the node says it serves (as scripts, playground and
/// the end-to-end tests do) must stop it gracefully, not kill it by the default action.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let streams = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()));
        async move {
            match streams {
                (Ok(mut interrupt), Ok(mut terminate)) => {
                    tokio::select! {
                        _ = interrupt.recv() => {}
                        _ = terminate.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
