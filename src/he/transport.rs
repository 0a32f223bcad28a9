//! How the client reaches the model owner's service: one [`Transport`] trait, two implementations.
//!
//! - [`InProcess`]: the server's [`Service`] in this process (`[he] server = "local"`, the default): the
//!   one-process simulation of the protocol, with every message still serialized and checked.
//! - [`Http`]: a remote `cryptotl serve` (`[he] server = "https://host:port"`), with a bearer token, retries with
//!   exponential backoff on connection failures, 503s and 429s (honouring `Retry-After`; a few quick ones until the server
//!   has first answered, about five minutes' worth after), and the same bytes.
//!
//! The client keeps each encrypted batch until its outputs arrive, so a server restart costs a retry, never a
//! re-encryption or a lost sample; a key the server no longer has (evicted, or a fresh store) is uploaded again.

use std::time::{Duration, Instant};

use cryptotl_server::auth::ClientId;
use cryptotl_server::keystore::KeyStore;
use cryptotl_server::wire::OutputFormat;
use cryptotl_server::{ModelArtifact, ModelInterface, Service, ServiceError};

use crate::error::{Error, Result};

/// What the server answered to one evaluation request.
#[derive(Debug)]
pub struct Evaluation {
    /// The framed encrypted outputs.
    pub body: Vec<u8>,
    /// Seconds the server spent evaluating, when it said.
    pub server_seconds: Option<f64>,
    /// Seconds the server spent preparing the evaluator for this key (first use), when it said.
    pub setup_seconds: Option<f64>,
}

/// The client's view of the model owner's service.
pub trait Transport: Send + Sync {
    /// Where the server is (for messages and reports).
    fn describe(&self) -> String;
    /// Who the server knows this client as, where it binds keys to that (a remote server: a short hash of the
    /// token); empty for the one-process simulation. A kept key is tied to it ([`crate::he::Session`]).
    fn principal(&self) -> String {
        String::new()
    }
    /// The model's public interface.
    fn interface(&self) -> Result<ModelInterface>;
    /// The server's privacy statement.
    fn privacy(&self) -> Result<serde_json::Value>;
    /// Upload an evaluation key; returns its id.
    fn upload_key(&self, key: &[u8]) -> Result<String>;
    /// Evaluate a framed batch under key `key_id`; `Ok(None)` when the server does not have the key (upload again).
    fn evaluate(&self, key_id: &str, batch: &[u8]) -> Result<Option<Evaluation>>;
    /// Whether the server computes on this machine's cores (the one-process simulation). The client then does not
    /// encrypt the next batch while the server evaluates one: both would share the same cores and the server's
    /// measured time would include the client's work.
    fn shares_our_cores(&self) -> bool {
        false
    }
}

/// The server's service in this process.
pub struct InProcess {
    service: Service,
    client: ClientId,
}

impl InProcess {
    /// Serve `artifact` in this process, keys held in memory.
    pub fn new(artifact: ModelArtifact) -> Result<Self> {
        let bound = artifact.interface.evaluation_key_limit * 2;
        Self::with_store(artifact, KeyStore::in_memory(bound))
    }

    /// Serve `artifact` in this process, evaluation keys kept in the folder `dir` (owner-only, as `serve`'s key
    /// store), so a later process with the same client key finds its evaluation key there instead of making it again.
    pub fn with_key_store(artifact: ModelArtifact, dir: &std::path::Path) -> Result<Self> {
        let bound = artifact.interface.evaluation_key_limit * 2;
        let store = KeyStore::open(dir, bound).map_err(|e| Error::Server { server: "local".into(), message: format!("key store {}: {e}", dir.display()) })?;
        Self::with_store(artifact, store)
    }

    fn with_store(artifact: ModelArtifact, store: KeyStore) -> Result<Self> {
        let service = Service::new(artifact, store)?;
        Ok(Self { service, client: ClientId { name: "local".into(), token_sha256: "local".into() } })
    }
}

fn refused(server: &str, e: ServiceError) -> Error {
    Error::Server { server: server.into(), message: format!("refused ({}): {e}", e.status()) }
}

impl Transport for InProcess {
    fn describe(&self) -> String {
        "local".into()
    }
    fn shares_our_cores(&self) -> bool {
        true
    }
    fn interface(&self) -> Result<ModelInterface> {
        Ok(self.service.interface().clone())
    }
    fn privacy(&self) -> Result<serde_json::Value> {
        Ok(self.service.privacy().clone())
    }
    fn upload_key(&self, key: &[u8]) -> Result<String> {
        self.service.upload_key(&self.client, key).map_err(|e| refused("local", e))
    }
    fn evaluate(&self, key_id: &str, batch: &[u8]) -> Result<Option<Evaluation>> {
        match self.service.evaluate(&self.client, key_id, batch, OutputFormat::Packed) {
            Ok(e) => Ok(Some(Evaluation { body: e.body, server_seconds: Some(e.eval_seconds), setup_seconds: Some(e.setup_seconds) })),
            Err(ServiceError::NotFound(_)) => Ok(None),
            Err(e) => Err(refused("local", e)),
        }
    }
}

/// Retries of one request before giving up (with backoff 0.5 s doubling to 30 s: ~5 minutes in all), once the
/// server has answered: it may be restarting.
const ATTEMPTS: u32 = 14;

/// Attempts before the server has ever answered (3.5 s of backoff): a server that is not there at the start is most
/// likely a wrong address or one not started, which waiting five minutes in silence would not mend.
const FIRST_CONTACT_ATTEMPTS: u32 = 4;

/// A remote `cryptotl serve`.
pub struct Http {
    base: String,
    token: String,
    client: reqwest::blocking::Client,
    /// The server has answered once (any HTTP status): from then on an outage gets the long retry budget.
    reached: std::sync::atomic::AtomicBool,
}

impl Http {
    /// A client of the server at `base` (`https://host:port`; `http://` only for a loopback host) with bearer
    /// `token`; `ca_pem` adds a trusted root (a private CA or a self-signed server certificate).
    pub fn new(base: &str, token: String, ca_pem: Option<&[u8]>) -> Result<Self> {
        let server = |m: String| Error::Server { server: base.into(), message: m };
        let base = base.trim_end_matches('/').to_string();
        let mut builder = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(900))
            .user_agent(concat!("cryptotl/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = ca_pem {
            let cert = reqwest::Certificate::from_pem(pem).map_err(|e| server(format!("CA certificate: {e}")))?;
            builder = builder.add_root_certificate(cert);
        }
        let client = builder.build().map_err(|e| server(format!("HTTP client: {e}")))?;
        Ok(Self { base, token, client, reached: std::sync::atomic::AtomicBool::new(false) })
    }

    fn error(&self, message: String) -> Error {
        Error::Server { server: self.base.clone(), message }
    }

    /// Send a request (rebuilt per attempt) and read its whole answer, retrying connection failures, answers cut
    /// off mid-body, 502-504 and 429 (this client's share of the queue is taken) with backoff (honouring
    /// `Retry-After`): [`ATTEMPTS`] times once the server has answered, [`FIRST_CONTACT_ATTEMPTS`] before. The first
    /// retry of a request is a warning (shown by default), so a run that waits says why.
    fn send(&self, what: &str, build: impl Fn() -> reqwest::blocking::RequestBuilder) -> Result<Answer> {
        use std::sync::atomic::Ordering;
        let mut delay = Duration::from_millis(500);
        let start = Instant::now();
        // The budget follows what the server has done so far: a first answer mid-request (a 503 from a server that
        // is there but busy) earns the long one.
        let attempts = || if self.reached.load(Ordering::Relaxed) { ATTEMPTS } else { FIRST_CONTACT_ATTEMPTS };
        let mut last: String;
        let retrying = |attempt: u32, why: &str| {
            if attempt == 1 && self.reached.load(Ordering::Relaxed) {
                tracing::warn!("{what}: {why}; retrying for up to about 5 minutes");
            } else {
                tracing::info!(attempt, "{what}: {why}; retrying");
            }
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let wait = match build().bearer_auth(&self.token).send() {
                // 429: this client holds as many places in the server's queue as one may (another process on the
                // same token); retried as a busy server is.
                Ok(r) if matches!(r.status().as_u16(), 429 | 502..=504) => {
                    self.reached.store(true, Ordering::Relaxed);
                    let after = r.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse::<u64>().ok()).map(Duration::from_secs);
                    last = format!("answered {}", r.status());
                    retrying(attempt, &format!("server busy or restarting ({})", r.status()));
                    after.unwrap_or(delay).max(delay)
                }
                Ok(r) => {
                    self.reached.store(true, Ordering::Relaxed);
                    let (status, headers) = (r.status(), r.headers().clone());
                    match r.bytes() {
                        Ok(body) => return Ok(Answer { status, headers, body }),
                        Err(e) => {
                            last = format!("answer cut off: {e}");
                            retrying(attempt, &last);
                            delay
                        }
                    }
                }
                Err(e) if is_tls_failure(&e) => return Err(self.error(format!("{what}: TLS: {} (is [he] ca_cert the certificate the server uses?)", error_chain(&e)))),
                Err(e) if e.is_connect() || e.is_timeout() || e.is_request() || e.is_body() => {
                    last = error_chain(&e);
                    retrying(attempt, &format!("server unreachable ({last})"));
                    delay
                }
                Err(e) => return Err(self.error(format!("{what}: {e}"))),
            };
            if attempt >= attempts() {
                break;
            }
            std::thread::sleep(wait);
            delay = (delay * 2).min(Duration::from_secs(30));
        }
        let seconds = start.elapsed().as_secs_f64();
        if !self.reached.load(Ordering::Relaxed) {
            return Err(self.error(format!(
                "{what}: cannot reach the server: no answer after {attempt} attempts over {seconds:.0} s ({last}): is \
                 `cryptotl serve` running there, and is [he] server its address?"
            )));
        }
        Err(self.error(format!("{what}: no answer after {attempt} attempts over {seconds:.0} s ({last})")))
    }

    /// A successful answer, else the server's error message.
    fn ok(&self, what: &str, r: Answer) -> Result<Answer> {
        let status = r.status;
        if status.is_success() {
            return Ok(r);
        }
        let text = String::from_utf8_lossy(&r.body).into_owned();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or(text);
        let hint = match status.as_u16() {
            401 => " (check the token: [he] token_file or the environment variable [he] token_env names)",
            403 => " (the key belongs to another client's token)",
            413 => " (lower [he] batch to send fewer samples per request)",
            _ => "",
        };
        Err(self.error(format!("{what}: {status}: {message}{hint}")))
    }

    fn json<T: serde::de::DeserializeOwned>(&self, what: &str, r: &Answer) -> Result<T> {
        serde_json::from_slice(&r.body).map_err(|e| self.error(format!("{what}: unreadable answer: {e}")))
    }

    fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        let url = format!("{}{path}", self.base);
        let r = self.send(path, || self.client.get(&url))?;
        self.json(path, &self.ok(path, r)?)
    }
}

/// The error and its causes, one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// A failed TLS handshake (an untrusted or wrong certificate): retrying cannot help.
fn is_tls_failure(e: &reqwest::Error) -> bool {
    let chain = error_chain(e).to_lowercase();
    chain.contains("certificate") || chain.contains("handshake")
}

/// A whole answer.
struct Answer {
    status: reqwest::StatusCode,
    headers: reqwest::header::HeaderMap,
    body: bytes::Bytes,
}

impl Transport for Http {
    fn describe(&self) -> String {
        self.base.clone()
    }
    fn principal(&self) -> String {
        // The server binds each uploaded key to the SHA-256 of the token; 64 bits of it tell tokens apart here.
        format!("token {}", &cryptotl_server::artifact::sha256_hex(self.token.as_bytes())[..16])
    }
    fn interface(&self) -> Result<ModelInterface> {
        self.get_json("/v1/interface")
    }
    fn privacy(&self) -> Result<serde_json::Value> {
        self.get_json("/v1/privacy")
    }
    fn upload_key(&self, key: &[u8]) -> Result<String> {
        let url = format!("{}/v1/keys", self.base);
        let body = bytes::Bytes::copy_from_slice(key);
        let r = self.send("key upload", || self.client.post(&url).header("content-type", "application/octet-stream").body(body.clone()))?;
        let v: serde_json::Value = self.json("key upload", &self.ok("key upload", r)?)?;
        v.get("key_id").and_then(|k| k.as_str()).map(str::to_string).ok_or_else(|| self.error("key upload: no key_id in the answer".into()))
    }
    fn evaluate(&self, key_id: &str, batch: &[u8]) -> Result<Option<Evaluation>> {
        let url = format!("{}/v1/keys/{key_id}/evaluate", self.base);
        let body = bytes::Bytes::copy_from_slice(batch);
        let r = self.send("evaluate", || {
            self.client
                .post(&url)
                .header("content-type", "application/octet-stream")
                .header(OutputFormat::HEADER, OutputFormat::Packed.name())
                .body(body.clone())
        })?;
        if r.status.as_u16() == 404 {
            return Ok(None);
        }
        let r = self.ok("evaluate", r)?;
        let header = |name: &str| r.headers.get(name).and_then(|v| v.to_str().ok()?.parse::<f64>().ok());
        let (server_seconds, setup_seconds) = (header("x-eval-seconds"), header("x-setup-seconds"));
        Ok(Some(Evaluation { body: r.body.to_vec(), server_seconds, setup_seconds }))
    }
}
