//! With `--features cuda`: compiles `cuda/*.cu` to PTX with the toolkit's
//! nvcc (on PATH, or `$CUDA_ROOT/bin`; `scripts/build-cuda.sh` provides the
//! pinned one) for `CUDA_COMPUTE_CAP`, into OUT_DIR, where
//! `model::paged_attention` embeds it. Without the feature it does nothing.
//! Unset, the PTX is for compute 7.5, the oldest nvcc 13 targets, which the
//! driver compiles for any newer GPU (the kernel needs nothing newer than
//! half-precision conversions): candle's own kernels follow the GPU of the
//! build machine, and a module for a newer GPU than the one it runs on
//! would be refused at the first attention call.

use std::path::PathBuf;
use std::process::Command;

fn main() -> Result<(), String> {
    println!("cargo::rerun-if-changed=cuda");
    println!("cargo::rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo::rerun-if-env-changed=CUDA_ROOT");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return Ok(());
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").map_err(|e| format!("OUT_DIR: {e}"))?);
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "75".into());
    let nvcc = std::env::var_os("CUDA_ROOT")
        .map(|root| PathBuf::from(root).join("bin/nvcc"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    let source = "cuda/paged_attention.cu";
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", "-std=c++17", "-lineinfo"])
        .arg(format!("-arch=compute_{cap}"))
        .arg(source)
        .arg("-o")
        .arg(out.join("paged_attention.ptx"))
        .status()
        .map_err(|e| {
            format!(
                "cannot run {}: {e} (scripts/build-cuda.sh puts the pinned nvcc on PATH)",
                nvcc.display()
            )
        })?;
    if !status.success() {
        return Err(format!("{} failed on {source}: {status}", nvcc.display()));
    }
    Ok(())
}
