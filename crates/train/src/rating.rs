//! Rating prediction from histories: the median baseline, matrix
//! factorisation with biases and BST, trained and evaluated the same way.
//!
//! Every event of the split's training part is a training target (the first
//! event of a user too, with an empty history); the validation part picks
//! the best epoch (MAE) and stops early; the kept weights are scored on the
//! test part. MAE, MSE and RMSE; the results name the split that was used
//! (leave-last-one-out lets a model see other users' later ratings, a
//! global time cut does not).
//!
//! ```toml
//! model = "bst"           # median | mf | bst
//! len = 10                # 9 history events + the target
//! embedding = 120
//! learning_rate = 0.01    # the one-cycle peak
//! ```

use std::time::Instant;

use arrow_array::{Array, ListArray, RecordBatch, UInt32Array};
use candle_core::{Device, Tensor};
use seqrec_data::batch::{Targets, WindowBatch, Windows, WindowsConfig};
use seqrec_data::dataset::Dataset;
use seqrec_data::rng::Rng;
use seqrec_data::split::Part;
use seqrec_data::SequenceStore;
use seqrec_eval::{RegressionAccumulator, RegressionMetrics};
use seqrec_models::bst::{Bst, BstShape};
use seqrec_models::optim::{Optimizer, OptimizerKind};
use seqrec_models::rating::{median_rating, Mf, MfShape, OutputRange, RatingBatch, RatingModel};
use serde::{Deserialize, Serialize};

use crate::config::RunConfig;
use crate::error::{Result, TrainError};
use crate::progress::Progress;
use crate::run::{RunDir, RunInfo};
use crate::schedule::{OneCycle, Schedule};

/// Every setting of a rating run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RatingConfig {
    /// `median`, `mf` or `bst`.
    pub model: String,
    /// BST positions: `len − 1` history events plus the target.
    pub len: usize,
    /// BST embedding size (model width).
    pub embedding: usize,
    /// MF factors per user and item.
    pub n_factors: usize,
    /// MF: standard deviation of the initial factors.
    pub init_std: f64,
    /// BST attention heads.
    pub heads: usize,
    /// BST encoder layers.
    pub layers: usize,
    /// BST feed-forward width (PyTorch's default 2048).
    pub ffn_dim: usize,
    /// BST encoder dropout.
    pub dropout: f32,
    /// BST MLP hidden widths.
    pub mlp: Vec<usize>,
    /// BST dropout after the MLP's second hidden layer.
    pub mlp_dropout: f32,
    /// BST user features: categorical columns of the users table (absent:
    /// every categorical column; `[]`: none).
    pub user_features: Option<Vec<String>>,
    /// BST: list column of the items table whose values (genres) are
    /// embedded and averaged for the target movie (absent: off).
    pub genres: Option<String>,
    /// Predictions squashed into `[lo, hi]` by a scaled sigmoid (MF: absent = raw).
    pub output_range: Option<[f32; 2]>,
    /// `adamw` (default), `adam` or `adagrad`.
    pub optimizer: OptimizerKind,
    /// Learning rate (the peak of a one-cycle schedule).
    pub learning_rate: f32,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f32,
    /// `one-cycle` or `constant`.
    pub schedule: String,
    /// Training loss: `mse` (mean squared error, the default: predicts the
    /// conditional mean, what RMSE rewards) or `mae` (mean absolute error:
    /// predicts the conditional median, what MAE rewards).
    pub loss: String,
    /// Training rows per step.
    pub batch_size: usize,
    /// Rows per evaluation batch.
    pub eval_batch_size: usize,
    /// Epochs at most (the one-cycle schedule spans them all).
    pub n_epochs: usize,
    /// Epochs without an improvement of validation MAE before stopping (0: never).
    pub patience: usize,
    /// Smallest decrease of validation MAE that counts as an improvement.
    pub min_delta: f64,
    /// Seed of initialisation, shuffling and dropout.
    pub seed: u64,
}

impl Default for RatingConfig {
    fn default() -> Self {
        RatingConfig {
            model: "bst".into(),
            len: 10,
            embedding: 120,
            n_factors: 120,
            init_std: 0.1,
            heads: 12,
            layers: 1,
            ffn_dim: 2048,
            dropout: 0.1,
            mlp: vec![1024, 512, 256],
            mlp_dropout: 0.2,
            user_features: None,
            genres: None,
            output_range: Some([0.5, 5.5]),
            optimizer: OptimizerKind::AdamW,
            learning_rate: 0.01,
            weight_decay: 0.01,
            schedule: "one-cycle".into(),
            loss: "mse".into(),
            batch_size: 512,
            eval_batch_size: 4096,
            n_epochs: 10,
            patience: 2,
            min_delta: 0.001,
            seed: 42,
        }
    }
}

/// The models a rating config can name.
pub const RATING_MODELS: [&str; 3] = ["median", "mf", "bst"];

/// The training losses a rating config can name.
pub const RATING_LOSSES: [&str; 2] = ["mse", "mae"];

impl RunConfig for RatingConfig {
    /// Checks every value; the error names the key and what was expected.
    ///
    /// # Errors
    /// The first bad key, as a message.
    fn check(&self) -> std::result::Result<(), String> {
        if !RATING_MODELS.contains(&self.model.as_str()) {
            return Err(format!("key `model`: unknown model `{}`, expected one of {RATING_MODELS:?}", self.model));
        }
        for (key, v) in [("batch_size", self.batch_size), ("eval_batch_size", self.eval_batch_size)] {
            if v == 0 {
                return Err(format!("key `{key}`: found 0, expected a positive number"));
            }
        }
        if self.batch_size < 2 {
            return Err("key `batch_size`: found 1, expected at least 2 (batch norm)".into());
        }
        if !["one-cycle", "constant"].contains(&self.schedule.as_str()) {
            return Err(format!(
                "key `schedule`: unknown schedule `{}`, expected `one-cycle` or `constant`",
                self.schedule
            ));
        }
        if !RATING_LOSSES.contains(&self.loss.as_str()) {
            return Err(format!("key `loss`: unknown loss `{}`, expected one of {RATING_LOSSES:?}", self.loss));
        }
        if let Some([lo, hi]) = self.output_range {
            if !(lo.is_finite() && hi.is_finite() && lo < hi) {
                return Err(format!("key `output_range`: [{lo}, {hi}] is not a range lo < hi"));
            }
        }
        if !(self.init_std.is_finite() && self.init_std >= 0.0) {
            return Err(format!("key `init_std`: found {}, expected a number >= 0", self.init_std));
        }
        if self.n_factors == 0 {
            return Err("key `n_factors`: found 0, expected a positive number".into());
        }
        Optimizer::new(self.optimizer, self.learning_rate, 0.0)
            .and_then(|o| o.with_weight_decay(self.weight_decay))
            .map_err(|e| e.to_string())?;
        if self.model == "bst" {
            let mut shape = self.bst_shape(&Inputs::default());
            shape.n_users = 1;
            shape.check().map_err(|e| e.to_string())?;
            if self.output_range.is_none() {
                return Err("key `output_range`: BST predicts through a scaled sigmoid and needs a range".into());
            }
        }
        Ok(())
    }
}

impl RatingConfig {
    fn range(&self) -> Option<OutputRange> {
        self.output_range.map(|[lo, hi]| OutputRange { lo, hi })
    }

    fn bst_shape(&self, inputs: &Inputs) -> BstShape {
        BstShape {
            n_users: inputs.n_users,
            n_items: inputs.n_items,
            n_ratings: inputs.rating_values.len() + 1,
            len: self.len,
            embedding: self.embedding,
            heads: self.heads,
            layers: self.layers,
            ffn_dim: self.ffn_dim,
            dropout: self.dropout,
            mlp: self.mlp.clone(),
            mlp_dropout: self.mlp_dropout,
            user_features: inputs.user_features.iter().map(|f| f.n_ids).collect(),
            n_genres: inputs.genres.as_ref().map_or(0, |g| g.n_ids),
            range: self.range().unwrap_or(OutputRange { lo: 0.5, hi: 5.5 }),
        }
    }

    /// History events a batch carries (BST: `len − 1`; MF and median: none).
    fn history_len(&self) -> usize {
        if self.model == "bst" {
            self.len - 1
        } else {
            0
        }
    }
}

/// A categorical user feature: value id per user id.
#[derive(Debug, Clone, Default)]
struct UserFeature {
    name: String,
    n_ids: usize,
    by_user: Vec<u32>,
}

/// Genre ids per item id.
#[derive(Debug, Clone, Default)]
struct Genres {
    n_ids: usize,
    by_item: Vec<Vec<u32>>,
}

/// What the models read besides the events.
#[derive(Debug, Clone, Default)]
struct Inputs {
    n_users: usize,
    n_items: usize,
    /// Distinct rating values, sorted; a value's id is its index + 1.
    rating_values: Vec<f32>,
    user_features: Vec<UserFeature>,
    genres: Option<Genres>,
}

/// A prepared dataset's side table (`users`, `items`, `questions`, `lectures`), if it has one.
pub(crate) fn side_table(data: &Dataset, name: &str) -> Result<Option<RecordBatch>> {
    match data.meta.side_tables.get(name) {
        Some(file) => Ok(Some(seqrec_data::persist::read_parquet(&data.dir.join(file))?)),
        None => Ok(None),
    }
}

impl Inputs {
    fn of(cfg: &RatingConfig, data: &Dataset) -> Result<Self> {
        let store = &data.events.store;
        let ratings = store.ratings.as_ref().ok_or_else(|| {
            TrainError::Invalid(format!(
                "{}: the dataset has no ratings (map a `rating` column in its recipe)",
                data.dir.display()
            ))
        })?;
        let mut rating_values: Vec<f32> = ratings.clone();
        rating_values.sort_by(f32::total_cmp);
        rating_values.dedup();
        let n_users = data.vocabs.get("seq").map_or(0, |v| v.n_ids());
        let n_items = data.vocabs.get("item").map_or(0, |v| v.n_ids());
        let mut inputs = Inputs { n_users, n_items, rating_values, ..Default::default() };
        if cfg.model != "bst" {
            return Ok(inputs);
        }
        let users = side_table(data, "users")?;
        let wanted: Vec<String> = match (&cfg.user_features, &users) {
            (Some(list), _) => list.clone(),
            (None, Some(t)) => t
                .schema()
                .fields()
                .iter()
                .filter(|f| f.name() != "id" && f.data_type() == &arrow_schema::DataType::UInt32)
                .map(|f| f.name().clone())
                .collect(),
            (None, None) => Vec::new(),
        };
        for name in wanted {
            let t = users.as_ref().ok_or_else(|| {
                TrainError::Invalid(format!(
                    "config key `user_features`: `{name}` asked for, but {} has no users table",
                    data.dir.display()
                ))
            })?;
            let col =
                t.column_by_name(&name).and_then(|c| c.as_any().downcast_ref::<UInt32Array>()).ok_or_else(|| {
                    TrainError::Invalid(format!(
                        "config key `user_features`: the users table has no categorical column `{name}`"
                    ))
                })?;
            let n_ids = data.vocabs.get(&format!("users.{name}")).map_or(0, |v| v.n_ids()).max(1);
            // Table row r is user id r + 1; id 0 (padding) has no features.
            let mut by_user = vec![0u32; n_users.max(col.len() + 1)];
            for (r, v) in col.iter().enumerate() {
                by_user[r + 1] = v.unwrap_or(0);
            }
            inputs.user_features.push(UserFeature { name, n_ids, by_user });
        }
        if let Some(name) = &cfg.genres {
            let items = side_table(data, "items")?.ok_or_else(|| {
                TrainError::Invalid(format!("config key `genres`: {} has no items table", data.dir.display()))
            })?;
            let col =
                items.column_by_name(name).and_then(|c| c.as_any().downcast_ref::<ListArray>()).ok_or_else(|| {
                    TrainError::Invalid(format!("config key `genres`: the items table has no list column `{name}`"))
                })?;
            let mut by_item = vec![Vec::new(); n_items.max(col.len() + 1)];
            for r in 0..col.len() {
                if col.is_valid(r) {
                    let v = col.value(r);
                    let ids = v.as_any().downcast_ref::<UInt32Array>().ok_or_else(|| {
                        TrainError::Invalid(format!("items column `{name}` does not hold encoded values"))
                    })?;
                    by_item[r + 1] = ids.values().to_vec();
                }
            }
            let n_ids = data.vocabs.get(&format!("items.{name}")).map_or(0, |v| v.n_ids()).max(1);
            inputs.genres = Some(Genres { n_ids, by_item });
        }
        Ok(inputs)
    }

    fn rating_id(&self, r: f32) -> u32 {
        self.rating_values.binary_search_by(|v| v.total_cmp(&r)).map_or(0, |i| i as u32 + 1)
    }

    /// Fills `out` from a window batch; without `history` (MF) the history
    /// columns are left empty.
    fn batch_into(&self, store: &SequenceStore, w: &WindowBatch, history: bool, out: &mut RatingBatch) {
        let n = w.rows();
        out.users.clear();
        out.users.extend(w.seq_index.iter().map(|&s| store.seq_ids[s]));
        out.user_features.resize(self.user_features.len(), Vec::new());
        for (dst, f) in out.user_features.iter_mut().zip(&self.user_features) {
            dst.clear();
            dst.extend(out.users.iter().map(|&u| f.by_user.get(u as usize).copied().unwrap_or(0)));
        }
        out.history.clear();
        out.history_ratings.clear();
        out.history_len = 0;
        if history {
            out.history_len = w.len;
            out.history.extend_from_slice(&w.history);
            out.history_ratings.extend(w.history.iter().zip(&w.history_ratings).map(|(&i, &r)| {
                if i == 0 {
                    0
                } else {
                    self.rating_id(r)
                }
            }));
        }
        out.targets.clear();
        out.targets.extend_from_slice(&w.targets);
        out.ratings.clear();
        out.ratings.extend_from_slice(&w.target_ratings);
        out.genres.clear();
        if let Some(g) = &self.genres {
            out.genres.resize(n * g.n_ids, 0.0);
            for (row, &t) in w.targets.iter().enumerate() {
                let ids = g.by_item.get(t as usize).map_or(&[][..], |v| v.as_slice());
                for &id in ids {
                    out.genres[row * g.n_ids + id as usize] += 1.0 / ids.len() as f32;
                }
            }
        }
    }
}

/// One epoch's line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RatingEpoch {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss (the config's `loss`).
    pub loss: f64,
    /// Training rows.
    pub events: usize,
    /// Seconds of training.
    pub seconds: f64,
    /// Validation metrics.
    pub valid: Option<RegressionMetrics>,
    /// Learning rate at the end of the epoch.
    pub lr: f64,
}

/// What a rating run produced (`results.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RatingOutcome {
    /// Model name.
    pub model: String,
    /// The split the dataset was prepared with (its report).
    pub split: serde_json::Value,
    /// The run directory.
    pub run_dir: std::path::PathBuf,
    /// Epochs trained.
    pub epochs: usize,
    /// Epoch of the kept weights.
    pub best_epoch: usize,
    /// Validation metrics of the kept weights.
    pub valid: Option<RegressionMetrics>,
    /// Test metrics of the kept weights.
    pub test: Option<RegressionMetrics>,
    /// Mean seconds per training epoch.
    pub seconds_per_epoch: f64,
    /// Seconds to build one epoch's training batches (windows and features).
    pub prepare_seconds: f64,
    /// Trainable parameters.
    pub parameters: usize,
    /// The categorical user features the model read.
    pub user_features: Vec<String>,
}

/// Windows over the events of `part`: every event a target (first events
/// too), `len − 1` history events for BST (one, unused, for MF).
fn windows_of<'a>(
    cfg: &RatingConfig,
    data: &'a Dataset,
    select: &'a [Part],
    batch_size: usize,
    shuffle: Option<u64>,
) -> Result<Windows<'a>> {
    let wcfg = WindowsConfig {
        len: cfg.history_len().max(1),
        batch_size,
        skip_first: false,
        shuffle: shuffle.is_some(),
        seed: shuffle.unwrap_or(0),
    };
    Ok(Windows::new(&data.events.store, Targets::of(&data.events.parts, select), &wcfg)?)
}

/// Every evaluation batch of `part`, built once.
fn batches_of(cfg: &RatingConfig, inputs: &Inputs, data: &Dataset, part: Part) -> Result<Vec<RatingBatch>> {
    let select = [part];
    let mut windows = windows_of(cfg, data, &select, cfg.eval_batch_size, None)?;
    let mut out = Vec::with_capacity(windows.n_batches());
    while let Some(w) = windows.next_batch() {
        let mut b = RatingBatch::default();
        inputs.batch_into(&data.events.store, w, cfg.history_len() > 0, &mut b);
        out.push(b);
    }
    Ok(out)
}

fn build_model(cfg: &RatingConfig, inputs: &Inputs, dev: &Device) -> Result<Box<dyn RatingModel>> {
    Ok(match cfg.model.as_str() {
        "mf" => Box::new(Mf::new(
            &MfShape {
                n_users: inputs.n_users,
                n_items: inputs.n_items,
                n_factors: cfg.n_factors,
                init_std: cfg.init_std,
                range: cfg.range(),
            },
            cfg.seed,
            dev,
        )?),
        "bst" => Box::new(Bst::new(&cfg.bst_shape(inputs), cfg.seed, dev)?),
        other => return Err(TrainError::Invalid(format!("no trainable model `{other}`"))),
    })
}

/// MAE/MSE/RMSE of `model` over `batches`.
fn evaluate_batches(model: &mut dyn RatingModel, batches: &[RatingBatch]) -> Result<RegressionMetrics> {
    let mut acc = RegressionAccumulator::new();
    for b in batches {
        let pred: Vec<f32> = model.predict(b, None)?.to_vec1()?;
        acc.add_batch(&pred, &b.ratings);
    }
    Ok(acc.finish())
}

/// Median baseline: the training ratings' median against valid and test.
fn median_outcome(data: &Dataset, run: &RunDir, split: serde_json::Value) -> Result<RatingOutcome> {
    let store = &data.events.store;
    let ratings = store.ratings.as_ref().ok_or_else(|| TrainError::Invalid("the dataset has no ratings".into()))?;
    let parts = &data.events.parts;
    let train: Vec<f32> = ratings.iter().zip(parts).filter(|(_, &p)| p == Part::Train).map(|(&r, _)| r).collect();
    let median = median_rating(&train)?;
    let metrics = |part: Part| {
        let mut acc = RegressionAccumulator::new();
        for (&r, _) in ratings.iter().zip(parts).filter(|(_, &p)| p == part) {
            acc.add(f64::from(median), f64::from(r));
        }
        let m = acc.finish();
        (m.n > 0).then_some(m)
    };
    run.write_json("median.json", &serde_json::json!({ "median": median }))?;
    Ok(RatingOutcome {
        model: "median".into(),
        split,
        run_dir: run.dir.clone(),
        epochs: 0,
        best_epoch: 0,
        valid: metrics(Part::Valid),
        test: metrics(Part::Test),
        seconds_per_epoch: 0.0,
        prepare_seconds: 0.0,
        parameters: 1,
        user_features: Vec::new(),
    })
}

/// Options of a rating run.
#[derive(Debug, Clone)]
pub struct RatingOptions {
    /// Device of the model.
    pub device: Device,
    /// Draw a progress bar.
    pub progress: bool,
}

/// Trains the configured model on `data` into `run`, keeps the weights of
/// the best validation MAE and scores them on the test part.
///
/// # Errors
/// Bad settings, a dataset without ratings or the asked-for side columns,
/// I/O, model errors.
pub fn train_rating(cfg: &RatingConfig, data: &Dataset, run: &RunDir, opts: &RatingOptions) -> Result<RatingOutcome> {
    cfg.check().map_err(|m| TrainError::Invalid(format!("config: {m}")))?;
    seqrec_models::gru4rec::pin_thread_count();
    let split = data.meta.split.clone();
    let inputs = Inputs::of(cfg, data)?;
    let info = RunInfo {
        model: cfg.model.clone(),
        dataset: data.dir.clone(),
        dataset_name: data.meta.name.clone(),
        input_hash: data.meta.input_hash.clone(),
        n_ids: inputs.n_items,
        version: env!("CARGO_PKG_VERSION").into(),
    };
    run.write_json("run.json", &info)?;
    run.write_text("config.toml", &cfg.to_toml())?;
    run.truncate_metrics(0)?;
    if cfg.model == "median" {
        let outcome = median_outcome(data, run, split)?;
        run.write_json("results.json", &outcome)?;
        return Ok(outcome);
    }
    let select = [Part::Train];
    let mut windows = windows_of(cfg, data, &select, cfg.batch_size, Some(cfg.seed))?;
    let n_train = windows.n_targets();
    if n_train == 0 {
        return Err(TrainError::Invalid(format!("{}: no training ratings", data.dir.display())));
    }
    let valid = batches_of(cfg, &inputs, data, Part::Valid)?;
    let test = batches_of(cfg, &inputs, data, Part::Test)?;
    let has_valid = valid.iter().any(|b| b.rows() > 0);

    let mut model = build_model(cfg, &inputs, &opts.device)?;
    let parameters: usize = model.params().vars().values().map(|v| v.elem_count()).sum();
    let mut opt = Optimizer::new(cfg.optimizer, cfg.learning_rate, 0.0)?.with_weight_decay(cfg.weight_decay)?;
    let steps_per_epoch = n_train.div_ceil(cfg.batch_size) as u64;
    let schedule = match cfg.schedule.as_str() {
        "one-cycle" => {
            Schedule::OneCycle(OneCycle::new(f64::from(cfg.learning_rate), steps_per_epoch * cfg.n_epochs as u64))
        }
        _ => Schedule::Constant { lr: f64::from(cfg.learning_rate) },
    };
    let names: Vec<String> = model.params().vars().keys().cloned().collect();
    let store = &data.events.store;
    let mut batch = RatingBatch::default();
    // Seconds spent building the first epoch's batches (windows and features).
    let mut prepare_seconds = 0.0;
    let (mut step, mut best, mut bad_epochs, mut epochs) = (0u64, None::<(f64, usize)>, 0usize, 0usize);
    let mut seconds = Vec::new();
    let mut lr = 0.0;
    for epoch in 1..=cfg.n_epochs {
        if epoch > 1 {
            windows.rewind();
        }
        let mut progress = Progress::new(format!("epoch {epoch}"), n_train, opts.progress);
        let (mut loss_sum, mut rows) = (0f64, 0usize);
        loop {
            let t = Instant::now();
            let Some(w) = windows.next_batch() else { break };
            inputs.batch_into(store, w, cfg.history_len() > 0, &mut batch);
            if epoch == 1 {
                prepare_seconds += t.elapsed().as_secs_f64();
            }
            let n = batch.rows();
            if n < 2 {
                // Batch norm cannot use a batch of one; the row is seen again next epoch (reshuffled).
                continue;
            }
            let at = schedule.at(step);
            lr = at.lr;
            opt.set_learning_rate(at.lr as f32);
            if let Some(m) = at.momentum {
                opt.set_beta1(m as f32);
            }
            let mut rng = Rng::fork(cfg.seed ^ 0xD80F_0A7E, step);
            let pred = model.predict(&batch, Some(&mut rng))?;
            let target = Tensor::from_slice(&batch.ratings, n, &opts.device)?;
            let diff = (pred - target)?;
            let loss = if cfg.loss == "mae" { diff.abs()? } else { diff.sqr()? }.mean_all()?;
            let l = loss.to_scalar::<f32>()?;
            if !l.is_finite() {
                return Err(TrainError::Invalid(format!(
                    "epoch {epoch}: the loss became {l} (try a lower learning_rate)"
                )));
            }
            crate::next_item::descend(&loss, model.params(), &names, 0.0, &mut opt)?;
            step += 1;
            loss_sum += f64::from(l) * n as f64;
            rows += n;
            progress.add(n);
        }
        let secs = progress.finish();
        seconds.push(secs);
        epochs = epoch;
        let valid_m = if has_valid { Some(evaluate_batches(model.as_mut(), &valid)?) } else { None };
        let line = RatingEpoch {
            epoch,
            loss: loss_sum / rows.max(1) as f64,
            events: rows,
            seconds: secs,
            valid: valid_m.clone(),
            lr,
        };
        let mae = valid_m.as_ref().and_then(|m| m.mae);
        tracing::info!(
            "{} epoch {epoch}: train {} {:.4}, {:.1} s{}",
            cfg.model,
            cfg.loss.to_uppercase(),
            line.loss,
            secs,
            mae.map(|v| format!(", valid MAE {v:.4}")).unwrap_or_default()
        );
        run.append_metrics(&serde_json::to_value(&line).map_err(|e| TrainError::Invalid(e.to_string()))?)?;
        let improved = match (mae, best) {
            (None, _) => true,
            (Some(v), None) => v.is_finite(),
            (Some(v), Some((b, _))) => v < b - cfg.min_delta,
        };
        if improved {
            best = Some((mae.unwrap_or(f64::NAN), epoch));
            bad_epochs = 0;
            run.save_tensors("best.safetensors", &model.params().named_tensors())?;
        } else {
            bad_epochs += 1;
            if cfg.patience > 0 && bad_epochs >= cfg.patience {
                tracing::info!("early stopping after epoch {epoch}: no improvement for {} epochs", cfg.patience);
                break;
            }
        }
    }
    let kept = run.load_tensors("best.safetensors", &opts.device)?;
    model.params_mut().load(&kept)?;
    let valid_m = if has_valid { Some(evaluate_batches(model.as_mut(), &valid)?) } else { None };
    let test_m = if test.iter().any(|b| b.rows() > 0) { Some(evaluate_batches(model.as_mut(), &test)?) } else { None };
    let outcome = RatingOutcome {
        model: cfg.model.clone(),
        split,
        run_dir: run.dir.clone(),
        epochs,
        best_epoch: best.map_or(epochs, |(_, e)| e),
        valid: valid_m,
        test: test_m,
        seconds_per_epoch: seconds.iter().sum::<f64>() / seconds.len().max(1) as f64,
        prepare_seconds,
        parameters,
        user_features: inputs.user_features.iter().map(|f| f.name.clone()).collect(),
    };
    run.write_json("results.json", &outcome)?;
    Ok(outcome)
}
