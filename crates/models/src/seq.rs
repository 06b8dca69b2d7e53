//! What the window models (SASRec, the embedding-GRU) share: the training
//! batch, the training objectives over the output item table, and the
//! trait the trainer drives.
//!
//! A [`SeqBatch`] is `rows × len` left-padded input items with a target at
//! each position (0: no loss there). It comes from either batcher:
//! SASRec's shifted windows (a target at every position) or one window per
//! target event (a target only at the last position; what the
//! embedding-GRU is trained on, and what a bidirectional encoder needs).
//!
//! Objectives, all over the hidden vectors `h` of the target positions and
//! an output table `W` (`[n_ids, d]`, plus an optional bias):
//! - [`Objective::Full`]: softmax cross-entropy over every id (padding id 0
//!   excluded), `mean(logsumexp(h Wᵀ) − h·w_target)`;
//! - [`Objective::Bce`]: SASRec's binary cross-entropy with one negative
//!   per position, `−log σ(h·w_pos) − log(1 − σ(h·w_neg))`;
//! - [`Objective::Sampled`]: cross-entropy over `[target ‖ shared
//!   negatives]`, optionally logQ-corrected (`s − log q` for targets and
//!   negatives alike); a negative equal to the row's target is masked out.

use candle_core::{Device, Tensor, D};
use seqrec_data::batch::{ShiftedBatch, WindowBatch};
use seqrec_data::rng::Rng;

use crate::error::{ModelError, Result};
use crate::nn::{self, Params};
use crate::window_eval::WindowScorer;

/// A training batch of left-padded windows with per-position targets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SeqBatch {
    /// Window width.
    pub len: usize,
    /// `rows × len` input items, 0 at padding.
    pub inputs: Vec<u32>,
    /// `rows × len` target items, 0 where there is no loss.
    pub targets: Vec<u32>,
}

impl SeqBatch {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.inputs.len().checked_div(self.len).unwrap_or(0)
    }

    /// Takes SASRec's shifted windows (a target at every position).
    pub fn from_shifted(&mut self, b: &ShiftedBatch) {
        self.len = b.len;
        self.inputs.clone_from(&b.inputs);
        self.targets.clone_from(&b.targets);
    }

    /// Takes one window per target event (a target at the last position).
    pub fn from_windows(&mut self, b: &WindowBatch) {
        self.len = b.len;
        self.inputs.clone_from(&b.history);
        self.targets.clear();
        for &t in &b.targets {
            self.targets.extend(std::iter::repeat_n(0, b.len - 1));
            self.targets.push(t);
        }
    }

    /// Flat positions (`row · len + p`) that carry a target.
    pub fn target_positions(&self) -> Vec<u32> {
        (0..self.targets.len() as u32).filter(|&i| self.targets[i as usize] != 0).collect()
    }

    /// Whether every target sits at the last position of its row.
    pub fn last_only(&self) -> bool {
        self.targets.iter().enumerate().all(|(i, &t)| t == 0 || (i + 1) % self.len.max(1) == 0)
    }

    /// Checks the batch against a model (`name`, `n_ids`, window `model_len`)
    /// and returns the flat positions carrying a target and their target ids.
    ///
    /// # Errors
    /// As [`SeqBatch::check`], and a batch without any target.
    pub fn checked_targets(&self, name: &str, n_ids: usize, model_len: usize) -> Result<(Vec<u32>, Vec<u32>)> {
        self.check(n_ids, model_len)?;
        let at = self.target_positions();
        if at.is_empty() {
            return Err(ModelError::Invalid(format!("{name}: a training batch without targets")));
        }
        let targets = at.iter().map(|&i| self.targets[i as usize]).collect();
        Ok((at, targets))
    }

    /// Checks the shape and that every id is in `1..n_ids` (0 allowed as padding).
    ///
    /// # Errors
    /// [`ModelError::Invalid`] naming the row and position.
    pub fn check(&self, n_ids: usize, model_len: usize) -> Result<()> {
        if self.len != model_len
            || self.inputs.len() != self.targets.len()
            || !self.inputs.len().is_multiple_of(self.len.max(1))
        {
            return Err(ModelError::Invalid(format!(
                "sequence batch of width {} ({} inputs, {} targets), the model reads windows of {model_len}",
                self.len,
                self.inputs.len(),
                self.targets.len()
            )));
        }
        for (what, v) in [("input", &self.inputs), ("target", &self.targets)] {
            if let Some(i) = v.iter().position(|&x| x as usize >= n_ids) {
                return Err(ModelError::Invalid(format!(
                    "{what} item id {} at row {} position {}, expected 0..{n_ids} (the model's vocabulary)",
                    v[i],
                    i / self.len,
                    i % self.len
                )));
            }
        }
        Ok(())
    }
}

/// The training objective and the negatives it needs, drawn by the trainer.
#[derive(Debug, Clone, Copy)]
pub enum Objective<'a> {
    /// Softmax cross-entropy over every id.
    Full,
    /// Binary cross-entropy with one negative per target position (aligned
    /// with [`SeqBatch::target_positions`]).
    Bce {
        /// One negative id per target.
        negatives: &'a [u32],
    },
    /// Cross-entropy over the target and negatives shared by the batch.
    Sampled {
        /// Shared negative ids.
        negatives: &'a [u32],
        /// `log q` of every id (length `n_ids`) for the logQ correction, or none.
        log_q: Option<&'a [f32]>,
    },
}

/// The loss of `objective` for hidden vectors `h` (`[n, d]`) of targets
/// `targets` against the output table `w` (`[n_ids, d]`) and bias `b`.
///
/// # Errors
/// Mismatched lengths or a failing op.
pub fn output_loss(
    h: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    targets: &[u32],
    objective: Objective,
) -> Result<Tensor> {
    let dev = h.device();
    let n = targets.len();
    let n_ids = w.dim(0)?;
    let t = Tensor::from_slice(targets, n, dev)?;
    let pos_rows = w.index_select(&t, 0)?;
    let mut pos = (h * &pos_rows)?.sum(D::Minus1)?;
    if let Some(b) = b {
        pos = (pos + b.index_select(&t, 0)?)?;
    }
    match objective {
        Objective::Full => {
            let mut logits = h.matmul(&w.t()?)?;
            if let Some(b) = b {
                logits = (logits + nn::rows_of(b, n)?)?;
            }
            let mut pad = vec![0f32; n_ids];
            pad[0] = -1e9;
            let logits = logits.broadcast_add(&Tensor::from_vec(pad, (1, n_ids), dev)?)?;
            Ok((logsumexp(&logits)? - pos)?.mean_all()?)
        }
        Objective::Bce { negatives } => {
            if negatives.len() != n {
                return Err(ModelError::Invalid(format!("{} negatives for {n} targets", negatives.len())));
            }
            let ng = Tensor::from_slice(negatives, n, dev)?;
            let mut neg = (h * w.index_select(&ng, 0)?)?.sum(D::Minus1)?;
            if let Some(b) = b {
                neg = (neg + b.index_select(&ng, 0)?)?;
            }
            // −log σ(x) = softplus(−x); −log(1 − σ(x)) = softplus(x).
            Ok((nn::softplus(&pos.neg()?)? + nn::softplus(&neg)?)?.mean_all()?)
        }
        Objective::Sampled { negatives, log_q } => {
            let k = negatives.len();
            let ng = Tensor::from_slice(negatives, k, dev)?;
            let mut neg = h.matmul(&w.index_select(&ng, 0)?.t()?)?;
            if let Some(b) = b {
                neg = (neg + nn::rows_of(&b.index_select(&ng, 0)?, n)?)?;
            }
            let mut pos = pos;
            let mut shift = vec![0f32; n * k];
            for (r, &tr) in targets.iter().enumerate() {
                for (j, &x) in negatives.iter().enumerate() {
                    if x == tr || x == 0 {
                        shift[r * k + j] = -1e9;
                    } else if let Some(lq) = log_q {
                        shift[r * k + j] = -lq[x as usize];
                    }
                }
            }
            if let Some(lq) = log_q {
                let shift_pos: Vec<f32> = targets.iter().map(|&x| -lq[x as usize]).collect();
                pos = (pos + Tensor::from_vec(shift_pos, n, dev)?)?;
            }
            let neg = (neg + Tensor::from_vec(shift, (n, k), dev)?)?;
            let logits = Tensor::cat(&[&pos.unsqueeze(1)?, &neg], 1)?;
            Ok((logsumexp(&logits)? - pos)?.mean_all()?)
        }
    }
}

/// `log Σ exp` over the last dimension (max-shifted), one value per row.
pub fn logsumexp(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let s = x.broadcast_sub(&m)?.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok((s + m)?.squeeze(D::Minus1)?)
}

/// A next-item model over windows, trained by [`crate::seq`]'s objectives.
pub trait WindowModel: WindowScorer {
    /// The training loss of `batch` (dropout drawn from `rng`).
    ///
    /// # Errors
    /// A batch the model cannot read ([`SeqBatch::check`]) or a failing op.
    fn loss(&mut self, batch: &SeqBatch, objective: Objective, rng: &mut Rng) -> Result<Tensor>;

    /// The trainable parameters.
    fn params(&self) -> &Params;

    /// The trainable parameters, mutably (checkpoint loading).
    fn params_mut(&mut self) -> &mut Params;

    /// The model's device.
    fn device(&self) -> &Device;
}

/// Checks that scoring windows are as wide as the model (`name`) reads.
///
/// # Errors
/// [`ModelError::Invalid`] naming both widths.
pub fn check_window_width(batch: &WindowBatch, name: &str, model_len: usize) -> Result<()> {
    if batch.len != model_len {
        return Err(ModelError::Invalid(format!(
            "{name}: windows of {} events, the model reads {model_len}",
            batch.len
        )));
    }
    Ok(())
}

/// The additive `[rows, 1, len, len]` attention mask of left-padded windows:
/// `−1e9` where the key is padding or (when `causal`) later than the query.
pub fn attention_mask(inputs: &[u32], len: usize, causal: bool, dev: &Device) -> Result<Tensor> {
    let rows = inputs.len() / len;
    let mut mask = Vec::with_capacity(rows * len * len);
    for row in inputs.chunks(len) {
        for q in 0..len {
            mask.extend(row.iter().enumerate().map(|(k, &x)| if x == 0 || (causal && k > q) { -1e9f32 } else { 0.0 }));
        }
    }
    Ok(Tensor::from_vec(mask, (rows, 1, len, len), dev)?)
}

/// `[rows · len, 1]` column of 1 at real inputs and 0 at padding.
pub fn real_column(inputs: &[u32], dev: &Device) -> Result<Tensor> {
    let v: Vec<f32> = inputs.iter().map(|&x| f32::from(u8::from(x != 0))).collect();
    Ok(Tensor::from_vec(v, (inputs.len(), 1), dev)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap()
    }

    fn scalar(x: &Tensor) -> f64 {
        f64::from(x.to_scalar::<f32>().unwrap())
    }

    // h: 2 rows of width 2; table of 4 ids (id 0 padding).
    fn setup() -> (Tensor, Tensor, Vec<[f64; 2]>, Vec<[f64; 2]>) {
        let hv = [[0.5, -1.0], [1.5, 0.25]];
        let wv = [[9.0, 9.0], [0.1, 0.2], [-0.3, 0.4], [0.7, -0.5]];
        let h = t(&hv.iter().flatten().map(|&x| x as f32).collect::<Vec<_>>(), &[2, 2]);
        let w = t(&wv.iter().flatten().map(|&x| x as f32).collect::<Vec<_>>(), &[4, 2]);
        (h, w, hv.to_vec(), wv.to_vec())
    }

    fn dot(a: [f64; 2], b: [f64; 2]) -> f64 {
        a[0] * b[0] + a[1] * b[1]
    }

    #[test]
    fn full_softmax_excludes_padding_and_matches_the_definition() {
        let (h, w, hv, wv) = setup();
        let targets = [1u32, 3];
        let got = scalar(&output_loss(&h, &w, None, &targets, Objective::Full).unwrap());
        let mut want = 0.0;
        for (r, &tg) in targets.iter().enumerate() {
            let lse = (1..4).map(|j| dot(hv[r], wv[j]).exp()).sum::<f64>().ln();
            want += lse - dot(hv[r], wv[tg as usize]);
        }
        assert!((got - want / 2.0).abs() < 1e-5, "{got} vs {}", want / 2.0);
    }

    #[test]
    fn bce_and_sampled_match_their_definitions() {
        let (h, w, hv, wv) = setup();
        let targets = [1u32, 3];
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        let got = scalar(&output_loss(&h, &w, None, &targets, Objective::Bce { negatives: &[2, 1] }).unwrap());
        let want = (-(sig(dot(hv[0], wv[1]))).ln()
            - (1.0 - sig(dot(hv[0], wv[2]))).ln()
            - (sig(dot(hv[1], wv[3]))).ln()
            - (1.0 - sig(dot(hv[1], wv[1]))).ln())
            / 2.0;
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");

        // negatives [2, 3]: row 1's target 3 is also a negative and is masked there.
        let lq = [0.0f32, -1.0, -2.0, -0.5];
        let obj = Objective::Sampled { negatives: &[2, 3], log_q: Some(&lq) };
        let got = scalar(&output_loss(&h, &w, None, &targets, obj).unwrap());
        let s = |r: usize, j: usize| dot(hv[r], wv[j]) - f64::from(lq[j]);
        let row0 = (s(0, 1).exp() + s(0, 2).exp() + s(0, 3).exp()).ln() - s(0, 1);
        let row1 = (s(1, 3).exp() + s(1, 2).exp()).ln() - s(1, 3);
        assert!((got - (row0 + row1) / 2.0).abs() < 1e-5, "{got} vs {}", (row0 + row1) / 2.0);
    }

    #[test]
    fn batches_from_either_batcher_put_targets_where_the_loss_is() {
        let w = WindowBatch {
            len: 3,
            history: vec![0, 1, 2, 4, 5, 6],
            lengths: vec![2, 3],
            targets: vec![3, 7],
            ..Default::default()
        };
        let mut b = SeqBatch::default();
        b.from_windows(&w);
        assert_eq!(b.targets, vec![0, 0, 3, 0, 0, 7]);
        assert_eq!(b.target_positions(), vec![2, 5]);
        assert!(b.last_only());
        assert!(b.check(8, 3).is_ok());
        let err = b.check(7, 3).unwrap_err().to_string();
        assert!(err.contains("target item id 7 at row 1 position 2"), "{err}");
        let s = ShiftedBatch { len: 3, inputs: vec![0, 1, 2], targets: vec![0, 2, 3], ..Default::default() };
        b.from_shifted(&s);
        assert!(!b.last_only());
        assert_eq!(b.rows(), 1);
    }

    #[test]
    fn attention_mask_hides_padding_and_the_future() {
        let m = attention_mask(&[0, 5, 6], 3, true, &Device::Cpu).unwrap();
        let v: Vec<f32> = m.flatten_all().unwrap().to_vec1().unwrap();
        let blocked: Vec<bool> = v.iter().map(|&x| x < -1.0).collect();
        #[rustfmt::skip]
        assert_eq!(blocked, vec![
            true, true, true,
            true, false, true,
            true, false, false,
        ]);
    }
}
