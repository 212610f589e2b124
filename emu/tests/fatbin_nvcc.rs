//! Real fatbins: with `NVCC` set (as CI sets it), two of the crate's kernel
//! files are compiled as build.rs compiles them (SASS for sm_80 and sm_90a,
//! PTX for compute_80), and the PTX taken from the fatbin must be the
//! `nvcc -ptx` output token for token, line for line (the fatbin's copy has
//! no comments or indentation). Without `NVCC` the test says so and passes.

use std::path::{Path, PathBuf};
use std::process::Command;

use dropless_emu::fatbin::ptx_from_image;

const GENCODE: &[&str] = &[
    "-gencode=arch=compute_80,code=sm_80",
    "-gencode=arch=compute_90a,code=sm_90a",
    "-gencode=arch=compute_80,code=compute_80",
];

fn nvcc(nvcc: &Path, args: &[&str], src: &Path, out: &Path) {
    let cuda = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cuda");
    let status = Command::new(nvcc)
        .args(args)
        .args(["-O3", "-std=c++17"])
        .arg(format!("-I{}", cuda.display()))
        .arg("-o")
        .arg(out)
        .arg(src)
        .status()
        .expect("nvcc runs");
    assert!(status.success(), "nvcc {args:?} {}", src.display());
}

/// Each line without its comment, with runs of whitespace as one space.
fn tokens(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| {
            let code = l.split("//").next().unwrap_or_default();
            code.split_whitespace().collect::<Vec<_>>().join(" ")
        })
        .collect()
}

#[test]
fn fatbin_ptx_is_the_nvcc_ptx() {
    let Some(path) = std::env::var_os("NVCC").map(PathBuf::from) else {
        eprintln!("NVCC is not set: the real-fatbin test is skipped");
        return;
    };
    let dir = std::env::temp_dir().join(format!("dropless-emu-fatbin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["histogram", "topology"] {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../cuda/{name}.cu"));
        let fatbin = dir.join(format!("{name}.fatbin"));
        let ptx = dir.join(format!("{name}.ptx"));
        let mut fat_args = vec!["-fatbin"];
        fat_args.extend_from_slice(GENCODE);
        nvcc(&path, &fat_args, &src, &fatbin);
        nvcc(&path, &["-ptx", "-arch=compute_80"], &src, &ptx);
        let image = std::fs::read(&fatbin).unwrap();
        let from_fatbin = ptx_from_image(&image).unwrap();
        let expected = std::fs::read_to_string(&ptx).unwrap();
        assert!(from_fatbin.contains(".target sm_80"), "{name}");
        assert_eq!(tokens(&from_fatbin), tokens(&expected), "{name}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
