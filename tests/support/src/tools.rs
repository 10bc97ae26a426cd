//! The command-line tools a user would reach for, run against a test cluster: helm, kubectl,
//! `kubectl port-forward` (to reach a pod from the test on any cluster, kind included) and the
//! `nats` CLI.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::binaries::{self, MissingBinary};

/// Failure to run a tool.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error(transparent)]
    MissingBinary(#[from] MissingBinary),
    #[error("cannot run {tool}")]
    Spawn {
        tool: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{tool} {args} failed: {output}")]
    Failed {
        tool: String,
        args: String,
        output: String,
    },
}

/// Runs `tool` (helm, kubectl) with `--kubeconfig` and `args`; its stdout on success.
pub fn run(tool: &str, kubeconfig: &Path, args: &[&str]) -> Result<String, ToolError> {
    let mut command = Command::new(binaries::find(tool)?);
    command.arg("--kubeconfig").arg(kubeconfig).args(args);
    stdout_of(tool, command, args)
}

/// Runs the `nats` CLI against `server` (a URL); its stdout on success.
pub fn nats(server: &str, args: &[&str]) -> Result<String, ToolError> {
    let mut command = Command::new(binaries::find("nats")?);
    command.args(["--server", server]).args(args);
    stdout_of("nats", command, args)
}

fn stdout_of(tool: &str, mut command: Command, args: &[&str]) -> Result<String, ToolError> {
    let output = command.output().map_err(|source| ToolError::Spawn {
        tool: tool.into(),
        source,
    })?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(ToolError::Failed {
            tool: tool.into(),
            args: args.join(" "),
            output: format!("{stdout}{}", String::from_utf8_lossy(&output.stderr)),
        })
    }
}

/// A `kubectl port-forward` to a pod or Service, stopped on drop.
#[derive(Debug)]
pub struct PortForward {
    child: Child,
    port: u16,
}

impl PortForward {
    /// Forwards a free loopback port to `remote_port` of `target` (`svc/nats`, `pod/x`) in
    /// `namespace`, and waits until kubectl says it listens.
    pub fn start(
        kubeconfig: &Path,
        namespace: &str,
        target: &str,
        remote_port: u16,
    ) -> Result<Self, ToolError> {
        let binary = binaries::find("kubectl")?;
        let args = format!("port-forward -n {namespace} {target} :{remote_port}");
        let mut child = Command::new(binary)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args.split(' '))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| ToolError::Spawn {
                tool: "kubectl".into(),
                source,
            })?;
        let mut line = String::new();
        if let Some(stdout) = child.stdout.take() {
            let mut reader = BufReader::new(stdout);
            let _ = reader.read_line(&mut line);
            // Keep draining kubectl's output so it never blocks on a full pipe.
            std::thread::spawn(move || {
                let mut sink = String::new();
                while reader.read_line(&mut sink).is_ok_and(|n| n > 0) {
                    sink.clear();
                }
            });
        }
        // "Forwarding from 127.0.0.1:41234 -> 4222"
        let port = line
            .split_once("127.0.0.1:")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|p| p.parse().ok());
        match port {
            Some(port) => Ok(Self { child, port }),
            None => {
                let _ = child.kill();
                let output = child
                    .wait_with_output()
                    .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                    .unwrap_or_default();
                Err(ToolError::Failed {
                    tool: "kubectl".into(),
                    args,
                    output: format!("{line}{output}"),
                })
            }
        }
    }

    /// The local port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
