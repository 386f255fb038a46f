//! `scandium-sim`: runs the simulator over many seeds, or replays one.
//!
//! ```sh
//! cargo run --release -p scandium-sim -- --seeds 1000          # seeds 0..1000
//! cargo run --release -p scandium-sim -- --minutes 30          # as many seeds as fit
//! cargo run --release -p scandium-sim -- --seed 417 --verbose  # replay one, with its faults
//! ```

use clap::Parser;
use scandium_sim::check::elle::{MicroOp, Outcome};
use scandium_sim::run::{run, RunConfig};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "Deterministic simulation of a Scandium cluster under faults")]
struct Args {
    /// Replay this seed only.
    #[arg(long)]
    seed: Option<u64>,
    /// Run this many seeds, from --first.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// First seed of the range.
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// Keep running seeds for this many minutes instead of a fixed count.
    #[arg(long)]
    minutes: Option<u64>,
    /// Simulated milliseconds of load per seed, before healing.
    #[arg(long, default_value_t = 20_000)]
    duration_ms: u64,
    /// Clients running list-append transactions (0 for registers and timestamps only).
    #[arg(long, default_value_t = RunConfig::default().txn_clients)]
    txn_clients: u64,
    /// Clients of the bank workload (0 for none).
    #[arg(long, default_value_t = RunConfig::default().bank_clients)]
    bank_clients: u64,
    /// Inject no faults (messages are still delayed).
    #[arg(long)]
    no_faults: bool,
    /// Split no Region.
    #[arg(long)]
    no_splits: bool,
    /// Print each run's faults and history.
    #[arg(long)]
    verbose: bool,
    /// Break the read path on purpose (no lease, no ReadIndex): the checks must fail.
    #[arg(long)]
    unsafe_reads: bool,
    /// Break the timestamp oracle on purpose (a new leader ignores the persisted mark).
    #[arg(long)]
    unsafe_tso: bool,
    /// Break the transaction layer on purpose (commands take no latches).
    #[arg(long)]
    unsafe_latches: bool,
    /// Break async commit on purpose (a new leader does not raise max_ts first).
    #[arg(long)]
    unsafe_max_ts: bool,
    /// Break compare-and-swap on purpose (no linearizable read before the comparison).
    #[arg(long)]
    unsafe_cas: bool,
    /// Break the control plane on purpose (a new placement leader forgets when stores were
    /// last heard from).
    #[arg(long)]
    unsafe_liveness: bool,
    /// Break hibernation on purpose (a sleeping leader grants itself an endless lease).
    #[arg(long)]
    unsafe_sleeping_lease: bool,
    /// Break merges on purpose (a Region frozen for a merge goes on serving reads).
    #[arg(long)]
    unsafe_frozen_reads: bool,
}

fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .without_time()
            .init();
    }
    let args = Args::parse();
    let config = RunConfig {
        duration_ms: args.duration_ms,
        unsafe_reads: args.unsafe_reads,
        unsafe_tso: args.unsafe_tso,
        unsafe_latches: args.unsafe_latches,
        unsafe_max_ts: args.unsafe_max_ts,
        unsafe_cas: args.unsafe_cas,
        unsafe_liveness: args.unsafe_liveness,
        unsafe_sleeping_lease: args.unsafe_sleeping_lease,
        unsafe_frozen_reads: args.unsafe_frozen_reads,
        txn_clients: args.txn_clients,
        bank_clients: args.bank_clients,
        faults: !args.no_faults,
        splits: !args.no_splits,
        ..RunConfig::default()
    };
    let started = Instant::now();
    let deadline = args.minutes.map(|m| started + Duration::from_secs(60 * m));
    let seeds: Box<dyn Iterator<Item = u64>> = match (args.seed, deadline) {
        (Some(seed), _) => Box::new(std::iter::once(seed)),
        (None, Some(_)) => Box::new(args.first..),
        (None, None) => Box::new(args.first..args.first + args.seeds),
    };
    let (mut ran, mut simulated_ms, mut operations) = (0u64, 0u64, 0usize);
    let (mut committed, mut transactions) = (0usize, 0usize);
    let (mut regions, mut splits, mut operators, mut merges) = (0u64, 0u64, 0u64, 0u64);
    let mut failed = Vec::new();
    let mut last_progress = Instant::now();
    for seed in seeds {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let report = run(seed, &config);
        ran += 1;
        simulated_ms += report.simulated_ms;
        operations += report.history.len();
        // Not counted: the final read of every list, which appends nothing.
        let appending = || {
            report
                .transactions
                .iter()
                .filter(|t| t.ops.iter().any(|op| matches!(op, MicroOp::Append { .. })))
        };
        transactions += appending().count();
        committed += appending().filter(|t| t.outcome == Outcome::Committed).count();
        if args.verbose {
            for fault in &report.faults {
                println!("seed {seed}: {fault}");
            }
            print!("{}", report.history_text());
        }
        let verdict = if report.anomalies.is_empty() { "ok" } else { "FAILED" };
        println!(
            "seed {seed}: {verdict} regions={} splits={} merges={} operators={} slept={}",
            report.regions, report.splits, report.merges, report.operators, report.slept
        );
        (regions, splits, operators) =
            (regions + report.regions as u64, splits + report.splits, operators + report.operators);
        merges += report.merges;
        if !report.anomalies.is_empty() {
            for anomaly in &report.anomalies {
                println!("seed {seed} FAILED: {anomaly}");
            }
            println!("  replay: cargo run --release -p scandium-sim -- --seed {seed} --verbose");
            failed.push(seed);
        }
        if last_progress.elapsed() >= Duration::from_secs(10) {
            last_progress = Instant::now();
            eprintln!(
                "{ran} seeds, {} failed, {:.0} s",
                failed.len(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let per_seed = |n: u64| n as f64 / ran.max(1) as f64;
    println!(
        "{ran} seeds in {wall:.1} s: {operations} operations, {transactions} transactions ({committed} committed), regions={:.1} splits={:.1} merges={:.1} operators={:.1} per seed, {:.0} simulated s ({:.0} simulated s per wall-clock minute), {} failed{}",
        per_seed(regions),
        per_seed(splits),
        per_seed(merges),
        per_seed(operators),
        simulated_ms as f64 / 1000.0,
        simulated_ms as f64 / 1000.0 / wall * 60.0,
        failed.len(),
        if failed.is_empty() { String::new() } else { format!(": {failed:?}") },
    );
    if !failed.is_empty() {
        std::process::exit(1);
    }
}
