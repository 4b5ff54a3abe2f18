//! Editing the users file (`tether passwd`, `tether deluser`, the admin API): a change is
//! made with `toml_edit`, so the comments, order and formatting of every entry it does not
//! touch stay; it is checked as the server would load it before anything is written, and
//! written with [`super::atomic_write`] under the file's lock.

use std::fs::{File, Metadata};
use std::path::Path;

use tether_actors::auth::credentials::check_name;
use tether_actors::auth::user_store::UserSet;
use toml_edit::{DocumentMut, Item, Table, TableLike, Value};

use super::atomic_write::{lock, symlink_target, write_atomically};
use super::read::{check_bcrypt_hash, decode, line_of, parse, UsersFileError};

/// What an edit of the users file did.
#[derive(Debug)]
pub struct Edited<T> {
    /// The edit's own outcome.
    pub outcome: T,
    /// What was written; `None` when the file was left as it was.
    pub written: Option<Written>,
}

/// A users file as an edit wrote it.
pub struct Written {
    /// The users it holds: the check made before writing, so nobody need read it again.
    pub users: UserSet,
    /// Its bytes, to recognise the file when it is next read.
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for Written {
    /// Shows sizes only: the bytes and the users hold hashes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Written({} user(s), {} bytes)",
            self.users.len(),
            self.bytes.len()
        )
    }
}

/// What [`set_password_hash`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordChange {
    /// The user did not exist and was added.
    Created,
    /// The user existed; its hash was replaced.
    Changed,
}

/// Sets NAME's hash (creating the user), atomically and under the advisory lock, keeping
/// comments/order/formatting of untouched entries and the file's permissions; a new file is
/// created mode 0600.
///
/// Refuses a name that breaks SPEC §5 and a `hash` that is not a bcrypt hash, so a
/// plaintext password is never written; refuses too when the result would not load (an
/// existing file that does not parse, or another entry that is invalid). Blocks on file
/// I/O and on the lock: call it off the event loop.
pub fn set_password_hash(
    path: &Path,
    name: &str,
    hash: &str,
) -> Result<Edited<PasswordChange>, UsersFileError> {
    if let Err(error) = check_name(name) {
        return Err(UsersFileError::invalid_input(
            path,
            name,
            format!("invalid user name: {error}"),
        ));
    }
    if let Err(why) = check_bcrypt_hash(hash) {
        return Err(UsersFileError::invalid_input(
            path,
            name,
            format!("the new password_hash is not a bcrypt hash: {why}"),
        ));
    }
    edit(path, |document| {
        let users = users_table(document, path)?;
        let Some(entry) = users.get_mut(name) else {
            let mut entry = Table::new();
            entry.insert("password_hash", toml_edit::value(hash));
            users.insert(name, Item::Table(entry));
            return Ok(Edit::Write(PasswordChange::Created));
        };
        let Some(entry) = entry.as_table_like_mut() else {
            return Err(UsersFileError::invalid_input(
                path,
                name,
                "the entry is not a table; fix it by hand".to_string(),
            ));
        };
        match entry.get_mut("password_hash").and_then(Item::as_value_mut) {
            Some(old) => {
                // The new value keeps the old one's spacing and trailing comment.
                let decor = old.decor().clone();
                *old = Value::from(hash);
                *old.decor_mut() = decor;
            }
            None => {
                entry.insert("password_hash", toml_edit::value(hash));
            }
        }
        Ok(Edit::Write(PasswordChange::Changed))
    })
}

/// Removes NAME; Ok(false) when absent (file untouched).
///
/// Same atomic, locked write as [`set_password_hash`]. Blocks on file I/O and on the lock:
/// call it off the event loop.
pub fn remove_user(path: &Path, name: &str) -> Result<Edited<bool>, UsersFileError> {
    if let Err(error) = check_name(name) {
        return Err(UsersFileError::invalid_input(
            path,
            name,
            format!("invalid user name: {error}"),
        ));
    }
    edit(path, |document| {
        let Some(users) = document.get_mut("users").and_then(Item::as_table_like_mut) else {
            return Ok(Edit::Keep(false));
        };
        let Some(removed) = users.remove(name) else {
            return Ok(Edit::Keep(false));
        };
        // Comments set apart from the removed header by a blank line are not about it.
        let Item::Table(removed) = removed else {
            return Ok(Edit::Write(true));
        };
        let prefix = removed.decor().prefix().and_then(|raw| raw.as_str());
        let detached = detached_comments(prefix.unwrap_or_default());
        if detached.trim().is_empty() {
            return Ok(Edit::Write(true));
        }
        let next = users
            .iter_mut()
            .filter_map(|(_, item)| item.as_table_mut())
            .filter(|table| table.position() > removed.position())
            .min_by_key(|table| table.position());
        match next {
            Some(next) => {
                let own = next.decor().prefix().and_then(|raw| raw.as_str());
                let prefix = format!("{detached}{}", own.unwrap_or_default());
                next.decor_mut().set_prefix(prefix);
            }
            None => {
                let own = document.trailing().as_str().unwrap_or_default();
                let trailing = format!("{detached}{own}");
                document.set_trailing(trailing);
            }
        }
        Ok(Edit::Write(true))
    })
}

/// The lines of the text before a table header that end at its last blank line: comments
/// about the file or a group of entries rather than about the table below them.
fn detached_comments(prefix: &str) -> &str {
    let mut end = 0;
    let mut offset = 0;
    for line in prefix.split_inclusive('\n') {
        offset += line.len();
        if line.trim().is_empty() && line.ends_with('\n') {
            end = offset;
        }
    }
    &prefix[..end]
}

/// What an edit of the users file decided.
enum Edit<T> {
    /// Write the changed document; the edit's outcome is `T`.
    Write(T),
    /// Leave the file as it is; the edit's outcome is `T`.
    Keep(T),
}

/// Read-modify-write of the file at `path` under its lock: `change` edits the parsed
/// document (a missing file reads as empty) and says whether to write it. What is written
/// is checked first as the server would load it; the users of that check come back.
///
/// When `path` is a symlink (or a chain of them), the file edited and replaced is the one
/// it finally points to, and the lock is taken beside that file: the symlink stays.
fn edit<T>(
    path: &Path,
    change: impl FnOnce(&mut DocumentMut) -> Result<Edit<T>, UsersFileError>,
) -> Result<Edited<T>, UsersFileError> {
    let target = symlink_target(path);
    let path = target.as_path();
    let _lock = lock(path).map_err(|message| UsersFileError::io(path, message))?;
    let (text, metadata) = match read_text(path)? {
        Some((text, metadata)) => (text, Some(metadata)),
        None => (String::new(), None),
    };
    let mut document: DocumentMut = text.parse().map_err(|error: toml_edit::TomlError| {
        let line = error.span().map(|span| line_of(&text, span.start));
        UsersFileError::at_line(path, line, error.message().to_string())
    })?;
    let outcome = match change(&mut document)? {
        Edit::Write(outcome) => outcome,
        Edit::Keep(outcome) => {
            return Ok(Edited {
                outcome,
                written: None,
            })
        }
    };
    let mut edited = document.to_string();
    if edited.trim().is_empty() {
        // A blank file is what a write in progress looks like, and a running server does not
        // apply one without SIGHUP; an explicit empty table says "no users" for certain.
        edited = "[users]\n".to_string();
    }
    // Never write a file that the server would refuse. A fault already in the file is
    // reported where it is in the file, not where it would have been after the edit.
    let users = match parse(&edited, path) {
        Ok(users) => users,
        Err(error) => return Err(parse(&text, path).err().unwrap_or(error)),
    };
    write_atomically(path, edited.as_bytes(), metadata.as_ref())
        .map_err(|message| UsersFileError::io(path, message))?;
    Ok(Edited {
        outcome,
        written: Some(Written {
            users,
            bytes: edited.into_bytes(),
        }),
    })
}

/// The `users` table of `document`, created (as a bare `[users.NAME]` parent) if missing.
fn users_table<'d>(
    document: &'d mut DocumentMut,
    path: &Path,
) -> Result<&'d mut dyn TableLike, UsersFileError> {
    document
        .entry("users")
        .or_insert_with(|| {
            let mut users = Table::new();
            users.set_implicit(true);
            Item::Table(users)
        })
        .as_table_like_mut()
        .ok_or_else(|| UsersFileError::new(path, "`users` is not a table".to_string()))
}

/// The text of the file at `path` and its metadata, or `None` when it does not exist.
fn read_text(path: &Path) -> Result<Option<(String, Metadata)>, UsersFileError> {
    let cannot_read =
        |error: std::io::Error| UsersFileError::io(path, format!("cannot read it: {error}"));
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(cannot_read(error)),
    };
    let metadata = file.metadata().map_err(cannot_read)?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut bytes).map_err(cannot_read)?;
    Ok(Some((decode(&bytes, path)?, metadata)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::read::read_contents;
    use crate::users::read::tests::{with_hash, HASH};
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::PathBuf;

    /// Another real bcrypt hash (cost 4), of "other".
    const OTHER: &str = "$2b$04$q7hyZ2mQcgUSwjKPB2bS0.5iwa9HlP.XgfOKTfBa7YsZSaL0C1Nty";

    fn file_with(text: &str) -> (tempfile::TempDir, PathBuf) {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("users.toml");
        std::fs::write(&path, text).unwrap();
        (folder, path)
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().mode() & 0o777
    }

    #[test]
    fn set_password_hash_creates_a_missing_file_mode_0600() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("users.toml");
        let change = set_password_hash(&path, "alice", HASH).unwrap().outcome;
        assert_eq!(change, PasswordChange::Created);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), with_hash(HASH));
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&folder.path().join("users.toml.lock")), 0o600);
    }

    #[test]
    fn an_edit_answers_the_bytes_it_wrote_and_the_users_they_hold() {
        let (_folder, path) = file_with(&with_hash(HASH));
        let edited = set_password_hash(&path, "bob", OTHER).unwrap();
        let written = edited.written.expect("written");
        assert_eq!(written.bytes, std::fs::read(&path).unwrap());
        assert_eq!(written.users, read_contents(&path).users(&path).unwrap());
        let kept = remove_user(&path, "carol").unwrap();
        assert!(!kept.outcome && kept.written.is_none());
    }

    #[test]
    fn set_password_hash_keeps_everything_it_does_not_touch() {
        let text = format!(
            "# people\n\n[users.bob]   # the boss\npassword_hash   =   \"{HASH}\"\n\n\
             # alice, set by hand\n[users.alice]\npassword_hash = \"{HASH}\"  # old\n"
        );
        let (_folder, path) = file_with(&text);
        assert_eq!(
            set_password_hash(&path, "alice", OTHER).unwrap().outcome,
            PasswordChange::Changed
        );
        let expected = format!(
            "# people\n\n[users.bob]   # the boss\npassword_hash   =   \"{HASH}\"\n\n\
             # alice, set by hand\n[users.alice]\npassword_hash = \"{OTHER}\"  # old\n"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), expected);

        assert_eq!(
            set_password_hash(&path, "Алиса Б", OTHER).unwrap().outcome,
            PasswordChange::Created
        );
        let grown = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            grown,
            format!("{expected}\n[users.\"Алиса Б\"]\npassword_hash = \"{OTHER}\"\n")
        );
        assert_eq!(parse(&grown, &path).unwrap().len(), 3);
    }

    #[test]
    fn set_password_hash_edits_inline_and_dotted_entries() {
        let (_folder, path) = file_with(&format!(
            "users.alice.password_hash = \"{HASH}\"\n[users.bob]\npassword_hash = \"{HASH}\"\n"
        ));
        set_password_hash(&path, "alice", OTHER).unwrap();
        let users = read_contents(&path).users(&path).unwrap();
        assert_eq!(users.get("alice").map(|hash| &**hash), Some(OTHER));

        let (_folder, path) = file_with(&format!(
            "users = {{ alice = {{ password_hash = \"{HASH}\" }} }}\n"
        ));
        set_password_hash(&path, "alice", OTHER).unwrap();
        set_password_hash(&path, "bob", HASH).unwrap();
        let users = read_contents(&path).users(&path).unwrap();
        assert_eq!(users.get("alice").map(|hash| &**hash), Some(OTHER));
        assert_eq!(users.get("bob").map(|hash| &**hash), Some(HASH));
    }

    #[test]
    fn set_password_hash_keeps_the_file_mode() {
        let (_folder, path) = file_with(&with_hash(HASH));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        set_password_hash(&path, "bob", HASH).unwrap();
        assert_eq!(mode(&path), 0o640);
    }

    #[test]
    fn set_password_hash_refuses_plaintext_and_bad_names_leaving_the_file() {
        let (_folder, path) = file_with(&with_hash(HASH));
        let error = set_password_hash(&path, "bob", "hunter2").unwrap_err();
        assert!(!error.is_io());
        assert_eq!(error.user(), Some("bob"));
        assert!(error.message().contains("not a bcrypt hash"), "{error}");
        assert!(!error.to_string().contains("hunter2"), "{error}");

        let error = set_password_hash(&path, "a\nb", HASH).unwrap_err();
        assert!(error.message().contains("control character"), "{error}");
        let error = remove_user(&path, "").unwrap_err();
        assert!(error.message().contains("empty"), "{error}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), with_hash(HASH));
    }

    #[test]
    fn nothing_is_written_over_a_file_that_would_not_load() {
        let broken = format!("[users.alice]\npassword_hash = \"{HASH}\"\n[users.bob\n");
        let (_folder, path) = file_with(&broken);
        let error = set_password_hash(&path, "carol", HASH).unwrap_err();
        assert_eq!(error.line(), Some(3));
        assert!(!error.is_io());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), broken);

        let invalid = format!(
            "[users.alice]\npassword_hash = \"{HASH}\"\n[users.bob]\npassword_hash = \"pw\"\n"
        );
        let (_folder, path) = file_with(&invalid);
        let error = set_password_hash(&path, "alice", OTHER).unwrap_err();
        assert_eq!(error.user(), Some("bob"));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), invalid);
        // Removing the bad entry is what repairs the file.
        assert!(remove_user(&path, "bob").unwrap().outcome);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), with_hash(HASH));
    }

    #[test]
    fn a_refused_edit_names_the_line_of_the_fault_in_the_file_as_it_is() {
        let text = format!(
            "[users.alice]\npassword_hash = \"{HASH}\"\n\n# bob\n[users.bob]\n\
             password_hash = \"{HASH}\"\n\n[users.carol]\npassword_hash = \"pw\"\n"
        );
        let (_folder, path) = file_with(&text);
        let error = remove_user(&path, "alice").unwrap_err();
        assert_eq!(
            (error.user(), error.line()),
            (Some("carol"), Some(9)),
            "{error}"
        );
        let error = set_password_hash(&path, "bob", OTHER).unwrap_err();
        assert_eq!(
            (error.user(), error.line()),
            (Some("carol"), Some(9)),
            "{error}"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }

    #[test]
    fn remove_user_removes_only_that_entry() {
        let text = format!(
            "# people\n\n# alice\n[users.alice]\npassword_hash = \"{HASH}\"\n\n\
             [users.bob] # b\npassword_hash = \"{OTHER}\"\n\n# carol\n[users.carol]\n\
             password_hash = \"{OTHER}\"\n# the end\n"
        );
        let (_folder, path) = file_with(&text);
        assert!(remove_user(&path, "alice").unwrap().outcome);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!(
                "# people\n\n\n[users.bob] # b\npassword_hash = \"{OTHER}\"\n\n# carol\n\
                 [users.carol]\npassword_hash = \"{OTHER}\"\n# the end\n"
            )
        );
        assert!(remove_user(&path, "carol").unwrap().outcome);
        assert!(remove_user(&path, "bob").unwrap().outcome);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "# people\n\n\n# the end\n"
        );
    }

    #[test]
    fn remove_user_that_is_absent_leaves_the_file_untouched() {
        let (_folder, path) = file_with(&with_hash(HASH));
        let before = std::fs::metadata(&path).unwrap();
        assert!(!remove_user(&path, "bob").unwrap().outcome);
        let after = std::fs::metadata(&path).unwrap();
        assert_eq!(
            (before.ino(), before.mtime_nsec()),
            (after.ino(), after.mtime_nsec())
        );

        let folder = tempfile::tempdir().unwrap();
        let missing = folder.path().join("users.toml");
        assert!(!remove_user(&missing, "bob").unwrap().outcome);
        assert!(!missing.exists());
    }

    #[test]
    fn writing_into_a_missing_folder_is_an_io_error_naming_the_file() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("nowhere").join("users.toml");
        let error = set_password_hash(&path, "alice", HASH).unwrap_err();
        assert!(error.is_io());
        assert_eq!(error.path(), path);
        assert!(error.message().contains("users.toml.lock"), "{error}");
    }

    #[test]
    fn removing_the_last_user_leaves_an_explicit_empty_table() {
        let (_folder, path) = file_with(&with_hash(HASH));
        assert!(remove_user(&path, "alice").unwrap().outcome);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "[users]\n");
        assert!(read_contents(&path).users(&path).unwrap().is_empty());
    }

    #[test]
    fn writes_through_a_symlink_go_to_its_target_and_keep_the_symlink() {
        let folder = tempfile::tempdir().unwrap();
        let elsewhere = folder.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let target = elsewhere.join("real.toml");
        std::fs::write(&target, with_hash(HASH)).unwrap();
        let link = folder.path().join("users.toml");
        std::os::unix::fs::symlink("elsewhere/real.toml", &link).unwrap();
        let hop = folder.path().join("hop.toml");
        std::os::unix::fs::symlink(&link, &hop).unwrap();

        set_password_hash(&hop, "bob", OTHER).unwrap();
        assert!(remove_user(&hop, "alice").unwrap().outcome);
        for symlink in [&link, &hop] {
            assert!(std::fs::symlink_metadata(symlink).unwrap().is_symlink());
        }
        let users = read_contents(&target).users(&target).unwrap();
        assert_eq!(users.keys().collect::<Vec<_>>(), ["bob"]);
        assert!(elsewhere.join("real.toml.lock").exists());
        assert!(!folder.path().join("users.toml.lock").exists());
    }
}
