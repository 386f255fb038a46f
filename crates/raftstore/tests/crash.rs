//! Crashes at points inside a round, forced with failpoints (`--features failpoints`;
//! `cargo test --workspace` compiles them in through the server's tests). One test to a
//! binary of its own: failpoints are global to the process.

#![cfg(feature = "failpoints")]

mod common;

use common::*;
use scandium_raftstore::PeerChange;
use scandium_types::Peer;

/// A voter applies its own removal and its store crashes before the replica's lingering
/// record and cleared data are written on their own: the record goes in the batch that
/// applies the removal, so the restarted store keeps the replica voting from its log,
/// with no data. Before, the restart did not start it at all (its Region no longer names
/// it), and a candidate's request created it again with an empty log, whose vote any
/// candidate got.
#[test]
fn a_crash_right_after_a_voter_applied_its_removal_leaves_it_lingering() {
    let mut cluster = Cluster::new(3);
    cluster.replicate(3);
    cluster.put(b"k", b"v").unwrap();
    let leader = cluster.wait_leader();
    let victim = (1..=3).find(|&s| s != leader).unwrap();
    let failpoint = format!("linger_{victim}");
    fail::cfg(&failpoint, "return").unwrap();
    let region = cluster.change(vec![PeerChange::Remove(Peer::new(victim, victim))]).unwrap();
    let applied = format!(" c{} ", region.conf_ver);
    cluster.tick_until(100, "the victim applied its removal", |c| {
        c.store(victim).describe(REGION).is_some_and(|d| d.contains(&applied))
    });
    cluster.stop(victim);
    fail::remove(&failpoint);
    cluster.start(victim);
    let described = cluster.store(victim).describe(REGION).expect("started again");
    assert!(described.contains("lingering=true"), "{described}");
    assert_eq!(cluster.value(victim, b"k"), None, "its data cleared at the restart");
}
