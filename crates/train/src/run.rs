//! The run directory:
//!
//! ```text
//! RUN/config.toml          the effective config
//! RUN/run.json             dataset, its input hash, item count, seqrec version
//! RUN/metrics.jsonl        one JSON object per epoch (loss, events/s, validation metrics)
//! RUN/vocab/item.parquet   the item vocabulary the checkpoints index
//! RUN/best.safetensors     the best model so far (+ best.json: epoch, metric)
//! RUN/last.safetensors     model + optimiser after the last epoch (+ last.json: trainer state)
//! RUN/results.json         test metrics of the best model
//! ```
//!
//! Every file is written through a temporary file and renamed, so a killed
//! run never leaves a half-written checkpoint.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{io, Result, TrainError};

/// `run.json`: what the run was trained on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// Model name.
    pub model: String,
    /// The prepared dataset directory.
    pub dataset: PathBuf,
    /// Its name.
    pub dataset_name: String,
    /// Its input hash (from `dataset.json`).
    pub input_hash: String,
    /// Item ids of the checkpoints, padding included.
    pub n_ids: usize,
    /// seqrec version.
    pub version: String,
}

impl RunInfo {
    /// Checks that `now` (the dataset about to be used) is the dataset this
    /// run was trained on: same ids and same input files.
    ///
    /// # Errors
    /// [`TrainError::Invalid`] naming both datasets.
    pub fn check_same_data(&self, now: &RunInfo, dir: &Path) -> Result<()> {
        if self.n_ids != now.n_ids || self.input_hash != now.input_hash {
            return Err(TrainError::Invalid(format!(
                "{}: the run was trained on dataset `{}` ({} ids, input hash {}), not on `{}` ({} ids, input hash {})",
                dir.display(),
                self.dataset_name,
                self.n_ids,
                self.input_hash,
                now.dataset_name,
                now.n_ids,
                now.input_hash
            )));
        }
        Ok(())
    }
}

/// `last.json`: where training stands, for `--resume`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Epochs completed.
    pub epochs_done: usize,
    /// Optimiser steps taken.
    pub steps: u64,
    /// Sample-store batches served.
    pub samples_served: u64,
    /// Best validation value so far and its epoch.
    pub best: Option<(f64, usize)>,
    /// Epochs since the best.
    pub bad_epochs: usize,
    /// True when early stopping ended training.
    pub stopped: bool,
}

/// Paths of a run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    /// The directory.
    pub dir: PathBuf,
}

impl RunDir {
    /// The run directory `dir` (created when missing).
    ///
    /// # Errors
    /// When it cannot be created.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir.join("vocab")).map_err(io(dir))?;
        Ok(RunDir { dir: dir.to_path_buf() })
    }

    /// An existing run directory.
    ///
    /// # Errors
    /// When it has no `run.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.join("run.json").is_file() {
            return Err(TrainError::Invalid(format!(
                "{}: not a run directory (no run.json), expected the directory `seqrec train` wrote",
                dir.display()
            )));
        }
        Ok(RunDir { dir: dir.to_path_buf() })
    }

    /// A file in the run directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes `value` as pretty JSON, atomically.
    ///
    /// # Errors
    /// I/O errors naming the file.
    pub fn write_json<T: Serialize>(&self, name: &str, value: &T) -> Result<()> {
        let text = serde_json::to_string_pretty(value).map_err(|e| TrainError::Invalid(e.to_string()))?;
        self.write_text(name, &(text + "\n"))
    }

    /// Writes text atomically.
    ///
    /// # Errors
    /// I/O errors naming the file.
    pub fn write_text(&self, name: &str, text: &str) -> Result<()> {
        Ok(seqrec_data::io::write_text_atomic(&self.path(name), text)?)
    }

    /// Reads a JSON file of the run.
    ///
    /// # Errors
    /// Missing or malformed, naming the file.
    pub fn read_json<T: for<'de> Deserialize<'de>>(&self, name: &str) -> Result<T> {
        let path = self.path(name);
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        serde_json::from_str(&text).map_err(|e| TrainError::Invalid(format!("{}: {e}", path.display())))
    }

    /// Appends one JSON line to `metrics.jsonl`.
    ///
    /// # Errors
    /// I/O errors naming the file.
    pub fn append_metrics(&self, line: &serde_json::Value) -> Result<()> {
        use std::io::Write;
        let path = self.path("metrics.jsonl");
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(io(&path))?;
        writeln!(f, "{line}").map_err(io(&path))
    }

    /// Keeps the first `epochs` lines of `metrics.jsonl` (a resumed run drops
    /// lines of an epoch whose checkpoint was never written).
    ///
    /// # Errors
    /// I/O errors naming the file.
    pub fn truncate_metrics(&self, epochs: usize) -> Result<()> {
        let path = self.path("metrics.jsonl");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(TrainError::Io { path, source: e }),
        };
        let kept: String = text.lines().take(epochs).map(|l| format!("{l}\n")).collect();
        self.write_text("metrics.jsonl", &kept)
    }

    /// Saves tensors as safetensors, atomically.
    ///
    /// # Errors
    /// I/O or tensor errors naming the file.
    pub fn save_tensors(&self, name: &str, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
        let path = self.path(name);
        let tmp = seqrec_data::io::temp_path(&path);
        let map: HashMap<String, Tensor> = tensors.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        candle_core::safetensors::save(&map, &tmp)
            .map_err(|e| TrainError::Invalid(format!("{}: cannot write checkpoint: {e}", path.display())))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))
    }

    /// Loads safetensors.
    ///
    /// # Errors
    /// Missing or malformed, naming the file.
    pub fn load_tensors(&self, name: &str, device: &Device) -> Result<BTreeMap<String, Tensor>> {
        let path = self.path(name);
        if !path.is_file() {
            return Err(TrainError::Invalid(format!("{}: no such checkpoint", path.display())));
        }
        let map = candle_core::safetensors::load(&path, device)
            .map_err(|e| TrainError::Invalid(format!("{}: cannot read checkpoint: {e}", path.display())))?;
        Ok(map.into_iter().collect())
    }
}
