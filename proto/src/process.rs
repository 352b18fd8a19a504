//! Process behaviour every Tether binary shares: how a termination signal ends it, and how a
//! fatal error is reported (one line, [`error_line`]).
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

/// `err` and its causes as one line, `outer: cause: root cause`, each cause left out when the
/// message before it already says it (errors that print their source, as sled's and many
/// `thiserror` ones do, would otherwise repeat it once per level).
pub fn error_line(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut last = line.clone();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !last.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        last = text;
        source = cause.source();
    }
    // Some causes span lines (a backtrace, a multi-line message): one line is the promise.
    line.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Chained(&'static str, Option<Box<Chained>>);

    impl std::fmt::Display for Chained {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Chained {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|c| c as _)
        }
    }

    #[test]
    fn causes_already_said_are_not_repeated() {
        let root = Chained("IO error: locked", None);
        let middle = Chained("backend error: IO error: locked", Some(Box::new(root)));
        let top = Chained(
            "cannot open the store: backend error: IO error: locked",
            Some(Box::new(middle)),
        );
        assert_eq!(
            error_line(&top),
            "cannot open the store: backend error: IO error: locked"
        );
        let plain = Chained(
            "cannot start",
            Some(Box::new(Chained("port\nin use", None))),
        );
        assert_eq!(error_line(&plain), "cannot start: port in use");
    }
}
