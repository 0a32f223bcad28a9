//! The two parties as two processes: a spawned `cryptotl serve` on loopback (ephemeral ports), clients talking to
//! it over HTTP. Outputs equal the one-process simulation's bit for bit (same keys and encryption noise from the
//! same insecure seed, and the server's evaluation is deterministic), refusals have their status, a kill -9 mid-run
//! loses and duplicates nothing, replicas share one key store. Every server here stops with its test.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cryptotl::he::transport::{Evaluation, Http, Transport};
use cryptotl::he::{ClientKey, Session, seeder};
use cryptotl_server::wire::{OutputFormat, WireObject as _};
use cryptotl_server::{EncryptedOutput, IntegerProgram, ModelArtifact, ModelInterface, ParameterSet, frames};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

mod common;

const PARAMS: ParameterSet = ParameterSet::Message2Carry2;

/// A small random program (as in tests/he.rs): 16 inputs, 6 neurons, ReLU-like tables.
fn program() -> IntegerProgram {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (d, h, b, p) = (16usize, 6usize, 12u32, 4u32);
    let weights = (0..d * h).map(|_| rng.random_range(-3..=3)).collect();
    let biases = (0..h).map(|_| (1i64 << (b - 1)) + rng.random_range(-200..=200)).collect();
    let tables = (0..h).map(|_| (0..1i32 << p).map(|r| (r - 8).max(0) * 3).collect()).collect();
    IntegerProgram { input_dim: d, input_bits: 4, accumulator_bits: b, lookup_bits: p, output_bits: 6, neurons: h, weights, biases, tables, pool: 1, output_unit: 0.5, table_offsets: vec![] }
}

/// `program()` with its tables stored centred, as the compiler writes them since 2026-12-06: each table minus
/// the mean of its ends (10 levels), the offsets published for the client to add back.
fn centred_program() -> IntegerProgram {
    let p = program();
    let offsets: Vec<i64> = p.tables.iter().map(|t| (t[0] as i64 + *t.last().unwrap() as i64) / 2).collect();
    let tables = p.tables.iter().zip(&offsets).map(|(t, &o)| t.iter().map(|&v| v - o as i32).collect()).collect();
    IntegerProgram { tables, table_offsets: offsets, ..p }
}

fn samples(n: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| (0..16).map(|_| rng.random_range(0.0..1.0)).collect()).collect()
}

/// A model directory and a token file with clients `alice` and `bob`.
struct Fixture {
    dir: tempfile::TempDir,
    alice: String,
    bob: String,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let privacy = serde_json::json!({ "rows": [], "source_tightest": null });
        let features = serde_json::json!({ "kind": "test", "dim": 16 });
        ModelArtifact::new(program(), PARAMS, features, privacy).unwrap().write(&dir.path().join("model")).unwrap();
        let (alice, bob) = ("alice-token-0123456789".to_string(), "bob-token-9876543210".to_string());
        let tokens = format!("# test\n{}{}", cryptotl_server::auth::Tokens::line("alice", &alice), cryptotl_server::auth::Tokens::line("bob", &bob));
        std::fs::write(dir.path().join("tokens"), tokens).unwrap();
        Self { dir, alice, bob }
    }

    fn model(&self) -> PathBuf {
        self.dir.path().join("model")
    }

    fn serve(&self, listen: &str, store: &Path) -> Server {
        Server::spawn(&self.model(), &self.dir.path().join("tokens"), store, listen, &[])
    }
}

/// A spawned `cryptotl serve`, killed when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn spawn(model: &Path, tokens: &Path, store: &Path, listen: &str, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cryptotl"))
            .args(["serve", "--model"])
            .arg(model)
            .args(["--listen", listen, "--tokens"])
            .arg(tokens)
            .arg("--key-store")
            .arg(store)
            .args(extra)
            .stdout(Stdio::piped())
            .env("RUST_LOG", "warn")
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(60)).expect("the server says where it listens within 60 s");
        let url = line.split_whitespace().nth(2).unwrap_or_else(|| panic!("unexpected first line {line:?}")).to_string();
        Server { child, url }
    }

    fn port(&self) -> u16 {
        self.url.rsplit(':').next().unwrap().parse().unwrap()
    }

    fn metrics(&self) -> String {
        reqwest::blocking::get(format!("{}/metrics", self.url)).unwrap().text().unwrap()
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http(url: &str, token: &str) -> Box<dyn Transport> {
    Box::new(Http::new(url, token.into(), None).unwrap())
}

/// Outputs of the one-process simulation for these samples under keys from `seed`.
fn local_outputs(seed: u64, xs: &[Vec<f32>], batch: usize) -> Vec<Vec<i64>> {
    let mut s = Session::local(program(), PARAMS, Some(seed)).unwrap();
    s.batch = batch;
    xs.chunks(batch).flat_map(|c| s.forward_batch(c).unwrap().0).collect()
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

#[test]
fn a_client_through_a_spawned_server_gets_the_one_process_outputs() {
    let f = Fixture::new();
    let server = f.serve("127.0.0.1:0", &f.dir.path().join("keys"));
    let xs = samples(12, 1);
    let session = Session::connect(http(&server.url, &f.alice), Some(program()), Some(11)).unwrap();
    assert!(!session.server().contains("local"));
    let (remote, stats) = session.forward_batch(&xs[..6]).unwrap();
    let (rest, _) = session.forward_batch(&xs[6..]).unwrap();
    let remote: Vec<Vec<i64>> = remote.into_iter().chain(rest).collect();
    assert_eq!(remote, local_outputs(11, &xs, 6), "HTTP and the one-process simulation must agree bit for bit");
    // And both are the clear-integer program's outputs, up to the tested rate of one-level lookups.
    assert_eq!(stats.compared_outputs, 36);
    assert!(stats.mismatch_rate() < 0.25 && stats.max_level_difference <= 3, "{stats:?}");
    let m = server.metrics();
    assert_eq!(metric(&m, "cryptotl_samples_total"), 12.0, "{m}");
    assert_eq!(metric(&m, "cryptotl_bootstraps_total"), 72.0, "{m}");
    assert!(m.contains("cryptotl_request_seconds_bucket"), "{m}");
    // The key is on disk, under its content address, bound to alice's token hash.
    let keys: Vec<_> = std::fs::read_dir(f.dir.path().join("keys")).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(keys.iter().filter(|k| k.ends_with(".key")).count(), 1, "{keys:?}");
}

#[test]
fn a_whole_pass_through_a_server_pipelines_and_equals_the_one_process_pass() {
    // `Session::forward` against a server elsewhere encrypts the next batch while the server evaluates this one,
    // with two requests in flight; the seeds are drawn in the same order, so the ciphertexts and outputs are the
    // one-process pass's, row for row.
    let f = Fixture::new();
    let server = f.serve("127.0.0.1:0", &f.dir.path().join("keys"));
    let xs = samples(11, 6);
    let x = ndarray::Array2::from_shape_vec((11, 16), xs.concat()).unwrap();
    let counting = FailsAt { hold: Duration::from_millis(200), ..FailsAt::new(http(&server.url, &f.alice), usize::MAX) };
    let most = counting.most.clone();
    let mut remote = Session::connect(Box::new(counting), Some(program()), Some(13)).unwrap();
    remote.batch = 3; // four requests, the last one short
    let (got, stats) = remote.forward(x.view(), "pipelined").unwrap();
    // Two requests in flight (each held 200 ms here), never more: answers are taken in order all the same.
    assert_eq!(most.load(Ordering::SeqCst), 2, "requests in flight at once");
    let mut local = Session::local(program(), PARAMS, Some(13)).unwrap();
    local.batch = 3;
    let (want, _) = local.forward(x.view(), "one process").unwrap();
    assert_eq!(got, want, "pipelined remote pass and one-process pass must agree bit for bit");
    assert_eq!(stats.samples, 11);
    assert_eq!(stats.compared_outputs, 66, "every row compared with the clear program, in its own order");
    assert!(stats.mismatch_rate() < 0.25 && stats.max_level_difference <= 3, "{stats:?}");
    assert_eq!(metric(&server.metrics(), "cryptotl_samples_total"), 11.0, "each sample evaluated once");
}

/// A transport that forwards to `inner`, holding each evaluation `hold` and failing its `fail_at`-th (counting
/// from 1); it counts the evaluations and the most in flight at once.
struct FailsAt {
    inner: Box<dyn Transport>,
    calls: std::sync::Arc<AtomicUsize>,
    fail_at: usize,
    hold: Duration,
    now: AtomicUsize,
    most: std::sync::Arc<AtomicUsize>,
}

impl FailsAt {
    fn new(inner: Box<dyn Transport>, fail_at: usize) -> Self {
        Self { inner, calls: Default::default(), fail_at, hold: Duration::ZERO, now: AtomicUsize::new(0), most: Default::default() }
    }
}

impl Transport for FailsAt {
    fn describe(&self) -> String {
        "flaky".into()
    }
    fn interface(&self) -> cryptotl::Result<ModelInterface> {
        self.inner.interface()
    }
    fn privacy(&self) -> cryptotl::Result<serde_json::Value> {
        self.inner.privacy()
    }
    fn upload_key(&self, key: &[u8]) -> cryptotl::Result<String> {
        self.inner.upload_key(key)
    }
    fn evaluate(&self, key_id: &str, batch: &[u8]) -> cryptotl::Result<Option<Evaluation>> {
        if self.calls.fetch_add(1, Ordering::SeqCst) + 1 == self.fail_at {
            return Err(cryptotl::Error::Server { server: "flaky".into(), message: "connection reset mid-pass".into() });
        }
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(n, Ordering::SeqCst);
        std::thread::sleep(self.hold);
        let answer = self.inner.evaluate(key_id, batch);
        self.now.fetch_sub(1, Ordering::SeqCst);
        answer
    }
}

#[test]
fn a_server_error_mid_pass_ends_the_pipelined_pass_with_that_error() {
    let f = Fixture::new();
    let server = f.serve("127.0.0.1:0", &f.dir.path().join("keys"));
    let transport = FailsAt::new(http(&server.url, &f.alice), 2);
    let mut session = Session::connect(Box::new(transport), None, Some(17)).unwrap();
    session.batch = 2;
    let x = ndarray::Array2::from_shape_vec((10, 16), samples(10, 7).concat()).unwrap();
    let err = session.forward(x.view(), "flaky").unwrap_err().to_string();
    assert!(err.contains("connection reset mid-pass") && err.contains("flaky"), "{err}");
    // The encrypting thread stopped with the pass (`forward` returned), and the server saw the first batch and at
    // most the one sent while the failing request was still in flight (two are), not the other three.
    let seen = metric(&server.metrics(), "cryptotl_samples_total");
    assert!(seen == 2.0 || seen == 4.0, "{seen} samples evaluated");
    // The session stays usable after the error.
    assert_eq!(session.forward_batch(&samples(2, 8)).unwrap().0.len(), 2);
}

#[test]
fn a_pass_killed_midway_resumes_from_its_journal_and_sends_only_the_rest() {
    use cryptotl::he::{InProcess, OutputJournal};
    let dir = tempfile::tempdir().unwrap();
    let artifact = || ModelArtifact::new(program(), PARAMS, serde_json::Value::Null, serde_json::Value::Null).unwrap();
    let x = ndarray::Array2::from_shape_vec((10, 16), samples(10, 31).concat()).unwrap();
    // The pass a run would have made without interruption, under the same keys and seeds.
    let mut whole = Session::local(program(), PARAMS, Some(21)).unwrap();
    whole.batch = 2;
    let (want, _) = whole.forward(x.view(), "whole").unwrap();

    // A pass whose third request fails (a killed server, a lost connection): the batches answered before it are
    // journaled. Two requests are in flight, and which of the third and fourth batches reaches the server third is
    // up to the threads' scheduling: two whole batches are on disk, or three when the fourth went first and failed.
    let flaky = FailsAt::new(Box::new(InProcess::new(artifact()).unwrap()), 3);
    let mut first = Session::connect(Box::new(flaky), Some(program()), Some(21)).unwrap();
    first.batch = 2;
    let identity = first.journal_identity();
    let mut journal = OutputJournal::open(dir.path(), &identity, 6).unwrap();
    let err = first.forward_journaled(x.view(), "interrupted", Some(&mut journal)).unwrap_err().to_string();
    assert!(err.contains("connection reset mid-pass"), "{err}");
    let kept = OutputJournal::open(dir.path(), &identity, 6).unwrap().len();
    assert!(kept == 4 || kept == 6, "whole batches, the pass's first ones, are on disk: {kept} samples");
    // Another model, parameter set or server has a journal of its own.
    assert!(OutputJournal::open(dir.path(), &identity.replace("flaky", "local"), 6).unwrap().is_empty());

    // Damage: one record's bytes flipped, and a torn tail from an append cut short.
    let path = journal.path().to_path_buf();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[20] ^= 0xff;
    bytes.extend_from_slice(&[1, 2, 3]);
    std::fs::write(&path, &bytes).unwrap();

    // The run again: new keys, a server that counts its requests. Only the samples the journal lacks are sent.
    let counting = FailsAt::new(Box::new(InProcess::new(artifact()).unwrap()), usize::MAX);
    let mut again = Session::connect(Box::new(counting), Some(program()), Some(99)).unwrap();
    again.batch = 2;
    let mut journal = OutputJournal::open(dir.path(), &again.journal_identity(), 6).unwrap();
    assert_eq!(journal.len(), kept - 1, "the damaged record is a miss");
    let (got, stats) = again.forward_journaled(x.view(), "resumed", Some(&mut journal)).unwrap();
    assert_eq!((stats.resumed, stats.samples), (kept - 1, 10 - (kept - 1)));
    assert_eq!(got.slice(ndarray::s![1..kept, ..]), want.slice(ndarray::s![1..kept, ..]), "resumed rows are the interrupted pass's outputs");
    assert_eq!(stats.compared_outputs, 60, "resumed rows are compared with the clear program too");
    assert!(stats.mismatch_rate() < 0.25 && stats.max_level_difference <= 3, "{stats:?}");
    // The journal now holds every sample (the torn tail was cut first), and a third pass sends nothing.
    let journal = OutputJournal::open(dir.path(), &again.journal_identity(), 6).unwrap();
    assert_eq!(journal.len(), 10);
    assert_eq!(std::fs::metadata(&path).unwrap().len() % (16 + 8 * 6 + 8), 0);
    let mut journal = journal;
    let (third, stats) = again.forward_journaled(x.view(), "all resumed", Some(&mut journal)).unwrap();
    assert_eq!((stats.resumed, stats.samples), (10, 0));
    assert_eq!(third, got);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600, "decrypted outputs are private");
    }
    journal.remove().unwrap();
    assert!(!path.exists());
}


#[test]
fn within_one_pass_a_repeated_input_is_sent_again_so_resumed_means_interrupted() {
    // A run sends its splits through one journal. A text in the validation split that also stands in training (a
    // sentence two reviews share, say) has the same input levels. It is sent again, so an uninterrupted run shows
    // the server one ciphertext per sample and reports nothing resumed; only a later pass takes what this one recorded.
    use cryptotl::he::{InProcess, OutputJournal};
    let dir = tempfile::tempdir().unwrap();
    let artifact = ModelArtifact::new(program(), PARAMS, serde_json::Value::Null, serde_json::Value::Null).unwrap();
    let counting = FailsAt::new(Box::new(InProcess::new(artifact).unwrap()), usize::MAX);
    let evaluations = counting.calls.clone();
    let mut session = Session::connect(Box::new(counting), Some(program()), Some(5)).unwrap();
    session.batch = 3;
    let train = ndarray::Array2::from_shape_vec((6, 16), samples(6, 41).concat()).unwrap();
    let validation = train.slice(ndarray::s![2..5, ..]).to_owned();
    let mut journal = OutputJournal::open(dir.path(), &session.journal_identity(), 6).unwrap();
    let (_, first) = session.forward_journaled(train.view(), "train", Some(&mut journal)).unwrap();
    let (_, second) = session.forward_journaled(validation.view(), "validation", Some(&mut journal)).unwrap();
    assert_eq!((first.samples, first.resumed, second.samples, second.resumed), (6, 0, 3, 0));
    assert_eq!(evaluations.load(Ordering::SeqCst), 3, "two requests of 3 for training, one for validation");
    assert_eq!(journal.len(), 6, "the journal holds each distinct input once");
    // A pass after an interruption (a new journal over the same file) takes them all from it.
    let mut reopened = OutputJournal::open(dir.path(), &session.journal_identity(), 6).unwrap();
    let (_, resumed) = session.forward_journaled(validation.view(), "after a restart", Some(&mut reopened)).unwrap();
    assert_eq!((resumed.samples, resumed.resumed), (0, 3));
    assert_eq!(evaluations.load(Ordering::SeqCst), 3, "nothing sent");
}
#[test]
fn what_a_server_publishes_is_checked_before_the_client_uses_it() {
    let row = |epsilon: f64, delta: f64| serde_json::json!({"rows": [{"party": "server", "data": "its source data", "mechanism": "weight noise",
        "epsilon": epsilon, "delta": delta, "accountant": "-", "noise": "-", "protects_against": "-"}], "source_tightest": null});
    let statement = |privacy: serde_json::Value| {
        let artifact = ModelArtifact::new(program(), PARAMS, serde_json::Value::Null, privacy).unwrap();
        let transport = cryptotl::he::transport::InProcess::new(artifact).unwrap();
        Session::connect(Box::new(transport), None, Some(1)).unwrap().server_privacy().map(|s| s.source_epsilon())
    };
    assert_eq!(statement(row(2.0, 1e-6)).unwrap(), 2.0);
    let err = statement(row(-1.0, 1e-6)).unwrap_err().to_string();
    assert!(err.contains("privacy statement refused") && err.contains("ε = -1"), "{err}");
    let err = statement(row(2.0, 1.5)).unwrap_err().to_string();
    assert!(err.contains("δ = 1.5"), "{err}");

    // Published output ranges are used only when there is one per output, each finite with lo <= hi.
    let ranges = |published: serde_json::Value| {
        let artifact = ModelArtifact::new(program(), PARAMS, serde_json::json!({ "output_ranges": published }), serde_json::Value::Null).unwrap();
        let transport = cryptotl::he::transport::InProcess::new(artifact).unwrap();
        Session::connect(Box::new(transport), None, Some(1)).unwrap().published_output_ranges()
    };
    let outputs = program().neurons;
    assert_eq!(ranges(serde_json::json!(vec![[0.0, 1.0]; outputs])), Some(vec![(0.0, 1.0); outputs]));
    assert_eq!(ranges(serde_json::json!(vec![[0.0, 1.0]; outputs + 1])), None, "another width");
    assert_eq!(ranges(serde_json::json!(vec![[1.0, 0.0]; outputs])), None, "lo > hi");
    assert_eq!(ranges(serde_json::json!("garbage")), None);
}

fn status(r: reqwest::blocking::RequestBuilder) -> (u16, String) {
    let r = r.send().unwrap();
    (r.status().as_u16(), r.text().unwrap_or_default())
}

/// A valid framed batch of `n` samples encrypted under `key`.
fn batch(key: &ClientKey, iface: &ModelInterface, n: usize) -> Vec<u8> {
    let items: Vec<Vec<u8>> = samples(n, 9)
        .iter()
        .map(|x| key.encrypt(&iface.program.quantize(x), &iface.program, seeder(Some(1)).as_mut()).unwrap().to_bytes(iface.input_limit).unwrap())
        .collect();
    frames::encode(&items)
}

#[test]
fn refusals_have_their_status_and_garbage_leaves_the_server_standing() {
    let f = Fixture::new();
    let mut server = f.serve("127.0.0.1:0", &f.dir.path().join("keys"));
    let url = &server.url.clone();
    let c = reqwest::blocking::Client::new();
    // No token, a wrong token: 401 on every /v1 endpoint.
    assert_eq!(status(c.get(format!("{url}/v1/interface"))).0, 401);
    assert_eq!(status(c.get(format!("{url}/v1/privacy")).bearer_auth("not-a-token")).0, 401);
    assert_eq!(status(c.post(format!("{url}/v1/keys")).bearer_auth("alice-token-012345678").body(vec![0u8; 10])).0, 401);
    assert_eq!(status(c.post(format!("{url}/v1/keys/any/evaluate")).body(vec![0u8; 10])).0, 401);
    // A 401 says which scheme to use (RFC 6750) and why, as JSON.
    let r = c.get(format!("{url}/v1/interface")).send().unwrap();
    assert_eq!(r.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned()), Some("Bearer".into()));
    assert!(r.text().unwrap().contains("bearer token"));
    assert_eq!(status(c.get(format!("{url}/healthz"))), (200, "ok".into()));

    let iface: ModelInterface = c.get(format!("{url}/v1/interface")).bearer_auth(&f.alice).send().unwrap().json().unwrap();
    assert_eq!(iface.program, program().interface());
    let (alice_key, alice_eval) = ClientKey::generate(PARAMS, seeder(Some(21)).as_mut());
    let key_bytes = alice_eval.to_bytes(iface.evaluation_key_limit).unwrap();
    let r = c.post(format!("{url}/v1/keys")).bearer_auth(&f.alice).body(key_bytes.clone()).send().unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let id = r.json::<serde_json::Value>().unwrap()["key_id"].as_str().unwrap().to_string();
    let body = batch(&alice_key, &iface, 3);
    let eval = |token: &str, id: &str, body: Vec<u8>| status(c.post(format!("{url}/v1/keys/{id}/evaluate")).bearer_auth(token).body(body));
    assert_eq!(eval(&f.alice, &id, body.clone()).0, 200);
    // Another client may not use alice's key, nor upload it as its own.
    let (code, text) = eval(&f.bob, &id, body.clone());
    assert_eq!(code, 403, "{text}");
    assert_eq!(status(c.post(format!("{url}/v1/keys")).bearer_auth(&f.bob).body(key_bytes.clone())).0, 403);
    // An unknown key id: 404 (the client uploads again); a malformed one: 400.
    assert_eq!(eval(&f.alice, &"0".repeat(64), body.clone()).0, 404);
    assert_eq!(eval(&f.alice, "../../etc/passwd", body.clone()).0, 404, "a path-like id does not even route");
    assert_eq!(eval(&f.alice, "nothex", body.clone()).0, 400);
    // A key of another parameter set: 400, saying so.
    let other = ClientKey::generate(ParameterSet::Message1Carry1, seeder(Some(22)).as_mut()).1;
    let (code, text) = status(c.post(format!("{url}/v1/keys")).bearer_auth(&f.alice).body(other.to_bytes(u64::MAX).unwrap()));
    assert!(code == 400 && text.contains("parameter set"), "{code} {text}");
    // Ciphertexts under another key than the one named: 400.
    let stranger = ClientKey::generate(PARAMS, seeder(Some(23)).as_mut()).0;
    let (code, text) = eval(&f.alice, &id, batch(&stranger, &iface, 1));
    assert!(code == 400 && text.contains("key"), "{code} {text}");
    // Truncated and padded batches: 400; a body past the model's limit: 413.
    assert_eq!(eval(&f.alice, &id, body[..body.len() - 1].to_vec()).0, 400);
    assert_eq!(eval(&f.alice, &id, [&body[..], &[0]].concat()).0, 400);
    let json_error = |(code, text): (u16, String)| (code, serde_json::from_str::<serde_json::Value>(&text).ok().and_then(|v| v["error"].as_str().map(str::to_owned)).unwrap_or_else(|| format!("(a body of {} bytes that is not a JSON error)", text.len())));
    let (code, message) = json_error(eval(&f.alice, &id, vec![1u8; iface.request_limit() as usize + 1]));
    assert!(code == 413 && message.contains(&format!("limit of {} bytes", iface.request_limit())), "{code} {message}");
    let (code, message) = json_error(status(c.post(format!("{url}/v1/keys")).bearer_auth(&f.alice).body(vec![0u8; iface.evaluation_key_limit as usize + 1])));
    assert!(code == 413 && message.contains(&format!("limit of {} bytes", iface.evaluation_key_limit)), "{code} {message}");
    // Without a token the body is not read: the same oversized batch is refused for the token (401), not its size.
    assert_eq!(json_error(status(c.post(format!("{url}/v1/keys/{id}/evaluate")).body(vec![1u8; iface.request_limit() as usize + 1]))).0, 401);
    // The HTTP layer's own refusals are JSON errors too: an unknown path, a method an endpoint does not take.
    let (code, message) = json_error(status(c.get(format!("{url}/v1/nothing")).bearer_auth(&f.alice)));
    assert!(code == 404 && message.contains("no such endpoint"), "{code} {message}");
    let (code, message) = json_error(status(c.get(format!("{url}/v1/keys")).bearer_auth(&f.alice)));
    assert!(code == 405 && message.contains("method"), "{code} {message}");

    // A burst of garbage: random bodies, random lengths, random paths. No panic, no growth past a bound.
    let before = server.rss_kib();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let start = Instant::now();
    for i in 0..300 {
        let len = rng.random_range(0..20_000);
        let junk: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        let path = match i % 4 {
            0 => format!("/v1/keys/{id}/evaluate"),
            1 => "/v1/keys".into(),
            2 => format!("/v1/keys/{}/evaluate", "f".repeat(rng.random_range(1..100))),
            _ => format!("/{}", (0..rng.random_range(1..30)).map(|_| rng.random_range(b'a'..=b'z') as char).collect::<String>()),
        };
        let (code, _) = status(c.post(format!("{url}{path}")).bearer_auth(&f.alice).body(junk));
        assert!((400..500).contains(&code), "garbage to {path} got {code}");
    }
    assert!(start.elapsed() < Duration::from_secs(120));
    assert!(server.alive(), "the server survived the garbage");
    assert_eq!(status(c.get(format!("{url}/healthz"))).0, 200);
    assert_eq!(eval(&f.alice, &id, body).0, 200, "and still serves");
    let grown = server.rss_kib().saturating_sub(before);
    assert!(grown < 64 * 1024, "resident memory grew by {grown} KiB over the garbage");
}

#[test]
fn a_client_that_names_no_output_format_gets_the_32_bit_words_clients_before_it_read() {
    let f = Fixture::new();
    let server = f.serve("127.0.0.1:0", &f.dir.path().join("keys"));
    let url = &server.url;
    let c = reqwest::blocking::Client::new();
    let iface: ModelInterface = c.get(format!("{url}/v1/interface")).bearer_auth(&f.alice).send().unwrap().json().unwrap();
    let (key, eval_key) = ClientKey::generate(PARAMS, seeder(Some(31)).as_mut());
    let r = c.post(format!("{url}/v1/keys")).bearer_auth(&f.alice).body(eval_key.to_bytes(iface.evaluation_key_limit).unwrap()).send().unwrap();
    let id = r.json::<serde_json::Value>().unwrap()["key_id"].as_str().unwrap().to_string();
    let body = batch(&key, &iface, 2);
    let eval = |format: Option<&str>| {
        let mut request = c.post(format!("{url}/v1/keys/{id}/evaluate")).bearer_auth(&f.alice).body(body.clone());
        if let Some(format) = format {
            request = request.header(OutputFormat::HEADER, format);
        }
        let r = request.send().unwrap();
        (r.status().as_u16(), r.bytes().unwrap().to_vec())
    };
    let read = |body: &[u8]| -> Vec<EncryptedOutput> {
        frames::decode(body, 2, iface.output_limit).unwrap().iter().map(|b| EncryptedOutput::from_bytes(b, iface.output_limit).unwrap()).collect()
    };
    let (code, packed_body) = eval(Some("packed"));
    assert_eq!(code, 200);
    let packed = read(&packed_body);
    assert!(packed.iter().all(|o| o.log_modulus == iface.program.download_log_modulus() && o.log_modulus < 32));
    // No header: version 0, byte for byte what tests/he.rs shows a pre-2026-12-05 client reads; it decrypts alike.
    let (code, old) = eval(None);
    assert_eq!(code, 200);
    let items = frames::decode(&old, 2, iface.output_limit).unwrap();
    for (item, new) in items.iter().zip(&packed) {
        assert_eq!(*item, &new.to_bytes_as(OutputFormat::Words32, iface.output_limit).unwrap()[..]);
    }
    for (old, new) in read(&old).iter().zip(&packed) {
        assert_eq!(old.log_modulus, 32);
        assert_eq!(key.decrypt(old, &iface.program).unwrap(), key.decrypt(new, &iface.program).unwrap());
    }
    // The price of the old format: 32 bits a word where the packed one sends q (plus headers).
    let q = iface.program.download_log_modulus();
    assert!(q <= 21);
    assert!(old.len() > packed_body.len() * 3 / 2, "{} bytes old, {} packed at {q} bits", old.len(), packed_body.len());
    // A later client's format with this one as its fallback: the fallback. Only formats this server lacks: 406.
    assert_eq!(read(&eval(Some("packed2, packed")).1), packed);
    let (code, text) = eval(Some("packed2"));
    let text = String::from_utf8_lossy(&text);
    assert_eq!(code, 406);
    assert!(text.contains("packed, words32") && text.contains("upgrading"), "{text}");
}

/// What `serve` is given and cannot use is refused at start (exit 2) naming its flag: plain HTTP off loopback, an
/// address in use, a missing or malformed token file, a folder that is not a model directory, unusable TLS files, a
/// key-store bound below one key, a key store that is a file.
#[test]
fn plain_http_is_refused_off_loopback() {
    let f = Fixture::new();
    let tokens = f.dir.path().join("tokens");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_at = taken.local_addr().unwrap().to_string();
    let malformed = f.dir.path().join("malformed_tokens");
    std::fs::write(&malformed, "not a token line\n").unwrap();
    let model = f.model();
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let cases: Vec<(Vec<String>, &str, &str)> = vec![
        (vec!["--model".into(), path(&model), "--listen".into(), "0.0.0.0:0".into(), "--tokens".into(), path(&tokens)], "key `--listen`", "only allowed on a loopback address"),
        (vec!["--model".into(), path(&model), "--listen".into(), taken_at.clone(), "--tokens".into(), path(&tokens)], "key `--listen`", &taken_at),
        (vec!["--model".into(), path(&model), "--listen".into(), "127.0.0.1:0".into(), "--tokens".into(), path(&f.dir.path().join("absent"))], "key `--tokens`", "cryptotl server token --name"),
        (vec!["--model".into(), path(&model), "--listen".into(), "127.0.0.1:0".into(), "--tokens".into(), path(&malformed)], "key `--tokens`", "line 1"),
        (vec!["--model".into(), path(f.dir.path()), "--listen".into(), "127.0.0.1:0".into(), "--tokens".into(), path(&tokens)], "key `--model`", "cryptotl server build"),
        (
            vec!["--model".into(), path(&model), "--listen".into(), "0.0.0.0:0".into(), "--tokens".into(), path(&tokens), "--tls-cert".into(), path(&tokens), "--tls-key".into(), path(&malformed)],
            "key `--tls-cert / --tls-key`",
            "",
        ),
        (vec!["--model".into(), path(&model), "--listen".into(), "127.0.0.1:0".into(), "--tokens".into(), path(&tokens), "--key-store-mib".into(), "0".into()], "key `--key-store-mib`", "below one evaluation key"),
        (vec!["--model".into(), path(&model), "--listen".into(), "127.0.0.1:0".into(), "--tokens".into(), path(&tokens), "--key-store".into(), path(&tokens)], "key `--key-store`", "not a folder"),
    ];
    for (args, key, says) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_cryptotl")).arg("serve").args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(key) && err.contains(says) && !err.contains("encrypted stage"), "{args:?}: {err}");
    }
    drop(taken);
}

/// A queue bound of 0 would refuse every evaluation, and one past tokio's semaphore limit panicked at start.
#[test]
fn a_queue_bound_out_of_range_is_refused_at_start() {
    let f = Fixture::new();
    for bound in ["0", "65537", "18446744073709551615"] {
        let out = Command::new(env!("CARGO_BIN_EXE_cryptotl"))
            .args(["serve", "--model"])
            .arg(f.model())
            .args(["--listen", "127.0.0.1:0", "--max-queue", bound, "--tokens"])
            .arg(f.dir.path().join("tokens"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bound}: {err}");
        assert!(err.contains("--max-queue") && !err.contains("panicked"), "{bound}: {err}");
    }
    // The library refuses it too, before binding.
    let opts = cryptotl_server::http::ServeOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: None,
        max_queue: cryptotl_server::http::MAX_QUEUE + 1,
        max_per_client: 1,
        queue_timeout: std::time::Duration::from_secs(1),
        upload_timeout: std::time::Duration::from_secs(1),
        eval_timeout: std::time::Duration::from_secs(1),
    };
    let service = cryptotl_server::service::Service::new(cryptotl_server::artifact::ModelArtifact::load(&f.model()).unwrap(), cryptotl_server::keystore::KeyStore::in_memory(1 << 30)).unwrap();
    let tokens = cryptotl_server::auth::Tokens::load(&f.dir.path().join("tokens")).unwrap();
    let err = cryptotl_server::http::serve(service, tokens.into(), opts, |_, _| panic!("must not start")).unwrap_err().to_string();
    assert!(err.contains("--max-queue") && err.contains("1..=65536"), "{err}");
}

/// A server that has never answered (nothing listens at the address: a typo, or `serve` not started) is given up on
/// after a few quick attempts with an error saying what to check, not retried in silence for five minutes as a
/// server that answered once and then went away is (the kill -9 test below).
#[test]
fn a_server_that_never_answered_is_given_up_on_after_a_few_attempts() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    let err = Http::new(&url, "token".into(), None).unwrap().interface().unwrap_err().to_string();
    assert!(err.contains("cannot reach the server: no answer after 4 attempts"), "{err}");
    assert!(err.contains("Connection refused") && err.contains("is `cryptotl serve` running there"), "{err}");
}

/// A server that answers, even with 503 (there, but busy), has been reached: the request gets the long budget from
/// then on, not the few attempts meant for an address where nothing answers. Two 503s and two 429s, then the answer.
#[test]
fn a_busy_server_at_first_contact_gets_the_long_retry_budget() {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        for i in 0..5 {
            let (mut conn, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut buf).unwrap();
                assert!(n > 0, "request cut off");
                request.extend_from_slice(&buf[..n]);
            }
            // 429 (this client's share of the queue taken) is retried as 503 is.
            let (status, body) = match i {
                0 | 2 => ("503 Service Unavailable", "{\"error\":\"busy\"}"),
                1 | 3 => ("429 Too Many Requests", "{\"error\":\"the most one client may\"}"),
                _ => ("200 OK", "{\"statement\":1}"),
            };
            write!(conn, "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
        }
    });
    let answer = Http::new(&url, "token".into(), None).unwrap().privacy().unwrap();
    assert_eq!(answer, serde_json::json!({"statement": 1}));
    server.join().unwrap();
}

#[test]
fn tls_with_a_self_signed_certificate() {
    let f = Fixture::new();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert_pem, key_pem) = (cert.cert.pem(), cert.signing_key.serialize_pem());
    let (cp, kp) = (f.dir.path().join("cert.pem"), f.dir.path().join("key.pem"));
    std::fs::write(&cp, &cert_pem).unwrap();
    std::fs::write(&kp, &key_pem).unwrap();
    let server = Server::spawn(&f.model(), &f.dir.path().join("tokens"), &f.dir.path().join("keys"), "127.0.0.1:0", &["--tls-cert", cp.to_str().unwrap(), "--tls-key", kp.to_str().unwrap()]);
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let url = format!("https://localhost:{}", server.port());
    // Without trusting the certificate the client refuses the server; trusting it, it works end to end.
    let t = Instant::now();
    let err = Http::new(&url, f.alice.clone(), None).unwrap().interface().unwrap_err().to_string();
    assert!(err.contains("TLS") && err.contains("certificate"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(5), "a certificate failure is not retried");
    let transport = Box::new(Http::new(&url, f.alice.clone(), Some(cert_pem.as_bytes())).unwrap());
    let session = Session::connect(transport, None, Some(12)).unwrap();
    let xs = samples(4, 2);
    assert_eq!(session.forward_batch(&xs).unwrap().0, local_outputs(12, &xs, 4));
}

#[test]
fn a_batch_past_the_evaluation_timeout_is_stopped_and_the_server_serves_on() {
    let f = Fixture::new();
    let server = Server::spawn(&f.model(), &f.dir.path().join("tokens"), &f.dir.path().join("keys"), "127.0.0.1:0", &["--eval-timeout", "0.001"]);
    let session = Session::connect(http(&server.url, &f.alice), None, Some(12)).unwrap();
    // 6 neurons x 8 samples = 48 bootstraps of ~10 ms: far past 1 ms, so the evaluation is stopped and refused.
    let err = session.forward_batch(&samples(8, 2)).unwrap_err().to_string();
    assert!(err.contains("413") && err.contains("took longer than the limit") && err.contains("[he] batch"), "{err}");
    // The worker is free again: the next request is taken (and stopped) too, health is fine, nothing was counted.
    let err = session.forward_batch(&samples(8, 3)).unwrap_err().to_string();
    assert!(err.contains("413"), "{err}");
    assert_eq!(status(reqwest::blocking::Client::new().get(format!("{}/healthz", server.url))).0, 200);
    let m = server.metrics();
    assert_eq!(metric(&m, "cryptotl_samples_total"), 0.0, "{m}");
    assert_eq!(metric(&m, "cryptotl_queue_depth"), 0.0, "{m}");
}

/// One client holds at most `--max-per-client` places in the evaluation queue: past that it gets 429 with
/// `Retry-After` (which the client retries as a busy server), while another client's request is still taken. Before,
/// one token sending many requests at once could fill the whole queue and turn every other client away (503).
#[test]
fn one_client_cannot_fill_the_queue() {
    let f = Fixture::new();
    let server = Server::spawn(&f.model(), &f.dir.path().join("tokens"), &f.dir.path().join("keys"), "127.0.0.1:0", &["--max-per-client", "1"]);
    let c = reqwest::blocking::Client::new();
    let probe = |token: &str| status(c.post(format!("{}/v1/keys/{}/evaluate", server.url, "0".repeat(64))).bearer_auth(token).body(vec![0u8; 8]));
    std::thread::scope(|s| {
        // 6 neurons x 64 samples = 384 bootstraps: alice's place is held for a second or more.
        let long = s.spawn(|| Session::connect(http(&server.url, &f.alice), None, Some(41))?.forward_batch(&samples(64, 6)));
        let deadline = Instant::now() + Duration::from_secs(120);
        while metric(&server.metrics(), "cryptotl_queue_depth") < 1.0 && !long.is_finished() {
            assert!(Instant::now() < deadline, "the batch never took its place");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!long.is_finished(), "the batch ended before it could be probed");
        let (code, body) = probe(&f.alice);
        assert!(code == 429 && body.contains("the most one client may"), "{code}: {body}");
        // Bob's request takes a place behind alice's batch (and is then refused for its unknown key, not its count).
        let (code, body) = probe(&f.bob);
        assert!(code != 429 && code != 503, "{code}: {body}");
        assert_eq!(long.join().unwrap().unwrap().0.len(), 64);
    });
    // Alice's place is hers again once her batch is answered.
    let (code, body) = probe(&f.alice);
    assert!(code != 429, "{code}: {body}");
    assert_eq!(metric(&server.metrics(), "cryptotl_queue_depth"), 0.0);
}

/// A `POST` to `path` of `server` with `token`, whose headers announce a body of `length` bytes that is never sent:
/// the server waits for it, holding whatever the request took from its headers.
fn stalled_request(server: &Server, path: &str, token: &str, length: usize) -> std::net::TcpStream {
    use std::io::Write as _;
    let addr = server.url.trim_start_matches("http://");
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    write!(conn, "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Length: {length}\r\n\r\n").unwrap();
    conn
}

/// `request`'s answer once it is 429, or its last answer after 30 s: stalled requests written to a socket reach the
/// server in their own time, and hold their places only once they have.
fn once_refused(request: impl Fn() -> (u16, String)) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = request();
        if code == 429 || Instant::now() > deadline {
            return (code, body);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An evaluation request takes its place among its client's from its headers, before its body is read: batches
/// still arriving count, so one client cannot hold any number of half-sent bodies in the server's memory. Its body
/// ends (the connection closes), and the place is free again.
#[test]
fn a_batch_still_arriving_holds_its_clients_place() {
    use std::io::Read as _;
    let f = Fixture::new();
    let server = Server::spawn(&f.model(), &f.dir.path().join("tokens"), &f.dir.path().join("keys"), "127.0.0.1:0", &["--max-per-client", "1"]);
    let c = reqwest::blocking::Client::new();
    let path = format!("/v1/keys/{}/evaluate", "0".repeat(64));
    let probe = |token: &str| status(c.post(format!("{}{path}", server.url)).bearer_auth(token).body(vec![0u8; 8]));
    let mut stalled = stalled_request(&server, &path, &f.alice, 100_000);
    let (code, body) = once_refused(|| probe(&f.alice));
    assert!(code == 429 && body.contains("the most one client may"), "{code}: {body}");
    let (code, body) = probe(&f.bob);
    assert!(code != 429 && code != 503, "{code}: {body}");
    stalled.shutdown(std::net::Shutdown::Write).unwrap();
    let _ = stalled.read_to_string(&mut String::new());
    let (code, body) = probe(&f.alice);
    assert!(code != 429, "{code}: {body}");
}

/// Key uploads are bounded before their bodies are read: a client with `UPLOADS_PER_CLIENT` uploads under way
/// (here two whose bodies never come) gets 429 for a third, while another client's upload is taken; once they end,
/// the client uploads again. Before, any number of uploads were read into memory at once (~50 MiB each).
#[test]
fn one_client_cannot_hold_more_than_its_share_of_key_uploads() {
    use std::io::Read as _;
    let f = Fixture::new();
    let server = f.serve("127.0.0.1:0", &f.dir.path().join("keys"));
    // Headers of an upload whose body is not sent: it holds its turn while the server waits for the body.
    let stalled: Vec<std::net::TcpStream> = (0..cryptotl_server::http::UPLOADS_PER_CLIENT).map(|_| stalled_request(&server, "/v1/keys", &f.alice, 1_000_000)).collect();
    let c = reqwest::blocking::Client::new();
    let upload = |token: &str| status(c.post(format!("{}/v1/keys", server.url)).bearer_auth(token).body(vec![0u8; 64]));
    let (code, body) = once_refused(|| upload(&f.alice));
    assert!(code == 429 && body.contains("key uploads under way"), "{code}: {body}");
    let (code, body) = upload(&f.bob);
    assert_eq!(code, 400, "bob's upload is read (and refused as no key): {body}");
    for mut conn in stalled {
        conn.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = String::new();
        let _ = conn.read_to_string(&mut answer);
    }
    let (code, body) = upload(&f.alice);
    assert_eq!(code, 400, "alice's turns are free again: {body}");
}

/// An upload whose body never comes holds its turn only until `--upload-timeout`: then it is answered 408 and the
/// turn is free, so stalled uploads cannot keep a client, or the server, from uploading for ever.
#[test]
fn an_upload_whose_body_never_comes_is_answered_408_and_frees_its_turn() {
    use std::io::Read as _;
    let f = Fixture::new();
    let server = Server::spawn(&f.model(), &f.dir.path().join("tokens"), &f.dir.path().join("keys"), "127.0.0.1:0", &["--upload-timeout", "1"]);
    let start = Instant::now();
    let mut stalled: Vec<std::net::TcpStream> = (0..cryptotl_server::http::UPLOADS_PER_CLIENT)
        .map(|_| {
            let conn = stalled_request(&server, "/v1/keys", &f.alice, 1_000_000);
            conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            conn
        })
        .collect();
    for conn in &mut stalled {
        // The answer comes without the body being sent: the server gave up on it.
        let mut answer = vec![0u8; 4096];
        let n = conn.read(&mut answer).unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 408") && answer.contains("longer than the server's limit of 1 s"), "{answer}");
    }
    assert!(start.elapsed() < Duration::from_secs(20), "{:?}", start.elapsed());
    let c = reqwest::blocking::Client::new();
    let (code, body) = status(c.post(format!("{}/v1/keys", server.url)).bearer_auth(&f.alice).body(vec![0u8; 64]));
    assert_eq!(code, 400, "alice's turns are free again: {body}");
}

#[test]
fn four_clients_at_once_with_their_own_keys() {
    let f = Fixture::new();
    let server = f.serve("127.0.0.1:0", &f.dir.path().join("keys"));
    let xs = samples(8, 3);
    let results: Vec<Vec<Vec<i64>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4u64)
            .map(|c| {
                let (url, token, xs) = (&server.url, if c % 2 == 0 { &f.alice } else { &f.bob }, &xs);
                s.spawn(move || {
                    let mut session = Session::connect(http(url, token), None, Some(100 + c)).unwrap();
                    session.batch = 4;
                    xs.chunks(4).flat_map(|ch| session.forward_batch(ch).unwrap().0).collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (c, got) in results.iter().enumerate() {
        assert_eq!(got, &local_outputs(100 + c as u64, &xs, 4), "client {c}");
    }
    let keys = std::fs::read_dir(f.dir.path().join("keys")).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".key")).count();
    assert_eq!(keys, 4);
    assert_eq!(metric(&server.metrics(), "cryptotl_samples_total"), 32.0);
}

#[test]
fn a_server_killed_mid_run_restarts_and_the_client_loses_and_repeats_nothing() {
    let f = Fixture::new();
    let store = f.dir.path().join("keys");
    let server = f.serve("127.0.0.1:0", &store);
    let (port, first_url) = (server.port(), server.url.clone());
    let xs = samples(40, 4);
    let mut server = Some(server);
    let got = std::thread::scope(|s| {
        let (xs, url, token) = (&xs, &first_url, &f.alice);
        let client = s.spawn(move || {
            let mut session = Session::connect(http(url, token), None, Some(31)).unwrap();
            session.batch = 2;
            xs.chunks(2).flat_map(|ch| session.forward_batch(ch).unwrap().0).collect::<Vec<_>>()
        });
        // Kill -9 once some batches are done (so the kill lands mid-run), restart on the same port and store.
        let deadline = Instant::now() + Duration::from_secs(120);
        while metric(&server.as_ref().unwrap().metrics(), "cryptotl_samples_total") < 6.0 {
            assert!(Instant::now() < deadline, "no progress");
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(server.take()); // SIGKILL
        std::thread::sleep(Duration::from_millis(1500));
        let restarted = f.serve(&format!("127.0.0.1:{port}"), &store);
        let got = client.join().unwrap();
        (got, restarted.metrics())
    });
    let (got, metrics) = got;
    assert_eq!(got.len(), 40);
    assert_eq!(got, local_outputs(31, &xs, 2), "every sample once, in order, as without the kill");
    // The key survived the restart: the second server never received an upload.
    assert_eq!(metric(&metrics, "cryptotl_requests_total{endpoint=\"/v1/keys\""), 0.0, "{metrics}");
    assert!(metric(&metrics, "cryptotl_samples_total") > 0.0);
}

/// A transport that sends each request to the next replica in turn.
struct Alternate(Vec<Box<dyn Transport>>, AtomicUsize);

impl Alternate {
    fn next(&self) -> &dyn Transport {
        &*self.0[self.1.fetch_add(1, Ordering::Relaxed) % self.0.len()]
    }
}

impl Transport for Alternate {
    fn describe(&self) -> String {
        "two replicas".into()
    }
    fn interface(&self) -> cryptotl::Result<ModelInterface> {
        self.next().interface()
    }
    fn privacy(&self) -> cryptotl::Result<serde_json::Value> {
        self.next().privacy()
    }
    fn upload_key(&self, key: &[u8]) -> cryptotl::Result<String> {
        self.next().upload_key(key)
    }
    fn evaluate(&self, key_id: &str, batch: &[u8]) -> cryptotl::Result<Option<Evaluation>> {
        self.next().evaluate(key_id, batch)
    }
}

#[test]
fn two_replicas_share_one_key_store() {
    let f = Fixture::new();
    let store = f.dir.path().join("shared-keys");
    let (a, b) = (f.serve("127.0.0.1:0", &store), f.serve("127.0.0.1:0", &store));
    let transport = Alternate(vec![http(&a.url, &f.alice), http(&b.url, &f.alice)], AtomicUsize::new(0));
    let mut session = Session::connect(Box::new(transport), None, Some(41)).unwrap();
    session.batch = 2;
    let xs = samples(8, 5);
    let got: Vec<Vec<i64>> = xs.chunks(2).flat_map(|ch| session.forward_batch(ch).unwrap().0).collect();
    assert_eq!(got, local_outputs(41, &xs, 2));
    let (ma, mb) = (a.metrics(), b.metrics());
    assert_eq!(metric(&ma, "cryptotl_samples_total") + metric(&mb, "cryptotl_samples_total"), 8.0);
    assert!(metric(&ma, "cryptotl_samples_total") > 0.0 && metric(&mb, "cryptotl_samples_total") > 0.0, "both replicas served");
    // One upload in all: the replica that did not receive it read the key from the shared store.
    let uploads = metric(&ma, "cryptotl_requests_total{endpoint=\"/v1/keys\"") + metric(&mb, "cryptotl_requests_total{endpoint=\"/v1/keys\"");
    assert_eq!(uploads, 1.0);
}

#[test]
fn a_full_key_store_evicts_the_least_recently_used_key() {
    // The store's bound in whole keys: two fit, the third evicts the oldest.
    let dir = tempfile::tempdir().unwrap();
    let store = cryptotl_server::keystore::KeyStore::open(dir.path(), 25).unwrap();
    let ids: Vec<String> = (0..3u8).map(|i| {
        let id = store.put("o", &[i; 10]).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        id
    }).collect();
    assert!(matches!(store.get("o", &ids[0]), Err(cryptotl_server::keystore::StoreError::NotFound)));
    assert!(store.get("o", &ids[1]).is_ok() && store.get("o", &ids[2]).is_ok());
    // Using a key makes it recent: once ids[1] is used, ids[2] is the oldest.
    std::thread::sleep(Duration::from_millis(20));
    store.get("o", &ids[1]).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    store.put("o", &[9u8; 10]).unwrap();
    assert!(store.get("o", &ids[1]).is_ok());
    assert!(matches!(store.get("o", &ids[2]), Err(cryptotl_server::keystore::StoreError::NotFound)));
}

/// A client past its share of keys (`--keys-per-client`) evicts its own least recently used key, not another
/// client's older one: on disk, as `serve` keeps them, and across two handles on one folder (replicas).
#[test]
fn a_client_past_its_share_of_keys_evicts_its_own() {
    use cryptotl_server::keystore::{KeyStore, StoreError};
    let dir = tempfile::tempdir().unwrap();
    let (store, replica) = (KeyStore::open(dir.path(), 1 << 20).unwrap().with_keys_per_owner(2), KeyStore::open(dir.path(), 1 << 20).unwrap().with_keys_per_owner(2));
    let bob = store.put("bob", &[7u8; 10]).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let alice: Vec<String> = (0..4u8)
        .map(|i| {
            let id = if i % 2 == 0 { &store } else { &replica }.put("alice", &[i; 10]).unwrap();
            std::thread::sleep(Duration::from_millis(20));
            id
        })
        .collect();
    for gone in &alice[..2] {
        assert!(matches!(store.get("alice", gone), Err(StoreError::NotFound)));
    }
    assert!(store.get("alice", &alice[2]).is_ok() && replica.get("alice", &alice[3]).is_ok());
    assert!(store.get("bob", &bob).is_ok(), "bob's key, older than all of alice's, is kept");
    let files = std::fs::read_dir(dir.path()).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".owner")).count();
    assert_eq!(files, 3, "the evicted keys' owner files go with them");
}

fn cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cryptotl")).args(args).envs(env.iter().copied()).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// `server token` rewrites its file whole, so a file that is not a token file (a config given by mistake, binary
/// data) or a path that cannot be one (a folder, a missing folder) is refused naming `--tokens`, and nothing is
/// written; a file of comments only, or none, takes the token.
#[test]
fn server_token_refuses_a_file_that_is_not_a_token_file_and_leaves_it_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("quickstart.toml");
    std::fs::write(&config, cryptotl::config::QUICKSTART_TOML).unwrap();
    let binary = dir.path().join("data.bin");
    std::fs::write(&binary, [0xff_u8, 0xfe, 0x00, 0x80]).unwrap();
    let token = |path: &Path| cli(&["server", "token", "--name", "dave", "--tokens", path.to_str().unwrap()], &[]);
    for (path, says) in [
        (config.clone(), "not a token file (line "),
        (binary.clone(), "not a token file (not UTF-8"),
        (dir.path().to_path_buf(), "a folder, not a token file"),
        (dir.path().join("absent").join("tokens"), "does not exist"),
    ] {
        let (code, out, err) = token(&path);
        assert!(code == 2 && err.contains("key `--tokens`") && err.contains(says) && err.contains("nothing written") && out.is_empty(), "{path:?}: {err}");
    }
    assert_eq!(std::fs::read_to_string(&config).unwrap(), cryptotl::config::QUICKSTART_TOML);
    assert_eq!(std::fs::read(&binary).unwrap(), [0xff_u8, 0xfe, 0x00, 0x80]);
    assert!(!dir.path().join("absent").exists());
    assert!(!dir.path().join("quickstart.toml.lock").exists(), "a file given by mistake gets no lock beside it");
    let comments = dir.path().join("tokens");
    std::fs::write(&comments, "# our clients\n").unwrap();
    let (code, out, err) = token(&comments);
    assert_eq!(code, 0, "{err}");
    let tokens = cryptotl_server::auth::Tokens::load(&comments).unwrap();
    assert_eq!(tokens.authenticate(out.trim()).unwrap().name, "dave");
    assert!(std::fs::read_to_string(&comments).unwrap().starts_with("# our clients\n"));
}

/// A running server reads its token file again when it changes: a client issued a token after the start is served
/// at once, one revoked (`server token --revoke`, or its line removed by hand) is refused from its next request, and a version that does not parse is not
/// taken (the clients stay as they were). Before, the file was read once at the start.
#[test]
fn a_running_server_follows_its_token_file() {
    let f = Fixture::new();
    let server = f.serve("127.0.0.1:0", &f.dir.path().join("keys"));
    let c = reqwest::blocking::Client::new();
    let interface = |token: &str| status(c.get(format!("{}/v1/interface", server.url)).bearer_auth(token)).0;
    assert_eq!((interface(&f.alice), interface(&f.bob)), (200, 200));
    let path = f.dir.path().join("tokens");
    let (code, carol, err) = cli(&["server", "token", "--name", "carol", "--tokens", path.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(interface(carol.trim()), 200, "a token issued while the server runs");
    let (code, _, err) = cli(&["server", "token", "--revoke", "--name", "alice", "--tokens", path.to_str().unwrap()], &[]);
    assert!(code == 0 && err.contains("token of `alice` removed"), "{err}");
    assert_eq!((interface(&f.alice), interface(&f.bob), interface(carol.trim())), (401, 200, 200), "alice's token revoked");
    let (code, _, err) = cli(&["server", "token", "--revoke", "--name", "alice", "--tokens", path.to_str().unwrap()], &[]);
    assert!(code == 2 && err.contains("key `--name`") && err.contains("no client named `alice`"), "{err}");
    // By hand: a line removed in an editor.
    let without_carol: String = std::fs::read_to_string(&path).unwrap().lines().filter(|l| !l.starts_with("carol ")).map(|l| format!("{l}\n")).collect();
    std::fs::write(&path, without_carol.as_bytes()).unwrap();
    assert_eq!((interface(&f.bob), interface(carol.trim())), (200, 401), "carol's line removed");
    let (code, carol, err) = cli(&["server", "token", "--name", "carol", "--tokens", path.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(interface(carol.trim()), 200, "carol's new token");
    std::fs::write(&path, "bob this-is-not-a-hash\n").unwrap();
    assert_eq!((interface(&f.alice), interface(&f.bob), interface(carol.trim())), (401, 200, 200), "a broken file is not taken");
    std::fs::write(&path, "# every client removed\n").unwrap();
    assert_eq!((interface(&f.bob), interface(carol.trim())), (401, 401), "no clients left");
}

/// Tokens issued into one file at once all land: each `server token` rewrites the file it read, so without taking
/// turns the last writer dropped the others' lines (16 at once kept 1 to 3, each having printed its token).
#[test]
fn tokens_issued_at_once_into_one_file_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens");
    let children: Vec<(String, std::process::Child)> = (0..12)
        .map(|i| {
            let name = format!("client{i}");
            let child = Command::new(env!("CARGO_BIN_EXE_cryptotl"))
                .args(["server", "token", "--name", &name, "--tokens"])
                .arg(&path)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            (name, child)
        })
        .collect();
    let issued: Vec<(String, String)> = children
        .into_iter()
        .map(|(name, child)| {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
            (name, String::from_utf8_lossy(&out.stdout).trim().to_string())
        })
        .collect();
    let tokens = cryptotl_server::auth::Tokens::load(&path).unwrap();
    for (name, token) in &issued {
        assert_eq!(tokens.authenticate(token).map(|c| c.name), Some(name.clone()), "{name}'s printed token is in the file");
    }
}

/// `server build --out` at a path it cannot write fails at once naming `--out`, before any pretraining, and leaves
/// the file there untouched.
#[test]
fn server_build_refuses_an_out_path_it_cannot_write_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a_file");
    std::fs::write(&file, "kept").unwrap();
    let cfg = dir.path().join("tiny.toml");
    std::fs::write(&cfg, common::tiny_config(dir.path())).unwrap();
    let (code, out, err) = cli(&["-q", "server", "build", cfg.to_str().unwrap(), "--out", file.to_str().unwrap()], &[]);
    assert!(code == 2 && err.contains("key `--out`") && err.contains("is not a directory") && out.is_empty(), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "kept");
    assert!(!dir.path().join("run").exists() && !dir.path().join("cache").exists(), "nothing was pretrained or written");
}

/// The model owner's side of the tiny config in `dir` (`tiny.toml`, returned): `server build` into `dir/model`, a
/// token for `name` in `dir/tokens`, `serve` on loopback with its key store in `dir/keys`.
fn build_and_serve_tiny(dir: &Path, name: &str) -> (PathBuf, Server, String) {
    let cfg = dir.join("tiny.toml");
    std::fs::write(&cfg, common::tiny_config(dir)).unwrap();
    let (model, tokens) = (dir.join("model"), dir.join("tokens"));
    let (code, out, err) = cli(&["-q", "server", "build", cfg.to_str().unwrap(), "--out", model.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("server model written"), "{out}");
    let (code, token, err) = cli(&["server", "token", "--name", name, "--tokens", tokens.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{err}");
    let token = token.trim().to_string();
    assert_eq!(token.len(), 64);
    (cfg, Server::spawn(&model, &tokens, &dir.join("keys"), "127.0.0.1:0", &[]), token)
}

#[test]
fn run_and_predict_through_a_server_that_server_build_made() {
    let dir = tempfile::tempdir().unwrap();
    // The model owner: pretrain and compile, issue a token, serve.
    let (cfg, server, token) = build_and_serve_tiny(dir.path(), "carol");
    let c = cfg.to_str().unwrap();
    let tokens = dir.path().join("tokens");
    assert!(!std::fs::read_to_string(&tokens).unwrap().contains(&token), "the token file keeps only the hash");
    let (code, _, err) = cli(&["server", "token", "--name", "carol", "--tokens", tokens.to_str().unwrap()], &[]);
    assert!(code == 2 && err.contains("already has a token"), "{err}");

    // The data owner: the whole run through the server, never touching the server's network or source data.
    let set = format!("he.server={:?}", server.url);
    let env = [("CRYPTOTL_TOKEN", token.as_str())];
    let (code, _, err) = cli(&["-q", "run", c, "--set", &set, "--set", "curve.enabled=false"], &env);
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join("run/report.json")).unwrap()).unwrap();
    assert_eq!(report["server"], server.url.as_str());
    assert!(report["pretraining"].is_null() && report["source"].is_null(), "a remote client has no server network");
    let he = &report["he"];
    assert_eq!(he["server"], server.url.as_str());
    assert!(he["off_oracle_rate"].is_null() && he["program"].is_null(), "{he}");
    assert_eq!(he["samples"], 120);
    let transfer = report["results"].as_array().unwrap().iter().find(|r| r["method"] == "transfer").unwrap();
    assert!(transfer["test"]["accuracy"].as_f64().unwrap() > 0.85, "{transfer}");
    let rows = report["budget"]["rows"].as_array().unwrap();
    assert!(rows.iter().any(|r| r["party"] == "server" && r["mechanism"] == "none"), "the server's published statement: {rows:?}");
    // The server measured the membership attack on its own source data when it built the model, and published it.
    let membership = &report["budget"]["source_membership"];
    assert_eq!(membership["provenance"], "measured by the server when it built this model", "{membership}");
    assert!((0.0..=1.0).contains(&membership["attack"]["auc"].as_f64().unwrap()), "{membership}");
    let md = std::fs::read_to_string(dir.path().join("run/report.md")).unwrap();
    assert!(md.contains("remote server at") && md.contains("not measurable"), "{md}");
    // Nor can it count its texts among the server's source texts: the report says so rather than "none".
    assert!(report["source_overlap"].is_null(), "{}", report["source_overlap"]);
    assert!(md.contains("Target texts among the server's source texts: not checked (the remote server's source texts are its own)"), "{md}");
    // The server published its outputs' source ranges, so the remote client centres a DP head's inputs on the
    // same public points as a client in one process with the server's network.
    let local = cryptotl::config::RunConfig::from_toml_str(&common::tiny_config(dir.path()), "tiny.toml", &[]).unwrap();
    let ranges = cryptotl::pipeline::transfer_output_ranges(&local, &cryptotl::pipeline::server_lower_network(&local).unwrap()).unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join("run").join(cryptotl::rundir::MANIFEST)).unwrap()).unwrap();
    let centres: Vec<f64> = manifest["dp_references"]["transferred"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(centres.len(), ranges.len(), "head.inputs = transfer: one centre per output");
    for (c, (lo, hi)) in centres.iter().zip(&ranges) {
        assert!((c - f64::from(lo + hi) / 2.0).abs() < 1e-6, "{c} vs [{lo}, {hi}]");
    }
    assert!(centres.iter().any(|&c| c > 0.0));

    // New texts through the same remote path.
    let texts = dir.path().join("texts.txt");
    std::fs::write(&texts, "lovely story very this quite wonderful\nan bad it really quite horrible\n").unwrap();
    let (code, out, err) = cli(&["-q", "predict", "--run", dir.path().join("run").to_str().unwrap(), "--input", texts.to_str().unwrap(), "--set", &set], &env);
    assert_eq!(code, 0, "{err}");
    let labels: Vec<u64> = out.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["label"].as_u64().unwrap()).collect();
    assert_eq!(labels, vec![1, 0], "{out}");
    // Predicting again reuses the key the run made and kept in its directory: the server stores one key, not one
    // per call.
    let (code, again, err) = cli(&["-q", "predict", "--run", dir.path().join("run").to_str().unwrap(), "--input", texts.to_str().unwrap(), "--set", &set], &env);
    assert_eq!(code, 0, "{err}");
    let again: Vec<u64> = again.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["label"].as_u64().unwrap()).collect();
    assert_eq!(again, labels);
    let keys = std::fs::read_dir(dir.path().join("keys")).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".key")).count();
    assert_eq!(keys, 1, "the run's key, reused by both predictions");
    assert!(dir.path().join("run").join(cryptotl::pipeline::CLIENT_KEY_FILE).is_file());
    // A new run makes a new key. One stopped after its encrypted pass (its report's path is taken by a folder)
    // keeps its journal; run again, it resumes under the key it kept: nothing made, nothing uploaded.
    // (The config's insecure seed makes every key the same bytes, so the store cannot tell them apart: count uploads.)
    let uploads = || metric(&server.metrics(), "cryptotl_requests_total{endpoint=\"/v1/keys\"");
    let before = uploads();
    let report_path = dir.path().join("run/report.json");
    std::fs::remove_file(&report_path).unwrap();
    std::fs::create_dir(&report_path).unwrap();
    let (code, _, err) = cli(&["-q", "run", c, "--set", &set, "--set", "curve.enabled=false"], &env);
    assert!(code != 0 && err.contains("report.json"), "{code}: {err}");
    assert_eq!(uploads(), before + 1.0, "a new run, a new key");
    assert_eq!(cryptotl::he::journal::journals_in(&dir.path().join("run")).unwrap().len(), 1);
    std::fs::remove_dir(&report_path).unwrap();
    let (code, _, err) = cli(&["-q", "run", c, "--set", &set, "--set", "curve.enabled=false"], &env);
    assert_eq!(code, 0, "{err}");
    assert_eq!(uploads(), before + 1.0, "the resumed run reused its key");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
    assert_eq!((report["he"]["key_reused"].as_bool(), report["he"]["resumed_samples"].as_u64()), (Some(true), Some(120)));
    let md = std::fs::read_to_string(dir.path().join("run/report.md")).unwrap();
    assert!(md.contains("| key generation | none: the client key kept in the run's folder, reused |"), "{md}");
    assert!(cryptotl::he::journal::journals_in(&dir.path().join("run")).unwrap().is_empty());
    // A wrong token: a clear refusal, exit 1, no retry storm.
    let (code, _, err) = cli(&["-q", "features", c, "--set", &set], &[("CRYPTOTL_TOKEN", "wrong")]);
    assert!(code == 1 && err.contains("401"), "{code}: {err}");
    // The run recorded the server's model id: the id of the program a client in one process compiles from the same
    // network. Against a server whose model is no longer that one, `predict` refuses, naming both.
    let manifest_path = dir.path().join("run").join(cryptotl::rundir::MANIFEST);
    let mut manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    let here = cryptotl::pipeline::network_id(&local, &cryptotl::pipeline::server_lower_network(&local).unwrap()).unwrap();
    assert_eq!(manifest["lower_network"].as_str(), Some(here.as_str()));
    manifest["lower_network"] = serde_json::json!("a model this server no longer serves");
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let (code, _, err) = cli(&["-q", "predict", "--run", dir.path().join("run").to_str().unwrap(), "--input", texts.to_str().unwrap(), "--set", &set], &env);
    assert!(code != 0 && err.contains("trained behind the server network a model this") && err.contains(&here[..12]), "{code}: {err}");
}

/// Outputs within the tested rate of one-level lookups of the clear-integer program (what a session without the
/// oracle cannot check itself).
#[test]
fn curve_sweep_and_audit_go_through_the_server_the_config_names() {
    // The model owner builds and serves; the client's config keeps the server's address but has neither its network
    // (an empty cache) nor its source data (the path is gone), so nothing here can be run on the client's side.
    let dir = tempfile::tempdir().unwrap();
    let (_, server, token) = build_and_serve_tiny(dir.path(), "dana");
    let env = [("CRYPTOTL_TOKEN", token.as_str())];
    let client = dir.path().join("client.toml");
    let text = common::tiny_config(dir.path())
        .replace(&dir.path().join("cache").display().to_string(), &dir.path().join("client-cache").display().to_string())
        .replace("separable_source.csv", "gone.csv")
        .replace("[he]\n", &format!("[he]\nserver = {:?}\n", server.url));
    std::fs::write(&client, text).unwrap();
    let c = client.to_str().unwrap();
    let samples = || metric(&server.metrics(), "cryptotl_samples_total");

    // Features of the server's kind and width, made otherwise, are refused before any key is made.
    let other = dir.path().join("other");
    let (code, _, err) = cli(&["-q", "run", c, "--set", "features.ngrams=2", "--output-dir", other.to_str().unwrap()], &env);
    assert!(code == 2 && err.contains("features.ngrams: 1 at the server, 2 here"), "{code}: {err}");
    assert_eq!(metric(&server.metrics(), "cryptotl_requests_total{endpoint=\"/v1/keys\""), 0.0);

    // Learning curves: every sample once through the server, the key kept in the curve's own folder.
    let curve = dir.path().join("curve");
    // The config asks for weight noise, which only the server's owner can apply, and scales its features otherwise
    // than the server: the client is told both, and goes on.
    let noise = ["--set", "server_privacy.weight_noise.l2_sensitivity=0.01", "--set", "server_privacy.weight_noise.target_epsilon=8", "--set", "features.scaling=\"fixed\""];
    let (code, out, err) = cli(&[&["-q", "curve", c, "--set", "curve.draws=1", "--out", curve.to_str().unwrap()][..], &noise].concat(), &env);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("(encrypted lower network, through the server at {})", server.url)), "{out}");
    assert!(err.contains("[server_privacy] is set by the server's owner") && err.contains("ε = ∞"), "{err}");
    assert!(err.contains("features.scaling is \"fixed\" here and \"fitted\" at"), "{err}");
    assert_eq!(samples(), 120.0);
    assert!(curve.join(cryptotl::pipeline::CLIENT_KEY_FILE).is_file());
    assert!(!dir.path().join("run").join(cryptotl::pipeline::CLIENT_KEY_FILE).exists(), "the run's folder is not the curve's");

    // The client's ε swept through the server; the server's ε is not the client's to sweep.
    let sweep = dir.path().join("sweep");
    let (code, _, err) = cli(&["-q", "sweep", c, "--client-epsilons", "1,inf", "--repeats", "1", "--server-epsilons", "4", "--out", sweep.to_str().unwrap()], &env);
    assert!(code == 2 && err.contains("he.server") && err.contains("--server-epsilons"), "{code}: {err}");
    assert!(!sweep.exists());
    let (code, out, err) = cli(&["-q", "sweep", c, "--client-epsilons", "1,inf", "--repeats", "1", "--out", sweep.to_str().unwrap()], &env);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("| server as configured |") && out.contains("the server's network as configured"), "{out}");
    assert!(out.contains(&format!("lower network encrypted (TFHE), through the server at {};", server.url)), "{out}");
    assert_eq!(samples(), 240.0);

    // The audit's head inputs come through the server too (a client of a remote server has no plaintext path).
    let audit = dir.path().join("audit");
    let (code, out, err) = cli(&["-q", "audit", c, "--set", "privacy.target_epsilon=1", "--canaries", "100", "--output-dir", audit.to_str().unwrap()], &env);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("lower bound") || out.contains("ε"), "{out}");
    assert_eq!(samples(), 360.0);
    // It keeps its key in its folder, and a second audit there takes it up: no second upload.
    assert!(audit.join(cryptotl::pipeline::CLIENT_KEY_FILE).is_file());
    let uploads = || metric(&server.metrics(), "cryptotl_requests_total{endpoint=\"/v1/keys\"");
    let before = uploads();
    let (code, _, err) = cli(&["-q", "audit", c, "--set", "privacy.target_epsilon=1", "--canaries", "100", "--output-dir", audit.to_str().unwrap()], &env);
    assert_eq!(code, 0, "{err}");
    assert_eq!((samples(), uploads()), (480.0, before), "the kept key, reused");
    let pretrained: Vec<_> = std::fs::read_dir(dir.path().join("client-cache")).into_iter().flatten().flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("pretrain")).collect();
    assert!(pretrained.is_empty(), "the client pretrained nothing: {pretrained:?}");
}

fn assert_near_the_program(session: &Session, xs: &[Vec<f32>], got: &[Vec<i64>]) {
    let program = program();
    let (mut compared, mut off) = (0, 0);
    for (x, g) in xs.iter().zip(got) {
        let want = program.evaluate_clear(&session.interface.quantize(x));
        for (a, b) in g.iter().zip(&want) {
            assert!((a - b).abs() <= 3, "{g:?} against {want:?}");
            compared += 1;
            off += (a != b) as usize;
        }
    }
    assert!(compared > 0 && (off as f64) < 0.25 * compared as f64, "{off} of {compared} outputs off the program");
}

/// A kept key is tied to the token it was uploaded with, as the server ties it: with another token (the old one
/// revoked or rotated) the session makes a new key instead of sending one the server refuses to it (403) for ever.
#[test]
fn a_kept_key_is_not_reused_under_another_token() {
    let f = Fixture::new();
    let key_file = f.dir.path().join("client_key.json");
    let xs = samples(4, 8);
    let server = f.serve("127.0.0.1:0", &f.dir.path().join("keys"));
    let alices = Session::connect_keeping_key(http(&server.url, &f.alice), Some(61), &key_file, true).unwrap();
    alices.forward_batch(&xs).unwrap();
    let bobs = Session::connect_keeping_key(http(&server.url, &f.bob), Some(62), &key_file, true).unwrap();
    assert!(!bobs.key_reused, "alice's kept key is not sent under bob's token");
    assert_ne!(bobs.client.key_id(), alices.client.key_id());
    assert_eq!(bobs.forward_batch(&xs).unwrap().0, local_outputs(62, &xs, 4));
    // Bob's key is kept now; under bob's token it is reused.
    let again = Session::connect_keeping_key(http(&server.url, &f.bob), Some(63), &key_file, true).unwrap();
    assert!(again.key_reused && again.client.key_id() == bobs.client.key_id());
}

#[test]
fn a_kept_client_key_is_reused_and_made_again_when_the_server_lost_it() {
    let f = Fixture::new();
    let store = f.dir.path().join("keys");
    let key_file = f.dir.path().join("client_key.json");
    let uploads = |s: &Server| metric(&s.metrics(), "cryptotl_requests_total{endpoint=\"/v1/keys\"");
    let xs = samples(6, 7);
    let server = f.serve("127.0.0.1:0", &store);
    let port = server.port();

    // A first session makes a key, uploads it and keeps it, owner-only.
    let first = Session::connect_keeping_key(http(&server.url, &f.alice), Some(51), &key_file, true).unwrap();
    assert!(!first.key_reused && first.evaluation_key_bytes > 0);
    assert_eq!(first.forward_batch(&xs).unwrap().0, local_outputs(51, &xs, 6), "a kept key changes nothing of a new session");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600, "the file holds the secret key");
    }
    let kept = std::fs::read(&key_file).unwrap();

    // Later sessions reuse it: no key generated, nothing uploaded, and their outputs decrypt.
    for seed in [52, 53] {
        let again = Session::connect_keeping_key(http(&server.url, &f.alice), Some(seed), &key_file, true).unwrap();
        assert!(again.key_reused && again.keygen_seconds == 0.0 && again.evaluation_key_bytes == 0);
        assert_eq!(again.client.key_id(), first.client.key_id());
        let got = again.forward_batch(&xs).unwrap().0;
        assert_near_the_program(&again, &xs, &got);
    }
    assert_eq!(uploads(&server), 1.0, "one upload for three sessions");
    assert_eq!(std::fs::read(&key_file).unwrap(), kept);

    // `reuse = false` (a run) makes a new key and keeps that one instead.
    let fresh = Session::connect_keeping_key(http(&server.url, &f.alice), Some(54), &key_file, false).unwrap();
    assert!(!fresh.key_reused && fresh.client.key_id() != first.client.key_id());
    assert_eq!(uploads(&server), 2.0);
    drop(fresh);

    // The server loses every key (a new machine, an empty store, the same address): the next session sends a new
    // evaluation key made from the kept secret key, once, and records the server's new id for it.
    drop(server);
    std::fs::remove_dir_all(&store).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let server = f.serve(&format!("127.0.0.1:{port}"), &store);
    let before: serde_json::Value = serde_json::from_slice(&std::fs::read(&key_file).unwrap()).unwrap();
    let lost = Session::connect_keeping_key(http(&server.url, &f.alice), Some(55), &key_file, true).unwrap();
    assert!(lost.key_reused);
    let got = lost.forward_batch(&xs).unwrap().0;
    assert_near_the_program(&lost, &xs, &got);
    assert_eq!(uploads(&server), 1.0);
    let after: serde_json::Value = serde_json::from_slice(&std::fs::read(&key_file).unwrap()).unwrap();
    assert_eq!(after["client_key"], before["client_key"], "the same secret key");
    let again = Session::connect_keeping_key(http(&server.url, &f.alice), Some(56), &key_file, true).unwrap();
    let got = again.forward_batch(&xs).unwrap().0;
    assert_near_the_program(&again, &xs, &got);
    assert_eq!(uploads(&server), 1.0, "the new id was kept: no second upload");

    // A corrupt file, or one kept for another server, means a new key, not an error.
    std::fs::write(&key_file, b"{ not json").unwrap();
    let s = Session::connect_keeping_key(http(&server.url, &f.alice), Some(57), &key_file, true).unwrap();
    assert!(!s.key_reused);
    let other = f.serve("127.0.0.1:0", &f.dir.path().join("other-keys"));
    let s = Session::connect_keeping_key(http(&other.url, &f.alice), Some(58), &key_file, true).unwrap();
    assert!(!s.key_reused, "a key kept for {} is not offered to {}", server.url, other.url);
}

#[test]
fn centred_tables_are_artifact_format_2_and_the_client_adds_their_offsets_back() {
    use cryptotl::he::InProcess;
    let dir = tempfile::tempdir().unwrap();
    let null = || serde_json::Value::Null;
    // Without offsets an artifact is written, published and read as format 1, as before.
    let plain = ModelArtifact::new(program(), PARAMS, null(), null()).unwrap();
    assert_eq!((plain.interface.format, plain.interface.program.output_offsets.len()), (1, 0));
    assert_eq!(plain.write(&dir.path().join("plain")).unwrap().format, 1);
    assert_eq!(ModelArtifact::load(&dir.path().join("plain")).unwrap().interface, plain.interface);
    // With them: format 2, the pooled offsets in the interface, the program read back whole.
    let centred = ModelArtifact::new(centred_program(), PARAMS, null(), null()).unwrap();
    assert_eq!((centred.interface.format, centred.interface.program.output_offsets.clone()), (2, vec![10; 6]));
    assert_eq!(centred.write(&dir.path().join("centred")).unwrap().format, 2);
    assert_eq!(ModelArtifact::load(&dir.path().join("centred")).unwrap().program, centred_program());
    // A format-1 interface cannot carry offsets (a client of that format would drop them); a newer format is refused.
    let mut iface = centred.interface.clone();
    iface.format = 1;
    assert!(iface.validate().unwrap_err().to_string().contains("format 1 cannot carry output offsets"));
    iface.format = 3;
    assert!(iface.validate().unwrap_err().to_string().contains("interface format 3"));
    let manifest = dir.path().join("centred").join("manifest.json");
    std::fs::write(&manifest, std::fs::read_to_string(&manifest).unwrap().replace("\"format\": 2", "\"format\": 3")).unwrap();
    assert!(ModelArtifact::load(&dir.path().join("centred")).unwrap_err().to_string().contains("artifact format 3"));

    // Encrypted: the centred program's decrypted outputs are the uncentred program's values, within the lookups one
    // index off (3 levels on these tables); a client that dropped the offsets would be 10 levels off everywhere.
    let x = ndarray::Array2::from_shape_vec((8, 16), samples(8, 5).concat()).unwrap();
    let session = Session::connect(Box::new(InProcess::new(centred).unwrap()), Some(centred_program()), Some(7)).unwrap();
    let (got, stats) = session.forward(x.view(), "centred").unwrap();
    assert!(stats.max_level_difference <= 3, "{stats:?}");
    let (want, _) = cryptotl::he::quant::clear_forward(&program(), x.view()).unwrap();
    let level = program().interface().output_scale;
    let worst = (&got - &want).mapv(f32::abs).fold(0.0f32, |a, &b| a.max(b)) / level;
    assert!(worst <= stats.max_level_difference as f32 + 1e-4, "{worst} levels off the uncentred program's values");
}

/// A server built before 2026-12-06 as its clients see it: its interface lists no evaluation-key forms, and it
/// reads only the full form (an upload of anything else is refused here, as its parser would).
struct OldServer {
    inner: Box<dyn Transport>,
    uploaded: std::sync::Mutex<Vec<usize>>,
}

impl Transport for OldServer {
    fn describe(&self) -> String {
        "old".into()
    }
    fn interface(&self) -> cryptotl::Result<ModelInterface> {
        Ok(ModelInterface { evaluation_key_forms: vec![], ..self.inner.interface()? })
    }
    fn privacy(&self) -> cryptotl::Result<serde_json::Value> {
        self.inner.privacy()
    }
    fn upload_key(&self, key: &[u8]) -> cryptotl::Result<String> {
        cryptotl_server::EvaluationKey::from_bytes(key, u64::MAX)?;
        self.uploaded.lock().unwrap().push(key.len());
        self.inner.upload_key(key)
    }
    fn evaluate(&self, key_id: &str, batch: &[u8]) -> cryptotl::Result<Option<Evaluation>> {
        self.inner.evaluate(key_id, batch)
    }
}

#[test]
fn the_client_sends_a_rounded_key_where_the_server_reads_one_and_a_full_key_to_an_older_server() {
    use cryptotl::he::InProcess;
    let artifact = || ModelArtifact::new(program(), PARAMS, serde_json::Value::Null, serde_json::Value::Null).unwrap();
    assert_eq!(artifact().interface.evaluation_key_forms, ["rounded", "full"]);
    let x = ndarray::Array2::from_shape_vec((4, 16), samples(4, 9).concat()).unwrap();
    let current = Session::connect(Box::new(InProcess::new(artifact()).unwrap()), Some(program()), Some(5)).unwrap();
    let old = OldServer { inner: Box::new(InProcess::new(artifact()).unwrap()), uploaded: Default::default() };
    let old = Session::connect(Box::new(old), Some(program()), Some(5)).unwrap();
    let full = cryptotl_server::EvaluationKey::size_limit(PARAMS) as usize;
    assert!(current.evaluation_key_bytes < full * 79 / 100, "{} bytes: not the rounded form", current.evaluation_key_bytes);
    assert!(old.evaluation_key_bytes > full * 99 / 100 - 8192, "{} bytes: not the full form", old.evaluation_key_bytes);
    // Both serve the same outputs (same client keys and encryption seeds; one-level lookups may differ).
    let (a, sa) = current.forward(x.view(), "rounded key").unwrap();
    let (b, sb) = old.forward(x.view(), "full key").unwrap();
    assert!(sa.max_level_difference <= 3 && sb.max_level_difference <= 3, "{sa:?} {sb:?}");
    let level = program().interface().output_scale;
    assert!((&a - &b).mapv(f32::abs).fold(0.0f32, |m, &v| m.max(v)) <= 6.0 * level);
}
