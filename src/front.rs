//! `vault`, the command users type, is a small front program: it answers `vault token NAME` from
//! a running daemon itself, and hands every other command line, unchanged, to the full command
//! line (`vault-full`, installed beside it). Mail clients and scripts run `vault token` on every
//! send; the full program's start-up (a 10 MB binary: its relocations, pages and argument tree)
//! cost more than the rest of the call, and none of it is needed to ask the socket.
//!
//! The front recognises only a plain `vault [--vault D] [--key-file F] [--key-passphrase-file P]
//! [--socket S] token NAME [--min-valid N] [--json]` (options in any order, `--opt=value` too, `VAULT_SOCKET` honoured).
//! Anything else — help, a typo, `--no-daemon`, no daemon running — goes to the full program,
//! which parses it with clap and answers exactly as it always did.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;

use crate::client;

/// A `vault token` call the front answers itself.
#[derive(Debug, PartialEq)]
pub struct TokenCall {
    pub socket: Option<PathBuf>,
    pub name: String,
    pub min_valid: u32,
    pub json: bool,
}

/// `vault token`'s own default (`TokenArgs::min_valid`).
const DEFAULT_MIN_VALID: u32 = 60;

/// Reads a plain `vault token` command line; `None` for anything else.
pub fn parse(arguments: &[OsString]) -> Option<TokenCall> {
    let mut socket = None;
    let mut seen = Vec::new();
    let mut verb = false;
    let mut name = None;
    let mut min_valid = None;
    let mut json = false;
    let mut rest = arguments.get(1..)?.iter();
    while let Some(argument) = rest.next() {
        let argument = argument.to_str()?;
        let (option, inline) = match argument.split_once('=') {
            Some((option, value)) if option.starts_with("--") => (option, Some(value)),
            _ => (argument, None),
        };
        if option.starts_with('-') {
            if seen.contains(&option) || (inline.is_some() && option == "--json") {
                return None;
            }
            seen.push(option);
            let mut value = || -> Option<&str> {
                let value = match inline {
                    Some(value) => value,
                    None => rest.next()?.to_str()?,
                };
                (!value.is_empty() && !value.starts_with('-')).then_some(value)
            };
            match option {
                "--socket" => socket = Some(PathBuf::from(value()?)),
                // Every command takes these; the front needs only the socket, but skips their values.
                "--vault" | "--key-file" | "--key-passphrase-file" => {
                    value()?;
                }
                "--min-valid" if verb => min_valid = Some(value()?.parse().ok()?),
                "--json" if verb => json = true,
                _ => return None,
            }
        } else if !verb && argument == "token" {
            verb = true;
        } else if verb && name.is_none() {
            name = Some(argument.to_owned());
        } else {
            return None;
        }
    }
    Some(TokenCall {
        socket: socket.or_else(|| {
            std::env::var_os("VAULT_SOCKET")
                .filter(|value| !value.is_empty())
                .map(PathBuf::from)
        }),
        name: name.filter(|_| verb)?,
        min_valid: min_valid.unwrap_or(DEFAULT_MIN_VALID),
        json,
    })
}

/// Answers a plain `vault token` from the daemon: `Some(exit code)` when it was answered (a
/// token printed, or the daemon's refusal), `None` when the full program must take the call (no
/// daemon running: it reads the vault itself).
pub fn answer(call: &TokenCall) -> Option<u8> {
    let socket = call
        .socket
        .clone()
        .unwrap_or_else(crate::daemon::default_socket_path);
    let (reply, raw) = match client::request_token(&socket, &call.name, call.min_valid) {
        Ok(Some(answered)) => answered,
        Ok(None) => return None,
        Err(err) => {
            eprintln!("vault: error: {err}");
            return Some(err.exit_code());
        }
    };
    let output = if call.json {
        raw.expose().trim()
    } else {
        reply.access_token.expose().as_str()
    };
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{output}").and_then(|()| stdout.flush()) {
        Ok(()) => Some(0),
        // The reader left (`vault token NAME | head -c0`): quiet, as a process killed by SIGPIPE.
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Some(141),
        Err(err) => {
            eprintln!("vault: error: cannot write the token: {err}");
            Some(1)
        }
    }
}
