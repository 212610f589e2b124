//! Finiteness checks on the device without a host synchronisation: a kernel
//! records where the first NaN or infinity of a tensor lies in a 64-bit
//! status word on the device, the router's own status word can be added, and
//! the host reads all the words (one synchronisation) only when it asks.
//!
//! A status word is 0 when all was well, else
//! `((0x7fffffff - flat) << 2) | class` for the lowest offending flat index
//! (`cuda/elementwise.cu`'s `dl_find_nonfinite_*`, `cuda/routing.cu`).

use cudarc::driver::PushKernelArg;

use super::kernels::{launch_1d, ELEMENTWISE};
use super::routing::DeviceRouting;
use super::{CudaBackend, DeviceElement, DeviceTensor};
use crate::dtype::Element;
use crate::error::{Error, Result};

/// Threads per CTA of the scan.
const THREADS: usize = 256;
/// Most CTAs of the scan (a grid-stride loop covers the rest).
const MAX_CTAS: usize = 1024;

/// A decoded status word: the lowest offending flat index and its class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Flagged {
    /// Flat (row-major) index of the first offending element.
    pub flat: usize,
    /// The class bits: 0 NaN, 1 `+inf`, 2 `-inf` (the router: too few
    /// routable experts).
    pub class: u8,
}

/// Decodes the two little-endian i32 halves of a status word; `Ok(None)`
/// when it is zero.
pub(crate) fn decode_status(words: &[i32]) -> Result<Option<Flagged>> {
    let [lo, hi] = words[..] else {
        return Err(Error::Cuda(format!(
            "a status word is 2 i32 halves, found {}",
            words.len()
        )));
    };
    let key = u64::from(lo as u32) | (u64::from(hi as u32) << 32);
    if key == 0 {
        return Ok(None);
    }
    let encoded = key >> 2;
    if encoded == 0 || encoded > 0x7fff_ffff {
        return Err(Error::Cuda(format!("corrupt status word {key:#x}")));
    }
    Ok(Some(Flagged {
        flat: (0x7fff_ffff - encoded) as usize,
        class: (key & 3) as u8,
    }))
}

/// The value a class stands for.
pub(crate) fn class_value(class: u8) -> f32 {
    match class {
        0 => f32::NAN,
        1 => f32::INFINITY,
        _ => f32::NEG_INFINITY,
    }
}

/// What one status word describes.
#[derive(Debug, Clone, Copy)]
enum Entry {
    /// A tensor named `what` with `cols` columns (1-D tensors: one row).
    Tensor { what: &'static str, cols: usize },
    /// A copy of a router's status word.
    Router { num_experts: usize, top_k: usize },
}

/// Status words for a few device tensors, filled on the stream by
/// [`DeviceFiniteCheck::record`] and [`DeviceFiniteCheck::record_router`]
/// and read by [`DeviceFiniteCheck::check`].
#[derive(Debug)]
pub struct DeviceFiniteCheck {
    /// `[2 * capacity]` i32: one zeroed 64-bit word per entry.
    status: DeviceTensor<i32>,
    entries: Vec<Entry>,
}

impl DeviceFiniteCheck {
    /// Room for `capacity` entries, status words zeroed on the stream.
    pub fn new(backend: &CudaBackend, capacity: usize) -> Result<Self> {
        Ok(DeviceFiniteCheck {
            status: DeviceTensor::zeros(backend, &[2 * capacity.max(1)])?,
            entries: Vec::with_capacity(capacity),
        })
    }

    /// The next free status word, or the error that the check is full.
    fn next_slot(&self) -> Result<usize> {
        let slot = self.entries.len();
        if 2 * slot + 2 > self.status.len() {
            return Err(Error::InvalidConfig(format!(
                "the finiteness check holds {} entries; create it with a larger capacity",
                self.status.len() / 2
            )));
        }
        Ok(slot)
    }

    /// Queues the scan of `tensor` for NaN and infinities; the error of
    /// [`DeviceFiniteCheck::check`] names it `what`.
    pub fn record<T: DeviceElement + Element>(
        &mut self,
        backend: &CudaBackend,
        what: &'static str,
        tensor: &DeviceTensor<T>,
    ) -> Result<()> {
        let slot = self.next_slot()?;
        let n = tensor.len();
        let cols = match tensor.shape() {
            [.., c] if *c > 0 => *c,
            _ => n.max(1),
        };
        self.entries.push(Entry::Tensor { what, cols });
        if n == 0 {
            return Ok(());
        }
        let func = backend.function(ELEMENTWISE, &format!("dl_find_nonfinite_{}", T::SUFFIX))?;
        let (n_i32, slot_i32) = (n as i32, slot as i32);
        let mut launch = backend.stream().launch_builder(&func);
        launch
            .arg(tensor.slice())
            .arg(&n_i32)
            .arg(&slot_i32)
            .arg(self.status.slice_mut());
        // SAFETY: dl_find_nonfinite_T(const T* x, i32 n, i32 slot, u64* status)
        // reads x[0..n) (the tensor holds n elements, checked to fit i32 when
        // it was created; the grid-stride step stops at n) and atomically
        // updates the 8-byte word status[slot]: the status tensor holds
        // 2 * capacity i32 halves and slot < capacity (next_slot), and device
        // allocations are 256-byte aligned, so the word is 8-byte aligned.
        unsafe { launch.launch(launch_1d(n.div_ceil(THREADS).min(MAX_CTAS), 256, 0)) }?;
        Ok(())
    }

    /// Queues a copy of `routing`'s status word (non-finite logits, tokens
    /// with too few routable experts), checked before the entries recorded
    /// after it.
    pub fn record_router(&mut self, backend: &CudaBackend, routing: &DeviceRouting) -> Result<()> {
        let slot = self.next_slot()?;
        let (num_experts, top_k) = match (routing.probs.shape(), routing.expert_ids.shape()) {
            (&[_, e], &[_, k]) => (e, k),
            (p, i) => {
                return Err(Error::ShapeMismatch {
                    op: "DeviceFiniteCheck::record_router",
                    message: format!("routing probs {p:?} and expert ids {i:?} must be 2-D"),
                })
            }
        };
        let source =
            routing
                .status
                .slice()
                .try_slice(0..2)
                .ok_or_else(|| Error::ShapeMismatch {
                    op: "DeviceFiniteCheck::record_router",
                    message: format!(
                        "the router status must be [2] i32, found {:?}",
                        routing.status.shape()
                    ),
                })?;
        let mut word = self
            .status
            .slice_mut()
            .try_slice_mut(2 * slot..2 * slot + 2)
            .ok_or_else(|| Error::InvalidConfig("the finiteness check has no free word".into()))?;
        backend.stream().memcpy_dtod(&source, &mut word)?;
        self.entries.push(Entry::Router { num_experts, top_k });
        Ok(())
    }

    /// Reads the status words (waits for the stream). The first entry, in
    /// record order, that flagged something gives its error: for a tensor
    /// [`Error::NonFinite`] with the row and column of its first NaN or
    /// infinity; for a router what [`DeviceRouting::check_finite`] returns.
    pub fn check(&self, backend: &CudaBackend) -> Result<()> {
        let words = self.status.to_host(backend)?;
        for (slot, entry) in self.entries.iter().enumerate() {
            let Some(flagged) = decode_status(&words[2 * slot..2 * slot + 2])? else {
                continue;
            };
            return Err(match *entry {
                Entry::Tensor { what, cols } => Error::NonFinite {
                    what,
                    row: flagged.flat / cols,
                    col: flagged.flat % cols,
                    value: class_value(flagged.class),
                },
                Entry::Router { num_experts, top_k } => {
                    super::routing::router_error(flagged, num_experts, top_k)
                }
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(key: u64) -> [i32; 2] {
        [key as u32 as i32, (key >> 32) as u32 as i32]
    }

    #[test]
    fn status_words_decode() {
        assert_eq!(decode_status(&[0, 0]).unwrap(), None);
        let key = ((0x7fff_ffffu64 - 19) << 2) | 1;
        assert_eq!(
            decode_status(&words(key)).unwrap(),
            Some(Flagged { flat: 19, class: 1 })
        );
        let key = (0x7fff_ffffu64 << 2) | 2;
        assert_eq!(
            decode_status(&words(key)).unwrap(),
            Some(Flagged { flat: 0, class: 2 })
        );
        assert!(decode_status(&[1]).is_err());
        assert!(decode_status(&[3, 0]).is_err());
        assert!(class_value(0).is_nan());
        assert_eq!(class_value(1), f32::INFINITY);
        assert_eq!(class_value(2), f32::NEG_INFINITY);
    }
}
