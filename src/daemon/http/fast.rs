//! The answer to `vault token`, msmtp's `passwordeval`, mbsync's `PassCmd`: a new connection, one
//! `GET /v1/token/NAME` with `Connection: close`, and a token already in memory. Such a request
//! is already waiting in the socket when the connection is accepted, so it is answered right
//! there, on the accepting task: no task spawned, no HTTP connection state, no wake-up of another
//! thread — most of what a new connection cost the daemon. Anything else (keep-alive clients,
//! other paths, a token to refresh, a request not fully arrived, a refusal) is left unread and
//! served by hyper as before, so the two paths never disagree about what an answer is.

use std::os::fd::AsFd;

use rustix::net::{RecvFlags, SendFlags};

use super::api;
use crate::daemon::table::{Lookup, Peer};
use crate::daemon::tokens::Tokens;
use crate::secret::Secret;

/// A token request head is a few hundred bytes; anything longer goes the general way.
const PEEK: usize = 2048;
const MAX_HEADERS: usize = 16;

/// What the fast path made of a new connection.
#[derive(Debug, PartialEq)]
pub enum Tried {
    /// Answered and done.
    Answered,
    /// Nothing has arrived yet.
    NotArrived,
    /// Not a request the fast path answers; it is left unread for hyper.
    NotForMe,
}

/// Answers the connection's waiting request when it is a plain token request for a cached
/// token.
pub fn try_answer(stream: impl AsFd, peer: Peer, tokens: &Tokens) -> Tried {
    let stream = stream.as_fd();
    let mut peeked = [0u8; PEEK];
    let length = match rustix::net::recv(stream, &mut peeked, RecvFlags::PEEK | RecvFlags::DONTWAIT)
    {
        Ok((0, _)) => return Tried::NotForMe,
        Ok((length, _)) => length,
        Err(rustix::io::Errno::AGAIN) => return Tried::NotArrived,
        Err(_) => return Tried::NotForMe,
    };
    let Some((head_length, name, query)) = plain_token_request(&peeked[..length]) else {
        return Tried::NotForMe;
    };
    let Ok(min_valid) = api::min_valid(query) else {
        return Tried::NotForMe;
    };
    let Lookup::Found(slot) = tokens.lookup(peer, name) else {
        return Tried::NotForMe;
    };
    // A dead grant's cached token is never handed out; the general path says why.
    if slot.state().refuses_at_once() {
        return Tried::NotForMe;
    }
    let Some(token) = slot.cached(min_valid) else {
        return Tried::NotForMe;
    };
    let body = api::token_body(&token);
    let mut response = Secret::new(
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.expose().len()
        )
        .into_bytes(),
    );
    response.expose_mut().extend_from_slice(body.expose());
    // The request is consumed (closing a socket with unread data would reset it) and the answer
    // written whole: a fresh connection's send buffer holds far more than an answer.
    let mut request = [0u8; PEEK];
    let consumed = rustix::net::recv(stream, &mut request[..head_length], RecvFlags::DONTWAIT)
        .map(|(length, _)| length);
    if consumed != Ok(head_length)
        || rustix::net::send(
            stream,
            response.expose(),
            SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
        ) != Ok(response.expose().len())
    {
        // Nothing sensible can follow a half-consumed request or a partial answer: close it.
        api::record_answer(tokens, peer, name, 500);
        return Tried::Answered;
    }
    api::record_answer(tokens, peer, name, 200);
    Tried::Answered
}

/// `(head length, account name, query)` of a complete `GET /v1/token/NAME[?query] HTTP/1.1`
/// head that asks to close the connection and carries no body.
fn plain_token_request(bytes: &[u8]) -> Option<(usize, &str, Option<&str>)> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(head_length) = request.parse(bytes).ok()? else {
        return None;
    };
    if request.method? != "GET" || request.version? != 1 {
        return None;
    }
    let mut closes = false;
    for header in request.headers.iter() {
        let value = std::str::from_utf8(header.value).ok()?.trim();
        if header.name.eq_ignore_ascii_case("connection") {
            closes = value.eq_ignore_ascii_case("close");
        } else if header.name.eq_ignore_ascii_case("content-length") && value != "0"
            || header.name.eq_ignore_ascii_case("transfer-encoding")
        {
            return None;
        }
    }
    let target = request.path?.strip_prefix("/v1/token/")?;
    let (name, query) = match target.split_once('?') {
        Some((name, query)) => (name, Some(query)),
        None => (target, None),
    };
    (closes && crate::account::validate_name(name).is_ok()).then_some((head_length, name, query))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_complete_closing_token_request_is_taken() {
        let plain = b"GET /v1/token/mail?min_valid=60 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
        assert_eq!(
            plain_token_request(plain),
            Some((plain.len(), "mail", Some("min_valid=60")))
        );
        for refused in [
            &b"GET /v1/token/mail HTTP/1.1\r\nHost: localhost\r\n\r\n"[..],
            b"GET /v1/token/mail HTTP/1.1\r\nConnection: close\r\n",
            b"POST /v1/token/mail HTTP/1.1\r\nConnection: close\r\n\r\n",
            b"GET /v1/token/mail HTTP/1.0\r\nConnection: close\r\n\r\n",
            b"GET /v1/health HTTP/1.1\r\nConnection: close\r\n\r\n",
            b"GET /v1/token/../x HTTP/1.1\r\nConnection: close\r\n\r\n",
            b"GET /v1/token/mail HTTP/1.1\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello",
            b"GET /v1/token/mail HTTP/1.1\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert_eq!(plain_token_request(refused), None, "{:?}", String::from_utf8_lossy(refused));
        }
    }

    proptest::proptest! {
        #![proptest_config(crate::fuzzing::config())]
        /// Whatever a caller sends, the fast path takes it or leaves it, and a taken head is a
        /// token request for an allowed name.
        #[test]
        fn any_bytes_are_taken_or_left(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            if let Some((length, name, _)) = plain_token_request(&bytes) {
                proptest::prop_assert!(length <= bytes.len());
                proptest::prop_assert!(crate::account::validate_name(name).is_ok());
            }
        }
    }
}
