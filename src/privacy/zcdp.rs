//! zCDP accountant, computed by OpenDP itself: one DP-SGD step is OpenDP's Gaussian mechanism (`make_gaussian`,
//! zCDP with ρ = (Δ/σ)²/2 for L2 sensitivity Δ = 1 = the clip norm); T steps compose to ρ·T, which is OpenDP's
//! Gaussian mechanism at scale σ/√T (rounded so ρ can only grow; no list of T measurements in memory), converted
//! with `make_zCDP_to_approxDP` (the Canonne-Kamath-Steinke 2020 bound) and fixed at δ with `make_fix_delta`. zCDP has no amplification by subsampling, so this accountant is exact only for
//! full-batch training (q = 1) and refuses q < 1 rather than report a number that ignores sampling.
//!
//! OpenDP here only *accounts*: its measurement's sampler is never invoked (the noise DP-SGD adds comes from this
//! crate's own CSPRNG), which is why OpenDP is built without OpenSSL.
//!
//! ```
//! use cryptotl::privacy::{Accountant, SubsampledGaussian, zcdp::Zcdp};
//! // ρ = T/(2σ²) = 2; the CKS conversion gives ε = 10.7248 (the exact Gaussian answer, from `pld`, is 9.9973).
//! let eps = Zcdp.epsilon(&SubsampledGaussian::new(1.0, 5.0).unwrap(), 100, 1e-5).unwrap();
//! assert!((eps - 10.724824).abs() < 1e-5);
//! ```

use opendp::combinators::{make_fix_delta, make_zCDP_to_approxDP};
use opendp::core::Measurement;
use opendp::domains::{AtomDomain, VectorDomain};
use opendp::measurements::make_gaussian;
use opendp::measures::ZeroConcentratedDivergence;
use opendp::metrics::L2Distance;

use super::{Accountant, SubsampledGaussian};
use crate::error::{Error, Result};

/// The OpenDP zCDP accountant (full batch only).
#[derive(Debug, Clone, Copy, Default)]
pub struct Zcdp;

type GaussianStep = Measurement<VectorDomain<AtomDomain<f64>>, L2Distance<f64>, ZeroConcentratedDivergence, Vec<f64>>;

/// One DP-SGD step as an OpenDP measurement: the Gaussian mechanism with noise scale σ on an L2-sensitivity-1 sum.
pub fn gaussian_step(noise_multiplier: f64) -> Result<GaussianStep> {
    make_gaussian(VectorDomain::new(AtomDomain::<f64>::new_non_nan()), L2Distance::default(), noise_multiplier, None)
        .map_err(Error::from)
}

impl Accountant for Zcdp {
    fn name(&self) -> &'static str {
        "zcdp"
    }
    fn epsilon(&self, m: &SubsampledGaussian, steps: usize, delta: f64) -> Result<f64> {
        super::check_query(steps, delta)?;
        if m.sampling_rate < 1.0 {
            return Err(Error::Privacy(format!(
                "the zcdp accountant has no amplification by sampling and is exact only for q = 1 (got q = {}); use rdp or pld",
                m.sampling_rate
            )));
        }
        // T Gaussian steps of scale σ compose in zCDP to ρ = T/(2σ²): OpenDP's Gaussian mechanism of scale σ/√T,
        // made a hair smaller so that rounding can only raise ρ. (A composition of T measurements would hold T of
        // them in memory.)
        let scale = m.noise_multiplier / (steps as f64).sqrt() * (1.0 - 1e-12);
        let step = gaussian_step(scale)?;
        let approx = make_fix_delta(&make_zCDP_to_approxDP(step)?, delta)?;
        match approx.map(&1.0) {
            Ok((eps, _delta)) => Ok(eps),
            // OpenDP's conversion overflows for a huge ρ: ∞ is then the (valid) answer.
            Err(e) if e.variant == opendp::error::ErrorVariant::Overflow => {
                tracing::debug!(rho = steps as f64 / (2.0 * m.noise_multiplier * m.noise_multiplier), "zCDP conversion overflows: ε = ∞");
                Ok(f64::INFINITY)
            }
            Err(e) => Err(e.into()),
        }
    }
}
