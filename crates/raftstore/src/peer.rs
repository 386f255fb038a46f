//! [`Peer`]: one replica of one Raft group, a raft-rs `RawNode` plus what waits on it:
//! proposals until they apply, reads until the leader has confirmed it still leads, and
//! the leader's lease.

use crate::command::RaftCommand;
use crate::error::RaftstoreError;
use crate::snapshot::SnapshotData;
use crate::storage::PeerStorage;
use crate::Callback;
use raft::{RawNode, StateRole};
use scandium_types::{Peer as PeerMeta, Region};
use std::collections::{BTreeSet, HashMap, VecDeque};

/// Raft timing and size settings shared by every group.
#[derive(Clone, Debug)]
pub struct RaftConfig {
    /// Milliseconds per tick (the driver's period; used for leases and timeouts).
    pub tick_ms: u64,
    /// Ticks without hearing from a leader before a follower campaigns. Followers that have
    /// heard from a leader within this many ticks refuse to vote for another, which is what
    /// makes a leader's lease safe.
    pub election_ticks: usize,
    /// Ticks of the randomised election timeout, at most (exclusive); 0 means twice
    /// `election_ticks` (raft-rs's default). A narrower range gives faster failover.
    pub max_election_ticks: usize,
    /// Ticks of the randomised election timeout, at least; 0 means `election_ticks`. With
    /// `max_election_ticks` one above it the timeout is fixed: raft-rs draws it from a
    /// thread-local generator, and the simulator gives each node its own fixed timeout
    /// (drawn from its seed) to keep runs reproducible. Never below `election_ticks`,
    /// which alone sets leases and vote refusal.
    pub min_election_ticks: usize,
    /// Ticks between leader heartbeats.
    pub heartbeat_ticks: usize,
    /// Largest encoded command accepted for proposal, in bytes.
    pub max_entry_bytes: u64,
    /// Applied entries kept in the log before it is truncated.
    pub log_gc_threshold: u64,
    /// Entries a leader keeps for lagging followers at most; past it (or past
    /// `max_log_bytes`) it truncates anyway and sends them a snapshot. Large enough that
    /// a busy Region's log outlasts a snapshot's install (see the server's
    /// `raft_log_max_entries`).
    pub max_log_entries: u64,
    /// Bytes a leader keeps for lagging followers at most; see `max_log_entries`.
    pub max_log_bytes: u64,
    /// Where received snapshots wait to be installed, one file each; `None`: in the
    /// engine (in-memory engines have no directory). See [`crate::snapshot::Stager`].
    pub snapshot_dir: Option<std::path::PathBuf>,
    /// Whether a snapshot staged in a file is ingested on the Raft loop's own thread, in
    /// one step, instead of on a thread of its own that the loop looks in on. The
    /// simulator's choice: it runs every node on one thread, so that a seed replays the
    /// same; a server leaves it off, and its other Regions' rounds go on meanwhile.
    pub ingest_inline: bool,
    /// Whether the store checks, each time it is asked for work, that every replica
    /// with work is one it will visit (an O(replicas) walk): on in debug builds and in
    /// the simulator, where a missed mark fails the run that made it.
    pub check_invariants: bool,
    /// Not 0: the store beats (see [`crate::liveness`]) with this number, which must
    /// change when the node restarts (the server uses the wall-clock millisecond it
    /// started at). 0: no beats, and other stores' beats are only counted.
    pub incarnation: u64,
    /// Ticks a group's leader must be idle for before it asks its followers to hibernate
    /// (see the `hibernate` module); 0: groups never hibernate. More than `election_ticks`,
    /// so that every lease has run out first.
    pub hibernate_after_ticks: usize,
    /// Breaks hibernation on purpose, for the simulator to show that it catches it: a
    /// leader going to sleep grants itself a lease that never ends, and serves reads from
    /// it while another leader may have been elected.
    pub unsafe_sleeping_lease: bool,
    /// Breaks merges on purpose, for the simulator to show that it catches it: a Region
    /// frozen for a merge goes on serving reads (from its lease), while the target that
    /// absorbs it may already take writes of its keys.
    pub unsafe_frozen_reads: bool,
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            tick_ms: 100,
            election_ticks: 10,
            max_election_ticks: 0,
            min_election_ticks: 0,
            heartbeat_ticks: 2,
            max_entry_bytes: 8 << 20,
            log_gc_threshold: 256,
            max_log_entries: 65_536,
            max_log_bytes: 64 << 20,
            snapshot_dir: None,
            ingest_inline: false,
            check_invariants: cfg!(debug_assertions),
            incarnation: 0,
            hibernate_after_ticks: 0,
            unsafe_sleeping_lease: false,
            unsafe_frozen_reads: false,
        }
    }
}

impl RaftConfig {
    /// How long a leader may serve reads after a quorum accepted something it sent: the
    /// election timeout less two ticks (one for a follower's tick that may come right
    /// after it heard from the leader, one for clock drift and scheduling delays).
    pub fn lease_ms(&self) -> u64 {
        (self.election_ticks as u64).saturating_sub(2) * self.tick_ms
    }

    /// The election timeout in milliseconds (the shortest one).
    pub fn election_ms(&self) -> u64 {
        self.election_ticks as u64 * self.tick_ms
    }
}

pub(crate) struct Proposal {
    pub index: u64,
    pub term: u64,
    pub callback: Callback,
    /// The proposed data command, applied instead of decoding the entry.
    pub command: Option<RaftCommand>,
    /// When it was proposed (store clock); its commit proves leadership until then plus
    /// the lease.
    pub proposed_ms: u64,
}

/// Runs once a read may be served from the leader's state machine (or cannot be).
pub type ReadCallback = Box<dyn FnOnce(Result<(), RaftstoreError>) + Send>;

/// A ReadIndex round in flight: the reads that asked before it was sent.
pub(crate) struct PendingRead {
    pub context: u64,
    pub issued_ms: u64,
    /// The commit index the leader confirmed, once a quorum answered.
    pub index: Option<u64>,
    pub callbacks: Vec<ReadCallback>,
}

/// One replica of a Raft group on this store.
pub struct Peer {
    pub(crate) raw: RawNode<PeerStorage>,
    /// The Region as applied here (for the placement group: a pseudo-Region naming members).
    pub(crate) region: Region,
    pub(crate) meta: PeerMeta,
    /// False for a replica created by a leader's message, until its snapshot arrives.
    pub(crate) initialized: bool,
    /// In proposing order, hence by term and then index.
    pub(crate) proposals: VecDeque<Proposal>,
    /// When this replica stopped leading with proposals still waiting (store clock).
    pub(crate) deposed_ms: Option<u64>,
    /// Until when (store clock) this leader may serve reads without asking a quorum.
    pub(crate) lease_until_ms: u64,
    /// A term in which this leader sent a TimeoutNow: it holds no lease for the rest of
    /// that term (0: none). The message lets its receiver be elected at once whenever it
    /// arrives, even after the transfer was given up, so no span of time is safe.
    pub(crate) lease_barred_term: u64,
    /// Reads waiting for the next ReadIndex round.
    pub(crate) read_batch: Vec<ReadCallback>,
    pub(crate) reads: VecDeque<PendingRead>,
    pub(crate) next_read_context: u64,
    /// The data of a snapshot being delivered, for the Ready that installs it.
    pub(crate) pending_snapshot: Option<SnapshotData>,
    /// A snapshot whose Raft state is installed and whose data is going in, step by step:
    /// until it is all in, the replica takes no message, tick or read.
    pub(crate) installing: Option<Box<crate::snapshot::Install>>,
    /// Entries committed in the round that installed a snapshot's Raft state, applied
    /// once its data is in.
    pub(crate) deferred: Vec<raft::prelude::Entry>,
    /// This replica's answers from the round that installed a snapshot's Raft state, sent
    /// once its data is in: raft-rs acknowledges a snapshot as soon as its Raft state is
    /// persisted, and a leader that heard it counted a new learner as caught up and had
    /// it promoted while it still wrote the data for seconds, answering nothing; with
    /// one more member slow, the leader lost its quorum (3 -> 5 nodes under load, a
    /// removal's drain: 7.5 s installs, leaders stepping down, client errors).
    pub(crate) held_answers: Vec<raft::prelude::Message>,
    /// Votes are refused until the store's clock reaches this (a restarted replica may
    /// have forgotten that it heard from a leader, whose lease it must still respect).
    pub(crate) votes_refused_until_ms: u64,
    /// Peers of other stores learnt from their messages that are not members as far as
    /// this replica knows (it has not applied the configuration that added them, or does
    /// not know its Region yet), so that it can answer them. A configuration change that
    /// adds or removes one drops it.
    pub(crate) known_peers: HashMap<u64, PeerMeta>, // lookups only
    /// When each other member was last heard from (store clock, milliseconds): how a
    /// leader tells a reachable follower. Not raft-rs's `recent_active`, which check-quorum
    /// resets for every follower once per election timeout, so that right after each
    /// reset a healthy group looks unreachable until the next answers arrive.
    pub(crate) heard_ms: HashMap<u64, u64>, // lookups only
    /// A sleeping leader's followers that acknowledged its last request to sleep: caught
    /// up when they slept, they count as heard from when it wakes (see `Peer::wake`).
    pub(crate) slept_with: std::collections::BTreeSet<u64>,
    /// Snapshots this leader delivered to followers: the snapshot's index and when it was
    /// delivered (store clock). A follower answers nothing while it installs one, so the
    /// leader keeps the log after the index for a while though it does not hear from it.
    pub(crate) snapshots_delivered: HashMap<u64, (u64, u64)>, // lookups only
    /// A split proposed by this leader and not yet applied here, by its index: until then
    /// every commit-index advance is sent to the followers at once.
    broadcast_commit_until: Option<u64>,
    /// The Region's size and write traffic as this replica applied it.
    pub(crate) stats: crate::stats::RegionStats,
    /// Set once the replica is removed from its Region but still votes (see
    /// [`crate::linger`]); it is then not `initialized`: it holds no data and serves nothing.
    pub(crate) lingering: Option<crate::linger::Lingering>,
    /// Where it is in hibernation (see the `hibernate` module).
    pub(crate) sleep: Sleep,
    /// Set while the Region is frozen to merge into a neighbour (see [`crate::merge`]):
    /// it takes no proposal and serves no read.
    pub(crate) merging: Option<Box<crate::merge::MergeState>>,
    /// Not 0: the Region that absorbed this replica's Region in a merge it slept through,
    /// as a member that was absorbed told it: a snapshot of that Region replaces it.
    pub(crate) absorbed_by: u64,
    /// `RaftConfig::unsafe_frozen_reads`.
    serves_frozen: bool,
}

impl Peer {
    pub(crate) fn new(
        storage: PeerStorage,
        region: Region,
        meta: PeerMeta,
        initialized: bool,
        config: &RaftConfig,
        logger: &slog::Logger,
    ) -> Result<Peer, RaftstoreError> {
        let min_election = config.min_election_ticks.max(config.election_ticks);
        let max_election = match config.max_election_ticks {
            0 => 2 * config.election_ticks,
            n => n,
        }
        .max(min_election + 1);
        let raft_config = raft::Config {
            id: meta.id,
            election_tick: config.election_ticks,
            min_election_tick: min_election,
            max_election_tick: max_election,
            heartbeat_tick: config.heartbeat_ticks,
            applied: storage.apply_state().applied_index,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        let logger = logger.new(slog::o!("group" => region.id, "peer" => meta.id));
        let mut raw = RawNode::new(&raft_config, storage, &logger)
            .map_err(|e| RaftstoreError::InvalidCommand(format!("cannot start raft peer: {e}")))?;
        // No message of its own for every commit-index advance: followers learn it from
        // the next append or heartbeat (as TiKV runs raft-rs). Halves a leader's messages
        // under load; only followers' apply, which nothing waits on, is later. Except in the
        // placement group, whose every replica answers placement questions from its own
        // state (a client may ask any node where a new Region is) and whose commands are
        // few.
        raw.skip_bcast_commit(quiet_commits(region.id));
        // Entries proposed while an append is queued for a follower join that append.
        raw.set_batch_append(true);
        Ok(Peer {
            raw,
            region,
            meta,
            initialized,
            proposals: VecDeque::new(),
            deposed_ms: None,
            lease_until_ms: 0,
            lease_barred_term: 0,
            read_batch: Vec::new(),
            reads: VecDeque::new(),
            next_read_context: 0,
            pending_snapshot: None,
            installing: None,
            deferred: Vec::new(),
            held_answers: Vec::new(),
            votes_refused_until_ms: 0,
            known_peers: HashMap::new(),
            heard_ms: HashMap::new(),
            slept_with: Default::default(),
            snapshots_delivered: HashMap::new(),
            broadcast_commit_until: None,
            stats: crate::stats::RegionStats::default(),
            lingering: None,
            sleep: Sleep::default(),
            merging: None,
            absorbed_by: 0,
            serves_frozen: config.unsafe_frozen_reads,
        })
    }

    /// Whether this replica is the group's leader.
    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// Whether the leader has applied an entry of its own term, and therefore everything
    /// committed before it: only then do reads from its state machine see every
    /// acknowledged write. A Region frozen for a merge serves none: once the target has
    /// absorbed it, its keys are written there.
    pub fn ready_for_reads(&self) -> bool {
        self.is_leader()
            && self.raw.store().apply_state().applied_term == self.raw.raft.term
            && (self.merging.is_none() || self.serves_frozen)
    }

    /// Whether it serves reads while frozen for a merge (a breakage: see
    /// `RaftConfig::unsafe_frozen_reads`).
    pub(crate) fn serves_frozen(&self) -> bool {
        self.serves_frozen
    }

    /// The leader's peer, if known.
    pub fn leader(&self) -> Option<PeerMeta> {
        self.peer_by_id(self.raw.raft.leader_id)
    }

    /// A member (or a peer known from its messages) by Raft id.
    /// Whether the followers have learnt of every commit a split needs them to (see
    /// `broadcast_commit_until`).
    pub(crate) fn broadcast_commit_done(&self) -> bool {
        self.broadcast_commit_until.is_none()
    }

    pub(crate) fn peer_by_id(&self, id: u64) -> Option<PeerMeta> {
        if id == self.meta.id {
            return Some(self.meta.clone());
        }
        self.region.peer(id).cloned().or_else(|| self.known_peers.get(&id).cloned())
    }

    /// Whether this replica is the only voter: then nobody else can be elected and its
    /// reads need no lease.
    pub(crate) fn sole_voter(&self) -> bool {
        let cs = self.raw.store().conf_state();
        cs.voters == [self.meta.id]
            && (cs.voters_outgoing.is_empty() || cs.voters_outgoing == [self.meta.id])
    }

    /// Until when this leader may serve reads locally (0 = it may not).
    pub fn lease_until_ms(&self) -> u64 {
        if !self.ready_for_reads() {
            0
        } else if self.sole_voter() {
            u64::MAX
        } else {
            self.lease_until_ms
        }
    }

    /// Extends the lease: a quorum accepted something this leader sent at `sent_ms`.
    pub(crate) fn renew_lease(&mut self, sent_ms: u64, lease_ms: u64) {
        if self.is_leader()
            && self.raw.raft.lead_transferee.is_none()
            && self.lease_barred_term != self.raw.raft.term
        {
            self.lease_until_ms = self.lease_until_ms.max(sent_ms + lease_ms);
        }
    }

    /// Looks at what this replica is about to send: a TimeoutNow ends its lease for the
    /// term. Returns whether it did.
    pub(crate) fn note_outgoing(&mut self, messages: &[raft::prelude::Message]) -> bool {
        let handing_over =
            messages.iter().any(|m| m.get_msg_type() == raft::prelude::MessageType::MsgTimeoutNow);
        if handing_over {
            self.lease_until_ms = 0;
            self.lease_barred_term = self.raw.raft.term;
        }
        handing_over
    }

    /// The answer to a request this replica cannot take as leader. It names the leader
    /// if that is another replica, never itself: a leader that drops a proposal (raft-rs
    /// does while it hands leadership over) would send tikv-client straight back, which
    /// follows a hint without sleeping and spent all its attempts in a few milliseconds
    /// (hundreds of failed puts each time the balancer moved a leader).
    pub(crate) fn not_leader(&self) -> RaftstoreError {
        let leader = self.leader().filter(|l| l.id != self.meta.id);
        RaftstoreError::NotLeader { region_id: self.region.id, leader }
    }

    pub(crate) fn propose(
        &mut self,
        data: Vec<u8>,
        command: Option<RaftCommand>,
        callback: Callback,
        now_ms: u64,
    ) {
        self.propose_with_context(Vec::new(), data, command, callback, now_ms)
    }

    /// Proposes an entry whose context is `context` (see [`crate::merge`]).
    pub(crate) fn propose_with_context(
        &mut self,
        context: Vec<u8>,
        data: Vec<u8>,
        command: Option<RaftCommand>,
        callback: Callback,
        now_ms: u64,
    ) {
        if !self.is_leader() {
            return callback(Err(self.not_leader()));
        }
        let before = self.raw.raft.raft_log.last_index();
        if let Err(e) = self.raw.propose(context, data) {
            tracing::debug!(group = self.region.id, error = %e, "proposal dropped");
            return callback(Err(self.not_leader()));
        }
        let index = self.raw.raft.raft_log.last_index();
        if index == before {
            return callback(Err(self.not_leader()));
        }
        let term = self.raw.raft.term;
        if command.as_ref().is_some_and(|c| c.is_split() || c.prepare_merge.is_some()) {
            // The followers must apply a split before the new Region's leader can replicate
            // anything to them: tell them of its commit at once, not at the next heartbeat.
            // Likewise a merge's prepare: its leader may be absorbed before it heartbeats
            // again, and a follower that learns of the freeze itself needs no catching up.
            self.raw.skip_bcast_commit(false);
            self.broadcast_commit_until = Some(index);
        }
        self.proposals.push_back(Proposal { index, term, callback, command, proposed_ms: now_ms });
    }

    /// Hands a proposal to the group's leader through this follower: raft-rs forwards it
    /// in a message, which may be lost, and nothing answers. For the commit of a merge
    /// only, whose outcome shows in the target's epoch and which is proposed again until
    /// then.
    pub(crate) fn forward_proposal(&mut self, context: Vec<u8>, data: Vec<u8>) {
        if let Err(e) = self.raw.propose(context, data) {
            tracing::debug!(group = self.region.id, error = %e, "forwarded proposal dropped");
        }
    }

    /// Back to learning commits from the next append or heartbeat once the split that
    /// needed them broadcast is applied here.
    pub(crate) fn after_apply(&mut self, applied: u64) {
        if self.broadcast_commit_until.is_some_and(|index| applied >= index) {
            self.broadcast_commit_until = None;
            self.raw.skip_bcast_commit(quiet_commits(self.region.id));
        }
    }

    /// Takes the proposal of entry `(index, term)`, which has just been committed and is
    /// being applied, and fails those it proves can never commit: a proposal at or below
    /// `index` that is not this entry, or one of an older term (every entry committed
    /// after this one has a term at least `term`). The queue is in proposing order, so
    /// by term and then index: only its front needs looking at. An index and a term
    /// name one entry, so the proposal's command is the entry's.
    ///
    /// Proposals are answered here and nowhere else while their outcome can still be
    /// learnt, even by a replica that has stopped leading: an error would make a client
    /// retry a command that may yet commit, and apply it twice.
    pub(crate) fn take_proposal(&mut self, index: u64, term: u64) -> Option<Proposal> {
        while let Some(front) = self.proposals.front() {
            let matched = front.index == index && front.term == term;
            if !matched && front.index > index && front.term >= term {
                return None;
            }
            let proposal = self.proposals.pop_front()?;
            if matched {
                return Some(proposal);
            }
            (proposal.callback)(Err(RaftstoreError::StaleCommand));
        }
        None
    }

    /// A snapshot up to entry `(index, term)` replaced the log. Proposals it covers fail
    /// with an unknown outcome (which entries it holds is not known here); later ones of
    /// an older term can never commit (every entry after the snapshot's has a term at
    /// least `term`); the rest wait on.
    pub(crate) fn on_snapshot_installed(&mut self, index: u64, term: u64) {
        let region_id = self.region.id;
        for proposal in std::mem::take(&mut self.proposals) {
            let error = if proposal.index <= index {
                RaftstoreError::OutcomeUnknown { region_id }
            } else if proposal.term < term {
                RaftstoreError::StaleCommand
            } else {
                self.proposals.push_back(proposal);
                continue;
            };
            (proposal.callback)(Err(error));
        }
    }

    /// This replica stopped leading at `now_ms`: its reads fail, its proposals wait to
    /// learn their outcome from the next leader (see [`Peer::expire_proposals`]).
    pub(crate) fn on_deposed(&mut self, now_ms: u64) {
        self.lease_until_ms = 0;
        if !self.proposals.is_empty() && self.deposed_ms.is_none() {
            self.deposed_ms = Some(now_ms);
        }
        let leader = self.leader();
        let region_id = self.region.id;
        self.fail_reads(&|| RaftstoreError::NotLeader { region_id, leader: leader.clone() });
    }

    /// Gives up on the proposals of a replica that stopped leading more than `timeout_ms`
    /// ago and has not learnt their outcome (it hears no leader, or no leader commits
    /// past them): they fail with an unknown outcome rather than hold their callers.
    pub(crate) fn expire_proposals(&mut self, now_ms: u64, timeout_ms: u64) {
        if self.is_leader() || self.proposals.is_empty() {
            self.deposed_ms = None;
            return;
        }
        if self.deposed_ms.is_some_and(|since| since + timeout_ms <= now_ms) {
            self.deposed_ms = None;
            let region_id = self.region.id;
            for proposal in self.proposals.drain(..) {
                (proposal.callback)(Err(RaftstoreError::OutcomeUnknown { region_id }));
            }
        }
    }

    /// Fails every pending proposal and read (the peer is going away).
    pub(crate) fn fail_all(&mut self, error: impl Fn() -> RaftstoreError) {
        for proposal in self.proposals.drain(..) {
            (proposal.callback)(Err(error()));
        }
        self.fail_reads(&error);
    }

    pub(crate) fn fail_reads(&mut self, error: &impl Fn() -> RaftstoreError) {
        for callback in self.read_batch.drain(..) {
            callback(Err(error()));
        }
        for read in self.reads.drain(..) {
            for callback in read.callbacks {
                callback(Err(error()));
            }
        }
    }

    /// Sends one ReadIndex round for the reads batched since the last one.
    pub(crate) fn flush_reads(&mut self, now_ms: u64) {
        if self.read_batch.is_empty() {
            return;
        }
        if !self.ready_for_reads() {
            for callback in std::mem::take(&mut self.read_batch) {
                callback(Err(self.not_leader()));
            }
            return;
        }
        self.next_read_context += 1;
        let context = self.next_read_context;
        self.raw.read_index(context.to_be_bytes().to_vec());
        let callbacks = std::mem::take(&mut self.read_batch);
        self.reads.push_back(PendingRead { context, issued_ms: now_ms, index: None, callbacks });
    }

    /// Records the commit indexes a quorum confirmed for ReadIndex rounds.
    pub(crate) fn on_read_states(&mut self, states: Vec<raft::ReadState>) {
        for state in states {
            let Ok(bytes) = <[u8; 8]>::try_from(state.request_ctx.as_slice()) else { continue };
            let context = u64::from_be_bytes(bytes);
            if let Some(read) = self.reads.iter_mut().find(|r| r.context == context) {
                read.index = Some(state.index);
            }
        }
    }

    /// Answers the reads whose confirmed index has been applied; renews the lease.
    pub(crate) fn complete_reads(&mut self, lease_ms: u64) {
        let applied = self.raw.store().apply_state().applied_index;
        while let Some(read) = self.reads.front() {
            match read.index {
                Some(index) if index <= applied => {}
                _ => break,
            }
            let read = self.reads.pop_front().expect("checked non-empty");
            self.renew_lease(read.issued_ms, lease_ms);
            for callback in read.callbacks {
                callback(Ok(()));
            }
        }
    }

    /// Fails ReadIndex rounds older than `timeout_ms` (raft-rs drops some silently).
    pub(crate) fn expire_reads(&mut self, now_ms: u64, timeout_ms: u64) {
        while self.reads.front().is_some_and(|r| r.issued_ms + timeout_ms < now_ms) {
            let read = self.reads.pop_front().expect("checked non-empty");
            for callback in read.callbacks {
                callback(Err(RaftstoreError::StaleCommand));
            }
        }
    }

    pub(crate) fn has_pending_work(&self) -> bool {
        !self.read_batch.is_empty()
    }
}

/// Whether a group's followers learn of commits only from the next append or heartbeat.
fn quiet_commits(group_id: u64) -> bool {
    group_id != crate::META_GROUP_ID
}

/// Where a replica is in hibernation (see the `hibernate` module).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Sleep {
    /// Ticking. A leader counts the ticks it has been idle for, and the last index it saw.
    Awake { idle_ticks: usize, last_index: u64 },
    /// A leader that asked its followers to sleep at `term` and `index`, in its store's
    /// request `round`, `ticks` ago, and has the acknowledgements of `acked`. It does not
    /// tick meanwhile.
    Asking { term: u64, index: u64, round: u64, acked: BTreeSet<u64>, ticks: usize },
    /// Not ticking, until something wakes it.
    Asleep,
}

impl Default for Sleep {
    fn default() -> Self {
        Sleep::Awake { idle_ticks: 0, last_index: 0 }
    }
}

impl Sleep {
    /// Whether the replica ticks.
    pub(crate) fn is_awake(&self) -> bool {
        matches!(self, Sleep::Awake { .. })
    }
}
