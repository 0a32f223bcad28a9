//! The server's protection of its source data: weight noise (OpenDP Gaussian, declared sensitivity), DP
//! pretraining, their composition, and the per-party budget table.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use cryptotl::config::{LowerNetConfig, QUICKSTART_TOML, RunConfig, WeightNoiseConfig};
use cryptotl::model::{Cpu, LowerNet};
use cryptotl::privacy::dpsgd::PrivacyRng;
use cryptotl::privacy::server::{
    add_weight_noise, approx_dp_measurement, calibrate_weight_noise, compose, plan_weight_noise, weight_noise_epsilon,
};
use cryptotl::privacy::{Accountant, SubsampledGaussian, zcdp};

mod common;

/// Every float parameter of a module, flattened in visiting order.
struct Flatten(Vec<f32>);
impl<B: burn::prelude::Backend> ModuleVisitor<B> for Flatten {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.0.extend(param.val().into_data().to_vec::<f32>().unwrap());
    }
}
fn flatten<M: Module<Cpu>>(m: &M) -> Vec<f32> {
    let mut v = Flatten(Vec::new());
    m.visit(&mut v);
    v.0
}

fn mean_std(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    (mean, (x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt())
}

fn noise_config(l2_sensitivity: f64, noise_std: Option<f64>, target_epsilon: Option<f64>, delta: Option<f64>) -> WeightNoiseConfig {
    WeightNoiseConfig { enabled: true, l2_sensitivity, noise_std, target_epsilon, delta, insecure_seed: Some(1) }
}

#[test]
fn weight_noise_has_the_configured_std_on_every_parameter() {
    let net = LowerNet::<Cpu>::new(&LowerNetConfig::default(), 256, 3, &Default::default());
    let before = flatten(&net);
    let std = 0.05;
    let (noised, count) = add_weight_noise(net, std, &mut PrivacyRng::insecure_from_seed(11).noise);
    let after = flatten(&noised);
    assert_eq!(count, before.len());
    assert_eq!(count, 9 + 256 * 32 + 32); // conv kernel (no bias), dense weights + biases
    let diff: Vec<f64> = before.iter().zip(&after).map(|(a, b)| (*b - *a) as f64).collect();
    assert!(diff.iter().all(|d| *d != 0.0), "every weight and bias is noised");
    let n = diff.len() as f64;
    let (mean, sample_std) = mean_std(&diff);
    // Sample std of n Gaussians: relative error ~ 1/sqrt(2n) = 0.8%; allow 4%. Mean: std/sqrt(n) = 5.5e-4; allow 4x.
    assert!((sample_std / std - 1.0).abs() < 0.04, "sample std {sample_std} vs {std}");
    assert!(mean.abs() < 4.0 * std / n.sqrt(), "mean {mean}");
    // A different seed gives different noise; the same seed the same noise.
    let again = flatten(&add_weight_noise(LowerNet::<Cpu>::new(&LowerNetConfig::default(), 256, 3, &Default::default()), std, &mut PrivacyRng::insecure_from_seed(11).noise).0);
    assert_eq!(again, after);
    let other = flatten(&add_weight_noise(LowerNet::<Cpu>::new(&LowerNetConfig::default(), 256, 3, &Default::default()), std, &mut PrivacyRng::insecure_from_seed(12).noise).0);
    assert_ne!(other, after);
}

#[test]
fn opendp_weight_noise_epsilon_matches_independent_computations() {
    let (delta, sens) = (1e-5, 0.3);
    for std in [0.05, 0.15, 0.3, 1.2] {
        let plan = plan_weight_noise(&noise_config(sens, Some(std), None, Some(delta)), 1000).unwrap().unwrap();
        // ρ = Δ²/(2s²).
        let rho = sens * sens / (2.0 * std * std);
        assert!((plan.rho - rho).abs() < 1e-9 * rho.max(1.0), "rho {} vs {rho}", plan.rho);
        // The same ε as one full-batch DP-SGD step at σ = s/Δ through OpenDP's zCDP path built independently.
        let via_step = zcdp::Zcdp.epsilon(&SubsampledGaussian::new(1.0, std / sens).unwrap(), 1, delta).unwrap();
        assert!((plan.epsilon - via_step).abs() < 1e-9 * via_step, "{} vs {via_step}", plan.epsilon);
        // The classic zCDP conversion ρ + 2 sqrt(ρ ln 1/δ) is looser; the exact Gaussian is tighter.
        assert!(plan.epsilon <= rho + 2.0 * (rho * (1.0 / delta).ln()).sqrt() + 1e-9);
        assert!(plan.epsilon_exact <= plan.epsilon + 1e-9, "exact {} > zCDP {}", plan.epsilon_exact, plan.epsilon);
        // The exact ε solves the analytic Gaussian δ(ε) (Balle & Wang 2018) for δ, computed here with libm.
        let phi = |x: f64| 0.5 * libm::erfc(-x / std::f64::consts::SQRT_2);
        let (a, e) = (sens / std, plan.epsilon_exact);
        let delta_at = phi(a / 2.0 - e / a) - e.exp() * phi(-a / 2.0 - e / a);
        assert!(delta_at <= delta * 1.001 && delta_at >= delta * 0.95, "δ(ε_exact) = {delta_at} for δ = {delta} (s = {std})");
    }
    // ρ = 2 (Δ/s = 2) pins OpenDP's conversion to the value the zcdp accountant is tested against.
    let (rho, eps) = weight_noise_epsilon(0.2, 0.1, 1e-5).unwrap();
    assert!((rho - 2.0).abs() < 1e-9 && (eps - 10.724824).abs() < 1e-5, "{rho} {eps}");
}

#[test]
fn target_epsilon_calibrates_the_smallest_std() {
    let (sens, delta) = (0.02, 1e-6);
    for target in [0.5, 2.0, 8.0] {
        let plan = plan_weight_noise(&noise_config(sens, None, Some(target), Some(delta)), 500).unwrap().unwrap();
        assert!(plan.noise_calibrated);
        assert!(plan.epsilon <= target && plan.epsilon > target * (1.0 - 1e-4), "ε {} for target {target}", plan.epsilon);
        let (_, eps_below) = weight_noise_epsilon(sens, plan.noise_std * (1.0 - 1e-4), delta).unwrap();
        assert!(eps_below > target, "a smaller std would also fit: not the smallest");
        assert_eq!(calibrate_weight_noise(sens, delta, target).unwrap(), plan.noise_std);
    }
    // Default δ = 0.1/N.
    let plan = plan_weight_noise(&noise_config(sens, Some(0.1), None, None), 400).unwrap().unwrap();
    assert!((plan.delta - 0.1 / 400.0).abs() < 1e-15 && plan.delta_source.contains("0.1/400"));
    // Disabled: no plan.
    let off = WeightNoiseConfig { enabled: false, ..noise_config(sens, Some(0.1), None, None) };
    assert!(plan_weight_noise(&off, 400).unwrap().is_none());
}

#[test]
fn composition_adds_epsilons_and_deltas_and_refuses_larger_distances() {
    let a = approx_dp_measurement(1.25, 1e-6, "a").unwrap();
    let b = cryptotl::privacy::server::weight_noise_approx_dp(
        &plan_weight_noise(&noise_config(0.1, Some(0.2), None, Some(2e-6)), 100).unwrap().unwrap(),
    )
    .unwrap();
    let (_, eps_b) = weight_noise_epsilon(0.1, 0.2, 2e-6).unwrap();
    let (eps, delta) = compose(vec![a.clone(), b]).unwrap();
    assert!((eps - (1.25 + eps_b)).abs() < 1e-12, "{eps}");
    assert!((delta - 3e-6).abs() < 1e-18, "{delta}");
    assert!(a.map(&2).is_err(), "accounted for one example only");
}

fn rejected(overrides: &[&str], key: &str, words: &str) {
    let ov: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    let err = RunConfig::from_toml_str(QUICKSTART_TOML, "q.toml", &ov).unwrap_err().to_string();
    assert!(err.contains(key) && err.contains(words), "{overrides:?}: {err}");
}

#[test]
fn bad_server_privacy_configs_are_rejected_with_the_key_and_the_reason() {
    let wn = "server_privacy.weight_noise";
    rejected(&[&format!("{wn}.l2_sensitivity=-1.0"), &format!("{wn}.noise_std=0.1")], "l2_sensitivity", "> 0");
    rejected(&[&format!("{wn}.l2_sensitivity=0.1"), &format!("{wn}.target_epsilon=0.0")], "target_epsilon", "> 0");
    rejected(&[&format!("{wn}.l2_sensitivity=0.1"), &format!("{wn}.target_epsilon=-2.0")], "target_epsilon", "> 0");
    rejected(&[&format!("{wn}.l2_sensitivity=0.1"), &format!("{wn}.target_epsilon=1.0"), &format!("{wn}.delta=1.0")], "delta", "(0, 1)");
    rejected(&[&format!("{wn}.l2_sensitivity=0.1"), &format!("{wn}.noise_std=0.1"), &format!("{wn}.target_epsilon=1.0")], wn, "not both");
    rejected(&[&format!("{wn}.l2_sensitivity=0.1")], wn, "noise_std");
    rejected(&[&format!("{wn}.l2_sensitivity=0.1"), &format!("{wn}.noise_std=1e300")], "noise_std", "no signal");
    rejected(&[&format!("{wn}.l2_sensitivity=1e300"), &format!("{wn}.noise_std=0.1")], "l2_sensitivity", "[1e-6, 1e6]");
    rejected(&[&format!("{wn}.noise_std=0.1")], "l2_sensitivity", "missing");
    rejected(&[&format!("{wn}.l2_sensitivity=0.1"), &format!("{wn}.noise_std=0.1"), &format!("{wn}.sigma=1.0")], "sigma", "unknown");
    let dp = "server_privacy.dp_pretraining";
    rejected(&[&format!("{dp}.target_epsilon=0.0")], "server_privacy.dp_pretraining.target_epsilon", "> 0");
    rejected(&[&format!("{dp}.noise_multiplier=1.0"), &format!("{dp}.delta=1.5")], "server_privacy.dp_pretraining.delta", "(0, 1)");
    rejected(&[&format!("{dp}.max_grad_norm=1.0")], dp, "noise_multiplier");
    // Accepted: each alone, and both.
    for ov in [
        vec![format!("{wn}.l2_sensitivity=0.1"), format!("{wn}.noise_std=0.1")],
        vec![format!("{dp}.target_epsilon=3.0")],
        vec![format!("{wn}.l2_sensitivity=0.1"), format!("{wn}.target_epsilon=2.0"), format!("{wn}.delta=1e-6"), format!("{dp}.noise_multiplier=1.0")],
    ] {
        // DP pretraining needs the source paths pooled: balancing repeats examples (refused, saying so).
        let dp_on = ov.iter().any(|o| o.starts_with(dp));
        if dp_on {
            let err = RunConfig::from_toml_str(QUICKSTART_TOML, "q.toml", &ov).unwrap_err().to_string();
            assert!(err.contains("source.balance_paths"), "{err}");
        }
        let ov: Vec<String> = ov.into_iter().chain(dp_on.then(|| "source.balance_paths=false".to_string())).collect();
        RunConfig::from_toml_str(QUICKSTART_TOML, "q.toml", &ov).unwrap();
    }
}

/// The tiny run with both server mechanisms and a private head, in the clear (the encrypted path is tested in
/// `he.rs` and `end_to_end.rs`; here only the server's network and the budget matter).
#[test]
fn a_run_reports_every_party_and_noises_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let base = common::tiny_config(dir.path());
    let load = |extra: &str| RunConfig::from_toml_str(&format!("{base}{extra}"), "tiny.toml", &["he.enabled=false".to_string()]).unwrap();
    let data_cfg = load("");
    let (source, summary) = cryptotl::pipeline::load_source(&data_cfg).unwrap();

    // Off: the released network is the pretrained one, bit for bit, and the table claims nothing for the server.
    let plain = cryptotl::pipeline::server_lower_network(&data_cfg).unwrap();
    assert!(plain.weight_noise.is_none() && plain.meta.dp_pretraining.is_none());
    let pretrained = flatten(&cryptotl::pipeline::pretrain(&data_cfg, &source, &summary).unwrap().net);
    assert_eq!(flatten(&plain.net), pretrained);
    let disabled = load("[server_privacy.weight_noise]\nenabled = false\nl2_sensitivity = 0.01\n");
    assert_eq!(flatten(&cryptotl::pipeline::server_lower_network(&disabled).unwrap().net), pretrained);

    // Weight noise alone: the difference to the pretrained network has the configured std.
    let noisy_cfg = load(WEIGHT_NOISE);
    let noisy = cryptotl::pipeline::server_lower_network(&noisy_cfg).unwrap();
    let diff: Vec<f64> = flatten(&noisy.net).iter().zip(&pretrained).map(|(a, b)| (*a - *b) as f64).collect();
    let applied = noisy.weight_noise.as_ref().unwrap();
    assert_eq!(applied.parameters, diff.len());
    assert!(!applied.from_cache);
    let (_, std) = mean_std(&diff);
    assert!((std / 0.02 - 1.0).abs() < 0.08, "std {std} over {} values", diff.len());
    // A second run reuses the same draw (no new release).
    let again = cryptotl::pipeline::server_lower_network(&noisy_cfg).unwrap();
    assert!(again.weight_noise.as_ref().unwrap().from_cache);
    assert_eq!(flatten(&again.net), flatten(&noisy.net));
    // A stored release that cannot be read is never silently drawn again (that would be a second release).
    let entry = std::fs::read_dir(&noisy.cache_dir).unwrap().map(|e| e.unwrap().path()).find(|p| p.file_name().unwrap().to_string_lossy().starts_with("weight-noise-")).unwrap();
    let net_file = entry.join("lower.bin");
    let good = std::fs::read(&net_file).unwrap();
    std::fs::write(&net_file, &good[..good.len() / 2]).unwrap();
    let err = cryptotl::pipeline::server_lower_network(&noisy_cfg).err().expect("a torn release is refused").to_string();
    assert!(err.contains("second release") && err.contains("server_privacy.weight_noise"), "{err}");
    // An entry without its meta.json was never used: it is drawn again (the same seeded draw here).
    std::fs::remove_file(entry.join("meta.json")).unwrap();
    let redrawn = cryptotl::pipeline::server_lower_network(&noisy_cfg).unwrap();
    assert!(!redrawn.weight_noise.as_ref().unwrap().from_cache);
    assert_eq!(flatten(&redrawn.net), flatten(&noisy.net));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(&entry), mode(&net_file), mode(&entry.join("meta.json"))), (0o700, 0o600, 0o600), "the server's weights are owner-only");
    }

    // Everything on: DP pretraining, weight noise, DP-SGD head.
    let all = load(
        "[server_privacy.weight_noise]\nl2_sensitivity = 0.01\ntarget_epsilon = 3.0\ndelta = 1e-6\ninsecure_seed = 9\n\
         [server_privacy.dp_pretraining]\nnoise_multiplier = 1.0\ninsecure_seed = 4\n\
         [privacy]\ntarget_epsilon = 4.0\ninsecure_seed = 1\n",
    );
    let report = cryptotl::pipeline::run(&all).unwrap();
    let pre = report.pretraining.as_ref().unwrap().dp_pretraining.as_ref().expect("DP pretraining ran");
    let wn = &report.pretraining.as_ref().unwrap().weight_noise.as_ref().expect("weight noise applied").plan;
    let client = report.privacy.as_ref().unwrap();
    let rows = &report.budget.rows;
    let mechanisms: Vec<&str> = rows.iter().map(|r| r.mechanism.as_str()).collect();
    assert_eq!(mechanisms.len(), 5, "{mechanisms:?}");
    // The one-line summaries (`Report::headline`) name each mechanism by its short name.
    let short: Vec<&str> = rows.iter().map(|r| r.short_mechanism()).collect();
    assert_eq!(short, ["DP-SGD on the head", "DP pretraining", "weight noise", "composed total", "all server releases about these source examples, together"]);
    assert_eq!((rows[0].party.as_str(), rows[0].epsilon, rows[0].delta), ("client", Some(client.plan.epsilon), Some(client.plan.delta)));
    assert_eq!((rows[1].party.as_str(), rows[1].epsilon), ("server", Some(pre.epsilon)));
    assert!(rows[1].mechanism.starts_with("DP pretraining"));
    assert_eq!(rows[2].epsilon, Some(wn.epsilon));
    assert!(wn.epsilon <= 3.0 && wn.noise_calibrated);
    assert!(rows[3].mechanism.starts_with("composed"));
    assert!((rows[3].epsilon.unwrap() - (pre.epsilon + wn.epsilon)).abs() < 1e-12);
    assert!((rows[3].delta.unwrap() - (pre.delta + wn.delta)).abs() < 1e-18);
    // The plain network's noised release above learned from the same source texts: the last row adds it to this
    // pretraining's releases (the smaller of their two valid bounds).
    let (this_eps, this_delta) = if pre.epsilon < wn.epsilon { (pre.epsilon, pre.delta) } else { (wn.epsilon, wn.delta) };
    assert!(rows[4].mechanism.contains("1 other pretraining"), "{}", rows[4].mechanism);
    assert!((rows[4].epsilon.unwrap() - (this_eps + applied.plan.epsilon)).abs() < 1e-9, "{:?}", rows[4].epsilon);
    assert!((rows[4].delta.unwrap() - (this_delta + applied.plan.delta)).abs() < 1e-15, "{:?}", rows[4].delta);
    let tightest = report.budget.source_tightest.as_ref().unwrap();
    let expect = if pre.epsilon < wn.epsilon { "DP pretraining alone" } else { "weight noise alone" };
    assert!(tightest.contains(expect), "{tightest}");
    assert!(!report.budget.tfhe.enabled && report.budget.tfhe.statement.contains("he.enabled = false"));
    let md = std::fs::read_to_string(all.output_dir().join("report.md")).unwrap();
    assert!(md.contains("## Privacy budget") && md.contains("composed total") && md.contains("Encryption:"));
    // The DP-pretrained network is cached under its own key, apart from the ordinary one.
    assert_ne!(cryptotl::pipeline::pretrain_key(&all), cryptotl::pipeline::pretrain_key(&data_cfg));
    // DP pretraining reads the source through a map fitted on nothing: DP-SGD's ε is for a fixed map from one
    // example to its features, and a min-max range or IDF weight fitted on the source would let one example move
    // all the others. The plain network's map is fitted (so the check can fail).
    let fixed = cryptotl::features::FeaturePipeline::data_independent(&all.features).unwrap();
    assert_eq!(cryptotl::pipeline::server_lower_network(&all).unwrap().features, fixed);
    assert_ne!(plain.features, fixed);
    // The budget names what else came from the source outside the mechanisms: no longer the map under DP
    // pretraining; the scaling and IDF weights with weight noise alone.
    let outside = |c: &RunConfig| cryptotl::privacy::budget::fitted_outside(c).join("; ");
    assert!(!outside(&all).contains("scaling") && !outside(&all).contains("IDF"), "{}", outside(&all));
    assert!(outside(&noisy_cfg).contains("min-max feature scaling") && outside(&noisy_cfg).contains("IDF"), "{}", outside(&noisy_cfg));
}

#[test]
fn the_budget_table_claims_nothing_where_nothing_was_done() {
    let tfhe = cryptotl::privacy::budget::TfheStatement::new(&cryptotl::config::HeConfig::default(), None).unwrap();
    assert!(tfhe.enabled && tfhe.security_bits == Some(128) && tfhe.statement.contains("V1_8_PARAM_MESSAGE_2_CARRY_2"));
    let b = cryptotl::privacy::budget::BudgetReport::new(None, 10, Default::default(), tfhe).unwrap();
    assert_eq!(b.rows.len(), 2);
    assert!(b.rows.iter().all(|r| r.epsilon.is_none() && r.mechanism.starts_with("none") && r.short_mechanism() == "no DP"));
    assert!(b.source_tightest.is_none());
    assert!(b.to_markdown().contains("| ∞ |"));
}

#[test]
fn a_sweep_writes_csv_markdown_and_chart_with_one_line_per_server_setting() {
    use cryptotl::sweep::{Epsilon, ServerMechanism, SweepSpec};
    let dir = tempfile::tempdir().unwrap();
    let base = common::tiny_config(dir.path());
    let ov = ["he.enabled=false".to_string()];
    let cfg = RunConfig::from_toml_str(&format!("{base}[server_privacy.weight_noise]\nl2_sensitivity = 0.01\nnoise_std = 0.01\ninsecure_seed = 2\n[privacy]\ntarget_epsilon = 1.0\ninsecure_seed = 3\n"), "tiny.toml", &ov).unwrap();
    let spec = SweepSpec {
        client_epsilons: Epsilon::parse_list("2,inf").unwrap(),
        server_epsilons: Epsilon::parse_list("4,inf").unwrap(),
        server_mechanism: ServerMechanism::WeightNoise,
        raw_baseline: true,
        repeats: 2,
    };
    let sweep = cryptotl::sweep::run(&cfg, &spec).unwrap();
    assert_eq!(sweep.points.len(), 3 * 2 * 2, "(2 server settings + raw) x 2 client ε x 2 repeats");
    for p in &sweep.points {
        if p.client_epsilon.is_finite() {
            assert!(p.client_epsilon_reached <= p.client_epsilon && p.client_noise_multiplier > 0.0);
        } else {
            assert!(p.client_epsilon_reached.is_infinite() && p.client_noise_multiplier == 0.0);
        }
        match p.server_epsilon {
            Some(e) if e.is_finite() => assert!(p.server_epsilon_reached <= e && p.server_epsilon_reached > 0.99 * e),
            _ => assert!(p.server_epsilon_reached.is_infinite()),
        }
    }
    // The separable target is learnt without DP on every line.
    assert!(sweep.cells().iter().filter(|c| c.client_epsilon.is_infinite()).all(|c| c.accuracy_mean > 0.8), "{}", sweep.to_markdown());
    let files = sweep.write(&dir.path().join("sweep")).unwrap();
    let csv = std::fs::read_to_string(&files[0]).unwrap();
    assert_eq!(csv.lines().count(), 1 + 12);
    let svg = std::fs::read_to_string(&files[2]).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("server ε = 4 (weight-noise)") && svg.contains(cryptotl::sweep::RAW_SERIES));
    let md = std::fs::read_to_string(&files[1]).unwrap();
    assert!(md.contains("| server ε = ∞ (no weight-noise) |") && md.contains("server ε set through weight-noise"), "{md}");
    // In one process it says, as a run's report does, how many target texts the server's network learned from.
    assert!(matches!(&sweep.source_overlap, Some(cryptotl::overlap::OverlapCheck::Checked(o)) if o.total() == 0), "{:?}", sweep.source_overlap);
    assert!(md.contains("Target texts among the server's source training texts") && md.contains(": none ("), "{md}");

    // A server ε for weight noise needs the declared sensitivity.
    let plain = RunConfig::from_toml_str(&base, "tiny.toml", &ov).unwrap();
    let err = cryptotl::sweep::run(&plain, &spec).unwrap_err().to_string();
    assert!(err.contains("l2_sensitivity"), "{err}");
    for bad in ["0", "-1", "abc", "", "nan"] {
        assert!(Epsilon::parse_list(bad).is_err(), "{bad:?}");
    }
    // Repeats are bounded like a curve's draws: 10^8 of them ran until killed.
    for repeats in [0, cryptotl::sweep::MAX_REPEATS + 1] {
        let err = cryptotl::sweep::run(&cfg, &SweepSpec { repeats, ..spec.clone() }).unwrap_err().to_string();
        assert!(err.contains("repeats must be in 1..=1000"), "{err}");
    }
}

/// A damaged pretraining cache entry is a miss (warn, train again), never a permanent failure.
#[test]
fn a_torn_or_corrupt_pretraining_cache_entry_is_trained_again() {
    use cryptotl::pipeline::NetworkOrigin;
    let dir = tempfile::tempdir().unwrap();
    let cfg = RunConfig::from_toml_str(&common::tiny_config(dir.path()), "tiny.toml", &["he.enabled=false".to_string()]).unwrap();
    let first = cryptotl::pipeline::server_lower_network(&cfg).unwrap();
    assert_eq!(first.origin, NetworkOrigin::Trained);
    assert_eq!(cryptotl::pipeline::server_lower_network(&cfg).unwrap().origin, NetworkOrigin::Cache);
    let net = first.cache_dir.join("lower.bin");
    let len = std::fs::metadata(&net).unwrap().len();
    // Torn network file (a run killed while writing it, as the issue found): trained again, then cached again.
    std::fs::OpenOptions::new().write(true).open(&net).unwrap().set_len(len / 3).unwrap();
    assert_eq!(cryptotl::pipeline::server_lower_network(&cfg).unwrap().origin, NetworkOrigin::Trained);
    assert_eq!(std::fs::metadata(&net).unwrap().len(), len);
    assert_eq!(cryptotl::pipeline::server_lower_network(&cfg).unwrap().origin, NetworkOrigin::Cache);
    // Garbage meta data: the same.
    std::fs::write(first.cache_dir.join("meta.json"), b"{\"key\": 3").unwrap();
    assert_eq!(cryptotl::pipeline::server_lower_network(&cfg).unwrap().origin, NetworkOrigin::Trained);
    let left: Vec<_> = std::fs::read_dir(&first.cache_dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n.contains("partial")).collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}

/// The tiny config (in the clear) whose source is a copy of the fixture in `dir`, with `extra` TOML appended; and
/// that copy's path.
fn config_with_own_source(dir: &std::path::Path, extra: &str) -> (RunConfig, std::path::PathBuf) {
    let source = copy_of_fixture_source(dir);
    (config_on_source(dir, &source, extra), source)
}

/// The tiny config (in the clear) whose source is `source` as it is now, with `extra` TOML appended.
fn config_on_source(dir: &std::path::Path, source: &std::path::Path, extra: &str) -> RunConfig {
    let ov = ["he.enabled=false".to_string(), format!("source.paths=[{:?}]", source.display().to_string())];
    RunConfig::from_toml_str(&format!("{}{extra}", common::tiny_config(dir)), "tiny.toml", &ov).unwrap()
}

/// A copy of the fixture source in `dir`, to change.
fn copy_of_fixture_source(dir: &std::path::Path) -> std::path::PathBuf {
    let source = dir.join("source.csv");
    std::fs::copy(format!("{}/separable_source.csv", common::FX), &source).unwrap();
    source
}

/// Weight noise of std 0.02 with a fixed seed (tests only).
const WEIGHT_NOISE: &str = "[server_privacy.weight_noise]\nl2_sensitivity = 0.01\nnoise_std = 0.02\ninsecure_seed = 9\n";

/// The complete weight-noise entry of the pretraining entry `pretrain_dir` whose setting has std `std`.
fn noise_entry(pretrain_dir: &std::path::Path, std: f64) -> std::path::PathBuf {
    std::fs::read_dir(pretrain_dir).unwrap().map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("weight-noise-"))
        .find(|p| std::fs::read(p.join("meta.json")).is_ok_and(|m| serde_json::from_slice::<serde_json::Value>(&m).unwrap()["plan"]["noise_std"] == std))
        .unwrap_or_else(|| panic!("the entry of the setting with std {std}"))
}

/// Put a non-empty folder where the file `path` is, so that writing it fails (a rewrite cut short).
fn block_file(path: &std::path::Path) {
    std::fs::remove_file(path).unwrap();
    std::fs::create_dir_all(path.join("blocker")).unwrap();
}

/// Flip the label of the first row of a `label,text` CSV.
fn flip_first_label(path: &std::path::Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let (header, rest) = text.split_once('\n').unwrap();
    let flipped = match rest.strip_prefix('0') {
        Some(tail) => format!("1{tail}"),
        None => format!("0{}", rest.strip_prefix('1').expect("the first row is labelled 0 or 1")),
    };
    std::fs::write(path, format!("{header}\n{flipped}")).unwrap();
}

/// Swap the labels of the first 0-row and the first 1-row of a `label,text` CSV: other data, same class counts.
fn swap_two_labels(path: &std::path::Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let first = |label: &str| (1..lines.len()).find(|&i| lines[i].starts_with(label)).expect("a row of each class");
    let (zero, one) = (first("0,"), first("1,"));
    lines[zero].replace_range(..1, "1");
    lines[one].replace_range(..1, "0");
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// Replace the text of the first row of a `label,text` CSV by `text`.
fn replace_first_text(path: &std::path::Path, text: &str) {
    let body = std::fs::read_to_string(path).unwrap();
    let mut lines: Vec<String> = body.lines().map(str::to_string).collect();
    lines[1] = format!("{},{text}", &lines[1][..1]);
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// A pretraining entry records the source texts its networks learned from (training and validation splits), which
/// other pretrainings are matched on: a retraining on changed data adds its texts to the earlier network's (whose
/// releases stay recorded there); an entry from before the record, retrained, records its new texts when it holds no
/// release of the earlier network, and nothing when it does (what that release learned from is unknown).
#[test]
fn a_pretraining_entry_records_what_its_networks_learned_from() {
    use cryptotl::overlap::SourceFingerprints;
    use cryptotl::pipeline::{load_source, recorded_examples, server_lower_network, LEARNED_FROM_FILE};
    let dir = tempfile::tempdir().unwrap();
    let (cfg, source) = config_with_own_source(dir.path(), "");
    let learned = || SourceFingerprints::of_source(&load_source(&cfg).unwrap().0);
    let first = server_lower_network(&cfg).unwrap();
    let at_first = learned();
    assert_eq!(recorded_examples(&first.cache_dir), Some(at_first.clone()));
    let split = load_source(&cfg).unwrap().0;
    assert!(split.test.texts.iter().any(|t| !at_first.contains(t)), "the test split is not among what it learned from");
    // A text changed: trained again, the record holds both networks' texts.
    let original = split.train.texts.iter().chain(&split.validation.texts).find(|t| std::fs::read_to_string(&source).unwrap().lines().nth(1).unwrap().ends_with(t.as_str())).cloned();
    replace_first_text(&source, "a brand new sentence about a lovely film");
    let second = server_lower_network(&cfg).unwrap();
    assert_eq!(second.origin, cryptotl::pipeline::NetworkOrigin::Trained);
    let both = recorded_examples(&second.cache_dir).unwrap();
    assert_eq!(both, at_first.union(&learned()));
    if let Some(original) = original {
        assert!(both.contains(&original) && !learned().contains(&original), "the earlier network's text stays recorded");
    }
    // An entry from before the record, with no release: retrained, it records its new texts alone.
    std::fs::remove_file(second.cache_dir.join(LEARNED_FROM_FILE)).unwrap();
    replace_first_text(&source, "another new sentence about a dreadful plot");
    server_lower_network(&cfg).unwrap();
    assert_eq!(recorded_examples(&second.cache_dir), Some(learned()));
    // With a release of the earlier network that records nothing, it records nothing: unknown.
    let noised = config_on_source(dir.path(), &source, WEIGHT_NOISE);
    server_lower_network(&noised).unwrap();
    std::fs::remove_file(second.cache_dir.join(LEARNED_FROM_FILE)).unwrap();
    replace_first_text(&source, "a third new sentence with wonderful acting");
    assert_eq!(server_lower_network(&cfg).unwrap().origin, cryptotl::pipeline::NetworkOrigin::Trained);
    assert_eq!(recorded_examples(&second.cache_dir), None);
}

/// A noised network is a release of the pretrained network it was drawn from. Once that network is trained again
/// (its source data changed), the stored draw is not this network's: it gets its own, never the earlier release.
#[test]
fn a_network_trained_again_gets_its_own_noise_draw_not_the_earlier_release() {
    let dir = tempfile::tempdir().unwrap();
    // Two labels swapped (one each way), so the split's sizes, and with them the default delta and the entry's key,
    // stay the same: only the record of the noised weights tells the earlier release from this network's.
    let (cfg, source) = config_with_own_source(dir.path(), WEIGHT_NOISE);
    let first = cryptotl::pipeline::server_lower_network(&cfg).unwrap();
    let drawn = first.weight_noise.clone().expect("noised");
    let base = drawn.base_network.clone().expect("the draw records its pretrained network");
    assert!(!drawn.from_cache);
    let reused = cryptotl::pipeline::server_lower_network(&cfg).unwrap();
    assert!(reused.weight_noise.unwrap().from_cache);
    assert_eq!(flatten(&reused.net), flatten(&first.net));

    swap_two_labels(&source);
    let entries = |d: &std::path::Path| std::fs::read_dir(d).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("weight-noise-")).count();
    let again = cryptotl::pipeline::server_lower_network(&cfg).unwrap();
    assert_eq!(again.origin, cryptotl::pipeline::NetworkOrigin::Trained);
    assert_eq!(entries(&again.cache_dir), 1, "the same setting's entry, drawn again in place");
    let applied = again.weight_noise.clone().unwrap();
    assert!(!applied.from_cache, "the earlier network's release was handed out as this network's");
    assert_ne!(applied.base_network.as_deref(), Some(base.as_str()));
    assert_ne!(flatten(&again.net), flatten(&first.net));
    // And this draw is kept: the next run reuses it.
    let next = cryptotl::pipeline::server_lower_network(&cfg).unwrap();
    assert!(next.weight_noise.unwrap().from_cache);
    assert_eq!(flatten(&next.net), flatten(&again.net));
}

/// Every noised release the server has stored for one pretraining composes for whoever holds them all: a run's
/// budget says so beside its own release, releases a retrained network's draw replaced included.
#[test]
fn the_budget_composes_every_noised_release_stored_for_the_pretraining() {
    let dir = tempfile::tempdir().unwrap();
    let wider = WEIGHT_NOISE.replace("noise_std = 0.02", "noise_std = 0.05");
    let (narrow_cfg, source) = config_with_own_source(dir.path(), WEIGHT_NOISE);
    let (wide_cfg, _) = config_with_own_source(dir.path(), &wider);
    let plan = |c: &RunConfig| cryptotl::pipeline::server_lower_network(c).unwrap();

    // One release: nothing more to say.
    let first = cryptotl::pipeline::run(&narrow_cfg).unwrap();
    assert!(!first.budget.rows.iter().any(|r| r.mechanism.starts_with("all stored noised releases")), "{:?}", first.budget.rows);
    let narrow = first.pretraining.as_ref().unwrap().weight_noise.clone().unwrap().plan;

    // A second setting of the same network: its run's budget composes both, as one Gaussian of the pooled precision.
    let second = cryptotl::pipeline::run(&wide_cfg).unwrap();
    let wide = second.pretraining.as_ref().unwrap().weight_noise.clone().unwrap().plan;
    let row = second.budget.rows.iter().find(|r| r.mechanism.starts_with("all stored noised releases")).expect("the composed row");
    assert!(row.mechanism.contains("2 releases"), "{}", row.mechanism);
    assert!(second.headline().contains("ε = ") && second.headline().contains("(all stored noised releases, together)"), "{}", second.headline());
    let pooled_std = (1.0 / (1.0 / 0.02f64.powi(2) + 1.0 / 0.05f64.powi(2))).sqrt();
    let (_, expected) = cryptotl::privacy::server::weight_noise_epsilon(0.01, pooled_std, wide.delta).unwrap();
    assert!((row.epsilon.unwrap() - expected).abs() < 1e-6 * expected, "{:?} against {expected}", row.epsilon);
    assert!(row.epsilon.unwrap() > narrow.epsilon.max(wide.epsilon), "together is more than either alone");
    assert_eq!(row.delta, Some(wide.delta));
    let tightest = second.budget.source_tightest.as_ref().unwrap();
    assert!(tightest.contains("all 2 noised releases"), "{tightest}");
    let md = std::fs::read_to_string(wide_cfg.output_dir().join("report.md")).unwrap();
    assert!(md.contains("all stored noised releases, together"), "{md}");
    // The first setting, reused from the cache, now names the second too.
    let reused = plan(&narrow_cfg);
    assert!(reused.weight_noise.as_ref().unwrap().from_cache);
    assert_eq!(reused.other_releases.plans, vec![wide.clone()]);

    // Trained again on changed data (same sizes, so the same keys): the narrow setting's entry is drawn again in
    // place. The release it held was made all the same, so it is still counted, now and when the entry is reused.
    swap_two_labels(&source);
    let retrained = plan(&narrow_cfg);
    assert_eq!(retrained.origin, cryptotl::pipeline::NetworkOrigin::Trained);
    assert!(!retrained.weight_noise.as_ref().unwrap().from_cache);
    let mut others = retrained.other_releases.plans.clone();
    others.sort_by(|a, b| a.noise_std.total_cmp(&b.noise_std));
    assert_eq!(others, vec![narrow.clone(), wide.clone()], "the replaced release and the other setting's");
    let again = plan(&narrow_cfg);
    assert!(again.weight_noise.as_ref().unwrap().from_cache);
    assert_eq!(again.other_releases.plans.len(), 2, "the replaced release is remembered by the entry that replaced it");

    // A replacing draw cut short after it began (here: its network file cannot be written) loses no record: the
    // next draw still counts the releases the entry held.
    swap_two_labels(&source);
    let narrow_entry = noise_entry(&again.cache_dir, 0.02);
    block_file(&narrow_entry.join("lower.bin"));
    assert!(cryptotl::pipeline::server_lower_network(&narrow_cfg).is_err(), "the network file cannot be written");
    assert!(!narrow_entry.join("meta.json").exists(), "the rewrite began");
    std::fs::remove_dir_all(narrow_entry.join("lower.bin")).unwrap();
    let recovered = plan(&narrow_cfg);
    assert!(!recovered.weight_noise.as_ref().unwrap().from_cache);
    assert_eq!(recovered.weight_noise.as_ref().unwrap().drawn_over.len(), 2, "both earlier narrow releases, carried over the cut");
    assert_eq!(recovered.other_releases.plans.len(), 3, "and the wide setting's");

    // A stored release whose record cannot be read has unknown noise: together they have no bound, and the row says so.
    let wide_entry = noise_entry(&again.cache_dir, 0.05);
    std::fs::write(wide_entry.join("meta.json"), "{ torn").unwrap();
    let torn = cryptotl::pipeline::run(&narrow_cfg).unwrap();
    let row = torn.budget.rows.iter().find(|r| r.mechanism.starts_with("all stored noised releases")).expect("the composed row");
    assert_eq!((row.epsilon, row.delta), (None, None), "{row:?}");
    assert!(row.accountant.contains("cannot be read"), "{}", row.accountant);
    assert!(torn.budget.source_tightest.as_ref().unwrap().contains("no bound"));
}

/// An entry whose replacing draw was cut short still stands for the releases it replaced: the other settings' budget
/// rows count them before it is drawn again.
#[test]
fn a_draw_cut_short_still_counts_in_the_other_settings_rows() {
    let dir = tempfile::tempdir().unwrap();
    let (narrow_cfg, source) = config_with_own_source(dir.path(), WEIGHT_NOISE);
    let wide_cfg = config_on_source(dir.path(), &source, &WEIGHT_NOISE.replace("noise_std = 0.02", "noise_std = 0.05"));
    let narrow = cryptotl::pipeline::server_lower_network(&narrow_cfg).unwrap();
    let wide = cryptotl::pipeline::server_lower_network(&wide_cfg).unwrap();
    let narrow_entry = noise_entry(&narrow.cache_dir, 0.02);
    let (narrow, wide) = (narrow.weight_noise.unwrap(), wide.weight_noise.unwrap());
    // The network is trained again (same sizes, same keys); the narrow setting's replacing draw is cut short.
    swap_two_labels(&source);
    block_file(&narrow_entry.join("lower.bin"));
    assert!(cryptotl::pipeline::server_lower_network(&narrow_cfg).is_err(), "the network file cannot be written");
    // The wide setting is drawn again for the new network: it counts its own earlier release and the narrow one the
    // incomplete entry carries.
    let again = cryptotl::pipeline::server_lower_network(&wide_cfg).unwrap();
    assert!(!again.weight_noise.as_ref().unwrap().from_cache);
    assert_eq!(again.other_releases.plans, vec![wide.plan, narrow.plan]);
    assert_eq!(again.other_releases.unreadable, 0);
}

/// The tiny config on its own source copy in `dir`, with weight noise of std `std` (fixed seed) under
/// `server_privacy.total_epsilon = total`.
fn capped_config(dir: &std::path::Path, std: &str, total: f64) -> RunConfig {
    let table = WEIGHT_NOISE.replace("noise_std = 0.02", &format!("noise_std = {std}"));
    config_with_own_source(dir, &format!("[server_privacy]\ntotal_epsilon = {total}\n{table}")).0
}

/// `server_privacy.total_epsilon` caps what the noised releases of one pretraining spend together: a new draw
/// that would compose above it is refused before it is made; one within it, or an already-made release, is not.
#[test]
fn a_noised_release_beyond_the_servers_total_is_refused_before_it_is_drawn() {
    let dir = tempfile::tempdir().unwrap();
    let capped = |std: &str, total: f64| capped_config(dir.path(), std, total);
    // One release alone above the total is refused too.
    let narrow_alone = cryptotl::pipeline::server_lower_network(&config_with_own_source(dir.path(), WEIGHT_NOISE).0).unwrap();
    std::fs::remove_dir_all(&narrow_alone.cache_dir).unwrap();
    let narrow = narrow_alone.weight_noise.unwrap().plan;
    let err = cryptotl::pipeline::server_lower_network(&capped("0.02", narrow.epsilon * 0.9)).err().expect("above the total alone").to_string();
    assert!(err.contains("server_privacy.total_epsilon") && err.contains("no other release"), "{err}");
    // Within the total: drawn. A second setting that would compose above it is refused, naming the release made.
    let first = cryptotl::pipeline::server_lower_network(&capped("0.02", narrow.epsilon * 1.01)).unwrap();
    assert!(!first.weight_noise.as_ref().unwrap().from_cache);
    let wide_cfg = config_with_own_source(dir.path(), &WEIGHT_NOISE.replace("noise_std = 0.02", "noise_std = 0.05")).0;
    let wide = cryptotl::privacy::server::plan_weight_noise(wide_cfg.server_privacy.weight_noise.as_ref().unwrap(), first.meta.source.train).unwrap().unwrap();
    let (_, together) = cryptotl::privacy::server::weight_noise_releases_epsilon(&[&narrow, &wide], wide.delta).unwrap();
    let between = 0.5 * (together + narrow.epsilon.max(wide.epsilon));
    let err = cryptotl::pipeline::server_lower_network(&capped("0.05", between)).err().expect("above the total together").to_string();
    assert!(err.contains("server_privacy.total_epsilon") && err.contains("1 release(s) already made (std 2.0000e-2)"), "{err}");
    let noise_entries = || std::fs::read_dir(&first.cache_dir).unwrap().filter(|e| {
        let p = e.as_ref().unwrap().path();
        p.file_name().unwrap().to_string_lossy().starts_with("weight-noise-") && p.join("meta.json").exists()
    }).count();
    assert_eq!(noise_entries(), 1, "nothing was released");
    let noise_folders = std::fs::read_dir(&first.cache_dir).unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("weight-noise-"))
        .count();
    assert_eq!(noise_folders, 1, "a refused draw leaves no folder behind");
    // The release already made is reused under any total; a total above both lets the second be drawn.
    assert!(cryptotl::pipeline::server_lower_network(&capped("0.02", narrow.epsilon * 0.5)).unwrap().weight_noise.unwrap().from_cache);
    let second = cryptotl::pipeline::server_lower_network(&capped("0.05", together * 1.01)).unwrap();
    assert!(!second.weight_noise.as_ref().unwrap().from_cache);
    assert_eq!(noise_entries(), 2);
    // A bad total is refused with its key.
    // A DP-pretrained network bounds every release drawn from it: noise beyond the total by its own count is drawn when
    // the DP pretraining keeps the releases within it.
    assert!(narrow.epsilon > 1.5, "the noise alone must exceed the total below: {}", narrow.epsilon);
    // (In a cache of its own: here the releases above, of another pretraining on the same source, would count too.)
    let dp_dir = tempfile::tempdir().unwrap();
    let dp_cfg = config_with_own_source(dp_dir.path(), &format!(
        "[server_privacy]\ntotal_epsilon = 1.5\n{WEIGHT_NOISE}[server_privacy.dp_pretraining]\ntarget_epsilon = 1.0\ninsecure_seed = 4\n"
    )).0;
    let dp = cryptotl::pipeline::server_lower_network(&dp_cfg).unwrap();
    assert!(dp.meta.dp_pretraining.as_ref().unwrap().epsilon <= 1.0 && !dp.weight_noise.as_ref().unwrap().from_cache);
    rejected(&["server_privacy.total_epsilon=0"], "server_privacy.total_epsilon", "finite number > 0");
    rejected(&["server_privacy.total_epsilon=4"], "server_privacy.total_epsilon", "no DP mechanism");
}

/// Start the server's network of each of `cfgs` in a thread while `held` (a lock they need) stops them, check that
/// none is decided while it is held, then let go and return each outcome.
fn draws_while_held<L>(held: L, cfgs: Vec<RunConfig>) -> Vec<Result<(), String>> {
    let draws: Vec<_> = cfgs.into_iter().map(|cfg| {
        std::thread::spawn(move || cryptotl::pipeline::server_lower_network(&cfg).map(|_| ()).map_err(|e| e.to_string()))
    }).collect();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(draws.iter().all(|d| !d.is_finished()), "a draw was decided while the lock was held");
    drop(held);
    draws.into_iter().map(|d| d.join().unwrap()).collect()
}

/// The tiny config of [`capped_config`] with another `seed`: another pretraining key (its own network and cache
/// entry) on the same source texts.
fn capped_with_seed(dir: &std::path::Path, std: &str, total: f64, seed: u64) -> RunConfig {
    let mut cfg = capped_config(dir, std, total);
    cfg.seed = seed;
    cfg
}

/// The releases a server made from other pretrainings on the same source texts (another config, so another pretraining
/// key and cache entry) count against `server_privacy.total_epsilon` and in the budget's cache-wide row, whatever the
/// file is called; those of a pretraining on other texts do not, whatever its file is called.
#[test]
fn releases_of_other_pretrainings_on_the_same_source_count_against_the_total() {
    let dir = tempfile::tempdir().unwrap();
    let a = cryptotl::pipeline::server_lower_network(&capped_with_seed(dir.path(), "0.02", 1e6, 5)).unwrap();
    let plan_a = a.weight_noise.clone().unwrap().plan;
    assert!(a.other_pretrainings.is_empty(), "{:?}", a.other_pretrainings);
    let b_cfg = |total: f64| capped_with_seed(dir.path(), "0.05", total, 6);
    assert_ne!(cryptotl::pipeline::pretrain_key(&b_cfg(1.0)), cryptotl::pipeline::pretrain_key(&capped_with_seed(dir.path(), "0.02", 1.0, 5)));
    let plan_b = plan_weight_noise(b_cfg(1.0).server_privacy.weight_noise.as_ref().unwrap(), a.meta.source.train).unwrap().unwrap();
    // B's release alone is within the total, beside A's it is not: refused before it is drawn, naming A's pretraining.
    let err = cryptotl::pipeline::server_lower_network(&b_cfg(plan_b.epsilon + 0.5 * plan_a.epsilon)).err().expect("above the total with A's release").to_string();
    assert!(err.contains("server_privacy.total_epsilon") && err.contains("1 other pretraining(s) sharing source examples in the cache"), "{err}");
    let b_dir = dir.path().join("cache").join(format!("pretrain-{}", cryptotl::pipeline::pretrain_key(&b_cfg(1.0))));
    let drawn = |d: &std::path::Path| std::fs::read_dir(d).map_or(0, |r| r.filter(|e| e.as_ref().unwrap().path().join("meta.json").exists() && e.as_ref().unwrap().file_name().to_string_lossy().starts_with("weight-noise-")).count());
    assert!(b_dir.join("meta.json").exists(), "B was pretrained (no release) before its draw was refused: {}", b_dir.display());
    assert_eq!(drawn(&b_dir), 0, "nothing was drawn for B");
    // Above both: drawn, and B's report composes both pretrainings' releases (approximate DP: ε and δ add).
    let total = (plan_a.epsilon + plan_b.epsilon) * 1.01;
    let report = cryptotl::pipeline::run(&b_cfg(total)).unwrap();
    let b = report.pretraining.as_ref().unwrap();
    assert!(!b.weight_noise.as_ref().unwrap().from_cache);
    assert_eq!(drawn(&b_dir), 1);
    let row = report.budget.rows.iter().find(|r| r.mechanism.starts_with("all server releases about these source examples")).expect("the cache-wide row");
    assert!(row.mechanism.contains("1 other"), "{}", row.mechanism);
    assert!(!row.accountant.contains("binary"), "the fixture's source file is not one the shipped network learned from: {}", row.accountant);
    let (eps, delta) = (row.epsilon.unwrap(), row.delta.unwrap());
    assert!((eps - (plan_a.epsilon + plan_b.epsilon)).abs() < 1e-6 * eps, "{eps} against {} + {}", plan_a.epsilon, plan_b.epsilon);
    assert!((delta - (plan_a.delta + plan_b.delta)).abs() < 1e-12, "{delta}");
    assert!(report.budget.source_tightest.as_ref().unwrap().contains("1 other pretraining(s) sharing source examples"));
    // A's release, reused, is loaded whatever the total (loading releases nothing), and its report now sees B's.
    let a_again = cryptotl::pipeline::server_lower_network(&capped_with_seed(dir.path(), "0.02", plan_a.epsilon * 0.5, 5)).unwrap();
    assert!(a_again.weight_noise.as_ref().unwrap().from_cache);
    assert_eq!(a_again.other_pretrainings.counted.len(), 1);
    // A copy of the source under another name holds the same examples: its draw counts theirs.
    let c_table = format!("[server_privacy]\ntotal_epsilon = {}\n{WEIGHT_NOISE}", plan_a.epsilon * 1.01);
    let renamed = dir.path().join("renamed.csv");
    std::fs::copy(format!("{}/separable_source.csv", common::FX), &renamed).unwrap();
    let err = cryptotl::pipeline::server_lower_network(&config_on_source(dir.path(), &renamed, &c_table)).err().expect("a renamed copy shares the examples").to_string();
    assert!(err.contains("2 other pretraining(s) sharing source examples in the cache"), "{err}");
    // Other texts share no example with them, even in a file named like one of theirs, or like one the network
    // shipped in the binary learned from: its draw is not checked against theirs.
    // (Each file's texts its own: the fixture's with a word of the file's name added.)
    let other_texts = |name: &str| {
        let path = dir.path().join("elsewhere").join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let fixture = std::fs::read_to_string(format!("{}/separable_source.csv", common::FX)).unwrap();
        let mut lines = fixture.lines();
        let body: Vec<String> = std::iter::once(lines.next().unwrap().to_string()).chain(lines.map(|l| format!("{l} {}", name.trim_end_matches(".csv")))).collect();
        std::fs::write(&path, body.join("\n") + "\n").unwrap();
        path
    };
    for name in ["source.csv", "tweets.csv"] {
        let c = cryptotl::pipeline::server_lower_network(&config_on_source(dir.path(), &other_texts(name), &c_table)).unwrap();
        assert!(!c.weight_noise.as_ref().unwrap().from_cache && c.other_pretrainings.is_empty(), "{name}: {:?}", c.other_pretrainings);
    }
    // Texts the network shipped in the binary learned from (Yelp sentences it was trained on), in a file of any
    // name: that network's plain weights are public, so no draw on them stays within a total, and an uncapped run's
    // cache-wide row gives no bound.
    let shipped = cryptotl::shipped_network::shipped().unwrap().unwrap().source_fingerprints.clone().unwrap();
    let yelp: Vec<String> = cryptotl::data::EMBEDDED.iter().find(|(n, _)| *n == "yelp_sentences").unwrap().1.lines().skip(1)
        .filter(|l| shipped.contains(l.split_once(',').unwrap().1.trim_matches('"')))
        .take(20)
        .map(String::from)
        .collect();
    assert_eq!(yelp.len(), 20);
    let with_yelp = dir.path().join("reviews.csv");
    std::fs::write(&with_yelp, format!("{}{}\n", std::fs::read_to_string(format!("{}/separable_source.csv", common::FX)).unwrap(), yelp.join("\n"))).unwrap();
    let err = cryptotl::pipeline::server_lower_network(&config_on_source(dir.path(), &with_yelp, &c_table)).err().expect("beside the shipped network").to_string();
    assert!(err.contains("server_privacy.total_epsilon") && err.contains("shipped in the cryptotl binary"), "{err}");
    let report = cryptotl::pipeline::run(&config_on_source(dir.path(), &with_yelp, WEIGHT_NOISE)).unwrap();
    let row = report.budget.rows.iter().find(|r| r.mechanism.starts_with("all server releases about these source examples")).expect("the cache-wide row");
    assert_eq!((row.epsilon, row.delta), (None, None), "{row:?}");
    assert!(row.accountant.contains("shipped in the cryptotl binary"), "{}", row.accountant);
    // An entry that does not record what it learned from (made by an older version) counts whatever it learned from,
    // named as such; a run of its config records it from the source data it checked the entry against.
    let learned = a.cache_dir.join(cryptotl::pipeline::LEARNED_FROM_FILE);
    let recorded = std::fs::read(&learned).unwrap();
    std::fs::remove_file(&learned).unwrap();
    let tight = format!("[server_privacy]\ntotal_epsilon = {}\n{}", plan_a.epsilon * 0.5, WEIGHT_NOISE.replace("noise_std = 0.02", "noise_std = 0.5"));
    let err = cryptotl::pipeline::server_lower_network(&config_on_source(dir.path(), &other_texts("fresh.csv"), &tight)).err().expect("beside an unrecorded entry").to_string();
    assert!(err.contains("counted without comparing source texts") && err.contains(&a.cache_dir.display().to_string()), "{err}");
    assert!(cryptotl::pipeline::server_lower_network(&capped_with_seed(dir.path(), "0.02", 1e6, 5)).unwrap().weight_noise.unwrap().from_cache);
    assert_eq!(std::fs::read(&learned).unwrap(), recorded, "recorded again, as it was");
    // A damaged list is as good as none, and is recorded again the same way.
    std::fs::write(&learned, &recorded[..recorded.len() - 3]).unwrap();
    let err = cryptotl::pipeline::server_lower_network(&config_on_source(dir.path(), &other_texts("fresh.csv"), &tight)).err().expect("beside a damaged list").to_string();
    assert!(err.contains("counted without comparing source texts") && err.contains(&a.cache_dir.display().to_string()), "{err}");
    cryptotl::pipeline::server_lower_network(&capped_with_seed(dir.path(), "0.02", 1e6, 5)).unwrap();
    assert_eq!(std::fs::read(&learned).unwrap(), recorded, "a damaged list recorded again");
    let c = cryptotl::pipeline::server_lower_network(&config_on_source(dir.path(), &other_texts("fresh.csv"), &tight)).unwrap();
    assert!(c.other_pretrainings.is_empty(), "{:?}", c.other_pretrainings);
    // An unreadable release of another pretraining leaves no bound: a draw under a total is refused, naming it.
    std::fs::write(noise_entry(&a.cache_dir, 0.02).join("meta.json"), "{ torn").unwrap();
    let err = cryptotl::pipeline::server_lower_network(&capped_with_seed(dir.path(), "0.03", 1e6, 6)).err().expect("beside an unreadable release").to_string();
    assert!(err.contains("cannot be read") && err.contains(&a.cache_dir.display().to_string()), "{err}");
}

/// A network the server built for clients with no mechanism (`cryptotl server build`) is a plain release: its clients
/// had its un-noised outputs. Later releases about its source examples, a noised draw of it or another pretraining's
/// on the same texts, claim no bound against them, and are refused under a total; a noised build records nothing.
#[test]
fn a_network_built_plain_for_clients_leaves_later_releases_no_bound() {
    let dir = tempfile::tempdir().unwrap();
    let (mut plain, _) = config_with_own_source(dir.path(), "");
    plain.he.enabled = true;
    let (_, built) = cryptotl::pipeline::server_artifact(&plain).unwrap();
    let marker = built.cache_dir.join(cryptotl::pipeline::SERVED_PLAIN_FILE);
    assert!(marker.is_file(), "the plain build is recorded");
    // A noised draw of it: refused under a total, before it is drawn; without one, its budget says what holds.
    let err = cryptotl::pipeline::server_lower_network(&capped_config(dir.path(), "0.02", 1e6)).err().expect("a capped draw of a plainly built network").to_string();
    assert!(err.contains("server_privacy.total_epsilon") && err.contains("built for clients with no mechanism") && err.contains(cryptotl::pipeline::SERVED_PLAIN_FILE), "{err}");
    assert!(!std::fs::read_dir(&built.cache_dir).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().starts_with("weight-noise-")), "nothing drawn");
    let report = cryptotl::pipeline::run(&config_with_own_source(dir.path(), WEIGHT_NOISE).0).unwrap();
    let row = report.budget.rows.iter().find(|r| r.mechanism.starts_with("the pretrained network itself, built for clients with no mechanism")).expect("the plain release's row");
    assert_eq!((row.epsilon, row.delta), (None, None));
    let tightest = report.budget.source_tightest.as_ref().unwrap();
    assert!(tightest.starts_with("tightest valid bound on the source data: none against any client of that plain model"), "{tightest}");
    // Another pretraining on the same texts: no bound beside it.
    let err = cryptotl::pipeline::server_lower_network(&capped_with_seed(dir.path(), "0.02", 1e6, 6)).err().expect("beside a plainly built pretraining").to_string();
    assert!(err.contains("built for clients with no mechanism") && err.contains(&built.cache_dir.display().to_string()), "{err}");
    let spec = common::server_sweep("4", cryptotl::sweep::ServerMechanism::WeightNoise);
    let err = cryptotl::sweep::plan(&capped_config(dir.path(), "0.02", 1e6), &spec).err().expect("a capped sweep over it").to_string();
    assert!(err.contains("built for clients with no mechanism"), "{err}");
    // A build with weight noise releases the noised network alone: nothing is recorded as plain.
    let other = tempfile::tempdir().unwrap();
    let (mut noised, _) = config_with_own_source(other.path(), WEIGHT_NOISE);
    noised.he.enabled = true;
    let (_, built) = cryptotl::pipeline::server_artifact(&noised).unwrap();
    assert!(built.weight_noise.is_some() && !built.cache_dir.join(cryptotl::pipeline::SERVED_PLAIN_FILE).exists());
}

/// Draws for two pretrainings on the same source texts decide one after the other, under the cache's releases lock:
/// the second counts the first's release (each checking before the other had drawn, both would pass the total).
#[test]
fn concurrent_draws_of_other_pretrainings_are_checked_against_each_other() {
    let dir = tempfile::tempdir().unwrap();
    // Pretrain both first (no release), and find a total between either release alone and both.
    let plain = |seed: u64| { let mut c = config_with_own_source(dir.path(), "").0; c.seed = seed; cryptotl::pipeline::server_lower_network(&c).unwrap() };
    let n = plain(5).meta.source.train;
    assert_eq!(plain(6).meta.source.train, n);
    let plan = |std: &str| plan_weight_noise(capped_config(dir.path(), std, 1.0).server_privacy.weight_noise.as_ref().unwrap(), n).unwrap().unwrap();
    let (narrow, wide) = (plan("0.02"), plan("0.05"));
    let between = narrow.epsilon.max(wide.epsilon) + 0.5 * narrow.epsilon.min(wide.epsilon);
    let held = cryptotl::pipeline::releases_lock(&dir.path().join("cache")).unwrap();
    let outcomes = draws_while_held(held, vec![capped_with_seed(dir.path(), "0.02", between, 5), capped_with_seed(dir.path(), "0.05", between, 6)]);
    assert_eq!(outcomes.iter().filter(|o| o.is_ok()).count(), 1, "exactly one of the two draws fits the total: {outcomes:?}");
    let winner = if outcomes[0].is_ok() { ("0.02", 5) } else { ("0.05", 6) };
    let err = outcomes.into_iter().find_map(|o| o.err()).unwrap();
    assert!(err.contains("server_privacy.total_epsilon") && err.contains("1 other pretraining(s)"), "{err}");
    // Loading a release already made draws nothing: it does not wait for the cache's releases lock.
    let held = cryptotl::pipeline::releases_lock(&dir.path().join("cache")).unwrap();
    let cfg = capped_with_seed(dir.path(), winner.0, between, winner.1);
    let load = std::thread::spawn(move || cryptotl::pipeline::server_lower_network(&cfg).map(|l| l.weight_noise.unwrap().from_cache).map_err(|e| e.to_string()));
    let started = std::time::Instant::now();
    while !load.is_finished() && started.elapsed() < std::time::Duration::from_secs(20) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let finished = load.is_finished();
    drop(held);
    assert!(finished, "loading a stored release waited for the releases lock");
    assert_eq!(load.join().unwrap(), Ok(true));
}

/// The log lines of the thread named `thread`, at INFO and above, as they are written. A scoped subscriber
/// (`with_default` in that thread) is not enough: tracing caches per call site whether anyone listens, and another
/// test's thread reaching the same call site first can leave it off for ours. So one global subscriber is installed
/// for this test binary, naming each line's thread, and sends every line that names a watched thread to its watcher.
fn log_lines_of(thread: &str) -> std::sync::mpsc::Receiver<String> {
    use std::sync::{Mutex, OnceLock};
    static WATCHERS: Mutex<Vec<(String, std::sync::mpsc::Sender<String>)>> = Mutex::new(Vec::new());
    static INSTALLED: OnceLock<()> = OnceLock::new();
    struct Watched;
    impl std::io::Write for Watched {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            let line = String::from_utf8_lossy(bytes);
            for (thread, watcher) in WATCHERS.lock().unwrap().iter() {
                if line.contains(thread.as_str()) {
                    let _ = watcher.send(line.clone().into_owned());
                }
            }
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    INSTALLED.get_or_init(|| {
        let subscriber = tracing_subscriber::fmt().with_max_level(tracing::Level::INFO).with_thread_names(true).with_ansi(false).with_writer(|| Watched).finish();
        tracing::subscriber::set_global_default(subscriber).expect("no other global subscriber in this test binary");
    });
    let (lines, log) = std::sync::mpsc::channel();
    WATCHERS.lock().unwrap().push((thread.to_string(), lines));
    log
}

/// A DP pretraining is decided under the cache's releases lock before it trains and again before its entry is
/// written, but does not hold it while it trains: a noise draw for another pretraining on the same source texts is
/// made meanwhile (it need not wait), and counts when the DP pretraining is decided again, which then refuses to
/// store it. Held throughout, the draw would have waited and been refused instead.
#[test]
fn a_dp_pretraining_lets_other_releases_be_made_while_it_trains_and_counts_them_once_trained() {
    let dir = tempfile::tempdir().unwrap();
    // B: another pretraining (seed 6) on the same source texts, pretrained plain first (no release).
    let n = { let mut c = config_with_own_source(dir.path(), "").0; c.seed = 6; cryptotl::pipeline::server_lower_network(&c).unwrap().meta.source.train };
    let b_plan = plan_weight_noise(capped_config(dir.path(), "0.05", 1.0).server_privacy.weight_noise.as_ref().unwrap(), n).unwrap().unwrap();
    // A (seed 5): DP pretraining on a schedule long enough (about 5 s on two idle cores) for B's draw (20 ms) to be
    // made while it trains.
    let a_cfg = |total: f64| {
        let dp = "[server_privacy.dp_pretraining]\nnoise_multiplier = 2.0\ninsecure_seed = 4\n";
        let mut cfg = config_with_own_source(dir.path(), &format!("[server_privacy]\ntotal_epsilon = {total}\n{dp}")).0;
        cfg.pretrain.epochs = 600;
        cfg.pretrain.patience = 600;
        cfg
    };
    let a_plan = cryptotl::pipeline::dp_pretraining_plan(&a_cfg(1.0), n).unwrap().unwrap();
    // Either release alone fits the total, both do not.
    let total = a_plan.epsilon.max(b_plan.epsilon) + 0.5 * a_plan.epsilon.min(b_plan.epsilon);
    let a_dir = dir.path().join("cache").join(format!("pretrain-{}", cryptotl::pipeline::pretrain_key(&a_cfg(total))));
    // A in a thread whose log comes here: it says "DP pretraining schedule" once decided, as it starts training.
    let log = log_lines_of("dp-pretraining-under-test");
    let cfg = a_cfg(total);
    let a = std::thread::Builder::new()
        .name("dp-pretraining-under-test".into())
        .spawn(move || cryptotl::pipeline::server_lower_network(&cfg).map(|_| ()).map_err(|e| e.to_string()))
        .unwrap();
    let mut training = false;
    while !training && !a.is_finished() {
        training = log.recv_timeout(std::time::Duration::from_millis(200)).is_ok_and(|line| line.contains("DP pretraining schedule"));
    }
    assert!(training && !a.is_finished(), "the DP pretraining did not start training: {:?}", a.join());
    cryptotl::pipeline::server_lower_network(&capped_with_seed(dir.path(), "0.05", total, 6)).expect("B's draw, made while A trains, fits the total alone");
    assert!(!a.is_finished(), "the draw waited for the DP pretraining to end");
    let err = a.join().unwrap().expect_err("A beside B's release is above the total").to_string();
    assert!(err.contains("server_privacy.total_epsilon") && err.contains("1 other pretraining(s)") && err.contains("decided again once this network was trained"), "{err}");
    assert!(!a_dir.join("meta.json").exists(), "nothing was stored for A");
    // Run again, it is refused before it trains.
    let err = cryptotl::pipeline::server_lower_network(&a_cfg(total)).err().expect("still above the total").to_string();
    assert!(err.contains("1 other pretraining(s)") && !err.contains("decided again"), "{err}");
}

/// The server's total refuses releases but never changes one: a run folder's features stay valid under another
/// total. A folder made while the features key held the total (2026-12-07 to 08) stays valid under the same total.
#[test]
fn another_server_total_keeps_a_run_folders_features() {
    use cryptotl::rundir::RunManifest;
    let dir = tempfile::tempdir().unwrap();
    let cfg = |total: f64| capped_config(dir.path(), "0.02", total);
    cryptotl::pipeline::run(&cfg(1e6)).unwrap();
    let manifest = RunManifest::load_for(&cfg(2e6)).expect("another total, the same features");
    assert!(manifest.features_config.as_ref().unwrap()["server_privacy"].get("total_epsilon").is_none());
    // A folder of those days: its material held the total, and its key was the hash of that material.
    let mut legacy = manifest.clone();
    let material = legacy.features_config.as_mut().unwrap();
    material["server_privacy"]["total_epsilon"] = serde_json::json!(1e6);
    legacy.features_key = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(material.to_string().as_bytes()));
    legacy.write(&cfg(1e6).output_dir()).unwrap();
    assert!(RunManifest::load_for(&cfg(1e6)).is_ok(), "a folder of those days under its own total");
    let err = RunManifest::load_for(&cfg(2e6)).expect_err("under another total it was another key").to_string();
    assert!(err.contains("server_privacy.total_epsilon: 1000000.0 in the run, 2000000.0 here"), "{err}");
}

/// Two runs drawing other noise settings of one pretraining at once decide one after the other, under the
/// pretraining entry's lock: the second sees the first's release, so together they cannot pass
/// `server_privacy.total_epsilon` (each checking before the other had drawn, both would).
#[test]
fn concurrent_draws_of_other_settings_are_checked_against_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let capped = |std: &str, total: f64| capped_config(dir.path(), std, total);
    // Pretrain once (the draws below then only load it), and find a total between either release alone and both.
    let pretrained = cryptotl::pipeline::server_lower_network(&config_with_own_source(dir.path(), "").0).unwrap();
    let plan = |std: &str| {
        let cfg = capped(std, 1.0);
        cryptotl::privacy::server::plan_weight_noise(cfg.server_privacy.weight_noise.as_ref().unwrap(), pretrained.meta.source.train).unwrap().unwrap()
    };
    let (narrow, wide) = (plan("0.02"), plan("0.05"));
    let (_, together) = cryptotl::privacy::server::weight_noise_releases_epsilon(&[&narrow, &wide], wide.delta).unwrap();
    let between = 0.5 * (together + narrow.epsilon.max(wide.epsilon));
    // Held here, the lock stops both draws at the same point; let go, they race for it.
    let held = cryptotl::cache::Entry::new(pretrained.cache_dir.clone()).lock().unwrap();
    let outcomes = draws_while_held(held, vec![capped("0.02", between), capped("0.05", between)]);
    assert_eq!(outcomes.iter().filter(|o| o.is_ok()).count(), 1, "exactly one of the two draws fits the total: {outcomes:?}");
    let err = outcomes.into_iter().find_map(|o| o.err()).unwrap();
    assert!(err.contains("server_privacy.total_epsilon") && err.contains("1 release(s) already made"), "{err}");
}

/// A sweep over the server's ε checks its settings' releases against `server_privacy.total_epsilon` before the first
/// is made (made one by one, the last would be refused after the others were released and encrypted through).
#[test]
fn a_sweep_beyond_the_servers_total_is_refused_before_any_release() {
    use cryptotl::sweep::ServerMechanism;
    let dir = tempfile::tempdir().unwrap();
    let noised = |eps: f64, total: f64| config_with_own_source(dir.path(), &format!(
        "[server_privacy]\ntotal_epsilon = {total}\n[server_privacy.weight_noise]\nl2_sensitivity = 0.01\ntarget_epsilon = {eps}\ninsecure_seed = 2\n"
    )).0;
    let spec = common::server_sweep;
    let pretrained = cryptotl::pipeline::server_lower_network(&config_with_own_source(dir.path(), "").0).unwrap();
    let plan = |eps: f64| {
        let cfg = noised(eps, 100.0);
        cryptotl::privacy::server::plan_weight_noise(cfg.server_privacy.weight_noise.as_ref().unwrap(), pretrained.meta.source.train).unwrap().unwrap()
    };
    let (three, four) = (plan(3.0), plan(4.0));
    let (_, together) = cryptotl::privacy::server::weight_noise_releases_epsilon(&[&three, &four], four.delta).unwrap();
    let between = 0.5 * (together + 4.0);
    let drawn = || std::fs::read_dir(&pretrained.cache_dir).unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("weight-noise-") && e.as_ref().unwrap().path().join("meta.json").exists())
        .count();
    // Each setting alone is within the total, the two together are not: refused whole, nothing drawn.
    let err = cryptotl::sweep::plan(&noised(1.0, between), &spec("3,4", ServerMechanism::WeightNoise)).err().expect("above the total together").to_string();
    assert!(err.contains("server_privacy.total_epsilon") && err.contains("2 new noised releases") && err.contains("no other release"), "{err}");
    assert_eq!(drawn(), 0);
    assert!(cryptotl::sweep::plan(&noised(1.0, together * 1.01), &spec("3,4", ServerMechanism::WeightNoise)).is_ok());
    // A setting already drawn is reused and adds nothing new, but counts among the releases made.
    cryptotl::pipeline::server_lower_network(&noised(3.0, between)).unwrap();
    assert_eq!(drawn(), 1);
    assert!(cryptotl::sweep::plan(&noised(1.0, between), &spec("3", ServerMechanism::WeightNoise)).is_ok());
    let err = cryptotl::sweep::plan(&noised(1.0, between), &spec("3,4", ServerMechanism::WeightNoise)).err().expect("above the total with the release made").to_string();
    assert!(err.contains("a new noised release") && err.contains("1 release(s) already made"), "{err}");
    // A server ε of ∞ releases the network plain, which no total allows; the error names the setting.
    let err = cryptotl::sweep::plan(&noised(1.0, 100.0), &spec("3,inf", ServerMechanism::WeightNoise)).err().expect("plain under a total").to_string();
    assert!(err.contains("server setting ε = ∞") && err.contains("no DP mechanism"), "{err}");
    // DP pretrainings at 2 and 3 are two networks on the same source examples: each within a total of 7 beside the
    // release drawn above (ε = 3), but not beside each other too. Refused whole, before either trains.
    let pretrainings = || std::fs::read_dir(dir.path().join("cache")).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("pretrain-")).count();
    let before = pretrainings();
    let err = cryptotl::sweep::plan(&noised(1.0, 7.0), &spec("2,3", ServerMechanism::DpPretraining)).err().expect("DP pretrainings above the total together").to_string();
    assert!(err.contains("server_privacy.total_epsilon") && err.contains("release 2 networks pretrained on the same source examples"), "{err}");
    assert!(err.contains("beside 1 other pretraining(s)"), "the stored release counts too: {err}");
    assert_eq!(pretrainings(), before, "nothing was pretrained");
    assert!(cryptotl::sweep::plan(&noised(1.0, 8.5), &spec("2,3", ServerMechanism::DpPretraining)).is_ok());
    // A DP pretraining beyond the total alone is refused before it trains.
    let err = cryptotl::sweep::plan(&noised(1.0, 1.5), &spec("2", ServerMechanism::DpPretraining)).err().expect("DP pretraining above the total").to_string();
    assert!(err.contains("server_privacy.total_epsilon") && err.contains("a DP pretraining at ε = ") && err.contains("alone would spend more than the total of 1.5"), "{err}");
    assert_eq!(drawn(), 1);
    assert_eq!(pretrainings(), before);
}

/// Whether the retrained network's split keeps its size (the noise entry's key, through δ = 0.1/N, stays) or not (a
/// new key), `cryptotl pretrain` says that releases of the earlier network are stored beside the new draw.
#[test]
fn drawing_noise_for_a_network_trained_again_names_the_earlier_releases() {
    // Flipping one label moves a row between classes and so the training split's size: a second entry.
    for (change, entries) in [(flip_first_label as fn(&std::path::Path), 2), (swap_two_labels, 1)] {
        let dir = tempfile::tempdir().unwrap();
        let source = copy_of_fixture_source(dir.path());
        let config = dir.path().join("noised.toml");
        std::fs::write(&config, format!("{}{WEIGHT_NOISE}", common::tiny_config(dir.path()))).unwrap();
        let pretrain = || {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_cryptotl"))
                .args(["-q", "pretrain"])
                .arg(&config)
                .args(["--set", "he.enabled=false", "--set", &format!("source.paths=[{:?}]", source.display().to_string())])
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
        };
        let (printed, first) = pretrain();
        assert!(!first.contains("earlier pretrained network"), "{first}");
        assert!(printed.contains("privacy: weight noise") && !printed.contains("all stored noised releases"), "{printed}");
        change(&source);
        let (printed, again) = pretrain();
        assert!(again.contains("the source data changed") && again.contains("noised releases of an earlier pretrained network"), "{again}");
        // The earlier network's release is counted with the new one, whether it sits beside it or was drawn over.
        assert!(printed.contains("privacy: all stored noised releases, together (2 releases"), "{printed}");
        let stored = std::fs::read_dir(dir.path().join("cache")).unwrap().flat_map(|e| std::fs::read_dir(e.unwrap().path()).unwrap())
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("weight-noise-")).count();
        assert_eq!(stored, entries);
        assert!(!pretrain().1.contains("earlier pretrained network"), "the new draw is reused, nothing to say");
    }
}

/// DP pretraining is a release too: a complete entry that cannot be read is not trained again (a second release
/// about the same examples), as a damaged noised network is not drawn again; changed source data is trained on anew.
#[test]
fn a_damaged_dp_pretrained_entry_is_refused_and_changed_data_trained_on_anew() {
    use cryptotl::pipeline::NetworkOrigin;
    let dir = tempfile::tempdir().unwrap();
    let (cfg, source) = config_with_own_source(dir.path(), "[server_privacy.dp_pretraining]\nnoise_multiplier = 1.0\ninsecure_seed = 4\n");
    let first = cryptotl::pipeline::server_lower_network(&cfg).unwrap();
    assert_eq!(first.origin, NetworkOrigin::Trained);
    let net = first.cache_dir.join("lower.bin");
    let good = std::fs::read(&net).unwrap();
    std::fs::write(&net, &good[..good.len() / 3]).unwrap();
    let err = cryptotl::pipeline::server_lower_network(&cfg).err().expect("a damaged DP release is not trained again").to_string();
    assert!(err.contains("server_privacy.dp_pretraining") && err.contains("second DP release"), "{err}");
    std::fs::write(&net, &good).unwrap();
    assert_eq!(cryptotl::pipeline::server_lower_network(&cfg).unwrap().origin, NetworkOrigin::Cache);
    swap_two_labels(&source);
    let again = cryptotl::pipeline::server_lower_network(&cfg).unwrap();
    assert_eq!(again.origin, NetworkOrigin::Trained, "changed source data is a new DP pretraining");
    assert_ne!(again.meta.trained_on, first.meta.trained_on);
    // The replaced release is remembered, and a run's budget composes both: ε and δ add.
    let earlier = first.meta.dp_pretraining.clone().unwrap();
    assert_eq!(again.meta.dp_trained_over, vec![earlier.clone()]);
    let report = cryptotl::pipeline::run(&cfg).unwrap();
    let own = report.pretraining.as_ref().unwrap().dp_pretraining.clone().unwrap();
    let row = report.budget.rows.iter().find(|r| r.mechanism.starts_with("all DP pretrainings")).expect("the composed row");
    assert!(row.mechanism.contains("2:"), "{}", row.mechanism);
    assert!((row.epsilon.unwrap() - (own.epsilon + earlier.epsilon)).abs() < 1e-12, "{row:?}");
    assert!((row.delta.unwrap() - (own.delta + earlier.delta)).abs() < 1e-18, "{row:?}");
    assert!(report.budget.source_tightest.as_ref().unwrap().contains("all 2 DP pretrainings"));
    // Reused from the cache, the entry still names it.
    assert_eq!(cryptotl::pipeline::server_lower_network(&cfg).unwrap().meta.dp_trained_over.len(), 1);
    // Beyond the server's total, the next DP pretraining on changed data is refused before it trains.
    std::fs::copy(&source, dir.path().join("kept.csv")).unwrap();
    swap_two_labels(&source);
    let capped = config_on_source(dir.path(), &source, &format!(
        "[server_privacy]\ntotal_epsilon = {}\n[server_privacy.dp_pretraining]\nnoise_multiplier = 1.0\ninsecure_seed = 4\n",
        (own.epsilon + earlier.epsilon) * 1.2
    ));
    let err = cryptotl::pipeline::server_lower_network(&capped).err().expect("three DP pretrainings exceed the total").to_string();
    assert!(err.contains("server_privacy.total_epsilon") && err.contains("beside the 2 DP pretraining(s)"), "{err}");
    assert!(first.cache_dir.join("meta.json").exists(), "refused before the entry was touched");
    std::fs::copy(dir.path().join("kept.csv"), &source).unwrap(); // back to the data the entry was trained on
    assert_eq!(cryptotl::pipeline::server_lower_network(&capped).unwrap().origin, NetworkOrigin::Cache, "a release already made is reused");
    // A DP pretraining that replaces the entry and is cut short after it began (its copy of the config, written
    // last and never read back, cannot be written) loses no record: the next one still counts both earlier releases.
    swap_two_labels(&source);
    let config_copy = first.cache_dir.join("config.toml");
    block_file(&config_copy);
    assert!(cryptotl::pipeline::server_lower_network(&cfg).is_err(), "the entry cannot be written");
    assert!(!first.cache_dir.join("meta.json").exists(), "the rewrite began");
    std::fs::remove_dir_all(&config_copy).unwrap();
    let recovered = cryptotl::pipeline::server_lower_network(&cfg).unwrap();
    assert_eq!(recovered.origin, NetworkOrigin::Trained);
    assert_eq!(recovered.meta.dp_trained_over.len(), 2, "carried over the cut");
}

/// The pretraining key is the config; what the entry records reading ([`TrainedOn`]) is checked against the source
/// files as they are now. An entry trained on other contents is stale: trained again, then reused.
#[test]
fn a_pretraining_cache_entry_trained_on_other_source_data_is_trained_again() {
    use cryptotl::pipeline::{NetworkOrigin, TrainedOn};
    let dir = tempfile::tempdir().unwrap();
    let (cfg, source) = config_with_own_source(dir.path(), "");
    let origin = || cryptotl::pipeline::server_lower_network(&cfg).unwrap();
    let first = origin();
    assert_eq!(first.origin, NetworkOrigin::Trained);
    let recorded = first.meta.trained_on.clone().expect("a new entry records what it was trained on");
    assert_eq!(recorded.embedding_table, None, "hashed features use no shipped embeddings");
    assert_eq!(origin().origin, NetworkOrigin::Cache);

    // One label flipped in the file: same config, same key, other data.
    flip_first_label(&source);
    // `predict` opens the network as stored: its run's folder names the network it must be.
    assert_eq!(cryptotl::pipeline::stored_lower_network(&cfg).unwrap().origin, NetworkOrigin::Cache);
    let second = origin();
    assert_eq!(second.origin, NetworkOrigin::Trained, "a network trained on the old file was reused");
    assert_eq!(second.cache_dir, first.cache_dir);
    let now = second.meta.trained_on.clone().unwrap();
    assert_eq!(recorded.change_from(&now), Some("the source data changed"));
    assert_eq!((first.retrained_because, second.retrained_because), (None, Some("the source data changed")));
    assert_eq!(origin().origin, NetworkOrigin::Cache);
    // `pretrain`, which is given the source, checks it the same way.
    let (split, summary) = cryptotl::pipeline::load_source(&cfg).unwrap();
    assert_eq!(cryptotl::pipeline::pretrain(&cfg, &split, &summary).unwrap().origin, NetworkOrigin::Cache);
    assert_eq!(TrainedOn::of(&cfg, &split).unwrap(), now);

    // Without its source data the entry is all there is: used as it is.
    std::fs::rename(&source, dir.path().join("moved.csv")).unwrap();
    assert_eq!(origin().origin, NetworkOrigin::Cache);
    std::fs::rename(dir.path().join("moved.csv"), &source).unwrap();

    // An entry from before the record (none kept) is used by runs, but `ship-network` does not ship it.
    let meta_path = second.cache_dir.join("meta.json");
    let mut meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&meta_path).unwrap()).unwrap();
    meta.as_object_mut().unwrap().remove("trained_on");
    std::fs::write(&meta_path, meta.to_string()).unwrap();
    assert_eq!(origin().origin, NetworkOrigin::Cache);
    assert!(cryptotl::pipeline::verified_cached_pretrained(&cfg, &split).unwrap().is_none());

    // A run's report says why it trained the network again.
    std::fs::write(&meta_path, serde_json::to_string(&second.meta).unwrap()).unwrap();
    swap_two_labels(&source);
    let report = cryptotl::pipeline::run(&cfg).unwrap();
    assert_eq!(report.pretraining.as_ref().unwrap().retrained_because.as_deref(), Some("the source data changed"));
    assert!(report.to_markdown().contains("(the source data changed since the cached network was trained: trained again)"));
}

#[test]
fn printed_privacy_figures_never_claim_more_than_was_computed() {
    // Rounded to the nearest, ε = 1.00004 would print as 1.0000 and δ = 8.7444e-5 as 8.744e-5: less privacy loss
    // than the accountant computed. The report's table rounds them up.
    let tfhe = cryptotl::privacy::budget::TfheStatement::new(&cryptotl::config::HeConfig::default(), None).unwrap();
    let mut b = cryptotl::privacy::budget::BudgetReport::new(None, 10, Default::default(), tfhe).unwrap();
    b.rows[0].epsilon = Some(1.00004);
    b.rows[0].delta = Some(8.7444e-5);
    let md = b.to_markdown();
    assert!(md.contains("| 1.0001 | 8.745e-5 |") && !md.contains("1.0000"), "{md}");
    // The audit's row: its lower bound rounded down, the claim up, so a printed bound above the printed claim
    // means the computed one is above it too.
    let audit = cryptotl::audit::AuditResult {
        canaries: 1000,
        included: 500,
        guesses: 200,
        correct: 190,
        delta: 1e-5,
        confidence: 0.95,
        epsilon_lower_bound: 0.99996,
        epsilon_claimed: 1.00004,
        accountant: "tightest".into(),
        noise_multiplier: 1.0,
        steps: 100,
        sampling_rate: 1.0,
        seconds: 1.0,
    };
    let md = audit.to_markdown();
    assert!(md.contains("| 0.999 | 1.001 |"), "{md}");
}

/// Pretraining counts the dense feature copies it will hold and refuses, before featurizing, what this machine
/// cannot give (hashed 2^16 features of the ~30k sentiment sources, balanced, were killed by the system).
#[test]
fn pretraining_counts_its_feature_copies_and_refuses_what_memory_cannot_hold() {
    use cryptotl::pipeline::{check_feature_memory, pretraining_feature_bytes};
    let dir = tempfile::tempdir().unwrap();
    let text = common::tiny_config(dir.path());
    let at = |sets: &[&str]| {
        let cfg = RunConfig::from_toml_str(&text, "tiny.toml", &sets.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        let (source, _) = cryptotl::pipeline::load_source(&cfg).unwrap();
        (pretraining_feature_bytes(&cfg, &source), source)
    };
    let (plain, source) = at(&[]);
    let (n, dim) = ((source.train.len() + source.validation.len() + source.test.len()) as u64, 256u64);
    let fitted = (source.train.len() + source.validation.len()) as u64;
    // One path, one output: the features of every row and the tensors of the fitted rows.
    assert_eq!(plain, 4 * dim * (n + fitted));
    // Balancing adds its repeat (here of one path: the same rows again).
    let (balanced, _) = at(&["source.balance_paths=true"]);
    assert_eq!(balanced, 4 * dim * (n + 2 * fitted));
    // Four times the dimension, four times the bytes.
    let (wide, _) = at(&["features.dim=1024"]);
    assert_eq!(wide, 4 * plain);
    // Past what is available: refused, naming the keys that shrink it; unknown memory: allowed.
    let err = check_feature_memory(plain, Some(plain - 1), "pretraining on the source").unwrap_err().to_string();
    assert!(err.contains("pretraining on the source") && err.contains("features.dim") && err.contains("max_examples"), "{err}");
    assert!(check_feature_memory(plain, Some(plain), "x").is_ok() && check_feature_memory(u64::MAX, None, "x").is_ok());
}
