//! The configuration and weights of a dMoE layer, shared by both backends:
//! [`MoeConfig`] (shapes and behaviour), [`MlpKind`], [`MoeWeights`] (with
//! their shape and finiteness checks) and the training loss's
//! [`AuxLossCoefficients`]. The CPU math lives in [`crate::reference`], the
//! device math in [`crate::cuda`].

use ndarray::Array2;

use crate::checks::{check_all_finite, check_nonempty, check_top_k};
use crate::dtype::{DType, Element};
use crate::error::{check_i32, product, Error, Result};
use crate::topology::CPU_BLOCK_SIZES;

/// The expert MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MlpKind {
    /// `GeLU(x · W1ᵀ) · W2` (GeLU in its tanh approximation).
    Plain,
    /// `(SiLU(x · W1ᵀ) ⊙ (x · W3ᵀ)) · W2`, as in Mixtral and GLaM.
    Glu,
}

/// The shape and behaviour of a dMoE layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoeConfig {
    /// Model (hidden) size.
    pub hidden: usize,
    /// FFN size of each expert; a multiple of `block_size`.
    pub ffn: usize,
    /// Number of experts.
    pub num_experts: usize,
    /// Experts per token, `1..=num_experts`.
    pub top_k: usize,
    /// The expert MLP.
    pub mlp: MlpKind,
    /// Whether each token's k routing weights are renormalised to sum to 1.
    pub renormalize: bool,
    /// Side of the sparse blocks; one of [`CPU_BLOCK_SIZES`] on the CPU.
    pub block_size: usize,
}

impl MoeConfig {
    /// Bytes of the layer's weights in `dtype` (router, W1, W3 for GLU, W2).
    pub fn weight_bytes(&self, dtype: DType) -> u128 {
        let mats: u128 = match self.mlp {
            MlpKind::Plain => 2,
            MlpKind::Glu => 3,
        };
        let values = product(&[self.num_experts, self.hidden])
            + mats * product(&[self.num_experts, self.ffn, self.hidden]);
        values * dtype.size_in_bytes() as u128
    }

    /// An upper estimate of the bytes a training forward of `tokens` tokens
    /// holds at its peak besides the weights, on either backend: the input,
    /// its saved copy and the output (`[tokens, hidden]` each), the f32
    /// router logits and probabilities, the routing, and for the padded
    /// layout's bound `P = tokens * top_k + num_experts * (block_size - 1)`
    /// rows the gathered input and the expert output (`[P, hidden]`) and the
    /// expert MLP's pre-activations and activations on the blocks (`[P, ffn]`
    /// each: two for GLU and one for the plain MLP, plus the activations).
    /// From shapes alone, to refuse a run before allocating it; it is
    /// affine in `tokens`.
    pub fn forward_activation_bytes(&self, tokens: usize, dtype: DType) -> u128 {
        let s = dtype.size_in_bytes() as u128;
        let block_maps: u128 = match self.mlp {
            MlpKind::Plain => 2,
            MlpKind::Glu => 3,
        };
        let padded = product(&[tokens, self.top_k])
            + product(&[self.num_experts, self.block_size.saturating_sub(1)]);
        let token_bytes = 3 * product(&[tokens, self.hidden]) * s
            + 2 * product(&[tokens, self.num_experts]) * 4
            + 2 * product(&[tokens, self.top_k]) * 4;
        let padded_bytes = padded * (2 * self.hidden as u128 + block_maps * self.ffn as u128) * s;
        token_bytes + padded_bytes
    }

    /// The most tokens whose training forward fits in `bytes` with the
    /// weights ([`MoeConfig::weight_bytes`] plus
    /// [`MoeConfig::forward_activation_bytes`]); 0 when not even one does.
    pub fn max_forward_tokens(&self, bytes: u64, dtype: DType) -> u128 {
        // The need is affine in the tokens: solve need(t) <= bytes.
        let need = |t: usize| self.weight_bytes(dtype) + self.forward_activation_bytes(t, dtype);
        let (fixed, per_token) = (need(0), need(1) - need(0));
        u128::from(bytes).saturating_sub(fixed) / per_token.max(1)
    }

    /// Checks that the configuration can run: non-zero sizes, `ffn` a multiple
    /// of a supported block size, `1 <= top_k <= num_experts`, and weights
    /// that fit the kernels' i32 indexing.
    pub fn validate(&self) -> Result<()> {
        const OP: &str = "MoeConfig::validate";
        if !CPU_BLOCK_SIZES.contains(&self.block_size) {
            return Err(Error::UnsupportedBlockSize {
                block_size: self.block_size,
                backend: "the CPU reference",
                supported: CPU_BLOCK_SIZES,
            });
        }
        check_nonempty(OP, "the number of experts", self.num_experts)?;
        check_nonempty(OP, "the hidden size", self.hidden)?;
        check_top_k(self.top_k, self.num_experts)?;
        if self.ffn == 0 || !self.ffn.is_multiple_of(self.block_size) {
            return Err(Error::InvalidConfig(format!(
                "ffn size per expert {} must be a positive multiple of the block size {}",
                self.ffn, self.block_size
            )));
        }
        check_i32(
            "experts x ffn x hidden",
            product(&[self.num_experts, self.ffn, self.hidden]),
        )
    }
}

/// The weights of a dMoE layer. The experts' matrices are concatenated along
/// their first axis: rows `e * ffn .. (e + 1) * ffn` belong to expert `e`.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeWeights<T> {
    /// `[num_experts, hidden]`: the router (logits = `x · routerᵀ`).
    pub router: Array2<T>,
    /// `[num_experts * ffn, hidden]`: the up projection (`x · W1ᵀ`).
    pub w1: Array2<T>,
    /// `[num_experts * ffn, hidden]`: the gate's second projection; GLU only.
    pub w3: Option<Array2<T>>,
    /// `[num_experts * ffn, hidden]`: the down projection (`h · W2`).
    pub w2: Array2<T>,
}

/// A deterministic generator of non-zero values (splitmix64).
struct SplitMix(u64);

impl SplitMix {
    /// A value in `(-1, -1/4] ∪ [1/4, 1)`: bounded away from zero, so it stays
    /// non-zero after scaling and rounding to f16.
    fn next_unit(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let magnitude = 0.25 + 0.75 * ((z >> 40) as f32 / (1u32 << 24) as f32);
        if z & 1 == 0 {
            magnitude
        } else {
            -magnitude
        }
    }

    /// A `[rows, cols]` matrix with magnitudes in `[scale/4, scale)`.
    fn matrix<T: Element>(&mut self, rows: usize, cols: usize, scale: f32) -> Array2<T> {
        Array2::from_shape_simple_fn((rows, cols), || T::from_f32(scale * self.next_unit()))
    }
}

impl<T: Element> MoeWeights<T> {
    /// Deterministic pseudo-random weights for `config` (no files, no `rand`):
    /// magnitudes in `[1/(4 sqrt(fan_in)), 1/sqrt(fan_in))` with random signs, never zero, the same for
    /// the same `seed`. `w3` is present exactly for [`MlpKind::Glu`].
    pub fn random(config: &MoeConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        let (e, h, rows) = (
            config.num_experts,
            config.hidden,
            config.num_experts * config.ffn,
        );
        let in_scale = 1.0 / (h as f32).sqrt();
        let out_scale = 1.0 / (config.ffn as f32).sqrt();
        let mut rng = SplitMix(seed);
        let router = rng.matrix(e, h, in_scale);
        let w1 = rng.matrix(rows, h, in_scale);
        let w3 = match config.mlp {
            MlpKind::Glu => Some(rng.matrix(rows, h, in_scale)),
            MlpKind::Plain => None,
        };
        let w2 = rng.matrix(rows, h, out_scale);
        Ok(MoeWeights { router, w1, w3, w2 })
    }

    /// Checks that every weight is finite: [`Error::NonFinite`] names the
    /// tensor (`router`, `w1`, `w3` or `w2`), the row and the column of the
    /// first NaN or infinity. A corrupt or badly converted checkpoint would
    /// otherwise give all-NaN outputs with no error;
    /// [`crate::layer::DroplessMoe::new`] and the CUDA upload
    /// ([`crate::cuda::moe::DeviceMoeWeights::from_host`]) run it.
    pub fn check_finite(&self) -> Result<()> {
        check_all_finite("the router weights `router`", self.router.view())?;
        check_all_finite("the expert weights `w1`", self.w1.view())?;
        if let Some(w3) = &self.w3 {
            check_all_finite("the expert weights `w3`", w3.view())?;
        }
        check_all_finite("the expert weights `w2`", self.w2.view())
    }

    /// Checks the weights' shapes against `config` (which is validated too).
    pub fn check(&self, config: &MoeConfig) -> Result<()> {
        const OP: &str = "MoeWeights::check";
        config.validate()?;
        let (e, h, rows) = (
            config.num_experts,
            config.hidden,
            config.num_experts * config.ffn,
        );
        let expect = |name: &str, m: &Array2<T>, want: (usize, usize)| {
            if m.dim() == want {
                Ok(())
            } else {
                Err(Error::ShapeMismatch {
                    op: OP,
                    message: format!("{name} must be {want:?}, found {:?}", m.dim()),
                })
            }
        };
        expect("router [num_experts, hidden]", &self.router, (e, h))?;
        expect("w1 [num_experts * ffn, hidden]", &self.w1, (rows, h))?;
        expect("w2 [num_experts * ffn, hidden]", &self.w2, (rows, h))?;
        match (config.mlp, &self.w3) {
            (MlpKind::Glu, Some(w3)) => expect("w3 [num_experts * ffn, hidden]", w3, (rows, h)),
            (MlpKind::Plain, None) => Ok(()),
            (MlpKind::Glu, None) => Err(Error::InvalidConfig(
                "a GLU layer needs w3; pass it or use MlpKind::Plain".into(),
            )),
            (MlpKind::Plain, Some(_)) => Err(Error::InvalidConfig(
                "a plain MLP layer takes no w3; drop it or use MlpKind::Glu".into(),
            )),
        }
    }
}

/// Coefficients of the auxiliary losses in the training loss.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct AuxLossCoefficients {
    /// Weight of the load-balancing loss
    /// ([`crate::reference::loss::load_balancing_loss`]).
    pub load_balancing: f32,
    /// Weight of the router z-loss ([`crate::reference::loss::router_z_loss`]).
    pub z_loss: f32,
}
