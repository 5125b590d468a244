//! Clean shutdown: one [`ShutdownSignal`] shared by every task. It fires on SIGINT or SIGTERM
//! or when [`ShutdownSignal::trigger`] is called; tasks spawned through it are tracked, so the
//! node can wait for in-flight work to finish (with a deadline) before it exits.

use std::future::Future;
use std::io;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;

/// A cloneable shutdown handle: a cancellation token plus a tracker of the tasks that must
/// finish before the process exits.
#[derive(Debug, Clone, Default)]
pub struct ShutdownSignal {
    token: CancellationToken,
    tracker: TaskTracker,
}

/// Tasks still running when the deadline passed.
#[derive(Debug, thiserror::Error)]
#[error("{remaining} task(s) still running after {deadline:?}")]
pub struct ShutdownTimeout {
    /// Tasks still running.
    pub remaining: usize,
    /// The deadline that passed.
    pub deadline: Duration,
}

impl ShutdownSignal {
    /// A signal that has not fired.
    pub fn new() -> ShutdownSignal {
        ShutdownSignal::default()
    }

    /// Fires the signal. Idempotent.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// Whether the signal has fired.
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Completes once the signal has fired (at once if it already has).
    pub fn triggered(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    /// The underlying token, for APIs that take one. Cancelling it fires the signal.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Spawns `task` on the current runtime as in-flight work that [`Self::wait_for_tasks`]
    /// waits for. The task should watch [`Self::triggered`] itself and wind down.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Tracked tasks still running.
    pub fn tasks_running(&self) -> usize {
        self.tracker.len()
    }

    /// Fires the signal on the first SIGINT or SIGTERM. The handlers are installed before this
    /// returns (so a signal sent afterwards is never missed); the returned task ends when the
    /// signal fires by any means. Must be called inside a Tokio runtime.
    pub fn listen_for_os_signals(&self) -> io::Result<JoinHandle<()>> {
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let token = self.token.clone();
        Ok(tokio::spawn(async move {
            let name = tokio::select! {
                _ = interrupt.recv() => "SIGINT",
                _ = terminate.recv() => "SIGTERM",
                () = token.cancelled() => return,
            };
            tracing::info!(signal = name, "shutting down");
            token.cancel();
        }))
    }

    /// Fires the signal, then waits up to `deadline` for every task spawned through
    /// [`Self::spawn`] to end (tasks spawned meanwhile are waited for too).
    pub async fn wait_for_tasks(&self, deadline: Duration) -> Result<(), ShutdownTimeout> {
        self.trigger();
        self.tracker.close();
        match tokio::time::timeout(deadline, self.tracker.wait()).await {
            Ok(()) => Ok(()),
            Err(_) => Err(ShutdownTimeout {
                remaining: self.tracker.len(),
                deadline,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn clones_share_the_signal() {
        let a = ShutdownSignal::new();
        let b = a.clone();
        assert!(!b.is_triggered());
        a.trigger();
        b.triggered().await;
        assert!(b.is_triggered());
    }
}
