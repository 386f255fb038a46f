//! What the end-to-end tests share: starting the real `scandium` binary as a process,
//! running the CLI, connecting `tikv-client`.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tikv_client::RawClient;

pub const BINARY: &str = env!("CARGO_BIN_EXE_scandium");

/// A `scandium server` child process.
pub struct Server {
    pub child: Child,
    pub addr: String,
}

impl Server {
    /// Starts the binary in `cwd` with `args` and waits for its "serving" line.
    pub fn start(cwd: &Path, args: &[&str]) -> Server {
        Server::spawn(Command::new(BINARY), cwd, args)
    }

    /// As [`Server::start`], inside network namespace `netns` (`ip netns exec`).
    pub fn start_in_netns(netns: &str, cwd: &Path, args: &[&str]) -> Server {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", netns, BINARY]);
        Server::spawn(command, cwd, args)
    }

    /// With `SCANDIUM_TEST_LOG_DIR` set, each server's log (at `info`) goes to a file
    /// there named after its process id, to read after a failure.
    fn spawn(mut command: Command, cwd: &Path, args: &[&str]) -> Server {
        let log_dir = std::env::var_os("SCANDIUM_TEST_LOG_DIR").map(std::path::PathBuf::from);
        let level = if log_dir.is_some() { "info" } else { "warn" };
        let mut child = command
            .arg("server")
            .args(args)
            .current_dir(cwd)
            .env("RUST_LOG", level)
            .stderr(Stdio::piped())
            .spawn()
            .expect("scandium starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let mut log = log_dir.map(|dir| {
            let path = dir.join(format!("{}.log", child.id()));
            std::fs::File::create(path).expect("log file created")
        });
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(log) = log.as_mut() {
                    use std::io::Write as _;
                    let _ = writeln!(log, "{line}");
                }
                if let Some(addr) = line.strip_prefix("scandium serving on ") {
                    let addr = addr.split_whitespace().next().unwrap_or_default().to_string();
                    let _ = sender.send(addr);
                }
            }
        });
        let addr =
            receiver.recv_timeout(Duration::from_secs(30)).expect("server reports it is serving");
        Server { child, addr }
    }

    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL delivered");
        self.child.wait().expect("child reaped");
    }

    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("child state") {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn cli(args: &[&str]) -> (bool, String) {
    // As a user runs it: the default, quiet logging.
    let output =
        Command::new(BINARY).args(args).env_remove("RUST_LOG").output().expect("scandium runs");
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

pub async fn client(addr: &str) -> RawClient {
    let config = tikv_client::Config::default().with_timeout(Duration::from_secs(5));
    RawClient::new_with_config(vec![addr.to_string()], config).await.expect("client connects")
}

impl Server {
    /// The process id (for signals and `/proc`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} failed");
    }
}

/// An address on loopback that was free a moment ago (for nodes that must keep their
/// address across restarts).
pub fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}
