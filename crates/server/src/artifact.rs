//! The server's model artifact: the directory `cryptotl server build` writes and `cryptotl serve` reads.
//!
//! | file | holds | who sees it |
//! |---|---|---|
//! | `program.json` | the integer program (weights, tables): the server's asset | the server only |
//! | `interface.json` | [`ModelInterface`]: what a client needs to encode inputs and decode outputs | every client |
//! | `privacy.json` | the server's privacy statement (mechanisms on its source data, ε, δ) | every client |
//! | `manifest.json` | [`Manifest`]: the SHA-256 of each file above, versions | the server |
//!
//! Every file is written atomically (temporary file, fsync, rename), the manifest last; [`ModelArtifact::load`]
//! checks every hash, so a truncated or edited artifact is refused with the file that is wrong.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::error::{HeError, Result};
use crate::eval::OpCounts;
use crate::params::ParameterSet;
use crate::program::{IntegerProgram, ProgramInterface};
use crate::wire::{EncryptedInput, EncryptedOutput, EvaluationKey};

/// Version of the artifact layout and of the interface document. 2: lookup tables are stored centred, and a client
/// must add the interface's `output_offsets` to what it decrypts ([`crate::program`]). A program without offsets
/// is still written as format 1, which clients and servers of that format read as before.
pub const FORMAT: u32 = 2;
/// The formats this version reads: 1 (no offsets) and [`FORMAT`].
pub const READABLE_FORMATS: std::ops::RangeInclusive<u32> = 1..=FORMAT;

/// The format an artifact of `program` is written in: the oldest that describes it.
fn format_of(program: &IntegerProgram) -> u32 {
    if program.table_offsets.is_empty() { 1 } else { FORMAT }
}
/// The name of [`crate::wire::RoundedEvaluationKey`] in [`ModelInterface::evaluation_key_forms`].
pub const ROUNDED_KEY: &str = "rounded";
/// Largest number of samples in one evaluation request.
pub const DEFAULT_MAX_BATCH: usize = 64;

const PROGRAM: &str = "program.json";
const INTERFACE: &str = "interface.json";
const PRIVACY: &str = "privacy.json";
const MANIFEST: &str = "manifest.json";

/// Lowercase hex SHA-256 of `bytes`.
///
/// ```
/// assert!(cryptotl_server::artifact::sha256_hex(b"").starts_with("e3b0c442"));
/// ```
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&sha2::Sha256::digest(bytes))
}

/// Lowercase hex of `bytes`.
///
/// ```
/// assert_eq!(cryptotl_server::artifact::hex(&[0, 15, 255]), "000fff");
/// ```
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Write `bytes` to `path` atomically, owner-only ([`crate::atomic::write`]): the model directory and the key store.
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// let p = dir.path().join("program.bin");
/// cryptotl_server::artifact::write_atomic(&p, b"bytes").unwrap();
/// assert_eq!(std::fs::read(&p).unwrap(), b"bytes");
/// ```
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::atomic::write(path, bytes, true).map_err(|e| HeError::file(path, e))
}

/// What a client fetches before it sends anything: how to encode its inputs, how to decode the outputs, what a
/// request may hold. Nothing of the weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelInterface {
    /// [`FORMAT`], or 1 for a program without table offsets.
    pub format: u32,
    /// SHA-256 of the program: names this model (a client can pin it).
    pub model_id: String,
    /// The tfhe-rs parameter set the client must generate its keys with.
    pub parameter_set: String,
    /// Quantization of inputs and outputs.
    pub program: ProgramInterface,
    /// The features the program expects, as the server's builder described them (featurizer, its model's hash,
    /// dimension, scaling): the client must produce the same kind of vector.
    pub features: serde_json::Value,
    /// What one sample costs the server (bootstraps, multiply-adds).
    pub counts: OpCounts,
    /// Samples per evaluation request at most.
    pub max_batch: usize,
    /// Largest evaluation key accepted, bytes.
    pub evaluation_key_limit: u64,
    /// The forms of evaluation key this server reads: `rounded` ([`crate::wire::RoundedEvaluationKey`], 22%
    /// smaller) and `full`. Empty from a server built before 2026-12-06, which reads only the full form.
    #[serde(default)]
    pub evaluation_key_forms: Vec<String>,
    /// Largest serialized encrypted input, bytes.
    pub input_limit: u64,
    /// Largest serialized encrypted output, bytes.
    pub output_limit: u64,
}

impl ModelInterface {
    /// Check an interface received from a server before using it.
    pub fn validate(&self) -> Result<ParameterSet> {
        if !READABLE_FORMATS.contains(&self.format) {
            return Err(HeError::Program(format!(
                "the server speaks interface format {}, this client reads {} to {FORMAT}", self.format, READABLE_FORMATS.start())));
        }
        if self.format < 2 && !self.program.output_offsets.is_empty() {
            return Err(HeError::Program("an interface of format 1 cannot carry output offsets".into()));
        }
        let params = ParameterSet::from_name(&self.parameter_set)?;
        self.program.validate()?;
        if self.max_batch == 0 {
            return Err(HeError::Program("the server accepts batches of 0 samples".into()));
        }
        Ok(params)
    }

    /// Whether this server reads a [`crate::wire::RoundedEvaluationKey`].
    pub fn reads_rounded_keys(&self) -> bool {
        self.evaluation_key_forms.iter().any(|f| f == ROUNDED_KEY)
    }

    /// Largest evaluation request body, bytes.
    pub fn request_limit(&self) -> u64 {
        self.max_batch as u64 * self.input_limit + crate::frames::overhead(self.max_batch)
    }
}

/// Hashes and versions of an artifact's files.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`], or 1 for a program without table offsets.
    pub format: u32,
    /// The model id (SHA-256 of `program.json`).
    pub model_id: String,
    /// Version of this crate that wrote the artifact.
    pub server_version: String,
    /// File name -> SHA-256.
    pub files: BTreeMap<String, String>,
}

/// The server's model: its program under a parameter set, the interface it publishes, its privacy statement.
#[derive(Clone, Debug)]
pub struct ModelArtifact {
    /// The integer program (the server's asset).
    pub program: IntegerProgram,
    /// The parameter set.
    pub params: ParameterSet,
    /// What clients fetch.
    pub interface: ModelInterface,
    /// The server's privacy statement (published to clients as is).
    pub privacy: serde_json::Value,
}

fn to_json<T: Serialize>(v: &T, what: &'static str) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(v).map_err(|e| HeError::Serialize { what, message: e.to_string() })
}

/// The model id of `program`: the SHA-256 of its JSON form, which a server publishes in its interface
/// ([`ModelInterface::model_id`]). Two programs with one id compute the same outputs.
pub fn program_id(program: &IntegerProgram) -> Result<String> {
    Ok(sha256_hex(&to_json(program, "program")?))
}

impl ModelArtifact {
    /// An artifact for `program` under `params` (checked), publishing `features` and `privacy` to clients.
    pub fn new(program: IntegerProgram, params: ParameterSet, features: serde_json::Value, privacy: serde_json::Value) -> Result<Self> {
        program.validate(params)?;
        let model_id = program_id(&program)?;
        let interface = ModelInterface {
            format: format_of(&program),
            model_id,
            parameter_set: params.name().into(),
            program: program.interface(),
            features,
            counts: OpCounts::of(&program, params),
            max_batch: DEFAULT_MAX_BATCH,
            evaluation_key_limit: EvaluationKey::size_limit(params),
            evaluation_key_forms: vec![ROUNDED_KEY.into(), "full".into()],
            input_limit: EncryptedInput::size_limit(program.input_dim),
            output_limit: EncryptedOutput::size_limit(params, program.outputs()),
        };
        Ok(Self { program, params, interface, privacy })
    }

    /// Write the artifact into `dir` (created if missing), the manifest last.
    pub fn write(&self, dir: &Path) -> Result<Manifest> {
        let mut files = BTreeMap::new();
        for (name, bytes) in [
            (PROGRAM, to_json(&self.program, "program")?),
            (INTERFACE, to_json(&self.interface, "interface")?),
            (PRIVACY, to_json(&self.privacy, "privacy statement")?),
        ] {
            write_atomic(&dir.join(name), &bytes)?;
            files.insert(name.to_string(), sha256_hex(&bytes));
        }
        let manifest = Manifest { format: format_of(&self.program), model_id: self.interface.model_id.clone(), server_version: env!("CARGO_PKG_VERSION").into(), files };
        write_atomic(&dir.join(MANIFEST), &to_json(&manifest, "manifest")?)?;
        Ok(manifest)
    }

    /// Read an artifact, checking the manifest's hashes, the program against its parameter set and the interface
    /// against the program.
    pub fn load(dir: &Path) -> Result<Self> {
        let read = |name: &str| -> Result<Vec<u8>> {
            let p = dir.join(name);
            std::fs::read(&p).map_err(|e| HeError::file(&p, format!("{e} (is {} a model directory written by `cryptotl server build`?)", dir.display())))
        };
        let parse = |name: &str, bytes: &[u8]| -> Result<serde_json::Value> {
            serde_json::from_slice(bytes).map_err(|e| HeError::file(&dir.join(name), format!("not valid JSON: {e}")))
        };
        let manifest: Manifest = serde_json::from_value(parse(MANIFEST, &read(MANIFEST)?)?)
            .map_err(|e| HeError::file(&dir.join(MANIFEST), e))?;
        if !READABLE_FORMATS.contains(&manifest.format) {
            return Err(HeError::file(&dir.join(MANIFEST), format!(
                "artifact format {}, this server reads {} to {FORMAT}", manifest.format, READABLE_FORMATS.start())));
        }
        let mut contents = BTreeMap::new();
        for name in [PROGRAM, INTERFACE, PRIVACY] {
            let bytes = read(name)?;
            let want = manifest.files.get(name).ok_or_else(|| HeError::file(&dir.join(MANIFEST), format!("lists no hash for {name}")))?;
            if &sha256_hex(&bytes) != want {
                return Err(HeError::file(&dir.join(name), "does not match the manifest's SHA-256 (corrupt or edited; rebuild with `cryptotl server build`)"));
            }
            contents.insert(name, bytes);
        }
        let program: IntegerProgram = serde_json::from_slice(&contents[PROGRAM]).map_err(|e| HeError::file(&dir.join(PROGRAM), e))?;
        let interface: ModelInterface = serde_json::from_slice(&contents[INTERFACE]).map_err(|e| HeError::file(&dir.join(INTERFACE), e))?;
        let privacy = parse(PRIVACY, &contents[PRIVACY])?;
        let params = interface.validate()?;
        let artifact = Self::new(program, params, interface.features.clone(), privacy)?;
        if artifact.interface.model_id != manifest.model_id || artifact.interface.program != interface.program {
            return Err(HeError::file(&dir.join(INTERFACE), "does not describe program.json"));
        }
        // Limits the builder chose (a smaller max batch, say) are kept.
        let max_batch = interface.max_batch;
        Ok(Self { interface: ModelInterface { max_batch, ..artifact.interface }, ..artifact })
    }
}
