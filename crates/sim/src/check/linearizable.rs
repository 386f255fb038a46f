//! Linearizability of every key, seen as a register that clients put, delete, read and
//! compare-and-set.
//!
//! A history is linearizable when each operation can be given one instant inside its
//! real-time interval at which it takes effect, such that replaying the operations in
//! the order of those instants on a single register reproduces every result the
//! clients saw. Linearizability is compositional (Herlihy and Wing): a history is
//! linearizable exactly when its restriction to every key is, so each key is checked on
//! its own, which keeps the search small.
//!
//! Per key, the checker runs the search of Wing and Gong as refined by Lowe: walk the
//! invocations and completions in time order; at each point try to make one of the
//! pending operations take effect next (it must be consistent with the register's
//! state); when a completion is reached whose operation has not taken effect yet,
//! backtrack. Configurations (which operations took effect, register state) that were
//! already explored are remembered and never explored twice, which is what makes the
//! search practical (the same memoisation as in Lowe's paper and in Porcupine). The set
//! of operations that took effect is remembered compactly, as "the first `p`
//! operations by invocation, plus these few others", because in a real history that set
//! is a prefix with a ragged edge no wider than the concurrency.
//!
//! The plain search is exponential in the concurrency, so it is cut down by reductions
//! that never lose the only linearization (each is argued where it is implemented): a
//! read the state allows takes effect at once; a value some completed read still needs
//! is not overwritten when nothing else writes it; of several puts of one value only
//! the one due first is tried; writes nobody can observe are placed all together. Before
//! searching, each read is also checked against the writes of its value: if every one of
//! them was certainly overwritten before the read began, the read is stale, which is
//! reported at once with the operations that prove it (the search would find the same,
//! but might have to exhaust everything before it first).
//!
//! An operation whose client never learned the outcome ([`Timing::indeterminate`]) may
//! take effect at any point after its invocation, or never; the search may therefore
//! finish without it. Its result, if any was recorded, is ignored: an indeterminate read
//! constrains nothing and is dropped, an indeterminate compare-and-set either applied
//! (which needs its expectation to hold) or did nothing.
//!
//! The search is bounded by a number of steps per key; when that runs out the verdict is
//! [`Verdict::Unknown`], not a guess. Histories with failed compare-and-sets are the
//! hardest: a failed swap observes "anything but its expectation", which turns off the
//! reduction for unobservable writes, so very concurrent ones (dozens of overlapping
//! operations on one key) may end `Unknown`.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::history::{show_bytes, Timing};

/// A register value; `None` in an [`Op`] stands for an absent key, which is every key's
/// state before anything is written.
pub type Value = Vec<u8>;

/// One client operation on a key, with the result the client saw (ignored when the
/// operation is indeterminate). Operations the client knows did not take effect (a
/// write rejected before it reached the store) should be left out of the history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Sets the key to the value.
    Put(Value),
    /// Removes the key.
    Delete,
    /// Read the key and saw this value (`None`: absent).
    Get(Option<Value>),
    /// Sets the key to `new` (`None`: removes it) if and only if it holds `expected`
    /// (`None`: absent), and reports whether it did.
    Cas {
        /// The state the key must be in for the swap to happen.
        expected: Option<Value>,
        /// The state the key is put in when the swap happens.
        new: Option<Value>,
        /// What the store answered.
        succeeded: bool,
    },
}

/// One entry of a history: what a client did to which key, and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// The key; histories are split by key before searching.
    pub key: Vec<u8>,
    /// The operation and its observed result.
    pub op: Op,
    /// When it ran; `complete` before `invoke` is read as `complete == invoke`.
    pub timing: Timing,
}

/// The judgement on a whole history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every key's history has a linearization.
    Ok,
    /// Some key's history has none. When several keys are broken, the smallest key is
    /// reported.
    Violation {
        /// The key whose history is not linearizable.
        key: Vec<u8>,
        /// Indices into the checked history of the operations named in `message`: the
        /// one that could not be explained first, then the ones it overlapped.
        ops: Vec<usize>,
        /// What the search got stuck on, for a human.
        message: String,
    },
    /// No key is known to be broken, but the search on this key (the smallest such)
    /// ran out of budget, so the history is neither proven nor refuted.
    Unknown {
        /// The key whose search was cut short.
        key: Vec<u8>,
    },
}

impl Verdict {
    /// Whether the history was proven linearizable; `Unknown` is not.
    pub fn is_ok(&self) -> bool {
        matches!(self, Verdict::Ok)
    }
}

/// A budget that proves typical histories of a few thousand operations per key and
/// dozens of clients, and ends in seconds otherwise. Memory grows with the budget: each
/// step may remember one configuration (under a hundred bytes).
pub const DEFAULT_MAX_STEPS: u64 = 2_000_000;

/// Checks that `history` is linearizable, key by key, within [`DEFAULT_MAX_STEPS`] per
/// key; see [`check_with_budget`].
pub fn check(history: &[Operation]) -> Verdict {
    check_with_budget(history, DEFAULT_MAX_STEPS)
}

/// Checks that `history` is linearizable, key by key. `max_steps_per_key` bounds the
/// search on each key (and so its time and memory): a step is one attempt to let an
/// operation take effect that the register's state allows. Keys whose search exhausts
/// it are reported as [`Verdict::Unknown`] unless another key has a violation.
pub fn check_with_budget(history: &[Operation], max_steps_per_key: u64) -> Verdict {
    let mut by_key: BTreeMap<&[u8], Vec<usize>> = BTreeMap::new();
    for (i, operation) in history.iter().enumerate() {
        by_key.entry(&operation.key).or_default().push(i);
    }
    let mut unknown = None;
    for (key, indices) in by_key {
        match check_key(history, key, &indices, max_steps_per_key) {
            KeyVerdict::Linearizable => {}
            KeyVerdict::Violation { ops, message } => {
                return Verdict::Violation { key: key.to_vec(), ops, message };
            }
            KeyVerdict::OutOfBudget => {
                unknown.get_or_insert_with(|| key.to_vec());
            }
        }
    }
    match unknown {
        Some(key) => Verdict::Unknown { key },
        None => Verdict::Ok,
    }
}

/// The register state absent; present values are interned as `1..`.
const ABSENT: u32 = 0;

enum KeyVerdict {
    Linearizable,
    Violation { ops: Vec<usize>, message: String },
    OutOfBudget,
}

/// An operation reduced to what the model needs, with interned values.
#[derive(Clone, Copy)]
enum Step {
    /// Put or delete: always possible, sets the state.
    Write(u32),
    /// A completed get: possible only in this state, changes nothing.
    Read(u32),
    /// `outcome` is `None` when indeterminate.
    Cas { expected: u32, new: u32, outcome: Option<bool> },
}

impl Step {
    /// The state after taking effect in `state`, or `None` if the observed result rules
    /// that out.
    fn apply(self, state: u32) -> Option<u32> {
        match self {
            Step::Write(value) => Some(value),
            Step::Read(value) => (state == value).then_some(state),
            // Applying as a failure is pointless for an unknown outcome: a failed swap
            // changes nothing, which is the same as never taking effect.
            Step::Cas { expected, new, outcome: Some(true) | None } => {
                (state == expected).then_some(new)
            }
            Step::Cas { expected, outcome: Some(false), .. } => {
                (state != expected).then_some(state)
            }
        }
    }

    /// Whether it observes the state without changing it (a get, a failed swap).
    fn is_read(self) -> bool {
        matches!(self, Step::Read(_) | Step::Cas { outcome: Some(false), .. })
    }

    /// The state a completed operation needs to find, if one.
    fn demands(self) -> Option<u32> {
        match self {
            Step::Read(value) | Step::Cas { expected: value, outcome: Some(true), .. } => {
                Some(value)
            }
            _ => None,
        }
    }

    /// The state it may leave behind, if it writes.
    fn supplies(self) -> Option<u32> {
        match self {
            Step::Write(value) | Step::Cas { new: value, outcome: Some(true) | None, .. } => {
                Some(value)
            }
            _ => None,
        }
    }
}

struct KeyOp {
    /// Index into the caller's history.
    orig: usize,
    invoke: u64,
    complete: Option<u64>,
    step: Step,
    /// A put or delete of a value that nothing ever expects to find (see
    /// `Search::level`).
    hideable: bool,
}

fn check_key(history: &[Operation], key: &[u8], indices: &[usize], budget: u64) -> KeyVerdict {
    let written: HashSet<&[u8]> = indices
        .iter()
        .filter_map(|&i| match &history[i].op {
            Op::Put(value) | Op::Cas { new: Some(value), .. } => Some(value.as_slice()),
            _ => None,
        })
        .collect();
    let mut values = Interner::default();

    let mut ops = Vec::with_capacity(indices.len());
    for &i in indices {
        let operation = &history[i];
        let complete = operation.timing.complete.map(|c| c.max(operation.timing.invoke));
        let step = match &operation.op {
            Op::Put(value) => Step::Write(values.intern(Some(value))),
            Op::Delete => Step::Write(ABSENT),
            Op::Get(seen) => {
                if complete.is_none() {
                    continue;
                }
                if let Some(value) = seen {
                    if !written.contains(value.as_slice()) {
                        return unwritten(history, key, i, "read");
                    }
                }
                Step::Read(values.intern(seen.as_deref()))
            }
            Op::Cas { expected, new, succeeded } => {
                let outcome = complete.map(|_| *succeeded);
                if let (Some(true), Some(value)) = (outcome, expected) {
                    if !written.contains(value.as_slice()) {
                        return unwritten(history, key, i, "swapped out");
                    }
                }
                Step::Cas {
                    expected: values.intern(expected.as_deref()),
                    new: values.intern(new.as_deref()),
                    outcome,
                }
            }
        };
        ops.push(KeyOp {
            orig: i,
            invoke: operation.timing.invoke,
            complete,
            step,
            hideable: false,
        });
    }

    // A failed swap expecting a state the register can never be in (nothing writes it,
    // and it is not the initial absence) fits anywhere: it constrains nothing.
    let mut possible = vec![false; values.states()];
    possible[ABSENT as usize] = true;
    for op in &ops {
        if let Some(value) = op.step.supplies() {
            possible[value as usize] = true;
        }
    }
    ops.retain(|op| match op.step {
        Step::Cas { expected, outcome: Some(false), .. } => possible[expected as usize],
        _ => true,
    });

    // A write whose value no get returns and no swap expects is invisible, except to a
    // failed swap (which needs the state to differ from its expectation). Without
    // failed swaps, leaving such a write out of a linearization only changes the state
    // seen by operations that cannot tell, so an indeterminate one can be dropped and a
    // completed one placed right before another write (see `Search`).
    let failed_swaps =
        ops.iter().any(|op| matches!(op.step, Step::Cas { outcome: Some(false), .. }));
    if !failed_swaps {
        let mut observed = vec![false; values.states()];
        for op in &ops {
            match op.step {
                Step::Read(value) | Step::Cas { expected: value, .. } => {
                    observed[value as usize] = true
                }
                Step::Write(_) => {}
            }
        }
        let invisible = |op: &KeyOp| matches!(op.step, Step::Write(v) if !observed[v as usize]);
        ops.retain(|op| op.complete.is_some() || !invisible(op));
        for op in &mut ops {
            op.hideable = invisible(op);
        }
    }
    // Completed operations first, by invocation: they are the ones that enter the
    // linearization in roughly this order, which keeps the remembered sets compact.
    ops.sort_by_key(|op| (op.complete.is_none(), op.invoke, op.orig));

    if let Some(stale) = stale_read(history, key, &ops, values.states(), |id| values.show(id)) {
        return stale;
    }
    let mut search = Search::new(&ops, values.states());
    match search.run(budget) {
        SearchResult::Linearizable => KeyVerdict::Linearizable,
        SearchResult::OutOfBudget => KeyVerdict::OutOfBudget,
        SearchResult::Stuck => {
            explain(history, key, &ops, search.deepest.take(), |id| values.show(id))
        }
    }
}

/// Finds a completed read (a get, or a successful swap's expectation) that no write of
/// its value can explain, because every such write was certainly overwritten before the
/// read began: some write of another value started after it completed, and completed
/// before the read started. This is a necessary condition only, but it is the shape of
/// most real violations (stale reads), and checking it takes O(n log n) where the
/// search might have to explore every way to linearize what came before.
fn stale_read(
    history: &[Operation],
    key: &[u8],
    ops: &[KeyOp],
    states: usize,
    show: impl Fn(u32) -> String,
) -> Option<KeyVerdict> {
    // Times as i128, so the initial absence can be a write that completed before
    // anything began.
    const BEFORE_ALL: i128 = -1;
    let time = |t: u64| i128::from(t);
    // Per value, the writes that may produce it: (invoke, complete or +inf, op), and
    // by invocation the latest completion so far.
    let mut writers: Vec<Vec<(i128, i128, Option<usize>)>> = vec![Vec::new(); states];
    writers[ABSENT as usize].push((BEFORE_ALL, BEFORE_ALL, None));
    for (i, op) in ops.iter().enumerate() {
        if let Some(value) = op.step.supplies() {
            let complete = op.complete.map_or(i128::MAX, time);
            writers[value as usize].push((time(op.invoke), complete, Some(i)));
        }
    }
    let mut latest: Vec<Vec<i128>> = Vec::with_capacity(states);
    for list in &mut writers {
        list.sort_unstable();
        let mut max = i128::MIN;
        latest.push(
            list.iter()
                .map(|&(_, complete, _)| {
                    max = max.max(complete);
                    max
                })
                .collect(),
        );
    }
    // Writes that certainly happened and changed the state, by completion.
    let mut changers: Vec<(u64, u64, u32, usize)> = ops
        .iter()
        .enumerate()
        .filter_map(|(i, op)| {
            let complete = op.complete?;
            let value = match op.step {
                Step::Write(value) | Step::Cas { new: value, outcome: Some(true), .. } => value,
                _ => return None,
            };
            Some((complete, op.invoke, value, i))
        })
        .collect();
    changers.sort_unstable();
    let mut readers: Vec<(u64, usize)> = ops
        .iter()
        .enumerate()
        .filter(|(_, op)| op.complete.is_some() && op.step.demands().is_some())
        .map(|(i, op)| (op.invoke, i))
        .collect();
    readers.sort_unstable();
    // The latest-starting changer among those completed so far, for the two values
    // with the latest such starts: (invoke, value, op).
    let mut top: Vec<(u64, u32, usize)> = Vec::with_capacity(3);
    let mut next_changer = 0;
    for (invoke, reader) in readers {
        while let Some(&(complete, y_invoke, value, y)) = changers.get(next_changer) {
            if complete >= invoke {
                break;
            }
            next_changer += 1;
            match top.iter_mut().find(|entry| entry.1 == value) {
                Some(entry) if entry.0 < y_invoke => *entry = (y_invoke, value, y),
                Some(_) => {}
                None => top.push((y_invoke, value, y)),
            }
            top.sort_unstable_by(|a, b| b.cmp(a));
            top.truncate(2);
        }
        let KeyOp { complete, step, .. } = ops[reader];
        let (Some(complete), Some(value)) = (complete, step.demands()) else { continue };
        let blocker = top.iter().find(|entry| entry.1 != value);
        // Writes of the value invoked before the read completed, of which one must
        // complete no earlier than the blocker began.
        let list = &writers[value as usize];
        let usable = list.partition_point(|&(w_invoke, _, _)| w_invoke <= time(complete));
        let explained = usable > 0
            && blocker.is_none_or(|&(b_invoke, _, _)| {
                latest[value as usize][usable - 1] >= time(b_invoke)
            });
        if explained {
            continue;
        }
        let r = ops[reader].orig;
        let mut named = vec![r];
        let message = match blocker {
            Some(&(_, _, blocker)) if usable > 0 => {
                let y = ops[blocker].orig;
                named.push(y);
                let candidates: Vec<usize> =
                    list[..usable].iter().filter_map(|&(_, _, w)| w.map(|w| ops[w].orig)).collect();
                named.extend(candidates.iter().take(8));
                let mut sources: Vec<String> =
                    candidates.iter().take(8).map(|&w| render(history, w)).collect();
                if candidates.len() > 8 {
                    sources.push(format!("and {} more", candidates.len() - 8));
                }
                if value == ABSENT {
                    sources.insert(0, "the initial absence".to_string());
                }
                format!(
                    "{} is a stale read: every write that could have produced {} ({}) \
                     completed before {} began, and that completed before the read began",
                    render(history, r),
                    show(value),
                    sources.join(", "),
                    render(history, y),
                )
            }
            _ => format!(
                "{} needs the register to be {}, but no write of that was invoked before \
                 it completed",
                render(history, r),
                show(value),
            ),
        };
        let message = format!("key {}: not linearizable: {message}", show_bytes(key));
        return Some(KeyVerdict::Violation { ops: named, message });
    }
    None
}

/// Numbers the values of one key, so states compare and hash as integers.
#[derive(Default)]
struct Interner<'a> {
    ids: HashMap<&'a [u8], u32>,
    names: Vec<&'a [u8]>,
}

impl<'a> Interner<'a> {
    fn intern(&mut self, value: Option<&'a [u8]>) -> u32 {
        let Some(value) = value else { return ABSENT };
        let names = &mut self.names;
        *self.ids.entry(value).or_insert_with(|| {
            names.push(value);
            u32::try_from(names.len()).unwrap_or(u32::MAX)
        })
    }

    /// How many states there are: every value, and absent.
    fn states(&self) -> usize {
        self.names.len() + 1
    }

    fn show(&self, id: u32) -> String {
        match id {
            ABSENT => "absent".to_string(),
            id => show_bytes(self.names[id as usize - 1]),
        }
    }
}

fn unwritten(history: &[Operation], key: &[u8], i: usize, verb: &str) -> KeyVerdict {
    KeyVerdict::Violation {
        ops: vec![i],
        message: format!(
            "key {}: {} {verb} a value that no operation on this key ever wrote",
            show_bytes(key),
            render(history, i),
        ),
    }
}

/// `#index Op -> result [invoke, complete]`, for messages.
fn render(history: &[Operation], i: usize) -> String {
    let operation = &history[i];
    let known = operation.timing.complete.is_some();
    let value = |v: &Option<Value>| v.as_deref().map_or_else(|| "absent".to_string(), show_bytes);
    let op = match &operation.op {
        Op::Put(v) => format!("Put({})", show_bytes(v)),
        Op::Delete => "Delete".to_string(),
        Op::Get(seen) if known => format!("Get -> {}", value(seen)),
        Op::Get(_) => "Get -> ?".to_string(),
        Op::Cas { expected, new, succeeded } => {
            let result = match (known, succeeded) {
                (false, _) => "?",
                (true, true) => "ok",
                (true, false) => "failed",
            };
            format!("Cas({} -> {}) -> {result}", value(expected), value(new))
        }
    };
    let complete = operation.timing.complete.map_or_else(|| "?".to_string(), |c| c.to_string());
    format!("#{i} {op} [{}, {complete}]", operation.timing.invoke)
}

/// Where the search got furthest before it had to give up, for the report.
struct Deepest {
    /// Completed operations that had taken effect.
    depth: usize,
    /// The completed operation that could not be made to take effect in time.
    blocked: usize,
    /// The operation that took effect last, if any.
    last: Option<usize>,
    /// The register state then.
    state: u32,
    /// Operations that were pending (invoked, not yet in effect) at that point.
    pending: Vec<usize>,
    /// If the register could not change because completed operations still had to
    /// find its state, which nothing else writes: those operations.
    starved: Vec<usize>,
}

fn explain(
    history: &[Operation],
    key: &[u8],
    ops: &[KeyOp],
    deepest: Option<Deepest>,
    state: impl Fn(u32) -> String,
) -> KeyVerdict {
    const SHOWN: usize = 12;
    let completed = ops.iter().filter(|op| op.complete.is_some()).count();
    let Some(deepest) = deepest else {
        return KeyVerdict::Violation {
            ops: Vec::new(),
            message: format!("key {}: not linearizable", show_bytes(key)),
        };
    };
    let blocked = ops[deepest.blocked].orig;
    let starved: Vec<usize> = deepest.starved.iter().map(|&op| ops[op].orig).collect();
    let list = |origs: &[usize]| {
        let mut shown: Vec<String> =
            origs.iter().take(SHOWN).map(|&orig| render(history, orig)).collect();
        if origs.len() > SHOWN {
            shown.push(format!("and {} more", origs.len() - SHOWN));
        }
        if shown.is_empty() {
            "none".to_string()
        } else {
            shown.join(", ")
        }
    };
    let mut named: Vec<usize> = starved.iter().take(SHOWN).copied().collect();
    named.push(blocked);
    let last = match deepest.last {
        Some(op) => {
            named.push(ops[op].orig);
            format!("the last being {}", render(history, ops[op].orig))
        }
        None => "none at all".to_string(),
    };
    let pending: Vec<usize> =
        deepest.pending.iter().map(|&op| ops[op].orig).filter(|&orig| orig != blocked).collect();
    named.extend(pending.iter().take(4 * SHOWN));
    let why = if starved.is_empty() {
        format!(
            "then {} completed, and no order of the operations pending with it explains its \
             result",
            render(history, blocked)
        )
    } else {
        format!(
            "{} still had to find that, and nothing left writes it, yet the register had to \
             change before {} completed",
            list(&starved),
            render(history, blocked)
        )
    };
    let message = format!(
        "key {}: not linearizable. The furthest the search got put {} of {completed} completed \
         operations in effect, {last}, leaving the register {}; {why} (pending: {})",
        show_bytes(key),
        deepest.depth,
        state(deepest.state),
        list(&pending),
    );
    KeyVerdict::Violation { ops: named, message }
}

enum SearchResult {
    Linearizable,
    OutOfBudget,
    /// Every configuration was explored; `Search::deepest` says where it got furthest.
    Stuck,
}

/// The set of operations in effect, and its compact form for the memo.
struct Linearized {
    words: Vec<u64>,
    /// Every operation below this index is in effect; this one is not.
    prefix: usize,
    count: usize,
}

impl Linearized {
    fn new(len: usize) -> Linearized {
        Linearized { words: vec![0; len.div_ceil(64)], prefix: 0, count: 0 }
    }

    fn insert(&mut self, i: usize) {
        self.words[i / 64] |= 1 << (i % 64);
        self.count += 1;
        if i != self.prefix {
            return;
        }
        // Slide the prefix over the members that now extend it, a word at a time.
        while let Some(&bits) = self.words.get(self.prefix / 64) {
            let absent = !bits >> (self.prefix % 64);
            if absent != 0 {
                self.prefix += absent.trailing_zeros() as usize;
                break;
            }
            self.prefix = (self.prefix / 64 + 1) * 64;
        }
    }

    fn contains(&self, i: usize) -> bool {
        self.words[i / 64] & (1 << (i % 64)) != 0
    }

    fn remove(&mut self, i: usize) {
        self.words[i / 64] &= !(1 << (i % 64));
        self.count -= 1;
        self.prefix = self.prefix.min(i);
    }

    /// The members beyond the prefix, in order.
    fn ragged_edge(&self) -> Box<[u64]> {
        // The words from the prefix's on, the prefix's own bits masked off, up to the
        // last member: a few words, since the edge is about as wide as the concurrency.
        let mut edge = Vec::new();
        let mut left = self.count - self.prefix;
        let mut word = self.prefix / 64;
        let mut bits = self.words.get(word).map_or(0, |w| w & (!0u64 << (self.prefix % 64)));
        while left > 0 {
            left -= bits.count_ones() as usize;
            edge.push(bits);
            word += 1;
            bits = self.words.get(word).copied().unwrap_or(0);
        }
        edge.into_boxed_slice()
    }
}

/// The WGL search over one key's operations (indexed as in the sorted `ops`).
///
/// Events (invocations and completions) form a doubly linked list in time order; an
/// operation that takes effect is unlinked, both its events at once, and linked back in
/// place when the search backtracks over it. The operations that may take effect next
/// are those invoked before the first completion still linked (the *window*): any
/// other operation would either come after an operation that completed before it was
/// invoked, or leave that completion unexplained.
///
/// Four reductions keep the search small, each one sound (it never hides the only
/// linearization there is):
///
/// - A read (a get, a failed swap) in the window that the state allows is put in
///   effect at once, with no alternative tried: it changes nothing, and every
///   operation that must precede it already took effect, so any linearization that
///   places it later can place it now.
/// - A value that some completed operation still has to find (a get of it, a swap
///   expecting it) and that no remaining operation writes cannot be overwritten: it
///   would never come back.
/// - Of the puts (or deletes) of one value in the window, only the one due first is
///   tried: in any linearization that starts with another, swapping the two changes no
///   state and breaks no deadline.
/// - Invisible writes (see `check_key`) in the window are put in effect together,
///   right before the next put or delete, rather than in every subset: dropping one
///   from a linearization changes only what the ops right after it see, and none of
///   them can tell (no get returns its value, no swap expects it, no swap fails), so
///   placing it there is never worse than placing it later.
///
/// Within those rules, the writes whose value a read in the window is waiting for are
/// tried first, then by deadline.
struct Search<'a> {
    ops: &'a [KeyOp],
    next: Vec<usize>,
    prev: Vec<usize>,
    /// The operation of each event node.
    node_op: Vec<usize>,
    /// Whether each event node is an invocation (else a completion).
    node_is_call: Vec<bool>,
    call_node: Vec<usize>,
    /// Indeterminate operations have no completion event: nothing forces them in.
    return_node: Vec<Option<usize>>,
    head: usize,
    tail: usize,
    linearized: Linearized,
    /// Per state: completed operations not yet in effect that need to find it.
    demand: Vec<u32>,
    /// Per state: operations not yet in effect that may write it.
    supply: Vec<u32>,
    /// Completed operations not yet in effect.
    remaining: usize,
    completed: usize,
    deepest: Option<Deepest>,
}

/// One configuration on the search path, and the alternatives left to try from it.
struct Level {
    /// The operations put in effect to get here from the level below, in order.
    applied: Vec<usize>,
    /// The state at the level below.
    before: u32,
    /// Operations to put in effect next, best first.
    moves: Vec<usize>,
    tried: usize,
    /// Invisible writes to put in effect along with a put or delete move.
    hidden: Vec<usize>,
}

impl<'a> Search<'a> {
    fn new(ops: &'a [KeyOp], states: usize) -> Search<'a> {
        // (time, completions after invocations at the same tick, op): touching
        // intervals overlap, as in `Timing::precedes`.
        let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * ops.len());
        for (i, op) in ops.iter().enumerate() {
            events.push((op.invoke, false, i));
            if let Some(complete) = op.complete {
                events.push((complete, true, i));
            }
        }
        events.sort_unstable();
        let nodes = events.len();
        let (head, tail) = (nodes, nodes + 1);
        let mut next = vec![tail; nodes + 2];
        let mut prev = vec![head; nodes + 2];
        let chain: Vec<usize> =
            std::iter::once(head).chain(0..nodes).chain(std::iter::once(tail)).collect();
        for pair in chain.windows(2) {
            next[pair[0]] = pair[1];
            prev[pair[1]] = pair[0];
        }
        let mut call_node = vec![0; ops.len()];
        let mut return_node = vec![None; ops.len()];
        let mut node_op = Vec::with_capacity(nodes);
        let mut node_is_call = Vec::with_capacity(nodes);
        for (node, &(_, is_return, op)) in events.iter().enumerate() {
            node_op.push(op);
            node_is_call.push(!is_return);
            if is_return {
                return_node[op] = Some(node);
            } else {
                call_node[op] = node;
            }
        }
        let (mut demand, mut supply) = (vec![0; states], vec![0; states]);
        for op in ops {
            if let (Some(value), Some(_)) = (op.step.demands(), op.complete) {
                demand[value as usize] += 1;
            }
            if let Some(value) = op.step.supplies() {
                supply[value as usize] += 1;
            }
        }
        let completed = ops.iter().filter(|op| op.complete.is_some()).count();
        Search {
            ops,
            next,
            prev,
            node_op,
            node_is_call,
            call_node,
            return_node,
            head,
            tail,
            linearized: Linearized::new(ops.len()),
            demand,
            supply,
            remaining: completed,
            completed,
            deepest: None,
        }
    }

    fn unlink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = next;
        self.prev[next] = prev;
    }

    /// Undoes `unlink`; must be called in the reverse order of the unlinks.
    fn relink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = node;
        self.prev[next] = node;
    }

    /// Puts `op` in effect (the state is tracked by the caller).
    fn enter(&mut self, op: usize) {
        self.unlink(self.call_node[op]);
        if let Some(node) = self.return_node[op] {
            self.unlink(node);
        }
        self.linearized.insert(op);
        let KeyOp { step, complete, .. } = self.ops[op];
        if complete.is_some() {
            self.remaining -= 1;
            if let Some(value) = step.demands() {
                self.demand[value as usize] -= 1;
            }
        }
        if let Some(value) = step.supplies() {
            self.supply[value as usize] -= 1;
        }
    }

    /// Undoes `enter`; must be called in the reverse order of the enters.
    fn leave(&mut self, op: usize) {
        if let Some(node) = self.return_node[op] {
            self.relink(node);
        }
        self.relink(self.call_node[op]);
        self.linearized.remove(op);
        let KeyOp { step, complete, .. } = self.ops[op];
        if complete.is_some() {
            self.remaining += 1;
            if let Some(value) = step.demands() {
                self.demand[value as usize] += 1;
            }
        }
        if let Some(value) = step.supplies() {
            self.supply[value as usize] += 1;
        }
    }

    fn run(&mut self, budget: u64) -> SearchResult {
        let mut state = ABSENT;
        let mut seen: HashSet<(u32, Box<[u64]>, u32)> = HashSet::new();
        let mut steps = 0u64;
        let mut levels = vec![self.level(state, Vec::new(), ABSENT)];
        loop {
            if self.remaining == 0 {
                return SearchResult::Linearizable;
            }
            let Some(top) = levels.last_mut() else { return SearchResult::Stuck };
            let Some(&op) = top.moves.get(top.tried) else {
                // Every way on from here failed: undo what led here.
                for &op in top.applied.iter().rev() {
                    self.leave(op);
                }
                state = top.before;
                levels.pop();
                continue;
            };
            top.tried += 1;
            if steps >= budget {
                return SearchResult::OutOfBudget;
            }
            steps += 1;
            let mut applied: Vec<usize> = match self.ops[op].step {
                Step::Write(_) => top.hidden.iter().copied().filter(|&h| h != op).collect(),
                _ => Vec::new(),
            };
            applied.push(op);
            let mut after = state;
            for &op in &applied {
                // Moves were chosen to be possible, and hidden writes always are.
                after = self.ops[op].step.apply(after).unwrap_or(after);
                self.enter(op);
            }
            let prefix = u32::try_from(self.linearized.prefix).unwrap_or(u32::MAX);
            if seen.insert((prefix, self.linearized.ragged_edge(), after)) {
                levels.push(self.level(after, applied, state));
                state = after;
            } else {
                // Explored before, and it failed (or the search would have ended).
                for &op in applied.iter().rev() {
                    self.leave(op);
                }
            }
        }
    }

    /// The level for the current configuration, reached by `applied` from `before`.
    fn level(&mut self, state: u32, applied: Vec<usize>, before: u32) -> Level {
        let mut window = Vec::new();
        let mut node = self.next[self.head];
        while node != self.tail && self.node_is_call[node] {
            window.push(self.node_op[node]);
            node = self.next[node];
        }
        let mut level = Level { applied, before, moves: Vec::new(), tried: 0, hidden: Vec::new() };
        let step = |op: usize| self.ops[op].step;
        if let Some(&read) =
            window.iter().find(|&&op| step(op).is_read() && step(op).apply(state).is_some())
        {
            level.moves.push(read);
            return level;
        }
        // Whether the state may be overwritten, given that `op` takes effect (which
        // may itself be what still needed to find the state).
        let (demand, supply) = (self.demand[state as usize], self.supply[state as usize]);
        let may_overwrite = |op: Option<usize>| {
            let own = op.is_some_and(|op| {
                self.ops[op].complete.is_some() && step(op).demands() == Some(state)
            });
            demand == u32::from(own) || supply > 0
        };
        let waited_for: Vec<u32> = window.iter().filter_map(|&op| step(op).demands()).collect();
        let mut moves: Vec<((bool, bool, u64, u64), usize)> = window
            .iter()
            .filter_map(|&op| {
                let after = step(op).apply(state)?;
                if step(op).is_read() || !(after == state || may_overwrite(Some(op))) {
                    return None;
                }
                let KeyOp { invoke, complete, hideable, .. } = self.ops[op];
                let rank =
                    (hideable, !waited_for.contains(&after), complete.unwrap_or(u64::MAX), invoke);
                Some((rank, op))
            })
            .collect();
        moves.sort_unstable();
        // Of the puts (or deletes) of one value, only the one due first: any
        // linearization that starts with another can swap the two.
        let mut written = Vec::new();
        moves.retain(|&(_, op)| match step(op) {
            Step::Write(value) if written.contains(&value) => false,
            Step::Write(value) => {
                written.push(value);
                true
            }
            _ => true,
        });
        level.moves = moves.into_iter().map(|(_, op)| op).collect();
        if may_overwrite(None) {
            level.hidden = window.iter().copied().filter(|&op| self.ops[op].hideable).collect();
        }
        if level.moves.is_empty() && node != self.tail {
            let depth = self.completed - self.remaining;
            if self.deepest.as_ref().is_none_or(|d| depth > d.depth) {
                let starved = if may_overwrite(None) {
                    Vec::new()
                } else {
                    (0..self.ops.len())
                        .filter(|&op| {
                            let KeyOp { complete, step, .. } = self.ops[op];
                            complete.is_some()
                                && step.demands() == Some(state)
                                && !self.linearized.contains(op)
                        })
                        .collect()
                };
                self.deepest = Some(Deepest {
                    depth,
                    blocked: self.node_op[node],
                    last: level.applied.last().copied(),
                    state,
                    pending: window,
                    starved,
                });
            }
        }
        level
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v(s: &str) -> Option<Value> {
        Some(s.as_bytes().to_vec())
    }

    fn at(op: Op, invoke: u64, complete: u64) -> Operation {
        Operation { key: b"k".to_vec(), op, timing: Timing::completed(invoke, complete) }
    }

    fn lost(op: Op, invoke: u64) -> Operation {
        Operation { key: b"k".to_vec(), op, timing: Timing::indeterminate(invoke) }
    }

    fn put(s: &str) -> Op {
        Op::Put(s.as_bytes().to_vec())
    }

    fn get(s: Option<&str>) -> Op {
        Op::Get(s.and_then(v))
    }

    fn cas(expected: Option<&str>, new: Option<&str>, succeeded: bool) -> Op {
        Op::Cas { expected: expected.and_then(v), new: new.and_then(v), succeeded }
    }

    fn verdict(history: &[Operation]) -> Verdict {
        check(history)
    }

    #[test]
    fn empty_and_sequential_histories_are_linearizable() {
        assert_eq!(verdict(&[]), Verdict::Ok);
        let history = [
            at(get(None), 0, 1),
            at(put("a"), 2, 3),
            at(get(Some("a")), 4, 5),
            at(cas(Some("a"), Some("b"), true), 6, 7),
            at(cas(Some("a"), Some("c"), false), 8, 9),
            at(get(Some("b")), 10, 11),
            at(Op::Delete, 12, 13),
            at(get(None), 14, 15),
            at(cas(None, Some("d"), true), 16, 17),
            at(get(Some("d")), 18, 19),
        ];
        assert_eq!(verdict(&history), Verdict::Ok);
    }

    #[test]
    fn stale_read_after_completed_put_is_a_violation() {
        let history = [at(put("a"), 0, 10), at(put("b"), 20, 30), at(get(Some("a")), 40, 50)];
        let Verdict::Violation { key, ops, message } = verdict(&history) else {
            panic!("stale read accepted");
        };
        assert_eq!(key, b"k");
        assert_eq!(ops[0], 2, "the stale get is named first: {message}");
        assert_eq!(ops[1], 1, "then the write that hid the value: {message}");
        assert!(message.contains("is a stale read"), "{message}");
        assert!(message.contains("#2 Get -> \"a\" [40, 50]"), "{message}");
        assert!(message.contains("\"b\""), "{message}");
    }

    #[test]
    fn concurrent_put_and_get_may_go_either_way() {
        for seen in [None, Some("a")] {
            let history = [at(put("a"), 0, 10), at(get(seen), 5, 15)];
            assert_eq!(verdict(&history), Verdict::Ok, "get saw {seen:?}");
        }
        // Touching intervals overlap too.
        let history = [at(put("a"), 0, 10), at(get(None), 10, 15)];
        assert_eq!(verdict(&history), Verdict::Ok);
    }

    #[test]
    fn reads_cannot_flip_back_and_forth() {
        // Two reads that overlap the put but not each other: once one saw the new
        // value, a later one cannot see the old.
        let history = [at(put("a"), 0, 100), at(get(Some("a")), 10, 20), at(get(None), 30, 40)];
        let Verdict::Violation { ops, message, .. } = verdict(&history) else {
            panic!("a read went back in time");
        };
        assert_eq!(ops[0], 2, "{message}");
        assert!(message.contains("#2 Get -> absent [30, 40] still had to find"), "{message}");
        let history = [at(put("a"), 0, 100), at(get(None), 10, 20), at(get(Some("a")), 30, 40)];
        assert_eq!(verdict(&history), Verdict::Ok);
    }

    #[test]
    fn indeterminate_writes_may_take_effect_late_or_never() {
        // Shows up long after the client gave up on it.
        let history = [lost(put("a"), 0), at(get(None), 5, 6), at(get(Some("a")), 100, 110)];
        assert_eq!(verdict(&history), Verdict::Ok);
        // Never shows up.
        let history = [lost(put("a"), 0), at(get(None), 100, 110)];
        assert_eq!(verdict(&history), Verdict::Ok);
        // But it cannot take effect before it was invoked...
        let history = [at(get(Some("a")), 0, 5), lost(put("a"), 10)];
        assert!(matches!(verdict(&history), Verdict::Violation { .. }));
        // ...nor be undone once seen.
        let history = [lost(put("a"), 0), at(get(Some("a")), 5, 6), at(get(None), 7, 8)];
        assert!(matches!(verdict(&history), Verdict::Violation { .. }));
        // An indeterminate swap applies only if its expectation held.
        let history = [
            at(put("a"), 0, 1),
            lost(cas(Some("x"), Some("b"), false), 2),
            at(put("x"), 3, 4),
            at(get(Some("x")), 5, 6),
        ];
        assert!(matches!(verdict(&history), Verdict::Ok));
        let history = [
            at(put("a"), 0, 1),
            lost(cas(Some("x"), Some("b"), false), 2),
            at(get(Some("b")), 5, 6),
        ];
        assert!(matches!(verdict(&history), Verdict::Violation { .. }));
    }

    #[test]
    fn indeterminate_reads_are_ignored() {
        let history = [at(put("a"), 0, 1), lost(get(Some("zzz")), 2), at(get(Some("a")), 3, 4)];
        assert_eq!(verdict(&history), Verdict::Ok);
    }

    #[test]
    fn cas_results_must_match_the_state() {
        let wrong_success = [
            at(put("a"), 0, 10),
            at(put("b"), 20, 30),
            at(cas(Some("a"), Some("c"), true), 40, 50),
        ];
        let Verdict::Violation { ops, .. } = verdict(&wrong_success) else {
            panic!("cas on a stale expectation accepted");
        };
        assert_eq!(ops[0], 2);
        let wrong_failure = [at(put("a"), 0, 10), at(cas(Some("a"), Some("c"), false), 20, 30)];
        assert!(matches!(verdict(&wrong_failure), Verdict::Violation { .. }));
        let right_failure = [at(put("a"), 0, 10), at(cas(None, Some("c"), false), 20, 30)];
        assert_eq!(verdict(&right_failure), Verdict::Ok);
        let cas_delete =
            [at(put("a"), 0, 10), at(cas(Some("a"), None, true), 20, 30), at(get(None), 40, 50)];
        assert_eq!(verdict(&cas_delete), Verdict::Ok);
    }

    #[test]
    fn values_nobody_wrote_are_violations() {
        let history = [at(put("a"), 0, 10), at(get(Some("ghost")), 20, 30)];
        let Verdict::Violation { ops, message, .. } = verdict(&history) else {
            panic!("read of an unwritten value accepted");
        };
        assert_eq!(ops, vec![1]);
        assert!(message.contains("no operation on this key ever wrote"), "{message}");
        // A value written to another key does not count.
        let history = [
            Operation { key: b"other".to_vec(), op: put("ghost"), timing: Timing::completed(0, 1) },
            at(get(Some("ghost")), 20, 30),
        ];
        assert!(matches!(verdict(&history), Verdict::Violation { ref key, .. } if key == b"k"));
        let history = [at(cas(Some("ghost"), Some("b"), true), 0, 1)];
        assert!(matches!(verdict(&history), Verdict::Violation { .. }));
    }

    #[test]
    fn deletes_make_keys_absent() {
        let history = [at(put("a"), 0, 1), at(Op::Delete, 2, 3), at(get(None), 4, 5)];
        assert_eq!(verdict(&history), Verdict::Ok);
        let history = [at(put("a"), 0, 1), at(Op::Delete, 2, 3), at(get(Some("a")), 4, 5)];
        assert!(matches!(verdict(&history), Verdict::Violation { .. }));
    }

    #[test]
    fn keys_are_checked_independently() {
        let on = |key: &str, op: Op, invoke: u64, complete: u64| Operation {
            key: key.as_bytes().to_vec(),
            op,
            timing: Timing::completed(invoke, complete),
        };
        // Linearizable per key even though "x" and "y" disagree about time globally.
        let history = [
            on("x", put("1"), 0, 1),
            on("y", put("1"), 0, 1),
            on("x", get(Some("1")), 2, 3),
            on("y", get(Some("1")), 2, 3),
            on("y", put("2"), 4, 5),
            on("y", get(Some("1")), 6, 7),
        ];
        let Verdict::Violation { key, ops, .. } = verdict(&history) else {
            panic!("stale read on y accepted");
        };
        assert_eq!(key, b"y");
        assert_eq!(ops[0], 5);
    }

    #[test]
    fn an_exhausted_budget_is_unknown() {
        let history = [at(put("a"), 0, 10), at(put("b"), 0, 10), at(get(Some("b")), 20, 30)];
        assert_eq!(check_with_budget(&history, 1), Verdict::Unknown { key: b"k".to_vec() });
        assert_eq!(check_with_budget(&history, 1_000), Verdict::Ok);
        // A violation elsewhere still wins over an unknown key.
        let mut history = history.to_vec();
        history.push(Operation {
            key: b"z".to_vec(),
            op: get(Some("ghost")),
            timing: Timing::completed(0, 1),
        });
        assert!(
            matches!(check_with_budget(&history, 1), Verdict::Violation { ref key, .. } if key == b"z")
        );
    }

    /// A busy single-key history: `clients` closed-loop clients, each op taking effect
    /// at a random instant inside its interval; about one op in a hundred is lost.
    fn busy_history(clients: u64, ops_per_client: u64, seed: u64) -> Vec<Operation> {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(seed);
        // (instant it takes effect, invoke, complete, kind, value, lost)
        let mut planned = Vec::new();
        let mut next_value = 0u32;
        for _ in 0..clients {
            let mut now: u64 = rng.gen_range(0..1_000);
            for _ in 0..ops_per_client {
                let invoke = now;
                let complete = invoke + rng.gen_range(1..2_000);
                let instant = rng.gen_range(invoke..=complete);
                let kind = rng.gen_range(0..10u8);
                next_value += 1;
                let lost = rng.gen_range(0..100) == 0;
                planned.push((instant, invoke, complete, kind, next_value, lost));
                now = complete + rng.gen_range(0..50);
            }
        }
        planned.sort_unstable();
        let mut register: Option<Value> = None;
        let mut last_written: Option<Value> = None;
        let mut history = Vec::new();
        for (_, invoke, complete, kind, value, lost) in planned {
            let bytes = value.to_string().into_bytes();
            let op = match kind {
                0..=3 => {
                    register = Some(bytes.clone());
                    Op::Put(bytes)
                }
                4 => {
                    let expected = last_written.clone();
                    let succeeded = register == expected;
                    if succeeded {
                        register = Some(bytes.clone());
                    }
                    Op::Cas { expected, new: Some(bytes), succeeded }
                }
                _ => Op::Get(register.clone()),
            };
            if matches!(op, Op::Put(_) | Op::Cas { succeeded: true, .. }) {
                last_written.clone_from(&register);
            }
            let timing = if lost {
                Timing::indeterminate(invoke)
            } else {
                Timing::completed(invoke, complete)
            };
            history.push(Operation { key: b"k".to_vec(), op, timing });
        }
        history
    }

    #[test]
    fn busy_histories_are_checked_in_reasonable_time() {
        let history = busy_history(64, 50, 7);
        let started = std::time::Instant::now();
        assert_eq!(verdict(&history), Verdict::Ok);
        let elapsed = started.elapsed();
        assert!(elapsed.as_secs() < 60, "took {elapsed:?}");
    }

    #[test]
    fn a_stale_read_late_in_a_busy_history_is_found() {
        let mut history = busy_history(64, 50, 11);
        // The last completed get to start, made to return a value whose write
        // finished, and was overwritten by a write that finished, before it began.
        let (victim, invoke) = history
            .iter()
            .enumerate()
            .filter(|(_, o)| matches!(o.op, Op::Get(_)) && o.timing.complete.is_some())
            .map(|(i, o)| (i, o.timing.invoke))
            .max_by_key(|&(_, invoke)| invoke)
            .expect("a get");
        let done_puts: Vec<(Timing, Value)> = history
            .iter()
            .filter(|o| o.timing.complete.is_some_and(|c| c < invoke))
            .filter_map(|o| match &o.op {
                Op::Put(value) => Some((o.timing, value.clone())),
                _ => None,
            })
            .collect();
        // The most recently overwritten one, so the search has the most to explore.
        let (_, stale) = done_puts
            .iter()
            .filter(|(old, _)| done_puts.iter().any(|(newer, _)| old.precedes(newer)))
            .max_by_key(|(old, _)| old.complete)
            .cloned()
            .expect("an overwritten put");
        history[victim].op = Op::Get(Some(stale));
        let started = std::time::Instant::now();
        let verdict = verdict(&history);
        let elapsed = started.elapsed();
        assert!(!verdict.is_ok(), "stale read accepted");
        assert!(matches!(verdict, Verdict::Violation { .. }), "{verdict:?} after {elapsed:?}");
    }

    /// A register history that a linearization explains by construction: `ops` take
    /// effect at instants `10 * i`, each inside an interval around its instant.
    fn build(specs: &[OpSpec]) -> Vec<Operation> {
        let mut state: HashMap<u8, Option<Value>> = HashMap::new();
        let mut history = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            let point = 1_000 + 10 * i as u64;
            let register = state.entry(spec.key).or_default();
            let value = |n: u8| Some(vec![b'a' + n]);
            let expected = (spec.expected < 4).then(|| vec![b'a' + spec.expected]);
            let op = match spec.kind {
                0 | 1 => {
                    if spec.takes_effect || !spec.lost {
                        *register = value(spec.value);
                    }
                    Op::Put(vec![b'a' + spec.value])
                }
                2 => {
                    if spec.takes_effect || !spec.lost {
                        *register = None;
                    }
                    Op::Delete
                }
                3 => {
                    let succeeded = *register == expected;
                    if succeeded && (spec.takes_effect || !spec.lost) {
                        *register = value(spec.value);
                    }
                    Op::Cas { expected, new: value(spec.value), succeeded }
                }
                _ => Op::Get(register.clone()),
            };
            let invoke = point - spec.before;
            let timing = if spec.lost {
                Timing::indeterminate(invoke)
            } else {
                Timing::completed(invoke, point + spec.after)
            };
            history.push(Operation { key: vec![b'k', spec.key], op, timing });
        }
        // The input order must not matter.
        history.reverse();
        history
    }

    #[derive(Clone, Debug)]
    struct OpSpec {
        key: u8,
        /// 0..=1 put, 2 delete, 3 cas, 4..=6 get
        kind: u8,
        value: u8,
        /// 4 means absent
        expected: u8,
        before: u64,
        after: u64,
        lost: bool,
        takes_effect: bool,
    }

    fn op_spec() -> impl Strategy<Value = OpSpec> {
        (0u8..2, 0u8..7, 0u8..4, 0u8..5, 0u64..150, 0u64..150, 0u8..20, any::<bool>()).prop_map(
            |(key, kind, value, expected, before, after, lost, takes_effect)| OpSpec {
                key,
                kind,
                value,
                expected,
                before,
                after,
                lost: lost == 0,
                takes_effect,
            },
        )
    }

    proptest! {
        // Failures are printed, not persisted: the crate keeps no regression files.
        #![proptest_config(ProptestConfig {
            cases: 64,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn linearizable_by_construction_passes(specs in prop::collection::vec(op_spec(), 0..250)) {
            let history = build(&specs);
            prop_assert_eq!(verdict(&history), Verdict::Ok);
        }

        #[test]
        fn a_read_of_a_never_written_value_fails(
            specs in prop::collection::vec(op_spec(), 1..250),
            pick in any::<prop::sample::Index>(),
        ) {
            let mut history = build(&specs);
            let reads: Vec<usize> = (0..history.len())
                .filter(|&i| matches!(history[i].op, Op::Get(_)) && history[i].timing.complete.is_some())
                .collect();
            prop_assume!(!reads.is_empty());
            let victim = reads[pick.index(reads.len())];
            history[victim].op = Op::Get(Some(b"never written".to_vec()));
            let is_violation = matches!(verdict(&history), Verdict::Violation { ref ops, .. } if ops[0] == victim);
            prop_assert!(is_violation);
        }
    }
}
