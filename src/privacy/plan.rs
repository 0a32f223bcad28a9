//! Turning a `[privacy]` config into a DP-SGD schedule that is known to fit the budget before training starts,
//! and the privacy section of the run report.

use serde::{Deserialize, Serialize};

use super::{AccountantKind, SubsampledGaussian, calibrate_noise};
use crate::config::{DpRecipe, PrivacyConfig, TrainConfig};
use crate::error::{Error, Result};

/// Above this noise per example (σ / expected batch) a DP-SGD schedule is flagged as unreliable
/// ([`DpPlan::noise_warning`]).
pub const UNRELIABLE_NOISE_PER_EXAMPLE: f64 = 0.5;

/// A resolved DP-SGD schedule.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DpPlan {
    /// Poisson sampling rate q.
    pub sampling_rate: f64,
    /// Noise multiplier σ (given or calibrated).
    pub noise_multiplier: f64,
    /// Whether σ was calibrated from `target_epsilon`.
    pub noise_calibrated: bool,
    /// Clipping norm C.
    pub max_grad_norm: f64,
    /// Steps per epoch, round(1/q).
    pub steps_per_epoch: usize,
    /// Steps the schedule asks for (epochs × steps per epoch).
    pub steps_planned: usize,
    /// Steps the hard budget allows (= planned when there is none or it suffices).
    pub steps_allowed: usize,
    /// δ.
    pub delta: f64,
    /// Where δ came from.
    pub delta_source: String,
    /// Accountant of record.
    pub accountant: AccountantKind,
    /// ε of record after `steps_allowed` steps.
    pub epsilon: f64,
    /// Hard budget, if any.
    pub max_epsilon: Option<f64>,
    /// Training examples N.
    pub examples: usize,
    /// How the steps are taken.
    #[serde(default = "minibatch")]
    pub recipe: crate::config::DpRecipe,
    /// The optimiser's learning rate for these steps.
    #[serde(default)]
    pub learning_rate: f64,
}

fn minibatch() -> crate::config::DpRecipe {
    crate::config::DpRecipe::Minibatch
}

impl DpPlan {
    /// The mechanism of one step.
    pub fn mechanism(&self) -> SubsampledGaussian {
        SubsampledGaussian { sampling_rate: self.sampling_rate, noise_multiplier: self.noise_multiplier }
    }
    /// The noise DP-SGD adds to the mean clipped gradient, per coordinate and in units of the clipping norm:
    /// σ / expected batch (q·N, at least 1). What [`crate::config::dp_own_weight`] reads.
    pub fn noise_per_example(&self) -> f64 {
        self.noise_multiplier / (self.sampling_rate * self.examples as f64).max(1.0)
    }
    /// A warning when the schedule's noise per example ([`Self::noise_per_example`]) passes
    /// [`UNRELIABLE_NOISE_PER_EXAMPLE`]: the noise on every step's mean clipped gradient is then more than half the
    /// size of any one example's clipped gradient, and a head's accuracy varies widely from one training to the
    /// next (measured at ε = 1: 16 quickstart sentences, σ / n = 1.27, 0.71 ± 0.27 over five draws; 32 IMDB reviews,
    /// 0.70, 0.73 ± 0.12; from σ / n = 0.38 the spread falls to 0.01-0.02). `None` below it.
    pub fn noise_warning(&self) -> Option<String> {
        let noise = self.noise_per_example();
        (noise > UNRELIABLE_NOISE_PER_EXAMPLE).then(|| {
            format!(
                "DP-SGD noise per example σ / expected batch = {noise:.2} > {UNRELIABLE_NOISE_PER_EXAMPLE} ({} examples, σ = {:.2}): \
                 the noise outweighs the examples' clipped gradients, so the private head's accuracy will vary widely \
                 from run to run; more labelled examples or a larger ε make it dependable",
                self.examples, self.noise_multiplier
            )
        })
    }
    /// True when the hard budget cuts the schedule short.
    pub fn stopped_by_budget(&self) -> bool {
        self.steps_allowed < self.steps_planned
    }
}

/// Resolve the schedule for `n` training examples. Refuses (with the ε it would spend) a schedule beyond
/// `target_epsilon`; cuts it at the last step within `max_epsilon`.
pub fn plan(cfg: &PrivacyConfig, train: &TrainConfig, n: usize) -> Result<DpPlan> {
    if n == 0 {
        return Err(Error::Privacy("no training examples".into()));
    }
    // Without a recipe: full batch when sampling_rate is not given, else the minibatch schedule it belongs to.
    let recipe = cfg.recipe.unwrap_or(if cfg.sampling_rate.is_some() { DpRecipe::Minibatch } else { DpRecipe::FullBatch });
    let (q, steps_per_epoch, steps, learning_rate) = match recipe {
        DpRecipe::FullBatch => {
            let steps = cfg.steps.unwrap_or(crate::config::DEFAULT_DP_STEPS);
            // Epochs are only the unit of the report's ε-per-epoch table here: ten of them.
            (1.0, steps.div_ceil(10).max(1), steps, cfg.learning_rate.unwrap_or(crate::config::DEFAULT_DP_LEARNING_RATE))
        }
        DpRecipe::Minibatch => {
            let q = cfg.sampling_rate.unwrap_or_else(|| (train.batch_size as f64 / n as f64).min(1.0));
            let steps_per_epoch = ((1.0 / q).round() as usize).max(1);
            let steps = train.epochs.checked_mul(steps_per_epoch).filter(|&s| s <= super::MAX_STEPS).ok_or_else(|| {
                Error::Privacy(format!("{} epochs × {steps_per_epoch} steps per epoch is past the accountants' maximum of {} steps", train.epochs, super::MAX_STEPS))
            })?;
            (q, steps_per_epoch, steps, train.learning_rate)
        }
    };
    let (delta, delta_source) = match cfg.delta {
        Some(d) => (d, "config".to_string()),
        None => (0.1 / n as f64, format!("default 0.1/N = 0.1/{n}")),
    };
    let acct = cfg.accountant.accountant();
    let (sigma, calibrated) = match (cfg.noise_multiplier, cfg.target_epsilon) {
        (Some(s), _) => (s, false),
        (None, Some(target)) => (calibrate_noise(acct.as_ref(), q, steps, delta, target)?, true),
        (None, None) => return Err(Error::Privacy("give noise_multiplier or target_epsilon".into())),
    };
    super::dpsgd::check_noise_std(sigma * cfg.max_grad_norm, "DP-SGD's noise std σ·C")?;
    let m = SubsampledGaussian::new(q, sigma)?;
    let planned_eps = acct.epsilon(&m, steps, delta)?;
    if let Some(target) = cfg.target_epsilon
        && planned_eps > target
    {
        return Err(Error::Privacy(format!(
            "the schedule ({steps} steps, q = {q:.4}, σ = {sigma}) would spend ε = {} \
             at δ = {} ({}), more than target_epsilon = {target}; refusing to start. Take fewer steps, raise \
             noise_multiplier, or drop it to have σ calibrated",
            super::shown::epsilon(planned_eps),
            super::shown::delta(delta),
            acct.name()
        )));
    }
    let mut steps_allowed = steps;
    let mut epsilon = planned_eps;
    if let Some(max) = cfg.max_epsilon
        && planned_eps > max
    {
        // The largest T with ε(T) <= max: ε grows with T, so bisect.
        let (mut lo, mut hi) = (0usize, steps);
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            if acct.epsilon(&m, mid, delta)? <= max { lo = mid } else { hi = mid }
        }
        if lo == 0 {
            return Err(Error::Privacy(format!("a single step already spends more than max_epsilon = {max}; refusing to start")));
        }
        steps_allowed = lo;
        epsilon = acct.epsilon(&m, lo, delta)?;
    }
    Ok(DpPlan {
        sampling_rate: q,
        noise_multiplier: sigma,
        noise_calibrated: calibrated,
        max_grad_norm: cfg.max_grad_norm,
        steps_per_epoch,
        steps_planned: steps,
        steps_allowed,
        delta,
        delta_source,
        accountant: cfg.accountant,
        epsilon,
        max_epsilon: cfg.max_epsilon,
        examples: n,
        recipe,
        learning_rate,
    })
}

/// ε of one accountant in the report.
#[derive(Debug, Clone, Serialize)]
pub struct AccountantEpsilon {
    /// Accountant name.
    pub accountant: AccountantKind,
    /// ε after the steps run (`None` where the accountant does not apply, e.g. zcdp with q < 1).
    pub epsilon: Option<f64>,
}

/// ε after each epoch.
#[derive(Debug, Clone, Serialize)]
pub struct EpochEpsilon {
    /// Epoch (1-based).
    pub epoch: usize,
    /// Steps run by its end.
    pub steps: usize,
    /// ε of record.
    pub epsilon: f64,
}

/// The privacy section of the report: what the client's head costs its training data.
#[derive(Debug, Clone, Serialize)]
pub struct PrivacyReport {
    /// What was run.
    pub mechanism: String,
    /// The schedule.
    pub plan: DpPlan,
    /// Steps actually run.
    pub steps_run: usize,
    /// Epochs run (the last may be partial when a hard budget stops training).
    pub epochs_run: f64,
    /// Whether the hard budget stopped training early.
    pub stopped_by_budget: bool,
    /// ε at δ per accountant after the steps run.
    pub epsilons: Vec<AccountantEpsilon>,
    /// ε of record after each epoch.
    pub per_epoch: Vec<EpochEpsilon>,
    /// Where the noise came from.
    pub noise_source: String,
    /// Test accuracy of the private head.
    pub accuracy_with_dp: f64,
    /// Test accuracy of the same head trained without DP in the same run.
    pub accuracy_without_dp: f64,
    /// [`DpPlan::noise_warning`]: set when the schedule's noise per example makes the head unreliable.
    pub warning: Option<String>,
}

impl PrivacyReport {
    /// Account the `plan.steps_allowed` steps that training runs under every applicable accountant. The accountant
    /// of record's ε after all steps is `plan.epsilon`, already computed by [`plan`], and is reused, not recomputed.
    pub fn new(plan: &DpPlan, insecure_seed: bool, accuracy_with_dp: f64, accuracy_without_dp: f64) -> Result<Self> {
        let m = plan.mechanism();
        let steps_run = plan.steps_allowed;
        let mut epsilons = Vec::new();
        for kind in [AccountantKind::Tightest, AccountantKind::Pld, AccountantKind::Rdp, AccountantKind::Zcdp] {
            let epsilon = if kind == plan.accountant {
                Some(plan.epsilon)
            } else if kind == AccountantKind::Zcdp && plan.sampling_rate < 1.0 {
                None
            } else {
                Some(kind.accountant().epsilon(&m, steps_run, plan.delta)?)
            };
            epsilons.push(AccountantEpsilon { accountant: kind, epsilon });
        }
        let acct = plan.accountant.accountant();
        let mut per_epoch = Vec::new();
        let mut steps = 0;
        let mut epoch = 0;
        while steps < steps_run {
            epoch += 1;
            steps = (steps + plan.steps_per_epoch).min(steps_run);
            let epsilon = if steps == steps_run { plan.epsilon } else { acct.epsilon(&m, steps, plan.delta)? };
            per_epoch.push(EpochEpsilon { epoch, steps, epsilon });
        }
        Ok(Self {
            mechanism: "DP-SGD on the client head: Poisson-subsampled Gaussian mechanism, add/remove-one adjacency, \
                        per-example clipping over all head parameters"
                .into(),
            plan: plan.clone(),
            steps_run,
            epochs_run: steps_run as f64 / plan.steps_per_epoch as f64,
            stopped_by_budget: plan.stopped_by_budget(),
            epsilons,
            per_epoch,
            noise_source: super::dpsgd::noise_source(insecure_seed).into(),
            accuracy_with_dp,
            accuracy_without_dp,
            warning: plan.noise_warning(),
        })
    }
}
