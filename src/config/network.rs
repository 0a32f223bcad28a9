//! `[lower]` (the server's network), `[head]` (the client's), `[pretrain]` and `[head_training]` (their schedules).

use serde::{Deserialize, Serialize};

use super::Invalid;
use crate::error::Result;

/// Activation of the lower network (evaluated later as a TFHE lookup table).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// max(0, x).
    Relu,
    /// The CryptoTL reference's cubic approximation of ReLU (for comparison with CKKS).
    CubicRelu,
    /// tanh.
    Tanh,
    /// No activation (the network is then linear).
    Identity,
}

/// The server's lower network: conv1d(k) -> dense(hidden) -> activation -> avg-pool(pool, stride 1) -> dense(output).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LowerNetConfig {
    /// Conv1d kernel (1 filter, same padding, no bias). 0 disables the convolution.
    pub conv_kernel: usize,
    /// Width of the first dense layer.
    pub hidden: usize,
    /// Activation after the first dense layer.
    pub activation: Activation,
    /// Average-pool window (stride 1); 1 disables pooling.
    pub pool: usize,
    /// Width of the output dense layer (what the client receives). 0 ends the network at the pooling.
    pub output: usize,
    /// Drop, before compiling, every ReLU neuron that never fires on the server's source training data (its
    /// pre-activation range ends at or below 0): it outputs 0 on every source input and costs one bootstrap per
    /// sample. ReLU networks without pooling only; decided from the calibration ranges the program is compiled
    /// from, so it reveals nothing they do not. Not part of the pretraining key (the pretrained network is the same).
    pub prune_dead: bool,
}
impl Default for LowerNetConfig {
    fn default() -> Self {
        Self {
            conv_kernel: 9,
            hidden: 32,
            activation: Activation::Relu,
            pool: 1,
            output: 0,
            prune_dead: true,
        }
    }
}

impl LowerNetConfig {
    /// The CryptoTL paper's lower network: conv1d(9) -> dense(768) -> ReLU -> avg-pool(3) -> dense(766).
    pub fn paper() -> Self {
        Self { conv_kernel: 9, hidden: 768, activation: Activation::Relu, pool: 3, output: 766, prune_dead: true }
    }

    /// The paper's network as it runs under encryption: it ends at the pooled activation (768 -> 768 ReLU ->
    /// avg-pool 3 -> 766); the client's head takes the role of the last dense layer.
    pub fn paper_encrypted() -> Self {
        Self { output: 0, ..Self::paper() }
    }

    /// Width of what the lower network outputs.
    pub fn output_dim(&self) -> usize {
        if self.output > 0 { self.output } else { self.hidden + 1 - self.pool }
    }
}

/// Memory the system can give this process now (`MemAvailable` of `/proc/meminfo`, in bytes); `None` where
/// that is not known (not Linux, or unreadable), and then only the fixed bound applies.
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// What the client's head is: the linear probe or the CryptoTL paper's MLP.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HeadKind {
    /// L2-regularised logistic regression (the standard linear probe): fitted exactly by L-BFGS on standardised
    /// inputs without DP, by DP-SGD with `[privacy]`. The default: it is the best head on every shipped target's
    /// validation split at small and full label counts (README "Defaults, and why"; docs/results.md "Heads for small data").
    #[default]
    Linear,
    /// The paper's head: dense(hidden) -> ReLU -> max-pool -> dropout -> dense(1), trained with Adam.
    Mlp,
}

/// What the client's head reads.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum HeadInputs {
    /// The decrypted outputs of the server's frozen network only.
    #[default]
    #[serde(rename = "transfer")]
    Transfer,
    /// The decrypted outputs side by side with the client's own (scaled) features: the client owns both, so
    /// using them together costs no privacy and lets the head fall back on its own features where transfer is weak.
    #[serde(rename = "transfer+own")]
    TransferPlusOwn,
    /// The decrypted outputs beside one more column: the score of a bag-of-words logistic regression fitted on the
    /// client's own training texts, out of fold for the training rows (each row scored by a model that did not see
    /// it), so the head learns how far to trust it. The client holds the texts, so this costs no privacy towards
    /// the server; but the score is fitted on the labels without DP, so it cannot go with `[privacy]`.
    #[serde(rename = "transfer+bow")]
    TransferPlusBow,
}

impl HeadInputs {
    /// The config spelling.
    pub fn name(self) -> &'static str {
        match self {
            Self::Transfer => "transfer",
            Self::TransferPlusOwn => "transfer+own",
            Self::TransferPlusBow => "transfer+bow",
        }
    }
}

/// The client's head. `kind = "linear"` (default): logistic regression with inverse L2 strength `c`.
/// `kind = "mlp"`: dense(hidden) -> ReLU -> max-pool(pool, stride 1) -> dropout -> dense(1) -> sigmoid.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HeadConfig {
    /// `linear` (logistic regression) or `mlp` (the paper's head).
    pub kind: HeadKind,
    /// `transfer` (the decrypted outputs), `transfer+own` (those and the client's own features side by side) or
    /// `transfer+bow` (those and a cross-fitted bag-of-words score).
    pub inputs: HeadInputs,
    /// `linear`: inverse L2 strength, as scikit-learn's `C` (the objective is C·Σ loss + ½‖w‖², bias not
    /// penalised); larger is weaker regularisation. A number, or `"validation"` (the default): the C of
    /// [`LINEAR_HEAD_CS`] whose head scores best on the validation split, as scikit-learn's
    /// `LogisticRegressionCV` would choose it. Ignored by DP-SGD, whose clipping and noise regularise.
    pub c: InverseL2,
    /// `mlp`: width of the head's dense layer. 0 means "same as its input" (766 on the paper network).
    pub hidden: usize,
    /// `mlp`: max-pool window (stride 1); 1 disables pooling.
    pub pool: usize,
    /// `mlp`: dropout probability during training.
    pub dropout: f64,
    /// What the server's network is applied to: `text` (each text's feature vector, the default) or `sentence`
    /// (each sentence of a text separately, through the same encrypted path; the client averages a text's
    /// decrypted outputs). For long texts on a network pretrained on sentences.
    #[serde(skip_serializing_if = "TransferUnit::is_text")]
    pub transfer_unit: TransferUnit,
    /// `sentence`: at most this many sentences per text go to the server, evenly spaced through the text (each
    /// costs one encrypted evaluation).
    #[serde(skip_serializing_if = "is_default_max_sentences")]
    pub max_sentences: usize,
}

/// The inverse L2 strengths `head.c = "validation"` chooses from: half decades from 10^-4 to 10 (scikit-learn's
/// `LogisticRegressionCV` searches 10^-4 to 10^4). On standardised sentence embeddings the best C is small: the
/// quickstart's head on raw MiniLM embeddings scores 0.913 on validation at C = 0.001 against 0.847 at C = 1.
pub const LINEAR_HEAD_CS: [f64; 11] = [1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0];

/// With `head.inputs = "transfer+own"` and `head.c = "validation"`, the weights on the client's own (standardised)
/// features that the head also chooses from, beside each C: 1, 1/√10, 0.1 and 0, i.e. their coefficients penalised
/// 1, 10, 100 times as much as the transfer outputs', or left out. With few labels the transfer outputs alone
/// generalise best, with many the own features add to them; one penalty for both cannot do both. Measured on the
/// quickstart (train + validation pooled, 10 draws, chosen on 150 held-out rows, scored on the rest): 16 labels
/// 0.877 (own features always in: 0.822, left out: 0.873), 64: 0.890 (0.891, 0.881), 256: 0.905 (0.903, 0.889).
pub const OWN_FEATURE_WEIGHTS: [f64; 4] = [1.0, 0.316_227_766_016_837_94, 0.1, 0.0];

/// The linear head's inverse L2 strength (`head.c`): a fixed number, or chosen on the validation split.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum InverseL2 {
    /// This C.
    Fixed(f64),
    /// The C of [`LINEAR_HEAD_CS`] with the best validation accuracy (ties: the lower validation log-loss, then the
    /// smaller C); beside the client's own features (`transfer+own`) also their weight, from
    /// [`OWN_FEATURE_WEIGHTS`]. Each head chooses its own: the transfer head, the raw-feature baseline and every
    /// learning-curve subset alike.
    Validation,
}

impl Serialize for InverseL2 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Self::Fixed(c) => s.serialize_f64(*c),
            Self::Validation => s.serialize_str("validation"),
        }
    }
}

impl<'de> Deserialize<'de> for InverseL2 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = InverseL2;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number (the inverse L2 strength) or \"validation\"")
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> std::result::Result<InverseL2, E> {
                Ok(InverseL2::Fixed(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<InverseL2, E> {
                Ok(InverseL2::Fixed(v as f64))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<InverseL2, E> {
                Ok(InverseL2::Fixed(v as f64))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<InverseL2, E> {
                match v {
                    "validation" => Ok(InverseL2::Validation),
                    other => Err(E::custom(format!("head.c: expected a number or \"validation\", got \"{other}\""))),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// What one encrypted evaluation of the server's network covers (see [`HeadConfig::transfer_unit`]).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TransferUnit {
    /// The whole text's feature vector.
    #[default]
    Text,
    /// Each sentence's feature vector; a text's outputs are the mean over its sentences.
    Sentence,
}

impl TransferUnit {
    fn is_text(&self) -> bool {
        *self == TransferUnit::Text
    }
}

/// Sentences per text sent to the server when `[head] max_sentences` is not given.
pub const DEFAULT_MAX_SENTENCES: usize = 16;

fn is_default_max_sentences(n: &usize) -> bool {
    *n == DEFAULT_MAX_SENTENCES
}
impl Default for HeadConfig {
    fn default() -> Self {
        Self {
            kind: HeadKind::default(),
            inputs: HeadInputs::default(),
            c: InverseL2::Validation,
            hidden: 0,
            pool: 1,
            dropout: 0.2,
            transfer_unit: TransferUnit::default(),
            max_sentences: DEFAULT_MAX_SENTENCES,
        }
    }
}

impl HeadConfig {
    /// The paper's MLP head with `hidden` units (0 = as wide as its input), max-pool `pool` and dropout `dropout`.
    pub fn mlp(hidden: usize, pool: usize, dropout: f64) -> Self {
        Self { kind: HeadKind::Mlp, hidden, pool, dropout, ..Self::default() }
    }
}

/// A training schedule: Adam on binary cross-entropy with early stopping on the validation split.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Maximum number of epochs.
    pub epochs: usize,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Adam learning rate.
    pub learning_rate: f64,
    /// Stop after this many epochs without validation-loss improvement (0 = never stop early).
    pub patience: usize,
}
impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 20,
            batch_size: 32,
            learning_rate: 1e-3,
            patience: 3,
        }
    }
}

impl LowerNetConfig {
    /// Shape limits, and a size check against this machine before anything is allocated. `input_dim` is the
    /// feature width.
    pub(super) fn check(&self, input_dim: usize, at: Invalid) -> Result<()> {
        let l = self;
        if l.conv_kernel > 0 && l.conv_kernel.is_multiple_of(2) {
            return Err(at.key("lower.conv_kernel", format!("must be odd (same padding) or 0 to disable, got {}", l.conv_kernel)));
        }
        if l.conv_kernel > input_dim {
            return Err(at.key("lower.conv_kernel", format!("{} is wider than the feature width {input_dim}", l.conv_kernel)));
        }
        if l.hidden == 0 || l.hidden > 65_536 {
            return Err(at.key("lower.hidden", format!("must be in 1..=65536, got {}", l.hidden)));
        }
        if l.pool == 0 || l.pool > l.hidden {
            return Err(at.key("lower.pool", format!("must be in 1..=lower.hidden ({}), got {}", l.hidden, l.pool)));
        }
        if l.output > 65_536 {
            return Err(at.key("lower.output", format!("must be at most 65536 (0 = no output layer), got {}", l.output)));
        }
        // The first dense layer's weights, their gradient and Adam's two moments (4 copies of f32), and the same
        // again for the encrypted stage's folded matrix.
        let weights = (input_dim as u128) * (l.hidden as u128) + ((l.hidden + 1 - l.pool) as u128) * (l.output as u128);
        const MAX_WEIGHTS: u128 = 64 << 20;
        if weights > MAX_WEIGHTS {
            return Err(at.key("lower.hidden", format!(
                "the lower network would have {weights} weights ({:.1} GiB to train); at most {MAX_WEIGHTS} (features.dim x lower.hidden): lower one of them",
                (weights * 16) as f64 / (1u64 << 30) as f64)));
        }
        // And against this machine: the estimate (bytes) beside what the system has free.
        let estimate = (weights * 32) as u64;
        if let Some(available) = available_memory()
            && estimate > available
        {
            return Err(at.key("lower.hidden", format!(
                "the lower network would need about {:.1} GiB to train and compile ({weights} weights x 4 copies x 2 stages of f32), more than the {:.1} GiB this machine has available; lower features.dim or lower.hidden",
                estimate as f64 / (1u64 << 30) as f64, available as f64 / (1u64 << 30) as f64)));
        }
        Ok(())
    }
}

impl HeadConfig {
    /// Pool, dropout, C and the sentence cap in range; `lower` gives the head's input width.
    pub(super) fn check(&self, lower: &LowerNetConfig, at: Invalid) -> Result<()> {
        let h = self;
        let head_hidden = if h.hidden == 0 { lower.output_dim() } else { h.hidden };
        if h.pool == 0 || h.pool > head_hidden {
            return Err(at.key("head.pool", format!("must be in 1..=head width ({head_hidden}), got {}", h.pool)));
        }
        if !(h.dropout.is_finite() && (0.0..1.0).contains(&h.dropout)) {
            return Err(at.key("head.dropout", format!("must be in [0, 1), got {}", super::shown_number(h.dropout))));
        }
        if let InverseL2::Fixed(c) = h.c
            && !(c.is_finite() && c > 0.0 && c <= 1e12)
        {
            return Err(at.key("head.c", format!("must be a number in (0, 1e12] (inverse L2 strength) or \"validation\", got {}", super::shown_number(c))));
        }
        if !(1..=256).contains(&h.max_sentences) {
            return Err(at.key("head.max_sentences", format!("must be in 1..=256 (encrypted evaluations per text), got {}", h.max_sentences)));
        }
        Ok(())
    }
}

impl TrainConfig {
    /// Epochs, batch size and learning rate in range; `key` is the table (`pretrain` or `head_training`).
    pub(super) fn check(&self, key: &str, at: Invalid) -> Result<()> {
        if self.epochs == 0 || self.epochs > 1_000_000 {
            return Err(at.key(&format!("{key}.epochs"), format!("must be in 1..=1000000, got {}", self.epochs)));
        }
        if self.batch_size == 0 {
            return Err(at.key(&format!("{key}.batch_size"), "must be at least 1".into()));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0 && self.learning_rate <= 1.0) {
            return Err(at.key(&format!("{key}.learning_rate"), format!("must be in (0, 1], got {}", super::shown_number(self.learning_rate))));
        }
        Ok(())
    }
}
