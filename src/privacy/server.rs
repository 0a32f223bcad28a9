//! The server's protection of its source data, as OpenDP measurements on the source dataset.
//!
//! The client sees the decrypted outputs of the server's lower network for inputs it chooses, so whatever the
//! weights remember about the source examples can leak to it. Two mechanisms bound that leak:
//!
//! - **Weight noise** ([`WeightNoisePlan`]): Gaussian noise of std s on every weight and bias of the lower network after
//!   pretraining, before quantization. On the source dataset it is OpenDP's `make_gaussian` chained after the
//!   training map, whose L2 stability the operator *declares* (`l2_sensitivity` Δ per added or removed example).
//!   That gives zCDP ρ = Δ²/(2s²), converted to (ε, δ) with `make_zCDP_to_approxDP` and `make_fix_delta`.
//!   **The guarantee holds only if Δ truly bounds** ‖W(D) − W(D')‖₂ over neighbouring source datasets. Ordinary
//!   training gives no such bound. It protects the source examples against anyone who sees the noised weights or
//!   anything computed from them, including the client's decrypted outputs.
//! - **DP pretraining**: DP-SGD on the source data ([`crate::privacy::plan`], the client's engine and accountants),
//!   whose guarantee needs no declared sensitivity. It enters OpenDP as an approximate-DP measurement
//!   ([`approx_dp_measurement`]) whose map is the accountant's (ε, δ).
//!
//! [`compose`] composes them on the source data with OpenDP's `make_composition` in the common measure
//! approximate DP (ε and δ add).
//!
//! OpenDP only accounts here: the measurements' functions are never invoked (the training runs in Burn, the noise
//! comes from this crate's ChaCha20 CSPRNG, see [`crate::privacy::dpsgd::gaussian_noise`]).
//!
//! ```
//! use cryptotl::privacy::server::weight_noise_epsilon;
//! // Δ/s = 2 gives ρ = 2: the same ε as 100 full-batch DP-SGD steps at σ = 5 (see `zcdp`).
//! let (rho, eps) = weight_noise_epsilon(0.2, 0.1, 1e-5).unwrap();
//! assert!((rho - 2.0).abs() < 1e-9 && (eps - 10.724824).abs() < 1e-5);
//! ```

use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::Backend;
use burn::tensor::{Tensor, TensorData};
use opendp::combinators::{make_chain_mt, make_composition, make_fix_delta, make_zCDP_to_approxDP};
use opendp::core::{Function, Measurement, PrivacyMap, StabilityMap, Transformation};
use opendp::domains::{AtomDomain, VectorDomain};
use opendp::error::Fallible;
use opendp::{err, fallible};
use opendp::measurements::make_gaussian;
use opendp::measures::{Approximate, MaxDivergence, ZeroConcentratedDivergence};
use opendp::metrics::{L2Distance, SymmetricDistance};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

use crate::config::WeightNoiseConfig;
use crate::error::{Error, Result};
use crate::model::LowerNet;

/// The source dataset as OpenDP sees it: a vector of texts, neighbours differ by adding or removing one.
pub type SourceDomain = VectorDomain<AtomDomain<String>>;
/// An (ε, δ) mechanism on the source data.
pub type ApproxDpMeasurement = Measurement<SourceDomain, SymmetricDistance, Approximate<MaxDivergence>, Vec<f64>>;
/// The weight-noise mechanism on the source data, in zCDP.
pub type WeightNoiseMeasurement = Measurement<SourceDomain, SymmetricDistance, ZeroConcentratedDivergence, Vec<f64>>;

fn accounting_only<T>(what: &'static str) -> Function<Vec<String>, T> {
    Function::new_fallible(move |_: &Vec<String>| -> Fallible<T> {
        fallible!(FailedFunction, "{what}: accounting only; the computation runs outside OpenDP")
    })
}

/// The weight-noise mechanism as an OpenDP measurement on the source data: the training map (declared L2
/// stability `l2_sensitivity` per added or removed example) chained with `make_gaussian` of std `noise_std`.
pub fn weight_noise_measurement(l2_sensitivity: f64, noise_std: f64) -> Result<WeightNoiseMeasurement> {
    check_positive("l2_sensitivity", l2_sensitivity)?;
    check_positive("noise_std", noise_std)?;
    let weights = VectorDomain::new(AtomDomain::<f64>::new_non_nan());
    let training = Transformation::new(
        SourceDomain::new(AtomDomain::default()),
        SymmetricDistance,
        weights.clone(),
        L2Distance::default(),
        accounting_only("pretraining"),
        // Δ per added or removed example; the triangle inequality gives Δ·k for k of them.
        StabilityMap::new(move |d_in: &u32| l2_sensitivity * *d_in as f64),
    )
    ?;
    let gaussian: Measurement<_, _, ZeroConcentratedDivergence, Vec<f64>> =
        make_gaussian(weights, L2Distance::default(), noise_std, None)?;
    make_chain_mt(&gaussian, &training).map_err(Error::from)
}

/// (ρ, ε at δ) of the weight noise for one added or removed source example, by OpenDP.
pub fn weight_noise_epsilon(l2_sensitivity: f64, noise_std: f64, delta: f64) -> Result<(f64, f64)> {
    super::check_query(1, delta)?;
    rho_and_epsilon(weight_noise_measurement(l2_sensitivity, noise_std)?, delta)
}

/// (ρ, ε at `delta`) of a zCDP measurement on the source data for one added or removed example: its map, and OpenDP's
/// conversion to approximate DP.
fn rho_and_epsilon<TO: 'static>(m: Measurement<SourceDomain, SymmetricDistance, ZeroConcentratedDivergence, TO>, delta: f64) -> Result<(f64, f64)> {
    let rho = m.map(&1)?;
    let (epsilon, _) = make_fix_delta(&make_zCDP_to_approxDP(m)?, delta)?.map(&1)?;
    Ok((rho, epsilon))
}

/// The smallest noise std (to relative precision 1e-6, rounded up) whose ε at `delta` is at most `target_epsilon`.
pub fn calibrate_weight_noise(l2_sensitivity: f64, delta: f64, target_epsilon: f64) -> Result<f64> {
    check_positive("target_epsilon", target_epsilon)?;
    let eps_at = |s: f64| weight_noise_epsilon(l2_sensitivity, s, delta).map(|(_, e)| e);
    // ε decreases in s; bracket around Δ (where ε is of order sqrt(ln 1/δ)).
    let (mut lo, mut hi) = (l2_sensitivity, l2_sensitivity);
    while eps_at(hi)? > target_epsilon {
        hi *= 2.0;
        if hi > l2_sensitivity * 1e9 {
            return Err(Error::Privacy(format!("no noise std up to 1e9·Δ reaches ε = {target_epsilon}")));
        }
    }
    while eps_at(lo)? <= target_epsilon {
        lo /= 2.0;
        if lo < l2_sensitivity * 1e-9 {
            return Err(Error::Privacy(format!("ε = {target_epsilon} is reached with no useful noise (std below 1e-9·Δ)")));
        }
    }
    while (hi - lo) / hi > 1e-6 {
        let mid = 0.5 * (lo + hi);
        if eps_at(mid)? > target_epsilon { lo = mid } else { hi = mid }
    }
    Ok(hi)
}

/// A resolved weight-noise release.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WeightNoisePlan {
    /// Declared L2 sensitivity Δ of the flattened weight vector to one source example.
    pub l2_sensitivity: f64,
    /// Noise std per weight and bias (given or calibrated).
    pub noise_std: f64,
    /// Whether the std was calibrated from `target_epsilon`.
    pub noise_calibrated: bool,
    /// δ.
    pub delta: f64,
    /// Where δ came from.
    pub delta_source: String,
    /// zCDP ρ = Δ²/(2s²) (OpenDP's map).
    pub rho: f64,
    /// ε at δ of record: OpenDP, zCDP converted to (ε, δ).
    pub epsilon: f64,
    /// ε at δ of the exact Gaussian mechanism (the `pld` accountant, one full-batch step): what the zCDP
    /// conversion loses.
    pub epsilon_exact: f64,
}

/// Resolve `[server_privacy.weight_noise]` for `n_source` source training examples (`None` when off).
pub fn plan_weight_noise(cfg: &WeightNoiseConfig, n_source: usize) -> Result<Option<WeightNoisePlan>> {
    if !cfg.enabled {
        return Ok(None);
    }
    if n_source == 0 {
        return Err(Error::Privacy("no source training examples".into()));
    }
    let (delta, delta_source) = match cfg.delta {
        Some(d) => (d, "config".to_string()),
        None => (0.1 / n_source as f64, format!("default 0.1/N = 0.1/{n_source}")),
    };
    let (noise_std, noise_calibrated) = match (cfg.noise_std, cfg.target_epsilon) {
        (Some(s), None) => (s, false),
        (None, Some(t)) => (calibrate_weight_noise(cfg.l2_sensitivity, delta, t)?, true),
        _ => return Err(Error::Privacy("weight noise: give exactly one of noise_std and target_epsilon".into())),
    };
    super::dpsgd::check_noise_std(noise_std, "the weight noise's std")?;
    let (rho, epsilon) = weight_noise_epsilon(cfg.l2_sensitivity, noise_std, delta)?;
    let gaussian = super::SubsampledGaussian::new(1.0, noise_std / cfg.l2_sensitivity)?;
    let epsilon_exact = super::Accountant::epsilon(&super::pld::Pld::default(), &gaussian, 1, delta)?;
    Ok(Some(WeightNoisePlan { l2_sensitivity: cfg.l2_sensitivity, noise_std, noise_calibrated, delta, delta_source, rho, epsilon, epsilon_exact }))
}

/// Adds N(0, std²) to every float parameter, drawing from one ChaCha20 stream in parameter order.
struct AddNoise<'a> {
    std: f64,
    rng: &'a mut ChaCha20Rng,
    count: usize,
}

impl<B: Backend> ModuleMapper<B> for AddNoise<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let dims = tensor.dims();
        let n: usize = dims.iter().product();
        let noise = super::dpsgd::gaussian_noise(n, self.std, self.rng);
        self.count += n;
        let noised = tensor.clone() + Tensor::<B, D>::from_data(TensorData::new(noise, dims), &tensor.device());
        Param::from_mapped_value(id, noised, mapper)
    }
}

/// The lower network with N(0, `noise_std`²) added to every weight and bias, and the number of values noised.
///
/// ```
/// use cryptotl::config::LowerNetConfig;
/// use cryptotl::model::{Cpu, LowerNet};
/// use cryptotl::privacy::{dpsgd::PrivacyRng, server::add_weight_noise};
/// let net = LowerNet::<Cpu>::new(&LowerNetConfig::default(), 64, 1, &Default::default());
/// let (noised, count) = add_weight_noise(net, 0.01, &mut PrivacyRng::insecure_from_seed(7).noise);
/// assert_eq!(count, 9 + 64 * 32 + 32); // conv kernel (no bias), dense weights + biases
/// # let _ = noised;
/// ```
pub fn add_weight_noise<B: Backend>(net: LowerNet<B>, noise_std: f64, rng: &mut ChaCha20Rng) -> (LowerNet<B>, usize) {
    let mut mapper = AddNoise { std: noise_std, rng, count: 0 };
    let net = net.map(&mut mapper);
    (net, mapper.count)
}

/// A mechanism on the source data with a fixed (ε, δ) for one added or removed example (e.g. DP pretraining, as
/// its accountant reports it), as an OpenDP measurement. Larger distances are refused rather than guessed.
pub fn approx_dp_measurement(epsilon: f64, delta: f64, what: &'static str) -> Result<ApproxDpMeasurement> {
    Measurement::new(
        SourceDomain::new(AtomDomain::default()),
        SymmetricDistance,
        Approximate(MaxDivergence),
        accounting_only(what),
        PrivacyMap::new_fallible(move |d_in: &u32| {
            if *d_in <= 1 {
                Ok((epsilon, delta))
            } else {
                fallible!(RelationDebug, "{what} is accounted for one added or removed example, not {d_in}")
            }
        }),
    )
    .map_err(Error::from)
}

/// The weight noise in approximate DP at its δ (OpenDP's zCDP conversion), for composition.
pub fn weight_noise_approx_dp(plan: &WeightNoisePlan) -> Result<ApproxDpMeasurement> {
    let m = weight_noise_measurement(plan.l2_sensitivity, plan.noise_std)?;
    make_fix_delta(&make_zCDP_to_approxDP(m)?, plan.delta).map_err(Error::from)
}

/// The noised releases a server has stored for one pretraining besides a run's own: what the budget composes for
/// whoever holds them all ([`weight_noise_releases_epsilon`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoredReleases {
    /// Their settings (other noise settings of the network, or draws from an earlier network of the same config).
    pub plans: Vec<WeightNoisePlan>,
    /// Complete entries, so possibly released, whose setting cannot be read: with any, the releases together have
    /// no bound.
    pub unreadable: usize,
}

impl StoredReleases {
    /// No other release is stored.
    pub fn is_empty(&self) -> bool {
        self.plans.is_empty() && self.unreadable == 0
    }
}

/// The releases of a server's other pretrainings that learned from some of the same source examples (another
/// config: another pretraining key), as its cache records them ([`crate::pipeline::other_pretrainings`]), and the
/// network shipped in the binary when it learned from them.
///
/// ```
/// use cryptotl::overlap::SourceFingerprints;
/// use cryptotl::privacy::server::OtherPretrainings;
/// let dir = |k: &str| std::path::PathBuf::from(format!("runs/cache/pretrain-{k}"));
/// let mut others = OtherPretrainings { counted: vec![(dir("a"), 1.0, 1e-6), (dir("b"), 2.0, 3e-6)], ..Default::default() };
/// // Across pretrainings, ε and δ add.
/// let (eps, delta) = others.together().unwrap();
/// assert!((eps - 3.0).abs() < 1e-12 && (delta - 4e-6).abs() < 1e-18);
/// assert!(others.describe().starts_with("2 other pretraining(s) sharing source examples in the cache (ε = 3.0"));
/// assert!(others.describe().contains("runs/cache/pretrain-b ε = 2.0"), "each is named, so that it can be found");
/// // One whose releases cannot be read leaves no bound.
/// others.unreadable.push(dir("c"));
/// assert_eq!((others.together(), others.epsilon(), others.count()), (None, f64::INFINITY, 3));
/// // The network shipped in the binary learned from this Yelp sentence in the clear: no bound holds for a source
/// // that holds it, whatever the file's name.
/// let cache = std::path::Path::new("no/such/cache");
/// let yelp = SourceFingerprints::of_texts(["Wow... Loved this place."]);
/// let shared = cryptotl::pipeline::other_pretrainings(cache, &[], Some(&yelp));
/// assert!(shared.shipped.is_some() && shared.together().is_none() && shared.uncompared.is_empty());
/// // A cache with no other pretraining, on texts the binary's network never saw: nothing to add.
/// let spam = SourceFingerprints::of_texts(["WINNER!! Claim your prize now"]);
/// assert!(cryptotl::pipeline::other_pretrainings(cache, &[], Some(&spam)).is_empty());
/// // What a run's network learned from unknown (an entry made by an older version), every other counts.
/// assert!(!cryptotl::pipeline::other_pretrainings(cache, &[], None).uncompared.is_empty());
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OtherPretrainings {
    /// The other pretrainings' folders whose releases are counted, each with its releases' (ε, δ) together, in path
    /// order.
    pub counted: Vec<(std::path::PathBuf, f64, f64)>,
    /// Other pretrainings that record releases which cannot be read (their ε unknown): with any, no bound holds.
    pub unreadable: Vec<std::path::PathBuf>,
    /// The network shipped in the binary, by name, when it learned from some of these source examples and is not
    /// the run's own: its plain weights are public, so no bound holds for the examples it shares.
    pub shipped: Option<String>,
    /// Other pretrainings (folders) a network of which the server built for clients with no mechanism (`cryptotl
    /// server build`): plain releases, so no bound holds for the examples they share.
    pub served_plain: Vec<std::path::PathBuf>,
    /// Those among them (folders; the shipped network's by its key's folder) counted without comparing source texts:
    /// one side records none (an entry made before entries recorded them), so they may share none.
    pub uncompared: Vec<std::path::PathBuf>,
}

impl OtherPretrainings {
    /// No other pretraining records a release.
    pub fn is_empty(&self) -> bool {
        self.count() == 0
    }

    /// How many other pretrainings record releases (the shipped network counted as one).
    pub fn count(&self) -> usize {
        self.counted.len() + self.unreadable.len() + self.served_plain.len() + usize::from(self.shipped.is_some())
    }

    /// Their releases together, (ε, δ) by basic composition; `None` when one of them cannot be read, or was built
    /// plain for clients, or the shipped network is among them.
    pub fn together(&self) -> Option<(f64, f64)> {
        (self.unreadable.is_empty() && self.served_plain.is_empty() && self.shipped.is_none()).then(|| self.counted.iter().fold((0.0, 0.0), |(e, d), (_, de, dd)| (e + de, d + dd)))
    }

    /// [`Self::together`]'s ε, ∞ when there is no bound.
    pub fn epsilon(&self) -> f64 {
        self.together().map_or(f64::INFINITY, |(e, _)| e)
    }

    /// What they are, for an error or a report: "2 other pretraining(s) sharing source examples in the cache (ε =
    /// 3.00 together: runs/cache/pretrain-… ε = 1.00, …)", each named so that a user can find it, and those counted
    /// without comparing source texts said so.
    pub fn describe(&self) -> String {
        let n = self.count();
        let list = |dirs: &[std::path::PathBuf]| dirs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
        let what = if let Some(name) = &self.shipped {
            format!(
                "{n} other pretraining(s) sharing source examples, among them the network shipped in the cryptotl binary (\"{name}\"), \
                 whose plain weights anyone with the binary has (no bound holds for the source examples it learned from)"
            )
        } else if !self.served_plain.is_empty() {
            format!(
                "{n} other pretraining(s) sharing source examples in the cache, {} of them built for clients with no mechanism \
                 (cryptotl server build: no bound holds for the source examples they learned from): {}",
                self.served_plain.len(),
                list(&self.served_plain)
            )
        } else {
            match self.together() {
                Some((e, _)) => format!(
                    "{n} other pretraining(s) sharing source examples in the cache (ε = {} together: {})",
                    crate::privacy::shown::epsilon(e),
                    self.counted.iter().map(|(dir, e, _)| format!("{} ε = {}", dir.display(), crate::privacy::shown::epsilon(*e))).collect::<Vec<_>>().join(", ")
                ),
                None => format!(
                    "{n} other pretraining(s) sharing source examples in the cache, {} of whose releases cannot be read ({})",
                    self.unreadable.len(),
                    list(&self.unreadable)
                ),
            }
        };
        if self.uncompared.is_empty() {
            return what;
        }
        format!(
            "{what}; counted without comparing source texts, since one side does not record what it learned from (made by \
             an older version; a run of its config records it, or delete the folder if it learned from other data): {}",
            list(&self.uncompared)
        )
    }
}

/// Several weight-noise releases of networks trained on the same source data (`plans`: other noise settings, or
/// other draws), together: OpenDP's `make_composition` of their Gaussian measurements in zCDP (the ρ add, which is
/// tight for Gaussians), converted to (ε, δ) at `delta`. Returns (ρ, ε). Whoever holds every release (one client
/// over several runs, or clients who pool what they saw) learns at most this much about one source example; each
/// release's own ε covers a holder of that release alone.
///
/// ```
/// use cryptotl::privacy::server::{plan_weight_noise, weight_noise_epsilon, weight_noise_releases_epsilon};
/// use cryptotl::config::WeightNoiseConfig;
/// let plan = |std: f64| {
///     let cfg = WeightNoiseConfig { enabled: true, l2_sensitivity: 0.1, noise_std: Some(std), target_epsilon: None, delta: Some(1e-5), insecure_seed: None };
///     plan_weight_noise(&cfg, 1000).unwrap().unwrap()
/// };
/// let (a, b) = (plan(0.1), plan(0.2));
/// // Gaussians of std 0.1 and 0.2 together tell as much as one of std 1/sqrt(1/0.1² + 1/0.2²).
/// let (rho, eps) = weight_noise_releases_epsilon(&[&a, &b], 1e-5).unwrap();
/// let (rho_one, eps_one) = weight_noise_epsilon(0.1, (1.0f64 / (100.0 + 25.0)).sqrt(), 1e-5).unwrap();
/// assert!((rho - rho_one).abs() < 1e-9 && (eps - eps_one).abs() < 1e-6);
/// assert!(eps > a.epsilon && eps < a.epsilon + b.epsilon);
/// ```
pub fn weight_noise_releases_epsilon(plans: &[&WeightNoisePlan], delta: f64) -> Result<(f64, f64)> {
    super::check_query(1, delta)?;
    let parts = plans.iter().map(|p| weight_noise_measurement(p.l2_sensitivity, p.noise_std)).collect::<Result<Vec<_>>>()?;
    rho_and_epsilon(make_composition(parts)?, delta)
}

/// Several DP pretrainings of networks trained on the same source data (`plans`: one network's and those it
/// replaced on changed data), together: their accountants' (ε, δ) composed with [`compose`], for whoever holds
/// outputs of every network.
pub fn dp_pretrainings_epsilon(plans: &[&crate::privacy::plan::DpPlan]) -> Result<(f64, f64)> {
    compose(plans.iter().map(|p| approx_dp_measurement(p.epsilon, p.delta, "DP pretraining")).collect::<Result<Vec<_>>>()?)
}

/// Compose mechanisms on the source data with OpenDP's `make_composition` (approximate DP: ε and δ add) and
/// return (ε, δ) for one added or removed example.
///
/// ```
/// use cryptotl::privacy::server::{approx_dp_measurement, compose};
/// let a = approx_dp_measurement(1.0, 1e-6, "a").unwrap();
/// let b = approx_dp_measurement(0.5, 2e-6, "b").unwrap();
/// let (eps, delta) = compose(vec![a, b]).unwrap();
/// assert!((eps - 1.5).abs() < 1e-12 && (delta - 3e-6).abs() < 1e-18);
/// ```
pub fn compose(parts: Vec<ApproxDpMeasurement>) -> Result<(f64, f64)> {
    make_composition(parts)?.map(&1).map_err(Error::from)
}

fn check_positive(what: &str, v: f64) -> Result<()> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(Error::Privacy(format!("{what} must be a finite number > 0, got {v}")))
    }
}
