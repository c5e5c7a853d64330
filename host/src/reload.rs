//! Hot plugging: a `notify` watcher on the plugins folder feeds a loader thread that debounces
//! events per file and applies each settled file through [`Plugins::apply`].
//!
//! `cp` over a file writes it in chunks and closes it; `mv`, editors and build tools rename a
//! finished file into place. A close-after-write or a rename-into-place settles a file at once;
//! plain writes settle after `RELOAD_DEBOUNCE_MS` of quiet. A file read while still being written
//! fails the ELF completeness check and is retried on its next event. A periodic rescan catches
//! missed events (an overflowing inotify queue) and a folder that was deleted and recreated.
//! `WATCH_MODE=poll` (network file systems, where other machines' changes raise no events) uses
//! that rescan alone.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{mpsc, Arc},
    thread,
    time::{Duration, Instant},
};

use notify::{
    event::{AccessKind, AccessMode, ModifyKind, RenameMode},
    EventKind, RecursiveMode, Watcher,
};

use crate::plugins::{is_plugin_path, tenant_of_folder, Plugins};

/// How the loader thread behaves.
#[derive(Debug, Clone)]
pub(crate) struct ReloadSettings {
    pub dir: PathBuf,
    pub debounce: Duration,
    pub rescan_every: Duration,
    /// Leaked image bytes beyond which `on_budget` is called (once); `None` for never.
    pub leak_budget_bytes: Option<u64>,
    /// No inotify watch: only the rescan every `rescan_every` (`WATCH_MODE=poll`, for network
    /// file systems, where changes made by other machines raise no events).
    pub poll_only: bool,
}

enum Signal {
    /// A path changed; `settled` when the event says the file is complete.
    Path(PathBuf, bool),
    Rescan,
}

/// Starts watching `settings.dir`; the loader thread runs for the life of the process.
pub(crate) fn spawn(plugins: Arc<Plugins>, settings: ReloadSettings, on_budget: Box<dyn Fn(u64) + Send>) -> notify::Result<()> {
    let (tx, rx) = mpsc::channel();
    let events = tx.clone();
    let handler = move |event: notify::Result<notify::Event>| match event {
        Ok(event) => {
            if event.need_rescan() {
                let _ = events.send(Signal::Rescan);
            }
            // Opening and reading a file (which the loader itself does) changes nothing: only
            // creations, writes, renames and removals matter, or the loader would feed itself.
            if matches!(event.kind, EventKind::Access(kind) if kind != AccessKind::Close(AccessMode::Write)) {
                return;
            }
            let settled = matches!(
                event.kind,
                EventKind::Access(AccessKind::Close(AccessMode::Write))
                    | EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both | RenameMode::From))
                    | EventKind::Remove(_)
            );
            for path in event.paths {
                let _ = events.send(Signal::Path(path, settled));
            }
        }
        Err(err) => {
            tracing::warn!("plugins folder watch error ({err}); rescanning");
            let _ = events.send(Signal::Rescan);
        }
    };
    let watcher = if settings.poll_only {
        None
    } else {
        let mut watcher = notify::recommended_watcher(handler)?;
        watcher.watch(&settings.dir, RecursiveMode::Recursive)?;
        Some(watcher)
    };
    thread::Builder::new()
        .name("plugin-loader".to_owned())
        .spawn(move || {
            // Holding a sender keeps the channel open when there is no watcher (poll mode).
            let _keep_open = tx;
            run(plugins, settings, watcher, rx, on_budget)
        })
        .map_err(|err| notify::Error::generic(&format!("cannot start the loader thread: {err}")))?;
    Ok(())
}

fn run(
    plugins: Arc<Plugins>,
    settings: ReloadSettings,
    mut watcher: Option<notify::RecommendedWatcher>,
    rx: mpsc::Receiver<Signal>,
    on_budget: Box<dyn Fn(u64) + Send>,
) {
    let dir = settings.dir.clone();
    let mut pending: HashMap<PathBuf, Instant> = HashMap::new();
    let mut last_event: HashMap<PathBuf, Instant> = HashMap::new();
    let mut folder = identity(&dir);
    let mut next_rescan = Instant::now() + settings.rescan_every;
    let mut rescan = false;
    let mut budget_reported = false;
    loop {
        let now = Instant::now();
        let wake = pending.values().copied().min().unwrap_or(next_rescan).min(next_rescan);
        match rx.recv_timeout(wake.saturating_duration_since(now)) {
            Ok(Signal::Path(path, settled)) => {
                // A signature changed: its plugin is looked at again.
                let path = crate::signing::plugin_of_signature(&path).unwrap_or(path);
                let folder = path.parent();
                let watched = folder == Some(dir.as_path()) || folder.and_then(tenant_of_folder).is_some();
                if watched && is_plugin_path(&path) {
                    let now = Instant::now();
                    let delay = if settled { Duration::from_millis(2) } else { settings.debounce };
                    pending.insert(path.clone(), now + delay);
                    last_event.insert(path, now);
                } else if path == dir || path.starts_with(&dir) && path.is_dir() {
                    rescan = true;
                }
            }
            Ok(Signal::Rescan) => rescan = true,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        let now = Instant::now();
        let due: Vec<PathBuf> = pending.iter().filter(|(_, at)| **at <= now).map(|(p, _)| p.clone()).collect();
        if !due.is_empty() {
            for path in &due {
                pending.remove(path);
            }
            let applied = plugins.apply(&due);
            for (path, module) in &applied.swapped {
                if let Some(at) = last_event.remove(path) {
                    tracing::info!(module = %module, served_after_ms = at.elapsed().as_secs_f64() * 1000.0, "new version served");
                }
            }
        }
        if now >= next_rescan || rescan {
            let current = identity(&dir);
            if current != folder {
                tracing::info!(dir = %dir.display(), present = current.is_some(), "plugins folder replaced; watching it again");
                if let Some(watcher) = watcher.as_mut() {
                    let _ = watcher.unwatch(&dir);
                    if current.is_some() {
                        if let Err(err) = watcher.watch(&dir, RecursiveMode::Recursive) {
                            tracing::warn!(dir = %dir.display(), "cannot watch the plugins folder: {err}");
                        }
                    }
                }
                folder = current;
            }
            plugins.reconcile(&dir);
            next_rescan = Instant::now() + settings.rescan_every;
            rescan = false;
        }
        if let Some(budget) = settings.leak_budget_bytes {
            let leaked = plugins.images().leaked_bytes;
            if leaked > budget && !budget_reported {
                budget_reported = true;
                tracing::warn!(
                    leaked_bytes = leaked,
                    budget_bytes = budget,
                    "reload leak budget exceeded; recycling the process"
                );
                on_budget(leaked);
            }
        }
    }
}

/// The folder's device and inode, to notice it being deleted and recreated.
fn identity(dir: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(dir).ok().filter(|m| m.is_dir()).map(|m| (m.dev(), m.ino()))
}
