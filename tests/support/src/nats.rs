//! A real nats-server with JetStream: one node, or an N-node cluster, on random loopback ports.
//! Nodes can be stopped, killed and restarted on the same ports and data dirs to inject faults.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::binaries::{self, MissingBinary};
use crate::ports::free_port;
use crate::process::{ProcessError, ServerProcess};
use crate::scratch;

/// Failure to start a nats-server.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error(transparent)]
    MissingBinary(#[from] MissingBinary),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("file system: {0}")]
    Io(#[from] std::io::Error),
    #[error("no node {0} in this cluster")]
    NoSuchNode(usize),
}

/// Settings of a test NATS deployment.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// Number of servers (1, or 3/5 for a clustered JetStream).
    pub nodes: usize,
    /// JetStream `sync_interval: always` (what a managed cluster runs): every ack is on disk.
    pub sync_always: bool,
    /// Largest message accepted (`max_payload`), in bytes; the server default when `None`.
    pub max_payload: Option<u64>,
    /// Extra lines appended to every node's config (accounts, authorization, ...).
    pub extra_config: String,
    /// Address the client port listens on: loopback by default; a local cluster's
    /// [`crate::node::network::Addressing::api_address`] makes the server reachable from its pods
    /// too.
    pub listen: Ipv4Addr,
}

impl Default for NatsOptions {
    fn default() -> Self {
        Self {
            nodes: 1,
            sync_always: true,
            max_payload: None,
            extra_config: String::new(),
            listen: Ipv4Addr::LOCALHOST,
        }
    }
}

#[derive(Debug)]
struct Node {
    name: String,
    client_port: u16,
    monitor_port: u16,
    config: PathBuf,
    log: PathBuf,
    process: Option<ServerProcess>,
}

/// A running NATS deployment. Stops every node on drop.
#[derive(Debug)]
pub struct NatsServer {
    binary: PathBuf,
    listen: Ipv4Addr,
    dir: PathBuf,
    nodes: Vec<Node>,
}

impl NatsServer {
    /// One JetStream node with default options.
    pub fn start() -> Result<Self, NatsError> {
        Self::start_with(NatsOptions::default())
    }

    /// Starts `options.nodes` nodes and waits until each reports healthy with JetStream.
    pub fn start_with(options: NatsOptions) -> Result<Self, NatsError> {
        let binary = binaries::find("nats-server")?;
        let dir = scratch::new_dir("nats")?;
        let count = options.nodes.max(1);
        let mut ports = Vec::new();
        for _ in 0..count {
            ports.push((free_port()?, free_port()?, free_port()?));
        }
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, _, cluster)| format!("nats-route://127.0.0.1:{cluster}"))
            .collect();
        let mut nodes = Vec::new();
        for (i, (client_port, monitor_port, cluster_port)) in ports.iter().enumerate() {
            let name = format!("n{i}");
            let store = dir.join(&name).join("jetstream");
            std::fs::create_dir_all(&store)?;
            let mut config = format!(
                "server_name: {name}\nlisten: {}:{client_port}\nhttp: 127.0.0.1:{monitor_port}\n\
                 jetstream {{\n  store_dir: \"{}\"\n{}}}\n",
                options.listen,
                store.display(),
                if options.sync_always {
                    "  sync_interval: always\n"
                } else {
                    ""
                },
            );
            if let Some(max) = options.max_payload {
                config.push_str(&format!("max_payload: {max}\n"));
            }
            if count > 1 {
                config.push_str(&format!(
                    "cluster {{\n  name: nats-cdr-test\n  listen: 127.0.0.1:{cluster_port}\n  routes: [{}]\n}}\n",
                    routes.join(", ")
                ));
            }
            config.push_str(&options.extra_config);
            let config_path = dir.join(format!("{name}.conf"));
            std::fs::write(&config_path, config)?;
            nodes.push(Node {
                log: dir.join(format!("{name}.log")),
                name,
                client_port: *client_port,
                monitor_port: *monitor_port,
                config: config_path,
                process: None,
            });
        }
        let mut server = Self {
            binary,
            listen: options.listen,
            dir,
            nodes,
        };
        for i in 0..count {
            server.spawn_node(i)?;
        }
        for i in 0..count {
            server.wait_node_healthy(i)?;
        }
        Ok(server)
    }

    /// Client URL of node 0.
    pub fn url(&self) -> String {
        self.node_url(0)
    }

    /// Client URL of node `i`.
    pub fn node_url(&self, i: usize) -> String {
        self.nodes
            .get(i)
            .map(|n| format!("nats://{}:{}", self.listen, n.client_port))
            .unwrap_or_default()
    }

    /// Comma-separated URLs of every node.
    pub fn urls(&self) -> String {
        (0..self.nodes.len())
            .map(|i| self.node_url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Monitoring port (`/varz`, `/jsz`, `/healthz`) of node `i`.
    pub fn monitor_port(&self, i: usize) -> Option<u16> {
        self.nodes.get(i).map(|n| n.monitor_port)
    }

    /// The temp dir holding configs, data and logs.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Stops node `i` cleanly (SIGTERM), keeping its data.
    pub fn stop_node(&mut self, i: usize) -> Result<(), NatsError> {
        let node = self.nodes.get_mut(i).ok_or(NatsError::NoSuchNode(i))?;
        if let Some(mut p) = node.process.take() {
            p.stop(Duration::from_secs(10));
        }
        Ok(())
    }

    /// Kills node `i` with SIGKILL, as a crash would.
    pub fn kill_node(&mut self, i: usize) -> Result<(), NatsError> {
        let node = self.nodes.get_mut(i).ok_or(NatsError::NoSuchNode(i))?;
        if let Some(mut p) = node.process.take() {
            p.kill_hard();
        }
        Ok(())
    }

    /// Starts node `i` again on the same ports and data, and waits until it is healthy.
    pub fn restart_node(&mut self, i: usize) -> Result<(), NatsError> {
        self.stop_node(i)?;
        self.spawn_node(i)?;
        self.wait_node_healthy(i)
    }

    fn spawn_node(&mut self, i: usize) -> Result<(), NatsError> {
        let node = self.nodes.get_mut(i).ok_or(NatsError::NoSuchNode(i))?;
        let mut command = Command::new(&self.binary);
        command.arg("-c").arg(&node.config);
        node.process = Some(ServerProcess::start(
            &format!("nats-server {}", node.name),
            command,
            &node.log,
            Signal::SIGTERM,
        )?);
        Ok(())
    }

    fn wait_node_healthy(&mut self, i: usize) -> Result<(), NatsError> {
        let node = self.nodes.get_mut(i).ok_or(NatsError::NoSuchNode(i))?;
        let port = node.monitor_port;
        if let Some(process) = node.process.as_mut() {
            process.wait_until(Duration::from_secs(60), || {
                http_status(port, "/healthz?js-enabled-only=true") == Some(200)
            })?;
        }
        Ok(())
    }
}

/// Status code of a plain HTTP GET on a loopback port, or `None` when nothing answers.
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    let body = http_get(port, path)?;
    body.split_whitespace().nth(1)?.parse().ok()
}

/// Full response (status line, headers and body) of a plain HTTP/1.0 GET on a loopback port.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream =
        TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), Duration::from_secs(1))
            .ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}
