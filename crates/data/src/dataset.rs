//! A prepared dataset: `dataset.json` (what it is and how it was made) plus
//! the events, vocabularies and side tables next to it; [`Dataset::open`]
//! reads it back, [`Stats`] summarises it.

use std::collections::BTreeMap;
use std::hash::Hasher;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::features::GapParams;
use crate::persist::{self, Counts, PreparedEvents};
use crate::recipe::Recipe;
use crate::vocab::Vocab;
use crate::{Error, Result};

/// File name of the metadata inside a prepared dataset directory.
pub const META_FILE: &str = "dataset.json";

/// Seconds spent in each stage of preparation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StageSeconds {
    /// Reading and parsing the source.
    pub read: f64,
    /// Building vocabularies and encoding keys.
    pub encode: f64,
    /// Grouping into the sequence store.
    pub group: f64,
    /// Filtering and splitting.
    pub filter_split: f64,
    /// Gap features.
    pub features: f64,
    /// Side tables and writing the directory.
    pub write: f64,
}

/// The contents of `dataset.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DatasetMeta {
    /// Layout version ([`persist::FORMAT_VERSION`]).
    pub format_version: u32,
    /// Dataset name from the recipe.
    pub name: String,
    /// The recipe file it was prepared from.
    pub recipe_path: PathBuf,
    /// The recipe's text, verbatim.
    pub recipe: String,
    /// Hash of the input files' paths, sizes and modification times.
    pub input_hash: String,
    /// Interactions read before filtering.
    pub rows_read: usize,
    /// Counts after filtering and splitting.
    pub counts: Counts,
    /// Vocabulary sizes (padding excluded), by name.
    pub vocab_sizes: BTreeMap<String, usize>,
    /// Event files, relative to the directory.
    pub event_files: Vec<String>,
    /// Side table name → file.
    pub side_tables: BTreeMap<String, String>,
    /// Filter report.
    pub filter: serde_json::Value,
    /// Split report.
    pub split: serde_json::Value,
    /// Gap normalisation fitted on the training part.
    pub gaps: Option<GapParams>,
    /// Time per stage.
    pub seconds: StageSeconds,
    /// Bytes of the decoded input columns (what the reader produced).
    pub decoded_column_bytes: u64,
    /// Format `riiid` only: what the input checks counted (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub riiid: Option<crate::read::RiiidReport>,
}

impl DatasetMeta {
    /// Metadata for a dataset prepared from `recipe`.
    pub fn new(recipe: &Recipe, counts: Counts, rows_read: usize) -> Self {
        DatasetMeta {
            format_version: persist::FORMAT_VERSION,
            name: recipe.name.clone(),
            recipe_path: recipe.path.clone(),
            recipe: std::fs::read_to_string(&recipe.path).unwrap_or_default(),
            input_hash: input_hash(recipe),
            rows_read,
            counts,
            ..Default::default()
        }
    }

    /// Writes `dir/dataset.json` (atomically).
    ///
    /// # Errors
    /// I/O errors naming the file.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(META_FILE);
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::Invalid(format!("dataset.json: {e}")))?;
        crate::io::write_text_atomic(&path, &text)
    }

    /// Reads `dir/dataset.json`.
    ///
    /// # Errors
    /// A missing directory or file, malformed JSON (with line and column), or
    /// a layout version this build does not read.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(META_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let meta: DatasetMeta = serde_json::from_str(&text).map_err(|e| Error::Parse {
            path: path.clone(),
            line: e.line() as u64,
            column: e.column(),
            name: "dataset.json".into(),
            message: e.to_string(),
        })?;
        if meta.format_version != persist::FORMAT_VERSION {
            return Err(Error::File {
                path,
                message: format!(
                    "layout version {}, this build reads version {}",
                    meta.format_version,
                    persist::FORMAT_VERSION
                ),
            });
        }
        Ok(meta)
    }
}

/// Files under `path` (itself if a file), sorted.
fn files_under(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        if let Ok(rd) = std::fs::read_dir(path) {
            let mut entries: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
            entries.sort();
            for e in entries {
                files_under(&e, out);
            }
        }
    } else {
        out.push(path.to_path_buf());
    }
}

/// A cheap fingerprint of the inputs: paths, sizes and modification times.
fn input_hash(recipe: &Recipe) -> String {
    let mut files = Vec::new();
    for s in recipe.sources() {
        files_under(&s.path, &mut files);
    }
    let mut h = rustc_hash::FxHasher::default();
    for f in files {
        h.write(f.to_string_lossy().as_bytes());
        if let Ok(m) = std::fs::metadata(&f) {
            h.write_u64(m.len());
            if let Ok(t) =
                m.modified().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).map_err(std::io::Error::other))
            {
                h.write_u128(t.as_nanos());
            }
        }
    }
    format!("{:016x}", h.finish())
}

/// A prepared dataset read back from its directory.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Where it lives.
    pub dir: PathBuf,
    /// Its metadata.
    pub meta: DatasetMeta,
    /// Events and their split parts.
    pub events: PreparedEvents,
    /// Every vocabulary, by name (`seq`, `item`, `lecture`, `<table>.<column>`).
    pub vocabs: BTreeMap<String, Vocab>,
}

impl Dataset {
    /// Opens the prepared dataset in `dir`.
    ///
    /// # Errors
    /// Missing or malformed files, each named.
    pub fn open(dir: &Path) -> Result<Self> {
        let mut data = Self::open_without_events(dir)?;
        data.events = persist::read_events(dir, &data.meta.event_files)?;
        Ok(data)
    }

    /// Opens the metadata and vocabularies only (`events` left empty), for
    /// reading the event files one at a time with [`persist::read_events`].
    ///
    /// # Errors
    /// Missing or malformed files, each named.
    pub fn open_without_events(dir: &Path) -> Result<Self> {
        let meta = DatasetMeta::read(dir)?;
        let mut vocabs = BTreeMap::new();
        for name in meta.vocab_sizes.keys() {
            let v = persist::read_vocab(&dir.join("vocab").join(format!("{name}.parquet")))?;
            vocabs.insert(name.clone(), v);
        }
        Ok(Dataset { dir: dir.to_path_buf(), meta, events: PreparedEvents::default(), vocabs })
    }

    /// Summary statistics of the events.
    pub fn stats(&self) -> Stats {
        Stats::of(&self.meta, &self.events)
    }
}

/// Summary statistics printed by `seqrec data stats`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    /// Dataset name.
    pub name: String,
    /// Sequences (users or sessions).
    pub sequences: usize,
    /// Distinct items among the events.
    pub items: usize,
    /// Events (interactions).
    pub interactions: usize,
    /// Events per part: train, valid, test.
    pub parts: [usize; 3],
    /// Sequences with at least one event in each part: train, valid, test.
    pub sequences_per_part: [usize; 3],
    /// Sequence length: min, median, mean, max.
    pub length_min: usize,
    /// Median sequence length.
    pub length_median: usize,
    /// Mean sequence length.
    pub length_mean: f64,
    /// Maximum sequence length.
    pub length_max: usize,
    /// First and last event time (ms).
    pub time_range: (i64, i64),
    /// Interactions read, before filtering and splitting.
    pub rows_read: usize,
    /// Distinct sequences read (size of the `seq` vocabulary).
    pub sequences_read: usize,
    /// Distinct items read (size of the `item` vocabulary).
    pub items_read: usize,
    /// Vocabulary sizes.
    pub vocab_sizes: BTreeMap<String, usize>,
}

impl Stats {
    /// Statistics of `events` described by `meta`.
    pub fn of(meta: &DatasetMeta, events: &PreparedEvents) -> Self {
        let s = &events.store;
        let mut lens: Vec<usize> = (0..s.n_seq()).map(|i| s.len_of(i)).collect();
        lens.sort_unstable();
        let counts = Counts::of(events);
        let mut seq_parts = [0usize; 3];
        for q in 0..s.n_seq() {
            let mut has = [false; 3];
            for &p in &events.parts[s.range(q)] {
                has[p as usize] = true;
            }
            for k in 0..3 {
                seq_parts[k] += usize::from(has[k]);
            }
        }
        Stats {
            name: meta.name.clone(),
            sequences: s.n_seq(),
            items: counts.items,
            interactions: s.n_events(),
            parts: counts.parts,
            sequences_per_part: seq_parts,
            length_min: lens.first().copied().unwrap_or(0),
            length_median: lens.get(lens.len() / 2).copied().unwrap_or(0),
            length_mean: if lens.is_empty() { 0.0 } else { s.n_events() as f64 / lens.len() as f64 },
            length_max: lens.last().copied().unwrap_or(0),
            time_range: (s.times.iter().copied().min().unwrap_or(0), s.times.iter().copied().max().unwrap_or(0)),
            rows_read: meta.rows_read,
            sequences_read: meta.vocab_sizes.get("seq").copied().unwrap_or(0),
            items_read: meta.vocab_sizes.get("item").copied().unwrap_or(0),
            vocab_sizes: meta.vocab_sizes.clone(),
        }
    }
}
