//! `nats-cdr-local up`: the embedded default environment. Starts a local control plane (etcd,
//! kube-apiserver, controller-manager, scheduler, one kwok node), installs the CRDs, applies the
//! examples into namespace `nats-cdr-demo`, writes a kubeconfig, and runs until SIGINT/SIGTERM,
//! then stops everything. `scripts/demo.sh` runs it in the background.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use nats_cdr_testsupport::{ClusterOptions, LocalCluster, apply_yaml, install_crds, repo_root};

#[derive(Parser)]
#[command(
    about = "The nats-cdr local environment: a real control plane with the CRDs and examples"
)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start everything and run until interrupted.
    Up {
        /// Where the kubeconfig and the `ready` marker are written.
        #[arg(long, env = "NATS_CDR_DEMO_DIR")]
        state_dir: Option<PathBuf>,
        /// Namespace the examples are applied to.
        #[arg(long, default_value = "nats-cdr-demo")]
        namespace: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Cmd::Up {
        state_dir,
        namespace,
    } = Args::parse().command;
    let state_dir =
        state_dir.unwrap_or_else(|| nats_cdr_testsupport::binaries::cache_dir().join("demo"));
    std::fs::create_dir_all(&state_dir)?;
    let ready_marker = state_dir.join("ready");
    let _ = std::fs::remove_file(&ready_marker);

    println!(
        "starting the local control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok)..."
    );
    let cluster = LocalCluster::start(ClusterOptions { fake_nodes: 1 })
        .await
        .context("starting the local control plane")?;
    let client = cluster.client().await?;
    install_crds(&client).await.context("installing the CRDs")?;

    let namespace_yaml =
        format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n");
    apply_yaml(&client, &namespace_yaml, &namespace).await?;
    let examples = repo_root().join("examples");
    let mut files: Vec<_> = std::fs::read_dir(&examples)
        .with_context(|| format!("reading {}", examples.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for file in &files {
        let text = std::fs::read_to_string(file)?;
        let applied = apply_yaml(&client, &text, &namespace)
            .await
            .with_context(|| format!("applying {}", file.display()))?;
        println!("applied {} ({} objects)", file.display(), applied.len());
    }

    let kubeconfig = state_dir.join("kubeconfig");
    std::fs::copy(cluster.kubeconfig_path(), &kubeconfig)?;
    std::fs::write(&ready_marker, format!("{}\n", std::process::id()))?;
    println!("\nready. The cluster runs until this process is stopped.");
    println!("  export KUBECONFIG={}", kubeconfig.display());
    println!(
        "  kubectl get natsclusters,jetstreamstreams,jetstreamconsumers,cdrpipelines -n {namespace}"
    );
    println!("  logs and data: {}", cluster.dir().display());

    wait_for_shutdown_signal().await?;
    println!("stopping");
    let _ = std::fs::remove_file(&ready_marker);
    drop(cluster);
    Ok(())
}

async fn wait_for_shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    Ok(())
}
