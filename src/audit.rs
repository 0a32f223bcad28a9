//! An empirical lower bound on the client head's ε beside the accountant's upper bound: the one-run audit of
//! Steinke, Nasr and Jagielski ("Privacy auditing with one (1) training run", NeurIPS 2023).
//!
//! **The experiment.** `m` canaries are drawn; each is included in the training set independently with
//! probability 1/2. The head is trained once, by the same DP-SGD code and schedule as the run's head, on the real
//! training rows (centred on the run's public reference point, as the head's are) plus the included canaries. Every canary is then scored; the auditor guesses "in" for the `k`
//! highest scores, "out" for the `k` lowest, and abstains on the rest. If training is (ε, δ)-DP, the number of
//! correct guesses is (up to δ) no more likely than under randomised response with accuracy e^ε / (1 + e^ε), which
//! gives a p-value for every ε ([`p_value`]); the audit reports the largest ε rejected at 95% confidence
//! ([`epsilon_lower_bound`]). A bound above the accountant's ε means the accountant or the clipping is wrong.
//!
//! **The canaries** are white-box "Dirac" canaries in input space, which the client can use because it audits its
//! own training code: the head's input is widened by `m` columns that are 0 for every real row, and canary `c` is
//! the example whose only non-zero feature is column `c` (value [`CANARY_VALUE`], so its gradient is clipped to
//! the full norm C until it is fitted) with a random label. An included canary pulls its own weight towards its
//! label every step; an excluded one leaves that weight to the noise. Its score is that weight times the label's
//! sign. Canaries do not interfere with each other or with the data (disjoint columns), so with DP off the audit
//! separates them almost perfectly; with DP on, the noise the mechanism adds per coordinate is what hides them. The
//! widened head is a different model from the run's, but DP-SGD's guarantee does not depend on the model: the audit
//! checks the mechanism (clipping, noise, sampling, accounting) that every head of the run goes through.
//!
//! ```
//! use cryptotl::audit::{epsilon_lower_bound, p_value};
//! // 100 guesses, all correct, among 1,000 canaries: leakage that no ε below ln(q / (1 − q)) explains, where
//! // q^100 = 0.05 (at δ = 0): about 3.49.
//! let lb = epsilon_lower_bound(1000, 100, 100, 0.0, 0.05);
//! let q = 0.05f64.powf(0.01);
//! assert!((lb - (q / (1.0 - q)).ln()).abs() < 1e-4, "{lb}");
//! assert!(p_value(1000, 100, 100, lb, 0.0) <= 0.05 + 1e-9);
//! // Chance-level guessing proves nothing.
//! assert_eq!(epsilon_lower_bound(1000, 100, 50, 1e-5, 0.05), 0.0);
//! ```

use ndarray::Array2;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

use crate::config::{HeadKind, RunConfig};
use crate::error::{Error, Result};
use crate::pipeline::FeatureSplit;

/// The one non-zero feature of a canary: large enough that its gradient is clipped to the full norm until the
/// head has fitted it.
pub const CANARY_VALUE: f32 = 10.0;
/// Canaries when not configured, the counts an audit accepts, and the message for any other count (`[audit]`).
pub use crate::config::{CANARIES, DEFAULT_CANARIES, canaries_out_of_range};
/// Confidence of the reported lower bound: ε is rejected when its p-value is below `1 − 0.95`.
pub const CONFIDENCE: f64 = 0.95;
/// The most cells (rows × columns) the widened training matrix may hold: `(n + m) × (d + m)`, counting every canary
/// as included so the check is made before they are drawn. Training holds about two copies of it in f32 (measured:
/// 1.18 GB peak at 142 million cells, 16,000 canaries on the quickstart), so this caps the audit near 4 GB.
/// Time grows with the cells too (47 s for those 142 million on 2 cores): see `docs/privacy.md`, "Cost".
pub const MAX_AUDIT_CELLS: u64 = 500_000_000;

/// The cells of the widened training matrix in the worst case (every canary included).
pub fn audit_cells(n: usize, d: usize, m: usize) -> u64 {
    (n as u64 + m as u64) * (d as u64 + m as u64)
}

/// The most canaries whose worst-case widened matrix fits [`MAX_AUDIT_CELLS`] for `n` training rows of width `d`.
pub fn max_canaries(n: usize, d: usize) -> usize {
    let (mut lo, mut hi) = (0usize, *CANARIES.end());
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if audit_cells(n, d, mid) <= MAX_AUDIT_CELLS { lo = mid } else { hi = mid - 1 }
    }
    lo
}

/// P[at least `v` of `r` guesses correct] for an (ε, δ)-DP algorithm, among `m` canaries each included with
/// probability 1/2 (Steinke, Nasr and Jagielski 2023, Theorem 3.1 and Appendix D).
pub fn p_value(m: usize, r: usize, v: usize, eps: f64, delta: f64) -> f64 {
    if v == 0 || r == 0 {
        return 1.0;
    }
    let q = 1.0 / (1.0 + (-eps).exp());
    let pmf = |k: usize| binomial_pmf(r, k, q);
    // P[Binomial(r, q) >= v], summed from the top (each term exact to rounding; no 1 − cdf cancellation).
    let beta: f64 = (v..=r).rev().map(pmf).sum();
    if delta == 0.0 {
        return beta.min(1.0);
    }
    let (mut alpha, mut sum) = (0.0f64, 0.0f64);
    for i in 1..=v {
        sum += pmf(v - i);
        if sum > i as f64 * alpha {
            alpha = sum / i as f64;
        }
    }
    (beta + alpha * delta * 2.0 * m as f64).min(1.0)
}

/// P[Binomial(r, q) = k], in log space (`libm::lgamma`).
fn binomial_pmf(r: usize, k: usize, q: f64) -> f64 {
    if k > r {
        return 0.0;
    }
    let (rf, kf) = (r as f64, k as f64);
    let log_choose = libm::lgamma(rf + 1.0) - libm::lgamma(kf + 1.0) - libm::lgamma(rf - kf + 1.0);
    let log_q = if k == 0 { 0.0 } else { kf * q.ln() };
    let log_1q = if k == r { 0.0 } else { (rf - kf) * (-q).ln_1p() };
    (log_choose + log_q + log_1q).exp()
}

/// The largest ε (to 1e-6) whose p-value for `v` correct out of `r` guesses among `m` canaries stays below
/// `p` (0.05 for 95% confidence): the algorithm is not (ε, δ)-DP for any smaller ε. 0 when nothing is rejected.
pub fn epsilon_lower_bound(m: usize, r: usize, v: usize, delta: f64, p: f64) -> f64 {
    if p_value(m, r, v, 0.0, delta) >= p {
        return 0.0;
    }
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    while p_value(m, r, v, hi, delta) < p && hi < 100.0 {
        lo = hi;
        hi *= 2.0;
    }
    while hi - lo > 1e-6 {
        let mid = 0.5 * (lo + hi);
        if p_value(m, r, v, mid, delta) < p { lo = mid } else { hi = mid }
    }
    lo
}

/// What the audit found.
#[derive(Debug, Clone, Serialize)]
pub struct AuditResult {
    /// Canaries drawn.
    pub canaries: usize,
    /// Canaries included in training (each with probability 1/2).
    pub included: usize,
    /// Guesses made: the `guesses / 2` highest scores guessed in, the `guesses / 2` lowest out.
    pub guesses: usize,
    /// Correct guesses.
    pub correct: usize,
    /// δ of the audit (the run's).
    pub delta: f64,
    /// Confidence of the bound.
    pub confidence: f64,
    /// The largest ε rejected at that confidence: an empirical lower bound on the head's true ε.
    pub epsilon_lower_bound: f64,
    /// The accountant's ε for the same training (an upper bound).
    pub epsilon_claimed: f64,
    /// The accountant of record.
    pub accountant: String,
    /// σ, steps and q of the training that was audited.
    pub noise_multiplier: f64,
    /// Steps.
    pub steps: usize,
    /// Sampling rate.
    pub sampling_rate: f64,
    /// Wall time of the audit (widening, training the widened head, scoring), in seconds.
    pub seconds: f64,
}

/// Guess from the scores (high = "in"): the `k` highest in, the `k` lowest out; returns (guesses, correct).
pub fn guesses(scores: &[f64], included: &[bool], k: usize) -> (usize, usize) {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let k = k.min(scores.len() / 2);
    let correct = order[..k].iter().filter(|&&i| included[i]).count() + order[order.len() - k..].iter().filter(|&&i| !included[i]).count();
    (2 * k, correct)
}

/// What an audit of `cfg` with `m` canaries needs before any data is read: `[privacy]` on, the linear head, and
/// `m` in [`CANARIES`]. [`audit`] checks it again; `cryptotl audit` calls it first, so a refused audit does no work
/// and leaves no output folder behind. (Whether `m` canaries fit beside the training rows is known only once the
/// data is read: [`audit`] checks that.)
///
/// ```
/// use cryptotl::config::{RunConfig, QUICKSTART_TOML};
/// let plain = RunConfig::from_toml_str(QUICKSTART_TOML, "quickstart", &[]).unwrap();
/// assert!(cryptotl::audit::check(&plain, 1000).is_err()); // no [privacy]
/// let private = RunConfig::from_toml_str(QUICKSTART_TOML, "quickstart", &["privacy.target_epsilon=1".into()]).unwrap();
/// assert!(cryptotl::audit::check(&private, 1000).is_ok());
/// assert!(cryptotl::audit::check(&private, 1).is_err()); // too few canaries
/// ```
pub fn check(cfg: &RunConfig, m: usize) -> Result<()> {
    if cfg.client_privacy().is_none() {
        return Err(Error::config_key("privacy", "the audit checks the DP-SGD head: give a [privacy] table (e.g. --set privacy.target_epsilon=1)"));
    }
    if cfg.head.kind != HeadKind::Linear {
        return Err(Error::config_key("head.kind", "the audit's canaries widen a linear head; use head.kind = \"linear\""));
    }
    if !CANARIES.contains(&m) {
        return Err(Error::config_key("audit.canaries", canaries_out_of_range(m)));
    }
    Ok(())
}

/// Audit the DP-SGD head of `cfg` on its head inputs `fs` with `m` canaries (seeded by `seed`; the training noise
/// follows `[privacy] insecure_seed` like any run). Needs `[privacy]` on and the linear head.
///
/// `reference` is the public point the run's DP head centres its inputs on
/// ([`crate::privacy::centring::DpReferences::transferred`]); the real rows go through the same
/// [`crate::privacy::centring::DpInputMap`] as in `pipeline::train_head_private` (centred, own features weighted),
/// so the audited training sees the head's own inputs. The canary
/// columns are centred on 0 (their real rows are 0). An empty reference, or one of another width, leaves the rows
/// as they are, as the head's training does.
pub fn audit(cfg: &RunConfig, fs: &FeatureSplit, reference: &[f32], m: usize, seed: u64) -> Result<AuditResult> {
    check(cfg, m)?;
    let privacy = cfg.client_privacy().expect("check() refuses a config without [privacy]");
    let started = std::time::Instant::now();
    let (n, d) = fs.train.dim();
    if audit_cells(n, d, m) > MAX_AUDIT_CELLS {
        return Err(Error::config_key("audit.canaries", format!(
            "{m} canaries widen the head's training matrix to up to ({n} + {m}) x ({d} + {m}) = {} cells, more than the \
             audit's limit of {MAX_AUDIT_CELLS} (about 4 GB while training); with {n} training rows of width {d} use at most {} canaries",
            audit_cells(n, d, m),
            max_canaries(n, d)
        )));
    }
    // The head's own map: centred on the reference, the own features weighted as the run's head weighs them.
    let map = crate::privacy::centring::DpInputMap::new(cfg, reference, fs.own_columns, &crate::privacy::plan::plan(privacy, &cfg.head_training, n)?);
    let centre = |rows: &Array2<f32>| -> Array2<f32> { map.apply(rows.view()) };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(crate::seeds::stream(seed, crate::seeds::AUDIT_CANARIES));
    let labels: Vec<u8> = (0..m).map(|_| u8::from(rng.random::<bool>())).collect();
    let included: Vec<bool> = (0..m).map(|_| rng.random::<bool>()).collect();
    let members: Vec<usize> = (0..m).filter(|&c| included[c]).collect();
    let rows = n + members.len();
    let mut x = Array2::<f32>::zeros((rows, d + m));
    x.slice_mut(ndarray::s![..n, ..d]).assign(&centre(&fs.train));
    let mut y = fs.train_y.clone();
    for (r, &c) in members.iter().enumerate() {
        x[[n + r, d + c]] = CANARY_VALUE;
        y.push(labels[c]);
    }
    // The same schedule as the run's head, for the training set it sees (δ, q·N and σ follow N).
    let plan = crate::privacy::plan::plan(privacy, &cfg.head_training, rows)?;
    let device = Default::default();
    let head = crate::model::Head::<crate::model::Train>::from_linear_weights(&vec![0.0; d + m], 0.0, &device);
    let mut noise = crate::privacy::dpsgd::PrivacyRng::new(privacy.insecure_seed.map(|s| s ^ seed));
    let mut val_x = Array2::<f32>::zeros((fs.validation.nrows(), d + m));
    val_x.slice_mut(ndarray::s![.., ..d]).assign(&centre(&fs.validation));
    let trained = crate::train::train_private(
        head,
        crate::train::Examples { x: x.view(), y: &y },
        crate::train::Examples { x: val_x.view(), y: &fs.validation_y },
        &plan,
        &mut noise,
        cfg.seed,
        "audit",
    );
    let w: Vec<f32> = trained.model.dense2.weight.val().into_data().to_vec::<f32>().map_err(|e| Error::Internal(format!("audit: head weights: {e:?}")))?;
    let scores: Vec<f64> = (0..m).map(|c| w[d + c] as f64 * if labels[c] == 1 { 1.0 } else { -1.0 }).collect();
    // A fixed number of guesses (a tenth of the canaries each way), chosen before looking at the scores.
    let (r, v) = guesses(&scores, &included, m.div_ceil(10));
    let lb = epsilon_lower_bound(m, r, v, plan.delta, 1.0 - CONFIDENCE);
    tracing::info!(canaries = m, included = members.len(), guesses = r, correct = v, lower_bound = lb, claimed = plan.epsilon, "privacy audit");
    Ok(AuditResult {
        canaries: m,
        included: members.len(),
        guesses: r,
        correct: v,
        delta: plan.delta,
        confidence: CONFIDENCE,
        epsilon_lower_bound: lb,
        epsilon_claimed: plan.epsilon,
        accountant: plan.accountant.name().to_string(),
        noise_multiplier: plan.noise_multiplier,
        steps: plan.steps_allowed,
        sampling_rate: plan.sampling_rate,
        seconds: started.elapsed().as_secs_f64(),
    })
}

impl AuditResult {
    /// The result as a Markdown section.
    pub fn to_markdown(&self) -> String {
        format!(
            "## Empirical privacy audit (one run, Steinke, Nasr & Jagielski 2023)\n\n\
             | canaries (included) | guesses | correct | ε lower bound ({:.0}% confidence, δ = {}) | ε claimed ({}) | σ | steps | q | time |\n\
             |---:|---:|---:|---:|---:|---:|---:|---:|---:|\n\
             | {} ({}) | {} | {} | {} | {} | {:.4} | {} | {:.4} | {:.1} s |\n\n\
             The lower bound is what the guesses prove the head leaks; the claimed ε is the accountant's upper bound. \
             A lower bound above the claim would mean the accountant or the clipping is wrong. White-box Dirac canaries \
             (one extra input column each, random labels), the run's DP-SGD schedule.\n",
            100.0 * self.confidence,
            crate::privacy::shown::delta(self.delta),
            self.accountant,
            self.canaries,
            self.included,
            self.guesses,
            self.correct,
            // Printed down and up: the row never shows more leakage proved, or less promised, than computed.
            crate::privacy::shown::lower_bound(self.epsilon_lower_bound),
            crate::privacy::shown::rounded(self.epsilon_claimed, 3, crate::privacy::shown::Side::AtLeast),
            self.noise_multiplier,
            self.steps,
            self.sampling_rate,
            self.seconds
        )
    }
}

/// What the audit of `cfg` trains on: its head inputs through the lower network wherever `cfg` runs it
/// ([`crate::pipeline::lower_outputs`]), and the public point the run's DP head centres them on. Returns the inputs
/// and that reference. [`audit_config`] runs the server's network in **plaintext** when the client has it (the DP
/// mechanism does not depend on how its inputs were computed, and encrypting every sample again would only cost
/// time); a client of a remote server has only the encrypted path, and keeps its key in `cfg`'s output folder
/// ([`crate::pipeline::TransferInput::keeping_key_in`]).
pub fn audit_inputs(cfg: &RunConfig) -> Result<(FeatureSplit, Vec<f32>)> {
    let data = crate::pipeline::prepare_data(cfg)?;
    let (pipeline, own) = crate::pipeline::client_features(cfg, &data.target)?;
    // Against a remote server the key is kept in (and taken up from) the run's folder, which `cryptotl audit` holds.
    let input = crate::pipeline::TransferInput::new(cfg, &pipeline, &data.target, &own)?.keeping_key_in(&cfg.output_dir());
    let crate::pipeline::LowerOutputs { features: transferred, output_ranges, .. } = crate::pipeline::lower_outputs(cfg, &input)?;
    let inputs = crate::pipeline::head_inputs(cfg, &transferred, &own, None)?;
    let references = crate::pipeline::DpReferences::from_ranges(cfg, output_ranges.as_deref(), transferred.train.ncols(), own.train.ncols());
    Ok((inputs, references.transferred))
}

/// The audit of a config end to end: its data, the client's features through the lower network ([`audit_inputs`]:
/// in plaintext, or through the remote server of `[he] server`), then [`audit`].
pub fn audit_config(cfg: &RunConfig, m: usize, seed: u64) -> Result<AuditResult> {
    check(cfg, m)?;
    let mut inputs_cfg = cfg.clone();
    if crate::pipeline::remote_server(cfg)?.is_none() {
        inputs_cfg.he.enabled = false;
    }
    let (inputs, reference) = audit_inputs(&inputs_cfg)?;
    audit(cfg, &inputs, &reference, m, seed)
}
