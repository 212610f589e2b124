//! The fatbins that build.rs compiled from `cuda/*.cu`, embedded in the crate.

use cudarc::driver::LaunchConfig;

mod generated {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

pub use generated::KERNELS_BUILT;

/// One compiled `cuda/<name>.cu` file.
#[derive(Debug, Clone, Copy)]
pub struct KernelModule {
    /// The file stem, e.g. `histogram`.
    pub name: &'static str,
    /// The fatbin, or `None` when the crate was built without nvcc.
    pub fatbin: Option<&'static [u8]>,
    /// Dynamic shared memory its kernels are launched with beyond the 48 KiB
    /// every kernel may use, in bytes (0: none). The backend raises each
    /// function's limit to this once, when it loads the function.
    pub max_dynamic_shared_bytes: u32,
}

/// Dynamic shared memory of every `cuda/block_sparse.cu` kernel: 4 stages x
/// 2 operands x 128 x 32 x 2 bytes (`dl::bs::kSmemBytes`).
pub(super) const BLOCK_SPARSE_SMEM_BYTES: u32 = 65536;

/// Declares the `KernelModule` constant of each `cuda/<name>.cu` file, with
/// `smem = BYTES` for a module whose kernels take more than 48 KiB of
/// dynamic shared memory.
macro_rules! kernel_modules {
    ($($(#[$doc:meta])* $konst:ident => $name:literal $(, smem = $smem:expr)?;)*) => {$(
        $(#[$doc])*
        pub const $konst: KernelModule = KernelModule {
            name: $name,
            fatbin: generated::$konst,
            max_dynamic_shared_bytes: 0 $(+ $smem)?,
        };
    )*};
}

kernel_modules! {
    /// `cuda/histogram.cu`: the expert histogram.
    HISTOGRAM => "histogram";
    /// `cuda/activation.cu`: GeLU and SiLU-gate activations on sparse blocks.
    ACTIVATION => "activation";
    /// `cuda/block_sparse.cu`: the SDD, DSD and DDS tensor-core products.
    BLOCK_SPARSE => "block_sparse", smem = BLOCK_SPARSE_SMEM_BYTES;
    /// `cuda/routing.cu`: the fused softmax / top-k router.
    ROUTING => "routing";
    /// `cuda/permute.cu`: the expert sort, bins, padded gather and scatter.
    PERMUTE => "permute";
    /// `cuda/topology.cu`: the device construction of the dMoE topology.
    TOPOLOGY => "topology";
    /// `cuda/elementwise.cu`: dtype casts, in-place accumulation and the dense
    /// maps (GeLU, `SiLU(gate) * up`, `a + b`).
    ELEMENTWISE => "elementwise";
    /// `cuda/router_grad.cu`: the router backward and the auxiliary losses.
    ROUTER_GRAD => "router_grad";
    /// `cuda/capacity.cu`: the capacity-factor MoE baseline's dispatch,
    /// combine and dropped fraction.
    CAPACITY => "capacity";
    /// `cuda/lm.cu`: the language-model ops (embedding, RMSNorm, RoPE, KV-cached
    /// attention, elementwise maps, argmax).
    LM => "lm";
    /// `cuda/stick_breaking.cu`: stick-breaking attention over a KV cache.
    STICK_BREAKING => "stick_breaking";
    /// `cuda/expert_map.cu`: padded expert-order rows laid out as the blocks
    /// of a dMoE topology (the MoE map / reduce).
    EXPERT_MAP => "expert_map";
    /// `cuda/moa.cu`: the ModuleFormer "mlp" gate's bias + exact GeLU.
    MOA => "moa";
}

/// A 1-D launch: `grid` CTAs of `block` threads with `shared_mem_bytes` of
/// dynamic shared memory (sizes already checked to fit the launch limits).
pub(super) fn launch_1d(grid: usize, block: u32, shared_mem_bytes: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid as u32, 1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: shared_mem_bytes as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_block_sparse_kernels_raise_the_shared_memory_limit() {
        assert_eq!(BLOCK_SPARSE.max_dynamic_shared_bytes, 65536);
        for m in [
            HISTOGRAM,
            ACTIVATION,
            ROUTING,
            PERMUTE,
            TOPOLOGY,
            ELEMENTWISE,
            ROUTER_GRAD,
            CAPACITY,
            LM,
            STICK_BREAKING,
            EXPERT_MAP,
            MOA,
        ] {
            assert_eq!(m.max_dynamic_shared_bytes, 0, "{}", m.name);
        }
    }
}
