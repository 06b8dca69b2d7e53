//! Sampled-output losses of GRU4Rec (Hidasi et al., "Session-based Recommendations with
//! Recurrent Neural Networks", arXiv 1511.06939; Hidasi & Karatzoglou, "Recurrent Neural
//! Networks with Top-k Gains for Session-based Recommendations", arXiv 1706.03847).
//!
//! During training the model scores only the mini-batch's own targets plus a few shared
//! extra samples, so the score matrix has one row per mini-batch row and the columns
//! `[targets of the batch ‖ extra samples]`: the positive of row `i` is column `i` and every
//! other column is a negative. Each loss reduces a row to one number; the rows are summed
//! and divided by the *configured* batch size, so that the shrunken mini-batches at the end
//! of an epoch weigh each event the same as the full ones, as in the authors' code.

use candle_core::{bail, Result, Tensor, D};
use serde::{Deserialize, Serialize};

/// Added inside the logarithms of cross-entropy and BPR-max so that a vanished probability
/// gives a large finite loss instead of infinity (the authors' value).
pub const LOG_EPSILON: f64 = 1e-24;

/// Which sampled-output loss to train with; serde names as in the papers' code.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Loss {
    /// Softmax over the row once after sampling, minus log of the positive's probability.
    CrossEntropy,
    /// As the authors' code: the mean over all N = B + S columns of
    /// σ(r_j − r_i) + σ(r_j²), minus σ(r_i²) / N (so the positive itself adds
    /// only the constant σ(0) / N).
    Top1,
    /// As the authors' code: the mean over all N = B + S columns of
    /// −log σ(r_i − r_j) (the positive itself adds the constant log 2 / N).
    Bpr,
    /// TOP1 weighted by the softmax over the negatives' scores.
    Top1Max,
    /// −log of the softmax-weighted σ(r_i − r_j), plus `bpreg` times the weighted r_j².
    BprMax {
        /// Weight of the score regulariser Σ_j s_j r_j².
        bpreg: f32,
    },
}

impl Loss {
    /// Every loss name accepted by [`Loss::from_name`], for error messages.
    pub const NAMES: [&'static str; 5] = ["cross-entropy", "top1", "bpr", "top1-max", "bpr-max"];

    /// The loss named as in the papers' code; `bpreg` is used only by `bpr-max`.
    pub fn from_name(name: &str, bpreg: f32) -> Option<Loss> {
        match name {
            "cross-entropy" => Some(Loss::CrossEntropy),
            "top1" => Some(Loss::Top1),
            "bpr" => Some(Loss::Bpr),
            "top1-max" => Some(Loss::Top1Max),
            "bpr-max" => Some(Loss::BprMax { bpreg }),
            _ => None,
        }
    }

    /// The name of this loss as in the papers' code.
    pub fn name(&self) -> &'static str {
        match self {
            Loss::CrossEntropy => "cross-entropy",
            Loss::Top1 => "top1",
            Loss::Bpr => "bpr",
            Loss::Top1Max => "top1-max",
            Loss::BprMax { .. } => "bpr-max",
        }
    }
}

/// Scalar loss of a `[B, B + S]` score matrix whose positives lie on the diagonal.
///
/// `log_pop` holds log of each column's sampling probability (`[B + S]`); when `logq > 0`
/// the scores become `R − logq · log_pop` before the loss (the authors use this with
/// cross-entropy). The sum over rows is divided by `batch_size`, the configured batch size.
///
/// # Errors
/// A score matrix that is not 2-D or has more rows than columns, a `log_pop` of the wrong
/// length, `logq > 0` without `log_pop`, or `batch_size == 0`. A `[1, 1]` matrix (one row,
/// no negative) gives zero.
pub fn sampled_loss(
    scores: &Tensor,
    loss: &Loss,
    log_pop: Option<&Tensor>,
    logq: f32,
    batch_size: usize,
) -> Result<Tensor> {
    let (rows, cols) = scores.dims2()?;
    if rows == 0 || rows > cols {
        bail!("sampled loss: found scores of shape [{rows}, {cols}], expected [B, B + S] with B >= 1");
    }
    if batch_size == 0 {
        bail!("sampled loss: found batch size 0, expected the configured batch size (>= 1)");
    }
    let scores = corrected_scores(scores, log_pop, logq)?;
    if cols == 1 {
        // A lone row without extra samples (the end of an epoch, n_sample = 0) has no
        // negative to rank against: it contributes zero, still attached to the graph.
        return scores.sum_all()?.affine(0.0, 0.0);
    }
    let dtype = scores.dtype();
    let device = scores.device();
    // Positive mask: the identity over the targets, zero over the extra samples.
    let positive = Tensor::eye(rows, dtype, device)?.pad_with_zeros(1, 0, cols - rows)?;
    let negative = positive.ones_like()?.sub(&positive)?;
    let diagonal = (&scores * &positive)?.sum_keepdim(1)?;
    let n_columns = cols as f64;
    let per_row = match loss {
        Loss::CrossEntropy => {
            let probability = (softmax_masked(&scores, None)? * &positive)?.sum_keepdim(1)?;
            (probability + LOG_EPSILON)?.log()?.neg()?
        }
        Loss::Top1 => {
            let all = top1_terms(&scores, &diagonal)?.sum_keepdim(1)?;
            (all - sigmoid(&diagonal.sqr()?)?)?.affine(1.0 / n_columns, 0.0)?
        }
        Loss::Bpr => {
            let margin = diagonal.broadcast_sub(&scores)?;
            log_sigmoid(&margin)?.sum_keepdim(1)?.affine(-1.0 / n_columns, 0.0)?
        }
        Loss::Top1Max => {
            let weight = softmax_masked(&scores, Some(&negative))?;
            (top1_terms(&scores, &diagonal)? * weight)?.sum_keepdim(1)?
        }
        Loss::BprMax { bpreg } => {
            let weight = softmax_masked(&scores, Some(&negative))?;
            let margin = diagonal.broadcast_sub(&scores)?;
            let ranked = (sigmoid(&margin)? * &weight)?.sum_keepdim(1)?;
            let regulariser = (scores.sqr()? * &weight)?.sum_keepdim(1)?;
            let ranking = (ranked + LOG_EPSILON)?.log()?.neg()?;
            (ranking + regulariser.affine(f64::from(*bpreg), 0.0)?)?
        }
    };
    per_row.sum_all()?.affine(1.0 / batch_size as f64, 0.0)
}

/// [`sampled_loss`] of `act(scores + bias)` as one fused op
/// (`seqrec_kernels::loss`): the same value and gradients (of the scores and
/// of the `[cols]` bias) from one pass over the scores instead of a graph of
/// a dozen tensor ops over `[B, B + S]`. `log_pop` holds one value per
/// column; it is used when `logq > 0`.
///
/// # Errors
/// As [`sampled_loss`].
pub fn fused_sampled_loss(
    scores: &Tensor,
    bias: &Tensor,
    act: seqrec_kernels::loss::Act,
    loss: &Loss,
    log_pop: Option<&[f32]>,
    logq: f32,
    batch_size: usize,
) -> Result<Tensor> {
    use seqrec_kernels::loss::SampledLoss;
    let kind = kernel_kind(loss);
    let log_pop = if logq > 0.0 {
        let Some(lp) = log_pop else {
            bail!("sampled loss: found logq = {logq} without log popularities, expected both");
        };
        Some((lp.to_vec(), logq))
    } else {
        None
    };
    scores.contiguous()?.apply_op2(&bias.contiguous()?, SampledLoss::new(kind, act, log_pop, batch_size))
}

/// The kernel's name for `loss`.
pub(crate) fn kernel_kind(loss: &Loss) -> seqrec_kernels::loss::LossKind {
    use seqrec_kernels::loss::LossKind;
    match *loss {
        Loss::CrossEntropy => LossKind::CrossEntropy,
        Loss::Top1 => LossKind::Top1,
        Loss::Bpr => LossKind::Bpr,
        Loss::Top1Max => LossKind::Top1Max,
        Loss::BprMax { bpreg } => LossKind::BprMax(bpreg),
    }
}

/// Scores after the logQ correction `R − logq · log_pop`, or the scores unchanged.
fn corrected_scores(scores: &Tensor, log_pop: Option<&Tensor>, logq: f32) -> Result<Tensor> {
    if logq <= 0.0 {
        return Ok(scores.clone());
    }
    let Some(log_pop) = log_pop else {
        bail!("sampled loss: found logq = {logq} without log popularities, expected both");
    };
    let cols = scores.dim(1)?;
    if log_pop.dims() != [cols] {
        bail!("sampled loss: found log popularities of shape {:?}, expected [{cols}] (one per column)", log_pop.dims());
    }
    let shift = log_pop.to_dtype(scores.dtype())?.affine(f64::from(logq), 0.0)?.unsqueeze(0)?;
    scores.broadcast_sub(&shift)
}

/// Row-wise softmax, restricted to the columns where `mask` is one when a mask is given.
fn softmax_masked(scores: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    // Softmax is shift-invariant, so the row maximum is a constant for the gradient.
    let max = scores.max_keepdim(1)?.detach();
    let mut exp = scores.broadcast_sub(&max)?.exp()?;
    if let Some(mask) = mask {
        exp = (exp * mask)?;
    }
    let total = exp.sum_keepdim(D::Minus1)?;
    exp.broadcast_div(&total)
}

/// The TOP1 term σ(r_j − r_i) + σ(r_j²) for every column j of every row i.
fn top1_terms(scores: &Tensor, diagonal: &Tensor) -> Result<Tensor> {
    let above_positive = sigmoid(&scores.broadcast_sub(diagonal)?)?;
    above_positive + sigmoid(&scores.sqr()?)?
}

/// σ(x) through tanh, which saturates without overflow for any finite x.
fn sigmoid(x: &Tensor) -> Result<Tensor> {
    x.affine(0.5, 0.0)?.tanh()?.affine(0.5, 0.5)
}

/// log σ(x) = min(x, 0) − log(1 + e^−|x|), finite for any finite x.
fn log_sigmoid(x: &Tensor) -> Result<Tensor> {
    let abs = x.abs()?;
    let min_with_zero = (x - &abs)?.affine(0.5, 0.0)?;
    let softplus_tail = abs.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
    min_with_zero - softplus_tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    const ALL: [Loss; 5] = [Loss::CrossEntropy, Loss::Top1, Loss::Bpr, Loss::Top1Max, Loss::BprMax { bpreg: 0.5 }];

    /// Deterministic scores in [-2, 2) from splitmix64, so the tests need no rng crate.
    fn random_scores(rows: usize, cols: usize, seed: u64) -> Vec<Vec<f64>> {
        let mut state = seed;
        let mut next = move || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            (z >> 11) as f64 / (1u64 << 53) as f64 * 4.0 - 2.0
        };
        (0..rows).map(|_| (0..cols).map(|_| next()).collect()).collect()
    }

    fn sigma(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }

    /// ln σ(x), split by sign so that e^|x| never overflows.
    fn ln_sigma(x: f64) -> f64 {
        if x < 0.0 {
            x - x.exp().ln_1p()
        } else {
            -(-x).exp().ln_1p()
        }
    }

    /// The losses written straight from their definitions, one row at a time, in f64.
    fn reference(scores: &[Vec<f64>], loss: &Loss, log_pop: Option<&[f64]>, logq: f64, batch_size: usize) -> f64 {
        let mut total = 0.0;
        for (i, row) in scores.iter().enumerate() {
            let r: Vec<f64> = match log_pop {
                Some(lp) if logq > 0.0 => row.iter().zip(lp).map(|(x, p)| x - logq * p).collect(),
                _ => row.clone(),
            };
            let pos = r[i];
            let negatives: Vec<f64> = (0..r.len()).filter(|&j| j != i).map(|j| r[j]).collect();
            let n = r.len() as f64;
            // Exponents shifted by the row maximum, so a row of huge negatives is not 0 / 0.
            let top = r.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let neg_exp_sum: f64 = negatives.iter().map(|x| (x - top).exp()).sum();
            let weight = |x: f64| (x - top).exp() / neg_exp_sum;
            total += match loss {
                Loss::CrossEntropy => {
                    let all: f64 = r.iter().map(|x| (x - top).exp()).sum();
                    -((pos - top).exp() / all + 1e-24).ln()
                }
                // The authors' TOP1 and BPR average over every column, the positive included.
                Loss::Top1 => (r.iter().map(|&x| sigma(x - pos) + sigma(x * x)).sum::<f64>() - sigma(pos * pos)) / n,
                Loss::Bpr => -r.iter().map(|&x| ln_sigma(pos - x)).sum::<f64>() / n,
                Loss::Top1Max => negatives.iter().map(|&x| weight(x) * (sigma(x - pos) + sigma(x * x))).sum(),
                Loss::BprMax { bpreg } => {
                    let ranked: f64 = negatives.iter().map(|&x| weight(x) * sigma(pos - x)).sum();
                    let reg: f64 = negatives.iter().map(|&x| weight(x) * x * x).sum();
                    -(ranked + 1e-24).ln() + f64::from(*bpreg) * reg
                }
            };
        }
        total / batch_size as f64
    }

    fn tensor(scores: &[Vec<f64>], dtype: DType) -> Tensor {
        let flat: Vec<f64> = scores.concat();
        Tensor::from_vec(flat, (scores.len(), scores[0].len()), &Device::Cpu).and_then(|t| t.to_dtype(dtype)).unwrap()
    }

    fn value(scores: &[Vec<f64>], loss: &Loss, log_pop: Option<&[f64]>, logq: f32) -> f64 {
        let log_pop = log_pop.map(|lp| Tensor::new(lp, &Device::Cpu).unwrap());
        sampled_loss(&tensor(scores, DType::F32), loss, log_pop.as_ref(), logq, 3)
            .and_then(|l| l.to_dtype(DType::F64))
            .and_then(|l| l.to_scalar::<f64>())
            .unwrap()
    }

    #[test]
    fn every_loss_matches_its_definition() {
        for seed in 0..4 {
            let scores = random_scores(3, 5, seed);
            for loss in &ALL {
                let got = value(&scores, loss, None, 0.0);
                let want = reference(&scores, loss, None, 0.0, 3);
                assert!((got - want).abs() < 1e-5, "{loss:?} seed {seed}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn raising_the_diagonal_lowers_every_loss() {
        let scores = random_scores(3, 5, 7);
        for loss in &ALL {
            let before = value(&scores, loss, None, 0.0);
            for i in 0..3 {
                let mut raised = scores.clone();
                raised[i][i] += 0.5;
                let after = value(&raised, loss, None, 0.0);
                assert!(after < before, "{loss:?} row {i}: {after} >= {before}");
            }
        }
    }

    #[test]
    fn moving_the_positive_off_the_diagonal_changes_the_loss() {
        // Rows whose best score sits on the diagonal lose less than the same rows with the
        // best score moved to an extra-sample column (all scores positive, so that TOP1's
        // σ(r_j²) term cannot reward the move).
        let good = vec![vec![3.0, 0.2, 0.4, 0.1, 0.3], vec![0.1, 3.0, 0.2, 0.4, 0.3], vec![0.4, 0.3, 3.0, 0.2, 0.1]];
        let mut bad = good.clone();
        for (i, row) in bad.iter_mut().enumerate() {
            row.swap(i, 4);
        }
        for loss in &ALL {
            assert!(value(&good, loss, None, 0.0) < value(&bad, loss, None, 0.0), "{loss:?}");
        }
    }

    #[test]
    fn logq_subtracts_scaled_log_popularity_per_column() {
        let scores = random_scores(3, 5, 11);
        let log_pop = [-1.0, -2.5, -0.3, -4.0, -1.7];
        for loss in &ALL {
            let got = value(&scores, loss, Some(&log_pop), 0.8);
            let want = reference(&scores, loss, Some(&log_pop), 0.8, 3);
            assert!((got - want).abs() < 1e-5, "{loss:?}: {got} vs {want}");
            // logq = 0 switches the correction off.
            let off = value(&scores, loss, Some(&log_pop), 0.0);
            let plain = reference(&scores, loss, None, 0.0, 3);
            assert!((off - plain).abs() < 1e-5, "{loss:?}: {off} vs {plain}");
            assert!((got - off).abs() > 1e-3, "{loss:?}: the correction changed nothing");
        }
        // A column-constant shift cancels in cross-entropy's softmax.
        let flat = [-2.0; 5];
        let shifted = value(&scores, &Loss::CrossEntropy, Some(&flat), 1.0);
        let plain = value(&scores, &Loss::CrossEntropy, None, 0.0);
        assert!((shifted - plain).abs() < 1e-5);
    }

    #[test]
    fn divides_by_the_configured_batch_size() {
        let scores = tensor(&random_scores(2, 4, 3), DType::F32);
        for loss in &ALL {
            let at = |b| sampled_loss(&scores, loss, None, 0.0, b).and_then(|l| l.to_scalar::<f32>()).unwrap();
            assert!((at(2) - 2.0 * at(4)).abs() < 1e-6, "{loss:?}");
        }
    }

    #[test]
    fn very_negative_scores_stay_finite() {
        // Row 0's positive is hopeless, so its probability underflows to zero: the epsilon
        // bounds cross-entropy and BPR-max at -ln(1e-24) for that row.
        let scores =
            vec![vec![-1e4, 0.0, 0.5, -0.5, 0.2], vec![-1e4, -1e4, -1e4, -1e4, -1e4], vec![0.3, -1e4, 1.0, -1e4, 0.0]];
        let cap = -(1e-24f64).ln();
        for loss in &ALL {
            let var = Var::from_tensor(&tensor(&scores, DType::F32)).unwrap();
            let l = sampled_loss(var.as_tensor(), loss, None, 0.0, 3).unwrap();
            let got = l.to_scalar::<f32>().unwrap();
            assert!(got.is_finite(), "{loss:?}: {got}");
            let grads = l.backward().unwrap();
            let grad = grads.get(var.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
            assert!(grad.iter().flatten().all(|g| g.is_finite()), "{loss:?}: {grad:?}");
            let want = reference(&scores, loss, None, 0.0, 3);
            assert!((f64::from(got) - want).abs() < 1e-4 * want.abs().max(1.0), "{loss:?}: {got} vs {want}");
        }
        let ce_row0 = value(&scores[..1], &Loss::CrossEntropy, None, 0.0) * 3.0;
        assert!((ce_row0 - cap).abs() < 1e-3, "{ce_row0} vs {cap}");
    }

    #[test]
    fn gradients_match_finite_differences() {
        let scores = random_scores(3, 5, 5);
        let log_pop = [-1.0, -2.5, -0.3, -4.0, -1.7];
        for loss in &ALL {
            for (lp, logq) in [(None, 0.0), (Some(&log_pop[..]), 0.6)] {
                let var = Var::from_tensor(&tensor(&scores, DType::F64)).unwrap();
                let lp_t = lp.map(|v| Tensor::new(v, &Device::Cpu).unwrap());
                let l = sampled_loss(var.as_tensor(), loss, lp_t.as_ref(), logq as f32, 3);
                let grads = l.and_then(|l| l.backward()).unwrap();
                let grad = grads.get(var.as_tensor()).unwrap().to_vec2::<f64>().unwrap();
                let h = 1e-6;
                for i in 0..3 {
                    for j in 0..5 {
                        let mut up = scores.clone();
                        up[i][j] += h;
                        let mut down = scores.clone();
                        down[i][j] -= h;
                        let numeric =
                            (reference(&up, loss, lp, logq, 3) - reference(&down, loss, lp, logq, 3)) / (2.0 * h);
                        assert!(
                            (grad[i][j] - numeric).abs() < 1e-6,
                            "{loss:?} logq {logq} [{i},{j}]: {} vs {numeric}",
                            grad[i][j]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn fused_op_matches_the_tensor_definition_in_value_and_gradient() {
        let (rows, cols) = (5usize, 12usize);
        let scores = random_scores(rows, cols, 77);
        let lp: Vec<f32> = (0..cols).map(|j| -((j % 5) as f32) * 0.7 - 0.1).collect();
        for loss in ALL {
            for logq in [0.0f32, 0.8] {
                let grads_of = |fused: bool| {
                    use seqrec_kernels::loss::Act;
                    let v = Var::from_tensor(&tensor(&scores, DType::F32)).unwrap();
                    let bias: Vec<f32> = (0..cols).map(|j| (j as f32 * 0.37).sin() * 0.5).collect();
                    let b = Var::from_tensor(&Tensor::new(bias.as_slice(), &Device::Cpu).unwrap()).unwrap();
                    let act = if logq > 0.0 { Act::Elu(0.5) } else { Act::Linear };
                    let l = if fused {
                        fused_sampled_loss(v.as_tensor(), b.as_tensor(), act, &loss, Some(&lp), logq, 8).unwrap()
                    } else {
                        let lpt = Tensor::new(lp.as_slice(), &Device::Cpu).unwrap();
                        let mut x = v.as_tensor().broadcast_add(&b.as_tensor().unsqueeze(0).unwrap()).unwrap();
                        if act != Act::Linear {
                            x = x.elu(0.5).unwrap();
                        }
                        sampled_loss(&x, &loss, Some(&lpt), logq, 8).unwrap()
                    };
                    let value = l.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
                    let grads = l.backward().unwrap();
                    let g = grads.get(v.as_tensor()).unwrap().flatten_all().unwrap();
                    let gb = grads.get(b.as_tensor()).unwrap();
                    let mut all = g.to_vec1::<f32>().unwrap();
                    all.extend(gb.to_vec1::<f32>().unwrap());
                    (value, all)
                };
                let (want, want_g) = grads_of(false);
                let (got, got_g) = grads_of(true);
                assert!((want - got).abs() < 1e-5 * want.abs().max(1.0), "{loss:?} logq {logq}: {got} vs {want}");
                for (a, b) in got_g.iter().zip(&want_g) {
                    assert!((a - b).abs() < 1e-5, "{loss:?} logq {logq}: gradient {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn lone_row_without_negatives_gives_zero() {
        let scores = tensor(&[vec![1.5]], DType::F32);
        for loss in &ALL {
            let l = sampled_loss(&scores, loss, None, 0.0, 4).unwrap();
            assert_eq!(l.to_scalar::<f32>().unwrap(), 0.0, "{loss:?}");
        }
    }

    #[test]
    fn bad_shapes_and_settings_are_errors() {
        let scores = tensor(&random_scores(3, 5, 1), DType::F32);
        let short = Tensor::new(&[0.0f32; 4], &Device::Cpu).unwrap();
        let loss = &Loss::CrossEntropy;
        let message = |r: Result<Tensor>| r.unwrap_err().to_string();
        assert!(message(sampled_loss(&scores, loss, Some(&short), 1.0, 3)).contains("[5]"));
        assert!(message(sampled_loss(&scores, loss, None, 1.0, 3)).contains("logq"));
        assert!(message(sampled_loss(&scores, loss, None, 0.0, 0)).contains("batch size"));
        let wide = tensor(&random_scores(3, 2, 1), DType::F32);
        assert!(message(sampled_loss(&wide, loss, None, 0.0, 3)).contains("[3, 2]"));
        let flat = Tensor::new(&[0.0f32; 3], &Device::Cpu).unwrap();
        assert!(sampled_loss(&flat, loss, None, 0.0, 3).is_err());
    }

    #[test]
    fn names_round_trip_through_serde_and_from_name() {
        for loss in &ALL {
            let back = Loss::from_name(loss.name(), 0.5);
            assert_eq!(back, Some(*loss));
            let json = serde_json::to_string(loss).unwrap();
            assert_eq!(serde_json::from_str::<Loss>(&json).unwrap(), *loss);
        }
        assert_eq!(serde_json::to_string(&Loss::Top1Max).unwrap(), "\"top1-max\"");
        assert_eq!(serde_json::from_str::<Loss>("\"cross-entropy\"").unwrap(), Loss::CrossEntropy);
        assert_eq!(serde_json::from_str::<Loss>(r#"{"bpr-max":{"bpreg":1.0}}"#).unwrap(), Loss::BprMax { bpreg: 1.0 });
        assert!(serde_json::from_str::<Loss>("\"softmax\"").is_err());
        assert_eq!(Loss::from_name("softmax", 1.0), None);
    }
}
