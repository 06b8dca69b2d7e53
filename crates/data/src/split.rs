//! Splits: leave-last-n-out per sequence, sessions starting in the last N
//! days, a global time cut, the last fraction of each sequence, or whole
//! sequences by a seeded hash. Each event gets a [`Part`]; test (and
//! validation) events whose item never occurs in training are removed and
//! counted.
//!
//! Protocol choices: with `LeaveLastOut`, a sequence of at most `n + valid`
//! events stays entirely in training (counted in the report). With
//! `LastDays`, a session's part is decided by its *first* event (GRU4Rec
//! uses the session's start or end depending on the script; we use the
//! start, so a session is never cut in two), and validation or test sessions
//! left with a single event after the unseen-item removal are dropped, as
//! GRU4Rec does for its test set and, by cutting it the same way, for its
//! validation set. With `BySequence`, a sequence's part depends only on the
//! seed and its id in `vocab/seq` (the sorted raw keys as read, before
//! filtering), not on the thread count or on the filters: a learner is
//! entirely test, entirely validation or entirely training, and unseen-item
//! removal may still take events out of a test or validation learner.

use std::sync::atomic::{AtomicUsize, Ordering};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::store::{compact_in_place, kept_per_chunk, SequenceStore};
use crate::{Error, Result};

mod unseen;

use unseen::{strike_single_event_sessions, TrainItems};

/// Which part of the split an event belongs to (stored as `u8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[repr(u8)]
pub enum Part {
    /// Training event.
    Train = 0,
    /// Validation event.
    Valid = 1,
    /// Test event.
    Test = 2,
}

/// How to split. Recipe section `[split]`, tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SplitConfig {
    /// Everything is training data.
    #[default]
    None,
    /// Per sequence, in time order: the last `n` events are test, the `valid`
    /// events before them validation, the rest training.
    LeaveLastOut {
        /// Test events per sequence.
        #[serde(default = "one")]
        n: usize,
        /// Validation events per sequence (0: none).
        #[serde(default = "one")]
        valid: usize,
    },
    /// Sequences (sessions) that start in the last `days` days of the data are
    /// test; those starting in the `valid_days` before them validation
    /// (GRU4Rec's protocol).
    LastDays {
        /// Test window, in days, ending at the last event.
        days: f64,
        /// Validation window before the test window, in days (0: none).
        #[serde(default)]
        valid_days: f64,
    },
    /// A global cut: events at or after `test_from` (ms) are test, those at or
    /// after `valid_from` (ms) and before `test_from` validation.
    TimeCut {
        /// First test time, ms.
        test_from: i64,
        /// First validation time, ms.
        #[serde(default)]
        valid_from: Option<i64>,
    },
    /// Per sequence, in time order: the last `test` fraction of its events are
    /// test, the `valid` fraction before them validation (knowledge tracing).
    LastFraction {
        /// Fraction of each sequence's events that are test.
        test: f64,
        /// Fraction of each sequence's events that validate.
        #[serde(default)]
        valid: f64,
    },
    /// Whole sequences (learners, users): a sequence is test when the seeded
    /// hash of its id ([`crate::rng::unit_hash`], uniform in `[0, 1)`) is
    /// below `test`, validation when it is below `test + valid`, training
    /// otherwise; so about `test` of the sequences are test and `valid`
    /// validation.
    BySequence {
        /// Fraction of the sequences that are test.
        test: f64,
        /// Fraction of the sequences that validate.
        #[serde(default)]
        valid: f64,
        /// Seed of the hash (default 0).
        #[serde(default)]
        seed: u64,
    },
}

fn one() -> usize {
    1
}

/// Milliseconds in a day.
const DAY_MS: f64 = 86_400_000.0;

/// A count per part.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartCounts {
    /// Training.
    pub train: usize,
    /// Validation.
    pub valid: usize,
    /// Test.
    pub test: usize,
}

impl PartCounts {
    fn sum(a: PartCounts, b: PartCounts) -> PartCounts {
        PartCounts { train: a.train + b.train, valid: a.valid + b.valid, test: a.test + b.test }
    }

    fn add(&mut self, part: Part, k: usize) {
        match part {
            Part::Train => self.train += k,
            Part::Valid => self.valid += k,
            Part::Test => self.test += k,
        }
    }
}

/// What [`apply`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitReport {
    /// The split's kind, as in the recipe (`leave_last_out`, ...).
    pub kind: String,
    /// Events per part, after removals.
    pub events: PartCounts,
    /// Sequences with at least one event in the part, after removals.
    pub sequences: PartCounts,
    /// Validation and test events removed because their item (of the same
    /// kind) never occurs among training events.
    pub removed_unseen: usize,
    /// The validation share of `removed_unseen`.
    pub removed_unseen_valid: usize,
    /// The test share of `removed_unseen`.
    pub removed_unseen_test: usize,
    /// `LastDays` only: validation and test sessions left with one event
    /// after the unseen-item removal, and dropped (one event each).
    pub removed_short_sessions: usize,
    /// Sequences left with no events, and removed.
    pub removed_sequences: usize,
    /// `LeaveLastOut` only: sequences of at most `n + valid` events, kept
    /// entirely in training.
    pub short_sequences_in_train: usize,
}

/// Assigns every event a [`Part`], removes validation and test events whose
/// item is not in training (and, for `LastDays`, sessions left too short),
/// and returns the remaining store with the parts aligned to its events.
///
/// # Errors
/// [`Error::Invalid`] when `cfg` holds an impossible value (see
/// [`SplitConfig::check`]), its message starting with the key (`split.test: ...`).
pub fn apply(store: SequenceStore, cfg: &SplitConfig) -> Result<(SequenceStore, Vec<Part>, SplitReport)> {
    cfg.check().map_err(|(key, message)| Error::Invalid(format!("split.{key}: {message}")))?;
    let mut report = SplitReport { kind: kind_name(cfg).to_owned(), ..SplitReport::default() };
    let (parts, short) = assign_parts(&store, cfg);
    report.short_sequences_in_train = short;

    let seen = TrainItems::of(&store, &parts);
    let mut keep: Vec<bool> =
        (0..store.n_events()).into_par_iter().map(|i| parts[i] == Part::Train || seen.contains(&store, i)).collect();
    let unseen = count_parts(&parts, Some(&keep), false);
    report.removed_unseen_valid = unseen.valid;
    report.removed_unseen_test = unseen.test;
    report.removed_unseen = unseen.valid + unseen.test;
    if matches!(cfg, SplitConfig::LastDays { .. }) {
        report.removed_short_sessions = strike_single_event_sessions(&store, &parts, &mut keep);
    }

    let (mut store, mut parts) = (store, parts);
    if keep.par_iter().any(|&k| !k) {
        let n_seq = store.n_seq();
        store.retain_in_place(&keep);
        compact_in_place(&mut parts, &keep, &kept_per_chunk(&keep));
        report.removed_sequences = n_seq - store.n_seq();
    }
    report.events = count_parts(&parts, None, true);
    report.sequences = sequences_per_part(&store, &parts);
    Ok((store, parts, report))
}

fn kind_name(cfg: &SplitConfig) -> &'static str {
    match cfg {
        SplitConfig::None => "none",
        SplitConfig::LeaveLastOut { .. } => "leave_last_out",
        SplitConfig::LastDays { .. } => "last_days",
        SplitConfig::TimeCut { .. } => "time_cut",
        SplitConfig::LastFraction { .. } => "last_fraction",
        SplitConfig::BySequence { .. } => "by_sequence",
    }
}

impl SplitConfig {
    /// Checks the values serde cannot: days finite and `>= 0`, fractions in
    /// `[0, 1]` with `test + valid <= 1`, `valid_from` at or before `test_from`.
    ///
    /// # Errors
    /// The offending key within `[split]` (`test`, `valid`, ...) and what was
    /// expected; [`crate::recipe::Recipe`] reports it as `split.<key>`.
    pub fn check(&self) -> std::result::Result<(), (&'static str, String)> {
        match *self {
            SplitConfig::LastDays { days, valid_days } => {
                for (key, v) in [("days", days), ("valid_days", valid_days)] {
                    if !(v.is_finite() && v >= 0.0) {
                        return Err((key, format!("expected a finite number of days >= 0, found {v}")));
                    }
                }
            }
            SplitConfig::LastFraction { test, valid } | SplitConfig::BySequence { test, valid, .. } => {
                for (key, v) in [("test", test), ("valid", valid)] {
                    if !(0.0..=1.0).contains(&v) {
                        return Err((key, format!("expected a fraction in [0, 1], found {v}")));
                    }
                }
                if test + valid > 1.0 {
                    return Err(("valid", format!("test + valid must be at most 1, found {test} + {valid}")));
                }
            }
            SplitConfig::TimeCut { test_from, valid_from: Some(valid_from) } if valid_from > test_from => {
                return Err((
                    "valid_from",
                    format!("expected a time at or before test_from ({test_from}), found {valid_from}"),
                ));
            }
            _ => {}
        }
        Ok(())
    }
}

/// The part of a whole sequence with id `seq_id` under `BySequence`.
fn sequence_part(seq_id: u32, test: f64, valid: f64, seed: u64) -> Part {
    let u = crate::rng::unit_hash(seed, u64::from(seq_id));
    if u < test {
        Part::Test
    } else if u < test + valid {
        Part::Valid
    } else {
        Part::Train
    }
}

/// The part of every event, and how many sequences `LeaveLastOut` left
/// entirely in training.
fn assign_parts(store: &SequenceStore, cfg: &SplitConfig) -> (Vec<Part>, usize) {
    let mut parts = vec![Part::Train; store.n_events()];
    let short = AtomicUsize::new(0);
    match *cfg {
        SplitConfig::None => {}
        SplitConfig::LeaveLastOut { n, valid } => {
            store.par_for_each_sequence_mut(&mut parts, |_, p| {
                if p.len() <= n.saturating_add(valid) {
                    short.fetch_add(1, Ordering::Relaxed);
                } else {
                    mark_tail(p, n, valid);
                }
            });
        }
        SplitConfig::LastDays { days, valid_days } => {
            let t_max = store.times.par_iter().copied().max().unwrap_or(0);
            let test_cut = t_max.saturating_sub((days * DAY_MS).round() as i64);
            let valid_cut = test_cut.saturating_sub((valid_days * DAY_MS).round() as i64);
            store.par_for_each_sequence_mut(&mut parts, |s, p| {
                let start = store.times[store.offsets[s]];
                if start >= test_cut {
                    p.fill(Part::Test);
                } else if start >= valid_cut {
                    p.fill(Part::Valid);
                }
            });
        }
        SplitConfig::TimeCut { test_from, valid_from } => {
            let valid_from = valid_from.unwrap_or(test_from);
            parts.par_iter_mut().zip(&store.times).for_each(|(p, &t)| {
                if t >= test_from {
                    *p = Part::Test;
                } else if t >= valid_from {
                    *p = Part::Valid;
                }
            });
        }
        SplitConfig::LastFraction { test, valid } => {
            store.par_for_each_sequence_mut(&mut parts, |_, p| {
                let len = p.len();
                let n_test = ((len as f64 * test).round() as usize).min(len);
                let n_valid = ((len as f64 * valid).round() as usize).min(len - n_test);
                mark_tail(p, n_test, n_valid);
            });
        }
        SplitConfig::BySequence { test, valid, seed } => {
            store.par_for_each_sequence_mut(&mut parts, |s, p| {
                p.fill(sequence_part(store.seq_ids[s], test, valid, seed));
            });
        }
    }
    (parts, short.into_inner())
}

/// Marks the last `n_test` entries Test and the `n_valid` before them Valid.
fn mark_tail(p: &mut [Part], n_test: usize, n_valid: usize) {
    let len = p.len();
    let test_from = len.saturating_sub(n_test);
    let valid_from = test_from.saturating_sub(n_valid);
    p[valid_from..test_from].fill(Part::Valid);
    p[test_from..].fill(Part::Test);
}

/// Events per part, counting only those whose `keep` flag equals `kept`
/// (all events without `keep`).
fn count_parts(parts: &[Part], keep: Option<&[bool]>, kept: bool) -> PartCounts {
    let chunk = 1 << 16;
    parts
        .par_chunks(chunk)
        .enumerate()
        .map(|(c, ps)| {
            let mut counts = PartCounts::default();
            for (j, &p) in ps.iter().enumerate() {
                if keep.is_none_or(|k| k[c * chunk + j] == kept) {
                    counts.add(p, 1);
                }
            }
            counts
        })
        .reduce(PartCounts::default, PartCounts::sum)
}

fn sequences_per_part(store: &SequenceStore, parts: &[Part]) -> PartCounts {
    (0..store.n_seq())
        .into_par_iter()
        .map(|s| {
            let mut c = PartCounts::default();
            for part in [Part::Train, Part::Valid, Part::Test] {
                if parts[store.range(s)].contains(&part) {
                    c.add(part, 1);
                }
            }
            c
        })
        .reduce(PartCounts::default, PartCounts::sum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::store::Events;
    use crate::table::{KIND_ITEM, KIND_LECTURE};

    use Part::{Test as Te, Train as Tr, Valid as Va};

    /// One sequence per slice of (item, time) events.
    fn store(seqs: &[&[(u32, i64)]]) -> SequenceStore {
        let mut e = Events::default();
        for (s, evs) in seqs.iter().enumerate() {
            for &(it, t) in evs.iter() {
                e.seq.push(s as u32 + 1);
                e.items.push(it);
                e.times.push(t);
            }
        }
        SequenceStore::from_events(e).unwrap()
    }

    /// Items at times 0, 1, 2, ...
    fn items(seqs: &[&[u32]]) -> SequenceStore {
        let evs: Vec<Vec<(u32, i64)>> =
            seqs.iter().map(|s| s.iter().enumerate().map(|(t, &i)| (i, t as i64)).collect()).collect();
        let refs: Vec<&[(u32, i64)]> = evs.iter().map(Vec::as_slice).collect();
        store(&refs)
    }

    fn parts_by_seq(s: &SequenceStore, parts: &[Part]) -> Vec<Vec<Part>> {
        (0..s.n_seq()).map(|q| parts[s.range(q)].to_vec()).collect()
    }

    #[test]
    fn none_keeps_everything_in_training() {
        let s = items(&[&[1, 2], &[3]]);
        let (out, parts, r) = apply(s.clone(), &SplitConfig::None).unwrap();
        assert_eq!(out, s);
        assert_eq!(parts, vec![Tr; 3]);
        assert_eq!(r.kind, "none");
        assert_eq!((r.events.train, r.sequences.train), (3, 2));
    }

    #[test]
    fn leave_last_out_with_unseen_removal() {
        // seq 1: 1 2 | 3 | 4; seq 2 is too short and all training; seq 3: 1 | 5 | 2.
        // Training items {1, 2, 5, 6}: valid 3 and test 4 of seq 1 are unseen.
        let s = items(&[&[1, 2, 3, 4], &[5, 6], &[1, 5, 2]]);
        let cfg = SplitConfig::LeaveLastOut { n: 1, valid: 1 };
        let (out, parts, r) = apply(s, &cfg).unwrap();
        assert_eq!(out.items, vec![1, 2, 5, 6, 1, 5, 2]);
        assert_eq!(parts_by_seq(&out, &parts), vec![vec![Tr, Tr], vec![Tr, Tr], vec![Tr, Va, Te]]);
        assert_eq!((r.removed_unseen, r.removed_unseen_valid, r.removed_unseen_test), (2, 1, 1));
        assert_eq!(r.short_sequences_in_train, 1);
        assert_eq!(r.removed_sequences, 0);
        assert_eq!(r.events, PartCounts { train: 5, valid: 1, test: 1 });
        assert_eq!(r.sequences, PartCounts { train: 3, valid: 1, test: 1 });
        out.validate().unwrap();
    }

    #[test]
    fn unseen_is_judged_per_kind() {
        // Item 3 is in training only as a lecture, so the test item 3 is unseen;
        // the test lecture 3 is seen.
        let mut s = items(&[&[3, 1, 3], &[1, 2, 3]]);
        s.kinds = Some(vec![KIND_LECTURE, KIND_ITEM, KIND_ITEM, KIND_ITEM, KIND_ITEM, KIND_LECTURE]);
        let (out, parts, r) = apply(s, &SplitConfig::LeaveLastOut { n: 1, valid: 0 }).unwrap();
        assert_eq!(out.items, vec![3, 1, 1, 2, 3]);
        assert_eq!(parts, vec![Tr, Tr, Tr, Tr, Te]);
        assert_eq!(r.removed_unseen_test, 1);
    }

    #[test]
    fn last_days_splits_sessions_by_their_start() {
        const D: i64 = 86_400_000;
        let s = store(&[
            &[(1, 0), (2, 1000)],                    // starts day 0: train
            &[(1, 3 * D / 2), (2, 5 * D / 2)],       // starts day 1.5: valid, even though it ends in the test window
            &[(1, 2 * D), (9, 2 * D + 5)],           // starts exactly at the test cut: test; 9 unseen leaves one event
            &[(2, 5 * D / 2), (1, 3 * D)],           // test; t_max = 3 days
            &[(3, D / 2), (4, D / 2 + 1)],           // train
            &[(9, 11 * D / 5), (8, 11 * D / 5 + 1)], // test, all unseen
        ]);
        let cfg = SplitConfig::LastDays { days: 1.0, valid_days: 1.0 };
        let (out, parts, r) = apply(s, &cfg).unwrap();
        assert_eq!(out.seq_ids, vec![1, 2, 4, 5]);
        assert_eq!(parts_by_seq(&out, &parts), vec![vec![Tr, Tr], vec![Va, Va], vec![Te, Te], vec![Tr, Tr]]);
        assert_eq!((r.removed_unseen, r.removed_unseen_test), (3, 3));
        assert_eq!(r.removed_short_sessions, 1);
        assert_eq!(r.removed_sequences, 2);
        assert_eq!(r.events, PartCounts { train: 4, valid: 2, test: 2 });
    }

    #[test]
    fn time_cut_splits_events() {
        let s = store(&[&[(1, 0), (2, 5), (3, 9), (1, 10), (4, 11)], &[(1, 6), (1, 12)], &[(5, 11)]]);
        let cfg = SplitConfig::TimeCut { test_from: 10, valid_from: Some(5) };
        let (out, parts, r) = apply(s, &cfg).unwrap();
        assert_eq!(out.items, vec![1, 1, 1, 1]);
        assert_eq!(parts_by_seq(&out, &parts), vec![vec![Tr, Te], vec![Va, Te]]);
        assert_eq!((r.removed_unseen_valid, r.removed_unseen_test), (2, 2));
        assert_eq!(r.removed_sequences, 1);
        assert_eq!(r.removed_short_sessions, 0);
    }

    #[test]
    fn last_fraction_rounds_per_sequence() {
        let s = items(&[&[1; 10], &[1; 3], &[1; 2], &[1]]);
        let cfg = SplitConfig::LastFraction { test: 0.2, valid: 0.2 };
        let (_, parts, r) = apply(s, &cfg).unwrap();
        let mut expect = vec![Tr; 6];
        expect.extend([Va, Va, Te, Te]);
        expect.extend([Tr, Va, Te]); // 3 * 0.2 = 0.6 rounds to 1
        expect.extend([Tr, Tr, Tr]); // 2 * 0.2 = 0.4 and 1 * 0.2 round to 0
        assert_eq!(parts, expect);
        assert_eq!(r.events, PartCounts { train: 10, valid: 3, test: 3 });
        let s = items(&[&[1, 1, 1], &[1]]);
        let (_, parts, _) = apply(s.clone(), &SplitConfig::LastFraction { test: 0.5, valid: 0.0 }).unwrap();
        // 3 * 0.5 = 1.5 and 1 * 0.5 round away from zero.
        assert_eq!(parts, vec![Tr, Te, Te, Te]);
        // Valid gets what test leaves: round(1.5) = 2 for both, but 3 - 2 = 1 is left; none for 1.
        let (parts, _) = assign_parts(&s, &SplitConfig::LastFraction { test: 0.5, valid: 0.5 });
        assert_eq!(parts, vec![Va, Te, Te, Te]);
    }

    /// `unit_hash(0, id)` for ids 1..=8 is 0.176, 0.236, 0.094, 0.491, 0.338,
    /// 0.680, 0.066, 0.231 (computed by hand from splitmix64, outside this
    /// crate); with seed 1 it is 0.282, 0.038, 0.534, 0.908, 0.100, 0.116,
    /// 0.655, 0.544.
    #[test]
    fn by_sequence_sends_whole_sequences_by_their_hash() {
        // Sequence 3 alone has item 9, and it is a test sequence: 9 is unseen.
        let s = items(&[&[1, 2], &[1, 2], &[1, 9], &[1, 2], &[1, 2], &[1, 2], &[1, 2], &[1, 2]]);
        let cfg = SplitConfig::BySequence { test: 0.2, valid: 0.3, seed: 0 };
        let (out, parts, r) = apply(s.clone(), &cfg).unwrap();
        // < 0.2 test: 1, 3, 7; < 0.5 validation: 2, 4, 5, 8; training: 6.
        assert_eq!(
            parts_by_seq(&out, &parts),
            vec![
                vec![Te, Te],
                vec![Va, Va],
                vec![Te],
                vec![Va, Va],
                vec![Va, Va],
                vec![Tr, Tr],
                vec![Te, Te],
                vec![Va, Va]
            ]
        );
        assert_eq!(r.kind, "by_sequence");
        assert_eq!((r.removed_unseen, r.removed_unseen_test, r.removed_unseen_valid), (1, 1, 0));
        assert_eq!(r.events, PartCounts { train: 2, valid: 8, test: 5 });
        assert_eq!(r.sequences, PartCounts { train: 1, valid: 4, test: 3 });
        assert_eq!((r.removed_sequences, r.short_sequences_in_train, r.removed_short_sessions), (0, 0, 0));
        out.validate().unwrap();

        // Another seed, another draw: < 0.2 test: 2, 5, 6; valid defaults to 0 in the recipe.
        let (parts, _) = assign_parts(&s, &SplitConfig::BySequence { test: 0.2, valid: 0.0, seed: 1 });
        let test: Vec<u32> = (0..s.n_seq()).filter(|&q| parts[s.range(q)][0] == Te).map(|q| s.seq_ids[q]).collect();
        assert_eq!(test, [2, 5, 6]);
        assert!(parts.iter().all(|&p| p != Va));
        // The edges: everything test, or everything training.
        let (parts, _) = assign_parts(&s, &SplitConfig::BySequence { test: 1.0, valid: 0.0, seed: 3 });
        assert!(parts.iter().all(|&p| p == Te));
        let (parts, _) = assign_parts(&s, &SplitConfig::BySequence { test: 0.0, valid: 0.0, seed: 3 });
        assert!(parts.iter().all(|&p| p == Tr));
    }

    #[test]
    fn by_sequence_fractions_hold_and_do_not_depend_on_threads() {
        let evs: Vec<Vec<(u32, i64)>> = (0..20_000).map(|q| vec![(1, q), (1, q + 1)]).collect();
        let refs: Vec<&[(u32, i64)]> = evs.iter().map(Vec::as_slice).collect();
        let s = store(&refs);
        let cfg = SplitConfig::BySequence { test: 0.1, valid: 0.2, seed: 42 };
        let (_, parts, r) = apply(s.clone(), &cfg).unwrap();
        let n = s.n_seq() as f64;
        // Binomial sd is 0.002 (test) and 0.003 (valid): 0.01 is several sd.
        assert!((r.sequences.test as f64 / n - 0.1).abs() < 0.01, "{r:?}");
        assert!((r.sequences.valid as f64 / n - 0.2).abs() < 0.01, "{r:?}");
        assert_eq!(r.sequences.train + r.sequences.valid + r.sequences.test, s.n_seq());
        assert_eq!(r.events.test, 2 * r.sequences.test);
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let (_, parts_1, r_1) = one.install(|| apply(s.clone(), &cfg)).unwrap();
        assert_eq!(parts_1, parts);
        assert_eq!(r_1, r);
        let (_, other, _) = apply(s, &SplitConfig::BySequence { test: 0.1, valid: 0.2, seed: 43 }).unwrap();
        assert_ne!(other, parts);
    }

    #[test]
    fn impossible_configs_are_errors() {
        let s = items(&[&[1]]);
        let bad = [
            SplitConfig::LastDays { days: -1.0, valid_days: 0.0 },
            SplitConfig::LastDays { days: 1.0, valid_days: f64::NAN },
            SplitConfig::LastFraction { test: 0.7, valid: 0.4 },
            SplitConfig::LastFraction { test: 1.5, valid: 0.0 },
            SplitConfig::TimeCut { test_from: 5, valid_from: Some(6) },
            SplitConfig::BySequence { test: 0.6, valid: 0.5, seed: 0 },
            SplitConfig::BySequence { test: -0.1, valid: 0.0, seed: 0 },
        ];
        for cfg in bad {
            let msg = apply(s.clone(), &cfg).unwrap_err().to_string();
            assert!(msg.starts_with("split."), "{msg}");
        }
    }

    #[test]
    fn by_sequence_fractions_are_checked_by_key() {
        let check = |test, valid| SplitConfig::BySequence { test, valid, seed: 0 }.check().unwrap_err();
        assert_eq!(check(1.5, 0.0), ("test", "expected a fraction in [0, 1], found 1.5".to_owned()));
        assert_eq!(check(0.1, f64::NAN).0, "valid");
        assert_eq!(check(0.6, 0.5), ("valid", "test + valid must be at most 1, found 0.6 + 0.5".to_owned()));
        assert!(SplitConfig::BySequence { test: 0.5, valid: 0.5, seed: 9 }.check().is_ok());
        let e = apply(items(&[&[1]]), &SplitConfig::BySequence { test: 0.0, valid: -1.0, seed: 0 }).unwrap_err();
        assert_eq!(e.to_string(), "split.valid: expected a fraction in [0, 1], found -1");
    }

    #[test]
    fn random_splits_keep_parts_ordered_and_items_seen() {
        for seed in 0..40 {
            let mut rng = Rng::new(seed);
            let n_seq = 1 + rng.below(50) as usize;
            let seqs: Vec<Vec<(u32, i64)>> = (0..n_seq)
                .map(|_| {
                    let len = 1 + rng.below(10) as usize;
                    let start = rng.below(10 * 86_400_000) as i64;
                    (0..len as i64).map(|t| (1 + rng.below(20) as u32, start + t * 60_000)).collect()
                })
                .collect();
            let refs: Vec<&[(u32, i64)]> = seqs.iter().map(Vec::as_slice).collect();
            let s = store(&refs);
            let cfgs = [
                SplitConfig::LeaveLastOut { n: rng.below(3) as usize, valid: rng.below(3) as usize },
                SplitConfig::LastDays { days: 2.0, valid_days: 1.0 },
                SplitConfig::TimeCut { test_from: 8 * 86_400_000, valid_from: Some(6 * 86_400_000) },
                SplitConfig::LastFraction { test: 0.3, valid: 0.2 },
                SplitConfig::BySequence { test: 0.3, valid: 0.2, seed },
            ];
            for cfg in cfgs {
                let (out, parts, r) = apply(s.clone(), &cfg).unwrap();
                out.validate().unwrap();
                assert_eq!(parts.len(), out.n_events());
                let total = r.events.train + r.events.valid + r.events.test;
                assert_eq!(total + r.removed_unseen + r.removed_short_sessions, s.n_events());
                let train: Vec<u32> = (0..out.n_events()).filter(|&i| parts[i] == Tr).map(|i| out.items[i]).collect();
                for q in 0..out.n_seq() {
                    assert!(parts[out.range(q)].windows(2).all(|w| w[0] <= w[1]), "{cfg:?}");
                    for i in out.range(q) {
                        assert!(parts[i] == Tr || train.contains(&out.items[i]));
                    }
                }
            }
        }
    }
}
