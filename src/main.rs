//! `vault`: answers `vault token NAME` from the daemon itself, and runs the full command line
//! (`vault-full`, beside this program) for everything else. See `tokenvault::front`.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::ExitCode;

/// The full command line's program, installed in the same directory as this one.
const FULL: &str = "vault-full";

fn main() -> ExitCode {
    tokenvault::process::harden();
    let arguments: Vec<OsString> = std::env::args_os().collect();
    if let Some(call) = tokenvault::front::parse(&arguments)
        && let Some(code) = tokenvault::front::answer(&call)
    {
        return ExitCode::from(code);
    }
    run_full(&arguments)
}

/// Replaces this process with the full program, with the same arguments and environment. Only
/// the directory of this very executable is looked in, never `PATH`.
fn run_full(arguments: &[OsString]) -> ExitCode {
    let full = match std::env::current_exe() {
        Ok(me) => me.with_file_name(FULL),
        Err(err) => {
            eprintln!("vault: error: cannot find this program's own path: {err}");
            return ExitCode::from(1);
        }
    };
    // The full program hardens itself and must see the user's own umask and core limit, to give
    // them back to the program `vault exec` becomes.
    tokenvault::process::restore_inherited();
    let err = std::process::Command::new(&full)
        .arg0("vault")
        .args(arguments.iter().skip(1))
        .exec();
    eprintln!(
        "vault: error: cannot run {} ({err}). Install it beside vault: cargo install --path . (or copy target/release/vault and target/release/{FULL} together)",
        full.display()
    );
    ExitCode::from(1)
}
