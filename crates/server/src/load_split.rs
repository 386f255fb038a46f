//! Load-based split: a Region that stays hot is split at a key that divides its requests.
//!
//! The request path records the key of every read and write into [`LoadSamples`]: a
//! count per Region and a uniform sample of its keys (reservoir sampling, at most
//! [`SAMPLES`] keys a window). Every second the [`LoadSplitter`] takes the window. A Region
//! that served at least `load_split_qps` requests a second for `load_split_secs` seconds
//! in a row is split at the median of the keys sampled over that time, if that key leaves
//! at least a quarter of the samples on each side (so a Region whose load is one key, or a
//! few neighbours, is not split pointlessly: its median has nearly every sample on one
//! side). As TiKV's and CockroachDB's load splitters do, it looks at sampled request keys
//! rather than data: a small Region can be the hottest.

use crate::split::Splitter;
use rand::Rng;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Keys sampled per Region per window.
pub const SAMPLES: usize = 32;

/// The share of the samples each side of the split key must keep at least.
const MIN_SIDE: f64 = 0.25;

/// One Region's requests in a window.
#[derive(Clone, Debug, Default)]
pub struct Window {
    /// Requests counted.
    pub requests: u64,
    /// A uniform sample of their keys.
    pub samples: Vec<Vec<u8>>,
}

/// Requests per Region since the last [`LoadSamples::take`].
#[derive(Debug, Default)]
pub struct LoadSamples {
    regions: Mutex<HashMap<u64, Window>>, // lookups only
}

impl LoadSamples {
    /// Counts a request for each of `keys` in Region `region_id` (one lock for them all:
    /// this is on every request's path).
    pub fn record<'a>(&self, region_id: u64, keys: impl IntoIterator<Item = &'a [u8]>) {
        let mut regions = self.regions.lock().unwrap_or_else(|e| e.into_inner());
        let window = regions.entry(region_id).or_default();
        for key in keys {
            window.requests += 1;
            if window.samples.len() < SAMPLES {
                window.samples.push(key.to_vec());
                continue;
            }
            // Reservoir sampling: each key stays with probability SAMPLES/requests.
            let slot = rand::thread_rng().gen_range(0..window.requests);
            if let Some(sample) = window.samples.get_mut(slot as usize) {
                *sample = key.to_vec();
            }
        }
    }

    /// The windows since the last call.
    pub fn take(&self) -> HashMap<u64, Window> {
        std::mem::take(&mut *self.regions.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// When a Region is hot enough to split: the settings `load_split_qps` and
/// `load_split_secs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadSplitConfig {
    /// Requests a second past which a Region is hot (0: never).
    pub qps: u64,
    /// Seconds in a row a Region must be hot before it is split.
    pub secs: u64,
}

/// A Region hot so far: for how long, and the keys sampled meanwhile.
#[derive(Debug, Default)]
struct Hot {
    hot_ms: u64,
    samples: Vec<Vec<u8>>,
}

/// Decides which hot Regions to split, and where (sans-I/O: fed windows and their
/// length).
#[derive(Debug)]
pub struct LoadSplitter {
    config: LoadSplitConfig,
    hot: HashMap<u64, Hot>, // lookups only
}

impl LoadSplitter {
    /// A splitter judging by `config`.
    pub fn new(config: LoadSplitConfig) -> LoadSplitter {
        LoadSplitter { config, hot: HashMap::new() }
    }

    /// Takes one window of `interval_ms`: the Regions to split now, each with its split
    /// key. A Region not hot in this window starts over.
    pub fn observe(
        &mut self,
        windows: HashMap<u64, Window>,
        interval_ms: u64,
    ) -> Vec<(u64, Vec<u8>)> {
        if self.config.qps == 0 || interval_ms == 0 {
            return Vec::new();
        }
        let needed = self.config.qps.saturating_mul(interval_ms) / 1000;
        let mut hot = HashMap::new();
        let mut splits = Vec::new();
        for (region_id, window) in windows {
            if window.requests < needed.max(1) {
                continue;
            }
            let mut region = self.hot.remove(&region_id).unwrap_or_default();
            region.hot_ms += interval_ms;
            region.samples.extend(window.samples);
            if region.hot_ms < self.config.secs * 1000 {
                hot.insert(region_id, region);
                continue;
            }
            // Hot long enough: split if the load divides; either way, judge afresh.
            if let Some(key) = dividing_key(region.samples) {
                splits.push((region_id, key));
            }
        }
        self.hot = hot;
        splits
    }
}

/// Every second: takes the request samples and splits the Regions that stayed hot.
pub async fn run(samples: Arc<LoadSamples>, splitter: Arc<Splitter>, config: LoadSplitConfig) {
    let mut judge = LoadSplitter::new(config);
    let mut last = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let interval_ms = last.elapsed().as_millis() as u64;
        last = Instant::now();
        for (region_id, key) in judge.observe(samples.take(), interval_ms) {
            match splitter.split_at(key.clone()).await {
                Ok(region) if region.id != region_id => {
                    tracing::info!(
                        region_id,
                        new = region.id,
                        key = %crate::redact::key(&key),
                        "split a hot region"
                    );
                }
                Ok(_) => {}
                Err(error) => tracing::info!(region_id, %error, "a split by load was not done"),
            }
        }
    }
}

/// The median of `samples`, if at least [`MIN_SIDE`] of them fall on each side of it
/// (strictly before it, and at or after it: a split key starts the right half).
fn dividing_key(mut samples: Vec<Vec<u8>>) -> Option<Vec<u8>> {
    if samples.len() < 4 {
        return None;
    }
    samples.sort();
    let median = samples[samples.len() / 2].clone();
    let left = samples.partition_point(|k| *k < median);
    let share = left as f64 / samples.len() as f64;
    (share >= MIN_SIDE && 1.0 - share >= MIN_SIDE).then_some(median)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(keys: impl IntoIterator<Item = Vec<u8>>, requests: u64) -> Window {
        Window { requests, samples: keys.into_iter().collect() }
    }

    fn config() -> LoadSplitConfig {
        LoadSplitConfig { qps: 100, secs: 3 }
    }

    fn spread(second: u64) -> Vec<Vec<u8>> {
        (0..SAMPLES as u64)
            .map(|i| format!("k{:03}", (i * 7 + second) % 100).into_bytes())
            .collect()
    }

    #[test]
    fn a_region_hot_for_long_enough_is_split_at_the_middle_of_its_load() {
        let mut splitter = LoadSplitter::new(config());
        for second in 0..2 {
            let windows = HashMap::from([(5, window(spread(second), 500))]);
            assert!(splitter.observe(windows, 1000).is_empty(), "hot for {second} s only");
        }
        let windows = HashMap::from([(5, window(spread(2), 500))]);
        let splits = splitter.observe(windows, 1000);
        assert_eq!(splits.len(), 1);
        let (region, key) = &splits[0];
        assert_eq!(*region, 5);
        assert!(
            key.as_slice() > b"k030".as_slice() && key.as_slice() < b"k070".as_slice(),
            "{key:?}"
        );
    }

    #[test]
    fn one_hot_key_or_a_pause_is_not_a_reason_to_split() {
        let mut splitter = LoadSplitter::new(config());
        let one = || window(vec![b"hot".to_vec(); SAMPLES], 5_000);
        for _ in 0..5 {
            let splits = splitter.observe(HashMap::from([(5, one())]), 1000);
            assert!(splits.is_empty(), "a single hot key does not divide");
        }
        // Nearly all on one key, a few others: still not divided.
        let mut keys = vec![b"hot".to_vec(); SAMPLES - 3];
        keys.extend([b"a".to_vec(), b"b".to_vec(), b"z".to_vec()]);
        for _ in 0..5 {
            let splits = splitter.observe(HashMap::from([(5, window(keys.clone(), 5_000))]), 1000);
            assert!(splits.is_empty());
        }
        // Hot, then a quiet second: it starts over.
        let mut splitter = LoadSplitter::new(config());
        splitter.observe(HashMap::from([(5, window(spread(0), 500))]), 1000);
        splitter.observe(HashMap::from([(5, window(spread(1), 500))]), 1000);
        splitter.observe(HashMap::from([(5, window(spread(2), 50))]), 1000);
        let splits = splitter.observe(HashMap::from([(5, window(spread(3), 500))]), 1000);
        assert!(splits.is_empty(), "the quiet second reset it");
    }

    #[test]
    fn samples_stay_bounded_and_every_request_counts() {
        let samples = LoadSamples::default();
        for i in 0..10_000u32 {
            samples.record(9, [i.to_be_bytes().as_slice()]);
        }
        let windows = samples.take();
        assert_eq!(windows[&9].requests, 10_000);
        assert_eq!(windows[&9].samples.len(), SAMPLES);
        // Uniform: the sampled keys come from all over, not only the first ones.
        assert!(windows[&9]
            .samples
            .iter()
            .any(|k| k.as_slice() > 5_000u32.to_be_bytes().as_slice()));
        assert!(samples.take().is_empty());
    }

    #[test]
    fn off_when_the_threshold_is_zero() {
        let mut splitter = LoadSplitter::new(LoadSplitConfig { qps: 0, secs: 1 });
        let windows = HashMap::from([(5, window(spread(0), 1_000_000))]);
        assert!(splitter.observe(windows, 1000).is_empty());
    }
}
