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
    #[error(transparent)]
    Rotation(#[from] crate::rotation::RotationError),
    #[error(transparent)]
    Passphrase(#[from] crate::passphrase::PassphraseError),
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
        "the provider refused the new client secret of account {account:?} (invalid_client); the previous one still works and stays in use as a fallback, so nothing stopped. A secret just created can take a few minutes to work (Microsoft Entra); otherwise check it and run again: vault set-client-secret {account}"
    )]
    NewClientSecretRefused { account: String },
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
    /// The daemon refused, with the `Problem` its JSON error code names; its message is the
    /// user-facing one.
    #[error("{message}")]
    Daemon { problem: Problem, message: String },
    #[error(
        "the provider rotated the refresh token of account {account:?}, and the new one could not be stored: {source}. If the provider refuses the previous one from now on, authorize again: vault login {account}"
    )]
    RotationUncommitted { account: String, source: Box<Error> },
}

/// Why a command or a request failed, as every edge reports it: the JSON `error` code of the
/// socket API, the HTTP status and the exit code all come from the one table below.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    ReauthRequired,
    ClientError,
    UpstreamUnavailable,
    /// The fleet's database cannot be reached: nothing was refreshed (never without the lease).
    StoreUnavailable,
    /// A refresh lost the race to another command (`vault login`) that committed newer tokens.
    Superseded,
    UnknownAccount,
    Forbidden,
    BadRequest,
    NotFound,
    MethodNotAllowed,
    MasterKey,
    Interrupted,
    DaemonUnreachable,
    Internal,
}

/// (problem, JSON error code, HTTP status, exit code). Exit codes are documented in README.md.
const PROBLEMS: [(Problem, &str, u16, u8); 14] = [
    (Problem::ReauthRequired, "reauth_required", 409, 3),
    (Problem::ClientError, "client_error", 409, 4),
    (Problem::UpstreamUnavailable, "upstream_unavailable", 503, 5),
    (Problem::Superseded, "superseded", 503, 5),
    (Problem::StoreUnavailable, "store_unavailable", 503, 5),
    (Problem::UnknownAccount, "unknown_account", 404, 1),
    (Problem::Forbidden, "forbidden", 403, 1),
    (Problem::BadRequest, "bad_request", 400, 1),
    (Problem::NotFound, "not_found", 404, 1),
    (Problem::MethodNotAllowed, "method_not_allowed", 405, 1),
    (Problem::MasterKey, "master_key", 500, 6),
    (Problem::Interrupted, "interrupted", 500, 130),
    (Problem::DaemonUnreachable, "daemon_unreachable", 502, 1),
    (Problem::Internal, "internal", 500, 1),
];

impl Problem {
    fn row(self) -> (Problem, &'static str, u16, u8) {
        PROBLEMS.into_iter().find(|row| row.0 == self).unwrap_or((
            Problem::Internal,
            "internal",
            500,
            1,
        ))
    }

    pub fn code(self) -> &'static str {
        self.row().1
    }

    pub fn http_status(self) -> u16 {
        self.row().2
    }

    pub fn exit_code(self) -> u8 {
        self.row().3
    }

    /// The problem a daemon's JSON `error` code names; an unknown code is `Internal`.
    pub fn from_code(code: &str) -> Problem {
        PROBLEMS
            .into_iter()
            .find(|row| row.1 == code)
            .map_or(Problem::Internal, |row| row.0)
    }
}

impl Error {
    /// The problem this error is, for its exit code and the daemon's answer.
    pub fn problem(&self) -> Problem {
        match self {
            Error::ReauthRequired { .. } => Problem::ReauthRequired,
            Error::ClientRejected { .. }
            | Error::Misconfigured { .. }
            | Error::NewClientSecretRefused { .. } => Problem::ClientError,
            Error::Unavailable { .. } => Problem::UpstreamUnavailable,
            Error::Interrupted => Problem::Interrupted,
            Error::Daemon { problem, .. } => *problem,
            Error::RotationUncommitted { source, .. } => source.problem(),
            Error::Rotation(rotation) => rotation.problem(),
            Error::Key(_)
            | Error::Store(
                StoreError::Key(_)
                | StoreError::WrongMasterKey(_)
                | StoreError::NotDelivered(_)
                | StoreError::RekeyedHere(_),
            ) => Problem::MasterKey,
            Error::Store(StoreError::NoSuchAccount(_)) => Problem::UnknownAccount,
            Error::Store(StoreError::Superseded(_)) => Problem::Superseded,
            Error::Store(StoreError::Paused { .. } | StoreError::LeaseHeld(_)) => {
                Problem::UpstreamUnavailable
            }
            // A rekey elsewhere committed meanwhile: the next try reads the new key.
            Error::Store(
                StoreError::Database(_)
                | StoreError::DatabaseLost(_)
                | StoreError::UntrustedCertificate(_)
                | StoreError::KeyChanged
                | StoreError::RekeyUnconfirmed(_)
                | StoreError::Busy,
            ) => Problem::StoreUnavailable,
            Error::NotAdded {
                source: OAuthError::Unavailable(_),
                ..
            }
            | Error::LoginFailed {
                source: OAuthError::Unavailable(_),
                ..
            } => Problem::UpstreamUnavailable,
            _ => Problem::Internal,
        }
    }

    /// Exit codes scripts can act on (documented in README.md).
    pub fn exit_code(&self) -> u8 {
        self.problem().exit_code()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_has_one_code_status_and_exit_code() {
        for (problem, code, status, exit) in PROBLEMS {
            assert_eq!(Problem::from_code(code), problem, "{code}");
            assert_eq!(
                (problem.code(), problem.http_status(), problem.exit_code()),
                (code, status, exit)
            );
        }
        let codes: std::collections::HashSet<_> = PROBLEMS.iter().map(|row| row.1).collect();
        assert_eq!(codes.len(), PROBLEMS.len(), "codes are unique");
        assert_eq!(Problem::from_code("something new"), Problem::Internal);
        // The documented exit codes.
        assert_eq!(Problem::ReauthRequired.exit_code(), 3);
        assert_eq!(Problem::ClientError.exit_code(), 4);
        assert_eq!(Problem::UpstreamUnavailable.exit_code(), 5);
        assert_eq!(Problem::MasterKey.exit_code(), 6);
        assert_eq!(Problem::Interrupted.exit_code(), 130);
    }

    #[test]
    fn a_fleet_key_problem_is_a_master_key_problem_and_a_rekey_meanwhile_is_worth_a_retry() {
        let problem = |err: StoreError| Error::Store(err).problem();
        assert_eq!(
            problem(StoreError::NotDelivered("b".into())),
            Problem::MasterKey
        );
        assert_eq!(
            problem(StoreError::RekeyedHere("a".into())),
            Problem::MasterKey
        );
        assert_eq!(problem(StoreError::KeyChanged), Problem::StoreUnavailable);
    }
}
