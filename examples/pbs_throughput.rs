//! Programmable bootstraps per second of the server's own evaluator ([`cryptotl_server::Evaluator`], the code
//! `cryptotl serve` runs), per parameter set the project ships. The program is one input feeding `neurons` neurons,
//! each with its own 4-bit lookup table, so the bootstraps are nearly all of the work (the linear stage is one
//! multiply-add per neuron); every decrypted output is checked against the clear-integer program.
//!
//! `cargo run --release --example pbs_throughput [neurons, default 64] [samples per batch, default 1] [set filter]`
//!
//! The per-bootstrap time this prints is the floor the shipped networks' per-sample time is compared with
//! (docs/benchmarks.md): a network of H live neurons costs about H bootstraps plus its linear stage.

use std::time::Instant;

use cryptotl::he::{ClientKey, seeder};
use cryptotl_server::{EncryptedInput, Evaluator, IntegerProgram, ParameterSet};
use rand::{RngExt, SeedableRng};

/// One input (4 bits) read exactly at its bin centre by every neuron; neuron j's table is a rotation by j of
/// 0..2^p, so a wrong key, a wrong table or a misread bin shows up as a mismatch.
fn program(params: ParameterSet, neurons: usize) -> IntegerProgram {
    let (input_bits, accumulator_bits) = (4, 12);
    let lookup_bits = params.max_lookup_bits().min(input_bits);
    let levels = 1i32 << lookup_bits;
    IntegerProgram {
        input_dim: 1,
        input_bits,
        accumulator_bits,
        lookup_bits,
        output_bits: 5,
        neurons,
        weights: vec![1 << (accumulator_bits - input_bits); neurons],
        biases: vec![0; neurons],
        tables: (0..neurons).map(|j| (0..levels).map(|r| (r + j as i32) % levels).collect()).collect(),
        pool: 1,
        output_unit: 1.0,
        table_offsets: vec![],
    }
}

fn main() {
    let arg = |i: usize, default: usize| std::env::args().nth(i).and_then(|s| s.parse().ok()).unwrap_or(default);
    let (neurons, samples) = (arg(1, 64).max(1), arg(2, 1).max(1));
    // The filter matches any part of a set's name, in any case (`multi` picks the multi-bit sets).
    let only = std::env::args().nth(3).unwrap_or_default().to_uppercase();
    let sets: Vec<ParameterSet> = ParameterSet::ALL.into_iter().filter(|p| p.name().to_uppercase().contains(&only)).collect();
    if sets.is_empty() {
        let names: Vec<&str> = ParameterSet::ALL.iter().map(|p| p.name()).collect();
        eprintln!("no parameter set's name contains `{only}`; the sets: {}", names.join(", "));
        std::process::exit(2);
    }
    println!("| parameter set | lookup bits | bootstraps | setup s | best of 3, s | ms per bootstrap | bootstraps/s | outputs off the clear program |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for params in sets {
        let program = program(params, neurons);
        program.validate(params).expect("the synthetic program fits the parameter set");
        let (client, key) = ClientKey::generate(params, seeder(None).as_mut());
        let started = Instant::now();
        let server = Evaluator::new(program.clone(), &key, params).expect("evaluator");
        let setup = started.elapsed().as_secs_f64();
        let iface = program.interface();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut s = seeder(None);
        let levels: Vec<Vec<u16>> = (0..samples).map(|_| vec![rng.random_range(0..1u16 << program.input_bits)]).collect();
        let inputs: Vec<EncryptedInput> = levels.iter().map(|q| client.encrypt(q, &iface, s.as_mut()).expect("encrypt")).collect();
        let mut best = f64::INFINITY;
        let mut outputs = Vec::new();
        for _ in 0..3 {
            let started = Instant::now();
            outputs = server.evaluate_batch(&inputs).expect("evaluate");
            best = best.min(started.elapsed().as_secs_f64());
        }
        let off: usize = outputs
            .iter()
            .zip(&levels)
            .map(|(out, q)| {
                let got = client.decrypt(out, &iface).expect("decrypt");
                got.iter().zip(program.evaluate_clear(q)).filter(|(g, want)| **g != *want).count()
            })
            .sum();
        let bootstraps = neurons * samples;
        println!(
            "| {} | {} | {bootstraps} | {setup:.2} | {best:.3} | {:.2} | {:.0} | {off} of {bootstraps} |",
            params.name(),
            program.lookup_bits,
            best * 1e3 / bootstraps as f64,
            bootstraps as f64 / best
        );
    }
}
