//! Session-parallel mini-batches against the authors' GRU4Rec. Each fixture
//! (`tests/data/session_parallel_ref*.txt`, written by
//! `xtask/reference/batches.py` from their own `SessionDataIterator` and
//! reset hook) lists random sessions (start times unrelated to the session
//! ids, every event its own item, so that an input names its session and
//! position) and, for every step of one epoch at their batch size, each
//! row's input, target, whether the row starts a new session and which row
//! of the previous step it continues.
//!
//! Without one-event sessions ours must emit the very same rows in the
//! same order, resets, continuations and shrinking end. With them the
//! rows are the same per step but may sit in other slots: their iterator
//! hands a one-event session a slot for zero steps and refills that slot
//! only after the other slots that finished with it, where ours skips it
//! in the queue; no step runs in between, so every step holds the same
//! sessions at the same positions (the loss is a sum over rows).

use std::path::PathBuf;

use seqrec_data::batch::{order_by_first_time, SessionParallel, SessionParallelConfig, SessionStep, Targets};
use seqrec_data::SequenceStore;

struct Step {
    inputs: Vec<u32>,
    targets: Vec<u32>,
    reset: Vec<bool>,
    prev: Vec<i64>,
}

fn list<T: std::str::FromStr>(s: &str, line: usize) -> Vec<T> {
    s.split(',').map(|v| v.parse().unwrap_or_else(|_| panic!("fixture line {line}: bad value `{v}`"))).collect()
}

fn read(name: &str) -> (usize, SequenceStore, Vec<Step>) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut batch = 0;
    let mut store = SequenceStore { offsets: vec![0], ..Default::default() };
    let mut steps = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.first().copied() {
            Some("batch") => batch = f[1].parse().unwrap(),
            Some("session") => {
                // sessions come in id order: the store's sequence index is the id
                let (id, start): (usize, i64) = (f[1].parse().unwrap(), f[2].parse().unwrap());
                assert_eq!(id, store.n_seq(), "fixture line {}: sessions out of id order", n + 1);
                for (k, item) in f[3..].iter().enumerate() {
                    store.items.push(item.parse().unwrap());
                    store.times.push(start + k as i64);
                }
                store.offsets.push(store.items.len());
                store.seq_ids.push(id as u32 + 1);
            }
            Some("step") => steps.push(Step {
                inputs: list(f[1], n + 1),
                targets: list(f[2], n + 1),
                reset: list::<u8>(f[3], n + 1).into_iter().map(|r| r == 1).collect(),
                prev: list(f[4], n + 1),
            }),
            _ => {}
        }
    }
    (batch, store, steps)
}

/// One epoch of ours.
fn ours(store: &SequenceStore, batch_size: usize) -> Vec<SessionStep> {
    let mut batches =
        SessionParallel::new(store, order_by_first_time(store), Targets::All, &SessionParallelConfig { batch_size })
            .unwrap();
    let mut out = Vec::new();
    while let Some(s) = batches.next_step() {
        out.push(s.clone());
    }
    out
}

/// Their steps and ours over one fixture, checked to be a fixture of the
/// case meant (one-event sessions or not) that reaches the shrinking end.
fn replay(name: &str, one_event: bool) -> (Vec<Step>, Vec<SessionStep>) {
    let (batch_size, store, want) = read(name);
    assert!(batch_size > 0 && !want.is_empty() && store.n_seq() > batch_size);
    assert!(want.iter().any(|s| s.inputs.len() < batch_size), "the fixture should reach the shrinking end");
    let has_one_event = (0..store.n_seq()).any(|s| store.range(s).len() == 1);
    assert_eq!(has_one_event, one_event, "the fixture's sessions");
    let got = ours(&store, batch_size);
    assert_eq!(got.len(), want.len(), "steps in the epoch");
    (want, got)
}

#[test]
fn steps_match_the_authors_session_data_iterator_row_for_row() {
    let (want, got) = replay("session_parallel_ref_min2.txt", false);
    for (i, (w, s)) in want.iter().zip(&got).enumerate() {
        let (inputs, targets, reset, keep) = (&s.inputs, &s.targets, &s.reset, &s.keep);
        assert_eq!(inputs, &w.inputs, "step {i}: inputs");
        assert_eq!(targets, &w.targets, "step {i}: targets");
        assert_eq!(reset, &w.reset, "step {i}: resets");
        for (row, (&k, &prev)) in keep.iter().zip(&w.prev).enumerate() {
            if prev >= 0 {
                assert_eq!(k as i64, prev, "step {i} row {row}: continues another row of the previous step");
            }
        }
    }
}

#[test]
fn steps_hold_the_authors_rows_with_one_event_sessions_too() {
    let (want, got) = replay("session_parallel_ref.txt", true);
    let sorted = |mut v: Vec<(u32, u32, bool)>| {
        v.sort_unstable();
        v
    };
    let mut differs = 0;
    for (i, (w, s)) in want.iter().zip(&got).enumerate() {
        let (inputs, targets, reset, keep, seq) = (&s.inputs, &s.targets, &s.reset, &s.keep, &s.seq_index);
        let theirs = sorted((0..w.inputs.len()).map(|r| (w.inputs[r], w.targets[r], w.reset[r])).collect());
        let mine = sorted((0..inputs.len()).map(|r| (inputs[r], targets[r], reset[r])).collect());
        assert_eq!(mine, theirs, "step {i}: rows (input, target, reset)");
        differs += usize::from(inputs != &w.inputs);
        // every continuing row of ours continues its own session's row
        if i > 0 {
            let prev_seq = &got[i - 1].seq_index;
            for r in (0..inputs.len()).filter(|&r| !reset[r]) {
                assert_eq!(prev_seq[keep[r]], seq[r], "step {i} row {r}: keep points into another session");
            }
        }
    }
    // the slots do differ here (else this fixture would not test the case)
    assert!(differs > 0);
}
