//! Adding accounts (`vault add-account`) and re-authorizing them (`vault login`). Nothing is
//! stored until the provider has proven the credentials with a real token.

use std::time::Duration;

use crate::account::{Account, AccountConfig, Grant, LoginMethod, SecretKind, validate_name};
use crate::error::Error;
use crate::oauth::identity::Identity;
use crate::oauth::provider::{EndpointOverrides, Endpoints, ProviderChoice};
use crate::oauth::service_account::{ServiceAccountKey, jwt_bearer_grant};
use crate::oauth::{Client, ClientAuth, OAuthError, TokenGrant, authcode, device, token};
use crate::refresh::{self, AccessToken};
use crate::secret::SecretString;
use crate::store::{AnyStore, StoreError};

/// The credentials of a new account and how they are proven.
pub enum NewCredentials {
    /// An OAuth client at a provider, proven by one of the flows.
    OAuth {
        provider: ProviderChoice,
        overrides: EndpointOverrides,
        client: Client,
        flow: Flow,
    },
    /// A Google service-account JSON key, proven by a JWT bearer exchange.
    ServiceAccount {
        key_json: SecretString,
        subject: Option<String>,
        /// The IAM API that rotates the key, when not Google's public one.
        key_api_url: Option<String>,
    },
}

pub enum Flow {
    /// Authorization code + PKCE in a browser, redirected to 127.0.0.1.
    Browser(BrowserOptions),
    /// RFC 8628 device authorization.
    Device,
    /// A refresh token from elsewhere (a config file), proven with one refresh.
    ImportRefreshToken(SecretString),
    /// The client's own credentials.
    ClientCredentials,
}

#[derive(Clone, Copy)]
pub struct BrowserOptions {
    /// 0 picks a free port.
    pub redirect_port: u16,
    pub timeout: Duration,
    /// How the authorization URL reaches the user (`authcode::open_browser` for people).
    pub opener: fn(&str),
}

pub struct NewAccount {
    pub name: String,
    pub scopes: Vec<String>,
    pub credentials: NewCredentials,
}

/// What `add-account` reports: the stored account and its first access token.
pub struct Added {
    pub account: Account,
    pub token: AccessToken,
}

/// A proven account, ready to be stored.
struct Proven {
    config: AccountConfig,
    grant: TokenGrant,
    /// The long-lived credential (refresh token or key) and the client secret, to be sealed.
    secrets: Vec<(SecretKind, SecretString)>,
}

pub async fn add_account(
    store: &mut AnyStore,
    http: &reqwest::Client,
    new: NewAccount,
) -> Result<Added, Error> {
    validate_name(&new.name).map_err(Error::Input)?;
    // Fail before a browser round trip, not after it.
    match store.account(&new.name) {
        Ok(_) => return Err(StoreError::AccountExists(new.name).into()),
        Err(StoreError::NoSuchAccount(_)) => {}
        Err(err) => return Err(err.into()),
    }
    let name = new.name;
    let proven = match new.credentials {
        NewCredentials::OAuth {
            provider,
            overrides,
            client,
            flow,
        } => prove_oauth(http, provider, overrides, client, flow, new.scopes).await,
        NewCredentials::ServiceAccount {
            key_json,
            subject,
            key_api_url,
        } => prove_service_account(http, new.scopes, key_json, subject, key_api_url).await,
    }
    .map_err(|source| Error::NotAdded {
        account: name.clone(),
        source,
    })?;

    let secrets: Vec<(SecretKind, &SecretString)> = proven
        .secrets
        .iter()
        .map(|(kind, value)| (*kind, value))
        .collect();
    let update = refresh::token_update(&proven.grant, true);
    store.insert_accounts(&[crate::store::NewAccount {
        name: &name,
        config: &proven.config,
        secrets: &secrets,
        tokens: &update,
        validation_schedule: None,
        refresh_before: None,
        client_secret_expires_at: None,
        key_created_at: None,
        rotate_every: None,
    }])?;
    let expires_at = update.access_expires_at.unwrap_or_default();
    Ok(Added {
        account: store.account(&name)?,
        token: AccessToken {
            access_token: proven.grant.access_token,
            expires_at,
        },
    })
}

async fn prove_oauth(
    http: &reqwest::Client,
    provider: ProviderChoice,
    overrides: EndpointOverrides,
    client: Client,
    flow: Flow,
    scopes: Vec<String>,
) -> Result<Proven, OAuthError> {
    let endpoints = provider.resolve(overrides, http).await?;
    let (grant, login) = match flow {
        Flow::Browser(options) => (
            browser_login(http, &endpoints, &client, &scopes, options).await?,
            Some(LoginMethod::Browser),
        ),
        Flow::Device => (
            device_login(http, &endpoints, &client, &scopes).await?,
            Some(LoginMethod::Device),
        ),
        Flow::ImportRefreshToken(refresh_token) => {
            // Nothing else holds this token in the vault yet: a lost answer may be retried.
            let outcome = token::refresh_token_grant(
                http,
                &endpoints.token_url,
                Some(&client),
                &refresh_token,
                &|| true,
            )
            .await;
            let mut grant = outcome.into_result()?;
            // Without rotation, the imported token stays the one to keep.
            grant.refresh_token.get_or_insert(refresh_token);
            (grant, Some(LoginMethod::Browser))
        }
        Flow::ClientCredentials => {
            if client.secret.is_none() {
                return Err(OAuthError::Provider(
                    "--client-credentials needs the client secret (--client-secret-file, --client-secret-stdin or the prompt)".into(),
                ));
            }
            let outcome =
                token::client_credentials_grant(http, &endpoints.token_url, &client, &scopes).await;
            (outcome.into_result()?, None)
        }
    };
    let mut secrets = Vec::new();
    if let Some(refresh_token) = &grant.refresh_token
        && login.is_some()
    {
        secrets.push((SecretKind::RefreshToken, refresh_token.clone()));
    }
    if let Some(client_secret) = client.secret {
        secrets.push((SecretKind::ClientSecret, client_secret));
    }
    let client_id = client.id;
    let config = AccountConfig {
        grant: match login {
            Some(login) => Grant::RefreshToken {
                client_id,
                login,
                identity: grant.id_token.as_ref().and_then(Identity::from_id_token),
            },
            None => Grant::ClientCredentials { client_id },
        },
        endpoints,
        client_auth: client.auth,
        scopes,
    };
    Ok(Proven {
        config,
        grant,
        secrets,
    })
}

async fn browser_login(
    http: &reqwest::Client,
    endpoints: &Endpoints,
    client: &Client,
    scopes: &[String],
    options: BrowserOptions,
) -> Result<TokenGrant, OAuthError> {
    let auth_url = endpoints.auth_url.as_deref().ok_or_else(|| {
        OAuthError::Provider(
            "this provider has no authorization endpoint: give --auth-url, or use --device".into(),
        )
    })?;
    let request = authcode::AuthorizationRequest {
        endpoints,
        auth_url,
        client,
        scopes,
        redirect_port: options.redirect_port,
        timeout: options.timeout,
        opener: options.opener,
    };
    authcode::authorize(http, request).await
}

async fn device_login(
    http: &reqwest::Client,
    endpoints: &Endpoints,
    client: &Client,
    scopes: &[String],
) -> Result<TokenGrant, OAuthError> {
    let device_url = endpoints.device_url.as_deref().ok_or_else(|| {
        OAuthError::Provider(
            "this provider has no device authorization endpoint: give --device-url".into(),
        )
    })?;
    device::authorize(http, endpoints, device_url, client, scopes).await
}

async fn prove_service_account(
    http: &reqwest::Client,
    scopes: Vec<String>,
    key_json: SecretString,
    subject: Option<String>,
    key_api_url: Option<String>,
) -> Result<Proven, OAuthError> {
    if scopes.is_empty() {
        return Err(OAuthError::Provider(
            "a service account needs at least one --scope (e.g. --scope https://www.googleapis.com/auth/drive.readonly)".into(),
        ));
    }
    let key = ServiceAccountKey::parse(&key_json)?;
    let mut endpoints = Endpoints::token_only("google", key.token_uri.clone());
    endpoints.key_api_url = key_api_url;
    endpoints.check()?;
    let grant = jwt_bearer_grant(http, &key, &scopes, subject.as_deref())
        .await?
        .into_result()?;
    let config = AccountConfig {
        grant: Grant::ServiceAccount {
            service_account_email: key.client_email.clone(),
            subject,
        },
        endpoints,
        client_auth: ClientAuth::Post,
        scopes,
    };
    Ok(Proven {
        config,
        grant,
        secrets: vec![(SecretKind::ServiceAccountKey, key_json)],
    })
}

/// Re-authorizes a refresh-token account with its stored client and settings, replacing its
/// refresh token; the account returns to `active`. A grant of another user than the one
/// recorded is refused (and revoked where the provider allows) unless `allow_other_identity`.
pub async fn login(
    store: &mut AnyStore,
    http: &reqwest::Client,
    name: &str,
    options: BrowserOptions,
    allow_other_identity: bool,
) -> Result<AccessToken, Error> {
    let account = store.account(name)?;
    let config = &account.config;
    let Grant::RefreshToken {
        login,
        identity: recorded,
        ..
    } = &config.grant
    else {
        return Err(Error::Input(format!(
            "account {name:?} uses {}, which has no user login; remove it and add it again with new credentials",
            config.grant.kind().as_str()
        )));
    };
    let client = refresh::stored_client(store, &account)?
        .ok_or_else(|| Error::Input(format!("account {name:?} has no client id stored")))?;
    let grant = match login {
        LoginMethod::Browser => {
            browser_login(http, &config.endpoints, &client, &config.scopes, options).await
        }
        LoginMethod::Device => device_login(http, &config.endpoints, &client, &config.scopes).await,
    }
    .map_err(|source| Error::LoginFailed {
        account: name.to_owned(),
        source,
    })?;
    let identity = grant.id_token.as_ref().and_then(Identity::from_id_token);
    match (recorded, &identity) {
        (Some(recorded), Some(new)) if recorded.subject != new.subject && !allow_other_identity => {
            // Not kept: the new grant is ended at the provider where it can be.
            if let (Some(url), Some(refresh_token)) =
                (&config.endpoints.revocation_url, &grant.refresh_token)
            {
                let _ = token::revoke(http, url, Some(&client), refresh_token).await;
            }
            return Err(Error::IdentityChanged {
                account: name.to_owned(),
                recorded: recorded.shown().to_owned(),
                got: new.shown().to_owned(),
            });
        }
        (recorded, Some(new)) if recorded.as_ref() != Some(new) => {
            store.set_identity(&account, Some(new))?;
        }
        _ => {}
    }
    let account = store.account(name)?;
    let update = refresh::token_update(&grant, true);
    store.replace_grant(&account, &update)?;
    Ok(refresh::issued_token(&grant, &update))
}
