//! An opt-in subset of the Compute Engine metadata server, so that Google's client libraries
//! (Python google-auth, Go, Node, Java) get the vault's token with no code change: point
//! `GCE_METADATA_HOST` at it. It serves one account, on loopback TCP only; TCP carries no peer
//! credentials, so every local process can ask it (SECURITY.md).

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde_json::json;

use crate::clock::now_unix;
use crate::daemon::audit::Record;
use crate::daemon::table::{Lookup, Peer};
use crate::daemon::tokens::Tokens;
use crate::refresh::Need;

const ROOT: &str = "/computeMetadata/v1/";
const SERVICE_ACCOUNTS: &str = "/computeMetadata/v1/instance/service-accounts/";

/// The account served and how it is described to the client libraries.
pub struct MetadataAccount {
    pub name: String,
    /// The service account's email, or the account name for user accounts.
    pub email: String,
}

pub async fn handle(
    request: Request<Incoming>,
    tokens: Arc<Tokens>,
    account: Arc<MetadataAccount>,
    owner: Peer,
    caller: Option<u32>,
) -> Response<Full<Bytes>> {
    if let Some(refusal) = refuse_browsers(&request) {
        return refusal;
    }
    // Real metadata servers refuse requests without this header (a guard against SSRF).
    let flavored = request
        .headers()
        .get("metadata-flavor")
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"Google"));
    if !flavored {
        return text(
            StatusCode::FORBIDDEN,
            "Missing required header \"Metadata-Flavor: Google\"\n",
        );
    }
    let path = request.uri().path();
    if path == "/" || path == ROOT || path == ROOT.trim_end_matches('/') {
        return text(StatusCode::OK, "instance/\nproject/\n");
    }
    match path {
        "/computeMetadata/v1/project/project-id" => return text(StatusCode::OK, "tokenvault"),
        "/computeMetadata/v1/project/numeric-project-id" => return text(StatusCode::OK, "0"),
        _ => {}
    }
    let Some(rest) = path.strip_prefix(SERVICE_ACCOUNTS) else {
        return text(StatusCode::NOT_FOUND, "not found\n");
    };
    // "default/…" or "{email}/…": this endpoint serves its one account under either name.
    let leaf = rest.split_once('/').map_or("", |(_, leaf)| leaf);
    let slot = match tokens.lookup(owner, &account.name) {
        Lookup::Found(slot) => slot,
        _ => {
            return text(
                StatusCode::NOT_FOUND,
                "the served account no longer exists\n",
            );
        }
    };
    let scopes: Vec<&str> = slot.scope().split_whitespace().collect();
    match leaf {
        "" => {
            json_response(json!({"email": account.email, "scopes": scopes, "aliases": ["default"]}))
        }
        "email" => text(StatusCode::OK, &account.email),
        "scopes" => text(StatusCode::OK, &scopes.join("\n")),
        "aliases" => text(StatusCode::OK, "default"),
        "token" => {
            let answer = tokens.obtain(&slot, Need::Valid { min_valid: 60 }).await;
            let status = answer
                .as_ref()
                .map_or_else(|failure| failure.problem.http_status(), |_| 200);
            tokens.metrics().token_answer(status);
            tokens.audit().record(Record::Token {
                at: now_unix(),
                uid: caller,
                pid: None,
                account: account.name.clone(),
                status,
            });
            match answer {
                Ok(token) => json_response(json!({
                    "access_token": token.access_token.expose(),
                    "expires_in": (token.expires_at - now_unix()).max(0),
                    "token_type": "Bearer",
                })),
                Err(failure) => text(
                    StatusCode::from_u16(failure.problem.http_status())
                        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    &failure.message,
                ),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// The names Google's libraries use for the metadata server, and loopback. A web page that
/// rebinds its own DNS name to 127.0.0.1 sends its own name as `Host`.
const ALLOWED_HOSTS: &[&str] = &[
    "metadata.google.internal",
    "metadata",
    "127.0.0.1",
    "localhost",
    "[::1]",
];

/// Browsers are no client of the metadata endpoint: a request with a foreign `Host` (DNS
/// rebinding), an `Origin`, or a `Sec-Fetch-Site` other than `none` comes from a web page.
fn refuse_browsers(request: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    let headers = request.headers();
    let host = headers
        .get(hyper::header::HOST)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let host_name = url::Url::parse(&format!("http://{host}/"))
        .ok()
        .and_then(|url| url.host_str().map(str::to_ascii_lowercase));
    if !host_name.is_some_and(|name| ALLOWED_HOSTS.contains(&name.as_str())) {
        return Some(text(StatusCode::FORBIDDEN, "Host not allowed\n"));
    }
    let cross_site = headers.contains_key(hyper::header::ORIGIN)
        || headers
            .get("sec-fetch-site")
            .is_some_and(|value| value.as_bytes() != b"none");
    cross_site.then(|| {
        text(
            StatusCode::FORBIDDEN,
            "requests from web pages are refused\n",
        )
    })
}

/// The uid owning the client end of a loopback TCP connection, from the kernel's socket table
/// (`/proc/net/tcp`, `tcp6`): the line whose local address is the client's and whose remote
/// address is ours. `None` when it cannot be found (another network namespace, no /proc).
pub fn tcp_peer_uid(client: std::net::SocketAddr, ours: std::net::SocketAddr) -> Option<u32> {
    let table = if client.is_ipv4() { "tcp" } else { "tcp6" };
    let text = std::fs::read_to_string(format!("/proc/net/{table}")).ok()?;
    text.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let matches =
            parse_proc_addr(fields.get(1)?)? == client && parse_proc_addr(fields.get(2)?)? == ours;
        if matches {
            fields.get(7)?.parse().ok()
        } else {
            None
        }
    })
}

/// `0100007F:1F90` (IPv4) or 32 hex digits `:PORT` (IPv6): the address words as the kernel
/// printed them, in this machine's byte order, and the port in hex.
fn parse_proc_addr(field: &str) -> Option<std::net::SocketAddr> {
    let (address, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for word in address.as_bytes().chunks(8) {
        let word = u32::from_str_radix(std::str::from_utf8(word).ok()?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip = match bytes.len() {
        4 => std::net::IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?),
        16 => {
            let v6 = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?);
            // An IPv4 client of a dual-stack listener appears as ::ffff:a.b.c.d.
            v6.to_ipv4_mapped()
                .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4)
        }
        _ => return None,
    };
    Some(std::net::SocketAddr::new(ip, port))
}

fn json_response(body: serde_json::Value) -> Response<Full<Bytes>> {
    respond(StatusCode::OK, "application/json", body.to_string())
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    respond(status, "application/text", body.to_owned())
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert("metadata-flavor", HeaderValue::from_static("Google"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_socket_addresses_parse() {
        let loopback: std::net::SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let word = u32::from_ne_bytes([127, 0, 0, 1]);
        assert_eq!(parse_proc_addr(&format!("{word:08X}:1F90")), Some(loopback));
        assert_eq!(parse_proc_addr("garbage"), None);
        assert_eq!(parse_proc_addr("0100007F:zz"), None);
    }

    #[test]
    fn our_own_connection_is_found_with_our_uid() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let uid = tcp_peer_uid(client.local_addr().unwrap(), listener.local_addr().unwrap());
        assert_eq!(uid, Some(rustix::process::geteuid().as_raw()));
    }
}
