//! GPU versions of the language-model ops around a dMoE layer, held to the CPU
//! reference in [`crate::reference::lm`] and to the generate example's small
//! ops: embedding lookup, RMSNorm, rotary embedding, KV-cached causal
//! grouped-query attention, the KV-cache write, residual and bias additions,
//! clamping, the dense SiLU gate, the sigmoid-gated scale, the row argmax and
//! a row gather.
//!
//! All tensors are row-major; math is f32 with one rounding per stored value.
//! Shapes and parameters are checked on the host from shapes alone, before any
//! launch; values that live on the device (token ids, positions, row indices)
//! cannot be checked without a host synchronisation, so the kernels give them
//! a defined meaning instead (documented per op). Nothing here synchronises the
//! host.

use std::mem::size_of;

use cudarc::driver::{CudaFunction, LaunchConfig, PushKernelArg};

pub use super::elementwise::add;
use super::elementwise::{self, check_same, SiluForm};
use super::kernels::LM;
use super::{CudaBackend, DeviceElement, DeviceTensor};
use crate::dtype::Element;
use crate::error::{Error, Result};

/// Threads per block of every kernel (`kThreads` in `cuda/lm.cu`).
const THREADS: u32 = 256;
/// Largest head size the attention kernel takes (`kMaxHeadDim`).
const MAX_HEAD_DIM: usize = 256;
/// Largest RMSNorm row handled by one warp; longer rows get a whole block.
const WARP_ROW_MAX: usize = 1024;
/// Dynamic shared memory the RoPE kernel may use (its cos and sin tables).
const ROPE_SMEM_MAX: usize = 48 * 1024;

/// One block of [`THREADS`] threads per unit of work.
fn blocks(n: usize, shared_mem_bytes: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: shared_mem_bytes as u32,
    }
}

/// Elements of `T` in one 16-byte pack.
fn pack<T>() -> usize {
    16 / size_of::<T>()
}

/// Whether rows of `n` elements of `T` are whole 16-byte packs (the kernels'
/// `vec` flag; device buffers are 256-byte aligned).
fn packs_fit<T>(n: usize) -> bool {
    n.is_multiple_of(pack::<T>())
}

/// The 2-D shape `[rows, cols]` of operand `name`, both nonzero.
fn dims2(op: &'static str, name: &'static str, shape: &[usize]) -> Result<(usize, usize)> {
    match *shape {
        [rows, cols] if rows > 0 && cols > 0 => Ok((rows, cols)),
        [_, _] => Err(Error::Empty { op, what: name }),
        _ => Err(Error::ShapeMismatch {
            op,
            message: format!("{name} must be a 2-D tensor, found shape {shape:?}"),
        }),
    }
}

/// The length of 1-D operand `name`, nonzero.
fn dims1(op: &'static str, name: &'static str, shape: &[usize]) -> Result<usize> {
    match *shape {
        [n] if n > 0 => Ok(n),
        [_] => Err(Error::Empty { op, what: name }),
        _ => Err(Error::ShapeMismatch {
            op,
            message: format!("{name} must be a 1-D tensor, found shape {shape:?}"),
        }),
    }
}

fn mismatch(op: &'static str, message: String) -> Error {
    Error::ShapeMismatch { op, message }
}

/// Checks an embedding lookup: `table` `[vocab, hidden]`, `ids` `[n]`.
/// Returns `(vocab, hidden, n)`.
fn check_embedding(table: &[usize], ids: &[usize]) -> Result<(usize, usize, usize)> {
    const OP: &str = "lm::embedding";
    let (vocab, hidden) = dims2(OP, "the table [vocab, hidden]", table)?;
    let n = dims1(OP, "the number of token ids", ids)?;
    Ok((vocab, hidden, n))
}

/// Checks a row gather: `x` `[n, d]`, `rows` `[m]`. Returns `(n, d, m)`.
fn check_take_rows(x: &[usize], rows: &[usize]) -> Result<(usize, usize, usize)> {
    const OP: &str = "lm::take_rows";
    let (n, d) = dims2(OP, "x [rows, cols]", x)?;
    let m = dims1(OP, "the number of rows to take", rows)?;
    Ok((n, d, m))
}

/// Checks an RMSNorm or LayerNorm (`op`): `x` `[rows, dim]`, `weight`
/// `[dim]`, `eps` finite and `>= 0`. Returns `(rows, dim)`.
fn check_norm(op: &'static str, x: &[usize], weight: &[usize], eps: f32) -> Result<(usize, usize)> {
    let (rows, dim) = dims2(op, "x [rows, dim]", x)?;
    if weight != [dim] {
        return Err(mismatch(
            op,
            format!("weight must be [{dim}] (the columns of x), found {weight:?}"),
        ));
    }
    if !(eps >= 0.0 && eps.is_finite()) {
        return Err(Error::InvalidConfig(format!(
            "{op} eps must be finite and >= 0, found {eps}"
        )));
    }
    Ok((rows, dim))
}

/// The launch of a row norm (`dl_lm_rms_norm_T`, `dl_lm_layer_norm_T`) over
/// `[rows, dim]`: a warp a row, several rows a block, up to [`WARP_ROW_MAX`]
/// columns, else a block a row; 16-byte packs when `dim` holds whole ones.
struct NormLaunch {
    rows: i32,
    dim: i32,
    rows_per_block: i32,
    vec: i32,
    config: LaunchConfig,
}

impl NormLaunch {
    /// The launch for `[rows, dim]` of `T` (sizes checked by [`check_norm`]).
    fn new<T>(rows: usize, dim: usize) -> Self {
        let rows_per_block = if dim <= WARP_ROW_MAX {
            THREADS as usize / 32
        } else {
            1
        };
        NormLaunch {
            rows: rows as i32,
            dim: dim as i32,
            rows_per_block: rows_per_block as i32,
            vec: packs_fit::<T>(dim) as i32,
            config: blocks(rows.div_ceil(rows_per_block), 0),
        }
    }
}

/// Checks a RoPE: `x` `[rows, heads * head_dim]`, `positions` `[rows]`,
/// `head_dim` even, positive and small enough for the cos/sin tables, `theta`
/// finite and positive. Returns `(rows, cols)`.
fn check_rope(
    x: &[usize],
    positions: &[usize],
    head_dim: usize,
    theta: f32,
) -> Result<(usize, usize)> {
    const OP: &str = "lm::rope";
    if head_dim == 0 || !head_dim.is_multiple_of(2) {
        return Err(Error::InvalidConfig(format!(
            "rope head_dim must be even and positive, found {head_dim}"
        )));
    }
    if head_dim * size_of::<f32>() > ROPE_SMEM_MAX {
        return Err(Error::InvalidConfig(format!(
            "rope head_dim = {head_dim} exceeds the GPU kernel's limit of {}",
            ROPE_SMEM_MAX / size_of::<f32>()
        )));
    }
    if !(theta > 0.0 && theta.is_finite()) {
        return Err(Error::InvalidConfig(format!(
            "rope theta must be finite and positive, found {theta}"
        )));
    }
    let (rows, cols) = dims2(OP, "x [tokens, heads * head_dim]", x)?;
    if cols % head_dim != 0 {
        return Err(mismatch(
            OP,
            format!("x has {cols} columns, not a multiple of head_dim = {head_dim}"),
        ));
    }
    if positions != [rows] {
        return Err(mismatch(
            OP,
            format!("positions must be [{rows}] (one per row of x), found {positions:?}"),
        ));
    }
    Ok((rows, cols))
}

/// The per-sequence sizes of a KV-cached attention call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AttentionDims {
    /// Queries per sequence.
    tq: usize,
    /// Cache rows per sequence.
    tmax: usize,
}

/// Checks a KV-cached attention call (see [`attention_cached`]).
#[allow(clippy::too_many_arguments)]
fn check_attention(
    q: &[usize],
    k_cache: &[usize],
    v_cache: &[usize],
    kv_len: usize,
    batch: usize,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
) -> Result<AttentionDims> {
    const OP: &str = "lm::attention_cached";
    for (what, n) in [
        ("the batch", batch),
        ("num_heads", num_heads),
        ("num_kv_heads", num_kv_heads),
        ("head_dim", head_dim),
        ("kv_len", kv_len),
    ] {
        if n == 0 {
            return Err(Error::Empty { op: OP, what });
        }
    }
    if !num_heads.is_multiple_of(num_kv_heads) {
        return Err(Error::InvalidConfig(format!(
            "num_kv_heads = {num_kv_heads} must divide num_heads = {num_heads}"
        )));
    }
    if head_dim > MAX_HEAD_DIM {
        return Err(Error::InvalidConfig(format!(
            "head_dim = {head_dim} exceeds the GPU attention kernel's limit of {MAX_HEAD_DIM}"
        )));
    }
    let (q_rows, q_cols) = dims2(OP, "q [batch * tq, num_heads * head_dim]", q)?;
    let (k_rows, k_cols) = dims2(
        OP,
        "k_cache [batch * tmax, num_kv_heads * head_dim]",
        k_cache,
    )?;
    if q_cols != num_heads * head_dim {
        return Err(mismatch(
            OP,
            format!(
                "q must have num_heads * head_dim = {} columns, found {q_cols}",
                num_heads * head_dim
            ),
        ));
    }
    if k_cols != num_kv_heads * head_dim {
        return Err(mismatch(
            OP,
            format!(
                "k_cache must have num_kv_heads * head_dim = {} columns, found {k_cols}",
                num_kv_heads * head_dim
            ),
        ));
    }
    if v_cache != k_cache {
        return Err(mismatch(
            OP,
            format!("v_cache must have the shape of k_cache {k_cache:?}, found {v_cache:?}"),
        ));
    }
    if q_rows % batch != 0 || k_rows % batch != 0 {
        return Err(mismatch(
            OP,
            format!(
                "q rows ({q_rows}) and cache rows ({k_rows}) must be multiples of the batch {batch}"
            ),
        ));
    }
    let (tq, tmax) = (q_rows / batch, k_rows / batch);
    if kv_len > tmax || tq > kv_len {
        return Err(mismatch(
            OP,
            format!(
                "each sequence needs tq <= kv_len <= tmax, found tq = {tq}, kv_len = {kv_len}, tmax = {tmax}"
            ),
        ));
    }
    Ok(AttentionDims { tq, tmax })
}

/// Checks a KV-cache write: `cache` `[batch * tmax, cols]`, `new`
/// `[batch * tq, cols]`, `start + tq <= tmax`. Returns `(tq, tmax, cols)`.
fn check_write_kv(
    cache: &[usize],
    new: &[usize],
    start: usize,
    batch: usize,
) -> Result<(usize, usize, usize)> {
    const OP: &str = "lm::write_kv";
    if batch == 0 {
        return Err(Error::Empty {
            op: OP,
            what: "the batch",
        });
    }
    let (c_rows, cols) = dims2(OP, "cache [batch * tmax, cols]", cache)?;
    let (n_rows, n_cols) = dims2(OP, "new [batch * tq, cols]", new)?;
    if n_cols != cols {
        return Err(mismatch(
            OP,
            format!("new must have the cache's {cols} columns, found {n_cols}"),
        ));
    }
    if c_rows % batch != 0 || n_rows % batch != 0 {
        return Err(mismatch(
            OP,
            format!(
                "cache rows ({c_rows}) and new rows ({n_rows}) must be multiples of the batch {batch}"
            ),
        ));
    }
    let (tq, tmax) = (n_rows / batch, c_rows / batch);
    if start + tq > tmax {
        return Err(mismatch(
            OP,
            format!(
                "rows {start}..{} do not fit a cache of {tmax} rows per sequence: grow the cache or shorten the input",
                start + tq
            ),
        ));
    }
    Ok((tq, tmax, cols))
}

/// Checks a bias addition: `x` `[rows, d]`, `bias` `[d]`. Returns `(rows, d)`.
fn check_add_bias(x: &[usize], bias: &[usize]) -> Result<(usize, usize)> {
    const OP: &str = "lm::add_bias";
    let (rows, d) = dims2(OP, "x [rows, cols]", x)?;
    if bias != [d] {
        return Err(mismatch(
            OP,
            format!("bias must be [{d}] (the columns of x), found {bias:?}"),
        ));
    }
    Ok((rows, d))
}

/// Checks a clamp: a nonempty operand and a limit `>= 0` that is not NaN
/// (infinity clamps nothing). Returns the length.
fn check_clamp(x: &[usize], limit: f32) -> Result<usize> {
    const OP: &str = "lm::clamp";
    if limit.is_nan() || limit < 0.0 {
        return Err(Error::InvalidConfig(format!(
            "clamp limit must be >= 0 and not NaN, found {limit}"
        )));
    }
    check_same(OP, x, x)
}

/// Checks a sigmoid-gated scale: `x` `[rows, d]`, `gate_logits` `[rows, 1]`
/// (or `[rows]`). Returns `(rows, d)`.
fn check_sigmoid_scale(x: &[usize], gate: &[usize]) -> Result<(usize, usize)> {
    const OP: &str = "lm::sigmoid_scale";
    let (rows, d) = dims2(OP, "x [rows, cols]", x)?;
    if gate != [rows, 1] && gate != [rows] {
        return Err(mismatch(
            OP,
            format!("gate_logits must be [{rows}, 1] (one logit per row of x), found {gate:?}"),
        ));
    }
    Ok((rows, d))
}

/// `table[ids[i]]` for each id: the token embeddings, `[n, hidden]` from a
/// `[vocab, hidden]` table and `[n]` ids.
///
/// The ids live on the device, so they are not checked: an id outside
/// `0..vocab` yields a row of zeros (the CPU reference returns
/// [`Error::InvalidConfig`]; check ids on the host before uploading them).
///
/// Errors: [`Error::ShapeMismatch`] for a table that is not 2-D or ids that
/// are not 1-D, [`Error::Empty`] for an empty table or no ids.
pub fn embedding<T: DeviceElement + Element>(
    backend: &CudaBackend,
    table: &DeviceTensor<T>,
    ids: &DeviceTensor<i32>,
) -> Result<DeviceTensor<T>> {
    let (vocab, hidden, n) = check_embedding(table.shape(), ids.shape())?;
    gather(backend, table, ids, vocab, hidden, n)
}

/// Rows `rows[i]` of `x` (`[n, d]`): `[m, d]` for `[m]` row indices, e.g. the
/// last position of each sequence before the LM head.
///
/// The indices live on the device, so they are not checked: an index outside
/// `0..n` yields a row of zeros.
///
/// Errors: [`Error::ShapeMismatch`] for `x` not 2-D or `rows` not 1-D,
/// [`Error::Empty`] for an empty `x` or no rows.
pub fn take_rows<T: DeviceElement + Element>(
    backend: &CudaBackend,
    x: &DeviceTensor<T>,
    rows: &DeviceTensor<i32>,
) -> Result<DeviceTensor<T>> {
    let (n, d, m) = check_take_rows(x.shape(), rows.shape())?;
    gather(backend, x, rows, n, d, m)
}

/// `out[r] = src[ids[r]]` (zeros for an id outside `0..src_rows`), `[n, cols]`.
fn gather<T: DeviceElement + Element>(
    backend: &CudaBackend,
    src: &DeviceTensor<T>,
    ids: &DeviceTensor<i32>,
    src_rows: usize,
    cols: usize,
    n: usize,
) -> Result<DeviceTensor<T>> {
    let mut out = DeviceTensor::<T>::zeros(backend, &[n, cols])?;
    let func = backend.function(LM, &format!("dl_lm_gather_rows_{}", T::SUFFIX))?;
    let (src_rows_i, cols_i, vec) = (src_rows as i32, cols as i32, packs_fit::<T>(cols) as i32);
    let mut launch = backend.stream().launch_builder(&func);
    launch
        .arg(src.slice())
        .arg(ids.slice())
        .arg(out.slice_mut())
        .arg(&src_rows_i)
        .arg(&cols_i)
        .arg(&vec);
    // SAFETY: dl_lm_gather_rows_T(const T* src, const i32* ids, T* out,
    // i32 src_rows, i32 cols, i32 vec) runs one block per output row r < n,
    // reads ids[r] (ids holds n elements), reads row ids[r] of src only when
    // 0 <= ids[r] < src_rows (src is [src_rows, cols]) and writes row r of out
    // ([n, cols]). vec is set only when cols is a multiple of the 16-byte pack,
    // so the 16-byte accesses stay inside rows of 256-byte-aligned buffers.
    // All sizes fit i32 (the tensors were checked when created).
    unsafe { launch.launch(blocks(n, 0)) }?;
    Ok(out)
}

/// Copies `new` (`[batch * tq, cols]`) into rows `b * tmax + start ..
/// b * tmax + start + tq` of `cache` (`[batch * tmax, cols]`) for each
/// sequence `b`.
///
/// Errors: [`Error::Empty`] for a zero batch or an empty operand,
/// [`Error::ShapeMismatch`] when the columns differ, the rows are not
/// multiples of `batch`, or `start + tq > tmax`.
pub fn write_kv<T: DeviceElement + Element>(
    backend: &CudaBackend,
    cache: &mut DeviceTensor<T>,
    new: &DeviceTensor<T>,
    start: usize,
    batch: usize,
) -> Result<()> {
    let (tq, tmax, cols) = check_write_kv(cache.shape(), new.shape(), start, batch)?;
    let func = backend.function(LM, &format!("dl_lm_write_kv_{}", T::SUFFIX))?;
    let (tq_i, tmax_i, start_i, cols_i) = (tq as i32, tmax as i32, start as i32, cols as i32);
    let vec = packs_fit::<T>(cols) as i32;
    let mut launch = backend.stream().launch_builder(&func);
    launch
        .arg(cache.slice_mut())
        .arg(new.slice())
        .arg(&tq_i)
        .arg(&tmax_i)
        .arg(&start_i)
        .arg(&cols_i)
        .arg(&vec);
    // SAFETY: dl_lm_write_kv_T(T* cache, const T* src, i32 tq, i32 tmax,
    // i32 start, i32 cols, i32 vec) runs one block per row r < batch * tq of
    // src ([batch * tq, cols]) and writes cache row (r / tq) * tmax + start +
    // r % tq < batch * tmax because start + tq <= tmax (checked); cache is
    // [batch * tmax, cols]. vec only when cols is a whole number of 16-byte
    // packs. The borrow checker keeps cache and new distinct buffers.
    unsafe { launch.launch(blocks(batch * tq, 0)) }?;
    Ok(())
}

/// RMSNorm of each row of `x` (`[rows, dim]`): `x * (1 / sqrt(mean(x²) + eps))`
/// in f32, then times `weight` (`[dim]`), rounded once, in the reference's
/// order (`(x * scale) * w`; only the sum of squares is reduced in another
/// order).
///
/// Errors: [`Error::ShapeMismatch`] when `weight` is not `[dim]` or `x` is not
/// 2-D, [`Error::Empty`] for an empty `x`, [`Error::InvalidConfig`] for a
/// negative or non-finite `eps`.
pub fn rms_norm<T: DeviceElement + Element>(
    backend: &CudaBackend,
    x: &DeviceTensor<T>,
    weight: &DeviceTensor<T>,
    eps: f32,
) -> Result<DeviceTensor<T>> {
    let (rows, dim) = check_norm("lm::rms_norm", x.shape(), weight.shape(), eps)?;
    let mut out = DeviceTensor::<T>::zeros(backend, x.shape())?;
    let func = backend.function(LM, &format!("dl_lm_rms_norm_{}", T::SUFFIX))?;
    let n = NormLaunch::new::<T>(rows, dim);
    let mut launch = backend.stream().launch_builder(&func);
    launch
        .arg(x.slice())
        .arg(weight.slice())
        .arg(out.slice_mut())
        .arg(&n.rows)
        .arg(&n.dim)
        .arg(&eps)
        .arg(&n.rows_per_block)
        .arg(&n.vec);
    // SAFETY: dl_lm_rms_norm_T(const T* x, const T* w, T* out, i32 rows,
    // i32 d, float eps, i32 rows_per_block, i32 vec) handles rows
    // blockIdx.x * rows_per_block + warp (< rows, checked in the kernel) or
    // row blockIdx.x (< rows when rows_per_block == 1), reading and writing
    // only columns < d of x and out ([rows, d]) and w ([d], checked). vec only
    // when d is a whole number of 16-byte packs.
    unsafe { launch.launch(n.config) }?;
    Ok(out)
}

/// LayerNorm of each row of `x` (`[rows, dim]`) with `weight` and `bias`
/// (`[dim]`), as [`crate::reference::lm::layer_norm`]: mean and biased
/// variance in f32, `(x - mean) * (1 / sqrt(var + eps)) * weight + bias`,
/// rounded once (only the sums are reduced in another order).
///
/// Errors: [`Error::ShapeMismatch`] when `weight` or `bias` is not `[dim]` or
/// `x` is not 2-D, [`Error::Empty`] for an empty `x`,
/// [`Error::InvalidConfig`] for a negative or non-finite `eps`.
pub fn layer_norm<T: DeviceElement + Element>(
    backend: &CudaBackend,
    x: &DeviceTensor<T>,
    weight: &DeviceTensor<T>,
    bias: &DeviceTensor<T>,
    eps: f32,
) -> Result<DeviceTensor<T>> {
    let (rows, dim) = check_norm("lm::layer_norm", x.shape(), weight.shape(), eps)?;
    if bias.shape() != [dim] {
        return Err(mismatch(
            "lm::layer_norm",
            format!(
                "bias must be [{dim}] (the columns of x), found {:?}",
                bias.shape()
            ),
        ));
    }
    let mut out = DeviceTensor::<T>::zeros(backend, x.shape())?;
    let func = backend.function(LM, &format!("dl_lm_layer_norm_{}", T::SUFFIX))?;
    let n = NormLaunch::new::<T>(rows, dim);
    let mut launch = backend.stream().launch_builder(&func);
    launch
        .arg(x.slice())
        .arg(weight.slice())
        .arg(bias.slice())
        .arg(out.slice_mut())
        .arg(&n.rows)
        .arg(&n.dim)
        .arg(&eps)
        .arg(&n.rows_per_block)
        .arg(&n.vec);
    // SAFETY: dl_lm_layer_norm_T(const T* x, const T* w, const T* b, T* out,
    // i32 rows, i32 d, float eps, i32 rows_per_block, i32 vec) handles rows
    // blockIdx.x * rows_per_block + warp (< rows, checked in the kernel) or
    // row blockIdx.x (< rows when rows_per_block == 1), reading and writing
    // only columns < d of x and out ([rows, d]), w and b ([d], checked). vec
    // only when d is a whole number of 16-byte packs.
    unsafe { launch.launch(n.config) }?;
    Ok(out)
}

/// Rotary position embedding, half-split (NeoX) form, on `x`
/// (`[rows, heads * head_dim]`); row `t` is at `positions[t]`
/// (`[rows]`). Same frequencies and rounding order as the reference:
/// `inv = 1 / theta^(2i / head_dim)` and `angle = position * inv` in f32.
///
/// Positions are read on the device and not checked; the reference takes
/// unsigned positions, so pass non-negative ones.
///
/// Errors: [`Error::InvalidConfig`] for an odd, zero or too large (over 12288)
/// `head_dim` or a `theta` that is not finite and positive,
/// [`Error::ShapeMismatch`] when the columns are not a multiple of `head_dim`
/// or `positions` is not `[rows]`, [`Error::Empty`] for an empty `x`.
pub fn rope<T: DeviceElement + Element>(
    backend: &CudaBackend,
    x: &DeviceTensor<T>,
    positions: &DeviceTensor<i32>,
    head_dim: usize,
    theta: f32,
) -> Result<DeviceTensor<T>> {
    let (rows, cols) = check_rope(x.shape(), positions.shape(), head_dim, theta)?;
    let mut out = DeviceTensor::<T>::zeros(backend, x.shape())?;
    let func = backend.function(LM, &format!("dl_lm_rope_{}", T::SUFFIX))?;
    let (cols_i, hd_i) = (cols as i32, head_dim as i32);
    let vec = packs_fit::<T>(head_dim / 2) as i32;
    let mut launch = backend.stream().launch_builder(&func);
    launch
        .arg(x.slice())
        .arg(positions.slice())
        .arg(out.slice_mut())
        .arg(&cols_i)
        .arg(&hd_i)
        .arg(&theta)
        .arg(&vec);
    // SAFETY: dl_lm_rope_T(const T* x, const i32* positions, T* out, i32 cols,
    // i32 head_dim, float theta, i32 vec) runs one block per row < rows,
    // reads positions[row] (positions is [rows], checked) and columns < cols
    // of that row of x and out ([rows, cols], cols a multiple of head_dim,
    // checked); its dynamic shared memory holds head_dim floats (the size
    // given here, at most 48 KiB, checked). vec only when head_dim / 2 is a
    // whole number of 16-byte packs, so every pack offset is aligned.
    unsafe { launch.launch(blocks(rows, head_dim * size_of::<f32>())) }?;
    Ok(out)
}

/// Causal grouped-query attention over a KV cache.
///
/// `q` is `[batch * tq, num_heads * head_dim]`; `k_cache` and `v_cache` are
/// `[batch * tmax, num_kv_heads * head_dim]`, and sequence `b`'s keys are
/// cache rows `b * tmax .. b * tmax + kv_len` (rows past `kv_len` are never
/// read). The `tq` queries of a sequence sit at positions `kv_len - tq ..
/// kv_len` and see keys up to their own position. Equals
/// [`crate::reference::lm::attention`] on those cache rows: scores
/// `q·k / sqrt(head_dim)`, softmax and weighted sum in f32 (an online softmax
/// over chunks of 256 keys), output `[batch * tq, num_heads * head_dim]`
/// rounded once.
///
/// Errors: [`Error::Empty`] for a zero batch, heads, head_dim or kv_len,
/// [`Error::InvalidConfig`] when `num_kv_heads` does not divide `num_heads`
/// or `head_dim > 256`, [`Error::ShapeMismatch`] for operands that do not fit
/// these shapes or `tq <= kv_len <= tmax` not holding.
#[allow(clippy::too_many_arguments)]
pub fn attention_cached<T: DeviceElement + Element>(
    backend: &CudaBackend,
    q: &DeviceTensor<T>,
    k_cache: &DeviceTensor<T>,
    v_cache: &DeviceTensor<T>,
    kv_len: usize,
    batch: usize,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
) -> Result<DeviceTensor<T>> {
    let AttentionDims { tq, tmax } = check_attention(
        q.shape(),
        k_cache.shape(),
        v_cache.shape(),
        kv_len,
        batch,
        num_heads,
        num_kv_heads,
        head_dim,
    )?;
    let mut out = DeviceTensor::<T>::zeros(backend, q.shape())?;
    let func = backend.function(LM, &format!("dl_lm_attention_{}", T::SUFFIX))?;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let (tq_i, tmax_i, kv_i) = (tq as i32, tmax as i32, kv_len as i32);
    let (hq_i, hkv_i, d_i) = (num_heads as i32, num_kv_heads as i32, head_dim as i32);
    let vec = packs_fit::<T>(head_dim) as i32;
    let mut launch = backend.stream().launch_builder(&func);
    launch
        .arg(q.slice())
        .arg(k_cache.slice())
        .arg(v_cache.slice())
        .arg(out.slice_mut())
        .arg(&tq_i)
        .arg(&tmax_i)
        .arg(&kv_i)
        .arg(&hq_i)
        .arg(&hkv_i)
        .arg(&d_i)
        .arg(&scale)
        .arg(&vec);
    // SAFETY: dl_lm_attention_T(const T* q, const T* k_cache,
    // const T* v_cache, T* out, i32 tq, i32 tmax, i32 kv_len, i32 hq, i32 hkv,
    // i32 d, float scale, i32 vec) runs 256 threads per block and one block
    // per (row < batch * tq, head < hq); it reads q and writes out
    // ([batch * tq, hq * d]) in that row and head, and reads cache rows
    // b * tmax + j, j < kv_len - tq + i + 1 <= kv_len <= tmax, columns of kv
    // head h / (hq / hkv) < hkv (caches [batch * tmax, hkv * d]); all checked
    // above, with 1 <= d <= 256 (its static shared arrays). vec only when d is
    // a whole number of 16-byte packs.
    unsafe { launch.launch(blocks(batch * tq * num_heads, 0)) }?;
    Ok(out)
}

/// The kernel, launch configuration and `vec` flag of elementwise kernel
/// `<kernel>_<T>` over `n` elements: one thread per 16-byte pack when `vec`,
/// else per element.
fn map_launch<T: DeviceElement>(
    backend: &CudaBackend,
    kernel: &str,
    n: usize,
    vec: bool,
) -> Result<(CudaFunction, LaunchConfig, i32)> {
    let func = backend.function(LM, &format!("{kernel}_{}", T::SUFFIX))?;
    let units = if vec { n / pack::<T>() } else { n };
    Ok((
        func,
        blocks(units.div_ceil(THREADS as usize), 0),
        vec as i32,
    ))
}

/// `x[r, c] + bias[c]` for `x` `[rows, d]` and `bias` `[d]`, in f32, rounded
/// once.
///
/// Errors: [`Error::ShapeMismatch`] when `x` is not 2-D or `bias` is not
/// `[d]`, [`Error::Empty`] for an empty `x`.
pub fn add_bias<T: DeviceElement + Element>(
    backend: &CudaBackend,
    x: &DeviceTensor<T>,
    bias: &DeviceTensor<T>,
) -> Result<DeviceTensor<T>> {
    let (rows, d) = check_add_bias(x.shape(), bias.shape())?;
    row_map(backend, "dl_lm_add_bias", x, bias, Second::Column, rows, d)
}

/// Clamps every element to `[-limit, limit]` (OLMoE's `clip_qkv`), like
/// `f32::clamp`: NaN stays NaN.
///
/// Errors: [`Error::InvalidConfig`] for a negative or NaN `limit`,
/// [`Error::Empty`] for an empty `x`.
pub fn clamp<T: DeviceElement + Element>(
    backend: &CudaBackend,
    x: &DeviceTensor<T>,
    limit: f32,
) -> Result<DeviceTensor<T>> {
    let n = check_clamp(x.shape(), limit)?;
    let mut out = DeviceTensor::<T>::zeros(backend, x.shape())?;
    let (func, cfg, vec) = map_launch::<T>(backend, "dl_lm_clamp", n, packs_fit::<T>(n))?;
    let n_i = n as i32;
    let mut launch = backend.stream().launch_builder(&func);
    launch
        .arg(x.slice())
        .arg(out.slice_mut())
        .arg(&n_i)
        .arg(&limit)
        .arg(&vec);
    // SAFETY: dl_lm_clamp_T(const T* x, T* out, i32 n, float limit, i32 vec)
    // runs one thread per pack (vec) or element below n and touches flat
    // indices below n of x and out, which both hold n elements. vec only when
    // n is a whole number of 16-byte packs.
    unsafe { launch.launch(cfg) }?;
    Ok(out)
}

/// Dense `SiLU(gate) * up`, computed as `g / (1 + exp(-g)) * u` in f32 and
/// rounded once (the generate example's dense MLP and shared expert):
/// [`elementwise::silu_mul`] in [`SiluForm::Quotient`].
///
/// Errors: [`Error::ShapeMismatch`] when the shapes differ, [`Error::Empty`]
/// for empty operands.
pub fn silu_mul<T: DeviceElement + Element>(
    backend: &CudaBackend,
    gate: &DeviceTensor<T>,
    up: &DeviceTensor<T>,
) -> Result<DeviceTensor<T>> {
    elementwise::silu_mul(backend, gate, up, SiluForm::Quotient)
}

/// `x[r, :] * sigmoid(gate_logits[r])` for `x` `[rows, d]` and `gate_logits`
/// `[rows, 1]` (or `[rows]`): Qwen2-MoE's shared-expert gate. As in the
/// generate example the sigmoid is rounded to `T` first, then the product
/// rounded once.
///
/// Errors: [`Error::ShapeMismatch`] for other shapes, [`Error::Empty`] for an
/// empty `x`.
pub fn sigmoid_scale<T: DeviceElement + Element>(
    backend: &CudaBackend,
    x: &DeviceTensor<T>,
    gate_logits: &DeviceTensor<T>,
) -> Result<DeviceTensor<T>> {
    let (rows, d) = check_sigmoid_scale(x.shape(), gate_logits.shape())?;
    row_map(
        backend,
        "dl_lm_sigmoid_scale",
        x,
        gate_logits,
        Second::Row,
        rows,
        d,
    )
}

/// Which element of the second operand of [`row_map`] flat index `i` of `x`
/// (`[rows, d]`) pairs with.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Second {
    /// `second[i % d]`: a `[d]` vector broadcast over the rows.
    Column,
    /// `second[i / d]`: one value per row.
    Row,
}

/// Runs `<kernel>_<T>(const T* x, const T* second, T* out, i32 n, i32 d,
/// i32 vec)` on `x` (`[rows, d]`, nonempty, checked by the caller) into a new
/// tensor of `x`'s shape, pairing element `i` with `second` as `pairing` says.
///
/// Errors: [`Error::ShapeMismatch`] when `second` holds fewer elements than
/// `pairing` reads.
fn row_map<T: DeviceElement + Element>(
    backend: &CudaBackend,
    kernel: &str,
    x: &DeviceTensor<T>,
    second: &DeviceTensor<T>,
    pairing: Second,
    rows: usize,
    d: usize,
) -> Result<DeviceTensor<T>> {
    let need = match pairing {
        Second::Column => d,
        Second::Row => rows,
    };
    if second.len() < need || x.len() != rows * d {
        return Err(mismatch(
            "lm::row_map",
            format!(
                "x {:?} is not [{rows}, {d}] or the second operand {:?} holds fewer than {need} elements",
                x.shape(),
                second.shape()
            ),
        ));
    }
    let mut out = DeviceTensor::<T>::zeros(backend, x.shape())?;
    let (func, cfg, vec) = map_launch::<T>(backend, kernel, rows * d, packs_fit::<T>(d))?;
    let (n_i, d_i) = ((rows * d) as i32, d as i32);
    let mut launch = backend.stream().launch_builder(&func);
    launch
        .arg(x.slice())
        .arg(second.slice())
        .arg(out.slice_mut())
        .arg(&n_i)
        .arg(&d_i)
        .arg(&vec);
    // SAFETY: dl_lm_add_bias_T and dl_lm_sigmoid_scale_T(const T* x,
    // const T* second, T* out, i32 n, i32 d, i32 vec) run one thread per pack
    // (vec) or element below n = rows * d, touch flat indices below n of x and
    // out (both [rows, d], checked) and index i % d < d (add_bias: Column) or
    // i / d < rows (sigmoid_scale: Row) of second, which holds that many
    // elements (checked). vec only when d is a whole number of 16-byte packs,
    // so a pack lies in one row.
    unsafe { launch.launch(cfg) }?;
    Ok(out)
}

/// The index of the largest value of each row of `x` (`[rows, cols]`), `[rows]`;
/// the lowest index on ties, like the generate example's greedy `argmax`.
///
/// A row holding NaN or +/-inf yields -1 (the CPU greedy returns an error for
/// it; check for negative ids when the tokens reach the host). -1 is also out
/// of range for [`embedding`], which then reads a zero row.
///
/// Errors: [`Error::ShapeMismatch`] when `x` is not 2-D, [`Error::Empty`] for
/// an empty `x`.
pub fn argmax_rows(backend: &CudaBackend, x: &DeviceTensor<f32>) -> Result<DeviceTensor<i32>> {
    let (rows, cols) = dims2("lm::argmax_rows", "x [rows, cols]", x.shape())?;
    let mut out = DeviceTensor::<i32>::zeros(backend, &[rows])?;
    let func = backend.function(LM, "dl_lm_argmax_rows")?;
    let (cols_i, vec) = (cols as i32, (cols % 4 == 0) as i32);
    let mut launch = backend.stream().launch_builder(&func);
    launch
        .arg(x.slice())
        .arg(out.slice_mut())
        .arg(&cols_i)
        .arg(&vec);
    // SAFETY: dl_lm_argmax_rows(const float* x, i32* out, i32 cols, i32 vec)
    // runs 256 threads (its shared arrays hold 8 warps) and one block per
    // row < rows, reads columns < cols of that row of x ([rows, cols]) and
    // writes out[row] (out is [rows]). vec (float4 loads) only when cols is a
    // multiple of 4.
    unsafe { launch.launch(blocks(rows, 0)) }?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_empty<T: std::fmt::Debug>(r: Result<T>) -> bool {
        matches!(r, Err(Error::Empty { .. }))
    }
    fn is_shape<T: std::fmt::Debug>(r: Result<T>) -> bool {
        matches!(r, Err(Error::ShapeMismatch { .. }))
    }
    fn is_config<T: std::fmt::Debug>(r: Result<T>) -> bool {
        matches!(r, Err(Error::InvalidConfig(_)))
    }

    #[test]
    fn packs() {
        assert_eq!(pack::<f32>(), 4);
        assert_eq!(pack::<half::bf16>(), 8);
        assert!(packs_fit::<half::f16>(64));
        assert!(!packs_fit::<half::f16>(60));
        assert!(packs_fit::<f32>(60));
    }

    #[test]
    fn embedding_and_take_rows_shapes() {
        assert_eq!(check_embedding(&[10, 4], &[3]).unwrap(), (10, 4, 3));
        assert!(is_empty(check_embedding(&[10, 4], &[0])));
        assert!(is_empty(check_embedding(&[0, 4], &[2])));
        assert!(is_shape(check_embedding(&[40], &[2])));
        assert!(is_shape(check_embedding(&[10, 4], &[2, 1])));
        assert_eq!(check_take_rows(&[5, 3], &[2]).unwrap(), (5, 3, 2));
        assert!(is_empty(check_take_rows(&[5, 3], &[0])));
        assert!(is_shape(check_take_rows(&[5, 3, 1], &[2])));
    }

    #[test]
    fn rms_norm_shapes() {
        assert_eq!(
            check_norm("lm::rms_norm", &[3, 8], &[8], 1e-6).unwrap(),
            (3, 8)
        );
        assert!(is_shape(check_norm("lm::rms_norm", &[3, 8], &[7], 1e-6)));
        assert!(is_empty(check_norm("lm::rms_norm", &[0, 8], &[8], 1e-6)));
        assert!(is_config(check_norm("lm::rms_norm", &[3, 8], &[8], -1.0)));
        assert!(is_config(check_norm(
            "lm::rms_norm",
            &[3, 8],
            &[8],
            f32::NAN
        )));
        assert!(is_config(check_norm(
            "lm::rms_norm",
            &[3, 8],
            &[8],
            f32::INFINITY
        )));
    }

    #[test]
    fn rope_shapes() {
        assert_eq!(check_rope(&[2, 12], &[2], 4, 1e4).unwrap(), (2, 12));
        assert!(is_config(check_rope(&[2, 12], &[2], 3, 1e4)));
        assert!(is_config(check_rope(&[2, 12], &[2], 0, 1e4)));
        assert!(is_config(check_rope(&[2, 12], &[2], 4, 0.0)));
        assert!(is_config(check_rope(&[2, 12], &[2], 4, f32::NAN)));
        assert!(is_config(check_rope(&[2, 1 << 14], &[2], 1 << 14, 1e4)));
        assert!(is_shape(check_rope(&[2, 12], &[2], 8, 1e4)));
        assert!(is_shape(check_rope(&[2, 12], &[3], 4, 1e4)));
        assert!(is_shape(check_rope(&[2, 12], &[2, 1], 4, 1e4)));
        assert!(is_empty(check_rope(&[0, 12], &[0], 4, 1e4)));
    }

    #[test]
    fn attention_shapes() {
        // batch 2, tq 3, tmax 10, 4 query heads over 2 kv heads of 8.
        let (q, kv) = ([6, 32], [20, 16]);
        assert_eq!(
            check_attention(&q, &kv, &kv, 5, 2, 4, 2, 8).unwrap(),
            AttentionDims { tq: 3, tmax: 10 }
        );
        assert_eq!(
            check_attention(&q, &kv, &kv, 10, 2, 4, 2, 8).unwrap(),
            AttentionDims { tq: 3, tmax: 10 }
        );
        assert!(is_shape(check_attention(&q, &kv, &kv, 11, 2, 4, 2, 8)));
        assert!(is_shape(check_attention(&q, &kv, &kv, 2, 2, 4, 2, 8)));
        assert!(is_empty(check_attention(&q, &kv, &kv, 0, 2, 4, 2, 8)));
        assert!(is_empty(check_attention(&q, &kv, &kv, 5, 0, 4, 2, 8)));
        assert!(is_empty(check_attention(&q, &kv, &kv, 5, 2, 4, 0, 8)));
        assert!(is_config(check_attention(&q, &kv, &kv, 5, 2, 4, 3, 8)));
        assert!(is_shape(check_attention(&q, &kv, &[20, 8], 5, 2, 4, 2, 8)));
        assert!(is_shape(check_attention(&[6, 24], &kv, &kv, 5, 2, 4, 2, 8)));
        assert!(is_shape(check_attention(
            &q,
            &[20, 24],
            &[20, 24],
            5,
            2,
            4,
            2,
            8
        )));
        assert!(is_shape(check_attention(&q, &kv, &kv, 5, 4, 4, 2, 8)));
        assert!(is_shape(check_attention(&[5, 32], &kv, &kv, 5, 2, 4, 2, 8)));
        assert!(is_config(check_attention(
            &[1, 512],
            &[4, 512],
            &[4, 512],
            2,
            1,
            1,
            1,
            512
        )));
        assert!(check_attention(&[1, 256], &[4, 256], &[4, 256], 2, 1, 1, 1, 256).is_ok());
    }

    #[test]
    fn write_kv_shapes() {
        assert_eq!(
            check_write_kv(&[20, 16], &[6, 16], 7, 2).unwrap(),
            (3, 10, 16)
        );
        assert!(is_shape(check_write_kv(&[20, 16], &[6, 16], 8, 2)));
        assert!(is_shape(check_write_kv(&[20, 16], &[6, 8], 0, 2)));
        assert!(is_shape(check_write_kv(&[20, 16], &[5, 16], 0, 2)));
        assert!(is_shape(check_write_kv(&[21, 16], &[6, 16], 0, 2)));
        assert!(is_empty(check_write_kv(&[20, 16], &[6, 16], 0, 0)));
        assert!(is_empty(check_write_kv(&[20, 16], &[0, 16], 0, 2)));
    }

    #[test]
    fn elementwise_shapes() {
        assert_eq!(check_same("t", &[2, 3], &[2, 3]).unwrap(), 6);
        assert!(is_shape(check_same("t", &[2, 3], &[3, 2])));
        assert!(is_empty(check_same("t", &[0, 3], &[0, 3])));
        assert_eq!(check_add_bias(&[2, 3], &[3]).unwrap(), (2, 3));
        assert!(is_shape(check_add_bias(&[2, 3], &[2])));
        assert_eq!(check_clamp(&[2, 3], 8.0).unwrap(), 6);
        assert_eq!(check_clamp(&[2, 3], f32::INFINITY).unwrap(), 6);
        assert!(is_config(check_clamp(&[2, 3], -1.0)));
        assert!(is_config(check_clamp(&[2, 3], f32::NAN)));
        assert_eq!(check_sigmoid_scale(&[2, 3], &[2, 1]).unwrap(), (2, 3));
        assert_eq!(check_sigmoid_scale(&[2, 3], &[2]).unwrap(), (2, 3));
        assert!(is_shape(check_sigmoid_scale(&[2, 3], &[3, 1])));
        assert!(is_shape(check_sigmoid_scale(&[2, 3], &[2, 3])));
    }
}
