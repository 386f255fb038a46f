//! How long an in-process test node takes to start and to stop.
//!
//! ```sh
//! cargo run --release -p scandium --example start_time
//! ```

use std::time::{Duration, Instant};

fn main() {
    measure("in memory", scandium::testing::Node::start);
    measure("on disk", scandium::testing::Node::start_on_disk);
}

fn measure(
    kind: &str,
    start: fn() -> Result<scandium::testing::Node, scandium::testing::StartError>,
) {
    let runs = 50;
    let (mut starts, mut stops): (Vec<Duration>, Vec<Duration>) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let began = Instant::now();
        let node = start().expect("node starts");
        starts.push(began.elapsed());
        let began = Instant::now();
        drop(node);
        stops.push(began.elapsed());
    }
    for (what, mut times) in [("start", starts), ("stop", stops)] {
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{kind}, {what}: median {:.1} ms, p90 {:.1} ms, max {:.1} ms over {runs} runs",
            ms(times[runs / 2]),
            ms(times[runs * 9 / 10]),
            ms(times[runs - 1])
        );
    }
}
