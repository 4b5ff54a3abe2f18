//! Reading the users file of SPEC §5: one `[users.NAME]` table per user holding a bcrypt
//! `password_hash`. A file is checked whole, so a bad one never yields a partial user set.
//! Errors name the file, the line, the user and the problem, and never show a hash.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tether_actors::credentials::check_name;
use tether_actors::users::{PasswordHash, UserSet};
use toml::Spanned;

/// What [`load`] found at the users file's path.
pub enum UsersFile {
    /// No file: no users yet (the first write creates it).
    Missing,
    /// The file's users, all checked.
    Loaded(UserSet),
}

impl fmt::Debug for UsersFile {
    /// Shows user names only, never their hashes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => f.write_str("Missing"),
            Self::Loaded(users) => {
                let mut names: Vec<&str> = users.keys().map(String::as_str).collect();
                names.sort_unstable();
                f.debug_tuple("Loaded").field(&names).finish()
            }
        }
    }
}

/// Reads and checks the users file at `path`; a file that does not exist is
/// [`UsersFile::Missing`], not an error.
pub fn load(path: &Path) -> Result<UsersFile, UsersFileError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok(UsersFile::Missing)
        }
        Err(error) => {
            return Err(UsersFileError::new(
                path,
                format!("cannot read it: {error}"),
            ))
        }
    };
    let text = String::from_utf8(bytes).map_err(|error| {
        let valid = &error.as_bytes()[..error.utf8_error().valid_up_to()];
        let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
        UsersFileError {
            line: Some(line),
            ..UsersFileError::new(path, "not valid UTF-8".to_string())
        }
    })?;
    parse(&text, path).map(UsersFile::Loaded)
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
}

impl UsersFileError {
    fn new(file: &Path, message: String) -> Self {
        Self {
            file: file.to_path_buf(),
            line: None,
            user: None,
            message,
        }
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
/// `$2a$`, `$2b$`, `$2x$` or `$2y$`, a two-digit cost 04–31, `$`, then 53 characters of
/// `./A-Za-z0-9` in bcrypt's canonical base64. The reason never quotes the hash.
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
            .is_ok_and(|cost| (4..=31).contains(&cost));
    if !cost_in_range {
        return Err("the cost must be two digits from 04 to 31".to_string());
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
            (HASH.replace("$04$", "$03$"), "from 04 to 31"),
            (HASH.replace("$04$", "$32$"), "from 04 to 31"),
            (HASH.replace("$04$", "$+4$"), "from 04 to 31"),
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
    fn missing_file_means_no_users_yet() {
        let folder = tempfile::tempdir().unwrap();
        let loaded = load(&folder.path().join("users.toml")).unwrap();
        assert!(matches!(loaded, UsersFile::Missing));
    }

    #[test]
    fn load_reads_and_checks_the_file() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("users.toml");
        std::fs::write(&path, with_hash(HASH)).unwrap();
        match load(&path).unwrap() {
            UsersFile::Loaded(users) => assert!(users.contains_key("alice")),
            UsersFile::Missing => panic!("file not found"),
        }
        std::fs::write(&path, with_hash("plain")).unwrap();
        assert!(load(&path)
            .unwrap_err()
            .to_string()
            .starts_with(&path.display().to_string()));
    }

    #[test]
    fn unreadable_file_is_an_error_naming_it() {
        let folder = tempfile::tempdir().unwrap();
        let error = load(folder.path()).unwrap_err();
        assert_eq!(error.path(), folder.path());
        assert!(error.message().starts_with("cannot read it"), "{error}");
    }

    #[test]
    fn file_that_is_not_utf8_is_an_error_with_its_line() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("users.toml");
        std::fs::write(&path, b"# ok\n# \xFF\n").unwrap();
        let error = load(&path).unwrap_err();
        assert_eq!(error.line(), Some(2));
        assert!(error.message().contains("UTF-8"), "{error}");
    }

    #[test]
    fn debug_output_shows_names_but_never_hashes() {
        let users = parse_text(&with_hash(HASH)).unwrap();
        let shown = format!("{:?}", UsersFile::Loaded(users));
        assert!(
            shown.contains("alice") && !shown.contains(&HASH[7..]),
            "{shown}"
        );
    }
}
