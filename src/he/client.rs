//! The client's side of the encrypted stage: key generation, encryption of feature vectors, decryption of the
//! server's outputs. The secret keys live only in [`ClientKey`]; the server crate (`cryptotl_server`) does not
//! depend on this crate and so cannot name this type.

use cryptotl_server::{EncryptedInput, EncryptedOutput, EvaluationKey, HeError, ParameterSet, ProgramInterface, SeededBootstrapKey};
use serde::{Deserialize, Serialize};
use tfhe::core_crypto::commons::generators::DeterministicSeeder;
use tfhe::core_crypto::algorithms::slice_algorithms::slice_wrapping_dot_product;
use tfhe::core_crypto::commons::math::random::{RandomGenerator, Seed, Uniform};
use tfhe::core_crypto::prelude::*;

/// The source of key and encryption randomness: tfhe-rs's seeder (RDSEED, else the OS) feeding its AES-CTR
/// CSPRNG, or, with `insecure_seed`, a deterministic stream (reproducible tests only: it makes the keys guessable).
pub fn seeder(insecure_seed: Option<u64>) -> Box<dyn Seeder> {
    match insecure_seed {
        Some(s) => Box::new(DeterministicSeeder::<DefaultRandomGenerator>::new(Seed(s as u128 | 0xc17f_0000_0000_0000_0000))),
        None => new_seeder(),
    }
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, HeError>;

/// The client's secret key material: the small LWE key (inputs are encrypted under it) and the GLWE key (whose
/// flattening is the big LWE key the outputs come back under). Never leaves the client.
#[derive(Clone, Serialize, Deserialize, tfhe_versionable::Versionize)]
#[versionize(ClientKeyVersions)]
pub struct ClientKey {
    key_id: u64,
    parameter_set: String,
    small: LweSecretKeyOwned<u64>,
    glwe: GlweSecretKeyOwned<u64>,
}

cryptotl_server::wire_object!(ClientKey, ClientKeyVersions, "cryptotl::ClientKey", "client key");

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientKey {{ key_id: {:016x}, parameter_set: {}, .. }}", self.key_id, self.parameter_set)
    }
}

impl ClientKey {
    /// Generate a fresh key pair for `params`: the secret [`ClientKey`] and the public [`EvaluationKey`] to send
    /// to the server once. Randomness comes from tfhe-rs's seeder (RDSEED, else the OS) feeding its AES-CTR CSPRNG.
    ///
    /// `seeder` is [`seeder`]`(None)` in real use; a fixed seed makes keys reproducible (tests only).
    ///
    /// ```no_run
    /// use cryptotl::he::{ClientKey, seeder};
    /// use cryptotl_server::ParameterSet;
    /// let (client, evaluation_key) = ClientKey::generate(ParameterSet::default(), seeder(None).as_mut());
    /// assert_eq!(client.key_id(), evaluation_key.key_id);
    /// ```
    pub fn generate(params: ParameterSet, seeder: &mut dyn Seeder) -> (ClientKey, EvaluationKey) {
        let p = params.tfhe();
        let mut secret = SecretRandomGenerator::<DefaultRandomGenerator>::new(seeder.seed());
        let small = allocate_and_generate_new_binary_lwe_secret_key(p.lwe_dimension, &mut secret);
        let glwe = allocate_and_generate_new_binary_glwe_secret_key(p.glwe_dimension, p.polynomial_size, &mut secret);
        let mut client = ClientKey { key_id: 0, parameter_set: params.name().to_string(), small, glwe };
        let mut evaluation = client.bootstrap_key(params, seeder);
        // Drawn after the bootstrap key, as it always was: a fixed seed gives the keys it always gave.
        client.key_id = seeder.seed().0 as u64;
        evaluation.key_id = client.key_id;
        (client, evaluation)
    }

    /// A new evaluation key for this secret key (fresh noise and mask seeds, the same key id), for a server that
    /// lost the one it had: a client that keeps its [`ClientKey`] between sessions need not keep the 50 MiB
    /// evaluation key too.
    ///
    /// ```no_run
    /// use cryptotl::he::client::{ClientKey, seeder};
    /// use cryptotl_server::ParameterSet;
    /// let (client, first) = ClientKey::generate(ParameterSet::default(), seeder(None).as_mut());
    /// let again = client.new_evaluation_key(seeder(None).as_mut()).unwrap();
    /// assert_eq!(again.key_id, first.key_id);
    /// ```
    pub fn new_evaluation_key(&self, seeder: &mut dyn Seeder) -> Result<EvaluationKey> {
        Ok(self.bootstrap_key(self.params()?, seeder))
    }

    fn bootstrap_key(&self, params: ParameterSet, seeder: &mut dyn Seeder) -> EvaluationKey {
        let p = params.tfhe();
        let (small, glwe) = (&self.small, &self.glwe);
        let bootstrap_key = match p.grouping_factor {
            None => SeededBootstrapKey::Classic(par_allocate_and_generate_new_seeded_lwe_bootstrap_key(
                small,
                glwe,
                p.pbs_base_log,
                p.pbs_level,
                p.glwe_noise_distribution,
                p.ciphertext_modulus,
                seeder,
            )),
            Some(g) => SeededBootstrapKey::MultiBit(par_allocate_and_generate_new_seeded_lwe_multi_bit_bootstrap_key(
                small,
                glwe,
                p.pbs_base_log,
                p.pbs_level,
                p.glwe_noise_distribution,
                g,
                p.ciphertext_modulus,
                seeder,
            )),
        };
        EvaluationKey { key_id: self.key_id, parameter_set: params.name().to_string(), bootstrap_key }
    }

    /// Bytes a serialized [`ClientKey`] of `params` may take (its two secret keys, one word per coefficient).
    pub fn size_limit(params: ParameterSet) -> u64 {
        let p = params.tfhe();
        ((p.lwe_dimension.0 + p.glwe_dimension.0 * p.polynomial_size.0) * 8 + 4096) as u64
    }

    /// The random tag stamped on this key's evaluation key and ciphertexts.
    pub fn key_id(&self) -> u64 {
        self.key_id
    }

    /// The parameter set.
    pub fn params(&self) -> Result<ParameterSet> {
        ParameterSet::from_name(&self.parameter_set)
    }

    /// Encrypt one vector of input levels (each below `2^interface.input_bits`) as a seeded LWE list under the
    /// small key: level q is encoded as `q * 2^(63 - accumulator_bits)`.
    pub fn encrypt(&self, levels: &[u16], interface: &ProgramInterface, seeder: &mut dyn Seeder) -> Result<EncryptedInput> {
        let params = self.params()?;
        interface.validate()?;
        if levels.len() != interface.input_dim {
            return Err(HeError::Shape { what: "input levels", message: format!("{} values, the program takes {}", levels.len(), interface.input_dim) });
        }
        let top = 1u32 << interface.input_bits;
        if let Some(v) = levels.iter().find(|&&v| v as u32 >= top) {
            return Err(HeError::Shape { what: "input levels", message: format!("level {v} is not below 2^{}", interface.input_bits) });
        }
        let p = params.tfhe();
        let shift = 63 - interface.accumulator_bits;
        let plain: Vec<u64> = levels.iter().map(|&q| (q as u64) << shift).collect();
        let features = encrypt_seeded_list(&self.small, &plain, p.lwe_noise_distribution, p.ciphertext_modulus, seeder)?;
        Ok(EncryptedInput { key_id: self.key_id, parameter_set: self.parameter_set.clone(), features })
    }

    /// [`Self::encrypt`] for several samples at once, on every core. Each sample gets its own CSPRNG stream, seeded
    /// by a draw from `seeder` in sample order, so a fixed seed still gives the same ciphertexts whatever the
    /// thread count, and each sample's randomness is as fresh as the seeder's.
    ///
    /// ```no_run
    /// # fn demo(client: &cryptotl::he::ClientKey, iface: &cryptotl_server::ProgramInterface, rows: &[Vec<u16>]) -> cryptotl::he::client::Result<()> {
    /// let inputs = client.encrypt_batch(rows, iface, cryptotl::he::seeder(None).as_mut())?;
    /// assert_eq!(inputs.len(), rows.len());
    /// # Ok(()) }
    /// ```
    pub fn encrypt_batch(&self, samples: &[Vec<u16>], interface: &ProgramInterface, seeder: &mut dyn Seeder) -> Result<Vec<EncryptedInput>> {
        let seeds: Vec<Seed> = samples.iter().map(|_| seeder.seed()).collect();
        self.encrypt_with_seeds(samples, interface, &seeds)
    }

    /// [`Self::encrypt_batch`] with the per-sample seeds already drawn (one per sample, in order): lets a caller
    /// draw a whole pass's seeds from its seeder up front and encrypt the batches elsewhere (another thread) with
    /// the same ciphertexts as [`Self::encrypt_batch`] would give.
    ///
    /// # Panics
    /// If `seeds` is not as long as `samples` (a caller's bug, not bad input).
    pub fn encrypt_with_seeds(&self, samples: &[Vec<u16>], interface: &ProgramInterface, seeds: &[Seed]) -> Result<Vec<EncryptedInput>> {
        use rayon::prelude::*;
        assert_eq!(seeds.len(), samples.len(), "one seed per sample");
        samples
            .par_iter()
            .zip(seeds)
            .map(|(levels, &seed)| self.encrypt(levels, interface, &mut DeterministicSeeder::<DefaultRandomGenerator>::new(seed)))
            .collect()
    }

    /// Decrypt the server's outputs to output levels (signed; see `cryptotl_server::program`).
    pub fn decrypt(&self, output: &EncryptedOutput, interface: &ProgramInterface) -> Result<Vec<i64>> {
        let params = self.params()?;
        interface.validate()?;
        output.check(params, self.key_id, interface)?;
        let delta = interface.output_delta_log2;
        Ok(self.output_phases(output).into_iter().map(|phase| (phase.wrapping_add(1 << (delta - 1)) as i64) >> delta).collect())
    }

    /// The phase of each of the server's outputs, scaled back to the 64-bit torus: the encoded output level plus
    /// noise (the bootstrap's and the download switch's rounding). [`Self::decrypt`] rounds it to a level; the
    /// noise tests read it whole.
    pub fn output_phases(&self, output: &EncryptedOutput) -> Vec<u64> {
        let key = self.glwe.as_lwe_secret_key();
        let q = output.word_bits();
        let words = output.words();
        words
            .chunks(key.as_ref().len() + 1)
            .take(output.count as usize)
            .map(|ct| {
                let (mask, body) = ct.split_at(ct.len() - 1);
                // Modulo 2^32 (q <= 32): the bits above q fall off the shift below.
                let dot = mask.iter().zip(key.as_ref()).fold(0u32, |s, (&a, &k)| s.wrapping_add(a.wrapping_mul(k as u32)));
                u64::from(body[0].wrapping_sub(dot)) << (64 - q)
            })
            .collect()
    }

    /// Decrypt the server's linear-stage ciphertexts (small key, `neurons x (n + 1)` words) to accumulator
    /// values as real numbers: exact accumulator plus noise, in accumulator units. For noise tests only (the
    /// server never sends these).
    pub fn decrypt_accumulators(&self, raw: &[u64], accumulator_bits: u32) -> Vec<f64> {
        let size = self.small.lwe_dimension().0 + 1;
        let unit = 2f64.powi(63 - accumulator_bits as i32);
        raw.chunks(size)
            .map(|ct| {
                let (mask, body) = ct.split_at(size - 1);
                let dot = mask.iter().zip(self.small.as_ref()).fold(0u64, |s, (&a, &k)| s.wrapping_add(a.wrapping_mul(k)));
                body[0].wrapping_sub(dot) as i64 as f64 / unit
            })
            .collect()
    }
}

/// tfhe-rs's `encrypt_seeded_lwe_ciphertext_list`, word for word, with the masks drawn in bulk: the same two draws
/// from `seeder` (the masks' compression seed, then the noise generator's seed), the masks from
/// [`cryptotl_server::eval::mask::expand`] (the seed's AES-CTR stream, eight blocks a call, where tfhe-rs takes it a
/// byte at a time), each ciphertext's noise from its own fork of the noise generator as tfhe-rs forks it, and the
/// body `<mask, key> + plaintext + noise`. A test compares every word with tfhe-rs's encryption.
fn encrypt_seeded_list(
    key: &LweSecretKeyOwned<u64>,
    plain: &[u64],
    noise: DynamicDistribution<u64>,
    modulus: CiphertextModulus<u64>,
    seeder: &mut dyn Seeder,
) -> Result<SeededLweCiphertextListOwned<u64>> {
    if !modulus.is_native_modulus() {
        return Err(HeError::Program(format!("inputs are encrypted under the native 64-bit modulus, not {modulus:?}")));
    }
    let size = key.lwe_dimension().to_lwe_size();
    let list = SeededLweCiphertextList::new(0u64, size, LweCiphertextCount(plain.len()), seeder.seed().into(), modulus);
    let seed = list.compression_seed();
    let noise_bytes = list.encryption_fork_config(Uniform, noise).noise_byte_count_per_child().0;
    let mut noise_generator = RandomGenerator::<DefaultRandomGenerator>::new(seeder.seed());
    let children = noise_generator
        .try_fork(plain.len(), noise_bytes)
        .map_err(|e| HeError::Program(format!("cannot fork the noise generator for {} ciphertexts: {e:?}", plain.len())))?;
    let masks = cryptotl_server::eval::mask::expand(&list)?;
    let bodies = masks
        .chunks_exact(size.0)
        .zip(plain)
        .zip(children)
        .map(|((ct, &m), mut child)| {
            let e: u64 = child.random_from_distribution(noise);
            slice_wrapping_dot_product(&ct[..size.0 - 1], key.as_ref()).wrapping_add(m).wrapping_add(e)
        })
        .collect();
    Ok(SeededLweCiphertextList::from_container(bodies, size, seed, modulus))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every word (bodies and seed) is what tfhe-rs's own seeded encryption gives from the same seeder: the shipped
    /// sets' key sizes and noise, and counts whose masks end mid-block.
    #[test]
    fn bulk_encryption_is_tfhe_rs_encryption_word_for_word() {
        for (params, count, seed) in [(ParameterSet::MultiBit3Message1Carry1, 384, 1u128), (ParameterSet::Message2Carry2, 768, 2), (ParameterSet::Message1Carry1, 3, 3), (ParameterSet::MultiBit3Message1Carry1, 1, 4)] {
            let p = params.tfhe();
            let mut secret = SecretRandomGenerator::<DefaultRandomGenerator>::new(Seed(seed + 100));
            let key = allocate_and_generate_new_binary_lwe_secret_key(p.lwe_dimension, &mut secret);
            let plain: Vec<u64> = (0..count as u64).map(|i| (i % 16) << 51).collect();
            let ours = encrypt_seeded_list(&key, &plain, p.lwe_noise_distribution, p.ciphertext_modulus, &mut DeterministicSeeder::<DefaultRandomGenerator>::new(Seed(seed))).unwrap();
            let mut seeder = DeterministicSeeder::<DefaultRandomGenerator>::new(Seed(seed));
            let mut theirs = SeededLweCiphertextList::new(0u64, p.lwe_dimension.to_lwe_size(), LweCiphertextCount(count), seeder.seed().into(), p.ciphertext_modulus);
            encrypt_seeded_lwe_ciphertext_list(&key, &mut theirs, &PlaintextList::from_container(plain.clone()), p.lwe_noise_distribution, &mut seeder);
            assert_eq!(ours, theirs, "{}: {count} ciphertexts", params.name());
            // And they decrypt: the noise stays below half a level of a 12-bit accumulator (2^50), so the levels come back.
            let full = ours.decompress_into_lwe_ciphertext_list();
            for (ct, &m) in full.iter().zip(&plain) {
                let phase = decrypt_lwe_ciphertext(&key, &ct).0.wrapping_sub(m) as i64;
                assert!(phase.unsigned_abs() < 1 << 50, "{}: noise {phase}", params.name());
            }
        }
    }
}
