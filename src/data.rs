//! Labelled text datasets: loaders for every on-disk layout the project meets, and seeded stratified splits.
//!
//! Every loader rejects bad input with an [`Error::Data`] naming the file and, where it applies, the row:
//! a missing file, missing columns, an unknown label, an empty text, invalid UTF-8 (unless the dataset is declared
//! `lossy_utf8`, in which case bad bytes become U+FFFD and the count is reported in [`Dataset::lossy_replacements`]).
//!
//! ```
//! use cryptotl::config::{DatasetConfig, DatasetFormat};
//! let cfg = DatasetConfig::new("imdb sentences", DatasetFormat::Csv, &["embedded:imdb_sentences"]);
//! let ds = cryptotl::data::load(&cfg, 0).unwrap();
//! assert_eq!(ds.len(), 1000);
//! assert_eq!(ds.class_counts(), [500, 500]);
//! ```

use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::config::{DatasetConfig, DatasetFormat, Duplicates, SplitConfig};
use crate::error::{Error, Result};

/// Datasets shipped inside the binary (CC BY 4.0, Kotzias et al. 2015; see `datasets/README.md`).
pub const EMBEDDED: &[(&str, &str)] = &[
    ("imdb_sentences", include_str!("../datasets/shipped/imdb_sentences.csv")),
    ("yelp_sentences", include_str!("../datasets/shipped/yelp_sentences.csv")),
    ("amazon_sentences", include_str!("../datasets/shipped/amazon_sentences.csv")),
];

/// Binary-labelled texts (label 1 = positive class: positive sentiment, spam).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Dataset {
    /// Name for reports.
    pub name: String,
    /// The texts, never empty.
    pub texts: Vec<String>,
    /// One label per text, 0 or 1.
    pub labels: Vec<u8>,
    /// Invalid UTF-8 sequences replaced by U+FFFD while loading (only for `lossy_utf8` datasets).
    pub lossy_replacements: usize,
    /// Rows skipped because their label is in the `ignore` list.
    pub ignored_rows: usize,
    /// Which of the config's paths each example came from (an index into `origin_names`); empty for a dataset
    /// built by hand. Lets the report give accuracy per source task.
    pub origins: Vec<u16>,
    /// The config's paths, in order.
    pub origin_names: Vec<String>,
}

impl Dataset {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.texts.len()
    }
    /// True when there are no examples.
    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }
    /// `[negatives, positives]`.
    pub fn class_counts(&self) -> [usize; 2] {
        let pos = self.labels.iter().filter(|&&l| l == 1).count();
        [self.labels.len() - pos, pos]
    }
    /// The examples at `idx`, in that order.
    pub fn select(&self, idx: &[usize]) -> Dataset {
        Dataset {
            name: self.name.clone(),
            texts: idx.iter().map(|&i| self.texts[i].clone()).collect(),
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
            lossy_replacements: 0,
            ignored_rows: 0,
            origins: if self.origins.len() == self.texts.len() { idx.iter().map(|&i| self.origins[i]).collect() } else { vec![] },
            origin_names: self.origin_names.clone(),
        }
    }
    /// The indices of the examples that came from each of the config's paths: `(path, indices)` per path.
    /// One group holding everything when the origins are unknown.
    pub fn by_origin(&self) -> Vec<(String, Vec<usize>)> {
        if self.origins.len() != self.texts.len() || self.origin_names.is_empty() {
            return vec![(self.name.clone(), (0..self.len()).collect())];
        }
        self.origin_names
            .iter()
            .enumerate()
            .map(|(o, name)| (name.clone(), (0..self.len()).filter(|&i| self.origins[i] as usize == o).collect()))
            .collect()
    }
    fn push(&mut self, text: String, label: u8) {
        self.texts.push(text);
        self.labels.push(label);
    }
}

/// Sizes of a dataset for the report.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct DatasetSummary {
    /// Name of the dataset.
    pub name: String,
    /// Examples per split: train, validation, test.
    pub train: usize,
    /// Validation examples.
    pub validation: usize,
    /// Test examples.
    pub test: usize,
    /// Positive examples overall.
    pub positives: usize,
    /// Invalid UTF-8 sequences replaced while loading.
    pub lossy_replacements: usize,
    /// Rows skipped for an ignored label.
    pub ignored_rows: usize,
    /// Test examples whose text (trimmed, exact) also occurs in the training part: a test score on them measures
    /// memory, not generalisation. 0 unless `[split] duplicates = "allow"`.
    #[serde(default)]
    pub test_texts_in_train: usize,
    /// Examples moved to join a copy of their text in an earlier part (`[split] duplicates = "together"`).
    #[serde(default)]
    pub duplicates_moved: usize,
}

/// Train, validation and test parts of one dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    /// Training part.
    pub train: Dataset,
    /// Validation part (early stopping).
    pub validation: Dataset,
    /// Test part (final metrics only).
    pub test: Dataset,
    /// Examples moved out of the part the shuffle drew them for, to join a copy of their text in an earlier part
    /// (`[split] duplicates = "together"`).
    pub duplicates_moved: usize,
}

impl Split {
    /// Sizes for the report.
    pub fn summary(&self, full: &Dataset) -> DatasetSummary {
        DatasetSummary {
            name: full.name.clone(),
            train: self.train.len(),
            validation: self.validation.len(),
            test: self.test.len(),
            positives: full.class_counts()[1],
            lossy_replacements: full.lossy_replacements,
            ignored_rows: full.ignored_rows,
            test_texts_in_train: self.test_texts_in_train(),
            duplicates_moved: self.duplicates_moved,
        }
    }

    /// Test examples whose text also occurs in the training part.
    pub fn test_texts_in_train(&self) -> usize {
        let train: std::collections::HashSet<&str> = self.train.texts.iter().map(|t| t.as_str()).collect();
        self.test.texts.iter().filter(|t| train.contains(t.as_str())).count()
    }
}

/// Unlabelled texts, one per line, as [`str::lines`] splits them (`\n` or `\r\n`; a final newline ends the last line
/// and adds none). `source` names where the bytes came from in errors. A line that is not UTF-8 is an
/// [`Error::Data`] naming its line, column and byte, not a failure of the whole stream with no place.
///
/// ```
/// use std::path::Path;
/// let texts = cryptotl::data::text_lines(b"a fine film\r\n\nnot good\n", Path::new("<stdin>")).unwrap();
/// assert_eq!(texts, ["a fine film", "", "not good"]);
/// let e = cryptotl::data::text_lines(b"fine\nbad \xff byte\n", Path::new("<stdin>")).unwrap_err();
/// assert_eq!(e.to_string(), "dataset <stdin>: line 2 is not valid UTF-8 (byte 0xff at column 5); texts must be UTF-8");
/// ```
pub fn text_lines(bytes: &[u8], source: &Path) -> Result<Vec<String>> {
    TextLines::new(bytes, source).next_batch(usize::MAX)
}

/// Texts one per line from a reader, split as [`text_lines`] splits them, a batch at a time: what `predict` and
/// `embed` read from a pipe, answering each batch before the next is read. A line is at most [`MAX_FILE_BYTES`] long.
/// As an iterator it yields each line, or the error that ends the input (then nothing more).
///
/// ```
/// use std::path::Path;
/// let mut lines = cryptotl::data::TextLines::new(&b"one\r\ntwo\n\nfour"[..], Path::new("<stdin>"));
/// assert_eq!(lines.next_batch(3).unwrap(), ["one", "two", ""]);
/// assert_eq!(lines.next_batch(3).unwrap(), ["four"]);
/// assert!(lines.next_batch(3).unwrap().is_empty());
/// ```
pub struct TextLines<R> {
    reader: std::io::BufReader<R>,
    source: PathBuf,
    /// Lines read so far (for the line number in errors).
    read: usize,
    /// An error ended the input: the iterator yields nothing more.
    failed: bool,
}

/// How much of a pipe [`TextLines::next_available`] may hold at once: a batch of long texts from a file fits.
const TEXT_LINES_BUFFER: usize = 1 << 20;

impl TextLines<Box<dyn std::io::Read>> {
    /// The lines of the file `input`, or of standard input (named `<stdin>` in errors) when there is none. A file
    /// that cannot be opened is an [`Error::Data`] saying why (and, for a relative path that is not there, where it
    /// was looked for).
    ///
    /// ```
    /// use std::path::Path;
    /// let e = cryptotl::data::TextLines::open(Some(Path::new("no/such/texts.txt"))).err().unwrap();
    /// assert!(e.to_string().starts_with("dataset no/such/texts.txt: cannot read: "), "{e}");
    /// assert!(e.to_string().contains("relative paths are read from the current directory"), "{e}");
    /// ```
    pub fn open(input: Option<&Path>) -> Result<Self> {
        Ok(match input {
            Some(p) => Self::new(Box::new(open_file(p, |e| not_found_hint(p, e))?), p),
            None => Self::new(Box::new(std::io::stdin()), Path::new("<stdin>")),
        })
    }
}

impl<R: std::io::Read> TextLines<R> {
    /// Lines of `reader`, named `source` in errors.
    pub fn new(reader: R, source: &Path) -> Self {
        Self { reader: std::io::BufReader::with_capacity(TEXT_LINES_BUFFER, reader), source: source.to_path_buf(), read: 0, failed: false }
    }

    /// The next `n` lines, fewer at the end of the input, none once it is over. Blocks until it has them.
    pub fn next_batch(&mut self, n: usize) -> Result<Vec<String>> {
        self.by_ref().take(n).collect()
    }

    /// The next line (waiting for it), then up to `n - 1` more of those already received whole: a pipe that
    /// sends a few texts and waits gets them answered, not held until `n` have come. None once the input is over.
    ///
    /// ```
    /// use std::path::Path;
    /// let mut lines = cryptotl::data::TextLines::new(&b"one\ntwo\nthree\n"[..], Path::new("<stdin>"));
    /// assert_eq!(lines.next_available(2).unwrap(), ["one", "two"]);
    /// assert_eq!(lines.next_available(2).unwrap(), ["three"]);
    /// assert!(lines.next_available(2).unwrap().is_empty());
    /// ```
    pub fn next_available(&mut self, n: usize) -> Result<Vec<String>> {
        let mut out = Vec::new();
        while out.len() < n && (out.is_empty() || self.reader.buffer().contains(&b'\n')) {
            match self.next() {
                Some(line) => out.push(line?),
                None => break,
            }
        }
        Ok(out)
    }

    fn next_line(&mut self) -> Result<Option<String>> {
        use std::io::{BufRead as _, Read as _};
        let mut buf = Vec::new();
        let got = (&mut self.reader)
            .take(MAX_FILE_BYTES + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|e| Error::data(&self.source, format!("cannot read: {e}")))?;
        if got == 0 {
            return Ok(None);
        }
        self.read += 1;
        let line = match buf.strip_suffix(b"\n") {
            // `\r` belongs to the line ending only before a `\n`.
            Some(l) => l.strip_suffix(b"\r").unwrap_or(l),
            None if got as u64 > MAX_FILE_BYTES => {
                return Err(Error::data(&self.source, format!("line {} is longer than {MAX_FILE_BYTES} bytes", self.read)));
            }
            None => &buf[..],
        };
        let text = std::str::from_utf8(line).map_err(|e| {
            let at = e.valid_up_to();
            Error::data(&self.source, format!("line {} is not valid UTF-8 (byte {:#04x} at column {}); texts must be UTF-8", self.read, line[at], at + 1))
        })?;
        Ok(Some(text.to_string()))
    }
}

impl<R: std::io::Read> Iterator for TextLines<R> {
    type Item = Result<String>;

    fn next(&mut self) -> Option<Result<String>> {
        if self.failed {
            return None;
        }
        let line = self.next_line().transpose();
        self.failed = matches!(line, Some(Err(_)));
        line
    }
}

/// Load every path of a dataset config and concatenate them; subsample to `max_examples` (stratified, `seed`).
pub fn load(cfg: &DatasetConfig, seed: u64) -> Result<Dataset> {
    let mut ds = Dataset { name: cfg.name.clone(), origin_names: cfg.paths.clone(), ..Default::default() };
    for (o, p) in cfg.paths.iter().enumerate() {
        match cfg.format {
            DatasetFormat::Csv => load_csv(cfg, p, &mut ds)?,
            DatasetFormat::Json => load_json(cfg, p, &mut ds)?,
            DatasetFormat::AclImdb => load_acl_imdb(cfg, Path::new(p), &mut ds)?,
            DatasetFormat::EmailDir => load_email_dir(cfg, Path::new(p), &mut ds)?,
        }
        ds.origins.resize(ds.len(), u16::try_from(o).map_err(|_| Error::data(p.clone(), "more than 65,535 paths in one dataset"))?);
    }
    let [neg, pos] = ds.class_counts();
    if neg == 0 || pos == 0 {
        return Err(Error::data(
            cfg.paths.join(", "),
            format!("needs examples of both classes, found {neg} negative and {pos} positive"),
        ));
    }
    if let Some(max) = cfg.max_examples
        && max < ds.len()
    {
        if max < 2 {
            return Err(Error::data(cfg.paths.join(", "), "max_examples must be at least 2 (one per class)"));
        }
        let n_pos = ((pos as f64 * max as f64 / ds.len() as f64).round() as usize).clamp(1, max - 1);
        let [neg_idx, pos_idx] = class_indices(ds.labels.iter().copied(), seed);
        let mut keep: Vec<usize> = neg_idx.into_iter().take(max - n_pos).chain(pos_idx.into_iter().take(n_pos)).collect();
        keep.sort_unstable();
        let (lossy, ignored) = (ds.lossy_replacements, ds.ignored_rows);
        ds = ds.select(&keep); // keeps origins
        ds.lossy_replacements = lossy;
        ds.ignored_rows = ignored;
    }
    Ok(ds)
}

/// Positions of each class among `labels`, shuffled by `seed`.
fn class_indices(labels: impl Iterator<Item = u8>, seed: u64) -> [Vec<usize>; 2] {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut by_class: [Vec<usize>; 2] = [vec![], vec![]];
    for (i, l) in labels.enumerate() {
        by_class[l as usize].push(i);
    }
    for v in &mut by_class {
        v.shuffle(&mut rng);
    }
    by_class
}

/// Deterministic stratified split: each class of each source path (see [`Dataset::origins`]) is shuffled with
/// `seed` and cut into test, validation and train parts of the configured fractions (rounded), so every part keeps
/// the class ratio and each path its share, and a path's split does not depend on the other paths of the dataset.
/// Each part keeps file order.
///
/// Fails when a class of a path is too small to give every part at least one example.
pub fn stratified_split(ds: &Dataset, cfg: &SplitConfig, seed: u64) -> Result<Split> {
    let mut parts: [Vec<usize>; 3] = [vec![], vec![], vec![]];
    for (origin, members) in ds.by_origin() {
        for (c, idx) in class_indices(members.iter().map(|&i| ds.labels[i]), seed).into_iter().enumerate() {
            let n = idx.len();
            if n == 0 {
                continue; // a path may hold one class only (e.g. a folder of spam); the dataset has both (checked on load)
            }
            let n_test = ((n as f64) * cfg.test).round() as usize;
            let n_val = ((n as f64) * cfg.validation).round() as usize;
            if n_test == 0 || n_val == 0 || n_test + n_val >= n {
                let name = if origin == ds.name { ds.name.clone() } else { format!("{} ({origin})", ds.name) };
                return Err(Error::data(name, format!("class {c} has {n} examples: too few to split into train/validation/test")));
            }
            let global = |v: &[usize]| v.iter().map(|&i| members[i]).collect::<Vec<_>>();
            parts[2].extend(global(&idx[..n_test]));
            parts[1].extend(global(&idx[n_test..n_test + n_val]));
            parts[0].extend(global(&idx[n_test + n_val..]));
        }
    }
    let duplicates_moved = match cfg.duplicates {
        Duplicates::Together => keep_duplicates_together(ds, &mut parts),
        Duplicates::Allow => 0,
    };
    for p in &mut parts {
        p.sort_unstable();
    }
    Ok(Split { train: ds.select(&parts[0]), validation: ds.select(&parts[1]), test: ds.select(&parts[2]), duplicates_moved })
}

/// Move every copy of a text into the earliest part (train, validation, test) that holds one; the number moved.
/// A dataset without repeated texts is left exactly as split.
fn keep_duplicates_together(ds: &Dataset, parts: &mut [Vec<usize>; 3]) -> usize {
    let mut home: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (p, idx) in parts.iter().enumerate() {
        for &i in idx {
            home.entry(ds.texts[i].as_str()).or_insert(p);
        }
    }
    let mut moved = 0;
    for p in 1..3 {
        let (stay, go): (Vec<usize>, Vec<usize>) = parts[p].iter().partition(|&&i| home[ds.texts[i].as_str()] == p);
        moved += go.len();
        for i in go {
            parts[home[ds.texts[i].as_str()]].push(i);
        }
        parts[p] = stay;
    }
    moved
}

// ---------------------------------------------------------------------------------------------------------------
// Reading and decoding

/// The most bytes one dataset file or input file may hold: the loaders keep a dataset in memory, texts and all
/// (the full Large Movie Review Dataset as one CSV is 66 MB).
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// Read `reader` (named `what` in errors) to its end, refusing more than `limit` bytes: a device such as
/// `/dev/zero` or a runaway pipe would otherwise fill memory until the run is killed.
///
/// ```
/// use cryptotl::data::read_bounded;
/// use std::path::Path;
/// assert_eq!(read_bounded(&b"two\nlines"[..], Path::new("x"), 9).unwrap().len(), 9);
/// let err = read_bounded(std::io::repeat(0), Path::new("/dev/zero"), 1 << 20).unwrap_err().to_string();
/// assert!(err.contains("/dev/zero") && err.contains("more than 1048576 bytes"), "{err}");
/// ```
pub fn read_bounded(reader: impl std::io::Read, what: &Path, limit: u64) -> Result<Vec<u8>> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    reader.take(limit.saturating_add(1)).read_to_end(&mut bytes).map_err(|e| Error::data(what, format!("cannot read: {e}")))?;
    if bytes.len() as u64 > limit {
        return Err(Error::data(what, format!("holds more than {limit} bytes, the most a dataset or input file may (it is read into memory whole)")));
    }
    Ok(bytes)
}

/// Open the dataset or input file `p`; one that cannot be opened is an error saying why, then `hint(error)`.
fn open_file(p: &Path, hint: impl Fn(&std::io::Error) -> String) -> Result<std::fs::File> {
    std::fs::File::open(p).map_err(|e| Error::data(p, format!("cannot read: {e}{}", hint(&e))))
}

/// Read the file `p` whole, within [`MAX_FILE_BYTES`]: a larger regular file is refused before reading. A file
/// that cannot be opened is [`open_file`]'s error.
fn read_file(p: &Path, hint: impl Fn(&std::io::Error) -> String) -> Result<Vec<u8>> {
    let file = open_file(p, hint)?;
    if let Ok(meta) = file.metadata()
        && meta.is_file()
        && meta.len() > MAX_FILE_BYTES
    {
        return Err(Error::data(p, format!("holds {} bytes, more than the {MAX_FILE_BYTES} a dataset or input file may (it is read into memory whole)", meta.len())));
    }
    read_bounded(file, p, MAX_FILE_BYTES)
}

/// Read a file's bytes, or an embedded dataset's text.
fn read_source(p: &str) -> Result<Vec<u8>> {
    if let Some(name) = p.strip_prefix("embedded:") {
        return EMBEDDED.iter().find(|(n, _)| *n == name).map(|(_, t)| t.as_bytes().to_vec()).ok_or_else(|| {
            let known: Vec<&str> = EMBEDDED.iter().map(|(n, _)| *n).collect();
            Error::data(p, format!("no embedded dataset of that name; embedded: {}", known.join(", ")))
        });
    }
    read_file(Path::new(p), |e| match e.kind() {
        std::io::ErrorKind::NotFound if p.starts_with("datasets/data/") => {
            format!("{}; run `python3 datasets/fetch.py` in the repository first", crate::error::looked_in(Path::new(p)))
        }
        _ => not_found_hint(Path::new(p), e),
    })
}

/// Where a file that is not there was looked for ([`crate::error::looked_in`]); nothing for other errors.
fn not_found_hint(p: &Path, e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => crate::error::looked_in(p),
        _ => String::new(),
    }
}

/// Decode UTF-8 (BOM stripped): strictly, or lossily counting the replaced sequences.
fn decode(bytes: Vec<u8>, lossy: bool, path: &Path, replaced: &mut usize) -> Result<String> {
    let bytes = match bytes.strip_prefix(b"\xEF\xBB\xBF") {
        Some(rest) => rest.to_vec(),
        None => bytes,
    };
    match String::from_utf8(bytes) {
        Ok(s) => Ok(s),
        Err(e) if lossy => {
            let bytes = e.into_bytes();
            let s = String::from_utf8_lossy(&bytes).into_owned();
            let before = bytes.windows(3).filter(|w| *w == "\u{FFFD}".as_bytes()).count();
            *replaced += s.matches('\u{FFFD}').count() - before;
            Ok(s)
        }
        Err(e) => {
            let at = e.utf8_error().valid_up_to();
            let line = e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count() + 1;
            Err(Error::data(
                path,
                format!("invalid UTF-8 at byte {at} (line {line}); set `lossy_utf8 = true` if the source is known to be mixed"),
            ))
        }
    }
}

fn map_label(cfg: &DatasetConfig, raw: &str) -> std::result::Result<Option<u8>, String> {
    let raw = raw.trim();
    if cfg.positive.iter().any(|v| v == raw) {
        Ok(Some(1))
    } else if cfg.negative.iter().any(|v| v == raw) {
        Ok(Some(0))
    } else if cfg.ignore.iter().any(|v| v == raw) {
        Ok(None)
    } else {
        Err(format!(
            "unknown label {raw:?}; allowed: positive {:?}, negative {:?}, ignore {:?}",
            cfg.positive, cfg.negative, cfg.ignore
        ))
    }
}

/// What a label column holds, for an error about one of its values: its distinct values (trimmed, the most
/// frequent first, at most 8) with their counts, and the keys that map them, so a user can set them in one go.
fn label_values_hint<'a>(values: impl Iterator<Item = &'a str>) -> String {
    let mut counts: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for v in values {
        *counts.entry(v.trim()).or_default() += 1;
    }
    let mut by_count: Vec<(&str, usize)> = counts.into_iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let shown: Vec<String> = by_count.iter().take(8).map(|(v, n)| format!("{v:?} ({n})")).collect();
    let more = if by_count.len() > 8 { format!(" and {} more", by_count.len() - 8) } else { String::new() };
    format!(". The label column holds {}{more}: list its values in the `positive`, `negative` and `ignore` keys of this dataset's table", shown.join(", "))
}

fn load_csv(cfg: &DatasetConfig, p: &str, ds: &mut Dataset) -> Result<()> {
    let path = Path::new(p);
    let text = decode(read_source(p)?, cfg.lossy_utf8, path, &mut ds.lossy_replacements)?;
    let mut reader = csv::ReaderBuilder::new().has_headers(cfg.header).from_reader(text.as_bytes());
    let (text_col, label_col) = if cfg.header {
        let headers = reader.headers().map_err(|e| Error::data(path, format!("cannot read the header: {e}")))?.clone();
        let find = |name: &str, key: &str| {
            headers.iter().position(|h| h.trim() == name).ok_or_else(|| {
                let found: Vec<&str> = headers.iter().collect();
                Error::data(path, format!("no column {name:?} (the `{key}`); columns found: {found:?}"))
            })
        };
        (find(&cfg.text_column, "text_column")?, find(&cfg.label_column, "label_column")?)
    } else {
        (cfg.text_column.parse().unwrap_or(1), cfg.label_column.parse().unwrap_or(0))
    };
    let before = ds.len();
    // A quote that never closes makes the csv reader swallow every following line into one field: an odd number
    // of quote characters with a last record spanning lines is that, and an error naming where it starts.
    let unbalanced = text.bytes().filter(|&b| b == b'"').count() % 2 == 1;
    let records: Vec<_> = reader.records().collect();
    if unbalanced
        && let Some(Ok(last)) = records.last()
        && last.iter().any(|f| f.contains('\n'))
    {
        let line = last.position().map_or(0, |p| p.line());
        return Err(Error::data(path, format!(
            "row {} (line {line}): a quoted field is never closed, so it would swallow every line after it",
            records.len() + usize::from(cfg.header))));
    }
    for (i, rec) in records.iter().enumerate() {
        let row = i + 1 + usize::from(cfg.header);
        let rec = rec.as_ref().map_err(|e| Error::data(path, format!("row {row}: {e}")))?;
        let (Some(raw_label), Some(raw_text)) = (rec.get(label_col), rec.get(text_col)) else {
            return Err(Error::data(path, format!("row {row}: has {} columns, needs {}", rec.len(), text_col.max(label_col) + 1)));
        };
        let Some(label) = map_label(cfg, raw_label).map_err(|m| {
            let hint = label_values_hint(records.iter().filter_map(|r| r.as_ref().ok()?.get(label_col)));
            Error::data(path, format!("row {row}: {m}{hint}"))
        })?
        else {
            ds.ignored_rows += 1;
            continue;
        };
        let t = raw_text.trim();
        if t.is_empty() {
            return Err(Error::data(path, format!("row {row}: empty text")));
        }
        ds.push(t.to_string(), label);
    }
    if ds.len() == before {
        return Err(Error::data(path, "no examples"));
    }
    Ok(())
}

fn load_json(cfg: &DatasetConfig, p: &str, ds: &mut Dataset) -> Result<()> {
    let path = Path::new(p);
    let text = decode(read_source(p)?, cfg.lossy_utf8, path, &mut ds.lossy_replacements)?;
    let items: Vec<serde_json::Value> =
        serde_json::from_str(&text).map_err(|e| Error::data(path, format!("not a JSON array of objects: {e}")))?;
    let n = items.len();
    let before = ds.len();
    let label_text = |v: Option<&serde_json::Value>| match v {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Number(x)) => Some(x.to_string()),
        Some(serde_json::Value::Bool(b)) => Some(b.to_string()),
        _ => None,
    };
    for (i, item) in items.iter().enumerate() {
        let obj = item.as_object().ok_or_else(|| Error::data(path, format!("element {i}: not an object")))?;
        let text = obj.get(&cfg.text_column).and_then(|v| v.as_str());
        let label = obj.get(&cfg.label_column);
        // The Kotzias files end with one `{"text":"","class":null}` marker: skip exactly that.
        if i + 1 == n && text == Some("") && matches!(label, Some(serde_json::Value::Null)) {
            continue;
        }
        let text = text.ok_or_else(|| {
            Error::data(path, format!("element {i}: no string field {:?} (the `text_column`)", cfg.text_column))
        })?;
        let Some(raw_label) = label_text(label) else {
            return Err(Error::data(
                path,
                format!("element {i}: no string or number field {:?} (the `label_column`)", cfg.label_column),
            ));
        };
        let Some(label) = map_label(cfg, &raw_label).map_err(|m| {
            let labels: Vec<String> = items.iter().filter_map(|it| label_text(it.get(&cfg.label_column))).collect();
            Error::data(path, format!("element {i}: {m}{}", label_values_hint(labels.iter().map(String::as_str))))
        })?
        else {
            ds.ignored_rows += 1;
            continue;
        };
        if text.trim().is_empty() {
            return Err(Error::data(path, format!("element {i}: empty text")));
        }
        ds.push(text.trim().to_string(), label);
    }
    if ds.len() == before {
        return Err(Error::data(path, "no examples"));
    }
    Ok(())
}

/// Files of a folder, sorted by name (determinism), without hidden files.
fn sorted_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::data(dir, format!("cannot list folder: {e}")))?;
    let mut files = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| Error::data(dir, format!("cannot list folder: {e}")))?;
        let p = entry.path();
        let hidden = p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
        if p.is_file() && !hidden {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

fn read_text_file(cfg: &DatasetConfig, p: &Path, ds: &mut Dataset) -> Result<String> {
    let bytes = read_file(p, |_| String::new())?;
    decode(bytes, cfg.lossy_utf8, p, &mut ds.lossy_replacements)
}

/// `<root>/{train,test}/{pos,neg}/*.txt` (the Large Movie Review Dataset). `unsup/` is ignored.
fn load_acl_imdb(cfg: &DatasetConfig, root: &Path, ds: &mut Dataset) -> Result<()> {
    if !root.is_dir() {
        return Err(Error::data(root, "not a folder (expected aclImdb/{train,test}/{pos,neg}/*.txt)"));
    }
    let before = ds.len();
    for part in ["train", "test"] {
        for (sub, label) in [("neg", 0u8), ("pos", 1u8)] {
            let dir = root.join(part).join(sub);
            if !dir.is_dir() {
                continue;
            }
            for f in sorted_files(&dir)? {
                if f.extension().and_then(|e| e.to_str()) != Some("txt") {
                    continue;
                }
                let text = read_text_file(cfg, &f, ds)?.replace("<br />", " ");
                let text = text.trim();
                if text.is_empty() {
                    return Err(Error::data(&f, "empty review"));
                }
                ds.push(text.to_string(), label);
            }
        }
    }
    if ds.len() == before {
        return Err(Error::data(root, "no reviews found under {train,test}/{pos,neg}/*.txt"));
    }
    Ok(())
}

/// Sub-folders named `spam*` (label 1) and `*ham*` (label 0) of RFC 822 messages; headers are dropped
/// (everything before the first blank line), whitespace folded. `.json`/`.js` files and other folders are skipped.
fn load_email_dir(cfg: &DatasetConfig, root: &Path, ds: &mut Dataset) -> Result<()> {
    let rd = std::fs::read_dir(root).map_err(|e| Error::data(root, format!("cannot list folder: {e}")))?;
    let mut dirs: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_dir()).collect();
    dirs.sort();
    let before = ds.len();
    for dir in dirs {
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("").to_ascii_lowercase();
        let label = if name.starts_with("spam") {
            1
        } else if name.contains("ham") {
            0
        } else {
            tracing::warn!(folder = %dir.display(), "skipping folder: name neither starts with `spam` nor contains `ham`");
            continue;
        };
        for f in sorted_files(&dir)? {
            if matches!(f.extension().and_then(|e| e.to_str()), Some("json" | "js")) {
                continue;
            }
            let msg = read_text_file(cfg, &f, ds)?.replace("\r\n", "\n");
            let body = msg.split_once("\n\n").map_or(msg.as_str(), |(_, b)| b);
            let body: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
            if body.is_empty() {
                return Err(Error::data(&f, "e-mail has no body"));
            }
            ds.push(body, label);
        }
    }
    if ds.len() == before {
        return Err(Error::data(root, "no e-mails found in `spam*` / `*ham*` sub-folders"));
    }
    Ok(())
}
