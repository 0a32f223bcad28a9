//! The encrypted stage of the protocol (TFHE), client side and orchestration.
//!
//! ```text
//! client: features -> quantize -> encrypt (seeded, small key) ──upload──▶ server: linear stage -> bootstrap per
//! neuron -> pool -> modulus switch ──download──▶ client: decrypt -> dequantize -> head
//! ```
//!
//! - [`quant`]: compiles the frozen lower network into a `cryptotl_server::IntegerProgram` (the server's asset).
//! - [`client`]: [`ClientKey`], the only holder of secret keys: keygen, encryption, decryption.
//! - [`Session`]: both roles in one process (as in the CryptoTL reference), every message serialized and read back
//!   through the size-limited wire format, so the byte counts and the checks are those of a real deployment.
//!
//! The server side lives in the separate crate `cryptotl_server`, which cannot name [`ClientKey`].

pub mod client;
pub mod journal;
pub mod quant;
pub mod transport;

use std::time::Instant;

use cryptotl_server::wire::{RoundedEvaluationKey, WireObject};
use cryptotl_server::{EncryptedOutput, EvaluationKey, IntegerProgram, ModelArtifact, ModelInterface, ParameterSet, ProgramInterface, frames};
use ndarray::{Array1, Array2, ArrayView2, Axis};
use serde::{Deserialize, Serialize};
use tfhe::core_crypto::commons::math::random::Seed;

pub use client::{ClientKey, seeder};
pub use journal::OutputJournal;
pub use transport::{Http, InProcess, Transport};

use crate::error::{Error, Result};

/// Samples per evaluation request (at most the server's `max_batch`): enough for the server to spread the batch
/// over its cores, small enough that a retried request repeats little. The config's default (`[he] batch`).
pub use crate::config::DEFAULT_HE_BATCH as DEFAULT_BATCH;

/// The client's side of the protocol for one run: its key, the server it talks to (through a [`Transport`]), the
/// model's interface, the id of its uploaded evaluation key.
pub struct Session {
    /// The client's secret key.
    pub client: ClientKey,
    transport: Box<dyn Transport>,
    /// What the server publishes about its model.
    pub model: ModelInterface,
    /// What the client knows of the program (quantization).
    pub interface: ProgramInterface,
    /// The server's program, in the one-process simulation only: the clear-integer oracle the decrypted outputs
    /// are compared with. A real client never has it.
    oracle: Option<IntegerProgram>,
    /// The serialized evaluation key, kept to upload again if the server lost it; `None` for a key kept from an
    /// earlier session until the server asks for it (then made anew from the secret key).
    evaluation_key: std::cell::RefCell<Option<Vec<u8>>>,
    key_id: std::cell::RefCell<String>,
    /// Where the client key is kept between sessions ([`Session::connect_keeping_key`]), to record a new key id.
    key_file: Option<std::path::PathBuf>,
    /// True when this session reuses a client key, and the server's copy of its evaluation key, from an earlier
    /// session: no key was generated or uploaded.
    pub key_reused: bool,
    /// Seconds to generate the client's keys.
    pub keygen_seconds: f64,
    /// Seconds to upload the evaluation key (and for the server to check and store it).
    pub key_upload_seconds: f64,
    /// Seconds for the server to prepare its evaluator for this key (read it, Fourier transform, tables), as the
    /// server reported it; NaN until the first batch.
    pub server_setup_seconds: std::cell::Cell<f64>,
    /// Serialized size of the evaluation key (sent once).
    pub evaluation_key_bytes: usize,
    /// Samples per request.
    pub batch: usize,
    seeder: std::cell::RefCell<Box<dyn tfhe::core_crypto::prelude::Seeder>>,
}

/// A client key kept between sessions ([`Session::connect_keeping_key`]).
#[derive(Serialize, Deserialize)]
struct SavedClientKey {
    /// The model, parameter set and server it was made for: [`key_identity`].
    identity: String,
    /// The server's id for its copy of the evaluation key.
    key_id: String,
    /// The [`ClientKey`], serialized.
    client_key: Vec<u8>,
}

/// `key` serialized in the smallest form the server reads: rounded ([`RoundedEvaluationKey`], 22% smaller) when its
/// interface lists it, else whole (a server built before 2026-12-06).
fn evaluation_key_bytes(key: &EvaluationKey, model: &ModelInterface, params: ParameterSet) -> Result<Vec<u8>> {
    Ok(if model.reads_rounded_keys() {
        RoundedEvaluationKey::round(key, params).to_bytes(RoundedEvaluationKey::size_limit(params))?
    } else {
        key.to_bytes(EvaluationKey::size_limit(params))?
    })
}

/// What a kept key is bound to: the model (the SHA-256 of its program), the parameter set, the server and, for a
/// remote one, the token (the server binds an uploaded key to the token that sent it, and refuses it to any other:
/// a key kept under a token since revoked or rotated would be refused for ever, so another token makes a new key).
fn key_identity(model: &ModelInterface, transport: &dyn Transport) -> String {
    let base = format!("{} | {} | {}", model.model_id, model.parameter_set, transport.describe());
    match transport.principal() {
        p if p.is_empty() => base,
        p => format!("{base} | {p}"),
    }
}

/// The client key and evaluation-key id kept in `path` for `identity`, if there is one that can be used; a file
/// that cannot is reported and replaced by the caller.
fn saved_key(path: &std::path::Path, identity: &str, params: ParameterSet) -> Option<(ClientKey, String)> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the kept client key: making a new one");
            return None;
        }
    };
    let saved: SavedClientKey = match serde_json::from_slice(&bytes) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "the kept client key file is corrupt: making a new key");
            return None;
        }
    };
    if saved.identity != identity {
        tracing::info!(path = %path.display(), kept_for = saved.identity, "the kept client key is for another server, model or parameter set: making a new one");
        return None;
    }
    match ClientKey::from_bytes(&saved.client_key, ClientKey::size_limit(params)) {
        Ok(client) if client.params().ok() == Some(params) => Some((client, saved.key_id)),
        Ok(_) => {
            tracing::warn!(path = %path.display(), "the kept client key is of another parameter set: making a new one");
            None
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "the kept client key is corrupt: making a new one");
            None
        }
    }
}

/// What one pass of samples through the encrypted path measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ForwardStats {
    /// Samples evaluated.
    pub samples: usize,
    /// Server evaluation seconds per sample (its batch's time shared out; the round trip when the server does not
    /// say), in sample order.
    pub server_seconds: Vec<f64>,
    /// Client seconds per sample (quantize, encrypt, serialize; read, decrypt).
    pub client_seconds: Vec<f64>,
    /// Serialized bytes of one encrypted input.
    pub upload_bytes: usize,
    /// Serialized bytes of one encrypted output.
    pub download_bytes: usize,
    /// Outputs compared with the clear-integer oracle (0 against a remote server: the client has no oracle).
    pub compared_outputs: usize,
    /// Outputs that differ from the oracle (a lookup one level off somewhere in their pool window).
    pub mismatched_outputs: usize,
    /// Largest |encrypted - oracle| in output levels.
    pub max_level_difference: i64,
    /// Samples whose outputs came from the journal of an interrupted pass ([`OutputJournal`]): encrypted and
    /// evaluated then, not again now (not in `samples` or the timings).
    pub resumed: usize,
}

impl ForwardStats {
    /// Add another pass's measurements to these.
    pub fn merge(&mut self, other: ForwardStats) {
        self.samples += other.samples;
        self.server_seconds.extend(other.server_seconds);
        self.client_seconds.extend(other.client_seconds);
        self.upload_bytes = self.upload_bytes.max(other.upload_bytes);
        self.download_bytes = self.download_bytes.max(other.download_bytes);
        self.compared_outputs += other.compared_outputs;
        self.mismatched_outputs += other.mismatched_outputs;
        self.max_level_difference = self.max_level_difference.max(other.max_level_difference);
        self.resumed += other.resumed;
    }

    /// Fraction of outputs that differ from the oracle.
    pub fn mismatch_rate(&self) -> f64 {
        self.mismatched_outputs as f64 / self.compared_outputs.max(1) as f64
    }
}

/// The `q`-quantile (0..=1) of some seconds (nearest rank).
pub fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[((q * (v.len() - 1) as f64).round() as usize).min(v.len() - 1)]
}

impl Session {
    /// The one-process simulation: the server's service for `program` runs in this process ([`InProcess`]), and
    /// the decrypted outputs are compared with the clear-integer oracle.
    /// `insecure_seed` makes keys and encryption noise reproducible (tests only).
    pub fn local(program: IntegerProgram, params: ParameterSet, insecure_seed: Option<u64>) -> Result<Self> {
        let artifact = ModelArtifact::new(program.clone(), params, serde_json::Value::Null, serde_json::Value::Null)?;
        Self::connect(Box::new(InProcess::new(artifact)?), Some(program), insecure_seed)
    }

    /// The one-process simulation keeping its keys, as a client of a remote server keeps its key
    /// ([`Self::connect_keeping_key`]): the client key in `key_file` (owner-only) and the simulated server's
    /// evaluation keys in the folder `key_store` (about 40 MiB a key), so a later session for the same program and
    /// parameter set makes no key. No oracle: its callers (`predict`) compare nothing.
    pub fn local_keeping_key(
        program: IntegerProgram,
        params: ParameterSet,
        insecure_seed: Option<u64>,
        key_file: &std::path::Path,
        key_store: &std::path::Path,
    ) -> Result<Self> {
        let artifact = ModelArtifact::new(program, params, serde_json::Value::Null, serde_json::Value::Null)?;
        let transport = InProcess::with_key_store(artifact, key_store)?;
        Self::connect_keeping_key(Box::new(transport), insecure_seed, key_file, true)
    }

    /// Fetch the model's interface through `transport`, generate keys for its parameter set, upload the
    /// evaluation key. `oracle`: the server's program, for the one-process simulation's comparison only.
    pub fn connect(transport: Box<dyn Transport>, oracle: Option<IntegerProgram>, insecure_seed: Option<u64>) -> Result<Self> {
        let model = transport.interface()?;
        Self::with_new_key(transport, model, oracle, insecure_seed)
    }

    /// [`Self::connect`] to a remote server, keeping the client key in `key_file` between sessions, as a
    /// deployed client keeps its keys: a later session with the same server, model and parameter set reuses the
    /// secret key and the evaluation key the server already stores, so it neither generates keys (about a second)
    /// nor uploads the 50 MiB evaluation key again, nor leaves one more key in the server's store. If the server has
    /// lost that key (evicted, another store), a new evaluation key is made from the kept secret key and uploaded
    /// once. A missing, unreadable or foreign `key_file` means a new key, written there (owner-only, atomically);
    /// the file holds the client's secret key and is never sent. `reuse = false` always makes a new key (and keeps
    /// it): a run's report then measures key generation and upload, and the predictions after it reuse its key.
    pub fn connect_keeping_key(transport: Box<dyn Transport>, insecure_seed: Option<u64>, key_file: &std::path::Path, reuse: bool) -> Result<Self> {
        let model = transport.interface()?;
        let params = model.validate()?;
        let identity = key_identity(&model, transport.as_ref());
        if let Some((client, key_id)) = saved_key(key_file, &identity, params).filter(|_| reuse) {
            tracing::info!(server = transport.describe(), key_file = %key_file.display(), "TFHE keys: reusing the kept client key");
            let interface = model.program.clone();
            return Ok(Self {
                client,
                transport,
                batch: DEFAULT_BATCH.min(model.max_batch),
                model,
                interface,
                oracle: None,
                evaluation_key_bytes: 0,
                evaluation_key: None.into(),
                key_id: key_id.into(),
                key_file: Some(key_file.to_path_buf()),
                key_reused: true,
                keygen_seconds: 0.0,
                key_upload_seconds: 0.0,
                server_setup_seconds: f64::NAN.into(),
                seeder: seeder(insecure_seed).into(),
            });
        }
        let mut session = Self::with_new_key(transport, model, None, insecure_seed)?;
        session.key_file = Some(key_file.to_path_buf());
        session.save_key()?;
        Ok(session)
    }

    /// Write the client key and the server's id for its evaluation key to `key_file`, owner-only.
    fn save_key(&self) -> Result<()> {
        let Some(path) = &self.key_file else { return Ok(()) };
        let params = self.client.params()?;
        let saved = SavedClientKey {
            identity: key_identity(&self.model, self.transport.as_ref()),
            key_id: self.key_id.borrow().clone(),
            client_key: self.client.to_bytes(ClientKey::size_limit(params))?,
        };
        let json = serde_json::to_vec(&saved).map_err(|e| Error::Internal(format!("client key file: {e}")))?;
        crate::atomic::write_private(path, &json)
    }

    fn with_new_key(transport: Box<dyn Transport>, model: ModelInterface, oracle: Option<IntegerProgram>, insecure_seed: Option<u64>) -> Result<Self> {
        let params = model.validate()?;
        let interface = model.program.clone();
        let mut seeder = seeder(insecure_seed);
        let t = Instant::now();
        let (client, evaluation_key) = ClientKey::generate(params, seeder.as_mut());
        let keygen_seconds = t.elapsed().as_secs_f64();
        let evaluation_key = evaluation_key_bytes(&evaluation_key, &model, params)?;
        let t = Instant::now();
        let key_id = transport.upload_key(&evaluation_key)?;
        let key_upload_seconds = t.elapsed().as_secs_f64();
        tracing::info!(server = transport.describe(), keygen_seconds, key_upload_seconds, evaluation_key_mib = evaluation_key.len() as f64 / 1048576.0, "TFHE keys ready");
        Ok(Self {
            client,
            transport,
            batch: DEFAULT_BATCH.min(model.max_batch),
            model,
            interface,
            oracle,
            evaluation_key_bytes: evaluation_key.len(),
            evaluation_key: Some(evaluation_key).into(),
            key_id: key_id.into(),
            key_file: None,
            key_reused: false,
            keygen_seconds,
            key_upload_seconds,
            server_setup_seconds: f64::NAN.into(),
            seeder: seeder.into(),
        })
    }

    /// Where the server is (`local` for the one-process simulation).
    pub fn server(&self) -> String {
        self.transport.describe()
    }

    /// The range of each output over the server's source data, as the model's interface publishes it
    /// (`features.output_ranges`, written by `cryptotl server build`): where a DP head centres these outputs
    /// ([`crate::pipeline::DpReferences`]). `None` when absent or unusable (not one finite `[lo, hi]` per output):
    /// the head then leaves them uncentred, which costs accuracy but nothing else.
    pub fn published_output_ranges(&self) -> Option<Vec<(f32, f32)>> {
        let ranges: Vec<(f32, f32)> = serde_json::from_value(self.model.features.get("output_ranges")?.clone()).ok()?;
        let usable = ranges.len() == self.interface.outputs && ranges.iter().all(|(lo, hi)| lo.is_finite() && hi.is_finite() && lo <= hi);
        if !usable {
            tracing::warn!(server = self.transport.describe(), "the server's published output ranges are unusable; DP heads leave its outputs uncentred");
        }
        usable.then_some(ranges)
    }

    /// The server's published privacy statement (its rows of the budget table).
    pub fn server_privacy(&self) -> Result<crate::privacy::budget::ServerStatement> {
        let v = self.transport.privacy()?;
        let statement: crate::privacy::budget::ServerStatement =
            serde_json::from_value(v).map_err(|e| Error::Server { server: self.transport.describe(), message: format!("unreadable privacy statement: {e}") })?;
        statement.check().map_err(|m| Error::Server { server: self.transport.describe(), message: format!("privacy statement refused: {m}") })?;
        Ok(statement)
    }

    /// Send at most `n` samples per request (at least 1, at most the server's `max_batch`).
    pub fn set_batch(&mut self, n: usize) {
        self.batch = n.clamp(1, self.model.max_batch);
    }

    /// Send one framed batch, uploading the key again if the server no longer has it.
    fn evaluate(&self, batch: &[u8]) -> Result<transport::Evaluation> {
        for _ in 0..2 {
            let id = self.key_id.borrow().clone();
            if let Some(e) = self.transport.evaluate(&id, batch)? {
                return Ok(e);
            }
            tracing::info!(server = self.transport.describe(), "the server no longer has our evaluation key: uploading it again");
            let mut kept = self.evaluation_key.borrow_mut();
            if kept.is_none() {
                let params = self.client.params()?;
                let key = self.client.new_evaluation_key(self.seeder.borrow_mut().as_mut())?;
                *kept = Some(evaluation_key_bytes(&key, &self.model, params)?);
            }
            let bytes = kept.as_deref().unwrap_or_default();
            *self.key_id.borrow_mut() = self.transport.upload_key(bytes)?;
            drop(kept);
            self.save_key()?;
        }
        Err(Error::Server { server: self.transport.describe(), message: "lost the evaluation key again right after it was uploaded".into() })
    }

    /// Some samples (rows, scaled features) through the protocol: quantize, encrypt, one request, decrypt.
    /// Returns each sample's output levels and the batch's stats.
    pub fn forward_batch(&self, rows: &[Vec<f32>]) -> Result<(Vec<Vec<i64>>, ForwardStats)> {
        let seeds = self.draw_seeds(rows.len());
        let levels: Vec<Vec<u16>> = rows.iter().map(|x| self.interface.quantize(x)).collect();
        self.exchange(prepare_batch(&self.client, &self.interface, self.model.input_limit, levels, &seeds)?)
    }

    /// What names this session's [`OutputJournal`]: the model (the SHA-256 of its program), the parameter set and
    /// the server. The outputs depend on the model alone; the other two keep the report true (a resumed pass was
    /// evaluated by the server, under the parameter set, that the report names).
    pub fn journal_identity(&self) -> String {
        format!("{} | {} | {}", self.model.model_id, self.model.parameter_set, self.transport.describe())
    }

    /// Compare some outputs with the clear-integer oracle (the one-process simulation only), into `stats`.
    fn check_oracle<'a>(&self, samples: impl IntoIterator<Item = (&'a [u16], &'a [i64])>, stats: &mut ForwardStats) {
        if let Some(program) = &self.oracle {
            for (q, got) in samples {
                let want = program.evaluate_clear(q);
                let diffs = got.iter().zip(&want).map(|(a, b)| (a - b).abs());
                stats.compared_outputs += got.len();
                stats.mismatched_outputs += diffs.clone().filter(|&d| d != 0).count();
                stats.max_level_difference = stats.max_level_difference.max(diffs.max().unwrap_or(0));
            }
        }
    }

    /// One encryption seed per sample, drawn in order from the session's seeder.
    fn draw_seeds(&self, n: usize) -> Vec<Seed> {
        let mut seeder = self.seeder.borrow_mut();
        (0..n).map(|_| seeder.seed()).collect()
    }

    /// Send a prepared batch, decrypt the answer, and measure.
    fn exchange(&self, prepared: PreparedBatch) -> Result<(Vec<Vec<i64>>, ForwardStats)> {
        let t = Instant::now();
        let answer = self.evaluate(&prepared.body)?;
        self.receive(prepared, answer, t.elapsed().as_secs_f64())
    }

    /// Decrypt the server's `answer` to a prepared batch (sent `round_trip` seconds before it came), and measure.
    fn receive(&self, prepared: PreparedBatch, answer: transport::Evaluation, round_trip: f64) -> Result<(Vec<Vec<i64>>, ForwardStats)> {
        let PreparedBatch { levels, upload_bytes, encrypt_seconds, .. } = prepared;
        let params = self.client.params()?;
        let iface = &self.interface;
        if let Some(s) = answer.setup_seconds.filter(|&s| s > 0.0) {
            self.server_setup_seconds.set(s);
        }
        let t = Instant::now();
        let server = || Error::Server { server: self.transport.describe(), message: "malformed evaluation answer".into() };
        // The client bounds the answer by its own computation, not by the limit the server published.
        let output_limit = EncryptedOutput::size_limit(params, iface.outputs);
        let items = frames::decode(&answer.body, levels.len(), output_limit).map_err(|e| Error::Server { server: self.transport.describe(), message: e.to_string() })?;
        if items.len() != levels.len() {
            return Err(server());
        }
        let outputs = items
            .iter()
            .map(|b| {
                let out = EncryptedOutput::from_bytes(b, output_limit)?;
                self.client.decrypt(&out, iface).map_err(Error::from)
            })
            .collect::<Result<Vec<_>>>()?;
        let decrypt_seconds = t.elapsed().as_secs_f64();
        let n = levels.len() as f64;
        let per_sample = answer.server_seconds.unwrap_or(round_trip) / n;
        let mut stats = ForwardStats {
            samples: levels.len(),
            server_seconds: vec![per_sample; levels.len()],
            client_seconds: vec![(encrypt_seconds + decrypt_seconds) / n; levels.len()],
            upload_bytes,
            download_bytes: items.iter().map(|b| b.len()).max().unwrap_or(0),
            ..Default::default()
        };
        self.check_oracle(levels.iter().map(Vec::as_slice).zip(outputs.iter().map(Vec::as_slice)), &mut stats);
        Ok((outputs, stats))
    }

    /// Every row of `x` (scaled features) through the encrypted path, [`Session::batch`] samples per request;
    /// returns the dequantized outputs. Against a server on another machine the client encrypts the next batch
    /// while the server evaluates this one (one batch ahead, in a second thread) and keeps two requests in flight
    /// (the server evaluates one while the other's outputs download); the one-process simulation, whose server
    /// shares these cores, goes one batch at a time.
    pub fn forward(&self, x: ArrayView2<f32>, what: &str) -> Result<(Array2<f32>, ForwardStats)> {
        self.forward_journaled(x, what, None)
    }

    /// [`Session::forward`], resuming from and appending to `journal` ([`OutputJournal`], opened for
    /// [`Session::journal_identity`]): samples it holds are not sent again, and each batch's outputs are recorded
    /// as they come back, so a pass killed midway loses at most the batches in flight.
    pub fn forward_journaled(&self, x: ArrayView2<f32>, what: &str, mut journal: Option<&mut OutputJournal>) -> Result<(Array2<f32>, ForwardStats)> {
        crate::features::check_finite(x)?;
        if x.ncols() != self.interface.input_dim {
            return Err(Error::Features(format!("{} features per sample, the server's model takes {}", x.ncols(), self.interface.input_dim)));
        }
        let bar = crate::progress::bar(x.nrows() as u64, &format!("encrypted forward: {what}"));
        let mut out = Array2::zeros((x.nrows(), self.interface.outputs));
        let mut stats = ForwardStats::default();
        let levels: Vec<Vec<u16>> = x.axis_iter(Axis(0)).map(|r| self.interface.quantize(&r.to_vec())).collect();
        // Samples an interrupted pass already took through: their outputs, checked against the oracle like new ones.
        let mut todo = Vec::with_capacity(levels.len());
        for (i, l) in levels.iter().enumerate() {
            match journal.as_deref().and_then(|j| j.get(l)) {
                Some(o) => {
                    out.row_mut(i).assign(&Array1::from(self.interface.dequantize(o)));
                    self.check_oracle([(l.as_slice(), o)], &mut stats);
                    stats.resumed += 1;
                }
                None => todo.push(i),
            }
        }
        if stats.resumed > 0 {
            bar.inc(stats.resumed as u64);
            tracing::info!(resumed = stats.resumed, of = levels.len(), "samples taken from the journal of an interrupted pass");
        }
        let batch = self.batch.max(1);
        let mut take = |rows: &[usize], outputs: Vec<Vec<i64>>, s: ForwardStats| -> Result<()> {
            for (&i, o) in rows.iter().zip(&outputs) {
                out.row_mut(i).assign(&Array1::from(self.interface.dequantize(o)));
            }
            if let Some(j) = journal.as_deref_mut() {
                let done: Vec<(&[u16], &[i64])> = rows.iter().zip(&outputs).map(|(&i, o)| (levels[i].as_slice(), o.as_slice())).collect();
                j.append(&done)?;
            }
            bar.inc(outputs.len() as u64);
            stats.merge(s);
            Ok(())
        };
        // The pass's seeds are drawn up front, in sample order, as `forward_batch` would draw them: the same seed
        // gives the same ciphertexts whichever way the batches are encrypted.
        let seeds = self.draw_seeds(todo.len());
        let (client, interface, limit) = (&self.client, &self.interface, self.model.input_limit);
        let batch_levels = |rows: &[usize]| -> Vec<Vec<u16>> { rows.iter().map(|&i| levels[i].clone()).collect() };
        if self.transport.shares_our_cores() {
            for (rows, seeds) in todo.chunks(batch).zip(seeds.chunks(batch)) {
                let (outputs, s) = self.exchange(prepare_batch(client, interface, limit, batch_levels(rows), seeds)?)?;
                take(rows, outputs, s)?;
            }
        } else {
            std::thread::scope(|scope| -> Result<()> {
                let (ready, prepared) = std::sync::mpsc::sync_channel::<Result<PreparedBatch>>(1);
                let (todo, seeds, batch_levels) = (&todo, &seeds, &batch_levels);
                scope.spawn(move || {
                    for (rows, seeds) in todo.chunks(batch).zip(seeds.chunks(batch)) {
                        // Stops when the receiver is gone (an error ended the pass).
                        if ready.send(prepare_batch(client, interface, limit, batch_levels(rows), seeds)).is_err() {
                            return;
                        }
                    }
                });
                // Requests in flight, oldest first. With two, the server evaluates the next batch while this
                // one's outputs download and decrypt, so a slow link costs little beside the server's work.
                let mut in_flight = std::collections::VecDeque::new();
                let mut batches = prepared.iter().zip(todo.chunks(batch));
                loop {
                    while in_flight.len() < REQUESTS_IN_FLIGHT {
                        let Some((next, rows)) = batches.next() else { break };
                        let (next, id, transport) = (next?, self.key_id.borrow().clone(), &*self.transport);
                        let sent = scope.spawn(move || {
                            let t = Instant::now();
                            let answer = transport.evaluate(&id, &next.body);
                            (next, answer, t.elapsed().as_secs_f64())
                        });
                        in_flight.push_back((sent, rows));
                    }
                    let Some((sent, rows)) = in_flight.pop_front() else { break };
                    let (next, answer, round_trip) = sent.join().map_err(|_| Error::Internal("an evaluation request's thread panicked".into()))?;
                    let (answer, round_trip) = match answer? {
                        Some(a) => (a, round_trip),
                        // The server lost our key: upload it again and send this batch once more, here.
                        None => {
                            let t = Instant::now();
                            (self.evaluate(&next.body)?, t.elapsed().as_secs_f64())
                        }
                    };
                    let (outputs, s) = self.receive(next, answer, round_trip)?;
                    take(rows, outputs, s)?;
                }
                Ok(())
            })?;
        }
        bar.finish_and_clear();
        Ok((out, stats))
    }
}

/// Evaluation requests a pass keeps in flight against a server on another machine.
const REQUESTS_IN_FLIGHT: usize = 2;

/// A batch ready to send: its quantized levels (for the oracle comparison), the framed ciphertexts, the size of
/// the largest upload and the seconds the client spent making them.
struct PreparedBatch {
    levels: Vec<Vec<u16>>,
    body: Vec<u8>,
    upload_bytes: usize,
    encrypt_seconds: f64,
}

/// Encrypt (in parallel, [`ClientKey::encrypt_batch`]), serialize and frame some samples' quantized levels.
fn prepare_batch(client: &ClientKey, iface: &ProgramInterface, input_limit: u64, levels: Vec<Vec<u16>>, seeds: &[Seed]) -> Result<PreparedBatch> {
    let t = Instant::now();
    let inputs = client.encrypt_with_seeds(&levels, iface, seeds)?;
    let uploads = inputs.iter().map(|c| c.to_bytes(input_limit).map_err(Error::from)).collect::<Result<Vec<_>>>()?;
    let body = frames::encode(&uploads);
    Ok(PreparedBatch { levels, body, upload_bytes: uploads.iter().map(Vec::len).max().unwrap_or(0), encrypt_seconds: t.elapsed().as_secs_f64() })
}

/// The encrypted stage's section of the run report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeReport {
    /// The server that evaluated the lower network: `local` (the one-process simulation) or its URL.
    #[serde(default = "local_server")]
    pub server: String,
    /// tfhe-rs parameter set.
    pub parameter_set: String,
    /// Security level of the parameter set (tfhe-rs's vetted sets: 128 bits).
    pub security_bits: u32,
    /// Small LWE dimension n, polynomial size N.
    pub lwe_dimension: usize,
    /// Polynomial size N.
    pub polynomial_size: usize,
    /// Quantization: input, accumulator, lookup-index and output bits.
    pub input_bits: u32,
    /// Accumulator bits.
    pub accumulator_bits: u32,
    /// Lookup-index bits.
    pub lookup_bits: u32,
    /// Output-level bits.
    pub output_bits: u32,
    /// Neurons (bootstraps per sample) and outputs per sample.
    pub neurons: usize,
    /// Outputs per sample.
    pub outputs: usize,
    /// Weight statistics of the compiled program (one-process simulation only: a remote server does not publish
    /// its weights).
    pub program: Option<quant::ProgramStats>,
    /// Counted cost per sample (its byte counts are estimates; `upload_bytes_per_sample` and
    /// `download_bytes_per_sample` are measured).
    pub counts: cryptotl_server::OpCounts,
    /// Key generation, seconds.
    pub keygen_seconds: f64,
    /// Key upload (the server checks and stores the key), seconds.
    #[serde(default)]
    pub key_upload_seconds: f64,
    /// The client key kept in the run's folder was reused (no key made, none uploaded): a remote run resuming an
    /// interrupted pass.
    #[serde(default)]
    pub key_reused: bool,
    /// Server setup (read key, Fourier transform, tables), seconds.
    pub server_setup_seconds: f64,
    /// Serialized evaluation key (sent once), bytes.
    pub evaluation_key_bytes: usize,
    /// Serialized encrypted input per sample, bytes.
    pub upload_bytes_per_sample: usize,
    /// Serialized encrypted output per sample, bytes.
    pub download_bytes_per_sample: usize,
    /// Samples evaluated under encryption, those resumed from an interrupted pass's journal included.
    pub samples: usize,
    /// Of `samples`, those whose outputs came from the journal of an interrupted pass of this run (encrypted and
    /// evaluated by the same server, model and parameter set then; the timings cover the others).
    #[serde(default)]
    pub resumed_samples: usize,
    /// Server time per sample, median (seconds).
    pub server_seconds_median: f64,
    /// Server time per sample, 95th percentile (seconds).
    pub server_seconds_p95: f64,
    /// Client time per sample (encrypt + decrypt), median (seconds).
    pub client_seconds_median: f64,
    /// Outputs differing from the clear-integer oracle by any number of levels (most by one lookup level), as a
    /// fraction (`off_by_one_rate` in reports before it was renamed).
    /// None against a remote server: only the one-process simulation has the oracle.
    #[serde(alias = "off_by_one_rate")]
    pub off_oracle_rate: Option<f64>,
    /// Largest |encrypted - oracle| in output levels.
    pub max_level_difference: Option<i64>,
    /// Accumulators of the client's samples outside the calibrated range (their lookups wrap), as a fraction.
    /// None against a remote server (it takes the server's program).
    pub calibration_overflow_rate: Option<f64>,
    /// Test accuracy of a head trained on the float lower network's outputs.
    pub accuracy_float: f64,
    /// ... on the clear-integer (quantized) outputs.
    pub accuracy_quantized: f64,
    /// ... on the encrypted path's decrypted outputs.
    pub accuracy_encrypted: f64,
}

fn local_server() -> String {
    "local".into()
}

impl HeReport {
    /// The report of a session after `stats`, without accuracies (filled in once the heads are trained).
    /// `program`: the server's program, known in the one-process simulation only (its lookup bits and weight
    /// statistics are not part of the public interface).
    pub fn new(session: &Session, program: Option<&IntegerProgram>, stats: &ForwardStats, overflow_rate: Option<f64>) -> Self {
        let params = session.client.params().unwrap_or_default();
        let iface = &session.interface;
        HeReport {
            server: session.server(),
            parameter_set: params.name().into(),
            security_bits: params.security_bits(),
            lwe_dimension: params.lwe_dimension(),
            polynomial_size: params.polynomial_size(),
            input_bits: iface.input_bits,
            accumulator_bits: iface.accumulator_bits,
            lookup_bits: program.map_or(0, |p| p.lookup_bits),
            output_bits: program.map_or(0, |p| p.output_bits),
            neurons: session.model.counts.bootstraps,
            outputs: iface.outputs,
            program: program.map(quant::ProgramStats::of),
            counts: session.model.counts,
            keygen_seconds: session.keygen_seconds,
            key_upload_seconds: session.key_upload_seconds,
            key_reused: session.key_reused,
            server_setup_seconds: session.server_setup_seconds.get(),
            evaluation_key_bytes: session.evaluation_key_bytes,
            upload_bytes_per_sample: stats.upload_bytes,
            download_bytes_per_sample: stats.download_bytes,
            samples: stats.samples + stats.resumed,
            resumed_samples: stats.resumed,
            server_seconds_median: quantile(&stats.server_seconds, 0.5),
            server_seconds_p95: quantile(&stats.server_seconds, 0.95),
            client_seconds_median: quantile(&stats.client_seconds, 0.5),
            off_oracle_rate: (stats.compared_outputs > 0).then(|| stats.mismatch_rate()),
            max_level_difference: (stats.compared_outputs > 0).then_some(stats.max_level_difference),
            calibration_overflow_rate: overflow_rate,
            accuracy_float: f64::NAN,
            accuracy_quantized: f64::NAN,
            accuracy_encrypted: f64::NAN,
        }
    }
}
