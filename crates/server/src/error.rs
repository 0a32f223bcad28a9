//! Errors of the encrypted stage. Every one is a refusal with a reason; nothing here panics on input.

/// What went wrong with keys, ciphertexts or the integer program.
#[derive(Debug, thiserror::Error)]
pub enum HeError {
    /// A parameter-set name that is not one of the vetted sets this crate offers.
    #[error("unknown TFHE parameter set `{name}` (known: {})", known.join(", "))]
    UnknownParameterSet {
        /// The name asked for.
        name: String,
        /// The names this crate offers.
        known: Vec<&'static str>,
    },
    /// A key or ciphertext made for another parameter set.
    #[error("{what} was made for parameter set `{found}`, but this side uses `{expected}`")]
    ParameterMismatch { what: &'static str, expected: String, found: String },
    /// A ciphertext encrypted under another client key than the evaluation key in use.
    #[error("{what} belongs to key {found:016x}, but the evaluation key in use is {expected:016x} (was it encrypted by another client or another key generation?)")]
    KeyMismatch { what: &'static str, expected: u64, found: u64 },
    /// A ciphertext or key with the wrong shape (dimension, count).
    #[error("{what}: {message}")]
    Shape { what: &'static str, message: String },
    /// An integer program that cannot be evaluated correctly with the chosen parameters.
    #[error("integer program: {0}")]
    Program(String),
    /// A blob that is not a valid serialization of the expected object (corrupt, truncated, foreign, too large).
    #[error("cannot read {what}: {message}")]
    Deserialize { what: &'static str, message: String },
    /// Serialization failed (e.g. the object exceeds its size limit).
    #[error("cannot write {what}: {message}")]
    Serialize { what: &'static str, message: String },
    /// A batch whose evaluation ran past its time limit (stopped, nothing returned).
    #[error("evaluating {samples} samples took longer than the limit of {limit_seconds:.1} s and was stopped; send fewer samples per batch")]
    TimedOut { samples: usize, limit_seconds: f64 },
    /// A file of the server's (model artifact, key store, token file) that cannot be read or written.
    #[error("{path}: {message}")]
    File { path: String, message: String },
    /// A setting the server cannot start with, named by the `cryptotl serve` option that gives it (`--listen`,
    /// `--tls-cert / --tls-key`, `--max-queue`, `--key-store-mib`), so a caller can point at that option.
    #[error("{option}: {message}")]
    Start { option: &'static str, message: String },
}

impl HeError {
    /// A file error at `path`.
    ///
    /// ```
    /// let e = cryptotl_server::HeError::file(std::path::Path::new("keys/k.bin"), "disk full");
    /// assert!(e.to_string().contains("keys/k.bin") && e.to_string().contains("disk full"));
    /// ```
    pub fn file(path: &std::path::Path, message: impl std::fmt::Display) -> Self {
        HeError::File { path: path.display().to_string(), message: message.to_string() }
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, HeError>;
