//! The integer program the server evaluates, and its clear-integer evaluator (the oracle for the encrypted one).
//!
//! One program is one *stage*: a folded linear map with small signed integer weights, one lookup table per neuron,
//! then a sum-pool over `pool` neighbouring neurons. On the torus Z/2^64:
//!
//! - input level `q_i` in `[0, 2^input_bits)` is encoded as `q_i * 2^(63 - accumulator_bits)`;
//! - the accumulator of neuron j is `acc_j = bias_j + sum_i w_ji q_i`, read modulo `2^(accumulator_bits + 1)`
//!   (the top torus bit is the padding bit);
//! - the bootstrap reads the top `lookup_bits` of it with rounding: `r = round(acc_j / 2^(B - p))` taken modulo
//!   `2^(p+1)`; for `r < 2^p` it returns `table_j[r]`, for `r >= 2^p` (an accumulator that overflowed into the
//!   padding half) it returns `-table_j[r - 2^p]` (the negacyclic wrap-around of a bootstrap);
//! - outputs are `sum_{t < pool} lookup_{k+t}`, encoded with `2^output_delta_log2`;
//! - the client decodes output k as `(level_k + output_offsets_k) * output_scale`: each table is stored *centred*,
//!   its value minus a per-neuron offset ([`IntegerProgram::table_offsets`]), and the offsets of a pooling window
//!   are added back after decryption.
//!
//! Why centred: a bootstrap reads an accumulator that overflowed its range as the negacyclic copy `-table[r - 2^p]`.
//! With `offset = (table[0] + table[top]) / 2` that copy, decoded, is `table[0] + table[top] - table[r - 2^p]`: an
//! accumulator one bin past the top reads `table[top]` and one bin below the bottom reads `table[0]`, the saturated
//! values, and further misses reflect back into the table's range. An uncentred table would return `-table[0]` and
//! `-table[top]` there (for a ReLU: 0 where the top value was due, and minus the top value where 0 was).
//!
//! [`IntegerProgram::evaluate_clear`] does exactly this in plain integers: same rounding, same wrap-around. The
//! encrypted evaluation equals it except where noise moves an accumulator across a rounding boundary (a lookup one
//! level off), at a rate the tests measure and bound.

use serde::{Deserialize, Serialize};

use crate::error::{HeError, Result};
use crate::params::ParameterSet;

/// Largest number of output bits (plus pooling bits) whose encoding stays far above the bootstrap's output noise
/// (~2^49 of 2^64): 63 - 9 = 54 bits of headroom, 5 above the noise.
pub const MAX_OUTPUT_PLUS_POOL_BITS: u32 = 9;

/// Bits kept below an output's least significant level when the server switches its outputs to a smaller modulus
/// for the download ([`ProgramInterface::download_log_modulus`]). The switch rounds every word of a ciphertext, and
/// over the binary key's ones (about kN/2 of them) that adds noise of standard deviation about sqrt(kN / 24) units
/// of the new modulus: 9.2 for kN = 2048, which is 2^-5.8 of a level whatever the output width (a level is 2^9 units).
/// At the widest output encoding the bootstrap's own noise (2^-4.3 of a level) stays the larger part; `tests/he.rs`
/// measures both.
pub const DOWNLOAD_NOISE_BITS: u32 = 9;

/// The bit widths of a program and its pooling window: what a parameter set must accommodate. One check serves
/// the compiled program ([`IntegerProgram::validate`]) and a client's configuration before anything is compiled.
///
/// ```
/// use cryptotl_server::{ParameterSet, program::BitWidths};
/// let w = BitWidths { input_bits: 4, accumulator_bits: 12, lookup_bits: 4, output_bits: 7, pool: 1 };
/// assert!(w.check(ParameterSet::default()).is_ok());
/// let err = BitWidths { lookup_bits: 12, ..w }.check(ParameterSet::default()).unwrap_err();
/// assert_eq!(err.field, "lookup_bits");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BitWidths {
    /// Bits per input level.
    pub input_bits: u32,
    /// Accumulator bits B.
    pub accumulator_bits: u32,
    /// Lookup-table index bits p.
    pub lookup_bits: u32,
    /// Bits of the output levels.
    pub output_bits: u32,
    /// Sum-pool window (stride 1); 1 = none. Its bits add to the output's.
    pub pool: usize,
}

/// Which width [`BitWidths::check`] refused (the field's name) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BitWidthError {
    /// `input_bits`, `accumulator_bits`, `lookup_bits` or `output_bits`.
    pub field: &'static str,
    /// What the allowed range is and what was given.
    pub message: String,
}

impl std::fmt::Display for BitWidthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.field, self.message)
    }
}

impl BitWidths {
    /// Every width in the range the parameter set and the output noise allow.
    pub fn check(&self, params: ParameterSet) -> std::result::Result<(), BitWidthError> {
        let fail = |field, message| Err(BitWidthError { field, message });
        let (b, p) = (self.accumulator_bits, self.lookup_bits);
        if !(1..=16).contains(&self.input_bits) {
            return fail("input_bits", format!("must be in 1..=16, got {}", self.input_bits));
        }
        if p == 0 || p > params.max_lookup_bits() {
            return fail("lookup_bits", format!("must be in 1..={} for {}, got {p}", params.max_lookup_bits(), params.name()));
        }
        if b <= p || b > 40 {
            return fail("accumulator_bits", format!("must be in {}..=40 (above lookup_bits), got {b}", p + 1));
        }
        let pool_bits = pool_bits(self.pool);
        let max_out = MAX_OUTPUT_PLUS_POOL_BITS.saturating_sub(pool_bits);
        if self.output_bits == 0 || self.output_bits > max_out {
            return fail("output_bits", format!(
                "must be in 1..={max_out} with a pool of {} (output_bits + ceil(log2 pool) <= {MAX_OUTPUT_PLUS_POOL_BITS}: the bootstrap's output noise), got {}",
                self.pool, self.output_bits));
        }
        Ok(())
    }
}

/// ceil(log2(pool)): the bits a sum over `pool` outputs may add.
fn pool_bits(pool: usize) -> u32 {
    (pool.max(1) as u64).next_power_of_two().trailing_zeros()
}

/// What the client needs to know about a program to encode inputs and decode outputs (no weights, no tables).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProgramInterface {
    /// Number of input features.
    pub input_dim: usize,
    /// Bits per input level: features in [0, 1] are quantized to `round(x * (2^input_bits - 1))`.
    pub input_bits: u32,
    /// Accumulator bits B (inputs are encoded with 2^(63 - B)).
    pub accumulator_bits: u32,
    /// Number of outputs.
    pub outputs: usize,
    /// Outputs are encoded as `level * 2^output_delta_log2`.
    pub output_delta_log2: u32,
    /// Float value of one output level, divided by the pool size (the client's dequantization).
    pub output_scale: f32,
    /// Levels added to each output before it is scaled: the pooled [`IntegerProgram::table_offsets`]. Empty (as
    /// interface format 1 sent it, before tables were centred): every offset is 0.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_offsets: Vec<i64>,
}

impl ProgramInterface {
    /// Check the interface can be used to encode and decode (it comes from the server: not trusted blindly).
    ///
    /// ```
    /// use cryptotl_server::ProgramInterface;
    /// let iface = ProgramInterface { input_dim: 3, input_bits: 4, accumulator_bits: 12, outputs: 1,
    ///     output_delta_log2: 54, output_scale: 0.5, output_offsets: vec![] };
    /// assert!(iface.validate().is_ok());
    /// assert!(ProgramInterface { output_scale: f32::NAN, ..iface.clone() }.validate().is_err());
    /// assert!(ProgramInterface { output_offsets: vec![3], ..iface.clone() }.validate().is_ok());
    /// assert!(ProgramInterface { output_offsets: vec![3, 4], ..iface }.validate().is_err()); // one output
    /// ```
    pub fn validate(&self) -> Result<()> {
        let ok = (1..=16).contains(&self.input_bits)
            && (2..=40).contains(&self.accumulator_bits)
            && (33..=62).contains(&self.output_delta_log2)
            && self.input_dim > 0
            && self.outputs > 0
            && self.output_scale.is_finite()
            && (self.output_offsets.is_empty() || self.output_offsets.len() == self.outputs)
            && self.output_offsets.iter().all(|o| o.unsigned_abs() < 1 << 40);
        if !ok {
            return Err(HeError::Program(format!("unusable program interface {self:?}")));
        }
        Ok(())
    }

    /// log2 of the modulus the server switches each output to before sending it: the output encoding's bits
    /// (padding, pool and output bits) plus [`DOWNLOAD_NOISE_BITS`], at most 32. The download is this many bits per
    /// ciphertext word instead of 64.
    ///
    /// ```
    /// use cryptotl_server::ProgramInterface;
    /// let iface = ProgramInterface { input_dim: 3, input_bits: 4, accumulator_bits: 12, outputs: 1,
    ///     output_delta_log2: 56, output_scale: 0.5, output_offsets: vec![] };
    /// assert_eq!(iface.download_log_modulus(), 64 - 56 + 9); // 7 output bits and the padding bit, 9 below
    /// assert_eq!(ProgramInterface { output_delta_log2: 40, ..iface }.download_log_modulus(), 32);
    /// ```
    pub fn download_log_modulus(&self) -> u32 {
        (64 - self.output_delta_log2.min(63) + DOWNLOAD_NOISE_BITS).min(32)
    }

    /// Quantize one feature vector in [0, 1] (values outside are clipped) to input levels.
    ///
    /// ```
    /// use cryptotl_server::ProgramInterface;
    /// let iface = ProgramInterface { input_dim: 3, input_bits: 4, accumulator_bits: 12, outputs: 1,
    ///     output_delta_log2: 54, output_scale: 0.5, output_offsets: vec![] };
    /// assert_eq!(iface.quantize(&[0.0, 0.5, 2.0]), vec![0, 8, 15]);
    /// assert_eq!(iface.dequantize(&[3, -2]), vec![1.5, -1.0]);
    /// ```
    pub fn quantize(&self, x: &[f32]) -> Vec<u16> {
        let top = ((1u32 << self.input_bits) - 1) as f32;
        x.iter().map(|&v| (v.clamp(0.0, 1.0) * top).round() as u16).collect()
    }

    /// Output levels (as decrypted) to floats: `(level + offset) * output_scale`.
    ///
    /// ```
    /// use cryptotl_server::ProgramInterface;
    /// let iface = ProgramInterface { input_dim: 3, input_bits: 4, accumulator_bits: 12, outputs: 2,
    ///     output_delta_log2: 54, output_scale: 0.5, output_offsets: vec![] };
    /// assert_eq!(iface.dequantize(&[4, -2]), vec![2.0, -1.0]);
    /// let centred = ProgramInterface { output_offsets: vec![10, 0], ..iface };
    /// assert_eq!(centred.dequantize(&[4, -2]), vec![7.0, -1.0]);
    /// ```
    pub fn dequantize(&self, levels: &[i64]) -> Vec<f32> {
        levels.iter().enumerate().map(|(k, &l)| (l + self.output_offsets.get(k).copied().unwrap_or(0)) as f32 * self.output_scale).collect()
    }
}

/// A quantized stage of the server's network (see the module docs for its exact semantics).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IntegerProgram {
    /// Number of input features d.
    pub input_dim: usize,
    /// Bits per input level.
    pub input_bits: u32,
    /// Accumulator bits B.
    pub accumulator_bits: u32,
    /// Lookup-table index bits p.
    pub lookup_bits: u32,
    /// Bits of the output levels (tables hold values in (-2^output_bits, 2^output_bits)).
    pub output_bits: u32,
    /// Neurons H.
    pub neurons: usize,
    /// Weights, neuron-major: `weights[j * input_dim + i]`.
    pub weights: Vec<i32>,
    /// Biases in accumulator units (the calibration offset included).
    pub biases: Vec<i64>,
    /// One table of 2^p output levels per neuron.
    pub tables: Vec<Vec<i32>>,
    /// Sum-pool window (stride 1); 1 = none.
    pub pool: usize,
    /// Float value of one output level (before dividing by the pool size).
    pub output_unit: f32,
    /// Per neuron, the level its table was shifted by (stored `table[r] = value[r] - offset`): the client adds the
    /// pooled offsets back ([`ProgramInterface::output_offsets`]). See the module docs for why tables are centred.
    /// Empty: every offset is 0 (programs compiled before 2026-12-06).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub table_offsets: Vec<i64>,
}

impl IntegerProgram {
    /// Number of outputs after pooling.
    ///
    /// ```
    /// use cryptotl_server::IntegerProgram;
    /// let prog = IntegerProgram { input_dim: 2, input_bits: 2, accumulator_bits: 4, lookup_bits: 2, output_bits: 3, neurons: 2,
    ///     weights: vec![2, -1, 1, 1], biases: vec![8, 0], tables: vec![vec![0, 1, 2, 3]; 2], pool: 1, output_unit: 0.5, table_offsets: vec![] };
    /// assert_eq!(prog.outputs(), 2);
    /// assert_eq!(IntegerProgram { pool: 2, ..prog }.outputs(), 1);
    /// ```
    pub fn outputs(&self) -> usize {
        self.neurons + 1 - self.pool
    }

    /// Bits the pooled sum may add: ceil(log2(pool)).
    ///
    /// ```
    /// use cryptotl_server::IntegerProgram;
    /// let prog = IntegerProgram { input_dim: 2, input_bits: 2, accumulator_bits: 4, lookup_bits: 2, output_bits: 3, neurons: 2,
    ///     weights: vec![2, -1, 1, 1], biases: vec![8, 0], tables: vec![vec![0, 1, 2, 3]; 2], pool: 1, output_unit: 0.5, table_offsets: vec![] };
    /// assert_eq!(prog.pool_bits(), 0);
    /// assert_eq!(IntegerProgram { pool: 3, ..prog }.pool_bits(), 2);
    /// ```
    pub fn pool_bits(&self) -> u32 {
        pool_bits(self.pool)
    }

    /// The program's bit widths and pooling window.
    ///
    /// ```
    /// use cryptotl_server::IntegerProgram;
    /// let prog = IntegerProgram { input_dim: 2, input_bits: 2, accumulator_bits: 4, lookup_bits: 2, output_bits: 3, neurons: 2,
    ///     weights: vec![2, -1, 1, 1], biases: vec![8, 0], tables: vec![vec![0, 1, 2, 3]; 2], pool: 1, output_unit: 0.5, table_offsets: vec![] };
    /// let w = prog.bit_widths();
    /// assert_eq!((w.input_bits, w.accumulator_bits, w.lookup_bits, w.output_bits, w.pool), (2, 4, 2, 3, 1));
    /// ```
    pub fn bit_widths(&self) -> BitWidths {
        BitWidths {
            input_bits: self.input_bits,
            accumulator_bits: self.accumulator_bits,
            lookup_bits: self.lookup_bits,
            output_bits: self.output_bits,
            pool: self.pool,
        }
    }

    /// log2 of the output encoding scale.
    ///
    /// ```
    /// use cryptotl_server::IntegerProgram;
    /// let prog = IntegerProgram { input_dim: 2, input_bits: 2, accumulator_bits: 4, lookup_bits: 2, output_bits: 3, neurons: 2,
    ///     weights: vec![2, -1, 1, 1], biases: vec![8, 0], tables: vec![vec![0, 1, 2, 3]; 2], pool: 1, output_unit: 0.5, table_offsets: vec![] };
    /// assert_eq!(prog.output_delta_log2(), 63 - 3);
    /// ```
    pub fn output_delta_log2(&self) -> u32 {
        63 - self.output_bits - self.pool_bits()
    }

    /// The client's view of this program.
    ///
    /// ```
    /// use cryptotl_server::IntegerProgram;
    /// let prog = IntegerProgram { input_dim: 2, input_bits: 2, accumulator_bits: 4, lookup_bits: 2, output_bits: 3, neurons: 2,
    ///     weights: vec![2, -1, 1, 1], biases: vec![8, 0], tables: vec![vec![0, 1, 2, 3]; 2], pool: 1, output_unit: 0.5, table_offsets: vec![] };
    /// let iface = prog.interface();
    /// assert_eq!((iface.input_dim, iface.outputs, iface.output_scale), (2, 2, 0.5));
    /// ```
    pub fn interface(&self) -> ProgramInterface {
        ProgramInterface {
            input_dim: self.input_dim,
            input_bits: self.input_bits,
            accumulator_bits: self.accumulator_bits,
            outputs: self.outputs(),
            output_delta_log2: self.output_delta_log2(),
            output_scale: self.output_unit / self.pool as f32,
            output_offsets: if self.table_offsets.is_empty() { Vec::new() } else { self.pool_levels(&self.table_offsets) },
        }
    }

    /// Check the program is consistent and can be evaluated under `params`.
    ///
    /// ```
    /// use cryptotl_server::{IntegerProgram, ParameterSet};
    /// let prog = IntegerProgram { input_dim: 2, input_bits: 2, accumulator_bits: 4, lookup_bits: 2, output_bits: 3, neurons: 2,
    ///     weights: vec![2, -1, 1, 1], biases: vec![8, 0], tables: vec![vec![0, 1, 2, 3]; 2], pool: 1, output_unit: 0.5, table_offsets: vec![] };
    /// assert!(prog.validate(ParameterSet::Message2Carry2).is_ok());
    /// let short_table = IntegerProgram { tables: vec![vec![0, 1]; 2], ..prog.clone() };
    /// assert!(short_table.validate(ParameterSet::Message2Carry2).is_err());
    /// ```
    pub fn validate(&self, params: ParameterSet) -> Result<()> {
        let fail = |m: String| Err(HeError::Program(m));
        let p = self.lookup_bits;
        if self.input_dim == 0 || self.neurons == 0 {
            return fail("empty program (no inputs or no neurons)".into());
        }
        if self.pool == 0 || self.pool > self.neurons {
            return fail(format!("pool = {} must be in 1..={}", self.pool, self.neurons));
        }
        self.bit_widths().check(params).map_err(|e| HeError::Program(e.to_string()))?;
        if self.weights.len() != self.neurons * self.input_dim || self.biases.len() != self.neurons || self.tables.len() != self.neurons {
            return fail("weights, biases and tables do not match neurons x input_dim".into());
        }
        let limit = 1i32 << self.output_bits;
        if let Some(t) = self.tables.iter().find(|t| t.len() != 1 << p || t.iter().any(|v| v.abs() >= limit)) {
            return fail(format!("a table has {} entries (want {}) or a value beyond ±2^{}", t.len(), 1 << p, self.output_bits));
        }
        if !(self.table_offsets.is_empty() || self.table_offsets.len() == self.neurons) {
            return fail(format!("{} table offsets for {} neurons", self.table_offsets.len(), self.neurons));
        }
        if self.table_offsets.iter().any(|o| o.unsigned_abs() >= 1 << 32) {
            return fail("a table offset beyond ±2^32 levels".into());
        }
        if !self.output_unit.is_finite() || self.output_unit <= 0.0 {
            return fail(format!("output_unit = {} must be finite and positive", self.output_unit));
        }
        // The clear evaluation sums in i64: keep every accumulator far from overflow.
        let top = ((1u64 << self.input_bits) - 1) as i128;
        let worst = (0..self.neurons)
            .map(|j| self.biases[j].unsigned_abs() as i128 + self.row(j).iter().map(|&w| w.unsigned_abs() as i128).sum::<i128>() * top)
            .max()
            .unwrap_or(0);
        if worst >= 1i128 << 62 {
            return fail(format!("accumulators could reach {worst}, beyond 2^62"));
        }
        Ok(())
    }

    /// Weight row of neuron `j`.
    ///
    /// ```
    /// use cryptotl_server::IntegerProgram;
    /// let prog = IntegerProgram { input_dim: 2, input_bits: 2, accumulator_bits: 4, lookup_bits: 2, output_bits: 3, neurons: 2,
    ///     weights: vec![2, -1, 1, 1], biases: vec![8, 0], tables: vec![vec![0, 1, 2, 3]; 2], pool: 1, output_unit: 0.5, table_offsets: vec![] };
    /// assert_eq!(prog.row(1), &[1, 1]);
    /// ```
    pub fn row(&self, j: usize) -> &[i32] {
        &self.weights[j * self.input_dim..(j + 1) * self.input_dim]
    }

    /// The exact accumulator of every neuron (as an integer, before any wrap-around).
    ///
    /// ```
    /// use cryptotl_server::IntegerProgram;
    /// let prog = IntegerProgram { input_dim: 2, input_bits: 2, accumulator_bits: 4, lookup_bits: 2, output_bits: 3, neurons: 2,
    ///     weights: vec![2, -1, 1, 1], biases: vec![8, 0], tables: vec![vec![0, 1, 2, 3]; 2], pool: 1, output_unit: 0.5, table_offsets: vec![] };
    /// assert_eq!(prog.accumulators(&[1, 1]), vec![9, 2]); // 2 - 1 + 8, 1 + 1
    /// ```
    pub fn accumulators(&self, q: &[u16]) -> Vec<i64> {
        (0..self.neurons)
            .map(|j| self.biases[j] + self.row(j).iter().zip(q).map(|(&w, &x)| w as i64 * x as i64).sum::<i64>())
            .collect()
    }

    /// Lookup-table index of an accumulator: `round(acc / 2^(B-p))` modulo `2^(p+1)`.
    ///
    /// ```
    /// # use cryptotl_server::IntegerProgram;
    /// let prog = IntegerProgram { input_dim: 1, input_bits: 2, accumulator_bits: 4, lookup_bits: 2, output_bits: 3,
    ///     neurons: 1, weights: vec![1], biases: vec![0], tables: vec![vec![0, 1, 2, 3]], pool: 1, output_unit: 1.0, table_offsets: vec![] };
    /// assert_eq!([1, 2, 5, 6, 14, 31, 32].map(|a| prog.lookup_index(a)), [0, 1, 1, 2, 4, 0, 0]);
    /// assert_eq!((prog.lookup(0, 2), prog.lookup(0, 6)), (2, -2)); // past 2^p: negacyclic
    /// ```
    pub fn lookup_index(&self, acc: i64) -> usize {
        let (b, p) = (self.accumulator_bits, self.lookup_bits);
        let t = (acc as u64) & ((1u64 << (b + 1)) - 1);
        let r = (t + (1u64 << (b - p - 1))) >> (b - p);
        (r & ((1u64 << (p + 1)) - 1)) as usize
    }

    /// Whether an accumulator rounds to an index outside `[0, 2^p)`: below zero or into the padding half, where
    /// the lookup wraps around (the calibration keeps accumulators inside `[-half bin, 2^B - half bin)`).
    ///
    /// ```
    /// use cryptotl_server::IntegerProgram;
    /// let prog = IntegerProgram { input_dim: 2, input_bits: 2, accumulator_bits: 4, lookup_bits: 2, output_bits: 3, neurons: 2,
    ///     weights: vec![2, -1, 1, 1], biases: vec![8, 0], tables: vec![vec![0, 1, 2, 3]; 2], pool: 1, output_unit: 0.5, table_offsets: vec![] };
    /// // B = 4, p = 2: a bin is 4 units, accumulators stay in [-2, 14).
    /// assert!(!prog.wraps(-2) && !prog.wraps(13));
    /// assert!(prog.wraps(-3) && prog.wraps(14));
    /// ```
    pub fn wraps(&self, acc: i64) -> bool {
        let half = 1i64 << (self.accumulator_bits - self.lookup_bits - 1);
        !(-half..(1i64 << self.accumulator_bits) - half).contains(&acc)
    }

    /// The bootstrap's output for neuron `j` at table index `r` (negacyclic beyond 2^p).
    ///
    /// ```
    /// use cryptotl_server::IntegerProgram;
    /// let prog = IntegerProgram { input_dim: 2, input_bits: 2, accumulator_bits: 4, lookup_bits: 2, output_bits: 3, neurons: 2,
    ///     weights: vec![2, -1, 1, 1], biases: vec![8, 0], tables: vec![vec![0, 1, 2, 3]; 2], pool: 1, output_unit: 0.5, table_offsets: vec![] };
    /// assert_eq!((prog.lookup(0, 3), prog.lookup(0, 5)), (3, -1)); // index 5 = 4 + 1: the negacyclic copy
    /// ```
    pub fn lookup(&self, j: usize, r: usize) -> i64 {
        let half = 1usize << self.lookup_bits;
        if r < half { self.tables[j][r] as i64 } else { -(self.tables[j][r - half] as i64) }
    }

    /// Sum-pool activations (stride 1) into outputs.
    ///
    /// ```
    /// use cryptotl_server::IntegerProgram;
    /// let prog = IntegerProgram { input_dim: 2, input_bits: 2, accumulator_bits: 4, lookup_bits: 2, output_bits: 3, neurons: 2,
    ///     weights: vec![2, -1, 1, 1], biases: vec![8, 0], tables: vec![vec![0, 1, 2, 3]; 2], pool: 1, output_unit: 0.5, table_offsets: vec![] };
    /// assert_eq!(IntegerProgram { pool: 2, ..prog }.pool_levels(&[1, 2, 3]), vec![3, 5]);
    /// ```
    pub fn pool_levels(&self, activations: &[i64]) -> Vec<i64> {
        activations.windows(self.pool).map(|w| w.iter().sum()).collect()
    }

    /// The clear-integer evaluation: input levels -> output levels. The oracle for the encrypted evaluation.
    ///
    /// ```
    /// use cryptotl_server::IntegerProgram;
    /// // One neuron: acc = 2*x0 - x1 + 8, read at B = 4 bits through p = 2 index bits: r = round(acc / 4).
    /// let prog = IntegerProgram { input_dim: 2, input_bits: 2, accumulator_bits: 4, lookup_bits: 2, output_bits: 3,
    ///     neurons: 1, weights: vec![2, -1], biases: vec![8], tables: vec![vec![5, 0, 1, 2]], pool: 1, output_unit: 1.0, table_offsets: vec![] };
    /// assert_eq!(prog.evaluate_clear(&[1, 1]), vec![1]); // acc 9 -> r 2
    /// assert_eq!(prog.evaluate_clear(&[2, 1]), vec![2]); // acc 11 -> r 3
    /// assert_eq!(prog.evaluate_clear(&[3, 0]), vec![-5]); // acc 14 -> r 4: past 2^p, the negacyclic -table[0]
    /// assert!(prog.wraps(14) && !prog.wraps(13) && !prog.wraps(-2) && prog.wraps(-3));
    ///
    /// // A ReLU-like table [0, 0, 1, 2], stored centred (offset (0 + 2) / 2 = 1): a wrapped lookup saturates.
    /// let relu = IntegerProgram { input_dim: 1, weights: vec![1], biases: vec![0], tables: vec![vec![-1, -1, 0, 1]],
    ///     table_offsets: vec![1], ..prog };
    /// let iface = relu.interface();
    /// let decoded = |acc: i64| iface.dequantize(&[relu.lookup(0, relu.lookup_index(acc))])[0];
    /// assert_eq!([0, 13].map(decoded), [0.0, 2.0]); // inside the range: the table's own values
    /// assert_eq!([14, -3].map(decoded), [2.0, 0.0]); // one bin past either end: the end's value
    /// // Uncentred, the same lookups return -table[0] = 0 and -table[3] = -2.
    /// ```
    pub fn evaluate_clear(&self, q: &[u16]) -> Vec<i64> {
        let acts: Vec<i64> =
            self.accumulators(q).into_iter().enumerate().map(|(j, a)| self.lookup(j, self.lookup_index(a))).collect();
        self.pool_levels(&acts)
    }
}
