//! Learning curves: how each head does with fewer labels. Once the target's samples have gone through the
//! (encrypted) lower network, the heads are trained again on seeded, stratified subsets of the training split of
//! sizes 16, 32, 64, ... up to all of it, several draws each, and scored on the test split. No extra encryption is
//! needed: the subsets reuse the decrypted outputs.
//!
//! A point below the full size stands for a client that has only that many labelled examples, so its linear heads
//! (and the bag-of-words baseline) choose their C by stratified cross-validation on the subset itself, and an MLP
//! head stops early on one held-out fold of it (`[curve] selection = "cross_validation"`, the default); the
//! full-size point chooses on the validation split as the run's heads do.
//!
//! Methods: `transfer` (the configured head on its configured inputs), `raw_features` (the same head on the
//! client's own scaled features), `bag_of_words` (the TF-IDF logistic-regression baseline); with `[privacy]` also
//! `transfer_dp` and `raw_features_dp`, trained by DP-SGD at the configured ε for each subset's size (σ is
//! calibrated per size, so every point spends the configured budget on its own subset).
//!
//! ```
//! let sizes = cryptotl::curve::default_sizes(300);
//! assert_eq!(sizes, vec![16, 32, 64, 128, 256, 300]);
//! let y = [0u8, 1, 0, 1, 0, 0, 1, 0];
//! let idx = cryptotl::curve::stratified_subset(&y, 4, 7);
//! assert_eq!(idx.len(), 4);
//! assert!(idx.iter().any(|&i| y[i] == 1) && idx.iter().any(|&i| y[i] == 0));
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::config::{CurveSelection, RunConfig};
use crate::error::{Error, Result};
use crate::pipeline::{BagOfWords, FeatureSplit, HeadSelection};


/// Subset sizes 16, 32, 64, ... doubling below `n`, then `n` itself.
pub fn default_sizes(n: usize) -> Vec<usize> {
    let mut sizes = Vec::new();
    let mut s = 16;
    while s < n {
        sizes.push(s);
        s *= 2;
    }
    sizes.push(n);
    sizes
}

/// `size` indices of `y`, drawn without replacement, stratified (each class in proportion, at least one of each
/// when both exist), seeded.
pub fn stratified_subset(y: &[u8], size: usize, seed: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let size = size.min(y.len());
    let mut pos: Vec<usize> = (0..y.len()).filter(|&i| y[i] == 1).collect();
    let mut neg: Vec<usize> = (0..y.len()).filter(|&i| y[i] != 1).collect();
    pos.shuffle(&mut rng);
    neg.shuffle(&mut rng);
    let mut n_pos = ((size as f64) * pos.len() as f64 / y.len().max(1) as f64).round() as usize;
    if !pos.is_empty() && !neg.is_empty() && size >= 2 {
        n_pos = n_pos.clamp(1, size - 1);
    }
    let n_pos = n_pos.min(pos.len()).max(size.saturating_sub(neg.len()));
    let mut idx: Vec<usize> = pos[..n_pos].iter().chain(&neg[..size - n_pos]).copied().collect();
    idx.sort_unstable();
    idx
}

/// One method at one size: the test accuracy of every draw.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CurvePoint {
    /// Method id (`transfer`, `raw_features`, `bag_of_words`, `transfer_dp`, `raw_features_dp`).
    pub method: String,
    /// Labelled training examples.
    pub size: usize,
    /// Test accuracy per draw.
    pub accuracies: Vec<f64>,
    /// Mean over draws.
    pub mean: f64,
    /// Standard deviation over draws (0 with one draw, and at the full size, where every draw is the same set).
    pub std: f64,
    /// Per test example, in the test split's order, how many of the draws classified it correctly: what the
    /// test split's own sampling error of a [`Margin`] is computed from. Not kept in `report.json` (its
    /// [`CurveMargin`]s keep that error); empty in curves read back from it.
    #[serde(skip)]
    pub correct_draws: Vec<u32>,
}

impl CurvePoint {
    /// The table's cell: `mean ± std`, or the one value when every draw scored the same (the full size, whose draws
    /// are all the whole training split).
    fn cell(&self) -> String {
        if self.accuracies.windows(2).all(|w| w[0] == w[1]) { format!("{:.3}", self.mean) } else { format!("{:.3} ± {:.3}", self.mean, self.std) }
    }
}

/// The learning curves of a run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LearningCurves {
    /// Run name.
    pub name: String,
    /// Subset sizes.
    pub sizes: Vec<usize>,
    /// Draws per size.
    pub draws: usize,
    /// Methods, in table order.
    pub methods: Vec<String>,
    /// What each method is.
    pub descriptions: Vec<(String, String)>,
    /// Every (method, size) point.
    pub points: Vec<CurvePoint>,
    /// Where the transferred features came from (`encrypted` or `plaintext`).
    pub path: String,
    /// The remote server whose network made them (`[he] server`); `None`: this process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// How the heads below the full size chose their C (`[curve] selection`: `cross_validation` on each subset's
    /// own labels, or `validation_split`); the full size chooses on the validation split. Empty in reports written
    /// before it was recorded (they chose on the validation split).
    #[serde(default)]
    pub selection: String,
    /// The margins the table shows ([`Self::margin`]), at every size: the transfer head over the raw-feature head,
    /// and the DP pair when there is one. Empty in reports written before they were recorded.
    #[serde(default)]
    pub margins: Vec<CurveMargin>,
    /// For `cryptotl curve` in one process: the target's texts among the server's source texts
    /// ([`crate::overlap`]). A run's curves carry none (its report has the check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_overlap: Option<crate::overlap::OverlapCheck>,
}

/// One margin of the table, as `report.json` records it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CurveMargin {
    /// The method above (`transfer`, `transfer_dp`).
    pub method: String,
    /// The method below (`raw_features`, `raw_features_dp`).
    pub baseline: String,
    /// Labelled training examples.
    pub size: usize,
    /// [`Margin::mean`].
    pub mean: f64,
    /// [`Margin::std_error`].
    pub std_error: f64,
    /// [`Margin::test_std_error`]; absent in reports written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_std_error: Option<f64>,
}

/// One head fitted in one draw: its method, the subset's size, its test accuracy and which test examples it got
/// right.
type Fit = (String, usize, f64, Vec<bool>);

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// The mean of `v` (not empty) and its standard error: the sample standard deviation over √(its length); 0 for
/// one value.
fn mean_and_std_error(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let std_error = if v.len() < 2 { 0.0 } else { (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) / n).sqrt() };
    (mean, std_error)
}

/// Where the heads of a point of `size` examples (of `n`) choose their C: as `[curve] selection` says below the
/// full size; on the validation split at the full size, as the run's own heads do.
fn point_selection(cfg: &RunConfig, size: usize, n: usize, seed: u64) -> HeadSelection {
    match cfg.curve.selection {
        CurveSelection::CrossValidation if size < n => HeadSelection::CrossValidation { folds: cfg.curve.folds, seed },
        _ => HeadSelection::ValidationSplit,
    }
}

fn subset_split(fs: &FeatureSplit, idx: &[usize]) -> FeatureSplit {
    FeatureSplit {
        train: fs.train.select(ndarray::Axis(0), idx),
        train_y: idx.iter().map(|&i| fs.train_y[i]).collect(),
        validation: fs.validation.clone(),
        validation_y: fs.validation_y.clone(),
        test: fs.test.clone(),
        test_y: fs.test_y.clone(),
        own_columns: fs.own_columns,
    }
}

/// Train every method on seeded subsets of the training split (sizes from `curve.sizes` or [`default_sizes`],
/// `curve.draws` draws each) and score each on the test split. `transferred` are the decrypted outputs, `own` the
/// client's scaled features, `bow` the bag-of-words rows. The transfer head's inputs (`head.inputs`) are built
/// from each subset alone, so a cross-fitted bag-of-words score at 16 labels is fitted on those 16. DP heads centre
/// their inputs on `dp_references` ([`crate::pipeline::DpReferences`]).
pub fn learning_curves(cfg: &RunConfig, transferred: &FeatureSplit, own: &FeatureSplit, bow: Option<&BagOfWords>, dp_references: &crate::pipeline::DpReferences) -> Result<LearningCurves> {
    let n = transferred.train.nrows();
    if own.train_y != transferred.train_y || bow.is_some_and(|b| b.train_y != transferred.train_y) {
        return Err(Error::Features("learning curves: the feature sets are of different training examples".into()));
    }
    if cfg.head.inputs == crate::config::HeadInputs::TransferPlusBow && bow.is_none() {
        return Err(Error::Internal("learning curves of a \"transfer+bow\" head without the bag-of-words rows".into()));
    }
    let above: Vec<usize> = cfg.curve.sizes.iter().flatten().copied().filter(|&s| s > n).collect();
    if !above.is_empty() {
        tracing::warn!(sizes = ?above, training_examples = n, "curve.sizes above the training split's size are taken as all of it");
    }
    let mut sizes: Vec<usize> = cfg.curve.sizes.clone().unwrap_or_else(|| default_sizes(n)).into_iter().map(|s| s.min(n)).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let draws = cfg.curve.draws;
    let privacy = cfg.client_privacy();
    // One DP-SGD schedule per size: σ calibrated so that training on that many examples spends the configured ε.
    let plans: Vec<Option<crate::privacy::plan::DpPlan>> = sizes
        .iter()
        .map(|&s| privacy.map(|p| crate::privacy::plan::plan(p, &cfg.head_training, s)).transpose())
        .collect::<Result<_>>()?;
    let mut methods = vec!["transfer".to_string(), "raw_features".to_string()];
    let head = crate::pipeline::head_name(cfg);
    let mut descriptions = vec![
        ("transfer".to_string(), format!("{head} head on the {} of the frozen lower network ({})", if cfg.he.enabled { "decrypted outputs" } else { "plaintext outputs" }, cfg.head.inputs.name())),
        ("raw_features".to_string(), format!("the same head on the client's own scaled {} features (no transfer)", cfg.features.kind)),
    ];
    if bow.is_some() {
        methods.push("bag_of_words".into());
        descriptions.push(("bag_of_words".into(), "logistic regression on TF-IDF word 1-2-grams (2^18 buckets), target only".into()));
    }
    if let Some(p) = privacy {
        methods.push("transfer_dp".into());
        methods.push("raw_features_dp".into());
        let eps = p.target_epsilon.map_or_else(|| format!("σ = {:?}", p.noise_multiplier), |e| format!("ε = {e}"));
        descriptions.push(("transfer_dp".into(), format!("`transfer` trained with DP-SGD at {eps} on each subset")));
        descriptions.push(("raw_features_dp".into(), format!("`raw_features` trained with DP-SGD at {eps} on each subset")));
    }
    let jobs: Vec<(usize, usize)> = (0..sizes.len()).flat_map(|s| (0..draws).map(move |d| (s, d))).collect();
    let bar = crate::progress::bar(jobs.len() as u64, "learning curves");
    let results: Vec<Vec<Fit>> = jobs
        .par_iter()
        .map(|&(si, d)| -> Result<Vec<Fit>> {
            let size = sizes[si];
            let seed = crate::seeds::stream(cfg.seed, crate::seeds::CURVE_SUBSETS) ^ ((size as u64) << 20) ^ d as u64;
            let idx = stratified_subset(&transferred.train_y, size, seed);
            let selection = point_selection(cfg, size, n, crate::seeds::stream(cfg.seed, crate::seeds::CURVE_FOLDS) ^ ((size as u64) << 20) ^ d as u64);
            let mut out = Vec::new();
            let sub_o = subset_split(own, &idx);
            let sub_bow = bow.map(|b| b.subset(&idx));
            let sub_t = crate::pipeline::head_inputs(cfg, &subset_split(transferred, &idx), &sub_o, sub_bow.as_ref())?;
            // At the full size every draw is the whole training split, so the heads without DP (deterministic) are
            // fitted by the first draw alone and their accuracy stands for every draw.
            let scored = |h: crate::pipeline::TrainedHead<_>| (h.test.accuracy, h.test_correct);
            if size < n || d == 0 {
                let (a, c) = scored(crate::pipeline::train_head_selecting(cfg, &sub_t, "curve transfer", selection)?);
                out.push(("transfer".into(), size, a, c));
                let (a, c) = scored(crate::pipeline::train_head_selecting(cfg, &sub_o, "curve raw", selection)?);
                out.push(("raw_features".into(), size, a, c));
                if let Some(b) = &sub_bow {
                    let by = selection.with_validation(crate::linear::Design::Sparse { rows: &b.validation, dim: crate::bow::BAG_OF_WORDS_DIM }, &b.validation_y);
                    let p = b.test_probabilities_selecting(by)?.0;
                    out.push(("bag_of_words".into(), size, crate::eval::Metrics::from_probabilities(&p, &b.test_y).accuracy, crate::eval::correct(&p, &b.test_y)));
                }
            }
            if let (Some(plan), Some(p)) = (&plans[si], privacy) {
                let mut rng = crate::privacy::dpsgd::PrivacyRng::new(p.insecure_seed.map(|s| s ^ seed));
                let (a, c) = scored(crate::pipeline::train_head_private(cfg, &sub_t, &dp_references.transferred, plan, &mut rng)?.0);
                out.push(("transfer_dp".into(), size, a, c));
                let (a, c) = scored(crate::pipeline::train_head_private(cfg, &sub_o, &dp_references.own, plan, &mut rng)?.0);
                out.push(("raw_features_dp".into(), size, a, c));
            }
            bar.inc(1);
            Ok(out)
        })
        .collect::<Result<_>>()?;
    bar.finish_and_clear();
    let mut points = Vec::new();
    for m in &methods {
        for &size in &sizes {
            let fits: Vec<&Fit> = results.iter().flatten().filter(|(mm, s, _, _)| mm == m && *s == size).collect();
            // Fitted once at the full size (above): the same for every draw.
            let repeat = if fits.len() == 1 { draws } else { 1 };
            let accuracies: Vec<f64> = fits.iter().flat_map(|f| std::iter::repeat_n(f.2, repeat)).collect();
            let mut correct_draws = vec![0u32; fits.first().map_or(0, |f| f.3.len())];
            for f in &fits {
                for (count, &right) in correct_draws.iter_mut().zip(&f.3) {
                    *count += repeat as u32 * u32::from(right);
                }
            }
            let (mean, std) = mean_std(&accuracies);
            points.push(CurvePoint { method: m.clone(), size, accuracies, mean, std, correct_draws });
        }
    }
    let mut curves = LearningCurves {
        name: cfg.name.clone(),
        sizes,
        draws,
        methods,
        descriptions,
        points,
        path: if cfg.he.enabled { "encrypted".into() } else { "plaintext".into() },
        server: crate::pipeline::remote_server(cfg)?,
        selection: cfg.curve.selection.name().into(),
        margins: Vec::new(),
        source_overlap: None,
    };
    curves.margins = curves
        .margin_columns()
        .into_iter()
        .flat_map(|(a, b)| curves.sizes.iter().map(move |&size| (a, b, size)))
        .filter_map(|(a, b, size)| curves.margin(a, b, size).map(|m| CurveMargin { method: a.into(), baseline: b.into(), size, mean: m.mean, std_error: m.std_error, test_std_error: m.test_std_error }))
        .collect();
    Ok(curves)
}

/// How far one method's test accuracy is above another's at one size, paired by draw: in every draw both heads
/// train on the same subset, so the per-draw differences cancel the luck of the subset that moves both.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Margin {
    /// Mean over draws of the difference in test accuracy (a fraction: 0.05 is 5 points).
    pub mean: f64,
    /// Standard error of that mean over the draws (sample standard deviation of the differences over the square
    /// root of their count); 0 where every draw is the same subset (the full size) or there is one draw. It says
    /// how much other draws of the training subsets would move the margin, on this test split.
    pub std_error: f64,
    /// Standard error of that mean over the test split's examples: the sample standard deviation, over test
    /// examples, of the difference between the fractions of draws that classify each correctly, over the square
    /// root of their count. It says how much another test split of the same size, from the same data, would move
    /// the margin, which [`Self::std_error`] does not see: on a test split of 200 examples it is a point or two
    /// where `std_error` is a few tenths. `None` when the points do not hold per-example counts (read back
    /// from `report.json`, whose [`CurveMargin`]s keep it).
    pub test_std_error: Option<f64>,
}

impl LearningCurves {
    /// How many test examples the points were scored on, when they hold per-example counts.
    fn test_examples(&self) -> Option<usize> {
        self.points.first().map(|p| p.correct_draws.len()).filter(|&n| n > 0)
    }

    /// The point of `method` at `size`.
    pub fn point(&self, method: &str, size: usize) -> Option<&CurvePoint> {
        self.points.iter().find(|p| p.method == method && p.size == size)
    }

    /// The margin of `method` over `baseline` at `size`, paired by draw ([`Margin`]); `None` when either has no
    /// point there or their draws differ in number.
    ///
    /// ```
    /// use cryptotl::curve::{CurvePoint, LearningCurves};
    /// let point = |method: &str, accuracies: Vec<f64>, correct_draws: Vec<u32>| CurvePoint { method: method.into(), size: 64, mean: 0.0, std: 0.0, accuracies, correct_draws };
    /// let curves = LearningCurves {
    ///     name: "x".into(), sizes: vec![64], draws: 3, methods: vec!["transfer".into(), "raw_features".into()],
    ///     descriptions: vec![], path: "plaintext".into(), server: None, selection: "cross_validation".into(), margins: vec![],
    ///     source_overlap: None,
    ///     points: vec![point("transfer", vec![0.90, 0.88, 0.92], vec![]), point("raw_features", vec![0.85, 0.85, 0.86], vec![])],
    /// };
    /// let m = curves.margin("transfer", "raw_features", 64).unwrap();
    /// assert!((m.mean - 0.0467).abs() < 1e-4);              // differences 0.05, 0.03, 0.06
    /// assert!((m.std_error - 0.00882).abs() < 1e-4);         // their sample std 0.0153 over √3
    /// assert_eq!(m.test_std_error, None);                    // no per-example counts
    /// assert!(curves.margin("transfer", "bag_of_words", 64).is_none());
    ///
    /// // Two draws, a test split of four: per example, how many draws got it right.
    /// let curves = LearningCurves {
    ///     draws: 2,
    ///     points: vec![point("transfer", vec![1.0, 0.5], vec![2, 2, 1, 1]), point("raw_features", vec![0.5, 0.5], vec![2, 0, 1, 1])],
    ///     ..curves
    /// };
    /// let m = curves.margin("transfer", "raw_features", 64).unwrap();
    /// assert!((m.mean - 0.25).abs() < 1e-12);               // per example 0, 1, 0, 0: their mean
    /// assert!((m.test_std_error.unwrap() - 0.25).abs() < 1e-12); // their sample std 0.5 over √4
    /// ```
    pub fn margin(&self, method: &str, baseline: &str, size: usize) -> Option<Margin> {
        let (a, b) = (self.point(method, size)?, self.point(baseline, size)?);
        if a.accuracies.len() != b.accuracies.len() || a.accuracies.is_empty() {
            return None;
        }
        let d: Vec<f64> = a.accuracies.iter().zip(&b.accuracies).map(|(x, y)| x - y).collect();
        let (mean, std_error) = mean_and_std_error(&d);
        let examples = a.correct_draws.len();
        let test_std_error = (examples >= 2 && b.correct_draws.len() == examples).then(|| {
            let draws = a.accuracies.len() as f64;
            let e: Vec<f64> = a.correct_draws.iter().zip(&b.correct_draws).map(|(&x, &y)| (f64::from(x) - f64::from(y)) / draws).collect();
            mean_and_std_error(&e).1
        });
        Some(Margin { mean, std_error, test_std_error })
    }

    /// The margins the table shows: the transfer head over the raw-feature head, without DP and with it.
    fn margin_columns(&self) -> Vec<(&'static str, &'static str)> {
        [("transfer", "raw_features"), ("transfer_dp", "raw_features_dp")]
            .into_iter()
            .filter(|(a, b)| self.methods.iter().any(|m| m == a) && self.methods.iter().any(|m| m == b))
            .collect()
    }

    /// The table: one row per size, one column per method (mean ± std of the test accuracy over the draws), then
    /// the transfer head's [`Self::margin`] over the raw-feature head (without DP, and with it when the curves have DP
    /// heads) in points ± its standard error.
    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let server = self.server.as_ref().map_or(String::new(), |url| format!(", through the server at {url}"));
        let _ = writeln!(s, "Test accuracy, mean ± std over {} seeded stratified draws of the training split per size ({} lower network{server}).", self.draws, self.path);
        let _ = writeln!(s, "A size whose draws all score the same shows that one value: the full size, where every draw is the whole training split, and a head that predicts one class every time.");
        let _ = writeln!(s, "{}\n", match self.selection.as_str() {
            "cross_validation" => "Below the full size every linear head chooses its C by cross-validation on its own subset, and an MLP head stops early on a held-out fold of it (a client with that many labels has no others); the full size chooses on the validation split, as the run does.",
            _ => "Every linear head chooses its C on the whole validation split, at every size.",
        });
        let margins = self.margin_columns();
        let headers: Vec<String> = self.methods.iter().cloned().chain(margins.iter().map(|(a, b)| format!("{a} − {b}, points"))).collect();
        let _ = writeln!(s, "| labelled examples | {} |", headers.join(" | "));
        let _ = writeln!(s, "|---:|{}", "---:|".repeat(headers.len()));
        for &size in &self.sizes {
            let mut cells: Vec<String> = self.methods.iter().map(|m| self.point(m, size).map_or("—".into(), CurvePoint::cell)).collect();
            for (a, b) in &margins {
                cells.push(self.margin(a, b, size).map_or("—".into(), |m| {
                    // A curve read back from report.json has no per-example counts: its recorded margin has the error.
                    let test = m.test_std_error.or_else(|| self.margins.iter().find(|r| r.method == *a && r.baseline == *b && r.size == size).and_then(|r| r.test_std_error));
                    let draws = if m.std_error > 0.0 { format!("{:+.1} ± {:.1}", 100.0 * m.mean, 100.0 * m.std_error) } else { format!("{:+.1}", 100.0 * m.mean) };
                    match test {
                        Some(t) => format!("{draws} (± {:.1})", 100.0 * t),
                        None => draws,
                    }
                }));
            }
            let _ = writeln!(s, "| {size} | {} |", cells.join(" | "));
        }
        let _ = writeln!(s);
        for (m, d) in &self.descriptions {
            let _ = writeln!(s, "- `{m}`: {d}");
        }
        for (a, b) in &margins {
            let _ = writeln!(s, "- `{a} − {b}`: how many points `{a}` is above `{b}`, the mean of the per-draw differences (both train on the same subset in each draw) ± its standard error over the draws; in parentheses, its standard error over the test split's{} examples (how far another test split of that size would move it)", self.test_examples().map_or(String::new(), |n| format!(" {n}")));
        }
        if let Some(o) = &self.source_overlap {
            let _ = writeln!(s, "\n{}", o.describe());
        }
        s
    }

    /// Write `curve.json`, `curve.md` and `curve.svg` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let json = dir.join("curve.json");
        crate::atomic::write(&json, &serde_json::to_vec_pretty(self).expect("curves serialise"))?;
        let md = dir.join("curve.md");
        crate::atomic::write(&md, format!("# Learning curves: `{}`\n\n![learning curves](curve.svg)\n\n{}", self.name, self.to_markdown()).as_bytes())?;
        let svg = dir.join("curve.svg");
        self.chart(&svg)?;
        Ok(vec![json, md, svg])
    }

    /// The chart: mean test accuracy (whiskers ± 1 std) against the number of labelled examples (log scale), one
    /// line per method.
    pub fn chart(&self, path: &Path) -> Result<()> {
        use plotters::prelude::*;
        let lo = self.points.iter().map(|p| p.mean - p.std).fold(1.0f64, f64::min);
        let hi = self.points.iter().map(|p| p.mean + p.std).fold(0.0f64, f64::max);
        let (ylo, yhi) = (((lo - 0.03) * 20.0).floor() / 20.0, ((hi + 0.03) * 20.0).ceil() / 20.0);
        let (xlo, xhi) = (self.sizes.first().copied().unwrap_or(1) as f64, self.sizes.last().copied().unwrap_or(2) as f64);
        let draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
            let root = SVGBackend::new(path, (760, 460)).into_drawing_area();
            root.fill(&WHITE)?;
            let mut chart = ChartBuilder::on(&root)
                .caption(format!("{}: test accuracy vs labelled examples ({})", self.name, self.path), ("sans-serif", 20))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(56)
                .build_cartesian_2d((xlo / 1.2..xhi * 1.2).log_scale(), ylo.max(0.0)..yhi.min(1.0))?;
            chart
                .configure_mesh()
                .x_labels(12)
                .x_label_formatter(&|x| format!("{x:.0}"))
                .x_desc("labelled target examples (log scale)")
                .y_desc("test accuracy")
                .draw()?;
            const COLORS: [RGBColor; 6] = [RGBColor(31, 119, 180), RGBColor(255, 127, 14), RGBColor(44, 160, 44), RGBColor(214, 39, 40), RGBColor(148, 103, 189), RGBColor(140, 86, 75)];
            for (i, m) in self.methods.iter().enumerate() {
                let color = if m == "bag_of_words" { BLACK.mix(0.55) } else { COLORS[i % COLORS.len()].to_rgba() };
                let line: Vec<&CurvePoint> = self.sizes.iter().filter_map(|&s| self.point(m, s)).collect();
                chart
                    .draw_series(LineSeries::new(line.iter().map(|p| (p.size as f64, p.mean)), color.stroke_width(2)))?
                    .label(m.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
                chart.draw_series(line.iter().map(|p| Circle::new((p.size as f64, p.mean), 4, color.filled())))?;
                chart.draw_series(line.iter().filter(|p| p.std > 0.0).map(|p| PathElement::new(vec![(p.size as f64, p.mean - p.std), (p.size as f64, p.mean + p.std)], color.stroke_width(1))))?;
            }
            chart.configure_series_labels().position(SeriesLabelPosition::LowerRight).background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
            root.present()?;
            Ok(())
        };
        draw().map_err(|e| Error::artifact(path, format!("cannot draw the chart: {e}")))
    }
}
