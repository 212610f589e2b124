//! # dropless
//!
//! Block-sparse kernels for dropless Mixture-of-Experts layers, in the line of
//! MegaBlocks: tokens are sorted by expert, each expert's group is padded to the
//! block size, and the expert FFNs run as block-sparse products over a
//! block-diagonal [`Topology`], so no token is dropped and no FLOP is spent on
//! capacity padding.
//!
//! - [`layer`]: the dMoE layer (forward and backward) behind one API on
//!   both backends: start here.
//! - [`config`]: the layer's configuration and weights, for both backends.
//! - [`reference`](mod@reference): the ndarray CPU reference of every op (f32 math).
//! - [`cuda`]: the CUDA backend (hand-written kernels, safe wrappers).
//! - [`Topology`] and [`BlockSparse`]: the block-sparse layout.
//! - [`Error`]: every bad input and every missing piece of the GPU stack.

mod checks;
pub mod config;
pub mod cuda;
pub mod dtype;
pub mod error;
pub mod layer;
pub mod memory;
pub mod reference;
pub mod sparse;
pub mod topology;

/// The `half` crate of the public API (f16 and bf16 elements): use
/// `dropless::half` so that the versions match.
pub use half;
/// The `ndarray` crate of the public API (host arrays): use
/// `dropless::ndarray` so that the versions match.
pub use ndarray;

pub use config::{AuxLossCoefficients, MlpKind, MoeConfig, MoeWeights};
pub use dtype::{DType, Element};
pub use error::{Error, Result};
pub use sparse::{BlockSparse, SparseView};
pub use topology::{Topology, DEFAULT_BLOCK_SIZE};

/// The README's programs, compiled as doctests so that they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
