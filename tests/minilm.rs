//! all-MiniLM-L6-v2 in Burn against sentence-transformers 6.2.0 (`tests/fixtures/minilm_reference.json`): identical
//! token ids and cosine similarity >= 0.9999 on 12 awkward inputs. Needs the model (`python3 datasets/fetch_model.py`,
//! which `.ci/run` runs); without it these tests say so and skip.

use std::path::{Path, PathBuf};

use cryptotl::features::Featurizer;
use cryptotl::features::minilm::{Encoder, MiniLm};

const FX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn model_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("CRYPTOTL_MINILM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(cryptotl::features::minilm::DEFAULT_MODEL_DIR));
    if dir.join("model.safetensors").exists() {
        Some(dir)
    } else if std::env::var_os("CI").is_some() {
        // CI fetches the model first (.ci/run): a missing model there is a broken setup, not a reason to skip.
        panic!("CI is set and the MiniLM model is not in {}: run `python3 datasets/fetch_model.py`", dir.display());
    } else {
        eprintln!("SKIPPED: the MiniLM model is not in {} (run `python3 datasets/fetch_model.py`)", dir.display());
        None
    }
}

struct Reference {
    inputs: Vec<String>,
    token_ids: Vec<Vec<u32>>,
    embeddings: Vec<Vec<f32>>,
    extra_inputs: Vec<String>,
    extra_embeddings: Vec<Vec<f32>>,
}

fn reference() -> Reference {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(format!("{FX}/minilm_reference.json")).unwrap()).unwrap();
    fn take<T: serde::de::DeserializeOwned>(v: &serde_json::Value, k: &str) -> T {
        serde_json::from_value(v[k].clone()).unwrap()
    }
    Reference {
        inputs: take(&v, "inputs"),
        token_ids: take(&v, "token_ids"),
        embeddings: take(&v, "embeddings"),
        extra_inputs: take(&v, "cosine_sanity_extra_sentences"),
        extra_embeddings: take(&v, "embeddings_extra_sentences"),
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn token_ids_match_the_reference_exactly() {
    let Some(dir) = model_dir() else { return };
    let r = reference();
    let enc = Encoder::load(&dir).unwrap();
    let ids = enc.tokenize(&r.inputs).unwrap();
    for (i, (got, want)) in ids.iter().zip(&r.token_ids).enumerate() {
        assert_eq!(got, want, "input {i}: {:?}", r.inputs[i]);
    }
    assert_eq!(ids.iter().map(Vec::len).max(), Some(256), "the long input is cut at 256 tokens");
}

#[test]
fn embeddings_match_the_reference_in_any_batching() {
    let Some(dir) = model_dir() else { return };
    let r = reference();
    let enc = Encoder::load(&dir).unwrap();
    let all: Vec<String> = r.inputs.iter().chain(&r.extra_inputs).cloned().collect();
    let want: Vec<&Vec<f32>> = r.embeddings.iter().chain(&r.extra_embeddings).collect();
    // sentence-transformers cuts at 256 tokens: the encoder on the cut ids must match it; `embed` agrees on every
    // text that fits one window (the long one is embedded whole instead: see the window test).
    let ids = enc.tokenize(&all).unwrap();
    let whole = enc.embed(&all, 32, "whole").unwrap();
    for batch in [1, 5, 32] {
        let got = enc.embed_ids(&ids, batch, "test").unwrap();
        assert_eq!(got.dim(), (all.len(), 384));
        for (i, w) in enc.tokenize_whole(&all).unwrap().iter().enumerate() {
            if w.len() <= cryptotl::features::minilm::MAX_TOKENS {
                assert!(cosine(&got.row(i).to_vec(), &whole.row(i).to_vec()) > 0.99999, "input {i}");
            }
        }
        for (i, w) in want.iter().enumerate() {
            let row = got.row(i).to_vec();
            let c = cosine(&row, w);
            assert!(c >= 0.9999, "batch {batch}, input {i} {:?}: cosine {c}", all[i]);
            let norm: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4, "L2-normalised: {norm}");
        }
    }
}

/// An embedding is a function of its text alone: the same bits however the texts around it are batched. (With
/// padded batches a text's sums ran over its batch's longest length, and 8 of these 45 texts moved by about 1e-7
/// between batchings.)
#[test]
fn an_embedding_does_not_depend_on_the_texts_batched_with_it() {
    let Some(dir) = model_dir() else { return };
    let enc = Encoder::load(&dir).unwrap();
    let words = ["the", "film", "was", "good", "bad", "plot", "actor", "boring", "fun", "long"];
    // 45 texts of 3 to 47 words: many lengths, a few shared.
    let texts: Vec<String> = (0..45).map(|i| (0..3 + (i * 7) % 45).map(|j| words[(i + j * j) % words.len()]).collect::<Vec<_>>().join(" ")).collect();
    let lengths: std::collections::BTreeSet<usize> = enc.tokenize(&texts).unwrap().iter().map(Vec::len).collect();
    assert!(lengths.len() > 20, "mixed lengths: {lengths:?}");
    let together = enc.embed(&texts, 32, "together").unwrap();
    for batch in [1, 5, 64] {
        assert_eq!(enc.embed(&texts, batch, "again").unwrap(), together, "batch size {batch}");
    }
    let reversed: Vec<String> = texts.iter().rev().cloned().collect();
    let got = enc.embed(&reversed, 32, "reversed").unwrap();
    for (i, text) in texts.iter().enumerate() {
        assert_eq!(got.row(texts.len() - 1 - i), together.row(i), "text {i} reversed");
        let alone = enc.embed(std::slice::from_ref(text), 32, "alone").unwrap();
        assert_eq!(alone.row(0), together.row(i), "text {i} alone: {text:?}");
    }
}

#[test]
fn the_featurizer_caches_embeddings_on_disk_and_reruns_read_them() {
    let Some(dir) = model_dir() else { return };
    let r = reference();
    let cache = tempfile::tempdir().unwrap();
    let f = MiniLm::new(&dir, 8, Some(cache.path().to_path_buf())).unwrap();
    let texts: Vec<String> = r.inputs[..4].iter().chain(r.inputs[..2].iter()).cloned().collect();
    let first = f.transform(&texts).unwrap();
    assert_eq!(first.row(0), first.row(4), "duplicates embed once and agree");
    let file = std::fs::read_dir(cache.path()).unwrap().next().unwrap().unwrap().path();
    assert_eq!(std::fs::metadata(&file).unwrap().len() as usize, 4 * RECORD, "4 distinct texts cached");
    // A doctored entry with a valid checksum proves the second call reads the cache instead of recomputing.
    let which = 0;
    let at = doctor_record(&file, &texts[which]);
    let mut bytes = std::fs::read(&file).unwrap();
    let second = f.transform(&texts).unwrap();
    assert_eq!((second[[which, 0]], second[[which, 1]]), (first[[which, 1]], first[[which, 0]]));
    // A flipped byte without a matching checksum is a miss: that text is embedded again, correctly.
    bytes[at + 30] ^= 0x40;
    std::fs::write(&file, &bytes).unwrap();
    let again = f.transform(&texts).unwrap();
    assert!(cosine(&again.row(which).to_vec(), &first.row(which).to_vec()) > 0.9999);
    assert_ne!((again[[which, 0]], again[[which, 1]]), (second[[which, 0]], second[[which, 1]]));
    // A torn record (interrupted write) is ignored, not fatal.
    std::fs::write(&file, &bytes[..bytes.len() - 5]).unwrap();
    let third = f.transform(&texts).unwrap();
    assert_eq!(third.dim(), (6, 384));
}

#[test]
fn a_missing_or_wrong_model_is_a_clear_error() {
    let empty = tempfile::tempdir().unwrap();
    let err = Encoder::load(empty.path()).err().unwrap().to_string();
    assert!(err.contains("fetch_model.py") && !err.contains("looked in"), "{err}");
    // A relative folder (the default `datasets/models/...`) says where it was looked for.
    let err = Encoder::load(std::path::Path::new("no/such/model")).err().unwrap().to_string();
    let looked = std::env::current_dir().unwrap().join("no/such/model");
    assert!(err.contains(&format!("looked in {}", looked.display())), "{err}");
    let Some(dir) = model_dir() else { return };
    // The right config and tokenizer with other weights: refused by hash before anything is parsed.
    let fake = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(dir.join(f), fake.path().join(f)).unwrap();
    }
    std::fs::write(fake.path().join("model.safetensors"), b"not weights").unwrap();
    let err = Encoder::load(fake.path()).err().unwrap().to_string();
    assert!(err.contains("sha256") && err.contains("fetch_model.py"), "{err}");
    // The right weights with a config of other head counts (shapes still fit: 384 = 6 x 64) or a tokenizer edited
    // by hand: refused by hash, as they would embed differently from the shipped embeddings and the cache.
    std::fs::copy(dir.join("model.safetensors"), fake.path().join("model.safetensors")).unwrap();
    assert!(Encoder::load(fake.path()).is_ok(), "the pinned files load");
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    std::fs::write(fake.path().join("config.json"), config.replace("\"num_attention_heads\": 12", "\"num_attention_heads\": 6")).unwrap();
    let err = Encoder::load(fake.path()).err().unwrap().to_string();
    assert!(err.contains("config.json") && err.contains("pinned"), "{err}");
    std::fs::copy(dir.join("config.json"), fake.path().join("config.json")).unwrap();
    let tokenizer = std::fs::read_to_string(dir.join("tokenizer.json")).unwrap();
    std::fs::write(fake.path().join("tokenizer.json"), format!("{tokenizer} ")).unwrap();
    let err = Encoder::load(fake.path()).err().unwrap().to_string();
    assert!(err.contains("tokenizer.json") && err.contains("pinned"), "{err}");
}

#[test]
fn the_fast_erf_is_within_5e7_of_libm() {
    let mut worst = 0f64;
    for i in -100_000..=100_000 {
        let x = i as f32 * 6e-5;
        let err = (cryptotl::features::bert::erf_fast(x) as f64 - libm::erf(x as f64)).abs();
        worst = worst.max(err);
    }
    assert!(worst < 5e-7, "max |erf_fast - erf| = {worst:e}");
    assert!((cryptotl::features::bert::erf_fast(100.0) - 1.0).abs() < 5e-7 && (cryptotl::features::bert::erf_fast(-100.0) + 1.0).abs() < 5e-7);
}

#[test]
fn embed_cli_writes_one_json_array_per_input_line() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let run = |args: &[&str], input: &str| -> (i32, String, String) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cryptotl"))
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
    };
    let rows = |out: &str| -> Vec<Vec<f32>> { out.lines().map(|l| serde_json::from_str(l).unwrap()).collect() };
    // hashed, the pipeline's vector: the quickstart client's featurizer and scaler, fitted as a run fits them.
    let out_dir = tempfile::tempdir().unwrap();
    let od = out_dir.path().to_str().unwrap();
    let (code, out, err) = run(&["-q", "embed", "--featurizer", "hashed", "--output-dir", od], "a fine film\nawful\n\n");
    assert_eq!(code, 0, "{err}");
    let hashed = rows(&out);
    assert_eq!(hashed.len(), 3);
    assert!(hashed.iter().all(|r| r.len() == 768 && r.iter().all(|v| (0.0..=1.0).contains(v))));
    let Some(dir) = model_dir() else { return };
    let r = reference();
    let input: String = r.inputs[..3].iter().map(|t| t.replace(['\n', '\r'], " ") + "\n").collect();
    let cache = tempfile::tempdir().unwrap();
    let set_model = format!("features.model_dir={:?}", dir.to_str().unwrap());
    let set_cache = format!("features.embedding_cache_dir={:?}", cache.path().to_str().unwrap());
    let (code, out, err) = run(&["-q", "embed", "--featurizer", "minilm", "--raw", "--set", &set_model, "--set", &set_cache], &input);
    assert_eq!(code, 0, "{err}");
    let got = rows(&out);
    assert_eq!(got.len(), 3);
    for (i, row) in got.iter().enumerate() {
        assert_eq!(row.len(), 384);
        assert!(cosine(row, &r.embeddings[i]) >= 0.9999, "input {i}");
    }
}

#[test]
fn shipped_embeddings_cover_every_embedded_text_and_need_no_model() {
    use cryptotl::features::shipped::{ShippedEmbeddings, embedded_texts};
    let table = ShippedEmbeddings::embedded().unwrap();
    let texts = embedded_texts().unwrap();
    let unique: std::collections::HashSet<&String> = texts.iter().collect();
    assert_eq!(table.len(), unique.len(), "one record per distinct embedded text");
    assert!(table.len() > 2900);
    for t in &texts {
        let v = table.get(t).unwrap_or_else(|| panic!("not shipped: {t:?}"));
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 2e-3, "{t:?}: norm {norm}");
    }
    // Without a model: the embedded texts embed, any other text is refused with the fetch command.
    let nowhere = std::env::temp_dir().join("cryptotl-no-model-here");
    let f = MiniLm::new(&nowhere, 32, None).unwrap();
    let x = f.transform(&texts[..50]).unwrap();
    assert_eq!(x.row(7).to_vec(), table.get(&texts[7]).unwrap().to_vec());
    let err = f.transform(&[texts[0].clone(), "a text nobody shipped".to_string()]).unwrap_err().to_string();
    assert!(err.contains("1 of 2 texts") && err.contains("fetch_model.py"), "{err}");
}

#[test]
fn shipped_embeddings_match_the_model() {
    let Some(dir) = model_dir() else { return };
    use cryptotl::features::shipped::{ShippedEmbeddings, embedded_texts};
    let table = ShippedEmbeddings::embedded().unwrap();
    let texts: Vec<String> = embedded_texts().unwrap().into_iter().step_by(7).collect();
    let enc = Encoder::load(&dir).unwrap();
    assert_eq!(enc.model_sha256, table.model_sha256);
    let rows = enc.embed(&texts, 32, "check").unwrap();
    let worst = texts.iter().zip(rows.rows()).map(|(t, r)| cosine(table.get(t).unwrap(), r.as_slice().unwrap())).fold(1.0f64, f64::min);
    assert!(worst >= 0.9999, "worst cosine {worst}");
    // A corrupted table is refused, not read.
    let mut bytes = ShippedEmbeddings::encode(&table.model_sha256, &texts[..3], &rows.slice(ndarray::s![..3, ..]).to_owned()).unwrap();
    assert_eq!(ShippedEmbeddings::decode(&bytes).unwrap().len(), 3);
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    assert!(ShippedEmbeddings::decode(&bytes).unwrap_err().to_string().contains("corrupt"));
    assert!(ShippedEmbeddings::decode(&bytes[..bytes.len() - 5]).is_err());
}

#[test]
fn a_600_token_text_is_embedded_whole_as_pooled_windows() {
    let Some(dir) = model_dir() else { return };
    use cryptotl::features::minilm::{MAX_TOKENS, windows};
    let enc = Encoder::load(&dir).unwrap();
    // About 600 tokens: a review whose verdict comes only at the end, past the first 256 tokens.
    let mut text = "the plot follows a family that moves to a quiet town and meets its neighbours . ".repeat(36);
    text.push_str("in the end the film is wonderful , moving and brilliantly acted .");
    let whole = enc.tokenize_whole(std::slice::from_ref(&text)).unwrap().remove(0);
    assert!((560..700).contains(&whole.len()), "{} tokens", whole.len());
    let w = windows(&whole);
    assert_eq!(w.len(), (whole.len() - 2 - (MAX_TOKENS - 2)).div_ceil(cryptotl::features::minilm::WINDOW_STRIDE) + 1);
    // Every content token is in some window, and windows keep their order.
    let content: Vec<u32> = whole[1..whole.len() - 1].to_vec();
    assert_eq!(&w[0][1..MAX_TOKENS - 1], &content[..MAX_TOKENS - 2]);
    assert_eq!(&w.last().unwrap()[1..MAX_TOKENS - 1], &content[content.len() - (MAX_TOKENS - 2)..]);
    // The embedding is the normalised mean of the windows' embeddings.
    let got = enc.embed(std::slice::from_ref(&text), 32, "long").unwrap();
    let per = enc.embed_ids(&w, 32, "windows").unwrap();
    let mut mean = per.mean_axis(ndarray::Axis(0)).unwrap();
    let n = mean.iter().map(|v| v * v).sum::<f32>().sqrt();
    mean.mapv_inplace(|v| v / n);
    assert!(cosine(got.row(0).as_slice().unwrap(), mean.as_slice().unwrap()) > 0.99999);
    // It is not the embedding of the text cut at 256 tokens.
    let cut = enc.embed_ids(&enc.tokenize(std::slice::from_ref(&text)).unwrap(), 32, "cut").unwrap();
    assert_eq!(cut.nrows(), 1);
    assert!(cosine(got.row(0).as_slice().unwrap(), cut.row(0).as_slice().unwrap()) < 0.9999);
    // Short texts are one window: the same as before.
    let short = vec!["a short and lovely film".to_string()];
    assert_eq!(enc.embed(&short, 32, "s").unwrap(), enc.embed_ids(&enc.tokenize(&short).unwrap(), 32, "s").unwrap());
}

/// One embedding cache record: 16-byte text key, 384 f32, 8-byte checksum.
const RECORD: usize = 16 + 4 * 384 + 8;

/// Swap the first two coordinates of `text`'s record in an embedding cache file and fix its checksum: still a
/// valid unit-norm record, but one no model computes, so reading it back shows where an embedding came from.
/// Returns the record's offset in the file.
fn doctor_record(file: &Path, text: &str) -> usize {
    let mut bytes = std::fs::read(file).unwrap();
    let key = cryptotl::features::minilm::text_key(text).to_le_bytes();
    let at = bytes.chunks(RECORD).position(|r| r[..16] == key).unwrap() * RECORD;
    let rec = &mut bytes[at..at + RECORD];
    let (a, b) = (rec[16..20].to_vec(), rec[20..24].to_vec());
    rec[16..20].copy_from_slice(&b);
    rec[20..24].copy_from_slice(&a);
    let sum = xxhash_rust::xxh3::xxh3_64(&rec[..RECORD - 8]);
    rec[RECORD - 8..].copy_from_slice(&sum.to_le_bytes());
    std::fs::write(file, &bytes).unwrap();
    at
}

#[test]
fn a_text_within_both_window_limits_is_embedded_once_for_both_caches() {
    let Some(dir) = model_dir() else { return };
    use cryptotl::features::minilm::EmbeddingCache;
    let cache = tempfile::tempdir().unwrap();
    let featurizer = |limit| MiniLm::new(&dir, 8, Some(cache.path().to_path_buf())).unwrap().with_max_windows(limit);
    let short = "a short and lovely film, not among the shipped sentences".to_string();
    let mut long = "the plot follows a family that moves to a quiet town and meets its neighbours . ".repeat(36);
    long.push_str("in the end the film is wonderful , moving and brilliantly acted ."); // 3 windows
    let texts = vec![short.clone(), long.clone()];
    let one = featurizer(Some(1)).transform(&texts).unwrap();
    let sha = Encoder::load(&dir).unwrap().model_sha256;
    let file = |limit: &str| cache.path().join(std::fs::read_dir(cache.path()).unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .find(|n| n.contains(limit)).unwrap());
    doctor_record(&file("-max1-"), &short);

    // Whole texts: the short text (one window under either limit) comes from the max-1 cache, doctored record
    // and all; the long one is embedded again, as three windows.
    let whole = featurizer(None).transform(&texts).unwrap();
    assert_eq!((whole[[0, 0]], whole[[0, 1]]), (one[[0, 1]], one[[0, 0]]), "the short text was taken from the other cache");
    assert!(cosine(whole.row(1).as_slice().unwrap(), one.row(1).as_slice().unwrap()) < 0.9999, "three windows, not one");
    assert_eq!(EmbeddingCache::window_limits(cache.path(), &sha).unwrap(), vec![None, Some(1)]);
    assert_eq!(EmbeddingCache::open(cache.path(), &sha, None).unwrap().len(), 2, "both now cached for whole texts");

    // At most two windows: neither the whole text's three windows nor the max-1 cache's one will do for the long
    // text, so it is embedded again; the short one is taken.
    let two = featurizer(Some(2)).transform(&texts).unwrap();
    assert_eq!(two.row(0), whole.row(0));
    for other in [&one, &whole] {
        assert!(cosine(two.row(1).as_slice().unwrap(), other.row(1).as_slice().unwrap()) < 0.9999);
    }
    let fresh = Encoder::load(&dir).unwrap().embed_windows(std::slice::from_ref(&long), 8, Some(2), "two").unwrap();
    assert!(cosine(two.row(1).as_slice().unwrap(), fresh.row(0).as_slice().unwrap()) > 0.99999);
}
