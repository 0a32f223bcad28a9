//! The server's general sentiment network, pretrained and shipped inside the binary, so the quickstart runs on a
//! network pretrained on every sentiment source the project has (the fetched CrowdFlower tweets included) with
//! nothing fetched.
//!
//! It is a pretraining cache entry made portable: `datasets/shipped/sentiment_network/` holds
//!
//! | file | what |
//! |---|---|
//! | `manifest.json` | format, the [`crate::pipeline::pretrain_key`] of the config that made it, the command, the sha256 and size of the network, the pretraining meta data (source sizes, source accuracy per source task, each neuron's pre-activation range over the source training features, history), the server's fitted feature pipeline, the config tables that determine it (for people), and the membership attack on the source data measured when it was built |
//! | `pretrain_net.bin` | the lower network and its pretraining output layer, Burn's binary record |
//! | `source_fingerprints.bin` | the fingerprints of the source texts it learned from ([`crate::overlap`]), so a run can count the target texts among them without the source data; checked by the manifest's sha256 |
//!
//! `cargo run --release -- ship-network configs/quickstart.toml` rebuilds them from the fetched sources
//! (`python3 datasets/fetch.py tweets pang_lee_sentences`). A run whose [`crate::pipeline::pretrain_key`] equals the manifest's key
//! (and that has no cache entry) uses it instead of pretraining, and never loads the source data: the compiler
//! calibrates on the shipped ranges. Any change to what determines the network (source paths, features, network,
//! pretraining schedule, split, seed, version) changes the key and the run pretrains as before.
//!
//! Decoding checks the format and the network's sha256 before anything is parsed, so a corrupt file is an error,
//! never a network. An empty manifest means no network is shipped.

use std::path::Path;
use std::sync::OnceLock;

use burn::module::Module;
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use serde::{Deserialize, Serialize};

use crate::config::{LowerNetConfig, RunConfig};
use crate::error::{Error, Result};
use crate::features::FeaturePipeline;
use crate::model::{Cpu, PretrainNet};
use crate::pipeline::PretrainMeta;

/// Where the shipped network lives in the repository (and what `ship-network` writes by default).
pub const SHIPPED_NETWORK_DIR: &str = "datasets/shipped/sentiment_network";
/// The manifest's `format`.
pub const FORMAT: &str = "cryptotl-pretrained-network/1";
/// The command that rebuilds the shipped network.
pub const BUILD_COMMAND: &str = "python3 datasets/fetch.py tweets pang_lee_sentences && cargo run --release -- ship-network configs/quickstart.toml";

static MANIFEST: &str = include_str!("../datasets/shipped/sentiment_network/manifest.json");
static NETWORK: &[u8] = include_bytes!("../datasets/shipped/sentiment_network/pretrain_net.bin");
static FINGERPRINTS: &[u8] = include_bytes!("../datasets/shipped/sentiment_network/source_fingerprints.bin");
/// The file of the source fingerprints in a shipped network's folder.
pub const FINGERPRINTS_FILE: &str = "source_fingerprints.bin";

/// What `manifest.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: String,
    /// A name for reports.
    pub name: String,
    /// How to rebuild it.
    pub built_by: String,
    /// cryptotl version that built it.
    pub version: String,
    /// sha256 of `pretrain_net.bin`.
    pub network_sha256: String,
    /// Size of `pretrain_net.bin`.
    pub network_bytes: usize,
    /// The pretraining's meta data (its `key` is what a run matches).
    pub meta: PretrainMeta,
    /// The server's fitted feature pipeline.
    pub features: FeaturePipeline,
    /// The config tables that determine the network, for people (the key is what is checked).
    pub config: serde_json::Value,
    /// The membership attack on the source data measured when it was built ([`crate::membership`]), quoted by the
    /// budget of every run that uses the network unchanged.
    #[serde(default)]
    pub membership: Option<crate::membership::MembershipAttack>,
    /// The sha256 and count of [`FINGERPRINTS_FILE`]; none in manifests made before it was written.
    #[serde(default)]
    pub source_fingerprints: Option<FingerprintsEntry>,
}

/// What the manifest records of [`FINGERPRINTS_FILE`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FingerprintsEntry {
    /// sha256 of the file.
    pub sha256: String,
    /// Distinct source texts it holds.
    pub texts: usize,
}

/// A decoded shipped network.
#[derive(Debug, Clone)]
pub struct ShippedNetwork {
    /// The manifest.
    pub manifest: Manifest,
    network: Vec<u8>,
    /// The source texts it learned from, when the manifest records them.
    pub source_fingerprints: Option<crate::overlap::SourceFingerprints>,
}

use cryptotl_server::artifact::sha256_hex;

impl ShippedNetwork {
    /// Encode a pretraining network with its meta data, feature pipeline and the fingerprints of the source texts
    /// it learned from: `(manifest.json, pretrain_net.bin, source_fingerprints.bin)`.
    pub fn encode(
        cfg: &RunConfig,
        net: &PretrainNet<Cpu>,
        meta: &PretrainMeta,
        features: &FeaturePipeline,
        membership: Option<crate::membership::MembershipAttack>,
        fingerprints: &crate::overlap::SourceFingerprints,
    ) -> Result<(Vec<u8>, Vec<u8>, Vec<u8>)> {
        let fingerprint_bytes = fingerprints.encode();
        // Burn names each parameter by a random id, which its record keeps: numbered in order instead, the same
        // weights encode to the same bytes, so a rebuild of the same network has the same sha256.
        let network = BinBytesRecorder::<FullPrecisionSettings>::default()
            .record(net.clone().map(&mut NumberedParams(0)).into_record(), ())
            .map_err(|e| Error::Internal(format!("cannot encode the network: {e}")))?;
        let manifest = Manifest {
            format: FORMAT.into(),
            name: format!("{} network (pretrained on {})", cfg.name, cfg.source.name),
            built_by: BUILD_COMMAND.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            network_sha256: sha256_hex(&network),
            network_bytes: network.len(),
            meta: meta.clone(),
            // Where the building machine kept its model and caches is not part of what ships.
            features: features.clone().located_as(&crate::config::FeaturesConfig::default()),
            config: serde_json::json!({
                "seed": cfg.seed, "source": cfg.source, "features": cfg.features.key_material(), "split": cfg.split,
                "lower": cfg.lower, "pretrain": cfg.pretrain,
            }),
            membership,
            source_fingerprints: Some(FingerprintsEntry { sha256: sha256_hex(&fingerprint_bytes), texts: fingerprints.len() }),
        };
        let mut json = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Internal(format!("cannot encode the manifest: {e}")))?;
        json.push(b'\n');
        Ok((json, network, fingerprint_bytes))
    }

    /// Decode and check a manifest, its network bytes and its source fingerprints (empty when the manifest
    /// records none). `Ok(None)` for an empty manifest (nothing shipped).
    pub fn decode(manifest: &str, network: &[u8], fingerprints: &[u8]) -> Result<Option<Self>> {
        let what = Path::new(SHIPPED_NETWORK_DIR);
        if manifest.trim().is_empty() {
            return Ok(None);
        }
        let m: Manifest = serde_json::from_str(manifest).map_err(|e| Error::artifact(what, format!("corrupt manifest: {e}")))?;
        if m.format != FORMAT {
            return Err(Error::artifact(what, format!("format {:?}, expected {FORMAT:?}", m.format)));
        }
        if network.len() != m.network_bytes || sha256_hex(network) != m.network_sha256 {
            return Err(Error::artifact(what, format!(
                "pretrain_net.bin ({} bytes) does not match its manifest ({} bytes, sha256 {}): rebuild with `{BUILD_COMMAND}`",
                network.len(), m.network_bytes, m.network_sha256)));
        }
        if m.meta.source_ranges.iter().any(|(lo, hi)| !(lo.is_finite() && hi.is_finite() && lo <= hi)) {
            return Err(Error::artifact(what, "calibration ranges must be finite with min <= max"));
        }
        let source_fingerprints = match &m.source_fingerprints {
            None if fingerprints.is_empty() => None,
            None => return Err(Error::artifact(what, format!("{FINGERPRINTS_FILE} is not recorded in the manifest: rebuild with `{BUILD_COMMAND}`"))),
            Some(entry) => {
                if sha256_hex(fingerprints) != entry.sha256 {
                    return Err(Error::artifact(what, format!(
                        "{FINGERPRINTS_FILE} ({} bytes) does not match its manifest (sha256 {}): rebuild with `{BUILD_COMMAND}`",
                        fingerprints.len(), entry.sha256)));
                }
                let decoded = crate::overlap::SourceFingerprints::decode(fingerprints, &what.join(FINGERPRINTS_FILE))?;
                if decoded.len() != entry.texts {
                    return Err(Error::artifact(what, format!("{FINGERPRINTS_FILE} holds {} texts, its manifest says {}", decoded.len(), entry.texts)));
                }
                Some(decoded)
            }
        };
        Ok(Some(Self { manifest: m, network: network.to_vec(), source_fingerprints }))
    }

    /// The network, loaded into a skeleton of the run's architecture (the key match guarantees it is the same).
    pub fn network(&self, lower: &LowerNetConfig, input_dim: usize, outputs: usize, seed: u64) -> Result<PretrainNet<Cpu>> {
        let device = Default::default();
        let skeleton = PretrainNet::<Cpu>::new(lower, input_dim, outputs, seed, &device);
        // Checked by sha256 in `decode`, so the bytes are the ones `encode` wrote for this architecture.
        let record = BinBytesRecorder::<FullPrecisionSettings>::default()
            .load(self.network.clone(), &device)
            .map_err(|e| Error::artifact(Path::new(SHIPPED_NETWORK_DIR), format!("cannot decode the network: {e}")))?;
        Ok(skeleton.load_record(record))
    }
}

/// Gives a module's parameters the ids 0, 1, 2, ... in the order Burn visits them (see [`ShippedNetwork::encode`]).
struct NumberedParams(u64);

impl<B: burn::tensor::backend::Backend> burn::module::ModuleMapper<B> for NumberedParams {
    fn map_float<const D: usize>(&mut self, param: burn::module::Param<burn::tensor::Tensor<B, D>>) -> burn::module::Param<burn::tensor::Tensor<B, D>> {
        let (_, tensor, mapper) = param.consume();
        self.0 += 1;
        burn::module::Param::from_mapped_value(burn::module::ParamId::from(self.0 - 1), tensor, mapper)
    }
}

/// The network shipped in this binary (`None` when none is shipped). Decoded once.
pub fn shipped() -> Result<Option<&'static ShippedNetwork>> {
    static DECODED: OnceLock<std::result::Result<Option<ShippedNetwork>, String>> = OnceLock::new();
    match DECODED.get_or_init(|| ShippedNetwork::decode(MANIFEST, NETWORK, FINGERPRINTS).map_err(|e| e.to_string())) {
        Ok(n) => Ok(n.as_ref()),
        Err(e) => Err(Error::Internal(e.clone())),
    }
}

/// The shipped network when it was made by a config with pretraining key `key`.
pub fn find(key: &str) -> Option<Result<&'static ShippedNetwork>> {
    match shipped() {
        Ok(Some(n)) if n.manifest.meta.key == key => Some(Ok(n)),
        Ok(_) => None,
        Err(e) => Some(Err(e)),
    }
}

/// Pretrain (or load from the cache; never from the binary) the network of `cfg`, measure the membership attack on
/// its source data (`[audit] membership`), and write it to `dir` as a shippable entry, atomically. Returns the
/// manifest.
pub fn build(cfg: &RunConfig, dir: &Path) -> Result<Manifest> {
    if cfg.server_privacy.weight_noise.is_some() {
        return Err(Error::config_key("server_privacy.weight_noise", "a shipped network is the pretrained one; weight noise is drawn by each run"));
    }
    let (source, summary) = crate::pipeline::load_source(cfg)?;
    let lower = match crate::pipeline::verified_cached_pretrained(cfg, &source)? {
        Some(cached) => {
            // Trained on these source texts and this embedding table, but the model's embeddings of the other
            // texts came from the embedding cache as it was then, so say which network is shipped.
            tracing::warn!(
                dir = %cached.cache_dir.display(),
                "shipping the network pretrained earlier on the same source data, from the cache: move that folder aside \
                 to pretrain anew (with an empty embedding cache too, a rebuild reproduces the shipped bytes)"
            );
            cached
        }
        None => crate::pipeline::pretrain_on_source(cfg, &source, &summary)?,
    };
    // Measured on the network as every run that uses it sees it (dead units dropped: they output constant 0).
    let mut released = lower.clone();
    if cfg.lower.prune_dead {
        crate::pipeline::prune_dead_units(&mut released);
    }
    let membership = if cfg.audit.membership { Some(crate::pipeline::measure_membership(cfg, &released, &source)?) } else { None };
    // The pretraining output layer is not kept in memory (transfer drops it): read the whole network back.
    let device = Default::default();
    let skeleton = PretrainNet::<Cpu>::new(&cfg.lower, cfg.features.dim(), crate::pipeline::pretrain_outputs(cfg), cfg.seed, &device);
    let net = crate::model::load_module(skeleton, &lower.cache_dir.join("lower"), &device)?;
    let fingerprints = crate::overlap::SourceFingerprints::of_source(&source);
    let (manifest, network, fingerprints) = ShippedNetwork::encode(cfg, &net, &lower.meta, &lower.features, membership, &fingerprints)?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    crate::atomic::write(&dir.join("pretrain_net.bin"), &network)?;
    crate::atomic::write(&dir.join(FINGERPRINTS_FILE), &fingerprints)?;
    // Last: the manifest names the other two by their sha256.
    crate::atomic::write(&dir.join("manifest.json"), &manifest)?;
    let decoded = ShippedNetwork::decode(std::str::from_utf8(&manifest).expect("JSON is UTF-8"), &network, &fingerprints)?
        .ok_or_else(|| Error::Internal("empty manifest written".into()))?;
    Ok(decoded.manifest)
}
