//! A tiny run end to end on a separable fixture, the run cache, and the CLI's stage subcommands and exit codes.

use std::process::Command;

use cryptotl::config::RunConfig;

mod common;
use common::tiny_config;

#[test]
fn a_run_that_fails_after_its_encrypted_pass_resumes_it_from_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = RunConfig::from_toml_str(&tiny_config(dir.path()), "tiny.toml", &["curve.enabled=false".into(), "audit.membership=false".into()]).unwrap();
    // The run's last write fails (its report's path is taken by a folder): everything before it, the encrypted
    // pass included, is done.
    let out = cfg.output_dir();
    std::fs::create_dir_all(out.join("report.json")).unwrap();
    let err = cryptotl::pipeline::run(&cfg).unwrap_err().to_string();
    assert!(err.contains("report.json"), "{err}");
    let journals = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&out).unwrap().flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "journal")).collect()
    };
    assert_eq!(journals().len(), 1, "the pass's outputs are kept");
    // Started again, the run sends nothing: all 120 samples come from the journal, which goes once the run is written.
    std::fs::remove_dir(out.join("report.json")).unwrap();
    let report = cryptotl::pipeline::run(&cfg).unwrap();
    let he = report.he.as_ref().unwrap();
    assert_eq!((he.samples, he.resumed_samples), (120, 120));
    assert_eq!(he.off_oracle_rate.map(|r| r < 0.25), Some(true), "resumed outputs are still checked against the oracle");
    assert!(journals().is_empty());
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("120 (120 of them before an interruption"), "{md}");
    assert!(md.contains("| server time per sample: median / p95 | not measured: every sample came from the journal"), "{md}");
}

#[test]
fn a_prediction_stopped_during_its_encrypted_pass_resumes_from_its_own_journal() {
    use cryptotl::pipeline;
    use ndarray::s;
    let dir = tempfile::tempdir().unwrap();
    let cfg = RunConfig::from_toml_str(&tiny_config(dir.path()), "tiny.toml", &["curve.enabled=false".into(), "audit.membership=false".into()]).unwrap();
    pipeline::run(&cfg).unwrap();
    let out = cfg.output_dir();
    // What an interrupted run of this folder would have left: `predict` neither reads nor removes it.
    let mut theirs = cryptotl::he::OutputJournal::open(&out, "a run's pass", 1).unwrap();
    theirs.append(&[(&[1][..], &[2][..])]).unwrap();
    let texts = pipeline::prepare_data(&cfg).unwrap().target.test.texts;
    let own = cryptotl::features::FeaturePipeline::load(&out.join("client_features.json")).unwrap().transform(&texts).unwrap();
    let half = texts.len() / 2;
    // A prediction stopped half way: the first half's outputs are in its journal.
    let (first, journal) = pipeline::transfer_rows(&cfg, &own.slice(s![..half, ..]).to_owned(), "first half", Some(&out)).unwrap();
    let journal = journal.expect("an encrypted pass keeps a journal");
    let (path, record) = (journal.path().to_path_buf(), std::fs::metadata(journal.path()).unwrap().len() / half as u64);
    assert_eq!(journal.len(), half);
    assert!(path.file_name().unwrap().to_string_lossy().starts_with("encrypted-") && path != theirs.path());
    drop(journal);
    // Again on every text: the first half comes from the journal (the same rows, and not appended again), only the
    // second half is encrypted.
    let (all, journal) = pipeline::transfer_rows(&cfg, &own, "all", Some(&out)).unwrap();
    assert_eq!(all.slice(s![..half, ..]), first);
    assert_eq!(journal.unwrap().len(), texts.len());
    assert_eq!(std::fs::metadata(&path).unwrap().len(), record * texts.len() as u64, "resumed rows are not appended again");
    // `predict` resumes every row from it, so it scores exactly these outputs, and removes its own journal only.
    let predictions = pipeline::predict(&cfg, &out, &texts).unwrap();
    let x = match cfg.head.inputs {
        cryptotl::config::HeadInputs::TransferPlusOwn => ndarray::concatenate(ndarray::Axis(1), &[all.view(), own.view()]).unwrap(),
        _ => all,
    };
    let dev = Default::default();
    let head = cryptotl::model::load_module(pipeline::new_head::<cryptotl::model::Cpu>(&cfg, x.ncols(), &dev), &out.join("head"), &dev).unwrap();
    let want: Vec<f32> = cryptotl::model::predict_proba(&head, x.view(), &dev);
    assert_eq!(predictions.iter().map(|p| p.probability).collect::<Vec<_>>(), want);
    assert!(!path.exists(), "a finished prediction removes its journal");
    assert_eq!(cryptotl::he::OutputJournal::open(&out, "a run's pass", 1).unwrap().get(&[1]), Some(&[2][..]), "the run's journal is left alone");
}

/// A prediction through the one-process simulation keeps its keys in the run's folder, as a client of a remote
/// server does: the first makes them, the next reuse them; a store that lost the evaluation key, or a corrupt key
/// file, means a new key, not an error.
#[test]
fn local_predictions_keep_their_keys_in_the_run_folder() {
    use cryptotl::pipeline::{self, CLIENT_KEY_FILE, LOCAL_KEY_STORE};
    let dir = tempfile::tempdir().unwrap();
    let cfg = RunConfig::from_toml_str(&tiny_config(dir.path()), "tiny.toml", &["curve.enabled=false".into(), "audit.membership=false".into()]).unwrap();
    pipeline::run(&cfg).unwrap();
    let out = cfg.output_dir();
    let texts: Vec<String> = pipeline::prepare_data(&cfg).unwrap().target.test.texts.into_iter().take(6).collect();
    let (key_file, store) = (out.join(CLIENT_KEY_FILE), out.join(LOCAL_KEY_STORE));
    assert!(!key_file.exists() && !store.exists(), "a run keeps no key: its report measures key generation");
    let stored = || std::fs::read_dir(&store).map_or(0, |d| d.count());
    let first = pipeline::predict(&cfg, &out, &texts).unwrap();
    let kept = std::fs::read(&key_file).unwrap();
    assert!(stored() >= 1, "the evaluation key is in the store");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600, "the client's secret key is owner-only");
    }
    let close = |a: &[pipeline::Prediction], b: &[pipeline::Prediction]| a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x.probability - y.probability).abs() < 0.1);
    // A new key would be written anew (atomically: a new file renamed over it), even where the test config's
    // seeded keys give it the same bits; a reused one leaves the file as it was.
    let written = |p: &std::path::Path| {
        let m = std::fs::metadata(p).unwrap();
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&m);
        #[cfg(not(unix))]
        let inode = 0;
        (inode, m.modified().unwrap())
    };
    let made = written(&key_file);
    let again = pipeline::predict(&cfg, &out, &texts).unwrap();
    assert_eq!(written(&key_file), made, "the second prediction reuses the key");
    assert_eq!(std::fs::read(&key_file).unwrap(), kept);
    assert!(close(&first, &again));
    // The store lost it: an evaluation key is made again from the kept secret key, and its new id recorded.
    std::fs::remove_dir_all(&store).unwrap();
    assert!(close(&first, &pipeline::predict(&cfg, &out, &texts).unwrap()));
    assert!(stored() >= 1);
    let after: serde_json::Value = serde_json::from_slice(&std::fs::read(&key_file).unwrap()).unwrap();
    let before: serde_json::Value = serde_json::from_slice(&kept).unwrap();
    assert!(after["client_key"] == before["client_key"], "the same secret key");
    // A corrupt key file: a new key, written in its place (the same bits here: the test config seeds its keys).
    std::fs::write(&key_file, b"{ not a key").unwrap();
    assert!(close(&first, &pipeline::predict(&cfg, &out, &texts).unwrap()));
    let renewed: serde_json::Value = serde_json::from_slice(&std::fs::read(&key_file).unwrap()).unwrap();
    assert!(renewed["client_key"].is_array() && renewed["key_id"].is_string());
    // A run made behind another network is refused before any key is made for it.
    std::fs::remove_file(&key_file).unwrap();
    std::fs::remove_dir_all(&store).unwrap();
    let path = out.join("manifest.json");
    let mut manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    manifest["lower_network"] = serde_json::json!("not the network of this run");
    std::fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let err = pipeline::predict(&cfg, &out, &texts).unwrap_err().to_string();
    assert!(err.contains("trained behind the server network"), "{err}");
    assert!(!key_file.exists() && !store.exists(), "no key made for a refused run");
}

/// A run records which server network its features went through (the model id of its program), and `predict`
/// refuses to put the run's head behind another one: a binary that ships a rebuilt network, or a server that
/// rebuilt its model, keeps the config's key but not its outputs.
#[test]
fn predict_refuses_a_server_network_other_than_the_runs() {
    use cryptotl::pipeline;
    let dir = tempfile::tempdir().unwrap();
    let ov = ["curve.enabled=false", "audit.membership=false", "he.enabled=false"].map(String::from);
    let cfg = RunConfig::from_toml_str(&tiny_config(dir.path()), "tiny.toml", &ov).unwrap();
    pipeline::run(&cfg).unwrap();
    let out = cfg.output_dir();
    let path = out.join("manifest.json");
    let mut manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let lower = pipeline::server_lower_network(&cfg).unwrap();
    assert_eq!(manifest["lower_network"].as_str(), Some(pipeline::network_id(&cfg, &lower).unwrap().as_str()));
    let texts = vec!["a lovely wonderful story".to_string()];
    assert_eq!(pipeline::predict(&cfg, &out, &texts).unwrap().len(), 1);
    // The run went through another network than the one the server has now.
    manifest["lower_network"] = serde_json::json!("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
    std::fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let err = pipeline::predict(&cfg, &out, &texts).unwrap_err().to_string();
    assert!(err.contains("trained behind the server network 0123456789ab") && err.contains("run `cryptotl run`"), "{err}");
    // A manifest from before the record: not checked.
    manifest.as_object_mut().unwrap().remove("lower_network");
    std::fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    assert_eq!(pipeline::predict(&cfg, &out, &texts).unwrap().len(), 1);
}

#[test]
fn predict_gives_a_transfer_plus_bow_head_the_score_column_its_run_gave_the_test_rows() {
    use cryptotl::bow::{STACKED_MIN_EXAMPLES, STACKED_SCORER_FILE, StackedScorer};
    use cryptotl::pipeline;
    let dir = tempfile::tempdir().unwrap();
    // The larger fixture is the target, so its training split is large enough for the score not to be left out.
    let text = tiny_config(dir.path())
        .replace("separable_source.csv", "SOURCE")
        .replace("separable_target.csv", "separable_source.csv")
        .replace("SOURCE", "separable_target.csv")
        .replace("[he]\ninsecure_seed = 3", "[he]\nenabled = false");
    let sets = ["curve.enabled=false".into(), "audit.membership=false".into(), "head.inputs=\"transfer+bow\"".into()];
    let cfg = RunConfig::from_toml_str(&text, "tiny.toml", &sets).unwrap();
    pipeline::run(&cfg).unwrap();
    let out = cfg.output_dir();
    let fs = pipeline::FeatureSplit::load(&out.join("features.json")).unwrap();
    assert!(fs.train.nrows() >= STACKED_MIN_EXAMPLES);
    let score_column: Vec<f32> = fs.test.column(fs.test.ncols() - 1).to_vec();
    assert!(score_column.iter().any(|&v| v != 0.0), "the run's test rows carry a score");
    let texts = pipeline::prepare_data(&cfg).unwrap().target.test.texts;
    // The saved model scores the test texts exactly as the run did.
    let key = cryptotl::rundir::features_key(&cfg);
    let path = out.join(STACKED_SCORER_FILE);
    assert_eq!(StackedScorer::load(&path, &key).unwrap().score_texts(&texts), score_column);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600, "a model of the client's texts is owner-only");
    }
    // So `predict` gives the head the inputs it was tested on.
    let predictions = pipeline::predict(&cfg, &out, &texts).unwrap();
    let dev = Default::default();
    let head = cryptotl::model::load_module(pipeline::new_head::<cryptotl::model::Cpu>(&cfg, fs.test.ncols(), &dev), &out.join("head"), &dev).unwrap();
    let want = cryptotl::model::predict_proba(&head, fs.test.view(), &dev);
    assert_eq!(predictions.len(), want.len());
    for (p, w) in predictions.iter().zip(&want) {
        assert!((p.probability - w).abs() < 1e-5, "{} against {w}", p.probability);
    }
    // In batches of any size, with keys made once: the same predictions.
    let mut predictor = pipeline::Predictor::open(&cfg, &out).unwrap();
    let (a, b) = texts.split_at(7);
    let batched: Vec<f32> = [predictor.predict(a).unwrap(), predictor.predict(&[]).unwrap(), predictor.predict(b).unwrap()].concat().iter().map(|p| p.probability).collect();
    predictor.finish().unwrap();
    assert_eq!(batched.len(), want.len());
    assert!(batched.iter().zip(&want).all(|(p, w)| (p - w).abs() < 1e-5));
    // The CLI writes a line per text across its batches of 256, in order.
    let all = pipeline::prepare_data(&cfg).unwrap().target;
    let many: Vec<String> = [all.train.texts, all.validation.texts, all.test.texts].concat();
    assert!(many.len() > 256);
    let file = dir.path().join("many.txt");
    std::fs::write(&file, many.iter().map(|t| format!("{t}\n")).collect::<String>()).unwrap();
    let (code, stdout, err) = cli(&["-q", "predict", "--run", out.to_str().unwrap(), "--input", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<f64> = stdout.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["probability"].as_f64().unwrap()).collect();
    let direct = pipeline::predict(&cfg, &out, &many).unwrap();
    assert_eq!(lines.len(), many.len());
    assert!(lines.iter().zip(&direct).all(|(l, d)| (l - d.probability as f64).abs() < 1e-5));
    // A blank line is no text: answered with nulls in its place, never scored; the library refuses one, named.
    std::fs::write(&file, format!("\n{}\n \t\n{}\n\n", many[0], many[1])).unwrap();
    let (code, stdout, err) = cli(&["-q", "predict", "--run", out.to_str().unwrap(), "--input", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 5, "{stdout}");
    for i in [0, 2, 4] {
        assert_eq!(lines[i], serde_json::json!({"label": null, "probability": null}), "line {}", i + 1);
    }
    for (i, d) in [(1, &direct[0]), (3, &direct[1])] {
        assert!((lines[i]["probability"].as_f64().unwrap() - d.probability as f64).abs() < 1e-5, "line {}", i + 1);
        assert_eq!(lines[i]["label"].as_u64(), Some(d.label as u64));
    }
    let err = pipeline::predict(&cfg, &out, &[many[0].clone(), " ".to_string()]).unwrap_err().to_string();
    assert!(err.contains("text 2 of 2 is blank"), "{err}");
    // Blank lines alone: nulls.
    std::fs::write(&file, "\n \n").unwrap();
    let (code, stdout, err) = cli(&["-q", "predict", "--run", out.to_str().unwrap(), "--input", file.to_str().unwrap()]);
    assert_eq!((code, stdout.lines().count()), (0, 2), "{err}");
    assert!(stdout.lines().all(|l| l == r#"{"label":null,"probability":null}"#), "{stdout}");
    // An input that is no text file is bad input (exit 2), named.
    let (code, _, err) = cli(&["-q", "predict", "--run", out.to_str().unwrap(), "--input", dir.path().to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(dir.path().to_str().unwrap()) && err.contains("cannot read"), "{err}");
    // A file of another run, a corrupt one or none: refused with the file's name, before any encryption.
    let saved = std::fs::read(&path).unwrap();
    assert!(StackedScorer::load(&path, "0123456789abcdef").unwrap_err().to_string().contains("another config"));
    std::fs::write(&path, &saved[..saved.len() / 2]).unwrap();
    let err = pipeline::predict(&cfg, &out, &texts).unwrap_err().to_string();
    assert!(err.contains(STACKED_SCORER_FILE) && err.contains("corrupt"), "{err}");
    std::fs::remove_file(&path).unwrap();
    let err = pipeline::predict(&cfg, &out, &texts).unwrap_err().to_string();
    assert!(err.contains(STACKED_SCORER_FILE) && err.contains("run `cryptotl run"), "{err}");
    // The `features` stage writes it as `run` does.
    let done = pipeline::features(&cfg).unwrap();
    assert_eq!(done.path, out.join("features.json"));
    assert_eq!(StackedScorer::load(&path, &key).unwrap().score_texts(&texts), score_column);
}

#[test]
fn tiny_run_learns_a_separable_target_and_reuses_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = RunConfig::from_toml_str(&tiny_config(dir.path()), "tiny.toml", &[]).unwrap();
    let report = cryptotl::pipeline::run(&cfg).unwrap();
    assert!(!report.pretraining.as_ref().unwrap().from_cache);
    assert!(report.pretraining.as_ref().unwrap().source_test.accuracy > 0.9, "pretraining: {:?}", report.pretraining.as_ref().unwrap().source_test);
    let methods: Vec<&str> = report.results.iter().map(|r| r.method.as_str()).collect();
    assert_eq!(methods, ["transfer", "transfer_float", "transfer_quantized", "raw_features_head", "target_only_network", "bag_of_words"]);
    let bow = report.results.iter().find(|r| r.method == "bag_of_words").unwrap();
    assert!(bow.test.accuracy > 0.85, "bag of words on the separable target: {:?}", bow.test);
    // Learning curves: every size and every method, each point one accuracy per draw, on the test split.
    let curve = report.curve.as_ref().expect("curves are on by default");
    assert_eq!(curve.source_overlap, None, "a run's curves leave the overlap check to its report");
    assert_eq!(curve.sizes, vec![16, 32, 64, report.target.train]);
    assert_eq!(curve.methods, ["transfer", "raw_features", "bag_of_words"]);
    for m in &curve.methods {
        for &s in &curve.sizes {
            let p = curve.point(m, s).unwrap_or_else(|| panic!("no point for {m} at {s}"));
            assert_eq!(p.accuracies.len(), curve.draws);
            assert!(p.accuracies.iter().all(|a| (0.0..=1.0).contains(a)));
        }
    }
    // At the full size every draw is the whole training split: the curve's transfer point is the run's own head.
    assert_eq!(curve.point("transfer", report.target.train).unwrap().mean, report.results[0].test.accuracy);
    assert!(dir.path().join("run/curve.svg").exists());
    // The table's margin column: transfer over the raw-feature head, paired by draw, so its mean is the difference
    // of the two means; its standard error is that of the per-draw differences (0 at the full size).
    let table = curve.to_markdown();
    assert!(table.contains("| transfer − raw_features, points |"), "{table}");
    // What `cryptotl run` prints last: every head's test accuracy (not the diagnostic float and clear-integer
    // heads), the curves at 64 labels with the margin, and each party's ε.
    let headline = report.headline();
    let lines: Vec<&str> = headline.lines().collect();
    assert_eq!(lines.len(), 3, "{headline}");
    let transfer = report.results[0].test.accuracy;
    assert!(lines[0].starts_with(&format!("test accuracy ({} examples): transfer {transfer:.3} (encrypted) · raw_features_head ", report.target.test)), "{headline}");
    assert!(lines[0].contains("bag_of_words") && !lines[0].contains("transfer_float") && !lines[0].contains("transfer_quantized"), "{headline}");
    let (t64, r64, m64) = (curve.point("transfer", 64).unwrap().mean, curve.point("raw_features", 64).unwrap().mean, curve.margin("transfer", "raw_features", 64).unwrap());
    assert!(lines[1].starts_with(&format!("learning curves at 64 labels (mean of {} draws): transfer {t64:.3} · raw_features {r64:.3} · bag_of_words ", curve.draws)), "{headline}");
    assert!(lines[1].ends_with(&format!("; transfer − raw_features {:+.1} ± {:.1} points", 100.0 * m64.mean, 100.0 * m64.std_error)), "{headline}");
    assert_eq!(lines[2], "privacy: client: ε = ∞ (no DP) · server: ε = ∞ (no DP)", "{headline}");
    // The full size is one fit (every draw the whole training split): its row shows single values, no spread.
    let full = table.lines().find(|l| l.starts_with(&format!("| {} |", report.target.train))).expect("a full-size row");
    assert!(full.split('|').skip(2).take(curve.methods.len()).all(|cell| !cell.contains('±')), "{full}");
    for &s in &curve.sizes {
        let row = table.lines().find(|l| l.starts_with(&format!("| {s} |"))).expect("a row per size");
        let cells: Vec<&str> = row.split('|').map(str::trim).skip(2).collect();
        for (m, cell) in curve.methods.iter().zip(&cells) {
            let p = curve.point(m, s).unwrap();
            let varied = p.accuracies.iter().any(|&a| a != p.accuracies[0]);
            assert_eq!(cell.contains('±'), varied, "size {s}, {m}: `{cell}` for {:?}", p.accuracies);
        }
    }
    for &s in &curve.sizes {
        let m = curve.margin("transfer", "raw_features", s).unwrap();
        let (t, r) = (curve.point("transfer", s).unwrap(), curve.point("raw_features", s).unwrap());
        assert!((m.mean - (t.mean - r.mean)).abs() < 1e-12, "size {s}: {m:?}");
        let d: Vec<f64> = t.accuracies.iter().zip(&r.accuracies).map(|(a, b)| a - b).collect();
        let var = d.iter().map(|x| (x - m.mean).powi(2)).sum::<f64>() / (d.len() as f64 - 1.0);
        assert!((m.std_error - (var / d.len() as f64).sqrt()).abs() < 1e-12, "size {s}: {m:?}");
    }
    assert_eq!(curve.margin("transfer", "raw_features", report.target.train).unwrap().std_error, 0.0);
    // Per test example, how many draws got it right: the counts give back every point's accuracies' mean, and the
    // margin's error over the test split's examples comes from them (in the table too, in parentheses).
    for p in &curve.points {
        assert_eq!(p.correct_draws.len(), report.target.test, "{} at {}", p.method, p.size);
        let from_counts = p.correct_draws.iter().map(|&c| f64::from(c)).sum::<f64>() / (curve.draws * report.target.test) as f64;
        assert!((from_counts - p.mean).abs() < 1e-9, "{} at {}: {from_counts} against {}", p.method, p.size, p.mean);
    }
    for m in &curve.margins {
        let t = m.test_std_error.expect("every margin has its test-split error");
        let (a, b) = (curve.point(&m.method, m.size).unwrap(), curve.point(&m.baseline, m.size).unwrap());
        let e: Vec<f64> = a.correct_draws.iter().zip(&b.correct_draws).map(|(&x, &y)| (f64::from(x) - f64::from(y)) / curve.draws as f64).collect();
        let k = e.len() as f64;
        assert!((e.iter().sum::<f64>() / k - m.mean).abs() < 1e-9, "per-example differences average to the margin");
        let var = e.iter().map(|x| (x - m.mean).powi(2)).sum::<f64>() / (k - 1.0);
        assert!((t - (var / k).sqrt()).abs() < 1e-12);
        let row = table.lines().find(|l| l.starts_with(&format!("| {} |", m.size))).unwrap();
        assert!(row.ends_with(&format!("(± {:.1}) |", 100.0 * t)), "{row}");
    }
    // report.json records the same margins, one per size.
    assert_eq!(curve.margins.len(), curve.sizes.len());
    for m in &curve.margins {
        let again = curve.margin(&m.method, &m.baseline, m.size).unwrap();
        assert_eq!((m.method.as_str(), m.baseline.as_str(), m.mean, m.std_error), ("transfer", "raw_features", again.mean, again.std_error));
    }
    let transfer = &report.results[0].test;
    assert!(transfer.accuracy > 0.85, "transfer must learn the separable target: {transfer:?}");
    assert_eq!(report.target.test, 24);
    let c = transfer.confusion;
    assert_eq!(c.tp + c.fp + c.tn + c.fn_, 24);

    // Files a user reads.
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join("run/report.json")).unwrap()).unwrap();
    for key in ["results", "source", "target", "stages", "config", "seed", "pretraining", "he"] {
        assert!(json.get(key).is_some(), "report.json lacks {key}");
    }
    // The encrypted stage ran on every client sample and says what it cost.
    let he = report.he.as_ref().expect("encrypted by default");
    assert_eq!(he.samples, 120);
    // Nothing was resumed, and the pass's journal is gone once it succeeded.
    assert_eq!(he.resumed_samples, 0);
    let left: Vec<_> = std::fs::read_dir(dir.path().join("run")).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".journal")).collect();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!((he.neurons, he.outputs, he.counts.bootstraps), (12, 10, 12));
    assert!(he.upload_bytes_per_sample < 256 * 8 + 300, "seeded upload: {}", he.upload_bytes_per_sample);
    // Each pooled output sums 3 lookups, each one level off at a few percent (p = 5).
    // The one-process simulation compares every decrypted output with the clear-integer oracle.
    assert_eq!(he.server, "local");
    let (rate, max) = (he.off_oracle_rate.expect("local run has the oracle"), he.max_level_difference.expect("local run has the oracle"));
    assert!(rate < 0.4 && max < 1 << he.output_bits, "{he:?}");
    assert!(he.server_seconds_median > 0.0 && he.server_seconds_p95 >= he.server_seconds_median);
    assert_eq!(he.accuracy_encrypted, transfer.accuracy);
    // The encryption statement says what held for these outputs, not tfhe-rs's figure for its own message space.
    let tfhe = &report.budget.tfhe;
    assert_eq!((tfhe.measured_off_oracle_rate, tfhe.measured_max_level_difference), (Some(rate), Some(max)));
    assert!(tfhe.statement.contains(&format!("{:.2}% of the decrypted outputs differ", 100.0 * rate)), "{}", tfhe.statement);
    assert!(he.accuracy_float > 0.85 && he.accuracy_quantized > 0.85, "{he:?}");
    let md = std::fs::read_to_string(dir.path().join("run/report.md")).unwrap();
    assert!(md.contains("| transfer |") && md.contains("Wall time per stage") && md.contains("Encrypted lower network (TFHE)"));
    // The server side, measured: the membership attack on the source data the network was just trained on.
    let membership = report.budget.source_membership.as_ref().expect("[audit] membership is on by default");
    assert_eq!(membership.provenance, "measured in this run");
    let attack = membership.attack.as_ref().unwrap();
    let (source, _) = cryptotl::pipeline::load_source(&cfg).unwrap();
    assert_eq!((attack.members, attack.non_members, attack.reference), (source.test.texts.len(), source.test.texts.len(), source.validation.texts.len()));
    assert!(md.contains("Server, measured: membership inference on the source data"), "{md}");
    // The contamination check: no target text is among the source texts the network learned from.
    match report.source_overlap.as_ref().expect("checked in one process") {
        cryptotl::overlap::OverlapCheck::Checked(o) => assert_eq!((o.total(), o.source_texts), (0, source.train.len() + source.validation.len()), "{o:?}"),
        other => panic!("{other:?}"),
    }
    assert!(md.contains("Target texts among the server's source training texts") && md.contains(": none ("), "{md}");
    assert!(!report.headline().contains("source overlap"), "{}", report.headline());
    assert!(dir.path().join("run/head.bin").exists() && dir.path().join("run/client_features.json").exists());
    let saved = RunConfig::load(&dir.path().join("run/config.toml"), &[]).unwrap();
    assert_eq!(saved, cfg, "the config saved beside the head reproduces the run's config");

    // Second run: the lower network comes from the cache, and the results are identical (seeded throughout).
    // Without the membership attack this time: the budget then has no figure (and the key is unchanged).
    let quiet = cfg.edited("test", |c| c.audit.membership = false).unwrap();
    let again = cryptotl::pipeline::run(&quiet).unwrap();
    assert!(again.budget.source_membership.is_none());
    assert!(again.pretraining.as_ref().unwrap().from_cache);
    assert_eq!(again.results[0].test, report.results[0].test);
    assert_eq!(again.pretraining.as_ref().unwrap().source_test, report.pretraining.as_ref().unwrap().source_test);
}

/// A server whose source holds the client's own data is caught: the run counts, per split, the target texts its
/// network learned from (the source's training and validation texts, compared with case and spacing folded), says so
/// in `report.md`, and a network loaded from the cache is checked the same way (its source texts loaded again).
#[test]
fn a_run_counts_the_target_texts_its_server_network_learned_from() {
    let dir = tempfile::tempdir().unwrap();
    // The target's file, shouted, re-spaced and in reverse order (so it is split otherwise than the target),
    // beside the usual source: the same texts for the check.
    let target_rows = std::fs::read_to_string(format!("{}/separable_target.csv", common::FX)).unwrap();
    let mut lines: Vec<&str> = target_rows.lines().collect();
    lines[1..].reverse();
    let shouted: String = lines.iter().enumerate().map(|(i, l)| if i == 0 { format!("{l}\n") } else { format!("{}\n", l.to_uppercase().replace(' ', "  ")) }).collect();
    let copy = dir.path().join("target_copy.csv");
    std::fs::write(&copy, shouted).unwrap();
    let toml = tiny_config(dir.path()).replace(
        &format!("paths = [\"{}/separable_source.csv\"]", common::FX),
        &format!("paths = [\"{}/separable_source.csv\", {:?}]", common::FX, copy.display().to_string()),
    );
    let ov = ["he.enabled=false", "curve.enabled=false", "audit.membership=false", "baselines.target_only_network=false"].map(String::from);
    let cfg = RunConfig::from_toml_str(&toml, "tiny.toml", &ov).unwrap();
    for pass in ["pretrained now", "from the cache"] {
        let report = cryptotl::pipeline::run(&cfg).unwrap();
        assert_eq!(report.pretraining.as_ref().unwrap().from_cache, pass == "from the cache");
        let o = match report.source_overlap.as_ref().unwrap() {
            cryptotl::overlap::OverlapCheck::Checked(o) => o.clone(),
            other => panic!("{pass}: {other:?}"),
        };
        // The copy was split on its own: the part the network learned from (training and validation) holds about
        // 80% of its texts, the rest sits in the source's test part. Every target text is in the copy, so each
        // split's count is how many of its texts landed in the copy's learned part.
        let t = &report.target;
        assert_eq!(o.target_sizes, [t.train, t.validation, t.test]);
        let (source, _) = cryptotl::pipeline::load_source(&cfg).unwrap();
        let learned = cryptotl::overlap::SourceFingerprints::of_source(&source);
        let data = cryptotl::pipeline::prepare_data(&cfg).unwrap();
        assert_eq!((o.train, o.validation, o.test), (learned.count_in(&data.target.train.texts), learned.count_in(&data.target.validation.texts), learned.count_in(&data.target.test.texts)));
        assert!(o.test > t.test / 3 && o.train > t.train / 3 && o.train < t.train, "{pass}: {o:?}");
        let md = std::fs::read_to_string(dir.path().join("run/report.md")).unwrap();
        assert!(md.contains("**Target texts among the server's source training texts**") && md.contains(&format!("{} of {} test texts", o.test, t.test)), "{md}");
        // The run's last lines say so too, under the test accuracy.
        let headline = report.headline();
        assert!(headline.lines().nth(1).unwrap().starts_with(&format!("source overlap: {} of the {} test texts", o.test, t.test)), "{headline}");
        assert_eq!(o.sentences, None, "the network sees whole texts: no sentence count");
    }
    // `cryptotl curve` says so too, under its table.
    let curves = cryptotl::pipeline::curves(&cfg, None).unwrap();
    let report = cryptotl::pipeline::run(&cfg).unwrap();
    assert_eq!(curves.source_overlap, report.source_overlap);
    assert!(curves.to_markdown().contains("**Target texts among the server's source training texts**"));
}

/// With `head.transfer_unit = "sentence"` the network sees sentences, so the check counts the target's sentences
/// among the source texts too: here every target text is two sentences, and the first sentence of each of half the
/// texts is a source text. No whole target text is.
#[test]
fn a_sentence_unit_run_counts_the_target_sentences_its_server_network_learned_from() {
    let dir = tempfile::tempdir().unwrap();
    let rows = common::fixture_rows("separable_target.csv");
    let target: String = std::iter::once("label,text\n".to_string())
        .chain(rows.iter().map(|(label, text)| format!("{label},{text} . and that is what i think of it .\n")))
        .collect();
    let source: String = std::iter::once("label,text\n".to_string())
        .chain(rows.iter().step_by(2).map(|(label, text)| format!("{label},{} .\n", text.to_uppercase())))
        .collect();
    let (target_file, source_file) = (dir.path().join("reviews.csv"), dir.path().join("their_sentences.csv"));
    std::fs::write(&target_file, target).unwrap();
    std::fs::write(&source_file, source).unwrap();
    let toml = tiny_config(dir.path())
        .replace(&format!("paths = [\"{}/separable_target.csv\"]", common::FX), &format!("paths = [{:?}]", target_file.display().to_string()))
        .replace(
            &format!("paths = [\"{}/separable_source.csv\"]", common::FX),
            &format!("paths = [\"{}/separable_source.csv\", {:?}]", common::FX, source_file.display().to_string()),
        );
    let ov = ["he.enabled=false", "curve.enabled=false", "audit.membership=false", "baselines.target_only_network=false", "head.transfer_unit=\"sentence\""].map(String::from);
    let cfg = RunConfig::from_toml_str(&toml, "tiny.toml", &ov).unwrap();
    let report = cryptotl::pipeline::run(&cfg).unwrap();
    let o = match report.source_overlap.as_ref().unwrap() {
        cryptotl::overlap::OverlapCheck::Checked(o) => o.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(o.total(), 0, "no whole target text is a source text: {o:?}");
    let s = o.sentences.clone().expect("sentence units: sentences counted");
    let t = &report.target;
    // Both sentences of every text are long enough to compare; a found one is a first sentence, so at most one a text.
    assert_eq!(s.compared, [2 * t.train, 2 * t.validation, 2 * t.test]);
    assert_eq!(s.found, s.texts);
    // The copied sentences were split with the source: those in its learned part (training and validation) count.
    let (loaded, _) = cryptotl::pipeline::load_source(&cfg).unwrap();
    let learned = cryptotl::overlap::SourceFingerprints::of_source(&loaded);
    let data = cryptotl::pipeline::prepare_data(&cfg).unwrap();
    let first_found = |texts: &[String]| texts.iter().filter(|x| learned.contains(x.split(" and that").next().unwrap())).count();
    assert_eq!(s.found, [first_found(&data.target.train.texts), first_found(&data.target.validation.texts), first_found(&data.target.test.texts)]);
    assert!(s.found[0] > t.train / 4 && s.found[0] < t.train / 2 + 1 && s.found[2] > 0, "{s:?}");
    let md = std::fs::read_to_string(dir.path().join("run/report.md")).unwrap();
    assert!(md.contains("**Their sentences among the source texts** (6 words or more") && md.contains(&format!("{} of {} in test ({})", s.found[2], 2 * t.test, s.texts[2])), "{md}");
    let headline = report.headline();
    assert!(headline.contains(&format!("{} test and {} training texts have sentences among them", s.texts[2], s.texts[0])), "{headline}");
}

/// `predict` and `embed` answer a pipe as its texts come: three texts written and the pipe left open get their three
/// lines back (before, both read to the end of the input first, so a live stream got nothing until it closed).
#[test]
fn predict_and_embed_answer_a_pipe_before_it_closes() {
    use std::io::{BufRead as _, Write as _};
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let text = tiny_config(dir.path()).replace("[he]\ninsecure_seed = 3", "[he]\nenabled = false");
    let config = dir.path().join("tiny.toml");
    std::fs::write(&config, &text).unwrap();
    let cfg = RunConfig::from_toml_str(&text, "tiny.toml", &["curve.enabled=false".into(), "audit.membership=false".into()]).unwrap();
    cryptotl::pipeline::run(&cfg).unwrap();
    let run = cfg.output_dir();
    // Predictions share the run folder's lock: two at once, and no run or stage rewrites the folder under them;
    // none starts while a run holds it.
    let (a, b) = (cryptotl::pipeline::Predictor::open(&cfg, &run).unwrap(), cryptotl::pipeline::Predictor::open(&cfg, &run).unwrap());
    let err = cryptotl::pipeline::prepare_output_dir(&cfg).unwrap_err().to_string();
    assert!(err.contains("another cryptotl run is using this directory"), "{err}");
    drop((a, b));
    let held = cryptotl::pipeline::prepare_output_dir(&cfg).unwrap();
    let err = cryptotl::pipeline::Predictor::open(&cfg, &run).err().expect("a run holds the folder").to_string();
    assert!(err.contains("is writing this directory"), "{err}");
    drop(held);
    for args in [vec!["-q", "predict", "--run", run.to_str().unwrap()], vec!["-q", "embed", config.to_str().unwrap()]] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cryptotl")).args(&args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                if tx.send(line.unwrap()).is_err() {
                    break;
                }
            }
        });
        for i in 0..3 {
            writeln!(stdin, "a good text number {i}").unwrap();
        }
        stdin.flush().unwrap();
        for i in 0..3 {
            assert!(rx.recv_timeout(std::time::Duration::from_secs(120)).is_ok(), "{args:?}: line {i} did not come while the pipe was open");
        }
        writeln!(stdin, "one more").unwrap();
        drop(stdin);
        assert!(child.wait().unwrap().success(), "{args:?}");
        reader.join().unwrap();
        assert_eq!(rx.try_iter().count(), 1, "{args:?}: a line per text");
    }
    // `--input FILE` reads what stdin would: the same lines for both commands; a file that is not there is bad input.
    let texts = "a good text\n\nnot a good one\n";
    let file = dir.path().join("texts.txt");
    std::fs::write(&file, texts).unwrap();
    for args in [vec!["-q", "predict", "--run", run.to_str().unwrap()], vec!["-q", "embed", config.to_str().unwrap()]] {
        let piped = {
            let mut child = Command::new(env!("CARGO_BIN_EXE_cryptotl")).args(&args).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
            child.stdin.take().unwrap().write_all(texts.as_bytes()).unwrap();
            child.wait_with_output().unwrap()
        };
        assert!(piped.status.success(), "{args:?}");
        let (code, out, err) = cli(&[&args[..], &["--input", file.to_str().unwrap()]].concat());
        assert_eq!(code, 0, "{args:?}: {err}");
        assert_eq!(out.lines().count(), 3, "{args:?}: a line per text, the blank one too");
        assert_eq!(out, String::from_utf8(piped.stdout).unwrap(), "{args:?}");
        let (code, _, err) = cli(&[&args[..], &["--input", dir.path().join("none.txt").to_str().unwrap()]].concat());
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains("none.txt: cannot read"), "{args:?}: {err}");
    }
}

fn cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cryptotl")).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn cli_stage_subcommands_reuse_the_library() {
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("tiny.toml");
    std::fs::write(&cfg_path, tiny_config(dir.path())).unwrap();
    let c = cfg_path.to_str().unwrap();
    let (code, out, err) = cli(&["-q", "pretrain", c]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("pretrained and saved"), "{out}");
    let (code, out, _) = cli(&["-q", "pretrain", c]);
    assert!(code == 0 && out.contains("loaded from"), "{out}");
    let (code, _, err) = cli(&["-q", "evaluate", c]);
    assert_eq!(code, 1, "evaluate before features must fail: {err}");
    assert!(err.contains("cryptotl features"), "{err}");
    for stage in ["features", "train-head"] {
        let (code, _, err) = cli(&["-q", stage, c]);
        assert_eq!(code, 0, "{stage}: {err}");
    }
    let (code, out, err) = cli(&["-q", "evaluate", c]);
    assert_eq!(code, 0, "{err}");
    let m: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(m["accuracy"].as_f64().unwrap() > 0.85, "{out}");
    // `predict`: new texts through the run's featurizer, the encrypted path and its head, one JSON line each.
    let rows: Vec<(u8, String)> = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/separable_target.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .take(24)
        .map(|l| { let (y, t) = l.split_once(',').unwrap(); (y.parse().unwrap(), t.to_string()) })
        .collect();
    let texts = dir.path().join("texts.txt");
    std::fs::write(&texts, rows.iter().map(|r| format!("{}\n", r.1)).collect::<String>()).unwrap();
    let run_dir = dir.path().join("run");
    let (code, out, err) = cli(&["-q", "predict", "--run", run_dir.to_str().unwrap(), "--input", texts.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let predictions: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(predictions.len(), rows.len());
    let right = predictions.iter().zip(&rows).filter(|(p, r)| p["label"].as_u64() == Some(r.0 as u64)).count();
    assert!(right >= 21, "{right} of {} right: {out}", rows.len());
    assert!(predictions.iter().all(|p| (0.0..=1.0).contains(&p["probability"].as_f64().unwrap())));
    // A config that does not match the run directory is a clear error (exit 2) naming the key, not a panic and
    // not a head scored on another split's features.
    for (args, needle) in [(vec!["--set", "head.kind=\"mlp\""], "head.kind"), (vec!["--seed", "6"], "key `seed`: the features in this run directory were made by another config: seed: 5 in the run, 6 here")] {
        let all: Vec<&str> = ["-q", "evaluate", c].into_iter().chain(args.iter().copied()).collect();
        let (code, _, err) = cli(&all);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    // A manifest written by an earlier cryptotl, before a key this one records as unset (so another features key),
    // holds the features this config makes: it is taken, with its own key (the hash of what it records). An edited
    // one, whose key is not that hash, is refused saying so, not as another config.
    let manifest_path = dir.path().join("run").join("manifest.json");
    {
        let kept = std::fs::read(&manifest_path).unwrap();
        let mut m: serde_json::Value = serde_json::from_slice(&kept).unwrap();
        let unset = m["features_config"]["server_privacy"].as_object_mut().unwrap().remove("dp_pretraining");
        assert_eq!(unset, Some(serde_json::Value::Null));
        let earlier_key = cryptotl::rundir::features_key_of(&m["features_config"]);
        assert_ne!(m["features_key"].as_str(), Some(earlier_key.as_str()));
        m["features_key"] = serde_json::json!(earlier_key);
        std::fs::write(&manifest_path, serde_json::to_vec(&m).unwrap()).unwrap();
        for stage in ["evaluate", "train-head"] {
            let (code, _, err) = cli(&["-q", stage, c]);
            assert_eq!(code, 0, "{stage} on an earlier cryptotl's run folder: {err}");
        }
        let after: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
        assert_eq!(after["features_key"].as_str(), Some(earlier_key.as_str()), "train-head keeps the run's own key");
        // Made on the days the material held server_privacy.total_epsilon (unset here too), and before the key: taken.
        let mut with_total = m.clone();
        with_total["features_config"]["server_privacy"]["total_epsilon"] = serde_json::Value::Null;
        with_total["features_key"] = serde_json::json!(cryptotl::rundir::features_key_of(&with_total["features_config"]));
        std::fs::write(&manifest_path, serde_json::to_vec(&with_total).unwrap()).unwrap();
        let (code, _, err) = cli(&["-q", "evaluate", c]);
        assert_eq!(code, 0, "a run folder of the total's days, before the key: {err}");
        std::fs::write(&manifest_path, serde_json::to_vec(&m).unwrap()).unwrap();
        // Another seed is still another config, named as such.
        let (code, _, err) = cli(&["-q", "evaluate", c, "--seed", "6"]);
        assert!(code == 2 && err.contains("another config: seed: 5 in the run, 6 here; rerun"), "{err}");
        m["features_key"] = serde_json::json!("0123456789abcdef");
        std::fs::write(&manifest_path, serde_json::to_vec(&m).unwrap()).unwrap();
        let (code, _, err) = cli(&["-q", "evaluate", c]);
        assert!(code == 2 && err.contains("key `server_privacy.dp_pretraining`") && err.contains("made by an earlier cryptotl")
            && err.contains("edited or damaged manifest") && !err.contains("another config"), "{err}");
        std::fs::write(&manifest_path, kept).unwrap();
    }
    // A manifest from before it kept its config's material still refuses, naming the sections the key covers.
    {
        let text = std::fs::read_to_string(&manifest_path).unwrap();
        let mut m: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(m["features_config"].is_object(), "{text}");
        m.as_object_mut().unwrap().remove("features_config");
        std::fs::write(&manifest_path, serde_json::to_vec(&m).unwrap()).unwrap();
        let (code, _, err) = cli(&["-q", "evaluate", c, "--seed", "6"]);
        assert!(code == 2 && err.contains("seed / features / source") && err.contains("another config"), "{err}");
        let (code, _, err) = cli(&["-q", "evaluate", c]);
        assert_eq!(code, 0, "the old manifest still serves its own config: {err}");
    }
    // The MLP head's shape: a head trained with pool 3 is not loaded into a config saying 1.
    for stage in ["train-head", "evaluate"] {
        let (code, _, err) = cli(&["-q", stage, c, "--set", "head.kind=\"mlp\"", "--set", "head.pool=3"]);
        assert_eq!(code, 0, "{stage}: {err}");
    }
    let (code, _, err) = cli(&["-q", "evaluate", c, "--set", "head.kind=\"mlp\"", "--set", "head.pool=1"]);
    assert!(code == 2 && err.contains("head.pool"), "{err}");
    // Features with a label that is not 0/1 are refused.
    let features = dir.path().join("run/features.json");
    let mut f: serde_json::Value = serde_json::from_slice(&std::fs::read(&features).unwrap()).unwrap();
    f["test_y"][0] = serde_json::json!(7);
    std::fs::write(&features, serde_json::to_vec(&f).unwrap()).unwrap();
    let (code, _, err) = cli(&["-q", "evaluate", c, "--set", "head.kind=\"mlp\"", "--set", "head.pool=3"]);
    assert!(code != 0 && err.contains("labels are 0 or 1"), "{err}");
    // `run` writes everything `evaluate` needs.
    let (code, out, err) = cli(&["-q", "run", c, "--set", "he.enabled=false", "--set", "curve.enabled=false"]);
    assert_eq!(code, 0, "{err}");
    // Its last lines: the outcome in brief (no curves in this run), then where the report is.
    let last: Vec<&str> = out.lines().rev().take(3).collect();
    assert!(last[0].starts_with("report written to ") && last[1] == "privacy: client: ε = ∞ (no DP) · server: ε = ∞ (no DP)" && last[2].starts_with("test accuracy (") && last[2].contains(": transfer "), "{out}");
    assert!(!last[2].contains("(encrypted)"), "the lower network ran in the clear: {out}");
    let (code, _, err) = cli(&["-q", "evaluate", c, "--set", "he.enabled=false", "--set", "curve.enabled=false"]);
    assert_eq!(code, 0, "evaluate after run: {err}");
}

#[test]
fn cli_rejects_bad_input_with_exit_code_2_and_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, tiny_config(dir.path()).replace("hidden = 12", "hidden = 0")).unwrap();
    let (code, _, err) = cli(&["check-config", bad.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("bad.toml") && err.contains("lower.hidden"), "{err}");

    let (code, _, err) = cli(&["run", "no/such.toml"]);
    assert_eq!(code, 2);
    assert!(err.contains("no/such.toml"), "{err}");

    // `predict` given a folder that is not a run, or none: says which, and what to give.
    let gone = dir.path().join("gone");
    let (code, _, err) = cli(&["-q", "predict", "--run", gone.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("does not exist") && err.contains("cryptotl run"), "{err}");
    let (code, _, err) = cli(&["-q", "predict", "--run", dir.path().to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("has no config.toml"), "{err}");

    let missing_data = dir.path().join("missing.toml");
    std::fs::write(&missing_data, tiny_config(dir.path()).replace("separable_target.csv", "gone.csv")).unwrap();
    let (code, _, err) = cli(&["-q", "run", missing_data.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("gone.csv") && err.contains("cannot read"), "{err}");

    // A key found wrong only once the run starts (where the server's token is) is named with its config's file, as
    // a key wrong at load time is; the embedded default names itself.
    let bad_server = dir.path().join("bad_server.toml");
    std::fs::write(&bad_server, tiny_config(dir.path())).unwrap();
    let no_token = ["--set", "he.server=\"http://127.0.0.1:9\"", "--set", "he.token_env=\"CRYPTOTL_TEST_NO_SUCH_TOKEN\""];
    let (code, _, err) = cli(&[&["-q", "run", bad_server.to_str().unwrap()][..], &no_token].concat());
    assert_eq!(code, 2);
    assert!(err.contains("bad_server.toml: key `he.token_env`") && err.contains("CRYPTOTL_TEST_NO_SUCH_TOKEN"), "{err}");
    // A remote server with he.enabled = false (the server's network here, in plaintext) is refused at load.
    let (code, _, err) = cli(&[&["-q", "run", bad_server.to_str().unwrap(), "--set", "he.enabled=false"][..], &no_token].concat());
    assert_eq!(code, 2);
    assert!(err.contains("bad_server.toml: key `he.server`") && err.contains("he.enabled = false"), "{err}");
    let (code, _, err) = cli(&["-q", "audit", "--set", "privacy.target_epsilon=1", "--set", "head.kind=\"mlp\"", "--output-dir", dir.path().join("a").to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("configs/quickstart.toml (embedded): key `head.kind`"), "{err}");

    // Sweeps check their ε lists and settings before any work, and a refused sweep leaves no folder behind.
    let out = dir.path().join("sweep-out");
    let out_arg = out.to_str().unwrap();
    let (code, _, err) = cli(&["-q", "sweep", "--client-epsilons", "1,0", "--out", out_arg]);
    assert_eq!(code, 2);
    assert!(err.contains("ε must be a number > 0"), "{err}");
    // A negative ε reaches the same check (it is not taken for a flag).
    for (lists, first) in [(vec!["--client-epsilons", "-1"], "-1"), (vec!["--client-epsilons", "1", "--server-epsilons", "-2,1"], "-2")] {
        let args: Vec<&str> = ["-q", "sweep"].into_iter().chain(lists.iter().copied()).chain(["--out", out_arg]).collect();
        let (code, _, err) = cli(&args);
        assert!(code == 2 && err.contains("ε must be a number > 0") && err.contains(&format!("got \"{first}\"")), "{lists:?}: {err}");
    }
    let (code, _, err) = cli(&["-q", "sweep", "--client-epsilons", "1", "--server-epsilons", "2", "--out", out_arg]);
    assert_eq!(code, 2);
    assert!(err.contains("l2_sensitivity"), "{err}");
    assert!(!out.exists(), "a refused sweep created {}", out.display());
    // So does a refused audit: no [privacy], or a canary count out of range.
    let audit_out = dir.path().join("audit-out");
    let audit_arg = audit_out.to_str().unwrap();
    let (code, _, err) = cli(&["-q", "audit", "--output-dir", audit_arg]);
    assert_eq!(code, 2);
    assert!(err.contains("[privacy]"), "{err}");
    let (code, _, err) = cli(&["-q", "audit", "--set", "privacy.target_epsilon=1", "--canaries", "1", "--output-dir", audit_arg]);
    assert_eq!(code, 2);
    assert!(err.contains("canaries") && err.contains("got 1"), "{err}");
    assert!(!audit_out.exists(), "a refused audit created {}", audit_out.display());
    // A curve, sweep or audit into a folder another command holds is refused at once, naming it.
    let held = dir.path().join("held");
    let _lock = cryptotl::atomic::claim_dir(&held).unwrap();
    let held_arg = held.to_str().unwrap();
    for args in [
        vec!["-q", "curve", "--out", held_arg],
        vec!["-q", "sweep", "--client-epsilons", "1", "--out", held_arg],
        vec!["-q", "audit", "--set", "privacy.target_epsilon=1", "--output-dir", held_arg],
    ] {
        let (code, _, err) = cli(&args);
        assert_eq!(code, 1, "{args:?}: a busy folder is not bad input, so exit 1 as for a run");
        assert!(err.contains("another cryptotl run is using this directory") && err.contains("held"), "{args:?}: {err}");
    }
    // A folder that cannot be written (here: under a file) is the user's argument, so exit 2, naming it.
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    let under = file.join("out");
    let (code, _, err) = cli(&["-q", "curve", "--out", under.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&format!("output folder {}", under.display())) && err.contains("cannot write"), "{err}");

    let (code, out, err) = cli(&["check-config", "--set", "lower.hidden=128"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("hidden = 128"), "the embedded quickstart with an override: {out}");
}

#[test]
fn private_head_learns_and_the_report_states_its_budget() {
    let dir = tempfile::tempdir().unwrap();
    let text = tiny_config(dir.path()) + "[privacy]\ntarget_epsilon = 8.0\nmax_grad_norm = 1.0\ninsecure_seed = 11\n";
    let mut cfg = RunConfig::from_toml_str(&text, "tiny.toml", &[]).unwrap();
    cfg.he.enabled = false; // this test is about DP; it rebuilds the plaintext transferred features below
    cfg.baselines.raw_features_head = false;
    cfg.baselines.target_only_network = false;
    let report = cryptotl::pipeline::run(&cfg).unwrap();
    let dp = report.results.iter().find(|r| r.method == "transfer_dp").expect("a DP row");
    assert!(dp.test.accuracy > 0.75, "DP head on a separable target: {:?}", dp.test);
    let p = report.privacy.as_ref().expect("privacy section");
    use cryptotl::privacy::AccountantKind;
    let eps_of = |k: AccountantKind| p.epsilons.iter().find(|e| e.accountant == k).unwrap().epsilon.unwrap();
    // The accountant of record is the tightest valid one: at q = 1 the exact Gaussian composition itself, which
    // the PLD's answer is never below.
    let (record, pld) = (eps_of(AccountantKind::Tightest), eps_of(AccountantKind::Pld));
    assert_eq!(p.plan.accountant, AccountantKind::Tightest);
    assert!(record <= 8.0 && record > 7.9, "calibrated to the target: {record}");
    assert_eq!(record, cryptotl::privacy::exact::gaussian_epsilon(p.plan.noise_multiplier, 100, p.plan.delta).unwrap());
    assert!(pld >= record * (1.0 - 1e-9), "PLD {pld} below the exact {record}");
    // The default recipe: full batch, 100 steps, reported in ten rounds of ten.
    assert_eq!((p.plan.recipe, p.plan.sampling_rate, p.plan.steps_allowed), (cryptotl::config::DpRecipe::FullBatch, 1.0, 100));
    assert_eq!(p.per_epoch.len(), 10);
    assert!(p.per_epoch.windows(2).all(|w| w[0].epsilon < w[1].epsilon));
    assert!((p.per_epoch.last().unwrap().epsilon - record).abs() < 1e-9);
    assert!(p.plan.delta < 1.0 / p.plan.examples as f64);
    // The audit runs beside the DP head and never proves more than the accountant claims.
    let audit = report.audit.as_ref().expect("an audit beside the DP head");
    assert_eq!(audit.canaries, 1000);
    assert!(audit.epsilon_lower_bound <= audit.epsilon_claimed, "{audit:?}");
    let md = std::fs::read_to_string(dir.path().join("run/report.md")).unwrap();
    assert!(md.contains("Privacy of the client's training data") && md.contains("FIXED seed"));
    // The saved head is the private one: evaluated on the same transferred test features it reproduces the DP
    // row exactly (the non-private head would not).
    let data = cryptotl::pipeline::prepare_data(&cfg).unwrap();
    let lower = cryptotl::pipeline::server_lower_network(&cfg).unwrap();
    let (_, client) = cryptotl::pipeline::client_features(&cfg, &data.target).unwrap();
    let fs = client.map(|x| cryptotl::pipeline::lower_forward(&lower.net, x)).unwrap();
    let skeleton = cryptotl::pipeline::new_head::<cryptotl::model::Cpu>(&cfg, fs.test.ncols(), &Default::default());
    let saved = cryptotl::model::load_module(skeleton, &dir.path().join("run/head"), &Default::default()).unwrap();
    assert_eq!(cryptotl::pipeline::evaluate(&saved, &fs), dp.test);
    let plain = cryptotl::pipeline::train_head(&cfg, &fs, "plain").unwrap();
    let dev = Default::default();
    assert_ne!(
        cryptotl::model::predict_proba(&saved, fs.test.view(), &dev),
        cryptotl::model::predict_proba(&plain.trained.model, fs.test.view(), &dev),
        "the saved head must not be the non-private one"
    );
    // With the (test-only) fixed seed, the private run is reproducible.
    let again = cryptotl::pipeline::run(&cfg).unwrap();
    assert_eq!(again.results.iter().find(|r| r.method == "transfer_dp").unwrap().test, dp.test);
}

#[test]
fn a_private_heads_features_come_through_a_map_fitted_on_no_data() {
    // DP-SGD bounds what one example does to the head through its own features. A min-max range or IDF weight
    // fitted on the training split would let one example move every other example's features, outside what the
    // accountant counts; with [privacy] on, a test text's features must not depend on the training split at all.
    let dir = tempfile::tempdir().unwrap();
    let private = tiny_config(dir.path()) + "[privacy]\ntarget_epsilon = 8.0\n";
    let cfg = RunConfig::from_toml_str(&private, "tiny.toml", &[]).unwrap();
    assert!(cfg.client_privacy().is_some());
    let data = cryptotl::pipeline::prepare_data(&cfg).unwrap();
    let mut fewer = data.target.clone();
    let half = fewer.train.texts.len() / 2;
    fewer.train.texts.truncate(half);
    fewer.train.labels.truncate(half);
    let test_rows = |split: &cryptotl::data::Split, private: bool| cryptotl::pipeline::client_features_for(&cfg, split, private).unwrap().1.test;
    assert_eq!(test_rows(&data.target, true), test_rows(&fewer, true));
    assert_eq!(cryptotl::pipeline::client_features(&cfg, &data.target).unwrap().1.test, test_rows(&data.target, true));
    // The fitted map does depend on it (so the equality above is a real check).
    assert_ne!(test_rows(&data.target, false), test_rows(&fewer, false));
    // Features made without [privacy] are not reused for a DP-SGD head: a clear error, not a head whose ε is wrong.
    let (plain_path, private_path) = (dir.path().join("plain.toml"), dir.path().join("private.toml"));
    std::fs::write(&plain_path, tiny_config(dir.path())).unwrap();
    std::fs::write(&private_path, &private).unwrap();
    let (code, _, err) = cli(&["-q", "features", plain_path.to_str().unwrap(), "--set", "he.enabled=false"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = cli(&["-q", "train-head", private_path.to_str().unwrap(), "--set", "he.enabled=false"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("[privacy] on"), "{err}");
}

#[test]
fn a_run_beyond_its_budget_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let text = tiny_config(dir.path()) + "[privacy]\nnoise_multiplier = 0.5\ntarget_epsilon = 1.0\n";
    let cfg_path = dir.path().join("over.toml");
    std::fs::write(&cfg_path, text).unwrap();
    let (code, _, err) = cli(&["-q", "run", cfg_path.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("would spend ε =") && err.contains("refusing to start"), "{err}");
    assert!(!dir.path().join("cache").exists(), "nothing was trained before refusing");
}

#[test]
fn dp_heads_centre_on_points_made_from_the_config_and_the_server_network_only() {
    // `pipeline::dp_references` takes no client data at all (its signature is the proof that centring costs no ε); here:
    // the transfer outputs' reference is the middle of their range over the server's source training data, the
    // own features' the image of zero under the data-independent map.
    let dir = tempfile::tempdir().unwrap();
    let cfg = RunConfig::from_toml_str(&tiny_config(dir.path()), "tiny.toml", &["he.enabled=false".into(), "head.inputs=\"transfer+own\"".into()]).unwrap();
    let lower = cryptotl::pipeline::server_lower_network(&cfg).unwrap();
    let data = cryptotl::pipeline::prepare_data(&cfg).unwrap();
    let (_, client) = cryptotl::pipeline::client_features(&cfg, &data.target).unwrap();
    let (transferred, _) = cryptotl::pipeline::transfer(&cfg, &lower, &cryptotl::pipeline::TransferInput::texts(&client)).unwrap();
    let (t, d) = (transferred.train.ncols(), client.train.ncols());
    let ranges = cryptotl::pipeline::transfer_output_ranges(&cfg, &lower).expect("no dense layer after the activation");
    assert_eq!(ranges.len(), t);
    // The ranges hold every source training example's outputs (pooled over tiny's window of 3).
    let (source, _) = cryptotl::pipeline::load_source(&cfg).unwrap();
    let out = cryptotl::pipeline::lower_forward(&lower.net, &lower.features.transform(&source.train.texts).unwrap()).unwrap();
    for row in out.rows() {
        for (v, (lo, hi)) in row.iter().zip(&ranges) {
            assert!(lo - 1e-4 <= *v && *v <= hi + 1e-4, "{v} outside [{lo}, {hi}]");
        }
    }
    let r = cryptotl::pipeline::dp_references(&cfg, Some(&lower), t, d);
    assert_eq!(r.transferred.len(), t + d);
    for (c, (lo, hi)) in r.transferred.iter().zip(&ranges) {
        assert!((c - (lo + hi) / 2.0).abs() < 1e-6);
    }
    assert!(r.transferred[..t].iter().any(|&c| c > 0.0), "ReLU outputs are centred somewhere above 0: {:?}", r.transferred);
    // Hashed TF-IDF: an absent term maps to 0; MiniLM: 0 maps to the middle of the fixed range.
    assert!(r.transferred[t..].iter().all(|&c| c == 0.0) && r.own == vec![0.0; d]);
    let mut minilm = cfg.clone();
    minilm.features.kind = cryptotl::config::FeatureKind::Minilm;
    assert_eq!(cryptotl::pipeline::dp_references(&minilm, None, 0, 384).own, vec![0.5; 384]);
    // A client without the server's network (a remote server's interface does not publish the ranges) centres
    // only its own features.
    assert!(cryptotl::pipeline::dp_references(&cfg, None, t, d).transferred[..t].iter().all(|&c| c == 0.0));
}

/// A private `transfer+own` head weighs the client's own features by a public rule of the DP-SGD schedule (left
/// out where the noise per example is large, in where it is small) or by `[privacy] own_weight`; weight 0 leaves
/// every own-feature coefficient at exactly 0.
#[test]
fn a_private_heads_own_features_are_weighted_by_a_public_rule_or_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let base = ["he.enabled=false".to_string(), "head.kind=\"linear\"".into(), "head.inputs=\"transfer+own\"".into(), "privacy.insecure_seed=1".into()];
    let with = |extra: &[&str]| RunConfig::from_toml_str(&tiny_config(dir.path()), "tiny.toml", &[base.to_vec(), extra.iter().map(|s| s.to_string()).collect()].concat()).unwrap();
    let cfg = with(&["privacy.target_epsilon=1"]);
    let data = cryptotl::pipeline::prepare_data(&cfg).unwrap();
    let lower = cryptotl::pipeline::server_lower_network(&cfg).unwrap();
    let (_, own) = cryptotl::pipeline::client_features(&cfg, &data.target).unwrap();
    let (t, _) = cryptotl::pipeline::transfer(&cfg, &lower, &cryptotl::pipeline::TransferInput::texts(&own)).unwrap();
    let inputs = cryptotl::pipeline::head_inputs(&cfg, &t, &own, None).unwrap();
    let refs = cryptotl::pipeline::dp_references(&cfg, Some(&lower), t.train.ncols(), own.train.ncols());
    let n = inputs.train.nrows();
    let own_weights = |cfg: &RunConfig| -> (Option<f32>, Vec<f32>) {
        let plan = cryptotl::privacy::plan::plan(cfg.privacy.as_ref().unwrap(), &cfg.head_training, n).unwrap();
        let mut rng = cryptotl::privacy::dpsgd::PrivacyRng::new(Some(1));
        let (head, map) = cryptotl::pipeline::train_head_private(cfg, &inputs, &refs.transferred, &plan, &mut rng).unwrap();
        assert_eq!(map, cryptotl::privacy::centring::DpInputMap::new(cfg, &refs.transferred, inputs.own_columns, &plan), "the map the head trained through");
        let w: Vec<f32> = head.trained.model.dense2.weight.val().into_data().to_vec::<f32>().unwrap();
        (map.own_weight, w[t.train.ncols()..].to_vec())
    };
    // ε = 1 on this small training split: σ / n is far above the rule's bound, so the own features are left out.
    let plan = cryptotl::privacy::plan::plan(cfg.privacy.as_ref().unwrap(), &cfg.head_training, n).unwrap();
    assert!(plan.noise_per_example() > cryptotl::config::DP_OWN_FEATURES_MAX_NOISE, "σ = {} for n = {n}", plan.noise_multiplier);
    let (w, coefficients) = own_weights(&cfg);
    assert_eq!(w, Some(0.0));
    assert!(coefficients.iter().all(|&c| c == 0.0), "{coefficients:?}");
    // A small σ (given, not calibrated) is under the bound: they are in.
    let (w, coefficients) = own_weights(&with(&["privacy.noise_multiplier=0.5"]));
    assert_eq!(w, Some(1.0));
    assert!(coefficients.iter().any(|&c| c != 0.0));
    // The config's weight wins over the rule either way.
    let (w, coefficients) = own_weights(&with(&["privacy.target_epsilon=1", "privacy.own_weight=0.5"]));
    assert_eq!(w, Some(0.5));
    assert!(coefficients.iter().any(|&c| c != 0.0));
    // Out of range, or in the server's DP pretraining table: refused, naming the key.
    let err = RunConfig::from_toml_str(&tiny_config(dir.path()), "tiny.toml", &[base.to_vec(), vec!["privacy.target_epsilon=1".into(), "privacy.own_weight=-1".into()]].concat()).unwrap_err().to_string();
    assert!(err.contains("privacy.own_weight"), "{err}");
    let err = RunConfig::from_toml_str(&tiny_config(dir.path()), "tiny.toml", &["server_privacy.dp_pretraining.target_epsilon=4".into(), "server_privacy.dp_pretraining.own_weight=1".into()]).unwrap_err().to_string();
    assert!(err.contains("own_weight") && err.contains("[privacy] only"), "{err}");
}
