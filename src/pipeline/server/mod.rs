//! The server's side of a run: the network it releases to the encrypted stage. Pretraining on the source data
//! (cached, or shipped in the binary; DP pretraining) is [`pretrain`]; weight noise is [`weight_noise`]; dead units
//! are dropped here; what the source data tells a run (the membership attack, the contamination check) is
//! [`source_checks`]; the releases of the server's other pretrainings on some of the same source examples are [`releases`].

mod pretrain;
mod releases;
mod source_checks;
mod weight_noise;

pub use pretrain::*;
pub use releases::*;
pub use source_checks::*;
pub use weight_noise::*;

use std::path::PathBuf;

use crate::config::RunConfig;
use crate::data::{DatasetSummary, Split};
use crate::error::{Error, Result};
use crate::features::FeaturePipeline;
use crate::model::{Cpu, LowerNet, PretrainNet};
use crate::report::{AppliedWeightNoise, NetworkOrigin, PrunedUnits};

use super::load_source;

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
    /// The other noised releases the server has stored for this pretraining (other noise settings, or draws from an
    /// earlier network of this config): with `weight_noise`, what the budget composes for a holder of them all.
    pub other_releases: crate::privacy::server::StoredReleases,
    /// The releases of the server's other pretrainings in the cache that learned from some of the same source examples
    /// (other configs: another pretraining key), when the run has a server mechanism ([`other_pretrainings`]).
    pub other_pretrainings: crate::privacy::server::OtherPretrainings,
    /// The dead units dropped before compiling, when `[lower] prune_dead` dropped any ([`prune_dead_units`]).
    pub pruned: Option<PrunedUnits>,
    /// What changed in the source data since the cache's network of this config was trained, when this run trained
    /// it again for that ([`TrainedOn::change_from`]).
    pub retrained_because: Option<&'static str>,
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

    /// Why its un-noised form is public, when it is: shipped in the binary, or built plain for clients before
    /// ([`served_plain`]).
    pub fn public_network(&self) -> Option<crate::privacy::budget::PublicNetwork> {
        public_network(self.origin, &self.cache_dir)
    }

    /// The server's source-data mechanisms behind this network, for its budget rows: DP pretraining, weight noise
    /// and the other noised releases stored beside it, with the run's `membership` figure and what was fitted on
    /// the source outside the mechanisms (`fitted_outside`, [`crate::privacy::budget::fitted_outside`]).
    pub fn mechanisms<'a>(&'a self, membership: Option<&'a crate::privacy::budget::SourceMembership>, fitted_outside: &'a [&'static str]) -> crate::privacy::budget::ServerMechanisms<'a> {
        crate::privacy::budget::ServerMechanisms {
            dp_pretraining: self.meta.dp_pretraining.as_ref(),
            dp_pretraining_replaced: &self.meta.dp_trained_over,
            weight_noise: self.weight_noise.as_ref().map(|w| (&w.plan, w.parameters)),
            other_weight_noise: Some(&self.other_releases),
            other_pretrainings: Some(&self.other_pretrainings),
            public_network: self.public_network(),
            source_examples: self.meta.source.train,
            membership,
            fitted_outside,
        }
    }

    /// A stored network with its meta data.
    pub fn from_stored(net: PretrainNet<Cpu>, features: FeaturePipeline, meta: PretrainMeta, origin: NetworkOrigin, cache_dir: PathBuf) -> Self {
        Self { net: net.lower, features, meta, origin, cache_dir, weight_noise: None, other_releases: Default::default(), other_pretrainings: Default::default(), pruned: None, retrained_because: None }
    }
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
    let mut retrained_because = None;
    // A cache entry is checked against the source data as it is now, when that can be read (it is read anyway, for
    // the contamination check); without it the entry is what there is.
    if let Some(cached) = stored.as_ref().filter(|s| check_source && s.origin == NetworkOrigin::Cache) {
        match load_source(cfg) {
            Ok(loaded) => {
                retrained_because = staleness(cached, cfg, &source.insert(loaded).0)?;
                if retrained_because.is_some() {
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
            PretrainedLower { retrained_because, ..pretrain_on_source(cfg, split, summary)? }
        }
    };
    let noise_plan = match &cfg.server_privacy.weight_noise {
        Some(wn) => crate::privacy::server::plan_weight_noise(wn, lower.meta.source.train)?,
        None => None,
    };
    // With a server mechanism, what the network learned from: other pretrainings that learned from some of it count
    // beside its releases ([`other_pretrainings`]).
    let mechanism = noise_plan.is_some() || lower.meta.dp_pretraining.is_some();
    let mut learned = None;
    if let Some(plan) = noise_plan {
        // An entry made before entries recorded what they learned from is matched on the source data, when they can be
        // loaded (a draw refused for other reasons, e.g. from the shipped network under a total, does not need them).
        let loaded = &mut source;
        let learned_here = learned_from(cfg, &lower, move || {
            if loaded.is_none() {
                *loaded = load_source(cfg).ok();
            }
            loaded.as_ref().map(|(s, _)| s)
        })?;
        apply_weight_noise(cfg, &mut lower, plan, learned.insert(learned_here).as_ref())?;
        // The noised network's own ranges: the compiler calibrates on what it evaluates.
        let (split, _) = match &source {
            Some(s) => s,
            None => source.insert(load_source(cfg).map_err(|e| Error::config_key("server_privacy.weight_noise", format!("a noised network is calibrated on its source data, which cannot be loaded: {e}")))?),
        };
        let x = lower.features.transform(&split.train.texts)?;
        lower.meta.source_ranges = crate::he::quant::pre_activation_ranges(&lower.net, x.view())?;
    }
    if mechanism {
        // (Taken before the noise: its digest is the network's, as trained.)
        let learned = match learned {
            Some(learned) => learned,
            None => learned_from(cfg, &lower, || source.as_ref().map(|(s, _)| s))?,
        };
        lower.other_pretrainings = other_pretrainings(&cfg.cache_dir, std::slice::from_ref(&lower.cache_dir), learned.as_ref());
    }
    if cfg.lower.prune_dead {
        prune_dead_units(&mut lower);
    }
    Ok((lower, source.map(|(split, _)| split)))
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
