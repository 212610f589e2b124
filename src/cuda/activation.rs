//! Activations on the stored blocks of a device block-sparse matrix, and their
//! gradients: GeLU (tanh approximation) for the plain MLP, `SiLU(gate) * up`
//! for the GLU MLP. Same math as [`crate::reference::activation`].

use std::sync::Arc;

use cudarc::driver::{CudaFunction, LaunchConfig, PushKernelArg};

use super::kernels::ACTIVATION;
use super::{CudaBackend, DeviceBlockSparse, DeviceElement};
use crate::dtype::Element;
use crate::error::{Error, Result};

const THREADS: u32 = 256;
const MAX_BLOCKS: usize = 4096;

/// Checks that every operand lives on the same topology.
fn check_same_topology<T>(op: &'static str, mats: &[&DeviceBlockSparse<T>]) -> Result<()> {
    let first = &mats[0].topology;
    if mats.iter().any(|m| !Arc::ptr_eq(&m.topology, first)) {
        return Err(Error::ShapeMismatch {
            op,
            message: "all operands must share one topology (the same Arc<DeviceTopology>)".into(),
        });
    }
    Ok(())
}

/// The kernel, its launch config, and the live-element bounds of `like`.
fn setup<T: DeviceElement>(
    backend: &CudaBackend,
    name: &str,
    like: &DeviceBlockSparse<T>,
) -> Result<(CudaFunction, LaunchConfig, i32, i32)> {
    let func = backend.function(ACTIVATION, &format!("dl_{name}_{}", T::SUFFIX))?;
    let topo = &like.topology;
    let block_elems = (topo.block_size * topo.block_size) as i32;
    let capacity = like.data.len();
    let cfg = LaunchConfig {
        grid_dim: (
            capacity.div_ceil(THREADS as usize).clamp(1, MAX_BLOCKS) as u32,
            1,
            1,
        ),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    // DeviceBlockSparse holds max_blocks * block_elems <= i32::MAX values, and
    // the kernels' grid-stride step stops at n instead of overflowing i32.
    Ok((func, cfg, block_elems, capacity as i32))
}

/// A new zeroed matrix on `like`'s topology.
fn output_like<T: DeviceElement>(
    backend: &CudaBackend,
    like: &DeviceBlockSparse<T>,
) -> Result<DeviceBlockSparse<T>> {
    DeviceBlockSparse::zeros(backend, like.topology.clone())
}

/// `gelu(x)` on every live block.
pub fn gelu<T: DeviceElement + Element>(
    backend: &CudaBackend,
    x: &DeviceBlockSparse<T>,
) -> Result<DeviceBlockSparse<T>> {
    let (func, cfg, block_elems, capacity) = setup(backend, "gelu", x)?;
    let mut y = output_like(backend, x)?;
    let num_blocks = x.topology.num_blocks_view();
    let mut launch = backend.stream().launch_builder(&func);
    launch.arg(x.data.slice()).arg(y.data.slice_mut());
    launch.arg(&num_blocks).arg(&block_elems).arg(&capacity);
    // SAFETY: dl_gelu_T(const T* x, T* y, const i32* num_blocks, i32
    // block_elems, i32 capacity) touches indices below min(num_blocks *
    // block_elems, capacity); x and y both hold `capacity` values on the same
    // topology, and num_blocks points at that topology's offsets[max_block_rows].
    unsafe { launch.launch(cfg) }?;
    Ok(y)
}

/// Gradient of [`gelu`]: `grad_y * gelu'(x)`.
pub fn gelu_backward<T: DeviceElement + Element>(
    backend: &CudaBackend,
    grad_y: &DeviceBlockSparse<T>,
    x: &DeviceBlockSparse<T>,
) -> Result<DeviceBlockSparse<T>> {
    check_same_topology("gelu_backward", &[grad_y, x])?;
    let (func, cfg, block_elems, capacity) = setup(backend, "gelu_backward", x)?;
    let mut grad_x = output_like(backend, x)?;
    let num_blocks = x.topology.num_blocks_view();
    let mut launch = backend.stream().launch_builder(&func);
    launch
        .arg(grad_y.data.slice())
        .arg(x.data.slice())
        .arg(grad_x.data.slice_mut());
    launch.arg(&num_blocks).arg(&block_elems).arg(&capacity);
    // SAFETY: dl_gelu_backward_T(const T* grad_y, const T* x, T* grad_x, const
    // i32* num_blocks, i32 block_elems, i32 capacity) touches indices below
    // min(num_blocks * block_elems, capacity); all three buffers hold
    // `capacity` values on one topology (checked above).
    unsafe { launch.launch(cfg) }?;
    Ok(grad_x)
}

/// `silu(gate) * up` on every live block (the GLU activation).
pub fn silu_mul<T: DeviceElement + Element>(
    backend: &CudaBackend,
    gate: &DeviceBlockSparse<T>,
    up: &DeviceBlockSparse<T>,
) -> Result<DeviceBlockSparse<T>> {
    check_same_topology("silu_mul", &[gate, up])?;
    let (func, cfg, block_elems, capacity) = setup(backend, "silu_mul", gate)?;
    let mut y = output_like(backend, gate)?;
    let num_blocks = gate.topology.num_blocks_view();
    let mut launch = backend.stream().launch_builder(&func);
    launch
        .arg(gate.data.slice())
        .arg(up.data.slice())
        .arg(y.data.slice_mut());
    launch.arg(&num_blocks).arg(&block_elems).arg(&capacity);
    // SAFETY: dl_silu_mul_T(const T* gate, const T* up, T* y, const i32*
    // num_blocks, i32 block_elems, i32 capacity) touches indices below
    // min(num_blocks * block_elems, capacity); all three buffers hold
    // `capacity` values on one topology (checked above).
    unsafe { launch.launch(cfg) }?;
    Ok(y)
}

/// Gradients of [`silu_mul`]: `(grad_gate, grad_up)`.
pub fn silu_mul_backward<T: DeviceElement + Element>(
    backend: &CudaBackend,
    grad_y: &DeviceBlockSparse<T>,
    gate: &DeviceBlockSparse<T>,
    up: &DeviceBlockSparse<T>,
) -> Result<(DeviceBlockSparse<T>, DeviceBlockSparse<T>)> {
    check_same_topology("silu_mul_backward", &[grad_y, gate, up])?;
    let (func, cfg, block_elems, capacity) = setup(backend, "silu_mul_backward", gate)?;
    let mut grad_gate = output_like(backend, gate)?;
    let mut grad_up = output_like(backend, gate)?;
    let num_blocks = gate.topology.num_blocks_view();
    let mut launch = backend.stream().launch_builder(&func);
    launch
        .arg(grad_y.data.slice())
        .arg(gate.data.slice())
        .arg(up.data.slice())
        .arg(grad_gate.data.slice_mut())
        .arg(grad_up.data.slice_mut());
    launch.arg(&num_blocks).arg(&block_elems).arg(&capacity);
    // SAFETY: dl_silu_mul_backward_T(const T* grad_y, const T* gate, const T*
    // up, T* grad_gate, T* grad_up, const i32* num_blocks, i32 block_elems, i32
    // capacity) touches indices below min(num_blocks * block_elems, capacity);
    // all five buffers hold `capacity` values on one topology (checked above).
    unsafe { launch.launch(cfg) }?;
    Ok((grad_gate, grad_up))
}
