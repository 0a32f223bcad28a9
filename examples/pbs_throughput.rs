//! How many programmable bootstraps per second this machine does, per tfhe-rs vetted parameter set: classic
//! (`blind_rotate_assign_mem_optimized`) and multi-bit (one thread per bootstrap, ciphertexts spread over the
//! cores with rayon, as the server does with neurons). Each set is also checked for correctness: an identity
//! lookup on random 4-bit messages must decrypt exactly.
//!
//! `cargo run --release --example pbs_throughput [bootstraps per set, default 64]`

use std::time::Instant;

use rayon::prelude::*;
use tfhe::core_crypto::fft_impl::common::modulus_switch;
use tfhe::core_crypto::fft_impl::fft64::crypto::ggsw::{add_external_product_assign, add_external_product_assign_scratch};
use tfhe::core_crypto::algorithms::polynomial_algorithms::polynomial_wrapping_monic_monomial_div_assign;
use tfhe::core_crypto::commons::math::random::Seed;
use tfhe::core_crypto::fft_impl::fft64::crypto::ggsw::FourierGgswCiphertext;
use tfhe::core_crypto::fft_impl::fft64::math::polynomial::FourierPolynomial;
use tfhe::core_crypto::prelude::*;
use tfhe::shortint::parameters::v1_8::*;
use cryptotl_server::TfheParameters;
use tfhe::shortint::parameters::{ClassicPBSParameters, MultiBitPBSParameters};

const MSG_BITS: u32 = 4;

struct Common {
    n: usize,
    k: usize,
    big_n: usize,
    lwe_noise: DynamicDistribution<u64>,
    glwe_noise: DynamicDistribution<u64>,
    base: usize,
    level: usize,
}

impl From<TfheParameters> for Common {
    fn from(p: TfheParameters) -> Self {
        Self {
            n: p.lwe_dimension.0,
            k: p.glwe_dimension.0,
            big_n: p.polynomial_size.0,
            lwe_noise: p.lwe_noise_distribution,
            glwe_noise: p.glwe_noise_distribution,
            base: p.pbs_base_log.0,
            level: p.pbs_level.0,
        }
    }
}

/// Rotate a lookup table by the rounded body of `input` (the first step of every blind rotation here).
fn rotate_by_body(acc: &mut GlweCiphertextOwned<u64>, input: &[u64]) {
    let log_modulus = acc.polynomial_size().to_blind_rotation_input_modulus_log();
    let b: usize = modulus_switch(input[input.len() - 1], log_modulus) as usize;
    for mut poly in acc.as_mut_polynomial_list().iter_mut() {
        polynomial_wrapping_monic_monomial_div_assign(&mut poly, MonomialDegree(b));
    }
}

/// The constant coefficient of a rotated table, as an LWE ciphertext under the big key.
fn extract(c: &Common, acc: &GlweCiphertextOwned<u64>) -> LweCiphertextOwned<u64> {
    let mut out = LweCiphertext::new(0u64, LweSize(c.k * c.big_n + 1), CiphertextModulus::new_native());
    extract_lwe_sample_from_glwe_ciphertext(acc, &mut out, MonomialDegree(0));
    out
}

fn keys(c: &Common, seed: u128) -> (LweSecretKeyOwned<u64>, GlweSecretKeyOwned<u64>, EncryptionRandomGenerator<DefaultRandomGenerator>) {
    let mut seeder = new_seeder();
    let mut sg = SecretRandomGenerator::<DefaultRandomGenerator>::new(Seed(seed));
    let small = LweSecretKey::generate_new_binary(LweDimension(c.n), &mut sg);
    let glwe = GlweSecretKey::generate_new_binary(GlweDimension(c.k), PolynomialSize(c.big_n), &mut sg);
    let eg = EncryptionRandomGenerator::<DefaultRandomGenerator>::new(seeder.as_mut().seed(), seeder.as_mut());
    (small, glwe, eg)
}

fn lut(c: &Common) -> GlweCiphertextOwned<u64> {
    let delta = (1u64 << 63) >> MSG_BITS;
    generate_programmable_bootstrap_glwe_lut(
        PolynomialSize(c.big_n),
        GlweSize(c.k + 1),
        1 << MSG_BITS,
        CiphertextModulus::new_native(),
        delta,
        |x: u64| x,
    )
}

fn inputs(c: &Common, sk: &LweSecretKeyOwned<u64>, eg: &mut EncryptionRandomGenerator<DefaultRandomGenerator>, count: usize) -> (Vec<u64>, Vec<LweCiphertextOwned<u64>>) {
    let delta = (1u64 << 63) >> MSG_BITS;
    let msgs: Vec<u64> = (0..count as u64).map(|i| (i * 7 + 3) % (1 << MSG_BITS)).collect();
    let cts = msgs
        .iter()
        .map(|&m| allocate_and_encrypt_new_lwe_ciphertext(sk, Plaintext(m * delta), c.lwe_noise, CiphertextModulus::new_native(), eg))
        .collect();
    (msgs, cts)
}

fn check(name: &str, big: &LweSecretKeyOwned<u64>, msgs: &[u64], outs: &[LweCiphertextOwned<u64>]) -> usize {
    let delta = (1u64 << 63) >> MSG_BITS;
    let dec = SignedDecomposer::<u64>::new(DecompositionBaseLog(MSG_BITS as usize + 1), DecompositionLevelCount(1));
    let wrong = msgs.iter().zip(outs).filter(|(m, o)| dec.closest_representable(decrypt_lwe_ciphertext(big, o).0) / delta != **m).count();
    if wrong > 0 {
        eprintln!("{name}: {wrong} wrong lookups of {}", msgs.len());
    }
    let var = msgs.iter().zip(outs).map(|(m, o)| (decrypt_lwe_ciphertext(big, o).0.wrapping_sub(m * delta) as i64 as f64).powi(2)).sum::<f64>() / msgs.len() as f64;
    eprintln!("{name}: bootstrap output noise std 2^{:.2} (of 2^64)", var.sqrt().log2());
    wrong
}

fn classic(name: &str, p: ClassicPBSParameters, count: usize) {
    let c = Common::from(TfheParameters::from(p));
    let (small, glwe, mut eg) = keys(&c, 1);
    let mut bsk = LweBootstrapKey::new(0u64, GlweSize(c.k + 1), PolynomialSize(c.big_n), DecompositionBaseLog(c.base), DecompositionLevelCount(c.level), LweDimension(c.n), CiphertextModulus::new_native());
    par_generate_lwe_bootstrap_key(&small, &glwe, &mut bsk, c.glwe_noise, &mut eg);
    let mut fbsk = FourierLweBootstrapKey::new(LweDimension(c.n), GlweSize(c.k + 1), PolynomialSize(c.big_n), DecompositionBaseLog(c.base), DecompositionLevelCount(c.level));
    par_convert_standard_lwe_bootstrap_key_to_fourier(&bsk, &mut fbsk);
    let key_mb = fbsk.as_view().data().len() * 16 / 1_000_000;
    let (msgs, cts) = inputs(&c, &small, &mut eg, count);
    let big = glwe.clone().into_lwe_secret_key();
    let lut0 = lut(&c);
    let log_modulus = PolynomialSize(c.big_n).to_blind_rotation_input_modulus_log();
    let run = || -> Vec<LweCiphertextOwned<u64>> {
        cts.par_iter()
            .map_init(
                || {
                    let fft = Fft::new(PolynomialSize(c.big_n));
                    let mut b = ComputationBuffers::new();
                    b.resize(blind_rotate_assign_mem_optimized_requirement::<u64>(GlweSize(c.k + 1), PolynomialSize(c.big_n), fft.as_view()).unaligned_bytes_required());
                    (fft, b)
                },
                |(fft, b), ct| {
                    let switched = lwe_ciphertext_centered_binary_modulus_switch::<u64, usize, _>(ct.as_view(), log_modulus);
                    let mut acc = lut0.clone();
                    blind_rotate_assign_mem_optimized(&switched, &mut acc, &fbsk, fft.as_view(), b.stack());
                    extract(&c, &acc)
                },
            )
            .collect()
    };
    report(name, &c, key_mb, count, run, &big, &msgs);
}

fn report(name: &str, c: &Common, key_mb: usize, count: usize, run: impl Fn() -> Vec<LweCiphertextOwned<u64>>, big: &LweSecretKeyOwned<u64>, msgs: &[u64]) {
    let _warm = run();
    let mut times = Vec::new();
    let mut outs = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        outs = run();
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let dt = times[1];
    let min = times[0];
    let wrong = check(name, big, msgs, &outs);
    println!(
        "{name:<48} n={:<5} k={} N={:<5} l={} fourier key {key_mb:>4} MB  {:>6.2} ms/PBS (2 cores, median of 3; min {:.2})  wrong {wrong}/{count}",
        c.n,
        c.k,
        c.big_n,
        c.level,
        dt * 1e3 / count as f64,
        min * 1e3 / count as f64
    );
}

/// One multi-bit blind rotation on one thread: per group of g mask elements, fold the 2^g GGSWs of the group
/// into one (monomials in the Fourier domain), then one external product.
#[allow(clippy::too_many_arguments)]
fn multi_bit_blind_rotate<B: ContainerMut<Element = c64>, M: ContainerMut<Element = c64>>(
    input: &[u64],
    acc: &mut GlweCiphertextOwned<u64>,
    tmp: &mut GlweCiphertextOwned<u64>,
    ggsws: &[FourierGgswCiphertext<&[c64]>],
    g: LweBskGroupingFactor,
    ggsw_buf: &mut FourierGgswCiphertext<B>,
    mono: &mut FourierPolynomial<M>,
    fft: FftView<'_>,
    stack: &mut PodStack,
) {
    let log_modulus = acc.polynomial_size().to_blind_rotation_input_modulus_log();
    let mask = &input[..input.len() - 1];
    rotate_by_body(acc, input);
    let per = g.ggsw_per_multi_bit_element().0;
    for (w, group) in mask.chunks_exact(g.0).enumerate() {
        let degrees = modulus_switch_multi_bit(log_modulus, g, group);
        prepare_multi_bit_ggsw_mem_optimized(ggsw_buf, &ggsws[w * per..(w + 1) * per], degrees, mono, fft);
        tmp.as_mut().fill(0);
        add_external_product_assign(tmp.as_mut_view(), ggsw_buf.as_view(), acc.as_view(), fft, stack);
        std::mem::swap(acc, tmp);
    }
}

use tfhe::core_crypto::fft_impl::fft64::c64;

/// Per-thread scratch of a multi-bit blind rotation: FFT plan, external-product buffers, the folded GGSW, a
/// monomial, a spare accumulator.
macro_rules! multi_bit_scratch {
    ($c:expr) => {{
        let (glwe, poly) = (GlweSize($c.k + 1), PolynomialSize($c.big_n));
        let fft = Fft::new(poly);
        let mut b = ComputationBuffers::new();
        b.resize(add_external_product_assign_scratch::<u64>(glwe, poly, fft.as_view()).unaligned_bytes_required());
        let ggsw_buf = FourierGgswCiphertext::new(glwe, poly, DecompositionBaseLog($c.base), DecompositionLevelCount($c.level));
        (fft, b, ggsw_buf, FourierPolynomial::new(poly), GlweCiphertext::new(0u64, glwe, poly, CiphertextModulus::new_native()))
    }};
}

/// As [`multi_bit_blind_rotate`] for several ciphertexts at once, group-major: each group's GGSWs are read from
/// memory once per batch instead of once per ciphertext.
#[allow(clippy::too_many_arguments)]
fn multi_bit_blind_rotate_batch<B: ContainerMut<Element = c64>, M: ContainerMut<Element = c64>>(
    inputs: &[&[u64]],
    accs: &mut [GlweCiphertextOwned<u64>],
    tmp: &mut GlweCiphertextOwned<u64>,
    ggsws: &[FourierGgswCiphertext<&[c64]>],
    g: LweBskGroupingFactor,
    ggsw_buf: &mut FourierGgswCiphertext<B>,
    mono: &mut FourierPolynomial<M>,
    fft: FftView<'_>,
    stack: &mut PodStack,
) {
    let log_modulus = accs[0].polynomial_size().to_blind_rotation_input_modulus_log();
    for (input, acc) in inputs.iter().zip(accs.iter_mut()) {
        rotate_by_body(acc, input);
    }
    let per = g.ggsw_per_multi_bit_element().0;
    let groups = (inputs[0].len() - 1) / g.0;
    for w in 0..groups {
        for (input, acc) in inputs.iter().zip(accs.iter_mut()) {
            let degrees = modulus_switch_multi_bit(log_modulus, g, &input[w * g.0..(w + 1) * g.0]);
            prepare_multi_bit_ggsw_mem_optimized(ggsw_buf, &ggsws[w * per..(w + 1) * per], degrees, mono, fft);
            tmp.as_mut().fill(0);
            add_external_product_assign(tmp.as_mut_view(), ggsw_buf.as_view(), acc.as_view(), fft, stack);
            std::mem::swap(acc, tmp);
        }
    }
}

fn multi_bit(name: &str, p: MultiBitPBSParameters, count: usize) {
    let c = Common::from(TfheParameters::from(p));
    let g = p.grouping_factor;
    let (small, glwe, mut eg) = keys(&c, 2);
    let mut bsk = LweMultiBitBootstrapKey::new(0u64, GlweSize(c.k + 1), PolynomialSize(c.big_n), DecompositionBaseLog(c.base), DecompositionLevelCount(c.level), LweDimension(c.n), g, CiphertextModulus::new_native());
    par_generate_lwe_multi_bit_bootstrap_key(&small, &glwe, &mut bsk, c.glwe_noise, &mut eg);
    let mut fbsk = FourierLweMultiBitBootstrapKey::new(LweDimension(c.n), GlweSize(c.k + 1), PolynomialSize(c.big_n), DecompositionBaseLog(c.base), DecompositionLevelCount(c.level), g);
    par_convert_standard_lwe_multi_bit_bootstrap_key_to_fourier(&bsk, &mut fbsk);
    drop(bsk);
    let key_mb = fbsk.as_view().data().len() * 16 / 1_000_000;
    let ggsws: Vec<_> = fbsk.ggsw_iter().collect();
    let (msgs, cts) = inputs(&c, &small, &mut eg, count);
    let big = glwe.clone().into_lwe_secret_key();
    let lut0 = lut(&c);
    let run = || -> Vec<LweCiphertextOwned<u64>> {
        cts.par_iter()
            .map_init(
                || {
                    multi_bit_scratch!(c)
                },
                |(fft, b, ggsw_buf, mono, tmp), ct| {
                    let mut acc = lut0.clone();
                    multi_bit_blind_rotate(ct.as_ref(), &mut acc, tmp, &ggsws, g, ggsw_buf, mono, fft.as_view(), b.stack());
                    extract(&c, &acc)
                },
            )
            .collect()
    };
    report(name, &c, key_mb, count, run, &big, &msgs);
    let batch: usize = std::env::var("BATCH").ok().and_then(|s| s.parse().ok()).unwrap_or(8);
    let run_batched = || -> Vec<LweCiphertextOwned<u64>> {
        cts.par_chunks(batch)
            .map_init(
                || {
                    multi_bit_scratch!(c)
                },
                |(fft, b, ggsw_buf, mono, tmp), chunk| {
                    let inputs: Vec<&[u64]> = chunk.iter().map(|ct| ct.as_ref()).collect();
                    let mut accs = vec![lut0.clone(); chunk.len()];
                    multi_bit_blind_rotate_batch(&inputs, &mut accs, tmp, &ggsws, g, ggsw_buf, mono, fft.as_view(), b.stack());
                    accs.iter()
                        .map(|acc| extract(&c, acc))
                        .collect::<Vec<_>>()
                },
            )
            .flatten()
            .collect()
    };
    report(&format!("{name} batch {batch}"), &c, key_mb, count, run_batched, &big, &msgs);
    // Row-blocked fold: each group's GGSWs are cut into k + 1 blocks of polynomials small enough to stay in L2 while
    // the whole batch folds them; the batch's folded GGSWs are kept, then the external products run.
    let key_data: &[c64] = fbsk.as_view().data();
    let run_rows = || -> Vec<LweCiphertextOwned<u64>> {
        let poly = c.big_n / 2;
        let glwe = GlweSize(c.k + 1);
        let ggsw_len = c.level * glwe.0 * glwe.0 * poly;
        let blocks = glwe.0;
        let block_len = ggsw_len / blocks;
        let per = g.ggsw_per_multi_bit_element().0;
        let log_modulus = PolynomialSize(c.big_n).to_blind_rotation_input_modulus_log();
        cts.par_chunks(batch)
            .map_init(
                || {
                    let fft = Fft::new(PolynomialSize(c.big_n));
                    let mut b = ComputationBuffers::new();
                    b.resize(add_external_product_assign_scratch::<u64>(glwe, PolynomialSize(c.big_n), fft.as_view()).unaligned_bytes_required());
                    let bufs: Vec<_> = (0..batch).map(|_| FourierGgswCiphertext::new(glwe, PolynomialSize(c.big_n), DecompositionBaseLog(c.base), DecompositionLevelCount(c.level))).collect();
                    let mono = FourierPolynomial::new(PolynomialSize(c.big_n));
                    let tmp = GlweCiphertext::new(0u64, glwe, PolynomialSize(c.big_n), CiphertextModulus::new_native());
                    (fft, b, bufs, mono, tmp)
                },
                |(fft, stack, bufs, mono, tmp), chunk| {
                    let mut accs = vec![lut0.clone(); chunk.len()];
                    for (ct, acc) in chunk.iter().zip(accs.iter_mut()) {
                        rotate_by_body(acc, ct.as_ref());
                    }
                    for w in 0..c.n / g.0 {
                        let group = &key_data[w * per * ggsw_len..(w + 1) * per * ggsw_len];
                        for r in 0..blocks {
                            let sub: Vec<FourierGgswCiphertext<&[c64]>> = (0..per)
                                .map(|j| {
                                    let start = j * ggsw_len + r * block_len;
                                    FourierGgswCiphertext::from_container(&group[start..start + block_len], GlweSize(1), PolynomialSize(c.big_n), DecompositionBaseLog(c.base), DecompositionLevelCount(block_len / poly))
                                })
                                .collect();
                            for (ct, buf) in chunk.iter().zip(bufs.iter_mut()) {
                                let degrees = modulus_switch_multi_bit(log_modulus, g, &ct.as_ref()[w * g.0..(w + 1) * g.0]);
                                let data = buf.as_mut_view().data();
                                let mut out = FourierGgswCiphertext::from_container(&mut data[r * block_len..(r + 1) * block_len], GlweSize(1), PolynomialSize(c.big_n), DecompositionBaseLog(c.base), DecompositionLevelCount(block_len / poly));
                                prepare_multi_bit_ggsw_mem_optimized(&mut out, &sub, degrees, mono, fft.as_view());
                            }
                        }
                        for (acc, buf) in accs.iter_mut().zip(bufs.iter()) {
                            tmp.as_mut().fill(0);
                            add_external_product_assign(tmp.as_mut_view(), buf.as_view(), acc.as_view(), fft.as_view(), stack.stack());
                            std::mem::swap(acc, tmp);
                        }
                    }
                    accs.iter()
                        .map(|acc| extract(&c, acc))
                        .collect::<Vec<_>>()
                },
            )
            .flatten()
            .collect()
    };
    report(&format!("{name} row-blocked {batch}"), &c, key_mb, count, run_rows, &big, &msgs);
    // Lockstep: one batch at a time, both threads on the same group (the group's GGSWs are read once for both).
    let log_modulus = PolynomialSize(c.big_n).to_blind_rotation_input_modulus_log();
    let per = g.ggsw_per_multi_bit_element().0;
    let threads = rayon::current_num_threads();
    let run_lockstep = || -> Vec<LweCiphertextOwned<u64>> {
        let mut out = Vec::new();
        let mut scratch: Vec<_> = (0..threads)
            .map(|_| {
                multi_bit_scratch!(c)
            })
            .collect();
        for chunk in cts.chunks(batch) {
            let mut accs = vec![lut0.clone(); chunk.len()];
            for (ct, acc) in chunk.iter().zip(accs.iter_mut()) {
                rotate_by_body(acc, ct.as_ref());
            }
            let share = chunk.len().div_ceil(threads);
            for w in 0..c.n / g.0 {
                accs.par_chunks_mut(share).zip(chunk.par_chunks(share)).zip(scratch.par_iter_mut()).for_each(|((accs, cts), (fft, b, ggsw_buf, mono, tmp))| {
                    for (acc, ct) in accs.iter_mut().zip(cts) {
                        let degrees = modulus_switch_multi_bit(log_modulus, g, &ct.as_ref()[w * g.0..(w + 1) * g.0]);
                        prepare_multi_bit_ggsw_mem_optimized(ggsw_buf, &ggsws[w * per..(w + 1) * per], degrees, mono, fft.as_view());
                        tmp.as_mut().fill(0);
                        add_external_product_assign(tmp.as_mut_view(), ggsw_buf.as_view(), acc.as_view(), fft.as_view(), b.stack());
                        std::mem::swap(acc, tmp);
                    }
                });
            }
            out.extend(accs.iter().map(|acc| extract(&c, acc)));
        }
        out
    };
    report(&format!("{name} lockstep {batch}"), &c, key_mb, count, run_lockstep, &big, &msgs);
}

fn main() {
    let count: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(64);
    let only = std::env::args().nth(2).unwrap_or_default();
    let want = |s: &str| only.is_empty() || s.contains(&only);
    let classic_sets = [
        ("classic MESSAGE_2_CARRY_2 (C22)", V1_8_PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128),
        ("classic MESSAGE_1_CARRY_1 (C11)", V1_8_PARAM_MESSAGE_1_CARRY_1_KS_PBS_TUNIFORM_2M128),
    ];
    let multi_bit_sets = [
        ("multi-bit group 4 MESSAGE_1_CARRY_1 (M4_11)", V1_8_PARAM_MULTI_BIT_GROUP_4_MESSAGE_1_CARRY_1_KS_PBS_TUNIFORM_2M128),
        ("multi-bit group 3 MESSAGE_1_CARRY_1 (M3_11)", V1_8_PARAM_MULTI_BIT_GROUP_3_MESSAGE_1_CARRY_1_KS_PBS_TUNIFORM_2M128),
        ("multi-bit group 2 MESSAGE_1_CARRY_1 (M2_11)", V1_8_PARAM_MULTI_BIT_GROUP_2_MESSAGE_1_CARRY_1_KS_PBS_TUNIFORM_2M128),
        ("multi-bit group 4 MESSAGE_2_CARRY_2 (M4_22)", V1_8_PARAM_MULTI_BIT_GROUP_4_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128),
        ("multi-bit group 3 MESSAGE_2_CARRY_2 (M3_22)", V1_8_PARAM_MULTI_BIT_GROUP_3_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128),
    ];
    // The second argument picks sets by their tag, e.g. `M3_11`.
    for (name, p) in classic_sets.into_iter().filter(|(name, _)| want(name)) {
        classic(name, p, count);
    }
    for (name, p) in multi_bit_sets.into_iter().filter(|(name, _)| want(name)) {
        multi_bit(name, p, count);
    }
}
