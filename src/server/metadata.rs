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

use super::tokens::{Lookup, Peer, Tokens};
use crate::audit::Record;
use crate::clock::now_unix;
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
) -> Response<Full<Bytes>> {
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
            let answer = tokens
                .obtain(&account.name, &slot, Need::Valid { min_valid: 60 })
                .await;
            let status = answer
                .as_ref()
                .map_or_else(|failure| failure.status, |_| 200);
            tokens.audit().record(Record::Token {
                at: now_unix(),
                uid: owner.uid,
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
                    StatusCode::from_u16(failure.status)
                        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    &failure.message,
                ),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
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
