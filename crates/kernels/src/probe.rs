//! An opt-in phase timer for training steps: where a step's wall time goes,
//! and how much of each phase the other cores spent without work.
//!
//! On a shared 2-vCPU VM a whole step moves ±5% from block to block, which
//! hides changes of 2–4%; a phase's own time does not (the sixteenth
//! session's diagnosis in `docs/benchmarks.md` was made this way). Off by
//! default, when a mark costs one relaxed atomic load. A training step calls
//! [`begin`], then [`mark`] after each phase and [`end`] when done;
//! [`take`] returns the totals since the last `take` and clears them.
//!
//! The idle time is what the [`crate::pool::KeepAwake`] spinners spent
//! finding no job, summed over spinners (on two cores: the other core's
//! idle time), charged to the phase in which it passed. Phases are timed on
//! the calling thread, from the previous mark to this one.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

static ON: AtomicBool = AtomicBool::new(false);
static IDLE_NS: AtomicU64 = AtomicU64::new(0);
static TOTALS: Mutex<Totals> = Mutex::new(Totals { steps: 0, phases: Vec::new() });

thread_local! {
    /// The time and the idle counter at this thread's last mark (`None`
    /// outside a step).
    static LAST: Cell<Option<(Instant, u64)>> = const { Cell::new(None) };
}

/// One phase's totals over the steps since the last [`take`].
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseTime {
    /// The name given to [`mark`].
    pub name: &'static str,
    /// Wall time on the marking thread, nanoseconds.
    pub wall_ns: u64,
    /// Time the spinners found no job during the phase, nanoseconds.
    pub idle_ns: u64,
}

/// The totals [`take`] returns: steps begun and phases in first-marked order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    /// Steps begun ([`begin`] calls).
    pub steps: u64,
    /// Phases, in the order they were first marked.
    pub phases: Vec<PhaseTime>,
}

/// Turns the timer on or off (for the whole process).
pub fn enable(on: bool) {
    ON.store(on, Ordering::Relaxed);
}

/// Whether the timer is on.
#[inline]
pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Starts a step on this thread.
pub fn begin() {
    if enabled() {
        LAST.with(|l| l.set(Some((Instant::now(), IDLE_NS.load(Ordering::Relaxed)))));
        lock().steps += 1;
    }
}

/// Charges the time since this thread's last mark (or [`begin`]) to `name`.
/// Outside a step (no `begin` since the last [`end`]) it does nothing.
pub fn mark(name: &'static str) {
    if !enabled() {
        return;
    }
    let Some((then, idle_then)) = LAST.with(Cell::get) else { return };
    let (now, idle) = (Instant::now(), IDLE_NS.load(Ordering::Relaxed));
    LAST.with(|l| l.set(Some((now, idle))));
    let wall = u64::try_from((now - then).as_nanos()).unwrap_or(u64::MAX);
    let idle = idle.saturating_sub(idle_then);
    let mut totals = lock();
    match totals.phases.iter_mut().find(|p| p.name == name) {
        Some(p) => {
            p.wall_ns += wall;
            p.idle_ns += idle;
        }
        None => totals.phases.push(PhaseTime { name, wall_ns: wall, idle_ns: idle }),
    }
}

/// Ends this thread's step: marks outside a step are ignored.
pub fn end() {
    LAST.with(|l| l.set(None));
}

/// The totals since the last call, cleared.
pub fn take() -> Totals {
    std::mem::take(&mut *lock())
}

/// Adds a spinner's idle time (only while the timer is on).
pub(crate) fn add_idle(ns: u64) {
    IDLE_NS.fetch_add(ns, Ordering::Relaxed);
}

fn lock() -> std::sync::MutexGuard<'static, Totals> {
    // A panic while holding the lock leaves plain counters: still usable.
    TOTALS.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn busy(d: std::time::Duration) {
        let t = Instant::now();
        while t.elapsed() < d {
            std::hint::spin_loop();
        }
    }

    /// The only test that turns the timer on (the state is global).
    #[test]
    fn phases_get_the_time_since_the_previous_mark_and_nothing_outside_a_step() {
        let ms = std::time::Duration::from_millis(1);
        enable(false);
        begin();
        mark("off");
        assert_eq!(take(), Totals::default(), "off: nothing recorded");
        enable(true);
        for _ in 0..2 {
            begin();
            busy(3 * ms);
            mark("first");
            mark("second");
            busy(ms);
            mark("first");
            end();
        }
        mark("after the step");
        let totals = take();
        enable(false);
        assert_eq!(totals.steps, 2);
        let names: Vec<_> = totals.phases.iter().map(|p| p.name).collect();
        assert_eq!(names, ["first", "second"]);
        // first: 2 × (3 ms + 1 ms); second: two back-to-back marks.
        assert!(totals.phases[0].wall_ns >= 8_000_000, "{totals:?}");
        assert!(totals.phases[1].wall_ns < totals.phases[0].wall_ns / 4, "{totals:?}");
        assert_eq!(take(), Totals::default(), "take clears");
    }
}
