//! The cuBLAS entry points of the `libcublas.so` shim: the GEMMs on the CPU.
