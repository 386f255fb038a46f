//! Snapshot isolation of list-append transactions, by looking for cycles of
//! dependencies, after Elle (Kingsbury and Alvaro, "Elle: Inferring Isolation
//! Anomalies from Experimental Observations").
//!
//! Each key holds a list; transactions append elements to keys and read whole lists.
//! Because every element is appended once, a read names exactly which appends it saw and
//! in what order, so the order of versions of a key can be read off the history: every
//! read of a key must be a prefix of the longest one, which is then the key's version
//! order. From that order the checker builds Adya's dependency graph between
//! transactions:
//!
//! - ww: the writer of a version precedes the writer of the next version;
//! - wr: the writer of the last element a read saw precedes the reader;
//! - rw (anti-dependency): a reader precedes the writer of the first version it did not
//!   see.
//!
//! and reports the phenomena of Adya's isolation levels that snapshot isolation rules
//! out: G1a (a committed transaction read an aborted one's append), G1b (a read saw only
//! part of another transaction's appends to a key), and cycles: G0 (ww only), G1c (ww
//! and wr, at least one wr) and G-single (exactly one rw edge: read skew, lost update).
//! Cycles with two or more rw edges (G2-item, e.g. write skew) are allowed under snapshot
//! isolation; they are reported as information. There are no real-time edges: snapshot
//! isolation does not promise that a transaction sees everything that committed before
//! it started. Besides, the history itself must be coherent: no read may contain an
//! element twice or one nobody appended, reads of a key must agree on its order, and a
//! transaction must see its own appends (the "internal" check).
//!
//! Cycles are found as in Elle: first the strongly connected components (Tarjan), then,
//! inside a component, a shortest cycle by breadth-first search over the edge kinds a
//! class allows. G-single needs a cycle with exactly one rw edge: for an rw edge `a -> b`
//! that is a path from `b` back to `a` over ww and wr edges only; reachability over ww
//! and wr is precomputed per component (as bitsets over the ww+wr components), so the
//! search runs once, not once per rw edge.
//!
//! Only committed transactions' reads are evidence (an aborted or indeterminate
//! transaction's reads are ignored). Appends by indeterminate transactions that someone
//! read must have committed, so they take part like committed ones; appends by aborted
//! transactions are in no dependency.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;

/// Identifies a list.
pub type Key = u64;

/// An element of a list; unique per key across the whole history.
pub type Element = u64;

/// One step of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MicroOp {
    /// Appends `value` to the list at `key`.
    Append {
        /// The list appended to.
        key: Key,
        /// The element appended.
        value: Element,
    },
    /// Read the whole list at `key`, as the transaction saw it at that point.
    Read {
        /// The list read.
        key: Key,
        /// Its elements in order; empty when the key was absent.
        list: Vec<Element>,
    },
}

/// What the client learned about whether a transaction committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The commit succeeded.
    Committed,
    /// The transaction is known not to have committed.
    Aborted,
    /// The client never learned (crash, timeout): it may or may not have committed.
    Indeterminate,
}

/// A transaction: its steps in program order, and how it ended. Its id in reports is
/// its index in the checked slice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Txn {
    /// The steps, in the order the transaction ran them.
    pub ops: Vec<MicroOp>,
    /// How it ended.
    pub outcome: Outcome,
}

/// The kinds of anomaly, so callers can tell which ones a run produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AnomalyKind {
    /// The same element was appended to a key twice: the history breaks the checker's
    /// precondition (usually a workload bug), and reads of it are attributed to the
    /// first appender.
    DuplicateAppend,
    /// A read contains an element that no transaction appended to that key.
    GarbageRead,
    /// A read contains the same element twice.
    DuplicateElements,
    /// Two reads of a key disagree on its order: neither is a prefix of the other.
    IncompatibleOrder,
    /// A transaction's read does not agree with its own earlier reads and appends.
    Internal,
    /// Aborted read: a committed transaction saw an aborted one's append.
    G1a,
    /// Intermediate read: a read saw some of another transaction's appends to a key but
    /// not its later ones.
    G1b,
    /// A cycle of ww edges (dirty writes).
    G0,
    /// A cycle of ww and wr edges with at least one wr (circular information flow).
    G1c,
    /// A cycle with exactly one rw edge: read skew or lost update, which snapshot
    /// isolation forbids.
    GSingle,
    /// A cycle with two or more rw edges, such as write skew: allowed under snapshot
    /// isolation, reported for information.
    G2Item,
}

impl AnomalyKind {
    /// Whether a history with this anomaly can still be snapshot isolated.
    pub fn allowed_under_si(self) -> bool {
        self == AnomalyKind::G2Item
    }
}

/// One anomaly: its kind, the transactions involved, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Anomaly {
    /// The kind.
    pub kind: AnomalyKind,
    /// The transactions involved (indices into the history); for cycles, in cycle
    /// order, each one depending on the one before and the first on the last.
    pub txns: Vec<usize>,
    /// What was observed, for a human.
    pub explanation: String,
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.explanation)
    }
}

/// Everything the checker found in a history.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Anomalies, including the informational G2-item cycles.
    pub anomalies: Vec<Anomaly>,
}

impl Report {
    /// Whether the history is consistent with snapshot isolation: nothing but G2-item.
    pub fn is_valid_si(&self) -> bool {
        self.anomalies.iter().all(|a| a.kind.allowed_under_si())
    }

    /// The anomalies of one kind, for callers (and tests) that care about one.
    pub fn of_kind(&self, kind: AnomalyKind) -> impl Iterator<Item = &Anomaly> {
        self.anomalies.iter().filter(move |a| a.kind == kind)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.anomalies.is_empty() {
            return write!(f, "no anomalies");
        }
        for (i, anomaly) in self.anomalies.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{anomaly}")?;
        }
        Ok(())
    }
}

/// Checks a list-append history for snapshot isolation; see the module documentation
/// for what is reported.
pub fn check(history: &[Txn]) -> Report {
    let mut analysis = Analysis::new(history);
    analysis.check_reads();
    analysis.check_internal();
    analysis.infer_orders();
    analysis.check_dirty_reads();
    let graph = analysis.build_graph();
    analysis.find_cycles(&graph);
    Report { anomalies: analysis.anomalies }
}

const WW: u8 = 1;
const WR: u8 = 2;
const RW: u8 = 4;
const ALL: u8 = WW | WR | RW;

/// Above this many ww+wr components in one strongly connected component, the
/// G-single search does a breadth-first search per rw edge instead of precomputing
/// reachability (whose bitsets grow with the square of that number).
const REACH_LIMIT: usize = 8_192;

/// A committed transaction's read.
struct Read<'a> {
    txn: usize,
    key: Key,
    list: &'a [Element],
    /// Whether the read is coherent enough (no duplicates, agrees with the order) to
    /// derive dependencies from.
    usable: bool,
}

struct Analysis<'a> {
    history: &'a [Txn],
    /// Who appended each (key, element); the first appender if there were several.
    writer: HashMap<(Key, Element), usize>,
    /// Each transaction's appends per key, in program order.
    appends: HashMap<(usize, Key), Vec<Element>>,
    reads: Vec<Read<'a>>,
    /// Each key's version order: its longest coherent read.
    orders: HashMap<Key, &'a [Element]>,
    anomalies: Vec<Anomaly>,
}

impl<'a> Analysis<'a> {
    fn new(history: &'a [Txn]) -> Analysis<'a> {
        let mut analysis = Analysis {
            history,
            writer: HashMap::new(),
            appends: HashMap::new(),
            reads: Vec::new(),
            orders: HashMap::new(),
            anomalies: Vec::new(),
        };
        for (txn, t) in history.iter().enumerate() {
            for op in &t.ops {
                match op {
                    MicroOp::Append { key, value } => {
                        analysis.appends.entry((txn, *key)).or_default().push(*value);
                        match analysis.writer.entry((*key, *value)) {
                            Entry::Vacant(slot) => {
                                slot.insert(txn);
                            }
                            Entry::Occupied(first) => {
                                let first = *first.get();
                                let mut txns = vec![first, txn];
                                txns.dedup();
                                analysis.report(
                                    AnomalyKind::DuplicateAppend,
                                    txns,
                                    format!(
                                        "element {value} was appended to key {key} by {} and \
                                         by T{txn}; elements must be unique per key, so reads \
                                         of it are attributed to T{first}",
                                        if first == txn {
                                            "the same transaction".to_string()
                                        } else {
                                            format!("T{first}")
                                        },
                                    ),
                                );
                            }
                        }
                    }
                    MicroOp::Read { key, list } if t.outcome == Outcome::Committed => {
                        analysis.reads.push(Read { txn, key: *key, list, usable: true });
                    }
                    MicroOp::Read { .. } => {}
                }
            }
        }
        analysis
    }

    fn report(&mut self, kind: AnomalyKind, txns: Vec<usize>, explanation: String) {
        self.anomalies.push(Anomaly { kind, txns, explanation });
    }

    fn writer_of(&self, key: Key, element: Element) -> Option<usize> {
        self.writer.get(&(key, element)).copied()
    }

    /// The writer of an element, if it is one whose appends count (not aborted).
    fn live_writer_of(&self, key: Key, element: Element) -> Option<usize> {
        self.writer_of(key, element).filter(|&w| self.history[w].outcome != Outcome::Aborted)
    }

    /// Duplicate and garbage elements in reads.
    fn check_reads(&mut self) {
        for i in 0..self.reads.len() {
            let Read { txn, key, list, .. } = self.reads[i];
            let mut seen = HashSet::new();
            let mut duplicates: Vec<Element> = Vec::new();
            for &element in list {
                if !seen.insert(element) && !duplicates.contains(&element) {
                    duplicates.push(element);
                }
            }
            if !duplicates.is_empty() {
                self.reads[i].usable = false;
                self.report(
                    AnomalyKind::DuplicateElements,
                    vec![txn],
                    format!("T{txn} read key {key} as {list:?}, in which {duplicates:?} repeat"),
                );
            }
            let garbage: Vec<Element> = seen
                .into_iter()
                .filter(|&element| self.writer_of(key, element).is_none())
                .collect::<Vec<_>>();
            if !garbage.is_empty() {
                let mut garbage = garbage;
                garbage.sort_unstable();
                self.report(
                    AnomalyKind::GarbageRead,
                    vec![txn],
                    format!(
                        "T{txn} read key {key} as {list:?}, but no transaction appended \
                         {garbage:?} to that key"
                    ),
                );
            }
        }
    }

    /// Each committed transaction's reads against its own earlier reads and appends.
    fn check_internal(&mut self) {
        #[derive(Default)]
        struct View {
            /// The list as the transaction must now see it, once it has read the key.
            known: Option<Vec<Element>>,
            /// Its appends since it last read the key (all of them if it never did).
            unread: Vec<Element>,
            /// All its appends to the key so far.
            own: Vec<Element>,
        }
        for (txn, t) in self.history.iter().enumerate() {
            if t.outcome != Outcome::Committed {
                continue;
            }
            let mut views: HashMap<Key, View> = HashMap::new();
            for op in &t.ops {
                match op {
                    MicroOp::Append { key, value } => {
                        let view = views.entry(*key).or_default();
                        match &mut view.known {
                            Some(list) => list.push(*value),
                            None => view.unread.push(*value),
                        }
                        view.own.push(*value);
                    }
                    MicroOp::Read { key, list } => {
                        let view = views.entry(*key).or_default();
                        let mut problems = Vec::new();
                        match &view.known {
                            Some(expected) if expected != list => problems
                                .push(format!("its earlier read and appends imply {expected:?}")),
                            None if !list.ends_with(&view.unread) => problems.push(format!(
                                "it should end with the transaction's own appends {:?}",
                                view.unread
                            )),
                            _ => {}
                        }
                        let future: Vec<Element> = list
                            .iter()
                            .copied()
                            .filter(|&e| {
                                self.writer.get(&(*key, e)) == Some(&txn) && !view.own.contains(&e)
                            })
                            .collect();
                        if !future.is_empty() {
                            problems.push(format!(
                                "it contains {future:?}, which the transaction appends only later"
                            ));
                        }
                        view.known = Some(list.clone());
                        view.unread.clear();
                        if !problems.is_empty() {
                            self.anomalies.push(Anomaly {
                                kind: AnomalyKind::Internal,
                                txns: vec![txn],
                                explanation: format!(
                                    "T{txn} read key {key} as {list:?}, but {}",
                                    problems.join(", and ")
                                ),
                            });
                        }
                    }
                }
            }
        }
    }

    /// Each key's version order, and the reads that contradict it.
    fn infer_orders(&mut self) {
        let mut longest: HashMap<Key, usize> = HashMap::new();
        for (i, read) in self.reads.iter().enumerate() {
            if !read.usable {
                continue;
            }
            match longest.entry(read.key) {
                Entry::Vacant(slot) => {
                    slot.insert(i);
                }
                Entry::Occupied(mut slot) => {
                    if read.list.len() > self.reads[*slot.get()].list.len() {
                        slot.insert(i);
                    }
                }
            }
        }
        for i in 0..self.reads.len() {
            let Read { txn, key, list, usable } = self.reads[i];
            let Some(&witness) = longest.get(&key) else { continue };
            let order = self.reads[witness].list;
            if usable && !order.starts_with(list) {
                self.reads[i].usable = false;
                let other = self.reads[witness].txn;
                self.report(
                    AnomalyKind::IncompatibleOrder,
                    vec![txn, other],
                    format!(
                        "T{txn} read key {key} as {list:?} and T{other} read it as {order:?}: \
                         the first is not a prefix of the second, so no single order of \
                         appends explains both"
                    ),
                );
            }
        }
        for (key, i) in longest {
            self.orders.insert(key, self.reads[i].list);
        }
    }

    /// The part of a read that shows other transactions' appends: up to the reader's
    /// own first element.
    fn external_part(&self, read: &Read<'a>) -> &'a [Element] {
        let own = read.list.iter().position(|&e| self.writer_of(read.key, e) == Some(read.txn));
        &read.list[..own.unwrap_or(read.list.len())]
    }

    /// G1a and G1b.
    fn check_dirty_reads(&mut self) {
        let mut aborted_reads: HashSet<(usize, usize)> = HashSet::new();
        let mut found = Vec::new();
        for read in &self.reads {
            for &element in read.list {
                let Some(writer) = self.writer_of(read.key, element) else { continue };
                if self.history[writer].outcome == Outcome::Aborted
                    && aborted_reads.insert((read.txn, writer))
                {
                    found.push(Anomaly {
                        kind: AnomalyKind::G1a,
                        txns: vec![read.txn, writer],
                        explanation: format!(
                            "T{} read key {} as {:?}, including {element}, which T{writer} \
                             appended and then aborted",
                            read.txn, read.key, read.list
                        ),
                    });
                }
            }
            if !read.usable {
                continue;
            }
            let seen = self.external_part(read);
            let Some(&last) = seen.last() else { continue };
            let Some(writer) = self.live_writer_of(read.key, last) else { continue };
            let theirs = &self.appends[&(writer, read.key)];
            let at = theirs.iter().position(|&e| e == last).unwrap_or(theirs.len());
            if at + 1 < theirs.len() {
                found.push(Anomaly {
                    kind: AnomalyKind::G1b,
                    txns: vec![read.txn, writer],
                    explanation: format!(
                        "T{} read key {} as {:?}, ending at {last}, but T{writer} appended \
                         {:?} after {last} to that key: the read saw T{writer} half done",
                        read.txn,
                        read.key,
                        read.list,
                        &theirs[at + 1..]
                    ),
                });
            }
        }
        self.anomalies.extend(found);
    }

    fn build_graph(&self) -> Graph {
        let mut graph = Graph::new(self.history.len());
        for (&key, order) in &self.orders {
            let live: Vec<(Element, usize)> =
                order.iter().filter_map(|&e| self.live_writer_of(key, e).map(|w| (e, w))).collect();
            for pair in live.windows(2) {
                let ((before, from), (after, to)) = (pair[0], pair[1]);
                graph.add(from, to, WW, Why::Ww { key, before, after });
            }
        }
        for read in self.reads.iter().filter(|r| r.usable) {
            let seen = self.external_part(read);
            let key = read.key;
            let last_live =
                seen.iter().rev().find_map(|&e| self.live_writer_of(key, e).map(|w| (e, w)));
            if let Some((value, writer)) = last_live {
                graph.add(writer, read.txn, WR, Why::Wr { key, value });
            }
            let order = self.orders.get(&key).copied().unwrap_or_default();
            let next = order
                .get(seen.len()..)
                .unwrap_or_default()
                .iter()
                .find_map(|&e| self.live_writer_of(key, e).map(|w| (e, w)));
            if let Some((next, writer)) = next {
                graph.add(read.txn, writer, RW, Why::Rw { key, seen: seen.last().copied(), next });
            }
        }
        graph
    }

    fn find_cycles(&mut self, graph: &Graph) {
        // Components of the whole graph that already hold a G0 or G1c cycle.
        let all = graph.components(ALL);
        let mut flagged: HashSet<usize> = HashSet::new();

        let ww = graph.components(WW);
        for members in groups(&ww).into_iter().filter(|m| m.len() > 1) {
            let start = members[0];
            if let Some(cycle) = graph.shortest_path(start, start, WW, &ww) {
                flagged.insert(all[start]);
                let explanation = graph.describe(&cycle, |_| WW);
                self.report(AnomalyKind::G0, cycle, format!("ww cycle {explanation}"));
            }
        }

        let wwr = graph.components(WW | WR);
        for members in groups(&wwr).into_iter().filter(|m| m.len() > 1) {
            let internal_wr = members
                .iter()
                .find_map(|&u| graph.out(u, WR).find(|&v| wwr[v] == wwr[u]).map(|v| (u, v)));
            let Some((u, v)) = internal_wr else { continue };
            if let Some(path) = graph.shortest_path(v, u, WW | WR, &wwr) {
                let cycle: Vec<usize> = std::iter::once(u).chain(path).collect();
                flagged.insert(all[u]);
                let explanation = graph.describe(&cycle, |i| if i == 0 { WR } else { WW | WR });
                self.report(AnomalyKind::G1c, cycle, format!("ww/wr cycle {explanation}"));
            }
        }

        for members in groups(&all).into_iter().filter(|m| m.len() > 1) {
            let cid = all[members[0]];
            if let Some(cycle) = single_rw_cycle(graph, &members, &all, &wwr) {
                flagged.insert(cid);
                let explanation = graph.describe(&cycle, |i| if i == 0 { RW } else { WW | WR });
                self.report(
                    AnomalyKind::GSingle,
                    cycle,
                    format!(
                        "cycle with a single anti-dependency {explanation}; snapshot \
                         isolation forbids it (read skew or lost update)"
                    ),
                );
            }
            if flagged.contains(&cid) {
                continue;
            }
            let start = members[0];
            if let Some(cycle) = graph.shortest_path(start, start, ALL, &all) {
                let explanation = graph.describe(&cycle, |_| ALL);
                self.report(
                    AnomalyKind::G2Item,
                    cycle,
                    format!(
                        "cycle needing two or more anti-dependencies {explanation}; allowed \
                         under snapshot isolation (write skew)"
                    ),
                );
            }
        }
    }
}

/// A cycle with exactly one rw edge inside the strongly connected component `members`
/// (of `all`), starting with that edge: `[a, b, ...]` for rw `a -> b` and a ww/wr path
/// from `b` back to `a`.
fn single_rw_cycle(
    graph: &Graph,
    members: &[usize],
    all: &[usize],
    wwr: &[usize],
) -> Option<Vec<usize>> {
    let cid = all[members[0]];
    // The ww+wr components inside this one, numbered locally in Tarjan's emission
    // order (a component is emitted after every component it reaches).
    let mut local_ids: Vec<usize> = members.iter().map(|&m| wwr[m]).collect();
    local_ids.sort_unstable();
    local_ids.dedup();
    let reach = if local_ids.len() <= REACH_LIMIT {
        let local: HashMap<usize, usize> =
            local_ids.iter().enumerate().map(|(i, &id)| (id, i)).collect();
        let mut by_local: Vec<Vec<usize>> = vec![Vec::new(); local_ids.len()];
        for &m in members {
            by_local[local[&wwr[m]]].push(m);
        }
        let words = local_ids.len().div_ceil(64);
        let mut reach: Vec<Vec<u64>> = vec![vec![0; words]; local_ids.len()];
        for c in 0..local_ids.len() {
            let (done, rest) = reach.split_at_mut(c);
            let row = &mut rest[0];
            row[c / 64] |= 1 << (c % 64);
            for &m in &by_local[c] {
                for next in graph.out(m, WW | WR) {
                    if all[next] == cid && wwr[next] != wwr[m] {
                        for (word, bits) in row.iter_mut().zip(&done[local[&wwr[next]]]) {
                            *word |= bits;
                        }
                    }
                }
            }
        }
        Some((local, reach))
    } else {
        None
    };
    let reaches = |from: usize, to: usize| match &reach {
        Some((local, reach)) => {
            let (f, t) = (local[&wwr[from]], local[&wwr[to]]);
            reach[f][t / 64] & (1 << (t % 64)) != 0
        }
        None => true,
    };
    for &a in members {
        for b in graph.out(a, RW) {
            if all[b] != cid || !reaches(b, a) {
                continue;
            }
            if let Some(path) = graph.shortest_path(b, a, WW | WR, all) {
                return Some(std::iter::once(a).chain(path).collect());
            }
        }
    }
    None
}

/// Nodes grouped by component id.
fn groups(component: &[usize]) -> Vec<Vec<usize>> {
    let count = component.iter().max().map_or(0, |&c| c + 1);
    let mut groups = vec![Vec::new(); count];
    for (node, &c) in component.iter().enumerate() {
        groups[c].push(node);
    }
    groups
}

/// Why an edge exists, for the explanation of a cycle through it.
#[derive(Clone, Copy, Debug)]
enum Why {
    Ww { key: Key, before: Element, after: Element },
    Wr { key: Key, value: Element },
    Rw { key: Key, seen: Option<Element>, next: Element },
}

struct Edge {
    to: usize,
    mask: u8,
    /// One reason per kind (indexed by the kind's bit position), the first found.
    why: [Option<Why>; 3],
}

/// The dependency graph: transactions, and edges labelled by the kinds that link them.
struct Graph {
    out: Vec<Vec<usize>>,
    edges: Vec<Edge>,
    index: HashMap<(usize, usize), usize>,
}

impl Graph {
    fn new(nodes: usize) -> Graph {
        Graph { out: vec![Vec::new(); nodes], edges: Vec::new(), index: HashMap::new() }
    }

    fn add(&mut self, from: usize, to: usize, kind: u8, why: Why) {
        if from == to {
            return;
        }
        let edge = match self.index.entry((from, to)) {
            Entry::Occupied(slot) => *slot.get(),
            Entry::Vacant(slot) => {
                self.edges.push(Edge { to, mask: 0, why: [None; 3] });
                self.out[from].push(self.edges.len() - 1);
                *slot.insert(self.edges.len() - 1)
            }
        };
        let edge = &mut self.edges[edge];
        edge.mask |= kind;
        edge.why[kind.trailing_zeros() as usize].get_or_insert(why);
    }

    /// Successors of `from` over edges of the kinds in `mask`.
    fn out(&self, from: usize, mask: u8) -> impl Iterator<Item = usize> + '_ {
        self.out[from]
            .iter()
            .map(|&e| &self.edges[e])
            .filter(move |e| e.mask & mask != 0)
            .map(|e| e.to)
    }

    /// Strongly connected components over edges in `mask` (Tarjan, iteratively): each
    /// node's component id, ids in order of emission, so a component's id is larger
    /// than that of every other component it reaches.
    fn components(&self, mask: u8) -> Vec<usize> {
        const UNVISITED: usize = usize::MAX;
        let n = self.out.len();
        let mut index = vec![UNVISITED; n];
        let mut low = vec![0; n];
        let mut on_stack = vec![false; n];
        let mut component = vec![UNVISITED; n];
        let mut stack = Vec::new();
        let mut calls: Vec<(usize, usize)> = Vec::new();
        let (mut next_index, mut next_component) = (0, 0);
        for root in 0..n {
            if index[root] != UNVISITED {
                continue;
            }
            index[root] = next_index;
            low[root] = next_index;
            next_index += 1;
            stack.push(root);
            on_stack[root] = true;
            calls.push((root, 0));
            while let Some(&(v, i)) = calls.last() {
                if let Some(&e) = self.out[v].get(i) {
                    if let Some(top) = calls.last_mut() {
                        top.1 += 1;
                    }
                    let edge = &self.edges[e];
                    if edge.mask & mask == 0 {
                        continue;
                    }
                    let w = edge.to;
                    if index[w] == UNVISITED {
                        index[w] = next_index;
                        low[w] = next_index;
                        next_index += 1;
                        stack.push(w);
                        on_stack[w] = true;
                        calls.push((w, 0));
                    } else if on_stack[w] {
                        low[v] = low[v].min(index[w]);
                    }
                    continue;
                }
                calls.pop();
                if let Some(&(u, _)) = calls.last() {
                    low[u] = low[u].min(low[v]);
                }
                if low[v] == index[v] {
                    while let Some(w) = stack.pop() {
                        on_stack[w] = false;
                        component[w] = next_component;
                        if w == v {
                            break;
                        }
                    }
                    next_component += 1;
                }
            }
        }
        component
    }

    /// A shortest path of at least one edge from `from` to `to` over edges in `mask`,
    /// staying inside `from`'s component of `component`: the nodes from `from` to the
    /// one before `to`. With `from == to`, that is a shortest cycle through `from`.
    fn shortest_path(
        &self,
        from: usize,
        to: usize,
        mask: u8,
        component: &[usize],
    ) -> Option<Vec<usize>> {
        let inside = component[from];
        let mut parent: HashMap<usize, usize> = HashMap::from([(from, from)]);
        let mut queue = VecDeque::from([from]);
        while let Some(u) = queue.pop_front() {
            for v in self.out(u, mask) {
                if component[v] != inside {
                    continue;
                }
                if v == to {
                    let mut path = vec![u];
                    let mut at = u;
                    while at != from {
                        at = parent[&at];
                        path.push(at);
                    }
                    path.reverse();
                    return Some(path);
                }
                if let Entry::Vacant(slot) = parent.entry(v) {
                    slot.insert(u);
                    queue.push_back(v);
                }
            }
        }
        None
    }

    /// "T1 -> T2 -> T1: <why of each edge>", where edge `i` (from `cycle[i]` to the
    /// next) is explained by one of the kinds in `kinds(i)`.
    fn describe(&self, cycle: &[usize], kinds: impl Fn(usize) -> u8) -> String {
        let mut names: Vec<String> = cycle.iter().map(|t| format!("T{t}")).collect();
        names.push(format!("T{}", cycle[0]));
        let mut reasons = Vec::new();
        for (i, &from) in cycle.iter().enumerate() {
            let to = cycle[(i + 1) % cycle.len()];
            let Some(&e) = self.index.get(&(from, to)) else { continue };
            let edge = &self.edges[e];
            // Prefer the kinds that read most naturally: wr, then ww, then rw.
            let why = [WR, WW, RW]
                .into_iter()
                .filter(|kind| kinds(i) & edge.mask & kind != 0)
                .find_map(|kind| edge.why[kind.trailing_zeros() as usize]);
            reasons.push(match why {
                Some(Why::Ww { key, before, after }) => format!(
                    "T{to} appended {after} to key {key} right after T{from}'s {before} (ww)"
                ),
                Some(Why::Wr { key, value }) => {
                    format!("T{to} read key {key} up to {value}, which T{from} appended (wr)")
                }
                Some(Why::Rw { key, seen, next }) => format!(
                    "T{from} read key {key} {} and missed {next}, which T{to} appended next (rw)",
                    seen.map_or_else(|| "as empty".to_string(), |s| format!("up to {s}"))
                ),
                None => format!("T{from} -> T{to}"),
            });
        }
        format!("{}: {}", names.join(" -> "), reasons.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn append(key: Key, value: Element) -> MicroOp {
        MicroOp::Append { key, value }
    }

    fn read(key: Key, list: &[Element]) -> MicroOp {
        MicroOp::Read { key, list: list.to_vec() }
    }

    fn committed(ops: Vec<MicroOp>) -> Txn {
        Txn { ops, outcome: Outcome::Committed }
    }

    fn kinds(report: &Report) -> Vec<AnomalyKind> {
        let mut kinds: Vec<AnomalyKind> = report.anomalies.iter().map(|a| a.kind).collect();
        kinds.sort_unstable();
        kinds.dedup();
        kinds
    }

    #[test]
    fn a_serial_history_is_valid() {
        let history = [
            committed(vec![read(1, &[]), append(1, 1), append(2, 1)]),
            committed(vec![read(1, &[1]), append(1, 2), read(1, &[1, 2])]),
            committed(vec![read(2, &[1]), append(2, 2), read(1, &[1, 2])]),
            Txn { ops: vec![append(1, 9)], outcome: Outcome::Aborted },
            Txn { ops: vec![append(2, 3)], outcome: Outcome::Indeterminate },
            committed(vec![read(1, &[1, 2]), read(2, &[1, 2, 3])]),
        ];
        let report = check(&history);
        assert!(report.anomalies.is_empty(), "{report}");
        assert!(report.is_valid_si());
        assert!(check(&[]).anomalies.is_empty());
    }

    #[test]
    fn write_skew_is_allowed() {
        // Both read both keys as empty, each appends to a different one.
        let history = [
            committed(vec![read(1, &[]), read(2, &[]), append(1, 1)]),
            committed(vec![read(1, &[]), read(2, &[]), append(2, 1)]),
            committed(vec![read(1, &[1]), read(2, &[1])]),
        ];
        let report = check(&history);
        assert_eq!(kinds(&report), vec![AnomalyKind::G2Item], "{report}");
        assert!(report.is_valid_si());
        let g2 = &report.anomalies[0];
        let mut txns = g2.txns.clone();
        txns.sort_unstable();
        assert_eq!(txns, vec![0, 1]);
        assert!(g2.explanation.contains("(rw)"), "{}", g2.explanation);
    }

    #[test]
    fn read_skew_is_g_single() {
        // T0 writes both keys; T1 sees its append on key 2 but not on key 1.
        let history = [
            committed(vec![append(1, 1), append(2, 1)]),
            committed(vec![read(1, &[]), read(2, &[1])]),
            committed(vec![read(1, &[1]), read(2, &[1])]),
        ];
        let report = check(&history);
        assert_eq!(kinds(&report), vec![AnomalyKind::GSingle], "{report}");
        assert!(!report.is_valid_si());
        let cycle = &report.anomalies[0];
        assert_eq!(cycle.txns, vec![1, 0], "starts with the rw edge T1 -> T0");
        assert!(cycle.explanation.contains("T1 read key 1 as empty and missed 1"), "{cycle}");
    }

    #[test]
    fn lost_update_is_g_single() {
        let history = [
            committed(vec![append(1, 0)]),
            committed(vec![read(1, &[0]), append(1, 1)]),
            committed(vec![read(1, &[0]), append(1, 2)]),
            committed(vec![read(1, &[0, 1, 2])]),
        ];
        let report = check(&history);
        assert_eq!(kinds(&report), vec![AnomalyKind::GSingle], "{report}");
        let mut txns = report.anomalies[0].txns.clone();
        txns.sort_unstable();
        assert_eq!(txns, vec![1, 2]);
    }

    #[test]
    fn g0_write_cycle() {
        // T0 before T1 on key 1, T1 before T0 on key 2.
        let history = [
            committed(vec![append(1, 1), append(2, 2)]),
            committed(vec![append(1, 2), append(2, 1)]),
            committed(vec![read(1, &[1, 2]), read(2, &[1, 2])]),
        ];
        let report = check(&history);
        assert_eq!(kinds(&report), vec![AnomalyKind::G0], "{report}");
        let mut txns = report.anomalies[0].txns.clone();
        txns.sort_unstable();
        assert_eq!(txns, vec![0, 1]);
    }

    #[test]
    fn g1a_aborted_read() {
        let history = [
            Txn { ops: vec![append(1, 1)], outcome: Outcome::Aborted },
            committed(vec![read(1, &[1])]),
        ];
        let report = check(&history);
        assert_eq!(kinds(&report), vec![AnomalyKind::G1a], "{report}");
        assert_eq!(report.anomalies[0].txns, vec![1, 0]);
        // An indeterminate writer that was read simply committed.
        let history = [
            Txn { ops: vec![append(1, 1)], outcome: Outcome::Indeterminate },
            committed(vec![read(1, &[1])]),
        ];
        assert!(check(&history).anomalies.is_empty());
    }

    #[test]
    fn g1b_intermediate_read() {
        let history = [
            committed(vec![append(1, 1), append(1, 2)]),
            committed(vec![read(1, &[1])]),
            committed(vec![read(1, &[1, 2])]),
        ];
        let report = check(&history);
        let g1b: Vec<&Anomaly> = report.of_kind(AnomalyKind::G1b).collect();
        assert_eq!(g1b.len(), 1, "{report}");
        assert_eq!(g1b[0].txns, vec![1, 0]);
        assert!(!report.is_valid_si());
    }

    #[test]
    fn g1c_circular_information_flow() {
        let history = [
            committed(vec![append(1, 1), read(2, &[1])]),
            committed(vec![append(2, 1), read(1, &[1])]),
        ];
        let report = check(&history);
        assert_eq!(kinds(&report), vec![AnomalyKind::G1c], "{report}");
        let mut txns = report.anomalies[0].txns.clone();
        txns.sort_unstable();
        assert_eq!(txns, vec![0, 1]);
        assert!(report.anomalies[0].explanation.contains("(wr)"));
    }

    #[test]
    fn incoherent_reads_are_reported() {
        let history = [
            committed(vec![append(1, 1), append(1, 2)]),
            committed(vec![append(1, 3)]),
            committed(vec![read(1, &[1, 2, 3])]),
            committed(vec![read(1, &[1, 3])]),
            committed(vec![read(1, &[1, 1])]),
            committed(vec![read(1, &[1, 2, 3, 4])]),
        ];
        let report = check(&history);
        assert_eq!(
            kinds(&report),
            vec![
                AnomalyKind::GarbageRead,
                AnomalyKind::DuplicateElements,
                AnomalyKind::IncompatibleOrder,
            ],
            "{report}"
        );
        let incompatible: Vec<&Anomaly> = report.of_kind(AnomalyKind::IncompatibleOrder).collect();
        assert_eq!(incompatible.len(), 1);
        assert_eq!(incompatible[0].txns, vec![3, 5]);
    }

    #[test]
    fn internal_consistency() {
        let history = [
            committed(vec![append(1, 1)]),
            // Does not see its own append.
            committed(vec![append(1, 2), read(1, &[1])]),
            // Sees its append, then loses it.
            committed(vec![read(1, &[1]), append(1, 3), read(1, &[1])]),
            // Sees an append it has not made yet.
            committed(vec![read(1, &[1, 4]), append(1, 4)]),
            // Fine: sees exactly its own appends on top of what it read.
            committed(vec![read(1, &[1]), append(1, 5), append(1, 6), read(1, &[1, 5, 6])]),
        ];
        let report = check(&history);
        let internal: Vec<usize> =
            report.of_kind(AnomalyKind::Internal).map(|a| a.txns[0]).collect();
        assert_eq!(internal, vec![1, 2, 3], "{report}");
    }

    #[test]
    fn duplicate_appends_are_flagged() {
        let history = [committed(vec![append(1, 1)]), committed(vec![append(1, 1)])];
        let report = check(&history);
        assert_eq!(kinds(&report), vec![AnomalyKind::DuplicateAppend]);
        assert_eq!(report.anomalies[0].txns, vec![0, 1]);
    }

    /// Runs transactions under a reference implementation of snapshot isolation: each
    /// reads the state committed when it starts plus its own appends, and commits only
    /// if nothing it appended to was committed by another since it started (first
    /// committer wins).
    fn simulate(specs: &[TxnSpec]) -> Vec<Txn> {
        // (time, is_commit, txn): starts and commits in time order.
        let mut events = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            events.push((spec.start * 2, false, i));
            events.push((spec.start * 2 + 1 + 2 * spec.length, true, i));
        }
        events.sort_unstable();
        let mut committed: HashMap<Key, Vec<Element>> = HashMap::new();
        let mut last_commit: HashMap<Key, u64> = HashMap::new();
        let mut next_value: HashMap<Key, Element> = HashMap::new();
        let mut txns: Vec<Txn> =
            specs.iter().map(|_| Txn { ops: Vec::new(), outcome: Outcome::Aborted }).collect();
        let mut pending: Vec<HashMap<Key, Vec<Element>>> = vec![HashMap::new(); specs.len()];
        for (time, is_commit, i) in events {
            let spec = &specs[i];
            if !is_commit {
                let mut view = committed.clone();
                for &(is_append, key) in &spec.ops {
                    let list = view.entry(key).or_default();
                    if is_append {
                        let value = next_value.entry(key).or_default();
                        *value += 1;
                        list.push(*value);
                        pending[i].entry(key).or_default().push(*value);
                        txns[i].ops.push(append(key, *value));
                    } else {
                        txns[i].ops.push(read(key, list));
                    }
                }
                continue;
            }
            let start = spec.start * 2;
            let conflict =
                pending[i].keys().any(|k| last_commit.get(k).is_some_and(|&t| t > start));
            let outcome = if conflict || spec.fate == 0 {
                Outcome::Aborted
            } else {
                for (key, values) in &pending[i] {
                    committed.entry(*key).or_default().extend(values);
                    last_commit.insert(*key, time);
                }
                Outcome::Committed
            };
            // Some clients never hear back, whatever happened.
            txns[i].outcome = if spec.fate == 1 { Outcome::Indeterminate } else { outcome };
        }
        txns
    }

    #[derive(Clone, Debug)]
    struct TxnSpec {
        start: u64,
        length: u64,
        /// (append?, key)
        ops: Vec<(bool, Key)>,
        /// 0: aborts on its own; 1: outcome unknown to the client; else: tries to commit.
        fate: u8,
    }

    fn txn_spec() -> impl Strategy<Value = TxnSpec> {
        (0u64..60, 0u64..15, prop::collection::vec((any::<bool>(), 0u64..4), 1..6), 0u8..12)
            .prop_map(|(start, length, ops, fate)| TxnSpec { start, length, ops, fate })
    }

    proptest! {
        // Failures are printed, not persisted: the crate keeps no regression files.
        #![proptest_config(ProptestConfig {
            cases: 128,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn snapshot_isolated_histories_are_valid(specs in prop::collection::vec(txn_spec(), 0..40)) {
            let history = simulate(&specs);
            let report = check(&history);
            prop_assert!(report.is_valid_si(), "{}\n{:?}", report, history);
        }
    }

    #[test]
    fn the_simulation_does_produce_write_skew() {
        // Guards the property above against a simulation too tame to matter.
        let spec = |start, ops: Vec<(bool, Key)>| TxnSpec { start, length: 5, ops, fate: 9 };
        let history = simulate(&[
            spec(0, vec![(false, 1), (false, 2), (true, 1)]),
            spec(1, vec![(false, 1), (false, 2), (true, 2)]),
            spec(20, vec![(false, 1), (false, 2)]),
        ]);
        let report = check(&history);
        assert_eq!(kinds(&report), vec![AnomalyKind::G2Item], "{report}");
    }

    #[test]
    fn large_snapshot_isolated_histories_are_checked_quickly() {
        // Thousands of overlapping transactions under snapshot isolation: write skew
        // everywhere, so large components of anti-dependencies, none of them G-single.
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(3);
        let specs: Vec<TxnSpec> = (0..3_000u64)
            .map(|i| TxnSpec {
                start: i,
                length: rng.gen_range(0..8),
                ops: (0..rng.gen_range(1..5))
                    .map(|_| (rng.gen_bool(0.4), rng.gen_range(0..30)))
                    .collect(),
                fate: rng.gen_range(0..20),
            })
            .collect();
        let history = simulate(&specs);
        let started = std::time::Instant::now();
        let report = check(&history);
        assert!(report.is_valid_si(), "{report}");
        assert!(report.of_kind(AnomalyKind::G2Item).count() > 0, "the workload has write skew");
        assert!(started.elapsed().as_secs() < 30, "took {:?}", started.elapsed());
    }

    #[test]
    fn large_histories_are_checked_quickly() {
        // Ten thousand short transactions over a couple of hundred keys, serial: a
        // long chain of dependencies and no cycle.
        let mut lists: HashMap<Key, Vec<Element>> = HashMap::new();
        let mut history = Vec::new();
        for i in 0..10_000u64 {
            let (a, b) = (i % 211, (i * 7 + 3) % 211);
            let seen = lists.entry(a).or_default().clone();
            lists.entry(b).or_default().push(i);
            let mut ops = vec![read(a, &seen), append(b, i)];
            ops.push(read(b, &lists[&b]));
            history.push(committed(ops));
        }
        let report = check(&history);
        assert!(report.anomalies.is_empty(), "{report}");
    }
}
