//! A small blocking client for the daemon's socket, for `vault token`: no async runtime, no
//! store, no master key on this path, so a call costs little more than a process start.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Problem};
use crate::secret::SecretString;

/// Long enough for the daemon to finish one upstream refresh (which has its own timeouts).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// Answers are small JSON documents; anything bigger is not the daemon.
const MAX_ANSWER: u64 = 1 << 20;

/// What `vault token` uses of the daemon's token answer (`--json` prints the answer whole).
#[derive(Deserialize)]
pub struct TokenReply {
    pub access_token: SecretString,
    pub expires_in: i64,
    pub expires_at: i64,
}

#[derive(Deserialize)]
struct Refusal {
    error: String,
    message: String,
}

/// Asks the daemon at `socket` for a token. `Ok(None)` when no daemon is listening there.
/// Nothing is sent unless the socket's directory and the process listening on it are the user's
/// own: another local user who got there first must not hand this user's programs its tokens.
pub fn request_token(
    socket: &Path,
    name: &str,
    min_valid: u32,
) -> Result<Option<(TokenReply, SecretString)>, Error> {
    crate::account::validate_name(name).map_err(Error::Input)?;
    let path = format!("/v1/token/{name}?min_valid={min_valid}");
    let Some(raw) = get(socket, &path, ANSWER_TIMEOUT)? else {
        return Ok(None);
    };
    let (status, body) =
        parse_response(raw.expose()).ok_or_else(|| daemon_error(socket, "not an HTTP answer"))?;
    if status == 200 {
        let text = SecretString::from(String::from_utf8_lossy(body).into_owned());
        let reply: TokenReply = serde_json::from_str(text.expose())
            .map_err(|_| daemon_error(socket, "malformed token answer"))?;
        return Ok(Some((reply, text)));
    }
    let refusal: Refusal = serde_json::from_slice(body)
        .map_err(|_| daemon_error(socket, &format!("HTTP {status} without a JSON error")))?;
    Err(Error::Daemon {
        problem: Problem::from_code(&refusal.error),
        message: refusal.message,
    })
}

/// The id of the vault the daemon at `socket` serves (`GET /v1/health`); `Ok(None)` when no
/// daemon listens there. The same checks as for a token come first.
pub fn served_vault(socket: &Path) -> Result<Option<String>, Error> {
    #[derive(Deserialize)]
    struct Health {
        vault: String,
    }
    let Some(raw) = get(socket, "/v1/health", Duration::from_secs(5))? else {
        return Ok(None);
    };
    let (_, body) =
        parse_response(raw.expose()).ok_or_else(|| daemon_error(socket, "not an HTTP answer"))?;
    let health: Health = serde_json::from_slice(body)
        .map_err(|_| daemon_error(socket, "not a tokenvault daemon's health answer"))?;
    Ok(Some(health.vault))
}

/// `GET path` on the daemon at `socket` (after the trust checks), its whole raw answer kept in a
/// zeroized buffer (it may hold a token). `Ok(None)` when nothing listens there.
fn get(
    socket: &Path,
    path: &str,
    timeout: Duration,
) -> Result<Option<crate::secret::Secret<Vec<u8>>>, Error> {
    let Some(mut stream) = connect_trusted(socket)? else {
        return Ok(None);
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let mut raw = crate::secret::Secret::new(Vec::with_capacity(1024));
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.write_all(request.as_bytes()))
        .and_then(|()| stream.take(MAX_ANSWER).read_to_end(raw.expose_mut()))
        .map_err(|err| daemon_error(socket, &err.to_string()))?;
    Ok(Some(raw))
}

/// Connects to the daemon at `socket` after checking its directory, then checks the peer.
/// `Ok(None)` when nothing listens there.
fn connect_trusted(socket: &Path) -> Result<Option<UnixStream>, Error> {
    let untrusted = |problem: String, next: &'static str| Error::UntrustedSocket {
        path: socket.to_owned(),
        problem,
        next,
    };
    let me = rustix::process::geteuid().as_raw();
    match crate::files::check_private_dir(socket_dir(socket), me) {
        Ok(()) => {}
        Err(crate::files::DirProblem::Missing) => return Ok(None),
        Err(problem) => {
            return Err(untrusted(
                problem.to_string(),
                "Remove that directory (another user may have planted it) or give --socket a path in a directory of your own",
            ));
        }
    }
    let stream = match UnixStream::connect(socket) {
        Ok(stream) => stream,
        Err(err)
            if matches!(
                err.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(err) => return Err(daemon_error(socket, &err.to_string())),
    };
    let peer = rustix::net::sockopt::socket_peercred(&stream)
        .map_err(|err| daemon_error(socket, &format!("cannot learn who listens: {err}")))?;
    let peer_uid = peer.uid.as_raw();
    if peer_uid != me && peer_uid != 0 {
        return Err(untrusted(
            format!("it is served by uid {peer_uid}, not by you (uid {me}) or root"),
            "Stop that process, or start your own daemon with: vault serve",
        ));
    }
    Ok(Some(stream))
}

fn socket_dir(socket: &Path) -> &Path {
    socket
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// The status and body of an HTTP/1.1 answer read to its end (the request said
/// `Connection: close`). Hand-written rather than httparse, deliberately: httparse probes the
/// CPU's SIMD features on its first use, and under virtualization those `cpuid`s trap — about
/// 40 µs, a thirtieth of a whole `vault token` call. The daemon's answer is a status line, a few
/// headers and a body of `Content-Length` bytes.
fn parse_response(raw: &[u8]) -> Option<(u16, &[u8])> {
    let head_len = raw.windows(4).position(|window| window == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..head_len]).ok()?;
    let mut lines = head.split("\r\n");
    let (version, rest) = lines.next()?.split_once(' ')?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let status = rest.get(..3)?.parse().ok()?;
    let length = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse::<usize>().ok());
    let body = &raw[head_len + 4..];
    Some((
        status,
        length.map_or(body, |length| &body[..length.min(body.len())]),
    ))
}

fn daemon_error(socket: &Path, what: &str) -> Error {
    Error::Daemon {
        problem: Problem::DaemonUnreachable,
        message: format!(
            "the daemon at {} could not be asked: {what}",
            socket.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_body() {
        let raw = b"HTTP/1.1 409 Conflict\r\ncontent-length: 5\r\n\r\nhello";
        assert_eq!(parse_response(raw), Some((409, &b"hello"[..])));
        let answer =
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(parse_response(answer), Some((200, &b"{}"[..])));
        let without_length = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 5\r\n\r\n{\"a\":1}";
        assert_eq!(
            parse_response(without_length),
            Some((503, &b"{\"a\":1}"[..]))
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 9"),
            None
        );
        assert_eq!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n"), None);
        assert_eq!(parse_response(b"garbage"), None);
    }

    proptest::proptest! {
        #![proptest_config(crate::fuzzing::config())]
        /// Whatever answers on the socket, the client's parser returns or refuses.
        #[test]
        fn any_socket_answer_parses_or_is_refused(
            raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            length in ".{0,24}",
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        ) {
            let _ = parse_response(&raw);
            let mut framed = format!("HTTP/1.1 200 OK\r\nContent-Length: {length}\r\n\r\n").into_bytes();
            framed.extend_from_slice(&body);
            if let Some((status, parsed)) = parse_response(&framed) {
                proptest::prop_assert_eq!(status, 200);
                proptest::prop_assert!(parsed.len() <= body.len());
            }
        }
    }
}
