//! The rpath to libtorch for this crate's test binaries and the libtorch path
//! `runtime_info` reports (see `build/libtorch.rs` at the workspace root).
include!("../../build/libtorch.rs");
