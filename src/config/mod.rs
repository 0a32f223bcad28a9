//! Run configuration: one TOML file per run (`configs/*.toml`), parsed with `deny_unknown_fields` and validated
//! before any work starts. Errors name the file, the dotted key and what is allowed.
//!
//! ```
//! let cfg = cryptotl::config::RunConfig::from_toml_str(cryptotl::config::QUICKSTART_TOML, "quickstart.toml", &[])
//!     .unwrap();
//! assert_eq!(cfg.features.dim(), 384);
//! ```
//!
//! One file per group of tables, each table's checks beside its struct: [`features`] (`[features]`),
//! [`datasets`] (`[source]`, `[target]`, `[split]`), [`network`] (`[lower]`, `[head]`, `[pretrain]`,
//! `[head_training]`), [`he`] (`[he]`), [`privacy`] (`[privacy]`, `[server_privacy]`), [`evaluation`]
//! (`[baselines]`, `[curve]`, `[audit]`); `overrides` applies `--set key=value`. This module is a leaf: it reads
//! nothing of the crate but its error type and atomic writes (and the server crate's parameter sets and bit-width
//! check), so every other module can read it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub mod datasets;
pub mod evaluation;
pub mod features;
pub mod he;
pub mod network;
mod overrides;
pub mod privacy;

pub use datasets::{DatasetConfig, DatasetFormat, Duplicates, SplitConfig};
pub use evaluation::{AuditConfig, BaselinesConfig, CANARIES, CurveConfig, CurveSelection, DEFAULT_CANARIES, DEFAULT_CURVE_FOLDS, MAX_DRAWS, canaries_out_of_range};
pub use features::{DEFAULT_HASHED_DIM, DEFAULT_MODEL_DIR, FeatureKind, FeaturesConfig, MINILM_DIM, Scaling};
pub use he::{Calibration, DEFAULT_HE_BATCH, HeConfig, ServerLocation};
pub use network::{
    Activation, DEFAULT_MAX_SENTENCES, HeadConfig, HeadInputs, HeadKind, InverseL2, LINEAR_HEAD_CS, LowerNetConfig, OWN_FEATURE_WEIGHTS, TrainConfig, TransferUnit, available_memory,
};
pub use privacy::{AccountantKind, DEFAULT_DP_LEARNING_RATE, DEFAULT_DP_STEPS, DP_OWN_FEATURES_MAX_NOISE, DpRecipe, PrivacyConfig, ServerPrivacyConfig, WeightNoiseConfig, dp_own_weight};

/// The embedded default configuration (`configs/quickstart.toml`), used when `cryptotl run` gets no file.
pub const QUICKSTART_TOML: &str = include_str!("../../configs/quickstart.toml");

/// How errors and messages name the embedded default config.
pub const EMBEDDED_CONFIG_NAME: &str = "configs/quickstart.toml (embedded)";

/// Where a value was refused: the file, for an [`Error::Config`] naming the dotted key.
#[derive(Clone, Copy)]
pub(crate) struct Invalid<'a>(&'a str);

impl Invalid<'_> {
    /// The error for `key` (dotted, e.g. `he.batch`) in this file.
    pub(crate) fn key(self, key: &str, message: String) -> Error {
        Error::Config { file: self.0.into(), key: key.into(), message }
    }
}

/// The member of `all` called `s` (by `name`), or a message naming the allowed ones: what every named kind's
/// `FromStr` answers (featurizers, accountants, server mechanisms).
///
/// ```
/// use cryptotl::config::{FeatureKind, parse_named};
/// assert_eq!(parse_named(&FeatureKind::ALL, FeatureKind::name, "minilm", "featurizer"), Ok(FeatureKind::Minilm));
/// assert_eq!(parse_named(&FeatureKind::ALL, FeatureKind::name, "bert", "featurizer").unwrap_err(),
///     "unknown featurizer \"bert\"; allowed: \"hashed\", \"minilm\"");
/// ```
pub fn parse_named<T: Copy>(all: &[T], name: impl Fn(T) -> &'static str, s: &str, what: &str) -> std::result::Result<T, String> {
    all.iter().copied().find(|&k| name(k) == s).ok_or_else(|| {
        let allowed: Vec<String> = all.iter().map(|&k| format!("{:?}", name(k))).collect();
        format!("unknown {what} {s:?}; allowed: {}", allowed.join(", "))
    })
}

/// A float as a message shows it: as written for ordinary magnitudes, in scientific notation past them (so that
/// `1e300` is not printed as 301 digits).
///
/// ```
/// use cryptotl::config::shown_number;
/// assert_eq!(shown_number(0.25), "0.25");
/// assert_eq!(shown_number(1e-5), "0.00001");
/// assert_eq!(shown_number(1e300), "1e300");
/// assert_eq!(shown_number(-1e-300), "-1e-300");
/// assert_eq!(shown_number(f64::NAN), "NaN");
/// ```
pub fn shown_number(x: f64) -> String {
    if x == 0.0 || !x.is_finite() || (1e-6..1e15).contains(&x.abs()) { format!("{x}") } else { format!("{x:e}") }
}

/// A key that must hold a finite number above 0 when given.
pub(crate) fn check_positive(at: Invalid, key: &str, v: Option<f64>) -> Result<()> {
    match v {
        Some(x) if !(x.is_finite() && x > 0.0) => Err(at.key(key, format!("must be a finite number > 0, got {}", shown_number(x)))),
        _ => Ok(()),
    }
}

/// A key that must hold a finite number in `[lo, hi]` when given; `why` says what lies past the bounds.
pub(crate) fn check_within(at: Invalid, key: &str, v: Option<f64>, (lo, hi): (f64, f64), why: &str) -> Result<()> {
    match v {
        Some(x) if !(x.is_finite() && (lo..=hi).contains(&x)) => {
            let e = |v: f64| if v == 0.0 { "0".to_string() } else { format!("{v:e}") };
            Err(at.key(key, format!("must be in [{}, {}] ({why}), got {}", e(lo), e(hi), shown_number(x))))
        }
        _ => Ok(()),
    }
}

/// A δ key: in (0, 1) when given.
pub(crate) fn check_delta(at: Invalid, key: &str, v: Option<f64>) -> Result<()> {
    match v {
        Some(d) if !(d.is_finite() && d > 0.0 && d < 1.0) => Err(at.key(key, format!("must be in (0, 1), got {}", shown_number(d)))),
        _ => Ok(()),
    }
}

/// serde's default for the few `bool` keys of tables that also have required keys.
pub(crate) fn default_true() -> bool {
    true
}

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
    #[serde(default, deserialize_with = "features::table_or_kind")]
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

fn default_seed() -> u64 {
    42
}
fn default_cache_dir() -> PathBuf {
    PathBuf::from("runs/cache")
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

    /// [`Self::load`] the file at `path`, or with none the embedded default ([`QUICKSTART_TOML`], named
    /// [`EMBEDDED_CONFIG_NAME`] in errors): what every command and example does with an optional config argument.
    ///
    /// ```
    /// use cryptotl::config::RunConfig;
    /// let cfg = RunConfig::load_or_quickstart(None, &["seed=7".into()]).unwrap();
    /// assert_eq!((cfg.name.as_str(), cfg.seed), ("quickstart", 7));
    /// let err = RunConfig::load_or_quickstart(None, &["head.kindd=1".into()]).unwrap_err().to_string();
    /// assert!(err.contains("configs/quickstart.toml (embedded)"), "{err}");
    /// ```
    pub fn load_or_quickstart(path: Option<&Path>, overrides: &[String]) -> Result<Self> {
        match path {
            Some(path) => Self::load(path, overrides),
            None => Self::from_toml_str(QUICKSTART_TOML, EMBEDDED_CONFIG_NAME, overrides),
        }
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
                overrides::apply(&mut value, ov)?;
            }
            let merged = toml::to_string(&value).map_err(|e| Error::Internal(format!("an overridden config does not serialise: {e}")))?;
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

    /// The config with `edit` applied, validated again (a copy; `self` is untouched): how code changes a config
    /// (a sweep's setting, a featurizer chosen on the command line) without skipping the checks a file gets.
    /// `context` names the change in errors.
    ///
    /// ```
    /// use cryptotl::config::{QUICKSTART_TOML, RunConfig};
    /// let cfg = RunConfig::from_toml_str(QUICKSTART_TOML, "q", &[]).unwrap();
    /// assert_eq!(cfg.edited("two draws", |c| c.curve.draws = 2).unwrap().curve.draws, 2);
    /// assert!(cfg.edited("no draws", |c| c.curve.draws = 0).is_err());
    /// ```
    pub fn edited(&self, context: &str, edit: impl FnOnce(&mut RunConfig)) -> Result<RunConfig> {
        let mut c = self.clone();
        edit(&mut c);
        c.validate(context)?;
        Ok(c)
    }

    /// Check every value that serde cannot check, table by table, then the rules that join tables.
    fn validate(&self, file: &str) -> Result<()> {
        let at = Invalid(file);
        if self.name.trim().is_empty()
            || !self.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(at.key("name", format!("must be non-empty and use only letters, digits, '-', '_', '.'; got {:?}", self.name)));
        }
        if self.name.chars().all(|c| c == '.') {
            return Err(at.key("name", format!("{:?} names the current or parent directory; the run's output goes to runs/<name>", self.name)));
        }
        if self.name.len() > 100 {
            return Err(at.key("name", format!("is {} characters long; at most 100", self.name.len())));
        }
        if let Some(dir) = &self.output_dir
            && (dir.as_os_str().is_empty() || dir.components().all(|c| matches!(c, std::path::Component::CurDir | std::path::Component::ParentDir)))
        {
            return Err(at.key("output_dir", format!("{:?} is not a run directory of its own (it would write config.toml, report.* and head.bin into it); name a new or dedicated folder", dir.display().to_string())));
        }
        self.features.check(at)?;
        self.source.check("source", at)?;
        self.target.check("target", at)?;
        if self.target.output_per_path {
            return Err(at.key("target.output_per_path", "only the server's pretraining has source tasks; remove it from [target]".into()));
        }
        if self.target.balance_paths {
            return Err(at.key("target.balance_paths", "only the server's pretraining balances its source paths; remove it from [target]".into()));
        }
        // The server never pretrains on the client's own data. (With a remote server, `[source]` is not the client's
        // to set, so there is nothing to compare.) Copies under other names are counted by the run
        // ([`crate::overlap`]).
        if self.he.server.trim() == "local"
            && let Some(shared) = self.target.paths.iter().find(|t| self.source.paths.iter().any(|s| same_dataset_path(s, t)))
        {
            return Err(at.key("target.paths", format!(
                "{shared:?} is also a path of [source]: the server's network would be pretrained on the client's own data, \
                 and the transfer head scored on texts it learned from; remove it from source.paths")));
        }
        self.split.check(at)?;
        self.lower.check(self.features.dim(), at)?;
        self.head.check(&self.lower, at)?;
        self.curve.check(at)?;
        if let Some(p) = &self.privacy {
            p.check("privacy", at)?;
        }
        self.audit.check(at)?;
        if let Some(p) = &self.server_privacy.dp_pretraining {
            p.check("server_privacy.dp_pretraining", at)?;
        }
        if let Some(w) = &self.server_privacy.weight_noise {
            w.check(at)?;
        }
        check_positive(at, "server_privacy.total_epsilon", self.server_privacy.total_epsilon)?;
        if self.server_privacy.total_epsilon.is_some() && !self.server_mechanism_on() {
            return Err(at.key("server_privacy.total_epsilon", "is set, but the network is released with no DP mechanism (ε = ∞ for its source data): add [server_privacy.weight_noise] or [server_privacy.dp_pretraining], or remove the total".into()));
        }
        if self.head.inputs == HeadInputs::TransferPlusBow && self.client_privacy().is_some() {
            return Err(at.key("head.inputs", "\"transfer+bow\" adds a bag-of-words score fitted on the training labels without DP, so a DP-SGD head on it would not be private; use \"transfer\" or \"transfer+own\" with [privacy]".into()));
        }
        if self.source.balance_paths && self.dp_pretraining().is_some() {
            return Err(at.key("source.balance_paths", "repeats source examples, which DP pretraining's accountant does not allow for (each repeat would spend the budget again); set source.balance_paths = false to pretrain with DP".into()));
        }
        if self.he.enabled {
            self.he.check(&self.lower, at)?;
        } else if self.he.server.trim() != "local" {
            return Err(at.key("he.server", format!(
                "is `{}`, but he.enabled = false runs the server's network here in plaintext, which a client of a remote \
                 server does not have: set he.enabled = true to go through the server, or he.server = \"local\"",
                self.he.server.trim())));
        }
        self.pretrain.check("pretrain", at)?;
        self.head_training.check("head_training", at)?;
        Ok(())
    }

    /// `[privacy]` when it is on: the client trains its head with DP-SGD (and reads its data through a map fitted
    /// on nothing).
    pub fn client_privacy(&self) -> Option<&PrivacyConfig> {
        self.privacy.as_ref().filter(|p| p.enabled)
    }

    /// Whether the server protects its source data with a DP mechanism: DP pretraining or weight noise, switched on.
    pub fn server_mechanism_on(&self) -> bool {
        self.dp_pretraining().is_some() || self.server_privacy.weight_noise.as_ref().is_some_and(|w| w.enabled)
    }

    /// `[server_privacy.dp_pretraining]` when it is on: the server pretrains with DP-SGD (through a map fitted on
    /// nothing).
    pub fn dp_pretraining(&self) -> Option<&PrivacyConfig> {
        self.server_privacy.dp_pretraining.as_ref().filter(|p| p.enabled)
    }

    /// The head's hidden width after resolving `0 = same as input`.
    pub fn head_hidden(&self, input_dim: usize) -> usize {
        if self.head.hidden == 0 { input_dim } else { self.head.hidden }
    }
}

/// Whether two dataset paths of a config name the same data: the same `embedded:` name, or the same file or folder
/// (compared as canonical paths when both exist, else as written).
fn same_dataset_path(a: &str, b: &str) -> bool {
    if a.starts_with("embedded:") || b.starts_with("embedded:") {
        return a == b;
    }
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => std::path::Path::new(a) == std::path::Path::new(b),
    }
}
