//! The nats-cdr operator binary: flags, logging, the metrics/health endpoint, the controllers,
//! and a graceful stop on SIGTERM or Ctrl-C.

use anyhow::Context as _;
use clap::Parser;
use nats_cdr_operator::{Args, Operator, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    nats_cdr_observability::init_tracing(args.log_format, &args.log_level)?;
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes configuration (in-cluster or KUBECONFIG)")?;
    let operator = Operator::new(client, Settings::from(&args));
    let mut registry = prometheus_client::registry::Registry::default();
    operator.metrics().register(&mut registry);
    let telemetry = nats_cdr_observability::Telemetry::new(registry, operator.readiness());
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let wait = move |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let (addr, server) =
        nats_cdr_observability::serve(args.metrics_addr, telemetry, wait(shutdown_rx.clone()))
            .await?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    tokio::spawn(async move {
        terminated().await;
        tracing::info!("shutting down");
        let _ = shutdown_tx.send(true);
    });
    operator.run(wait(shutdown_rx)).await?;
    server.await??;
    Ok(())
}

async fn terminated() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = ctrl_c.await;
}
