//! `[he]`: the encrypted (TFHE) stage: quantization, parameter set, where the server is.

use std::path::PathBuf;

use cryptotl_server::program::BitWidths;
use serde::{Deserialize, Serialize};

use super::{Invalid, LowerNetConfig};
use crate::error::{Error, Result};

/// Samples per evaluation request when `[he] batch` is not given (at most the server's `max_batch`): enough for the
/// server to spread the batch over its cores, small enough that a retried request repeats little.
pub const DEFAULT_HE_BATCH: usize = 16;

/// The TFHE stage: how the frozen lower network is quantized and which tfhe-rs parameter set encrypts it.
/// See `cryptotl_server::program` for the exact integer semantics.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HeConfig {
    /// Evaluate the lower network under encryption (off: plaintext float, for experiments only).
    pub enabled: bool,
    /// A vetted tfhe-rs 1.8 parameter set by its constant's name.
    pub parameter_set: String,
    /// Bits per input feature level (features in [0, 1] become 0..2^bits - 1).
    pub input_bits: u32,
    /// Accumulator bits B the calibrated range of each neuron is mapped onto.
    pub accumulator_bits: u32,
    /// Top bits of the accumulator the bootstrap reads (lookup-table index bits).
    pub lookup_bits: u32,
    /// Bits of the activation's output levels.
    pub output_bits: u32,
    /// How each neuron's pre-activation range is chosen: `source` (min/max over the server's source training
    /// features, plus the margin: fine resolution, but a client whose features differ can fall outside it and its
    /// lookups wrap around: a small miss reads about the end's value, a larger one is reflected back into the
    /// range) or `input_box` (the exact range over every input in [0, 1]^d, plus the margin: never wraps, coarser
    /// resolution).
    pub calibration: Calibration,
    /// Widening of each neuron's calibrated pre-activation range, as a fraction of its width on each side.
    pub calibration_margin: f32,
    /// Seed keys and encryption noise deterministically. INSECURE (the keys become guessable): for reproducible
    /// tests only. Absent: fresh randomness from the CPU/OS.
    pub insecure_seed: Option<u64>,
    /// The model owner's server: `local` (the one-process simulation: the server's service runs in this process
    /// and the decrypted outputs are checked against its clear-integer program) or the URL of a `cryptotl serve`
    /// (`https://host:port`; `http://` only for a loopback host). With a URL, the client never sees the server's
    /// network: it fetches the interface, uploads its evaluation key once, sends encrypted batches.
    pub server: String,
    /// Environment variable holding the bearer token for a remote server (when `token_file` is not set).
    pub token_env: String,
    /// File holding the bearer token for a remote server (first line; takes precedence over `token_env`).
    pub token_file: Option<PathBuf>,
    /// PEM certificate to trust for a remote server (a private CA or the server's self-signed certificate).
    pub ca_cert: Option<PathBuf>,
    /// Samples per evaluation request (capped by the server's `max_batch`).
    pub batch: usize,
}

/// Where the encrypted lower network is evaluated (see [`HeConfig::server`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerLocation {
    /// The one-process simulation.
    Local,
    /// A remote `cryptotl serve` at this base URL.
    Remote(String),
}

/// Where the encrypted stage's per-neuron ranges come from (see [`HeConfig::calibration`]).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Calibration {
    /// Min/max over the server's source training features.
    #[default]
    Source,
    /// The exact range over the whole input box [0, 1]^d.
    InputBox,
}

impl Default for HeConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            parameter_set: cryptotl_server::ParameterSet::default().name().into(),
            input_bits: 4,
            accumulator_bits: 12,
            lookup_bits: 5,
            output_bits: 7,
            calibration: Calibration::default(),
            calibration_margin: 0.1,
            insecure_seed: None,
            server: "local".into(),
            token_env: "CRYPTOTL_TOKEN".into(),
            token_file: None,
            ca_cert: None,
            batch: DEFAULT_HE_BATCH,
        }
    }
}

impl HeConfig {
    /// The parameter set named by `parameter_set`.
    pub fn params(&self) -> Result<cryptotl_server::ParameterSet> {
        Ok(cryptotl_server::ParameterSet::from_name(&self.parameter_set)?)
    }

    /// Where the lower network is evaluated, checked: `local`, an `https://` URL, or an `http://` URL whose host is
    /// a loopback address (a token must not cross a network in the clear).
    pub fn server_location(&self) -> std::result::Result<ServerLocation, String> {
        let s = self.server.trim();
        if s == "local" {
            return Ok(ServerLocation::Local);
        }
        let (scheme, rest) = s.split_once("://").ok_or_else(|| format!("`{s}` is neither `local` nor a URL (https://host:port)"))?;
        let host = rest.split('/').next().unwrap_or("");
        let hostname = match host.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(""),
            None => host.rsplit_once(':').map_or(host, |(h, _)| h),
        };
        if hostname.is_empty() {
            return Err(format!("`{s}` has no host"));
        }
        match scheme {
            "https" => Ok(ServerLocation::Remote(s.trim_end_matches('/').into())),
            "http" => {
                let loopback = hostname == "localhost" || hostname.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
                if !loopback {
                    return Err(format!("`{s}`: plain http:// is only allowed to a loopback host (the bearer token would cross the network in the clear); use https://"));
                }
                Ok(ServerLocation::Remote(s.trim_end_matches('/').into()))
            }
            other => Err(format!("`{s}`: scheme `{other}` is not http or https")),
        }
    }

    /// The bearer token for a remote server: the first line of `token_file`, else the environment variable
    /// `token_env`.
    pub fn token(&self) -> Result<String> {
        let err = |m: String| Error::config_key("he.token_file", m);
        let token = match &self.token_file {
            Some(p) => std::fs::read_to_string(p).map_err(|e| err(format!("{}: {e}", p.display())))?.lines().next().unwrap_or("").trim().to_string(),
            None => std::env::var(&self.token_env).map_err(|_| Error::config_key("he.token_env", format!("the environment variable {} holds no token (set it, or set he.token_file)", self.token_env)))?,
        };
        if token.is_empty() {
            return Err(err("the token is empty".into()));
        }
        Ok(token)
    }
}

impl HeConfig {
    /// The encrypted stage's settings against the parameter set and the lower network: the server crate's own
    /// bit-width check ([`cryptotl_server::program::BitWidths`]), the network ending at the activation, the server's
    /// address and the batch size.
    pub(super) fn check(&self, l: &LowerNetConfig, at: Invalid) -> Result<()> {
        let params = cryptotl_server::ParameterSet::from_name(&self.parameter_set).map_err(|e| at.key("he.parameter_set", e.to_string()))?;
        if l.output > 0 {
            return Err(at.key("lower.output", format!(
                "is {}, but the encrypted network ends at the pooled activation: set lower.output = 0 (the client's first \
                 head layer takes the role of the server's last one; a dense layer after a bootstrap is drowned in its \
                 output noise), or set he.enabled = false", l.output)));
        }
        let widths = BitWidths {
            input_bits: self.input_bits,
            accumulator_bits: self.accumulator_bits,
            lookup_bits: self.lookup_bits,
            output_bits: self.output_bits,
            pool: l.pool,
        };
        widths.check(params).map_err(|e| at.key(&format!("he.{}", e.field), e.message))?;
        if !(self.calibration_margin.is_finite() && (0.0..=10.0).contains(&self.calibration_margin)) {
            return Err(at.key("he.calibration_margin", format!("must be in [0, 10], got {}", super::shown_number(self.calibration_margin as f64))));
        }
        self.server_location().map_err(|m| at.key("he.server", m))?;
        if !(1..=cryptotl_server::artifact::DEFAULT_MAX_BATCH).contains(&self.batch) {
            return Err(at.key("he.batch", format!("must be in 1..={}, got {}", cryptotl_server::artifact::DEFAULT_MAX_BATCH, self.batch)));
        }
        Ok(())
    }
}
