//! What packing the server's outputs into one GLWE ciphertext would cost: a measured design probe, not a feature.
//!
//! Today every output of the encrypted network goes back as its own LWE ciphertext under the big key (2,049 words,
//! modulus-switched to 17 bits: 55.4 KiB a quickstart sample, 17 times its upload). tfhe-rs can key-switch a list of
//! LWE ciphertexts into the coefficients of one GLWE ciphertext (`par_keyswitch_lwe_ciphertext_list_and_pack_in_glwe_ciphertext`,
//! the step behind its own list compression), which would shrink the download by two orders of magnitude at the
//! price of a packing key sent once and some server time per output. This probe measures that price with the
//! shipped parameter set's big key (GLWE k = 2, N = 1024, flattened to LWE dimension 2,048) and 7-bit outputs
//! (delta 2^56, the shipped encoding), for one sample's 13 outputs and for a batch of 16 samples (208):
//! key size, packing time, and the largest decryption error in output levels (0.5 or more decodes wrongly).
//!
//! `cargo run --release --example output_packing`
//!
//! Candidates: packing into a GLWE of the PBS's own shape and noise (k = 2, N = 1024, TUniform 2^17, a fresh key:
//! the same 128-bit estimate as the parameter set's own GLWE), one or two decomposition levels; and the shape
//! tfhe-rs's list compression packs into (k = 4, N = 256, TUniform 2^43) with its base 2^4 or coarser. The numbers and
//! what they imply are in docs/two-parties.md ("Why the outputs are not packed").

use std::time::Instant;

use cryptotl_server::{ParameterSet, ProgramInterface};
use tfhe::core_crypto::prelude::*;

/// The quickstart's parameter set (`configs/quickstart.toml`).
const SHIPPED_SET: &str = "V1_8_PARAM_MULTI_BIT_GROUP_3_MESSAGE_1_CARRY_1_KS_PBS_TUNIFORM_2M128";

/// The quickstart network's interface: 13 outputs of 7 bits below one bit of padding.
const SHIPPED_OUTPUTS: ProgramInterface =
    ProgramInterface { input_dim: 384, input_bits: 4, accumulator_bits: 12, outputs: 13, output_delta_log2: 56, output_scale: 1.0, output_offsets: vec![] };

/// One packing candidate: the output GLWE's dimension, polynomial size and key noise (TUniform), and the key
/// switch's decomposition.
struct Candidate {
    glwe_dimension: GlweDimension,
    polynomial_size: PolynomialSize,
    noise: DynamicDistribution<u64>,
    base_log: usize,
    levels: usize,
}

fn main() {
    let mut seeder = new_seeder();
    let seeder = seeder.as_mut();
    let mut encryption = EncryptionRandomGenerator::<DefaultRandomGenerator>::new(seeder.seed(), seeder);
    let mut secrets = SecretRandomGenerator::<DefaultRandomGenerator>::new(seeder.seed());
    let pbs = ParameterSet::from_name(SHIPPED_SET).expect("a shipped parameter set").tfhe();
    let modulus = pbs.ciphertext_modulus;
    let delta_log = SHIPPED_OUTPUTS.output_delta_log2 as usize;
    // The PBS outputs: LWE under the big key, with the GLWE's noise standing in for a fresh bootstrap's output noise.
    let big = allocate_and_generate_new_binary_glwe_secret_key(pbs.glwe_dimension, pbs.polynomial_size, &mut secrets).into_lwe_secret_key();
    // The PBS's own GLWE shape and noise (a fresh key), and tfhe-rs's list-compression shape.
    let pbs_shape = (pbs.glwe_dimension, pbs.polynomial_size, pbs.glwe_noise_distribution);
    let compression = (GlweDimension(4), PolynomialSize(256), DynamicDistribution::new_t_uniform(43));
    let candidate = |(glwe_dimension, polynomial_size, noise): (GlweDimension, PolynomialSize, DynamicDistribution<u64>), base_log, levels| Candidate { glwe_dimension, polynomial_size, noise, base_log, levels };
    let candidates = [candidate(pbs_shape, 23, 1), candidate(pbs_shape, 16, 2), candidate(compression, 4, 5), candidate(compression, 8, 3)];
    let per_sample = SHIPPED_OUTPUTS.outputs;
    println!("| output GLWE (k, N, key noise) | decomposition | packing key (seeded) | outputs packed | ms per output | largest error, levels | wrong | download per sample |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for c in &candidates {
        let out = allocate_and_generate_new_binary_glwe_secret_key(c.glwe_dimension, c.polynomial_size, &mut secrets);
        let key = allocate_and_generate_new_lwe_packing_keyswitch_key(
            &big,
            &out,
            DecompositionBaseLog(c.base_log),
            DecompositionLevelCount(c.levels),
            c.noise,
            modulus,
            &mut encryption,
        );
        let glwe_words = c.glwe_dimension.to_glwe_size().0 * c.polynomial_size.0;
        // A seeded key sends only the bodies: one polynomial of each GLWE.
        let seeded_mib = (key.as_ref().len() / c.glwe_dimension.to_glwe_size().0) as f64 * 8.0 / 1_048_576.0;
        for samples in [1, 16] {
            let count = samples * per_sample;
            let messages: Vec<u64> = (0..count as u64).map(|i| (i * 37) % 128).collect();
            let mut list = LweCiphertextList::new(0u64, big.lwe_dimension().to_lwe_size(), LweCiphertextCount(count), modulus);
            for (mut ct, &m) in list.iter_mut().zip(&messages) {
                encrypt_lwe_ciphertext(&big, &mut ct, Plaintext(m << delta_log), pbs.glwe_noise_distribution, &mut encryption);
            }
            let mut glwe = GlweCiphertext::new(0u64, out.glwe_dimension().to_glwe_size(), out.polynomial_size(), modulus);
            let repeats = 3;
            let t = Instant::now();
            for _ in 0..repeats {
                par_keyswitch_lwe_ciphertext_list_and_pack_in_glwe_ciphertext(&key, &list, &mut glwe);
            }
            let ms_per_output = t.elapsed().as_secs_f64() * 1e3 / (repeats * count) as f64;
            let mut decrypted = PlaintextList::new(0u64, PlaintextCount(c.polynomial_size.0));
            decrypt_glwe_ciphertext(&out, &glwe, &mut decrypted);
            let errors: Vec<f64> =
                messages.iter().enumerate().map(|(i, &m)| (decrypted.as_ref()[i].wrapping_sub(m << delta_log) as i64 as f64 / (1u64 << delta_log) as f64).abs()).collect();
            let worst = errors.iter().cloned().fold(0.0, f64::max);
            let wrong = errors.iter().filter(|&&e| e >= 0.5).count();
            // As many bits a word as today's outputs are switched to.
            let download_kib = (glwe_words * SHIPPED_OUTPUTS.download_log_modulus() as usize) as f64 / 8.0 / 1024.0 / samples as f64;
            println!(
                "| {}, {}, {} | 2^{} x {} | {:.1} MiB | {} ({} sample{}) | {:.2} | {:.4} | {} | {:.2} KiB |",
                c.glwe_dimension.0,
                c.polynomial_size.0,
                match c.noise {
                    DynamicDistribution::TUniform(t) => format!("TUniform 2^{}", t.bound_log2()),
                    other => format!("{other:?}"),
                },
                c.base_log,
                c.levels,
                seeded_mib,
                count,
                samples,
                if samples == 1 { "" } else { "s" },
                ms_per_output,
                worst,
                wrong,
                download_kib
            );
        }
    }
}
