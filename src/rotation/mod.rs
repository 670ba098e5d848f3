//! Rotating an account's own long-lived key through its provider's API: a Google
//! service-account key (IAM) or a Microsoft Entra client secret (Graph), by the credential
//! itself. The steps, and what a crash after each leaves:
//!
//! 1. list the keys at the provider and record them (`Creating`): a key created after this and
//!    never stored is found by the next run and deleted there;
//! 2. create a new key, prove it with a token request (deleted again if it never works);
//! 3. under the account's refresh guard, commit it sealed with the step `Retiring` the old key:
//!    from here every refresh uses the new key, and the old one stays valid until…
//! 4. …it is deleted at the provider, and the rotation is finished.
//!
//! So a working key is always stored, and at most one extra key exists at the provider.

mod api;
mod google;
mod microsoft;

use std::time::{Duration, Instant};

use thiserror::Error;

use crate::account::{Account, Grant, SecretKind};
use crate::clock::now_unix;
use crate::error::{Error, Problem};
use crate::oauth::service_account::{ServiceAccountKey, jwt_bearer_grant};
use crate::oauth::{Client, Outcome};
use crate::refresh::stored_client;
use crate::secret::SecretString;
use crate::store::{
    AnyStore, RefreshStore, RotatedKey, RotationRecord, RotationStep, SharedStore, StoreError,
};
use api::{ApiError, Session};

/// How long a key just created may be refused while the provider spreads it (Google's
/// "Invalid JWT Signature", Entra's AADSTS7000215), and how often it is tried meanwhile.
const SPREAD_WINDOW: Duration = Duration::from_secs(120);
const SPREAD_RETRY: Duration = Duration::from_secs(5);
/// How long the commit of a new key waits for a refresh elsewhere to end (a fleet's lease).
const COMMIT_WAIT: Duration = Duration::from_secs(90);
/// A key listed as created this long before a rotation began is not that rotation's.
const CLOCK_SLACK: i64 = 600;

/// `Endpoints::provider` of a Microsoft account.
const MICROSOFT: &str = "microsoft";

/// A key as the provider lists it.
pub struct RemoteKey {
    pub id: String,
    pub created_at: Option<i64>,
    /// Created by this vault for this account, as far as the provider lets it tell (Microsoft
    /// secrets carry a display name; a Google key has none).
    pub ours: bool,
    /// The first characters of a Microsoft secret.
    pub hint: Option<String>,
}

/// A key the provider just created.
pub struct NewKey {
    pub id: String,
    pub secret: SecretString,
    pub created_at: Option<i64>,
    pub expires_at: Option<i64>,
}

/// What a rotation did.
#[derive(Debug, Default)]
pub struct Report {
    /// The key now in use; `None` when the run only finished an interrupted rotation.
    pub new_key: Option<String>,
    /// The key deleted at the provider.
    pub retired: Option<String>,
    /// Keys an interrupted rotation had created and never stored, deleted at the provider.
    pub strays: Vec<String>,
    /// The key replaced could not be told apart at the provider (a Microsoft secret set by
    /// hand, whose first characters several secrets share): it was left there.
    pub old_left: bool,
}

#[derive(Debug, Error)]
pub enum RotationError {
    #[error("account {account:?} cannot rotate its key: {why}")]
    Unsupported { account: String, why: String },
    #[error(
        "account {account:?} has a client-secret rotation under way (vault set-client-secret); finish it first: vault set-client-secret {account} --retire-old"
    )]
    ManualRotationUnderWay { account: String },
    #[error(
        "{api} refused account {account:?} the right to manage its own keys ({detail}). To let tokenvault rotate them, {grant}. Until then the key in use is kept and only ages"
    )]
    Denied {
        account: String,
        api: &'static str,
        grant: &'static str,
        detail: String,
    },
    #[error("{api} refused the rotation of account {account:?} ({detail}); the key in use is kept")]
    Refused {
        account: String,
        api: &'static str,
        detail: String,
    },
    #[error(
        "{api} could not be used for account {account:?} ({detail}); the key in use is kept. Try again later: vault rotate {account}"
    )]
    Unavailable {
        account: String,
        api: &'static str,
        detail: String,
    },
    #[error(
        "the provider did not accept the new key of account {account:?} ({detail}); it was deleted again and the key in use is kept"
    )]
    NewKeyRefused { account: String, detail: String },
    #[error(
        "the new key of account {account:?} is stored and in use, but deleting the old key {key_id} failed ({detail}). Finish with: vault rotate {account}"
    )]
    OldKeyLeft {
        account: String,
        key_id: String,
        detail: String,
    },
}

impl RotationError {
    pub fn problem(&self) -> Problem {
        match self {
            RotationError::Unsupported { .. } | RotationError::ManualRotationUnderWay { .. } => {
                Problem::BadRequest
            }
            RotationError::Denied { .. }
            | RotationError::Refused { .. }
            | RotationError::NewKeyRefused { .. } => Problem::ClientError,
            RotationError::Unavailable { .. } | RotationError::OldKeyLeft { .. } => {
                Problem::UpstreamUnavailable
            }
        }
    }

    /// The provider refused the credential the right to manage itself: the key only ages.
    pub fn is_denied(&self) -> bool {
        matches!(self, RotationError::Denied { .. })
    }
}

/// How the account's key is managed, and with what.
enum Target {
    Google {
        iam: google::Iam,
        key: Box<ServiceAccountKey>,
        scopes: Vec<String>,
        subject: Option<String>,
    },
    Microsoft {
        graph: microsoft::Graph,
        token_url: String,
        client: Client,
    },
}

/// Whether a rotation runs because someone asked, or only if the key is (still) due.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// `vault rotate`.
    Now,
    /// The daemon's duty: another host or process may have rotated it since it looked.
    IfDue,
}

/// Rotates the key of account `name`, first finishing a rotation a crash interrupted. One
/// rotation of an account runs at a time (on a fleet, across the hosts): another one fails
/// with `RotationUnderWay` and changes nothing.
pub async fn rotate(
    store: &SharedStore,
    http: &reqwest::Client,
    name: &str,
    when: When,
) -> Result<Report, Error> {
    let owner = name.to_owned();
    let guard = with_store(store, move |store| Ok(store.guard_rotation(&owner)?)).await?;
    let rotated = match when {
        When::IfDue if !still_due(store, name).await? => Ok(Report::default()),
        _ => rotate_guarded(store, http, name).await,
    };
    let _ = with_store(store, move |store| {
        store.release_rotation(guard);
        Ok(())
    })
    .await;
    rotated
}

async fn rotate_guarded(
    store: &SharedStore,
    http: &reqwest::Client,
    name: &str,
) -> Result<Report, Error> {
    let read = read(store, name).await?;
    let Read {
        account,
        record,
        target,
    } = read;
    let fail = |err: ApiError| target.error(&account.name, err);
    let session = target.session(http, &account.name).await?;
    let mut report = Report::default();
    let mut record = record;
    match record.step.take() {
        Some(RotationStep::Retiring { key_id }) => {
            retire(store, &target, &session, &account, &record, &key_id).await?;
            report.retired = Some(key_id);
            return Ok(report);
        }
        Some(RotationStep::Creating { since, known }) => {
            let listed = target.list(&session).await.map_err(fail)?;
            let in_use = target.key_in_use(&record, &listed);
            for stray in listed.iter().filter(|key| {
                key.ours
                    && !known.contains(&key.id)
                    && Some(key.id.as_str()) != in_use.as_deref()
                    && key.created_at.is_none_or(|at| at >= since - CLOCK_SLACK)
            }) {
                target.delete(&session, &stray.id).await.map_err(fail)?;
                report.strays.push(stray.id.clone());
            }
            save(store, &account, &record).await?;
        }
        None => {}
    }
    let listed = target.list(&session).await.map_err(fail)?;
    let replaces = target.key_in_use(&record, &listed);
    record.step = Some(RotationStep::Creating {
        since: now_unix(),
        known: listed.iter().map(|key| key.id.clone()).collect(),
    });
    save(store, &account, &record).await?;
    let new = target.create(&session).await.map_err(fail)?;
    if let Err(refused) = target.prove(http, &new).await {
        // Best effort: a key left behind is found by the next run through `Creating`.
        if target.delete(&session, &new.id).await.is_ok() {
            record.step = None;
            save(store, &account, &record).await?;
        }
        return Err(RotationError::NewKeyRefused {
            account: account.name.clone(),
            detail: refused,
        }
        .into());
    }
    commit(store, &account, &target, &new, replaces.as_deref()).await?;
    record = RotationRecord {
        key_id: Some(new.id.clone()),
        step: None,
    };
    report.new_key = Some(new.id);
    match replaces {
        Some(old) => {
            retire(store, &target, &session, &account, &record, &old).await?;
            report.retired = Some(old);
        }
        None => {
            report.old_left = true;
            let finished = record.clone();
            with_store(store, move |store| {
                Ok(store.finish_rotation(&account, &finished)?)
            })
            .await?;
        }
    }
    Ok(report)
}

/// Whether tokenvault knows how to rotate the key of an account with these settings (whether
/// the provider lets it is another matter).
pub fn rotatable(config: &crate::account::AccountConfig) -> bool {
    match config.grant {
        Grant::ServiceAccount { .. } => true,
        Grant::RefreshToken { .. } | Grant::ClientCredentials { .. } => {
            config.endpoints.provider == MICROSOFT
        }
    }
}

/// An error unless the key of account `name` can be rotated by tokenvault (checked before the
/// daemon is told to).
pub fn check_supported(store: &AnyStore, name: &str) -> Result<(), Error> {
    Target::of(store, &store.account(name)?).map(drop)
}

/// What a rotation starts from, read under the store's lock.
struct Read {
    account: Account,
    record: RotationRecord,
    target: Target,
}

/// Whether account `name`'s key is due for rotation or its last rotation is unfinished, as the
/// store says now.
async fn still_due(store: &SharedStore, name: &str) -> Result<bool, Error> {
    let name = name.to_owned();
    with_store(store, move |store| {
        let account = store.account(&name)?;
        let due = account.rotate_every.is_some_and(|every| {
            account.key_created_at.unwrap_or(account.created_at) + every <= now_unix()
        });
        Ok(due || store.rotation_record(&account)?.step.is_some())
    })
    .await
}

async fn read(store: &SharedStore, name: &str) -> Result<Read, Error> {
    let name = name.to_owned();
    with_store(store, move |store| {
        let account = store.account(&name)?;
        let record = store.rotation_record(&account)?;
        if account.keeps_previous_client_secret && record.step.is_none() {
            return Err(RotationError::ManualRotationUnderWay {
                account: account.name,
            }
            .into());
        }
        let target = Target::of(store, &account)?;
        Ok(Read {
            account,
            record,
            target,
        })
    })
    .await
}

impl Target {
    fn of(store: &AnyStore, account: &Account) -> Result<Target, Error> {
        let unsupported = |why: String| RotationError::Unsupported {
            account: account.name.clone(),
            why,
        };
        let endpoints = &account.config.endpoints;
        let api = endpoints.key_api_url.as_deref();
        match &account.config.grant {
            Grant::ServiceAccount {
                service_account_email,
                subject,
            } => {
                let stored = store
                    .secret(account, SecretKind::ServiceAccountKey)?
                    .ok_or_else(|| unsupported("its key is missing".into()))?;
                let key = ServiceAccountKey::parse(&stored).map_err(|err| unsupported(err.to_string()))?;
                Ok(Target::Google {
                    iam: google::Iam::new(api.unwrap_or(google::DEFAULT_API), service_account_email)
                        .map_err(unsupported)?,
                    key: Box::new(key),
                    scopes: account.config.scopes.clone(),
                    subject: subject.clone(),
                })
            }
            Grant::RefreshToken { client_id, .. } | Grant::ClientCredentials { client_id }
                if endpoints.provider == MICROSOFT =>
            {
                let client = stored_client(store, account)?
                    .filter(|client| client.secret.is_some())
                    .ok_or_else(|| unsupported("it has no client secret (a public client)".into()))?;
                Ok(Target::Microsoft {
                    graph: microsoft::Graph::new(
                        api.unwrap_or(microsoft::DEFAULT_API),
                        client_id,
                        &account.name,
                    )
                    .map_err(unsupported)?,
                    token_url: microsoft::Graph::tenant_token_url(&endpoints.token_url)
                        .map_err(unsupported)?
                        .to_owned(),
                    client,
                })
            }
            _ => Err(unsupported(
                "only Google service-account keys and Microsoft client secrets can be rotated by tokenvault; rotate this one at the provider, then: vault set-client-secret".into(),
            )
            .into()),
        }
    }

    fn api_name(&self) -> &'static str {
        match self {
            Target::Google { .. } => "Google IAM",
            Target::Microsoft { .. } => "Microsoft Graph",
        }
    }

    fn error(&self, account: &str, err: ApiError) -> RotationError {
        let (account, api) = (account.to_owned(), self.api_name());
        let grant = match self {
            Target::Google { .. } => google::ROLE,
            Target::Microsoft { .. } => microsoft::ROLE,
        };
        match err {
            ApiError::Denied(detail) => RotationError::Denied {
                account,
                api,
                grant,
                detail,
            },
            ApiError::Gone(detail) | ApiError::Refused(detail) => RotationError::Refused {
                account,
                api,
                detail,
            },
            ApiError::Unavailable(detail) => RotationError::Unavailable {
                account,
                api,
                detail,
            },
        }
    }

    /// A session with the key-management API, authenticated by the key in use.
    async fn session(
        &self,
        http: &reqwest::Client,
        account: &str,
    ) -> Result<Session, RotationError> {
        let outcome = match self {
            Target::Google { key, .. } => match google::Iam::token(http, key).await {
                Ok(outcome) => outcome,
                Err(err) => return Err(self.error(account, ApiError::Refused(err.to_string()))),
            },
            Target::Microsoft {
                graph,
                token_url,
                client,
            } => graph.token(http, token_url, client).await,
        };
        match outcome {
            Outcome::Refreshed(grant) => Ok(Session::new(http, grant.access_token)),
            Outcome::Transient(transient) => {
                Err(self.error(account, ApiError::Unavailable(transient.reason)))
            }
            Outcome::Permanent(rejection) => Err(self.error(
                account,
                ApiError::Refused(format!(
                    "the token for the API was refused with the key in use: {rejection}"
                )),
            )),
        }
    }

    async fn list(&self, session: &Session) -> Result<Vec<RemoteKey>, ApiError> {
        match self {
            Target::Google { iam, .. } => iam.list(session).await,
            Target::Microsoft { graph, .. } => graph.list(session).await,
        }
    }

    async fn create(&self, session: &Session) -> Result<NewKey, ApiError> {
        match self {
            Target::Google { iam, .. } => iam.create(session).await,
            Target::Microsoft { graph, .. } => graph.create(session).await,
        }
    }

    async fn delete(&self, session: &Session, id: &str) -> Result<(), ApiError> {
        let deleted = match self {
            Target::Google { iam, .. } => iam.delete(session, id).await,
            Target::Microsoft { graph, .. } => graph.delete(session, id).await,
        };
        match deleted {
            Err(ApiError::Gone(_)) => Ok(()),
            other => other,
        }
    }

    /// The provider's id of the key in use: a Google key names itself; a Microsoft secret is
    /// known by the id its rotation recorded, else by its first three characters when exactly
    /// one listed secret shows them.
    fn key_in_use(&self, record: &RotationRecord, listed: &[RemoteKey]) -> Option<String> {
        match self {
            Target::Google { key, .. } => key.private_key_id.clone(),
            Target::Microsoft { client, .. } => record.key_id.clone().or_else(|| {
                let secret = client.secret.as_ref()?.expose();
                let mut matching = listed.iter().filter(|key| {
                    key.hint
                        .as_deref()
                        .is_some_and(|hint| !hint.is_empty() && secret.starts_with(hint))
                });
                let only = matching.next()?;
                matching.next().is_none().then(|| only.id.clone())
            }),
        }
    }

    /// A token request with the new key, tried again while the provider may still be
    /// spreading it. The provider's refusal, when it never worked.
    async fn prove(&self, http: &reqwest::Client, new: &NewKey) -> Result<(), String> {
        let started = Instant::now();
        loop {
            let outcome = match self {
                Target::Google {
                    scopes, subject, ..
                } => {
                    let key =
                        ServiceAccountKey::parse(&new.secret).map_err(|err| err.to_string())?;
                    jwt_bearer_grant(http, &key, scopes, subject.as_deref())
                        .await
                        .map_err(|err| err.to_string())?
                }
                Target::Microsoft {
                    graph,
                    token_url,
                    client,
                } => {
                    let candidate = Client {
                        id: client.id.clone(),
                        secret: Some(new.secret.clone()),
                        auth: client.auth,
                    };
                    graph.token(http, token_url, &candidate).await
                }
            };
            let spreading = match self {
                Target::Google { .. } => google::may_be_spreading(&outcome),
                Target::Microsoft { .. } => microsoft::may_be_spreading(&outcome),
            };
            let retry = spreading || matches!(outcome, Outcome::Transient(_));
            match outcome {
                Outcome::Refreshed(_) => return Ok(()),
                _ if retry && started.elapsed() < SPREAD_WINDOW => {
                    tokio::time::sleep(SPREAD_RETRY).await;
                }
                Outcome::Transient(transient) => return Err(transient.reason),
                Outcome::Permanent(rejection) => return Err(rejection.to_string()),
            }
        }
    }

    fn kind(&self) -> SecretKind {
        match self {
            Target::Google { .. } => SecretKind::ServiceAccountKey,
            Target::Microsoft { .. } => SecretKind::ClientSecret,
        }
    }
}

/// Commits the new key under the account's refresh guard: a refresh that read the old key is
/// finished before the old key can be deleted, and every later one reads the new key. On a
/// fleet the guard is the account's lease: held elsewhere for a refresh, it is waited for.
async fn commit(
    store: &SharedStore,
    account: &Account,
    target: &Target,
    new: &NewKey,
    replaces: Option<&str>,
) -> Result<(), Error> {
    let (account, kind, secret, id) = (
        account.clone(),
        target.kind(),
        new.secret.clone(),
        new.id.clone(),
    );
    let (created_at, expires_at) = (new.created_at.unwrap_or_else(now_unix), new.expires_at);
    let replaces = replaces.map(str::to_owned);
    let give_up = Instant::now() + COMMIT_WAIT;
    loop {
        let (account, secret, id, replaces) = (
            account.clone(),
            secret.clone(),
            id.clone(),
            replaces.clone(),
        );
        let committed = with_store(store, move |store| {
            let guard = store.guard_refresh(&account.name)?;
            store.commit_rotated_key(
                &guard,
                &account,
                &RotatedKey {
                    kind,
                    secret: &secret,
                    key_id: &id,
                    created_at,
                    expires_at,
                    replaces: replaces.as_deref(),
                },
            )?;
            Ok(())
        })
        .await;
        match committed {
            Err(Error::Store(StoreError::LeaseHeld(_))) if Instant::now() < give_up => {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            other => return other,
        }
    }
}

/// Deletes the old key at the provider (already gone counts), then finishes the rotation.
async fn retire(
    store: &SharedStore,
    target: &Target,
    session: &Session,
    account: &Account,
    record: &RotationRecord,
    key_id: &str,
) -> Result<(), Error> {
    target
        .delete(session, key_id)
        .await
        .map_err(|err| RotationError::OldKeyLeft {
            account: account.name.clone(),
            key_id: key_id.to_owned(),
            detail: err.detail().to_owned(),
        })?;
    let (account, record) = (account.clone(), record.clone());
    with_store(store, move |store| {
        Ok(store.finish_rotation(&account, &record)?)
    })
    .await
}

async fn save(
    store: &SharedStore,
    account: &Account,
    record: &RotationRecord,
) -> Result<(), Error> {
    let (account, record) = (account.clone(), record.clone());
    with_store(store, move |store| {
        Ok(store.save_rotation_record(&account, &record)?)
    })
    .await
}

/// Runs `work` on the store from a blocking thread (the daemon's runtime threads never wait on
/// the database).
async fn with_store<T: Send + 'static>(
    store: &SharedStore,
    work: impl FnOnce(&mut AnyStore) -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || work(&mut store.lock()))
        .await
        .unwrap_or_else(|_| Err(Error::Internal("a store task failed".into())))
}
