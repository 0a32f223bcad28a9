//! Compile the server's frozen lower network into an [`IntegerProgram`]: fold the linear part, quantize the
//! weights per neuron, calibrate each neuron's range on source data, tabulate the activation.
//!
//! For neuron j with float pre-activation `z_j = b_j + sum_i M_ij x_i` (convolution and first dense layer folded
//! into one matrix M, inputs x in [0, 1]):
//! 1. calibrate `[lo_j, hi_j]`: min/max of `z_j` over the calibration (source) features, or (`input_box`) the exact
//!    range over every input in `[0, 1]^d`; widened by the margin on each side (which also keeps noise from pushing
//!    an extreme accumulator across the wrap-around);
//! 2. map that range onto the accumulator's index centres: `u_j = (hi_j - lo_j) / (2^B - 2^(B-p))` per unit, so
//!    `acc_j = (z_j - lo_j) / u_j`, i.e. integer weights `w_ji = round(M_ij s_x / u_j)` with `s_x = 1/(2^b_in - 1)`
//!    and bias `round((b_j - lo_j) / u_j)`;
//! 3. tabulate `act(lo_j + r 2^(B-p) u_j)` at every index r, in output levels of a unit v shared by all neurons
//!    (pooling adds neighbours, so they must agree on the unit), *centred*: neuron j's table holds its levels minus
//!    `o_j = round(c_j / v)`, `c_j` the mean of its first and last value, and the client adds the offsets back. So a
//!    lookup that wraps around (an accumulator past either end of its range) reads about the end's value instead
//!    of its negation (`cryptotl_server::program`). The unit is `v = max |act - c_j| / (2^output_bits - 1/2)`: half
//!    a ReLU table's span instead of all of it, which also halves the rounding of every output.

use cryptotl_server::{HeError, IntegerProgram};
use ndarray::{Array1, Array2, ArrayView2, Axis};

use crate::config::{Calibration, HeConfig};
use crate::error::{Error, Result};
use crate::model::{Cpu, LowerNet, activate_scalar, to_array, to_tensor};

/// The float affine map of the lower network's linear part: `z = x M + b`.
pub struct AffineStage {
    /// `[input_dim, hidden]`.
    pub matrix: Array2<f32>,
    /// `[hidden]`.
    pub bias: Array1<f32>,
}

/// Fold the convolution and first dense layer into one matrix, by evaluating them on the zero vector and the
/// unit vectors (exact: the map is affine).
pub fn fold_linear(lower: &LowerNet<Cpu>, input_dim: usize) -> AffineStage {
    let device = Default::default();
    let pre = |x: Array2<f32>| to_array(lower.pre_activation(to_tensor::<Cpu>(x.view(), &device)));
    let bias = pre(Array2::zeros((1, input_dim))).row(0).to_owned();
    let mut matrix = pre(Array2::eye(input_dim));
    matrix -= &bias;
    AffineStage { matrix, bias }
}

/// Compile `lower` into an integer program, calibrated on `calibration` (scaled features, rows = samples).
///
/// ```
/// use cryptotl::config::{HeConfig, LowerNetConfig};
/// use cryptotl::he::quant::{clear_forward, compile};
/// use cryptotl::model::{Cpu, LowerNet};
/// let cfg = LowerNetConfig { hidden: 8, ..LowerNetConfig::default() };
/// let lower = LowerNet::<Cpu>::new(&cfg, 16, 0, &Default::default());
/// let x = ndarray::Array2::from_shape_fn((20, 16), |(i, j)| ((i + j) % 5) as f32 / 4.0);
/// let program = compile(&lower, x.view(), &HeConfig::default()).unwrap();
/// assert_eq!((program.neurons, program.outputs()), (8, 8));
/// let (y, wraps) = clear_forward(&program, x.view()).unwrap();
/// assert_eq!((y.dim(), wraps), ((20, 8), 0));
/// ```
pub fn compile(lower: &LowerNet<Cpu>, calibration: ArrayView2<f32>, he: &HeConfig) -> Result<IntegerProgram> {
    let ranges = pre_activation_ranges(lower, calibration)?;
    compile_with_ranges(lower, calibration.ncols(), &ranges, he)
}

/// Each neuron's range `(min, max)` of the float pre-activation over the calibration rows (scaled features): the
/// summary of the server's source data that [`compile_with_ranges`] needs, so a shipped or cached network compiles
/// without its source data.
///
/// ```
/// use cryptotl::config::LowerNetConfig;
/// use cryptotl::he::quant::pre_activation_ranges;
/// use cryptotl::model::{Cpu, LowerNet};
/// let lower = LowerNet::<Cpu>::new(&LowerNetConfig { hidden: 4, ..LowerNetConfig::default() }, 6, 0, &Default::default());
/// let x = ndarray::Array2::from_shape_fn((10, 6), |(i, j)| ((i * j) % 3) as f32 / 2.0);
/// let ranges = pre_activation_ranges(&lower, x.view()).unwrap();
/// assert!(ranges.len() == 4 && ranges.iter().all(|(lo, hi)| lo <= hi));
/// ```
pub fn pre_activation_ranges(lower: &LowerNet<Cpu>, calibration: ArrayView2<f32>) -> Result<Vec<(f32, f32)>> {
    crate::features::check_finite(calibration)?;
    if calibration.nrows() == 0 {
        return Err(Error::Features("no calibration samples".into()));
    }
    let AffineStage { matrix, bias } = fold_linear(lower, calibration.ncols());
    let z = calibration.dot(&matrix) + &bias;
    Ok(z.axis_iter(Axis(1)).map(|c| c.fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)))).collect())
}

/// Compile `lower` (inputs `input_dim` wide) into an integer program from the per-neuron source ranges of
/// [`pre_activation_ranges`] (ignored with `he.calibration = "input_box"`).
pub fn compile_with_ranges(lower: &LowerNet<Cpu>, input_dim: usize, source_ranges: &[(f32, f32)], he: &HeConfig) -> Result<IntegerProgram> {
    if lower.dense2.is_some() {
        return Err(Error::config_key("lower.output", "the encrypted network ends at the pooled activation; this lower network has an output dense layer (set lower.output = 0)"));
    }
    let d = input_dim;
    let AffineStage { matrix, bias } = fold_linear(lower, d);
    let hidden = bias.len();
    if he.calibration == Calibration::Source && source_ranges.len() != hidden {
        return Err(Error::He(HeError::Program(format!("calibration ranges for {} neurons, the network has {hidden}", source_ranges.len()))));
    }
    if source_ranges.iter().any(|(lo, hi)| !(lo.is_finite() && hi.is_finite() && lo <= hi)) {
        return Err(Error::He(HeError::Program("calibration ranges must be finite with min <= max".into())));
    }
    let (b, p) = (he.accumulator_bits, he.lookup_bits);
    let bin = (1u64 << (b - p)) as f64;
    let centres_span = (1u64 << b) as f64 - bin;
    let s_x = 1.0 / (((1u32 << he.input_bits) - 1) as f64);
    let mut ranges = Vec::with_capacity(hidden);
    for j in 0..hidden {
        let (lo, hi) = match he.calibration {
            Calibration::Source => source_ranges[j],
            Calibration::InputBox => {
                let m = matrix.index_axis(Axis(1), j);
                (bias[j] + m.iter().map(|&w| w.min(0.0)).sum::<f32>(), bias[j] + m.iter().map(|&w| w.max(0.0)).sum::<f32>())
            }
        };
        // The margin is kept even where the calibrated range touches the bound over the whole input box (e.g.
        // z at x = 0): an accumulator sitting exactly on the first or last index would wrap around under noise.
        let widen = he.calibration_margin * (hi - lo);
        let (mut lo, mut hi) = ((lo - widen) as f64, (hi + widen) as f64);
        if hi - lo < 1e-6 {
            (lo, hi) = (lo - 1e-3, hi + 1e-3);
        }
        ranges.push((lo, hi));
    }
    let act = lower.activation;
    let at = |j: usize, r: usize| -> f64 {
        let (lo, hi) = ranges[j];
        activate_scalar((lo + r as f64 * bin * (hi - lo) / centres_span) as f32, act) as f64
    };
    let levels = (1i64 << he.output_bits) - 1;
    let top = (1usize << p) - 1;
    let centres: Vec<f64> = (0..hidden).map(|j| (at(j, 0) + at(j, top)) / 2.0).collect();
    let max_abs = (0..hidden).flat_map(|j| (0..=top).map(move |r| (j, r))).map(|(j, r)| (at(j, r) - centres[j]).abs()).fold(0.0, f64::max);
    // `levels - 1/2`: with the offset rounded to a level, every centred entry still rounds within ±levels.
    let unit = if max_abs > 0.0 { max_abs / (levels as f64 - 0.5) } else { 1.0 };
    let table_offsets: Vec<i64> = centres.iter().map(|c| (c / unit).round() as i64).collect();
    let mut weights = Vec::with_capacity(hidden * d);
    let mut biases = Vec::with_capacity(hidden);
    let mut tables = Vec::with_capacity(hidden);
    for (j, &(lo, hi)) in ranges.iter().enumerate() {
        let u = (hi - lo) / centres_span;
        for i in 0..d {
            let w = (matrix[[i, j]] as f64 * s_x / u).round();
            weights.push(w.clamp(i32::MIN as f64, i32::MAX as f64) as i32);
        }
        biases.push(((bias[j] as f64 - lo) / u).round() as i64);
        let offset = table_offsets[j] as f64;
        tables.push((0..=top).map(|r| ((at(j, r) / unit).round() - offset).clamp(-levels as f64, levels as f64) as i32).collect());
    }
    let program = IntegerProgram {
        input_dim: d,
        input_bits: he.input_bits,
        accumulator_bits: b,
        lookup_bits: p,
        output_bits: he.output_bits,
        neurons: hidden,
        weights,
        biases,
        tables,
        pool: lower.pool,
        output_unit: unit as f32,
        table_offsets,
    };
    program.validate(he.params()?)?;
    Ok(program)
}

/// Statistics of a compiled program worth reporting.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ProgramStats {
    /// Largest |weight|.
    pub max_abs_weight: i64,
    /// Largest L2 norm of a neuron's weight row (scales the linear stage's noise).
    pub max_row_norm: f64,
    /// Fraction of zero weights.
    pub zero_weight_fraction: f64,
}

impl ProgramStats {
    /// Statistics of `program`.
    pub fn of(program: &IntegerProgram) -> Self {
        let max_abs_weight = program.weights.iter().map(|&w| (w as i64).abs()).max().unwrap_or(0);
        let max_row_norm = (0..program.neurons)
            .map(|j| program.row(j).iter().map(|&w| (w as f64).powi(2)).sum::<f64>().sqrt())
            .fold(0.0, f64::max);
        let zeros = program.weights.iter().filter(|&&w| w == 0).count();
        Self { max_abs_weight, max_row_norm, zero_weight_fraction: zeros as f64 / program.weights.len().max(1) as f64 }
    }
}

/// The clear-integer path over many samples: quantize, evaluate with the oracle, dequantize. Also returns the
/// number of accumulators that fell outside the calibrated range (their lookups wrap around).
pub fn clear_forward(program: &IntegerProgram, x: ArrayView2<f32>) -> Result<(Array2<f32>, usize)> {
    crate::features::check_finite(x)?;
    let iface = program.interface();
    let mut out = Array2::zeros((x.nrows(), iface.outputs));
    let mut wraps = 0;
    for (mut row, xr) in out.axis_iter_mut(Axis(0)).zip(x.axis_iter(Axis(0))) {
        let q = iface.quantize(xr.as_slice().expect("standard layout").as_ref());
        let accs = program.accumulators(&q);
        wraps += accs.iter().filter(|&&a| program.wraps(a)).count();
        row.assign(&Array1::from(iface.dequantize(&program.evaluate_clear(&q))));
    }
    Ok((out, wraps))
}
