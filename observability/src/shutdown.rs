//! Graceful shutdown, one way for every binary: a [`CancellationToken`] cancelled on the first
//! SIGTERM or SIGINT. Everything that must stop holds a clone of the token.

use tokio_util::sync::CancellationToken;

/// Completes on the first SIGTERM or SIGINT (Ctrl-C) received from now on.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot watch SIGTERM; only SIGINT stops the process");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = terminate => tracing::info!("SIGTERM received; shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; shutting down"),
    }
}

/// Cancels `token` on the first signal, then completes on a second one: a `main` that selects on
/// it can stop at once when asked twice (`kill` during a slow drain).
pub async fn cancel_on_signal(token: CancellationToken) {
    tokio::select! {
        () = shutdown_signal() => token.cancel(),
        // Cancelled by someone else (a test, a fatal error): keep listening for the second signal.
        () = token.cancelled() => {}
    }
    shutdown_signal().await;
    tracing::warn!("second signal; stopping without waiting");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn the_first_sigterm_cancels_the_token_and_the_second_completes() {
        let token = CancellationToken::new();
        let handler = tokio::spawn(cancel_on_signal(token.clone()));
        // Let the handler install its signal listeners before signalling.
        tokio::time::sleep(Duration::from_millis(100)).await;
        nix_kill_self();
        tokio::time::timeout(Duration::from_secs(5), token.cancelled())
            .await
            .expect("token cancelled by SIGTERM");
        assert!(!handler.is_finished(), "one signal only cancels");
        tokio::time::sleep(Duration::from_millis(100)).await;
        nix_kill_self();
        tokio::time::timeout(Duration::from_secs(5), handler)
            .await
            .expect("second SIGTERM completes the handler")
            .unwrap();
    }

    fn nix_kill_self() {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}
