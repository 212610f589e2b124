//! IBM's ModuleFormer / MoLM family: config, loader, the CPU model and the
//! `--demo molm` weights, and the GPU model.

pub mod config;
pub mod demo;
pub mod gpu;
pub mod model;
