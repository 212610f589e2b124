//! Elementwise device ops: dtype casts, in-place accumulation, and the dense
//! maps (GeLU, `SiLU(gate) * up`, `a + b`) shared by the baselines and the
//! language model.

use std::mem::size_of;

use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{
    CudaFunction, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg,
};

use super::kernels::ELEMENTWISE;
use super::{CudaBackend, DeviceElement, DeviceTensor};
use crate::dtype::Element;
use crate::error::{check_i32, Error, Result};

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

/// How [`silu_mul`] forms `SiLU(g) * u` in f32 before its one rounding to `T`
/// (the two differ in the last f32 bit; each matches its CPU reference).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SiluForm {
    /// `g * sigmoid(g) * u`, `sigmoid(g) = 1 / (1 + exp(-g))`: the crate's
    /// [`crate::reference::activation::silu`] (the dense and capacity baselines).
    Sigmoid,
    /// `g / (1 + exp(-g)) * u`: the generate example's dense MLP and shared
    /// expert.
    Quotient,
}

/// Elements of `T` in one 16-byte pack.
fn pack<T>() -> usize {
    16 / size_of::<T>()
}

/// The kernel, launch configuration and `vec` flag of dense map
/// `dl_<name>_<T>` over `n > 0` elements at device addresses `ptrs`: one
/// thread per 16-byte pack when `n` is a whole number of packs and every
/// address is 16-byte aligned (`vec`), else one per element.
fn map_launch<T: DeviceElement>(
    backend: &CudaBackend,
    name: &str,
    n: usize,
    ptrs: &[CUdeviceptr],
) -> Result<(CudaFunction, LaunchConfig, i32)> {
    let func = backend.function(ELEMENTWISE, &format!("dl_{name}_{}", T::SUFFIX))?;
    let vec = n.is_multiple_of(pack::<T>()) && ptrs.iter().all(|p| p % 16 == 0);
    let units = if vec { n / pack::<T>() } else { n };
    let cfg = LaunchConfig {
        grid_dim: (units.div_ceil(THREADS as usize) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    Ok((func, cfg, vec as i32))
}

/// Checks that two operands of `op` have one nonzero-sized shape. Returns the
/// length.
pub(super) fn check_same(op: &'static str, a: &[usize], b: &[usize]) -> Result<usize> {
    if a != b {
        return Err(Error::ShapeMismatch {
            op,
            message: format!("operands must have one shape, found {a:?} and {b:?}"),
        });
    }
    let n: usize = a.iter().product();
    if n == 0 {
        return Err(Error::Empty {
            op,
            what: "the number of elements",
        });
    }
    Ok(n)
}

/// Element-wise `a + b` in f32, rounded once (the residual connection).
///
/// Errors: [`Error::ShapeMismatch`] when the shapes differ, [`Error::Empty`]
/// for empty operands.
pub fn add<T: DeviceElement + Element>(
    backend: &CudaBackend,
    a: &DeviceTensor<T>,
    b: &DeviceTensor<T>,
) -> Result<DeviceTensor<T>> {
    let n = check_same("add", a.shape(), b.shape())?;
    let mut out = DeviceTensor::<T>::zeros(backend, a.shape())?;
    let stream = backend.stream();
    let (a_ptr, a_sync) = a.slice().device_ptr(stream);
    let (b_ptr, b_sync) = b.slice().device_ptr(stream);
    let (out_ptr, out_sync) = out.slice_mut().device_ptr_mut(stream);
    let (func, cfg, vec) = map_launch::<T>(backend, "add", n, &[a_ptr, b_ptr, out_ptr])?;
    let n_i = n as i32;
    let mut launch = stream.launch_builder(&func);
    launch
        .arg(&a_ptr)
        .arg(&b_ptr)
        .arg(&out_ptr)
        .arg(&n_i)
        .arg(&vec);
    // SAFETY: dl_add_T(const T* a, const T* b, T* out, i32 n, i32 vec) runs
    // one thread per pack (vec) or element below n and touches flat indices
    // below n of a, b and out, which all hold n elements (shapes checked
    // equal; out is fresh). vec only when n is a whole number of 16-byte packs
    // and the addresses aligned. The sync guards live past the launch.
    unsafe { launch.launch(cfg) }?;
    drop((a_sync, b_sync, out_sync));
    Ok(out)
}

/// Dense `SiLU(gate) * up` in f32 (in `form`'s rounding), rounded once to `T`.
///
/// Errors: [`Error::ShapeMismatch`] when the shapes differ, [`Error::Empty`]
/// for empty operands.
pub fn silu_mul<T: DeviceElement + Element>(
    backend: &CudaBackend,
    gate: &DeviceTensor<T>,
    up: &DeviceTensor<T>,
    form: SiluForm,
) -> Result<DeviceTensor<T>> {
    let n = check_same("silu_mul", gate.shape(), up.shape())?;
    let mut out = DeviceTensor::<T>::zeros(backend, gate.shape())?;
    let stream = backend.stream();
    let (g_ptr, g_sync) = gate.slice().device_ptr(stream);
    let (u_ptr, u_sync) = up.slice().device_ptr(stream);
    let (out_ptr, out_sync) = out.slice_mut().device_ptr_mut(stream);
    launch_silu_mul::<T>(backend, g_ptr, u_ptr, out_ptr, n, form)?;
    drop((g_sync, u_sync, out_sync));
    Ok(out)
}

/// `gate = SiLU(gate) * up` in place on the first `gate.len()` elements, in
/// f32 (in `form`'s rounding), rounded once.
///
/// Errors: [`Error::ShapeMismatch`] when `up` holds fewer elements than
/// `gate`, [`Error::IndexOverflow`] when `gate` holds more than `i32::MAX`.
pub fn silu_mul_in_place<T: DeviceElement>(
    backend: &CudaBackend,
    gate: &mut CudaViewMut<'_, T>,
    up: &CudaView<'_, T>,
    form: SiluForm,
) -> Result<()> {
    let n = gate.len();
    if up.len() < n {
        return Err(Error::ShapeMismatch {
            op: "silu_mul_in_place",
            message: format!("up holds {} elements, gate {n}", up.len()),
        });
    }
    check_i32("silu_mul elements", n as u128)?;
    if n == 0 {
        return Ok(());
    }
    let stream = backend.stream();
    let (u_ptr, _u_sync) = up.device_ptr(stream);
    let (g_ptr, _g_sync) = gate.device_ptr_mut(stream);
    launch_silu_mul::<T>(backend, g_ptr, u_ptr, g_ptr, n, form)
}

/// Launches `dl_dense_silu_mul_T` on device addresses: `out = SiLU(gate) * up`
/// over `n > 0` elements; `out` may be `gate` (in place). The callers hold
/// the buffers' sync guards across this call and guarantee each address
/// holds `n` elements of `T`, `n` fits i32, and `out` overlaps `up` not at all
/// and `gate` only exactly.
fn launch_silu_mul<T: DeviceElement>(
    backend: &CudaBackend,
    gate: CUdeviceptr,
    up: CUdeviceptr,
    out: CUdeviceptr,
    n: usize,
    form: SiluForm,
) -> Result<()> {
    let (func, cfg, vec) = map_launch::<T>(backend, "dense_silu_mul", n, &[gate, up, out])?;
    let (n_i, quotient) = (n as i32, (form == SiluForm::Quotient) as i32);
    let mut launch = backend.stream().launch_builder(&func);
    launch
        .arg(&gate)
        .arg(&up)
        .arg(&out)
        .arg(&n_i)
        .arg(&quotient)
        .arg(&vec);
    // SAFETY: dl_dense_silu_mul_T(const T* gate, const T* up, T* out, i32 n,
    // i32 quotient, i32 vec) runs one thread per pack (vec) or element below
    // n and touches flat indices below n of gate, up and out, which hold n
    // elements each (the callers' guarantee); each thread reads its elements
    // before writing them, so out == gate is safe. vec only when n is a whole
    // number of 16-byte packs and the addresses aligned.
    unsafe { launch.launch(cfg) }?;
    Ok(())
}

/// GeLU (tanh approximation) in place on every element of `x`, in f32,
/// rounded once.
///
/// Errors: [`Error::IndexOverflow`] when `x` holds more than `i32::MAX`
/// elements.
pub fn gelu_in_place<T: DeviceElement>(
    backend: &CudaBackend,
    x: &mut CudaViewMut<'_, T>,
) -> Result<()> {
    let n = x.len();
    check_i32("gelu elements", n as u128)?;
    if n == 0 {
        return Ok(());
    }
    let stream = backend.stream();
    let (x_ptr, _x_sync) = x.device_ptr_mut(stream);
    let (func, cfg, vec) = map_launch::<T>(backend, "dense_gelu", n, &[x_ptr])?;
    let n_i = n as i32;
    let mut launch = stream.launch_builder(&func);
    launch.arg(&x_ptr).arg(&x_ptr).arg(&n_i).arg(&vec);
    // SAFETY: dl_dense_gelu_T(const T* x, T* out, i32 n, i32 vec) runs one
    // thread per pack (vec) or element below n and reads then writes flat
    // indices below n of x (in place: out == x), which the view holds (n fits
    // i32, checked). vec only when n is a whole number of 16-byte packs and
    // the address aligned. The sync guard lives past the launch.
    unsafe { launch.launch(cfg) }?;
    Ok(())
}
