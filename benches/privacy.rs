//! DP-SGD step cost against a non-private step on the paper head, accountant latency, and the one-run privacy
//! audit's cost against its number of canaries on the quickstart's head inputs.
//! Run: `cargo bench --bench privacy` (the audit alone: `cargo bench --bench privacy -- audit`).

use std::hint::black_box;

use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::{Distribution, Tensor};
use criterion::{Criterion, criterion_group, criterion_main};
use cryptotl::config::HeadConfig;
use cryptotl::model::{Head, Train, bce_with_logits};
use cryptotl::privacy::dpsgd::{PrivacyRng, PrivateModel, clipped_gradient_sum_reference, noisy_gradient};
use cryptotl::privacy::{Accountant, SubsampledGaussian, pld::Pld, rdp::Rdp};

fn steps(c: &mut Criterion) {
    let device = Default::default();
    let head = Head::<Train>::new(&HeadConfig::mlp(0, 1, 0.0), 766, 766, 0, &device);
    let x = Tensor::<Train, 2>::random([32, 766], Distribution::Uniform(0.0, 1.0), &device);
    let y = Tensor::<Train, 2>::random([32, 1], Distribution::Uniform(0.0, 1.0), &device).round();
    let mut optim = AdamConfig::new().init::<Train, Head<Train>>();
    let mut rng = PrivacyRng::insecure_from_seed(0);
    let mut group = c.benchmark_group("step/paper_head_766/batch_32");
    group.sample_size(20);
    group.bench_function("non_private", |b| {
        b.iter(|| {
            let loss = bce_with_logits(head.logits(x.clone(), None), y.clone()).mean();
            let grads = GradientsParams::from_grads(loss.backward(), &head);
            black_box(optim.step(1e-3, head.clone(), grads))
        })
    });
    group.bench_function("dp_sgd_fast_path", |b| {
        b.iter(|| {
            let sum = head.clipped_gradient_sum(x.clone(), y.clone(), 1.0, None);
            let grads = noisy_gradient(&head, sum.grads, 1.0, 1.0, 32.0, &mut rng.noise);
            black_box(optim.step(1e-3, head.clone(), grads))
        })
    });
    group.bench_function("dp_sgd_reference_per_example", |b| {
        b.iter(|| {
            let sum = clipped_gradient_sum_reference(&head, x.clone(), y.clone(), 1.0, None);
            let grads = noisy_gradient(&head, sum.grads, 1.0, 1.0, 32.0, &mut rng.noise);
            black_box(optim.step(1e-3, head.clone(), grads))
        })
    });
    group.finish();
}

fn accountants(c: &mut Criterion) {
    let m = SubsampledGaussian::new(0.01, 1.0).unwrap();
    let mut group = c.benchmark_group("accountant/q0.01_sigma1_T10000");
    group.sample_size(10);
    group.bench_function("rdp", |b| b.iter(|| Rdp::default().epsilon(black_box(&m), 10_000, 1e-5).unwrap()));
    group.bench_function("pld", |b| b.iter(|| Pld::default().epsilon(black_box(&m), 10_000, 1e-5).unwrap()));
    group.finish();
}

/// The audit on the embedded quickstart at ε = 1 (float lower network: the audit's cost does not depend on how
/// the inputs were computed): its wall time grows with the widened matrix, (N + m/2) x (d + m) cells, so about
/// quadratically in m once m passes N and d.
fn audit(c: &mut Criterion) {
    let cfg = cryptotl::config::RunConfig::from_toml_str(
        cryptotl::config::QUICKSTART_TOML,
        "quickstart.toml",
        &["he.enabled=false".into(), "privacy.target_epsilon=1".into()],
    )
    .unwrap();
    let (inputs, reference) = cryptotl::audit::audit_inputs(&cfg).unwrap();
    let (n, d) = inputs.train.dim();
    let mut group = c.benchmark_group(format!("audit/quickstart_eps1_n{n}_d{d}"));
    group.sample_size(10);
    for m in [250usize, 1000, 4000] {
        group.bench_function(format!("canaries_{m}"), |b| {
            b.iter(|| cryptotl::audit::audit(&cfg, &inputs, &reference, black_box(m), 0).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, steps, accountants, audit);
criterion_main!(benches);
