//! Classification metrics on held-out data.
//!
//! ```
//! let m = cryptotl::eval::Metrics::from_probabilities(&[0.9, 0.2, 0.7, 0.4], &[1, 0, 0, 1]);
//! assert_eq!(m.accuracy, 0.5);
//! assert_eq!((m.confusion.tp, m.confusion.fp, m.confusion.tn, m.confusion.fn_), (1, 1, 1, 1));
//! ```

use serde::{Deserialize, Serialize};

/// Counts of a binary confusion matrix (positive = label 1).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Confusion {
    /// True positives.
    pub tp: usize,
    /// False positives.
    pub fp: usize,
    /// True negatives.
    pub tn: usize,
    /// False negatives.
    #[serde(rename = "fn")]
    pub fn_: usize,
}

/// Accuracy, precision, recall and F1 of the positive class at threshold 0.5.
/// Precision (recall) is 0 when nothing was predicted (is) positive, as in scikit-learn's `zero_division=0`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Metrics {
    /// Examples evaluated.
    pub n: usize,
    /// Fraction correct.
    pub accuracy: f64,
    /// tp / (tp + fp).
    pub precision: f64,
    /// tp / (tp + fn).
    pub recall: f64,
    /// Harmonic mean of precision and recall.
    pub f1: f64,
    /// The confusion matrix.
    pub confusion: Confusion,
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

impl Metrics {
    /// Metrics of positive-class probabilities against 0/1 labels (same length).
    pub fn from_probabilities(probs: &[f32], labels: &[u8]) -> Self {
        assert_eq!(probs.len(), labels.len(), "one probability per label");
        let mut c = Confusion::default();
        for (&p, &y) in probs.iter().zip(labels) {
            match (p >= 0.5, y == 1) {
                (true, true) => c.tp += 1,
                (true, false) => c.fp += 1,
                (false, false) => c.tn += 1,
                (false, true) => c.fn_ += 1,
            }
        }
        let precision = ratio(c.tp, c.tp + c.fp);
        let recall = ratio(c.tp, c.tp + c.fn_);
        let f1 = if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
        Self { n: labels.len(), accuracy: ratio(c.tp + c.tn, labels.len()), precision, recall, f1, confusion: c }
    }
}

/// Whether each example is classified correctly at threshold 0.5, in order: what [`Metrics::accuracy`] counts.
///
/// ```
/// assert_eq!(cryptotl::eval::correct(&[0.9, 0.2, 0.7, 0.4], &[1, 0, 0, 1]), vec![true, true, false, false]);
/// ```
pub fn correct(probs: &[f32], labels: &[u8]) -> Vec<bool> {
    assert_eq!(probs.len(), labels.len(), "one probability per label");
    probs.iter().zip(labels).map(|(&p, &y)| (p >= 0.5) == (y == 1)).collect()
}
