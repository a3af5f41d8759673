//! Debounced change notifications for the plugin and pipeline directories, so
//! a file copied in several writes is reloaded once, after it is complete.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio_util::sync::CancellationToken;

/// Watches directories; dropping it stops the notifications.
pub(crate) struct DirWatcher {
    _watcher: RecommendedWatcher,
    paths: UnboundedReceiver<PathBuf>,
    debounce: Duration,
}

impl DirWatcher {
    /// Starts watching `dirs` (not recursively).
    pub(crate) fn new(dirs: &[&Path], debounce: Duration) -> notify::Result<Self> {
        let (tx, paths) = unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<Event>| match event {
            Ok(event) if is_change(&event.kind) => {
                for path in event.paths {
                    let _ = tx.send(path);
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "file watcher error"),
        })?;
        for dir in dirs {
            watcher.watch(dir, RecursiveMode::NonRecursive)?;
        }
        Ok(Self { _watcher: watcher, paths, debounce })
    }

    /// The paths that changed, once no further change arrived for the debounce
    /// interval; `None` on shutdown.
    pub(crate) async fn next(&mut self, shutdown: &CancellationToken) -> Option<BTreeSet<PathBuf>> {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return None,
            path = self.paths.recv() => path?,
        };
        let mut changed = BTreeSet::from([first]);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                path = self.paths.recv() => changed.insert(path?),
                _ = tokio::time::sleep(self.debounce) => return Some(changed),
            };
        }
    }
}

/// Reads (including our own, when loading a plugin) are not changes.
fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}
