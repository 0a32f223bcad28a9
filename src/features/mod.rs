//! Text -> fixed-width feature vectors, then min-max scaling to [0, 1].
//!
//! The default featurizer needs no model download: word n-grams (Unicode word boundaries, lower-cased) are hashed
//! (xxh3, a stable hash) into `dim` signed buckets, weighted by sublinear TF times smoothed IDF, and each vector is
//! L2-normalised. IDF and the scaler are fitted on the training split only and saved with the model.
//! The `minilm` featurizer ([`minilm`]) gives all-MiniLM-L6-v2 sentence embeddings (384 floats, a BERT encoder in
//! Burn, [`bert`]) behind the same [`Featurizer`] trait.
//!
//! ```
//! use cryptotl::features::{Featurizer, HashedTfidf};
//! let train = vec!["a great movie".to_string(), "a dull movie".to_string()];
//! let f = HashedTfidf::fit(&train, 64, 2);
//! let x = f.transform(&train).unwrap();
//! assert_eq!(x.dim(), (2, 64));
//! let norm: f32 = x.row(0).iter().map(|v| v * v).sum::<f32>().sqrt();
//! assert!((norm - 1.0).abs() < 1e-5);
//! ```

use std::path::Path;

use ndarray::{Array2, ArrayView2, Axis};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use unicode_segmentation::UnicodeSegmentation;

use crate::config::{FeatureKind, FeaturesConfig};
use crate::error::{Error, Result};

pub mod bert;
pub mod minilm;
pub mod shipped;

/// The sentences of `text`, at most `max` of them (evenly spaced through the text when it has more), for
/// `head.transfer_unit = "sentence"`. A sentence ends at a line break or at `.`, `!` or `?` followed by white
/// space (which also splits tokenised corpora such as Pang & Lee's, where punctuation stands apart); a piece of
/// fewer than 3 words joins the sentence before it. A text with no words gives itself, so every text has at
/// least one unit.
///
/// ```
/// let s = cryptotl::features::sentences("A fine film . The plot , though , drags!\nWorth seeing? yes , twice over", 16);
/// assert_eq!(s, ["A fine film .", "The plot , though , drags! Worth seeing?", "yes , twice over"]);
/// assert_eq!(cryptotl::features::sentences("one two three. four five six. seven eight nine.", 2).len(), 2);
/// ```
pub fn sentences(text: &str, max: usize) -> Vec<String> {
    let mut pieces: Vec<String> = Vec::new();
    for line in text.lines() {
        let mut start = 0;
        let chars: Vec<(usize, char)> = line.char_indices().collect();
        for (k, &(i, c)) in chars.iter().enumerate() {
            let ends = matches!(c, '.' | '!' | '?') && chars.get(k + 1).is_some_and(|&(_, n)| n.is_whitespace());
            if ends {
                pieces.push(line[start..i + c.len_utf8()].trim().to_string());
                start = i + c.len_utf8();
            }
        }
        pieces.push(line[start..].trim().to_string());
    }
    let mut out: Vec<String> = Vec::new();
    for p in pieces.into_iter().filter(|p| !p.is_empty()) {
        match out.last_mut() {
            Some(last) if p.split_whitespace().count() < 3 => {
                last.push(' ');
                last.push_str(&p);
            }
            _ => out.push(p),
        }
    }
    // A short first piece stays on its own above; join it forward when there is more.
    if out.len() > 1 && out[0].split_whitespace().count() < 3 {
        let first = out.remove(0);
        out[0] = format!("{first} {}", out[0]);
    }
    if out.is_empty() {
        return vec![text.to_string()];
    }
    let max = max.max(1);
    if out.len() > max {
        let n = out.len();
        out = (0..max).map(|i| out[i * (n - 1) / (max - 1).max(1)].clone()).collect();
    }
    out
}

/// Turns texts into feature vectors of a fixed dimension.
pub trait Featurizer {
    /// Which featurizer this is.
    fn kind(&self) -> FeatureKind;
    /// Width of every vector.
    fn dim(&self) -> usize;
    /// One row per text.
    fn transform(&self, texts: &[String]) -> Result<Array2<f32>>;
}

/// Hashed word n-gram TF-IDF (signed hashing trick), L2-normalised.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HashedTfidf {
    dim: usize,
    ngrams: usize,
    /// Smoothed IDF per bucket, fitted on training texts: ln((1 + n) / (1 + df)) + 1.
    idf: Vec<f32>,
}

/// Bumped whenever the featurizer's output changes for the same input (it is part of cache keys).
pub const FEATURIZER_VERSION: u32 = 4;

const HASH_SEED: u64 = 0x6372_7970_746f_746c; // "cryptotl"

/// Lower-cased words and word n-grams (joined by a space) of one text, hashed.
fn hashed_terms(text: &str, ngrams: usize) -> Vec<u64> {
    let lower = text.to_lowercase();
    let words: Vec<&str> = lower.unicode_words().collect();
    let mut out = Vec::with_capacity(words.len() * ngrams);
    for n in 1..=ngrams {
        for w in words.windows(n) {
            out.push(xxhash_rust::xxh3::xxh3_64_with_seed(w.join(" ").as_bytes(), HASH_SEED));
        }
    }
    out
}

impl HashedTfidf {
    /// Term frequencies with every IDF weight 1: the featurizer fitted on nothing, for a party whose map must not
    /// depend on its data ([`FeaturePipeline::data_independent`]).
    pub fn unfitted(dim: usize, ngrams: usize) -> Self {
        Self { dim, ngrams, idf: vec![1.0; dim] }
    }

    /// Fit the IDF weights on training texts.
    pub fn fit(train_texts: &[String], dim: usize, ngrams: usize) -> Self {
        let df: Vec<u32> = train_texts
            .par_iter()
            .fold(
                || vec![0u32; dim],
                |mut df, t| {
                    let mut buckets: Vec<usize> = hashed_terms(t, ngrams).iter().map(|h| (h % dim as u64) as usize).collect();
                    buckets.sort_unstable();
                    buckets.dedup();
                    for b in buckets {
                        df[b] += 1;
                    }
                    df
                },
            )
            .reduce(|| vec![0u32; dim], |a, b| a.iter().zip(&b).map(|(x, y)| x + y).collect());
        let n = train_texts.len() as f32;
        let idf = df.iter().map(|&d| ((1.0 + n) / (1.0 + d as f32)).ln() + 1.0).collect();
        Self { dim, ngrams, idf }
    }

    /// A featurizer with these IDF weights (`idf.len()` buckets), e.g. one read back from a saved model
    /// ([`crate::bow::StackedScorer`]).
    pub(crate) fn with_idf(ngrams: usize, idf: Vec<f32>) -> Self {
        Self { dim: idf.len(), ngrams, idf }
    }

    /// The IDF weight of every bucket.
    pub(crate) fn idf(&self) -> &[f32] {
        &self.idf
    }

    /// Word n-grams up to this length are hashed.
    pub(crate) fn ngrams(&self) -> usize {
        self.ngrams
    }

    /// Sparse rows (bucket, weight), L2-normalised, buckets ascending: the same vectors as
    /// [`Featurizer::transform`] without materialising the zeros (for wide hashes such as the bag-of-words
    /// baseline's 2^18).
    pub fn transform_sparse(&self, texts: &[String]) -> Vec<crate::linear::SparseRow> {
        texts.par_iter().map(|t| self.sparse_one(t)).collect()
    }

    /// One text's L2-normalised (bucket, weight) pairs, buckets ascending.
    fn sparse_one(&self, text: &str) -> crate::linear::SparseRow {
        // Sorted, so colliding terms are summed in one fixed order: the output is bit-for-bit deterministic.
        let mut terms = hashed_terms(text, self.ngrams);
        terms.sort_unstable();
        // Per distinct term (sublinear TF), summed into its bucket.
        let mut acc: std::collections::BTreeMap<u32, f32> = std::collections::BTreeMap::new();
        for run in terms.chunk_by(|a, b| a == b) {
            let b = (run[0] % self.dim as u64) as u32;
            *acc.entry(b).or_default() += (1.0 + (run.len() as f32).ln()) * self.idf[b as usize];
        }
        let mut row: crate::linear::SparseRow = acc.into_iter().collect();
        let norm = row.iter().map(|(_, v)| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            row.iter_mut().for_each(|(_, v)| *v /= norm);
        }
        row
    }

    fn embed_one(&self, text: &str) -> Vec<f32> {
        let mut v = vec![0f32; self.dim];
        for (b, x) in self.sparse_one(text) {
            v[b as usize] = x;
        }
        v
    }
}

impl Featurizer for HashedTfidf {
    fn kind(&self) -> FeatureKind {
        FeatureKind::Hashed
    }
    fn dim(&self) -> usize {
        self.dim
    }
    fn transform(&self, texts: &[String]) -> Result<Array2<f32>> {
        let rows: Vec<Vec<f32>> = texts.par_iter().map(|t| self.embed_one(t)).collect();
        Ok(Array2::from_shape_vec((texts.len(), self.dim), rows.concat()).expect("rows have dim entries"))
    }
}

/// The fitted featurizer, serialisable. New featurizers are new arms.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FeaturizerState {
    /// Hashed n-gram TF-IDF.
    Hashed(HashedTfidf),
    /// all-MiniLM-L6-v2 sentence embeddings.
    Minilm(minilm::MiniLm),
}

impl Featurizer for FeaturizerState {
    fn kind(&self) -> FeatureKind {
        match self {
            Self::Hashed(f) => f.kind(),
            Self::Minilm(f) => f.kind(),
        }
    }
    fn dim(&self) -> usize {
        match self {
            Self::Hashed(f) => f.dim(),
            Self::Minilm(f) => f.dim(),
        }
    }
    fn transform(&self, texts: &[String]) -> Result<Array2<f32>> {
        match self {
            Self::Hashed(f) => f.transform(texts),
            Self::Minilm(f) => f.transform(texts),
        }
    }
}

/// Per-feature min-max scaling to [0, 1], fitted on training rows. Values outside the training range are
/// clipped, so the output range is guaranteed (the quantizer relies on it). Constant features map to 0.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MinMaxScaler {
    /// Per-feature minimum over the training rows.
    pub min: Vec<f32>,
    /// Per-feature maximum over the training rows.
    pub max: Vec<f32>,
}

/// Reject non-finite features with the first offending position.
pub fn check_finite(x: ArrayView2<f32>) -> Result<()> {
    if let Some(((r, c), v)) = x.indexed_iter().find(|(_, v)| !v.is_finite()) {
        return Err(Error::Features(format!("non-finite value {v} at row {r}, column {c}")));
    }
    Ok(())
}

/// Half-width of the fixed range of MiniLM coordinates (`features.scaling = "fixed"`): a unit vector in 384
/// dimensions has coordinates of std ~0.05; values beyond ±0.25 are clipped.
pub const MINILM_FIXED_RANGE: f32 = 0.25;

/// Where the data-independent map ([`MinMaxScaler::fixed`]) sends a zero coordinate: the middle of the MiniLM range
/// (0.5), hashed TF-IDF's 0 (an absent term). The public centre a DP head's own-feature inputs are centred on.
pub fn fixed_image_of_zero(kind: crate::config::FeatureKind) -> f32 {
    match kind {
        crate::config::FeatureKind::Minilm => 0.5,
        crate::config::FeatureKind::Hashed => 0.0,
    }
}

impl MinMaxScaler {
    /// The data-independent scaler of a featurizer (`features.scaling = "fixed"`): MiniLM coordinates from
    /// [-0.25, 0.25], hashed TF-IDF weights (non-negative, L2-normalised rows) from [0, 1].
    pub fn fixed(featurizer: &FeaturizerState) -> Self {
        let d = featurizer.dim();
        match featurizer {
            FeaturizerState::Minilm(_) => Self { min: vec![-MINILM_FIXED_RANGE; d], max: vec![MINILM_FIXED_RANGE; d] },
            FeaturizerState::Hashed(_) => Self { min: vec![0.0; d], max: vec![1.0; d] },
        }
    }

    /// Fit on training rows (at least one row, all finite).
    pub fn fit(x: ArrayView2<f32>) -> Result<Self> {
        if x.nrows() == 0 {
            return Err(Error::Features("cannot fit a scaler on zero rows".into()));
        }
        check_finite(x)?;
        let min = x.map_axis(Axis(0), |c| c.fold(f32::INFINITY, |a, &b| a.min(b))).to_vec();
        let max = x.map_axis(Axis(0), |c| c.fold(f32::NEG_INFINITY, |a, &b| a.max(b))).to_vec();
        Ok(Self { min, max })
    }

    /// Scale rows into [0, 1]. Errors on a width mismatch or a non-finite value.
    pub fn transform(&self, x: ArrayView2<f32>) -> Result<Array2<f32>> {
        if x.ncols() != self.min.len() {
            return Err(Error::Features(format!("scaler fitted on {} features, got {}", self.min.len(), x.ncols())));
        }
        check_finite(x)?;
        let mut out = x.to_owned();
        for mut row in out.rows_mut() {
            for (j, v) in row.iter_mut().enumerate() {
                let range = self.max[j] - self.min[j];
                *v = if range > 0.0 { ((*v - self.min[j]) / range).clamp(0.0, 1.0) } else { 0.0 };
            }
        }
        Ok(out)
    }
}

/// Featurizer + scaler: what a party fits on its own training split and ships with its model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FeaturePipeline {
    /// The fitted featurizer.
    pub featurizer: FeaturizerState,
    /// The fitted scaler.
    pub scaler: MinMaxScaler,
}

impl FeaturePipeline {
    /// The featurizer of `cfg`, fitted on `train_texts` (hashed TF-IDF's IDF weights) or on nothing (`None`).
    fn featurizer(cfg: &FeaturesConfig, train_texts: Option<&[String]>) -> Result<FeaturizerState> {
        Ok(match cfg.kind {
            FeatureKind::Hashed => FeaturizerState::Hashed(match train_texts {
                Some(texts) => HashedTfidf::fit(texts, cfg.dim(), cfg.ngrams),
                None => HashedTfidf::unfitted(cfg.dim(), cfg.ngrams),
            }),
            FeatureKind::Minilm => FeaturizerState::Minilm(minilm::MiniLm::new(&cfg.model_dir, cfg.batch_size, Some(cfg.embedding_cache_dir.clone()))?.with_max_windows(cfg.max_windows)),
        })
    }

    /// The same pipeline, reading its model and embedding cache (and batching) where `cfg` says. Where they lie
    /// changes no feature (it is not in the pretraining key), so a stored pipeline (a cache entry, the shipped
    /// network) follows the config that loads it, not the machine that stored it.
    ///
    /// ```
    /// use cryptotl::config::{FeatureKind, FeaturesConfig};
    /// use cryptotl::features::{FeaturePipeline, FeaturizerState};
    /// let stored = FeaturePipeline::data_independent(&FeaturesConfig { kind: FeatureKind::Minilm, ..Default::default() }).unwrap();
    /// let here = FeaturesConfig { kind: FeatureKind::Minilm, model_dir: "/opt/minilm".into(), ..Default::default() };
    /// let FeaturizerState::Minilm(m) = stored.located_as(&here).featurizer else { unreachable!() };
    /// assert_eq!(m.model_dir, std::path::Path::new("/opt/minilm"));
    /// ```
    pub fn located_as(mut self, cfg: &FeaturesConfig) -> Self {
        if let FeaturizerState::Minilm(m) = &mut self.featurizer {
            m.model_dir = cfg.model_dir.clone();
            m.batch_size = cfg.batch_size;
            m.cache_dir = Some(cfg.embedding_cache_dir.clone());
        }
        self
    }

    /// Fit featurizer and scaler on training texts only.
    pub fn fit(cfg: &FeaturesConfig, train_texts: &[String]) -> Result<Self> {
        let featurizer = Self::featurizer(cfg, Some(train_texts))?;
        let scaler = match cfg.scaling {
            crate::config::Scaling::Fitted => {
                let raw = featurizer.transform(train_texts)?;
                MinMaxScaler::fit(raw.view())?
            }
            crate::config::Scaling::Fixed => MinMaxScaler::fixed(&featurizer),
        };
        Ok(Self { featurizer, scaler })
    }

    /// A pipeline that reads nothing of any data: the featurizer unfitted (MiniLM has nothing to fit; hashed TF-IDF
    /// keeps term frequencies, every IDF weight 1) and the `fixed` scaling. What a client whose head is trained
    /// with DP-SGD must use: the guarantee is for a fixed map from one example to its features, and a map fitted on
    /// the training split (min-max ranges, IDF weights) would let one example move every other example's
    /// features, outside what the accountant bounds.
    pub fn data_independent(cfg: &FeaturesConfig) -> Result<Self> {
        let featurizer = Self::featurizer(cfg, None)?;
        let scaler = MinMaxScaler::fixed(&featurizer);
        Ok(Self { featurizer, scaler })
    }

    /// The pipeline a party trains on: [`Self::fit`] on its `train_texts`, or, when it trains with DP-SGD (`dp`),
    /// [`Self::data_independent`], since the accountant's ε is for a fixed map from one example to its features.
    pub fn for_training(cfg: &FeaturesConfig, train_texts: &[String], dp: bool) -> Result<Self> {
        if dp {
            tracing::info!("feature map fitted on nothing (DP-SGD): fixed scaling, no IDF weights");
            Self::data_independent(cfg)
        } else {
            Self::fit(cfg, train_texts)
        }
    }

    /// Width of the scaled vectors.
    pub fn dim(&self) -> usize {
        self.featurizer.dim()
    }

    /// Texts -> scaled features in [0, 1].
    pub fn transform(&self, texts: &[String]) -> Result<Array2<f32>> {
        let raw = self.featurizer.transform(texts)?;
        self.scaler.transform(raw.view())
    }

    /// Save as JSON.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec(self).map_err(|e| Error::Internal(format!("feature pipeline: {e}")))?;
        // A party's fitted featurizer holds statistics of its data (min/max per feature, IDF): owner only.
        crate::atomic::write_private(path, &json)
    }

    /// Load from JSON, checking internal consistency.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let p: Self = serde_json::from_slice(&bytes).map_err(|e| Error::artifact(path, format!("corrupt feature pipeline: {e}")))?;
        let inconsistent = match &p.featurizer {
            FeaturizerState::Hashed(h) => h.idf.len() != h.dim || h.dim == 0,
            FeaturizerState::Minilm(m) => m.batch_size == 0,
        };
        if p.scaler.min.len() != p.dim() || p.scaler.max.len() != p.dim() || inconsistent {
            return Err(Error::artifact(path, "inconsistent dimensions between featurizer and scaler"));
        }
        Ok(p)
    }
}
