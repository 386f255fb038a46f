//! Operators: multi-step changes of one Region, tracked by the placement leader from the
//! Region's heartbeats until they are done, time out or are cancelled.
//!
//! The scheduler decides *what* a Region should become next (a replica added, promoted or
//! removed; its leadership moved); an operator turns that into steps its leader carries
//! out one at a time, and watches each take effect:
//!
//! | operator | steps |
//! |---|---|
//! | add a replica | add a learner on the store; promote it once it has caught up |
//! | promote learners | promote them (together: one joint change) |
//! | remove a replica | (move leadership away first, if it leads) remove it |
//! | transfer leadership | hand it to the peer |
//! | move a replica (balance) | add a learner on the new store; promote it once caught up; remove the old one |
//! | merge into a neighbour | freeze the Region to merge it into the target (the target absorbs it by itself) |
//!
//! A step that removes the Region's leader is sent as a leader transfer to another voter
//! (a caught-up one if any) until leadership has moved: a leader cannot remove itself, and
//! leadership may have moved onto the victim since the operator began.
//!
//! A step goes to the Region's leader with the epoch it was planned against; the leader
//! carries it out only if its Region is still at that epoch ([`OperatorStep::applies_to`]),
//! so a step that arrives late, after the Region changed, changes nothing. A step is sent
//! again while it has not shown in the heartbeats for a while (the leader may have changed,
//! the step may have been refused for a change already in progress), and the operator is
//! given up if a step takes too long or the Region is split or merged meanwhile.

use scandium_types::{Peer, PeerId, PeerRole, Region, RegionEpoch, RegionId, StoreId};

/// One step of an operator, as the Region's leader carries it out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepAction {
    /// Add this (new) peer as a learner.
    AddLearner(Peer),
    /// Make these learners voters (more than one: a joint change).
    Promote(Vec<Peer>),
    /// Remove this peer.
    Remove(Peer),
    /// Hand leadership to this voter.
    TransferLeader(Peer),
    /// Freeze the Region to merge it into this neighbour (as planned: the merge applies
    /// only at this epoch of the target).
    Merge(Region),
}

impl std::fmt::Display for StepAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let peer = |p: &Peer| format!("{}@{}", p.id, p.store_id);
        match self {
            StepAction::AddLearner(p) => write!(f, "add learner {}", peer(p)),
            StepAction::Promote(peers) => {
                let peers: Vec<String> = peers.iter().map(peer).collect();
                write!(f, "promote {}", peers.join(" "))
            }
            StepAction::Remove(p) => write!(f, "remove {}", peer(p)),
            StepAction::TransferLeader(p) => write!(f, "transfer leader to {}", peer(p)),
            StepAction::Merge(target) => write!(f, "merge into region {}", target.id),
        }
    }
}

/// Longest a leader transfer step may take.
pub const TRANSFER_STEP_MS: u64 = 10_000;

/// A step addressed to a Region's leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorStep {
    /// The Region.
    pub region_id: RegionId,
    /// The Region's epoch the step was planned against.
    pub epoch: RegionEpoch,
    /// What to do.
    pub action: StepAction,
}

impl OperatorStep {
    /// Whether the leader may carry the step out on `region` as it holds it now: only at
    /// the epoch the step was planned against. A step planned against an older shape (it
    /// arrived late, or was sent again after it took effect) is refused.
    pub fn applies_to(&self, region: &Region) -> bool {
        region.id == self.region_id && region.epoch() == self.epoch
    }
}

/// What an operator is for (for logs and counts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OperatorKind {
    /// A replica added on this store.
    AddReplica(StoreId),
    /// Learners promoted.
    PromoteLearners,
    /// This replica removed.
    RemoveReplica(Peer),
    /// Leadership moved to this peer.
    TransferLeader(Peer),
    /// A replica moved to another store, to balance the stores.
    MoveReplica {
        /// The replica that goes.
        from: Peer,
        /// Where it goes.
        to: StoreId,
    },
    /// A replica moved to the store of a neighbour's replica, so that the Region can merge
    /// into that neighbour (`target`).
    Colocate {
        /// The replica that goes.
        from: Peer,
        /// Where it goes.
        to: StoreId,
        /// The neighbour it joins.
        target: RegionId,
    },
    /// The Region merged into this neighbour.
    Merge(RegionId),
}

impl std::fmt::Display for OperatorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OperatorKind::AddReplica(store) => write!(f, "add a replica on store {store}"),
            OperatorKind::PromoteLearners => write!(f, "promote learners"),
            OperatorKind::RemoveReplica(p) => {
                write!(f, "remove replica {} of store {}", p.id, p.store_id)
            }
            OperatorKind::TransferLeader(p) => {
                write!(f, "move leadership to {} (store {})", p.id, p.store_id)
            }
            OperatorKind::MoveReplica { from, to } => {
                write!(f, "move replica {} from store {} to store {to}", from.id, from.store_id)
            }
            OperatorKind::Colocate { from, to, target } => write!(
                f,
                "move replica {} from store {} to store {to}, beside region {target}",
                from.id, from.store_id
            ),
            OperatorKind::Merge(target) => write!(f, "merge into region {target}"),
        }
    }
}

impl OperatorKind {
    /// Whether it balances the stores (the placement leader limits how many run at once).
    pub fn balances(&self) -> bool {
        matches!(self, OperatorKind::MoveReplica { .. } | OperatorKind::TransferLeader(_))
    }

    /// The replica it moves, and where, for a move (to balance or to merge).
    pub fn moves(&self) -> Option<(&Peer, StoreId)> {
        match self {
            OperatorKind::MoveReplica { from, to } | OperatorKind::Colocate { from, to, .. } => {
                Some((from, *to))
            }
            _ => None,
        }
    }

    /// The neighbour it merges into or moves a replica beside, for a merge's steps: that
    /// Region only gets repaired meanwhile, and counts against the merge limit.
    pub fn merge_target(&self) -> Option<RegionId> {
        match self {
            OperatorKind::Merge(target) | OperatorKind::Colocate { target, .. } => Some(*target),
            _ => None,
        }
    }
}

/// How an operator ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// Every step took effect.
    Finished,
    /// A step did not take effect in time.
    TimedOut,
    /// The Region was split or merged, or the operator was superseded.
    Cancelled,
}

/// What an operator wants after looking at its Region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Send this step to the Region's leader.
    Send(OperatorStep),
    /// Nothing to send now (a step is under way, or a learner is still catching up).
    Wait,
    /// It is over.
    Ended(Ended),
}

/// How long operators' steps may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OperatorTimeouts {
    /// A step that has not taken effect after this long ends the operator.
    pub step_ms: u64,
    /// A step that has not shown in the heartbeats after this long is sent again.
    pub resend_ms: u64,
}

impl Default for OperatorTimeouts {
    fn default() -> Self {
        // Adding a learner may need a snapshot of the whole Region: minutes, for a large one.
        OperatorTimeouts { step_ms: 10 * 60_000, resend_ms: 5_000 }
    }
}

/// A multi-step change of one Region (see the module docs).
#[derive(Clone, Debug)]
pub struct Operator {
    region_id: RegionId,
    kind: OperatorKind,
    steps: Vec<StepAction>,
    current: usize,
    /// The Region's version when the operator began: a split or merge cancels it.
    version: u64,
    /// The Region's `conf_ver` when the operator began: with the version one above each,
    /// a merge's source is frozen.
    conf_ver: u64,
    /// Voters the Region had when the operator began: a move removes its old replica only
    /// while the Region has more (its new one promoted, nothing else removed meanwhile).
    voters: usize,
    step_started_ms: u64,
    /// When the current step was last sent, at which epoch, and as what.
    sent: Option<(u64, RegionEpoch, StepAction)>,
}

impl Operator {
    /// An operator of `kind` on `region`, whose steps are `steps`, beginning at `now_ms`.
    pub fn new(region: &Region, kind: OperatorKind, steps: Vec<StepAction>, now_ms: u64) -> Self {
        Operator {
            region_id: region.id,
            kind,
            steps,
            current: 0,
            version: region.version,
            conf_ver: region.conf_ver,
            voters: region.voters().count(),
            step_started_ms: now_ms,
            sent: None,
        }
    }

    /// Adds a replica on a store: a learner with `peer_id`, promoted once caught up.
    pub fn add_replica(region: &Region, store: StoreId, peer_id: PeerId, now_ms: u64) -> Self {
        let learner = Peer::learner(peer_id, store);
        let voter = Peer::new(peer_id, store);
        let steps = vec![StepAction::AddLearner(learner), StepAction::Promote(vec![voter])];
        Operator::new(region, OperatorKind::AddReplica(store), steps, now_ms)
    }

    /// Adds a learner on `store` (as the new peer `peer_id`) that stays a learner.
    pub fn add_learner(region: &Region, store: StoreId, peer_id: PeerId, now_ms: u64) -> Self {
        let steps = vec![StepAction::AddLearner(Peer::learner(peer_id, store))];
        Operator::new(region, OperatorKind::AddReplica(store), steps, now_ms)
    }

    /// Removes `victim`, moving leadership to `successor` first if the victim leads.
    pub fn remove_replica(
        region: &Region,
        victim: Peer,
        successor: Option<Peer>,
        now: u64,
    ) -> Self {
        let mut steps: Vec<StepAction> =
            successor.into_iter().map(StepAction::TransferLeader).collect();
        steps.push(StepAction::Remove(victim.clone()));
        Operator::new(region, OperatorKind::RemoveReplica(victim), steps, now)
    }

    /// Moves `from` to `store` (as the new peer `peer_id`): a learner added there and
    /// promoted once caught up, then `from` removed (its leadership moved first if it
    /// leads by then).
    pub fn move_replica(
        region: &Region,
        from: Peer,
        store: StoreId,
        peer_id: PeerId,
        now_ms: u64,
    ) -> Self {
        let learner = Peer::learner(peer_id, store);
        let voter = Peer::new(peer_id, store);
        let steps = vec![
            StepAction::AddLearner(learner),
            StepAction::Promote(vec![voter]),
            StepAction::Remove(from.clone()),
        ];
        Operator::new(region, OperatorKind::MoveReplica { from, to: store }, steps, now_ms)
    }

    /// [`Operator::move_replica`] towards neighbour `target`'s stores, to merge into it.
    pub fn colocate(
        region: &Region,
        from: Peer,
        store: StoreId,
        target: RegionId,
        peer_id: PeerId,
        now_ms: u64,
    ) -> Self {
        let mut operator = Operator::move_replica(region, from.clone(), store, peer_id, now_ms);
        operator.kind = OperatorKind::Colocate { from, to: store, target };
        operator
    }

    /// Whether the Region's merge step, not taken yet, was planned against a shape of the
    /// target (`target_now`, as placement knows it) that has changed since: the target's
    /// replicas refuse such a prepare, and every resend with it, until the step's time
    /// ran out (ten minutes, with both Regions held).
    pub fn merge_target_moved(&self, region: &Region, target_now: &Region) -> bool {
        let planned = match self.steps.get(self.current) {
            Some(StepAction::Merge(planned)) if planned.id == target_now.id => planned,
            _ => return false,
        };
        !self.frozen(region) && planned.epoch() != target_now.epoch()
    }

    /// Merges the Region into its neighbour `target` (with replicas on the same stores).
    pub fn merge(region: &Region, target: &Region, now_ms: u64) -> Self {
        let steps = vec![StepAction::Merge(target.clone())];
        Operator::new(region, OperatorKind::Merge(target.id), steps, now_ms)
    }

    /// Whether the Region, as reported, is frozen by this operator's merge step: the
    /// target absorbs it by itself (the operator ends once it is gone from placement's
    /// record), or the merge is rolled back (its version moves again).
    fn frozen(&self, region: &Region) -> bool {
        matches!(self.kind, OperatorKind::Merge(_))
            && region.version == self.version + 1
            && region.conf_ver == self.conf_ver + 1
    }

    /// Hands leadership to `to`.
    pub fn transfer_leader(region: &Region, to: Peer, now_ms: u64) -> Self {
        let steps = vec![StepAction::TransferLeader(to.clone())];
        Operator::new(region, OperatorKind::TransferLeader(to), steps, now_ms)
    }

    /// The Region it changes.
    pub fn region_id(&self) -> RegionId {
        self.region_id
    }

    /// What it is for.
    pub fn kind(&self) -> &OperatorKind {
        &self.kind
    }

    /// The step under way (none once all are done), its number from 1, and how many
    /// there are.
    pub fn step(&self) -> (Option<&StepAction>, usize, usize) {
        (self.steps.get(self.current), self.current + 1, self.steps.len())
    }

    /// When the step under way began (the placement leader's monotonic clock).
    pub fn step_started_ms(&self) -> u64 {
        self.step_started_ms
    }

    /// Whether the step under way has run past its time at `now_ms`, reported or not
    /// (an operator ends by time even when its Region no longer reports: one merged
    /// away, say).
    pub fn timed_out(&self, now_ms: u64, timeouts: OperatorTimeouts) -> bool {
        let limit = match self.steps.get(self.current) {
            Some(StepAction::TransferLeader(_)) => timeouts.step_ms.min(TRANSFER_STEP_MS),
            _ => timeouts.step_ms,
        };
        now_ms.saturating_sub(self.step_started_ms) > limit
    }

    /// Whether a step still to come puts a replica on `store` (an added learner, or one
    /// promoted there).
    pub fn adds_to(&self, store: StoreId) -> bool {
        self.steps[self.current.min(self.steps.len())..].iter().any(|step| match step {
            StepAction::AddLearner(peer) => peer.store_id == store,
            StepAction::Promote(peers) => peers.iter().any(|p| p.store_id == store),
            _ => false,
        })
    }

    /// Looks at the Region as its leader (`leader`) reports it, with its lagging peers
    /// (`pending`): steps that took effect are passed, and the current one is sent when
    /// it is due.
    pub fn observe(
        &mut self,
        region: &Region,
        leader: PeerId,
        pending: &[PeerId],
        now_ms: u64,
        timeouts: OperatorTimeouts,
    ) -> Progress {
        if self.frozen(region) {
            if now_ms.saturating_sub(self.step_started_ms) > timeouts.step_ms {
                return Progress::Ended(Ended::TimedOut);
            }
            return Progress::Wait;
        }
        if region.version != self.version {
            return Progress::Ended(Ended::Cancelled);
        }
        while let Some(step) = self.steps.get(self.current) {
            if !done(step, region, leader) {
                break;
            }
            self.current += 1;
            self.step_started_ms = now_ms;
            self.sent = None;
        }
        let Some(step) = self.steps.get(self.current) else {
            return Progress::Ended(Ended::Finished);
        };
        // A leader transfer is done within an election timeout or not at all (its target
        // died, or lags too far): it does not hold the Region for a data step's minutes.
        let limit = match step {
            StepAction::TransferLeader(_) => timeouts.step_ms.min(TRANSFER_STEP_MS),
            // Leadership goes first (below): a transfer's time.
            StepAction::Remove(victim) if victim.id == leader => {
                timeouts.step_ms.min(TRANSFER_STEP_MS)
            }
            _ => timeouts.step_ms,
        };
        if now_ms.saturating_sub(self.step_started_ms) > limit {
            return Progress::Ended(Ended::TimedOut);
        }
        let in_joint = region
            .peers
            .iter()
            .any(|p| matches!(p.role(), PeerRole::IncomingVoter | PeerRole::DemotingVoter));
        let catching_up = match step {
            StepAction::Promote(peers) => peers.iter().any(|p| pending.contains(&p.id)),
            _ => false,
        };
        if in_joint || catching_up {
            return Progress::Wait;
        }
        if !self.still_fits(step, region) {
            // The membership changed under the operator (a manual change, an earlier
            // placement leader's operator): the step was planned for a Region that is no
            // more, and carried out now it could leave the Region short of voters, one
            // more loss from losing its quorum for good. The scheduler looks again.
            return Progress::Ended(Ended::Cancelled);
        }
        let action = match step {
            StepAction::Remove(victim) if victim.id == leader => {
                let others: Vec<&Peer> = region.voters().filter(|p| p.id != victim.id).collect();
                let successor = others.iter().find(|p| !pending.contains(&p.id)).or(others.first());
                match successor {
                    Some(successor) => StepAction::TransferLeader((*successor).clone()),
                    None => return Progress::Wait,
                }
            }
            step => step.clone(),
        };
        let epoch = region.epoch();
        let due = match &self.sent {
            None => true,
            Some((at, sent_epoch, sent_action)) => {
                *sent_epoch != epoch
                    || *sent_action != action
                    || now_ms.saturating_sub(*at) >= timeouts.resend_ms
            }
        };
        if !due {
            return Progress::Wait;
        }
        self.sent = Some((now_ms, epoch, action.clone()));
        Progress::Send(OperatorStep { region_id: self.region_id, epoch, action })
    }
}

impl Operator {
    /// Whether the current step, not yet done, still means what it meant when planned:
    /// a replica to remove has the role it was planned with (a learner removed must not
    /// be a voter by now), a voter is removed only while the Region has every voter the
    /// operator counted on (those it began with and those it promoted), and a learner to
    /// promote is still there (promoting a peer that is not would add an empty voter).
    fn still_fits(&self, step: &StepAction, region: &Region) -> bool {
        match step {
            StepAction::Remove(victim) => {
                let Some(now) = region.peer(victim.id) else { return true };
                if now.is_learner() != victim.is_learner() {
                    return false;
                }
                let promoted: usize = self.steps[..self.current]
                    .iter()
                    .map(|s| match s {
                        StepAction::Promote(peers) => peers.len(),
                        _ => 0,
                    })
                    .sum();
                victim.is_learner() || region.voters().count() >= self.voters + promoted
            }
            StepAction::Promote(peers) => peers.iter().all(|p| region.peer(p.id).is_some()),
            StepAction::AddLearner(_) | StepAction::TransferLeader(_) | StepAction::Merge(_) => {
                true
            }
        }
    }
}

/// Whether `step` shows as done in `region` led by `leader`.
fn done(step: &StepAction, region: &Region, leader: PeerId) -> bool {
    match step {
        StepAction::AddLearner(peer) => region.peer(peer.id).is_some(),
        StepAction::Promote(peers) => {
            peers.iter().all(|p| region.peer(p.id).is_some_and(|p| p.role() == PeerRole::Voter))
        }
        StepAction::Remove(peer) => region.peer(peer.id).is_none(),
        StepAction::TransferLeader(peer) => leader == peer.id,
        // Shows as the Region frozen (see `Operator::frozen`), or gone.
        StepAction::Merge(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(peers: Vec<Peer>, conf_ver: u64) -> Region {
        Region { id: 7, peers, conf_ver, version: 1, ..Default::default() }
    }

    const T: OperatorTimeouts = OperatorTimeouts { step_ms: 10_000, resend_ms: 1_000 };

    #[test]
    fn adding_a_replica_waits_for_the_learner_to_catch_up() {
        let start = region(vec![Peer::new(1, 1), Peer::new(2, 2)], 2);
        let mut op = Operator::add_replica(&start, 3, 30, 0);
        let Progress::Send(step) = op.observe(&start, 1, &[], 0, T) else { panic!("first step") };
        assert_eq!(step.action, StepAction::AddLearner(Peer::learner(30, 3)));
        assert!(step.applies_to(&start));
        assert_eq!(op.observe(&start, 1, &[], 100, T), Progress::Wait, "sent, not yet due");
        let with_learner = region(vec![Peer::new(1, 1), Peer::new(2, 2), Peer::learner(30, 3)], 3);
        assert!(!step.applies_to(&with_learner), "a late copy of the step is stale");
        assert_eq!(op.observe(&with_learner, 1, &[30], 200, T), Progress::Wait, "catching up");
        let Progress::Send(step) = op.observe(&with_learner, 1, &[], 300, T) else {
            panic!("promote once caught up")
        };
        assert_eq!(step.action, StepAction::Promote(vec![Peer::new(30, 3)]));
        let full = region(vec![Peer::new(1, 1), Peer::new(2, 2), Peer::new(30, 3)], 4);
        assert_eq!(op.observe(&full, 1, &[], 400, T), Progress::Ended(Ended::Finished));
    }

    #[test]
    fn a_leader_is_moved_before_its_replica_is_removed() {
        let start = region(vec![Peer::new(1, 1), Peer::new(2, 2), Peer::new(3, 3)], 2);
        let mut op = Operator::remove_replica(&start, Peer::new(1, 1), Some(Peer::new(2, 2)), 0);
        let Progress::Send(step) = op.observe(&start, 1, &[], 0, T) else { panic!("transfer") };
        assert_eq!(step.action, StepAction::TransferLeader(Peer::new(2, 2)));
        let Progress::Send(step) = op.observe(&start, 2, &[], 10, T) else { panic!("remove") };
        assert_eq!(step.action, StepAction::Remove(Peer::new(1, 1)));
        let left = region(vec![Peer::new(2, 2), Peer::new(3, 3)], 3);
        assert_eq!(op.observe(&left, 2, &[], 20, T), Progress::Ended(Ended::Finished));
    }

    #[test]
    fn a_moved_replica_is_added_promoted_then_the_old_one_removed_leader_last() {
        let start = region(vec![Peer::new(1, 1), Peer::new(2, 2), Peer::new(3, 3)], 2);
        let mut op = Operator::move_replica(&start, Peer::new(1, 1), 4, 40, 0);
        assert!(op.kind().balances());
        let Progress::Send(step) = op.observe(&start, 1, &[], 0, T) else { panic!("add") };
        assert_eq!(step.action, StepAction::AddLearner(Peer::learner(40, 4)));
        let learner = region(
            vec![Peer::new(1, 1), Peer::new(2, 2), Peer::new(3, 3), Peer::learner(40, 4)],
            3,
        );
        assert_eq!(op.observe(&learner, 1, &[40], 10, T), Progress::Wait, "catching up");
        let Progress::Send(step) = op.observe(&learner, 1, &[], 20, T) else { panic!("promote") };
        assert_eq!(step.action, StepAction::Promote(vec![Peer::new(40, 4)]));
        let four =
            region(vec![Peer::new(1, 1), Peer::new(2, 2), Peer::new(3, 3), Peer::new(40, 4)], 4);
        // The replica to remove leads: leadership moves first, to a caught-up voter.
        let Progress::Send(step) = op.observe(&four, 1, &[2], 30, T) else { panic!("move") };
        assert_eq!(step.action, StepAction::TransferLeader(Peer::new(3, 3)));
        assert_eq!(op.observe(&four, 1, &[2], 40, T), Progress::Wait, "sent, not yet due");
        // Once it has moved, the removal goes at once.
        let Progress::Send(step) = op.observe(&four, 3, &[], 50, T) else { panic!("remove") };
        assert_eq!(step.action, StepAction::Remove(Peer::new(1, 1)));
        let moved = region(vec![Peer::new(2, 2), Peer::new(3, 3), Peer::new(40, 4)], 5);
        assert_eq!(op.observe(&moved, 3, &[], 60, T), Progress::Ended(Ended::Finished));
    }

    #[test]
    fn a_move_does_not_remove_its_old_replica_once_the_region_lost_a_voter_otherwise() {
        let start = region(vec![Peer::new(1, 1), Peer::new(2, 2), Peer::new(3, 3)], 2);
        let mut op = Operator::move_replica(&start, Peer::new(2, 2), 4, 40, 0);
        let learner = region(
            vec![Peer::new(1, 1), Peer::new(2, 2), Peer::new(3, 3), Peer::learner(40, 4)],
            3,
        );
        assert!(matches!(op.observe(&start, 1, &[], 0, T), Progress::Send(_)));
        assert!(matches!(op.observe(&learner, 1, &[], 10, T), Progress::Send(_)), "promote");
        // Promoted while another change removed store 3's voter (a joint change did both).
        let short = region(vec![Peer::new(1, 1), Peer::new(2, 2), Peer::new(40, 4)], 5);
        assert_eq!(op.observe(&short, 1, &[], 20, T), Progress::Ended(Ended::Cancelled));
    }

    #[test]
    fn a_learner_s_removal_is_given_up_once_something_else_made_it_a_voter() {
        // Simulator seed 2007310: a stray learner's removal was planned; an admin's joint
        // change then promoted that learner and removed another voter; the removal, sent
        // again at the new epoch, left the Region two voters, and one node's loss later
        // took its quorum for good.
        let learner =
            region(vec![Peer::new(1, 1), Peer::new(2, 2), Peer::new(3, 3), Peer::learner(5, 4)], 1);
        let mut op = Operator::remove_replica(&learner, Peer::learner(5, 4), None, 0);
        assert!(matches!(op.observe(&learner, 1, &[], 0, T), Progress::Send(_)));
        let promoted = region(vec![Peer::new(1, 1), Peer::new(2, 2), Peer::new(5, 4)], 3);
        assert_eq!(op.observe(&promoted, 2, &[], 10, T), Progress::Ended(Ended::Cancelled));
    }

    #[test]
    fn a_voter_s_removal_is_given_up_once_another_voter_went() {
        let four =
            region(vec![Peer::new(1, 1), Peer::new(2, 2), Peer::new(3, 3), Peer::new(4, 4)], 4);
        let mut op = Operator::remove_replica(&four, Peer::new(4, 4), None, 0);
        assert!(matches!(op.observe(&four, 1, &[], 0, T), Progress::Send(_)));
        let three = region(vec![Peer::new(1, 1), Peer::new(2, 2), Peer::new(4, 4)], 5);
        assert_eq!(op.observe(&three, 1, &[], 10, T), Progress::Ended(Ended::Cancelled));
    }

    #[test]
    fn a_learner_removed_by_something_else_is_not_promoted() {
        let start = region(vec![Peer::new(1, 1), Peer::new(2, 2)], 2);
        let mut op = Operator::add_replica(&start, 3, 30, 0);
        assert!(matches!(op.observe(&start, 1, &[], 0, T), Progress::Send(_)));
        let with_learner = region(vec![Peer::new(1, 1), Peer::new(2, 2), Peer::learner(30, 3)], 3);
        assert!(matches!(op.observe(&with_learner, 1, &[], 10, T), Progress::Send(_)));
        // The learner is removed before the promotion lands: an empty voter would follow.
        let gone = region(vec![Peer::new(1, 1), Peer::new(2, 2)], 4);
        assert_eq!(op.observe(&gone, 1, &[], 20, T), Progress::Ended(Ended::Cancelled));
    }

    #[test]
    fn a_leader_transfer_is_given_up_sooner_than_a_data_step() {
        let start = region(vec![Peer::new(1, 1), Peer::new(2, 2)], 2);
        let slow = OperatorTimeouts { step_ms: 600_000, resend_ms: 1_000 };
        let mut op = Operator::transfer_leader(&start, Peer::new(2, 2), 0);
        assert!(matches!(op.observe(&start, 1, &[], 0, slow), Progress::Send(_)));
        let late = TRANSFER_STEP_MS + 1;
        assert_eq!(op.observe(&start, 1, &[], late, slow), Progress::Ended(Ended::TimedOut));
    }

    #[test]
    fn steps_are_sent_again_then_given_up_and_a_split_cancels() {
        let start = region(vec![Peer::new(1, 1), Peer::new(2, 2)], 2);
        let mut op = Operator::add_replica(&start, 3, 30, 0);
        assert!(matches!(op.observe(&start, 1, &[], 0, T), Progress::Send(_)));
        assert!(matches!(op.observe(&start, 1, &[], 1_000, T), Progress::Send(_)), "resent");
        assert_eq!(op.observe(&start, 1, &[], 10_001, T), Progress::Ended(Ended::TimedOut));
        let mut op = Operator::add_replica(&start, 3, 30, 0);
        let split = Region { version: 2, ..start };
        assert_eq!(op.observe(&split, 1, &[], 5, T), Progress::Ended(Ended::Cancelled));
    }

    #[test]
    fn a_merge_planned_against_an_older_target_is_known_as_such_until_frozen() {
        let source = region(vec![Peer::new(1, 1)], 1);
        let target = Region { id: 8, conf_ver: 1, version: 1, ..Default::default() };
        let op = Operator::merge(&source, &target, 0);
        assert!(!op.merge_target_moved(&source, &target));
        let repaired = Region { conf_ver: 2, ..target.clone() };
        assert!(op.merge_target_moved(&source, &repaired), "the target's replicas changed");
        let frozen = Region { version: 2, conf_ver: 2, ..source.clone() };
        assert!(!op.merge_target_moved(&frozen, &repaired), "frozen: the raftstore decides");
    }
}
