//! DP-SGD mechanics: the fast per-example path agrees with the reference, clipping bounds every example,
//! the noise has the configured std, Poisson batches have the right mean, and the schedule respects budgets.

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};
use cryptotl::config::{HeadConfig, PrivacyConfig, TrainConfig};
use cryptotl::model::{Head, Train};
use cryptotl::privacy::AccountantKind;
use cryptotl::privacy::dpsgd::{PrivacyRng, PrivateModel, clipped_gradient_sum_reference, gradient_norm, noisy_gradient};
use cryptotl::privacy::plan::plan;

fn device() -> burn::backend::flex::FlexDevice {
    Default::default()
}

fn batch(n: usize, d: usize, scale: f32) -> (Tensor<Train, 2>, Tensor<Train, 2>) {
    let x: Vec<f32> = (0..n * d).map(|i| ((i * 37 % 101) as f32 / 101.0) * scale).collect();
    let y: Vec<f32> = (0..n).map(|i| (i % 2) as f32).collect();
    (Tensor::from_data(TensorData::new(x, [n, d]), &device()), Tensor::from_data(TensorData::new(y, [n, 1]), &device()))
}

fn head(d: usize, hidden: usize) -> Head<Train> {
    Head::new(&HeadConfig::mlp(hidden, 3, 0.0), d, hidden, 7, &device())
}

/// Every parameter gradient as a flat vector, in visiting order.
struct Flatten<'a> {
    grads: &'a GradientsParams,
    out: Vec<Vec<f32>>,
}
impl<B: AutodiffBackend> ModuleVisitor<B> for Flatten<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let g = self.grads.get::<B::InnerBackend, D>(param.id).expect("every parameter has a gradient");
        self.out.push(g.into_data().to_vec::<f32>().unwrap());
    }
}
fn flatten<M: AutodiffModule<Train>>(m: &M, grads: &GradientsParams) -> Vec<Vec<f32>> {
    let mut f = Flatten { grads, out: vec![] };
    m.visit(&mut f);
    f.out
}

#[test]
fn fast_path_agrees_with_one_backward_per_example() {
    for h in [head(24, 12), Head::linear(24, 7, &device())] {
        fast_path_agrees(&h);
    }
}

fn fast_path_agrees(h: &Head<Train>) {
    let h = h.clone();
    for (scale, clip) in [(1.0, 1e6), (1.0, 0.05), (30.0, 0.5)] {
        let (x, y) = batch(9, 24, scale);
        let fast = h.clipped_gradient_sum(x.clone(), y.clone(), clip, None);
        let reference = clipped_gradient_sum_reference(&h, x, y, clip, None);
        for (a, b) in fast.norms.iter().zip(&reference.norms) {
            assert!((a - b).abs() <= 1e-4 * b.max(1e-3), "norm {a} vs {b}");
        }
        assert!((fast.loss_sum - reference.loss_sum).abs() < 1e-4 * reference.loss_sum.abs().max(1.0));
        let (fa, fb) = (flatten(&h, &fast.grads), flatten(&h, &reference.grads));
        for (pa, pb) in fa.iter().zip(&fb) {
            for (a, b) in pa.iter().zip(pb) {
                assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "clip {clip}: {a} vs {b}");
            }
        }
        // The clip actually bites in the second and third cases.
        if clip < 1.0 {
            assert!(reference.norms.iter().any(|&n| n > clip));
        }
    }
}

#[test]
fn every_clipped_example_has_norm_at_most_c() {
    let h = head(16, 8);
    let (x, y) = batch(6, 16, 50.0);
    let clip = 0.01;
    for i in 0..6 {
        let xi = x.clone().slice([i..i + 1, 0..16]);
        let yi = y.clone().slice([i..i + 1, 0..1]);
        for c in [h.clipped_gradient_sum(xi.clone(), yi.clone(), clip, None), clipped_gradient_sum_reference(&h, xi, yi, clip, None)] {
            assert!(c.norms[0] > clip, "the example must need clipping for the test to mean anything");
            let norm = gradient_norm(&h, &c.grads);
            assert!(norm <= clip * (1.0 + 1e-5), "clipped norm {norm} > C = {clip}");
            assert!(norm >= clip * (1.0 - 1e-4), "clipping scales to C, not below: {norm}");
        }
    }
}

#[test]
fn noise_has_the_configured_std_and_zero_mean() {
    let h = head(200, 100); // 200·100 + 100 + 98 + 1 parameters
    let (sigma, clip, denom) = (1.3, 0.7, 4.0);
    let mut rng = PrivacyRng::insecure_from_seed(3);
    let g = noisy_gradient(&h, GradientsParams::new(), sigma, clip, denom, &mut rng.noise);
    let v: Vec<f64> = flatten(&h, &g).concat().into_iter().map(|x| x as f64).collect();
    let n = v.len() as f64;
    assert!(n > 20_000.0);
    let mean = v.iter().sum::<f64>() / n;
    let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    let want = sigma * clip / denom;
    // Standard error of a sample std is want/sqrt(2n) (0.5% here): 3% cannot pass with a wrong σ·C/denominator.
    assert!((std / want - 1.0).abs() < 0.03, "std {std} vs {want}");
    assert!(mean.abs() < 5.0 * want / n.sqrt(), "mean {mean}");
    // Different seeds, different noise; same seed, same noise.
    let again = noisy_gradient(&h, GradientsParams::new(), sigma, clip, denom, &mut PrivacyRng::insecure_from_seed(3).noise);
    assert_eq!(flatten(&h, &again), flatten(&h, &g));
    let other = noisy_gradient(&h, GradientsParams::new(), sigma, clip, denom, &mut PrivacyRng::insecure_from_seed(4).noise);
    assert_ne!(flatten(&h, &other), flatten(&h, &g));
}

#[test]
fn noise_is_added_to_the_clipped_sum_not_instead_of_it() {
    let h = head(8, 6);
    let (x, y) = batch(4, 8, 1.0);
    let sum = h.clipped_gradient_sum(x, y, 10.0, None);
    let exact = flatten(&h, &sum.grads);
    let noisy = noisy_gradient(&h, sum.grads, 1e-6, 1.0, 2.0, &mut PrivacyRng::insecure_from_seed(1).noise);
    for (pa, pb) in flatten(&h, &noisy).iter().zip(&exact) {
        for (a, b) in pa.iter().zip(pb) {
            assert!((a - b / 2.0).abs() < 1e-4, "{a} vs {}", b / 2.0);
        }
    }
}

#[test]
fn poisson_batches_have_mean_qn_and_can_be_empty() {
    let mut rng = PrivacyRng::insecure_from_seed(9);
    let (n, q, trials) = (500, 0.02, 4000);
    let sizes: Vec<usize> = (0..trials).map(|_| rng.poisson_batch(n, q).len()).collect();
    let mean = sizes.iter().sum::<usize>() as f64 / trials as f64;
    let sd = (n as f64 * q * (1.0 - q)).sqrt();
    assert!((mean - n as f64 * q).abs() < 4.0 * sd / (trials as f64).sqrt(), "mean batch {mean}");
    let var = sizes.iter().map(|&s| (s as f64 - mean).powi(2)).sum::<f64>() / (trials as f64 - 1.0);
    assert!((var / (sd * sd) - 1.0).abs() < 0.15, "binomial variance {var} vs {}", sd * sd);
    let mut tiny = PrivacyRng::insecure_from_seed(1);
    assert!((0..200).any(|_| tiny.poisson_batch(20, 0.02).is_empty()), "q·N = 0.4: empty batches must occur");
}

fn privacy(noise: Option<f64>, target: Option<f64>, max: Option<f64>) -> PrivacyConfig {
    PrivacyConfig {
        enabled: true,
        max_grad_norm: 1.0,
        noise_multiplier: noise,
        target_epsilon: target,
        max_epsilon: max,
        delta: Some(1e-5),
        // These schedules are minibatch ones: epochs of batch_size / N.
        recipe: Some(cryptotl::config::DpRecipe::Minibatch),
        steps: None,
        learning_rate: None,
        sampling_rate: None,
        accountant: AccountantKind::Rdp,
        insecure_seed: None,
        own_weight: None,
    }
}

#[test]
fn schedule_refuses_to_exceed_the_target_and_stops_at_a_hard_budget() {
    let train = TrainConfig { epochs: 10, batch_size: 50, learning_rate: 1e-3, patience: 0 };
    // σ given and the target too small: refuse, saying what it would spend.
    let e = plan(&privacy(Some(0.8), Some(1.0), None), &train, 1000).unwrap_err().to_string();
    assert!(e.contains("would spend ε =") && e.contains("refusing to start"), "{e}");
    // Calibrated: spends at most the target.
    let p = plan(&privacy(None, Some(1.0), None), &train, 1000).unwrap();
    assert!(p.noise_calibrated && p.epsilon <= 1.0 && p.steps_allowed == p.steps_planned);
    assert_eq!((p.steps_per_epoch, p.steps_planned), (20, 200));
    // Hard budget below the schedule's cost: stop at the last step within it.
    let p = plan(&privacy(Some(1.5), None, Some(2.0)), &train, 1000).unwrap();
    assert!(p.stopped_by_budget() && p.epsilon <= 2.0 && p.steps_allowed > 10, "{p:?}");
    let acct = AccountantKind::Rdp.accountant();
    let next = acct.epsilon(&p.mechanism(), p.steps_allowed + 1, p.delta).unwrap();
    assert!(next > 2.0, "step {} would still fit ({next})", p.steps_allowed + 1);
    // A budget below even one step refuses to start.
    let e = plan(&privacy(Some(0.8), None, Some(2.0)), &train, 1000).unwrap_err().to_string();
    assert!(e.contains("single step"), "{e}");
    // Default δ is below 1/N.
    let mut cfg = privacy(Some(1.0), None, None);
    cfg.delta = None;
    let p = plan(&cfg, &train, 1000).unwrap();
    assert!(p.delta < 1.0 / 1000.0 && p.delta_source.contains("0.1/N"));
    // Noise the 32-bit gradients cannot carry is refused before training: σ·C past f32's range (it used to panic
    // while drawing the noise), or so small that it rounds to none at all while the accountant counts it.
    for (sigma, clip) in [(1e38, 1e3), (1e-300, 1.0)] {
        let mut cfg = privacy(Some(sigma), None, None);
        cfg.max_grad_norm = clip;
        let e = plan(&cfg, &train, 1000).unwrap_err().to_string();
        assert!(e.contains("σ·C") && e.contains("32-bit"), "{e}");
    }
}

/// A schedule whose noise outweighs the examples' clipped gradients says so, in the plan and in the report; the
/// threshold is on σ / expected batch, so it depends on both N and ε.
#[test]
fn a_schedule_too_noisy_to_be_dependable_is_flagged() {
    use cryptotl::privacy::plan::{PrivacyReport, UNRELIABLE_NOISE_PER_EXAMPLE};
    let train = TrainConfig { epochs: 10, batch_size: 50, learning_rate: 1e-3, patience: 0 };
    let at = |eps: f64, n: usize| plan(&PrivacyConfig::with_target_epsilon(eps), &train, n).unwrap();
    let few = at(1.0, 16);
    assert!(few.noise_per_example() > UNRELIABLE_NOISE_PER_EXAMPLE);
    let w = few.noise_warning().expect("16 examples at ε = 1 is a lottery");
    assert!(w.contains("σ / expected batch") && w.contains("16 examples"), "{w}");
    assert_eq!(PrivacyReport::new(&few, false, 0.5, 0.9).unwrap().warning, Some(w));
    let many = at(1.0, 652);
    assert!(many.noise_warning().is_none() && PrivacyReport::new(&many, false, 0.9, 0.9).unwrap().warning.is_none());
    // The same 16 examples with a large enough ε are not flagged.
    assert!(at(64.0, 16).noise_warning().is_none(), "{}", at(64.0, 16).noise_per_example());
}

#[test]
fn the_default_recipe_is_full_batch_and_its_epsilon_is_never_below_the_exact_one() {
    use cryptotl::config::{DEFAULT_DP_LEARNING_RATE, DEFAULT_DP_STEPS, DpRecipe};
    let train = TrainConfig { epochs: 10, batch_size: 50, learning_rate: 1e-3, patience: 0 };
    for accountant in [AccountantKind::Pld, AccountantKind::Rdp, AccountantKind::Zcdp] {
        let cfg = PrivacyConfig { accountant, ..PrivacyConfig::with_target_epsilon(1.0) };
        let p = plan(&cfg, &train, 650).unwrap();
        assert_eq!((p.recipe, p.sampling_rate, p.steps_allowed, p.learning_rate), (DpRecipe::FullBatch, 1.0, DEFAULT_DP_STEPS, DEFAULT_DP_LEARNING_RATE));
        // At q = 1 the exact ε is known: the reported one is at least it, and close (calibrated to the target).
        let exact = cryptotl::privacy::exact::gaussian_epsilon(p.noise_multiplier, p.steps_allowed as u64, p.delta).unwrap();
        assert!(p.epsilon >= exact * (1.0 - 1e-9) && p.epsilon <= 1.0 + 1e-6, "{accountant:?}: {} vs exact {exact}", p.epsilon);
        // PLD is tight; RDP and zCDP convert to (ε, δ) with some slack.
        let tight = if accountant == AccountantKind::Pld { 0.97 } else { 0.85 };
        assert!(exact > tight, "{accountant:?} calibrates close to the target: exact {exact}");
    }
    // Its own steps and learning rate; sampling_rate alone means the minibatch schedule.
    let cfg = PrivacyConfig { steps: Some(30), learning_rate: Some(0.2), ..PrivacyConfig::with_target_epsilon(2.0) };
    let p = plan(&cfg, &train, 650).unwrap();
    assert_eq!((p.steps_allowed, p.learning_rate), (30, 0.2));
    let cfg = PrivacyConfig { sampling_rate: Some(0.1), ..PrivacyConfig::with_target_epsilon(2.0) };
    let p = plan(&cfg, &train, 650).unwrap();
    assert_eq!((p.recipe, p.steps_allowed, p.learning_rate), (DpRecipe::Minibatch, 100, 1e-3));
    // Keys of one recipe under the other are config errors naming the key.
    let text = |extra: &str| format!("{}\n[privacy]\ntarget_epsilon = 1.0\n{extra}\n", cryptotl::config::QUICKSTART_TOML);
    for (extra, key) in [("recipe = \"minibatch\"\nsteps = 10", "privacy.recipe"), ("recipe = \"full_batch\"\nsampling_rate = 0.1", "privacy.sampling_rate"), ("steps = 0", "privacy.steps")] {
        let err = cryptotl::config::RunConfig::from_toml_str(&text(extra), "c.toml", &[]).unwrap_err().to_string();
        assert!(err.contains(key), "{extra}: {err}");
    }
}
