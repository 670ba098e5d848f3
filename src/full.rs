//! `vault-full`: the whole command line. `vault` (src/main.rs) runs it for every command but the
//! daemon-answered `vault token`.

use std::process::ExitCode;

fn main() -> ExitCode {
    tokenvault::process::harden();
    tokenvault::keys::capture_env_key();
    // SAFETY: nothing has started a thread yet, so no one reads the environment concurrently.
    // The key stays in this process (read above), and no child started later inherits it.
    unsafe { std::env::remove_var(tokenvault::keys::MASTER_KEY_ENV) };
    let cli = tokenvault::cli::Cli::from_args();
    if !cli.runs_daemon() {
        // `vault status | head`: end quietly when the reader leaves, as Unix tools do, instead
        // of panicking on "Broken pipe" (Rust ignores SIGPIPE by default).
        // SAFETY: still single-threaded; restoring a default signal disposition.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match tokenvault::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("vault: error: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}
