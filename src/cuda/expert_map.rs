//! The MoE "map" and "reduce" on the device, for layers whose expert weights
//! are stacked `[experts, in, out]` and used as `x · W` (ModuleFormer's
//! checkpoints), composed from the dMoE kernels with no host synchronisation:
//!
//! - [`plan`]: expert ids `[tokens, k]` → histogram → stable sort → bins,
//!   padded bins (shared by map and reduce);
//! - [`map`]: x `[tokens, in]` → padded gather (expert order) → the rows laid
//!   out as blocks of the dMoE topology with `in` columns per expert →
//!   `dsd(·, W)` with W as `[experts * in, out]` → padded scatter back to
//!   `[tokens * k, out]` in (token, slot) order: row `t * k + s` is
//!   `x[t] · W[e(t, s)]`;
//! - [`reduce`]: h `[tokens * k, in]` in (token, slot) order → padded gather
//!   → blocks → `dsd(·, V)` → padded scatter weighted by the gates `[tokens,
//!   k]` f32: `Σ_s g[t, s] · h[t * k + s] · V[e(t, s)]`.
//!
//! Rounding: the DSD product rounds each row once to `T`; the scatter sums
//! the gate-weighted rows in f32 and rounds once. An `in` that is not a
//! multiple of the block size (128) is zero-padded up to one inside the ops,
//! so the weights are passed padded too, `[experts * padded_in, out]` with
//! zero rows past each expert's `in` ([`upload_expert_weights`] uploads the
//! checkpoint's `[experts, in, out]` so); `out` must be a multiple of 8.

use std::sync::Arc;

use cudarc::driver::PushKernelArg;
use ndarray::ArrayView3;

use super::histogram::histogram;
use super::kernels::{launch_1d, EXPERT_MAP};
use super::permute::{
    inclusive_cumsum, padded_bins, padded_gather, padded_scatter, sort_by_expert,
};
use super::sparse_ops::{dsd, MmaElement};
use super::topology_build::topology;
use super::{check_block_size, CudaBackend, DeviceBlockSparse, DeviceTensor, DeviceTopology};
use crate::dtype::Element;
use crate::error::{Error, Result};

/// Threads per block of `dl_rows_to_blocks_*` (`kThreads`).
const THREADS: u32 = 256;

/// What [`map`] and [`reduce`] share for one routing decision; every field
/// stays on the device.
#[derive(Debug)]
pub struct DeviceExpertPlan {
    tokens: usize,
    top_k: usize,
    num_experts: usize,
    block_size: usize,
    /// `[tokens * k]` i32: assignment indices `t * k + s` in expert order.
    indices: DeviceTensor<i32>,
    /// `[experts]` i32: inclusive cumulative assignment counts.
    bins: DeviceTensor<i32>,
    /// `[experts]` i32: inclusive cumulative counts padded to the block size.
    padded_bins: DeviceTensor<i32>,
}

impl DeviceExpertPlan {
    /// Tokens routed.
    pub fn tokens(&self) -> usize {
        self.tokens
    }
    /// Experts per token.
    pub fn top_k(&self) -> usize {
        self.top_k
    }
    /// Experts of the layer.
    pub fn num_experts(&self) -> usize {
        self.num_experts
    }
}

/// The plan of expert ids `[tokens, k]` (i32, each in `0..num_experts`; an id
/// outside that range sorts past the last bin and its slot's row stays zero,
/// since the device values cannot be checked without a host sync).
///
/// Errors: [`Error::ShapeMismatch`] unless `expert_ids` is 2-D,
/// [`Error::Empty`] for no tokens or slots, [`Error::UnsupportedBlockSize`],
/// [`Error::InvalidTopK`] for `k > num_experts`, and those of the sort and
/// scans.
pub fn plan(
    backend: &CudaBackend,
    expert_ids: &DeviceTensor<i32>,
    num_experts: usize,
    block_size: usize,
) -> Result<DeviceExpertPlan> {
    const OP: &str = "expert_map::plan";
    check_block_size(block_size)?;
    let (tokens, top_k) = match *expert_ids.shape() {
        [t, k] if t > 0 && k > 0 => (t, k),
        [_, _] => {
            return Err(Error::Empty {
                op: OP,
                what: "the tokens or slots of expert_ids",
            })
        }
        ref other => {
            return Err(Error::ShapeMismatch {
                op: OP,
                message: format!("expert_ids must be [tokens, k], found {other:?}"),
            })
        }
    };
    let counts = histogram(backend, expert_ids, num_experts)?;
    let (indices, _) = sort_by_expert(backend, expert_ids, num_experts)?;
    let bins = inclusive_cumsum(backend, &counts)?;
    let padded_bins = padded_bins(backend, &counts, block_size)?;
    Ok(DeviceExpertPlan {
        tokens,
        top_k,
        num_experts,
        block_size,
        indices,
        bins,
        padded_bins,
    })
}

/// `width` rounded up to a multiple of the block size.
fn padded(width: usize, block_size: usize) -> usize {
    width.div_ceil(block_size) * block_size
}

/// Uploads stacked expert weights `[experts, in, out]` (the checkpoint
/// layout) as the `[experts * padded_in, out]` that [`map`] and [`reduce`]
/// take: `padded_in` is `in` rounded up to a multiple of `block_size`, the
/// extra rows zero.
///
/// Errors: [`Error::Empty`] for an empty dimension,
/// [`Error::UnsupportedBlockSize`], and those of the upload.
pub fn upload_expert_weights<T: MmaElement + Element>(
    backend: &CudaBackend,
    w: ArrayView3<T>,
    block_size: usize,
) -> Result<DeviceTensor<T>> {
    check_block_size(block_size)?;
    let (experts, width, out) = w.dim();
    if experts == 0 || width == 0 || out == 0 {
        return Err(Error::Empty {
            op: "expert_map::upload_expert_weights",
            what: "a dimension of the expert weights [experts, in, out]",
        });
    }
    let pw = padded(width, block_size);
    let mut host = vec![T::from_f32(0.0); experts * pw * out];
    for ((e, i, o), &v) in w.indexed_iter() {
        host[(e * pw + i) * out + o] = v;
    }
    DeviceTensor::from_host(backend, &[experts * pw, out], &host)
}

/// Checks stacked weights `[experts * padded_in, out]` against `in`; returns
/// `out`.
fn check_weights(
    op: &'static str,
    plan: &DeviceExpertPlan,
    w: &[usize],
    width: usize,
) -> Result<usize> {
    let rows = plan.num_experts * padded(width, plan.block_size);
    match *w {
        [r, out] if r == rows && out > 0 => Ok(out),
        _ => Err(Error::ShapeMismatch {
            op,
            message: format!(
                "the expert weights must be [experts * padded_in, out] = [{rows}, out] ({} experts, in = {width} padded to the block size {}; upload_expert_weights lays out the checkpoint's [experts, in, out] so), found {w:?}",
                plan.num_experts, plan.block_size
            ),
        }),
    }
}

/// Lays padded expert-order rows `[P, width]` out as the blocks of the plan's
/// topology with `width` (rounded up to the block size) columns per expert.
fn to_blocks<T: MmaElement>(
    backend: &CudaBackend,
    plan: &DeviceExpertPlan,
    rows: &DeviceTensor<T>,
    width: usize,
) -> Result<DeviceBlockSparse<T>> {
    let topo: Arc<DeviceTopology> = topology(
        backend,
        &plan.padded_bins,
        plan.tokens,
        plan.top_k,
        padded(width, plan.block_size),
        plan.block_size,
    )?;
    let bs = plan.block_size;
    if rows.shape() != [topo.max_block_rows * bs, width] {
        return Err(Error::InvalidTopology(format!(
            "padded rows {:?} do not fit the topology's capacity of {} rows x {width}",
            rows.shape(),
            topo.max_block_rows * bs
        )));
    }
    let mut data = DeviceTensor::<T>::zeros(backend, &[topo.max_blocks * bs * bs])?;
    let func = backend.function(EXPERT_MAP, &format!("dl_rows_to_blocks_{}", T::SUFFIX))?;
    let (rows_i, per_row_i, bs_i, width_i) = (
        topo.max_block_rows as i32,
        width.div_ceil(bs) as i32,
        bs as i32,
        width as i32,
    );
    let mut launch = backend.stream().launch_builder(&func);
    launch
        .arg(rows.slice())
        .arg(topo.row_indices.slice())
        .arg(topo.column_indices.slice())
        .arg(topo.offsets.slice())
        .arg(data.slice_mut())
        .arg(&rows_i)
        .arg(&per_row_i)
        .arg(&bs_i)
        .arg(&width_i);
    // SAFETY: dl_rows_to_blocks_T(const T* dense, const i32* row_indices,
    // const i32* column_indices, const i32* offsets, T* data,
    // i32 max_block_rows, i32 per_row, i32 bs, i32 width) runs one CTA per block
    // b < max_blocks (row_indices / column_indices hold max_blocks entries,
    // offsets max_block_rows + 1); it writes data[b * bs² ..(b + 1) * bs²)
    // (max_blocks * bs² allocated) and, for b below the true count, reads the
    // bs x bs tile of dense ([max_block_rows * bs, width], checked, width <=
    // per_row * bs) at block row row_indices[b] < max_block_rows, block
    // column column_indices[b] % per_row, columns below width only.
    unsafe { launch.launch(launch_1d(topo.max_blocks, THREADS, 0)) }?;
    DeviceBlockSparse::new(topo, data)
}

/// The map: `[tokens * k, out]` in (token, slot) order, row `t * k + s` =
/// `x[t] · W[e(t, s)]`; `x` is `[tokens, in]`, `w` the stacked weights
/// `[experts * padded_in, out]` (see [`upload_expert_weights`]).
///
/// Errors: [`Error::ShapeMismatch`] for operands that do not fit the plan,
/// and those of the gather, DSD and scatter.
pub fn map<T: MmaElement>(
    backend: &CudaBackend,
    plan: &DeviceExpertPlan,
    x: &DeviceTensor<T>,
    w: &DeviceTensor<T>,
) -> Result<DeviceTensor<T>> {
    const OP: &str = "expert_map::map";
    let width = match *x.shape() {
        [t, w] if t == plan.tokens => w,
        ref other => {
            return Err(Error::ShapeMismatch {
                op: OP,
                message: format!("x must be [tokens = {}, in], found {other:?}", plan.tokens),
            })
        }
    };
    check_weights(OP, plan, w.shape(), width)?;
    let gathered = padded_gather(
        backend,
        x,
        &plan.indices,
        &plan.bins,
        &plan.padded_bins,
        None,
        plan.top_k,
    )?;
    let blocks = to_blocks(backend, plan, &gathered, width)?;
    let y = dsd(backend, blocks.view(), w)?;
    padded_scatter(
        backend,
        &y,
        &plan.indices,
        &plan.bins,
        &plan.padded_bins,
        None,
        1,
    )
}

/// The reduce: `[tokens, out]`, row `t` = `Σ_s gates[t, s] · h[t * k + s] ·
/// V[e(t, s)]`; `h` is `[tokens * k, in]` in (token, slot) order, `v` the
/// stacked weights `[experts * padded_in, out]` (see
/// [`upload_expert_weights`]), `gates` `[tokens, k]` f32.
///
/// Errors: [`Error::ShapeMismatch`] for operands that do not fit the plan,
/// and those of the gather, DSD and scatter.
pub fn reduce<T: MmaElement>(
    backend: &CudaBackend,
    plan: &DeviceExpertPlan,
    h: &DeviceTensor<T>,
    v: &DeviceTensor<T>,
    gates: &DeviceTensor<f32>,
) -> Result<DeviceTensor<T>> {
    const OP: &str = "expert_map::reduce";
    let n = plan.tokens * plan.top_k;
    let width = match *h.shape() {
        [rows, w] if rows == n => w,
        ref other => {
            return Err(Error::ShapeMismatch {
                op: OP,
                message: format!("h must be [tokens * k = {n}, in], found {other:?}"),
            })
        }
    };
    check_weights(OP, plan, v.shape(), width)?;
    if gates.shape() != [plan.tokens, plan.top_k] {
        return Err(Error::ShapeMismatch {
            op: OP,
            message: format!(
                "gates must be [tokens, k] = [{}, {}], found {:?}",
                plan.tokens,
                plan.top_k,
                gates.shape()
            ),
        });
    }
    let gathered = padded_gather(
        backend,
        h,
        &plan.indices,
        &plan.bins,
        &plan.padded_bins,
        None,
        1,
    )?;
    let blocks = to_blocks(backend, plan, &gathered, width)?;
    let y = dsd(backend, blocks.view(), v)?;
    padded_scatter(
        backend,
        &y,
        &plan.indices,
        &plan.bins,
        &plan.padded_bins,
        Some(gates),
        plan.top_k,
    )
}
