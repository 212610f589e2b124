//! The dMoE layer: one API over the CPU reference and the CUDA backend, so a
//! user switches backend without rewriting code.
//!
//! ```no_run
//! use dropless::layer::{Backend, DroplessMoe};
//! use dropless::{half::bf16, ndarray::Array2};
//! use dropless::{AuxLossCoefficients, MlpKind, MoeConfig, MoeWeights};
//!
//! # fn main() -> dropless::Result<()> {
//! let config = MoeConfig {
//!     hidden: 256, ffn: 512, num_experts: 8, top_k: 2,
//!     mlp: MlpKind::Glu, renormalize: true, block_size: 128,
//! };
//! let (backend, _why_not_gpu) = Backend::auto();
//! let layer = DroplessMoe::new(config, MoeWeights::<bf16>::random(&config, 0)?, backend)?;
//! let x = layer.upload(Array2::from_elem((64, 256), bf16::from_f32(0.1)).view())?;
//! let y = layer.download(&layer.forward(&x)?.output)?;
//! // dL/dy of L = ½‖y‖²: the gradient of the loss with respect to the output.
//! let grads = layer.backward(&layer.upload(y.view())?, AuxLossCoefficients::default())?;
//! if grads.finite.all_finite(layer.backend())? {
//!     let dx = layer.download(&grads.x)?;
//! #   let _ = dx;
//! }
//! # Ok(()) }
//! ```

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use half::{bf16, f16};
use ndarray::{Array2, ArrayD, ArrayView, ArrayView2, Dimension};

use crate::checks::check_all_finite;
use crate::config::{AuxLossCoefficients, MoeConfig, MoeWeights};
use crate::cuda::finite::DeviceFiniteCheck;
use crate::cuda::moe::{
    backward, forward_train, DeviceMoeGradients, DeviceMoeOutput, DeviceMoeSaved, DeviceMoeWeights,
};
use crate::cuda::{check_block_size, CudaBackend, DeviceElement, DeviceTensor, KERNELS_BUILT};
use crate::dtype::Element;
use crate::error::{Error, Result};
use crate::reference::backward::backward as cpu_backward;
use crate::reference::moe::{forward_train as cpu_forward, MoeSaved};

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

/// Whether the results of a forward or a backward hold only finite values.
///
/// GLaM skips the update of a training batch whose gradients hold NaN or
/// infinity; [`Finiteness::all_finite`] is that test. The CPU backend decides
/// it on the host while it computes (a CPU forward already returns the error
/// of a non-finite output or loss, so its flag is always finite); the CUDA
/// backend records it on the device, adding no host synchronisation to the
/// step, and reads it (one synchronisation) only when asked.
#[derive(Debug)]
pub struct Finiteness(FiniteState);

#[derive(Debug)]
enum FiniteState {
    /// Decided on the host: the first non-finite value, if any.
    Host(Option<Error>),
    /// Recorded on the device.
    Device(DeviceFiniteCheck),
}

impl Finiteness {
    /// `Ok(())` when every value is finite; else the first problem, in the
    /// order the results were produced: [`Error::NonFinite`] naming the
    /// tensor, row and column (or, for a CUDA forward, the router's
    /// [`Error::NonFinite`] / [`Error::TooFewExperts`]). Waits for the stream
    /// on CUDA.
    pub fn check(&self, backend: &Backend) -> Result<()> {
        match (&self.0, backend) {
            (FiniteState::Host(None), _) => Ok(()),
            (FiniteState::Host(Some(e)), _) => Err(e.clone()),
            (FiniteState::Device(check), Backend::Cuda(b)) => check.check(b),
            (FiniteState::Device(_), Backend::Cpu) => Err(wrong_backend()),
        }
    }

    /// Whether every value is finite: [`Finiteness::check`] as the bool a
    /// training loop tests to skip a batch. Errors only when the flag cannot
    /// be read (a device error, or the wrong backend).
    pub fn all_finite(&self, backend: &Backend) -> Result<bool> {
        match self.check(backend) {
            Ok(()) => Ok(true),
            Err(Error::NonFinite { .. } | Error::TooFewExperts { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
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
    /// Whether the routing, the output and both losses are finite. On the
    /// CPU a problem is already the forward's error; on CUDA read it with
    /// [`Finiteness::check`].
    pub finite: Finiteness,
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
    /// Whether every gradient is finite: test
    /// [`Finiteness::all_finite`] and skip the update when it is not.
    pub finite: Finiteness,
}

/// A dropless MoE layer on one backend.
///
/// [`DroplessMoe::forward`] and [`DroplessMoe::backward`] take `&self`: the
/// state the backward needs is kept inside (that of the last forward), so
/// `layer.download(&layer.forward(&x)?.output)?` is a valid one-liner.
pub struct DroplessMoe<T> {
    config: MoeConfig,
    backend: Backend,
    weights: Weights<T>,
    saved: Mutex<Option<Saved<T>>>,
}

fn host<T>(a: Array2<T>) -> Tensor<T> {
    Tensor::Host(a.into_dyn())
}

fn host1<T>(v: Vec<T>) -> Tensor<T> {
    Tensor::Host(ndarray::Array1::from(v).into_dyn())
}

/// The first non-finite value of the named host matrices, as the error.
fn first_nonfinite<T: Element>(tensors: &[(&'static str, ArrayView2<T>)]) -> Option<Error> {
    tensors
        .iter()
        .find_map(|&(what, m)| check_all_finite(what, m).err())
}

/// Names of the forward's results in finiteness errors.
const OUTPUT: &str = "the layer output";
const LOAD_BALANCING: &str = "the load-balancing loss";
const Z_LOSS: &str = "the router z-loss";

/// Names of the gradients in finiteness errors.
const GRAD_X: &str = "the input gradient (dx)";
const GRAD_ROUTER: &str = "the router gradient";
const GRAD_W1: &str = "the w1 gradient";
const GRAD_W3: &str = "the w3 gradient";
const GRAD_W2: &str = "the w2 gradient";

impl<T: LayerElement> DroplessMoe<T> {
    /// A layer with `weights` on `backend` (uploaded once for CUDA).
    ///
    /// Everything a backend cannot run is refused here, before any upload:
    /// on CUDA a block size other than [`crate::cuda::CUDA_BLOCK_SIZES`]
    /// ([`Error::UnsupportedBlockSize`]) and an element type the kernels do
    /// not take ([`Error::DTypeMismatch`]); on both, a config that does not
    /// validate, weights that do not fit it, and non-finite weights
    /// ([`Error::NonFinite`] naming the tensor, row and column).
    pub fn new(config: MoeConfig, weights: MoeWeights<T>, backend: Backend) -> Result<Self> {
        backend.check_config(&config)?;
        weights.check(&config)?;
        weights.check_finite()?;
        let weights = match &backend {
            Backend::Cpu => Weights::Host(weights),
            Backend::Cuda(b) => Weights::Device((cuda_ops::<T>()?.upload)(b, &config, &weights)?),
        };
        Ok(DroplessMoe {
            config,
            backend,
            weights,
            saved: Mutex::new(None),
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

    /// Puts a host array where this layer runs (an input `[tokens, hidden]`,
    /// or a gradient of the output; any dimensionality, e.g. what
    /// [`DroplessMoe::download`] returned).
    pub fn upload<D: Dimension>(&self, x: ArrayView<T, D>) -> Result<Tensor<T>> {
        match &self.backend {
            Backend::Cpu => Ok(Tensor::Host(x.to_owned().into_dyn())),
            Backend::Cuda(b) => {
                let values: Vec<T> = x.iter().copied().collect();
                Ok(Tensor::Device(DeviceTensor::from_host(
                    b,
                    x.shape(),
                    &values,
                )?))
            }
        }
    }

    /// Reads a tensor of this layer back to the host.
    pub fn download<E: DeviceElement>(&self, t: &Tensor<E>) -> Result<ArrayD<E>> {
        t.to_host(&self.backend)
    }

    /// The saved state, also when a panicking thread poisoned the lock: it
    /// is only ever replaced whole, so it is never half-written.
    fn saved(&self) -> MutexGuard<'_, Option<Saved<T>>> {
        self.saved.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The forward pass; keeps what [`DroplessMoe::backward`] needs (replacing
    /// the previous forward's). On CUDA it queues work on the stream and
    /// returns without waiting for it.
    ///
    /// Errors: shape and routing errors as [`crate::reference::moe::forward`];
    /// on the CPU also [`Error::NonFinite`] when the output or a loss is not
    /// finite (finite inputs can overflow). On CUDA those are recorded in
    /// [`MoeForward::finite`] instead, with the router's
    /// [`Error::NonFinite`] / [`Error::TooFewExperts`].
    pub fn forward(&self, x: &Tensor<T>) -> Result<MoeForward<T>> {
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
                check_all_finite(OUTPUT, out.output.view())?;
                for (what, value) in [
                    (LOAD_BALANCING, out.load_balancing_loss),
                    (Z_LOSS, out.z_loss),
                ] {
                    if !value.is_finite() {
                        return Err(Error::NonFinite {
                            what,
                            row: 0,
                            col: 0,
                            value,
                        });
                    }
                }
                *self.saved() = Some(Saved::Host(Box::new(saved)));
                Ok(MoeForward {
                    output: host(out.output),
                    expert_ids: host(out.routing.expert_ids),
                    routing_weights: host(out.routing.weights),
                    tokens_per_expert: Tensor::Host(out.tokens_per_expert.into_dyn()),
                    load_balancing_loss: host1(vec![out.load_balancing_loss]),
                    z_loss: host1(vec![out.z_loss]),
                    finite: Finiteness(FiniteState::Host(None)),
                })
            }
            (Weights::Device(w), Tensor::Device(x)) => {
                let Backend::Cuda(b) = &self.backend else {
                    return Err(wrong_backend());
                };
                let (out, saved) = (cuda_ops::<T>()?.forward)(b, &self.config, w, x)?;
                let mut finite = DeviceFiniteCheck::new(b, 4)?;
                finite.record_router(b, &saved.routing)?;
                finite.record(b, OUTPUT, &out.output)?;
                finite.record(b, LOAD_BALANCING, &out.load_balancing_loss)?;
                finite.record(b, Z_LOSS, &out.z_loss)?;
                let forward = MoeForward {
                    output: Tensor::Device(out.output),
                    expert_ids: Tensor::Device(saved.routing.expert_ids.try_clone(b)?),
                    routing_weights: Tensor::Device(saved.routing.weights.try_clone(b)?),
                    tokens_per_expert: Tensor::Device(out.tokens_per_expert),
                    load_balancing_loss: Tensor::Device(out.load_balancing_loss),
                    z_loss: Tensor::Device(out.z_loss),
                    finite: Finiteness(FiniteState::Device(finite)),
                };
                *self.saved() = Some(Saved::Device(Box::new(saved)));
                Ok(forward)
            }
            _ => Err(wrong_backend()),
        }
    }

    /// The backward pass of the last forward.
    ///
    /// `grad_output` is `dL/d output`: the gradient of the training loss `L`
    /// with respect to this layer's output, `[tokens, hidden]` like the
    /// output (for `L = ½ ‖output − target‖²` it is `output − target`).
    /// Returns the gradients of
    /// `<grad_output, output> + aux.load_balancing * LBL + aux.z_loss * Z`
    /// with respect to the input, the router and the expert weights, and
    /// whether they are all finite ([`MoeGrads::finite`]; recorded on the
    /// device on CUDA, with no host synchronisation).
    pub fn backward(
        &self,
        grad_output: &Tensor<T>,
        aux: AuxLossCoefficients,
    ) -> Result<MoeGrads<T>> {
        let saved = self.saved();
        let saved = saved.as_ref().ok_or_else(|| {
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
                let mut named = vec![
                    (GRAD_X, grads.x.view()),
                    (GRAD_ROUTER, grads.router.view()),
                    (GRAD_W1, grads.w1.view()),
                ];
                if let Some(w3) = &grads.w3 {
                    named.push((GRAD_W3, w3.view()));
                }
                named.push((GRAD_W2, grads.w2.view()));
                let finite = Finiteness(FiniteState::Host(first_nonfinite(&named)));
                Ok(MoeGrads {
                    x: host(grads.x),
                    router: host(grads.router),
                    w1: host(grads.w1),
                    w3: grads.w3.map(host),
                    w2: host(grads.w2),
                    finite,
                })
            }
            (Weights::Device(w), Saved::Device(s), Tensor::Device(g)) => {
                let Backend::Cuda(b) = &self.backend else {
                    return Err(wrong_backend());
                };
                let grads = (cuda_ops::<T>()?.backward)(b, &self.config, w, s, g, aux)?;
                let mut finite = DeviceFiniteCheck::new(b, 5)?;
                finite.record(b, GRAD_X, &grads.x)?;
                finite.record(b, GRAD_ROUTER, &grads.router)?;
                finite.record(b, GRAD_W1, &grads.w1)?;
                if let Some(w3) = &grads.w3 {
                    finite.record(b, GRAD_W3, w3)?;
                }
                finite.record(b, GRAD_W2, &grads.w2)?;
                Ok(MoeGrads {
                    x: Tensor::Device(grads.x),
                    router: Tensor::Device(grads.router),
                    w1: Tensor::Device(grads.w1),
                    w3: grads.w3.map(Tensor::Device),
                    w2: Tensor::Device(grads.w2),
                    finite: Finiteness(FiniteState::Device(finite)),
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
