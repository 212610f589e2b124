//! A writer of little-endian f32 `.npy` files (format version 1.0).

use std::io::Write;
use std::path::Path;

use ndarray::Array3;

use crate::error::{ModelError, Result};

/// The bytes of an `.npy` file holding `a` (C order, `<f4`).
pub fn encode(a: &Array3<f32>) -> Vec<u8> {
    let (d0, d1, d2) = a.dim();
    let mut header =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({d0}, {d1}, {d2}), }}");
    // Magic (6) + version (2) + header length (2) + header + '\n', padded to 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + 4 * a.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in a.iter() {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Writes `a` to `path` as `.npy`.
pub fn write(path: &Path, a: &Array3<f32>) -> Result<()> {
    let mut file = std::fs::File::create(path).map_err(|e| ModelError::file(path, e))?;
    file.write_all(&encode(a))
        .map_err(|e| ModelError::file(path, e))
}
