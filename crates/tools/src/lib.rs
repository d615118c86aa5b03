//! beltbox's measurement tools, apart from the product path: the device's service never
//! links them in its request path, and they may use anything below them.
//!
//! | module | what | reached as |
//! |---|---|---|
//! | [`bench`] | load time, per-stage percentiles, peak RSS, op counts and profile | `beltbox bench` |
//! | [`soak`] | the reproducible thermal soak: fake sysfs board, thermal model, real CPU burners | `beltbox soak` |
//! | [`loadgen`] | open-loop load against a running service | `beltbox loadgen` |
//! | [`client`] | the minimal HTTP/1.1 client `loadgen` drives the service with | |
//!
//! Crate rule: depends on `beltbox-core`; nothing below depends on it.

pub mod bench;
pub mod client;
pub mod loadgen;
pub mod soak;
