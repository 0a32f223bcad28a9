//! The one-run privacy audit: its statistics against an independent computation (SciPy, the paper's Appendix D
//! code), and the audit tested both ways: it sees leakage without DP, and never proves more than the accountant
//! claims with DP.

use cryptotl::audit::{audit, epsilon_lower_bound, guesses, p_value};
use cryptotl::config::RunConfig;

mod common;

#[test]
fn p_values_and_bounds_match_an_independent_computation() {
    // (m, r, v, ε, δ) -> p, computed with scipy.stats.binom as in the paper's Appendix D.
    for (m, r, v, eps, delta, want) in [
        (1000, 200, 180, 1.0, 1e-5, 0.00043622453857916014),
        (1000, 200, 150, 0.5, 1e-5, 0.0006212078358387146),
        (1000, 200, 200, 3.0, 1e-4, 0.014106956821312239),
    ] {
        let p = p_value(m, r, v, eps, delta);
        assert!((p / want - 1.0).abs() < 1e-6, "p({m}, {r}, {v}, {eps}, {delta}) = {p}, want {want}");
    }
    for (m, r, v, delta, want) in [(1000, 200, 180, 1e-5, 1.7962846755981445), (1000, 200, 200, 1e-4, 3.909111976623535), (1000, 100, 70, 0.0, 0.47167110443115234)] {
        let lb = epsilon_lower_bound(m, r, v, delta, 0.05);
        assert!((lb - want).abs() < 1e-5, "bound({m}, {r}, {v}, {delta}) = {lb}, want {want}");
    }
    // More correct guesses prove more; more δ proves less.
    assert!(epsilon_lower_bound(1000, 200, 190, 1e-5, 0.05) > epsilon_lower_bound(1000, 200, 180, 1e-5, 0.05));
    assert!(epsilon_lower_bound(1000, 200, 190, 1e-3, 0.05) < epsilon_lower_bound(1000, 200, 190, 1e-6, 0.05));
    // Guessing: the top k in, the bottom k out.
    let scores = [5.0, -1.0, 3.0, 0.0, -4.0, 1.0];
    let included = [true, false, true, true, false, false];
    assert_eq!(guesses(&scores, &included, 2), (4, 4));
    assert_eq!(guesses(&scores, &[false; 6], 2), (4, 2));
}

/// The head's inputs and the public point its DP training centres them on.
fn head_inputs(cfg: &RunConfig) -> (cryptotl::pipeline::FeatureSplit, Vec<f32>) {
    let data = cryptotl::pipeline::prepare_data(cfg).unwrap();
    let lower = cryptotl::pipeline::server_lower_network(cfg).unwrap();
    let (_, own) = cryptotl::pipeline::client_features(cfg, &data.target).unwrap();
    let (t, _) = cryptotl::pipeline::transfer(cfg, &lower, &cryptotl::pipeline::TransferInput::texts(&own)).unwrap();
    let references = cryptotl::pipeline::dp_references(cfg, Some(&lower), t.train.ncols(), own.train.ncols());
    (cryptotl::pipeline::head_inputs(cfg, &t, &own, None).unwrap(), references.transferred)
}

#[test]
fn the_audit_sees_leakage_without_dp_and_never_proves_more_than_the_accountant_claims() {
    let dir = tempfile::tempdir().unwrap();
    let base = common::tiny_config(dir.path());
    let load = |privacy: &str| RunConfig::from_toml_str(&format!("{base}[privacy]\n{privacy}\ninsecure_seed = 3\n"), "tiny.toml", &["he.enabled=false".to_string()]).unwrap();
    let (fs, reference) = head_inputs(&load("target_epsilon = 1.0"));
    assert_eq!(reference.len(), fs.train.ncols(), "the audit centres the head's inputs as its training does");
    // σ tiny: DP in name only (ε in the millions). The canaries are plainly visible.
    let leaky = audit(&load("noise_multiplier = 0.001"), &fs, &reference, 1000, 1).unwrap();
    assert!(leaky.epsilon_claimed > 100.0, "{leaky:?}");
    assert!(leaky.epsilon_lower_bound > 3.0, "no DP: the audit must see the leakage: {leaky:?}");
    assert_eq!(leaky.guesses, 200);
    assert!(leaky.seconds > 0.0 && leaky.to_markdown().contains(" s |"), "the audit states its wall time");
    // DP at ε = 1, 4, 8 over several seeds: the proven lower bound never exceeds the claimed upper bound.
    for eps in [1.0, 4.0, 8.0] {
        for seed in 1..=3u64 {
            let r = audit(&load(&format!("target_epsilon = {eps}")), &fs, &reference, 1000, seed).unwrap();
            assert!(r.epsilon_claimed <= eps + 1e-6);
            assert!(r.epsilon_lower_bound <= r.epsilon_claimed, "ε = {eps}, seed {seed}: audited {} > claimed {}", r.epsilon_lower_bound, r.epsilon_claimed);
        }
    }
    // Refusals: no [privacy], the MLP head, too few canaries.
    let plain = RunConfig::from_toml_str(&base, "tiny.toml", &["he.enabled=false".to_string()]).unwrap();
    assert!(audit(&plain, &fs, &reference, 1000, 1).unwrap_err().to_string().contains("privacy"));
    let mut mlp = load("target_epsilon = 1.0");
    mlp.head.kind = cryptotl::config::HeadKind::Mlp;
    assert!(audit(&mlp, &fs, &reference, 1000, 1).unwrap_err().to_string().contains("head.kind"));
    assert!(audit(&load("target_epsilon = 1.0"), &fs, &reference, 1, 1).unwrap_err().to_string().contains("canaries"));
    // A canary count whose widened matrix would not fit is refused before anything is allocated, naming the most
    // canaries this data allows.
    let (n, d) = fs.train.dim();
    let most = cryptotl::audit::max_canaries(n, d);
    assert!(cryptotl::audit::audit_cells(n, d, most) <= cryptotl::audit::MAX_AUDIT_CELLS);
    assert!(cryptotl::audit::audit_cells(n, d, most + 1) > cryptotl::audit::MAX_AUDIT_CELLS);
    let e = audit(&load("target_epsilon = 1.0"), &fs, &reference, most + 1, 1).unwrap_err().to_string();
    assert!(e.contains("canaries") && e.contains(&format!("at most {most} canaries")), "{e}");
    assert!(audit(&load("target_epsilon = 1.0"), &fs, &reference, 1_000_000, 1).is_err());
}
