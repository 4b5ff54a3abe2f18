//! Admission after a restart (SPEC §5): a successful bcrypt check leaves a *verifier* for
//! the user, HMAC-SHA-256 under a secret key of the name, the password and the stored hash
//! checked; a later login whose name, password and the user's current stored hash give a
//! kept verifier is admitted without bcrypt. Anything else — a wrong password above all —
//! takes the bcrypt path, so answer times tell a guesser nothing new.
//!
//! The MAC's input is length-prefixed (`len ‖ name ‖ len ‖ password ‖ len ‖ hash`, each
//! length a 4-byte big-endian count, behind a fixed label), so no two (name, password,
//! hash) triples share an input. The stored hash is part of it, so a password change or
//! removal makes the user's verifiers useless at once, wherever they are kept.
//!
//! What is kept is the MAC itself, one per user (a user has one password at a time): with
//! the key unknown it is a pseudo-random value that no password guess can be tested
//! against, so a stolen store gives nothing to brute-force (SECURITY.md). Comparisons are
//! constant-time.
//!
//! [`VerifierStore`] is where verifiers are kept: [`MemoryVerifiers`] on a node alone (the
//! application saves it to a file), a Redis store in a cluster (`tether-cluster`). The
//! checks run on the password-check threads ([`crate::auth::password`]), never on an event loop.

use ring::hmac;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use subtle::ConstantTimeEq;

/// The fewest bytes a verifier key may have.
pub const MIN_KEY_BYTES: usize = 32;

/// The label before every verifier's input: a key used for anything else gives other MACs.
const TAG_LABEL: &[u8] = b"tether verifier v1\0";

/// The label of the key's identifier (see [`VerifierKey::id`]).
const ID_LABEL: &[u8] = b"tether verifier key id v1\0";

/// The secret key of the verifiers (`auth.verifier_key_file`).
pub struct VerifierKey {
    key: hmac::Key,
    id: String,
}

impl std::fmt::Debug for VerifierKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VerifierKey({})", self.id)
    }
}

/// A key with fewer than [`MIN_KEY_BYTES`] bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyTooShort(pub usize);

impl std::fmt::Display for KeyTooShort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "holds {} byte(s); a verifier key needs at least {MIN_KEY_BYTES} random bytes \
             (`tether keygen PATH` writes one)",
            self.0
        )
    }
}

impl std::error::Error for KeyTooShort {}

impl VerifierKey {
    /// A key of `bytes` (at least [`MIN_KEY_BYTES`] of them).
    pub fn new(bytes: &[u8]) -> Result<Self, KeyTooShort> {
        if bytes.len() < MIN_KEY_BYTES {
            return Err(KeyTooShort(bytes.len()));
        }
        let key = hmac::Key::new(hmac::HMAC_SHA256, bytes);
        let id = hex(&hmac::sign(&key, ID_LABEL).as_ref()[..8]);
        Ok(Self { key, id })
    }

    /// A short public name of the key (16 hexadecimal digits of a MAC under it): a saved
    /// store made under another key is recognised, and nothing about the key follows.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The verifier of `password` for `user` whose stored hash is `hash`.
    pub fn tag(&self, user: &str, password: &[u8], hash: &str) -> Tag {
        let mut context = hmac::Context::with_key(&self.key);
        context.update(TAG_LABEL);
        for part in [user.as_bytes(), password, hash.as_bytes()] {
            // Every part is far below 4 GiB (a name ≤ 128 bytes, a password ≤ 72 as queued).
            let length = u32::try_from(part.len()).unwrap_or(u32::MAX);
            context.update(&length.to_be_bytes());
            context.update(part);
        }
        let mut tag = [0; TAG_BYTES];
        tag.copy_from_slice(context.sign().as_ref());
        Tag(tag)
    }
}

/// [`MIN_KEY_BYTES`] fresh random bytes from the operating system, for a new key file;
/// `None` if it has none to give.
pub fn random_key() -> Option<[u8; MIN_KEY_BYTES]> {
    use ring::rand::SecureRandom;
    let mut bytes = [0; MIN_KEY_BYTES];
    ring::rand::SystemRandom::new().fill(&mut bytes).ok()?;
    Some(bytes)
}

/// Bytes of a verifier (an HMAC-SHA-256).
pub const TAG_BYTES: usize = 32;

/// One verifier.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Tag([u8; TAG_BYTES]);

impl std::fmt::Debug for Tag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tag(…)")
    }
}

impl Tag {
    /// Whether `other` is the same verifier, compared in constant time.
    pub fn matches(&self, other: &[u8]) -> bool {
        other.len() == TAG_BYTES && bool::from(self.0.ct_eq(other))
    }

    /// The verifier's bytes.
    pub fn as_bytes(&self) -> &[u8; TAG_BYTES] {
        &self.0
    }

    /// A verifier read back from a store; `None` unless `bytes` is one.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }
}

/// Where verifiers are kept. The password-check threads call it (never an event loop):
/// [`VerifierStore::holds`] may wait briefly (a Redis round trip) and must answer `false`
/// when it cannot tell — the login then pays bcrypt, never is admitted on a guess.
pub trait VerifierStore: Send + Sync + 'static {
    /// Whether `tag` is the verifier kept for `user` (constant-time); a hit counts as a use
    /// (it keeps the verifier for another TTL).
    fn holds(&self, user: &str, tag: &Tag) -> bool;
    /// Keeps `tag` as `user`'s verifier, replacing any other.
    fn keep(&self, user: &str, tag: Tag);
    /// Forgets `user`'s verifier (the password changed or the user was removed).
    fn forget(&self, user: &str);

    /// [`VerifierStore::holds`] answered at once, without waiting for anything (an event
    /// loop may ask): `None` when the store cannot tell without waiting (the check then
    /// goes to the password-check threads). By default `None`.
    fn holds_now(&self, user: &str, tag: &Tag) -> Option<bool> {
        let _ = (user, tag);
        None
    }
}

/// The key and the store: what the password checks need to admit without bcrypt.
#[derive(Clone)]
pub struct Verifiers {
    key: Arc<VerifierKey>,
    store: Arc<dyn VerifierStore>,
}

impl std::fmt::Debug for Verifiers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifiers")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Verifiers {
    /// Verifiers under `key`, kept in `store`.
    pub fn new(key: Arc<VerifierKey>, store: Arc<dyn VerifierStore>) -> Self {
        Self { key, store }
    }

    /// The key.
    pub fn key(&self) -> &VerifierKey {
        &self.key
    }

    /// The store.
    pub fn store(&self) -> &dyn VerifierStore {
        &*self.store
    }
}

/// One user's verifier in memory.
#[derive(Debug, Clone, Copy)]
struct Kept {
    tag: Tag,
    /// When it was last made or used, in seconds since 1970.
    used: u64,
}

/// The verifiers of a node alone, in memory, each forgotten once unused for the TTL. The
/// application saves them ([`MemoryVerifiers::encode`]) and reads them back at start
/// ([`MemoryVerifiers::load`]).
#[derive(Debug)]
pub struct MemoryVerifiers {
    ttl: Duration,
    kept: Mutex<HashMap<Box<str>, Kept>>,
    /// Something changed since the last [`MemoryVerifiers::encode`].
    changed: AtomicBool,
}

/// The first word of a saved store.
const FILE_MAGIC: &str = "tether-verifiers 1";

impl MemoryVerifiers {
    /// An empty store forgetting verifiers unused for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            kept: Mutex::new(HashMap::new()),
            changed: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Box<str>, Kept>> {
        match self.kept.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// How many verifiers are kept (expired ones included until the next save).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn expired(&self, kept: &Kept, now: u64) -> bool {
        now.saturating_sub(kept.used) >= self.ttl.as_secs()
    }

    /// The store as a file under key `key_id`, its expired verifiers dropped first; `None`
    /// when nothing changed since the last call (no need to write). One line
    /// `tether-verifiers 1 KEY-ID`, then one line per user: the name and the verifier in
    /// hexadecimal and the last use in seconds since 1970, separated by spaces.
    pub fn encode(&self, key_id: &str) -> Option<Vec<u8>> {
        if !self.changed.swap(false, Ordering::Relaxed) {
            return None;
        }
        let now = unix_now();
        let mut kept = self.lock();
        kept.retain(|_, entry| !self.expired(entry, now));
        let mut text = String::with_capacity(40 + kept.len() * 110);
        text.push_str(FILE_MAGIC);
        text.push(' ');
        text.push_str(key_id);
        text.push('\n');
        for (user, entry) in kept.iter() {
            text.push_str(&hex(user.as_bytes()));
            text.push(' ');
            text.push_str(&hex(entry.tag.as_bytes()));
            text.push(' ');
            text.push_str(&entry.used.to_string());
            text.push('\n');
        }
        Some(text.into_bytes())
    }

    /// Marks the store changed, so the next [`MemoryVerifiers::encode`] writes it.
    pub fn mark_changed(&self) {
        self.changed.store(true, Ordering::Relaxed);
    }

    /// Reads a store [`MemoryVerifiers::encode`] wrote under key `key_id` and keeps its
    /// unexpired verifiers; answers how many. A file of another key, or one that does not
    /// read whole, changes nothing and says why.
    pub fn load(&self, bytes: &[u8], key_id: &str) -> Result<usize, LoadError> {
        let text = std::str::from_utf8(bytes).map_err(|_| LoadError::Corrupt(1))?;
        let mut lines = text.lines();
        let header = lines.next().ok_or(LoadError::Corrupt(1))?;
        let found = header
            .strip_prefix(FILE_MAGIC)
            .and_then(|rest| rest.strip_prefix(' '))
            .ok_or(LoadError::Corrupt(1))?;
        if found != key_id {
            return Err(LoadError::OtherKey);
        }
        let now = unix_now();
        let mut read = Vec::new();
        for (index, line) in lines.enumerate() {
            let corrupt = LoadError::Corrupt(index + 2);
            let mut fields = line.split(' ');
            let (Some(user), Some(tag), Some(used), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return Err(corrupt);
            };
            let user = unhex(user)
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or(corrupt)?;
            let tag = unhex(tag)
                .and_then(|bytes| Tag::from_bytes(&bytes))
                .ok_or(corrupt)?;
            let used: u64 = used.parse().map_err(|_| corrupt)?;
            read.push((user.into_boxed_str(), Kept { tag, used }));
        }
        let mut kept = self.lock();
        let mut loaded = 0;
        for (user, entry) in read {
            if !self.expired(&entry, now) {
                kept.insert(user, entry);
                loaded += 1;
            }
        }
        Ok(loaded)
    }
}

/// Why a saved store was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadError {
    /// It was made under another key (rotated): its verifiers are useless.
    OtherKey,
    /// It does not read as a store; the line where it stopped.
    Corrupt(usize),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::OtherKey => f.write_str("it was made under another verifier key"),
            Self::Corrupt(line) => write!(f, "line {line} is not a verifier record"),
        }
    }
}

impl std::error::Error for LoadError {}

impl VerifierStore for MemoryVerifiers {
    fn holds(&self, user: &str, tag: &Tag) -> bool {
        let now = unix_now();
        let mut kept = self.lock();
        let Some(entry) = kept.get_mut(user) else {
            return false;
        };
        if self.expired(entry, now) {
            kept.remove(user);
            self.changed.store(true, Ordering::Relaxed);
            return false;
        }
        let hit = tag.matches(entry.tag.as_bytes());
        if hit {
            entry.used = now;
            self.changed.store(true, Ordering::Relaxed);
        }
        hit
    }

    fn keep(&self, user: &str, tag: Tag) {
        let used = unix_now();
        self.lock().insert(Box::from(user), Kept { tag, used });
        self.changed.store(true, Ordering::Relaxed);
    }

    fn forget(&self, user: &str) {
        if self.lock().remove(user).is_some() {
            self.changed.store(true, Ordering::Relaxed);
        }
    }

    /// In memory: answered at once (a hash-map look-up under a lock held for that alone).
    fn holds_now(&self, user: &str, tag: &Tag) -> Option<bool> {
        Some(self.holds(user, tag))
    }
}

/// Seconds since 1970 now.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// `bytes` in lowercase hexadecimal.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    out
}

/// The bytes of lowercase or uppercase hexadecimal `text`.
fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let digit = |byte: u8| char::from(byte).to_digit(16);
    text.as_bytes()
        .chunks(2)
        .map(|pair| u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> VerifierKey {
        VerifierKey::new(&[7; 32]).expect("long enough")
    }

    #[test]
    fn a_short_key_is_refused() {
        assert_eq!(VerifierKey::new(&[1; 31]).err(), Some(KeyTooShort(31)));
    }

    #[test]
    fn the_tag_binds_name_password_and_hash_unambiguously() {
        let key = key();
        let tag = key.tag("ab", b"c", "$2b$04$x");
        assert_eq!(tag, key.tag("ab", b"c", "$2b$04$x"));
        // Moving a byte between parts changes the tag (length prefixes).
        assert_ne!(tag, key.tag("a", b"bc", "$2b$04$x"));
        assert_ne!(tag, key.tag("ab", b"c$", "2b$04$x"));
        assert_ne!(tag, key.tag("ab", b"c", "$2b$04$y"));
        assert_ne!(tag, key.tag("ab", b"d", "$2b$04$x"));
        let other = VerifierKey::new(&[8; 32]).expect("long enough");
        assert_ne!(tag, other.tag("ab", b"c", "$2b$04$x"));
        assert_ne!(key.id(), other.id());
        assert_eq!(key.id().len(), 16);
    }

    #[test]
    fn a_kept_verifier_is_held_until_forgotten() {
        let key = key();
        let store = MemoryVerifiers::new(Duration::from_secs(60));
        let tag = key.tag("alice", b"pw", "h1");
        assert!(!store.holds("alice", &tag));
        store.keep("alice", tag);
        assert!(store.holds("alice", &tag));
        assert!(!store.holds("alice", &key.tag("alice", b"wrong", "h1")));
        assert!(!store.holds("bob", &tag));
        store.forget("alice");
        assert!(!store.holds("alice", &tag));
    }

    #[test]
    fn an_expired_verifier_is_not_held() {
        let key = key();
        let store = MemoryVerifiers::new(Duration::ZERO);
        let tag = key.tag("alice", b"pw", "h1");
        store.keep("alice", tag);
        assert!(!store.holds("alice", &tag));
        assert!(store.is_empty());
    }

    #[test]
    fn a_store_reads_back_what_it_wrote_under_its_key_only() {
        let key = key();
        let store = MemoryVerifiers::new(Duration::from_secs(60));
        let tag = key.tag("al ice", b"pw", "h1");
        store.keep("al ice", tag);
        let text = store.encode(key.id()).expect("changed");
        assert!(store.encode(key.id()).is_none(), "nothing changed since");
        let again = MemoryVerifiers::new(Duration::from_secs(60));
        assert_eq!(again.load(&text, key.id()), Ok(1));
        assert!(again.holds("al ice", &tag));
        let other = VerifierKey::new(&[9; 40]).expect("long enough");
        let elsewhere = MemoryVerifiers::new(Duration::from_secs(60));
        assert_eq!(elsewhere.load(&text, other.id()), Err(LoadError::OtherKey));
        let mut broken = text.clone();
        broken.truncate(text.len() - 5);
        broken.extend_from_slice(b"x y\n");
        assert_eq!(
            elsewhere.load(&broken, key.id()),
            Err(LoadError::Corrupt(2))
        );
        assert_eq!(
            elsewhere.load(b"garbage", key.id()),
            Err(LoadError::Corrupt(1))
        );
        assert!(elsewhere.is_empty());
    }
}
