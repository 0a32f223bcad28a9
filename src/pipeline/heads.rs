//! The client's heads and baselines on the transferred features: linear or MLP, with or without DP-SGD, and the
//! inputs they read.

use std::time::Instant;

use ndarray::Array2;

use crate::bow::BagOfWords;
use crate::config::RunConfig;
use crate::error::{Error, Result};
use crate::eval::Metrics;
use crate::model::{self, Cpu, FullNet, Head, LowerNet, predict_proba};
use crate::privacy::centring::DpReferences;
use crate::train::{self, EpochStats, Trained};

use super::FeatureSplit;
use super::server::PretrainedLower;

/// A trained head (or baseline network) with its test metrics.
pub struct TrainedHead<M> {
    /// The model.
    pub trained: Trained<M>,
    /// Metrics on the test split.
    pub test: Metrics,
    /// Whether each test example is classified correctly, in order (a learning curve's test-split error needs it).
    pub test_correct: Vec<bool>,
    /// The linear head's C as fitted (None for the MLP head and DP-SGD heads).
    pub c: Option<crate::report::LinearC>,
}

impl<M> TrainedHead<M> {
    /// The report row of this model.
    pub fn result(&self, method: &str, description: String) -> crate::report::MethodResult {
        crate::report::MethodResult {
            method: method.into(),
            description,
            test: self.test.clone(),
            validation_accuracy: self.trained.kept_validation_accuracy(),
            epochs: self.trained.history.len(),
            best_epoch: self.trained.best_epoch,
            seconds: self.trained.seconds,
            c: self.c,
        }
    }
}

/// The DP-SGD schedule for `n` training examples when `[privacy]` is on (refusing a schedule beyond its budget).
pub fn privacy_plan(cfg: &RunConfig, n: usize) -> Result<Option<crate::privacy::plan::DpPlan>> {
    match &cfg.privacy {
        Some(p) if p.enabled => {
            let plan = crate::privacy::plan::plan(p, &cfg.head_training, n)?;
            if let Some(w) = plan.noise_warning() {
                tracing::warn!("{w}");
            }
            Ok(Some(plan))
        }
        _ => Ok(None),
    }
}

/// A fresh client head for inputs of width `input`, as the config describes it (also the skeleton to load a saved
/// head into).
pub fn new_head<B: burn::prelude::Backend>(cfg: &RunConfig, input: usize, device: &B::Device) -> Head<B> {
    Head::new(&cfg.head, input, cfg.head_hidden(input), cfg.seed, device)
}

/// What the client's head reads (`head.inputs`): the transferred features, or them side by side with the client's
/// own scaled features, or with the bag-of-words score of its own texts ([`BagOfWords::stacked_scores`], needs
/// `bow`, rows in the same order). The client holds all of these, so none costs privacy towards the server.
pub fn head_inputs(cfg: &RunConfig, transferred: &FeatureSplit, own: &FeatureSplit, bow: Option<&BagOfWords>) -> Result<FeatureSplit> {
    let same_examples = |ys: [&[u8]; 3]| ys == [&transferred.train_y[..], &transferred.validation_y[..], &transferred.test_y[..]];
    let beside = |extra: [ndarray::ArrayView2<'_, f32>; 3], own_columns: usize| -> Result<FeatureSplit> {
        Ok(FeatureSplit {
            train: beside_transferred(&transferred.train, extra[0])?,
            train_y: transferred.train_y.clone(),
            validation: beside_transferred(&transferred.validation, extra[1])?,
            validation_y: transferred.validation_y.clone(),
            test: beside_transferred(&transferred.test, extra[2])?,
            test_y: transferred.test_y.clone(),
            own_columns,
        })
    };
    match cfg.head.inputs {
        crate::config::HeadInputs::Transfer => Ok(transferred.clone()),
        crate::config::HeadInputs::TransferPlusOwn => {
            if !same_examples([&own.train_y, &own.validation_y, &own.test_y]) {
                return Err(Error::Features("transferred and own features are of different examples".into()));
            }
            beside([own.train.view(), own.validation.view(), own.test.view()], own.train.ncols())
        }
        crate::config::HeadInputs::TransferPlusBow => {
            let bow = bow.ok_or_else(|| Error::Internal("head.inputs = \"transfer+bow\" without the bag-of-words rows".into()))?;
            if !same_examples([&bow.train_y, &bow.validation_y, &bow.test_y]) {
                return Err(Error::Features("transferred features and bag-of-words rows are of different examples".into()));
            }
            let [tr, va, te] = bow.stacked_scores(crate::seeds::stream(cfg.seed, crate::seeds::BOW_FOLDS))?;
            let (tr, va, te) = (score_column(tr)?, score_column(va)?, score_column(te)?);
            beside([tr.view(), va.view(), te.view()], 0)
        }
    }
}

/// The transferred rows with `extra` columns to their right, as [`head_inputs`] lays out a head's inputs (also for
/// new texts: [`super::Predictor`]).
pub(crate) fn beside_transferred(transferred: &Array2<f32>, extra: ndarray::ArrayView2<'_, f32>) -> Result<Array2<f32>> {
    ndarray::concatenate(ndarray::Axis(1), &[transferred.view(), extra])
        .map_err(|e| Error::Features(format!("transferred and own features do not line up: {e}")))
}

/// A bag-of-words score per row as the one column [`head_inputs`] puts beside the transferred features.
pub(crate) fn score_column(scores: Vec<f32>) -> Result<Array2<f32>> {
    Array2::from_shape_vec((scores.len(), 1), scores).map_err(|e| Error::Internal(format!("score column: {e}")))
}

/// Save into the run directory `dir` what [`head_inputs`] needs, beside the client's featurizer, to give new texts
/// the inputs the head was trained on: with `head.inputs = "transfer+bow"`, the bag-of-words model behind the score
/// column ([`crate::bow::STACKED_SCORER_FILE`], marked with the run's features key). Nothing for other inputs.
pub fn save_head_input_models(cfg: &RunConfig, bow: Option<&BagOfWords>, dir: &std::path::Path) -> Result<()> {
    if cfg.head.inputs != crate::config::HeadInputs::TransferPlusBow {
        return Ok(());
    }
    let bow = bow.ok_or_else(|| Error::Internal("head.inputs = \"transfer+bow\" without the bag-of-words rows".into()))?;
    bow.stacked_scorer()?.save(&dir.join(crate::bow::STACKED_SCORER_FILE), &crate::rundir::features_key(cfg))
}

/// Where a head with `head.c = "validation"` chooses its C (and, beside own features, their weight).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadSelection {
    /// On the split's validation rows: a run's heads (the client holds those labels too).
    ValidationSplit,
    /// By stratified cross-validation on the training rows alone ([`crate::linear::fit_choosing_cv`]): a learning
    /// curve's subset, whose client has no other labels. An MLP head stops early on one stratified fold of the
    /// training rows and trains on the others.
    CrossValidation {
        /// Folds (fewer when a class has fewer examples).
        folds: usize,
        /// Seed of the fold assignment.
        seed: u64,
    },
}

impl HeadSelection {
    /// The linear models' selection, with these validation rows and labels if it chooses on them.
    pub fn with_validation<'a>(self, validation: crate::linear::Design<'a>, validation_y: &'a [u8]) -> crate::linear::Selection<'a> {
        match self {
            Self::ValidationSplit => crate::linear::Selection::Validation(validation, validation_y),
            Self::CrossValidation { folds, seed } => crate::linear::Selection::CrossValidation { folds, seed },
        }
    }

    /// [`Self::with_validation`] on the validation part of `fs`.
    pub fn over(self, fs: &FeatureSplit) -> crate::linear::Selection<'_> {
        self.with_validation(crate::linear::Design::Dense(fs.validation.view()), &fs.validation_y)
    }
}

/// Fit the linear head (L2 logistic regression, exact by L-BFGS) on the training part of `fs` as a Burn head: with
/// `head.c`, or with the C of [`crate::config::LINEAR_HEAD_CS`] (and, beside own features, their weight of
/// [`crate::config::OWN_FEATURE_WEIGHTS`]) that scores best where `selection` says: on the validation part, or by
/// cross-validation on the training part (`head.c = "validation"`, the default; [`crate::linear::fit_choosing_by`]).
pub fn fit_linear_head(cfg: &RunConfig, fs: &FeatureSplit, selection: HeadSelection) -> Result<(Head<Cpu>, crate::linear::LogisticRegression, crate::report::LinearC)> {
    use crate::linear::{Candidate, Design, fit, fit_choosing_by};
    let train = Design::Dense(fs.train.view());
    let (lr, c) = match cfg.head.c {
        crate::config::InverseL2::Fixed(c) => (fit(train, &fs.train_y, c)?, crate::report::LinearC { c, chosen_on_validation: false, own_weight: None }),
        crate::config::InverseL2::Validation => {
            let (width, own) = (fs.train.ncols(), fs.own_columns.min(fs.train.ncols()));
            // One C path per own-feature weight (None: no own block), in order, so each path is warm-started.
            let weights: Vec<Option<f64>> = if own > 0 { crate::config::OWN_FEATURE_WEIGHTS.iter().map(|&w| Some(w)).collect() } else { vec![None] };
            let candidates: Vec<Candidate> = weights
                .iter()
                .flat_map(|&w| {
                    crate::config::LINEAR_HEAD_CS.iter().map(move |&c| Candidate { c, column_weights: w.map(|w| (0..width).map(|j| if j < width - own { 1.0 } else { w }).collect()) })
                })
                .collect();
            let (lr, k, _) = fit_choosing_by(train, &fs.train_y, selection.over(fs), &candidates)?;
            let c = crate::report::LinearC { c: lr.c, chosen_on_validation: true, own_weight: weights[k / crate::config::LINEAR_HEAD_CS.len()] };
            (lr, c)
        }
    };
    Ok((Head::from_linear_weights(&lr.weights, lr.bias, &Default::default()), lr, c))
}

/// Train the client's head on (transferred) features and evaluate it on their test part: the linear head is
/// fitted exactly (L-BFGS), the MLP head by Adam with early stopping on the validation split. A linear head with
/// `head.c = "validation"` chooses on the validation split ([`train_head_selecting`] chooses otherwise).
pub fn train_head(cfg: &RunConfig, fs: &FeatureSplit, what: &str) -> Result<TrainedHead<Head<Cpu>>> {
    train_head_selecting(cfg, fs, what, HeadSelection::ValidationSplit)
}

/// [`train_head`], a linear head choosing its C where `selection` says.
pub fn train_head_selecting(cfg: &RunConfig, fs: &FeatureSplit, what: &str, selection: HeadSelection) -> Result<TrainedHead<Head<Cpu>>> {
    let device = Default::default();
    let input = fs.train.ncols();
    let mut c = None;
    let trained = match cfg.head.kind {
        crate::config::HeadKind::Mlp => {
            let head = new_head(cfg, input, &device);
            match selection {
                HeadSelection::ValidationSplit => train::train(head, fs.train_examples(), fs.validation_examples(), &cfg.head_training, cfg.seed, what),
                // A client with only these labels stops early on a held-out stratified fold of them and trains on
                // the rest; with a class too small to split, on its training rows (no held-out labels to spare).
                HeadSelection::CrossValidation { folds, seed } => match crate::linear::stratified_folds(&fs.train_y, folds, seed) {
                    Some((fold_of, _)) => {
                        let (fit, stop): (Vec<usize>, Vec<usize>) = (0..fs.train_y.len()).partition(|&i| fold_of[i] != 0);
                        let rows = |idx: &[usize]| (fs.train.select(ndarray::Axis(0), idx), idx.iter().map(|&i| fs.train_y[i]).collect::<Vec<u8>>());
                        let ((fit_x, fit_y), (stop_x, stop_y)) = (rows(&fit), rows(&stop));
                        let (fit, stop) = (train::Examples { x: fit_x.view(), y: &fit_y }, train::Examples { x: stop_x.view(), y: &stop_y });
                        train::train(head, fit, stop, &cfg.head_training, cfg.seed, what)
                    }
                    None => train::train(head, fs.train_examples(), fs.train_examples(), &cfg.head_training, cfg.seed, what),
                },
            }
        }
        crate::config::HeadKind::Linear => {
            let started = Instant::now();
            let (head, lr, linear_c) = fit_linear_head(cfg, fs, selection)?;
            c = Some(linear_c);
            let (train_loss, _) = train::evaluate_loss(&head, fs.train_examples());
            let (val_loss, val_accuracy) = train::evaluate_loss(&head, fs.validation_examples());
            tracing::debug!(what, c = lr.c, iterations = lr.iterations, train_loss, val_loss, val_accuracy, "linear head fitted (L-BFGS)");
            let history = vec![EpochStats { epoch: 1, train_loss, val_loss, val_accuracy }];
            Trained { model: head, history, best_epoch: 1, stopped_early: false, seconds: started.elapsed().as_secs_f64() }
        }
    };
    let (test, test_correct) = evaluate_with_correct(&trained.model, fs);
    Ok(TrainedHead { trained, test, test_correct, c })
}

/// The public points a DP head centres its inputs on ([`DpReferences`]), for a client with the server's network
/// `lower` in hand (the one-process run): the transfer outputs' ranges come from [`transfer_output_ranges`].
pub fn dp_references(cfg: &RunConfig, lower: Option<&PretrainedLower>, transfer_outputs: usize, own_width: usize) -> DpReferences {
    DpReferences::from_ranges(cfg, lower.and_then(|l| transfer_output_ranges(cfg, l)).as_deref(), transfer_outputs, own_width)
}

/// The range of each transfer output (what the client decrypts) over the server's source training data: the
/// activation over each unit's pre-activation range ([`crate::pipeline::PretrainMeta::source_ranges`]), averaged over the pooling
/// window. `None` when the network ends in a dense layer (`lower.output > 0`), whose output ranges are not kept.
pub fn transfer_output_ranges(cfg: &RunConfig, lower: &PretrainedLower) -> Option<Vec<(f32, f32)>> {
    if cfg.lower.output > 0 || lower.meta.source_ranges.is_empty() {
        return None;
    }
    let act = cfg.lower.activation;
    // The activation's range over [lo, hi], on a grid (exact for the monotone ones; the cubic may turn inside).
    let unit = |(lo, hi): (f32, f32)| -> (f32, f32) {
        (0..=64).map(|k| model::activate_scalar(lo + (hi - lo) * k as f32 / 64.0, act)).fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)))
    };
    let units: Vec<(f32, f32)> = lower.meta.source_ranges.iter().copied().map(unit).collect();
    let k = cfg.lower.pool.max(1);
    if units.len() < k {
        return None;
    }
    Some(units.windows(k).map(|w| (w.iter().map(|r| r.0).sum::<f32>() / k as f32, w.iter().map(|r| r.1).sum::<f32>() / k as f32)).collect())
}

/// Train the client's head with DP-SGD under `plan` and evaluate it on the test part. It trains on its inputs
/// through the public [`crate::privacy::centring::DpInputMap`] (centred on `reference`; the client's own features,
/// if any, weighted by `[privacy] own_weight` or its default rule), which is then folded into the head (post-processing), so
/// the head takes the inputs as they are everywhere else. A reference of another width (a run directory from before
/// centring has none) leaves the inputs as they are. Returns the head and the map it was trained through (for the
/// report's words on it, [`crate::privacy::centring::DpInputMap::describe`]).
pub fn train_head_private(
    cfg: &RunConfig,
    fs: &FeatureSplit,
    reference: &[f32],
    plan: &crate::privacy::plan::DpPlan,
    rng: &mut crate::privacy::dpsgd::PrivacyRng,
) -> Result<(TrainedHead<Head<Cpu>>, crate::privacy::centring::DpInputMap)> {
    let device = Default::default();
    let input = fs.train.ncols();
    let map = crate::privacy::centring::DpInputMap::new(cfg, reference, fs.own_columns, plan);
    let train_on = fs.map(|x| Ok(map.apply(x.view())))?;
    let mut trained = train::train_private(new_head(cfg, input, &device), train_on.train_examples(), train_on.validation_examples(), plan, rng, cfg.seed, "head");
    trained.model = map.fold(trained.model);
    let (test, test_correct) = evaluate_with_correct(&trained.model, fs);
    Ok((TrainedHead { trained, test, test_correct, c: None }, map))
}

/// The client's head as the config asks for it: trained by DP-SGD under `plan` when `[privacy]` is on (noise from
/// the OS, or from the insecure test seed plus `noise_offset`, so repeats draw fresh noise), else without DP.
pub fn train_configured_head(cfg: &RunConfig, fs: &FeatureSplit, reference: &[f32], plan: Option<&crate::privacy::plan::DpPlan>, noise_offset: u64, what: &str) -> Result<TrainedHead<Head<Cpu>>> {
    match (plan, &cfg.privacy) {
        (Some(plan), Some(p)) => {
            let mut rng = crate::privacy::dpsgd::PrivacyRng::new(p.insecure_seed.map(|s| s.wrapping_add(noise_offset)));
            Ok(train_head_private(cfg, fs, reference, plan, &mut rng)?.0)
        }
        _ => train_head(cfg, fs, what),
    }
}

/// The head's kind in words, for reports.
pub fn head_name(cfg: &RunConfig) -> &'static str {
    match cfg.head.kind {
        crate::config::HeadKind::Linear => "linear (L2 logistic regression)",
        crate::config::HeadKind::Mlp => "MLP",
    }
}

/// Baseline: lower network and head trained together from scratch on the target only.
///
/// The inputs are standardised first (mean 0, standard deviation 1 per column over the training rows), as a
/// practitioner training a network from scratch would: the client's scaled features sit in a narrow band of [0, 1]
/// (window-averaged review embeddings most of all), where Adam at the head's learning rate stops early on a
/// network that has not left its start. The returned network reads the standardised rows (its test metrics are
/// computed on them); it is a baseline to compare with, not a model to apply to new rows.
pub fn train_target_only(cfg: &RunConfig, fs: &FeatureSplit) -> Result<TrainedHead<FullNet<Cpu>>> {
    let fs = &standardised(fs)?;
    let device = Default::default();
    let lower = LowerNet::<model::Train>::new(&cfg.lower, fs.train.ncols(), cfg.seed, &device);
    let out = cfg.lower.output_dim();
    let head = new_head(cfg, out, &device);
    let trained = train::train(FullNet { lower, head }, fs.train_examples(), fs.validation_examples(), &cfg.head_training, cfg.seed, "target-only");
    let (test, test_correct) = evaluate_with_correct(&trained.model, fs);
    Ok(TrainedHead { trained, test, test_correct, c: None })
}

/// `fs` with every column shifted and scaled to mean 0 and standard deviation 1 over the training rows (a constant
/// column is only shifted), the same map applied to the validation and test rows.
fn standardised(fs: &FeatureSplit) -> Result<FeatureSplit> {
    let axis = ndarray::Axis(0);
    let mean = fs.train.mean_axis(axis).unwrap_or_else(|| ndarray::Array1::zeros(fs.train.ncols()));
    let scale = fs.train.std_axis(axis, 0.0).mapv(|s| if s > 1e-12 { 1.0 / s } else { 1.0 });
    fs.map(|x| Ok((x - &mean) * &scale))
}

/// Test metrics of a classifier on a feature split.
pub fn evaluate<M: model::BinaryClassifier<Cpu>>(m: &M, fs: &FeatureSplit) -> Metrics {
    evaluate_with_correct(m, fs).0
}

/// [`evaluate`], and whether each test example is classified correctly ([`crate::eval::correct`]).
pub fn evaluate_with_correct<M: model::BinaryClassifier<Cpu>>(m: &M, fs: &FeatureSplit) -> (Metrics, Vec<bool>) {
    let p = predict_proba(m, fs.test.view(), &Default::default());
    (Metrics::from_probabilities(&p, &fs.test_y), crate::eval::correct(&p, &fs.test_y))
}
