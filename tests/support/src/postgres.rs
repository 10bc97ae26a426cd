//! A real PostgreSQL server in a temp dir (initdb + postgres), on a random loopback port.
//!
//! PostgreSQL refuses to run as root, and tests and CI run as root: the data dir is then owned by
//! the `postgres` system user (Debian's package creates it) and the server runs as that user.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::{Gid, Uid, User, chown};

use crate::binaries::{self, MissingBinary};
use crate::ports::{free_port, is_listening};
use crate::process::{ProcessError, ServerProcess};
use crate::scratch;

/// Failure to start or use a test PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    #[error(transparent)]
    MissingBinary(#[from] MissingBinary),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("file system: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "running as root, but there is no `postgres` user to run PostgreSQL as (apt-get install postgresql creates it)"
    )]
    NoPostgresUser,
    #[error("cannot hand {path} to the postgres user: {source}")]
    Chown {
        path: String,
        #[source]
        source: nix::Error,
    },
    #[error("{command} failed: {output}")]
    Command { command: String, output: String },
}

/// A running PostgreSQL. Stops on drop.
#[derive(Debug)]
pub struct Postgres {
    bin_dir: PathBuf,
    dir: PathBuf,
    port: u16,
    /// A second listen address (reachable from pods), with password logins from 10.0.0.0/8.
    pod_address: Option<Ipv4Addr>,
    run_as: Option<(Uid, Gid)>,
    process: Option<ServerProcess>,
}

impl Postgres {
    /// initdb in a new temp dir and start the server; user `postgres`, trust auth on loopback.
    pub fn start() -> Result<Self, PostgresError> {
        Self::start_inner(None)
    }

    /// Like [`Self::start`], and also listening on `address` (a local cluster's
    /// [`crate::node::network::Addressing::api_address`]) so pods reach it, where only roles with
    /// a password may log in (scram-sha-256, from 10.0.0.0/8): see [`Self::create_role`].
    pub fn start_for_pods(address: Ipv4Addr) -> Result<Self, PostgresError> {
        Self::start_inner(Some(address))
    }

    fn start_inner(pod_address: Option<Ipv4Addr>) -> Result<Self, PostgresError> {
        let bin_dir = binaries::postgres_bin_dir()?;
        let dir = scratch::new_dir("pg")?;
        let run_as = if Uid::effective().is_root() {
            let user = User::from_name("postgres")
                .ok()
                .flatten()
                .ok_or(PostgresError::NoPostgresUser)?;
            chown(&dir, Some(user.uid), Some(user.gid)).map_err(|source| PostgresError::Chown {
                path: dir.display().to_string(),
                source,
            })?;
            Some((user.uid, user.gid))
        } else {
            None
        };
        let mut pg = Self {
            bin_dir,
            dir,
            port: free_port()?,
            pod_address,
            run_as,
            process: None,
        };
        pg.initdb()?;
        if pod_address.is_some() {
            use std::io::Write;
            let hba = pg.data_dir().join("pg_hba.conf");
            std::fs::OpenOptions::new()
                .append(true)
                .open(&hba)?
                .write_all(b"host all all 10.0.0.0/8 scram-sha-256\n")?;
        }
        pg.spawn()?;
        Ok(pg)
    }

    /// Connection URL of database `database`.
    pub fn url_for(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Connection URL of the `postgres` database.
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// The server's TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A role `user` with `password` that owns a new database `database`, and the URL pods use
    /// to reach it (the pod address of [`Self::start_for_pods`]).
    pub fn create_role(
        &self,
        user: &str,
        password: &str,
        database: &str,
    ) -> Result<String, PostgresError> {
        let address = self.pod_address.ok_or_else(|| PostgresError::Command {
            command: "create_role".into(),
            output: "the server was not started with start_for_pods".into(),
        })?;
        self.psql(
            "postgres",
            &format!("CREATE ROLE \"{user}\" LOGIN PASSWORD '{password}'"),
        )?;
        self.psql(
            "postgres",
            &format!("CREATE DATABASE \"{database}\" OWNER \"{user}\""),
        )?;
        Ok(format!(
            "postgres://{user}:{password}@{address}:{}/{database}",
            self.port
        ))
    }

    /// Runs SQL with `psql` (an independent client) and returns its unaligned output.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, PostgresError> {
        let output = Command::new("psql")
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(self.url_for(database))
            .arg("-c")
            .arg(sql)
            .output()?;
        if !output.status.success() {
            return Err(PostgresError::Command {
                command: format!("psql -c {sql:?}"),
                output: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// Creates a database.
    pub fn create_database(&self, name: &str) -> Result<(), PostgresError> {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""))
            .map(|_| ())
    }

    /// Stops the server (fast shutdown), keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop(Duration::from_secs(20));
        }
    }

    /// Kills the server with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill_hard();
        }
    }

    /// Starts the server again on the same port and data.
    pub fn restart(&mut self) -> Result<(), PostgresError> {
        self.stop();
        self.spawn()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn command(&self, program: &str) -> Command {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(self.bin_dir.join(program));
        if let Some((uid, gid)) = self.run_as {
            command.uid(uid.as_raw()).gid(gid.as_raw());
        }
        command.current_dir(&self.dir);
        command
    }

    fn initdb(&self) -> Result<(), PostgresError> {
        let output = self
            .command("initdb")
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(self.data_dir())
            .output()?;
        if !output.status.success() {
            return Err(PostgresError::Command {
                command: "initdb".into(),
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ),
            });
        }
        Ok(())
    }

    fn spawn(&mut self) -> Result<(), PostgresError> {
        let mut command = self.command("postgres");
        command
            .arg("-D")
            .arg(self.data_dir())
            .args(["-p", &self.port.to_string()])
            .args([
                "-c",
                &match self.pod_address {
                    Some(address) => format!("listen_addresses=127.0.0.1,{address}"),
                    None => "listen_addresses=127.0.0.1".to_owned(),
                },
            ])
            .args([
                "-c",
                &format!("unix_socket_directories={}", self.dir.display()),
            ])
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .args(["-c", "max_connections=200"]);
        let log = self.dir.join("postgres.log");
        let mut process = ServerProcess::start("postgres", command, &log, Signal::SIGINT)?;
        let port = self.port;
        let ready = || is_listening(port);
        process.wait_until(Duration::from_secs(60), ready)?;
        self.process = Some(process);
        // Accepting TCP is not accepting queries while recovery runs; wait for a real answer.
        for _ in 0..100 {
            if self.psql("postgres", "SELECT 1").is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.psql("postgres", "SELECT 1").map(|_| ())
    }

    /// The temp dir holding data and log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}
