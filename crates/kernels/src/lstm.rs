//! A whole LSTM sequence as one op, forward and backward written by hand.
//!
//! Built from candle's generic ops an LSTM costs a dozen tensor ops per
//! step forward and more backward, each a pass over `[B, 4H]` values with
//! its own allocation; this op runs the recurrence in one loop per step
//! (one matrix product for `h · W_hhᵀ`, the gates fused) and its backward
//! recomputes the gates of all steps with a single matrix product, then
//! walks the steps back with one product per step.
//!
//! Inputs: `xw` `[L, B, 4H]`, the input pre-activations of every step
//! (`x · W_ihᵀ + b`, computed outside so that candle differentiates them);
//! `w_hh` `[4H, H]`; `hc0` `[B, 2H]`, the initial `h ‖ c`. Gate blocks are in
//! the order `i, f, o, g`:
//! `i, f, o = σ(a)`, `g = tanh(a)`, `c' = f ⊙ c + i ⊙ g`, `h' = o ⊙ tanh(c')`.
//! Output `[L, B, 2H]`: every step's `h ‖ c`.

use candle_core::{bail, CpuStorage, CustomOp3, Device, Layout, Result, Shape, Tensor};

/// The LSTM sequence op (see the module documentation).
#[derive(Debug, Clone, Copy, Default)]
pub struct LstmSeq;

/// Runs an LSTM over `xw` from `hc0`; see the module documentation.
///
/// # Errors
/// Shapes that do not fit, or a failing op.
pub fn lstm_seq(xw: &Tensor, w_hh: &Tensor, hc0: &Tensor) -> Result<Tensor> {
    if !xw.device().is_cpu() {
        return lstm_seq_generic(xw, w_hh, hc0);
    }
    xw.contiguous()?.apply_op3(&w_hh.contiguous()?, &hc0.contiguous()?, LstmSeq)
}

/// The same LSTM from candle's generic ops, one step at a time (autograd
/// through them): the path of devices without the fused op (CUDA), and the
/// reference the fused op is tested against.
///
/// # Errors
/// Shapes that do not fit, or a failing op.
pub fn lstm_seq_generic(xw: &Tensor, w: &Tensor, hc0: &Tensor) -> Result<Tensor> {
    let (steps, _, h4) = xw.dims3()?;
    let hd = h4 / 4;
    let (mut h, mut c) = (hc0.narrow(1, 0, hd)?, hc0.narrow(1, hd, hd)?);
    let mut outs = Vec::new();
    let sig = |x: &Tensor| -> Result<Tensor> { (x.neg()?.exp()? + 1.0)?.recip() };
    for t in 0..steps {
        let a = (xw.get(t)? + h.matmul(&w.t()?)?)?;
        let (i, f, o) = (sig(&a.narrow(1, 0, hd)?)?, sig(&a.narrow(1, hd, hd)?)?, sig(&a.narrow(1, 2 * hd, hd)?)?);
        let g = a.narrow(1, 3 * hd, hd)?.tanh()?;
        c = ((f * &c)? + (i * g)?)?;
        h = (o * c.tanh()?)?;
        outs.push(Tensor::cat(&[&h, &c], 1)?);
    }
    Tensor::stack(&outs, 0)
}

fn contiguous<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else { bail!("lstm: expected f32 {what}") };
    let Some((a, b)) = l.contiguous_offsets() else { bail!("lstm: expected contiguous {what}") };
    Ok(&v[a..b])
}

use crate::act::{sigmoid_f32 as sigmoid, tanh_f32 as tanh};

/// `a` (`m × k`, row-major) times the tensor `b` (`k × n`).
fn matmul(a: &[f32], m: usize, k: usize, b: &Tensor) -> Result<Vec<f32>> {
    Tensor::from_slice(a, (m, k), &Device::Cpu)?.matmul(b)?.flatten_all()?.to_vec1::<f32>()
}

/// `(L, B, H)` from the inputs' layouts.
fn dims(xl: &Layout, wl: &Layout, hl: &Layout) -> Result<(usize, usize, usize)> {
    let &[l, b, h4] = xl.dims() else { bail!("lstm: expected xw of [L, B, 4H], found {:?}", xl.dims()) };
    let h = h4 / 4;
    if h == 0 || h4 % 4 != 0 {
        bail!("lstm: xw's last dimension {h4} is not 4H")
    }
    if wl.dims() != [4 * h, h] {
        bail!("lstm: expected w_hh of [{}, {h}], found {:?}", 4 * h, wl.dims())
    }
    if hl.dims() != [b, 2 * h] {
        bail!("lstm: expected hc0 of [{b}, {}], found {:?}", 2 * h, hl.dims())
    }
    Ok((l, b, h))
}

impl CustomOp3 for LstmSeq {
    fn name(&self) -> &'static str {
        "lstm-seq"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        hs: &CpuStorage,
        hl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (steps, rows, hd) = dims(xl, wl, hl)?;
        let x = contiguous(xs, xl, "xw")?;
        let w = contiguous(ws, wl, "w_hh")?;
        let hc0 = contiguous(hs, hl, "hc0")?;
        let wt = Tensor::from_slice(w, (4 * hd, hd), &Device::Cpu)?.t()?;
        let mut h: Vec<f32> = hc0.chunks(2 * hd).flat_map(|r| r[..hd].to_vec()).collect();
        let mut c: Vec<f32> = hc0.chunks(2 * hd).flat_map(|r| r[hd..].to_vec()).collect();
        let mut out = vec![0f32; steps * rows * 2 * hd];
        for t in 0..steps {
            let rec = matmul(&h, rows, hd, &wt)?;
            for b in 0..rows {
                let a = &x[(t * rows + b) * 4 * hd..(t * rows + b + 1) * 4 * hd];
                let r = &rec[b * 4 * hd..(b + 1) * 4 * hd];
                let o_row = &mut out[(t * rows + b) * 2 * hd..(t * rows + b + 1) * 2 * hd];
                for j in 0..hd {
                    let i = sigmoid(a[j] + r[j]);
                    let f = sigmoid(a[hd + j] + r[hd + j]);
                    let o = sigmoid(a[2 * hd + j] + r[2 * hd + j]);
                    let g = tanh(a[3 * hd + j] + r[3 * hd + j]);
                    let cn = f * c[b * hd + j] + i * g;
                    let hn = o * tanh(cn);
                    c[b * hd + j] = cn;
                    h[b * hd + j] = hn;
                    o_row[j] = hn;
                    o_row[hd + j] = cn;
                }
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((steps, rows, 2 * hd))))
    }

    fn bwd(
        &self,
        xw: &Tensor,
        w_hh: &Tensor,
        hc0: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (steps, rows, h4) = xw.dims3()?;
        let hd = h4 / 4;
        let x = xw.flatten_all()?.to_vec1::<f32>()?;
        let out = res.flatten_all()?.to_vec1::<f32>()?;
        let grad = grad_res.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let hc0v = hc0.flatten_all()?.to_vec1::<f32>()?;
        // h and c entering each step: hc0 at step 0, else the previous step's output.
        let prev = |t: usize, b: usize| -> &[f32] {
            if t == 0 {
                &hc0v[b * 2 * hd..(b + 1) * 2 * hd]
            } else {
                &out[((t - 1) * rows + b) * 2 * hd..((t - 1) * rows + b + 1) * 2 * hd]
            }
        };
        let mut h_prev = Vec::with_capacity(steps * rows * hd);
        for t in 0..steps {
            for b in 0..rows {
                h_prev.extend_from_slice(&prev(t, b)[..hd]);
            }
        }
        let w = w_hh.contiguous()?;
        let rec = matmul(&h_prev, steps * rows, hd, &w.t()?)?;
        let mut dg = vec![0f32; steps * rows * 4 * hd];
        let (mut dh_next, mut dc_next) = (vec![0f32; rows * hd], vec![0f32; rows * hd]);
        for t in (0..steps).rev() {
            for b in 0..rows {
                let k = t * rows + b;
                let a = &x[k * 4 * hd..(k + 1) * 4 * hd];
                let r = &rec[k * 4 * hd..(k + 1) * 4 * hd];
                let c_prev = &prev(t, b)[hd..];
                let gr = &grad[k * 2 * hd..(k + 1) * 2 * hd];
                let o_row = &out[k * 2 * hd..(k + 1) * 2 * hd];
                let d = &mut dg[k * 4 * hd..(k + 1) * 4 * hd];
                for j in 0..hd {
                    let i = sigmoid(a[j] + r[j]);
                    let f = sigmoid(a[hd + j] + r[hd + j]);
                    let o = sigmoid(a[2 * hd + j] + r[2 * hd + j]);
                    let g = tanh(a[3 * hd + j] + r[3 * hd + j]);
                    let tc = tanh(o_row[hd + j]);
                    let dh = gr[j] + dh_next[b * hd + j];
                    let dc = gr[hd + j] + dc_next[b * hd + j] + dh * o * (1.0 - tc * tc);
                    d[j] = dc * g * i * (1.0 - i);
                    d[hd + j] = dc * c_prev[j] * f * (1.0 - f);
                    d[2 * hd + j] = dh * tc * o * (1.0 - o);
                    d[3 * hd + j] = dc * i * (1.0 - g * g);
                    dc_next[b * hd + j] = dc * f;
                }
            }
            dh_next = matmul(&dg[t * rows * 4 * hd..(t + 1) * rows * 4 * hd], rows, 4 * hd, &w)?;
        }
        let dev = xw.device();
        let dgt = Tensor::from_vec(dg, (steps * rows, 4 * hd), dev)?;
        let dw = dgt.t()?.matmul(&Tensor::from_vec(h_prev, (steps * rows, hd), dev)?)?;
        let dhc0: Vec<f32> = (0..rows)
            .flat_map(|b| dh_next[b * hd..(b + 1) * hd].iter().chain(&dc_next[b * hd..(b + 1) * hd]).copied())
            .collect();
        Ok((Some(dgt.reshape((steps, rows, 4 * hd))?), Some(dw), Some(Tensor::from_vec(dhc0, (rows, 2 * hd), dev)?)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Var;

    use super::*;

    /// The same recurrence from candle's generic ops, differentiated by autograd.
    fn var(n: usize, shape: &[usize], seed: u32, scale: f32) -> Var {
        let v: Vec<f32> =
            (0..n).map(|k| (((k as u32).wrapping_mul(2_654_435_761) ^ seed) % 1000) as f32 / 500.0 - 1.0).collect();
        let v: Vec<f32> = v.into_iter().map(|x| x * scale).collect();
        Var::from_tensor(&Tensor::from_vec(v, shape, &Device::Cpu).unwrap()).unwrap()
    }

    #[test]
    fn forward_and_gradients_match_autograd_of_the_generic_ops() {
        let (steps, rows, hd) = (5, 3, 4);
        let xw = var(steps * rows * 4 * hd, &[steps, rows, 4 * hd], 1, 1.5);
        let w = var(4 * hd * hd, &[4 * hd, hd], 2, 0.7);
        let hc0 = var(rows * 2 * hd, &[rows, 2 * hd], 3, 0.8);
        // A loss that weighs every h and c of every step differently.
        let weights = var(steps * rows * 2 * hd, &[steps, rows, 2 * hd], 4, 1.0).as_tensor().detach();
        let fused = lstm_seq(xw.as_tensor(), w.as_tensor(), hc0.as_tensor()).unwrap();
        let refd = lstm_seq_generic(xw.as_tensor(), w.as_tensor(), hc0.as_tensor()).unwrap();
        let diff = (&fused - &refd).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-5, "forward differs by {diff}");
        let g1 = (fused * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (refd * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, v) in [("xw", &xw), ("w_hh", &w), ("hc0", &hc0)] {
            let a = g1.get(v.as_tensor()).unwrap();
            let b = g2.get(v.as_tensor()).unwrap();
            let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(d < 1e-4 * scale.max(1.0), "{name}: gradient differs by {d} (scale {scale})");
        }
    }

    #[test]
    fn bad_shapes_are_named() {
        let x = Tensor::zeros((2, 3, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
        let w = Tensor::zeros((8, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        let h = Tensor::zeros((3, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        let e = lstm_seq(&x, &w, &h).unwrap_err().to_string();
        assert!(e.contains("expected w_hh of [8, 2]"), "{e}");
    }
}
