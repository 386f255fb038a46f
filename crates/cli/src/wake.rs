//! `scandium bench --workload wake`: what hibernation costs a Region's first write.
//!
//! Splits off `--keys` Regions (at most 1,000) at `wake00001`, `wake00002`, ..., writes one
//! key into each, then waits until every Region sleeps on every node (the nodes'
//! `scandium_raft_groups{state="awake"}` down to the placement group's replicas). Then,
//! one Region at a time, it times a write to the sleeping Region and, at once, a second
//! write to the same Region, now awake. Three rounds. Issue 24's target: the first
//! write within one Raft round trip plus one tick of the second.

use hdrhistogram::Histogram;
use scandium_protocol::pdpb::{self, pd_client::PdClient};
use std::time::{Duration, Instant};

/// Rounds of sleep and writes.
const ROUNDS: usize = 3;

/// The most Regions the workload splits off.
const MAX_REGIONS: u64 = 1_000;

/// How long every Region may take to fall asleep.
const SLEEP_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) async fn run(pd: &str, regions: u64, value_size: usize) -> Result<(), String> {
    let regions = regions.clamp(1, MAX_REGIONS) as usize;
    let first = crate::tls::bare(pd.split(',').next().unwrap_or_default()).to_string();
    let mut placement = PdClient::new(crate::tls::channel(&first).await?);
    let members = placement
        .get_members(pdpb::GetMembersRequest::default())
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    let cluster_id = members.header.as_ref().map_or(0, |h| h.cluster_id);
    let nodes: Vec<String> = (members.members.iter())
        .filter_map(|m| m.client_urls.first())
        .map(|url| crate::tls::bare(url).to_string())
        .collect();
    let split_keys = (1..regions).map(|i| format!("wake{i:05}").into_bytes()).collect();
    let header = Some(pdpb::RequestHeader { cluster_id, ..Default::default() });
    let split = pdpb::SplitRegionsRequest { header, split_keys, retry_limit: 0 };
    placement.split_regions(split).await.map_err(|e| format!("split failed: {e}"))?;
    let client = crate::kv::connect(pd, None).await?;
    let keys: Vec<Vec<u8>> = (0..regions).map(|i| format!("wake{i:05}x").into_bytes()).collect();
    let value = vec![b'w'; value_size];
    for key in &keys {
        client.put(key.clone(), value.clone()).await.map_err(crate::kv::tidy)?;
    }
    let new = || Histogram::<u64>::new(3).map_err(|e| e.to_string());
    let (mut asleep, mut awake) = (new()?, new()?);
    for round in 1..=ROUNDS {
        let began = Instant::now();
        wait_until_asleep(&nodes).await?;
        eprintln!("bench: round {round}: every Region asleep after {:.1} s", secs(began));
        for key in &keys {
            for histogram in [&mut asleep, &mut awake] {
                let started = Instant::now();
                client.put(key.clone(), value.clone()).await.map_err(crate::kv::tidy)?;
                histogram
                    .record(started.elapsed().as_micros() as u64)
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    println!("workload=wake regions={regions} rounds={ROUNDS} nodes={}", nodes.len());
    for (name, h) in [("first write, Region asleep", &asleep), ("next write, Region awake", &awake)]
    {
        println!(
            "{name}: n={} p50_us={} p99_us={} max_us={}",
            h.len(),
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.max()
        );
    }
    let extra = |q: f64| asleep.value_at_quantile(q) as i64 - awake.value_at_quantile(q) as i64;
    println!("waking costs p50_us={} p99_us={}", extra(0.5), extra(0.99));
    Ok(())
}

fn secs(since: Instant) -> f64 {
    since.elapsed().as_secs_f64()
}

/// Waits until no node has an awake group but its replica of the placement group, which
/// never sleeps.
async fn wait_until_asleep(nodes: &[String]) -> Result<(), String> {
    let deadline = Instant::now() + SLEEP_TIMEOUT;
    loop {
        let mut awake = 0;
        for node in nodes {
            let metrics = crate::tls::get_text(node, "/metrics").await.unwrap_or_default();
            awake += awake_groups(&metrics).ok_or(format!("{node}: no scandium_raft_groups"))?;
        }
        if awake <= nodes.len() as u64 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{awake} groups still awake after {SLEEP_TIMEOUT:?}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The `scandium_raft_groups{state="awake"}` figure of a node's metrics.
fn awake_groups(metrics: &str) -> Option<u64> {
    let line = metrics.lines().find(|l| l.starts_with("scandium_raft_groups{state=\"awake\"}"))?;
    line.split_whitespace().nth(1)?.parse::<f64>().ok().map(|v| v as u64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_awake_groups_are_read_from_the_metrics() {
        let text = "# HELP x\nscandium_raft_groups{state=\"awake\"} 3\n\
                    scandium_raft_groups{state=\"hibernating\"} 997\n";
        assert_eq!(super::awake_groups(text), Some(3));
        assert_eq!(super::awake_groups("nothing"), None);
    }
}
