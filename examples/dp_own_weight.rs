//! How the default weight of the client's own features in a DP-SGD head was chosen (`[privacy] own_weight`,
//! `config::dp_own_weight`): the private `transfer+own` head's accuracy at every learning-curve size for several
//! fixed weights, scored on the **validation split** (never the test split), on the plaintext lower network.
//!
//! `cargo run --release --example dp_own_weight [config.toml]` (default: the embedded quickstart). Settings from the
//! environment: `CRYPTOTL_EPSILON` (default 1), `CRYPTOTL_OWN_WEIGHTS` (comma-separated, default 0,0.1,0.316,1,3.16),
//! `CRYPTOTL_DRAWS` (default 10).

use cryptotl::config::RunConfig;
use cryptotl::pipeline;

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.into())
}

/// One table row's cells: a method's mean ± std at every size.
fn row(curves: &cryptotl::curve::LearningCurves, method: &str) -> String {
    let cells: Vec<String> = curves.sizes.iter().map(|&s| curves.point(method, s).map_or("—".into(), |p| format!("{:.3} ± {:.3}", p.mean, p.std))).collect();
    cells.join(" | ")
}

fn main() -> anyhow::Result<()> {
    let path = std::env::args().nth(1);
    let epsilon: f64 = env_or("CRYPTOTL_EPSILON", "1").parse()?;
    let draws = env_or("CRYPTOTL_DRAWS", "10");
    let weights: Vec<f64> = env_or("CRYPTOTL_OWN_WEIGHTS", "0,0.1,0.316,1,3.16").split(',').map(|w| w.trim().parse()).collect::<Result<_, _>>()?;
    // The plaintext lower network, the head's inputs as the config says, DP at ε; the non-private heads at a fixed C
    // (only the DP rows are read here).
    let overrides: Vec<String> =
        vec!["he.enabled=false".into(), format!("privacy.target_epsilon={epsilon}"), format!("curve.draws={draws}"), "head.c=1".into(), "curve.selection=\"validation_split\"".into()];
    let base = RunConfig::load_or_quickstart(path.as_deref().map(std::path::Path::new), &overrides)?;
    cryptotl::progress::hide();
    let data = pipeline::prepare_data(&base)?;
    let lower = pipeline::server_lower_network(&base)?;
    let (pipe, own) = pipeline::client_features(&base, &data.target)?;
    let (transferred, _) = pipeline::transfer(&base, &lower, &pipeline::TransferInput::new(&base, &pipe, &data.target, &own)?)?;
    let references = pipeline::dp_references(&base, Some(&lower), transferred.train.ncols(), own.train.ncols());
    // Scored on the validation split: the test split stands in for it.
    let on_validation = |fs: &pipeline::FeatureSplit| pipeline::FeatureSplit { test: fs.validation.clone(), test_y: fs.validation_y.clone(), ..fs.clone() };
    let (transferred, own) = (on_validation(&transferred), on_validation(&own));
    println!("{}: private `{}` head at ε = {epsilon}, validation accuracy, mean ± std over {draws} draws\n", base.name, base.head.inputs.name());
    // DP on the raw embeddings does not read the weight: its row is the first weight's.
    let mut raw_row = None;
    for &w in &weights {
        let cfg = base.edited("own weight", |c| {
            if let Some(p) = c.privacy.as_mut() {
                p.own_weight = Some(w);
            }
        })?;
        let curves = cryptotl::curve::learning_curves(&cfg, &transferred, &own, None, &references)?;
        if raw_row.is_none() {
            println!("| own weight | {} |", curves.sizes.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(" | "));
            println!("|---:|{}", "---:|".repeat(curves.sizes.len()));
            // The noise on the mean clipped gradient, per coordinate, in units of the clipping norm: σ / n.
            let privacy = cfg.client_privacy().expect("[privacy] is set above");
            let noise: Vec<String> = curves
                .sizes
                .iter()
                .map(|&n| cryptotl::privacy::plan::plan(privacy, &cfg.head_training, n).map(|p| format!("{:.3}", p.noise_per_example())))
                .collect::<Result<_, _>>()?;
            println!("| σ / n | {} |", noise.join(" | "));
            raw_row = Some(row(&curves, "raw_features_dp"));
        }
        println!("| {w} | {} |", row(&curves, "transfer_dp"));
    }
    if let Some(row) = raw_row {
        println!("| raw embeddings (DP) | {row} |");
    }
    Ok(())
}
