//! Getting an access token for a stored account: from the sealed cache when it is still valid,
//! else by one upstream call whose outcome is committed before the token is handed out.

use crate::account::{Account, AccountState, Grant, GrantKind, SecretKind, Transition};
use crate::clock::now_unix;
use crate::error::Error;
use crate::oauth::service_account::{ServiceAccountKey, jwt_bearer_grant};
use crate::oauth::{Client, Outcome, Rejection, RejectionKind, TokenGrant, token};
use crate::secret::SecretString;
use crate::store::{Failure, RefreshGuard, RefreshStore, StoreError, TokenUpdate};

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
    /// A token to replace the one expiring at `replacing` (refresh ahead of expiry): the one in
    /// the store when another process or fleet host already got a newer one, else a new one
    /// from the provider.
    Ahead { replacing: i64 },
    /// A new token from the provider, recorded as the proof that the long-lived credential
    /// still works (validation).
    Proof,
}

/// Returns a token as `need` says, calling the provider only when needed: the whole pipeline,
/// for callers that own their store (the CLI). The daemon runs the same steps, with its store
/// calls on blocking threads.
pub async fn access_token<S: RefreshStore>(
    store: &mut S,
    http: &reqwest::Client,
    name: &str,
    need: Need,
) -> Result<Issued, Error> {
    match begin(store, name, need)? {
        Begun::Cached(token) => Ok(Issued {
            token,
            upstream_problem: None,
        }),
        Begun::Call(call) => call.send(http).await.settle(store).issued,
    }
}

/// A live refresh now, recorded as a validation: the proof that the account's credentials work
/// (`vault validate`, a new client secret).
pub async fn prove<S: RefreshStore>(
    store: &mut S,
    http: &reqwest::Client,
    name: &str,
) -> Result<Settled, Error> {
    match begin(store, name, Need::Proof)? {
        Begun::Call(call) => Ok(call.send(http).await.settle(store)),
        Begun::Cached(_) => Err(Error::Internal(
            "a proof was answered from the cache".into(),
        )),
    }
}

/// The first step of getting a token: a stored one that meets `need`, or the call to make.
pub enum Begun<G> {
    Cached(AccessToken),
    Call(Box<PendingCall<G>>),
}

/// Decides what getting a token takes. A stored token good enough is read without the refresh
/// guard; otherwise the guard is taken and the account read again under it, so whoever waited
/// for another process's refresh finds its token instead of spending the credential again.
/// A dead grant is an error at once: calling the provider again cannot revive it.
pub fn begin<S: RefreshStore>(store: &S, name: &str, need: Need) -> Result<Begun<S::Guard>, Error> {
    if let Some(token) = stored_token(store, &store.account(name)?, need)? {
        return Ok(Begun::Cached(token));
    }
    let guard = store.guard_refresh(name)?;
    let account = store.account(name)?;
    if let Some(token) = stored_token(store, &account, need)? {
        return Ok(Begun::Cached(token));
    }
    let call = UpstreamCall::prepare(store, &account)?;
    Ok(Begun::Call(Box::new(PendingCall {
        guard,
        account,
        call,
        need,
    })))
}

/// The stored token `need` can take, or `None` when the provider must be called; an error for
/// an account whose grant is dead.
fn stored_token<S: RefreshStore>(
    store: &S,
    account: &Account,
    need: Need,
) -> Result<Option<AccessToken>, Error> {
    if account.state.refuses_at_once() {
        let reason = account.last_error.clone().unwrap_or_default();
        return Err(rejected_error(account, RejectionKind::InvalidGrant, reason));
    }
    match need {
        Need::Valid { min_valid } => cached_token(store, account, min_valid),
        Need::Ahead { replacing } if account.access_expires_at > Some(replacing) => {
            cached_token(store, account, 1)
        }
        Need::Ahead { .. } | Need::Proof => Ok(None),
    }
}

/// An upstream call decided under the account's refresh guard. Sending consumes it: the
/// credential it carries (a refresh token that may rotate) can be spent once only, and only
/// while the guard is held.
#[must_use = "a pending call holds the account's refresh guard"]
pub struct PendingCall<G> {
    guard: G,
    account: Account,
    call: UpstreamCall,
    need: Need,
}

impl<G: RefreshGuard> PendingCall<G> {
    pub async fn send(self: Box<Self>, http: &reqwest::Client) -> Answered<G> {
        // A fleet lease taken long ago (a suspend, a stalled host) could pass to another host
        // while the request is out: then nothing is sent, and nothing is spent.
        let guard = &self.guard;
        let (outcome, fell_back) = if guard.may_send() {
            self.call.send(http, &|| guard.may_send()).await
        } else {
            let reason = "the refresh lease ran short before the request left; nothing was sent";
            (
                Outcome::Transient(crate::oauth::Transient {
                    reason: reason.into(),
                    retry_after: None,
                }),
                false,
            )
        };
        Answered {
            guard: self.guard,
            account: self.account,
            outcome,
            need: self.need,
            fell_back,
        }
    }
}

/// The provider's answer, not yet committed; the guard is still held. Settling consumes it, so
/// an answer is committed once.
#[must_use = "an answer must be settled: a rotated refresh token lives only in it"]
pub struct Answered<G> {
    guard: G,
    account: Account,
    outcome: Outcome,
    need: Need,
    fell_back: bool,
}

/// What a settled call gives: the token (or why there is none), and the account's change of
/// state when the outcome changed it.
pub struct Settled {
    pub issued: Result<Issued, Error>,
    pub transition: Option<Transition>,
    /// The scope the provider granted, when it named it.
    pub scope: Option<String>,
    /// The provider refused the newest client secret, and the answer came with the previous one.
    pub fell_back: bool,
    /// The provider rotated the refresh token and the new one could not be stored: the one the
    /// vault holds may be refused from now on.
    pub rotation_uncommitted: bool,
}

impl<G> Answered<G> {
    pub fn outcome(&self) -> &Outcome {
        &self.outcome
    }

    /// Commits the outcome (fenced on the generation read under the guard), then releases the
    /// guard. A transient failure still serves a stored token that has not expired yet.
    pub fn settle<S: RefreshStore<Guard = G>>(self, store: &mut S) -> Settled {
        let scope = match &self.outcome {
            Outcome::Refreshed(grant) => grant.scope.clone(),
            _ => None,
        };
        let validated = matches!(self.need, Need::Proof);
        let rotated =
            matches!(&self.outcome, Outcome::Refreshed(grant) if grant.refresh_token.is_some());
        let (committed, transition) =
            commit(store, &self.guard, &self.account, self.outcome, validated);
        // Superseded: a newer grant (vault login) or another host's commit won, by design.
        let rotation_uncommitted = rotated
            && matches!(&committed, Err(error)
                if !matches!(error, Error::Store(crate::store::StoreError::Superseded(_))));
        let issued = match committed {
            Ok(token) => Ok(Issued {
                token,
                upstream_problem: None,
            }),
            Err(Error::Unavailable {
                account,
                reason,
                retry_after,
            }) => match cached_token(store, &self.account, 1) {
                Ok(Some(token)) => Ok(Issued {
                    token,
                    upstream_problem: Some(reason),
                }),
                Ok(None) => Err(Error::Unavailable {
                    account,
                    reason,
                    retry_after,
                }),
                Err(error) => Err(error),
            },
            Err(error) => Err(error),
        };
        let issued = match issued {
            Err(error) if rotation_uncommitted => Err(Error::RotationUncommitted {
                account: self.account.name.clone(),
                source: Box::new(error),
            }),
            issued => issued,
        };
        drop(self.guard);
        Settled {
            issued,
            transition,
            scope,
            fell_back: self.fell_back,
            rotation_uncommitted,
        }
    }
}

fn cached_token<S: RefreshStore>(
    store: &S,
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
pub fn stored_client<S: RefreshStore>(
    store: &S,
    account: &Account,
) -> Result<Option<Client>, Error> {
    let Some(id) = account.config.grant.client_id().map(str::to_owned) else {
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

impl Credential {
    /// The OAuth client the call authenticates as, if it authenticates with a client secret.
    fn client_mut(&mut self) -> Option<&mut Client> {
        match self {
            Credential::RefreshToken { client, .. } => client.as_mut(),
            Credential::ClientCredentials { client } => Some(client),
            Credential::ServiceAccount { .. } => None,
        }
    }
}

/// One call to the token endpoint with an account's long-lived credential.
struct UpstreamCall {
    token_url: String,
    scopes: Vec<String>,
    credential: Credential,
    /// The client secret before the newest, while a rotation is under way.
    previous_secret: Option<SecretString>,
}

impl UpstreamCall {
    fn prepare<S: RefreshStore>(store: &S, account: &Account) -> Result<UpstreamCall, Error> {
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
        let credential = match (&config.grant, client) {
            (Grant::RefreshToken { .. }, client) => Credential::RefreshToken {
                client,
                refresh_token: stored(SecretKind::RefreshToken)?,
            },
            (Grant::ServiceAccount { subject, .. }, _) => Credential::ServiceAccount {
                key: ServiceAccountKey::parse(&stored(SecretKind::ServiceAccountKey)?)
                    .map_err(|err| Error::Input(err.to_string()))?,
                subject: subject.clone(),
            },
            (Grant::ClientCredentials { .. }, Some(client)) => {
                Credential::ClientCredentials { client }
            }
            (Grant::ClientCredentials { .. }, None) => {
                return Err(missing_secret(account, SecretKind::ClientSecret));
            }
        };
        Ok(UpstreamCall {
            token_url: config.endpoints.token_url.clone(),
            scopes: config.scopes.clone(),
            credential,
            previous_secret: match account.keeps_previous_client_secret {
                true => store.secret(account, SecretKind::PreviousClientSecret)?,
                false => None,
            },
        })
    }

    /// Sends the call; when the provider refuses the client and a previous client secret is
    /// kept, sends it once more with that one. Safe to repeat: a server authenticates the client
    /// before it looks at the grant (RFC 6749 §5.2), so a refused client spent nothing.
    /// True with the outcome when the previous secret was used.
    async fn send(
        mut self,
        http: &reqwest::Client,
        may_resend: &(dyn Fn() -> bool + Sync),
    ) -> (Outcome, bool) {
        let outcome = self.send_once(http, may_resend).await;
        let client_refused = matches!(
            &outcome,
            Outcome::Permanent(rejection) if rejection.kind == RejectionKind::InvalidClient
        );
        let previous = self.previous_secret.take();
        match (self.credential.client_mut(), previous) {
            (Some(client), Some(previous)) if client_refused => {
                client.secret = Some(previous);
                (self.send_once(http, may_resend).await, true)
            }
            _ => (outcome, false),
        }
    }

    /// `may_resend`: whether a request whose answer was lost may go once more (the guard
    /// still covers it).
    async fn send_once(
        &self,
        http: &reqwest::Client,
        may_resend: &(dyn Fn() -> bool + Sync),
    ) -> Outcome {
        match &self.credential {
            Credential::RefreshToken {
                client,
                refresh_token,
            } => {
                token::refresh_token_grant(
                    http,
                    &self.token_url,
                    client.as_ref(),
                    refresh_token,
                    may_resend,
                )
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

/// What a grant changes in the store; its lifetimes count from when its request left
/// (`requested_at`): counted from the answer's arrival, a token could look valid for as long as
/// the answer took after it had expired.
pub fn token_update(grant: &TokenGrant, validated: bool) -> TokenUpdate<'_> {
    let now = grant.requested_at;
    TokenUpdate {
        access_token: &grant.access_token,
        access_expires_at: Some(now + grant.expires_in.map_or(DEFAULT_LIFETIME, |s| s as i64)),
        new_refresh_token: grant.refresh_token.as_ref(),
        refresh_expires_at: grant.refresh_token_expires_in.map(|s| now + s as i64),
        validated,
    }
}

/// Records an upstream call's outcome on the account: a grant (a rotated refresh token
/// included) durably, before its access token is returned; a failure as the account's new state,
/// and the error the user sees.
fn commit<S: RefreshStore>(
    store: &mut S,
    guard: &S::Guard,
    account: &Account,
    outcome: Outcome,
    validated: bool,
) -> (Result<AccessToken, Error>, Option<Transition>) {
    let state = AccountState::after(&outcome);
    let (reason, error, retry_after) = match outcome {
        Outcome::Refreshed(grant) => {
            let update = token_update(&grant, validated);
            return match store.commit_refresh(guard, account, &update) {
                Ok(transition) => (Ok(issued_token(&grant, &update)), transition),
                Err(error) => (Err(error.into()), None),
            };
        }
        Outcome::Transient(transient) => {
            let retry_after = transient.retry_after.map(|pause| pause.as_secs());
            (
                transient.reason.clone(),
                Error::Unavailable {
                    account: account.name.clone(),
                    reason: transient.reason,
                    retry_after,
                },
                retry_after,
            )
        }
        Outcome::Permanent(rejection) => {
            let reason = rejection.to_string();
            (
                reason.clone(),
                rejected_error(account, rejection.kind, reason),
                None,
            )
        }
    };
    let failure = Failure {
        state,
        reason: &reason,
        retry_after,
    };
    match store.commit_failure(guard, account, &failure) {
        Ok(transition) => (Err(error), transition),
        Err(store_error) => (Err(store_error.into()), None),
    }
}

/// The access token a committed grant hands out.
pub fn issued_token(grant: &TokenGrant, update: &TokenUpdate<'_>) -> AccessToken {
    AccessToken {
        access_token: grant.access_token.clone(),
        expires_at: update.access_expires_at.unwrap_or_default(),
    }
}

/// The user-facing error for a rejection, naming the next command that helps.
fn rejected_error(account: &Account, kind: RejectionKind, reason: String) -> Error {
    let name = account.name.clone();
    match kind {
        RejectionKind::InvalidGrant => {
            let (credential, next) = match account.config.grant.kind() {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_count_from_when_the_request_left() {
        let grant = TokenGrant {
            access_token: SecretString::from("at".to_owned()),
            expires_in: Some(60),
            scope: None,
            refresh_token: None,
            refresh_token_expires_in: Some(3600),
            id_token: None,
            requested_at: 1_000,
        };
        let update = token_update(&grant, false);
        assert_eq!(update.access_expires_at, Some(1_060));
        assert_eq!(update.refresh_expires_at, Some(4_600));
    }
}
