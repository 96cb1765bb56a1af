// Finds libtorch and gives every binary of the package that includes this file an
// rpath to its `lib/` directory, so `lorastream` runs without LD_LIBRARY_PATH.
//
// libtorch is located the way torch-sys does it: `$LIBTORCH` (set by
// `.cargo/config.toml` to the `.libtorch` link made by `scripts/setup-libtorch.sh`),
// or the `torch` package of python when `LIBTORCH_USE_PYTORCH` is set.

use std::path::PathBuf;
use std::process::Command;

const HINT: &str =
    "run scripts/setup-libtorch.sh (or `make build`), or set LIBTORCH to a libtorch directory";

fn libtorch_dir() -> Result<PathBuf, String> {
    println!("cargo::rerun-if-env-changed=LIBTORCH");
    println!("cargo::rerun-if-env-changed=LIBTORCH_USE_PYTORCH");
    println!("cargo::rerun-if-env-changed=VIRTUAL_ENV");
    if let Ok(dir) = std::env::var("LIBTORCH")
        && std::env::var_os("LIBTORCH_USE_PYTORCH").is_none()
    {
        return Ok(PathBuf::from(dir));
    }
    if std::env::var_os("LIBTORCH_USE_PYTORCH").is_some() {
        // As torch-sys: `python` inside an activated venv, else `python3`.
        let python = if std::env::var_os("VIRTUAL_ENV").is_some() {
            "python"
        } else {
            "python3"
        };
        let out = Command::new(python)
            .args([
                "-c",
                "import os, torch; print(os.path.dirname(torch.__file__))",
            ])
            .output()
            .map_err(|e| format!("cannot run {python}: {e}"))?;
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr);
            return Err(format!("{python} cannot import torch: {}", why.trim()));
        }
        return Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    Err("neither LIBTORCH nor LIBTORCH_USE_PYTORCH is set".into())
}

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    let dir = match libtorch_dir() {
        Ok(dir) => dir,
        Err(why) => {
            println!("cargo::error=libtorch not found ({why}): {HINT}");
            return;
        }
    };
    let lib = dir.join("lib");
    println!("cargo::rerun-if-changed={}", lib.display());
    let Ok(lib) = lib.canonicalize() else {
        println!(
            "cargo::error=libtorch not found at {}: {HINT}",
            dir.display()
        );
        return;
    };
    if !lib.join("libtorch_cpu.so").exists() && !lib.join("libtorch_cpu.dylib").exists() {
        println!(
            "cargo::error=no libtorch_cpu library in {}: {HINT}",
            lib.display()
        );
        return;
    }
    // First the libtorch link `make install` puts beside an installed binary,
    // then the libtorch it was built against.
    println!("cargo::rustc-link-arg=-Wl,-rpath,$ORIGIN/../lib/lorastream/torch/lib");
    println!("cargo::rustc-link-arg=-Wl,-rpath,{}", lib.display());
    println!("cargo::rustc-env=LORASTREAM_LIBTORCH_LIB={}", lib.display());
}
