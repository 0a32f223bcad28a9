//! A baseline that needs no labels and no server: a measured probe, not a feature of the report.
//!
//! A handful of anchor texts per class, written for the task, are embedded by the client's own MiniLM; a text is
//! called positive when its embedding lies nearer the positive anchors' mean than the negative ones' (the sign of
//! `x · (mean_pos - mean_neg)`, no threshold fitted). No label of the target is used except to score the rule, and
//! it is scored on the **non-test** rows of the config's split (training and validation), never the test split.
//!
//! `cargo run --release --example anchor_baseline [config.toml]` (default: the embedded quickstart; needs the model,
//! `python3 datasets/fetch_model.py`). `CRYPTOTL_SEEDS=42,1,2` scores the splits of several seeds (default: the
//! config's); `CRYPTOTL_ANCHORS=file` reads the anchors from a file of `label<TAB>text` lines (label 1 or 0) instead
//! of the eight movie-review sentences below, which were written once, before any data was looked at. The figures
//! and what they imply are in docs/results.md ("A baseline that needs no labels and no server").

use cryptotl::config::RunConfig;
use cryptotl::features::{FeaturePipeline, Featurizer};
use cryptotl::pipeline;

/// The default anchors: (label, text).
const MOVIE_ANCHORS: [(u8, &str); 8] = [
    (1, "This movie is great."),
    (1, "I loved this film, it was wonderful."),
    (1, "A brilliant, moving and beautifully acted picture."),
    (1, "The best movie I have seen in years."),
    (0, "This movie is terrible."),
    (0, "I hated this film, it was awful."),
    (0, "A boring, badly acted and poorly written picture."),
    (0, "The worst movie I have seen in years."),
];

/// Anchors from a `label<TAB>text` file.
fn read_anchors(path: &str) -> anyhow::Result<Vec<(u8, String)>> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
    let anchors: Vec<(u8, String)> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, line)| match line.split_once('\t') {
            Some(("1", t)) => Ok((1, t.to_string())),
            Some(("0", t)) => Ok((0, t.to_string())),
            _ => Err(anyhow::anyhow!("{path}: line {}: want `1<TAB>text` or `0<TAB>text`", i + 1)),
        })
        .collect::<anyhow::Result<_>>()?;
    anyhow::ensure!((0..2).all(|c| anchors.iter().any(|a| a.0 == c)), "{path}: needs at least one anchor of each class");
    Ok(anchors)
}

fn main() -> anyhow::Result<()> {
    let path = std::env::args().nth(1);
    let base = RunConfig::load_or_quickstart(path.as_deref().map(std::path::Path::new), &[])?;
    anyhow::ensure!(base.features.kind == cryptotl::config::FeatureKind::Minilm, "the anchors are embedded by MiniLM: set features.kind = \"minilm\"");
    let anchors = match std::env::var("CRYPTOTL_ANCHORS") {
        Ok(p) => read_anchors(&p)?,
        Err(_) => MOVIE_ANCHORS.iter().map(|&(l, t)| (l, t.to_string())).collect(),
    };
    let seeds: Vec<u64> = match std::env::var("CRYPTOTL_SEEDS") {
        Ok(s) => s.split(',').map(|v| v.trim().parse()).collect::<Result<_, _>>()?,
        Err(_) => vec![base.seed],
    };
    cryptotl::progress::hide();
    // MiniLM's own output (L2-normalised), without the client's scaler: the featurizer of a pipeline fitted on nothing.
    let minilm = FeaturePipeline::data_independent(&base.features)?.featurizer;
    let texts: Vec<String> = anchors.iter().map(|a| a.1.clone()).collect();
    let embedded = minilm.transform(&texts)?;
    // The direction from the negative anchors' mean to the positive ones'.
    let mean = |class: u8| {
        let rows: Vec<usize> = (0..anchors.len()).filter(|&i| anchors[i].0 == class).collect();
        embedded.select(ndarray::Axis(0), &rows).mean_axis(ndarray::Axis(0)).expect("each class has an anchor")
    };
    let direction = mean(1) - mean(0);
    println!("{}: zero-shot rule of {} anchors, accuracy on the non-test rows (training + validation)\n", base.name, anchors.len());
    println!("| seed | rows | accuracy |\n|---:|---:|---:|");
    for seed in seeds {
        let cfg = base.edited("seed", |c| c.seed = seed)?;
        let data = pipeline::prepare_data(&cfg)?;
        let (train, validation) = (&data.target.train, &data.target.validation);
        let texts: Vec<String> = train.texts.iter().chain(&validation.texts).cloned().collect();
        let labels: Vec<u8> = train.labels.iter().chain(&validation.labels).copied().collect();
        let scores = minilm.transform(&texts)?.dot(&direction);
        let correct = scores.iter().zip(&labels).filter(|&(&s, &y)| (s > 0.0) == (y == 1)).count();
        println!("| {seed} | {} | {:.3} |", labels.len(), correct as f64 / labels.len() as f64);
    }
    Ok(())
}
