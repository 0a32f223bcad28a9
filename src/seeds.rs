//! Seed streams: every random draw made from a run's seed (or from a test's insecure seed) mixes in a constant of
//! its own, so two uses of one seed never draw the same numbers. They are all here, checked distinct; the values
//! are the ones earlier releases used, so seeded runs reproduce.
//!
//! ```
//! use cryptotl::seeds;
//! assert_ne!(seeds::stream(42, seeds::HEAD_INIT), seeds::stream(42, seeds::LOWER_INIT));
//! ```

/// The lower network's initial weights.
pub const LOWER_INIT: u64 = 0x10e3;
/// The pretraining network's output layer (on top of the lower network).
pub const PRETRAIN_OUTPUT_INIT: u64 = 0x0a7;
/// A head's initial weights.
pub const HEAD_INIT: u64 = 0x4ead;
/// Batch order and dropout masks of (non-private) training.
pub const TRAINING: u64 = 0x7a1;
/// DP-SGD's Poisson sampling (insecure seeds only: real runs draw from the OS).
pub const DP_SAMPLING: u64 = 0x5a;
/// DP-SGD's Gaussian noise (insecure seeds only).
pub const DP_NOISE: u64 = 0x401e;
/// The private raw-feature baseline's DP-SGD (insecure seeds only), apart from the transfer head's.
pub const RAW_BASELINE_DP: u64 = 0xba5e;
/// The learning curves' subsets (further mixed with the size and the draw).
pub const CURVE_SUBSETS: u64 = 0xc0_12fe;
/// The learning curves' cross-validation folds (mixed with the size and the draw, as the subsets are).
pub const CURVE_FOLDS: u64 = 0xc0_f01d5;
/// The bag-of-words score's cross-fitting folds (`head.inputs = "transfer+bow"`).
pub const BOW_FOLDS: u64 = 0xb0f_f01d;
/// The audit's canary labels and inclusion (mixed with `[audit] seed`).
pub const AUDIT_CANARIES: u64 = 0xca_4a41;

/// The membership attack's sample of source training examples.
pub const MEMBERSHIP: u64 = 0x03e3_be25;

/// Every stream above.
pub const ALL: [u64; 12] = [
    LOWER_INIT,
    PRETRAIN_OUTPUT_INIT,
    HEAD_INIT,
    TRAINING,
    DP_SAMPLING,
    DP_NOISE,
    RAW_BASELINE_DP,
    CURVE_SUBSETS,
    CURVE_FOLDS,
    BOW_FOLDS,
    AUDIT_CANARIES,
    MEMBERSHIP,
];

/// The seed of one stream.
pub fn stream(seed: u64, stream: u64) -> u64 {
    seed ^ stream
}

#[cfg(test)]
mod tests {
    #[test]
    fn streams_are_distinct() {
        let mut all = super::ALL.to_vec();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), super::ALL.len());
    }
}
