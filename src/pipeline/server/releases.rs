//! The server's releases across its pretrainings: every pretraining entry in a cache that learned from some of the
//! same source texts as a run's, with the releases it records (DP pretrainings, noised draws), composed for whoever
//! holds outputs of all of them. A pretraining's own rows compose its own releases
//! ([`super::apply_weight_noise`], [`super::pretrain_on_source`]); what another config pretrained on the same source
//! examples (another width, seed, schedule or DP setting: another pretraining key) is counted here, so that
//! `server_privacy.total_epsilon` and the budget's cache-wide row see it too.
//!
//! The network shipped in the binary counts too, for the source texts it learned from: its plain weights are public,
//! so for those examples no bound holds (a capped release is refused, the budget's row says ε = ∞).
//!
//! Two pretrainings are taken to share source examples when a text one learned from is among the texts the other
//! learned from: each pretraining entry records the fingerprints of its source texts ([`LEARNED_FROM_FILE`],
//! [`SourceFingerprints`]: training and validation splits, folded, as the contamination check compares them), and the
//! shipped network carries its own. A copy of a source under another file name is found; an unrelated file with the
//! same name is not. An entry that records none (made before entries recorded them) is counted whatever it learned
//! from: conservative. Across pretrainings the releases compose in approximate DP (ε and δ add, OpenDP's
//! `make_composition`), which holds whatever the mechanisms are.

use std::path::{Path, PathBuf};

use crate::data::Split;
use crate::error::Result;
use crate::overlap::SourceFingerprints;
use crate::privacy::server::OtherPretrainings;

use super::{PretrainMeta, PretrainedLower};

/// The file in a pretraining cache entry that lists the source texts every network trained in it learned from
/// ([`SourceFingerprints::encode`]'s form; the network shipped in the binary carries one of the same name and form).
/// Written when a network trained there is stored, and kept across trainings of the entry (a retraining on changed
/// source data adds its texts to the earlier network's, whose releases stay recorded beside it).
pub const LEARNED_FROM_FILE: &str = crate::shipped_network::FINGERPRINTS_FILE;

/// The file in a pretraining cache entry that records the networks of the entry the server built for clients with no
/// mechanism (`cryptotl server build`): plain releases, public to those clients. Its presence is what counts (an
/// unreadable one counts too); it lists the digests of the networks built ([`crate::model::weights_sha256`]).
pub const SERVED_PLAIN_FILE: &str = "served-plain.json";

/// Whether a network of the pretraining folder `dir` was built for clients with no mechanism ([`SERVED_PLAIN_FILE`]).
pub fn served_plain(dir: &Path) -> bool {
    dir.join(SERVED_PLAIN_FILE).exists()
}

/// Record that `lower`, with no mechanism, is built for clients ([`SERVED_PLAIN_FILE`]; under the pretraining entry's
/// lock, atomically): later releases about its source examples have no bound against those clients. The shipped
/// network is public anyway, and a DP-pretrained one is bounded by its DP pretraining: neither is recorded.
pub(crate) fn record_served_plain(lower: &PretrainedLower) -> Result<()> {
    if lower.origin == crate::report::NetworkOrigin::Shipped || lower.meta.dp_pretraining.is_some() || lower.weight_noise.is_some() {
        return Ok(());
    }
    let _lock = crate::cache::Entry::new(lower.cache_dir.clone()).lock()?;
    let path = lower.cache_dir.join(SERVED_PLAIN_FILE);
    let mut networks: Vec<String> = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    let digest = crate::model::weights_sha256(&lower.net);
    if !networks.contains(&digest) {
        networks.push(digest);
        let bytes = serde_json::to_vec_pretty(&networks).map_err(|e| crate::error::Error::Internal(format!("served-plain record: {e}")))?;
        crate::atomic::write_private(&path, &bytes)?;
    }
    Ok(())
}

/// Why the un-noised form of a network from `origin` whose pretraining folder is `dir` is public, when it is: shipped
/// in the binary, or built plain for clients ([`served_plain`]).
pub fn public_network(origin: crate::report::NetworkOrigin, dir: &Path) -> Option<crate::privacy::budget::PublicNetwork> {
    use crate::privacy::budget::PublicNetwork;
    match origin {
        crate::report::NetworkOrigin::Shipped => Some(PublicNetwork::Shipped),
        _ if served_plain(dir) => Some(PublicNetwork::ServedPlain),
        _ => None,
    }
}

/// Refuse a new release drawn from a network whose un-noised form is `public` (its pretraining folder `dir`) under
/// `server_privacy.total_epsilon` (`total`): no release of it stays within any total, nor does one of another
/// network trained on the texts it learned from, so the message names the way that does.
pub(super) fn refuse_draw_of_public(total: f64, public: Option<crate::privacy::budget::PublicNetwork>, dir: &Path) -> Result<()> {
    let why = match public {
        None => return Ok(()),
        Some(crate::privacy::budget::PublicNetwork::Shipped) => {
            let sources = match crate::shipped_network::shipped() {
                Ok(Some(s)) => s.manifest.meta.source_tasks.iter().map(|t| t.source.as_str()).collect::<Vec<_>>().join(", "),
                _ => "its source data".to_string(),
            };
            format!(
                "the network to be noised is the one shipped in the cryptotl binary, whose un-noised weights anyone with the \
                 binary has: no release of it stays within a total of {total} (or any), nor does a release of another network \
                 trained on the texts it learned from ({sources}). For a bounded release, pretrain on source data it did not \
                 learn from (other source.paths), or leave the total out"
            )
        }
        Some(crate::privacy::budget::PublicNetwork::ServedPlain) => format!(
            "the network to be noised was built for clients with no mechanism (cryptotl server build; recorded in {}): its \
             un-noised outputs are theirs, so no release of it stays within a total of {total} (or any), nor does a release \
             of another network trained on the texts it learned from. For a bounded release, pretrain on source texts it did \
             not learn from, and never build that network plain, or leave the total out",
            dir.join(SERVED_PLAIN_FILE).display()
        ),
    };
    Err(crate::error::Error::config_key("server_privacy.total_epsilon", why))
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

/// The source texts every network the pretraining folder `dir` has held learned from, as recorded: its
/// [`LEARNED_FROM_FILE`], with the shipped network's fingerprints when the folder is that network's key (draws from
/// the shipped network sit there). `None` when nothing is recorded (an entry made before entries recorded them), or
/// the file cannot be read.
///
/// ```
/// use cryptotl::overlap::SourceFingerprints;
/// let cache = tempfile::tempdir().unwrap();
/// let dir = cache.path().join("pretrain-0123");
/// std::fs::create_dir(&dir).unwrap();
/// assert_eq!(cryptotl::pipeline::recorded_examples(&dir), None);
/// let texts = SourceFingerprints::of_texts(["A fine film.", "Dull."]);
/// std::fs::write(dir.join(cryptotl::pipeline::LEARNED_FROM_FILE), texts.encode()).unwrap();
/// assert_eq!(cryptotl::pipeline::recorded_examples(&dir), Some(texts));
/// ```
pub fn recorded_examples(dir: &Path) -> Option<SourceFingerprints> {
    let shipped = crate::shipped_network::find(&folder_key(dir)).and_then(|s| s.ok()).and_then(|s| s.source_fingerprints.as_ref());
    let path = dir.join(LEARNED_FROM_FILE);
    if !path.exists() {
        return shipped.cloned();
    }
    match SourceFingerprints::load(&path) {
        Ok(file) => Some(match shipped {
            Some(s) => s.union(&file),
            None => file,
        }),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), "the source texts this pretraining learned from cannot be read ({e}): it counts beside every other");
            None
        }
    }
}

/// What the pretraining folder `dir` will have learned from once a network trains there on `source`: the source's
/// texts with those its earlier networks learned from ([`recorded_examples`]), whose releases stay recorded there.
/// `None` when the folder holds a release of an earlier network that records none: what that learned from is unknown.
pub(super) fn examples_with_earlier(dir: &Path, source: &Split) -> Option<SourceFingerprints> {
    let new = SourceFingerprints::of_source(source);
    if dir.join(LEARNED_FROM_FILE).exists() {
        return recorded_examples(dir).map(|earlier| earlier.union(&new));
    }
    // Releases of an earlier network: its DP pretraining (or those it replaced), a cut-short retraining's, its draws.
    let entry = crate::cache::Entry::new(dir.to_path_buf());
    let earlier = match entry.meta::<PretrainMeta>() {
        Some(Ok(m)) => m.dp_pretraining.is_some() || !m.dp_trained_over.is_empty(),
        Some(Err(_)) => true,
        None => entry.carried::<serde_json::Value>().is_some(),
    } || super::weight_noise::noise_entry_folders(dir).next().is_some();
    (!earlier).then_some(new)
}

/// Record `learned` as what the pretraining folder `dir` learned from ([`LEARNED_FROM_FILE`], atomically, owner
/// only). Called under the entry's lock.
pub(super) fn record_examples(dir: &Path, learned: &SourceFingerprints) -> Result<()> {
    crate::atomic::write_private(&dir.join(LEARNED_FROM_FILE), &learned.encode())
}

/// The source texts the server's network `lower` learned from, as other pretrainings are matched against it
/// ([`other_pretrainings`]): what its folder records ([`recorded_examples`]). For an entry made before entries
/// recorded them, or whose list cannot be read, the source data as it is now (`source`, called only then: `None`
/// when it cannot be loaded) stands in, and is recorded, when the entry says it was trained on exactly that data and
/// holds no release of an earlier network; otherwise `None` (unknown).
pub(super) fn learned_from<'s>(cfg: &crate::config::RunConfig, lower: &PretrainedLower, source: impl FnOnce() -> Option<&'s Split>) -> Result<Option<SourceFingerprints>> {
    if let Some(recorded) = recorded_examples(&lower.cache_dir) {
        return Ok(Some(recorded));
    }
    let (Some(trained_on), crate::report::NetworkOrigin::Cache) = (&lower.meta.trained_on, lower.origin) else { return Ok(None) };
    let Some(source) = source() else { return Ok(None) };
    if trained_on.change_from(&super::TrainedOn::of(cfg, source)?).is_some() || !lower.meta.dp_trained_over.is_empty() || super::weight_noise::holds_draws_of_other_networks(&lower.cache_dir, &crate::model::weights_sha256(&lower.net)) {
        return Ok(None);
    }
    // Under the entry's lock: a retraining that started meanwhile has written the file first. A file that cannot be
    // read is replaced too: the entry holds only this network's releases, which learned from exactly these texts.
    let _lock = crate::cache::Entry::new(lower.cache_dir.clone()).lock()?;
    if let Some(recorded) = recorded_examples(&lower.cache_dir) {
        return Ok(Some(recorded));
    }
    let learned = SourceFingerprints::of_source(source);
    record_examples(&lower.cache_dir, &learned)?;
    tracing::info!(dir = %lower.cache_dir.display(), "recorded the source texts this cached network learned from (the entry recorded none, or a damaged list)");
    Ok(Some(learned))
}

/// The releases of every pretraining in `cache_dir` other than those in `exclude` (folders) that learned from some
/// of the source texts `learned_from` (what the run's pretraining learned from; `None`, unknown, counts every
/// other), and the network shipped in the binary when it did (its folder in `cache_dir` is not among `exclude`): a
/// plain release, public.
///
/// A pretraining counts with what its entry records: no bound when a network of it was built plain for clients
/// ([`SERVED_PLAIN_FILE`]); its DP pretrainings (its own and those it replaced) when it was DP-pretrained, which
/// bound everything drawn from it; otherwise its noised draws, composed in zCDP as its own rows compose them. A
/// pretraining with none of these records no release (a run's use of a plain network is not recorded: in one
/// process the client is the server's own simulation). An entry whose source texts cannot be compared (it records none, or the run's are unknown) is
/// counted when it records releases, and named among [`OtherPretrainings::uncompared`]: conservative.
pub fn other_pretrainings(cache_dir: &Path, exclude: &[PathBuf], learned_from: Option<&SourceFingerprints>) -> OtherPretrainings {
    let mut out = OtherPretrainings::default();
    if let Ok(Some(shipped)) = crate::shipped_network::shipped() {
        let dir = cache_dir.join(format!("pretrain-{}", shipped.manifest.meta.key));
        if !exclude.contains(&dir) {
            match shares(learned_from, shipped.source_fingerprints.as_ref()) {
                Some(false) => {}
                Some(true) => out.shipped = Some(shipped.manifest.name.clone()),
                None => {
                    out.shipped = Some(shipped.manifest.name.clone());
                    out.uncompared.push(dir);
                }
            }
        }
    }
    let Ok(entries) = std::fs::read_dir(cache_dir) else { return out };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.is_dir() && !exclude.contains(p) && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("pretrain-")))
        .collect();
    dirs.sort();
    for dir in dirs {
        // Its releases first (its record is small), then, only for one that made any, what it learned from. A network
        // built plain for clients is a release without a bound, whatever else was drawn from it.
        let releases = if served_plain(&dir) { None } else { Some(pretraining_releases(&dir)) };
        if matches!(releases, Some(Ok(None))) {
            continue;
        }
        let shared = shares(learned_from, recorded_examples(&dir).as_ref());
        if shared == Some(false) {
            continue;
        }
        match releases {
            None => out.served_plain.push(dir.clone()),
            Some(Ok(released)) => out.counted.extend(released.map(|(epsilon, delta)| (dir.clone(), epsilon, delta))),
            Some(Err(e)) => {
                tracing::warn!(dir = %dir.display(), "the releases of another pretraining in the cache cannot be read ({e}): the server's releases together have no bound");
                out.unreadable.push(dir.clone());
            }
        }
        if shared.is_none() {
            out.uncompared.push(dir);
        }
    }
    out
}

/// The pretraining key of the cache folder `dir` (`pretrain-<key>`).
fn folder_key(dir: &Path) -> String {
    dir.file_name().map(|n| n.to_string_lossy().trim_start_matches("pretrain-").to_string()).unwrap_or_default()
}

/// Whether the source texts `ours` and `theirs` share one; `None` when either is unknown.
fn shares(ours: Option<&SourceFingerprints>, theirs: Option<&SourceFingerprints>) -> Option<bool> {
    Some(ours?.shares_any(theirs?))
}

/// The releases one pretraining entry records, together.
fn pretraining_releases(dir: &Path) -> Result<Option<(f64, f64)>> {
    let entry = crate::cache::Entry::new(dir.to_path_buf());
    // Its record: the cache entry's, or the shipped network's for a folder holding only draws from it.
    let meta: Option<Result<PretrainMeta>> = entry.meta::<PretrainMeta>().or_else(|| crate::shipped_network::find(&folder_key(dir)).map(|s| s.map(|s| s.manifest.meta.clone())));
    let dp_plans: Vec<crate::privacy::plan::DpPlan> = match meta {
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
