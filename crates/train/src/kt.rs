//! Knowledge tracing: the per-question difficulty baseline, NCF and RRNCF,
//! trained on every answered question of the training part and scored by
//! AUC, log-loss and accuracy on the validation and test parts.
//!
//! Histories are read whole: each learner's events are cut into consecutive
//! chunks of `len` events (truncated BPTT, the recurrent state carried
//! over), so every training question is a target and every earlier event is
//! context; `fraction_used` in the results counts the answered questions of
//! each part that were scored (always 1 unless something is wrong, which is
//! then an error). Evaluation reads each learner's history to its last
//! validation or test event in one pass; a test question sees every earlier
//! answer (training and validation parts included), never its own bundle's.
//!
//! With `truth` naming the generator's `truth.csv` (`seqrec data synth kt`),
//! the oracle's AUC is computed on exactly the scored test questions.
//!
//! Lanes are filled by [`balanced_order`]: learners dealt to lanes so each
//! carries about the same number of chunks, each lane's learners in random
//! order, so an epoch neither ends on a few lanes of one long learner nor on
//! a run of fresh short ones. NeuMF may start from finished GMF and MLP runs
//! (`pretrained_gmf`, `pretrained_mlp`, `pretrain_alpha`).
//!
//! ```toml
//! model = "rrncf"        # question-mean | ncf | rrncf
//! head = "neumf"         # neumf | gmf | mlp
//! hidden = 128           # LSTM width
//! truth = "target/synth/kt/truth.csv"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use arrow_array::{Array, ListArray, UInt32Array};
use candle_core::{Device, Tensor};
use seqrec_data::batch::{balanced_order, Chunks, ChunksConfig, Targets};
use seqrec_data::dataset::Dataset;
use seqrec_data::rng::Rng;
use seqrec_data::split::Part;
use seqrec_data::vocab::Vocab;
use seqrec_data::SequenceStore;
use seqrec_eval::{ClassificationAccumulator, ClassificationMetrics};
use seqrec_models::kt::{
    is_answer, is_lecture, probabilities, KtBatch, KtHead, KtModel, KtShape, KtSource, KtState, KtTags,
};
use seqrec_models::optim::{Optimizer, OptimizerKind};
use serde::{Deserialize, Serialize};

use crate::config::RunConfig;
use crate::error::{Result, TrainError};
use crate::next_item::descend;
use crate::progress::Progress;
use crate::rating::side_table;
use crate::run::{RunDir, RunInfo, TrainerState};

/// The knowledge-tracing models `seqrec train` knows.
pub const KT_MODELS: [&str; 3] = ["question-mean", "ncf", "rrncf"];

/// Every setting of a knowledge-tracing run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KtConfig {
    /// `question-mean`, `ncf` or `rrncf`.
    pub model: String,
    /// `neumf`, `gmf` or `mlp`.
    pub head: String,
    /// GMF and MLP embedding width.
    pub embedding: usize,
    /// MLP tower widths.
    pub mlp: Vec<usize>,
    /// RRNCF: LSTM width.
    pub hidden: usize,
    /// RRNCF: question embedding width in the LSTM input.
    pub input_embedding: usize,
    /// RRNCF: tag embedding width in the LSTM input.
    pub tag_embedding: usize,
    /// RRNCF: add a learner-id embedding to the history's learner vector.
    pub learner_embedding: bool,
    /// Drop probability on learner vectors and the MLP.
    pub dropout: f32,
    /// Events per chunk (the truncation length of BPTT).
    pub len: usize,
    /// Learners per training batch (lanes).
    pub batch_size: usize,
    /// Learners per evaluation batch.
    pub eval_batch_size: usize,
    /// `adam` or `adamw`.
    pub optimizer: OptimizerKind,
    /// Step size.
    pub learning_rate: f32,
    /// Decoupled weight decay (adamw).
    pub weight_decay: f32,
    /// Gradient clipping by global norm (0: off).
    pub clip_norm: f64,
    /// Most epochs.
    pub n_epochs: usize,
    /// Stop after this many epochs without a better validation AUC (0: never).
    pub patience: usize,
    /// Score the validation part after every this many epochs (0: never;
    /// the last epoch's weights are kept).
    pub validate_every: usize,
    /// The generator's `truth.csv`, for the oracle's AUC on the same events.
    pub truth: Option<PathBuf>,
    /// NeuMF pre-training: the run directory of a trained NCF with `head =
    /// "gmf"` (its `best.safetensors` gives the GMF part). Needs `pretrained_mlp`.
    pub pretrained_gmf: Option<PathBuf>,
    /// NeuMF pre-training: the run directory of a trained NCF with `head = "mlp"`.
    pub pretrained_mlp: Option<PathBuf>,
    /// NeuMF pre-training: the GMF side's weight `α` in the output layer.
    pub pretrain_alpha: f64,
    /// Seed of initialisation, order and dropout.
    pub seed: u64,
}

impl Default for KtConfig {
    fn default() -> Self {
        KtConfig {
            model: "rrncf".into(),
            head: "neumf".into(),
            embedding: 32,
            mlp: vec![64, 32],
            hidden: 128,
            input_embedding: 32,
            tag_embedding: 16,
            learner_embedding: false,
            dropout: 0.0,
            len: 100,
            batch_size: 128,
            eval_batch_size: 512,
            optimizer: OptimizerKind::Adam,
            learning_rate: 0.002,
            weight_decay: 0.0,
            clip_norm: 5.0,
            n_epochs: 10,
            patience: 2,
            validate_every: 1,
            truth: None,
            pretrained_gmf: None,
            pretrained_mlp: None,
            pretrain_alpha: 0.5,
            seed: 42,
        }
    }
}

impl RunConfig for KtConfig {
    /// Checks every value; the error names the key and what was expected.
    ///
    /// # Errors
    /// The first bad key, as a message.
    fn check(&self) -> std::result::Result<(), String> {
        if !KT_MODELS.contains(&self.model.as_str()) {
            return Err(format!("key `model`: unknown model `{}`, expected one of {KT_MODELS:?}", self.model));
        }
        if KtHead::parse(&self.head).is_none() {
            return Err(format!("key `head`: unknown `{}`, expected `neumf`, `gmf` or `mlp`", self.head));
        }
        for (key, v) in [("len", self.len), ("batch_size", self.batch_size), ("eval_batch_size", self.eval_batch_size)]
        {
            if v == 0 {
                return Err(format!("key `{key}`: found 0, expected a positive number"));
            }
        }
        if !(self.clip_norm.is_finite() && self.clip_norm >= 0.0) {
            return Err(format!("key `clip_norm`: found {}, expected a number >= 0 (0: off)", self.clip_norm));
        }
        if !matches!(self.optimizer, OptimizerKind::Adam | OptimizerKind::AdamW) {
            return Err("key `optimizer`: expected `adam` or `adamw`".into());
        }
        Optimizer::new(self.optimizer, self.learning_rate, 0.0)
            .and_then(|o| o.with_weight_decay(self.weight_decay))
            .map_err(|e| e.to_string())?;
        if self.pretrained_gmf.is_some() != self.pretrained_mlp.is_some() {
            return Err(
                "keys `pretrained_gmf` and `pretrained_mlp`: NeuMF pre-training needs both run directories".into()
            );
        }
        if self.pretrained_gmf.is_some() && (self.model != "ncf" || self.head != "neumf") {
            return Err(format!(
                "key `pretrained_gmf`: NeuMF pre-training needs model `ncf` with head `neumf`, found `{}` with `{}`",
                self.model, self.head
            ));
        }
        if !(0.0..=1.0).contains(&self.pretrain_alpha) {
            return Err(format!("key `pretrain_alpha`: found {}, expected a number in [0, 1]", self.pretrain_alpha));
        }
        if self.model != "question-mean" {
            self.shape(&KtInputs::placeholder()).check().map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

impl KtConfig {
    /// The model's settings for a dataset's sizes.
    pub fn shape(&self, inputs: &KtInputs) -> KtShape {
        KtShape {
            n_questions: inputs.n_questions,
            n_tags: inputs.tags.n_tags,
            max_tags: inputs.tags.max_tags,
            n_learners: inputs.n_learners,
            embedding: self.embedding,
            head: KtHead::parse(&self.head).unwrap_or(KtHead::NeuMf),
            mlp: self.mlp.clone(),
            history: self.model == "rrncf",
            hidden: self.hidden,
            input_embedding: self.input_embedding,
            tag_embedding: self.tag_embedding,
            learner_embedding: self.learner_embedding,
            dropout: self.dropout,
        }
    }
}

/// What the models read besides the events: vocabulary sizes and the tag table.
#[derive(Debug, Clone)]
pub struct KtInputs {
    /// Question ids, padding included.
    pub n_questions: usize,
    /// Learner ids, padding included.
    pub n_learners: usize,
    /// Tags of every question and lecture.
    pub tags: KtTags,
    /// Questions the interactions use that have no tags.
    pub questions_without_tags: usize,
}

impl KtInputs {
    fn placeholder() -> Self {
        KtInputs {
            n_questions: 2,
            n_learners: 2,
            tags: KtTags { max_tags: 1, n_tags: 2, question: vec![0; 2], lecture: vec![0] },
            questions_without_tags: 0,
        }
    }

    /// Reads the vocabularies and the questions' and lectures' tags of a
    /// prepared dataset (its `questions` table's `tags` list and its
    /// `lectures` table's `tag`, merged into one tag vocabulary by raw value).
    ///
    /// # Errors
    /// A dataset without questions, unreadable side tables.
    pub fn of(data: &Dataset) -> Result<Self> {
        let n_questions = data
            .vocabs
            .get("item")
            .ok_or_else(|| TrainError::Invalid(format!("{}: the dataset has no item vocabulary", data.dir.display())))?
            .n_ids();
        let n_lectures = data.vocabs.get("lecture").map_or(1, Vocab::n_ids);
        let n_learners = data.vocabs.get("seq").map_or(1, Vocab::n_ids);
        let mut merged: BTreeMap<String, u32> = BTreeMap::new();
        let mut unify = |vocab: Option<&Vocab>, id: u32| -> u32 {
            let Some(raw) = vocab.and_then(|v| v.raw(id)) else { return 0 };
            let next = merged.len() as u32 + 1;
            *merged.entry(raw).or_insert(next)
        };
        let mut question = vec![Vec::new(); n_questions];
        if let Some(t) = side_table(data, "questions")? {
            let vocab = data.vocabs.get("questions.tags");
            if let Some(col) = t.column_by_name("tags").and_then(|c| c.as_any().downcast_ref::<ListArray>()) {
                for r in 0..col.len().min(n_questions.saturating_sub(1)) {
                    if col.is_valid(r) {
                        let v = col.value(r);
                        let ids = v.as_any().downcast_ref::<UInt32Array>().ok_or_else(|| {
                            TrainError::Invalid("questions table: `tags` does not hold encoded tag ids".into())
                        })?;
                        question[r + 1] = ids.values().iter().filter(|&&g| g != 0).map(|&g| unify(vocab, g)).collect();
                    }
                }
            }
        }
        let mut lecture = vec![Vec::new(); n_lectures];
        if let Some(t) = side_table(data, "lectures")? {
            let vocab = data.vocabs.get("lectures.tag");
            if let Some(col) = t.column_by_name("tag").and_then(|c| c.as_any().downcast_ref::<UInt32Array>()) {
                for r in 0..col.len().min(n_lectures.saturating_sub(1)) {
                    if col.is_valid(r) && col.value(r) != 0 {
                        lecture[r + 1] = vec![unify(vocab, col.value(r))];
                    }
                }
            }
        }
        let questions_without_tags = question.iter().skip(1).filter(|t| t.is_empty()).count();
        let tags = KtTags::new(&question, &lecture, merged.len() + 1)?;
        Ok(KtInputs { n_questions, n_learners, tags, questions_without_tags })
    }
}

/// One training epoch's numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochStats {
    /// Mean loss over steps.
    pub loss: f64,
    /// Answers trained on.
    pub targets: usize,
    /// Events read (questions and lectures, context included).
    pub events: usize,
    /// Wall seconds.
    pub seconds: f64,
}

/// A model with its optimiser, trainable shard by shard.
#[derive(Debug)]
pub struct KtTrainer {
    cfg: KtConfig,
    model: KtModel,
    opt: Optimizer,
    names: Vec<String>,
    steps: u64,
}

impl KtTrainer {
    /// A fresh model for `inputs`.
    ///
    /// # Errors
    /// Bad settings or a failing op.
    pub fn new(cfg: &KtConfig, inputs: &KtInputs, dev: &Device) -> Result<Self> {
        cfg.check().map_err(|m| TrainError::Invalid(format!("config: {m}")))?;
        let model = KtModel::new(&cfg.shape(inputs), cfg.seed, dev)?;
        let opt = Optimizer::new(cfg.optimizer, cfg.learning_rate, 0.0)?.with_weight_decay(cfg.weight_decay)?;
        let names = model.params().vars().keys().cloned().collect();
        Ok(KtTrainer { cfg: cfg.clone(), model, opt, names, steps: 0 })
    }

    /// The model.
    pub fn model(&self) -> &KtModel {
        &self.model
    }

    /// The model, mutable.
    pub fn model_mut(&mut self) -> &mut KtModel {
        &mut self.model
    }

    /// The parameters and the optimiser's state (names prefixed `opt.`):
    /// what `last.safetensors` holds for `--resume`.
    pub fn checkpoint(&self) -> BTreeMap<String, Tensor> {
        let mut all = self.model.params().named_tensors();
        for (k, v) in self.opt.states().0 {
            all.insert(format!("opt.{k}"), v.clone());
        }
        all
    }

    /// Optimiser steps taken (they seed each step's dropout).
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Restores a [`KtTrainer::checkpoint`] taken after `steps` steps.
    ///
    /// # Errors
    /// Tensors that do not fit the model (named with `source`).
    pub fn restore(&mut self, saved: &BTreeMap<String, Tensor>, steps: u64, source: &Path) -> Result<()> {
        let (mut params, mut opt) = (BTreeMap::new(), BTreeMap::new());
        for (k, v) in saved {
            match k.strip_prefix("opt.") {
                Some(name) => opt.insert(name.to_owned(), v.clone()),
                None => params.insert(k.clone(), v.clone()),
            };
        }
        self.load_params(&params, source)?;
        self.opt.restore(opt, steps);
        self.steps = steps;
        Ok(())
    }

    /// Loads the kept weights of `run` (`best.safetensors`).
    ///
    /// # Errors
    /// A missing file or tensors that do not fit the model (named with the file).
    pub fn load_kept(&mut self, run: &RunDir, dev: &Device) -> Result<()> {
        let kept = run.load_tensors("best.safetensors", dev)?;
        self.load_params(&kept, &run.path("best.safetensors"))
    }

    fn load_params(&mut self, params: &BTreeMap<String, Tensor>, source: &Path) -> Result<()> {
        self.model
            .params_mut()
            .load(params)
            .map_err(|e| TrainError::Invalid(format!("{}: {e} (model {})", source.display(), self.cfg.model)))
    }

    /// Number of trainable values.
    pub fn parameters(&self) -> usize {
        self.model.params().vars().values().map(|v| v.elem_count()).sum()
    }

    /// One pass over the training answers of `store` (learners in a seeded
    /// random order); `shard` varies the order between calls of one epoch.
    ///
    /// # Errors
    /// A malformed store or a loss that is not finite.
    pub fn train_epoch(
        &mut self,
        store: &SequenceStore,
        parts: &[Part],
        tags: &KtTags,
        epoch: usize,
        shard: usize,
        progress: &mut Progress,
    ) -> Result<EpochStats> {
        let t = Instant::now();
        let src = KtSource::new(store, tags)?;
        let select = [Part::Train];
        let targets = Targets::of(parts, &select);
        let cc = ChunksConfig { len: self.cfg.len, batch_size: self.cfg.batch_size };
        let mut rng = Rng::fork(self.cfg.seed ^ 0x0004_7EA1, (epoch as u64) << 20 | shard as u64);
        let order = balanced_order(store, targets, &cc, &mut rng);
        let mut chunks = Chunks::new(store, order, targets, &cc)?;
        let (mut state, mut batch) = (KtState::new(), KtBatch::default());
        let mut stats = EpochStats::default();
        let mut loss_sum = 0f64;
        let mut n_steps = 0usize;
        let train = |e: usize| parts[e] == Part::Train;
        while let Some(step) = chunks.next_step() {
            src.fill(step, &train, &mut batch);
            let events: usize = step.valid.iter().sum();
            let mut rng = Rng::fork(self.cfg.seed ^ 0x000D_70F0, self.steps);
            let logits = self.model.forward(&batch, &mut state, Some(&mut rng))?;
            let (loss, n) = self.model.loss(&logits, &batch)?;
            stats.events += events;
            if n == 0 {
                continue;
            }
            let l = loss.to_scalar::<f32>()?;
            if !l.is_finite() {
                return Err(TrainError::Invalid(format!(
                    "epoch {epoch}: the loss became {l} (try a lower learning_rate or set clip_norm)"
                )));
            }
            descend(&loss, self.model.params(), &self.names, self.cfg.clip_norm, &mut self.opt)?;
            self.steps += 1;
            n_steps += 1;
            loss_sum += f64::from(l);
            stats.targets += n;
            progress.add(n);
        }
        stats.loss = loss_sum / n_steps.max(1) as f64;
        stats.seconds = t.elapsed().as_secs_f64();
        Ok(stats)
    }

    /// The probability of a correct answer for every answer in the `select`
    /// parts (NaN elsewhere), each learner read once up to its last such event.
    ///
    /// # Errors
    /// A malformed store or a failing op.
    pub fn score(&self, store: &SequenceStore, parts: &[Part], select: &[Part], tags: &KtTags) -> Result<Vec<f32>> {
        let src = KtSource::new(store, tags)?;
        let order: Vec<usize> = (0..store.n_seq()).collect();
        let cc = ChunksConfig { len: self.cfg.len, batch_size: self.cfg.eval_batch_size };
        let mut chunks = Chunks::new(store, order, Targets::of(parts, select), &cc)?;
        let (mut state, mut batch) = (KtState::new(), KtBatch::default());
        let mut out = vec![f32::NAN; store.n_events()];
        let wanted = |e: usize| select.contains(&parts[e]);
        while let Some(step) = chunks.next_step() {
            src.fill(step, &wanted, &mut batch);
            let p = probabilities(&self.model.forward(&batch, &mut state, None)?)?;
            let len = batch.len;
            for r in 0..batch.rows {
                for q in 0..step.valid[r] {
                    if batch.target[r * len + q] > 0.0 {
                        out[step.start[r] + q] = p[r * len + q];
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Metrics of one part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KtPartMetrics {
    /// AUC, log-loss, accuracy and counts.
    pub metrics: ClassificationMetrics,
    /// Answers of the part that were scored / answers of the part.
    pub fraction_used: f64,
}

/// Predictions of one part gathered shard by shard.
#[derive(Debug, Default)]
struct PartAcc {
    acc: ClassificationAccumulator,
    total: usize,
}

impl PartAcc {
    /// Adds the answers of `part` in one shard (`probs` NaN = not scored).
    fn add(&mut self, store: &SequenceStore, parts: &[Part], part: Part, probs: &[f32]) {
        let labels = store.labels.as_deref().unwrap_or(&[]);
        for e in 0..store.n_events() {
            if parts[e] == part && is_answer(store, e) {
                self.total += 1;
                if !probs[e].is_nan() {
                    self.acc.add(f64::from(probs[e]), labels[e] == 1);
                }
            }
        }
    }

    fn finish(&self) -> Option<KtPartMetrics> {
        (self.total > 0).then(|| KtPartMetrics {
            fraction_used: self.acc.len() as f64 / self.total as f64,
            metrics: self.acc.finish(),
        })
    }
}

/// Each question's correct and total answers in the training part: the
/// per-question difficulty baseline (its mean correctness; the overall mean
/// for questions never answered in training).
#[derive(Debug, Clone)]
struct QuestionMean {
    correct: Vec<u64>,
    answered: Vec<u64>,
}

impl QuestionMean {
    fn new(n_questions: usize) -> Self {
        QuestionMean { correct: vec![0; n_questions], answered: vec![0; n_questions] }
    }

    fn fit(&mut self, store: &SequenceStore, parts: &[Part]) {
        let labels = store.labels.as_deref().unwrap_or(&[]);
        for e in 0..store.n_events() {
            let q = store.items[e] as usize;
            if parts[e] == Part::Train && is_answer(store, e) && q < self.answered.len() {
                self.correct[q] += u64::from(labels[e] == 1);
                self.answered[q] += 1;
            }
        }
    }

    /// The baseline at every answer of the `select` parts, NaN elsewhere.
    fn predict(&self, store: &SequenceStore, parts: &[Part], select: &[Part]) -> Vec<f32> {
        let global = self.correct.iter().sum::<u64>() as f64 / self.answered.iter().sum::<u64>().max(1) as f64;
        (0..store.n_events())
            .map(|e| {
                if !(select.contains(&parts[e]) && is_answer(store, e)) {
                    return f32::NAN;
                }
                match store.items[e] as usize {
                    q if q < self.answered.len() && self.answered[q] > 0 => {
                        (self.correct[q] as f64 / self.answered[q] as f64) as f32
                    }
                    _ => global as f32,
                }
            })
            .collect()
    }
}

/// The generator's `P(correct)` of every question row, in row order
/// (`truth.csv` of `seqrec data synth kt`).
///
/// # Errors
/// An unreadable or malformed file, naming the line.
pub fn read_truth(path: &Path) -> Result<Vec<f32>> {
    let text = std::fs::read_to_string(path).map_err(crate::error::io(path))?;
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, h)) if h.trim() == "row_id,p_correct" => {}
        other => {
            return Err(TrainError::Invalid(format!(
                "{}:1: expected the header `row_id,p_correct`, found `{}`",
                path.display(),
                other.map_or("", |(_, h)| h)
            )))
        }
    }
    let mut p = Vec::new();
    for (i, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let v = line.split(',').nth(1).and_then(|s| s.trim().parse::<f32>().ok()).ok_or_else(|| {
            TrainError::Invalid(format!("{}:{}: expected `row_id,p_correct`, found `{line}`", path.display(), i + 1))
        })?;
        p.push(v);
    }
    Ok(p)
}

/// Extra options of a run.
#[derive(Debug, Clone)]
pub struct KtOptions {
    /// Device.
    pub device: Device,
    /// Draw a progress bar.
    pub progress: bool,
    /// Read the event files one at a time (memory bounded by the largest
    /// file) instead of the dataset's events held in memory.
    pub stream: bool,
    /// Continue the run from its last completed epoch (`last.json`,
    /// `last.safetensors`); the result is the one an uninterrupted run gives.
    pub resume: bool,
}

impl Default for KtOptions {
    fn default() -> Self {
        KtOptions { device: Device::Cpu, progress: false, stream: false, resume: false }
    }
}

/// The events of a run: all in memory, or the event files one at a time
/// (a learner never spans two files, so each file is a whole shard).
enum Shards<'a> {
    Memory(&'a Dataset),
    Files(&'a Dataset),
}

impl Shards<'_> {
    fn for_each(&self, mut f: impl FnMut(usize, &SequenceStore, &[Part]) -> Result<()>) -> Result<()> {
        match self {
            Shards::Memory(d) => f(0, &d.events.store, &d.events.parts),
            Shards::Files(d) => {
                for (i, file) in d.meta.event_files.iter().enumerate() {
                    let ev = seqrec_data::persist::read_events(&d.dir, std::slice::from_ref(file))?;
                    f(i, &ev.store, &ev.parts)?;
                }
                Ok(())
            }
        }
    }
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct KtEpoch {
    epoch: usize,
    #[serde(flatten)]
    stats: EpochStats,
    valid_auc: Option<f64>,
    valid_log_loss: Option<f64>,
    valid_seconds: f64,
}

/// What a run produced (`results.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KtOutcome {
    /// Model name.
    pub model: String,
    /// NCF head.
    pub head: String,
    /// Dataset name.
    pub dataset: String,
    /// The dataset's split report.
    pub split: serde_json::Value,
    /// Run directory.
    pub run_dir: PathBuf,
    /// Epochs completed (those of earlier sessions of a resumed run included).
    pub epochs: usize,
    /// Epoch whose weights were kept.
    pub best_epoch: usize,
    /// Validation metrics of the kept weights.
    pub valid: Option<KtPartMetrics>,
    /// Test metrics of the kept weights.
    pub test: Option<KtPartMetrics>,
    /// The per-question difficulty baseline on the same test answers.
    pub question_mean_test: Option<KtPartMetrics>,
    /// The generator's AUC on the scored test answers (when `truth` is set).
    pub oracle_test_auc: Option<f64>,
    /// The generator's log-loss on the scored test answers.
    pub oracle_test_log_loss: Option<f64>,
    /// Training answers used / training answers (last epoch).
    pub fraction_used_train: f64,
    /// Events (context included) read per second of training (this session's epochs).
    pub events_per_s: f64,
    /// Mean seconds per training epoch.
    pub seconds_per_epoch: f64,
    /// Seconds of the final validation + test scoring pass.
    pub eval_seconds: f64,
    /// Events in the dataset.
    pub events: usize,
    /// Questions the interactions use that have no tags.
    pub questions_without_tags: usize,
    /// Trainable values.
    pub parameters: usize,
}

/// Validation and test metrics of the model (or of the baseline when
/// `trainer` is `None`), the baseline's and the oracle's test metrics.
struct Evaluation {
    valid: PartAcc,
    test: PartAcc,
    baseline_test: PartAcc,
    oracle_test: PartAcc,
}

fn evaluate(
    trainer: Option<&KtTrainer>,
    shards: &Shards<'_>,
    select: &[Part],
    tags: &KtTags,
    baseline: &QuestionMean,
    truth: Option<&[f32]>,
) -> Result<Evaluation> {
    let mut ev = Evaluation {
        valid: PartAcc::default(),
        test: PartAcc::default(),
        baseline_test: PartAcc::default(),
        oracle_test: PartAcc::default(),
    };
    let mut question_row = 0usize;
    shards.for_each(|_, store, parts| {
        // The baseline's predictions serve its test metrics, or stand for the
        // model when there is none (the per-epoch validation needs neither).
        let testing = select.contains(&Part::Test);
        let base = if testing || trainer.is_none() { baseline.predict(store, parts, select) } else { Vec::new() };
        let probs = match trainer {
            Some(t) => t.score(store, parts, select, tags)?,
            None => base.clone(),
        };
        if select.contains(&Part::Valid) {
            ev.valid.add(store, parts, Part::Valid, &probs);
        }
        if testing {
            ev.test.add(store, parts, Part::Test, &probs);
            ev.baseline_test.add(store, parts, Part::Test, &base);
            if let Some(truth) = truth {
                // The oracle on exactly the answers the model was scored on.
                let mut oracle = vec![f32::NAN; store.n_events()];
                for e in 0..store.n_events() {
                    if !is_lecture(store, e) {
                        if !probs[e].is_nan() {
                            oracle[e] = truth.get(question_row).copied().unwrap_or(f32::NAN);
                        }
                        question_row += 1;
                    }
                }
                ev.oracle_test.add(store, parts, Part::Test, &oracle);
            }
        }
        Ok(())
    })?;
    Ok(ev)
}

/// What one pass over a dataset's events gives: the question-mean baseline
/// fitted on the training part and the counts the checks need.
struct Scan {
    baseline: QuestionMean,
    events: usize,
    questions: usize,
    train_answers: usize,
    has_valid: bool,
}

/// The one pass over `data` before training or scoring; errors when the
/// events carry no answered-correctly labels.
fn scan(shards: &Shards<'_>, data: &Dataset, n_questions: usize) -> Result<Scan> {
    let mut out =
        Scan { baseline: QuestionMean::new(n_questions), events: 0, questions: 0, train_answers: 0, has_valid: false };
    shards.for_each(|_, store, parts| {
        if store.labels.is_none() {
            return Err(TrainError::Invalid(format!(
                "{}: the dataset has no answered-correctly labels (map a `label` column in its recipe)",
                data.dir.display()
            )));
        }
        out.baseline.fit(store, parts);
        out.events += store.n_events();
        out.questions += (0..store.n_events()).filter(|&e| !is_lecture(store, e)).count();
        out.train_answers += (0..store.n_events()).filter(|&e| parts[e] == Part::Train && is_answer(store, e)).count();
        out.has_valid |= parts.contains(&Part::Valid);
        Ok(())
    })?;
    Ok(out)
}

/// The generator's `truth.csv` at `path`, checked to have one row per
/// question of the unfiltered `data` (`events` rows, `questions` of them
/// questions).
fn aligned_truth(path: Option<&Path>, data: &Dataset, events: usize, questions: usize) -> Result<Option<Vec<f32>>> {
    let Some(path) = path else { return Ok(None) };
    let t = read_truth(path)?;
    if data.meta.rows_read != events || t.len() != questions {
        return Err(TrainError::Invalid(format!(
            "{}: {} question rows do not align with the dataset's {questions} questions ({} rows read, {events} \
             kept): the oracle needs the unfiltered dataset generated with this truth",
            path.display(),
            t.len(),
            data.meta.rows_read,
        )));
    }
    Ok(Some(t))
}

/// What `seqrec evaluate` reports for a knowledge-tracing run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KtEvaluation {
    /// Model name.
    pub model: String,
    /// NCF head.
    pub head: String,
    /// The run directory.
    pub run_dir: PathBuf,
    /// The dataset evaluated on.
    pub dataset: String,
    /// Validation metrics of the run's kept weights.
    pub valid: Option<KtPartMetrics>,
    /// Test metrics of the run's kept weights.
    pub test: Option<KtPartMetrics>,
    /// The per-question difficulty baseline (fitted on this dataset's
    /// training part) on the same test answers.
    pub question_mean_test: Option<KtPartMetrics>,
    /// The generator's AUC on the scored test answers (when the run's
    /// config names a `truth` file).
    pub oracle_test_auc: Option<f64>,
}

/// Scores the kept weights (`best.safetensors`) of the knowledge-tracing
/// run in `dir` on the validation and test parts of `data`, which must be
/// prepared from the same input files as the run's dataset (its split may
/// differ): learner and question ids are only meaningful there.
///
/// # Errors
/// Not a knowledge-tracing run directory, a dataset from other input files,
/// weights of another shape, a misaligned `truth` file, I/O.
pub fn evaluate_kt_run(dir: &Path, data: &Dataset, opts: &KtOptions) -> Result<KtEvaluation> {
    seqrec_models::gru4rec::pin_thread_count();
    let run = RunDir::open(dir)?;
    let cfg = KtConfig::load(&run.path("config.toml"))?;
    let info: RunInfo = run.read_json("run.json")?;
    if info.input_hash != data.meta.input_hash {
        return Err(TrainError::Invalid(format!(
            "{}: the run was trained on dataset `{}` (input hash {}); {} was prepared from other input files \
             (input hash {}), expected the same input files (any split)",
            dir.display(),
            info.dataset_name,
            info.input_hash,
            data.dir.display(),
            data.meta.input_hash
        )));
    }
    let shards = if opts.stream { Shards::Files(data) } else { Shards::Memory(data) };
    let inputs = KtInputs::of(data)?;
    let Scan { baseline, events, questions, .. } = scan(&shards, data, inputs.n_questions)?;
    let truth = aligned_truth(cfg.truth.as_deref(), data, events, questions)?;
    let trainer = if cfg.model == "question-mean" {
        None
    } else {
        let mut tr = KtTrainer::new(&cfg, &inputs, &opts.device)?;
        tr.load_kept(&run, &opts.device)?;
        Some(tr)
    };
    let ev =
        evaluate(trainer.as_ref(), &shards, &[Part::Valid, Part::Test], &inputs.tags, &baseline, truth.as_deref())?;
    Ok(KtEvaluation {
        model: cfg.model.clone(),
        head: cfg.head.clone(),
        run_dir: dir.to_path_buf(),
        dataset: data.meta.name.clone(),
        valid: ev.valid.finish(),
        test: ev.test.finish(),
        question_mean_test: ev.baseline_test.finish(),
        oracle_test_auc: ev.oracle_test.finish().and_then(|o| o.metrics.auc),
    })
}

/// Trains the configured model on `data` into `run`, keeps the weights of
/// the best validation AUC and scores them on the test part.
///
/// With [`KtOptions::resume`], `run` is an existing run of this config:
/// training continues after its last completed epoch (the epoch order and
/// dropout are seeded by epoch and step, so the result equals an
/// uninterrupted run's).
///
/// With [`KtOptions::stream`], `data` may be opened without its events
/// ([`Dataset::open_without_events`]): every pass reads the event files one at a time.
///
/// # Errors
/// Bad settings, a dataset without labels, a `truth` file that does not
/// align with the dataset, I/O, model errors.
pub fn train_kt(cfg: &KtConfig, data: &Dataset, run: &RunDir, opts: &KtOptions) -> Result<KtOutcome> {
    cfg.check().map_err(|m| TrainError::Invalid(format!("config: {m}")))?;
    seqrec_models::gru4rec::pin_thread_count();
    let shards = if opts.stream { Shards::Files(data) } else { Shards::Memory(data) };
    let inputs = KtInputs::of(data)?;
    if inputs.questions_without_tags > 0 {
        tracing::warn!("{} questions have no tags: their tag input is empty", inputs.questions_without_tags);
    }
    let Scan { baseline, events, questions, train_answers, has_valid } = scan(&shards, data, inputs.n_questions)?;
    if train_answers == 0 {
        return Err(TrainError::Invalid(format!("{}: no answered questions in the training part", data.dir.display())));
    }
    let truth = aligned_truth(cfg.truth.as_deref(), data, events, questions)?;
    let info = RunInfo {
        model: cfg.model.clone(),
        dataset: data.dir.clone(),
        dataset_name: data.meta.name.clone(),
        input_hash: data.meta.input_hash.clone(),
        n_ids: inputs.n_questions,
        version: env!("CARGO_PKG_VERSION").into(),
    };
    let mut state =
        TrainerState { epochs_done: 0, steps: 0, samples_served: 0, best: None, bad_epochs: 0, stopped: false };
    if opts.resume {
        let saved: RunInfo = run.read_json("run.json")?;
        saved.check_same_data(&info, &run.dir)?;
        if cfg.model != "question-mean" {
            state = run.read_json("last.json")?;
        }
        run.truncate_metrics(state.epochs_done)?;
        tracing::info!("resuming {} after epoch {}", run.dir.display(), state.epochs_done);
    } else {
        run.write_json("run.json", &info)?;
        run.write_text("config.toml", &cfg.to_toml())?;
        run.truncate_metrics(0)?;
    }
    let (mut seconds, mut read, mut used, mut trained) = (0f64, 0usize, train_answers, 0usize);
    let mut trainer = None;
    if cfg.model != "question-mean" {
        let mut tr = KtTrainer::new(cfg, &inputs, &opts.device)?;
        if opts.resume {
            let last = run.load_tensors("last.safetensors", &opts.device)?;
            tr.restore(&last, state.steps, &run.path("last.safetensors"))?;
        } else if let (Some(gmf), Some(mlp)) = (&cfg.pretrained_gmf, &cfg.pretrained_mlp) {
            let weights = |dir: &Path| RunDir::open(dir)?.load_tensors("best.safetensors", &opts.device);
            let (g, m) = (weights(gmf)?, weights(mlp)?);
            tr.model_mut()
                .load_neumf_pretrained(&g, &m, cfg.pretrain_alpha)
                .map_err(|e| TrainError::Invalid(format!("{} + {}: {e}", gmf.display(), mlp.display())))?;
            tracing::info!(
                "NeuMF starts from GMF {} and MLP {} (alpha {})",
                gmf.display(),
                mlp.display(),
                cfg.pretrain_alpha
            );
        }
        let first = if state.stopped { cfg.n_epochs + 1 } else { state.epochs_done + 1 };
        for epoch in first..=cfg.n_epochs {
            let mut progress = Progress::new(format!("epoch {epoch}"), train_answers, opts.progress);
            let mut stats = EpochStats::default();
            let mut loss_weighted = 0f64;
            shards.for_each(|shard, store, parts| {
                let s = tr.train_epoch(store, parts, &inputs.tags, epoch, shard, &mut progress)?;
                loss_weighted += s.loss * s.targets as f64;
                stats.targets += s.targets;
                stats.events += s.events;
                stats.seconds += s.seconds;
                Ok(())
            })?;
            progress.finish();
            stats.loss = loss_weighted / stats.targets.max(1) as f64;
            state.epochs_done = epoch;
            state.steps = tr.steps();
            trained += 1;
            seconds += stats.seconds;
            read += stats.events;
            used = stats.targets;
            let t = Instant::now();
            let validate = has_valid && cfg.validate_every > 0 && epoch % cfg.validate_every == 0;
            let valid = if validate {
                evaluate(Some(&tr), &shards, &[Part::Valid], &inputs.tags, &baseline, None)?.valid.finish()
            } else {
                None
            };
            let valid_auc = valid.as_ref().and_then(|v| v.metrics.auc);
            let line = KtEpoch {
                epoch,
                stats,
                valid_auc,
                valid_log_loss: valid.as_ref().and_then(|v| v.metrics.log_loss),
                valid_seconds: t.elapsed().as_secs_f64(),
            };
            tracing::info!(
                "{} epoch {epoch}: loss {:.4}, {:.1} s ({:.0} events/s){}",
                cfg.model,
                stats.loss,
                stats.seconds,
                stats.events as f64 / stats.seconds.max(1e-9),
                valid_auc.map(|a| format!(", valid AUC {a:.4}")).unwrap_or_default()
            );
            if validate || !has_valid || cfg.validate_every == 0 {
                let improved = match (valid_auc, state.best) {
                    (None, _) => true,
                    (Some(v), None) => v.is_finite(),
                    (Some(v), Some((b, _))) => v > b || (b.is_nan() && v.is_finite()),
                };
                if improved {
                    state.best = Some((valid_auc.or(state.best.map(|b| b.0)).unwrap_or(f64::NAN), epoch));
                    state.bad_epochs = 0;
                    run.save_tensors("best.safetensors", &tr.model().params().named_tensors())?;
                } else {
                    state.bad_epochs += 1;
                    if cfg.patience > 0 && state.bad_epochs >= cfg.patience {
                        tracing::info!(
                            "early stopping after epoch {epoch}: no better validation AUC in {} epochs",
                            state.bad_epochs
                        );
                        state.stopped = true;
                    }
                }
            }
            // last.json last: it commits the epoch. Interrupted before it, the
            // epoch is redone on resume and its metrics line dropped first.
            run.append_metrics(&serde_json::to_value(&line).map_err(|e| TrainError::Invalid(e.to_string()))?)?;
            run.save_tensors("last.safetensors", &tr.checkpoint())?;
            run.write_json("last.json", &state)?;
            if state.stopped {
                break;
            }
        }
        tr.load_kept(run, &opts.device)?;
        trainer = Some(tr);
    }
    let t = Instant::now();
    let ev =
        evaluate(trainer.as_ref(), &shards, &[Part::Valid, Part::Test], &inputs.tags, &baseline, truth.as_deref())?;
    let eval_seconds = t.elapsed().as_secs_f64();
    let oracle = ev.oracle_test.finish();
    let outcome = KtOutcome {
        model: cfg.model.clone(),
        head: cfg.head.clone(),
        dataset: data.meta.name.clone(),
        split: data.meta.split.clone(),
        run_dir: run.dir.clone(),
        epochs: state.epochs_done,
        best_epoch: state.best.map_or(0, |b| b.1),
        valid: ev.valid.finish(),
        test: ev.test.finish(),
        question_mean_test: ev.baseline_test.finish(),
        oracle_test_auc: oracle.as_ref().and_then(|o| o.metrics.auc),
        oracle_test_log_loss: oracle.as_ref().and_then(|o| o.metrics.log_loss),
        fraction_used_train: used as f64 / train_answers as f64,
        events_per_s: read as f64 / seconds.max(1e-9),
        seconds_per_epoch: seconds / trained.max(1) as f64,
        eval_seconds,
        events,
        questions_without_tags: inputs.questions_without_tags,
        parameters: trainer.as_ref().map_or(0, KtTrainer::parameters),
    };
    run.write_json("results.json", &outcome)?;
    Ok(outcome)
}
