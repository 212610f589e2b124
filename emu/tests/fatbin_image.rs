//! Module images built here byte by byte, in the layout nvcc writes (see
//! `dropless_emu::fatbin`): the PTX entry chosen for compute 8.0, zstd and
//! plain payloads, the wrapper, plain text, and every refusal.

use dropless_emu::fatbin::{image_at, ptx_from_image, ImageError, FATBIN_MAGIC, WRAPPER_MAGIC};
use ruzstd::encoding::{compress_to_vec, CompressionLevel};

const PTX: u16 = 1;
const ELF: u16 = 2;
const ZSTD: u64 = 0x8000;
const LZ4: u64 = 0x2000;

/// One entry: kind, architecture, flags, payload (already compressed when
/// the flags say so), and the uncompressed size to declare.
struct Entry {
    kind: u16,
    arch: u32,
    flags: u64,
    payload: Vec<u8>,
    uncompressed: u64,
}

fn ptx_text(arch: u32) -> String {
    format!(".version 9.0\n.target sm_{arch}\n.address_size 64\n")
}

/// A plain PTX entry (text plus its NUL).
fn plain(arch: u32) -> Entry {
    let mut payload = ptx_text(arch).into_bytes();
    payload.push(0);
    Entry {
        kind: PTX,
        arch,
        flags: 0x11,
        uncompressed: 0,
        payload,
    }
}

/// A zstd-compressed PTX entry, as nvcc 13 writes them.
fn zstd(arch: u32) -> Entry {
    let mut text = ptx_text(arch).into_bytes();
    text.push(0);
    Entry {
        kind: PTX,
        arch,
        flags: 0x11 | ZSTD,
        uncompressed: text.len() as u64,
        payload: compress_to_vec(&text[..], CompressionLevel::Fastest),
    }
}

fn elf(arch: u32) -> Entry {
    Entry {
        kind: ELF,
        arch,
        flags: 0x11,
        uncompressed: 0,
        payload: vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0x41],
    }
}

/// The fatbin of `entries`: 16-byte header, then each 64-byte entry header
/// and its payload padded to 8 bytes.
fn fatbin(entries: &[Entry]) -> Vec<u8> {
    let mut body = Vec::new();
    for e in entries {
        let padded = e.payload.len().div_ceil(8) * 8;
        let mut h = vec![0u8; 64];
        h[0..2].copy_from_slice(&e.kind.to_le_bytes());
        h[2..4].copy_from_slice(&0x0101u16.to_le_bytes());
        h[4..8].copy_from_slice(&64u32.to_le_bytes());
        h[8..16].copy_from_slice(&(padded as u64).to_le_bytes());
        let compressed = if e.flags & ZSTD != 0 {
            e.payload.len() as u32
        } else {
            0
        };
        h[16..20].copy_from_slice(&compressed.to_le_bytes());
        h[28..32].copy_from_slice(&e.arch.to_le_bytes());
        h[40..48].copy_from_slice(&e.flags.to_le_bytes());
        h[56..64].copy_from_slice(&e.uncompressed.to_le_bytes());
        body.extend_from_slice(&h);
        body.extend_from_slice(&e.payload);
        body.resize(body.len() + padded - e.payload.len(), 0);
    }
    let mut image = Vec::new();
    image.extend_from_slice(&FATBIN_MAGIC.to_le_bytes());
    image.extend_from_slice(&1u16.to_le_bytes());
    image.extend_from_slice(&16u16.to_le_bytes());
    image.extend_from_slice(&(body.len() as u64).to_le_bytes());
    image.extend_from_slice(&body);
    image
}

#[test]
fn a_plain_ptx_entry_is_its_text_without_the_nul() {
    assert_eq!(ptx_from_image(&fatbin(&[plain(80)])).unwrap(), ptx_text(80));
}

#[test]
fn a_zstd_entry_is_decompressed() {
    assert_eq!(ptx_from_image(&fatbin(&[zstd(80)])).unwrap(), ptx_text(80));
}

#[test]
fn the_highest_ptx_not_above_compute_80_is_chosen() {
    let image = fatbin(&[elf(80), zstd(70), zstd(90), plain(80), elf(90)]);
    assert_eq!(ptx_from_image(&image).unwrap(), ptx_text(80));
    let image = fatbin(&[plain(52), zstd(75), plain(86)]);
    assert_eq!(ptx_from_image(&image).unwrap(), ptx_text(75));
}

#[test]
fn sass_only_images_name_their_architectures() {
    let err = ptx_from_image(&fatbin(&[elf(80), elf(90)])).unwrap_err();
    assert_eq!(
        err,
        ImageError::SassOnly {
            archs: vec![80, 90]
        }
    );
    let text = err.to_string();
    assert!(text.contains("only SASS for sm_80, sm_90"), "{text}");
    assert!(text.contains("compute_80"), "{text}");
}

#[test]
fn a_bare_cubin_is_sass_only() {
    // An ELF64 header of CUDA ABI version 8 with sm_86 in e_flags bits 8..16.
    let mut elf = vec![0u8; 64];
    elf[..9].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0x41, 8]);
    elf[48..52].copy_from_slice(&0x0600_5604u32.to_le_bytes());
    assert_eq!(
        ptx_from_image(&elf),
        Err(ImageError::SassOnly { archs: vec![86] })
    );
}

#[test]
fn ptx_only_for_newer_devices_is_refused() {
    let err = ptx_from_image(&fatbin(&[zstd(90), elf(90)])).unwrap_err();
    assert_eq!(err, ImageError::NoPtxForDevice { archs: vec![90] });
    assert!(err.to_string().contains("compute_90"));
}

#[test]
fn lz4_payloads_are_an_unsupported_compression() {
    let mut e = plain(80);
    e.flags |= LZ4;
    let err = ptx_from_image(&fatbin(&[e])).unwrap_err();
    assert!(matches!(
        err,
        ImageError::UnsupportedCompression { arch: 80, .. }
    ));
    assert!(err.to_string().contains("LZ4"));
}

#[test]
fn a_wrong_declared_size_or_a_corrupt_frame_is_refused() {
    let mut e = zstd(80);
    e.uncompressed += 1;
    assert!(matches!(
        ptx_from_image(&fatbin(&[e])),
        Err(ImageError::SizeMismatch { arch: 80, .. })
    ));
    let mut e = zstd(80);
    e.payload.truncate(e.payload.len() / 2);
    e.payload.extend_from_slice(&[0xAB; 3]);
    assert!(ptx_from_image(&fatbin(&[e])).is_err());
}

#[test]
fn truncated_images_say_where() {
    let image = fatbin(&[zstd(80), elf(80)]);
    for cut in [8, 16 + 40, image.len() - 3] {
        match ptx_from_image(&image[..cut]) {
            Err(ImageError::Truncated { len, .. }) => assert_eq!(len, cut),
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
}

#[test]
fn an_entry_header_shorter_than_64_bytes_is_refused() {
    let mut image = fatbin(&[plain(80)]);
    image[16 + 4..16 + 8].copy_from_slice(&0u32.to_le_bytes());
    assert!(matches!(
        ptx_from_image(&image),
        Err(ImageError::BadEntryHeader {
            offset: 16,
            size: 0
        })
    ));
}

#[test]
fn plain_text_is_taken_up_to_its_nul_and_binary_junk_is_refused() {
    assert_eq!(
        ptx_from_image(b".version 9.0\n\0ignored").unwrap(),
        ".version 9.0\n"
    );
    assert_eq!(ptx_from_image(b".version 9.0").unwrap(), ".version 9.0");
    for junk in [&b"\xde\xad\xbe\xef\xff\xfe"[..], b"", b"\0", b"  \n\0"] {
        assert!(
            matches!(ptx_from_image(junk), Err(ImageError::Unrecognised { .. })),
            "{junk:?}"
        );
    }
    let err = ptx_from_image(&0x1234_5678u32.to_le_bytes()).unwrap_err();
    assert!(err.to_string().contains("0xBA55ED50"));
}

#[test]
fn invalid_utf8_ptx_is_not_text() {
    let mut e = plain(80);
    e.payload[3] = 0xFF;
    assert_eq!(
        ptx_from_image(&fatbin(&[e])),
        Err(ImageError::NotText { offset: 3 })
    );
}

#[test]
fn image_at_measures_fatbins_wrappers_and_text() {
    let image = fatbin(&[zstd(80)]);
    // SAFETY: `image` is a whole fatbin.
    let seen = unsafe { image_at(image.as_ptr()) }.unwrap();
    assert_eq!(seen, &image[..]);

    let mut wrapper = Vec::new();
    wrapper.extend_from_slice(&WRAPPER_MAGIC.to_le_bytes());
    wrapper.extend_from_slice(&1u32.to_le_bytes());
    wrapper.extend_from_slice(&(image.as_ptr() as u64).to_le_bytes());
    wrapper.extend_from_slice(&0u64.to_le_bytes());
    // SAFETY: `wrapper` points to the whole fatbin `image`.
    let seen = unsafe { image_at(wrapper.as_ptr()) }.unwrap();
    assert_eq!(seen.as_ptr(), image.as_ptr());
    assert_eq!(ptx_from_image(seen).unwrap(), ptx_text(80));
    assert_eq!(ptx_from_image(&wrapper), Err(ImageError::UnresolvedWrapper));

    let text = b"ab\0";
    // SAFETY: NUL-terminated text.
    assert_eq!(unsafe { image_at(text.as_ptr()) }.unwrap(), b"ab");
    // SAFETY: a null pointer is refused before any read.
    assert_eq!(unsafe { image_at(std::ptr::null()) }, Err(ImageError::Null));
}
