//! What triggers a reload of the users file while the server runs: SIGHUP always, and
//! changes seen in the file's folder unless `auth.watch = false`. The folder is watched, not
//! the file, so both in-place writes and rename-replace (editors, config management, our
//! own atomic writes) are seen; bursts of events coalesce into one reload.

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use notify_debouncer_mini::notify::{RecommendedWatcher, RecursiveMode};
use notify_debouncer_mini::{new_debouncer, DebounceEventResult, Debouncer};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;

use crate::user_sync::UserSync;

/// How long the folder must be quiet before a burst of file events becomes one reload.
const DEBOUNCE: Duration = Duration::from_millis(150);

/// Keeps the users file watched; dropping it stops the watcher thread. SIGHUP keeps
/// triggering reloads for as long as the actix System runs.
pub struct UsersWatch {
    /// The watcher, when `auth.watch` is on and watching could start.
    _watcher: Option<Debouncer<RecommendedWatcher>>,
}

/// Starts reloading `sync` on SIGHUP and, when `watch` is set, on changes to its file.
///
/// Must be called inside the actix System, which runs the reloads; the watcher's own
/// thread only hands requests over. A watcher that cannot start is logged and leaves
/// SIGHUP as the only trigger. Logs one line saying which triggers are on.
pub fn start(sync: UserSync, watch: bool) -> UsersWatch {
    // One pending request is enough: the reload it triggers reads the file as it is then.
    let (requests, pending) = mpsc::channel(1);
    let path = sync.path().display().to_string();
    let watcher = if watch {
        match watch_file(sync.path(), requests) {
            Ok(watcher) => {
                log::info!("users file {path}: watching it for changes; SIGHUP reloads it too");
                Some(watcher)
            }
            Err(error) => {
                log::warn!("users file {path}: cannot watch it ({error}); SIGHUP reloads it");
                None
            }
        }
    } else {
        log::info!("users file {path}: not watched (auth.watch = false); SIGHUP reloads it");
        None
    };
    let hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => Some(hangups),
        Err(error) => {
            log::error!("cannot watch for SIGHUP: {error}");
            None
        }
    };
    actix_rt::spawn(reload_on_request(sync, pending, hangups));
    UsersWatch { _watcher: watcher }
}

/// Watches the folder of `path` and asks for a reload after each burst of events that
/// touches `path` itself (not its temporary files or its lock file).
fn watch_file(
    path: &Path,
    requests: mpsc::Sender<()>,
) -> notify_debouncer_mini::notify::Result<Debouncer<RecommendedWatcher>> {
    let file_name: OsString = path.file_name().unwrap_or_default().to_os_string();
    let shown = path.display().to_string();
    let mut debouncer = new_debouncer(DEBOUNCE, move |result: DebounceEventResult| {
        match result {
            Ok(events) => {
                if events
                    .iter()
                    .any(|event| event.path.file_name() == Some(file_name.as_os_str()))
                {
                    // Full: a reload is already pending and will read this version.
                    // Closed: the server is stopping.
                    let _ = requests.try_send(());
                }
            }
            Err(error) => log::warn!("users file {shown}: watching it failed: {error}"),
        }
    })?;
    let folder = match path.parent() {
        Some(folder) if !folder.as_os_str().is_empty() => folder,
        _ => Path::new("."),
    };
    debouncer
        .watcher()
        .watch(folder, RecursiveMode::NonRecursive)?;
    Ok(debouncer)
}

/// Reloads once per request from the watcher and once per SIGHUP, one after the other,
/// until both sources are gone.
async fn reload_on_request(
    sync: UserSync,
    mut changes: mpsc::Receiver<()>,
    mut hangups: Option<Signal>,
) {
    loop {
        tokio::select! {
            Some(()) = changes.recv() => {
                log::debug!("users file {}: changed, reloading", sync.path().display());
            }
            Some(()) = next_hangup(&mut hangups) => {
                log::info!("SIGHUP received: reloading users file {}", sync.path().display());
            }
            else => return,
        }
        // The reload logs what it did or why the file was refused.
        let _ = sync.reload().await;
    }
}

/// The next SIGHUP, or `None` when SIGHUP is not watched.
async fn next_hangup(hangups: &mut Option<Signal>) -> Option<()> {
    match hangups {
        Some(hangups) => hangups.recv().await,
        None => None,
    }
}
