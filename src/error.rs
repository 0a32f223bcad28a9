//! One error type for the library. Every variant says *where* (file, key, row) and *what is allowed*, so a user
//! can fix the input without reading the source. The CLI maps them to exit codes (2 for bad input, 1 otherwise).

use std::path::{Path, PathBuf};

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in cryptotl.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration file (or a `--set` override) is malformed or asks for something invalid.
    #[error("{file}: key `{key}`: {message}")]
    Config {
        /// The config file (or `<command line>` for overrides).
        file: String,
        /// Dotted key path, e.g. `lower.hidden`.
        key: String,
        /// What is wrong and what is allowed.
        message: String,
    },

    /// A configuration file could not be parsed at all.
    #[error("{file}: {message}")]
    ConfigSyntax {
        /// The config file.
        file: String,
        /// The parser's message (with line and column).
        message: String,
    },

    /// A dataset file is missing, malformed or does not fit its declared format.
    #[error("dataset {path}: {message}")]
    Data {
        /// The offending file or folder.
        path: PathBuf,
        /// What is wrong (with the row where it applies).
        message: String,
    },

    /// Feature vectors that cannot be used (wrong dimension, NaN, infinite, ...).
    #[error("features: {0}")]
    Features(String),

    /// Invalid privacy parameters or a budget that cannot be met.
    #[error("privacy: {0}")]
    Privacy(String),

    /// The folder a command was told to write into cannot take its files (a file of that name, no permission, a
    /// parent that is not a folder, ...).
    #[error("output folder {path}: {message}")]
    OutputDir {
        /// The folder.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// A saved model, scaler or checkpoint is missing, corrupt or does not match the config.
    #[error("model artefact {path}: {message}")]
    Artifact {
        /// The offending file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// A TFHE key, ciphertext or integer program was refused (wrong key, wrong parameters, corrupt blob, ...).
    #[error("encrypted stage: {0}")]
    He(#[from] cryptotl_server::HeError),

    /// The model owner's server refused a request, or could not be reached after every retry.
    #[error("server {server}: {message}")]
    Server {
        /// The server (its URL, or `local`).
        server: String,
        /// What it answered, or why it could not be reached.
        message: String,
    },

    /// An I/O error on a named path.
    #[error("{path}: {source}")]
    Io {
        /// The path being read or written.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    /// A failure of the program itself, not of its input (e.g. a value that should always serialise did not).
    #[error("internal error: {0}")]
    Internal(String),
}

/// OpenDP's refusals (a measurement that cannot be built, a map that cannot be evaluated) as privacy errors, so
/// OpenDP calls take `?`.
impl From<opendp::error::Error> for Error {
    fn from(e: opendp::error::Error) -> Self {
        Error::Privacy(format!("OpenDP: {e}"))
    }
}

/// The file name of a config error found after the config was loaded (a `RunConfig` does not keep where it came
/// from). The CLI, which knows, puts the config's path in its place ([`Error::in_config_file`]).
pub const UNNAMED_CONFIG: &str = "<config>";

impl Error {
    /// A config error raised without the config's file name ([`UNNAMED_CONFIG`]) gets `file`; any other error is
    /// returned as it is.
    ///
    /// ```
    /// use cryptotl::error::{Error, UNNAMED_CONFIG};
    /// let e = Error::Config { file: UNNAMED_CONFIG.into(), key: "he.server".into(), message: "is not a URL".into() };
    /// assert_eq!(e.in_config_file("configs/x.toml").to_string(), "configs/x.toml: key `he.server`: is not a URL");
    /// ```
    pub fn in_config_file(self, file: &str) -> Self {
        match self {
            Error::Config { file: f, key, message } if f == UNNAMED_CONFIG => Error::Config { file: file.into(), key, message },
            e => e,
        }
    }

    /// True when the error is the user's input (config, data, features), not an internal failure.
    pub fn is_input_error(&self) -> bool {
        matches!(
            self,
            Error::Config { .. } | Error::ConfigSyntax { .. } | Error::Data { .. } | Error::OutputDir { .. } | Error::Features(_) | Error::Privacy(_) | Error::He(_)
        )
    }

    /// A config error at `key`, found after the config was loaded: its file is [`UNNAMED_CONFIG`] until the CLI
    /// names it ([`Error::in_config_file`]).
    pub(crate) fn config_key(key: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config { file: UNNAMED_CONFIG.into(), key: key.into(), message: message.into() }
    }

    pub(crate) fn data(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Data { path: path.into(), message: message.into() }
    }

    pub(crate) fn artifact(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Artifact { path: path.into(), message: message.into() }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

/// For a message about a file that is not there: where a relative path was looked for. The default config's paths
/// (`datasets/...`) are relative to the current directory, so a run started elsewhere misses files the repository
/// has, and "fetch it" alone would send the user to fetch what is already fetched.
pub(crate) fn looked_in(path: &Path) -> String {
    if path.is_absolute() {
        return String::new();
    }
    match std::env::current_dir() {
        Ok(cwd) => format!(" (looked in {}: relative paths are read from the current directory)", cwd.join(path).display()),
        Err(_) => String::new(),
    }
}
