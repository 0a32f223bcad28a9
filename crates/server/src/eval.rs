//! Homomorphic evaluation of an [`IntegerProgram`] on a client's ciphertexts.
//!
//! Per sample and per neuron j:
//! 1. **Linear stage (leveled):** `acc_j = bias_j * 2^(63-B) + sum_i w_ji * ct_i` over the raw words of the input
//!    ciphertexts (small-key LWE, n + 1 words each), a tight wrapping-integer loop blocked over neurons so each
//!    input ciphertext is read once per block. No keyswitch is needed: inputs are already under the small key.
//! 2. **Activation:** one programmable bootstrap with neuron j's lookup table (centered modulus switch), output
//!    under the big key.
//! 3. **Pooling:** sums of `pool` neighbouring bootstrap outputs.
//! 4. **Download:** each output modulus-switched from 2^64 to 2^32.
//!
//! Work is spread with rayon across neuron blocks (linear stage), neurons (bootstraps) and samples (batches).

use rayon::prelude::*;
use tfhe::core_crypto::prelude::*;

use crate::error::Result;
use crate::params::ParameterSet;
use crate::program::IntegerProgram;
use crate::wire::{EncryptedInput, EncryptedOutput, EvaluationKey};

/// Neurons per block of the linear stage (each block's accumulators stay in L2).
const BLOCK: usize = 8;

/// What one sample costs, counted (not timed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OpCounts {
    /// Programmable bootstraps.
    pub bootstraps: usize,
    /// Keyswitches (none: the linear stage runs under the small key).
    pub keyswitches: usize,
    /// Wrapping 64-bit multiply-adds in the linear stage (non-zero weights x (n + 1)).
    pub multiply_adds: usize,
    /// Serialized bytes of one encrypted input.
    pub upload_bytes: usize,
    /// Serialized bytes of one encrypted output.
    pub download_bytes: usize,
}

/// The server's evaluator: the program, the client's bootstrap key in the Fourier domain, one lookup-table
/// accumulator per neuron.
pub struct Evaluator {
    program: IntegerProgram,
    params: ParameterSet,
    key_id: u64,
    bsk: FourierLweBootstrapKeyOwned,
    luts: Vec<GlweCiphertextOwned<u64>>,
    /// Weights transposed per block: `block_weights[b][i * BLOCK + r]` = weight of neuron `b*BLOCK + r` on input i.
    block_weights: Vec<Vec<u64>>,
}

/// The accumulator polynomial of a bootstrap that returns `table[r] * delta` for index r (and the negacyclic
/// `-table[r] * delta` past the padding bit). As tfhe-rs's `generate_programmable_bootstrap_glwe_lut`, but with
/// signed table entries and wrapping arithmetic.
fn lookup_table_glwe(params: ParameterSet, table: &[i32], delta: u64) -> GlweCiphertextOwned<u64> {
    let p = params.tfhe();
    let n = p.polynomial_size.0;
    let box_size = n / table.len();
    let mut acc: Vec<u64> = table.iter().flat_map(|&v| std::iter::repeat_n((v as i64 as u64).wrapping_mul(delta), box_size)).collect();
    let half_box = box_size / 2;
    for a in &mut acc[..half_box] {
        *a = a.wrapping_neg();
    }
    acc.rotate_left(half_box);
    allocate_and_trivially_encrypt_new_glwe_ciphertext(p.glwe_dimension.to_glwe_size(), &PlaintextList::from_container(acc), p.ciphertext_modulus)
}

impl Evaluator {
    /// Prepare evaluation of `program` with a client's evaluation key (checked against `params`): decompress the
    /// seeded bootstrap key, convert it to the Fourier domain, build the lookup tables.
    pub fn new(program: IntegerProgram, key: &EvaluationKey, params: ParameterSet) -> Result<Self> {
        program.validate(params)?;
        key.check(params)?;
        let standard = key.bootstrap_key.clone().par_decompress_into_lwe_bootstrap_key();
        let mut bsk = FourierLweBootstrapKey::new(
            standard.input_lwe_dimension(),
            standard.glwe_size(),
            standard.polynomial_size(),
            standard.decomposition_base_log(),
            standard.decomposition_level_count(),
        );
        par_convert_standard_lwe_bootstrap_key_to_fourier(&standard, &mut bsk);
        let delta = 1u64 << program.output_delta_log2();
        let luts = program.tables.iter().map(|t| lookup_table_glwe(params, t, delta)).collect();
        let d = program.input_dim;
        let block_weights = (0..program.neurons.div_ceil(BLOCK))
            .map(|b| {
                let mut w = vec![0u64; d * BLOCK];
                for r in 0..BLOCK.min(program.neurons - b * BLOCK) {
                    for (i, &v) in program.row(b * BLOCK + r).iter().enumerate() {
                        w[i * BLOCK + r] = v as i64 as u64;
                    }
                }
                w
            })
            .collect();
        Ok(Self { program, params, key_id: key.key_id, bsk, luts, block_weights })
    }

    /// The program being evaluated.
    pub fn program(&self) -> &IntegerProgram {
        &self.program
    }

    /// The parameter set in use.
    pub fn params(&self) -> ParameterSet {
        self.params
    }

    /// What one sample costs.
    pub fn counts(&self) -> OpCounts {
        let nnz = self.program.weights.iter().filter(|&&w| w != 0).count();
        let header = 200; // measured safe-serialization header + metadata, order of magnitude
        OpCounts {
            bootstraps: self.program.neurons,
            keyswitches: 0,
            multiply_adds: nnz * (self.params.lwe_dimension() + 1),
            upload_bytes: self.program.input_dim * 8 + header,
            download_bytes: self.program.outputs() * (self.params.big_lwe_dimension() + 1) * 4 + header,
        }
    }

    /// The linear stage alone: one small-key LWE ciphertext per neuron (`neurons x (n + 1)` words), holding
    /// `acc_j * 2^(63 - B)` plus noise. Public for noise tests and benchmarks.
    pub fn linear(&self, input: &EncryptedInput) -> Result<Vec<u64>> {
        input.check(self.params, self.key_id, self.program.input_dim)?;
        let x = input.features.clone().par_decompress_into_lwe_ciphertext_list().into_container();
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

    /// Bootstrap every neuron's accumulator through its lookup table: `neurons x (k*N + 1)` words, big key.
    ///
    /// The modulus switch to 2N is tfhe-rs's *centered* binary one: it subtracts the known mean of the mask
    /// rounding error (half of it, the key being binary) from the body, which halves the switch's noise variance,
    /// the dominant noise before the lookup. Each worker thread reuses its FFT plan and scratch memory.
    pub fn activations(&self, accumulators: &[u64]) -> Vec<u64> {
        let p = self.params.tfhe();
        let (size, big) = (self.params.lwe_dimension() + 1, self.params.big_lwe_dimension() + 1);
        let log_modulus = p.polynomial_size.to_blind_rotation_input_modulus_log();
        let mut out = vec![0u64; self.program.neurons * big];
        let scratch = || {
            let fft = Fft::new(p.polynomial_size);
            let mut buffers = ComputationBuffers::new();
            buffers.resize(
                blind_rotate_assign_mem_optimized_requirement::<u64>(p.glwe_dimension.to_glwe_size(), p.polynomial_size, fft.as_view())
                    .unaligned_bytes_required(),
            );
            (fft, buffers)
        };
        // One contiguous group of neurons per worker thread, so each thread sets up its scratch exactly once.
        let per = self.program.neurons.div_ceil(rayon::current_num_threads().max(1));
        out.par_chunks_mut(per * big).zip(accumulators.par_chunks(per * size)).enumerate().for_each(|(g, (outs, accs))| {
            let (fft, mut buffers) = scratch();
            for (i, (o, a)) in outs.chunks_mut(big).zip(accs.chunks(size)).enumerate() {
                let input = LweCiphertext::from_container(a, p.ciphertext_modulus);
                let switched = lwe_ciphertext_centered_binary_modulus_switch::<u64, usize, _>(input, log_modulus);
                let mut lut = self.luts[g * per + i].clone();
                blind_rotate_assign_mem_optimized(&switched, &mut lut, &self.bsk, fft.as_view(), buffers.stack());
                let mut output = LweCiphertext::from_container(o, p.ciphertext_modulus);
                extract_lwe_sample_from_glwe_ciphertext(&lut, &mut output, MonomialDegree(0));
            }
        });
        out
    }

    /// Evaluate the program on one encrypted sample.
    pub fn evaluate(&self, input: &EncryptedInput) -> Result<EncryptedOutput> {
        let acts = self.activations(&self.linear(input)?);
        let big = self.params.big_lwe_dimension() + 1;
        let (pool, outputs) = (self.program.pool, self.program.outputs());
        let mut data = vec![0u32; outputs * big];
        for (k, o) in data.chunks_mut(big).enumerate() {
            for (w, out) in o.iter_mut().enumerate() {
                let sum = (0..pool).fold(0u64, |s, t| s.wrapping_add(acts[(k + t) * big + w]));
                // Modulus switch 2^64 -> 2^32 with rounding.
                *out = (sum.wrapping_add(1 << 31) >> 32) as u32;
            }
        }
        Ok(EncryptedOutput { key_id: self.key_id, parameter_set: self.params.name().into(), count: outputs as u64, data })
    }

    /// Evaluate many samples (parallel across samples and, inside each, across neurons).
    pub fn evaluate_batch(&self, inputs: &[EncryptedInput]) -> Result<Vec<EncryptedOutput>> {
        inputs.par_iter().map(|x| self.evaluate(x)).collect()
    }
}
