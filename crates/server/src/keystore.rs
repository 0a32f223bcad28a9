//! The server's store of clients' evaluation keys: content-addressed (a key's id is the SHA-256 of its bytes),
//! each bound to the client that uploaded it, bounded in bytes with least-recently-used eviction, and optionally in
//! keys per client ([`KeyStore::with_keys_per_owner`]): a client past its share evicts its own oldest key, not
//! another client's.
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
    /// Keys one owner may hold at most (none: any number within `max_bytes`).
    keys_per_owner: Option<usize>,
}

/// A stored key as eviction sees it: id, owner, bytes, last use.
type Entry = (String, String, u64, SystemTime);

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
        Ok(Self { backing: Backing::Disk(dir.to_path_buf()), max_bytes, keys_per_owner: None })
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
        Self { backing: Backing::Memory(Mutex::default()), max_bytes, keys_per_owner: None }
    }

    /// Let one owner hold at most `n` keys (at least 1): an upload past that evicts the uploader's own least recently
    /// used key, so that a client uploading key after key wears out its own keys, not the other clients'.
    ///
    /// ```
    /// use cryptotl_server::keystore::{KeyStore, StoreError};
    /// let store = KeyStore::in_memory(1 << 20).with_keys_per_owner(2);
    /// let bob = store.put("bob", b"bob's key").unwrap();
    /// let alice: Vec<String> = (0..3u8).map(|i| { let id = store.put("alice", &[i; 8]).unwrap(); std::thread::sleep(std::time::Duration::from_millis(5)); id }).collect();
    /// assert!(matches!(store.get("alice", &alice[0]), Err(StoreError::NotFound))); // her oldest
    /// assert!(store.get("alice", &alice[1]).is_ok() && store.get("alice", &alice[2]).is_ok());
    /// assert!(store.get("bob", &bob).is_ok()); // older than all of hers, and kept
    /// ```
    pub fn with_keys_per_owner(mut self, n: usize) -> Self {
        self.keys_per_owner = Some(n.max(1));
        self
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
                let mut entries: Vec<Entry> = map.iter().map(|(k, v)| (k.clone(), v.0.clone(), v.1.len() as u64, v.2)).collect();
                for gone in self.evict(&mut entries, &id, owner) {
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
                        // The owner is read only when a share is kept; a key whose owner file is gone (another
                        // replica evicting it) counts for nobody.
                        let o = if self.keys_per_owner.is_some() { self.owner_on_disk(dir, k).unwrap_or_default() } else { String::new() };
                        entries.push((k.to_string(), o, meta.len(), meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
                    }
                }
                for gone in self.evict(&mut entries, &id, owner) {
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

    /// The ids to drop, oldest first and never `keep` (the key `owner` just stored): first `owner`'s keys past its
    /// share ([`Self::with_keys_per_owner`]), then whatever else `entries` must lose to fit the byte bound.
    fn evict(&self, entries: &mut [Entry], keep: &str, owner: &str) -> Vec<String> {
        entries.sort_by_key(|e| e.3);
        let mut gone: Vec<String> = Vec::new();
        if let Some(share) = self.keys_per_owner {
            let mut held = entries.iter().filter(|e| e.1 == owner).count();
            for (id, o, _, _) in entries.iter() {
                if held <= share {
                    break;
                }
                if o == owner && id != keep {
                    gone.push(id.clone());
                    held -= 1;
                }
            }
            if !gone.is_empty() {
                tracing::info!(evicted = gone.len(), share, "a client's upload past its share of keys: its least recently used keys evicted");
            }
        }
        let over_share = gone.len();
        let mut total: u64 = entries.iter().filter(|e| !gone.contains(&e.0)).map(|e| e.2).sum();
        for (id, _, bytes, _) in entries.iter() {
            if total <= self.max_bytes {
                break;
            }
            if id != keep && !gone.contains(id) {
                total -= bytes;
                gone.push(id.clone());
            }
        }
        if gone.len() > over_share {
            tracing::info!(evicted = gone.len() - over_share, "key store over its bound: least recently used keys evicted");
        }
        gone
    }
}
