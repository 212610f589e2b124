//! CPU reference of the language-model ops around a dMoE layer: embedding
//! lookup, RMSNorm, LayerNorm, rotary position embedding, causal grouped-query attention
//! and residual addition. Plain functions over row-major 2-D arrays, f32
//! arithmetic, results rounded once to `T`; the GPU kernels are held to these.

use ndarray::{Array2, ArrayView1, ArrayView2};

use crate::dtype::Element;
use crate::error::{Error, Result};
use crate::reference::gemm;

/// Checks that a 2-D operand has `want` columns.
fn expect_cols(op: &'static str, name: &str, cols: usize, want: usize) -> Result<()> {
    if cols == want {
        Ok(())
    } else {
        Err(Error::ShapeMismatch {
            op,
            message: format!("{name} must have {want} columns, found {cols}"),
        })
    }
}

/// Rows `ids` of `table` (`[vocab, hidden]`): the token embeddings, `[ids.len(), hidden]`.
///
/// Errors: [`Error::Empty`] for no ids, [`Error::InvalidConfig`] for an id
/// outside `0..vocab`.
pub fn embedding<T: Element>(table: ArrayView2<T>, ids: &[u32]) -> Result<Array2<T>> {
    const OP: &str = "lm::embedding";
    if ids.is_empty() {
        return Err(Error::Empty {
            op: OP,
            what: "the number of token ids",
        });
    }
    let (vocab, hidden) = table.dim();
    let mut out = Array2::<T>::default((ids.len(), hidden));
    for (i, &id) in ids.iter().enumerate() {
        if id as usize >= vocab {
            return Err(Error::InvalidConfig(format!(
                "token id {id} at position {i} is out of range: the vocabulary has {vocab} tokens (ids 0..{vocab})"
            )));
        }
        out.row_mut(i).assign(&table.row(id as usize));
    }
    Ok(out)
}

/// A norm's `eps`: finite and `>= 0`, else [`Error::InvalidConfig`].
fn check_eps(norm: &str, eps: f32) -> Result<()> {
    if eps >= 0.0 && eps.is_finite() {
        Ok(())
    } else {
        Err(Error::InvalidConfig(format!(
            "{norm} eps must be finite and >= 0, found {eps}"
        )))
    }
}

/// RMSNorm of each row of `x` (`[rows, dim]`): `x * rsqrt(mean(x²) + eps)` in
/// f32, then times `weight` (`[dim]`), rounded once.
///
/// Errors: [`Error::ShapeMismatch`] when `weight` is not `[dim]`,
/// [`Error::InvalidConfig`] for a negative or non-finite `eps`.
pub fn rms_norm<T: Element>(
    x: ArrayView2<T>,
    weight: ArrayView1<T>,
    eps: f32,
) -> Result<Array2<T>> {
    const OP: &str = "lm::rms_norm";
    expect_cols(
        OP,
        "x [rows, dim] with dim = weight.len()",
        x.ncols(),
        weight.len(),
    )?;
    check_eps("rms_norm", eps)?;
    let dim = x.ncols();
    let mut out = Array2::<T>::default(x.dim());
    for (row, mut out_row) in x.rows().into_iter().zip(out.rows_mut()) {
        let sum_sq = row.iter().fold(0.0f32, |acc, &v| {
            let v = v.to_f32();
            acc + v * v
        });
        let scale = 1.0 / (sum_sq / dim as f32 + eps).sqrt();
        for ((o, &v), &w) in out_row.iter_mut().zip(row.iter()).zip(weight.iter()) {
            *o = T::from_f32(v.to_f32() * scale * w.to_f32());
        }
    }
    Ok(out)
}

/// LayerNorm of each row of `x` (`[rows, dim]`) with `weight` and `bias`
/// (`[dim]`): in f32, `mean = Σx / dim`, the biased `var = Σ(x - mean)² /
/// dim`, `(x - mean) * (1 / sqrt(var + eps)) * weight + bias`, rounded once.
///
/// Errors: [`Error::ShapeMismatch`] when `weight` or `bias` is not `[dim]`,
/// [`Error::InvalidConfig`] for a negative or non-finite `eps`.
pub fn layer_norm<T: Element>(
    x: ArrayView2<T>,
    weight: ArrayView1<T>,
    bias: ArrayView1<T>,
    eps: f32,
) -> Result<Array2<T>> {
    const OP: &str = "lm::layer_norm";
    expect_cols(
        OP,
        "x [rows, dim] with dim = weight.len()",
        x.ncols(),
        weight.len(),
    )?;
    expect_cols(
        OP,
        "x [rows, dim] with dim = bias.len()",
        x.ncols(),
        bias.len(),
    )?;
    check_eps("layer_norm", eps)?;
    let n = x.ncols() as f32;
    let mut out = Array2::<T>::default(x.dim());
    for (row, mut out_row) in x.rows().into_iter().zip(out.rows_mut()) {
        let mean = row.iter().map(|v| v.to_f32()).sum::<f32>() / n;
        let var = row.iter().map(|v| (v.to_f32() - mean).powi(2)).sum::<f32>() / n;
        let inv = 1.0 / (var + eps).sqrt();
        for (((o, &v), &w), &b) in out_row
            .iter_mut()
            .zip(row.iter())
            .zip(weight.iter())
            .zip(bias.iter())
        {
            *o = T::from_f32((v.to_f32() - mean) * inv * w.to_f32() + b.to_f32());
        }
    }
    Ok(out)
}

/// Rotary position embedding in the half-split (NeoX) form on
/// `x` = `[tokens, heads * head_dim]`; row `t` is at `positions[t]`.
///
/// For each head and `i < head_dim / 2`, with
/// `f = positions[t] / theta^(2i / head_dim)`:
/// `out[i] = x[i] cos f - x[i + half] sin f` and
/// `out[i + half] = x[i + half] cos f + x[i] sin f`.
///
/// Errors: [`Error::InvalidConfig`] for an odd or zero `head_dim` or a
/// `theta <= 0`, [`Error::ShapeMismatch`] when the columns are not a multiple
/// of `head_dim` or `positions` does not have one entry per row.
pub fn rope<T: Element>(
    x: ArrayView2<T>,
    positions: &[usize],
    head_dim: usize,
    theta: f32,
) -> Result<Array2<T>> {
    const OP: &str = "lm::rope";
    if head_dim == 0 || !head_dim.is_multiple_of(2) {
        return Err(Error::InvalidConfig(format!(
            "rope head_dim must be even and positive, found {head_dim}"
        )));
    }
    if !(theta > 0.0 && theta.is_finite()) {
        return Err(Error::InvalidConfig(format!(
            "rope theta must be finite and positive, found {theta}"
        )));
    }
    let (tokens, cols) = x.dim();
    if cols % head_dim != 0 {
        return Err(Error::ShapeMismatch {
            op: OP,
            message: format!("x has {cols} columns, not a multiple of head_dim = {head_dim}"),
        });
    }
    if positions.len() != tokens {
        return Err(Error::ShapeMismatch {
            op: OP,
            message: format!(
                "positions must have one entry per row of x ({tokens}), found {}",
                positions.len()
            ),
        });
    }
    let half = head_dim / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32))
        .collect();
    let mut out = Array2::<T>::default(x.dim());
    for (t, &pos) in positions.iter().enumerate() {
        let (sin, cos): (Vec<f32>, Vec<f32>) =
            inv_freq.iter().map(|&f| (pos as f32 * f).sin_cos()).unzip();
        for head in 0..cols / head_dim {
            let base = head * head_dim;
            for i in 0..half {
                let a = x[[t, base + i]].to_f32();
                let b = x[[t, base + half + i]].to_f32();
                out[[t, base + i]] = T::from_f32(a * cos[i] - b * sin[i]);
                out[[t, base + half + i]] = T::from_f32(b * cos[i] + a * sin[i]);
            }
        }
    }
    Ok(out)
}

/// Causal grouped-query attention for `batch` sequences.
///
/// `q` is `[batch * tq, num_heads * head_dim]`, `k` and `v` are
/// `[batch * tk, num_kv_heads * head_dim]`, rows grouped by sequence. The `tq`
/// queries of a sequence sit at positions `tk - tq .. tk` (a KV-cached decode
/// step has `tq = 1`; a full forward `tq = tk`) and see the keys at positions
/// up to their own. Query head `h` reads key/value head
/// `h / (num_heads / num_kv_heads)`. Scores `q·k / sqrt(head_dim)`, softmax and
/// the weighted sum of values in f32; output `[batch * tq, num_heads * head_dim]`
/// rounded once.
///
/// Errors: [`Error::Empty`] for a zero batch, heads or head_dim,
/// [`Error::InvalidConfig`] when `num_kv_heads` does not divide `num_heads`,
/// [`Error::ShapeMismatch`] for operands that do not fit these shapes or
/// `tq > tk`.
#[allow(clippy::too_many_arguments)]
pub fn attention<T: Element>(
    q: ArrayView2<T>,
    k: ArrayView2<T>,
    v: ArrayView2<T>,
    batch: usize,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
) -> Result<Array2<T>> {
    const OP: &str = "lm::attention";
    for (what, n) in [
        ("the batch", batch),
        ("num_heads", num_heads),
        ("num_kv_heads", num_kv_heads),
        ("head_dim", head_dim),
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
    expect_cols(
        OP,
        "q [batch * tq, num_heads * head_dim]",
        q.ncols(),
        num_heads * head_dim,
    )?;
    expect_cols(
        OP,
        "k [batch * tk, num_kv_heads * head_dim]",
        k.ncols(),
        num_kv_heads * head_dim,
    )?;
    if v.dim() != k.dim() {
        return Err(Error::ShapeMismatch {
            op: OP,
            message: format!(
                "v must have the shape of k {:?}, found {:?}",
                k.dim(),
                v.dim()
            ),
        });
    }
    if !q.nrows().is_multiple_of(batch) || !k.nrows().is_multiple_of(batch) {
        return Err(Error::ShapeMismatch {
            op: OP,
            message: format!(
                "q rows ({}) and k rows ({}) must be multiples of the batch {batch}",
                q.nrows(),
                k.nrows()
            ),
        });
    }
    let (tq, tk) = (q.nrows() / batch, k.nrows() / batch);
    if tq == 0 || tq > tk {
        return Err(Error::ShapeMismatch {
            op: OP,
            message: format!("each sequence needs 1 <= tq <= tk, found tq = {tq}, tk = {tk}"),
        });
    }
    let group = num_heads / num_kv_heads;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let mut out = Array2::<T>::default(q.dim());
    let mut scores = vec![0.0f32; tk];
    let mut acc = vec![0.0f32; head_dim];
    for b in 0..batch {
        for i in 0..tq {
            let row = b * tq + i;
            let visible = tk - tq + i + 1;
            for h in 0..num_heads {
                let qc = h * head_dim;
                let kc = (h / group) * head_dim;
                let q_row = q.row(row);
                let mut max = f32::NEG_INFINITY;
                for (j, s) in scores.iter_mut().enumerate().take(visible) {
                    let k_row = k.row(b * tk + j);
                    let dot = (0..head_dim).fold(0.0f32, |a, d| {
                        a + q_row[qc + d].to_f32() * k_row[kc + d].to_f32()
                    });
                    *s = dot * scale;
                    max = max.max(*s);
                }
                let mut denom = 0.0f32;
                for s in scores.iter_mut().take(visible) {
                    *s = (*s - max).exp();
                    denom += *s;
                }
                acc.iter_mut().for_each(|a| *a = 0.0);
                for (j, &s) in scores.iter().enumerate().take(visible) {
                    let v_row = v.row(b * tk + j);
                    for (d, a) in acc.iter_mut().enumerate() {
                        *a += s * v_row[kc + d].to_f32();
                    }
                }
                for (d, &a) in acc.iter().enumerate() {
                    out[[row, qc + d]] = T::from_f32(a / denom);
                }
            }
        }
    }
    Ok(out)
}

/// Element-wise `a + b` in f32, rounded once (the residual connection).
///
/// Errors: [`Error::ShapeMismatch`] when the shapes differ.
pub fn add<T: Element>(a: ArrayView2<T>, b: ArrayView2<T>) -> Result<Array2<T>> {
    if a.dim() != b.dim() {
        return Err(Error::ShapeMismatch {
            op: "lm::add",
            message: format!(
                "operands must have one shape, found {:?} and {:?}",
                a.dim(),
                b.dim()
            ),
        });
    }
    let mut out = Array2::<T>::default(a.dim());
    for ((o, &x), &y) in out.iter_mut().zip(a.iter()).zip(b.iter()) {
        *o = T::from_f32(x.to_f32() + y.to_f32());
    }
    Ok(out)
}

/// A linear layer's product `x · weightᵀ` in f32 (`x` is `[rows, in]`,
/// `weight` is `[out, in]`, the Hugging Face layout), unrounded: operands
/// widened to f32 once, f32 accumulation, every rayon thread.
///
/// Errors: [`Error::ShapeMismatch`] when `weight` has not `in` columns.
pub fn linear<T: Element>(x: ArrayView2<T>, weight: ArrayView2<T>) -> Result<Array2<f32>> {
    expect_cols("lm::linear", "weight", weight.ncols(), x.ncols())?;
    Ok(gemm::matmul_t(x, weight.t()))
}
