//! The server's releases across its pretrainings: every pretraining entry in a cache that learned from some of the
//! same source paths as a run's, with the releases it records (DP pretrainings, noised draws), composed for whoever
//! holds outputs of all of them. A pretraining's own rows compose its own releases
//! ([`super::apply_weight_noise`], [`super::pretrain_on_source`]); what another config pretrained on the same source
//! examples (another width, seed, schedule or DP setting: another pretraining key) is counted here, so that
//! `server_privacy.total_epsilon` and the budget's cache-wide row see it too.
//!
//! The network shipped in the binary counts too, for the source paths it learned from: its plain weights are public,
//! so for those examples no bound holds (a capped release is refused, the budget's row says ε = ∞).
//!
//! Two pretrainings are taken to share source examples when a path of one has the file name of a path of the other
//! (`tweets.csv`, `embedded:imdb_sentences`): conservative, since configs may name one file by other paths, and
//! their splits (other seeds) may hold other parts of it. Across pretrainings the releases compose in approximate
//! DP (ε and δ add, OpenDP's `make_composition`), which holds whatever the mechanisms are.

use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::privacy::server::OtherPretrainings;

use super::PretrainMeta;

/// Why a new release of the network shipped in the binary is refused under `server_privacy.total_epsilon` (`total`):
/// its plain weights are public, so no release of it stays within any total.
pub(super) fn shipped_under_total(total: f64) -> crate::error::Error {
    crate::error::Error::config_key("server_privacy.total_epsilon", format!(
        "the network to be noised is the one shipped in the cryptotl binary, whose un-noised weights anyone with the binary \
         has: no release of it stays within a total of {total} (or any). Pretrain the server's own network (any change to \
         the pretraining key, e.g. --set seed=7, with the sources fetched: python3 datasets/fetch.py), or leave the total out"
    ))
}

/// The lock every server release of the cache `cache_dir` is decided under: the checks against
/// `server_privacy.total_epsilon` read the other pretrainings' releases, so two runs releasing for other
/// pretrainings at once would each miss the other's. Taken after a pretraining entry's own lock, never before it.
///
/// ```
/// let cache = tempfile::tempdir().unwrap();
/// let held = cryptotl::pipeline::releases_lock(cache.path()).unwrap();
/// assert!(cache.path().join("server-releases").is_dir());
/// drop(held);
/// ```
pub fn releases_lock(cache_dir: &Path) -> Result<crate::atomic::DirLock> {
    crate::cache::Entry::new(cache_dir.join("server-releases")).lock()
}

/// Whether the pretraining `meta` learned from a path with one of the file names `wanted`.
fn shares(meta: &PretrainMeta, wanted: &[String]) -> bool {
    file_names(meta.source_tasks.iter().map(|t| t.source.as_str())).iter().any(|n| wanted.contains(n))
}

/// The file names of `paths`, which is what pretrainings are matched on.
fn file_names<'a>(paths: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    paths.into_iter().map(|p| Path::new(p).file_name().map_or_else(|| p.to_string(), |n| n.to_string_lossy().into_owned())).collect()
}

/// The releases of every pretraining in `cache_dir` other than those in `exclude` (folders) that learned from a
/// path with the file name of one of `source_paths`, and the network shipped in the binary when it did (its folder
/// in `cache_dir` is not among `exclude`): a plain release, public.
///
/// A pretraining counts with what its entry records: its DP pretrainings (its own and those it replaced) when it
/// was DP-pretrained, which bound everything drawn from it; otherwise its noised draws, composed in zCDP as its own
/// rows compose them. A pretraining with neither records no release (releases of a plain network are not
/// recorded). An entry whose source cannot be told (no readable record, and not the binary's shipped network) is
/// counted when it records releases: conservative.
pub fn other_pretrainings(cache_dir: &Path, exclude: &[PathBuf], source_paths: &[String]) -> OtherPretrainings {
    let wanted = file_names(source_paths.iter().map(String::as_str));
    let mut out = OtherPretrainings::default();
    if let Ok(Some(shipped)) = crate::shipped_network::shipped() {
        let meta = &shipped.manifest.meta;
        if !exclude.contains(&cache_dir.join(format!("pretrain-{}", meta.key))) && shares(meta, &wanted) {
            out.shipped = Some(shipped.manifest.name.clone());
        }
    }
    let Ok(entries) = std::fs::read_dir(cache_dir) else { return out };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.is_dir() && !exclude.contains(p) && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("pretrain-")))
        .collect();
    dirs.sort();
    for dir in dirs {
        match pretraining_releases(&dir, &wanted) {
            Ok(Some((epsilon, delta))) => out.counted.push((dir, epsilon, delta)),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(dir = %dir.display(), "the releases of another pretraining in the cache cannot be read ({e}): the server's releases together have no bound");
                out.unreadable.push(dir);
            }
        }
    }
    out
}

/// The releases one pretraining entry records, together, when it shares a source file name with `wanted`.
fn pretraining_releases(dir: &Path, wanted: &[String]) -> Result<Option<(f64, f64)>> {
    let entry = crate::cache::Entry::new(dir.to_path_buf());
    let key = dir.file_name().map(|n| n.to_string_lossy().trim_start_matches("pretrain-").to_string()).unwrap_or_default();
    // Its record: the cache entry's, or the shipped network's for a folder holding only draws from it.
    let meta: Option<Result<PretrainMeta>> = entry.meta::<PretrainMeta>().or_else(|| crate::shipped_network::find(&key).map(|s| s.map(|s| s.manifest.meta.clone())));
    let dp_plans: Vec<crate::privacy::plan::DpPlan> = match meta {
        Some(Ok(m)) if !shares(&m, wanted) => return Ok(None),
        Some(Ok(m)) => m.dp_pretraining.into_iter().chain(m.dp_trained_over).collect(),
        // Incomplete: a DP pretraining cut short while it replaced earlier ones still made those.
        None => entry.carried::<Vec<crate::privacy::plan::DpPlan>>().transpose()?.unwrap_or_default(),
        // A record that cannot be read may hide a DP pretraining, unless the entry's config says it had none.
        Some(Err(e)) => match std::fs::read_to_string(dir.join("config.toml")).ok().and_then(|t| t.parse::<toml::Table>().ok()) {
            Some(cfg) if cfg.get("server_privacy").and_then(|s| s.get("dp_pretraining")).is_none() => Vec::new(),
            _ => return Err(e),
        },
    };
    if !dp_plans.is_empty() {
        return crate::privacy::server::dp_pretrainings_epsilon(&dp_plans.iter().collect::<Vec<_>>()).map(Some);
    }
    let draws = super::weight_noise::stored_in(dir);
    if draws.unreadable > 0 {
        return Err(crate::error::Error::artifact(dir, format!("{} noised release(s) whose setting cannot be read", draws.unreadable)));
    }
    let Some(delta) = draws.plans.iter().map(|p| p.delta).max_by(f64::total_cmp) else { return Ok(None) };
    let (_, epsilon) = crate::privacy::server::weight_noise_releases_epsilon(&draws.plans.iter().collect::<Vec<_>>(), delta)?;
    Ok(Some((epsilon, delta)))
}
