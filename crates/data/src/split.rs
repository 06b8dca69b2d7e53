//! Splits: leave-last-n-out per sequence, sessions starting in the last N
//! days, a global time cut. Each event gets a [`Part`]; test (and
//! validation) events whose item never occurs in training are removed and
//! counted.

use serde::{Deserialize, Serialize};

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
}

fn one() -> usize {
    1
}
