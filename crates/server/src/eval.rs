//! Homomorphic evaluation of an [`IntegerProgram`] on a client's ciphertexts.
//!
//! Per sample and per neuron j:
//! 1. **Linear stage (leveled):** `acc_j = bias_j * 2^(63-B) + sum_i w_ji * ct_i` over the raw words of the input
//!    ciphertexts (small-key LWE, n + 1 words each), a tight wrapping-integer loop blocked over neurons so each
//!    input ciphertext is read once per block. No keyswitch is needed: inputs are already under the small key.
//! 2. **Activation:** one programmable bootstrap with neuron j's lookup table, output under the big key. Classic
//!    sets: tfhe-rs's blind rotation after a centered modulus switch, one neuron at a time. Multi-bit sets: our own
//!    blind rotation from tfhe-rs's parts, [`MULTI_BIT_BATCH`] neurons at a time, group-major (see
//!    [`Evaluator::activations`]).
//! 3. **Pooling:** sums of `pool` neighbouring bootstrap outputs.
//! 4. **Download:** each output modulus-switched from 2^64 to 2^32.
//!
//! Work is spread with rayon across neuron blocks (linear stage), neurons (bootstraps) and samples (batches).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rayon::prelude::*;
use tfhe::core_crypto::algorithms::polynomial_algorithms::polynomial_wrapping_monic_monomial_div_assign;
use tfhe::core_crypto::fft_impl::common::modulus_switch;
use tfhe::core_crypto::fft_impl::fft64::c64;
use tfhe::core_crypto::fft_impl::fft64::crypto::ggsw::{
    FourierGgswCiphertext, add_external_product_assign, add_external_product_assign_scratch,
};
use tfhe::core_crypto::fft_impl::fft64::math::polynomial::FourierPolynomial;
use tfhe::core_crypto::prelude::*;

use crate::error::{HeError, Result};
use crate::params::ParameterSet;
use crate::program::IntegerProgram;
use crate::wire::{EncryptedInput, EncryptedOutput, EvaluationKey, SeededBootstrapKey};

/// Neurons per block of the linear stage (each block's accumulators stay in L2).
const BLOCK: usize = 8;

/// Multi-bit bootstraps run together, group-major, on one thread. A multi-bit key is large (157 MB in the Fourier
/// domain for `MULTI_BIT_GROUP_3_MESSAGE_1_CARRY_1`) and each group's 2^g GGSWs are folded into one per
/// ciphertext, so one bootstrap at a time is bound by memory traffic: 12-13 ms per bootstrap on two cores here,
/// against 5.7-5.8 ms in batches of 16 (`cargo run --release --example pbs_throughput`; 8: 7.4-8.3 ms, 32: noisier).
pub const MULTI_BIT_BATCH: usize = 16;

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
    /// Keyswitches (none: the linear stage runs under the small key).
    pub keyswitches: usize,
    /// Wrapping 64-bit multiply-adds in the linear stage (non-zero weights x (n + 1)).
    pub multiply_adds: usize,
    /// Serialized bytes of one encrypted input.
    pub upload_bytes: usize,
    /// Serialized bytes of one encrypted output.
    pub download_bytes: usize,
}

impl OpCounts {
    /// What one sample of `program` costs under `params` (byte counts are estimates: payload plus ~200 bytes of
    /// serialization header; reports quote measured sizes beside them).
    pub fn of(program: &IntegerProgram, params: ParameterSet) -> Self {
        let nnz = program.weights.iter().filter(|&&w| w != 0).count();
        let header = 200; // measured safe-serialization header + metadata, order of magnitude
        OpCounts {
            bootstraps: program.neurons,
            keyswitches: 0,
            multiply_adds: nnz * (params.lwe_dimension() + 1),
            upload_bytes: program.input_dim * 8 + header,
            download_bytes: program.outputs() * (params.big_lwe_dimension() + 1) * 4 + header,
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
        OpCounts::of(&self.program, self.params)
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
        self.activations_within(accumulators, &Deadline::none())
    }

    /// [`Self::activations`], stopping early (with outputs left unfinished) once `deadline` has passed; the
    /// caller asks `deadline.passed()` (did any worker stop?) before using the result.
    fn activations_within(&self, accumulators: &[u64], deadline: &Deadline) -> Vec<u64> {
        match &self.bsk {
            FourierKey::Classic(bsk) => self.classic_activations(accumulators, bsk, deadline),
            FourierKey::MultiBit(bsk) => self.multi_bit_activations(accumulators, bsk, deadline),
        }
    }

    fn classic_activations(&self, accumulators: &[u64], bsk: &FourierLweBootstrapKeyOwned, deadline: &Deadline) -> Vec<u64> {
        let p = self.params.tfhe();
        let (size, big) = (self.params.lwe_dimension() + 1, self.params.big_lwe_dimension() + 1);
        let log_modulus = p.polynomial_size.to_blind_rotation_input_modulus_log();
        let count = accumulators.len() / size;
        let mut out = vec![0u64; count * big];
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
        let per = count.div_ceil(rayon::current_num_threads().max(1)).max(1);
        out.par_chunks_mut(per * big).zip(accumulators.par_chunks(per * size)).enumerate().for_each(|(g, (outs, accs))| {
            let (fft, mut buffers) = scratch();
            for (i, (o, a)) in outs.chunks_mut(big).zip(accs.chunks(size)).enumerate() {
                if deadline.check() {
                    return;
                }
                let input = LweCiphertext::from_container(a, p.ciphertext_modulus);
                let switched = lwe_ciphertext_centered_binary_modulus_switch::<u64, usize, _>(input, log_modulus);
                let mut lut = self.luts[(g * per + i) % self.program.neurons].clone();
                blind_rotate_assign_mem_optimized(&switched, &mut lut, bsk, fft.as_view(), buffers.stack());
                let mut output = LweCiphertext::from_container(o, p.ciphertext_modulus);
                extract_lwe_sample_from_glwe_ciphertext(&lut, &mut output, MonomialDegree(0));
            }
        });
        out
    }

    fn multi_bit_activations(&self, accumulators: &[u64], bsk: &FourierLweMultiBitBootstrapKeyOwned, deadline: &Deadline) -> Vec<u64> {
        let p = self.params.tfhe();
        let (size, big) = (self.params.lwe_dimension() + 1, self.params.big_lwe_dimension() + 1);
        let (glwe_size, poly) = (p.glwe_dimension.to_glwe_size(), p.polynomial_size);
        let log_modulus = poly.to_blind_rotation_input_modulus_log();
        let g = bsk.grouping_factor();
        let per_group = g.ggsw_per_multi_bit_element().0;
        let ggsws: Vec<FourierGgswCiphertext<&[c64]>> = bsk.ggsw_iter().collect();
        let scratch = || {
            let fft = Fft::new(poly);
            let mut buffers = ComputationBuffers::new();
            buffers.resize(add_external_product_assign_scratch::<u64>(glwe_size, poly, fft.as_view()).unaligned_bytes_required());
            let ggsw = FourierGgswCiphertext::new(glwe_size, poly, p.pbs_base_log, p.pbs_level);
            // The 2^g - 1 monomials of one ciphertext's group, in the Fourier domain.
            let monomials = vec![c64::default(); (per_group - 1) * poly.to_fourier_polynomial_size().0];
            let tmp = GlweCiphertext::new(0u64, glwe_size, poly, p.ciphertext_modulus);
            (fft, buffers, ggsw, monomials, tmp)
        };
        // Batches of MULTI_BIT_BATCH bootstraps (neurons of one sample or of several), smaller when there are too
        // few to give every thread one.
        let count = accumulators.len() / size;
        let batch_size = MULTI_BIT_BATCH.min(count.div_ceil(rayon::current_num_threads().max(1))).max(1);
        let mut out = vec![0u64; count * big];
        out.par_chunks_mut(batch_size * big).zip(accumulators.par_chunks(batch_size * size)).enumerate().for_each_init(
            scratch,
            |(fft, buffers, ggsw, monomials, tmp), (batch, (outs, accs))| {
                // Rotate each lookup table by its rounded body, then fold in the mask group by group.
                let mut luts: Vec<GlweCiphertextOwned<u64>> = accs
                    .chunks(size)
                    .enumerate()
                    .map(|(i, a)| {
                        let mut lut = self.luts[(batch * batch_size + i) % self.program.neurons].clone();
                        let body: usize = modulus_switch(a[size - 1], log_modulus) as usize;
                        for mut poly in lut.as_mut_polynomial_list().iter_mut() {
                            polynomial_wrapping_monic_monomial_div_assign(&mut poly, MonomialDegree(body));
                        }
                        lut
                    })
                    .collect();
                for (w, group_ggsws) in ggsws.chunks_exact(per_group).enumerate() {
                    if deadline.check() {
                        return;
                    }
                    for (a, lut) in accs.chunks(size).zip(luts.iter_mut()) {
                        let degrees = modulus_switch_multi_bit(log_modulus, g, &a[w * g.0..(w + 1) * g.0]);
                        fold_group(ggsw, group_ggsws, degrees, monomials, fft.as_view());
                        tmp.as_mut().fill(0);
                        add_external_product_assign(tmp.as_mut_view(), ggsw.as_view(), lut.as_view(), fft.as_view(), buffers.stack());
                        std::mem::swap(lut, tmp);
                    }
                }
                for (o, lut) in outs.chunks_mut(big).zip(&luts) {
                    let mut output = LweCiphertext::from_container(o, p.ciphertext_modulus);
                    extract_lwe_sample_from_glwe_ciphertext(lut, &mut output, MonomialDegree(0));
                }
            },
        );
        out
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
        Ok(acts
            .chunks(neurons * big)
            .map(|acts| {
                let mut data = vec![0u32; outputs * big];
                for (k, o) in data.chunks_mut(big).enumerate() {
                    for (w, out) in o.iter_mut().enumerate() {
                        let sum = (0..pool).fold(0u64, |s, t| s.wrapping_add(acts[(k + t) * big + w]));
                        // Modulus switch 2^64 -> 2^32 with rounding.
                        *out = (sum.wrapping_add(1 << 31) >> 32) as u32;
                    }
                }
                EncryptedOutput { key_id: self.key_id, parameter_set: self.params.name().into(), count: outputs as u64, data }
            })
            .collect())
    }
}

/// When a batch must stop. Checked by every worker between bootstrap steps; once one has seen it pass, all stop.
struct Deadline {
    at: Option<Instant>,
    passed: AtomicBool,
}

impl Deadline {
    fn none() -> Self {
        Self { at: None, passed: AtomicBool::new(false) }
    }

    fn after(limit: Option<Duration>) -> Self {
        Self { at: limit.map(|l| Instant::now() + l), passed: AtomicBool::new(false) }
    }

    /// Whether the work should stop now (and remember it).
    fn check(&self) -> bool {
        if self.passed.load(Ordering::Relaxed) {
            return true;
        }
        let over = self.at.is_some_and(|at| Instant::now() >= at);
        if over {
            self.passed.store(true, Ordering::Relaxed);
        }
        over
    }

    /// Whether some worker stopped (the work is unfinished). A batch that finished just before its deadline did not.
    fn passed(&self) -> bool {
        self.passed.load(Ordering::Relaxed)
    }
}

/// Fold one group's 2^g Fourier GGSWs into `out` for one ciphertext: `out = G_0 + sum_j X^(d_j) G_j`, where
/// `d_j` is the ciphertext's rounded subset sum for subset j (`degrees`, from `modulus_switch_multi_bit`).
///
/// What tfhe-rs's `prepare_multi_bit_ggsw_mem_optimized` computes, with two differences that make it cheaper: each
/// monomial's Fourier transform is scaled by its factor once, up front (tfhe-rs multiplies every GGSW coefficient
/// by both: two complex products per coefficient instead of one), and each output polynomial is finished in L1
/// before the next (tfhe-rs sweeps the whole output once per subset). The multi-bit tests compare the result
/// with the clear-integer oracle, so a wrong fold fails them.
fn fold_group(
    out: &mut FourierGgswCiphertext<impl ContainerMut<Element = c64>>,
    group: &[FourierGgswCiphertext<&[c64]>],
    degrees: impl Iterator<Item = usize>,
    monomials: &mut [c64],
    fft: FftView<'_>,
) {
    let half = fft.polynomial_size().to_fourier_polynomial_size().0;
    let mut factors = [c64::default(); 16];
    for ((mono, degree), factor) in monomials.chunks_exact_mut(half).zip(degrees).zip(factors.iter_mut()) {
        *factor = fft.incomplete_monomial_forward_as_integer(FourierPolynomial { data: &mut *mono }, degree);
    }
    struct Fold<'a> {
        out: &'a mut [c64],
        group: &'a [FourierGgswCiphertext<&'a [c64]>],
        monomials: &'a mut [c64],
        factors: &'a [c64],
        half: usize,
    }
    impl pulp::WithSimd for Fold<'_> {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, simd: S) {
            let Fold { out, group, monomials, factors, half } = self;
            for (mono, &factor) in monomials.chunks_exact_mut(half).zip(factors) {
                let factor = simd.splat_c64s(factor);
                for z in S::as_mut_simd_c64s(mono).0 {
                    *z = simd.mul_c64s(factor, *z);
                }
            }
            let monomials = &*monomials;
            for (p, o) in out.chunks_exact_mut(half).enumerate() {
                let range = p * half..(p + 1) * half;
                o.copy_from_slice(&group[0].as_view().data()[range.clone()]);
                let o = S::as_mut_simd_c64s(o).0;
                for (ggsw, mono) in group[1..].iter().zip(monomials.chunks_exact(half)) {
                    let gj = S::as_simd_c64s(&ggsw.as_view().data()[range.clone()]).0;
                    let mj = S::as_simd_c64s(mono).0;
                    for ((o, &g), &m) in o.iter_mut().zip(gj).zip(mj) {
                        *o = simd.mul_add_c64s(g, m, *o);
                    }
                }
            }
        }
    }
    assert!(group.len() <= factors.len() + 1, "grouping factor above 4");
    pulp::Arch::new().dispatch(Fold { out: out.as_mut_view().data(), group, monomials, factors: &factors, half });
}
