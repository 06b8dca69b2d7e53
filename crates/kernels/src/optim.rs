//! Optimiser updates as in-place candle ops, with the CPU implementation
//! written out here (the reference the CUDA kernels are tested against).
//!
//! Every parameter has a *state* tensor beside it holding two slots per
//! element (Adagrad: accumulated squared gradient and momentum; Adam: first
//! and second moment). For a `[rows, width]` table the state is
//! `[rows, 2 · width]`, row `r` being `[slot 0 of row r ‖ slot 1 of row r]`;
//! a dense parameter is one row. An update is two in-place ops (on the CPU
//! run as one fused pass, [`dense_fused_cpu`] and [`sparse_fused_cpu`], with
//! the same results):
//!
//! 1. [`StateUpdate`] reads the gradient and rewrites the state of the touched
//!    rows, leaving in slot 1 the step to add to the parameter (Adagrad's
//!    momentum is that step);
//! 2. [`ApplyStep`] adds the step to the touched rows of the parameter.
//!
//! Sparse updates take the gradient rows of a mini-batch and their row ids,
//! repeated ids included: the gradients of a repeated id are summed first and
//! the row is updated once, as the authors' `IndexedAdagradM` does after
//! coalescing. Rows not named are not read or written.
//!
//! Adagrad with momentum (GRU4Rec's optimiser; accumulator starting at 0, no
//! decay): `acc += g²; mom = μ·mom − lr·g/√(acc + ε); p += mom`.
//! Adam (`β1`, `β2`, bias-corrected at step `t`, lazy for sparse rows):
//! `m = β1·m + (1−β1)·g; v = β2·v + (1−β2)·g²;
//!  p −= lr·(m/(1−β1^t)) / (√(v/(1−β2^t)) + ε)`, written into slot 1's
//! place as the step is not stored: [`ApplyStep`] for Adam computes it.
//! AdamW (Loshchilov & Hutter) first decays the parameter, `p −= lr·wd·p`,
//! as PyTorch's `AdamW` does.

use candle_core::{bail, CpuStorage, InplaceOp2, Layout, Result, Tensor};
use rayon::prelude::*;

use crate::matmul::{gemm_strided, Strided};

/// The update rule and its settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rule {
    /// Adagrad with momentum (`momentum` 0: plain Adagrad).
    AdagradM {
        /// Learning rate.
        lr: f32,
        /// Momentum μ.
        momentum: f32,
        /// ε inside the square root.
        eps: f32,
    },
    /// Adam with bias correction at step `t` (1-based).
    Adam {
        /// Learning rate.
        lr: f32,
        /// Decay of the first moment.
        beta1: f32,
        /// Decay of the second moment.
        beta2: f32,
        /// ε added to the root of the second moment.
        eps: f32,
        /// Step number, from 1.
        t: u64,
        /// Decoupled weight decay (AdamW): `p −= lr·wd·p` before the step; 0 for Adam.
        weight_decay: f32,
    },
}

/// Rows of a sparse update: the distinct row ids in increasing order and, for
/// each, the positions of the gradient rows that name it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowGroups {
    /// Distinct row ids, increasing.
    pub rows: Vec<u32>,
    /// `sources[starts[g]..starts[g + 1]]` are the gradient rows of `rows[g]`.
    pub starts: Vec<usize>,
    /// Gradient row positions grouped by row id.
    pub sources: Vec<u32>,
}

impl RowGroups {
    /// Groups the (possibly repeated) row ids of a sparse gradient.
    pub fn new(ids: &[u32]) -> Self {
        let mut groups = RowGroups { rows: Vec::new(), starts: Vec::new(), sources: positions_by_id(ids) };
        for (k, &s) in groups.sources.iter().enumerate() {
            let id = ids[s as usize];
            if groups.rows.last() != Some(&id) {
                groups.rows.push(id);
                groups.starts.push(k);
            }
        }
        groups.starts.push(groups.sources.len());
        groups
    }

    /// The grouping of `ids[offset..]` when `self` groups `ids`: equal to
    /// `RowGroups::new(&ids[offset..])`, found in one pass instead of a sort
    /// (GRU4Rec's bias rows are the tail of its output table's rows).
    pub fn suffix(&self, offset: usize) -> Self {
        let mut out = RowGroups { rows: Vec::new(), starts: Vec::new(), sources: Vec::new() };
        for (g, &row) in self.rows.iter().enumerate() {
            let before = out.sources.len();
            let mine = &self.sources[self.starts[g]..self.starts[g + 1]];
            out.sources.extend(mine.iter().filter_map(|&s| (s as usize).checked_sub(offset).map(|s| s as u32)));
            if out.sources.len() > before {
                out.rows.push(row);
                out.starts.push(before);
            }
        }
        out.starts.push(out.sources.len());
        out
    }

    /// Number of distinct rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True when no row is touched.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    fn check(&self, n_rows: usize, n_grad_rows: usize, what: &str) -> Result<()> {
        // The fields are public: a hand-built grouping must still be one the
        // updates can trust (each row once, increasing; every group non-empty).
        if self.starts.len() != self.rows.len() + 1
            || self.starts.first() != Some(&0)
            || self.starts.last() != Some(&self.sources.len())
            || self.starts.windows(2).any(|w| w[0] >= w[1])
        {
            bail!("{what}: row groups whose starts do not split the sources into one non-empty group per row");
        }
        if self.rows.windows(2).any(|w| w[0] >= w[1]) {
            bail!("{what}: row groups whose row ids are not strictly increasing");
        }
        if let Some(&last) = self.rows.last() {
            if last as usize >= n_rows {
                bail!("{what}: row id {last} outside a table of {n_rows} rows");
            }
        }
        if self.sources.iter().any(|&s| s as usize >= n_grad_rows) {
            bail!("{what}: gradient row out of range (the gradient has {n_grad_rows} rows)");
        }
        Ok(())
    }
}

/// The positions of `ids` ordered by id, equal ids by position: a stable
/// radix sort of the positions on the ids' bytes (two passes below 65,536
/// ids). GRU4Rec groups ≈ 2,100 ids every step on one thread: the update's
/// preamble took 37 µs with an integer sort of `(id, position)` keys, 29 µs
/// with this.
fn positions_by_id(ids: &[u32]) -> Vec<u32> {
    let max = ids.iter().copied().max().unwrap_or(0);
    let passes = (u32::BITS - max.leading_zeros()).div_ceil(8).max(1);
    let mut order: Vec<u32> = (0..ids.len() as u32).collect();
    let mut next = vec![0u32; ids.len()];
    for pass in 0..passes {
        let digit = |i: u32| ((ids[i as usize] >> (8 * pass)) & 0xff) as usize;
        let mut at = [0usize; 257];
        for &i in &order {
            at[digit(i) + 1] += 1;
        }
        for d in 0..256 {
            at[d + 1] += at[d];
        }
        for &i in &order {
            let d = digit(i);
            next[at[d]] = i;
            at[d] += 1;
        }
        std::mem::swap(&mut order, &mut next);
    }
    order
}

/// Splits `data` (rows of `width`) into the mutable rows named by increasing `rows`.
fn touched_rows<'a>(data: &'a mut [f32], width: usize, rows: &[u32]) -> Vec<&'a mut [f32]> {
    let mut out = Vec::with_capacity(rows.len());
    let mut rest = data;
    let mut base = 0usize;
    for &r in rows {
        let r = r as usize;
        let tail = std::mem::take(&mut rest);
        let (_, tail) = tail.split_at_mut((r - base) * width);
        let (row, tail) = tail.split_at_mut(width);
        out.push(row);
        rest = tail;
        base = r + 1;
    }
    out
}

/// Updates the two state slots `(a, b)` of some elements from their summed gradient `g`.
#[inline(always)]
fn update_state(rule: &Rule, a: &mut [f32], b: &mut [f32], g: &[f32]) {
    match *rule {
        Rule::AdagradM { lr, momentum, eps } => {
            for ((acc, mom), &g) in a.iter_mut().zip(b.iter_mut()).zip(g) {
                *acc += g * g;
                *mom = momentum * *mom - lr * g / (*acc + eps).sqrt();
            }
        }
        Rule::Adam { beta1, beta2, .. } => {
            for ((m, v), &g) in a.iter_mut().zip(b.iter_mut()).zip(g) {
                *m = beta1 * *m + (1.0 - beta1) * g;
                *v = beta2 * *v + (1.0 - beta2) * g * g;
            }
        }
    }
}

/// Adds the step read from (or computed from) the state slots `(a, b)` to the elements `p`.
#[inline(always)]
fn apply_step(rule: &Rule, p: &mut [f32], a: &[f32], b: &[f32]) {
    match *rule {
        Rule::AdagradM { .. } => {
            for (p, &step) in p.iter_mut().zip(b) {
                *p += step;
            }
        }
        Rule::Adam { lr, beta1, beta2, eps, t, weight_decay } => {
            let c1 = 1.0 / (1.0 - beta1.powi(t.min(i32::MAX as u64) as i32));
            let c2 = 1.0 / (1.0 - beta2.powi(t.min(i32::MAX as u64) as i32));
            let keep = 1.0 - lr * weight_decay;
            for ((p, &m), &v) in p.iter_mut().zip(a).zip(b) {
                *p = *p * keep - lr * (m * c1) / ((v * c2).sqrt() + eps);
            }
        }
    }
}

/// Rows per rayon task: enough work per task to amortise scheduling.
fn rows_per_task(width: usize) -> usize {
    (16_384 / width.max(1)).max(1)
}

/// CPU reference of a sparse state update: `state` is `[n_rows, 2 · width]`,
/// `grad` is `[n_grad_rows, width]`, `groups` groups the gradient rows by row id.
pub fn sparse_state_update_cpu(rule: &Rule, state: &mut [f32], grad: &[f32], width: usize, groups: &RowGroups) {
    let mut rows = touched_rows(state, 2 * width, &groups.rows);
    let chunk = rows_per_task(width);
    rows.par_chunks_mut(chunk).enumerate().for_each(|(c, rows)| {
        let mut sum = vec![0f32; width];
        for (k, row) in rows.iter_mut().enumerate() {
            let summed = group_gradient(groups, c * chunk + k, grad, width, &mut sum);
            let (a, b) = row.split_at_mut(width);
            update_state(rule, a, b, summed);
        }
    });
}

/// The gradient of group `g` (row `groups.rows[g]`): its one gradient row as
/// is, or its gradient rows summed in order into `sum`.
#[inline(always)]
fn group_gradient<'a>(groups: &RowGroups, g: usize, grad: &'a [f32], width: usize, sum: &'a mut [f32]) -> &'a [f32] {
    let sources = &groups.sources[groups.starts[g]..groups.starts[g + 1]];
    sum_sources(sources, |s| &grad[s as usize * width..(s as usize + 1) * width], sum)
}

/// The gradient rows `row_of(s)` of `sources` (non-empty): the one row as
/// is, or the rows summed in order into `sum` (the first copied, the others
/// added). `row_of` is called once per source, in order.
#[inline(always)]
fn sum_sources<'a>(sources: &[u32], mut row_of: impl FnMut(u32) -> &'a [f32], sum: &'a mut [f32]) -> &'a [f32] {
    if sources.len() == 1 {
        return row_of(sources[0]);
    }
    sum.copy_from_slice(row_of(sources[0]));
    for &s in &sources[1..] {
        for (acc, &x) in sum.iter_mut().zip(row_of(s)) {
            *acc += x;
        }
    }
    sum
}

/// CPU reference of a sparse parameter step over the rows of `groups`.
pub fn sparse_apply_cpu(rule: &Rule, param: &mut [f32], state: &[f32], width: usize, groups: &RowGroups) {
    let mut rows = touched_rows(param, width, &groups.rows);
    let chunk = rows_per_task(width);
    rows.par_chunks_mut(chunk).enumerate().for_each(|(c, rows)| {
        for (k, row) in rows.iter_mut().enumerate() {
            let r = groups.rows[c * chunk + k] as usize;
            let (a, b) = state[r * 2 * width..(r + 1) * 2 * width].split_at(width);
            apply_step(rule, row, a, b);
        }
    });
}

/// The f32 elements of a contiguous CPU tensor (shared by the kernels' CPU ops).
pub(crate) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else { bail!("{what}: expected an f32 tensor") };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => bail!("{what}: expected a contiguous tensor"),
    }
}

fn f32_slice_mut<'a>(s: &'a mut CpuStorage, l: &Layout, what: &str) -> Result<&'a mut [f32]> {
    let CpuStorage::F32(v) = s else { bail!("{what}: expected an f32 tensor") };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&mut v[a..b]),
        None => bail!("{what}: expected a contiguous tensor"),
    }
}

/// In-place op on a state tensor: reads a gradient and updates the state.
#[derive(Debug)]
pub struct StateUpdate<'a> {
    /// The rule.
    pub rule: Rule,
    /// Sparse: the grouped row ids of the gradient rows; `None`: dense.
    pub groups: Option<&'a RowGroups>,
}

impl InplaceOp2 for StateUpdate<'_> {
    fn name(&self) -> &'static str {
        "optimiser-state-update"
    }

    fn cpu_fwd(&self, dst: &mut CpuStorage, dst_l: &Layout, gs: &CpuStorage, gl: &Layout) -> Result<()> {
        let what = self.name();
        let grad = f32_slice(gs, gl, what)?;
        let state = f32_slice_mut(dst, dst_l, what)?;
        match self.groups {
            Some(groups) => {
                let dims = gl.dims();
                let (n_grad, width) = (dims[0], dims[1..].iter().product::<usize>());
                let n_rows = state.len() / (2 * width).max(1);
                if state.len() != n_rows * 2 * width {
                    bail!("{what}: state of {} elements is not [rows, 2 · {width}]", state.len());
                }
                groups.check(n_rows, n_grad, what)?;
                sparse_state_update_cpu(&self.rule, state, grad, width, groups);
            }
            None => {
                if state.len() != 2 * grad.len() {
                    bail!("{what}: state of {} elements for a gradient of {}", state.len(), grad.len());
                }
                let (a, b) = state.split_at_mut(grad.len());
                a.par_chunks_mut(16_384)
                    .zip(b.par_chunks_mut(16_384))
                    .zip(grad.par_chunks(16_384))
                    .for_each(|((a, b), g)| update_state(&self.rule, a, b, g));
            }
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        dst: &mut candle_core::CudaStorage,
        dst_l: &Layout,
        gs: &candle_core::CudaStorage,
        gl: &Layout,
    ) -> Result<()> {
        cuda::state_update(self, dst, dst_l, gs, gl)
    }
}

/// In-place op on a parameter: adds the step held in (or computed from) its state.
#[derive(Debug)]
pub struct ApplyStep<'a> {
    /// The rule.
    pub rule: Rule,
    /// Sparse: the rows to update; `None`: every element.
    pub groups: Option<&'a RowGroups>,
}

impl InplaceOp2 for ApplyStep<'_> {
    fn name(&self) -> &'static str {
        "optimiser-apply-step"
    }

    fn cpu_fwd(&self, dst: &mut CpuStorage, dst_l: &Layout, ss: &CpuStorage, sl: &Layout) -> Result<()> {
        let what = self.name();
        let state = f32_slice(ss, sl, what)?;
        let dims = dst_l.dims().to_vec();
        let param = f32_slice_mut(dst, dst_l, what)?;
        if state.len() != 2 * param.len() {
            bail!("{what}: state of {} elements for a parameter of {}", state.len(), param.len());
        }
        match self.groups {
            Some(groups) => {
                let width = dims[1..].iter().product::<usize>();
                groups.check(dims[0], usize::MAX, what)?;
                sparse_apply_cpu(&self.rule, param, state, width, groups);
            }
            None => {
                let n = param.len();
                let (a, b) = state.split_at(n);
                param
                    .par_chunks_mut(16_384)
                    .zip(a.par_chunks(16_384))
                    .zip(b.par_chunks(16_384))
                    .for_each(|((p, a), b)| apply_step(&self.rule, p, a, b));
            }
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        dst: &mut candle_core::CudaStorage,
        dst_l: &Layout,
        ss: &candle_core::CudaStorage,
        sl: &Layout,
    ) -> Result<()> {
        cuda::apply(self, dst, dst_l, ss, sl)
    }
}

/// Updates `param` (dense) from `grad` with `state` (`[2 · numel]` elements).
///
/// # Errors
/// Shapes that do not fit, a non-f32 or non-contiguous tensor, or a device
/// without an implementation.
pub fn dense_step(rule: Rule, param: &Tensor, state: &Tensor, grad: &Tensor) -> Result<()> {
    if param.device().is_cpu() && state.device().is_cpu() {
        return param.inplace_op2(grad, &Fused { rule, groups: None, state });
    }
    dense_step_two_pass(rule, param, state, grad)
}

/// [`dense_step`] as its two in-place ops ([`StateUpdate`], then
/// [`ApplyStep`]), the form on devices; the fused CPU pass gives the same
/// parameters and slot 0 (tested; with plain Adagrad it leaves slot 1 alone).
///
/// # Errors
/// As [`dense_step`].
pub fn dense_step_two_pass(rule: Rule, param: &Tensor, state: &Tensor, grad: &Tensor) -> Result<()> {
    state.inplace_op2(grad, &StateUpdate { rule, groups: None })?;
    param.inplace_op2(state, &ApplyStep { rule, groups: None })
}

/// Updates the rows of `param` (`[rows, width]`) named by `groups` from the
/// gradient rows `grad` (`[k, width]`, grouped by `groups`), with `state`
/// (`[rows, 2 · width]`). Other rows are untouched.
///
/// # Errors
/// As [`dense_step`], and row ids out of range.
pub fn sparse_step(rule: Rule, param: &Tensor, state: &Tensor, grad: &Tensor, groups: &RowGroups) -> Result<()> {
    if groups.is_empty() {
        return Ok(());
    }
    if param.device().is_cpu() && state.device().is_cpu() {
        return param.inplace_op2(grad, &Fused { rule, groups: Some(groups), state });
    }
    sparse_step_two_pass(rule, param, state, grad, groups)
}

/// [`sparse_step`] as its two in-place ops ([`StateUpdate`], then
/// [`ApplyStep`]): the form for devices whose ops cannot hold two mutable
/// tensors at once. Same parameters and accumulators as the fused CPU pass
/// (tested); with plain Adagrad (momentum 0) the fused pass leaves slot 1
/// untouched, where this form stores the last step in it (never read again).
///
/// # Errors
/// As [`sparse_step`].
pub fn sparse_step_two_pass(
    rule: Rule,
    param: &Tensor,
    state: &Tensor,
    grad: &Tensor,
    groups: &RowGroups,
) -> Result<()> {
    state.inplace_op2(grad, &StateUpdate { rule, groups: Some(groups) })?;
    param.inplace_op2(state, &ApplyStep { rule, groups: Some(groups) })
}

/// A step on the CPU in one pass: each touched row's (sparse) or chunk's
/// (dense) state is updated and its parameter stepped while both are in
/// cache (the second pass over random rows of a table was ≈ 40% of the
/// update's time at GRU4Rec's output table; over the 480-unit GRU's dense
/// weights the two passes were ≈ 12% of a training step). An in-place op on
/// the parameter that opens the state as a nested in-place op.
struct Fused<'a> {
    rule: Rule,
    /// Sparse: the touched rows; `None`: every element.
    groups: Option<&'a RowGroups>,
    state: &'a Tensor,
}

/// The inner op of [`Fused`] and [`FusedOuter`] (also for
/// [`dense_step_outer_product`]): holds the parameter (already opened) and
/// the gradient.
struct FusedInner<'a> {
    rule: Rule,
    groups: Option<&'a RowGroups>,
    grad: Source<'a>,
    width: usize,
    param: std::sync::Mutex<&'a mut [f32]>,
}

impl InplaceOp2 for Fused<'_> {
    fn name(&self) -> &'static str {
        "optimiser-fused-step"
    }

    fn cpu_fwd(&self, dst: &mut CpuStorage, dst_l: &Layout, gs: &CpuStorage, gl: &Layout) -> Result<()> {
        let what = self.name();
        let grad = f32_slice(gs, gl, what)?;
        let dims = dst_l.dims().to_vec();
        let param = f32_slice_mut(dst, dst_l, what)?;
        let width = dims[1..].iter().product::<usize>();
        match self.groups {
            Some(groups) => {
                let gdims = gl.dims();
                if gdims[1..].iter().product::<usize>() != width {
                    bail!("{what}: gradient rows of {:?} for parameter rows of {width}", &gdims[1..]);
                }
                groups.check(dims[0], gdims[0], what)?;
            }
            None if grad.len() != param.len() => {
                bail!("{what}: gradient of {} elements for a parameter of {}", grad.len(), param.len())
            }
            None => {}
        }
        let inner = FusedInner {
            rule: self.rule,
            groups: self.groups,
            grad: Source::Rows(grad),
            width,
            param: std::sync::Mutex::new(param),
        };
        self.state.inplace_op1(&inner)
    }
}

impl candle_core::InplaceOp1 for FusedInner<'_> {
    fn name(&self) -> &'static str {
        "optimiser-fused-step"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
        let what = self.name();
        let state = f32_slice_mut(s, l, what)?;
        let mut param = self.param.lock().map_err(|_| candle_core::Error::Msg(format!("{what}: poisoned")))?;
        if state.len() != 2 * param.len() {
            bail!("{what}: state of {} elements for a parameter of {}", state.len(), param.len());
        }
        match (self.groups, self.grad) {
            (Some(groups), Source::Rows(grad)) => {
                sparse_fused_cpu(&self.rule, &mut param, state, grad, self.width, groups)
            }
            (None, Source::Rows(grad)) => dense_fused_cpu(&self.rule, &mut param, state, grad),
            (Some(groups), Source::Outer(g)) => {
                sparse_outer_fused_cpu(&self.rule, &mut param, state, self.width, groups, g, None)
            }
            (None, Source::Outer(g)) => dense_outer_fused_cpu(&self.rule, &mut param, state, g),
            (None, Source::OuterThenProduct(g, x, mx, out)) => {
                let mut out = out.lock().map_err(|_| candle_core::Error::Msg(format!("{what}: poisoned")))?;
                *out = dense_outer_fused_product_cpu(&self.rule, &mut param, state, g, x, mx);
            }
            (Some(_), Source::OuterThenProduct(..)) => bail!("{what}: a step then product of a sparse table"),
        }
        Ok(())
    }
}

/// Rows ahead of the current one that [`sparse_fused_cpu`] prefetches.
pub(crate) const PREFETCH_AHEAD: usize = 4;

/// Hints the CPU to bring the cache lines of `row` into its L2 (no effect
/// on results). `T1`, not `T0`: paired A/B at setting (b), the output-row
/// gather took 17–20% less time and the sparse update 8–11% less with `T1`,
/// while `T0` (into L1 as well) gained nothing over no early prefetch
/// (docs/benchmarks.md, eighteenth session).
#[inline(always)]
#[allow(unsafe_code)]
pub(crate) fn prefetch(row: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in row.chunks(16) {
        // SAFETY: a prefetch never faults or changes memory; the address is
        // inside a live slice anyway.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(line.as_ptr().cast());
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = row;
}

/// A touched row's state (`2 · width`) and parameter (`width`).
type RowPair<'a> = (&'a mut [f32], &'a mut [f32]);

/// CPU sparse step in one pass: per touched row, the summed gradient
/// updates the state and the state steps the parameter row.
pub fn sparse_fused_cpu(
    rule: &Rule,
    param: &mut [f32],
    state: &mut [f32],
    grad: &[f32],
    width: usize,
    groups: &RowGroups,
) {
    let mut rows: Vec<RowPair<'_>> = touched_rows(state, 2 * width, &groups.rows)
        .into_iter()
        .zip(touched_rows(param, width, &groups.rows))
        .collect();
    let chunk = rows_per_task(width);
    // Plain Adagrad (GRU4Rec's default) leaves slot 1 alone.
    let plain = plain_adagrad(rule);
    let task = |(c, rows): (usize, &mut [RowPair<'_>])| {
        crate::simd::dispatch(|| {
            let mut sum = vec![0f32; width];
            for k in 0..rows.len() {
                prefetch_ahead(rows, k, width, plain.is_some());
                let (srow, prow) = &mut rows[k];
                let summed = group_gradient(groups, c * chunk + k, grad, width, &mut sum);
                let (a, b) = srow.split_at_mut(width);
                step_chunk(rule, plain, prow, a, b, summed);
            }
        })
    };
    if rows.len() > chunk {
        rows.par_chunks_mut(chunk).enumerate().for_each(task);
    } else {
        task((0, rows.as_mut_slice()));
    }
}

/// Plain Adagrad (momentum 0): `(lr, ε)`, the rule whose step needs no
/// momentum slot. With it the fused passes neither read nor write slot 1 (a
/// third less memory traffic); the parameters and slot 0 are bit-identical to
/// the general rule's (0·m − x = −x).
fn plain_adagrad(rule: &Rule) -> Option<(f32, f32)> {
    match *rule {
        Rule::AdagradM { lr, momentum: 0.0, eps } => Some((lr, eps)),
        _ => None,
    }
}

/// Plain Adagrad's update of some elements: accumulator, then parameter.
#[inline(always)]
fn plain_step(lr: f32, eps: f32, acc: &mut [f32], p: &mut [f32], g: &[f32]) {
    for ((acc, p), &g) in acc.iter_mut().zip(p.iter_mut()).zip(g) {
        *acc += g * g;
        *p += -(lr * g / (*acc + eps).sqrt());
    }
}

/// One chunk's step from its (summed) gradient `g`: parameters `p`, state
/// slots `a` and `b`; with plain Adagrad (`plain`, see [`plain_adagrad`])
/// slot 1 is neither read nor written.
#[inline(always)]
fn step_chunk(rule: &Rule, plain: Option<(f32, f32)>, p: &mut [f32], a: &mut [f32], b: &mut [f32], g: &[f32]) {
    match plain {
        Some((lr, eps)) => plain_step(lr, eps, a, p, g),
        None => {
            update_state(rule, a, b, g);
            apply_step(rule, p, a, b);
        }
    }
}

/// The rows of a sparse step are random lines of tables larger than the
/// cache, and the update stalled on their first loads (perf): asks for the
/// state (slot 0 only when `plain`) and parameter row [`PREFETCH_AHEAD`]
/// rows after row `i`.
#[inline(always)]
fn prefetch_ahead(rows: &[RowPair<'_>], i: usize, width: usize, plain: bool) {
    if let Some((s_ahead, p_ahead)) = rows.get(i + PREFETCH_AHEAD) {
        prefetch(if plain { &s_ahead[..width] } else { s_ahead });
        prefetch(p_ahead);
    }
}

/// CPU dense step in one pass: `state` is `[slot 0 ‖ slot 1]` of
/// `param.len()` elements each; every chunk's state is updated and its
/// parameters stepped while both are in cache.
pub fn dense_fused_cpu(rule: &Rule, param: &mut [f32], state: &mut [f32], grad: &[f32]) {
    const CHUNK: usize = 16_384;
    let (a, b) = state.split_at_mut(param.len());
    let plain = plain_adagrad(rule);
    param
        .par_chunks_mut(CHUNK)
        .zip(a.par_chunks_mut(CHUNK))
        .zip(b.par_chunks_mut(CHUNK))
        .zip(grad.par_chunks(CHUNK))
        .for_each(|(((p, a), b), g)| crate::simd::dispatch(|| step_chunk(rule, plain, p, a, b, g)));
}

/// A gradient in product form: the rows of `[rows ‖ aᵀ·b]`, where `rows` is
/// `n × width` (possibly empty), `a` is `[k, m]` and `b` is `[k, width]`,
/// all row-major. Backpropagation through `x·W` gives `W`'s gradient as
/// `xᵀ·d` with `k` the batch's rows; an optimiser handed that pair computes
/// the gradient a block of rows at a time and steps the block while it is
/// in cache, instead of writing the whole gradient out and reading it back
/// (see [`dense_step_outer`], [`sparse_step_outer`]).
#[derive(Debug, Clone, Copy)]
pub struct OuterGrad<'a> {
    /// Gradient rows given as they are (sparse steps only; empty for dense).
    pub rows: &'a [f32],
    /// `[k, m]`: row `j` of the product is `Σ_i a[i, j] · b[i, :]`.
    pub a: &'a [f32],
    /// `[k, width]`.
    pub b: &'a [f32],
    /// The shared dimension (> 0).
    pub k: usize,
}

impl OuterGrad<'_> {
    /// Rows of the product part.
    fn m(&self) -> usize {
        self.a.len() / self.k.max(1)
    }

    fn check(&self, width: usize, what: &str) -> Result<()> {
        if self.k == 0
            || !self.a.len().is_multiple_of(self.k)
            || self.b.len() != self.k * width
            || !self.rows.len().is_multiple_of(width.max(1))
        {
            bail!(
                "{what}: a product gradient of {} + {} · {} elements does not make rows of {width} (k = {})",
                self.rows.len(),
                self.a.len(),
                self.b.len(),
                self.k
            );
        }
        Ok(())
    }
}

/// Where a fused CPU step reads its gradient.
#[derive(Debug, Clone, Copy)]
enum Source<'a> {
    /// The gradient (dense) or its rows (sparse), materialised.
    Rows(&'a [f32]),
    /// In product form.
    Outer(OuterGrad<'a>),
    /// In product form (dense), the stepped parameter then multiplied:
    /// `x · param` (`x` of the given rows) into the buffer
    /// ([`dense_outer_fused_product_cpu`]).
    OuterThenProduct(OuterGrad<'a>, &'a [f32], usize, &'a std::sync::Mutex<Vec<f32>>),
}

/// `x`, its rows and the buffer for `x · param` ([`dense_step_outer_product`]).
type ThenProduct<'a> = (&'a [f32], usize, &'a std::sync::Mutex<Vec<f32>>);

/// [`Fused`] with a gradient in product form: an in-place op on the parameter.
struct FusedOuter<'a> {
    rule: Rule,
    groups: Option<&'a RowGroups>,
    state: &'a Tensor,
    grad: OuterGrad<'a>,
    /// Dense only: `x`, its rows and the buffer for `x · param` after the
    /// step ([`dense_step_outer_product`]).
    then: Option<ThenProduct<'a>>,
}

impl candle_core::InplaceOp1 for FusedOuter<'_> {
    fn name(&self) -> &'static str {
        "optimiser-fused-outer-step"
    }

    fn cpu_fwd(&self, dst: &mut CpuStorage, dst_l: &Layout) -> Result<()> {
        let what = self.name();
        let dims = dst_l.dims().to_vec();
        let param = f32_slice_mut(dst, dst_l, what)?;
        let width = dims[1..].iter().product::<usize>();
        self.grad.check(width, what)?;
        match self.groups {
            Some(groups) => groups.check(dims[0], self.grad.rows.len() / width.max(1) + self.grad.m(), what)?,
            None if !self.grad.rows.is_empty() || self.grad.m() * width != param.len() => bail!(
                "{what}: a dense product gradient of [{}, {width}] (and {} given rows) for a parameter of {:?}",
                self.grad.m(),
                self.grad.rows.len() / width.max(1),
                dims
            ),
            None => {}
        }
        let inner = FusedInner {
            rule: self.rule,
            groups: self.groups,
            grad: match self.then {
                Some((x, mx, out)) => Source::OuterThenProduct(self.grad, x, mx, out),
                None => Source::Outer(self.grad),
            },
            width,
            param: std::sync::Mutex::new(param),
        };
        self.state.inplace_op1(&inner)
    }
}

/// The f32 elements of a tensor on the CPU, for a closure (made contiguous first).
fn with_cpu_f32<R>(t: &Tensor, what: &str, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (s, l) = t.storage_and_layout();
    let candle_core::Storage::Cpu(s) = &*s else { bail!("{what}: expected a tensor on the CPU") };
    f(f32_slice(s, l, what)?)
}

/// [`dense_step`] with the gradient `aᵀ·b` (`a` `[k, rows]`, `b` `[k, cols]`
/// for a `[rows, cols]` parameter). On the CPU the gradient is computed a
/// block of rows at a time and each block stepped while it is in cache;
/// elsewhere it is materialised and handed to [`dense_step`]. The same
/// parameters as `dense_step(…, aᵀ·b)` (each element is one gemm sum over
/// `k` either way; tested).
///
/// # Errors
/// As [`dense_step`], and operands whose shapes do not give the parameter's.
pub fn dense_step_outer(rule: Rule, param: &Tensor, state: &Tensor, a: &Tensor, b: &Tensor) -> Result<()> {
    let ((k, m), (k2, n)) = (a.dims2()?, b.dims2()?);
    if k != k2 || param.elem_count() != m * n {
        bail!("dense outer step: [{k}, {m}]ᵀ · [{k2}, {n}] for a parameter of {:?}", param.dims());
    }
    if !(param.device().is_cpu() && state.device().is_cpu() && a.device().is_cpu() && b.device().is_cpu()) {
        let grad = crate::matmul::matmul(&a.t()?, b)?.reshape(param.shape())?;
        return dense_step(rule, param, state, &grad);
    }
    let what = "dense outer step";
    with_cpu_f32(a, what, |av| {
        with_cpu_f32(b, what, |bv| {
            let grad = OuterGrad { rows: &[], a: av, b: bv, k };
            param.inplace_op1(&FusedOuter { rule, groups: None, state, grad, then: None })
        })
    })
}

/// [`sparse_step`] with the gradient rows `[rows ‖ aᵀ·b]` (`rows`
/// `[n, width]`, `a` `[k, m]`, `b` `[k, width]`; `groups` over those
/// `n + m` rows). On the CPU each task computes the product rows its
/// parameter rows need (one gemm) and steps them at once; elsewhere the
/// gradient is materialised and handed to [`sparse_step`]. The same
/// parameters as `sparse_step(…, [rows ‖ aᵀ·b])` (tested).
///
/// # Errors
/// As [`sparse_step`], and operands whose shapes do not chain.
pub fn sparse_step_outer(
    rule: Rule,
    param: &Tensor,
    state: &Tensor,
    rows: &Tensor,
    (a, b): (&Tensor, &Tensor),
    groups: &RowGroups,
) -> Result<()> {
    let (_, _, k, _) = outer_dims(rows, a, b)?;
    if groups.is_empty() {
        return Ok(());
    }
    let cpu = [param, state, rows, a, b].iter().all(|t| t.device().is_cpu());
    if !cpu {
        let product = crate::matmul::matmul(&a.t()?, b)?;
        return sparse_step(rule, param, state, &Tensor::cat(&[rows, &product], 0)?, groups);
    }
    let what = "sparse outer step";
    with_cpu_f32(rows, what, |rv| {
        with_cpu_f32(a, what, |av| {
            with_cpu_f32(b, what, |bv| {
                let grad = OuterGrad { rows: rv, a: av, b: bv, k };
                param.inplace_op1(&FusedOuter { rule, groups: Some(groups), state, grad, then: None })
            })
        })
    })
}

/// The sizes `(n, width, k, m)` of a sparse gradient `[rows ‖ aᵀ·b]`
/// (`rows` `[n, width]`, `a` `[k, m]`, `b` `[k, width]`).
///
/// # Errors
/// Operands that are not 2-D or whose shapes do not chain.
fn outer_dims(rows: &Tensor, a: &Tensor, b: &Tensor) -> Result<(usize, usize, usize, usize)> {
    let ((n, w), (k, m), (k2, w2)) = (rows.dims2()?, a.dims2()?, b.dims2()?);
    if k != k2 || w != w2 {
        bail!("sparse outer step: rows [{n}, {w}] and [{k}, _]ᵀ · [{k2}, {w2}] do not chain");
    }
    Ok((n, w, k, m))
}

/// [`sparse_step_outer`] and, in the same pass over the rows, the step of a
/// bias table `bias` (`[rows, 1]`, state `[rows, 2]`) whose gradient has
/// one value per product row (`bias_grad`, `m` values): as
/// `sparse_step(rule, bias, bias_state, bias_grad, &groups.suffix(n))`
/// after the table's step, with `n` the given rows (tested bit for bit).
/// GRU4Rec's output bias rides along with its output table this way: at
/// setting (b), 40,000 items, the separate step took 85–100 µs (on one
/// thread: ≈ 2,000 rows of one value), the table's pass with the bias
/// (rows prefetched with the table's) ≈ 45 µs more than without it.
///
/// # Errors
/// As [`sparse_step_outer`], and a bias, state or gradient of the wrong size.
pub fn sparse_step_outer_with_bias(
    rule: Rule,
    (param, state): (&Tensor, &Tensor),
    rows: &Tensor,
    (a, b): (&Tensor, &Tensor),
    groups: &RowGroups,
    (bias, bias_state, bias_grad): (&Tensor, &Tensor, &Tensor),
) -> Result<()> {
    let (n, w, k, m) = outer_dims(rows, a, b)?;
    let n_rows = param.dims().first().copied().unwrap_or(0);
    if bias.elem_count() != n_rows || bias_state.elem_count() != 2 * n_rows || bias_grad.elem_count() != m {
        bail!(
            "sparse outer step with bias: a bias of {} values, state of {} and gradient of {} for {n_rows} rows and {m} product rows",
            bias.elem_count(),
            bias_state.elem_count(),
            bias_grad.elem_count()
        );
    }
    if groups.is_empty() {
        return Ok(());
    }
    let cpu = [param, state, rows, a, b, bias, bias_state, bias_grad].iter().all(|t| t.device().is_cpu());
    if !cpu {
        sparse_step_outer(rule, param, state, rows, (a, b), groups)?;
        return sparse_step(rule, bias, bias_state, &bias_grad.reshape((m, 1))?, &groups.suffix(n));
    }
    let what = "sparse outer step with bias";
    with_cpu_f32(rows, what, |rv| {
        with_cpu_f32(a, what, |av| {
            with_cpu_f32(b, what, |bv| {
                with_cpu_f32(bias_grad, what, |gv| {
                    let g = OuterGrad { rows: rv, a: av, b: bv, k };
                    g.check(w, what)?;
                    groups.check(n_rows, n + m, what)?;
                    with_cpu_f32_mut(param, what, |p| {
                        with_cpu_f32_mut(state, what, |s| {
                            if s.len() != 2 * p.len() || p.len() != n_rows * w {
                                bail!("{what}: state of {} elements for a parameter of {}", s.len(), p.len());
                            }
                            with_cpu_f32_mut(bias, what, |bp| {
                                with_cpu_f32_mut(bias_state, what, |bs| {
                                    let bias = Some(BiasStep { param: bp, state: bs, grad: gv });
                                    sparse_outer_fused_cpu(&rule, p, s, w, groups, g, bias);
                                    Ok(())
                                })
                            })
                        })
                    })
                })
            })
        })
    })
}

/// Runs `f` on the elements of the contiguous f32 CPU tensor `t`, in place
/// (an in-place op holding `t`'s storage: nested calls must name distinct
/// tensors).
fn with_cpu_f32_mut<R>(t: &Tensor, what: &'static str, f: impl FnOnce(&mut [f32]) -> Result<R>) -> Result<R> {
    struct Op<F, R> {
        what: &'static str,
        f: std::sync::Mutex<Option<F>>,
        out: std::sync::Mutex<Option<Result<R>>>,
    }
    impl<F: FnOnce(&mut [f32]) -> Result<R>, R> candle_core::InplaceOp1 for Op<F, R> {
        fn name(&self) -> &'static str {
            self.what
        }
        fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
            let data = f32_slice_mut(s, l, self.what)?;
            let f = self.f.lock().ok().and_then(|mut f| f.take());
            let Some(f) = f else { bail!("{}: ran twice", self.what) };
            let out = f(data);
            if let Ok(mut slot) = self.out.lock() {
                *slot = Some(out);
            }
            Ok(())
        }
    }
    let op = Op { what, f: std::sync::Mutex::new(Some(f)), out: std::sync::Mutex::new(None) };
    t.inplace_op1(&op)?;
    match op.out.into_inner() {
        Ok(Some(out)) => out,
        _ => bail!("{what}: expected a tensor on the CPU"),
    }
}

/// [`dense_step_outer`] followed by `x · param` with the stepped parameter
/// (`x` `[mx, rows]`, the result `[mx, cols]`). On the CPU each block of the
/// parameter is stepped and multiplied while it is in cache
/// ([`dense_outer_fused_product_cpu`]); elsewhere the two run one after
/// the other. The parameters are those of `dense_step_outer`; the product
/// equals `x · param` up to the order of its sums (blocks of rows).
///
/// # Errors
/// As [`dense_step_outer`], and an `x` whose columns are not the parameter's rows.
pub fn dense_step_outer_product(
    rule: Rule,
    param: &Tensor,
    state: &Tensor,
    (a, b): (&Tensor, &Tensor),
    x: &Tensor,
) -> Result<Tensor> {
    let ((k, m), (k2, n), (mx, m2)) = (a.dims2()?, b.dims2()?, x.dims2()?);
    if k != k2 || param.elem_count() != m * n || m2 != m {
        bail!(
            "dense outer step and product: [{k}, {m}]ᵀ · [{k2}, {n}] for a parameter of {:?}, then [{mx}, {m2}] · it",
            param.dims()
        );
    }
    let cpu = [param, state, a, b, x].iter().all(|t| t.device().is_cpu());
    if !cpu {
        dense_step_outer(rule, param, state, a, b)?;
        return crate::matmul::matmul(x, &param.reshape((m, n))?);
    }
    let what = "dense outer step and product";
    let out = std::sync::Mutex::new(Vec::new());
    with_cpu_f32(a, what, |av| {
        with_cpu_f32(b, what, |bv| {
            with_cpu_f32(x, what, |xv| {
                let grad = OuterGrad { rows: &[], a: av, b: bv, k };
                param.inplace_op1(&FusedOuter { rule, groups: None, state, grad, then: Some((xv, mx, &out)) })
            })
        })
    })?;
    let out = out.into_inner().map_err(|_| candle_core::Error::Msg(format!("{what}: poisoned")))?;
    Tensor::from_vec(out, (mx, n), param.device())
}

/// Parameter rows per block of the product-form steps. gemm computes a
/// row-major block transposed, so the block's rows are its micro-kernel's
/// short side (6) and small blocks cost it little; a block's gradient,
/// parameters and accumulators (3 × 24 × 1,440 values at 480 units, 415 KB)
/// stay well inside a 1 MB L2, and 20 blocks per weight balance two
/// threads better than 10. Step timer at (b), 8,000 items, best blocks
/// alternately: 48 rows 5,324 / 5,320 / 5,474 / 6,054 µs, 24 rows 5,031 /
/// 4,712 / 5,153 / 5,373.
const OUTER_BLOCK: usize = 24;

/// Blocks of [`OUTER_BLOCK`] rows that [`dense_outer_fused_product_cpu`]
/// steps before it multiplies them into its share of the product (96 rows:
/// ≤ 553 KB of stepped rows, still in L2): gemm with k = 24 ran ≈ 12%
/// below its speed at k = 240. Paired A/B at (b), 40,000 items: step
/// ratios 0.993 and 0.981 against a product per block.
const PRODUCT_BLOCKS: usize = 4;

thread_local! {
    /// Per-thread scratch of the product-form steps (the packed left
    /// operand and the block of product rows).
    static OUTER_SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// CPU dense step with the gradient `aᵀ·b` (`g.rows` empty): blocks of
/// [`OUTER_BLOCK`] parameter rows, each computed by gemm into a per-thread
/// buffer and stepped at once.
pub fn dense_outer_fused_cpu(rule: &Rule, param: &mut [f32], state: &mut [f32], g: OuterGrad<'_>) {
    let (k, m) = (g.k, g.m());
    let n = g.b.len() / k.max(1);
    if n == 0 || m == 0 {
        return;
    }
    let (s0, s1) = state.split_at_mut(param.len());
    let plain = plain_adagrad(rule);
    param
        .par_chunks_mut(OUTER_BLOCK * n)
        .zip(s0.par_chunks_mut(OUTER_BLOCK * n))
        .zip(s1.par_chunks_mut(OUTER_BLOCK * n))
        .enumerate()
        .for_each(|(c, ((p, a0), a1))| {
            OUTER_SCRATCH.with_borrow_mut(|(_, grad)| {
                grad.resize(p.len(), 0.0);
                // Rows c·B.. of aᵀ: a read down its columns.
                crate::matmul::gemm_block(grad, (p.len() / n, n, k), &g.a[c * OUTER_BLOCK..], (1, m), g.b);
                crate::simd::dispatch(|| step_chunk(rule, plain, p, a0, a1, grad));
            })
        });
}

/// CPU sparse step with the gradient rows `[g.rows ‖ aᵀ·b]`: per task of
/// [`OUTER_BLOCK`] parameter rows, the product rows their groups name are
/// computed by one gemm (their columns of `a` packed first), then each
/// row's gradient is summed in the groups' order and stepped, as in
/// [`sparse_fused_cpu`].
pub fn sparse_outer_fused_cpu(
    rule: &Rule,
    param: &mut [f32],
    state: &mut [f32],
    width: usize,
    groups: &RowGroups,
    g: OuterGrad<'_>,
    bias: Option<BiasStep<'_>>,
) {
    let (k, m) = (g.k, g.m());
    let n_given = g.rows.len() / width.max(1);
    let mut rows: Vec<RowPair<'_>> = touched_rows(state, 2 * width, &groups.rows)
        .into_iter()
        .zip(touched_rows(param, width, &groups.rows))
        .collect();
    let (bias_grad, mut bias_rows) = match bias {
        Some(b) => {
            let rows: Vec<RowPair<'_>> = touched_rows(b.state, 2, &groups.rows)
                .into_iter()
                .zip(touched_rows(b.param, 1, &groups.rows))
                .collect();
            (b.grad, Some(rows))
        }
        None => (&[][..], None),
    };
    let plain = plain_adagrad(rule);
    let task = |c: usize, rows: &mut [RowPair<'_>], mut bias_rows: Option<&mut [RowPair<'_>]>| {
        OUTER_SCRATCH.with_borrow_mut(|(packed, product)| {
            let first = c * OUTER_BLOCK;
            let sources = |i: usize| &groups.sources[groups.starts[first + i]..groups.starts[first + i + 1]];
            // Columns of `a` this task needs, in the order the sums read them.
            packed.clear();
            let mut n_product = 0;
            for i in 0..rows.len() {
                for &s in sources(i) {
                    if let Some(j) = (s as usize).checked_sub(n_given) {
                        packed.extend((0..k).map(|r| g.a[r * m + j]));
                        n_product += 1;
                    }
                }
            }
            // All of the task's rows asked for before its gemm: they arrive
            // while it computes (the loop below then finds them in L2).
            for (srow, prow) in rows.iter() {
                prefetch(if plain.is_some() { &srow[..width] } else { srow });
                prefetch(prow);
            }
            for (srow, prow) in bias_rows.iter().flat_map(|b| b.iter()) {
                prefetch(srow);
                prefetch(prow);
            }
            product.resize(n_product * width, 0.0);
            crate::matmul::gemm_block(product, (n_product, width, k), packed, (k, 1), g.b);
            let product: &[f32] = product;
            crate::simd::dispatch(|| {
                let mut sum = vec![0f32; width];
                // Product rows are read in the order they were computed.
                let mut next = 0;
                for (i, (srow, prow)) in rows.iter_mut().enumerate() {
                    let row_of = |s: u32| -> &[f32] {
                        let s = s as usize;
                        if s < n_given {
                            &g.rows[s * width..(s + 1) * width]
                        } else {
                            next += 1;
                            &product[(next - 1) * width..next * width]
                        }
                    };
                    let summed = sum_sources(sources(i), row_of, &mut sum);
                    let (a0, a1) = srow.split_at_mut(width);
                    step_chunk(rule, plain, prow, a0, a1, summed);
                    if let Some(bias_rows) = bias_rows.as_deref_mut() {
                        // The bias gradients of the row's product sources, summed in order.
                        let mut g = None;
                        for &s in sources(i) {
                            if let Some(j) = (s as usize).checked_sub(n_given) {
                                g = Some(g.map_or(bias_grad[j], |acc: f32| acc + bias_grad[j]));
                            }
                        }
                        if let Some(g) = g {
                            let (bs, bp) = &mut bias_rows[i];
                            let (b0, b1) = bs.split_at_mut(1);
                            step_chunk(rule, plain, bp, b0, b1, &[g]);
                        }
                    }
                }
            })
        })
    };
    match bias_rows.as_deref_mut() {
        Some(bias_rows) if rows.len() > OUTER_BLOCK => rows
            .par_chunks_mut(OUTER_BLOCK)
            .zip(bias_rows.par_chunks_mut(OUTER_BLOCK))
            .enumerate()
            .for_each(|(c, (rows, bias_rows))| task(c, rows, Some(bias_rows))),
        None if rows.len() > OUTER_BLOCK => {
            rows.par_chunks_mut(OUTER_BLOCK).enumerate().for_each(|(c, rows)| task(c, rows, None))
        }
        bias_rows => task(0, rows.as_mut_slice(), bias_rows),
    }
}

/// A table of one value per row (an output bias) stepped beside a sparse
/// product-form step ([`sparse_outer_fused_cpu`], [`sparse_step_outer_with_bias`]):
/// its row `r` gets the gradient `grad[s − n]` summed over the sources `s`
/// of `r` in the product part (`n` the given rows), in order, and no step
/// when it has none.
#[derive(Debug)]
pub struct BiasStep<'a> {
    /// `[rows]` values.
    pub param: &'a mut [f32],
    /// `[rows, 2]` state.
    pub state: &'a mut [f32],
    /// One gradient value per product row.
    pub grad: &'a [f32],
}

/// CPU dense step with the gradient `aᵀ·b` followed by the product
/// `x · param` with the stepped parameter (`param` `[m, n]`, `x` `[mx, m]`,
/// the result `[mx, n]`). Each thread takes a run of whole [`OUTER_BLOCK`]-row
/// blocks; per block it computes the gradient and steps the block, and per
/// [`PRODUCT_BLOCKS`] blocks it multiplies the stepped rows into its share
/// of the product while they are in cache, so the parameter is read from
/// memory once for the step and the product instead of once each. The shares are added in thread order
/// into the first one, which is the result (the product's sums depend on
/// the thread count, as a split gemm's do).
/// The parameters and state equal [`dense_outer_fused_cpu`]'s (the same
/// blocks, the same gemm calls).
pub fn dense_outer_fused_product_cpu(
    rule: &Rule,
    param: &mut [f32],
    state: &mut [f32],
    g: OuterGrad<'_>,
    x: &[f32],
    mx: usize,
) -> Vec<f32> {
    let (k, m) = (g.k, g.m());
    let n = g.b.len() / k.max(1);
    if n == 0 || m == 0 {
        return vec![0f32; mx * n];
    }
    let plain = plain_adagrad(rule);
    let blocks = m.div_ceil(OUTER_BLOCK);
    let per = blocks.div_ceil(rayon::current_num_threads().clamp(1, blocks)) * OUTER_BLOCK;
    let (s0, s1) = state.split_at_mut(param.len());
    let shares: Vec<Vec<f32>> = param
        .par_chunks_mut(per * n)
        .zip(s0.par_chunks_mut(per * n))
        .zip(s1.par_chunks_mut(per * n))
        .enumerate()
        .map(|(t, ((p, a0), a1))| {
            let mut share = vec![0f32; mx * n];
            OUTER_SCRATCH.with_borrow_mut(|(_, grad)| {
                grad.resize(OUTER_BLOCK * n, 0.0);
                let (base, blocks_here) = (t * per, p.len().div_ceil(OUTER_BLOCK * n));
                // Rows of this thread's run already multiplied into the share.
                let mut done = 0;
                for b in 0..blocks_here {
                    let (lo, hi) = (b * OUTER_BLOCK * n, ((b + 1) * OUTER_BLOCK * n).min(p.len()));
                    let (r0, rb) = (base + b * OUTER_BLOCK, (hi - lo) / n);
                    // Rows r0.. of aᵀ (a read down its columns) times b.
                    let lhs = Strided { data: &g.a[r0..], rs: 1, cs: m };
                    gemm_strided(grad, n, (rb, n, k), lhs, Strided { data: g.b, rs: n, cs: 1 }, false);
                    let (pb, a0b, a1b) = (&mut p[lo..hi], &mut a0[lo..hi], &mut a1[lo..hi]);
                    crate::simd::dispatch(|| step_chunk(rule, plain, pb, a0b, a1b, &grad[..hi - lo]));
                    if (b + 1) % PRODUCT_BLOCKS == 0 || b + 1 == blocks_here {
                        // The stepped rows' share of x · param (still in L2):
                        // columns base + done.. of x.
                        let rows = hi / n - done;
                        let lhs = Strided { data: &x[base + done..], rs: m, cs: 1 };
                        let rhs = Strided { data: &p[done * n..hi], rs: n, cs: 1 };
                        gemm_strided(&mut share, n, (mx, n, rows), lhs, rhs, done > 0);
                        done = hi / n;
                    }
                }
            });
            share
        })
        .collect();
    let mut shares = shares.into_iter();
    let mut out = shares.next().unwrap_or_else(|| vec![0f32; mx * n]);
    add_shares(&mut out, shares.as_slice());
    out
}

/// Elements per task of [`add_shares`].
const SHARE_CHUNK: usize = 8_192;

/// `out += shares[0] + shares[1] + …`, each element summed in share
/// order, by chunks on all threads (`out` holds the first share: the
/// values of a serial sum from it in that order). Done on one thread it was
/// ≈ 30 µs of the other core's idle time per step at setting (b); the
/// first share was copied into a zeroed buffer until the twentieth session.
fn add_shares(out: &mut [f32], shares: &[Vec<f32>]) {
    if shares.is_empty() {
        return;
    }
    out.par_chunks_mut(SHARE_CHUNK).enumerate().for_each(|(c, o)| {
        let span = c * SHARE_CHUNK..c * SHARE_CHUNK + o.len();
        crate::simd::dispatch(|| {
            for share in shares {
                for (o, &v) in o.iter_mut().zip(&share[span.clone()]) {
                    *o += v;
                }
            }
        })
    });
}

/// The CUDA side of [`StateUpdate`] and [`ApplyStep`] (`cuda/optim.cu`).
#[cfg(feature = "cuda")]
#[allow(unsafe_code)]
mod cuda {
    use super::{ApplyStep, RowGroups, Rule, StateUpdate};
    use crate::cuda::{elementwise, func, launch, upload_u32, view, view_mut, Module};
    use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, PushKernelArg};
    use candle_core::{backend::BackendStorage, bail, CudaStorage, Layout, Result};

    /// `struct Rule` of `optim.cu`, field for field.
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    struct RuleArgs {
        kind: i32,
        lr: f32,
        mu_or_beta1: f32,
        eps: f32,
        beta2: f32,
        c1: f32,
        c2: f32,
        keep: f32,
    }

    // SAFETY: plain `#[repr(C)]` data of the kernel's `struct Rule` layout.
    unsafe impl DeviceRepr for RuleArgs {}

    impl RuleArgs {
        /// The same constants as the CPU's `apply_step`, computed the same way.
        fn new(rule: &Rule) -> Self {
            match *rule {
                Rule::AdagradM { lr, momentum, eps } => {
                    RuleArgs { kind: 0, lr, mu_or_beta1: momentum, eps, beta2: 0.0, c1: 0.0, c2: 0.0, keep: 1.0 }
                }
                Rule::Adam { lr, beta1, beta2, eps, t, weight_decay } => {
                    let t = t.min(i32::MAX as u64) as i32;
                    RuleArgs {
                        kind: 1,
                        lr,
                        mu_or_beta1: beta1,
                        eps,
                        beta2,
                        c1: 1.0 / (1.0 - beta1.powi(t)),
                        c2: 1.0 / (1.0 - beta2.powi(t)),
                        keep: 1.0 - lr * weight_decay,
                    }
                }
            }
        }
    }

    /// Device copies of a sparse update's row groups.
    struct Groups {
        rows: candle_core::cuda_backend::cudarc::driver::CudaSlice<u32>,
        starts: candle_core::cuda_backend::cudarc::driver::CudaSlice<u32>,
        sources: candle_core::cuda_backend::cudarc::driver::CudaSlice<u32>,
        n: u32,
    }

    fn upload(dev: &candle_core::CudaDevice, g: &RowGroups) -> Result<Groups> {
        let starts: Vec<u32> = g.starts.iter().map(|&s| s as u32).collect();
        Ok(Groups {
            rows: upload_u32(dev, &g.rows)?,
            starts: upload_u32(dev, &starts)?,
            sources: upload_u32(dev, &g.sources)?,
            n: g.rows.len() as u32,
        })
    }

    pub(super) fn state_update(
        op: &StateUpdate<'_>,
        dst: &mut CudaStorage,
        dst_l: &Layout,
        gs: &CudaStorage,
        gl: &Layout,
    ) -> Result<()> {
        let what = "optimiser-state-update";
        let dev = dst.device().clone();
        let rule = RuleArgs::new(&op.rule);
        let grad = view(gs, gl, what)?;
        let n_state = dst_l.shape().elem_count();
        let mut state = view_mut(dst, dst_l, what)?;
        let stream = dev.cuda_stream();
        match op.groups {
            Some(groups) => {
                let dims = gl.dims();
                let (n_grad, width) = (dims[0], dims[1..].iter().product::<usize>());
                let n_rows = n_state / (2 * width).max(1);
                if n_state != n_rows * 2 * width {
                    bail!("{what}: state of {n_state} elements is not [rows, 2 · {width}]");
                }
                groups.check(n_rows, n_grad, what)?;
                if groups.is_empty() {
                    return Ok(());
                }
                let g = upload(&dev, groups)?;
                let f = func(&dev, Module::Optim, "sparse_state_update")?;
                let mut b = stream.launch_builder(&f);
                // (float* state, const float* grad, const unsigned* rows, const unsigned* starts,
                //  const unsigned* sources, unsigned n_groups, unsigned width, Rule rule)
                let width = width as u32;
                b.arg(&mut state).arg(&grad).arg(&g.rows).arg(&g.starts).arg(&g.sources).arg(&g.n).arg(&width);
                b.arg(&rule);
                launch(b, elementwise(g.n as usize * width as usize))
            }
            None => {
                let n = gl.shape().elem_count();
                if n_state != 2 * n {
                    bail!("{what}: state of {n_state} elements for a gradient of {n}");
                }
                let f = func(&dev, Module::Optim, "dense_state_update")?;
                let mut b = stream.launch_builder(&f);
                // (float* state, const float* grad, unsigned long long n, Rule rule)
                let n64 = n as u64;
                b.arg(&mut state).arg(&grad).arg(&n64).arg(&rule);
                launch(b, elementwise(n))
            }
        }
    }

    pub(super) fn apply(
        op: &ApplyStep<'_>,
        dst: &mut CudaStorage,
        dst_l: &Layout,
        ss: &CudaStorage,
        sl: &Layout,
    ) -> Result<()> {
        let what = "optimiser-apply-step";
        let dev = dst.device().clone();
        let rule = RuleArgs::new(&op.rule);
        let dims = dst_l.dims().to_vec();
        let n = dst_l.shape().elem_count();
        let state = view(ss, sl, what)?;
        if sl.shape().elem_count() != 2 * n {
            bail!("{what}: state of {} elements for a parameter of {n}", sl.shape().elem_count());
        }
        let mut param = view_mut(dst, dst_l, what)?;
        let stream = dev.cuda_stream();
        match op.groups {
            Some(groups) => {
                let width = dims[1..].iter().product::<usize>();
                groups.check(dims[0], usize::MAX, what)?;
                if groups.is_empty() {
                    return Ok(());
                }
                let g = upload(&dev, groups)?;
                let f = func(&dev, Module::Optim, "sparse_apply")?;
                let mut b = stream.launch_builder(&f);
                // (float* param, const float* state, const unsigned* rows, unsigned n_groups,
                //  unsigned width, Rule rule)
                let width = width as u32;
                b.arg(&mut param).arg(&state).arg(&g.rows).arg(&g.n).arg(&width).arg(&rule);
                launch(b, elementwise(g.n as usize * width as usize))
            }
            None => {
                let f = func(&dev, Module::Optim, "dense_apply")?;
                let mut b = stream.launch_builder(&f);
                // (float* param, const float* state, unsigned long long n, Rule rule)
                let n64 = n as u64;
                b.arg(&mut param).arg(&state).arg(&n64).arg(&rule);
                launch(b, elementwise(n))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Tensor};

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn steps_compiled_for_avx512_are_bit_identical_to_the_baseline() {
        // Where the CPU has no AVX-512 both sides are the baseline code.
        let n = 1_003;
        let g = values(n, 3);
        let rules = [
            Rule::AdagradM { lr: 0.05, momentum: 0.0, eps: 1e-6 },
            Rule::AdagradM { lr: 0.05, momentum: 0.9, eps: 1e-6 },
            Rule::Adam { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, t: 3, weight_decay: 0.1 },
        ];
        for rule in rules {
            let run = |wide: bool| {
                let (mut p, mut a, mut b) = (values(n, 1), values(n, 2), values(n, 4));
                a.iter_mut().for_each(|x| *x = x.abs());
                let step = || match plain_adagrad(&rule) {
                    Some((lr, eps)) => plain_step(lr, eps, &mut a, &mut p, &g),
                    None => {
                        update_state(&rule, &mut a, &mut b, &g);
                        apply_step(&rule, &mut p, &a, &b);
                    }
                };
                if wide {
                    crate::simd::dispatch(step)
                } else {
                    crate::simd::baseline(step)
                }
                [p, a, b].map(|v| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>())
            };
            assert_eq!(run(true), run(false), "{rule:?}");
        }
    }

    /// Straightforward f64 AdagradM over a dense table, one step, duplicates summed.
    fn reference_adagrad(
        param: &mut [f64],
        acc: &mut [f64],
        mom: &mut [f64],
        width: usize,
        ids: &[u32],
        grad: &[f32],
        (lr, mu, eps): (f64, f64, f64),
    ) {
        let rows = param.len() / width;
        let mut summed = vec![0f64; param.len()];
        let mut touched = vec![false; rows];
        for (k, &id) in ids.iter().enumerate() {
            touched[id as usize] = true;
            for j in 0..width {
                summed[id as usize * width + j] += f64::from(grad[k * width + j]);
            }
        }
        for r in (0..rows).filter(|&r| touched[r]) {
            for j in r * width..(r + 1) * width {
                acc[j] += summed[j] * summed[j];
                mom[j] = mu * mom[j] - lr * summed[j] / (acc[j] + eps).sqrt();
                param[j] += mom[j];
            }
        }
    }

    #[test]
    fn sparse_adagrad_matches_reference_and_leaves_other_rows() {
        let (rows, width) = (50usize, 7usize);
        let dev = Device::Cpu;
        let init = values(rows * width, 1);
        let param = Tensor::from_vec(init.clone(), (rows, width), &dev).unwrap();
        let state = Tensor::zeros((rows, 2 * width), candle_core::DType::F32, &dev).unwrap();
        let mut p64: Vec<f64> = init.iter().map(|&x| f64::from(x)).collect();
        let (mut acc, mut mom) = (vec![0f64; rows * width], vec![0f64; rows * width]);
        let rule = Rule::AdagradM { lr: 0.1, momentum: 0.5, eps: 1e-6 };
        for step in 0..4u64 {
            // repeated ids on purpose, and some rows never named.
            let ids: Vec<u32> = vec![3, 17, 3, 49, 0, 17, 3, (step * 5) as u32];
            let grad = values(ids.len() * width, 10 + step);
            let groups = RowGroups::new(&ids);
            let g = Tensor::from_vec(grad.clone(), (ids.len(), width), &dev).unwrap();
            sparse_step(rule, &param, &state, &g, &groups).unwrap();
            reference_adagrad(&mut p64, &mut acc, &mut mom, width, &ids, &grad, (0.1, 0.5, 1e-6));
        }
        let got = param.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (j, (&g, &want)) in got.iter().zip(&p64).enumerate() {
            assert!((f64::from(g) - want).abs() < 1e-5, "element {j}: {g} vs {want}");
        }
        // rows never named are bit-identical to their start.
        for r in [1usize, 2, 30, 48] {
            assert_eq!(&got[r * width..(r + 1) * width], &init[r * width..(r + 1) * width]);
        }
    }

    #[test]
    fn fused_sparse_step_equals_the_two_pass_form() {
        let (rows, width) = (40usize, 6usize);
        let dev = Device::Cpu;
        let adam = Rule::Adam { lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, t: 3, weight_decay: 0.1 };
        let plain = Rule::AdagradM { lr: 0.1, momentum: 0.0, eps: 1e-6 };
        for rule in [Rule::AdagradM { lr: 0.1, momentum: 0.3, eps: 1e-6 }, adam, plain] {
            let init = values(rows * width, 7);
            let make = || {
                let p = Tensor::from_vec(init.clone(), (rows, width), &dev).unwrap();
                let s = Tensor::from_vec(
                    values(rows * 2 * width, 8).iter().map(|x| x.abs()).collect::<Vec<_>>(),
                    (rows, 2 * width),
                    &dev,
                )
                .unwrap();
                (p, s)
            };
            let ((p1, s1), (p2, s2)) = (make(), make());
            for step in 0..3u64 {
                let ids: Vec<u32> = vec![5, 39, 5, 0, 12, 5, (step * 7) as u32];
                let groups = RowGroups::new(&ids);
                let g = Tensor::from_vec(values(ids.len() * width, 20 + step), (ids.len(), width), &dev).unwrap();
                sparse_step(rule, &p1, &s1, &g, &groups).unwrap();
                sparse_step_two_pass(rule, &p2, &s2, &g, &groups).unwrap();
            }
            // plain Adagrad: the fused pass leaves slot 1 alone; compare slot 0 only.
            let slots = if rule == plain { width } else { 2 * width };
            for (a, b) in [(p1, p2), (s1.narrow(1, 0, slots).unwrap(), s2.narrow(1, 0, slots).unwrap())] {
                let (a, b) = (
                    a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                );
                assert_eq!(a, b, "{rule:?}");
            }
        }
    }

    #[test]
    fn fused_dense_step_equals_the_two_pass_form() {
        // More elements than one chunk of the parallel pass, and not a multiple of it.
        let n = 40_000usize;
        let dev = Device::Cpu;
        let adam = Rule::Adam { lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, t: 3, weight_decay: 0.1 };
        let plain = Rule::AdagradM { lr: 0.1, momentum: 0.0, eps: 1e-6 };
        for rule in [Rule::AdagradM { lr: 0.1, momentum: 0.3, eps: 1e-6 }, adam, plain] {
            let make = || {
                let p = Tensor::from_vec(values(n, 7), n, &dev).unwrap();
                let s = Tensor::from_vec(values(2 * n, 8).iter().map(|x| x.abs()).collect::<Vec<_>>(), 2 * n, &dev)
                    .unwrap();
                (p, s)
            };
            let ((p1, s1), (p2, s2)) = (make(), make());
            for step in 0..3u64 {
                let g = Tensor::from_vec(values(n, 20 + step), n, &dev).unwrap();
                dense_step(rule, &p1, &s1, &g).unwrap();
                dense_step_two_pass(rule, &p2, &s2, &g).unwrap();
            }
            // plain Adagrad: the fused pass leaves slot 1 alone; compare slot 0 only.
            let slots = if rule == plain { n } else { 2 * n };
            for (a, b) in [(p1, p2), (s1.narrow(0, 0, slots).unwrap(), s2.narrow(0, 0, slots).unwrap())] {
                assert_eq!(a.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap(), "{rule:?}");
            }
        }
    }

    /// `(param, state)` of `rows × width` from fixed values (state non-negative).
    fn table(rows: usize, width: usize, dev: &Device) -> (Tensor, Tensor) {
        let p = Tensor::from_vec(values(rows * width, 7), (rows, width), dev).unwrap();
        let s = values(rows * 2 * width, 8).iter().map(|x| x.abs()).collect::<Vec<_>>();
        (p, Tensor::from_vec(s, (rows, 2 * width), dev).unwrap())
    }

    /// Two equal dense parameters `[m, n]` with their (flat) states.
    fn dense_pair(m: usize, n: usize, dev: &Device) -> ((Tensor, Tensor), (Tensor, Tensor)) {
        let flat = |(p, s): (Tensor, Tensor)| (p, s.reshape(2 * m * n).unwrap());
        (flat(table(m, n, dev)), flat(table(m, n, dev)))
    }

    /// The factors `(a, b)`, `[k, m]` and `[k, n]`, of a product-form gradient at `step`.
    fn factors(k: usize, m: usize, n: usize, step: u64, dev: &Device) -> (Tensor, Tensor) {
        let a = Tensor::from_vec(values(k * m, 30 + step), (k, m), dev).unwrap();
        (a, Tensor::from_vec(values(k * n, 40 + step), (k, n), dev).unwrap())
    }

    fn all(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// Adagrad with momentum, Adam(W), plain Adagrad (the fused passes' special case).
    fn three_rules() -> [Rule; 3] {
        [
            Rule::AdagradM { lr: 0.1, momentum: 0.3, eps: 1e-6 },
            Rule::Adam { lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, t: 3, weight_decay: 0.1 },
            Rule::AdagradM { lr: 0.1, momentum: 0.0, eps: 1e-6 },
        ]
    }

    #[test]
    fn product_form_dense_step_equals_the_materialised_gradient() {
        // 100 rows: four full blocks of 24 and a partial one.
        let (m, n, k) = (100usize, 70usize, 13usize);
        let dev = Device::Cpu;
        for rule in three_rules() {
            let ((p1, s1), (p2, s2)) = dense_pair(m, n, &dev);
            for step in 0..3u64 {
                let (a, b) = factors(k, m, n, step, &dev);
                dense_step_outer(rule, &p1, &s1, &a, &b).unwrap();
                let grad = crate::matmul::matmul(&a.t().unwrap(), &b).unwrap();
                dense_step(rule, &p2, &s2, &grad).unwrap();
            }
            assert_eq!(all(&p1), all(&p2), "{rule:?}");
            assert_eq!(all(&s1), all(&s2), "{rule:?}");
        }
    }

    #[test]
    fn step_then_product_steps_as_the_product_form_and_multiplies_the_stepped_weights() {
        // 100 rows: four full blocks of 24 and a partial one, run on one,
        // two and three threads (runs of blocks per thread, shares added).
        let (m, n, k, mx) = (100usize, 70usize, 13usize, 5usize);
        let dev = Device::Cpu;
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            for rule in three_rules() {
                let ((p1, s1), (p2, s2)) = dense_pair(m, n, &dev);
                for step in 0..3u64 {
                    let (a, b) = factors(k, m, n, step, &dev);
                    let x = Tensor::from_vec(values(mx * m, 50 + step), (mx, m), &dev).unwrap();
                    let got = pool.install(|| dense_step_outer_product(rule, &p1, &s1, (&a, &b), &x)).unwrap();
                    dense_step_outer(rule, &p2, &s2, &a, &b).unwrap();
                    // The parameters and state exactly; the product against f64 sums.
                    assert_eq!(all(&p1), all(&p2), "{rule:?}, {threads} threads");
                    assert_eq!(all(&s1), all(&s2), "{rule:?}, {threads} threads");
                    let (xv, pv, gv) = (all(&x), all(&p2), all(&got));
                    for i in 0..mx {
                        for j in 0..n {
                            let want: f64 = (0..m).map(|r| f64::from(xv[i * m + r]) * f64::from(pv[r * n + j])).sum();
                            let scale: f64 =
                                (0..m).map(|r| (f64::from(xv[i * m + r]) * f64::from(pv[r * n + j])).abs()).sum();
                            let err = (f64::from(gv[i * n + j]) - want).abs();
                            assert!(err <= 1e-6 * scale.max(1.0), "({i}, {j}): {} vs {want}", gv[i * n + j]);
                        }
                    }
                }
            }
        }
        // Operands that do not chain are errors naming the shapes.
        let (p, s) = table(4, 3, &dev);
        let s = s.reshape(24).unwrap();
        let (a, b) =
            (Tensor::zeros((2, 4), DType::F32, &dev).unwrap(), Tensor::zeros((2, 3), DType::F32, &dev).unwrap());
        let x = Tensor::zeros((5, 3), DType::F32, &dev).unwrap();
        let err = dense_step_outer_product(three_rules()[0], &p, &s, (&a, &b), &x).unwrap_err().to_string();
        assert!(err.contains("[5, 3]"), "{err}");
    }

    /// Step `step` of a sparse product-form case: the ids (`given`, then
    /// `m` product ids below 292 with repeats within the product part and
    /// across the two), their grouping and the given rows `[given, width]`.
    fn sparse_case(given: &[u32], m: usize, width: usize, step: u64) -> (Vec<u32>, RowGroups, Tensor) {
        let mut ids = given.to_vec();
        ids.extend((0..m as u32).map(|j| (j * 7 + step as u32 * 3) % 290 + (j % 3)));
        ids[given.len() + 5] = 4;
        ids[given.len() + 9] = ids[given.len() + 2];
        let rows = Tensor::from_vec(values(given.len() * width, 50 + step), (given.len(), width), &Device::Cpu);
        let groups = RowGroups::new(&ids);
        (ids, groups, rows.unwrap())
    }

    #[test]
    fn product_form_sparse_step_equals_the_materialised_gradient() {
        // More touched rows than one task (24), ids repeated within the
        // given rows, within the product rows and across the two.
        let (n_rows, width, k, m) = (300usize, 20usize, 9usize, 130usize);
        let dev = Device::Cpu;
        for rule in three_rules() {
            let ((p1, s1), (p2, s2)) = (table(n_rows, width, &dev), table(n_rows, width, &dev));
            for step in 0..3u64 {
                let (_, groups, rows) = sparse_case(&[17, 4, 17, (step * 31) as u32 % 300], m, width, step);
                let a = Tensor::from_vec(values(k * m, 60 + step), (k, m), &dev).unwrap();
                let b = Tensor::from_vec(values(k * width, 70 + step), (k, width), &dev).unwrap();
                sparse_step_outer(rule, &p1, &s1, &rows, (&a, &b), &groups).unwrap();
                let product = crate::matmul::matmul(&a.t().unwrap(), &b).unwrap();
                let grad = Tensor::cat(&[&rows, &product], 0).unwrap();
                sparse_step(rule, &p2, &s2, &grad, &groups).unwrap();
            }
            assert_eq!(all(&p1), all(&p2), "{rule:?}");
            assert_eq!(all(&s1), all(&s2), "{rule:?}");
        }
    }

    #[test]
    fn grouping_equals_a_sort_of_id_position_pairs() {
        let by_sort = |ids: &[u32]| {
            let mut keys: Vec<(u32, u32)> = ids.iter().enumerate().map(|(i, &id)| (id, i as u32)).collect();
            keys.sort_unstable();
            keys.iter().map(|&(_, i)| i).collect::<Vec<u32>>()
        };
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut draw = |below: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % below) as u32
        };
        for (n, below) in [(0, 1), (1, 1), (5, 3), (2144, 40_000), (3000, 300), (700, u64::from(u32::MAX) + 1)] {
            let ids: Vec<u32> = (0..n).map(|_| draw(below)).collect();
            let groups = RowGroups::new(&ids);
            assert_eq!(groups.sources, by_sort(&ids), "{n} ids below {below}");
            let mut distinct = ids.clone();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(groups.rows, distinct);
            for (g, &row) in groups.rows.iter().enumerate() {
                let sources = &groups.sources[groups.starts[g]..groups.starts[g + 1]];
                assert!(sources.iter().all(|&s| ids[s as usize] == row));
            }
        }
    }

    /// The bias stepped in the table's pass equals its own sparse step over
    /// the product rows' ids after the table's, bit for bit: repeated
    /// product ids (summed), a row named only by a given row (no bias step)
    /// and more rows than one task.
    #[test]
    fn bias_stepped_with_the_table_equals_its_own_sparse_step() {
        let (n_rows, width, k, m) = (300usize, 20usize, 9usize, 130usize);
        let dev = Device::Cpu;
        for rule in three_rules() {
            let ((p1, s1), (p2, s2)) = (table(n_rows, width, &dev), table(n_rows, width, &dev));
            let ((b1, bs1), (b2, bs2)) = (table(n_rows, 1, &dev), table(n_rows, 1, &dev));
            for step in 0..3u64 {
                // Row 299 only given (the product ids stay below 292).
                let given = [17, 4, 299, (step * 31) as u32 % 290];
                let (ids, groups, rows) = sparse_case(&given, m, width, step);
                let (a, b) = factors(k, m, width, step, &dev);
                let bias_grad = Tensor::from_vec(values(m, 80 + step), (m, 1), &dev).unwrap();
                let bias = (&b1, &bs1, &bias_grad);
                sparse_step_outer_with_bias(rule, (&p1, &s1), &rows, (&a, &b), &groups, bias).unwrap();
                sparse_step_outer(rule, &p2, &s2, &rows, (&a, &b), &groups).unwrap();
                sparse_step(rule, &b2, &bs2, &bias_grad, &RowGroups::new(&ids[given.len()..])).unwrap();
            }
            for (x, y) in [(&p1, &p2), (&s1, &s2), (&b1, &b2), (&bs1, &bs2)] {
                let bits = |t: &Tensor| all(t).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(x), bits(y), "{rule:?}");
            }
            assert_eq!(all(&b1)[299], all(&table(n_rows, 1, &dev).0)[299], "a row only given keeps its bias");
        }
        let (p, s) = table(10, 4, &dev);
        let (bias, bias_state) = table(9, 1, &dev);
        let (a, b) = factors(3, 2, 4, 0, &dev);
        let rows = Tensor::zeros((1, 4), DType::F32, &dev).unwrap();
        let grad = Tensor::zeros(2, DType::F32, &dev).unwrap();
        let err = sparse_step_outer_with_bias(
            three_rules()[2],
            (&p, &s),
            &rows,
            (&a, &b),
            &RowGroups::new(&[1, 2, 3]),
            (&bias, &bias_state, &grad),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("a bias of 9 values"), "{err}");
    }

    #[test]
    fn product_form_steps_with_shapes_that_do_not_fit_are_errors() {
        let dev = Device::Cpu;
        let rule = Rule::AdagradM { lr: 0.1, momentum: 0.0, eps: 1e-6 };
        let (p, s) = table(10, 4, &dev);
        let a = Tensor::zeros((3, 10), candle_core::DType::F32, &dev).unwrap();
        let b = Tensor::zeros((3, 5), candle_core::DType::F32, &dev).unwrap();
        let err = dense_step_outer(rule, &p, &s.reshape(80).unwrap(), &a, &b).unwrap_err();
        assert!(err.to_string().contains("parameter of"), "{err}");
        let rows = Tensor::zeros((1, 4), candle_core::DType::F32, &dev).unwrap();
        let b4 = Tensor::zeros((3, 4), candle_core::DType::F32, &dev).unwrap();
        // 1 given row + 10 product rows: position 11 does not exist.
        let err = sparse_step_outer(rule, &p, &s, &rows, (&a, &b4), &RowGroups::new(&[0; 12])).unwrap_err();
        assert!(err.to_string().contains("gradient row out of range"), "{err}");
        let err = sparse_step_outer(rule, &p, &s, &rows, (&a, &b), &RowGroups::new(&[0])).unwrap_err();
        assert!(err.to_string().contains("do not chain"), "{err}");
    }

    #[test]
    fn dense_adagrad_equals_sparse_over_all_rows() {
        let (rows, width) = (9usize, 5usize);
        let dev = Device::Cpu;
        let init = values(rows * width, 3);
        let grad = values(rows * width, 4);
        let rule = Rule::AdagradM { lr: 0.05, momentum: 0.3, eps: 1e-6 };
        let a = Tensor::from_vec(init.clone(), (rows, width), &dev).unwrap();
        let sa = Tensor::zeros((rows, 2 * width), candle_core::DType::F32, &dev).unwrap();
        let b = Tensor::from_vec(init, (rows, width), &dev).unwrap();
        let sb = Tensor::zeros(2 * rows * width, candle_core::DType::F32, &dev).unwrap();
        let g = Tensor::from_vec(grad, (rows, width), &dev).unwrap();
        let ids: Vec<u32> = (0..rows as u32).collect();
        for _ in 0..3 {
            sparse_step(rule, &a, &sa, &g, &RowGroups::new(&ids)).unwrap();
            dense_step(rule, &b, &sb, &g).unwrap();
        }
        let (a, b) =
            (a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-6);
        }
    }

    #[test]
    fn adam_and_adamw_match_their_definitions() {
        for wd in [0.0f64, 0.01] {
            adam_matches_its_definition(wd);
        }
    }

    fn adam_matches_its_definition(wd: f64) {
        let dev = Device::Cpu;
        let (lr, b1, b2, eps) = (0.01f64, 0.9f64, 0.999f64, 1e-8f64);
        let init = values(6, 5);
        let p = Tensor::from_vec(init.clone(), 6, &dev).unwrap();
        let s = Tensor::zeros(12, candle_core::DType::F32, &dev).unwrap();
        let mut want: Vec<f64> = init.iter().map(|&x| f64::from(x)).collect();
        let (mut m, mut v) = (vec![0f64; 6], vec![0f64; 6]);
        for t in 1..=5u64 {
            let g = values(6, 20 + t);
            let rule = Rule::Adam {
                lr: lr as f32,
                beta1: b1 as f32,
                beta2: b2 as f32,
                eps: eps as f32,
                t,
                weight_decay: wd as f32,
            };
            dense_step(rule, &p, &s, &Tensor::from_vec(g.clone(), 6, &dev).unwrap()).unwrap();
            for j in 0..6 {
                want[j] *= 1.0 - lr * wd;
                let gj = f64::from(g[j]);
                m[j] = b1 * m[j] + (1.0 - b1) * gj;
                v[j] = b2 * v[j] + (1.0 - b2) * gj * gj;
                let mh = m[j] / (1.0 - b1.powi(t as i32));
                let vh = v[j] / (1.0 - b2.powi(t as i32));
                want[j] -= lr * mh / (vh.sqrt() + eps);
            }
        }
        let got = p.to_vec1::<f32>().unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!((f64::from(*g) - w).abs() < 1e-5, "{g} vs {w}");
        }
    }

    #[test]
    fn out_of_range_rows_are_errors_not_panics() {
        let dev = Device::Cpu;
        let p = Tensor::zeros((4, 2), candle_core::DType::F32, &dev).unwrap();
        let s = Tensor::zeros((4, 4), candle_core::DType::F32, &dev).unwrap();
        let g = Tensor::zeros((1, 2), candle_core::DType::F32, &dev).unwrap();
        let rule = Rule::AdagradM { lr: 0.1, momentum: 0.0, eps: 1e-6 };
        let err = sparse_step(rule, &p, &s, &g, &RowGroups::new(&[4])).unwrap_err();
        assert!(err.to_string().contains("row id 4 outside a table of 4 rows"), "{err}");
    }

    #[test]
    fn groups_sum_repeats_in_order() {
        let g = RowGroups::new(&[5, 2, 5, 9, 2]);
        assert_eq!(g.rows, vec![2, 5, 9]);
        assert_eq!(g.starts, vec![0, 2, 4, 5]);
        assert_eq!(g.sources, vec![1, 4, 0, 2, 3]);
    }

    #[test]
    fn the_grouping_of_a_tail_equals_grouping_the_tail_itself() {
        // By hand: [5, 2, 5, 9, 2] from position 2 is [5, 9, 2].
        let g = RowGroups::new(&[5, 2, 5, 9, 2]).suffix(2);
        assert_eq!(
            (g.rows.as_slice(), g.starts.as_slice(), g.sources.as_slice()),
            (&[2, 5, 9][..], &[0, 1, 2, 3][..], &[2, 0, 1][..])
        );
        // Random ids with repeats, every offset (the whole list and an empty tail too).
        let ids: Vec<u32> = values(60, 11).iter().map(|v| (v.abs() * 1000.0) as u32 % 17).collect();
        let all = RowGroups::new(&ids);
        for offset in 0..=ids.len() {
            assert_eq!(all.suffix(offset), RowGroups::new(&ids[offset..]), "offset {offset}");
        }
    }

    #[test]
    fn hand_built_groups_that_would_misindex_are_errors() {
        let dev = Device::Cpu;
        let p = Tensor::zeros((6, 2), candle_core::DType::F32, &dev).unwrap();
        let s = Tensor::zeros((6, 4), candle_core::DType::F32, &dev).unwrap();
        let g = Tensor::zeros((3, 2), candle_core::DType::F32, &dev).unwrap();
        let rule = Rule::AdagradM { lr: 0.1, momentum: 0.0, eps: 1e-6 };
        let bad = [
            // an empty group
            RowGroups { rows: vec![1, 2], starts: vec![0, 0, 3], sources: vec![0, 1, 2] },
            // a row twice
            RowGroups { rows: vec![2, 2], starts: vec![0, 1, 3], sources: vec![0, 1, 2] },
            // starts that leave sources out
            RowGroups { rows: vec![1], starts: vec![0, 2], sources: vec![0, 1, 2] },
        ];
        for groups in &bad {
            let err = sparse_step_two_pass(rule, &p, &s, &g, groups).unwrap_err().to_string();
            assert!(err.contains("row groups"), "{groups:?}: {err}");
        }
        assert!(sparse_step_two_pass(rule, &p, &s, &g, &RowGroups::new(&[1, 4, 1])).is_ok());
    }
}
