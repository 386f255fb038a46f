//! The simulator's driver of the control plane (`scandium_placement::control`), as the
//! server's `heartbeat.rs` drives it, and of splits, as the server's `split.rs` runs them.
//!
//! * Every node heartbeats once a simulated second: its store, and those of the Regions it
//!   leads that the server's filter picks (`scandium_placement::filter`: what changed,
//!   what the placement leader follows or asks for, each Region in its turn; the answer
//!   comes back even without steps, as the server's does). The heartbeat crosses the network to the node it believes leads placement; there, if
//!   it does, the node's [`ControlPlane`] takes it: changed reports are proposed to the
//!   placement group (`ReportRegions`), ids for new replicas allocated when the pool runs
//!   low (`AllocIds`), and the operator steps go back over the network to the Region's
//!   leader, which carries each out only if its Region is still at the step's epoch.
//! * The placement leader's own beat runs the control plane's clock (the stores' last
//!   heartbeats recorded, drained stores retired) and the placement group's operator.
//! * A split allocates ids from placement, proposes the split to the Region's leader, then
//!   records both halves in placement, in one command.
//!
//! A node's control plane is memory: a crash loses it, and a new placement leader takes
//! over from what the placement log records.

use crate::cluster::{Cluster, Event, Reply};
use crate::flows::{Purpose, SplitFlow, HEARTBEAT_MS};
use rand::rngs::StdRng;
use scandium_placement::{
    Command, Facts, Kind, Now, OperatorStep, RegionHeartbeat, RegionLoad, RegionReport, Reports,
    Response, StepAction, StoreStateChange, Wants,
};
use scandium_raftstore::{
    ApplyOutput, EncodedCommand, PeerChange, RaftCommand, RaftstoreError, RegionStatus,
    SplitRequest, META_GROUP_ID,
};
use scandium_types::StoreState;

impl Cluster {
    /// A node's heartbeat: to the placement leader it knows, or handled here if it leads.
    pub(crate) fn heartbeat(&mut self, id: u64, rng: &mut StdRng) {
        self.schedule(HEARTBEAT_MS, Event::Heartbeat(id));
        if !self.is_serving(id) {
            return;
        }
        let meta = self.nodes[id as usize - 1].registry.meta();
        if meta.ready_for_reads {
            let heartbeats = self.select(id, id);
            self.take_heartbeat(id, id, heartbeats, rng);
            return self.lead(id, rng);
        }
        // The leader its own replica of the placement group hears from; else (it has no
        // replica, as a node that joined or was removed from the group) the one another
        // node it can reach names, as the server's `wait_leader` asks them.
        let known = meta.status.filter(|s| s.leader_alive).and_then(|s| s.leader);
        let known = known.map(|p| p.store_id).or_else(|| self.leader_named_to(id));
        let Some(leader) = known.filter(|&l| l != id) else { return };
        let heartbeats = self.select(id, leader);
        if self.blocked.contains(&(id, leader)) {
            return;
        }
        let delay = self.network_delay(rng);
        self.schedule(delay, Event::HeartbeatArrives { to: leader, from: id, heartbeats });
    }

    /// What node `id`'s heartbeat to placement leader `leader` reports, of the Regions
    /// it leads, as the server's filter picks them: looking at those published since the
    /// last beat and those the filter names, as the server's heartbeat does.
    fn select(&mut self, id: u64, leader: u64) -> scandium_placement::Selection {
        let node = &mut self.nodes[id as usize - 1];
        let (filter, target) = &mut node.reporting;
        if *target != leader {
            filter.reset();
            *target = leader;
        }
        let look = filter.begin(node.registry.take_changed());
        let led = node.registry.led(look.ids()).into_iter().map(|s| heartbeat_of(&s));
        let led = led.filter_map(|h| Some((Facts::of(&h)?, h)));
        filter.select_by(&look, led)
    }

    /// The placement leader's answer to node `id`'s heartbeat `seq`.
    pub(crate) fn take_answer(
        &mut self,
        id: u64,
        steps: Vec<OperatorStep>,
        seq: u64,
        wants: Wants,
        rng: &mut StdRng,
    ) {
        if !self.is_serving(id) {
            return;
        }
        self.nodes[id as usize - 1].reporting.0.answered(seq, wants);
        for step in steps {
            self.execute_step(id, step, rng);
        }
    }

    /// The placement leader another running node that `id` can reach names.
    fn leader_named_to(&self, id: u64) -> Option<u64> {
        self.ids().filter(|&other| other != id).find_map(|other| {
            if !self.is_serving(other) || self.blocked.contains(&(id, other)) {
                return None;
            }
            let meta = self.nodes[other as usize - 1].registry.meta();
            meta.status.filter(|s| s.leader_alive).and_then(|s| s.leader).map(|p| p.store_id)
        })
    }

    /// The placement leader `id` takes `from`'s heartbeat (dropped if it does not lead).
    pub(crate) fn take_heartbeat(
        &mut self,
        id: u64,
        from: u64,
        heartbeats: scandium_placement::Selection,
        rng: &mut StdRng,
    ) {
        if !self.is_serving(id) || !self.take_over_if_leading(id) {
            return;
        }
        let now = self.control_now(id);
        let node = &mut self.nodes[id as usize - 1];
        let state = node.placement.read().unwrap_or_else(|e| e.into_inner()).clone();
        let (intake, wants) =
            node.control.heartbeat(&state, from, &heartbeats.heartbeats, heartbeats.full, now);
        if !intake.changed.is_empty() {
            let reports = Kind::ReportRegions(Reports { reports: intake.changed });
            self.propose_placement(id, reports, Purpose::Record, rng);
        }
        self.supply_ids(id, intake.need_ids, rng);
        let (steps, seq) = (intake.steps, heartbeats.seq);
        if from == id {
            return self.take_answer(id, steps, seq, wants, rng);
        }
        if !self.blocked.contains(&(id, from)) {
            let delay = self.network_delay(rng);
            self.schedule(delay, Event::Steps { to: from, steps, seq, wants });
        }
    }

    /// Starts the control plane on placement leader `id` if it has not yet in this term;
    /// whether `id` leads placement.
    fn take_over_if_leading(&mut self, id: u64) -> bool {
        let now = self.control_now(id);
        let node = &mut self.nodes[id as usize - 1];
        let Some(status) = node.registry.meta().status.filter(|s| s.ready_for_reads) else {
            node.control.step_down();
            return false;
        };
        if !node.control.leads(status.term) {
            let state = node.placement.read().unwrap_or_else(|e| e.into_inner()).clone();
            node.control.take_over(status.term, &state, now);
        }
        true
    }

    /// The placement leader's own beat: the control plane's clock and the placement
    /// group's operator.
    fn lead(&mut self, id: u64, rng: &mut StdRng) {
        let now = self.control_now(id);
        let node = &mut self.nodes[id as usize - 1];
        let Some(status) = node.registry.meta().status.filter(|s| s.ready_for_reads) else {
            return;
        };
        let state = node.placement.read().unwrap_or_else(|e| e.into_inner()).clone();
        let proposals = node.control.tick(&state, &status.region.peers, now);
        let step = node.control.meta_heartbeat(&state, &heartbeat_of(&status), now);
        if node.control.meta_needs_id() {
            self.supply_ids(id, vec![scandium_placement::control::META_ID], rng);
        }
        for kind in proposals {
            self.propose_placement(id, kind, Purpose::Record, rng);
        }
        if let Some(step) = step {
            self.execute_step(id, step, rng);
        }
    }

    /// Allocates a peer id for each Region in `regions` (their new replicas' operators start
    /// at their next heartbeat), through placement leader `id`.
    fn supply_ids(&mut self, id: u64, regions: Vec<u64>, rng: &mut StdRng) {
        if regions.is_empty() {
            return;
        }
        let incarnation = self.crashes(id);
        let Some(term) = self.nodes[id as usize - 1].control.term() else { return };
        let count = regions.len() as u64;
        let purpose = Purpose::Ids { node: id, incarnation, term, regions };
        self.propose_placement(id, Kind::AllocIds(count), purpose, rng);
    }

    /// Carries out an operator step on node `id`, which should lead the Region, if the
    /// Region is still at the epoch the step was planned against.
    pub(crate) fn execute_step(&mut self, id: u64, step: OperatorStep, rng: &mut StdRng) {
        if !self.is_serving(id) {
            return;
        }
        let region_id = step.region_id;
        let node = &self.nodes[id as usize - 1];
        let status = match region_id {
            META_GROUP_ID => node.registry.meta().status,
            id => node.registry.get(id),
        };
        let Some(status) = status else { return };
        if !step.applies_to(&status.region) {
            return;
        }
        tracing::info!(node = id, region = region_id, step = %step.action, "operator step");
        match step.action {
            StepAction::TransferLeader(peer) => {
                let store = self.node(id).store.as_mut().expect("a serving node has a store");
                let _ = store.transfer_leader(region_id, peer.id);
            }
            StepAction::Merge(target) => {
                // The operator sees the source frozen in its next heartbeat.
                self.prepares.push((region_id, target.id));
                let store = self.node(id).store.as_mut().expect("a serving node has a store");
                store.propose_prepare_merge(region_id, target, Box::new(|_| {}));
            }
            action => {
                let changes = match action {
                    StepAction::AddLearner(peer) => vec![PeerChange::AddLearner(peer)],
                    StepAction::Promote(peers) => {
                        peers.into_iter().map(PeerChange::AddVoter).collect()
                    }
                    StepAction::Remove(peer) => vec![PeerChange::Remove(peer)],
                    StepAction::TransferLeader(_) | StepAction::Merge(_) => {
                        unreachable!("matched above")
                    }
                };
                // The operator sees the change in the Region's next heartbeat.
                let store = self.node(id).store.as_mut().expect("a serving node has a store");
                store.propose_conf_change(region_id, changes, Some(step.epoch), Box::new(|_| {}));
            }
        }
        self.pump(id, rng);
    }

    /// Proposes a placement command on node `id`, which must lead the placement group;
    /// its answer is taken as `purpose` says. `false` if it cannot be proposed there.
    pub(crate) fn propose_placement(
        &mut self,
        id: u64,
        kind: Kind,
        purpose: Purpose,
        rng: &mut StdRng,
    ) -> bool {
        use prost::Message as _;
        if !self.is_serving(id) {
            return false;
        }
        let command = Command::new(kind).encode_to_vec();
        let answers = self.answers.clone();
        let callback: scandium_raftstore::Callback = Box::new(move |result| {
            let reply = Reply::Placement { purpose, result };
            answers.lock().unwrap_or_else(|e| e.into_inner()).push(reply);
        });
        let store = self.node(id).store.as_mut().expect("a serving node has a store");
        store.propose(META_GROUP_ID, command, callback);
        self.pump(id, rng);
        true
    }

    /// A placement proposal's answer.
    pub(crate) fn on_placement(
        &mut self,
        purpose: Purpose,
        result: Result<ApplyOutput, RaftstoreError>,
        rng: &mut StdRng,
    ) {
        let response = match result {
            Ok(ApplyOutput::Meta(any)) => any.downcast::<Response>().ok().map(|r| *r),
            _ => None,
        };
        match purpose {
            Purpose::Record => {}
            Purpose::Ids { node, incarnation, term, regions } => {
                if self.crashes(node) != incarnation {
                    return;
                }
                if let Some(Response::Ids { first }) = response {
                    let control = &mut self.node(node).control;
                    for (i, region) in regions.into_iter().enumerate() {
                        control.supply_id(region, first + i as u64, term);
                    }
                }
            }
            Purpose::LearnerId { node, region, store } => {
                if let Some(Response::Ids { first }) = response {
                    let learner = scandium_types::Peer::learner(first, store);
                    self.change_peers(node, region, vec![PeerChange::AddLearner(learner)], rng);
                }
            }
            Purpose::SplitIds { split } => {
                let Some(flow) = self.splits.remove(&split) else { return };
                if let Some(Response::Ids { first }) = response {
                    self.propose_split(split, flow, first, rng);
                }
            }
        }
    }

    /// Splits the Region holding `key` at `key`, through its leader (nothing if no node
    /// leads it now, or `key` is already a boundary).
    pub fn split(&mut self, key: &[u8], rng: &mut StdRng) -> bool {
        self.split_at_keys(vec![key.to_vec()], rng)
    }

    /// Cuts the Region holding `keys[0]` at each of `keys` (sorted) in one command,
    /// through its leader (as the server's `split.rs` cuts the keys a Region holds);
    /// nothing if no node leads it now, or a key is already a boundary or outside it.
    fn split_at_keys(&mut self, keys: Vec<Vec<u8>>, rng: &mut StdRng) -> bool {
        let Some(first) = keys.first() else { return false };
        let leader = self.ids().find_map(|id| {
            let status = self.nodes[id as usize - 1].registry.find_by_key(first)?;
            (self.is_serving(id) && status.ready_for_reads).then_some((id, status.region))
        });
        let Some((node, region)) = leader else { return false };
        if keys.iter().any(|key| region.start_key == *key || !region.contains(key)) {
            return false;
        }
        let Some(placement) = self.placement_leader() else { return false };
        let split = self.next_split;
        self.next_split += 1;
        let incarnation = self.crashes(node);
        let count = SplitRequest::ids_needed(keys.len(), region.peers.len());
        let flow = SplitFlow { keys, node, incarnation, region };
        self.splits.insert(split, flow);
        self.propose_placement(placement, Kind::AllocIds(count), Purpose::SplitIds { split }, rng)
    }

    /// The server's split check (`split_check.rs`) on node `id`: measures the Regions it
    /// leads that are due, corrects their figures, and cuts each one past `policy` at
    /// every key the measurement picked, in one command. Returns the keys it splits at.
    pub fn check_split(
        &mut self,
        id: u64,
        policy: &scandium_raftstore::SplitPolicy,
        rng: &mut StdRng,
    ) -> Vec<Vec<u8>> {
        if !self.is_serving(id) {
            return Vec::new();
        }
        let Some(store) = self.node(id).store.as_mut() else { return Vec::new() };
        let (due, snapshot) = store.due_for_measuring(policy);
        let mut keys = Vec::new();
        for (region, mark) in due {
            let Ok(found) = scandium_raftstore::measure(&region, &*snapshot, policy) else {
                continue;
            };
            store.record_measurement(&region, &mark, found.size, found.keys);
            if !found.split_keys.is_empty() {
                keys.push(found.split_keys);
            }
        }
        keys.retain(|keys| self.split_at_keys(keys.clone(), rng));
        keys.concat()
    }

    fn propose_split(&mut self, split: u64, flow: SplitFlow, first_id: u64, rng: &mut StdRng) {
        let node = flow.node;
        if self.crashes(node) != flow.incarnation || !self.is_serving(node) {
            return;
        }
        let requests = SplitRequest::cuts(&flow.keys, flow.region.peers.len(), first_id);
        let command = EncodedCommand::new(RaftCommand::split(&flow.region, requests));
        let answers = self.answers.clone();
        let callback: scandium_raftstore::Callback = Box::new(move |result| {
            let reply = Reply::Split { split, result };
            answers.lock().unwrap_or_else(|e| e.into_inner()).push(reply);
        });
        let store = self.node(node).store.as_mut().expect("a serving node has a store");
        store.propose_command(flow.region.id, command, callback);
        self.splits.insert(split, flow);
        self.pump(node, rng);
    }

    /// A split was applied (or refused): every piece goes to placement in one command,
    /// the original with its leader if the node still leads it (as the server's
    /// `split.rs` reports them; the new Regions' leaders are learnt from their first
    /// heartbeats here).
    pub(crate) fn on_split(
        &mut self,
        split: u64,
        result: Result<ApplyOutput, RaftstoreError>,
        rng: &mut StdRng,
    ) {
        let Some(flow) = self.splits.remove(&split) else { return };
        let Ok(ApplyOutput::Split { left, new }) = result else { return };
        self.splits_done += 1;
        let led = self.nodes[flow.node as usize - 1].registry.get(left.id);
        let led = led.filter(|s| s.ready_for_reads);
        let (leader_peer_id, term) = led.map_or((0, 0), |s| (s.peer.id, s.term));
        if let Some(placement) = self.placement_leader() {
            let shapes =
                new.into_iter().map(|r| RegionReport { region: Some(r), ..Default::default() });
            let left = RegionReport { region: Some(left), leader_peer_id, term };
            let reports = shapes.chain([left]).collect();
            let reports = Kind::ReportRegions(Reports { reports });
            self.propose_placement(placement, reports, Purpose::Record, rng);
        }
    }

    /// Adds a learner of `region` on `store` through its leader `node`, with an id from
    /// placement's allocator (a replica moved by hand, beside the control plane).
    pub fn add_learner(&mut self, node: u64, region: u64, store: u64, rng: &mut StdRng) {
        let Some(placement) = self.placement_leader() else { return };
        let purpose = Purpose::LearnerId { node, region, store };
        self.propose_placement(placement, Kind::AllocIds(1), purpose, rng);
    }

    /// Marks store `id` for removal (`scandium ctl store remove`): its replicas drain away
    /// and it is retired. `false` if no placement leader took it.
    pub fn remove_store(&mut self, id: u64, rng: &mut StdRng) -> bool {
        let Some(placement) = self.placement_leader() else { return false };
        let change = StoreStateChange { store_id: id, state: StoreState::Offline as i32 };
        self.propose_placement(placement, Kind::SetStoreState(change), Purpose::Record, rng)
    }

    fn control_now(&self, id: u64) -> Now {
        Now { monotonic_ms: self.clock(id), wall_ms: self.wall(id) }
    }
}

fn heartbeat_of(status: &RegionStatus) -> RegionHeartbeat {
    let report = RegionReport {
        region: Some(status.region.clone()),
        leader_peer_id: status.peer.id,
        term: status.term,
    };
    // Size only: the simulator's checks do not look at traffic.
    let load = RegionLoad {
        approximate_size: status.stats.approximate_size,
        approximate_keys: status.stats.approximate_keys,
        ..RegionLoad::default()
    };
    let pending = status.pending_peers.iter().map(|p| p.id).collect();
    RegionHeartbeat { report, pending, load }
}
