//! The expert histogram on the device.

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::kernels::HISTOGRAM;
use super::{CudaBackend, DeviceTensor};
use crate::error::{check_i32, Error, Result};

const THREADS: u32 = 256;
const MAX_BLOCKS: usize = 1024;

/// Tokens per expert: counts each id of `expert_ids` (`[tokens, top_k]`, i32).
/// Ids outside `0..num_experts` are not counted (the device router never
/// writes them); returns a `[num_experts]` i32 tensor.
pub fn histogram(
    backend: &CudaBackend,
    expert_ids: &DeviceTensor<i32>,
    num_experts: usize,
) -> Result<DeviceTensor<i32>> {
    const OP: &str = "histogram";
    if expert_ids.shape().len() != 2 {
        return Err(Error::ShapeMismatch {
            op: OP,
            message: format!(
                "expert ids must be [tokens, top_k], found {:?}",
                expert_ids.shape()
            ),
        });
    }
    if expert_ids.is_empty() {
        return Err(Error::Empty {
            op: OP,
            what: "the number of assignments",
        });
    }
    if num_experts == 0 {
        return Err(Error::Empty {
            op: OP,
            what: "the number of experts",
        });
    }
    // Shared memory holds one counter per expert.
    check_i32("num_experts", num_experts as u128)?;
    if num_experts * 4 > 48 * 1024 {
        return Err(Error::InvalidConfig(format!(
            "histogram supports at most {} experts, found {num_experts}",
            48 * 1024 / 4
        )));
    }
    let n = expert_ids.len();
    let mut counts = DeviceTensor::<i32>::zeros(backend, &[num_experts])?;
    let func = backend.function(HISTOGRAM, "dl_histogram")?;
    let blocks = n.div_ceil(THREADS as usize).min(MAX_BLOCKS) as u32;
    let cfg = LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: (num_experts * 4) as u32,
    };
    let (n_i32, e_i32) = (n as i32, num_experts as i32);
    let mut launch = backend.stream().launch_builder(&func);
    launch
        .arg(expert_ids.slice())
        .arg(&n_i32)
        .arg(&e_i32)
        .arg(counts.slice_mut());
    // SAFETY: dl_histogram(const i32* ids, i32 n, i32 num_experts, i32* counts)
    // reads ids[0..n) (the tensor holds n <= i32::MAX elements), writes
    // counts[0..num_experts) (allocated with that length) and uses
    // num_experts * 4 bytes of dynamic shared memory, which the config gives it.
    unsafe { launch.launch(cfg) }?;
    Ok(counts)
}
