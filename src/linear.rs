//! L2-regularised logistic regression fitted exactly (L-BFGS, `argmin`): the linear probe on dense features
//! (`head.kind = "linear"`) and the bag-of-words baseline on sparse TF-IDF rows.
//!
//! The objective is scikit-learn's, `C·Σᵢ log(1 + e^(−sᵢ zᵢ)) + ½‖w‖²` with `zᵢ = xᵢ·w + b` and the bias not
//! penalised, divided by `C·n` so that its scale does not depend on `n`. It is convex; L-BFGS with a Moré-Thuente
//! line search finds its minimum to the gradient tolerance. Dense inputs are standardised first (mean 0, std 1 per
//! column over the training rows) and the standardisation is folded back into the weights, so the result is a plain
//! `x·w + b` on the original inputs.
//!
//! ```
//! use cryptotl::linear::{Design, fit};
//! let x = ndarray::array![[0.0f32, 1.0], [0.1, 0.9], [1.0, 0.0], [0.9, 0.2]];
//! let y = [0u8, 0, 1, 1];
//! let lr = fit(Design::Dense(x.view()), &y, 1.0).unwrap();
//! let p = lr.probabilities(Design::Dense(x.view()));
//! assert!(p[0] < 0.5 && p[2] > 0.5);
//! ```

use argmin::core::{CostFunction, Executor, Gradient, State};
use argmin::solver::linesearch::MoreThuenteLineSearch;
use argmin::solver::quasinewton::LBFGS;
use ndarray::ArrayView2;
use serde::{Deserialize, Serialize};

mod matvec;

use crate::error::{Error, Result};

/// A sparse row: (column, value) pairs, columns unique.
pub type SparseRow = Vec<(u32, f32)>;

/// The rows a model is fitted on or applied to.
#[derive(Debug, Clone, Copy)]
pub enum Design<'a> {
    /// One dense row per example.
    Dense(ArrayView2<'a, f32>),
    /// One sparse row per example, over `dim` columns.
    Sparse {
        /// The rows.
        rows: &'a [SparseRow],
        /// Number of columns.
        dim: usize,
    },
}

impl Design<'_> {
    /// Number of examples.
    pub fn rows(&self) -> usize {
        match self {
            Self::Dense(x) => x.nrows(),
            Self::Sparse { rows, .. } => rows.len(),
        }
    }
    /// Number of columns.
    pub fn dim(&self) -> usize {
        match self {
            Self::Dense(x) => x.ncols(),
            Self::Sparse { dim, .. } => *dim,
        }
    }
    /// `xᵢ·w + b` for every row.
    fn margins(&self, w: &[f64], b: f64) -> Vec<f64> {
        match self {
            Self::Dense(x) => x.rows().into_iter().map(|r| b + r.iter().zip(w).map(|(&v, &wj)| v as f64 * wj).sum::<f64>()).collect(),
            Self::Sparse { rows, .. } => rows.iter().map(|r| b + r.iter().map(|&(j, v)| v as f64 * w[j as usize]).sum::<f64>()).collect(),
        }
    }
}

/// A fitted logistic regression: `P(y = 1 | x) = σ(x·w + b)`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LogisticRegression {
    /// One weight per column, on the original (unstandardised) inputs.
    pub weights: Vec<f32>,
    /// Bias.
    pub bias: f32,
    /// The inverse L2 strength it was fitted with.
    pub c: f64,
    /// L-BFGS iterations run.
    pub iterations: u64,
}

impl LogisticRegression {
    /// log P(y | x) under the model, computed without overflow.
    ///
    /// ```
    /// let lr = cryptotl::linear::LogisticRegression { weights: vec![1.0], bias: 0.0, c: 1.0, iterations: 0 };
    /// let x = ndarray::arr1(&[0.0f32]);
    /// assert!((lr.log_likelihood(x.view(), 1) - 0.5f64.ln()).abs() < 1e-12);
    /// assert!(lr.log_likelihood(ndarray::arr1(&[1e4f32]).view(), 0) < -9e3);
    /// ```
    pub fn log_likelihood(&self, x: ndarray::ArrayView1<'_, f32>, y: u8) -> f64 {
        let z: f64 = x.iter().zip(&self.weights).map(|(&a, &w)| a as f64 * w as f64).sum::<f64>() + self.bias as f64;
        // The cross-entropy the fit minimises, negated: log σ(z) for y = 1, log σ(-z) for y = 0.
        -(softplus(z) - z * y as f64)
    }
}

/// One candidate of [`fit_choosing`]: an inverse L2 strength and, optionally, column weights ([`fit_weighted`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Inverse L2 strength.
    pub c: f64,
    /// Column weights on the standardised inputs (`None`: 1 everywhere).
    pub column_weights: Option<Vec<f64>>,
}

/// Fit every candidate on `x`, `y` and keep the one that scores best on the validation rows `validation`,
/// `validation_y`: the highest accuracy; ties go to the lower validation log-loss, then to the earlier candidate
/// (as scikit-learn's `LogisticRegressionCV` with one held-out split). Returns the model, the index of the candidate
/// chosen and its validation accuracy. A candidate with the same column weights as the one before it starts from
/// that one's solution (list each weighting's Cs in order for a warm-started path). Fails without validation rows, or without both classes among them, since
/// nothing could be chosen on those.
pub fn fit_choosing<'a>(x: Design<'a>, y: &'a [u8], validation: Design<'_>, validation_y: &[u8], candidates: &[Candidate]) -> Result<(LogisticRegression, usize, f64)> {
    if validation.rows() != validation_y.len() {
        return Err(Error::Features(format!("logistic regression: {} validation rows but {} labels", validation.rows(), validation_y.len())));
    }
    if !validation_y.contains(&0) || !validation_y.contains(&1) {
        return Err(Error::Features(format!(
            "choosing C on the validation split needs validation examples of both classes (it has {}); give the head a fixed C (head.c = 1) or a larger validation split",
            validation_y.len()
        )));
    }
    let mut best: Option<(f64, f64, usize, LogisticRegression)> = None;
    let mut path = CandidatePath::default();
    for (k, cand) in candidates.iter().enumerate() {
        let lr = path.fit(x, y, cand)?;
        let z = lr.margins_f64(validation);
        let n = z.len() as f64;
        let accuracy = z.iter().zip(validation_y).filter(|&(&z, &y)| (z >= 0.0) == (y == 1)).count() as f64 / n;
        let loss = z.iter().zip(validation_y).map(|(&z, &y)| softplus(z) - z * y as f64).sum::<f64>() / n;
        if best.as_ref().is_none_or(|(a, l, _, _)| accuracy > *a || (accuracy == *a && loss < *l)) {
            best = Some((accuracy, loss, k, lr));
        }
    }
    let (accuracy, _, k, lr) = best.ok_or_else(|| Error::Features("logistic regression: no candidate to choose from".into()))?;
    Ok((lr, k, accuracy))
}

/// [`fit_choosing`] over the inverse L2 strengths `cs` alone. Returns the model (its `c` is the one chosen) and its
/// validation accuracy.
///
/// ```
/// use cryptotl::linear::{Design, fit_choosing_c};
/// // One informative column and one of noise; the validation rows follow the first.
/// let x = ndarray::arr2(&[[0.0f32, 1.0], [1.0, 0.0], [0.1, 0.0], [0.9, 1.0]]);
/// let v = ndarray::arr2(&[[0.2f32, 1.0], [0.8, 1.0]]);
/// let (lr, acc) = fit_choosing_c(Design::Dense(x.view()), &[0, 1, 0, 1], Design::Dense(v.view()), &[0, 1], &[0.01, 1.0, 100.0]).unwrap();
/// assert_eq!(acc, 1.0);
/// assert!([0.01, 1.0, 100.0].contains(&lr.c));
/// ```
pub fn fit_choosing_c<'a>(x: Design<'a>, y: &'a [u8], validation: Design<'_>, validation_y: &[u8], cs: &[f64]) -> Result<(LogisticRegression, f64)> {
    let candidates: Vec<Candidate> = cs.iter().map(|&c| Candidate { c, column_weights: None }).collect();
    let (lr, _, accuracy) = fit_choosing(x, y, validation, validation_y, &candidates)?;
    Ok((lr, accuracy))
}

/// Where a linear model chooses among its candidates ([`fit_choosing_by`]).
#[derive(Debug, Clone, Copy)]
pub enum Selection<'v> {
    /// On held-out validation rows and their labels ([`fit_choosing`]): a run's heads, whose client holds those
    /// labels too.
    Validation(Design<'v>, &'v [u8]),
    /// By stratified cross-validation on the training rows alone ([`fit_choosing_cv`]): a learning curve's subset,
    /// whose client has no other labels.
    CrossValidation {
        /// Folds (fewer when a class has fewer examples).
        folds: usize,
        /// Seed of the fold assignment.
        seed: u64,
    },
}

/// [`fit_choosing`] or [`fit_choosing_cv`], as `selection` says.
pub fn fit_choosing_by<'a>(x: Design<'a>, y: &'a [u8], selection: Selection<'_>, candidates: &[Candidate]) -> Result<(LogisticRegression, usize, f64)> {
    match selection {
        Selection::Validation(v, vy) => fit_choosing(x, y, v, vy, candidates),
        Selection::CrossValidation { folds, seed } => fit_choosing_cv(x, y, candidates, folds, seed),
    }
}

/// Stratified fold assignment: every row's fold in `0..k`, each class shuffled (seeded) and dealt round-robin,
/// with `k = folds` capped at the smaller class's count, so each fold holds at least one example of each class.
/// Returns `None` when that is below 2 (a class with fewer than 2 examples leaves nothing to hold out).
///
/// ```
/// let y = [0u8, 0, 0, 1, 1, 0, 1, 0];
/// let (fold_of, k) = cryptotl::linear::stratified_folds(&y, 5, 7).unwrap();
/// assert_eq!(k, 3); // three positives
/// for f in 0..k {
///     assert!((0..y.len()).any(|i| fold_of[i] == f && y[i] == 1));
/// }
/// assert!(cryptotl::linear::stratified_folds(&[0, 0, 1], 5, 7).is_none());
/// ```
pub fn stratified_folds(y: &[u8], folds: usize, seed: u64) -> Option<(Vec<usize>, usize)> {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    let mut by_class: [Vec<usize>; 2] = [vec![], vec![]];
    for (i, &l) in y.iter().enumerate() {
        by_class[usize::from(l.min(1))].push(i);
    }
    let k = folds.min(by_class[0].len()).min(by_class[1].len());
    if k < 2 {
        return None;
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut fold_of = vec![0usize; y.len()];
    for members in &mut by_class {
        members.shuffle(&mut rng);
        for (j, &i) in members.iter().enumerate() {
            fold_of[i] = j % k;
        }
    }
    Some((fold_of, k))
}

/// Rows of a [`Design`] taken out of it (a fold), owned.
enum Rows {
    Dense(ndarray::Array2<f32>),
    Sparse(Vec<SparseRow>, usize),
}

impl Rows {
    fn select(x: Design<'_>, idx: &[usize]) -> Self {
        match x {
            Design::Dense(m) => Self::Dense(m.select(ndarray::Axis(0), idx)),
            Design::Sparse { rows, dim } => Self::Sparse(idx.iter().map(|&i| rows[i].clone()).collect(), dim),
        }
    }
    fn view(&self) -> Design<'_> {
        match self {
            Self::Dense(m) => Design::Dense(m.view()),
            Self::Sparse(rows, dim) => Design::Sparse { rows, dim: *dim },
        }
    }
}

/// As [`fit_choosing`], with no validation rows: each candidate is scored by stratified `folds`-fold
/// cross-validation on `x`, `y` themselves ([`stratified_folds`], seeded), the held-out accuracy pooled over the
/// folds (ties: the lower pooled log-loss, then the earlier candidate), and the candidate chosen is fitted again on
/// every row. This is how a client that has only these labelled examples chooses: it has no other labels to
/// validate on (a learning curve's small subsets; Perez, Kiela and Cho, "True Few-Shot Learning with Language
/// Models", 2021). Returns the model, the index of the candidate chosen and its cross-validated accuracy.
///
/// With fewer than 2 examples of a class nothing can be held out, and the candidate nearest to scikit-learn's
/// default (C = 1, column weights all 1 or none) is fitted instead, with accuracy `NaN`.
///
/// ```
/// use cryptotl::linear::{Candidate, Design, fit_choosing_cv};
/// // One informative column and one of noise.
/// let x = ndarray::arr2(&[[0.0f32, 1.0], [1.0, 0.0], [0.1, 0.0], [0.9, 1.0], [0.2, 1.0], [0.8, 0.0], [0.15, 0.5], [0.95, 0.5]]);
/// let y = [0u8, 1, 0, 1, 0, 1, 0, 1];
/// let cands: Vec<Candidate> = [0.01, 1.0, 100.0].iter().map(|&c| Candidate { c, column_weights: None }).collect();
/// let (lr, k, acc) = fit_choosing_cv(Design::Dense(x.view()), &y, &cands, 4, 1).unwrap();
/// assert_eq!(acc, 1.0);
/// assert_eq!(lr.c, cands[k].c);
/// ```
pub fn fit_choosing_cv<'a>(x: Design<'a>, y: &'a [u8], candidates: &[Candidate], folds: usize, seed: u64) -> Result<(LogisticRegression, usize, f64)> {
    if x.rows() != y.len() {
        return Err(Error::Features(format!("logistic regression: {} rows but {} labels", x.rows(), y.len())));
    }
    if candidates.is_empty() {
        return Err(Error::Features("logistic regression: no candidate to choose from".into()));
    }
    let Some((fold_of, k)) = stratified_folds(y, folds, seed) else {
        // Nothing to hold out: scikit-learn's default, C = 1 with every column in.
        let default = candidates
            .iter()
            .enumerate()
            .min_by(|(_, a), (_, b)| {
                let key = |c: &Candidate| (c.column_weights.as_ref().is_some_and(|w| w.iter().any(|&v| v != 1.0)), (c.c.ln()).abs());
                key(a).partial_cmp(&key(b)).unwrap_or(std::cmp::Ordering::Equal)
            })
            .map(|(i, _)| i)
            .unwrap_or(0);
        let cand = &candidates[default];
        return Ok((fit_weighted(x, y, cand.c, cand.column_weights.as_deref())?, default, f64::NAN));
    };
    // Pooled held-out correct counts and log-losses per candidate.
    let mut correct = vec![0usize; candidates.len()];
    let mut loss = vec![0f64; candidates.len()];
    for f in 0..k {
        let (fit_idx, held): (Vec<usize>, Vec<usize>) = (0..y.len()).partition(|&i| fold_of[i] != f);
        let (fit_rows, held_rows) = (Rows::select(x, &fit_idx), Rows::select(x, &held));
        let fit_y: Vec<u8> = fit_idx.iter().map(|&i| y[i]).collect();
        let held_y: Vec<u8> = held.iter().map(|&i| y[i]).collect();
        let mut path = CandidatePath::default();
        for (j, cand) in candidates.iter().enumerate() {
            let lr = path.fit(fit_rows.view(), &fit_y, cand)?;
            for (&z, &t) in lr.margins_f64(held_rows.view()).iter().zip(&held_y) {
                correct[j] += usize::from((z >= 0.0) == (t == 1));
                loss[j] += softplus(z) - z * t as f64;
            }
        }
    }
    let best = (0..candidates.len()).fold(0, |b, j| if correct[j] > correct[b] || (correct[j] == correct[b] && loss[j] < loss[b]) { j } else { b });
    let cand = &candidates[best];
    let lr = fit_weighted(x, y, cand.c, cand.column_weights.as_deref())?;
    Ok((lr, best, correct[best] as f64 / y.len() as f64))
}

/// ln(1 + e^z), stable.
fn softplus(z: f64) -> f64 {
    if z > 0.0 { z + (-z).exp().ln_1p() } else { z.exp().ln_1p() }
}

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 { 1.0 / (1.0 + (-z).exp()) } else { z.exp() / (1.0 + z.exp()) }
}

/// The training rows as the solver reads them. Dense rows are standardised (and column-weighted) once into `f64`,
/// so every evaluation is two matrix-vector products, `zᵢ = x̃ᵢ·w + b` over the rows and `g += X̃ᵀr` over a
/// transposed copy (each a run of contiguous dot products; accumulating `rᵢ x̃ᵢ` row by row took twice as long,
/// a load and a store of `g` per entry), instead of re-standardising each entry per evaluation. Sparse rows are
/// renumbered onto the columns they use ([`CompactRows`]); dense columns whose factor is 0 (weight 0, or constant
/// over the rows) are left out in the same way, since their standardised values are all 0 and their weights stay
/// exactly 0 from the start. Built once per set of rows and column weights ([`CandidatePath`]), whatever the number
/// of Cs fitted on them.
enum SolverRows {
    Dense {
        /// `(x − shift) ∘ scale` over the kept columns, row by row.
        z: ndarray::Array2<f64>,
        /// `z` transposed, in standard (row-major) layout: one row per column of `z`.
        zt: ndarray::Array2<f64>,
        /// Per kept column: the mean subtracted and the factor applied (1/std times the column weight, never 0).
        shift: Vec<f64>,
        scale: Vec<f64>,
        /// The original column of each kept column, ascending.
        columns: Vec<usize>,
        /// The design's columns, kept or not (the fitted model has a weight for each).
        dim: usize,
    },
    Sparse {
        rows: CompactRows,
        /// The design's columns, used by a row or not (the fitted model has a weight for each).
        dim: usize,
    },
}

impl SolverRows {
    /// The solver's weights (the bias comes after them): one per dense column, one per column the sparse rows use.
    fn width(&self) -> usize {
        match self {
            Self::Dense { z, .. } => z.ncols(),
            Self::Sparse { rows, .. } => rows.columns.len(),
        }
    }
}

/// Sparse rows renumbered onto the columns that occur in them, in their order. A column that no training row uses
/// has gradient `l2·wⱼ`, so from the start at 0 its weight stays exactly 0 through every L-BFGS step (the two-loop
/// recursion only mixes in past steps and gradient changes, all 0 there); leaving such columns out of the solver
/// gives the same model while each L-BFGS vector operation runs over the columns the rows use (a few thousand for
/// a few hundred sentences) instead of all 2^18 hash buckets.
struct CompactRows {
    rows: Vec<SparseRow>,
    /// The original column of each solver column, ascending.
    columns: Vec<u32>,
}

impl CompactRows {
    fn new(rows: &[SparseRow]) -> Self {
        let mut columns: Vec<u32> = rows.iter().flatten().map(|&(j, _)| j).collect();
        columns.sort_unstable();
        columns.dedup();
        let index: std::collections::HashMap<u32, u32> = columns.iter().enumerate().map(|(k, &j)| (j, k as u32)).collect();
        let rows = rows.iter().map(|r| r.iter().map(|&(j, v)| (index[&j], v)).collect()).collect();
        Self { rows, columns }
    }
}

struct Problem<'a> {
    rows: &'a SolverRows,
    y: &'a [u8],
    /// `1 / (C n)`: the L2 weight of the objective divided by `C n`.
    l2: f64,
    /// The margins at the last parameters evaluated: the Moré-Thuente line search asks for the cost and then the
    /// gradient at the same point, which then costs one matrix-vector product, not two.
    last: std::cell::RefCell<Option<(Vec<f64>, Vec<f64>)>>,
}

impl Problem<'_> {
    fn split<'p>(&self, p: &'p [f64]) -> (&'p [f64], f64) {
        (&p[..p.len() - 1], p[p.len() - 1])
    }

    /// `zᵢ = x̃ᵢ·w + b` for every training row at parameters `p` (weights, then bias).
    fn margins(&self, p: &[f64]) -> Vec<f64> {
        if let Some((_, z)) = self.last.borrow().as_ref().filter(|(at, _)| at.as_slice() == p) {
            return z.clone();
        }
        let (w, b) = self.split(p);
        let z: Vec<f64> = match self.rows {
            SolverRows::Dense { z, .. } => {
                let mut margins = vec![0.0; z.nrows()];
                matvec::mat_vec(z.as_slice().expect("z is in standard layout"), w, &mut margins, false);
                margins.iter_mut().for_each(|v| *v += b);
                margins
            }
            SolverRows::Sparse { rows: c, .. } => Design::Sparse { rows: &c.rows, dim: c.columns.len() }.margins(w, b),
        };
        *self.last.borrow_mut() = Some((p.to_vec(), z.clone()));
        z
    }

    /// `g += Σᵢ rᵢ x̃ᵢ`.
    fn accumulate(&self, residuals: &[f64], g: &mut [f64]) {
        match self.rows {
            SolverRows::Dense { zt, .. } => {
                matvec::mat_vec(zt.as_slice().expect("zt is in standard layout"), residuals, g, true);
            }
            SolverRows::Sparse { rows: c, .. } => {
                for (row, &r) in c.rows.iter().zip(residuals) {
                    for &(j, v) in row {
                        g[j as usize] += r * v as f64;
                    }
                }
            }
        }
    }
}

impl CostFunction for Problem<'_> {
    type Param = Vec<f64>;
    type Output = f64;
    fn cost(&self, p: &Vec<f64>) -> std::result::Result<f64, argmin::core::Error> {
        let (w, _) = self.split(p);
        let z = self.margins(p);
        let n = self.y.len() as f64;
        let loss: f64 = z.iter().zip(self.y).map(|(&z, &y)| softplus(z) - z * y as f64).sum::<f64>() / n;
        Ok(loss + 0.5 * self.l2 * w.iter().map(|v| v * v).sum::<f64>())
    }
}

impl Gradient for Problem<'_> {
    type Param = Vec<f64>;
    type Gradient = Vec<f64>;
    fn gradient(&self, p: &Vec<f64>) -> std::result::Result<Vec<f64>, argmin::core::Error> {
        let (w, _) = self.split(p);
        let z = self.margins(p);
        let n = self.y.len() as f64;
        let r: Vec<f64> = z.iter().zip(self.y).map(|(&z, &y)| (sigmoid(z) - y as f64) / n).collect();
        let mut g: Vec<f64> = w.iter().map(|&wj| self.l2 * wj).collect();
        self.accumulate(&r, &mut g);
        g.push(r.iter().sum());
        Ok(g)
    }
}

/// Fit an L2-regularised logistic regression with inverse strength `c` (scikit-learn's `C`) on rows `x` and 0/1
/// labels `y`. Both classes must be present. Dense rows are standardised internally (the returned weights apply
/// to the original rows).
pub fn fit<'a>(x: Design<'a>, y: &'a [u8], c: f64) -> Result<LogisticRegression> {
    fit_weighted(x, y, c, None)
}

/// [`fit`] with a weight per dense column on the standardised inputs: a column of weight `a` enters the model as
/// `a` times its standardised value, which is the same as penalising its coefficient `1 / a²` times as much as the
/// others'; weight 0 leaves the column out (its coefficient is 0). `None` is weight 1 everywhere. Sparse rows are
/// not standardised and take no weights: weights given with them are refused.
///
/// ```
/// use cryptotl::linear::{Design, fit_weighted};
/// let x = ndarray::array![[0.0f32, 1.0], [0.1, 0.0], [1.0, 1.0], [0.9, 0.0]];
/// let lr = fit_weighted(Design::Dense(x.view()), &[0, 0, 1, 1], 1.0, Some(&[1.0, 0.0])).unwrap();
/// assert_eq!(lr.weights[1], 0.0); // left out
/// assert!(lr.weights[0] > 0.0);
/// ```
pub fn fit_weighted<'a>(x: Design<'a>, y: &'a [u8], c: f64, column_weights: Option<&[f64]>) -> Result<LogisticRegression> {
    Ok(solve(&prepare(x, y, column_weights)?, y, c, None)?.0)
}

/// Candidates fitted one after another on the same rows: the [`SolverRows`] of the last column weighting asked for
/// and the last solution on them, kept while the candidates that follow share that weighting. A path of Cs then
/// fits the same standardised rows again and again, each C starting from the previous one's solution; a candidate
/// of another weighting prepares its rows anew and starts from 0.
#[derive(Default)]
struct CandidatePath(Option<PathStep>);

/// Where a [`CandidatePath`] stands: the weighting, its rows and the last solution on them.
struct PathStep {
    column_weights: Option<Vec<f64>>,
    rows: SolverRows,
    last: Option<Vec<f64>>,
}

impl CandidatePath {
    fn fit(&mut self, x: Design<'_>, y: &[u8], cand: &Candidate) -> Result<LogisticRegression> {
        let weights = cand.column_weights.as_deref();
        let step = match self.0.take().filter(|s| s.column_weights.as_deref() == weights) {
            Some(kept) => self.0.insert(kept),
            None => self.0.insert(PathStep { column_weights: weights.map(<[f64]>::to_vec), rows: prepare(x, y, weights)?, last: None }),
        };
        let (lr, param) = solve(&step.rows, y, cand.c, step.last.take())?;
        step.last = Some(param);
        Ok(lr)
    }
}

/// Check `x` and its labels `y` (one per row, both classes; finite entries, sparse columns in range; column weights
/// finite, >= 0, one per dense column) and build its [`SolverRows`]: dense rows standardised over themselves and
/// column-weighted, sparse rows compacted.
fn prepare(x: Design<'_>, y: &[u8], column_weights: Option<&[f64]>) -> Result<SolverRows> {
    let n = x.rows();
    if n != y.len() {
        return Err(Error::Features(format!("logistic regression: {n} rows but {} labels", y.len())));
    }
    if !y.contains(&0) || !y.contains(&1) {
        return Err(Error::Features("logistic regression needs examples of both classes".into()));
    }
    Ok(match x {
        Design::Dense(m) => {
            crate::features::check_finite(m)?;
            let mean = m.mean_axis(ndarray::Axis(0)).expect("n > 0");
            let std = m.std_axis(ndarray::Axis(0), 0.0);
            let shift: Vec<f64> = mean.iter().map(|&v| v as f64).collect();
            let mut scale: Vec<f64> = std.iter().map(|&s| if s > 1e-12 { 1.0 / s as f64 } else { 0.0 }).collect();
            if let Some(a) = column_weights {
                if a.len() != scale.len() || a.iter().any(|a| !(a.is_finite() && *a >= 0.0)) {
                    return Err(Error::Features(format!("logistic regression: {} column weights (finite, >= 0) for {} columns", a.len(), scale.len())));
                }
                scale.iter_mut().zip(a).for_each(|(s, a)| *s *= a);
            }
            let columns: Vec<usize> = (0..scale.len()).filter(|&j| scale[j] != 0.0).collect();
            let (shift, scale): (Vec<f64>, Vec<f64>) = columns.iter().map(|&j| (shift[j], scale[j])).unzip();
            let z = ndarray::Array2::from_shape_fn((n, columns.len()), |(i, k)| (m[[i, columns[k]]] as f64 - shift[k]) * scale[k]);
            let zt = z.t().as_standard_layout().into_owned();
            SolverRows::Dense { z, zt, shift, scale, columns, dim: m.ncols() }
        }
        Design::Sparse { rows, dim } => {
            if column_weights.is_some() {
                return Err(Error::Features("logistic regression: column weights apply to dense rows only (sparse rows are not standardised)".into()));
            }
            if let Some(&(j, v)) = rows.iter().flatten().find(|(j, v)| *j as usize >= dim || !v.is_finite()) {
                return Err(Error::Features(format!("sparse row entry ({j}, {v}) is out of range or not finite")));
            }
            SolverRows::Sparse { rows: CompactRows::new(rows), dim }
        }
    })
}

/// Minimise the objective over `rows` (prepared by [`prepare`] from a design and the labels `y`)
/// with inverse L2 strength `c`, starting L-BFGS from `init` (the solver's parameters, as this returns them beside the model: the
/// standardised weights, for sparse rows those of the columns the rows use, then the bias) instead of 0: along a
/// path of C the previous solution is a close start. The problem is convex, so the start changes the iterations,
/// not the minimum.
fn solve<'a>(rows: &'a SolverRows, y: &'a [u8], c: f64, init: Option<Vec<f64>>) -> Result<(LogisticRegression, Vec<f64>)> {
    let n = y.len();
    if !(c.is_finite() && c > 0.0) {
        return Err(Error::Features(format!("logistic regression: C must be a finite number > 0, got {c}")));
    }
    let d = rows.width();
    let problem = Problem { rows, y, l2: 1.0 / (c * n as f64), last: Default::default() };
    let linesearch = MoreThuenteLineSearch::new();
    let solver = LBFGS::new(linesearch, 10)
        .with_tolerance_grad(1e-7)
        .and_then(|s| s.with_tolerance_cost(1e-12))
        .map_err(|e| Error::Features(format!("L-BFGS setup: {e}")))?;
    let init = init.filter(|p| p.len() == d + 1).unwrap_or_else(|| vec![0.0f64; d + 1]);
    let res = Executor::new(problem, solver)
        .configure(|state| state.param(init).max_iters(1000))
        .run()
        .map_err(|e| Error::Features(format!("L-BFGS failed: {e}")))?;
    let iterations = res.state().get_iter();
    let problem = res.problem.problem.as_ref().expect("the problem is kept");
    let p = res.state().get_best_param().ok_or_else(|| Error::Features("L-BFGS returned no parameters".into()))?;
    let param = p.clone();
    let (w, b) = problem.split(p);
    let (weights, bias) = match problem.rows {
        // x·w' + b' with w'_j = w_j s_j and b' = b − Σ_j w_j s_j m_j (s = 1/std, m = mean).
        SolverRows::Dense { shift, scale, columns, dim, .. } => {
            // Back onto every column: the ones left out keep weight 0.
            let mut weights = vec![0f32; *dim];
            for ((&j, &wj), &s) in columns.iter().zip(w).zip(scale) {
                weights[j] = (wj * s) as f32;
            }
            let bias = b - w.iter().zip(scale.iter().zip(shift)).map(|(&wj, (&s, &m))| wj * s * m).sum::<f64>();
            (weights, bias as f32)
        }
        // Back onto every column: the ones no row uses keep weight 0.
        SolverRows::Sparse { rows: c, dim } => {
            let mut weights = vec![0f32; *dim];
            for (&j, &wj) in c.columns.iter().zip(w) {
                weights[j as usize] = wj as f32;
            }
            (weights, b as f32)
        }
    };
    Ok((LogisticRegression { weights, bias, c, iterations }, param))
}

impl LogisticRegression {
    /// `P(y = 1)` for every row.
    pub fn probabilities(&self, x: Design<'_>) -> Vec<f32> {
        self.margins_f64(x).into_iter().map(|z| sigmoid(z) as f32).collect()
    }

    /// The margin `x·w + b` (the log-odds of `y = 1`) of every row.
    pub fn margins(&self, x: Design<'_>) -> Vec<f32> {
        self.margins_f64(x).into_iter().map(|z| z as f32).collect()
    }

    fn margins_f64(&self, x: Design<'_>) -> Vec<f64> {
        let w: Vec<f64> = self.weights.iter().map(|&v| v as f64).collect();
        x.margins(&w, self.bias as f64)
    }
}
