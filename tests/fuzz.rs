//! Property-based fuzzing (proptest, a bounded number of cases so CI stays fast): whatever a user or a peer
//! sends, the config parser, `--set`, the dataset loaders, the feature files, the wire objects and the source
//! fingerprints answer with a value or an error, never a panic or an allocation past their limits.

use cryptotl::config::{DatasetConfig, DatasetFormat, QUICKSTART_TOML, RunConfig};
use cryptotl_server::wire::WireObject;
use cryptotl_server::{EncryptedInput, EncryptedOutput, EvaluationKey};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() }
}

/// Text that looks like TOML: keys, tables, values, quotes, brackets and noise.
fn tomlish() -> impl Strategy<Value = String> {
    let atom = prop_oneof![
        Just("[lower]\n".to_string()), Just("[he]\n".to_string()), Just("[privacy]\n".to_string()),
        Just("hidden = ".to_string()), Just("seed = ".to_string()), Just("name = ".to_string()),
        Just("\"x\"\n".to_string()), Just("99999999999999999999\n".to_string()), Just("-1\n".to_string()),
        Just("1e308\n".to_string()), Just("nan\n".to_string()), Just("[[a]]\n".to_string()), Just("= = =\n".to_string()),
        "[a-z_.=\\[\\]\"' \n0-9-]{0,20}",
    ];
    prop::collection::vec(atom, 0..12).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn config_text_never_panics(extra in tomlish()) {
        let _ = RunConfig::from_toml_str(&extra, "fuzz.toml", &[]);
        let _ = RunConfig::from_toml_str(&format!("{QUICKSTART_TOML}\n{extra}"), "fuzz.toml", &[]);
    }

    #[test]
    fn overrides_never_panic(key in "[a-z_]{1,12}(\\.[a-z_]{1,12}){0,2}", value in "[ -~]{0,24}") {
        let ov = [format!("{key}={value}")];
        if let Ok(cfg) = RunConfig::from_toml_str(QUICKSTART_TOML, "fuzz.toml", &ov) {
            // Whatever is accepted is valid: written out (as a run saves it) it reads back, the same.
            let text = toml::to_string(&cfg).unwrap();
            let again = RunConfig::from_toml_str(&text, "again", &[]);
            prop_assert!(again.is_ok(), "{:?}", again.err());
            prop_assert_eq!(again.unwrap(), cfg);
        }
    }

    #[test]
    fn csv_and_json_loaders_never_panic(body in prop::collection::vec(any::<u8>(), 0..400), header in any::<bool>(), lossy in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        for (format, name) in [(DatasetFormat::Csv, "d.csv"), (DatasetFormat::Json, "d.json")] {
            let path = dir.path().join(name);
            std::fs::write(&path, &body).unwrap();
            let mut cfg = DatasetConfig::new("fuzz", format, &[path.to_str().unwrap()]);
            cfg.header = header;
            cfg.lossy_utf8 = lossy;
            if !header {
                (cfg.label_column, cfg.text_column) = ("0".into(), "1".into());
            }
            if let Ok(ds) = cryptotl::data::load(&cfg, 0) {
                prop_assert!(ds.labels.iter().all(|&l| l <= 1) && ds.texts.iter().all(|t| !t.trim().is_empty()));
            }
        }
    }

    #[test]
    fn labelled_csv_rows_never_panic(rows in prop::collection::vec(("[ -~]{0,3}", "[ -~\n\"]{0,30}"), 0..30)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rows.csv");
        let body: String = std::iter::once("label,text\n".to_string()).chain(rows.iter().map(|(l, t)| format!("{l},{t}\n"))).collect();
        std::fs::write(&path, body).unwrap();
        let _ = cryptotl::data::load(&DatasetConfig::new("fuzz", DatasetFormat::Csv, &[path.to_str().unwrap()]), 0);
    }

    #[test]
    fn text_lines_split_as_str_lines_and_refuse_bad_bytes_with_their_line(body in prop::collection::vec(prop_oneof![Just(b'\n'), Just(b'\r'), Just(b'a'), Just(0xc3u8), Just(0xa9u8), Just(0xffu8)], 0..40)) {
        let source = std::path::Path::new("<stdin>");
        match std::str::from_utf8(&body) {
            Ok(text) => {
                let want: Vec<&str> = text.lines().collect();
                prop_assert_eq!(cryptotl::data::text_lines(&body, source).unwrap(), want);
            }
            Err(e) => {
                let line = 1 + body[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count();
                let msg = cryptotl::data::text_lines(&body, source).unwrap_err().to_string();
                prop_assert!(msg.contains(&format!("line {line} is not valid UTF-8")), "{}", msg);
            }
        }
    }

    #[test]
    fn feature_files_never_panic(body in prop::collection::vec(any::<u8>(), 0..300)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("features.json");
        std::fs::write(&path, &body).unwrap();
        let _ = cryptotl::pipeline::FeatureSplit::load(&path);
        let _ = cryptotl::features::FeaturePipeline::load(&path);
    }

    /// The download's packing keeps exactly each word's low q bits, for every modulus it may use, and an output
    /// of any bytes and any claimed modulus unpacks without a panic.
    #[test]
    fn packed_outputs_unpack_to_their_words(q in 8u32..=32, words in prop::collection::vec(any::<u64>(), 0..200), junk in prop::collection::vec(any::<u8>(), 0..64), claimed in any::<u32>()) {
        let out = EncryptedOutput::pack(1, "p".into(), 1, q, &words);
        prop_assert_eq!(out.data.len(), (words.len() * q as usize).div_ceil(8));
        prop_assert_eq!(out.words(), words.iter().map(|w| (w & ((1u64 << q) - 1)) as u32).collect::<Vec<_>>());
        let _ = EncryptedOutput { log_modulus: claimed, data: junk, ..out }.words();
    }

    #[test]
    fn wire_objects_never_panic_on_arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = EncryptedInput::from_bytes(&body, 1 << 16);
        let _ = EncryptedOutput::from_bytes(&body, 1 << 16);
        let _ = EvaluationKey::from_bytes(&body, 1 << 16);
    }

    /// The overlap check's fingerprints: a text matches itself however its case and spacing are changed, any set
    /// of texts encodes and decodes to itself, and any bytes decode to fingerprints or an error, never a panic.
    #[test]
    fn source_fingerprints_fold_round_trip_and_never_panic(
        texts in prop::collection::vec("[ -~\t\n]{0,24}", 0..20),
        junk in prop::collection::vec(any::<u8>(), 0..200),
        cut in any::<prop::sample::Index>(),
    ) {
        use cryptotl::overlap::SourceFingerprints;
        let set = SourceFingerprints::of_texts(texts.iter().map(String::as_str));
        for t in &texts {
            let shouted = t.to_uppercase().split(' ').collect::<Vec<_>>().join(" \t ");
            prop_assert!(set.contains(&shouted), "{:?} as {:?}", t, shouted);
        }
        let what = std::path::Path::new("f.bin");
        let bytes = set.encode();
        prop_assert_eq!(SourceFingerprints::decode(&bytes, what).unwrap(), set.clone());
        // A cut anywhere but the end, or junk after it, is an error.
        let at = cut.index(bytes.len());
        prop_assert!(SourceFingerprints::decode(&bytes[..at], what).is_err());
        let mut longer = bytes.clone();
        longer.extend_from_slice(&junk);
        prop_assert_eq!(SourceFingerprints::decode(&longer, what).is_ok(), junk.is_empty());
        let _ = SourceFingerprints::decode(&junk, what);
    }

    /// Whatever an encrypted pass's journal holds (a killed append, a foreign or damaged file), opening it reads
    /// only whole records whose checksums hold, and what is appended next reads back exactly.
    #[test]
    fn a_journal_after_any_bytes_reads_back_what_is_appended(
        garbage in prop::collection::vec(any::<u8>(), 0..400),
        samples in prop::collection::vec((prop::collection::vec(any::<u16>(), 1..6), prop::collection::vec(any::<i64>(), 3)), 1..8),
    ) {
        use cryptotl::he::OutputJournal;
        let dir = tempfile::tempdir().unwrap();
        let mut journal = OutputJournal::open(dir.path(), "fuzz", 3).unwrap();
        std::fs::write(journal.path(), &garbage).unwrap();
        let before = OutputJournal::open(dir.path(), "fuzz", 3).unwrap();
        prop_assert!(before.len() <= garbage.len() / (16 + 3 * 8 + 8));
        let items: Vec<(&[u16], &[i64])> = samples.iter().map(|(l, o)| (l.as_slice(), o.as_slice())).collect();
        journal.append(&items).unwrap();
        let after = OutputJournal::open(dir.path(), "fuzz", 3).unwrap();
        // The last record of a sample given twice wins, in memory and on disk alike.
        for (levels, _) in &samples {
            let want = &samples.iter().rev().find(|(l, _)| l == levels).unwrap().1;
            prop_assert_eq!(after.get(levels), Some(want.as_slice()));
        }
    }
}

/// A run's bag-of-words model file (`bow_score.json`, read by `predict`), damaged in its numbers, order, sizes or
/// length: an error, or a model that scores every text with a finite number. Some of the cases must load, so that
/// the second half is tried too.
#[test]
fn bag_of_words_model_files_never_panic() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    // Mostly near a valid file, so that both the refusals and the loaded models are tried.
    let dim = cryptotl::bow::BAG_OF_WORDS_DIM as u32;
    let text = "a b c d e f g h".to_string();
    // The buckets the scored text falls into, so that the damaged numbers are ones its score reads.
    let hot: Vec<u32> = cryptotl::features::HashedTfidf::unfitted(dim as usize, 2).transform_sparse(std::slice::from_ref(&text))[0].iter().map(|e| e.0).collect();
    let entries = || {
        let bucket = prop_oneof![10 => prop::sample::select(hot.clone()), 10 => 0..dim, 1 => any::<u32>()];
        prop::collection::vec((bucket, prop_oneof![40 => -1e3f32..1e3, 1 => any::<f32>()]), 0..12)
    };
    let cases = (
        prop_oneof![8 => Just(dim as usize), 1 => 0usize..10, 1 => Just(usize::MAX)],
        prop_oneof![8 => 1usize..=3, 1 => 0usize..100],
        entries(),
        prop::option::of(entries()),
        prop::bool::weighted(0.8),
        prop::bool::weighted(0.9),
        any::<u16>(),
    );
    let loaded = AtomicUsize::new(0);
    let mut runner = proptest::test_runner::TestRunner::new(config());
    runner
        .run(&cases, |(dim, ngrams, idf, weights, sorted, same_key, cut)| {
            // Most cases list their buckets in order, as a saved file does, so the values themselves are tried.
            let order = |mut v: Vec<(u32, f32)>| {
                if sorted {
                    v.sort_by_key(|e| e.0);
                    v.dedup_by_key(|e| e.0);
                }
                v
            };
            let file = serde_json::json!({
                "format": 1, "features_key": if same_key { "k" } else { "other" }, "dim": dim, "ngrams": ngrams,
                "idf_default": 1.5, "idf": order(idf),
                "model": weights.map(|w| serde_json::json!({ "weights": order(w), "bias": 0.25, "c": 10.0 })),
            });
            let mut bytes = serde_json::to_vec(&file).unwrap();
            if cut % 5 == 0 {
                bytes.truncate(cut as usize % (bytes.len() + 1));
            }
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(cryptotl::bow::STACKED_SCORER_FILE);
            std::fs::write(&path, &bytes).unwrap();
            if let Ok(scorer) = cryptotl::bow::StackedScorer::load(&path, "k") {
                let score = scorer.score_texts(&[text.clone(), String::new()]);
                prop_assert!(score.len() == 2 && score.iter().all(|s| s.is_finite()), "{score:?}");
                loaded.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
        .unwrap();
    let loaded = loaded.into_inner();
    assert!(loaded > 0, "no generated file loaded");
}
