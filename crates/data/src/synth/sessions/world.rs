//! The latent-intent world behind the synthetic sessions, and its exact
//! Bayes predictor (the oracle).
//!
//! A world is a set of topics. Topic `t` has members (items), a popularity
//! distribution `pop_t` over them, and for each member `m` a successor
//! distribution `succ_t(m → ·)` over other members. A session picks a topic
//! `z` from the prior, a first item from `pop_z`, and then each next item
//! `x_j` (`j >= 1`) from
//!
//! ```text
//! P(x_j | x_<j, z) = r · c_j(x_j) / j + (1 − r) · (a · succ_z(x_{j−1} → x_j) + (1 − a) · pop_z(x_j))
//! ```
//!
//! where `c_j(x)` counts `x` among the `j` earlier items (a repeat picks an
//! earlier *position* uniformly, so items seen twice get twice the mass).
//! Sessions under `z` only ever contain members of `z`.
//!
//! The oracle conditions on a prefix only: its posterior over topics is
//! `P(z | x_<j) ∝ prior_z · pop_z(x_0) · Π P(x_i | x_<i, z)` (in log space),
//! and its prediction is `Σ_z P(z | x_<j) · P(x_j | x_<j, z)`. Item ids are
//! 1-based (`1..=n_items`, 0 is padding), and prediction vectors are indexed
//! by item id with entry 0 always 0.

use crate::rng::{AliasTable, Rng};
use crate::{Error, Result};

/// One topic given explicitly (for hand-built worlds and tests).
#[derive(Debug, Clone, PartialEq)]
pub struct TopicSpec {
    /// Member item ids, distinct, each in `1..=n_items`.
    pub members: Vec<u32>,
    /// Popularity of each member (aligned with `members`; normalised on use).
    pub pop: Vec<f64>,
    /// For each member (aligned), its successors as (item id, weight); the
    /// items must be members. Weights are normalised on use.
    pub successors: Vec<Vec<(u32, f64)>>,
}

/// A topic in sampling form.
#[derive(Debug, Clone)]
struct Topic {
    members: Vec<u32>,
    pop: Vec<f64>,
    pop_table: AliasTable,
    /// Successors of member `l`: `succ_start[l]..succ_start[l + 1]` into the two vectors below.
    succ_start: Vec<usize>,
    /// Local (member) index of each successor.
    succ_local: Vec<u32>,
    succ_weight: Vec<f64>,
    succ_tables: Vec<AliasTable>,
}

impl Topic {
    fn successors(&self, local: u32) -> (&[u32], &[f64]) {
        let r = self.succ_start[local as usize]..self.succ_start[local as usize + 1];
        (&self.succ_local[r.clone()], &self.succ_weight[r])
    }
}

/// The generating world of synthetic sessions: topics, their popularity and
/// successor distributions, the topic prior and the mixture weights.
#[derive(Debug, Clone)]
pub struct SessionWorld {
    n_items: usize,
    topics: Vec<Topic>,
    prior: Vec<f64>,
    prior_table: AliasTable,
    repeat_prob: f64,
    successor_prob: f64,
    /// For each item id, the (topic, local index) pairs it belongs to.
    memberships: Vec<Vec<(u32, u32)>>,
}

fn normalised(w: &[f64], what: &str) -> Result<Vec<f64>> {
    let sum: f64 = w.iter().sum();
    if w.is_empty() || w.iter().any(|x| !(x.is_finite() && *x >= 0.0)) || sum <= 0.0 {
        return Err(Error::Invalid(format!(
            "session world: {what} must be non-empty finite non-negative weights with a positive sum, found {w:?}"
        )));
    }
    Ok(w.iter().map(|x| x / sum).collect())
}

impl SessionWorld {
    /// Builds a world from explicit topics (`prior` aligned with `topics`).
    ///
    /// # Errors
    /// [`Error::Invalid`] when an item id is out of range or repeated in a
    /// topic, a successor is not a member, weights are not usable, or a
    /// probability is outside `[0, 1]`.
    pub fn from_parts(
        n_items: usize,
        topics: Vec<TopicSpec>,
        prior: &[f64],
        repeat_prob: f64,
        successor_prob: f64,
    ) -> Result<Self> {
        let bad = |m: String| Err(Error::Invalid(format!("session world: {m}")));
        if topics.is_empty() || topics.len() != prior.len() {
            return bad(format!("{} topics with {} prior weights", topics.len(), prior.len()));
        }
        for (name, p) in [("repeat_prob", repeat_prob), ("successor_prob", successor_prob)] {
            if !(0.0..=1.0).contains(&p) {
                return bad(format!("{name} = {p}, expected a probability in [0, 1]"));
            }
        }
        let prior = normalised(prior, "topic prior")?;
        let mut memberships = vec![Vec::new(); n_items + 1];
        let mut built = Vec::with_capacity(topics.len());
        for (t, spec) in topics.into_iter().enumerate() {
            if spec.pop.len() != spec.members.len() || spec.successors.len() != spec.members.len() {
                return bad(format!("topic {t}: members, pop and successors differ in length"));
            }
            for (l, &item) in spec.members.iter().enumerate() {
                if item == 0 || item as usize > n_items {
                    return bad(format!("topic {t}: item id {item} outside 1..={n_items}"));
                }
                let m: &mut Vec<(u32, u32)> = &mut memberships[item as usize];
                if m.iter().any(|&(tt, _)| tt as usize == t) {
                    return bad(format!("topic {t}: item {item} listed twice"));
                }
                m.push((t as u32, l as u32));
            }
            let pop = normalised(&spec.pop, &format!("topic {t} popularity"))?;
            let mut succ_start = vec![0];
            let (mut succ_local, mut succ_weight, mut succ_tables) = (Vec::new(), Vec::new(), Vec::new());
            for (l, succ) in spec.successors.iter().enumerate() {
                let w: Vec<f64> = succ.iter().map(|s| s.1).collect();
                let w = normalised(&w, &format!("topic {t} successors of member {l}"))?;
                for (&(item, _), &wi) in succ.iter().zip(&w) {
                    let Some(local) = spec.members.iter().position(|&m| m == item) else {
                        return bad(format!("topic {t}: successor {item} is not a member"));
                    };
                    succ_local.push(local as u32);
                    succ_weight.push(wi);
                }
                succ_start.push(succ_local.len());
                succ_tables.push(AliasTable::new(&w));
            }
            built.push(Topic {
                pop_table: AliasTable::new(&pop),
                members: spec.members,
                pop,
                succ_start,
                succ_local,
                succ_weight,
                succ_tables,
            });
        }
        Ok(SessionWorld {
            n_items,
            prior_table: AliasTable::new(&prior),
            topics: built,
            prior,
            repeat_prob,
            successor_prob,
            memberships,
        })
    }

    /// Number of items (ids `1..=n_items`).
    pub fn n_items(&self) -> usize {
        self.n_items
    }

    /// Number of topics.
    pub fn n_topics(&self) -> usize {
        self.topics.len()
    }

    /// The topic prior.
    pub fn prior(&self) -> &[f64] {
        &self.prior
    }

    /// Members of topic `t` (item ids), in the order their popularity is given.
    pub fn members(&self, t: usize) -> &[u32] {
        &self.topics[t].members
    }

    /// Popularity of the members of topic `t` (aligned with [`Self::members`]).
    pub fn popularity(&self, t: usize) -> &[f64] {
        &self.topics[t].pop
    }

    /// The (topic, member index) pairs of item `item`.
    pub fn topics_of(&self, item: u32) -> &[(u32, u32)] {
        self.memberships.get(item as usize).map_or(&[], Vec::as_slice)
    }

    fn local_in(&self, item: u32, t: usize) -> Option<u32> {
        self.topics_of(item).iter().find(|p| p.0 as usize == t).map(|p| p.1)
    }

    /// Draws a topic from the prior.
    pub(crate) fn sample_topic(&self, rng: &mut Rng) -> usize {
        self.prior_table.sample(rng)
    }

    /// Draws a member of topic `t` by popularity: (item id, member index).
    pub(crate) fn sample_popular(&self, t: usize, rng: &mut Rng) -> (u32, u32) {
        let topic = &self.topics[t];
        let l = topic.pop_table.sample(rng);
        (topic.members[l], l as u32)
    }

    /// Draws a successor of member `local` of topic `t`: (item id, member index).
    pub(crate) fn sample_successor(&self, t: usize, local: u32, rng: &mut Rng) -> (u32, u32) {
        let topic = &self.topics[t];
        let k = topic.succ_tables[local as usize].sample(rng);
        let l = topic.successors(local).0[k];
        (topic.members[l as usize], l)
    }

    /// Repeat probability `r`.
    pub fn repeat_prob(&self) -> f64 {
        self.repeat_prob
    }

    /// Successor probability `a` (given no repeat).
    pub fn successor_prob(&self) -> f64 {
        self.successor_prob
    }

    /// The posterior over topics given `prefix` (item ids). When the prefix
    /// is impossible under every topic it falls back to the prior.
    ///
    /// # Errors
    /// [`Error::Invalid`] when an item id is outside `1..=n_items`.
    pub fn posterior(&self, prefix: &[u32]) -> Result<Vec<f64>> {
        let mut state = OraclePrefix::new(self);
        for &x in prefix {
            state.push(x)?;
        }
        Ok(state.posterior())
    }

    /// The oracle's distribution of the item following `prefix`, indexed by
    /// item id (length `n_items + 1`, entry 0 is 0).
    ///
    /// # Errors
    /// [`Error::Invalid`] when an item id is outside `1..=n_items`.
    pub fn predict_next(&self, prefix: &[u32]) -> Result<Vec<f64>> {
        let mut state = OraclePrefix::new(self);
        for &x in prefix {
            state.push(x)?;
        }
        let mut out = vec![0.0; self.n_items + 1];
        state.predict(&mut out);
        Ok(out)
    }
}

/// The oracle's state after a prefix, updated one item at a time (O(topics +
/// k) per item), so that every position of a session costs one prediction.
#[derive(Debug, Clone)]
pub struct OraclePrefix<'w> {
    world: &'w SessionWorld,
    /// Unnormalised log posterior per topic (`-inf` where impossible).
    log_joint: Vec<f64>,
    items: Vec<u32>,
}

impl<'w> OraclePrefix<'w> {
    /// The empty prefix.
    pub fn new(world: &'w SessionWorld) -> Self {
        OraclePrefix { world, log_joint: world.prior.iter().map(|p| p.ln()).collect(), items: Vec::new() }
    }

    /// The prefix so far.
    pub fn items(&self) -> &[u32] {
        &self.items
    }

    /// `P(x | prefix, t)` for the current prefix, where `repeat` is the
    /// fraction of earlier positions holding `x`.
    fn likelihood(&self, x: u32, t: usize, repeat: f64) -> f64 {
        let w = self.world;
        let topic = &w.topics[t];
        let local = w.local_in(x, t);
        let pop = local.map_or(0.0, |l| topic.pop[l as usize]);
        let Some(&prev) = self.items.last() else {
            return pop;
        };
        let succ = match (w.local_in(prev, t), local) {
            (Some(lp), Some(lx)) => {
                let (succ_local, succ_weight) = topic.successors(lp);
                succ_local.iter().zip(succ_weight).filter(|(&s, _)| s == lx).map(|(_, &wt)| wt).sum()
            }
            _ => 0.0,
        };
        w.repeat_prob * repeat + (1.0 - w.repeat_prob) * (w.successor_prob * succ + (1.0 - w.successor_prob) * pop)
    }

    /// Appends item `x` to the prefix, updating the posterior.
    ///
    /// # Errors
    /// [`Error::Invalid`] when `x` is outside `1..=n_items`.
    pub fn push(&mut self, x: u32) -> Result<()> {
        if x == 0 || x as usize > self.world.n_items {
            return Err(Error::Invalid(format!("oracle: item id {x} outside 1..={}", self.world.n_items)));
        }
        let count = self.items.iter().filter(|&&y| y == x).count();
        let repeat = count as f64 / self.items.len().max(1) as f64;
        for t in 0..self.log_joint.len() {
            if self.log_joint[t] > f64::NEG_INFINITY {
                self.log_joint[t] += self.likelihood(x, t, repeat).ln();
            }
        }
        self.items.push(x);
        Ok(())
    }

    /// The normalised posterior over topics (the prior when every topic is
    /// impossible).
    pub fn posterior(&self) -> Vec<f64> {
        let max = self.log_joint.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if max == f64::NEG_INFINITY {
            return self.world.prior.clone();
        }
        let mut p: Vec<f64> = self.log_joint.iter().map(|&l| (l - max).exp()).collect();
        let sum: f64 = p.iter().sum();
        p.iter_mut().for_each(|x| *x /= sum);
        p
    }

    /// Writes the predictive distribution of the next item into `out`
    /// (indexed by item id; `out.len()` must be `n_items + 1`).
    ///
    /// # Panics
    /// If `out` has the wrong length (a caller bug).
    pub fn predict(&self, out: &mut [f64]) {
        let w = self.world;
        assert_eq!(out.len(), w.n_items + 1, "oracle: output length must be n_items + 1");
        out.fill(0.0);
        let post = self.posterior();
        let (repeat, rest) = if self.items.is_empty() { (0.0, 1.0) } else { (w.repeat_prob, 1.0 - w.repeat_prob) };
        let succ_share = if self.items.is_empty() { 0.0 } else { w.successor_prob };
        for (t, &pt) in post.iter().enumerate() {
            if pt == 0.0 {
                continue;
            }
            let topic = &w.topics[t];
            let pop_mass = pt * rest * (1.0 - succ_share);
            for (&item, &p) in topic.members.iter().zip(&topic.pop) {
                out[item as usize] += pop_mass * p;
            }
            if let Some(lp) = self.items.last().and_then(|&prev| w.local_in(prev, t)) {
                let (succ_local, succ_weight) = topic.successors(lp);
                for (&l, &wt) in succ_local.iter().zip(succ_weight) {
                    out[topic.members[l as usize] as usize] += pt * rest * succ_share * wt;
                }
            } else if succ_share > 0.0 {
                // the previous item is not a member (only after an impossible
                // prefix fell back to the prior): its successor mass goes to popularity.
                for (&item, &p) in topic.members.iter().zip(&topic.pop) {
                    out[item as usize] += pt * rest * succ_share * p;
                }
            }
        }
        if repeat > 0.0 {
            let each = repeat / self.items.len() as f64;
            for &x in &self.items {
                out[x as usize] += each;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Topic A = {1, 2}, pop (0.75, 0.25), 1→2, 2→1; topic B = {2, 3}, pop
    /// (0.5, 0.5), 2→3, 3→2; prior (0.6, 0.4); r = 0.2, a = 0.5.
    fn tiny() -> SessionWorld {
        let a =
            TopicSpec { members: vec![1, 2], pop: vec![0.75, 0.25], successors: vec![vec![(2, 1.0)], vec![(1, 1.0)]] };
        let b =
            TopicSpec { members: vec![2, 3], pop: vec![0.5, 0.5], successors: vec![vec![(3, 1.0)], vec![(2, 1.0)]] };
        SessionWorld::from_parts(3, vec![a, b], &[0.6, 0.4], 0.2, 0.5).unwrap()
    }

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12)
    }

    #[test]
    fn posterior_and_prediction_by_hand() {
        let w = tiny();
        // empty prefix: the prior, and the first-item marginal.
        assert!(close(&w.posterior(&[]).unwrap(), &[0.6, 0.4]));
        // P(1) = 0.6 * 0.75; P(2) = 0.6 * 0.25 + 0.4 * 0.5; P(3) = 0.4 * 0.5
        assert!(close(&w.predict_next(&[]).unwrap(), &[0.0, 0.45, 0.35, 0.2]));
        // [2]: joint A = 0.6 * 0.25 = 0.15, B = 0.4 * 0.5 = 0.2.
        assert!(close(&w.posterior(&[2]).unwrap(), &[3.0 / 7.0, 4.0 / 7.0]));
        // [2, 2]: P(2 | [2], A) = 0.2 + 0.8 * 0.5 * 0.25 = 0.3, B: 0.2 + 0.8 * 0.5 * 0.5 = 0.4;
        // joints 0.045 and 0.08, posterior (0.36, 0.64).
        assert!(close(&w.posterior(&[2, 2]).unwrap(), &[0.36, 0.64]));
        // next after [2, 2]:
        //   1: A only, 0.36 * 0.8 * (0.5 * 1 + 0.5 * 0.75) = 0.252
        //   2: repeat 0.2 + 0.36 * 0.8 * 0.5 * 0.25 + 0.64 * 0.8 * 0.5 * 0.5 = 0.364
        //   3: B only, 0.64 * 0.8 * (0.5 * 1 + 0.5 * 0.5) = 0.384
        assert!(close(&w.predict_next(&[2, 2]).unwrap(), &[0.0, 0.252, 0.364, 0.384]));
        // [1, 3] is impossible under both topics: the prior comes back.
        assert!(close(&w.posterior(&[1, 3]).unwrap(), &[0.6, 0.4]));
        assert!(w.predict_next(&[4]).is_err());
        assert!(w.posterior(&[0]).is_err());
    }

    #[test]
    fn predictions_sum_to_one() {
        let w = tiny();
        for prefix in [&[][..], &[1], &[2, 3], &[3, 2, 2, 3], &[1, 3]] {
            let p = w.predict_next(prefix).unwrap();
            assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12, "{prefix:?}: {p:?}");
        }
    }

    #[test]
    fn bad_parts_are_rejected() {
        let t = |members: Vec<u32>, succ: Vec<Vec<(u32, f64)>>| TopicSpec {
            pop: vec![1.0; members.len()],
            members,
            successors: succ,
        };
        assert!(SessionWorld::from_parts(2, vec![t(vec![1, 3], vec![vec![(1, 1.0)]; 2])], &[1.0], 0.1, 0.1).is_err());
        assert!(SessionWorld::from_parts(2, vec![t(vec![1, 1], vec![vec![(1, 1.0)]; 2])], &[1.0], 0.1, 0.1).is_err());
        assert!(SessionWorld::from_parts(3, vec![t(vec![1, 2], vec![vec![(3, 1.0)]; 2])], &[1.0], 0.1, 0.1).is_err());
        assert!(SessionWorld::from_parts(2, vec![t(vec![1, 2], vec![vec![(1, 1.0)]; 2])], &[1.0], 1.5, 0.1).is_err());
        assert!(SessionWorld::from_parts(2, vec![t(vec![1, 2], vec![vec![(1, 1.0)]; 2])], &[0.0], 0.1, 0.1).is_err());
        assert!(SessionWorld::from_parts(2, vec![t(vec![1, 2], vec![vec![(1, 1.0)]; 2])], &[1.0], 0.1, 0.1).is_ok());
    }
}
