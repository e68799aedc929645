//! What drives a watch loop from outside (`fort serve`, `fort mcp --host`): passes on
//! request, counted so a request knows which pass served it, and a stop.

use std::sync::atomic::Ordering;
use std::sync::Arc;

/// What drives a watch loop from outside (`fort serve`, `fort mcp --host`): a pass on request,
/// the passes counted, and a stop.
pub struct External {
    pub wake: tokio::sync::mpsc::UnboundedReceiver<()>,
    pub passes: Arc<Passes>,
    pub stop: Arc<tokio::sync::Notify>,
}

/// Passes started and finished: a request made after writing a file is served by the first
/// pass that starts after it (`started + 1` at the time), done once `done` reaches it.
#[derive(Debug)]
pub struct Passes {
    pub started: std::sync::atomic::AtomicU64,
    pub done: tokio::sync::watch::Sender<u64>,
}

impl Default for Passes {
    fn default() -> Self {
        Passes {
            started: std::sync::atomic::AtomicU64::new(0),
            done: tokio::sync::watch::channel(0).0,
        }
    }
}

impl Passes {
    /// Wait for the pass that serves a request made now.
    pub async fn wait_next(&self, wake: &tokio::sync::mpsc::UnboundedSender<()>) {
        let want = self.started.load(Ordering::SeqCst) + 1;
        let mut rx = self.done.subscribe();
        let _ = wake.send(());
        let _ = rx.wait_for(|d| *d >= want).await;
    }
}
