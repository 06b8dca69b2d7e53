//! Synthetic knowledge tracing in Riiid's three-file schema, with the true
//! probability of every answer (the oracle).
//!
//! [`content`] draws the question/lecture bank (IRT-style questions in
//! bundles, with tags), [`learner`] simulates learners (ability, per-tag
//! offsets, knowledge that grows with practice and lectures and decays
//! with time), [`riiid_csv`] writes `train.csv`, `questions.csv`,
//! `lectures.csv`, `truth.csv` and `oracle.json`, and [`riiid_parquet`]
//! streams a Riiid-schema parquet of any number of rows for benchmarks.
//!
//! Rows are ordered by learner (increasing `user_id`) then time, as in
//! Riiid's `train.csv`; `row_id` counts from 0 in that order.
//!
//! The oracle is the generator's own `P(correct)`: it knows each learner's
//! latent ability and knowledge, which no model observes, so its AUC is an
//! upper bound for any model. Test events (the default protocol, the same
//! rule as the `last_fraction` split, so a prepared dataset's test questions
//! are exactly these): for each learner with `n` rows, the last
//! `round(n · test_fraction)` rows in row order (`f64::round`, halves away
//! from zero; a learner with `n = 4` has none at 0.1, with `n = 5` one);
//! the questions among them are the test targets.

pub mod content;
pub mod learner;
pub mod riiid_csv;
pub mod riiid_parquet;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

pub use content::{Content, Lecture, Question};
pub use learner::{history_len, simulate_learner, KtRows};
pub use riiid_csv::KtOracleReport;
pub use riiid_parquet::{write_riiid_parquet, write_riiid_parquet_with, ParquetSummary};

/// Parameters of the knowledge-tracing generator; every field has a default.
/// The defaults make about 5.1 million rows (26,000 learners), generated in
/// about a second in release: a Riiid-like dataset of at least 5 million
/// interactions for `seqrec data synth kt`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KtConfig {
    /// Learners (default 26,000: 5,180,637 rows with the other defaults;
    /// 2000 make about 470,000 and 22,000 about 4.4 million, the heavy tail
    /// of history lengths making the count grow unevenly).
    pub n_learners: usize,
    /// Questions, ids `0..n_questions` (default 3000).
    pub n_questions: usize,
    /// Lectures (default 100).
    pub n_lectures: usize,
    /// Tags, ids `0..n_tags` (default 20: with fewer tags each is practised
    /// more often, so its knowledge moves visibly over a history).
    pub n_tags: usize,
    /// Log-scale sd of question discrimination (default 0.3).
    pub discrimination_sd: f64,
    /// Guessing probability `c` (default 0.25, four choices).
    pub guess: f64,
    /// Sd of a learner's per-tag offsets (default 0.5).
    pub offset_sd: f64,
    /// Knowledge gained per practised question of a tag, `η_q` (default 0.3).
    ///
    /// The knowledge defaults (0.3, 1.0, 4.0, 2 days) make the dynamics
    /// matter: the static oracle (knowledge held at each learner's mean,
    /// `oracle.json` `static_auc_test`) trails the oracle by about 0.03
    /// AUC. The first defaults (0.02, 0.15, 2.0, 14 days, 60 tags) left
    /// 0.0002 between them: nothing a history could add beyond a learner's
    /// average.
    pub eta_question: f64,
    /// Knowledge gained per lecture of a tag, `η_l` (default 1.0).
    pub eta_lecture: f64,
    /// Knowledge saturates at this level (default 4.0).
    pub knowledge_max: f64,
    /// Forgetting time constant `τ`, days (default 2).
    pub forget_days: f64,
    /// Probability of a lecture before a bundle (default 0.03: about 2% of
    /// rows are lectures, as in Riiid).
    pub lecture_prob: f64,
    /// Probability that a bundle after onboarding is explained (default 0.9).
    pub explanation_prob: f64,
    /// Median history length in rows (default 40).
    pub len_median: f64,
    /// Log-scale sd of history lengths (default 1.8: most rows lie beyond
    /// position 200 of their history, as in Riiid).
    pub len_sigma: f64,
    /// Longest history in rows (default 20,000).
    pub max_len: usize,
    /// Fraction of each learner's rows that are test (default 0.1).
    pub test_fraction: f64,
    /// Seed of everything (default 1).
    pub seed: u64,
}

impl Default for KtConfig {
    fn default() -> Self {
        KtConfig {
            n_learners: 26_000,
            n_questions: 3000,
            n_lectures: 100,
            n_tags: 20,
            discrimination_sd: 0.3,
            guess: 0.25,
            offset_sd: 0.5,
            eta_question: 0.3,
            eta_lecture: 1.0,
            knowledge_max: 4.0,
            forget_days: 2.0,
            lecture_prob: 0.03,
            explanation_prob: 0.9,
            len_median: 40.0,
            len_sigma: 1.8,
            max_len: 20_000,
            test_fraction: 0.1,
            seed: 1,
        }
    }
}

impl KtConfig {
    /// Checks every field's range.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first bad key (path `<kt config>`).
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, message: String| Err(Error::config("<kt config>", key, message));
        let probs = [
            ("guess", self.guess),
            ("lecture_prob", self.lecture_prob),
            ("explanation_prob", self.explanation_prob),
            ("test_fraction", self.test_fraction),
        ];
        for (key, p) in probs {
            if !(0.0..=1.0).contains(&p) {
                return bad(key, format!("found {p}, expected a probability in [0, 1]"));
            }
        }
        let non_negative = [
            ("discrimination_sd", self.discrimination_sd),
            ("offset_sd", self.offset_sd),
            ("eta_question", self.eta_question),
            ("eta_lecture", self.eta_lecture),
            ("len_sigma", self.len_sigma),
        ];
        for (key, x) in non_negative {
            if !(x.is_finite() && x >= 0.0) {
                return bad(key, format!("found {x}, expected a finite number >= 0"));
            }
        }
        let positive =
            [("knowledge_max", self.knowledge_max), ("forget_days", self.forget_days), ("len_median", self.len_median)];
        for (key, x) in positive {
            if !(x.is_finite() && x > 0.0) {
                return bad(key, format!("found {x}, expected a finite number > 0"));
            }
        }
        let counts = [
            ("n_questions", self.n_questions, 1usize << 30),
            ("n_lectures", self.n_lectures, 1 << 20),
            ("n_tags", self.n_tags, u16::MAX as usize),
            ("max_len", self.max_len, 1 << 30),
        ];
        for (key, n, max) in counts {
            if n == 0 || n > max {
                return bad(key, format!("found {n}, expected 1..={max}"));
            }
        }
        Ok(())
    }

    /// Draws the question/lecture bank.
    ///
    /// # Errors
    /// [`Error::Config`] when the configuration is invalid.
    pub fn content(&self) -> Result<Content> {
        self.validate()?;
        Ok(Content::generate(self))
    }

    /// Generates the bank and all `n_learners` learners (in parallel).
    ///
    /// # Errors
    /// [`Error::Config`] when the configuration is invalid;
    /// [`Error::Invalid`] when a user id would overflow `i32`.
    pub fn generate(&self) -> Result<KtData> {
        let content = self.content()?;
        let parts: Vec<KtRows> = (0..self.n_learners as u64)
            .into_par_iter()
            .map(|l| {
                let mut rows = KtRows::default();
                simulate_learner(self, &content, l, &mut rows)?;
                Ok(rows)
            })
            .collect::<Result<_>>()?;
        let mut rows = KtRows::default();
        let mut learner_offsets = vec![0];
        for part in &parts {
            rows.extend(part);
            learner_offsets.push(rows.len());
        }
        Ok(KtData { config: self.clone(), content, rows, learner_offsets })
    }
}

/// Generated knowledge-tracing data held in memory.
#[derive(Debug, Clone)]
pub struct KtData {
    /// The configuration used.
    pub config: KtConfig,
    /// The question and lecture bank.
    pub content: Content,
    /// All rows, by learner then time (`row_id` = index).
    pub rows: KtRows,
    /// Learner `i`'s rows are `learner_offsets[i]..learner_offsets[i + 1]`.
    pub learner_offsets: Vec<usize>,
}

impl KtData {
    /// Per row: true for the test targets of the default protocol (see the
    /// module documentation): questions among each learner's last rows;
    /// lectures are never targets.
    pub fn test_mask(&self) -> Vec<bool> {
        let mut mask = vec![false; self.rows.len()];
        for w in self.learner_offsets.windows(2) {
            let n = w[1] - w[0];
            let n_test = ((n as f64 * self.config.test_fraction).round() as usize).min(n);
            let tail = w[1] - n_test..w[1];
            for (m, &kind) in mask[tail.clone()].iter_mut().zip(&self.rows.content_type_id[tail]) {
                *m = kind == 0;
            }
        }
        mask
    }
}

#[cfg(test)]
mod tests;
