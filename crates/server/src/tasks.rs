//! [`Tasks`]: every task a node spawns (connections and their streams, transport
//! connections, background work), so that stopping the node ends all of them. A task left
//! running would keep the node's storage open (a restarted node could not open it) and
//! keep answering on a node that was told to stop.

use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::runtime::Handle;
use tokio::task::{AbortHandle, JoinHandle};

/// How often the handles of finished tasks are let go of, spawning or not: a finished
/// task's memory stays allocated while a handle to it is held. A node that took the lead
/// of 10,000 Regions at once (a task each, to sync `max_ts`) held 2.3 MB of them at rest.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

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
        let tasks = Tasks { runtime: Handle::current(), inner: Arc::default() };
        tasks.runtime.spawn(prune_for_ever(Arc::downgrade(&tasks.inner), PRUNE_EVERY));
        tasks
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
            inner.prune();
        }
        task
    }

    /// How many handles are held (finished tasks' among them until the next prune).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).handles.len()
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

impl Inner {
    /// Lets go of finished tasks' handles, and of the room a burst of them took.
    fn prune(&mut self) {
        self.handles.retain(|h| !h.is_finished());
        self.prune_at = (2 * self.handles.len()).max(256);
        self.handles.shrink_to(self.prune_at);
    }
}

/// Prunes the handles every `period` until the node's tasks are gone.
async fn prune_for_ever(inner: Weak<Mutex<Inner>>, period: Duration) {
    // The first prune a period from now: at once, it raced what a test spawned.
    let mut every = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        inner.lock().unwrap_or_else(|e| e.into_inner()).prune();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn finished_tasks_are_let_go_of_without_further_spawns() {
        let tasks = Tasks::new();
        let handles: Vec<_> = (0..1_000).map(|_| tasks.spawn(async {})).collect();
        for handle in handles {
            handle.await.unwrap();
        }
        // Spawning pruned only while they had not run yet: all 1,000 are held.
        assert_eq!(tasks.held(), 1_000);
        // The node's pruner, sooner (started only now: on a busy machine it could run
        // before the check above).
        tokio::spawn(prune_for_ever(Arc::downgrade(&tasks.inner), Duration::from_millis(10)));
        let running = tasks.spawn(std::future::pending::<()>());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while tasks.held() > 1 {
            assert!(std::time::Instant::now() < deadline, "{} handles held", tasks.held());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!running.is_finished(), "the running task's handle stays");
        running.abort();
    }
}
