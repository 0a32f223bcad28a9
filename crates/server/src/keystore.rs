//! The server's store of clients' evaluation keys: content-addressed (a key's id is the SHA-256 of its bytes),
//! each bound to the client that uploaded it, bounded in bytes with least-recently-used eviction.
//!
//! On disk ([`KeyStore::open`]) the store is a folder of `<id>.key` and `<id>.owner` files, written atomically
//! (temporary file, fsync, rename): it survives a restart, and several replicas can share one folder (a shared
//! volume), since every write is a whole-file rename and a key's bytes never change under its id. Use marks a key
//! recently used by its file's modification time. [`KeyStore::in_memory`] is the same store without files, for
//! the one-process simulation.
//!
//! ```
//! use cryptotl_server::keystore::{KeyStore, StoreError};
//! let store = KeyStore::in_memory(1 << 20);
//! let id = store.put("alice", b"key bytes").unwrap();
//! assert_eq!(&*store.get("alice", &id).unwrap(), b"key bytes");
//! assert!(matches!(store.get("bob", &id), Err(StoreError::Forbidden)));
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::artifact::{sha256_hex, write_atomic};
use crate::error::HeError;

/// Why the store refused.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No key with this id (never uploaded, or evicted): upload it again.
    #[error("no evaluation key with this id (never uploaded or evicted): upload it again")]
    NotFound,
    /// The key was uploaded by another client.
    #[error("this evaluation key belongs to another client")]
    Forbidden,
    /// Not a key id (64 lowercase hex digits).
    #[error("`{0}` is not a key id (64 lowercase hex digits)")]
    BadId(String),
    /// The store's files.
    #[error(transparent)]
    File(#[from] HeError),
}

/// A key held in memory: its owner, its bytes, when it was last used.
type MemoryEntry = (String, Arc<Vec<u8>>, SystemTime);

enum Backing {
    Disk(PathBuf),
    Memory(Mutex<HashMap<String, MemoryEntry>>),
}

/// A bounded, content-addressed key store (see the module docs).
pub struct KeyStore {
    backing: Backing,
    max_bytes: u64,
}

/// Whether `id` has the shape of a key id (so it can name a file).
///
/// ```
/// use cryptotl_server::keystore::is_key_id;
/// assert!(is_key_id(&"ab".repeat(32)));
/// assert!(!is_key_id("../../etc/passwd") && !is_key_id(&"AB".repeat(32)));
/// ```
pub fn is_key_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn touch(path: &Path) {
    // Best effort: a failed touch only makes the key look older to the eviction.
    if let Ok(f) = std::fs::File::options().write(true).open(path) {
        let _ = f.set_modified(SystemTime::now());
    }
}

impl KeyStore {
    /// A store in folder `dir` (created, owner-only on Unix) holding at most `max_bytes` of keys.
    ///
    /// ```
    /// use cryptotl_server::keystore::{KeyStore, StoreError};
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = KeyStore::open(&dir.path().join("keys"), 1 << 20).unwrap();
    /// let id = store.put("alice", b"key bytes").unwrap();
    /// // Another store on the same folder (a replica) finds it.
    /// let replica = KeyStore::open(&dir.path().join("keys"), 1 << 20).unwrap();
    /// assert_eq!(replica.get("alice", &id).unwrap().as_slice(), b"key bytes");
    /// ```
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self, StoreError> {
        if dir.exists() && !dir.is_dir() {
            return Err(HeError::file(dir, "not a folder (the key store is a folder the evaluation keys are written into)").into());
        }
        std::fs::create_dir_all(dir).map_err(|e| HeError::file(dir, e))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| HeError::file(dir, e))?;
        }
        Ok(Self { backing: Backing::Disk(dir.to_path_buf()), max_bytes })
    }

    /// A store in memory holding at most `max_bytes` of keys.
    ///
    /// ```
    /// use cryptotl_server::keystore::{KeyStore, StoreError};
    /// let store = KeyStore::in_memory(1 << 20);
    /// let id = store.put("alice", b"key").unwrap();
    /// assert_eq!(store.get("alice", &id).unwrap().as_slice(), b"key");
    /// ```
    pub fn in_memory(max_bytes: u64) -> Self {
        Self { backing: Backing::Memory(Mutex::default()), max_bytes }
    }

    /// The byte bound.
    ///
    /// ```
    /// assert_eq!(cryptotl_server::keystore::KeyStore::in_memory(4096).max_bytes(), 4096);
    /// ```
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Store `bytes` for `owner` (an opaque client id); returns the key's id. Uploading the same key again is a
    /// no-op that marks it used; the same bytes from another owner are refused.
    ///
    /// ```
    /// use cryptotl_server::keystore::{KeyStore, StoreError};
    /// let store = KeyStore::in_memory(1 << 20);
    /// let id = store.put("alice", b"key").unwrap();
    /// assert_eq!(store.put("alice", b"key").unwrap(), id); // the same key again: the same id
    /// assert!(matches!(store.put("bob", b"key"), Err(StoreError::Forbidden)));
    /// ```
    pub fn put(&self, owner: &str, bytes: &[u8]) -> Result<String, StoreError> {
        let id = sha256_hex(bytes);
        match &self.backing {
            Backing::Memory(map) => {
                let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
                if let Some((o, _, used)) = map.get_mut(&id) {
                    if o != owner {
                        return Err(StoreError::Forbidden);
                    }
                    *used = SystemTime::now();
                    return Ok(id);
                }
                map.insert(id.clone(), (owner.to_string(), Arc::new(bytes.to_vec()), SystemTime::now()));
                let mut entries: Vec<(String, u64, SystemTime)> = map.iter().map(|(k, v)| (k.clone(), v.1.len() as u64, v.2)).collect();
                for gone in self.evict(&mut entries, &id) {
                    map.remove(&gone);
                }
            }
            Backing::Disk(dir) => {
                let key = dir.join(format!("{id}.key"));
                match self.owner_on_disk(dir, &id) {
                    Some(o) if key.exists() => {
                        if o != owner {
                            return Err(StoreError::Forbidden);
                        }
                        touch(&key);
                        return Ok(id);
                    }
                    _ => {}
                }
                write_atomic(&dir.join(format!("{id}.owner")), owner.as_bytes())?;
                write_atomic(&key, bytes)?;
                let mut entries = Vec::new();
                for e in std::fs::read_dir(dir).map_err(|e| HeError::file(dir, e))?.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if let (Some(k), Ok(meta)) = (name.strip_suffix(".key"), e.metadata()) {
                        entries.push((k.to_string(), meta.len(), meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
                    }
                }
                for gone in self.evict(&mut entries, &id) {
                    // Another replica may have removed it already.
                    let _ = std::fs::remove_file(dir.join(format!("{gone}.key")));
                    let _ = std::fs::remove_file(dir.join(format!("{gone}.owner")));
                }
            }
        }
        Ok(id)
    }

    /// The key `id` if `owner` uploaded it; marks it used.
    ///
    /// ```
    /// use cryptotl_server::keystore::{KeyStore, StoreError};
    /// let store = KeyStore::in_memory(1 << 20);
    /// let id = store.put("alice", b"key").unwrap();
    /// assert!(matches!(store.get("bob", &id), Err(StoreError::Forbidden)));
    /// assert!(matches!(store.get("alice", &"0".repeat(64)), Err(StoreError::NotFound)));
    /// assert!(matches!(store.get("alice", "x"), Err(StoreError::BadId(_))));
    /// ```
    pub fn get(&self, owner: &str, id: &str) -> Result<Arc<Vec<u8>>, StoreError> {
        if !is_key_id(id) {
            return Err(StoreError::BadId(id.chars().take(80).collect()));
        }
        match &self.backing {
            Backing::Memory(map) => {
                let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
                let (o, bytes, used) = map.get_mut(id).ok_or(StoreError::NotFound)?;
                if o != owner {
                    return Err(StoreError::Forbidden);
                }
                *used = SystemTime::now();
                Ok(bytes.clone())
            }
            Backing::Disk(dir) => {
                let o = self.owner_on_disk(dir, id).ok_or(StoreError::NotFound)?;
                if o != owner {
                    return Err(StoreError::Forbidden);
                }
                let path = dir.join(format!("{id}.key"));
                let bytes = match std::fs::read(&path) {
                    Ok(b) => b,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(StoreError::NotFound),
                    Err(e) => return Err(HeError::file(&path, e).into()),
                };
                if sha256_hex(&bytes) != id {
                    return Err(HeError::file(&path, "does not hash to its id (corrupt store file)").into());
                }
                touch(&path);
                Ok(Arc::new(bytes))
            }
        }
    }

    fn owner_on_disk(&self, dir: &Path, id: &str) -> Option<String> {
        std::fs::read_to_string(dir.join(format!("{id}.owner"))).ok()
    }

    /// The ids to drop so that `entries` (id, bytes, last use) fit the bound, oldest first, never `keep`.
    fn evict(&self, entries: &mut [(String, u64, SystemTime)], keep: &str) -> Vec<String> {
        let mut total: u64 = entries.iter().map(|e| e.1).sum();
        entries.sort_by_key(|e| e.2);
        let mut gone = Vec::new();
        for (id, bytes, _) in entries.iter() {
            if total <= self.max_bytes {
                break;
            }
            if id != keep {
                total -= bytes;
                gone.push(id.clone());
            }
        }
        if !gone.is_empty() {
            tracing::info!(evicted = gone.len(), "key store over its bound: least recently used keys evicted");
        }
        gone
    }
}
