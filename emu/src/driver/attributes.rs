//! The device attributes (`cuDeviceGetAttribute`) of the emulated device: an
//! A100-like compute capability 8.0 part. Attributes of hardware features
//! the emulator does not provide (managed memory, host mapping, cooperative
//! launch, clusters, IPC, ...) are 0.

/// `CU_DEVICE_ATTRIBUTE_MAX` of the CUDA 13.0 driver API: attributes are
/// `1..ATTRIBUTE_END`.
pub const ATTRIBUTE_END: i32 = 148;

/// `CU_DEVICE_ATTRIBUTE_PCI_BUS_ID`: the device ordinal.
const PCI_BUS_ID: i32 = 33;

/// The attributes that are not 0, by number.
const VALUES: &[(i32, i32)] = &[
    (1, 1024),        // MAX_THREADS_PER_BLOCK
    (2, 1024),        // MAX_BLOCK_DIM_X
    (3, 1024),        // MAX_BLOCK_DIM_Y
    (4, 64),          // MAX_BLOCK_DIM_Z
    (5, i32::MAX),    // MAX_GRID_DIM_X
    (6, 65535),       // MAX_GRID_DIM_Y
    (7, 65535),       // MAX_GRID_DIM_Z
    (8, 48 * 1024),   // MAX_SHARED_MEMORY_PER_BLOCK
    (9, 64 * 1024),   // TOTAL_CONSTANT_MEMORY
    (10, 32),         // WARP_SIZE
    (11, i32::MAX),   // MAX_PITCH
    (12, 65536),      // MAX_REGISTERS_PER_BLOCK
    (13, 1_410_000),  // CLOCK_RATE (kHz)
    (14, 512),        // TEXTURE_ALIGNMENT
    (15, 1),          // GPU_OVERLAP
    (16, 108),        // MULTIPROCESSOR_COUNT
    (30, 512),        // SURFACE_ALIGNMENT
    (31, 1),          // CONCURRENT_KERNELS
    (36, 1_215_000),  // MEMORY_CLOCK_RATE (kHz)
    (37, 5120),       // GLOBAL_MEMORY_BUS_WIDTH (bits)
    (38, 40 << 20),   // L2_CACHE_SIZE
    (39, 2048),       // MAX_THREADS_PER_MULTIPROCESSOR
    (40, 3),          // ASYNC_ENGINE_COUNT
    (41, 1),          // UNIFIED_ADDRESSING
    (75, 8),          // COMPUTE_CAPABILITY_MAJOR
    (76, 0),          // COMPUTE_CAPABILITY_MINOR
    (78, 1),          // STREAM_PRIORITIES_SUPPORTED
    (79, 1),          // GLOBAL_L1_CACHE_SUPPORTED
    (80, 1),          // LOCAL_L1_CACHE_SUPPORTED
    (81, 164 * 1024), // MAX_SHARED_MEMORY_PER_MULTIPROCESSOR
    (82, 65536),      // MAX_REGISTERS_PER_MULTIPROCESSOR
    (87, 2),          // SINGLE_TO_DOUBLE_PRECISION_PERF_RATIO
    (90, 1),          // COMPUTE_PREEMPTION_SUPPORTED
    (97, 166_912),    // MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
    (106, 32),        // MAX_BLOCKS_PER_MULTIPROCESSOR
    (111, 1024),      // RESERVED_SHARED_MEMORY_PER_BLOCK
    (115, 1),         // MEMORY_POOLS_SUPPORTED (cuMemAllocAsync)
];

/// Attribute `attribute` of device `ordinal`, or `None` for a number that
/// is not an attribute.
pub fn device_attribute(attribute: i32, ordinal: usize) -> Option<i32> {
    if !(1..ATTRIBUTE_END).contains(&attribute) {
        return None;
    }
    if attribute == PCI_BUS_ID {
        return Some(i32::try_from(ordinal).unwrap_or(i32::MAX));
    }
    Some(
        VALUES
            .iter()
            .find(|(a, _)| *a == attribute)
            .map_or(0, |(_, v)| *v),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::{MAX_SHARED_PER_BLOCK_OPTIN, MAX_THREADS_PER_BLOCK};

    #[test]
    fn limits_agree_with_the_interpreter() {
        assert_eq!(
            device_attribute(97, 0),
            Some(MAX_SHARED_PER_BLOCK_OPTIN as i32)
        );
        assert_eq!(device_attribute(1, 0), Some(MAX_THREADS_PER_BLOCK as i32));
        assert_eq!(device_attribute(0, 0), None);
        assert_eq!(device_attribute(ATTRIBUTE_END, 0), None);
        assert_eq!(device_attribute(PCI_BUS_ID, 3), Some(3));
        assert_eq!(device_attribute(83, 0), Some(0));
    }
}
