//! The linear stage: every neuron's accumulator as a small-key LWE ciphertext, from the raw words of the input
//! ciphertexts and the program's integer weights (no keyswitch, no bootstrap).

use rayon::prelude::*;

use super::Evaluator;
use crate::error::Result;
use crate::program::IntegerProgram;
use crate::wire::EncryptedInput;

/// Neurons per block of the linear stage (each block's accumulators stay in L2).
pub const BLOCK: usize = 8;

/// The program's weights transposed per block of [`BLOCK`] neurons: `w[b][i * BLOCK + r]` = weight of neuron
/// `b * BLOCK + r` on input i (as wrapping u64), so the loop reads each input ciphertext once per block.
/// The last block is padded with zero weights, which the loop skips.
///
/// ```
/// use cryptotl_server::IntegerProgram;
/// use cryptotl_server::eval::linear::{BLOCK, block_weights};
/// // Two neurons on two inputs: neuron 0 weighs (2, -1), neuron 1 weighs (1, 1).
/// let prog = IntegerProgram { input_dim: 2, input_bits: 2, accumulator_bits: 4, lookup_bits: 2, output_bits: 3, neurons: 2,
///     weights: vec![2, -1, 1, 1], biases: vec![8, 0], tables: vec![vec![0, 1, 2, 3]; 2], pool: 1, output_unit: 0.5, table_offsets: vec![] };
/// let w = block_weights(&prog);
/// assert_eq!(w.len(), 1); // one block holds both neurons
/// assert_eq!(w[0].len(), 2 * BLOCK);
/// assert_eq!(w[0][0], 2); // input 0, neuron 0
/// assert_eq!(w[0][BLOCK] as i64, -1); // input 1, neuron 0: a wrapping u64
/// assert_eq!(w[0][BLOCK + 1], 1); // input 1, neuron 1
/// assert_eq!(w[0][2], 0); // no neuron 2: padding
/// ```
pub fn block_weights(program: &IntegerProgram) -> Vec<Vec<u64>> {
    let d = program.input_dim;
    (0..program.neurons.div_ceil(BLOCK))
        .map(|b| {
            let mut w = vec![0u64; d * BLOCK];
            for r in 0..BLOCK.min(program.neurons - b * BLOCK) {
                for (i, &v) in program.row(b * BLOCK + r).iter().enumerate() {
                    w[i * BLOCK + r] = v as i64 as u64;
                }
            }
            w
        })
        .collect()
}

impl Evaluator {
    /// The linear stage alone: one small-key LWE ciphertext per neuron (`neurons x (n + 1)` words), holding
    /// `acc_j * 2^(63 - B)` plus noise. Public for noise tests and benchmarks.
    pub fn linear(&self, input: &EncryptedInput) -> Result<Vec<u64>> {
        input.check(self.params, self.key_id, self.program.input_dim)?;
        let x = super::mask::expand(&input.features)?;
        let size = self.params.lwe_dimension() + 1;
        let d = self.program.input_dim;
        let delta_in = 1u64 << (63 - self.program.accumulator_bits);
        let mut out = vec![0u64; self.program.neurons * size];
        out.par_chunks_mut(BLOCK * size).enumerate().for_each(|(b, chunk)| {
            let rows = chunk.len() / size;
            let w = &self.block_weights[b];
            for i in 0..d {
                let xi = &x[i * size..(i + 1) * size];
                for r in 0..rows {
                    let wi = w[i * BLOCK + r];
                    if wi == 0 {
                        continue;
                    }
                    for (o, &c) in chunk[r * size..(r + 1) * size].iter_mut().zip(xi) {
                        *o = o.wrapping_add(c.wrapping_mul(wi));
                    }
                }
            }
            for r in 0..rows {
                let bias = (self.program.biases[b * BLOCK + r] as u64).wrapping_mul(delta_in);
                let body = &mut chunk[(r + 1) * size - 1];
                *body = body.wrapping_add(bias);
            }
        });
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every weight of a program that spans several blocks lands where the linear stage reads it, and nothing else
    /// is non-zero.
    #[test]
    fn block_layout_holds_every_weight_once() {
        let (d, h) = (5, 2 * BLOCK + 3);
        let weights: Vec<i32> = (0..d * h).map(|k| k as i32 - 40).collect();
        let prog = IntegerProgram {
            input_dim: d,
            input_bits: 2,
            accumulator_bits: 10,
            lookup_bits: 2,
            output_bits: 3,
            neurons: h,
            weights: weights.clone(),
            biases: vec![0; h],
            tables: vec![vec![0; 4]; h],
            pool: 1,
            output_unit: 1.0,
            table_offsets: vec![],
        };
        let w = block_weights(&prog);
        assert_eq!(w.len(), h.div_ceil(BLOCK));
        let mut seen = 0;
        for (b, block) in w.iter().enumerate() {
            for i in 0..d {
                for r in 0..BLOCK {
                    let j = b * BLOCK + r;
                    let want = if j < h { weights[j * d + i] as i64 } else { 0 };
                    assert_eq!(block[i * BLOCK + r] as i64, want, "block {b}, input {i}, row {r}");
                    seen += usize::from(j < h);
                }
            }
        }
        assert_eq!(seen, d * h);
    }
}
