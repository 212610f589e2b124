//! bf16 × bf16 → f32 matrix product for x86-64 CPUs with AVX512-BF16.
//!
//! The kernel is built around `vdpbf16ps` (`_mm512_dpbf16_ps`), which multiplies
//! pairs of bf16 values along k and accumulates both products into one f32 lane.
//! `op(B)` is packed once into [`PackedB`] (k in pairs, n in panels of 64 columns)
//! and can be reused for many products; `a` is read in place when its rows are
//! contiguous. Everything here is single-threaded: callers parallelise over
//! independent products.
//!
//! On CPUs with AMX-BF16 (and Linux's permission for it), products whose k is a
//! multiple of 32 take the [`amx`] tile kernel over the same packed `B` instead.
//!
//! Numerics: every bf16 product is exact in f32 and is accumulated in f32, two
//! k-values per instruction, so results match an f32 loop up to summation order.
//! `vdpbf16ps` ignores MXCSR: it treats denormal inputs as zero, flushes denormal
//! results to zero and rounds to nearest even.

use half::bf16;
use ndarray::{ArrayView2, ArrayViewMut2};

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod amx;

/// f32 lanes (and bf16 column pairs) in one 512-bit register.
const LANES: usize = 16;
/// Registers per microkernel row of the accumulator tile.
const NV: usize = 4;
/// Panel width: columns of `op(B)` per packed panel and per microkernel tile.
const NR: usize = NV * LANES;

/// Packs a `b` whose rows are contiguous: each pair of rows fills chunks in order.
fn pack_rows(b: &ArrayView2<bf16>, kp: usize, data: &mut [Chunk]) {
    let k = b.nrows();
    let row = |i: usize| {
        b.row(i)
            .to_slice()
            .expect("pack_rows: rows must be contiguous")
    };
    for p in 0..kp {
        let r0 = row(2 * p);
        let r1 = (2 * p + 1 < k).then(|| row(2 * p + 1));
        for (g, x0) in r0.chunks(LANES).enumerate() {
            let dst = data[(g / NV * kp + p) * NV + g % NV]
                .0
                .as_chunks_mut::<2>()
                .0;
            match r1 {
                Some(r1) => {
                    let x1 = &r1[g * LANES..];
                    for ((d, a), b) in dst.iter_mut().zip(x0).zip(x1) {
                        *d = [a.to_bits(), b.to_bits()];
                    }
                }
                None => {
                    for (d, a) in dst.iter_mut().zip(x0) {
                        d[0] = a.to_bits();
                    }
                }
            }
        }
    }
}

/// Packs a `b` whose columns are contiguous (`b = W.t()`): `LANES` columns at a
/// time, each k-pair of them filling one chunk.
fn pack_columns(b: &ArrayView2<bf16>, kp: usize, data: &mut [Chunk]) {
    let (k, n) = b.dim();
    #[cfg(target_arch = "x86_64")]
    let simd = is_x86_feature_detected!("avx512f");
    for g in 0..n.div_ceil(LANES) {
        let cols: Vec<&[bf16]> = (g * LANES..n.min(g * LANES + LANES))
            .map(|j| {
                b.column(j)
                    .to_slice()
                    .expect("pack_columns: columns must be contiguous")
            })
            .collect();
        let pairs: Vec<&[[bf16; 2]]> = cols.iter().map(|c| c.as_chunks::<2>().0).collect();
        let first = g / NV * kp * NV + g % NV;
        // Full 16 × 16 blocks go through an AVX-512 transpose when the CPU has it.
        #[cfg(target_arch = "x86_64")]
        let done = if simd && pairs.len() == LANES {
            // SAFETY: `simd` means the CPU has avx512f.
            unsafe { x86::transpose_pairs(&pairs, &mut data[first..]) }
        } else {
            0
        };
        #[cfg(not(target_arch = "x86_64"))]
        let done = 0;
        let mut dst = data[first..].iter_mut().step_by(NV).skip(done);
        for (p, d) in dst.by_ref().take(k / 2 - done).enumerate() {
            let p = p + done;
            for (lane, col) in d.0.as_chunks_mut::<2>().0.iter_mut().zip(&pairs) {
                *lane = col[p].map(bf16::to_bits);
            }
        }
        if k % 2 == 1 {
            let d = dst.next().expect("pack_columns: k-pair padding chunk");
            for (lane, col) in d.0.as_chunks_mut::<2>().0.iter_mut().zip(&cols) {
                lane[0] = col[k - 1].to_bits();
            }
        }
    }
}

/// Whether this CPU runs the bf16 dot-product kernel.
///
/// Runtime check for `avx512f` and `avx512bf16`; always `false` on targets other
/// than x86-64.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The kernels [`gemm`] chooses between.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    /// `vdpbf16ps` in 6 x 64 register tiles: any shape.
    Dot,
    /// AMX `tdpbf16ps` in 16 x 16 tiles: k a multiple of 32.
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    Amx,
}

impl Kernel {
    /// Every kernel, fastest first.
    const ALL: &[Kernel] = &[
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        Kernel::Amx,
        Kernel::Dot,
    ];

    /// Whether this CPU runs this kernel for products of inner size `k`.
    #[cfg_attr(
        not(all(target_arch = "x86_64", target_os = "linux")),
        allow(unused_variables)
    )]
    fn runs(self, k: usize) -> bool {
        match self {
            Kernel::Dot => available(),
            #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
            Kernel::Amx => available() && amx::fits(k) && amx::available(),
        }
    }

    /// The fastest kernel this CPU runs for inner size `k` ([`Kernel::Dot`]
    /// when it runs none).
    fn best(k: usize) -> Kernel {
        Kernel::ALL
            .iter()
            .copied()
            .find(|kernel| kernel.runs(k))
            .unwrap_or(Kernel::Dot)
    }
}

/// One 512-bit load of a packed panel row: `LANES` columns × one k-pair, as bf16 bits.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Chunk([u16; 2 * LANES]);

/// `op(B)` (`[k, n]`) packed for the kernel.
///
/// k is grouped in pairs (padded with a zero to even) and n is padded with zero
/// columns to a multiple of the panel width. The layout is `[n / NR][k / 2][NR][2]`:
/// each k-pair row of an `NR`-column panel is `NV` contiguous, 64-byte aligned
/// 512-bit loads.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub struct PackedB {
    k: usize,
    n: usize,
    /// Number of k-pairs, `k.div_ceil(2)`.
    kp: usize,
    /// Number of panels, `n.div_ceil(NR)`.
    np: usize,
    /// `np * kp * NV` chunks, panel-major, then k-pair, then column group.
    data: Vec<Chunk>,
}

impl PackedB {
    /// Packs `b` (`[k, n]`, any strides, including a transposed view).
    ///
    /// The common case is `b = W.t()` with `W` a row-major `[n, k]` weight, so that
    /// column `j` of `op(B)` is row `j` of `W`, contiguous along k; a row-major `b`
    /// is packed just as cheaply. Cost is O(k·n).
    pub fn new(b: ArrayView2<bf16>) -> PackedB {
        let (k, n) = b.dim();
        let kp = k.div_ceil(2);
        let np = n.div_ceil(NR);
        let mut data = recycle::take(np * kp * NV);
        if data.is_empty() {
            return PackedB { k, n, kp, np, data };
        }
        let rows_contiguous = b.strides()[1] == 1 || n == 1;
        let cols_contiguous = b.strides()[0] == 1 || k == 1;
        if cols_contiguous && !rows_contiguous {
            pack_columns(&b, kp, &mut data);
        } else if rows_contiguous {
            pack_rows(&b, kp, &mut data);
        } else {
            pack_rows(&b.as_standard_layout().view(), kp, &mut data);
        }
        zero_padding(&mut data, k, n, kp);
        PackedB { k, n, kp, np, data }
    }
}

/// Zeroes the chunk entries that the packers leave as they were (a
/// recycled buffer holds old values): the lanes past column n of the last
/// column group, the column groups past it in the last panel, and the
/// second value of the last k-pair when k is odd. `data` is `[np][kp][NV]`
/// chunks for `k, n >= 1`.
fn zero_padding(data: &mut [Chunk], k: usize, n: usize, kp: usize) {
    let groups = n.div_ceil(LANES);
    for g in groups - 1..n.div_ceil(NR) * NV {
        let first = n.saturating_sub(g * LANES).min(LANES);
        if first == LANES {
            continue;
        }
        for p in 0..kp {
            data[(g / NV * kp + p) * NV + g % NV].0[2 * first..].fill(0);
        }
    }
    if k % 2 == 1 {
        for chunk in data.chunks_exact_mut(kp * NV) {
            for c in &mut chunk[(kp - 1) * NV..] {
                for pair in c.0.as_chunks_mut::<2>().0 {
                    pair[1] = 0;
                }
            }
        }
    }
}

impl Drop for PackedB {
    fn drop(&mut self) {
        recycle::give(std::mem::take(&mut self.data));
    }
}

/// Freed [`PackedB`] buffers kept for the next packs: every forward packs its
/// weight panels again, and fresh buffers cost a page fault per 4 KiB (about
/// a tenth of a bf16 layer forward). At most [`recycle::KEPT_BYTES`] are
/// kept; what a forward frees beyond that goes back to the allocator. A
/// recycled buffer is not cleared (the packers write every entry and
/// [`zero_padding`] the rest), which saves writing it twice.
mod recycle {
    use std::sync::{Mutex, PoisonError};

    use super::{Chunk, LANES};

    /// The most bytes of freed buffers kept.
    pub(super) const KEPT_BYTES: usize = 128 << 20;

    /// The kept buffers and their bytes in all.
    static KEPT: Mutex<(Vec<Vec<Chunk>>, usize)> = Mutex::new((Vec::new(), 0));

    /// A buffer of `len` chunks: the smallest kept one that holds them, with
    /// whatever values it held (zeros past its old length), else a new
    /// zeroed one.
    pub(super) fn take(len: usize) -> Vec<Chunk> {
        let kept = {
            // A panic elsewhere cannot leave the list inconsistent: each
            // update below is one push or one remove with its byte count.
            let mut guard = KEPT.lock().unwrap_or_else(PoisonError::into_inner);
            let (buffers, bytes) = &mut *guard;
            let best = (0..buffers.len())
                .filter(|&i| buffers[i].capacity() >= len)
                .min_by_key(|&i| buffers[i].capacity());
            best.map(|i| {
                let v = buffers.swap_remove(i);
                *bytes -= size_of_buffer(&v);
                v
            })
        };
        let mut v = kept.unwrap_or_default();
        v.truncate(len);
        v.resize(len, Chunk([0; 2 * LANES]));
        v
    }

    /// Keeps `v` for a later [`take`] if that stays within [`KEPT_BYTES`].
    pub(super) fn give(v: Vec<Chunk>) {
        let size = size_of_buffer(&v);
        if size == 0 {
            return;
        }
        let mut guard = KEPT.lock().unwrap_or_else(PoisonError::into_inner);
        let (buffers, bytes) = &mut *guard;
        if *bytes + size <= KEPT_BYTES {
            *bytes += size;
            buffers.push(v);
        }
    }

    fn size_of_buffer(v: &Vec<Chunk>) -> usize {
        v.capacity() * size_of::<Chunk>()
    }
}

/// `c = a · B`, or `c += a · B` when `accumulate`, with f32 accumulation.
///
/// `a` is `[m, k]` with any strides: when its rows are contiguous (`stride[1] == 1`)
/// the kernel reads it in place, otherwise it is first copied into a packed buffer.
/// `c` is `[m, n]` with any strides; row-contiguous `c` is updated in place, other
/// layouts go through a small scratch tile.
///
/// If m or n is 0 nothing happens; if k is 0, `c` is set to zero unless
/// `accumulate`.
///
/// # Panics
/// If `a.ncols()` is not the packed k, `c.nrows() != a.nrows()` or `c.ncols()` is not the packed n, and if
/// the product has work to do but [`available()`] is false.
pub fn gemm(a: ArrayView2<bf16>, b: &PackedB, c: ArrayViewMut2<f32>, accumulate: bool) {
    gemm_on(Kernel::best(a.ncols()), a, b, c, accumulate);
}

/// [`gemm`] on `kernel`, which this CPU must run for this k
/// ([`Kernel::runs`]) when the product has work to do.
fn gemm_on(
    kernel: Kernel,
    a: ArrayView2<bf16>,
    b: &PackedB,
    mut c: ArrayViewMut2<f32>,
    accumulate: bool,
) {
    let (m, k) = a.dim();
    assert_eq!(k, b.k, "gemm_bf16: a is [{m}, {k}] but B has k = {}", b.k);
    assert_eq!(
        c.dim(),
        (m, b.n),
        "gemm_bf16: c must be [{m}, {}], got {:?}",
        b.n,
        c.dim()
    );
    if m == 0 || b.n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c.fill(0.0);
        }
        return;
    }
    assert!(
        available(),
        "gemm_bf16: this CPU lacks avx512f + avx512bf16"
    );
    assert!(
        kernel.runs(k),
        "gemm_bf16: this CPU does not run {kernel:?} for k = {k}"
    );
    match kernel {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `available()` just confirmed avx512f and avx512bf16, and the
        // shapes were checked above (m, n, k >= 1 and consistent).
        Kernel::Dot => unsafe { x86::gemm_impl(a, b, c, accumulate) },
        #[cfg(not(target_arch = "x86_64"))]
        Kernel::Dot => unreachable!("available() is false off x86-64"),
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        // SAFETY: `kernel.runs(k)` means `amx::available()` and
        // `amx::fits(k)`, and the shapes were checked above.
        Kernel::Amx => unsafe { amx::gemm_impl(a, b, c, accumulate) },
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Chunk, PackedB, LANES, NR, NV};
    use core::arch::x86_64::{
        __m512, __m512bh, __m512i, __mmask16, _mm512_add_ps, _mm512_dpbf16_ps, _mm512_load_si512,
        _mm512_loadu_si512, _mm512_mask_storeu_ps, _mm512_maskz_loadu_ps, _mm512_set1_epi32,
        _mm512_setzero_ps, _mm512_setzero_si512, _mm512_shuffle_i32x4, _mm512_unpackhi_epi32,
        _mm512_unpackhi_epi64, _mm512_unpacklo_epi32, _mm512_unpacklo_epi64,
    };
    use half::bf16;
    use ndarray::{ArrayView2, ArrayViewMut2};

    /// Rows of `a` per microkernel tile: `MR × NV` = 24 accumulator registers.
    const MR: usize = 6;
    /// k-pairs per k block: the tile's `a` rows (`MR × 2 KC` values) stay in L1 and
    /// the B micro-panel (`KC × NR` pairs, 128 KiB) in L2.
    const KC: usize = 512;
    /// Rows of `a` per m block: the `a` block (`MC × 2 KC` values, 192 KiB) stays in
    /// L2 while every panel of B passes over it.
    const MC: usize = 96;

    /// Pointers and extents the microkernel needs for one `R × NR` tile.
    struct Tile {
        /// Number of full k-pairs to read from `a`.
        pairs: usize,
        /// Whether one more single k value (odd k, `a` read in place) follows the pairs.
        tail: bool,
        /// First element of the tile's first row of `a` (bf16 bits).
        a: *const u16,
        /// Row stride of `a`, in elements.
        lda: isize,
        /// First chunk of the B micro-panel for this k block.
        b: *const Chunk,
        /// First element of the tile in `c`.
        c: *mut f32,
        /// Row stride of `c`, in elements.
        ldc: isize,
        /// Valid lanes of each column group of `c`.
        masks: [__mmask16; NV],
        /// Whether to add the tile to `c` (else overwrite).
        load_c: bool,
    }

    /// Computes the whole product.
    ///
    /// # Safety
    /// The CPU must support avx512f and avx512bf16, and the shapes must be checked:
    /// `a` is `[m, k]`, `b` is `[k, n]`, `c` is `[m, n]`, with m, n, k >= 1.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn gemm_impl(
        a: ArrayView2<bf16>,
        b: &PackedB,
        mut c: ArrayViewMut2<f32>,
        accumulate: bool,
    ) {
        let (m, k) = a.dim();
        let n = b.n;
        let kp = b.kp;
        // Either read `a` in place (contiguous rows; an odd k leaves a half pair at the
        // end of each row) or copy it into zero-padded rows of `2 * kp` values.
        let packed_a: Vec<u16>;
        let (a_ptr, lda, a_tail) = if a.strides()[1] == 1 || k == 1 {
            (a.as_ptr().cast::<u16>(), a.strides()[0], k % 2 == 1)
        } else {
            let mut buf = vec![0u16; m * 2 * kp];
            for (dst, row) in buf.chunks_exact_mut(2 * kp).zip(a.rows()) {
                for (d, x) in dst.iter_mut().zip(row) {
                    *d = x.to_bits();
                }
            }
            packed_a = buf;
            (packed_a.as_ptr(), (2 * kp) as isize, false)
        };
        let c_direct = c.strides()[1] == 1 || n == 1;
        let ldc = c.strides()[0];
        let c_ptr = c.as_mut_ptr();
        let mut scratch = [0f32; MR * NR];

        let mut p0 = 0;
        while p0 < kp {
            let kc = KC.min(kp - p0);
            let tail = a_tail && p0 + kc == kp;
            let load_c = accumulate || p0 > 0;
            for m0 in (0..m).step_by(MC) {
                let m1 = m.min(m0 + MC);
                for panel in 0..b.np {
                    let j0 = panel * NR;
                    let cols = NR.min(n - j0);
                    let mut masks = [0; NV];
                    for (v, mask) in masks.iter_mut().enumerate() {
                        let valid = cols.saturating_sub(v * LANES).min(LANES);
                        *mask = ((1u32 << valid) - 1) as __mmask16;
                    }
                    // SAFETY: `(panel * kp + p0) * NV + kc * NV <= b.data.len()`, as
                    // panel < np and p0 + kc <= kp.
                    let b_ptr = unsafe { b.data.as_ptr().add((panel * kp + p0) * NV) };
                    let mut i = m0;
                    while i < m1 {
                        let rows = MR.min(m1 - i);
                        // SAFETY: row i < m and column 2 * p0 < k (or < 2 * kp for the
                        // packed copy) lie inside `a`'s data.
                        let a_tile = unsafe { a_ptr.offset(i as isize * lda).add(2 * p0) };
                        let mut tile = Tile {
                            pairs: kc - usize::from(tail),
                            tail,
                            a: a_tile,
                            lda,
                            b: b_ptr,
                            c: scratch.as_mut_ptr(),
                            ldc: NR as isize,
                            masks,
                            load_c: false,
                        };
                        if c_direct {
                            // SAFETY: row i < m and column j0 < n lie inside `c`'s data.
                            tile.c = unsafe { c_ptr.offset(i as isize * ldc).add(j0) };
                            tile.ldc = ldc;
                            tile.load_c = load_c;
                        }
                        // SAFETY: `tile` covers `rows` rows of `a` from row i and
                        // `cols` columns of `c` from column j0 (masked), all in bounds
                        // (or the `MR × NR` scratch tile); `b_ptr` has `kc * NV`
                        // chunks; the CPU features are enabled on this function.
                        unsafe { dispatch(rows, &tile) };
                        if !c_direct {
                            let mut block = c.slice_mut(ndarray::s![i..i + rows, j0..j0 + cols]);
                            for (r, mut crow) in block.rows_mut().into_iter().enumerate() {
                                let src = &scratch[r * NR..r * NR + cols];
                                for (d, &s) in crow.iter_mut().zip(src) {
                                    *d = if load_c { *d + s } else { s };
                                }
                            }
                        }
                        i += rows;
                    }
                }
            }
            p0 += kc;
        }
    }

    /// Runs the microkernel for a tile of `rows` (1..=MR) rows.
    ///
    /// # Safety
    /// As for [`kernel`] with `R = rows`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn dispatch(rows: usize, t: &Tile) {
        // SAFETY: forwarded from this function's contract.
        unsafe {
            match rows {
                1 => kernel::<1>(t),
                2 => kernel::<2>(t),
                3 => kernel::<3>(t),
                4 => kernel::<4>(t),
                5 => kernel::<5>(t),
                6 => kernel::<6>(t),
                _ => unreachable!("tile rows must be in 1..=MR"),
            }
        }
    }

    /// Packs the full blocks of `LANES` k-pairs of `LANES` columns: `pairs[l]` is
    /// column `l` as k-pairs, and k-pair `p` of all of them goes to `dst[p * NV]`.
    /// Returns how many k-pairs were packed (a multiple of `LANES`).
    ///
    /// # Safety
    /// The CPU must support avx512f.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transpose_pairs(pairs: &[&[[bf16; 2]]], dst: &mut [Chunk]) -> usize {
        let full = pairs.iter().map(|c| c.len()).min().unwrap_or(0) / LANES * LANES;
        for p0 in (0..full).step_by(LANES) {
            let mut r = [_mm512_setzero_si512(); LANES];
            for (x, col) in r.iter_mut().zip(pairs) {
                let src = &col[p0..p0 + LANES];
                // SAFETY: `src` is LANES pairs = 64 readable bytes; the load is unaligned.
                *x = unsafe { _mm512_loadu_si512(src.as_ptr().cast()) };
            }
            // 16 × 16 transpose of u32 pairs: 4 × 4 blocks within 128-bit lanes, then
            // the lanes themselves.
            let mut t = r;
            for i in 0..LANES / 2 {
                t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
                t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
            }
            for i in 0..LANES / 4 {
                r[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
                r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
                r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
                r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
            }
            // Now lane L of r[4 i + j] holds rows 4 i .. 4 i + 4 of column 4 L + j.
            for j in 0..4 {
                let a = _mm512_shuffle_i32x4::<0b10_00_10_00>(r[j], r[4 + j]);
                let b = _mm512_shuffle_i32x4::<0b11_01_11_01>(r[j], r[4 + j]);
                let c = _mm512_shuffle_i32x4::<0b10_00_10_00>(r[8 + j], r[12 + j]);
                let d = _mm512_shuffle_i32x4::<0b11_01_11_01>(r[8 + j], r[12 + j]);
                let out = [
                    (j, _mm512_shuffle_i32x4::<0b10_00_10_00>(a, c)),
                    (4 + j, _mm512_shuffle_i32x4::<0b10_00_10_00>(b, d)),
                    (8 + j, _mm512_shuffle_i32x4::<0b11_01_11_01>(a, c)),
                    (12 + j, _mm512_shuffle_i32x4::<0b11_01_11_01>(b, d)),
                ];
                for (q, v) in out {
                    // SAFETY: __m512i and Chunk are both 64 bytes of plain integers.
                    dst[(p0 + q) * NV] = unsafe { core::mem::transmute::<__m512i, Chunk>(v) };
                }
            }
        }
        full
    }

    /// Reinterprets 32 bf16 bit patterns as the kernel operand type.
    #[target_feature(enable = "avx512f")]
    fn as_bh(v: __m512i) -> __m512bh {
        // SAFETY: __m512i and __m512bh are both 64-byte plain vectors; every bit
        // pattern is a valid value of either.
        unsafe { core::mem::transmute::<__m512i, __m512bh>(v) }
    }

    /// Loads one k-pair row (`NV` chunks) of a B micro-panel.
    ///
    /// # Safety
    /// The CPU must support avx512f; `bp` must point to `NV` readable chunks.
    #[target_feature(enable = "avx512f")]
    unsafe fn load_b(bp: *const Chunk) -> [__m512bh; NV] {
        let mut bv = [as_bh(_mm512_setzero_si512()); NV];
        for (v, x) in bv.iter_mut().enumerate() {
            // SAFETY: chunk v < NV is readable (the caller's contract) and Chunk is
            // 64-byte aligned.
            *x = as_bh(unsafe { _mm512_load_si512(bp.add(v).cast()) });
        }
        bv
    }

    /// `R × NR` microkernel: accumulates the tile's k block in registers, then stores
    /// (or adds) it to `c` under the column masks.
    ///
    /// # Safety
    /// The CPU must support avx512f and avx512bf16. For every row `r < R`:
    /// `t.a + r * t.lda` must be readable for `2 * t.pairs + t.tail` u16 values, and
    /// `t.c + r * t.ldc` must be writable (and readable if `t.load_c`) at the lanes
    /// selected by `t.masks` (group `v` covering elements `16 v .. 16 v + 16`).
    /// `t.b` must point to `(t.pairs + t.tail) * NV` readable, aligned chunks.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn kernel<const R: usize>(t: &Tile) {
        let mut acc = [[_mm512_setzero_ps(); NV]; R];
        let mut ap = t.a;
        let mut bp = t.b;
        let mut step = |bits: &[i32; R], bv: &[__m512bh; NV]| {
            for (accr, &x) in acc.iter_mut().zip(bits) {
                let av = as_bh(_mm512_set1_epi32(x));
                for (s, &bvv) in accr.iter_mut().zip(bv) {
                    *s = _mm512_dpbf16_ps(*s, bvv, av);
                }
            }
        };
        for _ in 0..t.pairs {
            let mut bits = [0i32; R];
            for (r, x) in bits.iter_mut().enumerate() {
                // SAFETY: row r < R of `a` has this pair (the caller's contract); the
                // read is unaligned-safe.
                *x = unsafe { ap.offset(r as isize * t.lda).cast::<i32>().read_unaligned() };
            }
            // SAFETY: `bp` is within the B micro-panel (the caller's contract).
            step(&bits, &unsafe { load_b(bp) });
            // SAFETY: stays within (or one past) the rows and the B micro-panel.
            unsafe {
                ap = ap.add(2);
                bp = bp.add(NV);
            }
        }
        if t.tail {
            let mut bits = [0i32; R];
            for (r, x) in bits.iter_mut().enumerate() {
                // SAFETY: row r < R of `a` has this last single value; the upper half
                // is zero (and so is B's padding row).
                *x = i32::from(unsafe { ap.offset(r as isize * t.lda).read_unaligned() });
            }
            // SAFETY: the tail's k-pair is the last one of the B micro-panel.
            step(&bits, &unsafe { load_b(bp) });
        }
        for (r, accr) in acc.iter().enumerate() {
            let crow = t.c.wrapping_offset(r as isize * t.ldc);
            for (v, (&s, &mask)) in accr.iter().zip(&t.masks).enumerate() {
                let p = crow.wrapping_add(v * LANES);
                let mut x: __m512 = s;
                // SAFETY: masked-off lanes are not accessed; the selected lanes are in
                // bounds (the caller's contract).
                unsafe {
                    if t.load_c {
                        x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(mask, p));
                    }
                    _mm512_mask_storeu_ps(p, mask, x);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{available, gemm, gemm_on, recycle, Chunk, Kernel, PackedB, LANES, NR, NV};
    use half::bf16;
    use ndarray::{s, Array2, ArrayView2, ArrayViewMut2};

    /// Deterministic xorshift64 values in ±[0.25, 2): normal range, never zero.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> f32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            let u = (self.0 >> 40) as f32 / (1u64 << 24) as f32;
            let mag = 0.25 + 1.75 * u;
            if self.0 & 1 == 0 {
                mag
            } else {
                -mag
            }
        }

        fn bf16(&mut self, rows: usize, cols: usize) -> Array2<bf16> {
            Array2::from_shape_simple_fn((rows, cols), || bf16::from_f32(self.next()))
        }
    }

    /// Memory layouts a `[rows, cols]` operand is tested in.
    #[derive(Clone, Copy, Debug)]
    enum Layout {
        RowMajor,
        /// A column-major buffer seen through `.t()`.
        Transposed,
        /// Every other column of a `[rows, 2 cols]` buffer.
        Strided,
        /// Row-major with the row order reversed (negative row stride).
        Reversed,
    }

    const LAYOUTS: [Layout; 4] = [
        Layout::RowMajor,
        Layout::Transposed,
        Layout::Strided,
        Layout::Reversed,
    ];

    /// Buffer holding `x` in `layout`; `view` recovers a view equal to `x`.
    fn store<T: Copy + Default>(x: &Array2<T>, layout: Layout) -> Array2<T> {
        let (r, c) = x.dim();
        match layout {
            Layout::RowMajor => x.clone(),
            Layout::Transposed => x.t().as_standard_layout().into_owned(),
            Layout::Strided => {
                let mut buf = Array2::default((r, 2 * c));
                buf.slice_mut(s![.., ..;2]).assign(x);
                buf
            }
            Layout::Reversed => x.slice(s![..;-1, ..]).to_owned(),
        }
    }

    fn view<T>(buf: &Array2<T>, layout: Layout) -> ArrayView2<'_, T> {
        match layout {
            Layout::RowMajor => buf.view(),
            Layout::Transposed => buf.t(),
            Layout::Strided => buf.slice(s![.., ..;2]),
            Layout::Reversed => buf.slice(s![..;-1, ..]),
        }
    }

    fn view_mut<T>(buf: &mut Array2<T>, layout: Layout) -> ArrayViewMut2<'_, T> {
        match layout {
            Layout::RowMajor => buf.view_mut(),
            Layout::Transposed => buf.view_mut().reversed_axes(),
            Layout::Strided => buf.slice_mut(s![.., ..;2]),
            Layout::Reversed => buf.slice_mut(s![..;-1, ..]),
        }
    }

    /// Checks the product on every kernel this CPU runs for `k` against an
    /// f64 reference, for one shape and set of layouts.
    fn check(m: usize, n: usize, k: usize, la: Layout, lb: Layout, lc: Layout, accumulate: bool) {
        let mut rng = Rng(0x2545_F491_4F6C_DD1D ^ (m * 1_000_003 + n * 1009 + k) as u64);
        let a = rng.bf16(m, k);
        let b = rng.bf16(k, n);
        let c0 = Array2::from_shape_simple_fn((m, n), || rng.next());

        let a_buf = store(&a, la);
        let b_buf = store(&b, lb);
        let packed = PackedB::new(view(&b_buf, lb));
        assert_eq!((packed.k, packed.n), (k, n));
        for &kernel in Kernel::ALL.iter().filter(|kernel| kernel.runs(k)) {
            let mut c_buf = store(&c0, lc);
            gemm_on(
                kernel,
                view(&a_buf, la),
                &packed,
                view_mut(&mut c_buf, lc),
                accumulate,
            );
            check_product(&a, &b, &c0, &c_buf, lc, accumulate, kernel);
        }
    }

    /// `c_buf` (in `lc`) against `a · b` (`+ c0` when `accumulate`) in f64.
    fn check_product(
        a: &Array2<bf16>,
        b: &Array2<bf16>,
        c0: &Array2<f32>,
        c_buf: &Array2<f32>,
        lc: Layout,
        accumulate: bool,
        kernel: Kernel,
    ) {
        let ((m, k), n) = (a.dim(), b.ncols());
        let c = view(c_buf, lc);
        // Untouched padding of the strided buffer stays zero.
        if let Layout::Strided = lc {
            assert!(c_buf.slice(s![.., 1..;2]).iter().all(|&x| x == 0.0));
        }

        // f64 reference from contiguous rows of a and of b.t().
        let af: Vec<f64> = a.iter().map(|x| f64::from(x.to_f32())).collect();
        let bt: Vec<f64> = b.t().iter().map(|x| f64::from(x.to_f32())).collect();
        for i in 0..m {
            for j in 0..n {
                let (mut sum, mut mag) = (0f64, 0f64);
                for (x, y) in af[i * k..(i + 1) * k].iter().zip(&bt[j * k..(j + 1) * k]) {
                    sum += x * y;
                    mag += (x * y).abs();
                }
                if accumulate {
                    sum += f64::from(c0[[i, j]]);
                    mag += f64::from(c0[[i, j]]).abs();
                }
                let got = f64::from(c[[i, j]]);
                assert!(
                    (got - sum).abs() <= 1e-5 * mag,
                    "{kernel:?} m={m} n={n} k={k} c={lc:?} acc={accumulate}: \
                     c[{i},{j}] = {got}, want {sum}"
                );
            }
        }
    }

    /// Edge sizes for m, n and k. Kernel tests return early on CPUs without
    /// avx512bf16.
    const DIMS: [usize; 13] = [1, 2, 3, 15, 16, 17, 31, 33, 64, 127, 128, 129, 200];

    /// All m × n × k combinations of `DIMS`, in the caller's main layouts.
    #[test]
    fn all_edge_shapes() {
        if !available() {
            return;
        }
        for (t, &m) in DIMS.iter().enumerate() {
            for &n in &DIMS {
                for &k in &DIMS {
                    check(
                        m,
                        n,
                        k,
                        Layout::RowMajor,
                        Layout::Transposed,
                        Layout::RowMajor,
                        t % 2 == 1,
                    );
                }
            }
        }
    }

    /// Every layout combination of a, b and c, both accumulate modes, on edge shapes.
    #[test]
    fn all_layouts() {
        if !available() {
            return;
        }
        let shapes = [
            (1, 1, 1),
            (1, 200, 3),
            (200, 1, 17),
            (3, 17, 1),
            (7, 65, 33),
            (17, 129, 31),
            (33, 64, 128),
            (129, 31, 127),
            (64, 128, 129),
        ];
        for &(m, n, k) in &shapes {
            for la in LAYOUTS {
                for lb in LAYOUTS {
                    for lc in LAYOUTS {
                        for accumulate in [false, true] {
                            check(m, n, k, la, lb, lc, accumulate);
                        }
                    }
                }
            }
        }
    }

    /// Packs into recycled buffers, which are not cleared: a buffer left full
    /// of NaNs, of exactly the length the next pack takes, gives the same
    /// products (a NaN left in the odd-k padding would poison a row).
    #[test]
    fn recycled_buffers() {
        if !available() {
            return;
        }
        for &(m, n, k) in &[
            (5usize, 17usize, 9usize),
            (3, 1, 1),
            (33, 65, 31),
            (35, 17, 64),
            (2, 70, 33),
        ] {
            for (lb, accumulate) in [(Layout::Transposed, false), (Layout::RowMajor, true)] {
                let len = n.div_ceil(NR) * k.div_ceil(2) * NV;
                recycle::give(vec![Chunk([u16::MAX; 2 * LANES]); len]);
                check(m, n, k, Layout::RowMajor, lb, Layout::RowMajor, accumulate);
            }
        }
    }

    /// Shapes spanning several k blocks (with an odd k tail) and m blocks.
    #[test]
    fn multi_block() {
        if !available() {
            return;
        }
        for &(m, n, k) in &[
            (300, 70, 2051),
            (100, 130, 1100),
            (130, 257, 1023),
            (6, 2048, 300),
            (131, 97, 1024),
            (64, 1030, 2048),
        ] {
            for la in [Layout::RowMajor, Layout::Strided] {
                for accumulate in [false, true] {
                    check(
                        m,
                        n,
                        k,
                        la,
                        Layout::Transposed,
                        Layout::RowMajor,
                        accumulate,
                    );
                    check(
                        m,
                        n,
                        k,
                        la,
                        Layout::RowMajor,
                        Layout::Transposed,
                        accumulate,
                    );
                }
            }
        }
    }

    /// A block of a wider row-major matrix (row stride > k), as the caller passes.
    #[test]
    fn sub_block_of_wider_matrix() {
        if !available() {
            return;
        }
        let mut rng = Rng(7);
        let wide = rng.bf16(129, 300);
        let w = rng.bf16(77, 300);
        for (k0, k1) in [(0, 128), (128, 256), (5, 138), (299, 300), (3, 35)] {
            let a = wide.slice(s![.., k0..k1]);
            let b = w.slice(s![.., k0..k1]);
            let packed = PackedB::new(b.t());
            let af = a.mapv(|x| f64::from(x.to_f32()));
            let bf = b.mapv(|x| f64::from(x.to_f32()));
            let want = af.dot(&bf.t());
            let mag = af.mapv(f64::abs).dot(&bf.t().mapv(f64::abs));
            for &kernel in Kernel::ALL.iter().filter(|kernel| kernel.runs(k1 - k0)) {
                let mut c = Array2::<f32>::zeros((129, 77));
                gemm_on(kernel, a, &packed, c.view_mut(), false);
                for ((&got, &w), &s) in c.iter().zip(&want).zip(&mag) {
                    assert!(
                        (f64::from(got) - w).abs() <= 1e-5 * s,
                        "{kernel:?}: {got} vs {w}"
                    );
                }
            }
        }
    }

    /// Products whose k is whole AMX tiles take the AMX kernel where the
    /// CPU runs it, the others the `vdpbf16ps` one.
    #[test]
    fn kernel_choice() {
        if !available() {
            return;
        }
        assert_eq!(Kernel::best(33), Kernel::Dot);
        let tiles = Kernel::ALL
            .iter()
            .any(|kernel| *kernel != Kernel::Dot && kernel.runs(64));
        assert_eq!(Kernel::best(64) != Kernel::Dot, tiles);
    }

    /// m, n or k of zero: no-op, except k = 0 without accumulate zeroes `c`.
    #[test]
    fn empty_dims() {
        let a = Array2::<bf16>::default((4, 0));
        let packed = PackedB::new(Array2::<bf16>::default((0, 5)).view());
        let mut c = Array2::<f32>::from_elem((4, 5), 3.0);
        gemm(a.view(), &packed, c.view_mut(), true);
        assert!(c.iter().all(|&x| x == 3.0));
        gemm(a.view(), &packed, c.view_mut(), false);
        assert!(c.iter().all(|&x| x == 0.0));

        for b in [
            Array2::<bf16>::default((0, 17)),
            Array2::<bf16>::default((17, 0)).reversed_axes(),
        ] {
            let packed = PackedB::new(b.view());
            assert_eq!((packed.k, packed.n), (0, 17));
            let mut c = Array2::<f32>::from_elem((2, 17), 3.0);
            gemm(
                Array2::<bf16>::default((2, 0)).view(),
                &packed,
                c.view_mut(),
                false,
            );
            assert!(c.iter().all(|&x| x == 0.0));
        }

        let packed = PackedB::new(Array2::<bf16>::default((3, 0)).view());
        let mut c = Array2::<f32>::zeros((4, 0));
        gemm(
            Array2::<bf16>::default((4, 3)).view(),
            &packed,
            c.view_mut(),
            false,
        );
        let packed = PackedB::new(Array2::<bf16>::default((3, 5)).view());
        let mut c = Array2::<f32>::zeros((0, 5));
        gemm(
            Array2::<bf16>::default((0, 3)).view(),
            &packed,
            c.view_mut(),
            false,
        );
    }

    #[test]
    #[should_panic]
    fn mismatched_k_panics() {
        let packed = PackedB::new(Array2::<bf16>::default((3, 5)).view());
        let mut c = Array2::<f32>::zeros((4, 5));
        gemm(
            Array2::<bf16>::default((4, 2)).view(),
            &packed,
            c.view_mut(),
            false,
        );
    }

    #[test]
    #[should_panic]
    fn mismatched_c_panics() {
        let packed = PackedB::new(Array2::<bf16>::default((3, 5)).view());
        let mut c = Array2::<f32>::zeros((4, 6));
        gemm(
            Array2::<bf16>::default((4, 3)).view(),
            &packed,
            c.view_mut(),
            false,
        );
    }
}
