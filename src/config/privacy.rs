//! `[privacy]` (the client's DP-SGD head) and `[server_privacy]` (what the server does for its source data).

use serde::{Deserialize, Serialize};

use super::{Invalid, check_delta, check_positive, check_within};
use crate::error::Result;

/// The server's protection of its source data: `[server_privacy.weight_noise]` and/or
/// `[server_privacy.dp_pretraining]`. Accounted by [`crate::privacy::server`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerPrivacyConfig {
    /// Gaussian noise on the frozen lower network's weights and biases after pretraining, before quantization.
    pub weight_noise: Option<WeightNoiseConfig>,
    /// DP-SGD pretraining of the lower network on the source data: the same engine, schedule planner and
    /// accountants as the client's `[privacy]`, run on `[pretrain]`'s schedule.
    pub dp_pretraining: Option<PrivacyConfig>,
    /// The most ε the server lets its releases of one pretrained network spend together, for whoever holds them all
    /// (none by default: each release is bounded by its own table alone). A new noised draw is refused before it is
    /// made when it and the noised releases stored for the same pretraining would compose above it (zCDP, at the
    /// draw's δ); a new DP pretraining, when it and the DP pretrainings it replaces would (ε adding). Releases
    /// already made are reused whatever it says.
    pub total_epsilon: Option<f64>,
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
    #[serde(default = "super::default_true")]
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

/// DP-SGD for the client head: Poisson sampling, per-example clipping, Gaussian noise, accounted by
/// `crate::privacy`. Give `noise_multiplier` (σ), or `target_epsilon` (σ is calibrated so that the whole schedule
/// spends at most that), or both (the run refuses to start if the schedule would spend more than the target).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacyConfig {
    /// Switch DP-SGD on or off without deleting the table.
    pub enabled: bool,
    /// Per-example gradient clipping norm C (over all parameters of the head).
    pub max_grad_norm: f64,
    /// Noise multiplier σ: noise std = σ·C.
    pub noise_multiplier: Option<f64>,
    /// ε the whole schedule may spend (at `delta`).
    pub target_epsilon: Option<f64>,
    /// Hard budget: training stops at the last step whose ε stays within it (a privacy filter).
    pub max_epsilon: Option<f64>,
    /// δ. Default 0.1/N for N training examples (below 1/N), stated in the report.
    pub delta: Option<f64>,
    /// How the steps are taken: `full_batch` (the default for the client's head: every step sees every example,
    /// q = 1, for `steps` steps at `learning_rate`; the privacy loss then has an exact closed form) or `minibatch`
    /// (Poisson batches of `sampling_rate`, `epochs` of the training schedule; the default for DP pretraining).
    pub recipe: Option<DpRecipe>,
    /// `full_batch`: gradient steps (default 100).
    pub steps: Option<usize>,
    /// `full_batch`: Adam's learning rate (default 0.05; not tuned per run, so it spends no privacy).
    pub learning_rate: Option<f64>,
    /// `minibatch`: Poisson sampling rate q. Default `batch_size / N` of the training schedule.
    pub sampling_rate: Option<f64>,
    /// Accountant of record: `tightest` (default: exact at q = 1, else the smaller of the `pld` and `rdp` bounds),
    /// `pld`, `rdp`, `zcdp` (q = 1 only). The report shows all that apply.
    pub accountant: AccountantKind,
    /// Fixed seed for sampling and noise. FOR TESTS ONLY: whoever knows the seed can remove the noise.
    pub insecure_seed: Option<u64>,
    /// The client's head with `head.inputs = "transfer+own"`: the weight its own (centred) features are multiplied
    /// by while DP-SGD trains it, in [0, 10]; 0 leaves them out. Default: [`dp_own_weight`] of the schedule's
    /// noise per example, a public rule (a non-private head chooses this weight on the validation split, which
    /// DP-SGD cannot do for free).
    pub own_weight: Option<f64>,
}

/// The weight of the client's own features in a DP-SGD head beside the transfer outputs when `[privacy]
/// own_weight` is not given: 1 when the noise DP-SGD adds to the mean clipped gradient, per coordinate and in units of
/// the clipping norm (`noise_multiplier / expected_batch`, the expected batch being every example in the full-batch
/// recipe; `privacy::plan::DpPlan::noise_per_example`), is at most [`DP_OWN_FEATURES_MAX_NOISE`]; else 0 (the transfer outputs alone). A public rule: it reads
/// only the schedule, which is fixed before training from ε, δ and the training set's size. With few examples or a
/// small ε the noise on the own features' hundreds of coordinates drowns what they add; with many it does not.
///
/// ```
/// use cryptotl::config::dp_own_weight;
/// assert_eq!(dp_own_weight(0.111), 0.0); // ε = 1, 256 examples (σ = 28.4)
/// assert_eq!(dp_own_weight(0.059), 1.0); // ε = 1, 512 examples
/// assert_eq!(dp_own_weight(0.066), 1.0); // ε = 4, 128 examples
/// ```
pub fn dp_own_weight(noise_per_example: f64) -> f64 {
    if noise_per_example <= DP_OWN_FEATURES_MAX_NOISE { 1.0 } else { 0.0 }
}

/// The largest noise on the mean clipped gradient (σ / expected batch) at which a DP-SGD head reads the client's
/// own features ([`dp_own_weight`]). Chosen on the quickstart's validation split (`cargo run --release --example
/// dp_own_weight`, ε = 1 and 4): the own features first help at σ / n between 0.066 and 0.124 at ε = 4 and between
/// 0.059 and 0.111 at ε = 1 (σ grows with N through δ = 1/N^1.1, so σ / n is printed from each size's schedule).
pub const DP_OWN_FEATURES_MAX_NOISE: f64 = 0.08;

/// Every key at its default: on, clipping norm 1, no noise given (so it does not validate until `noise_multiplier`
/// or `target_epsilon` is set), the tightest accountant.
impl Default for PrivacyConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_grad_norm: 1.0,
            noise_multiplier: None,
            target_epsilon: None,
            max_epsilon: None,
            delta: None,
            recipe: None,
            steps: None,
            learning_rate: None,
            sampling_rate: None,
            accountant: AccountantKind::default(),
            insecure_seed: None,
            own_weight: None,
        }
    }
}

impl PrivacyConfig {
    /// DP-SGD with every default and σ calibrated to spend `target_epsilon` (what sweeps use when the config has no
    /// table of its own).
    pub fn with_target_epsilon(target_epsilon: f64) -> Self {
        Self { target_epsilon: Some(target_epsilon), ..Self::default() }
    }
}

/// The accountants by name (config and CLI); displayed as [`AccountantKind::name`]. Each one's mechanism lives in
/// [`crate::privacy`] (`AccountantKind::accountant`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountantKind {
    /// OpenDP zCDP composition (exact for q = 1 only).
    Zcdp,
    /// Rényi DP (Opacus-compatible).
    Rdp,
    /// Privacy-loss distribution (tight).
    Pld,
    /// The smallest valid answer: exact at q = 1, else min(PLD, RDP) (the default).
    #[default]
    Tightest,
}

impl AccountantKind {
    /// Every accountant, in the order messages list them.
    pub const ALL: [AccountantKind; 4] = [Self::Zcdp, Self::Rdp, Self::Pld, Self::Tightest];

    /// The name configs, the CLI and reports use: `zcdp`, `rdp`, `pld`, `tightest`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Zcdp => "zcdp",
            Self::Rdp => "rdp",
            Self::Pld => "pld",
            Self::Tightest => "tightest",
        }
    }
}

impl std::fmt::Display for AccountantKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// ```
/// use cryptotl::config::AccountantKind;
/// assert_eq!("pld".parse::<AccountantKind>(), Ok(AccountantKind::Pld));
/// assert!("moments".parse::<AccountantKind>().unwrap_err().contains("tightest"));
/// ```
impl std::str::FromStr for AccountantKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        super::parse_named(&Self::ALL, Self::name, s, "accountant")
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

/// The range of a clipping norm (`max_grad_norm`) and of the weights' L2 sensitivity: noise of σ times it is drawn in
/// 32-bit floats, and a bound outside it can only be a mistake.
pub const CLIP_RANGE: (f64, f64) = (1e-6, 1e6);
/// The largest `noise_multiplier`: σ = 10^6 leaves a gradient no signal at any dataset size the project can hold.
pub const MAX_NOISE_MULTIPLIER: f64 = 1e6;
/// The largest `[server_privacy.weight_noise] noise_std`, for the same reason.
pub const MAX_WEIGHT_NOISE_STD: f64 = 1e6;

/// Full-batch steps when `[privacy] steps` is not given. Chosen on the server's side of the quickstart, not per run.
pub const DEFAULT_DP_STEPS: usize = 100;
/// Full-batch learning rate when `[privacy] learning_rate` is not given.
pub const DEFAULT_DP_LEARNING_RATE: f64 = 0.05;

impl WeightNoiseConfig {
    /// Positive sensitivity, std and ε; δ in (0, 1); exactly one of `noise_std` and `target_epsilon`.
    pub(super) fn check(&self, at: Invalid) -> Result<()> {
        let (w, err) = (self, |k: &str, m: String| at.key(k, m));
        let table = "server_privacy.weight_noise";
        let key = |k: &str| format!("{table}.{k}");
        check_positive(at, &key("l2_sensitivity"), Some(w.l2_sensitivity))?;
        check_within(at, &key("l2_sensitivity"), Some(w.l2_sensitivity), CLIP_RANGE, "the weights are noised in 32-bit floats")?;
        check_positive(at, &key("noise_std"), w.noise_std)?;
        check_within(at, &key("noise_std"), w.noise_std, (0.0, MAX_WEIGHT_NOISE_STD), "more noise than that leaves no signal")?;
        check_positive(at, &key("target_epsilon"), w.target_epsilon)?;
        check_delta(at, &key("delta"), w.delta)?;
        match (w.noise_std, w.target_epsilon) {
            (Some(_), Some(_)) => Err(err(table, "give either `noise_std` or `target_epsilon`, not both (the std follows from the target)".into())),
            (None, None) if w.enabled => Err(err(table, "give `noise_std` or `target_epsilon` (with `delta`)".into())),
            _ => Ok(()),
        }
    }
}

impl PrivacyConfig {
    /// The DP-SGD table at `table` (`privacy` or `server_privacy.dp_pretraining`): positive numbers, a recipe whose
    /// keys belong to it, noise or a target given, an accountant that covers the sampling.
    pub(super) fn check(&self, table: &str, at: Invalid) -> Result<()> {
        let (p, err) = (self, |k: &str, m: String| at.key(k, m));
        let key = |k: &str| format!("{table}.{k}");
        check_positive(at, &key("max_grad_norm"), Some(p.max_grad_norm))?;
        check_within(at, &key("max_grad_norm"), Some(p.max_grad_norm), CLIP_RANGE, "gradients are clipped and noised in 32-bit floats")?;
        check_positive(at, &key("noise_multiplier"), p.noise_multiplier)?;
        check_within(at, &key("noise_multiplier"), p.noise_multiplier, (0.0, MAX_NOISE_MULTIPLIER), "more noise than that leaves no signal")?;
        check_positive(at, &key("target_epsilon"), p.target_epsilon)?;
        check_positive(at, &key("max_epsilon"), p.max_epsilon)?;
        check_delta(at, &key("delta"), p.delta)?;
        check_positive(at, &key("learning_rate"), p.learning_rate)?;
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
            return Err(err(&format!("{table}.sampling_rate"), format!("must be in (0, 1], got {}", super::shown_number(q))));
        }
        if p.enabled && p.noise_multiplier.is_none() && p.target_epsilon.is_none() {
            return Err(err(table, "give `noise_multiplier` or `target_epsilon` (or both)".into()));
        }
        if let Some(w) = p.own_weight {
            if table != "privacy" {
                return Err(err(&key("own_weight"), "weighs the client's own features in its DP-SGD head; it belongs to [privacy] only".into()));
            }
            if !(w.is_finite() && (0.0..=10.0).contains(&w)) {
                return Err(err(&key("own_weight"), format!("must be in [0, 10], got {}", super::shown_number(w))));
            }
        }
        if p.accountant == AccountantKind::Zcdp && p.sampling_rate.is_some_and(|q| q < 1.0) {
            return Err(err(&format!("{table}.accountant"), "zcdp accounts only full-batch training (sampling_rate = 1); use pld or rdp".into()));
        }
        Ok(())
    }
}
