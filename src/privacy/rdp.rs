//! Rényi-DP accountant for the Poisson-subsampled Gaussian mechanism (Mironov, Talwar, Zhang 2019), computed as
//! Opacus 1.6 computes it: integer orders by the binomial sum, fractional orders by the two-series expansion,
//! on Opacus's order grid, converted to (ε, δ) with the Balle et al. 2020 / Canonne-Kamath-Steinke 2020 bound
//! `ε = min_a [T·rdp(a) + ln(1 - 1/a) - (ln δ + ln a)/(a - 1)]`.
//!
//! ```
//! use cryptotl::privacy::{Accountant, SubsampledGaussian, rdp::Rdp};
//! let m = SubsampledGaussian::new(0.01, 1.1).unwrap();
//! let eps = Rdp::default().epsilon(&m, 1000, 1e-5).unwrap();
//! assert!(eps > 0.5 && eps < 2.0);
//! ```

use super::normal::{log_add, log_erfc, log_sub};
use super::{Accountant, SubsampledGaussian};
use crate::error::Result;

/// Opacus's `DEFAULT_ALPHAS`: `[1 + x/10 for x in 1..99] + [12..63]` (151 orders).
pub fn default_orders() -> Vec<f64> {
    (1..100).map(|x| 1.0 + x as f64 / 10.0).chain((12..64).map(|x| x as f64)).collect()
}

/// The RDP accountant.
#[derive(Debug, Clone)]
pub struct Rdp {
    /// Rényi orders searched.
    pub orders: Vec<f64>,
}

impl Default for Rdp {
    fn default() -> Self {
        Self { orders: default_orders() }
    }
}

fn log_binom_int(n: u64, k: u64) -> f64 {
    libm::lgamma(n as f64 + 1.0) - libm::lgamma(k as f64 + 1.0) - libm::lgamma((n - k) as f64 + 1.0)
}

/// ln A_alpha for integer alpha: the binomial sum.
fn log_a_int(q: f64, sigma: f64, alpha: u64) -> f64 {
    let mut log_a = f64::NEG_INFINITY;
    for i in 0..=alpha {
        let fi = i as f64;
        let log_coef = log_binom_int(alpha, i) + fi * q.ln() + (alpha - i) as f64 * (1.0 - q).ln();
        log_a = log_add(log_a, log_coef + (fi * fi - fi) / (2.0 * sigma * sigma));
    }
    log_a
}

/// ln A_alpha for fractional alpha: the two signed series of Mironov et al., summed until terms < e^-30.
/// `None` if the alternating series goes negative (never observed on the reference grid).
fn log_a_frac(q: f64, sigma: f64, alpha: f64) -> Option<f64> {
    let (mut log_a0, mut log_a1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    let z0 = sigma * sigma * (1.0 / q - 1.0).ln() + 0.5;
    let mut coef = 1.0f64; // binom(alpha, i), built up term by term
    let mut i = 0u64;
    loop {
        let fi = i as f64;
        let log_coef = coef.abs().ln();
        let j = alpha - fi;
        let log_t0 = log_coef + fi * q.ln() + j * (1.0 - q).ln();
        let log_t1 = log_coef + j * q.ln() + fi * (1.0 - q).ln();
        let log_e0 = 0.5f64.ln() + log_erfc((fi - z0) / (std::f64::consts::SQRT_2 * sigma));
        let log_e1 = 0.5f64.ln() + log_erfc((z0 - j) / (std::f64::consts::SQRT_2 * sigma));
        let log_s0 = log_t0 + (fi * fi - fi) / (2.0 * sigma * sigma) + log_e0;
        let log_s1 = log_t1 + (j * j - j) / (2.0 * sigma * sigma) + log_e1;
        if coef > 0.0 {
            log_a0 = log_add(log_a0, log_s0);
            log_a1 = log_add(log_a1, log_s1);
        } else {
            log_a0 = log_sub(log_a0, log_s0)?;
            log_a1 = log_sub(log_a1, log_s1)?;
        }
        i += 1;
        if log_s0.max(log_s1) < -30.0 {
            break;
        }
        coef *= (alpha - fi) / (fi + 1.0);
    }
    Some(log_add(log_a0, log_a1))
}

/// RDP of one step of the subsampled Gaussian at order `alpha` (∞ where the series fails).
pub fn rdp_per_step(q: f64, sigma: f64, alpha: f64) -> f64 {
    if q == 1.0 {
        return alpha / (2.0 * sigma * sigma);
    }
    let log_a = if alpha.fract() == 0.0 { Some(log_a_int(q, sigma, alpha as u64)) } else { log_a_frac(q, sigma, alpha) };
    log_a.map_or(f64::INFINITY, |la| la / (alpha - 1.0))
}

/// (ε, optimal order) from total RDP values over `orders`.
pub fn rdp_to_epsilon(orders: &[f64], rdp: &[f64], delta: f64) -> (f64, f64) {
    let mut best = (f64::INFINITY, f64::NAN);
    for (&a, &r) in orders.iter().zip(rdp) {
        let eps = r - (delta.ln() + a.ln()) / (a - 1.0) + ((a - 1.0) / a).ln();
        if eps < best.0 {
            best = (eps, a);
        }
    }
    (best.0.max(0.0), best.1)
}

impl Rdp {
    /// Total RDP after `steps` steps at each order.
    pub fn rdp_curve(&self, m: &SubsampledGaussian, steps: usize) -> Vec<f64> {
        self.orders.iter().map(|&a| rdp_per_step(m.sampling_rate, m.noise_multiplier, a) * steps as f64).collect()
    }

    /// (ε, optimal order).
    pub fn epsilon_and_order(&self, m: &SubsampledGaussian, steps: usize, delta: f64) -> (f64, f64) {
        rdp_to_epsilon(&self.orders, &self.rdp_curve(m, steps), delta)
    }
}

impl Accountant for Rdp {
    fn name(&self) -> &'static str {
        "rdp"
    }
    fn epsilon(&self, m: &SubsampledGaussian, steps: usize, delta: f64) -> Result<f64> {
        super::check_query(steps, delta)?;
        Ok(self.epsilon_and_order(m, steps, delta).0)
    }
}

/// The OpenDP measurement [`rdp_measurement`] makes: vectors of f64 under the L2 distance to an RDP curve.
pub type RdpMeasurement = opendp::core::Measurement<
    opendp::domains::VectorDomain<opendp::domains::AtomDomain<f64>>,
    opendp::metrics::L2Distance<f64>,
    opendp::measures::RenyiDivergence,
    Vec<f64>,
>;

/// One DP-SGD step as an OpenDP [`Measurement`](opendp::core::Measurement) in the Rényi-DP measure: its privacy map
/// takes the L2 sensitivity (in units of the clip norm) to the step's RDP curve α ↦ ε(α), so OpenDP's combinators
/// (`make_composition`, which adds RDP curves) apply to it. The measurement only *accounts*: its function refuses
/// to run, because DP-SGD draws its noise in `privacy::dpsgd`.
///
/// ```
/// use cryptotl::privacy::{SubsampledGaussian, rdp::{rdp_measurement, rdp_per_step}};
/// let m = rdp_measurement(&SubsampledGaussian::new(0.01, 1.1).unwrap()).unwrap();
/// let composed = opendp::combinators::make_composition(vec![m; 3]).unwrap();
/// let curve = composed.map(&1.0).unwrap();
/// assert!((curve.eval(&8.0).unwrap() - 3.0 * rdp_per_step(0.01, 1.1, 8.0)).abs() < 1e-12);
/// ```
pub fn rdp_measurement(m: &SubsampledGaussian) -> Result<RdpMeasurement> {
    use opendp::core::{Function, Measurement, PrivacyMap};
    use opendp::domains::{AtomDomain, VectorDomain};
    use opendp::{err, fallible};
    let (q, sigma) = (m.sampling_rate, m.noise_multiplier);
    Measurement::new(
        VectorDomain::new(AtomDomain::<f64>::new_non_nan()),
        opendp::metrics::L2Distance::default(),
        opendp::measures::RenyiDivergence,
        Function::new_fallible(|_: &Vec<f64>| {
            fallible!(FailedFunction, "accounting only: DP-SGD draws its noise in cryptotl::privacy::dpsgd")
        }),
        PrivacyMap::new_fallible(move |d_in: &f64| {
            let d_in = *d_in;
            if d_in.is_nan() || d_in < 0.0 {
                return fallible!(FailedMap, "sensitivity must be >= 0, got {d_in}");
            }
            // Sensitivity d scales the noise multiplier to σ/d.
            Ok(Function::new(move |alpha: &f64| if d_in == 0.0 { 0.0 } else { rdp_per_step(q, sigma / d_in, *alpha) }))
        }),
    )
    .map_err(crate::error::Error::from)
}
