//! Tensor sources: a memory-mapped Hugging Face safetensors checkpoint
//! (single file or sharded with `model.safetensors.index.json`) and an
//! in-memory map for the built-in demo model. Tensors are converted from
//! their stored dtype (f32, f16, bf16) to the run dtype one at a time, so the
//! only full copy of the weights is the model's own. Every tensor is checked
//! to be finite in the run dtype.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use dropless::Element;
use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata};
use safetensors::SafeTensors;
use serde_json::Value;

use crate::error::{ModelError, Result};

/// Where a model's tensors come from.
pub trait TensorSource {
    /// Whether the source holds a tensor of this name.
    fn contains(&self, name: &str) -> bool;
    /// The tensor `name`, checked to have exactly `shape`, as a row-major
    /// vector of `T`.
    fn get<T: Element>(&self, name: &str, shape: &[usize]) -> Result<Vec<T>>;
}

/// Checks a stored shape against the expected one.
fn check_shape(name: &str, found: &[usize], want: &[usize]) -> Result<()> {
    if found == want {
        Ok(())
    } else {
        Err(ModelError::tensor(
            name,
            format!("has shape {found:?}, expected {want:?} from config.json"),
        ))
    }
}

/// Checks that every value of tensor `name` (of `shape`) is finite once
/// converted to `T`: NaN or infinity from a corrupt checkpoint, or a value
/// that overflows the run dtype, would otherwise give NaN logits with no
/// error. The error names the tensor and the index (row, column, ...).
fn check_finite<T: Element>(name: &str, shape: &[usize], values: &[T]) -> Result<()> {
    let Some(flat) = values.iter().position(|v| !v.to_f32().is_finite()) else {
        return Ok(());
    };
    let mut index = vec![0; shape.len()];
    let mut rest = flat;
    for (i, &dim) in index.iter_mut().zip(shape).rev() {
        *i = rest % dim.max(1);
        rest /= dim.max(1);
    }
    let position = match index[..] {
        [row, col] => format!("row {row}, column {col}"),
        _ => format!("index {index:?}"),
    };
    Err(ModelError::tensor(
        name,
        format!(
            "holds {} at {position} as {}: the checkpoint is corrupt, or its value overflows {} \
             (a wider --dtype may hold it)",
            values[flat].to_f32(),
            T::DTYPE,
            T::DTYPE
        ),
    ))
}

/// One memory-mapped safetensors file with its parsed header.
struct Shard {
    path: PathBuf,
    mmap: Mmap,
    header_len: usize,
    metadata: Metadata,
}

impl Shard {
    /// Maps `path` and parses its header.
    fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| ModelError::file(path, e))?;
        // SAFETY: the checkpoint file is mapped read-only; the loader only
        // reads it and assumes no other process truncates it while mapped
        // (memmap2's documented requirement).
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::file(path, e))?;
        let (header_len, metadata) = SafeTensors::read_metadata(&mmap)
            .map_err(|e| ModelError::file(path, format!("not a valid safetensors file: {e}")))?;
        Ok(Shard {
            path: path.to_path_buf(),
            mmap,
            header_len,
            metadata,
        })
    }
}

/// A Hugging Face checkpoint folder's safetensors, memory-mapped.
pub struct Checkpoint {
    shards: Vec<Shard>,
    /// Tensor name to the index of the shard that holds it.
    index: HashMap<String, usize>,
}

impl Checkpoint {
    /// Maps `dir/model.safetensors`, or the shards listed in
    /// `dir/model.safetensors.index.json` when that exists.
    pub fn open(dir: &Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<String> = if index_path.exists() {
            let text = std::fs::read_to_string(&index_path)
                .map_err(|e| ModelError::file(&index_path, e))?;
            let json: Value =
                serde_json::from_str(&text).map_err(|e| ModelError::file(&index_path, e))?;
            let map = json
                .get("weight_map")
                .and_then(Value::as_object)
                .ok_or_else(|| ModelError::file(&index_path, "has no `weight_map` object"))?;
            let mut files: Vec<String> = Vec::new();
            for (name, file) in map {
                let file = file.as_str().ok_or_else(|| {
                    ModelError::file(
                        &index_path,
                        format!("weight_map entry `{name}` is not a file name"),
                    )
                })?;
                if !files.iter().any(|f| f == file) {
                    files.push(file.to_string());
                }
            }
            files.sort();
            files
        } else {
            let single = dir.join("model.safetensors");
            if !single.exists() {
                return Err(ModelError::file(
                    dir,
                    "holds neither model.safetensors nor model.safetensors.index.json",
                ));
            }
            vec!["model.safetensors".to_string()]
        };
        let mut shards = Vec::with_capacity(files.len());
        let mut index = HashMap::new();
        for (i, file) in files.iter().enumerate() {
            let shard = Shard::open(&dir.join(file))?;
            for name in shard.metadata.tensors().keys() {
                if index.insert(name.clone(), i).is_some() {
                    return Err(ModelError::tensor(name, "is stored in more than one shard"));
                }
            }
            shards.push(shard);
        }
        Ok(Checkpoint { shards, index })
    }
}

/// Decodes little-endian `bytes` of `dtype` into `T`.
fn convert<T: Element>(name: &str, dtype: Dtype, bytes: &[u8]) -> Result<Vec<T>> {
    let out = match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| T::from_f32(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| T::from_f32(f16::from_le_bytes([c[0], c[1]]).to_f32()))
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| T::from_f32(bf16::from_le_bytes([c[0], c[1]]).to_f32()))
            .collect(),
        other => {
            return Err(ModelError::tensor(
                name,
                format!("has dtype {other:?}; only F32, F16 and BF16 checkpoints are supported"),
            ))
        }
    };
    Ok(out)
}

impl TensorSource for Checkpoint {
    fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    fn get<T: Element>(&self, name: &str, shape: &[usize]) -> Result<Vec<T>> {
        let shard = self
            .index
            .get(name)
            .map(|&i| &self.shards[i])
            .ok_or_else(|| ModelError::tensor(name, "is missing from the checkpoint"))?;
        let info = shard
            .metadata
            .info(name)
            .ok_or_else(|| ModelError::tensor(name, "is missing from the checkpoint"))?;
        check_shape(name, &info.shape, shape)?;
        let (start, end) = info.data_offsets;
        let base = 8 + shard.header_len;
        let bytes = shard.mmap.get(base + start..base + end).ok_or_else(|| {
            ModelError::tensor(name, format!("data lies outside {}", shard.path.display()))
        })?;
        let values = convert(name, info.dtype, bytes)?;
        check_finite(name, shape, &values)?;
        Ok(values)
    }
}

/// Tensors held in memory as f32 (the demo model's random weights).
#[derive(Default)]
pub struct MemorySource {
    tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
}

impl MemorySource {
    /// Adds (or replaces) a tensor.
    pub fn insert(&mut self, name: String, shape: Vec<usize>, data: Vec<f32>) {
        self.tensors.insert(name, (shape, data));
    }
}

impl TensorSource for MemorySource {
    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    fn get<T: Element>(&self, name: &str, shape: &[usize]) -> Result<Vec<T>> {
        let (found, data) = self
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::tensor(name, "is missing"))?;
        check_shape(name, found, shape)?;
        let values: Vec<T> = data.iter().map(|&v| T::from_f32(v)).collect();
        check_finite(name, shape, &values)?;
        Ok(values)
    }
}
