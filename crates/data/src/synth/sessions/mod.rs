//! Synthetic sessions from latent intents ("topics"), with an exact oracle.
//!
//! The world ([`SessionWorld`], built by [`SessionsConfig::build_world`]):
//! items are dealt evenly to `n_topics` primary topics in a random order;
//! with probability `second_topic_prob` an item also joins one other topic
//! chosen uniformly. Within a topic, popularity is Zipf(`zipf_s`) over a
//! random order of its members. Each (topic, member) gets `successors`
//! distinct other members of the topic, chosen uniformly, with Dirichlet(1)
//! weights (a topic of one member succeeds itself). The topic prior is
//! Zipf(`topic_zipf_s`) in topic index order (topic 0 most likely; items are
//! dealt randomly, so the order carries no other meaning).
//!
//! A session draws its topic from the prior, a length `2 + G` with `G`
//! geometric of mean `mean_extra_len` (capped so that the length is at most
//! `max_len`), a first item by the topic's popularity, then each next item:
//! with probability `repeat_prob` a copy of a uniformly chosen earlier
//! position; otherwise with probability `successor_prob` a successor of the
//! previous item under the topic; otherwise by the topic's popularity.
//! Session starts are uniform over `days` days from `start_unix_s`, sorted so
//! that session ids (1-based) increase with time; gaps within a session are
//! exponential with mean `mean_gap_s`; times are whole milliseconds.
//!
//! Evaluation and the oracle report live in [`eval`].

pub mod eval;
pub mod world;

use std::io::{BufWriter, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::io::write_atomic;
use crate::rng::{zipf_weights, Rng};
use crate::{Error, Result};

pub use eval::{evaluate_next_item, LastDaySplit, NextItemScorer, SessionsOracleReport};
pub use world::{OraclePrefix, SessionWorld, TopicSpec};

/// Parameters of the session generator; every field has a default, sized so
/// that generating and evaluating the oracle takes a few seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionsConfig {
    /// Number of items, ids `1..=n_items` (default 2000).
    pub n_items: usize,
    /// Number of topics (default 40).
    pub n_topics: usize,
    /// Probability `q` that an item also belongs to a second topic (default 0.2).
    pub second_topic_prob: f64,
    /// Zipf exponent `s` of popularity within a topic (default 1.0).
    pub zipf_s: f64,
    /// Zipf exponent of the topic prior (default 0.7).
    pub topic_zipf_s: f64,
    /// Successors `k` per (topic, member) (default 5).
    pub successors: usize,
    /// Probability `r` that the next item repeats an earlier one (default 0.15).
    pub repeat_prob: f64,
    /// Probability `a` of a successor of the previous item, given no repeat (default 0.6).
    pub successor_prob: f64,
    /// Mean of the geometric number of events beyond the first two (default 5.0).
    pub mean_extra_len: f64,
    /// Longest session (default 50, at least 2).
    pub max_len: usize,
    /// Number of sessions (default 40,000).
    pub n_sessions: usize,
    /// Days over which session starts are spread (default 30).
    pub days: f64,
    /// Mean gap between events of a session, seconds (default 60).
    pub mean_gap_s: f64,
    /// Unix time of the start of the first day, seconds (default 2014-04-01).
    pub start_unix_s: i64,
    /// Seed of everything (default 1).
    pub seed: u64,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        SessionsConfig {
            n_items: 3000,
            n_topics: 30,
            second_topic_prob: 0.2,
            zipf_s: 0.9,
            topic_zipf_s: 0.7,
            successors: 8,
            repeat_prob: 0.15,
            successor_prob: 0.5,
            mean_extra_len: 5.0,
            max_len: 50,
            n_sessions: 40_000,
            days: 30.0,
            mean_gap_s: 60.0,
            start_unix_s: 1_396_310_400,
            seed: 1,
        }
    }
}

/// Milliseconds per day.
pub const DAY_MS: i64 = 86_400_000;

impl SessionsConfig {
    /// Checks every field's range.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first bad key (path `<sessions config>`).
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, message: String| Err(Error::config("<sessions config>", key, message));
        let probs = [
            ("second_topic_prob", self.second_topic_prob),
            ("repeat_prob", self.repeat_prob),
            ("successor_prob", self.successor_prob),
        ];
        for (key, p) in probs {
            if !(0.0..=1.0).contains(&p) {
                return bad(key, format!("found {p}, expected a probability in [0, 1]"));
            }
        }
        let non_negative = [
            ("zipf_s", self.zipf_s),
            ("topic_zipf_s", self.topic_zipf_s),
            ("mean_extra_len", self.mean_extra_len),
            ("mean_gap_s", self.mean_gap_s),
        ];
        for (key, x) in non_negative {
            if !(x.is_finite() && x >= 0.0) {
                return bad(key, format!("found {x}, expected a finite number >= 0"));
            }
        }
        if self.n_items == 0 || self.n_items >= u32::MAX as usize {
            return bad("n_items", format!("found {}, expected 1..{}", self.n_items, u32::MAX));
        }
        if self.n_topics == 0 || self.n_topics > self.n_items {
            return bad("n_topics", format!("found {}, expected 1..={} (n_items)", self.n_topics, self.n_items));
        }
        if self.successors == 0 {
            return bad("successors", "found 0, expected at least 1".into());
        }
        if self.max_len < 2 {
            return bad("max_len", format!("found {}, expected at least 2", self.max_len));
        }
        if self.n_sessions == 0 {
            return bad("n_sessions", "found 0, expected at least 1".into());
        }
        // bounds that keep every millisecond time far inside i64.
        if !(self.days.is_finite() && self.days > 0.0 && self.days <= 1e6) {
            return bad("days", format!("found {}, expected a number of days in (0, 1e6]", self.days));
        }
        if self.mean_gap_s > 1e9 {
            return bad("mean_gap_s", format!("found {}, expected at most 1e9 seconds", self.mean_gap_s));
        }
        if self.start_unix_s.unsigned_abs() > 1_000_000_000_000 {
            return bad("start_unix_s", format!("found {}, expected |seconds| <= 1e12", self.start_unix_s));
        }
        Ok(())
    }

    /// Builds the world (topics, popularity, successors) from the seed.
    ///
    /// # Errors
    /// [`Error::Config`] when the configuration is invalid.
    pub fn build_world(&self) -> Result<SessionWorld> {
        self.validate()?;
        let mut rng = Rng::fork(self.seed, 0);
        let n_topics = self.n_topics;
        let mut members: Vec<Vec<u32>> = vec![Vec::new(); n_topics];
        let mut order: Vec<u32> = (1..=self.n_items as u32).collect();
        rng.shuffle(&mut order);
        for (pos, &item) in order.iter().enumerate() {
            let primary = pos % n_topics;
            members[primary].push(item);
            if n_topics > 1 && rng.bernoulli(self.second_topic_prob) {
                // uniform over the other topics: draw among n - 1 and skip the primary.
                let mut second = rng.below(n_topics as u64 - 1) as usize;
                if second >= primary {
                    second += 1;
                }
                members[second].push(item);
            }
        }
        let mut specs = Vec::with_capacity(n_topics);
        for mut m in members {
            // a random popularity order: Zipf weights by position after a shuffle.
            rng.shuffle(&mut m);
            let pop = zipf_weights(m.len(), self.zipf_s);
            let successors = (0..m.len()).map(|l| self.draw_successors(&m, l, &mut rng)).collect();
            specs.push(TopicSpec { members: m, pop, successors });
        }
        let prior = zipf_weights(n_topics, self.topic_zipf_s);
        SessionWorld::from_parts(self.n_items, specs, &prior, self.repeat_prob, self.successor_prob)
    }

    /// `successors` distinct members other than `members[l]`, uniformly, with
    /// Dirichlet(1) weights.
    fn draw_successors(&self, members: &[u32], l: usize, rng: &mut Rng) -> Vec<(u32, f64)> {
        if members.len() == 1 {
            return vec![(members[0], 1.0)];
        }
        let k = self.successors.min(members.len() - 1);
        // partial Fisher–Yates over the other members' positions.
        let mut others: Vec<usize> = (0..members.len()).filter(|&i| i != l).collect();
        for i in 0..k {
            let j = i + rng.below((others.len() - i) as u64) as usize;
            others.swap(i, j);
        }
        let w = rng.dirichlet_ones(k);
        others[..k].iter().zip(w).map(|(&i, wi)| (members[i], wi)).collect()
    }

    /// Generates the sessions (and the world behind them).
    ///
    /// # Errors
    /// [`Error::Config`] when the configuration is invalid.
    pub fn generate(&self) -> Result<SyntheticSessions> {
        let world = self.build_world()?;
        let mut rng = Rng::fork(self.seed, 1);
        let n = self.n_sessions;
        let span_ms = self.days * DAY_MS as f64;
        let mut starts: Vec<f64> = (0..n).map(|_| rng.uniform() * span_ms).collect();
        starts.sort_by(f64::total_cmp);
        let p_stop = 1.0 / (1.0 + self.mean_extra_len);
        let start_ms = self.start_unix_s * 1000;
        let mut out = SyntheticSessions {
            config: self.clone(),
            offsets: vec![0],
            items: Vec::new(),
            times_ms: Vec::new(),
            topics: Vec::with_capacity(n),
            origins: Vec::new(),
            world,
        };
        let mut locals: Vec<u32> = Vec::new();
        for &start in &starts {
            let w = &out.world;
            let z = w.sample_topic(&mut rng);
            let len = 2 + (rng.geometric(p_stop).min(self.max_len as u64 - 2) as usize);
            let mut t = start_ms + start.floor() as i64;
            locals.clear();
            let base = out.items.len();
            for j in 0..len {
                let ((item, local), origin) = if j == 0 {
                    (w.sample_popular(z, &mut rng), Origin::First)
                } else if rng.bernoulli(self.repeat_prob) {
                    let pos = rng.below(j as u64) as usize;
                    ((out.items[base + pos], locals[pos]), Origin::Repeat)
                } else if rng.bernoulli(self.successor_prob) {
                    (w.sample_successor(z, locals[j - 1], &mut rng), Origin::Successor)
                } else {
                    (w.sample_popular(z, &mut rng), Origin::Popular)
                };
                if j > 0 {
                    t += (rng.exponential(self.mean_gap_s) * 1000.0).round() as i64;
                }
                out.items.push(item);
                out.times_ms.push(t);
                out.origins.push(origin);
                locals.push(local);
            }
            out.topics.push(z as u32);
            out.offsets.push(out.items.len());
        }
        Ok(out)
    }
}

/// How an event was generated (kept for checking the generator).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// The first item of a session (topic popularity).
    First,
    /// A repeat of an earlier position.
    Repeat,
    /// A successor of the previous item.
    Successor,
    /// Drawn by topic popularity.
    Popular,
}

/// Generated sessions in CSR layout, with the world that generated them.
#[derive(Debug, Clone)]
pub struct SyntheticSessions {
    /// The configuration used.
    pub config: SessionsConfig,
    /// The generating world (and the oracle's knowledge).
    pub world: SessionWorld,
    /// Session `s` (id `s + 1`) spans `offsets[s]..offsets[s + 1]`.
    pub offsets: Vec<usize>,
    /// Item id (`1..=n_items`) of each event.
    pub items: Vec<u32>,
    /// Unix time of each event in milliseconds.
    pub times_ms: Vec<i64>,
    /// Topic of each session.
    pub topics: Vec<u32>,
    /// How each event was drawn.
    pub origins: Vec<Origin>,
}

impl SyntheticSessions {
    /// Number of sessions.
    pub fn n_sessions(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Items of session `s` (0-based index; its id is `s + 1`).
    pub fn items_of(&self, s: usize) -> &[u32] {
        &self.items[self.offsets[s]..self.offsets[s + 1]]
    }

    /// Times of session `s` in milliseconds.
    pub fn times_of(&self, s: usize) -> &[i64] {
        &self.times_ms[self.offsets[s]..self.offsets[s + 1]]
    }

    /// Writes GRU4Rec's TSV: header `SessionId\tItemId\tTime`, one event per
    /// line in session then time order, time in seconds with three decimals.
    ///
    /// # Errors
    /// [`Error::Io`] on write failure (nothing is left at `path`).
    pub fn write_gru4rec_tsv(&self, path: &Path) -> Result<()> {
        write_atomic(path, |f| {
            let io = |e| Error::io(path, e);
            let mut w = BufWriter::with_capacity(1 << 20, f);
            w.write_all(b"SessionId\tItemId\tTime\n").map_err(io)?;
            for s in 0..self.n_sessions() {
                for (&item, &t) in self.items_of(s).iter().zip(self.times_of(s)) {
                    let (secs, ms) = (t.div_euclid(1000), t.rem_euclid(1000));
                    writeln!(w, "{}\t{item}\t{secs}.{ms:03}", s + 1).map_err(io)?;
                }
            }
            w.flush().map_err(io)
        })
    }
}

#[cfg(test)]
mod tests;
