//! The simulator's own guarantees: a seed replays byte for byte, a fixed set of seeds
//! under every fault finds no anomaly, and the checks it runs do catch a wrong answer.

use scandium_sim::check::elle::Outcome;
use scandium_sim::run::{check_history, run, Request, RunConfig, RunReport};

/// Transactions of a run that committed (the final read of every list not counted).
fn committed(report: &RunReport) -> usize {
    let n = report.transactions.iter().filter(|t| t.outcome == Outcome::Committed).count();
    n.saturating_sub(1)
}

/// Seeds every CI run covers. A failing seed prints the command that replays it.
const CI_SEEDS: u64 = 24;

#[test]
fn a_seed_replays_byte_for_byte() {
    let config = RunConfig { duration_ms: 10_000, ..RunConfig::default() };
    let first = run(7, &config);
    let second = run(7, &config);
    assert!(first.history.len() > 100, "the run did something: {} operations", first.history.len());
    assert!(first.timestamps.len() > 100, "timestamps were asked for");
    assert!(committed(&first) > 30, "transactions committed: {}", committed(&first));
    assert_eq!(first.faults, second.faults);
    assert_eq!(first.history_text(), second.history_text());
    assert_eq!(first.messages, second.messages);
    let other = run(8, &config);
    assert_ne!(first.history_text(), other.history_text(), "the seed matters");
}

#[test]
fn fixed_seeds_under_faults_find_no_anomaly() {
    let config = RunConfig::default();
    let mut failed = Vec::new();
    for seed in 0..CI_SEEDS {
        let report = run(seed, &config);
        let completed = report.history.iter().filter(|op| op.complete.is_some()).count();
        assert!(completed > 50, "seed {seed}: only {completed} operations completed");
        let txns = committed(&report);
        assert!(txns > 20, "seed {seed}: only {txns} transactions committed");
        if !report.anomalies.is_empty() {
            eprintln!("seed {seed}: {:#?}\nfaults: {:#?}", report.anomalies, report.faults);
            eprintln!("replay: cargo run --release -p scandium-sim -- --seed {seed} --verbose");
            failed.push(seed);
        }
    }
    assert!(failed.is_empty(), "seeds with anomalies: {failed:?}");
}

/// Seeds that once failed, kept as regression tests; each names what it found.
#[test]
fn seeds_that_found_bugs_pass() {
    // 7582: a transaction whose first commit of the primary went unanswered (it had been
    // applied) was refused on the retry by a deposed leader that never saw the prewrite,
    // and the simulated client counted it aborted while readers saw its appends (G1a).
    // A refusal after a lost attempt now leaves the transaction indeterminate. 16303,
    // 26948 and 27383: the same, found by the same sweep.
    //
    // 66: a leader paused with writes in flight was deposed when it resumed and caught
    // up by a snapshot; it answered its writes "stale" (not applied), although the next
    // leader had committed them, and readers saw values whose writes a client would
    // have retried. (Until then every deposed leader failed its writes as "not leader":
    // 137 of seeds 0..200 read such a value once a refused write counted as not
    // applied, seeds 0, 2 and 3 among those CI runs.) A snapshot now leaves the writes
    // it covers with an unknown outcome. Seeds 3 and 11 found the same.
    //
    // 633: a compare-and-swap reached a leader that had been paused and was deposed,
    // which compared against its old state, found the swap failed, proposed nothing and
    // answered "not swapped" with a value the new leader had overwritten (a stale read).
    // The server compared after `check_context` alone; it now waits for a linearizable
    // read (lease or ReadIndex) first, as a get does.
    //
    // 637: the scheduler removed a voter on a Down store with nowhere to put a
    // replacement, leaving the Region two voters; losing one more store for good left it
    // with no quorum for ever, though the Down store had come back. A Down store no
    // longer lowers the number of voters wanted. Seeds 781, 1345, 10402, 10671, 10674,
    // 10779, 11384 and 11516 failed the same way (11169, whose replicas disagreed after
    // healing because one never caught up, passes since, maybe only as another run).
    //
    // 11631: a node that led placement, lost it, and led again used a peer id it had
    // been given in its first term for the placement group's new learner; meanwhile the
    // other leader had given that store higher ids of the group, so the store refused the
    // learner for ever, and a drained store was never retired. Ids are now used only in
    // the term they were asked for.
    //
    // 2007310: a new placement leader planned the removal of a stray learner; an
    // administrator's joint change then promoted that learner and removed another voter;
    // the removal, sent again at the Region's new epoch, took a voter, and a node lost
    // for good later took the two left's quorum. An operator whose step no longer means
    // what it was planned for is now cancelled.
    //
    // 7007776: the placement group had four voters during a move; the removal of one
    // committed with that one's own acknowledgement, and it applied it and destroyed its
    // replica while one voter that stays held the entry uncommitted and the other lacked
    // it; the leader was lost next, and the two survivors, still in the four-voter
    // configuration, could never gather three votes. A removed replica now keeps voting
    // until every voter that stays has applied its removal (`raftstore::linger`).
    // 7010532: found by the same sweep, passes since the same change.
    //
    // 70000048: a merge's source leader truncated its log past a follower it no longer
    // heard between proposing the prepare and applying it; the store where the target led
    // could not build the commit from its source replica's log, and the source stayed
    // frozen for ever. No replica now truncates past an unapplied prepare's `min_index`.
    //
    // 71000104, 71001423: a source replica that slept through its merge waited for its
    // target's replica here to absorb it, but that replica had got past the merge by a
    // snapshot that did not cover the source (the target split after it); the source's
    // range blocked the snapshot of the Region split off for ever. Such a replica now
    // gives way to any snapshot once the target here cannot absorb it (71000104), and
    // targets record the merges they absorbed, in their snapshots too (71001423).
    //
    // 1498 (twelfth session, once faults were aimed at merges): a target whose apply
    // waited at a merge's commit for its source replica took its next Ready with
    // `advance`, which counted the entries held back as applied, and reporting the real
    // applied index then panicked in raft-rs. And the source replica could not be caught
    // up: a crash had lost its apply of a promotion just before the prepare, and its group
    // was absorbed before anyone told it the commit again; catching up refused membership
    // changes. Rounds now report the applied index as it is, and a catch-up applies
    // membership changes (the prepare was proposed at the epoch they made).
    //
    // 95007903 (fourteenth session's sweep): a stale refusal of an append moved a source
    // follower's next index below its match, and the leader sent it a snapshot it did not
    // need, past the prepare's `min_index`; its store led the target and could not build
    // the commit, and no other store proposed one, so the source stayed frozen for ever.
    // Leaders now drop such refusals, and any store whose source replica holds the
    // entries proposes the commit, through a follower of the target, after a wait.
    //
    // 98002613 (fifteenth session's sweep): a voter removed while it was a candidate
    // lingered (its data deleted, its Raft state kept for its votes) and then won its
    // election; leading with no data, it sent a follower a snapshot with no records at
    // its index, and that follower lost the Region's older versions: its replica's Write
    // column disagreed with the others' at the same applied index. A lingering replica
    // now steps down from any role and gives no snapshot.
    //
    // 114000031 (sixteenth session's sweep): a repair's learner caught up while its
    // Region hibernated, its progress left in probe by raft-rs; the new rule that a
    // learner is promoted only once caught up asked for replication, and refused the
    // promotion for good. A probing follower whose match is near the end counts now.
    //
    // 116004084 (the same sweep, after): a drained store was never retired, held by the
    // last report of a Region merged away, which stays until the next placement leader
    // change; the new rule that a report showing a replica there holds the store now
    // counts only Regions still recorded.
    //
    // 131000190 (seventeenth session's sweep): a frozen source replaced by the snapshot
    // of a piece split off its target recorded that piece as what absorbed it; the new
    // refusal of a Region's snapshot that lacks a merge recorded into it here then refused
    // every snapshot of the piece, and a Region whose only other live voter was that
    // replica never caught up. The tombstone now records the target the prepare named.
    //
    // 135000619 (the same sweep, after the review fixes): merges in a cascade, on a store
    // that slept through both: the middle Region's replica had its own merge's commit in
    // its log, not known committed, when the last target's commit came to catch it up; a
    // catch-up applies no merge, and the first source had gone (its target was known
    // absorbed, so it counted as unable to absorb it). The replica now applies its own
    // log first (the commit proves it committed), and a target absorbed in turn may still
    // absorb its source while its own absorber here may catch it up.
    //
    // (The workload has changed since the older seeds failed, so they no longer steer a
    // run into the same corner; they stay as seeds that must pass.)
    let seeds: &[u64] = &[
        7582, 16303, 26948, 27383, 66, 633, 637, 11631, 2007310, 7007776, 7010532, 70000048,
        71000104, 71001423, 1498, 95007903, 98002613, 114000031, 116004084, 131000190, 135000619,
    ];
    for &seed in seeds {
        let report = run(seed, &RunConfig::default());
        assert!(report.anomalies.is_empty(), "seed {seed}: {:#?}", report.anomalies);
    }
    // 426 of 60 s runs with registers only, found by a search for `--unsafe-frozen-reads`
    // (which it does not catch): a frozen source replica learnt its Region was absorbed
    // while the target had no replica on its store yet, and went; the target's replica,
    // created by its split there afterwards, then found the merge's commit in its log and
    // waited for the source for ever, as the leader. A source replica with no target's
    // replica beside it now stays until one absorbs it or a snapshot replaces it.
    //
    // 621 of the same runs (thirteenth session): a source moved a replica to its
    // neighbour's store and the balancer moved it back, over and over, for two sources
    // at once, and the cluster did not settle with a Region of four voters. A merge now
    // comes before balancing, and a Region a neighbour is joining is left alone.
    let config = RunConfig { unsafe_frozen_reads: true, duration_ms: 60_000, ..registers_only() };
    for seed in [426, 621] {
        let report = run(seed, &config);
        let stuck = report.anomalies.iter().find(|a| a.contains("did not settle"));
        assert!(stuck.is_none(), "seed {seed}: {stuck:?}");
    }
}

#[test]
fn without_faults_nothing_is_indeterminate_and_every_read_is_served() {
    // Commits in 5 s vary with the seed's draws of keys and kinds of transaction, and
    // since Regions split as the run goes, with how many transactions span two of them
    // (two prewrites, no one-phase commit): 57 a seed over seeds 0..30 at the time of
    // writing, 91 without splits; seed 0 gives 24 list-append commits.
    let config = RunConfig { faults: false, duration_ms: 5_000, ..RunConfig::default() };
    let report = run(0, &config);
    assert!(report.anomalies.is_empty(), "{:?}", report.anomalies);
    // Writes refused before they did anything (the gate refused them) are left out.
    let writes: Vec<_> =
        report.history.iter().filter(|op| op.request != Request::Get && !op.refused).collect();
    assert!(writes.len() > 50);
    let lost = writes.iter().filter(|op| op.complete.is_none()).count();
    // Only the writes still in flight when the load stopped may lack an answer.
    assert!(lost <= 5, "{lost} writes unanswered without faults");
    let unknown =
        report.transactions.iter().filter(|t| t.outcome == Outcome::Indeterminate).count();
    assert_eq!(unknown, 0, "no transaction is indeterminate without faults");
    let aborted = report.transactions.iter().filter(|t| t.outcome == Outcome::Aborted).count();
    assert!(committed(&report) > 20, "committed {} aborted {aborted}", committed(&report));
}

#[test]
fn transactions_without_latches_are_caught() {
    // Two commands deciding on the same state before either applies: a prewrite
    // overwrites another transaction's lock, and a committed append is lost.
    let config = RunConfig { unsafe_latches: true, duration_ms: 5_000, ..RunConfig::default() };
    let caught = (0..10).find(|&seed| !run(seed, &config).anomalies.is_empty());
    assert!(caught.is_some(), "no seed of 0..10 caught transactions without latches");
}

#[test]
fn async_commit_without_max_ts_sync_is_caught() {
    // A new leader that does not raise max_ts before an async-commit or 1PC prewrite may
    // commit below a snapshot the old leader served without the transaction's locks: a
    // later transaction reading at that snapshot overwrites the list without its append.
    // Seeds 35 and 46 are the first two that catch it since the sixteenth session's
    // review fixes (still so after the seventeenth's); with the sync, neither fails. They move whenever the
    // simulated code changes (`scripts/breakage-seed.sh --unsafe-max-ts 0 3000`, then
    // again from the seed after; git log has the earlier ones).
    let config = RunConfig { unsafe_max_ts: true, ..RunConfig::default() };
    for seed in [35, 46] {
        assert!(!run(seed, &config).anomalies.is_empty(), "seed {seed} missed the broken max_ts");
        assert!(run(seed, &RunConfig::default()).anomalies.is_empty(), "seed {seed}");
    }
}

#[test]
fn a_compare_and_swap_without_a_linearizable_read_is_caught() {
    // As the server ran it before 2026-12-03: a failed swap is answered from the node's
    // state without a lease or a ReadIndex round. Typically a swap queued behind a write
    // on a leader that is then removed or deposed reads a state another leader has moved
    // past. The same schedule once found a real bug: the swap's gate was passed before its
    // latch wait and not after. Seed 41 of 60 s registers-only runs is the first of
    // 0..41 that catches it since the seventeenth session's second round of review
    // fixes. The
    // seed moves whenever the simulated code changes:
    // `scripts/breakage-seed.sh --unsafe-cas 0 4000 --duration-ms 60000 --txn-clients 0
    // --bank-clients 0` finds the next, and git log has the earlier ones.
    let long = RunConfig { duration_ms: 60_000, ..registers_only() };
    let config = RunConfig { unsafe_cas: true, ..long.clone() };
    assert!(!run(41, &config).anomalies.is_empty(), "seed 41 missed the stale swap");
    assert!(run(41, &long).anomalies.is_empty(), "seed 41");
}

/// Runs with register clients only (no transactions, no bank): cheaper, and the
/// registers' linearizability check is what sees stale reads.
fn registers_only() -> RunConfig {
    RunConfig { txn_clients: 0, bank_clients: 0, ..RunConfig::default() }
}

#[test]
fn a_control_plane_that_forgets_liveness_is_caught() {
    // A new placement leader that forgets when stores were last heard from counts a store
    // it never heard as never seen, not down: a node lost for good before the leader
    // changed keeps its replicas for ever, and the cluster never settles with three on
    // the nodes that remain. Seed 0 is the first that catches it since the sixteenth
    // session's review fixes (still so after the seventeenth's; 5 before). It moves whenever the
    // simulated code changes (`scripts/breakage-seed.sh --unsafe-liveness 0 500`; git log
    // has the earlier ones).
    let config = RunConfig { unsafe_liveness: true, ..RunConfig::default() };
    let report = run(0, &config);
    assert!(
        report.anomalies.iter().any(|a| a.contains("did not settle")),
        "seed 0 missed the forgotten liveness: {:?}",
        report.anomalies
    );
    assert!(run(0, &RunConfig::default()).anomalies.is_empty(), "seed 0");
}

#[test]
fn many_regions_splits_and_operators_are_exercised() {
    // What a typical run covers besides the faults: Regions split as it goes (at random
    // points, and by size through the server's split check), the control plane repairs
    // and moves replicas, and small Regions merge. Seed 6 (since the seventeenth
    // session's review fixes; 4 since Regions merge, 1 before, 0 until heartbeats carried
    // only what changed, when it stopped splitting by size).
    let report = run(6, &RunConfig::default());
    assert!(report.anomalies.is_empty(), "{:?}", report.anomalies);
    let by_size = report.faults.iter().filter(|f| f.contains("split by size")).count();
    assert!(by_size >= 1, "no split by size: {:?}", report.faults);
    assert!(report.regions >= 8, "{} Regions at the end", report.regions);
    assert!(report.splits >= 7, "{} splits", report.splits);
    assert!(report.operators >= 1, "{} operators", report.operators);
    assert!(report.merges >= 1, "{} merges", report.merges);
}

#[test]
fn a_stale_read_in_a_real_history_is_caught() {
    let config = RunConfig { faults: false, duration_ms: 5_000, ..RunConfig::default() };
    let mut report = run(11, &config);
    assert!(check_history(&report.history).is_empty());
    // Find a read that saw a value whose write completed before the read began, and an
    // older write of the key that completed before that write began: make the read return
    // the older value, as a deposed leader serving from its old state would.
    let history = &report.history;
    let target = (0..history.len()).find_map(|r| {
        let read = &history[r];
        let seen = read.read.as_ref()?.as_ref()?;
        let writer = history.iter().position(|w| w.put_value() == Some(seen))?;
        if history[writer].complete? >= read.invoke {
            return None;
        }
        let older = history[..writer].iter().rev().find(|w| {
            w.key == read.key
                && w.put_value().is_some()
                && w.complete.is_some_and(|c| c < history[writer].invoke)
        })?;
        Some((r, older.put_value()?.clone()))
    });
    let (r, stale) = target.expect("some read follows two writes of its key");
    report.history[r].read = Some(Some(stale));
    let anomalies = check_history(&report.history);
    assert!(!anomalies.is_empty(), "a stale read must be reported");
}

#[test]
fn a_read_path_without_leases_is_caught() {
    // Reads served by whichever node believes it leads, without a lease or a ReadIndex
    // round: a deposed leader answers from its old state. The window is narrow (a
    // request queued at a paused leader, served on resuming before the messages that
    // depose it): seed 38 is the first of 0..38 that shows it since the sixteenth
    // session's review fixes (still so after the seventeenth's). It moves whenever the simulated code
    // changes (`scripts/breakage-seed.sh --unsafe-reads 0 3000`; git log has the earlier
    // ones); a search from seed 0 in a debug build once ran 15 minutes, so the test runs
    // the known seed.
    let config = RunConfig { unsafe_reads: true, ..RunConfig::default() };
    assert!(!run(38, &config).anomalies.is_empty(), "seed 38 missed the stale reads");
    assert!(run(38, &RunConfig::default()).anomalies.is_empty(), "seed 38");
}

#[test]
fn a_sleeping_leader_that_keeps_a_lease_is_caught() {
    // A leader that grants itself a lease as it goes to sleep (and keeps it once woken,
    // until it learns it was deposed) serves reads while a new leader, elected when its
    // node fell silent, takes writes: the checker finds the stale read. So hibernation's
    // rule (a leader sleeps only once its lease has run out, and nothing renews it asleep)
    // is one the runs would catch. Seed 22 of 60 s registers-only runs is the first of
    // 0..22 that shows it since the sixteenth session's review fixes (still so after
    // the seventeenth's); it
    // moves whenever the simulated code changes
    // (`scripts/breakage-seed.sh --unsafe-sleeping-lease 0 4000 --duration-ms 60000
    // --txn-clients 0 --bank-clients 0`; git log has the earlier ones).
    let long = RunConfig { duration_ms: 60_000, ..registers_only() };
    let config = RunConfig { unsafe_sleeping_lease: true, ..long.clone() };
    assert!(!run(22, &config).anomalies.is_empty(), "seed 22 missed the sleeping lease");
    assert!(run(22, &long).anomalies.is_empty(), "seed 22");
}

#[test]
fn a_timestamp_oracle_that_ignores_the_persisted_mark_is_caught() {
    // A new placement leader that starts from its own wall clock (which the faults move
    // back and forth) hands out timestamps below its predecessor's. (At the time of
    // writing, 17 of the first hundred seeds show it, the first being seed 6.)
    let config = RunConfig { unsafe_tso: true, ..RunConfig::default() };
    let caught = (0..100)
        .find(|&seed| run(seed, &config).anomalies.iter().any(|a| a.starts_with("timestamps:")));
    assert!(caught.is_some(), "no seed of 100 caught timestamps going back");
}
