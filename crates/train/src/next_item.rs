//! Next-item models over a user's whole history: SASRec, the
//! embedding-GRU and the most-popular baseline, trained and evaluated the
//! same way under per-user leave-last-one-out (or any split the dataset
//! was prepared with).
//!
//! Training targets are the training part's events. `train_windows =
//! "shifted"` (SASRec's default) covers them with SASRec's shifted windows,
//! a target at every position; `"every"` (the embedding-GRU's default)
//! gives each target its own window of the `len` events before it, the
//! loss at its last position. The validation part picks the epoch
//! (`valid_metric`, NDCG@10 by default) and stops early; the kept weights
//! are scored on the test part through the shared window evaluation
//! (full ranking; excluded history and sampled negatives only when asked,
//! and then named in the results).
//!
//! ```toml
//! model = "sasrec"        # sasrec | emb-gru | most-popular
//! len = 50
//! embedding = 64
//! loss = "ce"             # ce | bce | sampled-ce
//! ```

use std::time::Instant;

use candle_core::{Device, Tensor};
use seqrec_data::batch::{ShiftedConfig, ShiftedWindows, Targets, Windows, WindowsConfig};
use seqrec_data::dataset::Dataset;
use seqrec_data::rng::{AliasTable, Rng};
use seqrec_data::split::Part;
use seqrec_eval::{RankingMetrics, TieMode};
use seqrec_models::baseline::MostPopular;
use seqrec_models::emb_gru::{EmbGru, EmbGruShape};
use seqrec_models::optim::{Optimizer, OptimizerKind};
use seqrec_models::sasrec::{SasRec, SasRecShape};
use seqrec_models::seq::{Objective, SeqBatch, WindowModel};
use seqrec_models::window_eval::{evaluate_windows, SampledEval, WindowEvalConfig, WindowEvalReport, WindowScorer};
use serde::{Deserialize, Serialize};

use crate::config::{Metric, RunConfig};
use crate::error::{Result, TrainError};
use crate::progress::Progress;
use crate::run::{RunDir, RunInfo};

/// The models a next-item config can name.
pub const NEXT_ITEM_MODELS: [&str; 3] = ["sasrec", "emb-gru", "most-popular"];

/// Every setting of a next-item run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NextItemConfig {
    /// `sasrec`, `emb-gru` or `most-popular`.
    pub model: String,
    /// Window width: the last `len` events are read.
    pub len: usize,
    /// Item embedding width (SASRec: the model width).
    pub embedding: usize,
    /// SASRec: self-attention blocks.
    pub blocks: usize,
    /// SASRec: attention heads.
    pub heads: usize,
    /// SASRec: inner width of the feed-forward layers (absent: `embedding`, as the paper).
    pub ffn_dim: Option<usize>,
    /// Embedding-GRU: hidden width of each stacked GRU layer.
    pub layers: Vec<usize>,
    /// Embedding-GRU: read the window in both directions.
    pub bidirectional: bool,
    /// Drop probability (SASRec: every dropout; GRU: each layer's input).
    pub dropout: f32,
    /// Embedding-GRU: drop probability of the recurrent state.
    pub recurrent_dropout: f32,
    /// `shifted` (a target at every position) or `every` (one window per
    /// target); absent: `shifted` for SASRec, `every` for the embedding-GRU.
    pub train_windows: Option<String>,
    /// Shifted windows: targets between the ends of overlapping windows
    /// (0: `len`, no overlap); each target still counts once, with at least
    /// `len − stride` events before it in its window.
    pub stride: usize,
    /// `ce` (full softmax), `bce` (one negative per target) or `sampled-ce`.
    pub loss: String,
    /// `sampled-ce`: negatives shared by a batch.
    pub n_negatives: usize,
    /// `sampled-ce`: negatives drawn by training count^alpha (0: uniform).
    pub sample_alpha: f64,
    /// `sampled-ce`: subtract log q from every score (logQ correction).
    pub logq: bool,
    /// `adam` (default), `adamw` or `nadam`.
    pub optimizer: OptimizerKind,
    /// Learning rate.
    pub learning_rate: f32,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f32,
    /// Gradient clipping by global norm (0: off).
    pub clip_norm: f64,
    /// `f32`; `f16` / `bf16` need a CUDA device.
    pub dtype: String,
    /// Training windows per step.
    pub batch_size: usize,
    /// Windows per evaluation batch.
    pub eval_batch_size: usize,
    /// Epochs at most.
    pub n_epochs: usize,
    /// Validation passes without improvement before stopping (0: never).
    pub patience: usize,
    /// Validate every this many epochs.
    pub eval_every: usize,
    /// Validation metric choosing the kept weights, e.g. `ndcg@10`.
    pub valid_metric: String,
    /// Cut-offs of HR/MRR/NDCG.
    pub cutoffs: Vec<usize>,
    /// Placement of a target among tied scores.
    pub tie_mode: TieMode,
    /// Remove the user's earlier items from the candidates (reported).
    pub exclude_history: bool,
    /// Rank against sampled negatives instead of every item (reported loudly).
    pub sampled_eval: Option<SampledEval>,
    /// Seed of initialisation, shuffling, negatives and dropout.
    pub seed: u64,
}

impl Default for NextItemConfig {
    fn default() -> Self {
        NextItemConfig {
            model: "sasrec".into(),
            len: 50,
            embedding: 64,
            blocks: 2,
            heads: 1,
            ffn_dim: None,
            layers: vec![100],
            bidirectional: false,
            dropout: 0.2,
            recurrent_dropout: 0.0,
            train_windows: None,
            stride: 0,
            loss: "ce".into(),
            n_negatives: 256,
            sample_alpha: 0.5,
            logq: true,
            optimizer: OptimizerKind::Adam,
            learning_rate: 0.001,
            weight_decay: 0.0,
            clip_norm: 0.0,
            dtype: "f32".into(),
            batch_size: 128,
            eval_batch_size: 512,
            n_epochs: 200,
            patience: 10,
            eval_every: 1,
            valid_metric: "ndcg@10".into(),
            cutoffs: vec![5, 10, 20],
            tie_mode: TieMode::Median,
            exclude_history: false,
            sampled_eval: None,
            seed: 42,
        }
    }
}

impl RunConfig for NextItemConfig {
    /// Checks every value; the error names the key and what was expected.
    ///
    /// # Errors
    /// The first bad key, as a message.
    fn check(&self) -> std::result::Result<(), String> {
        if !NEXT_ITEM_MODELS.contains(&self.model.as_str()) {
            return Err(format!("key `model`: unknown model `{}`, expected one of {NEXT_ITEM_MODELS:?}", self.model));
        }
        for (key, v) in [
            ("len", self.len),
            ("batch_size", self.batch_size),
            ("eval_batch_size", self.eval_batch_size),
            ("eval_every", self.eval_every),
        ] {
            if v == 0 {
                return Err(format!("key `{key}`: found 0, expected a positive number"));
            }
        }
        if !["ce", "bce", "sampled-ce"].contains(&self.loss.as_str()) {
            return Err(format!("key `loss`: unknown loss `{}`, expected `ce`, `bce` or `sampled-ce`", self.loss));
        }
        if self.loss == "sampled-ce" && self.n_negatives == 0 {
            return Err("key `n_negatives`: found 0, expected at least 1 for `sampled-ce`".into());
        }
        if !(self.sample_alpha.is_finite() && self.sample_alpha >= 0.0) {
            return Err(format!("key `sample_alpha`: found {}, expected a number >= 0", self.sample_alpha));
        }
        if !(self.clip_norm.is_finite() && self.clip_norm >= 0.0) {
            return Err(format!("key `clip_norm`: found {}, expected a number >= 0 (0: off)", self.clip_norm));
        }
        match self.dtype.as_str() {
            "f32" => {}
            "f16" | "bf16" => {
                return Err(format!(
                    "key `dtype`: `{}` needs a CUDA device; this build trains on the CPU in f32",
                    self.dtype
                ))
            }
            other => return Err(format!("key `dtype`: unknown `{other}`, expected `f32`, `f16` or `bf16`")),
        }
        let windows = self.windows();
        if !["shifted", "every"].contains(&windows) {
            return Err(format!("key `train_windows`: unknown `{windows}`, expected `shifted` or `every`"));
        }
        if self.stride > self.len {
            return Err(format!(
                "key `stride`: found {}, expected at most `len` ({}); 0 means `len`",
                self.stride, self.len
            ));
        }
        if self.bidirectional && windows == "shifted" {
            return Err("key `bidirectional`: a bidirectional GRU would read its own targets in shifted windows; \
                        set `train_windows = \"every\"`"
                .into());
        }
        Metric::parse(&self.valid_metric).ok_or_else(|| {
            format!("key `valid_metric`: unknown `{}`, expected e.g. `ndcg@10`, `hr@10`, `mrr@10`", self.valid_metric)
        })?;
        if self.cutoffs.is_empty() || self.cutoffs.contains(&0) {
            return Err(format!("key `cutoffs`: found {:?}, expected positive cut-offs", self.cutoffs));
        }
        let k = Metric::parse(&self.valid_metric).map_or(0, |m| m.k());
        if !self.cutoffs.contains(&k) {
            return Err(format!("key `valid_metric`: cut-off {k} is not among `cutoffs` {:?}", self.cutoffs));
        }
        if let Some(s) = &self.sampled_eval {
            if s.n == 0 {
                return Err("key `sampled_eval.n`: found 0, expected at least 1 negative".into());
            }
        }
        Optimizer::new(self.optimizer, self.learning_rate, 0.0)
            .and_then(|o| o.with_weight_decay(self.weight_decay))
            .map_err(|e| e.to_string())?;
        match self.model.as_str() {
            "sasrec" => self.sasrec_shape(2).check().map_err(|e| e.to_string())?,
            "emb-gru" => self.gru_shape(2).check().map_err(|e| e.to_string())?,
            _ => {}
        }
        Ok(())
    }
}

impl NextItemConfig {
    /// The training windows in use.
    pub fn windows(&self) -> &str {
        match (&self.train_windows, self.model.as_str()) {
            (Some(w), _) => w,
            (None, "emb-gru") => "every",
            (None, _) => "shifted",
        }
    }

    fn sasrec_shape(&self, n_ids: usize) -> SasRecShape {
        SasRecShape {
            n_ids,
            len: self.len,
            embedding: self.embedding,
            blocks: self.blocks,
            heads: self.heads,
            ffn_dim: self.ffn_dim.unwrap_or(self.embedding),
            dropout: self.dropout,
        }
    }

    fn gru_shape(&self, n_ids: usize) -> EmbGruShape {
        EmbGruShape {
            n_ids,
            len: self.len,
            embedding: self.embedding,
            layers: self.layers.clone(),
            bidirectional: self.bidirectional,
            dropout: self.dropout,
            recurrent_dropout: self.recurrent_dropout,
        }
    }

    fn eval_config(&self) -> WindowEvalConfig {
        WindowEvalConfig {
            ks: self.cutoffs.clone(),
            tie_mode: self.tie_mode,
            exclude_history: self.exclude_history,
            sampled: self.sampled_eval.clone(),
            batch_size: self.eval_batch_size,
        }
    }
}

/// One epoch's line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NextItemEpoch {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss per step.
    pub loss: f64,
    /// Training targets.
    pub targets: usize,
    /// Seconds of training.
    pub seconds: f64,
    /// Validation metrics (epochs that validated).
    pub valid: Option<RankingMetrics>,
    /// Seconds of the validation pass.
    pub valid_seconds: Option<f64>,
}

/// What a next-item run produced (`results.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NextItemOutcome {
    /// Model name.
    pub model: String,
    /// The split the dataset was prepared with (its report).
    pub split: serde_json::Value,
    /// The evaluation protocol in words (loud when sampled).
    pub protocol: String,
    /// The run directory.
    pub run_dir: std::path::PathBuf,
    /// Epochs trained.
    pub epochs: usize,
    /// Epoch of the kept weights.
    pub best_epoch: usize,
    /// Validation metrics of the kept weights.
    pub valid: Option<RankingMetrics>,
    /// Test metrics of the kept weights.
    pub test: Option<RankingMetrics>,
    /// Test metrics of the kept weights with the user's earlier items removed
    /// from the candidates (RecBole's full-ranking default), when the
    /// configured protocol does not already remove them.
    pub test_excluding_history: Option<RankingMetrics>,
    /// Mean seconds per training epoch.
    pub seconds_per_epoch: f64,
    /// Seconds of one full evaluation pass over the test targets.
    pub eval_seconds: f64,
    /// Training targets per epoch.
    pub train_targets: usize,
    /// Users (sequences) with no training target (fewer than two training
    /// events): they teach nothing and are skipped in training.
    pub users_without_training_target: usize,
    /// Trainable parameters.
    pub parameters: usize,
}

/// Options of a next-item run.
#[derive(Debug, Clone)]
pub struct NextItemOptions {
    /// Device of the model.
    pub device: Device,
    /// Draw a progress bar.
    pub progress: bool,
}

fn evaluate(
    model: &mut dyn WindowScorer,
    data: &Dataset,
    part: Part,
    cfg: &NextItemConfig,
) -> Result<WindowEvalReport> {
    Ok(evaluate_windows(&data.events.store, &data.events.parts, part, model, &cfg.eval_config())?)
}

/// Test metrics with earlier items excluded, unless the configured protocol
/// already excludes them or samples negatives.
fn test_excluding_history(
    model: &mut dyn WindowScorer,
    data: &Dataset,
    cfg: &NextItemConfig,
) -> Result<Option<RankingMetrics>> {
    if cfg.exclude_history || cfg.sampled_eval.is_some() || !has_part(data, Part::Test) {
        return Ok(None);
    }
    let ecfg = WindowEvalConfig { exclude_history: true, ..cfg.eval_config() };
    Ok(Some(evaluate_windows(&data.events.store, &data.events.parts, Part::Test, model, &ecfg)?.metrics))
}

fn has_part(data: &Dataset, part: Part) -> bool {
    data.events.parts.contains(&part)
}

/// The training batches of an epoch, from either batcher.
enum Batches<'a> {
    Shifted(ShiftedWindows<'a>),
    Every(Windows<'a>),
}

impl Batches<'_> {
    fn next_into(&mut self, out: &mut SeqBatch) -> bool {
        match self {
            Batches::Shifted(w) => w.next_batch().map(|b| out.from_shifted(b)).is_some(),
            Batches::Every(w) => w.next_batch().map(|b| out.from_windows(b)).is_some(),
        }
    }

    fn rewind(&mut self) {
        match self {
            Batches::Shifted(w) => w.rewind(),
            Batches::Every(w) => w.rewind(),
        }
    }
}

/// Draws the negatives an objective needs.
struct Negatives {
    n_ids: usize,
    n: usize,
    table: AliasTable,
    log_q: Vec<f32>,
}

impl Negatives {
    fn new(data: &Dataset, n_ids: usize, cfg: &NextItemConfig) -> Result<Self> {
        let pop = MostPopular::fit(&data.events.store, &data.events.parts, n_ids)?;
        // count^alpha over the items seen in training (alpha 0: all items alike).
        let mut w: Vec<f64> = pop
            .support()
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                if i == 0 {
                    0.0
                } else if cfg.sample_alpha == 0.0 {
                    1.0
                } else {
                    (c as f64).powf(cfg.sample_alpha)
                }
            })
            .collect();
        if w.iter().sum::<f64>() <= 0.0 {
            w.iter_mut().skip(1).for_each(|x| *x = 1.0);
        }
        let sum: f64 = w.iter().sum();
        let log_q = w.iter().map(|&x| if x > 0.0 { (x / sum).ln() as f32 } else { -1e9 }).collect();
        Ok(Negatives { n_ids, n: cfg.n_negatives, table: AliasTable::new(&w), log_q })
    }

    /// One uniform negative per target position, never the target or an
    /// item of the same window (SASRec's BCE).
    fn per_target(&self, batch: &SeqBatch, rng: &mut Rng) -> Vec<u32> {
        let mut out = Vec::new();
        for (i, &t) in batch.targets.iter().enumerate() {
            if t == 0 {
                continue;
            }
            let row = i / batch.len;
            let window = &batch.inputs[row * batch.len..(row + 1) * batch.len];
            let mut x = t;
            for _ in 0..64 {
                x = 1 + rng.below(self.n_ids as u64 - 1) as u32;
                if x != t && !window.contains(&x) {
                    break;
                }
            }
            out.push(x);
        }
        out
    }

    fn shared(&self, rng: &mut Rng) -> Vec<u32> {
        (0..self.n).map(|_| self.table.sample(rng) as u32).collect()
    }
}

fn build_model(cfg: &NextItemConfig, n_ids: usize, dev: &Device) -> Result<Box<dyn WindowModel>> {
    Ok(match cfg.model.as_str() {
        "sasrec" => Box::new(SasRec::new(&cfg.sasrec_shape(n_ids), cfg.seed, dev)?),
        "emb-gru" => Box::new(EmbGru::new(&cfg.gru_shape(n_ids), cfg.seed, dev)?),
        other => return Err(TrainError::Invalid(format!("no trainable next-item model `{other}`"))),
    })
}

/// One optimiser step of an autograd model: the gradient of `loss` for each
/// named parameter, clipped to the global norm `clip_norm` (0: off), applied
/// as a dense update.
///
/// # Errors
/// A failing op.
pub(crate) fn descend(
    loss: &Tensor,
    params: &seqrec_models::nn::Params,
    names: &[String],
    clip_norm: f64,
    opt: &mut Optimizer,
) -> Result<()> {
    let grads = loss.backward()?;
    let vars = params.vars();
    let mut named: Vec<(String, Tensor)> = Vec::with_capacity(names.len());
    for name in names {
        if let Some(g) = grads.get(vars[name].as_tensor()) {
            named.push((name.clone(), g.clone()));
        }
    }
    if clip_norm > 0.0 {
        clip_gradients(&mut named, clip_norm)?;
    }
    opt.begin_step();
    for (name, g) in &named {
        opt.dense(name, vars[name].as_tensor(), g)?;
    }
    Ok(())
}

/// Scales the gradients so that their global L2 norm is at most `max`;
/// returns the norm before clipping.
fn clip_gradients(grads: &mut [(String, Tensor)], max: f64) -> Result<f64> {
    let mut sq = 0f64;
    for (_, g) in grads.iter() {
        sq += f64::from(g.sqr()?.sum_all()?.to_scalar::<f32>()?);
    }
    let norm = sq.sqrt();
    if max > 0.0 && norm > max {
        let s = max / (norm + 1e-6);
        for (_, g) in grads.iter_mut() {
            *g = (&*g * s)?;
        }
    }
    Ok(norm)
}

/// Trains the configured model on `data` into `run`, keeps the weights of
/// the best validation metric and scores them on the test part.
///
/// # Errors
/// Bad settings, a dataset without training targets, I/O, model errors.
pub fn train_next_item(
    cfg: &NextItemConfig,
    data: &Dataset,
    run: &RunDir,
    opts: &NextItemOptions,
) -> Result<NextItemOutcome> {
    cfg.check().map_err(|m| TrainError::Invalid(format!("config: {m}")))?;
    seqrec_models::gru4rec::pin_thread_count();
    let n_ids = data
        .vocabs
        .get("item")
        .ok_or_else(|| TrainError::Invalid(format!("{}: the dataset has no item vocabulary", data.dir.display())))?
        .n_ids();
    let info = RunInfo {
        model: cfg.model.clone(),
        dataset: data.dir.clone(),
        dataset_name: data.meta.name.clone(),
        input_hash: data.meta.input_hash.clone(),
        n_ids,
        version: env!("CARGO_PKG_VERSION").into(),
    };
    run.write_json("run.json", &info)?;
    run.write_text("config.toml", &cfg.to_toml())?;
    run.truncate_metrics(0)?;
    let metric = Metric::parse(&cfg.valid_metric).expect("checked");
    let (store, parts) = (&data.events.store, &data.events.parts);

    if cfg.model == "most-popular" {
        let mut pop = MostPopular::fit(store, parts, n_ids)?;
        let valid = if has_part(data, Part::Valid) { Some(evaluate(&mut pop, data, Part::Valid, cfg)?) } else { None };
        let t = Instant::now();
        let test = if has_part(data, Part::Test) { Some(evaluate(&mut pop, data, Part::Test, cfg)?) } else { None };
        let eval_seconds = t.elapsed().as_secs_f64();
        let test_excluding_history = test_excluding_history(&mut pop, data, cfg)?;
        let outcome = NextItemOutcome {
            model: cfg.model.clone(),
            split: data.meta.split.clone(),
            protocol: cfg.eval_config().protocol(),
            run_dir: run.dir.clone(),
            epochs: 0,
            best_epoch: 0,
            valid: valid.map(|r| r.metrics),
            test: test.map(|r| r.metrics),
            test_excluding_history,
            seconds_per_epoch: 0.0,
            eval_seconds,
            train_targets: 0,
            users_without_training_target: 0,
            parameters: 0,
        };
        run.write_json("results.json", &outcome)?;
        return Ok(outcome);
    }

    let select = [Part::Train];
    let targets = Targets::of(parts, &select);
    let mut batches = match cfg.windows() {
        "shifted" => Batches::Shifted(ShiftedWindows::new(
            store,
            targets,
            &ShiftedConfig {
                len: cfg.len,
                stride: cfg.stride,
                batch_size: cfg.batch_size,
                shuffle: true,
                seed: cfg.seed,
            },
        )?),
        _ => Batches::Every(Windows::new(
            store,
            targets,
            &WindowsConfig {
                len: cfg.len,
                batch_size: cfg.batch_size,
                skip_first: true,
                shuffle: true,
                seed: cfg.seed,
            },
        )?),
    };
    let per_user: Vec<usize> =
        (0..store.n_seq()).map(|s| store.range(s).skip(1).filter(|&e| parts[e] == Part::Train).count()).collect();
    let n_train: usize = per_user.iter().sum();
    let users_without_training_target = per_user.iter().filter(|&&n| n == 0).count();
    if users_without_training_target > 0 {
        tracing::warn!(
            "{users_without_training_target} users have fewer than two training events: no training target, skipped"
        );
    }
    if n_train == 0 {
        return Err(TrainError::Invalid(format!(
            "{}: no training targets (every user needs at least two training events)",
            data.dir.display()
        )));
    }
    let has_valid = has_part(data, Part::Valid);
    let mut model = build_model(cfg, n_ids, &opts.device)?;
    let parameters: usize = model.params().vars().values().map(|v| v.elem_count()).sum();
    let mut opt = Optimizer::new(cfg.optimizer, cfg.learning_rate, 0.0)?.with_weight_decay(cfg.weight_decay)?;
    let names: Vec<String> = model.params().vars().keys().cloned().collect();
    let negatives = Negatives::new(data, n_ids, cfg)?;
    let mut batch = SeqBatch::default();
    let (mut step, mut best, mut bad_evals, mut epochs) = (0u64, None::<(f64, usize)>, 0usize, 0usize);
    let mut seconds = Vec::new();
    for epoch in 1..=cfg.n_epochs {
        if epoch > 1 {
            batches.rewind();
        }
        let mut progress = Progress::new(format!("epoch {epoch}"), n_train, opts.progress);
        let (mut loss_sum, mut steps, mut seen) = (0f64, 0usize, 0usize);
        while batches.next_into(&mut batch) {
            let n_targets = batch.targets.iter().filter(|&&t| t != 0).count();
            if n_targets == 0 {
                continue;
            }
            let mut rng = Rng::fork(cfg.seed ^ 0x0005_E017, step);
            let per_target;
            let shared;
            let objective = match cfg.loss.as_str() {
                "bce" => {
                    per_target = negatives.per_target(&batch, &mut rng);
                    Objective::Bce { negatives: &per_target }
                }
                "sampled-ce" => {
                    shared = negatives.shared(&mut rng);
                    Objective::Sampled { negatives: &shared, log_q: cfg.logq.then_some(negatives.log_q.as_slice()) }
                }
                _ => Objective::Full,
            };
            let loss = model.loss(&batch, objective, &mut rng)?;
            let l = loss.to_scalar::<f32>()?;
            if !l.is_finite() {
                return Err(TrainError::Invalid(format!(
                    "epoch {epoch}: the loss became {l} (try a lower learning_rate or set clip_norm)"
                )));
            }
            descend(&loss, model.params(), &names, cfg.clip_norm, &mut opt)?;
            step += 1;
            steps += 1;
            loss_sum += f64::from(l);
            seen += n_targets;
            progress.add(n_targets);
        }
        let secs = progress.finish();
        seconds.push(secs);
        epochs = epoch;
        let validate = has_valid && (epoch % cfg.eval_every == 0 || epoch == cfg.n_epochs);
        let (valid_m, valid_seconds) = if validate {
            let t = Instant::now();
            let r = evaluate(model.as_mut(), data, Part::Valid, cfg)?;
            (Some(r.metrics), Some(t.elapsed().as_secs_f64()))
        } else {
            (None, None)
        };
        let line = NextItemEpoch {
            epoch,
            loss: loss_sum / steps.max(1) as f64,
            targets: seen,
            seconds: secs,
            valid: valid_m.clone(),
            valid_seconds,
        };
        let value = valid_m.as_ref().and_then(|m| metric.value(m));
        tracing::info!(
            "{} epoch {epoch}: loss {:.4}, {:.1} s{}",
            cfg.model,
            line.loss,
            secs,
            value.map(|v| format!(", valid {} {v:.4}", cfg.valid_metric)).unwrap_or_default()
        );
        run.append_metrics(&serde_json::to_value(&line).map_err(|e| TrainError::Invalid(e.to_string()))?)?;
        if !validate && has_valid {
            continue;
        }
        let improved = match (value, best) {
            (None, _) => true,
            (Some(v), None) => v.is_finite(),
            (Some(v), Some((b, _))) => v > b,
        };
        if improved {
            best = Some((value.unwrap_or(f64::NAN), epoch));
            bad_evals = 0;
            run.save_tensors("best.safetensors", &model.params().named_tensors())?;
        } else {
            bad_evals += 1;
            if cfg.patience > 0 && bad_evals >= cfg.patience {
                tracing::info!("early stopping after epoch {epoch}: no improvement in {} validations", cfg.patience);
                break;
            }
        }
    }
    let kept = run.load_tensors("best.safetensors", &opts.device)?;
    model.params_mut().load(&kept)?;
    let valid = if has_valid { Some(evaluate(model.as_mut(), data, Part::Valid, cfg)?.metrics) } else { None };
    let t = Instant::now();
    let test =
        if has_part(data, Part::Test) { Some(evaluate(model.as_mut(), data, Part::Test, cfg)?.metrics) } else { None };
    let eval_seconds = t.elapsed().as_secs_f64();
    let test_excluding_history = test_excluding_history(model.as_mut(), data, cfg)?;
    let outcome = NextItemOutcome {
        model: cfg.model.clone(),
        split: data.meta.split.clone(),
        protocol: cfg.eval_config().protocol(),
        run_dir: run.dir.clone(),
        epochs,
        best_epoch: best.map_or(epochs, |(_, e)| e),
        valid,
        test,
        test_excluding_history,
        seconds_per_epoch: seconds.iter().sum::<f64>() / seconds.len().max(1) as f64,
        eval_seconds,
        train_targets: n_train,
        users_without_training_target,
        parameters,
    };
    run.write_json("results.json", &outcome)?;
    Ok(outcome)
}
