//! f32 and f64 arithmetic with every rounding modifier, `.ftz` and `.sat`.
//! Values travel as bit patterns (`u32` for f32, `u64` for f64) so NaN
//! payloads and signed zeros are exact.
//!
//! Semantics (PTX ISA, "Floating-Point Instructions"): results are correctly
//! rounded per [`Rounding`]; `.ftz` flushes subnormal inputs and results to
//! sign-preserving zero (f32 only); `.sat` clamps the result to [0.0, 1.0]
//! with NaN giving +0.0; a NaN result is the canonical NaN `0x7fffffff`
//! (f32) / `0x7fffffffffffffff` (f64).

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

/// `op.{rnd}{.ftz}{.sat}.f32 d, a, b`.
pub fn f32_binary(op: F32Op, a: u32, b: u32, mods: F32Mods) -> u32 {
    let _ = (op, a, b, mods);
    unimplemented!("numeric::float::f32_binary")
}

/// `fma.rnd{.ftz}{.sat}.f32 d, a, b, c` (and `mad.rnd.f32`): `a*b+c` rounded once.
pub fn f32_fma(a: u32, b: u32, c: u32, mods: F32Mods) -> u32 {
    let _ = (a, b, c, mods);
    unimplemented!("numeric::float::f32_fma")
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
    let _ = (op, a, mods);
    unimplemented!("numeric::float::f32_unary")
}

/// `copysign.f32 d, a, b`: `b`'s magnitude with `a`'s sign (PTX operand order).
pub fn f32_copysign(a: u32, b: u32) -> u32 {
    let _ = (a, b);
    unimplemented!("numeric::float::f32_copysign")
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
    let _ = (op, a, b, rounding);
    unimplemented!("numeric::float::f64_binary")
}

/// `fma.rnd.f64 d, a, b, c`.
pub fn f64_fma(a: u64, b: u64, c: u64, rounding: Rounding) -> u64 {
    let _ = (a, b, c, rounding);
    unimplemented!("numeric::float::f64_fma")
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
    let _ = (op, a, rounding);
    unimplemented!("numeric::float::f64_unary")
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

/// `setp.cmp{.ftz}.f32`.
pub fn f32_compare(cmp: FloatCmp, a: u32, b: u32, ftz: bool) -> bool {
    let _ = (cmp, a, b, ftz);
    unimplemented!("numeric::float::f32_compare")
}

/// `setp.cmp.f64`.
pub fn f64_compare(cmp: FloatCmp, a: u64, b: u64) -> bool {
    let _ = (cmp, a, b);
    unimplemented!("numeric::float::f64_compare")
}
