//! The tightest valid answer: the exact ε where one exists (full batch, q = 1), otherwise the smaller of the PLD
//! and RDP upper bounds. Each is never below the true ε, so neither is their minimum; where the PLD cannot
//! evaluate a mechanism (σ too small for its grid: it answers ∞) the RDP bound stands, and where the PLD is loose
//! (very many steps) the RDP bound may be the smaller one. Like OpenDP's combinators, it only composes answers
//! whose guarantees are already proven.
//!
//! ```
//! use cryptotl::privacy::{Accountant, SubsampledGaussian, tightest::Tightest, exact::gaussian_epsilon};
//! // Full batch: the exact Gaussian composition (here 100 steps at σ = 20: μ = 0.5).
//! let m = SubsampledGaussian::new(1.0, 20.0).unwrap();
//! assert_eq!(Tightest::default().epsilon(&m, 100, 1e-5).unwrap(), gaussian_epsilon(20.0, 100, 1e-5).unwrap());
//! // σ = 0.02 is too small for the PLD grid (∞); the answer is still finite.
//! let m = SubsampledGaussian::new(0.5, 0.02).unwrap();
//! assert!(Tightest::default().epsilon(&m, 10, 1e-5).unwrap().is_finite());
//! ```

use super::{Accountant, SubsampledGaussian, exact, pld::Pld, rdp::Rdp};
use crate::error::Result;

/// Minimum of the valid upper bounds (exact at q = 1).
#[derive(Debug, Clone, Default)]
pub struct Tightest {
    /// The PLD accountant consulted.
    pub pld: Pld,
    /// The RDP accountant consulted.
    pub rdp: Rdp,
}

impl Accountant for Tightest {
    fn name(&self) -> &'static str {
        "tightest"
    }

    fn epsilon(&self, m: &SubsampledGaussian, steps: usize, delta: f64) -> Result<f64> {
        if m.sampling_rate == 1.0 {
            return exact::gaussian_epsilon(m.noise_multiplier, steps as u64, delta);
        }
        let rdp = self.rdp.epsilon(m, steps, delta)?;
        // A PLD that cannot answer (an error, or ∞ off its grid) leaves the RDP bound.
        match self.pld.epsilon(m, steps, delta) {
            Ok(pld) if pld.is_finite() => Ok(pld.min(rdp)),
            _ => Ok(rdp),
        }
    }
}
