//! The node's side of the placement group: proposing placement commands, reading the
//! placement state, and the timestamp oracle.

use crate::clock::now_ms;
use crate::error::RequestError;
use crate::raft_driver::RaftHandle;
use prost::Message as _;
use scandium_placement::{Command, PlacementState, Response, TsoAllocator, TsoError};
use scandium_placement::{Kind, Regions};
use scandium_raftstore::{ApplyOutput, MetaStateMachine, Registry, META_GROUP_ID};
use scandium_storage::{EngineRef, WriteBatch};
use scandium_types::{Region, TimeStamp};
use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

/// The placement state machine as the Raft thread applies it; readers share the state.
pub struct MetaApplier {
    state: Arc<RwLock<PlacementState>>,
}

impl MetaApplier {
    /// Applies to `state`.
    pub fn new(state: Arc<RwLock<PlacementState>>) -> MetaApplier {
        MetaApplier { state }
    }
}

impl MetaStateMachine for MetaApplier {
    fn apply(
        &mut self,
        _index: u64,
        command: &[u8],
        batch: &mut WriteBatch,
    ) -> Box<dyn Any + Send> {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        Box::new(state.apply(command, batch))
    }

    fn restore(&mut self, engine: &EngineRef) {
        match PlacementState::load(engine) {
            Ok(Some(loaded)) => *self.state.write().unwrap_or_else(|e| e.into_inner()) = loaded,
            Ok(None) => tracing::error!("a placement snapshot left no placement state"),
            Err(error) => tracing::error!(%error, "cannot load the placement state of a snapshot"),
        }
    }
}

/// Placement as the rest of the server uses it.
pub struct Placement {
    state: Arc<RwLock<PlacementState>>,
    raft: RaftHandle,
    registry: Registry,
    tso: Mutex<TsoAllocator>,
    raising_limit: AtomicBool,
}

impl Placement {
    /// Wraps the shared state; the TSO resumes at the persisted high-water mark.
    pub fn new(
        state: Arc<RwLock<PlacementState>>,
        raft: RaftHandle,
        registry: Registry,
    ) -> Placement {
        let limit = state.read().unwrap_or_else(|e| e.into_inner()).tso_limit_ms();
        Placement {
            state,
            raft,
            registry,
            tso: Mutex::new(TsoAllocator::new(limit)),
            raising_limit: AtomicBool::new(false),
        }
    }

    /// The placement state as of the last applied command.
    pub fn read(&self) -> RwLockReadGuard<'_, PlacementState> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this node leads the placement group and has applied everything committed
    /// before its term, so it may answer placement reads and hand out timestamps.
    pub fn is_serving(&self) -> bool {
        self.registry.meta().ready_for_reads
    }

    /// Proposes a placement command and waits for its result.
    pub async fn propose(&self, kind: Kind) -> Result<Response, RequestError> {
        let data = Command::new(kind).encode_to_vec();
        match self.raft.propose(META_GROUP_ID, data).await? {
            ApplyOutput::Meta(output) => match output.downcast::<Response>() {
                Ok(response) => match *response {
                    Response::Invalid(reason) => Err(RequestError::Internal(reason)),
                    response => Ok(response),
                },
                Err(_) => Err(RequestError::Internal("unexpected placement output".into())),
            },
            other => Err(RequestError::Internal(format!("unexpected placement output {other:?}"))),
        }
    }

    /// Reserves `count` consecutive ids and returns the first.
    pub async fn alloc_ids(&self, count: u64) -> Result<u64, RequestError> {
        match self.propose(Kind::AllocIds(count)).await? {
            Response::Ids { first } => Ok(first),
            other => Err(RequestError::Internal(format!("unexpected allocation result {other:?}"))),
        }
    }

    /// Records Regions' new shapes in one command (stale reports are ignored), so a
    /// lookup sees all of them or none: reported one by one, the halves of a split would
    /// leave a moment when one half's keys have no Region.
    pub async fn put_regions(&self, regions: Vec<Region>) -> Result<(), RequestError> {
        self.propose(Kind::PutRegions(Regions { regions })).await.map(|_| ())
    }

    /// Issues `count` timestamps and returns the largest.
    pub async fn timestamp(self: &Arc<Self>, count: u32) -> Result<TimeStamp, RequestError> {
        if !self.is_serving() {
            return Err(RequestError::Internal("this node is not the placement leader".into()));
        }
        for _ in 0..3 {
            let (result, wanted) = {
                let mut tso = self.tso.lock().unwrap_or_else(|e| e.into_inner());
                let now = now_ms();
                (tso.allocate(now, count), tso.wanted_limit(now))
            };
            match result {
                Ok(ts) => {
                    if let Some(limit) = wanted {
                        self.raise_limit_in_background(limit);
                    }
                    return Ok(ts);
                }
                Err(TsoError::LimitReached(limit)) => self.raise_limit(limit).await?,
                Err(e @ TsoError::BadCount(_)) => return Err(RequestError::invalid(e.to_string())),
            }
        }
        Err(RequestError::Internal("timestamp high-water mark could not be raised".into()))
    }

    async fn raise_limit(&self, limit: u64) -> Result<(), RequestError> {
        if let Response::TsoLimit(persisted) = self.propose(Kind::RaiseTsoLimit(limit)).await? {
            self.tso.lock().unwrap_or_else(|e| e.into_inner()).set_limit(persisted);
        }
        Ok(())
    }

    fn raise_limit_in_background(self: &Arc<Self>, limit: u64) {
        if self.raising_limit.swap(true, Ordering::AcqRel) {
            return;
        }
        let placement = self.clone();
        tokio::spawn(async move {
            if let Err(error) = placement.raise_limit(limit).await {
                tracing::warn!(%error, "could not raise the timestamp high-water mark");
            }
            placement.raising_limit.store(false, Ordering::Release);
        });
    }

    /// Raises the GC safe point and returns the safe point now in force.
    pub async fn update_gc_safe_point(&self, safe_point: u64) -> Result<u64, RequestError> {
        match self.propose(Kind::UpdateGcSafePoint(safe_point)).await? {
            Response::GcSafePoint(now) => Ok(now),
            other => Err(RequestError::Internal(format!("unexpected safe point result {other:?}"))),
        }
    }
}
