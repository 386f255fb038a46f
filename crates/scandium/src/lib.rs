//! Scandium as a library. TiKV cannot be embedded, so applications built on it test
//! against mocks or a cluster started outside `cargo test`; [`testing::Node`] is a real
//! Scandium node (the same code as `scandium server`) that a test starts in a few
//! milliseconds and talks to with `tikv-client`, its address given as the PD endpoint.

pub mod testing;
