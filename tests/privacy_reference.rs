//! The accountants against peer libraries: `tests/fixtures/dp_reference.csv` (a copy of
//! `shared/reference/dp_reference.csv`: Opacus 1.6, dp_accounting 0.6, prv_accountant 0.2; see its header).

use cryptotl::privacy::{Accountant, SubsampledGaussian, pld::Pld, rdp::Rdp, zcdp::Zcdp};

struct Row {
    q: f64,
    sigma: f64,
    steps: usize,
    delta: f64,
    eps_rdp: f64,
    eps_pld: f64,
    eps_prv_lower: Option<f64>,
    eps_zcdp_cks: Option<f64>,
}

fn rows() -> Vec<Row> {
    let text = include_str!("fixtures/dp_reference.csv");
    let mut lines = text.lines().filter(|l| !l.starts_with('#'));
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap_or_else(|| panic!("no column {name}"));
    let (q, s, t, d, er, ep, epl, ez) =
        (col("q"), col("sigma"), col("T"), col("delta"), col("eps_rdp"), col("eps_pld"), col("eps_prv_lower"), col("eps_zcdp_cks"));
    let opt = |v: &str| if v.is_empty() { None } else { Some(v.parse::<f64>().unwrap()) };
    let rows: Vec<Row> = lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            Row {
                q: f[q].parse().unwrap(),
                sigma: f[s].parse().unwrap(),
                steps: f[t].parse().unwrap(),
                delta: f[d].parse().unwrap(),
                eps_rdp: f[er].parse().unwrap(),
                eps_pld: f[ep].parse().unwrap(),
                eps_prv_lower: opt(f[epl]),
                eps_zcdp_cks: opt(f[ez]),
            }
        })
        .collect();
    assert_eq!(rows.len(), 180, "the reference grid has 180 rows");
    rows
}

#[test]
fn rdp_matches_opacus_to_1e5_relative() {
    let acct = Rdp::default();
    let mut checked = 0;
    let mut failures = vec![];
    for r in rows().iter().filter(|r| r.eps_rdp < 1e3) {
        let eps = acct.epsilon(&SubsampledGaussian::new(r.q, r.sigma).unwrap(), r.steps, r.delta).unwrap();
        let rel = (eps - r.eps_rdp).abs() / r.eps_rdp;
        if rel > 1e-5 {
            failures.push(format!("q={} σ={} T={}: {eps} vs {} (rel {rel:.2e})", r.q, r.sigma, r.steps, r.eps_rdp));
        }
        checked += 1;
    }
    assert!(checked > 150, "only {checked} rows checked");
    assert!(failures.is_empty(), "{} of {checked} rows off:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn pld_is_an_upper_bound_within_1_percent_of_dp_accounting() {
    use rayon::prelude::*;
    let acct = Pld::default();
    let rows = rows();
    let eps: Vec<f64> = rows
        .par_iter()
        .map(|r| acct.epsilon(&SubsampledGaussian::new(r.q, r.sigma).unwrap(), r.steps, r.delta).unwrap())
        .collect();
    let mut failures = vec![];
    for (r, eps) in rows.into_iter().zip(eps) {
        let upper = r.eps_pld * 1.01 + 0.01;
        // The peers' lower bound, where the PRV accountant gives one. On one row (q = 0.1, σ = 1, T = 10,000)
        // PRV's "lower" bound 127.924 lies above dp_accounting's own pessimistic (upper) estimate 127.880, which
        // our PLD reproduces to 1e-9 at the same grid and which converges to 127.8790 from above as the grid is
        // refined: the peers contradict each other there, so the lower bound is the smaller of the two.
        let lower = r.eps_prv_lower.map(|l| l.min(r.eps_pld) - 0.01);
        if eps > upper || lower.is_some_and(|l| eps < l) {
            failures.push(format!(
                "q={} σ={} T={}: {eps} not in [{:?}, {upper}] (dp_accounting {})",
                r.q, r.sigma, r.steps, lower, r.eps_pld
            ));
        }
    }
    assert!(failures.is_empty(), "{} rows off:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn zcdp_through_opendp_equals_the_cks_conversion_on_full_batch_rows() {
    let full_batch: Vec<Row> = rows().into_iter().filter(|r| r.q == 1.0).collect();
    assert_eq!(full_batch.len(), 30);
    for r in full_batch {
        let want = r.eps_zcdp_cks.expect("q = 1 rows carry eps_zcdp_cks");
        let eps = Zcdp.epsilon(&SubsampledGaussian::new(1.0, r.sigma).unwrap(), r.steps, r.delta).unwrap();
        assert!((eps - want).abs() <= 1e-6 * want.max(1.0), "σ={} T={}: {eps} vs {want}", r.sigma, r.steps);
    }
}

#[test]
fn zcdp_refuses_subsampling() {
    let e = Zcdp.epsilon(&SubsampledGaussian::new(0.1, 1.0).unwrap(), 10, 1e-5).unwrap_err().to_string();
    assert!(e.contains("q = 1") && e.contains("rdp or pld"), "{e}");
}
