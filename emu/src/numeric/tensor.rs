//! The warp-wide tensor-core instructions: `mma.sync.aligned.m16n8k16.row.col`
//! (f16 and bf16 operands, f32 accumulators) and `ldmatrix.sync.aligned.m8n8`
//! (`.x1 .x2 .x4`, with and without `.trans`), with the fragment layouts
//! and lane/row mapping exactly as the PTX ISA's "Matrix fragments for
//! mma.m16n8k16" and "ldmatrix" sections define them.
//!
//! With `groupID = lane >> 2` and `threadID_in_group = lane % 4` (the
//! ISA's names), the m16n8k16 fragments of 16-bit operands are:
//! - A (16x16, row): element `a_i` (`i` in 0..8, two per `.b32` register,
//!   the lower index in the lower half) is at row `groupID` for
//!   `i < 2 || 4 <= i < 6`, else `groupID + 8`, and column
//!   `threadID_in_group * 2 + (i & 1)`, plus 8 for `i >= 4`;
//! - B (16x8, col): `b_i` (`i` in 0..4) is at row
//!   `threadID_in_group * 2 + (i & 1)`, plus 8 for `i >= 2`, column
//!   `groupID`;
//! - C and D (16x8, f32): `c_i` (`i` in 0..4) is at row `groupID`, plus 8
//!   for `i >= 2`, column `threadID_in_group * 2 + (i & 1)`.
//!
//! `ldmatrix .m8n8 .b16`: lanes `8j..8j+8` supply the addresses of rows
//! 0..8 of matrix `j`; each lane receives, in its `j`-th register, the
//! two elements `(row groupID, columns 2 * threadID_in_group + {0, 1})`
//! of matrix `j` (lower column in the lower half), or under `.trans` those
//! of the transposed matrix, i.e. rows `2 * threadID_in_group + {0, 1}`
//! of column `groupID`.

use super::convert::{bf16_to_f32, f16_to_f32};
use super::float::{f32_fma, F32Mods};

/// The operand type of an `mma`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MmaType {
    /// `.f16.f16` operands
    F16,
    /// `.bf16.bf16` operands
    Bf16,
}

/// `mma.sync.aligned.m16n8k16.row.col.f32.{ty}.{ty}.f32 d, a, b, c` for a
/// whole warp: `a[lane]` is that lane's four `.b32` A registers (each two
/// packed halves), `b[lane]` its two B registers, `c[lane]` its four f32
/// accumulators (bits). Returns every lane's four D registers (f32 bits).
/// The products are exact and summed in f32 with round-to-nearest (the
/// hardware's order is unspecified; this sums k in order 0..16 then adds c).
pub fn mma_m16n8k16(
    ty: MmaType,
    a: &[[u32; 4]; 32],
    b: &[[u32; 2]; 32],
    c: &[[u32; 4]; 32],
) -> [[u32; 4]; 32] {
    let widen = |h: u32| match ty {
        MmaType::F16 => f16_to_f32(h as u16),
        MmaType::Bf16 => bf16_to_f32(h as u16),
    };
    let mut am = [[0u32; 16]; 16];
    let mut bm = [[0u32; 8]; 16];
    let mut cm = [[0u32; 8]; 16];
    for lane in 0..32 {
        let (group, tig) = (lane >> 2, lane % 4);
        for (r, &reg) in a[lane].iter().enumerate() {
            let (row, col) = (group + 8 * (r & 1), 2 * tig + 8 * (r >> 1));
            am[row][col] = widen(reg & 0xffff);
            am[row][col + 1] = widen(reg >> 16);
        }
        for (r, &reg) in b[lane].iter().enumerate() {
            let row = 2 * tig + 8 * r;
            bm[row][group] = widen(reg & 0xffff);
            bm[row + 1][group] = widen(reg >> 16);
        }
        for (i, &v) in c[lane].iter().enumerate() {
            cm[group + 8 * (i >> 1)][2 * tig + (i & 1)] = v;
        }
    }
    let dots = dot_products(&am, &bm);
    let mut d = [[0u32; 4]; 32];
    for (lane, out) in d.iter_mut().enumerate() {
        let (group, tig) = (lane >> 2, lane % 4);
        for (i, slot) in out.iter_mut().enumerate() {
            let (row, col) = (group + 8 * (i >> 1), 2 * tig + (i & 1));
            *slot = add_rn(dots[row][col], cm[row][col]);
        }
    }
    d
}

/// `dot[row][col]` = the sum over k in order 0..16 of `a[row][k] * b[k][col]`
/// (f32 bits), each step rounded once to nearest, starting from -0.0 (the
/// additive identity under round-to-nearest).
///
/// A product of two f16 or bf16 values has at most 22 significant bits, so
/// in f32 it is exact unless it leaves the normal range. When the operands'
/// magnitudes show that no product can (every operand finite, the smallest
/// nonzero product normal, the largest finite), `acc + a * b` in host f32
/// arithmetic is the correctly rounded `fma` for every step, and the whole
/// product runs that way, vectorised across the 8 columns. Otherwise (f32
/// underflow or overflow of some product, infinities, NaN) each step is the
/// exact `fma`.
fn dot_products(a: &[[u32; 16]; 16], b: &[[u32; 8]; 16]) -> [[u32; 8]; 16] {
    if !products_exact(a.as_flattened(), b.as_flattened()) {
        let rn = F32Mods::default();
        return std::array::from_fn(|row| {
            std::array::from_fn(|col| {
                (0..16).fold(0x8000_0000, |acc, k| f32_fma(a[row][k], b[k][col], acc, rn))
            })
        });
    }
    let bf: [[f32; 8]; 16] = b.map(|row| row.map(f32::from_bits));
    a.map(|row| {
        let mut acc = [-0.0f32; 8];
        for (&x, bk) in row.iter().zip(bf.iter()) {
            let x = f32::from_bits(x);
            for (acc, &y) in acc.iter_mut().zip(bk.iter()) {
                *acc += x * y;
            }
        }
        acc.map(f32::to_bits)
    })
}

/// `add.rn.f32`: the host's IEEE sum, NaN made canonical.
fn add_rn(a: u32, b: u32) -> u32 {
    let sum = f32::from_bits(a) + f32::from_bits(b);
    if sum.is_nan() {
        0x7fff_ffff
    } else {
        sum.to_bits()
    }
}

/// Whether every product of an element of `a` and one of `b` (f32 bits of
/// f16 or bf16 values, at most 11 significant bits each) is exact in f32:
/// all finite, and the products of the extreme nonzero magnitudes normal
/// and finite (bounds computed in f64, where these products are exact).
fn products_exact(a: &[u32], b: &[u32]) -> bool {
    let range = |v: &[u32]| {
        let mut finite = true;
        let (mut lo, mut hi) = (f64::INFINITY, 0.0f64);
        for &bits in v {
            let x = f32::from_bits(bits).abs();
            finite &= x.is_finite();
            if x != 0.0 {
                lo = lo.min(f64::from(x));
                hi = hi.max(f64::from(x));
            }
        }
        (finite, lo, hi)
    };
    let (fa, lo_a, hi_a) = range(a);
    let (fb, lo_b, hi_b) = range(b);
    if !(fa && fb) {
        return false;
    }
    // No nonzero operand on one side: every product is an exact zero.
    if hi_a == 0.0 || hi_b == 0.0 {
        return true;
    }
    lo_a * lo_b >= f64::from(f32::MIN_POSITIVE) && hi_a * hi_b <= f64::from(f32::MAX)
}

/// `ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{.trans}.shared.b16` for a whole
/// warp: `row_addr[lane]` is the shared address each lane supplies (only the
/// lanes that supply rows for `num` matrices are read: lanes 0-7 for x1,
/// 0-15 for x2, all for x4), `read_row(addr)` returns the 16 bytes of one
/// 8-element row (little-endian elements). Returns each lane's `num`
/// destination registers (unused entries 0); a `num` above 4 loads 4.
pub fn ldmatrix(
    num: usize,
    trans: bool,
    row_addr: &[u32; 32],
    mut read_row: impl FnMut(u32) -> [u8; 16],
) -> [[u32; 4]; 32] {
    let mut out = [[0u32; 4]; 32];
    for j in 0..num.min(4) {
        let mut m = [[0u16; 8]; 8];
        for (r, row) in m.iter_mut().enumerate() {
            let bytes = read_row(row_addr[8 * j + r]);
            for (e, pair) in row.iter_mut().zip(bytes.chunks_exact(2)) {
                *e = u16::from_le_bytes([pair[0], pair[1]]);
            }
        }
        for (lane, regs) in out.iter_mut().enumerate() {
            let (group, tig) = (lane >> 2, lane % 4);
            let (lo, hi) = if trans {
                (m[2 * tig][group], m[2 * tig + 1][group])
            } else {
                (m[group][2 * tig], m[group][2 * tig + 1])
            };
            regs[j] = u32::from(lo) | (u32::from(hi) << 16);
        }
    }
    out
}
