//! The privacy budget of a run, for every party and every mechanism: one table (`report.json` and `report.md`).
//!
//! | party | data | mechanisms |
//! |---|---|---|
//! | client | its target training split | DP-SGD on the head (`[privacy]`) |
//! | server | its source training split | DP pretraining, weight noise, and their composition (`[server_privacy]`) |
//!
//! A party without a mechanism gets a row with ε = ∞: no guarantee is claimed. TFHE is not a DP mechanism; its
//! statement (what it hides from whom, parameter set, security level) is reported beside the table.

use serde::Serialize;

use super::plan::{DpPlan, PrivacyReport};
use super::server::{OtherPretrainings, StoredReleases, WeightNoisePlan, approx_dp_measurement, compose, dp_pretrainings_epsilon, weight_noise_approx_dp, weight_noise_releases_epsilon};
use crate::error::Result;
use crate::membership::MembershipAttack;

/// One party's mechanism and what it guarantees.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct BudgetRow {
    /// `client` or `server`.
    pub party: String,
    /// Whose data the guarantee is about.
    pub data: String,
    /// The mechanism (`none` when the data is not protected).
    pub mechanism: String,
    /// ε for one added or removed example (`None`: no guarantee, ε = ∞).
    pub epsilon: Option<f64>,
    /// δ (`None` with ε = ∞).
    pub delta: Option<f64>,
    /// Who computed ε.
    pub accountant: String,
    /// The noise parameters.
    pub noise: String,
    /// What the guarantee protects against.
    pub protects_against: String,
}

impl BudgetRow {
    /// The mechanism's short name for one-line summaries: the table's wording without its explanation in
    /// parentheses, and "no DP" where nothing protects the data. A server's published statement is read the same
    /// way, so a remote server's rows shorten too.
    ///
    /// ```
    /// use cryptotl::privacy::budget::{BudgetReport, TfheStatement};
    /// let tfhe = TfheStatement::new(&cryptotl::config::HeConfig::default(), None).unwrap();
    /// let table = BudgetReport::new(None, 10, Default::default(), tfhe).unwrap();
    /// assert_eq!(table.rows[0].mechanism, "none (head trained without DP)");
    /// assert_eq!(table.rows[0].short_mechanism(), "no DP");
    /// ```
    pub fn short_mechanism(&self) -> &str {
        match self.mechanism.split(" (").next().unwrap_or_default().trim() {
            "none" | "" => "no DP",
            name => name,
        }
    }
}

/// What the encryption protects.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TfheStatement {
    /// Whether the lower network ran under TFHE.
    pub enabled: bool,
    /// tfhe-rs parameter set (when enabled).
    pub parameter_set: Option<String>,
    /// Claimed security level in bits (when enabled).
    pub security_bits: Option<u32>,
    /// log2 of tfhe-rs's bootstrap failure probability for the set, for tfhe-rs's own message space (when
    /// enabled). Not the exactness of this pipeline's lookups: see the measured fields.
    pub log2_failure_probability: Option<f64>,
    /// Measured in this run: the fraction of decrypted outputs that differ from the clear-integer program.
    pub measured_off_oracle_rate: Option<f64>,
    /// Measured in this run: the largest such difference, in output levels.
    pub measured_max_level_difference: Option<i64>,
    /// The statement in words.
    pub statement: String,
}

impl TfheStatement {
    /// The statement for a run's `[he]` table, with what the run measured of its encrypted outputs (`measured`:
    /// the run's [`crate::he::HeReport`], when the lower network ran under TFHE).
    pub fn new(he: &crate::config::HeConfig, measured: Option<&crate::he::HeReport>) -> Result<Self> {
        if !he.enabled {
            return Ok(Self {
                enabled: false,
                parameter_set: None,
                security_bits: None,
                log2_failure_probability: None,
                measured_off_oracle_rate: None,
                measured_max_level_difference: None,
                statement: "he.enabled = false: the lower network ran in the clear, so the server would see the client's \
                            features. Only a simulation; nothing protects the client's inputs from the server"
                    .into(),
            });
        }
        let params = he.params()?;
        // tfhe-rs's failure figure is for its own message space of the set; this pipeline reads `lookup_bits` from
        // it, so what holds for the outputs is what the run measured against the clear-integer program.
        let exactness = match measured.and_then(|r| Some((r, r.off_oracle_rate?, r.max_level_difference?))) {
            Some((r, rate, max)) => format!(
                "tfhe-rs states a bootstrap failure probability of 2^{:.0} for this set's own message space; this \
                 pipeline reads {}-bit lookups from it, so its outputs are not exact to that figure: in this run {:.2}% \
                 of the decrypted outputs differ from the clear-integer program (most by one lookup level; the largest \
                 by {} of {} output levels{}). That is an accuracy cost the heads are trained on, not a leak",
                params.tfhe_log2_p_fail(),
                r.lookup_bits,
                100.0 * rate,
                max,
                1u64 << r.output_bits,
                if let Some(o) = r.calibration_overflow_rate.filter(|&o| o > 0.0) {
                    format!("; {:.3}% of accumulators fell outside the calibrated range, and their lookups wrapped to about the range's end", 100.0 * o)
                } else {
                    String::new()
                }
            ),
            None => format!(
                "tfhe-rs states a bootstrap failure probability of 2^{:.0} for this set's own message space, not for \
                 this pipeline's wider lookups (the one-process simulation measures those against the clear-integer \
                 program; a client of a remote server cannot, having no program)",
                params.tfhe_log2_p_fail()
            ),
        };
        Ok(Self {
            enabled: true,
            parameter_set: Some(params.name().into()),
            security_bits: Some(params.security_bits()),
            log2_failure_probability: Some(params.tfhe_log2_p_fail()),
            measured_off_oracle_rate: measured.and_then(|r| r.off_oracle_rate),
            measured_max_level_difference: measured.and_then(|r| r.max_level_difference),
            statement: format!(
                "TFHE hides the client's features and every activation from the server (IND-CPA under LWE, tfhe-rs \
                 parameter set `{}`, {}-bit security); the client holds the only secret key. {exactness}. Not a DP \
                 guarantee, and it does not protect the server: the client decrypts the outputs for inputs it chooses \
                 (that is what the server rows bound)",
                params.name(),
                params.security_bits()
            ),
        })
    }
}

/// Why a network's un-noised form is public, so that no mechanism applied to it bounds anything against those who
/// have it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublicNetwork {
    /// It ships in the cryptotl binary: anyone with the binary has its weights.
    Shipped,
    /// The server built it (or an earlier network of its pretraining entry) for clients with no mechanism
    /// (`cryptotl server build`): they had its un-noised outputs.
    ServedPlain,
}

impl PublicNetwork {
    /// Why, in a few words.
    pub fn why(self) -> &'static str {
        match self {
            Self::Shipped => "the un-noised network ships in the cryptotl binary, public",
            Self::ServedPlain => "the un-noised network was built for clients with no mechanism (cryptotl server build), its outputs theirs",
        }
    }

    /// Against whom no bound holds.
    pub fn against(self) -> &'static str {
        match self {
            Self::Shipped => "anyone with the cryptotl binary",
            Self::ServedPlain => "any client of that plain model",
        }
    }

    /// The budget row's mechanism.
    fn row(self) -> &'static str {
        match self {
            Self::Shipped => "the pretrained network itself, shipped in the cryptotl binary (plain weights, public)",
            Self::ServedPlain => "the pretrained network itself, built for clients with no mechanism (cryptotl server build)",
        }
    }

    /// What a holder of the run's release alone never did.
    fn never(self) -> &'static str {
        match self {
            Self::Shipped => "had the binary's network",
            Self::ServedPlain => "queried the plain model",
        }
    }
}

/// The server's source-data mechanisms of a run.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerMechanisms<'a> {
    /// DP pretraining's schedule (ε of record after its steps).
    pub dp_pretraining: Option<&'a DpPlan>,
    /// Earlier DP pretrainings of the same network's config that `dp_pretraining`'s replaced (the source data changed
    /// since): still releases, composed with it for whoever holds them all.
    pub dp_pretraining_replaced: &'a [DpPlan],
    /// The weight noise, with the number of values noised.
    pub weight_noise: Option<(&'a WeightNoisePlan, usize)>,
    /// The server's other stored noised releases for this pretraining (other noise settings, or draws from an
    /// earlier network of this config): with `weight_noise`, composed for whoever holds them all.
    pub other_weight_noise: Option<&'a StoredReleases>,
    /// The releases of the server's other pretrainings that learned from some of the same source texts (other configs, other cache
    /// entries, or the network shipped in the binary), when any records one.
    pub other_pretrainings: Option<&'a OtherPretrainings>,
    /// Why the network's un-noised form is public, when it is: no mechanism applied to it protects the source
    /// examples against those who have it.
    pub public_network: Option<PublicNetwork>,
    /// Source training examples.
    pub source_examples: usize,
    /// What a membership-inference attack on the source data measured through the client's view (`[audit]
    /// membership`), when it was run.
    pub membership: Option<&'a SourceMembership>,
    /// What the release also fitted on the source data outside the mechanisms (feature scaling, IDF weights,
    /// calibration ranges, dead-unit pruning): the mechanisms' ε does not cover these ([`fitted_outside`]).
    pub fitted_outside: &'a [&'static str],
}

/// What a server with `cfg` fits on its source data besides the trained weights, none of it under a DP mechanism:
/// with DP pretraining or weight noise the report names these, since their ε covers the weights only.
/// A map fitted on nothing (DP pretraining's own, or `features.scaling = "fixed"` with MiniLM),
/// `he.calibration = "input_box"` and `lower.prune_dead = false` leave none.
pub fn fitted_outside(cfg: &crate::config::RunConfig) -> Vec<&'static str> {
    let mut out = Vec::new();
    // DP pretraining maps the source through a map fitted on nothing (`FeaturePipeline::for_training`).
    let fitted_map = cfg.dp_pretraining().is_none();
    if fitted_map && cfg.features.scaling == crate::config::Scaling::Fitted {
        out.push("the min-max feature scaling (features.scaling = \"fitted\")");
    }
    if fitted_map && cfg.features.kind == crate::config::FeatureKind::Hashed {
        out.push("the hashed TF-IDF's IDF weights");
    }
    if cfg.he.enabled && cfg.he.calibration == crate::config::Calibration::Source {
        out.push("the encrypted program's calibration ranges (he.calibration = \"source\")");
    }
    if cfg.lower.prune_dead {
        out.push("which units are dropped as dead (lower.prune_dead)");
    }
    out
}

/// A membership-inference attack on the server's source data through what the client sees
/// ([`crate::membership`]): the measured counterpart of the server rows' "protects against". An empirical lower
/// bound on leakage from one attack, not a guarantee.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct SourceMembership {
    /// Where the figure was measured (this run, or when the shipped network was built), or why there is none.
    pub provenance: String,
    /// The attack's figures (`None`: not measured, see `provenance`).
    pub attack: Option<MembershipAttack>,
}

impl SourceMembership {
    /// The figure in one sentence, for the report.
    pub fn sentence(&self) -> String {
        match &self.attack {
            Some(a) => format!(
                "membership inference on the source data through the client's view (the frozen network's outputs): ROC \
                 AUC {:.3} (0.5 = chance), TPR {:.1}% at 1% FPR, {} members against {} non-members; {}",
                a.auc,
                100.0 * a.tpr_at_1pct_fpr,
                a.members,
                a.non_members,
                self.provenance
            ),
            None => format!("membership inference on the source data: not measured ({})", self.provenance),
        }
    }
}

/// The server's privacy statement as it publishes it to clients (`privacy.json` of `cryptotl server build`,
/// `GET /v1/privacy`): its rows of the budget table.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct ServerStatement {
    /// The server's rows (party `server`).
    pub rows: Vec<BudgetRow>,
    /// The tightest valid bound on the source data, in words.
    pub source_tightest: Option<String>,
    /// The server's membership-inference figure on its source data (absent from statements of older servers).
    #[serde(default)]
    pub source_membership: Option<SourceMembership>,
}

impl ServerStatement {
    /// What a client checks in a statement a server sent: every row's ε absent (no guarantee) or a number ≥ 0, and δ
    /// absent or in [0, 1], so a garbled or lying statement cannot put a negative or NaN ε in the client's report.
    ///
    /// ```
    /// use cryptotl::privacy::budget::{ServerMechanisms, ServerStatement};
    /// let mut statement = ServerStatement::new(ServerMechanisms::default()).unwrap();
    /// assert!(statement.check().is_ok());
    /// statement.rows[0].epsilon = Some(-1.0);
    /// assert!(statement.check().unwrap_err().contains("ε = -1"));
    /// ```
    pub fn check(&self) -> std::result::Result<(), String> {
        for r in &self.rows {
            if let Some(e) = r.epsilon.filter(|e| e.is_nan() || *e < 0.0) {
                return Err(format!("its row `{}` gives ε = {e}; an ε is a number ≥ 0", r.mechanism));
            }
            if let Some(d) = r.delta.filter(|d| !(0.0..=1.0).contains(d)) {
                return Err(format!("its row `{}` gives δ = {d}; a δ is in [0, 1]", r.mechanism));
            }
        }
        Ok(())
    }

    /// The tightest ε its rows give the source data (the smallest of the valid bounds); ∞ with no mechanism.
    ///
    /// ```
    /// use cryptotl::privacy::budget::{ServerMechanisms, ServerStatement};
    /// assert_eq!(ServerStatement::new(ServerMechanisms::default()).unwrap().source_epsilon(), f64::INFINITY);
    /// ```
    pub fn source_epsilon(&self) -> f64 {
        self.rows.iter().filter_map(|r| r.epsilon).fold(f64::INFINITY, f64::min)
    }

    /// The statement of these mechanisms.
    pub fn new(server: ServerMechanisms<'_>) -> Result<Self> {
        let off = TfheStatement { enabled: false, parameter_set: None, security_bits: None, log2_failure_probability: None,
            measured_off_oracle_rate: None, measured_max_level_difference: None, statement: String::new() };
        let all = BudgetReport::new(None, 0, server, off)?;
        Ok(Self {
            rows: all.rows.into_iter().filter(|r| r.party == "server").collect(),
            source_tightest: all.source_tightest,
            source_membership: all.source_membership,
        })
    }
}

/// The budget table of a run.
#[derive(Debug, Clone, Serialize)]
pub struct BudgetReport {
    /// One row per party and mechanism.
    pub rows: Vec<BudgetRow>,
    /// Which valid bound on the source data is the tightest, in words (when the server has a mechanism).
    pub source_tightest: Option<String>,
    /// The membership-inference figure on the source data (when `[audit] membership` is on).
    pub source_membership: Option<SourceMembership>,
    /// What the encryption protects.
    pub tfhe: TfheStatement,
}

/// "; it covers the weights, not ..." when the release fitted something else on the source data.
fn outside_note(fitted: &[&str]) -> String {
    if fitted.is_empty() {
        return String::new();
    }
    format!(
        ". It covers the weights only: {} also come from the source data without noise (a release wholly covered: \
         DP pretraining or MiniLM with features.scaling = \"fixed\", he.calibration = \"input_box\", \
         lower.prune_dead = false)",
        fitted.join(", ")
    )
}

fn dp_sgd_noise(plan: &DpPlan, steps_run: usize) -> String {
    format!("σ = {:.4}, C = {}, q = {:.5}, {steps_run} steps", plan.noise_multiplier, plan.max_grad_norm, plan.sampling_rate)
}

/// The row for a DP-pretrained network's pretraining (`plan`) with the ones it `replaced`, together, and (count, ε, δ).
fn all_dp_pretrainings_row(plan: &DpPlan, replaced: &[DpPlan], source_data: &str) -> Result<(BudgetRow, (usize, f64, f64))> {
    let plans: Vec<&DpPlan> = std::iter::once(plan).chain(replaced).collect();
    let count = plans.len();
    let (epsilon, delta) = dp_pretrainings_epsilon(&plans)?;
    let row = BudgetRow {
        party: "server".into(),
        data: source_data.to_string(),
        mechanism: format!(
            "all DP pretrainings of this network, together ({count}: this one and {} it replaced, trained on source data that changed since)",
            count - 1
        ),
        epsilon: Some(epsilon),
        delta: Some(delta),
        accountant: "OpenDP make_composition in approximate DP (ε and δ add)".into(),
        noise: "each as its own schedule".into(),
        protects_against: "a source example in every one of these training sets, against whoever holds outputs of every one of \
             the networks (the DP-pretraining row above covers a holder of this network's alone)".into(),
    };
    Ok((row, (count, epsilon, delta)))
}

/// How many releases a row composes, their ε together (none when some cannot be read) and its δ.
type ReleasesTogether = (usize, Option<f64>, f64);

/// The row for a noised release (`plan`) with the `others` stored for the same pretraining, together.
fn all_noised_releases_row(plan: &WeightNoisePlan, others: &StoredReleases, source_data: &str, fitted_outside: &[&str]) -> Result<(BudgetRow, ReleasesTogether)> {
    let plans: Vec<&WeightNoisePlan> = std::iter::once(plan).chain(&others.plans).collect();
    let count = plans.len() + others.unreadable;
    // A stored release whose setting cannot be read has no known ε: together they have no bound.
    let (epsilon, accountant) = if others.unreadable == 0 {
        let (rho, epsilon) = weight_noise_releases_epsilon(&plans, plan.delta)?;
        (Some(epsilon), format!("OpenDP make_composition of the Gaussians in zCDP, ρ = {} -> approxDP", super::shown::epsilon(rho)))
    } else {
        (None, format!("none: {} of the stored releases cannot be read, so their noise is unknown", others.unreadable))
    };
    let stds: Vec<String> = plans.iter().map(|p| format!("{:.4e}", p.noise_std)).collect();
    let row = BudgetRow {
        party: "server".into(),
        data: source_data.to_string(),
        mechanism: format!(
            "all stored noised releases, together ({count} releases stored for this pretraining: this one and {} more, other noise settings or networks of this config trained before)",
            count - 1
        ),
        epsilon,
        delta: epsilon.map(|_| plan.delta),
        accountant,
        noise: format!("std {}{} (each with its declared L2 sensitivity)", stds.join(", "), if others.unreadable > 0 { ", unknown" } else { "" }),
        protects_against: format!(
            "whoever holds all of these releases (one client over several runs, or clients who pool them), ONLY IF \
             each declared Δ holds; the weight-noise row above covers a holder of this release alone{}",
            outside_note(fitted_outside)
        ),
    };
    Ok((row, (count, epsilon, plan.delta)))
}

impl BudgetReport {
    /// The table for a run: the client's DP-SGD report (if any, with its target example count `client_examples`),
    /// the server's mechanisms, and the TFHE statement.
    pub fn new(client: Option<&PrivacyReport>, client_examples: usize, server: ServerMechanisms<'_>, tfhe: TfheStatement) -> Result<Self> {
        let mut rows = Vec::new();
        let client_data = format!("client's target training split ({client_examples} examples)");
        rows.push(match client {
            Some(p) => BudgetRow {
                party: "client".into(),
                data: client_data,
                mechanism: "DP-SGD on the head (its inputs through a feature map fitted on no data)".into(),
                epsilon: Some(p.plan.epsilon),
                delta: Some(p.plan.delta),
                accountant: p.plan.accountant.name().to_string(),
                noise: dp_sgd_noise(&p.plan, p.steps_run),
                protects_against: "anyone who sees the trained head or its predictions (the server never sees it)".into(),
            },
            None => BudgetRow {
                party: "client".into(),
                data: client_data,
                mechanism: "none (head trained without DP)".into(),
                epsilon: None,
                delta: None,
                accountant: "-".into(),
                noise: "-".into(),
                protects_against: "nothing: publishing the head may reveal the client's training examples".into(),
            },
        });
        let source_data = format!("server's source training split ({} examples)", server.source_examples);
        let mut bounds: Vec<(String, f64, f64)> = Vec::new();
        if let Some(plan) = server.dp_pretraining {
            rows.push(BudgetRow {
                party: "server".into(),
                data: source_data.clone(),
                mechanism: "DP pretraining (DP-SGD on the lower network)".into(),
                epsilon: Some(plan.epsilon),
                delta: Some(plan.delta),
                accountant: plan.accountant.name().to_string(),
                noise: dp_sgd_noise(plan, plan.steps_allowed),
                protects_against: format!(
                    "the client (decrypted outputs for inputs it chooses) and anyone who sees the network; holds without \
                     any assumption on the training{}",
                    outside_note(server.fitted_outside)
                ),
            });
            bounds.push(("DP pretraining alone (the released network is post-processing of its output)".into(), plan.epsilon, plan.delta));
        }
        // Earlier DP pretrainings of this config's network (on source data that changed since) were releases too.
        let mut all_dp = None;
        if let (Some(plan), false) = (server.dp_pretraining, server.dp_pretraining_replaced.is_empty()) {
            let (row, together) = all_dp_pretrainings_row(plan, server.dp_pretraining_replaced, &source_data)?;
            rows.push(row);
            all_dp = Some(together);
        }
        if let Some((plan, parameters)) = server.weight_noise {
            rows.push(BudgetRow {
                party: "server".into(),
                data: source_data.clone(),
                mechanism: "weight noise (Gaussian on the flattened lower-network weights)".into(),
                epsilon: Some(plan.epsilon),
                delta: Some(plan.delta),
                accountant: format!("OpenDP make_gaussian, zCDP ρ = {} -> approxDP (exact Gaussian: ε = {})", super::shown::epsilon(plan.rho), super::shown::epsilon(plan.epsilon_exact)),
                noise: format!("std {:.4e} on {parameters} values, declared L2 sensitivity Δ = {:.4e}", plan.noise_std, plan.l2_sensitivity),
                protects_against: format!(
                    "the client and anyone who sees the network, ONLY IF Δ truly bounds how far one source example \
                     moves the weights{}",
                    outside_note(server.fitted_outside)
                ),
            });
            bounds.push(("weight noise alone (if the declared sensitivity holds)".into(), plan.epsilon, plan.delta));
        }
        // Every noised release the server has stored for this pretraining, together: a client that ran other noise
        // settings (or clients that pool what they saw) holds them all.
        let mut all_releases = None;
        if let (Some((plan, _)), Some(others)) = (server.weight_noise, server.other_weight_noise.filter(|o| !o.is_empty())) {
            let (row, together) = all_noised_releases_row(plan, others, &source_data, server.fitted_outside)?;
            rows.push(row);
            all_releases = Some(together);
        }
        if let (Some(pre), Some((wn, _))) = (server.dp_pretraining, server.weight_noise) {
            let (epsilon, delta) = compose(vec![approx_dp_measurement(pre.epsilon, pre.delta, "DP pretraining")?, weight_noise_approx_dp(wn)?])?;
            rows.push(BudgetRow {
                party: "server".into(),
                data: source_data.clone(),
                mechanism: "composed total (DP pretraining + weight noise)".into(),
                epsilon: Some(epsilon),
                delta: Some(delta),
                accountant: "OpenDP make_composition in approximate DP (ε and δ add)".into(),
                noise: "both of the above".into(),
                protects_against: "as the weight-noise row; valid even if both the trained and the noised weights were released".into(),
            });
            bounds.push(("the composed total".into(), epsilon, delta));
        }
        // A public network (shipped in the binary, or built plain for clients): whatever noise a run adds, its holders
        // have the un-noised weights or outputs, so no bound holds for its source examples against them.
        if let Some(public) = server.public_network.filter(|_| !bounds.is_empty()) {
            rows.push(BudgetRow {
                party: "server".into(),
                data: source_data.clone(),
                mechanism: public.row().into(),
                epsilon: None,
                delta: None,
                accountant: "-".into(),
                noise: "none".into(),
                protects_against: format!(
                    "nothing against {}: the rows above hold only for a holder of this run's release who never {}. \
                     For a claim, pretrain on source data that network did not learn from (another network on the same \
                     texts meets it again), and never release that one plain",
                    public.against(),
                    public.never()
                ),
            });
        }
        // The releases of other pretrainings that learned from some of the same source examples add to this
        // pretraining's (ε and δ add).
        let mut across = None;
        if let Some(others) = server.other_pretrainings.filter(|o| !o.is_empty() && !bounds.is_empty()) {
            let count = others.count();
            let dp = server.dp_pretraining.map(|p| all_dp.map_or((p.epsilon, p.delta), |(_, e, d)| (e, d)));
            let noise = server.weight_noise.map(|(p, _)| match all_releases {
                Some((_, e, d)) => e.map(|e| (e, d)),
                None => Some((p.epsilon, p.delta)),
            });
            // Both bounds hold for this pretraining's releases: the smaller.
            let this = [dp, noise.flatten()].into_iter().flatten().min_by(|a, b| a.0.total_cmp(&b.0));
            let together = match (server.public_network, this, others.together()) {
                (Some(public), _, _) => Err(public.why().to_string()),
                (_, None, _) => Err("some of this pretraining's releases cannot be read, so their noise is unknown".to_string()),
                (_, _, None) => Err(others.describe()),
                (None, Some((e, d)), Some((oe, od))) => Ok(compose(vec![approx_dp_measurement(e, d, "this pretraining's releases")?, approx_dp_measurement(oe, od, "other pretrainings' releases")?])?),
            };
            rows.push(BudgetRow {
                party: "server".into(),
                data: format!("{source_data}, and what other pretrainings sharing some of these examples learned from"),
                mechanism: format!(
                    "all server releases about these source examples, together (this pretraining's and those of {count} other \
                     pretraining(s) that learned from some of the same source texts: in the cache, or shipped in the binary)"
                ),
                epsilon: together.as_ref().ok().map(|(e, _)| *e),
                delta: together.as_ref().ok().map(|(_, d)| *d),
                accountant: match &together {
                    Ok(_) => {
                        let composed = "OpenDP make_composition in approximate DP (ε and δ add) of each pretraining's releases together";
                        if others.uncompared.is_empty() { composed.into() } else { format!("{composed}; {}", others.describe()) }
                    }
                    Err(why) => format!("none: {why}"),
                },
                noise: "each as its own rows give it".into(),
                protects_against: "a source example learned by several of these networks, against whoever holds releases of all of them \
                     (the rows above cover this pretraining's releases alone)".into(),
            });
            across = Some((count, together.ok()));
        }
        // Against the holders of a public network there is no bound; the mechanisms' hold for a holder of the release alone.
        let public = server.public_network.map_or_else(String::new, |p| format!("none against {} ({}); against a holder of this run's release alone, ", p.against(), p.why()));
        let source_tightest = bounds.iter().min_by(|a, b| a.1.total_cmp(&b.1)).map(|(what, eps, delta)| {
            let mut s = format!("tightest valid bound on the source data: {public}{what}, ε = {} at δ = {}", super::shown::epsilon(*eps), super::shown::delta(*delta));
            if bounds.len() > 1 {
                s.push_str(". Every listed bound holds for the released network; DP pretraining's needs no assumption, the weight noise's needs the declared sensitivity to be true");
            }
            if let Some((count, eps, delta)) = all_dp {
                s.push_str(&format!(
                    ". For whoever holds outputs of all {count} DP pretrainings of this network, ε = {} at δ = {}",
                    super::shown::epsilon(eps),
                    super::shown::delta(delta)
                ));
            }
            match all_releases {
                Some((count, Some(eps), delta)) => s.push_str(&format!(
                    ". For whoever holds all {count} noised releases stored for this pretraining, the weight noise gives ε = {} at δ = {}",
                    super::shown::epsilon(eps),
                    super::shown::delta(delta)
                )),
                Some((count, None, _)) => s.push_str(&format!(". For whoever holds all {count} noised releases stored for this pretraining, no bound: some cannot be read")),
                None => {}
            }
            match across {
                Some((count, Some((eps, delta)))) => s.push_str(&format!(
                    ". With the releases of {count} other pretraining(s) sharing source examples, ε = {} at δ = {}",
                    super::shown::epsilon(eps),
                    super::shown::delta(delta)
                )),
                Some((count, None)) => s.push_str(&format!(". With the releases of {count} other pretraining(s) sharing source examples, no bound (the budget's last row says why)")),
                None => {}
            }
            s
        });
        if bounds.is_empty() {
            rows.push(BudgetRow {
                party: "server".into(),
                data: source_data,
                mechanism: "none".into(),
                epsilon: None,
                delta: None,
                accountant: "-".into(),
                noise: "-".into(),
                protects_against: "nothing: the client sees outputs of a network trained on the source data in the clear".into(),
            });
        }
        Ok(Self { rows, source_tightest, source_membership: server.membership.cloned(), tfhe })
    }

    /// The table for a client of a remote server: the client's row, and the server's rows as its published
    /// `statement` gives them (a statement with no rows is reported as no mechanism: ε = ∞).
    pub fn with_server_statement(client: Option<&PrivacyReport>, client_examples: usize, statement: ServerStatement, tfhe: TfheStatement) -> Result<Self> {
        let mut report = Self::new(client, client_examples, ServerMechanisms::default(), tfhe)?;
        if !statement.rows.is_empty() {
            report.rows.retain(|r| r.party != "server");
            report.rows.extend(statement.rows.into_iter().map(|r| BudgetRow { party: "server".into(), ..r }));
        }
        report.source_tightest = statement.source_tightest;
        report.source_membership = statement.source_membership;
        Ok(report)
    }

    /// The table as Markdown.
    pub fn to_markdown(&self) -> String {
        let mut s = String::from("| party | data | mechanism | ε | δ | accountant | noise | protects against |\n|---|---|---|---:|---:|---|---|---|\n");
        for r in &self.rows {
            let eps = r.epsilon.map_or("∞".to_string(), super::shown::epsilon);
            let delta = r.delta.map_or("-".to_string(), super::shown::delta);
            s.push_str(&format!("| {} | {} | {} | {eps} | {delta} | {} | {} | {} |\n", r.party, r.data, r.mechanism, r.accountant, r.noise, r.protects_against));
        }
        if let Some(t) = &self.source_tightest {
            s.push_str(&format!("\nServer: {t}.\n"));
        }
        if let Some(m) = &self.source_membership {
            s.push_str(&format!("\nServer, measured: {}.\n", m.sentence()));
        }
        s.push_str(&format!("\nEncryption: {}.\n", self.tfhe.statement));
        s
    }
}
