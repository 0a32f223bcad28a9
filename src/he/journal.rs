//! The encrypted stage's journal: the decrypted outputs of each batch, appended as the batch comes back, so a run
//! killed during the encrypted forward pass (minutes on the quickstart, an hour against a slow server) starts again
//! where it stopped instead of encrypting every sample again.
//!
//! A sample is known by its quantized input levels: one whose levels an earlier pass recorded (the journal held
//! them when it was opened) needs no second trip, and the outputs it gets are those of its one encryption and
//! evaluation before the interruption (as valid as a fresh one: two passes differ at most where a lookup falls a
//! level off the clear-integer oracle, which the report's oracle rate counts in the one-process simulation,
//! resumed samples included). What this pass records goes to disk for the next one but is not reused now: within
//! one pass every sample is sent, a text that repeats in another split or an identical input included, so an
//! uninterrupted run shows the server one ciphertext per sample, and the report's resumed count means an
//! interruption. A journal belongs to one model on
//! one server with one parameter set ([`Session::journal_identity`](super::Session::journal_identity)): its file
//! name carries a hash of that, so another network, parameter set or server never reads it.
//!
//! The file holds the client's decrypted outputs: it is private (0600), kept beside the run's other private files
//! in its output folder, and removed ([`remove_all`]) once the command that made it has written its results, so a
//! run killed after the pass (while it trains heads or draws curves) does not encrypt again either. Like the embedding cache it is append-only,
//! every record carries a checksum (a damaged record is a miss: that sample is evaluated again), and a torn tail is
//! cut before the next append.
//!
//! ```
//! use cryptotl::he::journal::OutputJournal;
//! let dir = tempfile::tempdir().unwrap();
//! let mut journal = OutputJournal::open(dir.path(), "model a | parameter set | local", 2).unwrap();
//! journal.append(&[(&[1, 2, 3][..], &[7, -1][..])]).unwrap();
//! // A later run (a new process) finds the sample's outputs.
//! let again = OutputJournal::open(dir.path(), "model a | parameter set | local", 2).unwrap();
//! assert_eq!(again.get(&[1, 2, 3]), Some(&[7, -1][..]));
//! assert_eq!(again.get(&[1, 2, 4]), None);
//! // What a pass records is for the next pass: the journal it was recorded in does not return it.
//! assert_eq!(journal.get(&[1, 2, 3]), None);
//! assert_eq!(journal.len(), 1);
//! // Another model's journal is another file.
//! assert!(OutputJournal::open(dir.path(), "model b | parameter set | local", 2).unwrap().is_empty());
//! again.remove().unwrap();
//! assert!(OutputJournal::open(dir.path(), "model a | parameter set | local", 2).unwrap().is_empty());
//! ```

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The decrypted outputs of samples already through the encrypted path, on disk and in memory.
#[derive(Debug)]
pub struct OutputJournal {
    path: PathBuf,
    outputs: usize,
    /// Outputs recorded before this journal was opened (an earlier pass): the ones [`OutputJournal::get`] returns.
    carried_over: HashMap<u128, Vec<i64>>,
    /// Samples recorded since it was opened and not carried over: on disk for the next pass.
    appended: HashSet<u128>,
}

/// The key of a sample: xxh3-128 of its quantized input levels.
fn key_of(levels: &[u16]) -> u128 {
    let bytes: Vec<u8> = levels.iter().flat_map(|l| l.to_le_bytes()).collect();
    xxhash_rust::xxh3::xxh3_128(&bytes)
}

impl OutputJournal {
    /// Open (or start) the journal of `identity` (a model on a server, [`super::Session::journal_identity`]) in
    /// `dir`, for `outputs` outputs per sample. Damaged records are skipped with a warning.
    pub fn open(dir: &Path, identity: &str, outputs: usize) -> Result<Self> {
        let path = dir.join(format!("encrypted-{:032x}.journal", xxhash_rust::xxh3::xxh3_128(identity.as_bytes())));
        let mut entries = HashMap::new();
        if path.exists() {
            let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
            let (damaged, torn_bytes) = crate::atomic::read_records(&bytes, Self::record_len(outputs), |key, payload| {
                entries.insert(key, payload.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes"))).collect());
                true
            });
            if damaged > 0 || torn_bytes > 0 {
                tracing::warn!(path = %path.display(), damaged, torn_bytes,
                    "the encrypted stage's journal has damaged records; those samples are evaluated again");
            }
        }
        Ok(Self { path, outputs, carried_over: entries, appended: HashSet::new() })
    }

    fn record_len(outputs: usize) -> usize {
        16 + 8 * outputs + 8
    }

    /// Where the journal is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Samples it holds (distinct input levels), those recorded since it was opened included.
    pub fn len(&self) -> usize {
        self.carried_over.len() + self.appended.len()
    }

    /// Whether it holds no sample.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The decrypted output levels of the sample with these quantized input levels, if an earlier pass recorded
    /// them (the journal held them when it was opened). Samples recorded since are not returned: a pass sends
    /// each of its samples, identical inputs included.
    pub fn get(&self, levels: &[u16]) -> Option<&[i64]> {
        self.carried_over.get(&key_of(levels)).map(Vec::as_slice)
    }

    /// Record some samples' outputs (input levels, output levels), synced to disk before it returns.
    pub fn append(&mut self, samples: &[(&[u16], &[i64])]) -> Result<()> {
        let record = Self::record_len(self.outputs);
        let mut buf = Vec::with_capacity(samples.len() * record);
        for &(levels, out) in samples {
            if out.len() != self.outputs {
                return Err(Error::Internal(format!("{} outputs for a journal of {} per sample", out.len(), self.outputs)));
            }
            let key = key_of(levels);
            crate::atomic::push_record(&mut buf, key, |b| out.iter().for_each(|o| b.extend_from_slice(&o.to_le_bytes())));
            if !self.carried_over.contains_key(&key) {
                self.appended.insert(key);
            }
        }
        crate::atomic::append_records(&self.path, record, &buf)
    }

    /// Delete the journal (the pass it served is complete).
    pub fn remove(self) -> Result<()> {
        crate::atomic::remove_if_exists(&self.path)
    }
}

/// Delete every journal in `dir` (a run's folder whose results are written): they hold decrypted outputs the
/// finished run no longer needs. Returns how many there were. A missing folder has none.
///
/// ```
/// use cryptotl::he::journal::{OutputJournal, remove_all};
/// let dir = tempfile::tempdir().unwrap();
/// OutputJournal::open(dir.path(), "a model", 1).unwrap().append(&[(&[1][..], &[2][..])]).unwrap();
/// std::fs::write(dir.path().join("report.json"), b"{}").unwrap();
/// assert_eq!(remove_all(dir.path()).unwrap(), 1);
/// assert!(dir.path().join("report.json").exists());
/// assert_eq!(remove_all(&dir.path().join("missing")).unwrap(), 0);
/// ```
pub fn remove_all(dir: &Path) -> Result<usize> {
    let journals = journals_in(dir)?;
    for path in &journals {
        crate::atomic::remove_if_exists(path)?;
    }
    Ok(journals.len())
}

/// The journals of encrypted passes in `dir` (of any model, server or command), none for a missing folder.
pub fn journals_in(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut journals = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.starts_with("encrypted-") && name.ends_with(".journal") {
            journals.push(path);
        }
    }
    Ok(journals)
}
