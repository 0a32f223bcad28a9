//! The commands that chain the stages: a whole run and the learning curves alone.

use std::path::Path;

use crate::bow::{BAG_OF_WORDS_CS, BagOfWords};
use crate::config::RunConfig;
use crate::error::{Error, Result};
use crate::model;
use crate::privacy::centring::DpReferences;
use crate::report::NetworkOrigin;

use super::{prepare_data, timed};
use super::heads::{head_inputs, head_name, privacy_plan, save_head_input_models, train_head, train_head_private, train_target_only, transfer_output_ranges};
use super::server::{server_network_and_source, source_membership, source_overlap};
use super::transfer::{client_features, lower_outputs, LowerOutputs, remote_server, remote_transfer, RemoteTransfer, transfer, TransferInput};

/// Learning curves alone (`cryptotl curve`): data -> client features -> frozen lower network (encrypted when
/// `he.enabled`, through the remote server when `he.server` names one; [`lower_outputs`]) -> the heads on seeded
/// subsets of every size ([`crate::curve`]). With `journal_dir`, the encrypted pass keeps its journal there, and
/// the client key a remote server's pass makes ([`TransferInput::journaled_in`]; the caller removes the journal
/// once the curves are written).
pub fn curves(cfg: &RunConfig, journal_dir: Option<&Path>) -> Result<crate::curve::LearningCurves> {
    let data = prepare_data(cfg)?;
    // DP heads in the curves follow the run's privacy settings; refuse a schedule beyond its budget before work.
    privacy_plan(cfg, data.target.train.len())?;
    let (pipeline, client) = client_features(cfg, &data.target)?;
    let input = TransferInput::new(cfg, &pipeline, &data.target, &client)?.journaled_in(journal_dir);
    let LowerOutputs { features: transferred, output_ranges, .. } = lower_outputs(cfg, &input)?;
    let bow = BagOfWords::new(&data.target);
    let references = DpReferences::from_ranges(cfg, output_ranges.as_deref(), transferred.train.ncols(), client.train.ncols());
    let mut curves = crate::curve::learning_curves(cfg, &transferred, &client, Some(&bow), &references)?;
    curves.source_overlap = local_source_overlap(cfg, &data.target)?;
    Ok(curves)
}

/// For the commands that report no run (`curve`, `sweep`): in one process, the contamination check of a run's
/// report ([`source_overlap`]) for the network `cfg` names: from a shipped network's fingerprints, else from the
/// config's source texts (no network is loaded and no weight noise drawn for it); `None` against a remote server,
/// whose source texts are its own.
pub fn local_source_overlap(cfg: &RunConfig, target: &crate::data::Split) -> Result<Option<crate::overlap::OverlapCheck>> {
    if remote_server(cfg)?.is_some() {
        return Ok(None);
    }
    // A shipped network brings its source fingerprints; for any other the source texts are read.
    let shipped = super::server::stored_pretrained(cfg)?.filter(|l| l.origin == NetworkOrigin::Shipped);
    Ok(Some(super::server::source_overlap_of(cfg, shipped.as_ref(), None, target)))
}

/// Create the run's output directory and prove it writable ([`crate::atomic::writable_dir`]), before any work.
/// The returned lock keeps a second run out of the same directory until it is dropped.
pub fn prepare_output_dir(cfg: &RunConfig) -> Result<crate::atomic::DirLock> {
    // It receives the client's decrypted features, fitted featurizer and head: owner only.
    crate::atomic::claim_dir(&cfg.output_dir())
}

/// The run directory's file of the head's inputs ([`FeatureSplit`](super::FeatureSplit)).
pub const FEATURES_FILE: &str = "features.json";

/// Write what a run directory holds of the client's side before any head: its fitted featurizer
/// (`client_features.json`), the models [`head_inputs`] needs for new texts ([`save_head_input_models`]), the head's
/// inputs ([`FEATURES_FILE`]) and the config. `run` and the `features` stage write the same files.
fn save_client_side(cfg: &RunConfig, dir: &Path, pipeline: &crate::features::FeaturePipeline, bow: Option<&BagOfWords>, inputs: &super::FeatureSplit) -> Result<()> {
    pipeline.save(&dir.join("client_features.json"))?;
    save_head_input_models(cfg, bow, dir)?;
    inputs.save(&dir.join(FEATURES_FILE))?;
    cfg.save(&dir.join("config.toml"))
}

/// What [`features`] did.
pub struct FeaturesStage {
    /// Where the head's inputs are.
    pub path: std::path::PathBuf,
    /// Through a remote server: its address and what the encrypted stage measured (also in `he.json`).
    pub remote: Option<(String, crate::he::HeReport)>,
}

/// The client's features alone (`cryptotl features`): data -> client features -> frozen lower network (encrypted
/// when `he.enabled`, through the remote server when `he.server` names one) -> the head's inputs, written to the
/// run directory with the manifest, for `train-head`, `evaluate` and `predict`. The encrypted pass keeps its journal
/// there, removed once the files are written.
pub fn features(cfg: &RunConfig) -> Result<FeaturesStage> {
    let _lock = prepare_output_dir(cfg)?;
    let out = cfg.output_dir();
    let data = prepare_data(cfg)?;
    let (client_pipeline, client) = client_features(cfg, &data.target)?;
    let input = TransferInput::new(cfg, &client_pipeline, &data.target, &client)?.journaled_in(Some(&out));
    let LowerOutputs { features: transferred, output_ranges, remote, network_id, .. } = lower_outputs(cfg, &input)?;
    if let Some((_, he)) = &remote {
        crate::atomic::write(&out.join("he.json"), &serde_json::to_vec_pretty(he).map_err(|e| Error::Internal(e.to_string()))?)?;
    }
    let references = DpReferences::from_ranges(cfg, output_ranges.as_deref(), transferred.train.ncols(), client.train.ncols());
    let bow = (cfg.head.inputs == crate::config::HeadInputs::TransferPlusBow).then(|| BagOfWords::new(&data.target));
    let inputs = head_inputs(cfg, &transferred, &client, bow.as_ref())?;
    save_client_side(cfg, &out, &client_pipeline, bow.as_ref(), &inputs)?;
    crate::rundir::RunManifest { dp_references: Some(references), lower_network: Some(network_id), ..crate::rundir::RunManifest::new(cfg) }.write(&out)?;
    crate::he::journal::remove_all(&out)?;
    Ok(FeaturesStage { path: out.join(FEATURES_FILE), remote })
}

/// The stages' wall times, in the order they ran (the report's "Wall time per stage").
#[derive(Default)]
struct Stages(Vec<crate::report::StageTime>);

impl Stages {
    fn add(&mut self, name: &str, seconds: f64) {
        self.0.push(crate::report::StageTime { stage: name.into(), seconds });
    }

    /// Run `f` as the stage `name`.
    fn time<T>(&mut self, name: &str, f: impl FnOnce() -> T) -> T {
        let (out, t) = timed(f);
        self.add(name, t);
        out
    }
}

/// What a run in one process does on the server's side before the client's features: the pretrained network (cached,
/// shipped or trained now, noised when asked), the membership attack on its source data and the count of target
/// texts among the source texts. Against a remote server there is none of it: the server's statement stands for it.
#[derive(Default)]
struct ServerSide {
    lower: Option<super::server::PretrainedLower>,
    membership: Option<crate::privacy::budget::SourceMembership>,
    overlap: Option<crate::overlap::OverlapCheck>,
}

fn server_side(cfg: &RunConfig, target: &crate::data::Split, stages: &mut Stages) -> Result<ServerSide> {
    let (r, t) = timed(|| server_network_and_source(cfg));
    let (lower, source) = r?;
    stages.add(match lower.origin { NetworkOrigin::Trained => "pretrain", NetworkOrigin::Cache => "pretrain (cached)", NetworkOrigin::Shipped => "pretrain (shipped in the binary)" }, t);
    // A cached network comes without its source data, which the membership attack and the overlap check both
    // read: loaded once here. (If it cannot be, each says why in the report.)
    let source = match source {
        None if lower.origin == NetworkOrigin::Cache => stages
            .time("load the source data (membership attack, overlap check)", || super::load_source(cfg))
            .ok()
            .map(|(split, _)| split),
        source => source,
    };
    let membership = if cfg.audit.membership {
        Some(stages.time("membership attack on the source data (server side)", || source_membership(cfg, &lower, source.as_ref(), "measured in this run"))?)
    } else {
        None
    };
    let overlap = stages.time("target texts among the source texts (overlap check)", || source_overlap(cfg, &lower, source.as_ref(), target));
    Ok(ServerSide { lower: Some(lower), membership, overlap: Some(overlap) })
}

/// The transfer head's description in the report: which path its inputs came through, from which server's
/// network, per text or per sentence, and beside what.
fn transfer_description(cfg: &RunConfig, remote: Option<&str>, input: &TransferInput<'_>) -> String {
    let source = match remote {
        Some(url) => format!("the source data of the server at {url}"),
        None => cfg.source.name.clone(),
    };
    let path = if cfg.he.enabled { "decrypted outputs of the encrypted" } else { "outputs of the (plaintext)" };
    let inputs = match cfg.head.inputs {
        crate::config::HeadInputs::Transfer => String::new(),
        crate::config::HeadInputs::TransferPlusOwn => " beside the client's own features".into(),
        crate::config::HeadInputs::TransferPlusBow => " beside the cross-fitted score of a bag-of-words model of the client's own texts".into(),
    };
    let unit = match cfg.head.transfer_unit {
        crate::config::TransferUnit::Text => String::new(),
        crate::config::TransferUnit::Sentence => format!(
            ", applied to each sentence (at most {} per text, {} evaluations in all) and averaged per text",
            cfg.head.max_sentences,
            input.units()
        ),
    };
    format!("{} head trained on the {path} frozen lower network (pretrained on {source}){unit}{inputs}", head_name(cfg))
}

/// The baselines without transfer that the config asks for, on the client's own features (`client`) and texts
/// (`bow`): the same head on the raw features (and, with DP-SGD, its private twin), the whole network trained on the
/// target, and bag-of-words logistic regression.
fn baselines(
    cfg: &RunConfig,
    client: &super::FeatureSplit,
    bow: Option<&BagOfWords>,
    dp_plan: Option<&crate::privacy::plan::DpPlan>,
    own_reference: &[f32],
    stages: &mut Stages,
) -> Result<Vec<crate::report::MethodResult>> {
    let mut results = Vec::new();
    if cfg.baselines.raw_features_head {
        let b = train_head(cfg, client, "baseline raw")?;
        stages.add("baseline: head on raw features", b.trained.seconds);
        results.push(b.result("raw_features_head", format!("baseline: the same {} head trained on the target's scaled {} features (no transfer)", head_name(cfg), cfg.features.kind)));
        if let (Some(plan), Some(p)) = (dp_plan, &cfg.privacy) {
            let mut rng = crate::privacy::dpsgd::PrivacyRng::new(p.insecure_seed.map(|s| crate::seeds::stream(s, crate::seeds::RAW_BASELINE_DP)));
            let (b, _) = train_head_private(cfg, client, own_reference, plan, &mut rng)?;
            stages.add("baseline: head on raw features (DP-SGD)", b.trained.seconds);
            results.push(b.result("raw_features_head_dp", "baseline: `raw_features_head` trained with the same DP-SGD schedule (a separate release: its ε adds to the transfer head's if both are published)".into()));
        }
    }
    if cfg.baselines.target_only_network {
        let b = train_target_only(cfg, client)?;
        stages.add("baseline: whole network on target", b.trained.seconds);
        results.push(b.result("target_only_network", "baseline: lower network + head trained from scratch on the target only".into()));
    }
    if let (true, Some(bow)) = (cfg.baselines.bag_of_words, bow) {
        let (m, t) = timed(|| bow.fit_and_score());
        let (m, val, c) = m?;
        stages.add("baseline: bag-of-words logistic regression", t);
        results.push(crate::report::MethodResult {
            method: "bag_of_words".into(),
            description: format!("baseline: logistic regression (L2, C from {BAG_OF_WORDS_CS:?}) on TF-IDF of word 1-2-grams hashed to 2^18 buckets, target only: no transfer, no privacy"),
            test: m,
            validation_accuracy: Some(val),
            epochs: 1,
            best_epoch: 1,
            seconds: t,
            c: Some(crate::report::LinearC { c, chosen_on_validation: true, own_weight: None }),
        });
    }
    Ok(results)
}

/// The report's summary of the server's network in a run in one process.
fn pretrain_summary(lower: super::server::PretrainedLower) -> crate::report::PretrainSummary {
    crate::report::PretrainSummary {
        from_cache: lower.from_cache(),
        origin: lower.origin,
        cache_dir: lower.cache_dir.display().to_string(),
        source_test: lower.meta.source_test,
        source_tasks: lower.meta.source_tasks,
        history: lower.meta.history,
        dp_pretraining: lower.meta.dp_pretraining,
        weight_noise: lower.weight_noise,
        pruned: lower.pruned,
        retrained_because: lower.retrained_because.map(String::from),
    }
}

/// Log the spread of the lower network's outputs on the client's training split (`-v`).
fn log_output_spread(x: &ndarray::Array2<f32>) {
    if tracing::enabled!(tracing::Level::INFO) {
        let col_std = x.std_axis(ndarray::Axis(0), 0.0);
        tracing::info!(mean = x.mean().unwrap_or(0.0), mean_col_std = col_std.mean().unwrap_or(0.0),
            max_col_std = col_std.fold(0f32, |a, &b| a.max(b)), min = x.fold(f32::INFINITY, |a, &b| a.min(b)),
            max = x.fold(f32::NEG_INFINITY, |a, &b| a.max(b)), "lower-network outputs (client train split)");
    }
}

/// The whole pipeline: data -> pretrain (or cache) -> client features -> frozen lower net -> head -> baselines ->
/// report (written to the run's output directory and returned).
pub fn run(cfg: &RunConfig) -> Result<crate::report::Report> {
    let mut stages = Stages::default();
    // With a remote server the client has neither the server's network nor its source data: no pretraining here,
    // no float or clear-integer comparison, and the server's rows of the budget come from its published statement.
    let remote = remote_server(cfg)?;
    let _lock = prepare_output_dir(cfg)?;

    let data = stages.time("load + split data", || prepare_data(cfg))?;
    // The privacy schedule is settled before any training: a run beyond its budget refuses to start.
    let dp_plan = privacy_plan(cfg, data.target.train.len())?;
    if let Some(plan) = &dp_plan {
        tracing::info!(?plan, "DP-SGD schedule");
    }
    let server = match &remote {
        Some(_) => ServerSide::default(),
        None => server_side(cfg, &data.target, &mut stages)?,
    };
    let (client, t) = timed(|| client_features(cfg, &data.target));
    let (client_pipeline, client) = client?;
    // The encrypted pass keeps its journal in the run's folder: a run killed during it resumes where it stopped.
    let (input, t2) = timed(|| TransferInput::new(cfg, &client_pipeline, &data.target, &client).map(|i| i.journaled_in(Some(&cfg.output_dir()))));
    let input = input?;
    stages.add("client features", t + t2);
    let (decrypted, he_paths, remote_he, output_ranges, network_id) = match (&remote, &server.lower) {
        (Some(url), _) => {
            let RemoteTransfer { features, he, statement, output_ranges, model_id } =
                stages.time("lower network: keys, encrypted forward through the remote server", || remote_transfer(cfg, url, &input))?;
            (features, None, Some((he, statement)), output_ranges, model_id)
        }
        (None, Some(lower)) => {
            let name = if cfg.he.enabled { "lower network: compile, keys, encrypted forward" } else { "lower network forward (plaintext: he.enabled = false)" };
            let (transferred, he_paths) = stages.time(name, || transfer(cfg, lower, &input))?;
            (transferred, he_paths, None, transfer_output_ranges(cfg, lower), super::transfer::network_id(cfg, lower)?)
        }
        (None, None) => return Err(Error::Internal("no server network and no remote server".into())),
    };
    // `decrypted`: the lower network's outputs as they came (the learning curves build their heads' inputs per subset).
    log_output_spread(&decrypted.train);

    let bow = (cfg.baselines.bag_of_words || cfg.curve.enabled || cfg.head.inputs == crate::config::HeadInputs::TransferPlusBow)
        .then(|| BagOfWords::new(&data.target));
    let transferred = head_inputs(cfg, &decrypted, &client, bow.as_ref())?;
    let dp_references = DpReferences::from_ranges(cfg, output_ranges.as_deref(), decrypted.train.ncols(), client.train.ncols());
    let mut results = Vec::new();
    let head = train_head(cfg, &transferred, "head")?;
    stages.add("train head", head.trained.seconds);
    results.push(head.result("transfer", transfer_description(cfg, remote.as_deref(), &input)));
    let mut he_report = None;
    if let Some(he) = he_paths {
        let float = train_head(cfg, &head_inputs(cfg, &he.float, &client, bow.as_ref())?, "head (float path)")?;
        stages.add("train head on float outputs", float.trained.seconds);
        let quantized = train_head(cfg, &head_inputs(cfg, &he.quantized, &client, bow.as_ref())?, "head (quantized path)")?;
        stages.add("train head on clear-integer outputs", quantized.trained.seconds);
        let mut r = he.report;
        (r.accuracy_float, r.accuracy_quantized, r.accuracy_encrypted) = (float.test.accuracy, quantized.test.accuracy, head.test.accuracy);
        results.push(float.result("transfer_float", "as `transfer`, on the float lower network's outputs (no quantization, no encryption)".into()));
        results.push(quantized.result("transfer_quantized", "as `transfer`, on the clear-integer program's outputs (quantized, not encrypted)".into()));
        he_report = Some(r);
    }
    let mut remote_statement = None;
    if let Some((mut r, statement)) = remote_he {
        // A client of a remote server has only the encrypted path: no float or clear-integer reference.
        (r.accuracy_float, r.accuracy_quantized, r.accuracy_encrypted) = (f64::NAN, f64::NAN, head.test.accuracy);
        he_report = Some(r);
        remote_statement = Some(statement);
    }
    let mut privacy_report = None;
    let mut audit = None;
    // The head that is saved (and may be published): the private one whenever DP-SGD is on.
    let mut published = head.trained.model.clone();
    if let (Some(plan), Some(p)) = (&dp_plan, &cfg.privacy) {
        let mut rng = crate::privacy::dpsgd::PrivacyRng::new(p.insecure_seed);
        let (dp, map) = train_head_private(cfg, &transferred, &dp_references.transferred, plan, &mut rng)?;
        stages.add("train head (DP-SGD)", dp.trained.seconds);
        published = dp.trained.model.clone();
        privacy_report = Some(crate::privacy::plan::PrivacyReport::new(plan, p.insecure_seed.is_some(), dp.test.accuracy, head.test.accuracy)?);
        if cfg.audit.enabled && cfg.head.kind == crate::config::HeadKind::Linear {
            audit = Some(stages.time("privacy audit (canaries)", || crate::audit::audit(cfg, &transferred, &dp_references.transferred, cfg.audit.canaries, cfg.audit.seed))?);
        }
        let map = map.describe();
        let map = if map.is_empty() { map } else { format!(", {map}") };
        results.push(dp.result("transfer_dp", format!("as `transfer`, trained with DP-SGD (σ = {:.4}, C = {}, q = {:.4}{map})", plan.noise_multiplier, plan.max_grad_norm, plan.sampling_rate)));
    }
    results.extend(baselines(cfg, &client, bow.as_ref(), dp_plan.as_ref(), &dp_references.own, &mut stages)?);
    let curve = if cfg.curve.enabled {
        Some(stages.time("learning curves", || crate::curve::learning_curves(cfg, &decrypted, &client, bow.as_ref(), &dp_references))?)
    } else {
        None
    };
    let tfhe = crate::privacy::budget::TfheStatement::new(&cfg.he, he_report.as_ref())?;
    let budget = match (&server.lower, remote_statement) {
        (Some(lower), _) => crate::privacy::budget::BudgetReport::new(
            privacy_report.as_ref(),
            data.target.train.len(),
            lower.mechanisms(server.membership.as_ref(), &crate::privacy::budget::fitted_outside(cfg)),
            tfhe,
        )?,
        (None, statement) => crate::privacy::budget::BudgetReport::with_server_statement(
            privacy_report.as_ref(),
            data.target.train.len(),
            statement.unwrap_or_default(),
            tfhe,
        )?,
    };
    let report = crate::report::Report {
        name: cfg.name.clone(),
        seed: cfg.seed,
        version: env!("CARGO_PKG_VERSION").into(),
        threads: rayon::current_num_threads(),
        source: server.lower.as_ref().map(|l| l.meta.source.clone()),
        target: data.target_summary,
        source_overlap: server.overlap,
        server: remote.clone().unwrap_or_else(|| "local".into()),
        pretraining: server.lower.map(pretrain_summary),
        budget,
        results,
        head_history: head.trained.history.clone(),
        privacy: privacy_report,
        audit,
        he: he_report,
        curve,
        stages: stages.0,
        config: cfg.clone(),
    };
    let out = cfg.output_dir();
    report.write(&out)?; // creates `out`
    // Everything `evaluate` and `predict` need: the head's inputs and how new texts get them, the head, and the
    // manifest that ties them to this config.
    save_client_side(cfg, &out, &client_pipeline, bow.as_ref(), &transferred)?;
    model::save_module(&published, &out.join("head"))?;
    let mut manifest = crate::rundir::RunManifest { dp_references: Some(dp_references), lower_network: Some(network_id), ..crate::rundir::RunManifest::new(cfg) };
    manifest.head = Some(crate::rundir::HeadShape::of(cfg, transferred.train.ncols()));
    manifest.write(&out)?;
    // Its results are written: the encrypted pass's journal has served.
    crate::he::journal::remove_all(&out)?;
    Ok(report)
}
