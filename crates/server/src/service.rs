//! The model owner's service, apart from any transport: publish the interface and the privacy statement, take a
//! client's evaluation key into the [`KeyStore`], evaluate batches of encrypted inputs under it. The HTTP server
//! ([`crate::http`]) and the client's in-process transport both call exactly this.
//!
//! Every request is checked before any work: sizes against the interface's limits, the key's parameter set and
//! dimensions, each ciphertext's parameter set, key tag and shape. A refusal is a [`ServiceError`] whose kind maps
//! onto an HTTP status; nothing a client sends makes this code panic.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::artifact::{ModelArtifact, ModelInterface};
use crate::auth::ClientId;
use crate::error::HeError;
use crate::eval::Evaluator;
use crate::frames;
use crate::keystore::{KeyStore, StoreError};
use crate::wire::{EncryptedInput, OutputFormat, WireObject as _, read_evaluation_key};

/// Evaluators (bootstrap keys in the Fourier domain, ~160 MB each for the default set) kept in memory.
const KEPT_EVALUATORS: usize = 2;

/// Why the service refused or failed; each kind is one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Malformed, foreign or inconsistent input (400).
    #[error("{0}")]
    BadRequest(String),
    /// A key of another client (403).
    #[error("{0}")]
    Forbidden(String),
    /// An unknown (or evicted) key id (404): upload the key again.
    #[error("{0}")]
    NotFound(String),
    /// A body over its limit (413).
    #[error("{0}")]
    TooLarge(String),
    /// A batch whose evaluation ran past the server's time limit and was stopped (413: the same request would
    /// fail again; fewer samples per request pass).
    #[error("{0}")]
    TimedOut(String),
    /// The server's own failure (500).
    #[error("{0}")]
    Internal(String),
}

impl ServiceError {
    /// The HTTP status code of this error.
    pub fn status(&self) -> u16 {
        match self {
            ServiceError::BadRequest(_) => 400,
            ServiceError::Forbidden(_) => 403,
            ServiceError::NotFound(_) => 404,
            ServiceError::TooLarge(_) | ServiceError::TimedOut(_) => 413,
            ServiceError::Internal(_) => 500,
        }
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ServiceError::NotFound(e.to_string()),
            StoreError::Forbidden => ServiceError::Forbidden(e.to_string()),
            StoreError::BadId(_) => ServiceError::BadRequest(e.to_string()),
            StoreError::File(f) => ServiceError::Internal(format!("key store: {f}")),
        }
    }
}

fn bad(e: HeError) -> ServiceError {
    ServiceError::BadRequest(e.to_string())
}

/// One evaluated batch.
#[derive(Debug)]
pub struct Evaluated {
    /// The framed encrypted outputs, in input order.
    pub body: Vec<u8>,
    /// Samples evaluated.
    pub samples: usize,
    /// Bootstraps run.
    pub bootstraps: usize,
    /// Seconds spent preparing the evaluator (0 when it was in memory).
    pub setup_seconds: f64,
    /// Seconds of homomorphic evaluation.
    pub eval_seconds: f64,
}

/// The service (see the module docs).
pub struct Service {
    artifact: ModelArtifact,
    store: KeyStore,
    /// (key id, owner's token hash, evaluator), most recently used last.
    evaluators: Mutex<Vec<(String, String, Arc<Evaluator>)>>,
    /// Longest one batch may evaluate (None: no limit).
    eval_limit: Option<Duration>,
}

impl Service {
    /// Serve `artifact` with keys kept in `store` (which must hold at least one key).
    pub fn new(artifact: ModelArtifact, store: KeyStore) -> Result<Self, HeError> {
        if store.max_bytes() < artifact.interface.evaluation_key_limit {
            return Err(HeError::Start {
                option: "--key-store-mib",
                message: format!(
                    "the key store's bound ({} bytes) is below one evaluation key ({} bytes)",
                    store.max_bytes(),
                    artifact.interface.evaluation_key_limit
                ),
            });
        }
        Ok(Self { artifact, store, evaluators: Mutex::default(), eval_limit: None })
    }

    /// Stop any batch whose evaluation runs longer than `limit` (refused with [`ServiceError::TimedOut`]).
    pub fn with_eval_limit(mut self, limit: Option<Duration>) -> Self {
        self.eval_limit = limit;
        self
    }

    /// What clients fetch first.
    pub fn interface(&self) -> &ModelInterface {
        &self.artifact.interface
    }

    /// The server's privacy statement.
    pub fn privacy(&self) -> &serde_json::Value {
        &self.artifact.privacy
    }

    /// Check an evaluation key (size, parameter set, dimensions) and store it for `client`; returns its id.
    pub fn upload_key(&self, client: &ClientId, bytes: &[u8]) -> Result<String, ServiceError> {
        let limit = self.artifact.interface.evaluation_key_limit;
        if bytes.len() as u64 > limit {
            return Err(ServiceError::TooLarge(format!("evaluation key of {} bytes; this model takes at most {limit}", bytes.len())));
        }
        read_evaluation_key(bytes, limit, self.artifact.params).map_err(bad)?;
        let id = self.store.put(&client.token_sha256, bytes)?;
        tracing::info!(client = %client.name, key = &id[..16], bytes = bytes.len(), "evaluation key stored");
        Ok(id)
    }

    fn evaluator(&self, client: &ClientId, key_id: &str) -> Result<(Arc<Evaluator>, f64), ServiceError> {
        let mut kept = self.evaluators.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = kept.iter().position(|(id, _, _)| id == key_id) {
            if kept[i].1 != client.token_sha256 {
                return Err(StoreError::Forbidden.into());
            }
            let entry = kept.remove(i);
            let ev = entry.2.clone();
            kept.push(entry);
            return Ok((ev, 0.0));
        }
        let bytes = self.store.get(&client.token_sha256, key_id)?;
        let t = Instant::now();
        let key = read_evaluation_key(&bytes, self.artifact.interface.evaluation_key_limit, self.artifact.params)
            .map_err(|e| ServiceError::Internal(format!("stored key {key_id}: {e}")))?;
        let ev = Arc::new(Evaluator::new(self.artifact.program.clone(), &key, self.artifact.params).map_err(bad)?);
        if kept.len() >= KEPT_EVALUATORS {
            kept.remove(0);
        }
        kept.push((key_id.to_string(), client.token_sha256.clone(), ev.clone()));
        Ok((ev, t.elapsed().as_secs_f64()))
    }

    /// Evaluate a framed batch of encrypted inputs ([`frames`]) under key `key_id` of `client`; the outputs come
    /// back framed, each written in `format` (what the client reads: [`OutputFormat::negotiate`]).
    pub fn evaluate(&self, client: &ClientId, key_id: &str, body: &[u8], format: OutputFormat) -> Result<Evaluated, ServiceError> {
        let iface = &self.artifact.interface;
        if body.len() as u64 > iface.request_limit() {
            return Err(ServiceError::TooLarge(format!("batch of {} bytes; this model takes at most {}", body.len(), iface.request_limit())));
        }
        let items = frames::decode(body, iface.max_batch, iface.input_limit).map_err(bad)?;
        let (ev, setup_seconds) = self.evaluator(client, key_id)?;
        let inputs = items
            .iter()
            .enumerate()
            .map(|(i, b)| EncryptedInput::from_bytes(b, iface.input_limit).map_err(|e| ServiceError::BadRequest(format!("sample {i}: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let t = Instant::now();
        let outputs = ev.evaluate_batch_within(&inputs, self.eval_limit).map_err(|e| match e {
            HeError::TimedOut { .. } => ServiceError::TimedOut(e.to_string()),
            e => bad(e),
        })?;
        let eval_seconds = t.elapsed().as_secs_f64();
        let bytes = outputs
            .iter()
            .map(|o| o.to_bytes_as(format, iface.output_limit).map_err(|e| ServiceError::Internal(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Evaluated { body: frames::encode(&bytes), samples: inputs.len(), bootstraps: inputs.len() * iface.counts.bootstraps, setup_seconds, eval_seconds })
    }
}
