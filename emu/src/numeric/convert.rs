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
//!
//! Which combinations exist follows the ISA's `cvt` rules as `ptxas`
//! (CUDA 13.0) enforces them, for the full type list of the ISA
//! (sm_90 adds the `.bf16` pairs other than `.bf16.f32`/`.f32.bf16`):
//! - int-to-int takes no rounding modifier; `.sat` only where the
//!   destination's range does not contain the source's;
//! - int-to-float requires `.rn/.rz/.rm/.rp`; float-to-int requires
//!   `.rni/.rzi/.rmi/.rpi` (and saturates with or without `.sat`);
//! - float-to-float: the same type takes an optional integral rounding;
//!   narrowing (`f64`->`f32`, `f64`/`f32`->`f16`) requires a float
//!   rounding, widening (`f16`->`f32`/`f64`, `f32`->`f64`) refuses one,
//!   and any pair with `.bf16` takes an optional one (default `.rn`);
//! - `.ftz` needs an `.f32` source or destination; `.relu` only an
//!   `.f16`/`.bf16` destination from `.f32` under `.rn`/`.rz`.
//!
//! A NaN float result is the destination's canonical NaN (`0x7fff`,
//! `0x7fffffff`, `0x7fffffffffffffff`), a NaN converted to an integer is 0,
//! and `.relu` and `.sat` send `-0.0` to `+0.0`.

use super::float::saturate;
use super::soft::{self, Format, BF16, F16, F32, F64};
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
    if !legal(dst, src, mods) {
        return None;
    }
    let a = a & width_mask(src);
    let result = match (format(src), format(dst)) {
        (None, None) => {
            let v = int_value(src, a);
            let v = if mods.sat { clamp_int(dst, v) } else { v };
            v as u64
        }
        (None, Some(fd)) => {
            let mode = mods.rounding.unwrap_or(Rounding::Nearest);
            float_result(dst, fd, soft::from_int(fd, int_value(src, a), mode), mods)
        }
        (Some(fs), None) => {
            let a = flush_input(src, a, mods.ftz);
            let mode = mods.integer_rounding.unwrap_or(Rounding::Zero);
            soft::to_int(fs, a, mode).map_or(0, |v| clamp_int(dst, v) as u64)
        }
        (Some(fs), Some(fd)) => {
            let a = flush_input(src, a, mods.ftz);
            let r = if src != dst {
                soft::convert(fs, fd, a, mods.rounding.unwrap_or(Rounding::Nearest))
            } else if let Some(mode) = mods.integer_rounding {
                soft::round_integral(fs, a, mode)
            } else if fs.is_nan(a) {
                fs.nan()
            } else {
                a
            };
            float_result(dst, fd, r, mods)
        }
    };
    Some(result & width_mask(dst))
}

/// The float format of a scalar type, `None` for the integers.
fn format(s: Scalar) -> Option<Format> {
    match s {
        Scalar::F16 => Some(F16),
        Scalar::Bf16 => Some(BF16),
        Scalar::F32 => Some(F32),
        Scalar::F64 => Some(F64),
        _ => None,
    }
}

/// Bit width and signedness of a scalar type.
fn shape(s: Scalar) -> (u32, bool) {
    match s {
        Scalar::U8 => (8, false),
        Scalar::U16 => (16, false),
        Scalar::U32 => (32, false),
        Scalar::U64 => (64, false),
        Scalar::S8 => (8, true),
        Scalar::S16 => (16, true),
        Scalar::S32 => (32, true),
        Scalar::S64 => (64, true),
        Scalar::F16 | Scalar::Bf16 => (16, false),
        Scalar::F32 => (32, false),
        Scalar::F64 => (64, false),
    }
}

fn width_mask(s: Scalar) -> u64 {
    u64::MAX >> (64 - shape(s).0)
}

/// The integer an integer-typed bit pattern denotes.
fn int_value(s: Scalar, a: u64) -> i128 {
    let (bits, signed) = shape(s);
    if signed {
        i128::from(((a << (64 - bits)) as i64) >> (64 - bits))
    } else {
        i128::from(a & width_mask(s))
    }
}

/// The range of an integer type.
fn int_range(s: Scalar) -> (i128, i128) {
    let (bits, signed) = shape(s);
    if signed {
        (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1)
    } else {
        (0, (1i128 << bits) - 1)
    }
}

fn clamp_int(s: Scalar, v: i128) -> i128 {
    let (lo, hi) = int_range(s);
    v.clamp(lo, hi)
}

/// Whether the ISA (as `ptxas` enforces it) defines `cvt{mods}.dst.src`.
fn legal(dst: Scalar, src: Scalar, m: CvtMods) -> bool {
    let frnd = m.rounding.is_some();
    let irnd = m.integer_rounding.is_some();
    if frnd && irnd {
        return false;
    }
    if m.ftz && dst != Scalar::F32 && src != Scalar::F32 {
        return false;
    }
    if m.relu
        && !(matches!(dst, Scalar::F16 | Scalar::Bf16)
            && src == Scalar::F32
            && matches!(m.rounding, Some(Rounding::Nearest | Rounding::Zero)))
    {
        return false;
    }
    match (format(src).is_some(), format(dst).is_some()) {
        (false, false) => {
            let (lo_s, hi_s) = int_range(src);
            let (lo_d, hi_d) = int_range(dst);
            let contained = lo_d <= lo_s && hi_s <= hi_d;
            !(frnd || irnd || (m.sat && contained))
        }
        (false, true) => frnd,
        (true, false) => irnd,
        (true, true) => {
            if dst == src {
                !frnd
            } else if dst == Scalar::Bf16 || src == Scalar::Bf16 {
                !irnd
            } else if shape(dst).0 < shape(src).0 {
                frnd
            } else {
                !frnd && !irnd
            }
        }
    }
}

/// A float operand after `.ftz` (which flushes `.f32` operands only).
fn flush_input(src: Scalar, a: u64, ftz: bool) -> u64 {
    if ftz && src == Scalar::F32 {
        F32.flush(a)
    } else {
        a
    }
}

/// Applies `.ftz` (an `.f32` result), `.relu` and `.sat` to a float result.
fn float_result(dst: Scalar, fd: Format, r: u64, mods: CvtMods) -> u64 {
    let r = if mods.ftz && dst == Scalar::F32 {
        F32.flush(r)
    } else {
        r
    };
    let r = if !mods.relu {
        r
    } else if fd.is_nan(r) {
        fd.nan()
    } else if r & fd.sign_bit() != 0 {
        0
    } else {
        r
    };
    if mods.sat {
        saturate(fd, r)
    } else {
        r
    }
}

/// `cvt.rnd{.relu}{.satfinite}.f16x2.f32 d, a, b` and the bf16x2 form: `a`
/// goes to the upper half, `b` to the lower half (the ISA's operand order).
/// `dst` names the element type: `Bf16` packs bf16, any other type f16
/// (the decoder admits only these two). Each half is `cvt.rnd{.relu}` of
/// its operand; `.satfinite` is not modelled.
pub fn pack_x2(dst: Scalar, a: u32, b: u32, mods: CvtMods) -> u32 {
    let (dst, fd) = if dst == Scalar::Bf16 {
        (Scalar::Bf16, BF16)
    } else {
        (Scalar::F16, F16)
    };
    let mode = mods.rounding.unwrap_or(Rounding::Nearest);
    let half = |x: u32| {
        let x = flush_input(Scalar::F32, u64::from(x), mods.ftz);
        let r = soft::convert(F32, fd, x, mode);
        float_result(dst, fd, r, mods) as u32
    };
    (half(a) << 16) | half(b)
}

/// f32 bits to f16 bits, rounding per `rounding` (the core of `cvt.*.f16.f32`).
/// NaN gives the canonical f16 NaN `0x7fff`.
pub fn f32_to_f16(a: u32, rounding: Rounding) -> u16 {
    soft::convert(F32, F16, u64::from(a), rounding) as u16
}

/// f32 bits to bf16 bits, rounding per `rounding`.
/// NaN gives the canonical bf16 NaN `0x7fff`.
pub fn f32_to_bf16(a: u32, rounding: Rounding) -> u16 {
    soft::convert(F32, BF16, u64::from(a), rounding) as u16
}

/// f16 bits to f32 bits (exact). A NaN keeps its sign and payload and
/// becomes quiet (as IEEE widening does); `cvt` itself returns the
/// canonical NaN through [`convert`].
pub fn f16_to_f32(a: u16) -> u32 {
    let sign = u32::from(a & 0x8000) << 16;
    let exp = u32::from((a >> 10) & 0x1f);
    let frac = u32::from(a & 0x3ff);
    match exp {
        0x1f if frac == 0 => sign | 0x7f80_0000,
        0x1f => sign | 0x7fc0_0000 | (frac << 13),
        // Subnormal: frac * 2^-24, exact in f32.
        0 => sign | (frac as f32 * f32::from_bits(0x3380_0000)).to_bits(),
        _ => sign | ((exp + 112) << 23) | (frac << 13),
    }
}

/// bf16 bits to f32 bits (exact).
pub fn bf16_to_f32(a: u16) -> u32 {
    (a as u32) << 16
}
