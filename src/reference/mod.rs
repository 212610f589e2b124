//! The CPU reference of every op: ndarray, f32 arithmetic, f16/bf16 operands
//! widened on load and rounded on store. The CUDA ops are held to these.
