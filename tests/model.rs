//! Network shapes, seeded initialisation and save/load round trips.

use burn::module::Module as _;
use burn::tensor::Tensor;
use cryptotl::config::{Activation, HeadConfig, LowerNetConfig};
use cryptotl::model::{self, Cpu, FullNet, Head, LowerNet, PretrainNet, predict_proba};
use ndarray::Array2;

fn device() -> burn::backend::flex::FlexDevice {
    Default::default()
}

fn random_rows(n: usize, d: usize, seed: u64) -> Array2<f32> {
    Array2::from_shape_fn((n, d), |(i, j)| (((i * 31 + j * 17) as u64 ^ seed) % 97) as f32 / 97.0)
}

#[test]
fn paper_shapes() {
    let lower = LowerNet::<Cpu>::new(&LowerNetConfig::paper(), 768, 0, &device());
    let out = lower.forward(Tensor::zeros([3, 768], &device()));
    assert_eq!(out.dims(), [3, 766], "conv(9) -> dense 768 -> avg-pool 3 -> dense 766");
    let head = Head::<Cpu>::new(&HeadConfig::mlp(0, 1, 0.2), 766, 766, 0, &device());
    assert_eq!(head.logits(out, None).dims(), [3, 1]);
    // Configurable sizes: no conv, other widths, no output layer.
    let cfg = LowerNetConfig { conv_kernel: 0, hidden: 40, activation: Activation::Tanh, pool: 1, output: 0, ..Default::default() };
    let lower = LowerNet::<Cpu>::new(&cfg, 16, 0, &device());
    assert_eq!(lower.forward(Tensor::zeros([2, 16], &device())).dims(), [2, cfg.output_dim()]);
    assert_eq!(cfg.output_dim(), 40);
}

#[test]
fn keeping_units_drops_their_columns_and_the_output_rows_they_feed() {
    let cfg = LowerNetConfig { conv_kernel: 3, hidden: 6, output: 3, ..Default::default() };
    let mut net = LowerNet::<Cpu>::new(&cfg, 10, 1, &device());
    // Units 1 and 4 can never fire on inputs in [0, 1]: a bias far below what the weights can add.
    let mut bias: Vec<f32> = net.dense1.bias.as_ref().unwrap().val().into_data().to_vec().unwrap();
    bias[1] = -100.0;
    bias[4] = -100.0;
    net.dense1.bias = Some(burn::module::Param::from_tensor(Tensor::from_floats(bias.as_slice(), &device())));
    let x = random_rows(9, 10, 3);
    let before = net.forward(Tensor::from_data(burn::tensor::TensorData::new(x.iter().copied().collect::<Vec<_>>(), [9, 10]), &device()));
    let kept = net.clone().keep_units(&[0, 2, 3, 5]);
    assert_eq!(kept.dense1.weight.dims(), [10, 4]);
    assert_eq!(kept.dense2.as_ref().unwrap().weight.dims(), [4, 3]);
    let after = kept.forward(Tensor::from_data(burn::tensor::TensorData::new(x.iter().copied().collect::<Vec<_>>(), [9, 10]), &device()));
    let (a, b): (Vec<f32>, Vec<f32>) = (before.into_data().to_vec().unwrap(), after.into_data().to_vec().unwrap());
    assert!(a.iter().zip(&b).all(|(p, q)| (p - q).abs() < 1e-5), "{a:?} vs {b:?}");
    // Keeping a unit that does fire changes the outputs: the test sees a wrong selection.
    let wrong = net.keep_units(&[0, 1, 2, 3]).forward(Tensor::from_data(burn::tensor::TensorData::new(x.iter().copied().collect::<Vec<_>>(), [9, 10]), &device()));
    let c: Vec<f32> = wrong.into_data().to_vec().unwrap();
    assert!(a.iter().zip(&c).any(|(p, q)| (p - q).abs() > 1e-3));
}

#[test]
fn cubic_relu_matches_the_reference_polynomial() {
    let x = Tensor::<Cpu, 1>::from_floats([-4.0, 0.0, 2.0], &device());
    let y: Vec<f32> = model::activate(x, Activation::CubicRelu).into_data().to_vec().unwrap();
    let p = |z: f32| -0.0061728 * z * z * z + 0.092593 * z * z + 0.59259 * z + 0.49383;
    for (got, z) in y.iter().zip([-4.0f32, 0.0, 2.0]) {
        assert!((got - p(z)).abs() < 1e-5);
    }
}

#[test]
fn same_seed_same_network_other_seed_other_network() {
    let x = random_rows(5, 64, 1);
    let cfg = LowerNetConfig { hidden: 32, output: 8, ..Default::default() };
    let a = PretrainNet::<Cpu>::new(&cfg, 64, 1, 3, &device());
    let b = PretrainNet::<Cpu>::new(&cfg, 64, 1, 3, &device());
    let c = PretrainNet::<Cpu>::new(&cfg, 64, 1, 4, &device());
    let (pa, pb, pc) = (predict_proba(&a, x.view(), &device()), predict_proba(&b, x.view(), &device()), predict_proba(&c, x.view(), &device()));
    assert_eq!(pa, pb);
    assert_ne!(pa, pc);
}

#[test]
fn save_load_round_trip_gives_identical_predictions() {
    let dir = tempfile::tempdir().unwrap();
    let x = random_rows(7, 64, 2);
    let lcfg = LowerNetConfig { hidden: 32, output: 16, ..Default::default() };
    let hcfg = HeadConfig::mlp(12, 3, 0.2);
    let net = FullNet::<Cpu> { lower: LowerNet::new(&lcfg, 64, 5, &device()), head: Head::new(&hcfg, 16, 12, 5, &device()) };
    let before = predict_proba(&net, x.view(), &device());
    let path = dir.path().join("net");
    model::save_module(&net, &path).unwrap();
    // Load into a skeleton with *different* initial weights: only the file can make the predictions equal.
    let skeleton = FullNet::<Cpu> { lower: LowerNet::new(&lcfg, 64, 99, &device()), head: Head::new(&hcfg, 16, 12, 99, &device()) };
    assert_ne!(predict_proba(&skeleton, x.view(), &device()), before);
    let loaded = model::load_module(skeleton, &path, &device()).unwrap();
    assert_eq!(predict_proba(&loaded, x.view(), &device()), before);
    // The atomic save writes exactly the bytes Burn's file recorder writes (shipped networks and older run
    // directories stay byte for byte the same), leaves no temporary file, and replaces a previous file whole.
    let burn_path = dir.path().join("burn");
    net.clone().save_file(burn_path.clone(), &burn::record::BinFileRecorder::<burn::record::FullPrecisionSettings>::new()).unwrap();
    assert_eq!(std::fs::read(dir.path().join("burn.bin")).unwrap(), std::fs::read(dir.path().join("net.bin")).unwrap());
    model::save_module(&net, &path).unwrap();
    model::save_module_private(&net, &path).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["burn.bin", "net.bin"]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(dir.path().join("net.bin")).unwrap().permissions().mode() & 0o777, 0o600);
    }
}

#[test]
fn loading_a_missing_or_mismatched_checkpoint_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let head = Head::<Cpu>::new(&HeadConfig::mlp(0, 1, 0.2), 20, 10, 0, &device());
    let e = model::load_module(head.clone(), &dir.path().join("nothing"), &device()).unwrap_err().to_string();
    assert!(e.contains("nothing.bin") && e.contains("not found"), "{e}");
    let path = dir.path().join("garbage");
    std::fs::write(dir.path().join("garbage.bin"), b"not a burn record").unwrap();
    let e = model::load_module(head.clone(), &path, &device()).unwrap_err().to_string();
    assert!(e.contains("garbage.bin") && e.contains("truncated or corrupt (17 bytes)"), "{e}");
    assert!(!e.contains("previous version"), "Burn's advice to load with an older Burn reaches the user: {e}");
    // A record of another architecture (a head of another input width) is refused too, not loaded into the wrong shape.
    let wide = Head::<Cpu>::new(&HeadConfig::mlp(0, 1, 0.2), 30, 10, 0, &device());
    model::save_module(&wide, &dir.path().join("wide")).unwrap();
    let e = model::load_module(head, &dir.path().join("wide"), &device()).unwrap_err().to_string();
    assert!(e.contains("wide.bin") && e.contains("another architecture") && e.contains("[30, 10]") && e.contains("[20, 10]"), "{e}");
}

#[test]
fn bce_matches_the_naive_formula() {
    let z = Tensor::<Cpu, 2>::from_floats([[-3.0], [0.0], [2.5]], &device());
    let y = Tensor::<Cpu, 2>::from_floats([[0.0], [1.0], [1.0]], &device());
    let got: Vec<f32> = model::bce_with_logits(z, y).into_data().to_vec().unwrap();
    let naive = |z: f32, y: f32| {
        let p = 1.0 / (1.0 + (-z).exp());
        -(y * p.ln() + (1.0 - y) * (1.0 - p).ln())
    };
    for (g, (z, y)) in got.iter().zip([(-3.0, 0.0), (0.0, 1.0), (2.5, 1.0)]) {
        assert!((g - naive(z, y)).abs() < 1e-5, "{g} vs {}", naive(z, y));
    }
}

#[test]
fn folding_an_input_shift_into_the_first_layer_keeps_every_prediction() {
    // A DP head trains on inputs centred on a public point and is saved for the inputs as they are: the shift
    // folded into the first layer's bias must give the same predictions, for the MLP head as for the linear one.
    let x = random_rows(20, 6, 3);
    let shift = [0.5f32, 0.1, -0.3, 0.0, 2.0, 0.7];
    let shifted = &x - &ndarray::Array1::from(shift.to_vec());
    for kind in [cryptotl::config::HeadKind::Mlp, cryptotl::config::HeadKind::Linear] {
        let cfg = HeadConfig { kind, hidden: 5, pool: 2, ..HeadConfig::default() };
        let head = Head::<Cpu>::new(&cfg, 6, 5, 7, &device());
        let folded = head.clone().fold_input_shift(&shift);
        let (a, b) = (predict_proba(&folded, x.view(), &device()), predict_proba(&head, shifted.view(), &device()));
        assert!(a.iter().zip(&b).all(|(p, q)| (p - q).abs() < 1e-5), "{kind:?}: {a:?} vs {b:?}");
        // And the shift matters (the check above could fail): unfolded on the raw inputs the predictions differ.
        let raw = predict_proba(&head, x.view(), &device());
        assert!(raw.iter().zip(&b).any(|(p, q)| (p - q).abs() > 1e-3), "{kind:?}");
    }
}

#[test]
fn folding_a_dp_input_map_keeps_every_prediction() {
    // A DP head trains on (x - shift) ∘ scale (centred, the client's own features weighted) and is saved for x as it
    // is: folding the scale into the first layer's rows, then the shift into its bias, gives the same predictions.
    let x = random_rows(20, 6, 4);
    let map = cryptotl::privacy::centring::DpInputMap { shift: vec![0.5, 0.1, -0.3, 0.0, 2.0, 0.7], scale: vec![1.0, 1.0, 0.3, 0.3, 0.0, 2.0], own_weight: None, rule_noise: None };
    let mapped = map.apply(x.view());
    for kind in [cryptotl::config::HeadKind::Mlp, cryptotl::config::HeadKind::Linear] {
        let cfg = HeadConfig { kind, hidden: 5, pool: 2, ..HeadConfig::default() };
        let head = Head::<Cpu>::new(&cfg, 6, 5, 8, &device());
        let folded = map.fold(head.clone());
        let (a, b) = (predict_proba(&folded, x.view(), &device()), predict_proba(&head, mapped.view(), &device()));
        assert!(a.iter().zip(&b).all(|(p, q)| (p - q).abs() < 1e-5), "{kind:?}: {a:?} vs {b:?}");
        // The scale matters: folding the shift alone gives other predictions.
        let shift_only = predict_proba(&head.clone().fold_input_shift(&map.shift), x.view(), &device());
        assert!(shift_only.iter().zip(&b).any(|(p, q)| (p - q).abs() > 1e-3), "{kind:?}");
    }
}

/// Rows of `d` features in [0, 1] and their task appended one-hot (2 tasks). Task 0 labels a row 1 when its first
/// feature is above 0.5, task 1 when it is below: the two tasks disagree on every row.
fn two_conflicting_tasks(n: usize, d: usize, seed: u64) -> (Array2<f32>, Vec<u8>) {
    let x = random_rows(n, d, seed);
    let mut rows = Array2::zeros((n, d + 2));
    let mut y = Vec::with_capacity(n);
    for i in 0..n {
        let task = i % 2;
        rows.slice_mut(ndarray::s![i, ..d]).assign(&x.row(i));
        rows[[i, d + task]] = 1.0;
        y.push(u8::from((x[[i, 0]] > 0.5) == (task == 0)));
    }
    (rows, y)
}

#[test]
fn one_output_per_source_task_learns_tasks_that_one_shared_output_cannot() {
    use cryptotl::config::TrainConfig;
    use cryptotl::train::{Examples, train};
    let cfg = LowerNetConfig { conv_kernel: 0, hidden: 8, activation: Activation::Relu, pool: 1, output: 0, ..Default::default() };
    let (d, schedule) = (6, TrainConfig { epochs: 60, batch_size: 16, learning_rate: 0.01, patience: 0 });
    let (x, y) = two_conflicting_tasks(400, d, 1);
    let (xv, yv) = two_conflicting_tasks(200, d, 2);
    let accuracy = |p: &[f32], y: &[u8]| p.iter().zip(y).filter(|&(&p, &y)| (p >= 0.5) == (y == 1)).count() as f64 / y.len() as f64;

    let net = PretrainNet::<model::Train>::new(&cfg, d, 2, 5, &Default::default());
    assert_eq!(net.outputs(), 2);
    let per_task = train(net, Examples { x: x.view(), y: &y }, Examples { x: xv.view(), y: &yv }, &schedule, 5, "two tasks").model;
    let per_task_acc = accuracy(&predict_proba(&per_task, xv.view(), &device()), &yv);
    assert!(per_task_acc > 0.85, "one output per task: {per_task_acc}");

    // The same rows through one shared output (the task columns dropped): the tasks cancel out.
    let shared = PretrainNet::<model::Train>::new(&cfg, d, 1, 5, &Default::default());
    let (sx, svx) = (x.slice(ndarray::s![.., ..d]).to_owned(), xv.slice(ndarray::s![.., ..d]).to_owned());
    let shared = train(shared, Examples { x: sx.view(), y: &y }, Examples { x: svx.view(), y: &yv }, &schedule, 5, "shared").model;
    let shared_acc = accuracy(&predict_proba(&shared, svx.view(), &device()), &yv);
    assert!(shared_acc < 0.7, "one shared output cannot fit both tasks: {shared_acc}");

    // The task column chooses the logit: the same features under the other task give the complementary answer.
    let mut flipped = xv.clone();
    for mut row in flipped.rows_mut() {
        let t0 = row[d];
        row[d] = row[d + 1];
        row[d + 1] = t0;
    }
    let (p, q) = (predict_proba(&per_task, xv.view(), &device()), predict_proba(&per_task, flipped.view(), &device()));
    let disagree = p.iter().zip(&q).filter(|&(&a, &b)| (a >= 0.5) != (b >= 0.5)).count() as f64 / p.len() as f64;
    assert!(disagree > 0.8, "{disagree}");
}
