//! The TFHE parameter sets on offer: tfhe-rs's own vetted 128-bit sets, chosen by name.
//!
//! We use their LWE/GLWE dimensions, noise distributions and bootstrap decomposition unchanged, so the security
//! estimate (>= 128 bits) carries over. Their stated failure probability does **not** carry over: tfhe-rs computes
//! it for its own pipeline (keyswitch, 4-bit messages, linear combinations of 2-norm <= 5). Ours (linear layer of
//! larger norm under the small key, one bootstrap per neuron) is measured and bounded in this project's tests.

use tfhe::core_crypto::prelude::*;
use tfhe::shortint::parameters::ClassicPBSParameters;
use tfhe::shortint::parameters::v1_8::{
    V1_8_PARAM_MESSAGE_1_CARRY_1_KS_PBS_TUNIFORM_2M128, V1_8_PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128,
    V1_8_PARAM_MESSAGE_3_CARRY_3_KS_PBS_TUNIFORM_2M128,
};

use crate::error::{HeError, Result};

/// A vetted tfhe-rs 1.8 parameter set (TUniform noise, 128-bit security).
///
/// ```
/// use cryptotl_server::ParameterSet;
/// let p = ParameterSet::from_name("V1_8_PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128").unwrap();
/// assert_eq!(p, ParameterSet::default());
/// assert_eq!((p.lwe_dimension(), p.polynomial_size()), (918, 2048));
/// assert!(ParameterSet::from_name("PARAM_I_MADE_UP").is_err());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ParameterSet {
    /// n = 879, k = 4, N = 512: the fastest bootstrap, 2N = 1024 lookup positions.
    Message1Carry1,
    /// n = 918, k = 1, N = 2048: tfhe-rs's default; 2N = 4096 lookup positions. Our default.
    #[default]
    Message2Carry2,
    /// n = 1077, k = 1, N = 8192, two-level bootstrap: lower noise, much slower.
    Message3Carry3,
}

impl ParameterSet {
    /// All sets, in order of bootstrap cost.
    pub const ALL: [ParameterSet; 3] = [Self::Message1Carry1, Self::Message2Carry2, Self::Message3Carry3];

    /// The tfhe-rs constant's name (what configs write).
    pub fn name(self) -> &'static str {
        match self {
            Self::Message1Carry1 => "V1_8_PARAM_MESSAGE_1_CARRY_1_KS_PBS_TUNIFORM_2M128",
            Self::Message2Carry2 => "V1_8_PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128",
            Self::Message3Carry3 => "V1_8_PARAM_MESSAGE_3_CARRY_3_KS_PBS_TUNIFORM_2M128",
        }
    }

    /// Every name on offer.
    pub fn names() -> Vec<&'static str> {
        Self::ALL.iter().map(|p| p.name()).collect()
    }

    /// The set with this tfhe-rs name.
    pub fn from_name(name: &str) -> Result<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name).ok_or_else(|| HeError::UnknownParameterSet(name.into()))
    }

    /// The tfhe-rs parameters themselves.
    pub fn tfhe(self) -> ClassicPBSParameters {
        match self {
            Self::Message1Carry1 => V1_8_PARAM_MESSAGE_1_CARRY_1_KS_PBS_TUNIFORM_2M128,
            Self::Message2Carry2 => V1_8_PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128,
            Self::Message3Carry3 => V1_8_PARAM_MESSAGE_3_CARRY_3_KS_PBS_TUNIFORM_2M128,
        }
    }

    /// Dimension n of the small LWE key (inputs are encrypted under it; the bootstrap reads it).
    pub fn lwe_dimension(self) -> usize {
        self.tfhe().lwe_dimension.0
    }

    /// GLWE dimension k.
    pub fn glwe_dimension(self) -> usize {
        self.tfhe().glwe_dimension.0
    }

    /// Polynomial size N.
    pub fn polynomial_size(self) -> usize {
        self.tfhe().polynomial_size.0
    }

    /// Dimension k*N of the big LWE key (bootstrap outputs are under it).
    pub fn big_lwe_dimension(self) -> usize {
        self.glwe_dimension() * self.polynomial_size()
    }

    /// The most lookup-table index bits a bootstrap can resolve: log2(N) (2N positions, half of them for the
    /// padding bit's negacyclic copy), minus one so that every box holds at least two positions.
    pub fn max_lookup_bits(self) -> u32 {
        self.polynomial_size().trailing_zeros() - 1
    }

    /// Standard deviation, as a fraction of the torus, of a fresh encryption under the small key
    /// (TUniform with bound 2^b: variance (2^(2b+1) + 1) / 6 in units of 2^-64).
    pub fn fresh_noise_std(self) -> f64 {
        tuniform_std(self.tfhe().lwe_noise_distribution)
    }

    /// Standard deviation (torus fraction) of the bootstrap key's GLWE noise.
    pub fn glwe_noise_std(self) -> f64 {
        tuniform_std(self.tfhe().glwe_noise_distribution)
    }

    /// The failure probability tfhe-rs states for its own use of this set (log2). Not ours: see the module docs.
    pub fn tfhe_log2_p_fail(self) -> f64 {
        self.tfhe().log2_p_fail
    }

    /// 64-bit words of a seeded bootstrap key: n GGSW ciphertexts of (k+1) * levels GLWE rows, each stored as its
    /// body polynomial only (the masks are regenerated from the seed): n * (k+1) * levels * N.
    pub fn seeded_bootstrap_key_words(self) -> usize {
        let p = self.tfhe();
        p.lwe_dimension.0 * (p.glwe_dimension.0 + 1) * p.pbs_level.0 * p.polynomial_size.0
    }
}

fn tuniform_std(d: DynamicDistribution<u64>) -> f64 {
    match d {
        DynamicDistribution::TUniform(t) => {
            let b = t.bound_log2() as f64;
            ((2f64.powf(2.0 * b + 1.0) + 1.0) / 6.0).sqrt() / 2f64.powi(64)
        }
        DynamicDistribution::Gaussian(g) => g.standard_dev().0,
    }
}
