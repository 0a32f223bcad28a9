//! What the server's own source heads say about the target with no label at all: a measured probe, not a feature.
//!
//! The server pretrains its network with an output layer (one logit per source task with `[source]
//! output_per_path`, else one) that it keeps: the client receives only the frozen lower network's outputs. Were
//! the server to hand over that layer too (a few dozen numbers), the client could classify through it with no
//! labelled example: a text is called positive when a source task's logit, computed from the (float, here)
//! lower network's outputs as the client sees them (its own scaled features, dead units dropped), is above 0.
//! This prints that zero-label accuracy per source task and for the tasks' mean logit, on the **non-test** rows of
//! the config's split (training and validation; their labels used only to score it), never the test split.
//!
//! `cargo run --release --example source_heads [config.toml]` (default: the embedded quickstart, whose network is
//! shipped in the binary; another config needs its network in the cache or its sources to pretrain it). The
//! figures and what they imply are in docs/results.md ("The server's source heads as a zero-label classifier").

use cryptotl::config::RunConfig;
use cryptotl::model::{Cpu, PretrainNet};
use cryptotl::pipeline::{self, NetworkOrigin};
use ndarray::{Array1, Axis, concatenate, s};

fn main() -> anyhow::Result<()> {
    let path = std::env::args().nth(1);
    // The float lower network: the zero-label rule reads its outputs, not the encrypted ones.
    let overrides = ["he.enabled=false".to_string(), "curve.enabled=false".to_string()];
    let cfg = RunConfig::load_or_quickstart(path.as_deref().map(std::path::Path::new), &overrides)?;
    cryptotl::progress::hide();
    let data = pipeline::prepare_data(&cfg)?;
    let lower = pipeline::server_lower_network(&cfg)?;
    let (client_pipeline, own) = pipeline::client_features(&cfg, &data.target)?;
    let (outputs, _) = pipeline::transfer(&cfg, &lower, &pipeline::TransferInput::new(&cfg, &client_pipeline, &data.target, &own)?)?;

    // The whole pretraining network, output layer included, from where this run's lower network came.
    let (tasks, device) = (pipeline::pretrain_outputs(&cfg), Default::default());
    let net: PretrainNet<Cpu> = match lower.origin {
        NetworkOrigin::Shipped => cryptotl::shipped_network::shipped()?.ok_or_else(|| anyhow::anyhow!("no network shipped in the binary"))?.network(&cfg.lower, cfg.features.dim(), tasks, cfg.seed)?,
        _ => cryptotl::model::load_module(PretrainNet::<Cpu>::new(&cfg.lower, cfg.features.dim(), tasks, cfg.seed, &device), &lower.cache_dir.join("lower"), &device)?,
    };
    // `[hidden, tasks]`, restricted to the units the client receives (pruned ones output 0 on the server's side).
    let weights = cryptotl::model::to_array(net.out.weight.val());
    let bias: Array1<f32> = match &net.out.bias {
        Some(b) => Array1::from(b.val().into_data().to_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"))?),
        None => Array1::zeros(tasks),
    };
    let dropped = lower.pruned.as_ref().map(|p| p.dropped.clone()).unwrap_or_default();
    let kept: Vec<usize> = (0..weights.nrows()).filter(|u| !dropped.contains(u)).collect();
    let weights = weights.select(Axis(0), &kept);
    anyhow::ensure!(weights.nrows() == outputs.train.ncols(), "{} outputs but {} kept units", outputs.train.ncols(), weights.nrows());

    // Non-test rows only.
    let h = concatenate(Axis(0), &[outputs.train.view(), outputs.validation.view()])?;
    let y: Vec<u8> = outputs.train_y.iter().chain(&outputs.validation_y).copied().collect();
    let logits = h.dot(&weights) + &bias;
    let accuracy = |scores: ndarray::ArrayView1<f32>| scores.iter().zip(&y).filter(|&(&z, &t)| (z > 0.0) == (t == 1)).count() as f64 / y.len() as f64;
    let majority = y.iter().filter(|&&t| t == 1).count().max(y.iter().filter(|&&t| t == 0).count()) as f64 / y.len() as f64;
    println!("{}: the server's source heads as a zero-label classifier, accuracy on the {} non-test rows (majority class {majority:.3})\n", cfg.name, y.len());
    println!("| source head | accuracy |\n|---|---:|");
    let names: Vec<String> = if tasks > 1 { cfg.source.paths.clone() } else { vec![cfg.source.name.clone()] };
    for (t, name) in names.iter().enumerate() {
        println!("| {name} | {:.3} |", accuracy(logits.slice(s![.., t])));
    }
    if tasks > 1 {
        println!("| mean of the {tasks} logits | {:.3} |", accuracy(logits.mean_axis(Axis(1)).expect("tasks > 1").view()));
    }
    Ok(())
}
