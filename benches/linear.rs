//! Criterion benchmarks of the linear probe (`cryptotl::linear`): one L-BFGS fit, and the cross-validated choice
//! of C that every learning-curve subset makes, on rows shaped like the quickstart's `transfer+own` head
//! (16 transfer outputs beside 384 own features), and the bag-of-words baseline's sparse fits.
//! Run: `cargo bench --bench linear` (docs/benchmarks.md quotes the figures with the machine).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use cryptotl::linear::{Candidate, Design, fit, fit_choosing_cv};
use ndarray::Array2;

/// `n` rows of `d` columns, deterministic, with labels from a noisy linear rule (a separable problem would let
/// L-BFGS stop early and flatter the solver).
fn fixture(n: usize, d: usize) -> (Array2<f32>, Vec<u8>) {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut uniform = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let x = Array2::from_shape_fn((n, d), |_| (uniform() - 0.5) as f32);
    let w: Vec<f32> = (0..d).map(|j| if j % 7 == 0 { 1.0 } else { 0.05 }).collect();
    let y = x.rows().into_iter().map(|r| u8::from(r.iter().zip(&w).map(|(a, b)| a * b).sum::<f32>() + (uniform() as f32 - 0.5) > 0.0)).collect();
    (x, y)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("linear");
    for n in [256usize, 652] {
        let (x, y) = fixture(n, 400);
        g.bench_function(format!("fit_c1/{n}x400"), |b| b.iter(|| fit(Design::Dense(black_box(x.view())), &y, 1.0).unwrap()));
    }
    // A learning-curve subset of 128 labels choosing among the 11 Cs of a linear head by 5-fold cross-validation.
    let (x, y) = fixture(128, 400);
    let cands: Vec<Candidate> = cryptotl::config::LINEAR_HEAD_CS.iter().map(|&c| Candidate { c, column_weights: None }).collect();
    g.bench_function("fit_choosing_cv/128x400/11_cs_5_folds", |b| b.iter(|| fit_choosing_cv(Design::Dense(black_box(x.view())), &y, &cands, 5, 1).unwrap()));
    // The same subset as a `transfer+own` head chooses: the 11 Cs under each of the own features' 4 weights (the
    // first 16 columns stand for the transfer outputs, the other 384 for the own features), 44 candidates.
    let own_cands: Vec<Candidate> = cryptotl::config::OWN_FEATURE_WEIGHTS
        .iter()
        .flat_map(|&w| cryptotl::config::LINEAR_HEAD_CS.iter().map(move |&c| Candidate { c, column_weights: Some((0..400).map(|j| if j < 16 { 1.0 } else { w }).collect()) }))
        .collect();
    for n in [64usize, 128] {
        let (x, y) = fixture(n, 400);
        g.bench_function(format!("fit_choosing_cv/{n}x400/44_candidates_5_folds"), |b| b.iter(|| fit_choosing_cv(Design::Dense(black_box(x.view())), &y, &own_cands, 5, 1).unwrap()));
    }
    // The bag-of-words baseline's sparse rows (TF-IDF word 1-2-grams hashed to 2^18 columns) of IMDb sentences:
    // a curve subset of 128 choosing among its 4 Cs by 5-fold cross-validation, and one fit on 652.
    let ds = cryptotl::data::load(&cryptotl::config::DatasetConfig::new("imdb", cryptotl::config::DatasetFormat::Csv, &["embedded:imdb_sentences"]), 0).unwrap();
    let dim = cryptotl::bow::BAG_OF_WORDS_DIM;
    let tfidf = cryptotl::features::HashedTfidf::fit(&ds.texts[..652], dim, 2);
    let rows = tfidf.transform_sparse(&ds.texts[..652]);
    let bow_cands: Vec<Candidate> = cryptotl::bow::BAG_OF_WORDS_CS.iter().map(|&c| Candidate { c, column_weights: None }).collect();
    g.bench_function("bow_fit_c10/652_sparse", |b| b.iter(|| fit(Design::Sparse { rows: black_box(&rows), dim }, &ds.labels[..652], 10.0).unwrap()));
    g.bench_function("bow_fit_choosing_cv/128_sparse/4_cs_5_folds", |b| {
        b.iter(|| fit_choosing_cv(Design::Sparse { rows: black_box(&rows[..128]), dim }, &ds.labels[..128], &bow_cands, 5, 1).unwrap())
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench
}
criterion_main!(benches);
