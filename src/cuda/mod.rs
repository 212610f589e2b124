//! The CUDA backend: a device handle, typed device tensors, the embedded
//! kernels, and one safe function per op (same name and argument order as the
//! CPU reference in [`crate::reference`], with the backend first).
//!
//! Every wrapper checks shapes, dtypes and index ranges on the host, from
//! shapes alone, before it launches; nothing here synchronises the host.

mod device;
mod kernels;
mod sparse;
mod tensor;
mod topology;

pub mod activation;
pub mod baselines;
pub mod elementwise;
pub mod expert_map;
pub mod finite;
pub mod gemm;
pub mod histogram;
pub mod lm;
pub mod moa;
pub mod moe;
pub mod permute;
pub mod router_grad;
pub mod routing;
pub mod sparse_ops;
pub mod stick_breaking;
pub mod topology_build;

pub use device::CudaBackend;
pub use kernels::{KernelModule, KERNELS_BUILT};
pub use sparse::{DeviceBlockSparse, DeviceSparseView};
pub use sparse_ops::{dds, dds_into, dsd, dsd_into, sdd, sdd_into};
pub use tensor::{DeviceElement, DeviceTensor};
pub use topology::{check_block_size, max_padded_tokens, DeviceTopology, CUDA_BLOCK_SIZES};
