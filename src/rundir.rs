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

/// A stable key of everything that determines a run's transferred features (`features.json`).
pub fn features_key(cfg: &RunConfig) -> String {
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
        "seed": cfg.seed, "features": cfg.features, "source": cfg.source, "target": cfg.target, "split": cfg.split,
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
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(material.to_string().as_bytes()))
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
}

fn path(dir: &Path) -> PathBuf {
    dir.join(MANIFEST)
}

impl RunManifest {
    /// A manifest for features made by `cfg` (no head yet).
    pub fn new(cfg: &RunConfig) -> Self {
        Self { version: env!("CARGO_PKG_VERSION").into(), features_key: features_key(cfg), head: None, dp_references: None }
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
        if m.features_key != features_key(cfg) {
            return Err(Error::Config {
                file: dir.display().to_string(),
                key: "seed / features / source / target / split / lower / he / privacy".into(),
                message: format!(
                    "the features in this run directory were made by another config (key {}, this config gives {}; a \
                     DP-SGD head needs features made with [privacy] on, through a map fitted on no data): \
                     rerun `cryptotl features` (or `run`) with it, or point output_dir elsewhere",
                    m.features_key, features_key(cfg)),
            });
        }
        Ok(m)
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
