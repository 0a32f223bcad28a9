//! `[features]`: which featurizer turns texts into the vectors the lower network reads.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Invalid;
use crate::error::Result;

/// Width of an all-MiniLM-L6-v2 sentence embedding.
pub const MINILM_DIM: usize = 384;
/// Where `python3 datasets/fetch_model.py` puts the model, relative to the repository root.
pub const DEFAULT_MODEL_DIR: &str = "datasets/models/all-MiniLM-L6-v2";
/// Width of the hashed TF-IDF features when `features.dim` is not given (the paper's 768).
pub const DEFAULT_HASHED_DIM: usize = 768;

/// Featurizer settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FeaturesConfig {
    /// Featurizer kind. `hashed`: hashed word n-gram TF-IDF (no model download). `minilm`: all-MiniLM-L6-v2
    /// sentence embeddings (384 floats; `python3 datasets/fetch_model.py` fetches the model).
    pub kind: FeatureKind,
    /// Output dimension of `hashed` (the lower network's input width). Default 768, as in the paper. `minilm` is
    /// always 384: leave this out (or set 384).
    pub dim: Option<usize>,
    /// `hashed`: longest word n-gram hashed (1 = words, 2 = words and bigrams).
    pub ngrams: usize,
    /// `minilm`: the model folder.
    pub model_dir: PathBuf,
    /// `minilm`: texts per forward pass at most (a pass also holds texts of one token length only, at most `minilm::TOKENS_PER_BATCH` tokens).
    pub batch_size: usize,
    /// `minilm`: the embedding cache (keyed by model hash and text hash).
    pub embedding_cache_dir: PathBuf,
    /// How features are mapped into [0, 1] (what the encrypted stage quantizes): `fitted` (per-feature min-max over
    /// the party's own training split; each party fits its own) or `fixed` (a data-independent map: MiniLM
    /// coordinates from [-0.25, 0.25], hashed TF-IDF weights from [0, 1]; values outside are clipped). `fixed` gives
    /// client and server the same map without either seeing the other's statistics.
    pub scaling: Scaling,
    /// `minilm`: a text past 256 tokens is embedded whole, as overlapping windows whose embeddings are averaged;
    /// this keeps only its first `max_windows` windows (for corpora of very long texts, e.g. e-mails). Default:
    /// every window.
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
        super::parse_named(&Self::ALL, Self::name, s, "featurizer").map_err(|m| format!("key `features.kind`: {m}"))
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
pub(super) fn table_or_kind<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<FeaturesConfig, D::Error> {
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
    /// The settings as the cache keys, the run folder's manifest and the server's interface see them. Where the
    /// model is (it is pinned by its sha256), where its embeddings are cached and how many texts go per forward pass
    /// (the embedding cache already ignores it) do not change the features: they take their defaults here, so moving
    /// the model or the cache keeps the shipped network, the pretraining cache and the run folders valid, and a
    /// server's interface does not publish its paths.
    ///
    /// ```
    /// use cryptotl::config::FeaturesConfig;
    /// let moved = FeaturesConfig { embedding_cache_dir: "/elsewhere".into(), model_dir: "/opt/minilm".into(), batch_size: 4, ..Default::default() };
    /// assert_eq!(moved.key_material(), FeaturesConfig::default().key_material());
    /// assert_ne!(FeaturesConfig { ngrams: 1, ..Default::default() }.key_material(), FeaturesConfig::default().key_material());
    /// ```
    pub fn key_material(&self) -> serde_json::Value {
        let d = Self::default();
        let normalised = Self { model_dir: d.model_dir, batch_size: d.batch_size, embedding_cache_dir: d.embedding_cache_dir, ..self.clone() };
        serde_json::to_value(normalised).unwrap_or(serde_json::Value::Null)
    }

    /// The keys of [`Self::key_material`] that fix which quantity each feature is, beyond the kind and the width: a
    /// client of a remote server must set them as the server did. `ngrams` for `hashed` (which word n-grams share
    /// the buckets); none for `minilm`. `scaling` is not among them: each party maps its own features into [0, 1]
    /// (a private head always through the fixed map), so a different scaling shifts the values, not their meaning.
    /// Where the model and the cache lie, the batch size and how many windows of a long text are embedded change
    /// nothing.
    ///
    /// ```
    /// use cryptotl::config::{FeatureKind, FeaturesConfig};
    /// assert_eq!(FeaturesConfig { kind: FeatureKind::Hashed, ..Default::default() }.meaning_keys(), ["ngrams"]);
    /// assert!(FeaturesConfig { kind: FeatureKind::Minilm, ..Default::default() }.meaning_keys().is_empty());
    /// ```
    pub fn meaning_keys(&self) -> &'static [&'static str] {
        match self.kind {
            FeatureKind::Hashed => &["ngrams"],
            FeatureKind::Minilm => &[],
        }
    }

    /// The feature width: 384 for `minilm`, else `dim` (default 768).
    pub fn dim(&self) -> usize {
        match self.kind {
            FeatureKind::Minilm => MINILM_DIM,
            FeatureKind::Hashed => self.dim.unwrap_or(DEFAULT_HASHED_DIM),
        }
    }
}

impl Default for FeaturesConfig {
    fn default() -> Self {
        Self {
            kind: FeatureKind::default(),
            dim: None,
            ngrams: 2,
            model_dir: PathBuf::from(DEFAULT_MODEL_DIR),
            batch_size: 32,
            embedding_cache_dir: PathBuf::from("runs/cache/embeddings"),
            max_windows: None,
            scaling: Scaling::default(),
        }
    }
}

impl FeaturesConfig {
    /// Widths, batch size and n-gram length in range, and no `dim` for MiniLM other than its own.
    pub(super) fn check(&self, at: Invalid) -> Result<()> {
        match (self.kind, self.dim) {
            (FeatureKind::Hashed, Some(d)) if !(8..=65_536).contains(&d) => return Err(at.key("features.dim", format!("must be in 8..=65536, got {d}"))),
            (FeatureKind::Minilm, Some(d)) if d != MINILM_DIM => {
                return Err(at.key("features.dim", format!("minilm embeddings have {MINILM_DIM} dimensions; leave features.dim out (got {d})")));
            }
            _ => {}
        }
        if self.max_windows == Some(0) {
            return Err(at.key("features.max_windows", "must be at least 1 (omit it to embed whole texts)".into()));
        }
        if self.batch_size == 0 || self.batch_size > 4096 {
            return Err(at.key("features.batch_size", format!("must be in 1..=4096, got {}", self.batch_size)));
        }
        if !(1..=3).contains(&self.ngrams) {
            return Err(at.key("features.ngrams", format!("must be 1, 2 or 3, got {}", self.ngrams)));
        }
        Ok(())
    }
}
