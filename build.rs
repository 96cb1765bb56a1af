//! The rpath to libtorch for this package's binaries (see `build/libtorch.rs`).
include!("build/libtorch.rs");
