//! Reading and checking the users file of SPEC §5: one `[users.NAME]` table per user
//! holding a bcrypt `password_hash`. A file is checked whole, so a bad one never yields a
//! partial user set. Errors name the file, the line, the user and the problem, and never
//! show a hash.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tether_actors::auth::credentials::check_name;
use tether_actors::auth::password::MAX_STORED_COST;
use tether_actors::auth::user_store::{PasswordHash, UserSet};
use toml::Spanned;

use crate::toml_error::{line_and_column, Located};

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

/// The bytes of a users file as text; an error names the line of the first invalid byte.
pub(super) fn decode(bytes: &[u8], path: &Path) -> Result<String, UsersFileError> {
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
    pub(super) fn new(file: &Path, message: String) -> Self {
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

    /// The file is invalid at `line` (when known).
    pub(super) fn at_line(file: &Path, line: Option<usize>, message: String) -> Self {
        Self {
            line,
            ..Self::new(file, message)
        }
    }

    /// An invalid name or hash given for `user`.
    pub(super) fn invalid_input(file: &Path, user: &str, message: String) -> Self {
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
        let user = self.user.as_ref().map(|user| format!("user {user:?}"));
        let located = Located {
            file: &self.file,
            line: self.line,
            column: None,
            key: user.as_ref().map(|user| user as &dyn fmt::Display),
            message: &self.message,
        };
        located.fmt(f)
    }
}

impl std::error::Error for UsersFileError {}

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
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    line_and_column(text, offset).0
}

/// Why `hash` is not a bcrypt hash that logins can be checked against, if it is not:
/// `$2a$`, `$2b$`, `$2x$` or `$2y$`, a two-digit cost from 04 to [`MAX_STORED_COST`] (a
/// higher one would hold a bcrypt thread for minutes to days per login), `$`, then 53
/// characters of `./A-Za-z0-9` in bcrypt's canonical base64. The reason never quotes the
/// hash.
pub(crate) fn check_bcrypt_hash(hash: &str) -> Result<(), String> {
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
pub(in crate::users) mod tests {
    use super::*;

    /// A real bcrypt hash (cost 4) of "pw".
    pub(in crate::users) const HASH: &str =
        "$2b$04$Ntrg9Fabzc6juPOTnPFLh.5e6tYskaiyQb/inXTn0vjmZfstib9Oy";

    fn parse_text(text: &str) -> Result<UserSet, UsersFileError> {
        parse(text, Path::new("/etc/tether/users.toml"))
    }

    fn refusal(text: &str) -> UsersFileError {
        match parse_text(text) {
            Ok(users) => panic!("accepted {text:?}: {:?}", users.keys()),
            Err(error) => error,
        }
    }

    pub(in crate::users) fn with_hash(hash: &str) -> String {
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
    fn debug_output_never_shows_the_bytes() {
        let contents = Contents::Bytes(with_hash(HASH).into_bytes());
        let shown = format!("{contents:?}");
        assert_eq!(shown, format!("Bytes({} bytes)", with_hash(HASH).len()));
    }
}
