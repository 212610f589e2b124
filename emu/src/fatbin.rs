//! The PTX inside a module image: an nvcc fatbin (entries of PTX and SASS,
//! PTX entries zstd-compressed by nvcc 13), the runtime's wrapper around
//! one, or plain PTX text.
//!
//! The fatbin layout (little-endian; as nvcc 13 writes it and cuobjdump
//! reads it):
//!
//! - a 16-byte header: magic `0xBA55ED50` (u32), version (u16), header size
//!   (u16, 16), then the size of everything after the header (u64);
//! - entries back to back, each a header of at least 64 bytes followed by its
//!   payload: kind (u16 at 0: 1 PTX, 2 ELF), entry header size (u32 at 4),
//!   payload size (u64 at 8, padded to 8 bytes), compressed size (u32 at 16),
//!   architecture (u32 at 28, e.g. 80), flags (u64 at 40: 0x8000 zstd, 0x2000
//!   LZ4), uncompressed size (u64 at 56).
//!
//! A PTX entry's text ends with NUL bytes. nvcc strips its comments and
//! indentation but keeps its lines, so PTX line numbers are those of
//! `nvcc -ptx` output.

use std::ffi::CStr;
use std::fmt;
use std::io::Read;

/// The architecture the emulator runs: compute capability 8.0.
pub const DEVICE_ARCH: u32 = 80;

/// The magic number of an nvcc fatbin.
pub const FATBIN_MAGIC: u32 = 0xBA55_ED50;
/// The magic number of the runtime's fatbin wrapper (`__fatBinC_Wrapper_t`:
/// magic, version, pointer to the fatbin, pointer to names).
pub const WRAPPER_MAGIC: u32 = 0x4662_43B1;
/// `\x7fELF`, read as a little-endian u32: a bare cubin.
const ELF_MAGIC: u32 = 0x464C_457F;

const ENTRY_PTX: u16 = 1;
const ENTRY_ELF: u16 = 2;
const ENTRY_HEADER_MIN: usize = 64;
const FLAG_ZSTD: u64 = 0x8000;
const FLAG_LZ4: u64 = 0x2000;
/// The largest decompressed PTX accepted when the entry does not declare its
/// size (a guard against decompression bombs).
const MAX_PTX_BYTES: u64 = 1 << 30;

/// An image the emulator cannot take PTX from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageError {
    /// A null image pointer.
    Null,
    /// Neither a fatbin, a wrapper, an ELF cubin nor PTX text.
    Unrecognised {
        /// The first bytes of the image.
        head: Vec<u8>,
    },
    /// The image ends inside a structure.
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Its byte offset in the image.
        offset: usize,
        /// The bytes it needs.
        needed: usize,
        /// The image's length.
        len: usize,
    },
    /// A fatbin entry whose header is shorter than the fixed 64 bytes.
    BadEntryHeader {
        /// The entry's byte offset.
        offset: usize,
        /// Its declared header size.
        size: u32,
    },
    /// The image holds machine code (SASS) only.
    SassOnly {
        /// The `sm_XX` numbers it holds code for.
        archs: Vec<u32>,
    },
    /// The image holds PTX, but only for newer architectures.
    NoPtxForDevice {
        /// The `compute_XX` numbers of its PTX.
        archs: Vec<u32>,
    },
    /// The PTX entry is compressed in a way the emulator does not decode.
    UnsupportedCompression {
        /// The entry's architecture.
        arch: u32,
        /// The entry's flags.
        flags: u64,
    },
    /// The zstd payload did not decode.
    Decompression {
        /// The entry's architecture.
        arch: u32,
        /// The decoder's message.
        message: String,
    },
    /// The decoded PTX is not the size its entry declares.
    SizeMismatch {
        /// The entry's architecture.
        arch: u32,
        /// The declared size.
        declared: u64,
        /// The decoded size (at most one byte past the declared size).
        decoded: u64,
    },
    /// The PTX is not ASCII/UTF-8 text.
    NotText {
        /// The byte offset, in the PTX, of the first invalid byte.
        offset: usize,
    },
    /// A wrapper passed as bytes: it holds a pointer, which only
    /// [`image_at`] may follow.
    UnresolvedWrapper,
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |prefix: &str, archs: &[u32]| {
            archs
                .iter()
                .map(|a| format!("{prefix}_{a}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            ImageError::Null => write!(f, "the module image pointer is null"),
            ImageError::Unrecognised { head } => write!(
                f,
                "the module image is neither a fatbin (magic 0xBA55ED50), a fatbin wrapper \
                 (0x466243B1), an ELF cubin nor NUL-terminated PTX text (it starts with {head:02x?})"
            ),
            ImageError::Truncated {
                what,
                offset,
                needed,
                len,
            } => write!(
                f,
                "the module image is truncated: {what} at byte {offset} needs {needed} bytes, \
                 the image has {len}"
            ),
            ImageError::BadEntryHeader { offset, size } => write!(
                f,
                "the fatbin entry at byte {offset} declares a {size}-byte header \
                 (at least {ENTRY_HEADER_MIN} expected)"
            ),
            ImageError::SassOnly { archs } => write!(
                f,
                "this image holds only SASS for {}; the emulator runs PTX: compile with a \
                 compute_{DEVICE_ARCH} PTX target (-gencode=arch=compute_{DEVICE_ARCH},code=compute_{DEVICE_ARCH})",
                if archs.is_empty() {
                    "an unknown architecture".to_string()
                } else {
                    list("sm", archs)
                }
            ),
            ImageError::NoPtxForDevice { archs } => write!(
                f,
                "this image holds PTX only for {}, newer than the emulated compute_{DEVICE_ARCH}: \
                 compile with a compute_{DEVICE_ARCH} PTX target",
                list("compute", archs)
            ),
            ImageError::UnsupportedCompression { arch, flags } => write!(
                f,
                "the compute_{arch} PTX entry is compressed with {} (flags {flags:#x}), which the \
                 emulator does not decode (nvcc 13 uses zstd)",
                if flags & FLAG_LZ4 != 0 {
                    "LZ4"
                } else {
                    "an unknown method"
                }
            ),
            ImageError::Decompression { arch, message } => {
                write!(f, "the compute_{arch} PTX entry did not decompress: {message}")
            }
            ImageError::SizeMismatch {
                arch,
                declared,
                decoded,
            } => write!(
                f,
                "the compute_{arch} PTX entry declares {declared} bytes of PTX but holds {}",
                if decoded > declared {
                    "more".to_string()
                } else {
                    decoded.to_string()
                }
            ),
            ImageError::NotText { offset } => {
                write!(f, "the PTX is not text: invalid UTF-8 at byte {offset}")
            }
            ImageError::UnresolvedWrapper => write!(
                f,
                "a fatbin wrapper holds a pointer to its fatbin: resolve it with image_at"
            ),
        }
    }
}

impl std::error::Error for ImageError {}

/// Reads `N` bytes at `offset`, or the error naming `what`.
fn bytes<const N: usize>(
    image: &[u8],
    offset: usize,
    what: &'static str,
) -> Result<[u8; N], ImageError> {
    offset
        .checked_add(N)
        .and_then(|end| image.get(offset..end))
        .and_then(|s| s.try_into().ok())
        .ok_or(ImageError::Truncated {
            what,
            offset,
            needed: N,
            len: image.len(),
        })
}

fn u16_at(image: &[u8], offset: usize, what: &'static str) -> Result<u16, ImageError> {
    bytes(image, offset, what).map(u16::from_le_bytes)
}

fn u32_at(image: &[u8], offset: usize, what: &'static str) -> Result<u32, ImageError> {
    bytes(image, offset, what).map(u32::from_le_bytes)
}

fn u64_at(image: &[u8], offset: usize, what: &'static str) -> Result<u64, ImageError> {
    bytes(image, offset, what).map(u64::from_le_bytes)
}

/// `len` bytes at `offset`, or the error naming `what`.
fn range<'a>(
    image: &'a [u8],
    offset: usize,
    len: u64,
    what: &'static str,
) -> Result<&'a [u8], ImageError> {
    let truncated = ImageError::Truncated {
        what,
        offset,
        needed: usize::try_from(len).unwrap_or(usize::MAX),
        len: image.len(),
    };
    let len = usize::try_from(len).map_err(|_| truncated.clone())?;
    offset
        .checked_add(len)
        .and_then(|end| image.get(offset..end))
        .ok_or(truncated)
}

/// The PTX text of a module image, as `cuModuleLoadData` receives it: an
/// nvcc fatbin (the PTX entry of the highest architecture not above
/// [`DEVICE_ARCH`]), a bare ELF cubin (an error: SASS only), or PTX text
/// (up to its first NUL byte, if any; text holds no control characters
/// other than whitespace).
pub fn ptx_from_image(image: &[u8]) -> Result<String, ImageError> {
    let magic = image
        .get(..4)
        .map(|m| u32::from_le_bytes([m[0], m[1], m[2], m[3]]));
    match magic {
        Some(FATBIN_MAGIC) => fatbin_ptx(image),
        Some(WRAPPER_MAGIC) => Err(ImageError::UnresolvedWrapper),
        Some(ELF_MAGIC) => Err(ImageError::SassOnly {
            archs: elf_arch(image).into_iter().collect(),
        }),
        _ => {
            let text = image.split(|&b| b == 0).next().unwrap_or_default();
            let control = |c: char| c.is_ascii_control() && !c.is_ascii_whitespace();
            match std::str::from_utf8(text) {
                Ok(s) if !s.trim().is_empty() && !s.contains(control) => Ok(s.to_string()),
                _ => Err(ImageError::Unrecognised {
                    head: image.iter().take(16).copied().collect(),
                }),
            }
        }
    }
}

/// The bytes of the image at `ptr`, measured as the driver measures them:
/// a fatbin by its header, a wrapper by following its pointer to the fatbin,
/// a cubin by its 64-byte ELF header (all that [`ptx_from_image`] reads of
/// it), anything else as NUL-terminated text.
///
/// # Safety
///
/// `ptr` must be null or point to a valid image of one of those kinds,
/// readable for its whole length, for the lifetime `'a`.
pub unsafe fn image_at<'a>(ptr: *const u8) -> Result<&'a [u8], ImageError> {
    if ptr.is_null() {
        return Err(ImageError::Null);
    }
    let mut head = [0u8; 4];
    for (i, slot) in head.iter_mut().enumerate() {
        // SAFETY: the bytes before the first NUL are part of the image
        // (text ends at its NUL; every binary kind is longer than 4 bytes).
        let b = unsafe { *ptr.add(i) };
        if b == 0 {
            break;
        }
        *slot = b;
    }
    match u32::from_le_bytes(head) {
        FATBIN_MAGIC => {
            // SAFETY: a fatbin starts with its 16-byte header, whose last
            // 8 bytes are the size of the rest; the caller vouches for it.
            let header = unsafe { std::slice::from_raw_parts(ptr, 16) };
            let header_size = u16_at(header, 6, "fatbin header size")?;
            let rest = u64_at(header, 8, "fatbin size")?;
            let len = u64::from(header_size)
                .checked_add(rest)
                .and_then(|n| usize::try_from(n).ok())
                .filter(|&n| n <= isize::MAX as usize)
                .ok_or(ImageError::Truncated {
                    what: "fatbin",
                    offset: 0,
                    needed: usize::MAX,
                    len: 16,
                })?;
            // SAFETY: the header says the fatbin is `len` bytes long.
            Ok(unsafe { std::slice::from_raw_parts(ptr, len.max(16)) })
        }
        WRAPPER_MAGIC => {
            // SAFETY: a wrapper is two i32 then two pointers (24 bytes).
            let wrapper = unsafe { std::slice::from_raw_parts(ptr, 24) };
            let data = u64_at(wrapper, 8, "fatbin wrapper's pointer")? as usize as *const u8;
            // SAFETY: the wrapper's pointer is to its fatbin (checked next).
            let inner = unsafe { image_at(data)? };
            match inner.get(..4) {
                Some(m) if m == FATBIN_MAGIC.to_le_bytes() => Ok(inner),
                _ => Err(ImageError::Unrecognised {
                    head: inner.iter().take(16).copied().collect(),
                }),
            }
        }
        // SAFETY: an ELF64 file starts with its 64-byte header.
        ELF_MAGIC => Ok(unsafe { std::slice::from_raw_parts(ptr, 64) }),
        // SAFETY: anything else is taken as NUL-terminated text.
        _ => Ok(unsafe { CStr::from_ptr(ptr.cast()) }.to_bytes()),
    }
}

/// PTX bytes as text.
fn text_of(bytes: &[u8]) -> Result<String, ImageError> {
    let text = bytes.split(|&b| b == 0).next().unwrap_or_default();
    std::str::from_utf8(text)
        .map(str::to_string)
        .map_err(|e| ImageError::NotText {
            offset: e.valid_up_to(),
        })
}

/// The SM number in a cubin's ELF header (`e_flags`; its place depends on
/// the CUDA ELF ABI version), when the header is there.
fn elf_arch(image: &[u8]) -> Option<u32> {
    let abi_version = *image.get(8)?;
    let flags = u32_at(image, 48, "ELF flags").ok()?;
    Some(if abi_version >= 8 {
        (flags >> 8) & 0xFF
    } else {
        flags & 0xFF
    })
}

/// One fatbin entry.
struct Entry<'a> {
    kind: u16,
    arch: u32,
    flags: u64,
    compressed_size: u32,
    uncompressed_size: u64,
    payload: &'a [u8],
}

/// The entries of a fatbin, in order.
fn entries(image: &[u8]) -> Result<Vec<Entry<'_>>, ImageError> {
    let header_size = u16_at(image, 6, "fatbin header")? as usize;
    let body = u64_at(image, 8, "fatbin header")?;
    let end = range(image, header_size, body, "fatbin body")?.len() + header_size;
    let mut offset = header_size;
    let mut found = Vec::new();
    while offset < end {
        let entry = range(
            image,
            offset,
            ENTRY_HEADER_MIN as u64,
            "fatbin entry header",
        )?;
        let size = u32_at(entry, 4, "fatbin entry header")?;
        if (size as usize) < ENTRY_HEADER_MIN {
            return Err(ImageError::BadEntryHeader { offset, size });
        }
        let payload_size = u64_at(entry, 8, "fatbin entry header")?;
        let start = offset + size as usize;
        let payload = range(image, start, payload_size, "fatbin entry payload")?;
        found.push(Entry {
            kind: u16_at(entry, 0, "fatbin entry header")?,
            arch: u32_at(entry, 28, "fatbin entry header")?,
            flags: u64_at(entry, 40, "fatbin entry header")?,
            compressed_size: u32_at(entry, 16, "fatbin entry header")?,
            uncompressed_size: u64_at(entry, 56, "fatbin entry header")?,
            payload,
        });
        offset = start + payload.len();
    }
    Ok(found)
}

/// The PTX of the fatbin entry chosen for the device.
fn fatbin_ptx(image: &[u8]) -> Result<String, ImageError> {
    let entries = entries(image)?;
    let ptx: Vec<&Entry> = entries.iter().filter(|e| e.kind == ENTRY_PTX).collect();
    let chosen = ptx
        .iter()
        .filter(|e| e.arch <= DEVICE_ARCH)
        .max_by_key(|e| e.arch);
    match chosen {
        Some(entry) => decode(entry),
        None if ptx.is_empty() => {
            let mut archs: Vec<u32> = entries
                .iter()
                .filter(|e| e.kind == ENTRY_ELF)
                .map(|e| e.arch)
                .collect();
            archs.dedup();
            Err(ImageError::SassOnly { archs })
        }
        None => Err(ImageError::NoPtxForDevice {
            archs: ptx.iter().map(|e| e.arch).collect(),
        }),
    }
}

/// The text of a PTX entry, decompressed when it is.
fn decode(entry: &Entry) -> Result<String, ImageError> {
    if entry.flags & FLAG_ZSTD != 0 {
        let compressed = match entry.compressed_size as usize {
            0 => entry.payload,
            n => entry.payload.get(..n).ok_or(ImageError::Truncated {
                what: "compressed PTX",
                offset: 0,
                needed: n,
                len: entry.payload.len(),
            })?,
        };
        let declared = (entry.uncompressed_size > 0).then_some(entry.uncompressed_size);
        let limit = declared.unwrap_or(MAX_PTX_BYTES);
        let mut decoder = ruzstd::decoding::StreamingDecoder::new(compressed).map_err(|e| {
            ImageError::Decompression {
                arch: entry.arch,
                message: e.to_string(),
            }
        })?;
        let mut text = Vec::new();
        (&mut decoder)
            .take(limit + 1)
            .read_to_end(&mut text)
            .map_err(|e| ImageError::Decompression {
                arch: entry.arch,
                message: e.to_string(),
            })?;
        let decoded = text.len() as u64;
        if declared.is_some_and(|d| d != decoded) || decoded > limit {
            return Err(ImageError::SizeMismatch {
                arch: entry.arch,
                declared: limit,
                decoded,
            });
        }
        text_of(&text)
    } else if entry.flags & FLAG_LZ4 != 0 {
        Err(ImageError::UnsupportedCompression {
            arch: entry.arch,
            flags: entry.flags,
        })
    } else {
        text_of(entry.payload)
    }
}
