//! Named kill points for fault injection: with `BELTBOX_OTA_KILL_AT=NAME` in the
//! environment, the process SIGKILLs itself when it reaches the point `NAME`, as a power
//! cut or the OOM killer would stop it (no destructors, no flush). The crash-safety
//! harness runs an install once per point and checks what a restart finds.
//!
//! A kill point costs one environment lookup; none is reached on the inference path.

/// Every kill point, in the order an install reaches them.
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
