//! A local cluster with real nodes leaves nothing behind, also when its process is killed with
//! SIGKILL while pods run: no process, network namespace, veth, route, address, guard rule,
//! cgroup or mount of it survives, and its slot is free again.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nats_cdr_testsupport::apply_yaml;
use nats_cdr_testsupport::images::BUSYBOX;
use nats_cdr_testsupport::k8s::wait_deployment_available;
use nats_cdr_testsupport::kube_cluster::client_from_yaml;

fn command_output(program: &str, args: &[&str]) -> String {
    let output = Command::new(program).args(args).output().unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Everything of slot `slot` / directory `dir` still present on the host, one line per leftover.
fn leftovers(slot: u64, dir: &str) -> Vec<String> {
    let mut found = Vec::new();
    let tag = format!("ncdr-s{slot}-");
    for ns in command_output("ip", &["netns", "list"]).lines() {
        if ns.starts_with(&tag) {
            found.push(format!("network namespace {ns}"));
        }
    }
    let first = slot * 4;
    for link in command_output("ip", &["-o", "link"]).lines() {
        if (first..first + 4).any(|i| link.contains(&format!("ncdr{i}h"))) {
            found.push(format!("link {link}"));
        }
    }
    for route in command_output("ip", &["route"]).lines() {
        if (first..first + 4).any(|i| route.starts_with(&format!("10.244.{i}.0/24"))) {
            found.push(format!("route {route}"));
        }
    }
    if command_output("ip", &["addr", "show", "lo"]).contains(&format!("10.201.{slot}.1/")) {
        found.push("address on lo".into());
    }
    for rule in command_output("iptables", &["-S", "FORWARD"]).lines() {
        if rule.contains(&format!("nats-cdr-guard s{slot}\"")) {
            found.push(format!("iptables {rule}"));
        }
    }
    for mount in std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
    {
        if mount.contains(dir) {
            found.push(format!("mount {mount}"));
        }
    }
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        for entry in std::fs::read_dir(hierarchy.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if entry.file_name().to_string_lossy().starts_with(&tag) {
                found.push(format!("cgroup {}", entry.path().display()));
            }
        }
    }
    for process in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(process.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&format!("{dir}/nodes")) {
            found.push(format!(
                "process {} {}",
                process.file_name().to_string_lossy(),
                String::from_utf8_lossy(&cmdline).replace('\0', " ")
            ));
        }
    }
    if Path::new(dir).join("nodes").exists() {
        found.push(format!("directory {dir}/nodes"));
    }
    found
}

#[tokio::test]
async fn a_killed_cluster_process_leaves_nothing_of_its_nodes_behind() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nats-cdr-local"))
        .args(["cluster", "--real-nodes", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start nats-cdr-local cluster");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let info: serde_json::Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("no ready line from nats-cdr-local ({e}): {line:?}"));
    let slot = info["slot"].as_u64().expect("a slot");
    let dir = info["dir"].as_str().unwrap().to_owned();
    let kubeconfig = info["kubeconfig"].as_str().unwrap().to_owned();

    // Pods with volumes and a network, so there are containers, mounts and cgroups to leave.
    let yaml = std::fs::read_to_string(&kubeconfig).unwrap();
    let client = client_from_yaml(&yaml, Path::new(&kubeconfig))
        .await
        .unwrap();
    let deployment = format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: sleeper}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: sleeper}}}}
  template:
    metadata: {{labels: {{app: sleeper}}}}
    spec:
      containers:
      - name: sleeper
        image: {BUSYBOX}
        command: ["/bin/busybox", "sleep", "3600"]
        volumeMounts: [{{name: scratch, mountPath: /scratch}}]
      volumes: [{{name: scratch, emptyDir: {{}}}}]
"#
    );
    apply_yaml(&client, &deployment, "default").await.unwrap();
    wait_deployment_available(&client, "default", "sleeper", 2, Duration::from_secs(120))
        .await
        .expect("pods running before the kill");
    assert!(
        !leftovers(slot, &dir).is_empty(),
        "the check must see the live cluster"
    );

    child.kill().unwrap(); // SIGKILL: no destructor runs
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut left = leftovers(slot, &dir);
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        left = leftovers(slot, &dir);
    }
    assert!(
        left.is_empty(),
        "left behind after SIGKILL:\n{}",
        left.join("\n")
    );
    // The slot is free again once the reaper exits (it holds the slot's lock until then).
    let lock = format!("/run/nats-cdr/slot-{slot}.lock");
    let free = Command::new("flock")
        .args(["-w", "30", &lock, "true"])
        .status()
        .unwrap();
    assert!(free.success(), "slot {slot} still locked");
}
