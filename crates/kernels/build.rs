//! With the `cuda` feature: compiles `cuda/*.cu` to PTX (one module per file,
//! embedded by `src/cuda.rs`) with `nvcc` for `CUDA_COMPUTE_CAP` (default 90,
//! Hopper), and adds `SEQREC_CUDA_LINK_DIR` to the native link path (the
//! folder of link stubs of `../shared/docs/gpu.md`). Without the feature it
//! does nothing, so CPU builds need no CUDA toolkit.

use std::path::PathBuf;
use std::process::Command;

const MODULES: [&str; 4] = ["optim", "loss", "gru", "rank"];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=SEQREC_CUDA_LINK_DIR");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=NVCC");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    if let Some(dir) = std::env::var_os("SEQREC_CUDA_LINK_DIR") {
        println!("cargo:rustc-link-search=native={}", PathBuf::from(dir).display());
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let cap = cap.trim().replace('.', "");
    if cap.is_empty() || !cap.chars().all(|c| c.is_ascii_digit()) {
        panic!("CUDA_COMPUTE_CAP: found `{cap}`, expected a compute capability such as 90 (Hopper) or 8.0");
    }
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    for m in MODULES {
        let src = PathBuf::from("cuda").join(format!("{m}.cu"));
        println!("cargo:rerun-if-changed={}", src.display());
        let dst = out.join(format!("{m}.ptx"));
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", "-std=c++17", "--fmad=false"])
            .arg(format!("-arch=compute_{cap}"))
            .arg("-Icuda")
            .arg("-o")
            .arg(&dst)
            .arg(&src)
            .status()
            .unwrap_or_else(|e| {
                panic!("the `cuda` feature runs `{nvcc}` to compile {}: {e} (see ../shared/docs/gpu.md)", src.display())
            });
        if !status.success() {
            panic!("`{nvcc}` failed on {} ({status})", src.display());
        }
    }
    println!("cargo:rerun-if-changed=cuda/common.cuh");
}
