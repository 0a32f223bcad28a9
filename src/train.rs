//! Mini-batch training of any [`BinaryClassifier`]: Adam on binary cross-entropy, seeded shuffling and dropout,
//! early stopping on validation loss (the best epoch's parameters are returned), a progress bar per epoch.
//!
//! [`train_private`] is the DP-SGD variant: Poisson batches, clipped per-example gradients, noise.

use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::{Tensor, TensorData};
use ndarray::ArrayView2;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::model::{BinaryClassifier, Cpu, DropoutRng, Train, bce_with_logits, map_rows, to_tensor};
use crate::privacy::dpsgd::{PrivacyRng, PrivateModel, noisy_gradient};
use crate::privacy::plan::DpPlan;

/// Feature rows with their 0/1 labels.
#[derive(Debug, Clone, Copy)]
pub struct Examples<'a> {
    /// One row per example.
    pub x: ArrayView2<'a, f32>,
    /// One label per row.
    pub y: &'a [u8],
}

impl Examples<'_> {
    /// The rows at `idx` and their labels as training tensors (`[n, d]`, `[n, 1]`).
    pub fn batch(&self, idx: &[usize], device: &burn::tensor::Device<Train>) -> (Tensor<Train, 2>, Tensor<Train, 2>) {
        let x = to_tensor::<Train>(self.x.select(ndarray::Axis(0), idx).view(), device);
        let y: Vec<f32> = idx.iter().map(|&i| self.y[i] as f32).collect();
        (x, Tensor::from_data(TensorData::new(y, [idx.len(), 1]), device))
    }
}

/// What happened in one epoch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochStats {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean training loss over the epoch's batches.
    pub train_loss: f64,
    /// Mean validation loss.
    pub val_loss: f64,
    /// Validation accuracy.
    pub val_accuracy: f64,
}

/// A trained model (the best epoch by validation loss) and its history.
#[derive(Debug)]
pub struct Trained<M> {
    /// Parameters of the best epoch, on the inference backend.
    pub model: M,
    /// One entry per epoch run.
    pub history: Vec<EpochStats>,
    /// The epoch whose parameters were kept: the one of best validation loss without DP; with DP-SGD
    /// always the last one (choosing by validation loss is not part of the accounted mechanism).
    pub best_epoch: usize,
    /// Training ended before its schedule did: patience ran out (without DP), or the privacy filter
    /// (`[privacy] max_epsilon`) stopped it (DP-SGD).
    pub stopped_early: bool,
    /// Wall time in seconds.
    pub seconds: f64,
}

impl<M> Trained<M> {
    /// Validation accuracy at the kept epoch (`best_epoch`); None when no epoch ran.
    pub fn kept_validation_accuracy(&self) -> Option<f64> {
        self.history.get(self.best_epoch.saturating_sub(1)).map(|e| e.val_accuracy)
    }
}

/// Mean BCE and accuracy of `model` on `data`.
pub fn evaluate_loss<M: BinaryClassifier<Cpu>>(model: &M, data: Examples<'_>) -> (f64, f64) {
    let device = Default::default();
    let logits = map_rows::<Cpu>(data.x, &device, |t| model.logits(t, None));
    let mut loss = 0.0;
    let mut correct = 0usize;
    for (z, &y) in logits.iter().zip(data.y) {
        let (z, y) = (*z as f64, y as f64);
        loss += z.max(0.0) - z * y + (-z.abs()).exp().ln_1p();
        correct += usize::from((z >= 0.0) == (y == 1.0));
    }
    let n = data.y.len().max(1) as f64;
    (loss / n, correct as f64 / n)
}

/// Train `model` with DP-SGD under `plan`: Poisson-sampled batches, per-example clipping, Gaussian noise, Adam on
/// the private gradient, `plan.steps_allowed` steps. No early stopping and no best-epoch selection: both would
/// consult the (private) validation split outside the accountant; the last step's parameters are returned and the
/// validation figures are reported for information only.
pub fn train_private<M>(model: M, train: Examples<'_>, val: Examples<'_>, plan: &DpPlan, rng: &mut PrivacyRng, seed: u64, what: &str) -> Trained<M::InnerModule>
where
    M: PrivateModel<Train>,
    M::InnerModule: BinaryClassifier<Cpu>,
{
    let started = Instant::now();
    let device = Default::default();
    let mut optim = AdamConfig::new().init::<Train, M>();
    let mut drop_rng = ChaCha8Rng::seed_from_u64(crate::seeds::stream(seed, crate::seeds::TRAINING));
    let n = train.y.len();
    let expected_batch = plan.sampling_rate * n as f64;
    let mut model = model;
    let mut history = Vec::new();
    let mut done = 0;
    let mut epoch = 0;
    // The whole training set as tensors, made once: a full batch (every step at q = 1) reuses it instead of copying
    // every row twice per step. Poisson sampling lists the rows in order, so a batch of n rows is exactly it.
    let mut all_rows: Option<(Tensor<Train, 2>, Tensor<Train, 2>)> = None;
    while done < plan.steps_allowed {
        epoch += 1;
        let steps = plan.steps_per_epoch.min(plan.steps_allowed - done);
        let bar = crate::progress::bar(steps as u64, &format!("{what} (DP) epoch {epoch}"));
        let (mut loss, mut seen) = (0.0, 0usize);
        for _ in 0..steps {
            let batch = rng.poisson_batch(n, plan.sampling_rate);
            let clipped = if batch.is_empty() {
                GradientsParams::new()
            } else {
                let (x, y) = if batch.len() == n { all_rows.get_or_insert_with(|| train.batch(&batch, &device)).clone() } else { train.batch(&batch, &device) };
                let c = model.clipped_gradient_sum(x, y, plan.max_grad_norm, Some(&mut DropoutRng { rng: &mut drop_rng }));
                loss += c.loss_sum;
                seen += batch.len();
                c.grads
            };
            let grads = noisy_gradient(&model, clipped, plan.noise_multiplier, plan.max_grad_norm, expected_batch, &mut rng.noise);
            model = optim.step(plan.learning_rate, model, grads);
            bar.inc(1);
        }
        bar.finish_and_clear();
        done += steps;
        let (val_loss, val_accuracy) = evaluate_loss(&model.valid(), val);
        let stats = EpochStats { epoch, train_loss: loss / seen.max(1) as f64, val_loss, val_accuracy };
        tracing::info!(what, epoch, steps = done, train_loss = stats.train_loss, val_loss, val_accuracy, "DP epoch done");
        history.push(stats);
    }
    let last = history.len();
    Trained { model: model.valid(), history, best_epoch: last, stopped_early: plan.stopped_by_budget(), seconds: started.elapsed().as_secs_f64() }
}

/// Train `model` on `train`, early-stopping on `val`. `what` names the run in logs and the progress bar.
pub fn train<M>(model: M, train: Examples<'_>, val: Examples<'_>, cfg: &TrainConfig, seed: u64, what: &str) -> Trained<M::InnerModule>
where
    M: AutodiffModule<Train> + BinaryClassifier<Train>,
    M::InnerModule: BinaryClassifier<Cpu>,
{
    assert_eq!(train.x.nrows(), train.y.len(), "one label per training row");
    let started = Instant::now();
    let device = Default::default();
    let mut optim = AdamConfig::new().init::<Train, M>();
    let mut rng = ChaCha8Rng::seed_from_u64(crate::seeds::stream(seed, crate::seeds::TRAINING));
    let mut model = model;
    let mut best = (f64::INFINITY, model.valid(), 0usize);
    let mut history = Vec::new();
    let mut since_best = 0;
    let mut order: Vec<usize> = (0..train.y.len()).collect();
    let batches = order.len().div_ceil(cfg.batch_size);
    let mut stopped_early = false;
    for epoch in 1..=cfg.epochs {
        order.shuffle(&mut rng);
        let bar = crate::progress::bar(batches as u64, &format!("{what} epoch {epoch}/{}", cfg.epochs));
        let mut total = 0.0;
        for batch in order.chunks(cfg.batch_size) {
            let (x, y) = train.batch(batch, &device);
            let logits = model.logits(x, Some(&mut DropoutRng { rng: &mut rng }));
            let loss = bce_with_logits(logits, y).mean();
            total += loss.clone().into_scalar() as f64;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(cfg.learning_rate, model, grads);
            bar.inc(1);
        }
        bar.finish_and_clear();
        let inner = model.valid();
        let (val_loss, val_accuracy) = evaluate_loss(&inner, val);
        let stats = EpochStats { epoch, train_loss: total / batches as f64, val_loss, val_accuracy };
        tracing::info!(what, epoch, train_loss = stats.train_loss, val_loss, val_accuracy, "epoch done");
        history.push(stats);
        if val_loss < best.0 {
            best = (val_loss, inner, epoch);
            since_best = 0;
        } else {
            since_best += 1;
            if cfg.patience > 0 && since_best >= cfg.patience {
                stopped_early = epoch < cfg.epochs;
                break;
            }
        }
    }
    Trained { model: best.1, history, best_epoch: best.2, stopped_early, seconds: started.elapsed().as_secs_f64() }
}
