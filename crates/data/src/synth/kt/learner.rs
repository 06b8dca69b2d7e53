//! One simulated learner: latent ability and per-tag knowledge, answering
//! question bundles and watching the odd lecture, written as Riiid rows.
//!
//! Learner `i` draws everything from `Rng::fork(seed, i)`, so learners can be
//! simulated in any order, on any number of threads, with identical output.
//!
//! - `θ ~ N(0, 1)`; per-tag offset `o_g ~ N(0, offset_sd)`; knowledge
//!   `k_g = 0` at the start.
//! - Knowledge decays with time: read at time `t`, it is
//!   `k_g · exp(−(t − t_g) / τ)` where `t_g` is its last update and `τ =
//!   forget_days`. It grows after a bundle by `η_q · (k_max − k_g) / k_max`
//!   per question of the bundle carrying tag `g` (the answers become visible
//!   after the bundle, so every question of a bundle sees the knowledge from
//!   before it), and after a lecture of tag `g` by `η_l · (k_max − k_g) / k_max`
//!   (growth saturates at `k_max`).
//! - `P(correct) = c + (1 − c) · σ(a · (θ + mean_{g ∈ tags}(o_g + k_g) − b))`.
//! - History length in rows: `round(exp(ln(len_median) + len_sigma · N(0,1)))`
//!   clamped to `1..=max_len` (the last bundle may pass it by up to 4 rows).
//!   Before each bundle but the first, a lecture (uniform) comes with
//!   probability `lecture_prob`. Bundles are chosen uniformly.
//! - Time: the first event is at 0 ms; a bundle takes the sum of its
//!   questions' answer times (each `round(exp(ln 18 + 0.6·N))` s, clamped to
//!   1..=300 s), then an idle gap: exponential mean 4 s (p 0.8), log-normal
//!   with median 10 min (p 0.17), or exponential mean 2 days (p 0.03). A
//!   lecture takes a log-normal time with median 4 min.
//! - `prior_question_elapsed_time` is the mean answer time (ms, floored) of
//!   the previous bundle; `prior_question_had_explanation` whether that bundle
//!   was explained (never in the first 5 bundles, the onboarding test, then
//!   with probability `explanation_prob`). Both are empty on the first
//!   bundle; on lectures the elapsed time is empty and the flag is False.
//! - `task_container_id` counts bundles and lectures from 0; `user_id` is
//!   `115 + 10·i + u` with `u` uniform in 0..10, increasing with `i`.

use super::content::Content;
use super::KtConfig;
use crate::rng::Rng;
use crate::{Error, Result};

/// Bundles answered without explanation at the start (onboarding).
const ONBOARDING_BUNDLES: u32 = 5;
const DAY_MS: f64 = 86_400_000.0;

/// Rows in Riiid's `train.csv` layout (without `row_id`), column by column.
/// Equality compares floats bit for bit, so that rows with empty (NaN)
/// fields equal themselves.
#[derive(Debug, Clone, Default)]
pub struct KtRows {
    /// ms since the learner's first event.
    pub timestamp: Vec<i64>,
    /// Learner id.
    pub user_id: Vec<i32>,
    /// Question id or lecture id.
    pub content_id: Vec<i32>,
    /// 0 question, 1 lecture.
    pub content_type_id: Vec<i8>,
    /// Bundle / lecture counter of the learner.
    pub task_container_id: Vec<i32>,
    /// Answer 0..=3, -1 on lectures.
    pub user_answer: Vec<i8>,
    /// 1/0, -1 on lectures.
    pub answered_correctly: Vec<i8>,
    /// Mean answer time of the previous bundle, ms; NaN where empty.
    pub prior_elapsed: Vec<f32>,
    /// Previous bundle explained: 1/0, -1 where empty.
    pub prior_explanation: Vec<i8>,
    /// The generator's probability of a correct answer; NaN on lectures.
    pub p_correct: Vec<f32>,
    /// The knowledge part of the answer's logit before the discrimination
    /// factor, `mean_{g ∈ tags} k_g` at answer time; NaN on lectures. With
    /// it the oracle report holds a learner's knowledge fixed (the static
    /// oracle).
    pub knowledge: Vec<f32>,
}

impl PartialEq for KtRows {
    fn eq(&self, other: &Self) -> bool {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
        self.timestamp == other.timestamp
            && self.user_id == other.user_id
            && self.content_id == other.content_id
            && self.content_type_id == other.content_type_id
            && self.task_container_id == other.task_container_id
            && self.user_answer == other.user_answer
            && self.answered_correctly == other.answered_correctly
            && self.prior_explanation == other.prior_explanation
            && bits(&self.prior_elapsed) == bits(&other.prior_elapsed)
            && bits(&self.p_correct) == bits(&other.p_correct)
            && bits(&self.knowledge) == bits(&other.knowledge)
    }
}

impl KtRows {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.timestamp.len()
    }

    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.timestamp.is_empty()
    }

    /// Appends all rows of `other`.
    pub fn extend(&mut self, other: &KtRows) {
        self.extend_range(other, 0..other.len());
    }

    /// Appends rows `range` of `other`.
    pub fn extend_range(&mut self, other: &KtRows, range: std::ops::Range<usize>) {
        self.timestamp.extend_from_slice(&other.timestamp[range.clone()]);
        self.user_id.extend_from_slice(&other.user_id[range.clone()]);
        self.content_id.extend_from_slice(&other.content_id[range.clone()]);
        self.content_type_id.extend_from_slice(&other.content_type_id[range.clone()]);
        self.task_container_id.extend_from_slice(&other.task_container_id[range.clone()]);
        self.user_answer.extend_from_slice(&other.user_answer[range.clone()]);
        self.answered_correctly.extend_from_slice(&other.answered_correctly[range.clone()]);
        self.prior_elapsed.extend_from_slice(&other.prior_elapsed[range.clone()]);
        self.prior_explanation.extend_from_slice(&other.prior_explanation[range.clone()]);
        self.p_correct.extend_from_slice(&other.p_correct[range.clone()]);
        self.knowledge.extend_from_slice(&other.knowledge[range]);
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        t: i64,
        user: i32,
        content: i32,
        kind: i8,
        container: i32,
        answer: i8,
        correct: i8,
        prior: (f32, i8),
        (p, knowledge): (f32, f32),
    ) {
        self.timestamp.push(t);
        self.user_id.push(user);
        self.content_id.push(content);
        self.content_type_id.push(kind);
        self.task_container_id.push(container);
        self.user_answer.push(answer);
        self.answered_correctly.push(correct);
        self.prior_elapsed.push(prior.0);
        self.prior_explanation.push(prior.1);
        self.p_correct.push(p);
        self.knowledge.push(knowledge);
    }
}

/// The Riiid `user_id` of learner `learner`, and the learner's generator
/// positioned after that draw.
///
/// # Errors
/// [`Error::Invalid`] when the id would not fit an `i32`.
fn user_id(seed: u64, learner: u64) -> Result<(i32, Rng)> {
    let mut rng = Rng::fork(seed, learner);
    let id = 115 + 10 * learner as u128 + rng.below(10) as u128;
    let id = i32::try_from(id)
        .map_err(|_| Error::Invalid(format!("kt generator: learner {learner} gives user id {id}, beyond i32")))?;
    Ok((id, rng))
}

/// Per-tag knowledge with its last update time.
struct Knowledge {
    level: Vec<f64>,
    updated: Vec<i64>,
    tau_ms: f64,
    k_max: f64,
}

impl Knowledge {
    fn at(&self, tag: usize, t: i64) -> f64 {
        self.level[tag] * (-((t - self.updated[tag]) as f64) / self.tau_ms).exp()
    }

    fn learn(&mut self, tag: usize, t: i64, eta: f64) {
        let k = self.at(tag, t);
        self.level[tag] = k + eta * (self.k_max - k) / self.k_max;
        self.updated[tag] = t;
    }
}

/// A learner's first draws: user id, ability, per-tag offsets and history
/// length, and the generator positioned after them.
struct Start {
    user: i32,
    rng: Rng,
    theta: f64,
    offsets: Vec<f64>,
    len: usize,
}

fn start(cfg: &KtConfig, learner: u64) -> Result<Start> {
    let (user, mut rng) = user_id(cfg.seed, learner)?;
    let theta = rng.normal();
    let offsets: Vec<f64> = (0..cfg.n_tags).map(|_| cfg.offset_sd * rng.normal()).collect();
    let len = (cfg.len_median.ln() + cfg.len_sigma * rng.normal()).exp().round();
    let len = len.clamp(1.0, cfg.max_len as f64) as usize;
    Ok(Start { user, rng, theta, offsets, len })
}

/// The history length learner `learner` is drawn (without simulating it):
/// [`simulate_learner`] appends at least this many rows, and at most 4 more
/// (the last bundle is finished).
///
/// # Errors
/// [`Error::Invalid`] when the learner's user id would not fit an `i32`.
pub fn history_len(cfg: &KtConfig, learner: u64) -> Result<usize> {
    start(cfg, learner).map(|s| s.len)
}

/// Simulates learner `learner` and appends its rows to `out`; returns the
/// number of rows appended.
///
/// # Errors
/// [`Error::Invalid`] when the learner's user id would not fit an `i32`.
pub fn simulate_learner(cfg: &KtConfig, content: &Content, learner: u64, out: &mut KtRows) -> Result<usize> {
    let Start { user, mut rng, theta, offsets, len } = start(cfg, learner)?;
    let mut know = Knowledge {
        level: vec![0.0; cfg.n_tags],
        updated: vec![0; cfg.n_tags],
        tau_ms: cfg.forget_days * DAY_MS,
        k_max: cfg.knowledge_max,
    };
    let start = out.len();
    let (mut t, mut container, mut bundles_done) = (0i64, 0i32, 0u32);
    // (mean answer time ms, explained) of the previous bundle.
    let mut prior: Option<(f32, bool)> = None;
    while out.len() - start < len {
        if bundles_done > 0 && !content.lectures.is_empty() && rng.bernoulli(cfg.lecture_prob) {
            let lecture = &content.lectures[rng.below(content.lectures.len() as u64) as usize];
            out.push(t, user, lecture.id as i32, 1, container, -1, -1, (f32::NAN, 0), (f32::NAN, f32::NAN));
            know.learn(lecture.tag as usize, t, cfg.eta_lecture);
            t += (lognormal(&mut rng, 240.0, 0.7) * 1000.0).round() as i64;
            container += 1;
            continue;
        }
        let bundle = content.bundles[rng.below(content.bundles.len() as u64) as usize].clone();
        let prior_cols = prior.map_or((f32::NAN, -1), |(e, x)| (e, x as i8));
        let mut answer_ms = 0i64;
        for q in bundle.clone() {
            let question = &content.questions[q as usize];
            let n_tags = question.tags.len() as f64;
            let offset: f64 = question.tags.iter().map(|&g| offsets[g as usize]).sum::<f64>() / n_tags;
            let knowledge: f64 = question.tags.iter().map(|&g| know.at(g as usize, t)).sum::<f64>() / n_tags;
            let z = question.discrimination * (theta + offset + knowledge - question.difficulty);
            let p = cfg.guess + (1.0 - cfg.guess) / (1.0 + (-z).exp());
            let correct = rng.bernoulli(p);
            let answer =
                if correct { question.correct_answer } else { (question.correct_answer + 1 + rng.below(3) as u8) % 4 };
            out.push(
                t,
                user,
                q as i32,
                0,
                container,
                answer as i8,
                correct as i8,
                prior_cols,
                (p as f32, knowledge as f32),
            );
            answer_ms += 1000 * lognormal(&mut rng, 18.0, 0.6).round().clamp(1.0, 300.0) as i64;
        }
        for q in bundle.clone() {
            for &g in &content.questions[q as usize].tags {
                know.learn(g as usize, t, cfg.eta_question);
            }
        }
        let explained = bundles_done >= ONBOARDING_BUNDLES && rng.bernoulli(cfg.explanation_prob);
        prior = Some(((answer_ms / bundle.len() as i64) as f32, explained));
        bundles_done += 1;
        container += 1;
        t += answer_ms + idle_gap_ms(&mut rng);
    }
    Ok(out.len() - start)
}

/// Log-normal with the given median and log-scale sd.
fn lognormal(rng: &mut Rng, median: f64, sigma: f64) -> f64 {
    median * (sigma * rng.normal()).exp()
}

/// Idle time after a bundle: seconds mostly, minutes often, days rarely.
fn idle_gap_ms(rng: &mut Rng) -> i64 {
    let u = rng.uniform();
    let secs = if u < 0.8 {
        rng.exponential(4.0)
    } else if u < 0.97 {
        lognormal(rng, 600.0, 1.0)
    } else {
        rng.exponential(2.0 * 86_400.0)
    };
    (secs * 1000.0).round() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (KtConfig, Content) {
        let cfg = KtConfig { n_questions: 300, n_lectures: 20, n_tags: 15, ..KtConfig::default() };
        let content = Content::generate(&cfg);
        (cfg, content)
    }

    #[test]
    fn rows_are_consistent_with_the_content() {
        let (cfg, content) = setup();
        let mut rows = KtRows::default();
        let mut n = 0;
        for learner in 0..30 {
            n += simulate_learner(&cfg, &content, learner, &mut rows).unwrap();
        }
        assert_eq!(n, rows.len());
        for i in 0..rows.len() {
            if rows.content_type_id[i] == 0 {
                let q = &content.questions[rows.content_id[i] as usize];
                let right = rows.user_answer[i] as u8 == q.correct_answer;
                assert_eq!(right, rows.answered_correctly[i] == 1);
                assert!(rows.p_correct[i] > 0.25 && rows.p_correct[i] < 1.0);
            } else {
                assert!(content.lectures.iter().any(|l| l.id as i32 == rows.content_id[i]));
                assert_eq!((rows.user_answer[i], rows.answered_correctly[i]), (-1, -1));
                assert!(rows.prior_elapsed[i].is_nan() && rows.p_correct[i].is_nan());
                assert_eq!(rows.prior_explanation[i], 0);
            }
        }
        // per learner: time and container never decrease; a container shares one timestamp.
        for i in 1..rows.len() {
            if rows.user_id[i] == rows.user_id[i - 1] {
                assert!(rows.timestamp[i] >= rows.timestamp[i - 1]);
                let same = rows.task_container_id[i] == rows.task_container_id[i - 1];
                assert!(same || rows.task_container_id[i] == rows.task_container_id[i - 1] + 1);
                assert!(!same || rows.timestamp[i] == rows.timestamp[i - 1]);
            } else {
                assert!(rows.user_id[i] > rows.user_id[i - 1]);
                assert_eq!((rows.timestamp[i], rows.task_container_id[i]), (0, 0));
            }
        }
    }

    #[test]
    fn history_len_is_what_the_simulation_fills() {
        let (cfg, content) = setup();
        for learner in 0..40 {
            let mut rows = KtRows::default();
            let n = simulate_learner(&cfg, &content, learner, &mut rows).unwrap();
            let len = history_len(&cfg, learner).unwrap();
            assert!((len..=len + 4).contains(&n), "learner {learner}: {n} rows for length {len}");
        }
    }

    #[test]
    fn learners_do_not_depend_on_order() {
        let (cfg, content) = setup();
        let mut a = KtRows::default();
        simulate_learner(&cfg, &content, 3, &mut a).unwrap();
        let mut b = KtRows::default();
        simulate_learner(&cfg, &content, 9, &mut b).unwrap();
        let before = b.len();
        simulate_learner(&cfg, &content, 3, &mut b).unwrap();
        let mut tail = KtRows::default();
        tail.extend_range(&b, before..b.len());
        assert_eq!(tail, a);
    }

    #[test]
    fn user_ids_beyond_i32_are_an_error() {
        let (cfg, content) = setup();
        let mut rows = KtRows::default();
        let err = simulate_learner(&cfg, &content, 300_000_000, &mut rows).unwrap_err();
        assert!(err.to_string().contains("beyond i32"), "{err}");
        assert!(rows.is_empty());
    }

    #[test]
    fn knowledge_decays_and_saturates() {
        let mut k = Knowledge { level: vec![0.0], updated: vec![0], tau_ms: 1000.0, k_max: 2.0 };
        k.learn(0, 0, 0.5);
        assert!((k.at(0, 0) - 0.5).abs() < 1e-12);
        assert!((k.at(0, 1000) - 0.5 * (-1f64).exp()).abs() < 1e-12);
        k.learn(0, 0, 0.5); // 0.5 + 0.5 * 1.5 / 2
        assert!((k.at(0, 0) - 0.875).abs() < 1e-12);
        for _ in 0..1000 {
            k.learn(0, 0, 0.5);
        }
        assert!(k.at(0, 0) <= 2.0 + 1e-12);
    }
}
