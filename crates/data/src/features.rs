//! Time-gap features: the gap to the previous event of the same sequence in
//! seconds, through `log1p`, z-scored with parameters fitted on training
//! events only (first events, which have no previous event, excluded). The
//! fitted [`GapParams`] are persisted with the dataset and applied to every
//! part, and to new sessions at inference, unchanged.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::split::Part;
use crate::store::SequenceStore;

/// Milliseconds (the store's time unit) per second.
const MS_PER_SECOND: f64 = 1000.0;

/// z-score parameters of `log1p(gap seconds)`, fitted on training events.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GapParams {
    /// Mean of `log1p(gap)` over the fitted events (0 when there were none).
    pub mean: f64,
    /// Population standard deviation of `log1p(gap)` (0 when there were none).
    pub std: f64,
    /// Number of events fitted on.
    pub n: u64,
}

impl GapParams {
    /// The feature of one gap in seconds: `(log1p(gap) - mean) / std`, with a
    /// zero `std` taken as 1 and negative gaps as 0.
    pub fn normalise(&self, gap_seconds: f64) -> f32 {
        let std = if self.std > 0.0 { self.std } else { 1.0 };
        ((log1p_gap(gap_seconds) - self.mean) / std) as f32
    }
}

/// `log1p` of a gap in seconds, negative gaps taken as 0. Gaps come in whole
/// milliseconds, so `ln(1 + x)` loses nothing that matters (relative error
/// below 1e-12 for x >= 0.001) and is several times faster than `ln_1p`.
fn log1p_gap(gap_seconds: f64) -> f64 {
    (1.0 + gap_seconds.max(0.0)).ln()
}

/// The gap of every event to the previous event of its sequence, in seconds;
/// 0 on the first event of each sequence (tell those apart with
/// [`is_first_event`], not by the value).
pub fn raw_gaps_seconds(store: &SequenceStore) -> Vec<f64> {
    let mut gaps = vec![0.0; store.n_events()];
    store.par_for_each_sequence_mut(&mut gaps, |s, g| {
        let t = store.times_of(s);
        for k in 1..g.len() {
            g[k] = t[k].saturating_sub(t[k - 1]) as f64 / MS_PER_SECOND;
        }
    });
    gaps
}

/// Whether each event is the first of its sequence.
pub fn is_first_event(store: &SequenceStore) -> Vec<bool> {
    let mut first = vec![false; store.n_events()];
    store.par_for_each_sequence_mut(&mut first, |_, f| f[0] = true);
    first
}

/// Fits [`GapParams`] on the training events of `store` that are not first
/// events; validation and test events have no influence.
///
/// # Panics
/// If `parts.len() != store.n_events()` (a caller bug).
pub fn fit_gaps(store: &SequenceStore, parts: &[Part]) -> GapParams {
    assert_eq!(parts.len(), store.n_events(), "fit_gaps: {} parts for {} events", parts.len(), store.n_events());
    let stats = (0..store.n_seq())
        .into_par_iter()
        .fold(ShiftedSums::default, |mut sums, s| {
            let r = store.range(s);
            let later_parts = &parts[(r.start + 1).min(r.end)..r.end];
            for (t, &p) in store.times[r].windows(2).zip(later_parts) {
                if p == Part::Train {
                    sums.push(log1p_gap(t[1].saturating_sub(t[0]) as f64 / MS_PER_SECOND));
                }
            }
            sums
        })
        .map(ShiftedSums::moments)
        .reduce(Moments::default, Moments::merge);
    let std = if stats.n > 0 { (stats.m2 / stats.n as f64).sqrt() } else { 0.0 };
    GapParams { mean: stats.mean, std, n: stats.n }
}

/// The normalised gap feature of every event (see [`GapParams::normalise`]);
/// 0.0 on first events.
pub fn normalise_gaps(store: &SequenceStore, params: &GapParams) -> Vec<f32> {
    let mut out = vec![0.0f32; store.n_events()];
    store.par_for_each_sequence_mut(&mut out, |s, g| {
        let t = store.times_of(s);
        for k in 1..g.len() {
            g[k] = params.normalise(t[k].saturating_sub(t[k - 1]) as f64 / MS_PER_SECOND);
        }
    });
    out
}

/// Sums of values minus a shift (the first value): cheap to accumulate
/// (no division per value) and, unlike raw sums of squares, free of
/// cancellation when the spread is small next to the mean.
#[derive(Debug, Clone, Copy, Default)]
struct ShiftedSums {
    n: u64,
    shift: f64,
    sum: f64,
    sum_sq: f64,
}

impl ShiftedSums {
    fn push(&mut self, x: f64) {
        if self.n == 0 {
            self.shift = x;
        }
        let d = x - self.shift;
        self.n += 1;
        self.sum += d;
        self.sum_sq += d * d;
    }

    fn moments(self) -> Moments {
        if self.n == 0 {
            return Moments::default();
        }
        let n = self.n as f64;
        Moments { n: self.n, mean: self.shift + self.sum / n, m2: (self.sum_sq - self.sum * self.sum / n).max(0.0) }
    }
}

/// Count, mean and sum of squared deviations, merged across threads with
/// Chan et al.'s pairwise update.
#[derive(Debug, Clone, Copy, Default)]
struct Moments {
    n: u64,
    mean: f64,
    m2: f64,
}

impl Moments {
    fn merge(a: Moments, b: Moments) -> Moments {
        if a.n == 0 {
            return b;
        }
        if b.n == 0 {
            return a;
        }
        let n = a.n + b.n;
        let d = b.mean - a.mean;
        let wb = b.n as f64 / n as f64;
        Moments { n, mean: a.mean + d * wb, m2: a.m2 + b.m2 + d * d * a.n as f64 * wb }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::store::Events;

    /// One sequence per slice of times (ms), item 1 everywhere.
    fn store(seqs: &[&[i64]]) -> SequenceStore {
        let mut e = Events::default();
        for (s, times) in seqs.iter().enumerate() {
            for &t in times.iter() {
                e.seq.push(s as u32 + 1);
                e.items.push(1);
                e.times.push(t);
            }
        }
        SequenceStore::from_events(e).unwrap()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn raw_gaps_are_seconds_to_the_previous_event() {
        let s = store(&[&[0, 1000, 4000], &[500, 500, 2500], &[7]]);
        assert_eq!(raw_gaps_seconds(&s), vec![0.0, 1.0, 3.0, 0.0, 0.0, 2.0, 0.0]);
        assert_eq!(is_first_event(&s), vec![true, false, false, true, false, false, true]);
    }

    #[test]
    fn fit_uses_training_gaps_only() {
        use Part::{Test as Te, Train as Tr};
        // Training gaps 1 s and 3 s: log1p = ln 2 and ln 4 = 2 ln 2, so mean
        // 1.5 ln 2 and population std 0.5 ln 2. The test sequence's gaps
        // (one of them huge) must not move the parameters.
        let parts = [Tr, Tr, Tr, Te, Te, Te];
        let s = store(&[&[0, 1000, 4000], &[500, 500, 2500]]);
        let p = fit_gaps(&s, &parts);
        let ln2 = 2f64.ln();
        assert!(close(p.mean, 1.5 * ln2) && close(p.std, 0.5 * ln2), "{p:?}");
        assert_eq!(p.n, 2);
        let s_far = store(&[&[0, 1000, 4000], &[500, 500, 9_000_000_000]]);
        assert_eq!(fit_gaps(&s_far, &parts), p);

        // Features: (x - 1.5 ln 2) / (0.5 ln 2); first events 0.
        let g = normalise_gaps(&s, &p);
        let expect = [0.0, -1.0, 1.0, 0.0, -3.0, 2.0 * 3f64.log2() - 3.0];
        for (got, want) in g.iter().zip(expect) {
            assert!((*got as f64 - want).abs() < 1e-5, "{g:?}");
        }
    }

    #[test]
    fn no_training_gaps_and_zero_std() {
        let s = store(&[&[0], &[0, 1000]]);
        let p = fit_gaps(&s, &[Part::Train, Part::Test, Part::Test]);
        assert_eq!(p, GapParams { mean: 0.0, std: 0.0, n: 0 });
        // std 0 is taken as 1: the feature is log1p(gap) - mean.
        let p = GapParams { mean: 0.5, std: 0.0, n: 3 };
        let g = normalise_gaps(&s, &p);
        assert_eq!(g[..2], [0.0, 0.0]);
        assert!((g[2] as f64 - (2f64.ln() - 0.5)).abs() < 1e-6);
    }

    #[test]
    fn parallel_fit_matches_a_two_pass_reference() {
        let mut rng = Rng::new(5);
        let n = 80_000;
        let e = Events {
            seq: (0..n).map(|_| 1 + rng.below(3000) as u32).collect(),
            items: vec![1; n],
            times: (0..n).map(|_| rng.below(1 << 40) as i64).collect(),
            ..Events::default()
        };
        let s = SequenceStore::from_events(e).unwrap();
        let parts: Vec<Part> = (0..n).map(|_| if rng.bernoulli(0.8) { Part::Train } else { Part::Test }).collect();
        let p = fit_gaps(&s, &parts);
        let first = is_first_event(&s);
        let xs: Vec<f64> = raw_gaps_seconds(&s)
            .iter()
            .enumerate()
            .filter(|&(i, _)| !first[i] && parts[i] == Part::Train)
            .map(|(_, g)| g.ln_1p())
            .collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert_eq!(p.n, xs.len() as u64);
        assert!(close(p.mean, mean) && close(p.std, var.sqrt()), "{p:?} vs {mean} {}", var.sqrt());
    }

    #[test]
    fn params_round_trip_through_json() {
        let p = GapParams { mean: 1.25, std: 0.5, n: 7 };
        let back: GapParams = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }
}
