//! The `config.json` of a ModuleFormer / MoLM checkpoint
//! (`model_type: "moduleformer"`).

use dropless::reference::moa::Activation;
use serde_json::Value;

use crate::error::{ModelError, Result};

/// A router's kind (`gate_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateType {
    /// `"mlp"`: Linear(bias) → GeLU → Linear.
    Mlp,
    /// `"linear"`: one Linear without bias.
    Linear,
}

/// The fields of a ModuleFormer config this model uses.
#[derive(Debug, Clone, PartialEq)]
pub struct MolmConfig {
    /// `vocab_size`.
    pub vocab_size: usize,
    /// `n_embd`.
    pub n_embd: usize,
    /// `n_layer`.
    pub n_layer: usize,
    /// `n_head`: heads per attention expert.
    pub n_head: usize,
    /// `att_hidden`: `n_head * head_size`.
    pub att_hidden: usize,
    /// `ffd_hidden`: MLP expert width.
    pub ffd_hidden: usize,
    /// `n_att_experts`.
    pub n_att_experts: usize,
    /// `k_att`.
    pub k_att: usize,
    /// `n_mlp_experts`.
    pub n_mlp_experts: usize,
    /// `k_mlp`.
    pub k_mlp: usize,
    /// `gating_size`: the "mlp" router's hidden width.
    pub gating_size: usize,
    /// `gate_type`.
    pub gate_type: GateType,
    /// `activation_function` of the MLP experts.
    pub activation: Activation,
    /// `block_size` (sizes IBM's unused mask buffers only).
    pub block_size: usize,
    /// `history_length` (likewise).
    pub history_length: usize,
}

/// Whether a parsed `config.json` is a ModuleFormer one.
pub fn is_moduleformer(v: &Value) -> bool {
    v.get("model_type").and_then(Value::as_str) == Some("moduleformer")
}

fn field(v: &Value, name: &str) -> Result<usize> {
    let n = v
        .get(name)
        .and_then(Value::as_u64)
        .ok_or_else(|| ModelError::config(name, "is missing or not a non-negative integer"))?;
    if n == 0 {
        return Err(ModelError::config(name, "must be positive"));
    }
    usize::try_from(n).map_err(|_| ModelError::config(name, "is too large"))
}

impl MolmConfig {
    /// Parses and checks a ModuleFormer `config.json`.
    pub fn from_json(v: &Value) -> Result<Self> {
        if !is_moduleformer(v) {
            return Err(ModelError::config("model_type", "must be \"moduleformer\""));
        }
        let gate_type = match v.get("gate_type").and_then(Value::as_str).unwrap_or("mlp") {
            "mlp" => GateType::Mlp,
            "linear" => GateType::Linear,
            other => {
                return Err(ModelError::config(
                    "gate_type",
                    format!("is {other:?}; supported: \"mlp\", \"linear\""),
                ))
            }
        };
        let act_name = v
            .get("activation_function")
            .and_then(Value::as_str)
            .unwrap_or("gelu_new");
        let activation = Activation::from_hf_name(act_name).ok_or_else(|| {
            ModelError::config(
                "activation_function",
                format!(
                    "is {act_name:?}; supported: gelu_new, gelu_pytorch_tanh, gelu, relu, silu"
                ),
            )
        })?;
        let c = MolmConfig {
            vocab_size: field(v, "vocab_size")?,
            n_embd: field(v, "n_embd")?,
            n_layer: field(v, "n_layer")?,
            n_head: field(v, "n_head")?,
            att_hidden: field(v, "att_hidden")?,
            ffd_hidden: field(v, "ffd_hidden")?,
            n_att_experts: field(v, "n_att_experts")?,
            k_att: field(v, "k_att")?,
            n_mlp_experts: field(v, "n_mlp_experts")?,
            k_mlp: field(v, "k_mlp")?,
            gating_size: if gate_type == GateType::Mlp {
                field(v, "gating_size")?
            } else {
                1
            },
            gate_type,
            activation,
            block_size: field(v, "block_size")?,
            history_length: v.get("history_length").and_then(Value::as_u64).unwrap_or(0) as usize,
        };
        if !c.att_hidden.is_multiple_of(c.n_head) {
            return Err(ModelError::config(
                "att_hidden",
                format!(
                    "{} is not a multiple of n_head = {}",
                    c.att_hidden, c.n_head
                ),
            ));
        }
        if c.k_att > c.n_att_experts {
            return Err(ModelError::config(
                "k_att",
                format!("{} exceeds n_att_experts = {}", c.k_att, c.n_att_experts),
            ));
        }
        if c.k_mlp > c.n_mlp_experts {
            return Err(ModelError::config(
                "k_mlp",
                format!("{} exceeds n_mlp_experts = {}", c.k_mlp, c.n_mlp_experts),
            ));
        }
        Ok(c)
    }

    /// `att_hidden / n_head`.
    pub fn head_size(&self) -> usize {
        self.att_hidden / self.n_head
    }

    /// Whether keys and values are the identity (no k/v tensors).
    pub fn identity_kv(&self) -> bool {
        self.att_hidden == self.n_embd && self.n_head == 1
    }
}
