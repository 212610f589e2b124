//! Permutation on the device: the stable sort of assignments by expert, the
//! (padded) bins, and the padded gather / scatter between token order and the
//! padded expert-sorted layout. Device counterparts of
//! [`crate::reference::permute`], same names and argument order.
//!
//! Nothing here synchronises the host. Values that only the device knows
//! (expert ids, counts, bins) are not checked: the kernels stay in bounds
//! whatever they hold, and give the reference's result when they are
//! consistent (as produced by [`crate::cuda::routing::route`],
//! [`crate::cuda::histogram::histogram`], [`sort_by_expert`],
//! [`inclusive_cumsum`] and [`padded_bins`]).

use cudarc::driver::{CudaSlice, LaunchArgs, PushKernelArg};

use super::kernels::{launch_1d, PERMUTE};
use super::topology::check_block_size;
use super::{max_padded_tokens, CudaBackend, DeviceElement, DeviceTensor};
use crate::checks::{check_nonempty, check_top_k};
use crate::dtype::Element;
use crate::error::{check_i32, product, Error, Result};
use crate::topology::DEFAULT_BLOCK_SIZE;

/// Most experts the permutation kernels take: the sort keeps 8 warps x
/// (experts + 1) i32 counters in 48 KiB of shared memory.
pub const MAX_PERMUTE_EXPERTS: usize = 1535;

/// Assignments per sort CTA (`kSortChunk` in cuda/permute.cu).
const SORT_CHUNK: usize = 4096;
/// Warps per sort CTA (`kSortWarps` in cuda/permute.cu).
const SORT_WARPS: usize = 8;
/// Elements per tile of the single-CTA scan (1024 threads x 4).
const SCAN_TILE: usize = 4096;
/// Rows (or tokens, or assignments) per 256-thread warp-per-row CTA.
const ROWS_PER_CTA: usize = 8;
/// Largest column step of the warp-per-row kernels (32 lanes x 16 bytes of
/// 2-byte elements); `hidden + HIDDEN_STEP` must fit i32.
const HIDDEN_STEP: usize = 256;

/// A null device pointer, for an absent optional operand.
const NULL: u64 = 0;

fn mismatch(op: &'static str, message: String) -> Error {
    Error::ShapeMismatch { op, message }
}

fn check_experts(op: &'static str, num_experts: usize) -> Result<()> {
    check_nonempty(op, "the number of experts", num_experts)?;
    if num_experts > MAX_PERMUTE_EXPERTS {
        return Err(Error::InvalidConfig(format!(
            "`{op}` on the GPU supports at most {MAX_PERMUTE_EXPERTS} experts, found {num_experts}"
        )));
    }
    Ok(())
}

/// Checks `[tokens, top_k]` expert ids for the sort; returns the number of
/// assignments.
fn check_sort_shapes(expert_ids: &[usize], num_experts: usize) -> Result<usize> {
    const OP: &str = "sort_by_expert";
    let [tokens, top_k] = expert_ids[..] else {
        return Err(mismatch(
            OP,
            format!("expert ids must be [tokens, top_k], found {expert_ids:?}"),
        ));
    };
    check_nonempty(OP, "the number of tokens", tokens)?;
    check_experts(OP, num_experts)?;
    check_top_k(top_k, num_experts)?;
    let n = product(&[tokens, top_k]);
    check_i32("tokens x top_k (+ one sort chunk)", n + SORT_CHUNK as u128)?;
    let chunks = (n as usize).div_ceil(SORT_CHUNK);
    check_i32(
        "sort counters ((experts + 1) x chunks)",
        product(&[num_experts + 1, chunks]),
    )?;
    Ok(n as usize)
}

/// Checks a 1-D `[experts]` count or bin vector; returns its length.
fn check_counts_shape(op: &'static str, counts: &[usize]) -> Result<usize> {
    let [n] = counts[..] else {
        return Err(mismatch(
            op,
            format!("counts must be 1-D [experts], found {counts:?}"),
        ));
    };
    check_experts(op, n)?;
    Ok(n)
}

/// The sizes of a padded layout `(indices, bins, padded_bins, top_k)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    tokens: usize,
    top_k: usize,
    experts: usize,
    /// Assignments, `tokens * top_k`.
    n: usize,
}

/// Checks the layout arrays' shapes (their values live on the device).
fn check_layout(
    op: &'static str,
    indices: &[usize],
    bins: &[usize],
    padded_bins: &[usize],
    top_k: usize,
) -> Result<Layout> {
    let [n] = indices[..] else {
        return Err(mismatch(
            op,
            format!("indices must be 1-D, found {indices:?}"),
        ));
    };
    let [experts] = bins[..] else {
        return Err(mismatch(op, format!("bins must be 1-D, found {bins:?}")));
    };
    if padded_bins != [experts] {
        return Err(mismatch(
            op,
            format!("bins has {experts} experts, padded_bins has shape {padded_bins:?}"),
        ));
    }
    check_nonempty(op, "the number of assignments", n)?;
    check_experts(op, experts)?;
    check_top_k(top_k, experts)?;
    // The positions kernel's thread index runs up to one CTA past n.
    check_i32("tokens x top_k (+ one CTA)", (n + 256) as u128)?;
    if n % top_k != 0 {
        return Err(mismatch(
            op,
            format!("{n} sorted assignments is not a multiple of top_k = {top_k}"),
        ));
    }
    Ok(Layout {
        tokens: n / top_k,
        top_k,
        experts,
        n,
    })
}

/// [`check_layout`] of the device layout tensors' shapes.
fn device_layout(
    op: &'static str,
    indices: &DeviceTensor<i32>,
    bins: &DeviceTensor<i32>,
    padded_bins: &DeviceTensor<i32>,
    top_k: usize,
) -> Result<Layout> {
    check_layout(
        op,
        indices.shape(),
        bins.shape(),
        padded_bins.shape(),
        top_k,
    )
}

/// Pushes the optional `[tokens, top_k]` weights, or a null pointer.
fn push_weights<'a>(launch: &mut LaunchArgs<'a>, weights: Option<&'a DeviceTensor<f32>>) {
    match weights {
        Some(w) => launch.arg(w.slice()),
        None => launch.arg(&NULL),
    };
}

impl Layout {
    /// Checks a `[tokens, h]` operand; returns `h`.
    fn check_tokens(&self, op: &'static str, what: &str, shape: &[usize]) -> Result<usize> {
        match shape[..] {
            [rows, h] if rows == self.tokens => check_hidden(op, h),
            _ => Err(mismatch(
                op,
                format!(
                    "{what} must be [tokens, hidden] with tokens = {} ({} assignments / top_k {}), found {shape:?}",
                    self.tokens, self.n, self.top_k
                ),
            )),
        }
    }

    /// Checks a `[rows, h]` padded operand with at least one row; returns
    /// `(rows, h)`. Rows past the device's padded count are ignored.
    fn check_padded(&self, op: &'static str, shape: &[usize]) -> Result<(usize, usize)> {
        match shape[..] {
            [rows, h] if rows > 0 => Ok((rows, check_hidden(op, h)?)),
            _ => Err(mismatch(
                op,
                format!("the padded operand must be [rows >= 1, hidden], found {shape:?}"),
            )),
        }
    }

    /// Checks optional `[tokens, top_k]` weights.
    fn check_weights(&self, op: &'static str, weights: Option<&[usize]>) -> Result<()> {
        match weights {
            Some(w) if w != [self.tokens, self.top_k] => Err(mismatch(
                op,
                format!(
                    "weights must be [tokens, top_k] = [{}, {}], found {w:?}",
                    self.tokens, self.top_k
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Rows of the GPU's padded layout: the bound `max_padded_tokens` for the
    /// CUDA block size.
    fn padded_rows(&self) -> Result<usize> {
        max_padded_tokens(self.tokens, self.top_k, self.experts, DEFAULT_BLOCK_SIZE)
    }
}

fn check_hidden(op: &'static str, h: usize) -> Result<usize> {
    check_nonempty(op, "the hidden size", h)?;
    check_i32("hidden size (+ one column step)", (h + HIDDEN_STEP) as u128)?;
    Ok(h)
}

fn check_out_shape(op: &'static str, found: &[usize], expected: &[usize]) -> Result<()> {
    if found != expected {
        return Err(mismatch(
            op,
            format!("the output must be {expected:?}, found {found:?}"),
        ));
    }
    Ok(())
}

/// Name of a per-dtype kernel, 16-byte vectorised when `hidden` allows.
fn dtype_kernel<T: DeviceElement>(stem: &str, hidden: usize) -> String {
    let lanes = 16 / std::mem::size_of::<T>();
    let access = if hidden.is_multiple_of(lanes) {
        "vec"
    } else {
        "scalar"
    };
    format!("{stem}_{}_{access}", T::SUFFIX)
}

/// Launches the single-CTA scan: `out[i]` = (exclusive or inclusive) prefix
/// sum of `input[..n]` rounded up to multiples of `round_to`.
fn scan(
    backend: &CudaBackend,
    input: &CudaSlice<i32>,
    n: usize,
    round_to: usize,
    exclusive: bool,
    out: &mut CudaSlice<i32>,
) -> Result<()> {
    check_i32("scan length (+ one tile)", (n + SCAN_TILE) as u128)?;
    check_i32("block size", round_to as u128)?;
    if input.len() < n || out.len() < n || round_to == 0 {
        return Err(Error::InvalidConfig(format!(
            "scan of {n} values (rounded to {round_to}) on buffers of {} and {}",
            input.len(),
            out.len()
        )));
    }
    let func = backend.function(PERMUTE, "dl_scan_i32")?;
    let (n_i32, r_i32, ex_i32) = (n as i32, round_to as i32, i32::from(exclusive));
    let mut launch = backend.stream().launch_builder(&func);
    launch
        .arg(input)
        .arg(&n_i32)
        .arg(&r_i32)
        .arg(&ex_i32)
        .arg(out);
    // SAFETY: dl_scan_i32(const i32* in, i32 n, i32 round_to, i32 exclusive,
    // i32* out) reads in[0..n) and writes out[0..n); both buffers hold at least
    // n values (checked above), n + 4096 fits i32 and round_to >= 1. One CTA
    // of 1024 threads, static shared memory only.
    unsafe { launch.launch(launch_1d(1, 1024, 0)) }?;
    Ok(())
}

/// Stable sort of the flat assignments `a = t * top_k + j` by expert id:
/// returns `(indices, bin_ids)`, both `[tokens * top_k]` i32; see
/// [`crate::reference::permute::sort_by_expert`].
///
/// Ids outside `0..num_experts` (only possible for ids uploaded from the host)
/// sort after all others with bin id -1; the reference rejects them.
///
/// Errors: [`Error::ShapeMismatch`] unless ids are 2-D, [`Error::Empty`],
/// [`Error::InvalidTopK`], [`Error::InvalidConfig`] past
/// [`MAX_PERMUTE_EXPERTS`], [`Error::IndexOverflow`].
pub fn sort_by_expert(
    backend: &CudaBackend,
    expert_ids: &DeviceTensor<i32>,
    num_experts: usize,
) -> Result<(DeviceTensor<i32>, DeviceTensor<i32>)> {
    let n = check_sort_shapes(expert_ids.shape(), num_experts)?;
    let mut indices = DeviceTensor::zeros(backend, &[n])?;
    let mut bin_ids = DeviceTensor::zeros(backend, &[n])?;
    sort_by_expert_into(backend, expert_ids, num_experts, &mut indices, &mut bin_ids)?;
    Ok((indices, bin_ids))
}

/// [`sort_by_expert`] into caller-provided `[tokens * top_k]` outputs.
pub fn sort_by_expert_into(
    backend: &CudaBackend,
    expert_ids: &DeviceTensor<i32>,
    num_experts: usize,
    indices: &mut DeviceTensor<i32>,
    bin_ids: &mut DeviceTensor<i32>,
) -> Result<()> {
    const OP: &str = "sort_by_expert";
    let n = check_sort_shapes(expert_ids.shape(), num_experts)?;
    check_out_shape(OP, indices.shape(), &[n])?;
    check_out_shape(OP, bin_ids.shape(), &[n])?;
    let chunks = n.div_ceil(SORT_CHUNK);
    let buckets = num_experts + 1;
    let mut counts = DeviceTensor::<i32>::zeros(backend, &[buckets * chunks])?;
    let mut offsets = DeviceTensor::<i32>::zeros(backend, &[buckets * chunks])?;
    let (n_i32, e_i32, c_i32) = (n as i32, num_experts as i32, chunks as i32);

    let count = backend.function(PERMUTE, "dl_sort_count")?;
    let mut launch = backend.stream().launch_builder(&count);
    launch
        .arg(expert_ids.slice())
        .arg(&n_i32)
        .arg(&e_i32)
        .arg(&c_i32)
        .arg(counts.slice_mut());
    // SAFETY: dl_sort_count(const i32* ids, i32 n, i32 E, i32 chunks,
    // i32* counts) reads ids[0..n) (the tensor holds n values) and writes
    // counts[b * chunks + c] for b <= E, c < chunks: (E + 1) * chunks values,
    // allocated above. n + 4096 and (E + 1) * chunks fit i32 (checked);
    // dynamic shared memory (E + 1) * 4 <= 6144 bytes is given.
    unsafe { launch.launch(launch_1d(chunks, 256, buckets * 4)) }?;

    scan(
        backend,
        counts.slice(),
        buckets * chunks,
        1,
        true,
        offsets.slice_mut(),
    )?;

    let scatter = backend.function(PERMUTE, "dl_sort_scatter")?;
    let mut launch = backend.stream().launch_builder(&scatter);
    launch
        .arg(expert_ids.slice())
        .arg(&n_i32)
        .arg(&e_i32)
        .arg(&c_i32)
        .arg(offsets.slice())
        .arg(indices.slice_mut())
        .arg(bin_ids.slice_mut());
    // SAFETY: dl_sort_scatter(const i32* ids, i32 n, i32 E, i32 chunks,
    // const i32* offsets, i32* indices, i32* bin_ids) reads ids[0..n) and
    // offsets[0..(E + 1) * chunks) (both allocated with those lengths) and
    // writes indices / bin_ids at positions offsets[b, c] + rank < n: offsets
    // is the exclusive scan of the counts of the same ids, so the positions
    // form a permutation of 0..n; both outputs hold n values (checked).
    // Dynamic shared memory 8 * (E + 1) * 4 <= 48 KiB (E <= 1535).
    unsafe { launch.launch(launch_1d(chunks, 256, SORT_WARPS * buckets * 4)) }?;
    Ok(())
}

/// Inclusive cumulative sum of `[experts]` counts (the bins); see
/// [`crate::reference::permute::inclusive_cumsum`]. Counts must be
/// non-negative with an i32 total (device values are not checked; sums wrap).
///
/// Errors: [`Error::ShapeMismatch`] unless 1-D, [`Error::Empty`],
/// [`Error::InvalidConfig`] past [`MAX_PERMUTE_EXPERTS`].
pub fn inclusive_cumsum(
    backend: &CudaBackend,
    counts: &DeviceTensor<i32>,
) -> Result<DeviceTensor<i32>> {
    let n = check_counts_shape("inclusive_cumsum", counts.shape())?;
    let mut out = DeviceTensor::zeros(backend, &[n])?;
    inclusive_cumsum_into(backend, counts, &mut out)?;
    Ok(out)
}

/// [`inclusive_cumsum`] into a caller-provided `[experts]` output.
pub fn inclusive_cumsum_into(
    backend: &CudaBackend,
    counts: &DeviceTensor<i32>,
    out: &mut DeviceTensor<i32>,
) -> Result<()> {
    const OP: &str = "inclusive_cumsum";
    let n = check_counts_shape(OP, counts.shape())?;
    check_out_shape(OP, out.shape(), &[n])?;
    scan(backend, counts.slice(), n, 1, false, out.slice_mut())
}

/// Inclusive cumulative sum of the `[experts]` token counts each rounded up
/// to `block_size`; see [`crate::reference::permute::padded_bins`]. The GPU
/// layout is sized for the CUDA block size, so `block_size` must be one of
/// [`crate::cuda::CUDA_BLOCK_SIZES`]. Counts must be non-negative with an
/// i32 padded total (true for counts of a batch that
/// [`crate::cuda::max_padded_tokens`] accepts).
///
/// Errors: as [`inclusive_cumsum`], plus [`Error::UnsupportedBlockSize`].
pub fn padded_bins(
    backend: &CudaBackend,
    tokens_per_expert: &DeviceTensor<i32>,
    block_size: usize,
) -> Result<DeviceTensor<i32>> {
    check_block_size(block_size)?;
    let n = check_counts_shape("padded_bins", tokens_per_expert.shape())?;
    let mut out = DeviceTensor::zeros(backend, &[n])?;
    padded_bins_into(backend, tokens_per_expert, block_size, &mut out)?;
    Ok(out)
}

/// [`padded_bins`] into a caller-provided `[experts]` output.
pub fn padded_bins_into(
    backend: &CudaBackend,
    tokens_per_expert: &DeviceTensor<i32>,
    block_size: usize,
    out: &mut DeviceTensor<i32>,
) -> Result<()> {
    const OP: &str = "padded_bins";
    check_block_size(block_size)?;
    let n = check_counts_shape(OP, tokens_per_expert.shape())?;
    check_out_shape(OP, out.shape(), &[n])?;
    scan(
        backend,
        tokens_per_expert.slice(),
        n,
        block_size,
        false,
        out.slice_mut(),
    )
}

/// The padded row of every assignment: `[tokens * top_k]` i32, -1 for an
/// assignment that no bin holds (an expert id outside `0..experts`, which
/// sorts past the last bin), so that the scatter and the weight gradient
/// skip it instead of reading padded row 0.
fn positions(
    backend: &CudaBackend,
    indices: &DeviceTensor<i32>,
    bins: &DeviceTensor<i32>,
    padded_bins: &DeviceTensor<i32>,
    layout: &Layout,
) -> Result<DeviceTensor<i32>> {
    let mut positions = DeviceTensor::minus_ones(backend, &[layout.n])?;
    let func = backend.function(PERMUTE, "dl_padded_positions")?;
    let (n_i32, e_i32) = (layout.n as i32, layout.experts as i32);
    let mut launch = backend.stream().launch_builder(&func);
    launch
        .arg(indices.slice())
        .arg(bins.slice())
        .arg(padded_bins.slice())
        .arg(&n_i32)
        .arg(&e_i32)
        .arg(positions.slice_mut());
    // SAFETY: dl_padded_positions(const i32* indices, const i32* bins,
    // const i32* padded_bins, i32 n, i32 E, i32* positions) reads indices[0..n),
    // bins[0..E), padded_bins[0..E) (shapes checked by `check_layout`) and
    // writes positions[a] only for 0 <= a < n (n values allocated). Dynamic
    // shared memory 2 * E * 4 <= 12 KiB; grid ceil(n / 256) x 256 threads.
    unsafe {
        launch.launch(launch_1d(
            layout.n.div_ceil(256),
            256,
            2 * layout.experts * 4,
        ))
    }?;
    Ok(positions)
}

/// Gathers token rows into the padded expert-sorted layout; see
/// [`crate::reference::permute::padded_gather`]. Returns
/// `[max_padded_tokens(tokens, top_k, experts, 128), h]`: rows past the true
/// padded count are zero, as are the padding rows inside each expert's group.
/// `weights` (`[tokens, top_k]` f32) scale each gathered row.
///
/// Errors: [`Error::ShapeMismatch`] for inconsistent shapes, [`Error::Empty`],
/// [`Error::InvalidTopK`], [`Error::InvalidConfig`] past
/// [`MAX_PERMUTE_EXPERTS`], [`Error::IndexOverflow`].
pub fn padded_gather<T: DeviceElement + Element>(
    backend: &CudaBackend,
    x: &DeviceTensor<T>,
    indices: &DeviceTensor<i32>,
    bins: &DeviceTensor<i32>,
    padded_bins: &DeviceTensor<i32>,
    weights: Option<&DeviceTensor<f32>>,
    top_k: usize,
) -> Result<DeviceTensor<T>> {
    const OP: &str = "padded_gather";
    let layout = device_layout(OP, indices, bins, padded_bins, top_k)?;
    let h = layout.check_tokens(OP, "x", x.shape())?;
    let mut out = DeviceTensor::zeros(backend, &[layout.padded_rows()?, h])?;
    padded_gather_into(
        backend,
        x,
        indices,
        bins,
        padded_bins,
        weights,
        top_k,
        &mut out,
    )?;
    Ok(out)
}

/// [`padded_gather`] into a caller-provided
/// `[max_padded_tokens(tokens, top_k, experts, 128), h]` output.
#[allow(clippy::too_many_arguments)]
pub fn padded_gather_into<T: DeviceElement + Element>(
    backend: &CudaBackend,
    x: &DeviceTensor<T>,
    indices: &DeviceTensor<i32>,
    bins: &DeviceTensor<i32>,
    padded_bins: &DeviceTensor<i32>,
    weights: Option<&DeviceTensor<f32>>,
    top_k: usize,
    out: &mut DeviceTensor<T>,
) -> Result<()> {
    const OP: &str = "padded_gather";
    let layout = device_layout(OP, indices, bins, padded_bins, top_k)?;
    let h = layout.check_tokens(OP, "x", x.shape())?;
    layout.check_weights(OP, weights.map(|w| w.shape()))?;
    let rows = layout.padded_rows()?;
    check_i32("padded tokens x hidden", product(&[rows, h]))?;
    // The warp-per-row index runs up to one CTA (8 rows) past the last row.
    check_i32("padded tokens (+ one CTA)", (rows + ROWS_PER_CTA) as u128)?;
    check_out_shape(OP, out.shape(), &[rows, h])?;
    let func = backend.function(PERMUTE, &dtype_kernel::<T>("dl_padded_gather", h))?;
    let (t_i32, h_i32, k_i32, e_i32, r_i32) = (
        layout.tokens as i32,
        h as i32,
        top_k as i32,
        layout.experts as i32,
        rows as i32,
    );
    let mut launch = backend.stream().launch_builder(&func);
    launch
        .arg(x.slice())
        .arg(indices.slice())
        .arg(bins.slice())
        .arg(padded_bins.slice());
    push_weights(&mut launch, weights);
    launch
        .arg(&t_i32)
        .arg(&h_i32)
        .arg(&k_i32)
        .arg(&e_i32)
        .arg(&r_i32)
        .arg(out.slice_mut());
    // SAFETY: dl_padded_gather_<T>_<vec|scalar>(const T* x, const i32* indices,
    // const i32* bins, const i32* padded_bins, const float* weights (or null),
    // i32 tokens, i32 hidden, i32 k, i32 E, i32 out_rows, T* out) reads
    // x[0..tokens*hidden), indices[0..tokens*k), bins / padded_bins [0..E) and
    // weights[0..tokens*k), and writes out[0..out_rows*hidden): every shape was
    // checked above, device indices are range-checked in the kernel before
    // use. The vector variant is chosen only when hidden % (16 / sizeof(T))
    // == 0, so with 256-byte aligned allocations every 16-byte access is
    // aligned. Grid ceil(out_rows / 8) x 256 threads, no shared memory.
    unsafe { launch.launch(launch_1d(rows.div_ceil(ROWS_PER_CTA), 256, 0)) }?;
    Ok(())
}

/// Scatters padded expert-sorted rows back to token order; see
/// [`crate::reference::permute::padded_scatter`]. `y` is `[P, h]` (any
/// `P >= 1`; rows at or past `P` are treated as absent, so pass at least the
/// true padded count, e.g. the `max_padded_tokens` rows of
/// [`padded_gather`]). Returns `[tokens, h]`; each token's k rows are summed
/// in slot order in f32 (deterministic). Computes the inverse map
/// assignment -> padded row internally (one small extra kernel).
/// Assignments that no bin holds (expert ids outside `0..experts`, uploaded
/// from the host, which [`sort_by_expert`] puts past the last bin)
/// contribute nothing.
///
/// Errors: as [`padded_gather`].
pub fn padded_scatter<T: DeviceElement + Element>(
    backend: &CudaBackend,
    y: &DeviceTensor<T>,
    indices: &DeviceTensor<i32>,
    bins: &DeviceTensor<i32>,
    padded_bins: &DeviceTensor<i32>,
    weights: Option<&DeviceTensor<f32>>,
    top_k: usize,
) -> Result<DeviceTensor<T>> {
    const OP: &str = "padded_scatter";
    let layout = device_layout(OP, indices, bins, padded_bins, top_k)?;
    let (_, h) = layout.check_padded(OP, y.shape())?;
    let mut out = DeviceTensor::zeros(backend, &[layout.tokens, h])?;
    padded_scatter_into(
        backend,
        y,
        indices,
        bins,
        padded_bins,
        weights,
        top_k,
        &mut out,
    )?;
    Ok(out)
}

/// [`padded_scatter`] into a caller-provided `[tokens, h]` output.
#[allow(clippy::too_many_arguments)]
pub fn padded_scatter_into<T: DeviceElement + Element>(
    backend: &CudaBackend,
    y: &DeviceTensor<T>,
    indices: &DeviceTensor<i32>,
    bins: &DeviceTensor<i32>,
    padded_bins: &DeviceTensor<i32>,
    weights: Option<&DeviceTensor<f32>>,
    top_k: usize,
    out: &mut DeviceTensor<T>,
) -> Result<()> {
    const OP: &str = "padded_scatter";
    let layout = device_layout(OP, indices, bins, padded_bins, top_k)?;
    let (y_rows, h) = layout.check_padded(OP, y.shape())?;
    layout.check_weights(OP, weights.map(|w| w.shape()))?;
    check_out_shape(OP, out.shape(), &[layout.tokens, h])?;
    let positions = positions(backend, indices, bins, padded_bins, &layout)?;
    let func = backend.function(PERMUTE, &dtype_kernel::<T>("dl_padded_scatter", h))?;
    let (yr_i32, t_i32, h_i32, k_i32) =
        (y_rows as i32, layout.tokens as i32, h as i32, top_k as i32);
    let mut launch = backend.stream().launch_builder(&func);
    launch.arg(y.slice()).arg(&yr_i32).arg(positions.slice());
    push_weights(&mut launch, weights);
    launch
        .arg(&t_i32)
        .arg(&h_i32)
        .arg(&k_i32)
        .arg(out.slice_mut());
    // SAFETY: dl_padded_scatter_<T>_<vec|scalar>(const T* y, i32 y_rows,
    // const i32* positions, const float* weights (or null), i32 tokens,
    // i32 hidden, i32 k, T* out) reads positions / weights [0..tokens*k)
    // (allocated / checked with that shape), y rows only when
    // 0 <= positions[a] < y_rows (checked in the kernel; y is [y_rows, hidden])
    // and writes out[0..tokens*hidden) (checked). Vector variant only when
    // hidden % (16 / sizeof(T)) == 0 (aligned 16-byte accesses). Grid
    // ceil(tokens / 8) x 256 threads, no shared memory.
    unsafe { launch.launch(launch_1d(layout.tokens.div_ceil(ROWS_PER_CTA), 256, 0)) }?;
    Ok(())
}

/// Gradient of [`padded_scatter`] with respect to its weights:
/// `dw[t, j] = <grad_out[t], y[row(t, j)]>` in f32, `[tokens, top_k]`; see
/// [`crate::reference::permute::padded_scatter_weight_grad`]. An assignment
/// that no bin holds (see [`padded_scatter`]) gets 0.
///
/// Errors: as [`padded_scatter`], plus [`Error::ShapeMismatch`] when the
/// operands' widths differ.
pub fn padded_scatter_weight_grad<T: DeviceElement + Element>(
    backend: &CudaBackend,
    grad_out: &DeviceTensor<T>,
    y: &DeviceTensor<T>,
    indices: &DeviceTensor<i32>,
    bins: &DeviceTensor<i32>,
    padded_bins: &DeviceTensor<i32>,
    top_k: usize,
) -> Result<DeviceTensor<f32>> {
    const OP: &str = "padded_scatter_weight_grad";
    let layout = device_layout(OP, indices, bins, padded_bins, top_k)?;
    let mut dw = DeviceTensor::zeros(backend, &[layout.tokens, top_k])?;
    padded_scatter_weight_grad_into(
        backend,
        grad_out,
        y,
        indices,
        bins,
        padded_bins,
        top_k,
        &mut dw,
    )?;
    Ok(dw)
}

/// [`padded_scatter_weight_grad`] into a caller-provided `[tokens, top_k]`
/// f32 output.
#[allow(clippy::too_many_arguments)]
pub fn padded_scatter_weight_grad_into<T: DeviceElement + Element>(
    backend: &CudaBackend,
    grad_out: &DeviceTensor<T>,
    y: &DeviceTensor<T>,
    indices: &DeviceTensor<i32>,
    bins: &DeviceTensor<i32>,
    padded_bins: &DeviceTensor<i32>,
    top_k: usize,
    dw: &mut DeviceTensor<f32>,
) -> Result<()> {
    const OP: &str = "padded_scatter_weight_grad";
    let layout = device_layout(OP, indices, bins, padded_bins, top_k)?;
    let h = layout.check_tokens(OP, "grad_out", grad_out.shape())?;
    let (y_rows, y_h) = layout.check_padded(OP, y.shape())?;
    if y_h != h {
        return Err(mismatch(
            OP,
            format!("grad_out has {h} columns, y has {y_h}"),
        ));
    }
    check_out_shape(OP, dw.shape(), &[layout.tokens, top_k])?;
    let positions = positions(backend, indices, bins, padded_bins, &layout)?;
    let func = backend.function(PERMUTE, &dtype_kernel::<T>("dl_padded_weight_grad", h))?;
    let (yr_i32, t_i32, h_i32, k_i32) =
        (y_rows as i32, layout.tokens as i32, h as i32, top_k as i32);
    let mut launch = backend.stream().launch_builder(&func);
    launch
        .arg(grad_out.slice())
        .arg(y.slice())
        .arg(&yr_i32)
        .arg(positions.slice())
        .arg(&t_i32)
        .arg(&h_i32)
        .arg(&k_i32)
        .arg(dw.slice_mut());
    // SAFETY: dl_padded_weight_grad_<T>_<vec|scalar>(const T* grad_out,
    // const T* y, i32 y_rows, const i32* positions, i32 tokens, i32 hidden,
    // i32 k, float* dw) reads grad_out[0..tokens*hidden) and positions
    // [0..tokens*k) (shapes checked / allocated), y rows only when
    // 0 <= positions[a] < y_rows (checked in the kernel) and writes
    // dw[0..tokens*k) (checked). Vector variant only when hidden % (16 /
    // sizeof(T)) == 0. Grid ceil(tokens * k / 8) x 256 threads, no shared
    // memory.
    unsafe { launch.launch(launch_1d(layout.n.div_ceil(ROWS_PER_CTA), 256, 0)) }?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sort_shapes_are_checked() {
        assert_eq!(check_sort_shapes(&[10, 3], 8).unwrap(), 30);
        assert!(matches!(
            check_sort_shapes(&[30], 8),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            check_sort_shapes(&[0, 2], 8),
            Err(Error::Empty { .. })
        ));
        assert!(matches!(
            check_sort_shapes(&[4, 2], 0),
            Err(Error::Empty { .. })
        ));
        assert!(matches!(
            check_sort_shapes(&[4, 9], 8),
            Err(Error::InvalidTopK { .. })
        ));
        assert!(matches!(
            check_sort_shapes(&[4, 0], 8),
            Err(Error::InvalidTopK { .. })
        ));
        assert!(matches!(
            check_sort_shapes(&[4, 2], MAX_PERMUTE_EXPERTS + 1),
            Err(Error::InvalidConfig(_))
        ));
        assert!(check_sort_shapes(&[4, 2], MAX_PERMUTE_EXPERTS).is_ok());
        assert!(matches!(
            check_sort_shapes(&[1 << 28, 8], 64),
            Err(Error::IndexOverflow { .. })
        ));
    }

    #[test]
    fn count_shapes_are_checked() {
        assert_eq!(check_counts_shape("t", &[7]).unwrap(), 7);
        assert!(matches!(
            check_counts_shape("t", &[0]),
            Err(Error::Empty { .. })
        ));
        assert!(matches!(
            check_counts_shape("t", &[2, 3]),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            check_counts_shape("t", &[MAX_PERMUTE_EXPERTS + 1]),
            Err(Error::InvalidConfig(_))
        ));
    }

    #[test]
    fn layout_shapes_are_checked() {
        let l = check_layout("t", &[12], &[4], &[4], 3).unwrap();
        assert_eq!(
            l,
            Layout {
                tokens: 4,
                top_k: 3,
                experts: 4,
                n: 12
            }
        );
        let err = |r: Result<Layout>| r.unwrap_err();
        assert!(matches!(
            err(check_layout("t", &[12], &[4], &[5], 3)),
            Error::ShapeMismatch { .. }
        ));
        assert!(matches!(
            err(check_layout("t", &[12, 1], &[4], &[4], 3)),
            Error::ShapeMismatch { .. }
        ));
        assert!(matches!(
            err(check_layout("t", &[12], &[4, 1], &[4], 3)),
            Error::ShapeMismatch { .. }
        ));
        assert!(matches!(
            err(check_layout("t", &[13], &[4], &[4], 3)),
            Error::ShapeMismatch { .. }
        ));
        assert!(matches!(
            err(check_layout("t", &[0], &[4], &[4], 3)),
            Error::Empty { .. }
        ));
        assert!(matches!(
            err(check_layout("t", &[12], &[0], &[0], 3)),
            Error::Empty { .. }
        ));
        assert!(matches!(
            err(check_layout("t", &[12], &[4], &[4], 5)),
            Error::InvalidTopK { .. }
        ));
        assert!(matches!(
            err(check_layout("t", &[12], &[4], &[4], 0)),
            Error::InvalidTopK { .. }
        ));
    }

    #[test]
    fn operand_shapes_are_checked() {
        let l = check_layout("t", &[12], &[4], &[4], 3).unwrap();
        assert_eq!(l.check_tokens("t", "x", &[4, 64]).unwrap(), 64);
        assert!(l.check_tokens("t", "x", &[5, 64]).is_err());
        assert!(l.check_tokens("t", "x", &[4]).is_err());
        assert!(matches!(
            l.check_tokens("t", "x", &[4, 0]),
            Err(Error::Empty { .. })
        ));
        assert!(matches!(
            l.check_tokens("t", "x", &[4, i32::MAX as usize]),
            Err(Error::IndexOverflow { .. })
        ));
        assert_eq!(l.check_padded("t", &[640, 8]).unwrap(), (640, 8));
        assert!(l.check_padded("t", &[0, 8]).is_err());
        assert!(l.check_weights("t", None).is_ok());
        assert!(l.check_weights("t", Some(&[4, 3])).is_ok());
        assert!(l.check_weights("t", Some(&[3, 4])).is_err());
        // 12 assignments + 4 experts x 127 padding rows, rounded down to 128.
        assert_eq!(l.padded_rows().unwrap(), 512);
        assert!(check_out_shape("t", &[4, 2], &[4, 2]).is_ok());
        assert!(check_out_shape("t", &[4, 2], &[2, 4]).is_err());
    }

    #[test]
    fn kernels_vectorise_when_rows_allow() {
        assert_eq!(dtype_kernel::<f32>("k", 12), "k_f32_vec");
        assert_eq!(dtype_kernel::<f32>("k", 10), "k_f32_scalar");
        assert_eq!(dtype_kernel::<half::bf16>("k", 16), "k_bf16_vec");
        assert_eq!(dtype_kernel::<half::f16>("k", 12), "k_f16_scalar");
    }
}
