//! The server's side of a run: pretraining the lower network on the source data (cached, or shipped in the
//! binary), DP pretraining and weight noise, dropping dead units, and the membership attack on the source data.

use std::path::PathBuf;

use ndarray::Array2;
use serde::{Deserialize, Serialize};

use crate::config::RunConfig;
use crate::data::{Dataset, DatasetSummary, Split};
use crate::error::{Error, Result};
use crate::eval::Metrics;
use crate::features::FeaturePipeline;
use crate::model::{self, Cpu, LowerNet, predict_proba, PretrainNet};
use crate::report::{AppliedWeightNoise, NetworkOrigin, PrunedUnits, SourceTask};
use crate::train::{self, EpochStats, Trained};

use super::{FeatureSplit, load_source};
use super::transfer::lower_forward;

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

    /// The tightest ε its server-side mechanisms give the source data (DP pretraining, weight noise: the smaller of
    /// the two valid bounds); ∞ with neither.
    pub fn source_epsilon(&self) -> f64 {
        let pretraining = self.meta.dp_pretraining.as_ref().map_or(f64::INFINITY, |p| p.epsilon);
        let weight_noise = self.weight_noise.as_ref().map_or(f64::INFINITY, |w| w.plan.epsilon);
        pretraining.min(weight_noise)
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
    /// What the network was trained on beyond its config ([`TrainedOn`]); `None` in entries made before it was
    /// recorded.
    #[serde(default)]
    pub trained_on: Option<TrainedOn>,
}

/// What a pretrained network was trained on that its key ([`pretrain_key`], the config) does not fix: the contents of
/// the source files and the shipped embedding table. A cache entry whose record differs from the source data as it
/// is now is stale and trained again ([`server_network_and_source`]); a shipped network's record says which table
/// it was trained on (a test checks it is the table shipped beside it).
///
/// ```
/// use cryptotl::data::{Dataset, Split};
/// use cryptotl::pipeline::TrainedOn;
/// let part = |texts: &[&str], labels: &[u8]| Dataset {
///     texts: texts.iter().map(|t| t.to_string()).collect(), labels: labels.to_vec(), ..Default::default()
/// };
/// let split = |label: u8| Split {
///     train: part(&["a fine film", "a dull film"], &[1, label]), validation: part(&["fine"], &[1]),
///     test: part(&["dull"], &[0]), duplicates_moved: 0,
/// };
/// let cfg = cryptotl::config::RunConfig::from_toml_str(cryptotl::config::QUICKSTART_TOML, "quickstart", &[]).unwrap();
/// let (a, b) = (TrainedOn::of(&cfg, &split(0)).unwrap(), TrainedOn::of(&cfg, &split(1)).unwrap());
/// assert_eq!(a, TrainedOn::of(&cfg, &split(0)).unwrap());
/// assert_ne!(a.source, b.source); // one label changed
/// assert_eq!(a.change_from(&b), Some("the source data changed"));
/// assert_eq!(a.embedding_table, None); // none of these texts is among the shipped embeddings
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainedOn {
    /// xxh3-128 (hex) of the source split: each part's examples in order, each with its path, label and text.
    pub source: String,
    /// [`records_sha256`](crate::features::shipped::ShippedEmbeddings::records_sha256) of the shipped MiniLM table
    /// when it embedded some source text; `None` when none came from it (or the features are not MiniLM).
    pub embedding_table: Option<String>,
}

impl TrainedOn {
    /// The record of `source` as `cfg` featurizes it.
    pub fn of(cfg: &RunConfig, source: &Split) -> Result<Self> {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        let mut table_used = false;
        let table = match cfg.features.kind {
            crate::config::FeatureKind::Minilm => Some(crate::features::shipped::ShippedEmbeddings::embedded()?),
            crate::config::FeatureKind::Hashed => None,
        };
        for part in [&source.train, &source.validation, &source.test] {
            h.update(&(part.len() as u64).to_le_bytes());
            for (i, (text, label)) in part.texts.iter().zip(&part.labels).enumerate() {
                let origin = part.origins.get(i).and_then(|&o| part.origin_names.get(o as usize)).map_or("", String::as_str);
                for field in [origin.as_bytes(), text.as_bytes()] {
                    h.update(&(field.len() as u64).to_le_bytes());
                    h.update(field);
                }
                h.update(&[*label]);
                table_used = table_used || table.is_some_and(|t| t.get(text).is_some());
            }
        }
        let embedding_table = if table_used { table.map(|t| t.records_sha256.clone()) } else { None };
        Ok(Self { source: format!("{:032x}", h.digest128()), embedding_table })
    }

    /// What differs from `now`, in words, or `None` when nothing does.
    pub fn change_from(&self, now: &TrainedOn) -> Option<&'static str> {
        match (self.source == now.source, self.embedding_table == now.embedding_table) {
            (true, true) => None,
            (false, true) => Some("the source data changed"),
            (true, false) => Some("the shipped MiniLM embeddings changed"),
            (false, false) => Some("the source data and the shipped MiniLM embeddings changed"),
        }
    }
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
        "seed": cfg.seed, "features": cfg.features.key_material(), "source": cfg.source, "split_scheme": "per-path",
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
        return Ok(Some(PretrainedLower::from_stored(net, shipped.manifest.features.clone().located_as(&cfg.features), shipped.manifest.meta.clone(), NetworkOrigin::Shipped, dir)));
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
            let features = FeaturePipeline::load(&feat_path)?.located_as(&cfg.features);
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
    let (t, v) = (balanced_rows(&source.train), balanced_rows(&source.validation));
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

/// Bytes of dense source features pretraining holds at its peak: the features of every row, their copy with the
/// task columns (one output per path), the balanced repeat of the training and validation rows, and the training
/// tensors made from what is fitted; each rows x columns f32. What [`pretrain`] checks against the memory this
/// machine has available before it featurizes anything.
pub fn pretraining_feature_bytes(cfg: &RunConfig, source: &Split) -> u64 {
    let tasks = pretrain_outputs(cfg);
    let width = (cfg.features.dim() + if tasks > 1 { tasks } else { 0 }) as u64;
    let all = (source.train.len() + source.validation.len() + source.test.len()) as u64;
    let fitted = if cfg.source.balance_paths {
        (balanced_rows(&source.train).len() + balanced_rows(&source.validation).len()) as u64
    } else {
        (source.train.len() + source.validation.len()) as u64
    };
    let copies = all + if tasks > 1 { all } else { 0 } + if cfg.source.balance_paths { fitted } else { 0 } + fitted;
    copies.saturating_mul(width).saturating_mul(4)
}

/// Refuse `bytes` of dense features when `available` (bytes this machine can give) is known and smaller: an error
/// naming the keys that shrink them, before the allocation the system would end by killing the run.
pub fn check_feature_memory(bytes: u64, available: Option<u64>, what: &str) -> Result<()> {
    match available {
        Some(free) if bytes > free => Err(Error::Features(format!(
            "{what} would hold about {:.1} GiB of dense features (rows x features.dim as f32, with their copies), more \
             than the {:.1} GiB this machine has available: lower features.dim, or set max_examples on the dataset",
            bytes as f64 / (1u64 << 30) as f64,
            free as f64 / (1u64 << 30) as f64
        ))),
        _ => Ok(()),
    }
}

/// The rows of `part` with each path's repeated up to the largest path's count, in order.
fn balanced_rows(part: &Dataset) -> Vec<usize> {
    let groups = part.by_origin();
    let largest = groups.iter().map(|(_, g)| g.len()).max().unwrap_or(0);
    let mut idx: Vec<usize> = groups.iter().filter(|(_, g)| !g.is_empty()).flat_map(|(_, g)| g.iter().cycle().take(largest).copied()).collect();
    idx.sort_unstable();
    idx
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
        Some(stored) if !is_stale(&stored, cfg, source)? => Ok(stored),
        _ => pretrain_on_source(cfg, source, summary),
    }
}

/// The cache entry of `cfg` when it records having been trained on `source` as it is now; an entry from before the
/// record was kept is not taken. What `ship-network` ships from the cache: a network it can say it would train again.
pub fn verified_cached_pretrained(cfg: &RunConfig, source: &Split) -> Result<Option<PretrainedLower>> {
    let Some(cached) = cached_pretrained(cfg) else { return Ok(None) };
    if cached.meta.trained_on.is_none() {
        tracing::warn!(dir = %cached.cache_dir.display(), "the cached network does not record what it was trained on (made by an older version): pretraining again");
        return Ok(None);
    }
    Ok(if is_stale(&cached, cfg, source)? { None } else { Some(cached) })
}

/// True when `stored` is a cache entry trained on other source data (or embeddings) than `source` as `cfg`
/// featurizes it ([`TrainedOn`]), with a warning saying what changed. A shipped network is the server's as shipped,
/// never stale; an entry made before the record was kept cannot be checked and is used.
fn is_stale(stored: &PretrainedLower, cfg: &RunConfig, source: &Split) -> Result<bool> {
    if stored.origin != NetworkOrigin::Cache {
        return Ok(false);
    }
    let Some(recorded) = &stored.meta.trained_on else {
        tracing::info!(dir = %stored.cache_dir.display(), "the cached network does not record what it was trained on (made by an older version); used as it is");
        return Ok(false);
    };
    match recorded.change_from(&TrainedOn::of(cfg, source)?) {
        None => Ok(false),
        Some(change) => {
            tracing::warn!(dir = %stored.cache_dir.display(), "{change} since the cached network was pretrained: training it again");
            Ok(true)
        }
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
    let trained_on = TrainedOn::of(cfg, source)?;
    // Strictly: an entry that records no source is not taken here (callers that accept one took it already).
    if let Some(done) = cached_pretrained(cfg).filter(|c| c.meta.trained_on.as_ref().is_some_and(|t| t.change_from(&trained_on).is_none())) {
        return Ok(done);
    }
    // Settled before training: a schedule beyond its budget refuses to start.
    let dp_plan = dp_pretraining_plan(cfg, source.train.len())?;
    check_feature_memory(pretraining_feature_bytes(cfg, source), crate::config::available_memory(), "pretraining on the source")?;
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
        trained_on: Some(trained_on),
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
/// weights (each would spend the budget again). The entry records the digest of the weights it noised
/// ([`model::weights_sha256`]): a network trained again (on changed source data, [`TrainedOn`]) gets its own draw,
/// with a warning, never the earlier network's release.
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
    let unreadable = |e: Error| Error::config_key("server_privacy.weight_noise", format!(
        "the noised network stored in {} cannot be read ({e}); a fresh draw would be a second release of the same weights, spending the budget again. \
         Restore the entry, or delete it and account for both releases",
        dir.display()
    ));
    let base_network = model::weights_sha256(&lower.net);
    if let Some(applied) = entry.meta::<AppliedWeightNoise>() {
        let mut applied = applied.map_err(unreadable)?;
        if applied.plan != plan {
            return Err(unreadable(Error::artifact(entry.meta_path(), "holds another noise setting")));
        }
        // Drawn from another pretrained network (this one was trained again since: its source data changed): that
        // release is not of this network, which gets its own draw (entries before the record are taken as they are).
        if applied.base_network.as_ref().is_none_or(|b| *b == base_network) {
            lower.net = model::load_module(lower.net.clone(), &net_path, &device).map_err(unreadable)?;
            applied.from_cache = true;
            tracing::info!(dir = %dir.display(), "noised lower network loaded from cache (no new release)");
            lower.weight_noise = Some(applied);
            return Ok(());
        }
        tracing::warn!(
            dir = %dir.display(),
            "the noised network stored here was drawn from an earlier pretrained network (this one was trained again, e.g. \
             on changed source data): drawing this network's release; for the source examples both networks learned \
             from, the two releases' ε add up"
        );
    }
    let mut rng = crate::privacy::dpsgd::PrivacyRng::new(insecure_seed);
    let (net, parameters) = crate::privacy::server::add_weight_noise(lower.net.clone(), plan.noise_std, &mut rng.noise);
    tracing::info!(std = plan.noise_std, parameters, epsilon = plan.epsilon, "weight noise added to the lower network");
    let noise_source = crate::privacy::dpsgd::noise_source(insecure_seed.is_some()).into();
    let applied = AppliedWeightNoise { plan, parameters, noise_source, from_cache: false, base_network: Some(base_network) };
    entry.begin()?;
    model::save_module_private(&net, &net_path)?;
    entry.finish(&applied)?;
    lower.net = net;
    lower.weight_noise = Some(applied);
    Ok(())
}

/// The network the server releases to the encrypted stage: pretrained (with DP-SGD when configured; cached, or
/// shipped in the binary) and then noised (when configured, cached). Both budgets are checked before any training
/// starts. The source data is loaded where it is needed: to train, to calibrate a noised network, and to check a
/// cached network against it ([`TrainedOn`]).
pub fn server_lower_network(cfg: &RunConfig) -> Result<PretrainedLower> {
    Ok(server_network_and_source(cfg)?.0)
}

/// [`server_lower_network`] without checking a cached network against the source data: what `predict` opens. A run's
/// folder names the network its head was trained behind, and `predict` refuses any other, so the check would only
/// cost each prediction a reading of the source data (and, were the source changed, a pretraining ended by that
/// refusal).
pub fn stored_lower_network(cfg: &RunConfig) -> Result<PretrainedLower> {
    Ok(server_network(cfg, false)?.0)
}

/// [`server_lower_network`], with the source data when it had to be loaded for it (so a caller that needs it too,
/// such as the membership attack, does not load it twice).
pub fn server_network_and_source(cfg: &RunConfig) -> Result<(PretrainedLower, Option<Split>)> {
    server_network(cfg, true)
}

fn server_network(cfg: &RunConfig, check_source: bool) -> Result<(PretrainedLower, Option<Split>)> {
    let mut source: Option<(Split, DatasetSummary)> = None;
    let mut stored = stored_pretrained(cfg)?;
    // A cache entry is checked against the source data as it is now, when that can be read (it is read anyway, for
    // the contamination check); without it the entry is what there is.
    if let Some(cached) = stored.as_ref().filter(|s| check_source && s.origin == NetworkOrigin::Cache) {
        match load_source(cfg) {
            Ok(loaded) => {
                if is_stale(cached, cfg, &source.insert(loaded).0)? {
                    stored = None;
                }
            }
            Err(e) => tracing::info!(dir = %cached.cache_dir.display(), "the cached network is used without checking it against its source data, which cannot be loaded: {e}"),
        }
    }
    let mut lower = match stored {
        Some(stored) => stored,
        None => {
            let loaded = match source.take() {
                Some(loaded) => loaded,
                None => load_source(cfg)?,
            };
            let (split, summary) = source.insert(loaded);
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
            None => source.insert(load_source(cfg).map_err(|e| Error::config_key("server_privacy.weight_noise", format!("a noised network is calibrated on its source data, which cannot be loaded: {e}")))?),
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

/// The contamination check of a run in one process ([`crate::overlap`]): how many of the `target`'s texts, per
/// split, the server's network `lower` learned from. A shipped network brings the fingerprints of its source texts
/// (so the quickstart needs no source data); any other is checked against `source` or the config's source data
/// loaded here (texts only). When neither is at hand the check says why instead of failing the run. With
/// `head.transfer_unit = "sentence"` the target's sentences, as the network receives them, are counted too. A target
/// text or sentence found among them is also logged as a warning.
pub fn source_overlap(cfg: &RunConfig, lower: &PretrainedLower, source: Option<&Split>, target: &Split) -> crate::overlap::OverlapCheck {
    source_overlap_of(cfg, Some(lower), source, target)
}

/// [`source_overlap`], with the network when there is one: without, the check reads the config's source texts
/// (`curve` and `sweep` need no network for it, nor any weight noise drawn).
pub fn source_overlap_of(cfg: &RunConfig, lower: Option<&PretrainedLower>, source: Option<&Split>, target: &Split) -> crate::overlap::OverlapCheck {
    use crate::overlap::{OverlapCheck, SourceFingerprints};
    let fingerprints = if let Some(lower) = lower.filter(|l| l.origin == NetworkOrigin::Shipped) {
        match crate::shipped_network::find(&lower.meta.key).transpose() {
            Ok(Some(shipped)) => shipped.source_fingerprints.clone().ok_or_else(|| "the shipped network carries no fingerprints of its source texts".to_string()),
            Ok(None) => Err("the shipped network is not in this binary".to_string()),
            Err(e) => Err(e.to_string()),
        }
    } else {
        match source {
            Some(s) => Ok(SourceFingerprints::of_source(s)),
            None => load_source(cfg).map(|(s, _)| SourceFingerprints::of_source(&s)).map_err(|e| format!("the source data cannot be loaded: {e}")),
        }
    };
    match fingerprints {
        Ok(f) => {
            let mut o = f.overlap(target);
            if cfg.head.transfer_unit == crate::config::TransferUnit::Sentence {
                o.sentences = Some(f.sentence_overlap(target, |t| crate::features::sentences(t, cfg.head.max_sentences)));
            }
            if o.total() > 0 {
                tracing::warn!(train = o.train, validation = o.validation, test = o.test,
                    "target texts found among the texts the server's network was pretrained on: their accuracy is not transfer (report.md, Data)");
            }
            if let Some(s) = o.sentences.as_ref().filter(|s| s.found.iter().sum::<usize>() > 0) {
                tracing::warn!(train = s.found[0], validation = s.found[1], test = s.found[2],
                    "target sentences found among the texts the server's network was pretrained on: their texts' accuracy is partly not transfer (report.md, Data)");
            }
            OverlapCheck::Checked(o)
        }
        Err(reason) => {
            tracing::info!(%reason, "target texts not checked against the server's source texts");
            OverlapCheck::NotChecked { reason }
        }
    }
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
