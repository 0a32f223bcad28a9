//! MiniLM sentence-embedding throughput: short (SMS-length, ~20 tokens) and long (review-length, 256 tokens)
//! texts, batch 32, the embedding cache off. Needs `python3 datasets/fetch_model.py`; skipped without the model.
//!
//! `cargo bench --bench minilm` (criterion reports time and texts per second).

use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use cryptotl::features::minilm::{DEFAULT_MODEL_DIR, Encoder};

fn short_texts(n: usize) -> Vec<String> {
    let base = [
        "Are we still meeting for lunch tomorrow at noon?",
        "Congratulations! You've won a free cruise. Text WIN to 80086 to claim now.",
        "Ok lar... Joking wif u oni...",
        "I'll call you later when I get home, the bus is running late again",
        "URGENT! Your mobile number has been awarded a 2000 prize GUARANTEED. Call 09061790121",
        "Sorry, I can't talk right now. Will text you in a bit",
    ];
    (0..n).map(|i| format!("{} {}", base[i % base.len()], i)).collect()
}

fn long_texts(n: usize) -> Vec<String> {
    let review = "This movie was a surprise from start to finish: the acting is strong, the script is sharp, and the \
                  photography makes every scene worth watching, although the second half drags in places and the \
                  ending felt rushed to me. ";
    (0..n).map(|i| format!("{} {}", review.repeat(6), i)).collect()
}

fn bench(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_MODEL_DIR);
    if !dir.join("model.safetensors").exists() {
        eprintln!("SKIPPED: no MiniLM model in {} (python3 datasets/fetch_model.py)", dir.display());
        return;
    }
    let enc = Encoder::load(&dir).unwrap();
    let short = short_texts(32);
    let long = long_texts(32);
    let tokens = |t: &[String]| enc.tokenize(t).unwrap().iter().map(Vec::len).sum::<usize>() as f64 / t.len() as f64;
    eprintln!("mean tokens: short {:.1}, long {:.1}", tokens(&short), tokens(&long));
    let mut g = c.benchmark_group("minilm");
    g.sample_size(10);
    g.throughput(Throughput::Elements(32));
    g.bench_function("short_batch32", |b| b.iter(|| enc.embed(&short, 32, "bench").unwrap()));
    g.bench_function("long_batch32", |b| b.iter(|| enc.embed(&long, 32, "bench").unwrap()));
    // Two batches: the two cores each take one, as in a real run.
    let short64 = short_texts(64);
    g.throughput(Throughput::Elements(64));
    g.bench_function("short_2x_batch32", |b| b.iter(|| enc.embed(&short64, 32, "bench").unwrap()));
    // Long texts as a run embeds them: many at a time, batches spread over the cores (at 256 tokens a text,
    // `TOKENS_PER_BATCH` makes every batch a single text whatever the batch size asked for).
    let long64 = long_texts(64);
    g.bench_function("long_64_batch32", |b| b.iter(|| enc.embed(&long64, 32, "bench").unwrap()));
    g.throughput(Throughput::Elements(1));
    g.bench_function("short_batch1", |b| b.iter(|| enc.embed(&short[..1], 1, "bench").unwrap()));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
