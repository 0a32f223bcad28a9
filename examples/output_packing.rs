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

use tfhe::core_crypto::prelude::*;

/// Output encoding of the shipped configs: 7 output bits below one bit of padding.
const DELTA_LOG: usize = 56;

/// One packing candidate: the output GLWE's dimension, polynomial size and key noise bound (TUniform, log2), and
/// the key switch's decomposition.
struct Candidate {
    glwe_dimension: usize,
    polynomial_size: usize,
    noise_log2: u32,
    base_log: usize,
    levels: usize,
}

fn main() {
    let mut seeder = new_seeder();
    let seeder = seeder.as_mut();
    let mut encryption = EncryptionRandomGenerator::<DefaultRandomGenerator>::new(seeder.seed(), seeder);
    let mut secrets = SecretRandomGenerator::<DefaultRandomGenerator>::new(seeder.seed());
    let modulus = CiphertextModulus::new_native();
    // The PBS outputs: LWE under the big key, with the GLWE's noise (TUniform 2^17) standing in for a fresh
    // bootstrap's output noise.
    let big = allocate_and_generate_new_binary_glwe_secret_key(GlweDimension(2), PolynomialSize(1024), &mut secrets).into_lwe_secret_key();
    let output_noise = DynamicDistribution::<u64>::new_t_uniform(17);
    let candidates = [
        Candidate { glwe_dimension: 2, polynomial_size: 1024, noise_log2: 17, base_log: 23, levels: 1 },
        Candidate { glwe_dimension: 2, polynomial_size: 1024, noise_log2: 17, base_log: 16, levels: 2 },
        Candidate { glwe_dimension: 4, polynomial_size: 256, noise_log2: 43, base_log: 4, levels: 5 },
        Candidate { glwe_dimension: 4, polynomial_size: 256, noise_log2: 43, base_log: 8, levels: 3 },
    ];
    println!("| output GLWE (k, N, key noise) | decomposition | packing key (seeded) | outputs packed | ms per output | largest error, levels | wrong | download per sample |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for c in &candidates {
        let out = allocate_and_generate_new_binary_glwe_secret_key(GlweDimension(c.glwe_dimension), PolynomialSize(c.polynomial_size), &mut secrets);
        let key = allocate_and_generate_new_lwe_packing_keyswitch_key(
            &big,
            &out,
            DecompositionBaseLog(c.base_log),
            DecompositionLevelCount(c.levels),
            DynamicDistribution::<u64>::new_t_uniform(c.noise_log2),
            modulus,
            &mut encryption,
        );
        // A seeded key sends only the bodies: one polynomial of each GLWE.
        let seeded_mib = (key.as_ref().len() / (c.glwe_dimension + 1)) as f64 * 8.0 / 1_048_576.0;
        for (count, samples) in [(13usize, 1usize), (208, 16)] {
            let messages: Vec<u64> = (0..count as u64).map(|i| (i * 37) % 128).collect();
            let mut list = LweCiphertextList::new(0u64, big.lwe_dimension().to_lwe_size(), LweCiphertextCount(count), modulus);
            for (mut ct, &m) in list.iter_mut().zip(&messages) {
                encrypt_lwe_ciphertext(&big, &mut ct, Plaintext(m << DELTA_LOG), output_noise, &mut encryption);
            }
            let mut glwe = GlweCiphertext::new(0u64, out.glwe_dimension().to_glwe_size(), out.polynomial_size(), modulus);
            let repeats = 3;
            let t = Instant::now();
            for _ in 0..repeats {
                par_keyswitch_lwe_ciphertext_list_and_pack_in_glwe_ciphertext(&key, &list, &mut glwe);
            }
            let ms_per_output = t.elapsed().as_secs_f64() * 1e3 / (repeats * count) as f64;
            let mut decrypted = PlaintextList::new(0u64, PlaintextCount(c.polynomial_size));
            decrypt_glwe_ciphertext(&out, &glwe, &mut decrypted);
            let errors: Vec<f64> =
                messages.iter().enumerate().map(|(i, &m)| (decrypted.as_ref()[i].wrapping_sub(m << DELTA_LOG) as i64 as f64 / (1u64 << DELTA_LOG) as f64).abs()).collect();
            let worst = errors.iter().cloned().fold(0.0, f64::max);
            let wrong = errors.iter().filter(|&&e| e >= 0.5).count();
            // At 17 bits a word, as today's outputs.
            let download_kib = ((c.glwe_dimension + 1) * c.polynomial_size) as f64 * 17.0 / 8.0 / 1024.0 / samples as f64;
            println!(
                "| {}, {}, 2^{} | 2^{} x {} | {:.1} MiB | {} ({} sample{}) | {:.2} | {:.4} | {} | {:.2} KiB |",
                c.glwe_dimension,
                c.polynomial_size,
                c.noise_log2,
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
