//! Learning-rate schedules: constant, and the one-cycle policy (Smith &
//! Topin 2017) with PyTorch's `OneCycleLR` defaults.
//!
//! One cycle over `total` steps: the learning rate rises from
//! `max_lr / div_factor` to `max_lr` over the first `pct_start · total`
//! steps and then falls to `max_lr / div_factor / final_div_factor`, both
//! phases cosine-annealed; the momentum (Adam's β1) moves the opposite way
//! between `max_momentum` and `base_momentum`.

/// Learning rate and momentum at one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScheduleStep {
    /// Learning rate.
    pub lr: f64,
    /// Momentum (Adam's β1), when the schedule cycles it.
    pub momentum: Option<f64>,
}

/// A learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Schedule {
    /// The same learning rate at every step.
    Constant {
        /// Learning rate.
        lr: f64,
    },
    /// The one-cycle policy.
    OneCycle(OneCycle),
}

impl Schedule {
    /// Learning rate (and momentum) for step `step` (0-based).
    pub fn at(&self, step: u64) -> ScheduleStep {
        match self {
            Schedule::Constant { lr } => ScheduleStep { lr: *lr, momentum: None },
            Schedule::OneCycle(c) => c.at(step),
        }
    }
}

/// PyTorch's `OneCycleLR` (two phases, cosine annealing, momentum cycled).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OneCycle {
    /// Peak learning rate.
    pub max_lr: f64,
    /// Steps in the whole cycle (epochs × steps per epoch).
    pub total: u64,
    /// Fraction of the cycle spent rising (0.3).
    pub pct_start: f64,
    /// Initial learning rate = `max_lr / div_factor` (25).
    pub div_factor: f64,
    /// Final learning rate = initial / `final_div_factor` (1e4).
    pub final_div_factor: f64,
    /// Momentum at the peak learning rate (0.85).
    pub base_momentum: f64,
    /// Momentum at the start and the end (0.95).
    pub max_momentum: f64,
}

impl OneCycle {
    /// PyTorch's defaults for `max_lr` over `total` steps.
    pub fn new(max_lr: f64, total: u64) -> Self {
        OneCycle {
            max_lr,
            total,
            pct_start: 0.3,
            div_factor: 25.0,
            final_div_factor: 1e4,
            base_momentum: 0.85,
            max_momentum: 0.95,
        }
    }

    /// Learning rate and momentum at step `step`; steps past the end keep the final values.
    pub fn at(&self, step: u64) -> ScheduleStep {
        let initial = self.max_lr / self.div_factor;
        let min_lr = initial / self.final_div_factor;
        let rise_end = self.pct_start * self.total as f64 - 1.0;
        let fall_end = self.total as f64 - 1.0;
        let s = step as f64;
        let (lr, momentum) = if s <= rise_end {
            let pct = if rise_end > 0.0 { s / rise_end } else { 1.0 };
            (cos_anneal(initial, self.max_lr, pct), cos_anneal(self.max_momentum, self.base_momentum, pct))
        } else {
            let span = fall_end - rise_end;
            let pct = if span > 0.0 { ((s - rise_end) / span).min(1.0) } else { 1.0 };
            (cos_anneal(self.max_lr, min_lr, pct), cos_anneal(self.base_momentum, self.max_momentum, pct))
        };
        ScheduleStep { lr, momentum: Some(momentum) }
    }
}

/// Cosine interpolation from `start` (pct 0) to `end` (pct 1).
fn cos_anneal(start: f64, end: f64, pct: f64) -> f64 {
    end + (start - end) / 2.0 * ((std::f64::consts::PI * pct).cos() + 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs().max(1.0)
    }

    #[test]
    fn one_cycle_matches_pytorch_on_a_hand_computed_cycle() {
        // 10 steps, max 0.01: initial 4e-4, the rise ends at step 0.3·10 − 1 = 2,
        // the fall at step 9 with 4e-8.
        let c = OneCycle::new(0.01, 10);
        let at = |s| c.at(s);
        assert!(close(at(0).lr, 4e-4));
        assert!(close(at(1).lr, (4e-4 + 0.01) / 2.0), "halfway up is the mean");
        assert!(close(at(2).lr, 0.01));
        assert!(close(at(2).momentum.unwrap(), 0.85));
        assert!(close(at(0).momentum.unwrap(), 0.95));
        // Step 5: pct (5 − 2) / 7 of the fall.
        let pct = 3.0 / 7.0;
        let want = 4e-8 + (0.01 - 4e-8) / 2.0 * ((std::f64::consts::PI * pct).cos() + 1.0);
        assert!(close(at(5).lr, want));
        assert!(close(at(9).lr, 4e-8));
        assert!(close(at(9).momentum.unwrap(), 0.95));
        assert!(close(at(50).lr, 4e-8), "past the end stays at the final rate");
        // Monotone up, then down.
        let lrs: Vec<f64> = (0..10).map(|s| at(s).lr).collect();
        assert!(lrs[..3].windows(2).all(|w| w[0] < w[1]) && lrs[2..].windows(2).all(|w| w[0] > w[1]));
    }

    #[test]
    fn constant_is_constant() {
        let s = Schedule::Constant { lr: 0.1 };
        assert_eq!(s.at(0), s.at(1000));
        assert_eq!(s.at(7).momentum, None);
    }
}
