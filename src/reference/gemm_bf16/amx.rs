//! The bf16 product on Intel AMX (`tdpbf16ps`), for the CPUs that have it
//! (Xeon since Sapphire Rapids).
//!
//! One `tdpbf16ps` multiplies a 16 x 32 bf16 tile of `a` by a 16-pair x 16
//! column tile of `op(B)` into a 16 x 16 f32 tile: 16 times the work of a
//! `vdpbf16ps`. The kernel keeps a 32 x 32 block of `c` in four tiles and
//! walks all of k over it. It reads [`PackedB`] as it is, since one k-pair
//! row of 16 columns (a [`Chunk`]) is one 64-byte tile row, and `a` in
//! place when its rows are contiguous.
//!
//! Linux leaves the tile registers off until a process asks for them
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`); [`available`]
//! asks once. Rust has no stable AMX intrinsics, so the instructions are
//! inline assembly. Numerics as for the AVX512-BF16 kernel: exact products,
//! f32 accumulation, denormal inputs and results flushed to zero, round to
//! nearest even.

use std::arch::asm;
use std::sync::OnceLock;

use half::bf16;
use ndarray::{ArrayView2, ArrayViewMut2};

use super::{Chunk, PackedB, LANES, NV};

/// Rows of every tile, and columns (f32) of a `c` tile.
const TR: usize = 16;
/// k values in one row of an `a` tile (64 bytes of bf16).
const TK: usize = 32;
/// Rows and columns of the block of `c` the kernel holds in tiles.
const BLOCK: usize = 2 * TR;
/// Tile registers of palette 1.
const TILES: usize = 8;
/// Bytes between k-pair rows of one column group in [`PackedB`].
const B_STRIDE: usize = NV * size_of::<Chunk>();

/// `arch_prctl` code that requests permission for an extended state.
const ARCH_REQ_XCOMP_PERM: libc::c_ulong = 0x1023;
/// The extended-state component of the tile data.
const XFEATURE_XTILEDATA: libc::c_ulong = 18;

/// Whether this CPU and OS run AMX-BF16 for this process.
///
/// CPUID leaf 7 (AMX-TILE and AMX-BF16), then Linux's permission for the
/// tile data, requested once for the whole process. Linux refuses it on
/// kernels without AMX support and when a thread's alternate signal stack
/// is too small for the tile state; then the `vdpbf16ps` kernel runs.
pub(super) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        // `__cpuid_count` is safe on recent Rust and unsafe on older ones.
        #[allow(unused_unsafe)]
        // SAFETY: CPUID exists on every x86-64 CPU.
        let leaf = unsafe { std::arch::x86_64::__cpuid_count(7, 0) };
        let (amx_bf16, amx_tile) = (leaf.edx >> 22 & 1 == 1, leaf.edx >> 24 & 1 == 1);
        // SAFETY: this `arch_prctl` request reads no memory; it only grants
        // (or refuses) the process the tile state.
        amx_bf16
            && amx_tile
            && unsafe {
                libc::syscall(
                    libc::SYS_arch_prctl,
                    ARCH_REQ_XCOMP_PERM,
                    XFEATURE_XTILEDATA,
                )
            } == 0
    })
}

/// Whether the kernel takes products with inner size `k`: whole `a` tiles.
pub(super) fn fits(k: usize) -> bool {
    k.is_multiple_of(TK)
}

/// The `ldtilecfg` operand (palette 1: every tile 16 rows of 64 bytes).
#[repr(C, align(64))]
struct Config {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    /// Bytes per row of each tile.
    colsb: [u16; 16],
    /// Rows of each tile.
    rows: [u8; 16],
}

/// Where the kernel puts one 16 x 16 tile of `c`: straight into `c`, or
/// through a scratch tile when it crosses `c`'s edge or `c`'s rows are not
/// contiguous.
struct Target {
    /// First row and column in `c`.
    row: usize,
    col: usize,
    /// Rows and columns of the tile inside `c`.
    rows: usize,
    cols: usize,
    /// Whether the tile is loaded from and stored to `c` itself.
    direct: bool,
}

/// Computes the product (`c = a · B`, or `c += a · B` when `accumulate`).
///
/// # Safety
/// [`available`] must have returned true, and the shapes must be checked:
/// `a` is `[m, k]` and `c` is `[m, n]` for `b`'s k and n, with m, n, k >= 1
/// and [`fits`]`(k)`.
pub(super) unsafe fn gemm_impl(
    a: ArrayView2<bf16>,
    b: &PackedB,
    mut c: ArrayViewMut2<f32>,
    accumulate: bool,
) {
    let (m, k) = a.dim();
    let n = b.n;
    // `a` in place when its rows are contiguous and in order, else a copy.
    let in_place = a.strides()[1] == 1 && a.strides()[0] >= k as isize;
    let copy;
    let (a_ptr, lda) = if in_place {
        (a.as_ptr().cast::<u16>(), a.strides()[0] as usize)
    } else {
        copy = a.as_standard_layout().into_owned();
        (copy.as_ptr().cast::<u16>(), k)
    };
    // Zero-padded rows for a last block of fewer than `BLOCK` rows.
    let mut short = Vec::new();
    let c_rows_contiguous = c.strides()[1] == 1 && c.strides()[0] >= n as isize;
    let (ldc, c_col_stride) = (c.strides()[0], c.strides()[1]);
    let c_ptr = c.as_mut_ptr();
    let mut scratch = [[0f32; TR]; TR];

    // Palette 1 has 8 tiles; the entries past them must be zero.
    let config = Config {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        colsb: std::array::from_fn(|t| if t < TILES { 64 } else { 0 }),
        rows: std::array::from_fn(|t| if t < TILES { TR as u8 } else { 0 }),
    };
    // SAFETY: the CPU has AMX and the process its permission (`available`);
    // `config` is a valid palette-1 configuration of 64 aligned bytes.
    unsafe { asm!("ldtilecfg [{0}]", in(reg) &config, options(nostack, readonly)) };

    for row0 in (0..m).step_by(BLOCK) {
        let rows = BLOCK.min(m - row0);
        let (block_a, block_lda) = if rows == BLOCK {
            // SAFETY: row `row0 < m` of `a` (or of its copy).
            (unsafe { a_ptr.add(row0 * lda) }, lda)
        } else {
            short.resize(BLOCK * k, 0u16);
            for (r, dst) in short.chunks_exact_mut(k).enumerate() {
                if r < rows {
                    // SAFETY: row `row0 + r < m` holds `k` contiguous values.
                    let src = unsafe { std::slice::from_raw_parts(a_ptr.add((row0 + r) * lda), k) };
                    dst.copy_from_slice(src);
                } else {
                    dst.fill(0);
                }
            }
            (short.as_ptr(), k)
        };
        for col0 in (0..n).step_by(BLOCK) {
            let targets: [Target; 4] = std::array::from_fn(|t| {
                let (row, col) = (row0 + t / 2 * TR, col0 + t % 2 * TR);
                let rows = m.saturating_sub(row).min(TR);
                let cols = n.saturating_sub(col).min(TR);
                Target {
                    row,
                    col,
                    rows,
                    cols,
                    direct: c_rows_contiguous && rows == TR && cols == TR,
                }
            });
            for (t, target) in targets.iter().enumerate() {
                if target.direct && accumulate {
                    // SAFETY: the whole tile lies inside `c`, whose rows are
                    // contiguous `ldc` f32 apart.
                    unsafe {
                        let p = c_ptr.add(target.row * ldc as usize + target.col);
                        load_c(t, p, ldc as usize * size_of::<f32>());
                    }
                } else {
                    // SAFETY: the tiles are configured.
                    unsafe { zero_c(t) };
                }
            }
            // Column groups of 16 in the packed panels (the last panel is
            // zero-padded to `NR` columns, so the second group exists).
            let groups = [col0 / LANES, col0 / LANES + 1];
            let b_ptrs = groups.map(|g| {
                // SAFETY: chunk `(g / NV * kp) * NV + g % NV` starts the
                // group's k-pairs inside `b.data` (`g < np * NV`).
                unsafe { b.data.as_ptr().add(g / NV * b.kp * NV + g % NV) }.cast::<u8>()
            });
            for kb in 0..k / TK {
                // SAFETY: the `a` tiles are 16 rows of 64 bytes from column
                // `kb * TK < k` of rows inside `a` (or its padded copy); the
                // `b` tiles are 16 k-pair rows `kb * 16..` of their groups,
                // inside the panel (k is whole tiles); the tiles are configured.
                unsafe {
                    let a0 = block_a.add(kb * TK).cast::<u8>();
                    let a1 = block_a.add(TR * block_lda + kb * TK).cast::<u8>();
                    let off = kb * TK / 2 * B_STRIDE;
                    step(
                        a0,
                        a1,
                        block_lda * size_of::<u16>(),
                        b_ptrs[0].add(off),
                        b_ptrs[1].add(off),
                    );
                }
            }
            for (t, target) in targets.iter().enumerate() {
                if target.direct {
                    // SAFETY: as for the load above.
                    unsafe {
                        let p = c_ptr.add(target.row * ldc as usize + target.col);
                        store_c(t, p, ldc as usize * size_of::<f32>());
                    }
                } else if target.rows > 0 && target.cols > 0 {
                    // SAFETY: `scratch` is 16 rows of 64 bytes.
                    unsafe {
                        store_c(t, scratch.as_mut_ptr().cast(), TR * size_of::<f32>());
                    }
                    for (r, src) in scratch.iter().take(target.rows).enumerate() {
                        for (j, &s) in src.iter().take(target.cols).enumerate() {
                            let (i, j) = ((target.row + r) as isize, (target.col + j) as isize);
                            // SAFETY: element (i, j) lies inside `c` (i < m,
                            // j < n), at these strides from its first one.
                            let d = unsafe { &mut *c_ptr.offset(i * ldc + j * c_col_stride) };
                            *d = if accumulate { *d + s } else { s };
                        }
                    }
                }
            }
        }
    }
    // SAFETY: returns the tile state to its initial (unused) state.
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}

/// `c` tiles 0..4 (`tmm0..tmm3`) += the `a` tiles (`tmm4`, `tmm5`, rows 0..16
/// and 16..32) times the `b` tiles (`tmm6`, `tmm7`, columns 0..16 and
/// 16..32): tile `t` is rows `t / 2`, columns `t % 2`.
///
/// # Safety
/// The tiles must be configured; `a0` and `a1` must each start 16 readable
/// rows of 64 bytes, `lda` bytes apart, and `b0` and `b1` 16 readable rows
/// of 64 bytes, [`B_STRIDE`] bytes apart.
#[inline]
unsafe fn step(a0: *const u8, a1: *const u8, lda: usize, b0: *const u8, b1: *const u8) {
    // SAFETY: the caller's contract.
    unsafe {
        asm!(
            "tileloadd tmm4, [{a0} + {lda}*1]",
            "tileloadd tmm5, [{a1} + {lda}*1]",
            "tileloadd tmm6, [{b0} + {bs}*1]",
            "tileloadd tmm7, [{b1} + {bs}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            a0 = in(reg) a0,
            a1 = in(reg) a1,
            lda = in(reg) lda,
            b0 = in(reg) b0,
            b1 = in(reg) b1,
            bs = in(reg) B_STRIDE,
            options(nostack, readonly),
        );
    }
}

/// Zeroes `c` tile `t` (0..4).
///
/// # Safety
/// The tiles must be configured.
unsafe fn zero_c(t: usize) {
    // SAFETY: the caller's contract; `tilezero` touches no memory.
    unsafe {
        match t {
            0 => asm!("tilezero tmm0", options(nostack, nomem)),
            1 => asm!("tilezero tmm1", options(nostack, nomem)),
            2 => asm!("tilezero tmm2", options(nostack, nomem)),
            _ => asm!("tilezero tmm3", options(nostack, nomem)),
        }
    }
}

/// Loads `c` tile `t` (0..4) from 16 rows of 16 f32 at `p`, `stride` bytes
/// apart.
///
/// # Safety
/// The tiles must be configured and those rows readable.
unsafe fn load_c(t: usize, p: *const f32, stride: usize) {
    // SAFETY: the caller's contract.
    unsafe {
        match t {
            0 => {
                asm!("tileloadd tmm0, [{0} + {1}*1]", in(reg) p, in(reg) stride, options(nostack, readonly))
            }
            1 => {
                asm!("tileloadd tmm1, [{0} + {1}*1]", in(reg) p, in(reg) stride, options(nostack, readonly))
            }
            2 => {
                asm!("tileloadd tmm2, [{0} + {1}*1]", in(reg) p, in(reg) stride, options(nostack, readonly))
            }
            _ => {
                asm!("tileloadd tmm3, [{0} + {1}*1]", in(reg) p, in(reg) stride, options(nostack, readonly))
            }
        }
    }
}

/// Stores `c` tile `t` (0..4) to 16 rows of 16 f32 at `p`, `stride` bytes
/// apart.
///
/// # Safety
/// The tiles must be configured and those rows writable.
unsafe fn store_c(t: usize, p: *mut f32, stride: usize) {
    // SAFETY: the caller's contract.
    unsafe {
        match t {
            0 => {
                asm!("tilestored [{0} + {1}*1], tmm0", in(reg) p, in(reg) stride, options(nostack))
            }
            1 => {
                asm!("tilestored [{0} + {1}*1], tmm1", in(reg) p, in(reg) stride, options(nostack))
            }
            2 => {
                asm!("tilestored [{0} + {1}*1], tmm2", in(reg) p, in(reg) stride, options(nostack))
            }
            _ => {
                asm!("tilestored [{0} + {1}*1], tmm3", in(reg) p, in(reg) stride, options(nostack))
            }
        }
    }
}
