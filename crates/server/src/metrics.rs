//! Prometheus metrics, served at `GET /metrics` in the text exposition format.
//!
//! Two kinds, gathered into one answer:
//! * **Events** (requests, Raft rounds, timestamps, transaction errors) are counted where
//!   they happen, in the process-wide [`METRICS`] (a node is one process; several
//!   in-process test nodes share it).
//! * **State** (Regions and leaders here, pending peers, disk use, transport counters,
//!   lock waits, the GC safe point) is read from the node's parts when it is scraped
//!   (`http.rs`), so it is always this node's; [`render`] adds it to the events.
//!
//! Labels are bounded by the code, never by what a client sends: request kinds are the
//! handlers' names, error reasons the protocol's error kinds. No key and no Region id is
//! ever a label.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::LazyLock;
use std::time::Instant;

/// The request kinds: the storage service's handlers (BatchCommands' commands are counted
/// by the handler each one runs through). Every kind is exported from the start, at zero.
pub const REQUEST_KINDS: [&str; 30] = [
    "raw_get",
    "raw_batch_get",
    "raw_put",
    "raw_batch_put",
    "raw_delete",
    "raw_batch_delete",
    "raw_scan",
    "raw_batch_scan",
    "raw_delete_range",
    "raw_get_key_ttl",
    "raw_compare_and_swap",
    "raw_checksum",
    "split_region",
    "kv_get",
    "kv_batch_get",
    "kv_scan",
    "kv_prewrite",
    "kv_commit",
    "kv_batch_rollback",
    "kv_cleanup",
    "kv_check_txn_status",
    "kv_check_secondary_locks",
    "kv_txn_heart_beat",
    "kv_pessimistic_rollback",
    "kv_pessimistic_lock",
    "kv_resolve_lock",
    "kv_scan_lock",
    "kv_gc",
    "kv_delete_range",
    "unsafe_destroy_range",
];

const REGION_ERROR_REASONS: [&str; 11] = [
    "not_leader",
    "epoch_not_match",
    "disk_full",
    "server_is_busy",
    "region_not_found",
    "key_not_in_region",
    "stale_command",
    "store_not_match",
    "raft_entry_too_large",
    "max_timestamp_not_synced",
    "other",
];

const KEY_ERROR_REASONS: [&str; 9] = [
    "locked",
    "conflict",
    "deadlock",
    "already_exist",
    "commit_ts_expired",
    "txn_not_found",
    "retryable",
    "abort",
    "other",
];

/// Latency buckets, in seconds: 50 µs to about 13 s.
fn latency_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.00005, 2.0, 19).expect("valid buckets")
}

/// The process-wide event metrics.
pub struct Metrics {
    registry: Registry,
    /// Requests handled, by kind (the RPC's handler) and outcome.
    pub requests: IntCounterVec,
    /// How long requests took, by kind.
    pub request_seconds: HistogramVec,
    /// Region errors answered, by reason (`not_leader`, `epoch_not_match`, `disk_full`, ...).
    pub region_errors: IntCounterVec,
    /// Key errors answered, by reason (`conflict`, `locked`, `deadlock`, ...).
    pub key_errors: IntCounterVec,
    /// Raft rounds (append, fsync, apply of every group with work).
    pub raft_round_seconds: Histogram,
    /// Proposals handed to the Raft thread.
    pub raft_proposals: IntCounter,
    /// Timestamp requests served here (as placement leader or forwarded).
    pub tso_requests: IntCounter,
    /// Timestamps per request (clients batch them).
    pub tso_batch: Histogram,
    /// How long a timestamp request took.
    pub tso_seconds: Histogram,
    /// Versions deleted by garbage collection.
    pub gc_deleted: IntCounter,
    /// Region reports the placement leader took from heartbeats: what filtering them
    /// (`scandium_placement::filter`) keeps down.
    pub region_reports: IntCounter,
    /// Merges whose target this node led as it absorbed the source.
    pub region_merges: IntCounter,
    /// Writing a round's new log entries (every group's, one batch).
    pub raft_append_seconds: Histogram,
    /// The fsync that makes a round's log writes durable.
    pub raft_sync_seconds: Histogram,
    /// Applying a round's committed entries.
    pub raft_apply_seconds: Histogram,
    /// TLS handshakes refused or timed out (plaintext to a TLS port, an unknown CA, no
    /// client certificate, a client that never finished).
    pub tls_handshakes_failed: IntCounter,
    /// Requests refused for their caller's identity (a name not allowed, a client
    /// calling the inter-node service, a node speaking for another's address).
    pub refused_calls: IntCounter,
    /// Looks at changed TLS files, by outcome (`reloaded`, `refused`).
    pub tls_reloads: IntCounterVec,
    /// Seconds until the certificate in use (`node`) and the CA's first-expiring
    /// certificate (`ca`) expire.
    pub tls_expiry_seconds: IntGaugeVec,
    /// Raft groups with a replica here, by state (`awake`, `hibernating`).
    pub raft_groups: IntGaugeVec,
    /// `BatchCommands` commands holding a node-wide place now (at most
    /// `grpc::batch::MAX_IN_FLIGHT_PER_NODE` per node).
    pub batch_commands_running: IntGauge,
}

/// The process's event metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(metric.clone())).expect("registered once");
            metric
        };
        let counter = |name: &str, help: &str| {
            let metric = IntCounter::new(name, help).expect("valid metric");
            registry.register(Box::new(metric.clone())).expect("registered once");
            metric
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let metric = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("valid");
            registry.register(Box::new(metric.clone())).expect("registered once");
            metric
        };
        let request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "scandium_request_duration_seconds",
                "Time to handle a request, by kind.",
            )
            .buckets(latency_buckets()),
            &["kind"],
        )
        .expect("valid metric");
        registry.register(Box::new(request_seconds.clone())).expect("registered once");
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .expect("registered once");
        let metrics = Metrics {
            requests: counter_vec(
                "scandium_requests_total",
                "Requests handled, by kind and outcome.",
                &["kind", "outcome"],
            ),
            request_seconds,
            region_errors: counter_vec(
                "scandium_region_errors_total",
                "Region errors answered, by reason.",
                &["reason"],
            ),
            key_errors: counter_vec(
                "scandium_key_errors_total",
                "Transaction key errors answered, by reason.",
                &["reason"],
            ),
            raft_round_seconds: histogram(
                "scandium_raft_round_duration_seconds",
                "Time of one Raft round: append, fsync and apply of every group with work.",
                latency_buckets(),
            ),
            raft_proposals: counter("scandium_raft_proposals_total", "Proposals to Raft groups."),
            tls_handshakes_failed: counter(
                "scandium_tls_handshakes_failed_total",
                "TLS handshakes refused or timed out.",
            ),
            refused_calls: counter(
                "scandium_refused_calls_total",
                "Requests refused for their caller's identity.",
            ),
            tls_reloads: counter_vec(
                "scandium_tls_reloads_total",
                "Changed TLS certificate files, by outcome (reloaded, refused).",
                &["outcome"],
            ),
            tls_expiry_seconds: {
                let opts = Opts::new(
                    "scandium_tls_certificate_expiry_seconds",
                    "Seconds until a certificate in use expires (node: this node's; ca: the CA file's first to expire).",
                );
                let metric = IntGaugeVec::new(opts, &["certificate"]).expect("valid metric");
                registry.register(Box::new(metric.clone())).expect("registered once");
                metric
            },
            raft_groups: {
                let opts = Opts::new(
                    "scandium_raft_groups",
                    "Raft groups with a replica here, by state (awake, hibernating).",
                );
                let metric = IntGaugeVec::new(opts, &["state"]).expect("valid metric");
                registry.register(Box::new(metric.clone())).expect("registered once");
                metric
            },
            batch_commands_running: {
                let metric = IntGauge::new(
                    "scandium_batch_commands_running",
                    "BatchCommands commands running and holding a node-wide place.",
                )
                .expect("valid metric");
                registry.register(Box::new(metric.clone())).expect("registered once");
                metric
            },
            tso_requests: counter("scandium_tso_requests_total", "Timestamp requests served."),
            tso_batch: histogram(
                "scandium_tso_batch_size",
                "Timestamps asked for per request.",
                prometheus::exponential_buckets(1.0, 2.0, 12).expect("valid buckets"),
            ),
            tso_seconds: histogram(
                "scandium_tso_duration_seconds",
                "Time to serve a timestamp request.",
                latency_buckets(),
            ),
            gc_deleted: counter(
                "scandium_gc_deleted_versions_total",
                "Old versions deleted by garbage collection.",
            ),
            region_reports: counter(
                "scandium_region_reports_total",
                "Region reports taken from heartbeats (on the placement leader).",
            ),
            region_merges: counter(
                "scandium_region_merges_total",
                "Regions absorbed by a neighbour this node led (merges).",
            ),
            raft_append_seconds: histogram(
                "scandium_raft_append_duration_seconds",
                "Time to write a round's new log entries (every group's, one batch).",
                latency_buckets(),
            ),
            raft_sync_seconds: histogram(
                "scandium_raft_fsync_duration_seconds",
                "Time of the fsync that makes a round's log writes durable.",
                latency_buckets(),
            ),
            raft_apply_seconds: histogram(
                "scandium_raft_apply_duration_seconds",
                "Time to apply a round's committed entries (one batch).",
                latency_buckets(),
            ),
            registry,
        };
        for kind in REQUEST_KINDS {
            for outcome in Outcome::ALL {
                metrics.requests.with_label_values(&[kind, outcome.label()]);
            }
            metrics.request_seconds.with_label_values(&[kind]);
        }
        for reason in REGION_ERROR_REASONS {
            metrics.region_errors.with_label_values(&[reason]);
        }
        for reason in KEY_ERROR_REASONS {
            metrics.key_errors.with_label_values(&[reason]);
        }
        metrics
    }

    /// Starts timing a request of `kind`; its kind, outcome and duration are recorded when
    /// the guard is dropped (the outcome is `ok` unless the handler says otherwise).
    pub fn request(&self, kind: &'static str) -> RequestTimer {
        debug_assert!(REQUEST_KINDS.contains(&kind), "request kind {kind} is listed");
        RequestTimer { kind, started: Instant::now(), outcome: std::cell::Cell::new(Outcome::Ok) }
    }

    /// Counts a Region error by the kind of error it is.
    pub fn region_error(&self, error: &scandium_protocol::errorpb::Error) {
        let reason = match error {
            e if e.not_leader.is_some() => "not_leader",
            e if e.epoch_not_match.is_some() => "epoch_not_match",
            e if e.disk_full.is_some() => "disk_full",
            e if e.server_is_busy.is_some() => "server_is_busy",
            e if e.region_not_found.is_some() => "region_not_found",
            e if e.key_not_in_region.is_some() => "key_not_in_region",
            e if e.stale_command.is_some() => "stale_command",
            e if e.store_not_match.is_some() => "store_not_match",
            e if e.raft_entry_too_large.is_some() => "raft_entry_too_large",
            e if e.max_timestamp_not_synced.is_some() => "max_timestamp_not_synced",
            _ => "other",
        };
        self.region_errors.with_label_values(&[reason]).inc();
    }

    /// Counts a key error by the kind of error it is.
    pub fn key_error(&self, error: &scandium_protocol::kvrpcpb::KeyError) {
        let reason = match error {
            e if e.locked.is_some() => "locked",
            e if e.conflict.is_some() => "conflict",
            e if e.deadlock.is_some() => "deadlock",
            e if e.already_exist.is_some() => "already_exist",
            e if e.commit_ts_expired.is_some() => "commit_ts_expired",
            e if e.txn_not_found.is_some() => "txn_not_found",
            e if !e.retryable.is_empty() => "retryable",
            e if !e.abort.is_empty() => "abort",
            _ => "other",
        };
        self.key_errors.with_label_values(&[reason]).inc();
    }
}

/// How a request ended, as its answer tells the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Served.
    Ok,
    /// Answered with a Region error (the client retries elsewhere or later).
    RegionError,
    /// Answered with a key error (a lock, a conflict, ...).
    KeyError,
    /// Refused: an invalid request, or a failure of this node.
    Error,
}

impl Outcome {
    /// Every outcome, as exported from the start.
    pub const ALL: [Outcome; 4] =
        [Outcome::Ok, Outcome::RegionError, Outcome::KeyError, Outcome::Error];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::RegionError => "region_error",
            Outcome::KeyError => "key_error",
            Outcome::Error => "error",
        }
    }
}

/// Times one request; records its kind, outcome and duration when dropped.
pub struct RequestTimer {
    kind: &'static str,
    started: Instant,
    outcome: std::cell::Cell<Outcome>,
}

impl RequestTimer {
    /// Records how the request ended.
    pub fn set(&self, outcome: Outcome) {
        self.outcome.set(outcome);
    }

    /// Marks the request answered with `error`, counting it by reason.
    pub fn region_error(
        &self,
        error: scandium_protocol::errorpb::Error,
    ) -> scandium_protocol::errorpb::Error {
        self.set(Outcome::RegionError);
        METRICS.region_error(&error);
        error
    }

    /// Marks the request refused with `status`.
    pub fn refused(&self, status: tonic::Status) -> tonic::Status {
        self.set(Outcome::Error);
        status
    }
}

impl Drop for RequestTimer {
    fn drop(&mut self) {
        let outcome = self.outcome.get().label();
        METRICS.requests.with_label_values(&[self.kind, outcome]).inc();
        let elapsed = self.started.elapsed().as_secs_f64();
        METRICS.request_seconds.with_label_values(&[self.kind]).observe(elapsed);
    }
}

/// The text exposition of every event metric and of `state` (the node's state, read
/// now), for `GET /metrics`.
pub fn render(state: &Registry) -> String {
    let mut families = METRICS.registry.gather();
    families.extend(state.gather());
    let mut text = Vec::new();
    if TextEncoder::new().encode(&families, &mut text).is_err() {
        return String::new();
    }
    String::from_utf8(text).unwrap_or_default()
}
