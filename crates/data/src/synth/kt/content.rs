//! The question and lecture bank of the knowledge-tracing generator, and its
//! two Riiid metadata files (`questions.csv`, `lectures.csv`).
//!
//! Questions come in bundles (served together, one task container): a
//! bundle has 1 question with probability 0.8, otherwise 2 to 5 (uniform),
//! all in one part (1..=7, uniform); `bundle_id` is the id of its first
//! question, ids are consecutive from 0. Each question has 1 (p 0.55), 2
//! (p 0.3) or 3 (p 0.15) distinct tags out of `n_tags`, a difficulty
//! `b ~ N(0, 1)`, a discrimination `a ~ LogNormal(0, discrimination_sd)` and a
//! correct answer uniform in 0..=3. Lectures have one tag, a part and a
//! `type_of`; their ids are distinct draws from `0..2·n_questions +
//! n_lectures`, so they overlap question ids as Riiid's do (only
//! `content_type_id` tells them apart).

use std::io::{BufWriter, Write};
use std::path::Path;

use super::KtConfig;
use crate::rng::Rng;
use crate::{Error, Result};

/// Riiid's lecture kinds and roughly their shares there.
const LECTURE_TYPES: [(&str, f64); 4] =
    [("concept", 0.53), ("solving question", 0.45), ("intention", 0.017), ("starter", 0.003)];

/// One question of the bank.
#[derive(Debug, Clone, PartialEq)]
pub struct Question {
    /// `bundle_id`: the id of the bundle's first question.
    pub bundle_id: u32,
    /// The correct answer, 0..=3.
    pub correct_answer: u8,
    /// TOEIC part, 1..=7.
    pub part: u8,
    /// Tag ids (1 to 3, distinct).
    pub tags: Vec<u16>,
    /// Difficulty `b`.
    pub difficulty: f64,
    /// Discrimination `a`.
    pub discrimination: f64,
}

/// One lecture of the bank.
#[derive(Debug, Clone, PartialEq)]
pub struct Lecture {
    /// `lecture_id` (the `content_id` of lecture rows).
    pub id: u32,
    /// Its one tag.
    pub tag: u16,
    /// TOEIC part, 1..=7.
    pub part: u8,
    /// `type_of`.
    pub type_of: &'static str,
}

/// The question and lecture bank.
#[derive(Debug, Clone, PartialEq)]
pub struct Content {
    /// Questions by id (`question_id` = index).
    pub questions: Vec<Question>,
    /// Question id ranges of the bundles, in id order.
    pub bundles: Vec<std::ops::Range<u32>>,
    /// Lectures, by increasing id.
    pub lectures: Vec<Lecture>,
}

impl Content {
    /// Draws the bank for `cfg` (stream `u64::MAX` of its seed; learners use streams `0..`).
    pub fn generate(cfg: &KtConfig) -> Content {
        let mut rng = Rng::fork(cfg.seed, u64::MAX);
        let n_q = cfg.n_questions as u32;
        let mut questions = Vec::with_capacity(cfg.n_questions);
        let mut bundles = Vec::new();
        while (questions.len() as u32) < n_q {
            let start = questions.len() as u32;
            let size = if rng.bernoulli(0.8) { 1 } else { 2 + rng.below(4) as u32 };
            let end = (start + size).min(n_q);
            let part = 1 + rng.below(7) as u8;
            for _ in start..end {
                let u = rng.uniform();
                let n_tags = if u < 0.55 {
                    1
                } else if u < 0.85 {
                    2
                } else {
                    3
                };
                let tags = distinct_tags(n_tags.min(cfg.n_tags), cfg.n_tags, &mut rng);
                questions.push(Question {
                    bundle_id: start,
                    correct_answer: rng.below(4) as u8,
                    part,
                    tags,
                    difficulty: rng.normal(),
                    discrimination: (cfg.discrimination_sd * rng.normal()).exp(),
                });
            }
            bundles.push(start..end);
        }
        let id_space = 2 * cfg.n_questions as u64 + cfg.n_lectures as u64;
        let mut ids: Vec<u32> = Vec::with_capacity(cfg.n_lectures);
        // rejection keeps the ids distinct; the space is at least twice as large.
        let mut taken = rustc_hash::FxHashSet::default();
        while ids.len() < cfg.n_lectures {
            let id = rng.below(id_space) as u32;
            if taken.insert(id) {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        let type_weights: Vec<f64> = LECTURE_TYPES.iter().map(|t| t.1).collect();
        let types = crate::rng::AliasTable::new(&type_weights);
        let lectures = ids
            .into_iter()
            .map(|id| Lecture {
                id,
                tag: rng.below(cfg.n_tags as u64) as u16,
                part: 1 + rng.below(7) as u8,
                type_of: LECTURE_TYPES[types.sample(&mut rng)].0,
            })
            .collect();
        Content { questions, bundles, lectures }
    }

    /// Writes `questions.csv`: `question_id,bundle_id,correct_answer,part,tags`
    /// with the tags space-separated.
    ///
    /// # Errors
    /// [`Error::Io`] on write failure (nothing is left at `path`).
    pub fn write_questions_csv(&self, path: &Path) -> Result<()> {
        crate::io::write_atomic(path, |f| {
            let io = |e| Error::io(path, e);
            let mut w = BufWriter::new(f);
            w.write_all(b"question_id,bundle_id,correct_answer,part,tags\n").map_err(io)?;
            for (id, q) in self.questions.iter().enumerate() {
                let tags: Vec<String> = q.tags.iter().map(u16::to_string).collect();
                writeln!(w, "{id},{},{},{},{}", q.bundle_id, q.correct_answer, q.part, tags.join(" ")).map_err(io)?;
            }
            w.flush().map_err(io)
        })
    }

    /// Writes `lectures.csv`: `lecture_id,tag,part,type_of`.
    ///
    /// # Errors
    /// [`Error::Io`] on write failure (nothing is left at `path`).
    pub fn write_lectures_csv(&self, path: &Path) -> Result<()> {
        crate::io::write_atomic(path, |f| {
            let io = |e| Error::io(path, e);
            let mut w = BufWriter::new(f);
            w.write_all(b"lecture_id,tag,part,type_of\n").map_err(io)?;
            for l in &self.lectures {
                writeln!(w, "{},{},{},{}", l.id, l.tag, l.part, l.type_of).map_err(io)?;
            }
            w.flush().map_err(io)
        })
    }
}

/// `k` distinct tags out of `n`, in draw order.
fn distinct_tags(k: usize, n: usize, rng: &mut Rng) -> Vec<u16> {
    let mut tags: Vec<u16> = Vec::with_capacity(k);
    while tags.len() < k {
        let t = rng.below(n as u64) as u16;
        if !tags.contains(&t) {
            tags.push(t);
        }
    }
    tags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundles_tags_and_lecture_ids() {
        let cfg = KtConfig { n_questions: 500, n_lectures: 40, n_tags: 20, ..KtConfig::default() };
        let c = Content::generate(&cfg);
        assert_eq!(c.questions.len(), 500);
        assert_eq!(c.bundles.first().map(|b| b.start), Some(0));
        assert_eq!(c.bundles.last().map(|b| b.end), Some(500));
        assert!(c.bundles.windows(2).all(|w| w[0].end == w[1].start));
        let singles = c.bundles.iter().filter(|b| b.len() == 1).count() as f64 / c.bundles.len() as f64;
        assert!((0.7..0.9).contains(&singles), "single-question bundles {singles}");
        for b in &c.bundles {
            assert!((1..=5).contains(&b.len()));
            for q in b.clone() {
                let q = &c.questions[q as usize];
                assert_eq!(q.bundle_id, b.start);
                assert_eq!(q.part, c.questions[b.start as usize].part);
                assert!((1..=3).contains(&q.tags.len()) && q.tags.iter().all(|&t| t < 20));
                assert!(q.correct_answer < 4 && (1..=7).contains(&q.part));
            }
        }
        assert_eq!(c.lectures.len(), 40);
        assert!(c.lectures.windows(2).all(|w| w[0].id < w[1].id));
        assert!(c.lectures.iter().any(|l| l.id < 500), "lecture ids should overlap question ids");
        assert_eq!(Content::generate(&cfg), c);
    }
}
