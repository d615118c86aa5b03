//! The `beltbox` binary: argument parsing, logging set-up, and the mapping from errors to
//! one sentence on stderr plus an exit code (0 ok, 1 check failed, 2 usage or input
//! error, 3 over budget).

mod cli;

use std::process::ExitCode;

use beltbox_core::memory::alloc::CountingAlloc;

/// Live heap bytes and high-water mark for `bench`, `plan` and (later) metrics; see
/// `memory::alloc` for why this is cheap enough to leave on in production.
#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn main() -> ExitCode {
    beltbox_core::memory::alloc::mark_installed();
    cli::init_logging();
    // tract and the C backends are fed untrusted files; the adapters contain panics and
    // turn them into errors. Keep the default hook's backtrace noise out of user output.
    std::panic::set_hook(Box::new(|info| log::debug!("contained panic: {info}")));
    cli::main()
}
