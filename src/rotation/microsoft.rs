//! Microsoft Entra client secrets through Microsoft Graph (`application: addPassword`,
//! `removePassword`, the application's `passwordCredentials`), addressed by the client id
//! (`applications(appId='…')`) with an app-only token for Graph from the secret in use. The app
//! needs the Graph application permission `Application.ReadWrite.OwnedBy` and to be an owner of
//! its own registration.

use serde::Deserialize;
use url::Url;

use super::api::{ApiError, Session, checked_key_id, parse, unix_time};
use super::{NewKey, RemoteKey};
use crate::oauth::token::client_credentials_grant;
use crate::oauth::{Client, Outcome, RejectionKind};
use crate::secret::SecretString;

pub const DEFAULT_API: &str = "https://graph.microsoft.com";
pub const ROLE: &str = "grant the app the Microsoft Graph application permission Application.ReadWrite.OwnedBy (with admin consent) and make its service principal an owner of the app registration";
/// The tenants that are not one: app-only tokens come only from a tenant's own endpoint.
const NOT_A_TENANT: [&str; 3] = ["common", "organizations", "consumers"];

/// Graph for one application.
pub struct Graph {
    /// `…/v1.0/applications(appId='ID')`
    app_url: Url,
    /// The app-only token's scope: the Graph resource, `/.default`.
    scope: String,
    /// Names the secrets this vault creates, so a rotation interrupted before it stored one
    /// finds it among the app's other secrets.
    display_name: String,
}

impl Graph {
    pub fn new(api: &str, client_id: &str, account: &str) -> Result<Graph, String> {
        let id = checked_app_id(client_id)?;
        let mut app_url =
            Url::parse(api).map_err(|err| format!("the Graph URL {api:?} is not a URL: {err}"))?;
        app_url
            .path_segments_mut()
            .map_err(|_| format!("the Graph URL {api:?} cannot take a path"))?
            .pop_if_empty()
            .extend(["v1.0", &format!("applications(appId='{id}')")]);
        Ok(Graph {
            app_url,
            scope: format!("{}/.default", api.trim_end_matches('/')),
            display_name: format!("tokenvault {account}"),
        })
    }

    /// The account's token endpoint, if it is a tenant's own.
    pub fn tenant_token_url(token_url: &str) -> Result<&str, String> {
        let tenant = Url::parse(token_url)
            .ok()
            .and_then(|url| url.path_segments()?.next().map(str::to_owned))
            .unwrap_or_default();
        if NOT_A_TENANT.contains(&tenant.as_str()) {
            return Err(format!(
                "its token endpoint is Microsoft's \"{tenant}\" one, and app-only tokens for Graph come only from a tenant's own: add the account again with --tenant YOUR-TENANT-ID"
            ));
        }
        Ok(token_url)
    }

    /// An app-only token for Graph (or a proof that `client`'s secret works).
    pub async fn token(&self, http: &reqwest::Client, token_url: &str, client: &Client) -> Outcome {
        client_credentials_grant(http, token_url, client, std::slice::from_ref(&self.scope)).await
    }

    fn action(&self, name: &str) -> Url {
        let mut url = self.app_url.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.push(name);
        }
        url
    }

    /// The app's client secrets: ids, dates and the first three characters Graph shows of
    /// each (`hint`), never their values.
    pub async fn list(&self, session: &Session) -> Result<Vec<RemoteKey>, ApiError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct App {
            #[serde(default)]
            password_credentials: Vec<Credential>,
        }
        let mut url = self.app_url.clone();
        url.query_pairs_mut()
            .append_pair("$select", "passwordCredentials");
        let app: App = session.get(url).await?;
        app.password_credentials
            .into_iter()
            .map(|credential| credential.remote(&self.display_name))
            .collect()
    }

    pub async fn create(&self, session: &Session) -> Result<NewKey, ApiError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Added {
            key_id: String,
            secret_text: Option<SecretString>,
            start_date_time: Option<String>,
            end_date_time: Option<String>,
        }
        let body = serde_json::json!({
            "passwordCredential": { "displayName": self.display_name },
        });
        let added: Added = parse(&session.post(self.action("addPassword"), &body).await?)?;
        let secret = added
            .secret_text
            .filter(|secret| !secret.is_empty())
            .ok_or_else(|| {
                ApiError::Unavailable("addPassword answered without secretText".into())
            })?;
        Ok(NewKey {
            id: checked_key_id(&added.key_id)?.to_owned(),
            secret,
            created_at: added.start_date_time.as_deref().and_then(unix_time),
            expires_at: added.end_date_time.as_deref().and_then(unix_time),
        })
    }

    /// Removes the secret `id`; one already gone counts as removed (Graph refuses to remove an
    /// unknown id with a plain 400, so the list is asked first).
    pub async fn delete(&self, session: &Session, id: &str) -> Result<(), ApiError> {
        if !self.list(session).await?.iter().any(|key| key.id == id) {
            return Ok(());
        }
        let body = serde_json::json!({ "keyId": checked_key_id(id)? });
        session
            .post(self.action("removePassword"), &body)
            .await
            .map(drop)
    }
}

/// A client id as it may go inside `applications(appId='…')`: Entra's are GUIDs; letters,
/// digits, '-', '.' and '_' pass (no quote, slash or percent can leave the key's parentheses).
fn checked_app_id(id: &str) -> Result<&str, String> {
    let fine = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if fine {
        Ok(id)
    } else {
        Err(format!(
            "the client id {:?} is not an Entra application id",
            crate::oauth::printable(id)
        ))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Credential {
    key_id: String,
    display_name: Option<String>,
    hint: Option<String>,
    start_date_time: Option<String>,
}

impl Credential {
    fn remote(self, ours: &str) -> Result<RemoteKey, ApiError> {
        Ok(RemoteKey {
            id: checked_key_id(&self.key_id)?.to_owned(),
            created_at: self.start_date_time.as_deref().and_then(unix_time),
            ours: self.display_name.as_deref() == Some(ours),
            hint: self.hint,
        })
    }
}

/// Whether a refusal of a secret just added may be Entra still spreading it (AADSTS7000215 for
/// a while after `addPassword`).
pub fn may_be_spreading(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Permanent(rejection) if rejection.kind == RejectionKind::InvalidClient)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_only_tokens_need_a_tenants_own_endpoint() {
        for tenant in NOT_A_TENANT {
            let url = format!("https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token");
            let refused = Graph::tenant_token_url(&url).unwrap_err();
            assert!(refused.contains("--tenant"), "{refused}");
        }
        let own = "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token";
        assert_eq!(Graph::tenant_token_url(own), Ok(own));
    }

    #[test]
    fn the_app_is_addressed_by_its_client_id_only_when_it_is_one() {
        let graph = Graph::new(
            "https://graph.microsoft.com",
            "0a1b2c3d-1111-4000-8000-000000000001",
            "mail",
        )
        .unwrap();
        assert_eq!(
            graph.action("addPassword").as_str(),
            "https://graph.microsoft.com/v1.0/applications(appId='0a1b2c3d-1111-4000-8000-000000000001')/addPassword"
        );
        assert_eq!(graph.scope, "https://graph.microsoft.com/.default");
        for hostile in ["x')/owners/$ref?a=('", "../../me", "..", "a b", "a%27", ""] {
            assert!(
                Graph::new("https://graph.microsoft.com", hostile, "mail").is_err(),
                "{hostile}"
            );
        }
    }
}
