//! GRU4Rec run configuration: one TOML table whose keys are the papers'
//! code's parameter names, plus the trainer's own settings.
//!
//! ```toml
//! layers = [100]
//! loss = "cross-entropy"   # cross-entropy, top1, bpr, top1-max, bpr-max
//! batch_size = 32
//! n_sample = 2048
//! ```
//!
//! Unknown keys are errors naming the key; a wrong type names the key's line
//! and column. Defaults are the authors' (`layers = [100]`, `batch_size = 64`,
//! `learning_rate = 0.05`, `momentum = 0`, `n_sample = 2048`,
//! `sample_alpha = 0.5`, `sample_store = 10000000`, `bpreg = 1`, `logq = 0`,
//! constrained embedding, 10 epochs). `final_act` defaults to `elu-0.5` for
//! `bpr-max` (the authors' `elu_param`) and `linear` otherwise.

use std::path::Path;

use seqrec_eval::TieMode;
use seqrec_models::gru4rec::{FinalAct, Gru4RecShape};
use seqrec_models::loss::Loss;
use seqrec_models::optim::{Optimizer, OptimizerKind};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// Every setting of a GRU4Rec run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Gru4RecConfig {
    /// `gru4rec` (the key tells `seqrec train` which trainer reads the file).
    pub model: String,
    /// Hidden sizes of the GRU layers.
    pub layers: Vec<usize>,
    /// Session-parallel mini-batch size (also the loss's divisor).
    pub batch_size: usize,
    /// Loss name.
    pub loss: String,
    /// Final activation of the training scores (`linear`, `relu`, `tanh`, `leaky-a`, `elu-a`).
    pub final_act: Option<String>,
    /// Drop probability of the embedding.
    pub dropout_p_embed: f32,
    /// Drop probability of the hidden layers' outputs.
    pub dropout_p_hidden: f32,
    /// Learning rate.
    pub learning_rate: f32,
    /// Momentum of Adagrad.
    pub momentum: f32,
    /// Extra negatives shared by a mini-batch (0: none).
    pub n_sample: usize,
    /// Sampling exponent of item support (0 uniform, 1 popularity).
    pub sample_alpha: f64,
    /// Ids precomputed per refill of the sample store.
    pub sample_store: usize,
    /// Score regulariser of BPR-max.
    pub bpreg: f32,
    /// logQ correction weight (0: off).
    pub logq: f32,
    /// Share the output item weights with the input.
    pub constrained_embedding: bool,
    /// Separate embedding size (0: one-hot equivalent input).
    pub embedding: usize,
    /// GRU cell form: false = original (reset before the recurrent product),
    /// true = `torch.nn.GRUCell`'s (reset after it).
    pub reset_after: bool,
    /// Training epochs (at most; early stopping may stop sooner).
    pub n_epochs: usize,
    /// `adagrad` (with momentum, the authors') or `adam`.
    pub optimizer: OptimizerKind,
    /// Seed of initialisation, sampling and dropout.
    pub seed: u64,
    /// Slots of the evaluation's session-parallel batches.
    pub eval_batch_size: usize,
    /// Cut-offs of Recall/MRR/NDCG.
    pub cutoffs: Vec<usize>,
    /// Placement of a target among tied scores.
    pub tie_mode: TieMode,
    /// Validation metric for early stopping and the best checkpoint, e.g. `recall@20`, `mrr@20`.
    pub valid_metric: String,
    /// Epochs without improvement before stopping (0: never stop early).
    pub patience: usize,
    /// Smallest improvement of the validation metric that counts.
    pub min_delta: f64,
}

impl Default for Gru4RecConfig {
    fn default() -> Self {
        Gru4RecConfig {
            model: "gru4rec".into(),
            layers: vec![100],
            batch_size: 64,
            loss: "cross-entropy".into(),
            final_act: None,
            dropout_p_embed: 0.0,
            dropout_p_hidden: 0.0,
            learning_rate: 0.05,
            momentum: 0.0,
            n_sample: 2048,
            sample_alpha: 0.5,
            sample_store: 10_000_000,
            bpreg: 1.0,
            logq: 0.0,
            constrained_embedding: true,
            embedding: 0,
            reset_after: false,
            n_epochs: 10,
            optimizer: OptimizerKind::Adagrad,
            seed: 42,
            eval_batch_size: 512,
            cutoffs: vec![20],
            tie_mode: TieMode::Optimistic,
            valid_metric: "recall@20".into(),
            patience: 3,
            min_delta: 0.0,
        }
    }
}

/// A validation metric: name and cut-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Recall@K (= HR@K with one target).
    Recall(usize),
    /// MRR@K.
    Mrr(usize),
    /// NDCG@K.
    Ndcg(usize),
}

impl Metric {
    /// Parses `recall@K`, `hr@K`, `mrr@K`, `ndcg@K`.
    pub fn parse(s: &str) -> Option<Metric> {
        let (name, k) = s.split_once('@')?;
        let k: usize = k.parse().ok().filter(|&k| k > 0)?;
        match name {
            "recall" | "hr" => Some(Metric::Recall(k)),
            "mrr" => Some(Metric::Mrr(k)),
            "ndcg" => Some(Metric::Ndcg(k)),
            _ => None,
        }
    }

    /// Cut-off K.
    pub fn k(&self) -> usize {
        match *self {
            Metric::Recall(k) | Metric::Mrr(k) | Metric::Ndcg(k) => k,
        }
    }

    /// Its value in `m`, if `m` was computed at this cut-off.
    pub fn value(&self, m: &seqrec_eval::RankingMetrics) -> Option<f64> {
        let at = m.at_k(self.k())?;
        Some(match self {
            Metric::Recall(_) => at.recall,
            Metric::Mrr(_) => at.mrr,
            Metric::Ndcg(_) => at.ndcg,
        })
    }
}

impl RunConfig for Gru4RecConfig {
    /// Checks every value; the error names the key and what was expected.
    ///
    /// # Errors
    /// The first bad key, as a message.
    fn check(&self) -> std::result::Result<(), String> {
        if self.model != "gru4rec" {
            return Err(format!("key `model`: found `{}`, expected `gru4rec` for a GRU4Rec config", self.model));
        }
        self.loss_fn()?;
        self.final_activation()?;
        self.metric()?;
        let positive = [("batch_size", self.batch_size), ("eval_batch_size", self.eval_batch_size)];
        for (key, v) in positive {
            if v == 0 {
                return Err(format!("key `{key}`: found 0, expected a positive number"));
            }
        }
        self.shape()?.check().map_err(|e| e.to_string())?;
        Optimizer::check_settings(self.learning_rate, self.momentum).map_err(|e| e.to_string())?;
        if self.optimizer == OptimizerKind::Nadam {
            return Err("key `optimizer`: GRU4Rec updates item rows sparsely; expected `adagrad` or `adam`".into());
        }
        if !(self.sample_alpha.is_finite() && self.sample_alpha >= 0.0) {
            return Err(format!("key `sample_alpha`: found {}, expected a number >= 0", self.sample_alpha));
        }
        if self.n_sample > 0 && self.sample_store < self.n_sample {
            let (s, n) = (self.sample_store, self.n_sample);
            return Err(format!("key `sample_store`: found {s}, expected at least n_sample ({n})"));
        }
        if !(self.logq.is_finite() && self.logq >= 0.0) {
            return Err(format!("key `logq`: found {}, expected a number >= 0", self.logq));
        }
        if self.cutoffs.is_empty() || self.cutoffs.contains(&0) {
            return Err(format!("key `cutoffs`: found {:?}, expected positive cut-offs", self.cutoffs));
        }
        let m = self.metric()?;
        if !self.cutoffs.contains(&m.k()) {
            return Err(format!("key `valid_metric`: cut-off {} is not in `cutoffs` {:?}", m.k(), self.cutoffs));
        }
        Ok(())
    }
}

impl Gru4RecConfig {
    /// The loss.
    ///
    /// # Errors
    /// An unknown loss name, naming the key and the known names.
    pub fn loss_fn(&self) -> std::result::Result<Loss, String> {
        Loss::from_name(&self.loss, self.bpreg).ok_or_else(|| {
            format!("key `loss`: unknown loss `{}`, expected one of {}", self.loss, Loss::NAMES.join(", "))
        })
    }

    /// The final activation (default by loss).
    ///
    /// # Errors
    /// An unknown activation, naming the key.
    pub fn final_activation(&self) -> std::result::Result<FinalAct, String> {
        match &self.final_act {
            None if self.loss == "bpr-max" => Ok(FinalAct::Elu(0.5)),
            None => Ok(FinalAct::Linear),
            Some(s) => FinalAct::parse(s).ok_or_else(|| {
                format!("key `final_act`: unknown activation `{s}`, expected linear, relu, tanh, leaky-<a> or elu-<a>")
            }),
        }
    }

    /// The validation metric.
    ///
    /// # Errors
    /// An unknown metric, naming the key.
    pub fn metric(&self) -> std::result::Result<Metric, String> {
        Metric::parse(&self.valid_metric).ok_or_else(|| {
            format!("key `valid_metric`: found `{}`, expected recall@K, hr@K, mrr@K or ndcg@K", self.valid_metric)
        })
    }

    /// The network's shape.
    ///
    /// # Errors
    /// As [`Gru4RecConfig::final_activation`].
    pub fn shape(&self) -> std::result::Result<Gru4RecShape, String> {
        Ok(Gru4RecShape {
            layers: self.layers.clone(),
            embedding: self.embedding,
            constrained_embedding: self.constrained_embedding,
            dropout_p_embed: self.dropout_p_embed,
            dropout_p_hidden: self.dropout_p_hidden,
            final_act: self.final_activation()?,
            reset_after: self.reset_after,
        })
    }
}

/// A run config: TOML with the papers' keys, read, parsed and checked the
/// same way by every trainer (errors name the file, and the key with its
/// line and column for parse and type errors, or what `check` says).
pub trait RunConfig: Serialize + serde::de::DeserializeOwned {
    /// Checks every value; the error names the key and what was expected.
    ///
    /// # Errors
    /// The first bad key, as a message.
    fn check(&self) -> std::result::Result<(), String>;

    /// Reads and checks a config file.
    ///
    /// # Errors
    /// [`TrainError::Io`] when unreadable; [`TrainError::Config`] naming the
    /// file and the key (with line and column for parse and type errors).
    fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(crate::error::io(path))?;
        Self::from_toml_str(&text, path)
    }

    /// Parses and checks config text; `path` names it in errors.
    ///
    /// # Errors
    /// As [`RunConfig::load`].
    fn from_toml_str(text: &str, path: &Path) -> Result<Self> {
        let cfg: Self = toml::from_str(text)
            .map_err(|e| TrainError::Config { path: path.to_path_buf(), message: toml_message(&e, text) })?;
        cfg.check().map_err(|message| TrainError::Config { path: path.to_path_buf(), message })?;
        Ok(cfg)
    }

    /// The config as TOML text (what a run directory stores).
    fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }
}

/// The `model` key of a run config file (`gru4rec` when absent), telling
/// which trainer reads it.
///
/// # Errors
/// An unreadable file, TOML that does not parse, or a `model` that is not a string.
pub fn config_model(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(crate::error::io(path))?;
    let table: toml::Table = toml::from_str(&text)
        .map_err(|e| TrainError::Config { path: path.to_path_buf(), message: toml_message(&e, &text) })?;
    match table.get("model") {
        None => Ok("gru4rec".into()),
        Some(toml::Value::String(s)) => Ok(s.clone()),
        Some(v) => Err(TrainError::Config {
            path: path.to_path_buf(),
            message: format!("key `model`: expected a string such as \"gru4rec\" or \"bst\", found `{v}`"),
        }),
    }
}

/// toml's message on one line: "line L, column C: what", naming the key when found.
pub(crate) fn toml_message(e: &toml::de::Error, text: &str) -> String {
    let what = e.message().trim().to_owned();
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            let line_text = text.lines().nth(line - 1).unwrap_or("");
            let key = line_text.split_once('=').map(|(k, _)| k.trim()).filter(|k| !k.is_empty() && !k.starts_with('#'));
            match key {
                Some(k) if !what.contains(k) => format!("line {line}, column {column}: key `{k}`: {what}"),
                _ => format!("line {line}, column {column}: {what}"),
            }
        }
        None => what,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Gru4RecConfig> {
        Gru4RecConfig::from_toml_str(text, Path::new("run.toml"))
    }

    #[test]
    fn defaults_are_the_authors() {
        let c = parse("").unwrap();
        assert_eq!((c.layers.clone(), c.batch_size, c.n_sample, c.sample_store), (vec![100], 64, 2048, 10_000_000));
        assert_eq!((c.learning_rate, c.momentum, c.sample_alpha, c.bpreg, c.logq), (0.05, 0.0, 0.5, 1.0, 0.0));
        assert!(c.constrained_embedding);
        assert_eq!(c.final_activation().unwrap(), FinalAct::Linear);
        let b = parse("loss = \"bpr-max\"\nbpreg = 1.5").unwrap();
        assert_eq!(b.final_activation().unwrap(), FinalAct::Elu(0.5));
        assert_eq!(b.loss_fn().unwrap(), Loss::BprMax { bpreg: 1.5 });
    }

    #[test]
    fn every_paper_key_is_accepted() {
        let text = "layers = [480]\nbatch_size = 48\nloss = \"cross-entropy\"\nfinal_act = \"elu-1\"\n\
            dropout_p_embed = 0.1\ndropout_p_hidden = 0.2\nlearning_rate = 0.07\nmomentum = 0.1\n\
            n_sample = 2048\nsample_alpha = 0.2\nsample_store = 10000000\nbpreg = 0.0\nlogq = 1.0\n\
            constrained_embedding = true\nembedding = 0\nn_epochs = 10\n";
        let c = parse(text).unwrap();
        assert_eq!((c.layers[0], c.batch_size, c.final_activation().unwrap()), (480, 48, FinalAct::Elu(1.0)));
    }

    #[test]
    fn bad_configs_name_the_key() {
        let unknown = parse("layers = [100]\nlearnin_rate = 0.1").unwrap_err().to_string();
        assert!(unknown.contains("run.toml") && unknown.contains("learnin_rate"), "{unknown}");
        let wrong_type = parse("batch_size = \"big\"").unwrap_err().to_string();
        assert!(wrong_type.contains("line 1, column 14") && wrong_type.contains("batch_size"), "{wrong_type}");
        let loss = parse("loss = \"hinge\"").unwrap_err().to_string();
        assert!(loss.contains("key `loss`: unknown loss `hinge`, expected one of cross-entropy"), "{loss}");
        let act = parse("final_act = \"softplus\"").unwrap_err().to_string();
        assert!(act.contains("key `final_act`"), "{act}");
        let p = parse("dropout_p_hidden = 1.0").unwrap_err().to_string();
        assert!(p.contains("key `dropout_p_hidden`: found 1"), "{p}");
        let m = parse("valid_metric = \"mrr@10\"").unwrap_err().to_string();
        assert!(m.contains("key `valid_metric`: cut-off 10"), "{m}");
    }

    #[test]
    fn every_shipped_run_config_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let model = config_model(&path).unwrap_or_else(|e| panic!("{e}"));
                if crate::rating::RATING_MODELS.contains(&model.as_str()) {
                    crate::rating::RatingConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
                } else if crate::next_item::NEXT_ITEM_MODELS.contains(&model.as_str()) {
                    crate::next_item::NextItemConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
                } else if crate::kt::KT_MODELS.contains(&model.as_str()) {
                    crate::kt::KtConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
                } else {
                    Gru4RecConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
                }
                n += 1;
            }
        }
        assert!(n >= 11, "expected the shipped configs in {}", dir.display());
    }

    #[test]
    fn a_rating_model_in_a_gru4rec_config_is_named() {
        let e = parse("model = \"bst\"").unwrap_err().to_string();
        assert!(e.contains("key `model`") && e.contains("gru4rec"), "{e}");
    }

    #[test]
    fn round_trips_through_toml() {
        let c = parse("layers = [64, 32]\nloss = \"top1-max\"\noptimizer = \"adam\"").unwrap();
        assert_eq!(parse(&c.to_toml()).unwrap(), c);
    }
}
