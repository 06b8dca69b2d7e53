//! Fused sampled-output loss of GRU4Rec: the scores of `[targets ‖ samples]`
//! (`[B, B + S]`, positives on the diagonal) → the loss and its gradient in
//! one pass per row, as a candle custom op with its backward.
//!
//! The definitions are those of `seqrec_models::loss::sampled_loss` (the
//! readable tensor version, which the tests of `seqrec-models` compare this
//! op against): scores first become `r = s − logq · log_pop[column]`; per row
//! `i` with N columns and σ' = σ(1 − σ):
//!
//! - cross-entropy: `L = −log(p_i + ε)`, `p = softmax(r)`;
//!   `∂L/∂r_j = −p_i/(p_i + ε) · (δ_ij − p_j)`.
//! - TOP1: `L = (Σ_j σ(r_j − r_i) + σ(r_j²) − σ(r_i²)) / N`.
//! - BPR: `L = −Σ_j log σ(r_i − r_j) / N`.
//! - TOP1-max: `w = softmax` over the negatives, `L = Σ_j w_j (σ(r_j − r_i) + σ(r_j²))`.
//! - BPR-max: `L = −log(Σ_j w_j σ(r_i − r_j) + ε) + bpreg · Σ_j w_j r_j²`.
//!
//! The rows' sum is divided by the configured batch size.

use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// ε inside the logarithms (the authors' value).
pub const LOG_EPSILON: f64 = 1e-24;

/// Which loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LossKind {
    /// Softmax cross-entropy.
    CrossEntropy,
    /// TOP1.
    Top1,
    /// BPR.
    Bpr,
    /// TOP1-max.
    Top1Max,
    /// BPR-max with its score regulariser weight.
    BprMax(f32),
}

/// Final activation applied to `scores + bias` before the loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Act {
    /// Identity.
    Linear,
    /// max(x, 0).
    Relu,
    /// tanh.
    Tanh,
    /// x, or a·x below 0.
    Leaky(f32),
    /// x, or a·(eˣ − 1) below 0.
    Elu(f32),
}

impl Act {
    /// The activation and its derivative at `x`.
    #[inline]
    fn eval(self, x: f64) -> (f64, f64) {
        match self {
            Act::Linear => (x, 1.0),
            Act::Relu => {
                if x > 0.0 {
                    (x, 1.0)
                } else {
                    (0.0, 0.0)
                }
            }
            Act::Tanh => {
                let t = x.tanh();
                (t, 1.0 - t * t)
            }
            Act::Leaky(a) => {
                if x >= 0.0 {
                    (x, 1.0)
                } else {
                    (f64::from(a) * x, f64::from(a))
                }
            }
            Act::Elu(a) => {
                if x >= 0.0 {
                    (x, 1.0)
                } else {
                    let e = x.exp();
                    (f64::from(a) * (e - 1.0), f64::from(a) * e)
                }
            }
        }
    }
}

impl Act {
    /// [`Act::eval`] in f32 (the cross-entropy path).
    #[inline]
    fn eval_f32(self, x: f32) -> (f32, f32) {
        match self {
            Act::Elu(a) if x < 0.0 => {
                let e = exp_f32(x);
                (a * (e - 1.0), a * e)
            }
            Act::Tanh => {
                let t = crate::act::tanh_f32(x);
                (t, 1.0 - t * t)
            }
            act => {
                let (y, d) = act.eval(f64::from(x));
                (y as f32, d as f32)
            }
        }
    }
}

#[inline]
fn sigmoid(x: f64) -> f64 {
    0.5 * (0.5 * x).tanh() + 0.5
}

/// Loss of one row `r` (already logQ-corrected) with positive `i`; writes
/// `∂L/∂r` into `grad` (same length) scaled by `scale`.
fn row_loss(kind: LossKind, r: &[f64], i: usize, grad: &mut [f32], scale: f64) -> f64 {
    let n = r.len();
    let ri = r[i];
    let nf = n as f64;
    match kind {
        LossKind::CrossEntropy => {
            let max = r.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = r.iter().map(|&x| (x - max).exp()).collect();
            let total: f64 = e.iter().sum();
            let pi = e[i] / total;
            let c = -pi / (pi + LOG_EPSILON);
            for (j, g) in grad.iter_mut().enumerate() {
                let pj = e[j] / total;
                let d = if j == i { 1.0 - pj } else { -pj };
                *g = (scale * c * d) as f32;
            }
            -(pi + LOG_EPSILON).ln()
        }
        LossKind::Top1 => {
            let mut loss = 0.0;
            let mut gi = 0.0;
            for (j, g) in grad.iter_mut().enumerate() {
                let a = sigmoid(r[j] - ri);
                let b = sigmoid(r[j] * r[j]);
                loss += a + b;
                if j != i {
                    *g = (scale * (a * (1.0 - a) + b * (1.0 - b) * 2.0 * r[j]) / nf) as f32;
                    gi -= a * (1.0 - a);
                }
            }
            grad[i] = (scale * gi / nf) as f32;
            (loss - sigmoid(ri * ri)) / nf
        }
        LossKind::Bpr => {
            let mut loss = 0.0;
            let mut gi = 0.0;
            for (j, g) in grad.iter_mut().enumerate() {
                let m = ri - r[j];
                // log σ(m) = min(m, 0) − log(1 + e^−|m|)
                loss -= m.min(0.0) - (-m.abs()).exp().ln_1p();
                if j != i {
                    let s = sigmoid(-m);
                    *g = (scale * s / nf) as f32;
                    gi -= s;
                }
            }
            grad[i] = (scale * gi / nf) as f32;
            loss / nf
        }
        LossKind::Top1Max | LossKind::BprMax(_) => {
            let max = r.iter().enumerate().filter(|&(j, _)| j != i).map(|(_, &x)| x).fold(f64::NEG_INFINITY, f64::max);
            let total: f64 = r.iter().enumerate().filter(|&(j, _)| j != i).map(|(_, &x)| (x - max).exp()).sum();
            let w = |j: usize| if j == i { 0.0 } else { (r[j] - max).exp() / total };
            match kind {
                LossKind::Top1Max => {
                    let t = |j: usize| sigmoid(r[j] - ri) + sigmoid(r[j] * r[j]);
                    let loss: f64 = (0..n).map(|j| w(j) * t(j)).sum();
                    let mut gi = 0.0;
                    for (j, g) in grad.iter_mut().enumerate() {
                        if j == i {
                            continue;
                        }
                        let (wj, a, b) = (w(j), sigmoid(r[j] - ri), sigmoid(r[j] * r[j]));
                        *g = (scale * (wj * (t(j) - loss) + wj * (a * (1.0 - a) + b * (1.0 - b) * 2.0 * r[j]))) as f32;
                        gi -= wj * a * (1.0 - a);
                    }
                    grad[i] = (scale * gi) as f32;
                    loss
                }
                _ => {
                    let LossKind::BprMax(bpreg) = kind else { unreachable!() };
                    let lambda = f64::from(bpreg);
                    let s = |j: usize| sigmoid(ri - r[j]);
                    let a: f64 = (0..n).map(|j| w(j) * s(j)).sum();
                    let reg: f64 = (0..n).map(|j| w(j) * r[j] * r[j]).sum();
                    let mut gi_a = 0.0;
                    for (j, g) in grad.iter_mut().enumerate() {
                        if j == i {
                            continue;
                        }
                        let (wj, sj) = (w(j), s(j));
                        let da = wj * (sj - a) - wj * sj * (1.0 - sj);
                        let dr = wj * (r[j] * r[j] - reg) + 2.0 * wj * r[j];
                        *g = (scale * (-da / (a + LOG_EPSILON) + lambda * dr)) as f32;
                        gi_a += wj * sj * (1.0 - sj);
                    }
                    grad[i] = (scale * (-gi_a / (a + LOG_EPSILON))) as f32;
                    -(a + LOG_EPSILON).ln() + lambda * reg
                }
            }
        }
    }
}

/// The settings of one fused loss evaluation.
#[derive(Debug, Clone, Copy)]
pub struct LossSpec<'a> {
    /// Which loss.
    pub kind: LossKind,
    /// Final activation of `scores + bias`.
    pub act: Act,
    /// log popularity per column and the logQ weight, when logQ is on.
    pub log_pop: Option<(&'a [f32], f32)>,
    /// The configured batch size.
    pub batch_size: usize,
}

/// CPU reference: the loss of `act(scores + bias)` (`scores` is `rows × cols`
/// row-major, `bias` one value per column) and its gradient with respect to
/// the scores (same layout; the bias's gradient is its column sums).
///
/// # Errors
/// Scores that are not `[B, B + S]` with `B >= 1`, a batch size of 0, a bias
/// or log-popularity vector without one value per column, or a gradient
/// buffer of another size.
pub fn sampled_loss_cpu(
    spec: &LossSpec<'_>,
    scores: &[f32],
    bias: &[f32],
    cols: usize,
    grad: &mut [f32],
) -> Result<f64> {
    let rows = scores.len().checked_div(cols).unwrap_or(0);
    if rows == 0 || rows > cols || rows * cols != scores.len() {
        bail!("sampled loss: found {} scores in rows of {cols}, expected [B, B + S] with B >= 1", scores.len());
    }
    if bias.len() != cols {
        bail!("sampled loss: found {} biases, expected {cols} (one per column)", bias.len());
    }
    check_spec_and_grad(spec, cols, scores.len(), grad.len())?;
    Ok(sum_over_rows(spec, scores, grad, (cols, cols), |i, s, g, scale| full_row(spec, s, bias, i, g, scale)))
}

/// The checks both CPU losses share: the batch size, one log popularity per
/// column (`cols` of them), a gradient buffer as large as the scores.
fn check_spec_and_grad(spec: &LossSpec<'_>, cols: usize, n_scores: usize, n_grad: usize) -> Result<()> {
    if spec.batch_size == 0 {
        bail!("sampled loss: found batch size 0, expected the configured batch size (>= 1)");
    }
    if let Some((lp, _)) = spec.log_pop {
        if lp.len() != cols {
            bail!("sampled loss: found {} log popularities, expected {cols} (one per column)", lp.len());
        }
    }
    if n_grad != n_scores {
        bail!("sampled loss: found a gradient buffer of {n_grad}, expected {n_scores}");
    }
    Ok(())
}

/// Runs `row(i, scores_i, grad_i, 1 / batch_size)` over the rows of `width`
/// stored values (`cols` columns each, `width` of them distinct) and returns
/// the loss summed over rows, divided by the configured batch size. With a
/// single column (no negatives) the loss and gradient are 0.
fn sum_over_rows<F>(spec: &LossSpec<'_>, scores: &[f32], grad: &mut [f32], (width, cols): (usize, usize), row: F) -> f64
where
    F: Fn(usize, &[f32], &mut [f32], f64) -> f64 + Sync,
{
    let scale = 1.0 / spec.batch_size as f64;
    if cols <= 1 {
        grad.iter_mut().for_each(|g| *g = 0.0);
        return 0.0;
    }
    let rows = scores.len() / width;
    let task = |(i, (s, g)): (usize, (&[f32], &mut [f32]))| row(i, s, g, scale);
    // Rows are cheap (a few µs each): split them over threads only when there is enough work.
    let losses: Vec<f64> = if rows * cols >= PARALLEL_MIN {
        scores.par_chunks(width).zip(grad.par_chunks_mut(width)).enumerate().map(task).collect()
    } else {
        scores.chunks(width).zip(grad.chunks_mut(width)).enumerate().map(task).collect()
    };
    losses.iter().sum::<f64>() * scale
}

/// One row of [`sampled_loss_cpu`]: the loss of row `i` (its positive in
/// column `i`) and the row's gradient in `g`.
fn full_row(spec: &LossSpec<'_>, s: &[f32], bias: &[f32], i: usize, g: &mut [f32], scale: f64) -> f64 {
    if spec.kind == LossKind::CrossEntropy {
        return crate::simd::dispatch(|| cross_entropy_row_f32(spec, s, bias, (i, None), g, scale));
    }
    let cols = s.len();
    let mut r = Vec::with_capacity(cols);
    let mut dact = Vec::with_capacity(cols);
    for (j, &x) in s.iter().enumerate() {
        let x = f64::from(x) + bias.get(j).map_or(0.0, |&b| f64::from(b));
        let (y, d) = spec.act.eval(x);
        let shift = spec.log_pop.map_or(0.0, |(lp, q)| f64::from(q) * f64::from(lp[j]));
        r.push(y - shift);
        dact.push(d);
    }
    let loss = row_loss(spec.kind, &r, i, g, scale);
    if spec.act != Act::Linear {
        for (g, d) in g.iter_mut().zip(&dact) {
            *g = (f64::from(*g) * d) as f32;
        }
    }
    loss
}

/// [`sampled_loss_cpu`] with the columns' items given once each: `scores`
/// `[B, U]` and `bias` `[U]` hold the `U` distinct items, `col[c]` (`B + S`
/// values, the positive of row `i` in column `i`) names the distinct item of
/// column `c`, and `grad` `[B, U]` receives each item's gradient summed over
/// its columns. The loss is that of the `B + S` columns, repeats included,
/// as the authors define it; a repeated sample costs no product.
/// Cross-entropy without logQ works on the `U` values directly (a repeated
/// column's share of the softmax is its multiplicity times one exponential);
/// other losses expand each row, run [`sampled_loss_cpu`]'s row and sum the
/// gradient back.
///
/// # Errors
/// As [`sampled_loss_cpu`] with `B + S = col.len()`, and a column naming an
/// item outside `0..U`.
pub fn sampled_loss_distinct_cpu(
    spec: &LossSpec<'_>,
    scores: &[f32],
    bias: &[f32],
    col: &[u32],
    grad: &mut [f32],
) -> Result<f64> {
    let (n_distinct, cols) = (bias.len(), col.len());
    let rows = scores.len().checked_div(n_distinct).unwrap_or(0);
    if rows == 0 || rows > cols || rows * n_distinct != scores.len() {
        bail!(
            "sampled loss: found {} scores in rows of {n_distinct} distinct items, expected [B, U] with B >= 1 and B <= {cols} columns",
            scores.len()
        );
    }
    if let Some(&bad) = col.iter().find(|&&c| c as usize >= n_distinct) {
        bail!("sampled loss: a column names distinct item {bad}, expected one below {n_distinct}");
    }
    check_spec_and_grad(spec, cols, scores.len(), grad.len())?;
    let direct = spec.kind == LossKind::CrossEntropy && spec.log_pop.is_none();
    let mut multiplicity = vec![0f32; if direct { n_distinct } else { 0 }];
    for &c in col.iter().filter(|_| direct) {
        multiplicity[c as usize] += 1.0;
    }
    let row = |i: usize, s: &[f32], g: &mut [f32], scale: f64| {
        if direct {
            let pos = (col[i] as usize, Some(multiplicity.as_slice()));
            return crate::simd::dispatch(|| cross_entropy_row_f32(spec, s, bias, pos, g, scale));
        }
        let full: Vec<f32> = col.iter().map(|&c| s[c as usize]).collect();
        let full_bias: Vec<f32> = col.iter().map(|&c| bias[c as usize]).collect();
        let mut full_grad = vec![0f32; cols];
        let loss = full_row(spec, &full, &full_bias, i, &mut full_grad, scale);
        g.iter_mut().for_each(|x| *x = 0.0);
        for (&x, &c) in full_grad.iter().zip(col) {
            g[c as usize] += x;
        }
        loss
    };
    Ok(sum_over_rows(spec, scores, grad, (n_distinct, cols), row))
}

/// Scores per call below which the rows are done on the calling thread.
const PARALLEL_MIN: usize = 1 << 15;

/// `e^x` in f32 for `x <= 88`, written so that a loop over it vectorises:
/// `x = n·ln 2 + r` with `|r| <= ln 2 / 2`, a degree-7 Taylor polynomial of
/// `e^r` (truncation < 6e-9 relative) and `2^n` put into the exponent bits.
/// Below −87 it returns `e^−87` (≈ 1.6e-38) instead of a subnormal or 0,
/// which no softmax denominator (≥ 1 after the max is subtracted) can see.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5 · 2^23: adding it rounds to an integer held in the low mantissa bits.
    const SHIFTER: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let k = x * LOG2E + SHIFTER;
    let n = k - SHIFTER;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // The integer n sits in k's low bits: n + 127 shifted into the exponent field.
    let scale = f32::from_bits(k.to_bits().wrapping_sub(SHIFTER.to_bits()).wrapping_add(127) << 23);
    p * scale
}

/// Sum of non-negative f32 values accumulated in four f64 lanes (vectorises;
/// no f32 rounding of the running total).
#[inline(always)]
fn sum_f64(v: &[f32]) -> f64 {
    let mut acc = [0f64; 4];
    let mut chunks = v.chunks_exact(4);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += f64::from(x);
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|&x| f64::from(x)).sum();
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// Cross-entropy of one row in f32 (the loss itself and the softmax
/// denominator in f64): `r = act(s + b) − logq·log_pop`, `p = softmax(r)`,
/// `L = −log(p_i + ε)`, `∂L/∂s_j = −p_i/(p_i + ε) · (δ_ij − p_j) · act'`.
/// Same definition as [`row_loss`]'s cross-entropy, without a scalar f64
/// `exp` per score (which made the loss a sixth of a training step).
/// `(i, multiplicity)`: the positive is value `i`; with a multiplicity the
/// values are distinct items, item `u` standing for `multiplicity[u]` equal
/// columns (its exponential counted that many times in the softmax, its
/// gradient the sum over those columns); `spec.log_pop` has one value per
/// column, so callers with a multiplicity leave logQ off.
#[inline(always)]
fn cross_entropy_row_f32(
    spec: &LossSpec<'_>,
    s: &[f32],
    bias: &[f32],
    (i, multiplicity): (usize, Option<&[f32]>),
    g: &mut [f32],
    scale: f64,
) -> f64 {
    let mut dact = Vec::new();
    for (o, (&x, &b)) in g.iter_mut().zip(s.iter().zip(bias)) {
        *o = x + b;
    }
    match spec.act {
        Act::Linear => {}
        act => {
            dact.reserve(g.len());
            for o in g.iter_mut() {
                let (y, d) = act.eval_f32(*o);
                *o = y;
                dact.push(d);
            }
        }
    }
    if let Some((lp, q)) = spec.log_pop {
        for (o, &l) in g.iter_mut().zip(lp) {
            *o -= q * l;
        }
    }
    let max = g.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for o in g.iter_mut() {
        *o = exp_f32(*o - max);
    }
    let e_pos = g[i];
    if let Some(multiplicity) = multiplicity {
        for (o, &m) in g.iter_mut().zip(multiplicity) {
            *o *= m;
        }
    }
    let total = sum_f64(g);
    let pi = f64::from(e_pos) / total;
    let c = -pi / (pi + LOG_EPSILON);
    // ∂L/∂r_j = c·(δ_ij − p_j) = −(c/total)·e_j, plus c on the positive.
    let k = (scale * c / total) as f32;
    for o in g.iter_mut() {
        *o *= -k;
    }
    g[i] += (scale * c) as f32;
    if !dact.is_empty() {
        for (o, &d) in g.iter_mut().zip(&dact) {
            *o *= d;
        }
    }
    -(pi + LOG_EPSILON).ln()
}

/// The fused loss as a candle op: `scores.apply_op2(&bias, op)` (`bias`
/// `[cols]`) gives the scalar loss of `act(scores + bias)`, and
/// backpropagation the gradients of both.
///
/// The forward pass computes the gradient too and keeps it for the backward
/// pass, so the scores are read once.
#[derive(Debug)]
pub struct SampledLoss {
    /// Which loss.
    pub kind: LossKind,
    /// Final activation.
    pub act: Act,
    /// log popularity per column and the logQ weight, when logQ is on.
    pub log_pop: Option<(Vec<f32>, f32)>,
    /// The configured batch size.
    pub batch_size: usize,
    kept: std::sync::Mutex<Option<(Vec<f32>, usize, usize)>>,
}

fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else { bail!("sampled loss: expected f32 {what}") };
    let Some((a, b)) = l.contiguous_offsets() else { bail!("sampled loss: expected contiguous {what}") };
    Ok(&v[a..b])
}

impl SampledLoss {
    /// The op for one score matrix.
    pub fn new(kind: LossKind, act: Act, log_pop: Option<(Vec<f32>, f32)>, batch_size: usize) -> Self {
        SampledLoss { kind, act, log_pop, batch_size, kept: std::sync::Mutex::new(None) }
    }

    fn run(&self, s: &CpuStorage, l: &Layout, bs: &CpuStorage, bl: &Layout) -> Result<(f64, Vec<f32>, usize, usize)> {
        let v = contiguous_f32(s, l, "scores")?;
        let bias = contiguous_f32(bs, bl, "bias")?;
        let &[rows, cols] = l.dims() else { bail!("sampled loss: expected [B, B + S] scores, found {:?}", l.dims()) };
        let mut grad = vec![0f32; rows * cols];
        let spec = LossSpec {
            kind: self.kind,
            act: self.act,
            log_pop: self.log_pop.as_ref().map(|(v, q)| (v.as_slice(), *q)),
            batch_size: self.batch_size,
        };
        let loss = sampled_loss_cpu(&spec, v, bias, cols, &mut grad)?;
        Ok((loss, grad, rows, cols))
    }
}

impl CustomOp2 for SampledLoss {
    fn name(&self) -> &'static str {
        "sampled-loss"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout, bs: &CpuStorage, bl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (loss, grad, rows, cols) = self.run(s, l, bs, bl)?;
        *self.kept.lock().map_err(|_| candle_core::Error::Msg("sampled loss: poisoned".into()))? =
            Some((grad, rows, cols));
        Ok((CpuStorage::F32(vec![loss as f32]), Shape::from(())))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let kept = self.kept.lock().map_err(|_| candle_core::Error::Msg("sampled loss: poisoned".into()))?.take();
        let (grad, rows, cols) = match kept {
            Some(k) => k,
            None => {
                let (arg, bias) = (arg.contiguous()?, bias.contiguous()?);
                let (storage, layout) = arg.storage_and_layout();
                let (bstorage, blayout) = bias.storage_and_layout();
                let (candle_core::Storage::Cpu(cpu), candle_core::Storage::Cpu(bcpu)) = (&*storage, &*bstorage) else {
                    bail!("sampled loss: backward on this device is not implemented")
                };
                let (_, grad, rows, cols) = self.run(cpu, layout, bcpu, blayout)?;
                (grad, rows, cols)
            }
        };
        let g = Tensor::from_vec(grad, (rows, cols), arg.device())?.broadcast_mul(grad_res)?;
        let gb = g.sum(0)?.reshape(bias.shape())?;
        Ok((Some(g), Some(gb)))
    }
}

/// The fused loss on the scores' own device: `scores` `[B, N]`, `bias` `[N]`
/// and, with logQ on, `log_pop` `[N]` with its weight → the loss (summed
/// rows divided by the batch size) and `∂L/∂scores` `[B, N]` on the same
/// device. On the CPU it is [`sampled_loss_cpu`]; with the `cuda` feature on
/// a GPU it is `cuda/loss.cu`, tested against the CPU.
///
/// # Errors
/// As [`sampled_loss_cpu`]; a device without an implementation.
pub fn sampled_loss_grad(
    kind: LossKind,
    act: Act,
    batch_size: usize,
    scores: &Tensor,
    bias: &Tensor,
    log_pop: Option<(&Tensor, f32)>,
) -> Result<(f64, Tensor)> {
    let (scores, bias) = (scores.contiguous()?, bias.flatten_all()?.contiguous()?);
    let cols = scores.dims().last().copied().unwrap_or(0);
    let (lp, logq) = match log_pop {
        Some((lp, q)) => (lp.flatten_all()?.contiguous()?, q),
        None => (Tensor::zeros(cols, candle_core::DType::F32, scores.device())?, 0.0),
    };
    let op = LossGrad { kind, act, logq, has_log_pop: log_pop.is_some(), batch_size, loss: Default::default() };
    let grad = scores.apply_op3_no_bwd(&bias, &lp, &op)?;
    let loss = *op.loss.lock().map_err(|_| candle_core::Error::Msg("sampled loss: poisoned".into()))?;
    Ok((loss, grad))
}

/// The op behind [`sampled_loss_grad`]: output the gradient, keep the loss.
#[derive(Debug)]
struct LossGrad {
    kind: LossKind,
    act: Act,
    logq: f32,
    has_log_pop: bool,
    batch_size: usize,
    loss: std::sync::Mutex<f64>,
}

impl LossGrad {
    fn set_loss(&self, v: f64) -> Result<()> {
        *self.loss.lock().map_err(|_| candle_core::Error::Msg("sampled loss: poisoned".into()))? = v;
        Ok(())
    }
}

impl candle_core::CustomOp3 for LossGrad {
    fn name(&self) -> &'static str {
        "sampled-loss-grad"
    }

    fn cpu_fwd(
        &self,
        s: &CpuStorage,
        l: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
        ls: &CpuStorage,
        ll: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let scores = contiguous_f32(s, l, "scores")?;
        let bias = contiguous_f32(bs, bl, "bias")?;
        let lp = contiguous_f32(ls, ll, "log popularity")?;
        let &[_, cols] = l.dims() else { bail!("sampled loss: expected [B, B + S] scores, found {:?}", l.dims()) };
        let spec = LossSpec {
            kind: self.kind,
            act: self.act,
            log_pop: self.has_log_pop.then_some((lp, self.logq)),
            batch_size: self.batch_size,
        };
        let mut grad = vec![0f32; scores.len()];
        self.set_loss(sampled_loss_cpu(&spec, scores, bias, cols, &mut grad)?)?;
        Ok((CpuStorage::F32(grad), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
        bs: &candle_core::CudaStorage,
        bl: &Layout,
        ls: &candle_core::CudaStorage,
        ll: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let loss = cuda::sampled_loss(self, (s, l), (bs, bl), (ls, ll))?;
        self.set_loss(loss.0)?;
        Ok((loss.1, l.shape().clone()))
    }
}

/// The CUDA side of [`sampled_loss_grad`] (`cuda/loss.cu`).
#[cfg(feature = "cuda")]
mod cuda {
    use super::{Act, LossGrad, LossKind};
    use crate::cuda::{func, launch, storage, view, Module};
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
    use candle_core::{bail, CudaStorage, Layout, Result};

    type Arg<'a> = (&'a CudaStorage, &'a Layout);

    pub(super) fn sampled_loss(op: &LossGrad, s: Arg<'_>, b: Arg<'_>, lp: Arg<'_>) -> Result<(f64, CudaStorage)> {
        let &[rows, cols] = s.1.dims() else {
            bail!("sampled loss: expected [B, B + S] scores, found {:?}", s.1.dims())
        };
        if rows == 0 || rows > cols {
            bail!("sampled loss: found scores {rows}×{cols}, expected [B, B + S] with B >= 1");
        }
        if op.batch_size == 0 {
            bail!("sampled loss: found batch size 0, expected the configured batch size (>= 1)");
        }
        for (what, a) in [("biases", b), ("log popularities", lp)] {
            if a.1.shape().elem_count() != cols {
                bail!("sampled loss: found {} {what}, expected {cols} (one per column)", a.1.shape().elem_count());
            }
        }
        let dev = s.0.device().clone();
        if cols <= 1 {
            // No negative: no loss and no gradient (as on the CPU).
            return Ok((0.0, storage(dev.alloc_zeros::<f32>(rows * cols)?, &dev)));
        }
        let (scores, bias, log_pop) =
            (view(s.0, s.1, "scores")?, view(b.0, b.1, "bias")?, view(lp.0, lp.1, "log pop")?);
        let mut grad = dev.alloc_zeros::<f32>(rows * cols)?;
        let mut row_loss = dev.alloc_zeros::<f64>(rows)?;
        let (kind, bpreg) = match op.kind {
            LossKind::CrossEntropy => (0i32, 0f32),
            LossKind::Top1 => (1, 0.0),
            LossKind::Bpr => (2, 0.0),
            LossKind::Top1Max => (3, 0.0),
            LossKind::BprMax(reg) => (4, reg),
        };
        let (act, act_a) = match op.act {
            Act::Linear => (0i32, 0f32),
            Act::Relu => (1, 0.0),
            Act::Tanh => (2, 0.0),
            Act::Leaky(a) => (3, a),
            Act::Elu(a) => (4, a),
        };
        let scale = 1.0 / op.batch_size as f64;
        let (rows32, cols32) = (rows as u32, cols as u32);
        let f = func(&dev, Module::Loss, "sampled_loss")?;
        let stream = dev.cuda_stream();
        let mut l = stream.launch_builder(&f);
        // (const float* scores, const float* bias, const float* log_pop, float logq, unsigned rows,
        //  unsigned cols, int kind, float bpreg, int act, float act_a, double scale, float* grad,
        //  double* row_loss)
        l.arg(&scores).arg(&bias).arg(&log_pop).arg(&op.logq).arg(&rows32).arg(&cols32);
        l.arg(&kind).arg(&bpreg).arg(&act).arg(&act_a).arg(&scale).arg(&mut grad).arg(&mut row_loss);
        launch(l, LaunchConfig { grid_dim: (rows32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 })?;
        let losses = dev.clone_dtoh(&row_loss)?;
        let total = losses.iter().sum::<f64>() * scale;
        Ok((total, storage(grad, &dev)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cross_entropy_rows_compiled_for_avx512_are_bit_identical_to_the_baseline() {
        let cols = 517;
        let s: Vec<f32> = (0..cols).map(|j| ((j * 37 % 101) as f32 - 50.0) / 7.0).collect();
        let bias: Vec<f32> = (0..cols).map(|j| (j % 13) as f32 / 10.0 - 0.6).collect();
        let lp: Vec<f32> = (0..cols).map(|j| -((j % 29) as f32 + 1.0).ln()).collect();
        for (act, log_pop) in [(Act::Linear, None), (Act::Elu(1.0), Some((&lp[..], 0.5f32))), (Act::Tanh, None)] {
            let spec = LossSpec { kind: LossKind::CrossEntropy, act, log_pop, batch_size: 32 };
            let run = |wide: bool| {
                let mut g = vec![0f32; cols];
                let row = || cross_entropy_row_f32(&spec, &s, &bias, (3, None), &mut g, 1.0 / 32.0);
                let loss = if wide { crate::simd::dispatch(row) } else { crate::simd::baseline(row) };
                (loss.to_bits(), g.iter().map(|x| x.to_bits()).collect::<Vec<_>>())
            };
            assert_eq!(run(true), run(false), "{act:?}");
        }
    }

    #[test]
    fn exp_f32_is_within_two_ulp_of_the_f64_exponential() {
        let mut worst = 0f64;
        for k in 0..=200_000 {
            let x = -87.0 + 175.0 * k as f64 / 200_000.0;
            let got = f64::from(exp_f32(x as f32));
            let want = f64::from(x as f32).exp();
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 2.5e-7, "worst relative error {worst}");
        assert!(exp_f32(-1000.0) > 0.0 && exp_f32(-1000.0) < 1e-37);
        assert_eq!(exp_f32(0.0), 1.0);
    }

    /// A fixed pseudo-random stream (an LCG) of f32 in `[-half, half)`.
    fn uniform_stream(seed: u64, half: f32) -> impl FnMut() -> f32 {
        let mut state = seed;
        move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 33) as f64 / (1u64 << 31) as f64) as f32 * (2.0 * half) - half
        }
    }

    #[test]
    fn f32_cross_entropy_matches_the_f64_definition() {
        // Pseudo-random rows with every activation and logQ on and off.
        let (rows, cols) = (5usize, 37usize);
        let mut next = uniform_stream(12345, 3.0);
        let scores: Vec<f32> = (0..rows * cols).map(|_| next()).collect();
        let bias: Vec<f32> = (0..cols).map(|_| next() * 0.3).collect();
        let lp: Vec<f32> = (0..cols).map(|_| next().abs()).collect();
        for act in [Act::Linear, Act::Relu, Act::Tanh, Act::Leaky(0.1), Act::Elu(0.5)] {
            for log_pop in [None, Some((lp.as_slice(), 0.7f32))] {
                let spec = LossSpec { kind: LossKind::CrossEntropy, act, log_pop, batch_size: 4 };
                let mut fast = vec![0f32; rows * cols];
                let got = sampled_loss_cpu(&spec, &scores, &bias, cols, &mut fast).unwrap();
                // The f64 reference: row_loss on r computed in f64, times act'.
                let mut want = 0.0;
                for i in 0..rows {
                    let (mut r, mut d) = (Vec::new(), Vec::new());
                    for j in 0..cols {
                        let (y, dy) = act.eval(f64::from(scores[i * cols + j]) + f64::from(bias[j]));
                        r.push(y - log_pop.map_or(0.0, |(l, q)| f64::from(q) * f64::from(l[j])));
                        d.push(dy);
                    }
                    let mut g = vec![0f32; cols];
                    want += row_loss(LossKind::CrossEntropy, &r, i, &mut g, 0.25);
                    for j in 0..cols {
                        let a = f64::from(fast[i * cols + j]);
                        let b = f64::from(g[j]) * d[j];
                        assert!((a - b).abs() < 1e-6, "{act:?} row {i} col {j}: {a} vs {b}");
                    }
                }
                assert!((got - want * 0.25).abs() < 1e-5, "{act:?}: {got} vs {}", want * 0.25);
            }
        }
    }

    #[test]
    fn distinct_columns_give_the_loss_and_summed_gradients_of_the_repeated_ones() {
        // 3 rows, 11 columns over 6 distinct items: targets 0, 2, 0 (rows 0
        // and 2 share theirs), samples repeating items and a target.
        let col: [u32; 11] = [0, 1, 0, 2, 3, 2, 4, 5, 5, 0, 3];
        let (rows, n_distinct) = (3usize, 6usize);
        let mut next = uniform_stream(99, 2.0);
        let scores: Vec<f32> = (0..rows * n_distinct).map(|_| next()).collect();
        let bias: Vec<f32> = (0..n_distinct).map(|_| next() * 0.3).collect();
        // log popularity is a property of the item: equal on repeated columns
        let item_lp: Vec<f32> = (0..n_distinct).map(|_| next().abs()).collect();
        let lp: Vec<f32> = col.iter().map(|&c| item_lp[c as usize]).collect();
        let kinds = [LossKind::CrossEntropy, LossKind::Top1, LossKind::Bpr, LossKind::Top1Max, LossKind::BprMax(0.5)];
        for kind in kinds {
            for act in [Act::Linear, Act::Tanh, Act::Elu(0.5)] {
                for log_pop in [None, Some((lp.as_slice(), 0.7f32))] {
                    let spec = LossSpec { kind, act, log_pop, batch_size: 4 };
                    // reference: every column expanded, gradients summed per item afterwards
                    let full: Vec<f32> = (0..rows)
                        .flat_map(|i| col.iter().map(move |&c| (i, c)))
                        .map(|(i, c)| scores[i * n_distinct + c as usize])
                        .collect();
                    let full_bias: Vec<f32> = col.iter().map(|&c| bias[c as usize]).collect();
                    let mut full_grad = vec![0f32; rows * col.len()];
                    let want = sampled_loss_cpu(&spec, &full, &full_bias, col.len(), &mut full_grad).unwrap();
                    let mut want_grad = vec![0f64; rows * n_distinct];
                    for (k, &g) in full_grad.iter().enumerate() {
                        want_grad[k / col.len() * n_distinct + col[k % col.len()] as usize] += f64::from(g);
                    }
                    let mut grad = vec![f32::NAN; rows * n_distinct];
                    let got = sampled_loss_distinct_cpu(&spec, &scores, &bias, &col, &mut grad).unwrap();
                    assert!((got - want).abs() <= 1e-6 * (1.0 + want.abs()), "{kind:?} {act:?}: loss {got} vs {want}");
                    for (k, (&a, &b)) in grad.iter().zip(&want_grad).enumerate() {
                        assert!(
                            (f64::from(a) - b).abs() <= 1e-6,
                            "{kind:?} {act:?} logq {}: grad[{k}] {a} vs {b}",
                            log_pop.is_some()
                        );
                    }
                }
            }
        }
        let spec = LossSpec { kind: LossKind::CrossEntropy, act: Act::Linear, log_pop: None, batch_size: 4 };
        let mut grad = vec![0f32; rows * n_distinct];
        let err = sampled_loss_distinct_cpu(&spec, &scores, &bias, &[0, 1, 6], &mut grad).unwrap_err().to_string();
        assert!(err.contains("distinct item 6, expected one below 6"), "{err}");
    }

    #[test]
    fn bad_inputs_are_errors_naming_what_was_expected() {
        let spec = LossSpec { kind: LossKind::CrossEntropy, act: Act::Linear, log_pop: None, batch_size: 2 };
        let scores = [0.1f32, 0.2, 0.3, 0.4, 0.5, 0.6];
        let mut grad = [0f32; 6];
        assert!(sampled_loss_cpu(&spec, &scores, &[0.0; 3], 3, &mut grad).unwrap().is_finite());
        let err = |spec: &LossSpec<'_>, bias: &[f32], cols: usize, grad: &mut [f32]| {
            sampled_loss_cpu(spec, &scores, bias, cols, grad).unwrap_err().to_string()
        };
        assert!(err(&spec, &[0.0; 2], 3, &mut grad).contains("found 2 biases, expected 3"));
        assert!(err(&spec, &[0.0; 1], 1, &mut grad).contains("expected [B, B + S]"));
        assert!(err(&spec, &[0.0; 3], 3, &mut [0f32; 5]).contains("gradient buffer of 5"));
        let zero = LossSpec { batch_size: 0, ..spec };
        assert!(err(&zero, &[0.0; 3], 3, &mut grad).contains("batch size 0"));
        let lp = [0.0f32; 2];
        let logq = LossSpec { log_pop: Some((&lp, 1.0)), ..spec };
        assert!(err(&logq, &[0.0; 3], 3, &mut grad).contains("found 2 log popularities, expected 3"));
    }
}
