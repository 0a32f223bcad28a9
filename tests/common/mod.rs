//! Shared by the integration tests: the tiny separable run.
#![allow(dead_code)]

use std::path::Path;

/// The committed test fixtures.
pub const FX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// A tiny run on the separable fixtures, writing under `dir`.
pub fn tiny_config(dir: &Path) -> String {
    format!(
        r#"
name = "tiny"
seed = 5
output_dir = "{out}"
cache_dir = "{cache}"
[features]
dim = 256
ngrams = 1
[source]
name = "separable source"
format = "csv"
paths = ["{FX}/separable_source.csv"]
[target]
name = "separable target"
format = "csv"
paths = ["{FX}/separable_target.csv"]
[lower]
conv_kernel = 9
hidden = 12
pool = 3
output = 0
[he]
insecure_seed = 3
[pretrain]
epochs = 25
batch_size = 16
learning_rate = 3e-3
patience = 5
[head_training]
epochs = 40
batch_size = 16
learning_rate = 3e-3
patience = 8
"#,
        out = dir.join("run").display(),
        cache = dir.join("cache").display(),
    )
}

/// The `(label, text)` rows of the fixture CSV `name` (`label,text`, no quoted fields), header skipped.
pub fn fixture_rows(name: &str) -> Vec<(String, String)> {
    std::fs::read_to_string(format!("{FX}/{name}"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split_once(',').map(|(y, t)| (y.to_string(), t.to_string())).unwrap())
        .collect()
}

/// A sweep over the server's ε (`server_epsilons`, e.g. `"3,4"`) with `mechanism`, the client without DP, once each.
pub fn server_sweep(server_epsilons: &str, mechanism: cryptotl::sweep::ServerMechanism) -> cryptotl::sweep::SweepSpec {
    cryptotl::sweep::SweepSpec {
        client_epsilons: cryptotl::sweep::Epsilon::parse_list("inf").unwrap(),
        server_epsilons: cryptotl::sweep::Epsilon::parse_list(server_epsilons).unwrap(),
        server_mechanism: mechanism,
        raw_baseline: false,
        repeats: 1,
    }
}
