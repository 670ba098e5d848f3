//! OAuth 2.0 client side: providers, the flows that obtain a grant, and the classification of
//! every token-endpoint answer into refreshed / transient / permanent.

pub mod authcode;
pub mod catalog;
pub mod device;
pub mod identity;
pub mod provider;
pub mod service_account;
pub mod token;

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::secret::SecretString;

/// How the client authenticates to the token endpoint. Exactly one is ever sent (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// HTTP Basic with the form-urlencoded client id and secret.
    Basic,
    /// `client_id` and `client_secret` in the request body.
    Post,
}

/// An OAuth client as the token endpoint sees it.
pub struct Client {
    pub id: String,
    /// `None` for a public client (PKCE only).
    pub secret: Option<SecretString>,
    pub auth: ClientAuth,
}

/// A successful token answer.
#[derive(Debug)]
pub struct TokenGrant {
    pub access_token: SecretString,
    pub expires_in: Option<u64>,
    pub scope: Option<String>,
    /// Present on a code exchange, and on a refresh when the provider rotates refresh tokens.
    pub refresh_token: Option<SecretString>,
    /// Google: the refresh token's own remaining life (apps in "Testing" status, time-bound access).
    pub refresh_token_expires_in: Option<u64>,
    /// OIDC: whose grant this is (scope `openid`).
    pub id_token: Option<SecretString>,
    /// When the request that got it left (unix seconds): its lifetimes count from then, not from
    /// the answer's arrival — the provider's clock started no later.
    pub requested_at: i64,
}

/// The outcome of one call to a token endpoint.
#[derive(Debug)]
pub enum Outcome {
    Refreshed(TokenGrant),
    /// Worth retrying later: 5xx, 429, `temporarily_unavailable`, timeouts, refused connections,
    /// answers that are not OAuth JSON. Never a reason to mark an account revoked.
    Transient(Transient),
    /// Retrying cannot help until a person acts.
    Permanent(Rejection),
}

#[derive(Debug)]
pub struct Transient {
    pub reason: String,
    pub retry_after: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectionKind {
    /// `invalid_grant`: the refresh token, code or assertion was refused. Revoked, expired,
    /// already used after rotation and replayed are indistinguishable from the answer.
    InvalidGrant,
    /// `invalid_client` or HTTP 401: wrong, rotated or deleted client secret or client id.
    InvalidClient,
    /// `invalid_request`, `invalid_scope`, `unsupported_grant_type`, `unauthorized_client`, …
    Configuration,
}

#[derive(Debug, Clone)]
pub struct Rejection {
    pub kind: RejectionKind,
    pub error: String,
    pub description: Option<String>,
    /// Google's `error_subtype`, e.g. `invalid_rapt` (a session-control policy, not a revocation).
    pub subtype: Option<String>,
    /// What the provider's answer says really happened, and the fix (`catalog`), when it says.
    pub cause: Option<&'static str>,
}

/// Separates a refusal's diagnosed cause from the provider's words in its text.
pub const CAUSE_MARK: &str = " — cause: ";

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.error)?;
        if let Some(subtype) = &self.subtype {
            write!(f, "/{subtype}")?;
        }
        if let Some(description) = &self.description {
            write!(f, ": {description}")?;
        }
        if let Some(cause) = self.cause {
            write!(f, "{CAUSE_MARK}{cause}")?;
        }
        Ok(())
    }
}

/// Errors of the interactive flows and of provider set-up, before anything is stored.
#[derive(Debug, Error)]
pub enum OAuthError {
    #[error("the provider refused: {0}")]
    Rejected(Rejection),
    #[error("the provider could not be used right now: {}", .0.reason)]
    Unavailable(Transient),
    #[error("the provider answered without a refresh token, so there is nothing to keep. {0}")]
    NoRefreshToken(&'static str),
    #[error(
        "authorization was denied in the browser (access_denied); nothing was stored. Run the command again and approve the access"
    )]
    ConsentDenied,
    #[error("the authorization server answered with an error: {0}")]
    AuthorizationFailed(String),
    #[error(
        "the redirect's state did not match this login (a forged or stale redirect); nothing was stored. Run the command again"
    )]
    StateMismatch,
    #[error(
        "the redirect came from issuer {got:?}, not {expected:?} (a mix-up attack or the wrong provider); nothing was stored"
    )]
    IssuerMismatch { expected: String, got: String },
    #[error(
        "the redirect carried no iss, which issuer {0:?} promises to send (RFC 9207): it did not come from that server; nothing was stored"
    )]
    IssuerMissing(String),
    #[error("the redirect carried no authorization code")]
    NoCode,
    #[error(
        "cannot listen for the redirect on 127.0.0.1:{port}: {source}. Free the port or choose another with --redirect-port"
    )]
    Listen { port: u16, source: std::io::Error },
    #[error(
        "no redirect came back within {0} s; nothing was stored. Run the command again (--timeout sets the wait)"
    )]
    Timeout(u64),
    #[error(
        "the device code expired before it was approved; nothing was stored. Run the command again"
    )]
    DeviceCodeExpired,
    #[error("{0}")]
    Provider(String),
    #[error("service-account key: {0}")]
    ServiceAccountKey(String),
}

impl Outcome {
    /// For flows where anything but a grant ends the command (adding an account).
    pub fn into_result(self) -> Result<TokenGrant, OAuthError> {
        match self {
            Outcome::Refreshed(grant) => Ok(grant),
            Outcome::Transient(transient) => Err(OAuthError::Unavailable(transient)),
            Outcome::Permanent(rejection) => Err(OAuthError::Rejected(rejection)),
        }
    }
}

/// A user authorization is worth storing only with a refresh token; real servers silently omit
/// it when offline access was not asked for the way they want.
pub(crate) fn require_refresh_token(
    grant: TokenGrant,
    endpoints: &provider::Endpoints,
) -> Result<TokenGrant, OAuthError> {
    if grant.refresh_token.is_none() {
        return Err(OAuthError::NoRefreshToken(
            endpoints.offline.missing_refresh_token_hint(),
        ));
    }
    Ok(grant)
}

/// The longest provider text (`error_description` and the like) that is kept.
const MAX_PROVIDER_TEXT: usize = 500;

/// A provider's free text as it may be stored, logged, shown on a terminal or passed to an alert
/// command: control characters (terminal escapes that write the clipboard or retitle windows; a
/// NUL that stops the alert command from starting) become spaces, and it is cut to 500 characters.
pub fn printable(text: &str) -> String {
    text.chars()
        .take(MAX_PROVIDER_TEXT)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Scopes as the wire wants them: one space-separated string.
pub fn scope_string(scopes: &[String]) -> String {
    scopes.join(" ")
}
