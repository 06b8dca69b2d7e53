//! GRU4Rec's sample store: `n_sample` negative ids per mini-batch handed out
//! from a precomputed buffer, the next buffer generated on a background thread.
//!
//! The stream is a sequence of *refills*: refill `k` holds
//! `batches_per_refill · n_sample` ids drawn with `Rng::fork(seed, k)`, and
//! mini-batch `j` of the run gets ids `j mod batches_per_refill` of refill
//! `j / batches_per_refill`. So the ids depend on the seed, the sampler,
//! `n_sample` and `sample_store` only, never on which thread drew them or
//! when, and a run can resume at any mini-batch ([`SampleStore::starting_at`]).
//!
//! `batches_per_refill` is `sample_store / n_sample` rounded down, as in the
//! authors' code, but at least 1: with `n_sample > sample_store` (or a store
//! of 0, GRU4Rec's "no store") each refill holds exactly one mini-batch, that
//! is the store is rounded up to `n_sample` ids.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;

use seqrec_data::rng::Rng;

use crate::Sampler;

/// Draws between two looks at the stop flag: small enough that a drop mid-generation returns at once.
const FILL_CHUNK: usize = 4096;

/// Where refills are generated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Filling {
    /// On a background thread, one refill ahead of the consumer.
    #[default]
    Background,
    /// On the caller's thread, when the current refill is used up.
    Synchronous,
}

/// Hands out `n_sample` negative ids per mini-batch from a refilled buffer (GRU4Rec's `sample_store`).
#[derive(Debug)]
pub struct SampleStore {
    sampler: Arc<dyn Sampler>,
    seed: u64,
    n_sample: usize,
    batches_per_refill: usize,
    /// Refill number `refill` once `loaded`.
    current: Vec<u32>,
    refill: u64,
    /// Next mini-batch inside `current`.
    batch: usize,
    loaded: bool,
    filler: Option<Filler>,
    stalls: u64,
}

impl SampleStore {
    /// A store of about `sample_store` ids handing out `n_sample` ids per mini-batch, from the start of the stream.
    ///
    /// `n_sample` 0 disables sampling: every mini-batch gets no ids and no thread is started.
    pub fn new(sampler: Arc<dyn Sampler>, n_sample: usize, sample_store: usize, seed: u64, filling: Filling) -> Self {
        SampleStore::starting_at(sampler, n_sample, sample_store, seed, filling, 0)
    }

    /// As [`SampleStore::new`], but the first mini-batch served is number `served` of the stream (for resuming).
    pub fn starting_at(
        sampler: Arc<dyn Sampler>,
        n_sample: usize,
        sample_store: usize,
        seed: u64,
        filling: Filling,
        served: u64,
    ) -> Self {
        let batches_per_refill = sample_store.checked_div(n_sample).unwrap_or(1).max(1);
        let refill = served / batches_per_refill as u64;
        let batch = (served % batches_per_refill as u64) as usize;
        // If the thread cannot be started, the caller's thread generates the same stream.
        let filler = match filling {
            Filling::Background if n_sample > 0 => {
                Filler::spawn(Arc::clone(&sampler), seed, refill, n_sample * batches_per_refill)
            }
            _ => None,
        };
        SampleStore {
            sampler,
            seed,
            n_sample,
            batches_per_refill,
            current: Vec::new(),
            refill,
            batch,
            loaded: false,
            filler,
            stalls: 0,
        }
    }

    /// The `n_sample` ids of the next mini-batch.
    pub fn next_batch(&mut self) -> &[u32] {
        if self.n_sample == 0 {
            return &[];
        }
        if self.batch == self.batches_per_refill {
            self.refill += 1;
            self.batch = 0;
            self.loaded = false;
        }
        if !self.loaded {
            self.load();
            self.loaded = true;
        }
        let start = self.batch * self.n_sample;
        self.batch += 1;
        &self.current[start..start + self.n_sample]
    }

    /// Ids per mini-batch.
    pub fn n_sample(&self) -> usize {
        self.n_sample
    }

    /// Mini-batches per refill (`sample_store / n_sample`, at least 1).
    pub fn batches_per_refill(&self) -> usize {
        self.batches_per_refill
    }

    /// Mini-batches served so far, counting from the start of the stream (pass to `starting_at` to resume).
    pub fn batches_served(&self) -> u64 {
        self.refill * self.batches_per_refill as u64 + self.batch as u64
    }

    /// Times the consumer had to wait for the background thread (it outran the generator).
    pub fn stalls(&self) -> u64 {
        self.stalls
    }

    /// Whether a background thread is generating refills.
    pub fn is_background(&self) -> bool {
        self.filler.is_some()
    }

    /// Makes refill `self.refill` current, from the background thread if it is alive.
    fn load(&mut self) {
        if let Some(filler) = self.filler.as_mut() {
            match filler.take(self.refill) {
                Some((ids, waited)) => {
                    self.stalls += u64::from(waited);
                    let used = std::mem::replace(&mut self.current, ids);
                    filler.recycle(used);
                    return;
                }
                // The thread died (a panicking sampler): carry on with the same stream here.
                None => self.filler = None,
            }
        }
        self.current.resize(self.n_sample * self.batches_per_refill, 0);
        generate(&*self.sampler, self.seed, self.refill, &mut self.current, None);
    }
}

/// Fills `out` with refill `k` of the stream; false when `stop` was raised before the end.
fn generate(sampler: &dyn Sampler, seed: u64, k: u64, out: &mut [u32], stop: Option<&AtomicBool>) -> bool {
    let mut rng = Rng::fork(seed, k);
    for chunk in out.chunks_mut(FILL_CHUNK) {
        if stop.is_some_and(|s| s.load(Ordering::Acquire)) {
            return false;
        }
        sampler.fill(&mut rng, chunk);
    }
    true
}

/// The background thread and its channels; dropping it stops and joins the thread.
#[derive(Debug)]
struct Filler {
    /// Rendezvous channel: the thread holds one finished refill until it is taken.
    ready: Option<Receiver<(u64, Vec<u32>)>>,
    /// Used buffers going back to the thread, so refills do not allocate.
    used: Sender<Vec<u32>>,
    stop: Arc<AtomicBool>,
    worker: Option<JoinHandle<()>>,
}

impl Filler {
    /// Starts a thread generating refills `first, first + 1, ...` of `len` ids; `None` if it cannot start.
    fn spawn(sampler: Arc<dyn Sampler>, seed: u64, first: u64, len: usize) -> Option<Filler> {
        let (ready_tx, ready_rx) = mpsc::sync_channel(0);
        let (used_tx, used_rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let worker = std::thread::Builder::new()
            .name("seqrec-sample-store".into())
            .spawn(move || fill_ahead(&*sampler, seed, first, len, &flag, &ready_tx, &used_rx))
            .ok()?;
        Some(Filler { ready: Some(ready_rx), used: used_tx, stop, worker: Some(worker) })
    }

    /// Refill `k` and whether the caller had to wait for it; `None` if the thread is gone.
    fn take(&mut self, k: u64) -> Option<(Vec<u32>, bool)> {
        let ready = self.ready.as_ref()?;
        let ((got, ids), waited) = match ready.try_recv() {
            Ok(msg) => (msg, false),
            Err(TryRecvError::Empty) => (ready.recv().ok()?, true),
            Err(TryRecvError::Disconnected) => return None,
        };
        (got == k).then_some((ids, waited))
    }

    /// Hands a consumed buffer back for reuse.
    fn recycle(&self, ids: Vec<u32>) {
        if ids.capacity() > 0 {
            // The thread may already be gone; the buffer is then simply freed.
            let _ = self.used.send(ids);
        }
    }
}

impl Drop for Filler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Dropping the receiver wakes a thread blocked handing over a refill.
        self.ready = None;
        if let Some(worker) = self.worker.take() {
            // A panic on the thread was already reported there; dropping must not panic again.
            let _ = worker.join();
        }
    }
}

/// The background thread: generates refills in order until stopped or disconnected.
fn fill_ahead(
    sampler: &dyn Sampler,
    seed: u64,
    first: u64,
    len: usize,
    stop: &AtomicBool,
    ready: &SyncSender<(u64, Vec<u32>)>,
    used: &Receiver<Vec<u32>>,
) {
    for k in first.. {
        let mut ids = used.try_recv().unwrap_or_default();
        ids.resize(len, 0);
        if !generate(sampler, seed, k, &mut ids, Some(stop)) || ready.send((k, ids)).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;

    use super::*;
    use crate::popularity::tests::{chi_square, expected, CHI2_999_DF8, SUPPORTS};
    use crate::{PopularitySampler, UniformSampler};

    fn uniform(n: usize) -> Arc<dyn Sampler> {
        Arc::new(UniformSampler::new(n).unwrap())
    }

    /// The stream built by hand from its definition: refill k drawn with `Rng::fork(seed, k)`.
    fn reference(sampler: &dyn Sampler, seed: u64, ids_per_refill: usize, refills: u64) -> Vec<u32> {
        let mut out = Vec::new();
        for k in 0..refills {
            let mut ids = vec![0u32; ids_per_refill];
            sampler.fill(&mut Rng::fork(seed, k), &mut ids);
            out.extend(ids);
        }
        out
    }

    fn take(store: &mut SampleStore, batches: usize) -> Vec<u32> {
        (0..batches).flat_map(|_| store.next_batch().to_vec()).collect()
    }

    #[test]
    fn stream_follows_its_definition_in_both_modes() {
        let sampler = uniform(1000);
        // 10 ids per refill: two batches of 5, so 7 batches cross three refills.
        let want = reference(&*sampler, 42, 10, 4);
        for filling in [Filling::Background, Filling::Synchronous] {
            let mut store = SampleStore::new(Arc::clone(&sampler), 5, 12, 42, filling);
            assert_eq!(store.is_background(), filling == Filling::Background);
            assert_eq!(store.batches_per_refill(), 2);
            assert_eq!(take(&mut store, 7), want[..35], "{filling:?}");
            assert_eq!(store.batches_served(), 7);
        }
        // Refills are fresh draws, not the first buffer again.
        assert_ne!(want[..10], want[10..20]);
    }

    #[test]
    fn seeds_decide_the_stream() {
        let sampler = uniform(1000);
        let mut a = SampleStore::new(Arc::clone(&sampler), 8, 16, 1, Filling::Background);
        let mut b = SampleStore::new(Arc::clone(&sampler), 8, 16, 1, Filling::Background);
        let mut c = SampleStore::new(Arc::clone(&sampler), 8, 16, 2, Filling::Background);
        let (a, b, c) = (take(&mut a, 9), take(&mut b, 9), take(&mut c, 9));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn n_sample_above_the_store_gives_one_batch_per_refill() {
        let sampler = uniform(50);
        let mut store = SampleStore::new(Arc::clone(&sampler), 32, 10, 9, Filling::Background);
        assert_eq!(store.batches_per_refill(), 1);
        assert_eq!(take(&mut store, 3), reference(&*sampler, 9, 32, 3));
        // A store of 0 (GRU4Rec: no store) behaves the same.
        let mut none = SampleStore::new(Arc::clone(&sampler), 32, 0, 9, Filling::Synchronous);
        assert_eq!(take(&mut none, 3), reference(&*sampler, 9, 32, 3));
        // The store is rounded down to whole batches, as in the authors' code.
        assert_eq!(SampleStore::new(sampler, 3, 10, 9, Filling::Synchronous).batches_per_refill(), 3);
    }

    #[test]
    fn n_sample_zero_gives_empty_batches_without_a_thread() {
        let mut store = SampleStore::new(uniform(5), 0, 100, 1, Filling::Background);
        assert!(!store.is_background());
        assert!(store.next_batch().is_empty());
    }

    #[test]
    fn resuming_continues_the_stream() {
        let sampler = uniform(1000);
        let mut full = SampleStore::new(Arc::clone(&sampler), 4, 12, 7, Filling::Background);
        let all = take(&mut full, 11);
        for served in [0u64, 2, 3, 5] {
            let mut resumed = SampleStore::starting_at(Arc::clone(&sampler), 4, 12, 7, Filling::Background, served);
            assert_eq!(resumed.batches_served(), served);
            let rest = take(&mut resumed, 11 - served as usize);
            assert_eq!(rest, all[4 * served as usize..], "resumed at {served}");
        }
    }

    #[test]
    fn store_draws_match_support_pow_alpha() {
        for alpha in [0.0, 0.5, 1.0] {
            let sampler: Arc<dyn Sampler> = Arc::new(PopularitySampler::new(&SUPPORTS, alpha).unwrap());
            let mut store = SampleStore::new(sampler, 100, 5_000, 3, Filling::Background);
            let mut counts = vec![0u64; SUPPORTS.len()];
            for _ in 0..2_000 {
                store.next_batch().iter().for_each(|&id| counts[id as usize] += 1);
            }
            assert_eq!((counts[0], counts[3]), (0, 0), "alpha {alpha}");
            let stat = chi_square(&counts, &expected(alpha));
            assert!(stat < CHI2_999_DF8, "alpha {alpha}: chi-square {stat}");
        }
    }

    /// Blocks inside its second `fill` call until released.
    #[derive(Debug)]
    struct GatedSampler {
        inner: UniformSampler,
        calls: AtomicUsize,
        entered: Mutex<Sender<()>>,
        gate: Mutex<Receiver<()>>,
    }

    impl Sampler for GatedSampler {
        fn n_items(&self) -> usize {
            self.inner.n_items()
        }
        fn fill(&self, rng: &mut Rng, out: &mut [u32]) {
            if self.calls.fetch_add(1, Ordering::SeqCst) == 1 {
                self.entered.lock().unwrap().send(()).unwrap();
                self.gate.lock().unwrap().recv().unwrap();
            }
            self.inner.fill(rng, out);
        }
        fn log_prob(&self, item: u32) -> f32 {
            self.inner.log_prob(item)
        }
    }

    #[test]
    fn drop_mid_generation_stops_and_joins_the_thread() {
        let (entered_tx, entered_rx) = mpsc::channel();
        let (gate_tx, gate_rx) = mpsc::channel();
        let gated = Arc::new(GatedSampler {
            inner: UniformSampler::new(100).unwrap(),
            calls: AtomicUsize::new(0),
            entered: Mutex::new(entered_tx),
            gate: Mutex::new(gate_rx),
        });
        // One refill is 10 chunks; the thread is held inside the second.
        let store = SampleStore::new(gated.clone(), 1, 10 * FILL_CHUNK, 5, Filling::Background);
        entered_rx.recv().unwrap();
        store.filler.as_ref().unwrap().stop.store(true, Ordering::Release);
        gate_tx.send(()).unwrap();
        drop(store);
        // The thread saw the flag after the chunk it was in, and has ended (it released its sampler).
        assert_eq!(gated.calls.load(Ordering::SeqCst), 2);
        assert_eq!(Arc::strong_count(&gated), 1);
    }

    #[test]
    fn drop_while_filling_or_holding_a_refill() {
        let sampler = uniform(1000);
        drop(SampleStore::new(Arc::clone(&sampler), 1, 50 * FILL_CHUNK, 1, Filling::Background));
        let mut store = SampleStore::new(Arc::clone(&sampler), 2, 4, 1, Filling::Background);
        store.next_batch();
        drop(store);
        assert_eq!(Arc::strong_count(&sampler), 1);
    }

    /// Panics when called from the store's thread, draws uniformly elsewhere.
    #[derive(Debug)]
    struct PanicsInBackground(UniformSampler);

    impl Sampler for PanicsInBackground {
        fn n_items(&self) -> usize {
            self.0.n_items()
        }
        fn fill(&self, rng: &mut Rng, out: &mut [u32]) {
            assert_ne!(std::thread::current().name(), Some("seqrec-sample-store"), "test panic on the filler thread");
            self.0.fill(rng, out);
        }
        fn log_prob(&self, item: u32) -> f32 {
            self.0.log_prob(item)
        }
    }

    #[test]
    fn a_dead_thread_falls_back_to_the_same_stream() {
        let sampler: Arc<dyn Sampler> = Arc::new(PanicsInBackground(UniformSampler::new(300).unwrap()));
        let mut store = SampleStore::new(Arc::clone(&sampler), 3, 6, 8, Filling::Background);
        assert_eq!(take(&mut store, 5), reference(&*uniform(300), 8, 6, 3)[..15]);
        assert!(!store.is_background());
    }
}
