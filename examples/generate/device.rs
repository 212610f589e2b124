//! What the example's models on a CUDA device share: their element types,
//! weight uploads, the fill of a device KV cache, and the forward and greedy
//! decoding around a model's hidden states and LM head. The argmax runs on
//! the device: per step only the chosen token ids come back to the host, and
//! they go straight back in as the next step's input.

use std::time::Instant;

use dropless::cuda::gemm::GemmElement;
use dropless::cuda::lm::{argmax_rows, take_rows};
use dropless::cuda::sparse_ops::MmaElement;
use dropless::cuda::{CudaBackend, DeviceTensor};
use ndarray::{Array1, Array2, Array3};

use crate::decoding::{batch_shape, Generation};
use crate::error::{ModelError, Result};

/// An element type the GPU models run in: bf16 or f16.
pub trait GpuElement: MmaElement + GemmElement {}

impl<T: MmaElement + GemmElement> GpuElement for T {}

/// Uploads a matrix, consuming the host copy.
pub fn matrix<T: GpuElement>(backend: &CudaBackend, a: Array2<T>) -> Result<DeviceTensor<T>> {
    let shape = [a.nrows(), a.ncols()];
    let t = match a.as_slice() {
        Some(data) => DeviceTensor::from_host(backend, &shape, data),
        None => DeviceTensor::from_array(backend, a.view()),
    };
    Ok(t?)
}

/// Uploads a vector as a `[len]` tensor, consuming the host copy.
pub fn vector<T: GpuElement>(backend: &CudaBackend, v: Array1<T>) -> Result<DeviceTensor<T>> {
    let t = match v.as_slice() {
        Some(data) => DeviceTensor::from_host(backend, &[data.len()], data),
        None => DeviceTensor::from_host(backend, &[v.len()], &v.to_vec()),
    };
    Ok(t?)
}

/// How full a device KV cache is: `batch` sequences with room for
/// `capacity` tokens each, `len` of them cached.
pub struct CacheFill {
    batch: usize,
    capacity: usize,
    len: usize,
}

impl CacheFill {
    /// An empty cache's fill; errors unless `batch` and `capacity` are at
    /// least 1.
    pub fn new(batch: usize, capacity: usize) -> Result<Self> {
        if batch == 0 || capacity == 0 {
            return Err(ModelError::Input(format!(
                "a KV cache needs at least one sequence of at least one token, found {batch} x {capacity}"
            )));
        }
        Ok(CacheFill {
            batch,
            capacity,
            len: 0,
        })
    }

    /// The number of tokens cached per sequence, after checking that `tq`
    /// more tokens of `batch` sequences fit.
    pub fn room_for(&self, batch: usize, tq: usize) -> Result<usize> {
        if self.batch != batch {
            return Err(ModelError::Input(format!(
                "the KV cache holds {} sequences, the batch has {batch}",
                self.batch
            )));
        }
        if self.len + tq > self.capacity {
            return Err(ModelError::Input(format!(
                "the KV cache has room for {} tokens per sequence: {} cached + {tq} new exceed it",
                self.capacity, self.len
            )));
        }
        Ok(self.len)
    }

    /// Records `tq` more cached tokens per sequence (checked by
    /// [`CacheFill::room_for`]).
    pub fn advance(&mut self, tq: usize) {
        self.len += tq;
    }
}

/// A language model on a CUDA device with a device KV cache.
pub trait DeviceModel<T: GpuElement> {
    /// The keys and values of the tokens seen so far.
    type Cache;
    /// The backend holding the weights.
    fn backend(&self) -> &CudaBackend;
    /// The number of token ids.
    fn vocab_size(&self) -> usize;
    /// An empty cache for `batch` sequences of up to `capacity` tokens.
    fn new_cache(&self, batch: usize, capacity: usize) -> Result<Self::Cache>;
    /// The final hidden states `[batch * tq, hidden]` (after the last norm)
    /// of the ids `[batch * tq]`, which continue the cached tokens; their
    /// keys and values join the cache.
    fn hidden(
        &self,
        ids: &DeviceTensor<i32>,
        batch: usize,
        tq: usize,
        cache: &mut Self::Cache,
    ) -> Result<DeviceTensor<T>>;
    /// The LM head on hidden states `[rows, hidden]`: f32 logits `[rows,
    /// vocab]`.
    fn logits(&self, x: &DeviceTensor<T>) -> Result<DeviceTensor<f32>>;

    /// The forward pass over `ids` (one row per sequence, equal lengths).
    /// With a cache the tokens continue the cached ones and their keys and
    /// values are appended to it. Returns the logits `[batch, tokens, vocab]`
    /// in f32 (the LM head accumulates in f32 and is not rounded to `T`).
    fn forward(&self, ids: &[Vec<u32>], cache: Option<&mut Self::Cache>) -> Result<Array3<f32>> {
        let vocab = self.vocab_size();
        let (dev_ids, batch, tq) = upload_ids(self.backend(), ids, vocab)?;
        let mut own;
        let cache = match cache {
            Some(cache) => cache,
            None => {
                own = self.new_cache(batch, tq)?;
                &mut own
            }
        };
        let x = self.hidden(&dev_ids, batch, tq, cache)?;
        let logits = self.logits(&x)?.to_host(self.backend())?;
        Array3::from_shape_vec((batch, tq, vocab), logits)
            .map_err(|e| ModelError::Input(e.to_string()))
    }

    /// Greedy decoding of `max_new_tokens` tokens after each prompt: one
    /// prefill over the prompts, then one cached step per token. The argmax
    /// runs on the device and its ids feed the next step directly; only they
    /// are copied to the host (which also times each step honestly).
    fn generate(&self, prompts: &[Vec<u32>], max_new_tokens: usize) -> Result<Generation> {
        let (b, vocab) = (self.backend(), self.vocab_size());
        let (mut ids, batch, tq) = upload_ids(b, prompts, vocab)?;
        let mut tokens = prompts.to_vec();
        let (mut prefill_secs, mut decode_secs) = (0.0, 0.0);
        if max_new_tokens == 0 {
            return Ok(Generation {
                tokens,
                prefill_secs,
                decode_secs,
            });
        }
        let mut cache = self.new_cache(batch, tq + max_new_tokens)?;
        let last_rows: Vec<i32> = (0..batch)
            .map(|s| i32::try_from((s + 1) * tq - 1))
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| ModelError::Input("the prompt batch exceeds the i32 range".into()))?;
        let last_rows = DeviceTensor::from_host(b, &[batch], &last_rows)?;
        let mut step_len = tq;
        for step in 0..max_new_tokens {
            let start = Instant::now();
            let x = self.hidden(&ids, batch, step_len, &mut cache)?;
            let last = if step_len > 1 {
                take_rows(b, &x, &last_rows)?
            } else {
                x
            };
            ids = argmax_rows(b, &self.logits(&last)?)?;
            let next = ids.to_host(b)?;
            let elapsed = start.elapsed().as_secs_f64();
            if step == 0 {
                prefill_secs = elapsed;
            } else {
                decode_secs += elapsed;
            }
            for (sequence, (seq, &id)) in tokens.iter_mut().zip(&next).enumerate() {
                // The device argmax marks a row holding NaN or inf with -1.
                let id = u32::try_from(id)
                    .ok()
                    .filter(|&id| (id as usize) < vocab)
                    .ok_or_else(|| {
                        ModelError::Input(format!(
                            "non-finite logits for sequence {sequence} (device argmax {id}): the weights or the dtype overflowed"
                        ))
                    })?;
                seq.push(id);
            }
            step_len = 1;
        }
        Ok(Generation {
            tokens,
            prefill_secs,
            decode_secs,
        })
    }
}

/// Checks a batch of equal-length sequences of in-vocabulary ids and uploads
/// it flat; returns it with the batch size and length.
fn upload_ids(
    backend: &CudaBackend,
    ids: &[Vec<u32>],
    vocab: usize,
) -> Result<(DeviceTensor<i32>, usize, usize)> {
    let (batch, tq) = batch_shape(ids)?;
    let flat: Vec<i32> = ids
        .concat()
        .into_iter()
        .enumerate()
        .map(|(i, id)| match i32::try_from(id) {
            Ok(v) if (id as usize) < vocab => Ok(v),
            _ => Err(ModelError::Input(format!(
                "token id {id} at position {i} is out of range: the vocabulary has {vocab} tokens (ids 0..{vocab})"
            ))),
        })
        .collect::<Result<_>>()?;
    let dev = DeviceTensor::from_host(backend, &[flat.len()], &flat)?;
    Ok((dev, batch, tq))
}
