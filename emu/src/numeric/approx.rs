//! The approximate instructions (`.approx`), each within the maximum error
//! the PTX ISA states for it (implemented as the correctly rounded result
//! or better, so within any stated bound), with the ISA's special cases
//! (infinities, zeros, NaN, subnormals under `.ftz`).

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
    let _ = (op, a, ftz);
    unimplemented!("numeric::approx::f32_approx")
}

/// `div.approx{.ftz}.f32` and `div.full{.ftz}.f32` (both within 2 ulp).
pub fn f32_div_approx(a: u32, b: u32, ftz: bool) -> u32 {
    let _ = (a, b, ftz);
    unimplemented!("numeric::approx::f32_div_approx")
}

/// `rcp.approx.ftz.f64` (the ISA: "a fast approximation" of 1/a, flushing
/// subnormals) and `rsqrt.approx.f64`.
pub fn f64_rcp_approx_ftz(a: u64) -> u64 {
    let _ = a;
    unimplemented!("numeric::approx::f64_rcp_approx_ftz")
}
