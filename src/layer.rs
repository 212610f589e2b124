//! The dMoE layer: one API over the CPU reference and the CUDA backend, so a
//! user switches backend without rewriting code.
//!
//! ```no_run
//! use dropless::layer::{Backend, DroplessMoe, Tensor};
//! use dropless::reference::moe::{MlpKind, MoeConfig, MoeWeights};
//! use dropless::reference::router_grad::AuxLossCoefficients;
//!
//! # fn main() -> dropless::Result<()> {
//! let config = MoeConfig {
//!     hidden: 256, ffn: 512, num_experts: 8, top_k: 2,
//!     mlp: MlpKind::Glu, renormalize: true, block_size: 128,
//! };
//! let (backend, _why_not_gpu) = Backend::auto();
//! let weights = MoeWeights::<half::bf16>::random(&config, 0)?;
//! let mut layer = DroplessMoe::new(config, weights, backend)?;
//! let x = ndarray::Array2::from_elem((64, 256), half::bf16::from_f32(0.1));
//! let out = layer.forward(&layer.upload(x.view())?)?;
//! let grads = layer.backward(&out.output, AuxLossCoefficients { load_balancing: 0.01, z_loss: 1e-3 })?;
//! let dx = layer.download(&grads.x)?;
//! # let _ = dx; Ok(()) }
//! ```

use std::sync::Arc;

use half::{bf16, f16};
use ndarray::{Array2, ArrayD, ArrayView2};

use crate::cuda::moe::{
    backward, forward_train, DeviceMoeGradients, DeviceMoeOutput, DeviceMoeSaved, DeviceMoeWeights,
};
use crate::cuda::{check_block_size, CudaBackend, DeviceElement, DeviceTensor, KERNELS_BUILT};
use crate::dtype::Element;
use crate::error::{Error, Result};
use crate::reference::backward::backward as cpu_backward;
use crate::reference::moe::{forward_train as cpu_forward, MoeConfig, MoeSaved, MoeWeights};
use crate::reference::router_grad::AuxLossCoefficients;

/// Where a layer runs.
#[derive(Debug, Clone)]
pub enum Backend {
    /// The ndarray CPU reference (f32 math; f32, f16 and bf16 operands).
    Cpu,
    /// The CUDA kernels (bf16 and f16 operands, f32 accumulation).
    Cuda(Arc<CudaBackend>),
}

impl Backend {
    /// The GPU when one works (driver, device and embedded kernels), else the
    /// CPU together with the reason the GPU was not used.
    pub fn auto() -> (Backend, Option<Error>) {
        match CudaBackend::try_new() {
            Ok(_) if !KERNELS_BUILT => (Backend::Cpu, Some(Error::KernelsNotBuilt)),
            Ok(b) => (Backend::Cuda(Arc::new(b)), None),
            Err(e) => (Backend::Cpu, Some(e)),
        }
    }

    /// Checks that this backend can run a layer of `config`: on CUDA its
    /// block size must be one the kernels implement
    /// ([`crate::cuda::CUDA_BLOCK_SIZES`], else
    /// [`Error::UnsupportedBlockSize`] naming them), and on both the config
    /// must validate ([`MoeConfig::validate`]). Reads nothing from the device.
    pub fn check_config(&self, config: &MoeConfig) -> Result<()> {
        if let Backend::Cuda(_) = self {
            check_block_size(config.block_size)?;
        }
        config.validate()
    }

    /// A short name: `cpu` or `cuda`.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Cuda(_) => "cuda",
        }
    }
}

/// A tensor on either backend.
#[derive(Debug)]
pub enum Tensor<T> {
    /// On the host.
    Host(ArrayD<T>),
    /// On the device.
    Device(DeviceTensor<T>),
}

impl<T: DeviceElement> Tensor<T> {
    /// The shape.
    pub fn shape(&self) -> &[usize] {
        match self {
            Tensor::Host(a) => a.shape(),
            Tensor::Device(d) => d.shape(),
        }
    }

    /// The values on the host (a device tensor is copied back, which waits
    /// for the stream).
    pub fn to_host(&self, backend: &Backend) -> Result<ArrayD<T>> {
        match (self, backend) {
            (Tensor::Host(a), _) => Ok(a.clone()),
            (Tensor::Device(d), Backend::Cuda(b)) => {
                ArrayD::from_shape_vec(d.shape().to_vec(), d.to_host(b)?).map_err(|e| {
                    Error::ShapeMismatch {
                        op: "Tensor::to_host",
                        message: e.to_string(),
                    }
                })
            }
            (Tensor::Device(_), Backend::Cpu) => Err(Error::InvalidConfig(
                "a device tensor needs the CUDA backend it lives on to be read".into(),
            )),
        }
    }
}

/// The device entry points of one element type (bf16 and f16 have them).
#[doc(hidden)]
pub struct CudaOps<T> {
    forward: CudaForward<T>,
    backward: CudaBackward<T>,
    upload: CudaUpload<T>,
}

type CudaForward<T> = fn(
    &CudaBackend,
    &MoeConfig,
    &DeviceMoeWeights<T>,
    &DeviceTensor<T>,
) -> Result<(DeviceMoeOutput<T>, DeviceMoeSaved<T>)>;
type CudaBackward<T> = fn(
    &CudaBackend,
    &MoeConfig,
    &DeviceMoeWeights<T>,
    &DeviceMoeSaved<T>,
    &DeviceTensor<T>,
    AuxLossCoefficients,
) -> Result<DeviceMoeGradients<T>>;
type CudaUpload<T> = fn(&CudaBackend, &MoeConfig, &MoeWeights<T>) -> Result<DeviceMoeWeights<T>>;

/// An element type the layer runs in: f32 (CPU only), f16 and bf16 (both
/// backends).
pub trait LayerElement: Element + DeviceElement {
    /// The CUDA path for this type, `None` where the kernels do not take it.
    #[doc(hidden)]
    const CUDA: Option<CudaOps<Self>>;
}

impl LayerElement for f32 {
    const CUDA: Option<CudaOps<Self>> = None;
}

impl LayerElement for bf16 {
    const CUDA: Option<CudaOps<Self>> = Some(CudaOps {
        forward: forward_train::<bf16>,
        backward: backward::<bf16>,
        upload: DeviceMoeWeights::<bf16>::from_host,
    });
}

impl LayerElement for f16 {
    const CUDA: Option<CudaOps<Self>> = Some(CudaOps {
        forward: forward_train::<f16>,
        backward: backward::<f16>,
        upload: DeviceMoeWeights::<f16>::from_host,
    });
}

/// The CUDA path of `T`, or the error that says which types it takes.
fn cuda_ops<T: LayerElement>() -> Result<CudaOps<T>> {
    T::CUDA.ok_or_else(|| Error::DTypeMismatch {
        op: "DroplessMoe (CUDA)",
        expected: "bf16 or f16 (the tensor-core kernels)".into(),
        found: format!("{}; use bf16/f16 on the GPU, or the CPU backend", T::DTYPE),
    })
}

enum Weights<T> {
    Host(MoeWeights<T>),
    Device(DeviceMoeWeights<T>),
}

enum Saved<T> {
    Host(Box<MoeSaved<T>>),
    Device(Box<DeviceMoeSaved<T>>),
}

/// What a forward returns: the output and what training and monitoring need.
#[derive(Debug)]
pub struct MoeForward<T> {
    /// `[tokens, hidden]`.
    pub output: Tensor<T>,
    /// `[tokens, top_k]`: each token's experts, by descending probability.
    pub expert_ids: Tensor<i32>,
    /// `[tokens, top_k]`: the routing weights of those experts.
    pub routing_weights: Tensor<f32>,
    /// `[num_experts]`: assignments routed to each expert.
    pub tokens_per_expert: Tensor<i32>,
    /// `[1]`: the load-balancing loss (unscaled).
    pub load_balancing_loss: Tensor<f32>,
    /// `[1]`: the router z-loss (unscaled).
    pub z_loss: Tensor<f32>,
}

/// Gradients of a backward, shaped like the layer's inputs and weights.
#[derive(Debug)]
pub struct MoeGrads<T> {
    /// `[tokens, hidden]`.
    pub x: Tensor<T>,
    /// `[num_experts, hidden]`.
    pub router: Tensor<T>,
    /// `[num_experts * ffn, hidden]`.
    pub w1: Tensor<T>,
    /// `[num_experts * ffn, hidden]`, GLU only.
    pub w3: Option<Tensor<T>>,
    /// `[num_experts * ffn, hidden]`.
    pub w2: Tensor<T>,
}

/// A dropless MoE layer on one backend.
pub struct DroplessMoe<T> {
    config: MoeConfig,
    backend: Backend,
    weights: Weights<T>,
    saved: Option<Saved<T>>,
}

fn host<T>(a: Array2<T>) -> Tensor<T> {
    Tensor::Host(a.into_dyn())
}

fn host1<T>(v: Vec<T>) -> Tensor<T> {
    Tensor::Host(ndarray::Array1::from(v).into_dyn())
}

impl<T: LayerElement> DroplessMoe<T> {
    /// A layer with `weights` on `backend` (uploaded once for CUDA).
    ///
    /// Everything a backend cannot run is refused here, before any upload:
    /// on CUDA a block size other than [`crate::cuda::CUDA_BLOCK_SIZES`]
    /// ([`Error::UnsupportedBlockSize`]) and an element type the kernels do
    /// not take ([`Error::DTypeMismatch`]); on both, a config that does not
    /// validate and weights that do not fit it.
    pub fn new(config: MoeConfig, weights: MoeWeights<T>, backend: Backend) -> Result<Self> {
        backend.check_config(&config)?;
        weights.check(&config)?;
        let weights = match &backend {
            Backend::Cpu => Weights::Host(weights),
            Backend::Cuda(b) => Weights::Device((cuda_ops::<T>()?.upload)(b, &config, &weights)?),
        };
        Ok(DroplessMoe {
            config,
            backend,
            weights,
            saved: None,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &MoeConfig {
        &self.config
    }

    /// The backend.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Puts a `[tokens, hidden]` host array where this layer runs.
    pub fn upload(&self, x: ArrayView2<T>) -> Result<Tensor<T>> {
        match &self.backend {
            Backend::Cpu => Ok(Tensor::Host(x.to_owned().into_dyn())),
            Backend::Cuda(b) => Ok(Tensor::Device(DeviceTensor::from_array(b, x)?)),
        }
    }

    /// Reads a tensor of this layer back to the host.
    pub fn download<E: DeviceElement>(&self, t: &Tensor<E>) -> Result<ArrayD<E>> {
        t.to_host(&self.backend)
    }

    /// The forward pass; saves what [`DroplessMoe::backward`] needs. On CUDA it
    /// queues work on the stream and returns without waiting for it.
    pub fn forward(&mut self, x: &Tensor<T>) -> Result<MoeForward<T>> {
        match (&self.weights, x) {
            (Weights::Host(w), Tensor::Host(x)) => {
                let x = x
                    .view()
                    .into_dimensionality::<ndarray::Ix2>()
                    .map_err(|_| Error::ShapeMismatch {
                        op: "DroplessMoe::forward",
                        message: format!("x must be [tokens, hidden], found {:?}", x.shape()),
                    })?;
                let (out, saved) = cpu_forward(&self.config, w, x)?;
                self.saved = Some(Saved::Host(Box::new(saved)));
                Ok(MoeForward {
                    output: host(out.output),
                    expert_ids: host(out.routing.expert_ids),
                    routing_weights: host(out.routing.weights),
                    tokens_per_expert: Tensor::Host(out.tokens_per_expert.into_dyn()),
                    load_balancing_loss: host1(vec![out.load_balancing_loss]),
                    z_loss: host1(vec![out.z_loss]),
                })
            }
            (Weights::Device(w), Tensor::Device(x)) => {
                let Backend::Cuda(b) = &self.backend else {
                    return Err(wrong_backend());
                };
                let (out, saved) = (cuda_ops::<T>()?.forward)(b, &self.config, w, x)?;
                let forward = MoeForward {
                    output: Tensor::Device(out.output),
                    expert_ids: Tensor::Device(saved.routing.expert_ids.try_clone(b)?),
                    routing_weights: Tensor::Device(saved.routing.weights.try_clone(b)?),
                    tokens_per_expert: Tensor::Device(out.tokens_per_expert),
                    load_balancing_loss: Tensor::Device(out.load_balancing_loss),
                    z_loss: Tensor::Device(out.z_loss),
                };
                self.saved = Some(Saved::Device(Box::new(saved)));
                Ok(forward)
            }
            _ => Err(wrong_backend()),
        }
    }

    /// The backward pass of the last forward: gradients of
    /// `<grad_output, output> + aux.load_balancing * LBL + aux.z_loss * Z`
    /// with respect to the input, the router and the expert weights.
    pub fn backward(
        &mut self,
        grad_output: &Tensor<T>,
        aux: AuxLossCoefficients,
    ) -> Result<MoeGrads<T>> {
        let saved = self.saved.as_ref().ok_or_else(|| {
            Error::InvalidConfig(
                "backward needs a forward first: call forward, then backward".into(),
            )
        })?;
        match (&self.weights, saved, grad_output) {
            (Weights::Host(w), Saved::Host(s), Tensor::Host(g)) => {
                let g = g
                    .view()
                    .into_dimensionality::<ndarray::Ix2>()
                    .map_err(|_| Error::ShapeMismatch {
                        op: "DroplessMoe::backward",
                        message: format!("grad_output must be 2-D, found {:?}", g.shape()),
                    })?;
                let grads = cpu_backward(&self.config, w, s, g, aux)?;
                Ok(MoeGrads {
                    x: host(grads.x),
                    router: host(grads.router),
                    w1: host(grads.w1),
                    w3: grads.w3.map(host),
                    w2: host(grads.w2),
                })
            }
            (Weights::Device(w), Saved::Device(s), Tensor::Device(g)) => {
                let Backend::Cuda(b) = &self.backend else {
                    return Err(wrong_backend());
                };
                let grads = (cuda_ops::<T>()?.backward)(b, &self.config, w, s, g, aux)?;
                Ok(MoeGrads {
                    x: Tensor::Device(grads.x),
                    router: Tensor::Device(grads.router),
                    w1: Tensor::Device(grads.w1),
                    w3: grads.w3.map(Tensor::Device),
                    w2: Tensor::Device(grads.w2),
                })
            }
            _ => Err(wrong_backend()),
        }
    }
}

fn wrong_backend() -> Error {
    Error::InvalidConfig(
        "the tensor is not on the layer's backend: use DroplessMoe::upload to place inputs".into(),
    )
}
