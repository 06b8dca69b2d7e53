//! Keeping rayon's workers awake through a loop of short parallel regions.
//!
//! A GRU4Rec training step at 100 units is ≈ 1 ms split into a handful of
//! parallel regions (row gather, loss rows, optimiser rows, large products).
//! Between regions rayon's idle workers go to sleep on a futex, and every
//! region then starts by waking them: on a 2-vCPU VM the wake-ups (an
//! inter-processor interrupt through the hypervisor each) were a quarter of
//! setting (a)'s time (perf: `try_to_wake_up`, `finish_task_switch`).
//! [`KeepAwake`] parks one spinning job on every other worker for as long as
//! it lives (on all workers but one when started from outside the pool):
//! each spinner keeps asking rayon for work (`yield_now`), so jobs pushed by
//! the loop are stolen at once and no one sleeps. This is the
//! active wait policy of OpenMP runtimes (`OMP_WAIT_POLICY=active`). The
//! cost is that the spinning cores stay busy through the loop's serial parts.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// The environment variable that picks the [`WaitPolicy`].
pub const WAIT_POLICY_VAR: &str = "SEQREC_WAIT_POLICY";

/// What rayon's idle workers do during a training or evaluation loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitPolicy {
    /// Spin between parallel regions ([`KeepAwake`]): fastest, keeps the
    /// cores busy for the whole loop. The default.
    Active,
    /// Sleep between regions (rayon's own behaviour): for machines shared
    /// with other work.
    Passive,
}

impl WaitPolicy {
    /// The policy named by a value of [`WAIT_POLICY_VAR`] (unset or empty:
    /// active).
    ///
    /// # Errors
    /// Any other value than `active` or `passive`, named in the message.
    pub fn parse(value: Option<&str>) -> Result<Self, String> {
        match value.map(str::trim) {
            None | Some("" | "active") => Ok(WaitPolicy::Active),
            Some("passive") => Ok(WaitPolicy::Passive),
            Some(other) => Err(format!("{WAIT_POLICY_VAR}: found `{other}`, expected `active` or `passive`")),
        }
    }

    /// The policy of this process's environment.
    ///
    /// # Errors
    /// As [`WaitPolicy::parse`]; a value that is not UTF-8.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var(WAIT_POLICY_VAR) {
            Ok(v) => Self::parse(Some(&v)),
            Err(std::env::VarError::NotPresent) => Self::parse(None),
            Err(std::env::VarError::NotUnicode(_)) => {
                Err(format!("{WAIT_POLICY_VAR}: not UTF-8, expected `active` or `passive`"))
            }
        }
    }
}

/// While alive, the current rayon pool's other workers spin instead of
/// sleeping between jobs. Dropping it stops the spinners and waits for them.
#[derive(Debug)]
pub struct KeepAwake {
    stop: Arc<AtomicBool>,
    running: Arc<AtomicUsize>,
}

impl KeepAwake {
    /// Starts a spinner on all workers but one: the calling thread's own
    /// when it is a worker, and one left free for a caller outside the pool
    /// (whose serial work would otherwise share a core with a spinner).
    /// Spinners that rayon hands to the calling thread itself (while it
    /// waits inside a `join`) return at once, so the caller can never be
    /// stuck in one.
    #[must_use]
    pub fn start() -> Self {
        Self::with_policy(WaitPolicy::Active)
    }

    /// [`KeepAwake::start`] under `policy`: with [`WaitPolicy::Passive`] no
    /// spinner is started and the guard does nothing.
    #[must_use]
    pub fn with_policy(policy: WaitPolicy) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let running = Arc::new(AtomicUsize::new(0));
        let owner = rayon::current_thread_index();
        let n = match policy {
            WaitPolicy::Active => rayon::current_num_threads().saturating_sub(1),
            WaitPolicy::Passive => 0,
        };
        for _ in 0..n {
            let (stop, running) = (Arc::clone(&stop), Arc::clone(&running));
            running.fetch_add(1, Ordering::AcqRel);
            rayon::spawn(move || {
                if owner.is_none() || rayon::current_thread_index() != owner {
                    while !stop.load(Ordering::Acquire) {
                        // Only with the phase timer on: the time of each look that found no job.
                        let looked = crate::probe::enabled().then(std::time::Instant::now);
                        if !matches!(rayon::yield_now(), Some(rayon::Yield::Executed)) {
                            std::hint::spin_loop();
                            if let Some(t) = looked {
                                crate::probe::add_idle(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
                            }
                        }
                    }
                }
                running.fetch_sub(1, Ordering::AcqRel);
            });
        }
        KeepAwake { stop, running }
    }
}

impl Drop for KeepAwake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // A running spinner ends within one `yield_now`, a queued one as soon
        // as it runs (the caller may run it here). Waiting (at most a second)
        // keeps them from outliving the loop on a busy machine.
        let start = std::time::Instant::now();
        while self.running.load(Ordering::Acquire) > 0 && start.elapsed() < std::time::Duration::from_secs(1) {
            match rayon::yield_now() {
                Some(rayon::Yield::Executed) => {}
                Some(rayon::Yield::Idle) => std::hint::spin_loop(),
                None => std::thread::yield_now(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    /// Waits (up to 10 s) for the spinners of a dropped guard to end.
    fn ended(running: &AtomicUsize) -> bool {
        let start = std::time::Instant::now();
        while running.load(Ordering::Acquire) > 0 && start.elapsed().as_secs() < 10 {
            std::thread::yield_now();
        }
        running.load(Ordering::Acquire) == 0
    }

    #[test]
    fn the_wait_policy_is_active_unless_asked_otherwise_and_bad_values_are_named() {
        assert_eq!(WaitPolicy::parse(None), Ok(WaitPolicy::Active));
        assert_eq!(WaitPolicy::parse(Some("")), Ok(WaitPolicy::Active));
        assert_eq!(WaitPolicy::parse(Some("active")), Ok(WaitPolicy::Active));
        assert_eq!(WaitPolicy::parse(Some(" passive ")), Ok(WaitPolicy::Passive));
        let err = WaitPolicy::parse(Some("spin")).unwrap_err();
        assert!(err.contains("SEQREC_WAIT_POLICY") && err.contains("`spin`") && err.contains("passive"), "{err}");
        // Passive: no spinner at all.
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let running = pool.install(|| Arc::clone(&KeepAwake::with_policy(WaitPolicy::Passive).running));
        assert_eq!(running.load(Ordering::Acquire), 0);
    }

    fn sum_of_squares(n: u32) -> u64 {
        (0..n).into_par_iter().with_min_len(64).map(|x| u64::from(x) * u64::from(x)).sum()
    }

    #[test]
    fn parallel_work_under_the_guard_completes_and_the_spinners_end() {
        let want: u64 = (0..100_000u64).map(|x| x * x).sum();
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            // From inside the pool (the trainer's case) and from outside it.
            let (inside, running) = pool.install(|| {
                let guard = KeepAwake::start();
                let got: Vec<u64> = (0..20).map(|_| sum_of_squares(100_000)).collect();
                let running = Arc::clone(&guard.running);
                drop(guard);
                (got, running)
            });
            assert!(inside.iter().all(|&s| s == want), "{threads} threads");
            assert!(ended(&running), "{threads} threads: spinners left running");
        }
        // From a thread outside any pool: spinners on all but one worker of
        // the global pool, which the work is injected into.
        let guard = KeepAwake::start();
        let got = sum_of_squares(100_000);
        let running = Arc::clone(&guard.running);
        drop(guard);
        assert_eq!(got, want);
        assert!(ended(&running), "global pool: spinners left running");
    }
}
