//! Riiid's Kaggle files for generated knowledge-tracing data, and the
//! oracle's report.
//!
//! `train.csv` has Riiid's header and formats: booleans as `True`/`False`,
//! elapsed times as floats with one decimal (`18000.0`), both prior fields
//! empty on a learner's first bundle, and `-1` for the answer fields of
//! lectures. `truth.csv` gives `row_id,p_correct` (6 decimals) for every
//! question row. `oracle.json` holds [`KtOracleReport`].

use std::io::{BufWriter, Write};
use std::path::Path;

use seqrec_eval::{auc, ClassificationAccumulator};
use serde::{Deserialize, Serialize};

use super::{KtConfig, KtData};
use crate::io::write_atomic;
use crate::{Error, Result};

/// The header of Riiid's `train.csv`.
pub const TRAIN_HEADER: &str = "row_id,timestamp,user_id,content_id,content_type_id,task_container_id,user_answer,answered_correctly,prior_question_elapsed_time,prior_question_had_explanation";

/// The test rule, as written into the report.
const TEST_RULE: &str = "per learner with n rows, the questions among the last round(n * test_fraction) rows \
                         in row (time) order are test; f64::round, halves away from zero (the last_fraction split)";

/// The oracle's results (`oracle.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KtOracleReport {
    /// AUC of the true probabilities on the test events.
    pub auc_test: Option<f64>,
    /// AUC of the true probabilities on all question events.
    pub auc_all: Option<f64>,
    /// Log-loss of the true probabilities on the test events.
    pub log_loss_test: Option<f64>,
    /// Accuracy at 0.5 of the true probabilities on the test events.
    pub accuracy_test: Option<f64>,
    /// AUC on the test events of each question's mean correctness on the
    /// non-test question rows (the overall mean for unseen questions): a
    /// difficulty-only baseline.
    pub baseline_question_mean_auc_test: Option<f64>,
    /// AUC on the test events of the static oracle: the true probabilities
    /// with each learner's knowledge term held at its mean over the
    /// learner's non-test answers (0 when there are none). It knows
    /// ability, tag offsets and question parameters but not how knowledge
    /// moves, so `auc_test − static_auc_test` is roughly what a model gains
    /// from the order of a learner's history over a static learner model
    /// (NCF).
    pub static_auc_test: Option<f64>,
    /// Number of test events.
    pub n_test: u64,
    /// Number of question rows.
    pub n_question_rows: u64,
    /// Number of rows (questions and lectures).
    pub n_rows: u64,
    /// Number of learners.
    pub n_learners: u64,
    /// How test events are chosen.
    pub test_rule: String,
    /// The generator's configuration.
    pub config: KtConfig,
}

impl KtData {
    /// The oracle's metrics (and the difficulty baseline) on the default test
    /// events and on all question events.
    pub fn oracle_report(&self) -> KtOracleReport {
        let rows = &self.rows;
        let test = self.test_mask();
        let n_q = self.content.questions.len();
        let (mut right, mut seen) = (vec![0u64; n_q], vec![0u64; n_q]);
        let (mut all_p, mut all_y) = (Vec::new(), Vec::new());
        let mut oracle = ClassificationAccumulator::new();
        for (i, &is_test) in test.iter().enumerate() {
            if rows.content_type_id[i] != 0 {
                continue;
            }
            let y = rows.answered_correctly[i] == 1;
            all_p.push(rows.p_correct[i]);
            all_y.push(y);
            if is_test {
                oracle.add(rows.p_correct[i] as f64, y);
            } else {
                let q = rows.content_id[i] as usize;
                seen[q] += 1;
                right[q] += y as u64;
            }
        }
        let total_right: u64 = right.iter().sum();
        let total_seen: u64 = seen.iter().sum();
        let overall = total_right as f64 / total_seen.max(1) as f64;
        let (mut base_p, mut base_y) = (Vec::new(), Vec::new());
        for i in (0..rows.len()).filter(|&i| test[i]) {
            let q = rows.content_id[i] as usize;
            base_p.push(if seen[q] > 0 { right[q] as f64 / seen[q] as f64 } else { overall });
            base_y.push(rows.answered_correctly[i] == 1);
        }
        let m = oracle.finish();
        let (static_p, static_y) = self.static_oracle(&test);
        KtOracleReport {
            auc_test: m.auc,
            auc_all: auc(&all_p, &all_y),
            log_loss_test: m.log_loss,
            accuracy_test: m.accuracy,
            baseline_question_mean_auc_test: auc(&base_p, &base_y),
            static_auc_test: auc(&static_p, &static_y),
            n_test: m.n,
            n_question_rows: all_p.len() as u64,
            n_rows: rows.len() as u64,
            n_learners: (self.learner_offsets.len() - 1) as u64,
            test_rule: TEST_RULE.into(),
            config: self.config.clone(),
        }
    }

    /// The static oracle's probabilities and answers on the test events
    /// (see [`KtOracleReport::static_auc_test`]): the logit of the true
    /// probability moved by `a · (k̄ − k)`, `a` the question's
    /// discrimination, `k` the row's knowledge term, `k̄` its learner's mean
    /// over non-test answers.
    fn static_oracle(&self, test: &[bool]) -> (Vec<f64>, Vec<bool>) {
        let (rows, c) = (&self.rows, self.config.guess);
        let (mut p, mut y) = (Vec::new(), Vec::new());
        for w in self.learner_offsets.windows(2) {
            let learner = w[0]..w[1];
            let train = learner.clone().filter(|&i| rows.content_type_id[i] == 0 && !test[i]);
            let (sum, n) = train.fold((0.0, 0usize), |(s, n), i| (s + rows.knowledge[i] as f64, n + 1));
            let mean = if n > 0 { sum / n as f64 } else { 0.0 };
            for i in learner.filter(|&i| test[i]) {
                let a = self.content.questions[rows.content_id[i] as usize].discrimination;
                let s = ((rows.p_correct[i] as f64 - c) / (1.0 - c)).clamp(1e-12, 1.0 - 1e-12);
                let z = (s / (1.0 - s)).ln() + a * (mean - rows.knowledge[i] as f64);
                p.push(c + (1.0 - c) / (1.0 + (-z).exp()));
                y.push(rows.answered_correctly[i] == 1);
            }
        }
        (p, y)
    }

    /// Writes `train.csv`, `questions.csv`, `lectures.csv`, `truth.csv` and
    /// `oracle.json` into `dir` (created if missing), each file atomically.
    ///
    /// # Errors
    /// [`Error::Io`] on a write failure.
    pub fn write_riiid_csv(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        self.write_train_csv(&dir.join("train.csv"))?;
        self.content.write_questions_csv(&dir.join("questions.csv"))?;
        self.content.write_lectures_csv(&dir.join("lectures.csv"))?;
        self.write_truth_csv(&dir.join("truth.csv"))?;
        let report = self.oracle_report();
        let json = serde_json::to_vec_pretty(&report)
            .map_err(|e| Error::Invalid(format!("serialising the kt oracle report: {e}")))?;
        let path = dir.join("oracle.json");
        write_atomic(&path, |f| f.write_all(&json).map_err(|e| Error::io(&path, e)))
    }

    /// Writes Riiid's `train.csv` (see the module documentation).
    ///
    /// # Errors
    /// [`Error::Io`] on write failure (nothing is left at `path`).
    pub fn write_train_csv(&self, path: &Path) -> Result<()> {
        let r = &self.rows;
        write_atomic(path, |f| {
            let io = |e| Error::io(path, e);
            let mut w = BufWriter::with_capacity(1 << 20, f);
            writeln!(w, "{TRAIN_HEADER}").map_err(io)?;
            for i in 0..r.len() {
                write!(
                    w,
                    "{i},{},{},{},{},{},{},{},",
                    r.timestamp[i],
                    r.user_id[i],
                    r.content_id[i],
                    r.content_type_id[i],
                    r.task_container_id[i],
                    r.user_answer[i],
                    r.answered_correctly[i]
                )
                .map_err(io)?;
                if !r.prior_elapsed[i].is_nan() {
                    write!(w, "{:.1}", r.prior_elapsed[i]).map_err(io)?;
                }
                let explained = match r.prior_explanation[i] {
                    1 => "True",
                    0 => "False",
                    _ => "",
                };
                writeln!(w, ",{explained}").map_err(io)?;
            }
            w.flush().map_err(io)
        })
    }

    /// Writes `truth.csv`: `row_id,p_correct` for every question row.
    ///
    /// # Errors
    /// [`Error::Io`] on write failure (nothing is left at `path`).
    pub fn write_truth_csv(&self, path: &Path) -> Result<()> {
        let r = &self.rows;
        write_atomic(path, |f| {
            let io = |e| Error::io(path, e);
            let mut w = BufWriter::with_capacity(1 << 20, f);
            w.write_all(b"row_id,p_correct\n").map_err(io)?;
            for i in (0..r.len()).filter(|&i| r.content_type_id[i] == 0) {
                writeln!(w, "{i},{:.6}", r.p_correct[i]).map_err(io)?;
            }
            w.flush().map_err(io)
        })
    }
}
