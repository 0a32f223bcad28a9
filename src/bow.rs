//! The client's bag-of-words model: TF-IDF of word 1-2-grams hashed to 2^18 buckets with an L2 logistic
//! regression, fitted on the target's training texts alone. It is the strongest simple baseline of every report
//! (no transfer, no privacy), and with `head.inputs = "transfer+bow"` its cross-fitted score is one more input of
//! the transfer head ([`BagOfWords::stacked_scores`]).


use crate::data::Split;
use crate::error::{Error, Result};
use crate::eval::Metrics;
use crate::linear::{self, Design};

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
    /// [`Self::stacked_scores`] once computed, with its seed: a run builds the head's inputs for the encrypted,
    /// float and clear-integer outputs from the same rows.
    stacked: std::sync::OnceLock<(u64, [Vec<f32>; 3])>,
}

impl BagOfWords {
    /// Fit the IDF on the target's training texts and featurize its training and test parts.
    pub fn new(target: &Split) -> Self {
        let tfidf = crate::features::HashedTfidf::fit(&target.train.texts, BAG_OF_WORDS_DIM, 2);
        Self {
            train: tfidf.transform_sparse(&target.train.texts),
            train_y: target.train.labels.clone(),
            validation: tfidf.transform_sparse(&target.validation.texts),
            validation_y: target.validation.labels.clone(),
            test: tfidf.transform_sparse(&target.test.texts),
            test_y: target.test.labels.clone(),
            stacked: std::sync::OnceLock::new(),
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
        let train = linear::Design::Sparse { rows: &self.train, dim: BAG_OF_WORDS_DIM };
        let candidates: Vec<linear::Candidate> = BAG_OF_WORDS_CS.iter().map(|&c| linear::Candidate { c, column_weights: None }).collect();
        let (lr, _, val) = linear::fit_choosing_by(train, &self.train_y, selection, &candidates)?;
        let c = lr.c;
        let p = lr.probabilities(linear::Design::Sparse { rows: &self.test, dim: BAG_OF_WORDS_DIM });
        Ok((Metrics::from_probabilities(&p, &self.test_y), val, c))
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
            stacked: std::sync::OnceLock::new(),
        }
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
        let lr = linear::fit(Design::Sparse { rows: &self.train, dim }, &self.train_y, STACKED_C)?;
        Ok([
            train_scores,
            lr.margins(Design::Sparse { rows: &self.validation, dim }),
            lr.margins(Design::Sparse { rows: &self.test, dim }),
        ])
    }
}
