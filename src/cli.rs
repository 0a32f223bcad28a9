//! The command line: a thin layer over [`crate::pipeline`]. Exit codes: 0 success, 2 bad input (config, data,
//! arguments), 1 any other failure.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{QUICKSTART_TOML, RunConfig};
use crate::error::{Error, Result};
use crate::model::{self, Cpu, Head};
use crate::pipeline::{self, FeatureSplit};

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
    fn load(&self) -> Result<RunConfig> {
        let mut overrides = self.set.clone();
        if let Some(seed) = self.seed {
            overrides.push(format!("seed={seed}"));
        }
        if let Some(dir) = &self.output_dir {
            overrides.push(format!("output_dir={}", toml::Value::String(dir.display().to_string())));
        }
        match &self.config {
            Some(path) => RunConfig::load(path, &overrides),
            None => RunConfig::from_toml_str(QUICKSTART_TOML, "configs/quickstart.toml (embedded)", &overrides),
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("cryptotl={default},warn")));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    if cli.quiet {
        crate::progress::hide();
    }
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            if e.is_input_error() { ExitCode::from(2) } else { ExitCode::from(1) }
        }
    }
}

fn features_path(cfg: &RunConfig) -> PathBuf {
    cfg.output_dir().join("features.json")
}

fn dispatch(cmd: Command) -> Result<()> {
    match cmd {
        Command::CheckConfig(a) => {
            let cfg = a.load()?;
            print!("{}", toml::to_string(&cfg).expect("config serialises"));
            eprintln!("config OK");
        }
        Command::Run(a) => {
            let cfg = a.load()?;
            let report = pipeline::run(&cfg)?;
            println!("{}", report.to_markdown().split("\n## Head training").next().unwrap_or(""));
            println!("report written to {}", cfg.output_dir().join("report.md").display());
        }
        Command::Pretrain(a) => {
            let cfg = a.load()?;
            let data = pipeline::prepare_data(&cfg)?;
            let lower = pipeline::pretrain(&cfg, &data.source)?;
            println!(
                "lower network {} {} (source test accuracy {:.4})",
                if lower.from_cache { "loaded from" } else { "pretrained and saved to" },
                lower.cache_dir.display(),
                lower.source_test.accuracy
            );
        }
        Command::Features(a) => {
            let cfg = a.load()?;
            let data = pipeline::prepare_data(&cfg)?;
            let lower = pipeline::pretrain(&cfg, &data.source)?;
            let (client_pipeline, client) = pipeline::client_features(&cfg, &data.target)?;
            let transferred = client.map(|x| pipeline::lower_forward(&lower.net, x))?;
            let out = cfg.output_dir();
            std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
            client_pipeline.save(&out.join("client_features.json"))?;
            cfg.save(&out.join("config.toml"))?;
            transferred.save(&features_path(&cfg))?;
            println!("transferred features written to {}", features_path(&cfg).display());
        }
        Command::TrainHead(a) => {
            let cfg = a.load()?;
            let fs = load_features(&features_path(&cfg))?;
            let head = pipeline::train_head(&cfg, &fs, "head");
            model::save_module(&head.trained.model, &cfg.output_dir().join("head"))?;
            println!("head trained ({} epochs, best {}); validation accuracy {:.4}; saved to {}",
                head.trained.history.len(), head.trained.best_epoch,
                head.trained.history.get(head.trained.best_epoch.saturating_sub(1)).map_or(0.0, |e| e.val_accuracy),
                cfg.output_dir().join("head.bin").display());
        }
        Command::Evaluate(a) => {
            let cfg = a.load()?;
            let fs = load_features(&features_path(&cfg))?;
            let input = fs.test.ncols();
            let skeleton = Head::<Cpu>::new(&cfg.head, input, cfg.head_hidden(input), cfg.seed, &Default::default());
            let head = model::load_module(skeleton, &cfg.output_dir().join("head"), &Default::default())?;
            let metrics = pipeline::evaluate(&head, &fs);
            println!("{}", serde_json::to_string_pretty(&metrics).expect("serialises"));
        }
    }
    Ok(())
}

fn load_features(path: &Path) -> Result<FeatureSplit> {
    if !path.exists() {
        return Err(Error::artifact(path, "not found: run `cryptotl features <config>` first"));
    }
    FeatureSplit::load(path)
}
