//! Named kill points for fault injection: with `BELTBOX_OTA_KILL_AT=NAME` in the
//! environment, the process SIGKILLs itself when it reaches the point `NAME`, as a power
//! cut or the OOM killer would stop it (no destructors, no flush). The crash-safety
//! harness runs an install once per point and checks what a restart finds.
//!
//! A kill point costs one environment lookup; none is reached on the inference path.

/// Every kill point of an install (`beltbox ota install|pull`), in the order it reaches them.
pub const POINTS: &[&str] = &[
    "open",     // store opened and locked, staging swept
    "fetch",    // part of the archive downloaded
    "verify",   // archive downloaded and verified, not unpacked
    "unpack",   // package unpacked into staging
    "qualify",  // qualified, card not yet written
    "card",     // card written, package still in staging
    "adopt",    // package moved into versions/, state not yet saved
    "activate", // state saved with the new version
    "gc",       // garbage collected
];

/// Every kill point of the service's probation (`beltbox run`) and of a technician's
/// `beltbox ota rollback`.
pub const SERVICE_POINTS: &[&str] = &[
    "probation",   // the candidate serves on probation, no verdict yet
    "verdict",     // a verdict reached, the store locked, nothing saved
    "commit",      // state saved with the candidate committed
    "rollback",    // state saved with the candidate rolled back; it still serves live
    "rolled-back", // swapped live to the previous version; not garbage-collected
];

pub const ENV: &str = "BELTBOX_OTA_KILL_AT";

/// Dies here if told to.
pub fn point(name: &str) {
    if std::env::var(ENV).is_ok_and(|v| v == name) {
        log::warn!("{ENV}={name}: killing this process (fault injection)");
        // SAFETY: sending a signal to ourselves touches no memory.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}
