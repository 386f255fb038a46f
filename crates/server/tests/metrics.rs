//! `GET /metrics`: Prometheus' text format with the node's events and state, and every
//! metric the Grafana dashboard in `docs/grafana/scandium.json` queries.

mod common;

use std::collections::BTreeSet;

async fn scrape(node: &scandium_server::Node) -> String {
    let uri: hyper::Uri = format!("http://{}/metrics", node.advertise_addr()).parse().unwrap();
    let response = hyper::Client::new().get(uri).await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let content_type = response.headers()[hyper::header::CONTENT_TYPE].to_str().unwrap();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let body = hyper::body::to_bytes(response.into_body()).await.unwrap();
    String::from_utf8(body.to_vec()).unwrap()
}

/// The value of the sample `line_start` (name and labels) in `text`.
fn sample(text: &str, line_start: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
}

/// Metric names a PromQL expression uses: `scandium_*` and `process_*` words, histogram
/// series named by their family.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut word = String::new();
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c);
            continue;
        }
        if word.starts_with("scandium_") || word.starts_with("process_") {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| word.strip_suffix(suffix))
                .unwrap_or(&word);
            names.push(family.to_string());
        }
        word.clear();
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_and_show_the_node_state() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::start_node(dir.path()).await;
    let raw = common::raw_client(&node, false).await;
    for i in 0..5 {
        raw.put(format!("m{i}").into_bytes(), b"v".to_vec()).await.unwrap();
    }
    let txns = common::txn_client(&node, false).await;
    let mut txn = txns.begin_optimistic().await.unwrap();
    txn.put(b"mt".to_vec(), b"v".to_vec()).await.unwrap();
    txn.commit().await.unwrap();
    // A write conflict: a key error, counted by outcome and by reason.
    let mut first = txns.begin_optimistic().await.unwrap();
    let mut second = txns.begin_optimistic().await.unwrap();
    first.put(b"mc".to_vec(), b"1".to_vec()).await.unwrap();
    second.put(b"mc".to_vec(), b"2".to_vec()).await.unwrap();
    first.commit().await.unwrap();
    assert!(second.commit().await.is_err(), "the later commit conflicts");

    let text = scrape(&node).await;
    let puts = sample(&text, "scandium_requests_total{kind=\"raw_put\",outcome=\"ok\"}");
    assert!(puts.unwrap_or(0.0) >= 5.0, "raw puts counted: {puts:?}\n{text}");
    let conflicted =
        sample(&text, "scandium_requests_total{kind=\"kv_prewrite\",outcome=\"key_error\"}");
    assert!(conflicted.unwrap_or(0.0) >= 1.0, "a conflicting prewrite: {conflicted:?}\n{text}");
    let conflicts = sample(&text, "scandium_key_errors_total{reason=\"conflict\"}");
    assert!(conflicts.unwrap_or(0.0) >= 1.0, "{text}");
    assert!(sample(&text, "scandium_raft_fsync_duration_seconds_count").unwrap() >= 1.0);
    assert!(text.contains("scandium_request_duration_seconds_bucket{kind=\"raw_put\",le="));
    assert!(sample(&text, "scandium_regions").unwrap() >= 1.0, "{text}");
    assert_eq!(sample(&text, "scandium_placement_leader"), Some(1.0));
    assert!(sample(&text, "scandium_tso_requests_total").unwrap() >= 2.0, "{text}");
    assert!(sample(&text, "scandium_raft_proposals_total").unwrap() >= 6.0, "{text}");
    assert!(sample(&text, "process_resident_memory_bytes").unwrap() > 0.0, "{text}");
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(
            !line.contains("m0") && !line.contains("region_id"),
            "no keys or Regions in labels: {line}"
        );
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_is_exported() {
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../../../docs/grafana/scandium.json")).unwrap();
    let queried: BTreeSet<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| panel["targets"].as_array().unwrap().clone())
        .flat_map(|target| metric_names(target["expr"].as_str().unwrap()))
        .collect();
    assert!(queried.len() > 20, "the dashboard queries metrics: {queried:?}");

    let dir = tempfile::tempdir().unwrap();
    let node = common::start_node(dir.path()).await;
    let text = scrape(&node).await;
    let exported: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let missing: Vec<&String> = queried.iter().filter(|m| !exported.contains(m.as_str())).collect();
    assert!(missing.is_empty(), "queried by the dashboard but not exported: {missing:?}");
    node.stop().await;
}
