//! The run directory's manifest: what produced the files a later command reads, so `evaluate` (or `train-head`)
//! never scores a head on features of another split, or loads a head into a network of another shape.
//!
//! `manifest.json` holds the [`features_key`] of the config whose features are in `features.json` (a hash of
//! everything that determines them: seed, datasets, split, featurizer, the server's network and the encrypted
//! stage, `head.inputs`) and the [`HeadShape`] of the saved head. Loading compares both with the config at hand;
//! a mismatch is a config error (exit 2) that names the run directory and the key.
//!
//! ```
//! use cryptotl::config::{QUICKSTART_TOML, RunConfig};
//! use cryptotl::rundir::{HeadShape, features_key};
//! let a = RunConfig::from_toml_str(QUICKSTART_TOML, "q", &[]).unwrap();
//! let b = RunConfig::from_toml_str(QUICKSTART_TOML, "q", &["seed=7".into()]).unwrap();
//! assert_ne!(features_key(&a), features_key(&b));
//! assert_eq!(HeadShape::of(&a, 32), HeadShape::of(&b, 32));
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{HeadKind, RunConfig};
use crate::error::{Error, Result};

/// The manifest's file name inside a run directory.
pub const MANIFEST: &str = "manifest.json";

/// A stable key of everything that determines a run's transferred features (`features.json`): a hash of
/// [`features_material`].
pub fn features_key(cfg: &RunConfig) -> String {
    features_key_of(&features_material(cfg))
}

/// Everything that determines a run's transferred features, as the JSON [`features_key`] hashes: the manifest keeps
/// it, so a config that does not match a run directory is told which keys differ.
///
/// A config key added here later must be unset (null) where it keeps the earlier behaviour: run directories made
/// before it then stay valid ([`RunManifest::load_for`] takes a material that lacks only keys unset here).
pub fn features_material(cfg: &RunConfig) -> serde_json::Value {
    // How the client reaches the server (token, CA, batch size) does not change the features; which server does.
    let mut he = serde_json::to_value(&cfg.he).unwrap_or(serde_json::Value::Null);
    if let Some(m) = he.as_object_mut() {
        for k in ["token_env", "token_file", "ca_cert", "batch"] {
            m.remove(k);
        }
        if m.get("server").and_then(|v| v.as_str()) == Some("local") {
            // Keys of runs from before the two-party server stay valid.
            m.remove("server");
        }
    }
    let mut material = serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"), "featurizer_version": crate::features::FEATURIZER_VERSION,
        "seed": cfg.seed, "features": cfg.features.key_material(), "source": cfg.source, "target": cfg.target, "split": cfg.split,
        "lower": cfg.lower, "pretrain": cfg.pretrain, "he": he, "server_privacy": cfg.server_privacy,
        "inputs": cfg.head.inputs,
    });
    if cfg.head.transfer_unit != crate::config::TransferUnit::Text {
        // Only when set, so the keys of earlier runs (one unit per text) stay valid.
        material["transfer_unit"] = serde_json::json!({ "unit": cfg.head.transfer_unit, "max_sentences": cfg.head.max_sentences });
    }
    if cfg.client_privacy().is_some() {
        // A DP head's features come through a map fitted on nothing ([`crate::pipeline::client_features`]), so
        // features made for a non-private head cannot be reused for a private one. Only when set, as above.
        material["client_map"] = serde_json::json!("data_independent");
    }
    // The server's total refuses releases but never changes one, so not the features: another total keeps a run's
    // features, and runs from before the key stay valid (those that recorded it are read by [`material_with_total`]).
    if let Some(sp) = material["server_privacy"].as_object_mut() {
        sp.remove(TOTAL_EPSILON);
    }
    material
}

/// The key of `[server_privacy]` that [`features_material`] leaves out.
const TOTAL_EPSILON: &str = "total_epsilon";

/// [`features_material`] as cryptotl recorded it while it held `server_privacy.total_epsilon` (2026-12-07 to 08): a
/// run folder of those days is read with the config's total in place, so it stays valid under the same total.
fn material_with_total(cfg: &RunConfig) -> serde_json::Value {
    let mut material = features_material(cfg);
    material["server_privacy"][TOTAL_EPSILON] = serde_json::json!(cfg.server_privacy.total_epsilon);
    material
}

/// `cfg`'s material as cryptotl recorded it when it made `made`: with the total where `made` recorded it
/// ([`material_with_total`]), so a run folder is compared with what it was made under.
fn material_as_recorded(cfg: &RunConfig, made: &serde_json::Value) -> serde_json::Value {
    match made.pointer(&format!("/server_privacy/{TOTAL_EPSILON}")) {
        Some(_) => material_with_total(cfg),
        None => features_material(cfg),
    }
}

/// The hash of a features material: [`features_key`] is that of [`features_material`], and a manifest's key is that
/// of the material it records.
///
/// ```
/// use cryptotl::config::{QUICKSTART_TOML, RunConfig};
/// use cryptotl::rundir::{features_key, features_key_of, features_material};
/// let cfg = RunConfig::from_toml_str(QUICKSTART_TOML, "q", &[]).unwrap();
/// assert_eq!(features_key_of(&features_material(&cfg)), features_key(&cfg));
/// ```
pub fn features_key_of(material: &serde_json::Value) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(material.to_string().as_bytes()))
}

/// How [`material_differences`] shows the side that lacks a key the other records as unset: it was made by a
/// cryptotl from before the key.
pub const NOT_RECORDED: &str = "not recorded (an earlier cryptotl, before this key)";

/// The config keys whose values differ between two [`features_material`]s, each with its value in `made` and in
/// `given` (`not set` where one has none; `not recorded …` where one side lacks a key the other records as unset,
/// i.e. was made by a cryptotl from before that key), in key order.
///
/// ```
/// use cryptotl::config::{QUICKSTART_TOML, RunConfig};
/// use cryptotl::rundir::{features_material, material_differences};
/// let a = RunConfig::from_toml_str(QUICKSTART_TOML, "q", &[]).unwrap();
/// let b = RunConfig::from_toml_str(QUICKSTART_TOML, "q", &["seed=7".into(), "he.server=\"http://127.0.0.1:1\"".into()]).unwrap();
/// let d = material_differences(&features_material(&a), &features_material(&b));
/// assert_eq!(d, [
///     ("he.server".to_string(), "\"local\"".to_string(), "\"http://127.0.0.1:1\"".to_string()),
///     ("seed".to_string(), "42".to_string(), "7".to_string()),
/// ]);
/// // Features made before a key existed: it is not recorded there, and unset here.
/// let mut earlier = features_material(&a);
/// let unset = earlier["server_privacy"].as_object_mut().unwrap().remove("dp_pretraining");
/// assert_eq!(unset, Some(serde_json::Value::Null));
/// assert_eq!(material_differences(&earlier, &features_material(&a)), [(
///     "server_privacy.dp_pretraining".to_string(),
///     "not recorded (an earlier cryptotl, before this key)".to_string(),
///     "not set".to_string(),
/// )]);
/// ```
pub fn material_differences(made: &serde_json::Value, given: &serde_json::Value) -> Vec<(String, String, String)> {
    fn walk(path: &str, a: Option<&serde_json::Value>, b: Option<&serde_json::Value>, out: &mut Vec<(String, String, String)>) {
        use serde_json::Value::Object;
        match (a, b) {
            (Some(Object(x)), Some(Object(y))) => {
                let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    let sub = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                    walk(&sub, x.get(k), y.get(k), out);
                }
            }
            (a, b) if a != b => {
                // A key one side records as unset and the other lacks altogether was added to cryptotl in between:
                // the side without it was made by an earlier cryptotl.
                let added_since = matches!((a, b), (None, Some(serde_json::Value::Null)) | (Some(serde_json::Value::Null), None));
                let shown = |v: Option<&serde_json::Value>| match (path, v) {
                    // The material leaves these out where they have their default.
                    ("he.server", None) => "\"local\"".to_string(),
                    ("client_map", v) => if v.is_some() { "on" } else { "off" }.to_string(),
                    (_, None) if added_since => NOT_RECORDED.to_string(),
                    (_, None) | (_, Some(serde_json::Value::Null)) => "not set".to_string(),
                    (_, Some(v)) => v.to_string(),
                };
                // The material's own names for the few keys that are not the config's.
                let key = match path {
                    "inputs" => "head.inputs".to_string(),
                    "client_map" => "privacy (a DP-SGD head needs features made with [privacy] on, through a map fitted on no data)".to_string(),
                    "version" => "the cryptotl version".to_string(),
                    "featurizer_version" => "the featurizer's version".to_string(),
                    "transfer_unit" | "transfer_unit.unit" => "head.transfer_unit".to_string(),
                    "transfer_unit.max_sentences" => "head.max_sentences".to_string(),
                    p => p.to_string(),
                };
                out.push((key, shown(a), shown(b)));
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("", Some(made), Some(given), &mut out);
    out
}

/// What fixes the saved head's parameter shapes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadShape {
    /// `head.kind`.
    pub kind: HeadKind,
    /// Width of the head's input.
    pub input_dim: usize,
    /// Hidden width (mlp; 0 for linear).
    pub hidden: usize,
    /// Max-pool window (mlp; 0 for linear).
    pub pool: usize,
}

impl HeadShape {
    /// The shape `cfg` gives a head on `input_dim` inputs.
    pub fn of(cfg: &RunConfig, input_dim: usize) -> Self {
        match cfg.head.kind {
            HeadKind::Linear => Self { kind: HeadKind::Linear, input_dim, hidden: 0, pool: 0 },
            HeadKind::Mlp => Self { kind: HeadKind::Mlp, input_dim, hidden: cfg.head_hidden(input_dim), pool: cfg.head.pool },
        }
    }
}

/// `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunManifest {
    /// cryptotl version that wrote it.
    pub version: String,
    /// [`features_key`] of the config whose features are in `features.json`.
    pub features_key: String,
    /// The saved head, once one is.
    pub head: Option<HeadShape>,
    /// The public points a DP-SGD head on these features centres its inputs on ([`crate::pipeline::DpReferences`]),
    /// so `train-head` trains the head `run` would.
    #[serde(default)]
    pub dp_references: Option<crate::pipeline::DpReferences>,
    /// [`features_material`] of that config, so a config that does not match is told which keys differ (manifests
    /// from before it have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features_config: Option<serde_json::Value>,
    /// The identity of the server network the features went through ([`crate::pipeline::network_id`]: the model id
    /// of its program; a remote server's own), so `predict` never puts the head behind another network: a shipped
    /// network rebuilt by a newer binary, or a server that rebuilt its model, keeps the config's key but not its
    /// outputs. Manifests from before it have none: `predict` warns on them, as it cannot check them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lower_network: Option<String>,
}

fn path(dir: &Path) -> PathBuf {
    dir.join(MANIFEST)
}

impl RunManifest {
    /// A manifest for features made by `cfg` (no head yet).
    pub fn new(cfg: &RunConfig) -> Self {
        Self {
            version: env!("CARGO_PKG_VERSION").into(),
            features_key: features_key(cfg),
            head: None,
            dp_references: None,
            features_config: Some(features_material(cfg)),
            lower_network: None,
        }
    }

    /// Write it into `dir`, atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(|e| Error::Internal(format!("manifest: {e}")))?;
        crate::atomic::write(&path(dir), &json)
    }

    /// Read the manifest of `cfg`'s run directory and check that its features are the ones `cfg` makes.
    pub fn load_for(cfg: &RunConfig) -> Result<Self> {
        let dir = cfg.output_dir();
        let p = path(&dir);
        if !p.exists() {
            return Err(Error::artifact(&p, "not found: run `cryptotl features <config>` then `train-head` (or `cryptotl run <config>`) with this config first"));
        }
        let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
        let m: Self = serde_json::from_slice(&bytes).map_err(|e| Error::artifact(&p, format!("corrupt manifest: {e}")))?;
        if m.features_key != features_key(cfg) && m.features_key != features_key_of(&material_with_total(cfg)) && !m.made_before_unset_keys(cfg) {
            return Err(m.mismatch(cfg, &dir));
        }
        Ok(m)
    }

    /// Whether this run's features were made by an earlier cryptotl whose material lacks only keys that `cfg` leaves
    /// unset, so they are the features `cfg` makes: a key is added to [`features_material`] unset where it keeps the
    /// earlier behaviour (`server_privacy.dp_pretraining` absent is no DP pretraining, as before the key). The
    /// recorded material must still hash to the recorded key, so an edited manifest is not taken at its word.
    fn made_before_unset_keys(&self, cfg: &RunConfig) -> bool {
        let Some(made) = self.features_config.as_ref().filter(|made| features_key_of(made) == self.features_key) else {
            return false;
        };
        let differences = material_differences(made, &material_as_recorded(cfg, made));
        let only_unrecorded = !differences.is_empty() && differences.iter().all(|(_, in_run, _)| in_run == NOT_RECORDED);
        if only_unrecorded {
            let keys: Vec<&str> = differences.iter().map(|(k, _, _)| k.as_str()).collect();
            tracing::info!(keys = %keys.join(", "), "run directory made by an earlier cryptotl, before these keys; unset here, so the same features");
        }
        only_unrecorded
    }

    /// The error for features made by another config than `cfg`: the keys that differ, with both values, when the
    /// manifest keeps what made its features; otherwise the sections the key covers.
    fn mismatch(&self, cfg: &RunConfig, dir: &Path) -> Error {
        const SHOWN: usize = 4;
        let redo = "rerun `cryptotl features` (or `run`) with this config, or point output_dir elsewhere";
        let differences = self.features_config.as_ref().map(|made| material_differences(made, &material_as_recorded(cfg, made))).unwrap_or_default();
        if differences.is_empty() {
            return Error::Config {
                file: dir.display().to_string(),
                key: "seed / features / source / target / split / lower / he / privacy".into(),
                message: format!(
                    "the features in this run directory were made by another config (key {}, this config gives {}; a \
                     DP-SGD head needs features made with [privacy] on, through a map fitted on no data): {redo}",
                    self.features_key,
                    features_key(cfg)
                ),
            };
        }
        if differences.iter().all(|(_, made, _)| made == NOT_RECORDED) {
            let keys: Vec<&str> = differences.iter().map(|(k, _, _)| k.as_str()).collect();
            return Error::Config {
                file: dir.display().to_string(),
                key: keys.join(", "),
                // Such a run is taken ([`Self::made_before_unset_keys`]) unless its key is not that of its record.
                message: format!(
                    "the features in this run directory were made by an earlier cryptotl, from before the key(s) named \
                     (unset here: the same config as far as that cryptotl recorded it), but the manifest's features key \
                     is not the hash of what it records as having made them (an edited or damaged manifest); {redo}"
                ),
            };
        }
        // Beside a real difference, the keys an earlier cryptotl did not record (unset here) are not the reason.
        let differences: Vec<_> = differences.into_iter().filter(|(_, made, _)| made != NOT_RECORDED).collect();
        let clip = |v: &str| if v.chars().count() > 60 { format!("{}…", v.chars().take(59).collect::<String>()) } else { v.to_string() };
        let listed: Vec<String> = differences.iter().take(SHOWN).map(|(k, made, given)| format!("{k}: {} in the run, {} here", clip(made), clip(given))).collect();
        let more = if differences.len() > SHOWN { format!(" (and {} more)", differences.len() - SHOWN) } else { String::new() };
        Error::Config {
            file: dir.display().to_string(),
            key: differences.iter().take(SHOWN).map(|(k, _, _)| k.split(' ').next().unwrap_or(k).to_string()).collect::<Vec<_>>().join(", "),
            message: format!("the features in this run directory were made by another config: {}{more}; {redo}", listed.join("; ")),
        }
    }

    /// Refuse a server network other than the one this run's features went through (`network` is its
    /// [`crate::pipeline::network_id`]); a manifest that records none passes, with a warning.
    pub fn check_network(&self, cfg: &RunConfig, network: &str) -> Result<()> {
        match &self.lower_network {
            Some(ran) if ran != network => Err(Error::artifact(
                path(&cfg.output_dir()),
                format!(
                    "this run's head was trained behind the server network {}…, and the server network is now {}… \
                     (a newer binary ships a rebuilt one, or the server rebuilt its model): its outputs differ, so the \
                     head would score new texts wrongly; run `cryptotl run` with this config again",
                    ran.get(..12).unwrap_or(ran),
                    network.get(..12).unwrap_or(network)
                ),
            )),
            Some(_) => Ok(()),
            None => {
                tracing::warn!(
                    run = %cfg.output_dir().display(),
                    "this run directory does not record which server network its head was trained behind (made before \
                     cryptotl kept that record): if an older binary made it, its network may have been rebuilt since; \
                     run it again to be sure"
                );
                Ok(())
            }
        }
    }

    /// Check that the saved head has the shape `cfg` gives a head on `input_dim` inputs.
    pub fn check_head(&self, cfg: &RunConfig, input_dim: usize) -> Result<()> {
        let dir = cfg.output_dir();
        let Some(saved) = &self.head else {
            return Err(Error::artifact(dir.join("head.bin"), "no head saved in this run directory: run `cryptotl train-head` first"));
        };
        let want = HeadShape::of(cfg, input_dim);
        let mismatch = |key: &str, saved: String, want: String| Error::Config {
            file: dir.display().to_string(),
            key: key.into(),
            message: format!("the saved head was trained with {key} = {saved}; this config says {want}: retrain it (`cryptotl train-head`) or use the config that made it"),
        };
        if saved.kind != want.kind {
            return Err(mismatch("head.kind", format!("{:?}", saved.kind).to_lowercase(), format!("{:?}", want.kind).to_lowercase()));
        }
        if saved.input_dim != want.input_dim {
            return Err(mismatch("head.inputs", format!("{} inputs", saved.input_dim), format!("{} inputs", want.input_dim)));
        }
        if saved.hidden != want.hidden {
            return Err(mismatch("head.hidden", saved.hidden.to_string(), want.hidden.to_string()));
        }
        if saved.pool != want.pool {
            return Err(mismatch("head.pool", saved.pool.to_string(), want.pool.to_string()));
        }
        Ok(())
    }
}
