//! GPU stick-breaking attention (ModuleFormer / MoLM) over a KV cache, held to
//! [`crate::reference::stick_breaking::stick_breaking`]: prefill (every query
//! of a batch of sequences) and decoding (a few new queries against a cache of
//! `kv_len` rows) are one op. The cache layout is that of
//! [`super::lm::attention_cached`] and [`super::lm::write_kv`]: sequence `b`'s
//! keys are rows `b * tmax .. b * tmax + kv_len` of `[batch * tmax, cols]`.
//!
//! Shapes are checked on the host from shapes alone; nothing here
//! synchronises the host.

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::kernels::STICK_BREAKING;
use super::{CudaBackend, DeviceElement, DeviceTensor};
use crate::dtype::Element;
use crate::error::{Error, Result};
use crate::reference::stick_breaking::check_shapes;

/// Threads per block (`kThreads` in `cuda/stick_breaking.cu`).
const THREADS: u32 = 128;
/// Query rows per block (`kTileQ`).
const TILE_Q: usize = 16;
/// Largest head size the kernel takes (`kMaxHeadDim`).
pub const MAX_HEAD_SIZE: usize = 128;
/// Largest grid y / z dimension of a launch.
const GRID_YZ_MAX: usize = 65535;

/// Checks a call (see [`stick_breaking_cached`]); returns `(tq, tmax, q_heads)`.
fn check(
    q: &[usize],
    k_cache: &[usize],
    v_cache: &[usize],
    kv_len: usize,
    batch: usize,
    kv_heads: usize,
    head_size: usize,
) -> Result<(usize, usize, usize)> {
    const OP: &str = "stick_breaking::stick_breaking_cached";
    for (what, n) in [
        ("the batch", batch),
        ("kv_heads", kv_heads),
        ("head_size", head_size),
        ("kv_len", kv_len),
    ] {
        if n == 0 {
            return Err(Error::Empty { op: OP, what });
        }
    }
    if head_size > MAX_HEAD_SIZE {
        return Err(Error::InvalidConfig(format!(
            "head_size = {head_size} exceeds the GPU stick-breaking kernel's limit of {MAX_HEAD_SIZE}"
        )));
    }
    let (q_rows, q_cols, k_rows, k_cols) = match (q, k_cache) {
        ([qr, qc], [kr, kc]) => (*qr, *qc, *kr, *kc),
        _ => {
            return Err(Error::ShapeMismatch {
                op: OP,
                message: format!(
                    "q [batch * tq, q_heads * head_size] and the caches [batch * tmax, kv_heads * head_size] must be 2-D, found {q:?} and {k_cache:?}"
                ),
            })
        }
    };
    if q_rows % batch != 0
        || k_rows % batch != 0
        || q_cols % head_size != 0
        || k_cols != kv_heads * head_size
    {
        return Err(Error::ShapeMismatch {
            op: OP,
            message: format!(
                "q {q:?} must be [batch * tq, q_heads * head_size] and the caches {k_cache:?} [batch * tmax, kv_heads * head_size] with batch = {batch}, kv_heads = {kv_heads}, head_size = {head_size}"
            ),
        });
    }
    let (tq, tmax) = (q_rows / batch, k_rows / batch);
    if kv_len > tmax {
        return Err(Error::ShapeMismatch {
            op: OP,
            message: format!("kv_len ({kv_len}) must be <= the cache's rows per sequence ({tmax})"),
        });
    }
    if v_cache != k_cache {
        return Err(Error::ShapeMismatch {
            op: OP,
            message: format!(
                "v_cache must have the shape of k_cache {k_cache:?}, found {v_cache:?}"
            ),
        });
    }
    let kv = (kv_len, kv_heads, head_size);
    let (_, q_heads, _, _, _) = check_shapes(OP, (tq, q_cols / head_size, head_size), kv, kv)?;
    if q_heads > GRID_YZ_MAX || batch > GRID_YZ_MAX {
        return Err(Error::InvalidConfig(format!(
            "stick-breaking launches one grid row per query head and sequence: at most {GRID_YZ_MAX} each, found {q_heads} heads and a batch of {batch}"
        )));
    }
    crate::error::check_i32("the cache elements", (k_rows * k_cols) as u128)?;
    crate::error::check_i32("the query elements", (q_rows * q_cols) as u128)?;
    Ok((tq, tmax, q_heads))
}

/// Causal stick-breaking attention of `batch` sequences over a KV cache.
///
/// `q` is `[batch * tq, q_heads * head_size]`; `k_cache` and `v_cache` are
/// `[batch * tmax, kv_heads * head_size]`, sequence `b`'s keys being cache
/// rows `b * tmax .. b * tmax + kv_len` (rows past `kv_len` are never read).
/// Query row `i` of a sequence sits at position `kv_len - tq + i` and attends
/// the keys up to and including its own; query head `h` reads kv head
/// `h % kv_heads`. A full forward has `tq = kv_len` (`tmax = kv_len` lets
/// `k` and `v` themselves be the caches); a decode step `tq = 1`. Equals
/// [`crate::reference::stick_breaking::stick_breaking`] per sequence, f32 log
/// space math, output `[batch * tq, q_heads * head_size]` rounded once.
///
/// Errors: [`Error::Empty`] for a zero batch, heads, head_size or kv_len,
/// [`Error::InvalidConfig`] when `kv_heads` does not divide the query heads,
/// `head_size > 128` or the grid does not fit, [`Error::ShapeMismatch`] for
/// operands that do not fit these shapes or `tq <= kv_len <= tmax` not
/// holding, [`Error::IndexOverflow`] past i32 indexing.
#[allow(clippy::too_many_arguments)]
pub fn stick_breaking_cached<T: DeviceElement + Element>(
    backend: &CudaBackend,
    q: &DeviceTensor<T>,
    k_cache: &DeviceTensor<T>,
    v_cache: &DeviceTensor<T>,
    kv_len: usize,
    batch: usize,
    kv_heads: usize,
    head_size: usize,
) -> Result<DeviceTensor<T>> {
    let (tq, tmax, q_heads) = check(
        q.shape(),
        k_cache.shape(),
        v_cache.shape(),
        kv_len,
        batch,
        kv_heads,
        head_size,
    )?;
    let mut out = DeviceTensor::<T>::zeros(backend, q.shape())?;
    let func = backend.function(STICK_BREAKING, &format!("dl_stick_breaking_{}", T::SUFFIX))?;
    let scale = 1.0 / (head_size as f32).sqrt();
    let (tq_i, tmax_i, kv_i) = (tq as i32, tmax as i32, kv_len as i32);
    let (hq_i, hkv_i, d_i) = (q_heads as i32, kv_heads as i32, head_size as i32);
    let cfg = LaunchConfig {
        grid_dim: (tq.div_ceil(TILE_Q) as u32, q_heads as u32, batch as u32),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
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
        .arg(&scale);
    // SAFETY: dl_stick_breaking_T(const T* q, const T* k_cache,
    // const T* v_cache, T* out, i32 tq, i32 tmax, i32 kv_len, i32 hq, i32 hkv,
    // i32 d, float scale) runs 128 threads per block, one block per (tile of
    // 16 query rows, head < hq, sequence < batch); it reads q and writes out
    // ([batch * tq, hq * d]) at rows of its tile below tq, and reads cache
    // rows b * tmax + j with j <= kv_len - 1 < tmax, columns of kv head
    // h % hkv < hkv (caches [batch * tmax, hkv * d]); all checked above, with
    // 1 <= d <= 128 (its static shared arrays) and every index within i32.
    unsafe { launch.launch(cfg) }?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let kv = [20, 16];
        assert_eq!(check(&[6, 32], &kv, &kv, 7, 2, 2, 8).unwrap(), (3, 10, 4));
        assert!(matches!(
            check(&[6, 32], &kv, &kv, 2, 2, 2, 8),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            check(&[6, 32], &kv, &kv, 11, 2, 2, 8),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            check(&[6, 24], &kv, &kv, 7, 2, 2, 8),
            Err(Error::InvalidConfig(_))
        ));
        assert!(matches!(
            check(&[6, 32], &kv, &[20, 8], 7, 2, 2, 8),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            check(&[6, 32], &kv, &kv, 0, 2, 2, 8),
            Err(Error::Empty { .. })
        ));
        assert!(matches!(
            check(&[5, 32], &kv, &kv, 7, 2, 2, 8),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            check(&[2, 256], &[4, 256], &[4, 256], 2, 1, 1, 256),
            Err(Error::InvalidConfig(_))
        ));
    }
}
