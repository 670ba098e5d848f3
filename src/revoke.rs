//! Ending a grant at the provider when its account is removed (RFC 7009): the refresh token is
//! revoked, and with it (at Google, Microsoft-style servers and certified OIDC servers) the
//! whole grant, so a copy of the old vault, a backup or a leaked token stops working.

use crate::account::{Account, GrantKind, SecretKind};
use crate::error::Error;
use crate::oauth::token;
use crate::refresh::stored_client;
use crate::store::RefreshStore;

/// What happened upstream when an account was removed.
pub enum Revocation {
    /// The provider revoked the refresh token.
    Revoked,
    /// The provider has no revocation endpoint the vault knows of.
    NoEndpoint,
    /// The account holds no grant to revoke (service-account keys and client credentials are
    /// ended by deleting them in the provider's console).
    NoGrant,
    /// The provider could not be asked, or refused; the reason says which.
    Failed(String),
}

/// Asks the provider to revoke `account`'s refresh token.
pub async fn revoke_grant<S: RefreshStore>(
    store: &S,
    account: &Account,
    http: &reqwest::Client,
) -> Result<Revocation, Error> {
    if account.config.grant.kind() != GrantKind::RefreshToken {
        return Ok(Revocation::NoGrant);
    }
    let Some(url) = &account.config.endpoints.revocation_url else {
        return Ok(Revocation::NoEndpoint);
    };
    let Some(refresh_token) = store.secret(account, SecretKind::RefreshToken)? else {
        return Ok(Revocation::NoGrant);
    };
    let client = stored_client(store, account)?;
    Ok(
        match token::revoke(http, url, client.as_ref(), &refresh_token).await {
            Ok(()) => Revocation::Revoked,
            Err(reason) => Revocation::Failed(reason),
        },
    )
}
