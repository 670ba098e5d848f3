//! The socket's HTTP API. Every answer is JSON; errors carry `error` and a human `message`.
//!
//! - `GET /v1/token/{account}[?min_valid=SECONDS]` → the access token (never anything long-lived)
//! - `GET /v1/accounts` → names and states of the accounts the caller may fetch
//! - `GET /v1/health`

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

use crate::clock::now_unix;
use crate::daemon::audit::Record;
use crate::daemon::events::EventBody;
use crate::daemon::flight::Failure;
use crate::daemon::table::{CachedToken, Lookup, Peer};
use crate::daemon::tokens::Tokens;
use crate::error::Problem;
use crate::refresh::Need;
use crate::secret::{Secret, SecretBytes};

/// Longest `min_valid` accepted: a day. Longer asks are for tokens no provider issues.
const MAX_MIN_VALID: i64 = 86_400;
/// Default `min_valid`: a token an app can use for at least a minute.
const DEFAULT_MIN_VALID: i64 = 60;

/// A whole answer, or the event stream.
pub type Body = http_body_util::Either<Full<Bytes>, EventBody>;

pub async fn handle(request: Request<Incoming>, peer: Peer, tokens: Arc<Tokens>) -> Response<Body> {
    if request.method() != Method::GET {
        return error(Problem::MethodNotAllowed, "only GET is served");
    }
    let path = request.uri().path();
    if let Some(name) = path.strip_prefix("/v1/token/") {
        return token(&tokens, peer, name, request.uri().query()).await;
    }
    if path == "/v1/events" {
        return events(tokens, peer, &request);
    }
    match path {
        "/v1/health" => json_response(
            StatusCode::OK,
            json!({"status": "ok", "vault": tokens.vault_id()}),
        ),
        "/v1/metrics" if peer.uid == tokens.owner().uid => metrics_response(&tokens).await,
        "/v1/metrics" => error(
            Problem::Forbidden,
            "the metrics are the vault owner's; scrape them through --metrics-addr or as that user",
        ),
        "/v1/accounts" => {
            let accounts: Vec<_> = tokens
                .table()
                .visible_to(peer)
                .into_iter()
                .map(|(name, state)| json!({"name": name, "state": state}))
                .collect();
            json_response(StatusCode::OK, json!({ "accounts": accounts }))
        }
        _ => error(
            Problem::NotFound,
            "unknown path; see /v1/health, /v1/accounts, /v1/token/NAME",
        ),
    }
}

/// The event stream of the accounts `peer` may fetch, resumed after `Last-Event-ID`.
fn events(tokens: Arc<Tokens>, peer: Peer, request: &Request<Incoming>) -> Response<Body> {
    let last_seen = request
        .headers()
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse().ok());
    let visible_to = tokens.clone();
    let body = tokens.events().subscribe(last_seen, move |account| {
        matches!(visible_to.lookup(peer, account), Lookup::Found(_))
    });
    let mut response = Response::new(Body::Right(body));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert("cache-control", HeaderValue::from_static("no-store"));
    response
}

/// The metrics exposition as an answer.
async fn metrics_response(tokens: &Tokens) -> Response<Body> {
    let mut response = Response::new(Body::Left(Full::new(Bytes::from(
        tokens.metrics_text().await,
    ))));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(crate::daemon::metrics::CONTENT_TYPE),
    );
    response
}

/// `vault serve --metrics-addr`: the metrics, and nothing else, on loopback TCP.
pub async fn metrics_only(request: Request<Incoming>, tokens: &Tokens) -> Response<Body> {
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics" | "/v1/metrics") => metrics_response(tokens).await,
        _ => error(Problem::NotFound, "only GET /metrics is served here"),
    }
}

async fn token(
    tokens: &Arc<Tokens>,
    peer: Peer,
    name: &str,
    query: Option<&str>,
) -> Response<Body> {
    let response = match (min_valid(query), tokens.lookup(peer, name)) {
        (Err(message), _) => error(Problem::BadRequest, &message),
        // The same answer whether or not the account exists.
        (_, Lookup::Forbidden) => error(
            Problem::Forbidden,
            &format!(
                "uid {} is not granted this account; its owner can run: vault grant ACCOUNT --uid {}",
                peer.uid, peer.uid
            ),
        ),
        (_, Lookup::Unknown) => error(
            Problem::UnknownAccount,
            &format!("no account named {name:?}; see: vault list"),
        ),
        (Ok(min_valid), Lookup::Found(slot)) => {
            match tokens.obtain(&slot, Need::Valid { min_valid }).await {
                Ok(token) => token_response(&token),
                Err(failure) => failure_response(&failure),
            }
        }
    };
    record_answer(tokens, peer, name, response.status().as_u16());
    response
}

/// Counts a token answer and writes its audit line (who asked, for what, and the status).
pub(super) fn record_answer(tokens: &Tokens, peer: Peer, name: &str, status: u16) {
    tokens.metrics().token_answer(status);
    tokens.audit().record(Record::Token {
        at: now_unix(),
        uid: Some(peer.uid),
        pid: peer.pid,
        account: name.chars().take(64).collect(),
        status,
    });
}

pub(super) fn min_valid(query: Option<&str>) -> Result<i64, String> {
    let Some(query) = query else {
        return Ok(DEFAULT_MIN_VALID);
    };
    match url::form_urlencoded::parse(query.as_bytes()).find(|(key, _)| key == "min_valid") {
        None => Ok(DEFAULT_MIN_VALID),
        Some((_, value)) => match value.parse::<i64>() {
            Ok(seconds) if (0..=MAX_MIN_VALID).contains(&seconds) => Ok(seconds),
            _ => Err(format!(
                "min_valid must be a number of seconds from 0 to {MAX_MIN_VALID}"
            )),
        },
    }
}

/// The token answer: the access token's fields only, never a refresh token or secret.
#[derive(serde::Serialize)]
struct TokenBody<'a> {
    access_token: &'a str,
    token_type: &'static str,
    expires_in: i64,
    expires_at: i64,
    scope: &'a str,
}

fn token_response(token: &CachedToken) -> Response<Body> {
    body_response(
        StatusCode::OK,
        Bytes::from_owner(TokenBytes(token_body(token))),
    )
}

/// A token answer's bytes lent to hyper: zeroized when it drops the last reference to them.
struct TokenBytes(SecretBytes);

impl AsRef<[u8]> for TokenBytes {
    fn as_ref(&self) -> &[u8] {
        self.0.expose()
    }
}

/// The JSON of a token answer, in a buffer zeroized when dropped and large enough from the
/// start that serializing never grows it (a grown buffer leaves the old one behind, unzeroized).
pub(super) fn token_body(token: &CachedToken) -> SecretBytes {
    let body = TokenBody {
        access_token: token.access_token.expose(),
        token_type: "Bearer",
        expires_in: (token.expires_at - now_unix()).max(0),
        expires_at: token.expires_at,
        scope: &token.scope,
    };
    let mut bytes = Vec::with_capacity(body_capacity(token));
    // Serializing borrowed strings and integers into memory cannot fail.
    let _ = serde_json::to_writer(&mut bytes, &body);
    Secret::new(bytes)
}

/// Room for any token answer: JSON writes at most six bytes (`\u001f`) for a byte of text, and
/// the field names and numbers take under 128.
fn body_capacity(token: &CachedToken) -> usize {
    6 * (token.access_token.expose().len() + token.scope.len()) + 128
}

fn failure_response(failure: &Failure) -> Response<Body> {
    let mut response = error(failure.problem, &failure.message);
    if let Some(seconds) = failure.retry_after {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    }
    response
}

/// `{"error": CODE, "message": …}` with the problem's HTTP status: the one place where the
/// socket API turns a problem into a status.
fn error(problem: Problem, message: &str) -> Response<Body> {
    let status =
        StatusCode::from_u16(problem.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, json!({"error": problem.code(), "message": message}))
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    body_response(status, Bytes::from(body.to_string()))
}

fn body_response(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Body::Left(Full::new(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(crate::fuzzing::config())]
        /// Whatever the token and scope hold, its answer is written without growing its buffer.
        #[test]
        fn a_token_answer_never_outgrows_its_buffer(token in "\\PC{0,300}|[\\x00-\\x1f\"\\\\]{0,300}", scope in ".{0,100}") {
            let cached = CachedToken {
                access_token: Secret::new(token.as_str().into()),
                expires_at: now_unix() + 3600,
                scope: Arc::from(scope.as_str()),
            };
            let body = token_body(&cached);
            proptest::prop_assert_eq!(body.expose().capacity(), body_capacity(&cached));
            let parsed: serde_json::Value = serde_json::from_slice(body.expose()).unwrap();
            proptest::prop_assert_eq!(parsed["access_token"].as_str(), Some(token.as_str()));
        }

        /// Any query string gives a bounded min_valid or a bad request; any path segment is an
        /// allowed account name or refused.
        #[test]
        fn any_query_and_name_are_bounded(query in ".{0,64}", name in ".{0,80}") {
            if let Ok(seconds) = min_valid(Some(&query)) {
                proptest::prop_assert!((0..=MAX_MIN_VALID).contains(&seconds));
            }
            if crate::account::validate_name(&name).is_ok() {
                proptest::prop_assert!(!name.contains(['/', '\0']) && !name.starts_with('.'));
            }
        }
    }
}
