//! The PTX ISA's arithmetic, as pure functions over bit patterns and lanes:
//! rounding per modifier, `.ftz`, `.sat`, conversions (f16, bf16 and their
//! x2 packs included), the approximate functions, and the tensor-core
//! fragment layouts of `mma.sync.m16n8k16` and `ldmatrix`.
//!
//! CONTRACT (fixed; the interpreter is written against these signatures).

pub mod approx;
pub mod convert;
pub mod float;
mod soft;
pub mod tensor;

/// An IEEE rounding modifier of a float result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rounding {
    /// `.rn`: to nearest, ties to even (the default when none is written).
    Nearest,
    /// `.rz`: toward zero.
    Zero,
    /// `.rm`: toward negative infinity.
    Down,
    /// `.rp`: toward positive infinity.
    Up,
}

/// The scalar types of PTX operands that conversions and arithmetic name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scalar {
    /// `.u8` .. `.u64` (also `.b8` .. `.b64` where a bit type is allowed).
    U8,
    /// `.u16`
    U16,
    /// `.u32`
    U32,
    /// `.u64`
    U64,
    /// `.s8`
    S8,
    /// `.s16`
    S16,
    /// `.s32`
    S32,
    /// `.s64`
    S64,
    /// `.f16`
    F16,
    /// `.bf16`
    Bf16,
    /// `.f32`
    F32,
    /// `.f64`
    F64,
}
