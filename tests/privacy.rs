//! Noise calibration and the `cryptotl budget` command.

use std::process::Command;

use cryptotl::privacy::{Accountant, AccountantKind, SubsampledGaussian, calibrate_noise};

#[test]
fn calibration_round_trips_for_every_accountant() {
    for (kind, q, steps) in [(AccountantKind::Rdp, 0.01, 1000), (AccountantKind::Pld, 0.05, 200), (AccountantKind::Zcdp, 1.0, 50)] {
        let acct = kind.accountant();
        for target in [0.5, 2.0, 8.0] {
            let sigma = calibrate_noise(acct.as_ref(), q, steps, 1e-5, target).unwrap();
            let eps = acct.epsilon(&SubsampledGaussian::new(q, sigma).unwrap(), steps, 1e-5).unwrap();
            assert!(eps <= target, "{kind:?}: σ = {sigma} gives ε = {eps} > {target}");
            let less = acct.epsilon(&SubsampledGaussian::new(q, sigma * 0.999).unwrap(), steps, 1e-5).unwrap();
            assert!(less > target, "{kind:?}: σ = {sigma} is not the smallest (0.999σ gives {less} <= {target})");
        }
    }
}

#[test]
fn calibration_rejects_bad_targets() {
    let acct = AccountantKind::Rdp.accountant();
    assert!(calibrate_noise(acct.as_ref(), 0.01, 100, 1e-5, 0.0).is_err());
    assert!(calibrate_noise(acct.as_ref(), 0.01, 100, 1e-5, f64::NAN).is_err());
    let e = calibrate_noise(acct.as_ref(), 0.01, 1, 1e-5, 1e6).unwrap_err().to_string();
    assert!(e.contains("looser"), "{e}");
}

#[test]
fn epsilon_grows_with_steps_and_shrinks_with_noise() {
    let acct = AccountantKind::Pld.accountant();
    let eps = |q, s, t| acct.epsilon(&SubsampledGaussian::new(q, s).unwrap(), t, 1e-5).unwrap();
    assert!(eps(0.01, 1.0, 100) < eps(0.01, 1.0, 1000));
    assert!(eps(0.01, 2.0, 1000) < eps(0.01, 1.0, 1000));
    assert!(eps(0.001, 1.0, 1000) < eps(0.01, 1.0, 1000));
}

fn budget(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cryptotl")).arg("budget").args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn budget_json_for_scripts() {
    let (code, out, err) = budget(&["--sampling-rate", "0.01", "--noise-multiplier", "1.1", "--steps", "1000", "--delta", "1e-5", "--accountant", "rdp", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    assert_eq!(keys.len(), 8);
    for k in ["accountant", "sampling_rate", "noise_multiplier", "steps", "delta", "epsilon", "exact_epsilon", "note"] {
        assert!(v.get(k).is_some(), "missing {k}: {out}");
    }
    assert_eq!(v["accountant"], "rdp");
    assert!(v["exact_epsilon"].is_null(), "no exact answer at q < 1");
    let direct = AccountantKind::Rdp.accountant().epsilon(&SubsampledGaussian::new(0.01, 1.1).unwrap(), 1000, 1e-5).unwrap();
    assert_eq!(v["epsilon"].as_f64().unwrap(), direct);
}

#[test]
fn budget_text_is_the_line_readme_quotes_and_extreme_values_stay_short() {
    let (code, out, err) = budget(&["--sampling-rate", "0.01", "--noise-multiplier", "1.0", "--steps", "1000", "--delta", "1e-5"]);
    assert_eq!(code, 0, "{err}");
    let readme = include_str!("../README.md");
    assert!(readme.contains(&format!("#   {}", out.trim())), "README's budget example is no longer what `budget` prints: {out}");
    // 1e-300 was printed as 300 zeros and a one.
    let (code, out, err) = budget(&["--sampling-rate", "1e-300", "--noise-multiplier", "1", "--steps", "10", "--delta", "1e-5"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("q = 1e-300") && out.len() < 200, "{out}");
}

#[test]
fn budget_calibrates_from_a_target() {
    let (code, out, err) = budget(&["--sampling-rate", "0.02", "--target-epsilon", "3", "--steps", "500", "--delta", "1e-5", "--accountant", "rdp", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(v["epsilon"].as_f64().unwrap() <= 3.0);
    assert!(v["noise_multiplier"].as_f64().unwrap() > 0.5);
}

#[test]
fn budget_rejects_bad_arguments_with_exit_code_2() {
    let base = ["--steps", "100", "--delta", "1e-5"];
    let cases: &[(&[&str], &str)] = &[
        (&["--sampling-rate", "0", "--noise-multiplier", "1"], "sampling rate"),
        (&["--sampling-rate", "1.5", "--noise-multiplier", "1"], "sampling rate"),
        (&["--sampling-rate", "NaN", "--noise-multiplier", "1"], "sampling rate"),
        (&["--sampling-rate", "0.1", "--noise-multiplier", "0"], "noise multiplier"),
        (&["--sampling-rate", "0.1", "--noise-multiplier", "-1"], "noise multiplier"),
        (&["--sampling-rate", "0.1", "--noise-multiplier", "NaN"], "noise multiplier"),
        (&["--sampling-rate", "0.1"], "required"),
        (&["--sampling-rate", "0.1", "--noise-multiplier", "1", "--target-epsilon", "1"], "cannot be used with"),
        (&["--sampling-rate", "0.1", "--target-epsilon", "-2"], "target ε"),
    ];
    for (args, needle) in cases {
        let all: Vec<&str> = args.iter().chain(base.iter()).copied().collect();
        let (code, _, err) = budget(&all);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    for (steps, delta, needle) in [("0", "1e-5", "steps"), ("10", "1", "δ"), ("10", "0", "δ"), ("10", "nan", "δ")] {
        let (code, _, err) = budget(&["--sampling-rate", "0.1", "--noise-multiplier", "1", "--steps", steps, "--delta", delta]);
        assert_eq!(code, 2, "{steps} {delta}: {err}");
        assert!(err.contains(needle), "{err}");
    }
}

#[test]
fn extreme_parameters_give_an_answer_not_an_allocation_bomb() {
    for kind in [AccountantKind::Pld, AccountantKind::Rdp] {
        let acct = kind.accountant();
        for (q, sigma, steps) in [(0.01, 1e-6, 1000), (1.0, 1e-4, 1), (0.5, 1e4, 100_000), (1e-9, 1.0, 10)] {
            let eps = acct.epsilon(&SubsampledGaussian::new(q, sigma).unwrap(), steps, 1e-5).unwrap();
            assert!(eps >= 0.0 && !eps.is_nan(), "{kind:?} q={q} σ={sigma} T={steps}: {eps}");
            if sigma < 1e-3 {
                assert!(eps > 100.0, "{kind:?}: almost no noise must cost a lot of privacy, got {eps}");
            }
        }
    }
}

#[test]
fn rdp_accountant_equals_opendp_composition_of_the_step_measurement() {
    use cryptotl::privacy::rdp::{Rdp, rdp_measurement, rdp_to_epsilon};
    let m = SubsampledGaussian::new(0.05, 0.9).unwrap();
    let steps = 7;
    let composed = opendp::combinators::make_composition(vec![rdp_measurement(&m).unwrap(); steps]).unwrap();
    let curve = composed.map(&1.0).unwrap();
    let acct = Rdp::default();
    let via_opendp: Vec<f64> = acct.orders.iter().map(|a| curve.eval(a).unwrap()).collect();
    let (eps, _) = rdp_to_epsilon(&acct.orders, &via_opendp, 1e-5);
    let direct = acct.epsilon(&m, steps, 1e-5).unwrap();
    assert!((eps - direct).abs() < 1e-12 * direct, "{eps} vs {direct}");
    // The measurement accounts but never runs: no noise is drawn through OpenDP.
    assert!(composed.invoke(&vec![0.0; 3]).is_err());
}
