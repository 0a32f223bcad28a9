//! The networks, in Burn: the server's lower network (frozen after pretraining, later evaluated under TFHE), its
//! pretraining head, the client's head, and the whole network used by the target-only baseline.
//!
//! Parameters are initialised from a seeded ChaCha stream (PyTorch's default U(±1/sqrt(fan_in))), not from the
//! backend's global RNG, so a seed gives the same network in any thread. Dropout masks come from the trainer's
//! seeded RNG for the same reason.
//!
//! ```
//! use burn::tensor::Tensor;
//! use cryptotl::config::{HeadConfig, LowerNetConfig};
//! use cryptotl::model::{Cpu, Head, LowerNet};
//! let device = Default::default();
//! let lower = LowerNet::<Cpu>::new(&LowerNetConfig::paper(), 768, 1, &device);
//! let head = Head::<Cpu>::new(&HeadConfig::mlp(0, 3, 0.2), 766, 766, 2, &device);
//! let y = head.logits(lower.forward(Tensor::zeros([4, 768], &device)), None);
//! assert_eq!(y.dims(), [4, 1]);
//! ```

use std::path::Path;

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::conv::{Conv1d, Conv1dConfig};
use burn::nn::{Linear, PaddingConfig1d};
use burn::prelude::Backend;
use burn::record::{BinFileRecorder, FullPrecisionSettings};
use burn::tensor::module::{avg_pool1d, max_pool1d};
use burn::tensor::{Bool, Int, Tensor, TensorData};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::{Activation, HeadConfig, HeadKind, LowerNetConfig};
use crate::error::{Error, Result};

/// The CPU backend used for inference and frozen networks.
pub type Cpu = burn::backend::Flex;
/// The backend used for training (CPU + autodiff).
pub type Train = burn::backend::Autodiff<Cpu>;

/// Coefficients (z^3, z^2, z, 1) of the CryptoTL reference's cubic ReLU approximation.
pub const CUBIC_RELU: [f32; 4] = [-0.0061728, 0.092593, 0.59259, 0.49383];

fn uniform_tensor<B: Backend, const D: usize>(shape: [usize; D], bound: f32, rng: &mut ChaCha8Rng, device: &B::Device) -> Tensor<B, D> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-bound..=bound)).collect();
    Tensor::from_data(TensorData::new(v, shape), device)
}

/// A dense layer `y = x W + b` with seeded U(±1/sqrt(d_in)) initialisation.
fn seeded_linear<B: Backend>(d_in: usize, d_out: usize, rng: &mut ChaCha8Rng, device: &B::Device) -> Linear<B> {
    let bound = 1.0 / (d_in as f32).sqrt();
    Linear {
        weight: Param::from_tensor(uniform_tensor([d_in, d_out], bound, rng, device)),
        bias: Some(Param::from_tensor(uniform_tensor([d_out], bound, rng, device))),
    }
}

/// Apply an activation (training-time semantics; the encrypted path uses lookup tables of the same function).
pub fn activate<B: Backend, const D: usize>(x: Tensor<B, D>, act: Activation) -> Tensor<B, D> {
    match act {
        Activation::Relu => burn::tensor::activation::relu(x),
        Activation::Tanh => x.tanh(),
        Activation::Identity => x,
        Activation::CubicRelu => {
            let [a3, a2, a1, a0] = CUBIC_RELU;
            let x2 = x.clone() * x.clone();
            let x3 = x2.clone() * x.clone();
            x3.mul_scalar(a3) + x2.mul_scalar(a2) + x.mul_scalar(a1) + a0
        }
    }
}

/// The activation on one number (the encrypted stage tabulates it).
pub fn activate_scalar(z: f32, act: Activation) -> f32 {
    match act {
        Activation::Relu => z.max(0.0),
        Activation::Tanh => z.tanh(),
        Activation::Identity => z,
        Activation::CubicRelu => {
            let [a3, a2, a1, a0] = CUBIC_RELU;
            ((a3 * z + a2) * z + a1) * z + a0
        }
    }
}

/// Pool a `[batch, width]` tensor along its width with window `k`, stride 1 (k = 1: identity).
fn pool_width<B: Backend>(x: Tensor<B, 2>, k: usize, max: bool) -> Tensor<B, 2> {
    if k <= 1 {
        return x;
    }
    let x3 = x.unsqueeze_dim::<3>(1);
    let y = if max { max_pool1d(x3, k, 1, 0, 1, false) } else { avg_pool1d(x3, k, 1, 0, true, false) };
    y.squeeze_dim::<2>(1)
}

/// The server's lower network: conv1d(k, 1 filter, same padding, no bias) -> dense(hidden) -> activation ->
/// avg-pool(pool, stride 1) -> dense(output).
#[derive(Module, Debug)]
pub struct LowerNet<B: Backend> {
    /// Optional 1-filter convolution over the feature axis.
    pub conv: Option<Conv1d<B>>,
    /// First dense layer.
    pub dense1: Linear<B>,
    /// Optional output dense layer.
    pub dense2: Option<Linear<B>>,
    /// Activation after `dense1`.
    #[module(skip)]
    pub activation: Activation,
    /// Average-pool window.
    pub pool: usize,
}

impl<B: Backend> LowerNet<B> {
    /// A freshly initialised lower network for inputs of width `input_dim`.
    pub fn new(cfg: &LowerNetConfig, input_dim: usize, seed: u64, device: &B::Device) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(crate::seeds::stream(seed, crate::seeds::LOWER_INIT));
        let conv = (cfg.conv_kernel > 0).then(|| {
            let mut conv = Conv1dConfig::new(1, 1, cfg.conv_kernel)
                .with_padding(PaddingConfig1d::Same)
                .with_bias(false)
                .init(device);
            let bound = 1.0 / (cfg.conv_kernel as f32).sqrt();
            conv.weight = Param::from_tensor(uniform_tensor([1, 1, cfg.conv_kernel], bound, &mut rng, device));
            conv
        });
        let dense1 = seeded_linear(input_dim, cfg.hidden, &mut rng, device);
        let pooled = cfg.hidden + 1 - cfg.pool;
        let dense2 = (cfg.output > 0).then(|| seeded_linear(pooled, cfg.output, &mut rng, device));
        Self { conv, dense1, dense2, activation: cfg.activation, pool: cfg.pool }
    }

    /// The same network with only the hidden units `keep` (indices into the first dense layer's outputs, in
    /// order): their columns of the first dense layer and their rows of the output layer. Only meaningful without
    /// pooling (pooling mixes neighbouring units); the caller checks.
    pub fn keep_units(mut self, keep: &[usize]) -> Self {
        let device = self.dense1.weight.device();
        let idx = Tensor::<B, 1, burn::tensor::Int>::from_data(
            TensorData::new(keep.iter().map(|&i| i as i64).collect::<Vec<_>>(), [keep.len()]),
            &device,
        );
        self.dense1.weight = Param::from_tensor(self.dense1.weight.val().select(1, idx.clone()));
        if let Some(bias) = self.dense1.bias.take() {
            self.dense1.bias = Some(Param::from_tensor(bias.val().select(0, idx.clone())));
        }
        if let Some(d2) = self.dense2.as_mut() {
            d2.weight = Param::from_tensor(d2.weight.val().select(0, idx));
        }
        self
    }

    /// The linear part before the activation (convolution, then the first dense layer):
    /// `[batch, input_dim] -> [batch, hidden]`. This is what the encrypted stage folds into one integer matrix.
    pub fn pre_activation(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let x = match &self.conv {
            Some(conv) => conv.forward(x.unsqueeze_dim::<3>(1)).squeeze_dim::<2>(1),
            None => x,
        };
        self.dense1.forward(x)
    }

    /// `[batch, input_dim] -> [batch, output_dim]`.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let h = pool_width(activate(self.pre_activation(x), self.activation), self.pool, false);
        match &self.dense2 {
            Some(d) => d.forward(h),
            None => h,
        }
    }
}

/// The seeded stream dropout masks are drawn from during training (the drop probability is the head's own).
pub struct DropoutRng<'a> {
    /// Seeded stream the masks are drawn from.
    pub rng: &'a mut ChaCha8Rng,
}

fn dropout<B: Backend>(x: Tensor<B, 2>, p: f64, drop: Option<&mut DropoutRng<'_>>) -> Tensor<B, 2> {
    let Some(d) = drop else { return x };
    if p <= 0.0 {
        return x;
    }
    let dims = x.dims();
    let keep = 1.0 - p;
    let mask: Vec<f32> = (0..dims[0] * dims[1])
        .map(|_| if d.rng.random::<f64>() < keep { (1.0 / keep) as f32 } else { 0.0 })
        .collect();
    let device = x.device();
    x * Tensor::from_data(TensorData::new(mask, dims), &device)
}

/// The client's head. The paper's MLP: dense(hidden) -> ReLU -> max-pool(pool, stride 1) -> dropout -> dense(1);
/// the linear probe (`head.kind = "linear"`): dense(1) alone. Both give one logit (sigmoid gives the probability of
/// the positive class).
#[derive(Module, Debug)]
pub struct Head<B: Backend> {
    /// Hidden dense layer (`None`: the linear head).
    pub dense1: Option<Linear<B>>,
    /// Output dense layer (one logit).
    pub dense2: Linear<B>,
    /// Max-pool window.
    pub pool: usize,
    /// Dropout probability (training only).
    pub dropout: f64,
}

impl<B: Backend> Head<B> {
    /// A freshly initialised head for inputs of width `input_dim`: for `kind = "mlp"` with a hidden layer of width
    /// `hidden`, for `kind = "linear"` one dense layer (`hidden` is ignored).
    pub fn new(cfg: &HeadConfig, input_dim: usize, hidden: usize, seed: u64, device: &B::Device) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(crate::seeds::stream(seed, crate::seeds::HEAD_INIT));
        match cfg.kind {
            HeadKind::Mlp => {
                let dense1 = seeded_linear(input_dim, hidden, &mut rng, device);
                let dense2 = seeded_linear(hidden + 1 - cfg.pool, 1, &mut rng, device);
                Self { dense1: Some(dense1), dense2, pool: cfg.pool, dropout: cfg.dropout }
            }
            HeadKind::Linear => Self::linear(input_dim, seed, device),
        }
    }

    /// A linear head (logistic regression) on `input_dim` inputs, seeded U(±1/sqrt(d)) initialisation.
    pub fn linear(input_dim: usize, seed: u64, device: &B::Device) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(crate::seeds::stream(seed, crate::seeds::HEAD_INIT));
        Self { dense1: None, dense2: seeded_linear(input_dim, 1, &mut rng, device), pool: 1, dropout: 0.0 }
    }

    /// A linear head with the given weights and bias (e.g. fitted by [`crate::linear`]).
    pub fn from_linear_weights(weights: &[f32], bias: f32, device: &B::Device) -> Self {
        let d = weights.len();
        let dense2 = Linear {
            weight: Param::from_tensor(Tensor::from_data(TensorData::new(weights.to_vec(), [d, 1]), device)),
            bias: Some(Param::from_tensor(Tensor::from_data(TensorData::new(vec![bias], [1]), device))),
        };
        Self { dense1: None, dense2, pool: 1, dropout: 0.0 }
    }

    /// The same head for inputs not multiplied by `scale`: a head trained on `x ∘ scale` (each column times its
    /// weight) becomes one on `x`, its first layer's row `j` multiplied by `scale[j]`. Exact up to rounding; `scale`
    /// of another width leaves it as it is.
    ///
    /// ```
    /// use cryptotl::model::{Cpu, Head};
    /// let head = Head::<Cpu>::from_linear_weights(&[2.0, -1.0], 0.5, &Default::default());
    /// let folded = head.clone().fold_input_scale(&[0.5, 0.0]);
    /// let x = ndarray::array![[4.0f32, 5.0]];
    /// let scaled = ndarray::array![[2.0f32, 0.0]];
    /// let p = |h: &Head<Cpu>, x: &ndarray::Array2<f32>| cryptotl::model::predict_proba(h, x.view(), &Default::default());
    /// assert!((p(&folded, &x)[0] - p(&head, &scaled)[0]).abs() < 1e-6);
    /// ```
    pub fn fold_input_scale(mut self, scale: &[f32]) -> Self {
        let first = self.first_layer_mut();
        let w = first.weight.val();
        let [d_in, _] = w.dims();
        if scale.len() != d_in || scale.iter().all(|&v| v == 1.0) {
            return self;
        }
        let s = Tensor::<B, 2>::from_data(TensorData::new(scale.to_vec(), [d_in, 1]), &w.device());
        first.weight = Param::from_tensor(w * s);
        self
    }

    /// The same head for inputs not shifted by `shift`: a head trained on `x - shift` becomes one on `x`, its
    /// first layer's bias lowered by `shift`·W. Exact up to rounding; `shift` of another width leaves it as it is.
    ///
    /// ```
    /// use cryptotl::model::{Cpu, Head};
    /// let head = Head::<Cpu>::from_linear_weights(&[2.0, -1.0], 0.5, &Default::default());
    /// let folded = head.clone().fold_input_shift(&[1.0, 3.0]);
    /// let x = ndarray::array![[4.0f32, 5.0]];
    /// let shifted = ndarray::array![[3.0f32, 2.0]];
    /// let p = |h: &Head<Cpu>, x: &ndarray::Array2<f32>| cryptotl::model::predict_proba(h, x.view(), &Default::default());
    /// assert!((p(&folded, &x)[0] - p(&head, &shifted)[0]).abs() < 1e-6);
    /// ```
    pub fn fold_input_shift(mut self, shift: &[f32]) -> Self {
        let first = self.first_layer_mut();
        let w = first.weight.val();
        let [d_in, d_out] = w.dims();
        if shift.len() != d_in || shift.iter().all(|&v| v == 0.0) {
            return self;
        }
        let device = w.device();
        let s = Tensor::<B, 2>::from_data(TensorData::new(shift.to_vec(), [1, d_in]), &device);
        let delta = s.matmul(w).reshape([d_out]);
        let bias = first.bias.as_ref().map_or_else(|| Tensor::zeros([d_out], &device), |b| b.val());
        first.bias = Some(Param::from_tensor(bias - delta));
        self
    }

    /// The layer that reads the inputs: the hidden layer of the MLP head, the only one of the linear head.
    fn first_layer_mut(&mut self) -> &mut Linear<B> {
        match &mut self.dense1 {
            Some(d1) => d1,
            None => &mut self.dense2,
        }
    }

    /// Whether this is the linear head.
    pub fn is_linear(&self) -> bool {
        self.dense1.is_none()
    }

    /// `[batch, input_dim] -> [batch, 1]` logits. Dropout applies only when `drop` is given (training).
    pub fn logits(&self, x: Tensor<B, 2>, drop: Option<&mut DropoutRng<'_>>) -> Tensor<B, 2> {
        match &self.dense1 {
            Some(d1) => self.dense2.forward(self.hidden_activations(d1.forward(x), drop)),
            None => self.dense2.forward(x),
        }
    }

    /// What the output layer of the MLP head sees, from the first layer's pre-activation: ReLU -> max-pool ->
    /// dropout.
    pub fn hidden_activations(&self, z1: Tensor<B, 2>, drop: Option<&mut DropoutRng<'_>>) -> Tensor<B, 2> {
        dropout(pool_width(burn::tensor::activation::relu(z1), self.pool, true), self.dropout, drop)
    }
}

/// The lower network with its pretraining output layer (dropped for transfer): one logit, or one per source task
/// (`[source] output_per_path`).
///
/// With `T > 1` outputs its input rows carry the task too: the features, then `T` one-hot columns naming the
/// task whose output is the example's logit ([`PretrainNet::logits`]). So the trainers, DP-SGD's per-example
/// gradients included, see one logit per example either way.
#[derive(Module, Debug)]
pub struct PretrainNet<B: Backend> {
    /// The part that is frozen and shared.
    pub lower: LowerNet<B>,
    /// Pretraining output layer: `[lower outputs, T]`.
    pub out: Linear<B>,
}

impl<B: Backend> PretrainNet<B> {
    /// Fresh network with `outputs` logits (1: one shared source task).
    pub fn new(cfg: &LowerNetConfig, input_dim: usize, outputs: usize, seed: u64, device: &B::Device) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(crate::seeds::stream(seed, crate::seeds::PRETRAIN_OUTPUT_INIT));
        Self { lower: LowerNet::new(cfg, input_dim, seed, device), out: seeded_linear(cfg.output_dim(), outputs.max(1), &mut rng, device) }
    }

    /// The number of source tasks (logits of the output layer).
    pub fn outputs(&self) -> usize {
        self.out.weight.dims()[1]
    }
}

/// Lower network and head trained together from scratch (the target-only baseline).
#[derive(Module, Debug)]
pub struct FullNet<B: Backend> {
    /// Lower part (trainable here).
    pub lower: LowerNet<B>,
    /// Head.
    pub head: Head<B>,
}

/// A network that maps `[batch, features]` to `[batch, 1]` logits; what the trainer trains.
pub trait BinaryClassifier<B: Backend> {
    /// Logits; dropout only when `drop` is given.
    fn logits(&self, x: Tensor<B, 2>, drop: Option<&mut DropoutRng<'_>>) -> Tensor<B, 2>;
}

impl<B: Backend> BinaryClassifier<B> for Head<B> {
    fn logits(&self, x: Tensor<B, 2>, drop: Option<&mut DropoutRng<'_>>) -> Tensor<B, 2> {
        Head::logits(self, x, drop)
    }
}
impl<B: Backend> BinaryClassifier<B> for PretrainNet<B> {
    /// One output: `x` is `[batch, features]`. `T > 1` outputs: `x` is `[batch, features + T]`, the last `T`
    /// columns one-hot, and the logit is the named task's output.
    fn logits(&self, x: Tensor<B, 2>, _drop: Option<&mut DropoutRng<'_>>) -> Tensor<B, 2> {
        let tasks = self.outputs();
        if tasks == 1 {
            return self.out.forward(self.lower.forward(x));
        }
        let [rows, cols] = x.dims();
        let features = x.clone().slice([0..rows, 0..cols - tasks]);
        let one_hot = x.slice([0..rows, cols - tasks..cols]);
        (self.out.forward(self.lower.forward(features)) * one_hot).sum_dim(1)
    }
}
impl<B: Backend> BinaryClassifier<B> for FullNet<B> {
    fn logits(&self, x: Tensor<B, 2>, drop: Option<&mut DropoutRng<'_>>) -> Tensor<B, 2> {
        self.head.logits(self.lower.forward(x), drop)
    }
}

/// Numerically stable binary cross-entropy on logits, per example: `max(z,0) - z*y + ln(1 + e^-|z|)`.
pub fn bce_with_logits<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 2>) -> Tensor<B, 2> {
    logits.clone().clamp_min(0.0) - logits.clone() * targets + logits.abs().neg().exp().add_scalar(1.0).log()
}

/// Rows of an `ndarray` matrix as a Burn tensor.
pub fn to_tensor<B: Backend>(x: ndarray::ArrayView2<f32>, device: &B::Device) -> Tensor<B, 2> {
    let (r, c) = x.dim();
    let v: Vec<f32> = x.iter().copied().collect();
    Tensor::from_data(TensorData::new(v, [r, c]), device)
}

/// A Burn tensor as an `ndarray` matrix.
pub fn to_array<B: Backend>(t: Tensor<B, 2>) -> ndarray::Array2<f32> {
    let [r, c] = t.dims();
    let v = t.into_data().to_vec::<f32>().expect("float tensor");
    ndarray::Array2::from_shape_vec((r, c), v).expect("shape matches")
}

/// Apply a `[batch, in] -> [batch, out]` function over rows in chunks of 512 (bounded memory).
pub fn map_rows<B: Backend>(x: ndarray::ArrayView2<f32>, device: &B::Device, f: impl Fn(Tensor<B, 2>) -> Tensor<B, 2>) -> ndarray::Array2<f32> {
    let mut parts = Vec::new();
    for chunk in x.axis_chunks_iter(ndarray::Axis(0), 512) {
        parts.push(to_array(f(to_tensor::<B>(chunk, device))));
    }
    let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
    ndarray::concatenate(ndarray::Axis(0), &views).expect("same widths")
}

/// Positive-class probabilities of a classifier for each row.
pub fn predict_proba<B: Backend, M: BinaryClassifier<B>>(model: &M, x: ndarray::ArrayView2<f32>, device: &B::Device) -> Vec<f32> {
    if x.nrows() == 0 {
        return vec![];
    }
    map_rows::<B>(x, device, |t| burn::tensor::activation::sigmoid(model.logits(t, None))).into_raw_vec_and_offset().0
}

/// The SHA-256 (hex) of a module's float parameters: every value, little-endian f32, in the order Burn visits them.
/// Two modules of one architecture have the same digest exactly when their weights are the same bits.
///
/// ```
/// use cryptotl::config::LowerNetConfig;
/// use cryptotl::model::{Cpu, LowerNet, weights_sha256};
/// let cfg = LowerNetConfig { conv_kernel: 0, hidden: 4, pool: 1, output: 0, ..Default::default() };
/// let device = Default::default();
/// let (a, b) = (LowerNet::<Cpu>::new(&cfg, 8, 1, &device), LowerNet::<Cpu>::new(&cfg, 8, 2, &device));
/// assert_eq!(weights_sha256(&a), weights_sha256(&a.clone()));
/// assert_ne!(weights_sha256(&a), weights_sha256(&b));
/// ```
pub fn weights_sha256<B: Backend, M: Module<B>>(module: &M) -> String {
    struct Weights(Vec<u8>);
    impl<B: Backend> ModuleVisitor<B> for Weights {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let values = param.val().into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default();
            self.0.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        }
    }
    let mut weights = Weights(Vec::new());
    module.visit(&mut weights);
    cryptotl_server::artifact::sha256_hex(&weights.0)
}

fn recorder() -> BinFileRecorder<FullPrecisionSettings> {
    BinFileRecorder::<FullPrecisionSettings>::new()
}

/// Save a module with Burn's binary record format to `<path>.bin`, atomically: Burn writes a uniquely named
/// temporary file beside it, which is synced and renamed over the target, so a reader, or a run killed while it
/// saves, sees the old file or the new one, never a torn one. The bytes are exactly Burn's [`BinFileRecorder`]'s.
pub fn save_module<B: Backend, M: Module<B>>(module: &M, path: &Path) -> Result<()> {
    save_module_replacing(module, path, false)
}

/// [`save_module`], owner-only (0600): the server's cached network.
pub fn save_module_private<B: Backend, M: Module<B>>(module: &M, path: &Path) -> Result<()> {
    save_module_replacing(module, path, true)
}

fn save_module_replacing<B: Backend, M: Module<B>>(module: &M, path: &Path, private: bool) -> Result<()> {
    static SAVES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let done = path.with_extension("bin");
    let stem = path.file_stem().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let unique = SAVES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // Burn sets the extension `.bin` on what it is given.
    let partial = path.with_file_name(format!(".{stem}-partial-{}-{unique}", std::process::id()));
    let written = partial.with_extension("bin");
    let result = (|| {
        module.clone().save_file(partial, &recorder()).map_err(|e| Error::artifact(&done, format!("cannot save: {e}")))?;
        std::fs::File::open(&written).and_then(|f| f.sync_all()).map_err(|e| Error::io(&written, e))?;
        if private {
            crate::atomic::make_private(&written)?;
        }
        std::fs::rename(&written, &done).map_err(|e| Error::io(&done, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&written);
    }
    result
}

/// Load a module saved by [`save_module`] into a skeleton of the same architecture.
///
/// A missing file and an unreadable one are different errors, each naming `<path>.bin`. Burn's own message for an
/// unreadable record (which suggests loading it with an older Burn) goes to the debug log, not to the user: a
/// record this program cannot read is truncated, corrupt, or was saved for another architecture.
pub fn load_module<B: Backend, M: Module<B>>(skeleton: M, path: &Path, device: &B::Device) -> Result<M> {
    let file = path.with_extension("bin");
    if !file.is_file() {
        return Err(Error::artifact(&file, "cannot load: not found (the command that writes it has not run for this directory)"));
    }
    let expected = parameter_shapes(&skeleton);
    let loaded = skeleton.load_file(path.to_path_buf(), &recorder(), device).map_err(|e| {
        tracing::debug!(path = %file.display(), error = %e, "burn could not read the record");
        let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        Error::artifact(&file, format!("cannot load: truncated or corrupt ({size} bytes), or saved for another architecture than this config's; write it again"))
    })?;
    // Burn loads a record of the same structure whatever its tensors' shapes: a head saved for 30 inputs loads into
    // a skeleton of 20 and fails later, inside a matrix product. Refuse it here, naming both shapes.
    let found = parameter_shapes(&loaded);
    if let Some((want, got)) = expected.iter().zip(&found).find(|(w, g)| w != g) {
        return Err(Error::artifact(&file, format!("cannot load: saved for another architecture than this config's (a parameter of shape {:?} where this config has {:?}); write it again", got.as_slice(), want.as_slice())));
    }
    Ok(loaded)
}

/// The shapes of a module's parameters, in the order Burn visits them, without initialising lazy ones.
fn parameter_shapes<B: Backend, M: Module<B>>(module: &M) -> Vec<burn::tensor::Shape> {
    struct Shapes(Vec<burn::tensor::Shape>);
    impl<B: Backend> ModuleVisitor<B> for Shapes {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0.push(param.lazy_shape());
        }
        fn visit_int<const D: usize>(&mut self, param: &Param<Tensor<B, D, Int>>) {
            self.0.push(param.lazy_shape());
        }
        fn visit_bool<const D: usize>(&mut self, param: &Param<Tensor<B, D, Bool>>) {
            self.0.push(param.lazy_shape());
        }
    }
    let mut shapes = Shapes(Vec::new());
    module.visit(&mut shapes);
    shapes.0
}
