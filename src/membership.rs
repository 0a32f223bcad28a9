//! Membership inference on the server's source data, through what the client sees: the frozen network's outputs
//! for inputs it chooses. This turns "the client sees outputs of a network trained on the source data" in the
//! budget table into a measured figure, with and without the server's mechanisms (DP pretraining, weight noise).
//!
//! The attack is the loss attack of Yeom et al. (CSF 2018), with the one part the client lacks, the server's
//! output layer, replaced by what a client can fit: an L2 logistic-regression probe on the network's outputs for
//! *reference* examples it knows were not trained on (the source validation split here). Each candidate (text,
//! label) is scored by the probe's log-likelihood of its label; members of the training split, which the network
//! was fitted to, tend to score higher. Members are a seeded sample of the source training split, as many as the
//! non-members (a seeded sample of the source test split). Reported: the ROC AUC (0.5 = nothing learned about membership) and the
//! true-positive rate at a 1% false-positive rate (Carlini et al. 2022's measure of confident inference).
//!
//! Every run measures it for the budget section of its report (`[audit] membership`, [`crate::pipeline::source_membership`]);
//! `cryptotl server membership` runs it alone.
//!
//! The attack is an empirical lower bound on leakage, not a guarantee: a stronger attack may do better. DP
//! pretraining bounds every attack; this measures one.
//!
//! ```
//! use cryptotl::membership::{roc_auc, tpr_at_fpr};
//! assert_eq!(roc_auc(&[3.0, 4.0], &[1.0, 2.0]), 1.0);
//! assert_eq!(roc_auc(&[1.0, 1.0], &[1.0, 1.0]), 0.5);
//! assert_eq!(tpr_at_fpr(&[3.0, 4.0], &[1.0, 2.0], 0.01), 1.0);
//! ```

use ndarray::Array2;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::data::{Dataset, Split};
use crate::error::Result;

/// Inverse L2 strength of the attacker's probe (the linear head's default).
pub const PROBE_C: f64 = 1.0;
/// Most candidates per side (members, non-members); the rest are left out to bound the cost.
pub const MAX_CANDIDATES: usize = 5000;

/// What the attack measured.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MembershipAttack {
    /// The attack, in words.
    pub attack: String,
    /// Candidates drawn from the training split (members).
    pub members: usize,
    /// Candidates from the held-out split (non-members).
    pub non_members: usize,
    /// Reference examples the probe was fitted on (known non-members).
    pub reference: usize,
    /// ROC AUC of the score, members against non-members (0.5: chance).
    pub auc: f64,
    /// True-positive rate at a 1% false-positive rate.
    pub tpr_at_1pct_fpr: f64,
    /// Mean probe loss (cross-entropy) of the members.
    pub member_loss: f64,
    /// Mean probe loss of the non-members.
    pub non_member_loss: f64,
}

/// ROC AUC of `pos` (should score high) against `neg`: the probability that a random positive outscores a random
/// negative, ties counted half (the Mann-Whitney statistic). NaN when a side is empty.
pub fn roc_auc(pos: &[f64], neg: &[f64]) -> f64 {
    if pos.is_empty() || neg.is_empty() {
        return f64::NAN;
    }
    let mut all: Vec<(f64, bool)> = pos.iter().map(|&s| (s, true)).chain(neg.iter().map(|&s| (s, false))).collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Average ranks over ties, then the rank-sum of the positives.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j < all.len() && all[j].0 == all[i].0 {
            j += 1;
        }
        let mean_rank = (i + 1 + j) as f64 / 2.0;
        rank_sum += mean_rank * all[i..j].iter().filter(|e| e.1).count() as f64;
        i = j;
    }
    let (p, n) = (pos.len() as f64, neg.len() as f64);
    (rank_sum - p * (p + 1.0) / 2.0) / (p * n)
}

/// The fraction of `pos` above the threshold that lets at most `fpr` of `neg` through (strictly above it).
pub fn tpr_at_fpr(pos: &[f64], neg: &[f64], fpr: f64) -> f64 {
    if pos.is_empty() || neg.is_empty() {
        return f64::NAN;
    }
    let mut sorted = neg.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    // At most floor(fpr * n) negatives may score above the threshold.
    let allowed = (fpr * neg.len() as f64).floor() as usize;
    let threshold = sorted[allowed.min(sorted.len() - 1)];
    pos.iter().filter(|&&s| s > threshold).count() as f64 / pos.len() as f64
}

/// log P(label) under the probe, per row.
fn log_likelihoods(x: &Array2<f32>, y: &[u8], probe: &crate::linear::LogisticRegression) -> Vec<f64> {
    x.rows().into_iter().zip(y).map(|(row, &label)| probe.log_likelihood(row, label)).collect()
}

/// The loss attack on outputs the client received: a probe fitted on `reference` (known non-members), then
/// members and non-members scored by the probe's log-likelihood of their labels.
pub fn loss_attack(members: (&Array2<f32>, &[u8]), non_members: (&Array2<f32>, &[u8]), reference: (&Array2<f32>, &[u8])) -> Result<MembershipAttack> {
    let probe = crate::linear::fit(crate::linear::Design::Dense(reference.0.view()), reference.1, PROBE_C)?;
    let m = log_likelihoods(members.0, members.1, &probe);
    let n = log_likelihoods(non_members.0, non_members.1, &probe);
    let mean = |v: &[f64]| -v.iter().sum::<f64>() / v.len().max(1) as f64;
    Ok(MembershipAttack {
        attack: format!("loss attack (Yeom et al. 2018) through the network's outputs: L2 logistic probe (C = {PROBE_C}) fitted on known non-members, candidates scored by the log-likelihood of their label"),
        members: m.len(),
        non_members: n.len(),
        reference: reference.1.len(),
        auc: roc_auc(&m, &n),
        tpr_at_1pct_fpr: tpr_at_fpr(&m, &n, 0.01),
        member_loss: mean(&m),
        non_member_loss: mean(&n),
    })
}

/// The attack on a network's source data: members are a seeded sample (`seed`) of `source.train`, non-members as
/// many of `source.test`, the probe's reference is `source.validation`; `outputs` maps texts to what the client
/// would decrypt for them (the frozen network's outputs). At most [`MAX_CANDIDATES`] candidates per side.
pub fn attack_source(source: &Split, seed: u64, outputs: impl Fn(&[String]) -> Result<Array2<f32>>) -> Result<MembershipAttack> {
    let n = source.test.texts.len().min(MAX_CANDIDATES);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    // Both sides drawn at random from their split, so their mix of source paths (tweets, reviews, ...) is the same
    // in expectation: every path is split with the same fractions.
    let mut sample = |d: &Dataset| -> (Vec<String>, Vec<u8>) {
        let mut idx: Vec<usize> = (0..d.texts.len()).collect();
        idx.shuffle(&mut rng);
        idx.truncate(n);
        (idx.iter().map(|&i| d.texts[i].clone()).collect(), idx.iter().map(|&i| d.labels[i]).collect())
    };
    let (member_texts, member_y) = sample(&source.train);
    let (non_texts, non_y) = sample(&source.test);
    let x_members = outputs(&member_texts)?;
    let x_non = outputs(&non_texts)?;
    let x_ref = outputs(&source.validation.texts)?;
    loss_attack((&x_members, &member_y), (&x_non, &non_y), (&x_ref, &source.validation.labels))
}

impl MembershipAttack {
    /// The result as a Markdown table.
    pub fn to_markdown(&self) -> String {
        format!(
            "| members | non-members | reference | AUC | TPR at 1% FPR | member loss | non-member loss |\n|---:|---:|---:|---:|---:|---:|---:|\n| {} | {} | {} | {:.4} | {:.4} | {:.4} | {:.4} |\n\n{}.\n",
            self.members, self.non_members, self.reference, self.auc, self.tpr_at_1pct_fpr, self.member_loss, self.non_member_loss, self.attack
        )
    }
}
