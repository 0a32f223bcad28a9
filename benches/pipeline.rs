//! Criterion benchmarks of the plaintext pipeline stages on the paper-shaped network.
//! Run: `cargo bench --bench pipeline` (README quotes the figures with the machine).

use std::hint::black_box;

use burn::tensor::Tensor;
use criterion::{Criterion, criterion_group, criterion_main};
use cryptotl::config::{DatasetConfig, DatasetFormat, HeadConfig, LowerNetConfig, TrainConfig};
use cryptotl::features::{Featurizer, HashedTfidf};
use cryptotl::model::{Cpu, Head, LowerNet, Train};
use cryptotl::train::{self, Examples};
use ndarray::Array2;

fn bench(c: &mut Criterion) {
    let ds = cryptotl::data::load(&DatasetConfig::new("imdb", DatasetFormat::Csv, &["embedded:imdb_sentences"]), 0).unwrap();
    let featurizer = HashedTfidf::fit(&ds.texts, 768, 2);
    c.bench_function("features/hashed_tfidf_768/1000_sentences", |b| b.iter(|| featurizer.transform(black_box(&ds.texts)).unwrap()));

    let device = Default::default();
    let lower = LowerNet::<Cpu>::new(&LowerNetConfig::paper(), 768, 0, &device);
    let x = Tensor::<Cpu, 2>::random([32, 768], burn::tensor::Distribution::Uniform(0.0, 1.0), &device);
    c.bench_function("lower_net/paper_768_766/forward_batch_32", |b| b.iter(|| lower.forward(black_box(x.clone())).into_data()));

    let rows = Array2::from_shape_fn((320, 766), |(i, j)| ((i * 7 + j * 13) % 101) as f32 / 101.0);
    let labels: Vec<u8> = (0..320).map(|i| (i % 2) as u8).collect();
    let cfg = TrainConfig { epochs: 1, batch_size: 32, learning_rate: 1e-3, patience: 0 };
    let data = Examples { x: rows.view(), y: &labels };
    c.bench_function("head/paper_766/one_epoch_10_steps_batch_32", |b| {
        b.iter(|| {
            let head = Head::<Train>::new(&HeadConfig::mlp(0, 1, 0.2), 766, 766, 0, &device);
            train::train(head, data, data, &cfg, 0, "bench")
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
