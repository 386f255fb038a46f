//! [`HeartbeatFilter`]: which of the Regions a node leads go in its next heartbeat.
//!
//! A node reports every Region it leads to the placement leader once a second; with
//! thousands of idle Regions the placement leader spent its time on reports that said
//! nothing new (10,000 a second on a 3-node cluster of 10,000 Regions, most of its CPU).
//! So a heartbeat carries a Region only when placement needs it:
//!
//! * its report changed since this node last sent it (shape, leader, term, lagging peers,
//!   size or keys), or it was never sent (new here, newly led here);
//! * it has traffic, or had within the last [`QUIET_REPORTS`] beats (so the placement
//!   leader sees it go quiet, and counts its traffic as none);
//! * the placement leader asked to follow it ([`Wants::watch`]: an operator runs on it,
//!   or its last report is not in placement's record yet);
//! * its turn came: every Region is reported at least every `full_every` beats,
//!   staggered by Region id, so no report can stay lost for longer;
//! * the placement leader asked for every Region ([`Wants::all`]: it took over, a store
//!   changed state or the settings changed), or the last heartbeat went unanswered (it may not
//!   have arrived, and neither have the changes it carried).
//!
//! A beat costs what changed, not what is led: it looks only at the Regions whose status
//! was published since the last beat (a sleeping Region publishes nothing), those read
//! from, those with traffic lately, those followed, and those whose turn it is
//! ([`HeartbeatFilter::begin`] names them); a full beat looks at every one. A status that
//! was not published again is the one the last look saw, so a Region left out has nothing
//! new to report but its turn. A Region looked at and found not led here (or gone) is
//! forgotten, which is how the filter learns it lost the lead: losing it publishes.
//!
//! The same code runs in the server and in the simulator.

use crate::control::{RegionHeartbeat, Wants};
use scandium_types::{PeerId, RegionId};
use std::collections::{BTreeMap, BTreeSet};

/// Every Region is reported at least this often, in beats (seconds in the server), when
/// nothing asks for it sooner.
pub const FULL_EVERY_BEATS: u64 = 30;

/// A Region's quiet intervals after traffic are reported this many times: the placement
/// leader blends the first into its average as any interval, and takes a second in a row
/// as the Region having gone quiet (`ControlPlane::region_heartbeats`), so that no
/// traffic it no longer has stays counted while it is not reported.
pub const QUIET_REPORTS: u8 = 2;

/// What of a Region's report, sent unchanged, tells the placement leader nothing new;
/// and whether it had traffic. Built from what a node knows of a Region without copying
/// the Region, so that picking costs no more than a look at each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    /// The Region's id.
    pub id: RegionId,
    /// Its epoch's version.
    pub version: u64,
    /// Its epoch's conf version.
    pub conf_ver: u64,
    /// The leader's peer id.
    pub leader: PeerId,
    /// The leader's term.
    pub term: u64,
    /// Peers that are behind.
    pub pending: Vec<PeerId>,
    /// Approximate bytes.
    pub size: u64,
    /// Approximate user records.
    pub keys: u64,
    /// Anything read or written over the interval.
    pub traffic: bool,
}

impl Facts {
    /// The facts of a heartbeat (`None` without a Region).
    pub fn of(heartbeat: &RegionHeartbeat) -> Option<Facts> {
        let region = heartbeat.report.region.as_ref()?;
        let load = &heartbeat.load;
        Some(Facts {
            id: region.id,
            version: region.version,
            conf_ver: region.conf_ver,
            leader: heartbeat.report.leader_peer_id,
            term: heartbeat.report.term,
            pending: heartbeat.pending.clone(),
            size: load.approximate_size,
            keys: load.approximate_keys,
            traffic: load.has_traffic(),
        })
    }

    /// Whether the report says the same as `other`'s (traffic aside).
    fn same_report(&self, other: &Facts) -> bool {
        (self.version, self.conf_ver, self.leader, self.term, self.size, self.keys)
            == (other.version, other.conf_ver, other.leader, other.term, other.size, other.keys)
            && self.pending == other.pending
    }
}

/// What the filter remembers of a Region's last report.
#[derive(Clone, Debug)]
struct Sent {
    facts: Facts,
    /// Beats since it last had traffic (at most `QUIET_REPORTS + 1`).
    quiet: u8,
    /// The beat it was last looked at (and found led here) at.
    beat: u64,
}

/// Which led Regions a beat looks at, from [`HeartbeatFilter::begin`]; handed back to
/// [`HeartbeatFilter::select_by`] with what was found of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Look {
    seq: u64,
    full: bool,
    ids: BTreeSet<RegionId>,
}

impl Look {
    /// The Regions to look at; `None`: every Region led here (a full beat).
    pub fn ids(&self) -> Option<&BTreeSet<RegionId>> {
        (!self.full).then_some(&self.ids)
    }

    /// Which beat this is (the [`Selection::seq`] it will make).
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

/// What one node's heartbeat reports this beat, and whether it is every Region it leads.
#[derive(Debug, PartialEq)]
pub struct Selection<T = RegionHeartbeat> {
    /// The Regions to report.
    pub heartbeats: Vec<T>,
    /// They are every Region led here: the placement leader knows this node's Regions
    /// afresh ([`crate::ControlPlane::wants`] stops asking for all).
    pub full: bool,
    /// Which beat this is: the answer to it is handed back with it
    /// ([`HeartbeatFilter::answered`]).
    pub seq: u64,
}

impl<T> Default for Selection<T> {
    fn default() -> Self {
        Selection { heartbeats: Vec::new(), full: false, seq: 0 }
    }
}

/// One node's memory of what it last reported (see the module docs).
#[derive(Clone, Debug)]
pub struct HeartbeatFilter {
    full_every: u64,
    /// By turn (`id % full_every`) and id, so that a beat finds the Regions of its turn
    /// without a look at the others.
    sent: BTreeMap<(u64, RegionId), Sent>,
    /// Regions that had traffic within the last [`QUIET_REPORTS`] beats: looked at every
    /// beat until they have been reported quiet.
    active: BTreeSet<RegionId>,
    beats: u64,
    /// The last beat's answer has not come back.
    awaiting: bool,
    /// The last answer: the placement leader wants every Region next time.
    send_all: bool,
    /// The last answer: Regions the placement leader follows.
    watch: BTreeSet<RegionId>,
}

impl Default for HeartbeatFilter {
    fn default() -> Self {
        HeartbeatFilter::new(FULL_EVERY_BEATS)
    }
}

impl HeartbeatFilter {
    /// A filter that reports every Region at least every `full_every` beats (0 or 1:
    /// every beat, as before filtering).
    pub fn new(full_every: u64) -> HeartbeatFilter {
        HeartbeatFilter {
            full_every: full_every.max(1),
            sent: BTreeMap::new(),
            active: BTreeSet::new(),
            beats: 0,
            awaiting: false,
            // The first beat reports everything.
            send_all: true,
            watch: BTreeSet::new(),
        }
    }

    /// Forgets what was sent: the next beat reports every Region (the node now sends to
    /// another placement leader).
    pub fn reset(&mut self) {
        self.send_all = true;
        self.sent.clear();
        self.active.clear();
        self.watch.clear();
    }

    /// Starts a beat: which led Regions it must look at, given those whose status was
    /// published since the last beat began, or that were read from, or that went
    /// (`changed`). The others have nothing new to report.
    pub fn begin(&mut self, changed: impl IntoIterator<Item = RegionId>) -> Look {
        self.beats += 1;
        let seq = self.beats;
        // Every beat awaits its answer, a full one too (`||` would skip the mark: a lost
        // answer to a full beat then went unnoticed).
        let unanswered = std::mem::replace(&mut self.awaiting, true);
        let full = std::mem::take(&mut self.send_all) || unanswered;
        if full {
            return Look { seq, full, ids: BTreeSet::new() };
        }
        let turn = seq % self.full_every;
        let mut ids: BTreeSet<RegionId> = changed.into_iter().collect();
        ids.extend(self.sent.range((turn, 0)..=(turn, RegionId::MAX)).map(|(&(_, id), _)| id));
        ids.extend(self.active.iter().chain(&self.watch));
        Look { seq, full, ids }
    }

    /// Picks what this beat reports from `led`: the Regions of `look` that this node leads
    /// now (every one it leads, if `look` is full), each with its [`Facts`], so that only
    /// those picked need be made into reports. It remembers them as sent, and forgets the
    /// Regions looked at that are not among them.
    pub fn select_by<T>(
        &mut self,
        look: &Look,
        led: impl IntoIterator<Item = (Facts, T)>,
    ) -> Selection<T> {
        let (beat, full) = (look.seq, look.full);
        let turn = beat % self.full_every;
        let mut heartbeats = Vec::new();
        for (facts, heartbeat) in led {
            let id = facts.id;
            let key = (id % self.full_every, id);
            let (changed, quiet) = match self.sent.get(&key) {
                Some(last) => {
                    let quiet = if facts.traffic { 0 } else { last.quiet.saturating_add(1) };
                    (!last.facts.same_report(&facts), quiet)
                }
                None => (true, if facts.traffic { 0 } else { QUIET_REPORTS + 1 }),
            };
            let quiet = quiet.min(QUIET_REPORTS + 1);
            let send = full
                || changed
                || turn == key.0
                || quiet <= QUIET_REPORTS
                || self.watch.contains(&id);
            if quiet <= QUIET_REPORTS {
                self.active.insert(id);
            } else {
                self.active.remove(&id);
            }
            self.sent.insert(key, Sent { facts, quiet, beat });
            if send {
                heartbeats.push(heartbeat);
            }
        }
        // The Regions looked at and not led here are forgotten: every one not led here,
        // after a full beat.
        if full {
            self.sent.retain(|_, sent| sent.beat == beat);
            let sent = &self.sent;
            let every = self.full_every;
            self.active.retain(|id| sent.contains_key(&(id % every, *id)));
        } else {
            for &id in &look.ids {
                let key = (id % self.full_every, id);
                if self.sent.get(&key).is_some_and(|sent| sent.beat != beat) {
                    self.sent.remove(&key);
                    self.active.remove(&id);
                }
            }
        }
        Selection { heartbeats, full, seq: beat }
    }

    /// The placement leader's answer to beat `seq`. An answer to an earlier beat is only
    /// news about what the leader wants: it does not say the latest beat arrived.
    pub fn answered(&mut self, seq: u64, wants: Wants) {
        if seq == self.beats {
            self.awaiting = false;
        }
        self.send_all |= wants.all;
        self.watch = wants.watch.into_iter().collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{RegionLoad, RegionReport};
    use scandium_types::Region;

    /// Region `id` + 500, so that no Region's turn comes within a test's few beats.
    fn beat(id: RegionId, version: u64, written: u64) -> RegionHeartbeat {
        let id = id + 500;
        let region = Region { id, version, conf_ver: 1, ..Default::default() };
        let report = RegionReport { region: Some(region), leader_peer_id: id * 10, term: 2 };
        let load = RegionLoad { written_bytes: written, interval_ms: 1_000, ..Default::default() };
        RegionHeartbeat { report, pending: Vec::new(), load }
    }

    fn ids(selection: &Selection) -> Vec<RegionId> {
        selection
            .heartbeats
            .iter()
            .filter_map(|h| h.report.region.as_ref())
            .map(|r| r.id - 500)
            .collect()
    }

    /// A beat's picks from `led`, every Region the node leads now, each looked at as if
    /// changed (and every Region remembered and not among them forgotten): a beat that
    /// does not know what changed.
    fn select(filter: &mut HeartbeatFilter, led: Vec<RegionHeartbeat>) -> Selection {
        let led: Vec<(Facts, RegionHeartbeat)> =
            led.into_iter().filter_map(|h| Some((Facts::of(&h)?, h))).collect();
        let remembered = filter.sent.keys().map(|&(_, id)| id);
        let changed: Vec<RegionId> = led.iter().map(|(f, _)| f.id).chain(remembered).collect();
        let look = filter.begin(changed);
        let led = led.into_iter().filter(|(f, _)| look.ids().is_none_or(|ids| ids.contains(&f.id)));
        filter.select_by(&look, led)
    }

    /// Answers every beat with nothing wanted.
    fn quiet(filter: &mut HeartbeatFilter, led: Vec<RegionHeartbeat>) -> Selection {
        let selection = select(filter, led);
        filter.answered(selection.seq, Wants::default());
        selection
    }

    #[test]
    fn only_what_changed_or_has_traffic_is_reported_between_full_reports() {
        let mut filter = HeartbeatFilter::new(1_000);
        let first = quiet(&mut filter, vec![beat(1, 1, 0), beat(2, 1, 0), beat(3, 1, 0)]);
        assert_eq!((ids(&first), first.full), (vec![1, 2, 3], true));
        let idle = quiet(&mut filter, vec![beat(1, 1, 0), beat(2, 1, 0), beat(3, 1, 0)]);
        assert_eq!((ids(&idle), idle.full), (vec![], false));
        // Region 2 split (its version moved), Region 3 is written, Region 4 is new here.
        let led = vec![beat(1, 1, 0), beat(2, 2, 0), beat(3, 1, 50), beat(4, 1, 0)];
        assert_eq!(ids(&quiet(&mut filter, led)), vec![2, 3, 4]);
        // Region 3's first two quiet intervals are reported, then nothing.
        let led = || vec![beat(1, 1, 0), beat(2, 2, 0), beat(3, 1, 0), beat(4, 1, 0)];
        assert_eq!(ids(&quiet(&mut filter, led())), vec![3]);
        assert_eq!(ids(&quiet(&mut filter, led())), vec![3]);
        assert_eq!(ids(&quiet(&mut filter, led())), Vec::<u64>::new());
        // A Region no longer led here and led again is reported again.
        quiet(&mut filter, vec![beat(1, 1, 0)]);
        assert_eq!(ids(&quiet(&mut filter, led())), vec![2, 3, 4]);
    }

    /// A beat told what changed looks only at that, the Regions with recent traffic,
    /// those followed and those whose turn it is; it forgets a Region looked at and not
    /// led, and one not looked at keeps what was sent of it.
    #[test]
    fn a_beat_looks_only_at_what_changed() {
        let mut filter = HeartbeatFilter::new(1_000);
        let answer = |filter: &mut HeartbeatFilter, selection: &Selection| {
            filter.answered(selection.seq, Wants::default());
        };
        let look = filter.begin([]);
        assert_eq!(look.ids(), None, "the first beat is full");
        let led = vec![beat(1, 1, 0), beat(2, 1, 0), beat(3, 1, 50)];
        let selection =
            filter.select_by(&look, led.into_iter().map(|h| (Facts::of(&h).unwrap(), h)));
        answer(&mut filter, &selection);
        // Nothing published: only Region 3 (traffic lately) is looked at.
        let look = filter.begin([]);
        assert_eq!(look.ids().unwrap().iter().collect::<Vec<_>>(), vec![&503]);
        let h = beat(3, 1, 0);
        let selection = filter.select_by(&look, [(Facts::of(&h).unwrap(), h)]);
        assert_eq!(ids(&selection), vec![3], "its first quiet interval");
        answer(&mut filter, &selection);
        // Region 1 published and is no longer led; Region 2 is not looked at.
        let look = filter.begin([501]);
        assert_eq!(look.ids().unwrap().iter().collect::<Vec<_>>(), vec![&501, &503]);
        let h = beat(3, 1, 0);
        let selection = filter.select_by(&look, [(Facts::of(&h).unwrap(), h)]);
        assert_eq!(ids(&selection), vec![3], "its second quiet interval");
        answer(&mut filter, &selection);
        let look = filter.begin([]);
        let h = beat(3, 1, 0);
        let selection = filter.select_by(&look, [(Facts::of(&h).unwrap(), h)]);
        assert_eq!(ids(&selection), Vec::<u64>::new(), "quiet: reported no more");
        answer(&mut filter, &selection);
        let look = filter.begin([]);
        assert_eq!(look.ids().unwrap().len(), 0, "nothing to look at");
        let selection = filter.select_by(&look, Vec::<(Facts, RegionHeartbeat)>::new());
        answer(&mut filter, &selection);
        // Region 1 led again is news; Region 2 unchanged is not.
        let look = filter.begin([501, 502]);
        let led = vec![beat(1, 1, 0), beat(2, 1, 0)];
        let selection =
            filter.select_by(&look, led.into_iter().map(|h| (Facts::of(&h).unwrap(), h)));
        assert_eq!(ids(&selection), vec![1]);
    }

    #[test]
    fn every_region_takes_its_turn() {
        let mut filter = HeartbeatFilter::new(4);
        let led = || (0..8).map(|id| beat(id, 1, 0)).collect::<Vec<_>>();
        quiet(&mut filter, led());
        let mut seen = Vec::new();
        for _ in 0..4 {
            let selection = quiet(&mut filter, led());
            assert_eq!(selection.heartbeats.len(), 2, "a quarter each beat");
            seen.extend(ids(&selection));
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..8).collect::<Vec<_>>());
    }

    #[test]
    fn the_leader_s_wishes_and_a_lost_answer_bring_reports() {
        let mut filter = HeartbeatFilter::new(1_000);
        let led = || vec![beat(1, 1, 0), beat(2, 1, 0), beat(3, 1, 0)];
        quiet(&mut filter, led());
        // The placement leader follows Region 2.
        let selection = select(&mut filter, led());
        filter.answered(selection.seq, Wants { all: false, watch: vec![502] });
        assert_eq!(ids(&select(&mut filter, led())), vec![2]);
        // That beat's answer never came: the next reports everything.
        let selection = select(&mut filter, led());
        assert_eq!((ids(&selection), selection.full), (vec![1, 2, 3], true));
        // A late answer to an older beat does not count for the newest.
        filter.answered(selection.seq - 1, Wants::default());
        assert!(select(&mut filter, led()).full);
        // The leader asks for everything.
        let selection = select(&mut filter, led());
        filter.answered(selection.seq, Wants { all: true, watch: Vec::new() });
        let asked = select(&mut filter, led());
        assert!(asked.full);
        // The answer to that full beat is lost: the next is full again.
        assert!(select(&mut filter, led()).full, "a full beat awaits its answer too");
        // So is the answer to a new filter's first beat.
        let mut fresh = HeartbeatFilter::new(1_000);
        assert!(select(&mut fresh, led()).full);
        assert!(select(&mut fresh, led()).full, "the first beat's answer never came");
    }
}
