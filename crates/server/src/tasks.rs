//! [`Tasks`]: every task a node spawns (connections and their streams, transport
//! connections, background work), so that stopping the node ends all of them. A task left
//! running would keep the node's storage open (a restarted node could not open it) and
//! keep answering on a node that was told to stop.

use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio::runtime::Handle;
use tokio::task::{AbortHandle, JoinHandle};

#[derive(Default)]
struct Inner {
    handles: Vec<AbortHandle>,
    /// Prune finished handles when this many are held.
    prune_at: usize,
    closed: bool,
}

/// The node's tasks. Cheap to clone; usable from any thread (the Raft thread spawns
/// transport work).
#[derive(Clone)]
pub struct Tasks {
    runtime: Handle,
    inner: Arc<Mutex<Inner>>,
}

impl Tasks {
    /// Tasks on the current tokio runtime.
    pub fn new() -> Tasks {
        Tasks { runtime: Handle::current(), inner: Arc::default() }
    }

    /// Spawns `future` as one of the node's tasks (aborted at once if the node stopped).
    pub fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let task = self.runtime.spawn(future);
        let handle = task.abort_handle();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.closed {
            handle.abort();
            return task;
        }
        inner.handles.push(handle);
        if inner.handles.len() > inner.prune_at {
            inner.handles.retain(|h| !h.is_finished());
            inner.prune_at = (2 * inner.handles.len()).max(256);
        }
        task
    }

    /// Aborts every task, and every task spawned from now on.
    pub fn abort_all(&self) {
        let handles = {
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            inner.closed = true;
            std::mem::take(&mut inner.handles)
        };
        for handle in handles {
            handle.abort();
        }
    }
}

impl Default for Tasks {
    fn default() -> Self {
        Tasks::new()
    }
}

/// hyper runs each connection (and each HTTP/2 stream) as a task of the node.
impl<F> hyper::rt::Executor<F> for Tasks
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        drop(self.spawn(future));
    }
}
