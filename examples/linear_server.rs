//! What a server network with no activation would give and cost: a measured design probe, not a feature.
//!
//! A lower network whose hidden layer has no activation (`[lower] activation = "identity"`, pretrained as usual)
//! is one affine map. Under encryption it is exactly the linear stage the server already runs before its
//! bootstraps, so the server could stop there: no bootstrap, no bootstrap key to upload, and the client decrypts
//! the accumulators under its small key. This probe pretrains that network for a config (default: the embedded
//! quickstart with the activation switched off; it needs the config's sources, `python3 datasets/fetch.py`),
//! encrypts every client sample, runs the server's linear stage (`Evaluator::linear`) on the ciphertexts, and
//! decrypts the accumulators, at full precision and after a modulus switch to 2^q for the download (the same
//! rounding the shipped outputs get). It prints:
//! - the accumulators' decryption error against the clear integer program, in accumulator units (2^B per range);
//! - the linear stage's time per sample and the download a sample would take;
//! - the learning curves of the config's head on three versions of the same outputs: the float network, the clear
//!   integers, the decrypted ciphertexts (each column standardised on the training rows), beside the raw-feature
//!   head. These are test-split figures, as a run's curves are; nothing here is chosen on them.
//!
//! `cargo run --release --example linear_server [config.toml]`; `CRYPTOTL_PARAMS=<parameter set>` overrides the
//! config's (e.g. a classic set, whose small key carries 8x less noise); `CRYPTOTL_Q=17` sets the download's bits
//! per word (default 20). The figures and what they imply are in docs/results.md ("A server network without an
//! activation").

use std::time::Instant;

use cryptotl::config::RunConfig;
use cryptotl::he::client::{ClientKey, seeder};
use cryptotl::pipeline::{self, FeatureSplit};
use cryptotl_server::{Evaluator, ParameterSet};
use ndarray::{Array2, Axis};
use rayon::prelude::*;

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.into())
}

/// Each column of every part standardised with the training rows' mean and standard deviation.
fn standardised(fs: &FeatureSplit) -> FeatureSplit {
    let mean = fs.train.mean_axis(Axis(0)).expect("training rows");
    let std = fs.train.std_axis(Axis(0), 0.0).mapv(|s| if s > 0.0 { s } else { 1.0 });
    let f = |x: &Array2<f32>| (x - &mean) / &std;
    FeatureSplit { train: f(&fs.train), validation: f(&fs.validation), test: f(&fs.test), ..fs.clone() }
}

fn main() -> anyhow::Result<()> {
    let path = std::env::args().nth(1);
    let q: u32 = env_or("CRYPTOTL_Q", "20").parse()?;
    anyhow::ensure!((2..=64).contains(&q), "CRYPTOTL_Q must be 2..=64");
    let overrides = vec!["lower.activation=\"identity\"".to_string(), "he.enabled=false".into()];
    let cfg = RunConfig::load_or_quickstart(path.as_deref().map(std::path::Path::new), &overrides)?;
    let params = match std::env::var("CRYPTOTL_PARAMS") {
        Ok(name) => ParameterSet::from_name(&name)?,
        Err(_) => cfg.he.params()?,
    };
    anyhow::ensure!(cfg.head.transfer_unit == cryptotl::config::TransferUnit::Text, "this probe sends one row per text");
    cryptotl::progress::hide();
    let data = pipeline::prepare_data(&cfg)?;
    let lower = pipeline::server_lower_network(&cfg)?;
    let (_, own) = pipeline::client_features(&cfg, &data.target)?;
    let program = pipeline::compile_program(&cfg, &lower)?;
    let iface = program.interface();
    let b = program.accumulator_bits;
    println!("{}: {} inputs -> {} linear outputs, {}-bit inputs, {b}-bit accumulators; parameter set {}", cfg.name, program.input_dim, program.neurons, program.input_bits, params.name());

    let (key, evaluation_key) = ClientKey::generate(params, seeder(None).as_mut());
    // The evaluator also prepares a bootstrap key; only its linear stage is used here.
    let server = Evaluator::new(program.clone(), &evaluation_key, params)?;
    let float = own.map(|x| pipeline::lower_forward(&lower.net, x))?;
    let (mut errors, mut errors_q, mut seconds, mut samples, mut wrapped) = (Vec::new(), Vec::new(), 0.0, 0usize, 0usize);
    let range = 2f64.powi(b as i32);
    let round = |w: u64| if q == 64 { w } else { (w.wrapping_add(1 << (63 - q)) >> (64 - q)) << (64 - q) };
    let mut pass = |x: &Array2<f32>| -> anyhow::Result<(Array2<f32>, Array2<f32>)> {
        let levels: Vec<Vec<u16>> = x.axis_iter(Axis(0)).map(|r| iface.quantize(r.as_slice().expect("standard layout"))).collect();
        let inputs = key.encrypt_batch(&levels, &iface, seeder(None).as_mut())?;
        let start = Instant::now();
        let raw: Vec<Vec<u64>> = inputs.par_iter().map(|ct| server.linear(ct)).collect::<Result<_, _>>()?;
        seconds += start.elapsed().as_secs_f64();
        samples += inputs.len();
        let (mut clear, mut decrypted) = (Array2::zeros((x.nrows(), program.neurons)), Array2::zeros((x.nrows(), program.neurons)));
        for (i, (lv, words)) in levels.iter().zip(&raw).enumerate() {
            let exact = program.accumulators(lv);
            let got = key.decrypt_accumulators(words, b);
            let switched: Vec<u64> = words.iter().map(|&w| round(w)).collect();
            let got_q = key.decrypt_accumulators(&switched, b);
            for j in 0..program.neurons {
                clear[[i, j]] = exact[j] as f32;
                decrypted[[i, j]] = got_q[j] as f32;
                // The phase is read in [-2^B, 2^B): an accumulator beyond it, or pushed across its edge by the noise,
                // comes back 2^(B+1) off. Such a wrap is counted apart and the error measured on the rest.
                let (e, e_q) = (got[j] - exact[j] as f64, got_q[j] - exact[j] as f64);
                if e.abs() < range && e_q.abs() < range {
                    errors.push(e);
                    errors_q.push(e_q);
                } else {
                    wrapped += 1;
                }
            }
        }
        Ok((clear, decrypted))
    };
    let (train_c, train_e) = pass(&own.train)?;
    let (validation_c, validation_e) = pass(&own.validation)?;
    let (test_c, test_e) = pass(&own.test)?;
    let rms = |e: &[f64]| (e.iter().map(|v| v * v).sum::<f64>() / e.len() as f64).sqrt();
    let max = |e: &[f64]| e.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let total = errors.len() + wrapped;
    println!("\naccumulator decryption error against the clear integers, {total} accumulators, in units of 1/{range} of a neuron's calibrated range:");
    println!("- {wrapped} ({:.3}%) wrap (2^{} off: beyond the readable [-2^{b}, 2^{b}), or pushed across its edge by the noise); on the rest:", 100.0 * wrapped as f64 / total as f64, b + 1);
    println!("- full 64-bit words: rms {:.2}, max {:.2} (about {:.1} bits of precision)", rms(&errors), max(&errors), (range / rms(&errors)).log2());
    println!("- switched to 2^{q} for the download: rms {:.2}, max {:.2} (about {:.1} bits)", rms(&errors_q), max(&errors_q), (range / rms(&errors_q)).log2());
    let words = params.lwe_dimension() + 1;
    println!(
        "\nserver: linear stage {:.2} ms per sample ({samples} samples, {} threads; seeded-mask expansion included), no bootstrap\n\
         download: {} outputs x {words} words x {q} bits = {:.1} KiB per sample (small key; the shipped outputs are {} words each under the big key)",
        1e3 * seconds / samples as f64,
        rayon::current_num_threads(),
        program.neurons,
        (program.neurons * words) as f64 * q as f64 / 8.0 / 1024.0,
        params.big_lwe_dimension() + 1
    );

    let parts = |train: Array2<f32>, validation: Array2<f32>, test: Array2<f32>| FeatureSplit { train, validation, test, ..float.clone() };
    let versions = [
        ("float network", standardised(&float)),
        ("clear integers", standardised(&parts(train_c, validation_c, test_c))),
        ("decrypted (encrypted path)", standardised(&parts(train_e, validation_e, test_e))),
    ];
    let references = pipeline::dp_references(&cfg, None, program.neurons, own.train.ncols());
    println!("\n`{}` head, test accuracy, mean ± std over {} draws per size:\n", cfg.head.inputs.name(), cfg.curve.draws);
    let mut header = false;
    for (name, outputs) in &versions {
        let curves = cryptotl::curve::learning_curves(&cfg, outputs, &own, None, &references)?;
        if !header {
            println!("| outputs | {} |", curves.sizes.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(" | "));
            println!("|---|{}", "---:|".repeat(curves.sizes.len()));
            let raw: Vec<String> = curves.sizes.iter().map(|&s| curves.point("raw_features", s).map_or("—".into(), |p| format!("{:.3}", p.mean))).collect();
            println!("| (raw-feature head) | {} |", raw.join(" | "));
            header = true;
        }
        let row: Vec<String> = curves.sizes.iter().map(|&s| curves.point("transfer", s).map_or("—".into(), |p| format!("{:.3} ± {:.3}", p.mean, p.std))).collect();
        println!("| {name} | {} |", row.join(" | "));
    }
    Ok(())
}
