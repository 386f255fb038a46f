//! `scandium kv`: reads and writes through `tikv-client`, exactly as an application would
//! make them: raw keys, batches, compare-and-swap, and a few operations in one
//! transaction.

use clap::{Args, Subcommand};
use std::io::BufRead;
use tikv_client::{Config, RawClient, TimestampExt as _, TransactionClient};

#[derive(Args)]
pub struct KvArgs {
    /// Address of any node (the PD endpoint).
    #[arg(long, default_value = "127.0.0.1:2379", global = true)]
    pd: String,
    /// Use API V2 with this keyspace (e.g. DEFAULT); without it, API V1.
    #[arg(long, global = true)]
    keyspace: Option<String>,
    #[command(subcommand)]
    command: KvCommand,
}

#[derive(Subcommand)]
enum KvCommand {
    /// Writes a value.
    Put {
        key: String,
        value: String,
        /// Seconds until the value expires (0 = never).
        #[arg(long, default_value_t = 0)]
        ttl: u64,
    },
    /// Prints a value.
    Get { key: String },
    /// Deletes a key.
    Delete { key: String },
    /// Prints keys and values in [START, END).
    Scan {
        #[arg(default_value = "")]
        start: String,
        #[arg(default_value = "")]
        end: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Prints the seconds a key has left to live (`none` if it never expires).
    Ttl { key: String },
    /// Writes NEW if the key holds --expect's value (or, with --absent, if it does not
    /// exist); prints what it held, and fails if the swap did not happen.
    Cas {
        key: String,
        new: String,
        /// The value the key must hold now.
        #[arg(long, required_unless_present = "absent", conflicts_with = "absent")]
        expect: Option<String>,
        /// The key must not exist now.
        #[arg(long)]
        absent: bool,
    },
    /// Deletes every key in [START, END) (END empty: to the end of the key space).
    DeleteRange {
        start: String,
        #[arg(default_value = "")]
        end: String,
    },
    /// Applies `put KEY VALUE` and `delete KEY` lines (blank lines and `#` comments
    /// skipped) from FILE, or from stdin if FILE is `-` or absent, as one batch put and
    /// one batch delete (each atomic within a Region, not across Regions).
    Batch { file: Option<std::path::PathBuf> },
    /// Runs operations in one optimistic transaction and commits it, printing what each
    /// `get` read: e.g. `scandium kv txn get a put a 2 delete b`.
    Txn {
        /// `get KEY`, `put KEY VALUE` and `delete KEY`, one after another.
        #[arg(required = true, num_args = 1..)]
        ops: Vec<String>,
    },
}

/// One operation of a batch or transaction.
#[derive(Debug, PartialEq, Eq)]
enum Op {
    Get(String),
    Put(String, String),
    Delete(String),
}

/// Reads operations from words: `get K`, `put K V`, `delete K`, one after another.
fn parse_ops<'a>(words: impl IntoIterator<Item = &'a str>) -> Result<Vec<Op>, String> {
    let mut words = words.into_iter();
    let mut ops = Vec::new();
    while let Some(word) = words.next() {
        let mut arg = |what: &str| {
            words.next().map(str::to_string).ok_or_else(|| format!("`{word}` needs {what}"))
        };
        ops.push(match word {
            "get" => Op::Get(arg("a key")?),
            "put" => Op::Put(arg("a key and a value")?, arg("a value after the key")?),
            "delete" => Op::Delete(arg("a key")?),
            other => return Err(format!("unknown operation `{other}`: use get, put or delete")),
        });
    }
    Ok(ops)
}

/// Batch lines: each one operation; blank lines and `#` comments skipped.
fn parse_batch(input: impl BufRead) -> Result<Vec<Op>, String> {
    let mut ops = Vec::new();
    for (n, line) in input.lines().enumerate() {
        let line = line.map_err(|e| format!("cannot read the batch: {e}"))?;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parsed =
            parse_ops(line.split_whitespace()).map_err(|e| format!("line {}: {e}", n + 1))?;
        match (parsed.len(), parsed.pop()) {
            (1, Some(Op::Get(_))) => {
                return Err(format!(
                    "line {}: a batch puts and deletes; `get` is for `kv get` or `kv txn`",
                    n + 1
                ))
            }
            (1, Some(op)) => ops.push(op),
            _ => return Err(format!("line {}: one operation per line", n + 1)),
        }
    }
    Ok(ops)
}

/// The PD endpoints in `pd`: one address, or several separated by commas (the client
/// tries the others when one is down).
pub fn endpoints(pd: &str) -> Vec<String> {
    pd.split(',').map(|a| a.trim().to_string()).filter(|a| !a.is_empty()).collect()
}

pub async fn connect(pd: &str, keyspace: Option<&str>) -> Result<RawClient, String> {
    let mut config = Config::default();
    if let Some(keyspace) = keyspace {
        config = config.with_keyspace(keyspace);
    }
    RawClient::new_with_config(endpoints(pd), crate::tls::tikv_config(config))
        .await
        .map_err(|e| format!("cannot connect to {pd}: {}", tidy(e)))
}

/// tikv-client's error text without the source location it starts some messages with
/// (`[.../tikv-client-0.4.0/src/pd/cluster.rs:209]: PD cluster failed to respond`).
pub fn tidy(error: tikv_client::Error) -> String {
    let text = error.to_string();
    match (text.starts_with('['), text.find("]: ")) {
        (true, Some(end)) => text[end + 3..].to_string(),
        _ => text,
    }
}

pub async fn run(args: KvArgs) -> Result<(), String> {
    if let KvCommand::Txn { ops } = &args.command {
        return run_txn(
            &args.pd,
            args.keyspace.as_deref(),
            parse_ops(ops.iter().map(String::as_str))?,
        )
        .await;
    }
    let client = connect(&args.pd, args.keyspace.as_deref()).await?;
    let fail = tidy;
    match args.command {
        KvCommand::Put { key, value, ttl } => {
            client.put_with_ttl(key.into_bytes(), value.into_bytes(), ttl).await.map_err(fail)?;
            println!("OK");
        }
        KvCommand::Get { key } => match client.get(key.into_bytes()).await.map_err(fail)? {
            Some(value) => println!("{}", String::from_utf8_lossy(&value)),
            None => return Err("not found".into()),
        },
        KvCommand::Delete { key } => {
            client.delete(key.into_bytes()).await.map_err(fail)?;
            println!("OK");
        }
        KvCommand::Scan { start, end, limit } => {
            let range = if end.is_empty() {
                tikv_client::BoundRange::from(start.into_bytes()..)
            } else {
                tikv_client::BoundRange::from(start.into_bytes()..end.into_bytes())
            };
            for pair in client.scan(range, limit).await.map_err(fail)? {
                let key: Vec<u8> = pair.0.into();
                println!("{}\t{}", String::from_utf8_lossy(&key), String::from_utf8_lossy(&pair.1));
            }
        }
        KvCommand::Ttl { key } => {
            match client.get_key_ttl_secs(key.into_bytes()).await.map_err(fail)? {
                Some(0) => println!("none"),
                Some(secs) => println!("{secs}"),
                None => return Err("not found".into()),
            }
        }
        KvCommand::Cas { key, new, expect, absent } => {
            let expected = if absent { None } else { expect.map(String::into_bytes) };
            let cas = client.with_atomic_for_cas();
            let (previous, swapped) = cas
                .compare_and_swap(key.into_bytes(), expected, new.into_bytes())
                .await
                .map_err(fail)?;
            let held = previous
                .map_or("(absent)".to_string(), |v| String::from_utf8_lossy(&v).into_owned());
            if !swapped {
                return Err(format!("not swapped: the key holds {held}"));
            }
            println!("OK (it held {held})");
        }
        KvCommand::DeleteRange { start, end } => {
            let range = if end.is_empty() {
                tikv_client::BoundRange::from(start.into_bytes()..)
            } else {
                tikv_client::BoundRange::from(start.into_bytes()..end.into_bytes())
            };
            client.delete_range(range).await.map_err(fail)?;
            println!("OK");
        }
        KvCommand::Batch { file } => {
            let ops = match file.as_deref() {
                None => parse_batch(std::io::stdin().lock())?,
                Some(path) if path.as_os_str() == "-" => parse_batch(std::io::stdin().lock())?,
                Some(path) => {
                    let file = std::fs::File::open(path)
                        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
                    parse_batch(std::io::BufReader::new(file))?
                }
            };
            let (mut puts, mut deletes) = (Vec::new(), Vec::new());
            for op in ops {
                match op {
                    Op::Put(key, value) => puts.push((key.into_bytes(), value.into_bytes())),
                    Op::Delete(key) => deletes.push(key.into_bytes()),
                    Op::Get(_) => unreachable!("refused by parse_batch"),
                }
            }
            let (p, d) = (puts.len(), deletes.len());
            if !puts.is_empty() {
                client.batch_put(puts).await.map_err(fail)?;
            }
            if !deletes.is_empty() {
                client.batch_delete(deletes).await.map_err(fail)?;
            }
            println!("OK: {p} put(s), {d} delete(s)");
        }
        KvCommand::Txn { .. } => unreachable!("handled above"),
    }
    Ok(())
}

async fn run_txn(pd: &str, keyspace: Option<&str>, ops: Vec<Op>) -> Result<(), String> {
    let mut config = Config::default();
    if let Some(keyspace) = keyspace {
        config = config.with_keyspace(keyspace);
    }
    let config = crate::tls::tikv_config(config);
    let client = TransactionClient::new_with_config(vec![pd.to_string()], config)
        .await
        .map_err(|e| format!("cannot connect to {pd}: {e}"))?;
    let fail = tidy;
    let mut txn = client.begin_optimistic().await.map_err(fail)?;
    let mut reads = Vec::new();
    for op in ops {
        let result = match op {
            Op::Get(key) => txn.get(key.clone().into_bytes()).await.map(|value| {
                let shown =
                    value.map_or("(absent)".into(), |v| String::from_utf8_lossy(&v).into_owned());
                reads.push(format!("{key}\t{shown}"));
            }),
            Op::Put(key, value) => txn.put(key.into_bytes(), value.into_bytes()).await,
            Op::Delete(key) => txn.delete(key.into_bytes()).await,
        };
        if let Err(e) = result {
            let _ = txn.rollback().await;
            return Err(tidy(e));
        }
    }
    let commit_ts =
        txn.commit().await.map_err(|e| format!("the transaction did not commit: {}", tidy(e)))?;
    for read in reads {
        println!("{read}");
    }
    match commit_ts {
        Some(ts) => println!("committed at {}", ts.version()),
        None => println!("committed (read-only)"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_are_read_one_after_another() {
        let ops = parse_ops("get a put a 2 delete b".split(' ')).unwrap();
        assert_eq!(
            ops,
            vec![Op::Get("a".into()), Op::Put("a".into(), "2".into()), Op::Delete("b".into())]
        );
        assert_eq!(parse_ops("put a".split(' ')).unwrap_err(), "`put` needs a value after the key");
        assert!(parse_ops(["frob", "a"]).unwrap_err().contains("unknown operation `frob`"));
    }

    #[test]
    fn batch_lines_put_and_delete() {
        let input = "# a comment\nput a 1\n\n  delete b  \n";
        let ops = parse_batch(input.as_bytes()).unwrap();
        assert_eq!(ops, vec![Op::Put("a".into(), "1".into()), Op::Delete("b".into())]);
        assert!(parse_batch("put a 1 delete b\n".as_bytes())
            .unwrap_err()
            .contains("line 1: one operation per line"));
        assert!(parse_batch("get a\n".as_bytes()).unwrap_err().contains("line 1"));
    }
}
