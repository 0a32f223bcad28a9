//! Run configuration: one TOML file per run (`configs/*.toml`), parsed with `deny_unknown_fields` and validated
//! before any work starts. Errors name the file, the dotted key and what is allowed.
//!
//! ```
//! let cfg = cryptotl::config::RunConfig::from_toml_str(cryptotl::config::QUICKSTART_TOML, "quickstart.toml", &[])
//!     .unwrap();
//! assert_eq!(cfg.features.dim(), 384);
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The embedded default configuration (`configs/quickstart.toml`), used when `cryptotl run` gets no file.
pub const QUICKSTART_TOML: &str = include_str!("../configs/quickstart.toml");

/// A whole run: data, features, networks, training schedules.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Run name; the default output directory is `runs/<name>`.
    pub name: String,
    /// Seed for splits, parameter initialisation, batching and dropout.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Where `report.json`, `report.md` and the trained head go. Default `runs/<name>`.
    #[serde(default)]
    pub output_dir: Option<PathBuf>,
    /// Where pretrained lower networks are cached, keyed by a hash of what determines them.
    #[serde(default = "default_cache_dir")]
    pub cache_dir: PathBuf,
    /// Text featurizer: a `[features]` table, or the shorthand `features = "minilm"` / `"hashed"` (every other key
    /// at its default).
    #[serde(default, deserialize_with = "features_table_or_kind")]
    pub features: FeaturesConfig,
    /// The server's source dataset (pretraining).
    pub source: DatasetConfig,
    /// The client's target dataset (transfer).
    pub target: DatasetConfig,
    /// Train/validation/test fractions, applied to both datasets.
    #[serde(default)]
    pub split: SplitConfig,
    /// The server's lower network.
    #[serde(default)]
    pub lower: LowerNetConfig,
    /// The client's head.
    #[serde(default)]
    pub head: HeadConfig,
    /// Pretraining schedule (server, source data).
    #[serde(default)]
    pub pretrain: TrainConfig,
    /// Head training schedule (client, target data).
    #[serde(default)]
    pub head_training: TrainConfig,
    /// Which baselines the run also trains and reports.
    #[serde(default)]
    pub baselines: BaselinesConfig,
    /// Learning curves over labelled-set sizes (transfer head, raw-feature head, bag of words).
    #[serde(default)]
    pub curve: CurveConfig,
    /// DP-SGD for the client's head. Absent: the head is trained without differential privacy.
    #[serde(default)]
    pub privacy: Option<PrivacyConfig>,
    /// The empirical privacy audit of the DP-SGD head ([`crate::audit`]), run beside it whenever `[privacy]` is on.
    #[serde(default)]
    pub audit: AuditConfig,
    /// The encrypted (TFHE) evaluation of the lower network. On by default.
    #[serde(default)]
    pub he: HeConfig,
    /// What the server does to protect its source data from the client (who sees the decrypted outputs of the
    /// lower network for inputs it chooses). Both mechanisms are off by default.
    #[serde(default)]
    pub server_privacy: ServerPrivacyConfig,
}

/// The server's protection of its source data: `[server_privacy.weight_noise]` and/or
/// `[server_privacy.dp_pretraining]`. Accounted by [`crate::privacy::server`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerPrivacyConfig {
    /// Gaussian noise on the frozen lower network's weights and biases after pretraining, before quantization.
    #[serde(default)]
    pub weight_noise: Option<WeightNoiseConfig>,
    /// DP-SGD pretraining of the lower network on the source data: the same engine, schedule planner and
    /// accountants as the client's `[privacy]`, run on `[pretrain]`'s schedule.
    #[serde(default)]
    pub dp_pretraining: Option<PrivacyConfig>,
}

/// The Gaussian mechanism on the flattened weight vector of the lower network. Give `noise_std`, or
/// `target_epsilon` (the std is calibrated with OpenDP so that the release spends at most that at `delta`).
///
/// The guarantee holds **only if** `l2_sensitivity` truly bounds how far the weight vector (all weights and biases of
/// the lower network, flattened) can move when one source example is added or removed. Ordinary training gives no
/// such bound; DP pretraining (clipped gradients) or an analysis of the training procedure must supply it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WeightNoiseConfig {
    /// Switch the noise on or off without deleting the table.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Declared L2 sensitivity Δ of the flattened weight vector to adding or removing one source example.
    pub l2_sensitivity: f64,
    /// Noise std per weight (exclusive with `target_epsilon`).
    #[serde(default)]
    pub noise_std: Option<f64>,
    /// ε the release may spend at `delta`; the smallest std reaching it is used (exclusive with `noise_std`).
    #[serde(default)]
    pub target_epsilon: Option<f64>,
    /// δ. Default 0.1/N for N source training examples, stated in the report.
    #[serde(default)]
    pub delta: Option<f64>,
    /// Fixed seed for the noise. FOR TESTS ONLY: whoever knows the seed can remove the noise.
    #[serde(default)]
    pub insecure_seed: Option<u64>,
}

/// The TFHE stage: how the frozen lower network is quantized and which tfhe-rs parameter set encrypts it.
/// See `cryptotl_server::program` for the exact integer semantics.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HeConfig {
    /// Evaluate the lower network under encryption (off: plaintext float, for experiments only).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// A vetted tfhe-rs 1.8 parameter set by its constant's name.
    #[serde(default = "default_parameter_set")]
    pub parameter_set: String,
    /// Bits per input feature level (features in [0, 1] become 0..2^bits - 1).
    #[serde(default = "default_input_bits")]
    pub input_bits: u32,
    /// Accumulator bits B the calibrated range of each neuron is mapped onto.
    #[serde(default = "default_accumulator_bits")]
    pub accumulator_bits: u32,
    /// Top bits of the accumulator the bootstrap reads (lookup-table index bits).
    #[serde(default = "default_lookup_bits")]
    pub lookup_bits: u32,
    /// Bits of the activation's output levels.
    #[serde(default = "default_output_bits")]
    pub output_bits: u32,
    /// How each neuron's pre-activation range is chosen: `source` (min/max over the server's source training
    /// features, plus the margin: fine resolution, but a client whose features differ can fall outside it and its
    /// lookups wrap around) or `input_box` (the exact range over every input in [0, 1]^d, plus the margin: never
    /// wraps, coarser resolution).
    #[serde(default)]
    pub calibration: Calibration,
    /// Widening of each neuron's calibrated pre-activation range, as a fraction of its width on each side.
    #[serde(default = "default_calibration_margin")]
    pub calibration_margin: f32,
    /// Seed keys and encryption noise deterministically. INSECURE (the keys become guessable): for reproducible
    /// tests only. Absent: fresh randomness from the CPU/OS.
    #[serde(default)]
    pub insecure_seed: Option<u64>,
    /// The model owner's server: `local` (the one-process simulation: the server's service runs in this process
    /// and the decrypted outputs are checked against its clear-integer program) or the URL of a `cryptotl serve`
    /// (`https://host:port`; `http://` only for a loopback host). With a URL, the client never sees the server's
    /// network: it fetches the interface, uploads its evaluation key once, sends encrypted batches.
    #[serde(default = "default_server")]
    pub server: String,
    /// Environment variable holding the bearer token for a remote server (when `token_file` is not set).
    #[serde(default = "default_token_env")]
    pub token_env: String,
    /// File holding the bearer token for a remote server (first line; takes precedence over `token_env`).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// PEM certificate to trust for a remote server (a private CA or the server's self-signed certificate).
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
    /// Samples per evaluation request (capped by the server's `max_batch`).
    #[serde(default = "default_he_batch")]
    pub batch: usize,
}

/// Where the encrypted lower network is evaluated (see [`HeConfig::server`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerLocation {
    /// The one-process simulation.
    Local,
    /// A remote `cryptotl serve` at this base URL.
    Remote(String),
}

fn default_server() -> String {
    "local".into()
}
fn default_token_env() -> String {
    "CRYPTOTL_TOKEN".into()
}
fn default_he_batch() -> usize {
    crate::he::DEFAULT_BATCH
}
/// Where the encrypted stage's per-neuron ranges come from (see [`HeConfig::calibration`]).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Calibration {
    /// Min/max over the server's source training features.
    #[default]
    Source,
    /// The exact range over the whole input box [0, 1]^d.
    InputBox,
}

fn default_parameter_set() -> String {
    cryptotl_server::ParameterSet::default().name().into()
}
fn default_input_bits() -> u32 {
    4
}
fn default_accumulator_bits() -> u32 {
    12
}
fn default_lookup_bits() -> u32 {
    5
}
fn default_output_bits() -> u32 {
    7
}
fn default_calibration_margin() -> f32 {
    0.1
}
impl Default for HeConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            parameter_set: default_parameter_set(),
            input_bits: default_input_bits(),
            accumulator_bits: default_accumulator_bits(),
            lookup_bits: default_lookup_bits(),
            output_bits: default_output_bits(),
            calibration: Calibration::default(),
            calibration_margin: default_calibration_margin(),
            insecure_seed: None,
            server: default_server(),
            token_env: default_token_env(),
            token_file: None,
            ca_cert: None,
            batch: default_he_batch(),
        }
    }
}

impl HeConfig {
    /// The parameter set named by `parameter_set`.
    pub fn params(&self) -> Result<cryptotl_server::ParameterSet> {
        Ok(cryptotl_server::ParameterSet::from_name(&self.parameter_set)?)
    }

    /// Where the lower network is evaluated, checked: `local`, an `https://` URL, or an `http://` URL whose host is
    /// a loopback address (a token must not cross a network in the clear).
    pub fn server_location(&self) -> std::result::Result<ServerLocation, String> {
        let s = self.server.trim();
        if s == "local" {
            return Ok(ServerLocation::Local);
        }
        let (scheme, rest) = s.split_once("://").ok_or_else(|| format!("`{s}` is neither `local` nor a URL (https://host:port)"))?;
        let host = rest.split('/').next().unwrap_or("");
        let hostname = match host.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(""),
            None => host.rsplit_once(':').map_or(host, |(h, _)| h),
        };
        if hostname.is_empty() {
            return Err(format!("`{s}` has no host"));
        }
        match scheme {
            "https" => Ok(ServerLocation::Remote(s.trim_end_matches('/').into())),
            "http" => {
                let loopback = hostname == "localhost" || hostname.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
                if !loopback {
                    return Err(format!("`{s}`: plain http:// is only allowed to a loopback host (the bearer token would cross the network in the clear); use https://"));
                }
                Ok(ServerLocation::Remote(s.trim_end_matches('/').into()))
            }
            other => Err(format!("`{s}`: scheme `{other}` is not http or https")),
        }
    }

    /// The bearer token for a remote server: the first line of `token_file`, else the environment variable
    /// `token_env`.
    pub fn token(&self) -> Result<String> {
        let err = |m: String| Error::Config { file: "<config>".into(), key: "he.token_file".into(), message: m };
        let token = match &self.token_file {
            Some(p) => std::fs::read_to_string(p).map_err(|e| err(format!("{}: {e}", p.display())))?.lines().next().unwrap_or("").trim().to_string(),
            None => std::env::var(&self.token_env).map_err(|_| Error::Config {
                file: "<config>".into(),
                key: "he.token_env".into(),
                message: format!("the environment variable {} holds no token (set it, or set he.token_file)", self.token_env),
            })?,
        };
        if token.is_empty() {
            return Err(err("the token is empty".into()));
        }
        Ok(token)
    }
}

/// DP-SGD for the client head: Poisson sampling, per-example clipping, Gaussian noise, accounted by
/// `crate::privacy`. Give `noise_multiplier` (σ), or `target_epsilon` (σ is calibrated so that the whole schedule
/// spends at most that), or both (the run refuses to start if the schedule would spend more than the target).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PrivacyConfig {
    /// Switch DP-SGD on or off without deleting the table.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Per-example gradient clipping norm C (over all parameters of the head).
    #[serde(default = "default_clip")]
    pub max_grad_norm: f64,
    /// Noise multiplier σ: noise std = σ·C.
    #[serde(default)]
    pub noise_multiplier: Option<f64>,
    /// ε the whole schedule may spend (at `delta`).
    #[serde(default)]
    pub target_epsilon: Option<f64>,
    /// Hard budget: training stops at the last step whose ε stays within it (a privacy filter).
    #[serde(default)]
    pub max_epsilon: Option<f64>,
    /// δ. Default 0.1/N for N training examples (below 1/N), stated in the report.
    #[serde(default)]
    pub delta: Option<f64>,
    /// How the steps are taken: `full_batch` (the default for the client's head: every step sees every example,
    /// q = 1, for `steps` steps at `learning_rate`; the privacy loss then has an exact closed form) or `minibatch`
    /// (Poisson batches of `sampling_rate`, `epochs` of the training schedule; the default for DP pretraining).
    #[serde(default)]
    pub recipe: Option<DpRecipe>,
    /// `full_batch`: gradient steps (default 100).
    #[serde(default)]
    pub steps: Option<usize>,
    /// `full_batch`: Adam's learning rate (default 0.05; not tuned per run, so it spends no privacy).
    #[serde(default)]
    pub learning_rate: Option<f64>,
    /// `minibatch`: Poisson sampling rate q. Default `batch_size / N` of the training schedule.
    #[serde(default)]
    pub sampling_rate: Option<f64>,
    /// Accountant of record: `tightest` (default: exact at q = 1, else the smaller of the `pld` and `rdp` bounds),
    /// `pld`, `rdp`, `zcdp` (q = 1 only). The report shows all that apply.
    #[serde(default = "default_accountant")]
    pub accountant: crate::privacy::AccountantKind,
    /// Fixed seed for sampling and noise. FOR TESTS ONLY: whoever knows the seed can remove the noise.
    #[serde(default)]
    pub insecure_seed: Option<u64>,
}

impl PrivacyConfig {
    /// DP-SGD with every default and σ calibrated to spend `target_epsilon` (what sweeps use when the config has no
    /// table of its own).
    pub fn with_target_epsilon(target_epsilon: f64) -> Self {
        Self {
            enabled: true,
            max_grad_norm: default_clip(),
            noise_multiplier: None,
            target_epsilon: Some(target_epsilon),
            max_epsilon: None,
            delta: None,
            recipe: None,
            steps: None,
            learning_rate: None,
            sampling_rate: None,
            accountant: default_accountant(),
            insecure_seed: None,
        }
    }
}

/// How DP-SGD takes its steps (`[privacy] recipe`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DpRecipe {
    /// Full-batch DP gradient descent: q = 1, `steps` steps, Adam at `learning_rate`.
    FullBatch,
    /// DP-SGD on Poisson batches of rate `sampling_rate` for the schedule's epochs and learning rate.
    Minibatch,
}

/// Full-batch steps when `[privacy] steps` is not given. Chosen on the server's side of the quickstart, not per run.
pub const DEFAULT_DP_STEPS: usize = 100;
/// Full-batch learning rate when `[privacy] learning_rate` is not given.
pub const DEFAULT_DP_LEARNING_RATE: f64 = 0.05;

fn default_clip() -> f64 {
    1.0
}
fn default_accountant() -> crate::privacy::AccountantKind {
    crate::privacy::AccountantKind::Tightest
}

fn default_seed() -> u64 {
    42
}
fn default_cache_dir() -> PathBuf {
    PathBuf::from("runs/cache")
}

/// Featurizer settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FeaturesConfig {
    /// Featurizer kind. `hashed`: hashed word n-gram TF-IDF (no model download). `minilm`: all-MiniLM-L6-v2
    /// sentence embeddings (384 floats; `python3 datasets/fetch_model.py` fetches the model).
    #[serde(default)]
    pub kind: FeatureKind,
    /// Output dimension of `hashed` (the lower network's input width). Default 768, as in the paper. `minilm` is
    /// always 384: leave this out (or set 384).
    #[serde(default)]
    pub dim: Option<usize>,
    /// `hashed`: longest word n-gram hashed (1 = words, 2 = words and bigrams).
    #[serde(default = "default_ngrams")]
    pub ngrams: usize,
    /// `minilm`: the model folder.
    #[serde(default = "default_model_dir")]
    pub model_dir: PathBuf,
    /// `minilm`: texts per forward pass.
    #[serde(default = "default_embed_batch")]
    pub batch_size: usize,
    /// `minilm`: the embedding cache (keyed by model hash and text hash).
    #[serde(default = "default_embedding_cache")]
    pub embedding_cache_dir: PathBuf,
    /// How features are mapped into [0, 1] (what the encrypted stage quantizes): `fitted` (per-feature min-max over
    /// the party's own training split; each party fits its own) or `fixed` (a data-independent map: MiniLM
    /// coordinates from [-0.25, 0.25], hashed TF-IDF weights from [0, 1]; values outside are clipped). `fixed` gives
    /// client and server the same map without either seeing the other's statistics.
    #[serde(default)]
    pub scaling: Scaling,
    /// `minilm`: a text past 256 tokens is embedded whole, as overlapping windows whose embeddings are averaged;
    /// this keeps only its first `max_windows` windows (for corpora of very long texts, e.g. e-mails). Default:
    /// every window.
    #[serde(default)]
    pub max_windows: Option<usize>,
}

/// Which text featurizer (`features.kind`). Written and read as `"hashed"` / `"minilm"`; any other name is refused
/// with the allowed ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum FeatureKind {
    /// Hashed word n-gram TF-IDF: no model download (the library's default).
    #[default]
    Hashed,
    /// all-MiniLM-L6-v2 sentence embeddings (384 floats; the shipped configs use it).
    Minilm,
}

impl FeatureKind {
    /// Every kind, in the order messages list them.
    pub const ALL: [FeatureKind; 2] = [FeatureKind::Hashed, FeatureKind::Minilm];

    /// The name configs, reports and the CLI use.
    pub fn name(self) -> &'static str {
        match self {
            FeatureKind::Hashed => "hashed",
            FeatureKind::Minilm => "minilm",
        }
    }
}

impl std::fmt::Display for FeatureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for FeatureKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Self::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| {
            let allowed: Vec<String> = Self::ALL.iter().map(|k| format!("{:?}", k.name())).collect();
            format!("key `features.kind`: unknown featurizer {s:?}; allowed: {}", allowed.join(", "))
        })
    }
}

impl Serialize for FeatureKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for FeatureKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// How features are scaled into [0, 1] (see [`FeaturesConfig::scaling`]).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Scaling {
    /// Per-feature min-max over the party's own training split.
    #[default]
    Fitted,
    /// A data-independent range per featurizer kind.
    Fixed,
}

/// `features = "minilm"` (a kind with defaults) or a full `[features]` table, keeping the table's own error messages.
fn features_table_or_kind<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<FeaturesConfig, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = FeaturesConfig;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a featurizer name (\"hashed\", \"minilm\") or a [features] table")
        }
        fn visit_str<E: serde::de::Error>(self, kind: &str) -> std::result::Result<FeaturesConfig, E> {
            Ok(FeaturesConfig { kind: kind.parse().map_err(E::custom)?, ..FeaturesConfig::default() })
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> std::result::Result<FeaturesConfig, A::Error> {
            FeaturesConfig::deserialize(serde::de::value::MapAccessDeserializer::new(map))
        }
    }
    d.deserialize_any(V)
}

impl FeaturesConfig {
    /// The feature width: 384 for `minilm`, else `dim` (default 768).
    pub fn dim(&self) -> usize {
        match self.kind {
            FeatureKind::Minilm => crate::features::minilm::MINILM_DIM,
            FeatureKind::Hashed => self.dim.unwrap_or(default_dim()),
        }
    }
}

fn default_model_dir() -> PathBuf {
    PathBuf::from(crate::features::minilm::DEFAULT_MODEL_DIR)
}
fn default_embed_batch() -> usize {
    32
}
fn default_embedding_cache() -> PathBuf {
    PathBuf::from("runs/cache/embeddings")
}

fn default_dim() -> usize {
    768
}
fn default_ngrams() -> usize {
    2
}

impl Default for FeaturesConfig {
    fn default() -> Self {
        Self {
            kind: FeatureKind::default(),
            dim: None,
            ngrams: default_ngrams(),
            model_dir: default_model_dir(),
            batch_size: default_embed_batch(),
            embedding_cache_dir: default_embedding_cache(),
            max_windows: None,
            scaling: Scaling::default(),
        }
    }
}

/// The on-disk formats the data loaders read. See `crate::data` for each layout.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DatasetFormat {
    /// Delimited text with a label column and a text column (the normalised `label,text` files, a
    /// `review,sentiment` IMDB CSV, the raw Pang & Lee or CrowdFlower files).
    Csv,
    /// A JSON array of objects with a text field and a label field (Kotzias et al. sentences).
    Json,
    /// The Large Movie Review Dataset tree: `<root>/{train,test}/{pos,neg}/*.txt`.
    AclImdb,
    /// A folder of RFC 822 e-mails in sub-folders whose names start with `spam` or `ham` (SpamAssassin).
    EmailDir,
}

/// One dataset: a format and one or more paths of that format, concatenated.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DatasetConfig {
    /// Human-readable name for reports.
    pub name: String,
    /// The layout of the files.
    pub format: DatasetFormat,
    /// Files or folders (relative paths resolve against the working directory). `embedded:NAME` names a dataset
    /// shipped inside the binary (`imdb_sentences`, `yelp_sentences`, `amazon_sentences`).
    pub paths: Vec<String>,
    /// Text column (CSV header name, or 0-based index when `header = false`) / JSON field.
    #[serde(default = "default_text_column")]
    pub text_column: String,
    /// Label column / JSON field.
    #[serde(default = "default_label_column")]
    pub label_column: String,
    /// Whether a CSV file starts with a header row.
    #[serde(default = "default_true")]
    pub header: bool,
    /// Label values meaning the positive class (1).
    #[serde(default = "default_positive")]
    pub positive: Vec<String>,
    /// Label values meaning the negative class (0).
    #[serde(default = "default_negative")]
    pub negative: Vec<String>,
    /// Label values whose rows are skipped (e.g. `neutral`); any other value is an error.
    #[serde(default)]
    pub ignore: Vec<String>,
    /// Decode invalid UTF-8 lossily (U+FFFD) and report the count, instead of rejecting the file.
    #[serde(default)]
    pub lossy_utf8: bool,
    /// Use at most this many examples (a stratified, seeded subsample) — for quick runs.
    #[serde(default)]
    pub max_examples: Option<usize>,
    /// `[source]` only: pretraining sees every path equally often (the training and validation examples of the
    /// smaller paths repeated up to the largest path's count), so a large source (e.g. 23k tweets) does not drown
    /// the others. Default false: the paths pooled as they are.
    #[serde(default)]
    pub balance_paths: bool,
}

impl DatasetConfig {
    /// A dataset of `format` at `paths` with every other key at its default (`label`/`text` columns, header,
    /// labels `1`/`0`, strict UTF-8).
    pub fn new(name: &str, format: DatasetFormat, paths: &[&str]) -> Self {
        Self {
            name: name.into(),
            format,
            paths: paths.iter().map(|p| p.to_string()).collect(),
            text_column: default_text_column(),
            label_column: default_label_column(),
            header: true,
            positive: default_positive(),
            negative: default_negative(),
            ignore: vec![],
            lossy_utf8: false,
            max_examples: None,
            balance_paths: false,
        }
    }
}

fn default_text_column() -> String {
    "text".into()
}
fn default_label_column() -> String {
    "label".into()
}
fn default_true() -> bool {
    true
}
fn default_positive() -> Vec<String> {
    vec!["1".into()]
}
fn default_negative() -> Vec<String> {
    vec!["0".into()]
}

/// Split fractions; train gets the rest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SplitConfig {
    /// Fraction of each class held out for validation (early stopping).
    #[serde(default = "default_validation")]
    pub validation: f64,
    /// Fraction of each class held out for the final test.
    #[serde(default = "default_test")]
    pub test: f64,
    /// Examples whose text occurs more than once: `together` (default) keeps every copy in one part (the
    /// earliest of train, validation, test that holds one), so no test score rests on a text seen in training;
    /// `allow` leaves the copies where the shuffle put them.
    #[serde(default)]
    pub duplicates: Duplicates,
}

/// What a split does with texts that occur more than once in a dataset.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Duplicates {
    /// Every copy of a text goes to one part: training if any copy was drawn for it, else validation.
    #[default]
    Together,
    /// Copies stay where the stratified shuffle put them.
    Allow,
}
fn default_validation() -> f64 {
    0.15
}
fn default_test() -> f64 {
    0.2
}
impl Default for SplitConfig {
    fn default() -> Self {
        Self { validation: default_validation(), test: default_test(), duplicates: Duplicates::default() }
    }
}

/// Activation of the lower network (evaluated later as a TFHE lookup table).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// max(0, x).
    Relu,
    /// The CryptoTL reference's cubic approximation of ReLU (for comparison with CKKS).
    CubicRelu,
    /// tanh.
    Tanh,
    /// No activation (the network is then linear).
    Identity,
}

/// The server's lower network: conv1d(k) -> dense(hidden) -> activation -> avg-pool(pool, stride 1) -> dense(output).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LowerNetConfig {
    /// Conv1d kernel (1 filter, same padding, no bias). 0 disables the convolution.
    #[serde(default = "default_conv_kernel")]
    pub conv_kernel: usize,
    /// Width of the first dense layer.
    #[serde(default = "default_hidden")]
    pub hidden: usize,
    /// Activation after the first dense layer.
    #[serde(default = "default_activation")]
    pub activation: Activation,
    /// Average-pool window (stride 1); 1 disables pooling.
    #[serde(default = "default_pool")]
    pub pool: usize,
    /// Width of the output dense layer (what the client receives). 0 ends the network at the pooling.
    #[serde(default = "default_output")]
    pub output: usize,
    /// Drop, before compiling, every ReLU neuron that never fires on the server's source training data (its
    /// pre-activation range ends at or below 0): it outputs 0 on every source input and costs one bootstrap per
    /// sample. ReLU networks without pooling only; decided from the calibration ranges the program is compiled
    /// from, so it reveals nothing they do not. Not part of the pretraining key (the pretrained network is the same).
    #[serde(default = "default_prune_dead")]
    pub prune_dead: bool,
}
fn default_prune_dead() -> bool {
    true
}
fn default_conv_kernel() -> usize {
    9
}
fn default_hidden() -> usize {
    32
}
fn default_activation() -> Activation {
    Activation::Relu
}
fn default_pool() -> usize {
    1
}
fn default_output() -> usize {
    0
}
impl Default for LowerNetConfig {
    fn default() -> Self {
        Self {
            conv_kernel: default_conv_kernel(),
            hidden: default_hidden(),
            activation: default_activation(),
            pool: default_pool(),
            output: default_output(),
            prune_dead: default_prune_dead(),
        }
    }
}

impl LowerNetConfig {
    /// The CryptoTL paper's lower network: conv1d(9) -> dense(768) -> ReLU -> avg-pool(3) -> dense(766).
    pub fn paper() -> Self {
        Self { conv_kernel: 9, hidden: 768, activation: Activation::Relu, pool: 3, output: 766, prune_dead: default_prune_dead() }
    }

    /// The paper's network as it runs under encryption: it ends at the pooled activation (768 -> 768 ReLU ->
    /// avg-pool 3 -> 766); the client's head takes the role of the last dense layer.
    pub fn paper_encrypted() -> Self {
        Self { output: 0, ..Self::paper() }
    }

    /// Width of what the lower network outputs.
    pub fn output_dim(&self) -> usize {
        if self.output > 0 { self.output } else { self.hidden + 1 - self.pool }
    }
}

/// Memory the system can give this process now (`MemAvailable` of `/proc/meminfo`, in bytes); `None` where
/// that is not known (not Linux, or unreadable), and then only the fixed bound applies.
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// What the client's head is: the linear probe or the CryptoTL paper's MLP.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HeadKind {
    /// L2-regularised logistic regression (the standard linear probe): fitted exactly by L-BFGS on standardised
    /// inputs without DP, by DP-SGD with `[privacy]`. The default: it is the best head on every shipped target's
    /// validation split at small and full label counts (README "Heads for small data").
    #[default]
    Linear,
    /// The paper's head: dense(hidden) -> ReLU -> max-pool -> dropout -> dense(1), trained with Adam.
    Mlp,
}

/// What the client's head reads.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum HeadInputs {
    /// The decrypted outputs of the server's frozen network only.
    #[default]
    #[serde(rename = "transfer")]
    Transfer,
    /// The decrypted outputs side by side with the client's own (scaled) features: the client owns both, so
    /// using them together costs no privacy and lets the head fall back on its own features where transfer is weak.
    #[serde(rename = "transfer+own")]
    TransferPlusOwn,
    /// The decrypted outputs beside one more column: the score of a bag-of-words logistic regression fitted on the
    /// client's own training texts, out of fold for the training rows (each row scored by a model that did not see
    /// it), so the head learns how far to trust it. The client holds the texts, so this costs no privacy towards
    /// the server; but the score is fitted on the labels without DP, so it cannot go with `[privacy]`.
    #[serde(rename = "transfer+bow")]
    TransferPlusBow,
}

impl HeadInputs {
    /// The config spelling.
    pub fn name(self) -> &'static str {
        match self {
            Self::Transfer => "transfer",
            Self::TransferPlusOwn => "transfer+own",
            Self::TransferPlusBow => "transfer+bow",
        }
    }
}

/// The client's head. `kind = "linear"` (default): logistic regression with inverse L2 strength `c`.
/// `kind = "mlp"`: dense(hidden) -> ReLU -> max-pool(pool, stride 1) -> dropout -> dense(1) -> sigmoid.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HeadConfig {
    /// `linear` (logistic regression) or `mlp` (the paper's head).
    #[serde(default)]
    pub kind: HeadKind,
    /// `transfer` (the decrypted outputs), `transfer+own` (those and the client's own features side by side) or
    /// `transfer+bow` (those and a cross-fitted bag-of-words score).
    #[serde(default)]
    pub inputs: HeadInputs,
    /// `linear`: inverse L2 strength, as scikit-learn's `C` (the objective is C·Σ loss + ½‖w‖², bias not
    /// penalised); larger is weaker regularisation. Ignored by DP-SGD, whose clipping and noise regularise.
    #[serde(default = "default_c")]
    pub c: f64,
    /// `mlp`: width of the head's dense layer. 0 means "same as its input" (766 on the paper network).
    #[serde(default)]
    pub hidden: usize,
    /// `mlp`: max-pool window (stride 1); 1 disables pooling.
    #[serde(default = "default_pool")]
    pub pool: usize,
    /// `mlp`: dropout probability during training.
    #[serde(default = "default_dropout")]
    pub dropout: f64,
    /// What the server's network is applied to: `text` (each text's feature vector, the default) or `sentence`
    /// (each sentence of a text separately, through the same encrypted path; the client averages a text's
    /// decrypted outputs). For long texts on a network pretrained on sentences.
    #[serde(default, skip_serializing_if = "TransferUnit::is_text")]
    pub transfer_unit: TransferUnit,
    /// `sentence`: at most this many sentences per text go to the server, evenly spaced through the text (each
    /// costs one encrypted evaluation).
    #[serde(default = "default_max_sentences", skip_serializing_if = "is_default_max_sentences")]
    pub max_sentences: usize,
}

/// What one encrypted evaluation of the server's network covers (see [`HeadConfig::transfer_unit`]).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TransferUnit {
    /// The whole text's feature vector.
    #[default]
    Text,
    /// Each sentence's feature vector; a text's outputs are the mean over its sentences.
    Sentence,
}

impl TransferUnit {
    fn is_text(&self) -> bool {
        *self == TransferUnit::Text
    }
}

fn default_max_sentences() -> usize {
    16
}
fn is_default_max_sentences(n: &usize) -> bool {
    *n == default_max_sentences()
}
fn default_dropout() -> f64 {
    0.2
}
fn default_c() -> f64 {
    1.0
}
impl Default for HeadConfig {
    fn default() -> Self {
        Self {
            kind: HeadKind::default(),
            inputs: HeadInputs::default(),
            c: default_c(),
            hidden: 0,
            pool: default_pool(),
            dropout: default_dropout(),
            transfer_unit: TransferUnit::default(),
            max_sentences: default_max_sentences(),
        }
    }
}

impl HeadConfig {
    /// The paper's MLP head with `hidden` units (0 = as wide as its input), max-pool `pool` and dropout `dropout`.
    pub fn mlp(hidden: usize, pool: usize, dropout: f64) -> Self {
        Self { kind: HeadKind::Mlp, hidden, pool, dropout, ..Self::default() }
    }
}

/// A training schedule: Adam on binary cross-entropy with early stopping on the validation split.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Maximum number of epochs.
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    /// Mini-batch size.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Adam learning rate.
    #[serde(default = "default_learning_rate")]
    pub learning_rate: f64,
    /// Stop after this many epochs without validation-loss improvement (0 = never stop early).
    #[serde(default = "default_patience")]
    pub patience: usize,
}
fn default_epochs() -> usize {
    20
}
fn default_batch_size() -> usize {
    32
}
fn default_learning_rate() -> f64 {
    1e-3
}
fn default_patience() -> usize {
    3
}
impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: default_epochs(),
            batch_size: default_batch_size(),
            learning_rate: default_learning_rate(),
            patience: default_patience(),
        }
    }
}

/// Baselines trained in the same run, for comparison with transfer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BaselinesConfig {
    /// The head trained directly on the target's scaled features (no transfer).
    #[serde(default = "default_true")]
    pub raw_features_head: bool,
    /// The whole network (lower + head) trained from scratch on the target only.
    #[serde(default = "default_true")]
    pub target_only_network: bool,
    /// Bag-of-words logistic regression on the target alone: TF-IDF of word 1-2-grams hashed to 2^18 buckets,
    /// L2 with C chosen on the validation split, no transfer and no privacy: the strongest simple baseline a
    /// practitioner would try first.
    #[serde(default = "default_true")]
    pub bag_of_words: bool,
}
impl Default for BaselinesConfig {
    fn default() -> Self {
        Self { raw_features_head: true, target_only_network: true, bag_of_words: true }
    }
}

/// Learning curves: once the target's samples have gone through the (encrypted) lower network, the heads are
/// trained again on seeded subsets of the training split, of sizes 16, 32, 64, ... up to all of it. No extra
/// encryption is needed: the subsets reuse the decrypted outputs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CurveConfig {
    /// Compute the curves in every `run` (`cryptotl curve` computes them regardless).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Subset sizes. Default: 16, 32, 64, ... doubling below the training split's size, then all of it.
    #[serde(default)]
    pub sizes: Option<Vec<usize>>,
    /// Seeded draws per size (averaged; the spread is reported).
    #[serde(default = "default_draws")]
    pub draws: usize,
}
fn default_draws() -> usize {
    5
}
impl Default for CurveConfig {
    fn default() -> Self {
        Self { enabled: true, sizes: None, draws: default_draws() }
    }
}

/// `[audit]`: the one-run privacy audit of the DP-SGD head, in every run with `[privacy]` and the linear head
/// (a second DP-SGD training of the head with canaries: seconds).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Audit whenever `[privacy]` is on.
    pub enabled: bool,
    /// Canaries, each included with probability 1/2.
    pub canaries: usize,
    /// Seed of the canaries' labels and inclusion (not of the training noise).
    pub seed: u64,
}
impl Default for AuditConfig {
    fn default() -> Self {
        Self { enabled: true, canaries: crate::audit::DEFAULT_CANARIES, seed: 0 }
    }
}

impl RunConfig {
    /// Read, override (`key=value` pairs, TOML values) and validate a config file.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::ConfigSyntax {
            file: path.display().to_string(),
            message: format!("cannot read: {e}"),
        })?;
        Self::from_toml_str(&text, &path.display().to_string(), overrides)
    }

    /// Parse, override and validate config text. `file` is used in error messages.
    pub fn from_toml_str(text: &str, file: &str, overrides: &[String]) -> Result<Self> {
        let syntax = |e: toml::de::Error| Error::ConfigSyntax { file: file.into(), message: e.to_string() };
        // Parse from text (not from a Value) so that errors carry line, column and the offending key.
        let cfg: RunConfig = if overrides.is_empty() {
            toml::from_str(text).map_err(syntax)?
        } else {
            let mut value: toml::Table = toml::from_str(text).map_err(syntax)?;
            for ov in overrides {
                apply_override(&mut value, ov)?;
            }
            let merged = toml::to_string(&value).expect("a parsed TOML table serialises");
            let file = format!("{file} (with --set overrides)");
            toml::from_str(&merged).map_err(|e| Error::ConfigSyntax { file, message: e.to_string() })?
        };
        cfg.validate(file)?;
        Ok(cfg)
    }

    /// Write the config (every default filled in) as TOML, e.g. beside a checkpoint.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = toml::to_string(self).map_err(|e| Error::Internal(format!("the config does not serialise: {e}")))?;
        crate::atomic::write(path, text.as_bytes())
    }

    /// The output directory of this run.
    pub fn output_dir(&self) -> PathBuf {
        self.output_dir.clone().unwrap_or_else(|| PathBuf::from("runs").join(&self.name))
    }

    /// Check every value that serde cannot check. Called by the constructors; call again after editing a config.
    pub fn validate(&self, file: &str) -> Result<()> {
        let err = |key: &str, message: String| Error::Config { file: file.into(), key: key.into(), message };
        if self.name.trim().is_empty()
            || !self.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(err("name", format!("must be non-empty and use only letters, digits, '-', '_', '.'; got {:?}", self.name)));
        }
        if self.name.chars().all(|c| c == '.') {
            return Err(err("name", format!("{:?} names the current or parent directory; the run's output goes to runs/<name>", self.name)));
        }
        if self.name.len() > 100 {
            return Err(err("name", format!("is {} characters long; at most 100", self.name.len())));
        }
        if let Some(dir) = &self.output_dir
            && (dir.as_os_str().is_empty() || dir.components().all(|c| matches!(c, std::path::Component::CurDir | std::path::Component::ParentDir)))
        {
            return Err(err("output_dir", format!("{:?} is not a run directory of its own (it would write config.toml, report.* and head.bin into it); name a new or dedicated folder", dir.display().to_string())));
        }
        let f = &self.features;
        match (f.kind, f.dim) {
            (FeatureKind::Hashed, Some(d)) if !(8..=65_536).contains(&d) => return Err(err("features.dim", format!("must be in 8..=65536, got {d}"))),
            (FeatureKind::Minilm, Some(d)) if d != crate::features::minilm::MINILM_DIM => {
                return Err(err("features.dim", format!("minilm embeddings have {} dimensions; leave features.dim out (got {d})", crate::features::minilm::MINILM_DIM)));
            }
            _ => {}
        }
        if f.max_windows == Some(0) {
            return Err(err("features.max_windows", "must be at least 1 (omit it to embed whole texts)".into()));
        }
        if f.batch_size == 0 || f.batch_size > 4096 {
            return Err(err("features.batch_size", format!("must be in 1..=4096, got {}", f.batch_size)));
        }
        if !(1..=3).contains(&self.features.ngrams) {
            return Err(err("features.ngrams", format!("must be 1, 2 or 3, got {}", self.features.ngrams)));
        }
        for (key, ds) in [("source", &self.source), ("target", &self.target)] {
            validate_dataset(ds, key, &err)?;
        }
        if self.target.balance_paths {
            return Err(err("target.balance_paths", "only the server's pretraining balances its source paths; remove it from [target]".into()));
        }
        let s = &self.split;
        for (k, v) in [("split.validation", s.validation), ("split.test", s.test)] {
            if !(v.is_finite() && v > 0.0 && v < 1.0) {
                return Err(err(k, format!("must be a fraction in (0, 1), got {v}")));
            }
        }
        if s.validation + s.test >= 0.9 {
            return Err(err("split", format!(
                "validation + test = {} leaves less than 10% for training; lower them", s.validation + s.test)));
        }
        let l = &self.lower;
        if l.conv_kernel > 0 && l.conv_kernel % 2 == 0 {
            return Err(err("lower.conv_kernel", format!("must be odd (same padding) or 0 to disable, got {}", l.conv_kernel)));
        }
        if l.conv_kernel > self.features.dim() {
            return Err(err("lower.conv_kernel", format!("{} is wider than the feature width {}", l.conv_kernel, self.features.dim())));
        }
        if l.hidden == 0 || l.hidden > 65_536 {
            return Err(err("lower.hidden", format!("must be in 1..=65536, got {}", l.hidden)));
        }
        if l.pool == 0 || l.pool > l.hidden {
            return Err(err("lower.pool", format!("must be in 1..=lower.hidden ({}), got {}", l.hidden, l.pool)));
        }
        if l.output > 65_536 {
            return Err(err("lower.output", format!("must be at most 65536 (0 = no output layer), got {}", l.output)));
        }
        // A size check before anything is allocated: the first dense layer's weights, their gradient and Adam's
        // two moments (4 copies of f32), and the same again for the encrypted stage's folded matrix.
        let weights = (self.features.dim() as u128) * (l.hidden as u128) + ((l.hidden + 1 - l.pool) as u128) * (l.output as u128);
        const MAX_WEIGHTS: u128 = 64 << 20;
        if weights > MAX_WEIGHTS {
            return Err(err("lower.hidden", format!(
                "the lower network would have {weights} weights ({:.1} GiB to train); at most {MAX_WEIGHTS} (features.dim x lower.hidden): lower one of them",
                (weights * 16) as f64 / (1u64 << 30) as f64)));
        }
        // And against this machine: the estimate (bytes) beside what the system has free.
        let estimate = (weights * 32) as u64;
        if let Some(available) = available_memory()
            && estimate > available
        {
            return Err(err("lower.hidden", format!(
                "the lower network would need about {:.1} GiB to train and compile ({weights} weights x 4 copies x 2 stages of f32), more than the {:.1} GiB this machine has available; lower features.dim or lower.hidden",
                estimate as f64 / (1u64 << 30) as f64, available as f64 / (1u64 << 30) as f64)));
        }
        let h = &self.head;
        let head_hidden = if h.hidden == 0 { l.output_dim() } else { h.hidden };
        if h.pool == 0 || h.pool > head_hidden {
            return Err(err("head.pool", format!("must be in 1..=head width ({head_hidden}), got {}", h.pool)));
        }
        if !(h.dropout.is_finite() && (0.0..1.0).contains(&h.dropout)) {
            return Err(err("head.dropout", format!("must be in [0, 1), got {}", h.dropout)));
        }
        if !(h.c.is_finite() && h.c > 0.0 && h.c <= 1e12) {
            return Err(err("head.c", format!("must be a number in (0, 1e12] (inverse L2 strength), got {}", h.c)));
        }
        if !(1..=256).contains(&h.max_sentences) {
            return Err(err("head.max_sentences", format!("must be in 1..=256 (encrypted evaluations per text), got {}", h.max_sentences)));
        }
        let c = &self.curve;
        if c.draws == 0 || c.draws > 1000 {
            return Err(err("curve.draws", format!("must be in 1..=1000, got {}", c.draws)));
        }
        if let Some(sizes) = &c.sizes
            && (sizes.is_empty() || sizes.iter().any(|&n| n < 2))
        {
            return Err(err("curve.sizes", format!("must list sizes of at least 2 (one example per class), got {sizes:?}")));
        }
        if let Some(p) = &self.privacy {
            validate_privacy(p, "privacy", &err)?;
        }
        if !crate::audit::CANARIES.contains(&self.audit.canaries) {
            return Err(err("audit.canaries", crate::audit::canaries_out_of_range(self.audit.canaries)));
        }
        if let Some(p) = &self.server_privacy.dp_pretraining {
            validate_privacy(p, "server_privacy.dp_pretraining", &err)?;
        }
        if let Some(w) = &self.server_privacy.weight_noise {
            validate_weight_noise(w, &err)?;
        }
        if self.head.inputs == HeadInputs::TransferPlusBow && self.privacy.as_ref().is_some_and(|p| p.enabled) {
            return Err(err("head.inputs", "\"transfer+bow\" adds a bag-of-words score fitted on the training labels without DP, so a DP-SGD head on it would not be private; use \"transfer\" or \"transfer+own\" with [privacy]".into()));
        }
        if self.source.balance_paths && self.server_privacy.dp_pretraining.as_ref().is_some_and(|p| p.enabled) {
            return Err(err("source.balance_paths", "repeats source examples, which DP pretraining's accountant does not allow for (each repeat would spend the budget again); set source.balance_paths = false to pretrain with DP".into()));
        }

        if self.he.enabled {
            validate_he(&self.he, l, &err)?;
        }
        for (key, t) in [("pretrain", &self.pretrain), ("head_training", &self.head_training)] {
            if t.epochs == 0 || t.epochs > 1_000_000 {
                return Err(err(&format!("{key}.epochs"), format!("must be in 1..=1000000, got {}", t.epochs)));
            }
            if t.batch_size == 0 {
                return Err(err(&format!("{key}.batch_size"), "must be at least 1".into()));
            }
            if !(t.learning_rate.is_finite() && t.learning_rate > 0.0 && t.learning_rate <= 1.0) {
                return Err(err(&format!("{key}.learning_rate"), format!("must be in (0, 1], got {}", t.learning_rate)));
            }
        }
        Ok(())
    }

    /// The head's hidden width after resolving `0 = same as input`.
    pub fn head_hidden(&self, input_dim: usize) -> usize {
        if self.head.hidden == 0 { input_dim } else { self.head.hidden }
    }
}

fn validate_he(h: &HeConfig, l: &LowerNetConfig, err: &impl Fn(&str, String) -> Error) -> Result<()> {
    let params = cryptotl_server::ParameterSet::from_name(&h.parameter_set).map_err(|e| err("he.parameter_set", e.to_string()))?;
    if l.output > 0 {
        return Err(err("lower.output", format!(
            "is {}, but the encrypted network ends at the pooled activation: set lower.output = 0 (the client's first \
             head layer takes the role of the server's last one; a dense layer after a bootstrap is drowned in its \
             output noise), or set he.enabled = false", l.output)));
    }
    if !(1..=16).contains(&h.input_bits) {
        return Err(err("he.input_bits", format!("must be in 1..=16, got {}", h.input_bits)));
    }
    let max_p = params.max_lookup_bits();
    if h.lookup_bits == 0 || h.lookup_bits > max_p {
        return Err(err("he.lookup_bits", format!("must be in 1..={max_p} for {}, got {}", params.name(), h.lookup_bits)));
    }
    if h.accumulator_bits <= h.lookup_bits || h.accumulator_bits > 40 {
        return Err(err("he.accumulator_bits", format!("must be in {}..=40 (above he.lookup_bits), got {}", h.lookup_bits + 1, h.accumulator_bits)));
    }
    let pool_bits = (l.pool as u64).next_power_of_two().trailing_zeros();
    let max_out = cryptotl_server::program::MAX_OUTPUT_PLUS_POOL_BITS - pool_bits;
    if h.output_bits == 0 || h.output_bits > max_out {
        return Err(err("he.output_bits", format!("must be in 1..={max_out} with lower.pool = {} (output noise), got {}", l.pool, h.output_bits)));
    }
    if !(h.calibration_margin.is_finite() && (0.0..=10.0).contains(&h.calibration_margin)) {
        return Err(err("he.calibration_margin", format!("must be in [0, 10], got {}", h.calibration_margin)));
    }
    h.server_location().map_err(|m| err("he.server", m))?;
    if !(1..=cryptotl_server::artifact::DEFAULT_MAX_BATCH).contains(&h.batch) {
        return Err(err("he.batch", format!("must be in 1..={}, got {}", cryptotl_server::artifact::DEFAULT_MAX_BATCH, h.batch)));
    }
    Ok(())
}

fn validate_weight_noise(w: &WeightNoiseConfig, err: &impl Fn(&str, String) -> Error) -> Result<()> {
    let table = "server_privacy.weight_noise";
    let positive = |key: &str, v: Option<f64>| -> Result<()> {
        match v {
            Some(x) if !(x.is_finite() && x > 0.0) => Err(err(&format!("{table}.{key}"), format!("must be a finite number > 0, got {x}"))),
            _ => Ok(()),
        }
    };
    positive("l2_sensitivity", Some(w.l2_sensitivity))?;
    positive("noise_std", w.noise_std)?;
    positive("target_epsilon", w.target_epsilon)?;
    if let Some(d) = w.delta
        && !(d.is_finite() && d > 0.0 && d < 1.0)
    {
        return Err(err(&format!("{table}.delta"), format!("must be in (0, 1), got {d}")));
    }
    match (w.noise_std, w.target_epsilon) {
        (Some(_), Some(_)) => Err(err(table, "give either `noise_std` or `target_epsilon`, not both (the std follows from the target)".into())),
        (None, None) if w.enabled => Err(err(table, "give `noise_std` or `target_epsilon` (with `delta`)".into())),
        _ => Ok(()),
    }
}

fn validate_privacy(p: &PrivacyConfig, table: &str, err: &impl Fn(&str, String) -> Error) -> Result<()> {
    let positive = |key: &str, v: Option<f64>| -> Result<()> {
        match v {
            Some(x) if !(x.is_finite() && x > 0.0) => Err(err(&format!("{table}.{key}"), format!("must be a finite number > 0, got {x}"))),
            _ => Ok(()),
        }
    };
    positive("max_grad_norm", Some(p.max_grad_norm))?;
    positive("noise_multiplier", p.noise_multiplier)?;
    positive("target_epsilon", p.target_epsilon)?;
    positive("max_epsilon", p.max_epsilon)?;
    if let Some(d) = p.delta
        && !(d.is_finite() && d > 0.0 && d < 1.0)
    {
        return Err(err(&format!("{table}.delta"), format!("must be in (0, 1), got {d}")));
    }
    positive("learning_rate", p.learning_rate)?;
    if p.steps.is_some_and(|t| t == 0 || t > 1_000_000) {
        return Err(err(&format!("{table}.steps"), format!("must be in 1..=1000000, got {:?}", p.steps)));
    }
    let full_batch_keys = p.steps.is_some() || p.learning_rate.is_some();
    match p.recipe {
        Some(DpRecipe::Minibatch) if full_batch_keys => {
            return Err(err(&format!("{table}.recipe"), "`steps` and `learning_rate` belong to recipe = \"full_batch\"; the minibatch recipe takes the training schedule's epochs and learning rate".into()));
        }
        Some(DpRecipe::FullBatch) if p.sampling_rate.is_some() => {
            return Err(err(&format!("{table}.sampling_rate"), "recipe = \"full_batch\" samples every example (q = 1); drop sampling_rate, or set recipe = \"minibatch\"".into()));
        }
        _ => {}
    }
    if let Some(q) = p.sampling_rate
        && !(q.is_finite() && q > 0.0 && q <= 1.0)
    {
        return Err(err(&format!("{table}.sampling_rate"), format!("must be in (0, 1], got {q}")));
    }
    if p.enabled && p.noise_multiplier.is_none() && p.target_epsilon.is_none() {
        return Err(err(table, "give `noise_multiplier` or `target_epsilon` (or both)".into()));
    }
    if p.accountant == crate::privacy::AccountantKind::Zcdp && p.sampling_rate.is_some_and(|q| q < 1.0) {
        return Err(err(&format!("{table}.accountant"), "zcdp accounts only full-batch training (sampling_rate = 1); use pld or rdp".into()));
    }
    Ok(())
}

fn validate_dataset(ds: &DatasetConfig, key: &str, err: &impl Fn(&str, String) -> Error) -> Result<()> {
    if ds.paths.is_empty() {
        return Err(err(&format!("{key}.paths"), "must list at least one file or folder".into()));
    }
    if ds.format == DatasetFormat::Csv || ds.format == DatasetFormat::Json {
        if ds.positive.is_empty() || ds.negative.is_empty() {
            return Err(err(&format!("{key}.positive"), "both `positive` and `negative` label lists must be non-empty".into()));
        }
        if let Some(v) = ds.positive.iter().find(|v| ds.negative.contains(v) || ds.ignore.contains(v)) {
            return Err(err(&format!("{key}.positive"), format!("label {v:?} is listed in more than one of positive/negative/ignore")));
        }
        if let Some(v) = ds.negative.iter().find(|v| ds.ignore.contains(v)) {
            return Err(err(&format!("{key}.negative"), format!("label {v:?} is listed in both negative and ignore")));
        }
    }
    if ds.format == DatasetFormat::Csv && !ds.header {
        for (k, c) in [("text_column", &ds.text_column), ("label_column", &ds.label_column)] {
            if c.parse::<usize>().is_err() {
                return Err(err(&format!("{key}.{k}"), format!("with header = false it must be a 0-based column index, got {c:?}")));
            }
        }
    }
    if ds.max_examples.is_some_and(|m| m < 2) {
        return Err(err(&format!("{key}.max_examples"), "must be at least 2, one per class (omit it to use everything)".into()));
    }
    Ok(())
}

/// Apply one `dotted.key=value` override to a parsed TOML table. The value is parsed as TOML
/// (`lower.hidden=128`, `name="x"`, `lower.activation=relu` — a bare word is taken as a string).
fn apply_override(table: &mut toml::Table, ov: &str) -> Result<()> {
    let file = "<command line --set>";
    let (key, raw) = ov.split_once('=').ok_or_else(|| Error::Config {
        file: file.into(),
        key: ov.into(),
        message: "expected KEY=VALUE, e.g. lower.hidden=128".into(),
    })?;
    let key = key.trim();
    let raw = raw.trim();
    let value: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").ok_or_else(|| Error::Internal("override value lost".into()))?,
        // All digits and still not a TOML value: an integer past TOML's 64-bit range, not a word.
        Err(_) if !raw.is_empty() && raw.trim_start_matches(['-', '+']).chars().all(|c| c.is_ascii_digit() || c == '_') => {
            return Err(Error::Config { file: file.into(), key: key.trim().into(), message: format!("{raw} is out of range (integers must fit in 64 bits)") });
        }
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(Error::Config { file: file.into(), key: key.into(), message: "empty key segment".into() });
    }
    let mut cur = table;
    for p in &parts[..parts.len() - 1] {
        let entry = cur.entry(p.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry.as_table_mut().ok_or_else(|| Error::Config {
            file: file.into(),
            key: key.into(),
            message: format!("`{p}` is not a table"),
        })?;
    }
    cur.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}
