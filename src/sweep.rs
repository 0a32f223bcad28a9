//! Privacy-utility sweeps: test accuracy of the client's head against the client's ε (DP-SGD on the head) and,
//! optionally, the server's ε (weight noise or DP pretraining), written as CSV, a Markdown table and an SVG chart.
//!
//! Work is shared wherever the setting allows it: the data and the client's features are computed once; each
//! server setting pretrains (or loads from the cache) and sends the client's features through the lower network
//! (encrypted when `he.enabled`) once, and every client ε reuses those transferred features.
//!
//! ```
//! use cryptotl::sweep::Epsilon;
//! assert_eq!(Epsilon::parse_list("0.5,1,inf").unwrap(), vec![Epsilon::Finite(0.5), Epsilon::Finite(1.0), Epsilon::Infinite]);
//! assert!(Epsilon::parse_list("0").is_err());
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::{PrivacyConfig, RunConfig};
use crate::error::{Error, Result};
use crate::pipeline;

/// A privacy level: a finite ε > 0, or ∞ (the mechanism off).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Epsilon {
    /// ε > 0.
    Finite(f64),
    /// No privacy mechanism.
    Infinite,
}

impl Epsilon {
    /// Parse `0.5`, `8`, `inf`.
    pub fn parse(s: &str) -> Result<Self> {
        let t = s.trim();
        if ["inf", "infinity", "∞"].contains(&t.to_ascii_lowercase().as_str()) {
            return Ok(Self::Infinite);
        }
        match t.parse::<f64>() {
            Ok(v) if v.is_finite() && v > 0.0 => Ok(Self::Finite(v)),
            Ok(v) if v == f64::INFINITY => Ok(Self::Infinite),
            _ => Err(Error::Privacy(format!("ε must be a number > 0 or `inf`, got {s:?}"))),
        }
    }
    /// Parse a comma-separated list (at least one value).
    pub fn parse_list(s: &str) -> Result<Vec<Self>> {
        let v: Vec<Self> = s.split(',').filter(|p| !p.trim().is_empty()).map(Self::parse).collect::<Result<_>>()?;
        if v.is_empty() {
            return Err(Error::Privacy("the ε list is empty".into()));
        }
        Ok(v)
    }
    /// The value (`f64::INFINITY` for ∞).
    pub fn value(self) -> f64 {
        match self {
            Self::Finite(v) => v,
            Self::Infinite => f64::INFINITY,
        }
    }
}

impl std::fmt::Display for Epsilon {
    /// `0.5`, `4`, `∞`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Finite(v) => write!(f, "{v}"),
            Self::Infinite => f.write_str("∞"),
        }
    }
}

/// Which server mechanism `--server-epsilons` sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerMechanism {
    /// `[server_privacy.weight_noise]` with `target_epsilon` (needs the declared `l2_sensitivity` in the config).
    WeightNoise,
    /// `[server_privacy.dp_pretraining]` with `target_epsilon` (pretraining per setting, cached).
    DpPretraining,
}

impl std::str::FromStr for ServerMechanism {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        crate::config::parse_named(&Self::ALL, Self::name, s, "server mechanism")
    }
}

impl ServerMechanism {
    /// Both mechanisms, in the order messages list them.
    pub const ALL: [ServerMechanism; 2] = [Self::WeightNoise, Self::DpPretraining];

    /// The CLI spelling.
    pub fn name(self) -> &'static str {
        match self {
            Self::WeightNoise => "weight-noise",
            Self::DpPretraining => "dp-pretraining",
        }
    }
}

/// The most head trainings per setting a sweep takes: the bound of `[curve] draws`.
pub const MAX_REPEATS: usize = crate::config::MAX_DRAWS;

/// What to sweep.
#[derive(Debug, Clone)]
pub struct SweepSpec {
    /// Client ε values (DP-SGD on the head; ∞ = no DP).
    pub client_epsilons: Vec<Epsilon>,
    /// Server ε values (empty: the config's server privacy as it is).
    pub server_epsilons: Vec<Epsilon>,
    /// Which server mechanism the server ε values set.
    pub server_mechanism: ServerMechanism,
    /// Also train the same heads on the client's raw features (no transfer): the line transfer must beat.
    pub raw_baseline: bool,
    /// Head trainings per setting (different DP noise and seeds), averaged in the table and the chart; at most
    /// [`MAX_REPEATS`].
    pub repeats: usize,
}

/// One trained head.
#[derive(Debug, Clone, Serialize)]
pub struct SweepPoint {
    /// The line it belongs to: a server setting, or `raw features` (the client alone, no transfer).
    pub series: String,
    /// Server ε asked for (`None`: the config's server privacy as it is).
    pub server_epsilon: Option<f64>,
    /// Server ε reached (of record), ∞ when the server has no mechanism.
    pub server_epsilon_reached: f64,
    /// Client ε asked for (∞ = no DP).
    pub client_epsilon: f64,
    /// Client ε reached (of record).
    pub client_epsilon_reached: f64,
    /// DP-SGD noise multiplier of the head (0 without DP).
    pub client_noise_multiplier: f64,
    /// Repeat index.
    pub repeat: usize,
    /// Test accuracy.
    pub accuracy: f64,
    /// Test F1.
    pub f1: f64,
}

/// A finished sweep.
#[derive(Debug, Clone, Serialize)]
pub struct Sweep {
    /// Run name.
    pub name: String,
    /// Which server mechanism the server ε values set.
    pub server_mechanism: ServerMechanism,
    /// Whether the lower network ran encrypted.
    pub encrypted: bool,
    /// The remote server whose network it was (`[he] server`); `None`: this process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// The featurizer (`hashed`, `minilm`).
    pub features: String,
    /// Every head trained.
    pub points: Vec<SweepPoint>,
    /// In one process: the target's texts among the server's source texts ([`crate::overlap`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_overlap: Option<crate::overlap::OverlapCheck>,
}

fn with_server_epsilon(cfg: &RunConfig, mechanism: ServerMechanism, eps: Epsilon) -> Result<RunConfig> {
    if mechanism == ServerMechanism::WeightNoise && eps != Epsilon::Infinite && cfg.server_privacy.weight_noise.is_none() {
        return Err(Error::Privacy(
            "--server-epsilons with the weight-noise mechanism needs [server_privacy.weight_noise] with the declared \
             l2_sensitivity in the config (the noise for an ε depends on it)"
                .into(),
        ));
    }
    cfg.edited(&format!("the sweep's server setting ε = {eps}"), |c| {
        let sp = &mut c.server_privacy;
        match (mechanism, eps) {
            (ServerMechanism::WeightNoise, Epsilon::Infinite) => sp.weight_noise = None,
            (ServerMechanism::WeightNoise, Epsilon::Finite(e)) => {
                if let Some(w) = sp.weight_noise.as_mut() {
                    (w.enabled, w.noise_std, w.target_epsilon) = (true, None, Some(e));
                }
            }
            (ServerMechanism::DpPretraining, Epsilon::Infinite) => sp.dp_pretraining = None,
            (ServerMechanism::DpPretraining, Epsilon::Finite(e)) => {
                sp.dp_pretraining = Some(targeting(sp.dp_pretraining.clone(), e));
            }
        }
    })
}

/// A DP-SGD table (the config's, or the defaults) switched on with σ calibrated to spend exactly `e`.
fn targeting(table: Option<PrivacyConfig>, e: f64) -> PrivacyConfig {
    let mut p = table.unwrap_or_else(|| PrivacyConfig::with_target_epsilon(e));
    (p.enabled, p.noise_multiplier, p.target_epsilon, p.max_epsilon) = (true, None, Some(e), None);
    p
}

fn with_client_epsilon(cfg: &RunConfig, eps: Epsilon) -> RunConfig {
    let mut c = cfg.clone();
    c.privacy = match eps {
        Epsilon::Infinite => None,
        Epsilon::Finite(e) => Some(targeting(cfg.privacy.clone(), e)),
    };
    c
}

/// The series of the client-only baseline.
pub const RAW_SERIES: &str = "client alone: raw features, no transfer";

struct HeadSetting<'a> {
    series: &'a str,
    server_epsilon: Option<f64>,
    server_reached: f64,
}

/// Train `spec.repeats` heads per client ε on `fs` (one config per client ε in `heads`).
fn train_heads(cfg: &RunConfig, heads: &[RunConfig], spec: &SweepSpec, fs: &pipeline::FeatureSplit, reference: &[f32], setting: &HeadSetting<'_>, points: &mut Vec<SweepPoint>) -> Result<()> {
    for (head_cfg, client_eps) in heads.iter().zip(&spec.client_epsilons) {
        let plan = pipeline::privacy_plan(head_cfg, fs.train.nrows())?;
        for repeat in 0..spec.repeats {
            let mut c = head_cfg.clone();
            c.seed = cfg.seed.wrapping_add(repeat as u64);
            let head = pipeline::train_configured_head(&c, fs, reference, plan.as_ref(), repeat as u64, "head")?;
            let (reached, sigma) = plan.as_ref().map_or((f64::INFINITY, 0.0), |p| (p.epsilon, p.noise_multiplier));
            tracing::info!(series = setting.series, ?client_eps, repeat, accuracy = head.test.accuracy, "sweep point");
            points.push(SweepPoint {
                series: setting.series.to_string(),
                server_epsilon: setting.server_epsilon,
                server_epsilon_reached: setting.server_reached,
                client_epsilon: client_eps.value(),
                client_epsilon_reached: reached,
                client_noise_multiplier: sigma,
                repeat,
                accuracy: head.test.accuracy,
                f1: head.test.f1,
            });
        }
    }
    Ok(())
}

/// Run the sweep (see the module docs for what is shared between settings).
pub fn run(cfg: &RunConfig, spec: &SweepSpec) -> Result<Sweep> {
    plan(cfg, spec)?.run()
}

/// One server setting of a sweep: its ε (`None`: the config's server as it is), its config, and the config of each
/// client head.
type Setting = (Option<Epsilon>, RunConfig, Vec<RunConfig>);

/// A sweep whose lists and settings are checked and whose configs are built, none of its work done yet: what
/// [`run`] refuses, [`plan`] refuses, so a caller can plan before it creates an output folder.
pub struct SweepPlan<'a> {
    cfg: &'a RunConfig,
    spec: &'a SweepSpec,
    settings: Vec<Setting>,
    journal: Option<std::path::PathBuf>,
}

/// Check a sweep's lists and settings against `cfg` and build every setting's config, before any work starts.
pub fn plan<'a>(cfg: &'a RunConfig, spec: &'a SweepSpec) -> Result<SweepPlan<'a>> {
    if spec.client_epsilons.is_empty() {
        return Err(Error::Privacy("give at least one client ε".into()));
    }
    if !(1..=MAX_REPEATS).contains(&spec.repeats) {
        return Err(Error::Privacy(format!("repeats must be in 1..={MAX_REPEATS}, got {}", spec.repeats)));
    }
    if cfg.head.inputs == crate::config::HeadInputs::TransferPlusBow {
        return Err(Error::config_key("head.inputs", "the sweep trains DP-SGD heads, and \"transfer+bow\" adds a score fitted on the labels without DP; sweep with --set head.inputs=transfer (or transfer+own)"));
    }
    if !spec.server_epsilons.is_empty()
        && let Some(url) = pipeline::remote_server(cfg)?
    {
        return Err(Error::config_key("he.server", format!(
            "is the remote server {url}: its network is trained by its owner, so a client sweeps only its own ε; \
             leave out --server-epsilons (or sweep the server's ε with he.server = \"local\" where the source data is)"
        )));
    }
    let server_settings: Vec<Option<Epsilon>> =
        if spec.server_epsilons.is_empty() { vec![None] } else { spec.server_epsilons.iter().copied().map(Some).collect() };
    let mut settings = Vec::new();
    for s in &server_settings {
        let server_cfg = match s {
            Some(e) => with_server_epsilon(cfg, spec.server_mechanism, *e)?,
            None => cfg.clone(),
        };
        let heads: Vec<RunConfig> = spec.client_epsilons.iter().map(|e| with_client_epsilon(&server_cfg, *e)).collect();
        settings.push((*s, server_cfg, heads));
    }
    // The server settings' releases against `server_privacy.total_epsilon`, all of them before the first is made.
    if !spec.server_epsilons.is_empty() {
        pipeline::check_releases_within_total(settings.iter().map(|(_, c, _)| c))?;
    }
    Ok(SweepPlan { cfg, spec, settings, journal: None })
}

impl SweepPlan<'_> {
    /// Keep each encrypted pass's journal in `dir` (the sweep's output folder), so a sweep killed during a pass
    /// resumes it ([`crate::he::OutputJournal`]; each server setting's network has a journal of its own). The caller
    /// removes the journals once the sweep's files are written ([`crate::he::journal::remove_all`]).
    pub fn journaled_in(mut self, dir: &std::path::Path) -> Self {
        self.journal = Some(dir.to_path_buf());
        self
    }

    /// Do the sweep's work.
    pub fn run(self) -> Result<Sweep> {
        let SweepPlan { cfg, spec, settings, journal } = self;
        run_settings(cfg, spec, settings, journal.as_deref())
    }
}

fn run_settings(cfg: &RunConfig, spec: &SweepSpec, settings: Vec<Setting>, journal: Option<&std::path::Path>) -> Result<Sweep> {
    let data = pipeline::prepare_data(cfg)?;
    // One set of client features for every head: the data-independent map as soon as one head is private, so the
    // ε = ∞ point is measured on the same features as the private ones.
    let any_private = spec.client_epsilons.iter().any(|e| matches!(e, Epsilon::Finite(_)));
    let (client_pipeline, client) = pipeline::client_features_for(cfg, &data.target, any_private)?;
    let input = pipeline::TransferInput::new(cfg, &client_pipeline, &data.target, &client)?.journaled_in(journal);
    let mut points = Vec::new();
    for (server_eps, server_cfg, heads) in &settings {
        // Through the remote server of `[he] server`, or here on the server's network of this setting.
        let pipeline::LowerOutputs { features: transferred, output_ranges, source_epsilon: server_reached, .. } = pipeline::lower_outputs(server_cfg, &input)?;
        tracing::info!(?server_eps, server_reached, "server setting ready");
        let references = pipeline::DpReferences::from_ranges(cfg, output_ranges.as_deref(), transferred.train.ncols(), client.train.ncols());
        let transferred = pipeline::head_inputs(cfg, &transferred, &client, None)?;
        let series = match server_eps {
            None => "server as configured".to_string(),
            Some(e @ Epsilon::Finite(_)) => format!("server ε = {e} ({})", spec.server_mechanism.name()),
            Some(e @ Epsilon::Infinite) => format!("server ε = {e} (no {})", spec.server_mechanism.name()),
        };
        let head = HeadSetting { series: &series, server_epsilon: server_eps.map(Epsilon::value), server_reached };
        train_heads(cfg, heads, spec, &transferred, &references.transferred, &head, &mut points)?;
    }
    if spec.raw_baseline {
        let head = HeadSetting { series: RAW_SERIES, server_epsilon: None, server_reached: f64::INFINITY };
        let heads: Vec<RunConfig> = spec.client_epsilons.iter().map(|e| with_client_epsilon(cfg, *e)).collect();
        let own = pipeline::dp_references(cfg, None, 0, client.train.ncols()).own;
        train_heads(cfg, &heads, spec, &client, &own, &head, &mut points)?;
    }
    Ok(Sweep {
        name: cfg.name.clone(),
        server_mechanism: spec.server_mechanism,
        encrypted: cfg.he.enabled,
        server: pipeline::remote_server(cfg)?,
        features: cfg.features.kind.name().to_string(),
        points,
        source_overlap: pipeline::local_source_overlap(cfg, &data.target)?,
    })
}

/// Mean and sample standard deviation.
fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 { v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var.sqrt())
}

/// One (server ε, client ε) setting averaged over its repeats.
#[derive(Debug, Clone, Serialize)]
pub struct SweepCell {
    /// The line.
    pub series: String,
    /// Server ε asked for (`None`: as configured).
    pub server_epsilon: Option<f64>,
    /// Server ε reached.
    pub server_epsilon_reached: f64,
    /// Client ε asked for.
    pub client_epsilon: f64,
    /// Client ε reached.
    pub client_epsilon_reached: f64,
    /// Mean test accuracy.
    pub accuracy_mean: f64,
    /// Its sample standard deviation over repeats.
    pub accuracy_std: f64,
    /// Repeats.
    pub repeats: usize,
}

/// An ε of the sweep's table: 3 decimals, rounded up ([`crate::privacy::shown`]).
fn fmt_eps(e: f64) -> String {
    crate::privacy::shown::rounded(e, 3, crate::privacy::shown::Side::AtLeast)
}

impl Sweep {
    /// The settings in the order run, averaged over repeats.
    pub fn cells(&self) -> Vec<SweepCell> {
        let mut cells: Vec<SweepCell> = Vec::new();
        for p in &self.points {
            if cells.iter().any(|c| c.series == p.series && c.client_epsilon == p.client_epsilon) {
                continue;
            }
            let acc: Vec<f64> = self.points.iter().filter(|q| q.series == p.series && q.client_epsilon == p.client_epsilon).map(|q| q.accuracy).collect();
            let (accuracy_mean, accuracy_std) = mean_std(&acc);
            cells.push(SweepCell {
                series: p.series.clone(),
                server_epsilon: p.server_epsilon,
                server_epsilon_reached: p.server_epsilon_reached,
                client_epsilon: p.client_epsilon,
                client_epsilon_reached: p.client_epsilon_reached,
                accuracy_mean,
                accuracy_std,
                repeats: acc.len(),
            });
        }
        cells
    }

    /// The Markdown table.
    pub fn to_markdown(&self) -> String {
        let mut s = format!(
            "# Privacy-utility sweep `{}`\n\n`{}` features; lower network {}; {}. Accuracy on the client's test split, mean ± std over repeats.\n\n\
             | series | server ε (reached) | client ε (reached) | accuracy | repeats |\n|---|---:|---:|---:|---:|\n",
            self.name,
            self.features,
            match (&self.server, self.encrypted) {
                (Some(url), _) => format!("encrypted (TFHE), through the server at {url}"),
                (None, true) => "encrypted (TFHE)".to_string(),
                (None, false) => "in the clear (he.enabled = false)".to_string(),
            },
            if self.points.iter().any(|p| p.server_epsilon.is_some()) {
                format!("server ε set through {}", self.server_mechanism.name())
            } else {
                "the server's network as configured".to_string()
            }
        );
        for c in self.cells() {
            let server = c.server_epsilon.map_or("-".to_string(), fmt_eps);
            let _ = writeln!(s, "| {} | {server} ({}) | {} ({}) | {:.4} ± {:.4} | {} |", c.series, fmt_eps(c.server_epsilon_reached), fmt_eps(c.client_epsilon), fmt_eps(c.client_epsilon_reached), c.accuracy_mean, c.accuracy_std, c.repeats);
        }
        if let Some(o) = &self.source_overlap {
            let _ = writeln!(s, "\n{}", o.describe());
        }
        s
    }

    /// Write `sweep.csv` (every head), `sweep.md` and `sweep.svg` into `dir`; returns their paths.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let csv_path = dir.join("sweep.csv");
        let mut w = csv::Writer::from_path(&csv_path).map_err(|e| Error::artifact(&csv_path, e.to_string()))?;
        for p in &self.points {
            w.serialize(p).map_err(|e| Error::artifact(&csv_path, e.to_string()))?;
        }
        w.flush().map_err(|e| Error::io(&csv_path, e))?;
        let md = dir.join("sweep.md");
        std::fs::write(&md, self.to_markdown()).map_err(|e| Error::io(&md, e))?;
        let svg = dir.join("sweep.svg");
        self.chart(&svg)?;
        Ok(vec![csv_path, md, svg])
    }

    /// The chart: mean accuracy (whiskers ± 1 std) against the client's ε, one line per server ε.
    pub fn chart(&self, path: &Path) -> Result<()> {
        use plotters::prelude::*;
        let cells = self.cells();
        let mut client: Vec<f64> = Vec::new();
        for c in &cells {
            if !client.contains(&c.client_epsilon) {
                client.push(c.client_epsilon);
            }
        }
        client.sort_by(f64::total_cmp);
        // x positions: the client ε values in order, evenly spaced (they are usually a geometric ladder plus ∞).
        let xpos = |e: f64| client.iter().position(|v| *v == e).unwrap_or(0) as f64;
        let labels: Vec<String> = client.iter().map(|e| if e.is_finite() { format!("{e}") } else { "∞ (no DP)".into() }).collect();
        let lo = cells.iter().map(|c| c.accuracy_mean - c.accuracy_std).fold(1.0f64, f64::min);
        let hi = cells.iter().map(|c| c.accuracy_mean + c.accuracy_std).fold(0.0f64, f64::max);
        let (ylo, yhi) = (((lo - 0.03) * 20.0).floor() / 20.0, ((hi + 0.03) * 20.0).ceil() / 20.0);
        let draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
            let root = SVGBackend::new(path, (760, 460)).into_drawing_area();
            root.fill(&WHITE)?;
            let mut chart = ChartBuilder::on(&root)
                .caption(format!("{} ({} features, {}): accuracy vs client ε", self.name, self.features, if self.encrypted { "encrypted" } else { "in the clear" }), ("sans-serif", 20))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(56)
                .build_cartesian_2d(-0.3f64..(client.len() as f64 - 0.7), ylo.max(0.0)..yhi.min(1.0))?;
            chart
                .configure_mesh()
                .x_labels(client.len())
                .x_label_formatter(&|x| labels.get(x.round() as usize).filter(|_| (x - x.round()).abs() < 1e-6).cloned().unwrap_or_default())
                .x_desc("client ε (DP-SGD on the head)")
                .y_desc("test accuracy")
                .draw()?;
            let mut series: Vec<&str> = Vec::new();
            for c in &cells {
                if !series.contains(&c.series.as_str()) {
                    series.push(&c.series);
                }
            }
            for (i, s) in series.iter().enumerate() {
                const COLORS: [RGBColor; 6] = [RGBColor(31, 119, 180), RGBColor(255, 127, 14), RGBColor(44, 160, 44), RGBColor(214, 39, 40), RGBColor(148, 103, 189), RGBColor(140, 86, 75)];
                let color = if *s == RAW_SERIES { BLACK.mix(0.55) } else { COLORS[i % COLORS.len()].to_rgba() };
                let mut line: Vec<&SweepCell> = cells.iter().filter(|c| c.series == *s).collect();
                line.sort_by(|a, b| a.client_epsilon.total_cmp(&b.client_epsilon));
                let name = s.to_string();
                chart
                    .draw_series(LineSeries::new(line.iter().map(|c| (xpos(c.client_epsilon), c.accuracy_mean)), color.stroke_width(2)))?
                    .label(name)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
                chart.draw_series(line.iter().map(|c| Circle::new((xpos(c.client_epsilon), c.accuracy_mean), 4, color.filled())))?;
                chart.draw_series(line.iter().filter(|c| c.repeats > 1).map(|c| {
                    let x = xpos(c.client_epsilon);
                    PathElement::new(vec![(x, c.accuracy_mean - c.accuracy_std), (x, c.accuracy_mean + c.accuracy_std)], color.stroke_width(1))
                }))?;
            }
            chart.configure_series_labels().position(SeriesLabelPosition::LowerRight).background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
            root.present()?;
            Ok(())
        };
        draw().map_err(|e| Error::artifact(path, format!("cannot draw the chart: {e}")))
    }
}
