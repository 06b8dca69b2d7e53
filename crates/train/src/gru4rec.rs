//! Training, evaluating and recommending with GRU4Rec over a prepared dataset.
//!
//! Training follows the authors' loop: sessions in order of their first
//! event, session-parallel mini-batches over the training part (a slot's
//! state zeroed when it starts a session, the batch shrinking at the end),
//! `n_sample` shared negatives per mini-batch from the sample store, one
//! optimiser step per mini-batch. After every epoch the validation part (if
//! any) is ranked against all items; the best epoch's weights are kept in
//! `best.safetensors` and training stops after `patience` epochs without
//! improvement. `last.safetensors` + `last.json` hold everything needed to
//! resume exactly: the model, the optimiser state, the step count (dropout
//! masks are drawn from a stream keyed by step) and the sample store's
//! position.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;
use seqrec_data::batch::{order_by_first_time, SessionParallel, SessionParallelConfig, Targets};
use seqrec_data::dataset::Dataset;
use seqrec_data::rng::Rng;
use seqrec_data::split::Part;
use seqrec_data::vocab::Vocab;
use seqrec_data::SequenceStore;
use seqrec_eval::RankingMetrics;
use seqrec_models::gru4rec::{adjust_state, Gru4Rec, Gru4RecScorer, StepConfig, TrainBatch};
use seqrec_models::next_item::{evaluate_sessions, EvalConfig};
use seqrec_models::optim::Optimizer;
use seqrec_sampling::{count_supports, Filling, PopularitySampler, SampleStore, Sampler};
use serde::{Deserialize, Serialize};

use crate::config::{Gru4RecConfig, RunConfig};
use crate::error::{Result, TrainError};
use crate::progress::Progress;
use crate::run::{RunDir, RunInfo, TrainerState};

/// How to start a training run.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Continue the run in the directory from its last completed epoch.
    pub resume: bool,
    /// Start from the best weights of another run (retraining on new
    /// sessions): its item vocabulary is kept, events of unknown items skipped.
    pub init_from: Option<PathBuf>,
    /// Draw a progress bar on a terminal.
    pub progress: bool,
    /// Device of the model.
    pub device: Device,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions { resume: false, init_from: None, progress: true, device: Device::Cpu }
    }
}

/// One epoch's line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// Epoch number, from 1.
    pub epoch: usize,
    /// Mean loss per training event.
    pub loss: f64,
    /// Training events (targets) of the epoch.
    pub events: usize,
    /// Training seconds.
    pub seconds: f64,
    /// Training events per second.
    pub events_per_s: f64,
    /// Validation metrics, when there is a validation part.
    pub valid: Option<RankingMetrics>,
    /// Seconds of the validation pass.
    pub valid_seconds: Option<f64>,
    /// Sample-store refills the training thread had to wait for.
    pub sample_stalls: u64,
}

/// What a finished run reports (`results.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainOutcome {
    /// The run directory.
    pub run_dir: PathBuf,
    /// Epochs trained (in this and earlier sessions of the run).
    pub epochs: usize,
    /// Epoch of the kept weights.
    pub best_epoch: usize,
    /// Validation value of the kept weights.
    pub best_valid: Option<f64>,
    /// True when early stopping ended training.
    pub stopped_early: bool,
    /// Events of the data skipped because their item is unknown to the initial model.
    pub skipped_unknown_items: usize,
    /// Mean training events per second over the epochs of this session.
    pub train_events_per_s: f64,
    /// Test metrics of the kept weights (none without a test part).
    pub test: Option<RankingMetrics>,
    /// Test events ranked per second.
    pub eval_events_per_s: Option<f64>,
}

/// Events whose item is known to `old`, re-encoded into `old`'s ids; the
/// number of events skipped.
fn remap_items(store: &SequenceStore, parts: &[Part], new: &Vocab, old: &Vocab) -> (SequenceStore, Vec<Part>, usize) {
    let map: Vec<Option<u32>> = (0..new.n_ids() as u32).map(|id| old.id_str(&new.raw(id)?)).collect();
    let keep: Vec<bool> = store.items.iter().map(|&i| map.get(i as usize).copied().flatten().is_some()).collect();
    let skipped = keep.iter().filter(|&&k| !k).count();
    let mut out = store.retain(&keep);
    for item in out.items.iter_mut() {
        *item = map[*item as usize].expect("kept events have a mapped item");
    }
    let parts = parts.iter().zip(&keep).filter(|(_, &k)| k).map(|(&p, _)| p).collect();
    (out, parts, skipped)
}

/// Training pairs of an epoch: events of `part` that follow an event of their sequence.
fn count_targets(store: &SequenceStore, parts: &[Part], part: Part) -> usize {
    (0..store.n_seq()).map(|s| store.range(s).skip(1).filter(|&e| parts[e] == part).count()).sum()
}

fn item_vocab(data: &Dataset) -> Result<&Vocab> {
    data.vocabs
        .get("item")
        .ok_or_else(|| TrainError::Invalid(format!("{}: the dataset has no item vocabulary", data.dir.display())))
}

/// Rayon's other workers spinning for the loop, unless `SEQREC_WAIT_POLICY`
/// is `passive` (`seqrec_kernels::pool`).
fn keep_awake() -> Result<seqrec_kernels::pool::KeepAwake> {
    use seqrec_kernels::pool::{KeepAwake, WaitPolicy};
    Ok(KeepAwake::with_policy(WaitPolicy::from_env().map_err(TrainError::Invalid)?))
}

/// Ranks every event of `part` against all items (the evaluation of the issue).
///
/// # Errors
/// Model or data errors.
pub fn evaluate(
    model: &Gru4Rec,
    store: &SequenceStore,
    parts: &[Part],
    part: Part,
    cfg: &Gru4RecConfig,
) -> Result<RankingMetrics> {
    let mut scorer = Gru4RecScorer::new(model);
    let eval = EvalConfig { ks: cfg.cutoffs.clone(), tie_mode: cfg.tie_mode };
    let _awake = keep_awake()?;
    Ok(evaluate_sessions(store, parts, part, &mut scorer, cfg.eval_batch_size, &eval)?)
}

/// Trains GRU4Rec on `data` into the run directory `run` and evaluates the
/// kept weights on the test part.
///
/// # Errors
/// Bad settings, a checkpoint that does not fit the data, I/O, model errors.
pub fn train(cfg: &Gru4RecConfig, data: &Dataset, run: &RunDir, opts: &TrainOptions) -> Result<TrainOutcome> {
    cfg.check().map_err(|m| TrainError::Invalid(format!("config: {m}")))?;
    seqrec_models::gru4rec::pin_thread_count();
    let shape = cfg.shape().map_err(|m| TrainError::Invalid(format!("config: {m}")))?;
    let data_vocab = item_vocab(data)?;
    // Retraining keeps the saved model's vocabulary.
    let (init, vocab) = match &opts.init_from {
        Some(dir) => {
            let from = RunDir::open(dir)?;
            let old = seqrec_data::persist::read_vocab(&from.path("vocab/item.parquet"))?;
            (Some(from), old)
        }
        None => (None, data_vocab.clone()),
    };
    let (store, parts, skipped) = if init.is_some() {
        remap_items(&data.events.store, &data.events.parts, data_vocab, &vocab)
    } else {
        (data.events.store.clone(), data.events.parts.clone(), 0)
    };
    if skipped > 0 {
        tracing::warn!("{skipped} events have items unknown to the initial model and are skipped");
    }
    let n_ids = vocab.n_ids();
    let info = RunInfo {
        model: "gru4rec".into(),
        dataset: data.dir.clone(),
        dataset_name: data.meta.name.clone(),
        input_hash: data.meta.input_hash.clone(),
        n_ids,
        version: env!("CARGO_PKG_VERSION").into(),
    };
    let loss = cfg.loss_fn().map_err(TrainError::Invalid)?;
    let metric = cfg.metric().map_err(TrainError::Invalid)?;

    let mut model = Gru4Rec::new(shape, n_ids, cfg.seed, &opts.device)?;
    let mut opt = Optimizer::new(cfg.optimizer, cfg.learning_rate, cfg.momentum)?;
    let mut state =
        TrainerState { epochs_done: 0, steps: 0, samples_served: 0, best: None, bad_epochs: 0, stopped: false };
    if opts.resume {
        let saved: RunInfo = run.read_json("run.json")?;
        saved.check_same_data(&info, &run.dir)?;
        state = run.read_json("last.json")?;
        let tensors = run.load_tensors("last.safetensors", &opts.device)?;
        model.load_tensors(&tensors, &run.path("last.safetensors"))?;
        let opt_states =
            tensors.iter().filter_map(|(k, v)| k.strip_prefix("opt.").map(|k| (k.to_owned(), v.clone()))).collect();
        opt.restore(opt_states, state.steps);
        run.truncate_metrics(state.epochs_done)?;
        tracing::info!("resuming {} after epoch {}", run.dir.display(), state.epochs_done);
    } else {
        if let Some(from) = &init {
            let tensors = from.load_tensors("best.safetensors", &opts.device)?;
            model.load_tensors(&tensors, &from.path("best.safetensors"))?;
            tracing::info!("initialised from {}", from.dir.display());
        }
        run.write_json("run.json", &info)?;
        run.write_text("config.toml", &cfg.to_toml())?;
        seqrec_data::persist::write_vocab(&run.path("vocab/item.parquet"), &vocab)?;
        run.truncate_metrics(0)?;
    }

    let train_mask: Vec<bool> = parts.iter().map(|&p| p == Part::Train).collect();
    let supports = count_supports(&store, Some(&train_mask), n_ids - 1)?;
    let sampler = Arc::new(PopularitySampler::new(&supports, cfg.sample_alpha)?);
    let log_pops = sampler.log_pops();
    let alpha = cfg.sample_alpha as f32;
    let has_valid = parts.contains(&Part::Valid);
    let n_train = count_targets(&store, &parts, Part::Train);
    if n_train == 0 {
        return Err(TrainError::Invalid(format!(
            "{}: no training pairs (sequences with two or more training events)",
            data.dir.display()
        )));
    }
    let order = order_by_first_time(&store);
    let step_cfg = StepConfig { loss, logq: cfg.logq, batch_size: cfg.batch_size };
    let mut samples = SampleStore::starting_at(
        sampler.clone() as Arc<dyn Sampler>,
        cfg.n_sample,
        cfg.sample_store,
        cfg.seed,
        Filling::Background,
        state.samples_served,
    );
    let mut rates = Vec::new();
    // The steps are short parallel regions; keep the other workers spinning
    // between them instead of waking them for each (kernels::pool).
    let _awake = keep_awake()?;
    while !state.stopped && state.epochs_done < cfg.n_epochs {
        let epoch = state.epochs_done + 1;
        let select = [Part::Train];
        let mut batches = SessionParallel::new(
            &store,
            order.clone(),
            Targets::of(&parts, &select),
            &SessionParallelConfig { batch_size: cfg.batch_size },
        )?;
        let mut progress = Progress::new(format!("epoch {epoch}"), n_train, opts.progress);
        let (mut loss_sum, mut events) = (0f64, 0usize);
        let mut hidden = Vec::new();
        let mut prev_rows = 0usize;
        let mut resets = Vec::new();
        let mut log_pop = Vec::new();
        let stalls_before = samples.stalls();
        while let Some(step) = batches.next_step() {
            let rows = step.rows();
            if prev_rows == 0 {
                hidden = model.zero_state(rows)?;
            } else if step.needs_gather(prev_rows) {
                adjust_state(&mut hidden, Some(&step.keep), &[])?;
            }
            step.reset_rows_into(&mut resets);
            if !resets.is_empty() {
                adjust_state(&mut hidden, None, &resets)?;
            }
            let negatives = samples.next_batch();
            let lp = if cfg.logq > 0.0 {
                // As the authors: raw popularity for targets, popularity^alpha for samples.
                log_pop.clear();
                log_pop.extend(step.targets.iter().map(|&t| log_pops[t as usize]));
                log_pop.extend(negatives.iter().map(|&s| alpha * log_pops[s as usize]));
                Some(log_pop.as_slice())
            } else {
                None
            };
            let batch = TrainBatch { inputs: &step.inputs, targets: &step.targets, samples: negatives, log_pop: lp };
            let mut dropout_rng = Rng::fork(cfg.seed ^ 0xD80F_0A7E, state.steps);
            let l = model.train_step(batch, &mut hidden, &step_cfg, &mut opt, &mut dropout_rng)?;
            if !l.is_finite() {
                return Err(TrainError::Invalid(format!(
                    "epoch {epoch}: the loss became {l} (try a lower learning_rate)"
                )));
            }
            state.steps += 1;
            state.samples_served += u64::from(cfg.n_sample > 0);
            loss_sum += step_loss_sum(l, cfg.batch_size);
            events += rows;
            progress.add(rows);
            prev_rows = rows;
        }
        // The last step's GRU weight updates, held over for a next step, are
        // applied now (inside the epoch's time): the epoch ends with every
        // update made, whether or not the run goes on (exact resumes).
        model.settle()?;
        let seconds = progress.finish();
        let rate = events as f64 / seconds.max(1e-9);
        rates.push(rate);
        let (valid, valid_seconds) = if has_valid {
            let t = Instant::now();
            let m = evaluate(&model, &store, &parts, Part::Valid, cfg)?;
            (Some(m), Some(t.elapsed().as_secs_f64()))
        } else {
            (None, None)
        };
        let line = EpochMetrics {
            epoch,
            loss: loss_sum / events.max(1) as f64,
            events,
            seconds,
            events_per_s: rate,
            valid: valid.clone(),
            valid_seconds,
            sample_stalls: samples.stalls() - stalls_before,
        };
        let valid_value = valid.as_ref().and_then(|m| metric.value(m));
        tracing::info!(
            "epoch {epoch}: loss {:.5}, {:.0} events/s{}",
            line.loss,
            rate,
            valid_value.map(|v| format!(", valid {} {v:.4}", cfg.valid_metric)).unwrap_or_default()
        );
        state.epochs_done = epoch;
        let improved = match (valid_value, state.best) {
            (None, _) => true,
            (Some(v), None) => v.is_finite(),
            (Some(v), Some((b, _))) => v > b + cfg.min_delta,
        };
        if improved {
            state.best = Some((valid_value.unwrap_or(f64::NAN), epoch));
            state.bad_epochs = 0;
            run.save_tensors("best.safetensors", &model.named_tensors()?)?;
            run.write_json("best.json", &serde_json::json!({ "epoch": epoch, cfg.valid_metric.clone(): valid_value }))?;
        } else {
            state.bad_epochs += 1;
            if cfg.patience > 0 && state.bad_epochs >= cfg.patience {
                state.stopped = true;
                tracing::info!("early stopping after epoch {epoch}: no improvement for {} epochs", cfg.patience);
            }
        }
        let mut last = model.named_tensors()?;
        for (k, v) in opt.states().0 {
            last.insert(format!("opt.{k}"), v.clone());
        }
        // last.json last: it commits the epoch (interrupted before it, the
        // epoch is redone on resume and its metrics line dropped first).
        let value = serde_json::to_value(&line).map_err(|e| TrainError::Invalid(e.to_string()))?;
        run.append_metrics(&value)?;
        run.save_tensors("last.safetensors", &last)?;
        run.write_json("last.json", &state)?;
    }
    drop(samples);

    // Test the kept weights.
    let best = run.load_tensors("best.safetensors", &opts.device)?;
    model.load_tensors(&best, &run.path("best.safetensors"))?;
    let (test, eval_rate) = if parts.contains(&Part::Test) {
        let t = Instant::now();
        let m = evaluate(&model, &store, &parts, Part::Test, cfg)?;
        let rate = m.n as f64 / t.elapsed().as_secs_f64().max(1e-9);
        (Some(m), Some(rate))
    } else {
        (None, None)
    };
    let (best_valid, best_epoch) = state.best.unwrap_or((f64::NAN, state.epochs_done));
    let outcome = TrainOutcome {
        run_dir: run.dir.clone(),
        epochs: state.epochs_done,
        best_epoch,
        best_valid: best_valid.is_finite().then_some(best_valid),
        stopped_early: state.stopped,
        skipped_unknown_items: skipped,
        train_events_per_s: if rates.is_empty() { 0.0 } else { rates.iter().sum::<f64>() / rates.len() as f64 },
        test,
        eval_events_per_s: eval_rate,
    };
    run.write_json("results.json", &outcome)?;
    Ok(outcome)
}

/// A trained run loaded for evaluation or recommendation.
#[derive(Debug)]
pub struct LoadedRun {
    /// Its config.
    pub config: Gru4RecConfig,
    /// The best weights.
    pub model: Gru4Rec,
    /// The item vocabulary of the weights.
    pub vocab: Vocab,
    /// `run.json`.
    pub info: RunInfo,
}

/// Loads the best weights of a run directory.
///
/// # Errors
/// Not a run directory, or unreadable files.
pub fn load_run(dir: &Path, device: &Device) -> Result<LoadedRun> {
    seqrec_models::gru4rec::pin_thread_count();
    let run = RunDir::open(dir)?;
    let config = Gru4RecConfig::load(&run.path("config.toml"))?;
    let info: RunInfo = run.read_json("run.json")?;
    let vocab = seqrec_data::persist::read_vocab(&run.path("vocab/item.parquet"))?;
    let shape =
        config.shape().map_err(|m| TrainError::Invalid(format!("{}: {m}", run.path("config.toml").display())))?;
    let mut model = Gru4Rec::new(shape, vocab.n_ids(), config.seed, device)?;
    let tensors = run.load_tensors("best.safetensors", device)?;
    model.load_tensors(&tensors, &run.path("best.safetensors"))?;
    Ok(LoadedRun { config, model, vocab, info })
}

/// Evaluates a run's best weights on `part` of `data`, whose item vocabulary
/// must be the run's.
///
/// # Errors
/// A dataset with another item vocabulary (a checkpoint of another dataset), model errors.
pub fn evaluate_run(loaded: &LoadedRun, data: &Dataset, part: Part) -> Result<RankingMetrics> {
    let vocab = item_vocab(data)?;
    if *vocab != loaded.vocab {
        return Err(TrainError::Invalid(format!(
            "the checkpoint was trained on dataset `{}` with {} item ids; {} has a different item vocabulary ({} ids), \
             expected the dataset the run was trained on",
            loaded.info.dataset_name,
            loaded.vocab.n_ids(),
            data.dir.display(),
            vocab.n_ids()
        )));
    }
    let store = &data.events.store;
    let parts = &data.events.parts;
    if !parts.contains(&part) {
        return Err(TrainError::Invalid(format!("{}: the dataset has no {part:?} events", data.dir.display())));
    }
    evaluate(&loaded.model, store, parts, part, &loaded.config)
}

/// Top-K next items after one session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    /// The session's key.
    pub session: String,
    /// Raw item keys, best first.
    pub items: Vec<String>,
    /// Their scores.
    pub scores: Vec<f32>,
}

/// Result of [`recommend`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recommendations {
    /// One per session with at least one known item.
    pub sessions: Vec<Recommendation>,
    /// Events skipped because their item is unknown to the model.
    pub skipped_events: usize,
    /// Sessions with no known item (no recommendation).
    pub skipped_sessions: usize,
}

/// The top `k` next items after each session (raw item keys in time order),
/// sessions never seen in training included. Items unknown to the model are
/// skipped and counted.
///
/// # Errors
/// `k` of 0, or model errors.
pub fn recommend(
    loaded: &LoadedRun,
    sessions: &[(String, Vec<String>)],
    k: usize,
    batch: usize,
) -> Result<Recommendations> {
    if k == 0 {
        return Err(TrainError::Invalid("recommend: k must be at least 1".into()));
    }
    let vocab = &loaded.vocab;
    let mut skipped_events = 0usize;
    let mut known: Vec<(usize, Vec<u32>)> = Vec::new();
    for (i, (_, items)) in sessions.iter().enumerate() {
        let ids: Vec<u32> = items.iter().filter_map(|r| vocab.id_str(r)).collect();
        skipped_events += items.len() - ids.len();
        if !ids.is_empty() {
            known.push((i, ids));
        }
    }
    let skipped_sessions = sessions.len() - known.len();
    // Longest first, so the rows still running at step t are a prefix.
    known.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(&b.0)));
    let model = &loaded.model;
    let k = k.min(model.n_ids() - 1);
    let mut out: Vec<Option<Recommendation>> = vec![None; sessions.len()];
    for chunk in known.chunks(batch.max(1)) {
        let mut state = model.zero_state(chunk.len())?;
        let max_len = chunk[0].1.len();
        for t in 0..max_len {
            let active = chunk.iter().take_while(|(_, ids)| ids.len() > t).count();
            if active < state[0].dim(0)? {
                for s in state.iter_mut() {
                    *s = s.narrow(0, 0, active)?;
                }
            }
            let inputs: Vec<u32> = chunk[..active].iter().map(|(_, ids)| ids[t]).collect();
            let ending: Vec<usize> = (0..active).filter(|&r| chunk[r].1.len() == t + 1).collect();
            if ending.is_empty() {
                model.feed(&inputs, &mut state)?;
                continue;
            }
            let scores = model.score_all(&inputs, &mut state)?;
            for &r in &ending {
                let row = scores.get(r)?.to_vec1::<f32>()?;
                let mut idx: Vec<usize> = (1..row.len()).collect();
                let cmp = |a: &usize, b: &usize| row[*b].total_cmp(&row[*a]).then(a.cmp(b));
                idx.select_nth_unstable_by(k - 1, cmp);
                idx.truncate(k);
                idx.sort_by(cmp);
                let (s, _) = &chunk[r];
                out[*s] = Some(Recommendation {
                    session: sessions[*s].0.clone(),
                    items: idx.iter().map(|&i| vocab.raw(i as u32).unwrap_or_default()).collect(),
                    scores: idx.iter().map(|&i| row[i]).collect(),
                });
            }
        }
    }
    Ok(Recommendations { sessions: out.into_iter().flatten().collect(), skipped_events, skipped_sessions })
}

/// The summed per-target loss of a step whose loss came divided by the
/// configured batch size (as the authors'). The epoch's `loss` is these
/// sums over the targets: the mean loss per training target, whatever the
/// rows of the shrinking last steps. The authors' log averages the step
/// losses instead, which counts a short step's smaller sum as a whole
/// step and so reads lower by ≈ (short steps / steps) × the mean loss
/// (docs/benchmarks.md).
fn step_loss_sum(step_loss: f32, batch_size: usize) -> f64 {
    f64::from(step_loss) * batch_size as f64
}

#[cfg(test)]
mod tests {
    use super::step_loss_sum;

    #[test]
    fn the_epoch_loss_is_the_mean_per_target_whatever_the_short_steps() {
        // batch size 4: a full step of per-target losses summing to 8 (step
        // loss 8 / 4 = 2), a short step of 2 rows summing to 2 (step loss 0.5)
        let sum = step_loss_sum(2.0, 4) + step_loss_sum(0.5, 4);
        let mean = sum / 6.0;
        assert!((mean - 10.0 / 6.0).abs() < 1e-12, "{mean}");
    }
}
