//! What every model of the example shares around its forward pass: the
//! check of a batch of token ids, the greedy argmax, and greedy decoding with
//! a KV cache on the host (the device models' loop is in `device.rs`).

use std::time::Instant;

use ndarray::{Array3, Axis};

use crate::error::{ModelError, Result};

/// The result of greedy generation.
pub struct Generation {
    /// Per sequence: the prompt, then the generated tokens.
    pub tokens: Vec<Vec<u32>>,
    /// Seconds spent on the prompt forward (prefill).
    pub prefill_secs: f64,
    /// Seconds spent on the cached decode steps.
    pub decode_secs: f64,
}

/// The batch size and sequence length of `ids`, which must hold at least one
/// sequence, all of one length of at least one token.
pub fn batch_shape(ids: &[Vec<u32>]) -> Result<(usize, usize)> {
    let batch = ids.len();
    let tq = ids.first().map_or(0, Vec::len);
    if batch == 0 || tq == 0 {
        return Err(ModelError::Input(
            "the batch needs at least one sequence of at least one token".into(),
        ));
    }
    if let Some(i) = ids.iter().position(|s| s.len() != tq) {
        return Err(ModelError::Input(format!(
            "all sequences of a batch must have one length: sequence 0 has {tq} tokens, sequence {i} has {}",
            ids[i].len()
        )));
    }
    Ok((batch, tq))
}

/// The index of the largest logit (the first on ties).
pub fn argmax(row: &[f32], sequence: usize) -> Result<u32> {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if !v.is_finite() {
            return Err(ModelError::Input(format!(
                "non-finite logit {v} for token {i} of sequence {sequence}: the weights or the dtype overflowed"
            )));
        }
        if v > row[best] {
            best = i;
        }
    }
    Ok(best as u32)
}

/// A language model on the host with a KV cache.
pub trait HostModel {
    /// The keys and values of the tokens seen so far.
    type Cache;
    /// An empty cache for `batch` sequences.
    fn empty_cache(&self, batch: usize) -> Self::Cache;
    /// The logits `[batch, tokens, vocab]` of `ids`, which continue the
    /// cached tokens when there is a cache (their keys and values join it).
    fn forward(&self, ids: &[Vec<u32>], cache: Option<&mut Self::Cache>) -> Result<Array3<f32>>;

    /// Greedy decoding of `max_new_tokens` tokens after each prompt, with a
    /// KV cache: one prefill forward over the prompts, then one cached step
    /// per token.
    fn generate(&self, prompts: &[Vec<u32>], max_new_tokens: usize) -> Result<Generation> {
        let mut tokens = prompts.to_vec();
        let mut cache = self.empty_cache(prompts.len());
        let (mut prefill_secs, mut decode_secs) = (0.0, 0.0);
        let mut input = prompts.to_vec();
        for step in 0..max_new_tokens {
            let start = Instant::now();
            let logits = self.forward(&input, Some(&mut cache))?;
            let last = logits.index_axis(Axis(1), logits.dim().1 - 1).to_owned();
            let elapsed = start.elapsed().as_secs_f64();
            if step == 0 {
                prefill_secs = elapsed;
            } else {
                decode_secs += elapsed;
            }
            input.clear();
            for (b, row) in last.rows().into_iter().enumerate() {
                let next = argmax(&row.to_vec(), b)?;
                tokens[b].push(next);
                input.push(vec![next]);
            }
        }
        Ok(Generation {
            tokens,
            prefill_secs,
            decode_secs,
        })
    }
}
