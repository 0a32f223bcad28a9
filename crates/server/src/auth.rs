//! Bearer tokens: the server keeps a file of token *hashes*, one client per line, and compares in constant time.
//!
//! File format ([`issue`], which `cryptotl server token` calls, appends to it):
//! ```text
//! # name   sha256 of the token (hex)
//! alice    3f0a...
//! ```
//! A client sends `Authorization: Bearer <token>`. The server hashes what it gets and compares the hash with
//! every line without stopping early ([`subtle`]), so timing says nothing about which bytes matched. A key a
//! client uploads is bound to its [`ClientId`]; another client's token cannot use it.
//!
//! ```
//! use cryptotl_server::auth::Tokens;
//! let token = "secret-token-of-alice";
//! let tokens = Tokens::parse(&Tokens::line("alice", token)).unwrap();
//! assert_eq!(tokens.authenticate(token).unwrap().name, "alice");
//! assert!(tokens.authenticate("guess").is_none());
//! ```

use std::path::Path;

use subtle::ConstantTimeEq as _;

use crate::artifact::{hex, sha256_hex};
use crate::error::{HeError, Result};

/// An authenticated client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientId {
    /// The name in the token file (for logs).
    pub name: String,
    /// SHA-256 of the client's token (hex): what its keys are bound to.
    pub token_sha256: String,
}

/// The server's token file, parsed.
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    entries: Vec<(String, [u8; 32])>,
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Tokens {
    /// Parse a token file's text.
    ///
    /// ```
    /// use cryptotl_server::auth::Tokens;
    /// let t = Tokens::parse(&format!("# comment\n{}", Tokens::line("bob", "t0k3n"))).unwrap();
    /// assert_eq!(t.authenticate("t0k3n").unwrap().name, "bob");
    /// assert!(Tokens::parse("bob not-a-hash").is_err());
    /// ```
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let tokens = Self::parse_lines(text)?;
        if tokens.entries.is_empty() {
            return Err("no tokens (add one with `cryptotl server token --name <client> --tokens <file>`)".into());
        }
        Ok(tokens)
    }

    /// [`Self::parse`], taking a file of no tokens (every client's line removed) as no clients.
    fn parse_lines(text: &str) -> std::result::Result<Self, String> {
        let mut entries = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(name), Some(hash), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(format!("line {}: expected `<name> <sha256 hex of the token>`", n + 1));
            };
            let hash = unhex(hash).ok_or_else(|| format!("line {}: `{hash}` is not 64 hex digits", n + 1))?;
            entries.push((name.to_string(), hash));
        }
        Ok(Self { entries })
    }

    /// Read and parse a token file.
    ///
    /// ```
    /// use cryptotl_server::auth::Tokens;
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("tokens");
    /// std::fs::write(&path, Tokens::line("carol", "abc")).unwrap();
    /// assert!(Tokens::load(&path).unwrap().authenticate("abc").is_some());
    /// assert!(Tokens::load(&dir.path().join("missing")).is_err());
    /// ```
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| HeError::file(path, e))?;
        Self::parse(&text).map_err(|e| HeError::file(path, e))
    }

    /// The token file line for client `name` holding `token`.
    ///
    /// ```
    /// let line = cryptotl_server::auth::Tokens::line("alice", "secret");
    /// assert!(line.starts_with("alice ") && !line.contains("secret"));
    /// ```
    pub fn line(name: &str, token: &str) -> String {
        format!("{name} {}\n", sha256_hex(token.as_bytes()))
    }

    /// A fresh random token (256 bits from the OS, hex).
    ///
    /// ```
    /// use cryptotl_server::auth::Tokens;
    /// let (a, b) = (Tokens::generate().unwrap(), Tokens::generate().unwrap());
    /// assert_eq!(a.len(), 64);
    /// assert_ne!(a, b);
    /// ```
    pub fn generate() -> Result<String> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| HeError::File { path: "<OS random source>".into(), message: e.to_string() })?;
        Ok(hex(&bytes))
    }

    /// The client holding `token`, if any (constant time in the token's bytes).
    ///
    /// ```
    /// use cryptotl_server::auth::Tokens;
    /// let t = Tokens::parse(&Tokens::line("dave", "d-token")).unwrap();
    /// let id = t.authenticate("d-token").unwrap();
    /// assert_eq!(id.token_sha256, cryptotl_server::artifact::sha256_hex(b"d-token"));
    /// assert!(t.authenticate("d-token ").is_none());
    /// ```
    pub fn authenticate(&self, token: &str) -> Option<ClientId> {
        let hash: [u8; 32] = sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(token.as_bytes())).into();
        let mut found = None;
        for (name, h) in &self.entries {
            if bool::from(h.ct_eq(&hash)) {
                found = Some(name);
            }
        }
        found.map(|name| ClientId { name: name.clone(), token_sha256: hex(&hash) })
    }
}

/// What tells one version of a token file from another: its modification time, length and (on Unix) inode, which an
/// atomic rewrite such as [`issue`]'s changes. `None`: it cannot be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<std::time::SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let inode = 0;
    Some(Stamp { modified: m.modified().ok(), len: m.len(), inode })
}

/// The tokens a server checks requests against: a token file, read again whenever it changes, so that a client
/// issued a token ([`issue`]) is served at once and one whose line is removed is refused from its next request, with
/// no restart. A version that cannot be read or parsed (a half-edited file, a file removed) is not taken: the server
/// keeps the clients it had and says so in a warning. Or a fixed set ([`From<Tokens>`]).
///
/// ```
/// use cryptotl_server::auth::{TokenFile, Tokens, issue};
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("tokens");
/// let alice = issue(&path, "alice").unwrap();
/// let tokens = TokenFile::watch(&path).unwrap();
/// assert_eq!(tokens.authenticate(&alice).unwrap().name, "alice");
/// let bob = issue(&path, "bob").unwrap();
/// assert_eq!(tokens.authenticate(&bob).unwrap().name, "bob"); // no restart
/// // Alice's line removed: refused.
/// let kept: String = std::fs::read_to_string(&path).unwrap().lines().filter(|l| !l.starts_with("alice")).map(|l| format!("{l}\n")).collect();
/// std::fs::write(&path, kept).unwrap();
/// assert!(tokens.authenticate(&alice).is_none());
/// // A file that no longer parses is not taken: the clients stay as they were.
/// std::fs::write(&path, "bob not-a-hash\n").unwrap();
/// assert_eq!(tokens.authenticate(&bob).unwrap().name, "bob");
/// ```
#[derive(Debug)]
pub struct TokenFile {
    /// The file, or none for a fixed set.
    path: Option<std::path::PathBuf>,
    /// The tokens in use, with the stamp of the file version they were read from (or last tried).
    current: std::sync::RwLock<(Tokens, Option<Stamp>)>,
}

impl TokenFile {
    /// Read the token file at `path` (refused when it holds no token: a server nobody can use), to be read again
    /// whenever it changes.
    pub fn watch(path: &Path) -> Result<Self> {
        let stamp = stamp(path);
        let tokens = Tokens::load(path)?;
        Ok(Self { path: Some(path.to_path_buf()), current: std::sync::RwLock::new((tokens, stamp)) })
    }

    /// The client holding `token`, if any, in the file's current version ([`Tokens::authenticate`]).
    pub fn authenticate(&self, token: &str) -> Option<ClientId> {
        self.refresh();
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).0.authenticate(token)
    }

    /// Read the file again if it changed since it was last read (or tried).
    fn refresh(&self) {
        let Some(path) = &self.path else { return };
        // The stamp before the read: a change in between is read again at the next request.
        let now = stamp(path);
        if self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).1 == now {
            return;
        }
        let mut current = self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.1 == now {
            return;
        }
        match std::fs::read_to_string(path).map_err(|e| e.to_string()).and_then(|text| Tokens::parse_lines(&text)) {
            Ok(tokens) => {
                tracing::info!(path = %path.display(), clients = tokens.entries.len(), "token file changed: read again");
                *current = (tokens, now);
            }
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "token file changed but cannot be used: keeping the clients it had");
                current.1 = now;
            }
        }
    }
}

impl From<Tokens> for TokenFile {
    fn from(tokens: Tokens) -> Self {
        Self { path: None, current: std::sync::RwLock::new((tokens, None)) }
    }
}

/// The first line of a token file [`issue`] creates.
const HEADER: &str = "# cryptotl bearer tokens: <client name> <sha256 of the token>\n";

/// Why [`issue`] (or [`revoke`]) wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// A client name other than letters, digits, `-`, `_` and `.`.
    #[error("`{0}`: use letters, digits, `-`, `_`, `.`")]
    BadName(String),
    /// The path is not a token file and cannot become one: another file (a config given by mistake), a folder, a
    /// path in a missing folder.
    #[error("{path}: {message}; nothing written")]
    NotATokenFile {
        /// The path given.
        path: String,
        /// What it is instead.
        message: String,
    },
    /// The file already holds a token for this name.
    #[error("a client named `{0}` already has a token")]
    Taken(String),
    /// The file holds no token for this name (to revoke).
    #[error("no client named `{0}` has a token in this file")]
    Unknown(String),
    /// The file or its lock could not be read or written.
    #[error(transparent)]
    File(#[from] HeError),
}

/// Issue a fresh token for client `name` into the token file at `path` (created, owner-only, if missing) and
/// return it: the file keeps only its hash, so this is the one time it exists in the clear.
///
/// The file is rewritten whole (atomically), so one that is not a token file is refused untouched ([`IssueError`]);
/// one of comments only takes the token. Issuances into one file take turns under an exclusive lock on
/// `<file>.lock` beside it, so that parallel ones all land (each would otherwise rewrite the file it read, dropping
/// the others' lines).
///
/// ```
/// use cryptotl_server::auth::{IssueError, Tokens, issue};
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("tokens");
/// let token = issue(&path, "erin").unwrap();
/// assert_eq!(Tokens::load(&path).unwrap().authenticate(&token).unwrap().name, "erin");
/// assert!(matches!(issue(&path, "erin"), Err(IssueError::Taken(_))));
/// assert!(matches!(issue(&path, "no spaces"), Err(IssueError::BadName(_))));
/// let config = dir.path().join("run.toml");
/// std::fs::write(&config, "seed = 42\n").unwrap();
/// assert!(matches!(issue(&config, "frank"), Err(IssueError::NotATokenFile { .. })));
/// assert_eq!(std::fs::read_to_string(&config).unwrap(), "seed = 42\n");
/// ```
pub fn issue(path: &Path, name: &str) -> std::result::Result<String, IssueError> {
    let token = Tokens::generate()?;
    let line = Tokens::line(name, &token);
    rewrite(path, name, |text| {
        if text.lines().any(|l| l.split_whitespace().next() == Some(name)) {
            return Err(IssueError::Taken(name.into()));
        }
        let mut text = text.to_string();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&line);
        Ok(text)
    })?;
    Ok(token)
}

/// Remove client `name`'s token from the token file at `path`, under the same lock as [`issue`]: a server following
/// the file ([`TokenFile`]) refuses it from its next request. Comments and the other clients' lines are kept.
///
/// ```
/// use cryptotl_server::auth::{IssueError, TokenFile, issue, revoke};
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("tokens");
/// let (gina, hal) = (issue(&path, "gina").unwrap(), issue(&path, "hal").unwrap());
/// let tokens = TokenFile::watch(&path).unwrap();
/// revoke(&path, "gina").unwrap();
/// assert!(tokens.authenticate(&gina).is_none());
/// assert_eq!(tokens.authenticate(&hal).unwrap().name, "hal");
/// assert!(matches!(revoke(&path, "gina"), Err(IssueError::Unknown(_))));
/// ```
pub fn revoke(path: &Path, name: &str) -> std::result::Result<(), IssueError> {
    rewrite(path, name, |text| {
        let kept: String = text.lines().filter(|l| l.split_whitespace().next() != Some(name)).map(|l| format!("{l}\n")).collect();
        if kept.lines().count() == text.lines().count() {
            return Err(IssueError::Unknown(name.into()));
        }
        Ok(kept)
    })
}

/// Check `name` and the token file at `path`, then, under an exclusive lock on `<file>.lock` beside it, write what
/// `change` makes of its text (a missing file reads as [`HEADER`]), atomically and owner-only. `change` runs twice:
/// first as a check before the lock (what it makes is dropped), then under the lock on the file as it is then.
fn rewrite(path: &Path, name: &str, change: impl Fn(&str) -> std::result::Result<String, IssueError>) -> std::result::Result<(), IssueError> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(IssueError::BadName(name.into()));
    }
    let refused = |message: String| IssueError::NotATokenFile { path: path.display().to_string(), message };
    if path.is_dir() {
        return Err(refused("a folder, not a token file".into()));
    }
    let folder = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let Some(file_name) = path.file_name() else {
        return Err(refused("not a file name".into()));
    };
    if !folder.is_dir() {
        return Err(refused(format!("its folder {} does not exist", folder.display())));
    }
    // The file as a token file (a missing one as a new one), checked before the lock is taken, so that a file given
    // by mistake gets no lock file beside it, and again under the lock, where it counts.
    let read = || -> std::result::Result<String, IssueError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HEADER.into(),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => return Err(refused("not a token file (not UTF-8 text)".into())),
            Err(e) => return Err(HeError::file(path, e).into()),
        };
        Tokens::parse_lines(&text).map_err(|e| refused(format!("not a token file ({e})")))?;
        Ok(text)
    };
    change(&read()?)?;
    let lock_path = folder.join(format!("{}.lock", file_name.to_string_lossy()));
    let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(|e| HeError::file(&lock_path, e))?;
    lock.lock().map_err(|e| HeError::file(&lock_path, e))?;
    let text = change(&read()?)?;
    crate::atomic::write(path, text.as_bytes(), true).map_err(|e| HeError::file(path, e))?;
    drop(lock);
    Ok(())
}
