//! Over-the-air model updates (issue #15), in layers:
//!
//! | module | concern | I/O? |
//! |---|---|---|
//! | [`durable`] | crash-safe file updates: write to a temporary, fsync, rename, fsync the directory | files |
//! | [`store`] | the device store: versioned packages under `state_dir`, the state file naming active, previous, factory and the candidate in probation, garbage collection | files |
//!
//! Every transition of the store is one atomic replacement of the state file, so a crash
//! at any point leaves either the state before it or the state after it.

pub mod durable;
pub mod store;
