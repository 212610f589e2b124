//! `cvt` in all its forms, and the f16/bf16 packing that inline asm uses.
//!
//! Semantics (PTX ISA, `cvt`): float-to-float narrowing rounds per the
//! modifier (`.rn .rz .rm .rp`; required when narrowing), widening is exact;
//! float-to-float with `.rni .rzi .rmi .rpi` rounds to an integral value in
//! the same type; float-to-int rounds per `.rni/.rzi/.rmi/.rpi` and
//! saturates to the integer range, NaN giving 0; int-to-float rounds per
//! `.rn/.rz/.rm/.rp`; int-to-int truncates or sign/zero-extends, `.sat`
//! clamps; `.ftz` flushes f32 subnormal inputs and results; `.sat` on a
//! float destination clamps to [0, 1]. f16 and bf16 results round per the
//! modifier (round-to-nearest-even for `.rn`), keep NaN a NaN (the
//! canonical NaN the ISA names for the instruction), and overflow to
//! infinity under `.rn`.

use super::{Rounding, Scalar};

/// The modifiers of one `cvt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CvtMods {
    /// `.rn .rz .rm .rp` (float results) — `None` when absent.
    pub rounding: Option<Rounding>,
    /// `.rni .rzi .rmi .rpi` (integral rounding) — `None` when absent.
    pub integer_rounding: Option<Rounding>,
    /// `.ftz`
    pub ftz: bool,
    /// `.sat`
    pub sat: bool,
    /// `.relu` (f16/bf16 destinations: negative results become +0, NaN
    /// becomes canonical NaN)
    pub relu: bool,
}

/// `cvt{mods}.dst.src d, a`: the source value as a bit pattern in the low
/// bits of `a` (sign-extension of narrower integers is this function's
/// job), the result as the destination's bit pattern zero-extended to 64
/// bits. `None` when the ISA does not define the combination (the decoder
/// refuses it at load).
pub fn convert(dst: Scalar, src: Scalar, a: u64, mods: CvtMods) -> Option<u64> {
    let _ = (dst, src, a, mods);
    unimplemented!("numeric::convert::convert")
}

/// `cvt.rnd{.relu}{.satfinite}.f16x2.f32 d, a, b` and the bf16x2 form: `a`
/// goes to the upper half, `b` to the lower half (the ISA's operand order).
pub fn pack_x2(dst: Scalar, a: u32, b: u32, mods: CvtMods) -> u32 {
    let _ = (dst, a, b, mods);
    unimplemented!("numeric::convert::pack_x2")
}

/// f32 bits to f16 bits, rounding per `rounding` (the core of `cvt.*.f16.f32`).
pub fn f32_to_f16(a: u32, rounding: Rounding) -> u16 {
    let _ = (a, rounding);
    unimplemented!("numeric::convert::f32_to_f16")
}

/// f32 bits to bf16 bits, rounding per `rounding`.
pub fn f32_to_bf16(a: u32, rounding: Rounding) -> u16 {
    let _ = (a, rounding);
    unimplemented!("numeric::convert::f32_to_bf16")
}

/// f16 bits to f32 bits (exact).
pub fn f16_to_f32(a: u16) -> u32 {
    let _ = a;
    unimplemented!("numeric::convert::f16_to_f32")
}

/// bf16 bits to f32 bits (exact).
pub fn bf16_to_f32(a: u16) -> u32 {
    (a as u32) << 16
}
