//! The CPU reference of every op: ndarray, f32 arithmetic and accumulation,
//! f16/bf16 operands widened on load (or, for bf16 on a CPU with
//! AVX512-BF16, multiplied by its bf16 dot-product instruction) and rounded
//! on store. The CUDA ops are held to these.

pub mod activation;
pub mod backward;
pub mod capacity;
pub mod expert_map;
mod few_rows;
pub(crate) mod gemm;
pub(crate) mod gemm_bf16;
pub mod lm;
pub mod loss;
pub mod moa;
pub mod moe;
mod operand;
pub mod permute;
pub mod router_grad;
pub mod routing;
pub mod sparse_ops;
pub mod stick_breaking;
mod vectorize;

pub use sparse_ops::{dds, dsd, sdd};
