//! Matrix products on the CPU with the thread count chosen by the product's
//! size, two independent products run side by side, and a row gather.
//!
//! candle's CPU matmul splits every product over all rayon threads. At
//! GRU4Rec's sizes (`[32, 100] · [100, 2,080]`) the split costs more than it
//! saves: on two cores a training epoch of the setting (a) ran faster
//! with one thread than with two. Here a product under [`PARALLEL_MACS`]
//! multiply-adds runs on the calling thread, a larger one as one block per
//! thread, and [`matmul_pair`] runs two independent small products on
//! two threads. Other devices (CUDA) and
//! other dtypes go to candle's `matmul` unchanged.

use candle_core::{bail, DType, Device, Result, Storage, Tensor};
use gemm::Parallelism;

/// Products with at least this many multiply-adds are split in blocks, one
/// per thread. 4M until the training loops kept rayon's workers awake
/// (`pool::KeepAwake`); with no wake-up to pay, splitting the 100-unit GRU's
/// `[32, 100] · [100, 300]` products too is +5% at setting (a). gemm's
/// kernels for the split blocks may round those sums differently from the
/// whole product's, so results depend on the thread count (as they did for
/// the larger products already).
pub const PARALLEL_MACS: usize = 1 << 19;

/// Products with at most this many rows and a transposed table on the right
/// are computed column-major (see `cpu_matmul`).
const SMALL_M: usize = 64;

/// `a · b` for 2-D tensors (`[m, k] · [k, n]`, any strides, e.g. a `.t()` view).
///
/// # Errors
/// Shapes that do not chain, or a failing candle op on other devices.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (m, k) = a.dims2()?;
    let (k2, n) = b.dims2()?;
    if k != k2 {
        bail!("matmul: [{m}, {k}] · [{k2}, {n}] do not chain");
    }
    if !matches!(a.device(), Device::Cpu) || a.dtype() != DType::F32 || b.dtype() != DType::F32 {
        return a.matmul(b);
    }
    let threads = if m * n * k >= PARALLEL_MACS { rayon::current_num_threads() } else { 1 };
    cpu_matmul(a, b, (m, k, n), threads)
}

/// `(a · b, c · d)`, the two products on two threads when each is small
/// enough to run on one (see [`PARALLEL_MACS`]).
///
/// # Errors
/// As [`matmul`].
pub fn matmul_pair(a: &Tensor, b: &Tensor, c: &Tensor, d: &Tensor) -> Result<(Tensor, Tensor)> {
    let small = |x: &Tensor, y: &Tensor| -> Result<bool> {
        let ((m, k), (_, n)) = (x.dims2()?, y.dims2()?);
        Ok(m * n * k < PARALLEL_MACS)
    };
    if matches!(a.device(), Device::Cpu) && small(a, b)? && small(c, d)? && rayon::current_num_threads() > 1 {
        let (ab, cd) = rayon::join(|| matmul(a, b), || matmul(c, d));
        return Ok((ab?, cd?));
    }
    Ok((matmul(a, b)?, matmul(c, d)?))
}

fn cpu_matmul(a: &Tensor, b: &Tensor, (m, k, n): (usize, usize, usize), threads: usize) -> Result<Tensor> {
    let mut dst = Vec::new();
    cpu_matmul_append(a, b, (m, k, n), threads, &mut dst)?;
    Tensor::from_vec(dst, (m, n), a.device())
}

/// `a · b` (`[m, k] · [k, n]`, f32 on the CPU) appended to `dst` as `m` more
/// rows of `n` values: a caller that needs the product as a plain vector
/// (GRU4Rec's training step hands its scores to the loss kernel this way)
/// or after other rows gets it written in place instead of copied.
///
/// # Errors
/// Shapes that do not chain, tensors that are not f32 on the CPU.
pub fn matmul_append(a: &Tensor, b: &Tensor, dst: &mut Vec<f32>) -> Result<()> {
    let (m, k) = a.dims2()?;
    let (k2, n) = b.dims2()?;
    if k != k2 {
        bail!("matmul: [{m}, {k}] · [{k2}, {n}] do not chain");
    }
    let threads = if m * n * k >= PARALLEL_MACS { rayon::current_num_threads() } else { 1 };
    cpu_matmul_append(a, b, (m, k, n), threads, dst)
}

// Unsafe: gemm takes raw pointers and strides (layouts are bounds-checked first).
#[allow(unsafe_code)]
fn cpu_matmul_append(
    a: &Tensor,
    b: &Tensor,
    (m, k, n): (usize, usize, usize),
    threads: usize,
    out: &mut Vec<f32>,
) -> Result<()> {
    let (sa, la) = a.storage_and_layout();
    let (sb, lb) = b.storage_and_layout();
    let (Storage::Cpu(candle_core::CpuStorage::F32(va)), Storage::Cpu(candle_core::CpuStorage::F32(vb))) = (&*sa, &*sb)
    else {
        bail!("matmul: expected f32 tensors on the CPU");
    };
    let (ra, ca) = (la.stride()[0], la.stride()[1]);
    let (rb, cb) = (lb.stride()[0], lb.stride()[1]);
    // Every element the strides can reach must lie inside the storage.
    let reach = |start: usize, rows: usize, cols: usize, rs: usize, cs: usize, len: usize| {
        rows == 0 || cols == 0 || start + (rows - 1) * rs + (cols - 1) * cs < len
    };
    if !reach(la.start_offset(), m, k, ra, ca, va.len()) || !reach(lb.start_offset(), k, n, rb, cb, vb.len()) {
        bail!("matmul: a layout reaches outside its storage");
    }
    if m == 0 || n == 0 || k == 0 {
        out.resize(out.len() + m * n, 0.0);
        return Ok(());
    }
    // Not zeroed first: gemm (read_dst = false) writes every element of the
    // blocks below, which cover all m × n (the zeroing was ≈ 4% of a
    // training step at 480 units, perf).
    out.reserve(m * n);
    {
        let (pa, pb) = (va[la.start_offset()..].as_ptr() as usize, vb[lb.start_offset()..].as_ptr() as usize);
        // A few rows times a transposed view of a row-major table (`h · Wᵀ`,
        // e.g. the scores of the sampled items): gemm, writing a row-major
        // block, would first repack all of W (the operand along the output's
        // rows must be contiguous for its micro-kernel), ≈ 30% of such a product
        // at GRU4Rec's sizes. Written column-major instead, W is read in place
        // and only the few rows of `a` are packed; the block is then transposed
        // into place. Same sums in the same order (bit-identical, tested).
        let col_major = m <= SMALL_M && rb == 1 && cb != 1;
        let part = |rows: std::ops::Range<usize>, cols: std::ops::Range<usize>, dst: usize| {
            let (rs, cs) = (rows.len(), cols.len());
            let mut tmp: Vec<f32> = Vec::new();
            let (out, out_cs, out_rs) = if col_major {
                tmp.reserve_exact(rs * cs);
                (tmp.as_mut_ptr(), rs as isize, 1)
            } else {
                // SAFETY: inside the m × n buffer (rows, cols are in range).
                (unsafe { (dst as *mut f32).add(rows.start * n + cols.start) }, 1, n as isize)
            };
            // SAFETY: the block `rows × cols` of the m × n row-major `dst`
            // (all pointers passed as addresses so the closure can cross threads) is
            // written by this call only: the blocks of the two threads are
            // disjoint (or `tmp`, this call's own rs × cs buffer, column-major).
            // The operands are read within their storages (checked
            // above) through strides taken from their layouts; dst is not read.
            unsafe {
                gemm::gemm(
                    rs,
                    cs,
                    k,
                    out,
                    out_cs,
                    out_rs,
                    false,
                    (pa as *const f32).add(rows.start * ra),
                    ca as isize,
                    ra as isize,
                    (pb as *const f32).add(cols.start * cb),
                    cb as isize,
                    rb as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
            }
            if col_major {
                // SAFETY: gemm wrote all rs × cs elements of `tmp`.
                unsafe { tmp.set_len(rs * cs) };
                for (j, col) in tmp.chunks_exact(rs).enumerate() {
                    for (i, &x) in col.iter().enumerate() {
                        // SAFETY: element (rows.start + i, cols.start + j) of
                        // the m × n buffer, inside this call's block.
                        unsafe { *(dst as *mut f32).add((rows.start + i) * n + cols.start + j) = x };
                    }
                }
            }
        };
        let at = out.spare_capacity_mut().as_mut_ptr() as usize;
        let blocks = threads.min(m.max(n)).max(1);
        if blocks > 1 {
            // One block per thread along the longer side.
            use rayon::prelude::*;
            let along_rows = m >= n;
            let len = if along_rows { m } else { n };
            (0..blocks).into_par_iter().for_each(|b| {
                let range = b * len / blocks..(b + 1) * len / blocks;
                if along_rows {
                    part(range, 0..n, at);
                } else {
                    part(0..m, range, at);
                }
            });
        } else {
            part(0..m, 0..n, at);
        }
    }
    // SAFETY: every element of the m × n elements after the old length was
    // written by gemm above (capacity reserved).
    unsafe { out.set_len(out.len() + m * n) };
    Ok(())
}

/// Rows `ids` of a 2-D table, `[ids.len(), width]`: on the CPU copied by
/// two threads when there are many (GRU4Rec gathers ≈ 2,000 output rows per
/// step), elsewhere candle's `index_select`.
///
/// # Errors
/// An id outside the table, or a failing candle op on other devices.
pub fn gather_rows(table: &Tensor, ids: &[u32]) -> Result<Tensor> {
    let (rows, width) = table.dims2()?;
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= rows) {
        bail!("gather: row {bad} outside a table of {rows} rows");
    }
    if !matches!(table.device(), Device::Cpu) || table.dtype() != DType::F32 || !table.is_contiguous() {
        let idx = Tensor::from_slice(ids, ids.len(), table.device())?;
        return table.index_select(&idx, 0);
    }
    let (storage, layout) = table.storage_and_layout();
    let Storage::Cpu(candle_core::CpuStorage::F32(v)) = &*storage else {
        bail!("gather: expected an f32 table on the CPU");
    };
    let src = &v[layout.start_offset()..layout.start_offset() + rows * width];
    // Filled row by row without zeroing first (every element is written below).
    let mut dst: Vec<f32> = Vec::with_capacity(ids.len() * width);
    if width > 0 {
        let copy = |(k, out): (usize, &mut [std::mem::MaybeUninit<f32>])| {
            // The chunk's first rows, then each row a few ids ahead.
            for &first in ids.iter().skip(k * GATHER_CHUNK).take(crate::optim::PREFETCH_AHEAD) {
                crate::optim::prefetch(&src[first as usize * width..(first as usize + 1) * width]);
            }
            for (j, row) in out.chunks_exact_mut(width).enumerate() {
                // Random rows of a table larger than the cache: ask for the
                // rows a few ids ahead (as the sparse optimiser step does).
                if let Some(&ahead) = ids.get(k * GATHER_CHUNK + j + crate::optim::PREFETCH_AHEAD) {
                    crate::optim::prefetch(&src[ahead as usize * width..(ahead as usize + 1) * width]);
                }
                let r = ids[k * GATHER_CHUNK + j] as usize;
                for (d, &x) in row.iter_mut().zip(&src[r * width..(r + 1) * width]) {
                    d.write(x);
                }
            }
        };
        let spare = &mut dst.spare_capacity_mut()[..ids.len() * width];
        if ids.len() * width >= 1 << 16 {
            use rayon::prelude::*;
            spare.par_chunks_mut(GATHER_CHUNK * width).enumerate().for_each(copy);
        } else {
            spare.chunks_mut(GATHER_CHUNK * width).enumerate().for_each(copy);
        }
    }
    // SAFETY: the chunks above cover all ids.len() × width elements, each
    // written once (width 0: the length is 0).
    #[allow(unsafe_code)]
    unsafe {
        dst.set_len(ids.len() * width)
    };
    drop(storage);
    Tensor::from_vec(dst, (ids.len(), width), table.device())
}

/// Runs `f` on the contiguous f32 values of the CPU tensors `a` and `table`
/// (`None` for other devices or dtypes).
fn with_cpu_pair<R>(a: &Tensor, table: &Tensor, f: impl FnOnce(&[f32], &[f32]) -> R) -> Result<Option<R>> {
    let cpu = matches!(a.device(), Device::Cpu) && matches!(table.device(), Device::Cpu);
    if !cpu || a.dtype() != DType::F32 || table.dtype() != DType::F32 {
        return Ok(None);
    }
    let (a, table) = (a.contiguous()?, table.contiguous()?);
    let (sa, la) = a.storage_and_layout();
    let (st, lt) = table.storage_and_layout();
    let (Storage::Cpu(candle_core::CpuStorage::F32(va)), Storage::Cpu(candle_core::CpuStorage::F32(vt))) = (&*sa, &*st)
    else {
        return Ok(None);
    };
    Ok(Some(f(
        &va[la.start_offset()..la.start_offset() + a.elem_count()],
        &vt[lt.start_offset()..lt.start_offset() + table.elem_count()],
    )))
}

/// Checks `ids` against a `[rows, w]` table and `a`'s columns against `want`.
fn check_rows(what: &str, a: &Tensor, want: usize, table: &Tensor, ids: &[u32]) -> Result<(usize, usize)> {
    let (m, k) = a.dims2()?;
    let (rows, w) = table.dims2()?;
    if k != want {
        bail!("{what}: [{m}, {k}] against {want} columns expected");
    }
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= rows) {
        bail!("{what}: row {bad} outside a table of {rows} rows");
    }
    Ok((m, w))
}

/// `y · table[ids]ᵀ` appended to `dst` (`[m, ids.len()]` row-major; `y`
/// `[m, w]`, the table `[rows, w]`): the scores of the picked rows. On a CPU
/// with AVX-512 the rows are read in place ([`crate::rows::scores_of_rows`]),
/// otherwise gathered and multiplied by gemm ([`gather_rows`],
/// [`matmul_append`]).
///
/// # Errors
/// Shapes that do not fit, an id outside the table, a failing candle op.
pub fn scores_rows_append(y: &Tensor, table: &Tensor, ids: &[u32], dst: &mut Vec<f32>) -> Result<()> {
    let w = table.dims2()?.1;
    let (m, _) = check_rows("scores of rows", y, w, table, ids)?;
    let n = ids.len();
    let start = dst.len();
    dst.resize(start + m * n, 0.0);
    let done = with_cpu_pair(y, table, |yv, tv| crate::rows::scores_of_rows(yv, m, tv, w, ids, &mut dst[start..]))?;
    if done != Some(true) {
        dst.truncate(start);
        matmul_append(y, &gather_rows(table, ids)?.t()?, dst)?;
    }
    Ok(())
}

/// `y · table[ids]ᵀ`, `[m, ids.len()]` ([`scores_rows_append`]; on other
/// devices gathered and multiplied there).
///
/// # Errors
/// As [`scores_rows_append`].
pub fn scores_rows(y: &Tensor, table: &Tensor, ids: &[u32]) -> Result<Tensor> {
    if !matches!(y.device(), Device::Cpu) {
        return matmul(y, &gather_rows(table, ids)?.t()?);
    }
    let mut out = Vec::new();
    scores_rows_append(y, table, ids, &mut out)?;
    Tensor::from_vec(out, (y.dim(0)?, ids.len()), y.device())
}

/// `d · table[ids]`, `[m, w]` (`d` `[m, ids.len()]`, the table `[rows, w]`):
/// the gradient of the states through the picked rows. On a CPU with
/// AVX-512 the rows are read in place ([`crate::rows::product_with_rows`]),
/// otherwise gathered and multiplied ([`gather_rows`], [`matmul`]).
///
/// # Errors
/// As [`scores_rows_append`].
pub fn product_rows(d: &Tensor, table: &Tensor, ids: &[u32]) -> Result<Tensor> {
    let (m, w) = check_rows("product with rows", d, ids.len(), table, ids)?;
    let mut out = vec![0f32; m * w];
    let done = with_cpu_pair(d, table, |dv, tv| crate::rows::product_with_rows(dv, m, tv, w, ids, &mut out))?;
    if done == Some(true) {
        return Tensor::from_vec(out, (m, w), d.device());
    }
    matmul(d, &gather_rows(table, ids)?)
}

/// The column sums of a 2-D tensor, `[cols]`: a bias gradient. On the CPU
/// (f32) the rows are added in order into one running row, which vectorises;
/// candle's reduction over dimension 0 walks each column with a stride and
/// was ≈ 4% of a GRU4Rec step at 480 units. Same additions in the same order
/// as candle's (`0 + x₀ + x₁ + …` per column): bit-identical, tested.
///
/// # Errors
/// A tensor that is not 2-D; a failing candle op on other devices.
pub fn column_sums(t: &Tensor) -> Result<Tensor> {
    let (rows, cols) = t.dims2()?;
    if !matches!(t.device(), Device::Cpu) || t.dtype() != DType::F32 || !t.is_contiguous() {
        return t.sum(0);
    }
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(candle_core::CpuStorage::F32(v)) = &*storage else {
        bail!("column sums: expected an f32 tensor on the CPU");
    };
    let src = &v[layout.start_offset()..layout.start_offset() + rows * cols];
    let mut acc = vec![0f32; cols];
    crate::simd::dispatch(|| {
        for row in src.chunks_exact(cols.max(1)) {
            for (a, &x) in acc.iter_mut().zip(row) {
                *a += x;
            }
        }
    });
    drop(storage);
    Tensor::from_vec(acc, cols, t.device())
}

/// `t + bias` for a 2-D `t` `[rows, cols]` and `cols` bias values: on the
/// CPU (f32, contiguous) one pass, its rows split between the threads when
/// large; candle's broadcast add indexes every element through the
/// broadcast layout on one thread (≈ 40 µs for GRU4Rec's 48 × 1,440 at
/// setting (b), the other core idle). One addition per element, as
/// `broadcast_add`: bit-identical, tested.
///
/// # Errors
/// A tensor that is not 2-D; a failing candle op on other devices.
pub fn add_to_rows(t: &Tensor, bias: &Tensor) -> Result<Tensor> {
    use rayon::prelude::*;
    let (rows, cols) = t.dims2()?;
    let fits = |x: &Tensor| matches!(x.device(), Device::Cpu) && x.dtype() == DType::F32 && x.is_contiguous();
    if !fits(t) || !fits(bias) || bias.elem_count() != cols || rows * cols == 0 {
        return t.broadcast_add(bias);
    }
    let (ts, tl) = t.storage_and_layout();
    let (bs, bl) = bias.storage_and_layout();
    let (Storage::Cpu(candle_core::CpuStorage::F32(tv)), Storage::Cpu(candle_core::CpuStorage::F32(bv))) = (&*ts, &*bs)
    else {
        bail!("add to rows: expected f32 tensors on the CPU");
    };
    let src = &tv[tl.start_offset()..tl.start_offset() + rows * cols];
    let b = &bv[bl.start_offset()..bl.start_offset() + cols];
    let per = rows_per_task(rows, cols);
    let mut out = vec![0f32; rows * cols];
    out.par_chunks_mut(per * cols).zip(src.par_chunks(per * cols)).for_each(|(o, x)| {
        crate::simd::dispatch(|| {
            for (o, x) in o.chunks_exact_mut(cols).zip(x.chunks_exact(cols)) {
                for ((o, &x), &b) in o.iter_mut().zip(x).zip(b) {
                    *o = x + b;
                }
            }
        })
    });
    drop((ts, bs));
    Tensor::from_vec(out, (rows, cols), t.device())
}

/// Rows per task of an element-wise pass whose output is `rows × width`
/// floats ([`add_to_rows`], the fused GRU stages of `crate::gru`): all of
/// them below [`PAR_ELEMS`], else an equal share per thread. At 480 units
/// and 48 rows such a pass on one thread left the other idle for 30–40 µs
/// of a GRU4Rec step, several times per step.
pub(crate) fn rows_per_task(rows: usize, width: usize) -> usize {
    if rows * width < PAR_ELEMS {
        rows.max(1)
    } else {
        rows.div_ceil(rayon::current_num_threads().max(1)).max(1)
    }
}

/// Output elements from which [`rows_per_task`] splits the rows between the threads.
const PAR_ELEMS: usize = 16_384;

/// Rows per task of [`gather_rows`].
const GATHER_CHUNK: usize = 256;

/// Full score rows on the CPU straight into a caller's buffer:
/// `out[r, j] = bias[j] + Σ_k h[r, k]·table[j, k]` for `h` `[m, k]`,
/// `table` `[n, k]` and `bias` `n` values (e.g. `[n, 1]`), `out` `m × n`
/// row-major. The same product and bias as `matmul(h, tableᵀ) + biasᵀ`
/// without three `m × n` temporaries (the product, the sum, a host copy):
/// at 512 rows × 40,000 items those copies and their page faults were half
/// of an evaluation step (perf). Rows are split over the rayon threads when
/// the product is large.
///
/// # Errors
/// Shapes that do not fit, tensors not f32 on the CPU.
// Unsafe: gemm takes raw pointers and strides (lengths are checked first).
#[allow(unsafe_code)]
pub fn scores_into(h: &Tensor, table: &Tensor, bias: &Tensor, out: &mut [f32]) -> Result<()> {
    let (m, k) = h.dims2()?;
    let (n, k2) = table.dims2()?;
    if k != k2 || bias.elem_count() != n || out.len() != m * n {
        bail!(
            "scores: states [{m}, {k}], table [{n}, {k2}], {} biases and an output of {} do not fit",
            bias.elem_count(),
            out.len()
        );
    }
    let (h, table, bias) = (h.contiguous()?, table.contiguous()?, bias.contiguous()?);
    let (sh, lh) = h.storage_and_layout();
    let (st, lt) = table.storage_and_layout();
    let (sb, lb) = bias.storage_and_layout();
    let (
        Storage::Cpu(candle_core::CpuStorage::F32(vh)),
        Storage::Cpu(candle_core::CpuStorage::F32(vt)),
        Storage::Cpu(candle_core::CpuStorage::F32(vb)),
    ) = (&*sh, &*st, &*sb)
    else {
        bail!("scores: expected f32 tensors on the CPU");
    };
    let hv = &vh[lh.start_offset()..lh.start_offset() + m * k];
    let tv = &vt[lt.start_offset()..lt.start_offset() + n * k];
    let bv = &vb[lb.start_offset()..lb.start_offset() + n];
    if m == 0 || n == 0 {
        return Ok(());
    }
    let block = |rows: std::ops::Range<usize>, dst: &mut [f32]| {
        for row in dst.chunks_exact_mut(n) {
            row.copy_from_slice(bv);
        }
        if k == 0 {
            return;
        }
        // SAFETY: `dst` is exactly the rows `rows` of `out` (`rows.len() × n`,
        // row stride n); `hv` holds those rows of h (`[m, k]`, row stride k)
        // and `tv` the n × k table read as its transpose (element (kk, j) at
        // j·k + kk): every index the strides reach is inside the slices.
        unsafe {
            gemm::gemm(
                rows.len(),
                n,
                k,
                dst.as_mut_ptr(),
                1,
                n as isize,
                true,
                hv.as_ptr().add(rows.start * k),
                1,
                k as isize,
                tv.as_ptr(),
                k as isize,
                1,
                1.0,
                1.0,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
    };
    let threads = if m * n * k >= PARALLEL_MACS { rayon::current_num_threads().min(m) } else { 1 };
    if threads > 1 {
        use rayon::prelude::*;
        let per = m.div_ceil(threads);
        out.par_chunks_mut(per * n).enumerate().for_each(|(b, dst)| {
            let start = b * per;
            block(start..start + dst.len() / n, dst);
        });
    } else {
        block(0..m, out);
    }
    Ok(())
}

/// One block of a product into a caller's buffer, on the calling thread:
/// `out[i, c] = Σ_j lhs[i·lhs_rs + j·lhs_cs] · rhs[j·n + c]` for `i < mr`,
/// `j < k`, `c < n`; `out` is `mr × n` row-major and `rhs` `[k, n]`
/// row-major. The optimiser's product-form gradients (`aᵀ·b` computed a
/// block at a time, `crate::optim`) use it; the sums are gemm's, as in
/// [`matmul`].
///
/// # Panics
/// When a buffer is shorter than the strides reach (a caller's bug).
pub(crate) fn gemm_block(
    out: &mut [f32],
    (mr, n, k): (usize, usize, usize),
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
) {
    let lhs = Strided { data: lhs, rs: lhs_rs, cs: lhs_cs };
    gemm_strided(out, n, (mr, n, k), lhs, Strided { data: rhs, rs: n, cs: 1 }, false);
}

/// A strided operand of [`gemm_strided`]: element `(i, j)` at `data[i·rs + j·cs]`.
#[derive(Debug, Clone, Copy)]
pub struct Strided<'a> {
    /// The elements the strides reach.
    pub data: &'a [f32],
    /// Row stride.
    pub rs: usize,
    /// Column stride.
    pub cs: usize,
}

/// `out = lhs · rhs`, or `out += lhs · rhs` with `accumulate`, on the calling
/// thread: `out` is `m × n` with row stride `out_rs`, `lhs` `m × k`, `rhs`
/// `k × n`, both strided. The sums are gemm's, as in [`matmul`].
///
/// # Panics
/// When a buffer is shorter than the strides reach (a caller's bug).
// Unsafe: gemm takes raw pointers and strides (the reach is checked first).
#[allow(unsafe_code)]
pub fn gemm_strided(
    out: &mut [f32],
    out_rs: usize,
    (m, n, k): (usize, usize, usize),
    lhs: Strided<'_>,
    rhs: Strided<'_>,
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        (m - 1) * out_rs + n <= out.len() && (m == 1 || n <= out_rs),
        "gemm_strided: output too short or rows overlapping"
    );
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                out[i * out_rs..i * out_rs + n].fill(0.0);
            }
        }
        return;
    }
    assert!((m - 1) * lhs.rs + (k - 1) * lhs.cs < lhs.data.len(), "gemm_strided: left operand too short");
    assert!((k - 1) * rhs.rs + (n - 1) * rhs.cs < rhs.data.len(), "gemm_strided: right operand too short");
    // SAFETY: every element the strides reach lies inside the slices (checked
    // above); `out` is exclusively borrowed.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            out_rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(rows: usize, cols: usize, seed: u32) -> Tensor {
        let v: Vec<f32> = (0..rows * cols)
            .map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
    }

    fn naive(a: &Tensor, b: &Tensor) -> Vec<f64> {
        let (a, b) = (a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
        let mut out = Vec::new();
        for row in &a {
            for j in 0..b[0].len() {
                out.push(row.iter().zip(&b).map(|(&x, r)| f64::from(x) * f64::from(r[j])).sum());
            }
        }
        out
    }

    fn close(got: &Tensor, want: &[f64]) {
        let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((f64::from(*g) - w).abs() < 1e-4 * w.abs().max(1.0), "{g} vs {w}");
        }
    }

    #[test]
    fn products_match_a_naive_f64_product_for_every_layout_and_thread_count() {
        let a = table(7, 5, 1);
        let b = table(5, 9, 2);
        let want = naive(&a, &b);
        close(&matmul(&a, &b).unwrap(), &want);
        for threads in [1, 2, 3] {
            close(&cpu_matmul(&a, &b, (7, 5, 9), threads).unwrap(), &want);
        }
        // Transposed views and a narrowed (offset) operand.
        let at = table(5, 7, 1).t().unwrap();
        let bt = table(9, 5, 2).t().unwrap();
        close(&matmul(&at, &bt).unwrap(), &naive(&at, &bt));
        let wide = table(7, 12, 3);
        let part = wide.narrow(1, 4, 5).unwrap();
        close(&matmul(&part, &b).unwrap(), &naive(&part, &b));
        let (x, y) = matmul_pair(&a, &b, &at, &bt).unwrap();
        close(&x, &want);
        close(&y, &naive(&at, &bt));
        // A big product (threads split) agrees too.
        let (p, q) = (table(64, 512, 4), table(512, 600, 5));
        close(&matmul(&p, &q).unwrap(), &naive(&p, &q));
        assert!(matmul(&a, &a).unwrap_err().to_string().contains("do not chain"));
        // A few rows times a transposed table (written column-major, then
        // transposed): as the naive product, and bit-identical to the same
        // product with the table copied row-major first, on one and two threads.
        let (h, w) = (table(48, 200, 6), table(700, 200, 7));
        let wt = w.t().unwrap();
        let want = naive(&h, &wt);
        let plain = cpu_matmul(&h, &wt.contiguous().unwrap(), (48, 200, 700), 1).unwrap();
        for threads in [1, 2] {
            let got = cpu_matmul(&h, &wt, (48, 200, 700), threads).unwrap();
            close(&got, &want);
            assert_eq!(
                got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                plain.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
        }
    }

    #[test]
    fn column_sums_equal_candles_sum_over_rows_bit_for_bit() {
        for (rows, cols) in [(48, 1440), (1, 7), (5, 1), (0, 3)] {
            let t = table(rows, cols, 4);
            let want = t.sum(0).unwrap().to_vec1::<f32>().unwrap();
            let got = column_sums(&t).unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(
                got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            );
        }
        // A transposed (non-contiguous) view goes through candle.
        let t = table(6, 4, 5);
        assert_eq!(
            column_sums(&t.t().unwrap()).unwrap().to_vec1::<f32>().unwrap(),
            t.t().unwrap().sum(0).unwrap().to_vec1::<f32>().unwrap()
        );
    }

    #[test]
    fn rows_plus_bias_equal_candles_broadcast_add_bit_for_bit() {
        for (rows, cols) in [(48, 1440), (1, 7), (5, 1), (0, 3), (300, 64)] {
            let (t, b) = (table(rows, cols, 6), table(1, cols, 7).flatten_all().unwrap());
            let want = t.broadcast_add(&b).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let got = add_to_rows(&t, &b).unwrap();
            assert_eq!(got.dims(), [rows, cols]);
            let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(
                got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            );
        }
        // A transposed (non-contiguous) view goes through candle.
        let (t, b) = (table(6, 4, 8), table(1, 6, 9).flatten_all().unwrap());
        assert_eq!(
            add_to_rows(&t.t().unwrap(), &b).unwrap().to_vec2::<f32>().unwrap(),
            t.t().unwrap().broadcast_add(&b).unwrap().to_vec2::<f32>().unwrap()
        );
    }

    #[test]
    fn appended_products_follow_the_rows_already_there() {
        let (a, b) = (table(64, 300, 1), table(300, 500, 2));
        let mut buf = vec![7.0f32; 3 * 500];
        matmul_append(&a, &b, &mut buf).unwrap();
        assert_eq!(buf.len(), (3 + 64) * 500);
        assert!(buf[..3 * 500].iter().all(|&x| x == 7.0));
        let got = Tensor::from_vec(buf[3 * 500..].to_vec(), (64, 500), &Device::Cpu).unwrap();
        close(&got, &naive(&a, &b));
        // k = 0: zeros; shapes that do not chain: an error, nothing appended.
        let mut buf = vec![1.0f32];
        matmul_append(&table(2, 0, 1), &table(0, 3, 2), &mut buf).unwrap();
        assert_eq!(buf, vec![1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        assert!(matmul_append(&a, &a, &mut buf).unwrap_err().to_string().contains("do not chain"));
        assert_eq!(buf.len(), 7);
    }

    #[test]
    fn gathered_rows_equal_index_select_in_order_with_repeats() {
        let t = table(600, 130, 9);
        let ids: Vec<u32> = (0..1500u32).map(|i| (i * 7919) % 600).chain([0, 599, 0]).collect();
        let want = t.index_select(&Tensor::from_slice(&ids, ids.len(), &Device::Cpu).unwrap(), 0).unwrap();
        let got = gather_rows(&t, &ids).unwrap();
        assert_eq!(got.dims(), want.dims());
        assert_eq!(
            got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            want.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        let few = gather_rows(&t, &[3, 3]).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(few[0], t.get(3).unwrap().to_vec1::<f32>().unwrap());
        assert_eq!(few[1], few[0]);
        assert!(gather_rows(&t, &[600]).unwrap_err().to_string().contains("row 600 outside a table of 600 rows"));
    }

    #[test]
    fn scores_into_equals_the_product_plus_bias() {
        for (m, k, n) in [(3usize, 5usize, 7usize), (70, 100, 900), (1, 480, 33)] {
            let h = table(m, k, 1);
            let t = table(n, k, 2);
            let b = table(n, 1, 3);
            let want = (h.matmul(&t.t().unwrap()).unwrap().broadcast_add(&b.t().unwrap()))
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let mut got = vec![f32::NAN; m * n];
            scores_into(&h, &t, &b, &mut got).unwrap();
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "[{m},{k},{n}] element {i}: {g} vs {w}");
            }
        }
        let err = scores_into(&table(2, 3, 1), &table(4, 3, 2), &table(4, 1, 3), &mut [0.0; 7]).unwrap_err();
        assert!(err.to_string().contains("do not fit"), "{err}");
    }
}
