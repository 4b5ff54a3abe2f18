//! Admission after a restart (SPEC §5) in the application: the verifier key file
//! (`auth.verifier_key_file`, checked at start-up), `tether keygen`, and where verifiers
//! are kept — in the cluster's Redis (`tether-cluster`), or, on a node alone, in memory and
//! in `auth.verifier_file`, read at start and saved atomically every
//! `auth.verifier_save_interval` and at shutdown. Without a key file nothing of this runs: no file is read or written.

use crate::config::Config;
use crate::users::atomic_write::write_atomically;
use crate::users::failure::Failure;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tether_actors::auth::verifiers::{random_key, MemoryVerifiers, VerifierKey, Verifiers};
use tether_actors::hub::broker::Broker;

/// Reads and checks the key file: at least 32 bytes (one trailing newline aside), not
/// readable, writable or executable by group or others. The error names the file.
pub fn read_key(path: &Path) -> Result<VerifierKey, String> {
    let shown = path.display();
    let metadata = std::fs::metadata(path)
        .map_err(|err| format!("auth.verifier_key_file: cannot read {shown}: {err}"))?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "auth.verifier_key_file: {shown} is open to group or others (mode {mode:04o}); \
             it must be readable by the server's user alone: chmod 600 {shown}"
        ));
    }
    let bytes = std::fs::read(path)
        .map_err(|err| format!("auth.verifier_key_file: cannot read {shown}: {err}"))?;
    let key = bytes
        .strip_suffix(b"\r\n")
        .or_else(|| bytes.strip_suffix(b"\n"))
        .unwrap_or(&bytes);
    VerifierKey::new(key).map_err(|err| format!("auth.verifier_key_file: {shown} {err}"))
}

/// `tether keygen PATH`: writes a new verifier key — 32 random bytes from the operating
/// system as 64 hexadecimal digits and a newline, mode 0600, atomically — and refuses to
/// replace an existing file unless `force` (a new key makes every kept verifier useless).
pub fn keygen(path: &Path, force: bool) -> Result<String, Failure> {
    let shown = path.display();
    if !force && std::fs::symlink_metadata(path).is_ok() {
        return Err(Failure {
            exit_code: 1,
            message: format!(
                "{shown} exists; not replaced (--force replaces it: every verifier made \
                 under the old key then becomes useless, and each user's next login pays \
                 bcrypt once)"
            ),
        });
    }
    let Some(bytes) = random_key() else {
        return Err(Failure {
            exit_code: 1,
            message: "the operating system gave no random bytes".into(),
        });
    };
    let mut text = String::with_capacity(bytes.len() * 2 + 1);
    for byte in bytes {
        text.push_str(&format!("{byte:02x}"));
    }
    text.push('\n');
    write_atomically(path, text.as_bytes(), None).map_err(|err| Failure {
        exit_code: 1,
        message: format!("{shown}: {err}"),
    })?;
    Ok(format!(
        "wrote a verifier key to {shown} (32 random bytes as 64 hexadecimal digits, mode \
         0600); set auth.verifier_key_file to it, and keep it apart from the users and the \
         verifiers (see SECURITY.md)"
    ))
}

/// A node alone's verifiers and the file they are saved to.
pub struct VerifierFile {
    path: PathBuf,
    store: Arc<MemoryVerifiers>,
    key_id: String,
    /// `auth.verifier_save_interval`: how often [`VerifierFile::save_periodically`] saves.
    every: Duration,
    /// Held by a save from its snapshot to its rename, so saves never overtake each other.
    saving: std::sync::Mutex<()>,
}

impl VerifierFile {
    /// Writes the verifiers if they changed since the last save (blocking file I/O: call it
    /// off the event loops). A failure is logged; the next save tries again.
    pub fn save(&self) {
        let _one_at_a_time = self
            .saving
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(bytes) = self.store.encode(&self.key_id) else {
            return;
        };
        match write_atomically(&self.path, &bytes, None) {
            Ok(()) => log::debug!(
                "verifiers saved: {} to {}",
                self.store.len(),
                self.path.display()
            ),
            Err(err) => {
                // Written again at the next save.
                self.store.mark_changed();
                log::error!(
                    "cannot save the verifiers to {}: {err}",
                    self.path.display()
                );
            }
        }
    }

    /// Saves every `auth.verifier_save_interval`, on tokio's blocking pool, until dropped.
    pub async fn save_periodically(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(self.every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let file = Arc::clone(&self);
            let _ = tokio::task::spawn_blocking(move || file.save()).await;
        }
    }
}

/// What start-up prepares: the verifiers for the password checks and, on a node alone,
/// their file.
pub struct Admission {
    /// For `Settings::verifiers`.
    pub verifiers: Verifiers,
    /// A node alone's file; `None` in a cluster (Redis keeps them).
    pub file: Option<Arc<VerifierFile>>,
}

/// The key, checked (an error names the file: exit 2); `None` without a key file.
pub fn load_key(config: &Config) -> Result<Option<Arc<VerifierKey>>, String> {
    config
        .auth
        .verifier_key_file
        .as_deref()
        .map(|path| read_key(path).map(Arc::new))
        .transpose()
}

/// The verifiers under `key`: where the cluster's `broker` keeps them, else in memory,
/// filled from `auth.verifier_file` (a corrupt or unreadable file, or one made under
/// another key, is logged and ignored). `None` for a broker that keeps none.
pub fn start(
    config: &Config,
    key: Arc<VerifierKey>,
    broker: Option<&Arc<dyn Broker>>,
) -> Option<Admission> {
    let ttl = config.auth.verifier_ttl;
    if let Some(broker) = broker {
        let Some(store) = broker.verifiers(ttl) else {
            log::warn!(
                "auth.verifier_key_file is set, but this cluster's broker keeps no \
                 verifiers: every login pays bcrypt"
            );
            return None;
        };
        log::info!(
            "admission after a restart: verifiers (key {}) kept by the cluster for {}",
            key.id(),
            crate::config::format_duration(ttl)
        );
        return Some(Admission {
            verifiers: Verifiers::new(key, store),
            file: None,
        });
    }
    let path = config.auth.verifier_file.clone();
    let store = Arc::new(MemoryVerifiers::new(ttl));
    match std::fs::read(&path) {
        Ok(bytes) => match store.load(&bytes, key.id()) {
            Ok(loaded) => log::info!(
                "admission after a restart: {loaded} verifier(s) read from {}",
                path.display()
            ),
            Err(err) => {
                log::warn!(
                    "verifier file {} ignored: {err}; it is rewritten at the next save",
                    path.display()
                );
                store.mark_changed();
            }
        },
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => log::info!(
            "admission after a restart: no verifier file {} yet",
            path.display()
        ),
        Err(err) => log::warn!(
            "verifier file {} ignored: cannot read it: {err}",
            path.display()
        ),
    }
    let file = Arc::new(VerifierFile {
        path,
        store: Arc::clone(&store),
        key_id: key.id().to_owned(),
        every: config.auth.verifier_save_interval,
        saving: std::sync::Mutex::new(()),
    });
    Some(Admission {
        verifiers: Verifiers::new(key, store),
        file: Some(file),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_writes_a_private_key_read_key_accepts_and_refuses_to_overwrite() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("key");
        let said = keygen(&path, false).unwrap();
        assert!(said.contains("0600"), "{said}");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.len(), 65);
        let key = read_key(&path).unwrap();
        assert!(keygen(&path, false).is_err());
        keygen(&path, true).unwrap();
        assert_ne!(read_key(&path).unwrap().id(), key.id());
    }

    #[test]
    fn an_open_or_short_key_is_refused_naming_the_file() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("key");
        std::fs::write(&path, [5; 32]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = read_key(&path).unwrap_err();
        assert!(err.contains("key") && err.contains("0640"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        read_key(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, [5; 31]).unwrap();
        let err = read_key(&path).unwrap_err();
        assert!(
            err.contains(&path.display().to_string()) && err.contains("31"),
            "{err}"
        );
        let err = read_key(&folder.path().join("none")).unwrap_err();
        assert!(err.contains("none"), "{err}");
    }
}
