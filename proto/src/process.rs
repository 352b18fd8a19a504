//! Process behaviour every Tether binary shares: how a termination signal ends it.
//!
//! The first SIGTERM or SIGINT cancels the root [`CancellationToken`] (the server drains, the
//! agent says goodbye); a second one exits at once, for an operator who will not wait. It lives
//! beside the contract because it is one: operators and service managers rely on every Tether
//! process answering signals the same way.

use tokio_util::sync::CancellationToken;

/// Exit status after a second signal (128 + SIGINT, as shells report an interrupted command).
pub const SECOND_SIGNAL_EXIT: i32 = 130;

/// Cancels `shutdown` on the first SIGTERM or SIGINT; exits the process on the second.
/// Spawn it once from `main`.
pub async fn cancel_on_signal(shutdown: CancellationToken) {
    wait_for_signal().await;
    tracing::info!("shutdown requested (signal again to exit immediately)");
    shutdown.cancel();
    wait_for_signal().await;
    tracing::warn!("second signal: exiting immediately");
    std::process::exit(SECOND_SIGNAL_EXIT);
}

/// Waits for SIGTERM or SIGINT (only ctrl-c where there is no SIGTERM).
#[cfg(unix)]
pub async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(err) => {
            tracing::warn!("cannot listen for SIGTERM: {err}");
            // Without a handler there is nothing to wait for but ctrl-c; if even that fails,
            // the default disposition (terminate) applies.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Waits for SIGTERM or SIGINT (only ctrl-c where there is no SIGTERM).
#[cfg(not(unix))]
pub async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
