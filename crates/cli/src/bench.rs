//! `scandium bench`: concurrent clients driving a workload through `tikv-client` (or,
//! with `--client batch`, through the lean `BatchCommands` client of `batch_client.rs`),
//! against any cluster that speaks the TiKV protocol; with `--client etcd`, the raw
//! workloads go to an etcd member instead (`etcd_client.rs`), the yardstick the targets
//! in docs/performance.md are set against.
//!
//! Raw workloads (put, get, mixed) use `RawClient`; the transactional workload (`txn`) runs
//! read-modify-write transactions of `--txn-keys` keys with `TransactionClient`, optimistic
//! or pessimistic, optionally with async commit or one-phase commit, and counts aborts;
//! `tso` only asks for timestamps, to measure the timestamp oracle through a failover.
//!
//! Reports throughput, latency percentiles (from an HDR histogram), and the server's CPU
//! time per operation and RSS. Server figures come from `--server-pid` (any server on this
//! machine, Scandium or not) or else from a Scandium node's `/health` endpoint.

use crate::batch_client::{BatchClient, TxnMode};
use crate::etcd_client::EtcdClient;
use crate::kv::connect;
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tikv_client::{RawClient, TransactionClient, TransactionOptions};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Workload {
    /// Every operation writes a random key.
    Put,
    /// Every operation reads a random preloaded key.
    Get,
    /// Half reads, half writes.
    Mixed,
    /// Read-modify-write transactions over preloaded keys.
    Txn,
    /// Every operation asks for a timestamp (tikv-client's `current_timestamp`, which the
    /// client batches over one stream to the placement leader): what a failover costs
    /// the timestamp oracle, apart from storage.
    Tso,
    /// A write to each of `--keys` sleeping Regions (at most 1,000), then a second one to
    /// the same Region, awake: what hibernation costs a Region's first write (`wake.rs`).
    Wake,
}

/// Which client drives the workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ClientKind {
    /// `tikv-client` 0.4: one unary gRPC call per command, as Rust applications send.
    Tikv,
    /// Scandium's lean client: commands batched over one `BatchCommands` stream, as
    /// client-go sends them (see `batch_client.rs`). API V1 only.
    Batch,
    /// etcd v3's own API (`KV/Put`, linearizable `KV/Range`) against an etcd member given
    /// as `--pd`: the yardstick, measured by the same harness. Raw workloads only.
    Etcd,
}

#[derive(Args)]
pub struct BenchArgs {
    /// Address of any node (the PD endpoint); several, separated by commas, for clients
    /// that go on when one node is down (the first is asked for the server's figures).
    #[arg(long, default_value = "127.0.0.1:2379")]
    pd: String,
    /// Use API V2 with this keyspace; without it, API V1.
    #[arg(long)]
    keyspace: Option<String>,
    #[arg(long, value_enum, default_value_t = Workload::Put)]
    workload: Workload,
    /// The client that sends the workload's commands (preloading always uses tikv-client).
    #[arg(long, value_enum, default_value_t = ClientKind::Tikv)]
    client: ClientKind,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Seconds of measurement.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Process ids of the server's nodes (comma-separated, or the flag repeated), to read
    /// their CPU time and RSS from /proc; without it, every node's `/health` is read.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Seed of the key choice.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Keys read and written per transaction (txn workload).
    #[arg(long, default_value_t = 1)]
    txn_keys: usize,
    /// Pessimistic transactions (txn workload); optimistic otherwise.
    #[arg(long)]
    pessimistic: bool,
    /// Async commit (txn workload).
    #[arg(long)]
    async_commit: bool,
    /// Try one-phase commit (txn workload).
    #[arg(long)]
    one_pc: bool,
}

impl BenchArgs {
    /// Whether the benchmark should run on a single-threaded runtime. The batch client
    /// needs well under one core (its work is a few channel sends per command), and on one
    /// thread it wakes no other threads: a quarter less client CPU per commit, which on a
    /// shared machine goes to the server. `tikv-client` needs more than a core for some
    /// workloads, so it keeps the multi-threaded runtime.
    pub fn single_threaded(&self) -> bool {
        self.client == ClientKind::Batch
    }
}

/// The client a workload drives.
#[derive(Clone)]
enum Driver {
    Raw(RawClient),
    Txn { client: TransactionClient, options: TransactionOptions, keys: usize, pessimistic: bool },
    Batch { client: Arc<BatchClient>, keys: usize, mode: TxnMode },
    Etcd(EtcdClient),
    Tso(TransactionClient),
}

struct ClientResult {
    histogram: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
    /// Errors per second of the wall clock (seconds since the epoch), to line them up with
    /// the faults of a run (`scripts/failover.sh` prints when it kills and restarts).
    errors_at: std::collections::BTreeMap<u64, u64>,
    /// The longest time from one success to the next (or from the start to the first),
    /// failed attempts included: the longest stall the client saw, which the longest
    /// request understates when a request fails fast and is tried again.
    longest_gap: Duration,
}

async fn connect_driver(args: &BenchArgs) -> Result<Driver, String> {
    if args.client == ClientKind::Etcd {
        if matches!(args.workload, Workload::Txn | Workload::Tso) || args.keyspace.is_some() {
            return Err("--client etcd runs the raw workloads only, without --keyspace".into());
        }
        return Ok(Driver::Etcd(EtcdClient::connect(&args.pd).await?));
    }
    if !matches!(args.workload, Workload::Txn | Workload::Tso) {
        return Ok(Driver::Raw(connect(&args.pd, args.keyspace.as_deref()).await?));
    }
    if args.workload == Workload::Txn && (args.txn_keys == 0 || args.txn_keys as u64 > args.keys) {
        return Err("--txn-keys must be between 1 and --keys".into());
    }
    let mut config = tikv_client::Config::default();
    if let Some(keyspace) = &args.keyspace {
        config = config.with_keyspace(keyspace);
    }
    let config = crate::tls::tikv_config(config);
    let client = TransactionClient::new_with_config(crate::kv::endpoints(&args.pd), config)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", args.pd))?;
    if args.workload == Workload::Tso {
        return Ok(Driver::Tso(client));
    }
    let mut options = if args.pessimistic {
        TransactionOptions::new_pessimistic()
    } else {
        TransactionOptions::new_optimistic()
    };
    if args.async_commit {
        options = options.use_async_commit();
    }
    if args.one_pc {
        options = options.try_one_pc();
    }
    let options = options.drop_check(tikv_client::CheckLevel::Warn);
    Ok(Driver::Txn { client, options, keys: args.txn_keys, pessimistic: args.pessimistic })
}

impl Driver {
    async fn preload(&self, args: &BenchArgs) -> Result<(), String> {
        let value = vec![b'v'; args.value_size];
        if let Driver::Etcd(client) = self {
            return preload_etcd(client, args.keys, &value).await;
        }
        let batch = (16 * 1024 / (args.value_size + 20)).max(1) as u64;
        let mut start = 0;
        while start < args.keys {
            let end = (start + batch).min(args.keys);
            let pairs: Vec<_> = (start..end).map(|i| (key(i), value.clone())).collect();
            let result = match self {
                Driver::Batch { .. } | Driver::Etcd(_) | Driver::Tso(_) => {
                    return Err("preloading goes through tikv-client".into())
                }
                Driver::Raw(client) => client.batch_put(pairs).await,
                Driver::Txn { client, .. } => {
                    async {
                        let mut txn = client.begin_optimistic().await?;
                        for (k, v) in pairs {
                            txn.put(k, v).await?;
                        }
                        txn.commit().await.map(|_| ())
                    }
                    .await
                }
            };
            result.map_err(|e| format!("preload failed: {e}"))?;
            start = end;
        }
        Ok(())
    }

    /// One operation of the workload.
    async fn operate(
        &self,
        workload: Workload,
        rng: &mut impl Rng,
        keys: u64,
        value: &[u8],
    ) -> Result<(), String> {
        let fail = |e: tikv_client::Error| e.to_string();
        match self {
            Driver::Batch { client, keys: count, mode } => {
                if workload == Workload::Txn {
                    let chosen = choose_keys(rng, keys, *count);
                    let chosen: Vec<Vec<u8>> = chosen.into_iter().map(key).collect();
                    return client.read_modify_write(&chosen, value.len(), *mode).await;
                }
                let (k, write) = raw_op(workload, rng, keys);
                if write {
                    client.raw_put(k, value.to_vec()).await
                } else {
                    client.raw_get(k).await.map(|_| ())
                }
            }
            Driver::Etcd(client) => {
                let (k, write) = raw_op(workload, rng, keys);
                if write {
                    client.put(k, value.to_vec()).await
                } else {
                    client.get(k).await.map(|_| ())
                }
            }
            Driver::Raw(client) => {
                let (k, write) = raw_op(workload, rng, keys);
                if write {
                    client.put(k, value.to_vec()).await.map_err(fail)
                } else {
                    client.get(k).await.map(|_| ()).map_err(fail)
                }
            }
            Driver::Tso(client) => client.current_timestamp().await.map(|_| ()).map_err(fail),
            Driver::Txn { client, options, keys: count, pessimistic } => {
                let chosen = choose_keys(rng, keys, *count);
                let mut txn = client.begin_with_options(options.clone()).await.map_err(fail)?;
                let result = async {
                    for &k in &chosen {
                        let current = if *pessimistic {
                            txn.get_for_update(key(k)).await?
                        } else {
                            txn.get(key(k)).await?
                        };
                        let mut next = current.unwrap_or_default();
                        next.truncate(value.len());
                        next.resize(value.len(), 0);
                        next[0] = next[0].wrapping_add(1);
                        txn.put(key(k), next).await?;
                    }
                    txn.commit().await.map(|_| ())
                }
                .await;
                if result.is_err() {
                    let _ = txn.rollback().await;
                }
                result.map_err(fail)
            }
        }
    }
}

/// etcd has no batch put outside transactions, whose size it limits; 64 concurrent
/// writers load 100,000 keys in seconds.
async fn preload_etcd(client: &EtcdClient, keys: u64, value: &[u8]) -> Result<(), String> {
    const WRITERS: u64 = 64;
    let writers = (0..WRITERS).map(|first| {
        let (client, value) = (client.clone(), value.to_vec());
        tokio::spawn(async move {
            for i in (first..keys).step_by(WRITERS as usize) {
                client.put(key(i), value.clone()).await?;
            }
            Ok::<(), String>(())
        })
    });
    for writer in writers.collect::<Vec<_>>() {
        writer.await.map_err(|e| e.to_string())?.map_err(|e| format!("preload failed: {e}"))?;
    }
    Ok(())
}

/// The key of one raw operation and whether it writes.
fn raw_op(workload: Workload, rng: &mut impl Rng, keys: u64) -> (Vec<u8>, bool) {
    let k = key(rng.gen_range(0..keys));
    let write = match workload {
        Workload::Put | Workload::Wake => true,
        Workload::Get | Workload::Txn | Workload::Tso => false,
        Workload::Mixed => rng.gen_bool(0.5),
    };
    (k, write)
}

/// `count` distinct random key numbers below `keys`.
fn choose_keys(rng: &mut impl Rng, keys: u64, count: usize) -> Vec<u64> {
    let mut chosen: Vec<u64> = Vec::with_capacity(count);
    while chosen.len() < count {
        let k = rng.gen_range(0..keys);
        if !chosen.contains(&k) {
            chosen.push(k);
        }
    }
    chosen
}

fn key(i: u64) -> Vec<u8> {
    format!("bench{i:012}").into_bytes()
}

/// A line on stderr every 5 s of a run, so a long one shows it is alive.
async fn show_progress(duration: u64) {
    let mut interval = tokio::time::interval(Duration::from_secs(5));
    interval.tick().await;
    for elapsed in (5..duration).step_by(5) {
        interval.tick().await;
        eprintln!("bench: {elapsed} s of {duration}");
    }
}

pub async fn run(args: BenchArgs) -> Result<(), String> {
    if args.clients == 0 || args.keys == 0 || args.duration == 0 {
        return Err("clients, keys and duration must be positive".into());
    }
    if args.workload == Workload::Wake {
        if args.client != ClientKind::Tikv || args.keyspace.is_some() {
            return Err("--workload wake goes through tikv-client, API V1".into());
        }
        return crate::wake::run(&args.pd, args.keys, args.value_size).await;
    }
    let driver = connect_driver(&args).await?;
    if !matches!(args.workload, Workload::Put | Workload::Tso) {
        let began = Instant::now();
        eprintln!("bench: preloading {} keys", args.keys);
        driver.preload(&args).await?;
        eprintln!("bench: preloaded in {:.1} s", began.elapsed().as_secs_f64());
    }
    let driver = match args.client {
        ClientKind::Tikv | ClientKind::Etcd => driver,
        ClientKind::Batch => {
            if args.keyspace.is_some() {
                return Err("--client batch speaks API V1 only; drop --keyspace".into());
            }
            if args.workload == Workload::Tso {
                return Err("--workload tso goes through tikv-client; drop --client".into());
            }
            let txn = args.workload == Workload::Txn;
            let client = BatchClient::connect(&args.pd, txn).await?;
            let mode = TxnMode {
                pessimistic: args.pessimistic,
                async_commit: args.async_commit,
                one_pc: args.one_pc,
            };
            Driver::Batch { client, keys: args.txn_keys, mode }
        }
    };
    let before = server_stats(&args).await;
    let client_before = scandium_server::process::read(None);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration);
    let tasks: Vec<_> = (0..args.clients)
        .map(|i| {
            tokio::spawn(client_loop(
                driver.clone(),
                args.workload,
                deadline,
                args.keys,
                args.value_size,
                args.seed + i as u64,
            ))
        })
        .collect();
    let progress = tokio::spawn(show_progress(args.duration));
    let mut histogram = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
    let (mut errors, mut first_error) = (0, None);
    let mut errors_at = std::collections::BTreeMap::<u64, u64>::new();
    let mut longest_gap = Duration::ZERO;
    for task in tasks {
        let result = task.await.map_err(|e| e.to_string())?;
        histogram.add(&result.histogram).map_err(|e| e.to_string())?;
        errors += result.errors;
        first_error = first_error.or(result.first_error);
        longest_gap = longest_gap.max(result.longest_gap);
        for (second, count) in result.errors_at {
            *errors_at.entry(second).or_default() += count;
        }
    }
    progress.abort();
    let elapsed = started.elapsed().as_secs_f64();
    let after = server_stats(&args).await;
    let client_cpu = scandium_server::process::read(None)
        .zip(client_before)
        .map(|(after, before)| after.cpu_seconds - before.cpu_seconds);
    report(&args, &histogram, errors, elapsed, before.zip(after), client_cpu);
    println!(
        "longest_gap_us={} (from one success to the next, in any client)",
        longest_gap.as_micros()
    );
    if let Some(error) = first_error {
        eprintln!("first error: {error}");
        let when: Vec<String> = (errors_at.iter())
            .map(|(second, count)| {
                let of_day = second % 86_400;
                let (h, m, s) = (of_day / 3600, of_day / 60 % 60, of_day % 60);
                format!("{h:02}:{m:02}:{s:02} UTC x{count}")
            })
            .collect();
        eprintln!("errors by second: {}", when.join(", "));
    }
    Ok(())
}

async fn client_loop(
    driver: Driver,
    workload: Workload,
    deadline: Instant,
    keys: u64,
    value_size: usize,
    seed: u64,
) -> ClientResult {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let value = vec![b'v'; value_size];
    let mut result = ClientResult {
        histogram: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds"),
        errors: 0,
        first_error: None,
        errors_at: Default::default(),
        longest_gap: Duration::ZERO,
    };
    let mut last_success = Instant::now();
    while Instant::now() < deadline {
        let begin = Instant::now();
        match driver.operate(workload, &mut rng, keys, &value).await {
            Ok(()) => {
                let micros = begin.elapsed().as_micros() as u64;
                let _ = result.histogram.record(micros.max(1));
                result.longest_gap = result.longest_gap.max(last_success.elapsed());
                last_success = Instant::now();
            }
            Err(e) => {
                result.errors += 1;
                result.first_error.get_or_insert(e);
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
                let second = now.map_or(0, |d| d.as_secs());
                *result.errors_at.entry(second).or_default() += 1;
            }
        }
    }
    result
}

/// One server process: what it is called in the report, its CPU seconds and RSS.
type NodeStats = (String, f64, u64);

/// Every server process's CPU time and RSS: from /proc for `--server-pid`s, else from
/// each cluster member's `/health` (members from the PD HTTP API of `--pd`).
async fn server_stats(args: &BenchArgs) -> Option<Vec<NodeStats>> {
    if !args.server_pid.is_empty() {
        return args
            .server_pid
            .iter()
            .map(|&pid| {
                scandium_server::process::read(Some(pid))
                    .map(|s| (format!("pid {pid}"), s.cpu_seconds, s.rss_bytes))
            })
            .collect();
    }
    let pd = crate::tls::bare(args.pd.split(',').next().unwrap_or_default());
    let members = crate::tls::get_json(pd, "/pd/api/v1/members").await;
    let mut addresses: Vec<String> = members
        .as_ref()
        .and_then(|m| m.get("members")?.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|m| m.get("client_urls")?.get(0)?.as_str())
        .map(|url| crate::tls::bare(url).to_string())
        .collect();
    if addresses.is_empty() {
        addresses.push(pd.to_string());
    }
    let mut stats = Vec::new();
    for address in addresses {
        let health = crate::tls::get_json(&address, "/health").await?;
        let process = health.get("process")?;
        let (cpu, rss) =
            (process.get("cpu_seconds")?.as_f64()?, process.get("rss_bytes")?.as_u64()?);
        stats.push((address, cpu, rss));
    }
    Some(stats)
}

fn report(
    args: &BenchArgs,
    h: &Histogram<u64>,
    errors: u64,
    elapsed: f64,
    server: Option<(Vec<NodeStats>, Vec<NodeStats>)>,
    client_cpu: Option<f64>,
) {
    let ops = h.len();
    println!(
        "workload={:?} client={:?} clients={} duration={:.1}s value={}B keys={} api={}",
        args.workload,
        args.client,
        args.clients,
        elapsed,
        args.value_size,
        args.keys,
        if args.keyspace.is_some() { "v2" } else { "v1" }
    );
    if args.workload == Workload::Txn {
        println!(
            "txn keys={} mode={} async_commit={} one_pc={}",
            args.txn_keys,
            if args.pessimistic { "pessimistic" } else { "optimistic" },
            args.async_commit,
            args.one_pc
        );
        let attempts = ops + errors;
        let abort_rate = if attempts == 0 { 0.0 } else { errors as f64 * 100.0 / attempts as f64 };
        println!(
            "commits={ops} aborts={errors} abort_rate={abort_rate:.2}% throughput={:.0} commits/s",
            ops as f64 / elapsed
        );
    } else {
        println!("ops={ops} errors={errors} throughput={:.0} ops/s", ops as f64 / elapsed);
    }
    println!(
        "latency_us p50={} p99={} p999={} max={}",
        h.value_at_quantile(0.50),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max()
    );
    match server {
        Some((before, after)) if ops > 0 && before.len() == after.len() => {
            let mb = |rss: u64| rss as f64 / (1 << 20) as f64;
            let mut total = 0.0;
            for ((name, cpu_before, _), (_, cpu_after, rss)) in before.iter().zip(&after) {
                let cpu = cpu_after - cpu_before;
                total += cpu;
                if after.len() > 1 {
                    println!(
                        "server[{name}] cpu={cpu:.2}s cpu_per_op={:.1}us rss={:.1}MB",
                        cpu * 1e6 / ops as f64,
                        mb(*rss)
                    );
                }
            }
            let rss: u64 = after.iter().map(|(_, _, rss)| rss).sum();
            println!(
                "server cpu={total:.2}s cpu_per_op={:.1}us rss={:.1}MB{}",
                total * 1e6 / ops as f64,
                mb(rss),
                if after.len() > 1 {
                    format!(" (summed over {} nodes)", after.len())
                } else {
                    String::new()
                }
            );
        }
        _ => println!("server cpu=unknown rss=unknown (pass --server-pid)"),
    }
    if let (Some(cpu), true) = (client_cpu, ops > 0) {
        println!("client cpu={cpu:.2}s cpu_per_op={:.1}us", cpu * 1e6 / ops as f64);
    }
}
