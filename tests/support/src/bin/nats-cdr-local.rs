//! `nats-cdr-local up`: the embedded default environment. Starts a local cluster (etcd,
//! kube-apiserver, controller-manager, scheduler, one real node with kubelet, containerd,
//! kube-proxy and CoreDNS), installs the operator with its Helm chart (it runs in a pod, from the
//! image of scripts/images.sh), applies the examples into namespace `nats-cdr-demo`, then runs the
//! data path for real: nats-server, PostgreSQL, the operator reconciling an external NatsCluster,
//! the CDR stream and the workers' consumer, kam-cdr-bridge tailing a sample acc_json file and
//! cdr-worker writing CDRs into PostgreSQL, with a new sample call appended every two seconds.
//! Writes a kubeconfig and runs until SIGINT/SIGTERM, then stops everything. `scripts/demo.sh`
//! runs it in the background.
//!
//! `nats-cdr-local cluster`: only a local cluster (for poking around, and for the teardown test).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use nats_cdr_testsupport::{
    ClusterOptions, LocalCluster, apply_yaml, demo, install_crds, repo_root,
};

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
    /// Start only a local cluster and run until interrupted; prints one JSON line with its
    /// kubeconfig, directory and slot once it is ready.
    Cluster {
        /// Real nodes (kubelet + containerd + kube-proxy), 0 to 4.
        #[arg(long, default_value_t = 1)]
        real_nodes: usize,
        /// kwok fake nodes.
        #[arg(long, default_value_t = 0)]
        fake_nodes: usize,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Cmd::Up {
            state_dir,
            namespace,
        } => up(state_dir, namespace).await,
        Cmd::Cluster {
            real_nodes,
            fake_nodes,
        } => cluster(real_nodes, fake_nodes).await,
    }
}

async fn cluster(real_nodes: usize, fake_nodes: usize) -> anyhow::Result<()> {
    let cluster = LocalCluster::start(ClusterOptions {
        real_nodes,
        fake_nodes,
    })
    .await
    .context("starting the local cluster")?;
    println!(
        "{}",
        serde_json::json!({
            "kubeconfig": cluster.kubeconfig_path(),
            "dir": cluster.dir(),
            "slot": cluster.addressing().map(|a| a.slot()),
            "nodes": cluster.real_nodes().map(|n| n.names()),
        })
    );
    wait_for_shutdown_signal().await?;
    drop(cluster);
    Ok(())
}

async fn up(state_dir: Option<PathBuf>, namespace: String) -> anyhow::Result<()> {
    let state_dir =
        state_dir.unwrap_or_else(|| nats_cdr_testsupport::binaries::cache_dir().join("demo"));
    std::fs::create_dir_all(&state_dir)?;
    let ready_marker = state_dir.join("ready");
    let _ = std::fs::remove_file(&ready_marker);

    println!(
        "starting the local cluster (etcd, kube-apiserver, controller-manager, scheduler, one real node: kubelet + containerd + kube-proxy, CoreDNS)..."
    );
    let cluster = LocalCluster::start(ClusterOptions {
        real_nodes: 1,
        ..Default::default()
    })
    .await
    .context("starting the local cluster")?;
    let client = cluster.client().await?;
    let kubeconfig = state_dir.join("kubeconfig");
    std::fs::copy(cluster.kubeconfig_path(), &kubeconfig)?;
    let addressing = cluster
        .addressing()
        .context("the local cluster has no real node")?;

    println!("installing the operator with its Helm chart (CRDs included)...");
    demo::install_operator(&client, &kubeconfig)
        .await
        .context("installing the operator with helm")?;
    // The chart installed the CRDs; this makes sure they are current and Established.
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

    let data_path = demo::start(&client, &namespace, &state_dir, addressing.api_address())
        .await
        .context("starting the data path (nats-server, PostgreSQL, bridge, worker)")?;
    println!(
        "CDRs flowing: {} calls in PostgreSQL so far; a new call every 2 s",
        data_path.cdr_count()
    );

    std::fs::write(&ready_marker, format!("{}\n", std::process::id()))?;
    println!("\nready. Everything runs until this process is stopped.");
    println!("  export KUBECONFIG={}", kubeconfig.display());
    println!("  kubectl get pods -A -o wide");
    println!(
        "  kubectl get natsclusters,jetstreamstreams,jetstreamconsumers,cdrpipelines -n {namespace}"
    );
    println!(
        "  psql {} -c 'SELECT call_id, disposition, setup_time, answer_time, duration_ms, charge FROM cdr ORDER BY call_id DESC LIMIT 5'",
        data_path.postgres.url_for(demo::DATABASE)
    );
    println!(
        "  nats --server {} stream info AKIRA_CDR",
        data_path.nats.url()
    );
    println!("  acc file: {}", data_path.acc_file.display());
    println!(
        "  logs: {} and {}",
        state_dir.join("logs").display(),
        cluster.dir().display()
    );

    let mut next_call = 20;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
    let shutdown = wait_for_shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            result = &mut shutdown => { result?; break; }
            _ = tick.tick() => {
                if let Err(e) = data_path.append_call(next_call) {
                    eprintln!("cannot append a sample call: {e}");
                }
                next_call += 1;
            }
        }
    }
    drop(data_path);
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
