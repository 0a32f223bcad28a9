//! Pretraining the server's lower network on the source data: its cache key, the cache entry and what it records
//! having been trained on ([`TrainedOn`]), the network shipped in the binary, DP pretraining's schedule, multi-task
//! outputs and balanced paths.

use ndarray::Array2;
use serde::{Deserialize, Serialize};

use crate::config::RunConfig;
use crate::data::{Dataset, DatasetSummary, Split};
use crate::error::{Error, Result};
use crate::eval::Metrics;
use crate::features::FeaturePipeline;
use crate::model::{self, Cpu, predict_proba, PretrainNet};
use crate::pipeline::FeatureSplit;
use crate::report::{NetworkOrigin, SourceTask};
use crate::train::{self, EpochStats, Trained};

use super::PretrainedLower;

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
    /// The DP-pretraining releases this entry replaced: networks of the same config DP-pretrained before on source data
    /// that changed since, each still a release about the examples it shares with this one (the budget composes
    /// them with this network's own).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dp_trained_over: Vec<crate::privacy::plan::DpPlan>,
}

/// What a pretrained network was trained on that its key ([`pretrain_key`], the config) does not fix: the contents of
/// the source files and the shipped embedding table. A cache entry whose record differs from the source data as it
/// is now is stale and trained again ([`super::server_network_and_source`]); a shipped network's record says which table
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
    let key = pretrain_key(cfg);
    if let Some(cached) = cached_pretrained(cfg) {
        // The cache comes first. When the binary ships another network under the same key (a newer build, or one
        // this cache's `ship-network` did not make), say so: the run's report names the cache, not the binary.
        if let Some(Ok(shipped)) = crate::shipped_network::find(&key) {
            let net = shipped.network(&cfg.lower, cfg.features.dim(), pretrain_outputs(cfg), cfg.seed)?;
            if model::weights_sha256(&net.lower) != model::weights_sha256(&cached.net) {
                tracing::warn!(
                    dir = %cached.cache_dir.display(),
                    "the pretraining cache holds another network for this config than the one shipped in the binary: the \
                     cache's is used; move that folder aside to use the shipped one"
                );
            }
        }
        return Ok(Some(cached));
    }
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
            Err(e) => tracing::warn!("pretraining cache entry unusable: {e}"),
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
/// applied afterwards by [`super::apply_weight_noise`].
pub fn pretrain(cfg: &RunConfig, source: &Split, summary: &DatasetSummary) -> Result<PretrainedLower> {
    match stored_pretrained(cfg)? {
        Some(stored) if staleness(&stored, cfg, source)?.is_none() => Ok(stored),
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
    Ok(if staleness(&cached, cfg, source)?.is_some() { None } else { Some(cached) })
}

/// What changed when `stored` is a cache entry trained on other source data (or embeddings) than `source` as `cfg`
/// featurizes it ([`TrainedOn::change_from`]), with a warning saying so; `None` when it is current. A shipped network
/// is the server's as shipped, never stale; an entry made before the record was kept cannot be checked and is used.
pub(super) fn staleness(stored: &PretrainedLower, cfg: &RunConfig, source: &Split) -> Result<Option<&'static str>> {
    if stored.origin != NetworkOrigin::Cache {
        return Ok(None);
    }
    let Some(recorded) = &stored.meta.trained_on else {
        tracing::info!(dir = %stored.cache_dir.display(), "the cached network does not record what it was trained on (made by an older version); used as it is");
        return Ok(None);
    };
    let change = recorded.change_from(&TrainedOn::of(cfg, source)?);
    if let Some(change) = change {
        tracing::warn!(dir = %stored.cache_dir.display(), "{change} since the cached network was pretrained: training it again");
    }
    Ok(change)
}

/// Refuse a DP pretraining (`plan`) that, with the DP pretrainings of the network it `replaced` and the releases of
/// the `others` pretrainings on some of the same source examples, would spend more than `server_privacy.total_epsilon`
/// (`total`). Returns the ε of `plan` with those it replaced.
pub(super) fn dp_pretraining_within_total(plan: &crate::privacy::plan::DpPlan, replaced: &[crate::privacy::plan::DpPlan], total: f64, others: &crate::privacy::server::OtherPretrainings) -> Result<f64> {
    let (together, _) = crate::privacy::server::dp_pretrainings_epsilon(&std::iter::once(plan).chain(replaced).collect::<Vec<_>>())?;
    if together + others.epsilon() <= total {
        return Ok(together);
    }
    let shown = crate::privacy::shown::epsilon;
    // Above the total by itself, it is refused for that; otherwise the other pretrainings' releases tip it over.
    let why = match (replaced.len(), together <= total) {
        (0, false) => format!("a DP pretraining at ε = {} alone would spend more than the total of {total}", shown(plan.epsilon)),
        (n, false) => format!(
            "DP pretraining (ε = {} alone) beside the {n} DP pretraining(s) of this network it replaces would spend ε = {} \
             together, above the total of {total}",
            shown(plan.epsilon),
            shown(together)
        ),
        (n, true) => format!(
            "a DP pretraining at ε = {}{} beside {} would spend ε = {} in all, above the total of {total}; releases of \
             pretrainings on the same source examples add up",
            shown(plan.epsilon),
            if n == 0 { String::new() } else { format!(" (ε = {} with the {n} DP pretraining(s) of this network it replaces)", shown(together)) },
            others.describe(),
            shown(together + others.epsilon())
        ),
    };
    Err(Error::config_key("server_privacy.total_epsilon", why))
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
    let cached = cached_pretrained(cfg);
    let recorded = cached.as_ref().and_then(|c| c.meta.trained_on.clone());
    // The DP releases the entry stands for, should this training replace it: a complete entry's own and those it
    // replaced; an incomplete one's, when a DP pretraining that replaced them was cut short (they were still made).
    // Empty without DP pretraining: the key holds the DP table, so such entries record none.
    let dp_trained_over: Vec<crate::privacy::plan::DpPlan> = match (&cached, entry.carried()) {
        (_, Some(carried)) => carried?,
        (Some(c), None) => c.meta.dp_pretraining.iter().chain(&c.meta.dp_trained_over).cloned().collect(),
        (None, None) => Vec::new(),
    };
    // Strictly: an entry that records no source is not taken here (callers that accept one took it already).
    if let Some(done) = cached.filter(|_| recorded.as_ref().is_some_and(|t| t.change_from(&trained_on).is_none())) {
        return Ok(done);
    }
    // With DP pretraining a complete entry is a release the server may have made (every run that used it handed a
    // client its outputs), and training again is a new one. Changed source data justifies it, with a warning; an
    // entry that cannot be read or records no source is refused, as a damaged noised network is.
    if cfg.dp_pretraining().is_some() && entry.meta_path().exists() {
        if recorded.is_none_or(|t| t.change_from(&trained_on).is_none()) {
            return Err(Error::config_key("server_privacy.dp_pretraining", format!(
                "the DP-pretrained network stored in {} cannot be used (unreadable, or made before entries recorded their \
                 source data); training again would be a second DP release about the same source examples, spending the \
                 budget again. Restore the entry, or delete it and account for both releases",
                dir.display()
            )));
        }
        tracing::warn!(dir = %dir.display(), "DP pretraining again on changed source data: a new release; for the source examples both networks learned from, the two releases' ε add up (the report's budget composes them)");
    }
    // What this folder's networks will have learned from: this one's source texts with its earlier networks'.
    let learned = super::examples_with_earlier(&dir, source);
    let dp_plan = dp_pretraining_plan(cfg, source.train.len())?;
    // A DP pretraining is a release, decided under the cache's releases lock (after the entry's) against the other
    // pretrainings' releases, so that releases for other configs at once see each other: a schedule beyond its
    // budget, or one that with the DP pretrainings it replaces and the other pretrainings' releases would spend more
    // than the server's total, is refused. Decided before training (nothing is trained in vain) and again before
    // the entry is written (what other runs released meanwhile counts), but not held while it trains: a noise draw
    // for another pretraining need not wait minutes for it.
    let decide = |trained: bool| -> Result<Option<crate::atomic::DirLock>> {
        let Some(plan) = &dp_plan else { return Ok(None) };
        let held = super::releases_lock(&cfg.cache_dir)?;
        if let Some(total) = cfg.server_privacy.total_epsilon {
            let others = super::other_pretrainings(&cfg.cache_dir, std::slice::from_ref(&dir), learned.as_ref());
            dp_pretraining_within_total(plan, &dp_trained_over, total, &others).map_err(|e| match e {
                Error::Config { file, key, message } if trained => Error::Config {
                    file,
                    key,
                    message: format!("{message} (decided again once this network was trained, counting what other runs released meanwhile: it was not stored, and nothing was released)"),
                },
                e => e,
            })?;
        }
        Ok(Some(held))
    };
    drop(decide(false)?);
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
    let _all_releases = decide(true)?;
    let meta = PretrainMeta {
        key,
        source_test,
        source_tasks: tasks,
        source: summary.clone(),
        source_ranges: crate::he::quant::pre_activation_ranges(&trained.model.lower, fs.train.view())?,
        history: trained.history.clone(),
        dp_pretraining: dp_plan,
        trained_on: Some(trained_on),
        dp_trained_over,
    };
    // A run killed while this rewrites the entry leaves it incomplete (a miss), never a valid meta beside a torn
    // network ([`crate::cache`]).
    // Recorded before the entry is rewritten, so that a run killed meanwhile leaves what its releases learned from.
    // (An earlier network that recorded nothing leaves the entry unrecorded: other pretrainings then count it
    // whatever they learned from.)
    if let Some(learned) = &learned {
        super::record_examples(&dir, learned)?;
    }
    // The DP releases this entry replaces survive a run killed before it finishes.
    entry.begin_carrying(&meta.dp_trained_over)?;
    model::save_module_private(&trained.model, &dir.join("lower"))?;
    features.save(&dir.join("features.json"))?;
    cfg.save(&dir.join("config.toml"))?;
    entry.finish(&meta)?;
    Ok(PretrainedLower::from_stored(trained.model, features, meta, NetworkOrigin::Trained, dir))
}
