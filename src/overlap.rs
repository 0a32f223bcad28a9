//! Texts the client's target shares with the server's source: the contamination check of a run.
//!
//! The server pretrains on its source data, never on the client's (the target's own dataset must not be among
//! the sources). A target text the server's network learned from is not transferred knowledge but a leak: the
//! transfer head scores it too well, most of all on the test split. In one process (`he.server = "local"`) a run
//! can check, because it holds both sides: it takes [`SourceFingerprints`] of the texts the network learned from
//! (the source's training and validation splits: validation chose when to stop) and counts the target's texts of
//! each split among them ([`SourceOverlap`]). A text is compared folded (lower case, each run of white space one
//! space, trimmed), so a copy that differs only in case or spacing is found too; each fingerprint is 64 bits of
//! xxh3, so two different texts match by chance with probability about 2^-64 per pair.
//!
//! When the server's network sees each sentence of a text (`head.transfer_unit = "sentence"`), a whole target text
//! is seldom a source text, but its sentences may be: a source of review sentences cut from the target's own reviews
//! would pass the whole-text count. So the check then also counts the target's sentences, as the network receives
//! them, among the source texts ([`SentenceOverlap`]). Only sentences of at least [`MIN_SENTENCE_WORDS`] words count:
//! short ones ("I loved it.") occur in any large corpus by themselves.
//!
//! Against a remote server nothing is checked: the client never sees the server's source texts, and a list of
//! their fingerprints would let anyone test whether a given text is among them.
//!
//! ```
//! use cryptotl::overlap::SourceFingerprints;
//! let source = SourceFingerprints::of_texts(["A fine film.", "Dull and  far too long."]);
//! assert!(source.contains("dull and far too long."));
//! assert!(!source.contains("A fine film, really."));
//! let bytes = source.encode();
//! assert_eq!(SourceFingerprints::decode(&bytes, std::path::Path::new("fingerprints.bin")).unwrap(), source);
//! ```

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::data::Split;
use crate::error::{Error, Result};

/// What an encoded fingerprint list starts with (then the count, u64 little-endian, then the sorted fingerprints).
const MAGIC: &[u8; 16] = b"cryptotl-fp/v1\n\0";

/// The shortest sentence, in words, that the sentence count compares ([`SentenceOverlap`]). None of the 56,135
/// sentences of the Pang & Lee reviews is among IMDB's 28,774 source texts at any length (2026-12-07), so the floor
/// guards against chance matches of common short sentences, not against a measured excess.
pub const MIN_SENTENCE_WORDS: usize = 6;

/// The fingerprint of a text as the check compares it: xxh3-64 of its folded form (lower case, each run of white
/// space one space, trimmed).
pub fn fingerprint(text: &str) -> u64 {
    let folded: Vec<String> = text.split_whitespace().map(str::to_lowercase).collect();
    xxhash_rust::xxh3::xxh3_64(folded.join(" ").as_bytes())
}

/// The fingerprints of a set of source texts, sorted and without repeats.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SourceFingerprints {
    sorted: Vec<u64>,
}

impl SourceFingerprints {
    /// The fingerprints of `texts`.
    pub fn of_texts<'a>(texts: impl IntoIterator<Item = &'a str>) -> Self {
        let mut sorted: Vec<u64> = texts.into_iter().map(fingerprint).collect();
        sorted.sort_unstable();
        sorted.dedup();
        Self { sorted }
    }

    /// The texts a network pretrained on `source` learned from: its training and validation splits (validation
    /// decided when training stopped; the test split only scored it).
    pub fn of_source(source: &Split) -> Self {
        Self::of_texts(source.train.texts.iter().chain(&source.validation.texts).map(String::as_str))
    }

    /// Distinct texts (after folding).
    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    /// No texts.
    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    /// Whether `text` (folded) is among them.
    pub fn contains(&self, text: &str) -> bool {
        self.sorted.binary_search(&fingerprint(text)).is_ok()
    }

    /// How many of `texts` are among them.
    pub fn count_in(&self, texts: &[String]) -> usize {
        texts.iter().filter(|t| self.contains(t)).count()
    }

    /// Whether any text is among both `self` and `other`: whether two pretrainings share a source example
    /// ([`crate::pipeline::other_pretrainings`]).
    ///
    /// ```
    /// use cryptotl::overlap::SourceFingerprints;
    /// let a = SourceFingerprints::of_texts(["one", "two"]);
    /// assert!(a.shares_any(&SourceFingerprints::of_texts(["TWO", "three"])));
    /// assert!(!a.shares_any(&SourceFingerprints::of_texts(["three"])));
    /// ```
    pub fn shares_any(&self, other: &Self) -> bool {
        let (mut a, mut b) = (self.sorted.iter().peekable(), other.sorted.iter().peekable());
        while let (Some(x), Some(y)) = (a.peek(), b.peek()) {
            match x.cmp(y) {
                std::cmp::Ordering::Less => _ = a.next(),
                std::cmp::Ordering::Greater => _ = b.next(),
                std::cmp::Ordering::Equal => return true,
            }
        }
        false
    }

    /// The texts of `self` and of `other`.
    ///
    /// ```
    /// use cryptotl::overlap::SourceFingerprints;
    /// let both = SourceFingerprints::of_texts(["one", "two"]).union(&SourceFingerprints::of_texts(["two", "three"]));
    /// assert_eq!(both, SourceFingerprints::of_texts(["one", "two", "three"]));
    /// ```
    pub fn union(&self, other: &Self) -> Self {
        let mut sorted: Vec<u64> = self.sorted.iter().chain(&other.sorted).copied().collect();
        sorted.sort_unstable();
        sorted.dedup();
        Self { sorted }
    }

    /// The count of each split of `target` among them.
    pub fn overlap(&self, target: &Split) -> SourceOverlap {
        SourceOverlap {
            source_texts: self.len(),
            train: self.count_in(&target.train.texts),
            validation: self.count_in(&target.validation.texts),
            test: self.count_in(&target.test.texts),
            target_sizes: [target.train.len(), target.validation.len(), target.test.len()],
            sentences: None,
        }
    }

    /// The target's sentences among them, per split: `sentences_of` gives a text's sentences as the server's network
    /// receives them; those of fewer than [`MIN_SENTENCE_WORDS`] words are not compared.
    pub fn sentence_overlap(&self, target: &Split, sentences_of: impl Fn(&str) -> Vec<String>) -> SentenceOverlap {
        let mut o = SentenceOverlap { min_words: MIN_SENTENCE_WORDS, compared: [0; 3], found: [0; 3], texts: [0; 3] };
        for (k, part) in [&target.train, &target.validation, &target.test].into_iter().enumerate() {
            for text in &part.texts {
                let long: Vec<String> = sentences_of(text).into_iter().filter(|s| s.split_whitespace().count() >= MIN_SENTENCE_WORDS).collect();
                let found = long.iter().filter(|s| self.contains(s)).count();
                o.compared[k] += long.len();
                o.found[k] += found;
                o.texts[k] += (found > 0) as usize;
            }
        }
        o
    }

    /// The binary form `ship-network` writes: a 16-byte header (`cryptotl-fp/v1`), the count (u64 little-endian),
    /// the sorted fingerprints (u64 little-endian).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAGIC.len() + 8 * (self.sorted.len() + 1));
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(self.sorted.len() as u64).to_le_bytes());
        for f in &self.sorted {
            out.extend_from_slice(&f.to_le_bytes());
        }
        out
    }

    /// Read the file `path` in [`Self::encode`]'s form ([`Self::decode`]).
    pub fn load(path: &Path) -> Result<Self> {
        Self::decode(&std::fs::read(path).map_err(|e| Error::io(path, e))?, path)
    }

    /// Read [`Self::encode`]'s form; `what` names the file in errors. A wrong header, a length that disagrees with
    /// the count, or fingerprints out of order are refused.
    pub fn decode(bytes: &[u8], what: &Path) -> Result<Self> {
        let body = bytes
            .strip_prefix(MAGIC.as_slice())
            .ok_or_else(|| Error::artifact(what, "not a list of source fingerprints (wrong header)"))?;
        let (count, rest) = body.split_at_checked(8).ok_or_else(|| Error::artifact(what, "truncated before its count"))?;
        let count = u64::from_le_bytes(count.try_into().expect("8 bytes"));
        if rest.len() % 8 != 0 || (rest.len() / 8) as u64 != count {
            return Err(Error::artifact(what, format!("holds {} bytes of fingerprints, its header says {count}", rest.len())));
        }
        let sorted: Vec<u64> = rest.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
        if sorted.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::artifact(what, "fingerprints out of order"));
        }
        Ok(Self { sorted })
    }
}

/// How many of the target's texts, per split, are among the texts the server's network learned from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceOverlap {
    /// Distinct source texts checked against (training and validation splits of the source, folded).
    pub source_texts: usize,
    /// Target training texts among them.
    pub train: usize,
    /// Target validation texts among them.
    pub validation: usize,
    /// Target test texts among them.
    pub test: usize,
    /// The target's training, validation and test sizes.
    pub target_sizes: [usize; 3],
    /// With `head.transfer_unit = "sentence"`: the target's sentences among the source texts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentences: Option<SentenceOverlap>,
}

impl SourceOverlap {
    /// Target texts among the source's, over every split.
    pub fn total(&self) -> usize {
        self.train + self.validation + self.test
    }

    /// Whether any target text, or any sentence the sentence count compared, is among the source texts.
    pub fn any(&self) -> bool {
        self.total() > 0 || self.sentences.as_ref().is_some_and(|s| s.found.iter().sum::<usize>() > 0)
    }
}

/// The target's sentences among the source texts, per split (training, validation, test), for a network that sees
/// each sentence of a text ([`SourceFingerprints::sentence_overlap`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentenceOverlap {
    /// Sentences of fewer words were not compared ([`MIN_SENTENCE_WORDS`]).
    pub min_words: usize,
    /// Sentences compared (those of at least `min_words` words).
    pub compared: [usize; 3],
    /// Of them, among the source texts.
    pub found: [usize; 3],
    /// Target texts with at least one sentence among the source texts.
    pub texts: [usize; 3],
}

/// What a run's report says of the check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum OverlapCheck {
    /// Checked in this process.
    Checked(SourceOverlap),
    /// Not checked, and why.
    NotChecked {
        /// Why not.
        reason: String,
    },
}

impl OverlapCheck {
    /// One paragraph for `report.md`.
    pub fn describe(&self) -> String {
        match self {
            Self::Checked(o) => {
                let [train, validation, test] = o.target_sizes;
                let counts = format!(
                    "{} of {train} training, {} of {validation} validation and {} of {test} test texts",
                    o.train, o.validation, o.test
                );
                let whole = if o.total() == 0 {
                    format!("Target texts among the server's source training texts ({} distinct, case and spacing folded): none ({counts}).", o.source_texts)
                } else {
                    format!(
                        "**Target texts among the server's source training texts** ({} distinct, case and spacing folded): {counts}. \
                         The server's network learned from these, so the transfer head's accuracy on them is not transfer; \
                         a source must not hold the target's own data.",
                        o.source_texts
                    )
                };
                let Some(s) = &o.sentences else { return whole };
                let [c0, c1, c2] = s.compared;
                let [f0, f1, f2] = s.found;
                let [t0, t1, t2] = s.texts;
                if f0 + f1 + f2 == 0 {
                    return format!(
                        "{whole} Their sentences of {} words or more, as the server's network receives them: none \
                         ({c0} compared in training texts, {c1} in validation, {c2} in test).",
                        s.min_words
                    );
                }
                let counts = format!(
                    "{f0} of {c0} in training texts ({t0} texts), {f1} of {c1} in validation ({t1}), {f2} of {c2} in test ({t2})"
                );
                format!(
                    "{whole} **Their sentences among the source texts** ({} words or more, as the server's network receives them): \
                     {counts}. The server's network learned from these sentences, so the transfer head's accuracy on \
                     their texts is partly not transfer.",
                    s.min_words
                )
            }
            Self::NotChecked { reason } => format!("Target texts among the server's source texts: not checked ({reason})."),
        }
    }
}
