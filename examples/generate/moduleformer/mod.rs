//! IBM's ModuleFormer / MoLM family: config, loader, the CPU model and the
//! `--demo molm` weights.

pub mod config;
pub mod demo;
pub mod model;
