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

// `vault token` runs on every mail a client sends, and loading one more shared library costs
// about 75 µs of its ~1.1 ms (measured: a hello world with and without libm.so). All this
// program takes from libm is `log` (SQLite's FTS5 ranking, compiled into the bundled SQLite but
// unused) and `pow` (tokio's scheduler statistics), so both are defined here from the pure-Rust
// `libm` crate and the linker, finding them, never asks for libm.so.
#[unsafe(no_mangle)]
pub extern "C" fn log(x: f64) -> f64 {
    libm::log(x)
}

#[unsafe(no_mangle)]
pub extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}
