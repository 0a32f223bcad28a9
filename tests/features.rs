//! Featurizer and scaler properties: dimension, normalisation, range, no fit on test data, bad input.

use cryptotl::config::{DatasetConfig, DatasetFormat, FeaturesConfig, QUICKSTART_TOML, RunConfig, SplitConfig};
use cryptotl::pipeline::client_features;
use cryptotl::data;
use cryptotl::features::{FeaturePipeline, Featurizer, HashedTfidf, MinMaxScaler};
use ndarray::array;

fn texts(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn hashed_vectors_have_the_dimension_and_unit_norm() {
    let train = texts(&["a great movie", "a dull, dull movie", "Ünïcode wörds too 🎬"]);
    for dim in [16, 768, 1000] {
        let f = HashedTfidf::fit(&train, dim, 2);
        let x = f.transform(&train).unwrap();
        assert_eq!(x.dim(), (3, dim));
        for row in x.rows() {
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
            assert!(row.iter().all(|v| *v >= 0.0));
        }
    }
}

#[test]
fn featurizer_is_deterministic_and_case_insensitive() {
    let train = texts(&["Great Movie", "great movie", "bad film"]);
    let f = HashedTfidf::fit(&train, 64, 2);
    let x = f.transform(&train).unwrap();
    assert_eq!(x.row(0), x.row(1));
    assert_ne!(x.row(0), x.row(2));
    let g = HashedTfidf::fit(&train, 64, 2);
    assert_eq!(f, g);
    assert_eq!(x, g.transform(&train).unwrap());
}

#[test]
fn text_without_words_gives_a_zero_vector_not_nan() {
    let f = HashedTfidf::fit(&texts(&["words here"]), 32, 2);
    let x = f.transform(&texts(&["", " ... !!! "])).unwrap();
    assert!(x.iter().all(|v| *v == 0.0));
}

#[test]
fn scaler_maps_training_rows_into_unit_range_and_clips_others() {
    let train = array![[0.0f32, 10.0, 5.0], [1.0, 20.0, 5.0]];
    let s = MinMaxScaler::fit(train.view()).unwrap();
    assert_eq!(s.transform(train.view()).unwrap(), array![[0.0, 0.0, 0.0], [1.0, 1.0, 0.0]]);
    let other = array![[2.0f32, 15.0, 7.0], [-1.0, 0.0, 5.0]];
    assert_eq!(s.transform(other.view()).unwrap(), array![[1.0, 0.5, 0.0], [0.0, 0.0, 0.0]]);
}

#[test]
fn nan_and_width_mismatch_are_clear_errors() {
    let s = MinMaxScaler::fit(array![[0.0f32, 1.0], [1.0, 2.0]].view()).unwrap();
    let e = s.transform(array![[0.5f32, f32::NAN]].view()).unwrap_err().to_string();
    assert!(e.contains("non-finite") && e.contains("row 0, column 1"), "{e}");
    let e = s.transform(array![[0.5f32, 1.0, 2.0]].view()).unwrap_err().to_string();
    assert!(e.contains("fitted on 2 features, got 3"), "{e}");
    assert!(MinMaxScaler::fit(array![[f32::INFINITY]].view()).is_err());
}

#[test]
fn pipeline_is_fitted_on_training_texts_only() {
    let ds = data::load(&DatasetConfig::new("i", DatasetFormat::Csv, &["embedded:imdb_sentences"]), 0).unwrap();
    let split = data::stratified_split(&ds, &SplitConfig::default(), 1).unwrap();
    let cfg = FeaturesConfig { dim: Some(128), ..Default::default() };
    let run_cfg = RunConfig { features: cfg.clone(), ..RunConfig::from_toml_str(QUICKSTART_TOML, "q", &[]).unwrap() };
    let (fitted, _) = client_features(&run_cfg, &split).unwrap();
    assert_eq!(fitted, FeaturePipeline::fit(&cfg, &split.train.texts).unwrap(), "the stage fits on train only");
    // Replacing validation and test texts changes nothing that was fitted.
    let mut other = split.clone();
    other.test.texts.iter_mut().for_each(|t| t.push_str(" zebra zebra unseen words"));
    other.validation.texts.reverse();
    let (refit, fs) = client_features(&run_cfg, &other).unwrap();
    assert_eq!(fitted, refit);
    assert!(fs.test.iter().all(|v| (0.0..=1.0).contains(v)));
    assert_eq!(fs.train.ncols(), 128);
}

#[test]
fn pipeline_save_load_round_trip_and_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let p = FeaturePipeline::fit(&FeaturesConfig { dim: Some(32), ..Default::default() }, &texts(&["a b", "c d e"])).unwrap();
    let path = dir.path().join("f.json");
    p.save(&path).unwrap();
    assert_eq!(FeaturePipeline::load(&path).unwrap(), p);
    std::fs::write(&path, b"{\"featurizer\": 3}").unwrap();
    let e = FeaturePipeline::load(&path).unwrap_err().to_string();
    assert!(e.contains("corrupt"), "{e}");
}

#[test]
fn fixed_scaling_is_the_same_map_for_every_party() {
    use cryptotl::config::{FeaturesConfig, Scaling};
    use cryptotl::features::FeaturePipeline;
    let cfg = FeaturesConfig { dim: Some(64), scaling: Scaling::Fixed, ..FeaturesConfig::default() };
    let a = FeaturePipeline::fit(&cfg, &["a great movie".to_string(), "dull".to_string()]).unwrap();
    let b = FeaturePipeline::fit(&cfg, &["completely different texts here".to_string()]).unwrap();
    assert_eq!(a.scaler, b.scaler, "no party statistics in a fixed scaler");
    assert!(a.scaler.min.iter().all(|&m| m == 0.0) && a.scaler.max.iter().all(|&m| m == 1.0));
    let fitted = FeaturePipeline::fit(&FeaturesConfig { scaling: Scaling::Fitted, ..cfg }, &["a great movie".to_string(), "dull".to_string()]).unwrap();
    assert_ne!(fitted.scaler, a.scaler);
    let x = a.transform(&["a great movie".to_string()]).unwrap();
    assert!(x.iter().all(|v| (0.0..=1.0).contains(v)));
}

#[test]
fn the_embedding_cache_survives_torn_tails_and_flipped_bytes() {
    use cryptotl::features::minilm::{EmbeddingCache, MINILM_DIM};
    const RECORD: usize = 16 + 4 * MINILM_DIM + 8;
    let dir = tempfile::tempdir().unwrap();
    let sha = "ab".repeat(32);
    let texts: Vec<String> = (0..4).map(|i| format!("text {i}")).collect();
    let unit = |i: usize| ndarray::Array2::from_shape_fn((1, MINILM_DIM), |(_, j)| if j == i { 1.0f32 } else { 0.0 });
    let mut cache = EmbeddingCache::open(dir.path(), &sha, None).unwrap();
    for (i, text) in texts.iter().take(3).enumerate() {
        cache.insert(&[text], &unit(i)).unwrap();
    }
    let file = std::fs::read_dir(dir.path()).unwrap().next().unwrap().unwrap().path();
    assert_eq!(std::fs::metadata(&file).unwrap().len() as usize, 3 * RECORD);
    // An interrupted append leaves a torn tail: the whole records still read, and the next append cuts it off.
    let mut bytes = std::fs::read(&file).unwrap();
    bytes.extend_from_slice(&[7u8; 100]);
    std::fs::write(&file, &bytes).unwrap();
    let mut cache = EmbeddingCache::open(dir.path(), &sha, None).unwrap();
    assert_eq!(cache.len(), 3);
    cache.insert(&[&texts[3]], &unit(3)).unwrap();
    assert_eq!(std::fs::metadata(&file).unwrap().len() as usize, 4 * RECORD, "the torn tail is cut, not kept");
    let cache = EmbeddingCache::open(dir.path(), &sha, None).unwrap();
    assert_eq!(cache.len(), 4);
    assert_eq!(cache.get("text 3").unwrap()[3], 1.0);
    // A flipped byte inside a record: that text is a miss (embedded again), never a wrong embedding.
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[RECORD + 16 + 4 * 5] ^= 0x40;
    std::fs::write(&file, &bytes).unwrap();
    let cache = EmbeddingCache::open(dir.path(), &sha, None).unwrap();
    assert!(cache.get("text 1").is_none());
    assert_eq!(cache.len(), 3);
    assert_eq!(cache.get("text 2").unwrap()[2], 1.0);
}

#[test]
fn an_embedding_cache_from_before_checksums_is_carried_over_not_recomputed() {
    use cryptotl::features::minilm::{EmbeddingCache, MINILM_DIM, WINDOW_STRIDE, text_key};
    let dir = tempfile::tempdir().unwrap();
    let sha = "ef".repeat(32);
    // The old format: 16-byte key and the embedding, no checksum. One good record, one with a wrong norm.
    let mut old = Vec::new();
    for (text, value) in [("kept", 1.0f32), ("damaged", 3.0)] {
        old.extend_from_slice(&text_key(text).to_le_bytes());
        (0..MINILM_DIM).for_each(|j| old.extend_from_slice(&(if j == 7 { value } else { 0.0f32 }).to_le_bytes()));
    }
    let legacy = dir.path().join(format!("minilm-w{WINDOW_STRIDE}-{}.bin", &sha[..16]));
    std::fs::write(&legacy, &old).unwrap();
    let cache = EmbeddingCache::open(dir.path(), &sha, None).unwrap();
    assert_eq!(cache.get("kept").unwrap()[7], 1.0);
    assert!(cache.get("damaged").is_none(), "a record that is not unit-norm is not carried over");
    assert_eq!(cache.len(), 1);
    assert_eq!(std::fs::read(&legacy).unwrap(), old, "the old file is left as it was");
    // The carried-over file is the current format and reads again without the old one.
    std::fs::remove_file(&legacy).unwrap();
    assert_eq!(EmbeddingCache::open(dir.path(), &sha, None).unwrap().get("kept").unwrap()[7], 1.0);
}

#[cfg(unix)]
#[test]
fn the_clients_private_files_are_owner_only() {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let dir = tempfile::tempdir().unwrap();
    let texts = texts(&["a good film", "a bad film", "fine"]);
    let cfg = FeaturesConfig { kind: cryptotl::config::FeatureKind::Hashed, dim: Some(16), ..FeaturesConfig::default() };
    let p = FeaturePipeline::fit(&cfg, &texts).unwrap();
    let path = dir.path().join("client_features.json");
    p.save(&path).unwrap();
    assert_eq!(mode(&path), 0o600);
    let x = p.transform(&texts).unwrap();
    let fs = cryptotl::pipeline::FeatureSplit { train: x.clone(), train_y: vec![1, 0, 1], validation: x.clone(), validation_y: vec![1, 0, 1], test: x, test_y: vec![1, 0, 1], own_columns: 0 };
    let path = dir.path().join("features.json");
    fs.save(&path).unwrap();
    assert_eq!(mode(&path), 0o600);
    let mut cache = cryptotl::features::minilm::EmbeddingCache::open(&dir.path().join("emb"), &"cd".repeat(32), None).unwrap();
    let row = ndarray::Array2::from_shape_fn((1, 384), |(_, j)| if j == 0 { 1.0f32 } else { 0.0 });
    cache.insert(&[&texts[0]], &row).unwrap();
    let file = std::fs::read_dir(dir.path().join("emb")).unwrap().next().unwrap().unwrap().path();
    assert_eq!((mode(&file), mode(&dir.path().join("emb"))), (0o600, 0o700));
}
