//! Weight noise on the pretrained network: a release, drawn once per (pretrained network, noise setting) and kept.

use std::path::{Path, PathBuf};

use crate::config::RunConfig;
use crate::error::{Error, Result};
use crate::model;
use crate::privacy::server::{StoredReleases, WeightNoisePlan};
use crate::report::AppliedWeightNoise;

use super::PretrainedLower;

/// Add the resolved `[server_privacy.weight_noise]` (`plan`, from [`crate::privacy::server::plan_weight_noise`])
/// to the pretrained lower network.
///
/// The noised network is a release: it is drawn once per (pretrained network, noise setting), stored in the
/// pretraining cache and reused by later runs, so rerunning does not hand the client fresh draws of the same
/// weights (each would spend the budget again). The entry records the digest of the weights it noised
/// ([`model::weights_sha256`]): a network trained again (on changed source data, [`super::TrainedOn`]) gets its own draw,
/// with a warning, never the earlier network's release.
///
/// `learned_from` is what the network learned from (as its pretraining entry records it, [`super::recorded_examples`];
/// `None`, unknown): the releases of other pretrainings that learned from some of it count against
/// `server_privacy.total_epsilon` too ([`super::other_pretrainings`]).
pub fn apply_weight_noise(cfg: &RunConfig, lower: &mut PretrainedLower, plan: WeightNoisePlan, learned_from: Option<&crate::overlap::SourceFingerprints>) -> Result<()> {
    let insecure_seed = cfg.server_privacy.weight_noise.as_ref().and_then(|w| w.insecure_seed);
    let device = Default::default();
    let dir = noise_entry_dir(&lower.cache_dir, &plan, insecure_seed);
    let entry = crate::cache::Entry::new(dir.clone());
    let net_path = dir.join("lower");
    // Every release of this pretraining is decided under the pretraining entry's lock: two runs drawing other
    // settings at once would each miss the other's draw, in the check against `total_epsilon` and in the budget's
    // releases-together row; a DP pretraining that replaces the entry waits for the draw, and the draw for it.
    // Every writer of a setting's entry holds it, so the entry is read here without its own lock, and a draw that
    // is refused leaves no folder behind.
    let _releases = crate::cache::Entry::new(lower.cache_dir.clone()).lock()?;
    // A complete entry is a network the server may already have released. If it cannot be read, drawing again
    // would be a second release of the same weights (the budget spent twice): refuse and say so. An incomplete
    // entry (no meta.json) was never used, so it is drawn again.
    let unreadable = |e: Error| Error::config_key("server_privacy.weight_noise", format!(
        "the noised network stored in {} cannot be read ({e}); a fresh draw would be a second release of the same weights, spending the budget again. \
         Restore the entry, or delete it and account for both releases",
        dir.display()
    ));
    let base_network = model::weights_sha256(&lower.net);
    // Earlier releases this entry held, when this draw replaces one of another network (same setting, same key).
    let mut drawn_over = Vec::new();
    if let Some(applied) = entry.meta::<AppliedWeightNoise>() {
        let mut applied = applied.map_err(unreadable)?;
        if applied.plan != plan {
            return Err(unreadable(Error::artifact(entry.meta_path(), "holds another noise setting")));
        }
        // Drawn from another pretrained network (this one was trained again since: its source data changed): that
        // release is not of this network, which gets its own draw (entries before the record are taken as they are).
        if applied.drawn_from(&base_network) {
            lower.net = model::load_module(lower.net.clone(), &net_path, &device).map_err(unreadable)?;
            applied.from_cache = true;
            tracing::info!(dir = %dir.display(), "noised lower network loaded from cache (no new release)");
            lower.other_releases = stored_releases(other_entries(&lower.cache_dir, &dir), &applied.drawn_over);
            lower.weight_noise = Some(applied);
            return Ok(());
        }
        drawn_over = std::iter::once(applied.plan).chain(applied.drawn_over).collect();
    } else if let Some(carried) = entry.carried::<Vec<WeightNoisePlan>>() {
        // A draw that replaced releases here was cut short: they were still made.
        drawn_over = carried.map_err(unreadable)?;
    }
    // This network is drawn anew. Releases of an earlier network of this config (trained again since, on changed
    // source data) may sit here or beside it, under another key when the split's size, and with it δ, changed.
    let others = other_entries(&lower.cache_dir, &dir);
    let earlier = drawn_over.len() + others.iter().filter(|o| o.base_network.as_deref().is_some_and(|b| b != base_network)).count();
    let stored = stored_releases(others, &drawn_over);
    // A DP-pretrained network's releases are bounded by its DP pretrainings whatever the noise adds: within the
    // total that way, the draw needs no check of its own.
    let dp_bound = dp_bound(&lower.meta)?;
    // Other configs' pretrainings on some of the same source examples: their releases add to this one's. A new draw is decided
    // under the cache's releases lock too (after the pretraining's), so that draws for other pretrainings at once
    // count each other; a stored release, loaded above, needed only the pretraining's.
    if let Some(total) = cfg.server_privacy.total_epsilon {
        super::refuse_draw_of_public(total, lower.public_network(), &lower.cache_dir)?;
    }
    let _all_releases = super::releases_lock(&cfg.cache_dir)?;
    let elsewhere = super::other_pretrainings(&cfg.cache_dir, std::slice::from_ref(&lower.cache_dir), learned_from);
    if let Some(total) = cfg.server_privacy.total_epsilon.filter(|t| dp_bound + elsewhere.epsilon() > *t) {
        within_total(total, &[&plan], &stored, &elsewhere)?;
    }
    if earlier > 0 {
        tracing::warn!(
            releases = earlier,
            dir = %lower.cache_dir.display(),
            "noised releases of an earlier pretrained network of this config are stored here: this network (trained again, \
             e.g. on changed source data) gets its own draw; for the source examples both networks learned from, the \
             releases' ε add up (the report's budget composes every stored release)"
        );
    }
    // The setting's own lock as well (taken after the pretraining's, never before): its folder is made here.
    let _lock = entry.lock()?;
    let mut rng = crate::privacy::dpsgd::PrivacyRng::new(insecure_seed);
    let (net, parameters) = crate::privacy::server::add_weight_noise(lower.net.clone(), plan.noise_std, &mut rng.noise);
    tracing::info!(std = plan.noise_std, parameters, epsilon = plan.epsilon, "weight noise added to the lower network");
    let noise_source = crate::privacy::dpsgd::noise_source(insecure_seed.is_some()).into();
    let applied = AppliedWeightNoise { plan, parameters, noise_source, from_cache: false, base_network: Some(base_network), drawn_over };
    // The releases this draw replaces survive a run killed before it finishes.
    entry.begin_carrying(&applied.drawn_over)?;
    model::save_module_private(&net, &net_path)?;
    entry.finish(&applied)?;
    lower.net = net;
    lower.other_releases = stored;
    lower.weight_noise = Some(applied);
    Ok(())
}

/// The cache entry, in the pretraining entry `pretrain_dir`, of the network noised by `plan` (with the tests' fixed
/// `seed`, if any): one per (pretrained network, noise setting).
fn noise_entry_dir(pretrain_dir: &Path, plan: &WeightNoisePlan, seed: Option<u64>) -> PathBuf {
    let material = serde_json::json!({ "plan": plan, "seed": seed });
    pretrain_dir.join(format!("{NOISE_ENTRY_PREFIX}{:016x}", xxhash_rust::xxh3::xxh3_64(material.to_string().as_bytes())))
}

/// The ε bound of the DP pretrainings of a network (`own`, and those it replaced), or ∞ without DP pretraining:
/// within `server_privacy.total_epsilon`, it bounds every release drawn from the network.
fn dp_bound(meta: &super::PretrainMeta) -> Result<f64> {
    match &meta.dp_pretraining {
        Some(own) => Ok(crate::privacy::server::dp_pretrainings_epsilon(&std::iter::once(own).chain(&meta.dp_trained_over).collect::<Vec<_>>())?.0),
        None => Ok(f64::INFINITY),
    }
}

/// Refuse, before any of them is made, the releases of `settings` (configs that differ only in the server's
/// mechanism, as a sweep's server settings do) that `server_privacy.total_epsilon` would refuse one by one: made
/// in turn, a later one would be refused after the earlier ones were released and their runs' work done.
///
/// - Weight noise: for each pretraining, the settings' draws that are not stored yet, with the releases stored for
///   it and those of other pretrainings that learned from some of the same source examples
///   ([`super::other_pretrainings`]), composed as the
///   last draw's own check would compose them. A setting already drawn for the stored network is reused and adds
///   nothing. Skipped when the network's DP pretraining keeps its releases within the total.
/// - DP pretraining: each setting is a pretraining of its own (the DP table is part of the key), refused when it is
///   not stored already and, with the DP pretrainings a cut-short retraining recorded as replaced and the other
///   pretrainings' releases, would spend more than the total (the check the pretraining itself makes, by the same
///   function).
/// - Together: the releases of every pretraining the sweep adds to, with the other pretrainings' (ε add).
///
/// Each release is still checked when it is made ([`apply_weight_noise`], [`super::pretrain_on_source`]); this reads
/// the stored network without checking it against its source data, which it loads only to count its examples when
/// no network is stored.
pub fn check_releases_within_total<'a>(settings: impl IntoIterator<Item = &'a RunConfig>) -> Result<()> {
    // The settings differ only in the server's mechanism: one source, loaded when first needed.
    let mut source: Option<crate::data::Split> = None;
    fn loaded<'s>(source: &'s mut Option<crate::data::Split>, cfg: &RunConfig) -> Result<&'s crate::data::Split> {
        if source.is_none() {
            *source = Some(super::load_source(cfg)?.0);
        }
        Ok(source.as_ref().expect("just loaded"))
    }
    // What the sweep's releases would spend, per pretraining folder: each new DP pretraining with those it replaces;
    // each pretraining's new draws, with the releases stored for it and the bound of its DP pretraining.
    let mut spent: Vec<(PathBuf, f64)> = Vec::new();
    // Per pretraining folder: what its network learned from, or will have ([`super::learned_from`]; `None`, unknown).
    let mut learned: std::collections::BTreeMap<PathBuf, Option<crate::overlap::SourceFingerprints>> = Default::default();
    // Per pretraining with new draws: its DP bound, the other pretrainings' releases, and the draws.
    let mut draws: std::collections::BTreeMap<PathBuf, (f64, crate::privacy::server::OtherPretrainings, Vec<WeightNoisePlan>)> = Default::default();
    let mut cache: Option<(PathBuf, f64)> = None;
    for cfg in settings {
        let Some(total) = cfg.server_privacy.total_epsilon else { continue };
        cache.get_or_insert_with(|| (cfg.cache_dir.clone(), total));
        let pretrain_dir = cfg.cache_dir.join(format!("pretrain-{}", super::pretrain_key(cfg)));
        let stored = super::stored_pretrained(cfg)?;
        let learned_here = match &stored {
            Some(l) => super::learned_from(cfg, l, || loaded(&mut source, cfg).ok())?,
            None => super::examples_with_earlier(&pretrain_dir, loaded(&mut source, cfg)?),
        };
        learned.insert(pretrain_dir.clone(), learned_here);
        let others = || super::other_pretrainings(&cfg.cache_dir, std::slice::from_ref(&pretrain_dir), learned[&pretrain_dir].as_ref());
        if cfg.dp_pretraining().is_some() && stored.is_none() {
            let n = loaded(&mut source, cfg)?.train.len();
            if let Some(plan) = super::dp_pretraining_plan(cfg, n)? {
                // What it would replace: only a DP pretraining cut short leaves a record without a stored network.
                let replaced: Vec<crate::privacy::plan::DpPlan> = crate::cache::Entry::new(pretrain_dir.clone()).carried().transpose()?.unwrap_or_default();
                let epsilon = super::dp_pretraining_within_total(&plan, &replaced, total, &others())?;
                spent.push((pretrain_dir.clone(), epsilon));
            }
        }
        let Some(wn) = cfg.server_privacy.weight_noise.as_ref().filter(|w| w.enabled) else { continue };
        // (A stored network's folder is `pretrain_dir`.)
        let (n, base, bound) = match &stored {
            Some(l) => (l.meta.source.train, Some(model::weights_sha256(&l.net)), dp_bound(&l.meta)?),
            // Trained first: its DP pretraining (if any) is checked then, and bounds the draws.
            None if cfg.dp_pretraining().is_some() => continue,
            None => (loaded(&mut source, cfg)?.train.len(), None, f64::INFINITY),
        };
        let elsewhere = others();
        if bound + elsewhere.epsilon() <= total {
            continue;
        }
        let Some(plan) = crate::privacy::server::plan_weight_noise(wn, n)? else { continue };
        let reused = matches!(
            crate::cache::Entry::new(noise_entry_dir(&pretrain_dir, &plan, wn.insecure_seed)).meta::<AppliedWeightNoise>(),
            Some(Ok(a)) if a.plan == plan && base.as_deref().is_some_and(|b| a.drawn_from(b))
        );
        if !reused {
            let origin = stored.as_ref().map_or(crate::report::NetworkOrigin::Trained, |l| l.origin);
            super::refuse_draw_of_public(total, super::public_network(origin, &pretrain_dir), &pretrain_dir)?;
        }
        let (_, _, new) = draws.entry(pretrain_dir.clone()).or_insert((bound, elsewhere, Vec::new()));
        if !reused && !new.contains(&plan) {
            new.push(plan);
        }
    }
    let Some((cache_dir, total)) = cache else { return Ok(()) };
    // Each pretraining's draws, beside the other pretrainings stored in the cache (as its last draw will check them).
    for (dir, (bound, elsewhere, new)) in &draws {
        if let Some(together) = within_total(total, &new.iter().collect::<Vec<_>>(), &stored_in(dir), elsewhere)? {
            spent.push((dir.clone(), together.min(*bound)));
        }
    }
    // And the sweep's pretrainings together: made one after another, the last would see all the others.
    if spent.len() > 1 {
        let dirs: Vec<PathBuf> = spent.iter().map(|(d, _)| d.clone()).collect();
        // What any of them learned from (unknown if one's is).
        let all: Option<crate::overlap::SourceFingerprints> = dirs.iter().try_fold(crate::overlap::SourceFingerprints::default(), |all, d| Some(all.union(learned.get(d)?.as_ref()?)));
        let others = super::other_pretrainings(&cache_dir, &dirs, all.as_ref());
        let together: f64 = spent.iter().map(|(_, e)| e).sum::<f64>() + others.epsilon();
        if together > total {
            let shown = crate::privacy::shown::epsilon;
            return Err(Error::config_key("server_privacy.total_epsilon", format!(
                "the sweep's server settings release {} networks pretrained on the same source examples (ε = {} each, with the \
                 releases stored for them){}: ε = {} together, above the total of {total}; fewer or smaller server settings stay within it",
                spent.len(),
                spent.iter().map(|(_, e)| shown(*e)).collect::<Vec<_>>().join(", "),
                if others.is_empty() { String::new() } else { format!(", beside {}", others.describe()) },
                shown(together)
            )));
        }
    }
    Ok(())
}

/// Refuse the new draws `new` when, with the releases `stored` for the same pretraining and those of the `others`
/// pretrainings that learned from some of the same source examples, they would spend more than `server_privacy.total_epsilon` (`total`)
/// together, or when a stored release cannot be read (its noise unknown). Returns the ε of `new` and `stored`
/// together, when there are new draws.
fn within_total(total: f64, new: &[&WeightNoisePlan], stored: &StoredReleases, others: &crate::privacy::server::OtherPretrainings) -> Result<Option<f64>> {
    let refuse = |why: String| Err(Error::config_key("server_privacy.total_epsilon", why));
    let Some(first) = new.first() else { return Ok(None) };
    if stored.unreadable > 0 {
        return refuse(format!(
            "{} noised release(s) stored for this pretraining cannot be read, so what a new draw would add to them cannot be \
             checked against the total of {total}; restore them, or account for them and remove them",
            stored.unreadable
        ));
    }
    let plans: Vec<&WeightNoisePlan> = new.iter().copied().chain(&stored.plans).collect();
    let (_, together) = crate::privacy::server::weight_noise_releases_epsilon(&plans, first.delta)?;
    if together + others.epsilon() > total {
        let shown = crate::privacy::shown::epsilon;
        let stds = |plans: &mut dyn Iterator<Item = &WeightNoisePlan>| plans.map(|p| format!("{:.4e}", p.noise_std)).collect::<Vec<_>>().join(", ");
        let made = if stored.plans.is_empty() { "no other release".to_string() } else { format!("{} release(s) already made (std {})", stored.plans.len(), stds(&mut stored.plans.iter())) };
        let what = match new {
            [plan] => format!("a new noised release (std {:.4e}, ε = {} alone)", plan.noise_std, shown(plan.epsilon)),
            _ => format!(
                "{} new noised releases (std {}; ε = {} alone)",
                new.len(),
                stds(&mut new.iter().copied()),
                new.iter().map(|p| shown(p.epsilon)).collect::<Vec<_>>().join(", ")
            ),
        };
        // Above the total by themselves, they are refused for that; otherwise the other pretrainings tip them over.
        if together <= total {
            return refuse(format!(
                "{what} beside {made} would spend ε = {} together at δ = {}; beside {} as well, ε = {} in all, above the \
                 total of {total}: releases of pretrainings on the same source examples add up. More noise (a larger \
                 noise_std or a smaller target_epsilon), fewer new settings, or already-made settings stay within it",
                shown(together),
                crate::privacy::shown::delta(first.delta),
                others.describe(),
                shown(together + others.epsilon())
            ));
        }
        return refuse(format!(
            "{what} beside {made} would spend ε = {} together at δ = {}, above the total of {total}; more noise (a larger \
             noise_std or a smaller target_epsilon), fewer new settings, or already-made settings stay within it",
            shown(together),
            crate::privacy::shown::delta(first.delta)
        ));
    }
    Ok(Some(together))
}

/// Every noised release stored in the pretraining folder `pretrain_dir` ([`other_entries`] of none).
pub(super) fn stored_in(pretrain_dir: &Path) -> StoredReleases {
    stored_releases(other_entries(pretrain_dir, pretrain_dir), &[])
}

/// Whether the pretraining folder `pretrain_dir` holds a noised release not drawn from the network whose weights'
/// digest is `base_network`: one of an earlier network of the config (trained again since), or one that does not
/// record which.
pub(super) fn holds_draws_of_other_networks(pretrain_dir: &Path, base_network: &str) -> bool {
    other_entries(pretrain_dir, pretrain_dir)
        .iter()
        .any(|o| o.base_network.as_deref() != Some(base_network) || !matches!(&o.releases, Ok(r) if r.len() == 1))
}

/// How the folder of a weight-noise entry's name begins ([`noise_entry_dir`]).
const NOISE_ENTRY_PREFIX: &str = "weight-noise-";

/// The weight-noise entry folders in the pretraining folder `pretrain_dir`, complete or not, in the file system's
/// order (none when it cannot be read).
pub(super) fn noise_entry_folders(pretrain_dir: &Path) -> impl Iterator<Item = PathBuf> {
    std::fs::read_dir(pretrain_dir)
        .into_iter()
        .flatten()
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(NOISE_ENTRY_PREFIX)))
}

/// What one other weight-noise entry of the pretraining stands for ([`other_entries`]).
struct OtherEntry {
    dir: PathBuf,
    /// The releases it stands for (its own and those it was drawn over), or why its record cannot be read.
    releases: Result<Vec<WeightNoisePlan>>,
    /// The pretrained network its own release was drawn from, when it records one.
    base_network: Option<String>,
}

/// The noised releases of the stored entries `others` ([`other_entries`]) with `drawn_over` (the releases this
/// run's entry replaced): other noise settings of the same pretrained network, or draws from an earlier network of
/// this config (trained again since, on changed source data; entries from before the record do not say which). For
/// the source examples they share, every one of them composes with this run's release
/// ([`crate::privacy::server::weight_noise_releases_epsilon`]).
fn stored_releases(others: Vec<OtherEntry>, drawn_over: &[WeightNoisePlan]) -> StoredReleases {
    let mut stored = StoredReleases { plans: drawn_over.to_vec(), unreadable: 0 };
    for other in others {
        match other.releases {
            Ok(plans) => stored.plans.extend(plans),
            Err(e) => {
                tracing::warn!(dir = %other.dir.display(), "a stored noised release cannot be read ({e}): all stored releases together have no bound");
                stored.unreadable += 1;
            }
        }
    }
    stored
}

/// The weight-noise entries in `pretrain_dir` other than `this` that stand for releases, in path order: the complete
/// ones, and incomplete ones whose rewrite was cut short after it began ([`crate::cache::Entry::carried`]: the
/// releases it replaced were made). An incomplete entry without that was never finished, so never released.
fn other_entries(pretrain_dir: &Path, this: &Path) -> Vec<OtherEntry> {
    let mut found: Vec<OtherEntry> = noise_entry_folders(pretrain_dir)
        .filter(|p| p != this)
        .filter_map(|dir| {
            let entry = crate::cache::Entry::new(dir.clone());
            let (releases, base_network) = match entry.meta::<AppliedWeightNoise>() {
                Some(Ok(a)) => (Ok(std::iter::once(a.plan).chain(a.drawn_over).collect()), a.base_network),
                Some(Err(e)) => (Err(e), None),
                None => (entry.carried::<Vec<WeightNoisePlan>>()?, None),
            };
            Some(OtherEntry { dir, releases, base_network })
        })
        .collect();
    // Directory order is the file system's: keep the report's list stable.
    found.sort_by(|a, b| a.dir.cmp(&b.dir));
    found
}
