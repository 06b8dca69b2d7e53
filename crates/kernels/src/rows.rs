//! Products with rows of a table picked by id, read in place: no gathered copy.
//!
//! GRU4Rec's output layer multiplies the batch's hidden states by ≈ 2,000
//! rows of a large item table (the targets and the shared samples), twice
//! per training step: the scores `y · T[ids]ᵀ` and the states' gradient
//! `dS · T[ids]`. gemm needs operands with uniform strides, so until the
//! twenty-first session the rows were first copied into a dense matrix
//! (3.8 MB at 480 units): a pass of random reads from memory and a stream of
//! writes that took 7–10% of a step at setting (b), before the products
//! read the copy twice more.
//!
//! Here, on a CPU with AVX-512, two register-tiled kernels read the rows
//! where they are:
//!
//! - [`scores_of_rows`]: a tile of 6 rows of the table against up to 48
//!   packed rows of `y` (three 16-lane registers), 18 accumulators; the
//!   next tile's rows are prefetched line by line while the current one is
//!   multiplied.
//! - [`product_with_rows`]: a tile of 6 rows of `d` against 48 columns of the
//!   picked rows, summed over the ids in order.
//!
//! Every output element is a sequential fused multiply-add sum over its
//! inner dimension in index order, so the values do not depend on the
//! thread count or on how the work is split. Both return `false`, writing
//! nothing, where the CPU lacks AVX-512; [`crate::matmul`]'s wrappers then
//! gather and call gemm.

#![allow(unsafe_code)]

use rayon::prelude::*;

/// Rows of the tile (the table's in [`scores_of_rows`], `d`'s in [`product_with_rows`]).
const TILE_ROWS: usize = 8;
/// Lanes of one register.
const LANES: usize = 16;
/// Lanes of a tile's three registers.
const TILE_LANES: usize = 3 * LANES;
/// Most ids per task of [`scores_of_rows`]: the task's sums (`ids × 48`
/// values) and a block of packed `y` must stay in L1 together. Tasks are
/// as even as whole tiles allow, their number a multiple of the thread
/// count (21 fixed tasks of 96 ids at GRU4Rec's 1,959 ids left one of two
/// threads a task behind).
const MAX_IDS_PER_TASK: usize = 96;
/// Parts of the ids that [`product_with_rows`] sums separately (one task
/// each, added in order at the end) when the product is large: a fixed
/// number, so that the values do not depend on the thread count.
const PARTS: usize = 2;
/// Multiply-adds below which the products stay on the calling thread.
const PARALLEL_MACS: usize = crate::matmul::PARALLEL_MACS;

/// An output buffer written by several tasks at disjoint elements.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: the tasks below write disjoint elements through it, and the buffer
// outlives the parallel region (it is the caller's `&mut` slice).
unsafe impl Send for Out {}
// SAFETY: as above.
unsafe impl Sync for Out {}

/// `out[i·n + j] = Σ_c y[i·w + c] · table[ids[j]·w + c]` for `i < m`, `j < n
/// = ids.len()` (`y` `[m, w]`, the table `[rows, w]`, `out` `[m, n]`, all
/// row-major). Returns `false`, leaving `out` alone, without AVX-512.
///
/// # Panics
/// When a slice is shorter than its shape or an id is outside the table (a
/// caller's bug: the wrappers check).
pub fn scores_of_rows(y: &[f32], m: usize, table: &[f32], w: usize, ids: &[u32], out: &mut [f32]) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if !crate::simd::has_v4() {
            return false;
        }
        let n = ids.len();
        assert!(y.len() >= m * w && out.len() >= m * n, "scores_of_rows: buffers shorter than their shapes");
        assert!(ids.iter().all(|&id| (id as usize + 1) * w <= table.len()), "scores_of_rows: id outside the table");
        if m == 0 || n == 0 {
            return true;
        }
        if w == 0 {
            out[..m * n].fill(0.0);
            return true;
        }
        // y packed per chunk of 48 rows as [w][48], zero beyond m.
        let chunks = m.div_ceil(TILE_LANES);
        // Aligned to a cache line, so that each 16-lane load reads one line.
        let mut buf = vec![0f32; chunks * w * TILE_LANES + LANES];
        let skip = buf.as_ptr().align_offset(64).min(LANES);
        let packed = &mut buf[skip..skip + chunks * w * TILE_LANES];
        for (c, block) in packed.chunks_exact_mut(w * TILE_LANES).enumerate() {
            for i in c * TILE_LANES..m.min((c + 1) * TILE_LANES) {
                let lane = i - c * TILE_LANES;
                for (k, &v) in y[i * w..(i + 1) * w].iter().enumerate() {
                    block[k * TILE_LANES + lane] = v;
                }
            }
        }
        let dst = Out(out.as_mut_ptr());
        let task = |cols: std::ops::Range<usize>| {
            // SAFETY: AVX-512 F is present (checked above); the task writes
            // only the columns `cols` of `out`, which no other task writes,
            // and reads within the slices (checked above).
            unsafe { scores_task(packed, m, table, w, ids, cols, dst, n) };
        };
        let threads = if m * n * w >= PARALLEL_MACS { rayon::current_num_threads() } else { 1 };
        // Tasks of whole tiles, at most MAX_IDS_PER_TASK ids, their number a
        // multiple of the thread count, as even as tiles allow.
        let tiles = n.div_ceil(TILE_ROWS);
        let tasks = n.div_ceil(MAX_IDS_PER_TASK).next_multiple_of(threads).min(tiles);
        let range = |t: usize| (t * tiles / tasks * TILE_ROWS)..((t + 1) * tiles / tasks * TILE_ROWS).min(n);
        if threads > 1 {
            (0..tasks).into_par_iter().for_each(|t| task(range(t)));
        } else {
            (0..tasks).for_each(|t| task(range(t)));
        }
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (y, m, table, w, ids, out);
        false
    }
}

/// Inner positions per block of [`scores_task`]: a block of packed `y`
/// (`K_BLOCK × 48` values, 24 KB) stays in L1 while every tile of the task
/// runs over it; unblocked, each tile streamed all of `y` (92 KB at 480
/// units) from L2 and the kernel ran at ≈ 85% of gemm's speed.
const K_BLOCK: usize = 128;

/// Columns `cols` of the scores ([`scores_of_rows`]): per block of
/// [`K_BLOCK`] inner positions, every tile of 6 ids and chunk of 48 rows of
/// `y`, its sums carried from block to block (so each is still one
/// sequential sum over the inner dimension).
///
/// # Safety
/// AVX-512 F present; `packed` as built by [`scores_of_rows`]; every id
/// in `ids[cols]` inside the table; `out` valid for `[m, n]` and its
/// columns `cols` written by this call only.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn scores_task(
    packed: &[f32],
    m: usize,
    table: &[f32],
    w: usize,
    ids: &[u32],
    cols: std::ops::Range<usize>,
    out: Out,
    n: usize,
) {
    let row_ptr = |j: usize| table.as_ptr().add(ids[j] as usize * w);
    let chunks = m.div_ceil(TILE_LANES);
    let tiles = cols.len().div_ceil(TILE_ROWS);
    // Each tile's rows (a short last tile repeats its last id: computed, not stored).
    let tile_rows = |t: usize| -> [*const f32; TILE_ROWS] {
        let first = cols.start + t * TILE_ROWS;
        let valid = TILE_ROWS.min(cols.end - first);
        std::array::from_fn(|r| row_ptr(first + r.min(valid - 1)))
    };
    // The sums so far: [tile][chunk][row][48].
    let mut sums = vec![[[0f32; TILE_LANES]; TILE_ROWS]; tiles * chunks];
    for r in 0..TILE_ROWS.min(cols.len()) {
        crate::optim::prefetch(std::slice::from_raw_parts(row_ptr(cols.start + r), K_BLOCK.min(w)));
    }
    let mut k0 = 0;
    while k0 < w {
        let kn = K_BLOCK.min(w - k0);
        for t in 0..tiles {
            let rows = tile_rows(t);
            // Ask for the next tile's lines of this block (or the first tile's of the next).
            let (ahead, ak) = if t + 1 < tiles { (tile_rows(t + 1), k0) } else { (tile_rows(0), k0 + kn) };
            let ahead_len = K_BLOCK.min(w.saturating_sub(ak));
            for c in 0..chunks {
                let yt = packed.as_ptr().add((c * w + k0) * TILE_LANES);
                let lanes = (m - c * TILE_LANES).min(TILE_LANES);
                let pf = if c == 0 && ahead_len > 0 { Some((&ahead, ak, ahead_len)) } else { None };
                let tile = &mut sums[t * chunks + c];
                let at = (k0, kn, k0 == 0);
                match lanes.div_ceil(LANES) {
                    1 => scores_tile::<1>(yt, &rows, at, pf, tile),
                    2 => scores_tile::<2>(yt, &rows, at, pf, tile),
                    _ => scores_tile::<3>(yt, &rows, at, pf, tile),
                }
            }
        }
        k0 += kn;
    }
    for t in 0..tiles {
        let first = cols.start + t * TILE_ROWS;
        let valid = TILE_ROWS.min(cols.end - first);
        for c in 0..chunks {
            let lanes = (m - c * TILE_LANES).min(TILE_LANES);
            for (r, row) in sums[t * chunks + c].iter().enumerate().take(valid) {
                for (lane, &v) in row.iter().enumerate().take(lanes) {
                    *out.0.add((c * TILE_LANES + lane) * n + first + r) = v;
                }
            }
        }
    }
}

/// One tile of scores over the inner positions `k0..k0 + kn`:
/// `tile[r][l] += Σ_k rows[r][k] · yt[(k − k0)·48 + l]` for the first `16·C`
/// lanes, starting from zero when `fresh`; while it runs, the lines of
/// `ahead`'s rows at `ak..ak + len` are prefetched.
///
/// # Safety
/// AVX-512 F present; `yt` valid for `kn · 48` values, each row for
/// `k0 + kn` values and each prefetched row for `ak + len`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::needless_range_loop)] // the register tile is indexed [row][register]
unsafe fn scores_tile<const C: usize>(
    yt: *const f32,
    rows: &[*const f32; TILE_ROWS],
    (k0, kn, fresh): (usize, usize, bool),
    ahead: Option<(&[*const f32; TILE_ROWS], usize, usize)>,
    tile: &mut [[f32; TILE_LANES]; TILE_ROWS],
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); C]; TILE_ROWS];
    if !fresh {
        for r in 0..TILE_ROWS {
            for c in 0..C {
                acc[r][c] = _mm512_loadu_ps(tile[r].as_ptr().add(c * LANES));
            }
        }
    }
    // The prefetches spread over the loop, one line every other position
    // (a burst of 64 at the tile's start waits for fill buffers).
    let (ahead, ak, lines) = match ahead {
        Some((rows, ak, len)) => (rows, ak, TILE_ROWS * len.div_ceil(LANES)),
        None => (rows, 0, 0),
    };
    for k in 0..kn {
        if k % 2 == 0 && k / 2 < lines {
            let l = k / 2;
            _mm_prefetch::<{ _MM_HINT_T0 }>(ahead[l % TILE_ROWS].add(ak + l / TILE_ROWS * LANES).cast());
        }
        let mut b = [_mm512_setzero_ps(); C];
        for (c, b) in b.iter_mut().enumerate() {
            *b = _mm512_loadu_ps(yt.add(k * TILE_LANES + c * LANES));
        }
        for r in 0..TILE_ROWS {
            let a = _mm512_set1_ps(*rows[r].add(k0 + k));
            for c in 0..C {
                acc[r][c] = _mm512_fmadd_ps(a, b[c], acc[r][c]);
            }
        }
    }
    for r in 0..TILE_ROWS {
        for c in 0..C {
            _mm512_storeu_ps(tile[r].as_mut_ptr().add(c * LANES), acc[r][c]);
        }
    }
}

/// `out[i·w + c] = Σ_j d[i·n + j] · table[ids[j]·w + c]` for `i < m`, `c < w`
/// (`d` `[m, n]` with `n = ids.len()`, the table `[rows, w]`, `out` `[m, w]`,
/// all row-major), each sum over `j` in order. Returns `false`, leaving
/// `out` alone, without AVX-512.
///
/// # Panics
/// As [`scores_of_rows`].
pub fn product_with_rows(d: &[f32], m: usize, table: &[f32], w: usize, ids: &[u32], out: &mut [f32]) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if !crate::simd::has_v4() {
            return false;
        }
        let n = ids.len();
        assert!(d.len() >= m * n && out.len() >= m * w, "product_with_rows: buffers shorter than their shapes");
        assert!(ids.iter().all(|&id| (id as usize + 1) * w <= table.len()), "product_with_rows: id outside the table");
        if m == 0 || w == 0 {
            return true;
        }
        if n == 0 {
            out[..m * w].fill(0.0);
            return true;
        }
        let tiles = column_tiles(table.as_ptr(), w);
        // The ids in PARTS contiguous parts, one task each: a thread reads
        // whole rows of the table (the ones the optimiser's step, splitting
        // the rows the same way, then finds in its own cache).
        let parts = if m * n * w >= PARALLEL_MACS { PARTS.min(n) } else { 1 };
        let mut partials = vec![0f32; (parts - 1) * m * w];
        let targets: Vec<Out> = std::iter::once(Out(out.as_mut_ptr()))
            .chain(partials.chunks_exact_mut(m * w).map(|p| Out(p.as_mut_ptr())))
            .collect();
        let task = |p: usize| {
            let part = p * n / parts..(p + 1) * n / parts;
            for cols in &tiles {
                // SAFETY: AVX-512 F is present (checked above); each part
                // writes only its own `[m, w]` target (the output or its
                // partial buffer) and reads within the slices (checked above).
                unsafe { product_task((d, n, part.clone()), table, w, ids, cols.clone(), m, targets[p]) };
            }
        };
        if parts > 1 && rayon::current_num_threads() > 1 {
            (0..parts).into_par_iter().for_each(task);
        } else {
            (0..parts).for_each(task);
        }
        // The parts' sums added in order.
        for partial in partials.chunks_exact(m * w) {
            for (o, &x) in out[..m * w].iter_mut().zip(partial) {
                *o += x;
            }
        }
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (d, m, table, w, ids, out);
        false
    }
}

/// The column tiles of [`product_with_rows`], at most 48 wide: where every
/// row starts at the same offset in a cache line (the row length a multiple
/// of 64 bytes), a narrow first tile up to the first line boundary, so that
/// the others' 16-lane loads each read one line (the allocator aligns the
/// tables to 16 bytes only; a load across two lines costs two).
fn column_tiles(table: *const f32, w: usize) -> Vec<std::ops::Range<usize>> {
    let offset = table as usize % 64;
    let lead = if (w * 4).is_multiple_of(64) && offset.is_multiple_of(4) { ((64 - offset) % 64 / 4).min(w) } else { 0 };
    let mut tiles = Vec::new();
    if lead > 0 {
        tiles.push(0..lead);
    }
    let mut c = lead;
    while c < w {
        tiles.push(c..w.min(c + TILE_LANES));
        c += TILE_LANES;
    }
    tiles
}

/// The columns `cols` of one part's sums: `out[i·w + c] = Σ_{j ∈ part}
/// d[i·n + j] · table[ids[j]·w + c]` for every row `i < m`.
///
/// # Safety
/// AVX-512 F present; `d` valid for `[m, n]`; ids inside the table; `out`
/// valid for `[m, w]`, its columns `cols` written by this call only; `cols`
/// at most 48 wide.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn product_task(
    (d, n, part): (&[f32], usize, std::ops::Range<usize>),
    table: &[f32],
    w: usize,
    ids: &[u32],
    cols: std::ops::Range<usize>,
    m: usize,
    out: Out,
) {
    let width = cols.len();
    // Lanes of the last register that lie inside the block.
    let tail = width - (width.div_ceil(LANES) - 1) * LANES;
    let last_mask: u16 = if tail == LANES { u16::MAX } else { (1u16 << tail) - 1 };
    let ids = &ids[part.clone()];
    let mut first = true;
    let mut i = 0;
    while i < m {
        let valid = TILE_ROWS.min(m - i);
        // A short last tile repeats its last row (computed, not stored).
        let d_rows: [*const f32; TILE_ROWS] =
            std::array::from_fn(|r| d.as_ptr().add((i + r.min(valid - 1)) * n + part.start));
        let mut tile = [[0f32; TILE_LANES]; TILE_ROWS];
        let at = (table.as_ptr(), w, cols.start);
        match width.div_ceil(LANES) {
            1 => product_tile::<1>(&d_rows, at, ids, last_mask, first, &mut tile),
            2 => product_tile::<2>(&d_rows, at, ids, last_mask, first, &mut tile),
            _ => product_tile::<3>(&d_rows, at, ids, last_mask, first, &mut tile),
        }
        for (r, t) in tile.iter().enumerate().take(valid) {
            std::ptr::copy_nonoverlapping(t.as_ptr(), out.0.add((i + r) * w + cols.start), width);
        }
        first = false;
        i += TILE_ROWS;
    }
}

/// How many ids ahead [`product_tile`] prefetches the picked rows.
const PRODUCT_AHEAD: usize = 24;

/// One tile of [`product_with_rows`]: `tile[r][l] = Σ_j d_rows[r][j] ·
/// table[ids[j]·w + c0 + l]` for the `16·C` lanes (the last register's lanes
/// outside `last_mask` read as 0).
///
/// # Safety
/// AVX-512 F present; each of `d_rows` valid for `ids.len()` values; every
/// id's row valid for `w` values and `c0 + 16·(C−1) + lanes of last_mask ≤ w`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::needless_range_loop)] // the register tile is indexed [row][register]
unsafe fn product_tile<const C: usize>(
    d_rows: &[*const f32; TILE_ROWS],
    (table, w, c0): (*const f32, usize, usize),
    ids: &[u32],
    last_mask: u16,
    prefetch: bool,
    tile: &mut [[f32; TILE_LANES]; TILE_ROWS],
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); C]; TILE_ROWS];
    for (j, &id) in ids.iter().enumerate() {
        let row = table.add(id as usize * w + c0);
        if prefetch {
            if let Some(&ahead) = ids.get(j + PRODUCT_AHEAD) {
                let p = table.add(ahead as usize * w + c0);
                for c in 0..C {
                    _mm_prefetch::<{ _MM_HINT_T1 }>(p.add(c * LANES).cast());
                }
            }
        }
        let mut b = [_mm512_setzero_ps(); C];
        for (c, b) in b.iter_mut().enumerate() {
            let mask = if c + 1 == C { last_mask } else { u16::MAX };
            *b = _mm512_maskz_loadu_ps(mask, row.add(c * LANES));
        }
        for r in 0..TILE_ROWS {
            let a = _mm512_set1_ps(*d_rows[r].add(j));
            for c in 0..C {
                acc[r][c] = _mm512_fmadd_ps(a, b[c], acc[r][c]);
            }
        }
    }
    for r in 0..TILE_ROWS {
        for c in 0..C {
            _mm512_storeu_ps(tile[r].as_mut_ptr().add(c * LANES), acc[r][c]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                ((x >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    /// Odd shapes: batch rows across one, two and three registers and more
    /// than one chunk of 48, widths with a partial last register, ids
    /// repeated and short last tiles.
    const SHAPES: [(usize, usize, usize); 8] =
        [(1, 1, 1), (3, 5, 7), (16, 17, 13), (32, 100, 61), (48, 480, 97), (50, 33, 6), (97, 49, 200), (48, 480, 61)];

    fn ids_for(n: usize, rows: usize, seed: u32) -> Vec<u32> {
        (0..n as u32).map(|j| (j.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 7) % rows as u32).collect()
    }

    #[test]
    fn scores_of_rows_are_the_products_with_the_picked_rows() {
        if !crate::simd::has_v4() {
            eprintln!("no AVX-512: the kernels are not used on this CPU");
            return;
        }
        for (m, w, n) in SHAPES {
            let rows = 23;
            let (y, table, ids) = (fill(m * w, 1), fill(rows * w, 2), ids_for(n, rows, 5));
            let mut out = vec![f32::NAN; m * n];
            assert!(scores_of_rows(&y, m, &table, w, &ids, &mut out));
            for i in 0..m {
                for (j, &id) in ids.iter().enumerate() {
                    let row = &table[id as usize * w..(id as usize + 1) * w];
                    // The kernel's sum: fused multiply-adds in index order.
                    let want = y[i * w..(i + 1) * w].iter().zip(row).fold(0f32, |s, (&a, &b)| a.mul_add(b, s));
                    assert_eq!(out[i * n + j].to_bits(), want.to_bits(), "{m}×{w}, {n} ids: ({i}, {j})");
                }
            }
        }
    }

    #[test]
    fn product_with_rows_sums_the_picked_rows_in_id_order() {
        if !crate::simd::has_v4() {
            eprintln!("no AVX-512: the kernels are not used on this CPU");
            return;
        }
        for (m, w, n) in SHAPES {
            let rows = 19;
            let (d, table, ids) = (fill(m * n, 3), fill(rows * w, 4), ids_for(n, rows, 9));
            let mut out = vec![f32::NAN; m * w];
            assert!(product_with_rows(&d, m, &table, w, &ids, &mut out));
            // Large products: the sums of PARTS contiguous parts of the ids, added in order.
            let parts = if m * n * w >= PARALLEL_MACS { PARTS.min(n) } else { 1 };
            for i in 0..m {
                for c in 0..w {
                    let part = |p: usize| {
                        (p * n / parts..(p + 1) * n / parts)
                            .fold(0f32, |s, j| d[i * n + j].mul_add(table[ids[j] as usize * w + c], s))
                    };
                    let want = (1..parts).fold(part(0), |s, p| s + part(p));
                    assert_eq!(out[i * w + c].to_bits(), want.to_bits(), "{m}×{w}, {n} ids: ({i}, {c})");
                }
            }
        }
    }

    /// The values do not depend on the thread count (a product large
    /// enough to split, run in pools of one and two threads).
    #[test]
    fn products_do_not_depend_on_the_thread_count() {
        if !crate::simd::has_v4() {
            return;
        }
        let (m, w, n, rows) = (48, 480, 700, 900);
        let (y, table, ids, d) = (fill(m * w, 5), fill(rows * w, 6), ids_for(n, rows, 1), fill(m * n, 7));
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let (mut s, mut p) = (vec![0f32; m * n], vec![0f32; m * w]);
                assert!(scores_of_rows(&y, m, &table, w, &ids, &mut s));
                assert!(product_with_rows(&d, m, &table, w, &ids, &mut p));
                (s, p)
            })
        };
        assert!(m * n * w >= PARALLEL_MACS);
        assert_eq!(run(1), run(2));
    }
}
