//! Load test of `cryptotl serve` on loopback: the quickstart's server model (shipped network, default parameter
//! set), served over HTTP in this process on an ephemeral port, and 1, 2 and 4 clients at once, each with its own
//! key, sending `BATCHES` batches of `BATCH` samples. Reports request latency (p50, p95), samples per second, and
//! the transport's share of each request: its latency minus the server's evaluation time (the `x-eval-seconds` it
//! answers with) and the client's encryption and decryption, over the latency. That share is HTTP's cost (plus
//! queueing when several clients wait), measured per request and so free of run-to-run drift.
//! Bounded: it stops by itself after the last round.
//!
//! ```sh
//! cargo run --release --example load_test            # BATCHES=4 BATCH=16 by default
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use cryptotl::config::{QUICKSTART_TOML, RunConfig};
use cryptotl::he::{Http, Session, quantile};
use rand::{RngExt, SeedableRng};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// One row of the table: samples per second, request latency quantiles, mean transport share.
fn print_row(clients: &str, samples: usize, wall: f64, latencies: &[f64], shares: &[f64]) {
    let mean_share = shares.iter().sum::<f64>() / shares.len().max(1) as f64;
    println!(
        "| {clients} | {samples} | {wall:.1} | {:.2} | {:.2} | {:.2} | {:.1}% |",
        samples as f64 / wall,
        quantile(latencies, 0.5),
        quantile(latencies, 0.95),
        100.0 * mean_share
    );
}

fn main() -> cryptotl::Result<()> {
    let (batches, batch) = (env("BATCHES", 4), env("BATCH", 16));
    let cfg = RunConfig::from_toml_str(QUICKSTART_TOML, "quickstart", &[])?;
    let (artifact, _) = cryptotl::pipeline::server_artifact(&cfg)?;
    let dim = artifact.interface.program.input_dim;
    let (program, params) = (artifact.program.clone(), artifact.params);
    let dir = tempfile::tempdir().map_err(|e| cryptotl::Error::Internal(e.to_string()))?;
    let store = cryptotl_server::keystore::KeyStore::open(&dir.path().join("keys"), 4 << 30).map_err(|e| cryptotl::Error::Internal(e.to_string()))?;
    let tokens_text: String = (0..4).map(|c| cryptotl_server::auth::Tokens::line(&format!("client{c}"), &format!("load-test-token-{c}"))).collect();
    let tokens = cryptotl_server::auth::Tokens::parse(&tokens_text).map_err(cryptotl::Error::Internal)?;
    let service = cryptotl_server::Service::new(artifact, store)?;
    let (tx, rx) = std::sync::mpsc::channel();
    let opts = cryptotl_server::http::ServeOptions { listen: "127.0.0.1:0".parse().unwrap(), tls: None, max_queue: 16, max_per_client: 16, queue_timeout: Duration::from_secs(600), upload_timeout: Duration::from_secs(600), eval_timeout: Duration::from_secs(600) };
    std::thread::spawn(move || {
        let _ = cryptotl_server::http::serve(service, tokens.into(), opts, |addr, _| {
            let _ = tx.send(addr);
        });
    });
    let url = format!("http://{}", rx.recv().map_err(|e| cryptotl::Error::Internal(e.to_string()))?);
    println!("server at {url}; {batches} batches of {batch} samples per client, {} threads", rayon::current_num_threads());
    println!("| clients | samples | wall (s) | samples/s | request p50 (s) | request p95 (s) | transport share (mean) |\n|---:|---:|---:|---:|---:|---:|---:|");
    // Latency minus server and client work, over latency.
    let share = |latency: f64, stats: &cryptotl::he::ForwardStats| {
        let work: f64 = stats.server_seconds.iter().sum::<f64>() + stats.client_seconds.iter().sum::<f64>();
        ((latency - work) / latency).max(0.0)
    };
    // The same batches in this process, without HTTP (the transport's cost is the difference).
    {
        let mut s = Session::local(program, params, None)?;
        s.batch = batch;
        s.forward_batch(&[vec![0.5; dim]])?;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let (mut l, mut shares) = (Vec::new(), Vec::new());
        let t = Instant::now();
        for _ in 0..batches {
            let rows: Vec<Vec<f32>> = (0..batch).map(|_| (0..dim).map(|_| rng.random_range(0.0..1.0)).collect()).collect();
            let t = Instant::now();
            let (_, stats) = s.forward_batch(&rows)?;
            let latency = t.elapsed().as_secs_f64();
            l.push(latency);
            shares.push(share(latency, &stats));
        }
        print_row("1 (in-process, no HTTP)", batches * batch, t.elapsed().as_secs_f64(), &l, &shares);
    }
    for clients in [1usize, 2, 4] {
        // Each client connects, uploads its key and warms the server's evaluator for it (not timed), then all
        // start together.
        let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
        let shares = Arc::new(std::sync::Mutex::new(Vec::new()));
        let start = Arc::new(std::sync::Barrier::new(clients + 1));
        let t = std::thread::scope(|scope| {
            for c in 0..clients {
                let (latencies, shares, start, url) = (latencies.clone(), shares.clone(), start.clone(), &url);
                scope.spawn(move || {
                    let http = Http::new(url, format!("load-test-token-{c}"), None).expect("client");
                    let mut s = Session::connect(Box::new(http), None, None).expect("connect");
                    s.batch = batch;
                    s.forward_batch(&[vec![0.5; dim]]).expect("warm-up");
                    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(c as u64);
                    start.wait();
                    for _ in 0..batches {
                        let rows: Vec<Vec<f32>> = (0..batch).map(|_| (0..dim).map(|_| rng.random_range(0.0..1.0)).collect()).collect();
                        let t = Instant::now();
                        let (_, stats) = s.forward_batch(&rows).expect("batch");
                        let latency = t.elapsed().as_secs_f64();
                        latencies.lock().unwrap().push(latency);
                        shares.lock().unwrap().push(share(latency, &stats));
                    }
                });
            }
            start.wait();
            Instant::now()
        });
        print_row(&clients.to_string(), clients * batches * batch, t.elapsed().as_secs_f64(), &latencies.lock().unwrap(), &shares.lock().unwrap());
    }
    Ok(())
}
