//! The element-wise parts of a GRU step in GRU4Rec's original form (reset
//! applied to the state before the recurrent product), fused into four ops
//! around the three matrix products. With `vx = x·Wx + b` laid out
//! `[c | r | z]` and `vrz = h·Wrz` laid out `[r | z]`, per row:
//!
//! - forward A: `r = σ(vx_r + vrz_r)`, `z = σ(vx_z + vrz_z)`, `rh = r ⊙ h`
//!   → `gates = [r | z | rh | h]` (then `u = rh·Wh`);
//! - forward B: `c = tanh(vx_c + u)`, `out = h + z ⊙ (c − h)` → `[c | out]`;
//! - backward B, from `d = ∂L/∂out`: `dac = d ⊙ z ⊙ (1 − c²)`,
//!   `daz = d ⊙ (c − h) ⊙ z(1 − z)` → `[dac | daz]` (then `d_rh = dac·Whᵀ`);
//! - backward A: `dar = d_rh ⊙ h ⊙ r(1 − r)`.
//!
//! The CPU implementations here are the reference of `cuda/gru.cu`; the
//! GRU4Rec model uses these ops on CUDA, where each of the ~15 generic
//! element-wise ops they replace is a kernel launch and a temporary.

use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::act::{sigmoid_f32, tanh_f32};
use crate::matmul::rows_per_task;
use crate::optim::f32_slice as slice;

/// Which fused stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    ForwardA,
    ForwardB,
    BackwardB,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::ForwardA => "gru-forward-a",
            Stage::ForwardB => "gru-forward-b",
            Stage::BackwardB => "gru-backward-b",
        }
    }

    /// (widths of the three inputs, width of the output), in units of `n`.
    fn widths(self) -> ([usize; 3], usize) {
        match self {
            Stage::ForwardA => ([3, 2, 1], 4),
            Stage::ForwardB => ([3, 1, 4], 2),
            Stage::BackwardB => ([1, 4, 2], 2),
        }
    }
}

/// Number of units `n` from the first input's `[rows, k·n]` shape, and the rows.
fn rows_units(stage_name: &str, l: &Layout, k: usize) -> Result<(usize, usize)> {
    let &[rows, w] = l.dims() else { bail!("{stage_name}: expected a matrix, found {:?}", l.dims()) };
    if w % k != 0 || w == 0 {
        bail!("{stage_name}: found width {w}, expected a positive multiple of {k}");
    }
    Ok((rows, w / k))
}

/// Checks that input `k` is `[rows, widths[k]·n]`.
fn check(what: &str, ls: [&Layout; 3], widths: [usize; 3], rows: usize, n: usize) -> Result<()> {
    for (k, (l, w)) in ls.iter().zip(widths).enumerate() {
        if l.dims() != [rows, w * n] {
            bail!("{what}: input {k} is {:?}, expected [{rows}, {}]", l.dims(), w * n);
        }
    }
    Ok(())
}

/// CPU reference of one stage over `rows` rows of `n` units.
fn stage_cpu(stage: Stage, a: &[f32], b: &[f32], c: &[f32], n: usize, out: &mut [f32]) {
    let (win, wout) = stage.widths();
    let per = rows_per_task(out.len() / (wout * n), wout * n);
    let task = |(t, o): (usize, &mut [f32])| {
        crate::simd::dispatch(|| {
            for (k, o) in o.chunks_mut(wout * n).enumerate() {
                let i = t * per + k;
                stage_row(stage, (&a[i * win[0] * n..], &b[i * win[1] * n..], &c[i * win[2] * n..]), n, o);
            }
        })
    };
    out.par_chunks_mut(per * wout * n).enumerate().for_each(task);
}

/// One row of a stage. Every operand is cut to `n` units first so that
/// the loops carry no bounds checks and vectorise.
#[inline(always)]
fn stage_row(stage: Stage, (a, b, c): (&[f32], &[f32], &[f32]), n: usize, o: &mut [f32]) {
    match stage {
        Stage::ForwardA => {
            let (vx_r, vx_z, vrz_r, vrz_z, h) = (&a[n..2 * n], &a[2 * n..3 * n], &b[..n], &b[n..2 * n], &c[..n]);
            let (o_r, rest) = o[..4 * n].split_at_mut(n);
            let (o_z, rest) = rest.split_at_mut(n);
            let (o_rh, o_h) = rest.split_at_mut(n);
            for u in 0..n {
                let r = sigmoid_f32(vx_r[u] + vrz_r[u]);
                let z = sigmoid_f32(vx_z[u] + vrz_z[u]);
                o_r[u] = r;
                o_z[u] = z;
                o_rh[u] = r * h[u];
                o_h[u] = h[u];
            }
        }
        Stage::ForwardB => {
            let (vx, uh, z, h) = (&a[..n], &b[..n], &c[n..2 * n], &c[3 * n..4 * n]);
            let (o_c, o_h) = o[..2 * n].split_at_mut(n);
            for u in 0..n {
                let cand = tanh_f32(vx[u] + uh[u]);
                o_c[u] = cand;
                o_h[u] = h[u] + z[u] * (cand - h[u]);
            }
        }
        Stage::BackwardB => {
            let (d, z, h, cand) = (&a[..n], &b[n..2 * n], &b[3 * n..4 * n], &c[..n]);
            let (o_c, o_z) = o[..2 * n].split_at_mut(n);
            for u in 0..n {
                let (z, cand) = (z[u], cand[u]);
                o_c[u] = d[u] * z * (1.0 - cand * cand);
                o_z[u] = d[u] * (cand - h[u]) * (z * (1.0 - z));
            }
        }
    }
}

/// CPU reference of backward A: `dar = d_rh ⊙ h ⊙ r(1 − r)`.
fn backward_a_cpu(d_rh: &[f32], gates: &[f32], n: usize, out: &mut [f32]) {
    let per = rows_per_task(out.len() / n, n);
    out.par_chunks_mut(per * n).enumerate().for_each(|(t, o)| {
        crate::simd::dispatch(|| {
            for (k, o) in o.chunks_mut(n).enumerate() {
                let i = t * per + k;
                let (g, d) = (&gates[i * 4 * n..(i + 1) * 4 * n], &d_rh[i * n..(i + 1) * n]);
                for u in 0..n {
                    let (r, h) = (g[u], g[3 * n + u]);
                    o[u] = d[u] * h * (r * (1.0 - r));
                }
            }
        })
    });
}

#[derive(Debug)]
struct Op3(Stage);

impl Op3 {
    /// `(rows, n, output width in units of n)` of the inputs, checked.
    fn shape(&self, ls: [&Layout; 3]) -> Result<(usize, usize, usize)> {
        let (win, wout) = self.0.widths();
        let (rows, n) = rows_units(self.0.name(), ls[0], win[0])?;
        check(self.0.name(), ls, win, rows, n)?;
        Ok((rows, n, wout))
    }
}

impl CustomOp3 for Op3 {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let what = self.name();
        let (rows, n, wout) = self.shape([l1, l2, l3])?;
        let mut out = vec![0f32; rows * wout * n];
        stage_cpu(self.0, slice(s1, l1, what)?, slice(s2, l2, what)?, slice(s3, l3, what)?, n, &mut out);
        Ok((CpuStorage::F32(out), Shape::from((rows, wout * n))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (rows, n, wout) = self.shape([l1, l2, l3])?;
        let kernel = match self.0 {
            Stage::ForwardA => "gru_forward_a",
            Stage::ForwardB => "gru_forward_b",
            Stage::BackwardB => "gru_backward_b",
        };
        let out = cuda::run(kernel, [(s1, l1), (s2, l2), (s3, l3)].as_slice(), rows, n, wout)?;
        Ok((out, Shape::from((rows, wout * n))))
    }
}

#[derive(Debug)]
struct BackwardA;

impl BackwardA {
    /// `(rows, n)` of `d_rh` `[rows, n]` and `gates` `[rows, 4n]`, checked.
    fn shape(l1: &Layout, l2: &Layout) -> Result<(usize, usize)> {
        let what = "gru-backward-a";
        let (rows, n) = rows_units(what, l1, 1)?;
        check(what, [l1, l2, l1], [1, 4, 1], rows, n)?;
        Ok((rows, n))
    }
}

impl CustomOp2 for BackwardA {
    fn name(&self) -> &'static str {
        "gru-backward-a"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let what = self.name();
        let (rows, n) = Self::shape(l1, l2)?;
        let mut out = vec![0f32; rows * n];
        backward_a_cpu(slice(s1, l1, what)?, slice(s2, l2, what)?, n, &mut out);
        Ok((CpuStorage::F32(out), Shape::from((rows, n))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (rows, n) = Self::shape(l1, l2)?;
        let out = cuda::run("gru_backward_a", [(s1, l1), (s2, l2)].as_slice(), rows, n, 1)?;
        Ok((out, Shape::from((rows, n))))
    }
}

/// Forward A: `(vx [B, 3n], vrz [B, 2n], h [B, n])` → `gates [B, 4n] = [r | z | r⊙h | h]`.
///
/// # Errors
/// Shapes that do not fit, non-f32 tensors, or a device without the op.
pub fn forward_a(vx: &Tensor, vrz: &Tensor, h: &Tensor) -> Result<Tensor> {
    vx.contiguous()?.apply_op3_no_bwd(&vrz.contiguous()?, &h.contiguous()?, &Op3(Stage::ForwardA))
}

/// Forward B: `(vx [B, 3n], u = rh·Wh [B, n], gates [B, 4n])` → `[c | out] [B, 2n]`.
///
/// # Errors
/// As [`forward_a`].
pub fn forward_b(vx: &Tensor, u: &Tensor, gates: &Tensor) -> Result<Tensor> {
    vx.contiguous()?.apply_op3_no_bwd(&u.contiguous()?, &gates.contiguous()?, &Op3(Stage::ForwardB))
}

/// Backward B: `(d = ∂L/∂out [B, n], gates [B, 4n], [c | out] [B, 2n])` → `[dac | daz] [B, 2n]`.
///
/// # Errors
/// As [`forward_a`].
pub fn backward_b(d: &Tensor, gates: &Tensor, c_out: &Tensor) -> Result<Tensor> {
    d.contiguous()?.apply_op3_no_bwd(&gates.contiguous()?, &c_out.contiguous()?, &Op3(Stage::BackwardB))
}

/// Backward A: `(d_rh [B, n], gates [B, 4n])` → `dar [B, n]`.
///
/// # Errors
/// As [`forward_a`].
pub fn backward_a(d_rh: &Tensor, gates: &Tensor) -> Result<Tensor> {
    d_rh.contiguous()?.apply_op2_no_bwd(&gates.contiguous()?, &BackwardA)
}

/// The CUDA side (`cuda/gru.cu`).
#[cfg(feature = "cuda")]
mod cuda {
    use crate::cuda::{elementwise, func, launch, storage, view, Module};
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
    use candle_core::{CudaStorage, Layout, Result};

    /// Runs `kernel(inputs…, out, rows, n)` (the signatures of `gru.cu`) into a new `[rows, wout·n]` buffer.
    pub(super) fn run(
        kernel: &str,
        inputs: &[(&CudaStorage, &Layout)],
        rows: usize,
        n: usize,
        wout: usize,
    ) -> Result<CudaStorage> {
        if rows * n == 0 {
            candle_core::bail!("{kernel}: found {rows} rows of {n} units, expected a non-empty batch");
        }
        let dev = inputs[0].0.device().clone();
        let views = inputs.iter().map(|(s, l)| view(s, l, kernel)).collect::<Result<Vec<_>>>()?;
        let mut out = dev.alloc_zeros::<f32>(rows * wout * n)?;
        let f = func(&dev, Module::Gru, kernel)?;
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
        for v in &views {
            b.arg(v);
        }
        let (rows32, n32) = (rows as u32, n as u32);
        b.arg(&mut out).arg(&rows32).arg(&n32);
        launch(b, elementwise(rows * n))?;
        Ok(storage(out, &dev))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn stages_compiled_for_avx512_are_bit_identical_to_the_baseline() {
        let n = 77;
        let (a, b, c) = (values(4 * n, 1), values(4 * n, 2), values(4 * n, 3));
        for stage in [Stage::ForwardA, Stage::ForwardB, Stage::BackwardB] {
            let run = |wide: bool| {
                let mut o = vec![0f32; 4 * n];
                let row = || stage_row(stage, (&a, &b, &c), n, &mut o);
                if wide {
                    crate::simd::dispatch(row)
                } else {
                    crate::simd::baseline(row)
                }
                o.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            };
            assert_eq!(run(true), run(false), "{}", stage.name());
        }
    }

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ((x >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect()
    }

    fn t(v: Vec<f32>, rows: usize, cols: usize) -> Tensor {
        Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
    }

    fn close(a: &Tensor, b: &Tensor, tol: f32, what: &str) {
        let (a, b) =
            (a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        assert_eq!(a.len(), b.len(), "{what}");
        for (k, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{what} element {k}: {x} vs {y}");
        }
    }

    /// The fused stages equal the GRU step written with candle's generic ops,
    /// forward and backward.
    #[test]
    fn fused_stages_equal_the_generic_gru_step() {
        // 64 × 300: every stage splits its rows between the threads.
        for (rows, n) in [(5usize, 7usize), (64, 300)] {
            fused_stages_equal_the_generic_gru_step_at(rows, n);
        }
    }

    fn fused_stages_equal_the_generic_gru_step_at(rows: usize, n: usize) {
        let vx = t(values(rows * 3 * n, 1), rows, 3 * n);
        let vrz = t(values(rows * 2 * n, 2), rows, 2 * n);
        let h = t(values(rows * n, 3), rows, n);
        let wh = t(values(n * n, 4), n, n);
        let d = t(values(rows * n, 5), rows, n);
        // generic
        let sig = |x: Tensor| (x.neg().unwrap().exp().unwrap() + 1.0).unwrap().recip().unwrap();
        let r = sig((vx.narrow(1, n, n).unwrap() + vrz.narrow(1, 0, n).unwrap()).unwrap());
        let z = sig((vx.narrow(1, 2 * n, n).unwrap() + vrz.narrow(1, n, n).unwrap()).unwrap());
        let rh = (&r * &h).unwrap();
        let u = rh.matmul(&wh).unwrap();
        let c = (vx.narrow(1, 0, n).unwrap() + &u).unwrap().tanh().unwrap();
        let out = (&h + (&z * (&c - &h).unwrap()).unwrap()).unwrap();
        let dac = ((&d * &z).unwrap() * (1.0 - c.sqr().unwrap()).unwrap()).unwrap();
        let daz = ((&d * (&c - &h).unwrap()).unwrap() * (&z * (1.0 - &z).unwrap()).unwrap()).unwrap();
        let d_rh = dac.matmul(&wh.t().unwrap()).unwrap();
        let dar = ((&d_rh * &h).unwrap() * (&r * (1.0 - &r).unwrap()).unwrap()).unwrap();
        // fused
        let gates = forward_a(&vx, &vrz, &h).unwrap();
        close(&gates.narrow(1, 0, n).unwrap(), &r, 1e-6, "r");
        close(&gates.narrow(1, n, n).unwrap(), &z, 1e-6, "z");
        close(&gates.narrow(1, 2 * n, n).unwrap(), &rh, 1e-6, "rh");
        close(&gates.narrow(1, 3 * n, n).unwrap(), &h, 0.0, "h");
        let u2 = gates.narrow(1, 2 * n, n).unwrap().matmul(&wh).unwrap();
        let co = forward_b(&vx, &u2, &gates).unwrap();
        close(&co.narrow(1, 0, n).unwrap(), &c, 1e-5, "c");
        close(&co.narrow(1, n, n).unwrap(), &out, 1e-5, "out");
        let bb = backward_b(&d, &gates, &co).unwrap();
        close(&bb.narrow(1, 0, n).unwrap(), &dac, 1e-5, "dac");
        close(&bb.narrow(1, n, n).unwrap(), &daz, 1e-5, "daz");
        let d_rh2 = bb.narrow(1, 0, n).unwrap().matmul(&wh.t().unwrap()).unwrap();
        close(&backward_a(&d_rh2, &gates).unwrap(), &dar, 1e-5, "dar");
    }

    #[test]
    fn shapes_that_do_not_fit_are_errors() {
        let vx = t(values(2 * 9, 1), 2, 9);
        let err = forward_a(&vx, &t(values(2 * 5, 2), 2, 5), &t(values(6, 3), 2, 3)).unwrap_err();
        assert!(err.to_string().contains("input 1 is [2, 5], expected [2, 6]"), "{err}");
    }
}
