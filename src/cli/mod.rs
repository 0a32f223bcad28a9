//! The command line: a thin layer over [`crate::pipeline`]. Exit codes: 0 success, 2 bad input (config, data,
//! arguments), 1 any other failure.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{EMBEDDED_CONFIG_NAME, RunConfig};
use crate::error::{Error, Result};
use crate::model::{self, Cpu};
use crate::pipeline::{self, FeatureSplit};
use crate::privacy::{AccountantKind, SubsampledGaussian, calibrate_noise, shown};
use serde::Serialize;

mod server;
use server::{ServeArgs, ServerCommand};

/// Private transfer learning (CryptoTL): a frozen server network, a client head, reports.
#[derive(Parser, Debug)]
#[command(name = "cryptotl", version, about, propagate_version = true)]
pub struct Cli {
    /// More log output (-v info, -vv debug). Logs go to stderr.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// No progress bars.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The whole pipeline: pretrain (or cached) -> features -> frozen lower net -> head -> baselines -> report.
    Run(ConfigArgs),
    /// Pretrain the server's lower network on the source data (cached by config hash).
    Pretrain(ConfigArgs),
    /// Client features of the target data through the frozen lower network, saved to the run directory.
    Features(ConfigArgs),
    /// Train the client's head on the saved features.
    TrainHead(ConfigArgs),
    /// Evaluate the saved head on the saved test features.
    Evaluate(ConfigArgs),
    /// Validate a config file and print it with every default filled in.
    CheckConfig(ConfigArgs),
    /// Privacy budget of DP-SGD: ε for a noise multiplier, or the noise multiplier for a target ε.
    Budget(BudgetArgs),
    /// Embed texts: one text per line from --input or stdin, one JSON array of floats per line on stdout.
    Embed(EmbedArgs),
    /// Learning curves: the heads (transfer, raw features, bag of words; DP ones with [privacy]) trained on
    /// seeded subsets of 16, 32, 64, ... labelled examples; JSON, Markdown and SVG in `<output dir>/curve/`.
    Curve(CurveArgs),
    /// Empirical privacy audit of the DP-SGD head (one run, Steinke, Nasr & Jagielski 2023): canaries, each in
    /// training with probability 1/2, guessed from the trained head; the ε lower bound this proves beside the
    /// accountant's ε. Needs `[privacy]`; writes `<output dir>/audit.json` and `audit.md`.
    Audit(AuditArgs),
    /// Rebuild the MiniLM embeddings of the embedded datasets that ship in the binary (needs the model:
    /// `python3 datasets/fetch_model.py`); then rebuild the binary.
    ShipEmbeddings(ShipArgs),
    /// Pretrain the config's server network (or take it from the cache) and write it as the network shipped in
    /// the binary (`datasets/shipped/sentiment_network/`); then rebuild the binary. Needs the config's sources.
    ShipNetwork(ShipNetworkArgs),
    /// Privacy-utility sweep: head accuracy against the client's ε (and the server's), as CSV, Markdown and SVG.
    Sweep(SweepArgs),
    /// The model owner's side: build the model directory `serve` runs, issue client tokens.
    #[command(subcommand)]
    Server(ServerCommand),
    /// Classify new texts with a finished run (its saved featurizer and head), through the same encrypted path
    /// (`[he] server`: local simulation or remote). Texts one per line from --input or stdin; one JSON line each on
    /// stdout: {"label": 0|1, "probability": p}, written 256 texts at a time as they are scored; a blank line is no
    /// text and gets {"label": null, "probability": null}, and is not sent. A prediction stopped
    /// during its encrypted pass resumes from its journal in the run directory when run again (and writes every
    /// line again).
    Predict(PredictArgs),
    /// Run the model owner's encrypted-inference service over HTTP (TLS with --tls-cert/--tls-key; plain HTTP only
    /// on loopback). Prints `listening on <url>` once it accepts connections; stops on SIGINT/SIGTERM.
    Serve(ServeArgs),
}

impl Command {
    /// The file of the config this command loads, as its errors should name it.
    fn config_file(&self) -> Option<String> {
        let args = match self {
            Command::Run(c) | Command::Pretrain(c) | Command::Features(c) | Command::TrainHead(c) | Command::Evaluate(c) | Command::CheckConfig(c) => c,
            Command::Embed(a) => &a.config,
            Command::Curve(a) => &a.config,
            Command::Audit(a) => &a.config,
            Command::ShipNetwork(a) => &a.config,
            Command::Sweep(a) => &a.config,
            Command::Server(ServerCommand::Build(a)) => &a.config,
            Command::Server(ServerCommand::Membership(c)) => c,
            Command::Predict(a) => return Some(a.run.join("config.toml").display().to_string()),
            Command::Server(ServerCommand::Token(_)) | Command::Budget(_) | Command::ShipEmbeddings(_) | Command::Serve(_) => return None,
        };
        Some(args.file_name())
    }
}

#[derive(Args, Debug)]
struct PredictArgs {
    /// The run directory (`run`, or `features` + `train-head`): its config.toml, client_features.json, head (and,
    /// for a `transfer+bow` head, bow_score.json).
    #[arg(long)]
    run: PathBuf,
    /// Texts, one per line, UTF-8 (a blank line is a text too: one output line per input line). Default: stdin.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Override a key of the run's config (e.g. the server's address: `--set he.server="https://host:8443"`).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

fn parse_feature_kind(s: &str) -> std::result::Result<crate::config::FeatureKind, String> {
    s.parse()
}

#[derive(Args, Debug)]
struct EmbedArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Featurizer (default: the config's `features.kind`).
    #[arg(long, value_parser = parse_feature_kind)]
    featurizer: Option<crate::config::FeatureKind>,
    /// The featurizer's own output (for minilm: the L2-normalised sentence embedding), without the client's
    /// min-max scaler. Default: the exact vector the pipeline feeds the lower network (scaled).
    #[arg(long)]
    raw: bool,
    /// Texts, one per line, UTF-8 (a blank line is a text too: one output line per input line). Default: stdin.
    #[arg(long)]
    input: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct ShipArgs {
    /// The model folder.
    #[arg(long, default_value = crate::features::minilm::DEFAULT_MODEL_DIR)]
    model_dir: PathBuf,
    /// Where to write the table.
    #[arg(long, default_value = crate::features::shipped::SHIPPED_EMBEDDINGS_PATH)]
    out: PathBuf,
}

#[derive(Args, Debug)]
struct ShipNetworkArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Where to write `manifest.json` and `pretrain_net.bin`.
    #[arg(long, default_value = crate::shipped_network::SHIPPED_NETWORK_DIR)]
    out: PathBuf,
}

#[derive(Args, Debug)]
struct CurveArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Output folder. Default: `<run output dir>/curve`.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct AuditArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Canaries (each included with probability 1/2). Default: `[audit] canaries` (1000).
    #[arg(long)]
    canaries: Option<usize>,
    /// Seed of the canaries' labels and inclusion (not of the training noise). Default: `[audit] seed` (0).
    #[arg(long)]
    canary_seed: Option<u64>,
}

#[derive(Args, Debug)]
struct SweepArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Client ε values for DP-SGD on the head, comma-separated; `inf` = no DP. E.g. 0.5,1,2,4,8,inf
    #[arg(long, required = true, allow_hyphen_values = true)]
    client_epsilons: String,
    /// Server ε values, comma-separated (`inf` = mechanism off). Default: the config's server privacy as it is.
    #[arg(long, allow_hyphen_values = true)]
    server_epsilons: Option<String>,
    /// Which server mechanism `--server-epsilons` sets: weight-noise or dp-pretraining.
    #[arg(long, default_value = "weight-noise")]
    server_mechanism: crate::sweep::ServerMechanism,
    /// Skip the client-alone line (the same heads on the raw features, no transfer).
    #[arg(long)]
    no_raw_baseline: bool,
    /// Heads trained per setting (fresh DP noise and seeds), averaged; 1 to 1000.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Output folder. Default: `<run output dir>/sweep`.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("noise").required(true).args(["noise_multiplier", "target_epsilon"])))]
struct BudgetArgs {
    /// Poisson sampling rate q in (0, 1] (expected batch size / dataset size).
    #[arg(long, allow_negative_numbers = true)]
    sampling_rate: f64,
    /// Noise multiplier σ > 0 (noise std / clip norm): prints ε.
    #[arg(long, allow_negative_numbers = true)]
    noise_multiplier: Option<f64>,
    /// Target ε > 0: prints the smallest σ that meets it.
    #[arg(long, allow_negative_numbers = true)]
    target_epsilon: Option<f64>,
    /// Number of steps T >= 1.
    #[arg(long)]
    steps: usize,
    /// δ in (0, 1).
    #[arg(long, allow_negative_numbers = true)]
    delta: f64,
    /// Accountant: zcdp, rdp, pld or tightest.
    #[arg(long, default_value = "tightest")]
    accountant: AccountantKind,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// The answer of `cryptotl budget --json`.
#[derive(Debug, Serialize)]
struct BudgetAnswer {
    accountant: AccountantKind,
    sampling_rate: f64,
    noise_multiplier: f64,
    steps: usize,
    delta: f64,
    epsilon: f64,
    /// The exact ε, where one exists (q = 1).
    exact_epsilon: Option<f64>,
    /// Why the accountant answered ∞, when it could not evaluate the mechanism.
    note: Option<String>,
}

fn budget(a: &BudgetArgs) -> Result<()> {
    let acct = a.accountant.accountant();
    let (sigma, eps) = match (a.noise_multiplier, a.target_epsilon) {
        (Some(sigma), _) => (sigma, acct.epsilon(&SubsampledGaussian::new(a.sampling_rate, sigma)?, a.steps, a.delta)?),
        (None, Some(target)) => {
            SubsampledGaussian::new(a.sampling_rate, 1.0)?;
            let sigma = calibrate_noise(acct.as_ref(), a.sampling_rate, a.steps, a.delta, target)?;
            (sigma, acct.epsilon(&SubsampledGaussian::new(a.sampling_rate, sigma)?, a.steps, a.delta)?)
        }
        (None, None) => unreachable!("clap requires one of the two"),
    };
    let m = SubsampledGaussian::new(a.sampling_rate, sigma)?;
    let num = crate::config::shown_number;
    // At q = 1 the exact answer exists: show it beside the accountant's (which is never below it).
    let exact_epsilon = if a.sampling_rate == 1.0 { Some(crate::privacy::exact::gaussian_epsilon(sigma, a.steps as u64, a.delta)?) } else { None };
    let note = if a.accountant == crate::privacy::AccountantKind::Pld { crate::privacy::pld::Pld::unsupported(&m) } else { None };
    let answer = BudgetAnswer { accountant: a.accountant, sampling_rate: a.sampling_rate, noise_multiplier: sigma, steps: a.steps, delta: a.delta, epsilon: eps, exact_epsilon, note };
    if a.json {
        println!("{}", serde_json::to_string(&answer).expect("serialises"));
    } else if a.target_epsilon.is_some() {
        println!("noise multiplier σ = {} gives ε = {} (target {}) at δ = {} after {} steps with q = {} ({})",
            shown::rounded(sigma, 6, shown::Side::AtLeast), shown::rounded(eps, 6, shown::Side::AtLeast),
            num(a.target_epsilon.unwrap_or_default()), num(a.delta), a.steps, num(a.sampling_rate), acct.name());
    } else {
        println!("ε = {} at δ = {} after {} steps with q = {}, σ = {sigma:?} ({})", shown::rounded(eps, 6, shown::Side::AtLeast), num(a.delta), a.steps, num(a.sampling_rate), acct.name());
    }
    if !a.json {
        if let Some(x) = answer.exact_epsilon {
            println!("exact (q = 1: the Gaussian mechanism with μ = √T/σ): ε = {}", shown::rounded(x, 6, shown::Side::AtLeast));
        }
        if let Some(n) = &answer.note {
            println!("note: {n}; `--accountant rdp` gives a finite bound");
        }
    }
    Ok(())
}

#[derive(Args, Debug)]
struct ConfigArgs {
    /// Config file (TOML). Default: the embedded `configs/quickstart.toml`.
    config: Option<PathBuf>,
    /// Override a config key, e.g. `--set lower.hidden=128` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Override the seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Override the output directory.
    #[arg(long)]
    output_dir: Option<PathBuf>,
}

impl ConfigArgs {
    /// The config's name in error messages: its path, or the embedded default's name.
    fn file_name(&self) -> String {
        self.config.as_ref().map_or_else(|| EMBEDDED_CONFIG_NAME.to_string(), |p| p.display().to_string())
    }

    fn load(&self) -> Result<RunConfig> {
        let mut overrides = self.set.clone();
        if let Some(seed) = self.seed {
            overrides.push(format!("seed={seed}"));
        }
        if let Some(dir) = &self.output_dir {
            overrides.push(format!("output_dir={}", toml::Value::String(dir.display().to_string())));
        }
        RunConfig::load_or_quickstart(self.config.as_deref(), &overrides)
    }
}

fn init_logging(verbose: u8, service: bool) {
    let default = match verbose {
        // A service logs one line per request by default.
        0 if service => "info",
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("cryptotl={default},warn")));
    use std::io::IsTerminal as _;
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal()).try_init();
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, matches!(cli.command, Command::Serve(_)));
    if cli.quiet {
        crate::progress::hide();
    }
    // Errors found after the config was loaded name it as `<config>`: the CLI knows its path.
    let config_file = cli.command.config_file();
    match dispatch(cli.command).map_err(|e| match &config_file {
        Some(file) => e.in_config_file(file),
        None => e,
    }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            if e.is_input_error() { ExitCode::from(2) } else { ExitCode::from(1) }
        }
    }
}

fn features_path(cfg: &RunConfig) -> PathBuf {
    cfg.output_dir().join(pipeline::FEATURES_FILE)
}

/// Texts `predict` (and `embed`) read and answer at a time: a batch's lines are written before the next is read.
const PREDICT_BATCH: usize = 256;

/// One JSON line per text of `input` (stdin without one), [`PREDICT_BATCH`] texts at a time: a batch's lines are
/// written and flushed before the next is read, so a pipe's first answers come before its input ends. `answer` is
/// first called once there is a text (an empty input costs no model).
fn answer_lines<T: serde::Serialize>(input: Option<&Path>, mut answer: impl FnMut(&[String]) -> Result<Vec<T>>) -> Result<()> {
    use std::io::{IsTerminal as _, Write as _};
    if input.is_none() && std::io::stdin().is_terminal() {
        // Typed texts: say what is awaited, or the command looks hung.
        eprintln!("reading texts from the terminal, one per line (Ctrl-D ends; --input FILE reads a file)");
    }
    let mut lines = crate::data::TextLines::open(input)?;
    let mut out = std::io::stdout().lock();
    loop {
        let batch = lines.next_available(PREDICT_BATCH)?;
        if batch.is_empty() {
            return Ok(());
        }
        for answered in answer(&batch)? {
            let line = serde_json::to_string(&answered).map_err(|e| Error::Internal(e.to_string()))?;
            writeln!(out, "{line}").map_err(|e| Error::io(Path::new("<stdout>"), e))?;
        }
        out.flush().map_err(|e| Error::io(Path::new("<stdout>"), e))?;
    }
}

fn predict(a: &PredictArgs) -> Result<()> {
    let mut overrides = a.set.clone();
    overrides.push(format!("output_dir={}", toml::Value::String(a.run.display().to_string())));
    let config = a.run.join("config.toml");
    if !config.is_file() {
        let why = if a.run.is_dir() { "has no config.toml" } else { "does not exist" };
        return Err(Error::ConfigSyntax {
            file: format!("--run {}", a.run.display()),
            message: format!("{why}: give the folder a finished `cryptotl run` wrote (its output_dir, `runs/<name>` by default)"),
        });
    }
    let cfg = RunConfig::load(&config, &overrides)?;
    let mut predictor: Option<pipeline::Predictor> = None;
    answer_lines(a.input.as_deref(), |batch| {
        let blank = |t: &String| t.trim().is_empty();
        let texts: Vec<String> = batch.iter().filter(|t| !blank(t)).cloned().collect();
        // Like an empty input, blank lines alone cost no model.
        let mut scored = match (&mut predictor, texts.is_empty()) {
            (_, true) => Vec::new(),
            (Some(p), false) => p.predict(&texts)?,
            (None, false) => predictor.insert(pipeline::Predictor::open(&cfg, &a.run)?).predict(&texts)?,
        }
        .into_iter();
        let lines: Vec<PredictLine> = batch
            .iter()
            .map(|t| match blank(t) {
                true => None,
                false => scored.next(),
            })
            .map(|s| PredictLine { label: s.as_ref().map(|s| s.label), probability: s.map(|s| s.probability) })
            .collect();
        Ok(lines)
    })?;
    predictor.map_or(Ok(()), |p| p.finish())
}

/// One line of `predict`'s output: both `null` for a blank input line, so the output keeps a line per input line.
#[derive(serde::Serialize)]
struct PredictLine {
    label: Option<u8>,
    probability: Option<f32>,
}

fn dispatch(cmd: Command) -> Result<()> {
    match cmd {
        Command::Serve(a) => server::serve(&a),
        Command::Predict(a) => predict(&a),
        Command::Server(c) => server::server_command(&c),
        Command::Budget(a) => budget(&a),
        Command::CheckConfig(a) => check_config(&a),
        Command::Run(a) => run(&a),
        Command::Pretrain(a) => pretrain(&a),
        Command::Features(a) => features(&a),
        Command::TrainHead(a) => train_head(&a),
        Command::Embed(a) => embed(&a),
        Command::ShipEmbeddings(a) => ship_embeddings(&a),
        Command::ShipNetwork(a) => ship_network(&a),
        Command::Curve(a) => curve(&a),
        Command::Audit(a) => audit(&a),
        Command::Sweep(a) => sweep(&a),
        Command::Evaluate(a) => evaluate(&a),
    }
}

/// `cryptotl check-config`: the config with every default filled in, on stdout.
fn check_config(a: &ConfigArgs) -> Result<()> {
    let cfg = a.load()?;
    print!("{}", toml::to_string(&cfg).map_err(|e| Error::Internal(format!("the config does not serialise: {e}")))?);
    eprintln!("config OK");
    Ok(())
}

/// `cryptotl run`: the whole pipeline, its summary on stdout.
fn run(a: &ConfigArgs) -> Result<()> {
    let cfg = a.load()?;
    let report = pipeline::run(&cfg)?;
    println!("{}", report.summary_markdown());
    print!("{}", report.headline());
    println!("report written to {}", cfg.output_dir().join("report.md").display());
    Ok(())
}

/// `cryptotl pretrain`: the server's network (cached, shipped or trained now), its source accuracy per task, what it was
/// trained on and the server's budget rows.
fn pretrain(a: &ConfigArgs) -> Result<()> {
    let cfg = a.load()?;
    let lower = pipeline::server_lower_network(&cfg)?;
    println!(
        "lower network {} (source test accuracy {:.4})",
        lower.origin.describe_why(&lower.cache_dir.display().to_string(), lower.retrained_because),
        lower.meta.source_test.accuracy
    );
    for t in &lower.meta.source_tasks {
        println!("  {}: {:.4} on {} test examples", t.source, t.accuracy, t.test_examples);
    }
    match &lower.meta.trained_on {
        Some(t) => println!(
            "  trained on source data {}{}",
            t.source,
            t.embedding_table.as_ref().map_or(String::new(), |e| format!(" with the shipped embeddings {}", &e[..e.len().min(16)]))
        ),
        None => println!("  records no hash of its source data (made by an older version: not checked against the sources)"),
    }
    // What the network as released gives the source data (DP pretraining, weight noise, the stored releases).
    print_server_rows(&crate::privacy::budget::ServerStatement::new(lower.mechanisms(None, &crate::privacy::budget::fitted_outside(&cfg)))?);
    Ok(())
}

/// `cryptotl features`: the head's inputs, written to the run directory.
fn features(a: &ConfigArgs) -> Result<()> {
    let cfg = a.load()?;
    let done = pipeline::features(&cfg)?;
    if let Some((url, he)) = &done.remote {
        let resumed = if he.resumed_samples > 0 { format!(" ({} of them from the journal of an interrupted run)", he.resumed_samples) } else { String::new() };
        eprintln!("{} samples through {url}{resumed}: server {:.3} s per sample (median), {:.1} KiB down per sample",
            he.samples, he.server_seconds_median, he.download_bytes_per_sample as f64 / 1024.0);
    }
    println!("transferred features written to {}", done.path.display());
    Ok(())
}

/// `cryptotl train-head`: the head on the saved features (with DP-SGD when `[privacy]` is on), saved to the run
/// directory.
fn train_head(a: &ConfigArgs) -> Result<()> {
    let cfg = a.load()?;
    let mut manifest = crate::rundir::RunManifest::load_for(&cfg)?;
    let fs = load_features(&features_path(&cfg))?;
    // With [privacy] on, the saved head is trained with DP-SGD (the only head this command saves).
    let plan = pipeline::privacy_plan(&cfg, fs.train.nrows())?;
    // A run directory from before DP heads were centred has no reference point: such a head trains uncentred.
    let reference = manifest.dp_references.as_ref().map(|r| r.transferred.clone()).unwrap_or_default();
    let head = pipeline::train_configured_head(&cfg, &fs, &reference, plan.as_ref(), 0, "head")?;
    if let Some(plan) = &plan {
        println!("DP-SGD: ε = {} at δ = {} ({}), σ = {:.4}, {} steps", shown::epsilon(plan.epsilon), shown::delta(plan.delta), plan.accountant, plan.noise_multiplier, plan.steps_allowed);
    }
    model::save_module(&head.trained.model, &cfg.output_dir().join("head"))?;
    manifest.head = Some(crate::rundir::HeadShape::of(&cfg, fs.train.ncols()));
    manifest.write(&cfg.output_dir())?;
    println!("head trained ({} epochs, best {}); validation accuracy {:.4}; saved to {}",
        head.trained.history.len(), head.trained.best_epoch,
        head.trained.kept_validation_accuracy().unwrap_or(0.0),
        cfg.output_dir().join("head.bin").display());
    Ok(())
}

/// `cryptotl ship-embeddings`: the embedded datasets' MiniLM table, written where the binary takes it from.
fn ship_embeddings(a: &ShipArgs) -> Result<()> {
    let bytes = crate::features::shipped::build(&a.model_dir, 32)?;
    let table = crate::features::shipped::ShippedEmbeddings::decode(&bytes)?;
    crate::atomic::write(&a.out, &bytes)?;
    println!("{} embeddings ({} bytes) written to {}; rebuild the binary to ship them", table.len(), bytes.len(), a.out.display());
    Ok(())
}

/// `cryptotl ship-network`: the config's server network, written where the binary takes it from.
fn ship_network(a: &ShipNetworkArgs) -> Result<()> {
    let cfg = a.config.load()?;
    let m = crate::shipped_network::build(&cfg, &a.out)?;
    println!("{} ({} bytes, key {}) written to {}; source test accuracy {:.4}", m.name, m.network_bytes, m.meta.key, a.out.display(), m.meta.source_test.accuracy);
    for t in &m.meta.source_tasks {
        println!("  {}: {:.4} on {} test examples", t.source, t.accuracy, t.test_examples);
    }
    println!("rebuild the binary to ship it");
    Ok(())
}

/// `cryptotl curve`: the learning curves, in `<output dir>/curve/` (or `--out`).
fn curve(a: &CurveArgs) -> Result<()> {
    let cfg = a.config.load()?;
    let dir = a.out.clone().unwrap_or_else(|| cfg.output_dir().join("curve"));
    let _lock = crate::atomic::claim_dir(&dir)?;
    let curves = pipeline::curves(&cfg, Some(&dir))?;
    let files = curves.write(&dir)?;
    finish_output_dir(&dir, &curves.to_markdown(), &files)
}

/// `cryptotl audit`: the one-run privacy audit, `audit.json` and `audit.md` in the run directory.
fn audit(a: &AuditArgs) -> Result<()> {
    let cfg = a.config.load()?;
    let canaries = a.canaries.unwrap_or(cfg.audit.canaries);
    // A refused audit leaves no folder behind; a folder that cannot be written is found before the work.
    crate::audit::check(&cfg, canaries)?;
    let out = cfg.output_dir();
    let _lock = crate::atomic::claim_dir(&out)?;
    let result = crate::audit::audit_config(&cfg, canaries, a.canary_seed.unwrap_or(cfg.audit.seed))?;
    let json = serde_json::to_vec_pretty(&result).map_err(|e| Error::Internal(format!("audit result does not serialise: {e}")))?;
    crate::atomic::write(&out.join("audit.json"), &json)?;
    let md = result.to_markdown();
    crate::atomic::write(&out.join("audit.md"), md.as_bytes())?;
    println!("{md}");
    println!("written: {} and audit.md", out.join("audit.json").display());
    Ok(())
}

/// `cryptotl sweep`: the privacy-utility sweep, in `<output dir>/sweep/` (or `--out`).
fn sweep(a: &SweepArgs) -> Result<()> {
    let cfg = a.config.load()?;
    let spec = crate::sweep::SweepSpec {
        client_epsilons: crate::sweep::Epsilon::parse_list(&a.client_epsilons)?,
        server_epsilons: a.server_epsilons.as_deref().map(crate::sweep::Epsilon::parse_list).transpose()?.unwrap_or_default(),
        server_mechanism: a.server_mechanism,
        raw_baseline: !a.no_raw_baseline,
        repeats: a.repeats,
    };
    let dir = a.out.clone().unwrap_or_else(|| cfg.output_dir().join("sweep"));
    // Refused settings leave no folder behind; a folder that cannot be written is found before the work.
    let plan = crate::sweep::plan(&cfg, &spec)?;
    let _lock = crate::atomic::claim_dir(&dir)?;
    let sweep = plan.journaled_in(&dir).run()?;
    let files = sweep.write(&dir)?;
    finish_output_dir(&dir, &sweep.to_markdown(), &files)
}

/// After `curve` or `sweep` wrote its `files` in `dir`: the encrypted passes' journals there have served; print the
/// table (`markdown`) and what was written.
fn finish_output_dir(dir: &Path, markdown: &str, files: &[PathBuf]) -> Result<()> {
    crate::he::journal::remove_all(dir)?;
    println!("{markdown}");
    for f in files {
        println!("written: {}", f.display());
    }
    Ok(())
}

/// `cryptotl evaluate`: the saved head's metrics on the saved test features, on stdout.
fn evaluate(a: &ConfigArgs) -> Result<()> {
    let cfg = a.load()?;
    let manifest = crate::rundir::RunManifest::load_for(&cfg)?;
    let fs = load_features(&features_path(&cfg))?;
    let input = fs.test.ncols();
    manifest.check_head(&cfg, input)?;
    let skeleton = pipeline::new_head::<Cpu>(&cfg, input, &Default::default());
    let head = model::load_module(skeleton, &cfg.output_dir().join("head"), &Default::default())?;
    let metrics = pipeline::evaluate(&head, &fs);
    println!("{}", serde_json::to_string_pretty(&metrics).expect("serialises"));
    Ok(())
}

/// What `embed` does to each batch of texts: one row per text.
type EmbedBatch = dyn Fn(&[String]) -> Result<ndarray::Array2<f32>>;

/// `cryptotl embed`: the client's featurizer (and scaler) over lines of `--input` or stdin. The pipeline is the one
/// a run saved (`<output_dir>/client_features.json`) when it is of the same kind, else fitted on the config's
/// target training split as a run would fit it.
fn embed(a: &EmbedArgs) -> Result<()> {
    let mut cfg = a.config.load()?;
    if let Some(kind) = a.featurizer
        && kind != cfg.features.kind
    {
        cfg = cfg.edited("--featurizer", |c| c.features = crate::config::FeaturesConfig { kind, dim: None, ..c.features.clone() })?;
    }
    let mut embedder = None;
    answer_lines(a.input.as_deref(), |texts| {
        let embed = match &embedder {
            Some(e) => e,
            None => embedder.insert(embed_batch(&cfg, a.raw)?),
        };
        Ok(embed(texts)?.rows().into_iter().map(|row| row.to_vec()).collect())
    })
}

/// The featurizer `embed` runs: MiniLM alone for `--raw` minilm, else the run's saved client pipeline (or one
/// fitted as a run would fit it), with or without its scaler.
fn embed_batch(cfg: &RunConfig, raw: bool) -> Result<Box<EmbedBatch>> {
    use crate::features::Featurizer;
    if raw && cfg.features.kind == crate::config::FeatureKind::Minilm {
        // MiniLM fits nothing: the featurizer of a pipeline fitted on no data is the raw model.
        let minilm = crate::features::FeaturePipeline::data_independent(&cfg.features)?.featurizer;
        return Ok(Box::new(move |t| minilm.transform(t)));
    }
    let saved = cfg.output_dir().join("client_features.json");
    let pipeline = match crate::features::FeaturePipeline::load(&saved) {
        Ok(p) if p.featurizer.kind() == cfg.features.kind && p.dim() == cfg.features.dim() => p,
        _ => {
            let data = pipeline::prepare_data(cfg)?;
            pipeline::client_features(cfg, &data.target)?.0
        }
    };
    Ok(if raw { Box::new(move |t| pipeline.featurizer.transform(t)) } else { Box::new(move |t| pipeline.transform(t)) })
}

fn load_features(path: &Path) -> Result<FeatureSplit> {
    if !path.exists() {
        return Err(Error::artifact(path, "not found: run `cryptotl features <config>` first"));
    }
    FeatureSplit::load(path)
}

/// The server's rows of the budget table, one line each (`server build`, `pretrain`).
fn print_server_rows(statement: &crate::privacy::budget::ServerStatement) {
    for r in &statement.rows {
        println!("  privacy: {}: ε = {}", r.mechanism, r.epsilon.map_or("∞".into(), |e| format!("{} at δ = {}", shown::epsilon(e), shown::delta(r.delta.unwrap_or(0.0)))));
    }
}
