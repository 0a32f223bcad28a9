//! Bearer tokens: the server keeps a file of token *hashes*, one client per line, and compares in constant time.
//!
//! File format (`cryptotl server token` appends to it):
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
        if entries.is_empty() {
            return Err("no tokens (add one with `cryptotl server token --name <client> --tokens <file>`)".into());
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
