//! The stages of a CryptoTL run, each a library call that the CLI subcommands reuse:
//!
//! ```text
//! source texts -> [server] features -> pretrain lower net (cached) -> freeze ─────────────────┐
//! target texts -> [client] features -> scale ─> lower net forward (the encrypted seam) ─> head ─> report
//! ```
//!
//! The server and the client each fit their own featurizer and scaler on their own training split, so neither
//! party's statistics reach the other. [`lower_forward`] is the single place where the client's features meet
//! the server's network: the TFHE stage replaces it with quantize -> encrypt -> server eval -> decrypt.

use std::path::{Path, PathBuf};
use std::time::Instant;

use ndarray::Array2;
use serde::{Deserialize, Serialize};

use crate::config::RunConfig;
use crate::data::{self, Dataset, DatasetSummary, Split};
use crate::error::{Error, Result};
use crate::eval::Metrics;
use crate::features::FeaturePipeline;
pub use crate::privacy::centring::DpReferences;
use crate::model::{self, Cpu, FullNet, Head, LowerNet, PretrainNet, map_rows, predict_proba};
pub use crate::bow::{BAG_OF_WORDS_CS, BAG_OF_WORDS_DIM, BagOfWords};
use crate::train::{self, EpochStats, Examples, Trained};

/// The client's dataset, loaded and split. (The server's source data is loaded by [`load_source`], only where a
/// network has to be trained or calibrated: a cached or shipped network needs none.)
pub struct PreparedData {
    /// Client's target data.
    pub target: Split,
    /// Sizes for the report.
    pub target_summary: DatasetSummary,
}

fn load_split(cfg: &RunConfig, ds_cfg: &crate::config::DatasetConfig) -> Result<(Split, DatasetSummary)> {
    let full: Dataset = data::load(ds_cfg, cfg.seed)?;
    let split = data::stratified_split(&full, &cfg.split, cfg.seed)?;
    let summary = split.summary(&full);
    Ok((split, summary))
}

/// Load and split the client's target dataset.
pub fn prepare_data(cfg: &RunConfig) -> Result<PreparedData> {
    let (target, target_summary) = load_split(cfg, &cfg.target)?;
    tracing::info!(target = ?target_summary, "target dataset loaded");
    Ok(PreparedData { target, target_summary })
}

/// Load and split the server's source dataset.
pub fn load_source(cfg: &RunConfig) -> Result<(Split, DatasetSummary)> {
    let (source, summary) = load_split(cfg, &cfg.source)?;
    tracing::info!(source = ?summary, "source dataset loaded");
    Ok((source, summary))
}

/// What a run's report records about the server's network (defined there: the report reads no pipeline type).
pub use crate::report::{AppliedWeightNoise, NetworkOrigin, PrunedUnits, SourceTask};

/// A split turned into scaled feature rows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FeatureSplit {
    /// Training rows.
    pub train: Array2<f32>,
    /// Training labels.
    pub train_y: Vec<u8>,
    /// Validation rows.
    pub validation: Array2<f32>,
    /// Validation labels.
    pub validation_y: Vec<u8>,
    /// Test rows.
    pub test: Array2<f32>,
    /// Test labels.
    pub test_y: Vec<u8>,
    /// How many of the last columns are the client's own features beside the transfer outputs (`head.inputs =
    /// "transfer+own"`, [`head_inputs`]); 0 otherwise. A linear head with `head.c = "validation"` chooses how much
    /// more to penalise them than the transfer outputs ([`crate::config::OWN_FEATURE_WEIGHTS`]).
    #[serde(default)]
    pub own_columns: usize,
}

impl FeatureSplit {
    /// Featurize all parts of a split with a pipeline (fitted elsewhere, on the training part).
    pub fn from_split(pipeline: &FeaturePipeline, split: &Split) -> Result<Self> {
        Ok(Self {
            train: pipeline.transform(&split.train.texts)?,
            train_y: split.train.labels.clone(),
            validation: pipeline.transform(&split.validation.texts)?,
            validation_y: split.validation.labels.clone(),
            test: pipeline.transform(&split.test.texts)?,
            test_y: split.test.labels.clone(),
            own_columns: 0,
        })
    }
    /// Apply a row map to every part (e.g. the lower network). A map that keeps the width keeps
    /// [`Self::own_columns`]; one that changes it leaves 0.
    pub fn map(&self, f: impl Fn(&Array2<f32>) -> Result<Array2<f32>>) -> Result<Self> {
        let train = f(&self.train)?;
        let own_columns = if train.ncols() == self.train.ncols() { self.own_columns } else { 0 };
        Ok(Self {
            train,
            train_y: self.train_y.clone(),
            validation: f(&self.validation)?,
            validation_y: self.validation_y.clone(),
            test: f(&self.test)?,
            test_y: self.test_y.clone(),
            own_columns,
        })
    }
    /// Training examples.
    pub fn train_examples(&self) -> Examples<'_> {
        Examples { x: self.train.view(), y: &self.train_y }
    }
    /// Validation examples.
    pub fn validation_examples(&self) -> Examples<'_> {
        Examples { x: self.validation.view(), y: &self.validation_y }
    }
    /// Save as JSON.
    pub fn save(&self, path: &Path) -> Result<()> {
        // The client's decrypted features and labels: private to the owner.
        crate::atomic::write_private(path, &serde_json::to_vec(self).map_err(|e| Error::Internal(format!("features: {e}")))?)
    }
    /// Load from JSON, checking that labels match rows.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let f: Self = serde_json::from_slice(&bytes).map_err(|e| Error::artifact(path, format!("corrupt features file: {e}")))?;
        if f.train.nrows() != f.train_y.len() || f.validation.nrows() != f.validation_y.len() || f.test.nrows() != f.test_y.len() {
            return Err(Error::artifact(path, "row and label counts differ"));
        }
        if let Some(bad) = f.train_y.iter().chain(&f.validation_y).chain(&f.test_y).find(|&&y| y > 1) {
            return Err(Error::artifact(path, format!("label {bad}: labels are 0 or 1")));
        }
        if f.train.ncols() != f.validation.ncols() || f.train.ncols() != f.test.ncols() {
            return Err(Error::artifact(path, "the parts have different widths"));
        }
        if f.own_columns > f.train.ncols() {
            return Err(Error::artifact(path, format!("{} own-feature columns in rows {} wide", f.own_columns, f.train.ncols())));
        }
        for (part, x) in [("train", &f.train), ("validation", &f.validation), ("test", &f.test)] {
            crate::features::check_finite(x.view()).map_err(|e| Error::artifact(path, format!("{part}: {e}")))?;
        }
        Ok(f)
    }
}

/// The server's pretrained, frozen lower network with its feature pipeline.
#[derive(Clone)]
pub struct PretrainedLower {
    /// The frozen lower network.
    pub net: LowerNet<Cpu>,
    /// The server's featurizer + scaler (fitted on source train).
    pub features: FeaturePipeline,
    /// What the pretraining recorded (source metrics, sizes, history, DP schedule), with the calibration ranges of
    /// the network as released (recomputed after weight noise).
    pub meta: PretrainMeta,
    /// Where the network came from: trained now, the cache, or shipped in the binary.
    pub origin: NetworkOrigin,
    /// The cache folder.
    pub cache_dir: PathBuf,
    /// The noise on the weights, when `[server_privacy.weight_noise]` is on (see [`apply_weight_noise`]).
    pub weight_noise: Option<AppliedWeightNoise>,
    /// The dead units dropped before compiling, when `[lower] prune_dead` dropped any ([`prune_dead_units`]).
    pub pruned: Option<PrunedUnits>,
}

impl PretrainedLower {
    /// Not trained by this run.
    pub fn from_cache(&self) -> bool {
        self.origin != NetworkOrigin::Trained
    }
}

/// What a stored pretraining (cache entry or shipped network) keeps beside the network.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PretrainMeta {
    /// [`pretrain_key`] of the config that made it.
    pub key: String,
    /// Metrics on the source test split.
    pub source_test: Metrics,
    /// Per source task.
    pub source_tasks: Vec<SourceTask>,
    /// Sizes of the source data.
    pub source: DatasetSummary,
    /// Each neuron's pre-activation range over the source training features ([`crate::he::quant::pre_activation_ranges`]):
    /// what the compiler calibrates on, so the encrypted stage needs no source data.
    pub source_ranges: Vec<(f32, f32)>,
    /// Pretraining history.
    pub history: Vec<EpochStats>,
    /// The DP-SGD schedule, when the pretraining was private.
    #[serde(default)]
    pub dp_pretraining: Option<crate::privacy::plan::DpPlan>,
}

impl PretrainedLower {
    /// A stored network with its meta data.
    pub fn from_stored(net: PretrainNet<Cpu>, features: FeaturePipeline, meta: PretrainMeta, origin: NetworkOrigin, cache_dir: PathBuf) -> Self {
        Self { net: net.lower, features, meta, origin, cache_dir, weight_noise: None, pruned: None }
    }
}

/// The pretraining network's outputs: one per path of `[source]` with `output_per_path`, else one.
pub fn pretrain_outputs(cfg: &RunConfig) -> usize {
    if cfg.source.output_per_path { cfg.source.paths.len().max(1) } else { 1 }
}

/// Source features with their task appended as one-hot columns (`tasks` of them, in the order of the paths of
/// `[source]`), as a [`PretrainNet`] with `tasks > 1` outputs reads them. One task: the features as they are,
/// borrowed (no copy of the source features).
pub fn with_task_columns<'a>(fs: &'a FeatureSplit, source: &Split, tasks: usize) -> std::borrow::Cow<'a, FeatureSplit> {
    if tasks <= 1 {
        return std::borrow::Cow::Borrowed(fs);
    }
    let augment = |x: &Array2<f32>, part: &Dataset| -> Array2<f32> {
        let mut out = Array2::zeros((x.nrows(), x.ncols() + tasks));
        out.slice_mut(ndarray::s![.., ..x.ncols()]).assign(x);
        for (task, (_, rows)) in part.by_origin().into_iter().enumerate().take(tasks) {
            for i in rows {
                out[[i, x.ncols() + task]] = 1.0;
            }
        }
        out
    };
    std::borrow::Cow::Owned(FeatureSplit {
        train: augment(&fs.train, &source.train),
        train_y: fs.train_y.clone(),
        validation: augment(&fs.validation, &source.validation),
        validation_y: fs.validation_y.clone(),
        test: augment(&fs.test, &source.test),
        test_y: fs.test_y.clone(),
        own_columns: fs.own_columns,
    })
}

/// A stable key of everything that determines the pretrained lower network.
pub fn pretrain_key(cfg: &RunConfig) -> String {
    let mut material = serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"), "featurizer_version": crate::features::FEATURIZER_VERSION,
        "seed": cfg.seed, "features": cfg.features, "source": cfg.source, "split_scheme": "per-path",
        "split": cfg.split, "lower": lower_for_key(&cfg.lower), "pretrain": cfg.pretrain,
        "dp_pretraining": cfg.dp_pretraining(),
    });
    if cfg.dp_pretraining().is_some() {
        // DP pretraining's features come through a map fitted on nothing ([`FeaturePipeline::for_training`]); entries made
        // before, with the fitted map, are not reused. Only when set, so other keys (the shipped network's) stay.
        material["server_map"] = serde_json::json!("data_independent");
    }
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(material.to_string().as_bytes()))
}

/// `[lower]` as the pretraining key sees it: without `prune_dead`, which acts after pretraining.
fn lower_for_key(lower: &crate::config::LowerNetConfig) -> serde_json::Value {
    let mut v = serde_json::to_value(lower).unwrap_or(serde_json::Value::Null);
    if let Some(m) = v.as_object_mut() {
        m.remove("prune_dead");
    }
    v
}

/// The DP-SGD schedule of the server's pretraining on `n` source training examples, when
/// `[server_privacy.dp_pretraining]` is on (refusing a schedule beyond its budget).
pub fn dp_pretraining_plan(cfg: &RunConfig, n: usize) -> Result<Option<crate::privacy::plan::DpPlan>> {
    match &cfg.server_privacy.dp_pretraining {
        Some(p) if p.enabled => {
            // Pretraining a whole network on the source: minibatch DP-SGD unless the table says otherwise.
            let mut p = p.clone();
            if p.recipe.is_none() && p.steps.is_none() && p.learning_rate.is_none() {
                p.recipe = Some(crate::config::DpRecipe::Minibatch);
            }
            Ok(Some(crate::privacy::plan::plan(&p, &cfg.pretrain, n)?))
        }
        _ => Ok(None),
    }
}

/// The pretrained network for `cfg` from the cache or shipped in the binary, without touching the source data;
/// `None` when it has to be trained. A cache entry that cannot be read is a miss (with a warning), never a failure.
pub fn stored_pretrained(cfg: &RunConfig) -> Result<Option<PretrainedLower>> {
    if let Some(cached) = cached_pretrained(cfg) {
        return Ok(Some(cached));
    }
    let key = pretrain_key(cfg);
    if let Some(shipped) = crate::shipped_network::find(&key) {
        let shipped = shipped?;
        let net = shipped.network(&cfg.lower, cfg.features.dim(), pretrain_outputs(cfg), cfg.seed)?;
        tracing::info!(name = shipped.manifest.name, "pretrained lower network shipped in the binary");
        let dir = cfg.cache_dir.join(format!("pretrain-{key}"));
        return Ok(Some(PretrainedLower::from_stored(net, shipped.manifest.features.clone(), shipped.manifest.meta.clone(), NetworkOrigin::Shipped, dir)));
    }
    Ok(None)
}

/// The pretraining cache entry of `cfg`, when there is a readable one.
pub fn cached_pretrained(cfg: &RunConfig) -> Option<PretrainedLower> {
    let device = Default::default();
    let key = pretrain_key(cfg);
    let dir = cfg.cache_dir.join(format!("pretrain-{key}"));
    let entry = crate::cache::Entry::new(dir.clone());
    let (net_path, feat_path, meta_path) = (dir.join("lower"), dir.join("features.json"), entry.meta_path());
    if let Some(meta) = entry.meta::<PretrainMeta>() {
        let cached = (|| -> Result<PretrainedLower> {
            let meta = meta?;
            if meta.key != key {
                return Err(Error::artifact(&meta_path, format!("holds key {}, expected {key}", meta.key)));
            }
            let features = FeaturePipeline::load(&feat_path)?;
            let skeleton = PretrainNet::<Cpu>::new(&cfg.lower, cfg.features.dim(), pretrain_outputs(cfg), cfg.seed, &device);
            let net = model::load_module(skeleton, &net_path, &device)?;
            Ok(PretrainedLower::from_stored(net, features, meta, NetworkOrigin::Cache, dir.clone()))
        })();
        match cached {
            Ok(lower) => {
                tracing::info!(dir = %dir.display(), "pretrained lower network loaded from cache");
                return Some(lower);
            }
            Err(e) => tracing::warn!("pretraining cache entry ignored, training again: {e}"),
        }
    }
    None
}

/// The source features with the training and validation rows of each path repeated up to the largest path's
/// count (`[source] balance_paths`); the test rows as they are.
pub fn balance_paths(fs: &FeatureSplit, source: &Split) -> FeatureSplit {
    let repeat = |part: &Dataset| -> Vec<usize> {
        let groups = part.by_origin();
        let largest = groups.iter().map(|(_, g)| g.len()).max().unwrap_or(0);
        let mut idx: Vec<usize> = groups.iter().filter(|(_, g)| !g.is_empty()).flat_map(|(_, g)| g.iter().cycle().take(largest).copied()).collect();
        idx.sort_unstable();
        idx
    };
    let (t, v) = (repeat(&source.train), repeat(&source.validation));
    FeatureSplit {
        train: fs.train.select(ndarray::Axis(0), &t),
        train_y: t.iter().map(|&i| fs.train_y[i]).collect(),
        validation: fs.validation.select(ndarray::Axis(0), &v),
        validation_y: v.iter().map(|&i| fs.validation_y[i]).collect(),
        test: fs.test.clone(),
        test_y: fs.test_y.clone(),
        own_columns: fs.own_columns,
    }
}

/// Accuracy of the pretraining network per source task (per path of `[source]`) on the source test rows `fs.test`.
fn source_tasks(net: &PretrainNet<Cpu>, source: &Split, fs: &FeatureSplit) -> Vec<SourceTask> {
    let p = predict_proba(net, fs.test.view(), &Default::default());
    source
        .test
        .by_origin()
        .into_iter()
        .map(|(name, idx)| {
            let correct = idx.iter().filter(|&&i| (p[i] >= 0.5) == (fs.test_y[i] == 1)).count();
            SourceTask { source: name, test_examples: idx.len(), accuracy: correct as f64 / idx.len().max(1) as f64 }
        })
        .collect()
}

/// Pretrain the lower network on the source data (with DP-SGD when `[server_privacy.dp_pretraining]` is on), or
/// load it from the cache keyed by [`pretrain_key`] (or the binary, see [`stored_pretrained`]). Weight noise is
/// applied afterwards by [`apply_weight_noise`].
pub fn pretrain(cfg: &RunConfig, source: &Split, summary: &DatasetSummary) -> Result<PretrainedLower> {
    match stored_pretrained(cfg)? {
        Some(stored) => Ok(stored),
        None => pretrain_on_source(cfg, source, summary),
    }
}

/// Train the lower network on the source data now and cache it (what [`pretrain`] does on a miss; `ship-network`
/// calls it directly so that it never re-ships the binary's own network).
pub fn pretrain_on_source(cfg: &RunConfig, source: &Split, summary: &DatasetSummary) -> Result<PretrainedLower> {
    let device = Default::default();
    let key = pretrain_key(cfg);
    let dir = cfg.cache_dir.join(format!("pretrain-{key}"));
    let entry = crate::cache::Entry::new(dir.clone());
    // One run trains an entry at a time; a run that waited finds it done.
    let _lock = entry.lock()?;
    if let Some(done) = cached_pretrained(cfg) {
        return Ok(done);
    }
    // Settled before training: a schedule beyond its budget refuses to start.
    let dp_plan = dp_pretraining_plan(cfg, source.train.len())?;
    // With DP pretraining, a map fitted on nothing: one source example must not move the others' features.
    let features = FeaturePipeline::for_training(&cfg.features, &source.train.texts, cfg.dp_pretraining().is_some())?;
    let fs = FeatureSplit::from_split(&features, source)?;
    // With one output per source path, every row carries its task ([`PretrainNet::logits`]).
    let tasks = pretrain_outputs(cfg);
    let tasked = with_task_columns(&fs, source, tasks);
    let balanced = if cfg.source.balance_paths { Some(balance_paths(&tasked, source)) } else { None };
    let fit = balanced.as_ref().unwrap_or(tasked.as_ref());
    let fresh = PretrainNet::<model::Train>::new(&cfg.lower, cfg.features.dim(), tasks, cfg.seed, &device);
    let trained: Trained<PretrainNet<Cpu>> = match (&dp_plan, &cfg.server_privacy.dp_pretraining) {
        (Some(plan), Some(p)) => {
            tracing::info!(?plan, "DP pretraining schedule");
            let mut rng = crate::privacy::dpsgd::PrivacyRng::new(p.insecure_seed);
            train::train_private(fresh, fit.train_examples(), fit.validation_examples(), plan, &mut rng, cfg.seed, "pretrain")
        }
        _ => train::train(fresh, fit.train_examples(), fit.validation_examples(), &cfg.pretrain, cfg.seed, "pretrain"),
    };
    let source_test = Metrics::from_probabilities(&predict_proba(&trained.model, tasked.test.view(), &device), &fs.test_y);
    let tasks = source_tasks(&trained.model, source, &tasked);
    tracing::info!(accuracy = source_test.accuracy, ?tasks, "pretraining done (source test split)");
    let meta = PretrainMeta {
        key,
        source_test,
        source_tasks: tasks,
        source: summary.clone(),
        source_ranges: crate::he::quant::pre_activation_ranges(&trained.model.lower, fs.train.view())?,
        history: trained.history.clone(),
        dp_pretraining: dp_plan,
    };
    // A run killed while this rewrites the entry leaves it incomplete (a miss), never a valid meta beside a torn
    // network ([`crate::cache`]).
    entry.begin()?;
    model::save_module_private(&trained.model, &dir.join("lower"))?;
    features.save(&dir.join("features.json"))?;
    cfg.save(&dir.join("config.toml"))?;
    entry.finish(&meta)?;
    Ok(PretrainedLower::from_stored(trained.model, features, meta, NetworkOrigin::Trained, dir))
}

/// Add the resolved `[server_privacy.weight_noise]` (`plan`, from [`crate::privacy::server::plan_weight_noise`])
/// to the pretrained lower network.
///
/// The noised network is a release: it is drawn once per (pretrained network, noise setting), stored in the
/// pretraining cache and reused by later runs, so rerunning does not hand the client fresh draws of the same
/// weights (each would spend the budget again).
pub fn apply_weight_noise(cfg: &RunConfig, lower: &mut PretrainedLower, plan: crate::privacy::server::WeightNoisePlan) -> Result<()> {
    let insecure_seed = cfg.server_privacy.weight_noise.as_ref().and_then(|w| w.insecure_seed);
    let device = Default::default();
    let material = serde_json::json!({ "plan": plan, "seed": insecure_seed });
    let dir = lower.cache_dir.join(format!("weight-noise-{:016x}", xxhash_rust::xxh3::xxh3_64(material.to_string().as_bytes())));
    let entry = crate::cache::Entry::new(dir.clone());
    let net_path = dir.join("lower");
    // Two runs drawing at once would release two noised networks: one draws, the other waits and loads it.
    let _lock = entry.lock()?;
    // A complete entry is a network the server may already have released. If it cannot be read, drawing again
    // would be a second release of the same weights (the budget spent twice): refuse and say so. An incomplete
    // entry (no meta.json) was never used, so it is drawn again.
    let unreadable = |e: Error| Error::Config {
        file: cfg.name.clone(),
        key: "server_privacy.weight_noise".into(),
        message: format!(
            "the noised network stored in {} cannot be read ({e}); a fresh draw would be a second release of the same weights, spending the budget again. \
             Restore the entry, or delete it and account for both releases",
            dir.display()
        ),
    };
    if let Some(applied) = entry.meta::<AppliedWeightNoise>() {
        let mut applied = applied.map_err(unreadable)?;
        if applied.plan != plan {
            return Err(unreadable(Error::artifact(entry.meta_path(), "holds another noise setting")));
        }
        lower.net = model::load_module(lower.net.clone(), &net_path, &device).map_err(unreadable)?;
        applied.from_cache = true;
        tracing::info!(dir = %dir.display(), "noised lower network loaded from cache (no new release)");
        lower.weight_noise = Some(applied);
        return Ok(());
    }
    let mut rng = crate::privacy::dpsgd::PrivacyRng::new(insecure_seed);
    let (net, parameters) = crate::privacy::server::add_weight_noise(lower.net.clone(), plan.noise_std, &mut rng.noise);
    tracing::info!(std = plan.noise_std, parameters, epsilon = plan.epsilon, "weight noise added to the lower network");
    let noise_source = crate::privacy::dpsgd::noise_source(insecure_seed.is_some()).into();
    let applied = AppliedWeightNoise { plan, parameters, noise_source, from_cache: false };
    entry.begin()?;
    model::save_module_private(&net, &net_path)?;
    entry.finish(&applied)?;
    lower.net = net;
    lower.weight_noise = Some(applied);
    Ok(())
}

/// The network the server releases to the encrypted stage: pretrained (with DP-SGD when configured; cached, or
/// shipped in the binary) and then noised (when configured, cached). Both budgets are checked before any training
/// starts. The source data is loaded only where it is needed: to train, or to calibrate a noised network.
pub fn server_lower_network(cfg: &RunConfig) -> Result<PretrainedLower> {
    Ok(server_network_and_source(cfg)?.0)
}

/// [`server_lower_network`], with the source data when it had to be loaded for it (so a caller that needs it too,
/// such as the membership attack, does not load it twice).
pub fn server_network_and_source(cfg: &RunConfig) -> Result<(PretrainedLower, Option<Split>)> {
    let mut source: Option<(Split, DatasetSummary)> = None;
    let mut lower = match stored_pretrained(cfg)? {
        Some(stored) => stored,
        None => {
            let (split, summary) = source.insert(load_source(cfg)?);
            if let Some(wn) = &cfg.server_privacy.weight_noise {
                crate::privacy::server::plan_weight_noise(wn, split.train.len())?;
            }
            // The cache and the binary were just consulted.
            pretrain_on_source(cfg, split, summary)?
        }
    };
    let noise_plan = match &cfg.server_privacy.weight_noise {
        Some(wn) => crate::privacy::server::plan_weight_noise(wn, lower.meta.source.train)?,
        None => None,
    };
    if let Some(plan) = noise_plan {
        apply_weight_noise(cfg, &mut lower, plan)?;
        // The noised network's own ranges: the compiler calibrates on what it evaluates.
        let (split, _) = match &source {
            Some(s) => s,
            None => source.insert(load_source(cfg).map_err(|e| Error::Config {
                file: cfg.name.clone(),
                key: "server_privacy.weight_noise".into(),
                message: format!("a noised network is calibrated on its source data, which cannot be loaded: {e}"),
            })?),
        };
        let x = lower.features.transform(&split.train.texts)?;
        lower.meta.source_ranges = crate::he::quant::pre_activation_ranges(&lower.net, x.view())?;
    }
    if cfg.lower.prune_dead {
        prune_dead_units(&mut lower);
    }
    Ok((lower, source.map(|(split, _)| split)))
}

/// The membership-inference figure on the server's source data for the budget section ([`crate::membership`]):
/// the loss attack on `lower` as the client sees it (its outputs, plaintext: encrypted evaluation returns the same
/// outputs up to the measured lookup errors). A shipped network unchanged by this run carries the figure measured
/// when it was built (`ship-network`), so the quickstart needs no source data; any other network is attacked now,
/// on `source` or the config's source data loaded here (embeddings come from the cache pretraining filled). When the
/// source data cannot be loaded the report says so instead of failing the run. `now` says where a figure measured
/// here was measured (the run's report, or the server's published statement).
pub fn source_membership(cfg: &RunConfig, lower: &PretrainedLower, source: Option<&Split>, now: &str) -> Result<crate::privacy::budget::SourceMembership> {
    use crate::privacy::budget::SourceMembership;
    if lower.origin == NetworkOrigin::Shipped && lower.weight_noise.is_none() {
        let shipped = crate::shipped_network::find(&lower.meta.key).transpose()?;
        return Ok(match shipped.and_then(|n| n.manifest.membership.clone()) {
            Some(attack) => SourceMembership {
                provenance: format!("measured when the shipped network was built (`{}`; `cryptotl server membership <config>` measures it again from the fetched sources)", crate::shipped_network::BUILD_COMMAND),
                attack: Some(attack),
            },
            None => SourceMembership { provenance: "the shipped network carries no figure; `cryptotl server membership <config>` measures it from the fetched sources".into(), attack: None },
        });
    }
    let loaded;
    let source = match source {
        Some(s) => s,
        None => match load_source(cfg) {
            Ok((s, _)) => {
                loaded = s;
                &loaded
            }
            Err(e) => {
                tracing::warn!(error = %e, "membership attack skipped: the source data cannot be loaded");
                return Ok(SourceMembership { provenance: format!("the source data cannot be loaded: {e}"), attack: None });
            }
        },
    };
    let attack = measure_membership(cfg, lower, source)?;
    Ok(SourceMembership { provenance: now.into(), attack: Some(attack) })
}

/// The loss attack ([`crate::membership::attack_source`]) on `lower`'s plaintext outputs for `source`, members and
/// non-members drawn by the run's membership seed stream.
pub fn measure_membership(cfg: &RunConfig, lower: &PretrainedLower, source: &Split) -> Result<crate::membership::MembershipAttack> {
    crate::membership::attack_source(source, crate::seeds::stream(cfg.seed, crate::seeds::MEMBERSHIP), |texts| {
        lower_forward(&lower.net, &lower.features.transform(texts)?)
    })
}

/// Drop the ReLU units of `lower` that never fire on the source training data (the upper end of their calibration
/// range is at or below 0), with their calibration ranges. Networks with pooling or another activation, and one
/// whose units are all dead (nothing would be left to send), are kept whole.
pub fn prune_dead_units(lower: &mut PretrainedLower) {
    if lower.net.activation != crate::config::Activation::Relu || lower.net.pool != 1 {
        return;
    }
    let hidden = lower.meta.source_ranges.len();
    let (keep, dropped): (Vec<usize>, Vec<usize>) = (0..hidden).partition(|&j| lower.meta.source_ranges[j].1 > 0.0);
    if dropped.is_empty() || keep.is_empty() {
        return;
    }
    tracing::info!(kept = keep.len(), of = hidden, "dead neurons dropped (never fire on the source training data)");
    lower.net = lower.net.clone().keep_units(&keep);
    lower.meta.source_ranges = keep.iter().map(|&j| lower.meta.source_ranges[j]).collect();
    lower.pruned = Some(PrunedUnits { hidden, dropped });
}

/// The client's scaled features of its target data: the pipeline fitted on target train only, or, when the run
/// trains a head with DP-SGD (`[privacy]` on), fitted on nothing ([`FeaturePipeline::data_independent`]).
pub fn client_features(cfg: &RunConfig, target: &Split) -> Result<(FeaturePipeline, FeatureSplit)> {
    client_features_for(cfg, target, cfg.client_privacy().is_some())
}

/// [`client_features`] with the choice made by the caller: `private` gives the data-independent map (a sweep
/// that trains private and non-private heads on one set of features asks for it once for all of them). DP-SGD
/// bounds what one example does to the head through its own features; a min-max range or IDF weight fitted on the
/// training split would move every example's features with it, so the accountant's ε would not hold.
pub fn client_features_for(cfg: &RunConfig, target: &Split, private: bool) -> Result<(FeaturePipeline, FeatureSplit)> {
    let pipeline = FeaturePipeline::for_training(&cfg.features, &target.train.texts, private)?;
    let fs = FeatureSplit::from_split(&pipeline, target)?;
    Ok((pipeline, fs))
}

/// What the client sends through the server's network (`head.transfer_unit`): its feature rows, one per text, or
/// one per sentence with each text's sentences next to each other. The server evaluates every row alike; the
/// client averages a text's decrypted outputs ([`TransferInput::pool`]), so the head sees one row per text either
/// way. With sentences the server learns how many sentences (at most `head.max_sentences`) each text has, from
/// the number of ciphertexts; nothing else.
#[derive(Debug, Clone)]
pub struct TransferInput<'a> {
    /// The rows the network is applied to: the client's own features, or its sentences' (a sentence carries its
    /// text's label).
    pub rows: std::borrow::Cow<'a, FeatureSplit>,
    /// The client's own features, one row per text (whose labels the pooled outputs carry).
    own: &'a FeatureSplit,
    /// Per part (train, validation, test): where each text's rows start, and the end. None: one row per text.
    starts: Option<[Vec<usize>; 3]>,
    /// Where the encrypted pass keeps its journal ([`crate::he::OutputJournal`]), if it keeps one.
    journal: Option<PathBuf>,
}

impl<'a> TransferInput<'a> {
    /// The client's features as they are: one row per text (`transfer_unit = "text"`).
    pub fn texts(own: &'a FeatureSplit) -> Self {
        Self { rows: std::borrow::Cow::Borrowed(own), own, starts: None, journal: None }
    }

    /// As `head.transfer_unit` says: [`Self::texts`], or each text of `target` split into sentences
    /// ([`crate::features::sentences`]) featurized by the client's `pipeline` (the one `own` came from).
    pub fn new(cfg: &RunConfig, pipeline: &FeaturePipeline, target: &Split, own: &'a FeatureSplit) -> Result<Self> {
        if cfg.head.transfer_unit == crate::config::TransferUnit::Text {
            return Ok(Self::texts(own));
        }
        let part = |d: &Dataset| -> Result<(Array2<f32>, Vec<u8>, Vec<usize>)> {
            let (rows, starts) = sentence_rows(cfg, pipeline, &d.texts)?;
            let labels = starts.windows(2).zip(&d.labels).flat_map(|(w, &y)| std::iter::repeat_n(y, w[1] - w[0])).collect();
            Ok((rows, labels, starts))
        };
        let (train, train_y, s0) = part(&target.train)?;
        let (validation, validation_y, s1) = part(&target.validation)?;
        let (test, test_y, s2) = part(&target.test)?;
        let units = train.nrows() + validation.nrows() + test.nrows();
        tracing::info!(units, texts = target.train.len() + target.validation.len() + target.test.len(), "sentences sent through the server's network");
        let rows = FeatureSplit { train, train_y, validation, validation_y, test, test_y, own_columns: 0 };
        Ok(Self { rows: std::borrow::Cow::Owned(rows), own, starts: Some([s0, s1, s2]), journal: None })
    }

    /// Keep the encrypted pass's journal in `dir` (a run's output folder): each batch's decrypted outputs are
    /// recorded as they come back, and a pass killed midway resumes from them when the run is started again
    /// ([`crate::he::OutputJournal`]). The caller removes it once its results are written
    /// ([`crate::he::journal::remove_all`]).
    /// `None` keeps none (as [`Self::new`] and [`Self::texts`] start).
    pub fn journaled_in(mut self, dir: Option<&Path>) -> Self {
        self.journal = dir.map(Path::to_path_buf);
        self
    }

    /// Rows the server evaluates.
    pub fn units(&self) -> usize {
        self.rows.train.nrows() + self.rows.validation.nrows() + self.rows.test.nrows()
    }

    /// One row per text from the network's outputs `y` for [`Self::rows`]: a text's outputs averaged over its
    /// sentences (or `y` itself for one row per text).
    pub fn pool(&self, y: FeatureSplit) -> FeatureSplit {
        let Some([s0, s1, s2]) = &self.starts else { return y };
        FeatureSplit {
            train: mean_rows(&y.train, s0),
            train_y: self.own.train_y.clone(),
            validation: mean_rows(&y.validation, s1),
            validation_y: self.own.validation_y.clone(),
            test: mean_rows(&y.test, s2),
            test_y: self.own.test_y.clone(),
            own_columns: 0,
        }
    }
}

/// The sentences of `texts` featurized by `pipeline`, and where each text's rows start (plus the end).
pub fn sentence_rows(cfg: &RunConfig, pipeline: &FeaturePipeline, texts: &[String]) -> Result<(Array2<f32>, Vec<usize>)> {
    let mut sentences = Vec::new();
    let mut starts = vec![0];
    for t in texts {
        sentences.extend(crate::features::sentences(t, cfg.head.max_sentences));
        starts.push(sentences.len());
    }
    Ok((pipeline.transform(&sentences)?, starts))
}

/// The mean of each group of rows of `y` (group i: rows `starts[i]..starts[i + 1]`).
pub fn mean_rows(y: &Array2<f32>, starts: &[usize]) -> Array2<f32> {
    let mut out = Array2::zeros((starts.len().saturating_sub(1), y.ncols()));
    for (mut row, w) in out.axis_iter_mut(ndarray::Axis(0)).zip(starts.windows(2)) {
        if let Some(m) = y.slice(ndarray::s![w[0]..w[1], ..]).mean_axis(ndarray::Axis(0)) {
            row.assign(&m);
        }
    }
    out
}

/// The frozen lower network applied to the client's scaled features in the clear (float): the reference the
/// encrypted path ([`encrypted_transfer`]: quantize -> encrypt -> server evaluation -> decrypt) is compared with,
/// and the path of `he.enabled = false`.
pub fn lower_forward(lower: &LowerNet<Cpu>, x: &Array2<f32>) -> Result<Array2<f32>> {
    crate::features::check_finite(x.view())?;
    Ok(map_rows::<Cpu>(x.view(), &Default::default(), |t| lower.forward(t)))
}

/// The client's features through the three paths of the lower network, and what the encrypted one measured.
pub struct EncryptedTransfer {
    /// Decrypted outputs of the encrypted path (what the client trains on).
    pub encrypted: FeatureSplit,
    /// The float network's outputs (reference).
    pub float: FeatureSplit,
    /// The clear-integer program's outputs (the oracle of the encrypted path).
    pub quantized: FeatureSplit,
    /// Keys, sizes, timings, lookup errors (accuracies filled in by [`run`]).
    pub report: crate::he::HeReport,
}

/// Compile the frozen lower network into an integer program (calibrated on the ranges it keeps from the server's
/// source training features), set up keys, and send every client sample through quantize -> encrypt -> server
/// evaluation -> decrypt. Also computes the float and clear-integer outputs for comparison.
pub fn encrypted_transfer(cfg: &RunConfig, lower: &PretrainedLower, input: &TransferInput) -> Result<EncryptedTransfer> {
    let program = compile_program(cfg, lower)?;
    let client = input.rows.as_ref();
    let float = input.pool(client.map(|x| lower_forward(&lower.net, x))?);
    let overflow = std::cell::Cell::new(0usize);
    let quantized = input.pool(client.map(|x| {
        let (y, wraps) = crate::he::quant::clear_forward(&program, x.view())?;
        overflow.set(overflow.get() + wraps);
        Ok(y)
    })?);
    let accumulators = input.units() * program.neurons;
    let session = local_session(cfg, &program)?;
    let (encrypted, stats) = forward_split(&session, client, input.journal.as_deref())?;
    let encrypted = input.pool(encrypted);
    let report = crate::he::HeReport::new(&session, Some(&program), &stats, Some(overflow.get() as f64 / accumulators.max(1) as f64));
    if let Some(rate) = report.calibration_overflow_rate.filter(|&r| r > 0.01) {
        tracing::warn!(rate,
            "{:.1}% of the client's accumulators fall outside the range calibrated on the source data; their lookups wrap around. \
             Set he.calibration = \"input_box\" (never wraps, coarser) or widen he.calibration_margin",
            100.0 * rate);
    }
    tracing::info!(?report, "encrypted lower network done");
    Ok(EncryptedTransfer { encrypted, float, quantized, report })
}

/// The server's lower network compiled to its integer program (calibrated on the ranges it keeps from the server's
/// source training features).
pub fn compile_program(cfg: &RunConfig, lower: &PretrainedLower) -> Result<cryptotl_server::IntegerProgram> {
    crate::he::quant::compile_with_ranges(&lower.net, lower.features.dim(), &lower.meta.source_ranges, &cfg.he)
}

/// The one-process simulation of the server for `program`, with the config's keys seed and batch size.
fn local_session(cfg: &RunConfig, program: &cryptotl_server::IntegerProgram) -> Result<crate::he::Session> {
    let mut session = crate::he::Session::local(program.clone(), cfg.he.params()?, cfg.he.insecure_seed)?;
    session.set_batch(cfg.he.batch);
    Ok(session)
}

/// The remote server the lower network runs on (`[he] server` with `he.enabled`); None for the one-process
/// simulation or the plaintext path.
pub fn remote_server(cfg: &RunConfig) -> Result<Option<String>> {
    if !cfg.he.enabled {
        return Ok(None);
    }
    match cfg.he.server_location().map_err(|m| Error::Config { file: "<config>".into(), key: "he.server".into(), message: m })? {
        crate::config::ServerLocation::Remote(url) => Ok(Some(url)),
        crate::config::ServerLocation::Local => Ok(None),
    }
}

/// Every split of the client's features through the session's encrypted path, with what it measured. With
/// `journal_dir`, the pass resumes from and records into the session's journal there (the caller removes it,
/// [`crate::he::journal::remove_all`], once its results are written).
fn forward_split(session: &crate::he::Session, client: &FeatureSplit, journal_dir: Option<&Path>) -> Result<(FeatureSplit, crate::he::ForwardStats)> {
    let stats = std::cell::RefCell::new(crate::he::ForwardStats::default());
    let server = session.server();
    let journal = std::cell::RefCell::new(journal_dir.map(|d| crate::he::OutputJournal::open(d, &session.journal_identity(), session.interface.outputs)).transpose()?);
    let encrypted = client
        .map(|x| {
            let (y, s) = session.forward_journaled(x.view(), &format!("{} samples via {server}", x.nrows()), journal.borrow_mut().as_mut())?;
            stats.borrow_mut().merge(s);
            Ok(y)
        })
        .inspect_err(|_| {
            if let Some(j) = journal.borrow().as_ref().filter(|j| !j.is_empty()) {
                tracing::warn!(path = %j.path().display(), samples = j.len(), "the encrypted pass stopped; the outputs it had are kept in its journal and a new run of the same config resumes from them");
            }
        })?;
    Ok((encrypted, stats.into_inner()))
}

/// The server's model artifact for `cfg` (what `cryptotl server build` writes): its lower network (pretrained,
/// cached or shipped, with the config's server privacy mechanisms applied), compiled to the integer program, with
/// the interface clients fetch and the server's privacy statement. Returns the network too.
pub fn server_artifact(cfg: &RunConfig) -> Result<(cryptotl_server::ModelArtifact, PretrainedLower)> {
    if !cfg.he.enabled {
        return Err(Error::Config { file: "<config>".into(), key: "he.enabled".into(), message: "is false: a server model is an encrypted program; set he.enabled = true".into() });
    }
    let (lower, source) = server_network_and_source(cfg)?;
    let program = compile_program(cfg, &lower)?;
    // The server has its source data: it measures the attack (or quotes the shipped figure) for its statement.
    let membership = if cfg.audit.membership { Some(source_membership(cfg, &lower, source.as_ref(), "measured by the server when it built this model")?) } else { None };
    let features = serde_json::json!({
        "kind": cfg.features.kind,
        "dim": lower.features.dim(),
        "featurizer": cfg.features,
        "featurizer_version": crate::features::FEATURIZER_VERSION,
        "scaling": "each feature min-max scaled to [0, 1] on the client's own training split",
        // Where each output lies over the source data (from the calibration ranges the program is built on): the
        // public point a client's DP head centres these outputs on ([`DpReferences`]).
        "output_ranges": transfer_output_ranges(cfg, &lower),
    });
    let statement = crate::privacy::budget::ServerStatement::new(crate::privacy::budget::ServerMechanisms {
        dp_pretraining: lower.meta.dp_pretraining.as_ref(),
        weight_noise: lower.weight_noise.as_ref().map(|w| (&w.plan, w.parameters)),
        source_examples: lower.meta.source.train,
        membership: membership.as_ref(),
        fitted_outside: &crate::privacy::budget::fitted_outside(cfg),
    })?;
    let privacy = serde_json::to_value(&statement).map_err(|e| Error::Internal(format!("privacy statement: {e}")))?;
    Ok((cryptotl_server::ModelArtifact::new(program, cfg.he.params()?, features, privacy)?, lower))
}

/// A session with the remote server `url` of `[he] server`: token, trusted CA, interface checked against the
/// client's features.
pub fn remote_session(cfg: &RunConfig, url: &str) -> Result<crate::he::Session> {
    let ca = match &cfg.he.ca_cert {
        Some(p) => Some(std::fs::read(p).map_err(|e| Error::io(p, e))?),
        None => None,
    };
    let transport = crate::he::Http::new(url, cfg.he.token()?, ca.as_deref())?;
    let model = crate::he::Transport::interface(&transport)?;
    let kind = model.features.get("kind").and_then(|k| k.as_str()).unwrap_or("");
    if kind != cfg.features.kind.name() {
        return Err(Error::Config { file: "<config>".into(), key: "features.kind".into(), message: format!(
            "is `{}`, but the model at {url} takes `{kind}` features ({}): set features.kind to match", cfg.features.kind, model.features) });
    }
    let mut session = crate::he::Session::connect(Box::new(transport), None, cfg.he.insecure_seed)?;
    session.set_batch(cfg.he.batch);
    Ok(session)
}

/// What [`remote_transfer`] brings back from a remote server.
pub struct RemoteTransfer {
    /// The decrypted outputs, pooled per text.
    pub features: FeatureSplit,
    /// What the encrypted stage measured (no oracle comparison: the client has no program).
    pub he: crate::he::HeReport,
    /// The server's statement of its own privacy.
    pub statement: crate::privacy::budget::ServerStatement,
    /// The output ranges the server publishes ([`crate::he::Session::published_output_ranges`]), if it does.
    pub output_ranges: Option<Vec<(f32, f32)>>,
}

/// The client's features through a remote server's encrypted lower network (`[he] server = URL`).
pub fn remote_transfer(cfg: &RunConfig, url: &str, input: &TransferInput) -> Result<RemoteTransfer> {
    let session = remote_session(cfg, url)?;
    let statement = session.server_privacy()?;
    let output_ranges = session.published_output_ranges();
    let (encrypted, stats) = forward_split(&session, &input.rows, input.journal.as_deref())?;
    let he = crate::he::HeReport::new(&session, None, &stats, None);
    Ok(RemoteTransfer { features: input.pool(encrypted), he, statement, output_ranges })
}

/// Scaled feature rows of new texts through the server's lower network as `[he]` says: through the remote server,
/// through the one-process simulation of it (`server = "local"`), or in plaintext (`he.enabled = false`).
pub fn transfer_rows(cfg: &RunConfig, x: &Array2<f32>, what: &str) -> Result<Array2<f32>> {
    let session = match remote_server(cfg)? {
        Some(url) => remote_session(cfg, &url)?,
        None if !cfg.he.enabled => return lower_forward(&server_lower_network(cfg)?.net, x),
        None => local_session(cfg, &compile_program(cfg, &server_lower_network(cfg)?)?)?,
    };
    Ok(session.forward(x.view(), what)?.0)
}

/// One prediction of [`predict`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Prediction {
    /// The predicted class (1 = the dataset's positive class).
    pub label: u8,
    /// The head's probability of class 1.
    pub probability: f32,
}

/// Classify new texts with a finished run's saved featurizer and head (`run_dir`, made by `run` or
/// `features` + `train-head` with `cfg`), through the same encrypted path as its training features.
pub fn predict(cfg: &RunConfig, run_dir: &Path, texts: &[String]) -> Result<Vec<Prediction>> {
    if texts.is_empty() {
        return Ok(vec![]);
    }
    if cfg.head.inputs == crate::config::HeadInputs::TransferPlusBow {
        return Err(Error::Config { file: "<config>".into(), key: "head.inputs".into(), message:
            "is `transfer+bow`: its bag-of-words score is cross-fitted on the training texts and not saved with the run; \
             predict works with `transfer` and `transfer+own`".into() });
    }
    let manifest = crate::rundir::RunManifest::load_for(cfg)?;
    let pipeline = FeaturePipeline::load(&run_dir.join("client_features.json"))?;
    let own = pipeline.transform(texts)?;
    let transferred = match cfg.head.transfer_unit {
        crate::config::TransferUnit::Text => transfer_rows(cfg, &own, &format!("{} new texts", texts.len()))?,
        crate::config::TransferUnit::Sentence => {
            let (rows, starts) = sentence_rows(cfg, &pipeline, texts)?;
            mean_rows(&transfer_rows(cfg, &rows, &format!("{} sentences of {} new texts", rows.nrows(), texts.len()))?, &starts)
        }
    };
    let x = match cfg.head.inputs {
        crate::config::HeadInputs::TransferPlusOwn => ndarray::concatenate(ndarray::Axis(1), &[transferred.view(), own.view()])
            .map_err(|e| Error::Features(format!("transferred and own features do not line up: {e}")))?,
        _ => transferred,
    };
    manifest.check_head(cfg, x.ncols())?;
    let head = model::load_module(new_head::<Cpu>(cfg, x.ncols(), &Default::default()), &run_dir.join("head"), &Default::default())?;
    Ok(predict_proba(&head, x.view(), &Default::default())
        .into_iter()
        .map(|p| Prediction { label: (p >= 0.5) as u8, probability: p })
        .collect())
}

/// The client's features through the server's lower network: encrypted when `he.enabled` (then also the float
/// and clear-integer paths for comparison), else the plaintext float network.
pub fn transfer(cfg: &RunConfig, lower: &PretrainedLower, input: &TransferInput) -> Result<(FeatureSplit, Option<EncryptedTransfer>)> {
    if cfg.he.enabled {
        let he = encrypted_transfer(cfg, lower, input)?;
        Ok((he.encrypted.clone(), Some(he)))
    } else {
        Ok((input.pool(input.rows.map(|x| lower_forward(&lower.net, x))?), None))
    }
}

/// A trained head (or baseline network) with its test metrics.
pub struct TrainedHead<M> {
    /// The model.
    pub trained: Trained<M>,
    /// Metrics on the test split.
    pub test: Metrics,
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
            validation_accuracy: self.trained.history.get(self.trained.best_epoch.saturating_sub(1)).map(|e| e.val_accuracy),
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
    let join = |a: &Array2<f32>, b: ndarray::ArrayView2<'_, f32>| -> Result<Array2<f32>> {
        ndarray::concatenate(ndarray::Axis(1), &[a.view(), b])
            .map_err(|e| Error::Features(format!("transferred and own features do not line up: {e}")))
    };
    let same_examples = |ys: [&[u8]; 3]| ys == [&transferred.train_y[..], &transferred.validation_y[..], &transferred.test_y[..]];
    let beside = |extra: [ndarray::ArrayView2<'_, f32>; 3], own_columns: usize| -> Result<FeatureSplit> {
        Ok(FeatureSplit {
            train: join(&transferred.train, extra[0])?,
            train_y: transferred.train_y.clone(),
            validation: join(&transferred.validation, extra[1])?,
            validation_y: transferred.validation_y.clone(),
            test: join(&transferred.test, extra[2])?,
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
            let col = |v: Vec<f32>| Array2::from_shape_vec((v.len(), 1), v).map_err(|e| Error::Internal(format!("score column: {e}")));
            let (tr, va, te) = (col(tr)?, col(va)?, col(te)?);
            beside([tr.view(), va.view(), te.view()], 0)
        }
    }
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
    let test = evaluate(&trained.model, fs);
    Ok(TrainedHead { trained, test, c })
}

/// The public points a DP head centres its inputs on ([`DpReferences`]), for a client with the server's network
/// `lower` in hand (the one-process run): the transfer outputs' ranges come from [`transfer_output_ranges`].
pub fn dp_references(cfg: &RunConfig, lower: Option<&PretrainedLower>, transfer_outputs: usize, own_width: usize) -> DpReferences {
    DpReferences::from_ranges(cfg, lower.and_then(|l| transfer_output_ranges(cfg, l)).as_deref(), transfer_outputs, own_width)
}

/// The range of each transfer output (what the client decrypts) over the server's source training data: the
/// activation over each unit's pre-activation range ([`PretrainMeta::source_ranges`]), averaged over the pooling
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
    let test = evaluate(&trained.model, fs);
    Ok((TrainedHead { trained, test, c: None }, map))
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
pub fn train_target_only(cfg: &RunConfig, fs: &FeatureSplit) -> TrainedHead<FullNet<Cpu>> {
    let device = Default::default();
    let lower = LowerNet::<model::Train>::new(&cfg.lower, fs.train.ncols(), cfg.seed, &device);
    let out = cfg.lower.output_dim();
    let head = new_head(cfg, out, &device);
    let trained = train::train(FullNet { lower, head }, fs.train_examples(), fs.validation_examples(), &cfg.head_training, cfg.seed, "target-only");
    let test = evaluate(&trained.model, fs);
    TrainedHead { trained, test, c: None }
}

/// Test metrics of a classifier on a feature split.
pub fn evaluate<M: model::BinaryClassifier<Cpu>>(m: &M, fs: &FeatureSplit) -> Metrics {
    Metrics::from_probabilities(&predict_proba(m, fs.test.view(), &Default::default()), &fs.test_y)
}

/// Run a closure and return its result with the elapsed seconds.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let t = Instant::now();
    let out = f();
    (out, t.elapsed().as_secs_f64())
}

/// Learning curves alone (`cryptotl curve`): data -> server network -> client features -> frozen lower network
/// (encrypted when `he.enabled`) -> the heads on seeded subsets of every size ([`crate::curve`]). With
/// `journal_dir`, the encrypted pass keeps its journal there ([`TransferInput::journaled_in`]; the caller removes it
/// once the curves are written).
pub fn curves(cfg: &RunConfig, journal_dir: Option<&Path>) -> Result<crate::curve::LearningCurves> {
    let data = prepare_data(cfg)?;
    // DP heads in the curves follow the run's privacy settings; refuse a schedule beyond its budget before work.
    privacy_plan(cfg, data.target.train.len())?;
    let lower = server_lower_network(cfg)?;
    let (pipeline, client) = client_features(cfg, &data.target)?;
    let input = TransferInput::new(cfg, &pipeline, &data.target, &client)?.journaled_in(journal_dir);
    let (transferred, _) = transfer(cfg, &lower, &input)?;
    let bow = BagOfWords::new(&data.target);
    let references = dp_references(cfg, Some(&lower), transferred.train.ncols(), client.train.ncols());
    crate::curve::learning_curves(cfg, &transferred, &client, Some(&bow), &references)
}

/// Create the run's output directory and prove it writable ([`crate::atomic::writable_dir`]), before any work.
/// The returned lock keeps a second run out of the same directory until it is dropped.
pub fn prepare_output_dir(cfg: &RunConfig) -> Result<crate::atomic::DirLock> {
    // It receives the client's decrypted features, fitted featurizer and head: owner only.
    crate::atomic::claim_dir(&cfg.output_dir())
}

/// The whole pipeline: data -> pretrain (or cache) -> client features -> frozen lower net -> head -> baselines ->
/// report (written to the run's output directory and returned).
pub fn run(cfg: &RunConfig) -> Result<crate::report::Report> {
    use crate::report::{PretrainSummary, Report, StageTime};
    let mut stages = Vec::new();
    let mut stage = |name: &str, secs: f64| stages.push(StageTime { stage: name.into(), seconds: secs });
    // With a remote server the client has neither the server's network nor its source data: no pretraining here,
    // no float or clear-integer comparison, and the server's rows of the budget come from its published statement.
    let remote = remote_server(cfg)?;
    let _lock = prepare_output_dir(cfg)?;

    let (data, t) = timed(|| prepare_data(cfg));
    let data = data?;
    stage("load + split data", t);
    // The privacy schedule is settled before any training: a run beyond its budget refuses to start.
    let dp_plan = privacy_plan(cfg, data.target.train.len())?;
    if let Some(plan) = &dp_plan {
        tracing::info!(?plan, "DP-SGD schedule");
    }
    let (lower, membership) = match &remote {
        Some(_) => (None, None),
        None => {
            let (r, t) = timed(|| server_network_and_source(cfg));
            let (lower, source) = r?;
            stage(match lower.origin { NetworkOrigin::Trained => "pretrain", NetworkOrigin::Cache => "pretrain (cached)", NetworkOrigin::Shipped => "pretrain (shipped in the binary)" }, t);
            let membership = if cfg.audit.membership {
                let (m, t) = timed(|| source_membership(cfg, &lower, source.as_ref(), "measured in this run"));
                stage("membership attack on the source data (server side)", t);
                Some(m?)
            } else {
                None
            };
            (Some(lower), membership)
        }
    };
    let (client, t) = timed(|| client_features(cfg, &data.target));
    let (client_pipeline, client) = client?;
    // The encrypted pass keeps its journal in the run's folder: a run killed during it resumes where it stopped.
    let (input, t2) = timed(|| TransferInput::new(cfg, &client_pipeline, &data.target, &client).map(|i| i.journaled_in(Some(&cfg.output_dir()))));
    let input = input?;
    stage("client features", t + t2);
    let (transferred, he_paths, remote_he, output_ranges) = match (&remote, &lower) {
        (Some(url), _) => {
            let (r, t) = timed(|| remote_transfer(cfg, url, &input));
            let RemoteTransfer { features, he, statement, output_ranges } = r?;
            stage("lower network: keys, encrypted forward through the remote server", t);
            (features, None, Some((he, statement)), output_ranges)
        }
        (None, Some(lower)) => {
            let (r, t) = timed(|| transfer(cfg, lower, &input));
            let (transferred, he_paths) = r?;
            stage(if cfg.he.enabled { "lower network: compile, keys, encrypted forward" } else { "lower network forward (plaintext: he.enabled = false)" }, t);
            (transferred, he_paths, None, transfer_output_ranges(cfg, lower))
        }
        (None, None) => return Err(Error::Internal("no server network and no remote server".into())),
    };
    if tracing::enabled!(tracing::Level::INFO) {
        let x = &transferred.train;
        let col_std = x.std_axis(ndarray::Axis(0), 0.0);
        tracing::info!(mean = x.mean().unwrap_or(0.0), mean_col_std = col_std.mean().unwrap_or(0.0),
            max_col_std = col_std.fold(0f32, |a, &b| a.max(b)), min = x.fold(f32::INFINITY, |a, &b| a.min(b)),
            max = x.fold(f32::NEG_INFINITY, |a, &b| a.max(b)), "lower-network outputs (client train split)");
    }

    let bow = (cfg.baselines.bag_of_words || cfg.curve.enabled || cfg.head.inputs == crate::config::HeadInputs::TransferPlusBow)
        .then(|| BagOfWords::new(&data.target));
    // The decrypted outputs as they came (the learning curves build their heads' inputs per subset).
    let decrypted = transferred;
    let transferred = head_inputs(cfg, &decrypted, &client, bow.as_ref())?;
    let dp_references = DpReferences::from_ranges(cfg, output_ranges.as_deref(), decrypted.train.ncols(), client.train.ncols());
    let mut results = Vec::new();
    let head = train_head(cfg, &transferred, "head")?;
    stage("train head", head.trained.seconds);
    let source = match &remote {
        Some(url) => format!("the source data of the server at {url}"),
        None => cfg.source.name.clone(),
    };
    let path = if cfg.he.enabled { "decrypted outputs of the encrypted" } else { "outputs of the (plaintext)" };
    let inputs = match cfg.head.inputs {
        crate::config::HeadInputs::Transfer => String::new(),
        crate::config::HeadInputs::TransferPlusOwn => " beside the client's own features".into(),
        crate::config::HeadInputs::TransferPlusBow => " beside the cross-fitted score of a bag-of-words model of the client's own texts".into(),
    };
    let unit = match cfg.head.transfer_unit {
        crate::config::TransferUnit::Text => String::new(),
        crate::config::TransferUnit::Sentence => format!(
            ", applied to each sentence (at most {} per text, {} evaluations in all) and averaged per text",
            cfg.head.max_sentences,
            input.units()
        ),
    };
    results.push(head.result("transfer", format!("{} head trained on the {path} frozen lower network (pretrained on {source}){unit}{inputs}", head_name(cfg))));
    let mut he_report = None;
    if let Some(he) = he_paths {
        let float = train_head(cfg, &head_inputs(cfg, &he.float, &client, bow.as_ref())?, "head (float path)")?;
        stage("train head on float outputs", float.trained.seconds);
        let quantized = train_head(cfg, &head_inputs(cfg, &he.quantized, &client, bow.as_ref())?, "head (quantized path)")?;
        stage("train head on clear-integer outputs", quantized.trained.seconds);
        let mut r = he.report;
        (r.accuracy_float, r.accuracy_quantized, r.accuracy_encrypted) = (float.test.accuracy, quantized.test.accuracy, head.test.accuracy);
        results.push(float.result("transfer_float", "as `transfer`, on the float lower network's outputs (no quantization, no encryption)".into()));
        results.push(quantized.result("transfer_quantized", "as `transfer`, on the clear-integer program's outputs (quantized, not encrypted)".into()));
        he_report = Some(r);
    }
    let mut remote_statement = None;
    if let Some((mut r, statement)) = remote_he {
        // A client of a remote server has only the encrypted path: no float or clear-integer reference.
        (r.accuracy_float, r.accuracy_quantized, r.accuracy_encrypted) = (f64::NAN, f64::NAN, head.test.accuracy);
        he_report = Some(r);
        remote_statement = Some(statement);
    }
    let mut privacy_report = None;
    let mut audit = None;
    // The head that is saved (and may be published): the private one whenever DP-SGD is on.
    let mut published = head.trained.model.clone();
    if let (Some(plan), Some(p)) = (&dp_plan, &cfg.privacy) {
        let mut rng = crate::privacy::dpsgd::PrivacyRng::new(p.insecure_seed);
        let (dp, map) = train_head_private(cfg, &transferred, &dp_references.transferred, plan, &mut rng)?;
        stage("train head (DP-SGD)", dp.trained.seconds);
        published = dp.trained.model.clone();
        privacy_report = Some(crate::privacy::plan::PrivacyReport::new(plan, p.insecure_seed.is_some(), dp.test.accuracy, head.test.accuracy)?);
        if cfg.audit.enabled && cfg.head.kind == crate::config::HeadKind::Linear {
            let (a, t) = timed(|| crate::audit::audit(cfg, &transferred, &dp_references.transferred, cfg.audit.canaries, cfg.audit.seed));
            stage("privacy audit (canaries)", t);
            audit = Some(a?);
        }
        let map = map.describe();
        let map = if map.is_empty() { map } else { format!(", {map}") };
        results.push(dp.result("transfer_dp", format!("as `transfer`, trained with DP-SGD (σ = {:.4}, C = {}, q = {:.4}{map})", plan.noise_multiplier, plan.max_grad_norm, plan.sampling_rate)));
    }
    if cfg.baselines.raw_features_head {
        let b = train_head(cfg, &client, "baseline raw")?;
        stage("baseline: head on raw features", b.trained.seconds);
        results.push(b.result("raw_features_head", format!("baseline: the same {} head trained on the target's scaled {} features (no transfer)", head_name(cfg), cfg.features.kind)));
        if let (Some(plan), Some(p)) = (&dp_plan, &cfg.privacy) {
            let mut rng = crate::privacy::dpsgd::PrivacyRng::new(p.insecure_seed.map(|s| crate::seeds::stream(s, crate::seeds::RAW_BASELINE_DP)));
            let (b, _) = train_head_private(cfg, &client, &dp_references.own, plan, &mut rng)?;
            stage("baseline: head on raw features (DP-SGD)", b.trained.seconds);
            results.push(b.result("raw_features_head_dp", "baseline: `raw_features_head` trained with the same DP-SGD schedule (a separate release: its ε adds to the transfer head's if both are published)".into()));
        }
    }
    if cfg.baselines.target_only_network {
        let b = train_target_only(cfg, &client);
        stage("baseline: whole network on target", b.trained.seconds);
        results.push(b.result("target_only_network", "baseline: lower network + head trained from scratch on the target only".into()));
    }
    if let (true, Some(bow)) = (cfg.baselines.bag_of_words, &bow) {
        let (m, t) = timed(|| bow.fit_and_score());
        let (m, val, c) = m?;
        stage("baseline: bag-of-words logistic regression", t);
        results.push(crate::report::MethodResult {
            method: "bag_of_words".into(),
            description: format!("baseline: logistic regression (L2, C from {BAG_OF_WORDS_CS:?}) on TF-IDF of word 1-2-grams hashed to 2^18 buckets, target only: no transfer, no privacy"),
            test: m,
            validation_accuracy: Some(val),
            epochs: 1,
            best_epoch: 1,
            seconds: t,
            c: Some(crate::report::LinearC { c, chosen_on_validation: true, own_weight: None }),
        });
    }
    let curve = if cfg.curve.enabled {
        let (c, t) = timed(|| crate::curve::learning_curves(cfg, &decrypted, &client, bow.as_ref(), &dp_references));
        stage("learning curves", t);
        Some(c?)
    } else {
        None
    };
    let tfhe = crate::privacy::budget::TfheStatement::new(&cfg.he, he_report.as_ref())?;
    let budget = match (&lower, remote_statement) {
        (Some(lower), _) => crate::privacy::budget::BudgetReport::new(
            privacy_report.as_ref(),
            data.target.train.len(),
            crate::privacy::budget::ServerMechanisms {
                dp_pretraining: lower.meta.dp_pretraining.as_ref(),
                weight_noise: lower.weight_noise.as_ref().map(|w| (&w.plan, w.parameters)),
                source_examples: lower.meta.source.train,
                membership: membership.as_ref(),
                fitted_outside: &crate::privacy::budget::fitted_outside(cfg),
            },
            tfhe,
        )?,
        (None, statement) => crate::privacy::budget::BudgetReport::with_server_statement(
            privacy_report.as_ref(),
            data.target.train.len(),
            statement.unwrap_or_default(),
            tfhe,
        )?,
    };
    let report = Report {
        name: cfg.name.clone(),
        seed: cfg.seed,
        version: env!("CARGO_PKG_VERSION").into(),
        threads: rayon::current_num_threads(),
        source: lower.as_ref().map(|l| l.meta.source.clone()),
        target: data.target_summary,
        server: remote.clone().unwrap_or_else(|| "local".into()),
        pretraining: lower.map(|lower| PretrainSummary {
            from_cache: lower.from_cache(),
            origin: lower.origin,
            cache_dir: lower.cache_dir.display().to_string(),
            source_test: lower.meta.source_test,
            source_tasks: lower.meta.source_tasks,
            history: lower.meta.history,
            dp_pretraining: lower.meta.dp_pretraining,
            weight_noise: lower.weight_noise,
            pruned: lower.pruned,
        }),
        budget,
        results,
        head_history: head.trained.history.clone(),
        privacy: privacy_report,
        audit,
        he: he_report,
        curve,
        stages,
        config: cfg.clone(),
    };
    let out = cfg.output_dir();
    report.write(&out)?; // creates `out`
    client_pipeline.save(&out.join("client_features.json"))?;
    // Everything `evaluate` needs: the head's inputs, the head, and the manifest that ties them to this config.
    transferred.save(&out.join("features.json"))?;
    model::save_module(&published, &out.join("head"))?;
    cfg.save(&out.join("config.toml"))?;
    let mut manifest = crate::rundir::RunManifest { dp_references: Some(dp_references), ..crate::rundir::RunManifest::new(cfg) };
    manifest.head = Some(crate::rundir::HeadShape::of(cfg, transferred.train.ncols()));
    manifest.write(&out)?;
    // Its results are written: the encrypted pass's journal has served.
    crate::he::journal::remove_all(&out)?;
    Ok(report)
}
