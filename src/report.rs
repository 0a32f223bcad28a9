//! The run report: `report.json` (everything, machine-readable) and `report.md` (the same for people).

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::RunConfig;
use crate::data::DatasetSummary;
use crate::error::{Error, Result};
use crate::privacy::shown;
use crate::eval::Metrics;
use crate::train::EpochStats;

/// Where the server's pretrained network came from (`pipeline::PretrainedLower`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkOrigin {
    /// Pretrained by this run (and saved to the cache).
    Trained,
    /// Loaded from the pretraining cache.
    Cache,
    /// Shipped inside the binary ([`crate::shipped_network`]).
    Shipped,
}

impl NetworkOrigin {
    /// Where the network came from, in words, for the CLI and the report (`cache_dir`: the pretraining cache
    /// folder it was saved to or loaded from).
    pub fn describe(self, cache_dir: &str) -> String {
        match self {
            NetworkOrigin::Trained => format!("pretrained and saved to `{cache_dir}`"),
            NetworkOrigin::Cache => format!("loaded from the pretraining cache `{cache_dir}`"),
            NetworkOrigin::Shipped => format!("shipped in the binary (`{}`, rebuilt by `cryptotl ship-network`)", crate::shipped_network::SHIPPED_NETWORK_DIR),
        }
    }

    /// [`Self::describe`], with why a network the cache held was trained again, when it was.
    ///
    /// ```
    /// use cryptotl::report::NetworkOrigin;
    /// assert_eq!(NetworkOrigin::Trained.describe_why("c", Some("the source data changed")),
    ///     "pretrained and saved to `c` (the source data changed since the cached network was trained: trained again)");
    /// assert_eq!(NetworkOrigin::Cache.describe_why("c", None), NetworkOrigin::Cache.describe("c"));
    /// ```
    pub fn describe_why(self, cache_dir: &str, retrained_because: Option<&str>) -> String {
        match retrained_because {
            Some(why) => format!("{} ({why} since the cached network was trained: trained again)", self.describe(cache_dir)),
            None => self.describe(cache_dir),
        }
    }
}

/// Source test accuracy of the pretrained network on one source task (one path of `[source]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceTask {
    /// The path of `[source]`.
    pub source: String,
    /// Its examples in the source test split.
    pub test_examples: usize,
    /// Accuracy of the pretraining network (lower network + its output layer) on them.
    pub accuracy: f64,
}

/// The weight noise the server applied to its lower network.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppliedWeightNoise {
    /// The resolved mechanism (std, δ, ε).
    pub plan: crate::privacy::server::WeightNoisePlan,
    /// Weights and biases noised (the dimension of the released vector).
    pub parameters: usize,
    /// Where the noise came from.
    pub noise_source: String,
    /// The noised network was drawn in an earlier run and reused (no new release, no new budget).
    pub from_cache: bool,
    /// SHA-256 of the pretrained weights the noise was added to ([`crate::model::weights_sha256`]); `None` in
    /// entries drawn before it was recorded.
    #[serde(default)]
    pub base_network: Option<String>,
    /// Releases of earlier pretrained networks that this entry held before this draw replaced them (the same noise
    /// setting, so the same entry; the network trained again on changed source data): still released, so still
    /// composed in the budget ([`crate::privacy::server::weight_noise_releases_epsilon`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drawn_over: Vec<crate::privacy::server::WeightNoisePlan>,
}

impl AppliedWeightNoise {
    /// Whether this release was drawn from the pretrained network whose weights have the digest `base_network`
    /// (entries from before the digest was recorded are taken as they are): only then is it that network's release,
    /// to reuse.
    pub fn drawn_from(&self, base_network: &str) -> bool {
        self.base_network.as_deref().is_none_or(|b| b == base_network)
    }
}

/// Neurons of the released network dropped by `[lower] prune_dead`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PrunedUnits {
    /// Hidden units before pruning.
    pub hidden: usize,
    /// Indices (into those) of the units dropped: their pre-activation never exceeds 0 on the source training data.
    pub dropped: Vec<usize>,
}

/// One trained model's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct MethodResult {
    /// Short id: `transfer`, `raw_features_head`, `target_only_network`.
    pub method: String,
    /// What was trained on what.
    pub description: String,
    /// Metrics on the target test split.
    pub test: Metrics,
    /// Accuracy on the validation split (what defaults are chosen on; the test split is for reporting only).
    #[serde(default)]
    pub validation_accuracy: Option<f64>,
    /// Epochs run.
    pub epochs: usize,
    /// The epoch kept (best validation loss).
    pub best_epoch: usize,
    /// Training wall time, seconds.
    pub seconds: f64,
    /// The linear head's inverse L2 strength, and whether it was chosen on the validation split (`head.c =
    /// "validation"`); absent for the MLP head and DP-SGD heads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub c: Option<LinearC>,
}

/// A linear head's inverse L2 strength as fitted.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LinearC {
    /// The C.
    pub c: f64,
    /// Chosen on the validation split from `config::LINEAR_HEAD_CS`, or given as `head.c`.
    pub chosen_on_validation: bool,
    /// Beside the client's own features (`transfer+own`, C chosen): the weight chosen for them from
    /// `config::OWN_FEATURE_WEIGHTS` (their coefficients penalised `1 / weight²` times as much; 0: left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub own_weight: Option<f64>,
}

impl LinearC {
    /// In words, for the report: `C = 0.001, own features' weight 0.1, chosen on the validation split`.
    pub fn describe(&self) -> String {
        let own = match self.own_weight {
            Some(0.0) => ", own features left out".to_string(),
            Some(w) => format!(", own features' weight {w:.3}"),
            None => String::new(),
        };
        let chosen = if self.chosen_on_validation { ", chosen on the validation split" } else { "" };
        format!("C = {}{own}{chosen}", self.c)
    }
}

/// Pretraining outcome.
#[derive(Debug, Clone, Serialize)]
pub struct PretrainSummary {
    /// Not trained by this run (loaded from the cache or shipped in the binary).
    pub from_cache: bool,
    /// Trained now, from the cache, or shipped in the binary.
    pub origin: NetworkOrigin,
    /// Cache folder.
    pub cache_dir: String,
    /// Lower net + pretraining head on the source test split.
    pub source_test: Metrics,
    /// The same per source task (per path of `[source]`).
    pub source_tasks: Vec<SourceTask>,
    /// Epoch history.
    pub history: Vec<EpochStats>,
    /// DP pretraining's schedule, when on.
    pub dp_pretraining: Option<crate::privacy::plan::DpPlan>,
    /// The weight noise on the released network, when on.
    pub weight_noise: Option<AppliedWeightNoise>,
    /// Dead units dropped before compiling (`[lower] prune_dead`), when any were.
    pub pruned: Option<PrunedUnits>,
    /// Why this run trained again a network the cache held (its source data changed since), when it did.
    pub retrained_because: Option<String>,
}

/// Wall time of one stage.
#[derive(Debug, Clone, Serialize)]
pub struct StageTime {
    /// Stage name.
    pub stage: String,
    /// Seconds.
    pub seconds: f64,
}

/// Everything a run reports.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Run name.
    pub name: String,
    /// Seed.
    pub seed: u64,
    /// cryptotl version.
    pub version: String,
    /// Worker threads available.
    pub threads: usize,
    /// Source dataset sizes (None with a remote server: its data is its own).
    pub source: Option<DatasetSummary>,
    /// Target dataset sizes.
    pub target: DatasetSummary,
    /// How many target texts the server's network learned from ([`crate::overlap`]); None with a remote server,
    /// whose source texts the client never sees.
    pub source_overlap: Option<crate::overlap::OverlapCheck>,
    /// Where the lower network ran: `local` (this process) or the remote server's URL.
    pub server: String,
    /// Pretraining (None with a remote server).
    pub pretraining: Option<PretrainSummary>,
    /// Transfer and baselines.
    pub results: Vec<MethodResult>,
    /// Head-training history of the transfer model.
    pub head_history: Vec<EpochStats>,
    /// The privacy budget of every party and mechanism, and what TFHE protects.
    pub budget: crate::privacy::budget::BudgetReport,
    /// DP-SGD of the client head, when on.
    pub privacy: Option<crate::privacy::plan::PrivacyReport>,
    /// The empirical audit of the DP-SGD head (`[audit]`), beside the accountant's ε.
    pub audit: Option<crate::audit::AuditResult>,
    /// The encrypted stage (TFHE), when on.
    pub he: Option<crate::he::HeReport>,
    /// Learning curves over labelled-set sizes (`[curve]`), when on.
    pub curve: Option<crate::curve::LearningCurves>,
    /// Wall time per stage.
    pub stages: Vec<StageTime>,
    /// The full configuration.
    pub config: RunConfig,
}

impl Report {
    /// Write `report.json` and `report.md` into `dir` (created if needed).
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let json = dir.join("report.json");
        crate::atomic::write(&json, &serde_json::to_vec_pretty(self).expect("report serialises"))?;
        crate::atomic::write(&dir.join("report.md"), self.to_markdown().as_bytes())?;
        if let Some(c) = &self.curve {
            c.chart(&dir.join("curve.svg"))?;
        }
        Ok(())
    }

    /// The report as Markdown (`report.md`): the [summary](Self::summary_markdown), then the head's training
    /// history, the wall time per stage and the configuration.
    pub fn to_markdown(&self) -> String {
        let mut s = self.summary_markdown();
        let _ = writeln!(s, "\n## Head training (transfer)\n\n| epoch | train loss | val loss | val accuracy |\n|---:|---:|---:|---:|");
        for e in &self.head_history {
            let _ = writeln!(s, "| {} | {:.4} | {:.4} | {:.4} |", e.epoch, e.train_loss, e.val_loss, e.val_accuracy);
        }
        let _ = writeln!(s, "\n## Wall time per stage\n\n| stage | seconds |\n|---|---:|");
        for t in &self.stages {
            let _ = writeln!(s, "| {} | {:.2} |", t.stage, t.seconds);
        }
        let _ = writeln!(s, "\n## Configuration\n\n```toml\n{}```", toml::to_string(&self.config).unwrap_or_default());
        s
    }

    /// The run's outcome in three plain lines, which `cryptotl run` prints last (a terminal shows the end of its
    /// output): every head's and baseline's test accuracy (the diagnostic float and clear-integer transfer heads
    /// left out), the learning curves at 64 labelled examples (or their smallest size below that) with the transfer
    /// head's margin over the raw-feature head, and each party's ε.
    pub fn headline(&self) -> String {
        let mut s = String::new();
        let encrypted = self.he.is_some();
        let heads: Vec<String> = self
            .results
            .iter()
            .filter(|r| !matches!(r.method.as_str(), "transfer_float" | "transfer_quantized"))
            .map(|r| format!("{} {:.3}{}", r.method, r.test.accuracy, if r.method == "transfer" && encrypted { " (encrypted)" } else { "" }))
            .collect();
        let _ = writeln!(s, "test accuracy ({} examples): {}", self.target.test, heads.join(" · "));
        if let Some(crate::overlap::OverlapCheck::Checked(o)) = &self.source_overlap
            && o.any()
        {
            let by_sentence = o.sentences.as_ref().filter(|x| x.found.iter().sum::<usize>() > 0).map_or(String::new(), |x| {
                format!("; {} test and {} training texts have sentences among them", x.texts[2], x.texts[0])
            });
            let _ = writeln!(s, "source overlap: {} of the {} test texts ({} of {} training) are among the server's source training texts{by_sentence}: not transfer (report.md, Data)",
                o.test, o.target_sizes[2], o.train, o.target_sizes[0]);
        }
        if let Some(c) = &self.curve {
            let size = c.sizes.iter().copied().filter(|&n| n <= 64).max().or_else(|| c.sizes.first().copied());
            if let Some(size) = size {
                let points: Vec<String> = c.methods.iter().filter_map(|m| c.point(m, size)).map(|p| format!("{} {:.3}", p.method, p.mean)).collect();
                let margin = c.margin("transfer", "raw_features", size).map_or(String::new(), |m| format!("; transfer − raw_features {:+.1} ± {:.1} points", 100.0 * m.mean, 100.0 * m.std_error));
                let _ = writeln!(s, "learning curves at {size} labels (mean of {} draws): {}{margin}", c.draws, points.join(" · "));
            }
        }
        let budget: Vec<String> = self
            .budget
            .rows
            .iter()
            .map(|r| {
                let mechanism = r.short_mechanism();
                match (r.epsilon, r.delta) {
                    (Some(e), Some(d)) => format!("{}: ε = {} at δ = {} ({mechanism})", r.party, shown::epsilon(e), shown::delta(d)),
                    (Some(e), None) => format!("{}: ε = {} ({mechanism})", r.party, shown::epsilon(e)),
                    _ => format!("{}: ε = ∞ ({mechanism})", r.party),
                }
            })
            .collect();
        let _ = writeln!(s, "privacy: {}", budget.join(" · "));
        s
    }

    /// What `cryptotl run` prints: data, pretraining, the privacy budget, results, learning curves, DP and the
    /// encrypted stage.
    pub fn summary_markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# cryptotl run `{}`\n", self.name);
        let _ = writeln!(s, "cryptotl {} · seed {} · {} threads\n", self.version, self.seed, self.threads);
        let _ = writeln!(s, "## Data\n\n| role | dataset | train | validation | test | positives (all) | lossy UTF-8 replacements | ignored rows | copies moved to join their text | test texts also in train |");
        let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (role, d) in [("server (source)", self.source.as_ref()), ("client (target)", Some(&self.target))].into_iter().filter_map(|(r, d)| Some((r, d?))) {
            let _ = writeln!(s, "| {role} | {} | {} | {} | {} | {} | {} | {} | {} | {} |", d.name, d.train, d.validation, d.test, d.positives, d.lossy_replacements, d.ignored_rows, d.duplicates_moved, d.test_texts_in_train);
        }
        if self.target.duplicates_moved > 0 {
            let _ = writeln!(s, "
{} of the target's examples repeat a text drawn for an earlier part and were moved there (`[split] duplicates = \"together\"`): no test text occurs in training.", self.target.duplicates_moved);
        }
        if self.target.test_texts_in_train > 0 {
            let _ = writeln!(s, "\n{} of the target's {} test texts also occur in its training split (duplicates in the data): on those the test accuracy measures memory, not generalisation.", self.target.test_texts_in_train, self.target.test);
        }
        match &self.source_overlap {
            Some(check) => {
                let _ = writeln!(s, "\n{}", check.describe());
            }
            None => {
                let _ = writeln!(s, "\nTarget texts among the server's source texts: not checked (the remote server's source texts are its own).");
            }
        }
        let Some(p) = &self.pretraining else {
            let _ = writeln!(s, "\n## Pretraining (server)\n\nThe lower network ran on the remote server at {}: its network, source data and pretraining are the server's own. Its privacy statement is in the budget table.\n", self.server);
            return self.markdown_rest(s);
        };
        let _ = writeln!(
            s,
            "\n## Pretraining (server)\n\nSource test accuracy {:.4} (F1 {:.4}); {} epochs; {}.\n",
            p.source_test.accuracy,
            p.source_test.f1,
            p.history.len(),
            p.origin.describe_why(&p.cache_dir, p.retrained_because.as_deref())
        );
        if p.source_tasks.len() > 1 {
            let _ = writeln!(s, "| source task | test examples | accuracy |\n|---|---:|---:|");
            for t in &p.source_tasks {
                let _ = writeln!(s, "| {} | {} | {:.4} |", t.source, t.test_examples, t.accuracy);
            }
            let _ = writeln!(s);
        }
        if let Some(pr) = &p.pruned {
            let _ = writeln!(s, "Dead neurons: {} of {} never fire on the source training data and were dropped before compiling (`[lower] prune_dead`); the network sends {} outputs, one bootstrap each.\n",
                pr.dropped.len(), pr.hidden, pr.hidden - pr.dropped.len());
        }
        if let Some(plan) = &p.dp_pretraining {
            let _ = writeln!(s, "Pretrained with DP-SGD: {} steps, σ = {:.4}, C = {}, q = {:.5}; ε = {} at δ = {} ({}).\n",
                plan.steps_allowed, plan.noise_multiplier, plan.max_grad_norm, plan.sampling_rate, shown::epsilon(plan.epsilon), shown::delta(plan.delta), plan.accountant);
        }
        if let Some(w) = &p.weight_noise {
            let _ = writeln!(s, "Weight noise: std {:.4e}{} on {} weights and biases (Δ = {:.4e}, δ = {}, {}); {}. Noise: {}.\n",
                w.plan.noise_std, if w.plan.noise_calibrated { " (calibrated)" } else { "" }, w.parameters, w.plan.l2_sensitivity,
                shown::delta(w.plan.delta), w.plan.delta_source,
                if w.from_cache { "the noised network was drawn in an earlier run and reused (no new release)" } else { "drawn now and cached for reuse" },
                w.noise_source);
        }
        self.markdown_rest(s)
    }

    /// The report's sections from the budget on.
    fn markdown_rest(&self, mut s: String) -> String {
        let _ = writeln!(s, "## Privacy budget (every party, every mechanism)\n\n{}", self.budget.to_markdown());
        let _ = writeln!(s, "## Results on the target test split\n");
        let _ = writeln!(s, "| method | accuracy | precision | recall | F1 | TP | FP | TN | FN | validation acc. | epochs (best) | train s |");
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in &self.results {
            let m = &r.test;
            let c = &m.confusion;
            let _ = writeln!(
                s,
                "| {} | {:.4} | {:.4} | {:.4} | {:.4} | {} | {} | {} | {} | {} | {} ({}) | {:.1} |",
                r.method, m.accuracy, m.precision, m.recall, m.f1, c.tp, c.fp, c.tn, c.fn_,
                r.validation_accuracy.map_or("—".into(), |v| format!("{v:.4}")), r.epochs, r.best_epoch, r.seconds
            );
        }
        let _ = writeln!(s);
        for r in &self.results {
            let _ = match &r.c {
                Some(c) => writeln!(s, "- `{}`: {} ({})", r.method, r.description, c.describe()),
                None => writeln!(s, "- `{}`: {}", r.method, r.description),
            };
        }
        if let Some(c) = &self.curve {
            let _ = writeln!(s, "\n## Learning curves\n\n![learning curves](curve.svg)\n\n{}", c.to_markdown());
        }
        if let Some(a) = &self.audit {
            let _ = writeln!(s, "\n{}", a.to_markdown());
        }
        if let Some(p) = &self.privacy {
            let plan = &p.plan;
            let _ = writeln!(s, "\n## Privacy of the client's training data (DP-SGD on the head)\n");
            let _ = writeln!(s, "{}.\n", p.mechanism);
            let _ = writeln!(s, "| q | σ | C | steps run (planned) | epochs | δ | N |\n|---:|---:|---:|---:|---:|---:|---:|");
            let _ = writeln!(
                s,
                "| {:.5} | {:.4}{} | {} | {} ({}) | {:.2} | {} ({}) | {} |\n",
                plan.sampling_rate, plan.noise_multiplier, if plan.noise_calibrated { " (calibrated)" } else { "" },
                plan.max_grad_norm, p.steps_run, plan.steps_planned, p.epochs_run, shown::delta(plan.delta), plan.delta_source, plan.examples
            );
            let _ = writeln!(s, "| accountant | ε at δ |\n|---|---:|");
            for e in &p.epsilons {
                let v = e.epsilon.map_or("n/a (q < 1: no amplification by sampling in zCDP)".to_string(), shown::epsilon);
                let _ = writeln!(s, "| {}{} | {v} |", e.accountant, if e.accountant == plan.accountant { " (of record)" } else { "" });
            }
            if let Some(w) = &p.warning {
                let _ = writeln!(s, "\n**Warning:** {w}.");
            }
            if p.stopped_by_budget {
                let _ = writeln!(s, "\n**Stopped by the hard budget** max_epsilon = {:?} after {} of {} steps.", plan.max_epsilon, p.steps_run, plan.steps_planned);
            }
            let _ = writeln!(s, "\nTest accuracy with DP {:.4}, without DP (same run) {:.4}. Noise: {}.\n", p.accuracy_with_dp, p.accuracy_without_dp, p.noise_source);
            let _ = writeln!(s, "| epoch | steps | ε ({}) |\n|---:|---:|---:|", plan.accountant);
            for e in &p.per_epoch {
                let _ = writeln!(s, "| {} | {} | {} |", e.epoch, e.steps, shown::epsilon(e.epsilon));
            }
        }
        if let Some(h) = &self.he {
            let _ = writeln!(s, "\n## Encrypted lower network (TFHE)\n");
            let _ = writeln!(s, "What TFHE protects: the client's features and the network's activations from the server (IND-CPA, \
                {}-bit parameter set `{}`, n = {}, N = {}). The client holds the only secret key. It does not protect \
                the server's network from the client, which sees the decrypted outputs for inputs it chooses.\n",
                h.security_bits, h.parameter_set, h.lwe_dimension, h.polynomial_size);
            let reference = |a: f64| if a.is_nan() { "— (only the server has its network)".to_string() } else { format!("{a:.4}") };
            let _ = writeln!(s, "| path | test accuracy |\n|---|---:|\n| float lower network | {} |\n| quantized, clear integers | {} |\n| encrypted (TFHE) | {:.4} |\n",
                reference(h.accuracy_float), reference(h.accuracy_quantized), h.accuracy_encrypted);
            let c = &h.counts;
            // Per-sample sizes and times are measured on the samples this run sent; a run that resumed them all sent none.
            let all_resumed = h.samples > 0 && h.resumed_samples == h.samples;
            let measured = |v: String| if all_resumed { "not measured: every sample came from the journal of an interrupted run".to_string() } else { v };
            let _ = writeln!(s, "| quantity | value |\n|---|---:|");
            for (k, v) in [
                ("bits: input / accumulator / lookup / output", if h.program.is_some() {
                    format!("{} / {} / {} / {}", h.input_bits, h.accumulator_bits, h.lookup_bits, h.output_bits)
                } else {
                    format!("{} / {} / not published / not published", h.input_bits, h.accumulator_bits)
                }),
                ("neurons (bootstraps per sample) / outputs", format!("{} / {}", h.neurons, h.outputs)),
                ("multiply-adds per sample (linear stage)", format!("{}", c.multiply_adds)),
                ("server", h.server.clone()),
                ("max |weight| / max row L2 norm", h.program.as_ref().map_or("not published by a remote server".into(), |p| format!("{} / {:.0}", p.max_abs_weight, p.max_row_norm))),
                ("key generation", if h.key_reused { "none: the client key kept in the run's folder, reused".into() } else { format!("{:.2} s", h.keygen_seconds) }),
                ("key upload (server checks and stores it)", if h.key_reused { "none: the server stores the kept key's evaluation key".into() } else { format!("{:.2} s", h.key_upload_seconds) }),
                ("server setup (read key, FFT, tables)", format!("{:.2} s", h.server_setup_seconds)),
                ("evaluation key (seeded, rounded where the server reads it; sent once)", if h.key_reused { "not sent again".into() } else { format!("{:.1} MiB", h.evaluation_key_bytes as f64 / 1048576.0) }),
                ("upload per sample", measured(format!("{:.2} KiB", h.upload_bytes_per_sample as f64 / 1024.0))),
                ("download per sample", measured(format!("{:.1} KiB", h.download_bytes_per_sample as f64 / 1024.0))),
                ("server time per sample: median / p95", measured(format!("{:.3} s / {:.3} s", h.server_seconds_median, h.server_seconds_p95))),
                ("client time per sample (median)", measured(format!("{:.4} s", h.client_seconds_median))),
                ("samples evaluated", if h.resumed_samples > 0 {
                    format!("{} ({} of them before an interruption, taken from the run's journal)", h.samples, h.resumed_samples)
                } else {
                    format!("{}", h.samples)
                }),
                ("outputs off the clear-integer oracle (any difference; most are one lookup level)", match (h.off_oracle_rate, h.max_level_difference) {
                    (Some(r), Some(m)) => format!("{r:.4} (max {m} levels)"),
                    _ => "not measurable: only the one-process simulation has the server's program".into(),
                }),
                ("accumulators outside the calibrated range", h.calibration_overflow_rate.map_or("not measurable against a remote server".into(), |r| format!("{r:.5}"))),
            ] {
                let _ = writeln!(s, "| {k} | {v} |");
            }
        }
        s
    }
}
