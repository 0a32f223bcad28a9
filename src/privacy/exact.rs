//! The exact ε of full-batch DP-SGD (q = 1): T steps of the Gaussian mechanism with noise multiplier σ compose to
//! one Gaussian mechanism with μ = √T/σ, whose tight (ε, δ) curve is known in closed form (Balle & Wang 2018):
//!
//! `δ(ε) = Φ(μ/2 - ε/μ) - e^ε Φ(-μ/2 - ε/μ)`.
//!
//! Evaluated in log space (so μ in the thousands and ε past e^709 are fine) and inverted by bisection, rounding ε
//! up. This is the truth the other accountants are tested against: none may report less.
//!
//! ```
//! use cryptotl::privacy::exact::gaussian_epsilon;
//! // μ = 2 at δ = 1e-5: ε = 9.9973 (the figure `pld` reproduces to 4 digits).
//! assert!((gaussian_epsilon(0.5, 1, 1e-5).unwrap() - 9.997256).abs() < 1e-4);
//! ```

use super::normal::log_ndtr;
use crate::error::{Error, Result};

/// δ(ε) of the Gaussian mechanism with privacy parameter μ.
pub fn gaussian_delta(mu: f64, eps: f64) -> f64 {
    let a = log_ndtr(mu / 2.0 - eps / mu);
    let b = eps + log_ndtr(-mu / 2.0 - eps / mu);
    if b >= a { 0.0 } else { a.exp() * (-(b - a).exp_m1()) }
}

/// The exact ε at δ of `steps` full-batch steps with noise multiplier `sigma` (rounded up to relative 1e-12).
pub fn gaussian_epsilon(sigma: f64, steps: u64, delta: f64) -> Result<f64> {
    if !(sigma.is_finite() && sigma > 0.0) {
        return Err(Error::Privacy(format!("noise multiplier σ must be a finite number > 0, got {sigma}")));
    }
    super::check_query(steps as usize, delta)?;
    let mu = (steps as f64).sqrt() / sigma;
    if !mu.is_finite() {
        return Ok(f64::INFINITY);
    }
    if gaussian_delta(mu, 0.0) <= delta {
        return Ok(0.0);
    }
    // δ(ε) falls in ε; find an ε above the crossing, then bisect.
    let mut hi = mu * mu / 2.0 + mu * (2.0 * (1.0 / delta).ln()).sqrt() + 1.0;
    while gaussian_delta(mu, hi) > delta {
        hi *= 2.0;
        if !hi.is_finite() {
            return Ok(f64::INFINITY);
        }
    }
    let mut lo = 0.0;
    while hi - lo > 1e-12 * hi.max(1e-3) {
        let mid = 0.5 * (lo + hi);
        if gaussian_delta(mu, mid) > delta { lo = mid } else { hi = mid }
    }
    Ok(hi)
}
