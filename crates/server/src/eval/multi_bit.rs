//! Multi-bit programmable bootstraps: our blind rotation from tfhe-rs's parts, [`MULTI_BIT_BATCH`] ciphertexts at
//! a time, group-major, with our own fold of each group's GGSWs ([`fold_group`]).

use rayon::prelude::*;
use tfhe::core_crypto::algorithms::polynomial_algorithms::polynomial_wrapping_monic_monomial_div_assign;
use tfhe::core_crypto::fft_impl::common::modulus_switch;
use tfhe::core_crypto::fft_impl::fft64::c64;
use tfhe::core_crypto::fft_impl::fft64::crypto::ggsw::{
    FourierGgswCiphertext, add_external_product_assign, add_external_product_assign_scratch,
};
use tfhe::core_crypto::fft_impl::fft64::math::polynomial::FourierPolynomial;
use tfhe::core_crypto::prelude::*;

use super::Evaluator;
use super::deadline::Deadline;

/// Multi-bit bootstraps run together, group-major, on one thread. A multi-bit key is large (157 MB in the Fourier
/// domain for `MULTI_BIT_GROUP_3_MESSAGE_1_CARRY_1`) and each group's 2^g GGSWs are folded into one per
/// ciphertext, so one bootstrap at a time is bound by memory traffic: 12-13 ms per bootstrap on two cores here,
/// against 5.7-5.8 ms in batches of 16 (`cargo run --release --example pbs_throughput`; 8: 7.4-8.3 ms, 32: noisier).
pub const MULTI_BIT_BATCH: usize = 16;

/// Bootstraps per batch for `count` of them on `threads` threads: at most [`MULTI_BIT_BATCH`], and as even as
/// it can be over the threads. The batches are made a multiple of the threads in number, then as equal in size as
/// that allows: 208 bootstraps (13 neurons x 16 samples) on 2 threads make 14 batches of at most 15 (7 a thread),
/// not 13 of 16 (7 on one thread, 6 on the other, which idles for a fourteenth of the pass).
///
/// ```
/// use cryptotl_server::eval::multi_bit_batch_size as batch_size;
/// assert_eq!(batch_size(208, 2), 15); // 14 batches, 7 a thread
/// assert_eq!(batch_size(256, 2), 16); // 16 batches of 16
/// assert_eq!(batch_size(13, 2), 7); // one sample: two batches
/// assert_eq!(batch_size(1, 8), 1);
/// ```
pub fn multi_bit_batch_size(count: usize, threads: usize) -> usize {
    let threads = threads.max(1);
    let rounds = count.div_ceil(threads * MULTI_BIT_BATCH).max(1);
    count.div_ceil(threads * rounds).clamp(1, MULTI_BIT_BATCH)
}

impl Evaluator {
    pub(super) fn multi_bit_activations(&self, accumulators: &[u64], bsk: &FourierLweMultiBitBootstrapKeyOwned, deadline: &Deadline) -> Vec<u64> {
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
        let count = accumulators.len() / size;
        let batch_size = multi_bit_batch_size(count, rayon::current_num_threads());
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every count of bootstraps on every thread count: batches of 1..=16, as few rounds per thread as batches of
    /// 16 would need, and never an idle thread while another has two batches left.
    #[test]
    fn batches_are_even_over_the_threads_and_never_above_the_limit() {
        for threads in [1usize, 2, 3, 4, 8] {
            for count in 1..=700usize {
                let b = multi_bit_batch_size(count, threads);
                assert!((1..=MULTI_BIT_BATCH).contains(&b), "{count} on {threads}: {b}");
                let batches = count.div_ceil(b);
                let rounds = count.div_ceil(threads * MULTI_BIT_BATCH);
                assert!(batches.div_ceil(threads) <= rounds.max(1), "{count} on {threads}: {batches} batches of {b}");
                // No more batches than it takes (each but the last one full).
                assert!(batches == 1 || (batches - 1) * b < count);
            }
        }
    }
}
