//! `kam-cdr-bridge` and `cdr-worker` as child processes that log to a file and never outlive a
//! test: killed (SIGKILL) when dropped, with the tail of their log printed when a test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process, killed when dropped.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `command` with stdout and stderr into `log`.
    pub fn spawn(name: &str, mut command: Command, log: PathBuf) -> Self {
        let out = std::fs::File::create(&log).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Self {
            name: name.to_owned(),
            child,
            log,
        }
    }

    /// `kam-cdr-bridge` tailing `file`, checkpointing to `checkpoint`, publishing to `nats_url`
    /// as node [`NODE`](super::NODE), metrics on a free port, text logs, and `extra` flags.
    pub fn bridge(
        nats_url: &str,
        file: &Path,
        checkpoint: &Path,
        extra: &[&str],
        log: PathBuf,
    ) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_kam-cdr-bridge"));
        command
            .arg("--file")
            .arg(file)
            .arg("--checkpoint")
            .arg(checkpoint)
            .args(["--nats-url", nats_url, "--node-name", super::NODE])
            .args(["--metrics-addr", "127.0.0.1:0", "--log-format", "text"])
            .args(extra)
            .env("RUST_LOG", "info");
        Self::spawn("kam-cdr-bridge", command, log)
    }

    /// `cdr-worker` on `nats_url` and `database_url`, metrics on a free port unless `extra` says
    /// where, text logs, and `extra` flags.
    pub fn worker(nats_url: &str, database_url: &str, extra: &[&str], log: PathBuf) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_cdr-worker"));
        if !extra.contains(&"--metrics-addr") {
            command.args(["--metrics-addr", "127.0.0.1:0"]);
        }
        command
            .args(["--nats-url", nats_url, "--log-format", "text"])
            .args(extra)
            .env("DATABASE_URL", database_url)
            .env("RUST_LOG", "info");
        Self::spawn("cdr-worker", command, log)
    }

    /// Whether it still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL, as a crash or the OOM killer would, and reap it.
    pub fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit code once it stopped (panics after 30 s).
    pub fn terminate(&mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{} did not stop on SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Peak resident set size (`VmHWM`) in KiB, while the process runs.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Prints the last `lines` lines of the log to stderr.
    pub fn print_log_tail(&self, lines: usize) {
        let text = self.log_text();
        let tail: Vec<&str> = text.lines().rev().take(lines).collect();
        eprintln!("--- {} ({})", self.name, self.log.display());
        for line in tail.into_iter().rev() {
            eprintln!("{line}");
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.is_running() {
            self.kill_9();
        }
    }
}
