//! What triggers a reload of the users file while the server runs: SIGHUP always, and
//! changes of the file unless `auth.watch = false`.
//!
//! The watcher runs on its own thread. It watches folders, not the file, so in-place
//! writes, rename-replace and symlink swaps are all seen: the folder of the configured
//! path, and the folder of every symlink on the way to the file and of the file itself
//! (a Kubernetes ConfigMap's `users.toml -> ..data/users.toml`, `..data -> ..2026_…`
//! included). Only events that can change what the file holds count (not the file being
//! opened or read, which every reload does). After such an event the file must stay the
//! same — same inode, size, times and bytes on two reads [`QUIET`] apart, with no event in
//! between — before [`UserSync::reload_settled`] is asked to apply it, and that applies
//! only bytes it has not read before. Every second, and after every event, the symlinks are
//! followed again and each watched folder is checked to still be the one watched: a folder
//! renamed away, removed or re-made is noticed, logged and watched again.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::signal::unix::Signal;
use tokio::sync::mpsc;

use crate::users::read::{self, Contents};
use crate::users::sync::UserSync;

/// How long the file must stay unchanged, twice over, before it is applied.
pub const QUIET: Duration = Duration::from_millis(250);
/// How often the watched folders are checked to still be the ones the path leads to.
const RECHECK: Duration = Duration::from_secs(1);
/// Symlinks followed, at most, on the way to the file.
const MAX_SYMLINK_HOPS: usize = 40;

/// Keeps the users file watched; dropping it stops the watcher thread. SIGHUP keeps
/// triggering reloads for as long as the actix System runs.
pub struct UsersWatch {
    /// The watcher thread, when there is one.
    _watch: Option<FileWatch>,
}

/// One file watched on its own thread, as this module describes; dropping it stops the
/// thread.
pub struct FileWatch {
    /// Tells the watcher thread to stop.
    stop: std_mpsc::Sender<Message>,
}

impl Drop for FileWatch {
    fn drop(&mut self) {
        // Gone already: the thread stopped on its own.
        let _ = self.stop.send(Message::Stop);
    }
}

/// Watches the file at `path` (`what` it is, for log lines) on a thread of its own and
/// sends `requests` its contents each time they have settled after a change, and once
/// soon after the start. The error says why it cannot be watched.
pub fn watch_file(
    what: &'static str,
    path: PathBuf,
    requests: mpsc::Sender<Contents>,
) -> std::io::Result<FileWatch> {
    let (watch, events, stop) = Watch::new(what, path).map_err(std::io::Error::other)?;
    std::thread::Builder::new()
        .name("file-watch".to_string())
        .spawn(move || watch.run(&events, &requests))?;
    Ok(FileWatch { stop })
}

/// What the watcher thread receives.
enum Message {
    /// A file-system event from `notify`.
    Event(notify::Result<Event>),
    /// The server is stopping.
    Stop,
}

/// Starts reloading `sync` on each SIGHUP from `hangups` and, when `watch` is set, on
/// changes of its file.
///
/// Must be called inside the actix System, which runs the reloads; the watcher's own
/// thread only hands requests over. `hangups` may already hold a SIGHUP received during
/// start-up: it is taken as a reload request. The watcher checks the file once as soon as
/// it runs, so an edit made between the first load and now is applied too. Logs one line
/// saying which triggers are on.
pub fn start(sync: UserSync, watch: bool, hangups: Signal) -> UsersWatch {
    // One pending request is enough: the watcher thread waits until it is taken.
    let (requests, pending) = mpsc::channel(1);
    let path = sync.path().to_path_buf();
    let shown = path.display().to_string();
    let watch = if watch {
        match watch_file("users file", path, requests) {
            Ok(watch) => {
                log::info!("users file {shown}: watching it for changes; SIGHUP reloads it too");
                Some(watch)
            }
            Err(error) => {
                log::warn!("users file {shown}: cannot watch it ({error}); SIGHUP reloads it");
                None
            }
        }
    } else {
        log::info!("users file {shown}: not watched (auth.watch = false); SIGHUP reloads it");
        None
    };
    actix_rt::spawn(reload_on_request(sync, pending, hangups));
    UsersWatch { _watch: watch }
}

/// The watcher's state, owned by its thread.
struct Watch {
    /// What the file is, for log lines ("users file").
    what: &'static str,
    /// The file as configured.
    path: PathBuf,
    /// The file-system watcher; events go to the thread's channel.
    watcher: RecommendedWatcher,
    /// Each folder watched, with the identity (device, inode) it had when the watch began.
    folders: HashMap<PathBuf, Option<(u64, u64)>>,
    /// The names (symlinks and the file) on the way to the file: events about other files
    /// in the watched folders are not about the users file.
    names: HashSet<OsString>,
    /// Folders that could not be watched, already logged: retried without a line each time.
    failing: HashSet<PathBuf>,
}

impl Watch {
    /// A watcher for `path`, its events' receiver and a sender to stop it; fails when the
    /// platform's watcher cannot be made. Folders that cannot be watched yet are retried.
    fn new(
        what: &'static str,
        path: PathBuf,
    ) -> notify::Result<(Self, std_mpsc::Receiver<Message>, std_mpsc::Sender<Message>)> {
        let (sender, events) = std_mpsc::channel();
        let forward = sender.clone();
        let watcher = notify::recommended_watcher(move |event| {
            // The thread is gone: nothing left to tell.
            let _ = forward.send(Message::Event(event));
        })?;
        let mut watch = Self {
            what,
            path,
            watcher,
            folders: HashMap::new(),
            names: HashSet::new(),
            failing: HashSet::new(),
        };
        watch.follow();
        Ok((watch, events, sender))
    }

    /// Hands `UserSync::reload_settled` the file each time it has settled after a change,
    /// until told to stop or the server stops taking requests.
    fn run(mut self, events: &std_mpsc::Receiver<Message>, requests: &mpsc::Sender<Contents>) {
        // Checked once at the start: the file may have changed since it was first loaded.
        let mut check_at = Some(Instant::now() + QUIET);
        let mut candidate: Option<Snapshot> = None;
        let mut recheck_at = Instant::now() + RECHECK;
        loop {
            let wake = check_at.map_or(recheck_at, |at| at.min(recheck_at));
            match events.recv_timeout(wake.saturating_duration_since(Instant::now())) {
                Ok(Message::Event(Ok(event))) => {
                    if self.concerns(&event) {
                        check_at = Some(Instant::now() + QUIET);
                        candidate = None;
                    }
                }
                Ok(Message::Event(Err(error))) => {
                    log::warn!("{}: watching it failed: {error}", self.shown());
                    check_at = Some(Instant::now() + QUIET);
                    candidate = None;
                }
                Ok(Message::Stop) | Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
                Err(std_mpsc::RecvTimeoutError::Timeout) => {}
            }
            let now = Instant::now();
            if now >= recheck_at {
                recheck_at = now + RECHECK;
                if requests.is_closed() {
                    return;
                }
                if self.follow() {
                    check_at.get_or_insert(now + QUIET);
                }
            }
            if check_at.is_some_and(|at| now >= at) {
                self.follow();
                let snapshot = Snapshot::take(&self.path);
                if candidate.as_ref() == Some(&snapshot) {
                    check_at = None;
                    candidate = None;
                    if requests.blocking_send(snapshot.contents).is_err() {
                        return;
                    }
                } else {
                    candidate = Some(snapshot);
                    check_at = Some(Instant::now() + QUIET);
                }
            }
        }
    }

    /// The watched file for log lines: what it is and its path.
    fn shown(&self) -> String {
        format!("{} {}", self.what, self.path.display())
    }

    /// Whether `event` may have changed what the users file holds or where its path leads.
    fn concerns(&self, event: &Event) -> bool {
        let may_change = match event.kind {
            // Opening, reading and closing unwritten leave the bytes as they were.
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
            EventKind::Access(_) => false,
            _ => true,
        };
        // No path: the watcher lost events (an overflow) and asks for a rescan.
        may_change
            && (event.paths.is_empty()
                || event.paths.iter().any(|path| {
                    self.folders.contains_key(path)
                        || path
                            .file_name()
                            .is_some_and(|name| self.names.contains(name))
                }))
    }

    /// Follows the path's symlinks again and makes the watched folders those it leads
    /// through, re-watching any that was replaced or removed since. Answers whether
    /// anything changed (the file may then have changed without an event seen).
    fn follow(&mut self) -> bool {
        let initial = self.folders.is_empty();
        let visited = resolution(&self.path);
        self.names = visited
            .iter()
            .filter_map(|path| path.file_name().map(OsString::from))
            .collect();
        let wanted: HashSet<PathBuf> = visited.iter().map(|path| folder_of(path)).collect();
        let mut changed = false;
        let gone: Vec<PathBuf> = self
            .folders
            .keys()
            .filter(|folder| !wanted.contains(*folder))
            .cloned()
            .collect();
        for folder in gone {
            log::info!(
                "{}: its path no longer leads through {}; not watching that any more",
                self.shown(),
                folder.display()
            );
            // Already gone with its folder: nothing to undo.
            let _ = self.watcher.unwatch(&folder);
            self.folders.remove(&folder);
            changed = true;
        }
        for folder in wanted {
            let identity = identity(&folder);
            match (self.folders.get(&folder), identity) {
                (Some(Some(watched)), Some(now)) if *watched == now => continue,
                (Some(None), None) => continue,
                (Some(Some(_)), _) => {
                    log::warn!(
                        "{}: folder {} was renamed away, removed or made again: \
                         its watch is lost",
                        self.shown(),
                        folder.display()
                    );
                    // The old watch may have ended with its folder: nothing to undo then.
                    let _ = self.watcher.unwatch(&folder);
                }
                (Some(None), Some(_)) | (None, _) => {}
            }
            changed = true;
            let watched = match identity {
                None => {
                    log::warn!(
                        "{}: folder {} does not exist; looking for it every second",
                        self.shown(),
                        folder.display()
                    );
                    None
                }
                Some(identity) => match self.watcher.watch(&folder, RecursiveMode::NonRecursive) {
                    Ok(()) => {
                        self.failing.remove(&folder);
                        let level = if initial {
                            log::Level::Debug
                        } else {
                            log::Level::Info
                        };
                        log::log!(
                            level,
                            "{}: watching folder {}",
                            self.shown(),
                            folder.display()
                        );
                        Some(identity)
                    }
                    Err(error) => {
                        if self.failing.insert(folder.clone()) {
                            log::warn!(
                                "{}: cannot watch folder {} ({error}); trying again \
                                 every second",
                                self.shown(),
                                folder.display()
                            );
                        }
                        None
                    }
                },
            };
            self.folders.insert(folder, watched);
        }
        changed
    }
}

/// What the file looked like at one moment: its identity and times, and its bytes.
#[derive(PartialEq, Eq)]
struct Snapshot {
    /// Device, inode, size, modification and change times (ns), when it could be read.
    stat: Option<(u64, u64, u64, i128, i128)>,
    /// What it held.
    contents: Contents,
}

impl Snapshot {
    /// The file at `path`, through symlinks, now.
    fn take(path: &Path) -> Self {
        let stat = std::fs::metadata(path).ok().map(|metadata| {
            let nanos =
                |seconds: i64, nanos: i64| i128::from(seconds) * 1_000_000_000 + i128::from(nanos);
            (
                metadata.dev(),
                metadata.ino(),
                metadata.size(),
                nanos(metadata.mtime(), metadata.mtime_nsec()),
                nanos(metadata.ctime(), metadata.ctime_nsec()),
            )
        });
        Self {
            stat,
            contents: read::read_contents(path),
        }
    }
}

/// The (device, inode) of the folder at `path`, following symlinks, if it is there.
fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path)
        .ok()
        .filter(std::fs::Metadata::is_dir)
        .map(|metadata| (metadata.dev(), metadata.ino()))
}

/// Every path met while following `path` to its file, absolute: each symlink in turn (of
/// the file or of a folder on the way), then the path the file has (or would have).
fn resolution(path: &Path) -> Vec<PathBuf> {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut pending: VecDeque<OsString> = components(&absolute);
    let mut visited = Vec::new();
    let mut resolved = PathBuf::new();
    while let Some(component) = pending.pop_front() {
        if component == "/" {
            resolved = PathBuf::from("/");
        } else if component == ".." {
            resolved.pop();
        } else if component != "." {
            let candidate = resolved.join(&component);
            match std::fs::read_link(&candidate) {
                Ok(target) if visited.len() < MAX_SYMLINK_HOPS => {
                    visited.push(candidate);
                    for (at, part) in components(&target).into_iter().enumerate() {
                        pending.insert(at, part);
                    }
                }
                _ => resolved = candidate,
            }
        }
    }
    visited.push(resolved);
    visited
}

/// The components of `path` as owned strings, the root as `/`.
fn components(path: &Path) -> VecDeque<OsString> {
    path.components()
        .map(|component| component.as_os_str().to_os_string())
        .collect()
}

/// The folder holding `path` (`/` for the root).
fn folder_of(path: &Path) -> PathBuf {
    path.parent().unwrap_or(Path::new("/")).to_path_buf()
}

/// Reloads once per settled change from the watcher and once per SIGHUP, one after the
/// other, until both sources are gone.
async fn reload_on_request(
    sync: UserSync,
    mut changes: mpsc::Receiver<Contents>,
    mut hangups: Signal,
) {
    loop {
        tokio::select! {
            Some(settled) = changes.recv() => sync.reload_settled(settled).await,
            Some(()) = hangups.recv() => {
                log::info!("SIGHUP received: reloading users file {}", sync.path().display());
                // The reload logs what it did or why the file was refused.
                let _ = sync.reload().await;
            }
            else => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn resolution_follows_a_configmap_layout() {
        let folder = tempfile::tempdir().unwrap();
        let root = folder.path().canonicalize().unwrap();
        std::fs::create_dir(root.join("..2026_a")).unwrap();
        std::fs::write(root.join("..2026_a/users.toml"), "").unwrap();
        symlink("..2026_a", root.join("..data")).unwrap();
        symlink("..data/users.toml", root.join("users.toml")).unwrap();
        assert_eq!(
            resolution(&root.join("users.toml")),
            [
                root.join("users.toml"),
                root.join("..data"),
                root.join("..2026_a/users.toml"),
            ]
        );
    }

    #[test]
    fn resolution_of_a_plain_file_is_itself_and_of_a_missing_one_too() {
        let folder = tempfile::tempdir().unwrap();
        let root = folder.path().canonicalize().unwrap();
        let path = root.join("users.toml");
        assert_eq!(resolution(&path), std::slice::from_ref(&path));
        std::fs::write(&path, "").unwrap();
        assert_eq!(resolution(&path), std::slice::from_ref(&path));
        assert_eq!(resolution(&root.join("x/../users.toml")), [path]);
    }

    #[test]
    fn resolution_stops_at_a_symlink_loop() {
        let folder = tempfile::tempdir().unwrap();
        let root = folder.path().canonicalize().unwrap();
        symlink("b", root.join("a")).unwrap();
        symlink("a", root.join("b")).unwrap();
        assert_eq!(resolution(&root.join("a")).len(), MAX_SYMLINK_HOPS + 1);
    }
}
