//! The TFHE parameter sets on offer: tfhe-rs's own vetted 128-bit sets, chosen by name.
//!
//! We use their LWE/GLWE dimensions, noise distributions and bootstrap decomposition unchanged, so the security
//! estimate (>= 128 bits) carries over. Their stated failure probability does **not** carry over: tfhe-rs computes
//! it for its own pipeline (keyswitch, 4-bit messages, linear combinations of 2-norm <= 5). Ours (linear layer of
//! larger norm under the small key, one bootstrap per neuron) is measured and bounded in this project's tests.

use tfhe::core_crypto::prelude::*;
use tfhe::shortint::parameters::v1_8::{
    V1_8_PARAM_MESSAGE_1_CARRY_1_KS_PBS_TUNIFORM_2M128, V1_8_PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128,
    V1_8_PARAM_MESSAGE_3_CARRY_3_KS_PBS_TUNIFORM_2M128, V1_8_PARAM_MULTI_BIT_GROUP_3_MESSAGE_1_CARRY_1_KS_PBS_TUNIFORM_2M128,
};
use tfhe::shortint::parameters::{ClassicPBSParameters, MultiBitPBSParameters};

use crate::error::{HeError, Result};

/// A vetted tfhe-rs 1.8 parameter set (TUniform noise, 128-bit security): classic or multi-bit bootstrapping.
///
/// ```
/// use cryptotl_server::ParameterSet;
/// let p = ParameterSet::from_name("V1_8_PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128").unwrap();
/// assert_eq!(p, ParameterSet::default());
/// assert_eq!((p.lwe_dimension(), p.polynomial_size()), (918, 2048));
/// assert!(ParameterSet::from_name("PARAM_I_MADE_UP").is_err());
/// assert_eq!((p.grouping_factor(), p.bootstrap_key_ggsws()), (None, 918));
///
/// // The multi-bit set: 267 groups of 3 key bits, one GGSW per subset of each group.
/// let m = ParameterSet::MultiBit3Message1Carry1;
/// assert_eq!(m.grouping_factor().map(|g| g.0), Some(3));
/// assert_eq!(m.bootstrap_key_ggsws(), 267 * 8);
/// // Fresh noise 8x the default's (smaller n, same security); the modulus switch about as noisy in bins of 2N.
/// assert!((m.fresh_noise_std() / p.fresh_noise_std() - 8.0).abs() < 0.01);
/// let per_position = |q: ParameterSet| q.modulus_switch_noise_std() * 2.0 * q.polynomial_size() as f64;
/// assert!(per_position(m) < per_position(p));
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
    /// Multi-bit bootstrap, groups of 3 key bits: n = 801 (267 groups), k = 2, N = 1024, 2N = 2048 lookup
    /// positions. About 2.5x the classic default's throughput when bootstraps run in batches (see
    /// [`crate::Evaluator`]), at 8x the fresh-encryption noise (n is smaller, so the noise is larger for the same
    /// security) and a 1.7x larger evaluation key (50 MiB seeded, 39 MiB rounded). For wide networks.
    MultiBit3Message1Carry1,
}

/// The numbers of a tfhe-rs parameter set this project uses, the same for classic and multi-bit sets (tfhe-rs
/// keeps them in two types).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TfheParameters {
    /// n, the small LWE key's dimension.
    pub lwe_dimension: LweDimension,
    /// k.
    pub glwe_dimension: GlweDimension,
    /// N.
    pub polynomial_size: PolynomialSize,
    /// Noise of encryptions under the small key.
    pub lwe_noise_distribution: DynamicDistribution<u64>,
    /// Noise of the bootstrap key's GLWE encryptions.
    pub glwe_noise_distribution: DynamicDistribution<u64>,
    /// Bootstrap gadget base.
    pub pbs_base_log: DecompositionBaseLog,
    /// Bootstrap gadget levels.
    pub pbs_level: DecompositionLevelCount,
    /// Ciphertext modulus (native 2^64 for every set here).
    pub ciphertext_modulus: CiphertextModulus<u64>,
    /// tfhe-rs's failure probability for its own pipeline (log2).
    pub log2_p_fail: f64,
    /// Key bits per multi-bit group; `None` for a classic bootstrap.
    pub grouping_factor: Option<LweBskGroupingFactor>,
}

/// `From` for both tfhe-rs parameter types: the same field names, plus the grouping factor of multi-bit sets.
macro_rules! from_tfhe_parameters {
    ($ty:ty, |$p:ident| $grouping:expr) => {
        impl From<$ty> for TfheParameters {
            fn from($p: $ty) -> Self {
                Self {
                    lwe_dimension: $p.lwe_dimension,
                    glwe_dimension: $p.glwe_dimension,
                    polynomial_size: $p.polynomial_size,
                    lwe_noise_distribution: $p.lwe_noise_distribution,
                    glwe_noise_distribution: $p.glwe_noise_distribution,
                    pbs_base_log: $p.pbs_base_log,
                    pbs_level: $p.pbs_level,
                    ciphertext_modulus: $p.ciphertext_modulus,
                    log2_p_fail: $p.log2_p_fail,
                    grouping_factor: $grouping,
                }
            }
        }
    };
}

from_tfhe_parameters!(ClassicPBSParameters, |p| None);
from_tfhe_parameters!(MultiBitPBSParameters, |p| Some(p.grouping_factor));

impl ParameterSet {
    /// All sets.
    pub const ALL: [ParameterSet; 4] = [Self::Message1Carry1, Self::Message2Carry2, Self::Message3Carry3, Self::MultiBit3Message1Carry1];

    /// The tfhe-rs constant's name (what configs write).
    ///
    /// ```
    /// use cryptotl_server::ParameterSet;
    /// assert_eq!(ParameterSet::Message2Carry2.name(), "V1_8_PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Self::Message1Carry1 => "V1_8_PARAM_MESSAGE_1_CARRY_1_KS_PBS_TUNIFORM_2M128",
            Self::Message2Carry2 => "V1_8_PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128",
            Self::Message3Carry3 => "V1_8_PARAM_MESSAGE_3_CARRY_3_KS_PBS_TUNIFORM_2M128",
            Self::MultiBit3Message1Carry1 => "V1_8_PARAM_MULTI_BIT_GROUP_3_MESSAGE_1_CARRY_1_KS_PBS_TUNIFORM_2M128",
        }
    }

    /// Every name on offer.
    ///
    /// ```
    /// assert_eq!(cryptotl_server::ParameterSet::names().len(), cryptotl_server::ParameterSet::ALL.len());
    /// ```
    pub fn names() -> Vec<&'static str> {
        Self::ALL.iter().map(|p| p.name()).collect()
    }

    /// The set with this tfhe-rs name.
    ///
    /// ```
    /// use cryptotl_server::ParameterSet;
    /// let p = ParameterSet::from_name("V1_8_PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128").unwrap();
    /// assert_eq!(p, ParameterSet::Message2Carry2);
    /// assert!(ParameterSet::from_name("PARAM_MADE_UP").unwrap_err().to_string().contains("known:"));
    /// ```
    pub fn from_name(name: &str) -> Result<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name).ok_or_else(|| HeError::UnknownParameterSet { name: name.into(), known: Self::names() })
    }

    /// The tfhe-rs parameters themselves.
    ///
    /// ```
    /// let p = cryptotl_server::ParameterSet::Message2Carry2.tfhe();
    /// assert_eq!(p.polynomial_size.0, 2048);
    /// ```
    pub fn tfhe(self) -> TfheParameters {
        match self {
            Self::Message1Carry1 => V1_8_PARAM_MESSAGE_1_CARRY_1_KS_PBS_TUNIFORM_2M128.into(),
            Self::Message2Carry2 => V1_8_PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128.into(),
            Self::Message3Carry3 => V1_8_PARAM_MESSAGE_3_CARRY_3_KS_PBS_TUNIFORM_2M128.into(),
            Self::MultiBit3Message1Carry1 => V1_8_PARAM_MULTI_BIT_GROUP_3_MESSAGE_1_CARRY_1_KS_PBS_TUNIFORM_2M128.into(),
        }
    }

    /// Key bits per multi-bit group, or `None` for a classic bootstrap.
    ///
    /// ```
    /// use cryptotl_server::ParameterSet;
    /// assert!(ParameterSet::Message2Carry2.grouping_factor().is_none());
    /// assert_eq!(ParameterSet::MultiBit3Message1Carry1.grouping_factor().unwrap().0, 3);
    /// ```
    pub fn grouping_factor(self) -> Option<LweBskGroupingFactor> {
        self.tfhe().grouping_factor
    }

    /// Dimension n of the small LWE key (inputs are encrypted under it; the bootstrap reads it).
    ///
    /// ```
    /// assert_eq!(cryptotl_server::ParameterSet::Message2Carry2.lwe_dimension(), 918);
    /// ```
    pub fn lwe_dimension(self) -> usize {
        self.tfhe().lwe_dimension.0
    }

    /// GLWE dimension k.
    ///
    /// ```
    /// assert_eq!(cryptotl_server::ParameterSet::Message2Carry2.glwe_dimension(), 1);
    /// ```
    pub fn glwe_dimension(self) -> usize {
        self.tfhe().glwe_dimension.0
    }

    /// Polynomial size N.
    ///
    /// ```
    /// assert_eq!(cryptotl_server::ParameterSet::MultiBit3Message1Carry1.polynomial_size(), 1024);
    /// ```
    pub fn polynomial_size(self) -> usize {
        self.tfhe().polynomial_size.0
    }

    /// Dimension k*N of the big LWE key (bootstrap outputs are under it).
    ///
    /// ```
    /// let p = cryptotl_server::ParameterSet::MultiBit3Message1Carry1;
    /// assert_eq!(p.big_lwe_dimension(), p.glwe_dimension() * p.polynomial_size());
    /// ```
    pub fn big_lwe_dimension(self) -> usize {
        self.glwe_dimension() * self.polynomial_size()
    }

    /// The most lookup-table index bits a bootstrap can resolve: log2(N) (2N positions, half of them for the
    /// padding bit's negacyclic copy), minus one so that every box holds at least two positions.
    ///
    /// ```
    /// use cryptotl_server::ParameterSet;
    /// assert_eq!(ParameterSet::Message2Carry2.max_lookup_bits(), 10); // N = 2048
    /// assert_eq!(ParameterSet::MultiBit3Message1Carry1.max_lookup_bits(), 9); // N = 1024
    /// ```
    pub fn max_lookup_bits(self) -> u32 {
        self.polynomial_size().trailing_zeros() - 1
    }

    /// Standard deviation, as a fraction of the torus, of a fresh encryption under the small key
    /// (TUniform with bound 2^b: variance (2^(2b+1) + 1) / 6 in units of 2^-64).
    ///
    /// ```
    /// let s = cryptotl_server::ParameterSet::Message2Carry2.fresh_noise_std();
    /// assert!(s > 0.0 && s < 1e-3);
    /// ```
    pub fn fresh_noise_std(self) -> f64 {
        tuniform_std(self.tfhe().lwe_noise_distribution)
    }

    /// The security level tfhe-rs states for this set: every set offered here is one of its vetted 128-bit sets
    /// (the `…2M128` suffix: 128-bit security, failure probability below 2^-128 for its own message space).
    ///
    /// ```
    /// assert!(cryptotl_server::ParameterSet::ALL.iter().all(|p| p.security_bits() == 128));
    /// ```
    pub fn security_bits(self) -> u32 {
        128
    }

    /// The failure probability tfhe-rs states for its own use of this set (log2). Not ours: see the module docs.
    ///
    /// ```
    /// assert!(cryptotl_server::ParameterSet::Message2Carry2.tfhe_log2_p_fail() < -100.0);
    /// ```
    pub fn tfhe_log2_p_fail(self) -> f64 {
        self.tfhe().log2_p_fail
    }

    /// GGSW ciphertexts in the bootstrap key: n for a classic key; for a multi-bit one, n / g groups of 2^g (one
    /// per subset of the group).
    ///
    /// ```
    /// use cryptotl_server::ParameterSet;
    /// assert_eq!(ParameterSet::Message2Carry2.bootstrap_key_ggsws(), 918);
    /// assert_eq!(ParameterSet::MultiBit3Message1Carry1.bootstrap_key_ggsws(), 801 / 3 * 8);
    /// ```
    pub fn bootstrap_key_ggsws(self) -> usize {
        let n = self.lwe_dimension();
        match self.grouping_factor() {
            None => n,
            Some(g) => n / g.0 * g.ggsw_per_multi_bit_element().0,
        }
    }

    /// 64-bit words of a seeded bootstrap key: its GGSW ciphertexts of (k+1) * levels GLWE rows, each stored as its
    /// body polynomial only (the masks are regenerated from the seed): ggsws * (k+1) * levels * N.
    ///
    /// ```
    /// let p = cryptotl_server::ParameterSet::Message2Carry2;
    /// let t = p.tfhe();
    /// assert_eq!(p.seeded_bootstrap_key_words(), 918 * 2 * t.pbs_level.0 * 2048);
    /// ```
    pub fn seeded_bootstrap_key_words(self) -> usize {
        let p = self.tfhe();
        self.bootstrap_key_ggsws() * (p.glwe_dimension.0 + 1) * p.pbs_level.0 * p.polynomial_size.0
    }

    /// Low bits of each bootstrap-key body a client may round away before sending its key
    /// ([`crate::wire::RoundedEvaluationKey`]): two below the log2 of the GLWE noise's standard deviation (in
    /// units of 2^-64), so the rounding error (uniform, ±2^(r-1)) adds at most 1/192 of the noise variance already
    /// in the key, and far below the smallest gadget step 2^(64 - base_log * levels) the key encodes.
    ///
    /// ```
    /// use cryptotl_server::ParameterSet;
    /// // TUniform(17) GLWE noise (standard deviation 2^16.2): 14 of 64 bits, a key 22% smaller.
    /// assert_eq!(ParameterSet::MultiBit3Message1Carry1.key_rounding_bits(), 14);
    /// for p in ParameterSet::ALL {
    ///     let t = p.tfhe();
    ///     assert!(p.key_rounding_bits() + 8 <= 64 - (t.pbs_base_log.0 * t.pbs_level.0) as u32, "{}", p.name());
    /// }
    /// ```
    pub fn key_rounding_bits(self) -> u32 {
        let std_units = tuniform_std(self.tfhe().glwe_noise_distribution) * 2f64.powi(64);
        (std_units.log2().floor() - 2.0).clamp(0.0, 56.0) as u32
    }

    /// Standard deviation, as a fraction of the torus, of the bootstrap's modulus switch to 2N (the rounding of
    /// the mask, before the lookup), bounded from above. Classic: n/2 key bits (binary key) each times a rounding
    /// error uniform in ±1/2 of a 2N step, plus the body's. Multi-bit: one rounding per group of g key bits
    /// (the sum over the group's set bits is rounded once), present unless all g bits are zero, plus the body's.
    /// The evaluator's classic switch is the *centered* one, whose variance is about half this bound.
    ///
    /// ```
    /// use cryptotl_server::ParameterSet;
    /// // One rounding per group of 3 key bits: less noise than one per bit.
    /// assert!(ParameterSet::MultiBit3Message1Carry1.modulus_switch_noise_std() < ParameterSet::Message1Carry1.modulus_switch_noise_std() * 2.0);
    /// ```
    pub fn modulus_switch_noise_std(self) -> f64 {
        let n = self.lwe_dimension() as f64;
        let roundings = match self.grouping_factor() {
            None => n / 2.0 + 1.0,
            Some(g) => n / g.0 as f64 * (1.0 - 0.5f64.powi(g.0 as i32)) + 1.0,
        };
        (roundings / 12.0).sqrt() / (2.0 * self.polynomial_size() as f64)
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
