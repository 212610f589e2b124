//! The PTX inside a module image: an nvcc fatbin (entries of PTX and SASS,
//! PTX entries zstd-compressed by nvcc 13), or plain PTX text.
