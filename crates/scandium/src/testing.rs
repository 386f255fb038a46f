//! An in-process node for applications' tests.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let node = scandium::testing::Node::start()?;
//! let client = tikv_client::RawClient::new(vec![node.addr()]).await?;
//! client.put("key".to_owned(), "value".to_owned()).await?;
//! # Ok(())
//! # }
//! ```
//!
//! The node runs on a Tokio runtime of its own, on its own threads, so it serves whatever
//! the test does with its own runtime (a `#[tokio::test]`'s single thread blocked in a
//! client call included), and [`Node::start`] and dropping the node work from synchronous
//! and asynchronous code alike. [`Node::start`] keeps the data in memory (no fsync, so it
//! starts in a few milliseconds); [`Node::start_on_disk`] uses the real storage engine in a
//! temporary directory. Either way the data is gone when the node is dropped.

use scandium_server::Config;
use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;
use thiserror::Error;

/// Why a test node did not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// The temporary directory or the node's thread could not be created.
    #[error("cannot prepare a test node: {0}")]
    Io(#[from] std::io::Error),
    /// The node itself failed to start.
    #[error("the test node did not start: {0}")]
    Node(String),
}

/// A single Scandium node on a free port of 127.0.0.1, with its data in a temporary
/// directory; it stops, and its data is deleted, when dropped.
pub struct Node {
    addr: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    dir: tempfile::TempDir,
}

impl Node {
    /// Starts a node keeping its data in memory and returns once it serves: reads and
    /// writes through `tikv-client` work as soon as this returns.
    pub fn start() -> Result<Node, StartError> {
        Node::start_with(true, |_| {})
    }

    /// [`Node::start`] on the real storage engine (fjall), in the temporary directory.
    pub fn start_on_disk() -> Result<Node, StartError> {
        Node::start_with(false, |_| {})
    }

    /// A node in memory or on disk, its settings adjusted first (the data directory and
    /// address are set already; changing them is allowed).
    pub fn start_with(
        in_memory: bool,
        adjust: impl FnOnce(&mut Config),
    ) -> Result<Node, StartError> {
        let dir = tempfile::Builder::new().prefix("scandium-test-").tempdir()?;
        let mut config = Config {
            data_dir: dir.path().join("data"),
            addr: "127.0.0.1:0".into(),
            // A developer's nearly full disk should not make the tests fail.
            reserve_space_bytes: 0,
            ..Config::default()
        };
        adjust(&mut config);
        let (ready, started) = mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread =
            std::thread::Builder::new().name("scandium-test-node".into()).spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("scandium-test-node")
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => return drop(ready.send(Err(e.to_string()))),
                };
                runtime.block_on(async move {
                    let started = match in_memory {
                        true => {
                            let engine = std::sync::Arc::new(scandium_storage::MemoryEngine::new());
                            scandium_server::Node::start_on(config, engine).await
                        }
                        false => scandium_server::Node::start(config).await,
                    };
                    match started {
                        Ok(node) => {
                            let _ = ready.send(Ok(node.advertise_addr().to_string()));
                            // Dropping the handle stops the node as well as `stop` does.
                            let _ = stopped.await;
                            node.stop().await;
                        }
                        Err(e) => drop(ready.send(Err(e.to_string()))),
                    }
                });
            })?;
        let addr = match started.recv() {
            Ok(Ok(addr)) => addr,
            Ok(Err(message)) => return Err(StartError::Node(message)),
            Err(_) => return Err(StartError::Node("its thread ended before it started".into())),
        };
        Ok(Node { addr, stop: Some(stop), thread: Some(thread), dir })
    }

    /// `HOST:PORT` to give `tikv-client` as the PD endpoint (and where the node's HTTP
    /// endpoints answer).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The temporary directory holding everything of the node (its data, for a node on
    /// disk).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
