//! # dropless-emu
//!
//! A PTX emulator that runs dropless's compiled kernels on the CPU, unmodified,
//! behind shims of the CUDA driver (`libcuda.so`) and cuBLAS (`libcublas.so`),
//! with checks like compute-sanitizer's. `scripts/emu CMD` builds it and runs
//! `CMD` with it in place of the real libraries.
//!
//! - [`ptx`]: the PTX parser (text to syntax tree).
//! - [`exec`]: the decoder (syntax tree to executable kernels, refusing any
//!   form it does not implement) and the interpreter (warps, independent
//!   thread scheduling, barriers, collectives, memory checks, profile).
//! - [`numeric`]: the ISA's arithmetic: IEEE rounding per modifier, f16/bf16
//!   conversions, approximate functions, and the tensor-core fragment
//!   layouts of `mma` and `ldmatrix`.
//! - [`memory`]: device memory and its allocation map.
//! - [`fatbin`]: the PTX inside an nvcc fatbin (zstd-compressed entries).
//! - [`driver`] and [`cublas`]: the C entry points of the two shims.
//! - [`settings`]: what the environment can change (devices, memory size,
//!   scheduling seed, profile, checks).

pub mod cublas;
pub mod driver;
pub mod exec;
pub mod fatbin;
pub mod memory;
pub mod numeric;
pub mod ptx;
pub mod settings;
