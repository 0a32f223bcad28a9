//! `[baselines]`, `[curve]` and `[audit]`: what a run measures beside the transfer head.

use serde::{Deserialize, Serialize};

use super::Invalid;
use crate::error::Result;

/// Canaries per audit when `[audit] canaries` is not given.
pub const DEFAULT_CANARIES: usize = 1000;
/// The canary counts an audit accepts (`[audit] canaries` and `cryptotl audit --canaries`).
pub const CANARIES: std::ops::RangeInclusive<usize> = 2..=1_000_000;

/// The message for a canary count outside [`CANARIES`].
pub fn canaries_out_of_range(m: usize) -> String {
    format!("must be in {}..={}, got {m}", CANARIES.start(), CANARIES.end())
}

/// Baselines trained in the same run, for comparison with transfer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BaselinesConfig {
    /// The head trained directly on the target's scaled features (no transfer).
    pub raw_features_head: bool,
    /// The whole network (lower + head) trained from scratch on the target only, by Adam at `[head_training]` on the
    /// target's features standardised over its training rows.
    pub target_only_network: bool,
    /// Bag-of-words logistic regression on the target alone: TF-IDF of word 1-2-grams hashed to 2^18 buckets,
    /// L2 with C chosen on the validation split, no transfer and no privacy: the strongest simple baseline a
    /// practitioner would try first.
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
#[serde(deny_unknown_fields, default)]
pub struct CurveConfig {
    /// Compute the curves in every `run` (`cryptotl curve` computes them regardless).
    pub enabled: bool,
    /// Subset sizes. Default: 16, 32, 64, ... doubling below the training split's size, then all of it. A size above
    /// the training split's is taken as all of it (with a warning).
    pub sizes: Option<Vec<usize>>,
    /// Seeded draws per size (averaged; the spread is reported).
    pub draws: usize,
    /// How a linear head (and the bag-of-words baseline) below the full size chooses its C and, beside own
    /// features, their weight: `cross_validation` (the default) on the subset's own labels, since a client with that
    /// many labels has no others; or `validation_split`, on the whole validation split at every size (labels a
    /// client that small would not have: it flatters every method, most those with many inputs). The full-size
    /// point always chooses on the validation split, as the run's heads do.
    pub selection: CurveSelection,
    /// Folds of `selection = "cross_validation"` (fewer when a class has fewer examples in the subset).
    pub folds: usize,
}
impl Default for CurveConfig {
    fn default() -> Self {
        Self { enabled: true, sizes: None, draws: 5, selection: CurveSelection::default(), folds: DEFAULT_CURVE_FOLDS }
    }
}

/// Folds of the learning curves' cross-validation when `[curve] folds` is not given.
pub const DEFAULT_CURVE_FOLDS: usize = 5;
/// The most seeded repeats of one measurement: a learning curve's draws per size, a sweep's repeats per setting.
pub const MAX_DRAWS: usize = 1000;

/// Where a learning curve's heads choose their C ([`CurveConfig::selection`]).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CurveSelection {
    /// Stratified cross-validation on the subset's own labelled examples.
    #[default]
    CrossValidation,
    /// The whole validation split, at every size.
    ValidationSplit,
}

impl CurveSelection {
    /// The name a config uses.
    pub fn name(self) -> &'static str {
        match self {
            Self::CrossValidation => "cross_validation",
            Self::ValidationSplit => "validation_split",
        }
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
    /// Measure a membership-inference attack on the server's source data through the client's view, for the
    /// budget section ([`crate::membership`]; a shipped network quotes the figure measured when it was built, any
    /// other network is attacked in the run, on its source data: seconds once the embeddings are cached).
    pub membership: bool,
}
impl Default for AuditConfig {
    fn default() -> Self {
        Self { enabled: true, canaries: DEFAULT_CANARIES, seed: 0, membership: true }
    }
}

impl CurveConfig {
    /// Draws in range and sizes that hold one example per class.
    pub(super) fn check(&self, at: Invalid) -> Result<()> {
        if !(1..=MAX_DRAWS).contains(&self.draws) {
            return Err(at.key("curve.draws", format!("must be in 1..={MAX_DRAWS}, got {}", self.draws)));
        }
        if !(2..=20).contains(&self.folds) {
            return Err(at.key("curve.folds", format!("must be in 2..=20, got {}", self.folds)));
        }
        if let Some(sizes) = &self.sizes
            && (sizes.is_empty() || sizes.iter().any(|&n| n < 2))
        {
            return Err(at.key("curve.sizes", format!("must list sizes of at least 2 (one example per class), got {sizes:?}")));
        }
        Ok(())
    }
}

impl AuditConfig {
    /// A canary count in [`CANARIES`].
    pub(super) fn check(&self, at: Invalid) -> Result<()> {
        if !CANARIES.contains(&self.canaries) {
            return Err(at.key("audit.canaries", canaries_out_of_range(self.canaries)));
        }
        Ok(())
    }
}
