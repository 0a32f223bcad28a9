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

/// The encrypted stage's section of the run report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeReport {
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
    /// Weight statistics of the compiled program.
    pub program: quant::ProgramStats,
    /// Counted cost per sample.
    pub counts: cryptotl_server::OpCounts,
    /// Key generation, seconds.
    pub keygen_seconds: f64,
    /// Server setup (read key, Fourier transform, tables), seconds.
    pub server_setup_seconds: f64,
    /// Serialized evaluation key (sent once), bytes.
    pub evaluation_key_bytes: usize,
    /// Serialized encrypted input per sample, bytes.
    pub upload_bytes_per_sample: usize,
    /// Serialized encrypted output per sample, bytes.
    pub download_bytes_per_sample: usize,
    /// Samples evaluated under encryption.
    pub samples: usize,
    /// Server time per sample, median (seconds).
    pub server_seconds_median: f64,
    /// Server time per sample, 95th percentile (seconds).
    pub server_seconds_p95: f64,
    /// Client time per sample (encrypt + decrypt), median (seconds).
    pub client_seconds_median: f64,
    /// Outputs differing from the clear-integer oracle by any number of levels (most by one lookup level), as a
    /// fraction (`off_by_one_rate` in reports before it was renamed).
    #[serde(alias = "off_by_one_rate")]
    pub off_oracle_rate: f64,
    /// Largest |encrypted - oracle| in output levels.
    pub max_level_difference: i64,
    /// Accumulators of the client's samples outside the calibrated range (their lookups wrap), as a fraction.
    pub calibration_overflow_rate: f64,
    /// Test accuracy of a head trained on the float lower network's outputs.
    pub accuracy_float: f64,
    /// ... on the clear-integer (quantized) outputs.
    pub accuracy_quantized: f64,
    /// ... on the encrypted path's decrypted outputs.
    pub accuracy_encrypted: f64,
}

impl HeReport {
    /// The report of a session after `stats`, without accuracies (filled in once the heads are trained).
    pub fn new(session: &Session, stats: &ForwardStats, overflow_rate: f64) -> Self {
        let prog = session.server.program();
        let params = session.server.params();
        HeReport {
            parameter_set: params.name().into(),
            security_bits: params.security_bits(),
            lwe_dimension: params.lwe_dimension(),
            polynomial_size: params.polynomial_size(),
            input_bits: prog.input_bits,
            accumulator_bits: prog.accumulator_bits,
            lookup_bits: prog.lookup_bits,
            output_bits: prog.output_bits,
            neurons: prog.neurons,
            outputs: prog.outputs(),
            program: quant::ProgramStats::of(prog),
            counts: session.server.counts(),
            keygen_seconds: session.keygen_seconds,
            server_setup_seconds: session.server_setup_seconds,
            evaluation_key_bytes: session.evaluation_key_bytes,
            upload_bytes_per_sample: stats.upload_bytes,
            download_bytes_per_sample: stats.download_bytes,
            samples: stats.samples,
            server_seconds_median: quantile(&stats.server_seconds, 0.5),
            server_seconds_p95: quantile(&stats.server_seconds, 0.95),
            client_seconds_median: quantile(&stats.client_seconds, 0.5),
            off_oracle_rate: stats.mismatch_rate(),
            max_level_difference: stats.max_level_difference,
            calibration_overflow_rate: overflow_rate,
            accuracy_float: f64::NAN,
            accuracy_quantized: f64::NAN,
            accuracy_encrypted: f64::NAN,
        }
    }
}
