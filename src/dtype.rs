//! Element types: f32, f16 and bf16, all computed in f32.

use half::{bf16, f16};
use ndarray::ArrayView2;

/// The element type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE single precision.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
}

impl DType {
    /// Size of one element in bytes.
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// Relative tolerance for comparing a result computed from operands of this
    /// dtype (with f32 accumulation) against an f32 reference.
    pub fn rel_tolerance(self) -> f32 {
        match self {
            DType::F32 => 1e-5,
            DType::F16 => 5e-3,
            DType::BF16 => 1e-2,
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        })
    }
}

/// A scalar the CPU reference and the kernels take. Arithmetic happens in f32.
pub trait Element: Copy + Default + Send + Sync + std::fmt::Debug + PartialEq + 'static {
    /// The dtype tag of this element type.
    const DTYPE: DType;
    /// Widens to f32.
    fn to_f32(self) -> f32;
    /// Rounds an f32 to this type (round to nearest even).
    fn from_f32(v: f32) -> Self;
    /// `x` itself when this type is bf16, else `None` (how the CPU backend
    /// finds the operands its bf16 dot-product kernel takes).
    #[doc(hidden)]
    fn bf16_view(x: ArrayView2<'_, Self>) -> Option<ArrayView2<'_, bf16>> {
        let _ = x;
        None
    }
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(v: f32) -> Self {
        v
    }
}

impl Element for f16 {
    const DTYPE: DType = DType::F16;
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
}

impl Element for bf16 {
    const DTYPE: DType = DType::BF16;
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
    fn bf16_view(x: ArrayView2<'_, Self>) -> Option<ArrayView2<'_, bf16>> {
        Some(x)
    }
}
