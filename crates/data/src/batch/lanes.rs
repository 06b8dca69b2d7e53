//! The slot scheduler shared by [`super::SessionParallel`] and
//! [`super::Chunks`]: B lanes, each reading one sequence; a lane whose
//! sequence is used up takes the next one in the given order (a state
//! reset); when the order is exhausted, finished lanes are removed and the
//! batch shrinks, with `keep` naming each remaining lane's previous row.

/// Where one lane stands: sequence `seq`, next event to read `pos`, and the
/// exclusive end `end` of the events it must read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub seq: usize,
    pub pos: usize,
    pub end: usize,
}

/// B lanes over sequences taken in a fixed order.
#[derive(Debug, Clone)]
pub(crate) struct Lanes {
    order: Vec<usize>,
    next: usize,
    width: usize,
    cursors: Vec<Cursor>,
    spare: Vec<Cursor>,
}

impl Lanes {
    /// `width` lanes over the sequences of `order`.
    pub fn new(order: Vec<usize>, width: usize) -> Self {
        Lanes { order, next: 0, width, cursors: Vec::with_capacity(width), spare: Vec::with_capacity(width) }
    }

    /// Back to the start of the order, every lane empty.
    pub fn rewind(&mut self) {
        self.next = 0;
        self.cursors.clear();
    }

    /// Lays out the next step: lanes with events left continue, used-up
    /// lanes load the next sequence for which `span` gives a non-empty
    /// `(pos, end)` (and reset), lanes with nothing to load are dropped.
    /// Fills `keep` (previous row of each lane; the identity on the first
    /// step) and `reset`; false when no lane is left (the epoch is over).
    pub fn schedule(
        &mut self,
        mut span: impl FnMut(usize) -> Option<(usize, usize)>,
        keep: &mut Vec<usize>,
        reset: &mut Vec<bool>,
    ) -> bool {
        keep.clear();
        reset.clear();
        self.spare.clear();
        let Lanes { order, next, width, cursors, spare } = self;
        let mut load = || {
            while let Some(&seq) = order.get(*next) {
                *next += 1;
                if let Some((pos, end)) = span(seq).filter(|(p, e)| p < e) {
                    return Some(Cursor { seq, pos, end });
                }
            }
            None
        };
        for (row, c) in cursors.iter().enumerate() {
            if c.pos < c.end {
                spare.push(*c);
                reset.push(false);
            } else if let Some(c) = load() {
                spare.push(c);
                reset.push(true);
            } else {
                continue;
            }
            keep.push(row);
        }
        // Only the first step finds lanes missing while sequences remain:
        // later, a lane is dropped only once the order is exhausted.
        while spare.len() < *width {
            let Some(c) = load() else { break };
            keep.push(spare.len());
            reset.push(true);
            spare.push(c);
        }
        std::mem::swap(cursors, spare);
        !cursors.is_empty()
    }

    /// The lanes of the current step, one per row.
    pub fn cursors_mut(&mut self) -> &mut [Cursor] {
        &mut self.cursors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_refill_then_shrink() {
        // Sequence s has s + 1 events to read, one per step; sequence 2 is empty.
        let spans = [Some((0, 1)), Some((10, 12)), None, Some((20, 23))];
        let mut lanes = Lanes::new(vec![0, 1, 2, 3], 2);
        let (mut keep, mut reset) = (Vec::new(), Vec::new());
        let mut steps = Vec::new();
        while lanes.schedule(|s| spans[s], &mut keep, &mut reset) {
            let seqs: Vec<usize> = lanes.cursors_mut().iter().map(|c| c.seq).collect();
            lanes.cursors_mut().iter_mut().for_each(|c| c.pos += 1);
            steps.push((seqs, keep.clone(), reset.clone()));
        }
        let expect = vec![
            (vec![0, 1], vec![0, 1], vec![true, true]),
            (vec![3, 1], vec![0, 1], vec![true, false]),
            (vec![3], vec![0], vec![false]),
            (vec![3], vec![0], vec![false]),
        ];
        assert_eq!(steps, expect);
        lanes.rewind();
        assert!(lanes.schedule(|s| spans[s], &mut keep, &mut reset));
        assert_eq!(reset, vec![true, true]);
    }
}
