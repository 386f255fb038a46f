//! Golden scripts for the Percolator actions: each file in `tests/scripts/` is a sequence of
//! commands, each followed by its recorded output (`> ` lines). The runner replays the
//! commands on an in-memory engine and compares. Every script opens with a `#` comment
//! stating what it shows. Regenerate with `UPDATE_GOLDENFILES=1` and review the diff.
//!
//! Commands (timestamps are plain integers; physical time of `ts` is `ts >> 18`):
//!
//! ```text
//! prewrite start=N primary=K [ttl=N] [for_update=N] [async] [min_commit=N] [one_pc] OPS...
//!          OPS: put:K=V  del:K  lock:K  insert:K=V  check:K   (pessimistic when for_update)
//! commit start=N commit=N KEYS...        rollback start=N KEYS...
//! cleanup start=N current=N KEY          get KEY ts=N
//! scan [from=K] [to=K] ts=N limit=N [reverse] [key_only]
//! status primary=K lock_ts=N [caller=N] [current=N] [rollback_if_not_exist] [force_sync] [resolving_pessimistic]
//! secondaries start=N KEYS...            resolve start=N commit=N
//! lock start=N primary=K for_update=N [ttl=N] [min_commit=N] [not_exist] KEYS...
//! pessimistic_rollback start=N for_update=N KEYS...
//! heartbeat primary=K start=N ttl=N      gc safe=N      max_ts N      dump
//! ```

use scandium_storage::{Cf, Engine, MemoryEngine};
use scandium_txn::actions::cleanup::{self, CheckTxnStatus, SecondaryStatus, TxnStatus};
use scandium_txn::actions::prewrite::{self, Mutation, MutationOp, PessimisticAction, TxnProps};
use scandium_txn::actions::{commit, gc, pessimistic, read};
use scandium_txn::mvcc::{latest, Lock, MvccReader, MvccTxn, Write};
use scandium_txn::{ConcurrencyManager, TxnError};
use scandium_types::mvcc::split_versioned_key;
use scandium_types::TimeStamp;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

struct Args {
    flags: HashMap<String, String>,
    words: Vec<String>,
}

impl Args {
    fn parse(parts: &[&str]) -> Args {
        let mut flags = HashMap::new();
        let mut words = Vec::new();
        for part in parts {
            match part.split_once('=') {
                Some((k, v)) if !k.contains(':') => {
                    flags.insert(k.to_string(), v.to_string());
                }
                _ if !part.contains(':')
                    && [
                        "async",
                        "one_pc",
                        "reverse",
                        "key_only",
                        "rollback_if_not_exist",
                        "force_sync",
                        "resolving_pessimistic",
                        "not_exist",
                    ]
                    .contains(part) =>
                {
                    flags.insert(part.to_string(), String::new());
                }
                _ => words.push(part.to_string()),
            }
        }
        Args { flags, words }
    }
    fn ts(&self, name: &str) -> TimeStamp {
        TimeStamp(self.flags.get(name).map_or(0, |v| v.parse().expect("numeric flag")))
    }
    fn num(&self, name: &str, default: u64) -> u64 {
        self.flags.get(name).map_or(default, |v| v.parse().expect("numeric flag"))
    }
    fn has(&self, name: &str) -> bool {
        self.flags.contains_key(name)
    }
    fn bytes(&self, name: &str) -> Vec<u8> {
        self.flags.get(name).cloned().unwrap_or_default().into_bytes()
    }
    fn keys(&self) -> Vec<Vec<u8>> {
        self.words.iter().map(|w| w.clone().into_bytes()).collect()
    }
}

fn show_error(e: &TxnError) -> String {
    match e {
        TxnError::KeyIsLocked { key, lock } => format!(
            "locked {} by {} (primary {}, ttl {}, min_commit {})",
            s(key),
            lock.start_ts,
            s(&lock.primary),
            lock.ttl,
            lock.min_commit_ts
        ),
        TxnError::WriteConflict {
            key,
            conflict_start_ts,
            conflict_commit_ts,
            self_rolled_back,
            ..
        } => {
            format!(
                "write conflict on {} with {conflict_start_ts}@{conflict_commit_ts}{}",
                s(key),
                if *self_rolled_back { " (self rolled back)" } else { "" }
            )
        }
        other => other.to_string(),
    }
}

fn s(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn show_lock(lock: &Lock) -> String {
    let mut out = format!(
        "{:?} start={} primary={} ttl={}",
        lock.kind(),
        lock.start_ts,
        s(&lock.primary),
        lock.ttl
    );
    if let Some(v) = &lock.short_value {
        write!(out, " value={}", s(v)).unwrap();
    }
    if lock.for_update_ts != 0 {
        write!(out, " for_update={}", lock.for_update_ts).unwrap();
    }
    if lock.min_commit_ts != 0 {
        write!(out, " min_commit={}", lock.min_commit_ts).unwrap();
    }
    if lock.use_async_commit {
        write!(
            out,
            " async secondaries=[{}]",
            lock.secondaries.iter().map(|k| s(k)).collect::<Vec<_>>().join(",")
        )
        .unwrap();
    }
    out
}

struct Runner {
    engine: MemoryEngine,
    cm: Arc<ConcurrencyManager>,
}

impl Runner {
    /// Runs `f` on a fresh snapshot; writes its changes only if it succeeds.
    fn write<T>(
        &self,
        f: impl FnOnce(&MvccReader<'_>, &mut MvccTxn) -> Result<T, TxnError>,
    ) -> Result<T, TxnError> {
        let snapshot = self.engine.snapshot();
        let reader = MvccReader::new(&*snapshot);
        let mut txn = MvccTxn::new();
        let out = f(&reader, &mut txn)?;
        self.engine.write(txn.into_batch(&reader).unwrap()).unwrap();
        latest::verify(&*self.engine.snapshot()).unwrap();
        Ok(out)
    }

    fn run(&mut self, line: &str) -> Vec<String> {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let args = Args::parse(&parts[1..]);
        let done = |r: Result<(), TxnError>| {
            vec![r.map_or_else(|e| show_error(&e), |()| "ok".to_string())]
        };
        match parts[0] {
            "prewrite" => self.prewrite(&args),
            "commit" => done(self.write(|r, t| {
                args.keys()
                    .iter()
                    .try_for_each(|k| commit::commit(r, t, k, args.ts("start"), args.ts("commit")))
            })),
            "rollback" => done(self.write(|r, t| {
                args.keys().iter().try_for_each(|k| cleanup::rollback(r, t, k, args.ts("start")))
            })),
            "cleanup" => done(self.write(|r, t| {
                cleanup::cleanup(r, t, &args.keys()[0], args.ts("start"), args.ts("current"))
            })),
            "get" => {
                self.cm.update_max_ts(args.ts("ts"));
                let snapshot = self.engine.snapshot();
                match read::point_get(&MvccReader::new(&*snapshot), &args.keys()[0], args.ts("ts"))
                {
                    Ok(Some(v)) => vec![s(&v)],
                    Ok(None) => vec!["not found".into()],
                    Err(e) => vec![show_error(&e)],
                }
            }
            "scan" => {
                let snapshot = self.engine.snapshot();
                let reader = MvccReader::new(&*snapshot);
                let limit = args.num("limit", 100) as usize;
                match read::scan(
                    &reader,
                    &args.bytes("from"),
                    &args.bytes("to"),
                    limit,
                    args.ts("ts"),
                    args.has("key_only"),
                    args.has("reverse"),
                ) {
                    Ok(items) if items.is_empty() => vec!["(empty)".into()],
                    Ok(items) => items
                        .into_iter()
                        .map(|(k, v)| match v {
                            Ok(v) => format!("{}={}", s(&k), s(&v)),
                            Err(e) => show_error(&e),
                        })
                        .collect(),
                    Err(e) => vec![show_error(&e)],
                }
            }
            "status" => self.status(&args),
            "secondaries" => {
                let result = self.write(|r, t| {
                    cleanup::check_secondary_locks(r, t, &args.keys(), args.ts("start"))
                });
                vec![match result {
                    Ok(SecondaryStatus::Locked(locks)) => format!(
                        "locked: {}",
                        locks
                            .iter()
                            .map(|(k, l)| format!("{}(min_commit {})", s(k), l.min_commit_ts))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    Ok(SecondaryStatus::Committed(ts)) => format!("committed at {ts}"),
                    Ok(SecondaryStatus::RolledBack) => "rolled back".into(),
                    Err(e) => show_error(&e),
                }]
            }
            "resolve" => done(self.write(|r, t| {
                let start = args.ts("start").0;
                for (key, lock) in r.scan_locks(b"", b"", 0, |l| l.start_ts == start)? {
                    cleanup::resolve_lock(r, t, &key, lock, args.ts("commit"))?;
                }
                Ok(())
            })),
            "lock" => {
                let mut values = Vec::new();
                let result = self.write(|r, t| {
                    for key in args.keys() {
                        let req = pessimistic::PessimisticLockRequest {
                            key: key.clone(),
                            primary: args.bytes("primary"),
                            start_ts: args.ts("start"),
                            lock_ttl: args.num("ttl", 3000),
                            for_update_ts: args.ts("for_update"),
                            should_not_exist: args.has("not_exist"),
                            min_commit_ts: args.ts("min_commit"),
                        };
                        let value = pessimistic::acquire_pessimistic_lock(r, t, &req)?;
                        values.push(format!(
                            "{}: {}",
                            s(&key),
                            value.map_or("not found".into(), |v| s(&v))
                        ));
                    }
                    Ok(())
                });
                match result {
                    Ok(()) => values,
                    Err(e) => vec![show_error(&e)],
                }
            }
            "pessimistic_rollback" => done(self.write(|r, t| {
                args.keys().iter().try_for_each(|k| {
                    pessimistic::pessimistic_rollback(
                        r,
                        t,
                        k,
                        args.ts("start"),
                        args.ts("for_update"),
                    )
                })
            })),
            "heartbeat" => vec![match self.write(|r, t| {
                pessimistic::txn_heart_beat(
                    r,
                    t,
                    &args.bytes("primary"),
                    args.ts("start"),
                    args.num("ttl", 0),
                )
            }) {
                Ok(ttl) => format!("ttl {ttl}"),
                Err(e) => show_error(&e),
            }],
            "gc" => {
                let snapshot = self.engine.snapshot();
                let reader = MvccReader::new(&*snapshot);
                let keys = reader.keys_with_writes(b"", b"", false, usize::MAX).unwrap();
                let deleted = self
                    .write(|r, t| {
                        keys.iter()
                            .try_fold(0, |n, k| Ok(n + gc::gc_key(r, t, k, args.ts("safe"))?))
                    })
                    .unwrap();
                vec![format!("deleted {deleted}")]
            }
            "max_ts" => {
                self.cm.update_max_ts(TimeStamp(parts[1].parse().unwrap()));
                vec![format!("max_ts {}", self.cm.max_ts())]
            }
            "dump" => self.dump(),
            other => panic!("unknown command {other}"),
        }
    }

    fn prewrite(&mut self, args: &Args) -> Vec<String> {
        let for_update = args.ts("for_update");
        let mutations: Vec<Mutation> = args
            .words
            .iter()
            .map(|w| {
                let (op, rest) = w.split_once(':').expect("op:key");
                let (key, value) = rest.split_once('=').unwrap_or((rest, ""));
                let op = match op {
                    "put" => MutationOp::Put,
                    "del" => MutationOp::Delete,
                    "lock" => MutationOp::Lock,
                    "insert" => MutationOp::Insert,
                    "check" => MutationOp::CheckNotExists,
                    other => panic!("unknown op {other}"),
                };
                Mutation { op, key: key.as_bytes().to_vec(), value: value.as_bytes().to_vec() }
            })
            .collect();
        let props = TxnProps {
            start_ts: args.ts("start"),
            primary: args.bytes("primary"),
            lock_ttl: args.num("ttl", 3000),
            txn_size: mutations.len() as u64,
            for_update_ts: for_update,
            use_async_commit: args.has("async"),
            secondaries: if args.has("async") {
                mutations
                    .iter()
                    .map(|m| m.key.clone())
                    .filter(|k| *k != args.bytes("primary"))
                    .collect()
            } else {
                vec![]
            },
            min_commit_ts: args.ts("min_commit"),
        };
        let action = if for_update == TimeStamp::ZERO {
            PessimisticAction::SkipPessimisticCheck
        } else {
            PessimisticAction::DoPessimisticCheck
        };
        let cm = self.cm.clone();
        let one_pc = args.has("one_pc");
        let mutations: Vec<_> = mutations.into_iter().map(|m| (m, action)).collect();
        let request = prewrite::PrewriteRequest {
            props: &props,
            mutations: &mutations,
            try_one_pc: one_pc,
            max_commit_ts: 0,
        };
        let result = self.write(|r, t| {
            let done = prewrite::prewrite(r, t, &cm, request)?;
            if !done.errors.is_empty() {
                let errors: Vec<String> = done.errors.iter().map(show_error).collect();
                return Err(TxnError::Invalid(errors.join("; ")));
            }
            Ok(if one_pc {
                format!("ok, committed at {} (1PC)", done.one_pc_commit_ts)
            } else if props.use_async_commit {
                format!("ok, min_commit_ts {}", done.min_commit_ts)
            } else {
                "ok".into()
            })
        });
        vec![result.unwrap_or_else(|e| match e {
            TxnError::Invalid(m) => m,
            other => show_error(&other),
        })]
    }

    fn status(&mut self, args: &Args) -> Vec<String> {
        let req = CheckTxnStatus {
            primary: args.bytes("primary"),
            lock_ts: args.ts("lock_ts"),
            caller_start_ts: args.ts("caller"),
            current_ts: if args.has("current") { args.ts("current") } else { TimeStamp::MAX },
            rollback_if_not_exist: args.has("rollback_if_not_exist"),
            force_sync_commit: args.has("force_sync"),
            resolving_pessimistic_lock: args.has("resolving_pessimistic"),
            verify_is_primary: true,
        };
        let cm = self.cm.clone();
        vec![match self.write(|r, t| cleanup::check_txn_status(r, t, &cm, &req)) {
            Ok((TxnStatus::Locked(lock), action)) => {
                format!("locked ({action:?}): {}", show_lock(&lock))
            }
            Ok((TxnStatus::Committed(ts), action)) => format!("committed at {ts} ({action:?})"),
            Ok((TxnStatus::RolledBack, action)) => format!("rolled back ({action:?})"),
            Err(e) => show_error(&e),
        }]
    }

    fn dump(&self) -> Vec<String> {
        let snapshot = self.engine.snapshot();
        let mut out = Vec::new();
        for item in snapshot.scan(Cf::Lock, b"", b"", false) {
            let (k, v) = item.unwrap();
            out.push(format!("lock {}: {}", s(&k), show_lock(&Lock::from_bytes(&v).unwrap())));
        }
        for item in snapshot.scan(Cf::Write, b"", b"", false) {
            let (k, v) = item.unwrap();
            let (key, ts) = split_versioned_key(&k).unwrap();
            let w = Write::from_bytes(&v).unwrap();
            let mut line = format!("write {}@{ts}: {:?} start={}", s(&key), w.kind(), w.start_ts);
            if let Some(v) = &w.short_value {
                write!(line, " value={}", s(v)).unwrap();
            }
            if w.has_overlapped_rollback {
                line.push_str(" +rollback");
            }
            out.push(line);
        }
        for item in snapshot.scan(Cf::Default, b"", b"", false) {
            let (k, v) = item.unwrap();
            let (key, ts) = split_versioned_key(&k).unwrap();
            out.push(format!("value {}@{ts}: {} bytes", s(&key), v.len()));
        }
        if out.is_empty() {
            out.push("(empty)".into());
        }
        out
    }
}

#[test]
fn golden_scripts() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts");
    let mut paths: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    paths.sort();
    let update = std::env::var_os("UPDATE_GOLDENFILES").is_some();
    let mut failed = Vec::new();
    for path in paths.iter().filter(|p| p.extension().is_some_and(|e| e == "txt")) {
        let text = std::fs::read_to_string(path).unwrap();
        let mut runner = Runner {
            engine: MemoryEngine::new(),
            cm: Arc::new(ConcurrencyManager::new(TimeStamp::ZERO)),
        };
        let mut output = String::new();
        for line in text.lines().filter(|l| !l.starts_with("> ")) {
            output.push_str(line);
            output.push('\n');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            for result in runner.run(line) {
                writeln!(output, "> {result}").unwrap();
            }
        }
        if update {
            std::fs::write(path, &output).unwrap();
        } else if output != text {
            failed.push(format!("{}:\n{output}", path.display()));
        }
    }
    assert!(
        failed.is_empty(),
        "scripts differ (rerun with UPDATE_GOLDENFILES=1 and review):\n{}",
        failed.join("\n")
    );
    assert!(paths.len() >= 10, "the scripts are there");
}
