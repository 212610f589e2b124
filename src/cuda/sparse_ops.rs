//! Block-sparse matrix products on the device (`cuda/block_sparse.cu`):
//! [`sdd`] (dense x dense -> sparse), [`dsd`] (sparse x dense -> dense) and
//! [`dds`] (dense x sparse -> dense), bf16 or f16 operands on tensor cores
//! with f32 accumulation, as the CPU reference in
//! [`crate::reference::sparse_ops`].
//!
//! Each op has an `_into` form that writes a preallocated output (to reuse
//! buffers, or to poison outputs in tests); the plain form allocates it. Shapes
//! are checked on the host from shapes alone ([`check_sdd`], [`check_dsd`],
//! [`check_dds`]); the kernels read the true block count of a capacity
//! topology from device memory, so nothing here synchronises the host.
//!
//! Dense dimensions that index 16-byte rows (the inner `k` of `sdd`, the
//! columns of `B` in `dsd`) must be multiples of 8; the rows of `A` in `dds`
//! may be any number.

use std::sync::Arc;

use cudarc::driver::{CudaFunction, LaunchArgs, LaunchConfig, PushKernelArg};
use half::{bf16, f16};

use super::kernels::{BLOCK_SPARSE, BLOCK_SPARSE_SMEM_BYTES};
use super::topology::check_block_size;
use super::DeviceTopology;
use super::{CudaBackend, DeviceBlockSparse, DeviceElement, DeviceSparseView, DeviceTensor};
use crate::checks::check_nonempty;
use crate::dtype::Element;
use crate::error::{check_i32, product, Error, Result};

/// Threads per CTA (8 warps); must match `dl::bs::kThreads`.
const THREADS: u32 = 256;
/// Side of a CTA's output tile; must match `dl::bs::kTileM` / `kTileN`.
const TILE: usize = 128;
/// Dynamic shared memory of every kernel; must match `dl::bs::kSmemBytes`.
/// The backend sets each kernel's limit to it once, when it loads the kernel.
const SMEM_BYTES: u32 = BLOCK_SPARSE_SMEM_BYTES;
/// Dense dimensions that index 16-byte rows must be multiples of this.
const ALIGN: usize = 8;

mod sealed {
    pub trait Sealed {}
    impl Sealed for half::bf16 {}
    impl Sealed for half::f16 {}
}

/// An element type the tensor-core kernels take: [`bf16`] or [`struct@f16`].
pub trait MmaElement: DeviceElement + Element + sealed::Sealed {}

impl MmaElement for bf16 {}
impl MmaElement for f16 {}

/// The dimensions of a sparse operand that the shape checks need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SparseDims {
    /// Dense rows of the stored matrix (the topology's row capacity).
    pub rows: usize,
    /// Dense columns of the stored matrix.
    pub cols: usize,
    /// Side of the square blocks.
    pub block_size: usize,
    /// Whether the op sees the matrix transposed.
    pub transposed: bool,
}

impl SparseDims {
    /// The dimensions of a device topology, seen untransposed.
    pub fn of(topology: &DeviceTopology) -> Self {
        SparseDims {
            rows: topology.rows(),
            cols: topology.cols(),
            block_size: topology.block_size(),
            transposed: false,
        }
    }

    /// The dimensions of a device sparse view.
    pub fn of_view<T: DeviceElement>(s: &DeviceSparseView<'_, T>) -> Self {
        SparseDims {
            transposed: s.transposed,
            ..Self::of(s.matrix.topology())
        }
    }

    /// `[rows, cols]` as the op sees the matrix (swapped when transposed).
    fn op_dim(&self) -> (usize, usize) {
        if self.transposed {
            (self.cols, self.rows)
        } else {
            (self.rows, self.cols)
        }
    }

    /// Number of output tiles along the sparse side of DSD / DDS: block rows
    /// of `op(S)` (`first = true`) or block columns of `op(S)`.
    fn blocks_along(&self, first: bool) -> usize {
        let (r, c) = self.op_dim();
        (if first { r } else { c }) / self.block_size
    }
}

/// A 2-D shape as `(rows, cols)`.
fn dims2(op: &'static str, name: &str, shape: &[usize]) -> Result<(usize, usize)> {
    match shape {
        [r, c] => Ok((*r, *c)),
        _ => Err(Error::ShapeMismatch {
            op,
            message: format!("{name} must be 2-D, found shape {shape:?}"),
        }),
    }
}

/// Checks a dense dimension that indexes 16-byte rows.
fn check_multiple_of_8(op: &'static str, what: &str, value: usize) -> Result<()> {
    if !value.is_multiple_of(ALIGN) {
        return Err(Error::Misaligned {
            op,
            message: format!(
                "{what} = {value} must be a multiple of {ALIGN} (16-byte rows for the \
                 tensor-core kernels); pad it to {}",
                value.next_multiple_of(ALIGN)
            ),
        });
    }
    Ok(())
}

/// Checks the grid of a DSD / DDS launch (one CTA per sparse block row or
/// column and dense tile) against the kernels' i32 block index.
fn check_grid(sparse: usize, dense: usize) -> Result<usize> {
    let ctas = product(&[sparse, dense.div_ceil(TILE)]);
    check_i32("CTAs of the block-sparse launch", ctas)?;
    Ok(ctas as usize)
}

/// Checks the shapes of [`sdd`]: `a` is `[rows, k]`, `b` is `[cols, k]`
/// (`trans_b`) or `[k, cols]`, `k > 0` a multiple of 8.
pub fn check_sdd(a: &[usize], b: &[usize], trans_b: bool, topology: SparseDims) -> Result<()> {
    const OP: &str = "sdd";
    check_block_size(topology.block_size)?;
    let (rows, cols) = (topology.rows, topology.cols);
    let (a_rows, k) = dims2(OP, "A", a)?;
    let b_dims = dims2(OP, "B", b)?;
    if a_rows != rows {
        return Err(Error::ShapeMismatch {
            op: OP,
            message: format!(
                "A must be [rows, k] with rows = {rows} (the topology's row capacity), found {a:?}"
            ),
        });
    }
    let want_b = if trans_b { (cols, k) } else { (k, cols) };
    if b_dims != want_b {
        let layout = if trans_b { "[cols, k]" } else { "[k, cols]" };
        return Err(Error::ShapeMismatch {
            op: OP,
            message: format!(
                "A is {a:?} and the topology has {cols} columns, so B must be {layout} = \
                 {want_b:?}, found {b:?}"
            ),
        });
    }
    check_nonempty(OP, "the inner dimension k", k)?;
    check_multiple_of_8(OP, "the inner dimension k", k)
}

/// Checks the shapes of [`dsd`] (`op(S)` is `[m, n]`, `b` is `[n, h]`, `n > 0`,
/// `h` a multiple of 8) and returns the output shape `[m, h]`.
pub fn check_dsd(s: SparseDims, b: &[usize]) -> Result<[usize; 2]> {
    const OP: &str = "dsd";
    check_block_size(s.block_size)?;
    let (m, n) = s.op_dim();
    let (b_rows, h) = dims2(OP, "B", b)?;
    if b_rows != n {
        return Err(Error::ShapeMismatch {
            op: OP,
            message: format!(
                "op(S) is [{m}, {n}] (transposed: {}), so B must be [{n}, h], found {b:?}",
                s.transposed
            ),
        });
    }
    check_nonempty(OP, "the inner dimension (columns of op(S))", n)?;
    check_multiple_of_8(OP, "the columns of B", h)?;
    check_i32("dsd: elements of the output", product(&[m, h]))?;
    check_grid(s.blocks_along(true), h)?;
    Ok([m, h])
}

/// Checks the shapes of [`dds`] (`a` is `[m, k]`, `op(S)` is `[k, n]`,
/// `k > 0`; any `m`) and returns the output shape `[m, n]`.
pub fn check_dds(a: &[usize], s: SparseDims) -> Result<[usize; 2]> {
    const OP: &str = "dds";
    check_block_size(s.block_size)?;
    let (k, n) = s.op_dim();
    let (m, a_cols) = dims2(OP, "A", a)?;
    if a_cols != k {
        return Err(Error::ShapeMismatch {
            op: OP,
            message: format!(
                "op(S) is [{k}, {n}] (transposed: {}), so A must be [m, {k}], found {a:?}",
                s.transposed
            ),
        });
    }
    check_nonempty(OP, "the inner dimension (rows of op(S))", k)?;
    check_i32("dds: elements of the output", product(&[m, n]))?;
    check_grid(s.blocks_along(false), m)?;
    Ok([m, n])
}

/// Checks a preallocated dense output against the shape the op produces.
fn check_out(op: &'static str, want: [usize; 2], found: &[usize]) -> Result<()> {
    if found != want {
        return Err(Error::ShapeMismatch {
            op,
            message: format!("the output must be {want:?}, found {found:?}"),
        });
    }
    Ok(())
}

/// Checks that a block-sparse matrix holds `max_blocks` blocks of values.
fn check_values<T: DeviceElement>(op: &'static str, m: &DeviceBlockSparse<T>) -> Result<()> {
    let t = &m.topology;
    let want = product(&[t.max_blocks, t.block_size, t.block_size]);
    if m.data.len() as u128 != want {
        return Err(Error::ShapeMismatch {
            op,
            message: format!(
                "the sparse matrix must hold {want} values (max_blocks x block_size^2), found {}",
                m.data.len()
            ),
        });
    }
    Ok(())
}

/// Kernel `name` for `T` (its [`SMEM_BYTES`] limit was set when it was loaded).
fn kernel<T: MmaElement>(backend: &CudaBackend, name: &str) -> Result<CudaFunction> {
    let func = backend.function(BLOCK_SPARSE, &format!("dl_{name}_{}", T::SUFFIX))?;
    Ok(func)
}

/// The launch configuration of `ctas` CTAs.
fn config(ctas: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (ctas as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: SMEM_BYTES,
    }
}

/// Pushes the topology arrays that a DSD / DDS kernel walks: the block rows
/// (`offsets`, `column_indices`), or with `by_columns` the block columns
/// (`offsets_t`, `column_indices_t`, `block_offsets_t`).
fn push_walk<'a>(launch: &mut LaunchArgs<'a>, topo: &'a DeviceTopology, by_columns: bool) {
    if by_columns {
        launch
            .arg(topo.offsets_t.slice())
            .arg(topo.column_indices_t.slice())
            .arg(topo.block_offsets_t.slice());
    } else {
        launch
            .arg(topo.offsets.slice())
            .arg(topo.column_indices.slice());
    }
}

/// A size already checked against i32 indexing, as a kernel argument.
fn arg_i32(value: usize) -> i32 {
    debug_assert!(value <= i32::MAX as usize);
    value as i32
}

/// `A · op(B)` on the blocks of `topology`: `a` is `[rows, k]`, `b` is
/// `[cols, k]` when `trans_b` (the product is `A · Bᵀ`) else `[k, cols]`, with
/// `rows` / `cols` the topology's row capacity / columns and `k` a positive
/// multiple of 8. Blocks past the true block count are left zero.
pub fn sdd<T: MmaElement>(
    backend: &CudaBackend,
    a: &DeviceTensor<T>,
    b: &DeviceTensor<T>,
    trans_b: bool,
    topology: &Arc<DeviceTopology>,
) -> Result<DeviceBlockSparse<T>> {
    check_sdd(a.shape(), b.shape(), trans_b, SparseDims::of(topology))?;
    let n = product(&[
        topology.max_blocks,
        topology.block_size,
        topology.block_size,
    ]);
    check_i32("sdd: sparse output values", n)?;
    let data = DeviceTensor::zeros(backend, &[n as usize])?;
    let mut out = DeviceBlockSparse::new(Arc::clone(topology), data)?;
    launch_sdd(backend, a, b, trans_b, &mut out)?;
    Ok(out)
}

/// [`sdd`] into a preallocated output; its topology is the one computed. Only
/// the true blocks are written.
pub fn sdd_into<T: MmaElement>(
    backend: &CudaBackend,
    a: &DeviceTensor<T>,
    b: &DeviceTensor<T>,
    trans_b: bool,
    out: &mut DeviceBlockSparse<T>,
) -> Result<()> {
    check_sdd(a.shape(), b.shape(), trans_b, SparseDims::of(&out.topology))?;
    check_values("sdd", out)?;
    launch_sdd(backend, a, b, trans_b, out)
}

/// Launches the SDD kernel on checked shapes.
fn launch_sdd<T: MmaElement>(
    backend: &CudaBackend,
    a: &DeviceTensor<T>,
    b: &DeviceTensor<T>,
    trans_b: bool,
    out: &mut DeviceBlockSparse<T>,
) -> Result<()> {
    let topo = Arc::clone(&out.topology);
    if topo.max_blocks == 0 {
        return Ok(());
    }
    let func = kernel::<T>(backend, if trans_b { "sdd_nt" } else { "sdd_nn" })?;
    let (max_block_rows, k, cols) = (
        arg_i32(topo.max_block_rows),
        arg_i32(a.shape()[1]),
        arg_i32(topo.cols()),
    );
    let mut launch = backend.stream().launch_builder(&func);
    launch
        .arg(a.slice())
        .arg(b.slice())
        .arg(out.data.slice_mut())
        .arg(topo.row_indices.slice())
        .arg(topo.column_indices.slice())
        .arg(topo.offsets.slice())
        .arg(&max_block_rows)
        .arg(&k)
        .arg(&cols);
    // SAFETY: dl_sdd_{nt,nn}_T(const T* a, const T* b, T* out, const i32*
    // row_indices, const i32* column_indices, const i32* offsets, i32
    // max_block_rows, i32 k, i32 cols), 256 threads, 65536 bytes of dynamic
    // shared memory (the limit was raised by `kernel`). One CTA per capacity
    // block (max_blocks of them); CTA b exits unless b < offsets[max_block_rows]
    // (offsets has max_block_rows + 1 entries), so it reads row_indices[b] and
    // column_indices[b] (max_blocks long) of a crate-built topology whose
    // indices lie in 0..max_block_rows and 0..block_cols. It then reads
    // a[r*128 .. r*128+128, 0..k] ([rows, k], rows = max_block_rows * 128,
    // checked by check_sdd), b rows c*128 .. +128 of [cols, k] or columns
    // c*128 .. +128 of [k, cols] (cols = block_cols * 128, checked), and writes
    // out[b*16384 .. (b+1)*16384] (out holds max_blocks * 16384 values, checked
    // by check_values / allocated so). k is a multiple of 8, so every 16-byte
    // copy is aligned and in or out as a whole; all sizes fit i32.
    unsafe { launch.launch(config(topo.max_blocks)) }?;
    Ok(())
}

/// `op(S) · B`, `op(S) = Sᵀ` when `s.transposed`: `op(S)` is `[m, n]`, `b` is
/// `[n, h]` with `h` a multiple of 8; returns `[m, h]`. Output rows with no
/// stored block (e.g. past a capacity topology's true rows) are zero.
pub fn dsd<T: MmaElement>(
    backend: &CudaBackend,
    s: DeviceSparseView<'_, T>,
    b: &DeviceTensor<T>,
) -> Result<DeviceTensor<T>> {
    let shape = check_dsd(SparseDims::of_view(&s), b.shape())?;
    check_values("dsd", s.matrix)?;
    let mut out = DeviceTensor::zeros(backend, &shape)?;
    launch_dsd(backend, s, b, &mut out)?;
    Ok(out)
}

/// [`dsd`] into a preallocated `[m, h]` output (every element is written).
pub fn dsd_into<T: MmaElement>(
    backend: &CudaBackend,
    s: DeviceSparseView<'_, T>,
    b: &DeviceTensor<T>,
    out: &mut DeviceTensor<T>,
) -> Result<()> {
    let shape = check_dsd(SparseDims::of_view(&s), b.shape())?;
    check_values("dsd", s.matrix)?;
    check_out("dsd", shape, out.shape())?;
    launch_dsd(backend, s, b, out)
}

/// Launches the DSD kernel on checked shapes.
fn launch_dsd<T: MmaElement>(
    backend: &CudaBackend,
    s: DeviceSparseView<'_, T>,
    b: &DeviceTensor<T>,
    out: &mut DeviceTensor<T>,
) -> Result<()> {
    let topo = &s.matrix.topology;
    let h = b.shape()[1];
    let sparse = SparseDims::of_view(&s).blocks_along(true);
    let ctas = check_grid(sparse, h)?;
    if ctas == 0 {
        return Ok(());
    }
    let (sparse_i32, h_i32) = (arg_i32(sparse), arg_i32(h));
    let values = s.matrix.data.slice();
    // The transposed product walks the block columns.
    let by_columns = s.transposed;
    let func = kernel::<T>(backend, if by_columns { "dsd_tn" } else { "dsd_nn" })?;
    let mut launch = backend.stream().launch_builder(&func);
    launch.arg(values).arg(b.slice()).arg(out.slice_mut());
    push_walk(&mut launch, topo, by_columns);
    launch.arg(&sparse_i32).arg(&h_i32);
    // SAFETY (dsd_tn, by columns): dl_dsd_tn_T(const T* s, const T* b, T* out,
    // const i32* offsets_t, const i32* column_indices_t, const i32*
    // block_offsets_t, i32 block_cols, i32 n), 256 threads, 65536 bytes of
    // dynamic shared memory (limit raised by `kernel`), block_cols * ceil(h /
    // 128) CTAs (checked to fit i32). CTA (c, tile) reads offsets_t[c],
    // offsets_t[c + 1] (block_cols + 1 entries) and, for each position between
    // them, column_indices_t / block_offsets_t (max_blocks entries) of a
    // crate-built topology: block rows < max_block_rows, blocks < max_blocks.
    // It reads block values [blk*16384, +16384) (s holds max_blocks * 16384,
    // checked by check_values), rows r*128 .. +128 of b ([rows, h], checked by
    // check_dsd) at columns < h, and writes out[c*128 .. +128, tile*128 ..
    // min(h, +128)] of the [cols, h] output (checked).
    //
    // SAFETY (dsd_nn, by rows): dl_dsd_nn_T(const T* s, const T* b, T* out,
    // const i32* offsets, const i32* column_indices, i32 max_block_rows, i32
    // n), 256 threads, 65536 bytes of dynamic shared memory (limit raised by
    // `kernel`), max_block_rows * ceil(h / 128) CTAs (checked to fit i32). CTA
    // (r, tile) reads offsets[r], offsets[r + 1] (max_block_rows + 1 entries)
    // and the blocks between them (< max_blocks for a crate-built topology)
    // with their column_indices (< block_cols): block values [blk*16384,
    // +16384) (s holds max_blocks * 16384, checked by check_values), rows
    // c*128 .. +128 of b ([cols, h], checked by check_dsd) at columns < h, and
    // writes out[r*128 .. +128, tile*128 .. min(h, +128)] of the [rows, h]
    // output (checked).
    //
    // Both: h is a multiple of 8 (16-byte chunks, aligned).
    unsafe { launch.launch(config(ctas)) }?;
    Ok(())
}

/// `A · op(S)`, `op(S) = Sᵀ` when `s.transposed`: `a` is `[m, k]` (any `m`),
/// `op(S)` is `[k, n]`; returns `[m, n]`. Output columns with no stored block
/// are zero.
pub fn dds<T: MmaElement>(
    backend: &CudaBackend,
    a: &DeviceTensor<T>,
    s: DeviceSparseView<'_, T>,
) -> Result<DeviceTensor<T>> {
    let shape = check_dds(a.shape(), SparseDims::of_view(&s))?;
    check_values("dds", s.matrix)?;
    let mut out = DeviceTensor::zeros(backend, &shape)?;
    launch_dds(backend, a, s, &mut out)?;
    Ok(out)
}

/// [`dds`] into a preallocated `[m, n]` output (every element is written).
pub fn dds_into<T: MmaElement>(
    backend: &CudaBackend,
    a: &DeviceTensor<T>,
    s: DeviceSparseView<'_, T>,
    out: &mut DeviceTensor<T>,
) -> Result<()> {
    let shape = check_dds(a.shape(), SparseDims::of_view(&s))?;
    check_values("dds", s.matrix)?;
    check_out("dds", shape, out.shape())?;
    launch_dds(backend, a, s, out)
}

/// Launches the DDS kernel on checked shapes.
fn launch_dds<T: MmaElement>(
    backend: &CudaBackend,
    a: &DeviceTensor<T>,
    s: DeviceSparseView<'_, T>,
    out: &mut DeviceTensor<T>,
) -> Result<()> {
    let topo = &s.matrix.topology;
    let (m, k) = (a.shape()[0], a.shape()[1]);
    let sparse = SparseDims::of_view(&s).blocks_along(false);
    let ctas = check_grid(sparse, m)?;
    if ctas == 0 {
        return Ok(());
    }
    let (sparse_i32, m_i32, k_i32) = (arg_i32(sparse), arg_i32(m), arg_i32(k));
    let values = s.matrix.data.slice();
    // The untransposed product walks the block columns.
    let by_columns = !s.transposed;
    let func = kernel::<T>(backend, if by_columns { "dds_nn" } else { "dds_nt" })?;
    let mut launch = backend.stream().launch_builder(&func);
    launch.arg(a.slice()).arg(values).arg(out.slice_mut());
    push_walk(&mut launch, topo, by_columns);
    launch.arg(&sparse_i32).arg(&m_i32).arg(&k_i32);
    // SAFETY (dds_nt, by rows): dl_dds_nt_T(const T* a, const T* s, T* out,
    // const i32* offsets, const i32* column_indices, i32 max_block_rows, i32
    // m, i32 cols), 256 threads, 65536 bytes of dynamic shared memory (limit
    // raised by `kernel`), max_block_rows * ceil(m / 128) CTAs (checked to fit
    // i32). CTA (r, tile) reads offsets[r], offsets[r + 1] (max_block_rows + 1
    // entries) and the blocks between them (< max_blocks for a crate-built
    // topology) with their column_indices (< block_cols): block values
    // [blk*16384, +16384) (s holds max_blocks * 16384, checked by
    // check_values), rows tile*128 .. min(m, +128) and columns c*128 .. +128
    // of a ([m, cols], checked by check_dds), and writes out[tile*128 ..
    // min(m, +128), r*128 .. +128] of the [m, rows] output (checked). cols is
    // a multiple of 128 (aligned 16-byte chunks).
    //
    // SAFETY (dds_nn, by columns): dl_dds_nn_T(const T* a, const T* s, T* out,
    // const i32* offsets_t, const i32* column_indices_t, const i32*
    // block_offsets_t, i32 block_cols, i32 m, i32 rows), 256 threads, 65536
    // bytes of dynamic shared memory (limit raised by `kernel`), block_cols *
    // ceil(m / 128) CTAs (checked to fit i32). CTA (c, tile) reads
    // offsets_t[c], offsets_t[c + 1] (block_cols + 1 entries) and, for each
    // position between them, column_indices_t / block_offsets_t (max_blocks
    // entries) of a crate-built topology: block rows < max_block_rows, blocks
    // < max_blocks. It reads block values [blk*16384, +16384) (checked by
    // check_values), rows tile*128 .. min(m, +128) and columns r*128 .. +128
    // of a ([m, rows], checked by check_dds), and writes out[tile*128 ..
    // min(m, +128), c*128 .. +128] of the [m, cols] output (checked). rows is
    // a multiple of 128 (aligned 16-byte chunks).
    unsafe { launch.launch(config(ctas)) }?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dims(rows: usize, cols: usize, transposed: bool) -> SparseDims {
        SparseDims {
            rows,
            cols,
            block_size: 128,
            transposed,
        }
    }

    #[test]
    fn sdd_accepts_matching_shapes() {
        let t = dims(256, 512, false);
        assert_eq!(check_sdd(&[256, 136], &[512, 136], true, t), Ok(()));
        assert_eq!(check_sdd(&[256, 8], &[8, 512], false, t), Ok(()));
    }

    #[test]
    fn sdd_rejects_bad_shapes() {
        let t = dims(256, 512, false);
        let mismatch = |r: Result<()>| matches!(r, Err(Error::ShapeMismatch { op: "sdd", .. }));
        assert!(mismatch(check_sdd(&[128, 64], &[512, 64], true, t)));
        assert!(mismatch(check_sdd(&[256, 64], &[64, 512], true, t)));
        assert!(mismatch(check_sdd(&[256, 64], &[512, 64], false, t)));
        assert!(mismatch(check_sdd(&[256, 64], &[512, 56], true, t)));
        assert!(mismatch(check_sdd(&[256, 64, 1], &[512, 64], true, t)));
        assert!(mismatch(check_sdd(&[256, 64], &[512], true, t)));
    }

    #[test]
    fn sdd_rejects_empty_and_misaligned_k() {
        let t = dims(256, 512, false);
        assert!(matches!(
            check_sdd(&[256, 0], &[512, 0], true, t),
            Err(Error::Empty { op: "sdd", .. })
        ));
        let err = check_sdd(&[256, 100], &[512, 100], true, t).unwrap_err();
        assert!(matches!(err, Error::Misaligned { op: "sdd", .. }));
        assert!(err.to_string().contains("pad it to 104"), "{err}");
    }

    #[test]
    fn unsupported_block_size_is_rejected() {
        let t = SparseDims {
            block_size: 64,
            ..dims(256, 512, false)
        };
        let unsupported = |e| matches!(e, Error::UnsupportedBlockSize { block_size: 64, .. });
        assert!(unsupported(
            check_sdd(&[256, 64], &[512, 64], true, t).unwrap_err()
        ));
        assert!(unsupported(check_dsd(t, &[512, 64]).unwrap_err()));
        assert!(unsupported(check_dds(&[64, 256], t).unwrap_err()));
    }

    #[test]
    fn dsd_shapes() {
        assert_eq!(check_dsd(dims(256, 512, false), &[512, 72]), Ok([256, 72]));
        assert_eq!(check_dsd(dims(256, 512, true), &[256, 72]), Ok([512, 72]));
        // Zero rows of op(S) give an empty output, not an error.
        assert_eq!(check_dsd(dims(0, 512, false), &[512, 8]), Ok([0, 8]));
        assert!(matches!(
            check_dsd(dims(256, 512, true), &[512, 72]),
            Err(Error::ShapeMismatch { op: "dsd", .. })
        ));
        assert!(matches!(
            check_dsd(dims(256, 512, false), &[512, 70]),
            Err(Error::Misaligned { op: "dsd", .. })
        ));
        assert!(matches!(
            check_dsd(dims(0, 512, true), &[0, 8]),
            Err(Error::Empty { op: "dsd", .. })
        ));
        assert!(matches!(
            check_dsd(dims(256, 512, false), &[512]),
            Err(Error::ShapeMismatch { op: "dsd", .. })
        ));
    }

    #[test]
    fn dds_shapes() {
        // Any number of rows of A, including ones that are not multiples of 8.
        assert_eq!(check_dds(&[5, 256], dims(256, 512, false)), Ok([5, 512]));
        assert_eq!(check_dds(&[300, 512], dims(256, 512, true)), Ok([300, 256]));
        assert!(matches!(
            check_dds(&[5, 512], dims(256, 512, false)),
            Err(Error::ShapeMismatch { op: "dds", .. })
        ));
        assert!(matches!(
            check_dds(&[5, 0], dims(0, 512, false)),
            Err(Error::Empty { op: "dds", .. })
        ));
    }

    #[test]
    fn output_overflow_is_rejected() {
        let err = check_dsd(dims(1 << 20, 128, false), &[128, 1 << 12]).unwrap_err();
        assert!(matches!(err, Error::IndexOverflow { .. }), "{err}");
        let err = check_dds(&[1 << 12, 128], dims(1 << 20, 128, true)).unwrap_err();
        assert!(matches!(err, Error::IndexOverflow { .. }), "{err}");
    }

    #[test]
    fn grid_counts_tiles_of_the_dense_side() {
        assert_eq!(check_grid(3, 1), Ok(3));
        assert_eq!(check_grid(3, 128), Ok(3));
        assert_eq!(check_grid(3, 129), Ok(6));
        assert_eq!(check_grid(3, 0), Ok(0));
    }

    #[test]
    fn out_shape_must_match() {
        assert_eq!(check_out("dsd", [4, 8], &[4, 8]), Ok(()));
        assert!(matches!(
            check_out("dsd", [4, 8], &[8, 4]),
            Err(Error::ShapeMismatch { op: "dsd", .. })
        ));
    }
}

/// The kernels on a capacity topology (more block rows than used, as a
/// topology built on the device from the padded-token bound): only the true
/// blocks are read or written, and output rows / columns of unused block rows
/// are zero.
#[cfg(test)]
mod capacity_tests {
    use super::*;
    use crate::dtype::DType;
    use crate::reference;
    use crate::sparse::BlockSparse;
    use crate::topology::Topology;
    use ndarray::{s, Array2};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// `topology` with `extra` unused block rows of capacity: index arrays
    /// padded with zeros, offsets of the unused rows equal to the block count.
    fn with_spare_rows(backend: &CudaBackend, topology: &Topology, extra: usize) -> DeviceTopology {
        let per_row = topology.num_blocks() / topology.block_rows();
        let max_block_rows = topology.block_rows() + extra;
        let max_blocks = max_block_rows * per_row;
        let nnz = topology.num_blocks() as i32;
        let pad = |v: &[i32], len: usize, fill: i32| {
            let mut v = v.to_vec();
            v.resize(len, fill);
            DeviceTensor::from_host(backend, &[len], &v).expect("upload")
        };
        DeviceTopology {
            block_size: topology.block_size(),
            max_block_rows,
            block_cols: topology.block_cols(),
            max_blocks,
            row_indices: pad(topology.row_indices(), max_blocks, 0),
            column_indices: pad(topology.column_indices(), max_blocks, 0),
            offsets: pad(topology.offsets(), max_block_rows + 1, nnz),
            column_indices_t: pad(topology.column_indices_t(), max_blocks, 0),
            offsets_t: pad(topology.offsets_t(), topology.block_cols() + 1, nnz),
            block_offsets_t: pad(topology.block_offsets_t(), max_blocks, 0),
        }
    }

    fn random(rng: &mut StdRng, n: usize) -> Vec<bf16> {
        (0..n)
            .map(|_| bf16::from_f32(rng.gen_range(-1.0f32..1.0)))
            .collect()
    }

    /// `[rows, cols]` random values, NaN from row `rows_used` / column `cols_used` on.
    fn poisoned(rng: &mut StdRng, shape: (usize, usize), used: (usize, usize)) -> Array2<bf16> {
        let mut x = Array2::from_shape_vec(shape, random(rng, shape.0 * shape.1)).expect("shape");
        x.slice_mut(s![used.0.., ..]).fill(bf16::NAN);
        x.slice_mut(s![.., used.1..]).fill(bf16::NAN);
        x
    }

    fn assert_close(got: &[bf16], want: &[bf16], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        let scale = want
            .iter()
            .map(|v| v.to_f32().abs())
            .fold(f32::MIN_POSITIVE, f32::max);
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let err = (g.to_f32() - w.to_f32()).abs();
            assert!(
                err <= DType::BF16.rel_tolerance() * scale,
                "{what}[{i}]: got {g}, want {w} (scale {scale})"
            );
        }
    }

    #[test]
    #[ignore = "requires a CUDA device"]
    fn capacity_topology() {
        let backend = CudaBackend::try_new().expect("a CUDA device");
        let mut rng = StdRng::seed_from_u64(7);
        let topo = Arc::new(Topology::from_tokens_per_expert(&[130, 0, 7], 256, 128).unwrap());
        let dev_topo = Arc::new(with_spare_rows(&backend, &topo, 3));
        let (rows, cap_rows, cols, h, m) = (topo.rows(), dev_topo.rows(), topo.cols(), 72, 77);
        let nnz_values = topo.num_elements();

        // SDD: blocks past the true count stay as they were (NaN).
        let a = poisoned(&mut rng, (cap_rows, h), (rows, h));
        let b = poisoned(&mut rng, (cols, h), (cols, h));
        let want = reference::sdd(a.slice(s![..rows, ..]), b.view(), true, &topo).unwrap();
        let (da, db) = (
            DeviceTensor::from_array(&backend, a.view()).unwrap(),
            DeviceTensor::from_array(&backend, b.view()).unwrap(),
        );
        let mut out = DeviceBlockSparse::filled(&backend, dev_topo.clone(), bf16::NAN).unwrap();
        sdd_into(&backend, &da, &db, true, &mut out).unwrap();
        let got = out.data().to_host(&backend).unwrap();
        assert_close(&got[..nnz_values], want.data(), "sdd");
        assert!(
            got[nnz_values..].iter().all(|v| v.is_nan()),
            "sdd wrote past the true blocks"
        );

        // The sparse operand: NaN in the unused capacity blocks.
        let mut values = random(&mut rng, dev_topo.max_blocks() * 128 * 128);
        values[nnz_values..].fill(bf16::NAN);
        let s_host = BlockSparse::new(topo.clone(), values[..nnz_values].to_vec()).unwrap();
        let s_dev = DeviceBlockSparse::new(
            dev_topo.clone(),
            DeviceTensor::from_host(&backend, &[values.len()], &values).unwrap(),
        )
        .unwrap();

        // DSD: [cap_rows, cols] x [cols, h]; unused rows are zero.
        let b = poisoned(&mut rng, (cols, h), (cols, h));
        let want = reference::dsd(s_host.view(), b.view()).unwrap();
        let db = DeviceTensor::from_array(&backend, b.view()).unwrap();
        let mut out = DeviceTensor::filled(&backend, &[cap_rows, h], bf16::NAN).unwrap();
        dsd_into(&backend, s_dev.view(), &db, &mut out).unwrap();
        let got = out.to_array2(&backend).unwrap();
        assert_close(
            got.slice(s![..rows, ..]).as_slice().unwrap(),
            want.as_slice().unwrap(),
            "dsd",
        );
        assert!(
            got.slice(s![rows.., ..]).iter().all(|v| v.to_f32() == 0.0),
            "dsd rows past the used rows"
        );

        // DSD transposed: [cols, cap_rows] x [cap_rows, h]; unused rows of B are never read.
        let b = poisoned(&mut rng, (cap_rows, h), (rows, h));
        let want = reference::dsd(s_host.t(), b.slice(s![..rows, ..])).unwrap();
        let db = DeviceTensor::from_array(&backend, b.view()).unwrap();
        let mut out = DeviceTensor::filled(&backend, &[cols, h], bf16::NAN).unwrap();
        dsd_into(&backend, s_dev.t(), &db, &mut out).unwrap();
        assert_close(
            &out.to_host(&backend).unwrap(),
            want.as_slice().unwrap(),
            "dsd^T",
        );

        // DDS: [m, cap_rows] x [cap_rows, cols]; unused columns of A are never read.
        let a = poisoned(&mut rng, (m, cap_rows), (m, rows));
        let want = reference::dds(a.slice(s![.., ..rows]), s_host.view()).unwrap();
        let da = DeviceTensor::from_array(&backend, a.view()).unwrap();
        let mut out = DeviceTensor::filled(&backend, &[m, cols], bf16::NAN).unwrap();
        dds_into(&backend, &da, s_dev.view(), &mut out).unwrap();
        assert_close(
            &out.to_host(&backend).unwrap(),
            want.as_slice().unwrap(),
            "dds",
        );

        // DDS transposed: [m, cols] x [cols, cap_rows]; unused columns are zero.
        let a = poisoned(&mut rng, (m, cols), (m, cols));
        let want = reference::dds(a.view(), s_host.t()).unwrap();
        let da = DeviceTensor::from_array(&backend, a.view()).unwrap();
        let mut out = DeviceTensor::filled(&backend, &[m, cap_rows], bf16::NAN).unwrap();
        dds_into(&backend, &da, s_dev.t(), &mut out).unwrap();
        let got = out.to_array2(&backend).unwrap();
        let got_used: Vec<bf16> = got.slice(s![.., ..rows]).iter().copied().collect();
        assert_close(&got_used, want.as_slice().unwrap(), "dds^T");
        assert!(
            got.slice(s![.., rows..]).iter().all(|v| v.to_f32() == 0.0),
            "dds^T columns past the used rows"
        );
    }
}
