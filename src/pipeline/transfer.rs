//! The client's features and their way through the server's frozen lower network: in the clear, under
//! encryption in this process, or against a remote server; and prediction on new texts through the same path.

use std::path::{Path, PathBuf};

use ndarray::Array2;
use serde::{Deserialize, Serialize};

use crate::config::RunConfig;
use crate::data::{Dataset, Split};
use crate::error::{Error, Result};
use crate::features::FeaturePipeline;
use crate::model::{self, Cpu, LowerNet, map_rows, predict_proba};

use super::FeatureSplit;
use super::heads::{beside_transferred, new_head, score_column, transfer_output_ranges};
use super::server::{PretrainedLower, server_lower_network, server_network_and_source, source_membership, stored_lower_network};

/// The client's scaled features of its target data: the pipeline fitted on target train only, or, when the run
/// trains a head with DP-SGD (`[privacy]` on), fitted on nothing ([`FeaturePipeline::data_independent`]).
pub fn client_features(cfg: &RunConfig, target: &Split) -> Result<(FeaturePipeline, FeatureSplit)> {
    client_features_for(cfg, target, cfg.client_privacy().is_some())
}

/// [`client_features`] with the choice made by the caller: `private` gives the data-independent map (a sweep
/// that trains private and non-private heads on one set of features asks for it once for all of them). DP-SGD
/// bounds what one example does to the head through its own features; a min-max range or IDF weight fitted on the
/// training split would move every example's features with it, so the accountant's ε would not hold.
pub fn client_features_for(cfg: &RunConfig, target: &Split, private: bool) -> Result<(FeaturePipeline, FeatureSplit)> {
    // The features, the heads' inputs beside them and the training tensors: three rows x dim copies of f32.
    let rows = (target.train.len() + target.validation.len() + target.test.len()) as u64;
    super::check_feature_memory(rows.saturating_mul(cfg.features.dim() as u64).saturating_mul(12), crate::config::available_memory(), "the client's target")?;
    let pipeline = FeaturePipeline::for_training(&cfg.features, &target.train.texts, private)?;
    let fs = FeatureSplit::from_split(&pipeline, target)?;
    Ok((pipeline, fs))
}

/// What the client sends through the server's network (`head.transfer_unit`): its feature rows, one per text, or
/// one per sentence with each text's sentences next to each other. The server evaluates every row alike; the
/// client averages a text's decrypted outputs ([`TransferInput::pool`]), so the head sees one row per text either
/// way. With sentences the server learns how many sentences (at most `head.max_sentences`) each text has, from
/// the number of ciphertexts; nothing else.
#[derive(Debug, Clone)]
pub struct TransferInput<'a> {
    /// The rows the network is applied to: the client's own features, or its sentences' (a sentence carries its
    /// text's label).
    pub rows: std::borrow::Cow<'a, FeatureSplit>,
    /// The client's own features, one row per text (whose labels the pooled outputs carry).
    own: &'a FeatureSplit,
    /// Per part (train, validation, test): where each text's rows start, and the end. None: one row per text.
    starts: Option<[Vec<usize>; 3]>,
    /// Where the encrypted pass keeps its journal ([`crate::he::OutputJournal`]), if it keeps one.
    journal: Option<PathBuf>,
    /// Where a remote pass keeps the client key and takes up one kept there ([`Self::keeping_key_in`]); `None`:
    /// beside the journal.
    key_dir: Option<PathBuf>,
}

impl<'a> TransferInput<'a> {
    /// The client's features as they are: one row per text (`transfer_unit = "text"`).
    pub fn texts(own: &'a FeatureSplit) -> Self {
        Self { rows: std::borrow::Cow::Borrowed(own), own, starts: None, journal: None, key_dir: None }
    }

    /// As `head.transfer_unit` says: [`Self::texts`], or each text of `target` split into sentences
    /// ([`crate::features::sentences`]) featurized by the client's `pipeline` (the one `own` came from).
    pub fn new(cfg: &RunConfig, pipeline: &FeaturePipeline, target: &Split, own: &'a FeatureSplit) -> Result<Self> {
        if cfg.head.transfer_unit == crate::config::TransferUnit::Text {
            return Ok(Self::texts(own));
        }
        let part = |d: &Dataset| -> Result<(Array2<f32>, Vec<u8>, Vec<usize>)> {
            let (rows, starts) = sentence_rows(cfg, pipeline, &d.texts)?;
            let labels = starts.windows(2).zip(&d.labels).flat_map(|(w, &y)| std::iter::repeat_n(y, w[1] - w[0])).collect();
            Ok((rows, labels, starts))
        };
        let (train, train_y, s0) = part(&target.train)?;
        let (validation, validation_y, s1) = part(&target.validation)?;
        let (test, test_y, s2) = part(&target.test)?;
        let units = train.nrows() + validation.nrows() + test.nrows();
        tracing::info!(units, texts = target.train.len() + target.validation.len() + target.test.len(), "sentences sent through the server's network");
        let rows = FeatureSplit { train, train_y, validation, validation_y, test, test_y, own_columns: 0 };
        Ok(Self { rows: std::borrow::Cow::Owned(rows), own, starts: Some([s0, s1, s2]), journal: None, key_dir: None })
    }

    /// Keep the encrypted pass's journal in `dir` (a run's output folder): each batch's decrypted outputs are
    /// recorded as they come back, and a pass killed midway resumes from them when the run is started again
    /// ([`crate::he::OutputJournal`]). The caller removes it once its results are written
    /// ([`crate::he::journal::remove_all`]).
    /// `None` keeps none (as [`Self::new`] and [`Self::texts`] start).
    pub fn journaled_in(mut self, dir: Option<&Path>) -> Self {
        self.journal = dir.map(Path::to_path_buf);
        self
    }

    /// Against a remote server, keep the client key in `dir` (a folder the caller holds) and take up the one kept
    /// there when it is still the key of this server, model and parameter set: no key generation, no 50 MiB upload
    /// and no dead key left in the server's store (`audit`, which keeps no journal, and reruns it in the run's
    /// folder). Without it a pass keeps its key beside its journal, and takes it up only when it resumes.
    pub fn keeping_key_in(mut self, dir: &Path) -> Self {
        self.key_dir = Some(dir.to_path_buf());
        self
    }

    /// Rows the server evaluates.
    pub fn units(&self) -> usize {
        self.rows.train.nrows() + self.rows.validation.nrows() + self.rows.test.nrows()
    }

    /// One row per text from the network's outputs `y` for [`Self::rows`]: a text's outputs averaged over its
    /// sentences (or `y` itself for one row per text).
    pub fn pool(&self, y: FeatureSplit) -> FeatureSplit {
        let Some([s0, s1, s2]) = &self.starts else { return y };
        FeatureSplit {
            train: mean_rows(&y.train, s0),
            train_y: self.own.train_y.clone(),
            validation: mean_rows(&y.validation, s1),
            validation_y: self.own.validation_y.clone(),
            test: mean_rows(&y.test, s2),
            test_y: self.own.test_y.clone(),
            own_columns: 0,
        }
    }
}

/// The sentences of `texts` featurized by `pipeline`, and where each text's rows start (plus the end).
pub fn sentence_rows(cfg: &RunConfig, pipeline: &FeaturePipeline, texts: &[String]) -> Result<(Array2<f32>, Vec<usize>)> {
    let mut sentences = Vec::new();
    let mut starts = vec![0];
    for t in texts {
        sentences.extend(crate::features::sentences(t, cfg.head.max_sentences));
        starts.push(sentences.len());
    }
    Ok((pipeline.transform(&sentences)?, starts))
}

/// The mean of each group of rows of `y` (group i: rows `starts[i]..starts[i + 1]`).
pub fn mean_rows(y: &Array2<f32>, starts: &[usize]) -> Array2<f32> {
    let mut out = Array2::zeros((starts.len().saturating_sub(1), y.ncols()));
    for (mut row, w) in out.axis_iter_mut(ndarray::Axis(0)).zip(starts.windows(2)) {
        if let Some(m) = y.slice(ndarray::s![w[0]..w[1], ..]).mean_axis(ndarray::Axis(0)) {
            row.assign(&m);
        }
    }
    out
}

/// The frozen lower network applied to the client's scaled features in the clear (float): the reference the
/// encrypted path ([`encrypted_transfer`]: quantize -> encrypt -> server evaluation -> decrypt) is compared with,
/// and the path of `he.enabled = false`.
pub fn lower_forward(lower: &LowerNet<Cpu>, x: &Array2<f32>) -> Result<Array2<f32>> {
    crate::features::check_finite(x.view())?;
    Ok(map_rows::<Cpu>(x.view(), &Default::default(), |t| lower.forward(t)))
}

/// The client's features through the three paths of the lower network, and what the encrypted one measured.
pub struct EncryptedTransfer {
    /// Decrypted outputs of the encrypted path (what the client trains on).
    pub encrypted: FeatureSplit,
    /// The float network's outputs (reference).
    pub float: FeatureSplit,
    /// The clear-integer program's outputs (the oracle of the encrypted path).
    pub quantized: FeatureSplit,
    /// Keys, sizes, timings, lookup errors (accuracies filled in by [`crate::pipeline::run`]).
    pub report: crate::he::HeReport,
}

/// Compile the frozen lower network into an integer program (calibrated on the ranges it keeps from the server's
/// source training features), set up keys, and send every client sample through quantize -> encrypt -> server
/// evaluation -> decrypt. Also computes the float and clear-integer outputs for comparison.
pub fn encrypted_transfer(cfg: &RunConfig, lower: &PretrainedLower, input: &TransferInput) -> Result<EncryptedTransfer> {
    let program = compile_program(cfg, lower)?;
    let client = input.rows.as_ref();
    let float = input.pool(client.map(|x| lower_forward(&lower.net, x))?);
    let overflow = std::cell::Cell::new(0usize);
    let quantized = input.pool(client.map(|x| {
        let (y, wraps) = crate::he::quant::clear_forward(&program, x.view())?;
        overflow.set(overflow.get() + wraps);
        Ok(y)
    })?);
    let accumulators = input.units() * program.neurons;
    let session = local_session(cfg, &program)?;
    let (encrypted, stats) = forward_split(&session, client, input.journal.as_deref())?;
    let encrypted = input.pool(encrypted);
    let report = crate::he::HeReport::new(&session, Some(&program), &stats, Some(overflow.get() as f64 / accumulators.max(1) as f64));
    if let Some(rate) = report.calibration_overflow_rate.filter(|&r| r > 0.01) {
        tracing::warn!(rate,
            "{:.1}% of the client's accumulators fall outside the range calibrated on the source data; their lookups wrap around \
             (to about the nearer end's value for a small miss, further off for a larger one). Set he.calibration = \"input_box\" (never wraps, coarser) or widen he.calibration_margin",
            100.0 * rate);
    }
    tracing::info!(?report, "encrypted lower network done");
    Ok(EncryptedTransfer { encrypted, float, quantized, report })
}

/// The server's lower network compiled to its integer program (calibrated on the ranges it keeps from the server's
/// source training features).
pub fn compile_program(cfg: &RunConfig, lower: &PretrainedLower) -> Result<cryptotl_server::IntegerProgram> {
    crate::he::quant::compile_with_ranges(&lower.net, lower.features.dim(), &lower.meta.source_ranges, &cfg.he)
}

/// The identity of the server network `lower` as `cfg` evaluates it. Encrypted: the model id of its integer
/// program ([`cryptotl_server::artifact::program_id`]), which a remote server publishes for its own. In plaintext
/// (`he.enabled = false`, where the network need not compile): `float:` and the SHA-256 of its weights. A run records
/// it, so `predict` refuses to put a head behind another network than the one it was trained behind.
pub fn network_id(cfg: &RunConfig, lower: &PretrainedLower) -> Result<String> {
    if cfg.he.enabled {
        return Ok(cryptotl_server::artifact::program_id(&compile_program(cfg, lower)?)?);
    }
    Ok(format!("float:{}", crate::model::weights_sha256(&lower.net)))
}

/// The one-process simulation of the server for `program`, with the config's keys seed and batch size.
fn local_session(cfg: &RunConfig, program: &cryptotl_server::IntegerProgram) -> Result<crate::he::Session> {
    let mut session = crate::he::Session::local(program.clone(), cfg.he.params()?, cfg.he.insecure_seed)?;
    session.set_batch(cfg.he.batch);
    Ok(session)
}

/// The remote server the lower network runs on (`[he] server` with `he.enabled`); None for the one-process
/// simulation or the plaintext path.
pub fn remote_server(cfg: &RunConfig) -> Result<Option<String>> {
    if !cfg.he.enabled {
        return Ok(None);
    }
    match cfg.he.server_location().map_err(|m| Error::config_key("he.server", m))? {
        crate::config::ServerLocation::Remote(url) => Ok(Some(url)),
        crate::config::ServerLocation::Local => Ok(None),
    }
}

/// Every split of the client's features through the session's encrypted path, with what it measured. With
/// `journal_dir`, the pass resumes from and records into the session's journal there (the caller removes it,
/// [`crate::he::journal::remove_all`], once its results are written).
fn forward_split(session: &crate::he::Session, client: &FeatureSplit, journal_dir: Option<&Path>) -> Result<(FeatureSplit, crate::he::ForwardStats)> {
    let stats = std::cell::RefCell::new(crate::he::ForwardStats::default());
    let server = session.server();
    let journal = std::cell::RefCell::new(journal_dir.map(|d| crate::he::OutputJournal::open(d, &session.journal_identity(), session.interface.outputs)).transpose()?);
    let encrypted = client
        .map(|x| {
            let (y, s) = session.forward_journaled(x.view(), &format!("{} samples via {server}", x.nrows()), journal.borrow_mut().as_mut())?;
            stats.borrow_mut().merge(s);
            Ok(y)
        })
        .inspect_err(|_| {
            if let Some(j) = journal.borrow().as_ref().filter(|j| !j.is_empty()) {
                tracing::warn!(path = %j.path().display(), samples = j.len(), "the encrypted pass stopped; the outputs it had are kept in its journal and a new run of the same config resumes from them");
            }
        })?;
    Ok((encrypted, stats.into_inner()))
}

/// The server's model artifact for `cfg` (what `cryptotl server build` writes): its lower network (pretrained,
/// cached or shipped, with the config's server privacy mechanisms applied), compiled to the integer program, with
/// the interface clients fetch and the server's privacy statement. Returns the network too.
pub fn server_artifact(cfg: &RunConfig) -> Result<(cryptotl_server::ModelArtifact, PretrainedLower)> {
    if !cfg.he.enabled {
        return Err(Error::config_key("he.enabled", "is false: a server model is an encrypted program; set he.enabled = true"));
    }
    let (lower, source) = server_network_and_source(cfg)?;
    let program = compile_program(cfg, &lower)?;
    // The server has its source data: it measures the attack (or quotes the shipped figure) for its statement.
    let membership = if cfg.audit.membership { Some(source_membership(cfg, &lower, source.as_ref(), "measured by the server when it built this model")?) } else { None };
    let features = serde_json::json!({
        "kind": cfg.features.kind,
        "dim": lower.features.dim(),
        "featurizer": cfg.features.key_material(),
        "featurizer_version": crate::features::FEATURIZER_VERSION,
        "scaling": "each feature min-max scaled to [0, 1] on the client's own training split",
        // Where each output lies over the source data (from the calibration ranges the program is built on): the
        // public point a client's DP head centres these outputs on ([`DpReferences`]).
        "output_ranges": transfer_output_ranges(cfg, &lower),
    });
    let statement = crate::privacy::budget::ServerStatement::new(lower.mechanisms(membership.as_ref(), &crate::privacy::budget::fitted_outside(cfg)))?;
    let privacy = serde_json::to_value(&statement).map_err(|e| Error::Internal(format!("privacy statement: {e}")))?;
    let artifact = cryptotl_server::ModelArtifact::new(program, cfg.he.params()?, features, privacy)?;
    // A network built with no mechanism is a plain release to its clients: later releases about its source examples
    // (a noised draw, another pretraining on them) have no bound against them, and say so.
    super::server::record_served_plain(&lower)?;
    Ok((artifact, lower))
}

/// The file in a run directory that keeps the client's TFHE key for a remote server, or for `predict`'s one-process
/// simulation (its secret key: owner-only, never sent).
pub const CLIENT_KEY_FILE: &str = "client_key.json";

/// The folder in a run directory that keeps the one-process simulation's evaluation keys for `predict` (with the
/// client key in [`CLIENT_KEY_FILE`]): made by the first prediction, reused by the next.
pub const LOCAL_KEY_STORE: &str = "local_keys";

/// A session with the remote server `url` of `[he] server`: token, trusted CA, interface checked against the
/// client's features.
///
/// The client key is kept in `key_dir` ([`CLIENT_KEY_FILE`], owner-only; a run's folder, or the folder of a `curve`
/// or `sweep`, whichever its command holds): `reuse_key = false` (a new run, `features`) makes a new one and keeps
/// it; `true` (`predict`, a pass resuming an interrupted one) reuses the kept one and the evaluation key the server
/// stores for it ([`crate::he::Session::connect_keeping_key`]). With no `key_dir` the key is made and not kept.
pub fn remote_session(cfg: &RunConfig, url: &str, key_dir: Option<&Path>, reuse_key: bool) -> Result<crate::he::Session> {
    let ca = match &cfg.he.ca_cert {
        Some(p) => Some(std::fs::read(p).map_err(|e| Error::io(p, e))?),
        None => None,
    };
    let transport = crate::he::Http::new(url, cfg.he.token()?, ca.as_deref())?;
    let model = crate::he::Transport::interface(&transport)?;
    let kind = model.features.get("kind").and_then(|k| k.as_str()).unwrap_or("");
    if kind != cfg.features.kind.name() {
        return Err(Error::config_key("features.kind", format!(
            "is `{}`, but the model at {url} takes `{kind}` features ({}): set features.kind to match", cfg.features.kind, model.features)));
    }
    // Features of the right kind and width made with other settings would be evaluated without a word, and mean
    // something else to the server's network. (Servers built before the interface carried its featurizer are not checked.)
    if let Some(theirs) = model.features.get("featurizer") {
        let meaning = |v: &serde_json::Value| -> serde_json::Value {
            cfg.features.meaning_keys().iter().filter_map(|&k| Some((k.to_string(), v.get(k)?.clone()))).collect::<serde_json::Map<_, _>>().into()
        };
        let ours = cfg.features.key_material();
        let differences = crate::rundir::material_differences(&meaning(theirs), &meaning(&ours));
        if !differences.is_empty() {
            let listed: Vec<String> = differences.iter().map(|(k, server, here)| format!("features.{k}: {server} at the server, {here} here")).collect();
            return Err(Error::config_key("features", format!(
                "the model at {url} was trained on features made otherwise ({}): set them as the server's", listed.join("; "))));
        }
        let scaling = ours.get("scaling");
        if let Some(server) = theirs.get("scaling").filter(|s| Some(*s) != scaling) {
            tracing::warn!(
                "features.scaling is {} here and {server} at {url}: the server's network was pretrained on features mapped \
                 into [0, 1] its way, so expect less from the transfer",
                scaling.map_or("not set".into(), |s| s.to_string())
            );
        }
    }
    let mut session = match key_dir {
        Some(dir) => crate::he::Session::connect_keeping_key(Box::new(transport), cfg.he.insecure_seed, &dir.join(CLIENT_KEY_FILE), reuse_key)?,
        None => crate::he::Session::connect(Box::new(transport), None, cfg.he.insecure_seed)?,
    };
    session.set_batch(cfg.he.batch);
    Ok(session)
}

/// What [`remote_transfer`] brings back from a remote server.
pub struct RemoteTransfer {
    /// The decrypted outputs, pooled per text.
    pub features: FeatureSplit,
    /// What the encrypted stage measured (no oracle comparison: the client has no program).
    pub he: crate::he::HeReport,
    /// The server's statement of its own privacy.
    pub statement: crate::privacy::budget::ServerStatement,
    /// The output ranges the server publishes ([`crate::he::Session::published_output_ranges`]), if it does.
    pub output_ranges: Option<Vec<(f32, f32)>>,
    /// The server's model id (the SHA-256 of its program).
    pub model_id: String,
}

/// The client's features through a remote server's encrypted lower network (`[he] server = URL`).
///
/// The client key is kept where [`TransferInput::keeping_key_in`] says (and a key kept there is taken up), else
/// beside the pass's journal ([`TransferInput::journaled_in`]: the folder its command holds); a pass with neither
/// keeps no key. A pass that resumes an interrupted one (a journal is in its folder) takes up the key kept there, if
/// it is still the key of this server, model and parameter set: the journal's rows need no key, and the rest go
/// under the key the server already stores, with no second 50 MiB upload and no dead key left in its store. A new
/// pass makes a new key, so its report measures key generation and upload.
pub fn remote_transfer(cfg: &RunConfig, url: &str, input: &TransferInput) -> Result<RemoteTransfer> {
    let (key_dir, reuse) = match (input.key_dir.as_deref(), input.journal.as_deref()) {
        (Some(dir), _) => (Some(dir), true),
        (None, Some(dir)) => (Some(dir), !crate::he::journal::journals_in(dir)?.is_empty()),
        (None, None) => (None, false),
    };
    let session = remote_session(cfg, url, key_dir, reuse)?;
    let statement = session.server_privacy()?;
    if cfg.server_mechanism_on() {
        // The same config may serve both parties, but only `server build` acts on these tables.
        tracing::warn!(
            "[server_privacy] is set by the server's owner when it builds its model, not by a client: this pass takes the \
             model at {url} as it is, and the budget its report gives the source data is the server's statement (ε = {})",
            crate::privacy::shown::epsilon(statement.source_epsilon())
        );
    }
    let output_ranges = session.published_output_ranges();
    let (encrypted, stats) = forward_split(&session, &input.rows, input.journal.as_deref())?;
    let he = crate::he::HeReport::new(&session, None, &stats, None);
    Ok(RemoteTransfer { features: input.pool(encrypted), he, statement, output_ranges, model_id: session.model.model_id.clone() })
}

/// What [`lower_outputs`] brings back.
pub struct LowerOutputs {
    /// The network's outputs for the client's rows (decrypted, or plaintext), pooled per text.
    pub features: FeatureSplit,
    /// The public ranges they lie in, which a DP head centres them on ([`DpReferences`](crate::privacy::centring::DpReferences)):
    /// those the remote server publishes, or the network's own.
    pub output_ranges: Option<Vec<(f32, f32)>>,
    /// The tightest ε the server's mechanisms give its source data (∞ with none): from the statement a remote server
    /// publishes, or the network's own ([`PretrainedLower::source_epsilon`]).
    pub source_epsilon: f64,
    /// Through a remote server: its address and what the encrypted stage measured.
    pub remote: Option<(String, crate::he::HeReport)>,
    /// The network's identity ([`network_id`]; a remote server's model id).
    pub network_id: String,
}

/// The server's lower network on the client's `input`, for the commands that need only its outputs (`features`,
/// `curve`, `sweep`, `audit`; `run` also compares them with the float and clear-integer paths), wherever `cfg` runs it: through the remote server of `[he] server` when it names one (the
/// client has none of the server's network; [`remote_transfer`]), else here on the server's network
/// ([`server_lower_network`]: the one-process simulation, or plaintext).
pub fn lower_outputs(cfg: &RunConfig, input: &TransferInput) -> Result<LowerOutputs> {
    match remote_server(cfg)? {
        Some(url) => {
            let RemoteTransfer { features, he, statement, output_ranges, model_id } = remote_transfer(cfg, &url, input)?;
            Ok(LowerOutputs { features, output_ranges, source_epsilon: statement.source_epsilon(), remote: Some((url, he)), network_id: model_id })
        }
        None => {
            let lower = server_lower_network(cfg)?;
            let (features, _) = transfer(cfg, &lower, input)?;
            let network_id = network_id(cfg, &lower)?;
            Ok(LowerOutputs { features, output_ranges: transfer_output_ranges(cfg, &lower), source_epsilon: lower.source_epsilon(), remote: None, network_id })
        }
    }
}

/// The server's lower network as new texts reach it (`predict`): through the remote server, through the one-process
/// simulation of it (`server = "local"`), or in plaintext (`he.enabled = false`). One is opened per prediction, so
/// its keys are taken from the run's folder (or made there, by the first prediction) once for every batch of texts.
enum LowerPath {
    Plain { net: Box<LowerNet<Cpu>> },
    Encrypted { session: Box<crate::he::Session>, journal: Option<crate::he::OutputJournal> },
}

impl LowerPath {
    /// With `journal_dir`, the encrypted pass keeps a journal there ([`PREDICT_JOURNAL`]), and the one-process
    /// simulation keeps its keys there too ([`crate::he::Session::local_keeping_key`]), as a remote server's client
    /// keeps its key in the run's folder: the first prediction makes them, the next ones reuse them.
    ///
    /// `check` is given the network's identity ([`network_id`]) as soon as it is known, and an error it returns stops
    /// the opening there: before any key is made here (against a remote server, once its interface is read).
    fn open(cfg: &RunConfig, journal_dir: Option<&Path>, check: impl Fn(&str) -> Result<()>) -> Result<Self> {
        let session = match remote_server(cfg)? {
            Some(url) => {
                let session = remote_session(cfg, &url, Some(&cfg.output_dir()), true)?;
                check(&session.model.model_id)?;
                session
            }
            None if !cfg.he.enabled => {
                let lower = stored_lower_network(cfg)?;
                check(&network_id(cfg, &lower)?)?;
                return Ok(Self::Plain { net: Box::new(lower.net) });
            }
            None => {
                let program = compile_program(cfg, &stored_lower_network(cfg)?)?;
                check(&cryptotl_server::artifact::program_id(&program)?)?;
                match journal_dir {
                    Some(dir) => {
                        let (key_file, key_store) = (dir.join(CLIENT_KEY_FILE), dir.join(LOCAL_KEY_STORE));
                        let mut session = crate::he::Session::local_keeping_key(program, cfg.he.params()?, cfg.he.insecure_seed, &key_file, &key_store)?;
                        session.set_batch(cfg.he.batch);
                        session
                    }
                    None => local_session(cfg, &program)?,
                }
            }
        };
        let identity = format!("{} | {PREDICT_JOURNAL}", session.journal_identity());
        let journal = journal_dir.map(|d| crate::he::OutputJournal::open(d, &identity, session.interface.outputs)).transpose()?;
        Ok(Self::Encrypted { session: Box::new(session), journal })
    }

    /// Outputs per row.
    fn outputs(&self, input_dim: usize) -> Result<usize> {
        match self {
            Self::Plain { net, .. } => Ok(lower_forward(net, &Array2::zeros((1, input_dim)))?.ncols()),
            Self::Encrypted { session, .. } => Ok(session.interface.outputs),
        }
    }

    fn forward(&mut self, x: &Array2<f32>, what: &str) -> Result<Array2<f32>> {
        match self {
            Self::Plain { net, .. } => lower_forward(net, x),
            // `forward_journaled` logs how many rows it took from the journal.
            Self::Encrypted { session, journal } => Ok(session.forward_journaled(x.view(), what, journal.as_mut())?.0),
        }
    }

    fn into_journal(self) -> Option<crate::he::OutputJournal> {
        match self {
            Self::Plain { .. } => None,
            Self::Encrypted { journal, .. } => journal,
        }
    }
}

/// Scaled feature rows of new texts through the server's lower network as `[he]` says: through the remote server,
/// through the one-process simulation of it (`server = "local"`), or in plaintext (`he.enabled = false`).
///
/// With `journal_dir`, the encrypted pass keeps a journal there ([`PREDICT_JOURNAL`]: a file of its own, apart from
/// the run's) and resumes from it, so a prediction killed during the pass takes the rows it had finished from the
/// journal when it is run again. The caller removes the journal ([`crate::he::OutputJournal::remove`]) once it has
/// what it needed; on an error it stays for the next attempt.
pub fn transfer_rows(cfg: &RunConfig, x: &Array2<f32>, what: &str, journal_dir: Option<&Path>) -> Result<(Array2<f32>, Option<crate::he::OutputJournal>)> {
    let mut path = LowerPath::open(cfg, journal_dir, |_| Ok(()))?;
    let y = path.forward(x, what)?;
    Ok((y, path.into_journal()))
}

/// What sets `predict`'s journal apart from the run's in the same folder (it is part of the journal's identity, so
/// its file name): a prediction never reads, nor removes, what an interrupted `run` kept there.
pub const PREDICT_JOURNAL: &str = "predict";

/// One prediction of [`predict`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Prediction {
    /// The predicted class (1 = the dataset's positive class).
    pub label: u8,
    /// The head's probability of class 1.
    pub probability: f32,
}

/// A finished run's classifier of new texts: its saved featurizer, the server's lower network on the same path as
/// the run's training features (encrypted, remote or plaintext, with keys made once), the models of the head's
/// other inputs and the head. [`Self::predict`] takes texts in batches of any size, so a caller can write each
/// batch's predictions as they come; [`Self::finish`] removes the pass's journal.
///
/// ```no_run
/// # fn main() -> cryptotl::error::Result<()> {
/// use cryptotl::config::RunConfig;
/// let run = std::path::Path::new("runs/quickstart");
/// let cfg = RunConfig::load(&run.join("config.toml"), &[])?;
/// let mut predictor = cryptotl::pipeline::Predictor::open(&cfg, run)?;
/// for batch in [vec!["a wonderful film".to_string()], vec!["dull and far too long".to_string()]] {
///     for p in predictor.predict(&batch)? {
///         println!("{} {}", p.label, p.probability);
///     }
/// }
/// predictor.finish()?;
/// # Ok(()) }
/// ```
pub struct Predictor {
    cfg: RunConfig,
    pipeline: FeaturePipeline,
    bow: Option<crate::bow::StackedScorer>,
    lower: LowerPath,
    head: crate::model::Head<Cpu>,
    /// The run folder's lock, shared with other predictions: no run rewrites the folder while this reads it.
    _lock: crate::atomic::DirLock,
}

impl Predictor {
    /// Open the run directory `run_dir` (made by `run` or `features` + `train-head` with `cfg`): everything a
    /// prediction reads is loaded and checked here, before any text is encrypted. A `transfer+bow` head reads its
    /// score column from the bag-of-words model the run saved ([`crate::bow::STACKED_SCORER_FILE`]), as the run's
    /// test rows did. The encrypted pass keeps a journal in `run_dir` ([`PREDICT_JOURNAL`]), so a prediction
    /// stopped during it resumes when run again. It holds the folder's lock shared with other predictions, so a
    /// run or stage writing the folder refuses to start meanwhile, and a prediction refuses while one writes.
    pub fn open(cfg: &RunConfig, run_dir: &Path) -> Result<Self> {
        let manifest = crate::rundir::RunManifest::load_for(cfg)?;
        // Taken once the manifest shows a run folder is there (the lock file would otherwise make one).
        let lock = crate::atomic::DirLock::try_acquire_shared(run_dir)?;
        let pipeline = FeaturePipeline::load(&run_dir.join("client_features.json"))?;
        let bow = match cfg.head.inputs {
            crate::config::HeadInputs::TransferPlusBow => {
                Some(crate::bow::StackedScorer::load(&run_dir.join(crate::bow::STACKED_SCORER_FILE), &manifest.features_key)?)
            }
            _ => None,
        };
        let lower = LowerPath::open(cfg, Some(run_dir), |network| manifest.check_network(cfg, network))?;
        let input_dim = lower.outputs(pipeline.dim())?
            + match cfg.head.inputs {
                crate::config::HeadInputs::TransferPlusOwn => pipeline.dim(),
                crate::config::HeadInputs::TransferPlusBow => 1,
                crate::config::HeadInputs::Transfer => 0,
            };
        manifest.check_head(cfg, input_dim)?;
        let head = model::load_module(new_head::<Cpu>(cfg, input_dim, &Default::default()), &run_dir.join("head"), &Default::default())?;
        Ok(Self { cfg: cfg.clone(), pipeline, bow, lower, head, _lock: lock })
    }

    /// Classify `texts`. A blank text (empty or only whitespace) is refused before any is encrypted: it holds
    /// nothing to classify, and the head would answer it with a probability that means nothing (`cryptotl predict`
    /// answers a blank line with `{"label": null, "probability": null}` instead).
    pub fn predict(&mut self, texts: &[String]) -> Result<Vec<Prediction>> {
        if texts.is_empty() {
            return Ok(vec![]);
        }
        if let Some(i) = texts.iter().position(|t| t.trim().is_empty()) {
            return Err(Error::Features(format!("text {} of {} is blank: there is nothing to classify", i + 1, texts.len())));
        }
        let own = self.pipeline.transform(texts)?;
        let transferred = match self.cfg.head.transfer_unit {
            crate::config::TransferUnit::Text => self.lower.forward(&own, &format!("{} new texts", texts.len()))?,
            crate::config::TransferUnit::Sentence => {
                let (rows, starts) = sentence_rows(&self.cfg, &self.pipeline, texts)?;
                let y = self.lower.forward(&rows, &format!("{} sentences of {} new texts", rows.nrows(), texts.len()))?;
                mean_rows(&y, &starts)
            }
        };
        let x = match (self.cfg.head.inputs, &self.bow) {
            (crate::config::HeadInputs::TransferPlusOwn, _) => beside_transferred(&transferred, own.view())?,
            (crate::config::HeadInputs::TransferPlusBow, Some(bow)) => beside_transferred(&transferred, score_column(bow.score_texts(texts))?.view())?,
            _ => transferred,
        };
        Ok(predict_proba(&self.head, x.view(), &Default::default())
            .into_iter()
            .map(|p| Prediction { label: (p >= 0.5) as u8, probability: p })
            .collect())
    }

    /// Remove the encrypted pass's journal: call it once every prediction is delivered (until then a prediction
    /// stopped and run again takes the rows it had from the journal).
    pub fn finish(self) -> Result<()> {
        match self.lower.into_journal() {
            Some(j) => j.remove(),
            None => Ok(()),
        }
    }
}

/// Classify new texts with a finished run's saved featurizer and head (`run_dir`, made by `run` or
/// `features` + `train-head` with `cfg`), through the same encrypted path as its training features: one
/// [`Predictor`] for all of them.
pub fn predict(cfg: &RunConfig, run_dir: &Path, texts: &[String]) -> Result<Vec<Prediction>> {
    if texts.is_empty() {
        return Ok(vec![]);
    }
    let mut predictor = Predictor::open(cfg, run_dir)?;
    let predictions = predictor.predict(texts)?;
    predictor.finish()?;
    Ok(predictions)
}

/// The client's features through the server's lower network: encrypted when `he.enabled` (then also the float
/// and clear-integer paths for comparison), else the plaintext float network.
pub fn transfer(cfg: &RunConfig, lower: &PretrainedLower, input: &TransferInput) -> Result<(FeatureSplit, Option<EncryptedTransfer>)> {
    if cfg.he.enabled {
        let he = encrypted_transfer(cfg, lower, input)?;
        Ok((he.encrypted.clone(), Some(he)))
    } else {
        Ok((input.pool(input.rows.map(|x| lower_forward(&lower.net, x))?), None))
    }
}
