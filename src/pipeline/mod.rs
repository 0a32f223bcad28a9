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
//!
//! One file per party or step, all re-exported here: `server` (the server's network: pretraining, its cache and
//! the shipped copy, DP pretraining, weight noise, dead units, the membership figure), `transfer` (the client's
//! features through that network: in the clear, encrypted in this process or against a remote server; `predict`),
//! `heads` (the client's heads and the baselines, with or without DP-SGD) and `run` ([`run`] and [`curves`], which
//! chain them). This file holds what they share: loading the data and [`FeatureSplit`].

use std::path::Path;
use std::time::Instant;

use ndarray::Array2;
use serde::{Deserialize, Serialize};

use crate::config::RunConfig;
use crate::data::{self, Dataset, DatasetSummary, Split};
use crate::error::{Error, Result};
use crate::features::FeaturePipeline;
pub use crate::privacy::centring::DpReferences;
pub use crate::bow::{BAG_OF_WORDS_CS, BAG_OF_WORDS_DIM, BagOfWords};
use crate::train::Examples;

mod heads;
mod run;
mod server;
mod transfer;

pub use heads::*;
pub use run::*;
pub use server::*;
pub use transfer::*;

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

/// Run a closure and return its result with the elapsed seconds.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let t = Instant::now();
    let out = f();
    (out, t.elapsed().as_secs_f64())
}
