//! The approximate instructions (`.approx`), each within the maximum error
//! the PTX ISA states for it (implemented as the correctly rounded result
//! or better, so within any stated bound), with the ISA's special cases
//! (infinities, zeros, NaN, subnormals under `.ftz`).
//!
//! Each f32 function is evaluated in f64 by the host's math library (whose
//! error is far below f32's resolution) and rounded once to f32, so the
//! result is within about half an f32 ulp of the true value: inside every
//! bound the ISA states (ex2 and lg2 about 2 ulp, sin/cos 2^-20.9 absolute
//! on [-pi, pi], tanh 2^-11 relative, rcp/sqrt/rsqrt/div within 1-2 ulp).
//! `rcp`, `sqrt` and `div` are correctly rounded. The f64 special values
//! follow from IEEE arithmetic and agree with the ISA's tables: ex2(-inf) =
//! +0, ex2(+-0) = 1, lg2(+-0) = -inf, lg2(x < 0) = NaN, rcp(+-0) = +-inf,
//! sqrt(-0) = -0, rsqrt(+-0) = +-inf, rsqrt(+inf) = +0, sin(+-inf) = NaN,
//! tanh(+-inf) = +-1. `.ftz` flushes subnormal inputs and results to
//! sign-preserving zero; NaN results are the canonical NaN.

use super::soft::{F32, F64};

/// An approximate f32 function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Approx {
    /// `ex2.approx.f32`: 2^a
    Ex2,
    /// `lg2.approx.f32`: log2(a)
    Lg2,
    /// `rcp.approx.f32`: 1/a
    Rcp,
    /// `sqrt.approx.f32`
    Sqrt,
    /// `rsqrt.approx.f32`
    Rsqrt,
    /// `sin.approx.f32`
    Sin,
    /// `cos.approx.f32`
    Cos,
    /// `tanh.approx.f32`
    Tanh,
}

/// `op.approx{.ftz}.f32 d, a`.
pub fn f32_approx(op: Approx, a: u32, ftz: bool) -> u32 {
    let x = f32::from_bits(flush32(a, ftz));
    let wide = f64::from(x);
    let r = match op {
        Approx::Ex2 => wide.exp2() as f32,
        Approx::Lg2 => wide.log2() as f32,
        Approx::Rcp => 1.0 / x,
        Approx::Sqrt => x.sqrt(),
        Approx::Rsqrt => (1.0 / wide.sqrt()) as f32,
        Approx::Sin => wide.sin() as f32,
        Approx::Cos => wide.cos() as f32,
        Approx::Tanh => wide.tanh() as f32,
    };
    result32(r, ftz)
}

fn flush32(a: u32, ftz: bool) -> u32 {
    if ftz {
        F32.flush(u64::from(a)) as u32
    } else {
        a
    }
}

fn result32(r: f32, ftz: bool) -> u32 {
    if r.is_nan() {
        F32.nan() as u32
    } else {
        flush32(r.to_bits(), ftz)
    }
}

fn flush64(a: u64, ftz: bool) -> u64 {
    if ftz {
        F64.flush(a)
    } else {
        a
    }
}

/// `div.approx{.ftz}.f32` and `div.full{.ftz}.f32` (both within 2 ulp).
/// Both give the correctly rounded quotient; `div.approx`'s special case
/// for `2^126 < |b| < 2^128` (a result of 0, or NaN for infinite `a`) is
/// not reproduced, the exact quotient being within every bound instead.
pub fn f32_div_approx(a: u32, b: u32, ftz: bool) -> u32 {
    let x = f32::from_bits(flush32(a, ftz));
    let y = f32::from_bits(flush32(b, ftz));
    result32(x / y, ftz)
}

/// `rcp.approx.ftz.f64` as the ISA describes it: the reciprocal of the
/// operand's upper 32 bits (sign, exponent, 20 fraction bits), truncated to
/// its own upper 32 bits (the lower 32 bits of the result are zero), so the
/// relative error is below 2^-19. Subnormal inputs and results are flushed
/// to sign-preserving zero; `rcp(+-0) = +-inf`, `rcp(+-inf) = +-0`, NaN
/// gives the canonical NaN.
/// For `rsqrt.approx.f64` see [`f64_rsqrt_approx`].
pub fn f64_rcp_approx_ftz(a: u64) -> u64 {
    // A NaN is a NaN even when its payload lies in the ignored lower bits.
    if F64.is_nan(a) {
        return F64.nan();
    }
    let high = flush64(a, true) & 0xffff_ffff_0000_0000;
    let r = 1.0 / f64::from_bits(high);
    flush64(r.to_bits() & 0xffff_ffff_0000_0000, true)
}

/// `rsqrt.approx{.ftz}.f64 d, a`: 1/sqrt(a) within about 1 ulp (f64
/// square root and division, each correctly rounded), `rsqrt(+-0) =
/// +-inf`, `rsqrt(+inf) = +0`, negative operands NaN; `.ftz` flushes
/// subnormal inputs and results.
pub fn f64_rsqrt_approx(a: u64, ftz: bool) -> u64 {
    let r = 1.0 / f64::from_bits(flush64(a, ftz)).sqrt();
    if r.is_nan() {
        F64.nan()
    } else {
        flush64(r.to_bits(), ftz)
    }
}
