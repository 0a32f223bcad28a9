//! The accountants never report less than the true ε. At q = 1 the truth is the exact Gaussian-mechanism curve;
//! at q < 1 the PLD (tight) must stay below the RDP bound. Issue "Hardening", family 1: every case it lists.

use std::process::Command;

use cryptotl::privacy::exact::{gaussian_delta, gaussian_epsilon};
use cryptotl::privacy::{AccountantKind, MAX_STEPS, SubsampledGaussian};

fn eps(kind: AccountantKind, q: f64, sigma: f64, steps: usize) -> f64 {
    kind.accountant().epsilon(&SubsampledGaussian::new(q, sigma).unwrap(), steps, 1e-5).unwrap()
}

#[test]
fn the_exact_curve_is_inverted_exactly() {
    // μ = 2, δ = 1e-5: 9.997256 (Balle & Wang's closed form, also Google's dp_accounting).
    assert!((gaussian_epsilon(0.5, 1, 1e-5).unwrap() - 9.997256).abs() < 1e-5);
    // The figures: σ = 0.02, T = 10: 13173; σ = 0.025: 8538; σ = 0.01, T = 1: 5426.
    for (sigma, steps, want) in [(0.02, 10, 13173.0), (0.025, 10, 8538.0), (0.01, 1, 5426.0)] {
        let e = gaussian_epsilon(sigma, steps, 1e-5).unwrap();
        assert!((e / want - 1.0).abs() < 1e-3, "σ = {sigma}, T = {steps}: {e} vs {want}");
    }
    // The returned ε meets δ, and anything visibly smaller does not.
    for (sigma, steps) in [(0.001, 1u64), (0.3, 100), (1.0, 1000), (10.0, 1_000_000)] {
        let mu = (steps as f64).sqrt() / sigma;
        let e = gaussian_epsilon(sigma, steps, 1e-5).unwrap();
        assert!(gaussian_delta(mu, e) <= 1e-5);
        assert!(gaussian_delta(mu, e * (1.0 - 1e-9) - 1e-12) > 1e-5 || e == 0.0, "σ = {sigma}, T = {steps}: {e} is not the smallest");
    }
}

#[test]
fn no_accountant_reports_below_the_exact_full_batch_epsilon() {
    for sigma in [1e-3, 0.01, 0.02, 0.025, 0.03, 0.05, 0.3, 1.0, 10.0] {
        for steps in [1usize, 10, 1000, 1_000_000] {
            let exact = gaussian_epsilon(sigma, steps as u64, 1e-5).unwrap();
            for kind in [AccountantKind::Tightest, AccountantKind::Pld, AccountantKind::Rdp, AccountantKind::Zcdp] {
                let e = eps(kind, 1.0, sigma, steps);
                assert!(e >= exact * (1.0 - 1e-9), "{kind:?} σ = {sigma}, T = {steps}: {e} below the exact {exact}");
            }
            // Where the PLD can discretise the mechanism it is also tight.
            let pld = eps(AccountantKind::Pld, 1.0, sigma, steps);
            if sigma >= 0.05 && steps <= 1000 {
                assert!(pld <= exact * 1.01 + 0.01, "PLD σ = {sigma}, T = {steps}: {pld} vs exact {exact}");
            }
        }
    }
}

#[test]
fn pld_stays_below_rdp_and_answers_infinity_where_it_cannot_discretise() {
    for q in [0.001, 0.01, 0.1, 0.5] {
        for sigma in [0.5, 1.0, 2.0, 5.0] {
            for steps in [1usize, 100, 10_000] {
                let (pld, rdp) = (eps(AccountantKind::Pld, q, sigma, steps), eps(AccountantKind::Rdp, q, sigma, steps));
                assert!(pld <= rdp * 1.001 + 1e-3, "q = {q}, σ = {sigma}, T = {steps}: PLD {pld} above RDP {rdp}");
            }
        }
    }
    // σ = 1e-300 at q = 0.5: half the mass has infinite loss, so ε = ∞ at δ = 1e-5 (was 6.93).
    assert_eq!(eps(AccountantKind::Pld, 0.5, 1e-300, 10), f64::INFINITY);
    assert_eq!(eps(AccountantKind::Rdp, 0.5, 1e-300, 10), f64::INFINITY);
    assert!(cryptotl::privacy::pld::Pld::unsupported(&SubsampledGaussian::new(0.5, 1e-300).unwrap()).unwrap().contains("too small"));
    assert!(cryptotl::privacy::pld::Pld::unsupported(&SubsampledGaussian::new(0.01, 1.0).unwrap()).is_none());
}

#[test]
fn the_tightest_answer_is_the_exact_one_at_full_batch_and_the_smaller_bound_otherwise() {
    // q = 1: exactly the closed form, also where the PLD answers ∞ (σ = 0.02) or is loose (T = 10^12).
    for (sigma, steps) in [(0.02, 10usize), (0.3, 100), (1.0, 1000), (10.0, 1_000_000_000_000)] {
        let exact = gaussian_epsilon(sigma, steps as u64, 1e-5).unwrap();
        assert_eq!(eps(AccountantKind::Tightest, 1.0, sigma, steps), exact, "σ = {sigma}, T = {steps}");
    }
    assert!(eps(AccountantKind::Pld, 1.0, 10.0, 1_000_000_000_000) > 10.0 * gaussian_epsilon(10.0, 1_000_000_000_000, 1e-5).unwrap());
    // q < 1: the smaller of two valid upper bounds, so never above either.
    for q in [0.001, 0.01, 0.1, 0.5] {
        for sigma in [0.5, 1.0, 2.0] {
            for steps in [1usize, 100, 10_000] {
                let (pld, rdp) = (eps(AccountantKind::Pld, q, sigma, steps), eps(AccountantKind::Rdp, q, sigma, steps));
                assert_eq!(eps(AccountantKind::Tightest, q, sigma, steps), pld.min(rdp), "q = {q}, σ = {sigma}, T = {steps}");
            }
        }
    }
    // Where the PLD cannot discretise the mechanism, the RDP bound stands (finite where it is).
    let (tight, rdp) = (eps(AccountantKind::Tightest, 0.5, 0.02, 10), eps(AccountantKind::Rdp, 0.5, 0.02, 10));
    assert_eq!(eps(AccountantKind::Pld, 0.5, 0.02, 10), f64::INFINITY);
    assert!(tight.is_finite() && tight == rdp, "{tight} vs {rdp}");
    // Calibrated on it, full batch spends exactly the target by the closed form (not more, hardly less).
    let acct = AccountantKind::Tightest.accountant();
    let sigma = cryptotl::privacy::calibrate_noise(acct.as_ref(), 1.0, 100, 1e-5, 1.0).unwrap();
    let spent = gaussian_epsilon(sigma, 100, 1e-5).unwrap();
    assert!(spent <= 1.0 && spent > 0.999, "σ = {sigma}: ε = {spent}");
}

#[test]
fn step_counts_past_the_maximum_are_refused_and_huge_ones_are_cheap() {
    let m = SubsampledGaussian::new(1.0, 1e4).unwrap();
    for kind in [AccountantKind::Tightest, AccountantKind::Pld, AccountantKind::Rdp, AccountantKind::Zcdp] {
        let e = kind.accountant().epsilon(&m, MAX_STEPS + 1, 1e-5).unwrap_err().to_string();
        assert!(e.contains("maximum"), "{kind:?}: {e}");
        assert!(kind.accountant().epsilon(&m, usize::MAX, 1e-5).is_err());
    }
    // zCDP composes ρ·T directly: a billion steps is one evaluation (it used to allocate 88 GB), and it agrees
    // with one step of scale σ/√T.
    let big = AccountantKind::Zcdp.accountant().epsilon(&m, 1_000_000_000, 1e-5).unwrap();
    let one = AccountantKind::Zcdp.accountant().epsilon(&SubsampledGaussian::new(1.0, 1e4 / 1e9f64.sqrt()).unwrap(), 1, 1e-5).unwrap();
    assert!((big / one - 1.0).abs() < 1e-9 && big >= gaussian_epsilon(1e4, 1_000_000_000, 1e-5).unwrap(), "{big} {one}");
    // A ρ too large for OpenDP's conversion is ∞, not an error.
    assert_eq!(AccountantKind::Zcdp.accountant().epsilon(&SubsampledGaussian::new(1.0, 1e-3).unwrap(), 1_000_000, 1e-5).unwrap(), f64::INFINITY);
}

fn budget(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cryptotl")).arg("budget").args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn the_budget_command_shows_the_exact_answer_and_refuses_absurd_steps() {
    let (code, out, err) = budget(&["--sampling-rate", "1", "--noise-multiplier", "0.02", "--steps", "10", "--delta", "1e-5", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let exact = v["exact_epsilon"].as_f64().unwrap();
    assert!((exact / 13173.0 - 1.0).abs() < 1e-3, "{out}");
    // The default accountant answers with the exact value itself at q = 1.
    assert_eq!((v["accountant"].as_str(), v["epsilon"].as_f64()), (Some("tightest"), Some(exact)), "{out}");
    // The PLD cannot discretise σ = 0.02: it says so and answers ∞ (JSON null), never the old 7500.
    let (code, out, err) = budget(&["--sampling-rate", "1", "--noise-multiplier", "0.02", "--steps", "10", "--delta", "1e-5", "--json", "--accountant", "pld"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(v["epsilon"].is_null() && v["note"].as_str().unwrap().contains("too small"), "{out}");
    let (code, _, err) = budget(&["--sampling-rate", "0.5", "--noise-multiplier", "1", "--steps", "18446744073709551615", "--delta", "1e-5"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("maximum"), "{err}");
    // The text answer keeps the bound's side: a tiny ε is not printed as 0, and the printed σ still meets the
    // target (rounded up, never down).
    let (code, out, err) = budget(&["--sampling-rate", "0.01", "--steps", "100", "--delta", "1e-5", "--target-epsilon", "1e-9"]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("ε = 0.000000") && out.contains("e-10"), "{out}");
    let (_, json, _) = budget(&["--sampling-rate", "0.01", "--steps", "100", "--delta", "1e-5", "--target-epsilon", "1e-9", "--json"]);
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    let printed: f64 = out.split("σ = ").nth(1).and_then(|r| r.split_whitespace().next()).and_then(|t| t.parse().ok()).expect("σ in the text answer");
    let (exact_sigma, exact_eps) = (v["noise_multiplier"].as_f64().unwrap(), v["epsilon"].as_f64().unwrap());
    assert!(printed >= exact_sigma, "{out} vs {json}");
    let printed_eps: f64 = out.split("gives ε = ").nth(1).and_then(|r| r.split_whitespace().next()).and_then(|t| t.parse().ok()).expect("ε in the text answer");
    assert!(printed_eps >= exact_eps, "{out} vs {json}");
}
