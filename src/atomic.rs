//! Atomic file writes: a temporary file in the same folder, fsync, rename, the folder synced. A reader sees the old
//! file or the new one, never a torn one, even if the writer is killed.
//!
//! ```
//! let dir = tempfile::tempdir().unwrap();
//! let p = dir.path().join("out.json");
//! cryptotl::atomic::write(&p, b"{}").unwrap();
//! assert_eq!(std::fs::read(&p).unwrap(), b"{}");
//! ```

use std::path::Path;

use crate::error::{Error, Result};

/// Write `bytes` to `path` atomically (parent folders are created).
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    write_file(path, bytes, false)
}

/// Write a file only its owner may read (mode 0600 on Unix), atomically: the client's decrypted features and
/// fitted featurizer, the embedding cache, the server's cached weights.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    write_file(path, bytes, true)
}

/// Restrict an existing file or folder to its owner (0600 for files, 0700 for folders; no-op off Unix).
pub fn make_private(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = if path.is_dir() { 0o700 } else { 0o600 };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| Error::io(path, e))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Create a folder (and its parents) that only its owner may enter (0700 on Unix).
pub fn create_private_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    make_private(dir)
}

/// Options that create a file for writing, owner-only (0600 on Unix) when `private`.
pub fn open_options(private: bool) -> std::fs::OpenOptions {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    opts
}

/// Append whole fixed-size records (`bytes`, a multiple of `record` long) to an append-only private file (0600),
/// synced before it returns: the embedding cache's and the encrypted pass's journal's write. Appends are taken one
/// at a time (an exclusive lock on the file, released when it closes), and a torn tail left by a writer killed
/// mid-append (the file as it is now: another process may have appended since it was read) is cut first, so the
/// file never holds unreadable bytes before good ones.
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// let p = dir.path().join("records.bin");
/// std::fs::write(&p, [1, 2, 3, 4, 5]).unwrap(); // one 4-byte record and a torn byte
/// cryptotl::atomic::append_records(&p, 4, &[6, 7, 8, 9]).unwrap();
/// assert_eq!(std::fs::read(&p).unwrap(), [1, 2, 3, 4, 6, 7, 8, 9]);
/// ```
pub fn append_records(path: &Path, record: usize, bytes: &[u8]) -> Result<()> {
    use std::io::{Seek as _, Write as _};
    debug_assert_eq!(bytes.len() % record, 0);
    let io = |e| Error::io(path, e);
    let mut f = open_options(true).truncate(false).open(path).map_err(io)?;
    f.lock().map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    let whole = len - len % record as u64;
    if whole != len {
        f.set_len(whole).map_err(io)?;
    }
    f.seek(std::io::SeekFrom::Start(whole)).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_data().map_err(io)
}

/// Append one checksummed record to `buf`, as the embedding cache and the encrypted pass's journal store them: the
/// 16-byte little-endian `key`, the bytes `payload` writes, then an 8-byte xxh3-64 of both. [`read_records`] reads
/// them back; [`append_records`] puts a buffer of them on disk.
///
/// ```
/// let mut buf = Vec::new();
/// cryptotl::atomic::push_record(&mut buf, 7, |b| b.extend_from_slice(&[1, 2]));
/// assert_eq!(buf.len(), 16 + 2 + 8);
/// let mut seen = Vec::new();
/// assert_eq!(cryptotl::atomic::read_records(&buf, 26, |key, payload| { seen.push((key, payload.to_vec())); true }), (0, 0));
/// assert_eq!(seen, [(7, vec![1, 2])]);
/// ```
pub fn push_record(buf: &mut Vec<u8>, key: u128, payload: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&key.to_le_bytes());
    payload(buf);
    let sum = xxhash_rust::xxh3::xxh3_64(&buf[start..]);
    buf.extend_from_slice(&sum.to_le_bytes());
}

/// Read the whole `record`-byte records of `bytes` ([`push_record`]'s format): `keep(key, payload)` is called for
/// each record whose checksum holds and says whether the payload is good. Returns how many records were damaged
/// (checksum failed, or `keep` refused them) and how many bytes of a torn record trail the last whole one.
///
/// ```
/// let mut buf = Vec::new();
/// cryptotl::atomic::push_record(&mut buf, 1, |b| b.push(10));
/// cryptotl::atomic::push_record(&mut buf, 2, |b| b.push(20));
/// buf[16 + 1 + 8 + 16] ^= 1; // flip a bit of the second record's payload
/// buf.push(0); // and a torn byte
/// let mut keys = Vec::new();
/// assert_eq!(cryptotl::atomic::read_records(&buf, 25, |key, _| { keys.push(key); true }), (1, 1));
/// assert_eq!(keys, [1]);
/// ```
pub fn read_records(bytes: &[u8], record: usize, mut keep: impl FnMut(u128, &[u8]) -> bool) -> (usize, usize) {
    let mut damaged = 0;
    for rec in bytes.chunks_exact(record) {
        let (body, sum) = rec.split_at(record - 8);
        let sound = u64::from_le_bytes(sum.try_into().expect("8 bytes")) == xxhash_rust::xxh3::xxh3_64(body)
            && keep(u128::from_le_bytes(body[..16].try_into().expect("16 bytes")), &body[16..]);
        damaged += usize::from(!sound);
    }
    (damaged, bytes.len() % record)
}

/// Remove a file if it is there; a missing one is not an error.
pub fn remove_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(path, e)),
        _ => Ok(()),
    }
}

/// The one atomic write both parties use ([`cryptotl_server::atomic::write`]), with this crate's error.
fn write_file(path: &Path, bytes: &[u8], private: bool) -> Result<()> {
    cryptotl_server::atomic::write(path, bytes, private).map_err(|e| Error::io(path, e))
}

/// Create `dir` (and its parents) and prove it writable by writing and removing a probe file: a path that names a
/// file, or a folder without write permission, fails here, before any long work.
pub fn writable_dir(dir: &Path) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        return Err(Error::OutputDir { path: dir.to_path_buf(), message: "exists and is not a directory; give another output folder".into() });
    }
    let probe = dir.join(".cryptotl-write-test");
    let refused = |e: std::io::Error| Error::OutputDir { path: dir.to_path_buf(), message: format!("cannot write into this folder ({e}); give another output folder") };
    std::fs::create_dir_all(dir).map_err(refused)?;
    std::fs::write(&probe, b"").map_err(refused)?;
    std::fs::remove_file(&probe).map_err(|e| Error::io(&probe, e))
}

/// Claim a command's output folder before any work: create it, prove it writable ([`writable_dir`]), make it
/// owner-only (it may receive the client's decrypted outputs, e.g. an encrypted pass's journal) and take its lock
/// ([`DirLock::try_acquire`]): a second command into the same folder fails at once, naming it.
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// let out = dir.path().join("curve");
/// let lock = cryptotl::atomic::claim_dir(&out).unwrap();
/// assert!(cryptotl::atomic::claim_dir(&out).is_err()); // held
/// drop(lock);
/// assert!(cryptotl::atomic::claim_dir(&out).is_ok());
/// ```
pub fn claim_dir(dir: &Path) -> Result<DirLock> {
    writable_dir(dir)?;
    make_private(dir)?;
    DirLock::try_acquire(dir)
}

/// An exclusive advisory lock on a folder (its `.lock` file), held until dropped: two runs never write one output
/// directory or one cache entry at once.
#[derive(Debug)]
pub struct DirLock {
    _file: std::fs::File,
}

impl DirLock {
    fn open(dir: &Path) -> Result<std::fs::File> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(".lock");
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(|e| Error::io(&path, e))
    }

    /// Take the lock, or fail at once (naming the folder) when another process holds it.
    pub fn try_acquire(dir: &Path) -> Result<Self> {
        Self::try_with(dir, std::fs::File::try_lock, "another cryptotl run is using this directory: wait for it to finish, or choose another output_dir")
    }

    /// Take the lock with `lock` (exclusive or shared), or fail at once saying `busy`.
    fn try_with(dir: &Path, lock: fn(&std::fs::File) -> std::result::Result<(), std::fs::TryLockError>, busy: &str) -> Result<Self> {
        let file = Self::open(dir)?;
        match lock(&file) {
            Ok(()) => Ok(Self { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::io(dir, std::io::Error::new(std::io::ErrorKind::WouldBlock, busy.to_string()))),
            Err(std::fs::TryLockError::Error(e)) => Err(Error::io(dir.join(".lock"), e)),
        }
    }

    /// Take the lock shared with other readers, or fail at once (naming the folder) while a writer holds it: what
    /// `predict` holds on a run folder, so that it never reads one a run is rewriting, and a run waits for none
    /// of its files to be in use.
    ///
    /// ```
    /// use cryptotl::atomic::DirLock;
    /// let dir = tempfile::tempdir().unwrap();
    /// let (a, b) = (DirLock::try_acquire_shared(dir.path()).unwrap(), DirLock::try_acquire_shared(dir.path()).unwrap());
    /// assert!(DirLock::try_acquire(dir.path()).is_err()); // readers hold it
    /// drop((a, b));
    /// let _writer = DirLock::try_acquire(dir.path()).unwrap();
    /// assert!(DirLock::try_acquire_shared(dir.path()).is_err());
    /// ```
    pub fn try_acquire_shared(dir: &Path) -> Result<Self> {
        Self::try_with(dir, std::fs::File::try_lock_shared, "a cryptotl command is writing this directory: wait for it to finish")
    }

    /// Take the lock, waiting for another process that holds it (saying so, at warning level, before it waits: a run
    /// waiting for another's pretraining or noise draw would otherwise look stuck).
    ///
    /// ```
    /// use cryptotl::atomic::DirLock;
    /// let dir = tempfile::tempdir().unwrap();
    /// let held = DirLock::acquire(dir.path()).unwrap();
    /// let path = dir.path().to_path_buf();
    /// let waiter = std::thread::spawn(move || DirLock::acquire(&path).map(drop));
    /// std::thread::sleep(std::time::Duration::from_millis(200));
    /// assert!(!waiter.is_finished()); // it waits for the holder
    /// drop(held);
    /// waiter.join().unwrap().unwrap();
    /// ```
    pub fn acquire(dir: &Path) -> Result<Self> {
        let file = Self::open(dir)?;
        match file.try_lock() {
            Ok(()) => return Ok(Self { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => {
                tracing::warn!(dir = %dir.display(), "another cryptotl run holds this folder (a pretraining, a noise draw or a cache write): waiting for it");
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(dir.join(".lock"), e)),
        }
        file.lock().map_err(|e| Error::io(dir.join(".lock"), e))?;
        Ok(Self { _file: file })
    }
}
