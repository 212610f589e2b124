//! The fatbins that build.rs compiled from `cuda/*.cu`, embedded in the crate.

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
}

/// `cuda/histogram.cu`: the expert histogram.
pub const HISTOGRAM: KernelModule = KernelModule {
    name: "histogram",
    fatbin: generated::HISTOGRAM,
};

/// `cuda/activation.cu`: GeLU and SiLU-gate activations on sparse blocks.
pub const ACTIVATION: KernelModule = KernelModule {
    name: "activation",
    fatbin: generated::ACTIVATION,
};

/// `cuda/block_sparse.cu`: the SDD, DSD and DDS tensor-core products.
pub const BLOCK_SPARSE: KernelModule = KernelModule {
    name: "block_sparse",
    fatbin: generated::BLOCK_SPARSE,
};

/// `cuda/routing.cu`: the fused softmax / top-k router.
pub const ROUTING: KernelModule = KernelModule {
    name: "routing",
    fatbin: generated::ROUTING,
};

/// `cuda/permute.cu`: the expert sort, bins, padded gather and scatter.
pub const PERMUTE: KernelModule = KernelModule {
    name: "permute",
    fatbin: generated::PERMUTE,
};

/// `cuda/topology.cu`: the device construction of the dMoE topology.
pub const TOPOLOGY: KernelModule = KernelModule {
    name: "topology",
    fatbin: generated::TOPOLOGY,
};

/// `cuda/elementwise.cu`: dtype casts and in-place accumulation.
pub const ELEMENTWISE: KernelModule = KernelModule {
    name: "elementwise",
    fatbin: generated::ELEMENTWISE,
};

/// `cuda/router_grad.cu`: the router backward and the auxiliary losses.
pub const ROUTER_GRAD: KernelModule = KernelModule {
    name: "router_grad",
    fatbin: generated::ROUTER_GRAD,
};

/// `cuda/capacity.cu`: the baselines' dense activations and the
/// capacity-factor MoE's dispatch, combine and dropped fraction.
pub const CAPACITY: KernelModule = KernelModule {
    name: "capacity",
    fatbin: generated::CAPACITY,
};

/// `cuda/lm.cu`: the language-model ops (embedding, RMSNorm, RoPE, KV-cached
/// attention, elementwise maps, argmax).
pub const LM: KernelModule = KernelModule {
    name: "lm",
    fatbin: generated::LM,
};
