//! `mma.sync.aligned.m16n8k16.row.col` and `ldmatrix.sync.aligned.m8n8` of
//! `numeric::tensor` against the PTX ISA's fragment layouts.
//!
//! The fragments are built here straight from the ISA's formulas (with
//! `groupID = lane >> 2`, `threadID_in_group = lane % 4`):
//! A: `a_i` at row `groupID` for `i < 2 || 4 <= i < 6`, else
//! `groupID + 8`; column `threadID_in_group * 2 + (i & 1)`, `+ 8` for
//! `i >= 4`. B: `b_i` at row `threadID_in_group * 2 + (i & 1)`, `+ 8` for
//! `i >= 2`; column `groupID`. C/D: `c_i` at row `groupID`, `+ 8` for
//! `i >= 2`; column `threadID_in_group * 2 + (i & 1)`. Two 16-bit elements
//! share a `.b32` register, the lower index in the lower half.
//! Matrices with one-hot and unique-id entries (small integers, so every
//! sum is exact) show that each element lands where the ISA says.

use dropless_emu::numeric::tensor::{ldmatrix, mma_m16n8k16, MmaType};
use half::{bf16, f16};

type A = [[f32; 16]; 16];
type B = [[f32; 8]; 16];
type C = [[f32; 8]; 16];

fn half_bits(ty: MmaType, x: f32) -> u32 {
    match ty {
        MmaType::F16 => u32::from(f16::from_f32(x).to_bits()),
        MmaType::Bf16 => u32::from(bf16::from_f32(x).to_bits()),
    }
}

fn a_frag(ty: MmaType, a: &A) -> [[u32; 4]; 32] {
    let mut out = [[0u32; 4]; 32];
    for (lane, regs) in out.iter_mut().enumerate() {
        let (g, t) = (lane >> 2, lane % 4);
        for i in 0..8 {
            let row = if i < 2 || (4..6).contains(&i) {
                g
            } else {
                g + 8
            };
            let col = t * 2 + (i & 1) + if i >= 4 { 8 } else { 0 };
            regs[i / 2] |= half_bits(ty, a[row][col]) << (16 * (i % 2));
        }
    }
    out
}

fn b_frag(ty: MmaType, b: &B) -> [[u32; 2]; 32] {
    let mut out = [[0u32; 2]; 32];
    for (lane, regs) in out.iter_mut().enumerate() {
        let (g, t) = (lane >> 2, lane % 4);
        for i in 0..4 {
            let row = t * 2 + (i & 1) + if i >= 2 { 8 } else { 0 };
            regs[i / 2] |= half_bits(ty, b[row][g]) << (16 * (i % 2));
        }
    }
    out
}

fn cd_position(lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = (lane >> 2, lane % 4);
    (if i < 2 { g } else { g + 8 }, t * 2 + (i & 1))
}

fn c_frag(c: &C) -> [[u32; 4]; 32] {
    let mut out = [[0u32; 4]; 32];
    for (lane, regs) in out.iter_mut().enumerate() {
        for (i, r) in regs.iter_mut().enumerate() {
            let (row, col) = cd_position(lane, i);
            *r = c[row][col].to_bits();
        }
    }
    out
}

fn d_matrix(d: &[[u32; 4]; 32]) -> C {
    let mut out = [[f32::NAN; 8]; 16];
    for (lane, regs) in d.iter().enumerate() {
        for (i, &r) in regs.iter().enumerate() {
            let (row, col) = cd_position(lane, i);
            out[row][col] = f32::from_bits(r);
        }
    }
    out
}

fn reference(a: &A, b: &B, c: &C) -> C {
    let mut d = [[0f32; 8]; 16];
    for m in 0..16 {
        for n in 0..8 {
            let dot: f64 = (0..16)
                .map(|k| f64::from(a[m][k]) * f64::from(b[k][n]))
                .sum();
            d[m][n] = (dot + f64::from(c[m][n])) as f32;
        }
    }
    d
}

fn run(ty: MmaType, a: &A, b: &B, c: &C) -> C {
    d_matrix(&mma_m16n8k16(
        ty,
        &a_frag(ty, a),
        &b_frag(ty, b),
        &c_frag(c),
    ))
}

const TYPES: [MmaType; 2] = [MmaType::F16, MmaType::Bf16];

#[test]
fn identity_a_passes_b_through() {
    let mut a = [[0f32; 16]; 16];
    for (i, row) in a.iter_mut().enumerate() {
        row[i] = 1.0;
    }
    let mut b = [[0f32; 8]; 16];
    for (k, row) in b.iter_mut().enumerate() {
        for (n, v) in row.iter_mut().enumerate() {
            // Unique ids 1..=128, exact in f16 and bf16 (8 significant bits).
            *v = (k * 8 + n + 1) as f32;
        }
    }
    let c = [[0f32; 8]; 16];
    for ty in TYPES {
        let d = run(ty, &a, &b, &c);
        for m in 0..16 {
            for n in 0..8 {
                assert_eq!(d[m][n], b[m][n], "{ty:?} D[{m}][{n}]");
            }
        }
    }
}

#[test]
fn one_hot_b_selects_columns_of_a() {
    // B[k][n] = 1 where k = perm(n): D[m][n] = A[m][perm(n)].
    let perm = [13usize, 2, 7, 0, 15, 8, 4, 11];
    let mut b = [[0f32; 8]; 16];
    for (n, &k) in perm.iter().enumerate() {
        b[k][n] = 1.0;
    }
    let mut a = [[0f32; 16]; 16];
    for (m, row) in a.iter_mut().enumerate() {
        for (k, v) in row.iter_mut().enumerate() {
            *v = ((m * 16 + k) % 128 + 1) as f32 * if (m + k) % 3 == 0 { -1.0 } else { 1.0 };
        }
    }
    let c = [[0f32; 8]; 16];
    for ty in TYPES {
        let d = run(ty, &a, &b, &c);
        for m in 0..16 {
            for (n, &k) in perm.iter().enumerate() {
                assert_eq!(d[m][n], a[m][k], "{ty:?} D[{m}][{n}]");
            }
        }
    }
}

#[test]
fn accumulator_lands_in_place() {
    let a = [[0f32; 16]; 16];
    let b = [[0f32; 8]; 16];
    let mut c = [[0f32; 8]; 16];
    for (m, row) in c.iter_mut().enumerate() {
        for (n, v) in row.iter_mut().enumerate() {
            *v = 1000.0 + (m * 8 + n) as f32 + 0.25;
        }
    }
    for ty in TYPES {
        assert_eq!(run(ty, &a, &b, &c), c, "{ty:?}");
    }
}

#[test]
fn small_integer_products_sum_exactly() {
    // A deterministic pseudo-random fill with integers in [-8, 8].
    let mut state = 0x2545_f491_u32;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        (state % 17) as f32 - 8.0
    };
    for ty in TYPES {
        let mut a = [[0f32; 16]; 16];
        let mut b = [[0f32; 8]; 16];
        let mut c = [[0f32; 8]; 16];
        a.iter_mut().flatten().for_each(|v| *v = next());
        b.iter_mut().flatten().for_each(|v| *v = next());
        c.iter_mut().flatten().for_each(|v| *v = next() * 0.5);
        assert_eq!(run(ty, &a, &b, &c), reference(&a, &b, &c), "{ty:?}");
    }
}

#[test]
fn special_values_propagate() {
    let mut a = [[0f32; 16]; 16];
    let mut b = [[0f32; 8]; 16];
    let c = [[0f32; 8]; 16];
    a[3][5] = f32::INFINITY;
    b[5][6] = 2.0;
    b[5][7] = 0.0; // inf * 0 is NaN
    for ty in TYPES {
        let d = run(ty, &a, &b, &c);
        assert_eq!(d[3][6], f32::INFINITY, "{ty:?}");
        assert_eq!(d[3][7].to_bits(), 0x7fff_ffff, "{ty:?}");
        assert_eq!(d[2][6], 0.0, "{ty:?}");
    }
}

#[test]
fn sub_ulp_products_are_summed_in_f32() {
    // 1 * 1 + 15 * (2^-13 * 2^-12): each tiny product is 2^-25, below half
    // an ulp of 1.0 in f32, so summing in order 0..16 in f32 drops every one.
    let mut a = [[0f32; 16]; 16];
    let mut b = [[0f32; 8]; 16];
    let c = [[0f32; 8]; 16];
    a[0][0] = 1.0;
    b[0][0] = 1.0;
    for k in 1..16 {
        a[0][k] = 2f32.powi(-13);
        b[k][0] = 2f32.powi(-12);
    }
    for ty in TYPES {
        assert_eq!(run(ty, &a, &b, &c)[0][0], 1.0, "{ty:?}");
    }
}

/// The id of element (row, col) of matrix `j` in the ldmatrix tests.
fn id(j: usize, row: usize, col: usize) -> u16 {
    (0x1000 * (j + 1) + row * 16 + col) as u16
}

/// Shared memory with scattered, unique row addresses; returns the row
/// address table and the read callback's backing store.
fn scattered_rows() -> ([u32; 32], Vec<(u32, [u8; 16])>) {
    let mut addr = [0u32; 32];
    let mut store = Vec::new();
    for (lane, slot_addr) in addr.iter_mut().enumerate() {
        let (j, r) = (lane / 8, lane % 8);
        // A permutation of 32 row slots, 16 bytes each, from base 0x400.
        let slot = (lane * 7 + 3) % 32;
        let a = 0x400 + 16 * slot as u32;
        *slot_addr = a;
        let mut bytes = [0u8; 16];
        for c in 0..8 {
            bytes[2 * c..2 * c + 2].copy_from_slice(&id(j, r, c).to_le_bytes());
        }
        store.push((a, bytes));
    }
    (addr, store)
}

#[test]
fn ldmatrix_fragments_per_lane() {
    let (addr, store) = scattered_rows();
    for (num, lanes_read) in [(1usize, 8usize), (2, 16), (4, 32)] {
        for trans in [false, true] {
            let mut reads = Vec::new();
            let regs = ldmatrix(num, trans, &addr, |a| {
                reads.push(a);
                store
                    .iter()
                    .find(|(x, _)| *x == a)
                    .expect("a supplied row address")
                    .1
            });
            let mut wanted: Vec<u32> = addr[..lanes_read].to_vec();
            wanted.sort_unstable();
            reads.sort_unstable();
            assert_eq!(
                reads, wanted,
                "x{num} reads the rows of lanes 0..{lanes_read}"
            );
            for (lane, r) in regs.iter().enumerate() {
                let (g, t) = (lane >> 2, lane % 4);
                for (j, &reg) in r.iter().enumerate() {
                    let want = if j >= num {
                        0
                    } else if trans {
                        u32::from(id(j, 2 * t, g)) | (u32::from(id(j, 2 * t + 1, g)) << 16)
                    } else {
                        u32::from(id(j, g, 2 * t)) | (u32::from(id(j, g, 2 * t + 1)) << 16)
                    };
                    assert_eq!(reg, want, "x{num} trans={trans} lane {lane} reg {j}");
                }
            }
        }
    }
}

#[test]
fn ldmatrix_feeds_mma_fragments() {
    // Row-major 16x16 A and 16x8 B (K x N) in shared memory, loaded the
    // usual way: A by x4 (lane l: row l % 16, column block l / 16), B by
    // x2.trans (lane l: row k = l % 16). The registers must equal the mma
    // fragments that the ISA's formulas give.
    let a_elem = |m: usize, k: usize| (m * 16 + k) as u16;
    let b_elem = |k: usize, n: usize| (0x4000 + k * 8 + n) as u16;
    let row_a = |m: usize, block: usize| {
        let mut bytes = [0u8; 16];
        for c in 0..8 {
            bytes[2 * c..2 * c + 2].copy_from_slice(&a_elem(m, block * 8 + c).to_le_bytes());
        }
        bytes
    };
    let row_b = |k: usize| {
        let mut bytes = [0u8; 16];
        for n in 0..8 {
            bytes[2 * n..2 * n + 2].copy_from_slice(&b_elem(k, n).to_le_bytes());
        }
        bytes
    };
    // Addresses encode (matrix, row): A rows at 0x1000 + 32 m + 16 block.
    let mut a_addr = [0u32; 32];
    for (l, x) in a_addr.iter_mut().enumerate() {
        *x = 0x1000 + 32 * (l % 16) as u32 + 16 * (l / 16) as u32;
    }
    let a_regs = ldmatrix(4, false, &a_addr, |x| {
        let off = (x - 0x1000) as usize;
        row_a(off / 32, (off % 32) / 16)
    });
    let mut b_addr = [0u32; 32];
    for (l, x) in b_addr.iter_mut().enumerate() {
        *x = 0x2000 + 16 * (l % 16) as u32;
    }
    let b_regs = ldmatrix(2, true, &b_addr, |x| row_b(((x - 0x2000) / 16) as usize));
    for lane in 0..32 {
        let (g, t) = (lane >> 2, lane % 4);
        for i in 0..8 {
            let row = if i < 2 || (4..6).contains(&i) {
                g
            } else {
                g + 8
            };
            let col = t * 2 + (i & 1) + if i >= 4 { 8 } else { 0 };
            let got = (a_regs[lane][i / 2] >> (16 * (i % 2))) as u16;
            assert_eq!(got, a_elem(row, col), "A lane {lane} a{i}");
        }
        for i in 0..4 {
            let k = t * 2 + (i & 1) + if i >= 2 { 8 } else { 0 };
            let got = (b_regs[lane][i / 2] >> (16 * (i % 2))) as u16;
            assert_eq!(got, b_elem(k, g), "B lane {lane} b{i}");
        }
    }
}
