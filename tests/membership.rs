//! The membership attack on the server's source data: its statistics against brute force, that it sees a
//! generalisation gap when there is one and nothing when there is none, and the command on a real config.

mod common;

use cryptotl::membership::{loss_attack, roc_auc, tpr_at_fpr};
use ndarray::Array2;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

#[test]
fn auc_is_the_pairwise_win_rate_with_ties_counted_half() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    for _ in 0..20 {
        // Integer scores, so there are many ties.
        let pos: Vec<f64> = (0..37).map(|_| rng.random_range(0..10) as f64).collect();
        let neg: Vec<f64> = (0..23).map(|_| rng.random_range(0..8) as f64).collect();
        let wins: f64 = pos.iter().flat_map(|p| neg.iter().map(move |n| if p > n { 1.0 } else if p == n { 0.5 } else { 0.0 })).sum();
        let brute = wins / (pos.len() * neg.len()) as f64;
        assert!((roc_auc(&pos, &neg) - brute).abs() < 1e-12);
    }
    assert!(roc_auc(&[], &[1.0]).is_nan());
}

#[test]
fn tpr_at_low_fpr_lets_at_most_that_share_of_negatives_through() {
    let neg: Vec<f64> = (0..200).map(f64::from).collect(); // 0..199
    // 1% of 200 = 2 negatives may score above the threshold (198, 199): the threshold is 197.
    let pos = [197.0, 197.5, 198.0, 250.0];
    assert_eq!(tpr_at_fpr(&pos, &neg, 0.01), 0.75);
    assert_eq!(tpr_at_fpr(&pos, &neg, 0.0), 0.25); // only above the largest negative
}

/// `n` rows of `d` features: the label moves feature 0 by `signal` (towards +/-), plus standard normal noise.
fn rows(n: usize, d: usize, signal: f64, rng: &mut rand_chacha::ChaCha8Rng) -> (Array2<f32>, Vec<u8>) {
    let y: Vec<u8> = (0..n).map(|i| (i % 2) as u8).collect();
    let x = Array2::from_shape_fn((n, d), |(i, j)| {
        let z: f64 = StandardNormal.sample(rng);
        (z + if j == 0 { signal * (2.0 * y[i] as f64 - 1.0) } else { 0.0 }) as f32
    });
    (x, y)
}

#[test]
fn the_attack_sees_a_generalisation_gap_and_nothing_without_one() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
    let reference = rows(2000, 8, 0.5, &mut rng);
    let non_members = rows(2000, 8, 0.5, &mut rng);
    // Members the network has fitted: their labels are much easier to read off its outputs.
    let fitted = rows(2000, 8, 2.0, &mut rng);
    let gap = loss_attack((&fitted.0, &fitted.1), (&non_members.0, &non_members.1), (&reference.0, &reference.1)).unwrap();
    assert!(gap.auc > 0.75, "{gap:?}");
    assert!(gap.member_loss < gap.non_member_loss);
    assert!(gap.tpr_at_1pct_fpr > 0.01, "{gap:?}");
    // Members drawn like everyone else: chance (the AUC's sd here is about 0.007).
    let same = rows(2000, 8, 0.5, &mut rng);
    let none = loss_attack((&same.0, &same.1), (&non_members.0, &non_members.1), (&reference.0, &reference.1)).unwrap();
    assert!((none.auc - 0.5).abs() < 0.04, "{none:?}");
    assert_eq!((none.members, none.non_members, none.reference), (2000, 2000, 2000));
}

#[test]
fn the_command_attacks_the_configs_network_with_balanced_candidates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.toml");
    std::fs::write(&path, common::tiny_config(dir.path())).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cryptotl")).args(["-q", "server", "membership"]).arg(&path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(dir.path().join("run/membership.json")).unwrap();
    let a: cryptotl::membership::MembershipAttack = serde_json::from_str(&text).unwrap();
    let cfg = cryptotl::config::RunConfig::load(&path, &[]).unwrap();
    let (source, _) = cryptotl::pipeline::load_source(&cfg).unwrap();
    assert_eq!((a.members, a.non_members, a.reference), (source.test.texts.len(), source.test.texts.len(), source.validation.texts.len()));
    assert!((0.0..=1.0).contains(&a.auc) && (0.0..=1.0).contains(&a.tpr_at_1pct_fpr));
    // The separable fixture is learned perfectly from few examples: members are no easier than non-members.
    assert!((a.auc - 0.5).abs() < 0.25, "{a:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("TPR at 1% FPR"));
}
