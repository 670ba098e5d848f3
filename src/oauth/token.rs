//! Requests to a token endpoint, and the classification of its answers.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use serde::Deserialize;
use url::form_urlencoded;

use super::{Client, ClientAuth, Outcome, Rejection, RejectionKind, TokenGrant, Transient};
use crate::secret::{Secret, SecretString};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of a provider's answer that is read. Token, discovery and device answers are a few
/// KiB (tokens can exceed 2.5 KB); reading a bigger one whole would let a provider fill the
/// daemon's memory, so it is treated as a passing fault.
pub const MAX_ANSWER: usize = 64 * 1024;
/// Longest accepted `expires_in` (one year): a bigger one is absurd, and near 2^63 it would wrap
/// into the past and turn every request into a refresh.
pub const MAX_LIFETIME: u64 = 365 * 24 * 3600;
/// Longest `Retry-After` taken from a provider; the daemon caps it further with its backoff cap.
pub const MAX_RETRY_AFTER: u64 = 24 * 3600;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// An HTTP client for OAuth endpoints: rustls, timeouts, no redirects (a token endpoint that
/// redirects is misconfigured, and following it could send credentials elsewhere).
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("tokenvault/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
}

/// What a token endpoint said, before classification.
#[derive(Debug)]
pub enum TokenAnswer {
    Granted(TokenGrant),
    /// An OAuth error body (RFC 6749 §5.2).
    Refused(ErrorAnswer),
    /// No HTTP answer at all: refused connection, DNS, TLS, connect timeout. The request never
    /// reached the provider.
    Unreachable(String),
    /// The request was sent, but its answer never arrived whole (a timeout or a reset after
    /// sending): the provider may have processed it — and rotated the refresh token.
    Lost(String),
    /// An HTTP answer that is not OAuth JSON (an HTML page, garbage, a 5xx from a proxy).
    Unexpected {
        status: u16,
        content_type: String,
    },
}

#[derive(Debug, Deserialize)]
pub struct ErrorAnswer {
    #[serde(skip)]
    pub status: u16,
    pub error: String,
    pub error_description: Option<String>,
    pub error_subtype: Option<String>,
    /// Microsoft's `error_codes` (the AADSTS numbers).
    #[serde(default, deserialize_with = "lenient_codes")]
    pub error_codes: Vec<u64>,
    #[serde(skip)]
    pub retry_after: Option<Duration>,
}

/// `error_codes` as numbers where they are numbers; anything else in it is ignored, so a
/// malformed extra field cannot turn a refusal into an unreadable answer.
fn lenient_codes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Array(items) => {
            items.iter().filter_map(serde_json::Value::as_u64).collect()
        }
        _ => Vec::new(),
    })
}

#[derive(Deserialize)]
struct GrantBody {
    access_token: SecretString,
    #[serde(default, deserialize_with = "number_or_string")]
    expires_in: Option<u64>,
    scope: Option<String>,
    refresh_token: Option<SecretString>,
    #[serde(default, deserialize_with = "number_or_string")]
    refresh_token_expires_in: Option<u64>,
    id_token: Option<SecretString>,
}

/// A lifetime in seconds as providers send it: a number, a float or a string ("3599"),
/// clamped to 0..=[`MAX_LIFETIME`]. Anything else counts as absent.
pub(crate) fn number_or_string<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Lifetime {
        Number(serde_json::Number),
        Text(String),
        Other(serde::de::IgnoredAny),
    }
    let seconds = match Option::<Lifetime>::deserialize(d)? {
        Some(Lifetime::Number(number)) => number.as_f64(),
        Some(Lifetime::Text(text)) => text.trim().parse::<f64>().ok(),
        Some(Lifetime::Other(_)) | None => None,
    };
    Ok(seconds
        .filter(|seconds| !seconds.is_nan())
        // `as` saturates: negative → 0, huge → u64::MAX, then the clamp.
        .map(|seconds| (seconds as u64).min(MAX_LIFETIME)))
}

/// Why a provider's answer could not be read.
pub(crate) enum BodyError {
    TooLarge,
    Cut,
}

/// Reads at most [`MAX_ANSWER`] bytes of `response`, into a zeroized buffer (it may hold tokens).
pub(crate) async fn read_body(
    mut response: reqwest::Response,
) -> Result<Secret<Vec<u8>>, BodyError> {
    if response
        .content_length()
        .is_some_and(|length| length > MAX_ANSWER as u64)
    {
        return Err(BodyError::TooLarge);
    }
    let mut body = Secret::new(Vec::new());
    while let Some(chunk) = response.chunk().await.map_err(|_| BodyError::Cut)? {
        if body.expose().len() + chunk.len() > MAX_ANSWER {
            return Err(BodyError::TooLarge);
        }
        body.expose_mut().extend_from_slice(&chunk);
    }
    Ok(body)
}

/// POSTs `params` to `url`, authenticating as `client` (if any) in exactly one way.
pub async fn request(
    http: &reqwest::Client,
    url: &str,
    client: Option<&Client>,
    params: &[(&str, &str)],
) -> TokenAnswer {
    // The body holds credentials; once handed to the HTTP stack it cannot be zeroized (SECURITY.md).
    let requested_at = crate::clock::now_unix();
    let response = match build_request(http, url, client, params).send().await {
        Ok(response) => response,
        Err(err) if err.is_connect() => {
            return TokenAnswer::Unreachable(describe_transport_error(&err));
        }
        Err(err) => return TokenAnswer::Lost(describe_transport_error(&err)),
    };
    read_answer(response, requested_at).await
}

pub(super) fn build_request(
    http: &reqwest::Client,
    url: &str,
    client: Option<&Client>,
    params: &[(&str, &str)],
) -> reqwest::RequestBuilder {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.extend_pairs(params);
    let mut builder = http
        .post(url)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(client) = client {
        match (&client.secret, client.auth) {
            (Some(secret), ClientAuth::Basic) => {
                builder = builder.header(AUTHORIZATION, basic_auth(&client.id, secret));
            }
            (Some(secret), ClientAuth::Post) => {
                form.append_pair("client_id", &client.id);
                form.append_pair("client_secret", secret.expose());
            }
            (None, _) => {
                form.append_pair("client_id", &client.id);
            }
        }
    }
    builder.body(form.finish())
}

/// The refresh-token grant (RFC 6749 §6). When the request left but its answer was lost, it is
/// sent once more at once with the same refresh token: a server that rotated it meanwhile and
/// keeps a reuse grace (Okta, Auth0, Cognito; FAPI 2.0 requires it) answers the retry, where
/// waiting would let the grace run out. A strict server refuses it and the grant is dead either
/// way — that window opens when the first request leaves (SECURITY.md).
pub async fn refresh_token_grant(
    http: &reqwest::Client,
    token_url: &str,
    client: Option<&Client>,
    refresh_token: &SecretString,
    may_resend: &(dyn Fn() -> bool + Sync),
) -> Outcome {
    let params = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token.expose().as_str()),
    ];
    match request(http, token_url, client, &params).await {
        // Only while the refresh guard still covers a request (a fleet's lease can run out
        // while the first one waits, e.g. across a suspend): else another host may have
        // spent the token since, and presenting it again would be a reuse.
        TokenAnswer::Lost(_) if may_resend() => {
            request(http, token_url, client, &params).await.classify()
        }
        answer => answer.classify(),
    }
}

/// The client-credentials grant (RFC 6749 §4.4).
pub async fn client_credentials_grant(
    http: &reqwest::Client,
    token_url: &str,
    client: &Client,
    scopes: &[String],
) -> Outcome {
    let scope = super::scope_string(scopes);
    let mut params = vec![("grant_type", "client_credentials")];
    if !scope.is_empty() {
        params.push(("scope", &scope));
    }
    request(http, token_url, Some(client), &params)
        .await
        .classify()
}

/// RFC 7009: asks the provider to revoke `refresh_token` (and so its grant), authenticating as
/// at the token endpoint. Any 2xx is success (an unknown token is answered 200 too).
pub async fn revoke(
    http: &reqwest::Client,
    url: &str,
    client: Option<&Client>,
    refresh_token: &SecretString,
) -> Result<(), String> {
    super::provider::check_endpoint_url(url).map_err(|err| err.to_string())?;
    let params = [
        ("token", refresh_token.expose().as_str()),
        ("token_type_hint", "refresh_token"),
    ];
    let response = build_request(http, url, client, &params)
        .send()
        .await
        .map_err(|_| format!("cannot reach the revocation endpoint {url}"))?;
    let status = response.status().as_u16();
    if (200..300).contains(&status) {
        return Ok(());
    }
    let error = read_body(response)
        .await
        .ok()
        .and_then(|body| serde_json::from_slice::<ErrorAnswer>(body.expose()).ok())
        .map(|answer| format!(" ({})", super::printable(&answer.error)))
        .unwrap_or_default();
    Err(format!(
        "the revocation endpoint answered HTTP {status}{error}"
    ))
}

/// RFC 6749 §2.3.1: id and secret are form-urlencoded before they are joined and base64-encoded.
fn basic_auth(id: &str, secret: &SecretString) -> HeaderValue {
    let encode = |text: &str| form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>();
    let pair = Secret::new(format!("{}:{}", encode(id), encode(secret.expose())));
    let header = Secret::new(format!("Basic {}", STANDARD.encode(pair.expose())));
    let mut value = HeaderValue::from_str(header.expose()).unwrap_or(HeaderValue::from_static(""));
    value.set_sensitive(true);
    value
}

/// Transport errors are described without their URL's query or any body.
fn describe_transport_error(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        "the token endpoint did not answer in time".to_owned()
    } else if err.is_connect() {
        "cannot connect to the token endpoint".to_owned()
    } else {
        "the connection to the token endpoint failed".to_owned()
    }
}

/// A request error without its URL (a webhook URL may carry a token in its path, an API URL an
/// account's name): what failed, and the transport's own cause.
pub(crate) fn transport_reason(err: &reqwest::Error) -> String {
    let kind = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    match std::error::Error::source(err) {
        Some(source) => format!("{kind}: {source}"),
        None => kind.to_owned(),
    }
}

async fn read_answer(response: reqwest::Response, requested_at: i64) -> TokenAnswer {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("no content type")
        .to_owned();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok())
        .map(|seconds| Duration::from_secs(seconds.min(MAX_RETRY_AFTER)));
    let body = match read_body(response).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => {
            return TokenAnswer::Unreachable(format!(
                "the token endpoint's answer is larger than {} KiB, which no token answer is",
                MAX_ANSWER / 1024
            ));
        }
        Err(BodyError::Cut) => {
            return TokenAnswer::Lost("the token endpoint's answer was cut short".into());
        }
    };
    parse_answer(
        status,
        content_type,
        retry_after,
        body.expose(),
        requested_at,
    )
}

/// What a token endpoint's answer to a request sent at `requested_at` says: a grant, an OAuth
/// error, or something else. Every byte of it is the provider's; nothing here may panic on it
/// (fuzzed below).
fn parse_answer(
    status: u16,
    content_type: String,
    retry_after: Option<Duration>,
    body: &[u8],
    requested_at: i64,
) -> TokenAnswer {
    let content_type = super::printable(&content_type);
    if (200..300).contains(&status) {
        return match serde_json::from_slice::<GrantBody>(body) {
            Ok(grant) => TokenAnswer::Granted(TokenGrant {
                access_token: grant.access_token,
                expires_in: grant.expires_in,
                scope: grant.scope,
                refresh_token: grant.refresh_token.filter(|token| !token.is_empty()),
                refresh_token_expires_in: grant.refresh_token_expires_in,
                id_token: grant.id_token,
                requested_at,
            }),
            Err(_) => TokenAnswer::Unexpected {
                status,
                content_type,
            },
        };
    }
    match serde_json::from_slice::<ErrorAnswer>(body) {
        Ok(mut answer) => {
            answer.status = status;
            answer.error = super::printable(&answer.error);
            answer.error_description = answer.error_description.as_deref().map(super::printable);
            answer.error_subtype = answer.error_subtype.as_deref().map(super::printable);
            answer.retry_after = retry_after;
            TokenAnswer::Refused(answer)
        }
        Err(_) if status >= 500 || status == 429 => TokenAnswer::Refused(ErrorAnswer {
            status,
            error: format!("HTTP {status}"),
            error_description: None,
            error_subtype: None,
            error_codes: Vec::new(),
            retry_after,
        }),
        Err(_) => TokenAnswer::Unexpected {
            status,
            content_type,
        },
    }
}

impl TokenAnswer {
    /// Sorts an answer into refreshed / transient / permanent, as real providers behave.
    pub fn classify(self) -> Outcome {
        match self {
            TokenAnswer::Granted(grant) => Outcome::Refreshed(grant),
            TokenAnswer::Unreachable(reason) | TokenAnswer::Lost(reason) => {
                Outcome::Transient(Transient {
                    reason,
                    retry_after: None,
                })
            }
            TokenAnswer::Unexpected {
                status,
                content_type,
            } => Outcome::Transient(Transient {
                reason: format!(
                    "the token endpoint answered HTTP {status} with {content_type}, not OAuth JSON (is the token URL right? a proxy or captive portal?)"
                ),
                retry_after: None,
            }),
            TokenAnswer::Refused(answer) => answer.classify(),
        }
    }
}

impl ErrorAnswer {
    fn classify(self) -> Outcome {
        let transient = self.status >= 500
            || self.status == 429
            || matches!(
                self.error.as_str(),
                "temporarily_unavailable" | "server_error"
            );
        if transient {
            let mut reason = format!("the provider is unavailable (HTTP {}", self.status);
            if !self.error.starts_with("HTTP") {
                reason.push_str(&format!(", {}", self.error));
            }
            reason.push(')');
            return Outcome::Transient(Transient {
                reason,
                retry_after: self.retry_after,
            });
        }
        let diagnosis = super::catalog::diagnose(
            &self.error,
            self.error_subtype.as_deref(),
            self.error_description.as_deref(),
            &self.error_codes,
        );
        let kind = diagnosis.map_or_else(
            || match self.error.as_str() {
                "invalid_grant" => RejectionKind::InvalidGrant,
                "invalid_client" => RejectionKind::InvalidClient,
                _ if self.status == 401 => RejectionKind::InvalidClient,
                _ => RejectionKind::Configuration,
            },
            |diagnosis| diagnosis.kind,
        );
        Outcome::Permanent(Rejection {
            kind,
            error: self.error,
            description: self.error_description,
            subtype: self.error_subtype,
            cause: diagnosis.map(|d| d.cause),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(status: u16, error: &str) -> Outcome {
        TokenAnswer::Refused(ErrorAnswer {
            status,
            error: error.to_owned(),
            error_description: None,
            error_subtype: None,
            error_codes: Vec::new(),
            retry_after: None,
        })
        .classify()
    }

    fn rejection_kind(outcome: Outcome) -> Option<RejectionKind> {
        match outcome {
            Outcome::Permanent(rejection) => Some(rejection.kind),
            _ => None,
        }
    }

    #[test]
    fn classification_follows_real_providers() {
        assert_eq!(
            rejection_kind(refused(400, "invalid_grant")),
            Some(RejectionKind::InvalidGrant)
        );
        assert_eq!(
            rejection_kind(refused(401, "invalid_client")),
            Some(RejectionKind::InvalidClient)
        );
        assert_eq!(
            rejection_kind(refused(400, "invalid_client")),
            Some(RejectionKind::InvalidClient)
        );
        assert_eq!(
            rejection_kind(refused(401, "unauthorized")),
            Some(RejectionKind::InvalidClient)
        );
        for config in [
            "invalid_request",
            "invalid_scope",
            "unsupported_grant_type",
            "unauthorized_client",
        ] {
            assert_eq!(
                rejection_kind(refused(400, config)),
                Some(RejectionKind::Configuration)
            );
        }
        for transient in [
            refused(503, "HTTP 503"),
            refused(400, "temporarily_unavailable"),
            refused(429, "slow down"),
            refused(500, "server_error"),
        ] {
            assert!(matches!(transient, Outcome::Transient(_)));
        }
        assert!(matches!(
            TokenAnswer::Unreachable("x".into()).classify(),
            Outcome::Transient(_)
        ));
    }

    #[test]
    fn basic_auth_urlencodes_first() {
        let value = basic_auth("id:1", &SecretString::from("a b+c".to_owned()));
        let encoded = value
            .to_str()
            .unwrap()
            .strip_prefix("Basic ")
            .unwrap()
            .to_owned();
        let decoded = String::from_utf8(STANDARD.decode(encoded).unwrap()).unwrap();
        assert_eq!(decoded, "id%3A1:a+b%2Bc");
    }

    #[test]
    fn lifetime_as_string_is_accepted() {
        let body: GrantBody =
            serde_json::from_str(r#"{"access_token":"a","expires_in":"3599"}"#).unwrap();
        assert_eq!(body.expires_in, Some(3599));
    }

    proptest::proptest! {
        #![proptest_config(crate::fuzzing::config())]
        /// Any answer a token endpoint can give is classified, with clamped numbers and
        /// printable text, and never a panic.
        #[test]
        fn any_token_answer_is_classified_safely(
            status in 100u16..600,
            content_type in ".{0,64}",
            body in crate::fuzzing::untrusted_json(&[
                "access_token", "expires_in", "refresh_token", "refresh_token_expires_in",
                "scope", "token_type", "error", "error_description", "error_subtype",
            ]),
        ) {
            match parse_answer(status, content_type, None, &body, 0).classify() {
                Outcome::Refreshed(grant) => {
                    proptest::prop_assert!(grant.expires_in.is_none_or(|s| s <= MAX_LIFETIME));
                    proptest::prop_assert!(
                        grant.refresh_token_expires_in.is_none_or(|s| s <= MAX_LIFETIME)
                    );
                }
                Outcome::Transient(transient) => {
                    proptest::prop_assert!(!transient.reason.contains(char::is_control));
                }
                Outcome::Permanent(rejection) => {
                    let shown = rejection.to_string();
                    proptest::prop_assert!(!shown.contains(char::is_control), "{shown:?}");
                }
            }
        }
    }
}
