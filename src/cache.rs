//! Cache entries on disk: a directory per key whose `meta.json` marks it complete.
//!
//! The protocol every entry follows (the pretrained network, the noised network):
//! 1. [`Entry::lock`] before computing, then look again ([`Entry::meta`]): a run that waited finds the work done;
//! 2. [`Entry::begin`] removes `meta.json`, so a run killed while it rewrites the entry leaves it incomplete (a
//!    miss), never a valid `meta.json` beside a torn file; [`Entry::begin_carrying`] first keeps what the rewrite
//!    must not lose (the releases a replaced entry stood for), which [`Entry::carried`] gives back after such a kill;
//! 3. the entry's files are written atomically (temp file, fsync, rename; owner-only);
//! 4. [`Entry::finish`] writes `meta.json` last.
//!
//! ```
//! use cryptotl::cache::Entry;
//! let dir = tempfile::tempdir().unwrap();
//! let entry = Entry::new(dir.path().join("thing-0123"));
//! assert!(entry.meta::<u32>().is_none());
//! let _lock = entry.lock().unwrap();
//! entry.begin().unwrap();
//! std::fs::write(entry.dir().join("payload"), b"...").unwrap();
//! entry.finish(&7u32).unwrap();
//! assert_eq!(entry.meta::<u32>().unwrap().unwrap(), 7);
//! ```

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// One cache entry: a directory whose `meta.json` marks it complete.
#[derive(Debug, Clone)]
pub struct Entry {
    dir: PathBuf,
}

impl Entry {
    /// The entry in `dir` (nothing is created yet).
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// The entry's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The marker of a complete entry.
    pub fn meta_path(&self) -> PathBuf {
        self.dir.join("meta.json")
    }

    /// The entry's meta data: `None` when the entry is absent or incomplete, an error when `meta.json` exists
    /// but cannot be read or parsed.
    pub fn meta<T: DeserializeOwned>(&self) -> Option<Result<T>> {
        let path = self.meta_path();
        if !path.exists() {
            return None;
        }
        Some(
            std::fs::read(&path)
                .map_err(|e| Error::io(&path, e))
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| Error::artifact(&path, format!("unreadable (corrupt, or written by an older version): {e}")))),
        )
    }

    /// Create the directory (owner only) and hold its lock until the guard drops: one run computes an entry at a
    /// time.
    pub fn lock(&self) -> Result<crate::atomic::DirLock> {
        crate::atomic::create_private_dir(&self.dir)?;
        crate::atomic::DirLock::acquire(&self.dir)
    }

    /// Start (re)writing the entry: its `meta.json` goes first.
    pub fn begin(&self) -> Result<()> {
        crate::atomic::create_private_dir(&self.dir)?;
        crate::atomic::remove_if_exists(&self.meta_path())
    }

    /// [`Entry::begin`], first keeping `carried` beside the entry (written atomically, owner-only): what a rewrite
    /// must not lose if it is cut short, such as the record of the releases the entry held. While the entry is
    /// incomplete [`Entry::carried`] gives it back; [`Entry::finish`] removes it.
    ///
    /// ```
    /// use cryptotl::cache::Entry;
    /// let dir = tempfile::tempdir().unwrap();
    /// let entry = Entry::new(dir.path().join("thing-0123"));
    /// let _lock = entry.lock().unwrap();
    /// entry.begin().unwrap();
    /// entry.finish(&1u32).unwrap();
    /// // A rewrite that must carry a record over, killed before it finishes:
    /// entry.begin_carrying(&vec!["the release it held"]).unwrap();
    /// assert!(entry.meta::<u32>().is_none());
    /// assert_eq!(entry.carried::<Vec<String>>().unwrap().unwrap(), ["the release it held"]);
    /// // Finished, the entry's meta data holds what it carried, and the carried file goes.
    /// entry.finish(&2u32).unwrap();
    /// assert!(entry.carried::<Vec<String>>().is_none());
    /// // With nothing to carry, a rewrite is a plain `begin`: no file is written.
    /// entry.begin_carrying::<String>(&[]).unwrap();
    /// assert!(entry.carried::<Vec<String>>().is_none());
    /// ```
    pub fn begin_carrying<T: Serialize>(&self, carried: &[T]) -> Result<()> {
        crate::atomic::create_private_dir(&self.dir)?;
        if carried.is_empty() {
            crate::atomic::remove_if_exists(&self.carried_path())?;
        } else {
            let bytes = serde_json::to_vec_pretty(carried).map_err(|e| Error::Internal(format!("cache carry-over does not serialise: {e}")))?;
            crate::atomic::write_private(&self.carried_path(), &bytes)?;
        }
        self.begin()
    }

    /// What a rewrite cut short between [`Entry::begin_carrying`] and [`Entry::finish`] carried over: `None` when the
    /// entry is complete or nothing was carried, an error when the file cannot be read or parsed.
    pub fn carried<T: DeserializeOwned>(&self) -> Option<Result<T>> {
        let path = self.carried_path();
        if self.meta_path().exists() || !path.exists() {
            return None;
        }
        Some(
            std::fs::read(&path)
                .map_err(|e| Error::io(&path, e))
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| Error::artifact(&path, format!("unreadable: {e}")))),
        )
    }

    fn carried_path(&self) -> PathBuf {
        self.dir.join("carried.json")
    }

    /// Mark the entry complete: `meta.json`, written atomically and owner-only, after everything else (then the
    /// carry-over of [`Entry::begin_carrying`], now in the meta data, is removed).
    pub fn finish<T: Serialize>(&self, meta: &T) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(meta).map_err(|e| Error::Internal(format!("cache meta data does not serialise: {e}")))?;
        crate::atomic::write_private(&self.meta_path(), &bytes)?;
        crate::atomic::remove_if_exists(&self.carried_path())
    }
}
