//! Config parsing and validation: errors name the file, the key and what is allowed.

use cryptotl::config::{Activation, QUICKSTART_TOML, RunConfig};

fn err(text: &str, overrides: &[&str]) -> String {
    let ov: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    match RunConfig::from_toml_str(text, "test.toml", &ov) {
        Ok(_) => panic!("expected an error for {overrides:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn shipped_configs_are_valid() {
    for f in ["quickstart", "imdb", "sms_spam", "paper_network"] {
        let path = format!("{}/configs/{f}.toml", env!("CARGO_MANIFEST_DIR"));
        let cfg = RunConfig::load(path.as_ref(), &[]).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert_eq!(cfg.name, f);
        assert!(cfg.he.enabled, "{f}: the encrypted path is the default");
        let want = if f == "paper_network" { 766 } else { 32 };
        assert_eq!(cfg.lower.output_dim(), want, "{f}");
    }
    let q = RunConfig::from_toml_str(QUICKSTART_TOML, "q", &[]).unwrap();
    assert_eq!((q.features.dim(), q.lower.activation), (384, Activation::Relu));
    // The embedded default runs on the shipped sentence embeddings with the linear probe, curves and baselines on.
    assert_eq!((q.features.kind, q.head.kind), (cryptotl::config::FeatureKind::Minilm, cryptotl::config::HeadKind::Linear));
    assert!(q.curve.enabled && q.baselines.bag_of_words);
}

#[test]
fn unknown_key_is_rejected_with_its_name_and_line() {
    let text = QUICKSTART_TOML.replace("[lower]", "[lower]\nhiden = 3");
    let msg = err(&text, &[]);
    assert!(msg.starts_with("test.toml:"), "{msg}");
    assert!(msg.contains("unknown field `hiden`") && msg.contains("hidden"), "{msg}");
    assert!(msg.contains("line"), "{msg}");
}

#[test]
fn wrong_type_and_unknown_enum_value() {
    assert!(err(QUICKSTART_TOML, &["lower.hidden=\"wide\""]).contains("invalid type"));
    let msg = err(QUICKSTART_TOML, &["lower.activation=swish"]);
    assert!(msg.contains("swish") && msg.contains("relu"), "{msg}");
}

#[test]
fn invalid_values_name_the_key_and_the_allowed_range() {
    let cases: &[(&str, &str, &str)] = &[
        ("lower.pool=0", "lower.pool", "1..="),
        ("lower.conv_kernel=8", "lower.conv_kernel", "odd"),
        ("features.max_windows=0", "features.max_windows", "at least 1"),
        ("head.c=0", "head.c", "(0, 1e12]"),
        ("curve.draws=0", "curve.draws", "1..=1000"),
        ("curve.sizes=[1]", "curve.sizes", "at least 2"),
        ("features.kind=\"bert\"", "features.kind", "allowed: \"hashed\", \"minilm\""),
        ("features=\"bert\"", "features.kind", "allowed"),
        ("features.batch_size=0", "features.batch_size", "1..=4096"),
        ("split.test=1.5", "split.test", "(0, 1)"),
        ("split.validation=0.75", "split", "less than 10%"),
        ("head.dropout=1.0", "head.dropout", "[0, 1)"),
        ("pretrain.learning_rate=-1.0", "pretrain.learning_rate", "(0, 1]"),
        ("head_training.epochs=0", "head_training.epochs", "1..=1000000"),
        ("target.paths=[]", "target.paths", "at least one"),
        ("source.max_examples=1", "source.max_examples", "at least 2"),
        ("name=\"has space\"", "name", "letters"),
    ];
    let hashed = err(QUICKSTART_TOML, &["features.kind=\"hashed\"", "features.dim=4"]);
    assert!(hashed.contains("key `features.dim`") && hashed.contains("8..=65536"), "{hashed}");
    // The hashed width is checked on a hashed config (the quickstart is minilm, always 384).
    for (ov, key, allowed) in cases {
        let msg = err(QUICKSTART_TOML, &[ov]);
        assert!(msg.contains(&format!("key `{key}`")), "{ov}: {msg}");
        assert!(msg.contains(allowed), "{ov}: {msg}");
    }
}

#[test]
fn minilm_is_selectable_in_every_config_and_sets_the_width() {
    for file in ["quickstart", "imdb", "sms_spam", "paper_network"] {
        let path = format!("{}/configs/{file}.toml", env!("CARGO_MANIFEST_DIR"));
        for ov in ["features=\"minilm\"", "features.kind=\"minilm\""] {
            let cfg = RunConfig::load(std::path::Path::new(&path), &[ov.to_string()]).unwrap();
            assert_eq!((cfg.features.kind, cfg.features.dim()), (cryptotl::config::FeatureKind::Minilm, 384), "{file} {ov}");
        }
    }
    let cfg = RunConfig::from_toml_str(QUICKSTART_TOML, "q", &["features=\"hashed\"".into()]).unwrap();
    assert_eq!(cfg.features.dim(), 768);
    // An explicit width other than 384 with minilm is refused, 384 is accepted.
    assert!(err(QUICKSTART_TOML, &["features.kind=\"minilm\"", "features.dim=768"]).contains("leave features.dim out"));
    RunConfig::from_toml_str(QUICKSTART_TOML, "q", &["features.kind=\"minilm\"".into(), "features.dim=384".into()]).unwrap();
    // A malformed table keeps its precise message.
    assert!(err(QUICKSTART_TOML, &["features.dimm=3"]).contains("unknown field `dimm`"));
}

#[test]
fn overlapping_label_lists_are_rejected() {
    let msg = err(QUICKSTART_TOML, &["target.negative=[\"1\"]"]);
    assert!(msg.contains("target.positive") && msg.contains("more than one"), "{msg}");
}

#[test]
fn a_target_path_among_the_source_paths_is_refused() {
    // The same embedded set on both sides.
    let msg = err(QUICKSTART_TOML, &["target.paths=[\"embedded:yelp_sentences\"]"]);
    assert!(msg.contains("target.paths") && msg.contains("\"embedded:yelp_sentences\" is also a path of [source]"), "{msg}");
    // The same file written two ways.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mine.csv");
    std::fs::write(&file, "label,text\n1,a\n0,b\n").unwrap();
    let (plain, dotted) = (file.display().to_string(), format!("{}/./mine.csv", dir.path().display()));
    let msg = err(QUICKSTART_TOML, &[format!("target.paths=[{plain:?}]").as_str(), format!("source.paths=[{dotted:?}]").as_str()]);
    assert!(msg.contains("is also a path of [source]"), "{msg}");
    // Another file is fine, and so is any [source] when the server is remote (its source is not the client's).
    RunConfig::from_toml_str(QUICKSTART_TOML, "q", &[format!("target.paths=[{plain:?}]")]).unwrap();
    RunConfig::from_toml_str(QUICKSTART_TOML, "q", &["target.paths=[\"embedded:yelp_sentences\"]".into(), "he.server=\"https://server.example:8443\"".into()]).unwrap();
}

#[test]
fn overrides_apply_before_validation() {
    let ov = vec!["lower.hidden=128".to_string(), "seed=7".into(), "lower.activation=tanh".into()];
    let cfg = RunConfig::from_toml_str(QUICKSTART_TOML, "q", &ov).unwrap();
    assert_eq!((cfg.lower.hidden, cfg.seed, cfg.lower.activation), (128, 7, Activation::Tanh));
    assert!(err(QUICKSTART_TOML, &["no_equals_sign"]).contains("KEY=VALUE"));
    assert!(err(QUICKSTART_TOML, &["name.inner=1"]).contains("not a table"));
}

#[test]
fn syntax_errors_and_missing_files_name_the_file() {
    assert!(err("name = ", &[]).starts_with("test.toml:"));
    let e = RunConfig::load("no/such/config.toml".as_ref(), &[]).unwrap_err().to_string();
    assert!(e.contains("no/such/config.toml") && e.contains("cannot read"), "{e}");
    let msg = err("name = \"x\"", &[]);
    assert!(msg.contains("missing field `source`"), "{msg}");
}

#[test]
fn privacy_table_is_validated() {
    let with = |extra: &str| format!("{QUICKSTART_TOML}\n[privacy]\n{extra}\n");
    assert!(RunConfig::from_toml_str(&with("noise_multiplier = 1.1"), "q", &[]).is_ok());
    let cases: &[(&str, &str, &str)] = &[
        ("max_grad_norm = 1.0", "privacy", "noise_multiplier` or `target_epsilon"),
        ("noise_multiplier = -1.0", "privacy.noise_multiplier", "> 0"),
        ("target_epsilon = 0.0", "privacy.target_epsilon", "> 0"),
        ("noise_multiplier = 1.0\ndelta = 1.0", "privacy.delta", "(0, 1)"),
        ("noise_multiplier = 1.0\nsampling_rate = 1.5", "privacy.sampling_rate", "(0, 1]"),
        ("noise_multiplier = 1.0\nmax_grad_norm = nan", "privacy.max_grad_norm", "> 0"),
        // Past these, σ·C overflows the 32-bit floats the noise is drawn in (it used to panic in training).
        ("noise_multiplier = 1.0\nmax_grad_norm = 1e300", "privacy.max_grad_norm", "[1e-6, 1e6]"),
        ("noise_multiplier = 1.0\nmax_grad_norm = 1e300", "privacy.max_grad_norm", "got 1e300"),
        ("noise_multiplier = 1e38", "privacy.noise_multiplier", "no signal"),
        ("noise_multiplier = 1.0\nsampling_rate = 0.1\naccountant = \"zcdp\"", "privacy.accountant", "full-batch"),
    ];
    for (extra, key, allowed) in cases {
        let msg = match RunConfig::from_toml_str(&with(extra), "q.toml", &[]) {
            Ok(_) => panic!("{extra}: accepted"),
            Err(e) => e.to_string(),
        };
        assert!(msg.contains(&format!("key `{key}`")) && msg.contains(allowed), "{extra}: {msg}");
    }
    let msg = RunConfig::from_toml_str(&with("noise_multiplier = 1.0\naccountant = \"moments\""), "q.toml", &[]).unwrap_err().to_string();
    assert!(msg.contains("moments") && msg.contains("pld"), "{msg}");
}

#[test]
fn encrypted_stage_settings_are_checked() {
    // A dense layer after the activation cannot run under encryption (the bootstrap's output noise drowns it).
    let msg = err(QUICKSTART_TOML, &["lower.output=16"]);
    assert!(msg.contains("lower.output") && msg.contains("he.enabled = false"), "{msg}");
    assert!(RunConfig::from_toml_str(QUICKSTART_TOML, "q", &["lower.output=16".into(), "he.enabled=false".into()]).is_ok());
    let msg = err(QUICKSTART_TOML, &["he.parameter_set=\"PARAM_MADE_UP\""]);
    assert!(msg.contains("he.parameter_set") && msg.contains("V1_8_PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128"), "{msg}");
    assert!(err(QUICKSTART_TOML, &["he.lookup_bits=11"]).contains("he.lookup_bits"));
    assert!(err(QUICKSTART_TOML, &["he.accumulator_bits=4"]).contains("he.accumulator_bits"));
    assert!(err(QUICKSTART_TOML, &["he.output_bits=10"]).contains("he.output_bits"));
    assert!(err(QUICKSTART_TOML, &["he.input_bits=0"]).contains("he.input_bits"));
    assert!(err(QUICKSTART_TOML, &["he.calibration_margin=-1"]).contains("he.calibration_margin"));
    assert!(err(QUICKSTART_TOML, &["he.keyswitch=true"]).contains("unknown field"));
}

#[test]
fn the_server_address_is_local_https_or_loopback_http() {
    use cryptotl::config::ServerLocation;
    let at = |s: &str| RunConfig::from_toml_str(QUICKSTART_TOML, "q", &[format!("he.server={s:?}")]).map(|c| c.he.server_location().unwrap());
    assert_eq!(at("local").unwrap(), ServerLocation::Local);
    assert_eq!(at("https://models.example:8443/").unwrap(), ServerLocation::Remote("https://models.example:8443".into()));
    for ok in ["http://127.0.0.1:8443", "http://localhost:1", "http://[::1]:8443"] {
        assert!(matches!(at(ok).unwrap(), ServerLocation::Remote(_)), "{ok}");
    }
    // A bearer token never crosses a network in the clear; nonsense is named.
    for (bad, says) in [("http://10.0.0.2:8443", "loopback"), ("ftp://h:1", "scheme"), ("models:8443", "neither"), ("https://", "no host")] {
        let msg = err(QUICKSTART_TOML, &[&format!("he.server={bad:?}")]);
        assert!(msg.contains("he.server") && msg.contains(says), "{bad}: {msg}");
    }
    assert!(err(QUICKSTART_TOML, &["he.batch=0"]).contains("he.batch"));
    assert!(err(QUICKSTART_TOML, &["he.batch=65"]).contains("he.batch"));
}

#[test]
fn names_and_output_dirs_that_would_write_outside_a_run_directory_are_refused() {
    for (ov, key) in [
        ("name=\"..\"", "name"),
        ("name=\".\"", "name"),
        (&*format!("name=\"{}\"", "a".repeat(101)), "name"),
        ("output_dir=\"\"", "output_dir"),
        ("output_dir=\".\"", "output_dir"),
        ("output_dir=\"../..\"", "output_dir"),
    ] {
        let msg = err(QUICKSTART_TOML, &[ov]);
        assert!(msg.contains(&format!("`{key}`")), "{ov}: {msg}");
    }
    RunConfig::from_toml_str(QUICKSTART_TOML, "q", &["output_dir=\"../elsewhere\"".into()]).unwrap();
}

#[test]
fn an_output_dir_that_is_a_file_fails_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("taken");
    std::fs::write(&file, b"mine").unwrap();
    let cfg = RunConfig::from_toml_str(QUICKSTART_TOML, "q", &[format!("output_dir={:?}", file.display().to_string())]).unwrap();
    let started = std::time::Instant::now();
    let e = cryptotl::pipeline::run(&cfg).expect_err("must refuse").to_string();
    assert!(e.contains("not a directory"), "{e}");
    assert!(started.elapsed().as_secs() < 5, "refused only after {:?}", started.elapsed());
    assert_eq!(std::fs::read(&file).unwrap(), b"mine", "the file is untouched");
    // A folder that cannot be made (under that file) is named, not the probe file inside it.
    let under = file.join("run");
    let cfg = RunConfig::from_toml_str(QUICKSTART_TOML, "q", &[format!("output_dir={:?}", under.display().to_string())]).unwrap();
    let e = cryptotl::pipeline::run(&cfg).expect_err("must refuse").to_string();
    assert!(e.starts_with(&format!("output folder {}: cannot write into this folder", under.display())) && !e.contains("write-test"), "{e}");
    // A writable folder is created, proven writable, and closed to others.
    let out = dir.path().join("run");
    let ok = RunConfig::from_toml_str(QUICKSTART_TOML, "q", &[format!("output_dir={:?}", out.display().to_string())]).unwrap();
    let lock = cryptotl::pipeline::prepare_output_dir(&ok).unwrap();
    let left: Vec<_> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, [std::ffi::OsString::from(".lock")], "no probe left behind, only the lock");
    // A second run into the same directory is refused while the first holds it, and allowed after.
    let e = cryptotl::pipeline::prepare_output_dir(&ok).unwrap_err().to_string();
    assert!(e.contains("another cryptotl run"), "{e}");
    drop(lock);
    drop(cryptotl::pipeline::prepare_output_dir(&ok).unwrap());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o700);
    }
}

#[test]
fn huge_numbers_are_range_errors_before_any_allocation() {
    let hashed = ["features.kind=\"hashed\"", "features.dim=65536"];
    let msg = err(QUICKSTART_TOML, &[hashed[0], hashed[1], "lower.hidden=65536"]);
    assert!(msg.contains("`lower.hidden`") && msg.contains("GiB"), "{msg}");
    let msg = err(QUICKSTART_TOML, &["lower.hidden=99999999999999999999999"]);
    assert!(msg.contains("out of range") && msg.contains("lower.hidden"), "{msg}");
    // u64::MAX fits 64 bits but not TOML's signed integers: the message gives the real range.
    let msg = err(QUICKSTART_TOML, &["seed=18446744073709551615"]);
    assert!(msg.contains("`seed`") && msg.contains("9223372036854775807"), "{msg}");
    let msg = err(QUICKSTART_TOML, &["head_training.epochs=4611686018427387905"]);
    assert!(msg.contains("head_training.epochs") && msg.contains("1..=1000000"), "{msg}");
    // The largest allowed schedule still has checked arithmetic: far too many steps is a privacy error, no wrap.
    let train = cryptotl::config::TrainConfig { epochs: 1_000_000, batch_size: 1, ..Default::default() };
    let p = cryptotl::config::PrivacyConfig { noise_multiplier: Some(1.0), target_epsilon: None, sampling_rate: Some(1e-9), ..cryptotl::config::PrivacyConfig::with_target_epsilon(1.0) };
    let e = cryptotl::privacy::plan::plan(&p, &train, 10).unwrap_err().to_string();
    assert!(e.contains("maximum"), "{e}");
    // The machine's free memory is known where the runs happen (Linux), so the estimate is checked against it.
    #[cfg(target_os = "linux")]
    {
        let free = cryptotl::config::available_memory().expect("MemAvailable in /proc/meminfo");
        assert!(free > 64 << 20 && free < 1 << 50, "{free} bytes");
    }
}

/// Where the model lies, where its embeddings are cached and the forward pass's batch do not change the features: a
/// user who moves them keeps the shipped network (matched by the pretraining key), the pretraining cache and the run
/// folders (matched by the features key). What does change the features still changes both keys.
#[test]
fn moving_the_model_or_the_embedding_cache_keeps_the_keys() {
    use cryptotl::pipeline::pretrain_key;
    use cryptotl::rundir::features_key;
    let load = |sets: &[&str]| RunConfig::from_toml_str(QUICKSTART_TOML, "q", &sets.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    let default = load(&[]);
    let moved = load(&["features.embedding_cache_dir=\"/elsewhere/cache\"", "features.model_dir=\"/opt/minilm\"", "features.batch_size=4"]);
    assert_eq!(pretrain_key(&default), pretrain_key(&moved));
    assert_eq!(features_key(&default), features_key(&moved));
    let other = load(&["features.max_windows=3"]);
    assert_ne!(pretrain_key(&default), pretrain_key(&other));
    assert_ne!(features_key(&default), features_key(&other));
}
