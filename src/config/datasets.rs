//! `[source]`, `[target]` and `[split]`: which files hold the data and how each is split.

use serde::{Deserialize, Serialize};

use super::Invalid;
use crate::error::Result;

/// The on-disk formats the data loaders read. See `crate::data` for each layout.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DatasetFormat {
    /// Delimited text with a label column and a text column (the normalised `label,text` files, a
    /// `review,sentiment` IMDB CSV, the raw Pang & Lee or CrowdFlower files).
    Csv,
    /// A JSON array of objects with a text field and a label field (Kotzias et al. sentences).
    Json,
    /// The Large Movie Review Dataset tree: `<root>/{train,test}/{pos,neg}/*.txt`.
    AclImdb,
    /// A folder of RFC 822 e-mails in sub-folders whose names start with `spam` or `ham` (SpamAssassin).
    EmailDir,
}

/// One dataset: a format and one or more paths of that format, concatenated.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DatasetConfig {
    /// Human-readable name for reports.
    pub name: String,
    /// The layout of the files.
    pub format: DatasetFormat,
    /// Files or folders (relative paths resolve against the working directory). `embedded:NAME` names a dataset
    /// shipped inside the binary (`imdb_sentences`, `yelp_sentences`, `amazon_sentences`).
    pub paths: Vec<String>,
    /// Text column (CSV header name, or 0-based index when `header = false`) / JSON field.
    #[serde(default = "default_text_column")]
    pub text_column: String,
    /// Label column / JSON field.
    #[serde(default = "default_label_column")]
    pub label_column: String,
    /// Whether a CSV file starts with a header row.
    #[serde(default = "super::default_true")]
    pub header: bool,
    /// Label values meaning the positive class (1).
    #[serde(default = "default_positive")]
    pub positive: Vec<String>,
    /// Label values meaning the negative class (0).
    #[serde(default = "default_negative")]
    pub negative: Vec<String>,
    /// Label values whose rows are skipped (e.g. `neutral`); any other value is an error.
    #[serde(default)]
    pub ignore: Vec<String>,
    /// Decode invalid UTF-8 lossily (U+FFFD) and report the count, instead of rejecting the file.
    #[serde(default)]
    pub lossy_utf8: bool,
    /// Use at most this many examples (a stratified, seeded subsample) — for quick runs.
    #[serde(default)]
    pub max_examples: Option<usize>,
    /// `[source]` only: pretraining sees every path equally often (the training and validation examples of the
    /// smaller paths repeated up to the largest path's count), so a large source (e.g. 23k tweets) does not drown
    /// the others. Default false: the paths pooled as they are.
    #[serde(default)]
    pub balance_paths: bool,
    /// `[source]` only: pretraining gives each path its own output (multi-task: one frozen network, several source
    /// tasks; each example's loss is on its own path's output) instead of one output shared by all. Default false.
    /// Left out of the serialised config when false, so the pretraining keys of configs without it stay as they were.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub output_per_path: bool,
}

impl DatasetConfig {
    /// A dataset of `format` at `paths` with every other key at its default (`label`/`text` columns, header,
    /// labels `1`/`0`, strict UTF-8).
    pub fn new(name: &str, format: DatasetFormat, paths: &[&str]) -> Self {
        Self {
            name: name.into(),
            format,
            paths: paths.iter().map(|p| p.to_string()).collect(),
            text_column: default_text_column(),
            label_column: default_label_column(),
            header: true,
            positive: default_positive(),
            negative: default_negative(),
            ignore: vec![],
            lossy_utf8: false,
            max_examples: None,
            balance_paths: false,
            output_per_path: false,
        }
    }
}

fn default_text_column() -> String {
    "text".into()
}
fn default_label_column() -> String {
    "label".into()
}
fn default_positive() -> Vec<String> {
    vec!["1".into()]
}
fn default_negative() -> Vec<String> {
    vec!["0".into()]
}

/// Split fractions; train gets the rest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SplitConfig {
    /// Fraction of each class held out for validation (early stopping).
    pub validation: f64,
    /// Fraction of each class held out for the final test.
    pub test: f64,
    /// Examples whose text occurs more than once: `together` (default) keeps every copy in one part (the
    /// earliest of train, validation, test that holds one), so no test score rests on a text seen in training;
    /// `allow` leaves the copies where the shuffle put them.
    pub duplicates: Duplicates,
}

/// What a split does with texts that occur more than once in a dataset.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Duplicates {
    /// Every copy of a text goes to one part: training if any copy was drawn for it, else validation.
    #[default]
    Together,
    /// Copies stay where the stratified shuffle put them.
    Allow,
}
impl Default for SplitConfig {
    fn default() -> Self {
        Self { validation: 0.15, test: 0.2, duplicates: Duplicates::default() }
    }
}

impl SplitConfig {
    /// Each fraction is in (0, 1) and together they leave at least 10% for training.
    pub(super) fn check(&self, at: Invalid) -> Result<()> {
        for (k, v) in [("split.validation", self.validation), ("split.test", self.test)] {
            if !(v.is_finite() && v > 0.0 && v < 1.0) {
                return Err(at.key(k, format!("must be a fraction in (0, 1), got {}", super::shown_number(v))));
            }
        }
        if self.validation + self.test >= 0.9 {
            return Err(at.key("split", format!(
                "validation + test = {} leaves less than 10% for training; lower them", self.validation + self.test)));
        }
        Ok(())
    }
}

impl DatasetConfig {
    /// What serde cannot check: paths, label lists, column indices, sizes. `key` is the table (`source`/`target`).
    pub(super) fn check(&self, key: &str, at: Invalid) -> Result<()> {
        let ds = self;
        let err = |k: &str, m: String| at.key(k, m);
        if ds.paths.is_empty() {
            return Err(err(&format!("{key}.paths"), "must list at least one file or folder".into()));
        }
        if ds.format == DatasetFormat::Csv || ds.format == DatasetFormat::Json {
            if ds.positive.is_empty() || ds.negative.is_empty() {
                return Err(err(&format!("{key}.positive"), "both `positive` and `negative` label lists must be non-empty".into()));
            }
            if let Some(v) = ds.positive.iter().find(|v| ds.negative.contains(v) || ds.ignore.contains(v)) {
                return Err(err(&format!("{key}.positive"), format!("label {v:?} is listed in more than one of positive/negative/ignore")));
            }
            if let Some(v) = ds.negative.iter().find(|v| ds.ignore.contains(v)) {
                return Err(err(&format!("{key}.negative"), format!("label {v:?} is listed in both negative and ignore")));
            }
        }
        if ds.format == DatasetFormat::Csv && !ds.header {
            for (k, c) in [("text_column", &ds.text_column), ("label_column", &ds.label_column)] {
                if c.parse::<usize>().is_err() {
                    return Err(err(&format!("{key}.{k}"), format!("with header = false it must be a 0-based column index, got {c:?}")));
                }
            }
        }
        if ds.max_examples.is_some_and(|m| m < 2) {
            return Err(err(&format!("{key}.max_examples"), "must be at least 2, one per class (omit it to use everything)".into()));
        }
        Ok(())
    }
}
