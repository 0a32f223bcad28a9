//! The server network shipped in the binary: it is the quickstart's, it runs without its source data, its
//! recorded figures are reproduced from what ships, and a corrupt copy is refused.

use cryptotl::config::{DatasetConfig, DatasetFormat, QUICKSTART_TOML, RunConfig};
use cryptotl::pipeline::{self, NetworkOrigin};
use cryptotl::shipped_network::{self, ShippedNetwork};

mod common;

fn quickstart(cache: &std::path::Path) -> RunConfig {
    let ov = [format!("cache_dir={:?}", cache.display().to_string())];
    RunConfig::from_toml_str(QUICKSTART_TOML, "quickstart", &ov).unwrap()
}

fn shipped() -> &'static ShippedNetwork {
    shipped_network::shipped().unwrap().expect("a network ships in the binary")
}

#[test]
fn the_quickstart_uses_the_shipped_network_without_its_source_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = quickstart(dir.path());
    assert_eq!(pipeline::pretrain_key(&cfg), shipped().manifest.meta.key,
        "configs/quickstart.toml no longer matches the shipped network: rebuild it with `{}`", shipped_network::BUILD_COMMAND);
    // The cache is empty, so the network comes from the binary; the tweets it was trained on are never read (CI
    // does not have them).
    let lower = pipeline::server_lower_network(&cfg).unwrap();
    assert_eq!(lower.origin, NetworkOrigin::Shipped);
    // Dead units are dropped before compiling ([lower] prune_dead): what is left is what the program evaluates.
    let live = cfg.lower.hidden - lower.pruned.as_ref().map_or(0, |p| p.dropped.len());
    assert_eq!(lower.meta.source_ranges.len(), live);
    assert_eq!(lower.meta.source_tasks.len(), 4);
    assert!(lower.meta.source.train > 15_000, "{:?}", lower.meta.source);
    // The encrypted stage compiles from the shipped ranges alone.
    let program = cryptotl::he::quant::compile_with_ranges(&lower.net, lower.features.dim(), &lower.meta.source_ranges, &cfg.he).unwrap();
    assert_eq!(program.neurons, live);
    // The budget quotes the membership attack measured when the network was built: no source data is read.
    let m = pipeline::source_membership(&cfg, &lower, None, "now").unwrap();
    let a = m.attack.as_ref().expect("the shipped network carries its membership figure");
    assert_eq!(Some(a), shipped().manifest.membership.as_ref());
    assert!(m.provenance.contains("when the shipped network was built"), "{}", m.provenance);
    assert!(a.members == a.non_members && a.members > 1000 && a.reference > 1000 && (0.0..=1.0).contains(&a.auc), "{a:?}");
    // Anything that changes the network changes the key: then the run pretrains (and needs the sources).
    cfg.pretrain.epochs += 1;
    assert!(pipeline::stored_pretrained(&cfg).unwrap().is_none());
}

/// The network was pretrained on the embedding table that ships beside it: re-shipping the table (`ship-embeddings`)
/// without re-shipping the network would leave the quickstart's server trained on other embeddings of its sources.
#[test]
fn the_shipped_network_was_trained_on_the_shipped_embeddings() {
    let recorded = shipped().manifest.meta.trained_on.as_ref()
        .unwrap_or_else(|| panic!("the shipped network records no source: rebuild it with `{}`", shipped_network::BUILD_COMMAND));
    let table = cryptotl::features::shipped::ShippedEmbeddings::embedded().unwrap();
    assert_eq!(recorded.embedding_table.as_deref(), Some(table.records_sha256.as_str()),
        "datasets/shipped/minilm_kotzias.bin changed since the network was built: rebuild it with `{}`", shipped_network::BUILD_COMMAND);
}

/// A cache entry for the shipped key comes first, but when its weights are not the shipped ones the command says so
/// (a rebuild with an older embedding cache once shadowed the binary's network without a word).
#[test]
fn a_cache_entry_that_shadows_another_shipped_network_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = quickstart(dir.path());
    let pretrain = |cache: &std::path::Path| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cryptotl"))
            .args(["-q", "pretrain", "--set", &format!("cache_dir={:?}", cache.display().to_string())])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    // An entry holding the shipped network itself: nothing to say.
    let entry = cryptotl::cache::Entry::new(dir.path().join(format!("pretrain-{}", shipped().manifest.meta.key)));
    let outputs = pipeline::pretrain_outputs(&cfg);
    let write = |net: &cryptotl::model::PretrainNet<cryptotl::model::Cpu>| {
        entry.begin().unwrap();
        cryptotl::model::save_module_private(net, &entry.dir().join("lower")).unwrap();
        shipped().manifest.features.save(&entry.dir().join("features.json")).unwrap();
        entry.finish(&shipped().manifest.meta).unwrap();
    };
    write(&shipped().network(&cfg.lower, cfg.features.dim(), outputs, cfg.seed).unwrap());
    let (stdout, stderr) = pretrain(dir.path());
    assert!(stdout.contains("cache") && !stderr.contains("shipped in the binary"), "{stdout}\n{stderr}");
    let recorded = shipped().manifest.meta.trained_on.as_ref().unwrap();
    assert!(stdout.contains(&format!("trained on source data {} with the shipped embeddings", recorded.source)), "{stdout}");
    // Other weights under the same key: used, and named.
    let other = cryptotl::model::PretrainNet::<cryptotl::model::Cpu>::new(&cfg.lower, cfg.features.dim(), outputs, cfg.seed + 1, &Default::default());
    write(&other);
    let (stdout, stderr) = pretrain(dir.path());
    assert!(stdout.contains("cache") && stderr.contains("another network for this config than the one shipped in the binary"), "{stdout}\n{stderr}");
}

#[test]
fn the_recorded_accuracy_and_ranges_are_those_of_the_shipped_weights() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = quickstart(dir.path());
    let n = shipped();
    let outputs = pipeline::pretrain_outputs(&cfg);
    let net = n.network(&cfg.lower, cfg.features.dim(), outputs, cfg.seed).unwrap();
    // Each path is split on its own, so the embedded sources' test rows are the ones the shipped run saw, tweets
    // or not. Their embeddings ship too: no model is needed.
    let embedded: Vec<&str> = cfg.source.paths.iter().map(String::as_str).filter(|p| p.starts_with("embedded:")).collect();
    assert_eq!(embedded.len(), 2);
    let ds = cryptotl::data::load(&DatasetConfig::new("embedded sources", DatasetFormat::Csv, &embedded), cfg.seed).unwrap();
    let split = cryptotl::data::stratified_split(&ds, &cfg.split, cfg.seed).unwrap();
    let device = Default::default();
    for (path, idx) in split.test.by_origin() {
        let texts: Vec<String> = idx.iter().map(|&i| split.test.texts[i].clone()).collect();
        let x = n.manifest.features.transform(&texts).unwrap();
        // With one output per source path, each row names its path's output (one-hot after the features).
        let x = if outputs > 1 {
            let task = cfg.source.paths.iter().position(|p| *p == path).expect("a path of [source]");
            let mut tasked = ndarray::Array2::zeros((x.nrows(), x.ncols() + outputs));
            tasked.slice_mut(ndarray::s![.., ..x.ncols()]).assign(&x);
            tasked.column_mut(x.ncols() + task).fill(1.0);
            tasked
        } else {
            x
        };
        let p = cryptotl::model::predict_proba(&net, x.view(), &device);
        let correct = idx.iter().zip(&p).filter(|&(&i, &p)| (p >= 0.5) == (split.test.labels[i] == 1)).count();
        let recorded = n.manifest.meta.source_tasks.iter().find(|t| t.source == path).expect("task recorded");
        assert_eq!((recorded.test_examples, recorded.accuracy), (idx.len(), correct as f64 / idx.len() as f64), "{path}");
    }
    // The calibration ranges cover the pre-activations of (a subset of) the source training rows.
    let x = n.manifest.features.transform(&split.train.texts).unwrap();
    let sub = cryptotl::he::quant::pre_activation_ranges(&net.lower, x.view()).unwrap();
    for ((lo, hi), (slo, shi)) in n.manifest.meta.source_ranges.iter().zip(&sub) {
        assert!(lo <= slo && shi <= hi, "[{slo}, {shi}] outside the shipped [{lo}, {hi}]");
    }
}

#[test]
fn a_corrupt_or_foreign_shipped_network_is_refused() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/datasets/shipped/sentiment_network");
    let manifest = std::fs::read_to_string(format!("{root}/manifest.json")).unwrap();
    let network = std::fs::read(format!("{root}/pretrain_net.bin")).unwrap();
    let fingerprints = std::fs::read(format!("{root}/{}", shipped_network::FINGERPRINTS_FILE)).unwrap();
    assert!(ShippedNetwork::decode(&manifest, &network, &fingerprints).unwrap().is_some());
    assert!(ShippedNetwork::decode("", &network, &fingerprints).unwrap().is_none(), "an empty manifest ships nothing");
    let mut flipped = network.clone();
    flipped[network.len() / 2] ^= 1;
    let e = ShippedNetwork::decode(&manifest, &flipped, &fingerprints).unwrap_err().to_string();
    assert!(e.contains("does not match its manifest") && e.contains("ship-network"), "{e}");
    let e = ShippedNetwork::decode(&manifest, &network[..network.len() - 1], &fingerprints).unwrap_err().to_string();
    assert!(e.contains("does not match"), "{e}");
    let e = ShippedNetwork::decode(&manifest[..manifest.len() / 2], &network, &fingerprints).unwrap_err().to_string();
    assert!(e.contains("corrupt manifest"), "{e}");
    let other = manifest.replace("cryptotl-pretrained-network/1", "cryptotl-pretrained-network/9");
    assert!(ShippedNetwork::decode(&other, &network, &fingerprints).unwrap_err().to_string().contains("format"));
    // The source fingerprints are checked too: a flipped byte, a missing file, or a file the manifest does not name.
    let mut flipped = fingerprints.clone();
    flipped[fingerprints.len() - 3] ^= 1;
    let e = ShippedNetwork::decode(&manifest, &network, &flipped).unwrap_err().to_string();
    assert!(e.contains("source_fingerprints.bin") && e.contains("does not match its manifest"), "{e}");
    let e = ShippedNetwork::decode(&manifest, &network, &[]).unwrap_err().to_string();
    assert!(e.contains("does not match its manifest"), "{e}");
    let mut unnamed: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    unnamed.as_object_mut().unwrap().remove("source_fingerprints");
    let unnamed = unnamed.to_string();
    let e = ShippedNetwork::decode(&unnamed, &network, &fingerprints).unwrap_err().to_string();
    assert!(e.contains("not recorded in the manifest"), "{e}");
    // A manifest from before the fingerprints, with no file: a network without them (the check says so).
    assert!(ShippedNetwork::decode(&unnamed, &network, &[]).unwrap().unwrap().source_fingerprints.is_none());
}

/// The same weights encode to the same bytes: Burn's random parameter ids are numbered in order before encoding,
/// so rebuilding a network gives the sha256 its manifest had (before, two encodings of one network differed in
/// 51 bytes, four random 13-character ids).
#[test]
fn the_same_weights_encode_to_the_same_bytes() {
    use burn::module::Module as _;
    let dir = tempfile::tempdir().unwrap();
    let cfg = quickstart(dir.path());
    let n = shipped();
    let device = Default::default();
    let fresh = || cryptotl::model::PretrainNet::<cryptotl::model::Cpu>::new(&cfg.lower, 384, 4, 11, &device);
    let (a, b) = (fresh(), fresh());
    let ids = |net: &cryptotl::model::PretrainNet<cryptotl::model::Cpu>| {
        let mut ids = Vec::new();
        struct Ids<'a>(&'a mut Vec<u64>);
        impl<B: burn::tensor::backend::Backend> burn::module::ModuleVisitor<B> for Ids<'_> {
            fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<burn::tensor::Tensor<B, D>>) {
                self.0.push(param.id.val());
            }
        }
        net.visit(&mut Ids(&mut ids));
        ids
    };
    assert_ne!(ids(&a), ids(&b), "two networks made alike get random parameter ids");
    let fingerprints = cryptotl::overlap::SourceFingerprints::of_texts(["a text"]);
    let encode = |net| ShippedNetwork::encode(&cfg, net, &n.manifest.meta, &n.manifest.features, None, &fingerprints).unwrap();
    let ((manifest, bytes_a, fp), (_, bytes_b, _)) = (encode(&a), encode(&b));
    let differing = bytes_a.iter().zip(&bytes_b).filter(|(a, b)| a != b).count();
    assert!(bytes_a.len() == bytes_b.len() && differing == 0, "{differing} of {} bytes differ", bytes_a.len());
    // And they decode to the weights encoded.
    let decoded = ShippedNetwork::decode(std::str::from_utf8(&manifest).unwrap(), &bytes_a, &fp).unwrap().unwrap();
    let back = decoded.network(&cfg.lower, 384, 4, 99).unwrap();
    let x = burn::tensor::Tensor::<cryptotl::model::Cpu, 2>::random([3, 384], burn::tensor::Distribution::Default, &device);
    assert_eq!(back.lower.forward(x.clone()).into_data(), a.lower.forward(x).into_data());
    assert_eq!(back.out.weight.val().into_data(), a.out.weight.val().into_data());
}

#[test]
fn the_shipped_fingerprints_are_those_of_the_source_texts_the_network_learned_from() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = quickstart(dir.path());
    let n = shipped();
    let fingerprints = n.source_fingerprints.as_ref().expect("the shipped network carries its source fingerprints");
    // One per training and validation text of every path (a few texts repeat, within a path or across them).
    let learned = n.manifest.meta.source.train + n.manifest.meta.source.validation;
    assert!(fingerprints.len() <= learned && fingerprints.len() > learned * 95 / 100, "{} of {learned}", fingerprints.len());
    // Each path is split on its own: the embedded sources' training and validation texts are among them, and their
    // test texts (which the network never learned from) are not, unless the same text also sits in a learned part.
    let embedded: Vec<&str> = cfg.source.paths.iter().map(String::as_str).filter(|p| p.starts_with("embedded:")).collect();
    let ds = cryptotl::data::load(&DatasetConfig::new("embedded sources", DatasetFormat::Csv, &embedded), cfg.seed).unwrap();
    let split = cryptotl::data::stratified_split(&ds, &cfg.split, cfg.seed).unwrap();
    assert_eq!(fingerprints.count_in(&split.train.texts), split.train.len());
    assert_eq!(fingerprints.count_in(&split.validation.texts), split.validation.len());
    let test_found = fingerprints.count_in(&split.test.texts);
    assert!(test_found < split.test.len() / 50, "{test_found} of {} test texts", split.test.len());
    // The quickstart's target is another corpus: its report counts the few sentences that also occur in a source.
    let target = cryptotl::data::load(&cfg.target, cfg.seed).unwrap();
    let target = cryptotl::data::stratified_split(&target, &cfg.split, cfg.seed).unwrap();
    let lower = pipeline::server_lower_network(&cfg).unwrap();
    match pipeline::source_overlap(&cfg, &lower, None, &target) {
        cryptotl::overlap::OverlapCheck::Checked(o) => {
            assert_eq!((o.source_texts, o.target_sizes), (fingerprints.len(), [target.train.len(), target.validation.len(), target.test.len()]));
            assert!(o.total() <= 5, "{o:?}");
        }
        other => panic!("not checked: {other:?}"),
    }
}

#[test]
fn balancing_repeats_each_source_path_up_to_the_largest() {
    let cfg = DatasetConfig::new("two", DatasetFormat::Csv, &["embedded:yelp_sentences", "embedded:amazon_sentences"]);
    let mut ds = cryptotl::data::load(&cfg, 0).unwrap();
    // Make the second path small: keep 100 of its examples (both classes).
    let keep: Vec<usize> = (0..ds.len()).filter(|&i| ds.origins[i] == 0 || i % 10 == 0).collect();
    ds = ds.select(&keep);
    let split = cryptotl::data::stratified_split(&ds, &cryptotl::config::SplitConfig { validation: 0.15, test: 0.2, ..Default::default() }, 1).unwrap();
    let rows = |d: &cryptotl::data::Dataset| ndarray::Array2::from_shape_fn((d.len(), 1), |(i, _)| i as f32);
    let fs = pipeline::FeatureSplit {
        train: rows(&split.train), train_y: split.train.labels.clone(),
        validation: rows(&split.validation), validation_y: split.validation.labels.clone(),
        test: rows(&split.test), test_y: split.test.labels.clone(), own_columns: 0,
    };
    let b = pipeline::balance_paths(&fs, &split);
    let [big, small] = [0, 1].map(|o| split.train.origins.iter().filter(|&&x| x == o).count());
    assert!(small * 5 < big);
    assert_eq!(b.train.nrows(), 2 * big);
    // Every row is one of the originals with its own label; the small path's rows each appear about big/small times.
    let mut counts = vec![0usize; split.train.len()];
    for (r, &y) in b.train.column(0).iter().zip(&b.train_y) {
        counts[*r as usize] += 1;
        assert_eq!(y, split.train.labels[*r as usize]);
    }
    for (i, &c) in counts.iter().enumerate() {
        let want = if split.train.origins[i] == 0 { 1..=1 } else { big / small..=big / small + 1 };
        assert!(want.contains(&c), "row {i} appears {c} times");
    }
    assert_eq!(b.test, fs.test, "the test rows are not repeated");
    // Refused where it would be wrong.
    let err = |ov: &[&str]| RunConfig::from_toml_str(QUICKSTART_TOML, "q", &ov.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap_err().to_string();
    assert!(err(&["target.balance_paths=true"]).contains("target.balance_paths"));
    assert!(err(&["server_privacy.dp_pretraining.target_epsilon=4.0"]).contains("source.balance_paths"));
}

#[test]
fn one_output_per_source_path_marks_each_row_with_its_path() {
    let cfg = DatasetConfig::new("two", DatasetFormat::Csv, &["embedded:yelp_sentences", "embedded:amazon_sentences"]);
    let ds = cryptotl::data::load(&cfg, 0).unwrap();
    let split = cryptotl::data::stratified_split(&ds, &cryptotl::config::SplitConfig { validation: 0.15, test: 0.2, ..Default::default() }, 1).unwrap();
    let rows = |d: &cryptotl::data::Dataset| ndarray::Array2::from_shape_fn((d.len(), 3), |(i, j)| (i * 3 + j) as f32);
    let fs = pipeline::FeatureSplit {
        train: rows(&split.train), train_y: split.train.labels.clone(),
        validation: rows(&split.validation), validation_y: split.validation.labels.clone(),
        test: rows(&split.test), test_y: split.test.labels.clone(), own_columns: 0,
    };
    let one = pipeline::with_task_columns(&fs, &split, 1);
    assert!(matches!(one, std::borrow::Cow::Borrowed(_)), "one task: no copy");
    assert_eq!(*one, fs, "one task: the features as they are");
    let t = pipeline::with_task_columns(&fs, &split, 2);
    for (part, x, orig) in [(&split.train, &t.train, &fs.train), (&split.validation, &t.validation, &fs.validation), (&split.test, &t.test, &fs.test)] {
        assert_eq!(x.ncols(), 5);
        assert_eq!(x.slice(ndarray::s![.., ..3]), orig.view(), "the features are kept");
        for (i, row) in x.rows().into_iter().enumerate() {
            let want: [f32; 2] = if part.origins[i] == 0 { [1.0, 0.0] } else { [0.0, 1.0] };
            assert_eq!(row.slice(ndarray::s![3..]).to_vec(), want, "row {i}");
        }
    }
    // Part of the pretraining key (the quickstart ships the per-path network); refused for the target.
    let dir = tempfile::tempdir().unwrap();
    let mut q = quickstart(dir.path());
    q.source.output_per_path = false;
    assert_eq!(pipeline::pretrain_outputs(&q), 1);
    let shared_key = pipeline::pretrain_key(&q);
    q.source.output_per_path = true;
    assert_eq!(pipeline::pretrain_outputs(&q), q.source.paths.len());
    assert_ne!(pipeline::pretrain_key(&q), shared_key);
    let err = RunConfig::from_toml_str(QUICKSTART_TOML, "q", &["target.output_per_path=true".to_string()]).unwrap_err().to_string();
    assert!(err.contains("target.output_per_path"), "{err}");
}

#[test]
fn dropping_dead_units_keeps_every_output_of_the_units_that_fire() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = quickstart(dir.path());
    let pruned = pipeline::server_lower_network(&cfg).unwrap();
    cfg.lower.prune_dead = false;
    let whole = pipeline::server_lower_network(&cfg).unwrap();
    assert!(whole.pruned.is_none());
    assert_eq!(pipeline::pretrain_key(&cfg), shipped().manifest.meta.key, "prune_dead is not part of the pretraining key");
    let dropped = &pruned.pruned.as_ref().expect("the shipped network has units that never fire on its source").dropped;
    assert_eq!(pruned.pruned.as_ref().unwrap().hidden, cfg.lower.hidden);
    assert!(!dropped.is_empty() && dropped.len() < cfg.lower.hidden);
    for &j in dropped {
        assert!(whole.meta.source_ranges[j].1 <= 0.0, "unit {j} fires on the source: {:?}", whole.meta.source_ranges[j]);
    }
    let kept: Vec<usize> = (0..cfg.lower.hidden).filter(|j| !dropped.contains(j)).collect();
    assert!(kept.iter().all(|&j| whole.meta.source_ranges[j].1 > 0.0));
    assert_eq!(pruned.meta.source_ranges, kept.iter().map(|&j| whole.meta.source_ranges[j]).collect::<Vec<_>>());
    // On the embedded target texts: the kept columns are the whole network's, bit for bit.
    let ds = cryptotl::data::load(&DatasetConfig::new("target", DatasetFormat::Csv, &["embedded:imdb_sentences"]), cfg.seed).unwrap();
    let x = whole.features.transform(&ds.texts[..200]).unwrap();
    let a = pipeline::lower_forward(&whole.net, &x).unwrap();
    let b = pipeline::lower_forward(&pruned.net, &x).unwrap();
    assert_eq!(b.ncols(), kept.len());
    for (c, &j) in kept.iter().enumerate() {
        assert_eq!(a.column(j), b.column(c), "unit {j}");
    }
}

/// The network shipped in the binary is public: noise a run adds to it protects its source examples against no one
/// who has the binary. The budget says so beside the weight-noise row, a release of it under
/// `server_privacy.total_epsilon` is refused (in a run and up front in a sweep), and another pretraining on a path
/// the shipped network learned from counts it as a release without a bound.
#[test]
fn releases_of_the_public_shipped_network_claim_no_bound() {
    use cryptotl::privacy::budget::{BudgetReport, ServerMechanisms, TfheStatement};
    let dir = tempfile::tempdir().unwrap();
    let noise = ["server_privacy.weight_noise.l2_sensitivity=0.001".to_string(), "server_privacy.weight_noise.target_epsilon=4".into()];
    let capped = |extra: &[String]| {
        let ov: Vec<String> = [format!("cache_dir={:?}", dir.path().display().to_string()), "server_privacy.total_epsilon=100".into()].into_iter().chain(extra.iter().cloned()).collect();
        RunConfig::from_toml_str(QUICKSTART_TOML, "quickstart", &ov).unwrap()
    };
    // Under a total, a draw from the shipped network is refused before it is drawn (its source data is not needed).
    let err = pipeline::server_lower_network(&capped(&noise)).err().expect("a capped release of the shipped network").to_string();
    assert!(err.contains("server_privacy.total_epsilon") && err.contains("shipped in the cryptotl binary") && err.contains("did not learn from") && err.contains("tweets.csv"), "{err}");
    let spec = common::server_sweep("4", cryptotl::sweep::ServerMechanism::WeightNoise);
    let err = cryptotl::sweep::plan(&capped(&noise), &spec).err().expect("a capped sweep over the shipped network").to_string();
    assert!(err.contains("shipped in the cryptotl binary"), "{err}");
    let drawn = std::fs::read_dir(dir.path()).unwrap().flat_map(|e| std::fs::read_dir(e.unwrap().path()).into_iter().flatten())
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("weight-noise-")).count();
    assert_eq!(drawn, 0, "nothing was drawn");

    // The budget of a noised shipped network: the weight-noise row, the public network beside it, and no bound for
    // anyone with the binary.
    let cfg = quickstart(dir.path());
    let wn = cryptotl::privacy::server::plan_weight_noise(capped(&noise).server_privacy.weight_noise.as_ref().unwrap(), shipped().manifest.meta.source.train).unwrap().unwrap();
    let tfhe = TfheStatement::new(&cfg.he, None).unwrap();
    let budget = |shipped: bool| BudgetReport::new(None, 652, ServerMechanisms { weight_noise: Some((&wn, 100)), source_examples: 10, public_network: shipped.then_some(cryptotl::privacy::budget::PublicNetwork::Shipped), ..Default::default() }, tfhe.clone()).unwrap();
    let public = budget(true);
    let row = public.rows.iter().find(|r| r.mechanism.starts_with("the pretrained network itself, shipped in the cryptotl binary")).expect("the public network's row");
    assert_eq!((row.party.as_str(), row.epsilon, row.delta), ("server", None, None));
    let tightest = public.source_tightest.as_ref().unwrap();
    assert!(tightest.contains("none against anyone with the cryptotl binary") && tightest.contains("weight noise alone"), "{tightest}");
    let own = budget(false);
    assert!(!own.rows.iter().any(|r| r.mechanism.contains("shipped in the cryptotl binary")) && !own.source_tightest.unwrap().contains("binary"));

    // Another pretraining that learned from some of the texts the shipped network learned from counts it, without a
    // bound (`tests/server_privacy.rs` refuses such a draw under a total); one on other texts does not.
    let fingerprints = |texts: &[&str]| cryptotl::overlap::SourceFingerprints::of_texts(texts.iter().copied());
    let learned = shipped().source_fingerprints.clone().expect("the shipped network carries its source texts");
    assert!(learned.contains("Wow... Loved this place."));
    let some = fingerprints(&["Wow... Loved this place.", "a text of the server's own"]);
    let others = pipeline::other_pretrainings(dir.path(), &[], Some(&some));
    assert!(others.shipped.is_some() && others.together().is_none() && others.describe().contains("shipped in the cryptotl binary"), "{others:?}");
    assert!(pipeline::other_pretrainings(dir.path(), &[], Some(&fingerprints(&["a text of the server's own"]))).is_empty());
    // The shipped network's own folder excluded (the run's own network), it is not counted again.
    let own_dir = dir.path().join(format!("pretrain-{}", shipped().manifest.meta.key));
    assert!(pipeline::other_pretrainings(dir.path(), std::slice::from_ref(&own_dir), Some(&some)).is_empty());
    // Its folder in a cache (draws from it sit there) records what it learned from: the shipped list.
    assert_eq!(pipeline::recorded_examples(&own_dir), Some(learned));
}
