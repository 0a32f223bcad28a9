//! The all-MiniLM-L6-v2 embeddings of the datasets embedded in the binary (the three Kotzias et al. sentence
//! sets), shipped inside the binary too, so that `features.kind = "minilm"` runs on them with no model download.
//!
//! The table is `datasets/shipped/minilm_kotzias.bin`, made by this project's own MiniLM
//! (`cargo run --release -- ship-embeddings`, which needs the model) and checked against the model by a test. Any
//! other text needs the model. Format (little-endian):
//!
//! | bytes | what |
//! |---|---|
//! | 8 | magic `CTLMINI1` |
//! | 32 | sha256 of the `model.safetensors` that made the embeddings |
//! | 4, 4 | number of records, embedding width |
//! | 32 | sha256 of the records |
//! | records | per text: xxh3-128 of its UTF-8 bytes (16), then the embedding as f16 (2 per value) |
//!
//! f16 keeps a unit-norm 384-wide embedding to a cosine of 1 - 1e-7 with the f32 original, in half the bytes.
//!
//! ```
//! use cryptotl::features::shipped::ShippedEmbeddings;
//! let texts = vec!["a fine film".to_string()];
//! let rows = ndarray::Array2::from_shape_fn((1, 384), |(_, j)| if j == 0 { 1.0f32 } else { 0.0 });
//! let bytes = ShippedEmbeddings::encode(cryptotl::features::minilm::MINILM_SHA256, &texts, &rows).unwrap();
//! let table = ShippedEmbeddings::decode(&bytes).unwrap();
//! assert_eq!(table.get("a fine film").unwrap()[0], 1.0);
//! assert!(table.get("another film").is_none());
//! ```

use std::sync::OnceLock;

use half::f16;
use ndarray::Array2;
use sha2::Digest;

use super::minilm::{EmbeddingTable, MINILM_DIM, MINILM_SHA256, text_key};
use crate::error::{Error, Result};

/// Where the table lives in the repository (and what `ship-embeddings` writes).
pub const SHIPPED_EMBEDDINGS_PATH: &str = "datasets/shipped/minilm_kotzias.bin";
/// The embedded datasets whose embeddings the table holds.
pub const SHIPPED_DATASETS: [&str; 3] = ["imdb_sentences", "yelp_sentences", "amazon_sentences"];

static TABLE_BYTES: &[u8] = include_bytes!("../../datasets/shipped/minilm_kotzias.bin");

const MAGIC: &[u8; 8] = b"CTLMINI1";
const HEADER: usize = 8 + 32 + 4 + 4 + 32;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every text of the embedded datasets ([`SHIPPED_DATASETS`]), in dataset order.
pub fn embedded_texts() -> Result<Vec<String>> {
    let mut texts = Vec::new();
    for name in SHIPPED_DATASETS {
        let cfg = crate::config::DatasetConfig::new(name, crate::config::DatasetFormat::Csv, &[&format!("embedded:{name}")]);
        texts.extend(crate::data::load(&cfg, 0)?.texts);
    }
    Ok(texts)
}

/// Embed every text of the embedded datasets with the model in `model_dir` and encode the table
/// (what `cryptotl ship-embeddings` writes to [`SHIPPED_EMBEDDINGS_PATH`]).
pub fn build(model_dir: &std::path::Path, batch_size: usize) -> Result<Vec<u8>> {
    let encoder = super::minilm::Encoder::load(model_dir)?;
    let texts = embedded_texts()?;
    let rows = encoder.embed(&texts, batch_size, &format!("MiniLM {} embedded texts", texts.len()))?;
    ShippedEmbeddings::encode(&encoder.model_sha256, &texts, &rows)
}

/// The shipped embeddings, by text.
#[derive(Debug)]
pub struct ShippedEmbeddings {
    /// sha256 of the model that made them.
    pub model_sha256: String,
    /// sha256 of the records (hex), from the header: which embeddings these are, down to the last bit. A pretrained
    /// network records it when the table embedded any of its source texts ([`crate::pipeline::TrainedOn`]).
    pub records_sha256: String,
    entries: EmbeddingTable,
}

impl std::ops::Deref for ShippedEmbeddings {
    type Target = EmbeddingTable;
    fn deref(&self) -> &EmbeddingTable {
        &self.entries
    }
}

impl ShippedEmbeddings {
    /// The table compiled into this binary, decoded and checked once.
    pub fn embedded() -> Result<&'static Self> {
        static TABLE: OnceLock<std::result::Result<ShippedEmbeddings, String>> = OnceLock::new();
        TABLE
            .get_or_init(|| Self::decode(TABLE_BYTES).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| Error::Features(format!("the shipped MiniLM embeddings in this binary are unusable ({e}); rebuild them with `cargo run --release -- ship-embeddings`")))
    }

    /// Encode embeddings (`rows`, one per text, [`MINILM_DIM`] wide) made by the model with sha256 `model_sha256`.
    /// Duplicate texts are stored once.
    pub fn encode(model_sha256: &str, texts: &[String], rows: &Array2<f32>) -> Result<Vec<u8>> {
        if rows.nrows() != texts.len() || rows.ncols() != MINILM_DIM {
            return Err(Error::Features(format!("{} texts but a {}x{} embedding matrix", texts.len(), rows.nrows(), rows.ncols())));
        }
        let sha: Vec<u8> = (0..model_sha256.len() / 2).filter_map(|i| u8::from_str_radix(model_sha256.get(2 * i..2 * i + 2)?, 16).ok()).collect();
        if sha.len() != 32 {
            return Err(Error::Features(format!("not a sha256 hex digest: {model_sha256:?}")));
        }
        let mut seen = std::collections::HashSet::new();
        let mut records = Vec::new();
        for (t, row) in texts.iter().zip(rows.rows()) {
            if !seen.insert(text_key(t)) {
                continue;
            }
            crate::features::check_finite(row.insert_axis(ndarray::Axis(0)))?;
            records.extend_from_slice(&text_key(t).to_le_bytes());
            row.iter().for_each(|v| records.extend_from_slice(&f16::from_f32(*v).to_le_bytes()));
        }
        let mut out = Vec::with_capacity(HEADER + records.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&sha);
        out.extend_from_slice(&(seen.len() as u32).to_le_bytes());
        out.extend_from_slice(&(MINILM_DIM as u32).to_le_bytes());
        out.extend_from_slice(&sha2::Sha256::digest(&records));
        out.extend_from_slice(&records);
        Ok(out)
    }

    /// Decode and check a table: magic, the pinned model, the width, the record count and the records' sha256.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let bad = |m: String| Error::Features(format!("shipped embeddings: {m}"));
        if bytes.len() < HEADER || &bytes[..8] != MAGIC {
            return Err(bad("not a cryptotl embedding table (bad magic or too short)".into()));
        }
        let model_sha256 = hex(&bytes[8..40]);
        if model_sha256 != MINILM_SHA256 {
            return Err(bad(format!("made by model {model_sha256}, not the pinned all-MiniLM-L6-v2 {MINILM_SHA256}")));
        }
        let count = u32::from_le_bytes(bytes[40..44].try_into().expect("4 bytes")) as usize;
        let dim = u32::from_le_bytes(bytes[44..48].try_into().expect("4 bytes")) as usize;
        if dim != MINILM_DIM {
            return Err(bad(format!("width {dim}, expected {MINILM_DIM}")));
        }
        let record = 16 + 2 * dim;
        let records = &bytes[HEADER..];
        if records.len() != count.saturating_mul(record) {
            return Err(bad(format!("{} record bytes for {count} records of {record}", records.len())));
        }
        if sha2::Sha256::digest(records).as_slice() != &bytes[48..80] {
            return Err(bad("the records' sha256 does not match the header (corrupt)".into()));
        }
        let entries = records
            .chunks_exact(record)
            .map(|r| {
                let key = u128::from_le_bytes(r[..16].try_into().expect("16 bytes"));
                let v: Vec<f32> = r[16..].chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect();
                (key, v)
            })
            .collect();
        Ok(Self { model_sha256, records_sha256: hex(&bytes[48..80]), entries })
    }
}
