//! `scandium playground`: a local cluster of N nodes in one command, as `tiup playground`
//! gives TiKV. Each node is a child process (`scandium server`) with its data under one
//! directory and consecutive ports; the first creates the cluster, the others join it.
//! Ctrl-C stops them all.

use clap::Args;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

#[derive(Args)]
pub struct PlaygroundArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    nodes: u16,
    /// Directory holding every node's data (node-1, node-2, ...).
    #[arg(long, default_value = "scandium-playground")]
    dir: PathBuf,
    /// Port of the first node; the others take the next ones.
    #[arg(long, default_value_t = 2379)]
    port: u16,
    /// Host to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Serve TLS only, with a CA and certificates made in `DIR/certs` (a node certificate
    /// for the host, `localhost` and 127.0.0.1, and a client certificate `root`).
    #[arg(long)]
    secure: bool,
}

/// How long a node may take to start serving.
const START_TIMEOUT: Duration = Duration::from_secs(60);

pub async fn run(args: PlaygroundArgs) -> Result<(), String> {
    if args.nodes == 0 {
        return Err("a playground needs at least one node".into());
    }
    let binary = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let addrs: Vec<String> = (0..args.nodes)
        .map(|i| {
            args.port
                .checked_add(i)
                .map(|port| format!("{}:{port}", args.host))
                .ok_or_else(|| "ports run past 65535".to_string())
        })
        .collect::<Result<_, _>>()?;
    let certs = args.dir.join("certs");
    if args.secure {
        make_certs(&binary, &certs, &args.host)?;
    }
    let mut children: Vec<Child> = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let data_dir = args.dir.join(format!("node-{}", i + 1));
        let mut command = Command::new(&binary);
        command
            .arg("server")
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--addr")
            .arg(addr)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if i > 0 {
            command.arg("--join").arg(addrs[..i].join(","));
        }
        if args.secure {
            command.arg("--ca").arg(certs.join("ca.pem"));
            command
                .arg("--cert")
                .arg(certs.join("node.pem"))
                .arg("--key")
                .arg(certs.join("node.key"));
        }
        eprintln!("starting node {} on {addr} (data in {})", i + 1, data_dir.display());
        let mut child = command.spawn().map_err(|e| format!("cannot start node {}: {e}", i + 1))?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let started = tokio::time::timeout(START_TIMEOUT, wait_serving(i + 1, stderr)).await;
        match started {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(error),
            Err(_) => return Err(format!("node {} did not start within {START_TIMEOUT:?}", i + 1)),
        }
        children.push(child);
    }
    let endpoints = addrs.join(",");
    let shutdown = crate::server::shutdown_signal();
    println!("playground of {} nodes serving", args.nodes);
    println!("  PD endpoints (give any or all to a TiKV client): {endpoints}");
    if args.secure {
        let (ca, cert, key) =
            (certs.join("ca.pem"), certs.join("client.root.pem"), certs.join("client.root.key"));
        let flags =
            format!("--ca {} --cert {} --key {}", ca.display(), cert.display(), key.display());
        println!("  TLS only; clients present a certificate from the playground's CA:");
        println!("  try: scandium kv --pd {} {flags} put hello world", addrs[0]);
        println!(
            "  tikv-client: Config::default().with_security({:?}, {:?}, {:?})",
            ca.display().to_string(),
            cert.display().to_string(),
            key.display().to_string()
        );
    } else {
        println!("  try: scandium kv --pd {} put hello world", addrs[0]);
    }
    println!("  Ctrl-C stops every node");
    shutdown.await;
    eprintln!("stopping {} nodes", children.len());
    for child in &children {
        if let Some(pid) = child.id() {
            // SIGTERM: each node hands its leaderships away and stops cleanly.
            let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
        }
    }
    for (i, child) in children.iter_mut().enumerate() {
        match tokio::time::timeout(Duration::from_secs(15), child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                eprintln!("node {} did not stop in time; killing it", i + 1);
                let _ = child.kill().await;
            }
        }
    }
    Ok(())
}

/// Forwards a node's log lines, prefixed, until it says it serves (then keeps forwarding
/// warnings and errors in the background).
async fn wait_serving(node: usize, stderr: tokio::process::ChildStderr) -> Result<(), String> {
    let mut lines = BufReader::new(stderr).lines();
    loop {
        match lines.next_line().await {
            Ok(Some(line)) => {
                let serving = line.contains("scandium serving on");
                if serving
                    || line.contains("WARN")
                    || line.contains("ERROR")
                    || line.starts_with("error")
                {
                    eprintln!("[node {node}] {line}");
                }
                if serving {
                    tokio::spawn(async move {
                        while let Ok(Some(line)) = lines.next_line().await {
                            if line.contains("WARN") || line.contains("ERROR") {
                                eprintln!("[node {node}] {line}");
                            }
                        }
                    });
                    return Ok(());
                }
            }
            Ok(None) => return Err(format!("node {node} exited before serving")),
            Err(e) => return Err(format!("cannot read node {node}'s output: {e}")),
        }
    }
}

/// Makes the playground's CA, node certificate and client certificate `root` in `dir`
/// with `scandium cert`, unless they are there from a run before.
fn make_certs(binary: &std::path::Path, dir: &std::path::Path, host: &str) -> Result<(), String> {
    let mut hosts = vec![host.to_string(), "localhost".into(), "127.0.0.1".into()];
    hosts.sort();
    hosts.dedup();
    let steps: [(&str, Vec<String>); 3] = [
        ("ca.pem", vec!["create-ca".into()]),
        ("node.pem", [vec!["create-node".to_string()], hosts].concat()),
        ("client.root.pem", vec!["create-client".into(), "root".into()]),
    ];
    for (file, command) in steps {
        if dir.join(file).exists() {
            continue;
        }
        let status = std::process::Command::new(binary)
            .arg("cert")
            .args(&command)
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .status()
            .map_err(|e| format!("cannot run `scandium cert`: {e}"))?;
        if !status.success() {
            return Err(format!("`scandium cert {}` failed", command.join(" ")));
        }
    }
    Ok(())
}
