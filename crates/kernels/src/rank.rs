//! Full-ranking rank counts without a batch × catalogue score matrix: for
//! each batch row `b` (state `h_b`, target `t_b`) and the item table `W`
//! `[N, H]` with biases, the number of items `j ≥ 1` (id 0 is padding),
//! `j ≠ t_b`, scoring strictly above the target (or NaN) and exactly equal
//! to it, where `score_j = Σ_k h_bk·W_jk + bias_j` is summed in order of `k`
//! with fused multiply-adds — on the CPU (this reference) and in
//! `cuda/rank.cu` alike, so the target's own score is bit-equal wherever it
//! is computed. The rank then follows from `seqrec_eval::rank_from_counts`.
//!
//! Catalogues of millions fit: the GPU kernel keeps a tile of states in
//! shared memory and walks the table in item blocks.

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::optim::f32_slice;

/// Counts for one batch row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RankCounts {
    /// Items scoring strictly above the target, or NaN.
    pub greater: u32,
    /// Items scoring exactly the target's score (the target excluded).
    pub equal: u32,
    /// The target's score.
    pub target_score: f32,
}

/// `Σ_k a_k·w_k` in order of `k`, one fused multiply-add per term.
#[inline]
fn dot_in_order(a: &[f32], w: &[f32]) -> f32 {
    a.iter().zip(w).fold(0f32, |s, (&x, &y)| x.mul_add(y, s))
}

/// CPU reference over host slices: `states` `[B, width]`, `table` `[N, width]`, `bias` `[N]`.
///
/// # Errors
/// A target outside `1..N` or slices of other sizes.
pub fn rank_counts_cpu(
    states: &[f32],
    table: &[f32],
    bias: &[f32],
    targets: &[u32],
    width: usize,
) -> Result<Vec<RankCounts>> {
    let n_items = bias.len();
    if width == 0 || states.len() != targets.len() * width || table.len() != n_items * width {
        bail!(
            "rank counts: found {} state values, {} table values and {n_items} biases for {} targets of width {width}",
            states.len(),
            table.len(),
            targets.len()
        );
    }
    check_targets(targets, n_items)?;
    Ok(targets
        .par_iter()
        .enumerate()
        .map(|(b, &t)| {
            let h = &states[b * width..(b + 1) * width];
            let score = |j: usize| dot_in_order(h, &table[j * width..(j + 1) * width]) + bias[j];
            let ts = score(t as usize);
            let (mut greater, mut equal) = (0u32, 0u32);
            for j in (1..n_items).filter(|&j| j != t as usize) {
                let s = score(j);
                if s > ts || s.is_nan() {
                    greater += 1;
                } else if s == ts {
                    equal += 1;
                }
            }
            RankCounts { greater, equal, target_score: ts }
        })
        .collect())
}

/// Every target must be an item id `1..n_items` (0 is padding).
fn check_targets(targets: &[u32], n_items: usize) -> Result<()> {
    if let Some(&t) = targets.iter().find(|&&t| t == 0 || t as usize >= n_items) {
        bail!("rank counts: target id {t}, expected 1..{n_items}");
    }
    Ok(())
}

/// Rank counts on the tensors' device: `states` `[B, H]`, `table` `[N, H]`,
/// `bias` `N` values, one target per row (host ids).
///
/// # Errors
/// As [`rank_counts_cpu`]; tensors on different devices; a device without the op.
pub fn rank_counts(states: &Tensor, table: &Tensor, bias: &Tensor, targets: &[u32]) -> Result<Vec<RankCounts>> {
    if targets.is_empty() {
        // nothing to count (and no zero-length device buffers)
        return Ok(Vec::new());
    }
    let (states, table, bias) = (states.contiguous()?, table.contiguous()?, bias.flatten_all()?.contiguous()?);
    let op = RankOp { targets, scores: Default::default() };
    let counts = states.apply_op3_no_bwd(&table, &bias, &op)?.to_vec2::<u32>()?;
    let scores = op.scores.into_inner().map_err(|_| candle_core::Error::Msg("rank counts: poisoned".into()))?;
    Ok(counts[0]
        .iter()
        .zip(&counts[1])
        .zip(scores)
        .map(|((&greater, &equal), target_score)| RankCounts { greater, equal, target_score })
        .collect())
}

/// Output `[2, B]` u32 (greater; equal); the target scores kept aside.
#[derive(Debug)]
struct RankOp<'a> {
    targets: &'a [u32],
    scores: std::sync::Mutex<Vec<f32>>,
}

fn dims(ls: [&Layout; 3], targets: usize) -> Result<(usize, usize)> {
    let (&[rows, width], &[n_items, w2]) = (ls[0].dims(), ls[1].dims()) else {
        bail!("rank counts: expected states [B, H] and a table [N, H], found {:?} and {:?}", ls[0].dims(), ls[1].dims())
    };
    if width == 0 || w2 != width || ls[2].shape().elem_count() != n_items || rows != targets {
        bail!(
            "rank counts: states {:?}, table {:?}, {} biases and {targets} targets do not fit",
            ls[0].dims(),
            ls[1].dims(),
            ls[2].shape().elem_count()
        );
    }
    Ok((width, n_items))
}

impl CustomOp3 for RankOp<'_> {
    fn name(&self) -> &'static str {
        "rank-counts"
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
        let (width, _) = dims([l1, l2, l3], self.targets.len())?;
        let what = self.name();
        let (states, table, bias) = (f32_slice(s1, l1, what)?, f32_slice(s2, l2, what)?, f32_slice(s3, l3, what)?);
        let counts = rank_counts_cpu(states, table, bias, self.targets, width)?;
        let rows = counts.len();
        let mut out: Vec<u32> = counts.iter().map(|c| c.greater).collect();
        out.extend(counts.iter().map(|c| c.equal));
        *self.scores.lock().map_err(|_| candle_core::Error::Msg("rank counts: poisoned".into()))? =
            counts.iter().map(|c| c.target_score).collect();
        Ok((CpuStorage::U32(out), Shape::from((2, rows))))
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
        let (width, n_items) = dims([l1, l2, l3], self.targets.len())?;
        check_targets(self.targets, n_items)?;
        let (out, scores) = cuda::run([(s1, l1), (s2, l2), (s3, l3)], self.targets, width, n_items)?;
        *self.scores.lock().map_err(|_| candle_core::Error::Msg("rank counts: poisoned".into()))? = scores;
        Ok((out, Shape::from((2, self.targets.len()))))
    }
}

/// The CUDA side (`cuda/rank.cu`).
#[cfg(feature = "cuda")]
mod cuda {
    use crate::cuda::{func, launch, upload_u32, view, Module};
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
    use candle_core::{bail, CudaStorage, Layout, Result};

    /// Batch rows staged per pass (`ROW_TILE` of `rank.cu`).
    const ROW_TILE: usize = 8;
    /// Shared memory a block may use without opting in.
    const SHARED_LIMIT: usize = 48 * 1024;

    pub(super) fn run(
        inputs: [(&CudaStorage, &Layout); 3],
        targets: &[u32],
        width: usize,
        n_items: usize,
    ) -> Result<(CudaStorage, Vec<f32>)> {
        let shared = ROW_TILE * width * 4;
        if shared > SHARED_LIMIT {
            bail!("rank counts on CUDA: states of width {width}, expected at most {}", SHARED_LIMIT / (4 * ROW_TILE));
        }
        let dev = inputs[0].0.device().clone();
        let states = view(inputs[0].0, inputs[0].1, "states")?;
        let table = view(inputs[1].0, inputs[1].1, "table")?;
        let bias = view(inputs[2].0, inputs[2].1, "bias")?;
        let rows = targets.len();
        let t = upload_u32(&dev, targets)?;
        let mut tscore = dev.alloc_zeros::<f32>(rows.max(1))?;
        let mut counts = dev.alloc_zeros::<u32>((2 * rows).max(1))?;
        let (rows32, width32, n32) = (rows as u32, width as u32, n_items as u32);
        let stream = dev.cuda_stream();
        let f = func(&dev, Module::Rank, "target_scores")?;
        let mut b = stream.launch_builder(&f);
        // (const float* states, const float* table, const float* bias, const unsigned* targets,
        //  unsigned rows, unsigned width, float* out)
        b.arg(&states).arg(&table).arg(&bias).arg(&t).arg(&rows32).arg(&width32).arg(&mut tscore);
        launch(
            b,
            LaunchConfig { grid_dim: (rows32.div_ceil(128).max(1), 1, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 },
        )?;
        let f = func(&dev, Module::Rank, "rank_counts")?;
        let mut b = stream.launch_builder(&f);
        // (const float* states, const float* table, const float* bias, const unsigned* targets,
        //  const float* target_score, unsigned rows, unsigned width, unsigned n_items, unsigned* counts)
        b.arg(&states).arg(&table).arg(&bias).arg(&t).arg(&tscore).arg(&rows32).arg(&width32).arg(&n32);
        b.arg(&mut counts);
        let blocks = n32.div_ceil(256).clamp(1, 8192);
        launch(b, LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: shared as u32 })?;
        let scores = dev.clone_dtoh(&tscore)?;
        Ok((CudaStorage::wrap_cuda_slice(counts, dev), scores[..rows].to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Counts from the scores written out in f64 agree with the fused
    /// counts wherever no score is within f32 rounding of the target's.
    #[test]
    fn counts_match_a_score_matrix_and_ties_are_counted() {
        let (rows, n, width) = (4usize, 30usize, 6usize);
        let mut x = 7u64;
        let mut next = || {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        let states: Vec<f32> = (0..rows * width).map(|_| next()).collect();
        let mut table: Vec<f32> = (0..n * width).map(|_| next()).collect();
        let mut bias: Vec<f32> = (0..n).map(|_| next() * 0.1).collect();
        // items 20 and 21 copy item 5 exactly: ties with target 5.
        for j in [20usize, 21] {
            let row: Vec<f32> = table[5 * width..6 * width].to_vec();
            table[j * width..(j + 1) * width].copy_from_slice(&row);
            bias[j] = bias[5];
        }
        let targets = [5u32, 1, 29, 12];
        let got = rank_counts_cpu(&states, &table, &bias, &targets, width).unwrap();
        for (b, (&t, c)) in targets.iter().zip(&got).enumerate() {
            let score = |j: usize| {
                (0..width).map(|k| f64::from(states[b * width + k]) * f64::from(table[j * width + k])).sum::<f64>()
                    + f64::from(bias[j])
            };
            let ts = score(t as usize);
            let greater = (1..n).filter(|&j| j != t as usize && score(j) > ts + 1e-5).count();
            let maybe = (1..n).filter(|&j| j != t as usize && (score(j) - ts).abs() <= 1e-5).count();
            assert!(c.greater as usize >= greater && (c.greater + c.equal) as usize <= greater + maybe, "row {b}");
            assert!((f64::from(c.target_score) - ts).abs() < 1e-5);
        }
        assert_eq!(got[0].equal, 2, "the two copies of the target tie with it");
        // the tensor op on the CPU gives the same counts.
        let dev = Device::Cpu;
        let ts = Tensor::from_vec(states, (rows, width), &dev).unwrap();
        let tt = Tensor::from_vec(table, (n, width), &dev).unwrap();
        let tb = Tensor::from_vec(bias, n, &dev).unwrap();
        assert_eq!(rank_counts(&ts, &tt, &tb, &targets).unwrap(), got);
    }

    #[test]
    fn padding_and_out_of_range_targets_are_errors() {
        let err = rank_counts_cpu(&[0.0; 2], &[0.0; 3], &[0.0; 3], &[3, 1], 1).unwrap_err();
        assert!(err.to_string().contains("target id 3, expected 1..3"), "{err}");
        let err = rank_counts_cpu(&[0.0; 1], &[0.0; 3], &[0.0; 3], &[0], 1).unwrap_err();
        assert!(err.to_string().contains("target id 0"), "{err}");
    }
}
