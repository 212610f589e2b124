//! ModuleFormer's MoE layers on the CPU: the routers, the MLP mixture of
//! experts and the mixture-of-attention layer (forward), composed from
//! [`crate::reference::routing::route`], the [`crate::reference::expert_map`]
//! map / reduce and [`crate::reference::stick_breaking::stick_breaking`].
//!
//! Layouts are the checkpoint's: router linears are `nn.Linear`
//! (`[out, in]`, used as `x · Wᵀ`), expert weights are stacked
//! `[experts, in, out]` and used as `x · W`.
//!
//! - Router: "mlp" is `Linear(hidden → gating, bias) → exact GeLU →
//!   Linear(gating → experts, no bias)`, "linear" one `Linear` without bias;
//!   softmax over the experts and the top-k probabilities as gates, **not**
//!   renormalised.
//! - MLP MoE: `Σ_s g_s · act(x · W_e) · V_e`.
//! - Mixture of attention: per slot, expert `e`'s query `x · Q_e` viewed as
//!   `n_head` heads, keys and values shared (`Linear` with bias, or the
//!   identity when the layer has no k/v projections), stick-breaking
//!   attention over the causal prefix, expert `e`'s output projection, the
//!   gate-weighted sum over the slots. [`moa_forward`] takes one sequence's
//!   past keys and values (a KV cache) and returns the new ones.
//!
//! Rounding: each stored intermediate (router hidden, expert activations,
//! keys, values, queries, attention output) is rounded to `T` once, as a GPU
//! composition stores it; router logits stay f32.

use ndarray::{concatenate, Array1, Array2, Array3, ArrayView2, ArrayView3, Axis};

use crate::checks::check_nonempty;
use crate::dtype::Element;
use crate::error::{check_i32, product, Error, Result};
use crate::reference::activation::{gelu, gelu_erf, silu};
use crate::reference::expert_map::{map, reduce, ExpertPlan};
use crate::reference::routing::{route, Routing};
use crate::reference::stick_breaking::stick_breaking;

/// The expert activation of an MLP MoE (ModuleFormer's `activation_function`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu_new` / `gelu_pytorch_tanh`: the tanh approximation.
    GeluTanh,
    /// `gelu`: the exact (erf) form.
    GeluErf,
    /// `relu`.
    Relu,
    /// `silu` / `swish`.
    Silu,
}

impl Activation {
    /// The activation of a Hugging Face `activation_function` name, or `None`
    /// for a name this crate does not implement.
    pub fn from_hf_name(name: &str) -> Option<Self> {
        match name {
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Some(Activation::GeluTanh),
            "gelu" => Some(Activation::GeluErf),
            "relu" => Some(Activation::Relu),
            "silu" | "swish" => Some(Activation::Silu),
            _ => None,
        }
    }

    /// Applies the activation in f32.
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::GeluTanh => gelu(x),
            Activation::GeluErf => gelu_erf(x),
            Activation::Relu => x.max(0.0),
            Activation::Silu => silu(x),
        }
    }
}

/// A router's weights, `nn.Linear` layouts.
#[derive(Debug, Clone, PartialEq)]
pub enum Router<T> {
    /// `gate_type: "mlp"`: `w1` `[gating, hidden]` with bias `b1`
    /// `[gating]`, exact GeLU, `w2` `[experts, gating]` without bias.
    Mlp {
        /// First linear's weight `[gating, hidden]`.
        w1: Array2<T>,
        /// First linear's bias `[gating]`.
        b1: Array1<T>,
        /// Second linear's weight `[experts, gating]`.
        w2: Array2<T>,
    },
    /// `gate_type: "linear"`: one weight `[experts, hidden]`, no bias.
    Linear {
        /// The weight `[experts, hidden]`.
        w: Array2<T>,
    },
}

/// `x · wᵀ (+ b)` accumulated in f32 per output, in order of the input axis.
fn linear_f32<T: Element>(
    x: ArrayView2<T>,
    w: ArrayView2<T>,
    b: Option<&Array1<T>>,
) -> Array2<f32> {
    let mut out = Array2::<f32>::zeros((x.nrows(), w.nrows()));
    for ((t, o), y) in out.indexed_iter_mut() {
        let dot = x
            .row(t)
            .iter()
            .zip(w.row(o).iter())
            .fold(0.0f32, |a, (&p, &q)| a + p.to_f32() * q.to_f32());
        *y = dot + b.map_or(0.0, |b| b[o].to_f32());
    }
    out
}

/// Checks that `m` is `want`, naming the weight.
fn check_dim2<T>(op: &'static str, what: &str, m: &Array2<T>, want: (usize, usize)) -> Result<()> {
    if m.dim() != want {
        return Err(Error::ShapeMismatch {
            op,
            message: format!("{what} must be {want:?}, found {:?}", m.dim()),
        });
    }
    Ok(())
}

impl<T: Element> Router<T> {
    /// Checks the shapes against `hidden` inputs and `experts` outputs.
    ///
    /// Errors: [`Error::ShapeMismatch`] naming the weight, [`Error::Empty`]
    /// for a zero gating size.
    pub fn check(&self, hidden: usize, experts: usize) -> Result<()> {
        const OP: &str = "Router::check";
        match self {
            Router::Mlp { w1, b1, w2 } => {
                let gating = w1.nrows();
                check_nonempty(OP, "the router's gating size", gating)?;
                check_dim2(OP, "the router's w1 [gating, hidden]", w1, (gating, hidden))?;
                if b1.len() != gating {
                    return Err(Error::ShapeMismatch {
                        op: OP,
                        message: format!(
                            "the router's b1 must be [{gating}], found [{}]",
                            b1.len()
                        ),
                    });
                }
                check_dim2(
                    OP,
                    "the router's w2 [experts, gating]",
                    w2,
                    (experts, gating),
                )
            }
            Router::Linear { w } => {
                check_dim2(OP, "the router's w [experts, hidden]", w, (experts, hidden))
            }
        }
    }

    /// The router logits `[tokens, experts]` in f32 of `x` `[tokens, hidden]`
    /// (the "mlp" router's hidden activations are rounded to `T`).
    pub fn logits(&self, x: ArrayView2<T>) -> Array2<f32> {
        match self {
            Router::Mlp { w1, b1, w2 } => {
                let h = linear_f32(x, w1.view(), Some(b1))
                    .mapv(|v| T::from_f32(gelu_erf(T::from_f32(v).to_f32())));
                linear_f32(h.view(), w2.view(), None)
            }
            Router::Linear { w } => linear_f32(x, w.view(), None),
        }
    }

    /// Routes `x` to its `top_k` most probable experts, gates not
    /// renormalised. Errors: those of [`route`].
    pub fn route(&self, x: ArrayView2<T>, top_k: usize) -> Result<Routing> {
        route(self.logits(x).view(), top_k, false)
    }
}

/// The shape of an MLP mixture of experts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoeMlpConfig {
    /// Model width (`n_embd`).
    pub hidden: usize,
    /// Expert width (`ffd_hidden`).
    pub ffn: usize,
    /// Number of experts (`n_mlp_experts`).
    pub num_experts: usize,
    /// Experts per token (`k_mlp`).
    pub top_k: usize,
    /// The expert activation.
    pub activation: Activation,
    /// Rows per block of the block-sparse layout (a CPU block size).
    pub block_size: usize,
}

impl MoeMlpConfig {
    /// Errors: [`Error::Empty`] for a zero size, [`Error::InvalidTopK`]
    /// unless `1 <= top_k <= num_experts`.
    pub fn validate(&self) -> Result<()> {
        const OP: &str = "MoeMlpConfig::validate";
        check_nonempty(OP, "hidden", self.hidden)?;
        check_nonempty(OP, "ffn", self.ffn)?;
        check_nonempty(OP, "num_experts", self.num_experts)?;
        crate::checks::check_top_k(self.top_k, self.num_experts)
    }
}

/// The weights of an MLP mixture of experts.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeMlpWeights<T> {
    /// The router.
    pub router: Router<T>,
    /// `[experts, hidden, ffn]` (`mlpf.experts.weight`).
    pub w: Array3<T>,
    /// `[experts, ffn, hidden]` (`mlpf.output_experts.weight`).
    pub v: Array3<T>,
}

impl<T: Element> MoeMlpWeights<T> {
    /// Checks every shape against `config` (and validates it).
    ///
    /// Errors: [`MoeMlpConfig::validate`]'s, [`Error::ShapeMismatch`]
    /// naming the weight.
    pub fn check(&self, config: &MoeMlpConfig) -> Result<()> {
        const OP: &str = "MoeMlpWeights::check";
        config.validate()?;
        self.router.check(config.hidden, config.num_experts)?;
        let (e, h, f) = (config.num_experts, config.hidden, config.ffn);
        check_dim3(OP, "w [experts, hidden, ffn]", self.w.dim(), (e, h, f))?;
        check_dim3(OP, "v [experts, ffn, hidden]", self.v.dim(), (e, f, h))
    }
}

/// Checks a 3-d shape, naming the weight.
fn check_dim3(
    op: &'static str,
    what: &str,
    found: (usize, usize, usize),
    want: (usize, usize, usize),
) -> Result<()> {
    if found != want {
        return Err(Error::ShapeMismatch {
            op,
            message: format!("{what} must be {want:?}, found {found:?}"),
        });
    }
    Ok(())
}

/// Checks `x` `[tokens, hidden]`: width, non-empty, i32-indexable.
fn check_x<T>(op: &'static str, x: &ArrayView2<T>, hidden: usize) -> Result<()> {
    if x.ncols() != hidden {
        return Err(Error::ShapeMismatch {
            op,
            message: format!("x must be [tokens, {hidden}], found {:?}", x.dim()),
        });
    }
    check_nonempty(op, "the number of tokens", x.nrows())?;
    check_i32("tokens x hidden", product(&[x.nrows(), hidden]))
}

/// The MLP mixture of experts: `x` `[tokens, hidden]` →
/// `[tokens, hidden]`, `Σ_s g[t, s] · act(x[t] · W_e) · V_e`; the
/// activations are rounded to `T`.
///
/// Errors: [`MoeMlpWeights::check`]'s, [`Error::ShapeMismatch`] /
/// [`Error::Empty`] for a bad `x`, the routing's ([`route`]).
pub fn moe_mlp<T: Element>(
    config: &MoeMlpConfig,
    weights: &MoeMlpWeights<T>,
    x: ArrayView2<T>,
) -> Result<Array2<T>> {
    weights.check(config)?;
    check_x("moe_mlp", &x, config.hidden)?;
    let routing = weights.router.route(x, config.top_k)?;
    let plan = ExpertPlan::new(
        routing.expert_ids.view(),
        config.num_experts,
        config.ffn,
        config.block_size,
    )?;
    let mut h = map(&plan, x, weights.w.view())?;
    h.mapv_inplace(|v| T::from_f32(config.activation.apply(v.to_f32())));
    reduce(&plan, h.view(), weights.v.view(), routing.weights.view())
}

/// The shape of a mixture-of-attention layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoaConfig {
    /// Model width (`n_embd`).
    pub hidden: usize,
    /// Heads per attention expert (`n_head`).
    pub n_head: usize,
    /// Width of a head: `att_hidden / n_head`.
    pub head_size: usize,
    /// Number of attention experts (`n_att_experts`).
    pub num_experts: usize,
    /// Attention experts per token (`k_att`).
    pub top_k: usize,
    /// Rows per block of the block-sparse layout (a CPU block size).
    pub block_size: usize,
}

impl MoaConfig {
    /// `n_head * head_size`.
    pub fn att_hidden(&self) -> usize {
        self.n_head * self.head_size
    }

    /// Whether keys and values are the layer input itself (IBM's rule:
    /// `att_hidden == hidden` and one head).
    pub fn identity_kv(&self) -> bool {
        self.att_hidden() == self.hidden && self.n_head == 1
    }

    /// Errors: [`Error::Empty`] for a zero size, [`Error::InvalidTopK`]
    /// unless `1 <= top_k <= num_experts`.
    pub fn validate(&self) -> Result<()> {
        const OP: &str = "MoaConfig::validate";
        check_nonempty(OP, "hidden", self.hidden)?;
        check_nonempty(OP, "n_head", self.n_head)?;
        check_nonempty(OP, "head_size", self.head_size)?;
        check_nonempty(OP, "num_experts", self.num_experts)?;
        crate::checks::check_top_k(self.top_k, self.num_experts)
    }
}

/// A shared key or value projection: `nn.Linear` with bias.
#[derive(Debug, Clone, PartialEq)]
pub struct Projection<T> {
    /// `[att_hidden, hidden]`.
    pub weight: Array2<T>,
    /// `[att_hidden]`.
    pub bias: Array1<T>,
}

/// The weights of a mixture-of-attention layer.
#[derive(Debug, Clone, PartialEq)]
pub struct MoaWeights<T> {
    /// The router.
    pub router: Router<T>,
    /// `[experts, hidden, att_hidden]` (`attn.q_proj.experts.weight`).
    pub q: Array3<T>,
    /// `[experts, att_hidden, hidden]` (`attn.q_proj.output_experts.weight`).
    pub o: Array3<T>,
    /// The shared key and value projections; `None` exactly when
    /// [`MoaConfig::identity_kv`].
    pub kv: Option<(Projection<T>, Projection<T>)>,
}

impl<T: Element> MoaWeights<T> {
    /// Checks every shape against `config` (and validates it).
    ///
    /// Errors: [`MoaConfig::validate`]'s, [`Error::ShapeMismatch`] naming the
    /// weight, [`Error::InvalidConfig`] when k/v projections are given to an
    /// identity layer or missing from another.
    pub fn check(&self, config: &MoaConfig) -> Result<()> {
        const OP: &str = "MoaWeights::check";
        config.validate()?;
        self.router.check(config.hidden, config.num_experts)?;
        let (e, h, a) = (config.num_experts, config.hidden, config.att_hidden());
        check_dim3(
            OP,
            "q [experts, hidden, att_hidden]",
            self.q.dim(),
            (e, h, a),
        )?;
        check_dim3(
            OP,
            "o [experts, att_hidden, hidden]",
            self.o.dim(),
            (e, a, h),
        )?;
        match (&self.kv, config.identity_kv()) {
            (None, true) => Ok(()),
            (Some(_), true) => Err(Error::InvalidConfig(
                "att_hidden == hidden and n_head == 1: keys and values are the identity, pass kv: None".into(),
            )),
            (None, false) => Err(Error::InvalidConfig(format!(
                "the layer needs k/v projections (att_hidden {a}, hidden {h}, n_head {}); only att_hidden == hidden with one head has none",
                config.n_head
            ))),
            (Some((k, v)), false) => {
                for (what, p) in [("k", k), ("v", v)] {
                    check_dim2(OP, what, &p.weight, (a, h))?;
                    if p.bias.len() != a {
                        return Err(Error::ShapeMismatch {
                            op: OP,
                            message: format!("{what}'s bias must be [{a}], found [{}]", p.bias.len()),
                        });
                    }
                }
                Ok(())
            }
        }
    }

    /// The keys and values `[tokens, n_head, head_size]` of `x`
    /// `[tokens, hidden]`, rounded to `T`.
    fn keys_values(&self, config: &MoaConfig, x: ArrayView2<T>) -> Result<(Array3<T>, Array3<T>)> {
        let shape = (x.nrows(), config.n_head, config.head_size);
        let project =
            |p: &Projection<T>| linear_f32(x, p.weight.view(), Some(&p.bias)).mapv(T::from_f32);
        let (k, v) = match &self.kv {
            Some((k, v)) => (project(k), project(v)),
            None => (x.to_owned(), x.to_owned()),
        };
        Ok((into3(k, shape)?, into3(v, shape)?))
    }
}

/// Reshapes a standard-layout `[rows, a * b]` matrix into `[rows, a, b]`.
fn into3<T: Element>(m: Array2<T>, shape: (usize, usize, usize)) -> Result<Array3<T>> {
    let m = m.as_standard_layout().into_owned();
    Array3::from_shape_vec(shape, m.into_raw_vec_and_offset().0).map_err(|e| Error::ShapeMismatch {
        op: "moa_forward",
        message: format!("reshape to {shape:?}: {e}"),
    })
}

/// The result of [`moa_forward`].
#[derive(Debug, Clone, PartialEq)]
pub struct MoaOutput<T> {
    /// `[tokens, hidden]`: the layer's output.
    pub output: Array2<T>,
    /// `[tokens, n_head, head_size]`: the keys of this call's tokens (append
    /// them to the cache).
    pub keys: Array3<T>,
    /// `[tokens, n_head, head_size]`: the values of this call's tokens.
    pub values: Array3<T>,
    /// The router's decision.
    pub routing: Routing,
}

/// The mixture-of-attention layer on one sequence.
///
/// `x` `[tokens, hidden]` holds the sequence's next `tokens` positions;
/// `past` its earlier keys and values `[past_len, n_head, head_size]` (a KV
/// cache; `None` for a prefill from position 0). Token `i` sits at position
/// `past_len + i` and attends positions `0..=past_len + i`.
///
/// Errors: [`MoaWeights::check`]'s, [`Error::ShapeMismatch`] for a bad `x`
/// or past keys/values, [`Error::Empty`] for zero tokens, the routing's
/// ([`route`]).
pub fn moa_forward<T: Element>(
    config: &MoaConfig,
    weights: &MoaWeights<T>,
    x: ArrayView2<T>,
    past: Option<(ArrayView3<T>, ArrayView3<T>)>,
) -> Result<MoaOutput<T>> {
    const OP: &str = "moa_forward";
    weights.check(config)?;
    check_x(OP, &x, config.hidden)?;
    let (tokens, k, n_head, hs) = (x.nrows(), config.top_k, config.n_head, config.head_size);
    if let Some((pk, pv)) = past {
        let want = (pk.dim().0, n_head, hs);
        if pk.dim() != want || pv.dim() != want {
            return Err(Error::ShapeMismatch {
                op: OP,
                message: format!(
                    "past keys and values must both be [past_len, n_head, head_size] = [_, {n_head}, {hs}], found {:?} and {:?}",
                    pk.dim(),
                    pv.dim()
                ),
            });
        }
    }
    let routing = weights.router.route(x, k)?;
    let plan = ExpertPlan::new(
        routing.expert_ids.view(),
        config.num_experts,
        config.att_hidden(),
        config.block_size,
    )?;
    // Row t * k + s, column h * hs + d is query head s * n_head + h of token t.
    let q = into3(map(&plan, x, weights.q.view())?, (tokens, k * n_head, hs))?;
    let (keys, values) = weights.keys_values(config, x)?;
    let attended = match past {
        Some((pk, pv)) => {
            let all_k =
                concatenate(Axis(0), &[pk.view(), keys.view()]).map_err(|e| shape_err(OP, e))?;
            let all_v =
                concatenate(Axis(0), &[pv.view(), values.view()]).map_err(|e| shape_err(OP, e))?;
            stick_breaking(q.view(), all_k.view(), all_v.view())?
        }
        None => stick_breaking(q.view(), keys.view(), values.view())?,
    };
    let y = Array2::from_shape_vec(
        (tokens * k, config.att_hidden()),
        attended.into_raw_vec_and_offset().0,
    )
    .map_err(|e| shape_err(OP, e))?;
    let output = reduce(&plan, y.view(), weights.o.view(), routing.weights.view())?;
    Ok(MoaOutput {
        output,
        keys,
        values,
        routing,
    })
}

/// An ndarray shape error as [`Error::ShapeMismatch`].
fn shape_err(op: &'static str, e: ndarray::ShapeError) -> Error {
    Error::ShapeMismatch {
        op,
        message: e.to_string(),
    }
}
