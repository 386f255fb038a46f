//! `scandium`: one binary for the server and the tools around it.
//!
//! * `scandium server` runs a node (no flags needed: data in `./scandium-data`, listening on
//!   `127.0.0.1:2379`); `--join` adds it to an existing cluster.
//! * `scandium playground` runs a local cluster of several nodes.
//! * `scandium kv` reads and writes keys through the TiKV client, like an application would.
//! * `scandium ctl` inspects and operates the cluster through the placement API.
//! * `scandium bench` measures throughput and latency against any cluster.
//! * `scandium cert` creates a development CA and certificates for TLS.

mod batch_client;
mod bench;
mod cert;
mod ctl;
mod etcd_client;
mod kv;
mod playground;
mod server;
mod tls;
mod wake;

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
    /// Level of Scandium's own log messages: error, warn, info, debug or trace. Other
    /// libraries' messages show from warn up (error up for kv, ctl and bench). RUST_LOG,
    /// when set, decides everything.
    #[arg(long, global = true, default_value = "info")]
    log_level: tracing_subscriber::filter::LevelFilter,
    /// Log lines as text or as JSON objects (one per line, on stderr).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(flatten)]
    tls: tls::TlsArgs,
}

/// How log lines are written.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// For people: time, level, where, message, fields.
    Text,
    /// For machines: one JSON object per line.
    Json,
}

/// Scandium's own crates, whose messages follow `--log-level`.
const OWN_TARGETS: [&str; 8] = [
    "scandium",
    "scandium_cli",
    "scandium_server",
    "scandium_raftstore",
    "scandium_placement",
    "scandium_txn",
    "scandium_storage",
    "scandium_types",
];

/// Quiet by default: Scandium's messages at `level`, everyone else's (fjall's flushes,
/// tikv-client's connections, raft-rs's elections) only from `others` (warn for a node,
/// error for the client commands, which report failures in their own words), unless
/// RUST_LOG says otherwise.
fn init_logging(level: tracing_subscriber::filter::LevelFilter, format: LogFormat, others: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        let own: Vec<String> = OWN_TARGETS.iter().map(|t| format!("{t}={level}")).collect();
        EnvFilter::new(format!("{others},{}", own.join(",")))
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
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
    /// Creates a development CA, and node and client certificates signed by it.
    Cert(cert::CertArgs),
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

/// mimalloc's `purge_delay` option, by its place in mimalloc v3's `mi_option_e` (the
/// `-sys` crate names no constant for it; a test checks that the bundled mimalloc is v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Memory freed in whole pages goes back to the system at once instead of after
/// mimalloc's default purge delay of a second. The delay only starts a purge when the
/// freeing thread next allocates, and a node at rest hardly allocates: 10,000 sleeping
/// Regions per node held 8–15 MB more resident memory for good (docs/design/hibernation.md).
/// Puts under load ran as fast either way (docs/performance.md). `MIMALLOC_PURGE_DELAY`
/// set in the environment still wins (a default only replaces what was not set).
#[allow(unsafe_code)]
fn allocator_options() {
    // SAFETY: sets one integer option of the allocator's, before any other thread runs
    // (mimalloc's options are not thread-safe to set); no memory is touched.
    unsafe { libmimalloc_sys::mi_option_set_default(MI_OPTION_PURGE_DELAY, 0) }
}

fn main() -> ExitCode {
    allocator_options();
    let cli = Cli::parse();
    let others = match cli.command {
        Command::Server(_) | Command::Playground(_) => "warn",
        _ => "error",
    };
    init_logging(cli.log_level, cli.log_format, others);
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
        if !matches!(cli.command, Command::Server(_) | Command::Playground(_)) {
            tls::init(&cli.tls)?;
        }
        match cli.command {
            Command::Server(args) => server::run(args, &cli.tls, cli.log_format).await,
            Command::Playground(args) => playground::run(args).await,
            Command::Kv(args) => kv::run(args).await,
            Command::Ctl(args) => ctl::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Cert(args) => cert::run(args),
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

#[cfg(test)]
mod tests {
    /// Clap's own consistency checks of every subcommand's arguments (they otherwise
    /// panic only when that subcommand is run).
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }

    /// `MI_OPTION_PURGE_DELAY` is numbered after mimalloc v3's header: another major
    /// version needs its number checked again (v3 keeps retired options' places).
    #[test]
    #[allow(unsafe_code)]
    fn the_allocator_option_is_numbered_for_the_bundled_mimalloc() {
        // SAFETY: reads a constant of the library.
        let version = unsafe { libmimalloc_sys::mi_version() };
        assert_eq!(version / 10_000, 3, "mimalloc {version}: check MI_OPTION_PURGE_DELAY");
        super::allocator_options();
        // SAFETY: reads the option just set; the test's other threads do not set options.
        let delay = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        // Run with `MIMALLOC_PURGE_DELAY=7` set, this checks the number names the option.
        let set = std::env::var("MIMALLOC_PURGE_DELAY").ok().and_then(|v| v.parse().ok());
        assert_eq!(delay, set.unwrap_or(0));
    }
}
