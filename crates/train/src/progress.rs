//! A one-line progress bar on stderr (events/s and ETA), drawn only when
//! stderr is a terminal; otherwise silent (the epoch's `tracing` line says it all).

use std::io::{IsTerminal, Write};
use std::time::Instant;

/// Progress of one pass over a known number of events.
#[derive(Debug)]
pub struct Progress {
    label: String,
    total: usize,
    done: usize,
    start: Instant,
    last_draw: Instant,
    draw: bool,
}

impl Progress {
    /// Starts a bar for `total` events.
    pub fn new(label: impl Into<String>, total: usize, enabled: bool) -> Self {
        let now = Instant::now();
        Progress {
            label: label.into(),
            total,
            done: 0,
            start: now,
            last_draw: now,
            draw: enabled && std::io::stderr().is_terminal(),
        }
    }

    /// Counts `n` more events; redraws at most 5 times a second.
    pub fn add(&mut self, n: usize) {
        self.done += n;
        if self.draw && self.last_draw.elapsed().as_millis() >= 200 {
            self.last_draw = Instant::now();
            let secs = self.start.elapsed().as_secs_f64();
            let rate = self.done as f64 / secs.max(1e-9);
            let eta = self.total.saturating_sub(self.done) as f64 / rate.max(1e-9);
            let frac = self.done as f64 / self.total.max(1) as f64;
            let width = 30usize;
            let filled = ((frac * width as f64) as usize).min(width);
            let bar: String = "#".repeat(filled) + &"-".repeat(width - filled);
            let mut err = std::io::stderr().lock();
            let _ =
                write!(err, "\r{} [{bar}] {:>5.1}% {:>9.0} ev/s ETA {:>5.0}s ", self.label, 100.0 * frac, rate, eta);
            let _ = err.flush();
        }
    }

    /// Seconds since the start.
    pub fn seconds(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Clears the bar; returns the elapsed seconds.
    pub fn finish(self) -> f64 {
        if self.draw {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r{:width$}\r", "", width = self.label.len() + 70);
            let _ = err.flush();
        }
        self.seconds()
    }
}
