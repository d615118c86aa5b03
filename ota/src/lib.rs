//! Over-the-air model updates (issue #15), in layers, lowest first:
//!
//! | module | concern | I/O? |
//! |---|---|---|
//! | [`durable`] | crash-safe file updates: write to a temporary, fsync, rename, fsync the directory | files |
//! | [`kill`] | named kill points for the crash-safety harness | — |
//! | [`clock`] | the time expiry is checked against: the later of the clock and a floor that only rises | file |
//! | [`store`] | the device store: versioned packages under `state_dir`, the state file naming active, previous, factory and the candidate in probation, garbage collection, the writers' lock | files |
//! | [`archive`] | package archives: deterministic packing, hostile-input unpacking | files |
//! | [`download`] | a target's partial download, kept across restarts, resumed by Range or seek, verified by signed length and sha256 | network, files |
//! | [`channel`] | a channel is a TUF repository (tough): verify metadata, list offers, fetch a target within its signed length and hash | network, files |
//! | [`publish`] | the publisher's side: keys, root, signed releases | files |
//! | [`qualify`] | on-device qualification of a candidate and its evidence card | model |
//! | [`install`] | the pipeline: fetch, verify, unpack, check, qualify, move in, activate | all |
//!
//! Every transition of the store is one atomic replacement of the state file, so a crash
//! at any point leaves either the state before it or the state after it.

pub mod archive;
pub mod channel;
pub mod clock;
mod download;
pub mod durable;
pub mod install;
pub mod kill;
pub mod publish;
pub mod qualify;
pub mod store;
