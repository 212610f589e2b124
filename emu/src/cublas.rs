//! The cuBLAS entry points of the `libcublas.so` shim: handles bound to the
//! device of the context current at `cublasCreate_v2`, and the GEMMs
//! (`cublasGemmEx`, `cublasGemmStridedBatchedEx`, `cublasSgemm_v2`,
//! `cublasSgemmStridedBatched`) computed on the CPU in f32 with every
//! matrix checked against the device's allocation map first.
//!
//! - [`status`]: `cublasStatus_t` values and their strings.
//! - [`handle`]: handles, streams, pointer and math modes.
//! - [`gemm`]: the column-major GEMM over device memory.
//! - [`gemm_api`]: the GEMM entry points.
//! - [`unsupported`]: every other symbol cudarc may look up.

#![allow(non_snake_case, non_camel_case_types)]

pub mod gemm;
pub mod gemm_api;
pub mod handle;
pub mod status;
pub mod unsupported;

/// A cuBLAS handle.
pub type cublasHandle_t = *mut std::ffi::c_void;
