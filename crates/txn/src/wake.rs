//! How a waiting command is resumed: the one thing the latches, the lock waits and the
//! node need from whoever drives commands, kept apart so that they depend on it and not
//! on the command layer.

/// Ends waits: the driver's way of resuming command `cid`, called by whoever releases what
/// it waits for (on any thread, possibly the Raft thread applying a release).
pub trait Wake: Send + Sync {
    /// Command `cid` should look again at what it waits for.
    fn wake(&self, cid: u64);
}

/// Wake-ups recorded, in order, for a driver that resumes the commands itself when it
/// next looks (the simulator's event loop) and for tests of what waits.
#[derive(Default)]
pub struct Recorded {
    woken: std::sync::Mutex<Vec<u64>>,
    /// Set after each wake-up. The simulator looks after every event, nearly always to
    /// find nothing, and the lock's atomic instructions took a twentieth of its time; a
    /// plain load does not lock the bus. A wake-up that races a look is found by the next.
    any: std::sync::atomic::AtomicBool,
}

impl Recorded {
    /// The ids woken since the last call, in order.
    pub fn take(&self) -> Vec<u64> {
        use std::sync::atomic::Ordering;
        if !self.any.load(Ordering::Acquire) {
            return Vec::new();
        }
        self.any.store(false, Ordering::Release);
        std::mem::take(&mut *self.woken.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Wake for Recorded {
    fn wake(&self, cid: u64) {
        self.woken.lock().unwrap_or_else(|e| e.into_inner()).push(cid);
        self.any.store(true, std::sync::atomic::Ordering::Release);
    }
}
