//! Stores for the batcher tests, built by hand (not through the grouping
//! code, so these tests stand on their own).

use crate::rng::Rng;
use crate::split::Part;
use crate::SequenceStore;

/// A store whose sequence `s` has the items `seqs[s]`; event `e` has time
/// `e`, rating `item / 2` and seq id `s + 1`.
pub fn store_of(seqs: &[&[u32]]) -> SequenceStore {
    let mut store = SequenceStore { offsets: vec![0], ..Default::default() };
    for (s, items) in seqs.iter().enumerate() {
        store.items.extend_from_slice(items);
        store.offsets.push(store.items.len());
        store.seq_ids.push(s as u32 + 1);
    }
    store.times = (0..store.items.len() as i64).collect();
    store.ratings = Some(store.items.iter().map(|&i| i as f32 / 2.0).collect());
    store
}

/// A random store: 0..50 sequences of length 0..30 over items `1..=20`,
/// ratings on odd seeds, labels (with -1 for lectures) on seeds divisible
/// by 3; seq ids are `100 + s`.
pub fn random_store(rng: &mut Rng, seed: u64) -> SequenceStore {
    let n_seq = rng.below(50) as usize;
    let mut store = SequenceStore { offsets: vec![0], ..Default::default() };
    for s in 0..n_seq {
        let len = rng.below(30) as usize;
        let mut t = rng.below(1000) as i64;
        for _ in 0..len {
            store.items.push(1 + rng.below(20) as u32);
            t += rng.below(5) as i64;
            store.times.push(t);
        }
        store.offsets.push(store.items.len());
        store.seq_ids.push(100 + s as u32);
    }
    let n = store.items.len();
    if seed % 2 == 1 {
        store.ratings = Some((0..n).map(|_| 1.0 + rng.below(5) as f32).collect());
    }
    if seed.is_multiple_of(3) {
        store.labels = Some((0..n).map(|_| rng.below(3) as i8 - 1).collect());
    }
    store
}

/// A random part for every event of `store`.
pub fn random_parts(rng: &mut Rng, store: &SequenceStore) -> Vec<Part> {
    let all = [Part::Train, Part::Valid, Part::Test];
    (0..store.n_events()).map(|_| all[rng.below(3) as usize]).collect()
}

/// A random permutation of a random subset of the sequences.
pub fn random_order(rng: &mut Rng, store: &SequenceStore) -> Vec<usize> {
    let mut order: Vec<usize> = (0..store.n_seq()).filter(|_| rng.bernoulli(0.8)).collect();
    rng.shuffle(&mut order);
    order
}
