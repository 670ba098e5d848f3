use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = tokenvault::cli::Cli::parse();
    match tokenvault::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("vault: error: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}
