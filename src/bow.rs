//! The client's bag-of-words model: TF-IDF of word 1-2-grams hashed to 2^18 buckets with an L2 logistic
//! regression, fitted on the target's training texts alone. It is the strongest simple baseline of every report
//! (no transfer, no privacy), and with `head.inputs = "transfer+bow"` its cross-fitted score is one more input of
//! the transfer head ([`BagOfWords::stacked_scores`]), scored on new texts by the model the run saves with its head
//! ([`StackedScorer`], `bow_score.json`).


use std::path::Path;
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};

use crate::data::Split;
use crate::error::{Error, Result};
use crate::eval::Metrics;
use crate::features::HashedTfidf;
use crate::linear::{self, Design, LogisticRegression};

/// Hash buckets of the bag-of-words baseline.
pub const BAG_OF_WORDS_DIM: usize = 1 << 18;
/// Inverse L2 strengths the bag-of-words baseline chooses from, on the validation split (as scikit-learn's
/// `LogisticRegressionCV` would; ties go to the lower validation log-loss: [`linear::fit_choosing`]). A baseline this
/// tuned is what a practitioner would run. A learning curve's subset chooses by cross-validation on its own rows,
/// as every head there does (`[curve] selection`).
pub const BAG_OF_WORDS_CS: [f64; 4] = [0.1, 1.0, 10.0, 100.0];

/// The bag-of-words baseline's rows: TF-IDF of word 1-2-grams hashed to [`BAG_OF_WORDS_DIM`] buckets (IDF fitted
/// on the target's training split), L2-normalised, sparse.
#[derive(Debug, Clone)]
pub struct BagOfWords {
    /// Training rows.
    pub train: Vec<linear::SparseRow>,
    /// Training labels.
    pub train_y: Vec<u8>,
    /// Validation rows.
    pub validation: Vec<linear::SparseRow>,
    /// Validation labels.
    pub validation_y: Vec<u8>,
    /// Test rows.
    pub test: Vec<linear::SparseRow>,
    /// Test labels.
    pub test_y: Vec<u8>,
    /// The map from texts to the rows above (its IDF fitted on the training split).
    tfidf: Arc<HashedTfidf>,
    /// [`Self::stacked_scores`] once computed, with its seed: a run builds the head's inputs for the encrypted,
    /// float and clear-integer outputs from the same rows.
    stacked: OnceLock<(u64, [Vec<f32>; 3])>,
    /// [`Self::stacked_scorer`] once fitted.
    scorer: OnceLock<StackedScorer>,
}

impl BagOfWords {
    /// Fit the IDF on the target's training texts and featurize its training and test parts.
    pub fn new(target: &Split) -> Self {
        let tfidf = HashedTfidf::fit(&target.train.texts, BAG_OF_WORDS_DIM, 2);
        Self {
            train: tfidf.transform_sparse(&target.train.texts),
            train_y: target.train.labels.clone(),
            validation: tfidf.transform_sparse(&target.validation.texts),
            validation_y: target.validation.labels.clone(),
            test: tfidf.transform_sparse(&target.test.texts),
            test_y: target.test.labels.clone(),
            tfidf: Arc::new(tfidf),
            stacked: OnceLock::new(),
            scorer: OnceLock::new(),
        }
    }
    /// Fit the logistic regression on the training rows (a subset: [`Self::subset`]), its C chosen on the
    /// validation rows, and score the test part. Returns the test metrics, the validation accuracy and the C.
    pub fn fit_and_score(&self) -> Result<(Metrics, f64, f64)> {
        let validation = linear::Design::Sparse { rows: &self.validation, dim: BAG_OF_WORDS_DIM };
        self.fit_and_score_selecting(linear::Selection::Validation(validation, &self.validation_y))
    }

    /// As [`Self::fit_and_score`], C chosen where `selection` says (a learning curve's subset chooses by
    /// cross-validation on its own rows). Returns the test metrics, the selection's accuracy and the C.
    pub fn fit_and_score_selecting(&self, selection: linear::Selection<'_>) -> Result<(Metrics, f64, f64)> {
        let (p, val, c) = self.test_probabilities_selecting(selection)?;
        Ok((Metrics::from_probabilities(&p, &self.test_y), val, c))
    }

    /// As [`Self::fit_and_score_selecting`], with the test rows' positive-class probabilities in place of their
    /// metrics (a learning curve counts which test examples each draw gets right).
    pub fn test_probabilities_selecting(&self, selection: linear::Selection<'_>) -> Result<(Vec<f32>, f64, f64)> {
        let train = linear::Design::Sparse { rows: &self.train, dim: BAG_OF_WORDS_DIM };
        let candidates: Vec<linear::Candidate> = BAG_OF_WORDS_CS.iter().map(|&c| linear::Candidate { c, column_weights: None }).collect();
        let (lr, _, val) = linear::fit_choosing_by(train, &self.train_y, selection, &candidates)?;
        Ok((lr.probabilities(linear::Design::Sparse { rows: &self.test, dim: BAG_OF_WORDS_DIM }), val, lr.c))
    }
}


/// The inverse L2 strength of the bag-of-words score that `head.inputs = "transfer+bow"` adds (fixed, not chosen
/// per run: chosen once on the IMDB validation split, where 10 and 100 were within a point).
pub const STACKED_C: f64 = 10.0;
/// Fewer training examples than this, and the score is left out (a zero column): a bag-of-words model of a few
/// dozen texts is mostly noise, and a head that weighs it can do worse than chance on a bad draw. Chosen on the IMDB
/// validation split (the stacked head against the transfer head alone: -1.6 points at 16 examples, -0.4 at 32,
/// +0.5 at 64, 0 at 128, +2.5 at 256).
pub const STACKED_MIN_EXAMPLES: usize = 128;
/// Folds of the out-of-fold score (fewer when a class has fewer training examples).
pub const STACKED_FOLDS: usize = 5;

impl BagOfWords {
    /// The same rows with only the training rows at `idx` (a learning curve's subset).
    pub fn subset(&self, idx: &[usize]) -> Self {
        Self {
            train: idx.iter().map(|&i| self.train[i].clone()).collect(),
            train_y: idx.iter().map(|&i| self.train_y[i]).collect(),
            validation: self.validation.clone(),
            validation_y: self.validation_y.clone(),
            test: self.test.clone(),
            test_y: self.test_y.clone(),
            tfidf: Arc::clone(&self.tfidf),
            stacked: OnceLock::new(),
            scorer: OnceLock::new(),
        }
    }

    /// The model behind the validation and test rows' scores of [`Self::stacked_scores`]: the logistic regression
    /// (C = [`STACKED_C`]) fitted on every training row, with the TF-IDF map, so texts the run has not seen are
    /// scored as its test rows were (`predict`). Below [`STACKED_MIN_EXAMPLES`] training examples it scores every
    /// text 0, as the run's column is then.
    pub fn stacked_scorer(&self) -> Result<&StackedScorer> {
        if let Some(s) = self.scorer.get() {
            return Ok(s);
        }
        let model = if self.train.len() < STACKED_MIN_EXAMPLES {
            None
        } else {
            Some(linear::fit(Design::Sparse { rows: &self.train, dim: BAG_OF_WORDS_DIM }, &self.train_y, STACKED_C)?)
        };
        Ok(self.scorer.get_or_init(|| StackedScorer { tfidf: Arc::clone(&self.tfidf), model }))
    }

    /// The bag-of-words score (the logistic regression's margin `x·w + b`, C = [`STACKED_C`]) of every row, for
    /// the head to read beside the transferred features: for a training row from a model fitted on the other
    /// folds (stratified, [`STACKED_FOLDS`] folds shuffled by `seed`), so the score of a training row is never
    /// one that has seen its label; for validation and test rows from the model fitted on all training rows.
    /// `[train, validation, test]`.
    ///
    /// With fewer than [`STACKED_MIN_EXAMPLES`] training examples every score is 0 (the head then ignores the
    /// column). Fails with fewer than 2 training examples of a class (no fold could hold one out).
    pub fn stacked_scores(&self, seed: u64) -> Result<[Vec<f32>; 3]> {
        if let Some((s, scores)) = self.stacked.get()
            && *s == seed
        {
            return Ok(scores.clone());
        }
        let scores = self.compute_stacked_scores(seed)?;
        let _ = self.stacked.set((seed, scores.clone()));
        Ok(scores)
    }

    fn compute_stacked_scores(&self, seed: u64) -> Result<[Vec<f32>; 3]> {
        let Some((fold_of, folds)) = linear::stratified_folds(&self.train_y, STACKED_FOLDS, seed) else {
            let smallest = [0u8, 1].map(|c| self.train_y.iter().filter(|&&l| l.min(1) == c).count()).into_iter().min().unwrap_or(0);
            return Err(Error::Features(format!("head.inputs = \"transfer+bow\" needs at least 2 training examples of each class for its out-of-fold score, found {smallest}")));
        };
        if self.train.len() < STACKED_MIN_EXAMPLES {
            return Ok([vec![0.0; self.train.len()], vec![0.0; self.validation.len()], vec![0.0; self.test.len()]]);
        }
        let dim = BAG_OF_WORDS_DIM;
        let mut train_scores = vec![0f32; self.train.len()];
        for f in 0..folds {
            let (fit_idx, held): (Vec<usize>, Vec<usize>) = (0..self.train.len()).partition(|&i| fold_of[i] != f);
            let rows: Vec<linear::SparseRow> = fit_idx.iter().map(|&i| self.train[i].clone()).collect();
            let y: Vec<u8> = fit_idx.iter().map(|&i| self.train_y[i]).collect();
            let lr = linear::fit(Design::Sparse { rows: &rows, dim }, &y, STACKED_C)?;
            let held_rows: Vec<linear::SparseRow> = held.iter().map(|&i| self.train[i].clone()).collect();
            for (&i, m) in held.iter().zip(lr.margins(Design::Sparse { rows: &held_rows, dim })) {
                train_scores[i] = m;
            }
        }
        let scorer = self.stacked_scorer()?;
        Ok([train_scores, scorer.score_rows(&self.validation), scorer.score_rows(&self.test)])
    }
}

/// The file in a run directory that holds its [`StackedScorer`] (with `head.inputs = "transfer+bow"`).
pub const STACKED_SCORER_FILE: &str = "bow_score.json";

/// The bag-of-words score a `transfer+bow` head reads beside the transferred features, for any text: the TF-IDF map
/// and the logistic regression fitted on a run's training texts ([`BagOfWords::stacked_scorer`]). A run saves it
/// with its head ([`STACKED_SCORER_FILE`]), so `predict` gives new texts the column their head was trained beside.
/// It is a model of the client's own texts (its IDF weights and word weights): saved owner-only, never sent.
#[derive(Debug, Clone, PartialEq)]
pub struct StackedScorer {
    tfidf: Arc<HashedTfidf>,
    /// `None`: fitted on fewer than [`STACKED_MIN_EXAMPLES`] examples, every score 0.
    model: Option<LogisticRegression>,
}

/// [`StackedScorer`] on disk: buckets whose IDF weight is the commonest one (those no training text hashed to)
/// and zero weights are left out, so a run on short texts keeps a small file.
#[derive(Debug, Serialize, Deserialize)]
struct ScorerFile {
    format: u32,
    /// [`crate::rundir::features_key`] of the config whose run fitted it.
    features_key: String,
    dim: usize,
    ngrams: usize,
    idf_default: f32,
    /// (bucket, IDF weight) where it differs from `idf_default`, buckets ascending.
    idf: Vec<(u32, f32)>,
    model: Option<ScorerModel>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ScorerModel {
    /// (bucket, weight) of the non-zero weights, buckets ascending.
    weights: Vec<(u32, f32)>,
    bias: f32,
    c: f64,
}

const SCORER_FORMAT: u32 = 1;
/// Larger weights, IDF weights or bias than this mark a damaged file: a fitted model's are below 100 (L2 on
/// L2-normalised rows; an IDF weight is at most 1 + ln(1 + texts)), and these keep every score finite.
const MAX_MAGNITUDE: f32 = 1e6;

/// A number (not NaN) within ±[`MAX_MAGNITUDE`].
fn within_magnitude(x: f32) -> bool {
    x.is_finite() && x.abs() <= MAX_MAGNITUDE
}

impl StackedScorer {
    /// The score (the logistic regression's margin `x·w + b`) of rows of the bag-of-words map.
    pub fn score_rows(&self, rows: &[linear::SparseRow]) -> Vec<f32> {
        match &self.model {
            Some(lr) => lr.margins(Design::Sparse { rows, dim: self.tfidf.idf().len() }),
            None => vec![0.0; rows.len()],
        }
    }

    /// The score of each text.
    pub fn score_texts(&self, texts: &[String]) -> Vec<f32> {
        self.score_rows(&self.tfidf.transform_sparse(texts))
    }

    /// Write it to `path` (atomically, owner-only), marked with the [`crate::rundir::features_key`] of the run.
    pub fn save(&self, path: &Path, features_key: &str) -> Result<()> {
        let idf = self.tfidf.idf();
        let idf_default = commonest(idf);
        let sparse = |v: &[f32], skip: f32| -> Vec<(u32, f32)> {
            v.iter().enumerate().filter(|&(_, &x)| x.to_bits() != skip.to_bits()).map(|(i, &x)| (i as u32, x)).collect()
        };
        let file = ScorerFile {
            format: SCORER_FORMAT,
            features_key: features_key.into(),
            dim: idf.len(),
            ngrams: self.tfidf.ngrams(),
            idf_default,
            idf: sparse(idf, idf_default),
            model: self.model.as_ref().map(|lr| ScorerModel { weights: sparse(&lr.weights, 0.0), bias: lr.bias, c: lr.c }),
        };
        let json = serde_json::to_vec(&file).map_err(|e| Error::Internal(format!("bag-of-words scorer: {e}")))?;
        crate::atomic::write_private(path, &json)
    }

    /// Read what [`Self::save`] wrote, checking it: a corrupt file, or one of a run made by another config than the
    /// one whose features key is `features_key`, is refused.
    pub fn load(path: &Path, features_key: &str) -> Result<Self> {
        let bytes = match std::fs::read(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::artifact(path, "not found: this run's `transfer+bow` head needs the bag-of-words model its run saves \
                    (runs made before it was saved do not have it): run `cryptotl run <config>` (or `features` + `train-head`) again"));
            }
            r => r.map_err(|e| Error::io(path, e))?,
        };
        let corrupt = |m: String| Error::artifact(path, format!("corrupt bag-of-words model: {m}"));
        let f: ScorerFile = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if f.format != SCORER_FORMAT {
            return Err(corrupt(format!("format {} (this version reads {SCORER_FORMAT})", f.format)));
        }
        if f.features_key != features_key {
            return Err(Error::artifact(path, format!("made by the run of another config (key {}, the run directory's features have {features_key}): run it again", f.features_key)));
        }
        if f.dim != BAG_OF_WORDS_DIM || !(1..=3).contains(&f.ngrams) {
            return Err(corrupt(format!("{} buckets of {}-grams (a run's bag of words has {BAG_OF_WORDS_DIM} buckets of 1- to 3-grams)", f.dim, f.ngrams)));
        }
        let dense = |entries: &[(u32, f32)], fill: f32, what: &str| -> Result<Vec<f32>> {
            let mut v = vec![fill; f.dim];
            let mut last = None;
            for &(i, x) in entries {
                if (i as usize) >= f.dim || last.is_some_and(|l| i <= l) || !within_magnitude(x) {
                    return Err(corrupt(format!("{what}: entry ({i}, {x}) out of order, out of range, or not a number within ±{MAX_MAGNITUDE:e}")));
                }
                v[i as usize] = x;
                last = Some(i);
            }
            Ok(v)
        };
        if !within_magnitude(f.idf_default) {
            return Err(corrupt(format!("IDF weight {} not a number within ±{MAX_MAGNITUDE:e}", f.idf_default)));
        }
        let tfidf = HashedTfidf::with_idf(f.ngrams, dense(&f.idf, f.idf_default, "IDF weights")?);
        let model = match f.model {
            None => None,
            Some(m) if within_magnitude(m.bias) && m.c.is_finite() && m.c > 0.0 => {
                Some(LogisticRegression { weights: dense(&m.weights, 0.0, "weights")?, bias: m.bias, c: m.c, iterations: 0 })
            }
            Some(m) => return Err(corrupt(format!("bias {} or C {} out of range", m.bias, m.c))),
        };
        Ok(Self { tfidf: Arc::new(tfidf), model })
    }
}

/// The value that occurs most often in `v` (by bit pattern; 0 for an empty slice).
fn commonest(v: &[f32]) -> f32 {
    let mut counts: std::collections::HashMap<u32, usize> = std::collections::HashMap::new();
    for x in v {
        *counts.entry(x.to_bits()).or_default() += 1;
    }
    counts.into_iter().max_by_key(|&(bits, n)| (n, bits)).map_or(0.0, |(bits, _)| f32::from_bits(bits))
}
