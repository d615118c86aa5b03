//! beltbox's runtime core: everything between a model package on disk and an inference
//! result, plus the policies that keep a box within its budgets.
//!
//! Modules, lowest first. A module may use the ones above it in this list and never one
//! below it (checked by `tests/layers.rs` in this crate):
//!
//! | module | concern | I/O? |
//! |---|---|---|
//! | [`tensor`], [`timing`], [`stats`], [`prom`] | plain data: tensors, stage timings, percentiles, Prometheus text | no |
//! | [`cpu`], [`procfs`] | CPU features, RSS / VmHWM | /proc |
//! | [`npy`], [`image`] | `.npy`, PGM and PNG decoding with limits | bytes |
//! | [`manifest`] | strict `manifest.toml` parsing and validation | no |
//! | [`preprocess`], [`postprocess`], [`detect`] | input bytes -> model tensor; outputs -> classes; detection heads -> boxes after NMS | no |
//! | [`frames`] | recent request inputs kept on disk for an OTA candidate's shadow run | files |
//! | [`board`] | board profiles (`boards/*.toml`, compiled in), detection from the device tree | /proc, /sys |
//! | [`memory`] | RAM plan, budgets, "fits alongside?", counting allocator, admission gate | no |
//! | [`model`] | package verification, backends (tract, LiteRT), golden self-check, `Model` | files, tract, C |
//! | [`thermal`] | sysfs monitor, throttle assessment, latency windows, governor, status file | sysfs |
//!
//! Crate rule: depends on `beltbox-kernels` and `beltbox-tract` below it; nothing here knows
//! HTTP, the service, the CLI or the measurement tools.

pub mod board;
pub mod cpu;
pub mod detect;
pub mod frames;
pub mod image;
pub mod manifest;
pub mod memory;
pub mod model;
pub mod npy;
pub mod postprocess;
pub mod preprocess;
pub mod procfs;
pub mod prom;
pub mod stats;
pub mod tensor;
pub mod thermal;
pub mod timing;
