//! The CUDA driver API entry points of the `libcuda.so` shim.
