//! Getting an access token for a stored account: from the sealed cache when it is still valid,
//! else by one upstream call whose outcome is committed before the token is handed out.

use crate::account::{Account, AccountState, GrantKind, SecretKind};
use crate::clock::now_unix;
use crate::error::Error;
use crate::oauth::service_account::{ServiceAccountKey, jwt_bearer_grant};
use crate::oauth::{Client, Outcome, Rejection, RejectionKind, TokenGrant, token};
use crate::secret::SecretString;
use crate::store::{Store, StoreError, TokenUpdate};

/// Assumed lifetime when a provider omits `expires_in` (RFC 6749 makes it optional).
const DEFAULT_LIFETIME: i64 = 3600;

/// An access token as handed to a caller. Never a refresh token or client secret.
#[derive(Debug)]
pub struct AccessToken {
    pub access_token: SecretString,
    pub expires_at: i64,
}

/// A token for a caller, and why it is older than asked for when the provider could not be
/// reached (the cached token is served while it is still valid).
#[derive(Debug)]
pub struct Issued {
    pub token: AccessToken,
    pub upstream_problem: Option<String>,
}

/// Whether a token expiring at `expires_at` stays valid `min_valid` more seconds. A token in its
/// last second is never handed out, whatever the caller asked for.
pub fn lasts(expires_at: i64, min_valid: i64) -> bool {
    expires_at - now_unix() >= min_valid.max(1)
}

/// What a caller needs from an account.
#[derive(Debug, Clone, Copy)]
pub enum Need {
    /// A token valid for at least `min_valid` seconds, from the cache when it has one.
    Valid { min_valid: i64 },
    /// A new token from the provider (refresh ahead of expiry); with `validation`, recorded as
    /// the proof that the long-lived credential still works.
    Fresh { validation: bool },
}

/// Returns a token as `need` says, calling the provider only when needed.
///
/// Holds the account's lock across the refresh so that two processes never spend the same
/// (possibly rotating) refresh token, and re-reads the account under the lock: whoever waited
/// finds the token the other one fetched.
pub async fn access_token(
    store: &mut Store,
    http: &reqwest::Client,
    name: &str,
    need: Need,
) -> Result<Issued, Error> {
    let _lock = store.lock_account(name)?;
    match plan(store, name, need)? {
        Plan::Cached(token) => Ok(Issued {
            token,
            upstream_problem: None,
        }),
        Plan::Call(call) => {
            let (account, call) = *call;
            let outcome = call.send(http).await;
            finish(store, &account, outcome, need)
        }
    }
}

/// What getting a token takes, decided from the store under the account's lock.
pub enum Plan {
    Cached(AccessToken),
    /// One upstream call; `finish` records its outcome.
    Call(Box<(Account, UpstreamCall)>),
}

/// Reads the account (under its lock): a cached token that meets `need`, or the call to make.
/// A dead grant is an error at once: calling the provider again cannot revive it.
pub fn plan(store: &Store, name: &str, need: Need) -> Result<Plan, Error> {
    let account = store.account(name)?;
    // A dead grant first: its access tokens are likely revoked with it (the daemon answers
    // 409 at once too), so even a cached one that has not expired is not handed out.
    if account.state == AccountState::ReauthRequired {
        let reason = account.last_error.clone().unwrap_or_default();
        return Err(rejected_error(
            &account,
            RejectionKind::InvalidGrant,
            reason,
        ));
    }
    if let Need::Valid { min_valid } = need
        && let Some(token) = cached_token(store, &account, min_valid)?
    {
        return Ok(Plan::Cached(token));
    }
    let call = UpstreamCall::prepare(store, &account)?;
    Ok(Plan::Call(Box::new((account, call))))
}

/// Records an upstream outcome and returns the token to hand out. A transient failure still
/// serves a cached token that has not expired yet.
pub fn finish(
    store: &mut Store,
    account: &Account,
    outcome: Outcome,
    need: Need,
) -> Result<Issued, Error> {
    let validated = matches!(need, Need::Fresh { validation: true });
    match settle(store, account, outcome, validated) {
        Ok(token) => Ok(Issued {
            token,
            upstream_problem: None,
        }),
        Err(Error::Unavailable {
            account: name,
            reason,
            retry_after,
        }) => match cached_token(store, account, 1)? {
            Some(token) => Ok(Issued {
                token,
                upstream_problem: Some(reason),
            }),
            None => Err(Error::Unavailable {
                account: name,
                reason,
                retry_after,
            }),
        },
        Err(error) => Err(error),
    }
}

fn cached_token(
    store: &Store,
    account: &Account,
    min_valid: i64,
) -> Result<Option<AccessToken>, Error> {
    let Some(expires_at) = account.access_expires_at else {
        return Ok(None);
    };
    if !lasts(expires_at, min_valid) {
        return Ok(None);
    }
    Ok(store
        .secret(account, SecretKind::AccessToken)?
        .map(|access_token| AccessToken {
            access_token,
            expires_at,
        }))
}

/// The OAuth client stored with an account.
pub fn stored_client(store: &Store, account: &Account) -> Result<Option<Client>, Error> {
    let Some(id) = account.config.client_id.clone() else {
        return Ok(None);
    };
    Ok(Some(Client {
        id,
        secret: store.secret(account, SecretKind::ClientSecret)?,
        auth: account.config.client_auth,
    }))
}

fn missing_secret(account: &Account, kind: SecretKind) -> Error {
    Error::Store(StoreError::BadConfig(
        account.name.clone(),
        format!("its {} is missing", kind.as_str()),
    ))
}

/// The long-lived credential an upstream call spends, read out of the store beforehand so that
/// the call itself needs no store.
enum Credential {
    RefreshToken {
        client: Option<Client>,
        refresh_token: SecretString,
    },
    ServiceAccount {
        key: ServiceAccountKey,
        subject: Option<String>,
    },
    ClientCredentials {
        client: Client,
    },
}

/// One call to the token endpoint with an account's long-lived credential.
pub struct UpstreamCall {
    token_url: String,
    scopes: Vec<String>,
    credential: Credential,
}

impl UpstreamCall {
    pub fn prepare(store: &Store, account: &Account) -> Result<UpstreamCall, Error> {
        let config = &account.config;
        config
            .endpoints
            .check()
            .map_err(|err| Error::Input(format!("account {:?}: {err}", account.name)))?;
        let stored = |kind| {
            store
                .secret(account, kind)?
                .ok_or_else(|| missing_secret(account, kind))
        };
        let client = stored_client(store, account)?;
        let credential = match (config.grant, client) {
            (GrantKind::RefreshToken, client) => Credential::RefreshToken {
                client,
                refresh_token: stored(SecretKind::RefreshToken)?,
            },
            (GrantKind::ServiceAccount, _) => Credential::ServiceAccount {
                key: ServiceAccountKey::parse(&stored(SecretKind::ServiceAccountKey)?)
                    .map_err(|err| Error::Input(err.to_string()))?,
                subject: config.subject.clone(),
            },
            (GrantKind::ClientCredentials, Some(client)) => {
                Credential::ClientCredentials { client }
            }
            (GrantKind::ClientCredentials, None) => {
                return Err(missing_secret(account, SecretKind::ClientSecret));
            }
        };
        Ok(UpstreamCall {
            token_url: config.endpoints.token_url.clone(),
            scopes: config.scopes.clone(),
            credential,
        })
    }

    pub async fn send(&self, http: &reqwest::Client) -> Outcome {
        match &self.credential {
            Credential::RefreshToken {
                client,
                refresh_token,
            } => {
                token::refresh_token_grant(http, &self.token_url, client.as_ref(), refresh_token)
                    .await
            }
            Credential::ServiceAccount { key, subject } => {
                match jwt_bearer_grant(http, key, &self.scopes, subject.as_deref()).await {
                    Ok(outcome) => outcome,
                    Err(err) => Outcome::Permanent(Rejection {
                        kind: RejectionKind::Configuration,
                        error: "invalid_key".into(),
                        description: Some(err.to_string()),
                        subtype: None,
                        cause: None,
                    }),
                }
            }
            Credential::ClientCredentials { client } => {
                token::client_credentials_grant(http, &self.token_url, client, &self.scopes).await
            }
        }
    }
}

/// What a grant changes in the store, from the moment it was received.
pub fn token_update(grant: &TokenGrant, validated: bool) -> TokenUpdate<'_> {
    let now = now_unix();
    TokenUpdate {
        access_token: &grant.access_token,
        access_expires_at: Some(now + grant.expires_in.map_or(DEFAULT_LIFETIME, |s| s as i64)),
        new_refresh_token: grant.refresh_token.as_ref(),
        refresh_expires_at: grant.refresh_token_expires_in.map(|s| now + s as i64),
        validated,
    }
}

/// Records an upstream call's outcome on the account. A grant (a rotated refresh token included)
/// is committed durably before its access token is returned; a failure becomes the account's new
/// state and the error the user sees.
pub fn settle(
    store: &mut Store,
    account: &Account,
    outcome: Outcome,
    validated: bool,
) -> Result<AccessToken, Error> {
    let state = AccountState::after(&outcome);
    let (reason, error) = match outcome {
        Outcome::Refreshed(grant) => return commit_grant(store, account, &grant, validated),
        Outcome::Transient(transient) => (
            transient.reason.clone(),
            Error::Unavailable {
                account: account.name.clone(),
                reason: transient.reason,
                retry_after: transient.retry_after.map(|pause| pause.as_secs()),
            },
        ),
        Outcome::Permanent(rejection) => {
            let reason = rejection.to_string();
            (
                reason.clone(),
                rejected_error(account, rejection.kind, reason),
            )
        }
    };
    store.record_failure(account, state, &reason)?;
    Err(error)
}

fn commit_grant(
    store: &mut Store,
    account: &Account,
    grant: &TokenGrant,
    validated: bool,
) -> Result<AccessToken, Error> {
    let update = token_update(grant, validated);
    store.record_tokens(account, &update)?;
    Ok(AccessToken {
        access_token: grant.access_token.clone(),
        expires_at: update.access_expires_at.unwrap_or_default(),
    })
}

/// The user-facing error for a rejection, naming the next command that helps.
fn rejected_error(account: &Account, kind: RejectionKind, reason: String) -> Error {
    let name = account.name.clone();
    match kind {
        RejectionKind::InvalidGrant => {
            let (credential, next) = match account.config.grant {
                GrantKind::RefreshToken => ("refresh token", format!("vault login {name}")),
                GrantKind::ServiceAccount => (
                    "service-account key",
                    format!(
                        "create a new key, then: vault remove {name} && vault add-account {name} --service-account NEW-KEY.json --scope …"
                    ),
                ),
                GrantKind::ClientCredentials => (
                    "client credentials",
                    format!(
                        "vault remove {name} && vault add-account {name} --client-credentials …"
                    ),
                ),
            };
            // A diagnosed refusal names its cause; otherwise the usual suspects are listed.
            let undiagnosed = !reason.contains(crate::oauth::CAUSE_MARK);
            Error::ReauthRequired {
                account: name,
                credential,
                reason,
                undiagnosed,
                next,
            }
        }
        RejectionKind::InvalidClient => Error::ClientRejected {
            account: name,
            reason,
        },
        RejectionKind::Configuration => Error::Misconfigured {
            account: name,
            reason,
        },
    }
}
