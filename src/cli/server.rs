//! The model owner's commands: `server build` (its network compiled into a model directory), `server token`,
//! `server membership` and `serve` (the encrypted-inference service over HTTP, [`cryptotl_server::http`]). Nothing
//! here reads a client's data or keys.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{ConfigArgs, print_server_rows};
use crate::error::{Error, Result};
use crate::pipeline;

#[derive(Subcommand, Debug)]
pub(super) enum ServerCommand {
    /// Pretrain (or take from the cache) the config's server network, apply its privacy mechanisms, compile the
    /// integer program, and write the model directory: program, public interface, privacy statement, manifest.
    Build(ServerBuildArgs),
    /// Issue a bearer token for a client: appends `<name> <sha256 of the token>` to the token file and prints the
    /// token (give it to the client; the server keeps only its hash). With --revoke, remove the client's token
    /// instead. A running `serve` follows the file from its next request.
    Token(TokenArgs),
    /// Membership inference on the server's source data through the network's outputs (what a client sees): the
    /// loss attack's AUC and TPR at 1% FPR, members from the source training split against the source test split.
    /// Needs the source data. Writes `<run output dir>/membership.json`.
    Membership(ConfigArgs),
}

#[derive(Args, Debug)]
pub(super) struct ServerBuildArgs {
    #[command(flatten)]
    pub(super) config: ConfigArgs,
    /// The model directory to write. Default: `<run output dir>/server_model`.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub(super) struct TokenArgs {
    /// The client's name (for logs; letters, digits, `-`, `_`, `.`).
    #[arg(long)]
    name: String,
    /// The server's token file (created if missing, owner-only).
    #[arg(long)]
    tokens: PathBuf,
    /// Remove the client's token from the file instead of issuing one (a running server refuses it from its next
    /// request).
    #[arg(long)]
    revoke: bool,
}

#[derive(Args, Debug)]
pub(super) struct ServeArgs {
    /// The model directory (`cryptotl server build`).
    #[arg(long)]
    model: PathBuf,
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: std::net::SocketAddr,
    /// The token file (`cryptotl server token`).
    #[arg(long)]
    tokens: PathBuf,
    /// Folder of the evaluation-key store (shared by replicas). Default: `<model>/keys`.
    #[arg(long)]
    key_store: Option<PathBuf>,
    /// Bound of the key store in MiB (least recently used keys are evicted past it).
    #[arg(long, default_value_t = 4096)]
    key_store_mib: u64,
    /// Evaluation keys one client (one token) keeps in the store at most: an upload past that evicts its own least
    /// recently used key, never another client's. A client's key is one per run folder (`client_key.json`).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=65536))]
    keys_per_client: u32,
    /// TLS certificate chain (PEM).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Evaluation requests waiting or running at most (more get 503 with Retry-After). A client keeps two in
    /// flight, so the default serves 8 clients at once without turning any away.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=cryptotl_server::http::MAX_QUEUE as i64))]
    max_queue: u32,
    /// Of those, at most this many from one client (one token); more get 429 with Retry-After, so one client
    /// cannot fill the queue. A client keeps two in flight; the default leaves room for two runs on one token.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=cryptotl_server::http::MAX_QUEUE as i64))]
    max_per_client: u32,
    /// Seconds an evaluation request may wait for its turn (then 503 with Retry-After).
    #[arg(long, default_value_t = 300)]
    queue_timeout: u64,
    /// Seconds a key upload may take, its body's arrival included (then 408): an upload holds one of the server's
    /// few upload turns from its headers on.
    #[arg(long, default_value_t = 600.0, value_parser = positive_seconds)]
    upload_timeout: f64,
    /// Seconds one batch may evaluate once its turn came (then it is stopped and answered 413: send fewer
    /// samples per request, `[he] batch`).
    #[arg(long, default_value_t = 600.0, value_parser = positive_seconds)]
    eval_timeout: f64,
}

fn positive_seconds(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 1e7 => Ok(v),
        _ => Err(format!("`{s}` is not a number of seconds in (0, 10000000]")),
    }
}

/// A command-line option the model owner's command cannot use: a config error (exit 2) naming the option.
fn bad_option(option: &str, message: impl Into<String>) -> Error {
    Error::Config { file: "<command line>".into(), key: option.into(), message: message.into() }
}

pub(super) fn serve(a: &ServeArgs) -> Result<()> {
    // What `serve` is given on its command line and cannot use is named by its flag (exit 2), not as the encrypted
    // stage of a run.
    let artifact = cryptotl_server::ModelArtifact::load(&a.model).map_err(|e| bad_option("--model", e.to_string()))?;
    let tokens = cryptotl_server::auth::TokenFile::watch(&a.tokens).map_err(|e| {
        let hint = if a.tokens.exists() { "" } else { " (issue a token into it with `cryptotl server token --name <client> --tokens <file>`)" };
        bad_option("--tokens", format!("{e}{hint}"))
    })?;
    let store_dir = a.key_store.clone().unwrap_or_else(|| a.model.join("keys"));
    // What the server crate cannot start with names its option.
    let start = |e: cryptotl_server::HeError| match e {
        cryptotl_server::HeError::Start { option, message } => bad_option(option, message),
        e => e.into(),
    };
    let store = cryptotl_server::keystore::KeyStore::open(&store_dir, a.key_store_mib.saturating_mul(1 << 20))
        .map(|store| store.with_keys_per_owner(a.keys_per_client as usize))
        .map_err(|e| bad_option("--key-store", if a.key_store.is_some() { e.to_string() } else { format!("{e} (the default, `<model>/keys`)") }))?;
    let model_id = artifact.interface.model_id.clone();
    let service = cryptotl_server::Service::new(artifact, store).map_err(start)?;
    let opts = cryptotl_server::http::ServeOptions {
        listen: a.listen,
        tls: a.tls_cert.clone().zip(a.tls_key.clone()),
        max_queue: a.max_queue as usize,
        max_per_client: a.max_per_client as usize,
        queue_timeout: std::time::Duration::from_secs(a.queue_timeout),
        upload_timeout: std::time::Duration::from_secs_f64(a.upload_timeout),
        eval_timeout: std::time::Duration::from_secs_f64(a.eval_timeout),
    };
    let plain = opts.tls.is_none();
    cryptotl_server::http::serve(service, tokens, opts, |addr, scheme| {
        use std::io::Write as _;
        if plain {
            eprintln!("warning: plain HTTP on a loopback address: for one machine only (give --tls-cert and --tls-key to serve a network)");
        }
        println!("listening on {scheme}://{addr} (model {}, key store {})", &model_id[..16], store_dir.display());
        let _ = std::io::stdout().flush();
    })
    .map_err(start)?;
    Ok(())
}

pub(super) fn server_command(cmd: &ServerCommand) -> Result<()> {
    match cmd {
        ServerCommand::Build(a) => {
            let cfg = a.config.load()?;
            let out = a.out.clone().unwrap_or_else(|| cfg.output_dir().join("server_model"));
            // A model folder it cannot write fails now, not after a pretraining.
            crate::atomic::writable_dir(&out).map_err(|e| match (&a.out, e) {
                (Some(_), Error::OutputDir { path, message }) => bad_option("--out", format!("{}: {message}", path.display())),
                (_, e) => e,
            })?;
            let (artifact, lower) = pipeline::server_artifact(&cfg)?;
            let manifest = artifact.write(&out)?;
            let i = &artifact.interface;
            println!("server model written to {} (model {})", out.display(), &manifest.model_id[..16]);
            println!("  network: {} (source test accuracy {:.4})", lower.origin.describe_why(&lower.cache_dir.display().to_string(), lower.retrained_because), lower.meta.source_test.accuracy);
            println!("  interface: {} {} features in, {} outputs, {} bootstraps per sample, {}", i.program.input_dim,
                i.features.get("kind").and_then(|k| k.as_str()).unwrap_or("?"), i.program.outputs, i.counts.bootstraps, i.parameter_set);
            let statement: crate::privacy::budget::ServerStatement = serde_json::from_value(artifact.privacy.clone())
                .map_err(|e| Error::Internal(format!("privacy statement: {e}")))?;
            print_server_rows(&statement);
            if let Some(m) = &statement.source_membership {
                println!("  measured: {}", m.sentence());
            }
        }
        ServerCommand::Membership(a) => {
            let cfg = a.load()?;
            // Measured now, also for the shipped network (that is how its recorded figure is reproduced).
            let (lower, source) = pipeline::server_network_and_source(&cfg)?;
            let source = match source {
                Some(s) => s,
                None => pipeline::load_source(&cfg)
                    .map_err(|e| Error::config_key("source.paths", format!("the membership attack needs the server's source data: {e}")))?
                    .0,
            };
            let attack = pipeline::measure_membership(&cfg, &lower, &source)?;
            let out = cfg.output_dir();
            let json = serde_json::to_vec_pretty(&attack).map_err(|e| Error::Internal(format!("the attack's result does not serialise: {e}")))?;
            crate::atomic::write(&out.join("membership.json"), &json)?;
            print!("{}", attack.to_markdown());
            println!("written to {}", out.join("membership.json").display());
        }
        ServerCommand::Token(a) => {
            use cryptotl_server::auth::IssueError;
            let refused = |e: IssueError| match e {
                IssueError::BadName(_) => bad_option("--name", e.to_string()),
                IssueError::NotATokenFile { .. } => bad_option("--tokens", e.to_string()),
                // The name is fine; the file holds it already, or does not.
                IssueError::Taken(_) | IssueError::Unknown(_) => Error::Config { file: a.tokens.display().to_string(), key: "--name".into(), message: e.to_string() },
                IssueError::File(e) => e.into(),
            };
            if a.revoke {
                cryptotl_server::auth::revoke(&a.tokens, &a.name).map_err(refused)?;
                eprintln!("token of `{}` removed from {} (a running server refuses it from its next request)", a.name, a.tokens.display());
                return Ok(());
            }
            let token = cryptotl_server::auth::issue(&a.tokens, &a.name).map_err(refused)?;
            eprintln!("token for `{}` added to {} (only its hash is stored; this is the one time it is shown)", a.name, a.tokens.display());
            println!("{token}");
        }
    }
    Ok(())
}
