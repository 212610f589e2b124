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
