//! Server processes that never outlive the test process.
//!
//! Every server is spawned with `PR_SET_PDEATHSIG = SIGKILL`, so the kernel kills it when the
//! process that spawned it dies, however it dies (a panic, `kill -9`, the end of `cargo test`,
//! whose harness never runs destructors of statics). The death signal is tied to the *thread*
//! that forked, so all spawns go through one thread that lives as long as the process.
//! A `ServerProcess` also stops its server on drop (SIGTERM, then SIGKILL after a grace period).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Failure to start or stop a server process.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot create log file {path}")]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {name}")]
    Spawn {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the spawner thread is gone")]
    SpawnerGone,
    #[error("{name} exited during start-up ({status}); last lines of {log}:\n{tail}")]
    ExitedEarly {
        name: String,
        status: String,
        log: String,
        tail: String,
    },
    #[error("{name} was not ready after {waited:?}; last lines of {log}:\n{tail}")]
    NotReady {
        name: String,
        waited: Duration,
        log: String,
        tail: String,
    },
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("nats-cdr-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
            })
            .map_err(|e| eprintln!("cannot start spawner thread: {e}"))
            .ok();
        Mutex::new(tx)
    })
}

/// Spawns `command` from the long-lived spawner thread with a parent-death signal.
fn spawn_guarded(mut command: Command) -> Result<Child, ProcessError> {
    set_parent_death_signal(&mut command);
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((command, reply_tx))
        .map_err(|_| ProcessError::SpawnerGone)?;
    match reply_rx.recv() {
        Ok(result) => result.map_err(|source| ProcessError::Spawn {
            name: "process".into(),
            source,
        }),
        Err(_) => Err(ProcessError::SpawnerGone),
    }
}

#[allow(unsafe_code)]
fn set_parent_death_signal(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2), which is
    // async-signal-safe; it allocates nothing and touches no locks. It runs after the uid/gid
    // switch that Command performs, so the setting is not cleared by a credential change.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
}

/// A running server: its process, its log file, and how to stop it.
#[derive(Debug)]
pub struct ServerProcess {
    name: String,
    child: Option<Child>,
    log: PathBuf,
    stop_signal: Signal,
}

impl ServerProcess {
    /// Starts `command` with stdout and stderr appended to `log`. `stop_signal` is what asks the
    /// server to shut down cleanly (SIGTERM for most, SIGINT for PostgreSQL's fast shutdown).
    pub fn start(
        name: &str,
        mut command: Command,
        log: &Path,
        stop_signal: Signal,
    ) -> Result<Self, ProcessError> {
        let open_log = || {
            File::options()
                .create(true)
                .append(true)
                .open(log)
                .map_err(|source| ProcessError::Log {
                    path: log.to_path_buf(),
                    source,
                })
        };
        command
            .stdin(Stdio::null())
            .stdout(open_log()?)
            .stderr(open_log()?);
        let child = spawn_guarded(command).map_err(|e| match e {
            ProcessError::Spawn { source, .. } => ProcessError::Spawn {
                name: name.to_owned(),
                source,
            },
            other => other,
        })?;
        Ok(Self {
            name: name.to_owned(),
            child: Some(child),
            log: log.to_path_buf(),
            stop_signal,
        })
    }

    /// Process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Path of the log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Waits until `ready()` is true, failing early when the process exits.
    pub fn wait_until(
        &mut self,
        timeout: Duration,
        mut ready: impl FnMut() -> bool,
    ) -> Result<(), ProcessError> {
        let start = Instant::now();
        loop {
            if ready() {
                return Ok(());
            }
            self.check_running()?;
            if start.elapsed() > timeout {
                return Err(ProcessError::NotReady {
                    name: self.name.clone(),
                    waited: timeout,
                    log: self.log.display().to_string(),
                    tail: tail(&self.log, 30),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Fails when the process has exited.
    pub fn check_running(&mut self) -> Result<(), ProcessError> {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            return Err(ProcessError::ExitedEarly {
                name: self.name.clone(),
                status: status.to_string(),
                log: self.log.display().to_string(),
                tail: tail(&self.log, 30),
            });
        }
        Ok(())
    }

    /// Kills the process at once (SIGKILL), as a crash would, and reaps it.
    pub fn kill_hard(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Asks the process to stop, waits up to `grace`, then kills it.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = kill(Pid::from_raw(pid), self.stop_signal);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// The last `lines` lines of a log file, for error messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
