//! f32 and f64 arithmetic with every rounding modifier, `.ftz` and `.sat`.
//! Values travel as bit patterns (`u32` for f32, `u64` for f64) so NaN
//! payloads and signed zeros are exact.
//!
//! Semantics (PTX ISA, "Floating-Point Instructions"): results are correctly
//! rounded per [`Rounding`]; `.ftz` flushes subnormal inputs and results to
//! sign-preserving zero (f32 only); `.sat` clamps the result to [0.0, 1.0]
//! with NaN giving +0.0; a NaN result is the canonical NaN `0x7fffffff`
//! (f32) / `0x7fffffffffffffff` (f64).
//!
//! Round-to-nearest uses the host's IEEE operations (Rust's `+ - * /`,
//! `sqrt` and `mul_add` round correctly to nearest-even, subnormals
//! included); the directed modes go through the exact soft-float core of
//! `numeric::soft`. `.ftz` acts on the rounded result: a result whose
//! correctly rounded value is subnormal becomes the zero of its sign.
//! `.sat` clamps `-0.0` to `+0.0` along with every other value below zero.
//! `min`/`max` follow the ISA's pseudocode: one NaN operand yields the
//! other operand, two NaNs the canonical NaN, and of two zeros `-0.0` is
//! the smaller ("+0.0 > -0.0").

use super::soft::{self, Format, F32, F64};
use super::Rounding;

/// The modifiers of one f32 instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct F32Mods {
    /// The rounding mode (`None`: the instruction has no explicit modifier;
    /// it rounds to nearest and `mul`/`add` may be contracted, which the
    /// emulator never does).
    pub rounding: Option<Rounding>,
    /// `.ftz`
    pub ftz: bool,
    /// `.sat`
    pub sat: bool,
}

/// A binary f32 operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum F32Op {
    /// `add`
    Add,
    /// `sub`
    Sub,
    /// `mul`
    Mul,
    /// `div` (`.rn`/`.rz`/`.rm`/`.rp`: IEEE; `.approx`/`.full` are in `approx`)
    Div,
    /// `min` (NaN operands: the other operand; both NaN: canonical NaN)
    Min,
    /// `max`
    Max,
}

const NAN32: u32 = 0x7fff_ffff;
const NAN64: u64 = 0x7fff_ffff_ffff_ffff;

/// An f32 operand after `.ftz`.
fn input32(a: u32, ftz: bool) -> u32 {
    if ftz {
        F32.flush(u64::from(a)) as u32
    } else {
        a
    }
}

/// A host f32 result as bits, NaN made canonical.
fn host32(x: f32) -> u32 {
    if x.is_nan() {
        NAN32
    } else {
        x.to_bits()
    }
}

/// A host f64 result as bits, NaN made canonical.
fn host64(x: f64) -> u64 {
    if x.is_nan() {
        NAN64
    } else {
        x.to_bits()
    }
}

/// `.sat`: clamps to [+0.0, 1.0], NaN to +0.0.
pub(crate) fn saturate(f: Format, bits: u64) -> u64 {
    if f.is_nan(bits) || bits & f.sign_bit() != 0 {
        0
    } else if bits > f.one() {
        f.one()
    } else {
        bits
    }
}

/// Applies `.ftz` and `.sat` to an f32 result.
fn finish32(result: u32, mods: F32Mods) -> u32 {
    let result = input32(result, mods.ftz);
    if mods.sat {
        saturate(F32, u64::from(result)) as u32
    } else {
        result
    }
}

/// A binary operation: the host's for round-to-nearest, the soft core's
/// for the directed modes.
fn binary32(
    a: u32,
    b: u32,
    mode: Rounding,
    host: fn(f32, f32) -> f32,
    soft_op: fn(Format, u64, u64, Rounding) -> u64,
) -> u32 {
    if mode == Rounding::Nearest {
        host32(host(f32::from_bits(a), f32::from_bits(b)))
    } else {
        soft_op(F32, u64::from(a), u64::from(b), mode) as u32
    }
}

fn binary64(
    a: u64,
    b: u64,
    mode: Rounding,
    host: fn(f64, f64) -> f64,
    soft_op: fn(Format, u64, u64, Rounding) -> u64,
) -> u64 {
    if mode == Rounding::Nearest {
        host64(host(f64::from_bits(a), f64::from_bits(b)))
    } else {
        soft_op(F64, a, b, mode)
    }
}

/// `min`/`max` on bit patterns of format `f` (see the module notes).
fn min_max(f: Format, a: u64, b: u64, max: bool) -> u64 {
    match (f.is_nan(a), f.is_nan(b)) {
        (true, true) => return f.nan(),
        (true, false) => return b,
        (false, true) => return a,
        (false, false) => {}
    }
    // A total order key on non-NaN patterns: sign-magnitude to biased.
    let key = |x: u64| {
        if x & f.sign_bit() != 0 {
            f.sign_bit() - 1 - (x & (f.sign_bit() - 1))
        } else {
            x + f.sign_bit()
        }
    };
    let a_first = if max {
        key(a) >= key(b)
    } else {
        key(a) <= key(b)
    };
    if a_first {
        a
    } else {
        b
    }
}

/// `op.{rnd}{.ftz}{.sat}.f32 d, a, b`.
pub fn f32_binary(op: F32Op, a: u32, b: u32, mods: F32Mods) -> u32 {
    let (a, b) = (input32(a, mods.ftz), input32(b, mods.ftz));
    let mode = mods.rounding.unwrap_or(Rounding::Nearest);
    let result = match op {
        F32Op::Add => binary32(a, b, mode, |x, y| x + y, soft::add),
        F32Op::Sub => binary32(a, b ^ 0x8000_0000, mode, |x, y| x + y, soft::add),
        F32Op::Mul => binary32(a, b, mode, |x, y| x * y, soft::mul),
        F32Op::Div => binary32(a, b, mode, |x, y| x / y, soft::div),
        F32Op::Min => min_max(F32, u64::from(a), u64::from(b), false) as u32,
        F32Op::Max => min_max(F32, u64::from(a), u64::from(b), true) as u32,
    };
    finish32(result, mods)
}

/// `fma.rnd{.ftz}{.sat}.f32 d, a, b, c` (and `mad.rnd.f32`): `a*b+c` rounded once.
pub fn f32_fma(a: u32, b: u32, c: u32, mods: F32Mods) -> u32 {
    let (a, b, c) = (
        input32(a, mods.ftz),
        input32(b, mods.ftz),
        input32(c, mods.ftz),
    );
    let result = match mods.rounding.unwrap_or(Rounding::Nearest) {
        Rounding::Nearest => {
            host32(f32::from_bits(a).mul_add(f32::from_bits(b), f32::from_bits(c)))
        }
        mode => soft::fma(F32, u64::from(a), u64::from(b), u64::from(c), mode) as u32,
    };
    finish32(result, mods)
}

/// A unary f32 operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum F32Unary {
    /// `neg` (flips the sign bit; `.ftz` flushes a subnormal input first)
    Neg,
    /// `abs`
    Abs,
    /// `sqrt.rnd` (correctly rounded)
    Sqrt,
    /// `rcp.rnd` (correctly rounded)
    Rcp,
}

/// `op{.rnd}{.ftz}.f32 d, a`.
pub fn f32_unary(op: F32Unary, a: u32, mods: F32Mods) -> u32 {
    let a = input32(a, mods.ftz);
    let mode = mods.rounding.unwrap_or(Rounding::Nearest);
    let result = match op {
        F32Unary::Neg => a ^ 0x8000_0000,
        F32Unary::Abs => a & 0x7fff_ffff,
        F32Unary::Sqrt if mode == Rounding::Nearest => host32(f32::from_bits(a).sqrt()),
        F32Unary::Sqrt => soft::sqrt(F32, u64::from(a), mode) as u32,
        F32Unary::Rcp => binary32(1f32.to_bits(), a, mode, |x, y| x / y, soft::div),
    };
    finish32(result, mods)
}

/// `copysign.f32 d, a, b`: `b`'s magnitude with `a`'s sign (PTX operand order).
pub fn f32_copysign(a: u32, b: u32) -> u32 {
    (a & 0x8000_0000) | (b & 0x7fff_ffff)
}

/// The f64 counterparts (no `.ftz`/`.sat` on f64 except where noted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum F64Op {
    /// `add`
    Add,
    /// `sub`
    Sub,
    /// `mul`
    Mul,
    /// `div`
    Div,
    /// `min`
    Min,
    /// `max`
    Max,
}

/// `op{.rnd}.f64 d, a, b`.
pub fn f64_binary(op: F64Op, a: u64, b: u64, rounding: Rounding) -> u64 {
    match op {
        F64Op::Add => binary64(a, b, rounding, |x, y| x + y, soft::add),
        F64Op::Sub => binary64(a, b ^ (1 << 63), rounding, |x, y| x + y, soft::add),
        F64Op::Mul => binary64(a, b, rounding, |x, y| x * y, soft::mul),
        F64Op::Div => binary64(a, b, rounding, |x, y| x / y, soft::div),
        F64Op::Min => min_max(F64, a, b, false),
        F64Op::Max => min_max(F64, a, b, true),
    }
}

/// `fma.rnd.f64 d, a, b, c`.
pub fn f64_fma(a: u64, b: u64, c: u64, rounding: Rounding) -> u64 {
    match rounding {
        Rounding::Nearest => {
            host64(f64::from_bits(a).mul_add(f64::from_bits(b), f64::from_bits(c)))
        }
        mode => soft::fma(F64, a, b, c, mode),
    }
}

/// A unary f64 operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum F64Unary {
    /// `neg`
    Neg,
    /// `abs`
    Abs,
    /// `sqrt.rnd`
    Sqrt,
    /// `rcp.rnd`
    Rcp,
}

/// `op{.rnd}.f64 d, a`.
pub fn f64_unary(op: F64Unary, a: u64, rounding: Rounding) -> u64 {
    match op {
        F64Unary::Neg => a ^ (1 << 63),
        F64Unary::Abs => a & !(1 << 63),
        F64Unary::Sqrt if rounding == Rounding::Nearest => host64(f64::from_bits(a).sqrt()),
        F64Unary::Sqrt => soft::sqrt(F64, a, rounding),
        F64Unary::Rcp => binary64(1f64.to_bits(), a, rounding, |x, y| x / y, soft::div),
    }
}

/// A float comparison of `setp`/`set`: `eq ne lt le gt ge` are ordered
/// (false when either operand is NaN), `equ neu ltu leu gtu geu` unordered
/// (true when either is NaN), `num` and `nan` test for NaN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloatCmp {
    /// `eq`
    Eq,
    /// `ne`
    Ne,
    /// `lt`
    Lt,
    /// `le`
    Le,
    /// `gt`
    Gt,
    /// `ge`
    Ge,
    /// `equ`
    Equ,
    /// `neu`
    Neu,
    /// `ltu`
    Ltu,
    /// `leu`
    Leu,
    /// `gtu`
    Gtu,
    /// `geu`
    Geu,
    /// `num`: neither is NaN
    Num,
    /// `nan`: either is NaN
    Nan,
}

/// The comparison on two f64 values (f32 operands widen exactly).
fn compare(cmp: FloatCmp, a: f64, b: f64) -> bool {
    let unordered = a.is_nan() || b.is_nan();
    match cmp {
        FloatCmp::Eq => a == b,
        FloatCmp::Ne => !unordered && a != b,
        FloatCmp::Lt => a < b,
        FloatCmp::Le => a <= b,
        FloatCmp::Gt => a > b,
        FloatCmp::Ge => a >= b,
        FloatCmp::Equ => unordered || a == b,
        FloatCmp::Neu => a != b,
        FloatCmp::Ltu => unordered || a < b,
        FloatCmp::Leu => unordered || a <= b,
        FloatCmp::Gtu => unordered || a > b,
        FloatCmp::Geu => unordered || a >= b,
        FloatCmp::Num => !unordered,
        FloatCmp::Nan => unordered,
    }
}

/// `setp.cmp{.ftz}.f32`.
pub fn f32_compare(cmp: FloatCmp, a: u32, b: u32, ftz: bool) -> bool {
    let (a, b) = (input32(a, ftz), input32(b, ftz));
    compare(
        cmp,
        f64::from(f32::from_bits(a)),
        f64::from(f32::from_bits(b)),
    )
}

/// `setp.cmp.f64`.
pub fn f64_compare(cmp: FloatCmp, a: u64, b: u64) -> bool {
    compare(cmp, f64::from_bits(a), f64::from_bits(b))
}
