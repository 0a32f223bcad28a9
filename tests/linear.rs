//! The linear head and the bag-of-words baseline: exact L2 logistic regression (checked by its optimality
//! conditions), sparse and dense TF-IDF agree, the head learns a separable fixture end to end.

use cryptotl::config::RunConfig;
use cryptotl::features::{Featurizer, HashedTfidf};
use cryptotl::linear::{Design, SparseRow, fit, fit_choosing_c, fit_weighted};
use ndarray::Array2;
use rand::{RngExt, SeedableRng};

mod common;
use common::tiny_config;

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// Noisy two-class data: labels from a random hyperplane with 15% flips (not separable, so the optimum is finite).
fn noisy(n: usize, d: usize, seed: u64) -> (Array2<f32>, Vec<u8>) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let w: Vec<f32> = (0..d).map(|_| rng.random_range(-1.0..1.0)).collect();
    let x = Array2::from_shape_fn((n, d), |(_, j)| rng.random_range(0.0..1.0f32) * (1.0 + j as f32));
    let y = x
        .rows()
        .into_iter()
        .map(|r| {
            let z: f32 = r.iter().zip(&w).map(|(a, b)| a * b).sum::<f32>() - w.iter().enumerate().map(|(j, v)| v * (1.0 + j as f32) / 2.0).sum::<f32>();
            u8::from((z > 0.0) != (rng.random::<f64>() < 0.15))
        })
        .collect();
    (x, y)
}

/// `n` rows, labels alternating 0/1: column 0 is the label plus uniform noise in ±`spread`, the other `d - 1`
/// columns uniform noise in ±1, drawn from `rng` row by row.
fn informative_among_noise(rng: &mut rand_chacha::ChaCha8Rng, n: usize, d: usize, spread: f32) -> (Array2<f32>, Vec<u8>) {
    let y: Vec<u8> = (0..n).map(|i| (i % 2) as u8).collect();
    let x = Array2::from_shape_fn((n, d), |(i, j)| if j == 0 { y[i] as f32 + rng.random_range(-spread..spread) } else { rng.random_range(-1.0..1.0f32) });
    (x, y)
}

#[test]
fn dense_fit_meets_the_optimality_conditions() {
    let (x, y) = noisy(300, 6, 1);
    let c = 0.5;
    let lr = fit(Design::Dense(x.view()), &y, c).unwrap();
    // The penalty acts on the weights of the standardised inputs: recompute the gradient of
    // mean loss + ‖w_std‖² / (2 C n) there, independently of the fitting code.
    let n = x.nrows() as f64;
    let mean = x.mean_axis(ndarray::Axis(0)).unwrap();
    let std = x.std_axis(ndarray::Axis(0), 0.0);
    let w_std: Vec<f64> = lr.weights.iter().zip(&std).map(|(&w, &s)| w as f64 * s as f64).collect();
    let mut g = vec![0.0f64; 7];
    for (row, &yi) in x.rows().into_iter().zip(&y) {
        let z: f64 = row.iter().zip(&lr.weights).map(|(&v, &w)| v as f64 * w as f64).sum::<f64>() + lr.bias as f64;
        let r = (sigmoid(z) - yi as f64) / n;
        for j in 0..6 {
            g[j] += r * (row[j] - mean[j]) as f64 / std[j] as f64;
        }
        g[6] += r;
    }
    for j in 0..6 {
        g[j] += w_std[j] / (c * n);
    }
    let norm = g.iter().map(|v| v * v).sum::<f64>().sqrt();
    assert!(norm < 1e-4, "gradient at the solution {g:?}");
    // A stronger penalty gives smaller standardised weights.
    let strong = fit(Design::Dense(x.view()), &y, 0.01).unwrap();
    let size = |lr: &cryptotl::linear::LogisticRegression| lr.weights.iter().zip(&std).map(|(&w, &s)| (w * s).powi(2)).sum::<f32>();
    assert!(size(&strong) < size(&lr));
}

#[test]
fn sparse_fit_meets_the_optimality_conditions_and_matches_dense() {
    let (x, y) = noisy(200, 5, 2);
    let rows: Vec<SparseRow> = x.rows().into_iter().map(|r| r.iter().enumerate().filter(|(_, v)| **v != 0.0).map(|(j, &v)| (j as u32 * 3, v)).collect()).collect();
    let c = 2.0;
    let lr = fit(Design::Sparse { rows: &rows, dim: 15 }, &y, c).unwrap();
    let n = rows.len() as f64;
    let mut g = vec![0.0f64; 16];
    for (row, &yi) in rows.iter().zip(&y) {
        let z: f64 = row.iter().map(|&(j, v)| v as f64 * lr.weights[j as usize] as f64).sum::<f64>() + lr.bias as f64;
        let r = (sigmoid(z) - yi as f64) / n;
        for &(j, v) in row {
            g[j as usize] += r * v as f64;
        }
        g[15] += r;
    }
    for (gj, &w) in g.iter_mut().zip(&lr.weights).take(15) {
        *gj += w as f64 / (c * n);
    }
    assert!(g.iter().map(|v| v * v).sum::<f64>().sqrt() < 1e-4, "{g:?}");
    // Unused columns get no weight; probabilities are those of the fitted margins.
    assert!(lr.weights.iter().enumerate().filter(|(j, _)| j % 3 != 0).all(|(_, w)| w.abs() < 1e-6));
    let p = lr.probabilities(Design::Sparse { rows: &rows, dim: 15 });
    assert_eq!(p.len(), 200);
    let acc = p.iter().zip(&y).filter(|(p, y)| (**p >= 0.5) == (**y == 1)).count() as f64 / 200.0;
    assert!(acc > 0.75, "{acc}");
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let x = ndarray::array![[0.0f32, 1.0], [1.0, 0.0]];
    assert!(fit(Design::Dense(x.view()), &[1, 1], 1.0).unwrap_err().to_string().contains("both classes"));
    assert!(fit(Design::Dense(x.view()), &[0], 1.0).is_err());
    assert!(fit(Design::Dense(x.view()), &[0, 1], 0.0).is_err());
    let nan = ndarray::array![[f32::NAN, 1.0], [1.0, 0.0]];
    assert!(fit(Design::Dense(nan.view()), &[0, 1], 1.0).unwrap_err().to_string().contains("non-finite"));
    let rows = vec![vec![(7u32, 1.0f32)], vec![(0, 1.0)]];
    assert!(fit(Design::Sparse { rows: &rows, dim: 4 }, &[0, 1], 1.0).unwrap_err().to_string().contains("out of range"));
    // Column weights act on standardised dense columns; on sparse rows they would be ignored, so they are refused.
    let rows = vec![vec![(1u32, 1.0f32)], vec![(0, 1.0)]];
    assert!(fit(Design::Sparse { rows: &rows, dim: 4 }, &[0, 1], 1.0).is_ok());
    let err = fit_weighted(Design::Sparse { rows: &rows, dim: 4 }, &[0, 1], 1.0, Some(&[1.0, 0.0, 1.0, 1.0])).unwrap_err();
    assert!(err.to_string().contains("dense rows only"), "{err}");
}

#[test]
fn sparse_tfidf_rows_equal_the_dense_ones() {
    let texts: Vec<String> = ["a great great movie", "a dull movie, truly dull", "", "great acting and a great plot"].iter().map(|s| s.to_string()).collect();
    let f = HashedTfidf::fit(&texts, 97, 2);
    let dense = f.transform(&texts).unwrap();
    let sparse = f.transform_sparse(&texts);
    for (r, row) in sparse.iter().enumerate() {
        let mut v = vec![0f32; 97];
        for &(j, x) in row {
            v[j as usize] = x;
        }
        for (a, b) in v.iter().zip(dense.row(r)) {
            assert!((a - b).abs() < 1e-6, "row {r}: {a} vs {b}");
        }
    }
    assert!(sparse[2].is_empty());
}

#[test]
fn linear_head_learns_the_separable_fixture_and_transfer_plus_own_widens_its_input() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = tiny_config(dir.path());
    text = text.replace("[he]\ninsecure_seed = 3", "[he]\nenabled = false");
    text.push_str("[curve]\nenabled = false\n");
    let cfg = RunConfig::from_toml_str(&text, "tiny.toml", &["head.kind=\"linear\"".into()]).unwrap();
    let report = cryptotl::pipeline::run(&cfg).unwrap();
    let transfer = report.results.iter().find(|r| r.method == "transfer").unwrap();
    assert!(transfer.test.accuracy > 0.9, "{:?}", transfer.test);
    let raw = report.results.iter().find(|r| r.method == "raw_features_head").unwrap();
    assert!(raw.test.accuracy > 0.9, "{:?}", raw.test);
    assert!(report.curve.is_none());

    let both = RunConfig::from_toml_str(&text, "tiny.toml", &["head.inputs=\"transfer+own\"".into()]).unwrap();
    let data = cryptotl::pipeline::prepare_data(&both).unwrap();
    let lower = cryptotl::pipeline::server_lower_network(&both).unwrap();
    let (_, own) = cryptotl::pipeline::client_features(&both, &data.target).unwrap();
    let (t, _) = cryptotl::pipeline::transfer(&both, &lower, &cryptotl::pipeline::TransferInput::texts(&own)).unwrap();
    let inputs = cryptotl::pipeline::head_inputs(&both, &t, &own, None).unwrap();
    assert_eq!(inputs.train.ncols(), t.train.ncols() + own.train.ncols());
    assert_eq!(inputs.train.column(0), t.train.column(0));
    assert_eq!(inputs.train.column(t.train.ncols()), own.train.column(0));
    let head = cryptotl::pipeline::train_head(&both, &inputs, "both").unwrap();
    assert!(head.test.accuracy > 0.9);
    // A bad value names the key and what is allowed.
    let err = RunConfig::from_toml_str(&text, "tiny.toml", &["head.inputs=\"own\"".into()]).unwrap_err().to_string();
    assert!(err.contains("inputs") && err.contains("transfer+own"), "{err}");
    let err = RunConfig::from_toml_str(&text, "tiny.toml", &["head.c=-1".into()]).unwrap_err().to_string();
    assert!(err.contains("head.c"), "{err}");
    let err = RunConfig::from_toml_str(&text, "tiny.toml", &["head.c=\"cv\"".into()]).unwrap_err().to_string();
    assert!(err.contains("head.c") && err.contains("validation"), "{err}");
}

/// `head.c = "validation"` (the default) chooses each head's C on the validation split, from the grid, and says so
/// in the report row; a number is used as it is.
#[test]
fn the_linear_head_chooses_its_c_on_the_validation_split_unless_given_one() {
    let dir = tempfile::tempdir().unwrap();
    let text = tiny_config(dir.path());
    let chosen = RunConfig::from_toml_str(&text, "tiny.toml", &["he.enabled=false".into()]).unwrap();
    assert_eq!(chosen.head.c, cryptotl::config::InverseL2::Validation, "the default");
    let fixed = RunConfig::from_toml_str(&text, "tiny.toml", &["he.enabled=false".into(), "head.c=2".into()]).unwrap();
    assert_eq!(fixed.head.c, cryptotl::config::InverseL2::Fixed(2.0), "an integer is a number too");
    let data = cryptotl::pipeline::prepare_data(&chosen).unwrap();
    let (_, own) = cryptotl::pipeline::client_features(&chosen, &data.target).unwrap();
    let head = cryptotl::pipeline::train_head(&chosen, &own, "chosen").unwrap();
    let c = head.c.expect("a linear head reports its C");
    assert!(c.chosen_on_validation && cryptotl::config::LINEAR_HEAD_CS.contains(&c.c), "{c:?}");
    let row = head.result("raw_features_head", "d".into());
    assert_eq!(row.c, Some(c));
    let head = cryptotl::pipeline::train_head(&fixed, &own, "fixed").unwrap();
    assert_eq!(head.c, Some(cryptotl::report::LinearC { c: 2.0, chosen_on_validation: false, own_weight: None }));
    // The chosen C is the one whose validation accuracy no other C of the grid beats.
    let (lr, best) = fit_choosing_c(Design::Dense(own.train.view()), &own.train_y, Design::Dense(own.validation.view()), &own.validation_y, &cryptotl::config::LINEAR_HEAD_CS).unwrap();
    assert_eq!(lr.c, c.c);
    for cand in cryptotl::config::LINEAR_HEAD_CS {
        let m = fit(Design::Dense(own.train.view()), &own.train_y, cand).unwrap();
        let p = m.probabilities(Design::Dense(own.validation.view()));
        assert!(cryptotl::eval::Metrics::from_probabilities(&p, &own.validation_y).accuracy <= best + 1e-12, "C = {cand} beats the chosen {}", lr.c);
    }
}

/// Choosing C prefers strong regularisation where the training rows are few and most columns are noise, weak
/// regularisation where the signal is clean; it refuses validation rows it cannot choose on.
#[test]
fn choosing_c_follows_the_validation_rows_and_refuses_unusable_ones() {
    // 40 training rows, 1 informative column among 200 of noise: a weak penalty fits the noise.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let (x, y) = informative_among_noise(&mut rng, 40, 200, 0.8);
    let (v, vy) = informative_among_noise(&mut rng, 400, 200, 0.8);
    let cs = [1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0];
    let (lr, acc) = fit_choosing_c(Design::Dense(x.view()), &y, Design::Dense(v.view()), &vy, &cs).unwrap();
    let weakest = fit(Design::Dense(x.view()), &y, 100.0).unwrap();
    let weak_acc = cryptotl::eval::Metrics::from_probabilities(&weakest.probabilities(Design::Dense(v.view())), &vy).accuracy;
    assert!(lr.c < 100.0 && acc > weak_acc, "chose C = {} ({acc}) against C = 100 ({weak_acc})", lr.c);
    // One validation class only, or none at all: nothing to choose on, and the error says what to do.
    let err = fit_choosing_c(Design::Dense(x.view()), &y, Design::Dense(v.slice(ndarray::s![..1, ..])), &vy[..1], &cs).unwrap_err().to_string();
    assert!(err.contains("validation") && err.contains("head.c"), "{err}");
    let err = fit_choosing_c(Design::Dense(x.view()), &y, Design::Dense(v.slice(ndarray::s![..0, ..])), &vy[..0], &cs).unwrap_err().to_string();
    assert!(err.contains("validation"), "{err}");
}

fn dataset(texts: Vec<String>, labels: Vec<u8>) -> cryptotl::data::Dataset {
    cryptotl::data::Dataset { name: "d".into(), texts, labels, ..Default::default() }
}

#[test]
fn the_stacked_bag_of_words_score_of_a_training_row_never_saw_its_label() {
    // Unique words and random labels: a model fitted on a row memorises it, one fitted on the other folds cannot.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let n = 200;
    let labels: Vec<u8> = (0..n).map(|i| (i % 2) as u8).collect();
    let texts: Vec<String> = (0..n).map(|i| format!("w{}a w{}b w{}c", i, rng.random::<u32>(), i * 7)).collect();
    let test = dataset(vec!["w1a".into(), "w2a".into()], vec![1, 0]);
    let split = cryptotl::data::Split { train: dataset(texts, labels.clone()), validation: test.clone(), test, duplicates_moved: 0 };
    let bow = cryptotl::bow::BagOfWords::new(&split);
    let [train, validation, test] = bow.stacked_scores(1).unwrap();
    assert_eq!((train.len(), validation.len(), test.len()), (n, 2, 2));
    let sign_accuracy = |m: &[f32]| m.iter().zip(&labels).filter(|(m, l)| (**m > 0.0) == (**l == 1)).count() as f64 / n as f64;
    let in_sample = fit(Design::Sparse { rows: &bow.train, dim: cryptotl::bow::BAG_OF_WORDS_DIM }, &labels, cryptotl::bow::STACKED_C).unwrap();
    assert!(sign_accuracy(&in_sample.margins(Design::Sparse { rows: &bow.train, dim: cryptotl::bow::BAG_OF_WORDS_DIM })) > 0.95, "the fixture is memorisable");
    assert!(sign_accuracy(&train) < 0.65, "out-of-fold scores carry no memorised label: {}", sign_accuracy(&train));
    // Seeded: the same folds again.
    assert_eq!(bow.stacked_scores(1).unwrap()[0], train);
    // A subset with one example of a class cannot be cross-fitted.
    let err = bow.subset(&[0, 1, 3]).stacked_scores(1).unwrap_err().to_string();
    assert!(err.contains("at least 2 training examples of each class"), "{err}");
    // Below the minimum the score is left out: a zero column the head ignores.
    let small = bow.subset(&(0..cryptotl::bow::STACKED_MIN_EXAMPLES - 1).collect::<Vec<_>>()).stacked_scores(1).unwrap();
    assert!(small.iter().flatten().all(|&v| v == 0.0));
    assert!(n >= cryptotl::bow::STACKED_MIN_EXAMPLES, "the fixture is large enough to be scored");
}

#[test]
fn transfer_plus_bow_adds_one_learned_column_and_refuses_dp() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = tiny_config(dir.path());
    text = text.replace("[he]\ninsecure_seed = 3", "[he]\nenabled = false");
    text.push_str("[curve]\nenabled = true\ndraws = 2\n");
    let cfg = RunConfig::from_toml_str(&text, "tiny.toml", &["head.inputs=\"transfer+bow\"".into()]).unwrap();
    let data = cryptotl::pipeline::prepare_data(&cfg).unwrap();
    let lower = cryptotl::pipeline::server_lower_network(&cfg).unwrap();
    let (_, own) = cryptotl::pipeline::client_features(&cfg, &data.target).unwrap();
    let (t, _) = cryptotl::pipeline::transfer(&cfg, &lower, &cryptotl::pipeline::TransferInput::texts(&own)).unwrap();
    let bow = cryptotl::bow::BagOfWords::new(&data.target);
    let inputs = cryptotl::pipeline::head_inputs(&cfg, &t, &own, Some(&bow)).unwrap();
    assert_eq!(inputs.train.ncols(), t.train.ncols() + 1);
    assert_eq!(inputs.train.column(0), t.train.column(0));
    let scores = bow.stacked_scores(cryptotl::seeds::stream(cfg.seed, cryptotl::seeds::BOW_FOLDS)).unwrap();
    assert_eq!(inputs.test.column(t.train.ncols()).to_vec(), scores[2]);
    assert!(cryptotl::pipeline::head_inputs(&cfg, &t, &own, None).is_err(), "the score needs the rows");
    // The whole run: the head, its report row and the curves (inputs rebuilt per subset).
    let report = cryptotl::pipeline::run(&cfg).unwrap();
    let transfer = report.results.iter().find(|r| r.method == "transfer").unwrap();
    assert!(transfer.test.accuracy > 0.9, "{:?}", transfer.test);
    assert!(transfer.description.contains("bag-of-words"), "{}", transfer.description);
    let curve = report.curve.unwrap();
    for &size in &curve.sizes {
        assert_eq!(curve.point("transfer", size).unwrap().accuracies.len(), 2);
    }
    // The score is fitted on the labels without DP: never beside a DP-SGD head.
    let err = RunConfig::from_toml_str(&text, "tiny.toml", &["head.inputs=\"transfer+bow\"".into(), "privacy.enabled=true".into(), "privacy.target_epsilon=4".into()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("head.inputs") && err.contains("not be private"), "{err}");
    // Nor in a privacy-utility sweep, which trains DP-SGD heads.
    let spec = cryptotl::sweep::SweepSpec {
        client_epsilons: vec![cryptotl::sweep::Epsilon::Finite(1.0)],
        server_epsilons: vec![],
        server_mechanism: cryptotl::sweep::ServerMechanism::WeightNoise,
        raw_baseline: false,
        repeats: 1,
    };
    let err = cryptotl::sweep::run(&cfg, &spec).unwrap_err().to_string();
    assert!(err.contains("head.inputs") && err.contains("head.inputs=transfer"), "{err}");
}

#[test]
fn per_sentence_transfer_averages_each_texts_outputs_over_its_sentences() {
    use cryptotl::features::sentences;
    use cryptotl::pipeline::{self, TransferInput};
    let dir = tempfile::tempdir().unwrap();
    // A target of multi-sentence texts: three fixture texts of one label joined as sentences.
    let rows = common::fixture_rows("separable_target.csv");
    let mut csv = String::from("label,text\n");
    for label in ["0", "1"] {
        let texts: Vec<&String> = rows.iter().filter(|(y, _)| y == label).map(|(_, t)| t).collect();
        for (i, c) in texts.chunks(3).enumerate() {
            // Some texts have more sentences than max_sentences, some one.
            let joined = if i % 4 == 0 { c[0].clone() } else { c.iter().chain(c.iter()).map(|t| t.as_str()).collect::<Vec<_>>().join(". ") };
            csv.push_str(&format!("{label},{joined}\n"));
        }
    }
    let target = dir.path().join("multi.csv");
    std::fs::write(&target, csv).unwrap();
    let mut text = tiny_config(dir.path()).replace("[he]\ninsecure_seed = 3", "[he]\nenabled = false");
    text.push_str("[curve]\nenabled = false\n");
    let target_path = format!("target.paths=[{:?}]", target.display().to_string());
    let cfg = RunConfig::from_toml_str(&text, "tiny.toml", &[target_path.clone(), "head.transfer_unit=\"sentence\"".into(), "head.max_sentences=4".into()]).unwrap();
    let per_text = RunConfig::from_toml_str(&text, "tiny.toml", &[target_path]).unwrap();
    assert_ne!(cryptotl::rundir::features_key(&cfg), cryptotl::rundir::features_key(&per_text), "the transfer unit changes the features");

    let data = pipeline::prepare_data(&cfg).unwrap();
    let lower = pipeline::server_lower_network(&cfg).unwrap();
    let (client_pipeline, own) = pipeline::client_features(&cfg, &data.target).unwrap();
    let input = TransferInput::new(&cfg, &client_pipeline, &data.target, &own).unwrap();
    let units: usize = data.target.train.texts.iter().map(|t| sentences(t, 4).len()).sum();
    assert_eq!(input.rows.train.nrows(), units);
    assert!(units > data.target.train.len() && data.target.train.texts.iter().any(|t| sentences(t, 4).len() == 4), "the fixture has multi-sentence texts, some capped");
    let (t, _) = pipeline::transfer(&cfg, &lower, &input).unwrap();
    assert_eq!((t.train.nrows(), &t.train_y, t.test.nrows()), (own.train.nrows(), &own.train_y, own.test.nrows()));
    // Each text's row is the mean of the network's outputs over its own sentences, computed here independently.
    for i in 0..data.target.train.len() {
        let x = client_pipeline.transform(&sentences(&data.target.train.texts[i], 4)).unwrap();
        let want = pipeline::lower_forward(&lower.net, &x).unwrap().mean_axis(ndarray::Axis(0)).unwrap();
        for (a, b) in t.train.row(i).iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "text {i}: {a} vs {b}");
        }
    }
    // The whole run works on it and still learns the separable target.
    let report = pipeline::run(&cfg).unwrap();
    let transfer = report.results.iter().find(|r| r.method == "transfer").unwrap();
    assert!(transfer.test.accuracy > 0.9, "{:?}", transfer.test);
    // `predict` splits new texts the same way: on the test texts it scores exactly what the run reported.
    // Its probabilities are the saved head's on the per-sentence means computed above (`t.test`).
    let preds = pipeline::predict(&cfg, &cfg.output_dir(), &data.target.test.texts).unwrap();
    let right = preds.iter().zip(&data.target.test.labels).filter(|(p, y)| p.label == **y).count();
    assert_eq!(right as f64 / preds.len() as f64, transfer.test.accuracy);
    let dev = Default::default();
    let head = cryptotl::model::load_module(pipeline::new_head::<cryptotl::model::Cpu>(&cfg, t.test.ncols(), &dev), &cfg.output_dir().join("head"), &dev).unwrap();
    let want = cryptotl::model::predict_proba(&head, t.test.view(), &dev);
    for (p, w) in preds.iter().zip(&want) {
        assert!((p.probability - w).abs() < 1e-5, "{} vs {w}", p.probability);
    }
    assert!(RunConfig::from_toml_str(&text, "tiny.toml", &["head.max_sentences=0".into()]).unwrap_err().to_string().contains("head.max_sentences"));
}

#[test]
fn sentences_split_at_line_breaks_and_end_punctuation_and_keep_evenly_spaced_ones() {
    use cryptotl::features::sentences;
    let review = "it starts well . the middle sags badly!\nthen a twist arrives ? and the end lands\n\n";
    assert_eq!(sentences(review, 16), ["it starts well .", "the middle sags badly!", "then a twist arrives ?", "and the end lands"]);
    // Short pieces join their neighbour; a text with no sentence end is one sentence; an empty one is itself.
    assert_eq!(sentences("great. really great film overall", 16), ["great. really great film overall"]);
    assert_eq!(sentences("no punctuation at all here", 16), ["no punctuation at all here"]);
    assert_eq!(sentences("", 16), [""]);
    // Capped: the first and the last are kept, the rest evenly spaced.
    let many: String = (0..10).map(|i| format!("sentence number {i} here. ")).collect();
    let kept = sentences(&many, 4);
    assert_eq!(kept, ["sentence number 0 here.", "sentence number 3 here.", "sentence number 6 here.", "sentence number 9 here."]);
    assert_eq!(sentences(&many, 1), ["sentence number 0 here."]);
}

/// A column of weight 0 is left out exactly: the fit equals the one on the other columns alone. A small weight is
/// a stronger penalty: the column's coefficient shrinks.
#[test]
fn column_weights_penalise_columns_and_zero_leaves_them_out() {
    let (x, y) = noisy(300, 6, 3);
    let first = x.slice(ndarray::s![.., ..4]).to_owned();
    let alone = fit(Design::Dense(first.view()), &y, 0.5).unwrap();
    let weighted = fit_weighted(Design::Dense(x.view()), &y, 0.5, Some(&[1.0, 1.0, 1.0, 1.0, 0.0, 0.0])).unwrap();
    assert_eq!(&weighted.weights[4..], &[0.0, 0.0]);
    for (a, b) in alone.weights.iter().zip(&weighted.weights[..4]) {
        assert!((a - b).abs() < 1e-3 * (1.0 + a.abs()), "{:?} vs {:?}", alone.weights, weighted.weights);
    }
    assert!((alone.bias - weighted.bias).abs() < 1e-3 * (1.0 + alone.bias.abs()));
    let std = x.std_axis(ndarray::Axis(0), 0.0);
    let size = |lr: &cryptotl::linear::LogisticRegression| (lr.weights[5] * std[5]).abs();
    let full = fit(Design::Dense(x.view()), &y, 0.5).unwrap();
    let shrunk = fit_weighted(Design::Dense(x.view()), &y, 0.5, Some(&[1.0, 1.0, 1.0, 1.0, 1.0, 0.1])).unwrap();
    assert!(size(&shrunk) < size(&full), "{} vs {}", size(&shrunk), size(&full));
    // Bad weights are refused, not used.
    assert!(fit_weighted(Design::Dense(x.view()), &y, 0.5, Some(&[1.0; 5])).is_err());
    assert!(fit_weighted(Design::Dense(x.view()), &y, 0.5, Some(&[1.0, 1.0, 1.0, 1.0, 1.0, f64::NAN])).is_err());
}

/// A `transfer+own` head with C chosen also chooses the own features' weight, and its inputs say which columns
/// are the own features.
#[test]
fn a_transfer_plus_own_head_chooses_the_own_features_weight() {
    let dir = tempfile::tempdir().unwrap();
    let text = tiny_config(dir.path());
    let cfg = RunConfig::from_toml_str(&text, "tiny.toml", &["he.enabled=false".into(), "head.inputs=\"transfer+own\"".into()]).unwrap();
    let data = cryptotl::pipeline::prepare_data(&cfg).unwrap();
    let lower = cryptotl::pipeline::server_lower_network(&cfg).unwrap();
    let (_, own) = cryptotl::pipeline::client_features(&cfg, &data.target).unwrap();
    let (t, _) = cryptotl::pipeline::transfer(&cfg, &lower, &cryptotl::pipeline::TransferInput::texts(&own)).unwrap();
    let inputs = cryptotl::pipeline::head_inputs(&cfg, &t, &own, None).unwrap();
    assert_eq!(inputs.own_columns, own.train.ncols());
    assert_eq!(t.own_columns, 0);
    let head = cryptotl::pipeline::train_head(&cfg, &inputs, "both").unwrap();
    let c = head.c.unwrap();
    let w = c.own_weight.expect("beside own features the weight is chosen too");
    assert!(cryptotl::config::OWN_FEATURE_WEIGHTS.contains(&w), "{c:?}");
    // The head on the own features alone has no own block to weigh.
    assert_eq!(cryptotl::pipeline::train_head(&cfg, &own, "raw").unwrap().c.unwrap().own_weight, None);
}

/// Cross-validated choice: every candidate scored on held-out folds of the training rows alone, pooled; the one
/// chosen is the best there (checked by brute force), and with one example of a class it falls back on C = 1.
#[test]
fn cross_validation_chooses_on_the_training_rows_alone() {
    use cryptotl::linear::{Candidate, fit_choosing_cv, stratified_folds};
    // 40 rows, 1 informative column among 200 of noise: a weak penalty fits the noise.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let (x, y) = informative_among_noise(&mut rng, 40, 200, 0.8);
    let cs = [1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0];
    let cands: Vec<Candidate> = cs.iter().map(|&c| Candidate { c, column_weights: None }).collect();
    let (lr, k, acc) = fit_choosing_cv(Design::Dense(x.view()), &y, &cands, 5, 11).unwrap();
    assert_eq!(lr.c, cs[k]);
    // Brute force: the pooled held-out accuracy of every candidate over the same folds.
    let (fold_of, folds) = stratified_folds(&y, 5, 11).unwrap();
    assert_eq!(folds, 5);
    let pooled: Vec<f64> = cs
        .iter()
        .map(|&c| {
            let mut correct = 0;
            for f in 0..folds {
                let (tr, te): (Vec<usize>, Vec<usize>) = (0..y.len()).partition(|&i| fold_of[i] != f);
                let m = fit(Design::Dense(x.select(ndarray::Axis(0), &tr).view()), &tr.iter().map(|&i| y[i]).collect::<Vec<_>>(), c).unwrap();
                let p = m.probabilities(Design::Dense(x.select(ndarray::Axis(0), &te).view()));
                correct += te.iter().zip(&p).filter(|&(&i, &p)| (p >= 0.5) == (y[i] == 1)).count();
            }
            correct as f64 / y.len() as f64
        })
        .collect();
    assert!((acc - pooled[k]).abs() < 1e-12, "reported {acc}, brute force {}", pooled[k]);
    assert!(pooled.iter().all(|&a| a <= acc + 1e-12), "{pooled:?} beats the chosen {acc}");
    assert!(lr.c < 100.0 && acc > pooled[5], "chose C = {} ({acc}) against C = 100 ({})", lr.c, pooled[5]);
    // The model returned is the chosen candidate refitted on every row.
    assert_eq!(lr.weights, fit(Design::Dense(x.view()), &y, lr.c).unwrap().weights);
    // One positive: no fold could hold one out, so scikit-learn's default C = 1, said with a NaN accuracy.
    let mut one = vec![0u8; 12];
    one[3] = 1;
    let (lr, k, acc) = fit_choosing_cv(Design::Dense(x.slice(ndarray::s![..12, ..]).view()), &one, &cands, 5, 1).unwrap();
    assert_eq!((lr.c, k), (1.0, 3));
    assert!(acc.is_nan());
}

/// A constant column carries nothing: it gets weight exactly 0 (the solver leaves it out, as it does a column of
/// weight 0) and the model is the one fitted without it, its constant folded into nothing.
#[test]
fn a_constant_column_gets_weight_zero_and_changes_nothing() {
    let (x, y) = noisy(200, 4, 5);
    let mut with = Array2::from_elem((200, 5), 3.5f32);
    with.slice_mut(ndarray::s![.., ..2]).assign(&x.slice(ndarray::s![.., ..2]));
    with.slice_mut(ndarray::s![.., 3..]).assign(&x.slice(ndarray::s![.., 2..]));
    let without = fit(Design::Dense(x.view()), &y, 0.3).unwrap();
    let lr = fit(Design::Dense(with.view()), &y, 0.3).unwrap();
    assert_eq!(lr.weights[2], 0.0);
    let kept = [lr.weights[0], lr.weights[1], lr.weights[3], lr.weights[4]];
    for (a, b) in without.weights.iter().zip(&kept) {
        assert!((a - b).abs() <= 1e-5 * (1.0 + a.abs()), "{:?} vs {:?}", without.weights, lr.weights);
    }
    assert!((without.bias - lr.bias).abs() <= 1e-5 * (1.0 + without.bias.abs()));
    // Every column constant: only the bias is fitted, to the log-odds of the labels.
    let flat = Array2::from_elem((200, 3), 1.0f32);
    let lr = fit(Design::Dense(flat.view()), &y, 1.0).unwrap();
    assert_eq!(lr.weights, vec![0.0; 3]);
    let p = y.iter().filter(|&&t| t == 1).count() as f64 / y.len() as f64;
    assert!((lr.bias as f64 - (p / (1.0 - p)).ln()).abs() < 1e-4, "{} vs {}", lr.bias, (p / (1.0 - p)).ln());
}

/// Candidates of several column weightings, interleaved: each is fitted on its own weighting's standardised rows
/// (the rows are prepared once per run of candidates that share a weighting, and never reused for another), so
/// the choice, on validation rows or by cross-validation, is the one brute force makes over separate fits.
#[test]
fn interleaved_column_weightings_are_each_fitted_on_their_own() {
    use cryptotl::linear::{Candidate, fit_choosing, fit_choosing_cv, stratified_folds};
    // One informative column among 30 of noise, 60 training and 200 validation rows.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(21);
    let ((x, y), (v, vy)) = (informative_among_noise(&mut rng, 60, 31, 0.9), informative_among_noise(&mut rng, 200, 31, 0.9));
    let (all, informative): (Vec<f64>, Vec<f64>) = ((0..31).map(|_| 1.0).collect(), (0..31).map(|j| if j == 0 { 1.0 } else { 0.0 }).collect());
    let cands: Vec<Candidate> = [10.0, 100.0, 1e4]
        .iter()
        .flat_map(|&c| [Candidate { c, column_weights: Some(all.clone()) }, Candidate { c, column_weights: Some(informative.clone()) }])
        .collect();
    let accuracy = |m: &cryptotl::linear::LogisticRegression, x: &Array2<f32>, y: &[u8]| {
        m.probabilities(Design::Dense(x.view())).iter().zip(y).filter(|&(&p, &t)| (p >= 0.5) == (t == 1)).count()
    };
    // On the validation rows.
    let (lr, k, acc) = fit_choosing(Design::Dense(x.view()), &y, Design::Dense(v.view()), &vy, &cands).unwrap();
    let separate: Vec<usize> = cands.iter().map(|c| accuracy(&fit_weighted(Design::Dense(x.view()), &y, c.c, c.column_weights.as_deref()).unwrap(), &v, &vy)).collect();
    assert_eq!((acc * vy.len() as f64).round() as usize, separate[k], "{separate:?}");
    assert_eq!(separate.iter().max(), Some(&separate[k]), "{separate:?}");
    assert_eq!(lr.c, cands[k].c);
    // Noise columns weighted 0 have weight exactly 0, and only then.
    let left_out = cands[k].column_weights.as_ref().is_some_and(|w| w[1] == 0.0);
    assert_eq!(lr.weights[1..].iter().all(|&w| w == 0.0), left_out, "candidate {k}: {:?}", lr.weights);
    // At C = 10^4 the noise columns are nearly free to fit the 60 rows: leaving them out must be chosen over that.
    assert!(separate[5] > separate[4], "{separate:?}");
    // By cross-validation on the training rows.
    let (lr, k, acc) = fit_choosing_cv(Design::Dense(x.view()), &y, &cands, 5, 3).unwrap();
    let (fold_of, folds) = stratified_folds(&y, 5, 3).unwrap();
    let pooled: Vec<usize> = cands
        .iter()
        .map(|c| {
            (0..folds)
                .map(|f| {
                    let (tr, te): (Vec<usize>, Vec<usize>) = (0..y.len()).partition(|&i| fold_of[i] != f);
                    let pick = |idx: &[usize]| (x.select(ndarray::Axis(0), idx), idx.iter().map(|&i| y[i]).collect::<Vec<u8>>());
                    let ((xt, yt), (xe, ye)) = (pick(&tr), pick(&te));
                    accuracy(&fit_weighted(Design::Dense(xt.view()), &yt, c.c, c.column_weights.as_deref()).unwrap(), &xe, &ye)
                })
                .sum()
        })
        .collect();
    assert_eq!((acc * y.len() as f64).round() as usize, pooled[k], "{pooled:?}");
    assert_eq!(pooled.iter().max(), Some(&pooled[k]), "{pooled:?}");
    let left_out = cands[k].column_weights.as_ref().is_some_and(|w| w[1] == 0.0);
    assert_eq!(lr.weights[1..].iter().all(|&w| w == 0.0), left_out, "candidate {k}: {:?}", lr.weights);
}

/// A learning curve's point below the full size stands for a client with only that many labels: with
/// `[curve] selection = "cross_validation"` (the default) its heads and the bag-of-words baseline never read the
/// validation labels (scrambling them changes no point below the full size); with `"validation_split"` they do.
#[test]
fn curve_points_below_the_full_size_choose_without_the_validation_labels() {
    let dir = tempfile::tempdir().unwrap();
    let text = tiny_config(dir.path());
    let overrides = ["he.enabled=false".to_string(), "curve.draws=2".into(), "curve.sizes=[8, 16]".into(), "head.inputs=\"transfer+own\"".into()];
    let cfg = RunConfig::from_toml_str(&text, "tiny.toml", &overrides).unwrap();
    assert_eq!(cfg.curve.selection, cryptotl::config::CurveSelection::CrossValidation, "the default");
    let data = cryptotl::pipeline::prepare_data(&cfg).unwrap();
    let lower = cryptotl::pipeline::server_lower_network(&cfg).unwrap();
    let (_, own) = cryptotl::pipeline::client_features(&cfg, &data.target).unwrap();
    let (t, _) = cryptotl::pipeline::transfer(&cfg, &lower, &cryptotl::pipeline::TransferInput::texts(&own)).unwrap();
    let bow = cryptotl::pipeline::BagOfWords::new(&data.target);
    let refs = cryptotl::pipeline::dp_references(&cfg, Some(&lower), t.train.ncols(), own.train.ncols());
    let before = cryptotl::curve::learning_curves(&cfg, &t, &own, Some(&bow), &refs).unwrap();
    assert_eq!(before.selection, "cross_validation");
    assert!(before.to_markdown().contains("cross-validation on its own subset"));
    // Every validation label one class: nothing could be chosen on them.
    let scramble = |fs: &cryptotl::pipeline::FeatureSplit| {
        let mut fs = fs.clone();
        fs.validation_y.iter_mut().for_each(|y| *y = 0);
        fs
    };
    let (t2, own2) = (scramble(&t), scramble(&own));
    let mut bow2 = cryptotl::pipeline::BagOfWords::new(&data.target);
    bow2.validation_y.iter_mut().for_each(|y| *y = 0);
    let after = cryptotl::curve::learning_curves(&cfg, &t2, &own2, Some(&bow2), &refs).unwrap();
    for m in &before.methods {
        for s in [8, 16] {
            assert_eq!(before.point(m, s).unwrap().accuracies, after.point(m, s).unwrap().accuracies, "{m} at {s} read the validation labels");
        }
    }
    // Choosing on the validation split reads them, and says it cannot choose on one class.
    let on_validation = RunConfig::from_toml_str(&text, "tiny.toml", &[overrides.to_vec(), vec!["curve.selection=\"validation_split\"".into()]].concat()).unwrap();
    assert!(cryptotl::curve::learning_curves(&on_validation, &t, &own, Some(&bow), &refs).is_ok());
    let err = cryptotl::curve::learning_curves(&on_validation, &t2, &own2, Some(&bow2), &refs).unwrap_err().to_string();
    assert!(err.contains("validation"), "{err}");
    // Folds out of range are refused, naming the key.
    let err = RunConfig::from_toml_str(&text, "tiny.toml", &["curve.folds=1".into()]).unwrap_err().to_string();
    assert!(err.contains("curve.folds"), "{err}");
    // The MLP head has no C, but it stops early: below the full size on a held-out fold of its own subset, not on
    // the validation split.
    let mlp = RunConfig::from_toml_str(&text, "tiny.toml", &[overrides.to_vec(), vec!["head.kind=\"mlp\"".into(), "baselines.bag_of_words=false".into()]].concat()).unwrap();
    let before = cryptotl::curve::learning_curves(&mlp, &t, &own, None, &refs).unwrap();
    let after = cryptotl::curve::learning_curves(&mlp, &t2, &own2, None, &refs).unwrap();
    for m in ["transfer", "raw_features"] {
        for s in [8, 16] {
            assert_eq!(before.point(m, s).unwrap().accuracies, after.point(m, s).unwrap().accuracies, "MLP {m} at {s} read the validation labels");
        }
    }
}

/// The target-only baseline (lower network and head trained from scratch on the client's features) learns features
/// that sit in a narrow band of [0, 1], as window-averaged review embeddings do: it standardises them first. Trained
/// on them as they are, with the IMDB config's network and schedule, it stopped on one class (test accuracy 0.500).
#[test]
fn the_target_only_network_learns_features_in_a_narrow_band() {
    let dir = tempfile::tempdir().unwrap();
    let sets = ["lower.conv_kernel=0", "lower.hidden=32", "lower.pool=1", "head.kind=\"mlp\"", "head_training.learning_rate=1e-3", "head_training.batch_size=32", "head_training.patience=5"];
    let cfg = RunConfig::from_toml_str(&tiny_config(dir.path()), "tiny.toml", &sets.map(String::from)).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let mut rows = |n: usize| {
        let y: Vec<u8> = (0..n).map(|i| (i % 2) as u8).collect();
        // 384 columns around 0.5, spread ±0.01; the label moves the first 16 by ±0.004.
        let x = Array2::from_shape_fn((n, 384), |(i, j)| {
            let signal = if j < 16 { if y[i] == 1 { 0.004 } else { -0.004 } } else { 0.0 };
            0.5 + rng.random_range(-0.01..0.01f32) + signal
        });
        (x, y)
    };
    let ((train, train_y), (validation, validation_y), (test, test_y)) = (rows(600), rows(200), rows(200));
    let fs = cryptotl::pipeline::FeatureSplit { train, train_y, validation, validation_y, test, test_y, own_columns: 0 };
    let b = cryptotl::pipeline::train_target_only(&cfg, &fs).unwrap();
    assert!(b.test.accuracy > 0.9, "{:?}", b.test);
}
