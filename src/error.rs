//! The errors a user sees, one message each, and the exit code each maps to.

use thiserror::Error;

use crate::keys::KeyError;
use crate::oauth::OAuthError;
use crate::store::StoreError;

/// What an undiagnosed `invalid_grant` usually means.
pub const LIKELY_CAUSES: &str = "Likely causes: access was revoked by the user or an admin; the token expired (unused for 6 months, or after 7 days for a Google app in \"Testing\" status); a password change; too many refresh tokens issued for this client (the oldest die); reuse of a refresh token that had been rotated. ";

#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("account {account:?} was not added: {source}")]
    NotAdded { account: String, source: OAuthError },
    #[error("account {account:?} was not re-authorized: {source}")]
    LoginFailed { account: String, source: OAuthError },
    #[error(
        "account {account:?} must be authorized again: the provider rejected its {credential} ({reason}). {}Next: {next}",
        if *.undiagnosed { LIKELY_CAUSES } else { "" }
    )]
    ReauthRequired {
        account: String,
        credential: &'static str,
        reason: String,
        /// The provider's answer did not name the cause: the usual suspects are listed.
        undiagnosed: bool,
        next: String,
    },
    #[error(
        "the provider rejected the client of account {account:?} ({reason}): the client secret or client id is wrong, rotated or deleted. Fix the client, then: vault remove {account} && vault add-account {account} …"
    )]
    ClientRejected { account: String, reason: String },
    #[error(
        "the provider refused the requests of account {account:?} as misconfigured ({reason}): check its scopes, the client's type and the grant it allows. Then: vault remove {account} && vault add-account {account} …"
    )]
    Misconfigured { account: String, reason: String },
    #[error(
        "no valid access token for account {account:?} right now: {reason}. The account is kept; try again later: vault token {account}"
    )]
    Unavailable {
        account: String,
        reason: String,
        /// The provider's `Retry-After`, in seconds.
        retry_after: Option<u64>,
    },
    #[error(
        "account {account:?} was not re-authorized: the login was by {got}, but the account belongs to {recorded} (a browser profile or account picker on the wrong user?). Nothing was changed. Sign in as {recorded}, or, if the account should now be {got}'s: vault login {account} --allow-different-identity"
    )]
    IdentityChanged {
        account: String,
        recorded: String,
        got: String,
    },
    #[error("{0}")]
    Input(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("interrupted; everything the command created was removed")]
    Interrupted,
    /// The daemon's socket or the process behind it is not the user's own: nothing was sent.
    #[error("refusing the daemon socket {path}: {problem}. Nothing was sent to it. {next}")]
    UntrustedSocket {
        path: std::path::PathBuf,
        problem: String,
        next: &'static str,
    },
    /// The daemon refused (`error` is its JSON error code); its message is the user-facing one.
    #[error("{message}")]
    Daemon {
        status: u16,
        error: String,
        message: String,
    },
}

impl Error {
    /// Exit codes scripts can act on (documented in README.md).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::ReauthRequired { .. } => 3,
            Error::ClientRejected { .. } | Error::Misconfigured { .. } => 4,
            Error::Unavailable { .. } => 5,
            Error::Interrupted => 130,
            Error::Daemon { error, .. } => match error.as_str() {
                "reauth_required" => 3,
                "client_error" => 4,
                "upstream_unavailable" => 5,
                _ => 1,
            },
            Error::Key(_)
            | Error::Store(StoreError::Key(_))
            | Error::Store(StoreError::WrongMasterKey(_)) => 6,
            Error::NotAdded { source, .. } | Error::LoginFailed { source, .. } => match source {
                OAuthError::Unavailable(_) => 5,
                _ => 1,
            },
            _ => 1,
        }
    }
}
