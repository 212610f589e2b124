//! The baselines the dropless layer is measured against, on the device:
//!
//! - [`dense_ffn`]: one dense FFN (cuBLAS), with the MoE's active FLOPs when
//!   its width is `top_k * ffn`.
//! - [`capacity_moe`]: the capacity-factor MoE (GShard / Switch / fairseq):
//!   dispatch into `[experts, capacity, hidden]` slots, the experts as
//!   strided-batched cuBLAS GEMMs (batch = experts), and a weighted combine;
//!   the device counterpart of [`crate::reference::capacity::forward_routed`]
//!   (same token-order priority). No host synchronisation.
//! - [`expert_loop`]: what a naive port does: read the tokens per expert back
//!   to the host (a synchronisation) and run one GEMM chain per expert on its
//!   gathered rows; the device counterpart of [`crate::reference::moe::forward`]
//!   for a given routing.
//!
//! The GEMMs go through `cublasGemmStridedBatchedEx` with f32 accumulation
//! (as [`crate::cuda::gemm`]); activations are rounded to `T` once, as in the
//! dropless layer, so all three agree with the CPU references.

use cudarc::cublas::result::gemm_strided_batched_ex;
use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};
use cudarc::driver::{CudaView, CudaViewMut, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

use super::elementwise::{gelu_in_place, silu_mul_in_place, SiluForm};
use super::gemm::{check_matmul, matmul, matmul_into, GemmElement};
use super::histogram::histogram;
use super::kernels::CAPACITY;
use super::moe::DeviceMoeWeights;
use super::permute::{inclusive_cumsum, sort_by_expert};
use super::routing::{route, DeviceRouting};
use super::{CudaBackend, DeviceTensor};
use crate::checks::check_nonempty;
use crate::config::{MlpKind, MoeConfig};
use crate::dtype::DType;
use crate::error::{check_i32, product, Error, Result};
use crate::reference::capacity::expert_capacity;

/// Threads per CTA of the capacity kernels.
const THREADS: usize = 256;
/// Most CTAs of a grid-stride launch.
const MAX_CTAS: usize = 1 << 16;
/// Largest stride of a grid-stride loop: `n + GRID_STRIDE` must fit i32.
const GRID_STRIDE: usize = THREADS * MAX_CTAS;

/// A grid-stride launch over `n` elements.
fn grid(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(THREADS).clamp(1, MAX_CTAS) as u32, 1, 1),
        block_dim: (THREADS as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Checks that a grid-stride loop over `n` elements stays in i32.
fn check_elems(what: &'static str, n: u128) -> Result<()> {
    check_i32(what, n + GRID_STRIDE as u128)
}

fn mismatch(op: &'static str, message: String) -> Error {
    Error::ShapeMismatch { op, message }
}

/// Checks a 2-D shape against `[rows, cols]`.
fn expect_2d(op: &'static str, name: &str, shape: &[usize], want: [usize; 2]) -> Result<()> {
    if shape != want {
        return Err(mismatch(
            op,
            format!("{name} must be {want:?}, found {shape:?}"),
        ));
    }
    Ok(())
}

/// Checks that `w3` is present exactly for the GLU MLP.
fn check_w3_presence(mlp: MlpKind, has_w3: bool) -> Result<()> {
    match (mlp, has_w3) {
        (MlpKind::Glu, false) => Err(Error::InvalidConfig(
            "a GLU MLP needs w3; pass it or use MlpKind::Plain".into(),
        )),
        (MlpKind::Plain, true) => Err(Error::InvalidConfig(
            "a plain MLP takes no w3; drop it or use MlpKind::Glu".into(),
        )),
        _ => Ok(()),
    }
}

/// Checks the dense FFN's shapes: `x [tokens, hidden]`, `w1`, `w2` (and `w3`
/// for GLU) `[ffn, hidden]`. Returns `(tokens, hidden, ffn)`.
pub fn check_dense_ffn(
    x: &[usize],
    w1: &[usize],
    w3: Option<&[usize]>,
    w2: &[usize],
    mlp: MlpKind,
) -> Result<(usize, usize, usize)> {
    const OP: &str = "dense_ffn";
    let [tokens, hidden] = x[..] else {
        return Err(mismatch(
            OP,
            format!("x must be [tokens, hidden], found {x:?}"),
        ));
    };
    let [ffn, _] = w1[..] else {
        return Err(mismatch(
            OP,
            format!("w1 must be [ffn, hidden], found {w1:?}"),
        ));
    };
    expect_2d(OP, "w1 [ffn, hidden]", w1, [ffn, hidden])?;
    expect_2d(OP, "w2 [ffn, hidden]", w2, [ffn, hidden])?;
    check_w3_presence(mlp, w3.is_some())?;
    if let Some(w3) = w3 {
        expect_2d(OP, "w3 [ffn, hidden]", w3, [ffn, hidden])?;
    }
    for (what, v) in [
        ("tokens", tokens),
        ("hidden size", hidden),
        ("ffn size", ffn),
    ] {
        if v == 0 {
            return Err(Error::Empty { op: OP, what });
        }
        check_i32(what, v as u128)?;
    }
    check_elems("tokens x ffn", product(&[tokens, ffn]))?;
    Ok((tokens, hidden, ffn))
}

/// Checks device weights' shapes against a config (which is validated too).
pub fn check_weight_shapes(
    config: &MoeConfig,
    router: &[usize],
    w1: &[usize],
    w3: Option<&[usize]>,
    w2: &[usize],
) -> Result<()> {
    const OP: &str = "DeviceMoeWeights";
    config.validate()?;
    let (e, h, rows) = (
        config.num_experts,
        config.hidden,
        config.num_experts * config.ffn,
    );
    expect_2d(OP, "router [num_experts, hidden]", router, [e, h])?;
    expect_2d(OP, "w1 [num_experts * ffn, hidden]", w1, [rows, h])?;
    expect_2d(OP, "w2 [num_experts * ffn, hidden]", w2, [rows, h])?;
    check_w3_presence(config.mlp, w3.is_some())?;
    if let Some(w3) = w3 {
        expect_2d(OP, "w3 [num_experts * ffn, hidden]", w3, [rows, h])?;
    }
    Ok(())
}

/// Checks `x [tokens, hidden]` and routing `expert_ids` / `weights`
/// `[tokens, top_k]` against a config; returns the number of tokens.
pub fn check_routed_input(
    config: &MoeConfig,
    x: &[usize],
    expert_ids: &[usize],
    weights: &[usize],
) -> Result<usize> {
    const OP: &str = "capacity MoE baseline";
    let tokens = match x[..] {
        [tokens, hidden] if hidden == config.hidden => tokens,
        _ => {
            return Err(mismatch(
                OP,
                format!(
                    "x must be [tokens, hidden] with hidden = {}, found {x:?}",
                    config.hidden
                ),
            ))
        }
    };
    check_nonempty(OP, "the number of tokens", tokens)?;
    let want = [tokens, config.top_k];
    expect_2d(OP, "routing expert_ids [tokens, top_k]", expert_ids, want)?;
    expect_2d(OP, "routing weights [tokens, top_k]", weights, want)?;
    let n = product(&[tokens, config.top_k]);
    check_elems("tokens x top_k x hidden", n * config.hidden as u128)?;
    check_elems("tokens x top_k x ffn", n * config.ffn as u128)?;
    check_elems("tokens x hidden", product(&[tokens, config.hidden]))?;
    Ok(tokens)
}

/// Checks the slot buffers of a capacity MoE, `[experts * capacity, hidden]`
/// and `[experts * capacity, ffn]`, against i32 indexing.
pub fn check_slots(config: &MoeConfig, capacity: usize) -> Result<()> {
    let rows = product(&[config.num_experts, capacity]);
    check_elems("experts x capacity x hidden", rows * config.hidden as u128)?;
    check_elems("experts x capacity x ffn", rows * config.ffn as u128)
}

fn check_weights<T: GemmElement>(config: &MoeConfig, w: &DeviceMoeWeights<T>) -> Result<()> {
    check_weight_shapes(
        config,
        w.router.shape(),
        w.w1.shape(),
        w.w3.as_ref().map(|w3| w3.shape()),
        w.w2.shape(),
    )
}

/// The cuBLAS data type of `T`.
fn cuda_type(dtype: DType) -> cudaDataType {
    match dtype {
        DType::F32 => cudaDataType::CUDA_R_32F,
        DType::F16 => cudaDataType::CUDA_R_16F,
        DType::BF16 => cudaDataType::CUDA_R_16BF,
    }
}

/// A row-major strided-batched product: for `b` in `0..batch`,
/// `C_b = op(A_b) · op(B_b)` with `op(A_b)` `[m, k]`, `op(B_b)` `[k, n]`, `C_b`
/// `[m, n]`, the `b`-th operands starting `b * stride` elements in.
#[derive(Debug, Clone, Copy)]
struct BatchedGemm {
    m: usize,
    n: usize,
    k: usize,
    trans_a: bool,
    trans_b: bool,
    batch: usize,
    stride_a: usize,
    stride_b: usize,
    stride_c: usize,
}

impl BatchedGemm {
    /// One product (batch 1).
    fn single(m: usize, n: usize, k: usize, trans_a: bool, trans_b: bool) -> Self {
        BatchedGemm {
            m,
            n,
            k,
            trans_a,
            trans_b,
            batch: 1,
            stride_a: m * k,
            stride_b: k * n,
            stride_c: m * n,
        }
    }

    /// Elements of A, B and C the product reaches.
    fn extents(&self) -> [u128; 3] {
        let last = (self.batch as u128).saturating_sub(1);
        [
            last * self.stride_a as u128 + product(&[self.m, self.k]),
            last * self.stride_b as u128 + product(&[self.k, self.n]),
            last * self.stride_c as u128 + product(&[self.m, self.n]),
        ]
    }
}

/// Runs `g` through `cublasGemmStridedBatchedEx` (f32 accumulation); checks
/// the dimensions and that every operand holds its extent.
fn batched_gemm<T: GemmElement>(
    backend: &CudaBackend,
    g: &BatchedGemm,
    a: &impl DevicePtr<T>,
    b: &impl DevicePtr<T>,
    c: &mut impl DevicePtrMut<T>,
) -> Result<()> {
    for v in [g.m, g.n, g.k, g.batch] {
        if v == 0 {
            return Err(Error::Empty {
                op: "batched_gemm",
                what: "a matrix dimension or the batch",
            });
        }
        check_i32("GEMM dimension", v as u128)?;
    }
    let [ea, eb, ec] = g.extents();
    if (a.len() as u128) < ea || (b.len() as u128) < eb || (c.len() as u128) < ec {
        return Err(mismatch(
            "batched_gemm",
            format!(
                "operands of {}, {}, {} elements for a product reaching {ea}, {eb}, {ec}",
                a.len(),
                b.len(),
                c.len()
            ),
        ));
    }
    let op = |t: bool| {
        if t {
            cublasOperation_t::CUBLAS_OP_T
        } else {
            cublasOperation_t::CUBLAS_OP_N
        }
    };
    // Leading dimensions: the stored (row-major) widths of A and B.
    let a_cols = if g.trans_a { g.m } else { g.k };
    let b_cols = if g.trans_b { g.k } else { g.n };
    let blas = backend.blas()?;
    let stream = backend.stream();
    let (alpha, beta) = (1.0f32, 0.0f32);
    let ty = cuda_type(T::DTYPE);
    let (a_ptr, _a_sync) = a.device_ptr(stream);
    let (b_ptr, _b_sync) = b.device_ptr(stream);
    let (c_ptr, _c_sync) = c.device_ptr_mut(stream);
    // Row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ, and the
    // column-major view of a row-major [r, c] matrix is its transpose (ld = c).
    //
    // SAFETY: for each of the `batch` products cuBLAS reads op(B)ᵀ as n x k
    // column-major with leading dimension b_cols from b + b * stride_b, op(A)ᵀ
    // as k x m with leading dimension a_cols from a + b * stride_a, and writes
    // n x m with ldc = n at c + b * stride_c: the extents checked above are
    // exactly the last element reached plus one, every dimension fits i32,
    // the data types match T, and alpha / beta are f32 as
    // CUBLAS_COMPUTE_32F requires.
    unsafe {
        gemm_strided_batched_ex(
            *blas.handle(),
            op(g.trans_b),
            op(g.trans_a),
            g.n as i32,
            g.m as i32,
            g.k as i32,
            (&alpha) as *const f32 as *const _,
            b_ptr as *const _,
            ty,
            b_cols as i32,
            g.stride_b as i64,
            a_ptr as *const _,
            ty,
            a_cols as i32,
            g.stride_a as i64,
            (&beta) as *const f32 as *const _,
            c_ptr as *mut _,
            ty,
            g.n as i32,
            g.stride_c as i64,
            g.batch as i32,
            cublasComputeType_t::CUBLAS_COMPUTE_32F,
            cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }?;
    Ok(())
}

/// The activation in place on `gate` (all its elements): GeLU (tanh
/// approximation) for [`MlpKind::Plain`], `SiLU(gate) * up` for
/// [`MlpKind::Glu`]; f32 math, one rounding to `T`.
fn activate<T: GemmElement>(
    backend: &CudaBackend,
    mlp: MlpKind,
    gate: &mut CudaViewMut<'_, T>,
    up: Option<&CudaView<'_, T>>,
) -> Result<()> {
    let n = gate.len();
    check_elems("activation elements", n as u128)?;
    match (mlp, up) {
        (MlpKind::Plain, _) => gelu_in_place(backend, gate)?,
        (MlpKind::Glu, Some(up)) if up.len() >= n => {
            silu_mul_in_place(backend, gate, up, SiluForm::Sigmoid)?
        }
        (MlpKind::Glu, _) => {
            return Err(Error::InvalidConfig(
                "the GLU activation needs the up projection (w3) for every element".into(),
            ))
        }
    }
    Ok(())
}

/// The dense FFN: `act(x · W1ᵀ) · W2` (plain: GeLU) or
/// `(SiLU(x · W1ᵀ) ⊙ (x · W3ᵀ)) · W2` (GLU). `x` is `[tokens, hidden]`, the
/// weights `[ffn, hidden]`; returns `[tokens, hidden]`. With
/// `ffn = top_k * expert_ffn` it has the MoE's active FLOPs. Two (GLU: three)
/// cuBLAS GEMMs and one elementwise kernel; intermediates rounded to `T`.
///
/// Errors: [`check_dense_ffn`]'s ([`Error::ShapeMismatch`], [`Error::Empty`],
/// [`Error::InvalidConfig`] when `w3` does not match `mlp`,
/// [`Error::IndexOverflow`]).
pub fn dense_ffn<T: GemmElement>(
    backend: &CudaBackend,
    x: &DeviceTensor<T>,
    w1: &DeviceTensor<T>,
    w3: Option<&DeviceTensor<T>>,
    w2: &DeviceTensor<T>,
    mlp: MlpKind,
) -> Result<DeviceTensor<T>> {
    let (tokens, _, ffn) = check_dense_ffn(
        x.shape(),
        w1.shape(),
        w3.map(|w| w.shape()),
        w2.shape(),
        mlp,
    )?;
    let n = tokens * ffn;
    let mut h1 = matmul(backend, x, false, w1, true)?;
    let h3 = w3
        .map(|w3| matmul(backend, x, false, w3, true))
        .transpose()?;
    let up = h3.as_ref().map(|h3| h3.slice().slice(..n));
    activate(
        backend,
        mlp,
        &mut h1.slice_mut().slice_mut(..n),
        up.as_ref(),
    )?;
    matmul(backend, &h1, false, w2, false)
}

/// Router logits `x · routerᵀ` in f32 (cuBLAS, f32 accumulation and output:
/// no rounding to `T`), `[tokens, num_experts]`.
///
/// Errors: [`crate::cuda::gemm::check_matmul`]'s.
pub fn router_logits<T: GemmElement>(
    backend: &CudaBackend,
    x: &DeviceTensor<T>,
    router: &DeviceTensor<T>,
) -> Result<DeviceTensor<f32>> {
    let (m, n, _) = check_matmul(x.shape(), false, router.shape(), true)?;
    let mut logits = DeviceTensor::zeros(backend, &[m, n])?;
    matmul_into(backend, x, false, router, true, &mut logits, false)?;
    Ok(logits)
}

/// The dropless layer's router on the device: [`router_logits`], then
/// [`crate::cuda::routing::route`] with the config's `top_k` and
/// renormalisation (non-finite logits are not checked here; see
/// [`DeviceRouting::check_finite`]).
///
/// Errors: the weights' shape checks, [`Error::ShapeMismatch`] for `x`, and
/// the router's errors.
pub fn route_tokens<T: GemmElement>(
    backend: &CudaBackend,
    config: &MoeConfig,
    weights: &DeviceMoeWeights<T>,
    x: &DeviceTensor<T>,
) -> Result<DeviceRouting> {
    check_weights(config, weights)?;
    let logits = router_logits(backend, x, &weights.router)?;
    route(backend, &logits, config.top_k, config.renormalize)
}

/// Which rows the dispatch writes.
#[derive(Debug, Clone, Copy)]
enum Rows {
    /// Row `e * capacity + rank`, dropped past the capacity.
    Capacity(usize),
    /// Row = sorted position (every assignment kept).
    Compact,
}

/// The sorted layout of a routing: tokens per expert, the stable sort and
/// the bins.
struct Sorted {
    tokens_per_expert: DeviceTensor<i32>,
    indices: DeviceTensor<i32>,
    bin_ids: DeviceTensor<i32>,
    bins: DeviceTensor<i32>,
}

fn sort(backend: &CudaBackend, config: &MoeConfig, routing: &DeviceRouting) -> Result<Sorted> {
    let e = config.num_experts;
    let tokens_per_expert = histogram(backend, &routing.expert_ids, e)?;
    let (indices, bin_ids) = sort_by_expert(backend, &routing.expert_ids, e)?;
    let bins = inclusive_cumsum(backend, &tokens_per_expert)?;
    Ok(Sorted {
        tokens_per_expert,
        indices,
        bin_ids,
        bins,
    })
}

/// Copies each assignment's token row of `x` into its row of `slots`
/// (`[slot_rows, hidden]`, zero-initialised) and records the row (or -1 when
/// dropped) in `slot_of` (`[tokens * top_k]`). Returns `(slot_of, slots)`.
fn dispatch<T: GemmElement>(
    backend: &CudaBackend,
    config: &MoeConfig,
    x: &DeviceTensor<T>,
    sorted: &Sorted,
    rows: Rows,
) -> Result<(DeviceTensor<i32>, DeviceTensor<T>)> {
    let (k, h, e) = (config.top_k, config.hidden, config.num_experts);
    let n = sorted.indices.len();
    let (slot_rows, capacity, compact) = match rows {
        Rows::Capacity(c) => (e * c, c, 0i32),
        Rows::Compact => (n, 0, 1i32),
    };
    let mut slot_of = DeviceTensor::<i32>::zeros(backend, &[n])?;
    let mut slots = DeviceTensor::<T>::zeros(backend, &[slot_rows.max(1), h])?;
    let func = backend.function(CAPACITY, &format!("dl_capacity_dispatch_{}", T::SUFFIX))?;
    let (n_i32, k_i32, h_i32, e_i32, c_i32) =
        (n as i32, k as i32, h as i32, e as i32, capacity as i32);
    let mut launch = backend.stream().launch_builder(&func);
    launch
        .arg(x.slice())
        .arg(sorted.indices.slice())
        .arg(sorted.bin_ids.slice())
        .arg(sorted.bins.slice())
        .arg(&n_i32)
        .arg(&k_i32)
        .arg(&h_i32)
        .arg(&e_i32)
        .arg(&c_i32)
        .arg(&compact)
        .arg(slot_of.slice_mut())
        .arg(slots.slice_mut());
    // SAFETY: dl_capacity_dispatch_T(const T* x, const i32* indices,
    // const i32* bin_ids, const i32* bins, i32 n, i32 top_k, i32 hidden,
    // i32 E, i32 capacity, i32 compact, i32* slot_of, T* slots) reads
    // indices / bin_ids [0..n) (sort outputs of n = tokens * top_k values),
    // bins[0..E) (E values), x rows a / top_k < tokens of `hidden` values
    // ([tokens, hidden], checked), only for 0 <= a < n and 0 <= e < E (checked
    // in the kernel); writes slot_of[a] (n values) and slots rows below
    // E * capacity (capacity mode, rank < capacity) or n (compact mode): the
    // buffer holds that many rows of `hidden`. n * hidden, E * capacity *
    // hidden and the grid stride fit i32 (check_routed_input, check_slots).
    unsafe { launch.launch(grid(n * h)) }?;
    Ok((slot_of, slots))
}

/// `out[t] = sum over j in slot order of weights[t, j] * y[slot_of[t, j]]`
/// for the admitted slots, f32 accumulation, `[tokens, hidden]`.
fn combine<T: GemmElement>(
    backend: &CudaBackend,
    config: &MoeConfig,
    y: &DeviceTensor<T>,
    slot_of: &DeviceTensor<i32>,
    weights: &DeviceTensor<f32>,
    tokens: usize,
) -> Result<DeviceTensor<T>> {
    let (k, h) = (config.top_k, config.hidden);
    let rows = y.shape()[0];
    let mut out = DeviceTensor::<T>::zeros(backend, &[tokens, h])?;
    let func = backend.function(CAPACITY, &format!("dl_capacity_combine_{}", T::SUFFIX))?;
    let (r_i32, t_i32, k_i32, h_i32) = (rows as i32, tokens as i32, k as i32, h as i32);
    let mut launch = backend.stream().launch_builder(&func);
    launch
        .arg(y.slice())
        .arg(&r_i32)
        .arg(slot_of.slice())
        .arg(weights.slice())
        .arg(&t_i32)
        .arg(&k_i32)
        .arg(&h_i32)
        .arg(out.slice_mut());
    // SAFETY: dl_capacity_combine_T(const T* y, i32 rows, const i32* slot_of,
    // const float* weights, i32 tokens, i32 top_k, i32 hidden, T* out) reads
    // slot_of / weights [0..tokens * top_k) (both hold that many values:
    // dispatch output and checked routing weights), y rows s only when
    // 0 <= s < rows (checked in the kernel; y is [rows, hidden]) and writes
    // out[0..tokens * hidden) (allocated). tokens * hidden and the grid stride
    // fit i32 (check_routed_input).
    unsafe { launch.launch(grid(tokens * h)) }?;
    Ok(out)
}

/// `[1]` f32: the fraction of the `n` assignments beyond their expert's
/// capacity, computed on the device from the counts.
fn dropped_fraction(
    backend: &CudaBackend,
    tokens_per_expert: &DeviceTensor<i32>,
    capacity: usize,
    n: usize,
) -> Result<DeviceTensor<f32>> {
    let mut out = DeviceTensor::<f32>::zeros(backend, &[1])?;
    let func = backend.function(CAPACITY, "dl_capacity_dropped")?;
    let (e_i32, c_i32, n_i32) = (tokens_per_expert.len() as i32, capacity as i32, n as i32);
    let mut launch = backend.stream().launch_builder(&func);
    launch
        .arg(tokens_per_expert.slice())
        .arg(&e_i32)
        .arg(&c_i32)
        .arg(&n_i32)
        .arg(out.slice_mut());
    // SAFETY: dl_capacity_dropped(const i32* counts, i32 E, i32 capacity,
    // i32 n, float* dropped) reads counts[0..E) (the histogram's E values)
    // and writes dropped[0] (one value). One CTA of exactly 256 threads (its
    // static shared reduction has 256 slots); n >= 1.
    unsafe {
        launch.launch(LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (THREADS as u32, 1, 1),
            shared_mem_bytes: 0,
        })
    }?;
    Ok(out)
}

/// The result of [`capacity_moe`]; every tensor stays on the device.
#[derive(Debug)]
pub struct CapacityMoeOutput<T> {
    /// `[tokens, hidden]`: the layer's output (dropped assignments add zero).
    pub output: DeviceTensor<T>,
    /// `[1]` f32: fraction of the `tokens * top_k` assignments dropped.
    pub dropped_fraction: DeviceTensor<f32>,
    /// Slots per expert (computed on the host from shapes alone).
    pub capacity: usize,
    /// `[num_experts]` i32: assignments routed to each expert, before
    /// dropping.
    pub tokens_per_expert: DeviceTensor<i32>,
}

/// The capacity-factor MoE forward for a given routing; see
/// [`crate::reference::capacity::forward_routed`] (same capacity formula,
/// token-order priority, no renormalisation of the surviving weights).
///
/// Dispatch (slot = rank within the expert from the stable sort and the bins,
/// admitted when below the capacity; deterministic), the expert MLPs as
/// strided-batched cuBLAS GEMMs over `[experts, capacity, ·]` (batch =
/// experts; unused slots are zero), the activation, and the weighted combine
/// (per token, admitted slots in slot order, f32). No host synchronisation.
///
/// Errors: the config's and weights' checks, [`check_routed_input`]'s,
/// [`crate::reference::capacity::expert_capacity`]'s (e.g.
/// [`Error::InvalidConfig`] for a non-positive or NaN factor),
/// [`check_slots`]'s, and the sort's limits.
pub fn capacity_moe<T: GemmElement>(
    backend: &CudaBackend,
    config: &MoeConfig,
    weights: &DeviceMoeWeights<T>,
    x: &DeviceTensor<T>,
    routing: &DeviceRouting,
    capacity_factor: f32,
) -> Result<CapacityMoeOutput<T>> {
    check_weights(config, weights)?;
    let tokens = check_routed_input(
        config,
        x.shape(),
        routing.expert_ids.shape(),
        routing.weights.shape(),
    )?;
    let (e, k, h, f) = (config.num_experts, config.top_k, config.hidden, config.ffn);
    let capacity = expert_capacity(capacity_factor, tokens, k, e)?;
    check_slots(config, capacity)?;

    let sorted = sort(backend, config, routing)?;
    let (slot_of, slots) = dispatch(backend, config, x, &sorted, Rows::Capacity(capacity))?;

    let up = |w: &DeviceTensor<T>, out: &mut DeviceTensor<T>| {
        let g = BatchedGemm {
            m: capacity,
            n: f,
            k: h,
            trans_a: false,
            trans_b: true,
            batch: e,
            stride_a: capacity * h,
            stride_b: f * h,
            stride_c: capacity * f,
        };
        batched_gemm(backend, &g, slots.slice(), w.slice(), out.slice_mut())
    };
    let mut h1 = DeviceTensor::<T>::zeros(backend, &[e * capacity, f])?;
    up(&weights.w1, &mut h1)?;
    let h3 = match &weights.w3 {
        Some(w3) => {
            let mut h3 = DeviceTensor::<T>::zeros(backend, &[e * capacity, f])?;
            up(w3, &mut h3)?;
            Some(h3)
        }
        None => None,
    };
    let n_act = e * capacity * f;
    let up_view = h3.as_ref().map(|h3| h3.slice().slice(..n_act));
    activate(
        backend,
        config.mlp,
        &mut h1.slice_mut().slice_mut(..n_act),
        up_view.as_ref(),
    )?;
    let mut y = DeviceTensor::<T>::zeros(backend, &[e * capacity, h])?;
    let down = BatchedGemm {
        m: capacity,
        n: h,
        k: f,
        trans_a: false,
        trans_b: false,
        batch: e,
        stride_a: capacity * f,
        stride_b: f * h,
        stride_c: capacity * h,
    };
    batched_gemm(
        backend,
        &down,
        h1.slice(),
        weights.w2.slice(),
        y.slice_mut(),
    )?;

    let output = combine(backend, config, &y, &slot_of, &routing.weights, tokens)?;
    let dropped_fraction =
        dropped_fraction(backend, &sorted.tokens_per_expert, capacity, tokens * k)?;
    Ok(CapacityMoeOutput {
        output,
        dropped_fraction,
        capacity,
        tokens_per_expert: sorted.tokens_per_expert,
    })
}

/// The MoE forward for a given routing as a naive port writes it: sort the
/// assignments by expert, gather them into expert order, **read the tokens
/// per expert back to the host** (a synchronisation of the stream, which the
/// dropless layer avoids), then one cuBLAS GEMM chain (W1 (and W3),
/// activation, W2) per expert with tokens, and the weighted combine. Drops
/// nothing: the result matches [`crate::reference::moe::forward`] for the
/// same routing. Returns `[tokens, hidden]`.
///
/// Errors: as [`capacity_moe`] (without the capacity's), plus
/// [`Error::Cuda`] when the device counts are inconsistent (possible only for
/// routing uploaded from the host with invalid expert ids).
pub fn expert_loop<T: GemmElement>(
    backend: &CudaBackend,
    config: &MoeConfig,
    weights: &DeviceMoeWeights<T>,
    x: &DeviceTensor<T>,
    routing: &DeviceRouting,
) -> Result<DeviceTensor<T>> {
    check_weights(config, weights)?;
    let tokens = check_routed_input(
        config,
        x.shape(),
        routing.expert_ids.shape(),
        routing.weights.shape(),
    )?;
    let (h, f) = (config.hidden, config.ffn);
    let n = tokens * config.top_k;
    let sorted = sort(backend, config, routing)?;
    let (slot_of, x_sorted) = dispatch(backend, config, x, &sorted, Rows::Compact)?;
    // The host synchronisation of the naive port.
    let counts = sorted.tokens_per_expert.to_host(backend)?;

    let mut h1 = DeviceTensor::<T>::zeros(backend, &[n, f])?;
    let mut h3 = match config.mlp {
        MlpKind::Glu => Some(DeviceTensor::<T>::zeros(backend, &[n, f])?),
        MlpKind::Plain => None,
    };
    let mut y = DeviceTensor::<T>::zeros(backend, &[n, h])?;
    let mut start = 0usize;
    for (e, &count) in counts.iter().enumerate() {
        let rows = usize::try_from(count).unwrap_or(usize::MAX);
        if rows == 0 {
            continue;
        }
        if rows > n - start {
            return Err(Error::Cuda(format!(
                "tokens per expert {counts:?} exceed the {n} assignments: invalid expert ids"
            )));
        }
        let (xs, hs, ws) = (
            start * h..(start + rows) * h,
            start * f..(start + rows) * f,
            e * f * h..(e + 1) * f * h,
        );
        let up = BatchedGemm::single(rows, f, h, false, true);
        let x_e = x_sorted.slice().slice(xs.clone());
        batched_gemm(
            backend,
            &up,
            &x_e,
            &weights.w1.slice().slice(ws.clone()),
            &mut h1.slice_mut().slice_mut(hs.clone()),
        )?;
        if let (Some(h3), Some(w3)) = (h3.as_mut(), weights.w3.as_ref()) {
            batched_gemm(
                backend,
                &up,
                &x_e,
                &w3.slice().slice(ws.clone()),
                &mut h3.slice_mut().slice_mut(hs.clone()),
            )?;
        }
        let up_view = h3.as_ref().map(|h3| h3.slice().slice(hs.clone()));
        activate(
            backend,
            config.mlp,
            &mut h1.slice_mut().slice_mut(hs.clone()),
            up_view.as_ref(),
        )?;
        batched_gemm(
            backend,
            &BatchedGemm::single(rows, h, f, false, false),
            &h1.slice().slice(hs),
            &weights.w2.slice().slice(ws),
            &mut y.slice_mut().slice_mut(xs),
        )?;
        start += rows;
    }
    combine(backend, config, &y, &slot_of, &routing.weights, tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(mlp: MlpKind) -> MoeConfig {
        MoeConfig {
            hidden: 64,
            ffn: 128,
            num_experts: 4,
            top_k: 2,
            mlp,
            renormalize: true,
            block_size: 128,
        }
    }

    #[test]
    fn dense_ffn_shapes_are_checked() {
        let (x, w) = (&[5, 64][..], &[256, 64][..]);
        assert_eq!(
            check_dense_ffn(x, w, None, w, MlpKind::Plain),
            Ok((5, 64, 256))
        );
        assert_eq!(
            check_dense_ffn(x, w, Some(w), w, MlpKind::Glu),
            Ok((5, 64, 256))
        );
        let err = |r: Result<(usize, usize, usize)>| r.unwrap_err();
        assert!(matches!(
            err(check_dense_ffn(x, w, Some(w), w, MlpKind::Plain)),
            Error::InvalidConfig(_)
        ));
        assert!(matches!(
            err(check_dense_ffn(x, w, None, w, MlpKind::Glu)),
            Error::InvalidConfig(_)
        ));
        assert!(matches!(
            err(check_dense_ffn(&[5, 63], w, None, w, MlpKind::Plain)),
            Error::ShapeMismatch { .. }
        ));
        assert!(matches!(
            err(check_dense_ffn(x, w, None, &[128, 64], MlpKind::Plain)),
            Error::ShapeMismatch { .. }
        ));
        assert!(matches!(
            err(check_dense_ffn(x, w, Some(&[256, 32]), w, MlpKind::Glu)),
            Error::ShapeMismatch { .. }
        ));
        assert!(matches!(
            err(check_dense_ffn(&[5], w, None, w, MlpKind::Plain)),
            Error::ShapeMismatch { .. }
        ));
        assert!(matches!(
            err(check_dense_ffn(&[0, 64], w, None, w, MlpKind::Plain)),
            Error::Empty { .. }
        ));
        let wide = &[1 << 20, 64][..];
        assert!(matches!(
            err(check_dense_ffn(
                &[1 << 12, 64],
                wide,
                None,
                wide,
                MlpKind::Plain
            )),
            Error::IndexOverflow { .. }
        ));
    }

    #[test]
    fn weight_shapes_are_checked() {
        let cfg = config(MlpKind::Glu);
        let (r, w) = (&[4, 64][..], &[512, 64][..]);
        assert!(check_weight_shapes(&cfg, r, w, Some(w), w).is_ok());
        assert!(matches!(
            check_weight_shapes(&cfg, r, w, None, w),
            Err(Error::InvalidConfig(_))
        ));
        assert!(matches!(
            check_weight_shapes(&cfg, &[5, 64], w, Some(w), w),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            check_weight_shapes(&cfg, r, &[511, 64], Some(w), w),
            Err(Error::ShapeMismatch { .. })
        ));
        let plain = config(MlpKind::Plain);
        assert!(check_weight_shapes(&plain, r, w, None, w).is_ok());
        assert!(matches!(
            check_weight_shapes(&plain, r, w, Some(w), w),
            Err(Error::InvalidConfig(_))
        ));
        let bad_k = MoeConfig { top_k: 5, ..plain };
        assert!(matches!(
            check_weight_shapes(&bad_k, r, w, None, w),
            Err(Error::InvalidTopK { .. })
        ));
    }

    #[test]
    fn routed_input_is_checked() {
        let cfg = config(MlpKind::Plain);
        assert_eq!(check_routed_input(&cfg, &[7, 64], &[7, 2], &[7, 2]), Ok(7));
        let mismatched: [[&[usize]; 3]; 3] = [
            [&[7, 32], &[7, 2], &[7, 2]],
            [&[7, 64], &[7, 1], &[7, 2]],
            [&[7, 64], &[7, 2], &[6, 2]],
        ];
        for [x, ids, w] in mismatched {
            assert!(
                matches!(
                    check_routed_input(&cfg, x, ids, w),
                    Err(Error::ShapeMismatch { .. })
                ),
                "{x:?} {ids:?} {w:?}"
            );
        }
        assert!(matches!(
            check_routed_input(&cfg, &[0, 64], &[0, 2], &[0, 2]),
            Err(Error::Empty { .. })
        ));
        assert!(matches!(
            check_routed_input(&cfg, &[1 << 23, 64], &[1 << 23, 2], &[1 << 23, 2]),
            Err(Error::IndexOverflow { .. })
        ));
    }

    #[test]
    fn slots_are_checked() {
        let cfg = config(MlpKind::Plain);
        assert!(check_slots(&cfg, 1000).is_ok());
        assert!(matches!(
            check_slots(&cfg, 1 << 22),
            Err(Error::IndexOverflow { .. })
        ));
    }

    #[test]
    fn batched_extents_reach_the_last_product() {
        let g = BatchedGemm {
            m: 3,
            n: 5,
            k: 4,
            trans_a: false,
            trans_b: true,
            batch: 2,
            stride_a: 12,
            stride_b: 20,
            stride_c: 15,
        };
        assert_eq!(g.extents(), [24, 40, 30]);
        assert_eq!(
            BatchedGemm::single(3, 5, 4, true, false).extents(),
            [12, 20, 15]
        );
    }
}
