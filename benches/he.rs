//! Criterion benchmarks of the encrypted stage: key generation, encryption, server evaluation (per sample and per
//! batch), decryption, for the default network (768 -> 32 ReLU) and the paper-shaped one (768 -> 768 ReLU ->
//! avg-pool 3 -> 766). Run: `cargo bench --bench he` (README quotes the figures with the machine).
//! Both for the classic default set (`MESSAGE_2_CARRY_2`) and the multi-bit set (`MULTI_BIT_GROUP_3_MESSAGE_1_CARRY_1`,
//! batched bootstraps). `CRYPTOTL_BENCH_PAPER=0` skips the paper-shaped network (~5-11 s per sample).
//! `he/quickstart_server` measures what `cryptotl serve` runs for the embedded default: the shipped network as
//! `server build` compiles it (dead units dropped), its parameter set, batches of 16 samples (the client's default
//! `he.batch`) against the same 16 evaluated one at a time. `cargo bench --bench he -- quickstart` runs only it.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use cryptotl::config::{HeConfig, LowerNetConfig, QUICKSTART_TOML, RunConfig};
use cryptotl::he::{ClientKey, quant, seeder};
use cryptotl::model::{Cpu, LowerNet};
use cryptotl_server::{EncryptedInput, Evaluator, ParameterSet};
use ndarray::Array2;
use rand::{RngExt, SeedableRng};
use rayon::prelude::*;

/// Sparse [0, 1] features shaped like scaled TF-IDF rows (a few percent non-zero).
fn features(rows: usize, dim: usize, seed: u64) -> Array2<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    Array2::from_shape_fn((rows, dim), |_| if rng.random_range(0.0..1.0f32) < 0.03 { rng.random_range(0.0..1.0) } else { 0.0 })
}

fn bench_network(c: &mut Criterion, name: &str, lower_cfg: &LowerNetConfig, he: &HeConfig, client: &ClientKey, evaluation_key: &cryptotl_server::EvaluationKey, full: bool) {
    let lower = LowerNet::<Cpu>::new(lower_cfg, 768, 0, &Default::default());
    let program = quant::compile(&lower, features(500, 768, 1).view(), he).unwrap();
    let server = Evaluator::new(program, evaluation_key, he.params().unwrap()).unwrap();
    let iface = server.program().interface();
    let x = features(4, 768, 2);
    let levels: Vec<Vec<u16>> = x.rows().into_iter().map(|r| iface.quantize(r.as_slice().unwrap())).collect();
    let mut s = seeder(None);
    let inputs: Vec<EncryptedInput> = levels.iter().map(|q| client.encrypt(q, &iface, s.as_mut()).unwrap()).collect();
    eprintln!("{name}: {:?}", server.counts());

    let mut g = c.benchmark_group(format!("he/{name}"));
    g.sample_size(10);
    g.bench_function("server_linear_stage", |b| b.iter(|| server.linear(black_box(&inputs[0])).unwrap()));
    g.bench_function("server_evaluate_per_sample", |b| b.iter(|| server.evaluate(black_box(&inputs[0])).unwrap()));
    let out = server.evaluate(&inputs[0]).unwrap();
    g.bench_function("decrypt", |b| b.iter(|| client.decrypt(black_box(&out), &iface).unwrap()));
    if full {
        g.bench_function("encrypt_768", |b| b.iter(|| client.encrypt(black_box(&levels[0]), &iface, s.as_mut()).unwrap()));
    }
    // The batch API: 4 samples for the default network, 2 for the paper-shaped one (~10 s per batch).
    let batch = if full { &inputs[..] } else { &inputs[..2] };
    g.bench_with_input(BenchmarkId::new("server_evaluate_batch", batch.len()), batch, |b, inputs| {
        b.iter(|| server.evaluate_batch(black_box(inputs)).unwrap())
    });
    g.finish();
}

/// The embedded default's server program: samples per second, batched across samples and one at a time.
fn bench_quickstart_server(c: &mut Criterion) {
    let cfg = RunConfig::from_toml_str(QUICKSTART_TOML, "quickstart", &[]).unwrap();
    let (artifact, _) = cryptotl::pipeline::server_artifact(&cfg).unwrap();
    let params = artifact.params;
    let (client, evaluation_key) = ClientKey::generate(params, seeder(None).as_mut());
    let server = Evaluator::new(artifact.program.clone(), &evaluation_key, params).unwrap();
    let iface = server.program().interface();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let mut s = seeder(None);
    let batch = cryptotl::config::HeConfig::default().batch;
    let inputs: Vec<EncryptedInput> = (0..batch)
        .map(|_| {
            let x: Vec<f32> = (0..iface.input_dim).map(|_| rng.random_range(0.0..1.0f32)).collect();
            client.encrypt(&iface.quantize(&x), &iface, s.as_mut()).unwrap()
        })
        .collect();
    eprintln!("quickstart_server ({}): {:?}", params.name(), server.counts());
    let mut g = c.benchmark_group("he/quickstart_server");
    g.sample_size(10);
    g.throughput(Throughput::Elements(batch as u64));
    g.bench_with_input(BenchmarkId::new("evaluate_batch", batch), &inputs, |b, inputs| b.iter(|| server.evaluate_batch(black_box(inputs)).unwrap()));
    // The batch's linear stage alone, as `evaluate_batch` runs it (samples in parallel): the part before the bootstraps.
    g.bench_with_input(BenchmarkId::new("linear_stage_batch", batch), &inputs, |b, inputs| {
        b.iter(|| inputs.par_iter().map(|x| server.linear(black_box(x)).unwrap()).collect::<Vec<_>>())
    });
    // Of which the expansion of the seeded masks (the CSPRNG), without the multiply-adds: as the linear stage runs it
    // (`eval::mask::expand`, AES-NI a batch of blocks at a time), and as tfhe-rs's decompression does (a byte at a time).
    g.bench_with_input(BenchmarkId::new("mask_expansion_batch", batch), &inputs, |b, inputs| {
        b.iter(|| inputs.par_iter().map(|x| cryptotl_server::eval::mask::expand(&black_box(x).features).unwrap()).collect::<Vec<_>>())
    });
    g.bench_with_input(BenchmarkId::new("mask_expansion_tfhe_rs_batch", batch), &inputs, |b, inputs| {
        b.iter(|| inputs.par_iter().map(|x| black_box(x).features.clone().par_decompress_into_lwe_ciphertext_list().into_container()).collect::<Vec<_>>())
    });
    g.bench_with_input(BenchmarkId::new("evaluate_one_at_a_time", batch), &inputs, |b, inputs| {
        b.iter(|| inputs.iter().map(|x| server.evaluate(black_box(x)).unwrap()).collect::<Vec<_>>())
    });
    g.finish();
}

fn bench(c: &mut Criterion) {
    bench_quickstart_server(c);
    for (params, tag) in [(ParameterSet::default(), ""), (ParameterSet::MultiBit3Message1Carry1, "_multibit")] {
        let he = HeConfig { parameter_set: params.name().into(), ..HeConfig::default() };
        let mut g = c.benchmark_group("he/keys");
        g.sample_size(10);
        g.bench_function(format!("keygen_client_and_seeded_evaluation_key{tag}"), |b| b.iter(|| ClientKey::generate(params, seeder(None).as_mut())));
        let (client, evaluation_key) = ClientKey::generate(params, seeder(None).as_mut());
        g.bench_function(format!("server_setup_fourier_and_tables_default_net{tag}"), |b| {
            let lower = LowerNet::<Cpu>::new(&LowerNetConfig::default(), 768, 0, &Default::default());
            let program = quant::compile(&lower, features(100, 768, 1).view(), &he).unwrap();
            b.iter(|| Evaluator::new(program.clone(), &evaluation_key, params).unwrap())
        });
        g.finish();
        bench_network(c, &format!("default_768_32{tag}"), &LowerNetConfig::default(), &he, &client, &evaluation_key, true);
        if std::env::var("CRYPTOTL_BENCH_PAPER").as_deref() != Ok("0") {
            bench_network(c, &format!("paper_768_768_pool3_766{tag}"), &LowerNetConfig::paper_encrypted(), &he, &client, &evaluation_key, false);
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
