//! Homomorphic evaluation of an [`IntegerProgram`] on a client's ciphertexts.
//!
//! Per sample and per neuron j:
//! 1. **Linear stage (leveled):** `acc_j = bias_j * 2^(63-B) + sum_i w_ji * ct_i` over the raw words of the input
//!    ciphertexts (small-key LWE, n + 1 words each), a tight wrapping-integer loop blocked over neurons so each
//!    input ciphertext is read once per block. No keyswitch is needed: inputs are already under the small key.
//!    The inputs arrive seeded, so their masks are first expanded from the seeds: tfhe-rs's AES-CTR stream, drawn
//!    eight blocks at a time (`eval/mask.rs`; tfhe-rs's own expansion, a byte at a time, took five times as long
//!    as this whole stage now does: docs/benchmarks.md).
//! 2. **Activation:** one programmable bootstrap with neuron j's lookup table, output under the big key. Classic
//!    sets: tfhe-rs's blind rotation after a centered modulus switch, one neuron at a time. Multi-bit sets: our own
//!    blind rotation from tfhe-rs's parts, up to [`MULTI_BIT_BATCH`] neurons at a time, group-major, in batches
//!    spread evenly over the threads ([`multi_bit_batch_size`]; see [`Evaluator::activations`]).
//! 3. **Pooling:** sums of `pool` neighbouring bootstrap outputs.
//! 4. **Download:** each output modulus-switched from 2^64 to 2^q, q = [`crate::ProgramInterface::download_log_modulus`]
//!    (17 for 7-bit outputs), and packed q bits per word.
//!
//! Work is spread with rayon across neuron blocks (linear stage), neurons (bootstraps) and samples (batches).
//!
//! One file per operation, as tfhe-rs's `core_crypto` lays out its algorithms: `eval/mask.rs` (the seeded inputs'
//! masks), `eval/linear.rs` (the leveled stage), `eval/lookup.rs` (the lookup-table accumulators), `eval/classic.rs` and `eval/multi_bit.rs` (the two
//! blind rotations, the latter with its fold kernel), `eval/deadline.rs` (stopping a batch past its time limit). This file holds the [`Evaluator`] that
//! composes them and what a sample costs ([`OpCounts`]).

use std::time::Duration;

use rayon::prelude::*;
use tfhe::core_crypto::prelude::*;

use crate::error::{HeError, Result};
use crate::params::ParameterSet;
use crate::program::IntegerProgram;
use crate::wire::{EncryptedInput, EncryptedOutput, EvaluationKey, SeededBootstrapKey};

mod classic;
mod deadline;
pub mod linear;
pub mod lookup;
pub mod mask;
mod multi_bit;

use deadline::Deadline;
pub use multi_bit::{MULTI_BIT_BATCH, multi_bit_batch_size};

/// The bootstrap key in the Fourier domain, as the parameter set says.
enum FourierKey {
    Classic(FourierLweBootstrapKeyOwned),
    MultiBit(FourierLweMultiBitBootstrapKeyOwned),
}

/// What one sample costs, counted (not timed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OpCounts {
    /// Programmable bootstraps.
    pub bootstraps: usize,
    /// Wrapping 64-bit multiply-adds in the linear stage (non-zero weights x (n + 1)).
    pub multiply_adds: usize,
    /// Estimated serialized bytes of one encrypted input (payload plus ~200 bytes of header; the client's report
    /// quotes the measured size beside it).
    #[serde(rename = "estimated_upload_bytes", alias = "upload_bytes")]
    pub estimated_upload_bytes: usize,
    /// Estimated serialized bytes of one encrypted output (as `estimated_upload_bytes`).
    #[serde(rename = "estimated_download_bytes", alias = "download_bytes")]
    pub estimated_download_bytes: usize,
}

impl OpCounts {
    /// What one sample of `program` costs under `params` (byte counts are estimates: payload plus ~200 bytes of
    /// serialization header; reports quote measured sizes beside them).
    ///
    /// ```
    /// use cryptotl_server::{IntegerProgram, OpCounts, ParameterSet};
    /// let prog = IntegerProgram { input_dim: 2, input_bits: 2, accumulator_bits: 4, lookup_bits: 2, output_bits: 3, neurons: 2,
    ///     weights: vec![2, 0, 1, 1], biases: vec![8, 0], tables: vec![vec![0, 1, 2, 3]; 2], pool: 1, output_unit: 0.5, table_offsets: vec![] };
    /// let params = ParameterSet::default();
    /// let c = OpCounts::of(&prog, params);
    /// assert_eq!(c.bootstraps, 2); // one per neuron
    /// assert_eq!(c.multiply_adds, 3 * (params.lwe_dimension() + 1)); // zero weights are skipped
    /// ```
    pub fn of(program: &IntegerProgram, params: ParameterSet) -> Self {
        let nnz = program.weights.iter().filter(|&&w| w != 0).count();
        let header = 200; // measured safe-serialization header + metadata, order of magnitude
        OpCounts {
            bootstraps: program.neurons,
            multiply_adds: nnz * (params.lwe_dimension() + 1),
            estimated_upload_bytes: program.input_dim * 8 + header,
            estimated_download_bytes: EncryptedOutput::packed_bytes(params, program.outputs(), program.interface().download_log_modulus()) + header,
        }
    }
}

/// The server's evaluator: the program, the client's bootstrap key in the Fourier domain, one lookup-table
/// accumulator per neuron.
pub struct Evaluator {
    program: IntegerProgram,
    params: ParameterSet,
    key_id: u64,
    bsk: FourierKey,
    luts: Vec<GlweCiphertextOwned<u64>>,
    /// Weights transposed per block: `block_weights[b][i * BLOCK + r]` = weight of neuron `b*BLOCK + r` on input i.
    block_weights: Vec<Vec<u64>>,
}

impl Evaluator {
    /// Prepare evaluation of `program` with a client's evaluation key (checked against `params`): decompress the
    /// seeded bootstrap key, convert it to the Fourier domain, build the lookup tables.
    pub fn new(program: IntegerProgram, key: &EvaluationKey, params: ParameterSet) -> Result<Self> {
        program.validate(params)?;
        key.check(params)?;
        let bsk = match &key.bootstrap_key {
            SeededBootstrapKey::Classic(seeded) => {
                let standard = seeded.clone().par_decompress_into_lwe_bootstrap_key();
                let mut bsk = FourierLweBootstrapKey::new(
                    standard.input_lwe_dimension(),
                    standard.glwe_size(),
                    standard.polynomial_size(),
                    standard.decomposition_base_log(),
                    standard.decomposition_level_count(),
                );
                par_convert_standard_lwe_bootstrap_key_to_fourier(&standard, &mut bsk);
                FourierKey::Classic(bsk)
            }
            SeededBootstrapKey::MultiBit(seeded) => {
                let standard = seeded.clone().par_decompress_into_lwe_multi_bit_bootstrap_key();
                let mut bsk = FourierLweMultiBitBootstrapKey::new(
                    standard.input_lwe_dimension(),
                    standard.glwe_size(),
                    standard.polynomial_size(),
                    standard.decomposition_base_log(),
                    standard.decomposition_level_count(),
                    standard.grouping_factor(),
                );
                par_convert_standard_lwe_multi_bit_bootstrap_key_to_fourier(&standard, &mut bsk);
                FourierKey::MultiBit(bsk)
            }
        };
        let delta = 1u64 << program.output_delta_log2();
        let luts = program.tables.iter().map(|t| lookup::lookup_table_glwe(params, t, delta)).collect();
        let block_weights = linear::block_weights(&program);
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
        OpCounts::of(&self.program, self.params)
    }

    /// Bootstrap every neuron's accumulator through its lookup table: `neurons x (k*N + 1)` words, big key.
    /// `accumulators` may hold the linear stages of several samples one after the other (ciphertext i takes
    /// neuron `i % neurons`'s table); the outputs keep that order.
    ///
    /// Classic sets: the modulus switch to 2N is tfhe-rs's *centered* binary one: it subtracts the known mean of
    /// the mask rounding error (half of it, the key being binary) from the body, which halves the switch's noise
    /// variance, the dominant noise before the lookup. Each worker thread reuses its FFT plan and scratch memory.
    ///
    /// Multi-bit sets: per group of g mask elements, `fold_group` folds the group's 2^g GGSWs into one (each but
    /// the first times the monomial of its rounded subset sum; tfhe-rs's `prepare_multi_bit_ggsw_mem_optimized`,
    /// with less arithmetic), then one external product. As tfhe-rs's `multi_bit_deterministic_blind_rotate_assign`, but on one thread and for
    /// [`MULTI_BIT_BATCH`] neurons at once: each group's GGSWs are read once per batch and stay in cache.
    pub fn activations(&self, accumulators: &[u64]) -> Vec<u64> {
        self.activations_within(accumulators, &Deadline::after(None))
    }

    /// [`Self::activations`], stopping early (with outputs left unfinished) once `deadline` has passed; the
    /// caller asks `deadline.passed()` (did any worker stop?) before using the result.
    fn activations_within(&self, accumulators: &[u64], deadline: &Deadline) -> Vec<u64> {
        match &self.bsk {
            FourierKey::Classic(bsk) => self.classic_activations(accumulators, bsk, deadline),
            FourierKey::MultiBit(bsk) => self.multi_bit_activations(accumulators, bsk, deadline),
        }
    }

    /// Evaluate the program on one encrypted sample.
    pub fn evaluate(&self, input: &EncryptedInput) -> Result<EncryptedOutput> {
        Ok(self.evaluate_batch(std::slice::from_ref(input))?.remove(0))
    }

    /// Evaluate many samples: the linear stage per sample (in parallel), then every bootstrap of every sample in
    /// one pass, so a multi-bit batch holds neurons of several samples (the bootstrap key is read once per batch,
    /// not once per sample), then pooling and the modulus switch per sample.
    pub fn evaluate_batch(&self, inputs: &[EncryptedInput]) -> Result<Vec<EncryptedOutput>> {
        self.evaluate_batch_within(inputs, None)
    }

    /// [`Self::evaluate_batch`] with a time limit: the work stops at the first bootstrap step after `limit` has
    /// passed (checked between blind-rotation groups, so within a few milliseconds) and the batch fails with
    /// [`HeError::TimedOut`]; nothing partial is returned. `None`: no limit.
    ///
    /// ```no_run
    /// # fn f(server: &cryptotl_server::Evaluator, inputs: &[cryptotl_server::EncryptedInput]) {
    /// use std::time::Duration;
    /// match server.evaluate_batch_within(inputs, Some(Duration::from_secs(60))) {
    ///     Ok(outputs) => assert_eq!(outputs.len(), inputs.len()),
    ///     Err(cryptotl_server::HeError::TimedOut { .. }) => { /* send fewer samples per batch */ }
    ///     Err(e) => panic!("{e}"),
    /// }
    /// # }
    /// ```
    pub fn evaluate_batch_within(&self, inputs: &[EncryptedInput], limit: Option<Duration>) -> Result<Vec<EncryptedOutput>> {
        let deadline = Deadline::after(limit);
        let accumulators: Vec<Vec<u64>> = inputs.par_iter().map(|x| self.linear(x)).collect::<Result<_>>()?;
        let acts = self.activations_within(&accumulators.concat(), &deadline);
        if deadline.passed() {
            return Err(HeError::TimedOut { samples: inputs.len(), limit_seconds: limit.unwrap_or_default().as_secs_f64() });
        }
        let big = self.params.big_lwe_dimension() + 1;
        let (pool, outputs, neurons) = (self.program.pool, self.program.outputs(), self.program.neurons);
        let q = self.program.interface().download_log_modulus();
        Ok(acts
            .chunks(neurons * big)
            .map(|acts| {
                let mut words = vec![0u64; outputs * big];
                for (k, o) in words.chunks_mut(big).enumerate() {
                    for (w, out) in o.iter_mut().enumerate() {
                        let sum = (0..pool).fold(0u64, |s, t| s.wrapping_add(acts[(k + t) * big + w]));
                        // Modulus switch 2^64 -> 2^q with rounding.
                        *out = sum.wrapping_add(1 << (63 - q)) >> (64 - q);
                    }
                }
                EncryptedOutput::pack(self.key_id, self.params.name().into(), outputs as u64, q, &words)
            })
            .collect())
    }
}
