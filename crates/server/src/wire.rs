//! What crosses the wire: the client's public evaluation key, its encrypted inputs, the server's encrypted outputs.
//!
//! Each is serialized with tfhe's versioned *safe serialization* (a header naming the type and its version, then
//! bincode with a size limit), so a corrupt, truncated, oversized or foreign blob is an error, never a panic or an
//! allocation bomb. After reading, [`EvaluationKey::check`], [`EncryptedInput::check`] and
//! [`EncryptedOutput::check`] compare the parameter set, the key id and every dimension with what the reader
//! expects.
//!
//! The key id is a random 64-bit tag the client draws at key generation and stamps on its evaluation key and on
//! every ciphertext: a consistency check that turns "ciphertext from another key" into a clear error instead of
//! garbage outputs. It is not authentication (anyone can copy a tag; TFHE ciphertexts are malleable anyway).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tfhe::core_crypto::commons::math::random::CompressionSeed;
use tfhe::core_crypto::prelude::*;
use tfhe::named::Named;
use tfhe::{Unversionize, Versionize};

use crate::error::{HeError, Result};
use crate::params::ParameterSet;
use crate::program::ProgramInterface;

/// Declare a type as a wire object: its versions enum (for tfhe's versioning), its `Named` tag (checked on
/// reading) and its [`WireObject`] name. Users need `tfhe` and `tfhe-versionable` as dependencies.
#[macro_export]
macro_rules! wire_object {
    ($ty:ident, $versions:ident, $name:literal, $what:literal) => {
        #[doc = concat!("Versions of [`", stringify!($ty), "`].")]
        #[derive(tfhe_versionable::VersionsDispatch)]
        pub enum $versions {
            /// The first version.
            V0($ty),
        }
        impl tfhe::named::Named for $ty {
            const NAME: &'static str = $name;
        }
        impl $crate::wire::WireObject for $ty {
            const WHAT: &'static str = $what;
        }
    };
}

/// Bytes allowed for headers and metadata on top of an object's payload.
const SLACK_BYTES: u64 = 4096;

/// A wire object: its human name for errors, its payload size limit under given dimensions.
pub trait WireObject: Serialize + DeserializeOwned + Versionize + Unversionize + Named {
    /// Name used in error messages.
    const WHAT: &'static str;

    /// Serialize with tfhe's safe serialization under `limit` bytes.
    fn to_bytes(&self, limit: u64) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        tfhe::safe_serialization::safe_serialize(self, &mut out, limit)
            .map_err(|e| HeError::Serialize { what: Self::WHAT, message: e.to_string() })?;
        Ok(out)
    }

    /// Read with tfhe's safe deserialization, refusing anything over `limit` bytes.
    fn from_bytes(bytes: &[u8], limit: u64) -> Result<Self> {
        tfhe::safe_serialization::safe_deserialize(bytes, limit)
            .map_err(|message| HeError::Deserialize { what: Self::WHAT, message })
    }
}

fn check_params(what: &'static str, found: &str, expected: ParameterSet) -> Result<()> {
    if found != expected.name() {
        return Err(HeError::ParameterMismatch { what, expected: expected.name().into(), found: found.into() });
    }
    Ok(())
}

fn check_key(what: &'static str, found: u64, expected: u64) -> Result<()> {
    if found != expected {
        return Err(HeError::KeyMismatch { what, expected, found });
    }
    Ok(())
}

fn shape(what: &'static str, message: String) -> HeError {
    HeError::Shape { what, message }
}

/// A seeded bootstrap key, classic or multi-bit, as the parameter set says.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, tfhe_versionable::Versionize)]
#[versionize(SeededBootstrapKeyVersions)]
pub enum SeededBootstrapKey {
    /// One GGSW per small-key bit.
    Classic(SeededLweBootstrapKeyOwned<u64>),
    /// 2^g GGSWs per group of g small-key bits (one per subset of the group).
    MultiBit(SeededLweMultiBitBootstrapKeyOwned<u64>),
}

/// Versions of [`SeededBootstrapKey`].
#[derive(tfhe_versionable::VersionsDispatch)]
pub enum SeededBootstrapKeyVersions {
    /// The first version.
    V0(SeededBootstrapKey),
}

impl SeededBootstrapKey {
    /// The seed its masks are drawn from.
    pub fn compression_seed(&self) -> CompressionSeed {
        match self {
            Self::Classic(k) => k.compression_seed(),
            Self::MultiBit(k) => k.compression_seed(),
        }
    }

    /// Its body words (the masks are not stored: they come from [`Self::compression_seed`]).
    pub fn bodies(&self) -> &[u64] {
        match self {
            Self::Classic(k) => k.as_ref(),
            Self::MultiBit(k) => k.as_ref(),
        }
    }

    /// Whether every dimension matches `params` (kind, n, k, N, gadget, grouping, modulus, length).
    fn matches(&self, params: ParameterSet) -> bool {
        let p = params.tfhe();
        // The same accessors on both key types (tfhe-rs has no trait for them).
        macro_rules! dims_match {
            ($k:expr) => {
                $k.input_lwe_dimension() == p.lwe_dimension
                    && $k.glwe_size() == p.glwe_dimension.to_glwe_size()
                    && $k.polynomial_size() == p.polynomial_size
                    && $k.decomposition_base_log() == p.pbs_base_log
                    && $k.decomposition_level_count() == p.pbs_level
                    && $k.ciphertext_modulus() == p.ciphertext_modulus
                    && $k.as_ref().len() == params.seeded_bootstrap_key_words()
            };
        }
        match (self, p.grouping_factor) {
            (Self::Classic(k), None) => dims_match!(k),
            (Self::MultiBit(k), Some(g)) => k.grouping_factor() == g && dims_match!(k),
            _ => false,
        }
    }
}

/// The client's public evaluation key: a seeded bootstrap key from its small LWE key to its GLWE key.
/// The server needs nothing else (the linear stage runs under the small key, so there is no keyswitch key).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, tfhe_versionable::Versionize)]
#[versionize(EvaluationKeyVersions)]
pub struct EvaluationKey {
    /// The client's key id.
    pub key_id: u64,
    /// The tfhe-rs parameter-set name.
    pub parameter_set: String,
    /// Seeded bootstrap key (masks regenerated from the seed: about half the size of the full key).
    pub bootstrap_key: SeededBootstrapKey,
}

wire_object!(EvaluationKey, EvaluationKeyVersions, "cryptotl::EvaluationKey", "evaluation key");

impl EvaluationKey {
    /// Serialized size limit for `params`.
    pub fn size_limit(params: ParameterSet) -> u64 {
        params.seeded_bootstrap_key_words() as u64 * 8 + SLACK_BYTES
    }

    /// Check parameter set, every dimension of the bootstrap key, and its seed ([`crate::eval::mask::check_seed`]).
    pub fn check(&self, params: ParameterSet) -> Result<()> {
        check_params(Self::WHAT, &self.parameter_set, params)?;
        if !self.bootstrap_key.matches(params) {
            return Err(shape(Self::WHAT, format!("bootstrap key dimensions do not match {}", params.name())));
        }
        crate::eval::mask::check_seed(Self::WHAT, &self.bootstrap_key.compression_seed())
    }
}

/// An [`EvaluationKey`] as a client sends it to a server that reads this form (the interface's
/// `evaluation_key_forms`): every body word of the seeded bootstrap key rounded to its top `64 - rounding_bits`
/// bits ([`ParameterSet::key_rounding_bits`]: 14 for the shipped sets) and packed, so the upload is 22% smaller.
/// The rounding adds a uniform error of ±2^(rounding_bits - 1) to each body: under 1/192 of the variance of the
/// GLWE noise the key already carries. The server expands it back ([`Self::expand`]) before anything else.
///
/// ```
/// use cryptotl_server::wire::{RoundedEvaluationKey, WireObject as _};
/// use cryptotl_server::ParameterSet;
/// let p = ParameterSet::MultiBit3Message1Carry1;
/// assert_eq!(p.seeded_bootstrap_key_words() * 8, 52_494_336); // 50.1 MiB of bodies in full
/// assert_eq!(RoundedEvaluationKey::packed_bytes(p, 14), 41_011_200); // 39.1 MiB rounded
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, tfhe_versionable::Versionize)]
#[versionize(RoundedEvaluationKeyVersions)]
pub struct RoundedEvaluationKey {
    /// The client's key id.
    pub key_id: u64,
    /// The tfhe-rs parameter-set name.
    pub parameter_set: String,
    /// The seed the bootstrap key's masks are regenerated from.
    pub compression_seed: CompressionSeed,
    /// Low bits rounded away from every body word (at most the parameter set's [`ParameterSet::key_rounding_bits`]).
    pub rounding_bits: u32,
    /// The body words, `64 - rounding_bits` bits each ([`pack_bits`]), in the seeded key's order.
    pub data: Vec<u8>,
}

wire_object!(RoundedEvaluationKey, RoundedEvaluationKeyVersions, "cryptotl::RoundedEvaluationKey", "rounded evaluation key");

impl RoundedEvaluationKey {
    /// Bytes of `data` for `params` at `rounding_bits`.
    pub fn packed_bytes(params: ParameterSet, rounding_bits: u32) -> usize {
        (params.seeded_bootstrap_key_words() * (64 - rounding_bits as usize)).div_ceil(8)
    }

    /// Serialized size limit for `params` (at no rounding: the limit of a full key).
    pub fn size_limit(params: ParameterSet) -> u64 {
        EvaluationKey::size_limit(params)
    }

    /// Round `key`'s bodies to `params`' [`ParameterSet::key_rounding_bits`] and pack them.
    pub fn round(key: &EvaluationKey, params: ParameterSet) -> Self {
        let r = params.key_rounding_bits();
        let (seed, words) = (key.bootstrap_key.compression_seed(), key.bootstrap_key.bodies());
        let half = if r == 0 { 0 } else { 1u64 << (r - 1) };
        let rounded = words.iter().map(|&w| w.wrapping_add(half) >> r);
        Self {
            key_id: key.key_id,
            parameter_set: key.parameter_set.clone(),
            compression_seed: seed,
            rounding_bits: r,
            data: pack_bits(rounded, 64 - r),
        }
    }

    /// Check the object against `params` and rebuild the [`EvaluationKey`] (bodies `word << rounding_bits`), checked
    /// as a full key would be.
    pub fn expand(self, params: ParameterSet) -> Result<EvaluationKey> {
        check_params(Self::WHAT, &self.parameter_set, params)?;
        let r = self.rounding_bits;
        if r > params.key_rounding_bits() {
            return Err(shape(Self::WHAT, format!("{r} bits rounded away; {} allows at most {}", params.name(), params.key_rounding_bits())));
        }
        if self.data.len() != Self::packed_bytes(params, r) {
            return Err(shape(Self::WHAT, format!("{} bytes of bodies, {} at {r} rounded bits expects {}", self.data.len(), params.name(), Self::packed_bytes(params, r))));
        }
        let words: Vec<u64> = unpack_bits(&self.data, 64 - r).take(params.seeded_bootstrap_key_words()).map(|w| w << r).collect();
        let p = params.tfhe();
        let glwe_size = p.glwe_dimension.to_glwe_size();
        let bootstrap_key = match p.grouping_factor {
            None => SeededBootstrapKey::Classic(SeededLweBootstrapKey::from_container(
                words, glwe_size, p.polynomial_size, p.pbs_base_log, p.pbs_level, self.compression_seed, p.ciphertext_modulus)),
            Some(g) => SeededBootstrapKey::MultiBit(SeededLweMultiBitBootstrapKey::from_container(
                words, glwe_size, p.polynomial_size, p.pbs_base_log, p.pbs_level, self.compression_seed, g, p.ciphertext_modulus)),
        };
        let key = EvaluationKey { key_id: self.key_id, parameter_set: self.parameter_set, bootstrap_key };
        key.check(params)?;
        Ok(key)
    }
}

/// Read an evaluation key a client sent, in either form (an [`EvaluationKey`], or a [`RoundedEvaluationKey`]
/// expanded), and check it against `params`.
pub fn read_evaluation_key(bytes: &[u8], limit: u64, params: ParameterSet) -> Result<EvaluationKey> {
    match EvaluationKey::from_bytes(bytes, limit) {
        Ok(key) => key.check(params).map(|()| key),
        Err(full) => RoundedEvaluationKey::from_bytes(bytes, limit)
            .map_err(|rounded| HeError::Deserialize {
                what: "evaluation key",
                message: format!("neither a full evaluation key ({full}) nor a rounded one ({rounded})"),
            })?
            .expand(params),
    }
}

/// One encrypted feature vector: a seeded LWE ciphertext list under the client's small key (one body word per
/// feature plus a seed: ~8 bytes per feature).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, tfhe_versionable::Versionize)]
#[versionize(EncryptedInputVersions)]
pub struct EncryptedInput {
    /// The client's key id.
    pub key_id: u64,
    /// The tfhe-rs parameter-set name.
    pub parameter_set: String,
    /// One ciphertext per input feature.
    pub features: SeededLweCiphertextListOwned<u64>,
}

wire_object!(EncryptedInput, EncryptedInputVersions, "cryptotl::EncryptedInput", "encrypted input");

impl EncryptedInput {
    /// Serialized size limit for `input_dim` features.
    pub fn size_limit(input_dim: usize) -> u64 {
        input_dim as u64 * 8 + SLACK_BYTES
    }

    /// Check parameter set, key id, shape and seed ([`crate::eval::mask::check_seed`]).
    pub fn check(&self, params: ParameterSet, key_id: u64, input_dim: usize) -> Result<()> {
        check_params(Self::WHAT, &self.parameter_set, params)?;
        check_key(Self::WHAT, self.key_id, key_id)?;
        let f = &self.features;
        if f.lwe_size().0 != params.lwe_dimension() + 1 || f.ciphertext_modulus() != params.tfhe().ciphertext_modulus {
            return Err(shape(Self::WHAT, format!("LWE size {} does not match {}", f.lwe_size().0, params.name())));
        }
        if f.as_ref().len() != input_dim {
            return Err(shape(Self::WHAT, format!("{} features, the program takes {input_dim}", f.as_ref().len())));
        }
        crate::eval::mask::check_seed(Self::WHAT, &f.compression_seed())
    }
}

/// The encrypted outputs of one sample: LWE ciphertexts under the client's big key, modulus-switched from 2^64 to
/// 2^`log_modulus` ([`ProgramInterface::download_log_modulus`]: 17 bits for 7-bit outputs, at most 32) and packed
/// `log_modulus` bits per word, so the download carries no bit the client's decryption does not need.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, tfhe_versionable::Versionize)]
#[versionize(EncryptedOutputVersions)]
pub struct EncryptedOutput {
    /// The client's key id.
    pub key_id: u64,
    /// The tfhe-rs parameter-set name.
    pub parameter_set: String,
    /// Number of ciphertexts.
    pub count: u64,
    /// The ciphertexts' modulus is 2^`log_modulus`.
    pub log_modulus: u32,
    /// `count` ciphertexts of `k*N + 1` words each (mask then body), `log_modulus` bits per word, least significant
    /// bit first, the last byte padded with zeros.
    pub data: Vec<u8>,
}

/// Earlier versions of [`EncryptedOutput`], read and upgraded.
mod output_versions {
    use std::convert::Infallible;

    use tfhe_versionable::{Upgrade, VersionsDispatch};

    use super::EncryptedOutput;

    impl Upgrade<EncryptedOutput> for super::EncryptedOutputWords32 {
        type Error = Infallible;
        fn upgrade(self) -> Result<EncryptedOutput, Infallible> {
            // A u32's little-endian bytes are its 32 bits, least significant first: the packing at 32 bits.
            let data = self.data.iter().flat_map(|w| w.to_le_bytes()).collect();
            Ok(EncryptedOutput { key_id: self.key_id, parameter_set: self.parameter_set, count: self.count, log_modulus: 32, data })
        }
    }

    /// Versions of [`EncryptedOutput`].
    #[derive(VersionsDispatch)]
    pub enum EncryptedOutputVersions {
        /// Words as `u32` (modulus 2^32).
        V0(super::EncryptedOutputWords32),
        /// Words packed at `log_modulus` bits.
        V1(EncryptedOutput),
    }
}
pub use output_versions::EncryptedOutputVersions;

/// How the server writes a sample's outputs for the client that asked: the client names the formats it reads in
/// the [`OutputFormat::HEADER`] of its request, and a client that names none (one built before the packed format,
/// 2026-12-05) is answered in the format it reads, so upgrading a server never strands its clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    /// [`EncryptedOutput`] version 1: packed at the program's download modulus (what this client asks for).
    Packed,
    /// Version 0: every word modulo 2^32 as a `u32`, about twice the bytes ([`EncryptedOutputWords32`]).
    Words32,
}

impl OutputFormat {
    /// The request header naming the formats a client reads, most preferred first, comma-separated.
    pub const HEADER: &'static str = "x-cryptotl-output";

    /// The name a client gives this format in [`Self::HEADER`].
    pub fn name(self) -> &'static str {
        match self {
            OutputFormat::Packed => "packed",
            OutputFormat::Words32 => "words32",
        }
    }

    /// The format to answer a request carrying `accepts` in [`Self::HEADER`]: the first one named that this server
    /// writes; [`OutputFormat::Words32`] when there is no header (a client older than it). Refused, saying what
    /// this server writes, when it writes none of those named.
    ///
    /// ```
    /// use cryptotl_server::wire::OutputFormat;
    /// assert_eq!(OutputFormat::negotiate(None), Ok(OutputFormat::Words32));
    /// assert_eq!(OutputFormat::negotiate(Some("packed2, packed")), Ok(OutputFormat::Packed));
    /// assert!(OutputFormat::negotiate(Some("packed2")).unwrap_err().contains("packed, words32"));
    /// ```
    pub fn negotiate(accepts: Option<&str>) -> std::result::Result<Self, String> {
        let Some(accepts) = accepts else { return Ok(OutputFormat::Words32) };
        let known = [OutputFormat::Packed, OutputFormat::Words32];
        accepts
            .split(',')
            .map(str::trim)
            .find_map(|name| known.into_iter().find(|f| f.name() == name))
            .ok_or_else(|| {
                format!(
                    "this server writes outputs as {}; the client reads only {accepts:?}: the client is newer than the server, which needs upgrading",
                    known.map(OutputFormat::name).join(", ")
                )
            })
    }
}

/// An [`EncryptedOutput`] as version 0 wrote it: every word modulo 2^32 as a `u32`. Servers write it for clients
/// built before 2026-12-05 (they read nothing else); reading it as an [`EncryptedOutput`] upgrades it (the
/// version-0 variant of [`EncryptedOutputVersions`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, tfhe_versionable::Versionize)]
#[versionize(EncryptedOutputWords32Versions)]
pub struct EncryptedOutputWords32 {
    /// The client's key id.
    pub key_id: u64,
    /// The tfhe-rs parameter-set name.
    pub parameter_set: String,
    /// Number of ciphertexts.
    pub count: u64,
    /// `count` ciphertexts of `k*N + 1` words each, modulo 2^32.
    pub data: Vec<u32>,
}

/// Versions of [`EncryptedOutputWords32`]: the one version old clients know, under the name they check.
#[derive(tfhe_versionable::VersionsDispatch)]
pub enum EncryptedOutputWords32Versions {
    /// Version 0 of [`EncryptedOutput`].
    V0(EncryptedOutputWords32),
}

impl tfhe::named::Named for EncryptedOutputWords32 {
    const NAME: &'static str = <EncryptedOutput as tfhe::named::Named>::NAME;
}
impl WireObject for EncryptedOutputWords32 {
    const WHAT: &'static str = "encrypted output (32-bit words)";
}

impl tfhe::named::Named for EncryptedOutput {
    const NAME: &'static str = "cryptotl::EncryptedOutput";
}
impl WireObject for EncryptedOutput {
    const WHAT: &'static str = "encrypted output";
}

impl EncryptedOutput {
    /// Serialized size limit for `outputs` ciphertexts (at the largest download modulus, 2^32).
    pub fn size_limit(params: ParameterSet, outputs: usize) -> u64 {
        (outputs * (params.big_lwe_dimension() + 1)) as u64 * 4 + SLACK_BYTES
    }

    /// Bytes of the packed `data` of `outputs` ciphertexts under `params` at 2^`log_modulus`: what [`Self::check`]
    /// expects and what a download costs beside its header.
    ///
    /// ```
    /// use cryptotl_server::{EncryptedOutput, ParameterSet};
    /// let p = ParameterSet::default();
    /// assert_eq!(EncryptedOutput::packed_bytes(p, 2, 17), (2 * (p.big_lwe_dimension() + 1) * 17).div_ceil(8));
    /// ```
    pub fn packed_bytes(params: ParameterSet, outputs: usize, log_modulus: u32) -> usize {
        (outputs * (params.big_lwe_dimension() + 1) * log_modulus as usize).div_ceil(8)
    }

    /// Bits a word of `data` takes: `log_modulus`, taken into 8..=32 (what [`Self::pack`] packs at and
    /// [`Self::words`] reads).
    pub fn word_bits(&self) -> u32 {
        word_bits(self.log_modulus)
    }

    /// Pack `words` (`count` ciphertexts) at `log_modulus` bits each, keeping each word's low `log_modulus` bits
    /// (`log_modulus` is taken into 8..=32: [`Self::word_bits`]).
    ///
    /// ```
    /// use cryptotl_server::EncryptedOutput;
    /// let out = EncryptedOutput::pack(7, "set".into(), 1, 12, &[0xabc, 0x123, 0xfff]);
    /// assert_eq!(out.data.len(), 5); // 36 bits
    /// assert_eq!(out.words(), vec![0xabc, 0x123, 0xfff]);
    /// ```
    pub fn pack(key_id: u64, parameter_set: String, count: u64, log_modulus: u32, words: &[u64]) -> Self {
        let log_modulus = word_bits(log_modulus);
        EncryptedOutput { key_id, parameter_set, count, log_modulus, data: pack_bits(words.iter().copied(), log_modulus) }
    }

    /// Every word, unpacked (each below 2^`log_modulus`): as many as whole words fit in `data`. [`Self::check`]
    /// refuses an object whose length or modulus is not the program's first.
    pub fn words(&self) -> Vec<u32> {
        unpack_bits(&self.data, self.word_bits()).map(|w| w as u32).collect()
    }

    /// Serialize in `format` under `limit` bytes. [`OutputFormat::Words32`] scales each word from 2^`log_modulus`
    /// to 2^32 (a ciphertext modulo 2^q times 2^(32-q) is one modulo 2^32 of the same message with the same relative
    /// noise), so an old client decrypts what a new one does.
    ///
    /// ```
    /// use cryptotl_server::EncryptedOutput;
    /// use cryptotl_server::wire::{OutputFormat, WireObject as _};
    /// let out = EncryptedOutput::pack(7, "set".into(), 1, 12, &[0xabc, 0x123, 0xfff]);
    /// let old = EncryptedOutput::from_bytes(&out.to_bytes_as(OutputFormat::Words32, 1 << 20).unwrap(), 1 << 20).unwrap();
    /// assert_eq!((old.log_modulus, old.words()), (32, vec![0xabc << 20, 0x123 << 20, 0xfff << 20]));
    /// ```
    pub fn to_bytes_as(&self, format: OutputFormat, limit: u64) -> Result<Vec<u8>> {
        match format {
            OutputFormat::Packed => self.to_bytes(limit),
            OutputFormat::Words32 => {
                let shift = 32 - self.word_bits();
                let data = self.words().into_iter().map(|w| w << shift).collect();
                EncryptedOutputWords32 { key_id: self.key_id, parameter_set: self.parameter_set.clone(), count: self.count, data }.to_bytes(limit)
            }
        }
    }

    /// Check parameter set, key id, modulus and shape against the client's view of the program: the modulus at
    /// least the one `interface` calls for (a coarser one would drown the outputs in rounding noise) and at most
    /// 2^32.
    pub fn check(&self, params: ParameterSet, key_id: u64, interface: &ProgramInterface) -> Result<()> {
        check_params(Self::WHAT, &self.parameter_set, params)?;
        check_key(Self::WHAT, self.key_id, key_id)?;
        let need = interface.download_log_modulus();
        if !(need..=32).contains(&self.log_modulus) {
            return Err(shape(Self::WHAT, format!("modulus 2^{}, the program's outputs need 2^{need} to 2^32", self.log_modulus)));
        }
        let (outputs, lwe_size) = (interface.outputs, params.big_lwe_dimension() + 1);
        let bytes = Self::packed_bytes(params, outputs, self.log_modulus);
        if self.count as usize != outputs || self.data.len() != bytes {
            return Err(shape(
                Self::WHAT,
                format!("{} ciphertexts in {} bytes, expected {outputs} of {lwe_size} words at {} bits ({bytes} bytes)", self.count, self.data.len(), self.log_modulus),
            ));
        }
        Ok(())
    }
}

/// The bits a packed word takes for a modulus of 2^`log_modulus`: at least 8, so the zero bits padding the last
/// byte never read back as a word, and at most 32.
fn word_bits(log_modulus: u32) -> u32 {
    log_modulus.clamp(8, 32)
}

/// The `bits` low bits set.
fn low_bits(bits: u32) -> u64 {
    if bits >= 64 { u64::MAX } else { (1u64 << bits) - 1 }
}

/// The low `bits` (1..=64) of each word, packed least significant bit first, the last byte padded with zeros.
///
/// ```
/// use cryptotl_server::wire::{pack_bits, unpack_bits};
/// for bits in [8, 12, 17, 32, 50, 64] {
///     let words: Vec<u64> = (0..7u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - bits)).collect();
///     let data = pack_bits(words.iter().copied(), bits);
///     assert_eq!(data.len(), (7 * bits as usize).div_ceil(8));
///     assert_eq!(unpack_bits(&data, bits).collect::<Vec<_>>(), words, "{bits} bits");
/// }
/// assert_eq!(pack_bits([0xabc, 0x123].into_iter(), 12), vec![0xbc, 0x3a, 0x12]);
/// ```
pub fn pack_bits(words: impl ExactSizeIterator<Item = u64>, bits: u32) -> Vec<u8> {
    let mask = low_bits(bits);
    let mut data = Vec::with_capacity((words.len() * bits as usize).div_ceil(8));
    // Fewer than 8 bits are held between words, so a word of up to 64 bits always fits beside them.
    let (mut held_bits, mut held) = (0u128, 0u32);
    for w in words {
        held_bits |= ((w & mask) as u128) << held;
        held += bits;
        while held >= 8 {
            data.push(held_bits as u8);
            held_bits >>= 8;
            held -= 8;
        }
    }
    if held > 0 {
        data.push(held_bits as u8);
    }
    data
}

/// The words [`pack_bits`] packed at `bits` (1..=64) bits each: as many as whole words fit in `data`.
pub fn unpack_bits(data: &[u8], bits: u32) -> impl Iterator<Item = u64> + '_ {
    let q = bits as usize;
    let mask = low_bits(bits);
    (0..data.len() * 8 / q).map(move |i| {
        // Word i starts at bit i*q: read the 16 bytes from its first (fewer at the end) and shift.
        let (byte, shift) = (i * q / 8, i * q % 8);
        let mut buf = [0u8; 16];
        let end = (byte + 16).min(data.len());
        buf[..end - byte].copy_from_slice(&data[byte..end]);
        ((u128::from_le_bytes(buf) >> shift) as u64) & mask
    })
}
