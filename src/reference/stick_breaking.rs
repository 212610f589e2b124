//! CPU reference of stick-breaking attention (ModuleFormer / MoLM).
//!
//! For a query `i` at absolute position `p` and the keys `j <= p` (the
//! diagonal included, as IBM's `tril` mask has it), with
//! `z_ij = q_i · k_j / sqrt(head_size)` and `β_ij = sigmoid(z_ij)`, the weight
//! of key `j` is `w_ij = β_ij · Π_{j < l <= p} (1 − β_il)` and the output is
//! `Σ_j w_ij v_j`. There is no softmax: the weights sum to at most 1.
//!
//! The math is f32 in log space: `log β = log_sigmoid(z)` and
//! `log(1 − β) = log_sigmoid(−z)`; the keys are walked from the diagonal
//! backwards, accumulating `Σ_{j < l <= p} log(1 − β_il)` so one pass gives
//! every weight as `exp(log β_ij + acc)`. The output is rounded to `T` once.
//!
//! IBM's `history_length` and `block_size` only size the unused `mask` and
//! `cum_weight` buffers: the forward rebuilds both for the actual context, so
//! there is no attention window and this op takes no such parameter.

use ndarray::{Array3, ArrayView3};

use crate::dtype::Element;
use crate::error::{Error, Result};

/// `log(sigmoid(x))` in f32, stable for large `|x|`: `min(x, 0) − ln(1 + e^{−|x|})`.
pub fn log_sigmoid(x: f32) -> f32 {
    x.min(0.0) - (-x.abs()).exp().ln_1p()
}

/// Checks the shapes of one sequence's `q`, `k`, `v` and returns
/// `(q_len, q_heads, kv_len, kv_heads, head_size)`.
///
/// Errors: [`Error::Empty`] for a zero length, head count or head size,
/// [`Error::ShapeMismatch`] when `k` and `v` differ, the head sizes differ or
/// `q_len > kv_len`, [`Error::InvalidConfig`] when `kv_heads` does not divide
/// `q_heads`.
pub fn check_shapes(
    op: &'static str,
    q: (usize, usize, usize),
    k: (usize, usize, usize),
    v: (usize, usize, usize),
) -> Result<(usize, usize, usize, usize, usize)> {
    let (q_len, q_heads, head_size) = q;
    let (kv_len, kv_heads, k_head_size) = k;
    for (what, n) in [
        ("q_len (rows of q)", q_len),
        ("q_heads", q_heads),
        ("head_size", head_size),
        ("kv_len (rows of k)", kv_len),
        ("kv_heads", kv_heads),
    ] {
        if n == 0 {
            return Err(Error::Empty { op, what });
        }
    }
    if v != k {
        return Err(Error::ShapeMismatch {
            op,
            message: format!(
                "v [kv_len, kv_heads, head_size] must have the shape of k {k:?}, found {v:?}"
            ),
        });
    }
    if k_head_size != head_size {
        return Err(Error::ShapeMismatch {
            op,
            message: format!(
                "k and v must have the head size of q ({head_size}), found {k_head_size}"
            ),
        });
    }
    if q_heads % kv_heads != 0 {
        return Err(Error::InvalidConfig(format!(
            "stick-breaking attention needs kv_heads ({kv_heads}) to divide q_heads ({q_heads})"
        )));
    }
    if q_len > kv_len {
        return Err(Error::ShapeMismatch {
            op,
            message: format!(
                "the queries are the last q_len positions of the context, so q_len ({q_len}) must be <= kv_len ({kv_len})"
            ),
        });
    }
    Ok((q_len, q_heads, kv_len, kv_heads, head_size))
}

/// Stick-breaking attention of one sequence.
///
/// `q` is `[q_len, q_heads, head_size]`, `k` and `v` are
/// `[kv_len, kv_heads, head_size]`; query head `h` reads key/value head
/// `h % kv_heads` (so in a mixture of attention, slot `s` and head `h` of an
/// `n_head`-head expert is query head `s * n_head + h`). Query row `i` sits
/// at absolute position `kv_len − q_len + i` (a decode step with a KV cache
/// has `q_len = 1`, a full forward `q_len = kv_len`) and attends the keys at
/// positions up to and including its own. Output `[q_len, q_heads, head_size]`.
///
/// Errors: those of [`check_shapes`].
pub fn stick_breaking<T: Element>(
    q: ArrayView3<T>,
    k: ArrayView3<T>,
    v: ArrayView3<T>,
) -> Result<Array3<T>> {
    let (q_len, q_heads, kv_len, kv_heads, head_size) =
        check_shapes("stick_breaking", q.dim(), k.dim(), v.dim())?;
    let scale = 1.0 / (head_size as f32).sqrt();
    let mut out = Array3::<T>::default(q.dim());
    let mut acc = vec![0.0f32; head_size];
    for i in 0..q_len {
        let pos = kv_len - q_len + i;
        for h in 0..q_heads {
            let kvh = h % kv_heads;
            acc.iter_mut().for_each(|a| *a = 0.0);
            let mut log_rest = 0.0f32;
            for j in (0..=pos).rev() {
                let z = (0..head_size).fold(0.0f32, |a, d| {
                    a + q[[i, h, d]].to_f32() * k[[j, kvh, d]].to_f32()
                }) * scale;
                let w = (log_sigmoid(z) + log_rest).exp();
                log_rest += log_sigmoid(-z);
                for (d, a) in acc.iter_mut().enumerate() {
                    *a += w * v[[j, kvh, d]].to_f32();
                }
            }
            for (d, &a) in acc.iter().enumerate() {
                out[[i, h, d]] = T::from_f32(a);
            }
        }
    }
    Ok(out)
}
