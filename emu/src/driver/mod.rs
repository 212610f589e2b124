//! The CUDA driver API entry points of the `libcuda.so` shim, with the
//! driver ABI (`CUresult` is an `int`, handles are pointers).
//!
//! The emulated devices have compute capability 8.0 and the name
//! [`device::DEVICE_NAME`]; their number and memory come from
//! [`crate::settings::Settings`]. Everything runs synchronously when it is
//! called: a launch runs the interpreter over the whole grid before
//! `cuLaunchKernel` returns. A launch that fails while running returns its
//! error and leaves it pending on its stream, to be returned (and cleared) by
//! the next `cuStreamSynchronize`, `cuCtxSynchronize`, or
//! `cuEventSynchronize` of an event recorded after it. Every entry point
//! refuses null and stale handles with an error, reports failures on stderr
//! (`dropless-emu: <entry>: <what>`), and turns a panic into
//! `CUDA_ERROR_UNKNOWN`.
//!
//! - [`device`]: `cuInit`, devices, primary contexts, the current context.
//! - [`allocation`] and [`transfer`]: device memory, copies and fills.
//! - [`streams`]: streams and events.
//! - [`module`] and [`launch`]: modules, functions, `cuLaunchKernel`.
//! - [`status`]: `CUresult` values, `cuGetErrorName`, `cuGetErrorString`.
//! - [`unsupported`]: every other symbol cudarc may look up.

#![allow(non_snake_case)]

use std::ffi::{c_char, c_int, c_void};

pub mod allocation;
pub mod attributes;
pub mod device;
pub mod failure;
pub mod launch;
pub mod module;
pub mod state;
pub mod status;
pub mod streams;
pub mod transfer;
pub mod unsupported;

/// A device: its ordinal.
pub type CUdevice = c_int;
/// A device address.
pub type CUdeviceptr = u64;
/// A context handle.
pub type CUcontext = *mut c_void;
/// A stream handle (null: the default stream).
pub type CUstream = *mut c_void;
/// An event handle.
pub type CUevent = *mut c_void;
/// A module handle.
pub type CUmodule = *mut c_void;
/// A function handle.
pub type CUfunction = *mut c_void;

/// A device UUID (`CUuuid`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CUuuid {
    /// The 16 bytes.
    pub bytes: [c_char; 16],
}
