//! Elementwise device ops: dtype casts and in-place accumulation.

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::kernels::ELEMENTWISE;
use super::{CudaBackend, DeviceElement, DeviceTensor};
use crate::dtype::Element;
use crate::error::{Error, Result};

const THREADS: u32 = 256;
const MAX_BLOCKS: usize = 4096;

fn config(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (
            n.div_ceil(THREADS as usize).clamp(1, MAX_BLOCKS) as u32,
            1,
            1,
        ),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Converts an f32 tensor to `T` (round to nearest even; a copy when `T` is f32).
pub fn cast_from_f32<T: DeviceElement + Element>(
    backend: &CudaBackend,
    src: &DeviceTensor<f32>,
) -> Result<DeviceTensor<T>> {
    let mut dst = DeviceTensor::<T>::zeros(backend, src.shape())?;
    let func = backend.function(ELEMENTWISE, &format!("dl_cast_f32_to_{}", T::SUFFIX))?;
    let n = src.len() as i32;
    let mut launch = backend.stream().launch_builder(&func);
    launch.arg(src.slice()).arg(dst.slice_mut()).arg(&n);
    // SAFETY: dl_cast_f32_to_T(const float* src, T* dst, i32 n) touches
    // indices below n; both tensors hold n elements (same shape, checked to fit
    // i32 when they were created; the grid-stride step stops at n instead of
    // overflowing i32).
    unsafe { launch.launch(config(src.len())) }?;
    Ok(dst)
}

/// Converts a `T` tensor to f32 (a copy when `T` is f32).
pub fn cast_to_f32<T: DeviceElement + Element>(
    backend: &CudaBackend,
    src: &DeviceTensor<T>,
) -> Result<DeviceTensor<f32>> {
    let mut dst = DeviceTensor::<f32>::zeros(backend, src.shape())?;
    let func = backend.function(ELEMENTWISE, &format!("dl_cast_{}_to_f32", T::SUFFIX))?;
    let n = src.len() as i32;
    let mut launch = backend.stream().launch_builder(&func);
    launch.arg(src.slice()).arg(dst.slice_mut()).arg(&n);
    // SAFETY: dl_cast_T_to_f32(const T* src, float* dst, i32 n) touches indices
    // below n; both tensors hold n elements.
    unsafe { launch.launch(config(src.len())) }?;
    Ok(dst)
}

/// `acc += x`, elementwise, in f32 with one rounding.
pub fn add_assign<T: DeviceElement + Element>(
    backend: &CudaBackend,
    acc: &mut DeviceTensor<T>,
    x: &DeviceTensor<T>,
) -> Result<()> {
    if acc.shape() != x.shape() {
        return Err(Error::ShapeMismatch {
            op: "add_assign",
            message: format!(
                "both operands must have one shape, found {:?} and {:?}",
                acc.shape(),
                x.shape()
            ),
        });
    }
    let func = backend.function(ELEMENTWISE, &format!("dl_add_assign_{}", T::SUFFIX))?;
    let n = x.len() as i32;
    let mut launch = backend.stream().launch_builder(&func);
    launch.arg(acc.slice_mut()).arg(x.slice()).arg(&n);
    // SAFETY: dl_add_assign_T(T* acc, const T* x, i32 n) touches indices below
    // n; both tensors hold n elements (shapes checked equal above).
    unsafe { launch.launch(config(x.len())) }?;
    Ok(())
}
