//! The host side of a cluster's real nodes: a slot of addresses claimed for the life of the
//! cluster, the network namespaces, veths, routes and guard rules (made by `node-net.sh up`), and
//! a reaper process that removes all of it once the test process is gone, however it ends.
//!
//! The reaper is `node-net.sh reap` run under `flock -n` on the slot's lock file: holding the lock
//! is owning the slot, and the reaper holds it until it has removed everything. It waits for EOF
//! on its stdin, a pipe whose only write end is held by this process: dropping [`HostNetwork`]
//! closes it, and so does the kernel when this process dies (the end of `cargo test`, which never
//! runs destructors of statics, a panic, or `kill -9`).

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use super::NodeError;

/// The script that makes and removes the host plumbing (shared with the reaper).
const NODE_NET_SH: &str = include_str!("node-net.sh");
/// Directory of the slot locks and the saved state of each slot.
const RUN_DIR: &str = "/run/nats-cdr";
/// Slots available: node i of slot s has index 4s+i, which must stay below 250.
const SLOTS: u8 = 60;
/// Nodes a cluster can have.
pub const MAX_NODES: usize = 4;
/// flock's exit code when the slot is taken.
const SLOT_TAKEN: i32 = 75;

/// Every address of one cluster, derived from its slot (the same formulas as node-net.sh).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addressing {
    slot: u8,
}

impl Addressing {
    /// The addressing of `slot`.
    pub fn new(slot: u8) -> Self {
        Self { slot }
    }

    /// The cluster's slot.
    pub fn slot(&self) -> u8 {
        self.slot
    }

    /// Where the apiserver listens: on the host's loopback device, reached from pods through their
    /// node's default route (not 127.0.0.0/8, so the endpoint reconciler accepts it).
    pub fn api_address(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 201, self.slot, 1)
    }

    /// The Service CIDR.
    pub fn service_cidr(&self) -> String {
        format!("10.96.{}.0/24", self.slot)
    }

    /// The ClusterIP of the `kubernetes` Service (the first of the Service CIDR).
    pub fn kubernetes_service_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 96, self.slot, 1)
    }

    /// The ClusterIP of the cluster DNS.
    pub fn dns_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 96, self.slot, 10)
    }

    /// The pod CIDR of the whole cluster (the /24 of every node of the slot).
    pub fn cluster_cidr(&self) -> String {
        format!("10.244.{}.0/22", self.index(0))
    }

    fn index(&self, node: usize) -> u8 {
        // node < MAX_NODES and slot < SLOTS keep this below 250.
        self.slot * 4 + node as u8
    }

    /// The IP of node `node`, inside its network namespace.
    pub fn node_ip(&self, node: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 200, self.index(node), 2)
    }

    /// The subnet between the host and node `node`.
    pub fn node_subnet(&self, node: usize) -> String {
        format!("10.200.{}.0/24", self.index(node))
    }

    /// The pod CIDR of node `node`.
    pub fn pod_cidr(&self, node: usize) -> String {
        format!("10.244.{}.0/24", self.index(node))
    }

    /// The network namespace of node `node` (a name under /run/netns).
    pub fn netns(&self, node: usize) -> String {
        format!("ncdr-s{}-n{node}", self.slot)
    }

    /// The cgroup parent of node `node`'s pods, in every cgroup v1 hierarchy.
    pub fn cgroup_root(&self, node: usize) -> String {
        format!("/ncdr-s{}-n{node}", self.slot)
    }

    /// The CNI network name of the cluster (its cached results are named after it).
    pub fn cni_network(&self) -> String {
        format!("ncdr-s{}", self.slot)
    }
}

/// The host plumbing of a cluster's nodes, removed by the reaper on drop or at process death.
#[derive(Debug)]
pub struct HostNetwork {
    addressing: Addressing,
    reaper: Child,
    reaper_stdin: Option<ChildStdin>,
    log: PathBuf,
}

impl HostNetwork {
    /// Claims a free slot for `nodes` nodes and makes their network. `cluster_dir` holds the
    /// nodes' directories (`nodes/n<i>`), the script, its state file and its log.
    pub fn claim(cluster_dir: &Path, nodes: usize) -> Result<Self, NodeError> {
        if nodes == 0 || nodes > MAX_NODES {
            return Err(NodeError::Config(format!(
                "a local cluster has 1 to {MAX_NODES} real nodes, not {nodes}"
            )));
        }
        let script = cluster_dir.join("node-net.sh");
        std::fs::write(&script, NODE_NET_SH).map_err(|e| NodeError::io(&script, e))?;
        std::fs::create_dir_all(RUN_DIR).map_err(|e| NodeError::io(Path::new(RUN_DIR), e))?;
        let log = cluster_dir.join("node-net.log");
        for slot in 0..SLOTS {
            let addressing = Addressing::new(slot);
            let state = cluster_dir.join("node-net.env");
            std::fs::write(&state, state_file(slot, nodes, cluster_dir)?)
                .map_err(|e| NodeError::io(&state, e))?;
            let Some((reaper, reaper_stdin)) = spawn_reaper(&script, &state, slot, &log)? else {
                continue;
            };
            let network = Self {
                addressing,
                reaper,
                reaper_stdin: Some(reaper_stdin),
                log: log.clone(),
            };
            // On failure, dropping `network` removes whatever `up` made.
            network.run_up(&script, &state)?;
            return Ok(network);
        }
        Err(NodeError::Config(format!(
            "all {SLOTS} cluster slots are taken (see {RUN_DIR}/slot-*.env)"
        )))
    }

    /// The addresses of this cluster.
    pub fn addressing(&self) -> Addressing {
        self.addressing
    }

    fn run_up(&self, script: &Path, state: &Path) -> Result<(), NodeError> {
        let output = Command::new("bash")
            .arg(script)
            .arg("up")
            .arg(state)
            .output()
            .map_err(|e| NodeError::io(script, e))?;
        let _ = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.log)
            .and_then(|mut f| std::io::Write::write_all(&mut f, &output.stderr));
        if output.status.success() {
            Ok(())
        } else {
            Err(NodeError::Command {
                what: "node-net.sh up".into(),
                detail: String::from_utf8_lossy(&output.stderr).into_owned(),
            })
        }
    }
}

impl Drop for HostNetwork {
    fn drop(&mut self) {
        // Closing the pipe is the reaper's signal; wait for it to finish removing everything.
        drop(self.reaper_stdin.take());
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.reaper.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "node-net reaper still running after 120 s; see {}",
            self.log.display()
        );
    }
}

fn state_file(slot: u8, nodes: usize, cluster_dir: &Path) -> Result<String, NodeError> {
    let dir = cluster_dir.display().to_string();
    if dir.contains(['\'', '"', '$', '`', '\\', ' ', '\n']) {
        return Err(NodeError::Config(format!(
            "the cluster directory {dir} has characters the node scripts do not quote"
        )));
    }
    Ok(format!(
        "SLOT={slot}\nNODES={nodes}\nCLUSTER_DIR={dir}\nUPLINKS=\"{}\"\n",
        uplinks().join(" ")
    ))
}

/// The host's own network interfaces: forwarding through any of them is dropped by the guard rules.
fn uplinks() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n != "lo" && !n.starts_with("ncdr") && !n.starts_with("veth"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Starts the reaper of `slot` under the slot's lock. `None` when another cluster holds the slot.
fn spawn_reaper(
    script: &Path,
    state: &Path,
    slot: u8,
    log: &Path,
) -> Result<Option<(Child, ChildStdin)>, NodeError> {
    let log_file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(log)
        .map_err(|e| NodeError::io(log, e))?;
    let lock = format!("{RUN_DIR}/slot-{slot}.lock");
    // A session of its own: Ctrl-C in the terminal of `cargo test` must not stop the cleanup.
    let mut reaper = Command::new("setsid")
        .args([
            "--wait",
            "flock",
            "-n",
            "-E",
            &SLOT_TAKEN.to_string(),
            &lock,
        ])
        .arg("bash")
        .arg(script)
        .arg("reap")
        .arg(state)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()
        .map_err(|e| NodeError::io(Path::new("setsid"), e))?;
    let mut line = String::new();
    if let Some(stdout) = reaper.stdout.take() {
        let _ = BufReader::new(stdout).read_line(&mut line);
    }
    if line.trim() == "reaping" {
        let stdin = reaper.stdin.take().ok_or_else(|| NodeError::Command {
            what: "node-net reaper".into(),
            detail: "no stdin pipe".into(),
        })?;
        return Ok(Some((reaper, stdin)));
    }
    let status = reaper.wait().map_err(|e| NodeError::io(script, e))?;
    if status.code() == Some(SLOT_TAKEN) {
        return Ok(None);
    }
    Err(NodeError::Command {
        what: "node-net reaper".into(),
        detail: format!("exited with {status}; see {}", log.display()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_of_a_slot_match_the_script_formulas() {
        let a = Addressing::new(3);
        assert_eq!(a.api_address(), Ipv4Addr::new(10, 201, 3, 1));
        assert_eq!(a.node_ip(2), Ipv4Addr::new(10, 200, 14, 2));
        assert_eq!(a.pod_cidr(2), "10.244.14.0/24");
        assert_eq!(a.cluster_cidr(), "10.244.12.0/22");
        assert_eq!(a.netns(1), "ncdr-s3-n1");
        assert_eq!(a.dns_ip(), Ipv4Addr::new(10, 96, 3, 10));
        assert!(NODE_NET_SH.contains("idx() { echo $((SLOT * 4 + $1)); }"));
        assert!(NODE_NET_SH.contains(r#"netns() { echo "ncdr-s$SLOT-n$1"; }"#));
        assert!(Addressing::new(SLOTS - 1).index(MAX_NODES - 1) < 250);
    }
}
