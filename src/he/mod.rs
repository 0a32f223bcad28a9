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
pub mod quant;

use std::time::Instant;

use cryptotl_server::wire::WireObject;
use cryptotl_server::{EncryptedInput, EncryptedOutput, EvaluationKey, Evaluator, IntegerProgram, ParameterSet, ProgramInterface};
use ndarray::{Array1, Array2, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

pub use client::{ClientKey, seeder};

use crate::error::Result;

/// The protocol set up for one run: the client's key, the server's evaluator (holding the program and the
/// client's evaluation key, as received over the wire), and the program's public interface.
pub struct Session {
    /// The client's secret key.
    pub client: ClientKey,
    /// The server's evaluator.
    pub server: Evaluator,
    /// What the client knows of the program.
    pub interface: ProgramInterface,
    /// Seconds to generate the client's keys.
    pub keygen_seconds: f64,
    /// Seconds for the server to read the evaluation key and prepare (Fourier transform, lookup tables).
    pub server_setup_seconds: f64,
    /// Serialized size of the evaluation key (sent once).
    pub evaluation_key_bytes: usize,
    seeder: std::cell::RefCell<Box<dyn tfhe::core_crypto::prelude::Seeder>>,
}

/// What one pass of samples through the encrypted path measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ForwardStats {
    /// Samples evaluated.
    pub samples: usize,
    /// Server evaluation seconds per sample (reading the ciphertext included), in sample order.
    pub server_seconds: Vec<f64>,
    /// Client seconds per sample (quantize, encrypt, serialize; read, decrypt).
    pub client_seconds: Vec<f64>,
    /// Serialized bytes of one encrypted input.
    pub upload_bytes: usize,
    /// Serialized bytes of one encrypted output.
    pub download_bytes: usize,
    /// Outputs compared with the clear-integer oracle.
    pub compared_outputs: usize,
    /// Outputs that differ from the oracle (a lookup one level off somewhere in their pool window).
    pub mismatched_outputs: usize,
    /// Largest |encrypted - oracle| in output levels.
    pub max_level_difference: i64,
}

impl ForwardStats {
    fn merge(&mut self, other: ForwardStats) {
        self.samples += other.samples;
        self.server_seconds.extend(other.server_seconds);
        self.client_seconds.extend(other.client_seconds);
        self.upload_bytes = self.upload_bytes.max(other.upload_bytes);
        self.download_bytes = self.download_bytes.max(other.download_bytes);
        self.compared_outputs += other.compared_outputs;
        self.mismatched_outputs += other.mismatched_outputs;
        self.max_level_difference = self.max_level_difference.max(other.max_level_difference);
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
    /// Generate the client's keys, send the evaluation key to the server through the wire format, prepare the
    /// server's evaluator for `program`.
    /// `insecure_seed` makes keys and encryption noise reproducible (tests only).
    pub fn new(program: IntegerProgram, params: ParameterSet, insecure_seed: Option<u64>) -> Result<Self> {
        let mut seeder = seeder(insecure_seed);
        let t = Instant::now();
        let (client, evaluation_key) = ClientKey::generate(params, seeder.as_mut());
        let keygen_seconds = t.elapsed().as_secs_f64();
        let limit = EvaluationKey::size_limit(params);
        let bytes = evaluation_key.to_bytes(limit)?;
        drop(evaluation_key);
        let t = Instant::now();
        let received = EvaluationKey::from_bytes(&bytes, limit)?;
        let interface = program.interface();
        let server = Evaluator::new(program, &received, params)?;
        let server_setup_seconds = t.elapsed().as_secs_f64();
        tracing::info!(keygen_seconds, server_setup_seconds, evaluation_key_mib = bytes.len() as f64 / 1048576.0, "TFHE keys ready");
        Ok(Self { client, server, interface, keygen_seconds, server_setup_seconds, evaluation_key_bytes: bytes.len(), seeder: seeder.into() })
    }

    /// One sample through the whole protocol: returns output levels and this sample's stats.
    pub fn forward_one(&self, x: &[f32]) -> Result<(Vec<i64>, ForwardStats)> {
        let params = self.server.params();
        let iface = &self.interface;
        let t = Instant::now();
        let q = iface.quantize(x);
        let upload = self.client.encrypt(&q, iface, self.seeder.borrow_mut().as_mut())?.to_bytes(EncryptedInput::size_limit(iface.input_dim))?;
        let mut client_seconds = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let received = EncryptedInput::from_bytes(&upload, EncryptedInput::size_limit(self.server.program().input_dim))?;
        let download = self.server.evaluate(&received)?.to_bytes(EncryptedOutput::size_limit(params, self.server.program().outputs()))?;
        let server_seconds = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let output = EncryptedOutput::from_bytes(&download, EncryptedOutput::size_limit(params, iface.outputs))?;
        let levels = self.client.decrypt(&output, iface)?;
        client_seconds += t.elapsed().as_secs_f64();
        let oracle = self.server.program().evaluate_clear(&q);
        let diffs = levels.iter().zip(&oracle).map(|(a, b)| (a - b).abs());
        let stats = ForwardStats {
            samples: 1,
            server_seconds: vec![server_seconds],
            client_seconds: vec![client_seconds],
            upload_bytes: upload.len(),
            download_bytes: download.len(),
            compared_outputs: levels.len(),
            mismatched_outputs: diffs.clone().filter(|&d| d != 0).count(),
            max_level_difference: diffs.max().unwrap_or(0),
        };
        Ok((levels, stats))
    }

    /// Every row of `x` (scaled features) through the encrypted path; returns the dequantized outputs.
    pub fn forward(&self, x: ArrayView2<f32>, what: &str) -> Result<(Array2<f32>, ForwardStats)> {
        crate::features::check_finite(x)?;
        let bar = crate::progress::bar(x.nrows() as u64, &format!("encrypted forward: {what}"));
        let mut out = Array2::zeros((x.nrows(), self.interface.outputs));
        let mut stats = ForwardStats::default();
        for (mut row, xr) in out.axis_iter_mut(Axis(0)).zip(x.axis_iter(Axis(0))) {
            let (levels, s) = self.forward_one(&xr.to_vec())?;
            row.assign(&Array1::from(self.interface.dequantize(&levels)));
            stats.merge(s);
            bar.inc(1);
        }
        bar.finish_and_clear();
        Ok((out, stats))
    }
}
