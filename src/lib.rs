//! # cryptotl — private transfer learning (CryptoTL) in Rust
//!
//! A client with a small private labelled text dataset and a server with a network pretrained on a large source
//! dataset cooperate without showing each other their assets (Walch et al., arXiv 2205.11935):
//!
//! ```text
//! texts -> features -> lower net -> quantize -> encrypt -> server eval -> decrypt -> head (DP) -> report
//! ```
//!
//! Modules, one concern each, data flowing one way:
//! - [`config`]: the run's TOML configuration, one file per group of tables, validated before any work starts; a
//!   leaf every other module reads.
//! - [`data`]: dataset loaders for every supported layout and seeded stratified splits.
//! - [`features`]: text featurizers (hashed n-gram TF-IDF, MiniLM sentence embeddings, and the MiniLM embeddings
//!   of the embedded datasets shipped in the binary) and the min-max scaler.
//! - [`he`]: the encrypted stage (TFHE): quantization, the client's keys; the server side is the crate
//!   `cryptotl_server`, which cannot name the client's key.
//! - [`privacy`]: DP-SGD, its accountants (OpenDP zCDP, RDP, PLD, and `tightest`, the default of record), the
//!   server's weight noise and DP pretraining.
//! - [`model`]: the lower network, pretraining head, client head (Burn).
//! - [`linear`]: exact L2 logistic regression (the linear head without DP, the bag-of-words baseline).
//! - [`bow`]: the client's bag-of-words model: the baseline of every report, and the score `head.inputs = "transfer+bow"` adds.
//! - [`train`]: mini-batch Adam training with early stopping (the DP-SGD seam is its gradient step).
//! - [`eval`][]: metrics.
//! - [`pipeline`]: the stages of a run (the TFHE stage is [`pipeline::encrypted_transfer`]).
//! - [`report`]: `report.json` and `report.md`, with the privacy budget of every party ([`privacy::budget`]).
//! - [`curve`]: learning curves over labelled-set sizes (transfer, raw features, bag of words).
//! - [`audit`]: the one-run empirical privacy audit of the DP-SGD head (a lower bound beside the accountant's ε).
//! - [`membership`]: a membership-inference attack on the server's source data through the network's outputs.
//! - [`overlap`]: the contamination check: target texts the server's network learned from.
//! - [`sweep`]: privacy-utility sweeps over the client's and the server's ε (CSV, Markdown, SVG chart).
//! - [`atomic`]: atomic file writes (temp file, fsync, rename).
//! - [`cache`]: cache entries (a directory completed by its `meta.json` last), for the pretrained and the noised network.
//! - [`shipped_network`]: the server's sentiment network shipped in the binary (what the quickstart runs on).
//! - [`rundir`]: the run directory's manifest, so later commands never mix features, heads and configs.
//! - [`seeds`]: the seed streams every seeded draw mixes in, in one place.
//! - [`progress`]: progress bars for long work.
//! - [`cli`]: the thin command-line layer.

#![warn(missing_docs)]

pub mod atomic;
pub mod audit;
pub mod bow;
pub mod cache;
pub mod cli;
pub mod config;
pub mod curve;
pub mod data;
pub mod error;
pub mod eval;
pub mod features;
pub mod he;
pub mod linear;
pub mod membership;
pub mod model;
pub mod overlap;
pub mod privacy;
pub mod pipeline;
pub mod progress;
pub mod report;
pub mod rundir;
pub mod seeds;
pub mod shipped_network;
pub mod sweep;
pub mod train;

pub use error::{Error, Result};
