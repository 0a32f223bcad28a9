//! Loaders on good and malformed fixtures, and split determinism.

use cryptotl::config::{DatasetConfig, DatasetFormat, Duplicates, SplitConfig};
use cryptotl::data::{self, Dataset};

const FX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn fx(name: &str) -> String {
    format!("{FX}/{name}")
}

fn csv(name: &str) -> DatasetConfig {
    DatasetConfig::new(name, DatasetFormat::Csv, &[&fx(name)])
}

fn err_of(cfg: &DatasetConfig) -> String {
    match data::load(cfg, 0) {
        Ok(ds) => panic!("expected an error, loaded {} rows", ds.len()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn normalised_csv_loads_with_quotes_and_newlines() {
    let ds = data::load(&csv("good.csv"), 0).unwrap();
    assert_eq!(ds.labels, vec![1, 0, 1, 0]);
    assert_eq!(ds.texts[0], "A fine, fine film");
    assert_eq!(ds.texts[3], "multi\nline text");
}

#[test]
fn review_sentiment_csv_layout() {
    let mut cfg = csv("review_sentiment.csv");
    cfg.text_column = "review".into();
    cfg.label_column = "sentiment".into();
    cfg.positive = vec!["positive".into()];
    cfg.negative = vec!["negative".into()];
    let ds = data::load(&cfg, 0).unwrap();
    assert_eq!(ds.labels, vec![1, 0, 1]);
    assert_eq!(ds.class_counts(), [1, 2]);
}

#[test]
fn headerless_csv_with_bom_and_custom_labels() {
    let mut cfg = csv("pang_lee_raw.csv");
    cfg.header = false;
    cfg.label_column = "0".into();
    cfg.text_column = "1".into();
    cfg.negative = vec!["-1".into()];
    let ds = data::load(&cfg, 0).unwrap();
    assert_eq!(ds.labels, vec![1, 0, 1]);
    assert_eq!(ds.texts[1], "a tedious mess");
}

#[test]
fn ignored_labels_are_skipped_and_counted() {
    let mut cfg = csv("with_neutral.csv");
    cfg.label_column = "sentiment".into();
    cfg.positive = vec!["positive".into()];
    cfg.negative = vec!["negative".into()];
    cfg.ignore = vec!["neutral".into()];
    let ds = data::load(&cfg, 0).unwrap();
    assert_eq!((ds.len(), ds.ignored_rows), (2, 1));
}

#[test]
fn missing_file_is_a_clear_error() {
    let msg = err_of(&csv("does_not_exist.csv"));
    assert!(msg.contains("does_not_exist.csv") && msg.contains("cannot read"), "{msg}");
    // A relative path says where it was looked for: the default config's `datasets/...` paths are read from the
    // current directory, and "run fetch.py" alone would mislead a user who started the binary elsewhere.
    let mut cfg = csv("does_not_exist.csv");
    cfg.paths = vec!["datasets/data/not_fetched.csv".into()];
    let msg = err_of(&cfg);
    let looked = std::env::current_dir().unwrap().join("datasets/data/not_fetched.csv");
    assert!(msg.contains(&format!("looked in {}", looked.display())) && msg.contains("fetch.py"), "{msg}");
}

/// A dataset is read into memory whole, so its size is bounded: a regular file past the bound is refused before a
/// byte is read (a sparse file here), and a device that never ends (`/dev/zero` filled memory until the run was
/// killed) stops at the bound.
#[test]
fn a_dataset_file_past_the_size_bound_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.csv");
    std::fs::File::create(&big).unwrap().set_len(data::MAX_FILE_BYTES + 1).unwrap();
    let cfg = DatasetConfig::new("big", DatasetFormat::Csv, &[big.to_str().unwrap()]);
    let msg = err_of(&cfg);
    assert!(msg.contains("big.csv") && msg.contains("more than the 1073741824"), "{msg}");
    let err = data::read_bounded(std::io::repeat(b'a'), std::path::Path::new("/dev/zero"), 4096).unwrap_err().to_string();
    assert!(err.contains("more than 4096 bytes"), "{err}");
}

#[test]
fn missing_column_names_the_column_and_what_exists() {
    let msg = err_of(&csv("missing_column.csv"));
    assert!(msg.contains("no column \"text\"") && msg.contains("body"), "{msg}");
}

#[test]
fn unknown_label_names_the_row_and_allowed_values() {
    let msg = err_of(&csv("unknown_label.csv"));
    assert!(msg.contains("row 4") && msg.contains("\"maybe\"") && msg.contains("allowed"), "{msg}");
    // It lists what the column holds, so the labels can be mapped in one go.
    assert!(msg.contains("holds \"0\" (1), \"1\" (1), \"maybe\" (1)") && msg.contains("`positive`, `negative` and `ignore`"), "{msg}");
    // A file written with words for labels: the most frequent first.
    let mut cfg = csv("review_sentiment.csv");
    cfg.text_column = "review".into();
    cfg.label_column = "sentiment".into();
    let msg = err_of(&cfg);
    assert!(msg.contains("row 2") && msg.contains("holds \"positive\" (2), \"negative\" (1):"), "{msg}");
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("labels.json");
    std::fs::write(&json, r#"[{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}, {"text": "c", "label": true}]"#).unwrap();
    let msg = err_of(&DatasetConfig::new("j", DatasetFormat::Json, &[json.to_str().unwrap()]));
    assert!(msg.contains("element 0") && msg.contains("holds \"neg\" (1), \"pos\" (1), \"true\" (1)"), "{msg}");
}

#[test]
fn empty_text_is_rejected_with_its_row() {
    let msg = err_of(&csv("empty_text.csv"));
    assert!(msg.contains("row 3") && msg.contains("empty text"), "{msg}");
}

#[test]
fn ragged_rows_are_rejected() {
    let msg = err_of(&csv("ragged.csv"));
    assert!(msg.contains("row"), "{msg}");
}

#[test]
fn invalid_utf8_is_rejected_unless_lossy_then_counted() {
    let msg = err_of(&csv("invalid_utf8.csv"));
    assert!(msg.contains("invalid UTF-8") && msg.contains("line 2") && msg.contains("lossy_utf8"), "{msg}");
    let mut cfg = csv("invalid_utf8.csv");
    cfg.lossy_utf8 = true;
    let ds = data::load(&cfg, 0).unwrap();
    assert_eq!(ds.len(), 3);
    assert_eq!(ds.lossy_replacements, 3);
    assert!(ds.texts[0].starts_with("caf\u{FFFD}"));
}

#[test]
fn kotzias_json_drops_only_the_trailing_marker() {
    let mut cfg = DatasetConfig::new("k", DatasetFormat::Json, &[&fx("kotzias.json")]);
    cfg.label_column = "class".into();
    let ds = data::load(&cfg, 0).unwrap();
    assert_eq!(ds.labels, vec![1, 0, 1]);
    assert_eq!(ds.texts[0], "Great phone.");
}

#[test]
fn malformed_json_is_rejected() {
    let mut cfg = DatasetConfig::new("k", DatasetFormat::Json, &[&fx("bad_field.json")]);
    cfg.label_column = "class".into();
    let msg = err_of(&cfg);
    assert!(msg.contains("element 1") && msg.contains("\"text\""), "{msg}");
    let cfg = DatasetConfig::new("k", DatasetFormat::Json, &[&fx("not_json.json")]);
    assert!(err_of(&cfg).contains("not a JSON array"));
}

#[test]
fn acl_imdb_tree_loads_train_and_test_without_unsup() {
    let ds = data::load(&DatasetConfig::new("acl", DatasetFormat::AclImdb, &[&fx("aclImdb")]), 0).unwrap();
    assert_eq!(ds.len(), 8);
    assert_eq!(ds.class_counts(), [4, 4]);
    assert!(ds.texts.iter().all(|t| !t.contains("<br />") && t != "unlabelled"));
    let msg = err_of(&DatasetConfig::new("acl", DatasetFormat::AclImdb, &[&fx("emails")]));
    assert!(msg.contains("no reviews"), "{msg}");
}

#[test]
fn email_folders_strip_headers_and_skip_json() {
    let ds = data::load(&DatasetConfig::new("mail", DatasetFormat::EmailDir, &[&fx("emails")]), 0).unwrap();
    assert_eq!(ds.len(), 3);
    assert_eq!(ds.class_counts(), [2, 1]);
    assert!(ds.texts.contains(&"You have won a prize!".to_string()), "{:?}", ds.texts);
    assert!(ds.texts.contains(&"Lunch at noon?".to_string()), "{:?}", ds.texts);
}

#[test]
fn embedded_datasets_and_unknown_embedded_name() {
    let ds = data::load(&DatasetConfig::new("y", DatasetFormat::Csv, &["embedded:yelp_sentences"]), 0).unwrap();
    assert_eq!(ds.class_counts(), [500, 500]);
    let msg = err_of(&DatasetConfig::new("y", DatasetFormat::Csv, &["embedded:nope"]));
    assert!(msg.contains("imdb_sentences"), "{msg}");
}

#[test]
fn one_class_only_is_rejected() {
    let mut cfg = csv("good.csv");
    cfg.negative = vec!["x".into()];
    cfg.ignore = vec!["0".into()];
    assert!(err_of(&cfg).contains("both classes"));
}

#[test]
fn max_examples_subsamples_stratified_and_deterministically() {
    let mut cfg = DatasetConfig::new("i", DatasetFormat::Csv, &["embedded:imdb_sentences"]);
    cfg.max_examples = Some(100);
    let a = data::load(&cfg, 3).unwrap();
    let b = data::load(&cfg, 3).unwrap();
    let c = data::load(&cfg, 4).unwrap();
    assert_eq!(a.len(), 100);
    assert_eq!(a.class_counts(), [50, 50]);
    assert_eq!(a, b);
    assert_ne!(a.texts, c.texts);
}

fn imdb() -> Dataset {
    data::load(&DatasetConfig::new("i", DatasetFormat::Csv, &["embedded:imdb_sentences"]), 0).unwrap()
}

#[test]
fn split_is_deterministic_stratified_and_disjoint() {
    let ds = imdb();
    let cfg = SplitConfig { validation: 0.15, test: 0.2, ..Default::default() };
    let a = data::stratified_split(&ds, &cfg, 11).unwrap();
    let b = data::stratified_split(&ds, &cfg, 11).unwrap();
    let c = data::stratified_split(&ds, &cfg, 12).unwrap();
    assert_eq!(a, b, "same seed, same split");
    assert_ne!(a.test.texts, c.test.texts, "another seed, another split");
    assert_eq!(a.test.class_counts(), [100, 100]);
    assert_eq!(a.validation.class_counts(), [75, 75]);
    assert_eq!(a.train.len() + a.validation.len() + a.test.len(), ds.len());
    let mut all: Vec<&String> = a.train.texts.iter().chain(&a.validation.texts).chain(&a.test.texts).collect();
    all.sort();
    let mut orig: Vec<&String> = ds.texts.iter().collect();
    orig.sort();
    assert_eq!(all, orig, "every example lands in exactly one part");
}

#[test]
fn split_of_a_tiny_class_is_an_error() {
    let ds = data::load(&csv("good.csv"), 0).unwrap();
    let e = data::stratified_split(&ds, &SplitConfig { validation: 0.15, test: 0.2, ..Default::default() }, 0).unwrap_err();
    assert!(e.to_string().contains("too few"), "{e}");
}

#[test]
fn each_path_is_split_on_its_own_and_keeps_its_share() {
    // The shuffle itself (the sentences hold a few repeated texts, which `together` would move).
    let cfg = SplitConfig { validation: 0.15, test: 0.2, duplicates: Duplicates::Allow };
    let two = DatasetConfig::new("two", DatasetFormat::Csv, &["embedded:yelp_sentences", "embedded:amazon_sentences"]);
    let both = data::load(&two, 0).unwrap();
    assert_eq!(both.origins.len(), 2000);
    assert_eq!(both.by_origin().iter().map(|(p, g)| (p.as_str(), g.len())).collect::<Vec<_>>(),
        [("embedded:yelp_sentences", 1000), ("embedded:amazon_sentences", 1000)]);
    let split = data::stratified_split(&both, &cfg, 7).unwrap();
    // Every path gives every part its share of each class.
    for part in [&split.train, &split.validation, &split.test] {
        let groups = part.by_origin();
        assert_eq!(groups[0].1.len(), groups[1].1.len());
    }
    assert_eq!(split.test.len(), 400);
    // A path's parts do not depend on the other paths: yelp alone splits exactly as yelp among two.
    let yelp = data::load(&DatasetConfig::new("y", DatasetFormat::Csv, &["embedded:yelp_sentences"]), 0).unwrap();
    let alone = data::stratified_split(&yelp, &cfg, 7).unwrap();
    let (_, in_two) = &split.test.by_origin()[0];
    assert_eq!(in_two.iter().map(|&i| split.test.texts[i].clone()).collect::<Vec<_>>(), alone.test.texts);
    // A dataset built by hand (no origins) is one group.
    let hand = Dataset { name: "h".into(), texts: vec!["a".into(), "b".into()], labels: vec![0, 1], ..Default::default() };
    assert_eq!(hand.by_origin(), [("h".to_string(), vec![0, 1])]);
}

#[test]
fn an_unterminated_quote_is_an_error_naming_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut body = String::from("label,text\n");
    for i in 0..50 {
        if i == 1 {
            body.push_str("1,\"this quote never closes\n");
        } else {
            body.push_str(&format!("{},row {i}\n", i % 2));
        }
    }
    let path = dir.path().join("open_quote.csv");
    std::fs::write(&path, &body).unwrap();
    let cfg = DatasetConfig::new("q", DatasetFormat::Csv, &[path.to_str().unwrap()]);
    let e = err_of(&cfg);
    assert!(e.contains("never closed") && e.contains("line 3"), "{e}");
    // Closed multi-line quotes and a stray quote inside an unquoted field are fine.
    std::fs::write(&path, "label,text\n1,\"two\nlines\"\n0,a 5\" screen\"\"\n1,ok\n0,fine\n").unwrap();
    assert_eq!(data::load(&cfg, 0).unwrap().len(), 4);
}

#[test]
fn test_texts_that_also_occur_in_training_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dups.csv");
    // 40 distinct texts and one text repeated 20 times (as the SMS collection repeats its spam).
    let mut body = String::from("label,text\n");
    for i in 0..40 {
        body.push_str(&format!("{},text {i}\n", i % 2));
    }
    for _ in 0..20 {
        body.push_str("1,win a prize now\n");
    }
    std::fs::write(&path, body).unwrap();
    let ds = data::load(&DatasetConfig::new("d", DatasetFormat::Csv, &[path.to_str().unwrap()]), 0).unwrap();
    let allow = SplitConfig { validation: 0.15, test: 0.2, duplicates: Duplicates::Allow };
    let split = data::stratified_split(&ds, &allow, 3).unwrap();
    let want = split.test.texts.iter().filter(|t| t.as_str() == "win a prize now").count();
    assert!(want > 0);
    assert_eq!(split.test_texts_in_train(), want);
    assert_eq!(split.summary(&ds).test_texts_in_train, want);
    assert_eq!(split.duplicates_moved, 0);
    let clean = data::stratified_split(&imdb(), &allow, 3).unwrap();
    assert!(clean.test_texts_in_train() <= 3, "the IMDb sentences hold 3 duplicates");

    // The default keeps every copy in one part: all 20 in training, none in validation or test.
    let together = data::stratified_split(&ds, &SplitConfig::default(), 3).unwrap();
    assert_eq!(together.test_texts_in_train(), 0);
    assert_eq!(together.train.texts.iter().filter(|t| t.as_str() == "win a prize now").count(), 20);
    assert!(!together.validation.texts.iter().any(|t| t == "win a prize now"));
    assert_eq!(together.duplicates_moved, 20 - split.train.texts.iter().filter(|t| t.as_str() == "win a prize now").count());
    assert_eq!(together.train.len() + together.validation.len() + together.test.len(), ds.len(), "nothing lost");
    // Without repeated texts the split is exactly the shuffled one.
    let distinct = ds.select(&(0..40).collect::<Vec<_>>());
    assert_eq!(data::stratified_split(&distinct, &SplitConfig::default(), 3).unwrap(), data::stratified_split(&distinct, &allow, 3).unwrap());
}

/// `TextLines` as an iterator: each line, then the error that ends the input, then nothing (a caller that goes on
/// reading after a bad line must not get the lines behind it, numbered wrongly). `open` reads a file, and names a
/// missing one with where it was looked for.
#[test]
fn text_lines_stop_at_their_first_error_and_open_files() {
    use cryptotl::data::TextLines;
    let mut lines = TextLines::new(&b"one\nbad \xff\nthree\n"[..], std::path::Path::new("<stdin>"));
    assert_eq!(lines.next().unwrap().unwrap(), "one");
    let err = lines.next().unwrap().unwrap_err().to_string();
    assert!(err.contains("line 2 is not valid UTF-8"), "{err}");
    assert!(lines.next().is_none(), "the input ended at its error");
    assert!(lines.next_available(10).unwrap().is_empty());

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("texts.txt");
    std::fs::write(&path, "a fine film\r\n\nnot good").unwrap();
    let read: Vec<String> = TextLines::open(Some(&path)).unwrap().collect::<cryptotl::Result<_>>().unwrap();
    assert_eq!(read, ["a fine film", "", "not good"]);
    let missing = dir.path().join("none.txt");
    let err = TextLines::open(Some(&missing)).err().expect("no such file").to_string();
    assert!(err.starts_with("dataset ") && err.contains("none.txt: cannot read: "), "{err}");
    assert!(TextLines::open(Some(&missing)).err().unwrap().is_input_error(), "bad input, exit 2");
}
