//! Item distributions for negative sampling: `support^alpha` over the items
//! seen in training ([`PopularitySampler`]) and uniform over the whole
//! vocabulary ([`UniformSampler`]).
//!
//! Items without training support get weight 0 at every alpha, including
//! alpha 0 (we take `0^0` as 0): GRU4Rec builds its item vocabulary from the
//! training data, so every item it knows has support at least 1 and its
//! alpha 0 is "uniform over the training items". Ours is the same.

use seqrec_data::rng::{AliasTable, Rng};
use seqrec_data::{Error, Result, SequenceStore};

use crate::Sampler;

/// Counts, per item id, the events of `store` selected by `mask` (all events when `None`).
///
/// The result has `n_items + 1` entries, indexed by item id; entry 0 (padding) is 0.
///
/// # Errors
/// [`Error::Invalid`] when the mask length differs from the number of events, or
/// an event carries item 0 or an id above `n_items`.
pub fn count_supports(store: &SequenceStore, mask: Option<&[bool]>, n_items: usize) -> Result<Vec<u64>> {
    if let Some(mask) = mask {
        if mask.len() != store.items.len() {
            return Err(Error::Invalid(format!(
                "support mask has {} entries, expected one per event ({})",
                mask.len(),
                store.items.len()
            )));
        }
    }
    let mut supports = vec![0u64; n_items + 1];
    for (e, &item) in store.items.iter().enumerate() {
        if mask.is_some_and(|m| !m[e]) {
            continue;
        }
        let i = item as usize;
        if i == 0 || i > n_items {
            return Err(Error::Invalid(format!("event {e} has item id {item}, expected an id in 1..={n_items}")));
        }
        supports[i] += 1;
    }
    Ok(supports)
}

/// Draws item ids with probability proportional to `support^alpha` (items with support 0: never).
#[derive(Debug, Clone)]
pub struct PopularitySampler {
    alpha: f64,
    /// Indexed by item id; entry 0 is the padding id and always 0.
    supports: Vec<u64>,
    /// The ids with positive support, in the alias table's order: only they
    /// are in the table, so no rounding in it can ever yield padding or an unseen item.
    ids: Vec<u32>,
    table: AliasTable,
    /// Natural log of the sum of all weights.
    log_total: f64,
}

impl PopularitySampler {
    /// A sampler for `supports` indexed by item id (`supports[0]`, the padding id, must be 0).
    ///
    /// # Errors
    /// [`Error::Invalid`] when `alpha` is not finite, `supports` is empty, has a
    /// non-zero entry 0 or more than `u32::MAX` items, no item has positive
    /// support, or `support^alpha` overflows.
    pub fn new(supports: &[u64], alpha: f64) -> Result<Self> {
        if !alpha.is_finite() {
            return Err(Error::Invalid(format!("sample_alpha is {alpha}, expected a finite number")));
        }
        match supports.first() {
            None => return Err(Error::Invalid("no item supports given, expected n_items + 1 entries".into())),
            Some(&s0) if s0 != 0 => {
                return Err(Error::Invalid(format!(
                    "support of the padding id 0 is {s0}, expected 0 (supports are indexed by item id 1..=n_items)"
                )))
            }
            Some(_) => {}
        }
        if supports.len() - 1 > u32::MAX as usize {
            return Err(Error::Invalid(format!("{} items, expected at most {}", supports.len() - 1, u32::MAX)));
        }
        let ids: Vec<u32> = (1..supports.len()).filter(|&i| supports[i] > 0).map(|i| i as u32).collect();
        if ids.is_empty() {
            return Err(Error::Invalid(format!(
                "none of the {} items has positive support, expected at least one",
                supports.len() - 1
            )));
        }
        let weights: Vec<f64> = ids.iter().map(|&i| (supports[i as usize] as f64).powf(alpha)).collect();
        let total: f64 = weights.iter().sum();
        if !total.is_finite() || total <= 0.0 {
            return Err(Error::Invalid(format!(
                "the sum of support^{alpha} is {total}, expected a positive finite number (alpha too large?)"
            )));
        }
        let table = AliasTable::new(&weights);
        Ok(PopularitySampler { alpha, supports: supports.to_vec(), ids, table, log_total: total.ln() })
    }

    /// A sampler over the events of `store` selected by `mask` (e.g. the training part).
    ///
    /// # Errors
    /// As [`count_supports`] and [`PopularitySampler::new`].
    pub fn from_store(store: &SequenceStore, mask: Option<&[bool]>, n_items: usize, alpha: f64) -> Result<Self> {
        PopularitySampler::new(&count_supports(store, mask, n_items)?, alpha)
    }

    /// The exponent applied to supports.
    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    /// Number of items that can be drawn (positive support).
    pub fn n_drawable(&self) -> usize {
        self.ids.len()
    }

    /// Training support of `item` (0 for padding and ids out of range).
    pub fn support(&self, item: u32) -> u64 {
        self.supports.get(item as usize).copied().unwrap_or(0)
    }

    /// Probability of drawing `item`.
    pub fn prob(&self, item: u32) -> f64 {
        match self.support(item) {
            0 => 0.0,
            s => ((s as f64).powf(self.alpha).ln() - self.log_total).exp(),
        }
    }

    /// Natural log of the raw support of `item` (GRU4Rec's logQ term); `-inf` for support 0.
    ///
    /// Items with support 0 are never sampled and never training targets, so the
    /// `-inf` cannot reach a training loss built from the same training part.
    pub fn log_pop(&self, item: u32) -> f32 {
        (self.support(item) as f64).ln() as f32
    }

    /// [`PopularitySampler::log_pop`] of every id `0..=n_items`, for a lookup table in the model.
    pub fn log_pops(&self) -> Vec<f32> {
        self.supports.iter().map(|&s| (s as f64).ln() as f32).collect()
    }
}

impl Sampler for PopularitySampler {
    fn n_items(&self) -> usize {
        self.supports.len() - 1
    }

    fn fill(&self, rng: &mut Rng, out: &mut [u32]) {
        for slot in out {
            *slot = self.ids[self.table.sample(rng)];
        }
    }

    fn log_prob(&self, item: u32) -> f32 {
        match self.support(item) {
            0 => f32::NEG_INFINITY,
            s => (self.alpha * (s as f64).ln() - self.log_total) as f32,
        }
    }
}

/// Draws item ids uniformly from `1..=n_items`, whatever their support.
#[derive(Debug, Clone)]
pub struct UniformSampler {
    n_items: u32,
}

impl UniformSampler {
    /// A sampler over `1..=n_items`.
    ///
    /// # Errors
    /// [`Error::Invalid`] when `n_items` is 0 or above `u32::MAX`.
    pub fn new(n_items: usize) -> Result<Self> {
        match u32::try_from(n_items) {
            Ok(n) if n > 0 => Ok(UniformSampler { n_items: n }),
            _ => Err(Error::Invalid(format!("{n_items} items, expected 1..={}", u32::MAX))),
        }
    }
}

impl Sampler for UniformSampler {
    fn n_items(&self) -> usize {
        self.n_items as usize
    }

    fn fill(&self, rng: &mut Rng, out: &mut [u32]) {
        for slot in out {
            *slot = rng.below(u64::from(self.n_items)) as u32 + 1;
        }
    }

    fn log_prob(&self, item: u32) -> f32 {
        if item == 0 || item > self.n_items {
            f32::NEG_INFINITY
        } else {
            -(f64::from(self.n_items).ln() as f32)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Pearson's statistic of `counts` against `probs` (cells with probability 0 skipped).
    pub(crate) fn chi_square(counts: &[u64], probs: &[f64]) -> f64 {
        let n: u64 = counts.iter().sum();
        counts
            .iter()
            .zip(probs)
            .filter(|(_, &p)| p > 0.0)
            .map(|(&c, &p)| {
                let expect = p * n as f64;
                (c as f64 - expect).powi(2) / expect
            })
            .sum()
    }

    /// Upper 0.001 quantiles of chi-square for 8 and 9 degrees of freedom (standard tables).
    pub(crate) const CHI2_999_DF8: f64 = 26.124;
    pub(crate) const CHI2_999_DF9: f64 = 27.877;

    /// Items 1..=10; item 3 has no support, so 9 drawable items (8 degrees of freedom).
    pub(crate) const SUPPORTS: [u64; 11] = [0, 5, 1, 0, 20, 3, 8, 13, 2, 40, 1];

    /// `support^alpha / sum` by hand, indexed by item id.
    pub(crate) fn expected(alpha: f64) -> Vec<f64> {
        let w: Vec<f64> = SUPPORTS.iter().map(|&s| if s == 0 { 0.0 } else { (s as f64).powf(alpha) }).collect();
        let total: f64 = w.iter().sum();
        w.iter().map(|x| x / total).collect()
    }

    fn draw_counts(sampler: &dyn Sampler, seed: u64, n: usize) -> Vec<u64> {
        let mut ids = vec![0u32; n];
        sampler.fill(&mut Rng::new(seed), &mut ids);
        let mut counts = vec![0u64; sampler.n_items() + 1];
        for id in ids {
            counts[id as usize] += 1;
        }
        counts
    }

    #[test]
    fn frequencies_match_support_pow_alpha() {
        for (alpha, other) in [(0.0, 1.0), (0.5, 1.0), (1.0, 0.5)] {
            let sampler = PopularitySampler::new(&SUPPORTS, alpha).unwrap();
            assert_eq!(sampler.n_drawable(), 9);
            let counts = draw_counts(&sampler, 11, 200_000);
            assert_eq!(counts[0], 0, "padding drawn at alpha {alpha}");
            assert_eq!(counts[3], 0, "zero-support item drawn at alpha {alpha}");
            let stat = chi_square(&counts, &expected(alpha));
            assert!(stat < CHI2_999_DF8, "alpha {alpha}: chi-square {stat} >= {CHI2_999_DF8}");
            // The test has power: the same draws are rejected under another alpha.
            let wrong = chi_square(&counts, &expected(other));
            assert!(wrong > 100.0 * CHI2_999_DF8, "alpha {alpha} vs {other}: chi-square only {wrong}");
        }
    }

    #[test]
    fn log_prob_and_log_pop_by_hand() {
        let pop = PopularitySampler::new(&SUPPORTS, 1.0).unwrap();
        assert!((pop.log_prob(4) - (20.0f32 / 93.0).ln()).abs() < 1e-6);
        assert!((pop.prob(9) - 40.0 / 93.0).abs() < 1e-12);
        assert_eq!(pop.log_prob(3), f32::NEG_INFINITY);
        assert_eq!(pop.log_prob(0), f32::NEG_INFINITY);
        assert_eq!(pop.log_prob(11), f32::NEG_INFINITY);
        let total: f64 = (0..=10).map(|i| pop.prob(i)).sum();
        assert!((total - 1.0).abs() < 1e-12);

        let half = PopularitySampler::new(&SUPPORTS, 0.5).unwrap();
        let sqrt_sum: f64 = SUPPORTS.iter().map(|&s| (s as f64).sqrt()).sum();
        assert!((half.log_prob(1) as f64 - (5f64.sqrt() / sqrt_sum).ln()).abs() < 1e-6);

        let flat = PopularitySampler::new(&SUPPORTS, 0.0).unwrap();
        assert!((flat.log_prob(9) + 9f32.ln()).abs() < 1e-6);
        assert!((flat.log_prob(10) + 9f32.ln()).abs() < 1e-6);

        // log_pop is the raw support whatever alpha.
        assert!((flat.log_pop(4) - 20f32.ln()).abs() < 1e-6);
        assert_eq!(flat.log_pop(3), f32::NEG_INFINITY);
        let table = flat.log_pops();
        assert_eq!(table.len(), 11);
        assert_eq!(table[10], 0.0);
        assert!((table[9] - 40f32.ln()).abs() < 1e-6);
    }

    #[test]
    fn supports_from_store_and_mask() {
        let store = SequenceStore {
            offsets: vec![0, 3, 5],
            seq_ids: vec![0, 1],
            items: vec![1, 2, 1, 3, 1],
            times: vec![0, 1, 2, 0, 1],
            ..Default::default()
        };
        assert_eq!(count_supports(&store, None, 4).unwrap(), vec![0, 3, 1, 1, 0]);
        let train = [true, true, false, true, false];
        assert_eq!(count_supports(&store, Some(&train), 3).unwrap(), vec![0, 1, 1, 1]);
        assert!(count_supports(&store, Some(&train[..4]), 3).unwrap_err().to_string().contains("4 entries"));
        assert!(count_supports(&store, None, 2).unwrap_err().to_string().contains("item id 3"));

        let sampler = PopularitySampler::from_store(&store, Some(&train), 4, 1.0).unwrap();
        assert_eq!(sampler.n_items(), 4);
        assert_eq!((sampler.support(1), sampler.support(4)), (1, 0));
        let counts = draw_counts(&sampler, 5, 3_000);
        assert_eq!((counts[0], counts[4]), (0, 0));
    }

    #[test]
    fn bad_supports_and_alpha_are_errors() {
        let msg = |r: Result<PopularitySampler>| r.unwrap_err().to_string();
        assert!(msg(PopularitySampler::new(&[3, 1, 2], 1.0)).contains("padding id 0 is 3"));
        assert!(msg(PopularitySampler::new(&[0, 0, 0], 1.0)).contains("none of the 2 items"));
        assert!(msg(PopularitySampler::new(&[], 1.0)).contains("no item supports"));
        assert!(msg(PopularitySampler::new(&[0, 1], f64::NAN)).contains("finite"));
        assert!(msg(PopularitySampler::new(&[0, 1_000_000, 2], 100.0)).contains("alpha too large"));
    }

    #[test]
    fn uniform_covers_the_vocabulary() {
        assert!(UniformSampler::new(0).is_err());
        let sampler = UniformSampler::new(10).unwrap();
        let counts = draw_counts(&sampler, 3, 100_000);
        assert_eq!(counts[0], 0);
        let mut probs = vec![0.1; 11];
        probs[0] = 0.0;
        let stat = chi_square(&counts, &probs);
        assert!(stat < CHI2_999_DF9, "chi-square {stat}");
        assert!((sampler.log_prob(7) + 10f32.ln()).abs() < 1e-6);
        assert_eq!(sampler.log_prob(11), f32::NEG_INFINITY);
    }
}
