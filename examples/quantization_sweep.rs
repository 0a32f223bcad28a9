//! Design exploration for the encrypted stage: validation accuracy of heads trained on the float lower network's
//! outputs and on the clear-integer program's outputs (the oracle of the encrypted path, without encryption),
//! across network widths and bit widths. Cheap (no TFHE), so the README's trade-off table can cover many settings;
//! the encrypted path then differs from the clear one only by its measured one-level lookups. It prints validation
//! accuracy, never test accuracy: a sweep is a choice of settings, and settings are chosen on the validation split.
//!
//! `cargo run --release --example quantization_sweep [config.toml]` (default: the embedded quickstart). The hidden
//! widths are `CRYPTOTL_SWEEP_HIDDEN` (comma-separated, default 16,32,64).

use cryptotl::config::{Calibration, RunConfig};
use cryptotl::he::quant;
use cryptotl::pipeline;

fn main() -> anyhow::Result<()> {
    let path = std::env::args().nth(1);
    let base = RunConfig::load_or_quickstart(path.as_deref().map(std::path::Path::new), &[])?;
    cryptotl::progress::hide();
    let data = pipeline::prepare_data(&base)?;
    let (source, summary) = pipeline::load_source(&base)?;
    println!("| hidden | calibration | input bits | lookup bits | float val. acc. | quantized val. acc. | accumulators out of range |");
    println!("|---:|---|---:|---:|---:|---:|---:|");
    let widths: Vec<usize> = std::env::var("CRYPTOTL_SWEEP_HIDDEN")
        .unwrap_or_else(|_| "16,32,64".into())
        .split(',')
        .map(|w| w.trim().parse())
        .collect::<Result<_, _>>()?;
    for hidden in widths {
        let mut cfg = base.clone();
        cfg.lower.hidden = hidden;
        let lower = pipeline::pretrain(&cfg, &source, &summary)?;
        let (_, client) = pipeline::client_features(&cfg, &data.target)?;
        let source_features = lower.features.transform(&source.train.texts)?;
        let float = client.map(|x| pipeline::lower_forward(&lower.net, x))?;
        let float_acc = pipeline::train_head(&cfg, &float, "float")?.trained.kept_validation_accuracy().unwrap_or(f64::NAN);
        for (calibration, input_bits, lookup_bits) in [Calibration::Source, Calibration::InputBox]
            .into_iter()
            .flat_map(|c| [3, 4].into_iter().flat_map(move |i| [3, 4, 5, 6, 7].into_iter().map(move |l| (c, i, l))))
        {
            {
                let mut he = cfg.he.clone();
                (he.calibration, he.input_bits, he.lookup_bits) = (calibration, input_bits, lookup_bits);
                let program = quant::compile(&lower.net, source_features.view(), &he)?;
                let wraps = std::cell::Cell::new(0);
                let quantized = client.map(|x| {
                    let (y, w) = quant::clear_forward(&program, x.view())?;
                    wraps.set(wraps.get() + w);
                    Ok(y)
                })?;
                let acc = pipeline::train_head(&cfg, &quantized, "quantized")?.trained.kept_validation_accuracy().unwrap_or(f64::NAN);
                let total = (client.train.nrows() + client.validation.nrows() + client.test.nrows()) * hidden;
                println!("| {hidden} | {calibration:?} | {input_bits} | {lookup_bits} | {float_acc:.3} | {acc:.3} | {:.5} |", wraps.get() as f64 / total as f64);
            }
        }
    }
    Ok(())
}
