//! Differential privacy: DP-SGD and its accountants for the client's head and DP pretraining, and the server's
//! weight noise ([`server`]).
//!
//! The mechanism is the Poisson-subsampled Gaussian: each step, every example joins the batch independently with
//! probability `q`; per-example gradients are clipped to norm C and Gaussian noise of std `σ·C` is added to their
//! sum. Neighbouring datasets differ by adding or removing one example. Three accountants answer
//! "ε at δ after T steps", behind one trait (like Opacus's swappable accountants):
//!
//! | accountant | what | when exact |
//! |---|---|---|
//! | [`zcdp::Zcdp`] | OpenDP: `make_gaussian` (zCDP) composed T times, `make_zCDP_to_approxDP`, `make_fix_delta` | full batch (q = 1); refuses q < 1 (no amplification by sampling in zCDP) |
//! | [`rdp::Rdp`] | Rényi DP of the subsampled Gaussian (Mironov et al. 2019) as Opacus computes it | a valid upper bound, loose by 10-60% |
//! | [`pld::Pld`] | privacy-loss distribution, connect-the-dots discretisation (pessimistic), FFT composition | a tight upper bound; ∞ where σ is too small for its grid, loose past ~1e9 steps |
//! | [`tightest::Tightest`] | the exact Gaussian composition at q = 1 ([`exact`]), else the smaller of PLD and RDP | exact at q = 1; the default accountant of record |
//!
//! ```
//! use cryptotl::privacy::{Accountant, AccountantKind, SubsampledGaussian};
//! let m = SubsampledGaussian::new(0.01, 1.0).unwrap();
//! let rdp = AccountantKind::Rdp.accountant().epsilon(&m, 1000, 1e-5).unwrap();
//! let pld = AccountantKind::Pld.accountant().epsilon(&m, 1000, 1e-5).unwrap();
//! assert!(pld < rdp);
//! ```

pub mod budget;
pub mod centring;
pub mod dpsgd;
pub mod exact;
pub mod normal;
pub mod plan;
pub mod pld;
pub mod rdp;
pub mod server;
pub mod shown;
pub mod tightest;
pub mod zcdp;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The Poisson-subsampled Gaussian mechanism of one DP-SGD step (sensitivity normalised to 1 = the clip norm).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SubsampledGaussian {
    /// Poisson sampling rate q in (0, 1].
    pub sampling_rate: f64,
    /// Noise multiplier σ > 0 (noise std / clip norm).
    pub noise_multiplier: f64,
}

impl SubsampledGaussian {
    /// Checked constructor.
    pub fn new(sampling_rate: f64, noise_multiplier: f64) -> Result<Self> {
        if !(sampling_rate.is_finite() && sampling_rate > 0.0 && sampling_rate <= 1.0) {
            return Err(Error::Privacy(format!("sampling rate q must be in (0, 1], got {sampling_rate}")));
        }
        if !(noise_multiplier.is_finite() && noise_multiplier > 0.0) {
            return Err(Error::Privacy(format!("noise multiplier σ must be a finite number > 0, got {noise_multiplier}")));
        }
        Ok(Self { sampling_rate, noise_multiplier })
    }
}

/// The most steps an accountant answers for (10^12: far past any training run; the accountants' arithmetic is
/// checked up to here).
pub const MAX_STEPS: usize = 1_000_000_000_000;

/// Check the (steps, δ) of a query.
pub fn check_query(steps: usize, delta: f64) -> Result<()> {
    if steps == 0 {
        return Err(Error::Privacy("steps T must be at least 1".into()));
    }
    if steps > MAX_STEPS {
        return Err(Error::Privacy(format!("steps T = {steps} is past the accountants' maximum of {MAX_STEPS}")));
    }
    if !(delta.is_finite() && delta > 0.0 && delta < 1.0) {
        return Err(Error::Privacy(format!("δ must be in (0, 1), got {delta}")));
    }
    Ok(())
}

/// Answers "ε at δ after T steps" for the subsampled Gaussian.
pub trait Accountant {
    /// Short name: `zcdp`, `rdp`, `pld`.
    fn name(&self) -> &'static str;
    /// ε(δ) after `steps` steps.
    fn epsilon(&self, m: &SubsampledGaussian, steps: usize, delta: f64) -> Result<f64>;
}

/// The accountants by name (`[privacy] accountant`, `--accountant`): a config type, given its mechanisms here.
pub use crate::config::AccountantKind;

impl AccountantKind {
    /// The accountant with default settings.
    pub fn accountant(self) -> Box<dyn Accountant> {
        match self {
            Self::Zcdp => Box::new(zcdp::Zcdp),
            Self::Rdp => Box::new(rdp::Rdp::default()),
            Self::Pld => Box::new(pld::Pld::default()),
            Self::Tightest => Box::new(tightest::Tightest::default()),
        }
    }
}

/// The smallest noise multiplier σ (to relative precision 1e-4, rounded up) whose ε after `steps` steps at `delta`
/// is at most `target_epsilon`, by bisection on σ (ε decreases in σ).
pub fn calibrate_noise(acct: &dyn Accountant, sampling_rate: f64, steps: usize, delta: f64, target_epsilon: f64) -> Result<f64> {
    check_query(steps, delta)?;
    if !(target_epsilon.is_finite() && target_epsilon > 0.0) {
        return Err(Error::Privacy(format!("target ε must be a finite number > 0, got {target_epsilon}")));
    }
    let eps_at = |sigma: f64| -> Result<f64> { acct.epsilon(&SubsampledGaussian::new(sampling_rate, sigma)?, steps, delta) };
    let (mut lo, mut hi) = (0.05, 1.0);
    while eps_at(hi)? > target_epsilon {
        lo = hi;
        hi *= 2.0;
        if hi > crate::config::privacy::MAX_NOISE_MULTIPLIER {
            return Err(Error::Privacy(format!("no σ up to {:e} reaches ε = {}", crate::config::privacy::MAX_NOISE_MULTIPLIER, crate::config::shown_number(target_epsilon))));
        }
    }
    if eps_at(lo)? <= target_epsilon {
        return Err(Error::Privacy(format!(
            "ε = {} is reached already at σ = {lo}: the target is looser than any useful noise level", crate::config::shown_number(target_epsilon)
        )));
    }
    while (hi - lo) / hi > 1e-4 {
        let mid = 0.5 * (lo + hi);
        if eps_at(mid)? > target_epsilon { lo = mid } else { hi = mid }
    }
    Ok(hi)
}
