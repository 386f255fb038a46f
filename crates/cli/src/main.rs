//! `scandium`: one binary for the server and the tools around it.
//!
//! * `scandium server` runs a node (no flags needed: data in `./scandium-data`, listening on
//!   `127.0.0.1:2379`); `--join` adds it to an existing cluster.
//! * `scandium playground` runs a local cluster of several nodes.
//! * `scandium kv` reads and writes keys through the TiKV client, like an application would.
//! * `scandium ctl` inspects and operates the cluster through the placement API.
//! * `scandium bench` measures throughput and latency against any cluster.

mod batch_client;
mod bench;
mod ctl;
mod etcd_client;
mod kv;
mod playground;
mod server;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "scandium",
    version,
    about = "A lightweight distributed transactional key-value database"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs a node.
    Server(server::ServerArgs),
    /// Runs a local cluster of several nodes (child processes) until Ctrl-C.
    Playground(playground::PlaygroundArgs),
    /// Reads and writes raw keys.
    Kv(kv::KvArgs),
    /// Inspects and operates the cluster.
    Ctl(ctl::CtlArgs),
    /// Measures throughput and latency.
    Bench(bench::BenchArgs),
}

/// mimalloc rather than glibc's allocator. The node allocates and frees many small buffers
/// per command on several threads (request decoding, write batches, memtable entries);
/// glibc spent ~15% of the server's CPU on them (`_int_malloc`, `malloc_consolidate`), and
/// with mimalloc the 4-key transactional benchmark needs a quarter less CPU per commit
/// (docs/performance.md). Built with `no_thp`: on kernels whose transparent huge pages are
/// in `madvise` mode, mimalloc would otherwise back its arenas with 2 MiB pages, and an idle
/// node would hold ~9 MB more resident memory for no measurable throughput (A/B in
/// docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,raft=warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let cli = Cli::parse();
    let mut builder = match &cli.command {
        Command::Bench(args) if args.single_threaded() => {
            tokio::runtime::Builder::new_current_thread()
        }
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Server(args) => server::run(args).await,
            Command::Playground(args) => playground::run(args).await,
            Command::Kv(args) => kv::run(args).await,
            Command::Ctl(args) => ctl::run(args).await,
            Command::Bench(args) => bench::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
