//! The simulator's driver of the server's commands (`scandium_txn::command`): what
//! `server::commands` does with tasks, the Raft thread and the network, done here with
//! the event queue, so that every raw and transactional request of a run goes through the
//! very code the server runs.
//!
//! A submitted command runs until it asks for an effect, and is kept while the effect is
//! under way:
//!
//! * a gate: the Region checks every request passes (`Registry::check_led`, shared with
//!   the server), then, when the command needs a linearizable state the lease does not
//!   cover, a ReadIndex round on the node's store;
//! * a wait: until the node's `Recorded` wake list hears the command's id, or its deadline (an
//!   event on the node's own clock);
//! * a proposal: to the node's store, whose callback runs the proposal's completion where
//!   the write is applied, in log order;
//! * a remote call: routed as the server routes it (the key's Region led here, else the
//!   leader placement knows), to a command run there, over the simulated network, with
//!   the server's retries and timeouts.
//!
//! A new leader raises `max_ts` as the server's `replica.rs` does: on gaining leadership
//! of a Region, it asks the placement leader for a timestamp.

use crate::cluster::{Answer, Cluster, Event, Reply};
use crate::flows::{Failure, InFlight, Output, Parent, ReplyTo, Step, Sync, Target, Waiting};
use rand::rngs::StdRng;
use rand::Rng;
use scandium_raftstore::{
    ApplyOutput, EncodedCommand, Event as StoreEvent, RaftCommand, RaftstoreError, META_GROUP_ID,
};
use scandium_txn::command::local::local_call;
use scandium_txn::command::{Clock, Gate, Proposal, RemoteCall, Scope};
use scandium_txn::{Command, Effect, Input, Next};
use scandium_types::TimeStamp;

/// Marks the timestamp requests a new leader makes to raise `max_ts`.
pub(crate) const SYNC_OP: u64 = 1 << 34;
/// How long a new leader waits for its `max_ts` timestamp before it asks again.
const SYNC_TIMEOUT_MS: u64 = 1_000;
/// Attempts at a remote call before the command gives up (the server's `ATTEMPTS`).
const REMOTE_ATTEMPTS: u32 = 12;
/// How long one remote call may take before it is tried again (the server's
/// `CALL_TIMEOUT`).
const REMOTE_TIMEOUT_MS: u64 = 2_000;

/// How a gate went.
enum Gated {
    /// Passed at once.
    Open(Scope),
    /// A ReadIndex round is under way; then the Region as the checks found it.
    Waiting(Scope),
    /// Refused.
    Refused(RaftstoreError),
}

impl Cluster {
    /// Submits `command` to node `id`, for `target`; its answer comes back as
    /// [`Answer::Done`] tagged `op`. A node that is down answers `Unavailable` at once; a
    /// paused one holds the request until it resumes.
    pub fn submit(
        &mut self,
        id: u64,
        op: u64,
        target: Target,
        command: Command<Output>,
        rng: &mut StdRng,
    ) {
        self.start_command(id, target, command, ReplyTo::Client(op), rng);
    }

    fn start_command(
        &mut self,
        id: u64,
        target: Target,
        command: Command<Output>,
        reply_to: ReplyTo,
        rng: &mut StdRng,
    ) {
        if !self.is_up(id) {
            return match reply_to {
                ReplyTo::Client(_) => self.answer(reply_to, Err(Failure::Unavailable), rng),
                // Lost with the node: the caller's timeout tries again.
                ReplyTo::Parent { .. } => {}
            };
        }
        let cid = command.cid();
        let paused = self.paused_until(id).saturating_sub(self.now());
        let waiting = if paused > 0 { Waiting::Held } else { Waiting::Wake(0) };
        let flight =
            InFlight { command, target, waiting, reply_to, woken_early: false, wait_seq: 0 };
        self.node(id).commands.insert(cid, flight);
        if paused > 0 {
            // In the socket's buffer until the process resumes.
            let incarnation = self.crashes(id);
            let step = Step::Start;
            let event = Event::Command { node: id, incarnation, cid, step };
            self.schedule(paused + rng.gen_range(0..10), event);
            return;
        }
        self.drive(id, cid, None, rng);
    }

    /// The clocks of node `id`, as its commands read them.
    fn command_clock(&self, id: u64) -> Clock {
        Clock { monotonic_ms: self.clock(id), wall_ms: self.wall(id) }
    }

    /// Runs command `cid` of node `id` (resumed with `input`, or started) until it waits
    /// for an effect or is done.
    fn drive(&mut self, id: u64, cid: u64, input: Option<Input>, rng: &mut StdRng) {
        let Some(mut flight) = self.node(id).commands.remove(&cid) else { return };
        let now = self.command_clock(id);
        let mut next = match input {
            None => flight.command.start(now),
            Some(input) => flight.command.resume(input, now),
        };
        let mut pump = false;
        loop {
            match next {
                Next::Done(result) => {
                    return self.answer(flight.reply_to, result.map_err(Failure::Command), rng);
                }
                Next::Effect(Effect::Gate(gate)) => {
                    match self.gate(id, cid, &flight.target, gate) {
                        Gated::Open(scope) => {
                            next = flight.command.resume(Input::Gated(scope), now)
                        }
                        Gated::Waiting(scope) => {
                            flight.waiting = Waiting::Gate(scope);
                            pump = true;
                            break;
                        }
                        Gated::Refused(e) => {
                            return self.answer(flight.reply_to, Err(Failure::Refused(e)), rng)
                        }
                    }
                }
                Next::Effect(Effect::Wait { deadline_ms, .. }) => {
                    if std::mem::take(&mut flight.woken_early) {
                        next = flight.command.resume(Input::Woken, now);
                        continue;
                    }
                    flight.wait_seq += 1;
                    flight.waiting = Waiting::Wake(flight.wait_seq);
                    if let Some(deadline) = deadline_ms {
                        let incarnation = self.crashes(id);
                        let step = Step::Deadline(flight.wait_seq);
                        let delay = deadline.saturating_sub(now.monotonic_ms);
                        self.schedule(delay, Event::Command { node: id, incarnation, cid, step });
                    }
                    break;
                }
                Next::Effect(Effect::Propose(proposal)) => {
                    self.propose(id, cid, *proposal);
                    flight.waiting = Waiting::Proposal;
                    pump = true;
                    break;
                }
                Next::Effect(Effect::Remote(call)) => {
                    flight.waiting = Waiting::Remote { call: call.clone(), attempt: 0 };
                    self.node(id).commands.insert(cid, flight);
                    return self.call_remote(id, cid, call, 0, rng);
                }
            }
        }
        self.node(id).commands.insert(cid, flight);
        if pump {
            self.pump(id, rng);
        }
    }

    /// The gate on node `id`: the Region checks, then a ReadIndex round if the command
    /// needs a linearizable state and the lease does not cover it.
    fn gate(&mut self, id: u64, cid: u64, target: &Target, gate: Gate) -> Gated {
        let (region_id, epoch) = match target {
            Target::Request { region_id, epoch } => (*region_id, Some(*epoch)),
            Target::Region(region_id) => (*region_id, None),
        };
        let now = self.clock(id);
        let led = match self.nodes[id as usize - 1].registry.check_led(region_id, epoch, now) {
            Ok(led) => led,
            Err(e) => return Gated::Refused(e),
        };
        let scope = Scope { region: led.region, term: led.term };
        if !gate.linearizable || led.lease_valid || self.unsafe_reads {
            return Gated::Open(scope);
        }
        let answers = self.answers.clone();
        let incarnation = self.crashes(id);
        let callback: scandium_raftstore::ReadCallback = Box::new(move |result| {
            let reply = Reply::Gated { node: id, incarnation, cid, result };
            answers.lock().unwrap_or_else(|e| e.into_inner()).push(reply);
        });
        let store = self.node(id).store.as_mut().expect("a running node has a store");
        store.read_index(region_id, callback);
        Gated::Waiting(scope)
    }

    fn propose(&mut self, id: u64, cid: u64, proposal: Proposal) {
        let Proposal { region_id, epoch, batch, completion } = proposal;
        let command = EncodedCommand::new(RaftCommand::write_at(region_id, epoch, batch));
        let answers = self.answers.clone();
        let incarnation = self.crashes(id);
        let store = self.node(id).store.as_mut().expect("a running node has a store");
        store.propose_command(
            region_id,
            command,
            // As the server's `propose_completing`: on the apply path, in log order.
            Box::new(move |result: Result<ApplyOutput, RaftstoreError>| {
                match result.is_ok() {
                    true => completion.applied(),
                    false => drop(completion),
                }
                let reply = Reply::Applied { node: id, incarnation, cid, result };
                answers.lock().unwrap_or_else(|e| e.into_inner()).push(reply);
            }),
        );
    }

    pub(crate) fn on_gated(
        &mut self,
        id: u64,
        cid: u64,
        result: Result<(), RaftstoreError>,
        rng: &mut StdRng,
    ) {
        let Some(flight) = self.node(id).commands.get_mut(&cid) else { return };
        let Waiting::Gate(scope) = std::mem::replace(&mut flight.waiting, Waiting::Wake(0)) else {
            return;
        };
        match result {
            Ok(()) => self.drive(id, cid, Some(Input::Gated(scope)), rng),
            Err(e) => self.fail(id, cid, Failure::Refused(e), rng),
        }
    }

    pub(crate) fn on_applied(
        &mut self,
        id: u64,
        cid: u64,
        result: Result<ApplyOutput, RaftstoreError>,
        rng: &mut StdRng,
    ) {
        let Some(flight) = self.node(id).commands.get(&cid) else { return };
        if !matches!(flight.waiting, Waiting::Proposal) {
            return;
        }
        match result {
            Ok(_) => self.drive(id, cid, Some(Input::Applied), rng),
            Err(e) => self.fail(id, cid, Failure::Proposal(e), rng),
        }
    }

    pub(crate) fn on_woken(&mut self, id: u64, cid: u64, rng: &mut StdRng) {
        let Some(flight) = self.node(id).commands.get_mut(&cid) else { return };
        match flight.waiting {
            Waiting::Wake(_) => self.drive(id, cid, Some(Input::Woken), rng),
            _ => flight.woken_early = true,
        }
    }

    /// An event for command `cid` of node `id`.
    pub(crate) fn on_step(&mut self, id: u64, cid: u64, step: Step, rng: &mut StdRng) {
        let Some(flight) = self.node(id).commands.get(&cid) else { return };
        match (step, &flight.waiting) {
            (Step::Start, Waiting::Held) => self.drive(id, cid, None, rng),
            (Step::Deadline(seq), Waiting::Wake(waiting)) if seq == *waiting => {
                self.drive(id, cid, Some(Input::Woken), rng)
            }
            (Step::RemoteDone { attempt, result }, Waiting::Remote { attempt: current, .. })
                if attempt == *current =>
            {
                match result {
                    Ok(Output::Remote(reply)) => {
                        self.drive(id, cid, Some(Input::Remote(reply)), rng)
                    }
                    Err(failure) if failure.is_region_error() => {
                        self.retry_remote(id, cid, attempt)
                    }
                    Err(failure) => {
                        let why = format!("a remote call failed: {failure:?}");
                        self.fail(id, cid, Failure::Remote(why), rng)
                    }
                    Ok(other) => {
                        let why = format!("a remote call answered {other:?}");
                        self.fail(id, cid, Failure::Remote(why), rng)
                    }
                }
            }
            (Step::RemoteTimeout(attempt), Waiting::Remote { attempt: current, .. })
                if attempt == *current =>
            {
                self.retry_remote(id, cid, attempt)
            }
            (Step::RemoteRetry(attempt), Waiting::Remote { call, attempt: current })
                if attempt == *current =>
            {
                let call = call.clone();
                self.call_remote(id, cid, call, attempt, rng)
            }
            _ => {}
        }
    }

    /// Ends command `cid` of node `id` with `failure`.
    fn fail(&mut self, id: u64, cid: u64, failure: Failure, rng: &mut StdRng) {
        if let Some(flight) = self.node(id).commands.remove(&cid) {
            self.answer(flight.reply_to, Err(failure), rng);
        }
    }

    /// Tells a command's client (or the command whose remote call it was) its answer.
    fn answer(&mut self, reply_to: ReplyTo, result: Result<Output, Failure>, rng: &mut StdRng) {
        match reply_to {
            ReplyTo::Client(op) => {
                let answer = Reply::Answer(Answer::Done { op, result });
                self.answers.lock().unwrap_or_else(|e| e.into_inner()).push(answer);
            }
            ReplyTo::Parent { parent, from } => {
                let step = Step::RemoteDone { attempt: parent.attempt, result };
                let (node, incarnation, cid) = (parent.node, parent.incarnation, parent.cid);
                // From another node, the answer crosses the network (lost if the link is
                // down: the caller's timeout then tries again).
                let delay = match from == node {
                    true => 0,
                    false if self.blocked.contains(&(from, node)) => return,
                    false => self.network_delay(rng),
                };
                self.schedule(delay, Event::Command { node, incarnation, cid, step });
            }
        }
    }

    pub(crate) fn network_delay(&self, rng: &mut StdRng) -> u64 {
        let (low, high) = self.network.delay_ms;
        rng.gen_range(low..=high)
    }

    /// Attempt `attempt` of command `cid`'s remote call, routed as the server routes it:
    /// the key's Region led here, else the leader placement knows of.
    fn call_remote(&mut self, id: u64, cid: u64, call: RemoteCall, attempt: u32, rng: &mut StdRng) {
        if attempt >= REMOTE_ATTEMPTS {
            let why = format!("no leader answered {call:?}");
            return self.fail(id, cid, Failure::Remote(why), rng);
        }
        let incarnation = self.crashes(id);
        let parent = Parent { node: id, incarnation, cid, attempt };
        let Some((to, target)) = self.route(id, call.key()) else {
            return self.retry_remote(id, cid, attempt);
        };
        if to == id {
            return self.serve_remote(id, call, target, parent, rng);
        }
        let step = Step::RemoteTimeout(attempt);
        self.schedule(REMOTE_TIMEOUT_MS, Event::Command { node: id, incarnation, cid, step });
        if self.blocked.contains(&(id, to)) || !self.is_up(to) {
            return;
        }
        let delay = self.network_delay(rng);
        self.schedule(delay, Event::RemoteCall { node: to, call, target, parent });
    }

    /// The next attempt of a remote call, after the server's backoff.
    fn retry_remote(&mut self, id: u64, cid: u64, attempt: u32) {
        let next = attempt + 1;
        if let Some(InFlight { waiting: Waiting::Remote { attempt, .. }, .. }) =
            self.node(id).commands.get_mut(&cid)
        {
            *attempt = next;
        }
        let backoff = (10u64 << next.min(5)).min(300);
        let incarnation = self.crashes(id);
        let step = Step::RemoteRetry(next);
        self.schedule(backoff, Event::Command { node: id, incarnation, cid, step });
    }

    /// Where `key`'s Region is led, as node `id` knows: here, or the leader placement
    /// names (`None`: nowhere known yet).
    fn route(&self, id: u64, key: &[u8]) -> Option<(u64, Target)> {
        let node = &self.nodes[id as usize - 1];
        if let Some(status) = node.registry.find_by_key(key).filter(|s| s.ready_for_reads) {
            return Some((id, Target::Region(status.region.id)));
        }
        let placement = node.placement.read().unwrap_or_else(|e| e.into_inner());
        let region = placement.region_by_key(key)?;
        let leader = placement.leader_of(region.id)?;
        if leader.store_id == id {
            return None;
        }
        let target = Target::Request { region_id: region.id, epoch: region.epoch() };
        Some((leader.store_id, target))
    }

    /// A remote call arrived at node `id`: the command that answers it runs there.
    pub(crate) fn serve_remote(
        &mut self,
        id: u64,
        call: RemoteCall,
        target: Target,
        parent: Parent,
        rng: &mut StdRng,
    ) {
        if !self.is_up(id) {
            return; // lost: the caller's timeout tries again
        }
        let command = local_call(&self.nodes[id as usize - 1].txn, call).map(Output::Remote);
        self.start_command(id, target, command, ReplyTo::Parent { parent, from: id }, rng);
    }

    /// What node `id`'s store reported after a round: leadership gained (raise `max_ts`
    /// before async commit, as the server's `replica.rs` does) or lost (lock waiters look
    /// again), replicas destroyed.
    pub(crate) fn on_store_events(&mut self, id: u64, events: Vec<StoreEvent>, rng: &mut StdRng) {
        for event in events {
            match event {
                StoreEvent::Role { region_id, is_leader: true, term } => {
                    if region_id != META_GROUP_ID {
                        self.sync_max_ts(id, region_id, term, 0, rng);
                    }
                }
                StoreEvent::Role { region_id, is_leader: false, .. } => {
                    self.nodes[id as usize - 1].txn.leadership_lost(region_id);
                }
                StoreEvent::Destroyed(region_id) => {
                    self.nodes[id as usize - 1].txn.max_ts.forget(region_id);
                }
                StoreEvent::Merged { target, source, is_leader, term } => {
                    self.merged.insert(source);
                    if is_leader {
                        // As the server's `replica.rs`: `max_ts` is raised again.
                        self.nodes[id as usize - 1].txn.max_ts.forget(target);
                        self.sync_max_ts(id, target, term, 0, rng);
                    }
                }
                StoreEvent::RegionChanged(_) | StoreEvent::Store(_) => {}
            }
        }
    }

    /// Asks the placement leader for the timestamp node `id`, leading `region` at `term`,
    /// raises `max_ts` to (the server's `sync_max_ts`): again after a failure, or after a
    /// second without an answer, until the term is synchronised or no longer led here.
    pub(crate) fn sync_max_ts(
        &mut self,
        id: u64,
        region: u64,
        term: u64,
        attempt: u32,
        rng: &mut StdRng,
    ) {
        let node = &self.nodes[id as usize - 1];
        let still_leading = node.registry.get(region).is_some_and(|s| {
            s.term == term && s.leader.as_ref().is_some_and(|l| l.id == s.peer.id)
        });
        if (attempt > 0 && !still_leading) || node.txn.max_ts.is_synced(region, term) {
            return;
        }
        let incarnation = self.crashes(id);
        let op = SYNC_OP | self.next_sync;
        self.next_sync += 1;
        self.syncs.insert(op, Sync { node: id, incarnation, region, term, attempt });
        let asked = self.placement_leader().is_some_and(|leader| self.timestamp(leader, op, rng));
        let delay = match asked {
            true => SYNC_TIMEOUT_MS,
            false => {
                self.syncs.remove(&op);
                50 * u64::from(attempt.clamp(1, 20))
            }
        };
        let event = Event::SyncMaxTs { node: id, incarnation, region, term, attempt: attempt + 1 };
        self.schedule(delay, event);
    }

    /// A `max_ts` synchronisation's timestamp arrived (or the request failed: then it is
    /// asked again shortly).
    pub(crate) fn on_sync_timestamp(&mut self, op: u64, ts: Option<TimeStamp>) {
        let Some(sync) = self.syncs.remove(&op) else { return };
        let node = &self.nodes[sync.node as usize - 1];
        if node.crashes != sync.incarnation || node.store.is_none() {
            return;
        }
        match ts {
            Some(ts) => node.txn.max_ts_synced(sync.region, sync.term, ts),
            None => {
                let (node, incarnation, region, term) =
                    (sync.node, sync.incarnation, sync.region, sync.term);
                let attempt = sync.attempt + 1;
                let event = Event::SyncMaxTs { node, incarnation, region, term, attempt };
                self.schedule(50 * u64::from(attempt.min(20)), event);
            }
        }
    }

    /// The running node that leads the placement group and may hand out timestamps.
    pub(crate) fn placement_leader(&self) -> Option<u64> {
        self.ids().find(|&id| {
            self.is_serving(id)
                && self.nodes[id as usize - 1]
                    .registry
                    .meta()
                    .status
                    .is_some_and(|s| s.ready_for_reads)
        })
    }
}
