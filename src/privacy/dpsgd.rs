//! DP-SGD (Abadi et al. 2016) on Burn models: Poisson sampling, per-example clipping over all parameters,
//! Gaussian noise on the clipped sum, division by the expected batch size.
//!
//! Two ways to get the clipped per-example gradient sum, which a test shows agree to float tolerance:
//! - [`clipped_gradient_sum_reference`]: one backward pass per example (any model).
//! - [`PrivateModel::clipped_gradient_sum`] on the head: one batched backward pass. Burn cannot mark an
//!   intermediate tensor as requiring grad, so a zero-valued leaf is added to each dense layer's pre-activation;
//!   after the backward pass of Σᵢ Lᵢ its gradient row i is ∂Lᵢ/∂zᵢ. A dense layer's per-example weight gradient is
//!   the outer product xᵢᵀgᵢ, whose norm is ‖xᵢ‖·‖gᵢ‖, so the per-example norms cost no per-example gradients; the
//!   clipped sum is then Xᵀ·diag(c)·G per layer (two extra matrix products).
//!
//! Noise: N(0, σ²C²) per coordinate of the summed gradient, drawn with `rand_distr::Normal` from a ChaCha20
//! stream seeded from the operating system (a CSPRNG; a fixed seed only in tests). What this sampler guarantees:
//! the uniform bits are cryptographically strong, the Gaussian is computed in floating point (ziggurat), so the
//! DP guarantee is that of the ideal Gaussian mechanism; floating-point artefacts of the kind Mironov (2012) showed
//! for the Laplace mechanism are not ruled out (a discrete or snapping sampler would be needed for that).
//!
//! Models must treat examples independently (no batch norm or other batch statistics): the head, the lower network
//! and the whole network here do; a model mixing examples would break the per-example gradients.

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::Backend;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor, TensorData};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rand_distr::{Distribution, Normal};

use crate::model::{BinaryClassifier, DropoutRng, FullNet, Head, PretrainNet, bce_with_logits};

/// The noise and sampling streams of a private run.
pub struct PrivacyRng {
    /// Poisson sampling decisions.
    pub sampling: ChaCha20Rng,
    /// Gaussian noise.
    pub noise: ChaCha20Rng,
}

impl PrivacyRng {
    /// From the OS, or from `insecure_seed` when one is configured (tests only).
    pub fn new(insecure_seed: Option<u64>) -> Self {
        insecure_seed.map_or_else(Self::from_os, Self::insecure_from_seed)
    }
    /// Seeded from the operating system's CSPRNG (production).
    pub fn from_os() -> Self {
        let mut os = rand::rng();
        Self { sampling: ChaCha20Rng::from_rng(&mut os), noise: ChaCha20Rng::from_rng(&mut os) }
    }
    /// Fixed seed: reproducible, for tests only (the noise is then known to whoever knows the seed).
    pub fn insecure_from_seed(seed: u64) -> Self {
        Self { sampling: ChaCha20Rng::seed_from_u64(crate::seeds::stream(seed, crate::seeds::DP_SAMPLING)), noise: ChaCha20Rng::seed_from_u64(crate::seeds::stream(seed, crate::seeds::DP_NOISE)) }
    }
    /// Poisson sampling: each of `n` indices independently with probability `q` (the batch may be empty).
    pub fn poisson_batch(&mut self, n: usize, q: f64) -> Vec<usize> {
        use rand::RngExt;
        (0..n).filter(|_| self.sampling.random::<f64>() < q).collect()
    }
}

/// Where the noise of a [`PrivacyRng`] comes from, in words (for reports).
pub fn noise_source(insecure_seed: bool) -> &'static str {
    if insecure_seed {
        "ChaCha20 with a FIXED seed from the config (insecure: tests only)"
    } else {
        "ChaCha20 seeded from the operating system; floating-point Gaussian (rand_distr)"
    }
}

/// The clipped per-example gradient sum of a batch.
pub struct ClippedSum {
    /// Σᵢ min(1, C/‖∇Lᵢ‖)·∇Lᵢ per parameter.
    pub grads: GradientsParams,
    /// ‖∇Lᵢ‖ before clipping.
    pub norms: Vec<f64>,
    /// Σᵢ Lᵢ (for progress reporting only).
    pub loss_sum: f64,
}

/// A model DP-SGD can train: it yields the clipped per-example gradient sum (default: the reference path).
pub trait PrivateModel<B: AutodiffBackend>: AutodiffModule<B> + BinaryClassifier<B> + Sized {
    /// Σᵢ min(1, C/‖∇Lᵢ‖)·∇Lᵢ over the rows of `x`, and the per-example norms ‖∇Lᵢ‖.
    fn clipped_gradient_sum(&self, x: Tensor<B, 2>, y: Tensor<B, 2>, clip: f64, drop: Option<&mut DropoutRng<'_>>) -> ClippedSum {
        clipped_gradient_sum_reference(self, x, y, clip, drop)
    }
}

impl<B: AutodiffBackend> PrivateModel<B> for PretrainNet<B> {}
impl<B: AutodiffBackend> PrivateModel<B> for FullNet<B> {}

/// Sum of squares of every parameter gradient present in `grads`.
struct SquaredNorm<'a> {
    grads: &'a GradientsParams,
    total: f64,
}
impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            self.total += g.powi_scalar(2).sum().into_scalar().elem::<f64>();
        }
    }
}

/// `into[id] += scale · from[id]` for every parameter.
struct Accumulate<'a> {
    into: &'a mut GradientsParams,
    from: GradientsParams,
    scale: f64,
}
impl<B: AutodiffBackend> ModuleVisitor<B> for Accumulate<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.from.remove::<B::InnerBackend, D>(param.id) {
            let g = g.mul_scalar(self.scale);
            let sum = match self.into.remove::<B::InnerBackend, D>(param.id) {
                Some(acc) => acc + g,
                None => g,
            };
            self.into.register(param.id, sum);
        }
    }
}

/// L2 norm of a model's full gradient.
pub fn gradient_norm<B: AutodiffBackend, M: AutodiffModule<B>>(model: &M, grads: &GradientsParams) -> f64 {
    let mut v = SquaredNorm { grads, total: 0.0 };
    model.visit(&mut v);
    v.total.sqrt()
}

fn clip_factor(norm: f64, clip: f64) -> f64 {
    if norm > clip { clip / norm } else { 1.0 }
}

/// The reference: one forward and backward pass per example, each gradient clipped to `clip` and summed.
pub fn clipped_gradient_sum_reference<B, M>(model: &M, x: Tensor<B, 2>, y: Tensor<B, 2>, clip: f64, mut drop: Option<&mut DropoutRng<'_>>) -> ClippedSum
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + BinaryClassifier<B>,
{
    let [n, d] = x.dims();
    let mut sum = GradientsParams::new();
    let mut norms = Vec::with_capacity(n);
    let mut loss_sum = 0.0;
    for i in 0..n {
        let xi = x.clone().slice([i..i + 1, 0..d]);
        let yi = y.clone().slice([i..i + 1, 0..1]);
        let loss = bce_with_logits(model.logits(xi, drop.as_deref_mut()), yi).sum();
        loss_sum += loss.clone().into_scalar().elem::<f64>();
        let g = GradientsParams::from_grads(loss.backward(), model);
        let norm = gradient_norm(model, &g);
        let mut acc = Accumulate { into: &mut sum, from: g, scale: clip_factor(norm, clip) };
        model.visit(&mut acc);
        norms.push(norm);
    }
    ClippedSum { grads: sum, norms, loss_sum }
}

/// `x W + b` with the parameters cut from the graph.
fn detached_linear<B: AutodiffBackend>(layer: &burn::nn::Linear<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
    let y = x.matmul(layer.weight.val().detach());
    match &layer.bias {
        Some(b) => y + b.val().detach().unsqueeze_dim::<2>(0),
        None => y,
    }
}

fn row_sq_norms<B: Backend>(t: Tensor<B, 2>) -> Tensor<B, 2> {
    t.powi_scalar(2).sum_dim(1)
}

impl<B: AutodiffBackend> PrivateModel<B> for Head<B> {
    /// The fast path: one batched backward pass with zero-valued leaves on the dense layers' outputs.
    fn clipped_gradient_sum(&self, x: Tensor<B, 2>, y: Tensor<B, 2>, clip: f64, drop: Option<&mut DropoutRng<'_>>) -> ClippedSum {
        let device = x.device();
        let [n, _] = x.dims();
        // The weights are detached: the backward pass then computes only what the per-example path needs (the
        // leaves' gradients), not the batch weight gradients that would be thrown away.
        let leaf1 = self.dense1.as_ref().map(|d1| Tensor::<B, 2>::zeros([n, d1.weight.dims()[1]], &device).require_grad());
        let a = match (&self.dense1, &leaf1) {
            (Some(d1), Some(l1)) => self.hidden_activations(detached_linear(d1, x.clone()) + l1.clone(), drop),
            _ => x.clone(),
        };
        let leaf2 = Tensor::<B, 2>::zeros([n, 1], &device).require_grad();
        let z2 = detached_linear(&self.dense2, a.clone()) + leaf2.clone();
        let loss = bce_with_logits(z2, y).sum();
        let loss_sum = loss.clone().into_scalar().elem::<f64>();
        let grads = loss.backward();
        let g2 = leaf2.grad(&grads).expect("leaf 2 is on the graph");
        let g1 = leaf1.map(|l1| l1.grad(&grads).expect("leaf 1 is on the graph"));
        let (x, a) = (x.inner(), a.inner());
        // ‖∇Lᵢ‖² = ‖xᵢ‖²‖g1ᵢ‖² + ‖g1ᵢ‖² + ‖aᵢ‖²‖g2ᵢ‖² + ‖g2ᵢ‖² (weights are outer products, biases the g's); the
        // linear head has only the second pair, with a = x.
        let mut sq = row_sq_norms(a.clone()).add_scalar(1.0) * row_sq_norms(g2.clone());
        if let Some(g1) = &g1 {
            sq = sq + row_sq_norms(x.clone()).add_scalar(1.0) * row_sq_norms(g1.clone());
        }
        let norms: Vec<f64> = sq.into_data().to_vec::<f32>().expect("floats").iter().map(|v| (*v as f64).sqrt()).collect();
        let factors: Vec<f32> = norms.iter().map(|&v| clip_factor(v, clip) as f32).collect();
        let c = Tensor::<B::InnerBackend, 2>::from_data(TensorData::new(factors, [n, 1]), &device);
        let mut out = GradientsParams::new();
        if let (Some(d1), Some(g1)) = (&self.dense1, g1) {
            let g1c = g1 * c.clone();
            out.register(d1.weight.id, x.transpose().matmul(g1c.clone()));
            if let Some(b) = &d1.bias {
                out.register(b.id, g1c.sum_dim(0).squeeze_dim::<1>(0));
            }
        }
        let g2c = g2 * c;
        out.register(self.dense2.weight.id, a.transpose().matmul(g2c.clone()));
        if let Some(b) = &self.dense2.bias {
            out.register(b.id, g2c.sum_dim(0).squeeze_dim::<1>(0));
        }
        ClippedSum { grads: out, norms, loss_sum }
    }
}

/// `(sum + N(0, (σC)²)) / denominator` for every parameter (pure noise where the sum has no entry, e.g. an empty
/// batch).
struct NoisyMean<'a> {
    sum: GradientsParams,
    out: GradientsParams,
    noise_std: f64,
    denominator: f64,
    rng: &'a mut ChaCha20Rng,
}
impl<B: AutodiffBackend> ModuleVisitor<B> for NoisyMean<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let value = param.val();
        let dims = value.dims();
        let device = value.device();
        let n: usize = dims.iter().product();
        let noise = gaussian_noise(n, self.noise_std, self.rng);
        let noise = Tensor::<B::InnerBackend, D>::from_data(TensorData::new(noise, dims), &device);
        let g = match self.sum.remove::<B::InnerBackend, D>(param.id) {
            Some(g) => g + noise,
            None => noise,
        };
        self.out.register(param.id, g.div_scalar(self.denominator));
    }
}

/// Refuse a noise std that [`gaussian_noise`] cannot draw: not finite and above 0 once it is a 32-bit float (the
/// precision the models train in). The privacy plans call it, so a run is refused before any training.
///
/// ```
/// use cryptotl::privacy::dpsgd::check_noise_std;
/// assert!(check_noise_std(1.3, "σ·C").is_ok());
/// assert!(check_noise_std(1e39, "σ·C").unwrap_err().to_string().contains("32-bit"));
/// assert!(check_noise_std(0.0, "σ·C").is_err());
/// ```
pub fn check_noise_std(std: f64, what: &str) -> crate::error::Result<()> {
    let as_f32 = std as f32;
    if as_f32.is_finite() && as_f32 > 0.0 {
        Ok(())
    } else {
        Err(crate::error::Error::Privacy(format!("{what} = {std:e} is not a positive number a 32-bit float can hold; lower the noise or the clipping norm")))
    }
}

/// `n` draws of N(0, std²): `std` must pass [`check_noise_std`]. Chunks of 2^15 are drawn in parallel, each from its own ChaCha20 stream keyed by 256
/// bits from `rng`, so the result depends only on `rng`'s state (not on the thread count).
pub fn gaussian_noise(n: usize, std: f64, rng: &mut ChaCha20Rng) -> Vec<f32> {
    use rand::RngExt;
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 15;
    let keys: Vec<[u8; 32]> = (0..n.div_ceil(CHUNK)).map(|_| rng.random()).collect();
    let normal = Normal::new(0.0f32, std as f32).expect("finite std");
    let mut out = vec![0f32; n];
    out.par_chunks_mut(CHUNK).zip(keys).for_each(|(chunk, key)| {
        let mut r = ChaCha20Rng::from_seed(key);
        chunk.iter_mut().for_each(|v| *v = normal.sample(&mut r));
    });
    out
}

/// The private gradient: Gaussian noise of std `noise_multiplier · clip` on every coordinate of the clipped sum,
/// divided by the expected batch size.
pub fn noisy_gradient<B: AutodiffBackend, M: AutodiffModule<B>>(model: &M, clipped_sum: GradientsParams, noise_multiplier: f64, clip: f64, expected_batch: f64, rng: &mut ChaCha20Rng) -> GradientsParams {
    let mut v = NoisyMean { sum: clipped_sum, out: GradientsParams::new(), noise_std: noise_multiplier * clip, denominator: expected_batch, rng };
    model.visit(&mut v);
    v.out
}
