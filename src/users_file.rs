//! The users file of SPEC §5: one `[users.NAME]` table per user holding a bcrypt
//! `password_hash`. A file is checked whole, so a bad one never yields a partial user set.
//! Writes go through a temporary file and a rename under an advisory lock, land on the final
//! target when the path is a symlink, and keep the comments and formatting of every entry
//! they do not touch. Errors name the file, the
//! line, the user and the problem, and never show a hash.

use std::collections::HashMap;
use std::fmt;
use std::fs::{File, Metadata, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tether_actors::credentials::check_name;
use tether_actors::password::MAX_STORED_COST;
use tether_actors::users::{PasswordHash, UserSet};
use toml::Spanned;
use toml_edit::{DocumentMut, Item, Table, TableLike, Value};

/// What the users file held when it was read, kept to tell whether it changed since.
#[derive(Clone, PartialEq, Eq)]
pub enum Contents {
    /// There was no file.
    Missing,
    /// The file could not be read, for this reason.
    Unreadable(String),
    /// The file's bytes.
    Bytes(Vec<u8>),
}

impl Contents {
    /// Whether the file exists but holds nothing but whitespace: what a file looks like
    /// between being truncated and being written again.
    pub fn is_blank(&self) -> bool {
        matches!(self, Self::Bytes(bytes) if bytes.iter().all(u8::is_ascii_whitespace))
    }

    /// The users the contents hold, checked as [`parse`] does; `path` is named in errors.
    pub fn users(&self, path: &Path) -> Result<UserSet, UsersFileError> {
        match self {
            Self::Missing => Err(UsersFileError::io(path, "it does not exist".to_string())),
            Self::Unreadable(why) => {
                Err(UsersFileError::io(path, format!("cannot read it: {why}")))
            }
            Self::Bytes(bytes) => parse(&decode(bytes, path)?, path),
        }
    }
}

impl fmt::Debug for Contents {
    /// Shows the size of the bytes, never the bytes (they hold hashes).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => f.write_str("Missing"),
            Self::Unreadable(why) => f.debug_tuple("Unreadable").field(why).finish(),
            Self::Bytes(bytes) => write!(f, "Bytes({} bytes)", bytes.len()),
        }
    }
}

/// Reads the file at `path` (through symlinks) whole. Blocks on file I/O.
pub fn read_contents(path: &Path) -> Contents {
    match std::fs::read(path) {
        Ok(bytes) => Contents::Bytes(bytes),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Contents::Missing,
        Err(error) => Contents::Unreadable(error.to_string()),
    }
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

/// The bytes of a users file as text; an error names the line of the first invalid byte.
fn decode(bytes: &[u8], path: &Path) -> Result<String, UsersFileError> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Ok(text.to_string()),
        Err(error) => {
            let valid = &bytes[..error.valid_up_to()];
            let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
            Err(UsersFileError {
                line: Some(line),
                ..UsersFileError::new(path, "not valid UTF-8".to_string())
            })
        }
    }
}

/// Checks the text of a users file that came from `path` (named in errors).
pub fn parse(text: &str, path: &Path) -> Result<UserSet, UsersFileError> {
    let raw = deserialize(text, path)?;
    let mut entries: Vec<(String, Spanned<RawUser>)> = raw.users.into_iter().collect();
    entries.sort_by_key(|(_, entry)| entry.span().start);
    let mut users = UserSet::with_capacity(entries.len());
    for (name, entry) in entries {
        let at = |span: std::ops::Range<usize>, message: String| UsersFileError {
            line: Some(line_of(text, span.start)),
            user: Some(name.clone()),
            ..UsersFileError::new(path, message)
        };
        if let Err(error) = check_name(&name) {
            return Err(at(entry.span(), format!("invalid user name: {error}")));
        }
        let hash = &entry.get_ref().password_hash;
        if let Err(why) = check_bcrypt_hash(hash.get_ref()) {
            return Err(at(
                hash.span(),
                format!("password_hash is not a bcrypt hash: {why}"),
            ));
        }
        users.insert(name, PasswordHash::from(hash.get_ref().as_str()));
    }
    Ok(users)
}

/// Why a users file was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsersFileError {
    /// The users file.
    file: PathBuf,
    /// 1-based line of the problem, when known.
    line: Option<usize>,
    /// The user whose entry is wrong, when the problem lies in one.
    user: Option<String>,
    /// What is wrong, for a person; never holds a hash.
    message: String,
    /// Whether the file could not be read, locked or written, rather than being invalid.
    io: bool,
}

impl UsersFileError {
    /// The file, or what was asked of it, is invalid.
    fn new(file: &Path, message: String) -> Self {
        Self {
            file: file.to_path_buf(),
            line: None,
            user: None,
            message,
            io: false,
        }
    }

    /// The file could not be read, locked or written.
    pub(crate) fn io(file: &Path, message: String) -> Self {
        Self {
            io: true,
            ..Self::new(file, message)
        }
    }

    /// An invalid name or hash given for `user`.
    fn invalid_input(file: &Path, user: &str, message: String) -> Self {
        Self {
            user: Some(user.to_string()),
            ..Self::new(file, message)
        }
    }

    /// Whether the file could not be read, locked or written (an I/O failure), rather than
    /// holding or being given something invalid.
    pub fn is_io(&self) -> bool {
        self.io
    }

    /// The users file the error is about.
    pub fn path(&self) -> &Path {
        &self.file
    }

    /// The 1-based line of the problem, when known.
    pub fn line(&self) -> Option<usize> {
        self.line
    }

    /// The user whose entry is wrong, when the problem lies in one.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// What is wrong, without the file, line and user.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for UsersFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if let Some(user) = &self.user {
            write!(f, "user {user:?}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for UsersFileError {}

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
) -> Result<PasswordChange, UsersFileError> {
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
pub fn remove_user(path: &Path, name: &str) -> Result<bool, UsersFileError> {
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
/// document (a missing file reads as empty) and says whether to write it.
///
/// When `path` is a symlink (or a chain of them), the file edited and replaced is the one
/// it finally points to, and the lock is taken beside that file: the symlink stays.
fn edit<T>(
    path: &Path,
    change: impl FnOnce(&mut DocumentMut) -> Result<Edit<T>, UsersFileError>,
) -> Result<T, UsersFileError> {
    let target = symlink_target(path);
    let path = target.as_path();
    let _lock = lock(path)?;
    let (text, metadata) = match read_text(path)? {
        Some((text, metadata)) => (text, Some(metadata)),
        None => (String::new(), None),
    };
    let mut document: DocumentMut =
        text.parse()
            .map_err(|error: toml_edit::TomlError| UsersFileError {
                line: error.span().map(|span| line_of(&text, span.start)),
                ..UsersFileError::new(path, error.message().to_string())
            })?;
    let outcome = match change(&mut document)? {
        Edit::Write(outcome) => outcome,
        Edit::Keep(outcome) => return Ok(outcome),
    };
    let mut edited = document.to_string();
    if edited.trim().is_empty() {
        // A blank file is what a write in progress looks like, and a running server does not
        // apply one without SIGHUP; an explicit empty table says "no users" for certain.
        edited = "[users]\n".to_string();
    }
    // Never write a file that the server would refuse. A fault already in the file is
    // reported where it is in the file, not where it would have been after the edit.
    if let Err(error) = parse(&edited, path) {
        return Err(parse(&text, path).err().unwrap_or(error));
    }
    write_atomically(path, edited.as_bytes(), metadata.as_ref())?;
    Ok(outcome)
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

/// Takes the advisory lock that serialises writers of `path`: an exclusive `flock` on the
/// sidecar `NAME.lock` in the same folder (created mode 0600 and never removed, so every
/// writer locks the same file). Released when the returned file is dropped.
fn lock(path: &Path) -> Result<File, UsersFileError> {
    let mut lock_name = path.file_name().unwrap_or_default().to_os_string();
    lock_name.push(".lock");
    let lock_path = folder_of(path).join(lock_name);
    let failed = |what: &str, error: std::io::Error| {
        UsersFileError::io(
            path,
            format!("cannot {what} {}: {error}", lock_path.display()),
        )
    };
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|error| failed("open the lock file", error))?;
    fs4::FileExt::lock(&file).map_err(|error| failed("lock", error))?;
    Ok(file)
}

/// Replaces the file at `path` with `text`: a temporary file in the same folder is written,
/// synced and renamed over it, then the folder is synced. The new file gets the mode (and,
/// where the process may set it, the owner) of `existing`, or mode 0600.
fn write_atomically(
    path: &Path,
    text: &[u8],
    existing: Option<&Metadata>,
) -> Result<(), UsersFileError> {
    let folder = folder_of(path);
    let failed = |what: &str, error: std::io::Error| {
        UsersFileError::io(path, format!("cannot {what}: {error}"))
    };
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(path.file_name().unwrap_or_default());
    prefix.push(".");
    // Created mode 0600; removed again if anything below fails.
    let mut temporary = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .tempfile_in(folder)
        .map_err(|error| failed("create a temporary file beside it", error))?;
    if let Some(existing) = existing {
        let file = temporary.as_file();
        file.set_permissions(existing.permissions())
            .map_err(|error| failed("give the new version the file's permissions", error))?;
        let created = file
            .metadata()
            .map_err(|error| failed("read the temporary file's owner", error))?;
        if (created.uid(), created.gid()) != (existing.uid(), existing.gid()) {
            // Only root (or the owner, for the group) may do this; anyone else leaves the
            // new version owned by themselves, as any editor would.
            let _ = std::os::unix::fs::fchown(file, Some(existing.uid()), Some(existing.gid()));
        }
    }
    temporary
        .write_all(text)
        .and_then(|()| temporary.as_file().sync_all())
        .map_err(|error| failed("write the temporary file", error))?;
    temporary
        .persist(path)
        .map_err(|error| failed("rename the temporary file over it", error.error))?;
    File::open(folder)
        .and_then(|folder| folder.sync_all())
        .map_err(|error| failed("sync its folder", error))
}

/// Symlinks followed, at most, from the users file's path to the file itself.
const MAX_SYMLINK_HOPS: usize = 40;

/// The path that `path` finally names once every symlink in its last component is
/// followed (a missing or dangling target included); `path` itself when it is no symlink.
/// Folders on the way need no resolving: the kernel follows them when the file beside the
/// target is created and renamed.
fn symlink_target(path: &Path) -> PathBuf {
    let mut current = path.to_path_buf();
    for _ in 0..MAX_SYMLINK_HOPS {
        match std::fs::read_link(&current) {
            // An absolute target replaces the folder in `join`; a relative one is beside.
            Ok(target) => current = folder_of(&current).join(target),
            Err(_) => break,
        }
    }
    current
}

/// The folder holding `path` (`.` for a bare file name).
fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(folder) if !folder.as_os_str().is_empty() => folder,
        _ => Path::new("."),
    }
}

/// The file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUsersFile {
    /// Users by name; the span locates each entry for errors.
    #[serde(default)]
    users: HashMap<String, Spanned<RawUser>>,
}

/// One `[users.NAME]` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table with a password_hash")]
struct RawUser {
    /// The span locates a bad hash without showing it.
    password_hash: Spanned<String>,
}

/// TOML text into the raw structs; errors carry the line and, inside an entry, the user.
fn deserialize(text: &str, file: &Path) -> Result<RawUsersFile, UsersFileError> {
    let deserializer = toml::Deserializer::parse(text).map_err(|error| UsersFileError {
        line: error.span().map(|span| line_of(text, span.start)),
        ..UsersFileError::new(file, error.message().to_string())
    })?;
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        // `Spanned` adds a segment of its own to the path; only TOML keys are kept.
        let keys: Vec<String> = error
            .path()
            .iter()
            .map(ToString::to_string)
            .filter(|key| !key.starts_with("$__serde_spanned"))
            .collect();
        let message = error.inner().message();
        let message = message
            .strip_prefix("unknown field")
            .map(|rest| format!("unknown key{rest}"))
            .or_else(|| {
                let rest = message.strip_prefix("missing field")?;
                Some(format!("missing key{rest}"))
            })
            .unwrap_or_else(|| message.to_string());
        let (user, message) = match keys.as_slice() {
            [users, user, ..] if users == "users" => {
                let inner = keys[2..].join(".");
                let message = if inner.is_empty() || message.starts_with("unknown key") {
                    message
                } else {
                    format!("{inner}: {message}")
                };
                (Some(user.clone()), message)
            }
            [key] if message.starts_with("unknown key") => (
                None,
                format!("unknown top-level key `{key}`: the file holds only [users.NAME] tables"),
            ),
            keys => (None, format!("{}: {message}", keys.join("."))),
        };
        UsersFileError {
            line: error.inner().span().map(|span| line_of(text, span.start)),
            user,
            ..UsersFileError::new(file, message)
        }
    })
}

/// The 1-based line of byte `offset` of `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let before = text.as_bytes().get(..offset).unwrap_or(text.as_bytes());
    before.iter().filter(|&&b| b == b'\n').count() + 1
}

/// Why `hash` is not a bcrypt hash that logins can be checked against, if it is not:
/// `$2a$`, `$2b$`, `$2x$` or `$2y$`, a two-digit cost from 04 to [`MAX_STORED_COST`] (a
/// higher one would hold a bcrypt thread for minutes to days per login), `$`, then 53
/// characters of `./A-Za-z0-9` in bcrypt's canonical base64. The reason never quotes the
/// hash.
fn check_bcrypt_hash(hash: &str) -> Result<(), String> {
    let length = hash.chars().count();
    if length != 60 {
        return Err(format!("expected 60 characters, found {length}"));
    }
    if !hash.is_ascii() {
        return Err("it holds characters outside ./A-Za-z0-9 and $".to_string());
    }
    if !matches!(&hash[..4], "$2a$" | "$2b$" | "$2x$" | "$2y$") {
        return Err("expected it to start with $2a$, $2b$, $2x$ or $2y$".to_string());
    }
    let cost = &hash[4..6];
    let cost_in_range = cost.bytes().all(|b| b.is_ascii_digit())
        && cost
            .parse::<u32>()
            .is_ok_and(|cost| (4..=MAX_STORED_COST).contains(&cost));
    if !cost_in_range {
        return Err(format!(
            "the cost must be two digits from 04 to {MAX_STORED_COST}"
        ));
    }
    if &hash[6..7] != "$" {
        return Err("expected `$` after the cost".to_string());
    }
    if !hash[7..]
        .bytes()
        .all(|b| b == b'.' || b == b'/' || b.is_ascii_alphanumeric())
    {
        return Err("the salt and hash must be 53 characters of ./A-Za-z0-9".to_string());
    }
    // The same parser `bcrypt::verify` uses: it also refuses non-canonical base64.
    if hash.parse::<bcrypt::HashParts>().is_err() {
        return Err("the salt or hash is not in bcrypt's canonical base64".to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A real bcrypt hash (cost 4) of "pw".
    const HASH: &str = "$2b$04$Ntrg9Fabzc6juPOTnPFLh.5e6tYskaiyQb/inXTn0vjmZfstib9Oy";

    fn parse_text(text: &str) -> Result<UserSet, UsersFileError> {
        parse(text, Path::new("/etc/tether/users.toml"))
    }

    fn refusal(text: &str) -> UsersFileError {
        match parse_text(text) {
            Ok(users) => panic!("accepted {text:?}: {:?}", users.keys()),
            Err(error) => error,
        }
    }

    fn with_hash(hash: &str) -> String {
        format!("[users.alice]\npassword_hash = \"{hash}\"\n")
    }

    #[test]
    fn users_are_read_with_their_hashes() {
        let other = HASH.replace("$2b$", "$2y$");
        let text = format!(
            "# people\n[users.alice]\npassword_hash = \"{HASH}\" # set by hand\n\n\
             [users.\"Алиса Б\"]\npassword_hash = \"{other}\"\n"
        );
        let users = parse_text(&text).unwrap();
        assert_eq!(users.len(), 2);
        assert_eq!(users.get("alice").map(|hash| &**hash), Some(HASH));
        assert_eq!(
            users.get("Алиса Б").map(|hash| &**hash),
            Some(other.as_str())
        );
    }

    #[test]
    fn empty_file_has_no_users() {
        assert!(parse_text("").unwrap().is_empty());
        assert!(parse_text("# nobody yet\n[users]\n").unwrap().is_empty());
    }

    #[test]
    fn every_bcrypt_prefix_is_accepted() {
        for prefix in ["$2a$", "$2b$", "$2x$", "$2y$"] {
            let hash = HASH.replace("$2b$", prefix);
            assert!(parse_text(&with_hash(&hash)).is_ok(), "{prefix}");
        }
    }

    #[test]
    fn hash_that_is_not_bcrypt_names_user_and_line_but_not_the_hash() {
        let text =
            format!("[users.bob]\npassword_hash = \"{HASH}\"\n\n[users.alice]\npassword_hash = \"hunter2\"\n");
        let error = refusal(&text);
        assert_eq!(error.user(), Some("alice"));
        assert_eq!(error.line(), Some(5));
        let shown = error.to_string();
        assert!(
            shown.starts_with("/etc/tether/users.toml: line 5: user \"alice\": password_hash is not a bcrypt hash"),
            "{shown}"
        );
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn malformed_hashes_are_refused_without_being_shown() {
        let cases = [
            (HASH[..59].to_string(), "expected 60 characters, found 59"),
            (HASH.replace("$2b$", "$1b$"), "start with $2a$"),
            (HASH.replace("$2b$", "$2c$"), "start with $2a$"),
            (HASH.replace("$04$", "$03$"), "from 04 to 16"),
            (HASH.replace("$04$", "$17$"), "from 04 to 16"),
            (HASH.replace("$04$", "$31$"), "from 04 to 16"),
            (HASH.replace("$04$", "$32$"), "from 04 to 16"),
            (HASH.replace("$04$", "$+4$"), "from 04 to 16"),
            (HASH.replace("$04$", "$04x"), "expected `$` after the cost"),
            (HASH.replace("Ntrg", "Nt-g"), "53 characters of ./A-Za-z0-9"),
            (
                HASH.replace("Ntrg", "Ntré"),
                "characters outside ./A-Za-z0-9",
            ),
            (format!("{}z", &HASH[..59]), "canonical base64"),
        ];
        for (hash, words) in cases {
            let error = refusal(&with_hash(&hash));
            assert_eq!(error.user(), Some("alice"));
            assert!(error.message().contains(words), "{error}");
            assert!(!error.to_string().contains(&hash[7..]), "{error}");
        }
    }

    #[test]
    fn bad_user_name_is_named_with_the_rule_it_breaks() {
        let error = refusal(&format!(
            "[users.\"a\\u0001b\"]\npassword_hash = \"{HASH}\"\n"
        ));
        assert_eq!(error.user(), Some("a\u{1}b"));
        assert_eq!(error.line(), Some(1));
        assert!(error.message().contains("control character"), "{error}");
        assert!(error.to_string().contains("user \"a\\u{1}b\""), "{error}");

        let error = refusal(&format!("[users.\"\"]\npassword_hash = \"{HASH}\"\n"));
        assert!(error.message().contains("empty"), "{error}");
    }

    #[test]
    fn unknown_key_in_a_user_entry_is_named_with_the_user() {
        let error = refusal(&format!(
            "[users.alice]\npassword_hash = \"{HASH}\"\npassword = \"pw\"\n"
        ));
        assert_eq!(error.user(), Some("alice"));
        assert_eq!(error.line(), Some(3));
        assert!(
            error.message().starts_with("unknown key `password`"),
            "{error}"
        );
    }

    #[test]
    fn unknown_top_level_key_is_named() {
        let error = refusal(&format!("[user.alice]\npassword_hash = \"{HASH}\"\n"));
        assert_eq!(error.user(), None);
        assert_eq!(error.line(), Some(1));
        assert!(
            error.message().starts_with("unknown top-level key `user`"),
            "{error}"
        );
    }

    #[test]
    fn user_without_password_hash_is_named() {
        let error = refusal("[users.alice]\n");
        assert_eq!(error.user(), Some("alice"));
        assert!(
            error.message().contains("missing key `password_hash`"),
            "{error}"
        );
    }

    #[test]
    fn password_hash_of_wrong_type_is_named_with_the_user() {
        let error = refusal("[users.alice]\npassword_hash = 5\n");
        assert_eq!(error.user(), Some("alice"));
        assert_eq!(error.line(), Some(2));
        assert!(
            error.message().starts_with("password_hash: invalid type"),
            "{error}"
        );
    }

    #[test]
    fn syntax_error_gives_the_line() {
        let error = refusal(&format!(
            "[users.alice]\npassword_hash = \"{HASH}\"\n[users.alice]\n"
        ));
        assert_eq!(error.line(), Some(3));
        assert_eq!(error.user(), None);
    }

    #[test]
    fn contents_are_read_and_checked() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("users.toml");
        std::fs::write(&path, with_hash(HASH)).unwrap();
        let users = read_contents(&path).users(&path).unwrap();
        assert!(users.contains_key("alice"));
        std::fs::write(&path, with_hash("plain")).unwrap();
        assert!(read_contents(&path)
            .users(&path)
            .unwrap_err()
            .to_string()
            .starts_with(&path.display().to_string()));
    }

    #[test]
    fn unreadable_file_is_an_error_naming_it() {
        let folder = tempfile::tempdir().unwrap();
        let error = read_contents(folder.path())
            .users(folder.path())
            .unwrap_err();
        assert_eq!(error.path(), folder.path());
        assert!(error.message().starts_with("cannot read it"), "{error}");
    }

    #[test]
    fn file_that_is_not_utf8_is_an_error_with_its_line() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("users.toml");
        std::fs::write(&path, b"# ok\n# \xFF\n").unwrap();
        let error = read_contents(&path).users(&path).unwrap_err();
        assert_eq!(error.line(), Some(2));
        assert!(error.message().contains("UTF-8"), "{error}");
    }

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
        let change = set_password_hash(&path, "alice", HASH).unwrap();
        assert_eq!(change, PasswordChange::Created);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), with_hash(HASH));
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&folder.path().join("users.toml.lock")), 0o600);
    }

    #[test]
    fn set_password_hash_keeps_everything_it_does_not_touch() {
        let text = format!(
            "# people\n\n[users.bob]   # the boss\npassword_hash   =   \"{HASH}\"\n\n\
             # alice, set by hand\n[users.alice]\npassword_hash = \"{HASH}\"  # old\n"
        );
        let (_folder, path) = file_with(&text);
        assert_eq!(
            set_password_hash(&path, "alice", OTHER).unwrap(),
            PasswordChange::Changed
        );
        let expected = format!(
            "# people\n\n[users.bob]   # the boss\npassword_hash   =   \"{HASH}\"\n\n\
             # alice, set by hand\n[users.alice]\npassword_hash = \"{OTHER}\"  # old\n"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), expected);

        assert_eq!(
            set_password_hash(&path, "Алиса Б", OTHER).unwrap(),
            PasswordChange::Created
        );
        let grown = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            grown,
            format!("{expected}\n[users.\"Алиса Б\"]\npassword_hash = \"{OTHER}\"\n")
        );
        assert_eq!(parse_text(&grown).unwrap().len(), 3);
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
        assert!(remove_user(&path, "bob").unwrap());
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
        assert!(remove_user(&path, "alice").unwrap());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!(
                "# people\n\n\n[users.bob] # b\npassword_hash = \"{OTHER}\"\n\n# carol\n\
                 [users.carol]\npassword_hash = \"{OTHER}\"\n# the end\n"
            )
        );
        assert!(remove_user(&path, "carol").unwrap());
        assert!(remove_user(&path, "bob").unwrap());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "# people\n\n\n# the end\n"
        );
    }

    #[test]
    fn remove_user_that_is_absent_leaves_the_file_untouched() {
        let (_folder, path) = file_with(&with_hash(HASH));
        let before = std::fs::metadata(&path).unwrap();
        assert!(!remove_user(&path, "bob").unwrap());
        let after = std::fs::metadata(&path).unwrap();
        assert_eq!(
            (before.ino(), before.mtime_nsec()),
            (after.ino(), after.mtime_nsec())
        );

        let folder = tempfile::tempdir().unwrap();
        let missing = folder.path().join("users.toml");
        assert!(!remove_user(&missing, "bob").unwrap());
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
    fn contents_of_a_missing_file_hold_no_users_but_an_error() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("users.toml");
        let contents = read_contents(&path);
        assert_eq!(contents, Contents::Missing);
        assert!(!contents.is_blank());
        let error = contents.users(&path).unwrap_err();
        assert!(error.is_io());
        assert!(error.message().contains("does not exist"), "{error}");
    }

    #[test]
    fn contents_are_blank_only_when_nothing_but_whitespace() {
        assert!(Contents::Bytes(Vec::new()).is_blank());
        assert!(Contents::Bytes(b" \n\t\r\n".to_vec()).is_blank());
        assert!(!Contents::Bytes(b"[users]\n".to_vec()).is_blank());
        assert!(!Contents::Bytes(b"# nobody\n".to_vec()).is_blank());
    }

    #[test]
    fn removing_the_last_user_leaves_an_explicit_empty_table() {
        let (_folder, path) = file_with(&with_hash(HASH));
        assert!(remove_user(&path, "alice").unwrap());
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
        assert!(remove_user(&hop, "alice").unwrap());
        for symlink in [&link, &hop] {
            assert!(std::fs::symlink_metadata(symlink).unwrap().is_symlink());
        }
        let users = read_contents(&target).users(&target).unwrap();
        assert_eq!(users.keys().collect::<Vec<_>>(), ["bob"]);
        assert!(elsewhere.join("real.toml.lock").exists());
        assert!(!folder.path().join("users.toml.lock").exists());
    }

    #[test]
    fn debug_output_never_shows_the_bytes() {
        let contents = Contents::Bytes(with_hash(HASH).into_bytes());
        let shown = format!("{contents:?}");
        assert_eq!(shown, format!("Bytes({} bytes)", with_hash(HASH).len()));
    }
}
