//! Privacy-loss-distribution (PLD) accountant for the Poisson-subsampled Gaussian mechanism.
//!
//! For add/remove adjacency the mechanism has two worst-case pairs: *remove* (P = (1-q)·N(0,σ²) + q·N(1,σ²)
//! against Q = N(0,σ²)) and *add* (the pair swapped). For each, the single-step hockey-stick curve δ(ε) is known in
//! closed form; the privacy loss is discretised on a grid of interval h with the **connect-the-dots** construction
//! (Doroshenko, Ghazi, Kamath, Kumar, Manurangsi 2022): the discrete PLD whose δ-curve passes through the true
//! curve at every grid point and, being linear in e^ε between them while the true curve is convex, lies above it:
//! a pessimistic (upper-bound) discretisation with second-order error. The mass above the grid goes to +∞ (counted
//! in δ), the mass below the grid to its lowest point: both pessimistic. The T-fold composition is one FFT, an
//! element-wise power and an inverse FFT over a window chosen by Chernoff bounds; the tail mass the window can
//! miss (≤ 1e-15) is added to δ. The reported ε is the larger of the two directions.
//!
//! ```
//! use cryptotl::privacy::{Accountant, SubsampledGaussian, pld::Pld};
//! // q = 1: the exact Gaussian-mechanism answer for mu = sqrt(T)/sigma = 2 is eps = 9.9973 at delta = 1e-5.
//! let eps = Pld::default().epsilon(&SubsampledGaussian::new(1.0, 0.5).unwrap(), 1, 1e-5).unwrap();
//! assert!((eps - 9.997256).abs() < 0.01);
//! ```

use realfft::RealFftPlanner;
use rustfft::num_complex::Complex64;

use super::normal::{log_add, ndtr, ndtr_sf};
use super::{Accountant, SubsampledGaussian};
use crate::error::Result;

/// The PLD accountant's settings.
#[derive(Debug, Clone)]
pub struct Pld {
    /// Finest grid interval of the privacy loss (coarsened automatically when the composed loss is very wide).
    pub min_interval: f64,
    /// Largest FFT length.
    pub max_points: usize,
    /// Tail mass allowed outside the composition window (added to δ).
    pub tail_mass: f64,
}

impl Default for Pld {
    fn default() -> Self {
        Self { min_interval: 1e-4, max_points: 1 << 22, tail_mass: 1e-15 }
    }
}

/// Which neighbouring relation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// The dataset with the example first: P = mixture, Q = N(0, σ²).
    Remove,
    /// The dataset without it first: P = N(0, σ²), Q = mixture.
    Add,
}

/// A discrete privacy-loss distribution: `mass[k]` at loss `(start + k)·h`, plus `infinity` at +∞.
#[derive(Debug, Clone)]
struct Pmf {
    start: i64,
    h: f64,
    mass: Vec<f64>,
    infinity: f64,
}

/// Single-step hockey-stick divergence δ(ε) = sup_S P(S) - e^ε Q(S).
fn hockey(dir: Direction, q: f64, sigma: f64, eps: f64) -> f64 {
    let em = eps.exp();
    match dir {
        Direction::Remove => {
            if em <= 1.0 - q {
                return 1.0 - em;
            }
            // Where the likelihood ratio 1 - q + q·exp((2y-1)/(2σ²)) equals e^ε.
            let excess = em - (1.0 - q);
            let y = sigma * sigma * (excess / q).ln() + 0.5;
            q * ndtr_sf((y - 1.0) / sigma) - excess * ndtr_sf(y / sigma)
        }
        Direction::Add => {
            let inv = 1.0 / em - (1.0 - q);
            if inv <= 0.0 {
                return 0.0;
            }
            let y = sigma * sigma * (inv / q).ln() + 0.5;
            let d = (1.0 - em * (1.0 - q)) * ndtr(y / sigma) - em * q * ndtr((y - 1.0) / sigma);
            d.max(0.0)
        }
    }
}

/// The privacy loss ln(P/Q) at output y for the remove direction (the add direction's is its negative).
fn remove_loss(q: f64, sigma: f64, y: f64) -> f64 {
    log_add((1.0 - q).ln(), q.ln() + (2.0 * y - 1.0) / (2.0 * sigma * sigma))
}

/// The loss range holding all but ~1e-23 of the first distribution's mass.
fn loss_range(dir: Direction, q: f64, sigma: f64) -> (f64, f64) {
    const K: f64 = 10.0;
    match dir {
        Direction::Remove => (remove_loss(q, sigma, -K * sigma), remove_loss(q, sigma, 1.0 + K * sigma)),
        Direction::Add => (-remove_loss(q, sigma, K * sigma), -remove_loss(q, sigma, -K * sigma)),
    }
}

/// Connect-the-dots discretisation of one step on the grid of interval `h`.
fn single_step(dir: Direction, q: f64, sigma: f64, h: f64) -> Pmf {
    let (lo, hi) = loss_range(dir, q, sigma);
    let (i_lo, i_hi) = ((lo / h).floor() as i64, ((hi / h).ceil() as i64).max((lo / h).floor() as i64 + 2));
    let n = (i_hi - i_lo + 1) as usize;
    let delta: Vec<f64> = (0..n).map(|k| hockey(dir, q, sigma, (i_lo + k as i64) as f64 * h)).collect();
    let d: Vec<f64> = delta.windows(2).map(|w| w[0] - w[1]).collect();
    let em1 = h.exp_m1();
    let mut mass = vec![0.0; n];
    for i in 0..n - 2 {
        mass[i + 1] = (d[i] + (d[i] - d[i + 1]) / em1).max(0.0);
    }
    mass[n - 1] = (d[n - 2] * (1.0 + 1.0 / em1)).max(0.0);
    let infinity = delta[n - 1].max(0.0);
    let rest: f64 = mass[1..].iter().sum::<f64>() + infinity;
    mass[0] = (1.0 - rest).max(0.0);
    Pmf { start: i_lo, h, mass, infinity }
}

/// ln Σ mass·e^{t·loss} (the finite part's moment generating function).
fn log_mgf(p: &Pmf, t: f64) -> f64 {
    let loss = |k: usize| (p.start + k as i64) as f64 * p.h;
    // Shift by the largest term so the sum neither overflows nor underflows to zero.
    let top = p.mass.iter().enumerate().filter(|(_, m)| **m > 0.0).map(|(k, &m)| m.ln() + t * loss(k)).fold(f64::NEG_INFINITY, f64::max);
    if top == f64::NEG_INFINITY {
        return top;
    }
    let sum: f64 = p.mass.iter().enumerate().filter(|(_, m)| **m > 0.0).map(|(k, &m)| (m.ln() + t * loss(k) - top).exp()).sum();
    sum.ln() + top
}

/// Chernoff bounds on the T-fold sum: a window [lo, hi] outside which at most `tail` mass lies on each side.
fn chernoff_window(p: &Pmf, steps: usize, tail: f64) -> (f64, f64) {
    let t_grid: Vec<f64> = (0..=60).map(|i| 10f64.powf(-3.0 + i as f64 * 0.1)).collect();
    let t_steps = steps as f64;
    let hi = t_grid.iter().map(|&t| (t_steps * log_mgf(p, t) - tail.ln()) / t).fold(f64::INFINITY, f64::min);
    let lo = t_grid.iter().map(|&t| (tail.ln() - t_steps * log_mgf(p, -t)) / t).fold(f64::NEG_INFINITY, f64::max);
    let single_lo = p.start as f64 * p.h;
    let single_hi = (p.start + p.mass.len() as i64 - 1) as f64 * p.h;
    // The sum of T steps lies within T times the single-step support.
    let lo = if lo.is_finite() { lo.max(t_steps * single_lo) } else { t_steps * single_lo };
    let hi = if hi.is_finite() { hi.min(t_steps * single_hi) } else { t_steps * single_hi };
    (lo, hi.max(lo))
}

/// The T-fold self-composition by one real FFT, an element-wise power and the inverse, restricted to the
/// Chernoff window.
fn compose(p: &Pmf, steps: usize, tail: f64) -> Pmf {
    if steps == 1 {
        return p.clone();
    }
    let (lo, hi) = chernoff_window(p, steps, tail);
    let (s, e) = ((lo / p.h).floor() as i64, (hi / p.h).ceil() as i64);
    let window = (e - s + 1) as usize;
    let n = window.max(p.mass.len()).next_power_of_two().max(2);
    let mut planner = RealFftPlanner::<f64>::new();
    let forward = planner.plan_fft_forward(n);
    let inverse = planner.plan_fft_inverse(n);
    let mut real = forward.make_input_vec();
    real[..p.mass.len()].copy_from_slice(&p.mass);
    let mut spectrum = forward.make_output_vec();
    forward.process(&mut real, &mut spectrum).expect("buffer sizes come from the plan");
    let t = steps as f64;
    for z in spectrum.iter_mut() {
        let (r, theta) = z.to_polar();
        *z = Complex64::from_polar(r.powf(t), theta * t);
    }
    // The inverse of a real signal's spectrum needs exactly real first and last bins.
    spectrum[0].im = 0.0;
    if let Some(last) = spectrum.last_mut() {
        last.im = 0.0;
    }
    inverse.process(&mut spectrum, &mut real).expect("buffer sizes come from the plan");
    // Entry k of the circular result holds the mass at index T·start + k (mod n); read the window [s, e].
    let shift = (s - steps as i64 * p.start).rem_euclid(n as i64) as usize;
    let scale = 1.0 / n as f64;
    let mass: Vec<f64> = (0..window).map(|j| (real[(shift + j) % n] * scale).max(0.0)).collect();
    let infinity = (-(t * (-p.infinity).ln_1p()).exp_m1() + tail).min(1.0);
    Pmf { start: s, h: p.h, mass, infinity }
}

/// δ(ε) of a discrete PLD (used by tests; [`epsilon_for_delta`] inverts it in one pass).
#[cfg(test)]
fn delta_at(p: &Pmf, eps: f64) -> f64 {
    let mut d = p.infinity;
    for (k, &m) in p.mass.iter().enumerate().rev() {
        let loss = (p.start + k as i64) as f64 * p.h;
        if loss <= eps {
            break;
        }
        d -= m * (eps - loss).exp_m1();
    }
    d
}

/// The smallest ε >= 0 with δ(ε) <= `delta` (∞ when the mass at +∞ alone exceeds δ), in one pass from the top:
/// at grid point k, δ = p∞ + A_k - B_k with A_k = Σ_{j>k} p_j and B_k = Σ_{j>k} p_j e^{ε_k - ε_j}; between grid
/// points δ is linear in e^ε, so the crossing is solved exactly.
fn epsilon_for_delta(p: &Pmf, delta: f64) -> f64 {
    if p.infinity > delta {
        return f64::INFINITY;
    }
    let decay = (-p.h).exp();
    let (mut a, mut b) = (0.0f64, 0.0f64);
    for k in (0..p.mass.len()).rev() {
        // Step from grid point k to k - 1: mass k joins the sums.
        let a_next = a + p.mass[k];
        let b_next = (b + p.mass[k]) * decay;
        let eps_next = (p.start + k as i64 - 1) as f64 * p.h;
        if p.infinity + a_next - b_next > delta {
            // The crossing lies in [ε_{k-1}, ε_k]: p∞ + A - e^{ε - ε_{k-1}} B = δ.
            let eps = eps_next + ((p.infinity + a_next - delta) / b_next).ln();
            return eps.max(0.0);
        }
        (a, b) = (a_next, b_next);
    }
    0.0
}

/// The largest single-step privacy loss the discretisation evaluates: the hockey-stick curve needs e^ε, which
/// overflows past ~709.
pub const MAX_SINGLE_STEP_LOSS: f64 = 700.0;

impl Pld {
    /// Why this accountant cannot discretise `m` (then it answers ε = ∞, a valid but useless bound): a noise
    /// multiplier so small that one step's privacy loss leaves the range where it can be evaluated.
    pub fn unsupported(m: &SubsampledGaussian) -> Option<String> {
        let (q, sigma) = (m.sampling_rate, m.noise_multiplier);
        [Direction::Remove, Direction::Add].into_iter().find_map(|dir| {
            let (lo, hi) = loss_range(dir, q, sigma);
            (!(lo.is_finite() && hi.is_finite() && lo.abs() <= MAX_SINGLE_STEP_LOSS && hi.abs() <= MAX_SINGLE_STEP_LOSS)).then(|| {
                format!("σ = {sigma:?} is too small for the PLD grid (one step's privacy loss reaches {:.3e}, past ±{MAX_SINGLE_STEP_LOSS}); it answers ∞", lo.abs().max(hi.abs()))
            })
        })
    }

    fn direction_epsilon(&self, dir: Direction, m: &SubsampledGaussian, steps: usize, delta: f64) -> f64 {
        let (q, sigma) = (m.sampling_rate, m.noise_multiplier);
        // Grid sizes are bounded whatever σ: a tiny σ makes the single-step loss range astronomically wide.
        let budget = (self.max_points / 2) as f64;
        let (single_lo, single_hi) = loss_range(dir, q, sigma);
        let single_width = single_hi - single_lo;
        // A coarse pass sizes the grid so the composed window fits in `max_points`.
        let (lo, hi) = if steps == 1 {
            (single_lo, single_hi)
        } else {
            let coarse = single_step(dir, q, sigma, 1e-2f64.max(single_width / 65_536.0));
            chernoff_window(&coarse, steps, self.tail_mass)
        };
        let h = self.min_interval.max((hi - lo) / budget).max(single_width / budget);
        let single = single_step(dir, q, sigma, h);
        epsilon_for_delta(&compose(&single, steps, self.tail_mass), delta)
    }
}

impl Accountant for Pld {
    fn name(&self) -> &'static str {
        "pld"
    }
    fn epsilon(&self, m: &SubsampledGaussian, steps: usize, delta: f64) -> Result<f64> {
        super::check_query(steps, delta)?;
        if let Some(why) = Self::unsupported(m) {
            tracing::debug!("{why}");
            return Ok(f64::INFINITY);
        }
        let remove = self.direction_epsilon(Direction::Remove, m, steps, delta);
        let add = self.direction_epsilon(Direction::Add, m, steps, delta);
        Ok(remove.max(add))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_step_pmf_is_a_distribution_reproducing_the_curve() {
        for (q, sigma) in [(0.01, 1.0), (0.256, 0.5), (1.0, 2.0)] {
            for dir in [Direction::Remove, Direction::Add] {
                let p = single_step(dir, q, sigma, 1e-3);
                let total: f64 = p.mass.iter().sum::<f64>() + p.infinity;
                assert!((total - 1.0).abs() < 1e-9, "{dir:?} q={q} σ={sigma}: total {total}");
                for eps in [0.0, 0.1, 0.5, 1.0] {
                    let (exact, discrete) = (hockey(dir, q, sigma, eps), delta_at(&p, eps));
                    assert!(discrete >= exact - 1e-12, "pessimistic: {discrete} < {exact}");
                    assert!(discrete - exact < 1e-6, "tight: {discrete} vs {exact}");
                }
            }
        }
    }
}
