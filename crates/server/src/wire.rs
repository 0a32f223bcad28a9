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
use tfhe::core_crypto::prelude::*;
use tfhe::named::Named;
use tfhe::{Unversionize, Versionize};

use crate::error::{HeError, Result};
use crate::params::ParameterSet;

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

    /// Check parameter set and every dimension of the bootstrap key.
    pub fn check(&self, params: ParameterSet) -> Result<()> {
        check_params(Self::WHAT, &self.parameter_set, params)?;
        if !self.bootstrap_key.matches(params) {
            return Err(shape(Self::WHAT, format!("bootstrap key dimensions do not match {}", params.name())));
        }
        Ok(())
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

    /// Check parameter set, key id and shape.
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
        Ok(())
    }
}

/// The encrypted outputs of one sample: LWE ciphertexts under the client's big key, modulus-switched to 32 bits
/// (half the download; the outputs' encoding leaves ample room for the extra rounding noise).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, tfhe_versionable::Versionize)]
#[versionize(EncryptedOutputVersions)]
pub struct EncryptedOutput {
    /// The client's key id.
    pub key_id: u64,
    /// The tfhe-rs parameter-set name.
    pub parameter_set: String,
    /// Number of ciphertexts.
    pub count: u64,
    /// `count` ciphertexts of `k*N + 1` words each (mask then body), modulo 2^32.
    pub data: Vec<u32>,
}

wire_object!(EncryptedOutput, EncryptedOutputVersions, "cryptotl::EncryptedOutput", "encrypted output");

impl EncryptedOutput {
    /// Serialized size limit for `outputs` ciphertexts.
    pub fn size_limit(params: ParameterSet, outputs: usize) -> u64 {
        (outputs * (params.big_lwe_dimension() + 1)) as u64 * 4 + SLACK_BYTES
    }

    /// Check parameter set, key id and shape.
    pub fn check(&self, params: ParameterSet, key_id: u64, outputs: usize) -> Result<()> {
        check_params(Self::WHAT, &self.parameter_set, params)?;
        check_key(Self::WHAT, self.key_id, key_id)?;
        let lwe_size = params.big_lwe_dimension() + 1;
        if self.count as usize != outputs || self.data.len() != outputs * lwe_size {
            return Err(shape(Self::WHAT, format!("{} ciphertexts in {} words, expected {outputs} of {lwe_size}", self.count, self.data.len())));
        }
        Ok(())
    }

    /// Ciphertext `i` (mask words then the body).
    pub fn ciphertext(&self, i: usize) -> &[u32] {
        let n = self.data.len() / self.count.max(1) as usize;
        &self.data[i * n..(i + 1) * n]
    }
}
