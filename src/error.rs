//! The crate's error type: every bad input and every missing piece of the GPU
//! stack is a value of [`Error`], never a panic.

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `dropless`. Each message says what to fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// Two operands (or an operand and a configuration) disagree on a dimension.
    #[error("shape mismatch in `{op}`: {message}")]
    ShapeMismatch {
        /// The operation that rejected its inputs.
        op: &'static str,
        /// What disagreed, with the expected and the found shapes.
        message: String,
    },

    /// An operand has a dtype the operation does not take, or operands disagree.
    #[error("dtype mismatch in `{op}`: expected {expected}, found {found}")]
    DTypeMismatch {
        /// The operation that rejected its inputs.
        op: &'static str,
        /// The dtype the operation wanted.
        expected: String,
        /// The dtype it was given.
        found: String,
    },

    /// An expert id outside `0..num_experts`.
    #[error("expert id {expert} at assignment {index} is out of range: the layer has {num_experts} experts (ids 0..{num_experts})")]
    ExpertOutOfRange {
        /// Flat index of the offending (token, slot) assignment.
        index: usize,
        /// The expert id that was found.
        expert: i64,
        /// Number of experts of the layer.
        num_experts: usize,
    },

    /// `top_k` must lie in `1..=num_experts`.
    #[error(
        "top_k = {top_k} is invalid for {num_experts} experts: choose 1 <= top_k <= {num_experts}"
    )]
    InvalidTopK {
        /// The requested k.
        top_k: usize,
        /// Number of experts of the layer.
        num_experts: usize,
    },

    /// An operation was given zero tokens (or another empty dimension).
    #[error("empty input in `{op}`: {what} is 0; pass at least one")]
    Empty {
        /// The operation that rejected its inputs.
        op: &'static str,
        /// The dimension that was empty.
        what: &'static str,
    },

    /// A tensor that must be finite holds NaN or infinity: router logits
    /// (NaN or +inf; -inf masks an expert), weights, or a layer's output,
    /// losses or gradients (the first non-finite value found, in row-major
    /// order).
    #[error("non-finite value {value} in {what} at row {row}, column {col}")]
    NonFinite {
        /// The tensor that held the value, saying where it came from.
        what: &'static str,
        /// Row of the value.
        row: usize,
        /// Column of the value.
        col: usize,
        /// The value itself (NaN or +/-inf).
        value: f32,
    },

    /// A token whose router logits leave fewer routable experts (logits
    /// above `-inf`; `-inf` masks an expert) than it must be routed to.
    #[error("token {token} has {routable} routable experts (router logits above -inf), fewer than the {needed} it is routed to (top_k): mask fewer experts or lower top_k")]
    TooFewExperts {
        /// The token (row of the logits).
        token: usize,
        /// Its experts with a logit above `-inf`.
        routable: usize,
        /// The experts it needs (`top_k`; 1 for the z-loss).
        needed: usize,
    },

    /// A token that lists the same expert in two of its `top_k` slots.
    #[error("token {token} lists expert {expert} twice (slots {first} and {second}): a token's top_k slots must name distinct experts")]
    DuplicateExpert {
        /// The token (row of the expert ids).
        token: usize,
        /// The repeated expert id.
        expert: i64,
        /// The first slot that holds it.
        first: usize,
        /// The second slot that holds it.
        second: usize,
    },

    /// A run would need more memory than the machine has available.
    #[error("{what} needs about {} of {memory} memory, but only {} is available: {hint}", gib(*need), gib(*available))]
    OutOfMemory {
        /// What would be allocated.
        what: String,
        /// `host` or `device`.
        memory: &'static str,
        /// Bytes the run needs (an estimate from the shapes).
        need: u64,
        /// Bytes available now.
        available: u64,
        /// What to change so that it fits (a flag or a size).
        hint: String,
    },

    /// A size or index would not fit the kernels' `i32` indexing.
    #[error(
        "{what} = {value} overflows the i32 indexing of the kernels (max {max}); split the batch"
    )]
    IndexOverflow {
        /// The quantity that overflowed.
        what: &'static str,
        /// Its value.
        value: u128,
        /// The largest value allowed.
        max: u128,
    },

    /// A block size the operation does not implement.
    #[error("block size {block_size} is not supported by {backend}: use one of {supported:?}")]
    UnsupportedBlockSize {
        /// The requested block size.
        block_size: usize,
        /// Which backend rejected it.
        backend: &'static str,
        /// The block sizes that backend implements.
        supported: &'static [usize],
    },

    /// A topology's index arrays are inconsistent (hand-built or corrupted).
    #[error("invalid topology: {0}")]
    InvalidTopology(String),

    /// A layer or op configuration that cannot work.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),

    /// A device buffer is not aligned as the kernels need.
    #[error("misaligned operand in `{op}`: {message}")]
    Misaligned {
        /// The operation that rejected its inputs.
        op: &'static str,
        /// What was misaligned and what alignment is needed.
        message: String,
    },

    /// The crate was built without nvcc, so no kernels are embedded.
    #[error("dropless was built without nvcc, so no CUDA kernels are embedded: install nvcc (scripts/install-nvcc.sh), export NVCC, and rebuild")]
    KernelsNotBuilt,

    /// The CUDA driver library (libcuda.so) could not be loaded.
    #[error("no CUDA driver: libcuda could not be loaded (install the NVIDIA driver, or use the CPU backend)")]
    NoCudaDriver,

    /// The driver loaded but reports no usable device.
    #[error("no CUDA device: {0}")]
    NoDevice(String),

    /// A CUDA driver call failed.
    #[error("CUDA driver error: {0}")]
    Cuda(String),

    /// A cuBLAS call failed.
    #[error("cuBLAS error: {0}")]
    Cublas(String),
}

impl From<cudarc::driver::DriverError> for Error {
    fn from(e: cudarc::driver::DriverError) -> Self {
        Error::Cuda(e.to_string())
    }
}

impl From<cudarc::cublas::result::CublasError> for Error {
    fn from(e: cudarc::cublas::result::CublasError) -> Self {
        Error::Cublas(e.to_string())
    }
}

/// `bytes` in GiB with one decimal, for messages.
fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / f64::from(1u32 << 30))
}

/// Largest value the kernels' `i32` indexing can address.
pub const I32_MAX: u128 = i32::MAX as u128;

/// Checks that `value` fits the kernels' `i32` indexing.
pub fn check_i32(what: &'static str, value: u128) -> Result<()> {
    if value > I32_MAX {
        return Err(Error::IndexOverflow {
            what,
            value,
            max: I32_MAX,
        });
    }
    Ok(())
}

/// Multiplies sizes without overflowing, for size checks.
pub fn product(dims: &[usize]) -> u128 {
    dims.iter().map(|&d| d as u128).product()
}
