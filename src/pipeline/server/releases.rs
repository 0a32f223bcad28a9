//! The server's releases across its pretrainings: every pretraining entry in a cache that learned from some of the
//! same source paths as a run's, with the releases it records (DP pretrainings, noised draws), composed for whoever
//! holds outputs of all of them. A pretraining's own rows compose its own releases
//! ([`super::apply_weight_noise`], [`super::pretrain_on_source`]); what another config pretrained on the same source
//! examples (another width, seed, schedule or DP setting: another pretraining key) is counted here, so that
//! `server_privacy.total_epsilon` and the budget's cache-wide row see it too.
//!
//! Two pretrainings are taken to share source examples when a path of one has the file name of a path of the other
//! (`tweets.csv`, `embedded:imdb_sentences`): conservative, since configs may name one file by other paths, and
//! their splits (other seeds) may hold other parts of it. Across pretrainings the releases compose in approximate
//! DP (ε and δ add, OpenDP's `make_composition`), which holds whatever the mechanisms are.

use std::path::{Path, PathBuf};

use crate::error::Result;

use super::PretrainMeta;

/// The releases of a server's other pretrainings on some of the same source paths, as its cache records them.
///
/// ```
/// use cryptotl::pipeline::OtherPretrainings;
/// let dir = |k: &str| std::path::PathBuf::from(format!("runs/cache/pretrain-{k}"));
/// let mut others = OtherPretrainings { counted: vec![(dir("a"), 1.0, 1e-6), (dir("b"), 2.0, 3e-6)], unreadable: vec![] };
/// // Across pretrainings, ε and δ add.
/// let (eps, delta) = others.together().unwrap();
/// assert!((eps - 3.0).abs() < 1e-12 && (delta - 4e-6).abs() < 1e-18);
/// assert!(others.describe().starts_with("2 other pretraining(s) of these source paths in the cache (ε = 3.0"));
/// // One whose releases cannot be read leaves no bound.
/// others.unreadable.push(dir("c"));
/// assert_eq!((others.together(), others.epsilon(), others.count()), (None, f64::INFINITY, 3));
/// // A cache with no other pretraining: nothing to add.
/// let empty = cryptotl::pipeline::other_pretrainings(std::path::Path::new("no/such/cache"), &[], &["tweets.csv".into()]);
/// assert!(empty.is_empty());
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OtherPretrainings {
    /// The other pretrainings' folders whose releases are counted, each with its releases' (ε, δ) together, in path
    /// order.
    pub counted: Vec<(PathBuf, f64, f64)>,
    /// Other pretrainings that record releases which cannot be read (their ε unknown): with any, no bound holds.
    pub unreadable: Vec<PathBuf>,
}

impl OtherPretrainings {
    /// No other pretraining records a release.
    pub fn is_empty(&self) -> bool {
        self.counted.is_empty() && self.unreadable.is_empty()
    }

    /// How many other pretrainings record releases.
    pub fn count(&self) -> usize {
        self.counted.len() + self.unreadable.len()
    }

    /// Their releases together, (ε, δ) by basic composition; `None` when one of them cannot be read.
    pub fn together(&self) -> Option<(f64, f64)> {
        self.unreadable.is_empty().then(|| self.counted.iter().fold((0.0, 0.0), |(e, d), (_, de, dd)| (e + de, d + dd)))
    }

    /// [`Self::together`]'s ε, ∞ when a release cannot be read.
    pub fn epsilon(&self) -> f64 {
        self.together().map_or(f64::INFINITY, |(e, _)| e)
    }

    /// What they are, for an error or a report: "2 other pretraining(s) of these source paths in the cache (ε = 3.00
    /// together)".
    pub fn describe(&self) -> String {
        let n = self.count();
        match self.together() {
            Some((e, _)) => format!("{n} other pretraining(s) of these source paths in the cache (ε = {} together)", crate::privacy::shown::epsilon(e)),
            None => format!(
                "{n} other pretraining(s) of these source paths in the cache, {} of whose releases cannot be read ({})",
                self.unreadable.len(),
                self.unreadable.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            ),
        }
    }
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

/// The file names of `paths`, which is what pretrainings are matched on.
fn file_names<'a>(paths: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    paths.into_iter().map(|p| Path::new(p).file_name().map_or_else(|| p.to_string(), |n| n.to_string_lossy().into_owned())).collect()
}

/// The releases of every pretraining in `cache_dir` other than those in `exclude` (folders) that learned from a
/// path with the file name of one of `source_paths`.
///
/// A pretraining counts with what its entry records: its DP pretrainings (its own and those it replaced) when it
/// was DP-pretrained, which bound everything drawn from it; otherwise its noised draws, composed in zCDP as its own
/// rows compose them. A pretraining with neither records no release (releases of a plain network are not
/// recorded). An entry whose source cannot be told (no readable record, and not the binary's shipped network) is
/// counted when it records releases: conservative.
pub fn other_pretrainings(cache_dir: &Path, exclude: &[PathBuf], source_paths: &[String]) -> OtherPretrainings {
    let wanted = file_names(source_paths.iter().map(String::as_str));
    let mut out = OtherPretrainings::default();
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
    let shares = |meta: &PretrainMeta| file_names(meta.source_tasks.iter().map(|t| t.source.as_str())).iter().any(|n| wanted.contains(n));
    let dp_plans: Vec<crate::privacy::plan::DpPlan> = match meta {
        Some(Ok(m)) if !shares(&m) => return Ok(None),
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
